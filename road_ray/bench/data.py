"""``road-ray bench data``: does the input pipeline keep up, and how does it compare with a DataLoader?

On the MiniCity source-train shards (``ensure_minicity``; size "default", "small" with
``smoke``), every round measures, in a rotated order:

- ``png``: :func:`road_ray.on_ray.bench_data.compare_with_dataloader` on the shards as prepared (PNG):
  crops/s of the Ray Data stream vs a PyTorch ``DataLoader`` with the same number of CPU
  workers, the same transform and batch size, over one stream execution of batches by default
  (so each window holds one execution start, which Ray Data pays every epoch);
- ``jpeg``: the same on a JPEG (quality 95) copy of the shards, written to a temporary folder
  (what ``road-ray prepare --image-format jpeg`` would store);
- ``transform``: the transform alone (``CropBatch``: decode, random scale, crop, flip,
  normalize) in this process on rows already in memory, per encoding: the per-core cost
  without any pipeline around it;
- ``step``: the bare ROAD training step at the same crop size (``bench/step_setup.py``), whose
  crops per second (2 × batch per step) are what the stream has to deliver.

``stream_over_step`` = Ray Data crops/s (PNG) / the step's crops/s, per round, median; > 1
means the stream can feed the step (the target is 1.5: headroom for the training process).

This module loads no Ray: the measurement that needs it lives in ``road_ray/on_ray/bench_data.py``
and is imported inside :func:`bench`.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from road_ray.bench.common import (
    Progress,
    format_table,
    median,
    paired_ratio,
    resolve_device,
    resolve_precision,
    rotated,
    timed,
)
from road_ray.config import DataConfig

if TYPE_CHECKING:
    from road_ray.bench.step_setup import StepSetup

OPTIONS = ("network", "crop", "batch", "precision", "device", "workers", "steps", "repeats", "warmup", "smoke", "seed")
# With --resolution: the full-resolution bench (road_ray/bench/fullres.py) and its options.
FULLRES_OPTIONS = ("resolution", "images", "base_scale", "gpu_steps_per_s", "ray", "crop", "batch", "steps", "smoke")
OPTIONS = (*OPTIONS, *(name for name in FULLRES_OPTIONS if name not in OPTIONS))
DEFAULTS: dict[str, Any] = {
    "network": "deeplabv2-small",
    "crop": 161,
    "batch": 5,
    "precision": "auto",
    "device": "auto",
    "workers": None,
    "steps": None,
    "repeats": 3,
    "warmup": 2,
    "seed": 0,
    "size": "default",
}
SMOKE: dict[str, Any] = {"crop": 32, "batch": 2, "repeats": 1, "warmup": 1, "size": "small"}
TARGETS = {"ray_over_dataloader_min": 1.0, "stream_over_step_min": 1.5}
JPEG_QUALITY = 95
TRANSFORM_ROWS = 64  # rows per encoding held in memory for the transform-only measurement


def write_jpeg_copy(src: str, dst: str, quality: int = JPEG_QUALITY) -> dict[str, int]:
    """Copy a shard folder with every image re-encoded as JPEG (labels stay PNG); returns byte counts."""
    from road_ray.data.shards import ShardWriter, encode_jpeg, iter_rows
    from road_ray.data.transforms import decode_image

    png_bytes = jpeg_bytes = rows = 0
    with ShardWriter(dst) as writer:
        for row in iter_rows(src):
            encoded = encode_jpeg(decode_image(row["image"]), quality=quality)
            png_bytes += len(row["image"])
            jpeg_bytes += len(encoded)
            rows += 1
            writer.write({**row, "image": encoded})
    return {"rows": rows, "png_image_bytes": png_bytes, "jpeg_image_bytes": jpeg_bytes}


def _rows_in_memory(path: str, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` labeled rows of a shard folder as a numpy batch (CropBatch's input)."""
    from road_ray.data.shards import iter_rows

    rows = []
    for row in iter_rows(path, columns=["id", "image", "label"]):
        if row["label"] is not None:
            rows.append(row)
        if len(rows) == n:
            break
    return {key: np.array([r[key] for r in rows], dtype=object) for key in ("id", "image", "label")}


def _transform_crops_per_s(rows: dict[str, np.ndarray], cfg: DataConfig, seed: int) -> float:
    from road_ray.data.transforms import CropBatch

    crop = CropBatch(cfg, seed=seed, labeled=True)
    start = time.perf_counter()
    crop(rows)  # one call on all the rows, as a Ray Data task gets a whole block
    return len(rows["id"]) / (time.perf_counter() - start)


