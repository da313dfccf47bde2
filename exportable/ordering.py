"""Top-k with one tie rule, and rank masks for dynamic k.

Shape shorthand: ``*`` any leading dims, ``N`` the axis being ranked, ``K`` the number kept,
``K_max`` a static upper bound on a per-row dynamic k.

The package's tie rule, everywhere: among equal values the lower index comes first. ONNX ``TopK``
and onnxruntime already return ties that way; torch's CPU and CUDA ``topk`` / ``sort`` do not
(``torch.use_deterministic_algorithms`` does not change it). So eager code must repair the order,
and must do it without a full stable sort, which costs about 30x a top-k at (16, 100, 8400):

1. ``torch.topk`` finds the k-th value ``v_k`` of each row (O(N)); its set is already right
   unless more than k values are ``>= v_k`` (a tie straddles the k-th place).
2. Only those rows are repaired: every element strictly better than ``v_k`` plus the
   ``k - count(better)`` equal elements of lowest index: taken from the row's first k entries
   when enough of them equal ``v_k`` (O(k); e.g. the zero ties of a sparse non-negative
   metric), else chosen by one top-k over unique integer keys (O(N)).
3. The k results are ordered by (value, index): two sorts of k elements, cheap.

Under export the plain ``torch.topk`` is emitted, which becomes an ONNX ``TopK`` with the same
rule. Both paths give identical indices, including on rows full of ties.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from exportable._checks import check_float, check_tensor, checks_enabled, exporting

__all__ = ["topk", "rank_mask", "argsort_topk", "TopK"]


def topk(
    x: Tensor,
    k: int,
    dim: int = -1,
    *,
    largest: bool = True,
    sorted: bool = True,
) -> tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) entries of ``x`` along ``dim``, ties to the lower index.

    Args:
        x: values ``(*, N, *)``; floating or integer; NaN is rejected in eager.
        k: how many to keep; clipped to the size of ``dim`` (ONNX ``TopK`` fails on k > N).
        dim: the axis to rank.
        largest: ``True`` for the largest values first, ``False`` for the smallest first.
        sorted: ``False`` when only the SET of the k entries matters (a mask, a gather followed by a
            reduction): eager then skips step 3; the set is the same. Exported graphs always sort.

    Returns:
        ``(values, indices)``, each ``(*, K, *)`` with ``K = min(k, N)``, ordered best first (with
        ``sorted=False`` in eager: in no particular order); among equal values the lower index is chosen
        (and comes first), in eager and in onnxruntime alike.
    """
    if checks_enabled():
        check_tensor("x", x)
        if x.is_floating_point():
            check_float("x", x, finite=False)
        if k < 0:
            raise ValueError(f"k: must be >= 0, got {k}")
    return _topk(x, k, dim, largest, sorted)


