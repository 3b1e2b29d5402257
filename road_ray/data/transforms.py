"""Decode, random scale, random crop *with its box*, flip, normalize (docs/method.md, docs/formats.md). NumPy/OpenCV only.

Training crops follow the paper's recipe: the whole image is resized by a random factor
(the domain's base scale times ``U(scale_min, scale_max)``, :func:`domain_base_scale`), padded at the bottom/right when smaller than the
crop (image 0, label 255), cut at a uniformly random ``crop_size x crop_size`` window and
mirrored with probability 1/2. Every crop carries its box (``road_ray.data.boxes``), so the
spatial-aware splitting layer can map each feature position back to the original image.

The resize is computed for the crop window only (one ``cv2.warpAffine`` of ``crop_size²``
pixels) instead of for the whole image: on a 2048x1024 image that is the difference between
resizing 2 M pixels and 0.1 M. The sampling grid is exactly the one of ``boxes.py``: crop pixel
``(y, x)`` (centre ``y + 0.5``) samples the original image at ``(top + y + 0.5) / scale``, with
bilinear interpolation for the image and the pixel containing that point (nearest) for the label.

:class:`CropBatch` and :class:`WholeImageBatch` are batch transforms for Ray Data's
``map_batches`` (numpy batch format), but they are plain callables usable anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from road_ray.config import DataConfig
from road_ray.data.boxes import BOX_SIZE, make_box
from road_ray.labels import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Optional per-row float column of a batch that CropBatch mixes into its seed; the Ray stream
# fills it with ray.data.expressions.random(), which changes with every epoch (see CropBatch).
NONCE_COLUMN = "crop_nonce"


# ---------------------------------------------------------------------------------------
# Decoding


def _buffer(b: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8) if not isinstance(b, np.ndarray) else b.view(np.uint8).ravel()


def decode_image(b: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 ``[H, W, 3]`` RGB.

    Grayscale images are expanded to three channels and an alpha channel is dropped.
    """
    image = cv2.imdecode(_buffer(b), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError(f"could not decode image bytes ({len(b)} bytes): not a readable image")
    return image


def decode_label(b: bytes) -> np.ndarray:
    """PNG bytes of a single-channel uint8 trainId map -> uint8 ``[H, W]`` (255 = ignore)."""
    label = cv2.imdecode(_buffer(b), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"could not decode label bytes ({len(b)} bytes): not a readable PNG")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"label map: expected a single-channel uint8 PNG of trainIds, got shape {label.shape} dtype {label.dtype}"
        )
    return label


# ---------------------------------------------------------------------------------------
# Random scale + crop + flip


def _resized_size(size: int, scale: float) -> int:
    """Pixels of the resized image along one axis (what cv2.resize would produce)."""
    return max(1, int(round(size * scale)))


def effective_scale(scale: float, stored_scale: float) -> float:
    """The factor to apply to a *stored* image so that it ends up ``scale`` times its original.

    Shards written by ``road-ray prepare --resize`` hold images ``stored_scale`` times their
    original size (per axis: stored size / original size, from the row's ``height``/``width``),
    so a configured scale (always relative to the original image: ``data.base_scale`` times the
    random factor) becomes ``scale / stored_scale`` on the stored pixels. This is the one place
    where the two scales meet; boxes keep the configured scale and the original size.
    """
    if stored_scale <= 0:
        raise ValueError(f"stored scale must be > 0, got {stored_scale}")
    return scale / stored_scale


@dataclass(frozen=True)
class CropWindow:
    """Where one random crop lies: its corner in the image resized by ``scale`` (relative to the
    original image of ``original_size``), the resized size, and whether it is mirrored."""

    top: int
    left: int
    crop: int
    scale: float
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    mirrored: bool

    @property
    def valid(self) -> tuple[int, int]:
        """Rows and columns of the crop that lie inside the resized image (the rest is padding)."""
        return min(self.crop, self.resized_size[0] - self.top), min(self.crop, self.resized_size[1] - self.left)

    def box(self) -> np.ndarray:
        h, w = self.original_size
        return make_box(self.top, self.left, self.crop, self.crop, h, w, self.scale, self.mirrored)


