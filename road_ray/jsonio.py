"""JSON as every strict parser reads it: a missing number is ``null``, never ``NaN``.

Python's ``json`` writes ``NaN``/``Infinity`` for non-finite floats, which ``jq``, JavaScript and
most other readers refuse. Everything road-ray writes as JSON (the last line of ``road-ray
train``, metrics histories, checkpoints' ``meta.json``, reports, bench results) goes through
:func:`dumps`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every NaN/inf float (also NumPy/torch scalars) replaced by None, recursively."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, (str, bytes)):
        value = value.item()  # a NumPy or torch scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any, *, indent: int | None = None, default=_default, sort_keys: bool = False) -> str:
    """``json.dumps`` with non-finite numbers as ``null`` (and refusing any that slip through)."""
    return json.dumps(finite(value), indent=indent, default=default, allow_nan=False, sort_keys=sort_keys)
