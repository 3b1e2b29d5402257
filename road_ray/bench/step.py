"""``road-ray bench step``: what one ROAD training step costs, measured side by side in one process.

On one fixed in-memory batch (``batch`` source + ``batch`` target crops of ``crop``², prepared by
the training loop's own ``to_device``) and one network (``bench/step_setup.py``), every round
times, in a rotated order:

- ``road``: the full ROAD step, :func:`road_ray.road.train_step` on the objective of
  :func:`road_ray.engine.loop.build_objective` (Eq. 5: student on both domains, teacher
  forward, distillation, splitting layer, domain classifiers, SGD step);
- ``plain``: a plain supervised step of the same student on *all* the crops (same SGD
  optimizer), i.e. what the step would cost without the ROAD terms;
- ``road_no_dist`` / ``road_no_spt``: the ROAD step with λ1 = 0 / λ2 = 0 (the term, and all it
  runs, switched off), whose differences with ``road`` give the distillation's and the spatial
  term's share of the step (toggle method: forward *and* backward and optimizer costs count);
- ``splitting_layer``: the spatial-aware splitting layer alone (``region_index`` +
  ``region_counts`` on the step's boxes, what ``ROADObjective._spatial_loss`` runs on the host);
  the domain classifiers' share is the spatial term's minus this;
- ``teacher``: the frozen teacher's forward alone (on the target crops, as in the step);
- ``ray``: the same ROAD step inside a one-worker Ray ``TorchTrainer``
  (``road_ray/on_ray/bench_step.py``, imported only when this variant runs). The worker builds
  the same setup (same seed, same weights, same batch) and takes its turn in every round, so
  the Ray step is interleaved with the others like any variant. Only the step is timed (no
  start-up): ``ray / road`` is the overhead of running inside Ray Train.

FLOPs are counted once per variant with ``torch.utils.flop_counter.FlopCounterMode``; achieved
TFLOP/s = FLOPs / median time, MFU = achieved / the device's datasheet peak (``step_setup.py``'s
table, or ``peak_tflops``). Every round also times the machine's own measured peak
(``bench/peak.py``: a large matmul and a large 3×3 convolution, fp32 and bf16, in this process
and with its threads): ``step_over_peak`` = the ROAD step's FLOP/s / the peak of the precision
it runs in, per round, median (the physical limit on a CPU, where no datasheet peak applies).
The precision follows ``run.precision=auto`` (``road_ray/engine/precision.py``). The networks are randomly initialised (``model.pretrained="none"`` with
``allow_untrained_teacher``): weights do not change what a step costs.
"""

from __future__ import annotations

from typing import Any

import torch

from road_ray.bench.common import (
    Progress,
    format_table,
    median,
    paired_ratio,
    resolve_device,
    resolve_precision,
    rotated,
    spread,
    timed,
)
from road_ray.bench.peak import PeakKernel, build_kernels, kernel_details, over_peak, peak_gflops, time_kernels
from road_ray.bench.step_setup import StepSetup, bench_config, peak_tflops, synthetic_batch
from road_ray.config import Config

OPTIONS = (
    "network",
    "crop",
    "batch",
    "precision",
    "device",
    "teacher_layer",
    "repeats",
    "warmup",
    "smoke",
    "ray",
    "peak_tflops",
    "peak",
    "seed",
)
DEFAULTS: dict[str, Any] = {
    "network": "deeplabv2-small",
    "crop": 161,
    "batch": 5,
    "precision": "auto",
    "device": "auto",
    "teacher_layer": None,
    "repeats": 10,
    "warmup": 2,
    "ray": True,
    "peak_tflops": None,
    "peak": True,
    "seed": 0,
}
SMOKE: dict[str, Any] = {"crop": 48, "batch": 2, "repeats": 2, "warmup": 1}

TARGETS = {"road_over_plain_max": 1.25, "ray_over_bare_max": 1.05, "step_over_peak_min": 0.5}
UNTRAINED_NOTE = (
    "networks randomly initialised (model.pretrained='none', allow_untrained_teacher=True): fine for "
    "timing, weights do not change the cost of a step"
)


