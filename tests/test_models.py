"""Networks: shapes of logits and taps, the frozen teacher, weight loading, freezing."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from road_ray.config import ModelConfig
from road_ray.models import build_backbone, build_segmenter, build_teacher, load_backbone_weights
from road_ray.models.heads import DeepLabV2Head, PyramidPoolingHead

H, W = 33, 25  # odd, unequal, not multiples of 8: a transposed or floor-vs-ceil size shows up

# Independent of the code under test: (channels, stride) of every tap, "out" included.
RESNET = {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 8), "layer4": (2048, 8), "out": (2048, 8)}
EXPECTED_TAPS = {
    "small": {"layer1": (32, 4), "layer2": (64, 8), "layer3": (128, 8), "layer4": (256, 8), "out": (256, 8)},
    "vgg16": {
        "conv1": (64, 1),
        "conv2": (128, 2),
        "conv3": (256, 4),
        "conv4": (512, 8),
        "conv5": (512, 8),
        "out": (512, 8),
    },
    "resnet50": RESNET,
    "resnet101": RESNET,
}


def cfg(**kw) -> ModelConfig:
    kw.setdefault("pretrained", "none")
    return ModelConfig(**kw)


def small_weights(tmp_path, seed: int = 0) -> str:
    """A small backbone's state dict with non-default BN statistics, saved to a file."""
    torch.manual_seed(seed)
    backbone = build_backbone("small")
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "small.pt"
    torch.save(backbone.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("backbone", ["small", "vgg16", "resnet50", "resnet101"])
@pytest.mark.parametrize("arch", ["deeplabv2", "pspnet"])
def test_logits_and_taps_have_the_declared_shapes(arch, backbone):
    torch.manual_seed(0)
    model = build_segmenter(cfg(arch=arch, backbone=backbone, num_classes=7)).train()
    expected = EXPECTED_TAPS[backbone]
    assert model.output_stride == 8
    assert model.stage_names == tuple(k for k in expected if k != "out")
    assert model.feature_channels == {k: c for k, (c, _) in expected.items()}

    logits, features = model(torch.randn(2, 3, H, W), taps=model.stage_names)

    assert logits.shape == (2, 7, H, W)
    assert torch.isfinite(logits).all()
    assert set(features) == set(expected)
    for name, (channels, stride) in expected.items():
        # every downsampling is k3/s2/p1 (or ResNet's k7/s2/p3): size = ceil(input / stride)
        assert features[name].shape == (2, channels, math.ceil(H / stride), math.ceil(W / stride)), name


def test_forward_returns_only_requested_taps_plus_out_and_gradients_reach_both_parts():
    model = build_segmenter(cfg())
    logits, features = model(torch.randn(2, 3, H, W), taps=["layer2"])
    assert set(features) == {"layer2", "out"}
    logits.mean().backward()
    assert all(p.grad is not None for p in model.backbone_parameters())
    assert all(p.grad is not None for p in model.head_parameters())
    ids = {id(p) for p in model.backbone_parameters()} | {id(p) for p in model.head_parameters()}
    assert len(ids) == len(model.backbone_parameters()) + len(model.head_parameters())
    assert ids == {id(p) for p in model.parameters()}


def test_channels_last_gives_the_same_result():
    model = build_segmenter(cfg(arch="pspnet")).eval()
    x = torch.randn(2, 3, H, W)
    ref, _ = model(x)
    model = model.to(memory_format=torch.channels_last)
    out, _ = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("backbone", "bad", "valid"), [("small", "conv3", "layer4"), ("vgg16", "layer1", "conv5")])
def test_unknown_tap_is_a_value_error_listing_valid_taps(backbone, bad, valid):
    model = build_segmenter(cfg(backbone=backbone))
    with pytest.raises(ValueError, match=rf"{bad}.*{valid}"):
        model(torch.randn(1, 3, 33, 33), taps=[bad])
    with pytest.raises(ValueError, match=valid):
        build_teacher(cfg(backbone=backbone, allow_untrained_teacher=True), layer=bad)


@pytest.mark.parametrize("shape", [(3, 33, 33), (2, 1, 33, 33), (2, 4, 33, 33)])
def test_bad_input_is_a_value_error(shape):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        build_segmenter(cfg())(torch.randn(*shape))


def test_deeplab_head_sums_four_dilated_branches():
    head = DeepLabV2Head(8, 5)
    assert [b.dilation for b in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.kernel_size == (3, 3) and b.out_channels == 5 for b in head.branches)
    x = torch.randn(2, 8, 9, 7)
    torch.testing.assert_close(head(x), sum(b(x) for b in head.branches))


def test_psp_head_pools_into_bins_1_2_3_6():
    head = PyramidPoolingHead(16, 5)
    assert [s[0].output_size for s in head.stages] == [1, 2, 3, 6]
    assert head.bottleneck[0].out_channels == 512 and head.bottleneck[-1].p == 0.1
    assert head(torch.randn(2, 16, 9, 7)).shape == (2, 5, 9, 7)


# --- the teacher (Eq. 1) ------------------------------------------------------------


