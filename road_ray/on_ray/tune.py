"""Sweeps of ROAD runs on Ray Tune: OptunaSearch (seeded) + ASHA, bounded concurrency, resume.

Train V2 inside Tune (docs/ray.md): a trial is :func:`run_trial`, an importable function (never
one defined in ``__main__``: ``Tuner.restore`` unpickles it) that builds a ``TorchTrainer``
with :func:`road_ray.on_ray.train.build_trainer` and ``TuneReportCallback`` and calls
``fit()``. Every ``ray.train.report`` of the workers becomes one Tune result (metrics +
``checkpoint_path``). The Train run is named after the trial id, so a restored trial's
Train run restores its own snapshot and continues from its latest checkpoint.

- ASHA's time is ``iter``, the Train iteration carried in the checkpoint (Tune's
  ``training_iteration`` restarts at 1 after a restore), and ``max_t`` lies above the last
  report (equal races with shutdown).
- Tune does not count the Train workers' resources: concurrency is capped here, and the
  trial function itself takes a tenth of a CPU so the workers and Ray Data get the cores.
- MiniCity preparation and the small backbone's pretraining happen once, on the driver
  (:func:`road_ray.engine.resolve.resolve_config`); trials receive resolved paths.
- A trial whose loss diverges is marked (its Train run keeps ``DIVERGED.txt``), shows up as
  ``diverged`` in the table, is not rerun on resume, and the sweep goes on.

The experiment folder ``STORAGE/NAME`` holds Tune's state and trial folders,
``train_runs/`` (the Train runs and their checkpoints) and ``road_ray_sweep.json`` (the
search space and base config the sweep ran with; ``--resume`` uses these, not the YAML).

Only the Ray half is here. What needs no Ray lives in :mod:`road_ray.sweeps`: the record and
base config built before Ray starts (:mod:`~road_ray.sweeps.record`), one trial's config
(:func:`road_ray.sweeps.trial.trial_config`, the function every trial and the tests call) and
the outcome printed at the end (:mod:`~road_ray.sweeps.outcome`).
"""

from __future__ import annotations

import copy
import os
import posixpath
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray import tune

from road_ray import jsonio
from road_ray.config import Config, config_from_dict
from road_ray.engine.loop import TrainingDiverged
from road_ray.engine.resolve import check_shard_folders
from road_ray.on_ray.train import diverged_marker, fit_watched, init_ray, run_name, run_outcome
from road_ray.paths import default_storage
from road_ray.storage import absolute, join, read_text, write_text
from road_ray.sweeps import results
from road_ray.sweeps.outcome import SweepOutcome, sweep_outcome
from road_ray.sweeps.record import load_for_resume, load_space_for_run, new_experiment_dir, new_record
from road_ray.sweeps.space import SearchSpace
from road_ray.sweeps.trial import trial_config

TRIAL_CPUS = 0.1  # the trial function only waits on fit(); the workers get the cores


# ---------------------------------------------------------------------------------------
# The trial (runs in a Tune actor)


