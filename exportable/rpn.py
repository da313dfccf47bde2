"""Faster R-CNN's region proposal network: anchor targets and proposals, batched and exportable.

Shape shorthand::

    B   images in a batch
    N   anchors of all levels, shared by the batch (single-level Faster R-CNN: H * W * 9)
    M   gts per image (padded; ``gt_mask`` marks the real ones)
    L   FPN levels (mmdetection's per-level proposals)
    K   candidates kept by a static top-k (pre-NMS), P proposals kept per image (post-NMS, static)

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; ``image_sizes (B, 2)``
int64 rows are ``(H, W)``. Names follow simple-faster-rcnn (``AnchorTargetCreator``,
``ProposalCreator``); the readable per-image references are :mod:`lessons.rpn_anchor_targets` and
:mod:`lessons.proposals_and_nms`. Where the peers call them:

=====================  ==============================================  ================================================
here                   torchvision                                     mmdetection
=====================  ==============================================  ================================================
AnchorTargetCreator    ``RegionProposalNetwork.assign_targets_to_      ``RPNHead.get_targets`` (``AnchorHead``:
                       anchors`` + ``fg_bg_sampler``                   MaxIoUAssigner + RandomSampler)
ProposalCreator        ``RegionProposalNetwork.filter_proposals``      ``RPNHead._predict_by_feat_single``
=====================  ==============================================  ================================================

Randomness is an input: ``noise (B, N)`` uniform in ``[0, 1)``; within each class the anchors
with the largest noise are sampled (:mod:`exportable.sampling`). Objectness is a PROBABILITY per
anchor ``(B, N)`` (the document's 18 = 2 x 9 softmax channels reduce to the foreground column).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import exportable.nms  # noqa: F401  (registers torch.ops.assignlab.nms)
from exportable._checks import (
    check_boxes,
    check_float,
    check_image_sizes,
    check_integer,
    check_masked_boxes,
    check_scalar,
    check_shape,
    checks_enabled,
    exporting,
)
from exportable.assigners.max_iou import MaxIoUAssigner, per_image
from exportable.batching import ensure_gt_rows
from exportable.boxes import _box_iou
from exportable.coders import DeltaXYWHCoder
from exportable.ordering import _topk
from exportable.sampling import _sample_by_noise, check_noise, check_sampler_params

__all__ = [
    "RPNTargets",
    "AnchorTargetCreator",
    "Proposals",
    "IndexedProposals",
    "ProposalCreator",
    "anchor_inside",
]

RPNVariant = Literal["faster_rcnn", "mmdet"]
Mode = Literal["train", "test"]


# ---------------------------------------------------------------------------------------------------------
# Inside test


def anchor_inside(
    anchors: Float[Tensor, "N 4"],
    image_sizes: Int[Tensor, "B 2"],
    allowed_border: float = 0.0,
    inclusive: bool = True,
) -> Bool[Tensor, "B N"]:
    """Which anchors lie inside each image, grown by ``allowed_border`` pixels: ``(B, N)`` bool.

    ``x1 >= -b, y1 >= -b`` and on the far side ``x2 <= W + b, y2 <= H + b`` (``inclusive=True``,
    simple-faster-rcnn's ``_get_inside_index`` in continuous coordinates) or ``x2 < W + b`` (strict:
    mmdetection's ``anchor_inside_flags``; py-faster-rcnn writes ``<`` too, but on its "+1" pixel
    indices, where ``x2 = W - 1`` is the last pixel: that is the inclusive test in continuous
    coordinates). ``allowed_border < 0`` keeps every anchor (mmdetection's RPN: -1).
    """
    b, n = image_sizes.shape[0], anchors.shape[0]
    if allowed_border < 0:
        return torch.ones((b, n), dtype=torch.bool, device=anchors.device)  # (B, N)
    sizes = image_sizes.to(anchors.dtype)  # (B, 2)
    h = sizes[:, 0:1]  # (B, 1)
    w = sizes[:, 1:2]  # (B, 1)
    lo = -float(allowed_border)
    x1, y1, x2, y2 = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]  # (N,) each
    near = (x1 >= lo) & (y1 >= lo)  # (N,)
    if inclusive:
        far = (x2.unsqueeze(0) <= w + allowed_border) & (y2.unsqueeze(0) <= h + allowed_border)  # (B, N)
    else:
        far = (x2.unsqueeze(0) < w + allowed_border) & (y2.unsqueeze(0) < h + allowed_border)  # (B, N)
    return near.unsqueeze(0) & far  # (B, N)


# ---------------------------------------------------------------------------------------------------------
# Anchor targets


class RPNTargets(NamedTuple):
    """What :class:`AnchorTargetCreator` returns, each over ALL anchors (the document's "unmap").

    - ``labels (B, N)`` int64: 1 sampled positive, 0 sampled negative, -1 everything else (not
      sampled, between the thresholds, outside the image).
    - ``bbox_targets (B, N, 4)``: DeltaXYWH ``(dx, dy, dw, dh)`` of the anchor's gt (``faster_rcnn``:
      every inside anchor of an image with gts, as simple-faster-rcnn computes them; ``mmdet``: the
      sampled positives only); 0 elsewhere.
    - ``bbox_weights (B, N, 4)``: 1 for the sampled positives (the only box-loss terms), 0 elsewhere.
    - ``matched_gt (B, N)`` int64: the gt (0-based, in the padded axis) a sampled positive regresses
      to; -1 for every other anchor.
    """

    labels: Tensor
    bbox_targets: Tensor
    bbox_weights: Tensor
    matched_gt: Tensor


_TARGET_DEFAULTS: dict[str, dict[str, float | bool]] = {
    # simple-faster-rcnn: no gate on the low-quality rule, inside test x2 <= W (continuous coordinates)
    "faster_rcnn": {"min_pos_iou": 0.0, "allowed_border": 0.0, "inclusive": True},
    # mmdetection's RPN: MaxIoU min_pos_iou 0.3, every anchor takes part (allowed_border -1)
    "mmdet": {"min_pos_iou": 0.3, "allowed_border": -1.0, "inclusive": False},
}


class AnchorTargetCreator(nn.Module):
    """RPN anchor targets: labels 1 / 0 / -1, sampled by ``noise``, DeltaXYWH targets, over all anchors.

    ``forward(anchors (N, 4), gt_boxes (B, M, 4), gt_mask (B, M), image_sizes (B, 2), noise (B, N))``
    returns :class:`RPNTargets`.

    ``variant="faster_rcnn"`` (the document's and simple-faster-rcnn's ``AnchorTargetCreator`` order,
    docs/algorithms.md section 5):

    1. keep the anchors inside the image (``allowed_border`` 0, far side ``x2 <= W`` inclusive);
    2. IoU of the inside anchors with the image's real gts; per anchor the max and argmax (first gt on
       ties), per gt its best IoU;
    3. labels start at -1; ``max IoU < neg_iou_thr`` -> 0;
    4. every anchor tied at a gt's best IoU -> 1 (all ties; NO gate: a gt that overlaps no inside anchor
       has best IoU 0 and turns every zero-IoU anchor positive, simple-faster-rcnn's and
       py-faster-rcnn's behaviour; ``min_pos_iou > 0`` adds mmdetection's gate);
    5. ``max IoU >= pos_iou_thr`` -> 1;
    6. sample: at most ``int(num * pos_fraction)`` = 128 positives, negatives fill up to ``num`` = 256;
       unsampled -> -1;
    7. ``bbox_targets = encode(anchor, gt of the anchor's ARGMAX)`` for every inside anchor (a
       low-quality positive regresses to its own argmax gt, not necessarily the gt it was best for),
       means 0, stds 1;
    8. unmap to all anchors: label -1 and targets 0 outside the image.

    ``variant="mmdet"`` (mmdetection's ``RPNHead``): :class:`~exportable.assigners.max_iou.MaxIoUAssigner`
    with 0.7 / 0.3 / ``min_pos_iou`` 0.3 (low-quality matches gated and matched to the gt they are best
    for, a later gt overwriting an earlier one), every anchor taking part (``allowed_border=-1``; with
    ``allowed_border >= 0`` the far side is strict as mmdetection's ``anchor_inside_flags``), then
    ``RandomSampler(num=256, pos_fraction=0.5, neg_pos_ub=-1)`` by noise; targets for sampled
    positives only. The two variants give the same labels when the same anchors take part (e.g.
    ``variant="faster_rcnn", allowed_border=-1``) and every gt's best IoU is ``>= min_pos_iou``; the
    matched gt differs where a low-quality positive's argmax gt is not the gt it is best for.

    An image without real gts: every inside anchor is negative (256 of them sampled), targets 0 (the
    peers need at least one gt). ``M = 0`` works (a masked row is appended inside). A zero-size gt
    encodes to ``-inf`` (no eps, as mmdetection and simple-faster-rcnn); weight your loss with
    ``bbox_weights`` via ``where``, not a product.

    Args:
        variant: ``"faster_rcnn"`` or ``"mmdet"``; selects the defaults below marked "variant".
        num: anchors sampled per image (256).
        pos_fraction: at most ``int(num * pos_fraction)`` positives (0.5 -> 128).
        pos_iou_thr, neg_iou_thr: 0.7 and 0.3.
        min_pos_iou: gate of the low-quality rule (variant: 0 / 0.3).
        allowed_border: pixels an anchor may stick out (variant: 0 / -1 = no inside test).
        inclusive: far side ``x2 <= W + b`` (True) or ``x2 < W + b`` (variant: True / False).
        neg_pos_ub: mmdetection's negative cap relative to positives (-1 off).
        means, stds: DeltaXYWH normalisation (RPN: 0 and 1).
    """

    def __init__(
        self,
        variant: RPNVariant = "faster_rcnn",
        *,
        num: int = 256,
        pos_fraction: float = 0.5,
        pos_iou_thr: float = 0.7,
        neg_iou_thr: float = 0.3,
        min_pos_iou: float | None = None,
        allowed_border: float | None = None,
        inclusive: bool | None = None,
        neg_pos_ub: float = -1,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        if variant not in _TARGET_DEFAULTS:
            raise ValueError(f"variant: expected 'faster_rcnn' or 'mmdet', got {variant!r}")
        defaults = _TARGET_DEFAULTS[variant]
        self.variant: RPNVariant = variant
        check_sampler_params(num, pos_fraction)
        self.num = num
        self.pos_fraction = float(pos_fraction)
        self.pos_iou_thr = check_scalar("pos_iou_thr", pos_iou_thr)
        self.neg_iou_thr = check_scalar("neg_iou_thr", neg_iou_thr)
        self.min_pos_iou = check_scalar("min_pos_iou", defaults["min_pos_iou"] if min_pos_iou is None else min_pos_iou)
        self.allowed_border = check_scalar(
            "allowed_border", defaults["allowed_border"] if allowed_border is None else allowed_border
        )
        self.inclusive = bool(defaults["inclusive"] if inclusive is None else inclusive)
        self.neg_pos_ub = check_scalar("neg_pos_ub", neg_pos_ub)
        self.coder = DeltaXYWHCoder(means=means, stds=stds)
        self.assigner = MaxIoUAssigner.rpn(
            pos_iou_thr=self.pos_iou_thr, neg_iou_thr=self.neg_iou_thr, min_pos_iou=self.min_pos_iou
        )

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_mask: Bool[Tensor, "B M"],
        image_sizes: Int[Tensor, "B 2"],
        noise: Float[Tensor, "B N"],
    ) -> RPNTargets:
        if checks_enabled():
            _check_target_inputs(anchors, gt_boxes, gt_mask, image_sizes, noise)
        if self.variant == "faster_rcnn":
            return self._faster_rcnn(anchors, gt_boxes, gt_mask, image_sizes, noise)
        return self._mmdet(anchors, gt_boxes, gt_mask, image_sizes, noise)

    def _faster_rcnn(self, anchors: Tensor, gt_boxes: Tensor, gt_mask: Tensor, image_sizes: Tensor,
                     noise: Tensor) -> RPNTargets:
        if (anchors.shape[0] == 0 or gt_boxes.shape[0] == 0) and not exporting():
            return _empty_targets(noise)  # no anchors or no images (eager only): nothing to label
        boxes, _, mask = ensure_gt_rows(gt_boxes, None, gt_mask)  # (B, M', 4), (B, M') M' >= 1
        # 1. anchors inside the image
        inside = anchor_inside(anchors, image_sizes, self.allowed_border, self.inclusive)  # (B, N)
        # 2., 4. and 7. image by image over its inside anchors: max / argmax IoU, ties at a gt's best, targets
        max_ious, argmax_ious, best, bbox_targets = self._inside_anchors(anchors, boxes, mask, inside)
        # 3. negatives first, so that positives can clobber them
        neg = inside & (max_ious < self.neg_iou_thr)  # (B, N) images without gts: max -1, all negative
        # 4. (best) each gt's best anchor(s), every tie, gated by min_pos_iou (0: no gate)
        # 5. above the positive threshold
        pos = inside & (best | (max_ious >= self.pos_iou_thr))  # (B, N)
        # 6. sample at most 128 positives and 256 in total by noise
        sample = _sample_by_noise(pos, neg & ~pos, noise, self.num, self.pos_fraction, self.neg_pos_ub)
        labels = _labels(sample.pos, sample.neg)  # (B, N)
        # 8. unmap (done per image): outside anchors keep label -1 (never sampled) and targets 0
        matched_gt = torch.where(sample.pos, argmax_ious, -1)  # (B, N)
        return RPNTargets(labels, bbox_targets, _weights(sample.pos, bbox_targets), matched_gt)

    def _inside_anchors(self, anchors: Tensor, boxes: Tensor, mask: Tensor, inside: Tensor) -> tuple[Tensor, ...]:
        """Steps 2, 4 (the ties) and 7, image by image over the image's inside anchors only: eager loops over
        the images in Python, the exported graph runs one ONNX ``Scan`` whose body lists them with ``NonZero``.

        Returns ``max_ious (B, N)`` (-1 where the anchor is outside or the image has no real gt),
        ``argmax_ious (B, N)`` (the first gt on ties; 0 where ``max_ious`` is -1), ``best (B, N)`` (the
        anchor ties the best IoU of a real gt over the inside anchors, gated by ``min_pos_iou``) and
        ``bbox_targets (B, N, 4)`` (every inside anchor against its argmax gt in an image with real gts; 0
        elsewhere). At 600 x 1000 only 8,044 of 21,546 anchors lie inside, so an image's ``(M, N_i)`` IoUs
        are a third of its dense ``(M, N)``, one image's worth at a time (in cache), in the gt-major layout
        whose per-anchor reductions run along contiguous rows; only inside anchors are encoded.

        No reduction is ever empty. Padded gts get IoU -1, below every IoU (so they never win, and an image
        without real gts has max -1), and M >= 1 (:func:`~exportable.batching.ensure_gt_rows`). A zero-size
        stand-in anchor at ``(0, 0)`` ends every image's list: its IoU with any gt is 0, no more than a real
        gt's best over the inside anchors (IoUs are >= 0), so it changes no gt's best, and the per-gt
        reductions have a column even in an image without inside anchors; its results are dropped before
        the scatter back to all N anchors (distinct indices: a scatter without reduction, exact). The IoUs
        are the same float32 numbers as a dense ``(B, N, M)`` computation (elementwise the same formula), so
        maxima, first-gt argmaxes and exact ties agree.
        """
        n, dev = anchors.shape[0], anchors.device
        listed = torch.cat([anchors, anchors.new_zeros((1, 4))])  # (N + 1, 4) the last: the stand-in
        stand_in = torch.full((1,), n, dtype=torch.int64, device=dev)  # (1,) its index

        def one_image(gts: Tensor, real: Tensor, ins: Tensor) -> tuple[Tensor, ...]:
            idx = ins.nonzero().squeeze(1)  # (N_i,) the inside anchors, in order
            k = idx.shape[0]
            some = listed.index_select(0, torch.cat([idx, stand_in]))  # (N_i + 1, 4) then the stand-in
            ious = torch.where(real.unsqueeze(1), _box_iou(gts, some), -1.0)  # (M, N_i + 1) padded gts: -1
            # 2. per anchor its best IoU and the first gt reaching it; per gt its best IoU
            mx, am = ious.max(dim=0)  # (N_i + 1,) each
            gt_max = ious.amax(dim=1, keepdim=True)  # (M, 1)
            # 4. ties at a gated gt's best: no IoU is above its row's best, so a tie is a difference of
            # exactly 0 (two different finite floats never subtract to 0), one max over gts instead of a
            # compare, an and and an any; padded and ungated gts compare with +inf and never tie
            level = torch.where(real.unsqueeze(1) & (gt_max >= self.min_pos_iou), gt_max, torch.inf)  # (M, 1)
            hit = (ious - level).amax(dim=0) == 0  # (N_i + 1,)
            mx, am, hit = mx[:k], am[:k], hit[:k]  # (N_i,) each: the stand-in dropped
            # 7. targets against the argmax gt, in an image with real gts
            enc = self.coder._encode(some[:k], gts.index_select(0, am))  # (N_i, 4)
            enc = torch.where(real.any(), enc, 0.0)  # (N_i, 4)
            # 8. back to all anchors (distinct indices): outside anchors keep -1 / 0 / False / 0
            max_ious = anchors.new_full((n,), -1.0).scatter(0, idx, mx)  # (N,)
            argmax = torch.zeros((n,), dtype=torch.int64, device=dev).scatter(0, idx, am)  # (N,)
            best = torch.zeros((n,), dtype=torch.bool, device=dev).scatter(0, idx, hit)  # (N,)
            targets = anchors.new_zeros((n, 4)).index_put((idx,), enc)  # (N, 4) whole rows
            return max_ious, argmax, best, targets

        return per_image(one_image, [boxes, mask, inside])  # (B, N) x 3, (B, N, 4)

    def _mmdet(self, anchors: Tensor, gt_boxes: Tensor, gt_mask: Tensor, image_sizes: Tensor,
               noise: Tensor) -> RPNTargets:
        anchor_mask = None
        if self.allowed_border >= 0:
            anchor_mask = anchor_inside(anchors, image_sizes, self.allowed_border, self.inclusive)  # (B, N)
        gt_labels = torch.zeros_like(gt_mask, dtype=torch.int64)  # (B, M) one class, as mmdetection's RPN
        assign = self.assigner._assign(anchors, gt_boxes, gt_labels, gt_mask, anchor_mask, None, None)
        pos = assign.gt_index >= 0  # (B, N)
        neg = assign.gt_index == -1  # (B, N) ignored (-2) anchors are never sampled
        sample = _sample_by_noise(pos, neg, noise, self.num, self.pos_fraction, self.neg_pos_ub)
        labels = _labels(sample.pos, sample.neg)  # (B, N)
        targets = self.coder._encode(anchors, assign.boxes)  # (B, N, 4) garbage for non-positives
        bbox_targets = torch.where(sample.pos.unsqueeze(-1), targets, 0.0)  # (B, N, 4)
        matched_gt = torch.where(sample.pos, assign.gt_index, -1)  # (B, N)
        return RPNTargets(labels, bbox_targets, _weights(sample.pos, bbox_targets), matched_gt)


def _empty_targets(noise: Tensor) -> RPNTargets:
    """The fields of an empty ``(B, N)`` batch (B or N is 0)."""
    labels = torch.zeros(noise.shape, dtype=torch.int64, device=noise.device)  # (B, N)
    boxes = noise.new_zeros((*noise.shape, 4))  # (B, N, 4)
    return RPNTargets(labels, boxes, boxes.clone(), labels.clone())


def _labels(pos: Tensor, neg: Tensor) -> Tensor:
    """1 / 0 / -1 int64 from the sampled masks: ``(B, N)``."""
    return pos.to(torch.int64) - (~(pos | neg)).to(torch.int64)  # (B, N)


def _weights(pos: Tensor, like: Tensor) -> Tensor:
    """``(B, N, 4)`` of ``like``'s dtype: 1 for the sampled positives. Repeated along a middle axis, then
    transposed: onnxruntime (1.31, CPU) expands a last axis of 4 value by value, about 15x slower."""
    w = pos.to(like.dtype).unsqueeze(1).expand(-1, 4, -1)  # (B, 4, N)
    return w.transpose(1, 2).contiguous()  # (B, N, 4)


def _check_target_inputs(anchors, gt_boxes, gt_mask, image_sizes, noise) -> None:
    check_boxes("anchors", anchors, ndim=2)
    if anchors.numel() and bool(((anchors[:, 2] <= anchors[:, 0]) | (anchors[:, 3] <= anchors[:, 1])).any()):
        raise ValueError("anchors: zero-width or zero-height anchor; encoding divides by the anchor's size")
    check_masked_boxes("gt_boxes", gt_boxes, gt_mask)
    b = gt_boxes.shape[0]
    check_image_sizes("image_sizes", image_sizes, b)
    check_noise(noise, (b, anchors.shape[0]))


# ---------------------------------------------------------------------------------------------------------
# Proposals


class Proposals(NamedTuple):
    """Padded proposals per image: ``proposals (B, P, 4)``, ``scores (B, P)``, ``counts (B,)`` int64.

    Slots ``[0, counts[b])`` of image ``b`` hold the kept boxes, highest objectness first; the rest are 0.
    """

    proposals: Tensor
    scores: Tensor
    counts: Tensor


class IndexedProposals(NamedTuple):
    """:class:`Proposals` plus ``anchor_index (B, P)`` int64: the anchor each proposal came from (-1: padding)."""

    proposals: Tensor
    scores: Tensor
    counts: Tensor
    anchor_index: Tensor


_PROPOSAL_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    # py-faster-rcnn / simple-faster-rcnn: whole image, min_size 16 (times the image scale)
    "faster_rcnn": {"train": {"pre_nms": 12000, "post_nms": 2000, "min_size": 16.0},
                    "test": {"pre_nms": 6000, "post_nms": 300, "min_size": 16.0}},
    # mmdetection 3.x rpn_proposal / rpn test_cfg: nms_pre PER LEVEL, max_per_img, min_bbox_size 0
    "mmdet": {"train": {"pre_nms": 2000, "post_nms": 1000, "min_size": 0.0},
              "test": {"pre_nms": 1000, "post_nms": 1000, "min_size": 0.0}},
}


class ProposalCreator(nn.Module):
    """RPN proposals: decode, clip, drop small boxes, top-k, NMS 0.7, keep the best, padded.

    ``forward(anchors (N, 4), level_ids (N,), objectness (B, N), deltas (B, N, 4), image_sizes (B, 2))``
    returns :class:`Proposals` (or :class:`IndexedProposals` with ``return_index=True``) with the static
    ``P = post_nms``. ``objectness`` are probabilities; ``level_ids`` are read by ``variant="mmdet"`` only.

    ``variant="faster_rcnn"`` (simple-faster-rcnn's ``ProposalCreator``, py-faster-rcnn's proposal layer):

    1. decode every anchor with its deltas (DeltaXYWH, means 0, stds 1, ``dw, dh`` clamped to
       ``|log(16/1000)|`` as mmdetection; the Faster R-CNN codes do not clamp, which only matters for
       boxes more than 62x the anchor);
    2. clip to ``[0, W] x [0, H]`` (simple-faster-rcnn and mmdetection; py-faster-rcnn clips to
       ``W - 1`` on its "+1" pixel grid);
    3. drop boxes with ``w < min_size`` or ``h < min_size`` (``min_size`` = 16 x the image's resize
       scale: pass the scaled value) -- dropped boxes get score ``-inf`` BEFORE the top-k, i.e. filter
       then sort as the reference does;
    4. the top ``pre_nms`` by objectness (train 12000, test 6000; equal scores: lower anchor index first);
    5. greedy NMS at ``iou_threshold`` 0.7 (IoU exactly at the threshold is kept), ONE
       ``NonMaxSuppression`` over the batch (B is its native batch dim);
    6. keep the first ``post_nms`` (train 2000, test 300), padded to ``post_nms``.

    ``variant="mmdet"`` (mmdetection 3.x ``RPNHead._predict_by_feat_single``): per level the top
    ``pre_nms`` anchors by objectness (``nms_pre``: train 2000, test 1000, PER LEVEL, ``level_ids`` in
    ``[0, num_levels)``), decode and clip, then drop boxes with ``w <= min_size`` or ``h <= min_size``
    (``min_bbox_size`` 0: only zero-size boxes; ``min_size < 0`` keeps all) -- AFTER the top-k, as
    mmdetection does -- then level-aware NMS 0.7 by mmcv's offset trick (boxes shifted by
    ``level * (max coordinate of the image's candidates + 1)``; overlapping boxes of different levels
    both survive), keep ``max_per_img`` = ``post_nms`` 1000.

    Static-shape formulation: one ``TopK`` of constant ``K = min(pre_nms, N)`` (mmdet: over
    ``(B, L, N)`` with other levels' scores at ``-inf``), candidates that must not take part carry score
    ``-inf`` and the NMS drops them with ``score_threshold = -inf`` (every finite score passes, 0 too);
    ``max_output_boxes_per_class = post_nms`` stops each image after ``post_nms`` kept boxes. The NMS
    output ``(S, 3)`` rows ``[b, 0, k]`` (per image, best first) is the only data-dependent size: each
    row's slot is its rank within its image (a cumulative count), then one scatter into ``(B, P)``.

    Presets independent of ``train()`` / ``eval()``: ``mode="train" | "test"``, or
    :meth:`train_preset` / :meth:`test_preset`. Explicit ``pre_nms``, ``post_nms``, ``min_size``
    override the preset.

    Args:
        variant: ``"faster_rcnn"`` or ``"mmdet"``.
        mode: ``"train"`` or ``"test"`` preset.
        pre_nms: top-k before NMS (whole image, or per level for ``mmdet``).
        post_nms: proposals kept per image (the static output size ``P``).
        iou_threshold: NMS IoU (0.7).
        min_size: smallest kept side (see the variants for ``>=`` vs ``>``).
        num_levels: ``L`` for ``mmdet`` (5 FPN levels).
        means, stds, wh_ratio_clip: the DeltaXYWH decoder.
        return_index: also return ``anchor_index (B, P)``.
    """

    def __init__(
        self,
        variant: RPNVariant = "faster_rcnn",
        mode: Mode = "train",
        *,
        pre_nms: int | None = None,
        post_nms: int | None = None,
        iou_threshold: float = 0.7,
        min_size: float | None = None,
        num_levels: int = 5,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
        return_index: bool = False,
    ) -> None:
        super().__init__()
        if variant not in _PROPOSAL_DEFAULTS:
            raise ValueError(f"variant: expected 'faster_rcnn' or 'mmdet', got {variant!r}")
        if mode not in ("train", "test"):
            raise ValueError(f"mode: expected 'train' or 'test', got {mode!r}")
        preset = _PROPOSAL_DEFAULTS[variant][mode]
        self.variant: RPNVariant = variant
        self.mode: Mode = mode
        self.pre_nms = _positive_int("pre_nms", preset["pre_nms"] if pre_nms is None else pre_nms)
        self.post_nms = _positive_int("post_nms", preset["post_nms"] if post_nms is None else post_nms)
        self.iou_threshold = check_scalar("iou_threshold", iou_threshold, low=0.0, high=1.0)
        self.min_size = check_scalar("min_size", preset["min_size"] if min_size is None else min_size)
        self.num_levels = _positive_int("num_levels", num_levels)
        self.coder = DeltaXYWHCoder(means=means, stds=stds, wh_ratio_clip=wh_ratio_clip, clip_border=True)
        self.return_index = bool(return_index)

    @classmethod
    def train_preset(cls, variant: RPNVariant = "faster_rcnn", **kwargs) -> ProposalCreator:
        """Training numbers: faster_rcnn 12000 -> NMS -> 2000; mmdet 2000 per level -> NMS -> 1000."""
        return cls(variant, "train", **kwargs)

    @classmethod
    def test_preset(cls, variant: RPNVariant = "faster_rcnn", **kwargs) -> ProposalCreator:
        """Test numbers: faster_rcnn 6000 -> NMS -> 300; mmdet 1000 per level -> NMS -> 1000."""
        return cls(variant, "test", **kwargs)

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        level_ids: Int[Tensor, " N"],
        objectness: Float[Tensor, "B N"],
        deltas: Float[Tensor, "B N 4"],
        image_sizes: Int[Tensor, "B 2"],
    ) -> Proposals | IndexedProposals:
        if checks_enabled():
            _check_proposal_inputs(anchors, level_ids, objectness, deltas, image_sizes,
                                   self.num_levels if self.variant == "mmdet" else None)
        if self.variant == "faster_rcnn":
            boxes, scores, index, valid = self._faster_rcnn(anchors, objectness, deltas, image_sizes)
            levels = None
        else:
            boxes, scores, index, valid, levels = self._mmdet(anchors, level_ids, objectness, deltas, image_sizes)
        kept = self._nms(boxes, scores, valid, levels)  # (S, 3) rows [b, 0, k]
        return self._scatter(kept, boxes, scores, index, image_sizes.shape[0])

    # -- steps ------------------------------------------------------------------------------------------------

    def _faster_rcnn(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, image_sizes: Tensor):
        # 1.-2. decode every anchor and clip to its image
        boxes = self.coder._decode(anchors, deltas, image_sizes)  # (B, N, 4)
        # 3. too-small boxes take no part: score -inf before the top-k (filter, then sort)
        w = boxes[..., 2] - boxes[..., 0]  # (B, N)
        h = boxes[..., 3] - boxes[..., 1]  # (B, N)
        big = (w >= self.min_size) & (h >= self.min_size)  # (B, N)
        key = torch.where(big, objectness, -math.inf)  # (B, N)
        # 4. the top pre_nms by objectness (K = min(pre_nms, N))
        top, index = _topk(key, self.pre_nms, dim=1)  # (B, K), (B, K)
        cand = torch.gather(boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
        valid = torch.gather(big, 1, index)  # (B, K)
        return cand, top, index, valid

    def _mmdet(self, anchors: Tensor, level_ids: Tensor, objectness: Tensor, deltas: Tensor, image_sizes: Tensor):
        b, lv = objectness.shape[0], self.num_levels
        levels = torch.arange(lv, device=objectness.device)  # (L,)
        in_level = level_ids.unsqueeze(0) == levels.unsqueeze(1)  # (L, N)
        # 1. per level the top nms_pre anchors by objectness: one TopK over (B, L, N), other levels -inf
        key = torch.where(in_level.unsqueeze(0), objectness.unsqueeze(1), -math.inf)  # (B, L, N)
        top, index = _topk(key, self.pre_nms, dim=2)  # (B, L, K), (B, L, K)
        k = index.shape[2]
        valid = level_ids[index] == levels.view(1, lv, 1)  # (B, L, K) a level with < K anchors pads with others
        top = top.reshape(b, lv * k)  # (B, L * K) level-major
        index = index.reshape(b, lv * k)  # (B, L * K)
        valid = valid.reshape(b, lv * k)  # (B, L * K)
        cand_levels = levels.view(lv, 1).expand(lv, k).reshape(1, lv * k)  # (1, L * K)
        # 2. decode the candidates and clip to the image
        cand_anchors = anchors[index]  # (B, L * K, 4)
        cand_deltas = torch.gather(deltas, 1, index.unsqueeze(-1).expand(-1, -1, 4))  # (B, L * K, 4)
        boxes = self.coder._decode(cand_anchors, cand_deltas, image_sizes)  # (B, L * K, 4)
        # 3. min_bbox_size (after the top-k, as mmdetection): 0 drops zero-size boxes only
        if self.min_size >= 0:
            w = boxes[..., 2] - boxes[..., 0]  # (B, L * K)
            h = boxes[..., 3] - boxes[..., 1]  # (B, L * K)
            valid = valid & (w > self.min_size) & (h > self.min_size)  # (B, L * K)
        return boxes, top, index, valid, cand_levels

    def _nms(self, boxes: Tensor, scores: Tensor, valid: Tensor, levels: Tensor | None) -> Tensor:
        """One ``NonMaxSuppression`` over the batch: ``(S, 3)`` rows ``[b, 0, k]``, per image best first."""
        if levels is not None:
            # mmcv batched_nms: shift by level * (max coordinate + 1) of the image's candidates (clipped, >= 0)
            coords = torch.where(valid.unsqueeze(-1), boxes, 0.0)  # (B, K, 4)
            flat = torch.cat([coords.reshape(coords.shape[0], -1), coords.new_zeros((coords.shape[0], 1))], dim=1)
            span = flat.amax(dim=1) + 1  # (B,) never an empty reduction (K = 0 when N = 0)
            offsets = levels.to(boxes.dtype) * span.unsqueeze(1)  # (B, K)
            boxes = boxes + offsets.unsqueeze(-1)  # (B, K, 4) levels never overlap
        masked = torch.where(valid, scores, -math.inf)  # (B, K) dropped candidates: -inf
        return torch.ops.assignlab.nms(
            boxes.to(torch.float32),
            masked.to(torch.float32).unsqueeze(1),  # (B, 1, K) one class
            self.post_nms,  # the first post_nms kept boxes of each image
            self.iou_threshold,
            -math.inf,  # drops exactly the -inf candidates; every finite score passes
        )  # (S, 3)

    def _scatter(self, kept: Tensor, boxes: Tensor, scores: Tensor, index: Tensor,
                 batch) -> Proposals | IndexedProposals:
        p = self.post_nms
        k = scores.shape[1]
        img, cand = kept[:, 0], kept[:, 2]  # (S,), (S,)
        flat = img * k + cand  # (S,) row among the (B * K) candidates
        sel_boxes = boxes.reshape(-1, 4)[flat]  # (S, 4)
        sel_scores = scores.reshape(-1)[flat]  # (S,)
        # a row's slot is its rank among its image's rows (they come best first)
        onehot = (img.unsqueeze(1) == torch.arange(batch, device=img.device).unsqueeze(0)).to(torch.int64)  # (S, B)
        rank = torch.gather(onehot.cumsum(dim=0), 1, img.unsqueeze(1)).squeeze(1) - 1  # (S,) 0-based
        counts = onehot.sum(dim=0)  # (B,)
        slot = img * p + rank  # (S,) unique, < B * P (at most P rows per image)
        out_boxes = boxes.new_zeros((batch * p, 4)).scatter(0, slot.unsqueeze(1).expand(-1, 4), sel_boxes)  # (B*P, 4)
        out_scores = scores.new_zeros((batch * p,)).scatter(0, slot, sel_scores)  # (B * P,)
        proposals = out_boxes.reshape(batch, p, 4)  # (B, P, 4)
        out_scores = out_scores.reshape(batch, p)  # (B, P)
        if not self.return_index:
            return Proposals(proposals, out_scores, counts)
        sel_index = index.reshape(-1)[flat]  # (S,) anchor index
        out_index = torch.full_like(out_scores, -1, dtype=torch.int64).reshape(-1).scatter(0, slot, sel_index)  # (B*P,)
        return IndexedProposals(proposals, out_scores, counts, out_index.reshape(batch, p))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


def _check_proposal_inputs(anchors, level_ids, objectness, deltas, image_sizes, num_levels: int | None) -> None:
    check_boxes("anchors", anchors, ndim=2)
    n = anchors.shape[0]
    check_integer("level_ids", level_ids)
    check_shape("level_ids", level_ids, (n,))
    if num_levels is not None and level_ids.numel() and bool(((level_ids < 0) | (level_ids >= num_levels)).any()):
        raise ValueError(f"level_ids: expected values in [0, {num_levels}) (num_levels)")
    check_float("objectness", objectness)
    check_shape("objectness", objectness, ("B", n))
    if objectness.numel() and bool(((objectness < 0) | (objectness > 1)).any()):
        raise ValueError("objectness: expected probabilities in [0, 1] (apply sigmoid / softmax first), not logits")
    b = objectness.shape[0]
    check_float("deltas", deltas)
    check_shape("deltas", deltas, (b, n, 4))
    check_image_sizes("image_sizes", image_sizes, b)


