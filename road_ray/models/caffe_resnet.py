"""The Caffe-style DeepLab-v2 ResNet: the geometry and input of the field's weights.

DeepLab-v2 (Chen et al., TPAMI 2017) was trained in Caffe on MS-COCO from the original Caffe
ResNet-101 of He et al.; its PyTorch port (``DeepLab_resnet_pretrained_init``, keys ``Scale.*``)
is where AdaptSegNet (``model/deeplab.py``, ``model/deeplab_multi.py``) and ADVENT
(``advent/model/deeplabv2.py``) start, and their checkpoints share its layout. Its parameters
have torchvision's shapes and names, but it computes another function than torchvision's
ResNet with ``replace_stride_with_dilation``:

- the stem's max-pool rounds *up* (``ceil_mode=True``, as Caffe's pooling does);
- a stage's stride sits on the first 1x1 convolution of its first block (Caffe ResNet), not on
  the 3x3 one (torchvision, "ResNet v1.5");
- every block of layer3 / layer4 is dilated by 2 / 4, the first included (torchvision keeps the
  previous stage's dilation, 1 / 2, in a stage's first block);
- the input is BGR in 0..255 minus the Caffe ImageNet mean, not RGB in 0..1 normalised by the
  ImageNet mean and std.

:class:`CaffeResNetBackbone` is torchvision's module with those three geometry differences
patched (the same weights then give the field's logits exactly, see ``tests/test_import_weights.py``)
and the input conversion done first in its forward pass, so the data pipeline keeps producing
ImageNet-normalised RGB for every network.

Sizes: the ceil-mode pool makes the stride-4 map ``ceil(n / 2) + 1`` for an even stem output
``n`` (``floor`` mode: ``n / 2``); for inputs of the form ``8k + 1`` (321, 65, 33, ...) every tap
of stride ``s`` is ``ceil(H / s)``, as for the other backbones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from road_ray.models.backbones import ResNetBackbone

# Caffe's ImageNet mean, in BGR order and 0..255 (the DeepLab-v2 / AdaptSegNet / ADVENT input).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# road-ray's input convention (road_ray.data.transforms.normalize), repeated here so the model
# package does not import the data package.
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def caffe_input_affine() -> tuple[Tensor, Tensor]:
    """``(gain, offset)`` of shape ``[3, 1, 1]`` such that, for an ImageNet-normalised RGB
    batch ``x``, ``x.flip(1) * gain + offset`` is the Caffe input: BGR 0..255 minus the mean.

    ``rgb255 = 255 * (x * std + mean)``; channel ``c`` of the BGR result reads RGB channel
    ``2 - c``, so gain and offset are taken in BGR order.
    """
    std = torch.tensor(_IMAGENET_STD_RGB, dtype=torch.float64).flip(0)
    mean = torch.tensor(_IMAGENET_MEAN_RGB, dtype=torch.float64).flip(0)
    gain = 255.0 * std
    offset = 255.0 * mean - torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64)
    return gain.float().view(3, 1, 1), offset.float().view(3, 1, 1)


class CaffeResNetBackbone(ResNetBackbone):
    """DeepLab-v2's ResNet-50/101 in the Caffe form (module docstring); output stride 8.

    Same module tree, state-dict keys and taps as :class:`ResNetBackbone`; its forward takes
    ImageNet-normalised RGB like every road-ray backbone and feeds the network Caffe's input.
    """

    def __init__(self, depth: int) -> None:
        super().__init__(depth)
        self.maxpool.ceil_mode = True
        for name, dilation in (("layer2", 1), ("layer3", 2), ("layer4", 4)):
            first = getattr(self, name)[0]
            if name == "layer2":  # the only striding stage after the stem: stride on the 1x1
                first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
            for block in getattr(self, name):
                block.conv2.dilation = block.conv2.padding = (dilation, dilation)
        gain, offset = caffe_input_affine()
        # Not persistent: a constant of the geometry, so state dicts keep the field's keys.
        self.register_buffer("input_gain", gain, persistent=False)
        self.register_buffer("input_offset", offset, persistent=False)

    def to_caffe_input(self, x: Tensor) -> Tensor:
        """ImageNet-normalised RGB ``[B, 3, H, W]`` -> BGR 0..255 minus the Caffe mean."""
        return x.flip(1) * self.input_gain.to(x.dtype) + self.input_offset.to(x.dtype)

    def _run(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        return super()._run(self.to_caffe_input(x), names)
