"""The machine's own measured peak: a large matmul and a large 3×3 convolution, fp32 and bf16.

A CPU has no datasheet peak worth quoting (it depends on the cores given, the clock under load,
AVX-512/AMX use), so ``road-ray bench step`` measures the ceiling it compares the step with, in
the same process and with the same threads as the step: a square matmul and a 256→256-channel
3×3 convolution (padding 1) on a 64×64 map, the shape of a backbone's middle stages, each in
fp32 and bf16 (bf16 tensors, as autocast hands them to the kernels). On a CPU the convolution
is timed in both memory layouts (contiguous and channels_last) and its peak is the faster; on
CUDA in channels_last (what the training loop uses there). One timed *call* repeats the kernel
enough times to last about ``target_s``, so a call is long enough to time on a loaded machine
and short enough to interleave with the step, round by round (``bench/step.py``).

GFLOP/s = 2 × multiply-adds per call / seconds (a matmul of n: 2n³; a convolution:
2 × batch × C_out × H × W × C_in × 9), the count ``FlopCounterMode`` gives the step.
No Ray here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from road_ray.bench.common import median, timed

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KINDS = ("matmul", "conv3x3")

# Shapes of one kernel call, per device kind; "toy" is for tests (microseconds, never a peak).
SHAPES: dict[str, dict[str, int]] = {
    "cpu": {"matmul_n": 2048, "conv_channels": 256, "conv_size": 64, "conv_batch": 8},
    "cuda": {"matmul_n": 8192, "conv_channels": 256, "conv_size": 64, "conv_batch": 64},
    "toy": {"matmul_n": 96, "conv_channels": 16, "conv_size": 16, "conv_batch": 2},
}
TARGET_S = {"cpu": 0.2, "cuda": 0.2, "toy": 0.005}


@dataclass
class PeakKernel:
    """One timed kernel: ``call()`` runs it ``reps`` times; ``flops`` counts one call."""

    kind: str  # "matmul" | "conv3x3"
    precision: str  # "fp32" | "bf16"
    layout: str  # "-" for matmuls, "contiguous" | "channels_last" for convolutions
    shape: str
    flops_once: int
    run_once: Callable[[], Any]
    reps: int = 1
    times: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.precision}" + ("" if self.layout == "-" else f"/{self.layout}")

    @property
    def flops(self) -> int:
        return self.flops_once * self.reps

    def call(self) -> None:
        for _ in range(self.reps):
            self.run_once()

    def gflops(self) -> float:
        """GFLOP/s of the median call."""
        return self.flops / median(self.times) / 1e9


def _matmul(n: int, precision: str, device: torch.device) -> PeakKernel:
    a = torch.randn(n, n, device=device).to(DTYPES[precision])
    b = torch.randn(n, n, device=device).to(DTYPES[precision])
    return PeakKernel("matmul", precision, "-", f"{n}x{n} @ {n}x{n}", 2 * n**3, lambda: torch.mm(a, b))


def _conv3x3(shape: dict[str, int], precision: str, layout: str, device: torch.device) -> PeakKernel:
    n, c, s = shape["conv_batch"], shape["conv_channels"], shape["conv_size"]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, s, s, device=device).to(DTYPES[precision]).contiguous(memory_format=fmt)
    w = (torch.randn(c, c, 3, 3, device=device) / math.sqrt(9 * c)).to(DTYPES[precision])
    w = w.contiguous(memory_format=fmt)
    flops = 2 * n * c * s * s * c * 9
    label = f"{n}x{c}x{s}x{s}, {c}->{c} 3x3 pad 1"
    return PeakKernel("conv3x3", precision, layout, label, flops, lambda: F.conv2d(x, w, padding=1))


def build_kernels(device: torch.device, toy: bool = False) -> list[PeakKernel]:
    """Every peak kernel of ``device``, warmed up and calibrated to about ``TARGET_S`` per call."""
    size = "toy" if toy else device.type
    shape, target_s = SHAPES[size], TARGET_S[size]
    layouts = ("channels_last",) if device.type == "cuda" else ("contiguous", "channels_last")
    kernels = []
    with torch.no_grad():
        for precision in PRECISIONS:
            kernels.append(_matmul(shape["matmul_n"], precision, device))
            kernels += [_conv3x3(shape, precision, layout, device) for layout in layouts]
        for kernel in kernels:
            kernel.call()  # first call: allocations, oneDNN/cuDNN algorithm choice
            once = min(timed(kernel.call, device) for _ in range(2))
            kernel.reps = max(1, round(target_s / max(once, 1e-9)))
    return kernels


def time_kernels(kernels: list[PeakKernel], device: torch.device) -> None:
    """One timed call of every kernel (one round's share), appended to its ``times``."""
    with torch.no_grad():
        for kernel in kernels:
            kernel.times.append(timed(kernel.call, device))


def best(kernels: list[PeakKernel], kind: str, precision: str) -> PeakKernel:
    """The fastest layout of ``kind`` in ``precision`` (by median GFLOP/s)."""
    return max((k for k in kernels if k.kind == kind and k.precision == precision), key=PeakKernel.gflops)


def peak_gflops(kernels: list[PeakKernel]) -> dict[str, dict[str, float]]:
    """``{kind: {precision: GFLOP/s}}``: the median call of the fastest layout."""
    return {kind: {p: best(kernels, kind, p).gflops() for p in PRECISIONS} for kind in KINDS}


def kernel_details(kernels: list[PeakKernel]) -> list[dict[str, Any]]:
    """What every kernel was and how fast it ran, for the JSON."""
    return [
        {
            "kernel": k.name,
            "shape": k.shape,
            "reps_per_call": k.reps,
            "gflop_per_call": k.flops / 1e9,
            "call_s_median": median(k.times),
            "gflops": k.gflops(),
        }
        for k in kernels
    ]


def over_peak(step_flops: float, step_times: list[float], kernels: list[PeakKernel], precision: str) -> dict:
    """The step's FLOP/s over each kind's peak in ``precision``: median over rounds of the per-round
    ratio (the step and the kernel timed in the same round), as every ratio of the bench."""
    out = {}
    for kind in KINDS:
        kernel = best(kernels, kind, precision)
        ratios = [(step_flops / t) / (kernel.flops / p) for t, p in zip(step_times, kernel.times)]
        out[kind] = median(ratios)
    return out


def measure_peak(device: torch.device, rounds: int = 3, toy: bool = False) -> dict[str, Any]:
    """The peak alone (``rounds`` calls of every kernel): ``{"peak_gflops", "kernels"}``."""
    kernels = build_kernels(device, toy=toy)
    for _ in range(rounds):
        time_kernels(kernels, device)
    return {"peak_gflops": peak_gflops(kernels), "kernels": kernel_details(kernels)}


__all__ = ["PeakKernel", "build_kernels", "kernel_details", "measure_peak", "over_peak", "peak_gflops", "time_kernels"]
