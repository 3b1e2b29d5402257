"""Ray Data streams of shards and the mixed-domain step iterator.

How fast these streams are next to a PyTorch ``DataLoader`` is measured by ``road-ray bench
data`` (``road_ray/on_ray/bench_data.py``).

The flow, per domain::

    Parquet shards --read_parquet (file order shuffled every execution; small splits read
      their files several times per execution, see below)--> rows {id, image, label}
      --with_column(crop_nonce = random(seed), new values every execution)-->
      --map_batches(CropBatch, whole blocks) on fractional-CPU tasks--> rows {image, label, box, id}
      --streaming_split(n, equal=True) in Ray Train--> one DataIterator per worker
      --iter_torch_batches(drop_last, local shuffle)--> tensors

and :func:`mixed_domain_batches` zips a source batch with a target batch every step.

Why not ``randomize_block_order()``: in this Ray it is an all-to-all operator that waits for
*every* block of the split before emitting the first one, i.e. it reads the whole split into
the object store (spilling to disk) each epoch. We shuffle the order of the shard files at read
time instead (``FileShuffleConfig(reseed_after_execution=True)``: a new order every execution,
streaming) and mix rows with a local shuffle buffer in the iterator. Memory stays bounded by
a few blocks per operator whatever the split's size.

Why whole blocks per ``map_batches`` call: with a row count (``batch_size=16``) after the
label filter, Ray does not fuse the read into the crop (the filter may change row counts), so
every block took two tasks and a trip through the object store, and the two operators split
the CPU budget between them. With whole blocks, read -> filter -> nonce -> crop is one task
per read task whenever the split has enough files for Ray not to split its blocks (shards of
at most ``shards.DEFAULT_SHARD_ROWS`` rows).

Why several passes per execution (``DataConfig.min_rows_per_execution``): Ray Data learns the
CPUs it may use from its autoscaling coordinator, asynchronously; each new execution (each
epoch of a stream) therefore runs its first ~1 s with a resource limit of zero, i.e. one task
at a time (measured with Ray 2.60 on 2 CPUs: limits 0.0 for 1.0-3.1 s after every execution
start, then 2.0). On MiniCity's 600-image source split a pass takes ~1 s, so every pass ran
mostly serialized; reading the files ``passes`` times per execution pays that start once per
``passes`` passes. An "epoch" of a train stream below means one execution.

Deployment note (measured on 2 CPUs): with fractional CPUs per task (``cpus_per_map_task <
1``) more Ray worker processes run than the node has CPUs, and Ray keeps only
``num_workers_soft_limit`` (default: the CPU count) of them once idle, so every epoch starts
fresh workers that re-import pyarrow/OpenCV (seconds of CPU each; epochs took 7-9 s instead
of 2-3 s). Whoever starts Ray should raise it, e.g. ``RAY_num_workers_soft_limit=8`` in the
environment of ``ray start``/``ray.init``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from ray.data import DataContext, DataIterator, Dataset, FileShuffleConfig
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.expressions import col
from ray.data.expressions import random as random_expr

from road_ray.config import DataConfig
from road_ray.data.shards import count_rows, list_shard_files
from road_ray.data.transforms import NONCE_COLUMN, CropBatch, WholeImageBatch
from road_ray.storage import open_fs

# Reads of at least this many files (passes included) get one task per file (read_shards).
FILES_FOR_ONE_TASK_PER_FILE = 8
# At most this many passes per train-stream execution, whatever min_rows_per_execution asks:
# enough to amortize an execution's start-up; tiny splits (tests) stay cheap to plan.
MAX_PASSES_PER_EXECUTION = 16
# Local shuffle buffer of the step iterator when none is given: this many batches of rows.
DEFAULT_SHUFFLE_BATCHES = 8
# Read shards with Ray Data's DataSourceV2 Parquet reader (slow per-epoch start, see read_shards).
USE_DATASOURCE_V2 = False
# Set ROAD_RAY_DATA_VERBOSE=1 to keep Ray Data's progress bars and per-execution log lines.
VERBOSE_ENV = "ROAD_RAY_DATA_VERBOSE"

Stream = DataIterator | Dataset


# ---------------------------------------------------------------------------------------
# Datasets


def _quiet(ds: Dataset) -> Dataset:
    """Silence this dataset's progress bars and per-execution logs (one set per epoch otherwise).

    The settings live on the dataset's own DataContext, so they travel with it into Train's
    split coordinator and do not touch other datasets of the process.
    """
    if _verbose():
        return ds
    ctx = ds.context
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    _quiet_loggers()
    return ds


def _quiet_loggers() -> None:
    """Ray Data lines logged unconditionally: "Dataset ... execution finished in N seconds" (every
    epoch), the Parquet reader's size estimates (every read) and "Progress bars disabled"."""
    if _verbose():
        return
    for name, level in [
        ("ray.data._internal.execution.streaming_executor", logging.WARNING),
        ("ray.data._internal.datasource.parquet_datasource", logging.WARNING),
        ("ray.data._internal.progress", logging.ERROR),
    ]:
        logging.getLogger(name).setLevel(level)


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def read_shards(
    path: str,
    *,
    columns: list[str] | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
    num_cpus: float | None = None,
    passes: int = 1,
) -> Dataset:
    """Stream the rows of a shard folder (local path or URI) as a Ray Dataset.

    Args:
        path: a shard folder of ``part-*.parquet`` files (``road_ray.data.shards``); a missing or
            empty folder is a ValueError naming it, before Ray plans anything.
        columns: the columns to read (projection pushed down into the Parquet scan).
        shuffle_files: read the files in a new random order at every execution (epoch).
        seed: makes that order reproducible (still different per epoch).
        num_cpus: CPUs reserved by each read task (fractional on small machines).
        passes: read every file this many times per execution (see the module docstring).
    """
    if passes < 1:
        raise ValueError(f"read_shards {path}: expected passes >= 1, got {passes}")
    files = list_shard_files(path) * passes
    _quiet_loggers()
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle_files else None
    # Ray 2.60 routes read_parquet through "DataSourceV2" by default: a ListFiles task that
    # costs 2-8 s per execution here (vs ~0.15 s for the V1 reader), and our streams execute
    # once per epoch. The V1 reader does everything we need (projection/filter pushdown,
    # per-epoch file shuffle); the flag is read when the dataset is built.
    ctx = DataContext.get_current()
    saved = ctx.use_datasource_v2, ctx.enable_progress_bars
    ctx.use_datasource_v2 = USE_DATASOURCE_V2
    ctx.enable_progress_bars = ctx.enable_progress_bars and _verbose()  # the footer-sampling bar
    # One read task per file once there are enough files to keep the CPUs busy: left to
    # itself, Ray splits the blocks of a read whose data it deems large for its task count,
    # and a split read is not fused with the crop that follows (module docstring).
    blocks = len(files) if len(files) >= FILES_FOR_ONE_TASK_PER_FILE else None
    try:
        ds = ray.data.read_parquet(files, shuffle=shuffle, num_cpus=num_cpus, override_num_blocks=blocks)
    finally:
        ctx.use_datasource_v2, ctx.enable_progress_bars = saved
    if columns is not None:
        ds = ds.select_columns(list(columns))
    return _quiet(ds)


