"""Networks: backbones with named taps, DeepLab-v2 / PSPNet heads, the Segmenter and the
frozen Teacher of Eq. 1."""

from road_ray.models.backbones import (
    Backbone,
    ResNetBackbone,
    SmallBackbone,
    VGGBackbone,
    build_backbone,
    load_backbone_weights,
    tap_names,
)
from road_ray.models.heads import DeepLabV2Head, PyramidPoolingHead
from road_ray.models.segmenter import Segmenter, Teacher, build_head, build_segmenter, build_teacher

__all__ = [
    "Backbone",
    "DeepLabV2Head",
    "PyramidPoolingHead",
    "ResNetBackbone",
    "Segmenter",
    "SmallBackbone",
    "Teacher",
    "VGGBackbone",
    "build_backbone",
    "build_head",
    "build_segmenter",
    "build_teacher",
    "load_backbone_weights",
    "tap_names",
]
