"""The end of a sweep: its table, best trial and best checkpoint, as ``tune.py`` prints them (no Ray here)."""

from __future__ import annotations

import posixpath
import sys
from dataclasses import dataclass

from road_ray.sweeps import results


@dataclass
class SweepOutcome:
    """What ``run_sweep`` returns: the experiment, its table of trials, the best trial (the best
    *final* report of the sweep's metric, :func:`~road_ray.sweeps.results.selected_trial`) and its
    final checkpoint, how many trials did not finish, and — when trials
    were scored on target val — the oracle's pick beside it (trial, its mIoU, the pick's mIoU)."""

    experiment_dir: str
    table: str
    best_trial: str | None
    best_checkpoint: str | None
    best_value: float | None
    metric: str
    unfinished: int = 0
    oracle_pick: tuple[str, float, float | None] | None = None


def sweep_outcome(experiment_dir: str) -> SweepOutcome:
    """Read the experiment folder (finished or not) into its :class:`SweepOutcome`."""
    exp = results.read_experiment(experiment_dir)
    table = results.format_table(exp)
    try:  # the final report decides, as for `road-ray eval --best` (not the best over time)
        trial, checkpoint = results.selected_trial(exp)
        best_id, best_value = trial.trial_id, trial.value(exp.metric)
    except results.ExperimentError:
        best_id, best_value, checkpoint = None, None, None
    unfinished = sum(t.state in ("unfinished", "not started", "error") for t in exp.trials)
    oracle_pick = _oracle_pick(exp, best_id)
    return SweepOutcome(
        str(experiment_dir), table, best_id, checkpoint, best_value, exp.metric, unfinished, oracle_pick
    )


def _oracle_pick(exp: results.Experiment, selected: str | None) -> tuple[str, float, float | None] | None:
    """(trial, its final miou, the selected trial's final miou) when the sweep has target-val scores."""
    scored = [(t.trial_id, v) for t in exp.trials if (v := t.value("miou")) is not None]
    if not scored:
        return None
    trial, value = max(scored, key=lambda tv: tv[1])
    return trial, value, dict(scored).get(selected)


def print_outcome(outcome: SweepOutcome, out=sys.stdout) -> None:
    """The end of ``tune.py``: the table, the best trial and checkpoint, and what to run next."""
    print("", file=out)
    print(
        f"Trials of {outcome.experiment_dir} (mIoU = target-val mIoU, the oracle; source-val mIoU and "
        "target entropy (lower is better) need no target labels):",
        file=out,
    )
    print(outcome.table, file=out)
    storage, name = posixpath.split(outcome.experiment_dir.rstrip("/"))
    if outcome.unfinished:
        print(
            f"\n{outcome.unfinished} trial(s) did not finish; continue with: "
            f"python tune.py --resume --storage {storage} --name {name}",
            file=out,
        )
    if outcome.best_trial is None:
        print(f"\nNo trial reported {outcome.metric}; nothing to select.", file=out)
        return
    print(
        f"\nBest trial: {outcome.best_trial} (final {outcome.metric} "
        f"{results.format_value(outcome.best_value, outcome.metric)})",
        file=out,
    )
    print(
        f"Its final checkpoint (what `road-ray eval --best` evaluates): {outcome.best_checkpoint}",
        file=out,
    )
    if outcome.metric != "miou" and outcome.oracle_pick is not None:
        trial, value, selected_miou = outcome.oracle_pick
        print(
            f"Beside it, the oracle's pick (highest final target-val mIoU): {trial} (miou {value:.2f}); "
            f"the {outcome.metric} pick has miou {results.format_value(selected_miou, 'miou')}",
            file=out,
        )
    print(f"Next: road-ray eval --experiment {outcome.experiment_dir} --best", file=out)
    print(f"      road-ray report --experiment {outcome.experiment_dir}", file=out)
