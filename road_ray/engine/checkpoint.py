"""Checkpoint directories (docs/method.md), written atomically and loaded with ``weights_only=True``.

A checkpoint is a directory holding ``checkpoint.pt`` (a plain dict of state dicts:
student, domain classifiers, optimizer, the iteration, RNG states; bf16 autocast needs no grad scaler),
``config.json`` (the full resolved config, so a checkpoint is self-describing) and
``meta.json`` (iteration, metrics: small and human-readable). The learning rate is a pure
function of the iteration (``engine/optim.py``), so the iteration *is* the scheduler state.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from road_ray import jsonio, storage
from road_ray.config import Config, config_from_dict

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Torch, NumPy and Python RNG states as tensors/ints (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(module: torch.nn.Module | None) -> torch.nn.Module | None:
    return getattr(module, "module", module)  # DDP keeps the real module in .module


def save_checkpoint(
    directory: str | Path,
    *,
    config: Config,
    iteration: int,
    student: torch.nn.Module,
    domain_classifiers: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically: into a temporary sibling, then renamed.

    An interrupted save leaves only a ``.tmp-*`` folder, never a directory that looks whole.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        payload = {
            "format_version": FORMAT_VERSION,
            "iteration": int(iteration),
            "student": _unwrap(student).state_dict(),
            "domain_classifiers": _unwrap(domain_classifiers).state_dict() if domain_classifiers is not None else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "rng": rng_state(),
        }
        torch.save(payload, tmp / CHECKPOINT_FILE)
        (tmp / CONFIG_FILE).write_text(jsonio.dumps(config.to_dict(), indent=2))
        meta = {"iteration": int(iteration), "metrics": metrics or {}, "format_version": FORMAT_VERSION}
        (tmp / META_FILE).write_text(jsonio.dumps(meta, indent=2))
        if directory.exists():
            old = directory.parent / f".old-{directory.name}-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_checkpoint_config(directory: str | Path) -> Config:
    """The resolved config stored in a checkpoint directory (clear errors if it is not one)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(directory)!r} does not exist (expected a directory written by road-ray train)"
        )
    cfg_file = directory / CONFIG_FILE
    if not cfg_file.is_file() or not (directory / CHECKPOINT_FILE).is_file():
        raise ValueError(f"checkpoint {str(directory)!r} is incomplete: expected {CHECKPOINT_FILE} and {CONFIG_FILE}")
    try:
        return config_from_dict(json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {str(cfg_file)!r} is corrupt: {e}") from None


def read_checkpoint_metrics(directory: str | Path) -> dict[str, Any]:
    """The metrics recorded with a checkpoint (``meta.json``); empty if absent."""
    meta = Path(directory) / META_FILE
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text()).get("metrics", {})
    except json.JSONDecodeError:
        return {}


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``checkpoint.pt`` with ``weights_only=True``; a truncated file is a clear ValueError."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(directory)!r} has no {CHECKPOINT_FILE}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle error: all mean "not a whole checkpoint"
        raise ValueError(f"checkpoint {str(path)!r} is truncated or corrupt: {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} is not a road-ray checkpoint (format {FORMAT_VERSION})")
    return payload


def load_student_state(student: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights into the student; a checkpoint of another model is a clear ValueError."""
    try:
        result = _unwrap(student).load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {source!r} is from another model: {str(e).splitlines()[1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {source!r} is from another model: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def local_checkpoint(directory: str | Path) -> str:
    """A checkpoint folder readable here: a URI (``s3://``, ``gs://``, ``file://``) is copied
    into a temporary folder first; a plain path is returned as it is."""
    try:
        return storage.copy_to_local(str(directory), prefix="road-ray-checkpoint-")
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {directory}: no such folder") from None
