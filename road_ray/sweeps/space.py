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

from pathlib import Path
from typing import Any

import yaml

from road_ray.config import load_yaml
from road_ray.sweeps.space_checks import SpaceChecker
from road_ray.sweeps.space_model import (
    TOP_LEVEL_KEYS,
    Param,
    SchedulerSpec,
    SearchSpace,
    SpaceError,
    Study,
)
from road_ray.sweeps.trial import POINT_KEY

__all__ = [
    "DEFAULT_SPACE",
    "POINT_KEY",
    "SMOKE_SPACE",
    "SPACES_DIR",
    "Param",
    "SchedulerSpec",
    "SearchSpace",
    "SpaceError",
    "Study",
    "load_space",
    "resolve_space_path",
    "space_from_dict",
]

# Where the shipped spaces live (the repository's search_spaces/ folder).
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPACE = "minicity"
SMOKE_SPACE = "smoke"


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


def load_space(name_or_path: str | Path | None = None) -> SearchSpace:
    """Load and validate a search-space YAML file (see the module docstring for the format)."""
    path = resolve_space_path(name_or_path)
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise SpaceError(f"{path}: cannot read: {e}") from None
    return space_from_dict(data, str(path))


def space_from_dict(data: Any, path: str = "<space>") -> SearchSpace:
    """Validate a parsed search space; ``path`` names the source in every error."""
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping of {', '.join(TOP_LEVEL_KEYS)}; got {type(data).__name__}")
    v = SpaceChecker(path)
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
    base_cfg = space.base_config()
    if "params" in data and "grid" in data:
        raise SpaceError(f"{path}: give either params: (an Optuna search) or grid: (every combination), not both")
    space.params = v.params(data.get("params") or {}, base_cfg, space)
    base_cfg = space.base_config()  # params may have added fixed values
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
