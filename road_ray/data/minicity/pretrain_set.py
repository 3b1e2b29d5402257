"""MiniCity's pretraining set: photo-style pictures of single objects and materials with their class.

It plays ImageNet's part for the small backbone (``road_ray/engine/pretrain.py``), which then
becomes ROAD's frozen "real-style" teacher. A picture is cut from a street scene drawn with
the objects in view and re-rendered at the crop's resolution, so it has the target domain's
image formation without being a crop of any segmentation image.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from road_ray import storage
from road_ray.data import shards
from road_ray.data.minicity.dataset import PRETRAIN_SPLIT, MiniCitySize, item_rng
from road_ray.data.minicity.layout import sample_scene
from road_ray.data.minicity.render import FIRST_PART_ID, cull, rasterize, render
from road_ray.data.minicity.scene import FENCE, TERRAIN, WALL, Scene

# The pretraining task: name the object (or material) in the middle of a photo-style crop.
# One class per street concept, as an ImageNet model knows streetcars, traffic lights, street
# signs, poles and bicycles. Class i shows what trainId i labels, but the label is the picture's,
# never a pixel map.
PRETRAIN_CLASSES: tuple[str, ...] = (
    "asphalt",
    "pavement",
    "facade",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "tree",
    "grass",
    "sky",
    "pedestrian",
    "cyclist",
    "car",
    "truck",
    "bus",
    "tram",
    "motorbike",
    "bicycle",
)
PRETRAIN_SCHEMA = pa.schema(
    [pa.field("id", pa.string()), pa.field("image", pa.binary()), pa.field("class_id", pa.int32())]
)
PRETRAIN_PER_SCENE = 2  # crops cut from one scene (two objects: one on each side)


def _object_window(
    scene: Scene, ids: np.ndarray, parts: list, rng: np.random.Generator
) -> tuple[float, float, float] | None:
    """A square window (top, left, side) around the visible pixels of ``parts``, or None if they hardly show."""
    index = {id(p): k for k, p in enumerate(scene.parts)}
    mask = np.isin(ids, [FIRST_PART_ID + index[id(p)] for p in parts])
    if mask.sum() < 6:
        return None
    rows, cols = np.nonzero(mask)
    side = max(np.ptp(rows) + 1, np.ptp(cols) + 1, 4) * rng.uniform(1.15, 1.5)
    cy = (rows.min() + rows.max() + 1) / 2 + rng.uniform(-0.08, 0.08) * side  # pixel-edge coordinates
    cx = (cols.min() + cols.max() + 1) / 2 + rng.uniform(-0.08, 0.08) * side
    return cy - side / 2, cx - side / 2, side


def _material_window(label: np.ndarray, cls: int, rng: np.random.Generator) -> tuple[float, float, float] | None:
    """A random square window (top, left, side) at least 55% of class ``cls``, or None.

    Candidates are centred on random pixels of the class, with random sides from 6% to 40% of
    the image height; the first good one is taken.
    """
    h, w = label.shape
    mask = label == cls
    where = np.flatnonzero(mask)
    if len(where) < 9:
        return None
    inside = np.pad(mask.astype(np.int32), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    centre = where[rng.integers(len(where), size=64)]
    side = np.maximum(3, (h * rng.uniform(0.06, 0.4, 64)).astype(int))
    r = np.clip(centre // w - side // 2, 0, h - side)
    c = np.clip(centre % w - side // 2, 0, w - side)
    share = (inside[r + side, c + side] - inside[r, c + side] - inside[r + side, c] + inside[r, c]) / side**2
    good = np.flatnonzero(share >= 0.55)
    if not len(good):
        return None
    k = good[0]
    return float(r[k]), float(c[k]), float(side[k])


def pretrain_crops(rng: np.random.Generator, size: MiniCitySize, classes: tuple[int, ...]) -> list[np.ndarray]:
    """Photo-style ``pretrain_size`` square images, one per class in ``classes`` (one or two
    distinct indices into PRETRAIN_CLASSES, which are also the trainIds of the things shown).

    A street scene is drawn with those objects in view (materials: a window mostly of that
    material is searched), then each window is *re-rendered* at the crop's resolution through a
    camera that sees just that window (no upsampling). A class whose window cannot be found
    in the scene gets a new scene of its own.
    """
    out: list[np.ndarray | None] = [None] * len(classes)
    todo = list(range(len(classes)))
    for attempt in range(10):
        focus = tuple(classes[i] for i in todo)
        scene = sample_scene(rng, size.height, size.width, rig="photo", focus=focus, max_distance=60.0)
        # windows are searched on a half-resolution id map of the frame (without the bonnet)
        half = replace(scene.camera, hood=0.0).crop(0, 0, size.height, size.height // 2)
        raster = rasterize(replace(scene, camera=replace(half, width=size.width // 2)))
        for slot, i in enumerate(list(todo)):
            cls = classes[i]
            if cls in (WALL, FENCE, TERRAIN) or not scene.focus[slot]:
                window = _material_window(raster.label, cls, rng)
            else:
                window = _object_window(scene, raster.ids, scene.focus[slot], rng)
            if window is None and attempt < 9:
                continue
            top, left, side = (
                (2 * v for v in window) if window else (0.0, size.width / 2 - size.height / 2, float(size.height))
            )
            crop = cull(replace(scene, camera=scene.camera.crop(top, left, side, size.pretrain_size)))
            out[i] = render(crop, "photo")[0]
            todo.remove(i)
        if not todo:
            break
    return out  # type: ignore[return-value]


def pretrain_group(task: tuple[int, int, MiniCitySize]) -> list[tuple[bytes, int]]:
    """Pretraining items ``PRETRAIN_PER_SCENE * group`` onward as (PNG, class id); item i is about
    class ``i % 19`` (balanced). ``task`` is ``(group, seed, size)``; runs in a worker process."""
    group, seed, spec = task
    items = range(group * PRETRAIN_PER_SCENE, min((group + 1) * PRETRAIN_PER_SCENE, spec.pretrain))
    classes = tuple(i % len(PRETRAIN_CLASSES) for i in items)
    images = pretrain_crops(item_rng(seed, PRETRAIN_SPLIT, group), spec, classes)
    return [(shards.encode_png(image), cls) for image, cls in zip(images, classes)]


def read_pretrain_set(out_dir: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The pretraining set of a written MiniCity: images (N, s, s, 3) uint8, class ids (N,) int64, class names."""
    manifest = shards.read_manifest(out_dir)
    names = manifest.get("pretrain_classes")
    if not names:
        raise ValueError(f"{storage.join(out_dir, shards.MANIFEST)}: no 'pretrain_classes'; not a MiniCity folder?")
    images, labels = [], []
    for uri in shards.list_shard_files(storage.join(out_dir, PRETRAIN_SPLIT)):
        fs, path = storage.open_fs(uri)
        table = pq.read_table(path, filesystem=fs, columns=["image", "class_id"])
        images += [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("image").to_pylist()]
        labels += table.column("class_id").to_pylist()
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(names)
