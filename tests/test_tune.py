"""Sweeps on Ray Tune end to end, at toy size (MiniCity small, 64-px crops, a few iterations).

One Ray instance per test session (``ray_session``). The resume test runs ``tune.py`` as a
separate driver process connected to that instance (like ``ray job submit``), kills it hard
after its first trial finished, and resumes it with ``--resume`` in a new process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from road_ray.sweeps.results import TRAIN_RUNS, read_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

# Three trials in a fixed order, chosen so that the outcome does not depend on training noise:
# the search metric is the distillation loss (lower is better), which is exactly 0 without
# distillation. At ASHA's first rung (iteration 3) the ROAD trial's positive loss is below the
# rung's cutoff, so ASHA stops it; the third trial's absurd learning rate makes its loss NaN,
# so it is marked diverged and the sweep goes on. Every report still carries the oracle mIoU.
ASHA_SPACE = """
smoke: true
metric: loss/dist
num_samples: 3
max_concurrent: 1
scheduler: {type: asha, grace_period: 3, reduction_factor: 2}
params:
  road.mode: {choice: [nonadapt, road]}
  optim.lr: {choice: [2.5e-4, 1.0e+8]}
points_to_evaluate:
  - {road.mode: nonadapt, optim.lr: 2.5e-4}
  - {road.mode: road, optim.lr: 2.5e-4}
  - {road.mode: road, optim.lr: 1.0e+8}
"""

# Two trials run to the end (no early stopping): 6 iterations, a checkpoint every 3.
RESUME_SPACE = """
smoke: true
num_samples: 2
max_concurrent: 1
scheduler: {type: fifo}
params:
  road.lambda_dist: {loguniform: {low: 0.01, high: 1.0}}
points_to_evaluate:
  - {road.lambda_dist: 0.1}
  - {road.lambda_dist: 0.5}
