"""Backbones with named taps: the small CPU net, DeepLab-v2 VGG-16, dilated ResNet-50/101.

Every backbone is a :class:`Backbone`: a stem, then named stages (``stage_names``), then an
optional parameter-free ``post`` op whose output is ``"out"``, the map fed to the head.
All run at output stride 8, the setting of DeepLab-v2 and PSPNet: the last stride-2
operations are replaced by stride 1 and the following convolutions are dilated, so the
receptive field grows without losing resolution.

Spatial sizes: a tap of stride ``s`` on an ``H x W`` input is ``ceil(H/s) x ceil(W/s)``
(every downsampling op is a 3x3, stride 2, padding 1 conv/pool, or a 7x7 padding 3 conv);
feature position ``i`` is centred near input pixel ``i * s``.

State-dict keys follow torchvision's names (``conv1.weight``, ``layer3.0.bn1.bias``,
``features.28.weight``), so a torchvision model's state dict loads after dropping its
classifier (``road_ray/models/weights.py`` builds backbones and loads their weights; the
Caffe-style DeepLab-v2 ResNet is in ``road_ray/models/caffe_resnet.py``).
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from road_ray.config import BackboneName


def check_image_batch(x: Tensor) -> None:
    """Raise ValueError unless ``x`` is a ``[B, 3, H, W]`` batch of images."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape [B, 3, H, W], got {list(x.shape)}")


