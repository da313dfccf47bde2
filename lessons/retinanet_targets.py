"""RetinaNet's targets, the readable way: one image at a time, mmdetection's steps in order.

This is the reference (test oracle) for :class:`exportable.assigners.max_iou.MaxIoUAssigner`.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``anchors (N, 4)``, ``gt_boxes (M, 4)`` for
ONE image. Step numbers match the notebook ``05_retinanet_targets`` and ``reference/algorithms.md``
§4. The result uses the package's encoding (``gt_index`` 0-based, -1 negative, -2 ignored);
:func:`to_mmdet_gt_inds` gives mmdetection's 1-based ``gt_inds`` (0 negative, -1 ignored),
which is where the document's "+1 trick" lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
