"""What ``road-ray bench step`` measures: the config, the batch and every timed operation.

:class:`StepSetup` builds one network and the objectives and optimizers of every variant on
one fixed in-memory batch; the bench (``bench/step.py``) and its Ray Train variant
(``on_ray/bench_step.py``, in a Train worker) build it identically, so both time the very
same step. No Ray here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from road_ray.bench.common import parse_network
from road_ray.config import Config, apply_overrides
from road_ray.data.boxes import make_box
from road_ray.engine.loop import autocast_dtype, build_objective, to_device
from road_ray.engine.optim import build_optimizer
from road_ray.models.backbones import tap_names
from road_ray.road import ROADObjective, region_counts, region_index, segmentation_loss, train_step

# Dense peak TFLOP/s by device-name fragment (first match wins, so "H100 PCIe" before "H100" and
# "L40S" before "L4"): bf16 tensor cores, TF32 tensor cores (fp32 convolutions on GPU use TF32 by
# default), plain fp32. From the vendors' datasheets, dense (the "with sparsity" figures halved
# away): NVIDIA H100 (SXM5 and PCIe), H200 (SXM, same chip as H100 SXM), A100 (SXM and PCIe),
# L40S, L4 and A10 datasheets; the A10G (AWS) has no datasheet of its own: the A10's figures.
# torch.cuda.get_device_name says e.g. "NVIDIA H100 80GB HBM3" for an H100 SXM.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.0, "tf32": 494.0, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.0, "tf32": 494.0, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10G", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]


def bench_config(network: str, crop: int, batch: int, precision: str, teacher_layer: str | None) -> Config:
    """The run config of the bench: ``network`` = ``ARCH-BACKBONE``, teacher at ``teacher_layer``
    (default: the backbone's last stage), untrained weights."""
    arch, backbone = parse_network(network)
    layer = teacher_layer or tap_names(backbone)[-2]  # [-1] is "out"
    return apply_overrides(
        Config(),
        {
            "model.arch": arch,
            "model.backbone": backbone,
            "model.teacher_layer": layer,
            "model.pretrained": "none",
            "model.allow_untrained_teacher": True,
            "data.crop_size": crop,
            "data.batch_source": batch,
            "data.batch_target": batch,
            "run.precision": precision,
        },
    ).validate()


def synthetic_batch(cfg: Config, seed: int) -> dict[str, torch.Tensor]:
    """A step batch as it comes off the wire (docs/ARCHITECTURE.md, "Batches"): uint8 images and
    labels (5% ignore), float32 boxes, plus ``target_label`` for the plain supervised step.

    Crops come from 2:1 images twice the crop's height, scaled by U(0.75, 1.25) and flipped
    with p = 1/2, as the data pipeline cuts them; :func:`road_ray.engine.loop.to_device` turns
    them into what the step receives."""
    rng = np.random.default_rng(seed)
    c, b = cfg.data.crop_size, cfg.data.batch_source
    image_h, image_w = 2 * c, 4 * c

    def boxes() -> torch.Tensor:
        rows = []
        for _ in range(b):
            scale = rng.uniform(cfg.data.scale_min, cfg.data.scale_max)
            top = rng.integers(0, max(round(image_h * scale) - c, 0) + 1)
            left = rng.integers(0, max(round(image_w * scale) - c, 0) + 1)
            rows.append(make_box(top, left, c, c, image_h, image_w, scale, rng.random() < 0.5))
        return torch.from_numpy(np.stack(rows))

    def labels() -> torch.Tensor:
        label = rng.integers(0, cfg.model.num_classes, (b, c, c), dtype=np.uint8)
        label[rng.random((b, c, c)) < 0.05] = 255
        return torch.from_numpy(label)

    def images() -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 256, (b, 3, c, c), dtype=np.uint8))

    return {
        "source_image": images(),
        "source_label": labels(),
        "source_box": boxes(),
        "target_image": images(),
        "target_box": boxes(),
        "target_label": labels(),
    }


