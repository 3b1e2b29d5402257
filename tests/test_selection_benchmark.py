"""The selection measurement (road_ray/sweeps/selection_benchmark.py): Spearman's ρ and regret on
hand-made trials where their values are known, and ``road-ray selection`` on synthetic experiments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from road_ray.sweeps import results
from road_ray.sweeps.results import read_experiment
from road_ray.sweeps.selection_benchmark import (
    ScoredTrial,
    measure,
    meets_goal,
    pick,
    ranking,
    ranks,
    regret,
    scored_trials,
    spearman,
    trial_mode,
)


def test_spearman_and_ranks_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ranks([5.0, 1.0, 5.0, 3.0]) == [3.5, 1.0, 3.5, 2.0]
    # ranks x = 1, 2.5, 2.5, 4 and y = 1, 3, 2, 4: ρ = 4.5 / sqrt(4.5 · 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None


def _t(miou, mode="road", exp="a", **values):
    return ScoredTrial(exp, f"{exp}{miou}", mode, miou, {k.replace("__", "/"): v for k, v in values.items()})


def test_pick_follows_each_criterions_direction_and_regret_is_against_the_oracles_pick():
    trials = [_t(10.0, val__entropy=0.2, val__im=0.5), _t(20.0, val__entropy=0.5, val__im=0.9), _t(15.0)]
    assert pick(trials, "val/entropy").miou == 10.0  # lower entropy is better: picks the confident one
    assert pick(trials, "val/im").miou == 20.0
    assert regret(trials, "val/entropy") == 10.0 and regret(trials, "val/im") == 0.0
    assert pick(trials, "val/bnm") is None and regret(trials, "val/bnm") is None


def test_measure_over_experiments():
    # val/im follows the oracle everywhere; val/entropy (lower is better) is lowest on the worst
    # trial of each experiment; val/bnm picks right among ROAD trials but a NonAdapt one overall.
    a = [
        _t(10.0, "nonadapt", "a", val__im=0.1, val__entropy=0.1, val__bnm=0.99),
        _t(14.0, "road", "a", val__im=0.2, val__entropy=0.3, val__bnm=0.2),
        _t(18.0, "road", "a", val__im=0.3, val__entropy=0.2, val__bnm=0.3),
    ]
    b = [
        _t(12.0, "road", "b", val__im=0.4, val__entropy=0.1, val__bnm=0.1),
        _t(16.5, "road", "b", val__im=0.5, val__entropy=0.9, val__bnm=0.2),
        _t(17.0, "dst", "b", val__im=0.6, val__entropy=0.8, val__bnm=0.3),
    ]
    result = measure({"a": a, "b": b}, ("val/im", "val/entropy", "val/bnm"))
    im, ent, bnm = (result["criteria"][c] for c in ("val/im", "val/entropy", "val/bnm"))
    assert result["trials"] == 6 and result["experiments"]["a"]["road_trials"] == 2
    assert result["experiments"]["b"]["oracle_pick_miou"] == 17.0
    assert result["experiments"]["b"]["oracle_pick_miou_road"] == 16.5
    assert im["experiments"]["a"]["spearman"] == pytest.approx(1.0) and im["worst_regret"] == 0.0
    assert im["spearman"] == pytest.approx(spearman([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [10, 14, 18, 12, 16.5, 17]))
    assert meets_goal(im) is (im["spearman"] >= 0.7)
    assert ent["experiments"]["a"]["regret_all"] == 8.0 and ent["experiments"]["b"]["regret_road"] == 4.5
    assert bnm["experiments"]["a"]["regret_all"] == 8.0 and bnm["experiments"]["a"]["regret_road"] == 0.0
    assert bnm["worst_regret"] == 8.0 and not meets_goal(bnm)
    assert ranking(result)[0] == "val/im"


def _write_experiment(root: Path, name: str, space: dict, trials: list[dict]) -> Path:
    """A minimal experiment folder as road_ray.on_ray.tune writes it (see tests/test_report.py)."""
    exp = root / name
    exp.mkdir(parents=True)
    trial_data = []
    for i, t in enumerate(trials):
        tid = f"{name}{i:03d}"
        d = exp / f"trial_{tid}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps(t["params"]))
        rows = [{"iter": 6, "trial_id": tid, **t["row"]}] if t.get("row") else []
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        state = {"trial_id": tid, "status": t.get("status", "TERMINATED"), "relative_logdir": d.name}
        trial_data.append([json.dumps(state), json.dumps({})])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    record = {"metric": "miou", "mode": "max", "space": space, "base_config": {"optim": {"max_iters": 6}}}
    (exp / results.SWEEP_RECORD).write_text(json.dumps(record))
    return exp


def _row(miou, sv):
    return {"miou": miou, "source_val_miou": sv, "val/im": miou / 100, "val/entropy": 1.0 / miou}


@pytest.fixture
def two_experiments(tmp_path):
    study_space = {
        "points": {"na": {"road.mode": "nonadapt"}, "r": {"road.mode": "road"}, "o": {"road.mode": "oracle"}}
    }
    study = _write_experiment(
        tmp_path,
        "study",
        study_space,
        [
            {"params": {"point": "na", "run.seed": 0}, "row": _row(10.0, 40.0)},
            {"params": {"point": "r", "run.seed": 0}, "row": _row(16.0, 39.0)},
            {"params": {"point": "o", "run.seed": 0}, "row": _row(30.0, 20.0)},  # trained on target labels
        ],
    )
    sweep = _write_experiment(
        tmp_path,
        "sweep",
        {"fixed": {"road.mode": "road"}},
        [
            {"params": {"road.lambda_dist": 0.1}, "row": _row(15.0, 41.0)},
            {"params": {"road.lambda_dist": 0.5}, "row": _row(18.0, 40.0)},
            {"params": {"road.lambda_dist": 0.9}, "row": _row(14.0, 39.0)},
            {"params": {"road.lambda_dist": 9.0}, "status": "ERROR"},  # no evaluation
        ],
    )
    return study, sweep


def test_trial_modes_and_candidates(two_experiments):
    study, sweep = (read_experiment(p) for p in two_experiments)
    assert [trial_mode(study, t) for t in study.trials] == ["nonadapt", "road", "oracle"]
    assert {trial_mode(sweep, t) for t in sweep.trials} == {"road"}
    scored = scored_trials(study, "study", ("val/im", "source_val_miou"))
    assert [t.mode for t in scored] == ["nonadapt", "road"]  # the oracle run is no candidate
    assert len(scored_trials(sweep, "sweep", ("val/im",))) == 3  # the failed trial has no evaluation


def test_selection_cli_writes_the_page(two_experiments, tmp_path, capsys):
    from road_ray.cli import main

    out = tmp_path / "page"
    assert main(["selection", *(a for p in two_experiments for a in ("--experiment", str(p))), "--out", str(out)]) == 0
    data = json.loads((out / "selection.json").read_text())
    assert data["trials"] == 5 and set(data["ranking"][:2]) == {"val/im", "val/entropy"}  # both follow the oracle
    assert data["criteria"]["source_val_miou"]["experiments"]["sweep"]["regret_road"] == 3.0
    md = (out / "selection.md").read_text()
    assert "| `val/im` | higher | 1.00 |" in md and "![selection_val_im.png](selection_val_im.png)" in md
    assert (out / "selection_val_im.png").stat().st_size > 1000
    assert main(["selection", "--experiment", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_sweep_without_target_labels_is_measured_with_scores_from_eval(two_experiments, tmp_path):
    from road_ray.cli import main

    rows = [{"source_val_miou": 40.0, "val/im": 0.3}, {"source_val_miou": 42.0, "val/im": 0.1}]
    label_free = _write_experiment(
        tmp_path,
        "labelfree",
        {"fixed": {"road.mode": "road"}},
        [{"params": {"i": i}, "row": r} for i, r in enumerate(rows)],
    )
    each = tmp_path / "each.json"  # what road-ray eval --experiment labelfree --each-trial --json writes
    each.write_text(
        json.dumps(
            {
                "experiment": str(label_free),
                "trials": [{"trial": "labelfree000", "miou": 20.0}, {"trial": "labelfree001", "miou": 11.0}],
            }
        )
    )
    out = tmp_path / "page"
    assert (
        main(["selection", "--experiment", str(two_experiments[1]), "--scored-by-eval", str(each), "--out", str(out)])
        == 0
    )
    data = json.loads((out / "selection.json").read_text())
    assert data["experiments"]["labelfree"]["oracle_pick_miou"] == 20.0 and data["trials"] == 5
    assert data["criteria"]["source_val_miou"]["experiments"]["labelfree"]["regret_all"] == 9.0
    assert data["criteria"]["val/im"]["experiments"]["labelfree"]["regret_road"] == 0.0
    assert "eval --each-trial" in (out / "selection.md").read_text()
    each.write_text("{}")
    assert main(["selection", "--scored-by-eval", str(each), "--out", str(out)]) == 2
