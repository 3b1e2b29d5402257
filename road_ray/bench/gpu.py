"""``road-ray bench gpu``: the one GPU check, ready to run on any CUDA machine in under 8 minutes.

One command, one JSON (stdout, and ``--json FILE``), composed of the other benches' functions:

- ``step_vgg16`` / ``step_resnet101``: ``bench step`` on DeepLab-v2 VGG-16 / ResNet-101 at crop
  321, 5 + 5, bf16, channels_last (the training loop's layout on CUDA): images/s, MFU against the
  GPU's datasheet peak (``step_setup.PEAK_TFLOPS``, or ``--peak-tflops``; null with the reason
  for a GPU not in the table), ``road_over_plain``, the measured peak and ``step_over_peak``;
- ``ray_over_bare``: the same ROAD step (ResNet-101) in a one-worker Ray ``TorchTrainer`` vs bare;
- ``fullres_stream``: the full-resolution (GTA5-sized) Ray Data stream's crops/s against the
  step's consumption (:func:`fullres_stream`), and the GPU-decode path's on CUDA;
- ``eval_fullres``: whole-image evaluation images/s at 1024×512, scored at 2048×1024
  (``bench/eval.py``'s :func:`whole_image_rate`, synthetic images);
- ``road_run``: a 30-iteration ROAD run with its evaluation, end to end through ``run_training``
  on MiniCity small (the default sweep's crops, small backbone, random init: no pretraining on
  a fresh machine), with its timeline (``bench/trial.py``);
- ``ddp_2_workers``: the same run on 2 workers (DDP, NCCL), when there are 2 GPUs.

Every part has a time budget (:data:`PARTS`); a part that would not fit in what is left of
:data:`TOTAL_BUDGET_S` is skipped with that reason, and one that fails is recorded with its
error while the others run. Without CUDA it refuses to run, unless ``--allow-cpu --smoke``: the
CPU test path, every part at toy size on the CPU (DDP with 2 CPU workers, gloo).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from road_ray import jsonio
from road_ray.bench.common import Progress

OPTIONS = ("smoke", "allow_cpu", "peak_tflops", "seed")
TOTAL_BUDGET_S = 480.0  # the whole check: under 8 minutes
NO_CUDA = "bench gpu: no CUDA device here; it needs one (--allow-cpu --smoke runs its CPU test path at toy size)"

# The real sizes on a GPU, and the toy sizes of the CPU test path (--allow-cpu --smoke).
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {"crop": 321, "batch": 5, "repeats": 5, "warmup": 2, "eval_images": 8, "eval_hw": (1024, 2048), "iters": 30},
    "smoke": {"crop": 24, "batch": 1, "repeats": 1, "warmup": 0, "eval_images": 2, "eval_hw": (32, 64), "iters": 2},
}


@dataclass
class Check:
    """What every part sees: the device, the sizes, the options, the results so far."""

    device: torch.device
    size: dict[str, Any]
    smoke: bool
    peak_tflops: float | None
    seed: int
    progress: Progress
    results: dict[str, Any]


def _step(network: str, ray: bool = False, peak: bool = True) -> Callable[[Check], dict[str, Any]]:
    """A part that runs ``bench step`` on ``network`` (bf16) and keeps its headline figures."""

    def run(c: Check) -> dict[str, Any]:
        from road_ray.bench import step

        s = c.size
        out = step.bench(
            c.progress,
            network=network,
            crop=s["crop"],
            batch=s["batch"],
            precision="bf16",
            device=str(c.device),
            repeats=s["repeats"],
            warmup=s["warmup"],
            ray=ray,
            peak=peak,
            smoke=c.smoke,
            peak_tflops=c.peak_tflops,
            seed=c.seed,
        )
        f = out["figures"]
        keep = ("road_over_plain", "ray_over_bare", "images_per_s", "tflops_achieved", "mfu", "peak_tflops")
        keep += ("peak_source", "peak_gflops", "step_over_peak", "crops_per_s_consumed_by_road_step", "targets")
        return {"network": network, "crop": s["crop"], "batch": f"{s['batch']}+{s['batch']}"} | {k: f[k] for k in keep}

    return run


def fullres_stream(
    progress: Progress, *, smoke: bool, step_crops_per_s: float | None, device: str = "cpu"
) -> dict[str, Any]:
    """The full-resolution (GTA5-sized, JPEG q95 stored at 0.5) Ray Data stream's crops/s on this
    machine's CPUs against the ResNet-101 step's consumption; on a CUDA device also the GPU-decode
    path's crops/s (``road_ray/bench/fullres.py``, ``road_ray/data/gpu_decode.py``)."""
    from road_ray.bench.fullres import fullres_stream_rate

    size = {"images": 4, "crop": 64, "batch": 2, "steps": 4} if smoke else {}
    progress("full-resolution stream (GTA5-sized shards, JPEG q95 at 0.5): Ray Data on the CPUs")
    stream = fullres_stream_rate("gta5", **size)
    crops = stream.get("crops_per_s")
    out = {
        "available": True,
        "stream": stream,
        "stream_over_resnet101_step": crops / step_crops_per_s if crops and step_crops_per_s else None,
    }
    if device.startswith("cuda"):
        out["gpu_decode"] = fullres_stream_rate("gta5", device=device, **size)
    return out