def train_stream(path: str, cfg: DataConfig, *, seed: int, labeled: bool) -> Dataset:
    """Random crops of one domain's train split: rows ``{image, box, id}`` (+ ``label`` if labeled).

    ``image`` uint8 [3,c,c] (normalized on the device by the loop), ``label`` uint8 [c,c] (255 = ignore),
    ``box`` float32 [8] (``road_ray.data.boxes``). A labeled stream keeps only the rows that
    have a label (filter pushed into the scan); an unlabeled one does not even read labels.
    Every execution of the returned dataset (every epoch) cuts new crops (see CropBatch); an
    execution holds :func:`passes_per_execution` passes over the split.
    """
    cpus = cfg.cpus_per_map_task
    # height/width: the original image's size, which CropBatch needs for shards stored at a
    # reduced size (road-ray prepare --resize); two int32 columns, nothing to decode.
    columns = ["id", "image", "height", "width"] + (["label"] if labeled else [])
    passes = passes_per_execution(path, cfg)
    ds = read_shards(path, columns=columns, shuffle_files=True, seed=seed, num_cpus=cpus, passes=passes)
    if labeled:
        ds = ds.filter(expr=col("label").is_not_null(), num_cpus=cpus)
    ds = ds.with_column(NONCE_COLUMN, random_expr(seed=seed, reseed_after_execution=True), num_cpus=cpus)
    ds = ds.map_batches(
        CropBatch(cfg, seed=seed, labeled=labeled),  # an instance, not a class: stateless tasks
        batch_format="numpy",
        batch_size=None,  # whole blocks: lets Ray fuse the read into this task (module docstring)
        num_cpus=cpus,
    )
    # The rows keep CropBatch's "id" (which image a crop came from): dropping it would cost a
    # separate Project stage (one more task per block), as Ray does not fuse it into the UDF.
    return _quiet(ds)


