"""Segmentation heads: DeepLab-v2's ASPP and PSPNet's pyramid pooling module.

Both map the backbone's final map (output stride 8) to per-class logits at the same
resolution; the :class:`~road_ray.models.segmenter.Segmenter` upsamples them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DeepLabV2Head(nn.Module):
    """Atrous Spatial Pyramid Pooling of DeepLab-v2 (Chen et al., TPAMI 2017), ResNet form.

    Four parallel 3x3 convolutions with dilations 6/12/18/24, each mapping the features
    straight to ``num_classes`` logits; the four score maps are **summed** (not
    concatenated), so each branch sees the scene at its own field of view. This is DeepLab-v2's
    ResNet-101 classifier (``conv2d_list`` of AdaptSegNet's model/deeplab_multi.py and ADVENT's
    advent/model/deeplabv2.py; ``branches.i`` here), also used on the small CPU net, where the
    VGG head's 23 M parameters would dwarf the backbone. DeepLab-v2 on VGG-16 has fc6/fc7/fc8
    per branch instead: :class:`road_ray.models.deeplab_vgg.DeepLabV2VGGHead`.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d) for d in dilations)
        for conv in self.branches:  # DeepLab-v2's init of the classifier: N(0, 0.01)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class PyramidPoolingHead(nn.Module):
    """PSPNet's pyramid pooling module (Zhao et al., CVPR 2017) and classifier.

    The features are average-pooled into 1x1, 2x2, 3x3 and 6x6 bins; each pooled map goes
    through a 1x1 conv (``in_channels / 4`` channels) + BN + ReLU, is upsampled back and
    concatenated with the input, so every position sees global and sub-region context. A
    3x3 conv (512, BN, ReLU, dropout 0.1) fuses them and a 1x1 conv gives the logits.
    PSPNet's auxiliary loss on layer3 is not used.

    BatchNorm on the 1x1 bin needs more than one image per batch in training mode.
    """

    def __init__(
        self, in_channels: int, num_classes: int, bins: tuple[int, ...] = (1, 2, 3, 6), bottleneck: int = 512
    ) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduced, 1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + reduced * len(bins), bottleneck, 3, padding=1, bias=False),
            nn.BatchNorm2d(bottleneck),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
        )
        self.classifier = nn.Conv2d(bottleneck, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.classifier(self.bottleneck(torch.cat([x, *pooled], dim=1)))
