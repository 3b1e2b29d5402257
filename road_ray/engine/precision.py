"""Which precision a run computes in: ``run.precision`` = ``auto`` | ``fp32`` | ``bf16``.

bf16 autocast needs no grad scaler (unlike fp16) and is the default on GPUs. On a CPU it pays only
where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX): there a ROAD step ran 1.4-1.5x
faster than fp32 on two cores, elsewhere bf16 is emulated and slower than fp32. ``auto`` therefore
picks bf16 on a GPU and on a CPU with native bf16, fp32 otherwise.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (Linux: the ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``run.precision`` on ``device`` (``"auto"``: see the module docstring)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: expected auto, fp32 or bf16")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()) else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: plain fp32)."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None
