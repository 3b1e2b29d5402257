"""Training crops of JPEG shards decoded and resampled on the GPU (``torchvision.io.decode_jpeg``).

At full resolution the CPU's JPEG decode is most of a crop's cost (README.md, "Speed"); a GPU
decodes a batch of JPEGs in a fraction of that. :class:`DeviceCropBatch` cuts the same crops as
:class:`road_ray.data.transforms.CropBatch` from the same rows: the random draws (scale, window,
flip) come from the same generator in the same order and depend on the original image size
only (:func:`~road_ray.data.transforms.draw_window`), so the boxes are identical; the label
crop is the same CPU code (labels are small PNGs). Only the image pixels differ, by a few grey
levels: a different JPEG decoder (nvJPEG or libjpeg vs OpenCV's libjpeg-turbo) and bilinear
sampling in float (``grid_sample``) instead of OpenCV's fixed-point ``warpAffine``.

Split in two so that it fits a stream: :meth:`DeviceCropBatch.plan` (CPU: draws, label crops;
cheap, can run in Ray Data tasks) and :meth:`DeviceCropBatch.decode` (the device: decode,
resample, pad, mirror; in the training process). :func:`select_crop_transform` picks this
path where a GPU is present and the shards are JPEG. It runs on a CPU device too (the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from road_ray.config import DataConfig
from road_ray.data.boxes import BOX_SIZE
from road_ray.data.transforms import (
    NONCE_COLUMN,
    CropBatch,
    CropWindow,
    axis_scales,
    crop_label,
    decode_label,
    draw_window,
    original_sizes_of,
)


@dataclass
class CropPlan:
    """What the CPU decided for a batch: the windows, the label crops (mirrored), the boxes."""

    ids: list[str]
    encoded: list[bytes]
    windows: list[CropWindow]
    labels: np.ndarray | None  # uint8 [B, c, c]
    boxes: np.ndarray  # float32 [B, 8]


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's header (no decode): the image's size when the row has none."""
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as im:
        return im.height, im.width


class DeviceCropBatch:
    """:class:`CropBatch`'s crops (same boxes, same labels) with the image decode on ``device``."""

    def __init__(self, cfg: DataConfig, seed: int, labeled: bool, device: str | torch.device = "cuda"):
        self.cpu = CropBatch(cfg, seed=seed, labeled=labeled)  # settings and the generator
        self.device = torch.device(device)

    def plan(self, batch: dict[str, np.ndarray]) -> CropPlan:
        """Draw every row's crop as CropBatch does (same order of draws) and cut the label crops."""
        t = self.cpu
        ids = [str(i) for i in batch["id"]]
        rng = t.rng_for(ids, batch.get(NONCE_COLUMN))
        sizes = original_sizes_of(batch) or [jpeg_size(b) for b in batch["image"]]
        c = t.crop_size
        labels = np.empty((len(ids), c, c), dtype=np.uint8) if t.labeled else None
        windows, boxes = [], np.empty((len(ids), BOX_SIZE), dtype=np.float32)
        for i, size in enumerate(sizes):
            label = None
            if t.labeled:
                if batch["label"][i] is None:
                    raise ValueError(f"row {ids[i]!r}: no label, but this stream is labeled (source rows need labels)")
                label = decode_label(batch["label"][i])
            scale = t.base_scale * rng.uniform(t.scale_min, t.scale_max)
            window = draw_window(size, c, scale, rng, t.flip)
            windows.append(window)
            boxes[i] = window.box()
            if labels is not None:
                cropped = crop_label(label, window)
                labels[i] = cropped[:, ::-1] if window.mirrored else cropped
        return CropPlan(ids, list(batch["image"]), windows, labels, boxes)

    def decode(self, plan: CropPlan) -> dict[str, torch.Tensor]:
        """Decode the plan's JPEGs on the device and cut its windows: ``{"image": uint8 [B,3,c,c]
        on the device, "label": uint8 [B,c,c], "box": float32 [B,8]}`` (label, box on the CPU)."""
        from torchvision.io import decode_jpeg

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in plan.encoded]
        images = decode_jpeg(data, device=self.device) if data else []
        crops = [resample_window(image, window) for image, window in zip(images, plan.windows)]
        c = self.cpu.crop_size
        out = {
            "image": torch.stack(crops) if crops else torch.empty((0, 3, c, c), dtype=torch.uint8),
            "box": torch.from_numpy(plan.boxes),
        }
        if plan.labels is not None:
            out["label"] = torch.from_numpy(plan.labels)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return self.decode(self.plan(batch))


def resample_window(image: torch.Tensor, window: CropWindow) -> torch.Tensor:
    """``window``'s crop of a decoded uint8 [3, Hs, Ws] image (stored at any size): bilinear,
    edges replicated, the part beyond the resized image 0, mirrored as drawn; uint8 [3, c, c]."""
    _, hs, ws = image.shape
    sy, sx = axis_scales(window, (hs, ws))
    steps = torch.arange(window.crop, dtype=torch.float64, device=image.device) + 0.5
    # stored pixel-index coordinate (top + y + 0.5) / scale - 0.5, in grid_sample's [-1, 1]
    ys = ((window.top + steps) / sy) * (2.0 / hs) - 1.0
    xs = ((window.left + steps) / sx) * (2.0 / ws) - 1.0
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).to(torch.float32)[None]
    sampled = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    crop = sampled[0].round_().clamp_(0, 255).to(torch.uint8)
    valid_h, valid_w = window.valid
    crop[:, valid_h:] = 0
    crop[:, :, valid_w:] = 0
    return crop.flip(-1) if window.mirrored else crop


def select_crop_transform(
    cfg: DataConfig, seed: int, labeled: bool, image_format: str, device: str | torch.device | None = None
) -> CropBatch | DeviceCropBatch:
    """The crop transform for shards of ``image_format``: on the GPU (:class:`DeviceCropBatch`)
    where one is present (or ``device`` names one) and the shards are JPEG; else :class:`CropBatch`."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if image_format == "jpeg" and torch.device(device).type == "cuda":
        return DeviceCropBatch(cfg, seed, labeled, device)
    return CropBatch(cfg, seed=seed, labeled=labeled)
