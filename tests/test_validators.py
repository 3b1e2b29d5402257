"""Label-free validators (issue #16) on hand-made predictions and features whose values are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from road_ray.engine import validators as V
from road_ray.engine.label_free import (
    LabelFreeValidators,
    ValidatorSettings,
    mixval,
    region_domain_probs,
    sample_pixels,
)

K = 4


def uniform(n: int, k: int = K) -> torch.Tensor:
    return torch.full((n, k), 1.0 / k)


def collapsed(n: int, k: int = K) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), k).float()


def balanced(n: int, k: int = K) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.arange(n) % k, k).float()


# -- entropy, IM, BNM ------------------------------------------------------------------------


def test_entropy_and_im_on_uniform_collapsed_balanced():
    n = 40
    assert V.mean_entropy(uniform(n)) == pytest.approx(math.log(K))
    assert V.mean_entropy(collapsed(n)) == pytest.approx(0.0, abs=1e-9)
    assert V.mean_entropy(balanced(n)) == pytest.approx(0.0, abs=1e-9)
    # IM = H(mean p) - mean H(p): uniform 0, collapse 0 (entropy's favourite), balanced one-hot log K
    assert V.information_maximization(uniform(n)) == pytest.approx(0.0, abs=1e-9)
    assert V.information_maximization(collapsed(n)) == pytest.approx(0.0, abs=1e-9)
    assert V.information_maximization(balanced(n)) == pytest.approx(math.log(K))
    mixed = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert V.information_maximization(mixed) == pytest.approx(h([0.55, 0.45]) - (h([0.9, 0.1]) + h([0.2, 0.8])) / 2)


def test_bnm_scale_and_known_values():
    n = 4 * K
    assert V.batch_nuclear_norm(balanced(n)) == pytest.approx(1.0)  # the maximum
    assert V.batch_nuclear_norm(collapsed(n)) == pytest.approx(1 / math.sqrt(K))
    assert V.batch_nuclear_norm(uniform(n)) == pytest.approx(1 / K)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, 7, generator=g), 1)
    nuc = torch.linalg.matrix_norm(p.double(), ord="nuc")
    assert V.batch_nuclear_norm(p) == pytest.approx(float(nuc) / math.sqrt(50 * 7), rel=1e-6)
    assert V.batch_nuclear_norm(balanced(n)) > V.batch_nuclear_norm(p) > V.batch_nuclear_norm(uniform(50, 7))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        V.batch_nuclear_norm(torch.zeros(3))


def test_empty_inputs_give_none():
    empty = torch.zeros(0, K)
    assert V.mean_entropy(empty) is None and V.information_maximization(empty) is None
    assert V.batch_nuclear_norm(empty) is None and V.soft_neighborhood_density(empty) is None
    assert V.finite_or_none(float("nan")) is None and V.finite_or_none(torch.tensor(2.0)) == 2.0


# -- SND ------------------------------------------------------------------------------------


def test_snd_two_tight_clusters_closed_form_and_noise_below():
    n, tau = 20, 0.05
    x = torch.zeros(n, 8)
    x[: n // 2, 0] = 1.0  # cluster A on axis 0, cluster B on axis 1: within 1, across 0
    x[n // 2 :, 1] = 1.0
    same, other = n // 2 - 1, n // 2
    z = same * math.exp(1 / tau) + other
    p_same, p_other = math.exp(1 / tau) / z, 1 / z
    expected = -(same * p_same * math.log(p_same) + other * p_other * math.log(p_other))
    assert V.soft_neighborhood_density(x, tau) == pytest.approx(expected, rel=1e-6)
    assert V.soft_neighborhood_density(x, tau, chunk=3) == pytest.approx(expected, rel=1e-6)
    noise = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    assert V.soft_neighborhood_density(noise, tau) < expected
    # one collapsed cluster: every neighbour equally close, log(N - 1) (a known failure mode)
    assert V.soft_neighborhood_density(torch.ones(n, 3), tau) == pytest.approx(math.log(n - 1))


# -- DEV ------------------------------------------------------------------------------------


def _dev_numpy(loss: np.ndarray, w: np.ndarray) -> float:
    weighted = w * loss
    eta = -np.cov(np.stack([weighted, w]))[0, 1] / np.var(w, ddof=1)
    return float(weighted.mean() + eta * w.mean() - eta)


def test_dev_with_a_known_density_ratio_matches_the_closed_form():
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25, 1.5], dtype=torch.float64)
    loss = torch.tensor([1.0, 0.2, 0.7, 0.1, 2.0, 0.4], dtype=torch.float64)
    prior = 2.0  # classifier trained on twice as many source samples
    d = (w / prior) / (1 + w / prior)  # P(target|x) such that prior * d / (1 - d) = w
    assert torch.allclose(V.importance_weights(d, prior), w)
    assert V.dev_risk(loss, d, prior) == pytest.approx(_dev_numpy(loss.numpy(), w.numpy()))
    assert V.dev_risk(loss, d, prior, control_variate=False) == pytest.approx(float((w * loss).mean()))
    # a confused classifier (d = 1/2, prior 1): w = 1, DEV = the plain mean loss
    assert V.dev_risk(loss, torch.full((6,), 0.5), 1.0) == pytest.approx(float(loss.mean()))


def test_dev_control_variate_cancels_the_weights_sampling_error():
    w = torch.tensor([0.2, 0.4, 3.0, 0.6])  # mean 1.05, not 1
    c = 0.7
    loss = torch.full((4,), c)
    assert V.controlled_weighted_risk(loss, w, control_variate=False) == pytest.approx(c * 1.05)
    assert V.controlled_weighted_risk(loss, w) == pytest.approx(c)
    # and it lowers the variance over draws: target N(0.5, 1), source N(0, 1), loss x^2 (target risk 1.25)
    g = torch.Generator().manual_seed(0)
    plain, dev = [], []
    for _ in range(200):
        x = torch.randn(200, generator=g, dtype=torch.float64)
        wx = torch.exp(0.5 * x - 0.125)
        plain.append(V.controlled_weighted_risk(x**2, wx, control_variate=False))
        dev.append(V.controlled_weighted_risk(x**2, wx))
    assert abs(np.mean(dev) - 1.25) < 0.05 and np.var(dev) < np.var(plain)


def test_fallback_logistic_classifier_recovers_a_gaussian_density_ratio():
    g = torch.Generator().manual_seed(1)
    mu = 0.5
    xs = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    xt = torch.randn(2000, 1, generator=g, dtype=torch.float64) + mu
    probs, prior = V.cross_fitted_domain_probs(xs, xt)
    assert prior == pytest.approx(2.0, abs=0.01)
    w = V.importance_weights(probs, prior)
    true_w = torch.exp(mu * xs[:, 0] - mu**2 / 2)  # N(mu,1)/N(0,1): log-linear, so logistic is exact
    assert float((w.log() - true_w.log()).abs().median()) < 0.05
    assert V.dev_risk(xs[:, 0] ** 2, probs, prior) == pytest.approx(1 + mu**2, abs=0.1)  # E_t[x^2]
    # deterministic: same inputs, same fit
    assert torch.equal(probs, V.cross_fitted_domain_probs(xs, xt)[0])
    assert V.cross_fitted_domain_probs(xs[:3], xt) is None


# -- accumulator ----------------------------------------------------------------------------


def _images(n: int, k: int = 5, c: int = 6, h: int = 24, w: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g) * 3
    feats = torch.randn(n, c, h // 8, w // 8, generator=g)
    label = torch.randint(0, k, (n, h, w), generator=g)
    return logits, feats, label


def test_accumulator_known_values_on_uniform_logits():
    acc = LabelFreeValidators(ValidatorSettings(pixels_per_image=16))
    acc.update_target(torch.zeros(3, K, 8, 8))
    out = acc.compute()
    assert out["val/entropy"] == pytest.approx(math.log(K)) and out["val/im"] == pytest.approx(0.0, abs=1e-9)
    assert out["val/bnm"] == pytest.approx(1 / K)
    assert out["val/dev"] is None and out["val/mixval"] is None  # no source images, no model
    assert set(out) == {k for k in V.VALIDATORS if k.startswith("val/")}
    assert acc.stored_pixels == {"target": 48, "source": 0}


def test_accumulator_memory_is_bounded_and_sampling_deterministic():
    s = ValidatorSettings(pixels_per_image=32, max_images=5, mixval_images=2)
    logits, feats, label = _images(12)
    acc = LabelFreeValidators(s)
    for i in range(12):
        acc.update_target(logits[i : i + 1], feats[i : i + 1], images=logits[i : i + 1, :3])
        acc.update_source(logits[i : i + 1], label[i : i + 1], feats[i : i + 1])
    assert acc.stored_pixels == {"target": 5 * 32, "source": 5 * 32}
    assert len(acc.mix_images) == 2 and acc.images_seen == {"target": 12, "source": 12}
    again = LabelFreeValidators(s)
    again.update_target(logits[:5], feats[:5])  # one batch with explicit default indices = one by one
    again.update_source(logits[:5], label[:5], feats[:5], index=0)
    a, b = acc.compute(), again.compute()
    assert a == b and all(isinstance(v, float) for k, v in a.items() if "mixval" not in k)
    assert torch.equal(sample_pixels(24, 32, 10, 0, 0, 3), sample_pixels(24, 32, 10, 0, 0, 3))
    assert not torch.equal(sample_pixels(24, 32, 10, 0, 0, 3), sample_pixels(24, 32, 10, 0, 0, 4))
    json.dumps(a)


def test_source_samples_are_labelled_pixels_with_their_cross_entropy():
    k, h, w = 3, 8, 8
    logits = torch.zeros(1, k, h, w)
    logits[0, 0] = math.log(4.0)  # softmax (4, 1, 1)/6 everywhere
    label = torch.full((1, h, w), 255)
    label[0, :, :2] = 1  # 16 labelled pixels of class 1: CE = log 6
    acc = LabelFreeValidators(ValidatorSettings(pixels_per_image=10))
    acc.update_source(logits, label, domain_prob=torch.full((1, 2, 2), 0.5))
    valid = torch.cat(acc.source["valid"])
    candidates = sample_pixels(h, w, 40, 0, 1, 0)  # 4 x pixels_per_image candidates, labelled ones first
    labelled = int((label.reshape(-1)[candidates] != 255).sum())
    assert 0 < labelled < 10 and int(valid.sum()) == labelled  # fewer than 10 labelled: the rest flagged
    assert torch.allclose(torch.cat(acc.source["loss"])[valid], torch.full((labelled,), math.log(6)))
    assert acc.compute()["val/dev"] == pytest.approx(math.log(6))  # d = 1/2, w = 1: the mean loss


def test_dev_falls_back_to_its_own_classifier_without_domain_probs():
    logits, feats, label = _images(4)
    acc = LabelFreeValidators(ValidatorSettings(pixels_per_image=64, feature_dim=4))  # 6 channels -> projected to 4
    acc.update_target(logits, feats + 1.0)
    acc.update_source(logits, label, feats)
    assert acc.target["features"][0].shape == (64, 4)
    assert isinstance(acc.compute()["val/dev"], float)
    acc.update_source(logits[:1], label[:1], feats[:1], domain_prob=torch.full((1, 3, 4), 0.5))
    assert isinstance(acc.compute()["val/dev"], float)  # probabilities for some images only: still the fallback


def test_merge_keeps_the_caps():
    s = ValidatorSettings(pixels_per_image=8, max_images=3)
    logits, feats, label = _images(4)
    a, b = LabelFreeValidators(s), LabelFreeValidators(s)
    a.update_target(logits[:2], index=0)
    b.update_target(logits[2:], index=2)  # index 3 is past max_images: not kept
    a.merge(b)
    assert a.stored_pixels["target"] == 3 * 8 and a.images_seen["target"] == 4


def test_ranks_merged_equal_one_process():
    s = ValidatorSettings(pixels_per_image=16, max_images=4, mixval_images=2)
    logits, feats, label = _images(6)
    whole = LabelFreeValidators(s)
    ranks = [LabelFreeValidators(s), LabelFreeValidators(s)]
    for i in range(6):  # evaluate()'s split: image i on rank i % 2
        for acc in (whole, ranks[i % 2]):
            acc.update_target(logits[i : i + 1], feats[i : i + 1], images=logits[i : i + 1, :3], index=i)
            acc.update_source(logits[i : i + 1], label[i : i + 1], feats[i : i + 1], index=i)
    ranks[0].merge(ranks[1])
    model = lambda x: torch.cat([x, x[:, :2]], dim=1)  # noqa: E731  5 "classes" from the 3 channels
    assert ranks[0].compute(model) == whole.compute(model)
    assert ranks[0].index == {"target": [0, 1, 2, 3], "source": [0, 1, 2, 3], "mix": [0, 1]}


# -- MixVal ---------------------------------------------------------------------------------


def threshold_model(t: float):
    """Class 1 where the first channel exceeds ``t``, else class 0."""
    return lambda x: torch.stack([torch.full_like(x[:, 0], t), x[:, 0]], dim=1)


def test_mixval_on_a_colour_threshold_model():
    h, w = 4, 6
    a = torch.ones(1, 3, h, w)  # class 1 everywhere
    b = torch.zeros(1, 3, h, w)  # class 0 everywhere
    imgs = torch.cat([a, b])
    # boundary at 0.5: 0.55 a + 0.45 b = 0.55 -> class 1 (a's), 0.55 b + 0.45 a = 0.45 -> class 0 (b's)
    out = mixval(threshold_model(0.5), imgs)
    assert out == {"inter": 1.0, "intra": None, "mixval": 1.0, "pixels": 2 * h * w}
    # boundary at 0.6: the a-dominant mix (0.55) lands on b's side -> half of the inter pixels agree
    assert mixval(threshold_model(0.6), imgs)["inter"] == 0.5
    # intra: left half of both images class 1 (values 1.0 and 0.7): mix 0.865 / 0.835 > 0.6, agrees
    c = torch.zeros(1, 3, h, w)
    c[..., : w // 2] = 0.7
    d = torch.zeros(1, 3, h, w)
    d[..., : w // 2] = 1.0
    out = mixval(threshold_model(0.6), torch.cat([c, d]))
    assert out["intra"] == 1.0 and out["inter"] is None


def test_mixval_through_the_accumulator():
    h, w = 4, 6
    imgs = torch.cat([torch.ones(1, 3, h, w), torch.zeros(1, 3, h, w)])
    model = threshold_model(0.6)
    acc = LabelFreeValidators(ValidatorSettings(pixels_per_image=4))
    acc.update_target(model(imgs), images=imgs)
    out = acc.compute(model)
    assert out["val/mixval"] == 0.5 and out["val/mixval_inter"] == 0.5 and out["val/mixval_intra"] is None


# -- ROAD's region classifiers --------------------------------------------------------------


def test_region_domain_probs_scores_each_position_with_its_region():
    from road_ray.road.spatial import RegionDomainClassifiers

    torch.manual_seed(0)
    clf = RegionDomainClassifiers(in_channels=3, num_regions=2, hidden=4)
    feats = torch.randn(1, 3, 2, 4)
    p = region_domain_probs(clf, feats, (1, 2))  # left half region 0, right half region 1
    assert p.shape == (1, 2, 4) and bool(((p > 0) & (p < 1)).all())
    flat = feats[0].permute(1, 2, 0)
    with torch.no_grad():
        left = torch.sigmoid(clf.classifiers[0](flat[:, :2])).squeeze(-1)
        right = torch.sigmoid(clf.classifiers[1](flat[:, 2:])).squeeze(-1)
    assert torch.allclose(p[0], torch.cat([left, right], dim=1), atol=1e-6)


def test_validator_directions():
    assert set(V.VALIDATORS.values()) <= {"max", "min"}
    assert V.VALIDATORS["val/dev"] == "min" and V.VALIDATORS["val/entropy"] == "min"
    assert V.VALIDATORS["source_val_miou"] == "max"


def test_a_pixel_takes_the_feature_of_its_cell():
    from road_ray.engine.label_free import _cells

    flat = torch.tensor([0, 7 * 16 + 8, 15 * 16 + 15, 8 * 16 + 7])  # (0,0), (7,8), (15,15), (8,7) of 16x16
    assert _cells(flat, (16, 16), (2, 2)).tolist() == [0, 1, 3, 2]
    assert _cells(flat, (16, 16), (3, 3)).tolist() == [0, 4, 8, 4]  # ceil-sized grids clamp at the border


def test_the_cost_helper_runs():
    from road_ray.engine.validators_bench import measure

    out = measure(height=16, width=32, classes=3, channels=8, images=2, pairs=1, repeats=1)
    assert out["accumulator_ms_per_image"] > 0 and out["mixval_ms_per_mix"] > 0
