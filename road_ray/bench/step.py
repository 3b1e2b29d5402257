"""``road-ray bench step``: what one ROAD training step costs, measured side by side in one process.

On one fixed in-memory batch (``batch`` source + ``batch`` target crops of ``crop``²) and one
network, every round times, in a rotated order:

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
- ``ray``: the same ROAD step inside a one-worker Ray ``TorchTrainer``. The worker builds the
  same objective (same seed, same weights) and batch, and takes its turn in every round through
  a small "baton" actor, so the driver and the worker never compute at the same time and the
  Ray step is interleaved with the others like any variant. Only the step is timed (no
  start-up): ``ray / road`` is the overhead of running inside Ray Train.

FLOPs are counted once per variant with ``torch.utils.flop_counter.FlopCounterMode``; achieved
TFLOP/s = FLOPs / median time, MFU = achieved / the device's peak (table below, or
``peak_tflops``). The networks are randomly initialised (``model.pretrained="none"`` with
``allow_untrained_teacher``): weights do not change what a step costs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from road_ray.bench.common import (
    Progress,
    format_table,
    median,
    paired_ratio,
    parse_network,
    resolve_device,
    resolve_precision,
    rotated,
    summary,
    timed,
)
from road_ray.config import Config, apply_overrides, config_from_dict
from road_ray.data.boxes import make_box
from road_ray.engine.loop import autocast_dtype, build_objective
from road_ray.engine.optim import build_optimizer
from road_ray.models.backbones import tap_names
from road_ray.road import ROADObjective, region_counts, region_index, segmentation_loss, train_step

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
    "seed": 0,
}
SMOKE: dict[str, Any] = {"crop": 48, "batch": 2, "repeats": 2, "warmup": 1}

# Dense peak TFLOP/s by device-name fragment (first match wins): bf16 tensor cores, TF32 tensor
# cores (fp32 convolutions on GPU use TF32 by default), plain fp32. From the vendors' data sheets.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.0, "tf32": 494.0, "fp32": 66.9}),
    ("H200", {"bf16": 989.0, "tf32": 494.0, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
]

TARGETS = {"road_over_plain_max": 1.25, "ray_over_bare_max": 1.05}
UNTRAINED_NOTE = (
    "networks randomly initialised (model.pretrained='none', allow_untrained_teacher=True): fine for "
    "timing, weights do not change the cost of a step"
)


# ---------------------------------------------------------------------------------------
# The measured setup (built identically in the driver and in the Ray worker)


def bench_config(network: str, crop: int, batch: int, precision: str, teacher_layer: str | None) -> Config:
    """The run config of the bench: ``network`` = ``ARCH-BACKBONE``, teacher at ``teacher_layer``
    (default: the backbone's last stage), untrained weights."""
    arch, backbone = parse_network(network)
    layer = teacher_layer or tap_names(backbone)[-2]  # [-1] is "out"
    return apply_overrides(
        Config(),
        {
            "model.arch": arch,
            "model.backbone": backbone,
            "model.teacher_layer": layer,
            "model.pretrained": "none",
            "model.allow_untrained_teacher": True,
            "data.crop_size": crop,
            "data.batch_source": batch,
            "data.batch_target": batch,
            "run.precision": precision,
        },
    ).validate()


def synthetic_batch(cfg: Config, seed: int) -> dict[str, torch.Tensor]:
    """A step batch (docs/ARCHITECTURE.md) of random crops with valid boxes, plus ``target_label``
    for the plain supervised step. Crops come from 2:1 images twice the crop's height, scaled by
    U(0.75, 1.25) and flipped with p = 1/2, as the data pipeline cuts them."""
    rng = np.random.default_rng(seed)
    c, b = cfg.data.crop_size, cfg.data.batch_source
    image_h, image_w = 2 * c, 4 * c

    def boxes() -> torch.Tensor:
        rows = []
        for _ in range(b):
            scale = rng.uniform(cfg.data.scale_min, cfg.data.scale_max)
            top = rng.integers(0, max(round(image_h * scale) - c, 0) + 1)
            left = rng.integers(0, max(round(image_w * scale) - c, 0) + 1)
            rows.append(make_box(top, left, c, c, image_h, image_w, scale, rng.random() < 0.5))
        return torch.from_numpy(np.stack(rows))

    def labels() -> torch.Tensor:
        label = rng.integers(0, cfg.model.num_classes, (b, c, c))
        label[rng.random((b, c, c)) < 0.05] = 255
        return torch.from_numpy(label)

    images = lambda: torch.from_numpy(rng.standard_normal((b, 3, c, c), dtype=np.float32))  # noqa: E731
    return {
        "source_image": images(),
        "source_label": labels(),
        "source_box": boxes(),
        "target_image": images(),
        "target_box": boxes(),
        "target_label": labels(),
    }


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """As the training loop does: boxes stay on the CPU, images channels_last on GPU."""
    out = {}
    for key, value in batch.items():
        if not key.endswith("_box"):
            value = value.to(device)
            if value.ndim == 4 and device.type == "cuda":
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def _autocast(dtype: torch.dtype | None, device: torch.device):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class StepSetup:
    """The network, the objectives and the optimizers of every variant, on one batch.

    All variants share one student (and one teacher), so they run the very same weights.
    """

    def __init__(self, cfg: Config, device: torch.device, seed: int) -> None:
        self.cfg, self.device = cfg, device
        self.amp = autocast_dtype(cfg, device)
        fused = device.type == "cuda"
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TEACHER IS UNTRAINED.*")
            self.road = build_objective(cfg, device)
        self.student, self.teacher = self.road.student, self.road.teacher
        self.road_opt = build_optimizer(self.student, self.road.domain_classifiers, cfg.optim, fused=fused)
        self.plain_opt = build_optimizer(self.student, None, cfg.optim, fused=fused)
        self.no_dist, self.no_dist_opt = self._variant(lambda_dist=0.0)
        self.no_spt, self.no_spt_opt = self._variant(lambda_spt=0.0)
        for objective in (self.road, self.no_dist, self.no_spt):
            objective.train()
        self.batch = to_device(synthetic_batch(cfg, seed), device)
        b = self.batch
        self.all_images = torch.cat([b["source_image"], b["target_image"]])
        self.all_labels = torch.cat([b["source_label"], b["target_label"]])
        self.boxes = torch.cat([b["source_box"], b["target_box"]])
        stride = self.student.feature_strides["out"]
        self.feature_size = (math.ceil(cfg.data.crop_size / stride),) * 2

    def _variant(self, **road: float) -> tuple[ROADObjective, torch.optim.Optimizer]:
        objective = ROADObjective(
            self.student,
            self.teacher,
            dataclasses.replace(self.cfg.road, **road),
            teacher_layer=self.cfg.model.teacher_layer,
            feature_channels=self.student.feature_channels["out"],
        ).to(self.device)
        if self.device.type == "cuda":
            objective.to(memory_format=torch.channels_last)
        return objective, build_optimizer(
            self.student, objective.domain_classifiers, self.cfg.optim, fused=self.device.type == "cuda"
        )

    # --- the measured operations ---------------------------------------------------
    def road_step(self, objective: ROADObjective | None = None, optimizer: torch.optim.Optimizer | None = None):
        return train_step(
            objective or self.road,
            optimizer or self.road_opt,
            self.batch,
            autocast_dtype=self.amp,
            device_type=self.device.type,
        )

    def plain_step(self) -> torch.Tensor:
        self.plain_opt.zero_grad(set_to_none=True)
        with _autocast(self.amp, self.device):
            logits, _ = self.student(self.all_images)
        loss = segmentation_loss(logits, self.all_labels)
        loss.backward()
        self.plain_opt.step()
        return loss.detach()

    def teacher_forward(self) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with _autocast(self.amp, self.device):
            return self.teacher(self.batch["target_image"])

    def splitting_layer(self) -> list[int]:
        region = region_index(self.boxes, *self.feature_size, self.road.grid)
        return region_counts(region, self.road.num_regions)

    def operations(self) -> dict[str, Callable[[], Any]]:
        ops: dict[str, Callable[[], Any]] = {
            "road": self.road_step,
            "plain": self.plain_step,
            "road_no_dist": lambda: self.road_step(self.no_dist, self.no_dist_opt),
            "road_no_spt": lambda: self.road_step(self.no_spt, self.no_spt_opt),
            "splitting_layer": self.splitting_layer,
        }
        if self.teacher is not None:
            ops["teacher"] = self.teacher_forward
        return ops

    def warm_up(self, steps: int) -> None:
        for _ in range(steps):
            for op in self.operations().values():
                op()

    def flops(self) -> dict[str, int]:
        """FLOPs of one call of every operation (FlopCounterMode: matmuls and convolutions)."""
        out = {}
        for name, op in self.operations().items():
            with FlopCounterMode(display=False) as counter:
                op()
            out[name] = int(counter.get_total_flops())
        return out


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The device's dense peak for this precision, and where the number comes from."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"--peak-tflops {override}: expected a positive number")
        return float(override), "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown for CPUs (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    kind = precision if precision == "bf16" else ("tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in name:
            return peaks[kind], f"table: {fragment} {kind} dense"
    return None, f"{name!r} is not in the peak table (give --peak-tflops)"


# ---------------------------------------------------------------------------------------
# The Ray Train variant


def _baton_actor():
    """A tiny actor that hands the turn between the driver and the Train worker."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class Baton:
        def __init__(self) -> None:
            self.turn = "worker"  # the worker starts: it warms up before the first round
            self.changed = asyncio.Event()
            self.result: dict[str, Any] | None = None

        async def pass_to(self, who: str) -> None:
            self.turn = who
            self.changed.set()

        async def wait_for(self, who: str) -> str:
            while self.turn not in (who, "abort"):
                self.changed.clear()
                await self.changed.wait()
            return self.turn

        async def put_result(self, result: dict[str, Any]) -> None:
            self.result = result

        async def get_result(self) -> dict[str, Any] | None:
            return self.result

    return Baton.remote()


def ray_step_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: the ROAD step of :class:`StepSetup`, timed once per round."""
    import ray
    import ray.train.torch

    torch.set_num_threads(int(loop_config["threads"]))
    device = ray.train.torch.get_device()
    setup = StepSetup(config_from_dict(loop_config["config"]), device, loop_config["seed"])
    for _ in range(loop_config["warmup"]):
        setup.road_step()
    baton = loop_config["baton"]
    ray.get(baton.pass_to.remote("driver"))
    times = []
    for _ in range(loop_config["rounds"]):
        if ray.get(baton.wait_for.remote("worker")) == "abort":  # the driver failed: stop quietly
            return
        times.append(timed(setup.road_step, device))
        if len(times) == loop_config["rounds"]:
            ray.get(
                baton.put_result.remote({"times": times, "threads": torch.get_num_threads(), "device": str(device)})
            )
        ray.get(baton.pass_to.remote("driver"))


def _wait_turn(baton: Any, thread: threading.Thread, errors: list[BaseException], timeout_s: float = 900.0) -> None:
    import ray

    ref, start = baton.wait_for.remote("driver"), time.monotonic()
    while not ray.wait([ref], timeout=1.0)[0]:
        if not thread.is_alive():
            raise RuntimeError(f"bench step: the Ray Train worker stopped: {errors[0] if errors else 'no error given'}")
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"bench step: the Ray Train worker did not answer in {timeout_s:.0f} s")


