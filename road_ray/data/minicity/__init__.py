"""MiniCity: road-ray's embedded synthetic-to-real benchmark (``docs/minicity.md``).

A seeded procedural generator of 2:1 street scenes labelled in the 19 Cityscapes trainIds,
rendered in a "game" style (the source domain, like GTA5) and a "photo" style (the target,
like Cityscapes), plus a photo-style object-classification set that plays ImageNet's part for
pretraining the small backbone. :func:`write_minicity` writes it all in the shard format of the
real datasets (``docs/ARCHITECTURE.md``, "Shards")::

    OUT/source_train/          game, labeled          domain "source"
    OUT/source_val/            game, labeled          domain "source"
    OUT/target_train/          photo, label = null    domain "target"  (adaptation reads these)
    OUT/target_val/            photo, labeled         domain "target"  (evaluation)
    OUT/target_train_labeled/  target_train's images with their labels: the oracle's upper bound only
    OUT/pretrain/              part-NNNNN.parquet: id, image (PNG), class_id (int32)
    OUT/manifest.json

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so the bytes
written depend on ``seed`` and the size only, not on ``num_workers``.

Modules, in the order an image is made: the camera and scene representation
(:mod:`~road_ray.data.minicity.scene`), the street layout (:mod:`~road_ray.data.minicity.layout`)
and its objects (:mod:`~road_ray.data.minicity.objects`), the rasterization and both image
formations (:mod:`~road_ray.data.minicity.render`) with the two domains' colour statistics
(:mod:`~road_ray.data.minicity.colours`); the dataset's version, sizes and splits
(:mod:`~road_ray.data.minicity.dataset`), the pretraining set
(:mod:`~road_ray.data.minicity.pretrain_set`), writing it all
(:mod:`~road_ray.data.minicity.writer`) and the documentation's figures
(:mod:`~road_ray.data.minicity.figures`).
"""

from __future__ import annotations

from road_ray.data.minicity.dataset import (
    MINICITY_VERSION,
    ORACLE_SPLIT,
    PRETRAIN_SPLIT,
    SIZES,
    SPLITS,
    MiniCitySize,
    get_size,
    item_rng,
    render_scene,
)
from road_ray.data.minicity.figures import save_example_figures
from road_ray.data.minicity.layout import sample_scene
from road_ray.data.minicity.pretrain_set import PRETRAIN_CLASSES, pretrain_crops, read_pretrain_set
from road_ray.data.minicity.render import STYLES, render
from road_ray.data.minicity.writer import write_minicity

__all__ = [
    "MINICITY_VERSION",
    "SIZES",
    "MiniCitySize",
    "SPLITS",
    "ORACLE_SPLIT",
    "PRETRAIN_SPLIT",
    "PRETRAIN_CLASSES",
    "STYLES",
    "get_size",
    "item_rng",
    "sample_scene",
    "render",
    "render_scene",
    "pretrain_crops",
    "write_minicity",
    "read_pretrain_set",
    "save_example_figures",
]
