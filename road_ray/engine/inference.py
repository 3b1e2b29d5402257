"""Inference for evaluation (DESIGN §3): whole-image at a scale, or sliding windows.

Both return logits at the input image's full resolution, so one confusion matrix compares
them with the full-resolution ground truth (peers infer at 1024×512 and upsample to
2048×1024: ``scale=0.5``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    out = model(image)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def predict_whole(model: nn.Module, image: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` of whole images resized by ``scale``, upsampled back to ``H×W``."""
    if image.ndim != 4:
        raise ValueError(f"image: expected [B, 3, H, W], got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    x = image
    if scale != 1.0:
        x = F.interpolate(
            image, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear", align_corners=False
        )
    logits = _logits(model, x)
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return logits


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


@torch.no_grad()
def predict_slide(model: nn.Module, image: torch.Tensor, window: int, overlap: float = 1 / 3) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` averaged over overlapping ``window×window`` crops (the training crop size).

    The image is zero-padded (after normalization, i.e. the mean colour) at the bottom/right
    when smaller than the window, like the training crops.
    """
    if image.ndim != 4:
        raise ValueError(f"image: expected [B, 3, H, W], got {tuple(image.shape)}")
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
    return (total / count)[:, :, :h, :w]
