"""``road-ray bench eval``: images/s of whole-image vs sliding-window evaluation, and a host-sync audit.

On MiniCity ``target_val`` (size "default", "small" with ``smoke``), decoded once into memory so
that only the evaluation is timed, every pass over the split goes chunk by chunk (10 images),
and every chunk runs :func:`road_ray.engine.evaluate.evaluate` once with
``EvalSettings(mode="whole")`` and once with ``mode="slide"`` (window = ``crop``), in a rotated
order; images/s = median over the chunks of images / wall time (transfer to the device,
inference, entropy, confusion matrix included); ``images_per_s_overall`` = all images / all time.

The host-sync audit counts, under a ``TorchFunctionMode``, every call that makes the host wait
for the device when the tensors live on an accelerator (``bool(t)``, ``t.item()``,
``t.tolist()``, ``int(t)``/``float(t)``, ``t.numpy()``, ``t.cpu()``), with the line of road-ray
that made it. It runs two passes of different lengths and reports the difference per image, so
per-pass costs (the final ``matrix.cpu()``) cancel out: 0 means no per-image host sync. It
works on the CPU too (the calls are the same, they just cost nothing there). On CUDA it also
counts the syncs torch itself reports (``torch.cuda.set_sync_debug_mode``), which catches
kernels that sync internally (e.g. ``torch.bincount`` sizing its output).
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from road_ray.bench.common import (
    Progress,
    format_table,
    median,
    paired_ratio,
    parse_network,
    resolve_device,
    resolve_precision,
    rotated,
    spread,
    timed,
)

OPTIONS = ("network", "crop", "precision", "device", "repeats", "warmup", "images", "smoke", "seed")
DEFAULTS: dict[str, Any] = {
    "network": "deeplabv2-small",
    "crop": 161,
    "precision": "auto",
    "device": "auto",
    "repeats": 2,
    "warmup": 1,
    "images": 0,
    "seed": 0,
    "size": "default",
    "chunk": 10,
}
SMOKE: dict[str, Any] = {"crop": 32, "repeats": 1, "images": 4, "size": "small", "chunk": 2}
MODES = ("whole", "slide")
SYNC_CALLS = frozenset({"__bool__", "item", "tolist", "numpy", "__int__", "__float__", "__index__", "cpu"})
_PACKAGE = str(Path(__file__).resolve().parents[1])


class HostSyncAudit(TorchFunctionMode):
    """Counts host-sync tensor calls by ``file:line`` of the road-ray code that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_CALLS:
            self.sites[f"{_caller()} ({name})"] += 1
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = str(Path(frame.f_code.co_filename).resolve())
        if path.startswith(_PACKAGE) and not path.endswith(("bench/eval.py", "bench/common.py")):
            return f"{Path(path).relative_to(Path(_PACKAGE).parent)}:{frame.f_lineno}"
        frame = frame.f_back
    return "outside road_ray"


def load_val_batches(path: str, limit: int) -> list[dict[str, Any]]:
    """The labeled validation images as ``evaluate`` receives them (``iter_val_batches``' layout)."""
    import numpy as np

    from road_ray.data.shards import iter_rows
    from road_ray.data.transforms import WholeImageBatch

    decode = WholeImageBatch(labeled=True)
    batches = []
    for row in iter_rows(path, columns=["id", "image", "label"]):
        if row["label"] is None:
            continue
        out = decode({key: np.array([row[key]], dtype=object) for key in ("id", "image", "label")})
        image, label = torch.from_numpy(out["image"]), torch.from_numpy(out["label"])
        batches.append({"image": image, "label": label, "id": [row["id"]]})
        if limit and len(batches) == limit:
            break
    if not batches:
        raise ValueError(f"bench eval: {path} holds no labeled image")
    return batches


