"""One ROAD run on Ray Train: 2 workers (gloo), resume, a worker killed mid-run, divergence."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from road_ray.config import SMOKE_OVERRIDES, Config, apply_overrides
from road_ray.engine.checkpoint import load_checkpoint
from road_ray.engine.loop import TrainingDiverged

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def smoke_config(**overrides) -> Config:
    cfg = apply_overrides(Config(), SMOKE_OVERRIDES)
    return apply_overrides(cfg, overrides).validate()


def reported(run_dir: str) -> list[dict]:
    from road_ray.on_ray.train import read_history

    return read_history(run_dir)


def test_two_workers_loss_falls(ray_session, road_ray_home, tmp_path):
    from road_ray.on_ray.train import run_training

    # A report's loss is the mean of the steps since the previous report (one step of 2 + 2 crops
    # of 64 px swings to several times the trend, and the data order is not fixed by the seed):
    # the mean of steps 13-24 must be below that of steps 1-12 (a log interval is a report's).
    overrides = {"run.num_workers": 2, "optim.max_iters": 24, "run.eval_every": 12, "run.log_every": 12}
    cfg = smoke_config(**overrides, **{"optim.lr": 2.5e-3})
    summary = run_training(cfg, storage=str(tmp_path), name="two", log=lambda s: None)
    assert summary["iter"] == 24 and summary["miou"] is not None
    losses = [r["loss/seg"] for r in reported(summary["run_dir"]) if "loss/seg" in r]
    assert len(losses) == 2 and reported(summary["run_dir"])[-1]["iter"] == 24
    assert losses[1] < losses[0], losses
    assert load_checkpoint(summary["checkpoint"])["iteration"] == 24


def test_a_reproducible_run_reruns_the_same(ray_session, road_ray_home, tmp_path):
    from road_ray.on_ray.train import run_training

    # run.reproducible: ordered delivery and a seeded local shuffle (one worker), so a second run
    # of the seed takes the same batches and reports the same losses and mIoU.
    cfg = smoke_config(**{"run.reproducible": True, "optim.max_iters": 6, "run.eval_every": 3, "run.log_every": 3})
    runs = [run_training(cfg, storage=str(tmp_path), name=f"again{i}", log=lambda s: None) for i in range(2)]
    keys = ("iter", "loss/total", "loss/seg", "loss/dist", "loss/spt", "miou")
    first, second = ([{k: r.get(k) for k in keys} for r in reported(run["run_dir"])] for run in runs)
    assert len(first) == 2 and first == second, (first, second)


def worker_dying_once(loop_config: dict, *, after_iter: int, marker: str) -> None:
    """``train_worker``, except that rank 0 dies hard (``os._exit``: no cleanup, like a lost node)
    right after it reported iteration ``after_iter``, once: the ``marker`` file remembers that
    it happened, so the restarted worker group runs plain ``train_worker``.

    It wraps the loop's ``LoopHooks.report`` by swapping ``train_loop`` in the worker process
    only; the production worker carries no fault injection.
    """
    from unittest import mock

    from road_ray.on_ray import train as on_ray_train

    real_train_loop = on_ray_train.train_loop

    def train_loop(cfg, train_batches, val_batches, hooks):
        report = hooks.report

        def report_then_die(metrics, checkpoint_dir):
            report(metrics, checkpoint_dir)
            if hooks.rank == 0 and metrics["iter"] >= after_iter and not os.path.exists(marker):
                Path(marker).write_text(f"died after reporting iteration {metrics['iter']}")
                os._exit(1)

        return real_train_loop(cfg, train_batches, val_batches, dataclasses.replace(hooks, report=report_then_die))

    with mock.patch.object(on_ray_train, "train_loop", train_loop):
        on_ray_train.train_worker(loop_config)


def run_with_worker(cfg: Config, storage: str, name: str, worker) -> dict:
    """``run_training``, with another per-worker function (the seam ``build_trainer(worker=)``)."""
    import ray.cloudpickle

    from road_ray.engine.resolve import resolve_config
    from road_ray.on_ray.train import build_trainer, run_outcome

    # Ray workers cannot import this test module: ship its functions by value.
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    try:
        trainer = build_trainer(resolve_config(cfg, log=lambda s: None), storage=storage, name=name, worker=worker)
        return run_outcome(trainer.fit(), storage, name)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)


def test_restart_resumes_and_worker_fault_is_survived(ray_session, road_ray_home, tmp_path):
    from road_ray.on_ray.train import run_training

    # A worker dies hard after iteration 3; FailureConfig restarts the group from checkpoint 3.
    cfg = smoke_config(**{"optim.max_iters": 6, "run.eval_every": 3, "run.max_failures": 1})
    marker = tmp_path / "fault-injected"
    worker = functools.partial(worker_dying_once, after_iter=3, marker=str(marker))
    summary = run_with_worker(cfg, str(tmp_path), "resume", worker)
    assert marker.read_text() == "died after reporting iteration 3"  # the fault did happen
    assert summary["iter"] == 6
    # The same storage + name with a longer schedule resumes at 6, not from zero.
    cfg_longer = smoke_config(**{"optim.max_iters": 9, "run.eval_every": 3})
    summary = run_training(cfg_longer, storage=str(tmp_path), name="resume", log=lambda s: None)
    assert summary["iter"] == 9
    assert [m["iter"] for m in reported(summary["run_dir"])] == [3, 3, 6, 9]  # 3 again after the fault
    payload = load_checkpoint(summary["checkpoint"])
    assert payload["iteration"] == 9 and payload["optimizer"]["state"]


def test_diverging_run_stops_with_reason(ray_session, road_ray_home, tmp_path):
    from road_ray.on_ray.train import run_training

    cfg = smoke_config(**{"optim.lr": 1e12, "road.mode": "nonadapt", "optim.max_iters": 8, "run.log_every": 1})
    with pytest.raises(TrainingDiverged, match="loss became"):
        run_training(cfg, storage=str(tmp_path), name="nan", log=lambda s: None)


def test_cli_smoke_then_eval(road_ray_home, tmp_path):
    """The README's flow: `road-ray train --smoke` (own Ray instance), then `road-ray eval`."""
    run = subprocess.run(
        [sys.executable, "-m", "road_ray.cli", "train", "--smoke", "--storage", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["iter"] == SMOKE_OVERRIDES["optim.max_iters"] and summary["checkpoint"]
    # one progress line per evaluation, shown once (Ray Train's print patch used to double them)
    evals = [line for line in (run.stdout + run.stderr).splitlines() if "[eval] iter" in line]
    assert len(evals) == 2 and len(set(evals)) == 2, evals
    out = tmp_path / "scores.json"
    ev = subprocess.run(
        [
            sys.executable,
            "-m",
            "road_ray.cli",
            "eval",
            "--checkpoint",
            summary["checkpoint"],
            "--json",
            str(out),
            "--save-predictions",
            str(tmp_path / "preds"),
            "--max-images",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert set(scores["iou"]) >= {"road", "traffic light", "sky"} and 0 <= scores["miou"] <= 100
    assert len(list((tmp_path / "preds").glob("*_pred_labelIds.png"))) == 2
    bad = subprocess.run(
        [sys.executable, "-m", "road_ray.cli", "eval", "--checkpoint", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
