"""`road-ray import-weights`: the field's DeepLab-v2 ResNet layouts, key by key, and the logits of a
network loaded through road-ray against an independent re-implementation of the field's module.

The field's layouts are written here as data (key names and shapes from the ResNet spec), and the
reference network below follows AdaptSegNet's model/deeplab_multi.py and ADVENT's
advent/model/deeplabv2.py module by module (it is this file's own code, not road-ray's).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from road_ray.cli import main
from road_ray.config import ModelConfig
from road_ray.data.transforms import normalize
from road_ray.models import build_segmenter, build_teacher
from road_ray.models.import_weights import convert_field_state, import_weights

LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
PLANES = (64, 128, 256, 512)
RATES = (6, 12, 18, 24)
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)


# --- the field's layouts as data ------------------------------------------------------


def _bn(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{p}", (channels,)) for p in ("weight", "bias", "running_mean", "running_var")]


def field_keys(depth: int, classifiers: dict[str, int], classes: int) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of a DeepLab-v2 ResNet state dict; ``classifiers``: name -> input channels."""
    keys = [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip(LAYERS[depth], PLANES), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            keys += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1)), *_bn(f"{p}.bn1", planes)]
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            keys += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1)), *_bn(f"{p}.bn3", planes * 4)]
            if i == 0:  # every stage's first block has a projection (stride, width or dilation change)
                keys += [
                    (f"{p}.downsample.0.weight", (planes * 4, inplanes, 1, 1)),
                    *_bn(f"{p}.downsample.1", planes * 4),
                ]
            inplanes = planes * 4
    for name, channels in classifiers.items():
        for i in range(len(RATES)):
            keys += [
                (f"{name}.conv2d_list.{i}.weight", (classes, channels, 3, 3)),
                (f"{name}.conv2d_list.{i}.bias", (classes,)),
            ]
    return keys


