"""``road-ray bench trial``: where one real training run's time goes, start to end.

It runs one ``road-ray train`` run at the default sweep's run size (``search_spaces/minicity.yaml``:
its ``fixed:`` keys, i.e. 4 + 4 crops of 128 px, the small backbone, MiniCity default; the
paper's point, its first ``points_to_evaluate``), ``iters`` iterations with an evaluation every
``eval_every``, through :func:`road_ray.on_ray.train.run_training`, exactly as a Tune trial
runs it (one worker, one torch thread). Then it reads the run's last report:

- the worker's timeline (``road_ray/engine/progress.py``'s ``Timeline``): ``time/startup``
  (from the trainer's launch to the first step: Ray Train's worker group, datasets, model),
  ``time/train`` (the steps, batches included), ``time/eval``, ``time/checkpoint`` (all but
  the last checkpoint, which counts after the last report) and ``time/wall``;
- the driver's wall time of ``run_training`` (resolving inputs, building the trainer, the
  run, Ray Train's teardown). ``teardown_s`` = driver wall − the worker's ``time/wall``: the
  driver's work before the launch plus everything after the last report (the last
  checkpoint's upload, the worker group's shutdown);
- ``train_share_of_run`` = ``time/train`` / the driver's wall: the figure the target
  (≥ 0.75) is about; ``train_share`` (the worker's own) beside it. Starting and stopping a local
  Ray instance (``ray_start_s``, ``ray_stop_s``; 0 when Ray was already up, as in a sweep) are
  reported apart: a sweep pays them once for all its trials.

Only :mod:`road_ray.on_ray` imports Ray; this module reaches it inside :func:`run_trial`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import torch

from road_ray.bench.common import Progress, format_table
from road_ray.config import Config, apply_overrides

OPTIONS = ("iters", "eval_every", "smoke", "seed")
DEFAULTS: dict[str, Any] = {"iters": 480, "eval_every": 160, "seed": 0}
SMOKE: dict[str, Any] = {"iters": 4, "eval_every": 2}
SPACE = "minicity"  # the embedded default sweep
TARGETS = {"train_share_of_run_min": 0.75}
PHASES = ("startup", "train", "eval", "checkpoint", "wall")


def sweep_run_config(iters: int, eval_every: int, seed: int = 0, smoke: bool = False, **overrides: Any) -> Config:
    """The default sweep's run at the paper's point, ``iters`` long (``smoke``: the sweep's smoke sizes)."""
    from road_ray.sweeps.space import load_space
    from road_ray.sweeps.trial import trial_config

    if iters < 1 or eval_every < 1:
        raise ValueError(f"bench trial: expected --iters >= 1 and --eval-every >= 1, got {iters}, {eval_every}")
    space = load_space(SPACE)
    params = dict(space.points_to_evaluate[0]) if space.points_to_evaluate else {}
    params.update({"optim.max_iters": iters, "run.eval_every": eval_every, "run.seed": seed})
    params["run.log_every"] = min(eval_every, space.base_config().run.log_every)
    cfg = trial_config(space.base_config(smoke=smoke), params)
    return apply_overrides(cfg, overrides).validate() if overrides else cfg


def run_trial(cfg: Config, progress: Progress, label: str = "trial") -> dict[str, Any]:
    """Run ``cfg`` through ``run_training`` in a temporary storage; its timeline and outcome."""
    from road_ray.on_ray.train import ray_instance, read_history, run_training

    storage = tempfile.mkdtemp(prefix="road-ray-bench-trial-")
    name = f"bench-{label}-{os.getpid()}"
    try:
        t0 = time.perf_counter()
        with ray_instance():
            t1 = time.perf_counter()
            progress(f"{label}: run_training, {cfg.optim.max_iters} iterations, eval every {cfg.run.eval_every}")
            summary = run_training(cfg, storage=storage, name=name, log=progress)
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        history = read_history(os.path.join(storage, name))
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if not history:
        raise RuntimeError(f"bench {label}: the run reported nothing")
    return timeline_figures(history, driver_wall_s=t2 - t1, ray_start_s=t1 - t0, ray_stop_s=t3 - t2) | {
        "outcome": {k: summary.get(k) for k in ("iter", "miou", "source_val_miou", "images_per_s")},
        "reports": [{"iter": r["iter"], **{f"time/{p}": r.get(f"time/{p}") for p in PHASES}} for r in history],
    }


def timeline_figures(history: list[dict[str, Any]], driver_wall_s: float, ray_start_s: float, ray_stop_s: float):
    """The last report's ``time/*`` and ``train_share``, and the run seen from the driver."""
    last = history[-1]
    worker = {phase: float(last[f"time/{phase}"]) for phase in PHASES}
    accounted = sum(worker[p] for p in PHASES if p != "wall")
    share_of_run = worker["train"] / driver_wall_s if driver_wall_s > 0 else None
    return {
        "iterations": int(last["iter"]),
        "worker_timeline_s": worker,
        "worker_unaccounted_s": worker["wall"] - accounted,
        "train_share": last.get("train_share"),
        "driver_wall_s": driver_wall_s,
        "teardown_s": driver_wall_s - worker["wall"],
        "train_share_of_run": share_of_run,
        "ray_start_s": ray_start_s,
        "ray_stop_s": ray_stop_s,
        "train_share_with_ray_start_stop": worker["train"] / (driver_wall_s + ray_start_s + ray_stop_s),
        "seconds_per_iteration_in_train": worker["train"] / max(int(last["iter"]), 1),
        "targets": {
            **TARGETS,
            "train_share_of_run_met": None
            if share_of_run is None
            else share_of_run >= TARGETS["train_share_of_run_min"],
        },
    }


def bench(progress: Progress, **options: Any) -> dict[str, Any]:
    """Run the trial bench; returns ``{"settings", "figures", "notes"}`` (see the module docstring)."""
    o = {**DEFAULTS, **(SMOKE if options.get("smoke") else {}), **options}
    cfg = sweep_run_config(o["iters"], o["eval_every"], seed=o["seed"], smoke=bool(o.get("smoke")))
    figures = run_trial(cfg, progress)
    progress("done")
    use_gpu = torch.cuda.is_available() if cfg.run.use_gpu is None else cfg.run.use_gpu
    return {
        "settings": {
            "space": SPACE,
            "iterations": cfg.optim.max_iters,
            "eval_every": cfg.run.eval_every,
            "crop": cfg.data.crop_size,
            "batch": f"{cfg.data.batch_source}+{cfg.data.batch_target}",
            "backbone": cfg.model.backbone,
            "minicity_size": cfg.data.minicity_size,
            "max_val_images": cfg.data.max_val_images,
            "workers": cfg.run.num_workers,
            "precision": cfg.run.precision,
            "device": "cuda" if use_gpu else "cpu",
            "smoke": bool(o.get("smoke")),
            "seed": o["seed"],
        },
        "figures": figures,
        "notes": [
            "teardown_s = driver wall - the worker's time/wall: the driver's preparation before the launch "
            "(resolve_config, datasets, trainer) and everything after the last report (its checkpoint, the "
            "worker group's shutdown)",
            "one torch thread in the worker, as every Tune trial (build_trainer's torch_threads)",
        ],
    }


def table(result: dict[str, Any]) -> str:
    s, f, m = result["settings"], result["figures"], result["machine"]
    w = f["worker_timeline_s"]
    rows = [(f"worker time/{phase} (s)", f"{w[phase]:.1f}") for phase in PHASES]
    rows += [
        ("worker unaccounted (s)", f"{f['worker_unaccounted_s']:.1f}"),
        ("driver wall of run_training (s)", f"{f['driver_wall_s']:.1f}"),
        ("teardown = driver wall - worker wall (s)", f"{f['teardown_s']:.1f}"),
        ("Ray start / stop (s, apart)", f"{f['ray_start_s']:.1f} / {f['ray_stop_s']:.1f}"),
        ("train_share (worker's)", f"{f['train_share']:.3f}"),
    ]
    met = f["targets"]["train_share_of_run_met"]
    verdict = "" if met else "  <- BELOW the target"
    rows.append(("train_share of the run (target >= 0.75)", f"{f['train_share_of_run']:.3f}{verdict}"))
    rows.append(("s per iteration in training", f"{f['seconds_per_iteration_in_train']:.3f}"))
    title = (
        f"bench trial: {s['space']} run size, {s['iterations']} iterations (eval every {s['eval_every']}), "
        f"{s['batch']} crops of {s['crop']}, {s['backbone']} backbone, {s['device']}; load "
        f"{m['load_avg_start']:.1f} -> {m['load_avg_end']:.1f}"
    )
    return format_table(title, rows)


__all__ = ["bench", "run_trial", "sweep_run_config", "table", "timeline_figures"]
