"""The per-worker training loop: one readable function, no Ray inside.

``train_loop`` builds the student, the frozen teacher and the ROAD objective (paper Eq. 5),
resumes from a checkpoint when given one, runs SGD with the poly schedule, evaluates every
``run.eval_every`` iterations and hands metrics + a checkpoint directory to ``hooks.report``.
The Ray wiring (``road_ray/on_ray/train.py``) supplies the hooks (DDP wrapping, all-reduce,
``ray.train.report``); tests drive the same loop with plain iterators.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from road_ray.config import Config
from road_ray.data.transforms import normalize_tensor
from road_ray.engine.checkpoint import (
    load_checkpoint,
    load_student_state,
    read_checkpoint_metrics,
    save_checkpoint,
    set_rng_state,
)
from road_ray.engine.evaluate import EvalSettings, evaluate
from road_ray.engine.optim import build_optimizer, set_learning_rate
from road_ray.labels import get_label_space
from road_ray.models import build_segmenter, build_teacher
from road_ray.road import ROADObjective, train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf: the run stops; its last good checkpoint is left intact."""


@dataclass
class LoopHooks:
    """What the loop needs from its runner (Ray Train or a test)."""

    report: Callable[[dict[str, Any], Path | None], None]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    resume_dir: Path | None = None
    wrap_module: Callable[[nn.Module], nn.Module] = lambda m: m
    all_reduce: Callable[[torch.Tensor], None] | None = None
    log: Callable[[str], None] = print


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU (DESIGN §3), fp32 on CPU unless asked otherwise."""
    if cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_objective(cfg: Config, device: torch.device) -> ROADObjective:
    """Student, frozen teacher (only for distillation modes) and domain classifiers."""
    student = build_segmenter(cfg.model)
    if cfg.road.mode == "frozen":
        student.freeze_stages(cfg.road.frozen_stages)
    teacher = build_teacher(cfg.model) if cfg.road.uses_teacher else None
    objective = ROADObjective(
        student,
        teacher,
        cfg.road,
        teacher_layer=cfg.model.teacher_layer,
        feature_channels=student.feature_channels["out"],
    )
    objective.to(device)
    if device.type == "cuda":
        objective.to(memory_format=torch.channels_last)
    return objective


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        # Crop boxes stay on the CPU: the splitting layer computes regions there (no host sync).
        if isinstance(v, torch.Tensor) and not k.endswith("_box"):
            v = v.to(device, non_blocking=True)
            if v.dtype == torch.uint8:  # crops travel as uint8 (road_ray.data.transforms.CropBatch)
                v = normalize_tensor(v) if k.endswith("image") else v.long()
            if v.ndim == 4 and device.type == "cuda":
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _eval_metrics(prefix: str, scores: dict[str, Any]) -> dict[str, Any]:
    if prefix == "":
        metrics = {"miou": scores["miou"], "target_entropy": scores["entropy"]}
        metrics.update({f"iou/{name}": v for name, v in scores["iou"].items()})
        for key in ("miou16", "miou13"):
            if key in scores:
                metrics[key] = scores[key]
        return metrics
    return {f"{prefix}miou": scores["miou"]}


def train_loop(
    cfg: Config,
    train_batches: Iterator[dict[str, torch.Tensor]],
    val_batches: Callable[[str], Iterable[dict[str, Any]]] | None,
    hooks: LoopHooks,
) -> dict[str, Any]:
    """Run ``cfg.optim.max_iters`` ROAD iterations; returns the last reported metrics.

    ``val_batches(name)`` yields whole images of ``"target_val"`` / ``"source_val"``
    (or raises KeyError when that split is not configured).
    """
    torch.manual_seed(cfg.run.seed + hooks.rank)
    device = hooks.device
    objective = build_objective(cfg, device)
    student = objective.student
    optimizer = build_optimizer(student, objective.domain_classifiers, cfg.optim, fused=device.type == "cuda")
    objective.student = hooks.wrap_module(student)
    if objective.domain_classifiers is not None:
        objective.domain_classifiers = hooks.wrap_module(objective.domain_classifiers)
    amp_dtype = autocast_dtype(cfg, device)

    start_iter, best_miou = 0, -math.inf
    if hooks.resume_dir is not None:
        payload = load_checkpoint(hooks.resume_dir, map_location=device)
        load_student_state(student, payload["student"], str(hooks.resume_dir))
        if payload["domain_classifiers"] is not None and objective.domain_classifiers is not None:
            getattr(objective.domain_classifiers, "module", objective.domain_classifiers).load_state_dict(
                payload["domain_classifiers"]
            )
        if payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        start_iter = payload["iteration"]
        previous_best = read_checkpoint_metrics(hooks.resume_dir).get("best_miou")
        best_miou = previous_best if previous_best is not None else best_miou
        hooks.log(f"[train] resumed from {hooks.resume_dir} at iteration {start_iter}")

    label_space = get_label_space(cfg.data.label_space)
    eval_settings = EvalSettings(
        mode=cfg.data.eval_mode,
        scale=cfg.data.eval_scale,
        window=cfg.data.crop_size,
        max_images=cfg.data.max_val_images,
        autocast_dtype=amp_dtype,
    )
    images_per_step = (cfg.data.batch_source + cfg.data.batch_target) * hooks.world_size
    metrics: dict[str, Any] = {"iter": start_iter}
    t_window, it_window = time.perf_counter(), start_iter
    run_start = time.perf_counter()

    def evaluate_split(name: str) -> dict[str, Any] | None:
        if val_batches is None:
            return None
        try:
            batches = val_batches(name)
        except KeyError:
            return None
        return evaluate(
            student,
            batches,
            label_space,
            eval_settings,
            device,
            rank=hooks.rank,
            world_size=hooks.world_size,
            all_reduce=hooks.all_reduce,
        )

    if start_iter >= cfg.optim.max_iters:
        # Nothing left to do, but a resumed trial must still report once (ray-notes).
        hooks.report({"iter": start_iter, "done": 1, **_final_eval(evaluate_split)}, None)
        return metrics

    objective.train()
    for iteration in range(start_iter + 1, cfg.optim.max_iters + 1):
        lr = set_learning_rate(optimizer, cfg.optim, iteration - 1)
        batch = to_device(next(train_batches), device)
        out = train_step(objective, optimizer, batch, autocast_dtype=amp_dtype, device_type=device.type)

        is_eval = iteration % cfg.run.eval_every == 0 or iteration == cfg.optim.max_iters
        if iteration % cfg.run.log_every == 0 or is_eval:
            # One host sync per log interval (not per step); it also guards against divergence.
            losses = {k: v.item() for k, v in out.losses.items()}
            total = out.loss.item()
            if not math.isfinite(total):
                raise TrainingDiverged(
                    f"loss became {total} at iteration {iteration} (seg {losses['seg']}, dist {losses['dist']}, "
                    f"spt {losses['spt']}); the last good checkpoint is kept"
                )
            now = time.perf_counter()
            ips = (iteration - it_window) * images_per_step / max(now - t_window, 1e-9)
            t_window, it_window = now, iteration
            eta = (cfg.optim.max_iters - iteration) * images_per_step / max(ips, 1e-9)
            metrics = {
                "iter": iteration,
                "lr": lr,
                "loss/total": total,
                "loss/seg": losses["seg"],
                "loss/dist": losses["dist"],
                "loss/spt": losses["spt"],
                "domain_acc": out.domain_acc.item(),
                "images_per_s": ips,
            }
            if hooks.rank == 0:
                hooks.log(
                    f"[train] iter {iteration}/{cfg.optim.max_iters} loss {total:.4f} (seg {losses['seg']:.4f} "
                    f"dist {losses['dist']:.4f} spt {losses['spt']:.4f}) dom_acc {metrics['domain_acc']:.2f} "
                    f"lr {lr:.2e} {ips:.1f} img/s eta {eta:.0f}s"
                )

        if is_eval:
            metrics.update(_final_eval(evaluate_split))
            metrics["elapsed_s"] = time.perf_counter() - run_start
            miou = metrics.get("miou")
            if miou is not None and miou > best_miou:
                best_miou = miou
            metrics["best_miou"] = best_miou if math.isfinite(best_miou) else None
            # Rank 0 writes the checkpoint; every rank reports (it is a barrier in Ray Train).
            with tempfile.TemporaryDirectory(prefix="road-ray-ckpt-") as tmp:
                ckpt = None
                if hooks.rank == 0:
                    ckpt = save_checkpoint(
                        Path(tmp) / "checkpoint",
                        config=cfg,
                        iteration=iteration,
                        student=student,
                        domain_classifiers=objective.domain_classifiers,
                        optimizer=optimizer,
                        metrics=metrics,
                    )
                    hooks.log(_eval_line(metrics))
                hooks.report(dict(metrics), ckpt)
    return metrics


def _final_eval(evaluate_split: Callable[[str], dict[str, Any] | None]) -> dict[str, Any]:
    out: dict[str, Any] = {"miou": None, "target_entropy": None}
    target = evaluate_split("target_val")
    if target is not None:
        out.update(_eval_metrics("", target))
    source = evaluate_split("source_val")
    out["source_val_miou"] = source["miou"] if source is not None else None
    return out


def _eval_line(metrics: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return (
        f"[eval] iter {metrics['iter']} target-val mIoU (oracle) {fmt(metrics.get('miou'))} | "
        f"source-val mIoU {fmt(metrics.get('source_val_miou'))} | target entropy (label-free) "
        f"{fmt(metrics.get('target_entropy'))}"
    )