# ---------------------------------------------------------------------------------------
# The bench


def bench(progress: Progress, **options: Any) -> dict[str, Any]:
    """Run the step bench; returns ``{"settings", "figures", "notes"}`` (see the module docstring)."""
    o = {**DEFAULTS, **(SMOKE if options.get("smoke") else {}), **options}
    if o["repeats"] < 1 or o["warmup"] < 0 or o["crop"] < 16 or o["batch"] < 1:
        raise ValueError("bench step: expected --repeats >= 1, --warmup >= 0, --crop >= 16, --batch >= 1")
    device = resolve_device(o["device"])
    precision = resolve_precision(o["precision"], device)
    cfg = bench_config(o["network"], o["crop"], o["batch"], precision, o["teacher_layer"])
    threads = torch.get_num_threads()  # the Ray worker uses as many as this process
    progress(f"building {o['network']} on {device} ({precision}), crop {o['crop']}, {o['batch']}+{o['batch']} crops")
    setup = StepSetup(cfg, device, o["seed"])
    parameters = sum(p.numel() for p in setup.student.parameters())  # docs/networks.md lists them
    progress(f"{o['network']}: {parameters:,} parameters in the segmentation network")
    ops = setup.operations()
    setup.warm_up(o["warmup"])
    progress(f"warmed up ({o['warmup']} calls of each variant); counting FLOPs")
    flops = setup.flops()
    kernels = build_kernels(device, toy=bool(o.get("smoke"))) if o["peak"] else []
    if kernels:
        progress("peak kernels calibrated: " + ", ".join(f"{k.name} x{k.reps}" for k in kernels))

    names = list(ops)
    times: dict[str, list[float]] = {name: [] for name in names}

    def driver_round(r: int) -> None:
        for name in rotated(names, r):
            times[name].append(timed(ops[name], device))
        time_kernels(kernels, device)  # the peak, in the same round as the step it is compared with
        progress(f"round {r + 1}/{o['repeats']}: " + ", ".join(f"{n} {times[n][-1]:.4g}s" for n in names))

    ray_result = None
    if o["ray"]:
        # The only Ray of this bench, imported here: `--no-ray` never loads it.
        from road_ray.on_ray.bench_step import rounds_with_ray_worker

        ray_result = rounds_with_ray_worker(
            cfg,
            device,
            seed=o["seed"],
            warmup=o["warmup"],
            rounds=o["repeats"],
            threads=threads,
            driver_round=driver_round,
            progress=progress,
        )
        times["ray"] = ray_result["times"]
    else:
        for r in range(o["repeats"]):
            driver_round(r)
    progress("done")
    return {
        "settings": {**_settings(o, cfg, device, precision, threads), "parameters": parameters},
        "figures": _all_figures(times, flops, setup, device, precision, o["peak_tflops"], kernels),
        "ray_worker": None if ray_result is None else {k: v for k, v in ray_result.items() if k != "times"},
        "notes": _notes(o),
    }


def _settings(o: dict[str, Any], cfg: Config, device: torch.device, precision: str, threads: int) -> dict[str, Any]:
    return {
        "network": o["network"],
        "arch": cfg.model.arch,
        "backbone": cfg.model.backbone,
        "crop": cfg.data.crop_size,
        "batch_per_domain": cfg.data.batch_source,
        "images_per_step": cfg.data.batch_source + cfg.data.batch_target,
        "precision": precision,
        "device": str(device),
        "teacher_layer": cfg.model.teacher_layer,
        "grid": cfg.road.grid,
        "lambda_dist": cfg.road.lambda_dist,
        "lambda_spt": cfg.road.lambda_spt,
        "optimizer": "SGD momentum 0.9 (road_ray.engine.optim.build_optimizer)",
        "repeats": o["repeats"],
        "warmup": o["warmup"],
        "smoke": bool(o.get("smoke")),
        "torch_threads": torch.get_num_threads(),
        "ray": bool(o["ray"]),
        "ray_worker_threads": threads if o["ray"] else None,
        "pretrained": "none",
        "allow_untrained_teacher": True,
        "seed": o["seed"],
        "measured_peak": bool(o["peak"]),
        "batch": (
            "synthetic: uniform uint8 images and random uint8 labels (5% ignore), as Ray Data delivers them, "
            "through road_ray.engine.loop.to_device (normalized, int64 labels); valid random crop boxes"
        ),
    }


