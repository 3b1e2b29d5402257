"""Shards and results on object storage, through pyarrow's file systems (cluster/README.md §2).

A ``file://`` URI takes the place of ``s3://`` / ``gs://``: the same code path (a URI, resolved
with ``pyarrow.fs.FileSystem.from_uri``), without a cloud account.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> str:
    """A ``file://`` "bucket" holding MiniCity small, prepared straight to the URI."""
    from road_ray.data.minicity import write_minicity

    uri = f"file://{tmp_path_factory.mktemp('bucket')}"
    write_minicity(f"{uri}/minicity", size="small", num_workers=1)
    return uri


def test_shards_on_a_uri(bucket):
    from road_ray.data.shards import count_rows, iter_rows, list_shard_files, read_manifest

    manifest = read_manifest(f"{bucket}/minicity")
    for split in ("source_train", "target_train", "target_val"):
        files = list_shard_files(f"{bucket}/minicity/{split}")
        assert files and all(f.startswith(f"{bucket}/minicity/{split}/part-") for f in files), files
        assert count_rows(f"{bucket}/minicity/{split}") == manifest["splits"][split]["rows"]
    row = next(iter_rows(f"{bucket}/minicity/target_val"))
    assert row["label"] is not None and row["image"][:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="does not exist"):
        list_shard_files(f"{bucket}/minicity/no_such_split")


@pytest.mark.ray
@pytest.mark.slow
def test_train_and_eval_on_uri_storage(bucket, ray_session, tmp_path, capsys):
    """``road-ray train --smoke --storage file://...`` on shards named by URI, then ``road-ray eval``.

    The CLI runs in this process, on the session's Ray instance (``init_ray`` joins it).
    """
    from road_ray.cli import main

    shards = f"{bucket}/minicity"
    code = main(
        [
            "train",
            "--smoke",
            "--storage",
            f"{bucket}/runs",
            "--name",
            "uri-smoke",
            "--set",
            f"data.source={shards}/source_train",
            "--set",
            f"data.target={shards}/target_train",
            "--set",
            f"data.target_val={shards}/target_val",
            # storage is the point here, not the small backbone's pretraining cache
            "--set",
            "model.pretrained=none",
            "--set",
            "model.allow_untrained_teacher=true",
            "--set",
            "run.max_failures=0",
            "--set",
            "optim.max_iters=2",
            "--set",
            "run.eval_every=2",
            "--set",
            "data.max_val_images=2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    run_dir = bucket + "/runs/uri-smoke"
    assert summary["iter"] == 2 and summary["miou"] is not None
    # Ray reports checkpoints as paths of the storage's file system; the summary gives them
    # back the storage's scheme, so they can be passed on as they are (on s3:// too).
    assert summary["checkpoint"] and summary["checkpoint"].startswith(run_dir), summary
    assert Path(summary["checkpoint"].removeprefix("file://"), "checkpoint.pt").is_file()

    scores_file = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--checkpoint",
            summary["checkpoint"],
            "--shards",
            f"{shards}/target_val",
            "--max-images",
            "2",
            "--json",
            str(scores_file),
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    scores = json.loads(scores_file.read_text())
    assert 0.0 <= scores["miou"] <= 100.0 and set(scores["iou"]) >= {"road", "sky"}
