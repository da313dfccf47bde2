"""Evaluation: post-processing (NMS or none), COCO AP through pycocotools, and assignment statistics.

Shape shorthand: ``K`` images, ``N`` priors, ``C`` classes, ``D`` detections of one image, ``M`` gts.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; COCO's ``bbox`` is
``[x, y, w, h]`` and its ids start at 1 (image id = index + 1, category id = class + 1).

AP is never re-implemented here: :func:`coco_ap` hands detections to ``pycocotools``' ``COCOeval`` (the
field's reference: 101 recall points, IoU 0.50:0.05:0.95, at most 100 detections per image; "small" =
box area below 32^2 px). What the arena adds:

- :func:`postprocess`: per image, (prior, class) pairs with score ``> 0.05``, the best 1000, then
  class-aware NMS at IoU 0.6 (``exportable.nms.batched_nms``) or no NMS, and the best 100;
- :func:`duplicates_per_gt`: without NMS, how many confident detections (score ``>= 0.3``) land on a gt
  that a higher-scoring detection of the same class already found (IoU ``>= 0.5``), per gt;
- :func:`assignment_stats`: positives per gt and the fraction of gts left without any positive.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from jaxtyping import Float
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from exportable.assigners.result import AssignResult
from exportable.boxes import box_iou
from exportable.nms import batched_nms
from exportable.ordering import topk

__all__ = ["postprocess", "coco_from_dict", "coco_ap", "to_coco_detections", "duplicates_per_gt",
           "assignment_stats", "METRICS"]

METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")  # COCOeval.stats[0:6]


def postprocess(
    scores: Float[Tensor, "N C"],
    boxes: Float[Tensor, "N 4"],
    *,
    nms: bool = True,
    score_thr: float = 0.05,
    pre: int = 1000,
    iou_threshold: float = 0.6,
    max_det: int = 100,
    image_size: int | None = None,
) -> tuple[Float[Tensor, "D 4"], Float[Tensor, " D"], Tensor]:
    """One image's detections ``(boxes (D, 4), scores (D,), labels (D,))``, best score first.

    1. every (prior, class) pair scoring ``> score_thr``; 2. the best ``pre`` of them (ties: lower pair
    index first); 3. class-aware NMS at ``iou_threshold`` (``nms=True``) or nothing; 4. the best
    ``max_det``. Boxes are clipped to ``[0, image_size]`` when it is given.
    """
    c = scores.shape[1]
    flat = scores.reshape(-1)  # (N * C,) pair index = prior * C + class
    vals, pair = topk(torch.where(flat > score_thr, flat, -1.0), pre)  # (pre,), (pre,)
    keep = vals > score_thr  # (pre,) real candidates come first
    vals, pair = vals[keep], pair[keep]
    prior = torch.div(pair, c, rounding_mode="floor")  # (D',)
    labels = pair - prior * c  # (D',)
    b = boxes[prior]  # (D', 4)
    if image_size is not None:
        b = b.clamp(min=0.0, max=float(image_size))
    if nms and vals.numel():
        kept = batched_nms(b, vals, labels, iou_threshold)  # (D'',) best first
        b, vals, labels = b[kept], vals[kept], labels[kept]
    return b[:max_det], vals[:max_det], labels[:max_det]


# ---------------------------------------------------------------------------------------------------
# COCO


def coco_from_dict(dataset: dict) -> COCO:
    """A ``pycocotools`` COCO object from an annotation dict (quietly)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def to_coco_detections(image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor) -> list[dict]:
    """COCO result dicts of one image (``bbox`` = ``[x, y, w, h]``, category id = class + 1)."""
    out = []
    for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        out.append({"image_id": int(image_id), "category_id": int(lab) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s)})
    return out


def coco_ap(coco_gt: COCO, detections: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """``COCOeval`` bbox metrics (:data:`METRICS`) of ``detections`` on ``image_ids`` (default: all).

    No detection at all gives 0 for every metric; a metric with no gt in its area range is NaN
    (COCOeval's -1).
    """
    if not detections:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else float("nan")) for name, v in zip(METRICS, ev.stats[:6])}


# ---------------------------------------------------------------------------------------------------
# What NMS hides, and what the assigner did


def duplicates_per_gt(
    detections: list[tuple[Tensor, Tensor, Tensor]],
    gt_boxes: list[np.ndarray],
    gt_labels: list[np.ndarray],
    *,
    score_thr: float = 0.3,
    iou_threshold: float = 0.5,
) -> float:
    """Duplicates per gt among detections without NMS.

    Per image, detections with score ``>= score_thr`` are visited best first (as COCO matches them). A
    detection whose same-class gts with IoU ``>= iou_threshold`` are all taken already is a duplicate;
    one with a free such gt takes the free gt of highest IoU. Returns duplicates / number of gts.
    """
    dups, total = 0, 0
    for (boxes, scores, labels), gb, gl in zip(detections, gt_boxes, gt_labels):
        total += len(gb)
        if len(gb) == 0:
            continue
        order = torch.argsort(scores, descending=True, stable=True)  # (D,) best first, ties by index
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        iou = box_iou(boxes, torch.as_tensor(gb)).numpy()  # (D, M)
        same = labels.numpy()[:, None] == np.asarray(gl)[None, :]  # (D, M)
        hit = (iou >= iou_threshold) & same  # (D, M)
        taken = np.zeros(len(gb), bool)  # (M,)
        for d in np.nonzero(scores.numpy() >= score_thr)[0]:
            if not hit[d].any():
                continue
            free = hit[d] & ~taken  # (M,)
            if free.any():
                taken[np.argmax(np.where(free, iou[d], -1.0))] = True
            else:
                dups += 1
    return dups / max(total, 1)


def assignment_stats(results: list[AssignResult], gt_masks: list[Tensor]) -> dict[str, float]:
    """``pos_per_gt`` (positives / real gts) and ``gts_without_pos`` (fraction of real gts with none)."""
    positives, gts, empty = 0, 0, 0
    for res, mask in zip(results, gt_masks):
        m = mask.shape[1]
        for i in range(mask.shape[0]):
            real = int(mask[i].sum())
            idx = res.gt_index[i][res.gt_index[i] >= 0]  # (P_i,)
            counts = torch.bincount(idx, minlength=m)[:m]  # (M,)
            positives += int(idx.numel())
            gts += real
            empty += int((counts[mask[i]] == 0).sum())
    return {"pos_per_gt": positives / max(gts, 1), "gts_without_pos": empty / max(gts, 1)}