def _figures(times, flops, setup: StepSetup, device, precision, peak_override) -> dict[str, Any]:
    road, plain = times["road"], times["plain"]
    images = setup.cfg.data.batch_source + setup.cfg.data.batch_target
    t_road = median(road)
    spatial = median([a - b for a, b in zip(road, times["road_no_spt"])])
    splitting = median(times["splitting_layer"])
    shares = {
        "distillation": median([a - b for a, b in zip(road, times["road_no_dist"])]) / t_road,
        "spatial_term": spatial / t_road,
        "splitting_layer": splitting / t_road,
        "domain_classifiers": (spatial - splitting) / t_road,
    }
    peak, peak_source = peak_tflops(device, precision, peak_override)
    achieved = {name: flops[name] / median(times[name]) / 1e12 for name in ("road", "plain")}
    figures: dict[str, Any] = {
        "road_over_plain": paired_ratio(road, plain),
        "ray_over_bare": paired_ratio(times["ray"], road) if "ray" in times else None,
        "teacher_over_road": paired_ratio(times["teacher"], road) if "teacher" in times else None,
        "shares_of_road_step": shares,
        "share_method": (
            "toggle: distillation = road - road(lambda_dist=0), spatial_term = road - road(lambda_spt=0) "
            "(forward, backward and SGD costs of each term), paired per round, median; splitting_layer timed "
            "alone (region_index + region_counts: host-side, so its own time is its cost in the step); "
            "domain_classifiers = spatial_term - splitting_layer (includes GRL and L_spt)"
        ),
        "images_per_s": {name: images / median(times[name]) for name in ("road", "plain", "ray") if name in times},
        "crops_per_s_consumed_by_road_step": images / t_road,
        "times_s": {name: spread(values) for name, values in times.items()},
        "gflop_per_call": {name: n / 1e9 for name, n in flops.items()},
        # the noise-free counterpart of the ratios above: what the extra work alone would cost
        "flop_ratio_road_over_plain": flops["road"] / flops["plain"],
        "flop_shares_of_road_step": {
            "distillation": (flops["road"] - flops["road_no_dist"]) / flops["road"],
            "spatial_term": (flops["road"] - flops["road_no_spt"]) / flops["road"],
        },
        "tflops_achieved": achieved,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": {name: (value / peak if peak else None) for name, value in achieved.items()},
        "ratio_method": "median over rounds of the per-round ratio (variants interleaved, order rotated per round)",
    }
    ray_over_bare = figures["ray_over_bare"]
    figures["targets"] = {
        **TARGETS,
        "road_over_plain_met": figures["road_over_plain"] <= TARGETS["road_over_plain_max"],
        "ray_over_bare_met": None if ray_over_bare is None else ray_over_bare <= TARGETS["ray_over_bare_max"],
    }
    return figures


def _all_figures(times, flops, setup, device, precision, peak_override, kernels) -> dict[str, Any]:
    """The step's figures, then the measured peak's, and the targets of both."""
    figures = _figures(times, flops, setup, device, precision, peak_override)
    figures.update(_peak_figures(times["road"], flops["road"], kernels, precision))
    ratio = figures["step_over_peak"]
    figures["targets"]["step_over_peak_met"] = (
        None if ratio is None else ratio["conv3x3"] >= TARGETS["step_over_peak_min"]
    )
    return figures


