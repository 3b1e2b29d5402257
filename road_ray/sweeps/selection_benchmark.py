"""How well each label-free criterion selects, measured over several experiments (no Ray here).

For every trial of every experiment (a study, default sweeps of different seeds) the trial's
last evaluation gives the oracle (target-val mIoU) and each criterion's value — the values a
sweep ranks by. Per criterion:

- **Spearman's ρ** between the criterion (signed so that higher is better) and the oracle mIoU,
  over all trials pooled and within each experiment;
- the **regret** of picking by it: the oracle mIoU of the oracle's pick minus that of the
  criterion's pick, among all trials of one experiment and among its ROAD trials (``road.mode:
  road``: what a λ sweep chooses between).

Candidates are the trials a user without target labels could have trained: not ``oracle`` runs
(they train on target labels), not diverged or unfinished ones. The criteria and their
directions are :mod:`road_ray.sweeps.metrics`; the validators are docs/validators.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from road_ray.sweeps.metrics import natural_mode
from road_ray.sweeps.results import Experiment, Trial, number
from road_ray.sweeps.trial import trial_config

EXCLUDED_MODES = ("oracle",)  # trained on target labels: no label-free user has one to choose


@dataclass(frozen=True)
class ScoredTrial:
    """One trial's last evaluation: the oracle mIoU and every criterion's value."""

    experiment: str
    trial_id: str
    mode: str
    miou: float
    values: dict[str, float]


def trial_mode(exp: Experiment, trial: Trial) -> str:
    """``road.mode`` of a trial, from its config as the trial built it (:func:`trial_config`)."""
    space = exp.record.get("space") or {}
    return trial_config(exp.record.get("base_config") or {}, trial.params, space.get("points")).road.mode


def scored_trials(
    exp: Experiment, name: str, criteria: tuple[str, ...], oracle: dict[str, float] | None = None
) -> list[ScoredTrial]:
    """The candidate trials of one experiment (see the module docstring), at their last evaluation.

    ``oracle``: trial id -> target-val mIoU scored after the fact (``road-ray eval --each-trial``),
    for a sweep that ran without target labels (``tune.py --select --set data.target_val=none``):
    its reports carry the validators but no mIoU.
    """
    out = []
    for t in exp.trials:
        mode = trial_mode(exp, t)
        if t.state in ("diverged", "error", "unfinished", "not started") or mode in EXCLUDED_MODES:
            continue
        if oracle is None:
            row, miou = t.last_evaluation(), None
            miou = None if row is None else number(row.get("miou"))
        else:
            row, miou = t.last, oracle.get(t.trial_id)
        if row is None or miou is None:
            continue
        values = {c: v for c in criteria if (v := number(row.get(c))) is not None and math.isfinite(v)}
        out.append(ScoredTrial(name, t.trial_id, mode, float(miou), values))
    return out


def ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank (what Spearman's ρ needs)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's correlation of the ranks; None below 3 pairs or
    when either side is constant."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def pick(trials: list[ScoredTrial], criterion: str) -> ScoredTrial | None:
    """The trial the criterion selects (its best final value); None when no trial reports it."""
    usable = [t for t in trials if criterion in t.values]
    if not usable:
        return None
    sign = 1 if natural_mode(criterion) == "max" else -1
    return max(usable, key=lambda t: sign * t.values[criterion])


def regret(trials: list[ScoredTrial], criterion: str) -> float | None:
    """Oracle mIoU of the oracle's pick minus that of the criterion's pick (0: the same trial or as good)."""
    chosen = pick(trials, criterion)
    return None if chosen is None else max(t.miou for t in trials) - chosen.miou


def measure(experiments: dict[str, list[ScoredTrial]], criteria: tuple[str, ...]) -> dict[str, Any]:
    """Per criterion: pooled and per-experiment Spearman, regret among all and among ROAD trials."""
    pooled = [t for ts in experiments.values() for t in ts]
    out: dict[str, Any] = {"trials": len(pooled), "experiments": {}, "criteria": {}}
    for name, ts in experiments.items():
        road = [t for t in ts if t.mode == "road"]
        out["experiments"][name] = {
            "trials": len(ts),
            "road_trials": len(road),
            "oracle_pick_miou": max((t.miou for t in ts), default=None),
            "oracle_pick_miou_road": max((t.miou for t in road), default=None),
        }
    for c in criteria:
        sign = 1 if natural_mode(c) == "max" else -1
        have = [t for t in pooled if c in t.values]
        per: dict[str, Any] = {}
        for name, ts in experiments.items():
            usable = [t for t in ts if c in t.values]
            road = [t for t in usable if t.mode == "road"]
            per[name] = {
                "spearman": spearman([sign * t.values[c] for t in usable], [t.miou for t in usable]),
                "regret_all": regret(usable, c),
                "regret_road": regret(road, c) if road else None,
                "pick_all": _pick_id(usable, c),
                "pick_road": _pick_id(road, c),
            }
        regrets = [v for p in per.values() for k in ("regret_all", "regret_road") if (v := p[k]) is not None]
        out["criteria"][c] = {
            "direction": natural_mode(c),
            "trials": len(have),
            "spearman": spearman([sign * t.values[c] for t in have], [t.miou for t in have]),
            "worst_regret": max(regrets) if regrets else None,
            "experiments": per,
        }
    return out


def ranking(result: dict[str, Any]) -> list[str]:
    """Criteria from the best selector to the worst: smallest worst-case regret, then highest ρ."""

    def key(c: str) -> tuple[float, float]:
        r = result["criteria"][c]
        worst = r["worst_regret"] if r["worst_regret"] is not None else math.inf
        rho = r["spearman"] if r["spearman"] is not None else -math.inf
        return (worst, -rho)

    return sorted(result["criteria"], key=key)


def meets_goal(r: dict[str, Any], regret_limit: float = 1.0, rho_min: float = 0.7) -> bool:
    """The issue's goal: within ``regret_limit`` of the oracle's pick in every measured experiment
    (among all and among ROAD trials) and Spearman ≥ ``rho_min`` over all trials."""
    return (
        r["worst_regret"] is not None
        and r["worst_regret"] <= regret_limit
        and r["spearman"] is not None
        and r["spearman"] >= rho_min
    )


def _pick_id(trials: list[ScoredTrial], criterion: str) -> str | None:
    chosen = pick(trials, criterion)
    return None if chosen is None else chosen.trial_id
