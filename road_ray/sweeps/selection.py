"""Model selection without target labels, and the paper's point against the sweep's best.

A user adapting to an unlabelled domain cannot select a trial by target-val mIoU (the
oracle). :func:`proxy_agreement` asks whether the label-free proxies (source-val mIoU,
higher is better; target prediction entropy, lower is better) pick the trial the oracle
picks, and what the pick costs in oracle mIoU. :func:`paper_point` compares the sweep's
first ``points_to_evaluate`` entry (the paper's λ1, λ2, grid: Eq. 5) with its best trial.
Both read each trial's last evaluation: the values Optuna and ASHA saw. No Ray here.
"""

from __future__ import annotations

import math
from typing import Any

from road_ray.sweeps.metrics import LABEL_FREE_PROXIES, METRIC_DIRECTIONS
from road_ray.sweeps.results import Experiment, Trial, number

PROXIES = {proxy: METRIC_DIRECTIONS[proxy] for proxy in LABEL_FREE_PROXIES}  # name -> "max"/"min"


def scored_trials(exp: Experiment, complete_only: bool = False) -> list[tuple[Trial, dict[str, Any]]]:
    return [
        (t, row)
        for t in exp.trials
        if t.state != "diverged"
        and (row := t.last_evaluation()) is not None
        and (t.state == "complete" or not complete_only)
    ]


def proxy_agreement(exp: Experiment, complete_only: bool = False) -> dict[str, Any]:
    """Which trial each criterion picks; the oracle mIoU of the pick, its oracle rank and regret.

    ``complete_only``: among the trials that ran to the end (proxies such as the entropy are
    only comparable at the same iteration: a less trained model can be less confident or more).
    """
    trials = scored_trials(exp, complete_only)
    if not trials:
        return {"trials": 0}
    ranked = sorted(trials, key=lambda tr: -tr[1]["miou"])
    rank = {t.trial_id: i + 1 for i, (t, _) in enumerate(ranked)}
    best_trial, best_row = ranked[0]
    out: dict[str, Any] = {"trials": len(trials), "oracle": {"trial": best_trial.trial_id, "miou": best_row["miou"]}}
    for proxy, mode in PROXIES.items():
        usable = [(t, r) for t, r in trials if number(r.get(proxy)) is not None]
        if not usable:
            out[proxy] = None
            continue
        sign = 1 if mode == "max" else -1
        t, r = max(usable, key=lambda tr: sign * tr[1][proxy])
        out[proxy] = {
            "trial": t.trial_id,
            "value": r[proxy],
            "miou": r["miou"],
            "oracle_rank": rank[t.trial_id],
            "same_as_oracle": t.trial_id == best_trial.trial_id,
            "regret": best_row["miou"] - r["miou"],
        }
    return out


def paper_point(exp: Experiment) -> dict[str, Any] | None:
    """The trial of the sweep's first ``points_to_evaluate`` entry vs the best trial (last evaluations)."""
    points = (exp.record.get("space") or {}).get("points_to_evaluate") or []
    if not points:
        return None
    wanted = points[0]
    trials = scored_trials(exp)
    match = [(t, r) for t, r in trials if all(_same(t.params.get(k), v) for k, v in wanted.items())]
    if not match or not trials:
        return None
    t, r = match[0]
    best_t, best_r = max(trials, key=lambda tr: tr[1]["miou"])
    return {
        "point": wanted,
        "trial": t.trial_id,
        "miou": r["miou"],
        "iter": r.get("iter"),
        "state": t.state,
        "best_trial": best_t.trial_id,
        "best_miou": best_r["miou"],
        "best_iter": best_r.get("iter"),
        "best_params": {k: best_t.params.get(k) for k in exp.searched_keys},
        "gain": best_r["miou"] - r["miou"],
    }


def selection_markdown(exp: Experiment) -> list[str]:
    """The report's section: the paper's point vs the best, and the proxies vs the oracle."""
    lines: list[str] = []
    pp = paper_point(exp)
    if pp is not None:
        point = ", ".join(f"{k} = {v}" for k, v in pp["point"].items())
        lines += [
            "## The paper's point vs the sweep's best",
            "",
            f"- First point evaluated ({point}): trial `{pp['trial']}`, mIoU (oracle) **{pp['miou']:.2f}** "
            f"at iteration {pp['iter']} ({pp['state']}).",
            f"- Best trial `{pp['best_trial']}` ({_params(pp['best_params'])}): **{pp['best_miou']:.2f}** at "
            f"iteration {pp['best_iter']}: {pp['gain']:+.2f} points over the paper's point.",
            "",
        ]
    header = False
    for complete_only, among in (
        (False, "all trials, each at its last evaluation"),
        (True, "the trials that ran to the end"),
    ):
        pa = proxy_agreement(exp, complete_only)
        if not pa.get("trials"):
            continue
        if not header:
            lines += [
                "## Selecting without target labels",
                "",
                "Which trial each label-free criterion would pick, against the oracle's pick.",
                "",
            ]
            header = True
        lines += [
            f"Among {among} ({pa['trials']}): the oracle picks `{pa['oracle']['trial']}` "
            f"(mIoU {pa['oracle']['miou']:.2f}).",
            "",
            "| criterion | picks | its mIoU (oracle) | oracle rank | same trial as the oracle | mIoU lost |",
            "|---|---|---|---|---|---|",
        ]
        for proxy, mode in PROXIES.items():
            p = pa.get(proxy)
            if p is None:
                continue
            title = f"{proxy} ({'highest' if mode == 'max' else 'lowest'})"
            lines.append(
                f"| {title} | `{p['trial']}` | {p['miou']:.2f} | {p['oracle_rank']} of {pa['trials']} | "
                f"{'yes' if p['same_as_oracle'] else 'no'} | {p['regret']:.2f} |"
            )
        lines.append("")
    return lines


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b
