"""Segmentation scores (docs/method.md): one confusion matrix over a whole split, IoU, mIoU.

The matrix is a masked ``bincount`` on the tensors' device (as in torchvision's segmentation
references), accumulated per worker and summed across workers with one all-reduce. Every
score -- mIoU over 19 classes, or mIoU16 and mIoU13 for SYNTHIA -- comes from the same matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from road_ray.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, LabelSpace


def confusion_matrix(
    pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, *, check_range: bool = True
) -> Tensor:
    """int64 ``[C, C]``: rows = ground truth, columns = prediction, on the tensors' device.

    Pixels labelled ``ignore_index``, negative or ``>= num_classes`` are left out. A
    prediction outside ``[0, num_classes)`` on a counted pixel is a ValueError; that check
    reads a value back to the host, so ``check_range=False`` skips it for predictions that
    are in range by construction (an argmax over the classes), keeping evaluation sync-free.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"confusion_matrix: prediction {list(pred.shape)} and label {list(label.shape)} differ in shape"
        )
    n = int(num_classes)
    pred = pred.reshape(-1).long()
    label = label.reshape(-1).long().to(pred.device)
    valid = (label >= 0) & (label < n) & (label != ignore_index)
    if check_range and bool((valid & ((pred < 0) | (pred >= n))).any()):
        raise ValueError(f"confusion_matrix: predictions must lie in [0, {n}), got values outside on labelled pixels")
    # Uncounted pixels go to an overflow bin n*n that is dropped: no boolean indexing needed.
    bins = torch.where(valid, label * n + pred, torch.full_like(label, n * n))
    return torch.bincount(bins, minlength=n * n + 1)[: n * n].view(n, n)


class ConfusionMatrix:
    """Accumulates :func:`confusion_matrix` over a split, on the device; sum across workers with :meth:`all_reduce`."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str | None = None) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, label: Tensor, *, check_range: bool = True) -> None:
        self.matrix += confusion_matrix(
            pred.to(self.matrix.device), label.to(self.matrix.device), self.num_classes, check_range=check_range
        )

    def all_reduce(self, reduce_fn: Callable[[Tensor], Any]) -> None:
        """``reduce_fn(matrix)`` sums the matrix in place across workers, e.g. ``torch.distributed.all_reduce``."""
        reduce_fn(self.matrix)

    def reset(self) -> None:
        self.matrix.zero_()

    def scores(self, label_space: LabelSpace) -> dict[str, Any]:
        return segmentation_scores(self.matrix, label_space)


def iou_per_class(matrix: Tensor | np.ndarray) -> np.ndarray:
    """``TP / (TP + FP + FN)`` per class (float64), ``nan`` where the class never occurs nor is predicted."""
    m = matrix.detach().cpu().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix)
    m = m.astype(np.float64)
    tp = np.diag(m)
    denom = m.sum(axis=0) + m.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def _mean_percent(iou: np.ndarray, ids: tuple[int, ...]) -> float:
    values = iou[list(ids)]
    if np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values) * 100.0)


def segmentation_scores(matrix: Tensor | np.ndarray, label_space: LabelSpace) -> dict[str, Any]:
    """``{"miou": %, "iou": {class name: % or None}, "label_space": name}`` plus the label space's subsets.

    ``miou`` is the mean IoU over ``label_space.eval_ids`` (classes with no pixel and no
    prediction are left out of the mean; ``nan`` if none is left). For ``synthia16`` the
    extra subsets add ``miou16`` and ``miou13``, from the same matrix. ``iou`` lists the
    classes of ``eval_ids`` in trainId order.

    Ground-truth rows of ``label_space.ignored_gt_ids`` are zeroed first (SYNTHIA-16: terrain,
    truck, train count as ignore, as the field scores it); a prediction *of* such a class on a
    counted pixel still counts against that pixel's class. ``convention`` is added when the
    label space has one.
    """
    if label_space.ignored_gt_ids:
        m = matrix.detach().cpu().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix)
        matrix = m.copy()
        matrix[list(label_space.ignored_gt_ids), :] = 0
    iou = iou_per_class(matrix)
    if iou.shape[0] <= max(label_space.eval_ids):
        raise ValueError(
            f"segmentation_scores: a {iou.shape[0]}-class matrix cannot score label space {label_space.name!r}"
        )
    scores: dict[str, Any] = {
        "miou": _mean_percent(iou, label_space.eval_ids),
        "iou": {
            CLASS_NAMES[i] if i < len(CLASS_NAMES) else str(i): (None if np.isnan(iou[i]) else float(iou[i] * 100.0))
            for i in label_space.eval_ids
        },
        "label_space": label_space.name,
    }
    for name, ids in label_space.extra_subsets:
        scores[name] = _mean_percent(iou, ids)
    if label_space.convention:
        scores["convention"] = label_space.convention
    return scores
