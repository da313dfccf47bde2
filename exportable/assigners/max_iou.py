"""MaxIoU assignment (RPN, RetinaNet, the R-CNN head): each anchor takes the gt it overlaps most.

Shape shorthand: ``B`` images, ``N`` anchors (shared by the batch), ``M`` gts per image (padded),
``K`` ignore boxes per image (padded), ``S`` anchors per block, ``NB`` blocks, ``P`` (gt, block) pairs.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``. Returns
:class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative, -2 ignored;
``labels`` = ``num_classes`` for every non-positive).

The steps are mmdetection 3.3's ``MaxIoUAssigner``, numbered as in ``docs/algorithms.md`` §4.1 (steps 1
and 2, moving big cases to the CPU and jittering duplicate gts, are not reproduced). For each image:

3. ``IoU(gt, anchor)``, for the pairs that can overlap: the anchors come in blocks of S = 64 consecutive
   ones (neighbours on a grid) and only the (gt, block) pairs whose bounding boxes intersect get IoUs.
   Every other IoU is 0 (:mod:`exportable.box_pairs`). Padded gts take no part.
4. Anchors whose IoF with a real ignore box is ``> ignore_iof_thr`` (over the anchor's area by default)
   and anchors outside ``anchor_mask`` take no part: their IoUs count as 0, and they come back ignored
   with overlap -1 (ignore regions, as mmdetection) or 0 (outside ``anchor_mask``).
5. An image without a real gt: every anchor is negative, overlap 0.
6. Per anchor its best IoU ``max_overlaps`` and the first gt reaching it (the first real gt when every
   IoU is 0); per gt its best IoU ``gt_max``.
7. Negatives: ``0 <= max_overlaps < neg_iou_thr`` (``lo <= max_overlaps < hi`` for a pair).
8. Positives: ``max_overlaps >= pos_iou_thr`` take their best gt (over step 7).
9. Low-quality matches: visiting the gts in order, every gt with ``gt_max >= min_pos_iou`` takes the
   anchors whose IoU with it equals ``gt_max`` (all ties; with ``gt_max_assign_all=False`` the first),
   over steps 7-8 and over earlier gts: the last gt that claims an anchor wins.
10. Each positive's gt class and box (:meth:`AssignResult.from_gt_index`).

The quirk of step 9 is kept on purpose (it is what mmdetection trains with): with ``min_pos_iou = 0``
a gt whose best IoU is 0 (far from every anchor, or zero-area) takes every anchor whose IoU with it is 0,
nearly all of them. ``guard_zero_iou=True`` also requires ``gt_max > 0``.

How it runs: one function does steps 3-9 for one image; eager calls it image by image in a Python loop,
the exported graph runs it in one ONNX ``Scan`` over the images, so both hold one image's pairs at a
time (about a tenth of its ``(M, N)`` IoUs at RetinaNet's sizes). Steps 6 and 9 are scatter-reductions
over the pairs; the big ones reduce whole ``(S,)`` rows (:func:`exportable.scatter.rows_amax`, one ONNX
``ScatterND`` with reduction ``max``, not an element-by-element ``ScatterElements``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_bool, check_boxes, check_masked_boxes, check_scalar, check_shape, checks_enabled
from exportable._checks import exporting as _exporting
from exportable.assigners.result import IGNORED, AssignResult, empty_result
from exportable.batching import check_gt_batch, ensure_gt_rows, in_image_chunks
from exportable.box_pairs import BLOCK, AnchorBlocks, Pairs, anchor_blocks, overlapping_pairs
from exportable.boxes import _box_iof
from exportable.scatter import rows_amax

__all__ = ["AnchorGtMaxIoU", "MaxIoUAssigner"]


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

    def _assign(self, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor,
                anchor_mask: Tensor | None = None, ignore_boxes: Tensor | None = None,
                ignore_mask: Tensor | None = None) -> AssignResult:
        """:meth:`forward` without the input checks (for modules that checked their inputs)."""
        b, n = gt_boxes.shape[0], anchors.shape[0]
        if not _exporting() and (n == 0 or b == 0):
            return empty_result(b, n, self.num_classes, like=anchors)  # nothing to assign
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M, 4), (B, M), (B, M) M >= 1
        blocks = anchor_blocks(anchors)  # once for the batch
        xs = [boxes, mask] + ([] if anchor_mask is None else [anchor_mask])  # scanned over the images
        ignoring = self.ignore_iof_thr > 0 and ignore_boxes is not None and ignore_mask is not None
        if ignoring:
            ign, _, ign_mask = ensure_gt_rows(ignore_boxes, None, ignore_mask)  # (B, K, 4), (B, K) K >= 1
            xs += [ign, ign_mask]

        def one_image(gts: Tensor, real: Tensor, *rest: Tensor) -> tuple[Tensor, Tensor]:
            inside = rest[0] if anchor_mask is not None else None  # (N,)
            return self._assign_image(anchors, blocks, gts, real, inside, rest[-2:] if ignoring else None)

        gt_index, overlaps = per_image(one_image, xs)  # (B, N) each
        # 10. Each positive's gt class and box.
        return AssignResult.from_gt_index(gt_index, boxes, labels, self.num_classes, overlaps=overlaps)

    def _assign_image(self, anchors: Tensor, blocks: AnchorBlocks, gts: Tensor, mask: Tensor,
                      inside: Tensor | None, ignore: Sequence[Tensor] | None) -> tuple[Tensor, Tensor]:
        """Steps 3-9 for one image: ``gts (M, 4)``, ``mask (M,)``, ``inside (N,)`` or None, ``ignore`` =
        ``(boxes (K, 4), mask (K,))`` or None. Returns ``gt_index`` and ``overlaps``, ``(N,)`` each."""
        m = gts.shape[0]
        # 3. IoU of the (gt, block) pairs whose bounding boxes intersect; every other IoU is 0.
        pairs = overlapping_pairs(blocks, gts, mask)
        # 4. Anchors in an ignore region or outside anchor_mask take no part: their IoUs count as 0.
        dropped = None if ignore is None else self._in_ignore_region(anchors, *ignore)  # (N,)
        outside = None if inside is None else ~inside  # (N,)
        gone = outside if dropped is None else (dropped if outside is None else dropped | outside)  # (N,)
        if gone is not None:
            kept = torch.cat([~gone, gone.new_zeros(2 * BLOCK)]).index_select(0, pairs.slot.flatten())  # (P * S,)
            pairs = pairs._replace(iou=pairs.iou * kept.view_as(pairs.iou))  # (P, S)
        # 5. An image without a real gt: every anchor negative (in step 7), overlap 0.
        has_gt = mask.any()  # ()
        # 6. Per anchor its best IoU and the first gt reaching it; per gt its best IoU.
        max_overlaps, argmax = best_per_anchor(pairs, blocks, mask)  # (N,) each
        if dropped is not None:  # mmdetection's -1 for the anchors of ignore regions (not without gts)
            minus_one = dropped & has_gt if inside is None else dropped & has_gt & inside  # (N,)
            max_overlaps = torch.where(minus_one, -1.0, max_overlaps)  # (N,)
        pair_max = pairs.iou.amax(dim=1)  # (P,) each pair's best IoU
        gt_max = gts.new_zeros(m).scatter_reduce_(0, pairs.gt, pair_max, "amax")  # (M,) 0: no pair
        # 7. Negatives; every other anchor starts ignored.
        lo, hi = self.neg_range
        negative = ~has_gt | ((max_overlaps >= lo) & (max_overlaps < hi))  # (N,)
        gt_index = negative.to(torch.int64) + IGNORED  # (N,) -1 negative, -2 ignored
        # 8. Positives take their best gt.
        gt_index = _pick(has_gt & (max_overlaps >= self.pos_iou_thr), argmax, gt_index)  # (N,)
        # 9. Low-quality matches: the last gt that claims an anchor (a removed anchor is never claimed).
        if self.match_low_quality:
            gate = mask & (gt_max >= self.min_pos_iou)  # (M,)
            if self.guard_zero_iou:
                gate = gate & (gt_max > 0)  # (M,)
            claim = _claims(pairs, pair_max, blocks, gt_max, gate, gone, self.gt_max_assign_all)  # (N,) 1 + gt, 0
            claimed = claim > 0 if gone is None else (claim > 0) & ~gone  # (N,)
            gt_index = _pick(claimed, claim - 1, gt_index)  # (N,)
        if outside is not None:  # anchors outside anchor_mask: ignored (their overlap is 0)
            gt_index = _pick(outside, IGNORED, gt_index)  # (N,)
        return gt_index, max_overlaps

    def _in_ignore_region(self, anchors: Tensor, ignore_boxes: Tensor, ignore_mask: Tensor) -> Tensor:
        """Step 4: ``(N,)`` True where an anchor's IoF with a real ignore box ``(K, 4)`` is ``> ignore_iof_thr``."""
        if self.ignore_wrt_candidates:
            iof = _box_iof(anchors, ignore_boxes)  # (N, K) inter / area(anchor)
        else:
            iof = _box_iof(ignore_boxes, anchors).transpose(0, 1)  # (N, K) inter / area(ignore box)
        iof = torch.where(ignore_mask, iof, -1.0)  # (N, K) padding never ignores
        return iof.amax(dim=1) > self.ignore_iof_thr  # (N,)