def draw_window(
    original_size: tuple[int, int], crop_size: int, scale: float, rng: np.random.Generator, flip: bool
) -> CropWindow:
    """Draw a crop's corner (uniform over the positions inside the resized image, 0 along an axis
    where it is smaller than the crop) and its mirror flag (p = 1/2 if ``flip``), in that order.

    Only the original size enters, never the stored one, so a shard stored at any scale draws
    the same boxes as the full-size shard (the CPU and the GPU crop paths share this draw)."""
    if scale <= 0:
        raise ValueError(f"random_scale_crop: scale must be > 0, got {scale}")
    h, w = int(original_size[0]), int(original_size[1])
    c = int(crop_size)
    rh, rw = _resized_size(h, scale), _resized_size(w, scale)
    top = int(rng.integers(0, max(rh - c, 0) + 1))
    left = int(rng.integers(0, max(rw - c, 0) + 1))
    mirrored = bool(rng.random() < 0.5) and flip
    return CropWindow(top, left, c, float(scale), (h, w), (rh, rw), mirrored)


def axis_scales(window: CropWindow, stored_size: tuple[int, int]) -> tuple[float, float]:
    """Resized pixels per stored pixel along y and x (:func:`effective_scale` per axis)."""
    (h, w), (sh, sw) = window.original_size, stored_size
    return effective_scale(window.scale, sh / h), effective_scale(window.scale, sw / w)


