"""The ROAD objective: gradient reversal, Eq. 1, the splitting layer, Eq. 2-3, Eq. 5 and the modes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from road_ray.config import ROADConfig, parse_grid
from road_ray.data.boxes import make_box
from road_ray.road import (
    GradientReversal,
    RegionDomainClassifiers,
    ROADObjective,
    distillation_loss,
    grad_reverse,
    region_counts,
    region_index,
    spatial_aware_loss,
    train_step,
)

NUM_CLASSES = 5


def boxes(*rows) -> torch.Tensor:
    return torch.stack([torch.from_numpy(make_box(*r)) for r in rows])


# ---------------------------------------------------------------------------------------
# Gradient reversal (Eq. 4 via DANN)


def test_grad_reverse_is_identity_forward_and_scales_gradient_by_minus_coeff():
    x = torch.randn(2, 3, requires_grad=True)
    upstream = torch.randn(2, 3)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.5 * upstream)


def test_gradient_reversal_module():
    x = torch.randn(4, requires_grad=True)
    (GradientReversal(2.0)(x) * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, -2.0 * torch.arange(4.0))


# ---------------------------------------------------------------------------------------
# Target-guided distillation (Eq. 1)


def test_distillation_loss_matches_hand_computation():
    # batch 1, 2 channels, 1x2 positions: distances 5 (3-4-5 triangle) and 0 -> mean 2.5
    x = torch.tensor([[[[3.0, 1.0]], [[4.0, 2.0]]]])
    z = torch.tensor([[[[0.0, 1.0]], [[0.0, 2.0]]]])
    assert distillation_loss(x, z).item() == pytest.approx(2.5)
    # batch 2: positions from both images are averaged (N = 4): (5 + 0 + 1 + 2) / 4
    x2 = torch.cat([x, torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])])
    z2 = torch.cat([z, torch.zeros(1, 2, 1, 2)])
    assert distillation_loss(x2, z2).item() == pytest.approx(2.0)
    # not squared: doubling the difference doubles the loss
    assert distillation_loss(2 * x2 - z2, z2).item() == pytest.approx(4.0)


def test_distillation_gradient_is_finite_and_zero_where_student_equals_teacher():
    z = torch.randn(2, 4, 3, 3)
    x = z.clone().requires_grad_(True)
    loss = distillation_loss(x, z)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-8)
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) == 0
    # elsewhere the gradient is the unit direction / N
    x = (z + torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 4, 1, 1)).requires_grad_(True)
    distillation_loss(x, z).backward()
    assert torch.allclose(x.grad[:, 0], torch.full((2, 3, 3), 0.6 / 18), atol=1e-7)


def test_distillation_is_float32_under_autocast_and_checks_shapes():
    x = torch.randn(1, 4, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = distillation_loss(x.bfloat16(), x.bfloat16() + 1)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(2.0, rel=1e-2)
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3))


# ---------------------------------------------------------------------------------------
# Spatial-aware splitting layer


def reference_region(box, feat_h, feat_w, grid):
    """Position-by-position reading of road_ray.data.boxes' convention (slow, obvious)."""
    top, left, height, width, ih, iw, scale, flip = [float(v) for v in box]
    out = torch.empty(feat_h, feat_w, dtype=torch.long)
    for i in range(feat_h):
        for j in range(feat_w):
            y = (i + 0.5) * height / feat_h
            x = (j + 0.5) * width / feat_w
            if flip:
                x = width - x
            oy, ox = (top + y) / scale, (left + x) / scale
            if 0 <= oy < ih and 0 <= ox < iw:
                out[i, j] = math.floor(oy / ih * grid[0]) * grid[1] + math.floor(ox / iw * grid[1])
            else:
                out[i, j] = -1
    return out