@pytest.mark.parametrize("layer", ["layer2", "layer4"])
def test_teacher_is_frozen_truncated_and_matches_the_student(tmp_path, layer):
    config = cfg(pretrained=small_weights(tmp_path), teacher_layer=layer)
    student = build_segmenter(config).eval()
    teacher = build_teacher(config)

    assert teacher.layer == layer
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())

    later = {"layer2": ("layer3", "layer4"), "layer4": ()}[layer]
    names = [n for n, _ in teacher.named_parameters()]
    assert not any(n.startswith(f"backbone.{s}.") for n in names for s in later)
    for stage in later:
        assert not hasattr(teacher.backbone, stage)

    x = torch.randn(2, 3, H, W, requires_grad=True)
    z = teacher(x)
    assert not z.requires_grad
    _, features = student(x, taps=[layer])
    torch.testing.assert_close(z, features[layer], atol=1e-5, rtol=1e-5)


def test_vgg_teacher_keeps_only_the_blocks_up_to_its_tap():
    with pytest.warns(UserWarning, match="UNTRAINED"):
        teacher = build_teacher(cfg(backbone="vgg16", allow_untrained_teacher=True), layer="conv3")
    full = build_backbone("vgg16")
    params = sum(p.numel() for p in teacher.parameters())
    # conv1..conv3 of VGG-16: 2 + 2 + 3 convs
    expected = sum(p.numel() for i, m in enumerate(full.features) if i < 16 for p in m.parameters())
    assert params == expected
    assert teacher(torch.randn(1, 3, 33, 33)).shape == (1, 256, 9, 9)


def test_untrained_teacher_is_refused_unless_allowed():
    with pytest.raises(ValueError, match="model.allow_untrained_teacher"):
        build_teacher(cfg())
    with pytest.warns(UserWarning, match="UNTRAINED"):
        teacher = build_teacher(cfg(allow_untrained_teacher=True), layer="layer3")
    assert teacher.layer == "layer3"


# --- pretrained weights ---------------------------------------------------------------


def test_student_loads_the_weights_file(tmp_path):
    path = small_weights(tmp_path)
    state = torch.load(path, weights_only=True)
    loaded = build_segmenter(cfg(pretrained=path)).backbone.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_torchvision_full_state_dict_loads(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet50()  # plain torchvision model, fc included
    path = tmp_path / "resnet50_full.pt"
    torch.save(reference.state_dict(), path)
    model = build_segmenter(cfg(backbone="resnet50", pretrained=str(path)))
    for key in ("conv1.weight", "bn1.running_mean", "layer3.0.conv2.weight", "layer4.2.bn3.running_var"):
        torch.testing.assert_close(model.backbone.state_dict()[key], reference.state_dict()[key], rtol=0, atol=0)


def test_vgg_state_dict_with_classifier_and_ddp_prefix_loads(tmp_path):
    source = build_backbone("vgg16")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.classifier.6.weight"] = torch.zeros(1000, 4096)[:2, :2]  # torchvision's head, dropped
    path = tmp_path / "vgg.pt"
    torch.save(state, path)
    target = build_backbone("vgg16")
    load_backbone_weights(target, str(path))
    torch.testing.assert_close(target.features[28].weight, source.features[28].weight, rtol=0, atol=0)


def test_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="nope.pt"):
        build_segmenter(cfg(pretrained=missing))


def test_file_for_another_backbone_names_file_and_keys(tmp_path):
    path = small_weights(tmp_path)
    with pytest.raises(ValueError, match=r"small\.pt.*missing keys.*conv1\.weight.*unexpected keys.*stem\.0\.weight"):
        build_segmenter(cfg(backbone="resnet50", pretrained=path))


def test_wrong_shapes_and_unreadable_files_name_the_file(tmp_path):
    state = build_backbone("small").state_dict()
    state["layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "shapes.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"shapes\.pt.*layer4\.0\.conv1\.weight"):
        build_segmenter(cfg(pretrained=str(path)))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_segmenter(cfg(pretrained=str(garbage)))


def test_auto_weights(monkeypatch):
    with pytest.raises(ValueError, match="training engine"):
        build_segmenter(cfg(pretrained="auto"))

    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"could not fetch.*model\.pretrained=PATH"):
        build_segmenter(cfg(backbone="resnet50", pretrained="auto", resnet_style="torchvision"))
    # DeepLab-v2 ResNets are Caffe-style by default: torchvision has no weights for them
    with pytest.raises(ValueError, match=r"import-weights.*model\.resnet_style=torchvision"):
        build_segmenter(cfg(backbone="resnet50", pretrained="auto"))


# --- the "frozen" baseline ------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "k", "frozen_prefixes"),
    [
        ("small", 0, ("stem.",)),
        ("small", 2, ("stem.", "layer1.", "layer2.")),
        ("resnet50", 1, ("conv1.", "bn1.", "layer1.")),
        ("vgg16", 2, tuple(f"features.{i}." for i in (0, 2, 5, 7))),  # conv1_1..conv2_2
    ],
)
def test_freeze_stages_freezes_exactly_stem_and_first_k(backbone, k, frozen_prefixes):
    # freeze_bn off: DeepLab-v2 ResNets freeze every BatchNorm by default (test_freeze_bn_*)
    model = build_segmenter(cfg(backbone=backbone, freeze_bn=False))
    model.freeze_stages(k)
    model.train()
    for name, p in model.backbone.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    assert all(p.requires_grad for p in model.head_parameters())
    for name, m in model.backbone.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.training == (not f"{name}.".startswith(frozen_prefixes)), name
    with pytest.raises(ValueError, match="freeze_stages"):
        model.freeze_stages(len(model.stage_names) + 1)
