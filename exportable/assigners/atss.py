"""ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), batched and exportable.

Shape shorthand: ``B`` images, ``N`` anchors (shared by the batch), ``M`` gts per image (padded), ``L`` FPN
levels (``num_levels``, a static upper bound), ``n_l`` the anchors of level ``l``, ``k`` = ``topk``, ``K`` the
candidate slots of a gt (``sum_l min(k, n_l)``). Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32,
``x1 <= x2``. Returns :class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative,
-2 ignored; ``labels`` = ``num_classes`` for every non-positive).

The steps of the paper's Algorithm 1, with the official code's and mmdetection 3.3's rules (numbers as in
``docs/algorithms.md`` §8, ``lessons/atss.py`` and notebook 06):

1. the distance ``sqrt(dx * dx + dy * dy)`` between each anchor centre and each gt centre, level by level;
2. on every level, the ``min(k, n_l)`` anchors nearest a gt are its candidates (``k = 9``; equal distances:
   the lower anchor index first). Anchors outside ``anchor_mask`` are never candidates;
3. ``IoU(anchor box, gt)`` of the candidates only: ``(B, M, K)``, never a ``(B, M, N)`` matrix;
4. the gt's threshold ``t = mean + std`` of its candidates' IoUs, the std **unbiased** (divisor: count - 1),
   written out in float64 with the candidate count as a tensor (ONNX has no Std). A gt with a single
   candidate has no std and gets no positive, as in the peers (their NaN is the rule ``count >= 2`` here);
5. a candidate is positive if ``IoU >= t`` (``strict``: ``IoU > t``) and its centre lies inside the gt by
   more than ``center_margin`` (0.01 px) on every side;
6. an anchor positive for several gts goes to the one it overlaps most among THOSE gts (the lower gt index
   on ties); ``conflict="all_gts"``: to its argmax IoU over all the image's gts;
7. every other anchor is negative. Anchors outside ``anchor_mask`` are ignored (-2, weight 0).

``overlaps`` holds the matched gt's IoU at positives and 0 elsewhere. With ``pred_boxes`` the positives'
``target_scores`` are ``IoU(pred_box, matched gt)`` (PP-YOLOE's soft targets) instead of 1.
:meth:`ATSSAssigner.paddle` is PaddleDetection's (and YOLOv6's, mmyolo's) set of rules: ``>``, margin 1e-9,
argmax over all gts.

One path for eager and the exported graph. The anchors are taken level by level (``level_ids`` in any
order): each level is one ``(B, M, n_l)`` block of distances and one top-k, and in a graph each level is a
``Slice`` whose bounds are known at run time only. Step 6 reduces over the candidate slots with two
scatter reductions (the best IoU per anchor, then the lowest gt index holding it); ``"all_gts"`` adds the
IoU of each slot's anchor with every gt, ``(B, M, K, M)``. Eager takes a few images at a time (about
``_EAGER_ROWS`` gts), so that a block of distances stays in the cache.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_bool, check_boxes, check_integer, check_scalar, check_shape, checks_enabled
from exportable._checks import exporting as _exporting
from exportable.assigners.result import IGNORED, NEGATIVE, AssignResult
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_centers, _box_iou, _points_in_boxes
from exportable.ordering import _topk

__all__ = ["ATSSAssigner"]

Conflict = Literal["positive_gts", "all_gts"]

_EAGER_ROWS = 160  # eager assigns about this many (image, gt) rows at a time: a block of distances in cache
_PADDLE = {"strict": True, "center_margin": 1e-9, "conflict": "all_gts"}  # PaddleDetection, YOLOv6, mmyolo


class ATSSAssigner(nn.Module):
    """Per-level nearest candidates, IoU threshold = mean + std of their IoUs, centre inside the gt.

    Args:
        topk: candidates per level and gt (9; clipped to the level's size).
        num_levels: static upper bound on the FPN levels: every ``level_ids`` value is in ``[0, num_levels)``.
        num_classes: ``labels`` value of every non-positive anchor.
        strict: a positive needs ``IoU > t`` instead of ``IoU >= t``.
        center_margin: the anchor centre must be inside the gt by more than this, in px.
        conflict: an anchor positive for several gts takes the highest IoU among those gts
            (``"positive_gts"``) or the argmax IoU over all the image's gts (``"all_gts"``).
        variant: a thin alias for older callers: ``"paddle"`` is :meth:`paddle`, ``"mmdet"`` the defaults;
            it takes no rule keyword (``strict``, ``center_margin``, ``conflict``) with it.
    """

    def __init__(
        self,
        topk: int = 9,
        num_levels: int = 5,
        num_classes: int = 80,
        *,
        strict: bool = False,
        center_margin: float = 0.01,
        conflict: Conflict = "positive_gts",
        variant: Literal["mmdet", "paddle"] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk: must be an int >= 1, got {topk!r}")
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels: must be an int >= 1, got {num_levels!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        if conflict not in ("positive_gts", "all_gts"):
            raise ValueError(f"conflict: expected 'positive_gts' or 'all_gts', got {conflict!r}")
        if variant not in (None, "mmdet", "paddle"):
            raise ValueError(f"variant: expected 'mmdet' or 'paddle', got {variant!r}")
        if variant == "paddle":
            if (strict, center_margin, conflict) != (False, 0.01, "positive_gts"):
                raise ValueError("variant: 'paddle' sets strict, center_margin and conflict; to change one of them "
                                 "use ATSSAssigner.paddle(...) with that keyword")
            strict, center_margin, conflict = _PADDLE["strict"], _PADDLE["center_margin"], _PADDLE["conflict"]
        self.topk = topk
        self.num_levels = num_levels
        self.num_classes = int(num_classes)
        self.strict = bool(strict)
        self.center_margin = check_scalar("center_margin", center_margin)
        self.conflict = conflict

    @classmethod
    def paddle(cls, **kwargs) -> ATSSAssigner:
        """PaddleDetection's ``ATSSAssigner`` (YOLOv6's and mmyolo's batched port): ``IoU > t``, centre margin
        1e-9, an anchor positive for several gts takes its argmax IoU over all gts. PP-YOLOE passes
        ``pred_boxes`` (IoU soft targets). PaddleDetection fails on a level smaller than k; here k is clipped."""
        return cls(**_PADDLE | kwargs)

    def extra_repr(self) -> str:
        return (f"topk={self.topk}, num_levels={self.num_levels}, num_classes={self.num_classes}, "
                f"strict={self.strict}, center_margin={self.center_margin}, conflict={self.conflict!r}")

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        level_ids: Int[Tensor, " N"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        anchor_mask: Bool[Tensor, "B N"] | None = None,
        pred_boxes: Float[Tensor, "B N 4"] | None = None,
    ) -> AssignResult:
        if checks_enabled():
            _check_inputs(anchors, level_ids, gt_boxes, gt_labels, gt_mask, anchor_mask, pred_boxes, self.num_levels,
                          self.num_classes)
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        levels = _levels(level_ids, self.num_levels)  # L x (n_l,) anchor indices
        if _exporting():
            gt_index, overlaps = self._assign(anchors, levels, boxes, mask, anchor_mask)  # (B, N), (B, N)
        else:  # the same function on a few images at a time (chunks never change a result)
            b = boxes.shape[0]
            step = max(1, _EAGER_ROWS // boxes.shape[1])
            parts = [self._assign(anchors, levels, boxes[i : i + step], mask[i : i + step],
                                 None if anchor_mask is None else anchor_mask[i : i + step])
                     for i in range(0, max(b, 1), step)]
            gt_index, overlaps = (torch.cat(p) for p in zip(*parts))  # (B, N), (B, N)
        if anchor_mask is not None:  # 7. outside the valid area: no part in the loss
            gt_index = torch.where(anchor_mask, gt_index, IGNORED)  # (B, N)
        result = AssignResult.from_gt_index(gt_index, boxes, labels, self.num_classes, overlaps=overlaps)
        if pred_boxes is not None:  # soft targets: how well each positive's prediction already fits its gt
            scores = _box_iou(pred_boxes, result.boxes, aligned=True)  # (B, N)
            result = result._replace(target_scores=torch.where(result.positive, scores, 0.0))
        return result

    def _assign(
        self,
        anchors: Float[Tensor, "N 4"],
        levels: tuple[Int[Tensor, " n_l"], ...],
        boxes: Float[Tensor, "B M 4"],
        mask: Bool[Tensor, "B M"],
        anchor_mask: Bool[Tensor, "B N"] | None = None,
    ) -> tuple[Int[Tensor, "B N"], Float[Tensor, "B N"]]:
        """Steps 1-6 for padded gts ``boxes``, ``mask`` (at least one row) and the anchor indices of each level
        (:func:`_levels`). Returns ``gt_index`` (-1 negative; ``anchor_mask`` is not applied) and ``overlaps``."""
        b, m = mask.shape
        n = anchors.shape[0]
        acx, acy = _box_centers(anchors).unbind(-1)  # (N,), (N,)
        gcx, gcy = _box_centers(boxes).unsqueeze(-2).unbind(-1)  # (B, M, 1), (B, M, 1)
        near, index = [], []
        for level in levels:  # (n_l,) the level's anchor indices
            # 1. distances to the level's anchors, negated: the k largest of -d are the k nearest, ties by index.
            #    An anchor outside anchor_mask gets an infinitely far centre. Products, not square(): a graph's
            #    Pow(x, 2) may round differently from x * x.
            ax = acx.index_select(0, level)  # (n_l,)
            if anchor_mask is not None:
                ax = torch.where(anchor_mask.index_select(1, level), ax, torch.inf).unsqueeze(1)  # (B, 1, n_l)
            dx = ax - gcx  # (B, M, n_l)
            dy = acy.index_select(0, level) - gcy  # (B, M, n_l)
            neg_d = dx.mul_(dx).add_(dy.mul_(dy)).sqrt_().neg_()  # (B, M, n_l)
            # 2. the level's min(k, n_l) nearest anchors; a slot at -inf (outside anchor_mask) is no candidate
            val, idx = _topk(neg_d, self.topk, -1)  # (B, M, k_l) nearest first
            near.append(val)
            index.append(level.index_select(0, idx.reshape(-1)).reshape(idx.shape))  # (B, M, k_l) anchor index
        near, index = torch.cat(near, dim=-1), torch.cat(index, dim=-1)  # (B, M, K), (B, M, K)
        valid = (near > -torch.inf) & mask.unsqueeze(-1)  # (B, M, K) real candidates of real gts
        # 3. IoU of the candidates' anchor boxes with their gt
        flat = index.reshape(-1)  # (B * M * K,)
        cand_boxes = anchors.index_select(0, flat).reshape(*index.shape, 4)  # (B, M, K, 4)
        iou = _box_iou(cand_boxes, boxes.unsqueeze(2), aligned=True)  # (B, M, K)
        # 4. threshold = mean + unbiased std over each gt's real candidates, in float64
        v = valid.to(torch.float64)  # (B, M, K)
        x = iou.to(torch.float64) * v  # (B, M, K)
        count = v.sum(dim=-1, keepdim=True)  # (B, M, 1)
        mean = x.sum(dim=-1, keepdim=True) / count.clamp(min=1.0)  # (B, M, 1)
        dev = (x - mean) * v  # (B, M, K) 0 on empty slots
        var = (dev * dev).sum(dim=-1, keepdim=True) / (count - 1.0).clamp(min=1.0)  # (B, M, 1)
        threshold = mean + var.sqrt()  # (B, M, 1)
        # 5. above the threshold, the centre inside the gt; a single candidate has no std: no positive
        passes = x > threshold if self.strict else x >= threshold  # (B, M, K)
        centres = torch.stack([acx.index_select(0, flat), acy.index_select(0, flat)], -1)  # (B * M * K, 2)
        inside = _points_in_boxes(centres.reshape(*index.shape, 2), boxes.unsqueeze(2), margin=self.center_margin,
                                  aligned=True)  # (B, M, K)
        positive = valid & passes & inside & (count >= 2.0)  # (B, M, K)
        # 6. one gt per anchor: the best IoU over its positive slots, then the lowest gt index holding it.
        #    Scatter reductions over the B * N (image, anchor) pairs; other slots write into a spare pair B * N.
        pair = index + torch.arange(b, device=index.device).reshape(b, 1, 1) * n  # (B, M, K)
        pair = torch.where(positive, pair, b * n).reshape(-1)  # (B * M * K,)
        pos_iou = torch.where(positive, iou, -1.0).reshape(-1)  # (B * M * K,)
        best = iou.new_full((b * n + 1,), -1.0).scatter_reduce(0, pair, pos_iou, "amax")  # (B * N + 1,)
        gt = torch.arange(m, device=index.device).reshape(1, m, 1).expand(index.shape).reshape(-1)  # (B * M * K,)
        holds = torch.where(pos_iou == best.gather(0, pair), pair, b * n)  # (B * M * K,) slots with the best IoU
        arg = pair.new_full((b * n + 1,), m).scatter_reduce(0, holds, gt, "amin")[: b * n].reshape(b, n)  # (B, N)
        best = best[: b * n].reshape(b, n)  # (B, N)
        if self.conflict == "all_gts":  # PaddleDetection: positive for several gts -> argmax IoU over ALL gts
            hits = pair.new_zeros((b * n + 1,)).scatter_add(0, pair, torch.ones_like(pair))  # (B * N + 1,)
            several = hits[: b * n].reshape(b, n) > 1  # (B, N) positive for several gts
            # each slot's anchor against every gt: (B, M, K, M), less than a full (B, N, M) while M < N / K
            every = _box_iou(cand_boxes, boxes.unsqueeze(1))  # (B, M, K, M)
            top, top_gt = torch.where(mask.reshape(b, 1, 1, m), every, -1.0).max(dim=-1)  # (B, M, K) real gts only
            # all slots of one anchor hold the same values: the scatters just place them
            top = iou.new_full((b * n + 1,), -1.0).scatter_reduce(0, pair, top.reshape(-1), "amax")  # (B * N + 1,)
            top_gt = pair.new_full((b * n + 1,), m).scatter_reduce(0, pair, top_gt.reshape(-1), "amin")  # (B*N+1,)
            best = torch.where(several, top[: b * n].reshape(b, n), best)  # (B, N)
            arg = torch.where(several, top_gt[: b * n].reshape(b, n), arg)  # (B, N)
        matched = best >= 0  # (B, N) positive for at least one gt
        return torch.where(matched, arg, NEGATIVE), torch.where(matched, best, 0.0)


def _levels(level_ids: Int[Tensor, " N"], num_levels: int) -> tuple[Int[Tensor, " n_l"], ...]:
    """The anchor indices of each level, in anchor order: ``num_levels`` tensors ``(n_l,)``.

    One sort of unique keys (level, then anchor index), so no tie rule is needed. The sizes ``n_l`` are
    data: eager reads them (one host sync), a graph slices with bounds known at run time."""
    n = level_ids.shape[0]
    keys = level_ids * n + torch.arange(n, device=level_ids.device)  # (N,) unique
    order = torch.sort(keys).indices  # (N,) level by level
    levels = torch.arange(num_levels, device=level_ids.device).unsqueeze(1)  # (L, 1)
    sizes = (level_ids == levels).sum(dim=1).tolist()  # L ints
    levels, start = [], 0
    for size in sizes:
        torch._check(size >= 0)
        levels.append(order[start : start + size])  # (n_l,)
        start = start + size
    torch._check(start == n)
    return tuple(levels)


def _check_inputs(anchors, level_ids, gt_boxes, gt_labels, gt_mask, anchor_mask, pred_boxes, num_levels,
                  num_classes) -> None:
    check_boxes("anchors", anchors, ndim=2)
    check_integer("level_ids", level_ids)
    n = anchors.shape[0]
    check_shape("level_ids", level_ids, (n,))
    if n and (int(level_ids.min()) < 0 or int(level_ids.max()) >= num_levels):
        raise ValueError(
            f"level_ids: values must be in [0, num_levels={num_levels}), got [{int(level_ids.min())}, "
            f"{int(level_ids.max())}]"
        )
    check_gt_batch(gt_boxes, gt_labels, gt_mask, num_classes=num_classes)
    b = gt_boxes.shape[0]
    if anchor_mask is not None:
        check_bool("anchor_mask", anchor_mask)
        check_shape("anchor_mask", anchor_mask, (b, n))
    if pred_boxes is not None:
        check_boxes("pred_boxes", pred_boxes, ndim=3)
        check_shape("pred_boxes", pred_boxes, (b, n, 4))