def audit_host_syncs(run_pass, batches: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Host-sync calls per image: passes over 1 and over ``len(batches)`` images, difference / images."""
    n = len(batches)
    counts = []
    cuda_syncs = []
    for subset in (batches[:1], batches):
        with HostSyncAudit() as audit:
            if device.type == "cuda":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        run_pass(subset)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                cuda_syncs.append(sum("synchroniz" in str(w.message) for w in caught))
            else:
                run_pass(subset)
        counts.append(audit.sites)
    per_image = {site: (counts[1][site] - counts[0].get(site, 0)) / max(n - 1, 1) for site in counts[1]}
    per_image = {site: v for site, v in per_image.items() if v > 0}
    return {
        "images": n,
        "host_sync_calls_per_image": sum(per_image.values()),
        "sites_per_image": per_image,
        "sites_per_pass": dict(counts[1]),
        "cuda_reported_syncs_per_image": (cuda_syncs[1] - cuda_syncs[0]) / max(n - 1, 1) if cuda_syncs else None,
    }


def bench(progress: Progress, **options: Any) -> dict[str, Any]:
    """Run the eval bench; returns ``{"settings", "figures", "notes"}`` (see the module docstring)."""
    from road_ray.engine.resolve import ensure_minicity

    o = {**DEFAULTS, **(SMOKE if options.get("smoke") else {}), **options}
    if o["repeats"] < 1 or o["crop"] < 16 or o["images"] < 0:
        raise ValueError("bench eval: expected --repeats >= 1, --crop >= 16, --images >= 0")
    device = resolve_device(o["device"])
    precision = resolve_precision(o["precision"], device)

    path = str(ensure_minicity(o["size"], log=progress) / "target_val")
    batches = load_val_batches(path, o["images"])
    progress(f"{len(batches)} images of {path} in memory; building {o['network']} on {device} ({precision})")
    run_pass = _pass_runner(o, device, precision)
    for _ in range(o["warmup"]):
        for mode in MODES:
            run_pass(mode, batches[: min(len(batches), 4)])
    rates, seconds = _time_chunks(run_pass, batches, o["chunk"], o["repeats"], device, progress)
    progress("auditing host syncs (whole and slide)")
    audit_batches = batches[: min(len(batches), 4)]
    audits = {
        mode: audit_host_syncs(lambda subset, mode=mode: run_pass(mode, subset), audit_batches, device)
        for mode in MODES
    }
    progress("done")
    n = len(batches)
    return {
        "settings": _settings(o, path, batches, device, precision),
        "figures": {
            "images_per_s": {mode: median(v) for mode, v in rates.items()},
            "images_per_s_spread": {mode: spread(v) for mode, v in rates.items()},
            "images_per_s_overall": {mode: n * o["repeats"] / t for mode, t in seconds.items()},
            "slide_over_whole_time": paired_ratio(rates["whole"], rates["slide"]),
            "host_syncs": audits,
            "confusion_matrix_on_device": True,
            "per_image_host_sync_free": all(a["host_sync_calls_per_image"] == 0 for a in audits.values()),
        },
        "notes": [
            "evaluate() keeps the confusion matrix (ConfusionMatrix(device=...)) and its totals "
            "[entropy sum, pixels, images, labeled] on the device and reads them once per pass (totals.tolist(), "
            "cm.matrix.cpu()); host_syncs lists every remaining per-image host sync by source line",
        ],
    }


def _random_model(network: str, device: torch.device, seed: int) -> torch.nn.Module:
    """A random-weight segmenter of ``network`` on ``device`` (channels_last on CUDA, as build_objective)."""
    from road_ray.config import ModelConfig
    from road_ray.models import build_segmenter

    arch, backbone = parse_network(network)
    torch.manual_seed(seed)
    model = build_segmenter(ModelConfig(arch=arch, backbone=backbone, pretrained="none")).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def _pass_runner(o: dict[str, Any], device: torch.device, precision: str):
    """``run_pass(mode, batches)``: one ``evaluate`` of a random-weight network over ``batches``."""
    from road_ray.engine.evaluate import EvalSettings, evaluate
    from road_ray.labels import get_label_space

    amp = torch.bfloat16 if precision == "bf16" else None
    model = _random_model(o["network"], device, o["seed"])
    label_space = get_label_space("cityscapes19")
    settings = {mode: EvalSettings(mode=mode, scale=1.0, window=o["crop"], autocast_dtype=amp) for mode in MODES}

    def run_pass(mode: str, subset: list[dict[str, Any]]) -> dict[str, Any]:
        scores = evaluate(model, subset, label_space, settings[mode], device)
        if scores["images"] != len(subset):
            raise RuntimeError(f"bench eval: evaluate saw {scores['images']} images, expected {len(subset)}")
        return scores

    return run_pass


def whole_image_rate(
    network: str,
    device: torch.device,
    precision: str,
    *,
    label_hw: tuple[int, int] = (1024, 2048),
    scale: float = 0.5,
    images: int = 8,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Images/s of whole-image evaluation at ``scale`` of ``label_hw`` images (default: the network sees
    1024×512, its logits are upsampled to the 2048×1024 labels, the paper's Cityscapes protocol).

    Synthetic uint8-range images and labels, in memory; each of ``repeats`` passes over ``images``
    images is one ``evaluate`` call (transfer, inference, entropy, confusion matrix included)."""
    from road_ray.engine.evaluate import EvalSettings, evaluate
    from road_ray.labels import NUM_CLASSES, get_label_space

    model = _random_model(network, device, seed)
    g = torch.Generator().manual_seed(seed)
    h, w = label_hw
    batches = [
        {
            "image": torch.rand(1, 3, h, w, generator=g) * 2 - 1,
            "label": torch.randint(0, NUM_CLASSES, (1, h, w), generator=g),
            "id": [f"synthetic-{i}"],
        }
        for i in range(images)
    ]
    amp = torch.bfloat16 if precision == "bf16" else None
    settings = EvalSettings(mode="whole", scale=scale, autocast_dtype=amp)
    space = get_label_space("cityscapes19")
    evaluate(model, batches[:1], space, settings, device)  # warm-up: allocations, cuDNN algorithms
    seconds = [timed(lambda: evaluate(model, batches, space, settings, device), device) for _ in range(repeats)]
    return {
        "network": network,
        "label_size": f"{w}x{h}",
        "network_input": f"{round(w * scale)}x{round(h * scale)}",
        "images_per_pass": images,
        "precision": precision,
        "images_per_s": images / median(seconds),
        "pass_s": spread(seconds),
    }


def _time_chunks(run_pass, batches, chunk: int, repeats: int, device: torch.device, progress: Progress):
    """Images/s per chunk and mode, and each mode's total seconds, over ``repeats`` passes.

    Short measurements interleaved often pair better on a machine whose load changes by the
    second: every pass over the split goes chunk by chunk, each chunk in both modes."""
    n = len(batches)
    chunks = [batches[i : i + chunk] for i in range(0, n, chunk)]
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    seconds = {mode: 0.0 for mode in MODES}
    for rep in range(repeats):
        for c, part in enumerate(chunks):
            for mode in rotated(list(MODES), rep * len(chunks) + c):
                t = timed(lambda m=mode, ch=part: run_pass(m, ch), device)
                rates[mode].append(len(part) / t)
                seconds[mode] += t
        recent = {mode: median(values[-len(chunks) :]) for mode, values in rates.items()}
        shown = ", ".join(f"{mode} {value:.2f}" for mode, value in recent.items())
        progress(f"pass {rep + 1}/{repeats} over {n} images: images/s (median over chunks) {shown}")
    return rates, seconds


def _settings(o: dict[str, Any], path: str, batches, device: torch.device, precision: str) -> dict[str, Any]:
    return {
        "dataset": f"MiniCity {o['size']} target_val",
        "shards": path,
        "images": len(batches),
        "network": o["network"],
        "window": o["crop"],
        "scale": 1.0,
        "chunk": o["chunk"],
        "image_size": list(batches[0]["image"].shape[-2:]),
        "precision": precision,
        "device": str(device),
        "repeats": o["repeats"],
        "warmup": o["warmup"],
        "smoke": bool(o.get("smoke")),
        "pretrained": "none (random weights: fine for timing)",
    }


def table(result: dict[str, Any]) -> str:
    s, f, m = result["settings"], result["figures"], result["machine"]
    rows = [(f"images/s: {mode}", f"{v:.2f}") for mode, v in f["images_per_s"].items()]
    rows.append(("slide time / whole time", f"{f['slide_over_whole_time']:.2f}"))
    for mode, audit in f["host_syncs"].items():
        sites = "; ".join(f"{k} x{v:g}" for k, v in audit["sites_per_image"].items()) or "none"
        rows.append((f"host syncs per image ({mode})", f"{audit['host_sync_calls_per_image']:g}: {sites}"))
        if audit["cuda_reported_syncs_per_image"] is not None:
            rows.append((f"CUDA-reported syncs per image ({mode})", f"{audit['cuda_reported_syncs_per_image']:g}"))
    title = (
        f"bench eval: {s['dataset']} ({s['images']} images {s['image_size'][0]}x{s['image_size'][1]}), "
        f"window {s['window']}, {s['device']} {s['precision']}; load {m['load_avg_start']:.1f} -> "
        f"{m['load_avg_end']:.1f}"
    )
    return format_table(title, rows)
