"""`road-ray eval`'s numbers and prediction files against the official Cityscapes evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from road_ray.engine.evaluate_cli import PredictionWriter
from road_ray.engine.metrics import ConfusionMatrix
from road_ray.labels import CLASS_NAMES, TRAINID_TO_CITYSCAPES_ID, cityscapes_to_trainid, get_label_space


def make_pair(rng: np.random.Generator, h: int = 48, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth labelId map (with void ids) and a prediction that is right ~60% of the time."""
    gt_train = rng.integers(0, 19, size=(h, w))
    gt_ids = np.vectorize(TRAINID_TO_CITYSCAPES_ID.get)(gt_train).astype(np.uint8)
    gt_ids[rng.random((h, w)) < 0.1] = 0  # unlabeled -> ignored
    gt_ids[:2, :] = 1  # ego vehicle -> ignored
    pred = np.where(rng.random((h, w)) < 0.6, gt_train, rng.integers(0, 19, size=(h, w))).astype(np.uint8)
    return gt_ids, pred


def test_predictions_decode_back_and_match_cityscapesscripts(tmp_path):
    evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    rng = np.random.default_rng(0)
    writer = PredictionWriter(str(tmp_path / "pred"))
    cm = ConfusionMatrix(19)
    gt_files, pred_files = [], []
    for i in range(3):
        image_id = f"city_{i:06d}_000019"
        gt_ids, pred = make_pair(rng)
        gt_path = tmp_path / f"{image_id}_gtFine_labelIds.png"
        Image.fromarray(gt_ids).save(gt_path)
        label = cityscapes_to_trainid(gt_ids)
        writer(image_id, pred, label)
        cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label.astype(np.int64)))
        written = tmp_path / "pred" / f"{image_id}_pred_labelIds.png"
        # the saved labelIds PNG decodes back to exactly the predicted trainIds, at full size
        decoded = np.array(Image.open(written))
        assert decoded.shape == pred.shape and decoded.dtype == np.uint8
        assert np.array_equal(cityscapes_to_trainid(decoded), pred)
        assert (tmp_path / "pred" / f"{image_id}_overlay.png").is_file()
        gt_files.append(str(gt_path))
        pred_files.append(str(written))

    ours = cm.scores(get_label_space("cityscapes19"))
    args = evaluator.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    args.exportFile = str(tmp_path / "official.json")
    official = evaluator.evaluateImgLists(pred_files, gt_files, args)
    for name in CLASS_NAMES:
        assert ours["iou"][name] == pytest.approx(100 * official["classScores"][name], abs=1e-6), name
    official_miou = 100 * evaluator.getScoreAverage(official["classScores"], args)
    assert ours["miou"] == pytest.approx(official_miou, abs=1e-6)
