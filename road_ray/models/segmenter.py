"""The segmentation network (backbone + head) and the frozen teacher of Eq. 1.

:func:`build_segmenter` builds the student: DeepLab-v2 or PSPNet on any backbone
(paper Sec. 4.1: DeepLab-v2 on VGG-16, PSPNet on ResNet-101). :func:`build_teacher`
builds the frozen copy of the *pretrained* backbone whose features at one tap the
student imitates on target images (target-guided distillation, Eq. 1).

Which network a config means (docs/networks.md): DeepLab-v2 on VGG-16 has DeepLab's VGG head
(``road_ray/models/deeplab_vgg.py``), on a ResNet or the small net the ResNet form of ASPP
(:class:`~road_ray.models.heads.DeepLabV2Head`); a DeepLab-v2 ResNet is Caffe-style and has
frozen BatchNorm unless ``model.resnet_style`` / ``model.freeze_bn`` say otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from road_ray.config import ModelConfig
from road_ray.models.backbones import Backbone, tap_names
from road_ray.models.deeplab_vgg import DeepLabV2VGGHead, has_imagenet_classifier, imagenet_fc_weights
from road_ray.models.heads import DeepLabV2Head, PyramidPoolingHead
from road_ray.models.weights import Weights, head_state, load_backbone, load_state, make_backbone, read_weights


class Segmenter(nn.Module):
    """Backbone + head; returns per-pixel logits and the requested backbone taps.

    ``stage_names``: the backbone's tap names; ``feature_channels``/``feature_strides``:
    channels/stride of every tap and of ``"out"`` (the head's input). A tap of stride
    ``s`` on an ``H x W`` input is ``ceil(H/s) x ceil(W/s)``.
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.stage_names: tuple[str, ...] = backbone.stage_names
        self.output_stride: int = backbone.output_stride
        self.feature_channels: dict[str, int] = {**backbone.stage_channels, "out": backbone.out_channels}
        self.feature_strides: dict[str, int] = {**backbone.stage_strides, "out": backbone.output_stride}

    def forward(self, x: Tensor, taps: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits ``[B, num_classes, H, W]`` (bilinear, ``align_corners=False``, to the
        input size) and ``{tap: map}`` for every requested tap plus ``"out"``."""
        if isinstance(taps, str):  # a bare "layer3" would otherwise be read as 6 taps
            taps = (taps,)
        for tap in taps:
            self.backbone.check_tap(tap)
        features = self.backbone.forward_features(x)  # checks that x is [B, 3, H, W]
        logits = self.head(features["out"])
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, {name: features[name] for name in (*taps, "out")}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trained at the base lr: the backbone and, in DeepLab-v2's VGG head, fc6/fc7 (they
        come from the ImageNet classifier; DeepLab's ``lr_mult`` 1)."""
        extra = self.head.pretrained_parameters() if isinstance(self.head, DeepLabV2VGGHead) else []
        return list(self.backbone.parameters()) + extra

    def head_parameters(self) -> list[nn.Parameter]:
        """The new, randomly initialised layers of the head: trained at 10x the lr (Sec. 4.1)."""
        if isinstance(self.head, DeepLabV2VGGHead):
            return self.head.new_parameters()
        return list(self.head.parameters())

    def freeze_stages(self, k: int) -> None:
        """The "frozen" baseline (Sec. 4.3): stem + first ``k`` backbone stages get
        ``requires_grad=False`` and keep their BatchNorm in eval mode."""
        self.backbone.freeze_stages(k)


class Teacher(nn.Module):
    """Frozen pretrained backbone, run only up to ``layer`` (paper Eq. 1's ``z``).

    No parameter requires grad, the forward pass runs under ``torch.no_grad()``, and the
    module stays in eval mode whatever ``.train()`` is called with (its BatchNorm must keep
    the ImageNet statistics). Stages after ``layer`` are deleted, so they cost nothing.
    Never wrap it in DDP: it has nothing to synchronise.
    """

    def __init__(self, backbone: Backbone, layer: str) -> None:
        super().__init__()
        backbone.truncate(layer)
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone = backbone
        self.layer = layer
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x, upto=self.layer)[self.layer]


def build_head(arch: str, in_channels: int, num_classes: int, backbone: str = "") -> nn.Module:
    """DeepLab-v2's head for ``backbone`` (VGG-16: fc6-fc7-fc8 branches; otherwise the ResNet
    ASPP) or PSPNet's pyramid pooling."""
    if arch == "deeplabv2":
        return (
            DeepLabV2VGGHead(in_channels, num_classes)
            if backbone == "vgg16"
            else DeepLabV2Head(in_channels, num_classes)
        )
    if arch == "pspnet":
        return PyramidPoolingHead(in_channels, num_classes)
    raise ValueError(f"unknown model.arch {arch!r}; expected deeplabv2 or pspnet")


def resnet_style(cfg: ModelConfig) -> str:
    """``model.resnet_style`` resolved: ``"auto"`` is the Caffe geometry for DeepLab-v2 ResNets
    (the field's), torchvision's for PSPNet; non-ResNet backbones report ``"torchvision"``."""
    if not cfg.backbone.startswith("resnet"):
        return "torchvision"
    if cfg.resnet_style == "auto":
        return "caffe" if cfg.arch == "deeplabv2" else "torchvision"
    return cfg.resnet_style


def freeze_bn(cfg: ModelConfig) -> bool:
    """``model.freeze_bn`` resolved: None means on for DeepLab-v2 ResNets (as the field trains
    them), off otherwise."""
    if cfg.freeze_bn is None:
        return cfg.arch == "deeplabv2" and cfg.backbone.startswith("resnet")
    return cfg.freeze_bn


def _check_output_stride(cfg: ModelConfig) -> None:
    if cfg.output_stride != 8:
        raise ValueError(f"model.output_stride: only 8 is supported (DeepLab-v2/PSPNet), got {cfg.output_stride}")


def _backbone(cfg: ModelConfig, weights: Weights | None) -> Backbone:
    backbone = make_backbone(cfg.backbone, resnet_style(cfg))
    if weights is not None:
        load_backbone(backbone, weights)
    if freeze_bn(cfg):
        backbone.freeze_batchnorm()
    return backbone


def _load_head(head: nn.Module, cfg: ModelConfig, weights: Weights) -> None:
    """A Segmenter-shaped file's ``head.*``; else DeepLab-v2 VGG's fc6/fc7 from ImageNet's classifier."""
    state = head_state(weights)
    if state:
        load_state(head, state, f"{weights.source} (head, model.num_classes={cfg.num_classes})")
    elif isinstance(head, DeepLabV2VGGHead):
        if has_imagenet_classifier(weights.state):
            head.init_from_imagenet(imagenet_fc_weights(weights.state, weights.source))
        else:
            warnings.warn(
                f"{weights.source} has no VGG-16 classifier (classifier.0/classifier.3): DeepLab-v2's fc6/fc7 "
                "start random instead of from ImageNet's fc6/fc7",
                UserWarning,
                stacklevel=3,
            )


def build_segmenter(cfg: ModelConfig) -> Segmenter:
    """Build ``cfg.arch`` on ``cfg.backbone`` with the weights ``cfg.pretrained`` names
    (``"none"``, a weights file, or ``"auto"`` = torchvision's ImageNet weights; see
    ``road_ray/models/weights.py``). The head loads a file's ``head.*`` when it has one;
    DeepLab-v2's VGG head takes fc6/fc7 from a VGG-16 classifier; the rest starts fresh."""
    _check_output_stride(cfg)
    weights = read_weights(cfg.backbone, cfg.pretrained, resnet_style(cfg))
    backbone = _backbone(cfg, weights)
    head = build_head(cfg.arch, backbone.out_channels, cfg.num_classes, cfg.backbone)
    if weights is not None:
        _load_head(head, cfg, weights)
    return Segmenter(backbone, head)


def build_teacher(cfg: ModelConfig, layer: str | None = None) -> Teacher:
    """Build the frozen teacher of Eq. 1: the backbone with the same pretrained weights (and
    geometry) as :func:`build_segmenter`, truncated after ``layer`` (default ``cfg.teacher_layer``).

    Refuses an untrained (``pretrained="none"``) teacher unless
    ``cfg.allow_untrained_teacher``; then it warns, since distilling toward random
    features only regularises toward noise.
    """
    _check_output_stride(cfg)
    layer = cfg.teacher_layer if layer is None else layer
    if layer not in tap_names(cfg.backbone):
        raise ValueError(
            f"unknown teacher layer {layer!r} for backbone {cfg.backbone}; valid taps: {', '.join(tap_names(cfg.backbone))}"
        )
    if cfg.pretrained == "none":
        if not cfg.allow_untrained_teacher:
            raise ValueError(
                "distillation toward an untrained teacher is meaningless; "
                "set model.pretrained=PATH or model.allow_untrained_teacher=true"
            )
        warnings.warn(
            "THE TEACHER IS UNTRAINED (model.pretrained='none'): target-guided distillation pulls the "
            "student toward random features; results are not the paper's method",
            UserWarning,
            stacklevel=2,
        )
    return Teacher(_backbone(cfg, read_weights(cfg.backbone, cfg.pretrained, resnet_style(cfg))), layer)
