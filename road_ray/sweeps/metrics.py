"""The metrics a trial reports, and which direction is better: the one table of directions.

Every training report carries these (``road_ray/engine/loop.py``; per class ``iou/<class>``,
per loss term ``loss/<name>``). A search space may optimize any of them
(:mod:`road_ray.sweeps.space_checks` refuses a mode against the metric's direction), and
selection (:mod:`road_ray.sweeps.results`, :mod:`road_ray.sweeps.selection`) ranks by them.
No Ray here.
"""

from __future__ import annotations

from typing import Literal

from road_ray.engine.validators import VALIDATORS

Direction = Literal["max", "min"]

# What every evaluation reports, by name.
EVALUATION_METRICS: dict[str, Direction] = {
    "miou": "max",  # target-val mIoU: the oracle papers report (it needs target labels)
    "miou16": "max",
    "miou13": "max",
    "source_val_miou": "max",  # label-free w.r.t. the target: a selection proxy
    "target_entropy": "min",  # label-free: mean prediction entropy on target val
    "best_miou": "max",
}

# The one table of directions: the evaluation's own metrics and the label-free validators
# (``val/*``, road_ray/engine/validators.py; docs/validators.md).
METRIC_DIRECTIONS: dict[str, Direction] = {**EVALUATION_METRICS, **VALIDATORS}

# Families of metrics, by prefix: per-class IoU (higher is better) and loss terms (lower).
PREFIX_DIRECTIONS: dict[str, Direction] = {"iou/": "max", "loss/": "min"}

# The metrics that need no target labels, shown beside the oracle to select a trial by. The
# target-val entropy is kept for comparison with earlier sweeps; val/entropy is its counterpart
# on target-train images, which a user without target labels can compute on their own domain.
LABEL_FREE_PROXIES: tuple[str, ...] = (
    "source_val_miou",
    "target_entropy",
    *(k for k in VALIDATORS if k != "source_val_miou"),
)

# What `tune.py --select` (no value) optimises: the label-free criterion with the smallest
# worst-case regret in the MiniCity measurement (tied with its inter-class half over 73 trials),
# though far from reliable there (docs/results/minicity.md, "Selecting without target labels").
DEFAULT_SELECT = "val/mixval"


def metric_direction(metric: str) -> Direction | None:
    """Whether ``metric`` is better higher ("max") or lower ("min"); None for a metric no trial reports."""
    if metric in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[metric]
    return next((d for prefix, d in PREFIX_DIRECTIONS.items() if metric.startswith(prefix)), None)


def natural_mode(metric: str) -> Direction:
    """The direction of ``metric``; "max" for a metric the table does not know (e.g. a custom one
    found in an old experiment): most reported numbers are scores."""
    return metric_direction(metric) or "max"


def is_reported(metric: str) -> bool:
    return metric_direction(metric) is not None
