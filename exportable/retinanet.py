"""RetinaNet (mmdetection ``RetinaHead`` / ``AnchorHead``): training targets, batched and exportable.

Shape shorthand::

    B     images in a batch
    N     anchors of all FPN levels concatenated, shared by the batch (182,403 for (1216, 800))
    M     gts per image (padded; ``gt_mask`` marks the real ones)
    K     ignore boxes per image (padded; optional)
    L     FPN levels; N_l anchors of level l, sum over l of N_l = N

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``. Images are ``(H, W)``;
``image_sizes (B, 2)`` int64 holds each image's ``(H, W)`` (mmdetection's ``img_shape``, the unpadded size).

Sections: "Targets" (:class:`RetinaNetTargets`, :func:`images_to_levels`, :func:`level_counts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import exportable.nms  # noqa: F401  (registers torch.ops.assignlab.nms)
from exportable._checks import (
    check_bool,
    check_boxes,
    check_float,
    check_image_sizes,
    check_integer,
    check_masked_boxes,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable.anchors import AnchorGenerator, _grid_level_anchors, _inside_flags
from exportable.assigners.max_iou import MaxIoUAssigner
from exportable.assigners.result import NEGATIVE
from exportable.batching import check_gt_batch
from exportable.coders import DeltaXYWHCoder, _check_positive_size
from exportable.ordering import _topk

# Each section adds its public names here.
__all__ = [
    "RetinaNetTargets",
    "RetinaNetTargetsResult",
    "images_to_levels",
    "level_counts",
    "level_counts_from_ids",
    "RetinaNetDetections",
    "RetinaNetPostProcess",
    "logit_threshold",
]


# =============================================================================================================
# Targets
#
# mmdetection 2.11 ``AnchorHead.get_targets`` -> ``_get_targets_single`` (the document
# ``seeds/001``), one batched graph instead of a loop over images:
#
#   1. inside = valid_flags & anchor_inside_flags(anchors, img_shape, allowed_border)
#   2. MaxIoUAssigner on the inside anchors only (anchor_mask = inside)
#   3. PseudoSampler: positives gt_inds > 0, negatives gt_inds == 0 (no sampling)
#   4. labels / label_weights / bbox_targets (DeltaXYWH encode) / bbox_weights on the inside anchors
#   5. unmap to all N anchors: labels fill num_classes, every weight and target fill 0
#   6. num_total_pos = sum_i max(num_pos_i, 1), num_total_neg = sum_i max(num_neg_i, 1)
#   7. (eager helper) images_to_levels: (B, N, ...) -> one (B, N_l, ...) per level
# =============================================================================================================


class RetinaNetTargetsResult(NamedTuple):
    """RetinaNet's training targets for a batch, in the document's vocabulary (all anchors, unmapped).

    - ``labels (B, N)`` int64: the matched gt's class for positives; ``num_classes`` (background) elsewhere.
    - ``label_weights (B, N)`` float: ``pos_weight`` (1 when ``pos_weight <= 0``) for positives, 1 for
      negatives, 0 for ignored anchors (the IoU band between the thresholds, ignore regions) and for anchors
      outside the image / padding.
    - ``bbox_targets (B, N, 4)``: DeltaXYWH deltas of the matched gt against the anchor for positives; 0 else.
    - ``bbox_weights (B, N, 4)``: 1 for positives, 0 elsewhere.
    - ``num_total_pos ()`` int64: ``sum_i max(num_pos_i, 1)`` (mmdetection's count; the loss's ``avg_factor``).
    - ``num_total_neg ()`` int64: ``sum_i max(num_neg_i, 1)``.
    """

    labels: Int[Tensor, "B N"]
    label_weights: Float[Tensor, "B N"]
    bbox_targets: Float[Tensor, "B N 4"]
    bbox_weights: Float[Tensor, "B N 4"]
    num_total_pos: Int[Tensor, ""]
    num_total_neg: Int[Tensor, ""]

    def to_levels(self, num_level_anchors: Sequence[int]) -> tuple:
        """The document's ``get_targets`` return value: ``(labels_list, label_weights_list,
        bbox_targets_list, bbox_weights_list, num_total_pos, num_total_neg)`` with one ``(B, N_l, ...)``
        tensor per level in each list (eager; see :func:`images_to_levels`)."""
        return (
            images_to_levels(self.labels, num_level_anchors),
            images_to_levels(self.label_weights, num_level_anchors),
            images_to_levels(self.bbox_targets, num_level_anchors),
            images_to_levels(self.bbox_weights, num_level_anchors),
            self.num_total_pos,
            self.num_total_neg,
        )


class RetinaNetTargets(nn.Module):
    """RetinaNet's anchor targets (mmdetection ``AnchorHead.get_targets`` with MaxIoU + PseudoSampler).

    Args:
        num_classes: C; the background label (``labels`` of every non-positive anchor).
        pos_iou_thr, neg_iou_thr, min_pos_iou: MaxIoU thresholds (RetinaNet 0.5 / 0.4 / 0; low-quality
            matches on, all ties of a gt's best IoU, later gt wins; ``docs/algorithms.md`` section 4).
        allowed_border: ``>= 0``: anchors must lie inside the image grown by this many pixels
            (``x1 >= -b, y1 >= -b, x2 < W + b, y2 < H + b``, strict on the far side); ``< 0`` (RetinaNet's
            ``-1``): every valid (non-padding) anchor takes part.
        means, stds: DeltaXYWH target normalisation ``(d - means) / stds`` (RetinaNet 0 / 1).
        pos_weight: classification weight of positives; ``<= 0`` (mmdetection's ``-1``) means 1.
        ignore_iof_thr: ignore regions (``ignore_boxes``) by IoF over the anchor; ``<= 0``: off (RetinaNet).

    ``forward(anchors (N, 4), valid_flags (B, N), image_sizes (B, 2), gt_boxes (B, M, 4), gt_labels (B, M),
    gt_mask (B, M), ignore_boxes (B, K, 4) = None, ignore_mask (B, K) = None)`` returns
    :class:`RetinaNetTargetsResult`. ``valid_flags`` is the padding validity
    (:meth:`~exportable.anchors.AnchorGenerator.valid_flags` of each image's pad shape); ``image_sizes``
    (the unpadded ``(H, W)``) is read only when ``allowed_border >= 0``.

    Counting (``num_total_pos`` / ``num_total_neg``): mmdetection 2.11 ``get_targets`` sums
    ``max(pos_inds.numel(), 1)`` and ``max(neg_inds.numel(), 1)`` over images (an image without a positive
    still counts 1), and RetinaNet's loss divides by ``num_total_pos`` (no sampling). mmdetection 3.3 gives
    the same number as ``avg_factor = sum_i SamplingResult.avg_factor`` (``PseudoSampler`` builds it with
    ``avg_factor_with_neg=False``, so ``avg_factor = max(num_pos, 1)``) and no longer returns the negative
    count; its ``weight_reduce_loss`` then divides by ``avg_factor + float32 eps`` (2.11: no eps).

    Where the batched module differs on purpose (both versions have no batched answer):
    - an image with no inside anchor: 2.11 returns ``None`` for the whole batch (no loss), 3.3 raises
      ``ValueError``; here that image's rows are background with weight 0, and it counts 1 in both totals.
    - N = 0 (eager only): empty ``(B, 0)`` targets; the totals count 1 per image.

    Kept as mmdetection does it: a positive matched to a zero-width or zero-height gt (the ``min_pos_iou = 0``
    zero-IoU hijack, ``docs/algorithms.md`` section 4.4) gets ``dw`` or ``dh = -inf`` (encode has no eps);
    filter such gts before training. Non-positive rows are encoded on a dummy box and masked: never NaN.
    Zero-size anchors are rejected by the eager checks (encode divides by their width and height).
    """

    def __init__(
        self,
        num_classes: int = 80,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float | Sequence[float] = 0.4,
        min_pos_iou: float = 0.0,
        allowed_border: float = -1,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        pos_weight: float = -1.0,
        ignore_iof_thr: float = -1.0,
    ) -> None:
        super().__init__()
        self.assigner = MaxIoUAssigner(
            pos_iou_thr=pos_iou_thr,
            neg_iou_thr=neg_iou_thr,
            min_pos_iou=min_pos_iou,
            ignore_iof_thr=ignore_iof_thr,
            num_classes=num_classes,
        )
        self.num_classes = self.assigner.num_classes
        self.allowed_border = check_scalar("allowed_border", allowed_border)
        self.coder = DeltaXYWHCoder(means=means, stds=stds)
        pos_weight = check_scalar("pos_weight", pos_weight)
        self.pos_weight = 1.0 if pos_weight <= 0 else pos_weight  # mmdetection: pos_weight <= 0 means 1

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        valid_flags: Bool[Tensor, "B N"],
        image_sizes: Int[Tensor, "B 2"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        ignore_boxes: Float[Tensor, "B K 4"] | None = None,
        ignore_mask: Bool[Tensor, "B K"] | None = None,
    ) -> RetinaNetTargetsResult:
        if checks_enabled():
            _check_targets_inputs(
                anchors, valid_flags, image_sizes, gt_boxes, gt_labels, gt_mask, ignore_boxes, ignore_mask,
                self.num_classes,
            )
        # 1. inside flags: padding validity, and (allowed_border >= 0) the image border
        inside = _inside_flags(anchors, valid_flags, image_sizes, self.allowed_border)  # (B, N)
        # 2. MaxIoU on the inside anchors; the others come back ignored (-2) and take no part
        assign = self.assigner(anchors, gt_boxes, gt_labels, gt_mask, inside, ignore_boxes, ignore_mask)
        # 3. PseudoSampler: every positive and every negative, nothing sampled
        pos = assign.gt_index >= 0  # (B, N)
        neg = assign.gt_index == NEGATIVE  # (B, N) inside anchors only: outside ones are ignored
        dtype = anchors.dtype
        # 4. + 5. labels (background = num_classes) and weights; ignored and outside anchors weigh 0
        labels = assign.labels  # (B, N) already num_classes for every non-positive
        label_weights = torch.where(pos, self.pos_weight, neg.to(dtype))  # (B, N)
        # Encode every row on safe boxes: non-positive rows use a unit box (no log(0), no 0 / 0), then 0.
        pos4 = pos.unsqueeze(-1)  # (B, N, 1)
        unit = anchors.new_tensor([0.0, 0.0, 1.0, 1.0])  # (4,)
        safe_anchors = torch.where(pos4, anchors.unsqueeze(0), unit)  # (B, N, 4)
        safe_gts = torch.where(pos4, assign.boxes, unit)  # (B, N, 4)
        deltas = self.coder._encode(safe_anchors, safe_gts)  # (B, N, 4)
        bbox_targets = torch.where(pos4, deltas, 0.0)  # (B, N, 4)
        bbox_weights = pos4.to(dtype).expand(-1, -1, 4)  # (B, N, 4)
        # 6. mmdetection's counts: at least 1 per image, summed over the batch
        num_pos = pos.sum(dim=1)  # (B,) int64
        num_neg = neg.sum(dim=1)  # (B,) int64
        return RetinaNetTargetsResult(
            labels=labels,
            label_weights=label_weights,
            bbox_targets=bbox_targets,
            bbox_weights=bbox_weights,
            num_total_pos=num_pos.clamp(min=1).sum(),  # ()
            num_total_neg=num_neg.clamp(min=1).sum(),  # ()
        )


def _check_targets_inputs(
    anchors: Tensor,
    valid_flags: Tensor,
    image_sizes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    ignore_boxes: Tensor | None,
    ignore_mask: Tensor | None,
    num_classes: int,
) -> None:
    check_boxes("anchors", anchors, ndim=2)
    _check_positive_size("anchors", anchors)
    check_gt_batch(gt_boxes, gt_labels, gt_mask, num_classes=num_classes)
    b, n = gt_boxes.shape[0], anchors.shape[0]
    check_bool("valid_flags", valid_flags)
    check_shape("valid_flags", valid_flags, (b, n))
    check_image_sizes("image_sizes", image_sizes, b)
    if (ignore_boxes is None) != (ignore_mask is None):
        raise ValueError("ignore_boxes and ignore_mask: give both or neither")
    if ignore_boxes is not None:
        check_masked_boxes("ignore_boxes", ignore_boxes, ignore_mask, "ignore_mask")
        if ignore_boxes.shape[0] != b:
            raise ValueError(f"ignore_boxes: batch {ignore_boxes.shape[0]} does not match gt_boxes' {b}")


def images_to_levels(
    tensors: Tensor | Sequence[Tensor], num_level_anchors: Sequence[int]
) -> list[Tensor]:
    """The document's ``images_to_levels``: per-image targets to per-level targets (eager helper).

    ``tensors`` is either a list of per-image ``(N, ...)`` tensors (stacked first, as mmdetection does) or
    an already batched ``(B, N, ...)`` tensor; returns one ``(B, N_l, ...)`` view per level. For the
    document's ``(1216, 800)`` batch ``num_level_anchors = [136800, 34200, 8550, 2223, 630]``.
    """
    batched = tensors if isinstance(tensors, Tensor) else torch.stack(list(tensors), dim=0)  # (B, N, ...)
    counts = [int(c) for c in num_level_anchors]
    if batched.dim() < 2:
        raise ValueError(f"tensors: expected (B, N, ...) or a list of (N, ...), got shape {tuple(batched.shape)}")
    if any(c < 0 for c in counts) or sum(counts) != batched.shape[1]:
        raise ValueError(
            f"num_level_anchors: the counts {counts} sum to {sum(counts)}, but the tensors have "
            f"N = {batched.shape[1]} anchors"
        )
    return list(torch.split(batched, counts, dim=1))  # L x (B, N_l, ...)


def level_counts(featmap_sizes: Sequence[tuple[int, int]], num_base_anchors: int | Sequence[int] = 9) -> list[int]:
    """Anchors per level ``H_l * W_l * A_l`` (the document's ``num_level_anchors``); A = 9 for RetinaNet."""
    sizes = [tuple(int(v) for v in hw) for hw in featmap_sizes]
    per_level = [int(num_base_anchors)] * len(sizes) if isinstance(num_base_anchors, int) else list(num_base_anchors)
    if len(per_level) != len(sizes):
        raise ValueError(f"num_base_anchors: expected one count per level ({len(sizes)}), got {len(per_level)}")
    return [h * w * a for (h, w), a in zip(sizes, per_level)]


def level_counts_from_ids(level_ids: Int[Tensor, " N"], num_levels: int | None = None) -> list[int]:
    """Anchors per level from level ids ``(N,)`` (sorted by level, as the anchor generators make them)."""
    check_integer("level_ids", level_ids)
    if level_ids.numel() > 1 and bool((level_ids[1:] < level_ids[:-1]).any()):
        raise ValueError("level_ids: must be sorted by level (levels concatenated in order)")
    length = num_levels if num_levels is not None else (int(level_ids.max()) + 1 if level_ids.numel() else 0)
    return torch.bincount(level_ids, minlength=length).tolist()


# =============================================================================================================
# Post-processing
#
# mmdetection 3.3 ``BaseDenseHead.predict_by_feat`` -> ``_predict_by_feat_single`` with RetinaNet's
# ``test_cfg`` (nms_pre 1000, min_bbox_size 0, score_thr 0.05, nms iou 0.5, max_per_img 100), one batched
# graph from the head's raw outputs to padded detections:
#
#   1. anchors of every level from the feature maps' shapes (AnchorGenerator, order (y * W + x) * A + a)
#   2. per level: (B, A * C, H, W) -> (B, H * W * A * C), one entry per (anchor, class) pair
#   3. per level: pairs with score > score_thr, the top nms_pre of them (filter_scores_and_topk)
#   4. decode the selected anchors' deltas, clip to each image; concatenate the levels
#   5. drop boxes with width or height <= min_bbox_size (mmdetection's _bbox_post_process)
#   6. class-aware NMS (mmcv batched_nms: boxes shifted by label * (max coordinate + 1), one NMS)
#   7. the first max_per_img kept boxes of each image by score, scattered into padded outputs
#
# Extra shape letters: C classes, A anchors per cell, P = max_per_img output slots, K candidates of all
# levels (sum over l of min(nms_pre, H_l * W_l * A * C)), S boxes kept by NMS over the batch (data dependent).
# =============================================================================================================


class RetinaNetDetections(NamedTuple):
    """Detections of a batch, padded to ``P = max_per_img`` slots per image, best score first.

    - ``boxes (B, P, 4)``: ``(x1, y1, x2, y2)`` pixels, clipped to the image; padding 0.
    - ``scores (B, P)``: class probability (sigmoid of the logit); padding 0.
    - ``labels (B, P)`` int64: class in ``[0, C)``; padding -1.
    - ``counts (B,)`` int64: real detections per image; slots ``[0, counts[b])`` are filled.
    """

    boxes: Float[Tensor, "B P 4"]
    scores: Float[Tensor, "B P"]
    labels: Int[Tensor, "B P"]
    counts: Int[Tensor, " B"]


def logit_threshold(score_thr: float) -> float:
    """The float32 ``t`` with ``sigmoid(x) > score_thr  <=>  x > t`` for every float32 logit ``x``.

    ``sigmoid`` is strictly increasing, so in exact arithmetic ``sigmoid(x) > s <=> x > log(s / (1 - s))``.
    ``t`` is that logit rounded DOWN to float32, which keeps the equivalence exact for float32 ``x`` (no
    float32 lies strictly between ``t`` and the exact logit). ``score_thr <= 0`` gives ``-inf`` (every
    finite logit passes), ``score_thr >= 1`` gives ``+inf`` (none does).
    """
    s = check_scalar("score_thr", score_thr)
    if s <= 0:
        return -math.inf
    if s >= 1:
        return math.inf
    exact = math.log(s) - math.log1p(-s)  # float64 logit of the threshold
    t = np.float32(exact)
    if float(t) > exact:
        t = np.nextafter(t, np.float32(-np.inf))  # round down: x > t <=> x > exact for float32 x
    return float(t)


class RetinaNetPostProcess(nn.Module):
    """RetinaNet's test-time post-processing in one exportable graph: head outputs -> padded detections.

    mmdetection 3.3 ``_predict_by_feat_single`` + ``filter_scores_and_topk`` + ``_bbox_post_process`` +
    mmcv ``batched_nms`` with RetinaNet's ``test_cfg``, batched (steps in the section comment above).

    Args:
        num_classes: C (sigmoid classification, no background channel; COCO 80).
        num_anchors: A, base anchors per cell (must equal the generator's; RetinaNet 9).
        generator: the anchor generator (default :meth:`AnchorGenerator.retinanet`: 5 levels, strides 8..128).
        nms_pre: per level, keep at most this many (anchor, class) pairs, the best scores (1000).
        score_thr: keep pairs whose score (sigmoid of the logit) is ``> score_thr`` (0.05).
        iou_threshold: class-aware NMS suppresses a box whose IoU with a kept box of its class is ``>``
            this (0.5; IoU exactly at the threshold is kept).
        max_per_img: P, detections kept per image after NMS (100): the output slots.
        min_bbox_size: after decoding and clipping, drop boxes with width or height ``<= min_bbox_size``
            (mmdetection's RetinaNet config: 0, which drops zero-size boxes, e.g. anchors in the padding
            clipped to the image border); ``None`` (mmdetection's ``-1``) keeps every box.
        means, stds, wh_ratio_clip: the DeltaXYWH coder's (RetinaNet: 0, 1, 16 / 1000); boxes are clipped to
            each image's ``(H, W)`` from ``image_sizes``.

    ``forward(cls_0, ..., cls_4, box_0, ..., box_4, image_sizes)`` takes the head's raw per-level outputs:
    ``cls_l (B, A * C, H_l, W_l)`` LOGITS and ``box_l (B, A * 4, H_l, W_l)`` deltas, channel ``a * C + c``
    and ``a * 4 + j`` (mmdetection's layout), and ``image_sizes (B, 2)`` int64 ``(H, W)`` of each unpadded
    image. It returns :class:`RetinaNetDetections`. :meth:`forward_levels` takes lists of any number of
    levels (the generator's).

    Decisions (where a batched, exportable graph has to choose):

    - Step 3 static: ONE top-k of ``k = min(nms_pre, H_l * W_l * A * C)`` over all pairs of the level,
      then the pairs with score ``<= score_thr`` are masked. Same result as "filter, then top-k": every
      pair that passes is ranked above every pair that fails, so the top-k of all pairs starts with the
      passing pairs in the same order, and ``k >= min(nms_pre, #passing)``; the failing pairs behind them
      are masked. No data-dependent size before the NMS.
    - Ranked by LOGIT, not by the float32 score: ``sigmoid`` is increasing, so it is the same order except
      among distinct logits that float32 rounds to the same score (every logit above about 16.6 gives
      exactly 1.0). There mmdetection's ``sort`` order is unspecified anyway, and onnxruntime's ``Sigmoid``
      differs from torch's by a few ulp on most inputs, so ranking scores could not give the same indices
      in both. The threshold is applied as ``logit > logit_threshold(score_thr)`` (exactly "score > thr" in
      real arithmetic). Ties (equal logits) go to the lower index: level, then ``(anchor, class)`` order.
      Scores are computed (sigmoid) only for the kept boxes.
    - Step 6 is ONE ``NonMaxSuppression`` over ``(B, K, 4)`` boxes and ``(B, 1, K)`` logits, the batch dim
      used natively; classes are separated by mmcv's offset ``label * (max coordinate of the image's
      candidates + 1)`` in float32, as mmcv computes it (so boundary IoUs round as in mmdetection); masked
      candidates get ``-inf`` and fall under the NMS score threshold. ``max_output_boxes_per_class = P``
      stops each image after P kept boxes: the "first max_per_img" of step 7. (mmcv switches to a loop
      over classes above 10,000 candidates, i.e. ``nms_pre > 2000`` with 5 levels; the kept boxes differ
      from the offset trick's only where an IoU is within float32 rounding of the threshold.)
    - Step 7: the NMS rows ``[b, 0, i]`` come highest score first within each image; a row's slot is its
      rank among the rows of its image (a cumulative count over a one-hot ``(S, B)``), then one scatter
      into the static ``(B, P)`` outputs. The NMS output is the only data-dependent size, inside the graph
      only between the NMS and that scatter.

    Eager checks (skipped under export): ``cls_l`` float without NaN (``+-inf`` logits are allowed),
    ``A * C`` channels; ``box_l`` finite, ``A * 4`` channels, the same ``(B, H_l, W_l)`` as ``cls_l``;
    ``image_sizes`` int64 ``(B, 2)`` and ``>= 0``. The channel counts are also checked while exporting
    (static dims), so a graph cannot silently bake the wrong C.
    """

    def __init__(
        self,
        num_classes: int = 80,
        num_anchors: int = 9,
        generator: AnchorGenerator | None = None,
        nms_pre: int = 1000,
        score_thr: float = 0.05,
        iou_threshold: float = 0.5,
        max_per_img: int = 100,
        min_bbox_size: float | None = 0.0,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
    ) -> None:
        super().__init__()
        generator = generator if generator is not None else AnchorGenerator.retinanet()
        for name, value in (("num_classes", num_classes), ("num_anchors", num_anchors), ("nms_pre", nms_pre),
                            ("max_per_img", max_per_img)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if any(a != num_anchors for a in generator.num_base_anchors):
            raise ValueError(
                f"num_anchors: the generator has {generator.num_base_anchors} base anchors per level, "
                f"not {num_anchors}"
            )
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_levels = generator.num_levels
        self.strides = list(generator.strides)
        for i, base in enumerate(generator.base_anchors):
            self.register_buffer(f"base_anchors_{i}", base.clone(), persistent=False)  # (A, 4)
        self.nms_pre = nms_pre
        self.score_thr = check_scalar("score_thr", score_thr, low=0.0, high=1.0)
        self.logit_thr = logit_threshold(self.score_thr)
        self.iou_threshold = check_scalar("iou_threshold", iou_threshold, low=0.0, high=1.0)
        self.max_per_img = max_per_img
        self.min_bbox_size = None if min_bbox_size is None else check_scalar("min_bbox_size", min_bbox_size)
        self.coder = DeltaXYWHCoder(means=means, stds=stds, wh_ratio_clip=wh_ratio_clip, clip_border=True)

    def forward(
        self,
        cls_0: Float[Tensor, "B AC H0 W0"],
        cls_1: Float[Tensor, "B AC H1 W1"],
        cls_2: Float[Tensor, "B AC H2 W2"],
        cls_3: Float[Tensor, "B AC H3 W3"],
        cls_4: Float[Tensor, "B AC H4 W4"],
        box_0: Float[Tensor, "B A4 H0 W0"],
        box_1: Float[Tensor, "B A4 H1 W1"],
        box_2: Float[Tensor, "B A4 H2 W2"],
        box_3: Float[Tensor, "B A4 H3 W3"],
        box_4: Float[Tensor, "B A4 H4 W4"],
        image_sizes: Int[Tensor, "B 2"],
    ) -> RetinaNetDetections:
        if self.num_levels != 5:
            raise ValueError(
                f"forward takes RetinaNet's 5 levels; this generator has {self.num_levels}: use forward_levels"
            )
        return self.forward_levels(
            (cls_0, cls_1, cls_2, cls_3, cls_4), (box_0, box_1, box_2, box_3, box_4), image_sizes
        )

    def forward_levels(
        self,
        cls_scores: Sequence[Float[Tensor, "B AC H W"]],
        bbox_preds: Sequence[Float[Tensor, "B A4 H W"]],
        image_sizes: Int[Tensor, "B 2"],
    ) -> RetinaNetDetections:
        """:meth:`forward` with one ``cls`` and one ``box`` tensor per level in lists (any level count)."""
        if checks_enabled():
            _check_postprocess_inputs(cls_scores, bbox_preds, image_sizes, self.num_levels, self.num_anchors,
                                      self.num_classes)
        else:
            _check_channels(cls_scores, bbox_preds, self.num_anchors, self.num_classes)
        # 1. - 3. per level: the top-k (anchor, class) pairs by logit, their anchors and deltas
        logits, labels, anchors, deltas = [], [], [], []
        for level, (cls, box) in enumerate(zip(cls_scores, bbox_preds)):
            lv = self._level_candidates(level, cls, box)
            logits.append(lv[0])
            labels.append(lv[1])
            anchors.append(lv[2])
            deltas.append(lv[3])
        logit = torch.cat(logits, dim=1)  # (B, K) candidates of all levels, level-major
        label = torch.cat(labels, dim=1)  # (B, K)
        # 4. decode and clip to each image (mmdetection decodes the concatenated candidates)
        boxes = self.coder._decode(torch.cat(anchors, dim=1), torch.cat(deltas, dim=1), image_sizes)  # (B, K, 4)
        valid = logit > self.logit_thr  # (B, K) score > score_thr
        # 5. drop small boxes
        if self.min_bbox_size is not None:
            w = boxes[..., 2] - boxes[..., 0]  # (B, K)
            h = boxes[..., 3] - boxes[..., 1]  # (B, K)
            valid = valid & (w > self.min_bbox_size) & (h > self.min_bbox_size)  # (B, K)
        # 6. class-aware NMS, one call: mmcv's offset label * (max coordinate + 1), per image
        kept = self._nms(boxes, logit, label, valid)  # (S, 3) rows [b, 0, i]
        # 7. scatter the kept rows into the padded outputs
        return self._scatter(kept, boxes, logit, label, image_sizes.shape[0])

    # -- steps ------------------------------------------------------------------------------------------------

    def _level_candidates(self, level: int, cls: Tensor, box: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top ``min(nms_pre, H * W * A * C)`` pairs of one level: logits, labels, anchors, deltas."""
        b, c = cls.shape[0], self.num_classes
        h, w = cls.shape[-2], cls.shape[-1]
        base = getattr(self, f"base_anchors_{level}").to(device=box.device, dtype=box.dtype)  # (A, 4)
        level_anchors = _grid_level_anchors(base, h, w, self.strides[level])  # (H * W * A, 4)
        # 2. (B, A * C, H, W) -> (B, H, W, A * C) -> (B, H * W * A * C): pair index ((y * W + x) * A + a) * C + c
        flat = cls.permute(0, 2, 3, 1).reshape(b, -1)  # (B, H * W * A * C)
        # 3. one top-k of k = min(nms_pre, H * W * A * C); pairs <= score_thr are masked later
        top, idx = _topk(flat, self.nms_pre, dim=1)  # (B, k), (B, k)
        anchor_idx = idx // c  # (B, k) (y * W + x) * A + a; int // exports exactly, rounding_mode="floor" via float32
        labels = idx - anchor_idx * c  # (B, k) class
        d = box.permute(0, 2, 3, 1).reshape(b, -1, 4)  # (B, H * W * A, 4) channel a * 4 + j
        d = torch.gather(d, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))  # (B, k, 4)
        a = level_anchors[anchor_idx]  # (B, k, 4)
        return top, labels, a, d

    def _nms(self, boxes: Tensor, logit: Tensor, label: Tensor, valid: Tensor) -> Tensor:
        """mmcv ``batched_nms`` per image in one ``NonMaxSuppression``: ``(S, 3)`` rows ``[b, 0, i]``."""
        coords = torch.where(valid.unsqueeze(-1), boxes, torch.zeros_like(boxes))  # (B, K, 4) >= 0 (clipped)
        span = coords.amax(dim=(1, 2)) + 1  # (B,) max coordinate of the image's candidates + 1
        offsets = label.to(boxes.dtype) * span.unsqueeze(1)  # (B, K)
        shifted = boxes + offsets.unsqueeze(-1)  # (B, K, 4) classes never overlap
        scores = torch.where(valid, logit, torch.full_like(logit, -math.inf))  # (B, K) masked: -inf
        return torch.ops.assignlab.nms(
            shifted.to(torch.float32),
            scores.to(torch.float32).unsqueeze(1),  # (B, 1, K) one "class": the offsets separate classes
            self.max_per_img,  # the first P kept boxes of each image
            self.iou_threshold,
            self.logit_thr,  # drops score <= thr: exactly the masked (-inf) candidates
        )  # (S, 3)

    def _scatter(
        self, kept: Tensor, boxes: Tensor, logit: Tensor, label: Tensor, batch: int
    ) -> RetinaNetDetections:
        p = self.max_per_img
        k = logit.shape[1]
        img, cand = kept[:, 0], kept[:, 2]  # (S,), (S,)
        flat = img * k + cand  # (S,) row in the (B * K) candidates
        sel_boxes = boxes.reshape(-1, 4)[flat]  # (S, 4)
        sel_scores = torch.sigmoid(logit.reshape(-1)[flat])  # (S,)
        sel_labels = label.reshape(-1)[flat]  # (S,)
        # rank of each kept row within its image: rows of one image come best first
        onehot = (img.unsqueeze(1) == torch.arange(batch, device=img.device).unsqueeze(0)).to(torch.int64)  # (S, B)
        rank = torch.gather(onehot.cumsum(dim=0), 1, img.unsqueeze(1)).squeeze(1) - 1  # (S,) 0-based
        counts = onehot.sum(dim=0)  # (B,)
        slot = img * p + rank  # (S,) unique, < B * P (NMS keeps at most P per image)
        out_boxes = boxes.new_zeros(batch * p, 4).scatter(0, slot.unsqueeze(1).expand(-1, 4), sel_boxes)  # (B*P, 4)
        out_scores = logit.new_zeros(batch * p).scatter(0, slot, sel_scores)  # (B * P,)
        out_labels = torch.full_like(out_scores, -1, dtype=torch.int64).scatter(0, slot, sel_labels)  # (B * P,)
        return RetinaNetDetections(
            boxes=out_boxes.reshape(batch, p, 4),  # (B, P, 4)
            scores=out_scores.reshape(batch, p),  # (B, P)
            labels=out_labels.reshape(batch, p),  # (B, P)
            counts=counts,  # (B,)
        )


def _check_channels(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], a: int, c: int) -> None:
    """Static channel counts (also while exporting: a wrong C would otherwise be baked silently)."""
    for level, (cls, box) in enumerate(zip(cls_scores, bbox_preds)):
        if cls.dim() != 4 or cls.shape[1] != a * c:
            raise ValueError(
                f"cls_{level}: expected (B, A * C, H, W) logits with A * C = {a} * {c} = {a * c} channels, "
                f"got shape {tuple(cls.shape)}"
            )
        if box.dim() != 4 or box.shape[1] != a * 4:
            raise ValueError(
                f"box_{level}: expected (B, A * 4, H, W) deltas with A * 4 = {a * 4} channels, "
                f"got shape {tuple(box.shape)}"
            )


def _check_postprocess_inputs(
    cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], image_sizes: Tensor, levels: int, a: int, c: int
) -> None:
    if len(cls_scores) != levels or len(bbox_preds) != levels:
        raise ValueError(
            f"cls_scores, bbox_preds: expected {levels} levels each (the generator's), "
            f"got {len(cls_scores)} and {len(bbox_preds)}"
        )
    check_image_sizes("image_sizes", image_sizes)
    b = image_sizes.shape[0]
    for level, (cls, box) in enumerate(zip(cls_scores, bbox_preds)):
        check_float(f"cls_{level}", cls, finite=False)  # logits: NaN rejected, +-inf allowed
        check_float(f"box_{level}", box)  # deltas: finite
    _check_channels(cls_scores, bbox_preds, a, c)
    for level, (cls, box) in enumerate(zip(cls_scores, bbox_preds)):
        if cls.shape[0] != b:
            raise ValueError(f"cls_{level}: batch {cls.shape[0]} does not match image_sizes' B = {b}")
        if box.shape[0] != cls.shape[0] or box.shape[2:] != cls.shape[2:]:
            raise ValueError(
                f"box_{level}: shape {tuple(box.shape)} does not match cls_{level}'s {tuple(cls.shape)} in "
                "(B, H, W): a level's classification and box maps must have the same size"
            )
