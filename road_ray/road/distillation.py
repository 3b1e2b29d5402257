"""Target-guided distillation, paper Sec. 3.1, Eq. 1.

``L_dist = 1/N Σ_(i,j) ‖x_ij − z_ij‖₂``: the Euclidean (not squared) distance over channels
between the student's feature ``x`` and the frozen pretrained teacher's feature ``z`` at every
position, averaged over the positions and the batch. Fed with *target* (real) crops, it keeps
the student's filters close to the real-style ImageNet filters.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The norm is sqrt(max(Σ_c d², _TINY)): exact for any distance above 1e-10, and at x == z
# the clamp cuts the gradient to exactly 0 instead of sqrt's 0/0 = nan.
_TINY = 1e-20


def distillation_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Eq. 1 on feature maps ``[B, C, h, w]``; a float32 scalar, also under autocast.

    The teacher's map is treated as a constant (it should come from a frozen network run
    under ``torch.no_grad()``; it is detached here as well).
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"distillation_loss: the student's feature map {list(student_feat.shape)} and the teacher's "
            f"{list(teacher_feat.shape)} differ in shape (same architecture, same layer, same input expected)"
        )
    if student_feat.dim() < 2:
        raise ValueError(f"distillation_loss: expected feature maps [B, C, ...], got {list(student_feat.shape)}")
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        diff = student_feat.float() - teacher_feat.detach().float()
        sq = diff.square().sum(dim=1)  # [B, h, w]: squared distance over channels
        return sq.clamp_min(_TINY).sqrt().mean()
