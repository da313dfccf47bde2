"""ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), batched and exportable.

Shape shorthand: ``B`` images, ``N`` anchors (shared by the batch), ``M`` gts per image (padded),
``L`` FPN levels (``num_levels``, a static upper bound), ``k`` candidates per level (``topk``),
``K = L * w`` candidate slots per gt with ``w = min(k, N)``. Boxes are ``(x1, y1, x2, y2)`` in
absolute pixels, float32, ``x1 <= x2``. Returns :class:`~exportable.assigners.result.AssignResult`
(``gt_index`` 0-based, -1 negative, -2 ignored; ``labels`` = ``num_classes`` for every non-positive).

The steps are the official code's and mmdetection 3.3's ``ATSSAssigner`` (numbers as in
``docs/algorithms.md`` §8, ``lessons/atss.py`` and notebook 06):

1. ``IoU(anchor, gt)`` of the anchor BOXES (not predictions). Only the K candidates of each gt need
   it, so it is computed on the ``(B, M, K)`` candidates, never as a full ``(B, M, N)`` matrix.
2. the distance between anchor centres and gt centres, ``sqrt(dx² + dy²)`` as mmdetection writes it.
3. per level, the ``min(k, n_l)`` anchors nearest each gt centre are its candidates (``n_l`` = the
   level's anchors inside ``anchor_mask``); ties in distance go to the lower anchor index.
4. threshold ``t_g = mean + std`` of the candidates' IoUs, std **unbiased** (divisor ``n - 1``,
   ``torch.std``'s default). ONNX has no Std op: both are written out, in float64, with the candidate
   count as a tensor. A gt with a single candidate (``topk=1`` on one level) has no std
   (``torch.std`` gives NaN there and every comparison is false): it gets **no positive**, as in
   the peers; here that rule is explicit (``count >= 2``) instead of a NaN.
5. positive for g if ``IoU >= t_g`` and the anchor centre is inside g by more than 0.01 px
   (``min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01``).
6. an anchor positive for several gts goes to the one with the highest IoU among THOSE gts
   (first gt on ties).
7. everything else is negative. Anchors outside ``anchor_mask`` take no part (mmdetection assigns
   ``anchors[inside_flags]`` only): they are reported ignored (-2, weight 0).

``variant="paddle"`` is PaddleDetection's ``ATSSAssigner`` (and YOLOv6's / mmyolo's batched port):
``IoU > t_g`` (strict), centre margin ``1e-9``, and an anchor positive for several gts goes to the
argmax IoU over ALL the image's gts, even one it was never a candidate for. PaddleDetection does not
clip k to a small level (it fails); both variants clip. Explicit keywords override a variant's
defaults. With ``pred_boxes`` the positives' ``target_scores`` are ``IoU(pred_box, matched gt)``
(PP-YOLOE's soft targets for VFL) instead of 1.

``overlaps`` holds the matched gt's IoU for positives and 0 elsewhere (mmdetection fills -1e8).

How the graph stays static: the distances of other levels (and of anchors outside ``anchor_mask``) are
set to ``+inf`` and one top-k of constant width ``w`` runs per level over all N anchors (``num_levels``
top-k nodes); a slot is a real candidate iff its distance is finite, which also covers a level with
fewer than k anchors. Step 6 scatters the positives' IoUs into a ``(B, M, N + 1)`` matrix
(non-positives all write into the spare column N, so no index gets two different values) and takes the
max over gts: no scatter reduction (TensorRT and some CUDA kernels lack them). ``conflict="all_gts"``
adds the full ``(B, M, N)`` IoU for its argmax over all gts.

Eager computes the same numbers faster: image by image (one image's ``(M, n_l)`` distances stay in
cache), each level's contiguous slice when ``level_ids`` is sorted (the anchor generators' order; level
masks otherwise), and step 6 on the positive slots only, with scatter reductions (``amax`` of the IoU,
then ``amin`` of the gt index among equal IoUs), never a ``(M, N)`` matrix.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_bool,
    check_boxes,
    check_integer,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable._checks import exporting as _exporting
from exportable.assigners.result import IGNORED, NEGATIVE, AssignResult, empty_result
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_iou
from exportable.ordering import _topk

__all__ = ["ATSSAssigner", "ATSSCandidates"]

Variant = Literal["mmdet", "paddle"]
Conflict = Literal["positive_gts", "all_gts"]

_EAGER_ROWS = 160  # eager works on chunks of about this many (image, gt) rows (cache-sized blocks)

# variant -> (strict threshold test, centre margin in px, conflict rule)
_VARIANTS: dict[str, tuple[bool, float, str]] = {
    "mmdet": (False, 0.01, "positive_gts"),  # official ATSS and mmdetection 3.3
    "paddle": (True, 1e-9, "all_gts"),  # PaddleDetection, YOLOv6, mmyolo's BatchATSSAssigner
}


class ATSSAssigner(nn.Module):
    """Per-level nearest candidates, IoU threshold = mean + std of their IoUs, centre inside the gt.

    Args:
        topk: candidates per level and gt (9; clipped to the level's size).
        num_levels: static upper bound on the number of FPN levels: every ``level_ids`` value must be in
            ``[0, num_levels)``. Empty levels cost nothing in eager; each level is one top-k in a graph.
        num_classes: ``labels`` value of every non-positive anchor.
        variant: ``"mmdet"`` (official ATSS = mmdetection 3.3, the default) or ``"paddle"``
            (PaddleDetection / YOLOv6); sets the three rules below.
        strict: positive needs ``IoU > t`` instead of ``IoU >= t`` (mmdet False, paddle True).
        center_margin: the anchor centre must be inside the gt by more than this, in px
            (mmdet 0.01, paddle 1e-9).
        conflict: ``"positive_gts"`` (mmdet): an anchor positive for several gts takes the highest IoU
            among those gts; ``"all_gts"`` (paddle): the argmax IoU over all the image's gts.
    """

    def __init__(
        self,
        topk: int = 9,
        num_levels: int = 5,
        num_classes: int = 80,
        variant: Variant = "mmdet",
        *,
        strict: bool | None = None,
        center_margin: float | None = None,
        conflict: Conflict | None = None,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(_VARIANTS)}, got {variant!r}")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk: must be an int >= 1, got {topk!r}")
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels: must be an int >= 1, got {num_levels!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        v_strict, v_margin, v_conflict = _VARIANTS[variant]
        conflict = v_conflict if conflict is None else conflict
        if conflict not in ("positive_gts", "all_gts"):
            raise ValueError(f"conflict: expected 'positive_gts' or 'all_gts', got {conflict!r}")
        self.topk = int(topk)
        self.num_levels = int(num_levels)
        self.num_classes = int(num_classes)
        self.variant = variant
        self.strict = v_strict if strict is None else bool(strict)
        self.center_margin = v_margin if center_margin is None else check_scalar("center_margin", center_margin)
        self.conflict = conflict

    def extra_repr(self) -> str:
        return (f"topk={self.topk}, num_levels={self.num_levels}, num_classes={self.num_classes}, "
                f"variant={self.variant!r}, strict={self.strict}, center_margin={self.center_margin}, "
                f"conflict={self.conflict!r}")

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
        b, n = gt_boxes.shape[0], anchors.shape[0]
        if not _exporting() and n == 0:
            return empty_result(b, 0, self.num_classes, like=anchors)  # no anchors: nothing to assign
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        if _exporting():
            cand = self.candidates(anchors, level_ids, boxes, mask, anchor_mask)  # steps 1-5, (B, M', K)
            gt_index, overlaps = self.resolve(anchors, boxes, mask, cand)  # step 6, (B, N)
        else:
            # Eager: a few images at a time (about _EAGER_ROWS gts, so the (rows, n_l) distances stay in
            # cache), each level's slice, and a sparse step 6. Same numbers as the graph.
            slices = _level_slices(level_ids, self.num_levels)
            step = max(1, _EAGER_ROWS // max(boxes.shape[1], 1))
            parts = []
            for i in range(0, b, step):
                one = slice(i, i + step)
                am = None if anchor_mask is None else anchor_mask[one]
                cand = self.candidates(anchors, level_ids, boxes[one], mask[one], am, slices=slices)
                parts.append(self.resolve(anchors, boxes[one], mask[one], cand, sparse=True))
            gt_index, overlaps = (torch.cat(p) for p in zip(*parts))  # (B, N), (B, N)
        if anchor_mask is not None:  # 7. outside the valid area: no part in the loss
            gt_index = torch.where(anchor_mask, gt_index, IGNORED)  # (B, N)
        return _result(gt_index, overlaps, boxes, labels, pred_boxes, self.num_classes)

    # -- steps 2-5 ---------------------------------------------------------------------------------------

    def candidates(
        self,
        anchors: Tensor,
        level_ids: Tensor,
        boxes: Tensor,
        mask: Tensor,
        anchor_mask: Tensor | None = None,
        *,
        slices: list[tuple[int, int]] | None = None,
    ) -> ATSSCandidates:
        """Steps 2-5 for padded gts ``boxes (B, M, 4)``, ``mask (B, M)``: each gt's candidate slots.

        ``slices`` (eager only): per level ``(start, end)`` of its contiguous anchors; None = level masks.
        """
        acx = (anchors[:, 0] + anchors[:, 2]) / 2  # (N,)
        acy = (anchors[:, 1] + anchors[:, 3]) / 2  # (N,)
        gcx = ((boxes[..., 0] + boxes[..., 2]) / 2).unsqueeze(-1)  # (B, M, 1)
        gcy = ((boxes[..., 1] + boxes[..., 3]) / 2).unsqueeze(-1)  # (B, M, 1)
        k = self.topk
        # 2-3. The k nearest anchors of every level (largest -d); a slot is real iff its distance is finite.
        if slices is None:
            near = _nearness(acx, acy, gcx, gcy, anchor_mask)  # (B, M, N)
            parts = []
            for level in range(self.num_levels):
                other = (level_ids != level).unsqueeze(0).unsqueeze(0)  # (1, 1, N)
                parts.append(_topk(torch.where(other, -float("inf"), near), k, -1))  # 2 x (B, M, w)
        else:
            w = min(k, anchors.shape[0])
            parts = []
            for start, end in slices:
                sub_mask = None if anchor_mask is None else anchor_mask[:, start:end]  # (B, n_l)
                near = _nearness(acx[start:end], acy[start:end], gcx, gcy, sub_mask)  # (B, M, n_l)
                val, idx = _topk(near, k, -1)  # (B, M, min(k, n_l)) nearest first, ties by index
                idx = idx + start  # (B, M, k_l) global anchor index
                if val.shape[-1] < w:  # a level smaller than k: pad with empty slots
                    pad = w - val.shape[-1]
                    val = torch.cat([val, val.new_full((*val.shape[:-1], pad), -float("inf"))], dim=-1)  # (B, M, w)
                    idx = torch.cat([idx, idx.new_zeros((*idx.shape[:-1], pad))], dim=-1)  # (B, M, w)
                parts.append((val, idx))
        near_c = torch.cat([p[0] for p in parts], dim=-1)  # (B, M, K)
        index = torch.cat([p[1] for p in parts], dim=-1)  # (B, M, K)
        valid = (near_c > -float("inf")) & mask.unsqueeze(-1)  # (B, M, K) real candidates of real gts
        # 1. IoU of the candidates' anchor boxes with their gt, and the centres' margins (step 5).
        flat = index.reshape(-1)  # (B * M * K,)
        cand_boxes = anchors.index_select(0, flat).reshape(*index.shape, 4)  # (B, M, K, 4)
        iou = _box_iou(cand_boxes, boxes.unsqueeze(2), aligned=True)  # (B, M, K)
        ccx = acx.index_select(0, flat).reshape(index.shape)  # (B, M, K)
        ccy = acy.index_select(0, flat).reshape(index.shape)  # (B, M, K)
        x1, y1, x2, y2 = (c.unsqueeze(-1) for c in boxes.unbind(-1))  # 4 x (B, M, 1)
        margin = torch.minimum(torch.minimum(ccx - x1, ccy - y1), torch.minimum(x2 - ccx, y2 - ccy))  # (B, M, K)
        inside = margin > self.center_margin  # (B, M, K)
        # 4. mean + unbiased std over each gt's real candidates, written out in float64.
        v = valid.to(torch.float64)  # (B, M, K)
        x = iou.to(torch.float64) * v  # (B, M, K)
        count = v.sum(dim=-1, keepdim=True)  # (B, M, 1)
        mean = x.sum(dim=-1, keepdim=True) / count.clamp(min=1.0)  # (B, M, 1)
        dev = (x - mean) * v  # (B, M, K) 0 on empty slots
        var = (dev * dev).sum(dim=-1, keepdim=True) / (count - 1.0).clamp(min=1.0)  # (B, M, 1)
        threshold = mean + var.sqrt()  # (B, M, 1)
        # 5. positive: IoU against the threshold, centre inside; a single candidate has no std: none.
        passes = x > threshold if self.strict else x >= threshold  # (B, M, K)
        positive = valid & passes & inside & (count >= 2.0)  # (B, M, K)
        return ATSSCandidates(index, valid, iou, positive, threshold.squeeze(-1), count.squeeze(-1))

    # -- step 6 ------------------------------------------------------------------------------------------

    def resolve(
        self, anchors: Tensor, boxes: Tensor, mask: Tensor, cand: ATSSCandidates, *, sparse: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Step 6: one gt per anchor. Returns ``gt_index (B, N)`` (-1 negative) and ``overlaps (B, N)``.

        ``sparse=True`` (eager only) visits the positive slots alone; the default is the graph's dense form.
        """
        if sparse:
            return self._resolve_sparse(anchors, boxes, mask, cand)
        b, m = boxes.shape[:2]
        n = anchors.shape[0]
        # Positives' IoUs into a (B, M, N + 1) matrix; every non-positive slot writes -1 into column N.
        target = torch.where(cand.positive, cand.index, n)  # (B, M, K)
        values = torch.where(cand.positive, cand.iou, -1.0)  # (B, M, K)
        dense = boxes.new_full((b, m, n + 1), -1.0).scatter(2, target, values)[..., :n]  # (B, M, N)
        best, arg = dense.max(dim=1)  # (B, N), (B, N): highest IoU among the gts it is positive for
        positive = best >= 0  # (B, N)
        if self.conflict == "all_gts":
            # PaddleDetection: an anchor positive for several gts takes the argmax IoU over ALL gts.
            several = (dense >= 0).sum(dim=1) > 1  # (B, N)
            full = torch.where(mask.unsqueeze(-1), _box_iou(anchors, boxes).transpose(1, 2), -1.0)  # (B, M, N)
            top, top_arg = full.max(dim=1)  # (B, N), (B, N)
            arg = torch.where(several, top_arg, arg)  # (B, N)
            best = torch.where(several, top, best)  # (B, N)
        gt_index = torch.where(positive, arg, NEGATIVE)  # (B, N)
        overlaps = torch.where(positive, best, 0.0)  # (B, N)
        return gt_index, overlaps

    def _resolve_sparse(
        self, anchors: Tensor, boxes: Tensor, mask: Tensor, cand: ATSSCandidates
    ) -> tuple[Tensor, Tensor]:
        """Step 6 on the positive slots only (eager): scatter reductions over (image, anchor) pairs."""
        b, m = boxes.shape[:2]
        n = anchors.shape[0]
        bi, mi, ji = cand.positive.nonzero(as_tuple=True)  # (P,) each
        slot_anchor = cand.index[bi, mi, ji]  # (P,)
        slot_iou = cand.iou[bi, mi, ji]  # (P,)
        flat = bi * n + slot_anchor  # (P,) (image, anchor) pair
        best = boxes.new_full((b * n,), -1.0).scatter_reduce_(0, flat, slot_iou, "amax")  # (B * N,)
        top = slot_iou == best[flat]  # (P,) slots holding their anchor's best IoU
        arg = torch.full((b * n,), m, dtype=torch.int64, device=boxes.device)  # (B * N,)
        arg.scatter_reduce_(0, flat[top], mi[top], "amin")  # lowest gt index among equal IoUs
        if self.conflict == "all_gts":
            count = torch.zeros(b * n, dtype=torch.int64, device=boxes.device)  # (B * N,)
            count.scatter_add_(0, flat, torch.ones_like(flat))
            several = (count > 1).nonzero()[:, 0]  # (S,) pairs positive for several gts
            sb, sa = several // n, several % n  # (S,), (S,)
            iou = _box_iou(anchors[sa].unsqueeze(1), boxes[sb], aligned=True)  # (S, M) with every gt
            top_iou, top_arg = torch.where(mask[sb], iou, -1.0).max(dim=1)  # (S,), (S,)
            best[several] = top_iou
            arg[several] = top_arg
        positive = best >= 0  # (B * N,)
        gt_index = torch.where(positive, arg, NEGATIVE).reshape(b, n)  # (B, N)
        overlaps = torch.where(positive, best, 0.0).reshape(b, n)  # (B, N)
        return gt_index, overlaps


class ATSSCandidates(NamedTuple):
    """Each gt's candidate slots after steps 2-5 (``K = L * w`` slots per gt; ``B, M`` as the gts).

    A slot is empty (``valid`` False) in a level smaller than k, outside ``anchor_mask`` or for a padded gt.
    """

    index: Int[Tensor, "B M K"]  # anchor index of the slot (any index when not valid)
    valid: Bool[Tensor, "B M K"]  # a real candidate of a real gt
    iou: Float[Tensor, "B M K"]  # IoU(anchor box, gt), float32
    positive: Bool[Tensor, "B M K"]  # passes steps 4-5
    threshold: Float[Tensor, "B M"]  # mean + unbiased std of the real candidates' IoUs, float64
    count: Float[Tensor, "B M"]  # number of real candidates, float64


def _nearness(acx: Tensor, acy: Tensor, gcx: Tensor, gcy: Tensor, anchor_mask: Tensor | None) -> Tensor:
    """MINUS the centre distances ``(B, M, n)`` of anchors ``(n,)`` to gts ``(B, M, 1)``; -inf where
    ``anchor_mask`` is False. The largest-first top-k of ``-d`` is the nearest-first top-k of ``d`` with the
    same tie rule, and saves the top-k's own negation of the whole ``(M, n)`` block."""
    # Products, not square(): a graph's Pow(x, 2) may round differently from x * x on some providers.
    dx = acx - gcx  # (B, M, n)
    dy = acy - gcy  # (B, M, n)
    near = dx.mul_(dx).add_(dy.mul_(dy)).sqrt_().neg_()  # (B, M, n)
    if anchor_mask is not None:
        near = torch.where(anchor_mask.unsqueeze(1), near, -float("inf"))  # (B, M, n)
    return near


def _level_slices(level_ids: Tensor, num_levels: int) -> list[tuple[int, int]] | None:
    """Per level ``(start, end)`` when ``level_ids`` is sorted ascending (eager only); else None."""
    n = level_ids.shape[0]
    if n > 1 and not bool((level_ids[1:] >= level_ids[:-1]).all()):
        return None
    counts = torch.bincount(level_ids, minlength=num_levels).tolist()  # (L,)
    ends = torch.tensor(counts).cumsum(0).tolist()
    return [(e - c, e) for c, e in zip(counts, ends)]


def _result(
    gt_index: Tensor, overlaps: Tensor, boxes: Tensor, labels: Tensor, pred_boxes: Tensor | None, num_classes: int
) -> AssignResult:
    """Fill an AssignResult from ``gt_index (B, N)``; soft targets IoU(pred, gt) when ``pred_boxes`` is given."""
    positive = gt_index >= 0  # (B, N)
    safe = gt_index.clamp(min=0)  # (B, N) any valid row for non-positives; masked below
    matched_labels = torch.gather(labels, 1, safe)  # (B, N)
    matched_boxes = torch.gather(boxes, 1, safe.unsqueeze(-1).expand(-1, -1, 4))  # (B, N, 4)
    if pred_boxes is None:
        scores = positive.to(overlaps.dtype)  # (B, N)
    else:
        scores = torch.where(positive, _box_iou(pred_boxes, matched_boxes, aligned=True), 0.0)  # (B, N)
    return AssignResult(
        gt_index=gt_index,
        labels=torch.where(positive, matched_labels, num_classes),
        boxes=torch.where(positive.unsqueeze(-1), matched_boxes, 0.0),
        overlaps=overlaps,
        target_scores=scores,
        weights=(gt_index != IGNORED).to(overlaps.dtype),
    )


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


