"""``road-ray report``: a sweep as a Markdown table and PNG plots (no Ray here).

Written to ``OUT`` (default ``EXPERIMENT/report``): ``report.md`` (the table of trials, the
best trial and its checkpoint, the paper's point against the best, what the label-free
proxies would have selected), ``trials.csv`` and ``trials.json``, and the plots a person would rather look at
than read: mIoU vs λ1 and vs λ2 (log x), mIoU per partition grid, per teacher layer, and
the parameters' importance (Optuna's evaluator, from >= 3 complete trials).

Every plot shows the oracle target-val mIoU each trial reported last (what Optuna saw);
trials ASHA stopped early are drawn hollow, since they were scored after fewer iterations.
A *study* (named fixed points over seeds, ``points:`` in the space) is written in the paper's
form instead: see :mod:`road_ray.sweeps.study`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from road_ray import jsonio
from road_ray.storage import is_uri  # noqa: E402
from road_ray.sweeps.results import (  # noqa: E402
    TRAIN_RUNS,
    Experiment,
    ExperimentError,
    column_title,
    display_path,
    format_table,
    format_value,
    number,
    read_experiment,
    selected_trial,
)
from road_ray.sweeps.selection import selection_markdown  # noqa: E402
from road_ray.sweeps.study import is_study, merge_studies, runs_time, wall_time, write_study  # noqa: E402

MIN_TRIALS_FOR_IMPORTANCE = 3
SCATTER_KEYS = ("road.lambda_dist", "road.lambda_spt")  # log-scaled x
CATEGORY_KEYS = ("road.grid", "model.teacher_layer")
COMPLETE, STOPPED = "complete", "stopped early (ASHA)"


def write_report(experiment_dir: str | Path | list[str | Path], out_dir: str | Path | None = None, log=print) -> Path:
    """Write report.md, trials.csv and the PNG plots; returns the report's folder.

    Several experiment folders: a study and experiments that add seeds to its points, read as
    one study (:func:`road_ray.sweeps.study.merge_studies`).
    """
    dirs = experiment_dir if isinstance(experiment_dir, list) else [experiment_dir]
    exp = read_experiment(dirs[0]) if len(dirs) == 1 else merge_studies([read_experiment(d) for d in dirs])
    # Beside a local experiment; for one on object storage, in the current folder.
    out = Path(out_dir) if out_dir else (Path(f"{exp.name}-report") if is_uri(exp.uri) else exp.path / "report")
    out.mkdir(parents=True, exist_ok=True)
    rows = exp.table()
    # Checkpoints as paths inside the experiment (train_runs/...): the files travel with reports.
    portable = [{**r, "checkpoint": _in_experiment(r.get("checkpoint"))} for r in rows]
    _write_csv(exp, portable, out / "trials.csv")
    (out / "trials.json").write_text(jsonio.dumps(portable, indent=2, default=str))  # the raw numbers

    plots: list[tuple[str, str]] = []  # (file, caption)
    notes: list[str] = []
    if is_study(exp):
        # Fixed points over seeds: the paper's tables and bar charts, not an Optuna analysis.
        sections, plots = write_study(exp, out)
        (out / "report.md").write_text(_markdown(exp, [], [], sections))
        log(f"[report] wrote {out / 'report.md'} (study: {len(plots)} figures, study.json)")
        return out
    scored = [r for r in rows if number(r.get("miou")) is not None]
    if any(len(t.rows) > 1 for t in exp.trials):
        plots.append((_curves(exp, out), f"every trial's evaluations over its iterations ({exp.metric} and mIoU)"))
    for key in SCATTER_KEYS:
        if _varies(scored, key):
            plots.append((_scatter(scored, key, out), f"mIoU (oracle) vs {column_title(key)}"))
        elif key in exp.searched_keys:
            notes.append(f"{column_title(key)}: fewer than two scored values; no plot.")
    for key in CATEGORY_KEYS:
        if _varies(scored, key):
            plots.append((_per_category(scored, key, out), f"mIoU (oracle) per {column_title(key)}"))
        elif key in exp.searched_keys:
            notes.append(f"{column_title(key)}: fewer than two scored values; no plot.")
    importance, note = parameter_importance(exp)
    if importance:
        plots.append(
            (_importance_plot(importance, note, exp.metric, out), f"parameter importance for {exp.metric} ({note})")
        )
    else:
        notes.append(f"Parameter importance: {note}")

    (out / "report.md").write_text(_markdown(exp, plots, notes, selection_markdown(exp)))
    log(f"[report] wrote {out / 'report.md'} with {len(plots)} plots")
    return out


# ---------------------------------------------------------------------------------------
# Markdown and CSV


def _markdown(exp: Experiment, plots: list[tuple[str, str]], notes: list[str], sections: list[str]) -> str:
    lines = [f"# Sweep {exp.name}", ""]
    space = exp.record.get("space_file")
    if space:
        lines += [f"Search space: `{display_path(space)}`; metric `{exp.metric}` ({exp.mode}).", ""]
    lines += _provenance(exp)
    lines += [
        "mIoU (oracle) is the target-val mIoU: it needs target labels, and is what papers report. "
        "Source-val mIoU and target entropy (lower = more confident) need none: a user without target "
        "labels selects by them. Values are the last each trial reported; *best* is its best evaluation.",
        "",
        format_table(exp, markdown=True),
        "",
    ]
    try:
        if is_study(exp):
            raise ExperimentError("a study compares fixed points: no best trial")  # its sections say it all
        trial, checkpoint = selected_trial(exp)
        params = ", ".join(f"{column_title(k)} = {format_value(trial.params.get(k))}" for k in exp.searched_keys)
        lines += [
            f"**Best trial:** `{trial.trial_id}` — final {exp.metric} "
            f"{format_value(trial.value(exp.metric), exp.metric)} at iteration {trial.iter} ({params})."
        ]
        lines += [
            "",
            f"**Selected checkpoint** (the final one of the trial whose final {exp.metric} is best): "
            f"`{display_path(checkpoint)}`",
            "",
            f"Evaluate it: `road-ray eval --experiment {display_path(exp.uri or exp.path)} --best` "
            "(`--by CRITERION` for another criterion; `--by miou-over-time` is test-set selection)",
        ]
    except ExperimentError as e:
        lines += [] if is_study(exp) else [f"No best trial: {e}"]
    lines.append("")
    lines += sections
    for file, caption in plots:
        lines += [f"## {caption}", "", f"![{caption}]({file})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _provenance(exp: Experiment) -> list[str]:
    """When, how long, on what, from which code: what a published result must say."""
    m = exp.record.get("machine") or {}
    seconds = wall_time(exp)
    parts = []
    if exp.record.get("created"):
        parts.append(f"started {exp.record['created']}")
    if seconds is not None:
        how = (
            f"summed over its {len(exp.record['parts'])} experiments"
            if exp.record.get("parts")
            else "start to last report"
        )
        busy = runs_time(exp)
        busy_text = f"; trials running {busy / 60:.1f} min" if busy is not None else ""
        parts.append(f"wall time {seconds / 60:.1f} min ({how}{busy_text})")
    if m:
        gpus = int(m.get("cluster_gpus") or 0)
        parts.append(
            f"on {int(m.get('cluster_cpus') or 0)} CPUs"
            + (f" and {gpus} GPUs" if gpus else ", no GPU")
            + f" ({m.get('driver_platform')}), torch {m.get('torch')}, ray {m.get('ray')}, "
            f"road-ray commit {m.get('commit') or 'unknown'}, MiniCity v{m.get('minicity_version')}"
        )
    return [("Run: " + "; ".join(parts) + "."), ""] if parts else []


def _write_csv(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> None:
    cols = list(dict.fromkeys([*rows[0].keys()] if rows else ["trial"]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------
# Plots


def _scatter(rows: list[dict[str, Any]], key: str, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for stopped, label, style in (
        (False, "trials", {"color": "C0"}),
        (True, "stopped early by ASHA", {"facecolors": "none", "edgecolors": "C0"}),
    ):
        pts = [(r[key], r["miou"]) for r in rows if (r["state"] == STOPPED) == stopped]
        pts = [(x, y) for x, y in pts if number(x) is not None and x > 0]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=60, label=label, zorder=3, **style)
    best = max(rows, key=lambda r: r["miou"])
    if number(best.get(key)) is not None and best[key] > 0:
        ax.annotate(
            f"best {best['miou']:.1f}", (best[key], best["miou"]), textcoords="offset points", xytext=(6, 6), fontsize=9
        )
    if key == "road.lambda_dist":
        ax.axvline(0.1, color="grey", linestyle=":", linewidth=1, label="paper λ1 = 0.1")
    if key == "road.lambda_spt":
        ax.axvline(0.01, color="grey", linestyle=":", linewidth=1, label="paper λ2 = 0.01")
    ys = [r["miou"] for r in rows]
    pad = max(1.0, 0.1 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_xscale("log")
    ax.set_xlabel(column_title(key) + " (log scale)")
    ax.set_ylabel("target-val mIoU, % (oracle)")
    ax.set_title(f"mIoU vs {column_title(key)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out, f"miou_vs_{key.split('.')[-1]}.png")


def _curves(exp: Experiment, out: Path) -> str:
    """The sweep's metric (and the oracle mIoU beside it) at every evaluation of every trial: the
    picture that chooses a run length or a learning rate."""
    metrics = [exp.metric] + (["miou"] if exp.metric != "miou" else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), dpi=120, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for trial in exp.trials:
            pts = [(r["iter"], number(r.get(metric))) for r in trial.rows if number(r.get(metric)) is not None]
            if pts:
                label = ", ".join(
                    f"{column_title(k)} {format_value(trial.params.get(k), k)}" for k in exp.searched_keys
                )
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label or trial.trial_id
                )
        ax.set_xlabel("iteration")
        ax.set_ylabel(column_title(metric))
        ax.set_title(f"{column_title(metric)} over training")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out, "curves.png")


def _per_category(rows: list[dict[str, Any]], key: str, out: Path) -> str:
    values = sorted({str(r[key]) for r in rows if r.get(key) is not None}, key=_category_order)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    means = []
    for i, v in enumerate(values):
        group = [r for r in rows if str(r.get(key)) == v]
        ys = [r["miou"] for r in group]
        means.append(sum(ys) / len(ys))
        jitter = [i + 0.08 * (j - (len(ys) - 1) / 2) for j in range(len(ys))]
        hollow = [r["state"] == STOPPED for r in group]
        ax.scatter(
            [x for x, h in zip(jitter, hollow) if not h],
            [y for y, h in zip(ys, hollow) if not h],
            s=50,
            color="C0",
            zorder=3,
        )
        ax.scatter(
            [x for x, h in zip(jitter, hollow) if h],
            [y for y, h in zip(ys, hollow) if h],
            s=50,
            facecolors="none",
            edgecolors="C0",
            zorder=3,
        )
    ax.hlines(
        means,
        [i - 0.3 for i in range(len(values))],
        [i + 0.3 for i in range(len(values))],
        colors="C1",
        linewidth=2,
        label="mean of the trials",
    )
    ax.set_xticks(range(len(values)), [f"{v}\n(n={sum(str(r.get(key)) == v for r in rows)})" for v in values])
    ax.set_xlabel(column_title(key))
    ax.set_ylabel("target-val mIoU, % (oracle)")
    ax.set_title(f"mIoU per {column_title(key)}\n(dots: trials; hollow: stopped early by ASHA)", fontsize=11)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    lo = min(r["miou"] for r in rows)
    hi = max(r["miou"] for r in rows)
    pad = max(1.0, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out, f"miou_per_{key.split('.')[-1]}.png")


def _importance_plot(importance: dict[str, float], note: str, metric: str, out: Path) -> str:
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5), dpi=120)
    ax.barh([column_title(n) for n in names], [importance[n] for n in names], color="C1")
    for i, n in enumerate(names):
        ax.text(importance[n], i, f" {importance[n]:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, max(importance.values()) * 1.15))
    ax.set_xlabel(f"importance (sums to 1)\n{note}", fontsize=9)
    ax.set_title(f"Parameter importance for {metric}", fontsize=11)
    return _save(fig, out, "param_importance.png")


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


# ---------------------------------------------------------------------------------------
# Parameter importance


def parameter_importance(exp: Experiment) -> tuple[dict[str, float], str]:
    """Optuna's importance of each searched parameter for the sweep's metric.

    Built from the table (complete and early-stopped trials with a value, as Optuna saw
    them). fANOVA when scikit-learn is installed, else PED-ANOVA (no extra dependency).
    Returns ({}, reason) when it cannot be computed.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    rows = [r for r in exp.table() if r["state"] in (COMPLETE, STOPPED) and number(r.get(exp.metric)) is not None]
    keys = [k for k in exp.searched_keys if len({repr(r.get(k)) for r in rows}) > 1]
    if len(rows) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials, the sweep has {len(rows)}; skipped."
    if not keys:
        return {}, "no searched parameter took two different values; skipped."
    distributions: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lo, hi = min(values), max(values)
            log = lo > 0 and hi / lo > 10
            distributions[k] = FloatDistribution(float(lo), float(hi), log=log)
        else:
            distributions[k] = CategoricalDistribution(sorted({str(v) for v in values}, key=_category_order))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if exp.mode == "max" else "minimize")
    for r in rows:
        params = {k: (float(r[k]) if isinstance(distributions[k], FloatDistribution) else str(r[k])) for k in keys}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=float(r[exp.metric]))
        )
    try:
        import sklearn  # noqa: F401

        evaluator, name = FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        # PED-ANOVA compares the top quantile of trials with all; small sweeps need a wide one.
        quantile = 0.5 if len(rows) < 20 else 0.1
        evaluator, name = PedAnovaImportanceEvaluator(target_quantile=quantile), f"PED-ANOVA, top {quantile:.0%}"
    try:
        importance = get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as e:
        return {}, f"Optuna could not compute it ({e}); skipped."
    importance = {k: float(v) for k, v in importance.items() if math.isfinite(v)}
    return importance, f"optuna {name}, {len(rows)} trials; indicative only with few trials"


# ---------------------------------------------------------------------------------------


def _in_experiment(checkpoint: str | None) -> str | None:
    marker = f"/{TRAIN_RUNS}/"
    if checkpoint and marker in checkpoint:
        return TRAIN_RUNS + "/" + checkpoint.split(marker, 1)[1]
    return checkpoint


def _varies(rows: list[dict[str, Any]], key: str) -> bool:
    return len({repr(r.get(key)) for r in rows if r.get(key) is not None}) > 1


def _category_order(v: str) -> tuple:
    """Grids by area (1x1 < 2x1 < 2x2 < 3x3), names naturally (layer2 < layer10)."""
    import re

    m = re.fullmatch(r"(\d+)x(\d+)", v)
    if m:
        return (0, int(m.group(1)) * int(m.group(2)), v)
    parts = re.split(r"(\d+)", v)
    return (1, tuple(int(p) if p.isdigit() else p for p in parts), v)
