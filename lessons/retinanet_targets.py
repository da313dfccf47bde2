"""RetinaNet's targets, the readable way: one image at a time, mmdetection's steps in order.

This is the reference (test oracle) for :class:`exportable.assigners.max_iou.MaxIoUAssigner`,
:class:`exportable.retinanet.RetinaNetTargets` (:func:`retinanet_targets_single`) and the focal loss
of :mod:`exportable.losses` (:func:`focal_loss_reference`).
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``anchors (N, 4)``, ``gt_boxes (M, 4)`` for
ONE image. Step numbers match the notebook ``05_retinanet_targets`` and ``docs/algorithms.md``
§4. The result uses the package's encoding (``gt_index`` 0-based, -1 negative, -2 ignored);
:func:`to_mmdet_gt_inds` gives mmdetection's 1-based ``gt_inds`` (0 negative, -1 ignored),
which is where the document's "+1 trick" lives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float | tuple[float, float] = 0.4,
    min_pos_iou: float = 0.0,
    gt_max_assign_all: bool = True,
    match_low_quality: bool = True,
    ignore_boxes: Tensor | None = None,
    ignore_iof_thr: float = -1.0,
    ignore_wrt_candidates: bool = True,
    num_classes: int = 80,
    guard_zero_iou: bool = False,
    overlaps: Tensor | None = None,
) -> MaxIoUResult:
    """mmdetection 3.3's ``MaxIoUAssigner.assign`` for one image, step by step.

    ``overlaps`` (M, N) may be passed to reuse an IoU matrix computed elsewhere (the tests pass
    the exportable IoU so that both sides compare the very same floats).
    """
    n, m = len(anchors), len(gt_boxes)
    # 3. overlaps between every gt and every anchor, shape (M, N) as mmdetection keeps it
    if overlaps is None:
        overlaps = iou_matrix(gt_boxes, anchors) if m and n else torch.zeros(m, n)
    overlaps = overlaps.clone()
    # 4. ignore regions: anchors covered by an ignore box (IoF > thr) get their column set to -1
    if ignore_iof_thr > 0 and ignore_boxes is not None and len(ignore_boxes) and n:
        if ignore_wrt_candidates:
            iof = iou_matrix(anchors, ignore_boxes, mode="iof").max(dim=1).values  # over anchor areas
        else:
            iof = iou_matrix(ignore_boxes, anchors, mode="iof").max(dim=0).values  # over ignore-box areas
        overlaps[:, iof > ignore_iof_thr] = -1
    # 5. start with "ignored" everywhere; no gts -> everything negative; no anchors -> nothing
    gt_index = torch.full((n,), -2, dtype=torch.int64)
    if m == 0 or n == 0:
        return MaxIoUResult(torch.full((n,), -1, dtype=torch.int64), torch.zeros(n),
                            torch.full((n,), num_classes, dtype=torch.int64))
    # 6. best gt for each anchor, best anchor for each gt
    max_overlaps, argmax = overlaps.max(dim=0)
    gt_max, gt_argmax = overlaps.max(dim=1)
    # 7. negatives
    if isinstance(neg_iou_thr, tuple):
        lo, hi = neg_iou_thr
    else:
        lo, hi = 0.0, neg_iou_thr
    gt_index[(max_overlaps >= lo) & (max_overlaps < hi)] = -1
    # 8. positives (mmdetection writes argmax + 1 here: its 1-based "+1 trick")
    pos = max_overlaps >= pos_iou_thr
    gt_index[pos] = argmax[pos]
    # 9. low-quality matches, gt by gt: a later gt overwrites an earlier one
    if match_low_quality:
        for i in range(m):
            if gt_max[i] >= min_pos_iou and (not guard_zero_iou or gt_max[i] > 0):
                if gt_max_assign_all:
                    gt_index[overlaps[i] == gt_max[i]] = i
                else:
                    gt_index[gt_argmax[i]] = i
    # 10. labels of positives
    labels = torch.full((n,), num_classes, dtype=torch.int64)
    labels[gt_index >= 0] = gt_labels[gt_index[gt_index >= 0]]
    return MaxIoUResult(gt_index, max_overlaps, labels)


def to_mmdet_gt_inds(gt_index: Tensor) -> Tensor:
    """Our ``gt_index`` in mmdetection's 1-based encoding: k > 0 is gt k-1, 0 negative, -1 ignored."""
    out = gt_index + 1  # the "+1 trick": positives 1..M, negatives 0
    out[gt_index == -2] = -1
    return out


