"""One trial's config: the sweep's base config, a study point's overrides, the searched values.

:func:`trial_config` is the one path from a trial's parameters to its :class:`~road_ray.config.Config`:
every Tune trial takes it (``run_trial`` in ``road_ray/on_ray/tune.py``), and the tests check the
shipped spaces through it. No Ray here.
"""

from __future__ import annotations

import copy
from typing import Any

from road_ray.config import Config, ConfigError, apply_overrides, config_from_dict

POINT_KEY = "point"  # the trial parameter naming a study's fixed point


def trial_config(
    base: Config | dict[str, Any], params: dict[str, Any], points: dict[str, dict[str, Any]] | None = None
) -> Config:
    """A new config: ``base`` (a Config, or the sweep record's ``base_config`` dict), then the
    overrides of the study point ``params["point"]`` (from ``points``), then the trial's dotted
    config keys; validated (:func:`validate_config`). ``base`` is left as it was."""
    cfg = copy.deepcopy(base) if isinstance(base, Config) else config_from_dict(base)
    if POINT_KEY in params:
        name, points = params[POINT_KEY], points or {}
        if name not in points:
            raise ConfigError(f"point: {name!r} is not one of the sweep's points ({', '.join(points) or 'none'})")
        apply_overrides(cfg, points[name])
    apply_overrides(cfg, {k: v for k, v in params.items() if "." in k})
    validate_config(cfg)
    return cfg


def validate_config(cfg: Config) -> None:
    """The config's own checks, plus the teacher tap against the backbone's named stages."""
    cfg.validate()
    from road_ray.models.backbones import tap_names  # torch, but no Ray

    taps = tap_names(cfg.model.backbone)
    if cfg.model.teacher_layer not in taps:
        raise ConfigError(
            f"model.teacher_layer: {cfg.model.teacher_layer!r} is not a stage of the {cfg.model.backbone} "
            f"backbone; expected one of {', '.join(taps)}"
        )
