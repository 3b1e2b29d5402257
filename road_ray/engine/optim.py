"""Optimizer and learning-rate schedule as in the paper (Sec. 4.1, following DeepLab [1]).

SGD, momentum 0.9, weight decay 5e-4, base lr 2.5e-4 for the backbone, ×10 for the
segmentation head (new layers) and for the domain classifiers, ``poly`` decay with power 0.9.
The learning rate is a pure function of the iteration (nanoGPT's way), so a resumed run
continues the schedule exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from road_ray.config import OptimConfig


def poly_factor(iteration: int, max_iters: int, power: float) -> float:
    """``(1 - it / max_iters) ** power``, clamped at 0 past the end."""
    return max(0.0, 1.0 - iteration / max_iters) ** power


def build_optimizer(
    student: nn.Module,
    domain_classifiers: nn.Module | None,
    cfg: OptimConfig,
    *,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """SGD with three parameter groups: backbone (lr), head (lr × head_lr_mult), classifiers.

    ``student`` is the plain Segmenter (not its DDP wrapper: parameters are shared, and the
    wrapper hides ``backbone_parameters``). Frozen parameters (``requires_grad=False``, the
    paper's "frozen" baseline) are left out so weight decay does not move them either.
    """
    groups = [
        {"params": [p for p in student.backbone_parameters() if p.requires_grad], "lr_mult": 1.0, "name": "backbone"},
        {
            "params": [p for p in student.head_parameters() if p.requires_grad],
            "lr_mult": cfg.head_lr_mult,
            "name": "head",
        },
    ]
    if domain_classifiers is not None:
        groups.append(
            {
                "params": list(domain_classifiers.parameters()),
                "lr_mult": cfg.classifier_lr_mult,
                "name": "domain_classifiers",
            }
        )
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    kwargs = {"fused": fused} if fused else {}
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kwargs)


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: OptimConfig, iteration: int) -> float:
    """Apply the poly schedule for ``iteration``; returns the backbone lr."""
    factor = poly_factor(iteration, cfg.max_iters, cfg.poly_power)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g["lr_mult"] * factor
    return cfg.lr * factor