def run_trial(params: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One Tune trial: a TorchTrainer for the base config + this trial's ``params`` (dotted keys)."""
    import ray.data
    from ray.tune.integration.ray_train import TuneReportCallback

    ray.data.DataContext.get_current().enable_progress_bars = False
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(sweep["base_config"], params, sweep["space"].get("points"))
    storage = sweep["train_storage"]
    name = train_run_name(trial_id, cfg)
    # A diverged run stays diverged: do not retrain it when the sweep is resumed.
    reason = read_text(diverged_marker(storage, name))
    if reason is not None:
        raise TrainingDiverged(reason)
    check_shard_folders(cfg)  # this trial's shards (a space may vary them): a damaged part is named
    # A run without progress for run.stall_timeout_s raises RunStalled: an ERROR trial with that
    # reason, and the sweep goes on (road_ray/on_ray/watchdog.py).
    result = fit_watched(
        cfg,
        storage=storage,
        name=name,
        in_sweep=True,
        callbacks=[TuneReportCallback()],
        torch_threads=max(1, int(cfg.run.cpus_per_worker)),
    )
    run_outcome(result, storage, name)  # raises TrainingDiverged: the trial is marked ERROR


def train_run_name(trial_id: str, cfg: Config) -> str:
    """Deterministic per trial (a restored trial resumes its Train run), readable per setting."""
    cfg = copy.deepcopy(cfg)
    cfg.run.name = ""
    return f"{trial_id}-{run_name(cfg)}"


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ---------------------------------------------------------------------------------------
# The driver


def run_sweep(
    space: str | None = None,
    *,
    num_samples: int | None = None,
    storage: str | None = None,
    name: str | None = None,
    resume: bool = False,
    smoke: bool = False,
    optuna_storage: str | None = None,
    max_concurrent: int | None = None,
    select: str | None = None,
    overrides: list[str] | None = None,
    seed: int | None = None,
    address: str | None = None,
    log=print,
) -> SweepOutcome:
    """Run (or resume) a sweep to the end and return its table and best checkpoint.

    All input errors (bad space, unknown key, missing shards, an existing experiment without
    ``--resume``) are raised before Ray starts or any trial runs. ``address``: the Ray cluster to
    join (default ``RAY_ADDRESS``, else a local instance of its own; :func:`start_ray`).
    """
    storage = absolute(storage or default_storage())
    if resume:
        experiment_dir, sweep, spec = load_for_resume(storage, name, space, log)
        if num_samples is not None:
            log(f"[tune] note: --num-samples is ignored when resuming (the sweep keeps {spec.num_samples})")
    else:
        spec = load_space_for_run(space, smoke, num_samples, select, overrides, seed)
        experiment_dir = new_experiment_dir(storage, name, spec)
        sweep = new_record(spec, experiment_dir, smoke=smoke, log=log)

    start_ray(address, log=log)
    if sweep["base_config"]["run"]["use_gpu"] is None:
        # Decided here for the whole cluster: a trial's driver may sit on a node without GPUs.
        sweep["base_config"]["run"]["use_gpu"] = ray.cluster_resources().get("GPU", 0) > 0
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), {"CPU": TRIAL_CPUS})
    if resume:
        # Finished trials are kept; unfinished and errored ones are started again, and their Train
        # runs (same names) continue from their latest checkpoints; diverged ones fail at once.
        log(
            f"[tune] resuming {experiment_dir}: finished trials are kept, unfinished ones continue from their checkpoints"
        )
        tuner = tune.Tuner.restore(experiment_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(spec, sweep, trainable, experiment_dir, max_concurrent, optuna_storage, log)
    tuner.fit()  # failed/diverged trials are recorded in the result grid; the sweep goes on
    return sweep_outcome(experiment_dir)


def _new_tuner(
    spec: SearchSpace,
    sweep: dict[str, Any],
    trainable: Any,
    experiment_dir: str,
    max_concurrent: int | None,
    optuna_storage: str | None,
    log,
) -> tune.Tuner:
    """The Tuner of a new sweep, once its record (with the machine's provenance) is written."""
    concurrency = max_concurrent or spec.max_concurrent or auto_concurrency(config_from_dict(sweep["base_config"]))
    concurrency = min(concurrency, spec.num_trials)
    sweep["machine"] = provenance()
    write_text(join(experiment_dir, results.SWEEP_RECORD), jsonio.dumps(sweep, indent=2, default=str))
    log(
        f"[tune] {spec.path}: {spec.num_trials} trials, {concurrency} at a time, metric {spec.metric} ({spec.mode})"
        f" -> {experiment_dir}"
    )
    return build_tuner(spec, sweep, trainable, experiment_dir, concurrency, optuna_storage)


def start_ray(address: str | None = None, log=print) -> None:
    """Join ``address`` or ``RAY_ADDRESS`` (``ray job submit`` sets it), else start a local
    instance of its own (:func:`road_ray.on_ray.cluster.init_ray`); one line says which."""
    init_ray(address=address, log=log)


def provenance() -> dict[str, Any]:
    """What a results page must say: the cluster's resources, versions, the code's commit."""
    import platform
    import subprocess

    import torch

    from road_ray.data.minicity import MINICITY_VERSION

    resources = ray.cluster_resources()
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cluster_cpus": resources.get("CPU", 0),
        "cluster_gpus": resources.get("GPU", 0),
        "driver_platform": platform.platform(),
        "driver_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "commit": commit,
        "minicity_version": MINICITY_VERSION,
    }