# --------------------------------------------------------------------------------------------
# RetinaNet's targets for one image: the document's ``_get_targets_single``, step by step
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
    anchors: Tensor,
    valid: Tensor,
    image_hw: tuple[int, int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    num_classes: int = 80,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.0,
    allowed_border: float = -1,
    means=(0.0, 0.0, 0.0, 0.0),
    stds=(1.0, 1.0, 1.0, 1.0),
    pos_weight: float = -1.0,
    ignore_boxes: Tensor | None = None,
    ignore_iof_thr: float = -1.0,
    overlaps: Tensor | None = None,
) -> RetinaNetTargetsSingle | None:
    """RetinaNet's targets for ONE image in the document's order (mmdetection 2.11 ``_get_targets_single``).

    ``anchors (N, 4)`` all levels concatenated, ``valid (N,)`` padding flags, ``image_hw`` the unpadded
    ``(H, W)`` (``img_shape``), ``gt_boxes (M, 4)``, ``gt_labels (M,)``. ``overlaps (M, N)`` may be passed
    to reuse an IoU matrix of ALL anchors (the tests pass the exportable one). Returns ``None`` when no
    anchor is inside, as the document does (mmdetection 3.3 raises instead).
    """
    # 1. inside flags: padding validity (+ the image border when allowed_border >= 0)
    inside = anchor_inside_flags(anchors, valid, image_hw, allowed_border)
    if not inside.any():
        return None
    # 2. keep the inside anchors only; everything below works on them
    inside_anchors = anchors[inside]
    # 3. assign (MaxIoU, the function above) on the inside anchors
    sub_overlaps = None if overlaps is None else overlaps[:, inside]
    assign = max_iou_assign(
        inside_anchors, gt_boxes, gt_labels, pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr,
        min_pos_iou=min_pos_iou, ignore_boxes=ignore_boxes, ignore_iof_thr=ignore_iof_thr,
        num_classes=num_classes, overlaps=sub_overlaps,
    )
    # 4. PseudoSampler: positives gt_inds > 0, negatives gt_inds == 0, sorted, nothing sampled
    gt_inds = to_mmdet_gt_inds(assign.gt_index)
    pos_inds = torch.nonzero(gt_inds > 0).squeeze(-1).unique()
    neg_inds = torch.nonzero(gt_inds == 0).squeeze(-1).unique()
    pos_assigned_gt_inds = gt_inds[pos_inds] - 1
    # 5. targets on the inside anchors: background label, every weight 0 to start with
    n_inside = len(inside_anchors)
    bbox_targets = torch.zeros(n_inside, 4)
    bbox_weights = torch.zeros(n_inside, 4)
    labels = torch.full((n_inside,), num_classes, dtype=torch.int64)
    label_weights = torch.zeros(n_inside)
    if len(pos_inds) > 0:
        # 6. encode the matched gt against each positive anchor (DeltaXYWH)
        pos_gt_bboxes = gt_boxes[pos_assigned_gt_inds]
        bbox_targets[pos_inds] = bbox2delta(inside_anchors[pos_inds], pos_gt_bboxes, means, stds)
        bbox_weights[pos_inds] = 1.0
        labels[pos_inds] = gt_labels[pos_assigned_gt_inds]
        label_weights[pos_inds] = 1.0 if pos_weight <= 0 else pos_weight
    if len(neg_inds) > 0:
        label_weights[neg_inds] = 1.0
    # 7. unmap back to all N anchors: labels fill num_classes (background), the rest fill 0
    n = len(anchors)
    return RetinaNetTargetsSingle(
        labels=unmap(labels, n, inside, fill=num_classes),
        label_weights=unmap(label_weights, n, inside),
        bbox_targets=unmap(bbox_targets, n, inside),
        bbox_weights=unmap(bbox_weights, n, inside),
        pos_inds=pos_inds,
        neg_inds=neg_inds,
        inside_flags=inside,
    )


def retinanet_get_targets(
    anchors: Tensor,
    valid_list: list[Tensor],
    image_hws: list[tuple[int, int]],
    gt_boxes_list: list[Tensor],
    gt_labels_list: list[Tensor],
    **kwargs,
) -> tuple[list[RetinaNetTargetsSingle], int, int] | None:
    """The document's ``get_targets`` loop: one :func:`retinanet_targets_single` per image, then
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
