"""What a sweep found: the best trial and checkpoint, and the table of trials (no Ray here).

Selection: ``miou`` is the target-val mIoU — the *oracle* papers report, since it needs
target labels. ``source_val_miou`` and ``target_entropy`` (lower is better) need none, and
are shown beside it so a user without target labels can select by them. Which direction
is better for each metric is :mod:`road_ray.sweeps.metrics`. The experiment folder is read by
:mod:`road_ray.sweeps.experiment`, whose names are re-exported here: callers read and select
through one module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from road_ray.storage import is_uri, scheme, with_scheme
from road_ray.sweeps.experiment import (
    SWEEP_RECORD,
    TRAIN_RUNS,
    Experiment,
    ExperimentError,
    Trial,
    number,
    read_experiment,
)
from road_ray.sweeps.metrics import LABEL_FREE_PROXIES, is_reported, natural_mode

# What --by / --select accept by name (any reported metric works): the oracle, the label-free ones.
# ``miou-over-time``: the best target-val mIoU of any evaluation of any trial; it selects on the
# test labels (target val), so it is labelled test-set selection.
OVER_TIME = "miou-over-time"
CRITERIA: tuple[str, ...] = ("miou", *LABEL_FREE_PROXIES, OVER_TIME)

__all__ = [
    "SWEEP_RECORD",
    "TRAIN_RUNS",
    "Experiment",
    "ExperimentError",
    "Trial",
    "number",
    "read_experiment",
    "best_checkpoint",
    "final_checkpoints",
    "select_checkpoint",
    "selected_trial",
    "locate_checkpoint",
    "display_path",
    "column_title",
    "format_value",
    "table_columns",
    "format_table",
    "sort_rows",
]

# What the table shows beside the searched parameters, and how each column is titled.
METRIC_COLUMNS = {
    "miou": "mIoU (oracle)",
    "best_miou": "best mIoU (oracle)",
    "source_val_miou": "source-val mIoU",
    "target_entropy": "target entropy",
}
# Short titles for the usual searched keys.
PARAM_TITLES = {
    "road.lambda_dist": "λ1 (lambda_dist)",
    "road.lambda_spt": "λ2 (lambda_spt)",
    "road.grid": "grid",
    "model.teacher_layer": "teacher layer",
    "road.mode": "mode",
    "point": "point",
    "run.seed": "seed",
}


# ---------------------------------------------------------------------------------------
# Selection


def select_checkpoint(experiment_dir: str | Path, by: str | None = None) -> str:
    """The checkpoint a sweep selects ``by`` a criterion (default: the sweep's own metric).

    A criterion is a reported metric (``miou``, ``source_val_miou``, a ``val/*`` validator, ...):
    the trial whose *final* report is best by it, and that trial's final checkpoint — what a user
    without target labels can choose (:func:`selected_trial`). ``miou-over-time`` is test-set
    selection: the best target-val mIoU over every evaluation of every trial (:func:`best_checkpoint`).
    """
    if by == OVER_TIME:
        return best_checkpoint(experiment_dir, metric="miou")
    return selected_trial(read_experiment(experiment_dir), by)[1]


def selected_trial(exp: Experiment, by: str | None = None) -> tuple[Trial, str]:
    """The trial whose final report is best ``by`` a criterion (default: the sweep's metric), among
    those with a final checkpoint left, and that checkpoint. The one rule behind ``eval --best``,
    the best trial ``tune.py`` prints and the report's selected checkpoint."""
    metric = by or exp.metric
    if not is_reported(metric):
        raise ExperimentError(f"--by {metric!r}: not a metric trials report; expected one of {', '.join(CRITERIA)}")
    mode = exp.mode if metric == exp.metric else natural_mode(metric)
    sign = 1 if mode == "max" else -1
    ranked = sorted(
        ((v, t) for t in exp.trials if (v := t.value(metric)) is not None), key=lambda vt: sign * vt[0], reverse=True
    )
    if not ranked:
        raise ExperimentError(f"{exp.uri or exp.path}: no trial reported {metric!r}; nothing to select")
    finals = {t.trial_id: c for t, c in final_checkpoints(exp)}
    for _, trial in ranked:
        if trial.trial_id in finals:
            return trial, finals[trial.trial_id]
    raise ExperimentError(f"{exp.uri or exp.path}: the trials ranked by {metric!r} have no checkpoint left")


def final_checkpoints(exp: Experiment) -> list[tuple[Trial, str]]:
    """Each trial's final checkpoint that still exists (a diverged trial's last one, if any)."""
    out = []
    for t in exp.trials:
        final = next((r["checkpoint_path"] for r in reversed(t.rows) if r.get("checkpoint_path")), None)
        found = final and locate_checkpoint(exp, final)
        if found:
            out.append((t, found))
    return out


def best_checkpoint(experiment_dir: str | Path, metric: str = "miou", mode: str | None = None) -> str:
    """The checkpoint of the report with the best ``metric`` (default: highest ``miou``) over all
    trials and all their evaluations (with ``miou``: test-set selection, ``OVER_TIME``).

    When no report carries ``miou`` (a sweep without target labels), the sweep's own metric
    (e.g. ``target_entropy``, lowest) is used. ``mode`` defaults to the metric's direction.
    Reports whose checkpoint is gone (Ray Train keeps only the best and the latest of each
    run) are passed over.
    """
    exp = read_experiment(experiment_dir)
    if metric == "miou" and not any(number(r.get("miou")) is not None for t in exp.trials for r in t.rows):
        metric = exp.metric
    mode = mode or (exp.mode if metric == exp.metric else natural_mode(metric))
    candidates = []
    for t in exp.trials:
        for r in t.rows:
            value = number(r.get(metric))
            if value is not None and r.get("checkpoint_path"):
                candidates.append((value if mode == "max" else -value, t, r))
    if not candidates:
        raise ExperimentError(
            f"{exp.uri or exp.path}: no report with both {metric!r} and a checkpoint; nothing to evaluate"
        )
    candidates.sort(key=lambda c: c[0], reverse=True)
    for _, _, r in candidates:
        found = locate_checkpoint(exp, r["checkpoint_path"])
        if found is not None:
            return found
    raise ExperimentError(
        f"{exp.uri or exp.path}: the best checkpoints ({candidates[0][2]['checkpoint_path']}, ...) no longer exist; "
        "was the experiment moved without its train_runs/ folder?"
    )


def locate_checkpoint(exp: Experiment, checkpoint_path: str) -> str | None:
    """The checkpoint folder, also when the experiment was moved (rebased onto train_runs/)."""
    storage = str(exp.record.get("train_storage", ""))
    if is_uri(storage) and not is_uri(checkpoint_path):
        # Ray reports a file-system path; give the URI its scheme back (s3://, gs://, file://).
        if scheme(storage) == "file":
            return checkpoint_path if Path(checkpoint_path).is_dir() else None
        return with_scheme(storage, checkpoint_path)
    if is_uri(checkpoint_path):
        return checkpoint_path
    if Path(checkpoint_path).is_dir():
        return checkpoint_path
    marker = f"/{TRAIN_RUNS}/"
    if marker in checkpoint_path:
        moved = exp.path / TRAIN_RUNS / checkpoint_path.split(marker, 1)[1]
        if moved.is_dir():
            return str(moved)
    return None


def display_path(path: str | Path) -> str:
    """A path as a shared report should show it: a shipped space as ``search_spaces/NAME.yaml``,
    the home folder as ``~`` (never this machine's absolute layout)."""
    text, home = str(path), str(Path.home())
    p = Path(text)
    if not is_uri(text) and p.parent.name == "search_spaces" and p.suffix == ".yaml":
        return f"search_spaces/{p.name}"
    if home != "/" and (text == home or text.startswith(home + "/")):
        return "~" + text[len(home) :]
    return text


# ---------------------------------------------------------------------------------------
# Formatting


def column_title(key: str) -> str:
    return METRIC_COLUMNS.get(key) or PARAM_TITLES.get(key) or key


def format_value(v: Any, key: str = "") -> str:
    """Metrics (percent) with 2 decimals, entropy with 3, searched values as short as exact."""
    if v is None:
        return "—"
    if isinstance(v, float):
        if key == "target_entropy" or key.startswith("loss/"):
            return f"{v:.3f}"
        if key in METRIC_COLUMNS or key.startswith(("miou", "iou/")):
            return f"{v:.2f}"
        return f"{v:.4g}"
    return str(v)


def table_columns(exp: Experiment) -> list[str]:
    cols = ["trial", *exp.searched_keys, "miou", "best_miou", "source_val_miou", "target_entropy"]
    if exp.metric not in cols:
        cols.append(exp.metric)
    return [*cols, "iter", "state"]


def format_table(exp: Experiment, markdown: bool = False) -> str:
    """The trials as an aligned text table (or Markdown), best first by the sweep's metric."""
    rows = sort_rows(exp, exp.table())
    cols = table_columns(exp)
    titles = [column_title(c) for c in cols]
    cells = [[format_value(r.get(c), c) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(titles) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(t), *(len(row[i]) for row in cells)) if cells else len(t) for i, t in enumerate(titles)]
    lines = ["  ".join(t.ljust(w) for t, w in zip(titles, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def sort_rows(exp: Experiment, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sign = -1 if exp.mode == "max" else 1

    def key(r: dict[str, Any]) -> tuple[int, float]:
        v = number(r.get("best"))
        return (1, 0.0) if v is None else (0, sign * v)

    return sorted(rows, key=key)
