"""MiniCity: determinism, label space, street layout, the two styles, the written splits."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from road_ray.data import minicity
from road_ray.data.minicity import (
    MINICITY_VERSION,
    PRETRAIN_CLASSES,
    SIZES,
    read_pretrain_set,
    render,
    render_scene,
    sample_scene,
    write_minicity,
)
from road_ray.data.minicity.render import rasterize
from road_ray.data.shards import SHARD_SCHEMA, list_shard_files
from road_ray.labels import CLASS_NAMES, NUM_CLASSES

SKY, ROAD, PERSON, CAR, VEGETATION = (CLASS_NAMES.index(c) for c in ("sky", "road", "person", "car", "vegetation"))
SEG_SPLITS = {
    "source_train": "source",
    "source_val": "source",
    "target_train": "target",
    "target_val": "target",
    "target_train_labeled": "target",
}


def scenes(n: int, style: str, h: int = 64, w: int = 128, seed: int = 0):
    return [render_scene(np.random.default_rng([seed, i]), h, w, style) for i in range(n)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minicity") / "small"
    write_minicity(str(out), size="small", seed=0, num_workers=1, progress=False)
    return out


def read_split(out: Path, split: str) -> list[dict]:
    return [row for f in list_shard_files(str(out / split)) for row in pq.read_table(f).to_pylist()]


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


# --- generator ---------------------------------------------------------------------------------


def test_sizes_are_2_to_1_and_unknown_size_lists_them(tmp_path):
    for spec in SIZES.values():
        assert spec.width == 2 * spec.height
    with pytest.raises(ValueError, match="small.*default"):
        write_minicity(str(tmp_path / "x"), size="huge")
    with pytest.raises(ValueError, match="style"):
        render_scene(np.random.default_rng(0), 64, 128, "cartoon")


@pytest.mark.parametrize("style", ["game", "photo"])
def test_same_seed_same_scene_other_seed_other_scene(style):
    a = render_scene(np.random.default_rng(7), 64, 128, style)
    b = render_scene(np.random.default_rng(7), 64, 128, style)
    c = render_scene(np.random.default_rng(8), 64, 128, style)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("style", ["game", "photo"])
def test_images_and_labels_have_the_shapes_and_label_space(style):
    for image, label in scenes(6, style):
        assert image.shape == (64, 128, 3) and image.dtype == np.uint8
        assert label.shape == (64, 128) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(NUM_CLASSES)) | {255}
    # only the photo rig sees its own bonnet, labelled ignore like Cityscapes' ego vehicle
    assert not any((label == 255).any() for _, label in scenes(6, "game"))
    assert all((label[-1] == 255).any() for _, label in scenes(6, "photo"))


@pytest.mark.parametrize("style", ["game", "photo"])
def test_layout_is_a_street(style):
    """Sky above (top third), road below (bottom half), over a dozen scenes."""
    labels = np.stack([label for _, label in scenes(12, style)])
    rows = np.arange(labels.shape[1])[None, :, None]
    sky, road = labels == SKY, labels == ROAD
    assert sky.sum() > 0.03 * labels.size and road.sum() > 0.15 * labels.size
    assert (sky & (rows < labels.shape[1] / 3)).sum() > 0.8 * sky.sum()
    assert (road & (rows >= labels.shape[1] / 2)).sum() > 0.9 * road.sum()


def test_objects_nearer_the_bottom_are_larger():
    """Perspective: cars and people standing low in the image (near) are taller than those high up (far)."""
    near, far = [], []
    for _, label in scenes(16, "game", 128, 256) + scenes(16, "photo", 128, 256):
        for cls in (CAR, PERSON):
            n, _, stats, _ = cv2.connectedComponentsWithStats((label == cls).astype(np.uint8), connectivity=4)
            for _, top, _, height, area in stats[1:]:
                bottom = top + height
                if area >= 4 and bottom < label.shape[0] - 2:  # not cut by the image border
                    if bottom > 0.75 * label.shape[0]:
                        near.append(height)
                    elif bottom < 0.6 * label.shape[0]:
                        far.append(height)
    assert len(near) >= 5 and len(far) >= 20
    assert np.mean(near) > 3 * np.mean(far)


def test_every_class_appears_common_ones_often_rare_ones_rarely():
    hist, present = np.zeros(256), np.zeros(NUM_CLASSES)
    for i in range(60):
        label = rasterize(sample_scene(np.random.default_rng([1, i]), 64, 128, rig="game")).label
        counts = np.bincount(label.ravel(), minlength=256)
        hist, present = hist + counts, present + (counts[:NUM_CLASSES] > 0)
    share = hist[:NUM_CLASSES] / hist.sum()
    assert (present > 0).all(), [CLASS_NAMES[c] for c in np.flatnonzero(present == 0)]
    common = [CLASS_NAMES.index(c) for c in ("road", "building", "vegetation", "sky", "car")]
    rare = [CLASS_NAMES.index(c) for c in ("train", "motorcycle", "rider")]
    assert (present[common] >= 0.95 * 60).all() and (share[common] > 0.05).all()
    assert (present[rare] <= 0.6 * 60).all() and (share[rare] < 0.005).all()


def test_same_scene_two_styles_same_labels_other_colours():
    hsv_sat = {"game": {}, "photo": {}}
    for i in range(6):
        scene = sample_scene(np.random.default_rng([2, i]), 128, 256, rig="photo")
        (game, label_g), (photo, label_p) = render(scene, "game"), render(scene, "photo")
        assert np.array_equal(label_g, label_p)
        assert np.abs(game.astype(int) - photo.astype(int)).mean() > 20
        # game: one flat colour per object (no noise); photo: textures, light and sensor noise
        assert (
            np.median(cv2.Laplacian(photo[..., 1], cv2.CV_32F)[label_g == ROAD] ** 2)
            > 5 * np.median(cv2.Laplacian(game[..., 1], cv2.CV_32F)[label_g == ROAD] ** 2) + 1
        )
        for style, image in (("game", game), ("photo", photo)):
            sat = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
            for cls in (VEGETATION, CAR, SKY):
                if (label_g == cls).sum() > 50:
                    hsv_sat[style].setdefault(cls, []).append(sat[label_g == cls].mean())
    for cls in (VEGETATION, CAR, SKY):  # the game's colours are more saturated, class by class
        assert np.mean(hsv_sat["game"][cls]) > np.mean(hsv_sat["photo"][cls]) + 30


# --- the written dataset ------------------------------------------------------------------------


def test_splits_rows_schema_and_domains(small):
    spec = SIZES["small"]
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["dataset"] == "minicity" and manifest["version"] == MINICITY_VERSION
    assert manifest["size"] == "small" and manifest["seed"] == 0 and manifest["label_space"] == "cityscapes19"
    assert manifest["skipped"] == [] and manifest["pretrain_classes"] == list(PRETRAIN_CLASSES)
    expected_rows = {
        "source_train": spec.source_train,
        "source_val": spec.source_val,
        "target_train": spec.target_train,
        "target_val": spec.target_val,
        "target_train_labeled": spec.target_train,
    }
    for split, domain in SEG_SPLITS.items():
        files = list_shard_files(str(small / split))
        assert all(pq.read_schema(f).equals(SHARD_SCHEMA) for f in files)
        rows = read_split(small, split)
        entry = manifest["splits"][split]
        assert len(rows) == entry["rows"] == expected_rows[split]
        assert {r["domain"] for r in rows} == {domain} == {entry["domain"]}
        assert {r["split"] for r in rows} == {split}
        assert len({r["id"] for r in rows}) == len(rows)
        assert len(entry["class_pixels"]) == NUM_CLASSES and entry["shards"]
        for r in rows[:3]:
            assert decode(r["image"]).shape == (r["height"], r["width"], 3) == (spec.height, spec.width, 3)
        labeled = split != "target_train"
        assert entry["labeled_rows"] == (len(rows) if labeled else 0)
        if labeled:
            assert sum(entry["class_pixels"]) + entry["ignore_pixels"] == len(rows) * spec.height * spec.width
            for r in rows:
                label = decode(r["label"])
                assert label.shape == (spec.height, spec.width) and label.dtype == np.uint8
                assert set(np.unique(label).tolist()) <= set(range(NUM_CLASSES)) | {255}


def test_target_train_is_unlabeled_and_its_oracle_copy_matches(small):
    manifest = json.loads((small / "manifest.json").read_text())
    unlabeled, oracle = read_split(small, "target_train"), read_split(small, "target_train_labeled")
    assert all(r["label"] is None for r in unlabeled)
    assert manifest["splits"]["target_train"]["class_pixels"] == [0] * NUM_CLASSES  # no label statistics leak
    assert [r["id"] for r in unlabeled] == [r["id"] for r in oracle]
    assert all(a["image"] == b["image"] and b["label"] is not None for a, b in zip(unlabeled, oracle))


def test_pretrain_set_is_readable_and_balanced(small):
    spec = SIZES["small"]
    images, labels, names = read_pretrain_set(str(small))
    assert images.shape == (spec.pretrain, spec.pretrain_size, spec.pretrain_size, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and names == list(PRETRAIN_CLASSES)
    counts = np.bincount(labels, minlength=len(names))
    assert counts.min() >= spec.pretrain // len(names) and counts.max() <= spec.pretrain // len(names) + 1
    assert images.std() > 20  # pictures, not blank tiles
    table = pq.read_table(list_shard_files(str(small / "pretrain"))[0])
    assert table.column_names == ["id", "image", "class_id"]


@pytest.fixture
def tiny(monkeypatch) -> str:
    """A size with a handful of rows, for the tests that write several times."""
    spec = dataclasses.replace(SIZES["small"], source_train=3, source_val=2, target_train=3, target_val=2, pretrain=5)
    monkeypatch.setitem(minicity.SIZES, "tiny", spec)
    return "tiny"


def test_refuses_to_overwrite_unless_asked(small, tmp_path, tiny):
    with pytest.raises(ValueError, match="already exists"):
        write_minicity(str(small), size="small", num_workers=1, progress=False)
    out = tmp_path / "tiny"
    write_minicity(str(out), size="tiny", seed=1, num_workers=1, progress=False)
    (out / "source_train" / "part-00007.parquet").write_bytes(b"stale")
    manifest = write_minicity(str(out), size="tiny", seed=2, num_workers=1, progress=False, overwrite=True)
    assert manifest["seed"] == 2 and manifest["splits"]["source_train"]["rows"] == 3
    assert [Path(f).name for f in list_shard_files(str(out / "source_train"))] == ["part-00000.parquet"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers_other_seed_other_bytes(tmp_path, tiny):
    runs = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        write_minicity(str(tmp_path / name), size=tiny, seed=seed, num_workers=workers, progress=False)
        runs[name] = tree_bytes(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys()
    assert all(runs["a"][f] != runs["c"][f] for f in runs["a"])
