"""What the three ``road-ray bench`` commands share: dispatch, machine facts, timing, output.

Speed is reported as ratios of variants measured side by side in one run: every
measured variant runs once per *round*, in an order rotated from round to round, and a ratio
is the median over the rounds of the per-round ratio. Machines here are shared and loaded, so
an absolute time says little; a ratio of two things timed a second apart says a lot. The load
average is recorded at every phase so a reader can judge how busy the machine was.

No Ray in ``road_ray/bench/``: importing any of its modules loads no Ray (tests/test_imports.py).
The parts that run on Ray live in ``road_ray/on_ray/bench_step.py`` (the step in a TorchTrainer)
and ``road_ray/on_ray/bench_data.py`` (Ray Data vs a DataLoader); ``bench step`` and
``bench data`` import them inside the function that runs them.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from road_ray import jsonio
from road_ray.engine import precision as run_precision

BENCHES: dict[str, str] = {
    "step": "road_ray.bench.step",
    "data": "road_ray.bench.data",
    "eval": "road_ray.bench.eval",
    "trial": "road_ray.bench.trial",
    "gpu": "road_ray.bench.gpu",
}


def run_bench(what: str, json_path: str | None = None, **options: Any) -> dict[str, Any]:
    """Run ``road-ray bench {step|data|eval}``; print its table, write ``json_path``; return the result.

    ``options`` are the bench's keyword arguments (``network``, ``crop``, ``batch``, ``repeats``,
    ``smoke``, ...; see each module's ``bench``); ``None`` means "the default". An option the
    bench does not take is a ValueError naming it. ``threads``: torch's intra-op threads for the
    run (restored afterwards); on a loaded machine fewer threads than cores time more steadily.
    """
    if what not in BENCHES:
        raise ValueError(f"unknown bench {what!r}; expected one of {', '.join(BENCHES)}")
    module = importlib.import_module(BENCHES[what])
    options = {k: v for k, v in options.items() if v is not None}
    threads = options.pop("threads", None)
    accepted = module.OPTIONS
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"bench {what}: {flags} does not apply here; options of bench {what}: {', '.join(accepted)}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: expected >= 1")
    saved_threads = torch.get_num_threads()
    progress = Progress(what)
    try:
        if threads is not None:
            torch.set_num_threads(threads)  # also the Ray Train worker's, in bench step
        result = module.bench(progress=progress, **options)
        result = {"bench": what, **result, "machine": machine_info(result["settings"]["device"], progress)}
    finally:
        torch.set_num_threads(saved_threads)
    print(module.table(result))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(jsonio.dumps(result, indent=2) + "\n")
        progress(f"wrote {path}")
    return result


# ---------------------------------------------------------------------------------------
# Progress and machine facts


class Progress:
    """One line per phase on stderr; keeps the 1-minute load average seen at every line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.perf_counter()
        self.load: list[float] = [os.getloadavg()[0]]

    def __call__(self, message: str) -> None:
        load = os.getloadavg()[0]
        self.load.append(load)
        elapsed = time.perf_counter() - self.start
        print(f"[bench {self.name}] {elapsed:6.1f}s load {load:5.2f} | {message}", file=sys.stderr, flush=True)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)  # no import: `bench eval` never loads Ray
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str, progress: Progress) -> dict[str, Any]:
    """Where the figures come from: platform, CPUs, versions, device, the load during the run."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ray": _version("ray"),
        "device": device,
        "device_name": device_name(device),
        "load_avg_start": progress.load[0],
        "load_avg_end": os.getloadavg()[0],
        "load_avg_mean": statistics.fmean(progress.load),
        "load_avg_max": max(progress.load),
        "wall_s": time.perf_counter() - progress.start,
    }


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: the training run's own rule (``run.precision=auto``,
    ``road_ray/engine/precision.py``: bf16 on GPUs and on CPUs with native bf16, else fp32)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision {precision!r}: expected auto, fp32 or bf16")
    return run_precision.resolve_precision(precision, device)


def parse_network(network: str) -> tuple[str, str]:
    """``"deeplabv2-small"`` -> ``("deeplabv2", "small")`` (arch, backbone)."""
    from road_ray.config import Arch, BackboneName

    archs, backbones = Arch.__args__, BackboneName.__args__
    arch, _, backbone = network.partition("-")
    if arch not in archs or backbone not in backbones:
        choices = ", ".join(f"{a}-{b}" for a in archs for b in backbones)
        raise ValueError(f"--network {network!r}: expected ARCH-BACKBONE, one of {choices}")
    return arch, backbone


# ---------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def rotated(names: Sequence[str], r: int) -> list[str]:
    """The order of round ``r``: ``names`` rotated by ``r``, so no variant always runs first."""
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]`` (both measured in round r)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired_ratio: expected two equally long, non-empty series")
    return median([a / b for a, b in zip(numerator, denominator)])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of one series (seconds or rates)."""
    ordered = sorted(values)
    return {
        "median": median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def format_table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A two-column text table: ``title`` and ``(name, value)`` rows."""
    width = max(len(name) for name, _ in rows) if rows else 0
    lines = [title, "-" * max(len(title), width + 16)]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)
