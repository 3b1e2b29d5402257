"""Whole-split evaluation: one confusion matrix over the split, summed across workers.

Besides the oracle mIoU (needs target labels) it computes a label-free selection proxy,
the mean per-pixel prediction entropy on the target images (lower = more confident), which
a user without target labels can use to pick a model (reported beside, never instead of,
the oracle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from road_ray.engine.inference import predict_slide, predict_whole
from road_ray.engine.metrics import ConfusionMatrix, segmentation_scores
from road_ray.labels import NUM_CLASSES, LabelSpace

# observe(batch, image on the device, logits [B, K, H, W], features["out"] or None, index in the split)
Observer = Callable[[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor | None, int], None]


@dataclass
class EvalSettings:
    mode: str = "whole"  # "whole" | "slide"
    scale: float = 1.0  # both modes: the image is resized by it, the logits brought back to full size
    window: int = 321
    max_images: int = 0  # 0 = all
    autocast_dtype: torch.dtype | None = None


def predict(model: nn.Module, image: torch.Tensor, settings: EvalSettings) -> torch.Tensor:
    if settings.mode == "slide":
        return predict_slide(model, image, settings.window, scale=settings.scale)
    if settings.mode == "whole":
        return predict_whole(model, image, settings.scale)
    raise ValueError(f"eval mode {settings.mode!r}: expected 'whole' or 'slide'")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    label_space: LabelSpace,
    settings: EvalSettings,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
    on_prediction: Callable[[str, np.ndarray, np.ndarray | None], None] | None = None,
    observe: Observer | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on every image of ``batches`` exactly once across ``world_size`` ranks.

    Each rank takes images ``rank, rank + world_size, ...``; the confusion matrices and the
    entropy sums are then summed with ``all_reduce``. Returns the scores of
    ``segmentation_scores`` (``miou`` None when the split has no labels) plus ``entropy``
    and ``images``. ``observe(batch, image, logits, features, index)`` sees every scored batch
    (the label-free validators feed on it); ``features`` is the student's ``features["out"]`` of
    the whole image, None with sliding windows (a window's features are not the image's).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(NUM_CLASSES, device=device)
    # [entropy sum, pixel count, images, labeled images] kept on the device: no per-image host sync
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for index, batch in enumerate(batches):
        if settings.max_images and index >= settings.max_images:
            break
        if index % world_size == rank:
            _score_batch(model, batch, index, settings, device, cm, totals, on_prediction, observe)
    if all_reduce is not None and world_size > 1:
        cm.all_reduce(all_reduce)
        all_reduce(totals)
    model.train(was_training)
    entropy_sum, pixels, images, labeled = totals.tolist()
    if labeled > 0:
        scores = segmentation_scores(cm.matrix, label_space)
    else:  # no labels: mIoU is unavailable, never 0
        scores = {"miou": None, "iou": {}, "label_space": label_space.name}
    scores["entropy"] = entropy_sum / pixels if pixels else None
    scores["images"] = int(images)
    scores["confusion_matrix"] = cm.matrix.cpu().numpy()
    return scores


def _score_batch(model, batch, index, settings, device, cm, totals, on_prediction, observe) -> None:
    """Predict one validation batch; add to the confusion matrix and the entropy sums (on the device)."""
    image = batch["image"].to(device, non_blocking=True)
    tapped: dict[str, torch.Tensor] = {}
    hook = None
    if observe is not None and settings.mode == "whole":  # one forward pass: its features are the image's
        hook = model.register_forward_hook(lambda _m, _i, out: tapped.update(out=out[1]["out"]))
    try:
        with torch.autocast(device.type, dtype=settings.autocast_dtype, enabled=settings.autocast_dtype is not None):
            logits = predict(model, image, settings)
    finally:
        if hook is not None:
            hook.remove()
    logits = logits.float()
    if observe is not None:
        observe(batch, image, logits, tapped.get("out"), index)
    prob = torch.softmax(logits, dim=1)
    entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum(1)
    pred = logits.argmax(1)
    totals[0] += entropy.sum()
    totals[1] += entropy.numel()
    totals[2] += image.shape[0]
    label = batch.get("label")
    if label is not None:
        label = label.to(device, non_blocking=True)
        cm.update(pred, label, check_range=False)  # an argmax: in range, and no host sync
        totals[3] += image.shape[0]
    if on_prediction is not None:
        ids = batch.get("id") or [f"{index:06d}"]
        for i, image_id in enumerate(ids):
            on_prediction(
                str(image_id),
                pred[i].to(torch.uint8).cpu().numpy(),
                None if label is None else label[i].to(torch.uint8).cpu().numpy(),
            )
