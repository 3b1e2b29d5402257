"""road_ray.data.prepare: tiny Cityscapes / GTA5 / SYNTHIA trees in their real layouts, with defects."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from road_ray.data import shards
from road_ray.data.prepare import DATASETS, prepare_dataset

H, W = 16, 32

# One label row: the 19 ids of the table in trainId order, then 13 ids outside it.
CITYSCAPES_IDS = [
    7,
    8,
    11,
    12,
    13,
    17,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    31,
    32,
    33,
    0,
    1,
    4,
    6,
    9,
    10,
    14,
    15,
    16,
    18,
    29,
    30,
    34,
]
SYNTHIA_IDS = [
    3,
    4,
    2,
    21,
    5,
    7,
    15,
    9,
    6,
    16,
    1,
    10,
    17,
    8,
    18,
    19,
    20,
    12,
    11,
    0,
    13,
    14,
    22,
    23,
    40,
    255,
    259,
    260,
    300,
    1000,
    4096,
    65535,
]
# 259 = 256 + 3 and 260 = 256 + 4: only a true 16-bit read maps them to 255 (not road/sidewalk).
EXPECTED_TRAINIDS = list(range(19)) + [255] * 13


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def save_rgb(path: Path, seed: int, h: int = H, w: int = W) -> Path:
    return save(path, Image.fromarray(rgb(seed, h, w)))


def id_rows(ids: list[int], h: int = H) -> np.ndarray:
    return np.tile(np.array(ids), (h, 1))


def save_ids(path: Path, h: int = H, w: int = W) -> Path:
    """An 8-bit labelIds PNG (Cityscapes)."""
    return save(path, Image.fromarray(id_rows(CITYSCAPES_IDS, h)[:, :w].astype(np.uint8), mode="L"))


def save_palette_label(path: Path, h: int = H, w: int = W) -> Path:
    """A GTA5-style palette PNG: indices are labelIds, colours deliberately differ from them."""
    label = Image.fromarray(id_rows(CITYSCAPES_IDS, h)[:, :w].astype(np.uint8), mode="P")
    label.putpalette([c for i in range(256) for c in (255 - i, (i * 7) % 256, (i * 13 + 5) % 256)])
    return save(path, label)


def save_synthia_label(path: Path, seed: int = 0) -> Path:
    """16-bit BGR PNG: R holds the class id, G and B hold junk."""
    junk = np.random.default_rng(seed).integers(0, 65536, (H, W, 2), dtype=np.uint16)
    bgr = np.dstack([junk[..., 0], junk[..., 1], id_rows(SYNTHIA_IDS).astype(np.uint16)])
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_cityscapes(root: Path) -> Path:
    def image(split, stem, seed, **kw):
        return save_rgb(root / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png", seed, **kw)

    def label(split, stem, **kw):
        city_dir = root / "gtFine" / split / stem.split("_")[0]
        save(city_dir / f"{stem}_gtFine_color.png", Image.new("RGB", (W, H)))  # other gtFine files are ignored
        return save_ids(city_dir / f"{stem}_gtFine_labelIds.png", **kw)

    for i, stem in enumerate(["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000100"]):
        image("train", stem, i), label("train", stem)
    image("train", "aachen_000002_000019", 10)  # image without label
    label("train", "bremen_000000_000001")  # label without image
    image("train", "aachen_000003_000019", 11), label("train", "aachen_000003_000019")
    truncate(root / "leftImg8bit/train/aachen/aachen_000003_000019_leftImg8bit.png")  # truncated image
    image("train", "aachen_000004_000019", 12)
    (root / "gtFine/train/aachen/aachen_000004_000019_gtFine_labelIds.png").write_bytes(b"")  # empty label
    rgba = Image.fromarray(np.dstack([rgb(13), np.full((H, W), 200, np.uint8)]), mode="RGBA")
    save(root / "leftImg8bit/train/dusseldorf/dusseldorf_000000_000001_leftImg8bit.png", rgba)  # RGBA: kept, as RGB
    label("train", "dusseldorf_000000_000001")
    for i, stem in enumerate(["frankfurt_000000_000294", "lindau_000000_000019"]):
        image("val", stem, 20 + i), label("val", stem)
    image("val", "munster_000000_000019", 30), label("val", "munster_000000_000019", h=H - 1)  # size differs
    image("test", "berlin_000000_000019", 40), label("test", "berlin_000000_000019")  # no real labels: left out
    return root


def make_gta5(root: Path) -> Path:
    for i, stem in enumerate(["00001", "00002", "00005", "00010"]):  # gaps in the numbering
        save_rgb(root / "images" / f"{stem}.png", i), save_palette_label(root / "labels" / f"{stem}.png")
    save_palette_label(root / "labels/00007.png")  # label without image
    save_rgb(root / "images/00008.png", 8)  # image without label
    save_rgb(root / "images/00011.png", 11), save_palette_label(root / "labels/00011.png", w=W - 1)  # size differs
    (root / "images/00012.png").write_bytes(b""), save_palette_label(root / "labels/00012.png")  # empty image
    save_rgb(root / "images/00013.png", 13)
    (root / "labels/00013.png").write_bytes(b"this is not a png at all")  # corrupt label
    return root


def make_synthia(root: Path) -> Path:
    for i, stem in enumerate(["0000000", "0000003", "0000004"]):
        save_rgb(root / "RGB" / f"{stem}.png", i), save_synthia_label(root / "GT/LABELS" / f"{stem}.png", i)
    save_rgb(root / "RGB/0000006.png", 6)  # image without label
    save_rgb(root / "RGB/0000007.png", 7), save_synthia_label(root / "GT/LABELS/0000007.png")
    truncate(root / "GT/LABELS/0000007.png")  # truncated 16-bit label
    return root


MAKERS = {"cityscapes": make_cityscapes, "gta5": make_gta5, "synthia": make_synthia}


def rows_of(out, split: str) -> list[dict]:
    return list(shards.iter_rows(f"{out}/{split}"))


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def skipped_reasons(manifest: dict) -> dict[str, str]:
    return {s["file"]: s["reason"] for s in manifest["skipped"]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, tuple[Path, Path, dict]]:
    """Every dataset prepared once (one worker): name -> (root, out, manifest)."""
    base = tmp_path_factory.mktemp("prepared")
    result = {}
    for name, make in MAKERS.items():
        root, out = make(base / f"{name}_raw"), base / f"{name}_out"
        result[name] = (root, out, prepare_dataset(name, str(root), str(out), num_workers=1, progress=False))
    return result


def test_cityscapes_rows_ids_and_labels(prepared):
    root, out, manifest = prepared["cityscapes"]
    assert set(manifest["splits"]) == {"train", "val"}  # the test split is left out
    train, val = rows_of(out, "train"), rows_of(out, "val")
    assert [r["id"] for r in train] == [
        "aachen_000000_000019",
        "aachen_000001_000019",
        "bochum_000000_000100",
        "dusseldorf_000000_000001",
    ]
    assert [r["id"] for r in val] == ["frankfurt_000000_000294", "lindau_000000_000019"]
    assert manifest["splits"]["train"]["rows"] == manifest["splits"]["train"]["labeled_rows"] == 4
    assert manifest["splits"]["val"]["rows"] == 2
    for row in train + val:
        assert (row["domain"], row["height"], row["width"]) == ("target", H, W)
        label = decode(row["label"])
        assert label.dtype == np.uint8 and label.shape == (H, W)
        assert (label == np.array(EXPECTED_TRAINIDS, np.uint8)).all()  # incl. unknown ids -> 255
    assert train[0]["split"] == "train" and val[0]["split"] == "val"
    # An 8-bit RGB PNG keeps its original bytes; the RGBA one is converted to RGB.
    original = root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert train[0]["image"] == original.read_bytes()
    rgba_row = train[3]
    assert Image.open(io.BytesIO(rgba_row["image"])).mode == "RGB"
    assert (decode(rgba_row["image"]) == rgb(13)).all()


def test_cityscapes_defects_are_listed(prepared):
    _, _, manifest = prepared["cityscapes"]
    reasons = skipped_reasons(manifest)
    assert set(reasons) == {
        "leftImg8bit/train/aachen/aachen_000002_000019_leftImg8bit.png",
        "gtFine/train/bremen/bremen_000000_000001_gtFine_labelIds.png",
        "leftImg8bit/train/aachen/aachen_000003_000019_leftImg8bit.png",
        "gtFine/train/aachen/aachen_000004_000019_gtFine_labelIds.png",
        "gtFine/val/munster/munster_000000_000019_gtFine_labelIds.png",
    }
    assert "image without a label" in reasons["leftImg8bit/train/aachen/aachen_000002_000019_leftImg8bit.png"]
    assert "label without an image" in reasons["gtFine/train/bremen/bremen_000000_000001_gtFine_labelIds.png"]
    assert "truncated" in reasons["leftImg8bit/train/aachen/aachen_000003_000019_leftImg8bit.png"]
    assert "empty" in reasons["gtFine/train/aachen/aachen_000004_000019_gtFine_labelIds.png"]
    assert "32x15" in reasons["gtFine/val/munster/munster_000000_000019_gtFine_labelIds.png"]


def test_gta5_reads_palette_indices_and_pairs_by_stem(prepared):
    _, out, manifest = prepared["gta5"]
    rows = rows_of(out, "train")
    assert [r["id"] for r in rows] == ["00001", "00002", "00005", "00010"]
    assert manifest["splits"]["train"]["rows"] == 4
    for row in rows:
        assert row["domain"] == "source" and row["split"] == "train"
        assert (decode(row["label"]) == np.array(EXPECTED_TRAINIDS, np.uint8)).all()
    reasons = skipped_reasons(manifest)
    assert set(reasons) == {
        "labels/00007.png",
        "images/00008.png",
        "labels/00011.png",
        "images/00012.png",
        "labels/00013.png",
    }
    assert "label without an image" in reasons["labels/00007.png"]
    assert "image without a label" in reasons["images/00008.png"]
    assert "31x16" in reasons["labels/00011.png"] and "32x16" in reasons["labels/00011.png"]
    assert "empty" in reasons["images/00012.png"]
    assert "corrupt" in reasons["labels/00013.png"]


def test_synthia_reads_the_16bit_red_channel(prepared):
    _, out, manifest = prepared["synthia"]
    rows = rows_of(out, "train")
    assert [r["id"] for r in rows] == ["0000000", "0000003", "0000004"]
    assert manifest["label_space"] == "cityscapes19"
    for row in rows:
        assert row["domain"] == "source"
        assert (decode(row["label"]) == np.array(EXPECTED_TRAINIDS, np.uint8)).all()
    reasons = skipped_reasons(manifest)
    assert set(reasons) == {"RGB/0000006.png", "GT/LABELS/0000007.png"}
    assert "truncated" in reasons["GT/LABELS/0000007.png"]


@pytest.mark.parametrize("name", DATASETS)
def test_manifest_counts_and_class_pixels(prepared, name):
    root, out, manifest = prepared[name]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert (manifest["dataset"], manifest["version"], manifest["root"]) == (name, 1, str(root))
    assert manifest["image_format"] == "png"
    for split, entry in manifest["splits"].items():
        assert len(rows_of(out, split)) == entry["rows"]
        assert all((out / part).is_file() for part in entry["shards"])
        assert all(part.startswith(f"{split}/part-") for part in entry["shards"])
        # Every label is one row of 19 known ids + 13 unknown ones, repeated H times.
        assert entry["class_pixels"] == [entry["rows"] * H] * 19
        assert entry["ignore_pixels"] == entry["rows"] * H * 13
        assert sum(entry["class_pixels"]) + entry["ignore_pixels"] == entry["rows"] * H * W
    assert all(s["reason"] for s in manifest["skipped"])


@pytest.mark.parametrize("name", DATASETS)
def test_two_workers_give_identical_output(prepared, tmp_path, name):
    root, out, manifest = prepared[name]
    out2 = tmp_path / "out2"
    manifest2 = prepare_dataset(name, str(root), str(out2), num_workers=2, progress=False)
    assert manifest2 == manifest
    for split in manifest["splits"]:
        assert rows_of(out2, split) == rows_of(out, split)


def test_jpeg_images(prepared, tmp_path):
    root, _, _ = prepared["gta5"]
    manifest = prepare_dataset("gta5", str(root), str(tmp_path / "out"), image_format="jpeg", progress=False)
    assert manifest["image_format"] == "jpeg"
    for row in rows_of(tmp_path / "out", "train"):
        assert row["image"][:2] == b"\xff\xd8"
        image = Image.open(io.BytesIO(row["image"]))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (W, H)


def test_file_uri_output(prepared, tmp_path):
    root, _, _ = prepared["synthia"]
    uri = f"file://{tmp_path}/uri_out"
    manifest = prepare_dataset("synthia", str(root), uri, progress=False)
    assert shards.read_manifest(uri) == manifest
    assert (tmp_path / "uri_out/manifest.json").is_file()
    assert (tmp_path / "uri_out" / manifest["splits"]["train"]["shards"][0]).is_file()
    assert [r["id"] for r in shards.iter_rows(f"{uri}/train")] == ["0000000", "0000003", "0000004"]


def test_existing_output_is_refused_unless_overwrite(prepared, tmp_path):
    root, _, _ = prepared["gta5"]
    out = tmp_path / "out"
    first = prepare_dataset("gta5", str(root), str(out), progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="already exists.*overwrite"):
        prepare_dataset("gta5", str(root), str(out), progress=False)
    assert (out / "manifest.json").read_bytes() == before  # the refused run touched nothing
    stale = out / "train/part-00009.parquet"
    stale.write_bytes((out / first["splits"]["train"]["shards"][0]).read_bytes())
    second = prepare_dataset("gta5", str(root), str(out), progress=False, overwrite=True)
    assert second == first
    assert not stale.exists()  # no leftover part mixes into the new output
    assert len(rows_of(out, "train")) == 4


@pytest.mark.parametrize(
    ("name", "folders", "message"),
    [
        ("cityscapes", [], "leftImg8bit/ and gtFine/"),
        ("gta5", ["images", "labels"], "found no images.*images/ and labels/"),
        ("synthia", ["RGB"], "missing GT/LABELS/.*RGB/ and GT/LABELS/"),
        ("gta5", ["leftImg8bit/train", "gtFine/train"], "missing images/, labels/"),
    ],
)
def test_empty_or_wrong_root(tmp_path, name, folders, message):
    root = tmp_path / "root"
    root.mkdir()
    for folder in folders:
        (root / folder).mkdir(parents=True)
    with pytest.raises(ValueError, match=message) as error:
        prepare_dataset(name, str(root), str(tmp_path / "out"), progress=False)
    assert str(root) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_root_and_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        prepare_dataset("synthia", str(tmp_path / "nowhere"), str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match="cityscapes, gta5, synthia"):
        prepare_dataset("mapillary", str(tmp_path), str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match="png, jpeg"):
        prepare_dataset("gta5", str(tmp_path), str(tmp_path / "out"), image_format="webp", progress=False)


def test_shard_parts_hold_at_most_max_rows(tmp_path):
    """Parts close at ``max_rows`` (Ray Data reads a split with a task per file), row groups
    never straddle two parts, and every row is written once, in order."""
    import pyarrow.parquet as pq

    row = {"domain": "source", "split": "train", "image": b"png", "label": None, "height": 1, "width": 1}
    with shards.ShardWriter(str(tmp_path / "s"), rows_per_group=50, max_rows=128) as writer:
        for i in range(300):
            writer.write({**row, "id": f"{i:03d}"})
    parts = sorted((tmp_path / "s").glob("part-*.parquet"))
    groups = [
        [m.row_group(g).num_rows for g in range(m.num_row_groups)] for m in (pq.ParquetFile(p).metadata for p in parts)
    ]
    assert groups == [[50, 50, 28], [50, 50, 28], [44]]
    assert [r["id"] for r in shards.iter_rows(str(tmp_path / "s"))] == [f"{i:03d}" for i in range(300)]
    with pytest.raises(ValueError, match="max_rows >= 1"):
        shards.ShardWriter(str(tmp_path / "t"), max_rows=0)


def test_shard_writer_takes_another_schema(tmp_path):
    """MiniCity's pretraining split (id, image, class_id) goes through the same atomic writer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("class_id", pa.int32())])
    with shards.ShardWriter(str(tmp_path / "p"), schema=schema, rows_per_group=4, max_rows=4) as writer:
        for i in range(6):
            writer.write({"id": f"{i}", "class_id": i % 2})
    assert [p.name for p in sorted((tmp_path / "p").iterdir())] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "p").schema.names == ["id", "class_id"]
    assert shards.split_shards("p", writer) == ["p/part-00000.parquet", "p/part-00001.parquet"]
    with pytest.raises(ValueError, match="missing required columns \\['id'\\]"):
        shards.ShardWriter(str(tmp_path / "q"), schema=schema).write({"id": None, "class_id": 1})


def test_split_entry_of_an_unlabeled_split(tmp_path):
    row = {"domain": "target", "split": "t", "image": b"png", "label": None, "height": 1, "width": 1}
    with shards.ShardWriter(str(tmp_path / "t")) as writer:
        writer.write({**row, "id": "a"})
    entry = shards.split_entry("t", writer, "target", np.arange(19), 7, labeled=False)
    assert entry == {
        "rows": 1,
        "labeled_rows": 0,
        "domain": "target",
        "shards": ["t/part-00000.parquet"],
        "class_pixels": [0] * 19,
        "ignore_pixels": 0,
    }
    assert shards.split_entry("t", writer, "target", np.arange(19), 7)["class_pixels"] == list(range(19))
