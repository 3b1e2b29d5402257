"""What MiniCity is as a dataset: its version, sizes and splits, and how one image of a split is drawn.

Every image is drawn from its own generator seeded by ``(seed, split, index)``
(:func:`item_rng`), so the bytes written depend on ``seed`` and the size only, not on the
number of worker processes or the order they finish in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from road_ray.data.minicity.layout import sample_scene
from road_ray.data.minicity.render import STYLES, render

# Bump whenever the generator's output changes: caches are keyed by it (road_ray.engine.resolve).
MINICITY_VERSION = "1.0"


@dataclass(frozen=True)
class MiniCitySize:
    """Image size (height, width) = 1:2, rows per split, and the pretraining set (count, square side)."""

    height: int
    width: int
    source_train: int
    source_val: int
    target_train: int
    target_val: int
    pretrain: int
    pretrain_size: int


SIZES: dict[str, MiniCitySize] = {
    "small": MiniCitySize(64, 128, 16, 8, 16, 8, 64, 32),
    "default": MiniCitySize(128, 256, 600, 100, 600, 150, 3000, 64),
}

# split -> (style, domain); target_train is written twice: unlabeled, and as target_train_labeled.
SPLITS: dict[str, tuple[str, str]] = {
    "source_train": ("game", "source"),
    "source_val": ("game", "source"),
    "target_train": ("photo", "target"),
    "target_val": ("photo", "target"),
}
ORACLE_SPLIT = "target_train_labeled"
PRETRAIN_SPLIT = "pretrain"
# Part of every image's seed: changing a code changes that split's images.
_SPLIT_CODE = {"source_train": 1, "source_val": 2, "target_train": 3, "target_val": 4, PRETRAIN_SPLIT: 5}


def get_size(size: str) -> MiniCitySize:
    if size not in SIZES:
        raise ValueError(f"unknown MiniCity size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[size]


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))


def render_scene(rng: np.random.Generator, height: int, width: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """One random scene in ``style``: (RGB uint8 (H, W, 3), trainIds uint8 (H, W)).

    The scene is drawn with the style's camera rig (``sample_scene(..., rig=style)``); to render
    one scene in both styles, call :func:`sample_scene` once and :func:`render` twice.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    return render(sample_scene(rng, height, width, rig=style), style)
