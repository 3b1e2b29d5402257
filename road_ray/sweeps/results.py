"""Read a finished (or interrupted) Tune experiment folder into a table of trials (no Ray here).

Tune's layout (Ray 2.60): ``EXPERIMENT/experiment_state-*.json`` (each trial's status and
folder), and one folder per trial with ``params.json`` (its searched values, dotted config
keys) and ``result.json`` (one JSON object per report). In road-ray every report comes from
``ray.train.report`` in the Train workers through ``TuneReportCallback``: it carries the
metrics of DESIGN §3 and, when a checkpoint was written, ``checkpoint_path`` — a checkpoint
of the trial's Train run, kept under ``EXPERIMENT/train_runs/<run>/`` (see
``road_ray/on_ray/tune.py``). ``road_ray_sweep.json`` records the search space and the
base config the sweep ran with.

Selection: ``miou`` is the target-val mIoU — the *oracle* papers report, since it needs
target labels. ``source_val_miou`` and ``target_entropy`` (lower is better) need none, and
are shown beside it so a user without target labels can select by them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from road_ray.storage import is_uri, open_fs, scheme, with_scheme

SWEEP_RECORD = "road_ray_sweep.json"
TRAIN_RUNS = "train_runs"

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


class ExperimentError(ValueError):
    """An experiment folder that cannot be read, or holds nothing to select from."""


@dataclass
class Trial:
    trial_id: str
    dir: Path | None
    params: dict[str, Any]
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    max_iters: int | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    @property
    def iter(self) -> int | None:
        value = number(self.last.get("iter"))
        return None if value is None else int(value)

    @property
    def diverged(self) -> bool:
        return self.status == "ERROR" and bool(self.error) and "TrainingDiverged" in (self.error or "")

    @property
    def state(self) -> str:
        """What happened to the trial, in words."""
        if self.status == "TERMINATED":
            if self.max_iters is not None and self.iter is not None and self.iter < self.max_iters:
                return "stopped early (ASHA)"
            return "complete"
        if self.status == "ERROR":
            return "diverged" if self.diverged else "error"
        return {"RUNNING": "unfinished", "PAUSED": "unfinished", "PENDING": "not started"}.get(
            self.status, self.status.lower()
        )

    def last_evaluation(self) -> dict[str, Any] | None:
        """The last report with an oracle mIoU: the end-of-training evaluation of a finished trial."""
        scored = [r for r in self.rows if number(r.get("miou")) is not None]
        return scored[-1] if scored else None

    def value(self, metric: str) -> float | None:
        """The last reported value of ``metric`` (what Optuna and ASHA saw last)."""
        return number(self.last.get(metric))

    def best_row(self, metric: str, mode: str) -> dict[str, Any] | None:
        scored = [r for r in self.rows if number(r.get(metric)) is not None]
        if not scored:
            return None
        sign = 1 if mode == "max" else -1
        return max(scored, key=lambda r: sign * number(r[metric]))  # type: ignore[operator]


@dataclass
class Experiment:
    path: Path  # a local folder (an object-storage experiment is staged into a temporary one)
    trials: list[Trial]
    metric: str = "miou"
    mode: str = "max"
    searched_keys: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    uri: str = ""  # where the experiment lives (path or s3://, gs://, file:// URI)

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/")) or self.path.name

    def table(self) -> list[dict[str, Any]]:
        """One flat row per trial: id, searched values, metrics, iter, state, checkpoint.

        ``miou`` and the proxies are the last reported values (what Optuna saw);
        ``best_miou`` is the trial's best evaluation, whose checkpoint Ray Train keeps.
        """
        out = []
        for t in self.trials:
            best = t.best_row(self.metric, self.mode) or {}
            best_oracle = t.best_row("miou", "max") or {}
            row: dict[str, Any] = {"trial": t.trial_id}
            row.update({k: t.params.get(k) for k in self.searched_keys})
            row.update(
                {
                    "miou": t.value("miou"),
                    "best_miou": number(best_oracle.get("miou")),
                    "source_val_miou": t.value("source_val_miou"),
                    "target_entropy": t.value("target_entropy"),
                    self.metric: t.value(self.metric),
                    "best": number(best.get(self.metric)),
                    "iter": t.iter,
                    "state": t.state,
                    "checkpoint": best.get("checkpoint_path") or t.last.get("checkpoint_path"),
                }
            )
            out.append(row)
        return out


# ---------------------------------------------------------------------------------------
# Reading


def read_experiment(experiment_dir: str | Path) -> Experiment:
    """All trials of a Tune experiment folder (or URI), with their reports and final state."""
    uri = str(experiment_dir)
    path = _stage_locally(uri) if is_uri(uri) else Path(uri).expanduser()
    if not path.is_dir():
        raise ExperimentError(f"experiment folder {str(path)!r} does not exist")
    record = _read_json(path / SWEEP_RECORD) or {}
    states = _trial_states(path)
    trial_dirs = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        rows = _read_rows(d)
        trial_id = (rows[0].get("trial_id") if rows else None) or _trial_id_from_dirname(d.name)
        trial_dirs[trial_id] = (d, rows)
    ids = list(states) + [i for i in trial_dirs if i not in states]
    if not ids:
        raise ExperimentError(
            f"{path}: no Tune trials found (expected experiment_state-*.json and trial folders with params.json); "
            "is this the folder that tune.py printed?"
        )
    base_max_iters = (record.get("base_config") or {}).get("optim", {}).get("max_iters")
    trials = []
    for trial_id in ids:
        state = states.get(trial_id, {})
        d, rows = trial_dirs.get(trial_id, (None, []))
        if d is None and state.get("logdir"):
            d = path / state["logdir"]
        params = _read_json(d / "params.json") if d is not None and (d / "params.json").is_file() else None
        params = params if isinstance(params, dict) else state.get("config", {})
        status = state.get("status") or _infer_status(d, rows)
        error = _read_error(path, d, state)
        max_iters = params.get("optim.max_iters", base_max_iters)
        trials.append(Trial(trial_id, d, dict(params), status, rows, error, max_iters))
    searched = record.get("searched_keys") or sorted({k for t in trials for k in t.params})
    return Experiment(
        path, trials, record.get("metric", "miou"), record.get("mode", "max"), list(searched), record, uri
    )


def _stage_locally(uri: str) -> Path:
    """Copy an object-storage experiment's state and results (not its checkpoints) to a temp folder."""
    import pyarrow.fs as pafs

    fs, root = open_fs(uri)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (FileNotFoundError, OSError) as e:
        raise ExperimentError(f"experiment {uri!r} cannot be listed: {e}") from None
    local = Path(tempfile.mkdtemp(prefix="road-ray-experiment-"))
    for info in infos:
        rel = posixpath.relpath(info.path, root)
        if info.type != pafs.FileType.File or rel.startswith(TRAIN_RUNS + "/"):
            continue
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src:
            dest.write_bytes(src.read())
    return local


