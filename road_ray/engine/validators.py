"""Label-free validators for choosing a model without target labels (issue #16).

One function per validator, on tensors of *samples*. In segmentation a sample is a pixel
(the accumulator :class:`road_ray.engine.label_free.LabelFreeValidators` draws a fixed
number per image); here ``probs`` is ``[N, K]`` (softmax rows), ``features`` ``[N, D]``.
Every function returns a Python ``float``, or ``None`` when the value is undefined (too few
samples, a degenerate input): never NaN, so the results can be written to JSON as they are.

The benchmark these follow is Musgrave, Belongie & Lim, "Three New Validators and a
Large-Scale Benchmark Ranking for Unsupervised Domain Adaptation" (2022), which compares
entropy, IM, BNM, SND, DEV and source-val accuracy as checkpoint validators. Logarithms are
natural. :data:`VALIDATORS` is the single table of metric names and directions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Metric name -> "max" (higher is better) or "min" (lower is better). The sweeps read the
# directions from here only. "source_val_miou" is the existing evaluation's source-val mIoU.
VALIDATORS: dict[str, str] = {
    "val/entropy": "min",
    "val/im": "max",
    "val/bnm": "max",
    "val/snd": "max",
    "val/dev": "min",
    "val/mixval": "max",
    "val/mixval_inter": "max",
    "val/mixval_intra": "max",
    "source_val_miou": "max",
}

_EPS = 1e-12


def finite_or_none(value: float | Tensor | None) -> float | None:
    """``value`` as a Python float, or ``None`` if it is missing, NaN or infinite."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _check_probs(probs: Tensor, name: str) -> Tensor:
    if probs.dim() != 2:
        raise ValueError(f"{name}: expected probabilities [N, K], got {list(probs.shape)}")
    return probs.double()


def row_entropy(probs: Tensor) -> Tensor:
    """``H(p_i) = -Σ_k p_ik log p_ik`` for every row of ``probs`` ``[N, K]`` (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(-1)


def mean_entropy(probs: Tensor) -> float | None:
    """Mean prediction entropy ``(1/N) Σ_i H(p_i)``. **Lower is better.**

    Morerio, Cavazza & Murino, "Minimal-Entropy Correlation Alignment for Unsupervised Deep
    Domain Adaptation" (ICLR 2018): the target entropy as a validation criterion;
    Musgrave et al. (2022) "Entropy". The existing evaluation's ``entropy`` is this on all
    target-val pixels. ``0`` for one-hot rows, ``log K`` for uniform ones. It rewards
    confident predictions whatever they are, including a collapse onto one class.
    """
    p = _check_probs(probs, "mean_entropy")
    return finite_or_none(row_entropy(p).mean()) if p.shape[0] else None


def information_maximization(probs: Tensor) -> float | None:
    """Information maximisation ``IM = H(p̄) − (1/N) Σ_i H(p_i)``, ``p̄ = (1/N) Σ_i p_i``. **Higher is better.**

    The mutual information between input and predicted class, estimated on the samples:
    Shi & Sha, "Information-Theoretical Learning of Discriminative Clusters for Unsupervised
    Domain Adaptation" (ICML 2012); used as a validator by Musgrave et al. (2022),
    "IM". The first term (diversity) penalises the collapse that entropy alone rewards.
    Uniform rows: ``0``; one class everywhere: ``0``; one-hot rows balanced over the ``K``
    classes: ``log K`` (the maximum).
    """
    p = _check_probs(probs, "information_maximization")
    if not p.shape[0]:
        return None
    mean_p = p.mean(0, keepdim=True)
    return finite_or_none(row_entropy(mean_p)[0] - row_entropy(p).mean())


def batch_nuclear_norm(probs: Tensor) -> float | None:
    """Batch nuclear norm ``‖A‖_* / sqrt(N · min(N, K))`` of the prediction matrix ``A`` ``[N, K]``. **Higher is better.**

    Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm Maximization
    under Label Insufficient Situations" (CVPR 2020); their loss is ``−‖A‖_*/N``.
    Scale: they bound ``‖A‖_* ≤ sqrt(min(N, K)) ‖A‖_F`` and ``‖A‖_F ≤ sqrt(N)`` for rows that
    sum to one, so dividing by ``sqrt(N · min(N, K))`` puts the value in ``(0, 1]``
    at any ``N``: ``1`` for one-hot rows balanced over the classes (``N`` a multiple of ``K``),
    ``1/sqrt(min(N, K))`` for one class everywhere, ``1/sqrt(K · min(N, K))`` for uniform rows.

    ``‖A‖_*`` is the sum of the square roots of the eigenvalues of the ``K×K`` Gram matrix
    ``AᵀA`` (float64), which costs ``O(N K²)`` instead of an ``N×K`` SVD.
    """
    a = _check_probs(probs, "batch_nuclear_norm")
    n, k = a.shape
    if n == 0 or k == 0:
        return None
    eig = torch.linalg.eigvalsh(a.T @ a).clamp_min(0)
    return finite_or_none(eig.sqrt().sum() / math.sqrt(n * min(n, k)))


def soft_neighborhood_density(x: Tensor, temperature: float = 0.05, chunk: int = 1024) -> float | None:
    """Soft neighbourhood density (SND). **Higher is better.**

    Saito et al., "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via
    Soft Neighborhood Density" (ICCV 2021): L2-normalise the samples ``x`` ``[N, D]``
    (softmax outputs in the paper; features work too), similarities ``M_ij = x̂_i · x̂_j``
    without the diagonal (``i ≠ j``), ``P_i = softmax_j(M_ij / τ)``, and
    ``SND = (1/N) Σ_i H(P_i)``: high when every sample has many close neighbours (dense
    clusters). ``τ = 0.05`` as in the paper. Two tight, orthogonal clusters of ``N/2``
    points score about ``log(N/2 − 1)``; isotropic noise scores less. It rewards a collapse
    onto one cluster as well (``log(N − 1)``, the maximum).

    Memory: rows are processed ``chunk`` at a time, so the peak is ``chunk × N`` floats.
    """
    if x.dim() != 2:
        raise ValueError(f"soft_neighborhood_density: expected samples [N, D], got {list(x.shape)}")
    if temperature <= 0:
        raise ValueError(f"soft_neighborhood_density: temperature must be > 0, got {temperature}")
    n = x.shape[0]
    if n < 3:  # a row needs at least two neighbours for its entropy to say anything
        return None
    z = torch.nn.functional.normalize(x.float(), dim=1)
    total = z.new_zeros((), dtype=torch.float64)
    for start in range(0, n, chunk):
        rows = z[start : start + chunk]
        logits = rows @ z.T / temperature  # [b, N]
        idx = torch.arange(rows.shape[0], device=z.device)
        logits[idx, idx + start] = -math.inf  # drop i == j
        logp = torch.log_softmax(logits, dim=1)
        p = logp.exp()
        total += -(p * logp.nan_to_num(neginf=0.0)).sum().double()
    return finite_or_none(total / n)


def importance_weights(target_prob: Tensor, prior_ratio: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Density ratio ``w(x) = p_t(x)/p_s(x) = (n_s/n_t) · d(x)/(1 − d(x))`` from a domain classifier.

    ``d(x) = P(target | x)`` (float tensor, any shape) from a classifier trained on ``n_s``
    source and ``n_t`` target samples; Bayes' rule gives the ratio of the densities, and
    ``prior_ratio = n_s / n_t`` removes the classes' prior (You et al., ICML 2019,
    discriminative density ratio estimation). For ROAD's region classifiers (Eq. 3) every
    step had ``data.batch_source`` source and ``data.batch_target`` target crops of one size,
    so ``prior_ratio = batch_source / batch_target``. ``d`` is clamped to
    ``[eps, 1 − eps]`` so that a saturated classifier gives a large, finite weight.
    """
    d = target_prob.double().clamp(eps, 1 - eps)
    return prior_ratio * d / (1 - d)