"""


@pytest.fixture(scope="module")
def asha_sweep(ray_session, road_ray_home, tmp_path_factory):
    from road_ray.on_ray.tune import run_sweep

    tmp = tmp_path_factory.mktemp("asha")
    space = tmp / "space.yaml"
    space.write_text(ASHA_SPACE)
    return run_sweep(str(space), storage=str(tmp / "results"), name="asha", log=lambda *_: None)


def test_asha_stops_a_trial_and_a_diverged_trial_is_marked(asha_sweep, road_ray_home):
    exp = read_experiment(asha_sweep.experiment_dir)
    states = {t.params["road.mode"] + "@" + str(t.params["optim.lr"]): t for t in exp.trials}
    assert len(exp.trials) == 3
    nonadapt, road, diverging = states["nonadapt@0.00025"], states["road@0.00025"], states["road@100000000.0"]
    assert nonadapt.state == "complete" and nonadapt.iter == 6
    assert road.state == "stopped early (ASHA)" and road.iter == 3  # time_attr is the Train iteration
    assert diverging.state == "diverged" and diverging.status == "ERROR"
    for t in (nonadapt, road):  # every report carries the oracle metric and the proxies
        assert all(r.get("miou") is not None and "target_entropy" in r for r in t.rows)
    assert asha_sweep.best_trial == nonadapt.trial_id  # loss/dist 0
    assert "stopped early (ASHA)" in asha_sweep.table and "diverged" in asha_sweep.table
    # MiniCity and the pretrained backbone were resolved once, on the driver: trials get paths.
    base = exp.record["base_config"]
    assert Path(base["model"]["pretrained"]).is_file() and base["data"]["source"].startswith(road_ray_home)
    # Each trial's Train run is named after the trial id (a restored trial resumes it).
    runs = [p.name for p in (Path(asha_sweep.experiment_dir) / TRAIN_RUNS).iterdir()]
    assert {r.split("-", 1)[0] for r in runs} == {t.trial_id for t in exp.trials}


def test_eval_best_picks_the_final_checkpoint_of_the_best_trial(asha_sweep, tmp_path):
    from road_ray.cli import main

    exp = read_experiment(asha_sweep.experiment_dir)

    def final_checkpoint_of_best(metric, sign):
        # --best [--by METRIC]: the trial whose *final* METRIC is best, and that trial's final checkpoint
        ranked = sorted(
            ((sign * t.value(metric), t) for t in exp.trials if t.value(metric) is not None), key=lambda vt: -vt[0]
        )
        for _, trial in ranked:
            final = [r["checkpoint_path"] for r in trial.rows if r.get("checkpoint_path")]
            if final and Path(final[-1]).is_dir():
                return final[-1]
        raise AssertionError(f"no trial ranked by {metric} has a checkpoint")

    # The default is the sweep's own metric: loss/dist here (lower is better; NonAdapt's is 0).
    by_sweep_metric = final_checkpoint_of_best("loss/dist", -1)
    assert exp.metric == "loss/dist" and "nonadapt" in by_sweep_metric
    # --by miou-over-time: test-set selection, the highest mIoU of any evaluation of any trial
    rows = [r for t in exp.trials for r in t.rows if r.get("checkpoint_path") and Path(r["checkpoint_path"]).is_dir()]
    over_time = max(rows, key=lambda r: r["miou"])["checkpoint_path"]
    for extra, expected in (
        ([], by_sweep_metric),
        (["--by", "miou"], final_checkpoint_of_best("miou", 1)),
        (["--by", "miou-over-time"], over_time),
    ):
        out = tmp_path / "eval.json"
        args = ["eval", "--experiment", asha_sweep.experiment_dir, "--best", *extra, "--max-images", "2"]
        assert main([*args, "--json", str(out)]) == 0
        assert json.loads(out.read_text())["checkpoint"] == expected, extra
    # --each-trial: every trial's final checkpoint scored on a labelled split, the sweep's pick marked
    out = tmp_path / "each.json"
    args = ["eval", "--experiment", asha_sweep.experiment_dir, "--each-trial", "--max-images", "2"]
    assert main([*args, "--dataset", "minicity", "--json", str(out)]) == 0
    each = json.loads(out.read_text())
    picked = [r for r in each["trials"] if r["picked"]]
    assert len(picked) == 1 and picked[0]["checkpoint"] == by_sweep_metric and each["by"] == "loss/dist"
    assert each["oracle_pick_miou"] == max(r["miou"] for r in each["trials"]) >= each["pick_miou"]
    assert each["regret"] == each["oracle_pick_miou"] - each["pick_miou"]
    assert {r["trial"] for r in each["trials"]} <= {t.trial_id for t in exp.trials} and len(each["trials"]) >= 2


def test_report_of_a_real_sweep(asha_sweep, tmp_path):
    from road_ray.sweeps.report import write_report

    out = write_report(asha_sweep.experiment_dir, tmp_path / "report", log=lambda *_: None)
    md = (out / "report.md").read_text()
    assert "stopped early (ASHA)" in md and "diverged" in md and "Selected checkpoint" in md


def test_bad_space_fails_before_any_trial(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  road.lambda_dist: {loguniform: {low: 0, high: 1}}\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "tune.py"), "--space", str(bad), "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"tune.py: error: {bad}: params.road.lambda_dist.low")
    assert not any(tmp_path.glob("bad-*"))  # nothing was started


def test_resume_after_the_driver_is_killed(ray_session, road_ray_home, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(RESUME_SPACE)
    storage, exp_dir = tmp_path / "results", tmp_path / "results" / "resume"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "ROAD_RAY_HOME": road_ray_home,
        "RAY_AUTH_MODE": "token",
        "PYTHONUNBUFFERED": "1",
        "TUNE_GLOBAL_CHECKPOINT_S": "1",  # save Tune's experiment state every second (default: >= 10 s)
    }
    cmd = [sys.executable, str(REPO / "tune.py"), "--storage", str(storage), "--name", "resume"]

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [*cmd, "--space", str(space)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            done, running = _wait_until_one_done_and_one_checkpointed(exp_dir, first, tmp_path / "first.log")
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the driver dies hard, mid-sweep
            first.wait()
    done_rows = (done.dir / "result.json").read_text()
    done_checkpoints = sorted(p.name for p in (exp_dir / TRAIN_RUNS).glob(f"{done.trial_id}-*/checkpoint_*"))

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]

    exp = read_experiment(exp_dir)
    trials = {t.trial_id: t for t in exp.trials}
    assert len(trials) == 2 and all(t.state == "complete" and t.iter == 6 for t in exp.trials)
    # The finished trial was not rerun: same reports, same checkpoints.
    assert (trials[done.trial_id].dir / "result.json").read_text() == done_rows
    assert sorted(p.name for p in (exp_dir / TRAIN_RUNS).glob(f"{done.trial_id}-*/checkpoint_*")) == done_checkpoints
    # The unfinished one continued its own Train run from its checkpoint (no restart at iteration 3).
    assert len(list((exp_dir / TRAIN_RUNS).glob(f"{running.trial_id}-*"))) == 1
    iters = [r["iter"] for r in trials[running.trial_id].rows]
    # Iteration 3 once: no restart from scratch. Tune reports at least once: a report made after
    # the experiment state was last saved (every second here) can come again on resume ([3, 6, 6]).
    assert iters == sorted(iters) and iters.count(3) == 1 and iters[-1] == 6, iters
    # The driver's summary: the table, the best trial, its final checkpoint and the next command.
    assert "mIoU (oracle)" in resumed.stdout and "Best trial" in resumed.stdout
    assert "final checkpoint" in resumed.stdout
    assert f"road-ray eval --experiment {exp_dir} --best" in resumed.stdout


def _wait_until_one_done_and_one_checkpointed(exp_dir: Path, proc: subprocess.Popen, log: Path, timeout: float = 600):
    """Poll Tune's saved state until one trial is TERMINATED and the other has reported a checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tune.py exited early ({proc.returncode}):\n{log.read_text()[-4000:]}")
        if any(exp_dir.glob("experiment_state-*.json")):
            try:
                trials = read_experiment(exp_dir).trials
            except ValueError:
                trials = []
            done = [t for t in trials if t.status == "TERMINATED"]
            running = [t for t in trials if t.status == "RUNNING" and any(r.get("checkpoint_path") for r in t.rows)]
            if done and running:
                return done[0], running[0]
        time.sleep(0.5)
    pytest.fail(f"no finished trial within {timeout} s:\n{log.read_text()[-4000:]}")


