"""A damaged shard is named (issue #17): train's driver-side check, eval, a mid-stream read error
(Ray Data's read names no file) and a folder that differs from its manifest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from road_ray.config import Config, apply_overrides
from road_ray.data.shard_check import check_shard_folder, locate_damaged_part, named_read_error
from road_ray.data.shards import ShardWriter, encode_png, iter_rows, split_entry, write_manifest
from road_ray.engine.resolve import check_shard_folders
from road_ray.failures import DamagedShard

PARTS = 4


def write_tiny_dataset(out: Path, splits=("train", "val"), rows_per_part: int = 2) -> Path:
    """``out/{split}/part-*.parquet`` (``PARTS`` parts of ``rows_per_part`` 8x16 images) + manifest."""
    rng = np.random.default_rng(0)
    entries = {}
    for split in splits:
        with ShardWriter(str(out / split), max_rows=rows_per_part) as writer:
            for i in range(PARTS * rows_per_part):
                image = rng.integers(0, 255, (8, 16, 3), dtype=np.uint8)
                label = rng.integers(0, 19, (8, 16), dtype=np.uint8)
                writer.write(
                    {
                        "id": f"{split}_{i:03d}",
                        "domain": "source",
                        "split": split,
                        "image": encode_png(image),
                        "label": encode_png(label),
                        "height": 8,
                        "width": 16,
                    }
                )
        entries[split] = split_entry(split, writer, "source", np.zeros(19), 0)
    write_manifest(str(out), {"dataset": "tiny", "splits": entries, "skipped": []})
    return out


def truncate(part: Path) -> None:
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])


def corrupt_first_page(part: Path) -> None:
    """Damage the first page header, keep the footer: only reading the data shows it."""
    data = bytearray(part.read_bytes())
    data[4:68] = b"\xff" * 64
    part.write_bytes(bytes(data))


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


def test_a_whole_folder_passes(tiny):
    assert len(check_shard_folder(str(tiny / "train"), "data.source")) == PARTS


def test_a_truncated_part_is_named_with_the_key(tiny):
    truncate(tiny / "train" / "part-00002.parquet")
    with pytest.raises(DamagedShard) as e:
        check_shard_folder(str(tiny / "train"), "data.source")
    message = str(e.value)
    assert message.startswith(f"data.source: {tiny / 'train' / 'part-00002.parquet'}: not a Parquet file")
    assert "truncated?" in message and len(message.splitlines()) == 1, message


def test_train_check_names_the_split_key(tiny):
    """``road-ray train`` runs ``check_shard_folders`` on the driver before Ray starts."""
    truncate(tiny / "val" / "part-00001.parquet")
    cfg = apply_overrides(
        Config(),
        {"data.source": str(tiny / "train"), "data.target": str(tiny / "train"), "data.target_val": str(tiny / "val")},
    )
    with pytest.raises(DamagedShard, match=r"^data\.target_val: .*val/part-00001\.parquet: not a Parquet file"):
        check_shard_folders(cfg)


def test_parts_missing_from_or_added_to_the_manifest_are_named(tiny):
    (tiny / "train" / "part-00003.parquet").unlink()
    with pytest.raises(
        DamagedShard, match=r"^data\.source: .*train/part-00003\.parquet is listed in .*manifest\.json but missing"
    ):
        check_shard_folder(str(tiny / "train"), "data.source")
    (tiny / "train" / "part-00003.parquet").write_bytes((tiny / "train" / "part-00000.parquet").read_bytes())
    (tiny / "train" / "part-00007.parquet").write_bytes((tiny / "train" / "part-00000.parquet").read_bytes())
    with pytest.raises(
        DamagedShard, match=r"^data\.source: .*train/part-00007\.parquet is not listed in .*manifest\.json"
    ):
        check_shard_folder(str(tiny / "train"), "data.source")
    (tiny / "train" / "part-00007.parquet").unlink()
    check_shard_folder(str(tiny / "train"), "data.source")  # the same row count again: whole


def test_a_part_damaged_inside_is_located_after_a_read_error(tiny):
    part = tiny / "train" / "part-00001.parquet"
    corrupt_first_page(part)
    check_shard_folder(str(tiny / "train"), "data.source")  # the footer cannot show it
    assert locate_damaged_part(str(tiny / "train")).startswith(f"{part}: unreadable")
    error = named_read_error("data.source", str(tiny / "train"), OSError("Couldn't deserialize thrift"))
    assert str(error).startswith(f"data.source: {part}: unreadable") and len(str(error).splitlines()) == 1
    with pytest.raises(ValueError, match=r"part-00001\.parquet: cannot be read"):
        list(iter_rows(str(tiny / "train")))  # road-ray eval's reader names it too


def test_eval_names_a_damaged_part(tiny, tmp_path):
    from road_ray.engine.checkpoint import save_checkpoint
    from road_ray.models import build_segmenter

    cfg = apply_overrides(Config(), {"model.pretrained": "none"})
    checkpoint = save_checkpoint(
        tmp_path / "ck",
        config=cfg,
        iteration=1,
        student=build_segmenter(cfg.model),
        domain_classifiers=None,
        optimizer=None,
    )
    truncate(tiny / "val" / "part-00000.parquet")
    r = subprocess.run(
        [sys.executable, "-m", "road_ray.cli", "eval", "--checkpoint", str(checkpoint), "--shards", str(tiny / "val")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"road-ray eval: error: --shards: {tiny / 'val' / 'part-00000.parquet'}: not a Parquet file")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.ray
def test_a_trial_or_run_names_a_part_ray_data_cannot_read(ray_session, tiny):
    """Ray samples parts when it plans a read (on the driver of a run, or in a Tune trial):
    a part whose footer is fine but whose data is not is named there, with the key."""
    from road_ray.on_ray.train import _datasets

    corrupt_first_page(tiny / "train" / "part-00000.parquet")
    cfg = apply_overrides(
        Config(),
        {"data.source": str(tiny / "train"), "data.target": str(tiny / "val"), "data.target_val": "none"},
    )
    with pytest.raises(DamagedShard) as e:
        _datasets(cfg)
    assert str(e.value).startswith(f"data.source: {tiny / 'train' / 'part-00000.parquet'}: unreadable"), str(e.value)
    assert len(str(e.value).splitlines()) == 1
