"""``road-ray bench data --resolution {gta5,cityscapes}``: the data path at the real datasets' size.

Everything else road-ray measures runs MiniCity at 256x128; GTA5 is 1914x1052 and Cityscapes
2048x1024, and at that size decoding, not the model, decides how many CPU cores a GPU needs.
This bench makes its own full-size images (``road_ray/data/fullres_synth.py``: ~3 MB PNGs,
nothing downloaded), prepares them with ``road-ray prepare`` in four variants — PNG or JPEG,
stored at full size or at the training base scale (``--resize``) — and reports per variant:

- ``stages``: CPU-ms per crop (thread CPU time, one core, in this process) split into read
  (Parquet), decode (image; label), resize+crop (the image window resampled at the drawn
  scale; the label window), flip+pack; and the crops/s per core they add up to;
- ``ray_data`` / ``dataloader``: the Ray Data train stream and a PyTorch DataLoader with one
  CPU each (``road_ray/on_ray/bench_data.py``): crops/s (wall), CPU-ms per crop of the whole
  process tree (less sensitive to other load), peak RSS of one decoding worker;
- ``psnr_db``: JPEG against PNG, at full size and at the stored scale;
- ``cores_per_gpu``: the CPU cores one GPU needs at ``gpu_steps_per_s`` steps of
  ``2 * batch`` crops (the paper's 5 + 5), from the per-core rates.

:func:`fullres_stream_rate` is the stream's rate alone, for ``road-ray bench gpu``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from road_ray.bench.common import Progress, format_table, median
from road_ray.config import DataConfig
from road_ray.data.fullres_synth import FULLRES_VERSION, ensure_raw_dataset, get_resolution
from road_ray.paths import file_lock

DEFAULTS: dict[str, Any] = {
    "images": 48,
    "crop": 321,
    "batch": 5,
    "base_scale": 0.5,
    "gpu_steps_per_s": 50.0,  # ~500 crops/s: an H100 at ~40% of its bf16 peak on the paper's step
    "steps": None,
    "seed": 0,
    "ray": True,
}
SMOKE: dict[str, Any] = {"images": 4, "crop": 64, "batch": 2, "steps": 2}
PROFILE_ROWS = 24  # rows per variant in the stage profile
JPEG_QUALITY = 95


def variants(base_scale: float) -> list[tuple[str, float]]:
    """(image format, stored scale) of the four shard variants."""
    return [("png", 1.0), ("png", base_scale), ("jpeg", 1.0), ("jpeg", base_scale)]


def variant_name(image_format: str, stored_scale: float) -> str:
    return f"{image_format}@{'full' if stored_scale == 1.0 else f'{stored_scale:g}'}"


def ensure_shards(
    resolution: str,
    images: int,
    image_format: str,
    stored_scale: float,
    *,
    seed: int = 0,
    workers: int | None = None,
    log=print,
) -> tuple[str, dict[str, Any]]:
    """The train shard folder of one variant (prepared once, cached next to the raw images), and
    how long preparing it took when it was made. ``workers``: processes (default: all cores)."""
    workers = workers or len(os.sched_getaffinity(0))
    raw = ensure_raw_dataset(resolution, images, seed=seed, workers=workers, log=log)
    out = raw.parent / f"shards-{image_format}-s{stored_scale:g}-q{JPEG_QUALITY}"
    info_path = out / "prepare_seconds.txt"
    with file_lock(raw.parent / ".shards.lock"):
        if not (out / "manifest.json").is_file():
            from road_ray.data.prepare import prepare_dataset

            log(f"[data] preparing {variant_name(image_format, stored_scale)} shards of {raw}")
            start = time.perf_counter()
            prepare_dataset(
                get_resolution(resolution).dataset,
                str(raw),
                str(out),
                num_workers=workers,
                image_format=image_format,
                jpeg_quality=JPEG_QUALITY,
                resize=stored_scale,
                progress=False,
                overwrite=True,
            )
            info_path.write_text(f"{time.perf_counter() - start:.3f}\n")
    return str(out / "train"), {"prepare_wall_s": float(info_path.read_text()) if info_path.is_file() else None}


def _rows(path: str, n: int) -> list[dict[str, Any]]:
    from road_ray.data.shards import iter_rows

    rows = []
    for row in iter_rows(path, columns=["id", "image", "label", "height", "width"]):
        rows.append(row)
        if len(rows) == n:
            break
    return rows


def profile_stages(path: str, cfg: DataConfig, rows: int = PROFILE_ROWS, seed: int = 0) -> dict[str, Any]:
    """CPU-ms per labeled crop of each stage of CropBatch's work (thread CPU time, one core)."""
    import cv2
    import pyarrow.parquet as pq

    from road_ray.data.shards import list_shard_files
    from road_ray.data.transforms import crop_image, crop_label, decode_image, decode_label, draw_window
    from road_ray.storage import open_fs

    cv2.setNumThreads(1)
    clock = time.thread_time
    start = clock()
    fs, file_path = open_fs(list_shard_files(path)[0])
    table = pq.ParquetFile(file_path, filesystem=fs).read(columns=["id", "image", "label", "height", "width"])
    batch = table.slice(0, rows).to_pylist()
    ms = {"read": (clock() - start) * 1000 / len(batch)}
    totals = dict.fromkeys(("decode_image", "decode_label", "resize_crop_image", "crop_label", "flip_pack"), 0.0)
    rng = np.random.default_rng(seed)
    for row in batch:
        t0 = clock()
        image = decode_image(row["image"])
        t1 = clock()
        label = decode_label(row["label"])
        t2 = clock()
        scale = cfg.base_scale * rng.uniform(cfg.scale_min, cfg.scale_max)
        window = draw_window((row["height"], row["width"]), cfg.crop_size, scale, rng, cfg.flip)
        crop = crop_image(image, window)
        t3 = clock()
        cropped = crop_label(label, window)
        t4 = clock()
        if window.mirrored:
            crop, cropped = crop[:, ::-1], cropped[:, ::-1]
        np.ascontiguousarray(np.moveaxis(crop, -1, -3)), np.ascontiguousarray(cropped)
        t5 = clock()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[key] += dt
    ms.update({key: 1000 * total / len(batch) for key, total in totals.items()})
    total = sum(ms.values())
    image_bytes = float(np.mean([len(r["image"]) for r in batch]))
    unlabeled = total - ms["decode_label"] - ms["crop_label"]
    return {
        "cpu_ms": ms,
        "total_cpu_ms": total,
        "crops_per_core_s": 1000 / total,
        "unlabeled_crops_per_core_s": 1000 / unlabeled,
        "image_bytes": image_bytes,
        "stored_size": list(decode_image(batch[0]["image"]).shape[:2]),
        "rows": len(batch),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def jpeg_psnr(paths: dict[str, str], base_scale: float, rows: int = 8) -> dict[str, float]:
    """PSNR (dB) of the JPEG images against the PNG ones (the lossless reference), per stored scale."""
    from road_ray.data.transforms import decode_image

    out = {}
    for scale in (1.0, base_scale):
        png = _rows(paths[variant_name("png", scale)], rows)
        jpeg = _rows(paths[variant_name("jpeg", scale)], rows)
        values = [psnr(decode_image(p["image"]), decode_image(j["image"])) for p, j in zip(png, jpeg)]
        out["full" if scale == 1.0 else f"{scale:g}"] = median(values)
    return out


def cores_per_gpu(crops_per_core_s: float, gpu_steps_per_s: float, batch: int) -> float:
    """CPU cores that feed one GPU taking ``gpu_steps_per_s`` steps of ``2 * batch`` crops."""
    return gpu_steps_per_s * 2 * batch / max(crops_per_core_s, 1e-9)


def bench(progress: Progress, resolution: str, **options: Any) -> dict[str, Any]:
    """The full-resolution data bench (module docstring); ``{"settings", "figures", "notes"}``."""
    o = {**DEFAULTS, **(SMOKE if options.get("smoke") else {}), **options}
    get_resolution(resolution)
    if o["images"] < 2 or o["batch"] < 1 or not 0 < o["base_scale"] <= 1 or o["gpu_steps_per_s"] <= 0:
        raise ValueError(
            "bench data: expected --images >= 2, --batch >= 1, --base-scale in (0, 1], --gpu-steps-per-s > 0"
        )
    cfg = DataConfig(crop_size=o["crop"], batch_source=o["batch"], batch_target=o["batch"], base_scale=o["base_scale"])
    paths, prepared = {}, {}
    for image_format, scale in variants(o["base_scale"]):
        name = variant_name(image_format, scale)
        workers = 1 if o.get("smoke") else None  # toy sizes: no process pool to start
        paths[name], prepared[name] = ensure_shards(
            resolution, o["images"], image_format, scale, seed=o["seed"], workers=workers, log=progress
        )
    progress(f"stage profile of {len(paths)} variants ({PROFILE_ROWS} rows each)")
    stages = {name: profile_stages(path, cfg, seed=o["seed"]) for name, path in paths.items()}
    streams = _measure_streams(paths, cfg, o, progress) if o["ray"] else {}
    figures = {
        name: {
            **stages[name],
            **prepared[name],
            "stream": streams.get(name),
            "cores_per_gpu": cores_per_gpu(stages[name]["crops_per_core_s"], o["gpu_steps_per_s"], o["batch"]),
        }
        for name in paths
    }
    psnr_db = jpeg_psnr(paths, o["base_scale"])
    settings = {
        "resolution": resolution,
        "image_size": [get_resolution(resolution).height, get_resolution(resolution).width],
        "images": o["images"],
        "crop": o["crop"],
        "batch_per_domain": o["batch"],
        "base_scale": o["base_scale"],
        "scale_range": [cfg.scale_min, cfg.scale_max],
        "gpu_steps_per_s": o["gpu_steps_per_s"],
        "jpeg_quality": JPEG_QUALITY,
        "fullres_version": FULLRES_VERSION,
        "device": "cpu",
        "shards": paths,
    }
    notes = [
        "stages: thread CPU time on one core in this process (OpenCV 1 thread), labeled crops; "
        "unlabeled_crops_per_core_s leaves out the label's decode and crop (the target stream)",
        "stream: one CPU for Ray Data (one task at a time) and one DataLoader worker; cpu_ms_per_crop is the "
        "whole process tree's CPU time per crop (Ray: driver, raylet, GCS, workers)",
        "cores_per_gpu = gpu_steps_per_s * 2 * batch / crops_per_core_s (stages), every core decoding",
    ]
    return {"settings": settings, "figures": {"variants": figures, "jpeg_psnr_db": psnr_db}, "notes": notes}


def _measure_streams(paths: dict[str, str], cfg: DataConfig, o: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Ray Data vs DataLoader with one CPU each, per variant (one Ray instance for all)."""
    from road_ray.on_ray.bench_data import compare_with_dataloader, ray_instance

    steps = int(o["steps"] or max(4, o["images"] // o["batch"]))
    out = {}
    with ray_instance():
        for name, path in paths.items():
            progress(f"streams on {name}: Ray Data and a DataLoader, 1 CPU each, {steps} batches")
            result = compare_with_dataloader(path, cfg, num_workers=1, steps=steps)
            out[name] = {side: result[side] for side in ("ray_data", "dataloader")} | {"load_avg": result["load_avg"]}
    return out


def fullres_stream_rate(
    resolution: str,
    *,
    images: int = 48,
    image_format: str = "jpeg",
    stored_scale: float = 0.5,
    base_scale: float = 0.5,
    crop: int = 321,
    batch: int = 5,
    workers: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Crops/s of the full-resolution train stream (for ``road-ray bench gpu``).

    On ``device="cpu"``: the Ray Data stream with ``workers`` CPUs (default: all cores) over the
    ``(image_format, stored_scale)`` shards of ``resolution``, started in its own local Ray
    instance. On a CUDA device with JPEG shards: :class:`road_ray.data.gpu_decode.DeviceCropBatch`
    in this process (labels and draws on the CPU, decode and resampling on the GPU). Returns
    ``{"crops_per_s", "cpu_ms_per_crop", "path", ...}``."""
    cfg = DataConfig(crop_size=crop, batch_source=batch, batch_target=batch, base_scale=base_scale)
    path, _ = ensure_shards(resolution, images, image_format, stored_scale, log=lambda *_: None)
    settings = {"resolution": resolution, "image_format": image_format, "stored_scale": stored_scale, "path": path}
    if device != "cpu" and image_format == "jpeg":
        return {**settings, **device_crop_rate(path, cfg, device, steps or 8)}
    from road_ray.on_ray.bench_data import ray_instance, stream_rate

    workers = workers or len(os.sched_getaffinity(0))
    with ray_instance():
        result = stream_rate(path, cfg, workers, steps or max(4, images // batch))
    return {**settings, **result, "device": "cpu"}


def device_crop_rate(path: str, cfg: DataConfig, device: str, steps: int) -> dict[str, Any]:
    """Crops/s of DeviceCropBatch on ``device`` over batches of rows held in memory; CPU-ms per
    crop of its CPU half (draws and labels)."""
    import torch

    from road_ray.data.gpu_decode import DeviceCropBatch

    rows = _rows(path, cfg.batch_source * 4)
    batches = [
        {k: np.array([r[k] for r in rows[i : i + cfg.batch_source]], dtype=object) for k in rows[0]}
        for i in range(0, len(rows) - cfg.batch_source + 1, cfg.batch_source)
    ]
    transform = DeviceCropBatch(cfg, seed=0, labeled=True, device=device)
    transform(batches[0])  # warm-up: CUDA context, nvJPEG handles
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(steps):
        transform(batches[i % len(batches)])
    sync()
    crops = steps * cfg.batch_source
    return {
        "crops_per_s": crops / (time.perf_counter() - wall0),
        "cpu_ms_per_crop": 1000 * (time.process_time() - cpu0) / crops,
        "device": device,
    }


def table(result: dict[str, Any]) -> str:
    s, f, m = result["settings"], result["figures"], result["machine"]
    rows = []
    for name, v in f["variants"].items():
        ms = v["cpu_ms"]
        split = " / ".join(f"{ms[k]:.1f}" for k in ms)
        rows.append((f"{name}: CPU-ms per crop ({' / '.join(ms)})", f"{split} = {v['total_cpu_ms']:.1f}"))
        rows.append(
            (
                f"{name}: crops/s per core (labeled / unlabeled); cores per GPU",
                f"{v['crops_per_core_s']:.1f} / {v['unlabeled_crops_per_core_s']:.1f}; {v['cores_per_gpu']:.1f}"
                f"  ({v['image_bytes'] / 1e6:.2f} MB/image, stored {v['stored_size'][1]}x{v['stored_size'][0]})",
            )
        )
        if v["stream"]:
            r, d = v["stream"]["ray_data"], v["stream"]["dataloader"]
            rows.append(
                (
                    f"{name}: Ray Data / DataLoader (1 CPU): crops/s, CPU-ms/crop, worker peak MiB",
                    f"{r['crops_per_s']:.1f} / {d['crops_per_s']:.1f}; {r['cpu_ms_per_crop']:.1f} / "
                    f"{d['cpu_ms_per_crop']:.1f}; {_mib(r)} / {_mib(d)}",
                )
            )
    rows.append(
        ("JPEG q95 vs PNG, PSNR dB (full / stored)", " / ".join(f"{v:.1f}" for v in f["jpeg_psnr_db"].values()))
    )
    title = (
        f"bench data --resolution {s['resolution']} ({s['image_size'][1]}x{s['image_size'][0]}, {s['images']} images), "
        f"crop {s['crop']}, base scale {s['base_scale']}, {s['gpu_steps_per_s']:g} GPU steps/s of "
        f"{2 * s['batch_per_domain']} crops; load {m['load_avg_start']:.1f} -> {m['load_avg_end']:.1f}"
    )
    return format_table(title, rows)


def _mib(side: dict[str, Any]) -> str:
    return "-" if side.get("worker_peak_rss_mib") is None else f"{side['worker_peak_rss_mib']:.0f}"


__all__ = ["bench", "fullres_stream_rate", "profile_stages", "ensure_shards", "cores_per_gpu", "table"]