def controlled_weighted_risk(losses: Tensor, weights: Tensor, control_variate: bool = True) -> float | None:
    """DEV's risk from per-sample source-val losses ``ℓ_j`` and density ratios ``w_j``. **Lower is better.**

    You, Wang, Long & Jordan, "Towards Accurate Model Selection in Deep Unsupervised Domain
    Adaptation" (ICML 2019), Algorithm 1: ``L_j = w_j ℓ_j``,
    ``η = −Cov(L, w) / Var(w)`` (unbiased sample moments),
    ``R_DEV = mean(L) + η · mean(w) − η``. ``E[w] = 1`` under the source distribution, so the
    control variate ``η (mean(w) − 1)`` keeps the estimate unbiased while cancelling the part
    of ``mean(L)``'s error that comes from the weights' own sampling error (for a constant
    loss ``c``, ``R_DEV = c`` exactly, whereas ``mean(L) = c · mean(w)``). With
    ``control_variate=False`` it is the plain importance-weighted risk ``mean(L)``. When all
    weights are equal (``Var(w) = 0``), ``η = 0``.
    """
    ell = losses.double().reshape(-1)
    w = weights.double().reshape(-1).to(ell.device)
    if ell.shape != w.shape:
        raise ValueError(f"dev: losses {list(losses.shape)} and weights {list(weights.shape)} differ in size")
    n = ell.numel()
    if n == 0:
        return None
    weighted = w * ell
    risk = weighted.mean()
    if control_variate and n >= 2:
        var_w = w.var(unbiased=True)
        if float(var_w) > 1e-12 * max(1.0, float(w.mean()) ** 2):
            cov = ((weighted - risk) * (w - w.mean())).sum() / (n - 1)
            eta = -cov / var_w
            risk = risk + eta * w.mean() - eta
    return finite_or_none(risk)


