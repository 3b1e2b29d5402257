"""Gradient reversal (Ganin & Lempitsky, DANN [8] in the paper), the max-min of Eq. 4.

The layer is the identity in the forward pass and multiplies the gradient by ``-coeff`` in
the backward pass. Put between the backbone ``F`` and the domain classifiers ``h_m``, one
SGD step on ``L_spt`` trains the classifiers to *minimize* the domain loss while the
backbone *maximizes* it (paper Sec. 3.2, Eq. 4) -- no label switching, no second optimizer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        # view_as: a new autograd node, same storage (no copy).
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output * (-ctx.coeff), None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Identity forward; backward multiplies the incoming gradient by ``-coeff``."""
    return _GradReverse.apply(x, float(coeff))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` (Eq. 4 via [8])."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"