def _fullres(c: Check) -> dict[str, Any]:
    step = c.results.get("step_resnet101", {}).get("result") or {}
    return fullres_stream(
        c.progress, smoke=c.smoke, step_crops_per_s=step.get("crops_per_s_consumed_by_road_step"), device=str(c.device)
    )


def _eval(c: Check) -> dict[str, Any]:
    from road_ray.bench.eval import whole_image_rate

    s = c.size
    return whole_image_rate(
        "deeplabv2-resnet101", c.device, "bf16", label_hw=s["eval_hw"], images=s["eval_images"], repeats=2
    )


def _run(workers: int) -> Callable[[Check], dict[str, Any]]:
    """A part that trains the default sweep's run (MiniCity small) ``iters`` iterations on ``workers``."""

    def run(c: Check) -> dict[str, Any]:
        from road_ray.bench.trial import run_trial, sweep_run_config

        iters = c.size["iters"]
        overrides = {
            "data.minicity_size": "small",
            "model.pretrained": "none",
            "model.allow_untrained_teacher": True,
            "run.num_workers": workers,
        }
        if c.device.type == "cpu":
            overrides["run.use_gpu"] = False
        cfg = sweep_run_config(iters, iters, seed=c.seed, smoke=c.smoke, **overrides)
        return run_trial(cfg, c.progress, label=f"run-{workers}w") | {"workers": workers}

    return run


def _two_gpus(c: Check) -> str | None:
    """Why DDP is skipped (None: it runs). The CPU test path runs it on 2 CPU workers."""
    if c.device.type == "cpu" or torch.cuda.device_count() >= 2:
        return None
    return f"{torch.cuda.device_count()} GPU: DDP needs 2"


@dataclass
class Part:
    name: str
    budget_s: float  # on an H100/H200-class GPU; what is left decides whether it starts
    run: Callable[[Check], dict[str, Any]]
    uses_ray: bool = False
    skip: Callable[[Check], str | None] = lambda c: None


PARTS = (
    Part("step_vgg16", 50, _step("deeplabv2-vgg16")),
    Part("step_resnet101", 50, _step("deeplabv2-resnet101")),
    Part("ray_over_bare", 80, _step("deeplabv2-resnet101", ray=True, peak=False), uses_ray=True),
    Part("fullres_stream", 60, _fullres, uses_ray=True),
    Part("eval_fullres", 40, _eval),
    Part("road_run", 100, _run(1), uses_ray=True),
    Part("ddp_2_workers", 90, _run(2), uses_ray=True, skip=_two_gpus),
)


def run_part(part: Part, c: Check, left_s: float) -> dict[str, Any]:
    """One part: skipped (with the reason), or run and timed; a failure is recorded, not raised."""
    reason = part.skip(c)
    if reason is None and not c.smoke and part.budget_s > left_s:
        reason = f"{left_s:.0f} s left of the {TOTAL_BUDGET_S:.0f} s budget; this part may take {part.budget_s:.0f} s"
    if reason is not None:
        return {"status": "skipped", "reason": reason, "budget_s": part.budget_s}
    start = time.perf_counter()
    try:
        result, error = part.run(c), None
    except Exception as e:  # recorded in the JSON: the other parts still run
        result, error = None, f"{type(e).__name__}: {e}"
        c.progress(f"{part.name} failed: {error}\n{traceback.format_exc(limit=8)}")
    wall = time.perf_counter() - start
    if c.device.type == "cuda":
        torch.cuda.empty_cache()  # the next part's networks start on a clean device
    return {
        "status": "ok" if error is None else "failed",
        "wall_s": wall,
        "budget_s": part.budget_s,
        "over_budget": wall > part.budget_s,
        "result": result,
        "error": error,
    }