def _resample_window(image: np.ndarray, top: int, left: int, crop: int, scale_y: float, scale_x: float) -> np.ndarray:
    """The ``crop x crop`` window at (top, left) of ``image`` resized by (scale_y, scale_x), bilinear.

    Crop pixel index (y, x) samples the pixel-index coordinate ``(top + y + 0.5) / scale_y - 0.5``
    of ``image`` (pixel centres at integers), the half-pixel convention of cv2.resize. Beyond the
    image the edge is replicated; the caller pads that part.
    """
    if scale_y == 1.0 and scale_x == 1.0:
        window = image[top : top + crop, left : left + crop]
        if window.shape[:2] == (crop, crop):
            return window.copy()
        out = np.zeros((crop, crop, *image.shape[2:]), dtype=image.dtype)
        out[: window.shape[0], : window.shape[1]] = window
        return out
    iy, ix = 1.0 / scale_y, 1.0 / scale_x
    matrix = np.array([[ix, 0.0, (left + 0.5) * ix - 0.5], [0.0, iy, (top + 0.5) * iy - 0.5]], dtype=np.float64)
    return cv2.warpAffine(
        image,
        matrix,
        (crop, crop),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _nearest_indices(start: int, crop: int, scale: float, size: int) -> np.ndarray:
    """Index of the pixel containing each crop pixel's centre (clipped to the image's ``size``)."""
    centres = (start + np.arange(crop, dtype=np.float64) + 0.5) / scale
    return np.minimum(np.floor(centres).astype(np.intp), size - 1)


def crop_image(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """The window's image crop (bilinear from the stored pixels, :func:`axis_scales`), padding 0,
    not yet mirrored."""
    sy, sx = axis_scales(window, image.shape[:2])
    crop = _resample_window(np.ascontiguousarray(image), window.top, window.left, window.crop, sy, sx)
    valid_h, valid_w = window.valid
    crop[valid_h:] = 0
    crop[:, valid_w:] = 0
    return crop


def crop_label(label: np.ndarray, window: CropWindow) -> np.ndarray:
    """The window's label crop (nearest: the stored pixel containing each crop pixel's centre),
    padding 255, not yet mirrored. ``label`` may be stored at any size (:func:`axis_scales`)."""
    sy, sx = axis_scales(window, label.shape[:2])
    rows = _nearest_indices(window.top, window.crop, sy, label.shape[0])
    cols = _nearest_indices(window.left, window.crop, sx, label.shape[1])
    out = label[rows[:, None], cols[None, :]]
    valid_h, valid_w = window.valid
    out[valid_h:] = IGNORE_INDEX
    out[:, valid_w:] = IGNORE_INDEX
    return out


def random_scale_crop(
    image: np.ndarray,
    label: np.ndarray | None,
    crop_size: int,
    scale: float,
    rng: np.random.Generator,
    flip: bool,
    original_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Resize by ``scale``, pad, cut a random ``crop_size²`` window, mirror it with p = 1/2 if ``flip``.

    Args:
        image: uint8 ``[H, W, 3]`` (float images work too, e.g. to check the sampling exactly).
        label: uint8 ``[H, W]`` trainIds, or None (unlabeled target images).
        crop_size: side of the square crop, in resized pixels.
        scale: resized size / original size (the box's ``scale``).
        rng: draws the window's corner and the flip (:func:`draw_window`).
        flip: allow the horizontal mirror.
        original_size: ``(height, width)`` of the original image when ``image`` is a copy stored
            at another size (``road-ray prepare --resize``); None: ``image`` is the original.
            The draw, the box and the sampled points are those of the original; only the
            resampling reads the stored pixels (:func:`effective_scale`).

    Returns:
        ``(crop uint8 [c, c, 3], label crop uint8 [c, c] or None, box float32 [8])``. The
        padding (bottom/right of the resized image, before mirroring) is 0 in the image and
        255 in the label. The box follows ``road_ray.data.boxes``: top/left/height/width in
        the resized image, the original image's size, ``scale`` and the flip flag.
    """
    stored = image.shape[:2]
    if label is not None and label.shape[:2] != stored:
        raise ValueError(f"random_scale_crop: label size {label.shape[:2]} differs from image size {stored}")
    window = draw_window(original_size or stored, crop_size, scale, rng, flip)
    crop = crop_image(image, window)
    cropped_label = None if label is None else crop_label(label, window)
    if window.mirrored:
        crop = np.ascontiguousarray(crop[:, ::-1])
        if cropped_label is not None:
            cropped_label = np.ascontiguousarray(cropped_label[:, ::-1])
    return crop, cropped_label, window.box()


# ---------------------------------------------------------------------------------------
# Normalization


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` RGB -> float32 ``[..., 3, H, W]``, ImageNet mean/std on [0, 1]."""
    if image.shape[-1] != 3:
        raise ValueError(f"normalize: expected [..., H, W, 3] RGB, got shape {image.shape}")
    chw = np.moveaxis(image, -1, -3)
    gain = (1.0 / (255.0 * IMAGENET_STD)).reshape(3, 1, 1)
    offset = (-IMAGENET_MEAN / IMAGENET_STD).reshape(3, 1, 1)
    out = chw.astype(np.float32)
    out *= gain
    out += offset
    return out


def normalize_tensor(image: torch.Tensor) -> torch.Tensor:
    """:func:`normalize` in torch, where the batch already is: uint8 ``[B, 3, H, W]`` -> float32.

    Training crops travel as uint8 (4x fewer bytes than float32 through Ray's object store
    and the host-to-device copy) and are normalized here, on the device."""
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"normalize_tensor: expected [..., 3, H, W], got shape {tuple(image.shape)}")
    gain = torch.as_tensor(1.0 / (255.0 * IMAGENET_STD), dtype=torch.float32, device=image.device).view(3, 1, 1)
    offset = torch.as_tensor(-IMAGENET_MEAN / IMAGENET_STD, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return image.to(torch.float32) * gain + offset


def denormalize(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize`: float32 ``[..., 3, H, W]`` -> uint8 ``[..., H, W, 3]``."""
    mean, std = IMAGENET_MEAN.reshape(3, 1, 1), IMAGENET_STD.reshape(3, 1, 1)
    rgb = (np.asarray(image, dtype=np.float32) * std + mean) * 255.0
    return np.moveaxis(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), -3, -1)


# ---------------------------------------------------------------------------------------
# Batch transforms (Ray Data map_batches, numpy batch format)


def domain_base_scale(cfg: DataConfig, domain: str) -> float:
    """The base scale of ``domain``'s images: ``data.source_base_scale`` / ``target_base_scale``,
    or ``data.base_scale`` where that one is unset."""
    if domain not in ("source", "target"):
        raise ValueError(f"domain {domain!r}: expected 'source' or 'target'")
    scale = cfg.source_base_scale if domain == "source" else cfg.target_base_scale
    return float(cfg.base_scale if scale is None else scale)


def _seed_material(seed: int, ids: Sequence[str], nonce: np.ndarray | None) -> list[int]:
    digest = hashlib.blake2b("\0".join(map(str, ids)).encode(), digest_size=16).digest()
    material = [int(seed) & 0xFFFFFFFFFFFFFFFF, int.from_bytes(digest, "little")]
    if nonce is None:
        material.append(int(np.random.SeedSequence().entropy))  # fresh OS entropy
    else:
        material.extend(int(v) for v in np.asarray(nonce, dtype=np.float64).view(np.uint64))
    return material


def original_sizes_of(batch: dict[str, np.ndarray]) -> list[tuple[int, int]] | None:
    """The rows' original image sizes (the shard's ``height``/``width`` columns), or None when the
    batch lacks them (then every image is taken to be stored at its original size)."""
    if "height" not in batch or "width" not in batch:
        return None
    return [(int(h), int(w)) for h, w in zip(batch["height"], batch["width"])]


class CropBatch:
    """Batch transform: encoded rows -> random crops with their boxes.

    ``batch`` holds ``id``, ``image`` (bytes) and, when ``labeled``, ``label`` (bytes), and
    optionally ``height``/``width``: the original image's size. Rows of shards stored at a
    reduced size (``road-ray prepare --resize``) need those two columns: the crops are then cut
    as from the original image (same draws, same boxes), reading the stored pixels
    (:func:`effective_scale`). Other columns are ignored. Returns ``{"image": uint8 [B,3,c,c], "label": uint8 [B,c,c]`` (only
    when labeled) ``, "box": float32 [B,8], "id": str [B]}``. Crops stay uint8 (trainIds and
    255 fit): 5x fewer bytes per crop through the object store than float32/int64; the
    training loop normalizes them on the device (:func:`normalize_tensor`).

    **Randomness.** Ray pickles this object into every task, so a generator stored in it would
    replay the same crops in every block and every epoch. Instead each call builds its
    generator from ``(seed, a hash of the batch's ids, a nonce)``:

    - the nonce is the batch's ``crop_nonce`` column when present. ``train_stream`` fills it
      with ``ray.data.expressions.random(seed=..., reseed_after_execution=True)``, which Ray
      seeds from (block, task, *execution index*, seed): new values every epoch, yet the
      same run of the same plan with the same seed reproduces them;
    - without that column (CropBatch used outside Ray) the nonce is fresh OS entropy, so
      calls never repeat (and are not reproducible).

    Same seed + ids + nonce -> the same crops (what the tests rely on).

    **Scale.** Each image is resized by ``domain_base_scale(cfg, domain)`` times ``U(scale_min,
    scale_max)``; ``domain`` defaults to ``"source"`` for a labeled stream and ``"target"`` for an
    unlabeled one (the training streams' roles: source crops carry labels, target crops none).
    """

    def __init__(self, cfg: DataConfig, seed: int, labeled: bool, domain: str | None = None):
        self.crop_size = int(cfg.crop_size)
        self.domain = domain or ("source" if labeled else "target")
        self.base_scale = domain_base_scale(cfg, self.domain)
        self.scale_min = float(cfg.scale_min)
        self.scale_max = float(cfg.scale_max)
        self.flip = bool(cfg.flip)
        self.seed = int(seed)
        self.labeled = bool(labeled)

    def rng_for(self, ids: Sequence[str], nonce: np.ndarray | None) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(_seed_material(self.seed, ids, nonce)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        n, c = len(ids), self.crop_size
        rng = self.rng_for(ids, batch.get(NONCE_COLUMN))
        images = np.empty((n, c, c, 3), dtype=np.uint8)
        labels = np.empty((n, c, c), dtype=np.uint8) if self.labeled else None
        boxes = np.empty((n, BOX_SIZE), dtype=np.float32)
        original_sizes = original_sizes_of(batch)
        for i in range(n):
            image = decode_image(batch["image"][i])
            label = None
            if self.labeled:
                encoded = batch["label"][i]
                if encoded is None:
                    raise ValueError(f"row {ids[i]!r}: no label, but this stream is labeled (source rows need labels)")
                label = decode_label(encoded)
            scale = self.base_scale * rng.uniform(self.scale_min, self.scale_max)
            original = original_sizes[i] if original_sizes is not None else None
            images[i], cropped, boxes[i] = random_scale_crop(image, label, c, scale, rng, self.flip, original)
            if labels is not None:
                labels[i] = cropped
        out = {
            "image": np.ascontiguousarray(np.moveaxis(images, -1, -3)),
            "box": boxes,
            "id": np.array(ids, dtype=object),
        }
        if labels is not None:
            out["label"] = labels
        return out


class WholeImageBatch:
    """Batch transform for validation: decode whole images, normalize, no resize.

    Returns ``{"image": float32 [B,3,H,W], "label": int64 [B,H,W]`` (when labeled)
    ``, "id": str [B]}``. Images of one batch must share a size (use batch size 1 otherwise);
    inference resizes by the eval scale itself.
    """

    def __init__(self, labeled: bool = True):
        self.labeled = bool(labeled)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        images = [decode_image(b) for b in batch["image"]]
        sizes = {im.shape[:2] for im in images}
        if len(sizes) > 1:
            raise ValueError(f"WholeImageBatch: images of one batch differ in size {sorted(sizes)}; use batch_size=1")
        out: dict[str, np.ndarray] = {
            "image": normalize(np.stack(images)) if images else np.empty((0, 3, 0, 0), np.float32),
            "id": np.array(ids, dtype=object),
        }
        if self.labeled:
            labels = []
            for i, encoded in enumerate(batch["label"]):
                if encoded is None:
                    raise ValueError(f"row {ids[i]!r}: no label in a labeled validation split")
                label = decode_label(encoded)
                if label.shape != images[i].shape[:2]:
                    raise ValueError(
                        f"row {ids[i]!r}: label size {label.shape} differs from image size {images[i].shape[:2]}"
                    )
                labels.append(label)
            out["label"] = np.stack(labels).astype(np.int64) if labels else np.empty((0, 0, 0), np.int64)
        return out