def _autocast(dtype: torch.dtype | None, device: torch.device):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class StepSetup:
    """The network, the objectives and the optimizers of every variant, on one batch.

    All variants share one student (and one teacher), so they run the very same weights. The
    batch goes through the training loop's own ``to_device`` once (normalization included),
    so every variant times the step on exactly what the loop hands ``train_step``.
    """

    def __init__(self, cfg: Config, device: torch.device, seed: int) -> None:
        self.cfg, self.device = cfg, device
        self.amp = autocast_dtype(cfg, device)
        fused = device.type == "cuda"
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TEACHER IS UNTRAINED.*")
            self.road = build_objective(cfg, device)
        self.student, self.teacher = self.road.student, self.road.teacher
        self.road_opt = build_optimizer(self.student, self.road.domain_classifiers, cfg.optim, fused=fused)
        self.plain_opt = build_optimizer(self.student, None, cfg.optim, fused=fused)
        self.no_dist, self.no_dist_opt = self._variant(lambda_dist=0.0)
        self.no_spt, self.no_spt_opt = self._variant(lambda_spt=0.0)
        for objective in (self.road, self.no_dist, self.no_spt):
            objective.train()
        self.batch = to_device(synthetic_batch(cfg, seed), device)
        b = self.batch
        self.all_images = torch.cat([b["source_image"], b["target_image"]])
        self.all_labels = torch.cat([b["source_label"], b["target_label"]])
        self.boxes = torch.cat([b["source_box"], b["target_box"]])
        stride = self.student.feature_strides["out"]
        self.feature_size = (math.ceil(cfg.data.crop_size / stride),) * 2

    def _variant(self, **road: float) -> tuple[ROADObjective, torch.optim.Optimizer]:
        objective = ROADObjective(
            self.student,
            self.teacher,
            dataclasses.replace(self.cfg.road, **road),
            teacher_layer=self.cfg.model.teacher_layer,
            feature_channels=self.student.feature_channels["out"],
        ).to(self.device)
        if self.device.type == "cuda":
            objective.to(memory_format=torch.channels_last)
        return objective, build_optimizer(
            self.student, objective.domain_classifiers, self.cfg.optim, fused=self.device.type == "cuda"
        )

    # --- the measured operations ---------------------------------------------------
    def road_step(self, objective: ROADObjective | None = None, optimizer: torch.optim.Optimizer | None = None):
        return train_step(
            objective or self.road,
            optimizer or self.road_opt,
            self.batch,
            autocast_dtype=self.amp,
            device_type=self.device.type,
        )

    def plain_step(self) -> torch.Tensor:
        self.plain_opt.zero_grad(set_to_none=True)
        with _autocast(self.amp, self.device):
            logits, _ = self.student(self.all_images)
        loss = segmentation_loss(logits, self.all_labels)
        loss.backward()
        self.plain_opt.step()
        return loss.detach()

    def teacher_forward(self) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with _autocast(self.amp, self.device):
            return self.teacher(self.batch["target_image"])

    def splitting_layer(self) -> list[int]:
        region = region_index(self.boxes, *self.feature_size, self.road.grid)
        return region_counts(region, self.road.num_regions)

    def operations(self) -> dict[str, Callable[[], Any]]:
        ops: dict[str, Callable[[], Any]] = {
            "road": self.road_step,
            "plain": self.plain_step,
            "road_no_dist": lambda: self.road_step(self.no_dist, self.no_dist_opt),
            "road_no_spt": lambda: self.road_step(self.no_spt, self.no_spt_opt),
            "splitting_layer": self.splitting_layer,
        }
        if self.teacher is not None:
            ops["teacher"] = self.teacher_forward
        return ops

    def warm_up(self, steps: int) -> None:
        for _ in range(steps):
            for op in self.operations().values():
                op()

    def flops(self) -> dict[str, int]:
        """FLOPs of one call of every operation (FlopCounterMode: matmuls and convolutions)."""
        out = {}
        for name, op in self.operations().items():
            with FlopCounterMode(display=False) as counter:
                op()
            out[name] = int(counter.get_total_flops())
        return out


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The device's dense peak for this precision, and where the number comes from."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"--peak-tflops {override}: expected a positive number")
        return float(override), "--peak-tflops"
    if device.type != "cuda":
        return None, "no datasheet peak for CPUs (give --peak-tflops; step_over_peak compares with the measured one)"
    kind = precision if precision == "bf16" else ("tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
    return datasheet_peak(torch.cuda.get_device_name(device), kind)


def datasheet_peak(name: str, kind: str) -> tuple[float | None, str]:
    """``PEAK_TFLOPS`` of the GPU named ``name`` (``kind``: bf16, tf32 or fp32), or None and why."""
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in name:
            return peaks[kind], f"table: {fragment} {kind} dense (datasheet)"
    return None, f"{name!r} is not in the peak table (give --peak-tflops)"


__all__ = ["PEAK_TFLOPS", "StepSetup", "bench_config", "datasheet_peak", "peak_tflops", "synthetic_batch"]
