"""Search-space validation (no Ray): every error names the file and the key, before any trial."""

from __future__ import annotations

import textwrap

import pytest

from road_ray.config import SMOKE_OVERRIDES, ConfigError
from road_ray.sweeps.metrics import METRIC_DIRECTIONS, metric_direction, natural_mode
from road_ray.sweeps.space import SPACES_DIR, Param, SpaceError, load_space, space_from_dict
from road_ray.sweeps.trial import trial_config

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))
PAPER_POINT = {"road.lambda_dist": 0.1, "road.lambda_spt": 0.01, "road.grid": "3x3"}


def write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def minimal(**extra):
    data = {"params": {"road.lambda_dist": {"loguniform": {"low": 0.01, "high": 1.0}}}}
    data.update(extra)
    return data


def expect_error(data, *fragments):
    with pytest.raises(SpaceError) as info:
        space_from_dict(data, "my-space.yaml")
    message = str(info.value)
    assert message.startswith("my-space.yaml: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- the shipped spaces ------------------------------------------------------------------


def test_all_spaces_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {
        "minicity",
        "smoke",
        "grid_ablation",
        "gta5_deeplab_vgg16",
        "gta5_pspnet_resnet101",
        "synthia_deeplab_vgg16",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_validates(path):
    space = load_space(path)
    base = space.base_config()
    assert space.num_samples >= 1
    if space.is_grid:
        assert len(space.grid_points()) >= 2
        return
    # λ1, λ2 log-uniform reaching ~1 (short runs need large weights); the paper's point first.
    assert space.params["road.lambda_dist"].kind == "loguniform" and space.params["road.lambda_dist"].high >= 1.0
    assert space.params["road.lambda_spt"].kind == "loguniform" and space.params["road.lambda_spt"].high >= 1.0
    assert {k: space.points_to_evaluate[0][k] for k in PAPER_POINT} == PAPER_POINT
    for point in space.points_to_evaluate:
        trial_config(base, point, space.points)  # every point is a valid config


def test_minicity_space_searches_grid_and_teacher_layer():
    space = load_space("minicity")
    assert set(space.params["road.grid"].values) == {"1x1", "2x1", "2x2", "3x3"}
    assert set(space.params["model.teacher_layer"].values) == {"layer2", "layer3", "layer4"}
    assert space.scheduler.type == "asha"


def test_first_point_space_is_the_default_sweeps_first_trial():
    """minicity_first_point measures the spread of the default sweep's first trial: every
    setting of that trial's config must be the same."""
    sweep, spread = load_space("minicity"), load_space("minicity_first_point")
    first = trial_config(sweep.base_config(), sweep.points_to_evaluate[0], sweep.points)
    (point,) = spread.grid_points()[:1]
    again = trial_config(spread.base_config(), point, spread.points)
    assert again.to_dict() | {"run": {}} == first.to_dict() | {"run": {}}
    assert {k: v for k, v in again.run.__dict__.items() if k != "seed"} == {
        k: v for k, v in first.run.__dict__.items() if k != "seed"
    }
    assert [p["run.seed"] for p in spread.grid_points()] == [0, 1, 2]


def test_the_studys_top_up_seeds_run_the_studys_own_points():
    """minicity_study_seeds34 adds seeds 3 and 4 to points of minicity_study: the report reads the
    two as one study, so every trial config must be the study's but for the seed."""
    study, more = load_space("minicity_study"), load_space("minicity_study_seeds34")
    assert more.base_config().to_dict() == study.base_config().to_dict()
    assert more.points and all(study.points[name] == overrides for name, overrides in more.points.items())
    assert {"nonadapt", "road", "dst", "spt"} <= set(more.points) and "oracle" not in more.points
    assert more.grid == {"run.seed": [3, 4]} and not set(more.grid["run.seed"]) & set(study.grid["run.seed"])


def test_smoke_space_uses_the_smoke_sizes():
    space = load_space("smoke")
    base = space.base_config()
    assert base.data.crop_size == SMOKE_OVERRIDES["data.crop_size"]
    assert base.data.minicity_size == "small"
    assert 2 <= space.num_samples <= 3


def test_paper_spaces_use_the_paper_setup_and_placeholders():
    for name, backbone, label_space in [
        ("gta5_deeplab_vgg16", "vgg16", "cityscapes19"),
        ("gta5_pspnet_resnet101", "resnet101", "cityscapes19"),
        ("synthia_deeplab_vgg16", "vgg16", "synthia16"),
    ]:
        base = load_space(name).base_config()
        assert base.model.backbone == backbone and base.data.label_space == label_space
        assert base.data.crop_size == 321 and base.data.batch_source == base.data.batch_target == 5
        assert base.optim.lr == pytest.approx(2.5e-4)
        assert "CHANGE-ME" in base.data.source  # the user must point it at their shards


def test_synthia_space_brings_both_domains_to_1024_pixels_wide():
    data = load_space("synthia_deeplab_vgg16").base_config().data
    assert 1280 * data.source_base_scale == 2048 * data.target_base_scale == 1024  # SYNTHIA, Cityscapes
    assert 2048 * data.eval_scale == 1024


def test_grid_ablation_expands_to_the_cartesian_product():
    space = load_space("grid_ablation")
    points = space.grid_points()
    assert {p["road.grid"] for p in points} == {"1x1", "2x1", "2x2", "3x3"}
    assert len(points) == 4 * len(space.grid["run.seed"])
    assert space.scheduler.type == "fifo"


def test_space_by_name_and_missing_file(tmp_path):
    assert load_space("smoke").path.endswith("smoke.yaml")
    with pytest.raises(SpaceError, match="does not exist.*minicity"):
        load_space(tmp_path / "nope.yaml")


# --- errors ------------------------------------------------------------------------------


def test_not_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "params: [unclosed\n")
    with pytest.raises(SpaceError, match=f"{path}: not valid YAML"):
        load_space(path)


def test_error_from_a_file_names_file_and_key(tmp_path):
    path = write(
        tmp_path,
        """
        params:
          road.lamda_dist: {loguniform: {low: 0.01, high: 1}}
    """,
    )
    with pytest.raises(SpaceError, match=rf"{path}: params.road.lamda_dist: unknown config key"):
        load_space(path)


def test_unknown_top_level_key():
    expect_error(minimal(num_sample=4), "num_sample: unknown top-level key")


def test_unknown_config_key_suggests():
    msg = expect_error({"params": {"road.lambda": {"choice": [0.1]}}}, "params.road.lambda: unknown config key")
    assert "road.lambda_dist" in msg  # a suggestion
    expect_error(minimal(fixed={"optim.learning_rate": 0.1}), "fixed.optim.learning_rate: unknown config key")


def test_unknown_distribution():
    expect_error(
        {"params": {"road.lambda_dist": {"normal": {"low": 0, "high": 1}}}},
        "params.road.lambda_dist",
        "unknown distribution 'normal'",
    )


def test_low_above_high():
    expect_error(
        {"params": {"road.lambda_dist": {"uniform": {"low": 0.5, "high": 0.1}}}},
        "params.road.lambda_dist",
        "low (0.5) > high (0.1)",
    )


@pytest.mark.parametrize("low", [0, -0.1])
def test_loguniform_needs_positive_low(low):
    expect_error(
        {"params": {"road.lambda_spt": {"loguniform": {"low": low, "high": 1}}}},
        "params.road.lambda_spt.low",
        "loguniform needs low > 0",
    )


def test_bounds_must_be_numbers_and_complete():
    expect_error({"params": {"road.lambda_dist": {"uniform": {"low": "a", "high": 1}}}}, "params.road.lambda_dist.low")
    expect_error({"params": {"road.lambda_dist": {"uniform": {"low": 0.1}}}}, "expects {low: ..., high: ...}")


def test_negative_uniform_is_rejected_by_the_config():
    expect_error(
        {"params": {"road.lambda_dist": {"uniform": {"low": -1, "high": 1}}}},
        "params.road.lambda_dist",
        "rejected by the config",
        ">= 0",
    )


def test_grid_that_does_not_parse():
    expect_error(
        {"params": {"road.grid": {"choice": {"values": ["3x3", "3by3"]}}}}, "params.road.grid", "'3by3'", "HxW"
    )
    expect_error(minimal(fixed={"road.grid": "0x2"}), "fixed.road.grid", "HxW")


def test_choice_value_rejected_by_the_config():
    expect_error({"params": {"road.mode": {"choice": ["road", "adapt"]}}}, "params.road.mode", "'adapt'", "nonadapt")
    # a teacher layer the backbone does not have
    expect_error(
        {"params": {"model.teacher_layer": {"choice": ["layer4", "conv5"]}}},
        "params.model.teacher_layer",
        "'conv5'",
        "layer4",
    )


def test_fixed_value_rejected_by_the_config():
    expect_error(minimal(fixed={"data.crop_size": 8}), "fixed.data.crop_size", ">= 16")
    expect_error(minimal(fixed={"run.num_workers": "two"}), "fixed.run.num_workers", "integer")
    expect_error({"params": {"run.seed": {"fixed": "zero"}}}, "params.run.seed", "integer")
    # consistent together: VGG-16 needs a conv* teacher layer
    expect_error(minimal(fixed={"model.backbone": "vgg16"}), "fixed:", "teacher_layer")


def test_distribution_type_must_match_the_key():
    expect_error({"params": {"road.grid": {"uniform": {"low": 1, "high": 3}}}}, "params.road.grid", "use choice")
    expect_error({"params": {"run.seed": {"loguniform": {"low": 1, "high": 3}}}}, "params.run.seed", "randint")


def test_reserved_keys():
    expect_error(minimal(fixed={"run.name": "x"}), "fixed.run.name", "set by the sweep")


def test_point_with_unknown_key():
    expect_error(
        minimal(points_to_evaluate=[{"road.lambda_distt": 0.1}]),
        "points_to_evaluate[0].road.lambda_distt",
        "unknown config key",
    )
    expect_error(
        minimal(points_to_evaluate=[{"road.lambda_spt": 0.1}]),
        "points_to_evaluate[0].road.lambda_spt",
        "not a searched parameter",
    )


def test_point_outside_the_distribution():
    expect_error(
        minimal(points_to_evaluate=[{"road.lambda_dist": 5.0}]),
        "points_to_evaluate[0].road.lambda_dist",
        "outside loguniform",
    )


def test_point_missing_keys_take_the_fixed_value():
    space = space_from_dict(
        {
            "fixed": {"road.lambda_spt": 0.3},
            "params": {
                "road.lambda_dist": {"loguniform": {"low": 0.01, "high": 1}},
                "road.lambda_spt": {"loguniform": {"low": 0.001, "high": 1}},
            },
            "points_to_evaluate": [{"road.lambda_dist": 0.1}],
        }
    )
    assert space.points_to_evaluate == [{"road.lambda_dist": 0.1, "road.lambda_spt": 0.3}]


def test_scheduler_and_scalars():
    expect_error(minimal(scheduler={"type": "hyperband"}), "scheduler.type", "asha, fifo")
    expect_error(minimal(scheduler={"grace": 3}), "scheduler.grace", "unknown key")
    expect_error(minimal(scheduler={"reduction_factor": 1}), "scheduler.reduction_factor", "> 1")
    expect_error(minimal(num_samples=0), "num_samples", ">= 1")
    expect_error(minimal(max_concurrent="many"), "max_concurrent")
    expect_error(minimal(metric="accuracy"), "metric", "not a reported metric")
    expect_error(minimal(metric="target_entropy", mode="max"), "mode", "lower", "mode: min")


def test_grid_form_errors():
    expect_error({"grid": {"road.grid": []}}, "grid.road.grid", "non-empty list")
    expect_error({"grid": {"road.grid": ["1x1", "nine"]}}, "grid.road.grid", "HxW")
    expect_error({**minimal(), "grid": {"run.seed": [0, 1]}}, "not both")
    expect_error({"grid": {"run.seed": [0, 1]}, "points_to_evaluate": [{"run.seed": 0}]}, "points_to_evaluate")
    expect_error({}, "nothing to search")
    expect_error({"params": {"run.seed": {"fixed": 1}, "road.grid": "2x2"}}, "params: every parameter is fixed")


def test_valid_space_is_typed_and_round_trips():
    space = space_from_dict(
        {
            "metric": "target_entropy",
            "num_samples": 5,
            "max_concurrent": 2,
            "seed": 7,
            "scheduler": {"grace_period": 50, "reduction_factor": 3},
            "fixed": {"optim.max_iters": 200},
            "params": {
                "road.lambda_dist": {"loguniform": {"low": 0.01, "high": 1}},
                "road.grid": {"choice": {"values": ["1x1", "3x3"]}},
                "run.seed": {"randint": {"low": 0, "high": 3}},
                "optim.lr": {"uniform": {"low": 1e-4, "high": 1e-3}},
                "model.teacher_layer": "layer3",
            },
        }
    )
    assert space.mode == "min" and space.max_concurrent == 2 and space.seed == 7
    assert space.params["road.grid"] == Param("road.grid", "choice", values=("1x1", "3x3"))
    assert space.params["run.seed"].kind == "randint"
    assert space.fixed["model.teacher_layer"] == "layer3"  # a bare value is fixed
    base = space.base_config()
    assert base.optim.max_iters == 200 and base.model.teacher_layer == "layer3"
    cfg = trial_config(base, {"road.lambda_dist": 0.5, "road.grid": "1x1", "run.seed": 2, "optim.lr": 5e-4})
    assert (cfg.road.lambda_dist, cfg.road.grid, cfg.run.seed) == (0.5, "1x1", 2)
    assert space.max_iters(base) == 200
    again = space_from_dict(space.to_dict())
    assert again.params == space.params and again.fixed == space.fixed and again.scheduler == space.scheduler


# --- exponent forms, smoke sizes, the one trial-config path, metric directions ---------------


def test_numbers_in_exponent_form(tmp_path):
    """``1e-3`` is a number wherever a float is expected: bounds, choices, fixed values, points."""
    path = write(
        tmp_path,
        """
        fixed:
          optim.lr: 2.5e-4
          road.lambda_spt: 3E-1
        params:
          road.lambda_dist: {loguniform: {low: 1e-3, high: 1e0}}
          optim.momentum: {uniform: {low: 5e-1, high: 9.9e-1}}
          optim.weight_decay: {choice: {values: [5e-4, 1e-5]}}
        points_to_evaluate:
          - {road.lambda_dist: 1e-1, optim.momentum: 9e-1, optim.weight_decay: 5e-4}
    """,
    )
    space = load_space(path)
    assert space.params["road.lambda_dist"] == Param("road.lambda_dist", "loguniform", low=1e-3, high=1.0)
    assert space.params["optim.momentum"] == Param("optim.momentum", "uniform", low=0.5, high=0.99)
    assert space.params["optim.weight_decay"].values == (5e-4, 1e-5)
    assert space.fixed == {"optim.lr": 2.5e-4, "road.lambda_spt": 0.3}
    assert space.points_to_evaluate == [{"road.lambda_dist": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 5e-4}]
    values = [space.params["road.lambda_dist"].low, *space.fixed.values(), *space.points_to_evaluate[0].values()]
    assert all(type(v) is float for v in values)
    base = space.base_config()
    assert (base.optim.lr, base.road.lambda_spt) == (2.5e-4, 0.3)
    cfg = trial_config(base, space.points_to_evaluate[0])
    assert (cfg.road.lambda_dist, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 5e-4)


def test_smoke_sizes_win_over_a_full_size_spaces_fixed_values():
    """``tune.py --smoke --space minicity``: the space at the smoke sizes, its other fixed values kept."""
    space = load_space("minicity")
    assert space.fixed["optim.max_iters"] != SMOKE_OVERRIDES["optim.max_iters"]
    smoke = space.base_config(smoke=True)
    for key, value in SMOKE_OVERRIDES.items():
        section, name = key.split(".")
        assert getattr(getattr(smoke, section), name) == value, key
    assert smoke.road.mode == space.fixed["road.mode"] and smoke.run.eval_every == SMOKE_OVERRIDES["run.eval_every"]
    assert space.base_config().optim.max_iters == space.fixed["optim.max_iters"]
    # a space that is itself a smoke space keeps its fixed: values over the smoke sizes
    tiny = space_from_dict({**minimal(), "smoke": True, "fixed": {"optim.max_iters": 4}})
    assert tiny.base_config().optim.max_iters == tiny.base_config(smoke=True).optim.max_iters == 4
    assert tiny.base_config().data.crop_size == SMOKE_OVERRIDES["data.crop_size"]


def test_trial_config_from_the_sweep_record_is_the_same_config():
    """Tune's trials get the record's base config as a dict: the same function, the same config."""
    space = load_space("minicity")
    base = space.base_config()
    point = space.points_to_evaluate[1]
    from_record = trial_config(base.to_dict(), point, space.to_dict().get("points"))
    assert from_record.to_dict() == trial_config(base, point, space.points).to_dict()
    assert from_record.road.lambda_spt == point["road.lambda_spt"]
    assert base.road.lambda_spt != point["road.lambda_spt"]  # base is left as it was
    with pytest.raises(ConfigError, match="model.teacher_layer.*conv5"):
        trial_config(base, {"model.teacher_layer": "conv5"})
    with pytest.raises(ConfigError, match="point: 'nope'"):
        trial_config(base, {"point": "nope"})


def test_metric_directions_are_one_table():
    assert metric_direction("miou") == "max" and metric_direction("target_entropy") == "min"
    assert metric_direction("iou/road") == "max" and metric_direction("loss/dist") == "min"
    assert metric_direction("accuracy") is None and natural_mode("accuracy") == "max"
    for metric, direction in {**METRIC_DIRECTIONS, "iou/car": "max", "loss/total": "min"}.items():
        assert space_from_dict(minimal(metric=metric)).mode == direction
        other = "min" if direction == "max" else "max"
        expect_error(minimal(metric=metric, mode=other), "mode", f"use mode: {direction}")


def test_select_and_set_change_what_a_sweep_optimises_and_fixes():
    from road_ray.sweeps.record import load_space_for_run

    spec = load_space_for_run("minicity", False, None, select="val/im", overrides=["data.target_val=none"])
    assert (spec.metric, spec.mode) == ("val/im", "max") and spec.fixed["data.target_val"] == "none"
    assert spec.base_config().data.split("target_val") is None
    assert load_space_for_run("minicity", False, None, select="val/dev").mode == "min"
    with pytest.raises(SpaceError, match="--select 'accuracy'"):
        load_space_for_run("minicity", False, None, select="accuracy")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_space_for_run("minicity", False, None, overrides=["data.nope=1"])


def test_select_without_a_value_and_seed():
    import importlib.util
    from pathlib import Path

    from road_ray.sweeps.metrics import DEFAULT_SELECT, metric_direction
    from road_ray.sweeps.record import load_space_for_run

    spec = importlib.util.spec_from_file_location("tune", Path(__file__).resolve().parents[1] / "tune.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    args = tune.build_parser().parse_args(["--select", "--seed", "3"])
    assert (args.select, args.seed) == ("default", 3)
    spec = load_space_for_run("minicity", False, None, select=args.select, seed=args.seed)
    assert (spec.metric, spec.mode, spec.seed) == (DEFAULT_SELECT, metric_direction(DEFAULT_SELECT), 3)
    assert tune.build_parser().parse_args(["--select", "val/im"]).select == "val/im"
    with pytest.raises(SpaceError, match="--seed: expected >= 0"):
        load_space_for_run("minicity", False, None, seed=-1)
