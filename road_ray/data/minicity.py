"""MiniCity: road-ray's embedded synthetic-to-real benchmark (DESIGN §2; ``docs/minicity.md``).

A seeded procedural generator of 2:1 street scenes labelled in the 19 Cityscapes trainIds,
rendered in a "game" style (the source domain, like GTA5) and a "photo" style (the target,
like Cityscapes), plus a photo-style object-classification set that plays ImageNet's part for
pretraining the small backbone. :func:`write_minicity` writes it all in the shard format of the
real datasets (DESIGN §8)::

    OUT/source_train/          game, labeled          domain "source"
    OUT/source_val/            game, labeled          domain "source"
    OUT/target_train/          photo, label = null    domain "target"  (adaptation reads these)
    OUT/target_val/            photo, labeled         domain "target"  (evaluation)
    OUT/target_train_labeled/  target_train's images with their labels: the oracle's upper bound only
    OUT/pretrain/              part-NNNNN.parquet: id, image (PNG), class_id (int32)
    OUT/manifest.json

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so the bytes
written depend on ``seed`` and the size only, not on ``num_workers``.

Modules: the camera and scene representation (:mod:`~road_ray.data.minicity_scene`), the
street layout (:mod:`~road_ray.data.minicity_layout`) and its objects
(:mod:`~road_ray.data.minicity_objects`), the rasterization and both image formations
(:mod:`~road_ray.data.minicity_render`) and the two domains' colour statistics
(:mod:`~road_ray.data.minicity_colours`).
"""

from __future__ import annotations

import contextlib
import io
import uuid
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from road_ray.data import shards
from road_ray.data.minicity_layout import sample_scene
from road_ray.data.minicity_render import FIRST_PART_ID, STYLES, cull, rasterize, render
from road_ray.data.minicity_scene import FENCE, TERRAIN, WALL, Scene
from road_ray.data.prepare import clear_output, label_statistics, ordered_map, resolve_workers
from road_ray.labels import NUM_CLASSES

__all__ = [
    "MINICITY_VERSION",
    "SIZES",
    "MiniCitySize",
    "SPLITS",
    "PRETRAIN_CLASSES",
    "STYLES",
    "sample_scene",
    "render",
    "render_scene",
    "pretrain_crops",
    "write_minicity",
    "read_pretrain_set",
]

# Bump whenever the generator's output changes: caches are keyed by it (road_ray.engine.resolve).
MINICITY_VERSION = "1.0"


@dataclass(frozen=True)
class MiniCitySize:
    """Image size (height, width) = 1:2, rows per split, and the pretraining set (count, square side)."""

    height: int
    width: int
    source_train: int
    source_val: int
    target_train: int
    target_val: int
    pretrain: int
    pretrain_size: int


SIZES: dict[str, MiniCitySize] = {
    "small": MiniCitySize(64, 128, 16, 8, 16, 8, 64, 32),
    "default": MiniCitySize(128, 256, 600, 100, 600, 150, 3000, 64),
}

# split -> (style, domain); target_train is written twice: unlabeled, and as target_train_labeled.
SPLITS: dict[str, tuple[str, str]] = {
    "source_train": ("game", "source"),
    "source_val": ("game", "source"),
    "target_train": ("photo", "target"),
    "target_val": ("photo", "target"),
}
ORACLE_SPLIT = "target_train_labeled"
PRETRAIN_SPLIT = "pretrain"
_SPLIT_CODE = {"source_train": 1, "source_val": 2, "target_train": 3, "target_val": 4, PRETRAIN_SPLIT: 5}

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


def get_size(size: str) -> MiniCitySize:
    if size not in SIZES:
        raise ValueError(f"unknown MiniCity size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[size]


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))


