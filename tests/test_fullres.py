"""Full-resolution data path: shards stored at the base scale, GPU-decode crops, the fullres bench,
bounded memory of prepare (issue #17). Toy sizes; the full-size figures are in README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from road_ray.config import DataConfig
from road_ray.data import boxes as B
from road_ray.data.fullres_synth import get_resolution, write_raw_dataset
from road_ray.data.gpu_decode import DeviceCropBatch, select_crop_transform
from road_ray.data.prepare import prepare_dataset, resize_pair, stored_size
from road_ray.data.shards import encode_jpeg, encode_png, iter_rows
from road_ray.data.transforms import CropBatch, decode_image, decode_label, effective_scale

H, W = 96, 192


def smooth_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image (resampling differs little) and a label of 8-pixel blocks (nearest agrees)."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(
        rng.integers(0, 256, (H // 16, W // 16, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC
    )
    label = np.kron(rng.integers(0, 19, (H // 8, W // 8)), np.ones((8, 8))).astype(np.uint8)
    return image, label


def rows(image: np.ndarray, label: np.ndarray, n: int, encode=encode_png) -> dict[str, np.ndarray]:
    return {
        "id": np.array([f"r{i}" for i in range(n)], dtype=object),
        "image": np.array([encode(image)] * n, dtype=object),
        "label": np.array([encode_png(label)] * n, dtype=object),
        "height": np.full(n, H, dtype=np.int32),
        "width": np.full(n, W, dtype=np.int32),
        "crop_nonce": np.arange(n, dtype=np.float64),
    }


def test_stored_at_half_gives_the_boxes_and_content_of_full_size_at_base_scale_half():
    image, label = smooth_scene()
    small_image, small_label = resize_pair(image, label, 0.5)
    assert small_image.shape[:2] == stored_size(H, W, 0.5) == (H // 2, W // 2)
    cfg = DataConfig(crop_size=32, base_scale=0.5, scale_min=0.75, scale_max=1.25)
    full = CropBatch(cfg, seed=3, labeled=True)(rows(image, label, 8))
    stored = CropBatch(cfg, seed=3, labeled=True)(rows(small_image, small_label, 8))
    # the same boxes, in original-image coordinates: the original's size, the configured scale
    np.testing.assert_array_equal(full["box"], stored["box"])
    assert (stored["box"][:, B.IMAGE_HEIGHT] == H).all() and (stored["box"][:, B.IMAGE_WIDTH] == W).all()
    assert ((stored["box"][:, B.SCALE] >= 0.375) & (stored["box"][:, B.SCALE] <= 0.625)).all()
    # the same content up to resampling (area + bilinear vs bilinear of the original)
    diff = np.abs(full["image"].astype(int) - stored["image"].astype(int))
    assert diff.mean() < 3.0, diff.mean()
    assert (full["label"] == stored["label"]).mean() > 0.95
    # without height/width the stored image would be taken for the original: scaled twice
    no_size = {k: v for k, v in rows(small_image, small_label, 8).items() if k not in ("height", "width")}
    assert not np.array_equal(CropBatch(cfg, seed=3, labeled=True)(no_size)["box"], full["box"])
    assert effective_scale(0.5, 0.5) == 1.0


def test_device_crops_have_the_cpu_paths_boxes_labels_and_shapes():
    image, label = smooth_scene(1)
    small_image, small_label = resize_pair(image, label, 0.5)
    cfg = DataConfig(crop_size=40, base_scale=0.5)
    for img, lbl in ((image, label), (small_image, small_label)):
        batch = rows(img, lbl, 6, encode=encode_jpeg)
        cpu = CropBatch(cfg, seed=1, labeled=True)(batch)
        dev = DeviceCropBatch(cfg, seed=1, labeled=True, device="cpu")(batch)
        np.testing.assert_array_equal(cpu["box"], dev["box"].numpy())
        np.testing.assert_array_equal(cpu["label"], dev["label"].numpy())
        assert tuple(dev["image"].shape) == cpu["image"].shape and dev["image"].dtype == torch.uint8
        # different JPEG decoder and float bilinear: a few grey levels apart at most
        assert np.abs(cpu["image"].astype(int) - dev["image"].numpy().astype(int)).max() <= 4
    assert isinstance(select_crop_transform(cfg, 0, True, "jpeg", device="cpu"), CropBatch)
    assert isinstance(select_crop_transform(cfg, 0, True, "png", device="cuda"), CropBatch)
    assert isinstance(select_crop_transform(cfg, 0, True, "jpeg", device="cuda"), DeviceCropBatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_crops_on_cuda_match_the_cpu_path():
    image, label = smooth_scene(2)
    cfg = DataConfig(crop_size=40, base_scale=0.5)
    batch = rows(image, label, 4, encode=encode_jpeg)
    cpu = CropBatch(cfg, seed=2, labeled=True)(batch)
    dev = DeviceCropBatch(cfg, seed=2, labeled=True, device="cuda")(batch)
    assert dev["image"].device.type == "cuda"
    np.testing.assert_array_equal(cpu["box"], dev["box"].numpy())
    assert np.abs(cpu["image"].astype(int) - dev["image"].cpu().numpy().astype(int)).mean() < 2.0


@pytest.fixture(scope="module")
def tiny_gta5(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_gta5")
    write_raw_dataset(str(root), "tiny", 6, distinct=3)
    return root


def test_prepare_resize_records_stored_scale_and_keeps_original_sizes(tiny_gta5, tmp_path):
    res = get_resolution("tiny")
    out = tmp_path / "out"
    manifest = prepare_dataset("gta5", str(tiny_gta5), str(out), num_workers=1, progress=False, resize=0.5)
    assert manifest["splits"]["train"]["stored_scale"] == 0.5 and manifest["splits"]["train"]["rows"] == 6
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["stored_scale"] == 0.5
    full = prepare_dataset("gta5", str(tiny_gta5), str(tmp_path / "full"), num_workers=1, progress=False)
    assert full["splits"]["train"]["stored_scale"] == 1.0
    # the label statistics are the original labels' in both
    assert manifest["splits"]["train"]["class_pixels"] == full["splits"]["train"]["class_pixels"]
    row = next(iter_rows(str(out / "train")))
    assert (row["height"], row["width"]) == (res.height, res.width)
    assert decode_image(row["image"]).shape[:2] == decode_label(row["label"]).shape == (res.height // 2, res.width // 2)
    for kwargs, match in [({"resize": 1.5}, "--resize"), ({"resize": 0.5, "resize_splits": ("val",)}, "val"),
                          ({"image_format": "jpeg", "jpeg_quality": 0}, "--jpeg-quality")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            prepare_dataset("gta5", str(tiny_gta5), str(tmp_path / "bad"), progress=False, **kwargs)


def test_cli_prepare_resize_and_jpeg_quality(tiny_gta5, tmp_path):
    from road_ray.cli import main

    out = tmp_path / "cli"
    argv = ["prepare", "gta5", "--root", str(tiny_gta5), "--out", str(out), "--workers", "1"]
    assert main([*argv, "--resize", "0.5", "--image-format", "jpeg", "--jpeg-quality", "90"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["jpeg_quality"] == 90 and manifest["splits"]["train"]["stored_scale"] == 0.5
    assert main([*argv, "--overwrite", "--resize", "2"]) == 2


def test_fullres_bench_smoke_without_ray(tmp_path, monkeypatch):
    from road_ray.bench import fullres
    from road_ray.bench.common import Progress

    monkeypatch.setenv("ROAD_RAY_HOME", str(tmp_path))  # the generated images are cached there
    result = fullres.bench(Progress("data"), resolution="tiny", smoke=True, ray=False)
    variants = result["figures"]["variants"]
    assert set(variants) == {"png@full", "png@0.5", "jpeg@full", "jpeg@0.5"}
    for v in variants.values():
        assert set(v["cpu_ms"]) == {
            "read",
            "decode_image",
            "decode_label",
            "resize_crop_image",
            "crop_label",
            "flip_pack",
        }
        assert v["crops_per_core_s"] > 0 and v["cores_per_gpu"] == pytest.approx(50 * 4 / v["crops_per_core_s"])
    assert variants["png@0.5"]["stored_size"] == [66, 120]
    assert all(db > 20 for db in result["figures"]["jpeg_psnr_db"].values())
    assert fullres.cores_per_gpu(60.0, 50.0, 5) == pytest.approx(500 / 60)
    # the GPU-decode rate's code path, on the CPU (what bench gpu's fullres_stream_rate runs on CUDA)
    jpeg = result["settings"]["shards"]["jpeg@0.5"]
    rate = fullres.device_crop_rate(jpeg, DataConfig(crop_size=64, batch_source=2), "cpu", steps=2)
    assert rate["crops_per_s"] > 0 and rate["device"] == "cpu"


PEAK_SCRIPT = """
import resource, sys
from road_ray.data.prepare import prepare_dataset
prepare_dataset("gta5", sys.argv[1], sys.argv[2], num_workers=1, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def peak_rss_of_prepare(root: Path, out: Path) -> float:
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(root), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) / 1024  # MiB


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ")
def test_prepare_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    # 100 vs 1000 images (links to 10 rendered ones): keeping every row would add ~55 MB
    sizes = {}
    for n in (100, 1000):
        root = tmp_path / f"raw{n}"
        write_raw_dataset(str(root), "tiny", n, distinct=10)
        sizes[n] = peak_rss_of_prepare(root, tmp_path / f"out{n}")
    retained = 900 * 60e3 / 2**20  # MiB the extra rows' image bytes alone would hold
    assert sizes[1000] - sizes[100] < 0.4 * retained, sizes


def test_bench_data_fullres_options_need_resolution():
    from road_ray.bench import run_bench

    with pytest.raises(ValueError, match="needs --resolution"):
        run_bench("data", images=4)
    with pytest.raises(ValueError, match="--network does not apply"):
        run_bench("data", resolution="gta5", network="deeplabv2-small")
    with pytest.raises(ValueError, match="unknown resolution"):
        run_bench("data", resolution="mapillary", ray=False)


def test_cached_trees_share_their_rendered_images(tmp_path, monkeypatch):
    from road_ray.data.fullres_synth import ensure_raw_dataset

    monkeypatch.setenv("ROAD_RAY_HOME", str(tmp_path))
    big = ensure_raw_dataset("tiny", 5, distinct=2, log=lambda *_: None)
    small = ensure_raw_dataset("tiny", 2, log=lambda *_: None)  # rendered once, for both
    images = sorted((big / "images").iterdir())
    assert len(images) == 5 and all(p.is_symlink() for p in images)
    assert images[4].resolve() == (small / "images" / "00000.png").resolve()
    assert ensure_raw_dataset("tiny", 5, distinct=2, log=lambda *_: None) == big  # cached
