"""Typed configuration: every default of road-ray lives in this file.

A run is described by one :class:`Config` (model, data, ROAD loss, optimizer, run). It is
loaded from YAML (nested mappings) and/or dotted overrides (``road.lambda_dist=0.1``).
An unknown key or a value of the wrong type is a :class:`ConfigError` naming the key and
what was expected; nothing is silently ignored.

The defaults describe the embedded MiniCity benchmark on the small backbone (what
``road-ray train`` and ``python tune.py`` run with no arguments). The paper's setups
(GTA5/SYNTHIA -> Cityscapes, DeepLab-VGG16, PSPNet-ResNet101) are the search spaces
``search_spaces/gta5_*.yaml`` and ``search_spaces/synthia_*.yaml``, whose ``fixed:`` keys
override these (the same keys work in a ``--config`` YAML file for ``road-ray train``).

This module also holds the project's vocabulary: the training modes and which terms of
Eq. 5 each one uses, the data splits a run reads, and the smoke sizes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from road_ray.config_parsing import ConfigError, apply_mapping, load_yaml, parse_scalar

Mode = Literal["nonadapt", "dst", "spt", "road", "frozen", "source_dist", "oracle"]
MODES: tuple[str, ...] = get_args(Mode)
# The baselines of the paper's Sec. 4.3 as modes of one trainer: which crops L_dist (Eq. 1)
# is computed on (absent: no distillation), and which modes use L_spt (Eq. 2-4).
DISTILLATION_DOMAIN: dict[str, Literal["source", "target"]] = {
    "dst": "target",
    "road": "target",
    "source_dist": "source",
}
SPATIAL_MODES: frozenset[str] = frozenset({"spt", "road"})
Arch = Literal["deeplabv2", "pspnet"]
BackboneName = Literal["small", "vgg16", "resnet50", "resnet101"]
# ResNet geometry (road_ray/models/caffe_resnet.py): torchvision's, or the Caffe one of DeepLab-v2
# and of the field's weights; "auto": caffe for model.arch=deeplabv2, torchvision for pspnet.
ResNetStyle = Literal["auto", "torchvision", "caffe"]
LabelSpace = Literal["cityscapes19", "synthia16"]
EvalMode = Literal["whole", "slide"]
Precision = Literal["auto", "fp32", "bf16"]
AdversarialForm = Literal["paper", "dann"]

_GRID_RE = re.compile(r"^([1-9][0-9]*)x([1-9][0-9]*)$")


# The shard splits a run reads (DataConfig fields): two training streams and two validation splits.
TRAIN_SPLITS: tuple[str, ...] = ("source", "target")
VAL_SPLITS: tuple[str, ...] = ("target_val", "source_val")
DATA_SPLITS: tuple[str, ...] = TRAIN_SPLITS + VAL_SPLITS
# A validation split left out on purpose: ``data.target_val=none`` is a run without target labels,
# as a user adapting to their own unlabelled domain has it (the oracle mIoU is then not computed).
NO_SPLIT = "none"
# What the label-free validators evaluate on besides source-val: the first images of the
# unlabelled target *train* split (never target-val, whose labels are the oracle's).
VALIDATOR_SPLIT = "target_train"


def parse_grid(grid: str) -> tuple[int, int]:
    """Parse a partition grid ``"HxW"`` (paper Sec. 3.2, Fig. 6) into ``(H, W)``.

    ``H`` splits the original image along the vertical axis (rows), ``W`` along the
    horizontal axis; both at least 1. ``"3x3"`` is the paper's best.
    """
    m = _GRID_RE.match(str(grid).strip())
    if not m:
        raise ValueError(f"grid {grid!r} is not of the form HxW with H, W >= 1 (e.g. '1x1', '2x1', '3x3')")
    return int(m.group(1)), int(m.group(2))


@dataclass
class ModelConfig:
    """Segmentation network (paper Sec. 4.1) and the teacher tap (Eq. 1)."""

    arch: Arch = "deeplabv2"
    backbone: BackboneName = "small"
    num_classes: int = 19
    # Layer of the backbone whose features are distilled (Eq. 1): layer2|layer3|layer4 for
    # ResNets and the small net, conv3|conv4|conv5 for VGG-16.
    teacher_layer: str = "layer4"
    # "auto": torchvision's ImageNet weights (real backbones) or the MiniCity-pretrained
    # small backbone (cached by content); "none": random init; otherwise a path to a
    # state dict (backbone, torchvision model or Segmenter) or to a file written by
    # road-ray import-weights from the field's DeepLab-v2 weights (road_ray/models/weights.py).
    pretrained: str = "auto"
    # Distillation toward a random teacher is meaningless; refuse it unless asked for.
    allow_untrained_teacher: bool = False
    # Output stride of the dilated backbones (DeepLab-v2 / PSPNet use 8).
    output_stride: int = 8
    # ResNet geometry (ResNetStyle above). The Caffe style takes the field's DeepLab-v2 weights
    # (road-ray import-weights) and converts its ImageNet-normalised RGB input to Caffe's BGR.
    resnet_style: ResNetStyle = "auto"
    # Frozen BatchNorm in the backbone: affine parameters not trained, running statistics used
    # (and kept) in train mode too. None: on for DeepLab-v2 ResNets (the field's), off otherwise.
    freeze_bn: bool | None = None


@dataclass
class DataConfig:
    """Where the shards are and how crops are cut (docs/formats.md)."""

    # Shard folders or URIs; "" means the embedded MiniCity shards (prepared on demand).
    source: str = ""
    target: str = ""
    target_val: str = ""
    source_val: str = ""
    # Which embedded MiniCity size fills the empty paths above ("small" for smoke runs/tests).
    minicity_size: Literal["small", "default"] = "default"
    label_space: LabelSpace = "cityscapes19"
    crop_size: int = 161
    batch_source: int = 5  # paper: 5 source + 5 target crops per step
    batch_target: int = 5
    # Every image is first resized by base_scale, then by a random factor in scale_range.
    base_scale: float = 1.0
    # Per-domain base scales (None: base_scale), e.g. SYNTHIA 1280x760 * 0.8 and Cityscapes
    # 2048x1024 * 0.5 are both 1024 pixels wide. The source scale applies to the labelled stream.
    source_base_scale: float | None = None
    target_base_scale: float | None = None
    scale_min: float = 0.75
    scale_max: float = 1.25
    flip: bool = True
    # Evaluation at eval_scale (logits upsampled to the label's full size): the whole image,
    # or sliding windows of crop_size over the image resized by eval_scale.
    eval_mode: EvalMode = "whole"
    eval_scale: float = 1.0
    # Ray Data: CPUs per map task; how many batches to prefetch.
    cpus_per_map_task: float = 0.5
    prefetch_batches: int = 2
    # An execution of a train stream (Ray Data runs one per epoch of the stream) reads the
    # split's files as many times as it takes to hold at least this many rows, at most 16:
    # every execution starts with about a second at one task at a time (on_ray/data.py), which
    # a 600-image split would otherwise pay every ~1 s of crops. 0: one pass per execution.
    min_rows_per_execution: int = 8192
    max_val_images: int = 0  # 0 = the whole split

    def split(self, key: str) -> str | None:
        """The shard folder of split ``key`` (a DATA_SPLITS name), or None when it is not configured:
        empty (before the MiniCity defaults are filled in) or ``"none"`` (left out on purpose)."""
        value = getattr(self, key)
        return None if value in ("", NO_SPLIT) else value


@dataclass
class ROADConfig:
    """The ROAD objective, paper Eq. 5: L = L_seg + λ1·L_dist + λ2·L_spt."""

    # "oracle": L_seg on *labelled target* images, the upper bound of a study; on MiniCity the
    # source becomes target_train_labeled, elsewhere point data.source at labelled target shards.
    mode: Mode = "road"
    lambda_dist: float = 0.1  # λ1 (paper: 0.1)
    lambda_spt: float = 0.01  # λ2 (paper: 0.01)
    grid: str = "3x3"  # spatial partition H x W (paper Fig. 6; 3x3 is best)
    grl_coeff: float = 1.0  # gradient-reversal coefficient (Eq. 4 via [8])
    # How λ2 enters L_spt's gradients. "paper" (Eq. 5): the loss is scaled by λ2, so the domain
    # classifiers also learn at λ2 times their rate. "dann" (Ganin & Lempitsky 2015): the
    # classifiers train on the unscaled loss; the backbone receives -λ2 times its gradient
    # through the reversal layer. Same backbone gradient, classifiers 1/λ2 faster.
    adversarial_form: AdversarialForm = "paper"
    # The BatchNorm control: the student forwards the target crops in every mode, with no loss on
    # them, so its BatchNorm statistics see the target as they do in dst/spt/road (an AdaBN-like
    # effect that would otherwise be credited to the adaptation losses; "NonAdapt + target BN").
    student_sees_target: bool = False
    classifier_hidden: int = 256  # hidden channels of each region's domain classifier
    frozen_stages: int = 2  # mode "frozen": backbone stages with lr 0 (Sec. 4.3)

    @property
    def distillation_domain(self) -> Literal["source", "target"] | None:
        """The crops L_dist is computed on in this mode, or None when the term is off (also at λ1 = 0)."""
        return DISTILLATION_DOMAIN.get(self.mode) if self.lambda_dist > 0 else None

    @property
    def uses_teacher(self) -> bool:
        """Whether a frozen teacher is needed at all (only for a distillation term that is on)."""
        return self.distillation_domain is not None

    @property
    def uses_spatial(self) -> bool:
        """Whether L_spt (and so the domain classifiers) is on: a spatial mode with λ2 > 0."""
        return self.mode in SPATIAL_MODES and self.lambda_spt > 0


@dataclass
class ValidatorConfig:
    """The label-free validators computed at every evaluation (``docs/validators.md``).

    They see target-*train* images (never target-val, whose labels are the oracle's) and the
    source-val images, a fixed sample of pixels per image, so their cost stays a small share
    of an evaluation whatever the image size.
    """

    enabled: bool = True
    # Target-train images cost one extra forward pass each (source-val ones are evaluated
    # anyway): few images, many pixels each. 16 + 4 MixVal mixes are ~6-8% of MiniCity's
    # 250-image evaluation (100 source-val + 150 target-val).
    max_images: int = 16  # per stream (target-train, source-val)
    pixels_per_image: int = 512
    feature_dim: int = 64  # features wider than this are randomly projected to it
    snd_max_samples: int = 2048  # SND's N×N similarities: an evenly strided subset of the target samples
    snd_temperature: float = 0.05  # Saito et al. 2021
    snd_input: Literal["probs", "features"] = "probs"
    dev_ridge: float = 1e-2  # the fallback logistic domain classifier's L2 penalty
    mixval_images: int = 4  # target images kept for MixVal (one mixed forward pass each)
    mixval_ratio: float = 0.55  # Hu et al. 2023: the dominant image's weight
    seed: int = 0


@dataclass
class OptimConfig:
    """SGD as in the paper (Sec. 4.1): lr 2.5e-4, momentum 0.9, wd 5e-4, poly 0.9, head ×10."""

    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    head_lr_mult: float = 10.0
    classifier_lr_mult: float = 10.0
    max_iters: int = 500


@dataclass
class RunConfig:
    """How a run is executed and reported."""

    num_workers: int = 1
    use_gpu: bool | None = None  # None: use a GPU when one is present
    cpus_per_worker: float = 1.0
    precision: Precision = "auto"  # auto: bf16 on GPU and on CPUs with native bf16, else fp32 (engine/precision.py)
    eval_every: int = 100
    log_every: int = 10  # the progress line's (and a report's) losses: the mean over these steps
    # Fixes the initialisation, the crop draws and the shard files' order; not the order in
    # which Ray Data's parallel tasks deliver rows, nor its local shuffle; two runs of one seed are two draws
    # (docs/results/minicity.md measures how far apart) unless run.reproducible is set.
    seed: int = 0
    # True: the train streams deliver rows in task order (Ray Data's preserve_order) and the local
    # shuffle is seeded, so two one-worker runs of one seed on one machine take the same batches;
    # streaming waits on the slowest task for it (docs/ray.md). Several workers still split rows as they ask.
    reproducible: bool = False
    max_failures: int = 2
    storage: str = ""  # "" -> ~/road-ray-results
    name: str = ""  # "" -> built from the settings
    # Stop a run (road-ray train: exit 1; a Tune trial: ERROR) after this many seconds without
    # progress: Train workers started, a step batch or validation image reached rank 0, or a
    # report (road_ray/on_ray/watchdog.py). 0 = never. A line says what it waits for after 45 s.
    stall_timeout_s: float = 600.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    road: ROADConfig = field(default_factory=ROADConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validators: ValidatorConfig = field(default_factory=ValidatorConfig)

    def validate(self) -> Config:
        """Cross-field checks; raises ConfigError naming the key."""
        try:
            parse_grid(self.road.grid)
        except ValueError as e:
            raise ConfigError(f"road.grid: {e}") from None
        for key, value in [("road.lambda_dist", self.road.lambda_dist), ("road.lambda_spt", self.road.lambda_spt)]:
            if value < 0:
                raise ConfigError(f"{key}: expected a value >= 0, got {value}")
        for key in TRAIN_SPLITS:
            if getattr(self.data, key) == NO_SPLIT:
                raise ConfigError(f"data.{key}: a training split cannot be {NO_SPLIT!r} (only target_val, source_val)")
        if self.data.min_rows_per_execution < 0:
            raise ConfigError(f"data.min_rows_per_execution: expected >= 0, got {self.data.min_rows_per_execution}")
        for key in ("base_scale", "source_base_scale", "target_base_scale", "eval_scale"):
            value = getattr(self.data, key)
            if value is not None and not value > 0:
                raise ConfigError(f"data.{key}: expected a scale > 0, got {value}")
        if self.model.resnet_style == "caffe" and not self.model.backbone.startswith("resnet"):
            raise ConfigError(
                f"model.resnet_style: 'caffe' is a ResNet geometry, but model.backbone is {self.model.backbone!r}"
            )
        if self.data.crop_size < 16:
            raise ConfigError(f"data.crop_size: expected >= 16, got {self.data.crop_size}")
        if not 0 < self.data.scale_min <= self.data.scale_max:
            raise ConfigError(
                f"data.scale_min/scale_max: expected 0 < scale_min <= scale_max, got {self.data.scale_min}, {self.data.scale_max}"
            )
        if self.run.stall_timeout_s < 0:
            raise ConfigError(f"run.stall_timeout_s: expected >= 0 (0 = never), got {self.run.stall_timeout_s}")
        if self.run.num_workers < 1:
            raise ConfigError(f"run.num_workers: expected >= 1, got {self.run.num_workers}")
        if self.optim.max_iters < 1:
            raise ConfigError(f"optim.max_iters: expected >= 1, got {self.optim.max_iters}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------
# Loading and overriding


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``["road.lambda_dist=0.1", ...]`` (``--set``) as ``{"road.lambda_dist": 0.1}``, values parsed as YAML."""
    items: dict[str, Any] = {}
    for text in texts:
        if "=" not in text:
            raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. road.lambda_dist=0.1")
        key, value = text.split("=", 1)
        items[key.strip()] = parse_scalar(value.strip())
    return items


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply dotted overrides: ``["road.lambda_dist=0.1", ...]`` or ``{"road.lambda_dist": 0.1}``."""
    items = list((overrides if isinstance(overrides, dict) else parse_overrides(overrides)).items())
    for key, value in items:
        parts = key.split(".")
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        apply_mapping(cfg, nested)
    return cfg


def default_config(smoke: bool = False) -> Config:
    """The defaults; with ``smoke``, at the toy sizes of :data:`SMOKE_OVERRIDES` (the one place
    they are applied: ``road-ray train --smoke`` and smoke sweeps both start from here)."""
    cfg = Config()
    return apply_overrides(cfg, SMOKE_OVERRIDES) if smoke else cfg


def config_from_dict(data: dict[str, Any] | None) -> Config:
    cfg = Config()
    if data:
        apply_mapping(cfg, data)
    return cfg.validate()


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None, smoke: bool = False
) -> Config:
    """Defaults (at smoke sizes with ``smoke``), then the YAML file (if any), then the dotted
    overrides (so a user's ``--set`` wins over ``--smoke``); validated."""
    cfg = default_config(smoke)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        apply_mapping(cfg, data)
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg.validate()


# The whole real path at toy size (``road-ray train --smoke``, ``tune.py --smoke``): MiniCity
# small, tiny crops, a few iterations, one worker; well under two minutes on two CPU cores.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.minicity_size": "small",
    "data.crop_size": 64,
    "data.batch_source": 2,
    "data.batch_target": 2,
    "data.max_val_images": 8,
    "optim.max_iters": 6,
    "run.eval_every": 3,
    "run.log_every": 2,
    "run.num_workers": 1,
    "run.cpus_per_worker": 0.5,
}


def valid_keys() -> list[str]:
    """All dotted keys, for help texts and search-space validation."""
    keys = []
    cfg = Config()
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            keys.append(f"{section.name}.{f.name}")
    return keys