def render_scene(rng: np.random.Generator, height: int, width: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """One random scene in ``style``: (RGB uint8 (H, W, 3), trainIds uint8 (H, W)).

    The scene is drawn with the style's camera rig (``sample_scene(..., rig=style)``); to render
    one scene in both styles, call :func:`sample_scene` once and :func:`render` twice.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    return render(sample_scene(rng, height, width, rig=style), style)


# --- pretraining crops ---------------------------------------------------------------------------


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


# --- writing ------------------------------------------------------------------------------------


def _scene_task(task: tuple[str, int, int, MiniCitySize]) -> tuple[bytes, bytes, list[int], int]:
    """One row of a segmentation split (runs in a worker): PNG image, PNG label, label statistics."""
    split, index, seed, spec = task
    image, label = render_scene(item_rng(seed, split, index), spec.height, spec.width, SPLITS[split][0])
    class_pixels, ignore_pixels = label_statistics(label)
    return shards.encode_png(image), shards.encode_png(label), class_pixels, ignore_pixels


PRETRAIN_PER_SCENE = 2  # crops cut from one scene (two objects: one on each side)


def _pretrain_task(task: tuple[int, int, MiniCitySize]) -> list[tuple[bytes, int]]:
    """Pretraining items ``PRETRAIN_PER_SCENE * group`` onward; item i is about class ``i % 19`` (balanced)."""
    group, seed, spec = task
    items = range(group * PRETRAIN_PER_SCENE, min((group + 1) * PRETRAIN_PER_SCENE, spec.pretrain))
    classes = tuple(i % len(PRETRAIN_CLASSES) for i in items)
    images = pretrain_crops(item_rng(seed, PRETRAIN_SPLIT, group), spec, classes)
    return [(shards.encode_png(image), cls) for image, cls in zip(images, classes)]


def _split_entry(
    writer: shards.ShardWriter, domain: str, labeled: bool, pixels: np.ndarray, ignore: int, name: str
) -> dict:
    return {
        "rows": writer.num_rows,
        "labeled_rows": writer.num_rows if labeled else 0,
        "domain": domain,
        "shards": [f"{name}/{part.rsplit('/', 1)[-1]}" for part in writer.parts],
        "class_pixels": pixels.tolist() if labeled else [0] * NUM_CLASSES,
        "ignore_pixels": int(ignore) if labeled else 0,
    }


def _write_pretrain(out: str, results, rows_per_part: int = 1000) -> tuple[list[str], list[int]]:
    fs, path = shards.open_fs(shards.join(out, PRETRAIN_SPLIT))
    fs.create_dir(path, recursive=True)
    parts, counts, batch = [], [0] * len(PRETRAIN_CLASSES), []

    def flush():
        tmp = shards.join(path, f".tmp-{uuid.uuid4().hex}.parquet")
        pq.write_table(pa.Table.from_pylist(batch, schema=PRETRAIN_SCHEMA), tmp, filesystem=fs, compression="none")
        final = f"{shards.PART_PREFIX}{len(parts):05d}.parquet"
        fs.move(tmp, shards.join(path, final))
        parts.append(f"{PRETRAIN_SPLIT}/{final}")
        batch.clear()

    for index, (png, class_id) in enumerate(results):
        batch.append({"id": f"{PRETRAIN_SPLIT}_{index:05d}", "image": png, "class_id": class_id})
        counts[class_id] += 1
        if len(batch) >= rows_per_part:
            flush()
    if batch:
        flush()
    return parts, counts


def _write_scene_split(out: str, split: str, spec: MiniCitySize, seed: int, imap, bar) -> dict[str, dict]:
    """Render and write one segmentation split (target_train twice: unlabeled, and the oracle's copy)."""
    domain = SPLITS[split][1]
    names = [split, ORACLE_SPLIT] if split == "target_train" else [split]
    pixels, ignore = np.zeros(NUM_CLASSES, np.int64), 0
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(shards.ShardWriter(shards.join(out, name))) for name in names]
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
        name: _split_entry(w, domain, name != "target_train", pixels, ignore, name) for name, w in zip(names, writers)
    }
    if ORACLE_SPLIT in entries:
        entries[ORACLE_SPLIT]["note"] = (
            "target_train with labels: the oracle's upper bound only, never read by adaptation"
        )
    return entries


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

        def counted(results):
            for items in results:
                bar.update(len(items))
                yield from items

        tasks = ((g, seed, spec) for g in range(-(-spec.pretrain // PRETRAIN_PER_SCENE)))
        parts, counts = _write_pretrain(out, counted(imap(_pretrain_task, tasks)))
    splits[PRETRAIN_SPLIT] = {
        "rows": spec.pretrain,
        "labeled_rows": spec.pretrain,
        "domain": "pretrain",
        "style": "photo",
        "task": "classification",
        "shards": parts,
        "image_size": spec.pretrain_size,
        "class_counts": counts,
    }
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


def read_pretrain_set(out_dir: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The pretraining set of a written MiniCity: images (N, s, s, 3) uint8, class ids (N,) int64, class names."""
    manifest = shards.read_manifest(out_dir)
    names = manifest.get("pretrain_classes")
    if not names:
        raise ValueError(f"{shards.join(out_dir, shards.MANIFEST)}: no 'pretrain_classes'; not a MiniCity folder?")
    images, labels = [], []
    for uri in shards.list_shard_files(shards.join(out_dir, PRETRAIN_SPLIT)):
        fs, path = shards.open_fs(uri)
        table = pq.read_table(path, filesystem=fs, columns=["image", "class_id"])
        images += [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("image").to_pylist()]
        labels += table.column("class_id").to_pylist()
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(names)


def save_example_figures(out_dir: str, seed: int = 0, rows: int = 4) -> list[str]:
    """Write ``minicity_examples.png`` (dataset rows: game image, its label, photo image, its label)
    and ``minicity_pretrain.png`` (two pretraining crops per class) into ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from road_ray.labels import colorize

    spec = SIZES["default"]
    fig, axes = plt.subplots(rows, 4, figsize=(12, 1.6 * rows), gridspec_kw={"wspace": 0.03, "hspace": 0.08})
    titles = ("source (game)", "source label", "target (photo)", "target label")
    for r in range(rows):
        game = render_scene(item_rng(seed, "source_train", r), spec.height, spec.width, "game")
        photo = render_scene(item_rng(seed, "target_val", r), spec.height, spec.width, "photo")
        for c, image in enumerate((game[0], colorize(game[1]), photo[0], colorize(photo[1]))):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    paths = [f"{out_dir.rstrip('/')}/minicity_examples.png", f"{out_dir.rstrip('/')}/minicity_pretrain.png"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    plt.close(fig)

    n = len(PRETRAIN_CLASSES)
    crops = [img for g in range(n) for img in _pretrain_images(seed, g, spec)]
    fig, axes = plt.subplots(2, n, figsize=(n * 0.75, 1.9), gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for i, image in enumerate(crops):  # item i is about class i % n
        ax = axes[i // n, i % n]
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        if i < n:
            ax.set_title(PRETRAIN_CLASSES[i], fontsize=6)
    fig.savefig(paths[1], dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


def _pretrain_images(seed: int, group: int, spec: MiniCitySize) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(png))) for png, _ in _pretrain_task((group, seed, spec))]