class Backbone(nn.Module):
    """A feature extractor with named stages.

    Subclasses set ``stage_names``, ``stage_channels``, ``stage_strides`` and implement
    :meth:`stem_modules`, :meth:`stage_modules` and :meth:`_run` (stem + stages in order).
    """

    stage_names: tuple[str, ...]
    stage_channels: dict[str, int]
    stage_strides: dict[str, int]
    output_stride: int = 8

    def __init__(self) -> None:
        super().__init__()
        self.post: nn.Module = nn.Identity()  # turns the last stage into "out"
        self.frozen_stages: int | None = None
        self.frozen_batchnorm = False
        self.truncated_after: str | None = None

    # --- subclass hooks -------------------------------------------------------------
    def stem_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def stage_modules(self, name: str) -> list[nn.Module]:
        raise NotImplementedError

    def _run(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        """Run the stem and the stages ``names`` (a prefix of ``stage_names``); return
        every stage's output by name."""
        raise NotImplementedError

    # --- public -------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.stage_channels[self.stage_names[-1]]

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Every name a caller may request: the stages, then ``"out"``."""
        return (*self.stage_names, "out")

    def check_tap(self, name: str) -> None:
        if name not in self.tap_names:
            raise ValueError(f"unknown tap {name!r}; valid taps: {', '.join(self.tap_names)}")

    def forward_features(self, x: Tensor, upto: str | None = None) -> dict[str, Tensor]:
        """Outputs of every stage up to ``upto`` (inclusive), in order.

        ``upto=None`` or ``"out"`` runs the whole backbone and adds ``"out"`` (the head's
        input: the last stage after ``post``, e.g. VGG's stride-1 pool5).
        """
        check_image_batch(x)
        upto = "out" if upto is None else upto
        self.check_tap(upto)
        if (
            self.truncated_after is not None
            and upto not in self.stage_names[: self.stage_names.index(self.truncated_after) + 1]
        ):
            raise ValueError(
                f"this backbone was truncated after {self.truncated_after!r}; it cannot run up to {upto!r}"
            )
        last = self.stage_names[-1] if upto == "out" else upto
        features = self._run(x, self.stage_names[: self.stage_names.index(last) + 1])
        if upto == "out":
            features["out"] = self.post(features[last])
        return features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["out"]

    def truncate(self, upto: str) -> None:
        """Delete every stage after ``upto`` (and ``post``): the teacher of Eq. 1 only
        ever runs up to its tap, so later stages would be dead weight."""
        self.check_tap(upto)
        if upto == "out":
            return
        for name in self.stage_names[self.stage_names.index(upto) + 1 :]:
            self._delete_stage(name)
        self.post = nn.Identity()
        self.truncated_after = upto

    def _delete_stage(self, name: str) -> None:
        delattr(self, name)

    def freeze_stages(self, k: int) -> None:
        """Paper Sec. 4.3 "frozen" baseline: stem + first ``k`` stages stop learning.

        Their parameters get ``requires_grad=False`` and their BatchNorm layers stay in
        eval mode (running statistics frozen too), also after ``.train()``. Freezing is
        one-way: a second call with a smaller ``k`` does not unfreeze anything.
        """
        if not 0 <= k <= len(self.stage_names):
            raise ValueError(f"freeze_stages: k must be in 0..{len(self.stage_names)}, got {k}")
        self.frozen_stages = k
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def freeze_batchnorm(self) -> None:
        """Frozen BatchNorm (``model.freeze_bn``), as DeepLab-v2 trains its ResNets.

        Every BatchNorm layer's weight and bias get ``requires_grad=False`` and the layer stays
        in eval mode after ``.train()``: in training too it normalises with its running
        statistics (the pretrained ones) and never updates them, like Caffe's
        ``use_global_stats: true`` in DeepLab-v2's prototxt. (AdaptSegNet's and ADVENT's PyTorch
        code freezes the affine parameters only and leaves the layers in train mode, where each
        batch is normalised by its own statistics and the running ones drift.)
        """
        self.frozen_batchnorm = True
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_batchnorm:
            bn = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        else:
            bn = []
        if self.frozen_stages is None:
            return bn
        modules = bn + list(self.stem_modules())
        for name in self.stage_names[: self.frozen_stages]:
            modules += self.stage_modules(name)
        return modules

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self


# ---------------------------------------------------------------------------------------
# Small backbone


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) that, unlike torchvision's, allows dilation."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # out-of-place add: x may be a tap the caller keeps
        return self.relu(out + self.downsample(x))


class SmallBackbone(Backbone):
    """A ~1.5 M-parameter residual net that trains in minutes on two CPU cores.

    Stem: two 3x3 convs (stride 2). layer1/layer2: stride 2 (strides 4, 8); layer3/layer4:
    dilation 2/4 instead of striding (output stride 8, as DeepLab/PSPNet). Same tap names
    as the ResNets so configs move between them. 32/64/128/256 channels, one basic block
    per stage except two in layer3 (where the dilated context is built up cheaply).
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, channels: tuple[int, int, int, int] = (32, 64, 128, 256), blocks: tuple[int, int, int, int] = (1, 1, 2, 1)
    ) -> None:
        super().__init__()
        self.stage_channels = dict(zip(self.stage_names, channels))
        self.stage_strides = {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}
        self.stem = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
            nn.Conv2d(24, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        in_ch = 32
        for name, out_ch, n, stride, dilation in zip(self.stage_names, channels, blocks, (2, 2, 1, 1), (1, 1, 2, 4)):
            layers = [
                ResidualBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dilation) for i in range(n)
            ]
            setattr(self, name, nn.Sequential(*layers))
            in_ch = out_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stem_modules(self) -> list[nn.Module]:
        return [self.stem]

    def stage_modules(self, name: str) -> list[nn.Module]:
        return [getattr(self, name)]

    def _run(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        features = {}
        x = self.stem(x)
        for name in names:
            x = features[name] = getattr(self, name)(x)
        return features


# ---------------------------------------------------------------------------------------
# ResNet-50/101


class ResNetBackbone(Backbone):
    """torchvision ResNet with ``replace_stride_with_dilation=[False, True, True]``
    (layer3/layer4 dilated 2/4, output stride 8, as in DeepLab-v2 and PSPNet).
    Stem = conv1/bn1/relu/maxpool; taps layer1..layer4; ``avgpool``/``fc`` are dropped.
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, depth: int) -> None:
        super().__init__()
        builders = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        net: tv_resnet.ResNet = builders[depth](weights=None, replace_stride_with_dilation=[False, True, True])
        for name in ("conv1", "bn1", "relu", "maxpool", *self.stage_names):
            setattr(self, name, getattr(net, name))
        self.stage_channels = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
        self.stage_strides = {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def stage_modules(self, name: str) -> list[nn.Module]:
        return [getattr(self, name)]

    def _run(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        features = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in names:
            x = features[name] = getattr(self, name)(x)
        return features


# ---------------------------------------------------------------------------------------
# VGG-16


class VGGBackbone(Backbone):
    """VGG-16 in the DeepLab-v2 form: output stride 8, no fully connected layers.

    As in DeepLab's VGG prototxt, pool1-3 are 3x3/stride 2/padding 1 (ceil(H/2) sizes),
    pool4 and pool5 are 3x3/stride 1/padding 1, and the conv5 block is dilated by 2.
    ``features`` keeps torchvision's layer indices, so ImageNet weights load unchanged.

    Tap ``convK`` = output of conv block K (after its last ReLU, *before* its pool); the
    pool in front of a block belongs to that block's stage, so the stem is empty.
    ``"out"`` = pool5(conv5), the map the ASPP head reads (512 channels).
    """

    stage_names = ("conv1", "conv2", "conv3", "conv4", "conv5")
    # index range in torchvision's vgg16().features of each stage: [start, end)
    _ranges = {"conv1": (0, 4), "conv2": (4, 9), "conv3": (9, 16), "conv4": (16, 23), "conv5": (23, 30)}

    def __init__(self) -> None:
        super().__init__()
        # make_layers(cfgs["D"]) is exactly vgg16().features, without building the
        # 124 M-parameter classifier that would be dropped anyway.
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]  # 4, 9, 16, 23, 30
        for i in pools[:3]:
            features[i] = nn.MaxPool2d(3, stride=2, padding=1)
        features[pools[3]] = nn.MaxPool2d(3, stride=1, padding=1)
        for i in range(pools[3] + 1, pools[4]):
            if isinstance(features[i], nn.Conv2d):
                features[i].dilation, features[i].padding = (2, 2), (2, 2)
        del features[pools[4]]  # pool5 becomes `post`: stride 1, so "out" stays at stride 8
        self.post = nn.MaxPool2d(3, stride=1, padding=1)
        self.features = features
        for m in self.features.modules():  # torchvision VGG's own init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.stage_channels = {"conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512, "conv5": 512}
        self.stage_strides = {"conv1": 1, "conv2": 2, "conv3": 4, "conv4": 8, "conv5": 8}

    def stem_modules(self) -> list[nn.Module]:
        return []

    def stage_modules(self, name: str) -> list[nn.Module]:
        start, end = self._ranges[name]
        return [self.features[i] for i in range(start, end)]

    def _delete_stage(self, name: str) -> None:
        start, _ = self._ranges[name]
        if len(self.features) > start:
            self.features = self.features[:start]  # slicing keeps torchvision's indices as keys

    def _run(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        features = {}
        for name in names:
            start, end = self._ranges[name]
            for i in range(start, end):
                x = self.features[i](x)
            features[name] = x
        return features


# ---------------------------------------------------------------------------------------
# Names


def tap_names(name: BackboneName) -> tuple[str, ...]:
    """Valid tap names of backbone ``name`` (its stages, then ``"out"``), without building it."""
    classes = {"small": SmallBackbone, "vgg16": VGGBackbone, "resnet50": ResNetBackbone, "resnet101": ResNetBackbone}
    if name not in classes:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(classes)}")
    return (*classes[name].stage_names, "out")
