"""Raw dataset folders -> Parquet shards + ``manifest.json``: ``road-ray prepare`` (README.md, "Data").

Layouts read (files paired by stem; details and label encodings in :mod:`road_ray.data.datasets`):

- ``cityscapes`` (target; splits train, val; the test split has no labels and is left out):
  ``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png`` + ``gtFine/{split}/{city}/{id}_gtFine_labelIds.png``,
  id = ``{city}_{seq}_{frame}``.
- ``gta5`` (source; split train): ``images/NNNNN.png`` + ``labels/NNNNN.png`` (palette PNGs whose
  indices are Cityscapes labelIds).
- ``synthia`` (SYNTHIA-RAND-CITYSCAPES; source; split train): ``RGB/NNNNNNN.png`` +
  ``GT/LABELS/NNNNNNN.png`` (16-bit, several channels, class id in R).

Output: ``OUT/{split}/part-NNNNN.parquet`` (one row per good image/label pair, sorted by id;
labels as PNG trainIds, 255 = ignore) and, written last, ``OUT/manifest.json`` with per-split
row counts, the shard list, the class-pixel histogram, and every skipped input with its reason
(orphan image or label, empty/corrupt/truncated file, label size differing from its image).

``--resize SCALE`` (:func:`prepare_dataset`'s ``resize``) stores the images of the training
splits SCALE times their size (area; labels nearest), recorded per split as ``stored_scale``;
rows keep the original ``height``/``width``, so crops and boxes stay those of the original image
(``road_ray/data/transforms.py``, :func:`~road_ray.data.transforms.effective_scale`).
``--image-format jpeg --jpeg-quality Q`` stores JPEG images (labels stay PNG).

Decoding and label conversion run in worker processes; the parent writes the rows in sorted
order, keeping only a bounded window of samples in flight, so memory does not grow with the
dataset and the output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.fs as pafs
from tqdm import tqdm

from road_ray import storage
from road_ray.data import shards
from road_ray.data.datasets import LAYOUTS, Defect, Layout, Sample, decode_image, is_rgb8_png
from road_ray.labels import IGNORE_INDEX, NUM_CLASSES

DATASETS = ("cityscapes", "gta5", "synthia")
IMAGE_FORMATS = ("png", "jpeg")
MANIFEST_VERSION = 1
LABEL_SPACE = "cityscapes19"  # SYNTHIA too: its 16/13-class subsets are chosen at evaluation
IN_FLIGHT_PER_WORKER = 4  # samples submitted ahead of the writer, per worker process
DEFAULT_JPEG_QUALITY = 95
# --resize applies to these splits unless told otherwise: validation stays at full size, so
# that evaluation scores full-resolution labels (the official protocol).
DEFAULT_RESIZE_SPLITS = ("train",)


@dataclass
class Converted:
    """What a worker returns for one Sample: a shard row with its label statistics, or a skip."""

    row: dict[str, Any] | None = None
    class_pixels: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    skipped: dict[str, str] | None = None


# --- one sample (runs in the worker processes) ---------------------------------------------


def read_bytes(root: str, relpath: str, kind: str) -> bytes:
    data = Path(root, relpath).read_bytes()
    if not data:
        raise Defect(f"empty {kind} file (0 bytes)")
    return data


@dataclass(frozen=True)
class Encoding:
    """How a split's images are stored: the format, the JPEG quality, the stored scale."""

    image_format: str = "png"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    stored_scale: float = 1.0


def encode_image(data: bytes | None, rgb: np.ndarray, encoding: Encoding) -> bytes:
    """The original bytes of an 8-bit RGB PNG (``data``; None once resized); any other image
    re-encoded in the encoding's format."""
    if encoding.image_format == "jpeg":
        return shards.encode_jpeg(rgb, quality=encoding.jpeg_quality)
    return data if data is not None and is_rgb8_png(data) else shards.encode_png(rgb)