def rounds_with_ray_worker(
    cfg: Config,
    device: torch.device,
    *,
    seed: int,
    warmup: int,
    rounds: int,
    threads: int,
    driver_round: Callable[[int], None],
    progress: Progress,
) -> dict[str, Any]:
    """Run ``driver_round(r)`` and the Train worker's timed step in turn, ``rounds`` times."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from road_ray.on_ray.train import init_ray

    started_ray = not ray.is_initialized()
    init_ray()
    storage = tempfile.mkdtemp(prefix="road-ray-bench-")
    try:
        baton = _baton_actor()
        use_gpu = device.type == "cuda"
        trainer = TorchTrainer(
            ray_step_worker,
            train_loop_config={
                "config": cfg.to_dict(),
                "seed": seed,
                "warmup": warmup,
                "rounds": rounds,
                "threads": threads,
                "baton": baton,
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}
            ),
            run_config=ray.train.RunConfig(name=f"bench-step-{os.getpid()}", storage_path=storage),
        )
        errors: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as e:  # reported by _wait_turn in the driver thread
                errors.append(e)

        thread = threading.Thread(target=fit, name="bench-step-trainer", daemon=True)
        progress("starting a one-worker TorchTrainer (start-up is not timed)")
        thread.start()
        try:
            for r in range(rounds):
                _wait_turn(baton, thread, errors)
                driver_round(r)
                ray.get(baton.pass_to.remote("worker"))
            _wait_turn(baton, thread, errors)
        except BaseException:
            baton.pass_to.remote("abort")  # let the worker (and the trainer) end
            raise
        result = ray.get(baton.get_result.remote())
        thread.join(timeout=300)
        if errors:
            raise RuntimeError(f"bench step: the TorchTrainer failed: {errors[0]}")
        return result
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started_ray:
            ray.shutdown()


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

    names = list(ops)
    times: dict[str, list[float]] = {name: [] for name in names}

    def driver_round(r: int) -> None:
        for name in rotated(names, r):
            times[name].append(timed(ops[name], device))
        progress(f"round {r + 1}/{o['repeats']}: " + ", ".join(f"{n} {times[n][-1]:.4g}s" for n in names))

    ray_result = None
    if o["ray"]:
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
        "figures": _figures(times, flops, setup, device, precision, o["peak_tflops"]),
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
        "batch": "synthetic: N(0,1) images, random labels (5% ignore), valid random crop boxes",
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
        "times_s": {name: summary(values) for name, values in times.items()},
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


def _notes(o: dict[str, Any]) -> list[str]:
    notes = [UNTRAINED_NOTE]
    if o["ray"]:
        notes.append(
            "ray: a one-worker TorchTrainer (no DDP wrapper at world size 1, as road_ray.on_ray.train does) with "
            "the driver's torch thread count (--threads); note that build_trainer's default torch_threads=1 "
            "runs the real training's step on one thread whatever the cores"
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
    m = result["machine"]
    title = (
        f"bench step: {s['network']} crop {s['crop']} {s['batch_per_domain']}+{s['batch_per_domain']} "
        f"{s['device']} {s['precision']}, teacher {s['teacher_layer']}; load {m['load_avg_start']:.1f} -> "
        f"{m['load_avg_end']:.1f}"
    )
    return format_table(title, rows)


__all__ = ["bench", "table", "bench_config", "synthetic_batch", "StepSetup", "ray_step_worker"]
