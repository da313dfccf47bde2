"""O2F: one-to-few label assignment (Li et al., CVPR 2023), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (all FPN levels concatenated, shared by the batch), ``M`` gts
per image (padded), ``C`` classes, ``K`` = ``min(topk, N)`` slots per gt. Boxes are ``(x1, y1, x2, y2)``
in absolute pixels, float32, ``x1 <= x2``; points are ``(x, y)`` cell centres. Returns
:class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; no ignored
points; ``labels`` = ``num_classes`` for every non-positive).

The steps are the authors' ``O2FHead._get_target_single_o2o``, numbered as in ``docs/algorithms.md`` §11.2
and ``lessons/o2f.py``, with ``p`` = ``sigmoid(cls) * sigmoid(ctr)`` (``pred_scores``):

1. ``p[m, n]`` = the score of point n at gt m's class; ``u[m, n]`` = IoU(predicted box n, gt m).
2. Matching quality ``q = p^(1 - alpha) * u^alpha``, ``alpha = 0.8``.
3. Candidates: FCOS centre sampling, every level. The square of half-side ``1.5 * stride`` (the point's
   own stride) around the gt's centre, clipped to the gt box; the point must lie strictly inside. ``q``
   and ``u`` are 0 outside.
4. Per gt: ``k = min(#{candidates with u > 0}, topk)`` (``topk = 7``); the ``k`` largest ``q`` are the
   gt's picks, stored with their ``q``.
5. Conflicts: a point picked by several gts goes to the one with the largest stored ``q`` (first gt on
   ties); points whose best stored ``q`` is ``> 0`` are positive.
6. Per gt, over the positives it keeps: the **certain** positive is the one with the highest ``q``
   (target 1, weight 1); the others are **ambiguous** (target ``p_j / max_{ambiguous} p * T``, weight
   0.4). ``T`` = ``soft_ceiling``, step 7's ceiling of the epoch (:func:`soft_ceiling`, 0.6 -> 0.2).

Targets: ``labels`` = the gt's class, ``boxes`` = the gt box, ``overlaps`` = IoU of the predicted box with
that gt, ``target_scores`` = 1 / soft label, ``weights`` = 1 / 0.4 at positives; negatives get target 0 and
weight 1 (their loss term ``0.75 p^2 BCE(p, 0)`` is not weighted). No gts, all-padding images and gts whose
region holds no point with ``u > 0`` give no positive (step 8: the authors' code crashes on the first).

How it stays exact and static:

- ``q`` is only compared, so the key is ``q^(1/(1-alpha)) = p * u^4`` in float64 from multiplications
  (:func:`quality_key`): ``q``'s order, the same bits in eager and onnxruntime.
- Ties (lower point index in the top-k, lower gt index in conflicts) follow the package's rule.
- Steps 1-4 give each gt ``K`` slots (its top-K keys, best first, kept where rank ``< k``); steps 5-6
  work on those ``M * K`` slots only: conflicts by two scatter-reductions per point (the largest key,
  then the lowest gt holding it), the certain positive is a gt's first surviving slot (its list is
  sorted by ``q``), the ambiguous maximum of ``p`` a masked max over its slots.
- On an FPN grid of points (``grid_strides``, or found by eager on the CPU) steps 1-4 look only at a
  ``w x w`` window of cells per gt and level (``w = ceil(2 * center_radius) + 2``, 5: ``(B, M, 75)`` on 3
  levels), which holds the whole centre region; the same tests on the same values give the same slots
  (:meth:`O2FAssigner._slots_in_windows`, tested equal). Other points: dense over ``(B, M, N)`` (:meth:`_slots`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_float, check_scalar, check_shape, checks_enabled, exporting
from exportable.assigners._points import check_point_assigner_inputs, grid_geometry, grid_levels, on_grid
from exportable.assigners.result import NEGATIVE, AssignResult, empty_result
from exportable.batching import ensure_gt_rows
from exportable.boxes import _box_iou, _points_in_boxes, _points_near_centers
from exportable.numerics import power
from exportable.ordering import _topk, rank_mask

__all__ = ["O2FAssigner", "soft_ceiling", "quality_key", "center_region"]

MAX_T, MIN_T = 0.6, 0.2  # the authors' soft-label ceiling at the first and at the last epoch


def soft_ceiling(
    epoch: int, max_epoch: int, max_t: float = MAX_T, min_t: float = MIN_T, *, dtype: torch.dtype = torch.float32
) -> Float[Tensor, ""]:
    """Step 7: ``T(e) = (min_t - max_t) / (max_epoch - 1) * e + max_t`` as a 0-d tensor (the assigner's input).

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
    """Step 2's ranking key ``q^(1/(1-alpha)) = prob * iou^(alpha/(1-alpha))``, float64.

    Strictly increasing in the authors' ``q = prob^(1-alpha) * iou^alpha`` for ``prob, iou >= 0``, and 0
    exactly where ``q`` is 0. A whole exponent (4 at alpha 0.8) goes by :func:`exportable.numerics.power`:
    multiplications only, the same bits in eager and onnxruntime (``Pow`` differs by an ulp).
    """
    beta = alpha / (1.0 - alpha)
    beta = float(round(beta)) if abs(beta - round(beta)) < 1e-9 else beta
    return prob.to(torch.float64) * power(iou.to(torch.float64), beta)


def center_region(
    points: Float[Tensor, "N 2"], radius: Float[Tensor, " N"], gt_boxes: Float[Tensor, "B M 4"]
) -> Bool[Tensor, "B M N"]:
    """Step 3, FCOS centre sampling: point n lies strictly inside gt m's centre square clipped to the box.

    The authors test ``px - max(cx - r, x1) > 0`` (and the other three sides); a point beats the larger of
    two bounds exactly when it beats both, so this is the point-in-box test AND the centre-square test of
    ``exportable.boxes`` (``radius[n]`` = ``1.5 * stride`` of the point's level), gt-major ``(B, M, N)``.
    """
    gts = gt_boxes.unsqueeze(-2)  # (B, M, 1, 4)
    return _points_in_boxes(points, gts, aligned=True) & _points_near_centers(points, gts, radius, aligned=True)


class Slots(NamedTuple):
    """Steps 1-4's result, each ``(B, M, K)``: a gt's top-K points by key (best first, ties by index)."""

    key: Tensor  # float64 ranking key (0 outside the region)
    index: Tensor  # int64 point index
    keep: Tensor  # bool: rank < k = min(#{candidates with u > 0}, topk)
    prob: Tensor  # p at the gt's class
    iou: Tensor  # IoU of the point's predicted box with the gt


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
        grid_strides: the points are the FPN grid of these levels (e.g. ``(8, 16, 32)``: each level a
            row-major grid of spacing = stride, levels in this order, as ``exportable.anchors`` makes them):
            steps 1-4, eager and graph, then look at a window of cells per gt and level instead of all N
            points. None (default): any points; the graph runs steps 1-4 dense, eager on the CPU uses the
            windows when the points form an FPN grid.

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
        grid_strides: tuple[float, ...] | None = None,
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
        if grid_strides is not None:
            levels = tuple(check_scalar("grid_strides", s) for s in grid_strides) if isinstance(
                grid_strides, (tuple, list)) else ()
            if not levels or min(levels) <= 0 or len(set(levels)) != len(levels):
                raise ValueError(f"grid_strides: expected distinct strides > 0 (one per level), got {grid_strides!r}")
            grid_strides = levels
        self.grid_strides = grid_strides

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
        b, n, _ = pred_scores.shape
        if not exporting() and n == 0:  # no points: nothing to assign (a graph's N is never 0)
            return empty_result(b, 0, self.num_classes, like=pred_boxes)
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M, 4), (B, M), (B, M)
        m = boxes.shape[1]
        labels = torch.where(mask, labels, 0)  # (B, M) padding reads class 0, never used
        args = (points, strides, pred_scores, pred_boxes, boxes, labels, mask)
        # 1.-4. each gt's top-K slots: from a window of cells per level on an FPN grid, else dense over (B, M, N)
        levels = self._grid_levels(points, strides)
        slots = self._slots(*args) if levels is None else self._slots_in_windows(levels, *args)
        k = slots.index.shape[2]
        flat = slots.index.reshape(b, m * k)  # (B, M * K)
        gt_ids = torch.arange(m, device=flat.device).view(1, m, 1).expand(b, m, k)  # (B, M, K)
        # 5. conflicts: each point goes to the gt with the largest stored key (the lowest such gt); > 0: positive
        stored = torch.where(slots.keep, slots.key, 0.0)  # (B, M, K) the authors' matching-matrix entries
        best = stored.new_zeros(b, n).scatter_reduce(1, flat, stored.reshape(b, -1), "amax")  # (B, N)
        tops = (stored > 0) & (stored == torch.gather(best, 1, flat).reshape(b, m, k))  # (B, M, K)
        holder = torch.where(tops, gt_ids, m).reshape(b, -1)  # (B, M * K) M: not the point's best
        winner = torch.full_like(best, m, dtype=torch.int64).scatter_reduce(1, flat, holder, "amin")  # (B, N)
        gt_index = torch.where(winner < m, winner, NEGATIVE)  # (B, N)
        # 6. a gt's surviving slots (its list is sorted by q): the first is certain, the others ambiguous
        survive = slots.keep & (torch.gather(gt_index, 1, flat).reshape(b, m, k) == gt_ids)  # (B, M, K)
        certain = survive & (survive.to(torch.int64).cumsum(dim=2) == 1)  # (B, M, K)
        ambiguous = survive & ~certain  # (B, M, K)
        amb_max = torch.where(ambiguous, slots.prob, 0.0).amax(dim=2, keepdim=True)  # (B, M, 1) max p, ambiguous
        safe_max = torch.where(amb_max > 0, amb_max, 1.0)  # (B, M, 1) no 0 / 0 where there is none
        soft = torch.where(ambiguous, slots.prob / safe_max * soft_ceiling.to(slots.prob.dtype), 0.0)  # (B, M, K)
        soft = torch.where(certain, 1.0, soft)  # (B, M, K)
        weight = torch.where(certain, self.certain_weight, torch.where(ambiguous, self.ambiguous_weight, 0.0))
        # targets: one scatter of the survivors per point; every other slot lands in the dropped column N
        dest = torch.where(survive, slots.index, n).reshape(b, 1, m * k).expand(b, 3, m * k)  # (B, 3, M * K)
        src = torch.stack([soft, weight.to(soft.dtype), slots.iou], dim=1).reshape(b, 3, m * k)  # (B, 3, M * K)
        target, weights, overlaps = pred_boxes.new_zeros(b, 3, n + 1).scatter(2, dest, src)[:, :, :n].unbind(1)
        return AssignResult.from_gt_index(  # non-positives: overlap 0, target 0, weight 0 + 1
            gt_index, boxes, labels, self.num_classes, overlaps=overlaps, target_scores=target,
            weights=weights + (gt_index < 0))

    def _slots(self, points, strides, pred_scores, pred_boxes, boxes, labels, mask) -> Slots:
        """Steps 1-4 over every (gt, point) pair, static shapes: what the graph runs."""
        b, n, c = pred_scores.shape
        m = boxes.shape[1]
        # 1. p at each gt's class: rows b * C + label of the (B * C, N) class-major scores; IoU of every pair
        rows = (torch.arange(b, device=labels.device).unsqueeze(1) * c + labels).reshape(b * m)  # (B * M,)
        prob = pred_scores.transpose(1, 2).reshape(b * c, n).index_select(0, rows).reshape(b, m, n)  # (B, M, N)
        iou = _box_iou(boxes, pred_boxes)  # (B, M, N)
        # 2. + 3. the ranking key on the centre region of each real gt: u is zeroed outside, and so is q
        region = center_region(points, strides * self.center_radius, boxes) & mask.unsqueeze(2)  # (B, M, N)
        return self._top_slots(prob, iou * region)

    def _grid_levels(self, points, strides) -> tuple[float, ...] | None:
        """The FPN levels when steps 1-4 may use windows of cells: ``grid_strides`` (eager checks the points
        are that grid); without it, eager on the CPU finds them when the points form a grid, the graph None."""
        if self.grid_strides is not None:
            if checks_enabled() and not on_grid(points, strides, self.grid_strides):
                raise ValueError(f"points: grid_strides={self.grid_strides} expects the FPN grid of those levels, in "
                                 "that order, each row-major with spacing = stride (exportable.anchors' points)")
            return self.grid_strides
        return None if exporting() or points.device.type != "cpu" else grid_levels(points, strides)

    def _slots_in_windows(self, levels, points, strides, pred_scores, pred_boxes, boxes, labels, mask) -> Slots:
        """Steps 1-4 on an FPN grid: the same slots as :meth:`_slots` from a window of cells per gt and level.

        On a level of stride s the region's x-test ``cx - r < px < cx + r`` (r = ``center_radius * s``) holds
        for at most ``ceil(2 r / s)`` columns from ``floor((cx - r - x0) / s) + 1`` on: a window of
        ``w = ceil(2 * center_radius) + 2`` columns from ``floor(...)`` holds them with a cell to spare each
        side (rounding, points up to s / 4 off the grid); rows alike. The ``J = L * w * w`` cells, in point
        order (levels, rows, columns), then go through :meth:`_slots`' tests on the same values.
        """
        b, n, c = pred_scores.shape
        m, w = boxes.shape[1], math.ceil(2 * self.center_radius) + 2
        start, width, height, x0, y0 = (torch.stack(t) for t in zip(*grid_geometry(points, strides, levels)))  # (L,)
        s = torch.tensor(levels, dtype=boxes.dtype, device=boxes.device)  # (L,)
        r = s * self.center_radius  # (L,)
        cx = ((boxes[..., 0] + boxes[..., 2]) / 2).unsqueeze(-1)  # (B, M, 1) gt centres
        cy = ((boxes[..., 1] + boxes[..., 3]) / 2).unsqueeze(-1)  # (B, M, 1)
        steps = torch.arange(w, device=boxes.device)  # (w,)
        col = ((cx - r - x0) / s).floor().clamp(min=-w).minimum(width.to(s.dtype))  # (B, M, L) before the first
        row = ((cy - r - y0) / s).floor().clamp(min=-w).minimum(height.to(s.dtype))  # (B, M, L)
        col = col.to(torch.int64).unsqueeze(-1) + steps  # (B, M, L, w)
        row = row.to(torch.int64).unsqueeze(-1) + steps  # (B, M, L, w)
        ok = ((row >= 0) & (row < height.unsqueeze(-1))).unsqueeze(-1)  # (B, M, L, w, 1)
        ok = (ok & ((col >= 0) & (col < width.unsqueeze(-1))).unsqueeze(-2)).reshape(b, m, -1)  # (B, M, J)
        row = torch.minimum(row.clamp(min=0), (height - 1).clamp(min=0).unsqueeze(-1))  # (B, M, L, w) on the grid
        col = torch.minimum(col.clamp(min=0), (width - 1).unsqueeze(-1))  # (B, M, L, w)
        first = start.clamp(max=n - 1).view(-1, 1, 1)  # (L, 1, 1) an empty last level: the last point
        index = (first + row.unsqueeze(-1) * width.view(-1, 1, 1) + col.unsqueeze(-2)).reshape(b, m, -1)  # (B,M,J)
        j = index.shape[2]  # J = L * w * w cells in point order (levels, rows, columns); outside the grid: masked
        # 1. p at the gt's class (one gather per image) and IoU (one row gather), for the window's cells only
        prob = torch.gather(pred_scores.reshape(b, n * c), 1, (index * c + labels.unsqueeze(2)).reshape(b, m * j))
        prob = prob.reshape(b, m, j)  # (B, M, J)
        rows = (torch.arange(b, device=index.device).view(b, 1, 1) * n + index).reshape(-1)  # (B * M * J,)
        pred = pred_boxes.reshape(b * n, 4).index_select(0, rows).reshape(b, m, j, 4)  # (B, M, J, 4)
        gts = boxes.unsqueeze(2)  # (B, M, 1, 4)
        iou = _box_iou(gts, pred, aligned=True)  # (B, M, J) the pairwise IoU's floats
        # 2. + 3. the key on the centre region (the same test on the cells' points and radii)
        pts = points.index_select(0, index.reshape(-1)).reshape(b, m, j, 2)  # (B, M, J, 2)
        radius = r.unsqueeze(-1).expand(-1, w * w).reshape(j)  # (J,) = strides * center_radius of the cells' level
        region = ok & mask.unsqueeze(2) & _points_in_boxes(pts, gts, aligned=True)  # (B, M, J)
        region &= _points_near_centers(pts, gts, radius, aligned=True)
        return self._top_slots(prob, iou * region, index)

    def _top_slots(self, prob, iou, index=None) -> Slots:
        """Steps 2 (key) and 4 on ``(B, M, J)`` pairs (``index``: their points, None: J = N, the points)."""
        key = quality_key(prob, iou, self.alpha)  # (B, M, J) float64
        # 4. k = min(#{u > 0}, topk): the K best keys per gt, kept where rank < k
        count = (iou > 0).to(iou.dtype).sum(dim=2).to(torch.int64)  # (B, M) exact below 2^24 points
        key, pos = _topk(key, self.topk, dim=2)  # (B, M, K) best first, ties by position = by point index
        keep = rank_mask(count, pos.shape[2])  # (B, M, K) dense: a kept key-0 slot never survives (unique points)
        keep = keep if index is None else keep & (key > 0)  # windows: masked cells repeat a point, keep none
        point = pos if index is None else torch.gather(index, 2, pos)  # (B, M, K)
        return Slots(key, point, keep, torch.gather(prob, 2, pos), torch.gather(iou, 2, pos))


def _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, ceiling) -> None:
    check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    check_float("soft_ceiling", ceiling)
    check_shape("soft_ceiling", ceiling, ())
    value = float(ceiling)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"soft_ceiling: expected T in [0, 1] (0.6 -> 0.2 over training), got {value}")