def _device(allow_cpu: bool, smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if allow_cpu and smoke:
        return torch.device("cpu")
    raise ValueError(NO_CUDA)


def bench(progress: Progress, **options: Any) -> dict[str, Any]:
    """Run every part in turn; returns ``{"settings", "figures", "ok", "notes"}``."""
    o = {"smoke": False, "allow_cpu": False, "peak_tflops": None, "seed": 0, **options}
    device = _device(bool(o["allow_cpu"]), bool(o["smoke"]))
    smoke = bool(o["smoke"])
    c = Check(device, SIZES["smoke" if smoke else "gpu"], smoke, o["peak_tflops"], o["seed"], progress, {})
    start = time.perf_counter()
    with stdout_to_stderr():
        run_parts(c, start)
    wall = time.perf_counter() - start
    failed = [name for name, r in c.results.items() if r["status"] == "failed"]
    return {
        "settings": {
            "device": str(device),
            "device_count": torch.cuda.device_count() if device.type == "cuda" else 0,
            "smoke": smoke,
            "sizes": c.size,
            "total_budget_s": TOTAL_BUDGET_S,
            "peak_tflops_override": o["peak_tflops"],
            "seed": o["seed"],
        },
        "figures": {"summary": summary(c.results), "parts": c.results},
        "ok": not failed,
        "failed_parts": failed,
        "wall_s": wall,
        "within_budget": wall <= TOTAL_BUDGET_S,
        "notes": [
            "networks randomly initialised: weights do not change what a step or an evaluation costs",
            "MFU against the datasheet bf16 dense peak (road_ray/bench/step_setup.py PEAK_TFLOPS) or --peak-tflops",
        ],
    }


def run_parts(c: Check, start: float) -> None:
    """Every part in turn into ``c.results``; one Ray instance, started for the first part that needs it."""
    with contextlib.ExitStack() as ray_scope:
        ray_state: str | None = None  # None: not started; "up"; or why it did not start
        for part in PARTS:
            if part.uses_ray and ray_state is None:
                try:
                    ray_scope.enter_context(_ray())
                    ray_state = "up"
                except Exception as e:
                    ray_state = f"Ray did not start: {type(e).__name__}: {e}"
            left = TOTAL_BUDGET_S - (time.perf_counter() - start)
            c.progress(f"part {part.name}: budget {part.budget_s:.0f} s, {left:.0f} s left")
            if part.uses_ray and ray_state != "up":
                c.results[part.name] = {"status": "failed", "budget_s": part.budget_s, "error": ray_state}
                continue
            c.results[part.name] = run_part(part, c, left)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout meanwhile (Ray's and the libraries' own lines, at the file
    descriptor) goes to stderr: stdout carries the one JSON of the check and nothing else."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _ray():
    """A Ray instance for the parts that need one, its workers' output kept off stdout (one JSON there)."""
    from road_ray.on_ray.train import ray_instance

    return ray_instance(log_to_driver=False)


def _result(results: dict[str, Any], name: str) -> dict[str, Any]:
    return results.get(name, {}).get("result") or {}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of every part (None where a part was skipped or failed)."""
    out: dict[str, Any] = {}
    for name in ("step_vgg16", "step_resnet101"):
        r = _result(results, name)
        out[name] = {
            "images_per_s": (r.get("images_per_s") or {}).get("road"),
            "mfu": (r.get("mfu") or {}).get("road"),
            "mfu_source": r.get("peak_source"),
            "road_over_plain": r.get("road_over_plain"),
            "step_over_peak_conv3x3": (r.get("step_over_peak") or {}).get("conv3x3"),
        }
    out["ray_over_bare"] = _result(results, "ray_over_bare").get("ray_over_bare")
    stream = _result(results, "fullres_stream")
    out["fullres_stream_over_step"] = stream.get("stream_over_resnet101_step")
    out["eval_images_per_s_1024x512_to_2048x1024"] = _result(results, "eval_fullres").get("images_per_s")
    for name in ("road_run", "ddp_2_workers"):
        r = _result(results, name)
        out[name] = {
            "driver_wall_s": r.get("driver_wall_s"),
            "train_share_of_run": r.get("train_share_of_run"),
            "iterations": r.get("iterations"),
            "miou": (r.get("outcome") or {}).get("miou"),
        }
    out["status"] = {name: r["status"] for name, r in results.items()}
    return out


def table(result: dict[str, Any]) -> str:
    """The whole result as one JSON document: what this check prints on stdout."""
    return jsonio.dumps(result, indent=2)


__all__ = ["NO_CUDA", "PARTS", "TOTAL_BUDGET_S", "bench", "fullres_stream", "run_part", "summary", "table"]
