"""Networks: backbones with named taps, DeepLab-v2 / PSPNet heads, the Segmenter and the
frozen Teacher of Eq. 1 (docs/networks.md)."""

from road_ray.models.backbones import (
    Backbone,
    ResNetBackbone,
    SmallBackbone,
    VGGBackbone,
    tap_names,
)
from road_ray.models.caffe_resnet import CaffeResNetBackbone
from road_ray.models.deeplab_vgg import DeepLabV2VGGHead
from road_ray.models.heads import DeepLabV2Head, PyramidPoolingHead
from road_ray.models.segmenter import Segmenter, Teacher, build_head, build_segmenter, build_teacher
from road_ray.models.weights import build_backbone, load_backbone_weights

__all__ = [
    "Backbone",
    "CaffeResNetBackbone",
    "DeepLabV2Head",
    "DeepLabV2VGGHead",
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