def stored_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of an image stored at ``scale`` (what cv2.resize and the crops assume)."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize_pair(rgb: np.ndarray, train_ids: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The image resized by ``scale`` (area averaging) and its label (nearest: the original pixel
    containing each stored pixel's centre, the crops' convention), or both unchanged at 1."""
    if scale == 1.0:
        return rgb, train_ids
    h, w = stored_size(*train_ids.shape, scale)
    image = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    label = cv2.resize(train_ids, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label


def label_statistics(train_ids: np.ndarray) -> tuple[list[int], int]:
    counts = np.bincount(train_ids.ravel(), minlength=256)
    return counts[:NUM_CLASSES].tolist(), int(counts[IGNORE_INDEX])


def convert_sample(dataset: str, root: str, sample: Sample, encoding: Encoding) -> Converted:
    """Decode one image/label pair into a shard row, or say why it is skipped.

    The label statistics count the original label's pixels; ``height``/``width`` are the
    original size also when the images are stored at ``encoding.stored_scale``."""
    if sample.label is None:
        return Converted(skipped={"file": sample.image, "reason": "image without a label"})
    if sample.image is None:
        return Converted(skipped={"file": sample.label, "reason": "label without an image"})
    layout = LAYOUTS[dataset]
    current = sample.image
    try:
        image_bytes = read_bytes(root, sample.image, "image")
        rgb = decode_image(image_bytes)
        current = sample.label
        train_ids = layout.read_label(read_bytes(root, sample.label, "label"))
    except Defect as defect:
        return Converted(skipped={"file": current, "reason": f"{defect}; pair skipped"})
    (height, width), (label_height, label_width) = rgb.shape[:2], train_ids.shape
    if (label_height, label_width) != (height, width):
        reason = f"label is {label_width}x{label_height} but its image {sample.image} is {width}x{height}; pair skipped"
        return Converted(skipped={"file": sample.label, "reason": reason})
    class_pixels, ignore_pixels = label_statistics(train_ids)
    if encoding.stored_scale != 1.0:
        rgb, train_ids = resize_pair(rgb, train_ids, encoding.stored_scale)
        image_bytes = None
    row = {
        "id": sample.id,
        "domain": layout.domain,
        "split": sample.split,
        "image": encode_image(image_bytes, rgb, encoding),
        "label": shards.encode_png(train_ids),
        "height": height,
        "width": width,
    }
    return Converted(row, class_pixels, ignore_pixels)


def convert_task(task: tuple[str, str, Sample, Encoding]) -> Converted:
    return convert_sample(*task)


def limit_worker_threads() -> None:
    """One OpenCV thread per worker process: the processes are the parallelism."""
    cv2.setNumThreads(1)


# --- the pool: results in submission order, a bounded window in flight ---------------------


@contextmanager
def ordered_map(num_workers: int) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """Yields ``imap(fn, items)``: results in the order of ``items``, computed by ``num_workers`` processes."""
    if num_workers <= 1:
        yield lambda fn, items: map(fn, items)
        return
    # Not "fork": the parent may hold threads (OpenCV, torch) whose locks a forked child would inherit.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=limit_worker_threads) as pool:

        def imap(fn: Callable, items: Iterable) -> Iterator:
            window: deque = deque()
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= IN_FLIGHT_PER_WORKER * num_workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

        yield imap


# --- output folder -------------------------------------------------------------------------


def clear_output(out: str, splits: Iterable[str], overwrite: bool) -> None:
    """Refuse an output that holds a manifest unless ``overwrite``; then remove stale parts.

    The old manifest goes first, so that an interrupted overwrite leaves a folder without a
    manifest (visibly incomplete), never a manifest describing a mix of old and new parts.
    """
    fs, path = storage.open_fs(out)
    manifest = storage.join(path, shards.MANIFEST)
    splits = set(splits)
    if fs.get_file_info(manifest).type == pafs.FileType.File:
        if not overwrite:
            raise ValueError(
                f"{storage.join(out, shards.MANIFEST)} already exists: {out} holds a prepared dataset; "
                "pass overwrite=True (road-ray prepare --overwrite) to replace it"
            )
        try:
            splits |= set(shards.read_manifest(out).get("splits", {}))
        except ValueError:  # unreadable manifest: its splits are unknown, replace ours only
            pass
        fs.delete_file(manifest)
    for split in sorted(splits):
        selector = pafs.FileSelector(storage.join(path, split), allow_not_found=True)
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.startswith((shards.PART_PREFIX, ".tmp-")):
                fs.delete_file(info.path)


# --- one split, one dataset ----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One prepare run's settings, shared by its splits."""

    dataset: str
    root: str
    out: str
    image_format: str
    shard_bytes: int
    progress: bool
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    resize: float = 1.0
    resize_splits: tuple[str, ...] = DEFAULT_RESIZE_SPLITS

    def encoding(self, split: str) -> Encoding:
        scale = self.resize if split in self.resize_splits else 1.0
        return Encoding(self.image_format, self.jpeg_quality, scale)


