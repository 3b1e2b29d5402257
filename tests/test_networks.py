"""The field's networks: DeepLab-v2's VGG-16 head and its ImageNet initialisation, the Caffe-style
DeepLab-v2 ResNet, frozen BatchNorm, and the parameter counts (docs/networks.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from road_ray.config import ModelConfig, OptimConfig
from road_ray.data.transforms import normalize
from road_ray.engine.optim import build_optimizer
from road_ray.models import build_segmenter
from road_ray.models.deeplab_vgg import DeepLabV2VGGHead

CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)


def cfg(**kw) -> ModelConfig:
    kw.setdefault("pretrained", "none")
    return ModelConfig(**kw)


def count(params) -> int:
    return sum(p.numel() for p in params)


# --- parameter counts, from the structures' own definitions ---------------------------


def vgg16_conv_params() -> int:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]  # conv1_1 .. conv5_3
    total, c_in = 0, 3
    for c in widths:
        total += c_in * c * 9 + c
        c_in = c
    return total


def resnet_params(blocks: tuple[int, ...]) -> int:
    total, c_in = 64 * 3 * 49 + 2 * 64, 64  # conv1, bn1
    for n, planes in zip(blocks, (64, 128, 256, 512)):
        for i in range(n):
            total += c_in * planes + planes * planes * 9 + planes * planes * 4 + 2 * (planes * 6)  # 3 convs, 3 BNs
            if i == 0:
                total += c_in * planes * 4 + 2 * planes * 4
            c_in = planes * 4
    return total


def test_parameter_counts():
    classes = 19
    vgg = build_segmenter(cfg(arch="deeplabv2", backbone="vgg16"))
    branch = (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * classes + classes)
    assert count(vgg.backbone.parameters()) == vgg16_conv_params() == 14_714_688
    assert count(vgg.head.parameters()) == 4 * branch == 23_154_764
    assert count(vgg.parameters()) == 37_869_452

    resnet = build_segmenter(cfg(arch="deeplabv2", backbone="resnet101"))
    assert count(resnet.backbone.parameters()) == resnet_params((3, 4, 23, 3)) == 42_500_160
    assert count(resnet.head.parameters()) == 4 * (2048 * 9 * classes + classes) == 1_400_908
    assert count(resnet.parameters()) == 43_901_068


# --- DeepLab-v2 VGG-16 -----------------------------------------------------------------


def test_vgg_head_is_four_summed_fc6_fc7_fc8_branches():
    head = DeepLabV2VGGHead(512, 5)
    assert len(head.branches) == 4
    for branch, rate in zip(head.branches, (6, 12, 18, 24)):
        assert branch.fc6.kernel_size == (3, 3) and branch.fc6.dilation == (rate, rate)
        assert branch.fc6.padding == (rate, rate) and branch.fc6.out_channels == 1024
        assert branch.fc7.kernel_size == (1, 1) and branch.fc7.out_channels == 1024
        assert branch.fc8.kernel_size == (1, 1) and branch.fc8.out_channels == 5
        assert branch.dropout.p == 0.5
    head.eval()
    x = torch.randn(2, 512, 9, 7)
    out = head(x)
    assert out.shape == (2, 5, 9, 7)
    relu = torch.relu
    manual = sum(b.fc8(relu(b.fc7(relu(b.fc6(x))))) for b in head.branches)
    torch.testing.assert_close(out, manual)
    head.train()
    assert not torch.equal(head(x), head(x))  # dropout is on in training


@pytest.fixture(scope="module")
def torchvision_vgg_state():
    """A randomly initialised torchvision VGG-16 (the ImageNet file's layout, classifier included)."""
    torch.manual_seed(0)
    return torchvision.models.vgg16().state_dict()


def check_fc_init(head: DeepLabV2VGGHead, state: dict[str, torch.Tensor]) -> None:
    w6, b6 = state["classifier.0.weight"], state["classifier.0.bias"]  # [4096, 512*7*7], channel-major
    w7, b7 = state["classifier.3.weight"], state["classifier.3.bias"]
    rng = np.random.default_rng(0)
    for branch in head.branches:
        fc6, fc7 = branch.fc6.weight, branch.fc7.weight
        for _ in range(50):  # every 4th unit, taps 0/3/6 of the 7x7 kernel
            k, c, i, j, u = (int(rng.integers(n)) for n in (1024, 512, 3, 3, 1024))
            assert fc6[k, c, i, j] == w6[4 * k, c * 49 + (3 * i) * 7 + 3 * j]
            assert fc7[k, u, 0, 0] == w7[4 * k, 4 * u]
        assert torch.equal(branch.fc6.bias, b6[::4]) and torch.equal(branch.fc7.bias, b7[::4])
        assert torch.equal(fc6[:, :, 1, 1], w6.view(4096, 512, 7, 7)[::4, :, 3, 3])  # the centre tap
    assert all(torch.equal(b.fc6.weight, head.branches[0].fc6.weight) for b in head.branches)


def test_vgg_head_starts_from_the_imagenet_classifier_file(tmp_path, torchvision_vgg_state):
    path = tmp_path / "vgg16.pth"
    torch.save(torchvision_vgg_state, path)
    model = build_segmenter(cfg(arch="deeplabv2", backbone="vgg16", pretrained=str(path)))
    check_fc_init(model.head, torchvision_vgg_state)
    assert torch.equal(model.backbone.features[28].weight, torchvision_vgg_state["features.28.weight"])
    for branch in model.head.branches:  # fc8 is new: N(0, 0.01), not from the classifier
        assert branch.fc8.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert not branch.fc8.bias.any()


def test_vgg_head_from_torchvision_auto_weights(monkeypatch, torchvision_vgg_state):
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, **kw: torchvision_vgg_state)
    model = build_segmenter(cfg(arch="deeplabv2", backbone="vgg16", pretrained="auto"))
    check_fc_init(model.head, torchvision_vgg_state)


