"""Label-free validators at every evaluation: the accumulator, MixVal, and ROAD's domain probabilities.

:class:`LabelFreeValidators` is fed image by image during an evaluation -- target-*train*
images (never target-val: their labels are the oracle's) through :meth:`~LabelFreeValidators.update_target`
and source-val images through :meth:`~LabelFreeValidators.update_source` -- and returns every
validator of :mod:`road_ray.engine.validators` as ``{name: float | None}``
(names and directions: :data:`~road_ray.engine.validators.VALIDATORS`).

**Pixel sampling.** A sample is a pixel. From every image the accumulator keeps
``pixels_per_image`` pixels drawn uniformly without replacement at the logits' resolution by
a CPU ``torch.Generator`` seeded with ``(seed, stream, image index)`` (stream 0 = target,
1 = source), so the same image at the same index gets the same pixels in every evaluation,
checkpoint and trial: validators of two trials are paired comparisons. A pixel's feature is
the feature-map cell that contains it (``i = ⌊y·h/H⌋``, ``j = ⌊x·w/W⌋``), projected to
``feature_dim`` channels by a fixed seeded Gaussian matrix when wider (Johnson-Lindenstrauss:
cosines and linear separability are kept approximately). On source-val images the pixels are
drawn among the labelled ones (from ``4 × pixels_per_image`` candidates; an image with fewer
labelled pixels contributes fewer). Only the first ``max_images`` images of a stream (by index:
the count so far, or the split position the caller gives) are kept, so memory is at most ``max_images · pixels_per_image · (K + feature_dim + 2)`` floats
per stream, whatever the split's size. No per-image host sync (the samples stay on the device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from road_ray.config import ValidatorConfig
from road_ray.data.boxes import whole_image_box
from road_ray.engine import validators as V
from road_ray.labels import IGNORE_INDEX


@dataclass(frozen=True)
class ValidatorSettings:
    """The accumulator's sizes: the ``validators.*`` config keys (:class:`road_ray.config.ValidatorConfig`,
    where the defaults live), plus DEV's prior ratio, which comes from the run's batch sizes."""

    pixels_per_image: int = ValidatorConfig.pixels_per_image
    max_images: int = ValidatorConfig.max_images
    feature_dim: int = ValidatorConfig.feature_dim
    snd_max_samples: int = ValidatorConfig.snd_max_samples
    snd_temperature: float = ValidatorConfig.snd_temperature
    snd_input: str = ValidatorConfig.snd_input
    dev_prior_ratio: float = 1.0  # n_s/n_t of the model's domain classifiers: batch_source / batch_target
    dev_ridge: float = ValidatorConfig.dev_ridge
    mixval_images: int = ValidatorConfig.mixval_images
    mixval_ratio: float = ValidatorConfig.mixval_ratio
    seed: int = ValidatorConfig.seed

    @classmethod
    def from_config(cls, cfg: ValidatorConfig, dev_prior_ratio: float = 1.0) -> ValidatorSettings:
        fields = {k: getattr(cfg, k) for k in cls.__dataclass_fields__ if k != "dev_prior_ratio"}
        return cls(**fields, dev_prior_ratio=dev_prior_ratio)


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_033 + index)


def sample_pixels(height: int, width: int, n: int, seed: int, stream: int, index: int) -> Tensor:
    """``min(n, height·width)`` distinct flat pixel indices (CPU int64), a function of its arguments only."""
    perm = torch.randperm(height * width, generator=_generator(seed, stream, index))
    return perm[:n]


class LabelFreeValidators:
    """Accumulates sampled pixels of an evaluation; :meth:`compute` returns every validator."""

    def __init__(self, settings: ValidatorSettings | None = None) -> None:
        self.settings = settings or ValidatorSettings()
        if self.settings.snd_input not in ("probs", "features"):
            raise ValueError(f"snd_input: expected 'probs' or 'features', got {self.settings.snd_input!r}")
        self._projections: dict[tuple[int, str], Tensor] = {}
        self._pixels: dict[tuple, Tensor] = {}  # sampled indices already on the device (same every evaluation)
        self.reset()

    def reset(self) -> None:
        self.target: dict[str, list[Tensor]] = {"probs": [], "features": []}
        self.source: dict[str, list[Tensor]] = {"loss": [], "valid": [], "features": [], "domain_prob": []}
        self.mix_images: list[Tensor] = []
        self.mix_labels: list[Tensor] = []
        # each kept image's index, so that merged ranks give the single-process order back
        self.index: dict[str, list[int]] = {"target": [], "source": [], "mix": []}
        self.images_seen = {"target": 0, "source": 0}
        self.images_kept = {"target": 0, "source": 0}

    # -- feeding -------------------------------------------------------------------------
    def update_target(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None, index: int | None = None
    ) -> None:
        """One batch of target-train images: ``logits`` ``[B, K, H, W]``, ``features`` ``[B, C, h, w]``
        (the student's ``features["out"]``), ``images`` ``[B, 3, H, W]`` (normalised; kept for MixVal).

        ``index``: the first image's position in the split (default: the count so far); give it
        when ranks share a split: the images kept are those of index ``< max_images``, with the
        same pixels on any rank, and :meth:`merge` restores the single-process result.
        """
        s = self.settings
        for b in range(logits.shape[0]):
            i = self.images_seen["target"] if index is None else index + b
            self.images_seen["target"] += 1
            if i >= s.max_images or self.images_kept["target"] >= s.max_images:
                continue
            self.images_kept["target"] += 1
            self.index["target"].append(i)
            flat = self._sample(logits.shape[-2:], s.pixels_per_image, 0, i, logits.device)
            self.target["probs"].append(torch.softmax(_at(logits[b], flat).float(), dim=1))
            if features is not None:
                self.target["features"].append(self._features(features[b], flat, logits.shape[-2:]))
            if images is not None and i < s.mixval_images and len(self.mix_images) < s.mixval_images:
                self.index["mix"].append(i)
                self.mix_images.append(images[b].detach())
                self.mix_labels.append(logits[b].max(0).indices)  # max().indices: ~3x faster than argmax on CPU

    def update_source(
        self,
        logits: Tensor,
        label: Tensor,
        features: Tensor | None = None,
        domain_prob: Tensor | None = None,
        index: int | None = None,
    ) -> None:
        """One batch of source-val images: ``logits`` ``[B, K, H, W]``, ``label`` ``[B, H, W]`` (255 = ignore),
        ``features`` ``[B, C, h, w]``, ``domain_prob`` ``[B, h', w']``: the model's domain classifiers'
        ``P(target)`` per feature position (:func:`region_domain_probs`), for DEV. Without it DEV
        falls back to its own classifier on ``features`` (needs target features too).
        """
        s = self.settings
        h, w = logits.shape[-2:]
        for b in range(logits.shape[0]):
            i = self.images_seen["source"] if index is None else index + b
            self.images_seen["source"] += 1
            if i >= s.max_images or self.images_kept["source"] >= s.max_images:
                continue
            self.images_kept["source"] += 1
            self.index["source"].append(i)
            candidates = self._sample((h, w), 4 * s.pixels_per_image, 1, i, logits.device)
            lab = label[b].reshape(-1).to(logits.device)[candidates].long()
            invalid = lab == IGNORE_INDEX
            # labelled candidates first (stable: the random order is kept), no host sync
            keep = torch.argsort(invalid.to(torch.uint8), stable=True)[: s.pixels_per_image]
            flat, lab, valid = candidates[keep], lab[keep], ~invalid[keep]
            logp = torch.log_softmax(_at(logits[b], flat).float(), dim=1)
            loss = -logp.gather(1, lab.clamp(0, logp.shape[1] - 1)[:, None])[:, 0]
            self.source["loss"].append(loss * valid)
            self.source["valid"].append(valid)
            if features is not None:
                self.source["features"].append(self._features(features[b], flat, (h, w)))
            if domain_prob is not None:
                cell = _cells(flat, (h, w), domain_prob.shape[-2:])
                self.source["domain_prob"].append(domain_prob[b].reshape(-1).float()[cell])

    def _sample(self, size: tuple[int, int], n: int, stream: int, index: int, device: torch.device) -> Tensor:
        key = (*size, n, stream, index, str(device))
        flat = self._pixels.get(key)
        if flat is None:
            flat = sample_pixels(*size, n, self.settings.seed, stream, index)
            # pinned + non_blocking: the copy does not wait for the device's queue (no host sync)
            flat = flat.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else flat.to(device)
            if len(self._pixels) >= 4 * self.settings.max_images:
                self._pixels.clear()  # bounded: an evaluation uses at most 2 · max_images keys
            self._pixels[key] = flat
        return flat

    def _features(self, fmap: Tensor, flat: Tensor, size: tuple[int, int]) -> Tensor:
        c = fmap.shape[0]
        f = fmap.reshape(c, -1)[:, _cells(flat, size, fmap.shape[-2:])].T.float()  # [n, C]
        if c <= self.settings.feature_dim:
            return f
        key = (c, str(f.device))
        if key not in self._projections:
            g = _generator(self.settings.seed, 2, c)
            proj = torch.randn(c, self.settings.feature_dim, generator=g) / self.settings.feature_dim**0.5
            self._projections[key] = proj.to(f.device)
        return f @ self._projections[key]

    def merge(self, other: LabelFreeValidators) -> None:
        """Add ``other``'s samples (another rank's, moved to one process), up to this one's caps.

        Kept images are put back in index order, so ranks that were given each image's
        ``index`` merge to exactly what one process over the whole split computes.
        """
        for stream, mine, theirs in (("target", self.target, other.target), ("source", self.source, other.source)):
            take = max(0, min(self.settings.max_images - self.images_kept[stream], other.images_kept[stream]))
            for key in mine:
                mine[key].extend(theirs[key][:take])
            self.index[stream].extend(other.index[stream][:take])
            self.images_kept[stream] += take
            self.images_seen[stream] += other.images_seen[stream]
            order = sorted(range(len(self.index[stream])), key=self.index[stream].__getitem__)
            self.index[stream] = [self.index[stream][k] for k in order]
            for key, chunks in mine.items():
                if len(chunks) == len(order):  # optional parts (features, domain_prob) only when complete
                    mine[key] = [chunks[k] for k in order]
        take = max(0, self.settings.mixval_images - len(self.mix_images))
        self.mix_images.extend(other.mix_images[:take])
        self.mix_labels.extend(other.mix_labels[:take])
        self.index["mix"].extend(other.index["mix"][:take])
        order = sorted(range(len(self.index["mix"])), key=self.index["mix"].__getitem__)
        self.index["mix"] = [self.index["mix"][k] for k in order]
        self.mix_images = [self.mix_images[k] for k in order]
        self.mix_labels = [self.mix_labels[k] for k in order]

    @property
    def stored_pixels(self) -> dict[str, int]:
        """Samples held per stream (≤ ``max_images · pixels_per_image``)."""
        return {
            "target": sum(t.shape[0] for t in self.target["probs"]),
            "source": sum(t.shape[0] for t in self.source["loss"]),
        }

    # -- results -------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, model: Callable[[Tensor], Any] | None = None) -> dict[str, float | None]:
        """Every validator of :data:`~road_ray.engine.validators.VALIDATORS` but ``source_val_miou``
        (the evaluation's own). ``model`` (images → logits, e.g. ``lambda x: predict(net, x, settings)``)
        runs MixVal's mixed forward passes; without it the MixVal entries are ``None``."""
        s = self.settings
        out: dict[str, float | None] = dict.fromkeys(k for k in V.VALIDATORS if k.startswith("val/"))
        if self.target["probs"]:
            probs = torch.cat(self.target["probs"])
            out["val/entropy"] = V.mean_entropy(probs)
            out["val/im"] = V.information_maximization(probs)
            out["val/bnm"] = V.batch_nuclear_norm(probs)
            snd_in = probs if s.snd_input == "probs" else _cat(self.target["features"])
            if snd_in is not None:
                stride = max(1, -(-snd_in.shape[0] // s.snd_max_samples))  # ceil: at most snd_max_samples rows
                out["val/snd"] = V.soft_neighborhood_density(snd_in[::stride][: s.snd_max_samples], s.snd_temperature)
        out["val/dev"] = self._dev()
        if model is not None and len(self.mix_images) >= 2:
            mv = mixval(model, torch.stack(self.mix_images), torch.stack(self.mix_labels), s.mixval_ratio)
            out.update({"val/mixval": mv["mixval"], "val/mixval_inter": mv["inter"], "val/mixval_intra": mv["intra"]})
        return out

    def _dev(self) -> float | None:
        if not self.source["loss"]:
            return None
        valid = torch.cat(self.source["valid"])
        loss = torch.cat(self.source["loss"])[valid]
        if len(self.source["domain_prob"]) == len(self.source["loss"]):  # the model's own classifiers
            return V.dev_risk(loss, torch.cat(self.source["domain_prob"])[valid], self.settings.dev_prior_ratio)
        source_f, target_f = _cat(self.source["features"]), _cat(self.target["features"])
        if source_f is None or target_f is None or len(self.source["features"]) != len(self.source["loss"]):
            return None
        fitted = V.cross_fitted_domain_probs(source_f[valid], target_f, self.settings.dev_ridge)
        return None if fitted is None else V.dev_risk(loss, fitted[0], fitted[1])


def _at(logits: Tensor, flat: Tensor) -> Tensor:
    """``[n, K]``: the class scores of one image's ``[K, H, W]`` logits at flat pixel indices."""
    return logits.reshape(logits.shape[0], -1)[:, flat].T


def _cells(flat: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Flat indices into an ``h×w`` map of the cells holding flat pixel indices of an ``H×W`` image."""
    (h_img, w_img), (h, w) = size, grid
    y, x = flat // w_img, flat % w_img
    return (y * h // h_img).clamp_max(h - 1) * w + (x * w // w_img).clamp_max(w - 1)


def _cat(chunks: list[Tensor]) -> Tensor | None:
    return torch.cat(chunks) if chunks else None


def _logits_of(model: Callable[[Tensor], Any], x: Tensor) -> Tensor:
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


@torch.no_grad()
def mixval(
    model: Callable[[Tensor], Any], images: Tensor, pseudo_labels: Tensor | None = None, ratio: float = 0.55
) -> dict[str, float | None]:
    """MixVal (Hu et al., "Mixed Samples as Probes for Unsupervised Model Selection in Domain
    Adaptation", NeurIPS 2023), per pixel. **Higher is better.**

    Image ``i`` of ``images`` ``[N, 3, H, W]`` is mixed with image ``N−1−i`` (the paper's code
    pairs a batch with its reverse): ``x̃ = ratio · x_i + (1 − ratio) · x_{N−1−i}`` with
    ``ratio = 0.55`` (the paper's fixed mixup weight), whose mixed pseudo-label's argmax is
    ``i``'s pseudo-label ``ŷ_i`` (the model's argmax on ``x_i``, from ``pseudo_labels``
    ``[N, H, W]`` or one forward pass each). The score is the agreement
    ``argmax f(x̃) = ŷ_i`` over the pixels where ``ŷ_i ≠ ŷ_{N−1−i}`` ("inter-cluster" mixes,
    probing the decision boundary: ``inter``) and where ``ŷ_i = ŷ_{N−1−i}`` ("intra-cluster",
    probing the neighbourhood density: ``intra``); ``mixval`` is their mean (the paper combines
    the two by averaging their ranks over the candidate models, which needs all trials: the
    sweep can do that from ``inter`` and ``intra``). Mixing normalised images equals normalising
    the mixed images (the normalisation is affine). Cost: one forward pass per image (``N``
    mixes), plus ``N`` without ``pseudo_labels``; the middle image of an odd ``N`` is skipped.
    """
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"mixval: expected at least two images [N, 3, H, W], got {list(images.shape)}")
    n = images.shape[0]
    if pseudo_labels is None:
        pseudo_labels = torch.stack([_logits_of(model, images[i : i + 1])[0].max(0).indices for i in range(n)])
    agree = torch.zeros(2, dtype=torch.float64, device=images.device)  # [inter, intra] agreeing pixels
    count = torch.zeros(2, dtype=torch.float64, device=images.device)
    for i in range(n):
        j = n - 1 - i
        if i == j:
            continue
        mixed = ratio * images[i : i + 1] + (1 - ratio) * images[j : j + 1]
        pred = _logits_of(model, mixed)[0].max(0).indices
        ya, yb = pseudo_labels[i].to(pred.device), pseudo_labels[j].to(pred.device)
        hit, inter = (pred == ya).double(), (ya != yb).double()
        agree += torch.stack([(hit * inter).sum(), (hit * (1 - inter)).sum()]).to(agree.device)
        count += torch.stack([inter.sum(), (1 - inter).sum()]).to(count.device)
    a, c = agree.tolist(), count.tolist()
    inter_score = a[0] / c[0] if c[0] else None
    intra_score = a[1] / c[1] if c[1] else None
    parts = [v for v in (inter_score, intra_score) if v is not None]
    return {
        "inter": inter_score,
        "intra": intra_score,
        "mixval": sum(parts) / len(parts) if parts else None,
        "pixels": int(c[0] + c[1]),
    }


@torch.no_grad()
def region_domain_probs(classifiers: nn.Module, features: Tensor, grid: tuple[int, int]) -> Tensor:
    """ROAD's per-region domain classifiers' ``P(target)`` ``[B, h, w]`` on whole (uncropped) images.

    ``classifiers``: :class:`road_ray.road.spatial.RegionDomainClassifiers` (``ROADObjective.domain_classifiers``),
    ``features``: the student's ``features["out"]`` ``[B, C, h, w]`` of whole images,
    ``grid``: ``(H, W)`` of ``road.grid``. Every position is scored by the classifier of its
    region (the splitting layer with the whole-image box), as in training (Eq. 2-3).
    """
    from road_ray.road.spatial import region_index

    b, _, h, w = features.shape
    boxes = torch.from_numpy(whole_image_box(h, w)).expand(b, -1)
    region = region_index(boxes, h, w, grid).to(features.device)
    return torch.sigmoid(classifiers(features.float(), region).float())
