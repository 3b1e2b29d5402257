"""`road-ray eval`'s numbers and prediction files against the official Cityscapes evaluator."""

from __future__ import annotations

from pathlib import Path

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
    writer = PredictionWriter(str(tmp_path / "pred"), overlay_dir=str(tmp_path / "overlays"))
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
        assert (tmp_path / "overlays" / f"{image_id}_overlay.png").is_file()
        assert not (tmp_path / "pred" / f"{image_id}_overlay.png").exists()  # the evaluator's folder: labelIds only
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


# --- `road-ray eval --save-predictions` read by the official evaluator's own lookup ------------


def write_checkpoint_and_shards(tmp_path, ids: list[str], h: int = 32, w: int = 64):
    """A small-backbone checkpoint and a labelled shard split of Cityscapes-named images."""
    from road_ray.config import Config, apply_overrides
    from road_ray.data.shards import ShardWriter, encode_png
    from road_ray.engine.checkpoint import save_checkpoint
    from road_ray.models import build_segmenter

    cfg = apply_overrides(Config(), {"model.pretrained": "none", "data.crop_size": 32}).validate()
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "ck",
        config=cfg,
        iteration=1,
        student=build_segmenter(cfg.model),
        domain_classifiers=None,
        optimizer=None,
    )
    rng = np.random.default_rng(1)
    gt_files = []
    with ShardWriter(str(tmp_path / "shards")) as writer:
        for image_id in ids:
            gt_ids, _ = make_pair(rng, h, w)
            city = image_id.split("_")[0]
            gt_path = tmp_path / "gtFine" / "val" / city / f"{image_id}_gtFine_labelIds.png"
            gt_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gt_ids).save(gt_path)
            gt_files.append(str(gt_path))
            image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            label = cityscapes_to_trainid(gt_ids)
            writer.write(
                {
                    "id": image_id,
                    "domain": "target",
                    "split": "val",
                    "image": encode_png(image),
                    "label": encode_png(label),
                    "height": h,
                    "width": w,
                }
            )
    return tmp_path / "ck", tmp_path / "shards", gt_files


def test_official_lookup_finds_exactly_one_prediction_per_ground_truth(tmp_path, monkeypatch):
    evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    from road_ray.cli import main

    ids = ["frankfurt_000000_000294", "frankfurt_000001_011835", "munster_000012_000019"]
    checkpoint, shards, gt_files = write_checkpoint_and_shards(tmp_path, ids)
    pred, overlays, scores = tmp_path / "pred", tmp_path / "overlays", tmp_path / "scores.json"
    argv = ["eval", "--checkpoint", str(checkpoint), "--shards", str(shards), "--json", str(scores)]
    assert main([*argv, "--save-predictions", str(pred), "--save-overlays", str(overlays)]) == 0
    assert sorted(p.name for p in overlays.iterdir()) == sorted(f"{i}_overlay.png" for i in ids)

    args = evaluator.args
    for name, value in [("predictionPath", str(pred)), ("predictionWalk", None), ("quiet", True)]:
        monkeypatch.setattr(args, name, value)
    monkeypatch.setattr(args, "evalInstLevelScore", False)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "exportFile", str(tmp_path / "official.json"))
    found = [evaluator.getPrediction(args, gt) for gt in gt_files]  # exits on a second match
    assert [Path(f).name for f in found] == [f"{i}_pred_labelIds.png" for i in ids]
    official = evaluator.evaluateImgLists(found, gt_files, args)
    ours = __import__("json").loads(scores.read_text())
    assert ours["miou"] == pytest.approx(100 * evaluator.getScoreAverage(official["classScores"], args), abs=1e-6)

    # overlays inside the evaluator's folder would be found as second predictions: refused up front
    assert main([*argv, "--save-predictions", str(pred), "--save-overlays", str(pred / "overlays")]) == 2
