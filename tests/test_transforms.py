"""Crops, boxes, flips, padding, normalization and batch randomness (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from road_ray.config import DataConfig
from road_ray.data import boxes as B
from road_ray.data.shards import encode_png
from road_ray.data.transforms import (
    IMAGENET_MEAN,
    NONCE_COLUMN,
    CropBatch,
    WholeImageBatch,
    decode_image,
    decode_label,
    denormalize,
    domain_base_scale,
    normalize,
    normalize_tensor,
    random_scale_crop,
)

H, W = 60, 100  # < 255, so a uint8 pixel can hold its own coordinate


def coordinate_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image whose channels are (y, x, 7) and two labels holding y and x."""
    yy, xx = np.mgrid[:H, :W].astype(np.uint8)
    image = np.stack([yy, xx, np.full_like(yy, 7)], axis=-1)
    return image, yy, xx


def predicted_coordinates(box: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes.py's formula: original (y, x) of every crop pixel centre, and which pixels are real (not padding)."""
    top, left, height, width, ih, iw, scale, flip = box
    y = np.arange(crop) + 0.5
    x = np.arange(crop) + 0.5
    x_c = width - x if flip else x
    y_orig = np.broadcast_to(((top + y) / scale)[:, None], (crop, crop))
    x_orig = np.broadcast_to(((left + x_c) / scale)[None, :], (crop, crop))
    resized_h, resized_w = round(ih * scale), round(iw * scale)
    valid = ((top + y)[:, None] < resized_h) & ((left + x_c)[None, :] < resized_w)
    return y_orig, x_orig, valid


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 0.8])
@pytest.mark.parametrize("crop", [32, 150])  # 150 > the image at every scale but 2.0 (width)
@pytest.mark.parametrize("flip", [False, True])
def test_crop_pixels_come_from_where_the_box_says(scale, crop, flip):
    image, ys, xs = coordinate_image()
    flips_seen = set()
    for seed in range(8):
        img, lbl_y, box = random_scale_crop(image, ys, crop, scale, np.random.default_rng(seed), flip)
        _, lbl_x, box_x = random_scale_crop(image, xs, crop, scale, np.random.default_rng(seed), flip)
        np.testing.assert_array_equal(box, box_x)
        assert img.shape == (crop, crop, 3) and img.dtype == np.uint8
        assert lbl_y.shape == (crop, crop) and lbl_y.dtype == np.uint8
        assert box.dtype == np.float32 and box.shape == (B.BOX_SIZE,)
        B.check_boxes(box[None])
        assert (box[B.IMAGE_HEIGHT], box[B.IMAGE_WIDTH]) == (H, W)
        assert box[B.HEIGHT] == box[B.WIDTH] == crop
        assert box[B.SCALE] == np.float32(scale)
        flips_seen.add(bool(box[B.FLIP]))

        y_orig, x_orig, valid = predicted_coordinates(box.astype(np.float64), crop)
        assert valid.any()
        # Label (nearest): the original pixel that contains the predicted point.
        np.testing.assert_array_equal(lbl_y[valid], np.minimum(np.floor(y_orig[valid]), H - 1))
        np.testing.assert_array_equal(lbl_x[valid], np.minimum(np.floor(x_orig[valid]), W - 1))
        # Image (bilinear): the coordinate grid interpolates to the point itself (pixel centres
        # at index + 0.5, clamped at the border), up to uint8 rounding (0.5) and OpenCV's
        # 1/32-px fixed point. A float copy of the image shows it without the rounding, so a
        # half-pixel convention error (a shift of 0.25-0.5 px) cannot hide in the tolerance.
        img_f, _, box_f = random_scale_crop(
            image.astype(np.float32), None, crop, scale, np.random.default_rng(seed), flip
        )
        np.testing.assert_array_equal(box, box_f)
        for channel, orig, size in [(0, y_orig, H), (1, x_orig, W)]:
            expected = np.clip(orig[valid], 0.5, size - 0.5) - 0.5
            assert np.abs(img[..., channel][valid] - expected).max() <= 0.5 + 1 / 32 + 1e-6
            assert np.abs(img_f[..., channel][valid] - expected).max() <= 1 / 32 + 1e-4
        assert (img[..., 2][valid] == 7).all()
        # Padding: 255 in the label, 0 in the image.
        assert (lbl_y[~valid] == 255).all() and (lbl_x[~valid] == 255).all()
        assert (img[~valid] == 0).all()
    assert flips_seen == ({False, True} if flip else {False})