def bench(progress: Progress, **options: Any) -> dict[str, Any]:
    """Run the data bench; returns ``{"settings", "figures", "notes"}`` (see the module docstring).

    With ``resolution`` (gta5 | cityscapes): the full-resolution bench, :mod:`road_ray.bench.fullres`."""
    fullres_only = sorted(set(options) & {"images", "base_scale", "gpu_steps_per_s", "ray"})
    if options.get("resolution"):
        unknown = sorted(set(options) - set(FULLRES_OPTIONS))
        if unknown:
            raise ValueError(
                f"bench data --resolution: {', '.join('--' + k.replace('_', '-') for k in unknown)} does not apply"
            )
        from road_ray.bench import fullres

        return fullres.bench(progress, **options)
    if fullres_only:
        raise ValueError(
            f"bench data: {', '.join('--' + k.replace('_', '-') for k in fullres_only)} needs --resolution"
        )
    from road_ray.bench.step_setup import StepSetup, bench_config
    from road_ray.engine.resolve import ensure_minicity

    # The Ray side of the comparison, imported only here: `import road_ray.bench.data` loads no Ray.
    from road_ray.on_ray.bench_data import execution_rows, ray_instance

    o = {**DEFAULTS, **(SMOKE if options.get("smoke") else {}), **options}
    workers = int(o["workers"] or len(os.sched_getaffinity(0)))
    if o["repeats"] < 1 or (o["steps"] is not None and o["steps"] < 1) or workers < 1 or o["batch"] < 1:
        raise ValueError("bench data: expected --repeats, --steps, --workers and --batch >= 1")
    device = resolve_device(o["device"])
    precision = resolve_precision(o["precision"], device)
    data_cfg = DataConfig(crop_size=o["crop"], batch_source=o["batch"], batch_target=o["batch"])

    png_path = str(ensure_minicity(o["size"], log=progress) / "source_train")
    # Default: one stream execution of batches per measurement, so every window holds exactly
    # one execution start (Ray Data's per-epoch cost) wherever it falls.
    steps = int(o["steps"] or max(1, execution_rows(png_path, data_cfg) // o["batch"]))
    with tempfile.TemporaryDirectory(prefix="road-ray-bench-jpeg-", ignore_cleanup_errors=True) as tmp:
        paths = {"png": png_path, "jpeg": os.path.join(tmp, "source_train")}
        progress(f"writing a JPEG q{JPEG_QUALITY} copy of {png_path}")
        sizes = write_jpeg_copy(png_path, paths["jpeg"])
        in_memory = {kind: _rows_in_memory(path, TRANSFORM_ROWS) for kind, path in paths.items()}

        progress(f"building the ROAD step ({o['network']}, crop {o['crop']}, {o['batch']}+{o['batch']}) on {device}")
        setup = StepSetup(bench_config(o["network"], o["crop"], o["batch"], precision, None), device, o["seed"])
        for _ in range(o["warmup"]):
            setup.road_step()
        with ray_instance():
            compare, transform, step_s = _measure_rounds(
                o, paths, in_memory, data_cfg, setup, workers=workers, steps=steps, progress=progress
            )
    progress("done")
    step_crops = [2 * o["batch"] / t for t in step_s]
    return {
        "settings": _settings(o, png_path, sizes, workers, steps, device, precision),
        "figures": _figures(compare, transform, step_crops, sizes),
        "compare_with_dataloader": compare,
        "notes": [
            "ray_data vs dataloader: road_ray.on_ray.bench_data.compare_with_dataloader (same shards, transform, "
            "batch size, CPU workers; Ray Data capped at `workers` CPUs, one per task); each side first runs one "
            "untimed pass over the split, then a window of one stream execution (data.min_rows_per_execution rows)",
            "stream_over_step: the stream and the step measured one after the other, each with the machine to itself",
        ],
    }


def _measure_rounds(
    o: dict[str, Any],
    paths: dict[str, str],
    in_memory: dict[str, dict[str, np.ndarray]],
    data_cfg: DataConfig,
    setup: StepSetup,
    *,
    workers: int,
    steps: int,
    progress: Progress,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[float]], list[float]]:
    """``o["repeats"]`` rounds of png / jpeg / step in a rotated order (a Ray instance is running).

    Returns the Ray Data vs DataLoader comparisons and the transform-only crops/s per encoding,
    and the ROAD step's seconds (median of 3 steps) per round."""
    from road_ray.on_ray.bench_data import compare_with_dataloader

    compare: dict[str, list[dict[str, Any]]] = {"png": [], "jpeg": []}
    transform: dict[str, list[float]] = {"png": [], "jpeg": []}
    step_s: list[float] = []
    device = setup.device

    def measure(kind: str) -> None:
        if kind == "step":
            step_s.append(median([timed(setup.road_step, device) for _ in range(3)]))
            return
        compare[kind].append(compare_with_dataloader(paths[kind], data_cfg, num_workers=workers, steps=steps))
        transform[kind].append(_transform_crops_per_s(in_memory[kind], data_cfg, o["seed"]))

    for r in range(o["repeats"]):
        for kind in rotated(["png", "jpeg", "step"], r):
            measure(kind)
        png, jpeg = compare["png"][-1], compare["jpeg"][-1]
        progress(
            f"round {r + 1}/{o['repeats']}: crops/s Ray Data / DataLoader: png {png['ray_data']['crops_per_s']:.1f} / "
            f"{png['dataloader']['crops_per_s']:.1f}, jpeg {jpeg['ray_data']['crops_per_s']:.1f} / "
            f"{jpeg['dataloader']['crops_per_s']:.1f}; the step consumes {2 * o['batch'] / step_s[-1]:.1f}"
        )
    return compare, transform, step_s


def _settings(o, png_path, sizes, workers, steps, device, precision) -> dict[str, Any]:
    return {
        "dataset": f"MiniCity {o['size']} source_train",
        "shards": png_path,
        "rows": sizes["rows"],
        "crop": o["crop"],
        "batch_per_domain": o["batch"],
        "workers": workers,
        "steps": steps,
        "repeats": o["repeats"],
        "network": o["network"],
        "device": str(device),
        "precision": precision,
        "smoke": bool(o.get("smoke")),
        "jpeg_quality": JPEG_QUALITY,
    }


def _figures(compare, transform, step_crops, sizes) -> dict[str, Any]:
    def series(kind: str, side: str) -> list[float]:
        return [c[side]["crops_per_s"] for c in compare[kind]]

    encodings = {}
    for kind in ("png", "jpeg"):
        encodings[kind] = {
            "ray_data_crops_per_s": median(series(kind, "ray_data")),
            "dataloader_crops_per_s": median(series(kind, "dataloader")),
            "ray_over_dataloader": paired_ratio(series(kind, "ray_data"), series(kind, "dataloader")),
            "ray_data_cpu_ms_per_crop": median([c["ray_data"]["cpu_ms_per_crop"] for c in compare[kind]]),
            "dataloader_cpu_ms_per_crop": median([c["dataloader"]["cpu_ms_per_crop"] for c in compare[kind]]),
            "transform_only_crops_per_s": median(transform[kind]),
            "image_bytes_per_row": sizes[f"{kind}_image_bytes"] / sizes["rows"],
        }
    figures: dict[str, Any] = {
        "ray_over_dataloader": encodings["png"]["ray_over_dataloader"],
        "ray_data_crops_per_s": encodings["png"]["ray_data_crops_per_s"],
        "dataloader_crops_per_s": encodings["png"]["dataloader_crops_per_s"],
        "step_crops_per_s": median(step_crops),
        "stream_over_step": paired_ratio(series("png", "ray_data"), step_crops),
        "encodings": encodings,
        "jpeg_over_png": {
            "ray_data": paired_ratio(series("jpeg", "ray_data"), series("png", "ray_data")),
            "dataloader": paired_ratio(series("jpeg", "dataloader"), series("png", "dataloader")),
            "transform_only": paired_ratio(transform["jpeg"], transform["png"]),
            "bytes": sizes["jpeg_image_bytes"] / sizes["png_image_bytes"],
        },
        "ratio_method": "median over rounds of the per-round ratio (measurements interleaved, order rotated per round)",
    }
    figures["targets"] = {
        **TARGETS,
        "ray_over_dataloader_met": figures["ray_over_dataloader"] >= TARGETS["ray_over_dataloader_min"],
        "stream_over_step_met": figures["stream_over_step"] >= TARGETS["stream_over_step_min"],
    }
    return figures


def table(result: dict[str, Any]) -> str:
    if "resolution" in result["settings"]:
        from road_ray.bench import fullres

        return fullres.table(result)
    s, f, m = result["settings"], result["figures"], result["machine"]
    rows = [
        ("Ray Data crops/s (png)", f"{f['ray_data_crops_per_s']:.1f}"),
        ("DataLoader crops/s (png)", f"{f['dataloader_crops_per_s']:.1f}"),
        ("ray_over_dataloader (target >= 1.0)", f"{f['ray_over_dataloader']:.3f}"),
        ("ROAD step consumes crops/s", f"{f['step_crops_per_s']:.2f}"),
        ("stream_over_step (target >= 1.5)", f"{f['stream_over_step']:.2f}"),
    ]
    for kind, e in f["encodings"].items():
        rows.append(
            (
                f"{kind}: Ray Data / DataLoader / transform-only crops/s",
                f"{e['ray_data_crops_per_s']:.1f} / {e['dataloader_crops_per_s']:.1f} / "
                f"{e['transform_only_crops_per_s']:.1f}  ({e['image_bytes_per_row'] / 1024:.1f} KiB/image)",
            )
        )
    j = f["jpeg_over_png"]
    rows.append(
        (
            "jpeg_over_png: Ray Data / DataLoader / transform",
            f"{j['ray_data']:.2f} / {j['dataloader']:.2f} / {j['transform_only']:.2f}",
        )
    )
    title = (
        f"bench data: {s['dataset']} ({s['rows']} rows), crop {s['crop']}, batch {s['batch_per_domain']}, "
        f"{s['workers']} workers; load {m['load_avg_start']:.1f} -> {m['load_avg_end']:.1f}"
    )
    return format_table(title, rows)
