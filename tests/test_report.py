"""Sweep results and report on a synthetic experiment folder in Tune's layout (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from road_ray.sweeps import results
from road_ray.sweeps.report import parameter_importance, write_report
from road_ray.sweeps.results import ExperimentError, best_checkpoint, read_experiment

MAX_ITERS = 30
KEYS = ["road.lambda_dist", "road.lambda_spt", "road.grid", "model.teacher_layer"]


def _trial(trial_id, l1, l2, grid, layer, mious, status="TERMINATED", error=None):
    return {
        "id": trial_id,
        "params": dict(zip(KEYS, (l1, l2, grid, layer))),
        "mious": mious,
        "status": status,
        "error": error,
    }


TRIALS = [
    _trial("aaa00001", 0.1, 0.01, "3x3", "layer4", [20.0, 25.0, 27.0]),  # the paper's point
    _trial("aaa00002", 0.5, 0.3, "2x2", "layer3", [22.0, 31.5, 30.0]),  # best evaluation: 31.5 at iter 20
    _trial("aaa00003", 0.02, 0.002, "1x1", "layer2", [15.0]),  # stopped early by ASHA at iter 10
    _trial("aaa00004", 0.9, 0.9, "2x1", "layer4", [18.0, 24.0, 26.0]),
    _trial(
        "aaa00005",
        5.0,
        0.5,
        "3x3",
        "layer3",
        [],
        status="ERROR",
        error="road_ray.engine.loop.TrainingDiverged: loss became nan at iteration 4",
    ),
]


def make_experiment(root: Path, trials=TRIALS, metric="miou", mode="max") -> Path:
    """A Tune 2.60 experiment folder as road_ray.on_ray.tune writes it (train_runs/, sweep record)."""
    exp = root / "minicity-test"
    exp.mkdir(parents=True)
    train_runs = exp / results.TRAIN_RUNS
    trial_data = []
    for t in trials:
        d = exp / f"trial_{t['id']}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps(t["params"]))
        lines = []
        for i, miou in enumerate(t["mious"], start=1):
            it = 10 * i
            ckpt = train_runs / f"{t['id']}-run" / f"checkpoint_{it:07d}"
            ckpt.mkdir(parents=True)
            (ckpt / "marker.txt").write_text(f"{t['id']} {it}")
            lines.append(
                json.dumps(
                    {
                        "iter": it,
                        "miou": miou,
                        "source_val_miou": 60.0 + i,
                        "target_entropy": 1.0 / i,
                        "checkpoint_path": str(ckpt),
                        "trial_id": t["id"],
                        "training_iteration": i,
                        "done": False,
                        "config": t["params"],
                    }
                )
            )
        (d / "result.json").write_text("\n".join(lines) + ("\n" if lines else ""))
        if t["error"]:
            (d / "error.txt").write_text(f"Failure # 1\nTraceback...\n{t['error']}\n")
        state = {"trial_id": t["id"], "status": t["status"], "relative_logdir": d.name, "config": t["params"]}
        meta = {"error_filename": str(d / "error.txt") if t["error"] else None}
        trial_data.append([json.dumps(state), json.dumps(meta)])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    record = {
        "metric": metric,
        "mode": mode,
        "searched_keys": KEYS,
        "space_file": "search_spaces/minicity.yaml",
        "base_config": {"optim": {"max_iters": MAX_ITERS}},
        "train_storage": str(train_runs),
    }
    (exp / results.SWEEP_RECORD).write_text(json.dumps(record))
    return exp


def test_table_states_and_values(tmp_path):
    exp = read_experiment(make_experiment(tmp_path))
    rows = {r["trial"]: r for r in exp.table()}
    assert rows["aaa00001"]["state"] == "complete"
    assert rows["aaa00003"]["state"] == "stopped early (ASHA)"  # iter 10 < max_iters 30
    assert rows["aaa00005"]["state"] == "diverged"
    assert rows["aaa00002"]["miou"] == 30.0 and rows["aaa00002"]["best_miou"] == 31.5  # last vs best
    assert rows["aaa00002"]["road.grid"] == "2x2"
    assert rows["aaa00005"]["miou"] is None
    text = results.format_table(exp)
    assert "mIoU (oracle)" in text and "source-val mIoU" in text and "target entropy" in text
    assert text.splitlines()[2].startswith("aaa00002")  # best first


def test_best_checkpoint_picks_highest_miou(tmp_path):
    path = make_experiment(tmp_path)
    ckpt = best_checkpoint(path)
    assert Path(ckpt).name == "checkpoint_0000020" and "aaa00002" in ckpt
    # A label-free proxy: lowest target entropy (1/i) is the last report of a 3-report trial.
    assert Path(best_checkpoint(path, metric="target_entropy")).name == "checkpoint_0000030"


def test_select_checkpoint_takes_the_final_checkpoint_of_the_trial_best_by_a_criterion(tmp_path):
    path = make_experiment(tmp_path)
    # By the sweep's metric (miou): the best *final* value is aaa00002's 30.0 (its 31.5 at iter
    # 20 is not final), and the checkpoint is that trial's last one, not its best.
    assert Path(results.select_checkpoint(path)).name == "checkpoint_0000030"
    assert "aaa00002" in results.select_checkpoint(path)
    # Test-set selection over time is the old behaviour, under its own name.
    assert Path(results.select_checkpoint(path, by=results.OVER_TIME)).name == "checkpoint_0000020"
    # A label-free criterion: lowest final target entropy = most reports (1/3); ties go to the first.
    by_entropy = results.select_checkpoint(path, by="target_entropy")
    assert Path(by_entropy).name == "checkpoint_0000030" and "aaa00003" not in by_entropy
    with pytest.raises(ExperimentError, match="not a metric trials report"):
        results.select_checkpoint(path, by="accuracy")
    with pytest.raises(ExperimentError, match="no trial reported 'val/im'"):
        results.select_checkpoint(path, by="val/im")


def test_the_best_trial_printed_and_reported_is_the_one_whose_final_checkpoint_is_selected(tmp_path):
    """A trial that peaked early and ended low is not the best trial: tune.py's summary, the
    report and eval --best all name the trial with the best *final* value, and its checkpoint."""
    from road_ray.sweeps.outcome import sweep_outcome

    trials = [
        _trial("peak0001", 0.1, 0.01, "3x3", "layer4", [30.0, 10.0]),  # best over time, final 10
        _trial("last0002", 0.5, 0.3, "2x2", "layer3", [20.0, 25.0]),  # final 25
    ]
    path = make_experiment(tmp_path, trials=trials)
    outcome = sweep_outcome(str(path))
    assert outcome.best_trial == "last0002" and outcome.best_value == 25.0
    assert "last0002" in outcome.best_checkpoint and outcome.best_checkpoint == results.select_checkpoint(path)
    assert "peak0001" in results.select_checkpoint(path, by=results.OVER_TIME)  # test-set selection, named
    md = (write_report(path, tmp_path / "out", log=lambda *_: None) / "report.md").read_text()
    assert "**Best trial:** `last0002` — final miou 25.00 at iteration 20" in md


def test_best_checkpoint_skips_deleted_and_follows_moved_experiments(tmp_path):
    path = make_experiment(tmp_path / "a")
    best = Path(best_checkpoint(path))
    for f in best.iterdir():
        f.unlink()
    best.rmdir()  # Ray Train deleted it: the next best report (30.0, same trial, iter 30) wins
    assert Path(best_checkpoint(path)).name == "checkpoint_0000030"
    moved = tmp_path / "b"
    path.rename(moved)  # a copied experiment: checkpoint paths are rebased onto its train_runs/
    assert str(best_checkpoint(moved)).startswith(str(moved / results.TRAIN_RUNS))


def test_best_checkpoint_errors_clearly(tmp_path):
    with pytest.raises(ExperimentError, match="does not exist"):
        best_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExperimentError, match="no Tune trials"):
        best_checkpoint(tmp_path / "empty")
    path = make_experiment(tmp_path / "x", trials=[TRIALS[-1]])  # only a diverged trial
    with pytest.raises(ExperimentError, match="nothing to evaluate"):
        best_checkpoint(path)


def test_write_report_writes_table_and_pngs(tmp_path):
    out = write_report(make_experiment(tmp_path), tmp_path / "report", log=lambda *_: None)
    md = (out / "report.md").read_text()
    assert "| trial |" in md and "mIoU (oracle)" in md and "diverged" in md
    assert "**Best trial:** `aaa00002`" in md and "road-ray eval --experiment" in md
    expected = [
        "miou_vs_lambda_dist.png",
        "miou_vs_lambda_spt.png",
        "miou_per_grid.png",
        "miou_per_teacher_layer.png",
        "param_importance.png",
    ]
    for name in expected:
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in md
    assert (out / "trials.csv").read_text().count("\n") == len(TRIALS) + 1


def test_importance_needs_three_complete_trials(tmp_path):
    exp = read_experiment(make_experiment(tmp_path, trials=TRIALS[:2]))
    importance, note = parameter_importance(exp)
    assert importance == {} and "at least 3" in note
    out = write_report(exp.path, log=lambda *_: None)
    assert not (out / "param_importance.png").exists()
    assert "Parameter importance: needs at least 3" in (out / "report.md").read_text()


def test_importance_with_enough_trials(tmp_path):
    importance, _ = parameter_importance(read_experiment(make_experiment(tmp_path)))
    assert set(importance) <= set(KEYS) and importance
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-6)


def test_report_cli(tmp_path):
    from road_ray.cli import main

    path = make_experiment(tmp_path)
    assert main(["report", "--experiment", str(path)]) == 0
    assert (path / "report" / "report.md").is_file()
    assert main(["report", "--experiment", str(tmp_path / "missing")]) == 2


def test_a_running_trial_without_a_report_is_one_trial(tmp_path):
    """Tune's ids hold an underscore (eb240_00002); a running trial's folder has no report yet."""
    running = _trial("eb240_00002", 0.1, 0.3, "3x3", "layer4", [], status="RUNNING")
    exp = read_experiment(make_experiment(tmp_path, trials=[TRIALS[0], running]))
    assert [(t.trial_id, t.state) for t in exp.trials] == [("aaa00001", "complete"), ("eb240_00002", "unfinished")]
    # Before Tune lists it in its state file, the folder's name gives the id.
    for state in (tmp_path / "minicity-test").glob("experiment_state-*.json"):
        state.write_text(json.dumps({"trial_data": json.loads(state.read_text())["trial_data"][:1]}))
    exp = read_experiment(tmp_path / "minicity-test")
    assert [t.trial_id for t in exp.trials] == ["aaa00001", "eb240_00002"] and exp.trials[1].state == "not started"


def test_a_restored_experiment_reads_the_newest_state(tmp_path):
    path = make_experiment(tmp_path)
    newest = path / "experiment_state-2026-01-01_00-00-00.json"
    older = path / "experiment_state-2025-12-31_00-00-00.json"  # the interrupted session's state
    data = json.loads(newest.read_text())
    stale = [[e[0].replace('"TERMINATED"', '"RUNNING"'), e[1]] for e in data["trial_data"]]
    older.write_text(json.dumps({"trial_data": stale}))  # written last: Tune rewrites it after a restore
    states = {r["trial"]: r["state"] for r in read_experiment(path).table()}
    assert states["aaa00001"] == "complete"


def test_an_experiment_on_object_storage_is_read_through_its_uri(tmp_path):
    path = make_experiment(tmp_path)
    record = json.loads((path / results.SWEEP_RECORD).read_text())
    record["train_storage"] = f"file://{path / results.TRAIN_RUNS}"
    (path / results.SWEEP_RECORD).write_text(json.dumps(record))
    exp = read_experiment(f"file://{path}")  # staged locally, checkpoints left where they are
    assert exp.path != path and not (exp.path / results.TRAIN_RUNS).exists()
    assert {r["trial"]: r["state"] for r in exp.table()}["aaa00003"] == "stopped early (ASHA)"
    assert Path(best_checkpoint(f"file://{path}")).name == "checkpoint_0000020"
