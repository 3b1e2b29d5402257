"""The figures of ``docs/minicity.md``: rows of the dataset in both styles, and pretraining pictures."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from road_ray.data.minicity.dataset import SIZES, MiniCitySize, item_rng, render_scene
from road_ray.data.minicity.pretrain_set import PRETRAIN_CLASSES, pretrain_group


def save_example_figures(out_dir: str, seed: int = 0, rows: int = 4) -> list[str]:
    """Write ``minicity_examples.png`` (dataset rows: game image, its label, photo image, its label)
    and ``minicity_pretrain.png`` (two pretraining crops per class) into ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [f"{out_dir.rstrip('/')}/minicity_examples.png", f"{out_dir.rstrip('/')}/minicity_pretrain.png"]
    spec = SIZES["default"]
    _dataset_rows(plt, paths[0], seed, rows, spec)
    _pretrain_pictures(plt, paths[1], seed, spec)
    return paths


def _dataset_rows(plt, path: str, seed: int, rows: int, spec: MiniCitySize) -> None:
    from road_ray.labels import colorize

    fig, axes = plt.subplots(rows, 4, figsize=(12, 1.6 * rows), gridspec_kw={"wspace": 0.03, "hspace": 0.08})
    titles = ("source (game)", "source label", "target (photo)", "target label")
    for r in range(rows):
        game = render_scene(item_rng(seed, "source_train", r), spec.height, spec.width, "game")
        photo = render_scene(item_rng(seed, "target_val", r), spec.height, spec.width, "photo")
        for c, image in enumerate((game[0], colorize(game[1]), photo[0], colorize(photo[1]))):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _pretrain_pictures(plt, path: str, seed: int, spec: MiniCitySize) -> None:
    n = len(PRETRAIN_CLASSES)
    crops = [np.asarray(Image.open(io.BytesIO(png))) for g in range(n) for png, _ in pretrain_group((g, seed, spec))]
    fig, axes = plt.subplots(2, n, figsize=(n * 0.75, 1.9), gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for i, image in enumerate(crops):  # item i is about class i % n
        ax = axes[i // n, i % n]
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        if i < n:
            ax.set_title(PRETRAIN_CLASSES[i], fontsize=6)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