def passes_per_execution(path: str, cfg: DataConfig) -> int:
    """How many passes over the split at ``path`` one train-stream execution reads: enough to
    hold ``cfg.min_rows_per_execution`` rows (1 when that is 0 or the split is larger), at most
    ``MAX_PASSES_PER_EXECUTION``."""
    if cfg.min_rows_per_execution <= 0:
        return 1
    passes = -(-cfg.min_rows_per_execution // max(count_rows(path), 1))
    return max(1, min(passes, MAX_PASSES_PER_EXECUTION))


def execution_rows(path: str, cfg: DataConfig) -> int:
    """Rows one train-stream execution of the split at ``path`` reads (unlabeled ones included)."""
    return count_rows(path) * passes_per_execution(path, cfg)


def val_stream(path: str, cfg: DataConfig, *, max_images: int = 0, labeled: bool = True) -> Dataset:
    """Whole labeled images of a validation split: rows ``{image [3,H,W], label [H,W], id}``.

    Unlabeled rows are skipped; with ``labeled=False`` every row is taken, without its label
    (the unlabelled target-train images the label-free validators see). ``max_images`` (or, when 0, ``cfg.max_val_images``) caps the
    number of images, 0 meaning the whole split; the subset is the first labeled rows in shard
    order, the same at every evaluation (``Dataset.limit`` would take whichever rows stream in
    first). Images are decoded one per task call, so a split may mix image sizes.
    """
    cpus = cfg.cpus_per_map_task
    ds = read_shards(path, columns=["id", "image", "label"] if labeled else ["id", "image"], num_cpus=cpus)
    if labeled:
        ds = ds.filter(expr=col("label").is_not_null(), num_cpus=cpus)
    limit = max_images if max_images > 0 else cfg.max_val_images
    if limit > 0:
        ds = ds.filter(expr=col("id").is_in(_first_ids(path, limit, labeled)), num_cpus=cpus)
    ds = ds.map_batches(WholeImageBatch(labeled=labeled), batch_format="numpy", batch_size=1, num_cpus=cpus)
    return _quiet(ds)


def _first_ids(path: str, n: int, labeled: bool = True) -> list[str]:
    """The ids of the first ``n`` (labeled) rows of a shard folder, in file order (reads only those)."""
    ids: list[str] = []
    for uri in list_shard_files(path):
        fs, file_path = open_fs(uri)
        for batch in pq.ParquetFile(file_path, filesystem=fs).iter_batches(batch_size=64, columns=["id", "label"]):
            keep = batch.column("label").is_valid().to_pylist() if labeled else [True] * batch.num_rows
            ids.extend(i for i, ok in zip(batch.column("id").to_pylist(), keep) if ok)
            if len(ids) >= n:
                return ids[:n]
    return ids


# ---------------------------------------------------------------------------------------
# Iterators (run inside the Train workers)


class _TensorColumns(NumpyBatchCollateFn):
    """Collate: the named numpy columns of a batch as CPU tensors (Ray moves them to the device)."""

    def __init__(self, columns: Iterable[str]):
        self.columns = tuple(columns)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.columns:
            array = np.ascontiguousarray(batch[name])
            if not array.flags.writeable:  # zero-copy views of Arrow buffers are read-only
                array = array.copy()
            out[name] = torch.from_numpy(array)
        return out


def endless_batches(
    stream: Stream,
    *,
    name: str,
    columns: tuple[str, ...],
    batch_size: int,
    prefetch_batches: int,
    device: str | torch.device,
    shuffle_buffer: int | None,
    shuffle_seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Full batches of ``stream`` forever: a new epoch (a new execution: new crops, new file
    order) starts whenever one ends. On a ``streaming_split`` iterator every epoch start is a
    barrier across the splits, which ``equal=True`` keeps in step (equal rows -> equal batches).
    ``shuffle_seed``: seeds the local shuffle (``shuffle_seed + epoch``); None leaves it unseeded."""
    if shuffle_buffer is None:
        shuffle_buffer = DEFAULT_SHUFFLE_BATCHES * batch_size
    buffer = max(shuffle_buffer, batch_size) if shuffle_buffer > 0 else None
    epoch = 0
    while True:
        batches = 0
        for batch in stream.iter_torch_batches(
            batch_size=batch_size,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=buffer,
            local_shuffle_seed=None if shuffle_seed is None or buffer is None else shuffle_seed + epoch,
            drop_last=True,
            collate_fn=_TensorColumns(columns),
            device=device,
        ):
            batches += 1
            yield batch
        if batches == 0:
            raise RuntimeError(
                f"the {name} stream holds fewer rows than one batch of {batch_size} "
                f"(after splitting across workers): no step can be taken; use more data or a smaller batch"
            )
        epoch += 1


def mixed_domain_batches(
    source_it: Stream,
    target_it: Stream,
    *,
    batch_source: int,
    batch_target: int,
    prefetch_batches: int,
    device: str | torch.device = "cpu",
    shuffle_buffer: int | None = None,
    shuffle_seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """One step batch per iteration, forever (the batch contract of docs/ARCHITECTURE.md).

    Yields ``{"source_image" [Bs,3,h,w], "source_label" int64 [Bs,h,w], "source_box" [Bs,8],
    "target_image" [Bt,3,h,w], "target_box" [Bt,8]}``, always full batches. The two streams
    are zipped per step (not ``Dataset.zip``, which needs equal row counts) and each re-opens
    on its own when it ends, so the training loop decides the number of steps.

    ``source_it``/``target_it``: what ``ray.train.get_dataset_shard`` returns (a DataIterator
    of Train's ``streaming_split(n, equal=True)``: every rank gets the same rows per epoch, hence
    the same number of full batches, so all ranks reach each epoch start, a barrier across the
    splits, at the same step) or a Dataset. Every rank must keep taking steps: a rank that
    stops iterating holds the others at the next epoch start.
    ``shuffle_buffer``: rows of the local shuffle buffer per stream; None means
    ``DEFAULT_SHUFFLE_BATCHES`` batches, 0 turns it off; ``shuffle_seed`` seeds it (the target
    stream's with ``shuffle_seed + 1``), None leaves it unseeded. ``device``: where tensors land
    (``"auto"``: the Train worker's device).
    """
    common = dict(prefetch_batches=prefetch_batches, device=device, shuffle_buffer=shuffle_buffer)
    target_seed = None if shuffle_seed is None else shuffle_seed + 1
    source = endless_batches(
        source_it,
        name="source",
        columns=("image", "label", "box"),
        batch_size=batch_source,
        shuffle_seed=shuffle_seed,
        **common,
    )
    target = endless_batches(
        target_it, name="target", columns=("image", "box"), batch_size=batch_target, shuffle_seed=target_seed, **common
    )
    for s, t in zip(source, target):
        yield {
            "source_image": s["image"],
            "source_label": s["label"],
            "source_box": s["box"],
            "target_image": t["image"],
            "target_box": t["box"],
        }


def iter_val_batches(it: Stream, device: str | torch.device = "cpu") -> Iterator[dict[str, Any]]:
    """Whole validation images one at a time: ``{"image" [1,3,H,W], "label" int64 [1,H,W], "id": [str]}``
    (no ``"label"`` for an unlabelled split)."""
    for batch in it.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=1):
        out = {
            "image": torch.from_numpy(np.array(batch["image"], dtype=np.float32)).to(device),
            "id": [str(i) for i in batch["id"]],
        }
        if "label" in batch:
            out["label"] = torch.from_numpy(np.array(batch["label"], dtype=np.int64)).to(device)
        yield out


class CachedValidation:
    """A worker's validation images, streamed on the first evaluation and kept in memory after
    it when they fit in ``max_bytes``: later evaluations then skip a new Ray Data execution
    (on a small machine that start-up, not the inference, dominated a 50-image evaluation).
    The first pass fixes which rows this worker holds; together the workers hold the split.
    Splits too large to keep (Cityscapes val is ~12 GB as float32) are streamed every time."""

    def __init__(self, open_stream: Callable[[], Stream], max_bytes: int = 1 << 30):
        self.open_stream = open_stream
        self.max_bytes = max_bytes
        self.cached: list[dict[str, Any]] | None = None
        self.too_large = False

    def __call__(self) -> Iterator[dict[str, Any]]:
        if self.cached is not None:
            yield from self.cached
            return
        kept: list[dict[str, Any]] | None = None if self.too_large else []
        size = 0
        for batch in iter_val_batches(self.open_stream()):
            if kept is not None:
                size += batch["image"].nbytes + (batch["label"].nbytes if "label" in batch else 0)
                if size > self.max_bytes:
                    kept, self.too_large = None, True
                else:
                    kept.append(batch)
            yield batch
        if kept is not None:  # a complete pass: evaluations that stop early cache nothing
            self.cached = kept


__all__ = [
    "read_shards",
    "train_stream",
    "passes_per_execution",
    "val_stream",
    "mixed_domain_batches",
    "iter_val_batches",
    "endless_batches",
    "execution_rows",
    "CachedValidation",
]
