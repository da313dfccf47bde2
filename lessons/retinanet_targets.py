"""RetinaNet's targets, the readable way: one image at a time, mmdetection's steps in order.

This is the reference (test oracle) for :class:`exportable.assigners.max_iou.MaxIoUAssigner`,
:class:`exportable.retinanet.RetinaNetTargets` (:func:`retinanet_targets_single`) and the focal loss
of :mod:`exportable.losses` (:func:`focal_loss_reference`).
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``anchors (N, 4)``, ``gt_boxes (M, 4)`` for
ONE image. Step numbers match the notebook ``05_retinanet_targets`` and ``docs/algorithms.md``
§4.1. The result uses the package's encoding (``gt_index`` 0-based, -1 negative, -2 ignored);
:func:`to_mmdet_gt_inds` gives mmdetection's 1-based ``gt_inds`` (0 negative, -1 ignored),
which is where the study note's "+1 trick" lives.

Also here, for the notebook: the photo's assignment and its figure (:func:`photo_assignment`,
:func:`draw_photo_assignment`) and the exercise checkers (``check_*``), whose cases sit on the
boundaries the notebook teaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exportable.anchors import AnchorGenerator
from exportable.coders import DeltaXYWHCoder
from exportable.retinanet import logit_threshold


def iou_matrix(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """``(len(boxes1), len(boxes2))`` IoU or IoF (over boxes1's area), written out pair by pair."""
    out = torch.zeros(len(boxes1), len(boxes2))
    for i, a in enumerate(boxes1.tolist()):
        for j, b in enumerate(boxes2.tolist()):
            w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
            h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
            inter = w * h
            area_a = (a[2] - a[0]) * (a[3] - a[1])
            area_b = (b[2] - b[0]) * (b[3] - b[1])
            denom = area_a if mode == "iof" else area_a + area_b - inter
            out[i, j] = inter / max(denom, eps)
    return out


@dataclass
class MaxIoUResult:
    gt_index: Tensor  # (N,) 0-based gt, -1 negative, -2 ignored
    max_overlaps: Tensor  # (N,)
    labels: Tensor  # (N,) gt class, num_classes for non-positives


def max_iou_assign(
    anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, pos_iou_thr: float = 0.5,
    neg_iou_thr: float | tuple[float, float] = 0.4, min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
    match_low_quality: bool = True, ignore_boxes: Tensor | None = None, ignore_iof_thr: float = -1.0,
    ignore_wrt_candidates: bool = True, num_classes: int = 80, guard_zero_iou: bool = False,
    overlaps: Tensor | None = None,
) -> MaxIoUResult:
    """mmdetection 3.3's ``MaxIoUAssigner.assign`` for ONE image, steps 3-10 of docs/algorithms.md §4.1.

    ``anchors (N, 4)``, ``gt_boxes (M, 4)`` as ``(x1, y1, x2, y2)``; ``overlaps (M, N)`` may be passed to reuse
    an IoU matrix. Returns ``gt_index (N,)``: 0-based gt, -1 negative, -2 ignored. (Steps 1-2, a CPU fallback
    and jittering duplicated gts, change no result.)
    """
    n, m = len(anchors), len(gt_boxes)
    # 3. IoU of every gt with every anchor, shape (M, N) as mmdetection keeps it
    if overlaps is None:
        overlaps = iou_matrix(gt_boxes, anchors) if m and n else torch.zeros(m, n)
    overlaps = overlaps.clone()
    # 4. ignore regions: an anchor covered by an ignore box (IoF > thr) gets its whole column set to -1
    if ignore_iof_thr > 0 and ignore_boxes is not None and len(ignore_boxes) and n:
        iof = (iou_matrix(anchors, ignore_boxes, mode="iof").max(dim=1).values if ignore_wrt_candidates
               else iou_matrix(ignore_boxes, anchors, mode="iof").max(dim=0).values)  # (N,)
        overlaps[:, iof > ignore_iof_thr] = -1
    # 5. every anchor starts "ignored"; no gts: all negative; no anchors: nothing to do
    if m == 0 or n == 0:
        return MaxIoUResult(torch.full((n,), -1, dtype=torch.int64), torch.zeros(n),
                            torch.full((n,), num_classes, dtype=torch.int64))
    gt_index = torch.full((n,), -2, dtype=torch.int64)
    # 6. the best gt of each anchor (the lower gt index on ties), the best IoU of each gt
    max_overlaps, argmax = overlaps.max(dim=0)  # (N,), (N,)
    gt_max, gt_argmax = overlaps.max(dim=1)  # (M,), (M,)
    # 7. negatives: lo <= best IoU < hi (a float thr means lo = 0; an ignored column, -1, is never negative)
    lo, hi = neg_iou_thr if isinstance(neg_iou_thr, tuple) else (0.0, neg_iou_thr)
    gt_index[(max_overlaps >= lo) & (max_overlaps < hi)] = -1
    # 8. positives: best IoU >= pos_iou_thr (mmdetection writes argmax + 1 here: its 1-based "+1 trick")
    pos = max_overlaps >= pos_iou_thr
    gt_index[pos] = argmax[pos]
    # 9. low-quality matches, gt by gt IN ORDER: a later gt overwrites an earlier one
    if match_low_quality:
        for i in range(m):
            if gt_max[i] >= min_pos_iou and (not guard_zero_iou or gt_max[i] > 0):
                if gt_max_assign_all:  # every anchor tied at the gt's best IoU (exact float equality)
                    gt_index[overlaps[i] == gt_max[i]] = i
                else:
                    gt_index[gt_argmax[i]] = i
    # 10. labels: the matched gt's class for positives, num_classes (background) elsewhere
    labels = torch.full((n,), num_classes, dtype=torch.int64)
    labels[gt_index >= 0] = gt_labels[gt_index[gt_index >= 0]]
    return MaxIoUResult(gt_index, max_overlaps, labels)


def to_mmdet_gt_inds(gt_index: Tensor) -> Tensor:
    """Our ``gt_index`` in mmdetection's 1-based encoding: k > 0 is gt k-1, 0 negative, -1 ignored."""
    out = gt_index + 1  # the "+1 trick": positives 1..M, negatives 0
    out[gt_index == -2] = -1
    return out


# --------------------------------------------------------------------------------------------
# RetinaNet's targets for one image: the study note's ``_get_targets_single``, step by step
# (mmdetection 2.11 ``AnchorHead``; reference for :class:`exportable.retinanet.RetinaNetTargets`)
# --------------------------------------------------------------------------------------------


def anchor_inside_flags(anchors: Tensor, valid: Tensor, image_hw: tuple[int, int], allowed_border: float = 0) -> Tensor:
    """mmdetection's ``anchor_inside_flags``: valid anchors inside the image grown by ``allowed_border``.

    The far side is strict (``x2 < W + b``): an anchor ending exactly on the right edge is outside.
    ``allowed_border < 0`` (RetinaNet's -1) keeps every valid anchor.
    """
    h, w = image_hw
    if allowed_border < 0:
        return valid.clone()
    b = allowed_border
    inside = torch.zeros(len(anchors), dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(anchors.tolist()):
        inside[i] = bool(valid[i]) and x1 >= -b and y1 >= -b and x2 < w + b and y2 < h + b
    return inside


def bbox2delta(proposals: Tensor, gt: Tensor, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """mmdetection's ``bbox2delta``: ``(dx, dy, dw, dh)`` of ``gt`` against ``proposals``, both ``(n, 4)``."""
    proposals, gt = proposals.float(), gt.float()
    px = (proposals[:, 0] + proposals[:, 2]) * 0.5
    py = (proposals[:, 1] + proposals[:, 3]) * 0.5
    pw = proposals[:, 2] - proposals[:, 0]
    ph = proposals[:, 3] - proposals[:, 1]
    gx = (gt[:, 0] + gt[:, 2]) * 0.5
    gy = (gt[:, 1] + gt[:, 3]) * 0.5
    gw = gt[:, 2] - gt[:, 0]
    gh = gt[:, 3] - gt[:, 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return (deltas - torch.tensor(means)) / torch.tensor(stds)


def unmap(data: Tensor, count: int, inds: Tensor, fill: float = 0) -> Tensor:
    """mmdetection's ``unmap``: put the rows of ``data`` back at the True places of ``inds`` among
    ``count`` rows; every other row is ``fill``."""
    out = data.new_full((count, *data.shape[1:]), fill)
    out[inds] = data
    return out


@dataclass
class RetinaNetTargetsSingle:
    labels: Tensor  # (N,) gt class for positives, num_classes elsewhere
    label_weights: Tensor  # (N,) pos_weight (or 1) positives, 1 negatives, 0 ignored / outside
    bbox_targets: Tensor  # (N, 4) deltas for positives, 0 elsewhere
    bbox_weights: Tensor  # (N, 4) 1 for positives
    pos_inds: Tensor  # indices among the INSIDE anchors (as mmdetection returns them)
    neg_inds: Tensor
    inside_flags: Tensor  # (N,)

    @property
    def num_pos(self) -> int:
        """``max(len(pos_inds), 1)``: what ``get_targets`` adds up for this image."""
        return max(len(self.pos_inds), 1)

    @property
    def num_neg(self) -> int:
        return max(len(self.neg_inds), 1)


def retinanet_targets_single(
    anchors: Tensor, valid: Tensor, image_hw: tuple[int, int], gt_boxes: Tensor, gt_labels: Tensor, *,
    num_classes: int = 80, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0,
    allowed_border: float = -1, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0), pos_weight: float = -1.0,
    ignore_boxes: Tensor | None = None, ignore_iof_thr: float = -1.0, overlaps: Tensor | None = None,
) -> RetinaNetTargetsSingle | None:
    """RetinaNet's targets for ONE image in the study note's order (mmdetection 2.11 ``_get_targets_single``).

    ``anchors (N, 4)`` all levels, ``valid (N,)`` padding flags, ``image_hw`` the unpadded ``(H, W)``,
    ``gt_boxes (M, 4)`` as ``(x1, y1, x2, y2)``, ``gt_labels (M,)``; ``overlaps (M, N)`` may be passed to
    reuse an IoU matrix of ALL anchors. ``None`` when no anchor is inside (mmdetection 3.3 raises instead).
    """
    # 1. inside flags: padding validity (+ the image border when allowed_border >= 0)
    inside = anchor_inside_flags(anchors, valid, image_hw, allowed_border)
    if not inside.any():
        return None
    # 2. keep the inside anchors only; everything below works on them
    inside_anchors = anchors[inside]
    # 3. assign (MaxIoU, the function above) on the inside anchors
    assign = max_iou_assign(
        inside_anchors, gt_boxes, gt_labels, pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr,
        min_pos_iou=min_pos_iou, ignore_boxes=ignore_boxes, ignore_iof_thr=ignore_iof_thr,
        num_classes=num_classes, overlaps=None if overlaps is None else overlaps[:, inside])
    # 4. PseudoSampler: positives gt_inds > 0, negatives gt_inds == 0, sorted, nothing sampled
    gt_inds = to_mmdet_gt_inds(assign.gt_index)
    pos_inds = torch.nonzero(gt_inds > 0).squeeze(-1).unique()
    neg_inds = torch.nonzero(gt_inds == 0).squeeze(-1).unique()
    pos_gt = gt_inds[pos_inds] - 1  # 0-based gt of each positive
    # 5. targets on the inside anchors: background label, every weight 0 to start with
    k = len(inside_anchors)
    labels = torch.full((k,), num_classes, dtype=torch.int64)
    label_weights, bbox_targets, bbox_weights = torch.zeros(k), torch.zeros(k, 4), torch.zeros(k, 4)
    if len(pos_inds) > 0:
        # 6. positives: the gt's class, weight 1 (or pos_weight), DeltaXYWH deltas to the gt, box weight 1
        bbox_targets[pos_inds] = bbox2delta(inside_anchors[pos_inds], gt_boxes[pos_gt], means, stds)
        bbox_weights[pos_inds] = 1.0
        labels[pos_inds] = gt_labels[pos_gt]
        label_weights[pos_inds] = 1.0 if pos_weight <= 0 else pos_weight
    label_weights[neg_inds] = 1.0  # negatives: background, weight 1; ignored anchors keep weight 0
    # 7. unmap back to all N anchors: labels fill num_classes (background), the rest fill 0
    n = len(anchors)
    return RetinaNetTargetsSingle(
        labels=unmap(labels, n, inside, fill=num_classes), label_weights=unmap(label_weights, n, inside),
        bbox_targets=unmap(bbox_targets, n, inside), bbox_weights=unmap(bbox_weights, n, inside),
        pos_inds=pos_inds, neg_inds=neg_inds, inside_flags=inside)


def retinanet_get_targets(
    anchors: Tensor,
    valid_list: list[Tensor],
    image_hws: list[tuple[int, int]],
    gt_boxes_list: list[Tensor],
    gt_labels_list: list[Tensor],
    **kwargs,
) -> tuple[list[RetinaNetTargetsSingle], int, int] | None:
    """The study note's ``get_targets`` loop: one :func:`retinanet_targets_single` per image, then
    ``num_total_pos = sum(max(num_pos_i, 1))`` and ``num_total_neg = sum(max(num_neg_i, 1))``.
    ``None`` if any image has no inside anchor (mmdetection 2.11 returns ``None`` for the batch)."""
    results = [
        retinanet_targets_single(anchors, valid, hw, boxes, labels, **kwargs)
        for valid, hw, boxes, labels in zip(valid_list, image_hws, gt_boxes_list, gt_labels_list)
    ]
    if any(r is None for r in results):
        return None
    num_total_pos = sum(r.num_pos for r in results)
    num_total_neg = sum(r.num_neg for r in results)
    return results, num_total_pos, num_total_neg


# --------------------------------------------------------------------------------------------
# Focal loss, element by element from the formula (reference for exportable.losses)
# --------------------------------------------------------------------------------------------


def _log_sigmoid(x: float) -> float:
    """``log(sigmoid(x)) = -softplus(-x)``, written so that it never takes ``log(0)``."""
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def focal_loss_reference(
    logits: Tensor, labels: Tensor, weights: Tensor | None = None, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss of every (prediction, class) pair, ``(N, C)`` float64, weighted.

    ``logits (N, C)``, ``labels (N,)`` with ``C`` = background, ``weights (N,)``. For class c:
    ``t = 1 if label == c else 0``, ``p = sigmoid(x)``;
    ``loss = -(alpha * t * (1 - p)^gamma * log(p) + (1 - alpha) * (1 - t) * p^gamma * log(1 - p))``.
    mmdetection's RetinaNet loss is ``focal_loss_reference(...).sum() / num_total_pos``.
    """
    n, c = logits.shape
    out = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        w = 1.0 if weights is None else float(weights[i])
        for k in range(c):
            x = float(logits[i, k])
            p = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
            if int(labels[i]) == k:  # t = 1: the anchor's class
                loss = -alpha * (1.0 - p) ** gamma * _log_sigmoid(x)
            else:  # t = 0: every other class, and every class of a background anchor
                loss = -(1.0 - alpha) * p**gamma * _log_sigmoid(-x)
            out[i, k] = loss * w
    return out


# --------------------------------------------------------------------------------------------
# Post-processing at test time: head outputs -> detections (one image)
# --------------------------------------------------------------------------------------------


@dataclass
class Detections:
    """One image's detections, best score first."""

    boxes: Tensor  # (K, 4) (x1, y1, x2, y2) pixels, clipped to the image
    scores: Tensor  # (K,) class probability
    labels: Tensor  # (K,) int64 class


def nms_iou(box: Tensor, others: Tensor) -> Tensor:
    """IoU of one box ``(4,)`` with boxes ``(K, 4)``, in float32 and in onnxruntime's operation order.

    ``inter / (area_a + area_b - inter)`` with no eps; pairs that do not overlap, or where either box has
    zero area, get 0 (zero-area boxes never suppress and are never suppressed, as in ONNX NMS).
    """
    ix = torch.minimum(box[2], others[:, 2]) - torch.maximum(box[0], others[:, 0])  # (K,) overlap width
    iy = torch.minimum(box[3], others[:, 3]) - torch.maximum(box[1], others[:, 1])  # (K,) overlap height
    inter = ix * iy
    area_a = (box[2] - box[0]) * (box[3] - box[1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area_a + area_b - inter
    overlap = (ix > 0) & (iy > 0) & (area_a > 0) & (area_b > 0) & (union > 0)
    return torch.where(overlap, inter / union, torch.zeros_like(inter))


def greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int | None = None) -> list[int]:
    """Greedy NMS of one set of boxes: kept indices, best score first (equal scores: lower index first).

    Visit the boxes by score; keep a box unless a box kept before it overlaps it with IoU ``>``
    ``iou_threshold`` (IoU exactly at the threshold is kept); stop after ``max_output`` kept boxes.
    """
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    suppressed = [False] * len(scores)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        if max_output is not None and len(keep) == max_output:
            break
        iou = nms_iou(boxes[i], boxes)  # (K,) against every box; already visited ones no longer matter
        for j in (iou > iou_threshold).nonzero()[:, 0].tolist():
            suppressed[j] = True
    return keep


def retinanet_postprocess_reference(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    image_size: tuple[int, int],
    *,
    num_classes: int = 80,
    generator: AnchorGenerator | None = None,
    nms_pre: int = 1000,
    score_thr: float = 0.05,
    iou_threshold: float = 0.5,
    max_per_img: int = 100,
    min_bbox_size: float | None = 0.0,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    wh_ratio_clip: float = 16 / 1000,
) -> Detections:
    """RetinaNet's test-time post-processing for ONE image, mmdetection 3.3's steps in order.

    The oracle of :class:`exportable.retinanet.RetinaNetPostProcess`. ``cls_scores`` holds one
    ``(A * C, H_l, W_l)`` tensor of LOGITS per level, ``bbox_preds`` one ``(A * 4, H_l, W_l)`` tensor of
    deltas, channel ``a * C + c`` and ``a * 4 + j`` as mmdetection's head writes them; ``image_size`` is
    the unpadded ``(H, W)``. Steps (``_predict_by_feat_single``, ``filter_scores_and_topk``,
    ``_bbox_post_process``, mmcv ``batched_nms``):

    1. anchors of each level, order ``(y * W + x) * A + a``;
    2. per level: scores = sigmoid(logits), one per (anchor, class) pair;
    3. per level: keep pairs with score ``> score_thr``, sort them by score, keep the first ``nms_pre``;
    4. decode the kept pairs' anchors with their deltas, clip to the image; concatenate the levels;
    5. drop boxes whose width or height is ``<= min_bbox_size``;
    6. NMS within each class (mmcv: boxes shifted by ``label * (max coordinate + 1)``, one NMS);
    7. keep the first ``max_per_img`` by score.

    Two choices pinned down where mmdetection leaves them to float32 or to the backend: step 3 compares
    and sorts LOGITS (``sigmoid`` is increasing, so it is the same filter and the same order, without
    float32 turning distinct logits into equal scores), and equal logits keep the lower index (level,
    then anchor, then class). Step 6 writes mmcv's shift out as mmcv computes it, in float32: plain
    per-class NMS gives the same boxes except when an IoU sits within float32 rounding of the threshold.
    """
    generator = generator if generator is not None else AnchorGenerator.retinanet()
    coder = DeltaXYWHCoder(means=means, stds=stds, wh_ratio_clip=wh_ratio_clip)
    # 1. anchors from the feature-map sizes
    sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_scores]
    level_anchors = generator.grid_anchors(sizes)  # L x (H * W * A, 4)
    logit_thr = logit_threshold(score_thr)  # score > score_thr  <=>  logit > logit_thr
    all_boxes, all_logits, all_labels = [], [], []
    for cls, box, anchors in zip(cls_scores, bbox_preds, level_anchors):
        # 2. (A * C, H, W) -> (H, W, A * C) -> (H * W * A, C): row (y * W + x) * A + a, column c
        logits = cls.permute(1, 2, 0).reshape(-1, num_classes)
        deltas = box.permute(1, 2, 0).reshape(-1, 4)  # (H * W * A, 4)
        # 3. the pairs above the threshold, in (anchor, class) order, then sorted, then the first nms_pre
        pairs = (logits > logit_thr).nonzero()  # (n, 2) rows (anchor, class)
        values = logits[pairs[:, 0], pairs[:, 1]]  # (n,)
        order = torch.sort(values, descending=True, stable=True).indices[:nms_pre]  # stable: lower index first
        anchor_idx, labels = pairs[order, 0], pairs[order, 1]
        # 4. decode the kept pairs' anchors, clip to the image
        all_boxes.append(coder.decode(anchors[anchor_idx], deltas[anchor_idx], max_shape=image_size))
        all_logits.append(values[order])
        all_labels.append(labels)
    boxes, logits, labels = torch.cat(all_boxes), torch.cat(all_logits), torch.cat(all_labels)
    # 5. drop small boxes
    if min_bbox_size is not None:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        big = (w > min_bbox_size) & (h > min_bbox_size)
        boxes, logits, labels = boxes[big], logits[big], labels[big]
    if len(boxes) == 0:
        return Detections(boxes.reshape(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    # 6. NMS within each class: mmcv moves each class to its own region, then runs one NMS
    span = boxes.max() + 1  # every coordinate is in [0, span) after clipping
    shifted = boxes + (labels.to(boxes.dtype) * span)[:, None]
    # 7. the NMS visits boxes by score: stopping after max_per_img kept boxes keeps the first max_per_img
    keep = greedy_nms(shifted, logits, iou_threshold, max_output=max_per_img)
    return Detections(boxes[keep], torch.sigmoid(logits[keep]), labels[keep])


# --------------------------------------------------------------------------------------------
# The photo: MaxIoU on RetinaNet's anchors, and its figure (notebook 05)
# --------------------------------------------------------------------------------------------

EYES = ((210.0, 184.0, 236.0, 196.0), (296.0, 182.0, 322.0, 194.0))  # 26 x 12 px: smaller than every anchor


@dataclass
class PhotoAssignment:
    """MaxIoU (RetinaNet's 0.5 / 0.4 / 0) on the photo's RetinaNet anchors, and what the figure shows.

    ``anchors (N, 4)``, ``gt_boxes (M, 4)``, ``names`` per gt; per anchor ``(N,)``: ``gt_index`` (0-based,
    -1 negative, -2 ignored), ``max_overlaps``, ``low_quality`` (positive through step 9 only, best IoU < 0.5),
    ``crosses_border`` (the anchor sticks out of the image: kept with ``allowed_border = -1``).
    """

    anchors: Tensor
    gt_boxes: Tensor
    names: list[str]
    gt_index: Tensor
    max_overlaps: Tensor
    low_quality: Tensor
    crosses_border: Tensor
    image_hw: tuple[int, int]

    def positives_per_gt(self) -> list[int]:
        m = len(self.gt_boxes)
        return torch.bincount(self.gt_index[self.gt_index >= 0], minlength=m)[:m].tolist()


def photo_assignment(scene, *, extra_boxes: Sequence[Sequence[float]] = EYES, extra_names=("eye", "eye"),
                     pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4) -> PhotoAssignment:
    """Run :func:`max_iou_assign` on the photo's 57,780 RetinaNet anchors (every one valid: the photo is not
    padded here), its six gts plus ``extra_boxes`` (by default its two eyes, small enough that step 9 alone
    gives them positives)."""
    from exportable.anchors import featmap_sizes_for
    from exportable.boxes import box_iou

    gen = AnchorGenerator.retinanet()
    anchors = torch.cat(gen.grid_anchors(featmap_sizes_for(scene.hw, gen.strides)))  # (N, 4)
    extra = torch.as_tensor(extra_boxes, dtype=torch.float32).reshape(-1, 4)
    boxes = torch.cat([scene.boxes, extra])  # (M, 4)
    labels = torch.arange(len(boxes))  # one "class" per gt: only the indices matter here
    res = max_iou_assign(anchors, boxes, labels, pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr,
                         num_classes=len(boxes), overlaps=box_iou(anchors, boxes).T)
    h, w = scene.hw
    border = (anchors[:, 0] < 0) | (anchors[:, 1] < 0) | (anchors[:, 2] > w) | (anchors[:, 3] > h)  # (N,)
    low = (res.gt_index >= 0) & (res.max_overlaps < pos_iou_thr)
    return PhotoAssignment(anchors, boxes, scene.names() + list(extra_names), res.gt_index, res.max_overlaps, low,
                           border, scene.hw)


def draw_photo_assignment(image: Any, pa: PhotoAssignment, *, zoom: tuple[float, float, float, float] = (185, 160,
                          345, 225)):
    """Two panels. Left, the whole photo: each gt's positives as dots in its colour, the anchors of the ignored
    band (0.4 <= IoU < 0.5) as black crosses, low-quality positives as stars, positives whose anchor crosses the
    image border ringed. Right, a zoom (``x1, y1, x2, y2``) on the low-quality positives with their anchor boxes
    (dashed) and their IoU. Negatives are not drawn. Returns the Figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from lessons.draw import LessonFigure, color_for

    IGNORED = "#ffd400"  # yellow crosses: visible on the dark uniform and on the face
    fig = LessonFigure(figsize=(14.0, 6.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.15])
    a = pa.anchors.numpy()
    centres = (a[:, :2] + a[:, 2:]) / 2  # (N, 2)
    gi = pa.gt_index.numpy()
    low, border = pa.low_quality.numpy(), pa.crosses_border.numpy()
    for ax in (left, right):
        ax.imshow(image, extent=(0, pa.image_hw[1], pa.image_hw[0], 0), zorder=0)
        ign = gi == -2
        ax.scatter(centres[ign, 0], centres[ign, 1], s=14, marker="x", color=IGNORED, linewidths=1.0, zorder=2)
        for j, box in enumerate(pa.gt_boxes.tolist()):
            c = color_for(j)
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=c, lw=2, zorder=3))
            mine = gi == j
            ax.scatter(centres[mine & ~low, 0], centres[mine & ~low, 1], s=16, color=c, edgecolors="white",
                       linewidths=0.4, zorder=4)
            ax.scatter(centres[mine & low, 0], centres[mine & low, 1], s=150, marker="*", color=c,
                       edgecolors="black", linewidths=0.7, zorder=6)
        ring = (gi >= 0) & border
        ax.scatter(centres[ring, 0], centres[ring, 1], s=60, facecolors="none", edgecolors="white", linewidths=1.2,
                   zorder=5)
    counts = pa.positives_per_gt()
    handles = [Line2D([], [], color=color_for(j), marker="o", linestyle="-", label=f"gt {j} {name}: {counts[j]}")
               for j, name in enumerate(pa.names)]
    handles += [
        Line2D([], [], color="0.3", marker="*", markersize=11, linestyle="", markeredgecolor="black",
               label=f"low-quality positive (step 9): {int(low.sum())}"),
        Line2D([], [], color=IGNORED, marker="x", linestyle="",
               label=f"ignored, 0.4 <= IoU < 0.5: {int((gi == -2).sum())}"),
        Line2D([], [], color="0.3", marker="o", markerfacecolor="none", markeredgecolor="0.3", linestyle="",
               label=f"positive anchor crossing the border: {int(((gi >= 0) & border).sum())}"),
    ]
    right.legend(handles=handles, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, framealpha=0.95)
    left.set_xlim(0, pa.image_hw[1])
    left.set_ylim(pa.image_hw[0], 0)
    left.set_title(f"MaxIoU 0.5 / 0.4 on {len(a):,} anchors: {int((gi >= 0).sum())} positive, "
                   f"{int((gi == -1).sum()):,} negative (not drawn)", fontsize=10)
    for j in sorted(set(gi[low].tolist())):  # each gt with low-quality positives: its tied best anchors
        c = color_for(j)
        tied = np.flatnonzero(low & (gi == j))
        for i in tied:
            x1, y1, x2, y2 = a[i]
            right.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, lw=1.3, ls="--", zorder=5))
        g = pa.gt_boxes[j].tolist()
        text = f"gt {j} {pa.names[j]}: {len(tied)} anchors tied\nat its best IoU {float(pa.max_overlaps[tied[0]]):.2f}"
        right.annotate(text,
                       ((g[0] + g[2]) / 2, a[tied, 3].max() + 2), ha="center", va="top", fontsize=9, color="black",
                       bbox={"facecolor": "white", "edgecolor": c, "alpha": 0.9, "pad": 2.0}, zorder=7)
    x1, y1, x2, y2 = zoom
    right.set_xlim(x1, x2)
    right.set_ylim(y2, y1)
    right.set_title("zoom: each eye's best anchors (dashed), below 0.5 but positive", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Exercise checkers (notebook 05): each case sits on a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


def _steps_7_8_reference(overlaps: Tensor, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4) -> Tensor:
    m, n = overlaps.shape
    return max_iou_assign(torch.zeros(n, 4), torch.zeros(m, 4), torch.zeros(m, dtype=torch.int64),
                          pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr, match_low_quality=False,
                          overlaps=overlaps).gt_index


def check_steps_7_8(fn, scene=None) -> None:
    """Exercise 1: ``fn(overlaps (M, N), pos_iou_thr, neg_iou_thr) -> gt_index (N,)`` after steps 5-8.

    Cases: a best IoU exactly at 0.4 and at 0.5, just below each, 0, a column that step 4 set to -1,
    two gts tied at the best IoU, thresholds other than RetinaNet's, and the photo (57,780 anchors)."""
    from exportable.boxes import box_iou
    from lessons.cases import Case, run_cases

    def one_column(*ious: float) -> Tensor:  # (M, 1): the IoUs of one anchor with M gts
        return torch.tensor(ious, dtype=torch.float32)[:, None]

    cases = []
    for rule, ov in (
        ("best IoU exactly 0.4: ignored (-2); negatives need IoU < 0.4", one_column(0.4, 0.1)),
        ("best IoU 0.39999: negative (-1)", one_column(0.39999, 0.1)),
        ("best IoU exactly 0.5: positive; positives need IoU >= 0.5", one_column(0.1, 0.5)),
        ("best IoU 0.49999: ignored (-2)", one_column(0.49999, 0.2)),
        ("best IoU exactly 0: negative (0 <= IoU < 0.4)", one_column(0.0, 0.0)),
        ("a column set to -1 by an ignore region (step 4): never negative, stays -2", one_column(-1.0, -1.0)),
        ("two gts tied at the best IoU 0.6: the lower gt index", one_column(0.2, 0.6, 0.6)),
    ):
        cases.append(Case(rule, (ov, 0.5, 0.4), _steps_7_8_reference(ov)))
    rpn = torch.tensor([[0.7, 0.69999, 0.3, 0.29999, 0.5]])  # (1, 5)
    cases.append(Case("RPN's thresholds passed in (0.7 / 0.3): IoU 0.7 positive, 0.3 ignored, 0.29999 negative",
                      (rpn, 0.7, 0.3), _steps_7_8_reference(rpn, 0.7, 0.3)))
    if scene is None:
        from lessons.scenes import default_scene

        scene = default_scene()
    gen = AnchorGenerator.retinanet()
    from exportable.anchors import featmap_sizes_for

    anchors = torch.cat(gen.grid_anchors(featmap_sizes_for(scene.hw, gen.strides)))  # (N, 4)
    photo = box_iou(scene.boxes, anchors)  # (M, N)
    cases.append(Case(f"the photo: {len(scene.boxes)} gts x {len(anchors):,} anchors", (photo, 0.5, 0.4),
                      _steps_7_8_reference(photo)))
    run_cases("steps 7-8", fn, cases)


def check_num_total_pos(fn, num_classes: int = 80) -> None:
    """Exercise 2: ``fn(labels (B, N), label_weights (B, N), num_classes) -> ()``: the sum over images of
    ``max(number of positives, 1)``. Cases: images with positives, an image with none, a batch of empty
    images, ignored anchors (background label, weight 0) and negatives (background, weight 1)."""
    from lessons.cases import Case, run_cases

    c = num_classes
    bg = c  # the background label

    def batch(*rows: tuple[list[int], list[float]]) -> tuple[Tensor, Tensor]:
        labels = torch.tensor([r[0] for r in rows], dtype=torch.int64)  # (B, N)
        weights = torch.tensor([r[1] for r in rows], dtype=torch.float32)  # (B, N)
        return labels, weights

    def expected(labels: Tensor, weights: Tensor) -> Tensor:
        per_image = ((labels < c) & (weights > 0)).sum(dim=1)  # (B,)
        return per_image.clamp(min=1).sum()

    cases = []
    for rule, (labels, weights) in (
        ("two images with 3 and 2 positives: 5", batch(([0, 5, 5, bg, bg], [1, 1, 1, 1, 0]),
                                                       ([7, bg, 2, bg, bg], [1, 1, 1, 0, 1]))),
        ("an image without positives still counts 1: 3 + 1", batch(([0, 5, 5, bg, bg], [1, 1, 1, 1, 0]),
                                                                   ([bg, bg, bg, bg, bg], [1, 1, 0, 1, 1]))),
        ("three images, none with a positive: 1 per image = 3", batch(([bg] * 5, [1.0] * 5), ([bg] * 5, [0.0] * 5),
                                                                      ([bg] * 5, [1, 0, 1, 0, 1]))),
        ("negatives (weight 1) and ignored anchors (weight 0) are not positives: 1 + 1",
         batch(([bg, 3, bg, bg, bg], [1, 1, 1, 1, 1]), ([bg, bg, bg, bg, 4], [0, 0, 0, 0, 1]))),
    ):
        cases.append(Case(rule, (labels, weights), expected(labels, weights), kwargs={"num_classes": c}))
    run_cases("num_total_pos", fn, cases)


def check_focal_weight(fn) -> None:
    """Exercise 3: ``fn(logits (N, C), labels (N,), alpha, gamma) -> (N, C)`` the factor ``alpha_t (1 - p_t)^gamma``.

    ``BCE x fn(...)`` is compared with :func:`exportable.losses.sigmoid_focal_loss`. Cases: RetinaNet's
    alpha 0.25 / gamma 2 with background rows, gamma 0 (the weight is alpha_t alone), alpha 0.5 / gamma 1,
    and logits far from 0 (p_t near 0 and near 1)."""
    import torch.nn.functional as F

    from exportable.losses import sigmoid_focal_loss
    from lessons.cases import Case, run_cases

    def weighted_bce(logits, labels, alpha=0.25, gamma=2.0):
        c = logits.shape[1]
        target = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)  # (N, C); background rows all 0
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (N, C)
        return bce * fn(logits, labels, alpha, gamma)

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 5, generator=g) * 3  # (64, 5)
    labels = torch.randint(0, 6, (64,), generator=g)  # (64,), 5 = background
    labels[:4] = 5  # at least four background rows
    far = torch.tensor([[12.0, -12.0, 0.0], [-12.0, 12.0, 0.0], [12.0, 12.0, -12.0]])  # (3, 3)
    far_labels = torch.tensor([0, 0, 3])  # 3 = background
    cases = []
    for rule, args in (
        ("RetinaNet's alpha 0.25, gamma 2, background rows (label C): every target 0", (logits, labels, 0.25, 2.0)),
        ("gamma 0: the weight is alpha_t alone (alpha for t = 1, 1 - alpha for t = 0)", (logits, labels, 0.25, 0.0)),
        ("alpha 0.5, gamma 1", (logits, labels, 0.5, 1.0)),
        ("logits +-12: confident right answers weigh ~0, confident wrong ones ~alpha_t", (far, far_labels, 0.25, 2.0)),
    ):
        x, y, alpha, gamma = args
        expected = sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
        cases.append(Case(rule, args, expected, atol=1e-6, rtol=1e-5))
    run_cases("focal weight", weighted_bce, cases)
