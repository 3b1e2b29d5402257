"""The Ray side of ``road-ray bench data``: crops/s of a Ray Data train stream vs a PyTorch
``DataLoader`` on the same shards, with the same transform, batch size and CPU budget.

The bench itself (rounds, figures, table) is ``road_ray/bench/data.py``; it imports this
module only inside the function that runs the measurement.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from ray.data import ExecutionResources

from road_ray.bench import proctree
from road_ray.config import DataConfig
from road_ray.data.shards import count_rows, list_shard_files
from road_ray.data.transforms import CropBatch
from road_ray.on_ray.data import endless_batches, execution_rows, train_stream
from road_ray.on_ray.train import ray_instance
from road_ray.storage import open_fs

__all__ = ["compare_with_dataloader", "execution_rows", "ray_instance", "stream_rate"]
# What the DataLoader side reads, as the Ray stream does (height/width: the original size).
COLUMNS = ["id", "image", "label", "height", "width"]


class ShardCrops(torch.utils.data.IterableDataset):
    """The DataLoader side of :func:`compare_with_dataloader`: the same Parquet files read with
    pyarrow (row groups dealt round-robin to the loader's workers) and the same transform,
    applied one row at a time (what a torch Dataset does)."""

    def __init__(self, path: str, cfg: DataConfig, seed: int):
        self.files = list_shard_files(path)
        self.crop = CropBatch(cfg, seed=seed, labeled=True)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        unit = 0
        for uri in self.files:
            fs, file_path = open_fs(uri)
            pf = pq.ParquetFile(file_path, filesystem=fs)
            for group in range(pf.num_row_groups):
                unit += 1
                if unit % workers != worker:
                    continue
                yield from self._crops(pf.read_row_group(group, columns=COLUMNS))

    def _crops(self, table) -> Iterator[dict[str, np.ndarray]]:
        for row in table.to_pylist():
            if row["label"] is None:
                continue
            one = {k: np.array([row[k]], dtype=object) for k in COLUMNS}
            out = self.crop(one)
            yield {"image": out["image"][0], "label": out["label"][0], "box": out["box"][0]}


def _tree_cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) per process of this process tree: with a local Ray instance that
    is the raylet, GCS and every Ray worker; with a DataLoader, its workers (``/proc``)."""
    return proctree.cpu_seconds()


def _cpu_seconds_since(before: dict[int, float]) -> float:
    # per process, so that a process exiting meanwhile (Ray reaps idle workers) does not
    # subtract its whole history; its last moments are lost (a small underestimate)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in _tree_cpu_seconds().items())


def _ray_worker_pids() -> list[int]:
    """The Ray worker processes of the local instance (they run the read and crop tasks)."""
    return [pid for pid in proctree.descendants() if proctree.is_ray_worker(pid)]


def _loader_worker_pids() -> list[int]:
    """A DataLoader's worker processes: this process's children forked from it (same command line)."""
    me = os.getpid()
    mine = proctree.cmdline(me)
    return [pid for pid in proctree.descendants() if pid != me and proctree.cmdline(pid) == mine]


def _crops_per_second(
    batches: Iterator[dict[str, torch.Tensor]], steps: int, batch_size: int, warmup: int, workers: Callable
) -> dict[str, float]:
    """Time ``steps`` batches after ``warmup`` batches (start-up: worker processes, imports).

    ``worker_peak_rss_mib``: the largest peak resident memory of one decoding process (Ray
    worker or DataLoader worker), counted from the start of this measurement."""
    proctree.reset_peaks(proctree.descendants())
    start = time.perf_counter()
    for _ in range(warmup):
        first = next(batches)
    if first["image"].shape[0] != batch_size:
        raise RuntimeError(f"benchmark: expected batches of {batch_size} crops, got {first['image'].shape[0]}")
    warm, cpu_warm = time.perf_counter(), _tree_cpu_seconds()
    for _ in range(steps):
        next(batches)
    end, cpu = time.perf_counter(), _cpu_seconds_since(cpu_warm)
    peaks = proctree.peak_rss_mib(workers())
    batches.close()
    crops = steps * batch_size
    return {
        "warmup_s": warm - start,
        "crops_per_s": crops / max(end - warm, 1e-9),
        # robust to other load on the machine: CPU time of the whole process tree per crop
        "cpu_ms_per_crop": 1000 * cpu / crops,
        "worker_peak_rss_mib": max(peaks.values(), default=None),
        "workers_seen": len(peaks),
    }


def _ray_data_batches(path: str, cfg: DataConfig, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """The train stream with one CPU per task and at most ``num_workers`` CPUs in all."""
    ds = train_stream(path, dataclasses.replace(cfg, cpus_per_map_task=1.0), seed=0, labeled=True)
    ds.context.execution_options.resource_limits = ExecutionResources(cpu=num_workers)
    return endless_batches(
        ds,
        name="bench",
        columns=("image", "label", "box"),
        batch_size=cfg.batch_source,
        prefetch_batches=cfg.prefetch_batches,
        device="cpu",
        shuffle_buffer=0,
    )


def _dataloader_batches(path: str, cfg: DataConfig, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """The same crops from a DataLoader with ``num_workers`` processes, re-opened at every epoch end."""
    loader = torch.utils.data.DataLoader(
        ShardCrops(path, cfg, seed=0),
        batch_size=cfg.batch_source,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        prefetch_factor=cfg.prefetch_batches if num_workers > 0 else None,
    )
    while True:
        yield from loader


def compare_with_dataloader(path: str, cfg: DataConfig, num_workers: int, steps: int) -> dict[str, Any]:
    """Crops/s of the Ray Data stream vs a ``torch.utils.data.DataLoader`` with ``num_workers``
    processes, on the same labeled shards with the same transform and batch size.

    Ray Data gets the same CPU budget: ``resource_limits.cpu = num_workers`` and one CPU per
    task, i.e. at most ``num_workers`` processes decoding and cropping, like the DataLoader
    (``cfg.cpus_per_map_task`` is ignored here). Both re-open their stream when an epoch ends.
    Each side first runs one pass over the split untimed (start-up, reported as ``warmup_s``),
    then ``steps`` timed batches (the bench takes one execution's worth: every window then
    holds one execution start of Ray Data, wherever it falls). ``cpu_ms_per_crop`` is the CPU
    time of the whole process tree (for Ray: driver, raylet, GCS, workers) per crop, less
    distorted by other load on the machine than the wall-clock rates; ``load_avg`` tells how
    busy the machine was. Needs a running local Ray instance (:func:`ray_instance` or ``ray.init``).
    """
    batch = cfg.batch_source
    warmup = max(1, count_rows(path) // batch)  # one pass: worker processes started, imports done
    load_before = os.getloadavg()[0]
    ray_batches, loader_batches = _ray_data_batches(path, cfg, num_workers), _dataloader_batches(path, cfg, num_workers)
    ray_result = _crops_per_second(ray_batches, steps, batch, warmup, _ray_worker_pids)
    loader_result = _crops_per_second(loader_batches, steps, batch, warmup, _loader_worker_pids)
    return {
        "num_workers": num_workers,
        "steps": steps,
        "batch_size": batch,
        "crop_size": cfg.crop_size,
        "ray_data": ray_result,
        "dataloader": loader_result,
        # > 1: Ray Data is faster / spends less CPU per crop than the DataLoader
        "ratio": ray_result["crops_per_s"] / loader_result["crops_per_s"],
        "cpu_ratio": loader_result["cpu_ms_per_crop"] / max(ray_result["cpu_ms_per_crop"], 1e-9),
        "load_avg": [load_before, os.getloadavg()[0]],
    }


def stream_rate(path: str, cfg: DataConfig, num_workers: int, steps: int) -> dict[str, Any]:
    """Crops/s, CPU-ms per crop and peak worker memory of the Ray Data train stream alone (the
    Ray side of :func:`compare_with_dataloader`, same budget of ``num_workers`` CPUs), after one
    untimed pass. Needs a running local Ray instance."""
    warmup = max(1, count_rows(path) // cfg.batch_source)
    load_before = os.getloadavg()[0]
    result = _crops_per_second(
        _ray_data_batches(path, cfg, num_workers), steps, cfg.batch_source, warmup, _ray_worker_pids
    )
    return {**result, "num_workers": num_workers, "steps": steps, "load_avg": [load_before, os.getloadavg()[0]]}
