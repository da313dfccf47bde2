"""MaxIoU assignment (RPN, RetinaNet, the R-CNN head): each anchor takes the gt it overlaps most.

Shape shorthand: ``B`` images, ``N`` anchors (shared by the batch), ``M`` gts per image (padded),
``K`` ignore boxes per image (padded), ``R`` gts visited in one step. Boxes are ``(x1, y1, x2, y2)`` in
absolute pixels, float32, ``x1 <= x2``. Returns :class:`~exportable.assigners.result.AssignResult`
(``gt_index`` 0-based, -1 negative, -2 ignored; ``labels`` = ``num_classes`` for every non-positive).

The steps are mmdetection 3.3's ``MaxIoUAssigner``, numbered as in ``docs/algorithms.md`` §4:

3. ``IoU(gt, anchor)`` for every pair. Padded gts count as zero-size boxes: IoU 0 with every anchor.
4. Anchors whose IoF with an ignore box is ``> ignore_iof_thr`` (over the anchor's area by default) and
   anchors outside ``anchor_mask`` take no part: they count as zero-size boxes too, and come back
   ignored with overlap -1 (ignore regions, as mmdetection) or 0 (outside ``anchor_mask``).
5. An image without a real gt: every anchor is negative, overlap 0.
6. Per anchor its best gt (``max_overlaps``; the first gt on ties); per gt its best IoU ``gt_max``.
7. Negatives: ``0 <= max_overlaps < neg_iou_thr`` (``lo <= max_overlaps < hi`` for a pair).
8. Positives: ``max_overlaps >= pos_iou_thr`` take their best gt (over step 7).
9. Low-quality matches: visiting the gts in order, every gt with ``gt_max >= min_pos_iou`` takes the
   anchors whose IoU with it equals ``gt_max`` (all ties; with ``gt_max_assign_all=False`` the first),
   over steps 7-8 and over earlier gts: the last gt that claims an anchor wins.

The quirk of step 9 is kept on purpose (it is what mmdetection trains with): with ``min_pos_iou = 0``
a gt whose best IoU is 0 (far from every anchor, or zero-area) takes every anchor whose IoU with it is 0,
nearly all of them. ``guard_zero_iou=True`` also requires ``gt_max > 0``.

How it runs: steps 3, 6 and the gt side of step 9 visit the gts in order, a few rows of the ``(M, N)``
IoU matrix at a time (:func:`visit_gts`), so the matrix never exists whole: a row holds every anchor,
so each gt's ``gt_max`` is final when its row is visited. Eager loops in Python, image by image, with
``R`` gts per step so that a step's tensors stay near 1 MB (in cache); the exported graph is one ONNX
``Scan`` over the gts, one gt per iteration for the whole batch. Both run the same step function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan

from exportable._checks import check_bool, check_boxes, check_masked_boxes, check_scalar, check_shape, checks_enabled
from exportable._checks import exporting as _exporting
from exportable.assigners.result import IGNORED, NEGATIVE, AssignResult, empty_result
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_iof, _box_iou

__all__ = ["AnchorGtMaxIoU", "MaxIoUAssigner", "visit_gts"]

STEP_PAIRS = 1 << 18
"""Eager: about this many (gt, anchor) pairs per step (``R = STEP_PAIRS // N`` gts, at least 1)."""


class MaxIoUAssigner(nn.Module):
    """Assign each anchor to the gt it overlaps most, with thresholds and low-quality matches.

    Args:
        pos_iou_thr: positive if the best IoU is ``>=`` this (RetinaNet 0.5, RPN 0.7, R-CNN 0.5).
        neg_iou_thr: negative if the best IoU is in ``[0, neg_iou_thr)``, or in ``[lo, hi)`` for a
            ``(lo, hi)`` pair (RetinaNet 0.4, RPN 0.3, R-CNN 0.5). Anchors in between are ignored.
        min_pos_iou: a gt's best anchor(s) become positive only if their IoU is ``>=`` this
            (RetinaNet 0, RPN 0.3, R-CNN 0.5 with ``match_low_quality=False``).
        gt_max_assign_all: low-quality matches take every anchor tied at the gt's best IoU.
        ignore_iof_thr: anchors overlapping an ignore box by IoF ``>`` this are ignored
            (``<= 0``: off, mmdetection's -1).
        ignore_wrt_candidates: IoF over the anchor's area (True) or the ignore box's area.
        match_low_quality: step 9 on or off.
        num_classes: ``labels`` value of every non-positive anchor.
        guard_zero_iou: require ``gt_max > 0`` for a low-quality match (see the module docstring).
    """

    def __init__(
        self,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float | Sequence[float] = 0.4,
        min_pos_iou: float = 0.0,
        gt_max_assign_all: bool = True,
        ignore_iof_thr: float = -1.0,
        ignore_wrt_candidates: bool = True,
        match_low_quality: bool = True,
        num_classes: int = 80,
        guard_zero_iou: bool = False,
    ) -> None:
        super().__init__()
        self.pos_iou_thr = check_scalar("pos_iou_thr", pos_iou_thr)
        if isinstance(neg_iou_thr, (int, float)):
            self.neg_range = (0.0, check_scalar("neg_iou_thr", neg_iou_thr))
        elif isinstance(neg_iou_thr, Sequence) and len(neg_iou_thr) == 2:
            lo, hi = (check_scalar("neg_iou_thr", v) for v in neg_iou_thr)
            if lo > hi:
                raise ValueError(f"neg_iou_thr: expected (low, high) with low <= high, got {tuple(neg_iou_thr)}")
            self.neg_range = (lo, hi)
        else:
            raise TypeError(f"neg_iou_thr: expected a float or a (low, high) pair, got {neg_iou_thr!r}")
        self.min_pos_iou = check_scalar("min_pos_iou", min_pos_iou, low=0.0)
        self.gt_max_assign_all = bool(gt_max_assign_all)
        self.ignore_iof_thr = check_scalar("ignore_iof_thr", ignore_iof_thr)
        self.ignore_wrt_candidates = bool(ignore_wrt_candidates)
        self.match_low_quality = bool(match_low_quality)
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.guard_zero_iou = bool(guard_zero_iou)

    @classmethod
    def retinanet(cls, **kwargs) -> MaxIoUAssigner:
        """RetinaNet's settings: 0.5 / 0.4, ``min_pos_iou`` 0, low-quality matches on."""
        return cls(**{"pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0.0} | kwargs)

    @classmethod
    def rpn(cls, **kwargs) -> MaxIoUAssigner:
        """mmdetection's RPN: 0.7 / 0.3, ``min_pos_iou`` 0.3, one class."""
        return cls(**{"pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3, "num_classes": 1} | kwargs)

    @classmethod
    def rcnn(cls, **kwargs) -> MaxIoUAssigner:
        """The R-CNN head: 0.5 / 0.5 / 0.5, no low-quality matches."""
        base = {"pos_iou_thr": 0.5, "neg_iou_thr": 0.5, "min_pos_iou": 0.5, "match_low_quality": False}
        return cls(**base | kwargs)

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        anchor_mask: Bool[Tensor, "B N"] | None = None,
        ignore_boxes: Float[Tensor, "B K 4"] | None = None,
        ignore_mask: Bool[Tensor, "B K"] | None = None,
    ) -> AssignResult:
        if checks_enabled():
            _check_inputs(anchors, gt_boxes, gt_labels, gt_mask, anchor_mask, ignore_boxes, ignore_mask,
                          self.num_classes)
        return self._assign(anchors, gt_boxes, gt_labels, gt_mask, anchor_mask, ignore_boxes, ignore_mask)

    def _assign(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        anchor_mask: Tensor | None = None,
        ignore_boxes: Tensor | None = None,
        ignore_mask: Tensor | None = None,
    ) -> AssignResult:
        """:meth:`forward` without the input checks (for modules that checked their inputs)."""
        b, n = gt_boxes.shape[0], anchors.shape[0]
        if not _exporting() and n == 0:
            return empty_result(b, 0, self.num_classes, like=anchors)  # no anchors: nothing to assign
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M, 4), (B, M), (B, M) M >= 1
        # 3. Padded gts become zero-size boxes: IoU 0 with every anchor (never above a real gt's).
        gts = torch.where(mask.unsqueeze(2), boxes, 0.0)  # (B, M, 4)
        # 4. Anchors in an ignore region or outside anchor_mask become zero-size boxes too.
        dropped = self._in_ignore_region(anchors, ignore_boxes, ignore_mask)  # (B, N) or None
        outside = None if anchor_mask is None else ~anchor_mask  # (B, N)
        gone = outside if dropped is None else (dropped if outside is None else dropped | outside)  # (B, N)
        priors = anchors.unsqueeze(0) if gone is None else torch.where(gone.unsqueeze(2), 0.0, anchors)  # (1|B, N, 4)
        # 5. An image without a real gt: every anchor negative (below, in step 7), overlap 0.
        has_gt = mask.any(dim=1, keepdim=True)  # (B, 1)
        # 6. (and the gt side of 9) The best gt of each anchor; the anchors that reach each gt's best IoU.
        low_quality = None
        if self.match_low_quality:
            low_quality = LowQuality(self.min_pos_iou, self.guard_zero_iou, self.gt_max_assign_all)
        best = visit_gts(priors, gts, mask, low_quality)
        max_overlaps = best.iou if dropped is None else torch.where(dropped, -1.0, best.iou)  # (B, N) 4.: -1
        # 7. Negatives (every anchor of an image without real gts); everything else starts ignored.
        lo, hi = self.neg_range
        negative = ~has_gt | ((max_overlaps >= lo) & (max_overlaps < hi))  # (B, N)
        gt_index = torch.where(negative, NEGATIVE, IGNORED)  # (B, N)
        # 8. Positives take their best gt.
        positive = has_gt & (max_overlaps >= self.pos_iou_thr)  # (B, N)
        gt_index = torch.where(positive, best.gt, gt_index)  # (B, N)
        # 9. Low-quality matches: the last gt that claims an anchor (a removed anchor is never claimed).
        if best.claim is not None:
            claimed = best.claim > 0 if gone is None else (best.claim > 0) & ~gone  # (B, N)
            gt_index = torch.where(claimed, best.claim - 1, gt_index)  # (B, N)
        max_overlaps = torch.where(has_gt, max_overlaps, 0.0)  # (B, N) 5.
        if outside is not None:  # anchors outside anchor_mask: ignored, overlap 0
            gt_index = torch.where(outside, IGNORED, gt_index)  # (B, N)
            max_overlaps = torch.where(outside, 0.0, max_overlaps)  # (B, N)
        return AssignResult.from_gt_index(gt_index, boxes, labels, self.num_classes, overlaps=max_overlaps)

    def _in_ignore_region(
        self, anchors: Tensor, ignore_boxes: Tensor | None, ignore_mask: Tensor | None
    ) -> Tensor | None:
        """Step 4: ``(B, N)`` True where an anchor's IoF with a real ignore box is ``> ignore_iof_thr``."""
        if self.ignore_iof_thr <= 0 or ignore_boxes is None or ignore_mask is None:
            return None
        ign, _, ign_mask = ensure_gt_rows(ignore_boxes, None, ignore_mask)  # (B, K, 4), (B, K) K >= 1
        if self.ignore_wrt_candidates:
            iof = _box_iof(anchors, ign)  # (B, N, K) inter / area(anchor)
        else:
            iof = _box_iof(ign, anchors).transpose(1, 2)  # (B, N, K) inter / area(ignore box)
        iof = torch.where(ign_mask.unsqueeze(1), iof, -1.0)  # (B, N, K) padding never ignores
        return iof.amax(dim=2) > self.ignore_iof_thr  # (B, N)


class LowQuality(NamedTuple):
    """Step 9's settings: the ``gt_max`` gate, ``guard_zero_iou`` and ``gt_max_assign_all``."""

    min_pos_iou: float
    guard_zero_iou: bool
    assign_all: bool


class BestGt(NamedTuple):
    """What :func:`visit_gts` returns, each ``(B, N)``: the best IoU and gt of each anchor (first gt on
    ties; the image's first real gt when every IoU is 0), and step 9's ``claim``: 1 + the last gt whose
    best IoU the anchor reaches, 0 for none (None when step 9 is off)."""

    iou: Tensor
    gt: Tensor
    claim: Tensor | None


def visit_gts(priors: Tensor, gts: Tensor, mask: Tensor, low_quality: LowQuality | None) -> BestGt:
    """Steps 3, 6 and the gt side of 9: visit the gts in order, a few IoU rows ``(R, N)`` at a time.

    ``priors (1 | B, N, 4)``, ``gts (B, M, 4)`` and ``mask (B, M)``; padded gts and removed anchors are
    zero-size boxes already (IoU 0). Eager: image by image, ``R = STEP_PAIRS // N`` gts per step;
    exported: one ONNX ``Scan`` over the gts (``R = 1``) for the whole batch. Same numbers.
    """
    b, m = mask.shape
    n = priors.shape[1]
    # (max, not argmax: the exporter would name an ArgMax node "argmax", a graph output's name elsewhere)
    first_real = mask.to(priors.dtype).max(dim=1, keepdim=True).indices  # (B, 1) 0 without real gts
    state = [priors.new_zeros((b, n)), first_real.expand(b, n).contiguous()]  # best IoU, best gt: (B, N)
    if low_quality is not None:
        state.append(torch.zeros((b, n), dtype=torch.int64, device=priors.device))  # claim (B, N)
    ids = torch.arange(m, device=priors.device)  # (M,)
    if _exporting():
        def one_gt(carry, row):
            g, real, i = row  # (B, 4), (B,), ()
            return _step(carry, priors, g.unsqueeze(1), real.unsqueeze(1), i.unsqueeze(0), low_quality), ()

        state, _ = scan(one_gt, state, (gts.transpose(0, 1), mask.transpose(0, 1), ids))  # over (M, ...)
    else:
        # The column-major view makes _box_iou's coordinate planes free (no copy per step).
        priors = priors.transpose(1, 2).contiguous().transpose(1, 2)  # (1|B, N, 4) strides (4N, 1, N)
        r = max(1, STEP_PAIRS // max(n, 1))
        parts = []
        for k in range(b):
            p = priors[k : k + 1] if priors.shape[0] > 1 else priors  # (1, N, 4)
            s = [t[k : k + 1] for t in state]  # (1, N) each
            for j in range(0, m, r):
                s = _step(s, p, gts[k : k + 1, j : j + r], mask[k : k + 1, j : j + r], ids[j : j + r], low_quality)
            parts.append(s)
        state = [torch.cat(t) for t in zip(*parts)]  # (B, N) each
    return BestGt(state[0], state[1], state[2] if low_quality is not None else None)


def _step(state: Sequence[Tensor], priors: Tensor, g: Tensor, real: Tensor, ids: Tensor,
          low_quality: LowQuality | None) -> list[Tensor]:
    """One visit: gts ``g (B, R, 4)`` with ``real (B, R)`` and indices ``ids (R,)`` against every prior."""
    best, arg = state[0], state[1]  # (B, N), (B, N)
    # 3. This step's rows of the IoU matrix.
    iou = _box_iou(g, priors)  # (B, R, N)
    # 6. A later gt takes an anchor over only with a strictly larger IoU: the first gt wins ties.
    row_best, row_arg = iou.max(dim=1)  # (B, N), (B, N) first row on ties
    better = row_best > best  # (B, N)
    out = [torch.where(better, row_best, best), torch.where(better, row_arg + ids[0], arg)]
    if low_quality is None:
        return out
    # 9. A row holds every anchor, so each visited gt's best IoU is final: gate it, find who reaches it.
    gt_max, gt_argmax = iou.max(dim=2)  # (B, R), (B, R) first anchor on ties
    gate = real & (gt_max >= low_quality.min_pos_iou)  # (B, R)
    if low_quality.guard_zero_iou:
        gate = gate & (gt_max > 0)  # (B, R)
    if low_quality.assign_all:  # no IoU exceeds gt_max: >= is equality; a closed gate asks for +inf
        hit = iou >= torch.where(gate, gt_max, float("inf")).unsqueeze(2)  # (B, R, N)
    else:  # only the first anchor at gt_max
        anchor_ids = torch.arange(iou.shape[2], device=iou.device)  # (N,)
        hit = (anchor_ids == gt_argmax.unsqueeze(2)) & gate.unsqueeze(2)  # (B, R, N)
    claim = torch.where(hit, ids.view(1, -1, 1) + 1, 0).amax(dim=1)  # (B, N) 1 + the last hit row, 0 none
    out.append(torch.maximum(state[2], claim))  # later gts have larger ids: the last claim wins
    return out


class AnchorGtMaxIoU(nn.Module):
    """``forward(anchors (N, 4), gt_boxes (B, M, 4), gt_mask (B, M)) -> (max_overlaps, argmax)``, both (B, N).

    MaxIoU's steps 3 and 6 alone: IoU of the shared anchors against each image's padded gts, then per
    anchor the best REAL gt (padding, ``gt_mask = False``, never wins): ``max_overlaps`` float (0 when the
    image has no real gt) and ``argmax`` int64 (index into the image's M gts; the lowest index among equal
    IoUs; -1 when the image has no real gt). Boxes are ``(x1, y1, x2, y2)``. M = 0 and all-padding images
    work in eager and in ONNX.
    """

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_mask: Bool[Tensor, "B M"],
    ) -> tuple[Float[Tensor, "B N"], Int[Tensor, "B N"]]:
        if checks_enabled():
            check_boxes("anchors", anchors, ndim=2)
            check_masked_boxes("gt_boxes", gt_boxes, gt_mask)
        boxes, _, mask = ensure_gt_rows(gt_boxes, None, gt_mask)  # (B, M, 4), (B, M) M >= 1
        gts = torch.where(mask.unsqueeze(2), boxes, 0.0)  # (B, M, 4) padding: IoU 0
        best = visit_gts(anchors.unsqueeze(0), gts, mask, None)
        has_gt = mask.any(dim=1, keepdim=True)  # (B, 1)
        return torch.where(has_gt, best.iou, 0.0), torch.where(has_gt, best.gt, -1)  # (B, N), (B, N)


def _check_inputs(anchors, gt_boxes, gt_labels, gt_mask, anchor_mask, ignore_boxes, ignore_mask,
                  num_classes) -> None:
    check_boxes("anchors", anchors, ndim=2)
    check_gt_batch(gt_boxes, gt_labels, gt_mask, num_classes=num_classes)
    b, n = gt_boxes.shape[0], anchors.shape[0]
    if anchor_mask is not None:
        check_bool("anchor_mask", anchor_mask)
        check_shape("anchor_mask", anchor_mask, (b, n))
    if (ignore_boxes is None) != (ignore_mask is None):
        raise ValueError("ignore_boxes and ignore_mask: give both or neither")
    if ignore_boxes is not None:
        check_masked_boxes("ignore_boxes", ignore_boxes, ignore_mask, "ignore_mask")
        if ignore_boxes.shape[0] != b:
            raise ValueError(f"ignore_boxes: batch {ignore_boxes.shape[0]} does not match gt_boxes' {b}")
