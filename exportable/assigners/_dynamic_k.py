"""Steps 4-6 of the DynamicSoftLabel assigner, the same steps as SimOTA's (which keeps its own copy for now):
dynamic k, each gt's k cheapest priors, and conflicts decided by the cheapest gt.

Shape shorthand: ``B`` images, ``M`` gts per image (padded), ``N`` priors, ``K`` the static top-k width
(the bound on every dynamic k: 10 for SimOTA, 13 for RTMDet), ``K' = min(K, N)``. Costs and IoUs are
gt-major ``(B, M, N)``. A cost of ``+inf`` marks a pair that can never be chosen (a prior that is not a
candidate, a padded gt row); an IoU of 0 stands for a prior that is not a candidate.

1. :func:`dynamic_k` (step 4): ``k_g = max(1, int(sum of gt g's top-K IoUs))``, the top IoUs added one at
   a time in rank order, as mmdetection's column sum does, so ``int()`` truncates the very same float.
2. :func:`mark_cheapest` (step 5): one top-K of the smallest costs per gt row (ties: the lower prior index,
   :mod:`exportable.ordering`'s rule), keeping the slots of rank ``< k_g`` whose cost is finite.
3. :func:`resolve_conflicts` (step 6): a prior marked by one gt goes to it; a prior marked by several goes to
   the cheapest gt over ALL rows (``cheapest_gt``, lower gt index on ties), which need not be one that
   marked it; no second round. The at most ``M * K`` marks are counted per prior with two scatter-adds
   (how many gts, and the sum of their indices: the marking gt when there is one), never a ``(B, M, N)``
   mark matrix.

``cheapest_gt`` is the caller's ``cost.min(dim=1).indices`` (first index on ties), so that a caller that
computes the cost in blocks of gt rows can fold the minimum block by block.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from exportable.assigners.result import NEGATIVE
from exportable.ordering import _topk, rank_mask

__all__ = ["dynamic_k", "mark_cheapest", "resolve_conflicts"]


def dynamic_k(iou: Float[Tensor, "B M N"], k_max: int) -> Int[Tensor, "B M"]:
    """4. ``max(1, int(sum of the top-k_max IoUs))`` per gt row (0 = not a candidate), int64.

    ``k_max`` zero columns stand in for priors that do not exist (``N < K``): adding 0 changes no sum.
    """
    top = torch.topk(iou, torch.sym_min(k_max, iou.shape[-1]), dim=-1).values  # (B, M, K') largest first
    top = torch.cat([top, iou.new_zeros(*iou.shape[:-1], k_max)], dim=-1)  # (B, M, K' + K)
    total = top[..., 0]  # (B, M)
    for j in range(1, k_max):
        total = total + top[..., j]  # (B, M) one add at a time, in rank order
    return torch.floor(total).clamp(min=1.0).to(torch.int64)  # (B, M) int() truncates (total >= 0); at least 1


def mark_cheapest(
    cost: Float[Tensor, "B M N"], k: Int[Tensor, "B M"], k_max: int
) -> tuple[Int[Tensor, "B M K"], Bool[Tensor, "B M K"]]:
    """5. Each gt's ``k`` cheapest priors: ``(idx, marked)``, the top-``K'`` slots and which of them are kept
    (rank ``< k`` and a finite cost: an ``+inf`` pair is never marked)."""
    cheapest, idx = _topk(cost, k_max, dim=2, largest=False)  # (B, M, K') smallest first, ties by index
    return idx, rank_mask(k, idx.shape[2]) & (cheapest < float("inf"))  # (B, M, K'), (B, M, K')


def resolve_conflicts(
    idx: Int[Tensor, "B M K"], marked: Bool[Tensor, "B M K"], cheapest_gt: Int[Tensor, "B N"]
) -> Int[Tensor, "B N"]:
    """6. ``gt_index (B, N)``: the marking gt, ``cheapest_gt`` where several gts marked the prior, -1 unmarked."""
    b, m, _ = idx.shape
    n = cheapest_gt.shape[1]
    slots = idx.reshape(b, -1)  # (B, M * K')
    gt_ids = torch.arange(m, device=idx.device).view(1, m, 1)  # (1, M, 1)
    count = torch.zeros(b, n, dtype=torch.int64, device=idx.device).scatter_add(
        1, slots, marked.to(torch.int64).reshape(b, -1))  # (B, N) how many gts marked each prior
    marker = torch.zeros(b, n, dtype=torch.int64, device=idx.device).scatter_add(
        1, slots, (marked * gt_ids).reshape(b, -1))  # (B, N) the sum of their indices
    gt_index = torch.where(count > 1, cheapest_gt, marker)  # (B, N)
    return torch.where(count > 0, gt_index, NEGATIVE)  # (B, N)
