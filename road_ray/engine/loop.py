"""The per-worker training loop: one readable function, no Ray inside.

``train_loop`` builds the student, the frozen teacher and the ROAD objective (paper Eq. 5),
resumes from a checkpoint when given one, runs SGD with the poly schedule, evaluates every
``run.eval_every`` iterations and hands metrics + a checkpoint directory to ``hooks.report``.
The Ray wiring (``road_ray/on_ray/train.py``) supplies the hooks (DDP wrapping, all-reduce,
``ray.train.report``); tests drive the same loop with plain iterators.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from road_ray.config import VALIDATOR_SPLIT, Config, parse_grid
from road_ray.data.transforms import normalize_tensor
from road_ray.engine import precision
from road_ray.engine.checkpoint import (
    load_checkpoint,
    load_student_state,
    read_checkpoint_metrics,
    save_checkpoint,
    set_rng_state,
)
from road_ray.engine.evaluate import EvalSettings, Observer, evaluate, predict
from road_ray.engine.label_free import LabelFreeValidators, ValidatorSettings, region_domain_probs
from road_ray.engine.optim import build_optimizer, set_learning_rate
from road_ray.engine.progress import ProgressLog, Timeline, TrainingDiverged, eval_line
from road_ray.labels import get_label_space
from road_ray.models import build_segmenter, build_teacher
from road_ray.road import ROADObjective, train_step

__all__ = ["LoopHooks", "TrainingDiverged", "autocast_dtype", "build_objective", "to_device", "train_loop"]


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
    launched_at: float | None = None  # time.time() when the runner launched the run (default: now)


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The run's autocast dtype (``road_ray/engine/precision.py``: bf16 on GPUs and native-bf16 CPUs)."""
    return precision.autocast_dtype(cfg.run.precision, device)


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


@dataclass
class _Run:
    """What the loop trains: the objective (student wrapped by the runner), its optimizer, the state."""

    objective: ROADObjective
    student: nn.Module  # unwrapped: what checkpoints store and evaluations run
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    iteration: int = 0
    best_miou: float | None = None


def _build_run(cfg: Config, hooks: LoopHooks) -> _Run:
    """Objective and optimizer; only the trainable parts go through ``hooks.wrap_module`` (DDP)."""
    objective = build_objective(cfg, hooks.device)
    student = objective.student
    optimizer = build_optimizer(student, objective.domain_classifiers, cfg.optim, fused=hooks.device.type == "cuda")
    objective.student = hooks.wrap_module(student)
    if objective.domain_classifiers is not None:
        objective.domain_classifiers = hooks.wrap_module(objective.domain_classifiers)
    return _Run(objective, student, optimizer, autocast_dtype(cfg, hooks.device))


def _resume(run: _Run, hooks: LoopHooks) -> None:
    """Weights, optimizer, RNG states, iteration and best mIoU of the checkpoint in ``hooks.resume_dir``."""
    payload = load_checkpoint(hooks.resume_dir, map_location=hooks.device)
    load_student_state(run.student, payload["student"], str(hooks.resume_dir))
    classifiers = run.objective.domain_classifiers
    if payload["domain_classifiers"] is not None and classifiers is not None:
        getattr(classifiers, "module", classifiers).load_state_dict(payload["domain_classifiers"])
    if payload["optimizer"] is not None:
        run.optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    run.iteration = payload["iteration"]
    run.best_miou = read_checkpoint_metrics(hooks.resume_dir).get("best_miou")
    hooks.log(f"[train] resumed from {hooks.resume_dir} at iteration {run.iteration}")


