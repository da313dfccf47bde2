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
from exportable.assigners.result import IGNORED, AssignResult, empty_result
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_iof, _box_iou

__all__ = ["AnchorGtMaxIoU", "MaxIoUAssigner", "best_gts"]

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
        # 4. Anchors in an ignore region or outside anchor_mask take no part: zero-size boxes (IoU 0).
        dropped = self._in_ignore_region(anchors, ignore_boxes, ignore_mask)  # (B, N) or None
        outside = None if anchor_mask is None else ~anchor_mask  # (B, N)
        gone = outside if dropped is None else (dropped if outside is None else dropped | outside)  # (B, N)
        priors = anchors.unsqueeze(0) if gone is None else torch.where(gone.unsqueeze(2), 0.0, anchors)  # (1|B, N, 4)
        # 5. An image without a real gt: every anchor negative (in step 7), overlap 0.
        has_gt = mask.any(dim=1, keepdim=True)  # (B, 1)
        # 6. (and the gt side of 9) The best gt of each anchor; the anchors that reach each gt's best IoU.
        low_quality = None
        if self.match_low_quality:
            low_quality = LowQuality(self.min_pos_iou, self.guard_zero_iou, self.gt_max_assign_all)
        best = best_gts(priors, boxes, mask, gone, low_quality)
        max_overlaps = best.iou  # (B, N) 0 without real gts and outside anchor_mask
        if dropped is not None:  # 4. mmdetection's -1 in an ignore region (5.: 0 without gts; outside: 0)
            minus_one = dropped & has_gt if anchor_mask is None else dropped & has_gt & anchor_mask  # (B, N)
            max_overlaps = torch.where(minus_one, -1.0, max_overlaps)  # (B, N)
        # 7. Negatives; every other anchor starts ignored.
        lo, hi = self.neg_range
        negative = ~has_gt | ((max_overlaps >= lo) & (max_overlaps < hi))  # (B, N)
        gt_index = negative.to(torch.int64) + IGNORED  # (B, N) -1 negative, -2 ignored
        # 8. Positives take their best gt.
        positive = has_gt & (max_overlaps >= self.pos_iou_thr)  # (B, N)
        gt_index = _pick(positive, best.gt, gt_index)  # (B, N)
        # 9. Low-quality matches: the last gt that claims an anchor (a removed anchor is never claimed).
        if best.claim is not None:
            claimed = best.claim > 0 if gone is None else (best.claim > 0) & ~gone  # (B, N)
            gt_index = _pick(claimed, best.claim - 1, gt_index)  # (B, N)
        if outside is not None:  # anchors outside anchor_mask: ignored (their overlap is 0)
            gt_index = _pick(outside, IGNORED, gt_index)  # (B, N)
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
    """Steps 6 and 9 per anchor, each ``(B, N)``: the best IoU and the first gt reaching it (the first real gt
    when every IoU is 0), and ``claim``: 1 + the last gt whose best IoU the anchor reaches, 0 for none (step 9;
    None when it is off)."""

    iou: Tensor
    gt: Tensor
    claim: Tensor | None


BLOCK = 64
"""Anchors per block: consecutive anchors, neighbours on a grid, so a block's bounding box is small."""


def best_gts(priors: Tensor, gts: Tensor, mask: Tensor, gone: Tensor | None, low_quality: LowQuality | None) -> BestGt:
    """Steps 3, 6 and the gt side of 9, image by image: a Python loop in eager, one ONNX ``Scan`` exported.

    ``priors (1 | B, N, 4)`` with removed anchors as zero-size boxes (``gone (B, N)`` marks them, or None),
    ``gts (B, M, 4)``, ``mask (B, M)``. Memory stays near one image's pairs in both.
    """
    n = priors.shape[1]
    blocks = _blocks(priors)  # planes (1|B, 4, NB, S), lo and hi (1|B, NB, 2)
    xs = (gts, mask) if gone is None else (gts, mask, *blocks, gone)

    def one_image(x: Sequence[Tensor]) -> list[Tensor]:
        own = [t[0] for t in blocks] if gone is None else x[2:5]  # the image's blocks
        return _best_gts_one_image(*own, n, x[0], x[1], None if gone is None else x[5], low_quality)

    if _exporting():
        _, out = scan(lambda i, x: (i + 1, one_image(x)), torch.zeros((), dtype=torch.int64), xs)  # (B, N) each
    else:
        out = [torch.stack(t) for t in zip(*(one_image(x) for x in zip(*xs)))]  # (B, N) each
    return BestGt(out[0], out[1], out[2] if low_quality is not None else None)


