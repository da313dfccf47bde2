"""Faster R-CNN's RoI head targets: sample 128 of ~2,000 RoIs and give them classes and box targets.

Shape shorthand::

    B   images in a batch
    K   proposals (RoIs) per image, padded (``roi_mask`` marks the real ones)
    M   gts per image, padded (``gt_mask`` marks the real ones)
    N   candidates per image: the K RoIs and the M gts (``N = K + M``)
    S   sampled RoIs per image, static: ``num`` (128; mmdetection 512), padded
    C   foreground classes (``num_classes``; class ``C`` is the background)

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``. Names follow simple-faster-rcnn
(``ProposalTargetCreator``); the readable per-image reference is :mod:`lessons.roi_head_sampling`. Where the
peers call it:

=====================  ============================================  ==========================================
here                   torchvision                                   mmdetection
=====================  ============================================  ==========================================
ProposalTargetCreator  ``RoIHeads.select_training_samples``          ``StandardRoIHead``: ``MaxIoUAssigner(0.5,
                       (``add_gt_proposals``, ``assign_targets_to_   0.5, 0.5, match_low_quality=False)`` +
                       proposals``, ``fg_bg_sampler``,               ``RandomSampler(512, 0.25)`` +
                       ``box_coder.encode``)                         ``bbox_head.get_targets``
RoIAlign               ``MultiScaleRoIAlign`` / ``ops.roi_align``    ``SingleRoIExtractor`` + ``RoIAlign``
=====================  ============================================  ==========================================

Randomness is an input: ``noise (B, K + M)`` uniform in ``[0, 1)``, one value per candidate; within each
class (positive / negative) the candidates with the LARGEST noise are sampled, equal noise: the lower
candidate index first (:mod:`exportable.sampling`'s rule). The same noise gives the same sample in eager, in
onnxruntime and in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_bool,
    check_boxes,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_iou
from exportable.coders import DeltaXYWHCoder
from exportable.ordering import _topk, rank_mask
from exportable.sampling import Rounding, _pos_quota, check_noise, check_sampler_params, sample_quotas

__all__ = [
    "ProposalTargetCreator",
    "RoITargets",
    "counts_to_mask",
    "class_specific",
]

RoIVariant = Literal["faster_rcnn", "mmdet"]

_DEFAULTS: dict[str, dict[str, float | int | str]] = {
    # simple-faster-rcnn / py-faster-rcnn end2end: 128 RoIs, round(128 * 0.25) = 32 positives, gts appended
    "faster_rcnn": {"num": 128, "rounding": "round"},
    # mmdetection 3.x rcnn train_cfg: RandomSampler(num=512, pos_fraction=0.25), int(), gts prepended
    "mmdet": {"num": 512, "rounding": "int"},
}


class RoITargets(NamedTuple):
    """What :class:`ProposalTargetCreator` returns: ``S = num`` slots per image, positives first.

    Slots ``[0, num_pos)`` hold the sampled positives, ``[num_pos, num_pos + num_neg)`` the sampled
    negatives, the rest is padding.

    - ``rois (B, S, 4)``: the sampled RoIs (a sampled gt is its own box); 0 for padding.
    - ``labels (B, S)`` int64: the gt's class for positives, ``num_classes`` (background) for negatives,
      -1 for padding (``cross_entropy(..., ignore_index=-1)``).
    - ``label_weights (B, S)``: 1 for sampled RoIs, 0 for padding.
    - ``bbox_targets (B, S, 4)``: normalised DeltaXYWH ``((d - means) / stds)`` of the positives; 0 elsewhere.
      With ``class_specific=True``: ``(B, S, 4 * C)``, the 4 numbers in the true class's block.
    - ``bbox_weights``: the same shape, 1 where ``bbox_targets`` counts.
    - ``sample_index (B, S)`` int64: each slot's candidate index (``faster_rcnn``: ``[RoIs | gts]``, a gt
      ``j`` is ``K + j``; ``mmdet``: ``[gts | RoIs]``); -1 for padding.
    - ``matched_gt (B, S)`` int64: the gt a positive regresses to (0-based, padded axis); -1 elsewhere.
    - ``num_pos (B,)``, ``num_neg (B,)`` int64: how many slots are positive / negative.
    """

    rois: Tensor
    labels: Tensor
    label_weights: Tensor
    bbox_targets: Tensor
    bbox_weights: Tensor
    sample_index: Tensor
    matched_gt: Tensor
    num_pos: Tensor
    num_neg: Tensor


def counts_to_mask(counts: Int[Tensor, " B"], k: int) -> Bool[Tensor, "B K"]:
    """``(B, K)`` bool: slot ``j`` of image ``b`` is real if ``j < counts[b]`` (ProposalCreator's ``counts``)."""
    return rank_mask(counts, k)  # (B, K)


def class_specific(
    bbox_targets: Float[Tensor, "B S 4"],
    labels: Int[Tensor, "B S"],
    num_classes: int,
) -> tuple[Float[Tensor, "B S D"], Float[Tensor, "B S D"]]:
    """Spread ``(B, S, 4)`` targets into the class-specific ``(B, S, 4 * C)`` layout, with its weights.

    Class ``k``'s 4 numbers sit in columns ``4k .. 4k + 3`` (mmdetection's ``reg_class_agnostic=False``
    head, background not regressed). Only positives (``0 <= label < C``) get a block; everything else is 0.
    py-faster-rcnn and torchvision put the background at block 0 and class ``k`` at block ``k + 1``
    (``4 * (C + 1)`` = 84 for VOC): :mod:`lessons.roi_head_sampling` maps the layouts.
    """
    classes = torch.arange(num_classes, device=labels.device)  # (C,)
    onehot = (labels.unsqueeze(-1) == classes).to(bbox_targets.dtype)  # (B, S, C) all 0 for bg / padding
    targets = (onehot.unsqueeze(-1) * bbox_targets.unsqueeze(-2)).flatten(-2)  # (B, S, 4C)
    weights = onehot.unsqueeze(-1).expand(*onehot.shape, 4).flatten(-2).contiguous()  # (B, S, 4C)
    return targets, weights


class ProposalTargetCreator(nn.Module):
    """RoI-head sampling: gts join the RoIs, IoU, 32 positives + 96 negatives, normalised targets.

    ``forward(rois (B, K, 4), roi_mask (B, K), gt_boxes (B, M, 4), gt_labels (B, M), gt_mask (B, M),
    noise (B, K + M))`` returns :class:`RoITargets` with a static ``S = num`` slots per image.
    ``roi_mask=None`` means every RoI is real (use :func:`counts_to_mask` on ProposalCreator's ``counts``).

    ``variant="faster_rcnn"`` (simple-faster-rcnn's ``ProposalTargetCreator``, the document's RoIHead;
    docs/algorithms.md section 6.2):

    1. the image's real gts are APPENDED to its real RoIs: candidates ``[RoIs | gts]`` (so every gt is a
       candidate of IoU 1 with itself; torchvision appends too);
    2. IoU of every candidate with every real gt; per candidate the max and the argmax (first gt on ties);
    3. positives: max IoU ``>= pos_iou_thr`` (0.5);
    4. negatives: ``neg_iou_lo <= max IoU < neg_iou_thr`` (``[0, 0.5)``; py-faster-rcnn's
       ``BG_THRESH_LO = 0.1`` is ``neg_iou_lo=0.1``: RoIs below it are never sampled);
    5. sample: at most ``round(num * pos_fraction)`` = 32 positives, negatives fill up to ``num`` = 128
       (no back-filling: a short image has fewer than 128), largest noise first;
    6. labels: the argmax gt's class for positives, ``num_classes`` for negatives (simple-faster-rcnn
       writes class + 1 and 0 for background);
    7. box targets of the positives: DeltaXYWH(RoI -> its gt), normalised: ``(d - means) / stds`` with
       stds ``(0.1, 0.1, 0.2, 0.2)``; with ``class_specific=True`` spread to ``(B, S, 4 * C)``;
    8. layout: positives first, then negatives, each in sampling order (largest noise first), then padding.

    ``variant="mmdet"`` (mmdetection's ``StandardRoIHead`` training, 3.x): gts PREPENDED (candidates
    ``[gts | RoIs]``, noise in that order), ``num = 512``, ``int(512 * 0.25) = 128`` positives, and
    within positives and within negatives the slots in ascending candidate index (mmdetection's
    ``unique``). ``MaxIoUAssigner(0.5, 0.5, 0.5, match_low_quality=False)`` is steps 2-4 with
    ``neg_iou_lo=0``.

    An image without real gts: every real RoI has max IoU 0, so all are negatives (with ``neg_iou_lo <= 0``)
    and 128 are sampled (simple-faster-rcnn fails there; mmdetection and torchvision do this). A zero-size
    RoI or gt has IoU 0 with everything, itself included: it can be a negative, never a positive.
    ``M = 0``, ``K = 0`` and both work.

    Static-shape formulation: ``num`` masked dummy candidates are appended (so every top-k has its
    constant size), one ``TopK`` per class over ``where(candidate, noise, -inf)`` (:func:`exportable.
    ordering._topk`: ties to the lower index), rank masks against the quotas of
    :func:`exportable.sampling.sample_quotas`, and one gather per output.

    Args:
        variant: ``"faster_rcnn"`` or ``"mmdet"``; selects the defaults marked "variant".
        num_classes: C, the foreground classes (20 for VOC); ``labels`` of negatives.
        num: RoIs sampled per image and the static slot count S (variant: 128 / 512).
        pos_fraction: the positive share (0.25).
        pos_iou_thr: positive if max IoU ``>=`` this (0.5).
        neg_iou_thr: negative if max IoU ``<`` this (0.5).
        neg_iou_lo: ... and ``>=`` this (0.0; 0.1 in py-faster-rcnn).
        rounding: ``num * pos_fraction`` rounded (``"round"``) or truncated (``"int"``) (variant).
        neg_pos_ub: mmdetection's negative cap ``int(neg_pos_ub * max(1, num_pos))`` (-1: off).
        means, stds: target normalisation (0 and ``(0.1, 0.1, 0.2, 0.2)``).
        class_specific: return ``bbox_targets`` / ``bbox_weights`` as ``(B, S, 4 * C)``.
    """

    def __init__(
        self,
        variant: RoIVariant = "faster_rcnn",
        *,
        num_classes: int = 20,
        num: int | None = None,
        pos_fraction: float = 0.25,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.5,
        neg_iou_lo: float = 0.0,
        rounding: Rounding | None = None,
        neg_pos_ub: float = -1,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        class_specific: bool = False,
    ) -> None:
        super().__init__()
        if variant not in _DEFAULTS:
            raise ValueError(f"variant: expected 'faster_rcnn' or 'mmdet', got {variant!r}")
        defaults = _DEFAULTS[variant]
        self.variant: RoIVariant = variant
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        num = int(defaults["num"]) if num is None else num
        rounding = str(defaults["rounding"]) if rounding is None else rounding  # type: ignore[assignment]
        check_sampler_params(num, pos_fraction, rounding)
        if num < 1:
            raise ValueError(f"num: expected an int >= 1 (the static slot count), got {num!r}")
        self.num = num
        self.pos_fraction = float(pos_fraction)
        self.rounding: Rounding = rounding  # type: ignore[assignment]
        self.pos_iou_thr = check_scalar("pos_iou_thr", pos_iou_thr)
        self.neg_iou_thr = check_scalar("neg_iou_thr", neg_iou_thr)
        self.neg_iou_lo = check_scalar("neg_iou_lo", neg_iou_lo)
        if self.neg_iou_lo > self.neg_iou_thr:
            raise ValueError(f"neg_iou_lo: must be <= neg_iou_thr ({self.neg_iou_thr}), got {self.neg_iou_lo}")
        self.neg_pos_ub = check_scalar("neg_pos_ub", neg_pos_ub)
        self.coder = DeltaXYWHCoder(means=means, stds=stds)
        self.class_specific = bool(class_specific)
        self.pos_max = _pos_quota(num, self.pos_fraction, self.rounding)

    def forward(
        self,
        rois: Float[Tensor, "B K 4"],
        roi_mask: Bool[Tensor, "B K"] | None,
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        noise: Float[Tensor, "B N"],
    ) -> RoITargets:
        if checks_enabled():
            _check_inputs(rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise, self.num_classes)
        if roi_mask is None:
            roi_mask = torch.ones(rois.shape[:2], dtype=torch.bool, device=rois.device)  # (B, K)
        b = rois.shape[0]
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M') M' >= 1
        # 1. candidates: gts appended (faster_rcnn) or prepended (mmdet), then `num` masked dummies so that
        #    every top-k below has its constant size (they never take part)
        rois = rois.to(boxes.dtype)
        dummies = boxes.new_zeros((b, self.num, 4))  # (B, S, 4)
        off = roi_mask.new_zeros((b, self.num))  # (B, S)
        if self.variant == "faster_rcnn":
            cands = torch.cat([rois, gt_boxes.to(boxes.dtype), dummies], dim=1)  # (B, N + S, 4)
            valid = torch.cat([roi_mask, gt_mask, off], dim=1)  # (B, N + S)
        else:
            cands = torch.cat([gt_boxes.to(boxes.dtype), rois, dummies], dim=1)  # (B, N + S, 4)
            valid = torch.cat([gt_mask, roi_mask, off], dim=1)  # (B, N + S)
        noise = torch.cat([noise, noise.new_zeros((b, self.num))], dim=1)  # (B, N + S)
        # 2. IoU with every real gt (padded gts -1: never the argmax); no real gt -> max IoU 0
        ious = torch.where(mask.unsqueeze(1), _box_iou(cands, boxes), -1.0)  # (B, N + S, M')
        max_iou, gt_of = ious.max(dim=2)  # (B, N + S), (B, N + S) first gt on ties
        max_iou = max_iou.clamp(min=0.0)  # (B, N + S)
        # 3.-4. positive and negative candidates
        pos = valid & (max_iou >= self.pos_iou_thr)  # (B, N + S)
        neg = valid & (max_iou < self.neg_iou_thr) & (max_iou >= self.neg_iou_lo) & ~pos  # (B, N + S)
        # 5. quotas, then the candidates of largest noise in each class (ties: lower index first)
        num_pos, num_neg = sample_quotas(pos.sum(dim=1), neg.sum(dim=1), self.num, self.pos_fraction,
                                         self.neg_pos_ub, self.rounding)  # (B,), (B,)
        pos_index = self._pick(pos, noise, num_pos, self.pos_max)  # (B, P)
        neg_index = self._pick(neg, noise, num_neg, self.num)  # (B, S)
        # 8. slots: positives, then negatives, then padding (-1)
        slot = torch.arange(self.num, device=rois.device).unsqueeze(0)  # (1, S)
        is_pos = slot < num_pos.unsqueeze(1)  # (B, S)
        is_neg = ~is_pos & (slot < (num_pos + num_neg).unsqueeze(1))  # (B, S)
        if self.pos_max > 0:
            at_pos = slot.clamp(max=self.pos_max - 1).expand(b, -1)  # (B, S)
            from_pos = torch.gather(pos_index, 1, at_pos)  # (B, S)
        else:
            from_pos = torch.zeros_like(is_pos, dtype=torch.int64)  # (B, S) never used
        at_neg = (slot - num_pos.unsqueeze(1)).clamp(min=0)  # (B, S) < S
        from_neg = torch.gather(neg_index, 1, at_neg)  # (B, S)
        sample_index = torch.where(is_pos, from_pos, torch.where(is_neg, from_neg, -1))  # (B, S)
        # gather everything per slot
        safe = sample_index.clamp(min=0)  # (B, S)
        taken = is_pos | is_neg  # (B, S)
        sampled = torch.gather(cands, 1, safe.unsqueeze(-1).expand(-1, -1, 4))  # (B, S, 4)
        sampled = torch.where(taken.unsqueeze(-1), sampled, 0.0)  # (B, S, 4)
        gt_idx = torch.gather(gt_of, 1, safe)  # (B, S)
        # 6. labels: class of the argmax gt, background = num_classes, padding -1
        cls = torch.gather(labels, 1, gt_idx)  # (B, S)
        out_labels = torch.where(is_pos, cls, torch.where(is_neg, self.num_classes, -1))  # (B, S)
        # 7. normalised targets of the positives (0 elsewhere; `where`, so NaN of empty slots never leaks)
        gt_box = torch.gather(boxes, 1, gt_idx.unsqueeze(-1).expand(-1, -1, 4))  # (B, S, 4)
        deltas = self.coder._encode(sampled, gt_box)  # (B, S, 4)
        bbox_targets = torch.where(is_pos.unsqueeze(-1), deltas, 0.0)  # (B, S, 4)
        if self.class_specific:
            bbox_targets, bbox_weights = class_specific(bbox_targets, out_labels, self.num_classes)  # (B, S, 4C) x2
        else:
            bbox_weights = is_pos.unsqueeze(-1).to(bbox_targets.dtype).expand(-1, -1, 4).contiguous()  # (B, S, 4)
        matched_gt = torch.where(is_pos, gt_idx, -1)  # (B, S)
        return RoITargets(sampled, out_labels, taken.to(sampled.dtype), bbox_targets, bbox_weights, sample_index,
                          matched_gt, num_pos, num_neg)

    def _pick(self, candidates: Tensor, noise: Tensor, quota: Tensor, k: int) -> Tensor:
        """The ``k`` candidate indices of largest noise per row, ``(B, k)``; ranks ``< quota`` are the sample.

        ``mmdet``: the sampled ones re-ordered by ascending index (mmdetection's ``unique``), the rest after.
        """
        key = torch.where(candidates, noise, -math.inf)  # (B, N + S)
        _, index = _topk(key, k, dim=1)  # (B, k) largest noise first, ties to the lower index
        if self.variant == "mmdet":
            kept = rank_mask(quota, index.shape[1])  # (B, k)
            order_key = torch.where(kept, index, key.shape[1] + index)  # (B, k) unique: sampled first, ascending
            _, order = _topk(order_key, k, dim=1, largest=False)  # (B, k)
            index = torch.gather(index, 1, order)  # (B, k)
        return index

    @classmethod
    def mmdet(cls, **kwargs) -> ProposalTargetCreator:
        """mmdetection's RoI sampling: 512 RoIs, ``int(512 * 0.25) = 128`` positives, gts prepended, C = 80."""
        return cls("mmdet", **{"num_classes": 80} | kwargs)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, num_classes={self.num_classes}, num={self.num}, "
                f"pos_fraction={self.pos_fraction}, pos_iou_thr={self.pos_iou_thr}, "
                f"neg=[{self.neg_iou_lo}, {self.neg_iou_thr}), rounding={self.rounding!r}")


def _check_inputs(rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise, num_classes: int) -> None:
    check_boxes("rois", rois, ndim=3, allow_inverted=roi_mask is not None)
    b, k = rois.shape[0], rois.shape[1]
    if roi_mask is not None:
        check_bool("roi_mask", roi_mask)
        check_shape("roi_mask", roi_mask, (b, k))
        if rois.numel():
            check_boxes("rois", rois.masked_fill(~roi_mask.unsqueeze(-1), 0.0), ndim=3)
    check_gt_batch(gt_boxes, gt_labels, gt_mask, num_classes=num_classes)
    if gt_boxes.shape[0] != b:
        raise ValueError(f"gt_boxes: expected B = {b} images as in rois, got shape {tuple(gt_boxes.shape)}")
    check_noise(noise, (b, k + gt_boxes.shape[1]))