def test_flip_mirrors_the_crop_and_only_sets_the_flag():
    image, ys, xs = coordinate_image()
    mirrored = plain = 0
    for seed in range(16):
        a_img, a_lbl, a_box = random_scale_crop(image, xs, 48, 0.75, np.random.default_rng(seed), flip=True)
        b_img, b_lbl, b_box = random_scale_crop(image, xs, 48, 0.75, np.random.default_rng(seed), flip=False)
        np.testing.assert_array_equal(a_box[: B.FLIP], b_box[: B.FLIP])  # same window
        assert b_box[B.FLIP] == 0
        if a_box[B.FLIP] == 1:
            mirrored += 1
            np.testing.assert_array_equal(a_img, b_img[:, ::-1])
            np.testing.assert_array_equal(a_lbl, b_lbl[:, ::-1])
            # x grows to the left in a mirrored crop
            row = a_lbl[0][a_lbl[0] != 255].astype(int)
            assert (np.diff(row) <= 0).all() and row[0] > row[-1]
        else:
            plain += 1
            np.testing.assert_array_equal(a_img, b_img)
    assert mirrored and plain


def test_crop_larger_than_image_is_padded_bottom_right():
    image, ys, _ = coordinate_image()
    img, lbl, box = random_scale_crop(image, ys, 128, 1.0, np.random.default_rng(0), flip=False)
    assert box[B.TOP] == 0 and box[B.LEFT] == 0
    np.testing.assert_array_equal(img[:H, :W], image)
    np.testing.assert_array_equal(lbl[:H, :W], ys)
    assert (lbl[H:] == 255).all() and (lbl[:, W:] == 255).all()
    assert (img[H:] == 0).all() and (img[:, W:] == 0).all()


def test_crop_without_label_and_size_mismatch():
    image, ys, _ = coordinate_image()
    img, lbl, box = random_scale_crop(image, None, 32, 1.3, np.random.default_rng(0), flip=True)
    assert lbl is None and img.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="label size"):
        random_scale_crop(image, ys[:-1], 32, 1.0, np.random.default_rng(0), flip=True)


