"""Confusion matrix, IoU and mIoU (19 / 16 / 13 classes) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from road_ray.engine.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, segmentation_scores
from road_ray.labels import CLASS_NAMES, SYNTHIA13_TRAINIDS, SYNTHIA16_TRAINIDS, get_label_space


def test_confusion_matrix_by_hand_with_ignored_pixels():
    label = torch.tensor([[0, 0, 1, 255], [2, 1, 1, 7]])  # 255 and 7 (>= num_classes) are not counted
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 0]])
    m = confusion_matrix(pred, label, num_classes=3)
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [0, 0, 1]])  # rows = ground truth, cols = prediction
    assert m.dtype == torch.int64 and torch.equal(m, expected)
    assert int(m.sum()) == 6


def test_confusion_matrix_matches_numpy_on_random_maps():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (2, 37, 41), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 19, (2, 37, 41), generator=g)
    expected = np.zeros((19, 19), dtype=np.int64)
    for t, p in zip(label.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            expected[t, p] += 1
    assert np.array_equal(confusion_matrix(pred, label, 19).numpy(), expected)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(torch.tensor([5]), torch.tensor([1]), 3)
    # an out-of-range prediction on an ignored pixel does not matter
    assert int(confusion_matrix(torch.tensor([5]), torch.tensor([255]), 3).sum()) == 0


def test_iou_per_class_by_hand():
    m = np.array([[2, 1, 0], [0, 3, 0], [0, 0, 0]])
    iou = iou_per_class(torch.from_numpy(m))
    assert iou[0] == pytest.approx(2 / 3)  # TP 2, FN 1, FP 0
    assert iou[1] == pytest.approx(3 / 4)  # TP 3, FN 0, FP 1
    assert math.isnan(iou[2])  # never labelled nor predicted


def test_accumulator_update_all_reduce_and_cityscapes_scores():
    cm = ConfusionMatrix(num_classes=19)
    # road: 3 right, 1 predicted sidewalk; sidewalk: 2 right; car: 1 right, 1 predicted road; rest absent
    cm.update(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1]))
    cm.update(torch.tensor([13, 0, 5]), torch.tensor([13, 13, 255]))
    assert int(cm.matrix.sum()) == 8
    # a fake all-reduce summing two identical workers: every IoU stays, counts double
    cm.all_reduce(lambda t: t.mul_(2))
    assert int(cm.matrix.sum()) == 16
    s = cm.scores(get_label_space("cityscapes19"))
    road, sidewalk, car = 3 / (3 + 1 + 1), 2 / (2 + 1), 1 / (1 + 1)
    assert s["label_space"] == "cityscapes19"
    assert s["iou"]["road"] == pytest.approx(100 * road)
    assert s["iou"]["sidewalk"] == pytest.approx(100 * sidewalk)
    assert s["iou"]["car"] == pytest.approx(100 * car)
    assert s["iou"]["bicycle"] is None and list(s["iou"]) == list(CLASS_NAMES)
    assert s["miou"] == pytest.approx(100 * (road + sidewalk + car) / 3)  # nanmean over present classes
    assert "miou16" not in s


def test_synthia16_gives_miou16_and_miou13_from_the_same_matrix():
    m = torch.zeros(19, 19, dtype=torch.int64)
    rng = np.random.default_rng(0)
    for c in range(19):
        m[c, c] = int(rng.integers(1, 10))
        m[c, (c + 1) % 19] = int(rng.integers(0, 5))
    field = m.clone()
    field[[9, 14, 16]] = 0  # the field's convention: terrain, truck, train ground truth ignored
    iou = iou_per_class(field)
    s = segmentation_scores(m, get_label_space("synthia16"))
    assert s["label_space"] == "synthia16"
    assert s["miou16"] == pytest.approx(100 * np.mean(iou[list(SYNTHIA16_TRAINIDS)]))
    assert s["miou13"] == pytest.approx(100 * np.mean(iou[list(SYNTHIA13_TRAINIDS)]))
    assert s["miou"] == pytest.approx(s["miou16"])
    assert s["miou16"] != pytest.approx(s["miou13"])
    assert set(s["iou"]) == {CLASS_NAMES[i] for i in SYNTHIA16_TRAINIDS}  # terrain, truck, train not scored
    assert "terrain" not in s["iou"]


def test_synthia_scores_on_a_hand_built_matrix_ignore_terrain_truck_train_ground_truth():
    m = np.zeros((19, 19), dtype=np.int64)
    road, sidewalk, wall, fence, terrain, car, truck, train = 0, 1, 3, 4, 9, 13, 14, 16
    m[road, road], m[road, terrain] = 6, 2  # a prediction of terrain on road still misses road
    m[terrain, road] = 4  # ignored ground truth: no false positive for road
    m[sidewalk, sidewalk], m[sidewalk, road] = 3, 1
    m[wall, wall], m[wall, fence] = 1, 1
    m[truck, car] = 5  # ignored ground truth: no false positive for car
    m[car, car] = 2
    m[train, train] = 3
    s = segmentation_scores(m, get_label_space("synthia16"))
    expected = {"road": 6 / 9, "sidewalk": 3 / 4, "wall": 1 / 2, "fence": 0.0, "car": 2 / 2}
    for name, value in expected.items():
        assert s["iou"][name] == pytest.approx(100 * value), name
    assert s["miou16"] == pytest.approx(100 * np.mean(list(expected.values())))
    assert s["miou13"] == pytest.approx(100 * np.mean([6 / 9, 3 / 4, 1.0]))  # no wall, fence, pole
    assert s["miou"] == s["miou16"]
    assert "terrain, truck and train" in s["convention"]
    # the 19-class score of the same matrix keeps every ground-truth pixel
    s19 = segmentation_scores(m, get_label_space("cityscapes19"))
    assert s19["iou"]["road"] == pytest.approx(100 * 6 / 13) and s19["iou"]["car"] == pytest.approx(100 * 2 / 7)
    assert "convention" not in s19
    from road_ray.engine.evaluate_cli import format_table

    assert "convention: SYNTHIA-16: ground-truth terrain, truck and train pixels ignored" in format_table(s)


def test_empty_matrix_scores_nan_not_a_crash():
    s = ConfusionMatrix(19).scores(get_label_space("cityscapes19"))
    assert math.isnan(s["miou"]) and all(v is None for v in s["iou"].values())
