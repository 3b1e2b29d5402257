"""Turn a user's config into one that names every input explicitly (run on the driver).

Empty data paths mean the embedded MiniCity benchmark: its shards are prepared on first use
under ``ROAD_RAY_HOME``. ``model.pretrained="auto"`` on the small backbone means the
MiniCity-pretrained weights, trained once and cached. Workers then receive plain paths.
"""

from __future__ import annotations

import copy
from pathlib import Path

from road_ray.config import DATA_SPLITS, Config
from road_ray.paths import file_lock, home
from road_ray.storage import join


def minicity_dir(size: str, seed: int = 0) -> Path:
    from road_ray.data.minicity import MINICITY_VERSION

    return home() / f"minicity-v{MINICITY_VERSION}-{size}-seed{seed}"


def ensure_minicity(size: str = "default", seed: int = 0, log=print) -> Path:
    """Prepare the MiniCity shards once (cached by version, size and seed)."""
    from road_ray.data.minicity import write_minicity

    out = minicity_dir(size, seed)
    if (out / "manifest.json").is_file():
        return out
    with file_lock(home() / ".minicity.lock"):
        if not (out / "manifest.json").is_file():
            log(f"[data] generating MiniCity ({size}) in {out} (runs once)")
            write_minicity(str(out), size=size, seed=seed, overwrite=True)
    return out


def uses_minicity(cfg: Config) -> bool:
    d = cfg.data
    return not (d.source and d.target and d.target_val)


def resolve_config(cfg: Config, log=print) -> Config:
    """A copy of ``cfg`` with MiniCity paths and the pretrained small backbone filled in."""
    cfg = copy.deepcopy(cfg)
    mc = None
    if uses_minicity(cfg) or (cfg.model.backbone == "small" and cfg.model.pretrained == "auto"):
        mc = str(ensure_minicity(cfg.data.minicity_size, log=log))
    d = cfg.data
    if mc is not None:
        if cfg.road.mode == "oracle" and not d.source:
            from road_ray.data.minicity import ORACLE_SPLIT

            # The upper bound trains on the target's own labelled images (never read otherwise);
            # source-val mIoU stays the synthetic domain's, for the table's proxy column.
            d.source = join(mc, ORACLE_SPLIT)
            d.source_val = d.source_val or join(mc, "source_val")
        d.source = d.source or join(mc, "source_train")
        d.target = d.target or join(mc, "target_train")
        d.target_val = d.target_val or join(mc, "target_val")
        if not d.source_val and d.source == join(mc, "source_train"):
            d.source_val = join(mc, "source_val")
    if cfg.model.backbone == "small" and cfg.model.pretrained == "auto":
        from road_ray.engine.pretrain import ensure_pretrained_small_backbone

        cfg.model.pretrained = str(ensure_pretrained_small_backbone(mc, home() / "weights", log=log))
    return cfg


def check_shard_folders(cfg: Config) -> None:
    """Fail before the first step, naming the key and the file, when a configured shard folder
    is missing or empty, one of its parts is damaged (every Parquet footer is read), or it
    differs from its manifest (``road_ray/data/shard_check.py``)."""
    from road_ray.data.shard_check import check_shard_folder

    for key in DATA_SPLITS:
        path = cfg.data.split(key)
        if path:
            check_shard_folder(path, key=f"data.{key}")
