"""MaxIoU assignment (RPN, RetinaNet, the R-CNN head), batched and exportable.

Shape shorthand: ``B`` images, ``N`` anchors (shared by the batch), ``M`` gts per image (padded),
``K`` ignore boxes per image (padded). Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32,
``x1 <= x2``. Returns :class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based,
-1 negative, -2 ignored; ``labels`` = ``num_classes`` for every non-positive).

The steps are mmdetection 3.3's ``MaxIoUAssigner`` (numbers as in ``docs/algorithms.md`` §4):

3. ``overlaps = IoU(anchors, gts)``; padded gts never win (-1).
4. ignore regions: anchors whose IoF with an ignore box is ``> ignore_iof_thr`` get their whole
   row set to -1 (IoF w.r.t. the anchor by default, ``ignore_wrt_candidates=False``: the box);
   anchors outside ``anchor_mask`` are treated the same way and reported as ignored.
5. an image without real gts: every (valid) anchor is negative, overlaps 0.
6. ``max_overlaps, argmax`` over gts per anchor (first gt on ties); ``gt_max`` per gt.
7. negatives: ``0 <= max_overlaps < neg_iou_thr`` (or ``lo <= max_overlaps < hi``).
8. positives: ``max_overlaps >= pos_iou_thr`` -> ``argmax``.
9. low-quality matches: for every gt with ``gt_max >= min_pos_iou`` the anchors whose IoU equals
   ``gt_max`` exactly (all ties with ``gt_max_assign_all``, else the first) become positive for
   that gt, visiting gts in order so a LATER gt overwrites an earlier one and step 8. Batched,
   "visit in order, later wins" is "the highest gt index among the hits": one masked max over M,
   no per-gt loop.

The quirk of step 9 kept on purpose (mmdetection's numbers): with ``min_pos_iou = 0`` (RetinaNet) a
gt whose best IoU is 0 (far from every anchor, or zero-area) has ``gt_max = 0 >= 0`` and takes
every anchor whose IoU with it is 0 — nearly all of them. ``guard_zero_iou=True`` requires
``gt_max > 0`` for a low-quality match and avoids it (off by default, as in mmdetection).

Eager runs image by image (peak memory about one image's N x M); the exported graph is batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_bool, check_boxes, check_masked_boxes, check_scalar, check_shape, checks_enabled
from exportable._checks import exporting as _exporting
from exportable.assigners.result import IGNORED, NEGATIVE, AssignResult, empty_result
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_iof, _box_iou

__all__ = ["MaxIoUAssigner"]


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
        self.min_pos_iou = check_scalar("min_pos_iou", min_pos_iou)
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
        if not _exporting() and gt_boxes.shape[0] > 1:
            # Eager: one image at a time keeps peak memory near one image's (N, M). Same numbers.
            parts = [
                self._assign(
                    anchors, gt_boxes[i : i + 1], gt_labels[i : i + 1], gt_mask[i : i + 1],
                    None if anchor_mask is None else anchor_mask[i : i + 1],
                    None if ignore_boxes is None else ignore_boxes[i : i + 1],
                    None if ignore_mask is None else ignore_mask[i : i + 1],
                )
                for i in range(gt_boxes.shape[0])
            ]
            return AssignResult(*(torch.cat(fields) for fields in zip(*parts)))
        return self._assign(anchors, gt_boxes, gt_labels, gt_mask, anchor_mask, ignore_boxes, ignore_mask)

    def _assign(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        anchor_mask: Tensor | None,
        ignore_boxes: Tensor | None,
        ignore_mask: Tensor | None,
    ) -> AssignResult:
        b, n = gt_boxes.shape[0], anchors.shape[0]
        if not _exporting() and n == 0:
            return empty_result(b, 0, self.num_classes, like=anchors)  # no anchors: nothing to assign
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        m = boxes.shape[1]
        export = _exporting()
        # 3. IoU of every gt with every anchor, kept (B, M', N) as mmdetection keeps (M, N): both
        #    reductions below then run over contiguous memory or whole rows. Padding never wins.
        overlaps = _box_iou(boxes, anchors)  # (B, M', N)
        if export or not bool(mask.all()):
            overlaps = torch.where(mask.unsqueeze(2), overlaps, -1.0)  # (B, M', N)
        # 4. Ignored anchors (ignore regions) and anchors outside the image's valid area: column -> -1.
        dropped = None
        if self.ignore_iof_thr > 0 and ignore_boxes is not None:
            ign, _, ign_mask = ensure_gt_rows(ignore_boxes, None, ignore_mask)  # (B, K', 4), (B, K')
            if self.ignore_wrt_candidates:
                iof = _box_iof(anchors, ign)  # (B, N, K') inter / area(anchor)
            else:
                iof = _box_iof(ign, anchors).transpose(1, 2)  # (B, N, K') inter / area(ignore box)
            iof = torch.where(ign_mask.unsqueeze(1), iof, -1.0)  # (B, N, K')
            dropped = iof.amax(dim=2) > self.ignore_iof_thr  # (B, N)
        outside = None if anchor_mask is None else ~anchor_mask  # (B, N)
        if dropped is not None or outside is not None:
            gone = dropped if outside is None else (outside if dropped is None else dropped | outside)  # (B, N)
            overlaps = torch.where(gone.unsqueeze(1), -1.0, overlaps)  # (B, M', N)
        # 6. Best gt per anchor (first on ties) and best anchor IoU per gt.
        max_overlaps, argmax = overlaps.max(dim=1)  # (B, N), (B, N)
        gt_max = overlaps.amax(dim=2)  # (B, M')
        # 7. Negatives, 8. positives (overwrite), everything else ignored.
        lo, hi = self.neg_range
        negative = (max_overlaps >= lo) & (max_overlaps < hi)  # (B, N)
        positive = max_overlaps >= self.pos_iou_thr  # (B, N)
        gt_index = torch.where(positive, argmax, torch.where(negative, NEGATIVE, IGNORED))  # (B, N)
        # 9. Low-quality matches; a later gt overwrites an earlier one: the highest index wins.
        if self.match_low_quality:
            gate = mask & (gt_max >= self.min_pos_iou)  # (B, M')
            if self.guard_zero_iou:
                gate = gate & (gt_max > 0)
            # A gate-closed gt gets a target no IoU can equal (NaN), so it never hits.
            target = torch.where(gate, gt_max, float("nan")).unsqueeze(2)  # (B, M', 1)
            if self.gt_max_assign_all:
                hit = overlaps == target  # (B, M', N) every tie of the gt's best
            else:
                best_anchor = overlaps.argmax(dim=2, keepdim=True)  # (B, M', 1) first anchor on ties
                hit = (torch.arange(n, device=anchors.device) == best_anchor) & (target == target)  # (B, M', N)
            gt_ids = torch.arange(1, m + 1, device=anchors.device, dtype=overlaps.dtype)  # (M',) 1-based, float
            last = (hit.to(overlaps.dtype) * gt_ids[None, :, None]).amax(dim=1)  # (B, N) 0 = no hit
            gt_index = torch.where(last > 0, last.to(torch.int64) - 1, gt_index)  # (B, N)
        # 5. An image without real gts: all (valid) anchors negative, overlaps 0 (mmdetection's early exit).
        has_gt = mask.any(dim=1, keepdim=True)  # (B, 1)
        gt_index = torch.where(has_gt, gt_index, NEGATIVE)  # (B, N)
        max_overlaps = torch.where(has_gt, max_overlaps, 0.0)  # (B, N)
        # Anchors outside the valid area take no part: ignored, overlap 0.
        if outside is not None:
            gt_index = torch.where(outside, IGNORED, gt_index)  # (B, N)
            max_overlaps = torch.where(outside, 0.0, max_overlaps)  # (B, N)
        return _result(gt_index, max_overlaps, boxes, labels, self.num_classes)


def _result(gt_index: Tensor, overlaps: Tensor, boxes: Tensor, labels: Tensor, num_classes: int) -> AssignResult:
    """Fill an AssignResult from ``gt_index (B, N)``; hard targets (1 for positives)."""
    positive = gt_index >= 0  # (B, N)
    safe = gt_index.clamp(min=0)  # (B, N) any valid row for non-positives; masked below
    matched_labels = torch.gather(labels, 1, safe)  # (B, N)
    matched_boxes = torch.gather(boxes, 1, safe.unsqueeze(-1).expand(-1, -1, 4))  # (B, N, 4)
    return AssignResult(
        gt_index=gt_index,
        labels=torch.where(positive, matched_labels, num_classes),
        boxes=torch.where(positive.unsqueeze(-1), matched_boxes, 0.0),
        overlaps=overlaps,
        target_scores=positive.to(overlaps.dtype),
        weights=(gt_index != IGNORED).to(overlaps.dtype),
    )


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