def write_split(job: Job, split: str, samples: list[Sample], imap: Callable, skipped: list[dict[str, str]]) -> dict:
    """Convert and write one split; returns its manifest entry and appends its skips to ``skipped``."""
    class_pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    ignore_pixels = 0
    encoding = job.encoding(split)
    tasks = ((job.dataset, job.root, sample, encoding) for sample in samples)
    results = imap(convert_task, tasks)
    bar = tqdm(results, total=len(samples), desc=f"{job.dataset} {split}", unit="img", disable=not job.progress)
    with shards.ShardWriter(storage.join(job.out, split), max_bytes=job.shard_bytes) as writer:
        for result in bar:
            if result.skipped is not None:
                skipped.append(result.skipped)
                continue
            writer.write(result.row)
            class_pixels += result.class_pixels
            ignore_pixels += result.ignore_pixels
    # every prepared split is labeled (Cityscapes' test split is left out)
    entry = shards.split_entry(split, writer, LAYOUTS[job.dataset].domain, class_pixels, ignore_pixels)
    # stored image size / original size (rows keep the original's height/width; docs/formats.md)
    entry["stored_scale"] = encoding.stored_scale
    return entry


def get_layout(name: str) -> Layout:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return LAYOUTS[name]


def resolve_workers(num_workers: int | None) -> int:
    if num_workers is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    return num_workers


def check_encoding(image_format: str, jpeg_quality: int, resize: float) -> None:
    """ValueError naming the option for an unknown format, a quality outside 1-100 or a resize
    outside (0, 1]."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; expected one of {', '.join(IMAGE_FORMATS)}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality {jpeg_quality}: expected 1-100")
    if not 0 < resize <= 1:
        raise ValueError(f"--resize {resize}: expected a scale in (0, 1] (shards are never stored larger)")


def check_resize_splits(resize: float, resize_splits: tuple[str, ...], splits: Iterable[str]) -> None:
    """ValueError naming the splits of ``--resize-splits`` that the dataset does not have."""
    unknown = sorted(set(resize_splits) - set(splits))
    if resize != 1 and unknown:
        raise ValueError(f"--resize-splits: no split {', '.join(unknown)} here; splits: {', '.join(sorted(splits))}")


def prepare_dataset(
    name: str,
    root: str,
    out: str,
    *,
    num_workers: int | None = None,
    shard_bytes: int = shards.DEFAULT_SHARD_BYTES,
    image_format: str = "png",
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    resize: float = 1.0,
    resize_splits: tuple[str, ...] = DEFAULT_RESIZE_SPLITS,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Prepare the raw dataset ``name`` at ``root`` into shards under ``out`` (a path or URI).

    ``resize`` (``road-ray prepare --resize``): the images of ``resize_splits`` are stored that
    many times their size (area-resized; labels nearest), so that a training base scale of 0.5
    does not decode full-size images every step; each split's manifest entry records its
    ``stored_scale`` and rows keep the original ``height``/``width`` (the crops' boxes refer to
    the original image, docs/formats.md). Returns the manifest it wrote to
    ``out/manifest.json``. Raises ValueError for an unknown dataset, a bad encoding option, a
    root that does not hold the dataset's layout, or an ``out`` that already holds a manifest
    (unless ``overwrite``). Defective inputs are skipped and listed in the manifest; every good
    pair becomes one row.
    """
    layout = get_layout(name)
    check_encoding(image_format, jpeg_quality, resize)
    samples = layout.list_samples(Path(root))
    check_resize_splits(resize, tuple(resize_splits), samples)
    workers = resolve_workers(num_workers)
    clear_output(out, samples, overwrite)
    root_abs = str(Path(root).resolve())  # workers get an absolute root
    job = Job(
        name, root_abs, out, image_format, shard_bytes, progress, jpeg_quality, float(resize), tuple(resize_splits)
    )
    skipped: list[dict[str, str]] = []
    with ordered_map(workers) as imap:
        splits = {split: write_split(job, split, items, imap, skipped) for split, items in samples.items()}
    manifest = {
        "dataset": name,
        "version": MANIFEST_VERSION,
        "root": str(root),
        "label_space": LABEL_SPACE,
        "image_format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpeg" else None,
        "splits": splits,
        "skipped": skipped,
    }
    shards.write_manifest(out, manifest)
    return manifest