def field_state(keys, seed: int = 0, prefix: str = "", random: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of ``keys``: random (a network to run) or, cheaper, each filled with its own index
    (enough to tell where every tensor landed)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (key, shape) in enumerate(keys):
        if not random:
            state[prefix + key] = torch.full(shape, float(index))
            continue
        t = torch.randn(shape, generator=g)
        if key.endswith("running_var"):
            t = t.abs() + 0.5
        elif key.endswith(".weight") and len(shape) == 1:  # BatchNorm scale: small, so depth does not blow up
            t = 0.2 + 0.1 * t.abs()
        elif key.endswith(".weight") and len(shape) == 4:
            t = t * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5  # He init: activations stay O(1)
        state[prefix + key] = t
    return state


# --- an independent re-implementation of the field's module ---------------------------


class FieldBottleneck(nn.Module):
    """AdaptSegNet/ADVENT's Bottleneck: stride on conv1 (1x1), conv2 dilated."""

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += residual
        return self.relu(out)


class FieldClassifier(nn.Module):
    """Classifier_Module / ClassifierModule; ``summed`` = how many branches its forward adds
    (AdaptSegNet: 2, its return sits inside the loop; ADVENT: 4)."""

    def __init__(self, inplanes, classes, summed):
        super().__init__()
        self.conv2d_list = nn.ModuleList(nn.Conv2d(inplanes, classes, 3, padding=r, dilation=r) for r in RATES)
        self.summed = summed

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for i in range(1, self.summed):
            out += self.conv2d_list[i](x)
        return out


class FieldResNet(nn.Module):
    def __init__(self, depth, classifiers, classes, summed):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        for stage, (blocks, planes, stride, dilation) in enumerate(
            zip(LAYERS[depth], PLANES, (1, 2, 1, 1), (1, 1, 2, 4)), start=1
        ):
            setattr(self, f"layer{stage}", self._make_layer(planes, blocks, stride, dilation))
        self.heads = list(classifiers)
        for name, channels in classifiers.items():
            setattr(self, name, FieldClassifier(channels, classes, summed))

    def _make_layer(self, planes, blocks, stride, dilation):
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        layers = [FieldBottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        layers += [FieldBottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x3 = self.layer3(self.layer2(self.layer1(x)))
        x4 = self.layer4(x3)
        return {
            name: getattr(self, name)(x3 if getattr(self, name).conv2d_list[0].in_channels == 1024 else x4)
            for name in self.heads
        }


def image_pair(h: int = 65, w: int = 65, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random image as road-ray's input (ImageNet-normalised RGB) and as the field's
    (BGR 0..255 minus the Caffe mean), converted independently."""
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    ours = torch.from_numpy(normalize(rgb[None]))
    bgr = rgb[:, :, ::-1].astype(np.float32) - CAFFE_MEAN_BGR
    field = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
    return ours, field


# --- key mappings ---------------------------------------------------------------------

CASES = {
    # name: (origin flag, prefix, classifiers name -> input channels, classes, main classifier)
    "deeplabv2-init": ("auto", "Scale.", {"layer5": 2048}, 21, None),
    "adaptsegnet-single": ("adaptsegnet", "", {"layer5": 2048}, 19, "layer5"),
    "adaptsegnet-multi": ("adaptsegnet", "module.", {"layer5": 1024, "layer6": 2048}, 19, "layer6"),
    "advent-single": ("auto", "", {"layer6": 2048}, 19, "layer6"),
    "advent-multi": ("advent", "", {"layer5": 1024, "layer6": 2048}, 19, "layer6"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_tensor_lands_where_it_should(case):
    origin, prefix, classifiers, classes, main_name = CASES[case]
    keys = field_keys(101, classifiers, classes)
    state = field_state(keys, prefix=prefix, random=False)
    imported = convert_field_state(state, num_classes=19, origin=origin)
    assert imported.depth == 101 and imported.origin == case.split("-single")[0].split("-multi")[0]
    expected = {}
    for key, _ in keys:
        if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")):
            expected[f"backbone.{key}"] = state[prefix + key]
        elif main_name is not None and key.startswith(f"{main_name}.conv2d_list."):
            branch, param = key.split(".")[2:]
            tensor = state[prefix + key]
            if origin == "adaptsegnet" and int(branch) >= 2:
                tensor = torch.zeros_like(tensor)  # AdaptSegNet never used them (its forward sums two)
            expected[f"head.branches.{branch}.{param}"] = tensor
    assert set(imported.state_dict) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(imported.state_dict[key], tensor), key
    assert imported.num_classes == (None if main_name is None else 19)
    dropped = [n for n in imported.notes if n.startswith("dropped")]
    assert len(dropped) == (len(classifiers) - (main_name is not None))


def test_resnet50_layout_and_the_kept_21_class_classifier():
    state = field_state(field_keys(50, {"layer5": 2048}, 21), prefix="Scale.", random=False)
    imported = convert_field_state(state, num_classes=21)
    assert imported.depth == 50 and imported.num_classes == 21
    assert torch.equal(imported.state_dict["head.branches.3.weight"], state["Scale.layer5.conv2d_list.3.weight"])


def test_unknown_layouts_are_one_line_errors_listing_the_keys():
    state = field_state(field_keys(50, {"layer6": 2048}, 19), random=False)
    state["layer7.conv2d_list.0.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"unknown weights layout: 2 keys .*layer7\.conv2d_list\.0\.weight, fc\.weight$"
    ) as e:
        convert_field_state(state, 19, source="x.pth")
    assert "\n" not in str(e.value)
    multi = field_state(field_keys(50, {"layer5": 1024, "layer6": 2048}, 19), random=False)
    with pytest.raises(ValueError, match=r"--from adaptsegnet or --from advent"):
        convert_field_state(multi, 19)  # the same layout in both projects: the origin decides
    del multi["layer2.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing keys.*layer2\.0\.conv1\.weight"):
        convert_field_state(multi, 19, origin="advent")


def test_field_files_are_refused_as_pretrained_with_the_command(tmp_path):
    path = tmp_path / "DeepLab_resnet_pretrained_init.pth"
    torch.save(field_state(field_keys(50, {"layer5": 2048}, 21), prefix="Scale.", random=False), path)
    with pytest.raises(
        ValueError, match=r"DeepLab-v2 init file.*road-ray import-weights .*DeepLab_resnet_pretrained_init\.pth"
    ):
        build_segmenter(ModelConfig(backbone="resnet50", pretrained=str(path)))


# --- logits ---------------------------------------------------------------------------


@pytest.mark.parametrize(("origin", "summed", "depth"), [("adaptsegnet", 2, 50), ("advent", 4, 101)])
def test_imported_network_computes_the_fields_logits(tmp_path, origin, summed, depth):
    torch.manual_seed(0)
    classifiers = {"layer5": 1024, "layer6": 2048}
    state = field_state(field_keys(depth, classifiers, 19), seed=1)
    reference = FieldResNet(depth, classifiers, 19, summed)
    reference.load_state_dict(state)  # the keys-as-data above are the field module's keys
    reference.eval()
    src, out = tmp_path / "field.pth", tmp_path / "imported.pt"
    torch.save(state, src)
    assert main(["import-weights", str(src), "--out", str(out), "--from", origin]) == 0

    model = build_segmenter(ModelConfig(arch="deeplabv2", backbone=f"resnet{depth}", pretrained=str(out))).eval()
    ours_in, field_in = image_pair()
    with torch.no_grad():
        field_logits = reference(field_in)["layer6"]
        field_logits = F.interpolate(field_logits, size=(65, 65), mode="bilinear", align_corners=False)
        logits, _ = model(ours_in)
        torch.testing.assert_close(logits, field_logits, rtol=1e-4, atol=1e-4 * field_logits.abs().max().item())
        # fed the field's own input, the network is the field's to the bit
        model.backbone.to_caffe_input = lambda x: x
        exact, _ = model(field_in)
    assert torch.equal(exact, field_logits)


def test_init_file_backbone_matches_and_the_teacher_is_caffe_style(tmp_path, capsys):
    state = field_state(field_keys(50, {"layer5": 2048}, 21), seed=2, prefix="Scale.")
    reference = FieldResNet(50, {}, 21, 4)
    reference.load_state_dict({k[len("Scale.") :]: v for k, v in state.items() if "layer5" not in k})
    reference.eval()
    src, out = tmp_path / "init.pth", tmp_path / "init.pt"
    torch.save(state, src)
    assert main(["import-weights", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped layer5, a 21-class classifier" in printed and "model.pretrained=" in printed
    config = ModelConfig(arch="deeplabv2", backbone="resnet50", pretrained=str(out), teacher_layer="layer4")
    teacher = build_teacher(config)
    ours_in, field_in = image_pair(seed=3)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(field_in))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        torch.testing.assert_close(teacher(ours_in), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_imported_file_refuses_the_torchvision_geometry(tmp_path):
    src, out = tmp_path / "advent.pth", tmp_path / "advent.pt"
    torch.save(field_state(field_keys(50, {"layer6": 2048}, 19), random=False), src)
    import_weights(str(src), str(out))
    with pytest.raises(ValueError, match=r"model\.resnet_style.*caffe-style.*model\.resnet_style=caffe"):
        build_segmenter(ModelConfig(backbone="resnet50", pretrained=str(out), resnet_style="torchvision"))
    with pytest.raises(ValueError, match=r"head.*model\.num_classes=7.*branches\.0\.weight"):
        build_segmenter(ModelConfig(backbone="resnet50", pretrained=str(out), num_classes=7))
    model = build_segmenter(ModelConfig(backbone="resnet50", pretrained=str(out)))
    assert model.head.branches[0].weight.shape == (19, 2048, 3, 3)