def build_tuner(
    spec: SearchSpace,
    sweep: dict[str, Any],
    trainable: Any,
    experiment_dir: str,
    concurrency: int,
    optuna_storage: str | None = None,
) -> tune.Tuner:
    storage_path, name = posixpath.split(experiment_dir.rstrip("/"))
    base = config_from_dict(sweep["base_config"])
    if spec.is_grid:
        search_alg, param_space = None, {k: tune.grid_search(v) for k, v in spec.full_grid.items()}
    else:
        search_alg, param_space = optuna_searcher(spec, name, optuna_storage), {}
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler(spec, base),
            num_samples=spec.num_samples,
            max_concurrent_trials=concurrency,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            # No blind retries: a diverged trial would fail again. Train already replaces dead
            # workers (run.max_failures); `--resume` reruns errored trials from their checkpoints.
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,  # status tables; each trial's metrics are in its folder and the final table
        ),
    )


def optuna_searcher(spec: SearchSpace, study_name: str, optuna_storage: str | None = None) -> Any:
    """OptunaSearch over the space's distributions, seeded, trying ``points_to_evaluate`` first."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    space = {}
    for key, p in spec.params.items():
        if p.kind == "choice":
            space[key] = CategoricalDistribution(list(p.values))
        elif p.kind == "randint":
            space[key] = IntDistribution(int(p.low), int(p.high))  # type: ignore[arg-type]
        else:
            space[key] = FloatDistribution(p.low, p.high, log=p.kind == "loguniform")  # type: ignore[arg-type]
    storage = None
    if optuna_storage:
        # An optuna storage object, not a URL string (docs/ray.md); the study outlives the sweep.
        path = Path(optuna_storage).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(url=f"sqlite:///{path}")
    return OptunaSearch(
        space,
        metric=spec.metric,
        mode=spec.mode,
        points_to_evaluate=[dict(p) for p in spec.points_to_evaluate],
        seed=spec.seed,
        storage=storage,
        study_name=study_name if storage is not None else None,
    )


def scheduler(spec: SearchSpace, base: Config) -> Any:
    """ASHA on the Train iteration (``iter``), or None (FIFO: every trial runs to the end)."""
    if spec.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_iters = spec.max_iters(base)
    max_t = spec.scheduler.max_t or max_iters + 1  # above the last report (docs/ray.md)
    grace = spec.scheduler.grace_period or base.run.eval_every
    return ASHAScheduler(
        time_attr="iter", max_t=max_t, grace_period=min(grace, max_t), reduction_factor=spec.scheduler.reduction_factor
    )


def auto_concurrency(cfg: Config) -> int:
    """Trials at a time: GPUs // GPUs per trial; on CPU, leave Ray Data room (docs/ray.md)."""
    resources = ray.cluster_resources()
    use_gpu = cfg.run.use_gpu if cfg.run.use_gpu is not None else resources.get("GPU", 0) > 0
    if use_gpu:
        return max(1, int(resources.get("GPU", 0) // cfg.run.num_workers))
    per_trial = cfg.run.num_workers * cfg.run.cpus_per_worker + 2 * cfg.data.cpus_per_map_task + TRIAL_CPUS
    # At least ~4 cores per CPU trial: on a small machine two trials only starve each other.
    return max(1, int(resources.get("CPU", 1) // max(per_trial, 4.0)))