def _peak_figures(road: list[float], road_flops: int, kernels: list[PeakKernel], precision: str) -> dict[str, Any]:
    """The measured peak and the ROAD step against it (``None`` throughout with ``peak=False``)."""
    if not kernels:
        return {"peak_gflops": None, "peak_kernels": None, "step_gflops": None, "step_over_peak": None}
    ratios = over_peak(road_flops, road, kernels, precision)
    return {
        "peak_gflops": peak_gflops(kernels),
        "peak_kernels": kernel_details(kernels),
        "step_gflops": road_flops / median(road) / 1e9,
        "step_precision": precision,
        "step_over_peak": ratios,
        "peak_method": (
            "bench/peak.py: matmul and 256->256 3x3 convolution in fp32 and bf16, timed once per round in this "
            "process with its threads; conv peak = the faster memory layout; step_over_peak = ROAD step FLOP/s / "
            f"the {precision} peak, per round, median"
        ),
    }


def _notes(o: dict[str, Any]) -> list[str]:
    notes = [UNTRAINED_NOTE]
    if o["ray"]:
        notes.append(
            "ray: a one-worker TorchTrainer (no DDP wrapper at world size 1, as road_ray.on_ray.train does) with "
            "the driver's torch thread count (--threads); note that build_trainer's default torch_threads=1 "
            "runs the real training's step on one thread whatever the cores"
        )
    if o["peak"] and o.get("smoke"):
        notes.append(
            "smoke: the peak kernels are toy-sized (bench/peak.py SHAPES['toy']), so no peak: step_over_peak means nothing"
        )
    return notes


def table(result: dict[str, Any]) -> str:
    s, f = result["settings"], result["figures"]
    t = f["times_s"]
    rows = [
        (f"{name} step/call (s, median of {v['n']})", f"{v['median']:.4g}  [{v['min']:.4g} .. {v['max']:.4g}]")
        for name, v in t.items()
    ]
    rows += [
        ("parameters (segmentation network)", f"{s['parameters']:,}"),
        ("road_over_plain (target <= 1.25)", f"{f['road_over_plain']:.3f}"),
        ("ray_over_bare (target <= 1.05)", "n/a" if f["ray_over_bare"] is None else f"{f['ray_over_bare']:.3f}"),
        ("teacher_over_road", "n/a" if f["teacher_over_road"] is None else f"{f['teacher_over_road']:.3f}"),
    ]
    rows += [(f"share: {k}", f"{100 * v:.1f}%") for k, v in f["shares_of_road_step"].items()]
    rows += [(f"images/s: {k}", f"{v:.2f}") for k, v in f["images_per_s"].items()]
    rows += [
        (f"TFLOP/s: {k}", f"{v:.4g}" + (f" (MFU {100 * f['mfu'][k]:.1f}%)" if f["mfu"][k] else ""))
        for k, v in f["tflops_achieved"].items()
    ]
    rows += _peak_rows(f)
    m = result["machine"]
    title = (
        f"bench step: {s['network']} crop {s['crop']} {s['batch_per_domain']}+{s['batch_per_domain']} "
        f"{s['device']} {s['precision']}, teacher {s['teacher_layer']}; load {m['load_avg_start']:.1f} -> "
        f"{m['load_avg_end']:.1f}"
    )
    return format_table(title, rows)


def _peak_rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    """The measured peak, the step against it, and plainly whether it is below the target."""
    peak = f["peak_gflops"]
    if peak is None:
        return [("measured peak", "not measured (--no-peak)")]
    rows = [(f"peak GFLOP/s: {kind} fp32 / bf16", f"{v['fp32']:.4g} / {v['bf16']:.4g}") for kind, v in peak.items()]
    p, ratio = f["step_precision"], f["step_over_peak"]
    rows.append((f"ROAD step GFLOP/s ({p})", f"{f['step_gflops']:.4g}"))
    target = TARGETS["step_over_peak_min"]
    verdict = (
        ""
        if f["targets"]["step_over_peak_met"]
        else f"  <- BELOW the target: under {100 * target:.0f}% of the {p} conv peak"
    )
    rows.append((f"step / {p} conv3x3 peak (target >= {target:g})", f"{ratio['conv3x3']:.3f}{verdict}"))
    rows.append((f"step / {p} matmul peak", f"{ratio['matmul']:.3f}"))
    return rows


__all__ = ["bench", "table", "bench_config", "synthetic_batch", "StepSetup", "OPTIONS"]
