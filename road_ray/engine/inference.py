"""Inference for evaluation: whole-image or sliding windows, both at a scale.

Both resize the image by ``scale`` (``data.eval_scale``) first and return logits at the input
image's full resolution, so one confusion matrix compares them with the full-resolution ground
truth (peers infer at 1024×512 and upsample to 2048×1024: ``scale=0.5``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    out = model(image)
    return out[0] if isinstance(out, tuple) else out


def _resized(image: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return image
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def _to_full_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits


def _check(image: torch.Tensor, scale: float) -> None:
    if image.ndim != 4:
        raise ValueError(f"image: expected [B, 3, H, W], got {tuple(image.shape)}")
    if not scale > 0:
        raise ValueError(f"scale: expected > 0, got {scale}")


@torch.no_grad()
def predict_whole(model: nn.Module, image: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` of whole images resized by ``scale``, upsampled back to ``H×W``."""
    _check(image, scale)
    return _to_full_size(_logits(model, _resized(image, scale)), tuple(image.shape[-2:]))


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


@torch.no_grad()
def predict_slide(
    model: nn.Module, image: torch.Tensor, window: int, overlap: float = 1 / 3, scale: float = 1.0
) -> torch.Tensor:
    """Logits ``[B, C, H, W]``: the image resized by ``scale`` (the training crops' scale, e.g.
    0.5 for crops cut from 1024x512 Cityscapes), averaged over overlapping ``window×window``
    crops of it (the training crop size), then upsampled to the full ``H×W`` of the label.

    The resized image is zero-padded (after normalization, i.e. the mean colour) at the
    bottom/right when smaller than the window, like the training crops.
    """
    _check(image, scale)
    full = tuple(image.shape[-2:])
    image = _resized(image, scale)
    b, _, h, w = image.shape
    ph, pw = max(h, window), max(w, window)
    x = F.pad(image, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else image
    stride = max(1, int(window * (1 - overlap)))
    total = None
    count = torch.zeros((1, 1, ph, pw), device=image.device)
    for top in _starts(ph, window, stride):
        for left in _starts(pw, window, stride):
            logits = _logits(model, x[:, :, top : top + window, left : left + window]).float()
            if total is None:
                total = torch.zeros((b, logits.shape[1], ph, pw), device=image.device)
            total[:, :, top : top + window, left : left + window] += logits
            count[:, :, top : top + window, left : left + window] += 1
    return _to_full_size((total / count)[:, :, :h, :w], full)
