"""A sweep before Ray starts: its search space, its base config and the record saved with it (no Ray here).

``EXPERIMENT/road_ray_sweep.json`` (:data:`~road_ray.sweeps.experiment.SWEEP_RECORD`) holds the
search space (a study's points with their own resolved data paths), the base config every
trial starts from (MiniCity and the small backbone's weights resolved to paths, once, on the
driver), the metric, the searched keys and where the Train runs go. ``--resume`` reads the
space and base config back from it, never from the YAML again. Everything here can fail before
Ray starts or any trial runs.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from road_ray.config import DATA_SPLITS, Config, ConfigError, apply_overrides, parse_overrides
from road_ray.engine.resolve import check_shard_folders, resolve_config
from road_ray.storage import exists, is_uri, join, read_text
from road_ray.sweeps import results
from road_ray.sweeps.metrics import DEFAULT_SELECT, metric_direction
from road_ray.sweeps.results import CRITERIA
from road_ray.sweeps.space import SMOKE_SPACE, SearchSpace, SpaceError, load_space, space_from_dict

PLACEHOLDER = "CHANGE-ME"  # shipped paper spaces point data.* at placeholder URIs


def new_experiment_dir(storage: str, name: str | None, spec: SearchSpace) -> str:
    """``storage/name`` (default name: the space's file name and the time); ValueError if it holds a sweep."""
    name = name or f"{Path(spec.path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = join(storage, name)
    if exists(join(experiment_dir, results.SWEEP_RECORD)) or exists(join(experiment_dir, "tuner.pkl")):
        raise ValueError(f"experiment {experiment_dir} already exists: pass --resume to continue it, or another --name")
    return experiment_dir


def new_record(spec: SearchSpace, experiment_dir: str, smoke: bool = False, log=print) -> dict[str, Any]:
    """The record of a new sweep: the base config (at smoke sizes with ``smoke``) with MiniCity and
    the small backbone's pretraining resolved, once, here; shard folders checked."""
    unresolved = spec.base_config(smoke=smoke)  # smoke: a toy-size run of this space
    check_placeholders(unresolved, spec.path)
    base = resolve_config(unresolved, log=log)  # MiniCity + small-backbone pretraining, once, here
    check_shard_folders(base)
    return {
        "space": {**spec.to_dict(), **resolved_points(spec, unresolved, base, log)},  # a study's own data paths
        "space_file": spec.path,
        "base_config": base.to_dict(),
        "metric": spec.metric,
        "mode": spec.mode,
        "searched_keys": spec.searched_keys,
        "train_storage": join(experiment_dir, results.TRAIN_RUNS),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "created_unix": time.time(),
    }


def resolved_points(spec: SearchSpace, unresolved: Config, base: Config, log=print) -> dict[str, Any]:
    """A study's points with the data paths their own settings resolve to (e.g. the oracle's
    labelled target split), where those differ from the base's; ``{}`` without points."""
    if not spec.points:
        return {}
    points = {}
    for name, overrides in spec.points.items():
        cfg = copy.deepcopy(unresolved)
        apply_overrides(cfg, overrides)
        own = resolve_config(cfg, log=log).data
        paths = {
            f"data.{k}": getattr(own, k)
            for k in DATA_SPLITS
            if f"data.{k}" not in overrides and getattr(own, k) != getattr(base.data, k)
        }
        points[name] = {**overrides, **paths}
    return {"points": points}


def load_space_for_run(
    space: str | None,
    smoke: bool,
    num_samples: int | None,
    select: str | None = None,
    overrides: list[str] | None = None,
    seed: int | None = None,
) -> SearchSpace:
    """The space of a new sweep: ``space`` (default: the MiniCity space, or the smoke space with
    ``smoke``); ``--smoke`` on a given space runs at most 3 trials, ``num_samples`` overrides;
    ``select``: the metric Optuna and ASHA optimise instead of the space's (e.g. a label-free
    validator, so that a sweep needs no target labels at all); ``overrides`` (``KEY=VALUE``, as
    ``--set``) join the space's ``fixed:``; ``seed`` replaces the space's ``seed:`` (Optuna's sampler)."""
    spec = load_space(space if space is not None else (SMOKE_SPACE if smoke else None))
    if overrides:
        fixed = parse_overrides(overrides)
        apply_overrides(spec.base_config(smoke=smoke), fixed)  # an unknown key or a bad value fails here
        spec.fixed.update(fixed)
    if select == "default":
        select = DEFAULT_SELECT
    if select is not None:
        direction = metric_direction(select)
        if direction is None:
            raise SpaceError(f"--select {select!r}: not a metric trials report; e.g. {', '.join(CRITERIA[:-1])}")
        spec.metric, spec.mode = select, direction
    if seed is not None:
        if seed < 0:
            raise SpaceError(f"--seed: expected >= 0, got {seed}")
        spec.seed = seed
    if smoke and space is not None and num_samples is None:
        spec.num_samples = min(spec.num_samples, 3)
    if num_samples is not None:
        if num_samples < 1:
            raise SpaceError(f"--num-samples: expected >= 1, got {num_samples}")
        spec.num_samples = num_samples
    return spec


def load_for_resume(storage: str, name: str | None, space: str | None, log) -> tuple[str, dict[str, Any], SearchSpace]:
    """(experiment folder, its record, its space) of the sweep to resume: ``name``, or the latest
    under ``storage`` (of the space ``space``, if given); the space is the recorded one."""
    if name is None:
        name = latest_experiment(storage, Path(space).stem if space else None)
    experiment_dir = join(storage, name)
    text = read_text(join(experiment_dir, results.SWEEP_RECORD))
    if text is None or not exists(join(experiment_dir, "tuner.pkl")):
        raise ValueError(
            f"--resume: {experiment_dir} is not a road-ray sweep that can be resumed "
            f"(no {results.SWEEP_RECORD} or tuner.pkl); start it again under another --name"
        )
    sweep = json.loads(text)
    spec = space_from_dict(sweep["space"], f"{experiment_dir}/{results.SWEEP_RECORD}")
    if space is not None:
        log(f"[tune] note: resuming with the search space recorded in {experiment_dir}, not {space}")
    return experiment_dir, sweep, spec


def latest_experiment(storage: str, stem: str | None) -> str:
    """The name of the newest sweep under a local ``storage`` (named ``STEM-*`` if ``stem``)."""
    if is_uri(storage):
        raise ValueError("--resume with an object-storage --storage needs --name")
    found = sorted(
        (p for p in Path(storage).glob(f"{stem or '*'}-*/{results.SWEEP_RECORD}")), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise ValueError(
            f"--resume: no sweep to resume under {storage}"
            + (f" for space {stem}" if stem else "")
            + "; pass --name NAME"
        )
    return found[-1].parent.name


def check_placeholders(cfg: Config, space_path: str) -> None:
    """Refuse a paper space whose ``data.*`` still point at the shipped placeholder URIs."""
    for key in DATA_SPLITS:
        value = getattr(cfg.data, key)
        if PLACEHOLDER in value:
            raise ConfigError(
                f"{space_path}: fixed.data.{key} is the placeholder {value!r}: prepare the dataset with "
                f"`road-ray prepare` and put the shard folder/URI there (see the comments in the file)"
            )
