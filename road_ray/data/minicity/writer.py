"""Writing MiniCity: every split rendered in worker processes and written in order as shards.

The segmentation splits have the real datasets' shard format and manifest entries
(:mod:`road_ray.data.shards`); the pretraining split has its own columns (id, image,
class_id). Results come back in submission order (:func:`road_ray.data.prepare.ordered_map`),
so the bytes written do not depend on the number of workers.
"""

from __future__ import annotations

import contextlib

import numpy as np
from tqdm import tqdm

from road_ray import storage
from road_ray.data import shards
from road_ray.data.minicity.dataset import (
    MINICITY_VERSION,
    ORACLE_SPLIT,
    PRETRAIN_SPLIT,
    SPLITS,
    MiniCitySize,
    get_size,
    item_rng,
    render_scene,
)
from road_ray.data.minicity.pretrain_set import PRETRAIN_CLASSES, PRETRAIN_PER_SCENE, PRETRAIN_SCHEMA, pretrain_group
from road_ray.data.prepare import clear_output, label_statistics, ordered_map, resolve_workers
from road_ray.labels import NUM_CLASSES

PRETRAIN_ROWS_PER_PART = 1000  # read whole by read_pretrain_set, never streamed by Ray Data


def _scene_task(task: tuple[str, int, int, MiniCitySize]) -> tuple[bytes, bytes, list[int], int]:
    """One row of a segmentation split (runs in a worker): PNG image, PNG label, label statistics."""
    split, index, seed, spec = task
    image, label = render_scene(item_rng(seed, split, index), spec.height, spec.width, SPLITS[split][0])
    class_pixels, ignore_pixels = label_statistics(label)
    return shards.encode_png(image), shards.encode_png(label), class_pixels, ignore_pixels


def _write_scene_split(out: str, split: str, spec: MiniCitySize, seed: int, imap, bar) -> dict[str, dict]:
    """Render and write one segmentation split (target_train twice: unlabeled, and the oracle's copy)."""
    domain = SPLITS[split][1]
    names = [split, ORACLE_SPLIT] if split == "target_train" else [split]
    pixels, ignore = np.zeros(NUM_CLASSES, np.int64), 0
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(shards.ShardWriter(storage.join(out, name))) for name in names]
        tasks = ((split, i, seed, spec) for i in range(getattr(spec, split)))
        for i, (image, label, class_pixels, ignore_pixels) in enumerate(imap(_scene_task, tasks)):
            row = {
                "id": f"{split}_{i:05d}",
                "domain": domain,
                "split": split,
                "image": image,
                "label": label,
                "height": spec.height,
                "width": spec.width,
            }
            if split == "target_train":  # adaptation sees the images only
                writers[0].write({**row, "label": None})
                writers[1].write({**row, "split": ORACLE_SPLIT})
            else:
                writers[0].write(row)
            pixels += class_pixels
            ignore += ignore_pixels
            bar.update()
    entries = {
        name: shards.split_entry(name, w, domain, pixels, ignore, labeled=name != "target_train")
        for name, w in zip(names, writers)
    }
    if ORACLE_SPLIT in entries:
        entries[ORACLE_SPLIT]["note"] = (
            "target_train with labels: the oracle's upper bound only, never read by adaptation"
        )
    return entries


def _write_pretrain_split(out: str, spec: MiniCitySize, seed: int, imap, bar) -> dict:
    """Render and write the pretraining split; returns its manifest entry."""
    counts = [0] * len(PRETRAIN_CLASSES)
    tasks = ((g, seed, spec) for g in range(-(-spec.pretrain // PRETRAIN_PER_SCENE)))
    writer = shards.ShardWriter(
        storage.join(out, PRETRAIN_SPLIT),
        schema=PRETRAIN_SCHEMA,
        rows_per_group=PRETRAIN_ROWS_PER_PART,
        max_rows=PRETRAIN_ROWS_PER_PART,
    )
    with writer:
        index = 0
        for items in imap(pretrain_group, tasks):
            for png, class_id in items:
                writer.write({"id": f"{PRETRAIN_SPLIT}_{index:05d}", "image": png, "class_id": class_id})
                counts[class_id] += 1
                index += 1
            bar.update(len(items))
    return {
        "rows": spec.pretrain,
        "labeled_rows": spec.pretrain,
        "domain": "pretrain",
        "style": "photo",
        "task": "classification",
        "shards": shards.split_shards(PRETRAIN_SPLIT, writer),
        "image_size": spec.pretrain_size,
        "class_counts": counts,
    }


def write_minicity(
    out: str,
    size: str = "default",
    seed: int = 0,
    num_workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Generate MiniCity ``size`` from ``seed`` into ``out`` (a path or URI) and return its manifest.

    Raises ValueError for an unknown size, or if ``out`` already holds a manifest and not
    ``overwrite``. The output is byte-identical for any ``num_workers``.
    """
    spec = get_size(size)
    workers = resolve_workers(num_workers)
    clear_output(out, [*SPLITS, ORACLE_SPLIT, PRETRAIN_SPLIT], overwrite)
    total = spec.source_train + spec.source_val + spec.target_train + spec.target_val + spec.pretrain
    splits: dict[str, dict] = {}
    with (
        ordered_map(workers) as imap,
        tqdm(total=total, desc=f"minicity {size}", unit="img", disable=not progress) as bar,
    ):
        for split in SPLITS:
            splits.update(_write_scene_split(out, split, spec, seed, imap, bar))
        splits[PRETRAIN_SPLIT] = _write_pretrain_split(out, spec, seed, imap, bar)
    manifest = {
        "dataset": "minicity",
        "version": MINICITY_VERSION,
        "size": size,
        "seed": int(seed),
        "image_size": [spec.height, spec.width],
        "label_space": "cityscapes19",
        "styles": {"source": "game", "target": "photo"},
        "splits": splits,
        "skipped": [],
        "pretrain_classes": list(PRETRAIN_CLASSES),
    }
    shards.write_manifest(out, manifest)
    return manifest