def _blocks(priors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Blocks of S = BLOCK consecutive anchors, the last padded with zero-size boxes: coordinate planes
    ``(1|B, 4, NB, S)`` and each block's bounding box, ``lo`` (min x1, y1) and ``hi`` (max x2, y2) ``(1|B, NB, 2)``.

    Written so that the exporter keeps N symbolic: at least two blocks, built by a gather (no reshape
    splits N).
    """
    c, n, dev = priors.shape[0], priors.shape[1], priors.device
    nb = n // BLOCK + 2
    padded = torch.cat([priors, priors.new_zeros((c, 2 * BLOCK, 4))], dim=1)  # (1|B, N + 2S, 4)
    index = torch.arange(nb, device=dev).unsqueeze(1) * BLOCK + torch.arange(BLOCK, device=dev)  # (NB, S)
    blocks = padded[:, index]  # (1|B, NB, S, 4)
    return blocks.permute(0, 3, 1, 2).contiguous(), blocks[..., :2].amin(dim=2), blocks[..., 2:].amax(dim=2)


def _best_gts_one_image(planes: Tensor, lo: Tensor, hi: Tensor, n: int, gts: Tensor, mask: Tensor,
                        gone: Tensor | None, low_quality: LowQuality | None) -> list[Tensor]:
    """One image: ``planes (4, NB, S)``, ``lo, hi (NB, 2)``, ``gts (M, 4)``, ``mask (M,)``, ``gone (N,)``.

    IoU is 0 unless two boxes intersect, so only the (gt, block) pairs whose bounding boxes intersect get
    IoUs (about a tenth of all pairs at RetinaNet's sizes); every other IoU is 0. One ``NonZero`` lists
    the pairs, scatter-reductions take the maxima. Returns the best IoU, its gt and the claim, ``(N,)``.
    """
    m, nb, dev = mask.shape[0], planes.shape[1], planes.device
    meet = (gts[:, None, :2] < hi).all(dim=2) & (gts[:, None, 2:] > lo).all(dim=2) & mask.unsqueeze(1)  # (M, NB)
    gt, block = meet.nonzero(as_tuple=True)  # (P,) each: the (gt, block) pairs that can have IoU > 0
    boxes = planes.index_select(1, block).permute(1, 2, 0)  # (P, S, 4) column-major: free planes in _box_iou
    # 3. IoU of each pair's gt with its block's anchors.
    iou = _box_iou(gts.index_select(0, gt).unsqueeze(1), boxes).squeeze(1)  # (P, S)
    # 6. The best IoU of each anchor, then the first gt that reaches it: the largest M - gt there.
    rows = block.unsqueeze(1).expand(-1, BLOCK)  # (P, S)
    best = iou.new_zeros((nb, BLOCK)).scatter_reduce_(0, rows, iou, "amax")  # (NB, S)
    at_best = iou == best.index_select(0, block)  # (P, S)
    lower = torch.zeros((nb, BLOCK), dtype=torch.int64, device=dev)  # (NB, S) 0: no pair
    lower = lower.scatter_reduce_(0, rows, at_best * (m - gt).unsqueeze(1), "amax")  # (NB, S)
    keep = torch.arange(n, device=dev)  # (N,) the anchors among the padded ones
    best, first = best.flatten().index_select(0, keep), m - lower.flatten().index_select(0, keep)  # (N,) each
    out = [best, _pick(best > 0, first, mask.to(best.dtype).max(dim=0).indices)]  # all IoUs 0: first real gt
    if low_quality is None:
        return out
    # 9. gt_max: the best of the gt's pairs (0 without one). A gated gt at gt_max > 0 reaches its best
    #    anchors within its pairs; one at gt_max 0 reaches every anchor (all its IoUs are 0).
    gt_max = iou.new_zeros(m).scatter_reduce_(0, gt, iou.amax(dim=1), "amax")  # (M,)
    gate = mask & (gt_max >= low_quality.min_pos_iou)  # (M,)
    if low_quality.guard_zero_iou:
        gate = gate & (gt_max > 0)  # (M,)
    target = torch.where(gate & (gt_max > 0), gt_max, float("inf")).index_select(0, gt)  # (P,)
    hit = iou >= target.unsqueeze(1)  # (P, S) no IoU exceeds gt_max: >= is equality
    ids = torch.arange(1, m + 1, device=dev)  # (M,) 1-based
    zero = ((gate & (gt_max == 0)) * ids).amax(dim=0)  # () the last gated gt at gt_max 0; 0: none
    if low_quality.assign_all:  # a later gt wins: the largest id
        claim = torch.zeros((nb, BLOCK), dtype=torch.int64, device=dev)  # (NB, S)
        claim = claim.scatter_reduce_(0, rows, hit * (gt + 1).unsqueeze(1), "amax").flatten()  # (NB * S,)
        return out + [torch.maximum(claim.index_select(0, keep), zero)]  # (N,)
    # Only each gated gt's first anchor at gt_max (at gt_max 0: the first anchor taking part).
    size = nb * BLOCK
    before = size - block.unsqueeze(1) * BLOCK - torch.arange(BLOCK, device=dev)  # (P, S) size - anchor
    before = iou.new_zeros(m, dtype=torch.int64).scatter_reduce_(0, gt, (hit * before).amax(dim=1), "amax")  # (M,)
    claim = torch.zeros(size + 1, dtype=torch.int64, device=dev)  # (NB * S + 1,) the last: a bin for "none"
    claim = claim.scatter_reduce_(0, size - before, (before > 0) * ids, "amax")  # (NB * S + 1,)
    first_in = keep.new_zeros(()) if gone is None else (~gone).to(iou.dtype).max(dim=0).indices  # ()
    claim = claim.scatter_reduce_(0, first_in.unsqueeze(0), zero.unsqueeze(0), "amax")  # (NB * S + 1,)
    return out + [claim.index_select(0, keep)]  # (N,)


def _pick(cond: Tensor, a: Tensor | int, b: Tensor | int) -> Tensor:
    """``torch.where(cond, a, b)`` for integers as ``b + cond * (a - b)``: the same numbers, about ten
    times faster than torch 2.13's CPU ``where`` on large tensors."""
    return b + cond * (a - b)


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
        best = best_gts(anchors.unsqueeze(0), boxes, mask, None, None)
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
