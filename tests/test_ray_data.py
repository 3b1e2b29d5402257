"""Ray Data streams: full balanced step batches, re-opening, new crops every epoch, equal splits, val."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from road_ray.config import DataConfig
from road_ray.data import boxes as B
from road_ray.data.shards import ShardWriter, encode_png

pytestmark = pytest.mark.ray

H, W, CROP = 64, 128, 32
SOURCE_ROWS, TARGET_ROWS = 13, 12  # 13: an equal 2-way split has to drop a row


def write_split(out, n: int, domain: str, labeled, seed: int, max_rows: int = 128) -> list[str]:
    """``labeled``: True, False, or a function of the row index."""
    rng = np.random.default_rng(seed)
    ids = []
    with ShardWriter(str(out), rows_per_group=5, max_rows=max_rows) as writer:
        for i in range(n):
            has_label = labeled(i) if callable(labeled) else labeled
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            label = rng.integers(0, 19, (H, W), dtype=np.uint8)
            label[:4] = 255
            writer.write(
                {
                    "id": f"{domain}{i:03d}",
                    "domain": domain,
                    "split": "train",
                    "image": encode_png(image),
                    "label": encode_png(label) if has_label else None,
                    "height": H,
                    "width": W,
                }
            )
            if has_label:
                ids.append(f"{domain}{i:03d}")
    return ids


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_split(root / "source", SOURCE_ROWS, "source", True, seed=0)
    write_split(root / "target", TARGET_ROWS, "target", False, seed=1)
    val_ids = write_split(root / "val", 5, "target", lambda i: i % 2 == 0, seed=2)
    splits = {name: str(root / name) for name in ("source", "target", "val")}
    return {**splits, "val_ids": val_ids}


@pytest.fixture
def cfg():
    # one pass per execution, so that the epochs below are passes over the 13 / 12 rows
    return DataConfig(
        crop_size=CROP,
        batch_source=2,
        batch_target=3,
        cpus_per_map_task=0.5,
        prefetch_batches=1,
        min_rows_per_execution=0,
    )


def streams(shards, cfg, seed=0):
    from road_ray.on_ray.data import train_stream

    return (
        train_stream(shards["source"], cfg, seed=seed, labeled=True),
        train_stream(shards["target"], cfg, seed=seed + 1, labeled=False),
    )


def take(iterator, steps: int) -> list[dict[str, torch.Tensor]]:
    out = [next(iterator) for _ in range(steps)]
    iterator.close()
    return out


def check_step(batch: dict[str, torch.Tensor], cfg: DataConfig) -> None:
    bs, bt, c = cfg.batch_source, cfg.batch_target, cfg.crop_size
    assert set(batch) == {"source_image", "source_label", "source_box", "target_image", "target_box"}
    expected = {
        "source_image": ((bs, 3, c, c), torch.uint8),  # uint8 on the wire, normalized on the device
        "source_label": ((bs, c, c), torch.uint8),
        "source_box": ((bs, B.BOX_SIZE), torch.float32),
        "target_image": ((bt, 3, c, c), torch.uint8),
        "target_box": ((bt, B.BOX_SIZE), torch.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    labels = batch["source_label"]
    assert bool(((labels >= 0) & (labels < 19) | (labels == 255)).all())
    for key in ("source_image", "target_image"):
        assert int(batch[key].max()) > 0  # real pixels, not an empty buffer
    for key in ("source_box", "target_box"):
        boxes = batch[key]
        B.check_boxes(boxes)
        assert bool((boxes[:, B.IMAGE_HEIGHT] == H).all() and (boxes[:, B.IMAGE_WIDTH] == W).all())
        assert bool((boxes[:, B.HEIGHT] == c).all() and (boxes[:, B.WIDTH] == c).all())
        scale = boxes[:, B.SCALE]
        assert bool(((scale >= cfg.scale_min) & (scale <= cfg.scale_max)).all())


def test_step_batches_are_full_balanced_and_keep_coming(ray_session, shards, cfg):
    from road_ray.on_ray.data import mixed_domain_batches

    source, target = streams(shards, cfg)
    # One epoch is 6 source steps (13 rows // 2) and 4 target steps (12 // 3): 14 steps re-open
    # the source stream twice and the target stream three times.
    steps = take(
        mixed_domain_batches(source, target, batch_source=2, batch_target=3, prefetch_batches=1, shuffle_buffer=4),
        14,
    )
    assert len(steps) == 14
    for batch in steps:
        check_step(batch, cfg)


def test_new_crops_every_epoch_and_every_block(ray_session, shards, cfg):
    from road_ray.on_ray.data import mixed_domain_batches

    source, target = streams(shards, cfg)
    per_epoch = SOURCE_ROWS // cfg.batch_source  # 6 steps = 12 crops per source epoch
    steps = take(
        mixed_domain_batches(source, target, batch_source=2, batch_target=3, prefetch_batches=1, shuffle_buffer=0),
        2 * per_epoch,
    )
    boxes = torch.cat([s["source_box"] for s in steps]).numpy()
    epoch1, epoch2 = boxes[: 2 * per_epoch], boxes[2 * per_epoch :]
    # Every crop of an epoch has its own random scale (a generator pickled into every task
    # would repeat them block after block) ...
    assert len(np.unique(epoch1[:, B.SCALE])) == len(epoch1)
    # ... and the next epoch cuts other crops of the same images.
    assert not {tuple(b) for b in epoch1} & {tuple(b) for b in epoch2}
    assert len(np.unique(boxes[:, B.SCALE])) == len(boxes)


def test_a_reproducible_stream_gives_the_same_batches_twice(ray_session, tmp_path, cfg):
    """run.reproducible's two switches: rows in task order (preserve_order) and a seeded local
    shuffle; with both, two executions of one seed deliver the same step batches, over epochs."""
    from road_ray.on_ray.data import mixed_domain_batches, train_stream

    write_split(tmp_path / "source", SOURCE_ROWS, "source", True, seed=0, max_rows=2)  # 7 files, 7 read tasks
    write_split(tmp_path / "target", TARGET_ROWS, "target", False, seed=1, max_rows=2)

    def run() -> list[dict[str, torch.Tensor]]:
        source = train_stream(str(tmp_path / "source"), cfg, seed=0, labeled=True)
        target = train_stream(str(tmp_path / "target"), cfg, seed=1, labeled=False)
        for ds in (source, target):
            ds.context.execution_options.preserve_order = True  # what Train's DataConfig gets
        batches = mixed_domain_batches(
            source, target, batch_source=2, batch_target=3, prefetch_batches=1, shuffle_buffer=6, shuffle_seed=0
        )
        return take(batches, 14)  # two and a half source epochs

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        check_step(a, cfg)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # still new crops every epoch (6 source steps each), not one epoch repeated
    assert not torch.equal(first[0]["source_box"], first[6]["source_box"])


def test_two_worker_equal_split(ray_session, shards, cfg):
    """What Ray Train does with DataConfig(datasets_to_split=[...]): streaming_split(n, equal=True)."""
    from road_ray.on_ray.data import mixed_domain_batches

    source, target = streams(shards, cfg)
    source_splits = source.streaming_split(2, equal=True)
    target_splits = target.streaming_split(2, equal=True)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            # Per worker and epoch: 6 source rows (3 steps of 2), 6 target rows (2 steps of 3);
            # 7 steps re-open both streams, which is a barrier across the two workers.
            results[rank] = take(
                mixed_domain_batches(
                    source_splits[rank], target_splits[rank], batch_source=2, batch_target=3, prefetch_batches=1
                ),
                7,
            )
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a worker hung on the split"
    assert not errors, errors
    for rank in range(2):
        assert len(results[rank]) == 7
        for batch in results[rank]:
            check_step(batch, cfg)
        # the split's second epoch cuts new crops too (3 source steps per epoch and worker)
        boxes = [{tuple(b) for s in results[rank][e * 3 : e * 3 + 3] for b in s["source_box"].tolist()} for e in (0, 1)]
        assert len(boxes[0]) == 6 and not boxes[0] & boxes[1]

    # Equal rows per worker in an epoch (13 rows -> 6 + 6, one dropped).
    rows: dict[int, int] = {}
    splits = streams(shards, cfg)[0].streaming_split(2, equal=True)

    def count(rank: int) -> None:
        rows[rank] = sum(len(b["box"]) for b in splits[rank].iter_batches(batch_size=None, batch_format="numpy"))

    threads = [threading.Thread(target=count, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert rows == {0: SOURCE_ROWS // 2, 1: SOURCE_ROWS // 2}


def test_an_execution_reads_enough_passes_for_min_rows(ray_session, shards, cfg):
    """Small splits repeat their files in one execution (Ray Data's start-up is paid per
    execution); every pass cuts other crops of the same images."""
    from road_ray.on_ray.data import execution_rows, passes_per_execution, train_stream

    cfg = dataclasses.replace(cfg, min_rows_per_execution=30)
    assert passes_per_execution(shards["source"], cfg) == 3  # ceil(30 / 13)
    assert execution_rows(shards["source"], cfg) == 39
    assert passes_per_execution(shards["source"], dataclasses.replace(cfg, min_rows_per_execution=0)) == 1
    rows = list(train_stream(shards["source"], cfg, seed=0, labeled=True).iter_rows())
    assert len(rows) == 3 * SOURCE_ROWS
    per_id: dict[str, set] = {}
    for row in rows:
        per_id.setdefault(str(row["id"]), set()).add(tuple(np.asarray(row["box"]).tolist()))
    assert len(per_id) == SOURCE_ROWS and all(len(b) == 3 for b in per_id.values())


def test_read_and_crop_run_as_one_task_per_shard_file(ray_session, tmp_path, cfg):
    """With a few shard files, Ray fuses read -> label filter -> nonce -> crop into one
    operator (no PNG blocks through the object store, one CPU budget): what CropBatch on whole
    blocks (``batch_size=None``) buys. A row count per call would keep them apart."""
    from road_ray.on_ray.data import train_stream

    write_split(tmp_path / "source", 16, "source", lambda i: i % 4 != 3, seed=3, max_rows=4)
    assert len(list((tmp_path / "source").glob("part-*.parquet"))) == 4
    ds = train_stream(str(tmp_path / "source"), cfg, seed=0, labeled=True)
    assert sum(len(b["box"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")) == 12
    operators = [line for line in ds.stats().splitlines() if line.startswith("Operator ")]
    assert len(operators) == 1 and "ReadParquet" in operators[0] and "CropBatch" in operators[0], operators


def test_val_stream_yields_whole_labeled_images(ray_session, shards, cfg):
    from road_ray.on_ray.data import iter_val_batches, val_stream

    batches = list(iter_val_batches(val_stream(shards["val"], cfg)))
    assert sorted(b["id"][0] for b in batches) == sorted(shards["val_ids"])  # unlabeled rows skipped
    for b in batches:
        assert tuple(b["image"].shape) == (1, 3, H, W) and b["image"].dtype == torch.float32
        assert tuple(b["label"].shape) == (1, H, W) and b["label"].dtype == torch.int64
        assert isinstance(b["id"], list) and len(b["id"]) == 1
        assert bool((b["label"][0, :4] == 255).all())
    # a capped evaluation takes the same images every time: the first labeled rows
    for _ in range(2):
        subset = [b["id"][0] for b in iter_val_batches(val_stream(shards["val"], cfg, max_images=2))]
        assert sorted(subset) == shards["val_ids"][:2]


def test_clear_errors(ray_session, shards, cfg, tmp_path):
    from road_ray.on_ray.data import mixed_domain_batches, read_shards

    with pytest.raises(ValueError, match="does not exist"):
        read_shards(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no part-"):
        read_shards(str(tmp_path))
    source, target = streams(shards, cfg)
    with pytest.raises(RuntimeError, match="fewer rows than one batch"):
        next(mixed_domain_batches(source, target, batch_source=SOURCE_ROWS + 1, batch_target=3, prefetch_batches=1))


def test_compare_with_dataloader_runs(ray_session, shards, cfg):
    from road_ray.on_ray.bench_data import compare_with_dataloader

    result = compare_with_dataloader(shards["source"], cfg, num_workers=1, steps=3)
    assert result["ray_data"]["crops_per_s"] > 0 and result["dataloader"]["crops_per_s"] > 0
    assert result["ratio"] > 0