def _topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`topk` without the input checks (for modules that checked their own inputs)."""
    k = torch.sym_min(k, x.shape[dim])  # no guard under export: TopK never asks for more than N
    if exporting():
        return torch.topk(x, k, dim=dim, largest=largest, sorted=True)
    return _stable_topk_eager(x, k, dim, largest, sorted)


def _stable_topk_eager(x: Tensor, k: int, dim: int, largest: bool, sorted: bool = True) -> tuple[Tensor, Tensor]:
    if x.dim() == 0:
        raise ValueError("x: topk needs at least one dim")
    dim = dim % x.dim()
    n = x.shape[dim]
    if k == 0 or n == 0:
        shape = list(x.shape)
        shape[dim] = 0
        return x.new_empty(shape), torch.empty(shape, dtype=torch.int64, device=x.device)
    lead = x.movedim(dim, -1).shape[:-1]
    xt = x.movedim(dim, -1).reshape(-1, n)  # (R, N) every row ranked on its own
    if not largest:
        # Ranking the negated values keeps "lower index first" among equal values.
        xt = -xt if (xt.is_floating_point() or xt.dtype == torch.int64) else -(xt.to(torch.int64))
    # 1. torch's top-k gives the right set unless a tie straddles the k-th place, i.e. unless
    #    the (k+1)-th best value equals the k-th: ask for k + 1 and compare the last two.
    k1 = min(k + 1, n)
    vals, index = torch.topk(xt, k1, dim=-1, largest=True, sorted=False)  # (R, K+1)
    vals, order = torch.sort(vals, dim=-1, descending=True)  # (R, K+1) small sort
    index = torch.gather(index, -1, order)[..., :k]  # (R, K)
    kth = vals[..., k - 1 : k]  # (R, 1)
    if k1 > k:
        straddle = vals[..., k] == vals[..., k - 1]  # (R,)
        if bool(straddle.any()):
            # 2. Repair those rows: all values better than the k-th, then the equal ones by index.
            rows = straddle.nonzero(as_tuple=True)
            index[rows] = _repair(xt[rows], vals[rows][..., :k], index[rows], kth[rows])  # (R', K)
    # 3. Order the k results by (value, index): index-sort, then a stable sort by value.
    if sorted:
        index = index.sort(dim=-1).values  # (R, K)
        order = torch.sort(torch.gather(xt, -1, index), dim=-1, descending=True, stable=True).indices  # (R, K)
        index = torch.gather(index, -1, order)  # (R, K) best first, ties by index
    values = torch.gather(x.movedim(dim, -1).reshape(-1, n), -1, index)  # (R, K)
    index = index.reshape(*lead, k)  # (R..., K)
    values = values.reshape(*lead, k)  # (R..., K)
    return values.movedim(-1, dim), index.movedim(-1, dim)


def _repair(x: Tensor, vals: Tensor, index: Tensor, kth: Tensor) -> Tensor:
    """The tie rule's k indices of rows ``x (R, N)`` whose k-th value ``kth (R, 1)`` ties past the k-th place,
    from torch's ``vals, index (R, K)`` sorted best first: the values better than ``kth``, then the equal ones
    of lowest index.

    Fast path, O(K) per row: when the first K entries of a row hold enough values equal to ``kth``, those
    are the lowest-index ones (typical: a non-negative metric with fewer than k non-zero values, whose zero
    ties are filled from the first points). Other rows: one top-k over unique integer keys, O(N)."""
    r, n = x.shape
    k = vals.shape[-1]
    ar = torch.arange(k, device=x.device)  # (K,)
    better = (vals > kth).sum(dim=-1, keepdim=True)  # (R, 1) the first `better` slots are kept
    head_eq = x[:, :k] == kth  # (R, K)
    first_eq = torch.where(head_eq, ar, ar + k).sort(dim=-1).values  # (R, K) equal positions first, by index
    slot = (ar - better).clamp_(min=0)  # (R, K) rank among the equal slots
    out = torch.where(ar < better, index, first_eq.gather(-1, slot))  # (R, K)
    slow = head_eq.sum(dim=-1) < k - better.squeeze(-1)  # (R,) too few equal values among the first K
    if bool(slow.any()):
        # Unique integer keys make the choice exact: better -> [-N, 0), equal -> [0, N).
        sub, sub_kth = x[slow], kth[slow]  # (R', N), (R', 1)
        arn = torch.arange(n, device=x.device, dtype=torch.int32)  # (N,)
        key = torch.where(sub > sub_kth, arn - n, torch.where(sub == sub_kth, arn, n))  # (R', N)
        out[slow] = torch.topk(key, k, dim=-1, largest=False, sorted=False).indices  # (R', K)
    return out


def argsort_topk(x: Tensor, dim: int = -1, *, descending: bool = True) -> Tensor:
    """A full ordering of ``x`` along ``dim`` with the package's tie rule (a top-k with k = N)."""
    return topk(x, x.shape[dim], dim, largest=descending)[1]


def rank_mask(
    k: Int[Tensor, "*batch"],
    k_max: int,
) -> Bool[Tensor, "*batch K_max"]:
    """``arange(k_max) < k[..., None]``: which of a static ``k_max`` top-k slots a dynamic k keeps.

    The static-shape form of ``topk(k=k_g)`` with a per-row ``k_g`` (SimOTA, O2F): take one top-k
    with the constant ``k_max`` and keep the slots whose rank is below ``k_g``.
    """
    ranks = torch.arange(k_max, device=k.device)  # (K_max,)
    return ranks < k.unsqueeze(-1)  # (*batch, K_max)


class TopK(nn.Module):
    """Exportable :func:`topk` along the last dim: ``forward(scores (B, N)) -> (values, indices)``."""

    def __init__(self, k: int = 10, largest: bool = True) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        self.k = k
        self.largest = largest

    def forward(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        if checks_enabled():
            check_float("scores", scores, finite=False)
        return _topk(scores, self.k, -1, self.largest)