class _Evaluator:
    """A run's evaluation: target-val (the oracle), source-val, and the label-free validators.

    The validators (``docs/validators.md``) see the first ``validators.max_images`` images of
    the unlabelled target-*train* split (``VALIDATOR_SPLIT``; never target-val) and of source-val.
    With several workers each rank computes them on its own share of those images and rank 0's
    values are reported.
    """

    def __init__(self, cfg: Config, run: _Run, val_batches, hooks: LoopHooks) -> None:
        self.cfg, self.run, self.val_batches, self.hooks = cfg, run, val_batches, hooks
        self.label_space = get_label_space(cfg.data.label_space)
        self.settings = EvalSettings(
            mode=cfg.data.eval_mode,
            scale=cfg.data.eval_scale,
            window=cfg.data.crop_size,
            max_images=cfg.data.max_val_images,
            autocast_dtype=run.amp_dtype,
        )
        prior = cfg.data.batch_source / cfg.data.batch_target  # the domain classifiers' n_s / n_t
        self.validator_settings = ValidatorSettings.from_config(cfg.validators, dev_prior_ratio=prior)

    def split(self, name: str, observe: Observer | None = None, max_images: int | None = None) -> dict | None:
        """Scores of one split, or None when it is not configured."""
        if self.val_batches is None:
            return None
        try:
            batches = self.val_batches(name)
        except KeyError:
            return None
        h = self.hooks
        settings = self.settings if max_images is None else replace(self.settings, max_images=max_images)
        return evaluate(
            self.run.student,
            batches,
            self.label_space,
            settings,
            h.device,
            rank=h.rank,
            world_size=h.world_size,
            all_reduce=h.all_reduce,
            observe=observe,
        )

    def __call__(self) -> dict[str, Any]:
        """The evaluation metrics of a report: ``miou`` (None without target-val), per-class IoU,
        ``target_entropy`` (on target-val), ``source_val_miou`` and every ``val/*`` validator."""
        out: dict[str, Any] = {"miou": None, "target_entropy": None}
        target = self.split("target_val")
        if target is not None:
            out.update({"miou": target["miou"], "target_entropy": target["entropy"]})
            out.update({f"iou/{name}": v for name, v in target["iou"].items()})
            out.update({k: target[k] for k in ("miou16", "miou13") if k in target})
        validators = LabelFreeValidators(self.validator_settings) if self.cfg.validators.enabled else None
        source = self.split("source_val", observe=validators and self._source_observer(validators))
        out["source_val_miou"] = source["miou"] if source is not None else None
        if validators is not None:
            n = self.cfg.validators.max_images
            self.split(VALIDATOR_SPLIT, observe=self._target_observer(validators), max_images=n)
            out.update(validators.compute(model=lambda x: predict(self.run.student, x, self.settings)))
        return out

    def _source_observer(self, validators: LabelFreeValidators) -> Observer:
        classifiers = self.run.objective.domain_classifiers
        classifiers = getattr(classifiers, "module", classifiers)  # DDP keeps the module in .module
        grid = parse_grid(self.cfg.road.grid)

        def observe(batch, image, logits, features, index):
            # ROAD's own domain classifiers give DEV its density ratio; without them (e.g. nonadapt)
            # the validator fits its own on the features.
            domain = (
                region_domain_probs(classifiers, features, grid)
                if classifiers is not None and features is not None
                else None
            )
            validators.update_source(logits, batch["label"], features, domain_prob=domain, index=index)

        return observe

    @staticmethod
    def _target_observer(validators: LabelFreeValidators) -> Observer:
        def observe(batch, image, logits, features, index):
            validators.update_target(logits, features, images=image, index=index)

        return observe


def _checkpoint_and_report(cfg: Config, run: _Run, metrics: dict[str, Any], hooks: LoopHooks) -> None:
    """Rank 0 writes the checkpoint; every rank reports (a report is a barrier in Ray Train)."""
    with tempfile.TemporaryDirectory(prefix="road-ray-ckpt-") as tmp:
        ckpt = None
        if hooks.rank == 0:
            ckpt = save_checkpoint(
                Path(tmp) / "checkpoint",
                config=cfg,
                iteration=run.iteration,
                student=run.student,
                domain_classifiers=run.objective.domain_classifiers,
                optimizer=run.optimizer,
                metrics=metrics,
            )
            hooks.log(eval_line(metrics))
        hooks.report(dict(metrics), ckpt)


def train_loop(
    cfg: Config,
    train_batches: Iterator[dict[str, torch.Tensor]],
    val_batches: Callable[[str], Iterable[dict[str, Any]]] | None,
    hooks: LoopHooks,
) -> dict[str, Any]:
    """Run ``cfg.optim.max_iters`` ROAD iterations (Eq. 5); returns the last reported metrics.

    ``val_batches(name)`` yields whole images of ``"target_val"`` / ``"source_val"`` (or raises
    KeyError when that split is not configured). Every ``run.eval_every`` iterations and at the
    end: evaluate, checkpoint, report.
    """
    timeline = Timeline(hooks.launched_at)
    torch.manual_seed(cfg.run.seed + hooks.rank)
    run = _build_run(cfg, hooks)
    if hooks.resume_dir is not None:
        _resume(run, hooks)
    evaluate_run = _Evaluator(cfg, run, val_batches, hooks)
    if run.iteration >= cfg.optim.max_iters:
        # Nothing left to do, but a resumed trial must still report once (Tune needs its metric).
        hooks.report({"iter": run.iteration, "done": 1, **evaluate_run()}, None)
        return {"iter": run.iteration}

    images_per_step = (cfg.data.batch_source + cfg.data.batch_target) * hooks.world_size
    progress = ProgressLog(cfg.optim.max_iters, images_per_step, run.iteration, hooks.log if hooks.rank == 0 else None)
    metrics: dict[str, Any] = {"iter": run.iteration}
    run.objective.train()
    for iteration in range(run.iteration + 1, cfg.optim.max_iters + 1):
        timeline.started_training()
        with timeline.phase("train"):
            lr = set_learning_rate(run.optimizer, cfg.optim, iteration - 1)
            batch = to_device(next(train_batches), hooks.device)
            out = train_step(
                run.objective, run.optimizer, batch, autocast_dtype=run.amp_dtype, device_type=hooks.device.type
            )
            run.iteration = iteration
            progress.observe(out)
            is_eval = iteration % cfg.run.eval_every == 0 or iteration == cfg.optim.max_iters
            if iteration % cfg.run.log_every == 0 or is_eval:
                metrics = progress.metrics(iteration, lr)  # one host sync per log interval
        if is_eval:
            with timeline.phase("eval"):
                metrics.update(evaluate_run())
            if metrics["miou"] is not None and (run.best_miou is None or metrics["miou"] > run.best_miou):
                run.best_miou = metrics["miou"]
            metrics.update({"best_miou": run.best_miou, "elapsed_s": timeline.metrics()["time/wall"]})
            with timeline.phase("checkpoint"):
                metrics.update(timeline.metrics())  # the time of this checkpoint counts in the next report
                _checkpoint_and_report(cfg, run, metrics, hooks)
    return metrics