def _trial_states(path: Path) -> dict[str, dict[str, Any]]:
    """trial id -> {status, logdir, config, error_file} from the newest experiment_state-*.json."""
    # The newest session by the timestamp in the name (after a restore Tune rewrites the old
    # file too, so modification times do not tell).
    files = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.name)
    if not files:
        return {}
    data = _read_json(files[-1]) or {}
    out: dict[str, dict[str, Any]] = {}
    for entry in data.get("trial_data", []):
        try:
            trial = json.loads(entry[0])
            meta = json.loads(entry[1]) if len(entry) > 1 else {}
        except (TypeError, ValueError, IndexError):
            continue
        out[trial["trial_id"]] = {
            "status": trial.get("status"),
            "logdir": trial.get("relative_logdir"),
            "config": trial.get("config") or {},
            "error_file": meta.get("error_filename"),
        }
    return out


def _read_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's reports from result.json (JSON lines; a torn last line is skipped)."""
    rows = []
    result = trial_dir / "result.json"
    if result.is_file():
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows
    progress = trial_dir / "progress.csv"
    if progress.is_file():
        with open(progress, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: _parse_csv_value(v) for k, v in row.items()})
    return rows


def _read_error(path: Path, trial_dir: Path | None, state: dict[str, Any]) -> str | None:
    candidates = []
    if state.get("error_file"):
        candidates.append(
            Path(state["error_file"]) if os.path.isabs(state["error_file"]) else path / state["error_file"]
        )
    if trial_dir is not None:
        candidates.append(trial_dir / "error.txt")
    for c in candidates:
        if c.is_file():
            return c.read_text(errors="replace")
    return None


def _infer_status(trial_dir: Path | None, rows: list[dict[str, Any]]) -> str:
    if trial_dir is not None and (trial_dir / "error.txt").is_file():
        return "ERROR"
    if rows and rows[-1].get("done"):
        return "TERMINATED"
    return "RUNNING" if rows else "PENDING"


def _trial_id_from_dirname(name: str) -> str:
    # "<trainable>_<trialid>_<n>_<tag>_<date>"
    parts = name.split("_")
    return parts[1] if len(parts) > 1 else name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parse_csv_value(v: str) -> Any:
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(v, v)


def number(v: Any) -> float | None:
    """A finite number as float; None for anything else (missing, NaN, inf, bool, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        return None
    return float(v)


# ---------------------------------------------------------------------------------------
# Selection


def best_trial(exp: Experiment, metric: str | None = None, mode: str | None = None) -> tuple[Trial, dict[str, Any]]:
    """The trial with the best report of ``metric`` (default: the sweep's), and that report."""
    metric = metric or exp.metric
    mode = mode or (exp.mode if metric == exp.metric else _natural_mode(metric))
    scored = [(t, r) for t in exp.trials if (r := t.best_row(metric, mode)) is not None]
    if not scored:
        raise ExperimentError(f"{exp.uri or exp.path}: no trial reported {metric!r} yet; nothing to select")
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda tr: sign * number(tr[1][metric]))  # type: ignore[operator]


def best_checkpoint(experiment_dir: str | Path, metric: str = "miou", mode: str | None = None) -> str:
    """The checkpoint of the report with the best ``metric`` (default: highest ``miou``) over all trials.

    When no report carries ``miou`` (a sweep without target labels), the sweep's own metric
    (e.g. ``target_entropy``, lowest) is used. ``mode`` defaults to the metric's direction.
    Reports whose checkpoint is gone (Ray Train keeps only the best and the latest of each
    run) are passed over.
    """
    exp = read_experiment(experiment_dir)
    if metric == "miou" and not any(number(r.get("miou")) is not None for t in exp.trials for r in t.rows):
        metric = exp.metric
    mode = mode or (exp.mode if metric == exp.metric else _natural_mode(metric))
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


def _natural_mode(metric: str) -> str:
    return "min" if metric == "target_entropy" or metric.startswith("loss/") else "max"


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
