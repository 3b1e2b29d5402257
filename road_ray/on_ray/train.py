"""One ROAD run on Ray Train (Train V2): the driver that builds the TorchTrainer, and the worker.

The worker function knows nothing of the driver (Ray's examples' shape): it reads its config,
takes its Ray Data shards, resumes from ``ray.train.get_checkpoint()`` and runs the plain
PyTorch loop of ``road_ray.engine.loop`` with Ray hooks. Only trainable modules (student,
domain classifiers) go through ``prepare_model``/DDP; the frozen teacher does not.

A run is named deterministically, so restarting with the same storage and name resumes it
(Train V2 restores its snapshot and hands the latest checkpoint to the workers), and
``FailureConfig(max_failures)`` replaces a dead worker group from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from road_ray import jsonio
from road_ray.config import TRAIN_SPLITS, VAL_SPLITS, VALIDATOR_SPLIT, Config, config_from_dict, load_config
from road_ray.data.shard_check import NamedReadErrors, damaged_shard_in, is_read_error, named_read_error
from road_ray.engine.loop import LoopHooks, TrainingDiverged, train_loop
from road_ray.engine.resolve import check_shard_folders, resolve_config
from road_ray.on_ray.cluster import current_cluster, init_ray, ray_instance  # noqa: F401 - init_ray, ray_instance: re-exported
from road_ray.on_ray.data import CachedValidation, mixed_domain_batches, train_stream, val_stream
from road_ray.on_ray.watchdog import Heartbeat, RunNeeds, RunWatchdog, StopWhenStalled, WatchPlan, watched_fit
from road_ray.paths import default_storage
from road_ray.storage import absolute, join, read_text, with_scheme, write_text


def run_name(cfg: Config) -> str:
    """A name built from the settings (DAFormer-style), deterministic so a restart resumes."""
    if cfg.run.name:
        return cfg.run.name
    r = cfg.road
    return (
        f"{cfg.model.arch}-{cfg.model.backbone}-{r.mode}-l1_{r.lambda_dist:g}-l2_{r.lambda_spt:g}"
        f"-{r.grid}-{cfg.model.teacher_layer}-it{cfg.optim.max_iters}-s{cfg.run.seed}"
    )


def _ray_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray needs numbers: unavailable metrics become NaN; a score for keeping the best checkpoint."""
    out = {k: (math.nan if v is None else v) for k, v in metrics.items()}
    miou = metrics.get("miou")
    out["checkpoint_score"] = miou if miou is not None else -1.0
    return out


def _worker_log(line: str) -> None:
    """Progress lines of a Train worker, once: Ray Train patches ``print`` in its workers to
    write both to the (wrapped) stdout and to its logger, so the driver showed every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: runs on every Ray Train worker.

    ``loop_config`` (built by :func:`build_trainer`): ``config`` (``Config.to_dict()``),
    ``val_splits`` (the validation datasets given to the trainer), ``torch_threads``,
    ``history`` (the run's ``metrics.jsonl``), ``diverged_marker`` (where rank 0 writes why
    the loss diverged) and ``watch`` (:class:`~road_ray.on_ray.watchdog.WatchPlan`: rank 0's
    heartbeat, read by the driver's watchdog).
    """
    cfg = config_from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(loop_config.get("torch_threads", 1))))
    heartbeat = Heartbeat(loop_config.get("watch") if rank == 0 else None)
    heartbeat.beat("started")
    with resumed_checkpoint() as resume_dir:
        hooks = LoopHooks(
            report=RunReporter(rank, loop_config["history"], heartbeat),
            device=ray.train.torch.get_device(),
            rank=rank,
            world_size=world_size,
            resume_dir=resume_dir,
            wrap_module=_prepare_trainable,
            all_reduce=_all_reduce if world_size > 1 else None,
            log=_worker_log,
            launched_at=loop_config.get("launched_at"),
        )
        try:
            train_loop(
                cfg,
                heartbeat.each(_step_batches(cfg), "step"),
                _validation_batches(cfg, loop_config["val_splits"], heartbeat),
                hooks,
            )
        except TrainingDiverged as e:
            # Mark the run instead of crashing: a crash would be retried from the checkpoint and
            # diverge again. The driver reads the marker (run_outcome) and stops with this reason.
            if rank == 0:
                write_text(loop_config["diverged_marker"], str(e))


