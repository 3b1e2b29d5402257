"""The checks of a search-space file: every mistake a :class:`SpaceError` naming the file and the key.

Values are checked by applying them to a :class:`~road_ray.config.Config` (the config's own
rules — grid syntax, λ >= 0, literal choices — are the single source of truth) and by
:func:`road_ray.sweeps.trial.validate_config` (the teacher tap of the backbone). Metrics and their
directions come from :mod:`road_ray.sweeps.metrics`. No Ray here.
"""

from __future__ import annotations

import copy
import math
import typing
from typing import Any, Literal

from road_ray.config import Config, ConfigError, apply_overrides, default_config, valid_keys
from road_ray.sweeps.metrics import METRIC_DIRECTIONS, PREFIX_DIRECTIONS, metric_direction
from road_ray.sweeps.space_model import (
    DISTRIBUTIONS,
    RESERVED_KEYS,
    SCHEDULER_KEYS,
    SCHEDULERS,
    STUDY_FORMS,
    TOP_LEVEL_KEYS,
    Param,
    SchedulerSpec,
    SearchSpace,
    SpaceError,
    Study,
)
from road_ray.sweeps.trial import validate_config


class SpaceChecker:
    """Each check raises SpaceError("FILE: KEY: what was expected")."""

    def __init__(self, path: str):
        self.path = path
        self.keys = set(valid_keys())

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise SpaceError(f"{self.path}: {key}: {message}")

    def check_top_level(self, data: dict[str, Any]) -> None:
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                self.fail(str(key), f"unknown top-level key; expected one of {', '.join(TOP_LEVEL_KEYS)}")

    # -- scalars ---------------------------------------------------------------------
    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        return value

    def integer(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def max_concurrent(self, value: Any) -> int | None:
        if value in ("auto", None):
            return None
        return self.integer("max_concurrent", value, minimum=1)

    def metric(self, metric: Any, mode: Any) -> tuple[str, Literal["max", "min"]]:
        natural = metric_direction(metric) if isinstance(metric, str) else None
        if natural is None:
            families = ", ".join(f"{prefix}<name>" for prefix in PREFIX_DIRECTIONS)
            self.fail(
                "metric",
                f"{metric!r} is not a reported metric; expected one of {', '.join(METRIC_DIRECTIONS)} or {families}",
            )
        if mode is None:
            mode = natural
        if mode not in ("max", "min"):
            self.fail("mode", f"expected max or min, got {mode!r}")
        if mode != natural:
            self.fail(
                "mode", f"{metric} is better when {'higher' if natural == 'max' else 'lower'}; use mode: {natural}"
            )
        return metric, mode

    # -- config keys -----------------------------------------------------------------
    def config_key(self, where: str, key: Any) -> str:
        if not isinstance(key, str) or key not in self.keys:
            close = [k for k in sorted(self.keys) if str(key).split(".")[-1] in k] if isinstance(key, str) else []
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (see road_ray/config.py)"
            self.fail(f"{where}.{key}", f"unknown config key{hint}")
        if key in RESERVED_KEYS:
            self.fail(f"{where}.{key}", "set by the sweep itself (each trial gets its own run name and storage)")
        return key

    def check_value(self, where: str, key: str, value: Any, base: Config) -> None:
        """Apply ``key=value`` to a copy of ``base`` and let the config validate it."""
        cfg = copy.deepcopy(base)
        try:
            apply_overrides(cfg, {key: value})
            validate_config(cfg)
        except ConfigError as e:
            self.fail(where, f"value {value!r} is rejected by the config: {e}")

    def fixed(self, data: Any, smoke: bool) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("fixed", f"expected a mapping of config keys to values, got {data!r}")
        base = default_config(smoke=smoke)
        out = {}
        for key, value in data.items():
            self.config_key("fixed", key)
            if isinstance(value, (dict, list)):
                self.fail(f"fixed.{key}", f"expected a single value, got {value!r}")
            try:
                apply_overrides(base, {key: value})
            except ConfigError as e:
                self.fail(f"fixed.{key}", f"value {value!r} is rejected by the config: {e}")
            out[key] = value
        try:
            validate_config(base)
        except ConfigError as e:
            culprit = str(e).split(":", 1)[0]  # ConfigError messages start with the key
            if culprit in out:
                self.fail(f"fixed.{culprit}", f"value {out[culprit]!r} is rejected by the config: {e}")
            self.fail("fixed", f"the fixed values together are rejected by the config: {e}")
        return out

    def params(self, data: Any, base: Config, space: SearchSpace) -> dict[str, Param]:
        if not isinstance(data, dict):
            self.fail("params", f"expected a mapping of config keys to distributions, got {data!r}")
        out: dict[str, Param] = {}
        for key, spec in data.items():
            self.config_key("params", key)
            where = f"params.{key}"
            if not isinstance(spec, dict):
                # A bare value is a fixed value: ``run.seed: 0``.
                spec = {"fixed": spec}
            if len(spec) != 1:
                self.fail(where, f"expected exactly one distribution ({', '.join(DISTRIBUTIONS)}), got {sorted(spec)}")
            kind, args = next(iter(spec.items()))
            if kind not in DISTRIBUTIONS:
                self.fail(where, f"unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
            if kind == "fixed":
                if key in space.fixed and space.fixed[key] != args:
                    self.fail(where, f"fixed to {args!r} here but to {space.fixed[key]!r} under fixed:")
                self.check_value(where, key, args, base)
                space.fixed[key] = args
                continue
            param = self._distribution(where, key, kind, args, base)
            out[key] = param
        return out

    def _distribution(self, where: str, key: str, kind: str, args: Any, base: Config) -> Param:
        field_type = _field_type(key)
        if kind == "choice":
            values = args.get("values") if isinstance(args, dict) else args
            if isinstance(args, dict) and set(args) - {"values"}:
                self.fail(where, f"choice takes only values:, got {sorted(args)}")
            if not isinstance(values, list) or not values:
                self.fail(where, f"choice expects values: [a non-empty list], got {args!r}")
            if len({repr(v) for v in values}) != len(values):
                self.fail(where, f"choice values repeat: {values}")
            for value in values:
                if isinstance(value, (dict, list)):
                    self.fail(where, f"choice value {value!r}: expected a single value")
                self.check_value(where, key, value, base)
            return Param(key, "choice", values=tuple(values))
        if not isinstance(args, dict) or set(args) != {"low", "high"}:
            self.fail(where, f"{kind} expects {{low: ..., high: ...}}, got {args!r}")
        low, high = args["low"], args["high"]
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.fail(f"{where}.{name}", f"expected a number, got {value!r}")
        if kind in ("loguniform", "uniform") and field_type is not float:
            self.fail(where, f"{kind} draws real numbers but {key} is {_type_name(field_type)}; use choice or randint")
        if kind == "randint":
            if field_type is not int:
                self.fail(where, f"randint draws integers but {key} is {_type_name(field_type)}")
            if not (float(low).is_integer() and float(high).is_integer()):
                self.fail(where, f"randint expects integer bounds, got low={low}, high={high}")
            low, high = int(low), int(high)
        if low > high:
            self.fail(where, f"low ({low}) > high ({high})")
        if kind == "loguniform" and low <= 0:
            self.fail(f"{where}.low", f"loguniform needs low > 0, got {low}")
        for value in (low, high):
            self.check_value(where, key, value, base)
        return Param(key, kind, low=low, high=high)  # type: ignore[arg-type]

    def study_points(self, data: Any, base: Config) -> dict[str, dict[str, Any]]:
        if not isinstance(data, dict) or not data:
            self.fail("points", f"expected a mapping of point names to overrides, got {data!r}")
        out: dict[str, dict[str, Any]] = {}
        for name, overrides in data.items():
            where = f"points.{name}"
            if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
                self.fail(where, "a point's name: letters, digits, _ and - only")
            if not isinstance(overrides, dict):
                self.fail(where, f"expected a mapping of config keys to values, got {overrides!r}")
            for key, value in overrides.items():
                self.config_key(where, key)
                if isinstance(value, (dict, list)):
                    self.fail(f"{where}.{key}", f"expected a single value, got {value!r}")
            cfg = copy.deepcopy(base)
            try:
                apply_overrides(cfg, dict(overrides))
                validate_config(cfg)
            except ConfigError as e:
                self.fail(where, f"rejected by the config: {e}")
            out[name] = dict(overrides)
        return out

    def point_name(self, where: str, name: Any, points: dict[str, dict[str, Any]]) -> str | None:
        if name is None:
            return None
        if name not in points:
            self.fail(where, f"{name!r} is not one of the points: {', '.join(points)}")
        return str(name)

    def studies(self, data: Any, points: dict[str, dict[str, Any]]) -> dict[str, Study]:
        if not isinstance(data, dict):
            self.fail("studies", f"expected a mapping of study names to {{title, form, points}}, got {data!r}")
        out = {}
        for name, spec in data.items():
            where = f"studies.{name}"
            if not isinstance(spec, dict) or set(spec) - {"title", "form", "points"} or "points" not in spec:
                self.fail(
                    where, f"expected {{title: ..., form: table|bars, points: [...] or {{label: point}}}}, got {spec!r}"
                )
            form = spec.get("form", "bars")
            if form not in STUDY_FORMS:
                self.fail(f"{where}.form", f"expected one of {', '.join(STUDY_FORMS)}, got {form!r}")
            members = spec["points"]
            if isinstance(members, list):
                members = {str(p): p for p in members}
            if not isinstance(members, dict) or not members:
                self.fail(f"{where}.points", f"expected a list of point names or {{label: point}}, got {members!r}")
            for label, point in members.items():
                self.point_name(f"{where}.points.{label}", point, points)
            out[str(name)] = Study(
                str(name), str(spec.get("title", name)), form, {str(k): str(v) for k, v in members.items()}
            )
        return out

    def grid(self, data: Any, base: Config, space: SearchSpace) -> dict[str, list[Any]]:
        if not isinstance(data, dict) or not data:
            self.fail("grid", f"expected a mapping of config keys to lists of values, got {data!r}")
        out = {}
        for key, values in data.items():
            self.config_key("grid", key)
            for point, overrides in space.points.items():
                if key in overrides:
                    self.fail(f"grid.{key}", f"also set by point {point!r}; a key is either in grid: or in the points")
            where = f"grid.{key}"
            if not isinstance(values, list) or not values:
                self.fail(where, f"expected a non-empty list of values, got {values!r}")
            for value in values:
                self.check_value(where, key, value, base)
            out[key] = list(values)
        return out

    def points(self, data: Any, base: Config, space: SearchSpace) -> list[dict[str, Any]]:
        """Each point becomes a full assignment of the searched keys (missing: the base value)."""
        if not isinstance(data, list):
            self.fail("points_to_evaluate", f"expected a list of mappings, got {data!r}")
        out = []
        for i, point in enumerate(data):
            where = f"points_to_evaluate[{i}]"
            if not isinstance(point, dict):
                self.fail(where, f"expected a mapping of searched keys to values, got {point!r}")
            for key in point:
                if key not in space.params:
                    self.config_key(where, key)
                    self.fail(f"{where}.{key}", f"not a searched parameter (searched: {', '.join(space.params)})")
            full = {}
            for key, param in space.params.items():
                value = point[key] if key in point else _get(base, key)
                if not param.contains(value):
                    origin = "" if key in point else " (not given, so the fixed/default value)"
                    self.fail(f"{where}.{key}", f"{value!r}{origin} is outside {param.describe()}")
                self.check_value(f"{where}.{key}", key, value, base)
                full[key] = value
            out.append(full)
        return out

    def scheduler(self, data: Any, default: str) -> SchedulerSpec:
        if not isinstance(data, dict):
            self.fail("scheduler", f"expected a mapping with {', '.join(SCHEDULER_KEYS)}, got {data!r}")
        for key in data:
            if key not in SCHEDULER_KEYS:
                self.fail(f"scheduler.{key}", f"unknown key; expected one of {', '.join(SCHEDULER_KEYS)}")
        kind = data.get("type", default)
        if kind not in SCHEDULERS:
            self.fail("scheduler.type", f"expected one of {', '.join(SCHEDULERS)}, got {kind!r}")
        grace = data.get("grace_period")
        if grace is not None:
            grace = self.integer("scheduler.grace_period", grace, minimum=1)
        rf = data.get("reduction_factor", 2)
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or rf <= 1:
            self.fail("scheduler.reduction_factor", f"expected a number > 1, got {rf!r}")
        max_t = data.get("max_t")
        if max_t is not None:
            max_t = self.integer("scheduler.max_t", max_t, minimum=2)
        return SchedulerSpec(type=kind, grace_period=grace, reduction_factor=float(rf), max_t=max_t)


def _field_type(key: str) -> Any:
    section, name = key.split(".", 1)
    section_type = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(section_type)[name]


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)
