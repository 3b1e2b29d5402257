"""Pretraining of the small backbone: MiniCity's counterpart of ImageNet weights.

The paper's teacher is an ImageNet-pretrained backbone (real-style images of another task).
MiniCity ships a photo-style object-classification set for the same role; this module trains
the small backbone on it (global-average-pooled features -> linear classifier) and caches the
backbone's state dict by content — the pretraining set's version and size, the backbone's
parameter layout and these hyper-parameters — so it runs once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from road_ray.config import ModelConfig
from road_ray.data.shards import read_manifest
from road_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from road_ray.paths import file_lock


@dataclass(frozen=True)
class PretrainSettings:
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0


def _cache_key(minicity_dir: str, settings: PretrainSettings) -> str:
    from road_ray.models import build_segmenter

    manifest = read_manifest(minicity_dir)
    net = build_segmenter(ModelConfig(backbone="small", pretrained="none"))
    layout = sorted((k, tuple(v.shape)) for k, v in net.backbone.state_dict().items())
    blob = json.dumps(
        {
            "minicity": manifest.get("version"),
            "size": manifest.get("size"),
            "seed": manifest.get("seed"),
            "pretrain": manifest.get("splits", {}).get("pretrain", {}).get("rows"),
            "layout": layout,
            "settings": asdict(settings),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretrain_small_backbone(
    minicity_dir: str, out_file: Path, settings: PretrainSettings = PretrainSettings(), log=print
) -> dict:
    """Train the small backbone on ``minicity_dir/pretrain`` and save its state dict to ``out_file``."""
    from road_ray.data.minicity import read_pretrain_set
    from road_ray.models import build_segmenter

    torch.manual_seed(settings.seed)
    images, labels, class_names = read_pretrain_set(minicity_dir)
    n_val = max(1, len(images) // 10)
    x_all, y_all = _to_tensor(images), torch.from_numpy(labels).long()
    x_tr, y_tr, x_va, y_va = x_all[n_val:], y_all[n_val:], x_all[:n_val], y_all[:n_val]
    backbone = build_segmenter(ModelConfig(backbone="small", pretrained="none")).backbone
    last = backbone.stage_names[-1] if hasattr(backbone, "stage_names") else "layer4"
    classifier = nn.Linear(_channels(backbone, x_tr[:1], last), len(class_names))
    params = list(backbone.parameters()) + list(classifier.parameters())
    opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    batch_size = min(settings.batch_size, len(x_tr))  # MiniCity "small" has fewer images than a batch
    steps = settings.epochs * max(1, len(x_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(settings.seed)
    start, step = time.time(), 0
    for epoch in range(settings.epochs):
        backbone.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            xb = x_tr[idx]
            if torch.rand(1, generator=gen).item() < 0.5:  # flip augmentation
                xb = xb.flip(-1)
            feats = backbone.forward_features(xb, upto=last)[last]
            loss = F.cross_entropy(classifier(feats.mean((2, 3))), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        acc = _accuracy(backbone, classifier, x_va, y_va, last)
        log(
            f"[pretrain] epoch {epoch + 1}/{settings.epochs} loss {loss.item():.3f} val acc {acc:.1%} "
            f"({time.time() - start:.0f}s)"
        )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(f".tmp{os.getpid()}")
    torch.save(backbone.state_dict(), tmp)
    os.replace(tmp, out_file)
    return {"val_accuracy": acc, "classes": len(class_names), "images": len(images), "seconds": time.time() - start}


def _channels(backbone: nn.Module, x: torch.Tensor, last: str) -> int:
    with torch.no_grad():
        return backbone.forward_features(x, upto=last)[last].shape[1]


@torch.no_grad()
def _accuracy(backbone: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, last: str) -> float:
    backbone.eval()
    logits = classifier(backbone.forward_features(x, upto=last)[last].mean((2, 3)))
    return (logits.argmax(1) == y).float().mean().item()


def ensure_pretrained_small_backbone(
    minicity_dir: str, cache_dir: Path, settings: PretrainSettings = PretrainSettings(), log=print
) -> Path:
    """The cached pretrained small backbone for ``minicity_dir``; trained on first use."""
    path = cache_dir / f"small_backbone_{_cache_key(minicity_dir, settings)}.pt"
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):  # one lock per cached file: sizes do not wait for each other
        if not path.is_file():
            log(f"[pretrain] pretraining the small backbone on {minicity_dir}/pretrain (runs once; cached in {path})")
            info = pretrain_small_backbone(minicity_dir, path, settings, log=log)
            toy = " (a toy-size set: the accuracy means nothing)" if info["images"] < 1000 else ""
            log(
                f"[pretrain] done: val accuracy {info['val_accuracy']:.1%} on {info['classes']} classes, "
                f"{info['images']} images{toy}"
            )
    return path
