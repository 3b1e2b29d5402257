"""``road-ray selection``: the selection measurement as a page — a table and a scatter plot per
criterion (:mod:`road_ray.sweeps.selection_benchmark` computes it; no Ray here)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from road_ray import jsonio  # noqa: E402
from road_ray.sweeps.metrics import LABEL_FREE_PROXIES  # noqa: E402
from road_ray.sweeps.results import ExperimentError, display_path, read_experiment  # noqa: E402
from road_ray.sweeps.selection_benchmark import (  # noqa: E402
    ScoredTrial,
    measure,
    meets_goal,
    ranking,
    scored_trials,
)

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # the experiments' short names in the table's columns
MARKERS = {"road": "o", "nonadapt": "s"}  # every other mode: "^"


def write_selection_report(
    experiment_dirs: list[str], out_dir: str | Path, scored_by_eval: list[str] | None = None, log=print
) -> Path:
    """Measure every label-free criterion over the experiments; write selection.md, .json, PNGs.

    ``scored_by_eval``: JSON files of ``road-ray eval --experiment DIR --each-trial``, each a sweep
    that ran without target labels, its trials' mIoU scored after the fact.
    """
    inputs = [(d, None) for d in experiment_dirs] + [_each_trial_scores(f) for f in scored_by_eval or []]
    if not inputs:
        raise ValueError("road-ray selection: give at least one --experiment DIR or --scored-by-eval FILE")
    if len(inputs) > len(LABELS):
        raise ValueError(f"road-ray selection: at most {len(LABELS)} experiments, got {len(inputs)}")
    criteria = LABEL_FREE_PROXIES  # every label-free criterion trials report
    experiments: dict[str, list[ScoredTrial]] = {}
    sources = {}
    for d, oracle in inputs:
        exp = read_experiment(d)
        name = Path(str(exp.uri or exp.path).rstrip("/")).name
        if name in experiments:
            raise ValueError(f"{d}: two experiments named {name!r}; their folder names must differ")
        experiments[name] = scored_trials(exp, name, criteria, oracle)
        sources[name] = display_path(exp.uri or exp.path) + ("" if oracle is None else ", mIoU by eval --each-trial")
        if not experiments[name]:
            raise ExperimentError(f"{d}: no finished trial with an evaluation to measure selection on")
    result = measure(experiments, criteria)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [_scatter(experiments, c, result, out) for c in criteria if result["criteria"][c]["trials"]]
    result["sources"] = sources
    result["ranking"] = ranking(result)
    (out / "selection.json").write_text(jsonio.dumps(result, indent=2))
    (out / "selection.md").write_text(_markdown(result, plots))
    log(f"wrote {out / 'selection.md'} ({result['trials']} trials, {len(experiments)} experiments)")
    return out


def _each_trial_scores(path: str) -> tuple[str, dict[str, float]]:
    """(experiment folder, trial id -> mIoU) from a ``road-ray eval --each-trial`` JSON file."""
    try:
        data = json.loads(Path(path).read_text())
        return str(data["experiment"]), {str(r["trial"]): float(r["miou"]) for r in data["trials"]}
    except FileNotFoundError:
        raise FileNotFoundError(f"--scored-by-eval {path}: no such file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"--scored-by-eval {path}: expected the JSON of road-ray eval --each-trial "
            f"(experiment, trials[].trial, trials[].miou): {e}"
        ) from None


def _markdown(result: dict[str, Any], plots: list[str]) -> str:
    names = list(result["experiments"])
    lines = [
        "# Selecting without target labels: each criterion against the oracle",
        "",
        f"{result['trials']} trials from {len(names)} experiments, each at its last evaluation (oracle runs "
        "excluded: they train on target labels). ρ: Spearman's rank correlation with the oracle target-val "
        "mIoU. Regret: oracle mIoU of the oracle's pick minus that of the criterion's pick, among all trials of "
        "an experiment and among its ROAD trials. Goal: regret ≤ 1 in every experiment and ρ ≥ 0.7 over all.",
        "",
        "| | experiment | source | trials | ROAD trials | oracle's pick, all | oracle's pick, ROAD |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, n in zip(LABELS, names):
        e = result["experiments"][n]
        lines.append(
            f"| {label} | {n} | {_source(result['sources'][n])} | {e['trials']} | {e['road_trials']} | "
            f"{_f(e['oracle_pick_miou'])} | {_f(e['oracle_pick_miou_road'])} |"
        )
    per_exp = " / ".join(LABELS[: len(names)])
    lines += [
        "",
        f"Per-experiment columns list {per_exp}, in that order. Criteria from the best selector "
        "(smallest worst-case regret) to the worst.",
        "",
        f"| criterion | better | ρ, all trials | ρ ({per_exp}) | regret, all ({per_exp}) | "
        f"regret, ROAD ({per_exp}) | worst regret | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["ranking"]:
        r = result["criteria"][c]
        per = r["experiments"]
        lines.append(
            f"| `{c}` | {'higher' if r['direction'] == 'max' else 'lower'} | {_f(r['spearman'])} | "
            + " | ".join(" / ".join(_f(per[n][k]) for n in names) for k in ("spearman", "regret_all", "regret_road"))
            + f" | {_f(r['worst_regret'])} | {'met' if meets_goal(r) else 'missed'} |"
        )
    lines += ["", "## Scatter plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _scatter(experiments: dict[str, list[ScoredTrial]], criterion: str, result: dict[str, Any], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
    for i, (name, ts) in enumerate(experiments.items()):
        for mode in sorted({t.mode for t in ts}):
            pts = [(t.values[criterion], t.miou) for t in ts if t.mode == mode and criterion in t.values]
            if pts:
                ax.scatter(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    s=28,
                    color=f"C{i}",
                    marker=MARKERS.get(mode, "^"),
                    alpha=0.8,
                    label=f"{name}: {mode}",
                )
    r = result["criteria"][criterion]
    better = "higher" if r["direction"] == "max" else "lower"
    ax.set_xlabel(f"{criterion} ({better} is better)")
    ax.set_ylabel("target-val mIoU, % (oracle)")
    ax.set_title(f"{criterion}: ρ = {_f(r['spearman'])}, worst regret {_f(r['worst_regret'])}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    name = f"selection_{criterion.replace('/', '_')}.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _source(text: str) -> str:
    path, _, note = text.partition(", ")
    return f"`{path}`" + (f" ({note})" if note else "")


def _f(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