def best_per_anchor(pairs: Pairs, blocks: AnchorBlocks, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Step 6, anchor side: each anchor's best IoU and the first gt reaching it (the largest ``M - gt``),
    the first real gt when every IoU is 0; ``(N,)`` each."""
    m, (nb, s), iou = mask.shape[0], blocks.index.shape, pairs.iou
    best = rows_amax(iou.new_zeros((nb, s)), pairs.block, iou)  # (NB, S)
    at_best = iou == best.index_select(0, pairs.block)  # (P, S)
    lower = torch.zeros((nb, s), dtype=torch.int64, device=iou.device)  # (NB, S) 0: no pair
    lower = rows_amax(lower, pairs.block, at_best * (m - pairs.gt).unsqueeze(1))  # (NB, S)
    n = blocks.keep.shape[0]  # N: the real anchors are the first N slots
    best, first = best.flatten()[:n], m - lower.flatten()[:n]  # (N,) each
    return best, _pick(best > 0, first, mask.to(best.dtype).max(dim=0).indices)  # (N,) each


def _claims(pairs: Pairs, pair_max: Tensor, blocks: AnchorBlocks, gt_max: Tensor, gate: Tensor,
            gone: Tensor | None, assign_all: bool) -> Tensor:
    """Step 9: ``(N,)`` 1 + the last gated gt that claims each anchor, 0 for none. A gated gt at
    ``gt_max > 0`` reaches its best anchors within its pairs (no IoU exceeds ``gt_max``: ``>=`` is equality),
    so only the few pairs whose best IoU ``pair_max (P,)`` reaches their gt's are looked at; a gated gt at
    ``gt_max`` 0 reaches every anchor (all its IoUs are 0)."""
    m, (nb, s), dev = gate.shape[0], blocks.index.shape, gt_max.device
    target = torch.where(gate & (gt_max > 0), gt_max, float("inf")).index_select(0, pairs.gt)  # (P,)
    some = (pair_max >= target).nonzero().squeeze(1)  # (H,) the pairs holding their gt's best IoU
    gt, target = pairs.gt.index_select(0, some), target.index_select(0, some)  # (H,) each
    hit = pairs.iou.index_select(0, some) >= target.unsqueeze(1)  # (H, S)
    ids = torch.arange(1, m + 1, device=dev)  # (M,) 1-based
    zero = ((gate & (gt_max == 0)) * ids).amax(dim=0)  # () the last gated gt at gt_max 0; 0: none
    if assign_all:  # every tie; a later gt wins: the largest id (pair p's slots are block p's row)
        claim = torch.zeros((nb, s), dtype=torch.int64, device=dev)  # (NB, S) 0: none
        claim = rows_amax(claim, pairs.block.index_select(0, some), hit * (gt + 1).unsqueeze(1))  # (NB, S)
        return torch.maximum(claim.flatten()[: blocks.keep.shape[0]], zero)  # (N,) the first N slots
    claim = torch.zeros(nb * s + 1, dtype=torch.int64, device=dev)  # (NB * S + 1,) the last: a bin for "none"
    # Only each gated gt's first anchor at gt_max (at gt_max 0: the first anchor taking part).
    first = (nb * s + hit * (pairs.slot.index_select(0, some) - nb * s)).amin(dim=1)  # (H,) first hit
    first = torch.full_like(ids, nb * s).scatter_reduce_(0, gt, first, "amin")  # (M,) NB * S: none
    claim = claim.scatter_reduce_(0, first, ids, "amax")  # (NB * S + 1,) the bin takes the gts without a hit
    first_in = ids.new_zeros(()) if gone is None else (~gone).to(gt_max.dtype).max(dim=0).indices  # ()
    claim = claim.scatter_reduce_(0, first_in.unsqueeze(0), zero.unsqueeze(0), "amax")  # (NB * S + 1,)
    return claim[: blocks.keep.shape[0]]  # (N,) the first N slots


def per_image(fn: Callable[..., tuple[Tensor, ...]], xs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``fn`` on each image's unbatched slice of ``xs`` (each ``(B, ...)``), outputs stacked to ``(B, ...)``:
    :func:`~exportable.batching.in_image_chunks` one image at a time (a Python loop in eager, one ONNX ``Scan``
    when exporting)."""

    def one(*batched: Tensor) -> tuple[Tensor, ...]:  # (1, ...) slices -> (1, ...) outputs
        return tuple(y.unsqueeze(0) for y in fn(*(x.squeeze(0) for x in batched)))

    return in_image_chunks(one, 1, *xs)


def _pick(cond: Tensor, a: Tensor | int, b: Tensor | int) -> Tensor:
    """``torch.where(cond, a, b)`` for integers: the same numbers, about ten times faster in torch 2.13 (CPU)."""
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
        blocks = anchor_blocks(anchors)

        def one_image(gts: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
            pairs = overlapping_pairs(blocks, gts, real)  # 3.
            best, first = best_per_anchor(pairs, blocks, real)  # 6. (N,) each
            return best, _pick(real.any(), first, -1)  # (N,) each; -1 without a real gt

        best, argmax = per_image(one_image, [boxes, mask])  # (B, N) each
        return best, argmax


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
