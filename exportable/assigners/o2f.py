"""O2F: one-to-few label assignment (Li et al., CVPR 2023), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (all FPN levels concatenated, shared by the batch), ``M`` gts
per image (padded), ``C`` classes, ``K`` = ``min(topk, N)`` slots per gt. Boxes are ``(x1, y1, x2, y2)``
in absolute pixels, float32, ``x1 <= x2``; points are ``(x, y)`` cell centres. Returns
:class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; no ignored
points; ``labels`` = ``num_classes`` for every non-positive).

The steps are the authors' ``O2FHead._get_target_single_o2o`` (``strongwolf/o2f``; numbers as in
``docs/algorithms.md`` §11.2), with ``p`` = ``sigmoid(cls) * sigmoid(ctr)`` (``pred_scores``):

1. ``p[m, n]`` = the score of point n at gt m's class; ``u[m, n]`` = IoU(predicted box n, gt m).
2. Matching quality ``q = p^(1 - alpha) * u^alpha``, ``alpha = 0.8``.
3. Candidates: FCOS centre sampling. The square of half-side ``1.5 * stride`` (the point's own stride)
   around the gt's centre, clipped to the gt box; the point must lie strictly inside. Points of every
   level qualify. ``q`` and ``u`` are 0 outside.
4. Per gt: ``k = min(#{candidates with u > 0}, topk)`` (``topk = 7``); the ``k`` largest ``q`` are the
   gt's picks (one top-k of constant ``K`` plus the rank mask ``rank < k``).
5. Conflicts: a point picked by several gts goes to the one with the largest ``q`` (first gt on ties);
   points whose best picked ``q`` is ``> 0`` are positive.
6. Per gt, over the positives it finally keeps: the **certain** positive is the one with the highest ``q``
   (target 1, weight 1); the others are **ambiguous** (target ``p_j / max_{ambiguous} p * T``, weight
   0.4). ``T`` = ``soft_ceiling``, the epoch's ceiling (:func:`soft_ceiling`, 0.6 -> 0.2).
7. Targets: ``labels`` = the gt's class, ``boxes`` = the gt box, ``overlaps`` = IoU of the predicted box
   with that gt, ``target_scores`` = 1 / soft label, ``weights`` = 1 / 0.4 for positives; negatives get
   target 0 and weight 1 (their loss term ``0.75 p^2 BCE(p, 0)`` is not weighted).

How the batched version gets the authors' numbers (decisions):

- **Ranking key.** ``q`` is only ever compared (top-k, conflicts, certain pick), never output, so any
  strictly increasing function of it ranks the same. We rank by ``q^(1/(1-alpha)) = p * u^(alpha/(1-alpha))``
  (``p * u^4`` at alpha 0.8) in float64, built from multiplications only: the same order as the authors'
  ``q`` in exact arithmetic, bit-identical in eager and onnxruntime (``Pow`` differs by an ulp between
  them), and no underflow (``u^4`` of a float32 IoU stays far above float64's smallest number). The
  authors' float32 ``q`` can tie or swap two candidates within an ulp; their order there is the
  backend's sort order anyway. A non-integer ``alpha/(1-alpha)`` falls back to a float64 ``pow`` (then
  onnxruntime may differ from eager by an ulp of the key).
- **Centre region.** ``px - max(cx - r, x1) > 0`` (the authors' form) is evaluated as
  ``px > max(cx - r, x1)``: the same for IEEE floats, one pass fewer.
- **Certain pick after conflicts.** The positives a gt keeps are a subset of its own top-k list, which
  is already sorted by ``q`` (ties: lower point index first): the certain positive is the first
  surviving slot of that list (a cumulative count), the ambiguous ones the other survivors; their max
  ``p`` is a masked max over ``K`` slots. No sort after the top-k.
- **Writing back.** Each positive point has exactly one surviving (gt, slot) entry; one scatter writes
  the survivors' soft label, weight and IoU into ``(B, N + 1)`` (non-survivors go to the extra column,
  which is dropped).
- **Ties** follow the package's rule everywhere (lower index first): top-k by point index, conflicts by
  gt index. The authors' ``torch.topk`` / ``max`` / ``sort`` leave ties to the backend.

Two paths, one set of numbers. The exported graph is dense and static: ``(B, M, N)`` pairs, one top-k
per gt, masks (:meth:`O2FAssigner._assign_dense`). Eager lists the centre-region pairs level by level with
range searches (the x-test picks a run of columns, the y-test a run in each column; ``searchsorted`` on the
exact values), then does steps 1-6 with stable sorts on those few pairs (a few dozen per gt instead of all
N; :meth:`O2FAssigner._assign_sparse`). Every float is computed by the same elementwise operations on the
same values in both, so the results are bit-identical (tests compare both paths and onnxruntime).
Edge cases: no gts / all-padding images / gts whose region holds no point with ``u > 0`` get no
positive (the authors' code crashes on images without gts, §11.2 step 8); zero-area gts have an empty
region.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_float,
    check_scalar,
    check_shape,
    checks_enabled,
    exporting,
)
from exportable.assigners._points import check_point_assigner_inputs
from exportable.assigners.result import NEGATIVE, AssignResult, empty_result
from exportable.batching import ensure_gt_rows
from exportable.boxes import _box_iou
from exportable.ordering import _topk, rank_mask

__all__ = ["O2FAssigner", "soft_ceiling", "quality_key", "center_region"]

MAX_T, MIN_T = 0.6, 0.2  # the authors' soft-label ceiling at the first and at the last epoch


def soft_ceiling(
    epoch: int, max_epoch: int, max_t: float = MAX_T, min_t: float = MIN_T, *, dtype: torch.dtype = torch.float32
) -> Float[Tensor, ""]:
    """``T(e) = (min_t - max_t) / (max_epoch - 1) * e + max_t`` as a 0-d tensor (the assigner's input).

    ``epoch`` is 0-based and constant within an epoch (the authors' ``HeadHook`` sets it before each
    epoch): 0.6 in the first epoch, 0.2 in the last (``max_epoch - 1``), linear in between. The value is
    computed in Python floats as the authors' ``ff`` lambda does, then rounded to ``dtype``.
    """
    if isinstance(max_epoch, bool) or not isinstance(max_epoch, int) or max_epoch < 2:
        raise ValueError(f"max_epoch: expected an int >= 2 (T divides by max_epoch - 1), got {max_epoch!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < max_epoch:
        raise ValueError(f"epoch: expected a 0-based int in [0, {max_epoch - 1}], got {epoch!r}")
    max_t = check_scalar("max_t", max_t, low=0.0, high=1.0)
    min_t = check_scalar("min_t", min_t, low=0.0, high=1.0)
    return torch.tensor((min_t - max_t) / (max_epoch - 1) * epoch + max_t, dtype=dtype)


def quality_key(prob: Tensor, iou: Tensor, alpha: float = 0.8) -> Tensor:
    """The ranking key ``q^(1/(1-alpha)) = prob * iou^(alpha/(1-alpha))`` in float64 (see the module doc).

    Strictly increasing in the authors' ``q = prob^(1-alpha) * iou^alpha`` for ``prob, iou >= 0``, and 0
    exactly where ``q`` is 0. Integer exponents are computed by repeated squaring (multiplications only).
    """
    p = prob.to(torch.float64)
    u = iou.to(torch.float64)
    beta = alpha / (1.0 - alpha)
    if abs(beta - round(beta)) < 1e-9 and round(beta) >= 0:
        return p * _int_pow(u, int(round(beta)))
    return p * u.pow(beta)


def _int_pow(x: Tensor, e: int) -> Tensor:
    """``x ** e`` for an int ``e >= 0`` by repeated squaring: IEEE multiplications only."""
    result: Tensor | None = None
    base = x
    while e:
        if e & 1:
            result = base if result is None else result * base
        e >>= 1
        if e:
            base = base * base
    return torch.ones_like(x) if result is None else result


def center_region(
    points: Float[Tensor, "N 2"],
    radius: Float[Tensor, " N"],
    gt_boxes: Float[Tensor, "B M 4"],
) -> Bool[Tensor, "B M N"]:
    """FCOS centre sampling: point n lies strictly inside gt m's centre square clipped to the box.

    The square has half-side ``radius[n]`` (``1.5 * stride`` of the point's level) around the box centre
    ``((x1 + x2) / 2, (y1 + y2) / 2)``; it is clipped to the box, so a point inside the region is inside
    the gt. The authors test ``px - max(cx - r, x1) > 0`` etc.; ``px > max(cx - r, x1)`` is the same.
    """
    px = points[:, 0]  # (N,)
    py = points[:, 1]  # (N,)
    x1, y1, x2, y2 = (gt_boxes[..., i].unsqueeze(-1) for i in range(4))  # 4 x (B, M, 1)
    cx = (x1 + x2) / 2  # (B, M, 1)
    cy = (y1 + y2) / 2  # (B, M, 1)
    inside = px > torch.maximum(cx - radius, x1)  # (B, M, N) left side
    inside &= px < torch.minimum(cx + radius, x2)  # (B, M, N) right side
    inside &= py > torch.maximum(cy - radius, y1)  # (B, M, N) top side
    inside &= py < torch.minimum(cy + radius, y2)  # (B, M, N) bottom side
    return inside


class O2FAssigner(nn.Module):
    """One certain positive and a few ambiguous anchors per gt, with soft labels that decay over training.

    Args:
        topk: K, the most points a gt picks (certain + ambiguous): 7 on COCO, 4 on CrowdHuman
            (the authors' ``o2f_topk``).
        alpha: ``q = p^(1 - alpha) * IoU^alpha`` (the authors' ``poto_alpha``, 0.8); ``0 < alpha < 1``.
        center_radius: half-side of the centre square in strides (FCOS ``center_sample_radius``, 1.5).
        certain_weight: classification weight of the certain positive (``max_soft_weight``, 1.0).
        ambiguous_weight: classification weight of ambiguous anchors (``soft_weight``, 0.4).
        num_classes: C, the ``labels`` value of every non-positive point.

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M), soft_ceiling ())`` returns :class:`AssignResult`. ``pred_scores``
    are ``sigmoid(cls) * sigmoid(ctr)`` (probabilities), ``pred_boxes`` the decoded predicted boxes,
    ``strides`` each point's level stride, ``soft_ceiling`` = ``T(e)`` (:func:`soft_ceiling`).
    """

    def __init__(
        self,
        topk: int = 7,
        alpha: float = 0.8,
        center_radius: float = 1.5,
        certain_weight: float = 1.0,
        ambiguous_weight: float = 0.4,
        num_classes: int = 80,
    ) -> None:
        super().__init__()
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk: expected an int >= 1, got {topk!r}")
        self.topk = topk
        self.alpha = check_scalar("alpha", alpha)
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha}")
        self.center_radius = check_scalar("center_radius", center_radius, low=0.0)
        self.certain_weight = check_scalar("certain_weight", certain_weight, low=0.0)
        self.ambiguous_weight = check_scalar("ambiguous_weight", ambiguous_weight, low=0.0)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes

    def forward(
        self,
        points: Float[Tensor, "N 2"],
        strides: Float[Tensor, " N"],
        pred_scores: Float[Tensor, "B N C"],
        pred_boxes: Float[Tensor, "B N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        soft_ceiling: Float[Tensor, ""],
    ) -> AssignResult:
        if checks_enabled():
            _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, soft_ceiling)
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        labels = torch.where(mask, labels, 0)  # (B, M') padding reads class 0, never used
        if exporting():
            return self._assign_dense(points, strides, pred_scores, pred_boxes, boxes, labels, mask, soft_ceiling)
        if pred_scores.shape[1] == 0:
            return empty_result(pred_scores.shape[0], 0, self.num_classes, like=pred_boxes)  # no points
        return self._assign_sparse(points, strides, pred_scores, pred_boxes, boxes, labels, mask, soft_ceiling)

    # -- the exported graph: dense (B, M, N) --------------------------------------------------------------------

    def _assign_dense(
        self,
        points: Tensor,
        strides: Tensor,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        boxes: Tensor,
        labels: Tensor,
        mask: Tensor,
        ceiling: Tensor,
    ) -> AssignResult:
        """Static shapes: every (gt, point) pair, one top-k per gt, masks. ``boxes`` has >= 1 row."""
        b, n, c = pred_scores.shape
        m = boxes.shape[1]
        # 3. candidates: the centre region of each real gt (padding has none)
        region = center_region(points, strides * self.center_radius, boxes) & mask.unsqueeze(-1)  # (B, M, N)
        # 1. + 2. IoU and p on every pair; the ranking key (q^(1/(1-alpha)), float64), 0 outside the region
        iou = torch.where(region, _box_iou(boxes, pred_boxes), 0.0)  # (B, M, N)
        # p at each gt's class: rows b * C + label of the (B * C, N) class-major scores (a Gather of B * M rows;
        # a gather with a (B, M, N) index would materialise that index in the graph)
        rows = (torch.arange(b, device=labels.device).unsqueeze(1) * c + labels).reshape(b * m)  # (B * M,)
        prob = pred_scores.transpose(1, 2).reshape(b * c, n).index_select(0, rows).reshape(b, m, n)  # (B, M, N)
        key = quality_key(prob, iou, self.alpha)  # (B, M, N) float64; 0 outside the region (IoU is)
        count = (iou > 0).to(iou.dtype).sum(dim=2).to(torch.int64)  # (B, M) candidates with IoU > 0 (exact)
        # 4. per gt: the K best keys, kept where rank < k_g = min(count, topk)
        vals, idx = _topk(key, self.topk, dim=2)  # (B, M, K), (B, M, K) best first, ties by point index
        k = vals.shape[2]
        keep = rank_mask(count, k)  # (B, M, K) rank < count (a count >= K keeps all K)
        stored = torch.where(keep, vals, 0.0)  # (B, M, K) the authors' matching_matrix entries
        # 5. conflicts: each point goes to the gt with the largest stored key (first gt on ties)
        matching = torch.zeros_like(key).scatter(2, idx, stored)  # (B, M, N) unique indices per row
        best, winner = matching.max(dim=1)  # (B, N), (B, N)
        positive = best > 0  # (B, N)
        gt_index = torch.where(positive, winner, NEGATIVE)  # (B, N)
        # 6. the survivors of each gt's list (already sorted by q): the first is certain, the rest ambiguous
        flat_idx = idx.reshape(b, m * k)  # (B, M * K)
        owner = torch.gather(gt_index, 1, flat_idx).reshape(b, m, k)  # (B, M, K)
        gt_ids = torch.arange(m, device=idx.device).reshape(1, m, 1)  # (1, M, 1)
        survive = keep & (owner == gt_ids)  # (B, M, K)
        certain = survive & (survive.to(torch.int64).cumsum(dim=2) == 1)  # (B, M, K) first survivor
        ambiguous = survive & ~certain  # (B, M, K)
        cls_idx = flat_idx * c + labels.unsqueeze(-1).expand(b, m, k).reshape(b, m * k)  # (B, M * K) n * C + class
        slot_prob = torch.gather(pred_scores.reshape(b, n * c), 1, cls_idx).reshape(b, m, k)  # (B, M, K) p_j
        amb_max = torch.where(ambiguous, slot_prob, 0.0).amax(dim=2, keepdim=True)  # (B, M, 1) max p, ambiguous
        safe_max = torch.where(amb_max > 0, amb_max, 1.0)  # (B, M, 1) no 0 / 0 where there is none
        t = ceiling.to(slot_prob.dtype)  # ()
        soft = torch.where(ambiguous, slot_prob / safe_max * t, 0.0)  # (B, M, K) p_j / max p * T
        soft = torch.where(certain, 1.0, soft)  # (B, M, K)
        weight = torch.where(certain, self.certain_weight, torch.where(ambiguous, self.ambiguous_weight, 0.0))
        # 7. IoU of each slot's predicted box with its gt (the same floats as the pairwise IoU)
        slot_pred = torch.gather(pred_boxes, 1, flat_idx.unsqueeze(-1).expand(b, m * k, 4))  # (B, M * K, 4)
        slot_gt = boxes.unsqueeze(2).expand(b, m, k, 4).reshape(b, m * k, 4)  # (B, M * K, 4)
        slot_iou = _box_iou(slot_gt, slot_pred, aligned=True).reshape(b, m, k)  # (B, M, K)
        # write the survivors back per point; everything else lands in the dropped column N
        dest = torch.where(survive, idx, n).reshape(b, m * k, 1).expand(b, m * k, 3)  # (B, M * K, 3)
        src = torch.stack([soft, weight.to(soft.dtype), slot_iou], dim=-1).reshape(b, m * k, 3)  # (B, M * K, 3)
        per_point = pred_boxes.new_zeros(b, n + 1, 3).scatter(1, dest, src)[:, :n]  # (B, N, 3)
        safe = gt_index.clamp(min=0)  # (B, N) any row for negatives; masked below
        matched_boxes = torch.gather(boxes, 1, safe.unsqueeze(-1).expand(b, n, 4))  # (B, N, 4)
        return AssignResult(
            gt_index=gt_index,
            labels=torch.where(positive, torch.gather(labels, 1, safe), self.num_classes),  # (B, N)
            boxes=torch.where(positive.unsqueeze(-1), matched_boxes, 0.0),  # (B, N, 4)
            overlaps=torch.where(positive, per_point[..., 2], 0.0),  # (B, N)
            target_scores=torch.where(positive, per_point[..., 0], 0.0),  # (B, N)
            weights=torch.where(positive, per_point[..., 1], 1.0),  # (B, N) negatives weigh 1
        )

    # -- eager: the same steps on the candidate pairs only ------------------------------------------------------

    def _assign_sparse(
        self,
        points: Tensor,
        strides: Tensor,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        boxes: Tensor,
        labels: Tensor,
        mask: Tensor,
        ceiling: Tensor,
    ) -> AssignResult:
        """Eager: candidate pairs as flat lists (P of them), sorts instead of top-k over N. Same numbers.

        Shape letters: G = B * M gts of the batch, P candidate (gt, point) pairs.
        """
        b, n, c = pred_scores.shape
        m = boxes.shape[1]
        dev = pred_boxes.device
        flat_boxes = boxes.reshape(b * m, 4)  # (G, 4)
        gid, pn = self._candidate_pairs(points, strides, flat_boxes, mask.reshape(-1))  # (P,), (P,)
        bi = torch.div(gid, m, rounding_mode="floor")  # (P,) image
        # 1. + 2. IoU, p at the gt's class, ranking key; candidates with IoU > 0 per gt
        iou = _box_iou(flat_boxes[gid], pred_boxes[bi, pn], aligned=True)  # (P,)
        prob = pred_scores[bi, pn, labels.reshape(-1)[gid]]  # (P,)
        key = quality_key(prob, iou, self.alpha)  # (P,) float64
        count = torch.zeros(b * m, dtype=torch.int64, device=dev).index_add_(0, gid, (iou > 0).to(torch.int64))
        # 4. each gt's list sorted by key (ties: lower point index), ranks < min(count, topk) are picked
        order = torch.argsort(pn, stable=True)  # (P,)
        order = order[torch.argsort(key[order], descending=True, stable=True)]
        order = order[torch.argsort(gid[order], stable=True)]  # (gt, key desc, point) order
        gid, pn, bi, iou, prob, key = (t[order] for t in (gid, pn, bi, iou, prob, key))
        sizes = torch.bincount(gid, minlength=b * m)  # (G,)
        rank = torch.arange(gid.numel(), device=dev) - (sizes.cumsum(0) - sizes)[gid]  # (P,)
        picked = ((rank < count[gid].clamp(max=self.topk)) & (key > 0)).nonzero().squeeze(1)  # (S,)
        # 5. conflicts: per point the picked entry with the largest key, lowest gt index on ties
        point = bi[picked] * n + pn[picked]  # (S,) flat (image, point)
        o2 = torch.argsort(key[picked], descending=True, stable=True)  # ties keep gt order
        o2 = o2[torch.argsort(point[o2], stable=True)]  # (point, key desc, gt) order
        first = torch.ones_like(o2, dtype=torch.bool)  # (S,)
        first[1:] = point[o2][1:] != point[o2][:-1]
        wins = torch.zeros_like(first)
        wins[o2] = first
        sv = picked[wins]  # (Q,) survivors, still in (gt, key desc, point) order
        # 6. the first survivor of each gt is certain, the rest ambiguous
        g_sv = gid[sv]  # (Q,)
        certain = torch.ones_like(g_sv, dtype=torch.bool)  # (Q,)
        certain[1:] = g_sv[1:] != g_sv[:-1]
        p_sv = prob[sv]  # (Q,)
        amb_p = torch.where(certain, 0.0, p_sv)  # (Q,)
        amb_max = torch.zeros(b * m, dtype=p_sv.dtype, device=dev).scatter_reduce_(0, g_sv, amb_p, "amax")  # (G,)
        safe_max = torch.where(amb_max > 0, amb_max, 1.0)[g_sv]  # (Q,)
        soft = torch.where(certain, 1.0, p_sv / safe_max * ceiling.to(p_sv.dtype))  # (Q,)
        weight = torch.where(certain, self.certain_weight, self.ambiguous_weight).to(p_sv.dtype)  # (Q,)
        # 7. write the survivors into the per-point outputs
        target = bi[sv] * n + pn[sv]  # (Q,) flat (image, point)
        m_sv = g_sv - bi[sv] * m  # (Q,) gt index within its image
        gt_index = torch.full((b * n,), NEGATIVE, dtype=torch.int64, device=dev)
        gt_index[target] = m_sv
        out_labels = torch.full((b * n,), self.num_classes, dtype=torch.int64, device=dev)
        out_labels[target] = labels.reshape(-1)[g_sv]
        out_boxes = pred_boxes.new_zeros(b * n, 4)
        out_boxes[target] = flat_boxes[g_sv]
        overlaps = pred_boxes.new_zeros(b * n)
        overlaps[target] = iou[sv]
        scores = pred_boxes.new_zeros(b * n)
        scores[target] = soft.to(scores.dtype)
        weights = pred_boxes.new_ones(b * n)
        weights[target] = weight.to(weights.dtype)
        return AssignResult(
            gt_index=gt_index.reshape(b, n),
            labels=out_labels.reshape(b, n),
            boxes=out_boxes.reshape(b, n, 4),
            overlaps=overlaps.reshape(b, n),
            target_scores=scores.reshape(b, n),
            weights=weights.reshape(b, n),
        )


    def _candidate_pairs(
        self, points: Tensor, strides: Tensor, flat_boxes: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Step 3 in eager: every (gt, point) pair of the centre regions, as ``(gid (P,), point (P,))``.

        Level by level (the points that share a stride share the radius r), with range searches instead
        of a test per pair. The level's points are ranked by x and by y (``unique``) and sorted by the
        integer key ``x_rank * K + y_rank`` (columns of equal x, each sorted by y). For a gt the x-test
        ``max(cx - r, x1) < px < min(cx + r, x2)`` is a range of columns (``searchsorted`` on the sorted x
        values), and in each column the y-test is a range of that sorted key: only the pairs inside the
        region are ever listed. The bounds are the same float32 operations as :func:`center_region`, and
        ``a < x`` is decided by ``searchsorted`` on exact values, so the pairs are exactly its True
        entries, for any points; on a grid a gt touches about three columns per level.
        """
        dev = points.device
        x1, y1, x2, y2 = flat_boxes.unbind(-1)  # 4 x (G,)
        cx = (x1 + x2) / 2  # (G,)
        cy = (y1 + y2) / 2  # (G,)
        radius = strides * self.center_radius  # (N,) the same values as the dense path's
        gts = torch.arange(flat_boxes.shape[0], device=dev)  # (G,)
        gids, pns = [], []
        for r in torch.unique(radius):  # one pass per level
            level = (radius == r).nonzero().squeeze(1)  # (N_l,)
            ux, x_rank = torch.unique(points[level, 0], return_inverse=True)  # (X,) sorted, (N_l,)
            uy, y_rank = torch.unique(points[level, 1], return_inverse=True)  # (Y,) sorted, (N_l,)
            k = uy.numel() + 1
            code, order = torch.sort(x_rank * k + y_rank)  # (N_l,) by column, then by y
            idx = level[order]  # (N_l,) point index in code order
            # columns with max(cx - r, x1) < x < min(cx + r, x2), and the y-ranks inside the y bounds
            c_lo = torch.searchsorted(ux, torch.maximum(cx - r, x1), right=True)  # (G,) first x > lo
            c_hi = torch.searchsorted(ux, torch.minimum(cx + r, x2))  # (G,) first x >= hi
            y_lo = torch.searchsorted(uy, torch.maximum(cy - r, y1), right=True)  # (G,) first y-rank with y > lo
            y_hi = torch.searchsorted(uy, torch.minimum(cy + r, y2))  # (G,) first y-rank with y >= hi
            n_col = (c_hi - c_lo).clamp(min=0) * valid  # (G,) padding: none
            col_gt = torch.repeat_interleave(gts, n_col)  # (Q,) one row per (gt, column)
            col = torch.arange(col_gt.numel(), device=dev) + (c_lo - (n_col.cumsum(0) - n_col))[col_gt]  # (Q,)
            first = torch.searchsorted(code, col * k + y_lo[col_gt])  # (Q,) the column's run of y in range
            last = torch.searchsorted(code, col * k + y_hi[col_gt])  # (Q,)
            count = (last - first).clamp(min=0)  # (Q,)
            run = torch.repeat_interleave(torch.arange(col_gt.numel(), device=dev), count)  # (P_l,)
            pos = torch.arange(run.numel(), device=dev) + (first - (count.cumsum(0) - count))[run]  # (P_l,)
            gids.append(col_gt[run])
            pns.append(idx[pos])
        if not gids:
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            return empty, empty
        return torch.cat(gids), torch.cat(pns)  # (P,), (P,)

def _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, ceiling) -> None:
    check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    check_float("soft_ceiling", ceiling)
    check_shape("soft_ceiling", ceiling, ())
    value = float(ceiling)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"soft_ceiling: expected T in [0, 1] (0.6 -> 0.2 over training), got {value}")