def _shard(cfg: Config, name: str) -> NamedReadErrors:
    """This worker's shard of dataset ``name``; a read error names the config key and the part."""
    key = "target" if name == VALIDATOR_SPLIT else name  # the validators read target-train images
    return NamedReadErrors(ray.train.get_dataset_shard(name), f"data.{key}", cfg.data.split(key) or "")


def _step_batches(cfg: Config):
    """This worker's step batches: its shards of the ``source`` and ``target`` train streams."""
    return mixed_domain_batches(
        _shard(cfg, "source"),
        _shard(cfg, "target"),
        batch_source=cfg.data.batch_source,
        batch_target=cfg.data.batch_target,
        prefetch_batches=cfg.data.prefetch_batches,
        device="cpu",
        shuffle_seed=cfg.run.seed if cfg.run.reproducible else None,
    )


def _validation_batches(
    cfg: Config, names: list[str], heartbeat: Heartbeat
) -> Callable[[str], Iterator[dict[str, Any]]]:
    """``val_batches(name)`` for the loop: a KeyError for a split the run has not configured.

    Validation images stay in the worker's memory after the first evaluation when they fit
    (:class:`road_ray.on_ray.data.CachedValidation`); every image is a heartbeat, so a long
    evaluation is progress for the watchdog."""
    splits = {name: CachedValidation(lambda name=name: _shard(cfg, name)) for name in names}
    return lambda name: heartbeat.each(splits[name](), "eval")


def _all_reduce(t: torch.Tensor) -> None:
    torch.distributed.all_reduce(t)