def test_normalize_round_trip_and_values():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    y = normalize(x)
    assert y.shape == (2, 3, 5, 7) and y.dtype == np.float32
    np.testing.assert_array_equal(denormalize(y), x)
    mean_pixel = np.broadcast_to(np.rint(IMAGENET_MEAN * 255).astype(np.uint8), (1, 1, 3))
    assert np.abs(normalize(mean_pixel)).max() < 0.01
    white = normalize(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0]
    np.testing.assert_allclose(white, (1 - IMAGENET_MEAN) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


def test_decode_is_rgb_and_rejects_garbage():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    np.testing.assert_array_equal(decode_image(encode_png(rgb)), rgb)
    label = np.arange(24, dtype=np.uint8).reshape(4, 6)
    np.testing.assert_array_equal(decode_label(encode_png(label)), label)
    with pytest.raises(ValueError, match="decode"):
        decode_image(b"not an image")
    with pytest.raises(ValueError, match="single-channel"):
        decode_label(encode_png(rgb))


def encoded_batch(n: int, labeled: bool = True) -> dict[str, np.ndarray]:
    image, ys, _ = coordinate_image()
    batch = {
        "id": np.array([f"img{i:03d}" for i in range(n)], dtype=object),
        "image": np.array([encode_png(image)] * n, dtype=object),
    }
    if labeled:
        batch["label"] = np.array([encode_png(ys)] * n, dtype=object)
    return batch


def test_crop_batch_shapes_and_scale_range():
    cfg = DataConfig(crop_size=32, base_scale=0.5, scale_min=0.75, scale_max=1.25)
    out = CropBatch(cfg, seed=0, labeled=True)(encoded_batch(6))
    # uint8 through the object store; normalized on the device by the training loop
    assert out["image"].shape == (6, 3, 32, 32) and out["image"].dtype == np.uint8 and out["image"].flags.c_contiguous
    assert out["label"].shape == (6, 32, 32) and out["label"].dtype == np.uint8
    assert out["box"].shape == (6, 8) and out["box"].dtype == np.float32
    assert list(out["id"]) == [f"img{i:03d}" for i in range(6)]
    B.check_boxes(out["box"])
    assert ((out["box"][:, B.SCALE] >= 0.375) & (out["box"][:, B.SCALE] <= 0.625)).all()
    assert len({tuple(b) for b in out["box"]}) == 6  # every row draws its own crop
    unlabeled = CropBatch(cfg, seed=0, labeled=False)(encoded_batch(3, labeled=False))
    assert "label" not in unlabeled and unlabeled["image"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="no label"):
        batch = encoded_batch(2)
        batch["label"][1] = None
        CropBatch(cfg, seed=0, labeled=True)(batch)


def test_crop_batch_scales_each_domain_by_its_own_base_scale():
    # the paper's SYNTHIA setup: SYNTHIA 1280x760 * 0.8 and Cityscapes 2048x1024 * 0.5, both 1024 wide
    cfg = DataConfig(crop_size=32, base_scale=0.5, source_base_scale=0.8, scale_min=1.0, scale_max=1.0)
    source = CropBatch(cfg, seed=0, labeled=True)(encoded_batch(3))
    target = CropBatch(cfg, seed=0, labeled=False)(encoded_batch(3, labeled=False))
    assert np.allclose(source["box"][:, B.SCALE], 0.8) and np.allclose(target["box"][:, B.SCALE], 0.5)
    assert np.allclose(CropBatch(cfg, seed=0, labeled=True, domain="target")(encoded_batch(2))["box"][:, B.SCALE], 0.5)
    assert domain_base_scale(DataConfig(base_scale=0.7, target_base_scale=0.25), "source") == 0.7
    assert domain_base_scale(DataConfig(base_scale=0.7, target_base_scale=0.25), "target") == 0.25
    with pytest.raises(ValueError, match="domain"):
        domain_base_scale(cfg, "val")


def test_per_domain_scales_are_validated_by_key():
    from road_ray.config import ConfigError, load_config

    assert load_config(overrides=["data.source_base_scale=0.8"]).data.source_base_scale == 0.8
    assert load_config(overrides=["data.target_base_scale=null"]).data.target_base_scale is None
    with pytest.raises(ConfigError, match=r"data\.target_base_scale: expected a scale > 0"):
        load_config(overrides=["data.target_base_scale=0"])


def test_normalize_tensor_matches_normalize():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    chw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))
    y = normalize_tensor(chw)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(y.numpy(), normalize(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="3, H, W"):
        normalize_tensor(torch.zeros(2, 5, 7, 3, dtype=torch.uint8))


def test_crop_batch_randomness_depends_on_seed_ids_and_nonce():
    cfg = DataConfig(crop_size=24)

    def boxes(seed, nonce, ids=None):
        batch = encoded_batch(4)
        if ids is not None:
            batch["id"] = np.array(ids, dtype=object)
        if nonce is not None:
            batch[NONCE_COLUMN] = np.full(4, nonce)
        return CropBatch(cfg, seed=seed, labeled=True)(batch)["box"]

    np.testing.assert_array_equal(boxes(0, 0.25), boxes(0, 0.25))  # reproducible
    assert not np.array_equal(boxes(0, 0.25), boxes(1, 0.25))  # seed
    assert not np.array_equal(boxes(0, 0.25), boxes(0, 0.5))  # nonce (a new epoch)
    assert not np.array_equal(boxes(0, 0.25), boxes(0, 0.25, ids=["a", "b", "c", "d"]))  # another block
    assert not np.array_equal(boxes(0, None), boxes(0, None))  # no nonce column: fresh entropy per call


def test_whole_image_batch():
    out = WholeImageBatch()(encoded_batch(1))
    assert out["image"].shape == (1, 3, H, W) and out["image"].dtype == np.float32
    assert out["label"].shape == (1, H, W) and out["label"].dtype == np.int64
    image, ys, _ = coordinate_image()
    np.testing.assert_array_equal(out["label"][0], ys)
    np.testing.assert_array_equal(denormalize(out["image"][0]), image)
    assert list(out["id"]) == ["img000"]
    assert "label" not in WholeImageBatch(labeled=False)(encoded_batch(2, labeled=False))
    mixed = encoded_batch(2)
    mixed["image"][1] = encode_png(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size=1"):
        WholeImageBatch()(mixed)