def dev_risk(
    losses: Tensor,
    target_prob: Tensor,
    prior_ratio: float = 1.0,
    control_variate: bool = True,
) -> float | None:
    """Deep embedded validation (DEV, You et al., ICML 2019): the weighted source-val risk. **Lower is better.**

    ``losses``: per-sample source-val losses ``ℓ_j`` (pixel cross-entropy); ``target_prob``:
    a domain classifier's ``P(target | x_j)`` on the *same* source-val samples (ROAD's region
    classifiers at the pixel's feature position, or :func:`cross_fitted_domain_probs`);
    ``prior_ratio`` = ``n_s / n_t`` of that classifier's training data. Weights by
    :func:`importance_weights`, risk by :func:`controlled_weighted_risk`. The estimate is as
    good as the density ratio: an adversarially confused classifier (``d ≈ 1/2``, what ROAD's
    gradient reversal aims at) makes ``w ≈ prior_ratio`` and DEV the plain source-val loss.
    """
    return controlled_weighted_risk(losses, importance_weights(target_prob, prior_ratio), control_variate)


def fit_logistic(
    x: Tensor, y: Tensor, ridge: float = 1e-2, iterations: int = 15
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ridge logistic regression ``P(y = 1 | x) = σ(((x − μ)/σ_x)·β + b)`` by Newton's method (IRLS), float64.

    Deterministic (no random start, no minibatches): ``β = 0`` then ``iterations`` Newton steps
    on the mean log-loss plus ``ridge/2 · ‖β‖²`` (the bias is not penalised), stopping early when
    a step changes the parameters by less than 1e-6. Features are standardised on ``x``.
    Returns ``(beta, bias, mu, scale)``; :func:`predict_logistic` applies them.
    ``x``: ``[N, D]``, ``y``: ``[N]`` in {0, 1}. Cost ``O(iterations · N D²)``: keep ``D`` small
    (the accumulator projects features to ``feature_dim``).
    """
    x = x.double()
    y = y.double().reshape(-1).to(x.device)
    mu = x.mean(0)
    scale = x.std(0, unbiased=False).clamp_min(1e-6)
    z = torch.cat([(x - mu) / scale, x.new_ones(x.shape[0], 1)], dim=1)  # last column: bias
    n, d1 = z.shape
    theta = x.new_zeros(d1)
    penalty = torch.full((d1,), ridge, dtype=x.dtype, device=x.device)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = torch.sigmoid(z @ theta)
        grad = z.T @ (p - y) / n + penalty * theta
        hess = (
            (z.T * (p * (1 - p))) @ z / n + torch.diag(penalty) + 1e-9 * torch.eye(d1, dtype=x.dtype, device=x.device)
        )
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-6:
            break
    return theta[:-1], theta[-1], mu, scale


def predict_logistic(params: tuple[Tensor, Tensor, Tensor, Tensor], x: Tensor) -> Tensor:
    """``P(y = 1 | x)`` ``[N]`` (float64) of a :func:`fit_logistic` model."""
    beta, bias, mu, scale = params
    return torch.sigmoid(((x.double() - mu) / scale) @ beta + bias)


def cross_fitted_domain_probs(
    source: Tensor, target: Tensor, ridge: float = 1e-2, iterations: int = 15
) -> tuple[Tensor, float] | None:
    """A validator-owned domain classifier for DEV when the model has none (e.g. ``nonadapt``).

    ``source``: features ``[N_s, D]`` of the source-val samples DEV weights; ``target``:
    features ``[N_t, D]`` of target-train samples. A logistic regression
    (:func:`fit_logistic`; label 1 = target) is fitted with 2-fold *cross-fitting*: the samples
    are split by the parity of their index, the model fitted on one half scores the source
    samples of the other half, so no sample is weighted by a classifier that saw it (DEV
    fits its classifier on other data than the validation set, You et al. 2019).
    Returns ``(P(target | x_j) for every source sample [N_s], prior_ratio n_s/n_t)`` (the
    training halves' ratio), or ``None`` with fewer than 2 samples per domain and fold.
    A linear classifier recovers the exact ratio when the log density ratio is linear in
    the features (e.g. two Gaussians with one covariance).
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(
            f"domain features: expected [N_s, D] and [N_t, D], got {list(source.shape)}, {list(target.shape)}"
        )
    if source.shape[0] < 4 or target.shape[0] < 4:
        return None
    probs = source.new_empty(source.shape[0], dtype=torch.float64)
    ratios = []
    for fold in (0, 1):
        s_fit, t_fit = source[1 - fold :: 2], target[1 - fold :: 2]  # fit on the other parity
        x = torch.cat([s_fit, t_fit])
        y = torch.cat([s_fit.new_zeros(s_fit.shape[0]), t_fit.new_ones(t_fit.shape[0])])
        params = fit_logistic(x, y, ridge, iterations)
        probs[fold::2] = predict_logistic(params, source[fold::2])
        ratios.append(s_fit.shape[0] / t_fit.shape[0])
    # The two halves' ratios differ by at most one sample; their mean is the prior of both.
    return probs, sum(ratios) / 2
