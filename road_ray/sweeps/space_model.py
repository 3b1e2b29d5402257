"""A search space as typed data: :class:`SearchSpace` and its parts (no Ray here).

The file format is described in :mod:`road_ray.sweeps.space` (which loads it), the checks in
:mod:`road_ray.sweeps.space_checks`. A space knows the config every trial starts from
(:meth:`SearchSpace.base_config`), what Tune expands (:attr:`SearchSpace.full_grid`) and how it
is saved with the experiment (:meth:`SearchSpace.to_dict`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from road_ray.config import SMOKE_OVERRIDES, Config, apply_overrides, default_config
from road_ray.sweeps.trial import POINT_KEY, validate_config

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
STUDY_FORMS = ("table", "bars")
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "fixed")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")
SCHEDULERS = ("asha", "fifo")
# The sweep owns these: every trial gets its own deterministic run name and storage.
RESERVED_KEYS = ("run.name", "run.storage")

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
    max_t: int | None = None  # None: just above the last iteration (docs/ray.md: never equal)


@dataclass
class Study:
    """One of the paper's tables or figures: which points, labelled how, in which form."""

    name: str
    title: str
    form: Literal["table", "bars"]
    points: dict[str, str]  # label shown -> point name


@dataclass
class SearchSpace:
    """One validated search-space file: what every trial fixes, what is searched or gridded, how
    trials are scheduled, and (for a study) the named points and how the report presents them."""

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

    def base_config(self, smoke: bool = False) -> Config:
        """The config every trial starts from: the defaults (at the smoke sizes of
        :func:`~road_ray.config.default_config` when the space says ``smoke: true``), then ``fixed:``;
        validated. One trial's config is :func:`road_ray.sweeps.trial.trial_config` of it.

        ``smoke`` (``tune.py --smoke`` on a full-size space): the smoke sizes win over the
        space's ``fixed:`` values of the same keys, so the run is toy-sized whatever it fixes.
        """
        cfg = default_config(smoke=self.smoke or smoke)
        fixed = self.fixed
        if smoke and not self.smoke:
            fixed = {key: value for key, value in fixed.items() if key not in SMOKE_OVERRIDES}
        apply_overrides(cfg, fixed)
        validate_config(cfg)
        return cfg

    @property
    def num_trials(self) -> int:
        """How many trials the sweep runs: ``num_samples``, times every combination of a grid."""
        return self.num_samples * (len(self.grid_points()) if self.is_grid else 1)

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
