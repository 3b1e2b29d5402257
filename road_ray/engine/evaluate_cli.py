"""``road-ray eval``: a checkpoint on a split, as a table, JSON and (optionally) prediction PNGs.

Runs without Ray: shards are streamed with pyarrow, one image at a time. Predictions are
written as Cityscapes **labelIds** PNGs at the ground truth's full resolution,
``{id}_pred_labelIds.png``, and nothing else in that folder: ``cityscapesscripts``' evaluator
finds a ground truth's prediction by walking the folder (sub-folders too) for
``{city}_{seq}_{frame}*.png`` and stops at a second match, so colour overlays
(``{id}_overlay.png``) go to their own folder (``--save-overlays``), outside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from road_ray import jsonio
from road_ray.data.shard_check import check_shard_folder
from road_ray.data.shards import iter_rows
from road_ray.data.transforms import decode_image, decode_label, normalize
from road_ray.engine.checkpoint import load_checkpoint, load_student_state, local_checkpoint, read_checkpoint_config
from road_ray.engine.evaluate import EvalSettings, evaluate
from road_ray.labels import CLASS_NAMES, colorize, get_label_space, trainid_to_cityscapes
from road_ray.models import build_segmenter
from road_ray.storage import join

# Which prepared split a raw dataset's "--split" maps to (Cityscapes val is the benchmark).
RAW_DATASETS = ("cityscapes", "gta5", "synthia", "minicity")


def shard_batches(shard_dir: str, max_images: int = 0) -> Iterator[dict[str, Any]]:
    """Whole images of a shard folder as batches of one (labeled rows carry their label)."""
    for n, row in enumerate(iter_rows(shard_dir)):
        if max_images and n >= max_images:
            return
        image = decode_image(row["image"])
        batch: dict[str, Any] = {"image": torch.from_numpy(normalize(image[None])), "id": [row["id"]]}
        if row.get("label") is not None:
            batch["label"] = torch.from_numpy(decode_label(row["label"]).astype(np.int64))[None]
        yield batch


def load_model(checkpoint_dir: str) -> tuple[torch.nn.Module, Any, int]:
    """The deployed model of a checkpoint: the plain segmentation network (no teacher, no classifiers)."""
    cfg = read_checkpoint_config(checkpoint_dir)
    cfg.model.pretrained = "none"  # the weights come from the checkpoint
    model = build_segmenter(cfg.model)
    payload = load_checkpoint(checkpoint_dir)
    load_student_state(model, payload["student"], checkpoint_dir)
    model.eval()
    return model, cfg, payload["iteration"]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


class PredictionWriter:
    """Writes ``{id}_pred_labelIds.png`` (full resolution) into ``out_dir`` and, when
    ``overlay_dir`` is given, ``{id}_overlay.png`` there (prediction over the image, next to the
    ground truth). Either folder may be None; ``overlay_dir`` inside ``out_dir`` (or the same) is
    a ValueError, as the official evaluator would then find two predictions per image."""

    def __init__(
        self, out_dir: str | None, images: dict[str, np.ndarray] | None = None, overlay_dir: str | None = None
    ):
        self.out = None if out_dir is None else Path(out_dir)
        self.overlays = None if overlay_dir is None else Path(overlay_dir)
        if self.out is not None and self.overlays is not None and _inside(self.overlays, self.out):
            raise ValueError(
                f"--save-overlays {str(self.overlays)!r} is inside --save-predictions {str(self.out)!r}: the "
                "official evaluator reads every PNG under that folder; put the overlays elsewhere"
            )
        for folder in (self.out, self.overlays):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        self.images = images if images is not None else {}

    def __call__(self, image_id: str, pred: np.ndarray, label: np.ndarray | None) -> None:
        if self.out is not None:
            Image.fromarray(trainid_to_cityscapes(pred)).save(self.out / f"{image_id}_pred_labelIds.png")
        if self.overlays is None:
            return
        rgb = self.images.pop(image_id, None)
        colour = colorize(pred)
        overlay = colour if rgb is None else (0.5 * rgb + 0.5 * colour).astype(np.uint8)
        panels = [overlay] if label is None else [overlay, colorize(label)]
        Image.fromarray(np.concatenate(panels, axis=1)).save(self.overlays / f"{image_id}_overlay.png")


def _with_images(batches: Iterator[dict[str, Any]], keep: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """Remember each image's RGB (undoing the normalization) for its overlay."""
    from road_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    for batch in batches:
        x = batch["image"][0].numpy()
        keep[batch["id"][0]] = np.clip((x * std + mean) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        yield batch


def format_table(scores: dict[str, Any]) -> str:
    lines = [f"{'class':<15} {'IoU':>6}"]
    for name in CLASS_NAMES:
        v = scores["iou"].get(name)
        lines.append(f"{name:<15} {'  n/a' if v is None else f'{v:6.2f}'}")
    miou = scores["miou"]
    lines.append(f"{'mIoU':<15} {'  n/a' if miou is None else f'{miou:6.2f}'}  ({scores['label_space']})")
    for key in ("miou16", "miou13"):
        if key in scores:
            lines.append(f"{key:<15} {scores[key]:6.2f}")
    if scores.get("convention"):
        lines.append(f"convention: {scores['convention']}")
    return "\n".join(lines)


def resolve_checkpoint(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return args.checkpoint
    if not args.best:
        raise ValueError("--experiment needs --best (the selected trial's checkpoint) or --each-trial (every trial's)")
    from road_ray.sweeps.results import select_checkpoint

    return select_checkpoint(args.experiment, by=args.by)


def resolve_shards(args: argparse.Namespace, cfg: Any, tmp: str) -> str:
    if args.shards:
        return args.shards
    if args.dataset:
        if args.dataset not in RAW_DATASETS:
            raise ValueError(f"unknown dataset {args.dataset!r}; expected one of {', '.join(RAW_DATASETS)}")
        if args.dataset == "minicity":
            from road_ray.engine.resolve import ensure_minicity

            split = {"val": "target_val"}.get(args.split, args.split)
            return join(str(ensure_minicity(cfg.data.minicity_size)), split)
        if not args.root:
            raise ValueError(f"--dataset {args.dataset} needs --root DIR")
        from road_ray.data.prepare import prepare_dataset

        prepare_dataset(args.dataset, args.root, tmp, progress=False)
        return join(tmp, args.split)
    if cfg.data.target_val:  # default: the checkpoint's own target val split
        return cfg.data.target_val
    raise ValueError("no data to evaluate on: pass --shards DIR or --dataset NAME --root DIR")


def _shards_key(args: argparse.Namespace) -> str:
    """What chose the split, for error messages."""
    if args.shards:
        return "--shards"
    return f"--dataset {args.dataset}" if args.dataset else "data.target_val (the checkpoint's)"


def eval_from_cli(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "each_trial", False):
        return eval_each_trial(args)
    return evaluate_checkpoint(resolve_checkpoint(args), args)


def evaluate_checkpoint(
    checkpoint: str, args: argparse.Namespace, shards: str | None = None, table: bool = True
) -> dict[str, Any]:
    """One checkpoint on ``shards`` (default: the split the arguments name): the scores, printed
    and (``--json``, with ``table``) written."""
    model, cfg, iteration = load_model(local_checkpoint(checkpoint))  # a URI is fetched first
    settings = EvalSettings(
        mode=args.mode or cfg.data.eval_mode,
        scale=args.scale or cfg.data.eval_scale,
        window=cfg.data.crop_size,
        max_images=args.max_images,
    )
    label_space = get_label_space(cfg.data.label_space)
    with tempfile.TemporaryDirectory(prefix="road-ray-eval-") as tmp:
        if shards is None:
            shards = resolve_shards(args, cfg, tmp)
            check_shard_folder(shards, key=_shards_key(args))  # a damaged part is named before inference
        batches: Iterator[dict[str, Any]] = shard_batches(shards, args.max_images)
        writer = None
        overlays = getattr(args, "save_overlays", None)
        if args.save_predictions or overlays:
            keep: dict[str, np.ndarray] = {}
            if overlays:
                batches = _with_images(batches, keep)
            writer = PredictionWriter(args.save_predictions, keep, overlay_dir=overlays)
        start = time.perf_counter()
        scores = evaluate(model, batches, label_space, settings, torch.device("cpu"), on_prediction=writer)
        seconds = time.perf_counter() - start
    if scores["images"] == 0:
        raise ValueError(f"{shards}: no images to evaluate")
    if scores["miou"] is None:
        raise ValueError(f"{shards}: no labeled rows; mIoU is unavailable")
    print(
        f"checkpoint {checkpoint} (iteration {iteration}) on {shards}: {scores['images']} images, "
        f"{settings.mode} inference, {scores['images'] / seconds:.2f} img/s",
        file=sys.stderr,
    )
    if table:
        print(format_table(scores))
    result = {k: v for k, v in scores.items() if k != "confusion_matrix"}
    result.update({"checkpoint": str(checkpoint), "shards": shards, "iteration": iteration})
    if args.json and table:
        _write_json(args.json, result)
    return result


def eval_each_trial(args: argparse.Namespace) -> dict[str, Any]:
    """``--each-trial``: every trial's final checkpoint on one labelled split, beside the sweep's own
    choice — how a sweep that selected without target labels (``tune.py --select``) did, scored
    after the fact where labels exist."""
    from road_ray.sweeps.results import final_checkpoints, read_experiment, select_checkpoint

    if args.save_predictions or getattr(args, "save_overlays", None):
        raise ValueError("--each-trial: --save-predictions/--save-overlays take one checkpoint (use --best)")
    exp = read_experiment(args.experiment)
    by = args.by or exp.metric
    picked = select_checkpoint(args.experiment, by=args.by)
    finals = final_checkpoints(exp)
    if not finals:
        raise ValueError(f"{args.experiment}: no trial has a final checkpoint to evaluate")
    rows = []
    with tempfile.TemporaryDirectory(prefix="road-ray-eval-") as tmp:
        # One split for every trial, resolved (and a raw dataset prepared) once.
        shards = resolve_shards(args, read_checkpoint_config(local_checkpoint(finals[0][1])), tmp)
        check_shard_folder(shards, key=_shards_key(args))
        for trial, checkpoint in finals:
            rows.append(_trial_row(trial, checkpoint, by, checkpoint == picked, args, shards))
    best = max(rows, key=lambda r: r["miou"])
    chosen = next((r for r in rows if r["picked"]), None)
    print(f"{'trial':<10} {by:>16} {'mIoU':>6}  state")
    for r in rows:
        mark = ("  <- selected by " + by if r["picked"] else "") + ("  <- best mIoU (oracle)" if r is best else "")
        value = "—" if r[by] is None else f"{r[by]:.4g}"
        print(f"{r['trial']:<10} {value:>16} {r['miou']:6.2f}  {r['state']}{mark}")
    result = {
        "experiment": str(args.experiment),
        "shards": shards,
        "by": by,
        "trials": rows,
        "oracle_pick": best["trial"],
        "oracle_pick_miou": best["miou"],
    }
    if chosen is not None:
        result.update(pick=chosen["trial"], pick_miou=chosen["miou"], regret=best["miou"] - chosen["miou"])
        print(
            f"selected by {by}: mIoU {chosen['miou']:.2f}; the oracle's pick: {best['miou']:.2f} "
            f"(regret {best['miou'] - chosen['miou']:.2f})"
        )
    if args.json:
        _write_json(args.json, result)
    return result


def _trial_row(trial: Any, checkpoint: str, by: str, picked: bool, args: argparse.Namespace, shards: str) -> dict:
    scores = evaluate_checkpoint(checkpoint, args, shards=shards, table=False)
    return {
        "trial": trial.trial_id,
        "params": trial.params,
        "state": trial.state,
        by: trial.value(by),
        "miou": scores["miou"],
        "checkpoint": checkpoint,
        "picked": picked,
    }


def _write_json(path: str, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(jsonio.dumps(result, indent=2))
