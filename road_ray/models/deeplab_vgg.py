"""DeepLab-v2's VGG-16 head (ASPP-L) and its initialisation from the ImageNet classifier.

DeepLab-v2 (Chen et al., TPAMI 2017, Sec. 3.3 and Fig. 7) puts four parallel branches on
VGG-16's stride-1 pool5, one per atrous rate r in {6, 12, 18, 24}; each branch is

    fc6: 3x3 conv, dilation r, 512 -> 1024, ReLU, dropout 0.5
    fc7: 1x1 conv, 1024 -> 1024, ReLU, dropout 0.5
    fc8: 1x1 conv, 1024 -> classes

and the four score maps are summed. fc6/fc7 start from the ImageNet classifier's fc6/fc7 (as
DeepLab's VGG-16 did) and train at the base learning rate, fc8 is new (N(0, 0.01)) and trains
at 10x, DeepLab's ``lr_mult`` 1 / 10 (:meth:`DeepLabV2VGGHead.pretrained_parameters`).

**From torchvision's classifier** (:func:`imagenet_fc_weights`). torchvision's fc6 is a
``Linear(25088, 4096)`` over the ``512 x 7 x 7`` pool5 (flattened channel-major), fc7 a
``Linear(4096, 4096)``. DeepLab *decimated* them (Chen et al., ICLR 2015, Sec. 4.1: 7x7 -> 3x3
spatially, 4096 -> 1024 channels); road-ray decimates deterministically by keeping

- spatially, taps 0, 3, 6 of the 7x7 kernel along each axis (its corners, edge midpoints and
  centre: a 3x3 subgrid with spacing 3 spanning the whole 7x7 window);
- channels 0, 4, 8, ..., 4092 (every 4th) of fc6's outputs, and the same channels of fc7's
  inputs and outputs, so fc7 still reads the fc6 units it was trained on.

Weights are copied as they are (no rescaling), and every branch starts from the same copy.

**The spatial term's feature map.** ROAD's splitting layer and domain classifiers (Eq. 2-3) read
the segmenter's ``"out"`` map, which for VGG-16 is the stride-1 pool5 (512 channels, output
stride 8): the last map that all four branches share. fc6/fc7 exist once per branch (four
different 1024-channel maps, joined only at the logits), so no single fc7 map stands for the
network's representation; pool5 is also where the backbone, and the teacher's ``conv5`` tap,
ends.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

ATROUS_RATES = (6, 12, 18, 24)
FC_CHANNELS = 1024
DROPOUT = 0.5
# torchvision's vgg16().classifier: fc6 = classifier.0, fc7 = classifier.3.
TORCHVISION_FC6 = "classifier.0"
TORCHVISION_FC7 = "classifier.3"
_SPATIAL_TAPS = (0, 3, 6)  # of the 7x7 fc6 kernel
_CHANNEL_STEP = 4  # 4096 -> 1024


class DeepLabV2VGGBranch(nn.Module):
    """One ASPP-L branch: fc6 (3x3, dilation ``rate``) -> fc7 (1x1) -> fc8 (1x1 to classes)."""

    def __init__(self, in_channels: int, num_classes: int, rate: int) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, FC_CHANNELS, 3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        self.fc8 = nn.Conv2d(FC_CHANNELS, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(DROPOUT)  # Caffe's dropout: element-wise
        for conv in (self.fc6, self.fc7, self.fc8):  # torchvision's Linear init / DeepLab's fc8
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


class DeepLabV2VGGHead(nn.Module):
    """DeepLab-v2's VGG-16 ASPP-L head (module docstring): four summed fc6-fc7-fc8 branches."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = ATROUS_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(DeepLabV2VGGBranch(in_channels, num_classes, r) for r in rates)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """fc6 and fc7 of every branch: ImageNet's classifier, trained at the base lr."""
        return [p for b in self.branches for layer in (b.fc6, b.fc7) for p in layer.parameters()]

    def new_parameters(self) -> list[nn.Parameter]:
        """fc8 of every branch: the new classifier, trained at 10x the lr."""
        return [p for b in self.branches for p in b.fc8.parameters()]

    @torch.no_grad()
    def init_from_imagenet(self, fc: Mapping[str, Tensor]) -> None:
        """Copy :func:`imagenet_fc_weights` (``fc6.weight`` ... ``fc7.bias``) into every branch."""
        for branch in self.branches:
            for name in ("fc6", "fc7"):
                layer = getattr(branch, name)
                layer.weight.copy_(fc[f"{name}.weight"])
                layer.bias.copy_(fc[f"{name}.bias"])


def has_imagenet_classifier(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` (a torchvision VGG-16 state dict) holds fc6 and fc7."""
    return all(f"{layer}.{p}" in state for layer in (TORCHVISION_FC6, TORCHVISION_FC7) for p in ("weight", "bias"))


def imagenet_fc_weights(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """torchvision's VGG-16 fc6/fc7 decimated to DeepLab's shapes (module docstring).

    Returns ``fc6.weight [1024, 512, 3, 3]``, ``fc6.bias [1024]``, ``fc7.weight [1024, 1024, 1, 1]``,
    ``fc7.bias [1024]``; a classifier of other shapes is a ValueError naming ``source``.
    """
    w6, b6 = state[f"{TORCHVISION_FC6}.weight"], state[f"{TORCHVISION_FC6}.bias"]
    w7, b7 = state[f"{TORCHVISION_FC7}.weight"], state[f"{TORCHVISION_FC7}.bias"]
    expected = {"fc6": ((4096, 512 * 7 * 7), (4096,)), "fc7": ((4096, 4096), (4096,))}
    for name, (w, b) in {"fc6": (w6, b6), "fc7": (w7, b7)}.items():
        if (tuple(w.shape), tuple(b.shape)) != expected[name]:
            raise ValueError(
                f"{source}: VGG-16 {name} has shapes {list(w.shape)}/{list(b.shape)}, expected "
                f"{list(expected[name][0])}/{list(expected[name][1])} (torchvision's vgg16 classifier)"
            )
    channels = torch.arange(0, 4096, _CHANNEL_STEP)
    taps = torch.tensor(_SPATIAL_TAPS)
    fc6 = w6.view(4096, 512, 7, 7)[channels][:, :, taps][:, :, :, taps]
    fc7 = w7[channels][:, channels]
    return {
        "fc6.weight": fc6.contiguous(),
        "fc6.bias": b6[channels].clone(),
        "fc7.weight": fc7.reshape(FC_CHANNELS, FC_CHANNELS, 1, 1).contiguous(),
        "fc7.bias": b7[channels].clone(),
    }
