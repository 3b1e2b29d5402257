"""The ROAD objective, paper Eq. 5: ``L = L_seg + λ1·L_dist + λ2·L_spt``, and its baselines.

One training step runs the student once on the source and target crops together (so a
DDP-wrapped student is called once per step and BatchNorm sees both domains), then

- ``L_seg``: pixel cross-entropy on the source crops (ignore 255);
- ``L_dist`` (Eq. 1): the student's tapped layer on the *target* crops against the frozen
  teacher's same layer (mode ``source_dist``: on the source crops instead);
- ``L_spt`` (Eq. 2-4): the student's final backbone map of both domains, through gradient
  reversal, into the per-region domain classifiers; regions from the crop boxes.

Modes (paper Sec. 4.3; ``ROADConfig.mode``) switch terms on and off:

==============  =====================  ===========================
mode            L_dist                 L_spt
==============  =====================  ===========================
nonadapt        --                     --
dst             target crops           --
spt             --                     yes
road            target crops           yes
frozen          --                     -- (stages frozen by the engine)
source_dist     source crops           --
oracle          --                     -- (the engine feeds target labels)
==============  =====================  ===========================

A term whose weight is 0 is not computed either (no teacher forward, no classifiers), and
when no term needs the target crops the student sees the source crops only, so ``nonadapt``
is a true source-only baseline — unless ``road.student_sees_target`` asks for the BatchNorm
control (target crops forwarded, no loss on them). ``road.adversarial_form`` chooses how λ2
enters L_spt's gradients (the paper's Eq. 5, or DANN's reversal coefficient).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from road_ray.config import MODES, ROADConfig, parse_grid
from road_ray.data.boxes import BOX_SIZE
from road_ray.labels import IGNORE_INDEX
from road_ray.road.distillation import distillation_loss
from road_ray.road.grl import GradientReversal
from road_ray.road.spatial import RegionDomainClassifiers, region_counts, region_index, spatial_aware_loss


@dataclass
class StepOutput:
    """What one ROAD step yields; the detached parts can be logged without a host sync."""

    loss: Tensor  # the joint loss (Eq. 5), with grad
    losses: dict[str, Tensor]  # "seg", "dist", "spt": detached float32 scalars (0 when a term is off)
    domain_acc: Tensor  # detached scalar; nan when L_spt is off


def segmentation_loss(logits: Tensor, label: Tensor) -> Tensor:
    """Pixel cross-entropy, ignore 255, float32; 0 (not nan) for a batch with no labeled pixel."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        total = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (label != IGNORE_INDEX).sum().clamp_min(1)