@contextlib.contextmanager
def resumed_checkpoint() -> Iterator[Path | None]:
    """The run's latest checkpoint as a local folder (None on a fresh start), removed afterwards.

    ``ray.train.get_checkpoint()`` may live on remote storage; the loop reads a local copy."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    local_copy = Path(tempfile.mkdtemp(prefix="road-ray-resume-"))
    try:
        with checkpoint.as_directory() as d:
            shutil.copytree(d, local_copy / "checkpoint")
        yield local_copy / "checkpoint"
    finally:
        shutil.rmtree(local_copy, ignore_errors=True)


class RunReporter:
    """``LoopHooks.report`` on Ray Train: every rank calls ``ray.train.report`` (a barrier), with
    the checkpoint folder rank 0 wrote; rank 0 also appends the metrics to the run's history.

    Ray keeps only the metrics of the checkpoints it keeps, so the whole history (one JSON
    object per report, :func:`read_history`) lives next to the checkpoints. A restarted worker
    group reads it back and appends, so a repeated iteration shows twice.
    """

    def __init__(self, rank: int, history_uri: str, heartbeat: Heartbeat | None = None) -> None:
        self.rank, self.history_uri = rank, history_uri
        self.history = (read_text(history_uri) or "") if rank == 0 else ""
        self.heartbeat = heartbeat or Heartbeat(None)

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if self.rank == 0:
            self.history += jsonio.dumps(metrics) + "\n"
            write_text(self.history_uri, self.history)
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(
            _ray_metrics(metrics),
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint_{int(metrics['iter']):07d}" if checkpoint else None,
        )
        self.heartbeat.beat("report")


HISTORY_FILE = "metrics.jsonl"


def read_history(run_dir: str) -> list[dict[str, Any]]:
    """Every report of a run (``metrics.jsonl`` in its folder), oldest first."""
    text = read_text(join(run_dir, HISTORY_FILE)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def diverged_marker(storage: str, name: str) -> str:
    return join(storage, name, "DIVERGED.txt")


def _prepare_trainable(module: torch.nn.Module) -> torch.nn.Module:
    """DDP only for modules with trainable parameters (the teacher never comes here)."""
    if not any(p.requires_grad for p in module.parameters()):
        return module
    if ray.train.get_context().get_world_size() == 1:
        return module
    # find_unused_parameters: frozen stages and the unused head taps are legal in some modes.
    return ray.train.torch.prepare_model(
        module, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
    )


def build_trainer(
    cfg: Config,
    *,
    storage: str,
    name: str,
    callbacks: list | None = None,
    torch_threads: int = 1,
    worker: Callable[[dict[str, Any]], None] = train_worker,
    watch: WatchPlan | None = None,
) -> TorchTrainer:
    """A TorchTrainer for one run; the datasets are Ray Data streams of the configured shards.

    ``worker``: the per-worker function, :func:`train_worker`; a test may pass one that wraps it
    (e.g. to kill a worker mid-run). It is pickled to the workers, so it must be importable
    there or pickled by value. ``watch``: where this launch's heartbeat and stop marker go
    (:func:`fit_watched` makes one; default: a new one nobody watches).
    """
    watch = watch or WatchPlan.for_run(absolute(storage), name)
    use_gpu = uses_gpu(cfg)
    datasets, val_splits = _datasets(cfg)
    storage_path = absolute(storage)
    return TorchTrainer(
        worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "val_splits": val_splits,
            "torch_threads": torch_threads,
            "diverged_marker": diverged_marker(storage_path, name),
            "history": join(storage_path, name, HISTORY_FILE),
            "watch": watch.to_dict(),
            # the run's timeline starts here, so that its start-up includes Ray Train's own
            # (worker group, datasets); a cluster's clocks are NTP-synchronised
            "launched_at": time.time(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[*(callbacks or []), StopWhenStalled(watch)],
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="max"
            ),  # keeps the best-by-mIoU checkpoint; Ray always keeps the latest as well
        ),
        datasets=datasets,
        dataset_config=_dataset_config(cfg),
    )


def _dataset_config(cfg: Config) -> ray.train.DataConfig:
    """Train splits the train streams across the workers. Train sets each dataset's execution
    options itself (a dataset's own are replaced), so run.reproducible's ordered delivery goes here."""
    if not cfg.run.reproducible:
        return ray.train.DataConfig(datasets_to_split=list(TRAIN_SPLITS))
    ordered = ray.train.DataConfig.default_ingest_options()
    ordered.preserve_order = True
    return ray.train.DataConfig(
        datasets_to_split=list(TRAIN_SPLITS), execution_options={name: ordered for name in TRAIN_SPLITS}
    )


def _datasets(cfg: Config) -> tuple[dict[str, Any], list[str]]:
    """The Ray Data streams of a run, and the names of its validation datasets. Ray samples some
    parts when it plans a read; an error there names the config key and the part."""
    plans: dict[str, tuple[str, Callable[[], Any]]] = {
        "source": ("source", lambda: train_stream(cfg.data.source, cfg.data, seed=cfg.run.seed, labeled=True)),
        "target": ("target", lambda: train_stream(cfg.data.target, cfg.data, seed=cfg.run.seed + 1, labeled=False)),
    }
    for key in VAL_SPLITS:
        path = cfg.data.split(key)
        if path:
            plans[key] = (key, lambda path=path: val_stream(path, cfg.data, max_images=cfg.data.max_val_images))
    if cfg.validators.enabled:  # the label-free validators' unlabelled target-train images (never target-val)
        limit = cfg.validators.max_images
        plans[VALIDATOR_SPLIT] = (
            "target",
            lambda: val_stream(cfg.data.target, cfg.data, max_images=limit, labeled=False),
        )
    datasets = {}
    for name, (key, plan) in plans.items():
        try:
            datasets[name] = plan()
        except Exception as e:
            if not is_read_error(e):
                raise
            raise named_read_error(f"data.{key}", cfg.data.split(key) or "", e) from None
    return datasets, [name for name in plans if name not in TRAIN_SPLITS]


def run_outcome(result: ray.train.Result, storage: str, name: str) -> dict[str, Any]:
    """The JSON summary of a finished run: iter, miou, checkpoint (+ the best one).

    Raises TrainingDiverged when the run stopped on a NaN/inf loss.
    """
    reason = read_text(diverged_marker(storage, name))
    if reason is not None:
        raise TrainingDiverged(reason)
    metrics = dict(result.metrics or {})
    latest = with_scheme(storage, result.checkpoint.path) if result.checkpoint else None
    best = None
    if result.best_checkpoints:
        best_ckpt, _ = max(result.best_checkpoints, key=lambda cm: cm[1].get("checkpoint_score", -1))
        best = with_scheme(storage, best_ckpt.path)
    miou = metrics.get("miou")
    return {
        "iter": int(metrics.get("iter", 0)),
        "miou": None if miou is None or (isinstance(miou, float) and math.isnan(miou)) else miou,
        "source_val_miou": metrics.get("source_val_miou"),
        "target_entropy": metrics.get("target_entropy"),
        "images_per_s": metrics.get("images_per_s"),
        "checkpoint": latest,
        "best_checkpoint": best,
        "run_dir": result.path,
    }


def uses_gpu(cfg: Config) -> bool:
    return torch.cuda.is_available() if cfg.run.use_gpu is None else cfg.run.use_gpu


def fit_watched(
    cfg: Config, *, storage: str, name: str, log=print, in_sweep: bool = False, **trainer_options: Any
) -> ray.train.Result:
    """:func:`build_trainer` + ``fit()`` under a :class:`~road_ray.on_ray.watchdog.RunWatchdog`:
    a quiet run says what it waits for, and stops with RunStalled after ``run.stall_timeout_s``."""
    watch = WatchPlan.for_run(absolute(storage), name)
    choice = current_cluster()
    needs = RunNeeds(
        num_workers=cfg.run.num_workers,
        cpus_per_worker=cfg.run.cpus_per_worker,
        gpus_per_worker=1 if uses_gpu(cfg) else 0,
        data_cpus=cfg.data.cpus_per_map_task,
        cluster=choice.describe(),
        joined=not choice.is_local,
        in_sweep=in_sweep,
    )
    watchdog = RunWatchdog(watch, run=name, stall_timeout_s=cfg.run.stall_timeout_s, explain=needs.explain, log=log)
    try:
        return watched_fit(
            lambda: build_trainer(cfg, storage=storage, name=name, watch=watch, **trainer_options), watchdog
        )
    except ray.train.TrainingFailedError as e:
        damaged = damaged_shard_in(e)  # a worker met a damaged part: one line, not Ray's traceback
        if damaged is None:
            raise
        raise damaged from None


def run_training(
    cfg: Config, storage: str | None = None, name: str | None = None, log=print, address: str | None = None
) -> dict[str, Any]:
    """Resolve inputs, run one TorchTrainer to the end, return its summary.

    ``address``: the Ray cluster to join (see :func:`road_ray.on_ray.cluster.init_ray`: default
    ``RAY_ADDRESS``, else a local instance of its own). Raises RunStalled (one line) when the run
    made no progress for ``run.stall_timeout_s`` seconds.
    """
    cfg = resolve_config(cfg, log=log)
    check_shard_folders(cfg)
    storage = storage or cfg.run.storage or default_storage()
    storage = absolute(storage)
    name = name or run_name(cfg)
    init_ray(address=address, log=log)
    log(f"[train] run {name} in {storage}")
    return run_outcome(fit_watched(cfg, storage=storage, name=name, log=log), storage, name)


def train_from_cli(
    config_path: str | None,
    overrides: list[str],
    smoke: bool,
    storage: str | None,
    name: str | None,
    address: str | None = None,
) -> dict[str, Any]:
    cfg = load_config(config_path, overrides, smoke=smoke)
    return run_training(cfg, storage=storage, name=name, address=address)
