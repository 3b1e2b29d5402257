"""Search spaces: a YAML file -> a validated, typed :class:`SearchSpace` (no Ray here).

A search space names dotted config keys (``road.lambda_dist``, ``road.grid``,
``model.teacher_layer``, ...) and how each is chosen::

    description: λ1/λ2/grid/teacher-layer sweep on MiniCity
    metric: miou            # the oracle target-val mIoU (default); mode max
    num_samples: 8          # Optuna trials (points_to_evaluate included)
    max_concurrent: auto    # auto: GPUs // GPUs per trial, or 1 on CPU
    seed: 0                 # Optuna's TPE sampler
    scheduler: {type: asha, grace_period: 100, reduction_factor: 2}   # in Train iterations
    fixed:                  # plain overrides of any config key, for every trial (a key that is
      optim.max_iters: 300  # also searched: its base value, e.g. for points that omit it)
    params:                 # what Optuna searches
      road.lambda_dist: {loguniform: {low: 0.01, high: 1.0}}
      road.lambda_spt:  {loguniform: {low: 0.001, high: 1.0}}
      road.grid:        {choice: {values: [1x1, 2x1, 2x2, 3x3]}}
      run.seed:         {fixed: 0}
    points_to_evaluate:     # tried first, in order (missing keys: the fixed/default value)
      - {road.lambda_dist: 0.1, road.lambda_spt: 0.01, road.grid: 3x3}

or, for ablations, an exhaustive ``grid:`` (every combination, no Optuna)::

    grid: {road.grid: [1x1, 2x1, 2x2, 3x3], run.seed: [0, 1, 2]}

or a *study*: named fixed points (each a set of overrides), every one crossed with ``grid:``
(usually the seeds), and how ``road-ray report`` presents them in the paper's form::

    points:
      nonadapt: {road.mode: nonadapt}
      road:     {road.mode: road}
      oracle:   {road.mode: oracle}
    grid: {run.seed: [0, 1, 2]}
    baseline: nonadapt          # the share of the baseline -> upper_bound gap each point closes
    upper_bound: oracle
    studies:
      table1: {title: "Table 1", form: table, points: [nonadapt, road]}   # per-class IoU, mean ± std
      fig6:   {title: "Fig. 6", form: bars, points: {3x3: road}}           # bars labelled 3x3

The point's name is the trial's ``point`` parameter; a point shared by several studies runs once.

Every mistake is a :class:`SpaceError` naming the file and the key, raised when the file is
loaded — before Ray starts or any trial runs. Values are checked by applying them to a
:class:`~road_ray.config.Config` (so the config's own rules — grid syntax, λ >= 0,
literal choices — are the single source of truth).
"""

from __future__ import annotations

import copy
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from road_ray.config import SMOKE_OVERRIDES, Config, ConfigError, apply_overrides, load_yaml, valid_keys

# Where the shipped spaces live (the repository's search_spaces/ folder).
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPACE = "minicity"
SMOKE_SPACE = "smoke"

TOP_LEVEL_KEYS = (
    "description",
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "seed",
    "smoke",
    "scheduler",
    "fixed",
    "params",
    "grid",
    "points_to_evaluate",
    "points",
    "studies",
    "baseline",
    "upper_bound",
)
POINT_KEY = "point"  # the trial parameter naming a study's fixed point
STUDY_FORMS = ("table", "bars")
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "fixed")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")
SCHEDULERS = ("asha", "fifo")
# The sweep owns these: every trial gets its own deterministic run name and storage.
RESERVED_KEYS = ("run.name", "run.storage")

# Metrics every evaluation reports (DESIGN §3) and which direction is better.
KNOWN_METRICS = {
    "miou": "max",  # target-val mIoU: the oracle papers report
    "miou16": "max",
    "miou13": "max",
    "source_val_miou": "max",  # label-free w.r.t. the target: a selection proxy
    "target_entropy": "min",  # label-free: mean prediction entropy on target val
    "best_miou": "max",
}
METRIC_PREFIXES = ("iou/", "loss/")

Kind = Literal["loguniform", "uniform", "randint", "choice"]


class SpaceError(ValueError):
    """A search-space problem, naming the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "randint" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.values)}"
        return f"{self.kind} [{self.low:g}, {self.high:g}]"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": {"values": list(self.values)}}
        return {self.kind: {"low": self.low, "high": self.high}}


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping. ASHA's times are Train iterations (the ``iter`` metric)."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int | None = None  # None: the first evaluation (run.eval_every)
    reduction_factor: float = 2.0
    max_t: int | None = None  # None: just above the last iteration (ray-notes: never equal)


@dataclass
class Study:
    """One of the paper's tables or figures: which points, labelled how, in which form."""

    name: str
    title: str
    form: Literal["table", "bars"]
    points: dict[str, str]  # label shown -> point name