def test_region_index_whole_image_on_each_grid():
    box = boxes((0, 0, 16, 16, 16, 16))
    assert torch.equal(region_index(box, 4, 4, (1, 1)), torch.zeros(1, 4, 4, dtype=torch.long))
    assert region_index(box, 4, 4, (2, 1))[0].tolist() == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]
    assert region_index(box, 4, 4, (2, 2))[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # 3x3 on a 6x6 map of a 12x12 image: each region is a 2x2 block
    r = region_index(boxes((0, 0, 12, 12, 12, 12)), 6, 6, (3, 3))[0]
    expected = torch.arange(9).view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(r, expected)


def test_region_index_crop_uses_original_image_coordinates():
    # bottom half of a 16x32 image, 2x1 grid: every position is in the bottom region
    assert region_index(boxes((8, 0, 8, 16, 16, 32)), 2, 4, (2, 1)).unique().tolist() == [1]
    # a crop in the middle of a 3x3 grid: centre region 4
    assert region_index(boxes((13, 13, 4, 4, 30, 30)), 2, 2, (3, 3)).unique().tolist() == [4]


def test_region_index_flip_mirrors_regions():
    # top half, full width of a 16x16 image, 2x2 grid: unflipped left->right 0 0 1 1, flipped 1 1 0 0
    plain = region_index(boxes((0, 0, 8, 16, 16, 16)), 2, 4, (2, 2))[0]
    flipped = region_index(boxes((0, 0, 8, 16, 16, 16, 1.0, True)), 2, 4, (2, 2))[0]
    assert plain.tolist() == [[0, 0, 1, 1]] * 2
    assert flipped.tolist() == [[1, 1, 0, 0]] * 2
    # a flipped crop of the left half shows the left half mirrored: still region 0 / 2
    left = region_index(boxes((0, 0, 16, 8, 16, 16, 1.0, True)), 4, 2, (2, 2))[0]
    assert left.tolist() == [[0, 0], [0, 0], [2, 2], [2, 2]]
    # 3x3, flipped crop covering columns 10..30 of a 30-wide image
    r = region_index(boxes((0, 10, 10, 20, 30, 30, 1.0, True)), 1, 4, (3, 3))[0]
    assert r.tolist() == [[2, 2, 1, 1]]


def test_region_index_scaled_crops():
    # scale 0.5: a 32x32 image resized to 16x16; crop (8, 0, 8, 8) covers original rows 16..32, cols 0..16
    r = region_index(boxes((8, 0, 8, 8, 32, 32, 0.5)), 2, 2, (3, 3))[0]
    # centres: y 2, 6 -> original 20, 28 -> rows 1, 2; x 2, 6 -> original 4, 12 -> cols 0, 1
    assert r.tolist() == [[3, 4], [6, 7]]
    # scale 2: an 8x8 image resized to 16x16; crop (0, 8, 8, 8) covers original rows 0..4, cols 4..8
    r = region_index(boxes((0, 8, 8, 8, 8, 8, 2.0)), 4, 4, (2, 2))[0]
    assert r.unique().tolist() == [1]
    r = region_index(boxes((8, 0, 8, 8, 8, 8, 2.0)), 4, 4, (2, 2))[0]
    assert r.unique().tolist() == [2]


def test_region_index_padding_is_minus_one():
    # 16x16 crop at (8, 8) of a 16x16 image: the bottom/right half is padding
    r = region_index(boxes((8, 8, 16, 16, 16, 16)), 4, 4, (2, 2))[0]
    assert r.tolist() == [[3, 3, -1, -1], [3, 3, -1, -1], [-1] * 4, [-1] * 4]
    # flipped: the padding (right of the resized image) ends up on the left
    r = region_index(boxes((8, 8, 16, 16, 16, 16, 1.0, True)), 4, 4, (2, 2))[0]
    assert r.tolist() == [[-1, -1, 3, 3], [-1, -1, 3, 3], [-1] * 4, [-1] * 4]


@pytest.mark.parametrize("grid", ["1x1", "2x1", "2x2", "3x3", "4x5"])
def test_region_index_matches_position_by_position_reference(grid):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(12):
        ih, iw = [int(v) for v in torch.randint(20, 120, (2,), generator=g)]
        scale = float(torch.empty(1).uniform_(0.4, 2.5, generator=g))
        top = float(torch.randint(0, max(1, int(ih * scale)), (1,), generator=g))
        left = float(torch.randint(0, max(1, int(iw * scale)), (1,), generator=g))
        rows.append((top, left, 33, 41, ih, iw, scale, bool(torch.rand(1, generator=g) < 0.5)))
    b = boxes(*rows)
    got = region_index(b, 5, 6, parse_grid(grid))
    assert got.shape == (12, 5, 6) and got.dtype == torch.long
    for k, row in enumerate(b):
        assert torch.equal(got[k], reference_region(row, 5, 6, parse_grid(grid))), rows[k]


@pytest.mark.parametrize("bad", ["0x3", "3by3", "3x", "x3", "-1x2", ""])
def test_bad_grid_strings_are_value_errors(bad):
    with pytest.raises(ValueError, match="grid"):
        parse_grid(bad)


def test_bad_boxes_and_grids_are_value_errors():
    with pytest.raises(ValueError, match="outside its image"):
        region_index(boxes((17, 0, 8, 8, 16, 16)), 2, 2, (2, 2))  # top below the image
    region_index(boxes((0, 7, 8, 8, 16, 16, 0.5)), 2, 2, (2, 2))  # fine: starts inside the resized 8x8 image
    with pytest.raises(ValueError, match="outside its image"):
        region_index(boxes((0, 9, 8, 8, 16, 16, 0.5)), 2, 2, (2, 2))  # left beyond the resized image
    with pytest.raises(ValueError, match="outside its image"):
        region_index(boxes((0, 0, 0, 8, 16, 16)), 2, 2, (2, 2))  # empty crop
    with pytest.raises(ValueError, match="shape"):
        region_index(torch.zeros(2, 7), 2, 2, (2, 2))
    with pytest.raises(ValueError, match="grid"):
        region_index(boxes((0, 0, 8, 8, 16, 16)), 2, 2, (0, 3))


# ---------------------------------------------------------------------------------------
# Per-region domain classifiers and L_spt (Eq. 2-3)


def _region_map():
    # 2 images, 3x4 positions; regions 0, 2, 5 of a 3x3 grid used, 8 positions of padding
    return torch.tensor(
        [
            [[0, 0, 2, 2], [0, 0, 2, 2], [-1, -1, -1, -1]],
            [[5, 5, 5, -1], [0, 5, 5, -1], [2, 2, 5, -1]],
        ]
    )


def test_each_position_is_scored_by_its_own_regions_classifier():
    torch.manual_seed(0)
    rdc = RegionDomainClassifiers(in_channels=6, num_regions=9, hidden=8)
    feats = torch.randn(2, 6, 3, 4)
    region = _region_map()
    logits = rdc(feats, region)
    assert logits.shape == (2, 3, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                m = int(region[b, i, j])
                expected = torch.zeros(()) if m < 0 else rdc.classifiers[m](feats[b, :, i, j])[0]
                assert torch.allclose(logits[b, i, j], expected, atol=1e-6), (b, i, j)
    # the host-side counts give the same result
    assert torch.equal(rdc(feats, region, counts=region_counts(region, 9)), logits)


def test_classifier_m_gets_gradient_iff_region_m_has_positions():
    torch.manual_seed(0)
    rdc = RegionDomainClassifiers(in_channels=6, num_regions=9, hidden=8)
    feats = torch.randn(2, 6, 3, 4, requires_grad=True)
    region = _region_map()
    rdc(feats, region).sum().backward()
    present = {0, 2, 5}
    for m, h_m in enumerate(rdc.classifiers):
        grad = h_m[0].weight.grad
        assert grad is not None  # every classifier is in the graph (DDP needs all parameters used)
        assert (grad.abs().sum() > 0) == (m in present), m
    # padding positions get no gradient into the features
    assert torch.count_nonzero(feats.grad.permute(0, 2, 3, 1)[region < 0]) == 0


def test_classifier_costs_one_mlp_per_position_not_m():
    rdc = RegionDomainClassifiers(in_channels=6, num_regions=9, hidden=8)
    calls = []
    for h_m in rdc.classifiers:
        h_m.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    region = _region_map()
    rdc(torch.randn(2, 6, 3, 4), region)
    assert sum(calls) == int((region >= 0).sum())  # each valid position through exactly one h_m


def test_spatial_aware_loss_matches_hand_computation():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]], [[-2.0, 1.0], [0.0, 4.0]]])
    region = torch.tensor([[[0, 0], [1, -1]], [[0, 1], [1, -1]]])
    domain = torch.tensor([0, 1])  # image 0 source, image 1 target
    loss, acc = spatial_aware_loss(logits, region, domain, num_regions=4)

    def bce(z, d):
        return -(d * math.log(1 / (1 + math.exp(-z))) + (1 - d) * math.log(1 - 1 / (1 + math.exp(-z))))

    region0 = (bce(2.0, 0) + bce(-1.0, 0) + bce(-2.0, 1)) / 3
    region1 = (bce(0.5, 0) + bce(1.0, 1) + bce(0.0, 1)) / 3
    assert loss.item() == pytest.approx(region0 + region1, rel=1e-6)  # Σ over regions, empty ones add 0
    # correct: (-1.0, src), (1.0, tgt) -> 2 of 6 valid positions (0.0 counts as source)
    assert acc.item() == pytest.approx(2 / 6)
    # num_regions may be left out (read from the map)
    assert spatial_aware_loss(logits, region, domain)[0].item() == pytest.approx(loss.item())
    # per-position domain labels are accepted too
    loss2, _ = spatial_aware_loss(logits, region, domain.view(2, 1, 1).expand(2, 2, 2), num_regions=4)
    assert loss2.item() == pytest.approx(loss.item())