class ROADObjective(nn.Module):
    """Student + frozen teacher + per-region domain classifiers, and the joint loss (Eq. 5).

    ``student(x, taps=(...)) -> (logits [B, K, H, W], features)`` with ``features[tap]`` for
    each requested tap and ``features["out"]`` the final backbone map (``feature_channels``
    channels). ``teacher(x)`` returns the feature map at ``teacher_layer``; it is frozen here
    (no grad, always in ``eval()`` mode, whatever ``train()`` is called with) and must never
    be wrapped in DDP. Only ``student`` and ``domain_classifiers`` train.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        cfg: ROADConfig,
        teacher_layer: str,
        feature_channels: int,
    ) -> None:
        super().__init__()
        if cfg.mode not in MODES:
            raise ValueError(f"road.mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
        self.cfg = cfg
        self.teacher_layer = teacher_layer
        self.grid = parse_grid(cfg.grid)
        self.num_regions = self.grid[0] * self.grid[1]
        self.dist_domain = cfg.distillation_domain
        self.spt_on = cfg.uses_spatial
        if self.dist_domain is not None and teacher is None:
            raise ValueError(
                f"road.mode={cfg.mode!r} with road.lambda_dist={cfg.lambda_dist} distills toward a teacher, "
                "but none was given"
            )
        self.student = student
        # The teacher is only kept when a term uses it.
        self.teacher = teacher if self.dist_domain is not None else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        # Paper form: L_spt scaled by λ2 in Eq. 5, reversal by grl_coeff. DANN form: L_spt unscaled
        # (the classifiers' gradient), reversal by λ2·grl_coeff (the backbone's: the same as the paper's).
        dann = cfg.adversarial_form == "dann"
        self.spt_weight = 1.0 if dann else cfg.lambda_spt
        self.grl = GradientReversal(cfg.grl_coeff * (cfg.lambda_spt if dann else 1.0))
        self.domain_classifiers: RegionDomainClassifiers | None = (
            RegionDomainClassifiers(feature_channels, self.num_regions, cfg.classifier_hidden) if self.spt_on else None
        )

    @property
    def uses_target(self) -> bool:
        """Whether the student sees the target crops (a term needs them, or the BatchNorm control)."""
        return self.spt_on or self.dist_domain == "target" or self.cfg.student_sees_target

    def train(self, mode: bool = True) -> ROADObjective:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    def forward(self, batch: dict[str, Tensor]) -> StepOutput:
        source, label, target = self._check_batch(batch)
        bs = source.shape[0]
        x = torch.cat([source, target]) if self.uses_target else source
        taps = (self.teacher_layer,) if self.dist_domain is not None else ()
        logits, features = self.student(x, taps=taps)

        if logits.shape[-2:] != label.shape[-2:]:
            raise ValueError(
                f"student logits {list(logits.shape)} are not at the label's size {list(label.shape[-2:])}"
            )
        seg = segmentation_loss(logits[:bs], label)
        zero = seg.new_zeros(())
        loss, dist, spt = seg, zero, zero
        domain_acc = torch.full((), float("nan"), device=seg.device)

        if self.dist_domain is not None:
            mine = features[self.teacher_layer]
            mine, images = (mine[bs:], target) if self.dist_domain == "target" else (mine[:bs], source)
            with torch.no_grad():
                theirs = self.teacher(images)
            dist = distillation_loss(mine, theirs)
            loss = loss + self.cfg.lambda_dist * dist

        if self.spt_on:
            spt, domain_acc = self._spatial_loss(features["out"], batch["source_box"], batch["target_box"], bs)
            loss = loss + self.spt_weight * spt

        return StepOutput(
            loss=loss,
            losses={"seg": seg.detach(), "dist": dist.detach(), "spt": spt.detach()},
            domain_acc=domain_acc.detach(),
        )

    def _spatial_loss(self, out: Tensor, source_box: Tensor, target_box: Tensor, bs: int) -> tuple[Tensor, Tensor]:
        """L_spt (Eq. 2-3) on the final backbone map of source (0) and target (1) crops."""
        assert self.domain_classifiers is not None
        b, _, h, w = out.shape
        # The splitting layer runs on the host: the boxes come from the CPU data pipeline, so
        # validating them and counting positions per region costs no device sync.
        boxes = torch.cat([source_box, target_box]).cpu()
        region = region_index(boxes, h, w, self.grid)
        counts = region_counts(region, self.num_regions)
        region = region.to(out.device, non_blocking=True)
        domain = torch.ones(b, device=out.device)
        domain[:bs] = 0.0
        logits = self.domain_classifiers(self.grl(out), region, counts=counts)
        return spatial_aware_loss(logits, region, domain, num_regions=self.num_regions)

    def _check_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The tensors this mode uses, with clear errors on missing keys or wrong shapes."""
        needed = ["source_image", "source_label"]
        if self.uses_target:
            needed.append("target_image")
        if self.spt_on:
            needed += ["source_box", "target_box"]
        missing = [k for k in needed if k not in batch]
        if missing:
            raise ValueError(
                f"batch: missing key(s) {', '.join(missing)} (mode {self.cfg.mode!r} uses {', '.join(needed)}); "
                f"got keys {', '.join(sorted(batch)) or 'none'}"
            )
        source = batch["source_image"]
        _expect(source.dim() == 4 and source.shape[1] == 3, "source_image", "[Bs, 3, h, w]", "", source)
        bs, _, h, w = source.shape
        label = batch["source_label"]
        _expect(tuple(label.shape) == (bs, h, w), "source_label", "[Bs, h, w]", [bs, h, w], label)
        if label.dtype != torch.int64:
            if label.is_floating_point() or label.dtype == torch.bool:
                raise ValueError(f"batch['source_label']: expected an integer tensor (int64), got {label.dtype}")
            label = label.long()
        target = None
        if "target_image" in batch:
            target = batch["target_image"]
            _expect(
                target.dim() == 4 and tuple(target.shape[1:]) == (3, h, w),
                "target_image",
                "[Bt, 3, h, w]",
                ["Bt", 3, h, w],
                target,
            )
        for key, n in (("source_box", bs), ("target_box", None if target is None else target.shape[0])):
            if key in batch and n is not None:
                box = batch[key]
                _expect(tuple(box.shape) == (n, BOX_SIZE), key, f"[B, {BOX_SIZE}]", [n, BOX_SIZE], box)
        return source, label, target


def _expect(ok: bool, key: str, form: str, value: object, tensor: Tensor) -> None:
    if not ok:
        shown = f" = {value}" if value != "" else ""
        raise ValueError(f"batch[{key!r}]: expected {form}{shown}, got {list(tensor.shape)}")


def train_step(
    objective: ROADObjective,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    *,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
) -> StepOutput:
    """One optimization step on Eq. 5: zero grads, forward (under autocast if asked), backward, step.

    No ``.item()`` or other host sync: the returned losses are detached device tensors.
    ``float16`` would need a GradScaler and is refused; use ``bfloat16`` (or fp32).
    """
    if autocast_dtype == torch.float16:
        raise ValueError("train_step: float16 autocast needs a GradScaler; use torch.bfloat16 or None (fp32)")
    optimizer.zero_grad(set_to_none=True)
    ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    with ctx:
        out = objective(batch)
    out.loss.backward()
    optimizer.step()
    return out
