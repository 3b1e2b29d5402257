"""Peak memory of ``road-ray prepare`` and of a train stream at two dataset sizes (issue #17, 3).

``python -m road_ray.bench.fullres_memory --resolution gta5 --images 200 2000`` prepares each
size from full-size images (``road_ray/data/fullres_synth.py``; ``--distinct`` rendered, the
rest links to them, so 2000 images cost the disk of 200), each in a fresh process, and reports
the peak RSS of the writing process and of its largest worker (``getrusage``); then streams one
pass of crops through Ray Data (``stream_rate``, all cores) and reports the peak RSS of the
driver and of the largest Ray worker (``VmHWM``). Bounded memory means the peaks do not grow
with the number of images. Prepared shards go to a temporary folder under ``--tmp``, removed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from road_ray import jsonio


def prepare_child(resolution: str, root: str, out: str, image_format: str, resize: float) -> dict[str, Any]:
    """Run in a fresh process: prepare, then its own and its largest child's peak RSS (MiB)."""
    import time

    from road_ray.data.fullres_synth import get_resolution
    from road_ray.data.prepare import prepare_dataset

    start = time.perf_counter()
    dataset = get_resolution(resolution).dataset
    manifest = prepare_dataset(dataset, root, out, image_format=image_format, resize=resize, progress=False)
    return {
        "rows": manifest["splits"]["train"]["rows"],
        "wall_s": time.perf_counter() - start,
        "writer_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def stream_child(path: str, crop: int, batch: int, base_scale: float) -> dict[str, Any]:
    """Run in a fresh process: one pass of the train stream; peak RSS of the driver and the workers."""
    from road_ray.bench import proctree
    from road_ray.config import DataConfig
    from road_ray.data.shards import count_rows
    from road_ray.on_ray.bench_data import ray_instance, stream_rate

    cfg = DataConfig(crop_size=crop, batch_source=batch, batch_target=batch, base_scale=base_scale)
    with ray_instance():
        result = stream_rate(path, cfg, len(os.sched_getaffinity(0)), max(1, count_rows(path) // batch))
        driver = proctree.peak_rss_mib([os.getpid()])[os.getpid()]
    return {**result, "driver_peak_rss_mib": driver}


def run_child(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "road_ray.bench.fullres_memory", "--child", *argv], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"fullres_memory child {argv[0]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(resolution: str, images: int, distinct: int, tmp: str, fmt: str, resize: float) -> dict[str, Any]:
    from road_ray.data.fullres_synth import ensure_raw_dataset

    raw = ensure_raw_dataset(resolution, images, distinct=distinct, workers=len(os.sched_getaffinity(0)))
    out = tempfile.mkdtemp(prefix=f"fullres-mem-{images}-", dir=tmp)
    try:
        load = os.getloadavg()[0]
        prepare = run_child("prepare", resolution, str(raw), out, fmt, str(resize))
        stream = run_child("stream", os.path.join(out, "train"), "321", "5", "0.5")
        return {"images": images, "prepare": prepare, "stream": stream, "load_avg": [load, os.getloadavg()[0]]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs="+")
    p.add_argument("--resolution", default="gta5")
    p.add_argument("--images", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--distinct", type=int, default=200)
    p.add_argument("--image-format", default="jpeg")
    p.add_argument("--resize", type=float, default=0.5)
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            result = prepare_child(rest[0], rest[1], rest[2], rest[3], float(rest[4]))
        else:
            result = stream_child(rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
        print(jsonio.dumps(result))
        return
    results = [
        measure(args.resolution, n, args.distinct, args.tmp, args.image_format, args.resize) for n in args.images
    ]
    text = jsonio.dumps({"settings": vars(args), "results": results}, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
