"""Studies (named fixed points × seeds) and label-free selection: the space format, the report's
paper-form tables and figures on a synthetic experiment, and a tiny study end to end on Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from road_ray.config import Config
from road_ray.sweeps import results
from road_ray.sweeps.report import write_report
from road_ray.sweeps.results import read_experiment
from road_ray.sweeps.selection import paper_point, proxy_agreement
from road_ray.sweeps.space import SpaceError, load_space, space_from_dict
from road_ray.sweeps.study import gap_closed, study_results
from road_ray.sweeps.trial import trial_config

STUDY = {
    "smoke": True,
    "points": {"nonadapt": {"road.mode": "nonadapt"}, "road": {"road.mode": "road"}, "oracle": {"road.mode": "oracle"}},
    "grid": {"run.seed": [0, 1]},
    "baseline": "nonadapt",
    "upper_bound": "oracle",
    "studies": {
        "table1": {"title": "Table 1", "form": "table", "points": {"NonAdapt": "nonadapt", "ROAD": "road"}},
        "fig6": {"title": "Fig. 6", "form": "bars", "points": ["nonadapt", "road"]},
    },
}


# ---------------------------------------------------------------------------------------
# The space format


def test_shipped_study_covers_the_papers_ablations():
    space = load_space("minicity_study")
    assert space.is_grid and space.searched_keys == ["point", "run.seed"]
    assert len(space.grid_points()) == 12 * 3  # shared points run once
    assert set(space.studies) == {"table1", "fig4", "fig6", "controls"}
    assert list(space.studies["fig6"].points) == ["1x1", "2x1", "2x2", "3x3"]
    assert space.baseline == "nonadapt" and space.upper_bound == "oracle"
    # every point's config is the base with its own overrides, nothing else differs
    base = space.base_config()
    for point in space.grid_points():
        cfg = trial_config(base, point, space.points)
        assert cfg.run.seed == point["run.seed"] and cfg.optim.max_iters == base.optim.max_iters
        assert cfg.road.lambda_dist == base.road.lambda_dist and cfg.road.lambda_spt == base.road.lambda_spt
    assert trial_config(base, {"point": "grid_2x1", "run.seed": 0}, space.points).road.grid == "2x1"
    assert trial_config(base, {"point": "source_dist", "run.seed": 0}, space.points).road.mode == "source_dist"
    # the two controls differ from their reference point by their one switch
    bn = trial_config(base, {"point": "nonadapt_bn", "run.seed": 0}, space.points)
    assert bn.road.mode == "nonadapt" and bn.road.student_sees_target
    dann = trial_config(base, {"point": "road_dann", "run.seed": 0}, space.points)
    assert dann.road.mode == "road" and dann.road.adversarial_form == "dann" and dann.road.grid == base.road.grid
    # the record written with the experiment reads back the same
    again = space_from_dict(space.to_dict())
    assert again.grid_points() == space.grid_points() and again.studies == space.studies


@pytest.mark.parametrize(
    "change, message",
    [
        ({"studies": {"t": {"points": ["nope"]}}}, "studies.t.points.nope: 'nope' is not one of the points"),
        ({"studies": {"t": {"points": ["road"], "form": "pie"}}}, "studies.t.form: expected one of table, bars"),
        ({"baseline": "source_only"}, "baseline: 'source_only' is not one of the points"),
        ({"grid": {"road.mode": ["road"]}}, "grid.road.mode: also set by point"),
        ({"points": {"x": {"road.grid": "0x3"}}}, "points.x: rejected by the config"),
        ({"points": {"x": {"road.nope": 1}}}, "points.x.road.nope: unknown config key"),
        ({"params": {"road.lambda_dist": {"loguniform": {"low": 0.1, "high": 1}}}}, "either params:"),
    ],
)
def test_study_errors_name_the_key(change, message):
    data = {**STUDY, **change}
    with pytest.raises(SpaceError, match=None) as e:
        space_from_dict(data, "study.yaml")
    assert str(e.value).startswith("study.yaml: ") and message in str(e.value), str(e.value)


def test_studies_need_points():
    with pytest.raises(SpaceError, match="studies: only used with points:"):
        space_from_dict({"grid": {"run.seed": [0]}, "studies": {}}, "s.yaml")


def test_oracle_trains_on_the_labelled_target_split(road_ray_home):
    from road_ray.engine.resolve import resolve_config

    cfg = Config()
    cfg.data.minicity_size, cfg.model.pretrained = "small", "none"
    cfg.road.mode = "oracle"
    oracle = resolve_config(cfg, log=lambda *_: None)
    assert oracle.data.source.endswith("/target_train_labeled") and oracle.data.source_val.endswith("/source_val")
    cfg.road.mode = "road"
    assert resolve_config(cfg, log=lambda *_: None).data.source.endswith("/source_train")


# ---------------------------------------------------------------------------------------
# The report of a study, on a synthetic experiment folder

MIOU = {
    ("road", 2): 19.0,  # the top-up experiment's (test_a_study_topped_up_with_seeds_reads_as_one)
    ("road", 3): 21.0,
    ("nonadapt", 0): 10.0,
    ("nonadapt", 1): 12.0,
    ("road", 0): 15.0,
    ("road", 1): 17.0,
    ("oracle", 0): 30.0,
    ("oracle", 1): 32.0,
}


def make_study_experiment(
    root: Path, study: dict = STUDY, name: str = "study-test", created: float = 900.0, base: dict | None = None
) -> Path:
    space = space_from_dict(study, "study.yaml")
    exp = root / name
    exp.mkdir(parents=True)
    trial_data = []
    for i, params in enumerate(space.grid_points()):
        trial_id = f"{name[:4]}{i:06d}"
        d = exp / f"trial_{trial_id}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps(params))
        miou = MIOU[(params["point"], params["run.seed"])]
        rows = [
            {"iter": 3, "miou": miou - 5, "trial_id": trial_id, "timestamp": created + 100 + i},
            {
                "iter": 6,
                "miou": miou,
                "iou/road": miou + 40,
                "iou/car": miou - 5,
                "source_val_miou": 50.0,
                "target_entropy": 1.0 / miou,
                "trial_id": trial_id,
                "timestamp": created + 200 + i,
                "time/wall": 150.0,
            },
        ]
        (d / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        state = {"trial_id": trial_id, "status": "TERMINATED", "relative_logdir": d.name, "config": params}
        trial_data.append([json.dumps(state), json.dumps({})])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    record = {
        "metric": "miou",
        "mode": "max",
        "searched_keys": space.searched_keys,
        "space": space.to_dict(),
        "base_config": base or {"optim": {"max_iters": 6}},
        "created_unix": created,
        "machine": {"commit": name[-4:]},
    }
    (exp / results.SWEEP_RECORD).write_text(json.dumps(record))
    return exp


TOP_UP = {**STUDY, "points": {"road": {"road.mode": "road"}}, "grid": {"run.seed": [2, 3]}, "studies": {}}
TOP_UP.pop("upper_bound"), TOP_UP.pop("baseline")


def test_a_study_topped_up_with_seeds_reads_as_one(tmp_path):
    from road_ray.sweeps.study import merge_studies

    main = make_study_experiment(tmp_path)
    more = make_study_experiment(tmp_path, TOP_UP, name="more-seeds", created=5000.0)
    merged = merge_studies([read_experiment(main), read_experiment(more)])
    result = study_results(merged)
    road = result["points"]["road"]
    assert road["n"] == 4 and road["miou"]["mean"] == 18.0 and [r["seed"] for r in road["runs"]] == [0, 1, 2, 3]
    assert result["points"]["nonadapt"]["n"] == 2 and result["vs_baseline"]["road"]["mean"] == 18.0 - 11.0
    assert [p["experiment"] for p in result["parts"]] == ["study-test", "more-seeds"]
    assert [p["runs"] for p in result["parts"]] == [6, 2] and result["parts"][1]["commit"] == "eeds"
    # the wall time is the parts' own, not the hours between them: (205 - 0) + (201 - 0) from each creation
    assert result["settings"]["wall_time_s"] == (900 + 205 - 900) + (5000 + 201 - 5000)
    # trials running: the union of the runs' spans (each 150 s, one a second after the other)
    assert result["settings"]["runs_time_s"] == (1105 - 950) + (5201 - 5050)
    md = (write_report([main, more], tmp_path / "r", log=lambda *_: None) / "report.md").read_text()
    assert "The runs of 2 experiments, read together: study-test (6 runs" in md and "more-seeds (2 runs" in md
    assert "trials running 5.1 min" in md  # 306 s


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"run.seed": [1, 2]}}, "more-seeds: point 'road' seed 1 already ran in study-test"),
        ({"points": {"road": {"road.mode": "road", "road.grid": "2x2"}}}, "more-seeds: point 'road' is"),
    ],
)
def test_a_top_up_must_be_the_same_study(tmp_path, change, message):
    from road_ray.sweeps.experiment import ExperimentError
    from road_ray.sweeps.study import merge_studies

    main = read_experiment(make_study_experiment(tmp_path))
    more = read_experiment(make_study_experiment(tmp_path, {**TOP_UP, **change}, name="more-seeds"))
    with pytest.raises(ExperimentError, match=message):
        merge_studies([main, more])
    other = read_experiment(
        make_study_experiment(tmp_path, TOP_UP, name="other-base", base={"optim": {"max_iters": 9}})
    )
    with pytest.raises(ExperimentError, match="other-base: its base config differs from study-test's"):
        merge_studies([main, other])


def test_study_numbers_are_final_evaluations_over_seeds(tmp_path):
    result = study_results(read_experiment(make_study_experiment(tmp_path)))
    road = result["points"]["road"]
    assert road["n"] == 2 and road["miou"]["mean"] == 16.0 and math.isclose(road["miou"]["std"], math.sqrt(2))
    assert road["iou"]["road"]["mean"] == 56.0 and result["classes"] == ["road", "car"]
    # (16 - 11) / (31 - 11): the share of the NonAdapt -> oracle gap ROAD closes
    assert math.isclose(gap_closed(result, "road"), 0.25) and result["gap_closed"]["oracle"] == 1.0
    assert result["settings"]["wall_time_s"] == 1100 + 5 - 900
    # ROAD - NonAdapt: 16 - 11 = 5; Welch: se = sqrt(2/2 + 2/2), df = 2, t = 4.303
    d = result["vs_baseline"]["road"]
    assert d["mean"] == 5.0 and d["df"] == pytest.approx(2.0)
    assert (d["low"], d["high"]) == pytest.approx((5 - 4.303 * math.sqrt(2), 5 + 4.303 * math.sqrt(2)))
    assert result["vs_baseline"]["nonadapt"] is None


def test_study_report_has_the_papers_table_and_figures(tmp_path):
    out = write_report(make_study_experiment(tmp_path), tmp_path / "report", log=lambda *_: None)
    md = (out / "report.md").read_text()
    assert "### Table 1" in md and "| NonAdapt | 51.0 ± 1.4 | 6.0 ± 1.4 | **11.0 ± 1.4** | 0% |" in md
    assert "| ROAD | 56.0 ± 1.4 | 11.0 ± 1.4 | **16.0 ± 1.4** | 25% |" in md
    assert "![Fig. 6](study_fig6.png)" in md and (out / "study_fig6.png").stat().st_size > 1000
    assert json.loads((out / "study.json").read_text())["points"]["oracle"]["miou"]["mean"] == 31.0


# ---------------------------------------------------------------------------------------
# Label-free selection and the paper's point, on test_report's synthetic Optuna sweep


def test_proxies_against_the_oracle_and_the_paper_point(tmp_path):
    from tests.test_report import make_experiment

    exp_dir = make_experiment(tmp_path)
    record = json.loads((exp_dir / results.SWEEP_RECORD).read_text())
    record["space"] = {
        "points_to_evaluate": [
            {"road.lambda_dist": 0.1, "road.lambda_spt": 0.01, "road.grid": "3x3", "model.teacher_layer": "layer4"}
        ]
    }
    (exp_dir / results.SWEEP_RECORD).write_text(json.dumps(record))
    exp = read_experiment(exp_dir)
    # last evaluations: aaa00002 30.0 (best), aaa00001 27.0, aaa00004 26.0, aaa00003 15.0 (stopped)
    agreement = proxy_agreement(exp)
    assert agreement["trials"] == 4 and agreement["oracle"] == {"trial": "aaa00002", "miou": 30.0}
    # source-val mIoU is 60 + #evaluations: a tie among the three long trials, the first wins
    assert agreement["source_val_miou"]["oracle_rank"] in (1, 2, 3)
    # target entropy 1/#evaluations: lowest for a three-evaluation trial; the stopped one is never picked
    assert agreement["target_entropy"]["trial"] != "aaa00003"
    # among the trials run to the end (aaa00003 was stopped early by ASHA)
    assert proxy_agreement(exp, complete_only=True)["trials"] == 3
    pp = paper_point(exp)
    assert pp["trial"] == "aaa00001" and pp["miou"] == 27.0 and pp["best_trial"] == "aaa00002" and pp["gain"] == 3.0
    md = (write_report(exp_dir, tmp_path / "r", log=lambda *_: None) / "report.md").read_text()
    assert "## Selecting without target labels" in md and "+3.00 points over the paper's point" in md


# ---------------------------------------------------------------------------------------
# A tiny study end to end: 2 points, 1 seed, a few iterations, on the session's Ray instance


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_study_end_to_end(ray_session, road_ray_home, tmp_path):
    import yaml

    from road_ray.on_ray.tune import run_sweep

    tiny = {
        "smoke": True,
        "fixed": {"optim.max_iters": 3, "run.eval_every": 3},
        "points": {"nonadapt": {"road.mode": "nonadapt"}, "oracle": {"road.mode": "oracle"}},
        "grid": {"run.seed": [0]},
        "baseline": "nonadapt",
        "upper_bound": "oracle",
        "studies": {
            "t1": {"title": "Table 1", "form": "table", "points": {"NonAdapt": "nonadapt", "Oracle": "oracle"}},
            "f": {"title": "Fig", "form": "bars", "points": ["nonadapt", "oracle"]},
        },
    }
    space = tmp_path / "tiny_study.yaml"
    space.write_text(yaml.safe_dump(tiny))
    outcome = run_sweep(str(space), storage=str(tmp_path / "results"), name="tiny", log=lambda *_: None)
    exp = read_experiment(outcome.experiment_dir)
    assert sorted(t.params["point"] for t in exp.trials) == ["nonadapt", "oracle"]
    assert all(t.state == "complete" and t.iter == 3 for t in exp.trials)
    # the oracle's trials train on the labelled target split, the others on the source
    points = exp.record["space"]["points"]
    assert points["oracle"]["data.source"].endswith("/target_train_labeled") and "data.source" not in points["nonadapt"]
    assert exp.record["base_config"]["data"]["source"].endswith("/source_train")
    assert len(list((Path(outcome.experiment_dir) / results.TRAIN_RUNS).iterdir())) == 2
    out = write_report(outcome.experiment_dir, tmp_path / "report", log=lambda *_: None)
    md = (out / "report.md").read_text()
    assert "### Table 1" in md and "| NonAdapt |" in md and "| Oracle |" in md and (out / "study_f.png").is_file()
    study = json.loads((out / "study.json").read_text())
    assert all(
        study["points"][p]["n"] == 1 and study["points"][p]["miou"]["mean"] is not None for p in ("nonadapt", "oracle")
    )
    assert study["settings"]["machine"]["minicity_version"] == "1.0"


def test_difference_ci_edges():
    from road_ray.sweeps.stats import difference_ci, t_975

    assert difference_ci([1.0], [2.0, 3.0]) is None
    assert difference_ci([2.0, 2.0], [1.0, 1.0]) == {"mean": 1.0, "low": 1.0, "high": 1.0, "df": None}
    assert t_975(2.9) == 4.303 and t_975(500) == 1.96 and t_975(0.5) == 12.706
