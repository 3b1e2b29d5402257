"""Spatial-aware adaptation, paper Sec. 3.2, Eq. 2-3: the splitting layer and h_1..h_M.

Urban scenes have a spatial layout (sky on top, road at the bottom, small objects near the
centre), so ROAD aligns the two domains *per region* of the original image instead of
globally: the image is split into an ``H×W`` grid, every region ``m`` has its own domain
classifier ``h_m``, and ``L_spt = Σ_m L_H(X_m^s, X_m^t)`` (Eq. 2) with ``L_H`` the
cross-entropy of ``h_m`` over the region's source (label 0) and target (label 1) positions,
averaged within the region (Eq. 3).

Training crops are random, so the *spatial-aware splitting layer* (:func:`region_index`)
maps every feature position back to original-image coordinates through the crop's box
(``road_ray.data.boxes``) and picks its region there.

Cost: every position is scored by its own region's classifier only (positions are grouped
by region, each group goes through one small MLP), so the classifiers cost what one
classifier on all positions would, not ``M`` times that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from road_ray.data.boxes import FLIP, HEIGHT, IMAGE_HEIGHT, IMAGE_WIDTH, LEFT, SCALE, TOP, WIDTH, check_boxes

INVALID_REGION = -1  # a feature position over padding (outside the original image)


def region_index(boxes: Tensor, feat_h: int, feat_w: int, grid: tuple[int, int]) -> Tensor:
    """The spatial-aware splitting layer: the region of every feature position, ``[B, feat_h, feat_w]``.

    Feature position ``(i, j)`` of a crop covers the crop pixel centre
    ``y = (i + 0.5) · height / feat_h``, ``x = (j + 0.5) · width / feat_w`` (``x → width − x``
    if the crop was flipped), i.e. the original-image point
    ``((top + y) / scale, (left + x) / scale)``. Its region is
    ``m = row · W + col`` with ``row = ⌊orig_y / image_height · H⌋``,
    ``col = ⌊orig_x / image_width · W⌋`` for ``grid = (H, W)``; a point outside the image
    (the crop's bottom/right padding) gets ``-1`` and takes no part in the loss.

    ``boxes``: ``[B, 8]`` rows in ``road_ray.data.boxes.BOX_FIELDS`` order (validated with
    ``check_boxes``, ValueError on a bad box). The result is an int64 tensor on ``boxes``'
    device; keep the boxes on the CPU (as the data pipeline delivers them) so that the
    validation costs no device sync.
    """
    check_boxes(boxes)
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(int(g) == g and g >= 1 for g in grid)):
        raise ValueError(f"grid: expected (H, W) with integers H, W >= 1, got {grid!r} (use config.parse_grid)")
    if feat_h < 1 or feat_w < 1:
        raise ValueError(f"region_index: expected a feature map of at least 1x1, got {feat_h}x{feat_w}")
    grid_h, grid_w = int(grid[0]), int(grid[1])
    # float64 makes the floor() exact at every realistic size; MPS has no float64.
    dtype = torch.float32 if boxes.device.type == "mps" else torch.float64
    b = boxes.to(dtype)
    col = lambda k: b[:, k, None]  # noqa: E731  [B, 1]
    ii = (torch.arange(feat_h, device=b.device, dtype=dtype) + 0.5)[None, :]  # [1, h]
    jj = (torch.arange(feat_w, device=b.device, dtype=dtype) + 0.5)[None, :]  # [1, w]
    y = ii * col(HEIGHT) / feat_h  # [B, h]: crop-pixel coordinates of the position centres
    x = jj * col(WIDTH) / feat_w  # [B, w]
    x = torch.where(col(FLIP) > 0.5, col(WIDTH) - x, x)
    orig_y = (col(TOP) + y) / col(SCALE)
    orig_x = (col(LEFT) + x) / col(SCALE)
    row = torch.floor(orig_y / col(IMAGE_HEIGHT) * grid_h).long()  # [B, h]
    cln = torch.floor(orig_x / col(IMAGE_WIDTH) * grid_w).long()  # [B, w]
    inside = ((orig_y >= 0) & (orig_y < col(IMAGE_HEIGHT)))[:, :, None] & ((orig_x >= 0) & (orig_x < col(IMAGE_WIDTH)))[
        :, None, :
    ]
    # clamp: guards the last row/column against rounding at the image border
    m = row.clamp(0, grid_h - 1)[:, :, None] * grid_w + cln.clamp(0, grid_w - 1)[:, None, :]
    return torch.where(inside, m, torch.full_like(m, INVALID_REGION))


class _Permute(torch.autograd.Function):
    """``x[perm]`` along dim 0 whose backward is a gather by the inverse permutation.

    ``index_select``'s own backward is a scatter-add (serial on CPU, atomics on GPU); a
    permutation is a bijection, so its gradient is just ``grad[inverse]``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def region_counts(region: Tensor, num_regions: int) -> list[int]:
    """``[#invalid, #region 0, ..., #region M-1]`` as Python ints (a device sync if ``region`` is not on the CPU)."""
    return torch.bincount(region.reshape(-1) + 1, minlength=num_regions + 1).tolist()


class RegionDomainClassifiers(nn.Module):
    """The per-region domain classifiers ``h_1..h_M`` (Eq. 2-3); domain 0 = source, 1 = target.

    ``h_m`` is a two-layer MLP over the channels (1x1 convolutions): ``C → hidden → ReLU → 1``
    logit. ``classifiers[m]`` is ``h_m``.
    """

    def __init__(self, in_channels: int, num_regions: int, hidden: int = 256) -> None:
        super().__init__()
        if in_channels < 1 or num_regions < 1 or hidden < 1:
            raise ValueError(
                f"RegionDomainClassifiers: expected in_channels, num_regions, hidden >= 1, "
                f"got {in_channels}, {num_regions}, {hidden}"
            )
        self.in_channels = in_channels
        self.num_regions = num_regions
        self.hidden = hidden
        # nn.Linear over the channel axis of one position = a 1x1 convolution.
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
            for _ in range(num_regions)
        )

    def forward(self, features: Tensor, region: Tensor, counts: Sequence[int] | None = None) -> Tensor:
        """Domain logits ``[B, h, w]``: position ``(b, i, j)`` scored by ``h_{region[b, i, j]}`` only.

        ``features``: ``[B, C, h, w]``; ``region``: ``[B, h, w]`` from :func:`region_index`
        (``-1`` positions get logit 0 and must be excluded from the loss). ``counts``
        (:func:`region_counts`, computed on the host) avoids a device sync when ``region``
        lives on an accelerator.

        Every ``h_m`` runs every step, on an empty group if its region has no position, so
        its parameters always get a (zero) gradient -- DDP needs every parameter used.
        """
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"RegionDomainClassifiers: expected features [B, {self.in_channels}, h, w], got {list(features.shape)}"
            )
        b, c, h, w = features.shape
        if tuple(region.shape) != (b, h, w):
            raise ValueError(
                f"RegionDomainClassifiers: expected region [B, h, w] = {[b, h, w]}, got {list(region.shape)}"
            )
        if counts is None:
            counts = region_counts(region, self.num_regions)
        counts = [int(n) for n in counts]
        if len(counts) != self.num_regions + 1 or sum(counts) != b * h * w:
            raise ValueError(
                f"RegionDomainClassifiers: counts must be [#invalid, #region 0..{self.num_regions - 1}] summing to "
                f"{b * h * w}, got {counts} (region ids beyond num_regions={self.num_regions}?)"
            )
        flat = features.permute(0, 2, 3, 1).reshape(b * h * w, c)
        # Group positions by region: a stable sort puts the invalid (-1) ones first, then region 0, 1, ...
        order = torch.argsort(region.reshape(-1), stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        order = order.to(features.device, non_blocking=True)
        inverse = inverse.to(features.device, non_blocking=True)
        groups = _Permute.apply(flat, order, inverse).split(counts)
        scored = [groups[0].new_zeros(counts[0])]  # padding positions: logit 0, excluded from the loss
        for h_m, x_m in zip(self.classifiers, groups[1:]):
            scored.append(h_m(x_m).squeeze(-1))
        # Undo the sort: logits[order[k]] = sorted_logits[k].
        return _Permute.apply(torch.cat(scored), inverse, order).view(b, h, w)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, num_regions={self.num_regions}, hidden={self.hidden}"


def spatial_aware_loss(
    logits: Tensor, region: Tensor, domain: Tensor, num_regions: int | None = None
) -> tuple[Tensor, Tensor]:
    """``L_spt = Σ_m L_H(X_m^s, X_m^t)`` (Eq. 2) and the domain accuracy, both float32 scalars.

    ``L_H`` (Eq. 3) is the binary cross-entropy of ``h_m``'s logits over all positions of
    region ``m`` (source: label 0, target: label 1), averaged within the region; a region
    without positions adds 0. ``logits``, ``region``: ``[B, h, w]``; ``domain``: per image
    ``[B]`` or per position ``[B, h, w]`` (0/1). ``region == -1`` positions are left out.
    Accuracy = fraction of the valid positions whose domain is predicted right (``nan`` if
    none). ``num_regions`` (the grid's ``H·W``) keeps everything sync-free; without it it is
    read from ``region.max()``.
    """
    if logits.shape != region.shape:
        raise ValueError(
            f"spatial_aware_loss: logits {list(logits.shape)} and region {list(region.shape)} differ in shape"
        )
    if domain.dim() == 1:
        if domain.shape[0] != logits.shape[0]:
            raise ValueError(
                f"spatial_aware_loss: expected domain [B] with B = {logits.shape[0]}, got {list(domain.shape)}"
            )
        domain = domain.view(-1, *([1] * (logits.dim() - 1)))
    domain = domain.to(device=logits.device).expand_as(logits)
    if num_regions is None:
        num_regions = int(region.max()) + 1 if region.numel() else 0
    region = region.to(logits.device)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.float().reshape(-1)
        d = domain.float().reshape(-1)
        r = region.reshape(-1)
        valid = r >= 0
        bce = F.binary_cross_entropy_with_logits(z, d, reduction="none") * valid
        # One bin per region plus a last one collecting the invalid positions (dropped).
        bins = torch.where(valid, r, torch.full_like(r, num_regions))
        loss_sum = z.new_zeros(num_regions + 1).index_add(0, bins, bce)[:num_regions]
        # index_add, not bincount: CUDA's bincount syncs with the host to size its output.
        count = z.new_zeros(num_regions + 1).index_add(0, bins, torch.ones_like(z))[:num_regions]
        loss = (loss_sum / count.clamp_min(1)).sum()  # empty regions: 0 / 1 = 0
        correct = ((z > 0).float() == d) & valid
        accuracy = correct.sum().float() / valid.sum().float()
    return loss, accuracy