def test_optuna_searcher_starts_at_the_paper_point_and_persists(tmp_path):
    """No trial needed: the searcher proposes the points first, is seeded, and its study is in SQLite."""
    import optuna

    from road_ray.on_ray.tune import optuna_searcher
    from road_ray.sweeps.space import load_space

    spec = load_space("minicity")
    db = tmp_path / "optuna.db"
    searcher = optuna_searcher(spec, "study", str(db))
    first = searcher.suggest("t1")
    assert first == spec.points_to_evaluate[0]
    assert (first["road.lambda_dist"], first["road.lambda_spt"], first["road.grid"]) == (0.1, 0.01, "3x3")
    searcher.on_trial_complete("t1", {"miou": 12.5, "iter": 300})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune pickles it with the experiment state
    again = [optuna_searcher(spec, f"s{i}").suggest("x") for i in range(2)]
    later = [optuna_searcher(spec, f"s{i}") for i in range(2)]
    for s in later:
        s.suggest("x")  # past the points_to_evaluate
    assert again[0] == again[1]
    assert later[0].suggest("y") == later[1].suggest("y")  # seeded: the same proposals
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{db}")
    assert [t.value for t in study.trials if t.value is not None] == [12.5]


def test_a_sweep_that_reads_no_target_label(ray_session, road_ray_home, tmp_path):
    """tune.py --select --set data.target_val=none: the search metric is a validator, no report
    carries an oracle mIoU, and the trials are scored on target val afterwards (eval --each-trial)."""
    from road_ray.cli import main
    from road_ray.on_ray.tune import run_sweep
    from road_ray.sweeps.metrics import DEFAULT_SELECT
    from road_ray.sweeps.results import number

    outcome = run_sweep(
        "smoke",
        num_samples=2,
        storage=str(tmp_path / "results"),
        name="labelfree",
        select="default",
        overrides=["data.target_val=none"],
        log=lambda *_: None,
    )
    exp = read_experiment(outcome.experiment_dir)
    assert exp.metric == DEFAULT_SELECT and len(exp.trials) == 2 and outcome.best_trial is not None
    rows = [r for t in exp.trials for r in t.rows]
    # no oracle mIoU anywhere (a report without target val carries it as NaN), the validator in every one
    assert rows and all(number(r.get("miou")) is None and number(r.get(DEFAULT_SELECT)) is not None for r in rows)
    assert exp.record["base_config"]["data"]["target_val"] == "none"
    out = tmp_path / "each.json"
    args = ["eval", "--experiment", outcome.experiment_dir, "--each-trial", "--dataset", "minicity"]
    assert main([*args, "--max-images", "2", "--json", str(out)]) == 0
    each = json.loads(out.read_text())
    assert each["by"] == DEFAULT_SELECT and len(each["trials"]) == 2 and each["pick"] == outcome.best_trial
    assert each["shards"].endswith("target_val")  # one split, resolved once, named in the JSON