def test_spatial_aware_loss_gradient_trains_classifier_and_reverses_into_features():
    torch.manual_seed(0)
    rdc = RegionDomainClassifiers(4, 4, 8)
    feats = torch.randn(2, 4, 2, 2, requires_grad=True)
    region = region_index(boxes((0, 0, 8, 8, 8, 8), (0, 0, 8, 8, 8, 8)), 2, 2, (2, 2))
    domain = torch.tensor([0.0, 1.0])
    loss_plain, _ = spatial_aware_loss(rdc(feats, region), region, domain)
    g_plain = torch.autograd.grad(loss_plain, feats)[0]
    loss_rev, _ = spatial_aware_loss(rdc(grad_reverse(feats, 0.5), region), region, domain)
    g_rev = torch.autograd.grad(loss_rev, feats)[0]
    assert torch.allclose(g_rev, -0.5 * g_plain, atol=1e-7)


# ---------------------------------------------------------------------------------------
# The objective (Eq. 5) on a tiny fake student with the Segmenter interface


class TinyBackbone(nn.Module):
    """Stride-8 conv net with named stages, like the real backbones (layer2..layer4)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer2 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(12, 16, 3, 2, 1), nn.ReLU())

    def forward(self, x, taps=()):
        feats = {}
        for name in ("layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            if name in taps:
                feats[name] = x
        feats["out"] = x
        return feats


class FakeStudent(nn.Module):
    feature_channels = {"layer2": 8, "layer3": 12, "layer4": 16, "out": 16}

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = nn.Conv2d(16, NUM_CLASSES, 1)
        self.calls: list[int] = []

    def forward(self, x, taps=("layer4",)):
        self.calls.append(x.shape[0])
        feats = self.backbone(x, taps)
        logits = F.interpolate(self.head(feats["out"]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, feats


class FakeTeacher(nn.Module):
    def __init__(self, backbone: TinyBackbone, layer: str) -> None:
        super().__init__()
        self.backbone, self.layer = backbone, layer
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x)
        return self.backbone(x, taps=(self.layer,))[self.layer]


def make_batch(bs=3, bt=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a class per 8x8 block, drawn in that class's colour: learnable at output stride 8
    blocks = torch.randint(0, NUM_CLASSES, (bs, size // 8, size // 8), generator=g)
    label = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    colours = torch.randn(NUM_CLASSES, 3, generator=g)
    source = colours[label].permute(0, 3, 1, 2) + 0.1 * torch.randn(bs, 3, size, size, generator=g)
    label[:, :2] = 255  # a few ignored rows
    return {
        "source_image": source,
        "source_label": label,
        "source_box": boxes(*[(0, 8 * k, size, size, 64, 128, 1.0, k % 2 == 1) for k in range(bs)]),
        "target_image": torch.randn(bt, 3, size, size, generator=g),
        "target_box": boxes(*[(32, 16 * k, size, size, 64, 128, 1.0, False) for k in range(bt)]),
    }


def make_objective(mode="road", seed=0, **overrides):
    torch.manual_seed(seed)
    student = FakeStudent()
    teacher = FakeTeacher(copy.deepcopy(student.backbone), "layer3")
    settings = {"lambda_dist": 0.1, "lambda_spt": 0.5, "grid": "2x2", "classifier_hidden": 16, **overrides}
    cfg = ROADConfig(mode=mode, **settings)
    return ROADObjective(student, teacher, cfg, teacher_layer="layer3", feature_channels=16)


EXPECTED_TERMS = {
    "nonadapt": set(),
    "frozen": set(),
    "oracle": set(),
    "dst": {"dist"},
    "source_dist": {"dist"},
    "spt": {"spt"},
    "road": {"dist", "spt"},
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_TERMS))
def test_every_mode_yields_exactly_its_terms(mode):
    obj = make_objective(mode).train()
    # perturb the student so that it differs from the teacher (else L_dist = 0 at init)
    with torch.no_grad():
        for p in obj.student.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch()
    out = obj(batch)
    nonzero = {k for k in ("dist", "spt") if out.losses[k].item() != 0.0}
    assert nonzero == EXPECTED_TERMS[mode]
    assert set(out.losses) == {"seg", "dist", "spt"} and out.losses["seg"].item() > 0
    assert all(not v.requires_grad for v in out.losses.values()) and out.loss.requires_grad
    expected = out.losses["seg"] + 0.1 * out.losses["dist"] + 0.5 * out.losses["spt"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (obj.domain_classifiers is not None) == ("spt" in EXPECTED_TERMS[mode])
    assert math.isnan(out.domain_acc.item()) != ("spt" in EXPECTED_TERMS[mode])
    # one student forward per step; the target crops go in only when a term needs them
    uses_target = mode in ("dst", "spt", "road")
    assert obj.student.calls == [5 if uses_target else 3]
    # the teacher runs only for L_dist, on the target crops (source crops for source_dist)
    teacher_inputs = obj.teacher.inputs if obj.teacher is not None else []
    if "dist" in EXPECTED_TERMS[mode]:
        key = "source_image" if mode == "source_dist" else "target_image"
        assert len(teacher_inputs) == 1 and torch.equal(teacher_inputs[0], batch[key])
    else:
        assert teacher_inputs == [] and obj.teacher is None


def test_zero_weight_terms_are_not_computed():
    torch.manual_seed(0)
    student = FakeStudent()
    teacher = FakeTeacher(copy.deepcopy(student.backbone), "layer3")
    cfg = ROADConfig(mode="road", lambda_dist=0.0, lambda_spt=0.0)
    obj = ROADObjective(student, teacher, cfg, "layer3", 16)
    out = obj(make_batch())
    assert obj.domain_classifiers is None and obj.teacher is None and teacher.inputs == []
    assert out.losses["dist"].item() == 0 and out.losses["spt"].item() == 0
    assert student.calls == [3]  # nothing needs the target crops


@pytest.mark.parametrize("mode", ["nonadapt", "oracle", "frozen", "source_dist"])
def test_batchnorm_control_forwards_target_crops_without_a_loss_on_them(mode):
    plain, control = make_objective(mode).train(), make_objective(mode, student_sees_target=True).train()
    batch = make_batch()
    out_plain, out_control = plain(batch), control(batch)
    assert plain.student.calls == [3] and control.student.calls == [5]  # the target crops go in
    # BatchNorm in train mode normalises with the batch's statistics, so the source logits (and
    # L_seg) change once the target crops share the batch: that is the effect being controlled for.
    assert out_control.losses["seg"].item() != out_plain.losses["seg"].item()
    assert set(k for k in ("dist", "spt") if out_control.losses[k].item() != 0) == EXPECTED_TERMS[mode]
    # ... but no loss on the target crops: a target image's gradient flows only through the
    # BatchNorm statistics, never through its own logits.
    expected = out_control.losses["seg"] + 0.1 * out_control.losses["dist"]
    assert out_control.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    head_only = make_objective(mode, student_sees_target=True).train()
    head_only.student.backbone.layer2[1].eval()  # BatchNorm on running statistics: domains independent
    target = batch["target_image"].clone().requires_grad_(True)
    head_only({**batch, "target_image": target}).loss.backward()
    assert target.grad is None or target.grad.abs().max().item() == 0.0


def _spatial_gradients(form: str, lambda_spt: float):
    obj = make_objective("spt", adversarial_form=form, lambda_spt=lambda_spt).train()
    out = obj(make_batch())
    out.loss.backward()
    classifier = torch.cat([p.grad.flatten() for p in obj.domain_classifiers.parameters() if p.grad is not None])
    backbone = obj.student.backbone.layer4[0].weight.grad.clone()
    seg_only = make_objective("nonadapt", student_sees_target=True).train()  # same batch statistics
    seg_only(make_batch()).loss.backward()
    return out, classifier, backbone - seg_only.student.backbone.layer4[0].weight.grad


def test_dann_form_trains_classifiers_on_the_unscaled_loss_and_reverses_lambda_into_the_backbone():
    lam = 0.25
    out_paper, cls_paper, bb_paper = _spatial_gradients("paper", lam)
    out_dann, cls_dann, bb_dann = _spatial_gradients("dann", lam)
    assert out_dann.losses["spt"].item() == pytest.approx(out_paper.losses["spt"].item(), rel=1e-6)
    # the classifiers: the paper's gradient is λ2 times DANN's (unscaled) one
    torch.testing.assert_close(cls_paper, lam * cls_dann, rtol=1e-4, atol=1e-7)
    # the backbone's L_spt gradient (total minus L_seg's) is the same -λ2·∇ in both forms
    torch.testing.assert_close(bb_dann, bb_paper, rtol=1e-4, atol=1e-7)
    assert bb_dann.abs().max() > 0
    # and it is reversed: -λ2 times the gradient that would lower the domain loss
    obj = make_objective("spt", adversarial_form="dann", lambda_spt=lam).train()
    obj.grl.coeff = -1.0  # no reversal, unit weight: the plain gradient of L_spt w.r.t. the features
    out = obj(make_batch())
    out.loss.backward()
    seg_only = make_objective("nonadapt", student_sees_target=True).train()  # same batch statistics
    seg_only(make_batch()).loss.backward()
    plain = obj.student.backbone.layer4[0].weight.grad - seg_only.student.backbone.layer4[0].weight.grad
    torch.testing.assert_close(bb_dann, -lam * plain, rtol=1e-4, atol=1e-7)


def test_mode_needing_a_teacher_without_one_is_a_value_error():
    for mode in ("dst", "road", "source_dist"):
        with pytest.raises(ValueError, match="teacher"):
            ROADObjective(FakeStudent(), None, ROADConfig(mode=mode), "layer3", 16)
    ROADObjective(FakeStudent(), None, ROADConfig(mode="spt"), "layer3", 16)  # no teacher needed


def test_batch_errors_name_the_key_and_expected_shape():
    obj = make_objective("road")
    batch = make_batch()
    bad = dict(batch, source_label=batch["source_label"][:, :31])
    expected = r"batch\['source_label'\]: expected \[Bs, h, w\] = \[3, 32, 32\], got \[3, 31, 32\]"
    with pytest.raises(ValueError, match=expected):
        obj(bad)
    with pytest.raises(ValueError, match="missing key.*target_box"):
        obj({k: v for k, v in batch.items() if k != "target_box"})
    with pytest.raises(ValueError, match=r"batch\['target_image'\]"):
        obj(dict(batch, target_image=batch["target_image"][..., :16]))
    with pytest.raises(ValueError, match=r"batch\['source_box'\]"):
        obj(dict(batch, source_box=batch["source_box"][:2]))
    bad_box = batch["source_box"].clone()
    bad_box[0, 0] = 1000.0  # top below the image
    with pytest.raises(ValueError, match="outside its image"):
        obj(dict(batch, source_box=bad_box))


def test_teacher_gets_no_gradient_and_stays_bit_identical():
    obj = make_objective("road").train()
    assert not obj.teacher.training  # train() keeps the frozen teacher in eval mode
    before = copy.deepcopy(obj.teacher.state_dict())
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for k in range(3):
        train_step(obj, opt, make_batch(seed=k))
    assert all(p.grad is None for p in obj.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in obj.teacher.state_dict().items())  # incl. BN buffers
    # while the student did move
    assert not torch.equal(obj.student.backbone.layer3[0].weight, obj.teacher.backbone.layer3[0].weight)


def test_a_few_road_steps_lower_the_segmentation_loss():
    obj = make_objective("road").train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.2, momentum=0.9)
    batch = make_batch()
    seg = [train_step(obj, opt, batch).losses["seg"].item() for _ in range(15)]
    assert all(math.isfinite(s) for s in seg)
    assert seg[-1] < 0.8 * seg[0], seg


def test_train_step_under_bf16_autocast():
    obj = make_objective("road").train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.01)
    out = train_step(obj, opt, make_batch(), autocast_dtype=torch.bfloat16, device_type="cpu")
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(v.dtype == torch.float32 for v in out.losses.values())
    assert 0.0 <= out.domain_acc.item() <= 1.0


def test_segmentation_loss_of_an_all_ignore_batch_is_zero_not_nan():
    obj = make_objective("nonadapt")
    batch = make_batch()
    batch["source_label"] = torch.full_like(batch["source_label"], 255)
    assert obj(batch).losses["seg"].item() == 0.0


def test_real_small_segmenter_runs_a_road_step():
    models = pytest.importorskip("road_ray.models")
    if not hasattr(models, "build_segmenter") or not hasattr(models, "build_teacher"):
        pytest.skip("road_ray.models.build_segmenter/build_teacher are not there yet")
    from road_ray.config import Config

    cfg = Config()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.allow_untrained_teacher = "small", "none", True
    cfg.road.mode, cfg.road.grid = "road", "3x3"
    torch.manual_seed(0)
    student = models.build_segmenter(cfg.model)
    with pytest.warns(UserWarning, match="UNTRAINED"):
        teacher = models.build_teacher(cfg.model)
    obj = ROADObjective(student, teacher, cfg.road, cfg.model.teacher_layer, student.feature_channels["out"]).train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    batch = make_batch(bs=2, bt=2, size=64)
    before = copy.deepcopy(teacher.state_dict())
    outs = [train_step(obj, opt, batch) for _ in range(2)]
    assert all(torch.isfinite(o.loss) for o in outs)
    assert outs[0].losses["spt"].item() > 0 and 0.0 <= outs[0].domain_acc.item() <= 1.0
    assert outs[-1].losses["dist"].item() > 0  # the student has moved away from the teacher
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
