"""Read a finished (or interrupted) Tune experiment folder into its trials and reports (no Ray here).

Tune's layout (Ray 2.60): ``EXPERIMENT/experiment_state-*.json`` (each trial's status and
folder), and one folder per trial with ``params.json`` (its searched values, dotted config
keys) and ``result.json`` (one JSON object per report). In road-ray every report comes from
``ray.train.report`` in the Train workers through ``TuneReportCallback``: it carries the
metrics of :mod:`road_ray.sweeps.metrics` and, when a checkpoint was written, ``checkpoint_path`` — a checkpoint
of the trial's Train run, kept under ``EXPERIMENT/train_runs/<run>/`` (see
``road_ray/on_ray/tune.py``). ``road_ray_sweep.json`` records the search space and the
base config the sweep ran with.

What a sweep found (best trial, checkpoint, table) is :mod:`road_ray.sweeps.results`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from road_ray.storage import is_uri, open_fs

SWEEP_RECORD = "road_ray_sweep.json"
TRAIN_RUNS = "train_runs"


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
    by_logdir = {state["logdir"]: trial_id for trial_id, state in states.items() if state.get("logdir")}
    trial_dirs = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        rows = _read_rows(d)
        # A running trial's folder may have no report yet: its id is then the state's, or the name's.
        trial_id = (
            (rows[0].get("trial_id") if rows else None) or by_logdir.get(d.name) or _trial_id_from_dirname(d.name)
        )
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
    # road-ray's "trial_<id>" or Tune's default "<trainable>_<id>_<n>_<tag>_<date>", where a
    # trial id is "<hex>_<5 digits>" (e.g. eb240_00002)
    match = re.search(r"(?:^|_)([0-9a-f]{5,8}_\d{5})(?:_|$)", name)
    return match.group(1) if match else name.removeprefix("trial_")


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
