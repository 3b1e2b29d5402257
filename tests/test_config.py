"""Configuration: defaults, YAML, dotted overrides, and errors that name the key."""

import pytest

from road_ray.config import Config, ConfigError, apply_overrides, load_config, parse_grid, valid_keys


def test_defaults_are_the_paper_loss_weights():
    cfg = Config()
    assert (cfg.road.lambda_dist, cfg.road.lambda_spt, cfg.road.grid) == (0.1, 0.01, "3x3")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.poly_power) == (2.5e-4, 0.9, 5e-4, 0.9)
    assert cfg.optim.head_lr_mult == 10.0


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("road:\n  lambda_dist: 0.5\n  grid: 2x2\nmodel:\n  backbone: vgg16\n  teacher_layer: conv5\n")
    cfg = load_config(f, ["road.lambda_dist=0.25", "run.use_gpu=false", "data.crop_size=97"])
    assert cfg.road.lambda_dist == 0.25 and cfg.road.grid == "2x2"
    assert cfg.model.backbone == "vgg16" and cfg.run.use_gpu is False and cfg.data.crop_size == 97


def test_int_to_float_is_accepted_but_not_strings():
    cfg = apply_overrides(Config(), {"road.lambda_spt": 1})
    assert cfg.road.lambda_spt == 1.0 and isinstance(cfg.road.lambda_spt, float)
    with pytest.raises(ConfigError, match="road.lambda_spt: expected a number"):
        apply_overrides(Config(), ["road.lambda_spt=abc"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("road.lambda_dst=0.1", "unknown config key 'road.lambda_dst'.*lambda_dist"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("road.mode=magic", "road.mode: 'magic' is not one of nonadapt, dst, spt, road, frozen, source_dist"),
        ("model.backbone=resnet18", "model.backbone: 'resnet18' is not one of"),
        ("optim.max_iters=1.5", "optim.max_iters: expected an integer"),
        ("run.use_gpu=maybe", "run.use_gpu"),
        ("road.grid=3by3", "road.grid: grid '3by3' is not of the form HxW"),
        ("road.grid=0x3", "road.grid"),
        ("road.lambda_dist=-1", "road.lambda_dist: expected a value >= 0"),
        ("lambda_dist", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("road: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("road: 3\n")
    with pytest.raises(ConfigError, match="road: expected a mapping"):
        load_config(wrong)


def test_parse_grid():
    assert parse_grid("3x3") == (3, 3) and parse_grid("2x1") == (2, 1) and parse_grid("4x6") == (4, 6)
    for bad in ["0x3", "3by3", "3x", "x3", "-1x2", "3x3x3"]:
        with pytest.raises(ValueError):
            parse_grid(bad)


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "road.lambda_dist" in keys and "data.source" in keys and "run.num_workers" in keys


def test_numbers_in_every_exponent_form(tmp_path):
    # YAML 1.1 reads 1e-2 as a string; a user means 0.01 (on the command line, in files, in spaces).
    cfg = load_config(
        overrides=["optim.lr=1e-2", "road.lambda_spt=3E-1", "road.lambda_dist=.5e-1", "optim.max_iters=1e3"]
    )
    assert (cfg.optim.lr, cfg.road.lambda_spt, cfg.road.lambda_dist, cfg.optim.max_iters) == (0.01, 0.3, 0.05, 1000)
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 2.5e-3\nroad:\n  grid: 3x3\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 0.0025 and cfg.road.grid == "3x3"
    assert apply_overrides(Config(), {"optim.lr": "1e-2"}).optim.lr == 0.01  # a string from JSON
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config(overrides=["optim.lr=fast"])


def test_modes_and_their_terms_are_one_table():
    from road_ray.config import DISTILLATION_DOMAIN, MODES, SPATIAL_MODES, ROADConfig

    assert set(DISTILLATION_DOMAIN) | SPATIAL_MODES <= set(MODES)
    assert ROADConfig(mode="dst").distillation_domain == "target"
    assert ROADConfig(mode="source_dist").distillation_domain == "source"
    assert ROADConfig(mode="road", lambda_dist=0.0).uses_teacher is False
    assert ROADConfig(mode="spt").uses_spatial and not ROADConfig(mode="spt", lambda_spt=0.0).uses_spatial
    assert not ROADConfig(mode="nonadapt").uses_teacher and not ROADConfig(mode="nonadapt").uses_spatial


def test_smoke_sizes_then_the_users_overrides():
    from road_ray.config import SMOKE_OVERRIDES

    cfg = load_config(overrides=["optim.max_iters=9"], smoke=True)
    assert cfg.optim.max_iters == 9 and cfg.data.crop_size == SMOKE_OVERRIDES["data.crop_size"]


def test_a_validation_split_can_be_left_out_but_not_a_training_split():
    cfg = load_config(overrides=["data.target_val=none"])
    assert cfg.data.split("target_val") is None and cfg.data.split("source_val") is None  # "" = not set yet
    with pytest.raises(ConfigError, match="data.source: a training split cannot be 'none'"):
        load_config(overrides=["data.source=none"])