def test_vgg_backbone_only_file_warns_that_fc6_fc7_start_random(tmp_path):
    model = build_segmenter(cfg(arch="deeplabv2", backbone="vgg16"))
    path = tmp_path / "features.pt"
    torch.save(model.backbone.state_dict(), path)
    with pytest.warns(UserWarning, match=r"features\.pt.*no VGG-16 classifier"):
        build_segmenter(cfg(arch="deeplabv2", backbone="vgg16", pretrained=str(path)))


def test_vgg_fc6_fc7_train_at_the_base_lr_and_fc8_at_10x():
    model = build_segmenter(cfg(arch="deeplabv2", backbone="vgg16"))
    new = {id(p) for b in model.head.branches for p in b.fc8.parameters()}
    assert {id(p) for p in model.head_parameters()} == new
    base = {id(p) for p in model.backbone_parameters()}
    assert {id(p) for b in model.head.branches for m in (b.fc6, b.fc7) for p in m.parameters()} <= base
    assert base | new == {id(p) for p in model.parameters()} and not base & new
    groups = {g["name"]: g for g in build_optimizer(model, None, OptimConfig()).param_groups}
    assert count(groups["head"]["params"]) == 4 * (1024 * 19 + 19)
    assert groups["head"]["lr"] == pytest.approx(10 * groups["backbone"]["lr"])


# --- the Caffe-style DeepLab-v2 ResNet ------------------------------------------------


def test_caffe_geometry_differs_from_torchvision_exactly_where_the_field_does():
    caffe = build_segmenter(cfg(arch="deeplabv2", backbone="resnet50")).backbone
    tv = build_segmenter(cfg(arch="deeplabv2", backbone="resnet50", resnet_style="torchvision")).backbone
    assert type(caffe).__name__ == "CaffeResNetBackbone" and type(tv).__name__ == "ResNetBackbone"
    assert caffe.maxpool.ceil_mode and not tv.maxpool.ceil_mode
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert [b.conv2.dilation for b in caffe.layer3] == [(2, 2)] * 6
    assert [b.conv2.dilation for b in caffe.layer4] == [(4, 4)] * 3
    assert tv.layer3[0].conv2.dilation == (1, 1) and tv.layer4[0].conv2.dilation == (2, 2)
    assert all(b.conv2.padding == b.conv2.dilation for b in (*caffe.layer3, *caffe.layer4))
    assert caffe.state_dict().keys() == tv.state_dict().keys()  # same parameters, another function
    # the ceil-mode pool: an even stem output (64 -> 32) gives 17 rows, not 16
    assert caffe.forward_features(torch.randn(1, 3, 64, 64), upto="layer1")["layer1"].shape[-1] == 17


def test_caffe_backbone_converts_imagenet_rgb_to_caffe_bgr():
    backbone = build_segmenter(cfg(arch="deeplabv2", backbone="resnet50")).backbone
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    converted = backbone.to_caffe_input(torch.from_numpy(normalize(rgb[None])))
    expected = (rgb[:, :, ::-1].astype(np.float32) - CAFFE_MEAN_BGR).transpose(2, 0, 1)[None]
    torch.testing.assert_close(converted, torch.from_numpy(np.ascontiguousarray(expected)), atol=2e-4, rtol=0)


def test_resnet_style_caffe_needs_a_resnet():
    from road_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model\.resnet_style.*vgg16"):
        load_config(overrides=["model.backbone=vgg16", "model.resnet_style=caffe"])


# --- frozen BatchNorm -----------------------------------------------------------------


def bn_layers(model):
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_freeze_bn_is_on_for_deeplab_resnets_and_keeps_the_statistics():
    model = build_segmenter(cfg(arch="deeplabv2", backbone="resnet50")).train()
    layers = bn_layers(model)
    assert layers and not any(m.training for m in layers)
    assert not any(p.requires_grad for m in layers for p in m.parameters())
    before = [m.running_mean.clone() for m in layers]
    logits, _ = model(torch.randn(2, 3, 33, 33))
    logits.mean().backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, layers))
    in_opt = {id(p) for g in build_optimizer(model, None, OptimConfig()).param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for m in layers for p in m.parameters())
    assert all(
        p.requires_grad for n, p in model.backbone.named_parameters() if "bn" not in n and "downsample.1" not in n
    )


@pytest.mark.parametrize(
    ("arch", "backbone", "freeze", "frozen"),
    [("pspnet", "resnet50", None, False), ("deeplabv2", "resnet50", False, False), ("deeplabv2", "small", True, True)],
)
def test_freeze_bn_follows_the_config(arch, backbone, freeze, frozen):
    model = build_segmenter(cfg(arch=arch, backbone=backbone, freeze_bn=freeze)).train()
    assert all(m.training != frozen for m in bn_layers(model))
    assert all(p.requires_grad != frozen for m in bn_layers(model) for p in m.parameters())


def test_bench_step_reports_the_parameter_count():
    from road_ray.bench.step import bench

    lines = []
    result = bench(lines.append, network="deeplabv2-small", ray=False, repeats=1, warmup=0, crop=16, batch=1)
    expected = count(build_segmenter(cfg(arch="deeplabv2", backbone="small")).parameters())
    assert result["settings"]["parameters"] == expected
    assert any(f"{expected:,} parameters" in line for line in lines)