@dataclass
class SearchSpace:
    path: str
    description: str = ""
    metric: str = "miou"
    mode: Literal["max", "min"] = "max"
    num_samples: int = 8
    max_concurrent: int | None = None  # None: automatic
    seed: int = 0
    smoke: bool = False
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    points: dict[str, dict[str, Any]] = field(default_factory=dict)  # study: name -> overrides
    studies: dict[str, Study] = field(default_factory=dict)
    baseline: str | None = None
    upper_bound: str | None = None

    @property
    def is_grid(self) -> bool:
        """An exhaustive grid (ablation or study) instead of an Optuna search."""
        return bool(self.grid) or bool(self.points)

    @property
    def full_grid(self) -> dict[str, list[Any]]:
        """What Tune's grid_search expands: the study's point names first, then ``grid:``."""
        return {POINT_KEY: list(self.points), **self.grid} if self.points else dict(self.grid)

    @property
    def searched_keys(self) -> list[str]:
        return list(self.full_grid) if self.is_grid else list(self.params)

    def base_config(self, base: Config | None = None) -> Config:
        """The config every trial starts from: defaults (or ``base``), smoke sizes, ``fixed``."""
        cfg = copy.deepcopy(base) if base is not None else Config()
        if self.smoke:
            apply_overrides(cfg, SMOKE_OVERRIDES)
        apply_overrides(cfg, self.fixed)
        _validate(cfg)
        return cfg

    def trial_config(self, base: Config, params: dict[str, Any]) -> Config:
        """``base`` with one trial's searched values applied (keys are dotted config keys;
        ``point``: a study point's overrides, applied first)."""
        cfg = copy.deepcopy(base)
        return apply_trial_params(cfg, params, self.points, self.searched_keys)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values (what tune.grid_search expands to)."""
        grid = self.full_grid
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]

    def max_iters(self, base: Config) -> int:
        """The largest ``optim.max_iters`` any trial can have (for ASHA's max_t); ``base`` is final."""
        its = [base.optim.max_iters, *self.grid.get("optim.max_iters", [])]
        its += [p["optim.max_iters"] for p in self.points.values() if "optim.max_iters" in p]
        param = self.params.get("optim.max_iters")
        if param is not None:
            its.append(max(param.values) if param.kind == "choice" else param.high)
        return int(max(its))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :func:`space_from_dict` reads back (saved with the experiment)."""
        out: dict[str, Any] = {
            "description": self.description,
            "metric": self.metric,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "max_concurrent": self.max_concurrent or "auto",
            "seed": self.seed,
            "smoke": self.smoke,
            "scheduler": {k: v for k, v in vars(self.scheduler).items() if v is not None},
            "fixed": dict(self.fixed),
        }
        if self.is_grid:
            if self.grid:
                out["grid"] = {k: list(v) for k, v in self.grid.items()}
            if self.points:
                out["points"] = {name: dict(p) for name, p in self.points.items()}
                out["studies"] = {
                    s.name: {"title": s.title, "form": s.form, "points": dict(s.points)} for s in self.studies.values()
                }
                out.update({k: v for k, v in (("baseline", self.baseline), ("upper_bound", self.upper_bound)) if v})
        else:
            out["params"] = {k: p.to_dict() for k, p in self.params.items()}
            out["points_to_evaluate"] = [dict(p) for p in self.points_to_evaluate]
        return out


# ---------------------------------------------------------------------------------------
# Loading


def resolve_space_path(name_or_path: str | Path | None) -> Path:
    """A file path, or the name of a shipped space (``minicity``, ``smoke``, ``grid_ablation``...)."""
    if name_or_path is None:
        name_or_path = DEFAULT_SPACE
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    shipped = SPACES_DIR / f"{name_or_path}.yaml"
    if "/" not in str(name_or_path) and shipped.is_file():
        return shipped
    known = ", ".join(sorted(f.stem for f in SPACES_DIR.glob("*.yaml"))) or "none found"
    raise SpaceError(f"search space {str(name_or_path)!r} does not exist (a YAML file, or one of: {known})")


def load_space(name_or_path: str | Path | None = None, base: Config | None = None) -> SearchSpace:
    """Load and validate a search-space YAML file (see the module docstring for the format)."""
    path = resolve_space_path(name_or_path)
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise SpaceError(f"{path}: cannot read: {e}") from None
    return space_from_dict(data, str(path), base=base)


def space_from_dict(data: Any, path: str = "<space>", base: Config | None = None) -> SearchSpace:
    """Validate a parsed search space; ``path`` names the source in every error."""
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping of {', '.join(TOP_LEVEL_KEYS)}; got {type(data).__name__}")
    v = _Validator(path, base)
    v.check_top_level(data)
    space = SearchSpace(path=path)
    space.description = str(data.get("description", "") or "")
    space.smoke = v.boolean("smoke", data.get("smoke", False))
    space.seed = v.integer("seed", data.get("seed", 0), minimum=0)
    space.num_samples = v.integer(
        "num_samples", data.get("num_samples", 1 if "grid" in data or "points" in data else 8), minimum=1
    )
    space.max_concurrent = v.max_concurrent(data.get("max_concurrent", "auto"))
    space.metric, space.mode = v.metric(data.get("metric", "miou"), data.get("mode"))
    space.fixed = v.fixed(data.get("fixed") or {}, smoke=space.smoke)
    base_cfg = space.base_config(base)
    if "params" in data and "grid" in data:
        raise SpaceError(f"{path}: give either params: (an Optuna search) or grid: (every combination), not both")
    space.params = v.params(data.get("params") or {}, base_cfg, space)
    base_cfg = space.base_config(base)  # params may have added fixed values
    if "params" in data and "points" in data:
        raise SpaceError(
            f"{path}: give either params: (an Optuna search) or points: (a study's fixed points), not both"
        )
    space.points = v.study_points(data["points"], base_cfg) if "points" in data else {}
    space.grid = v.grid(data.get("grid"), base_cfg, space) if "grid" in data else {}
    if space.is_grid and data.get("points_to_evaluate"):
        raise SpaceError(f"{path}: points_to_evaluate: not used with grid: or points: (every combination is evaluated)")
    if not space.params and not space.is_grid:
        if data.get("params"):
            raise SpaceError(
                f"{path}: params: every parameter is fixed, so Optuna has nothing to search; "
                "move them to fixed: and give grid: {run.seed: [...]} to repeat a run"
            )
        raise SpaceError(f"{path}: nothing to search: give params: (Optuna), grid: (every combination) or points:")
    for key in ("studies", "baseline", "upper_bound"):
        if key in data and not space.points:
            raise SpaceError(f"{path}: {key}: only used with points: (a study's named fixed points)")
    space.studies = v.studies(data.get("studies") or {}, space.points)
    space.baseline = v.point_name("baseline", data.get("baseline"), space.points)
    space.upper_bound = v.point_name("upper_bound", data.get("upper_bound"), space.points)
    space.points_to_evaluate = v.points(data.get("points_to_evaluate") or [], base_cfg, space)
    default_scheduler = "fifo" if space.grid else "asha"
    space.scheduler = v.scheduler(data.get("scheduler") or {}, default_scheduler)
    return space


class _Validator:
    """Each check raises SpaceError("FILE: KEY: what was expected")."""

    def __init__(self, path: str, base: Config | None):
        self.path = path
        self.base = base
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
        if not isinstance(metric, str) or not (metric in KNOWN_METRICS or metric.startswith(METRIC_PREFIXES)):
            self.fail(
                "metric",
                f"{metric!r} is not a reported metric; expected one of "
                f"{', '.join(KNOWN_METRICS)} or iou/<class>, loss/<name>",
            )
        natural = KNOWN_METRICS.get(metric, "min" if metric.startswith("loss/") else "max")
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
            _validate(cfg)
        except ConfigError as e:
            self.fail(where, f"value {value!r} is rejected by the config: {e}")

    def fixed(self, data: Any, smoke: bool) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("fixed", f"expected a mapping of config keys to values, got {data!r}")
        base = copy.deepcopy(self.base) if self.base is not None else Config()
        if smoke:
            apply_overrides(base, SMOKE_OVERRIDES)
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
            _validate(base)
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
                _validate(cfg)
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


def apply_trial_params(
    cfg: Config, params: dict[str, Any], points: dict[str, dict[str, Any]], keys: typing.Iterable[str] | None = None
) -> Config:
    """Apply one trial's parameters to ``cfg`` in place: a study ``point``'s overrides first, then
    the dotted config keys (only ``keys`` when given); validated."""
    if POINT_KEY in params:
        name = params[POINT_KEY]
        if name not in points:
            raise ConfigError(f"point: {name!r} is not one of the sweep's points ({', '.join(points) or 'none'})")
        apply_overrides(cfg, points[name])
    wanted = set(keys) if keys is not None else None
    apply_overrides(cfg, {k: v for k, v in params.items() if "." in k and (wanted is None or k in wanted)})
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    """The config's own checks, plus the teacher tap against the backbone's named stages."""
    cfg.validate()
    from road_ray.models.backbones import tap_names  # torch, but no Ray

    taps = tap_names(cfg.model.backbone)
    if cfg.model.teacher_layer not in taps:
        raise ConfigError(
            f"model.teacher_layer: {cfg.model.teacher_layer!r} is not a stage of the {cfg.model.backbone} "
            f"backbone; expected one of {', '.join(taps)}"
        )


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
