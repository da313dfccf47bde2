"""RoI-head sampling and RoI pooling, the readable way: simple-faster-rcnn's ``ProposalTargetCreator``,
RoIPool and RoIAlign, one image (one RoI) at a time.

The reference (test oracle) for :class:`exportable.roi_head.ProposalTargetCreator` and
:class:`exportable.roi_align.RoIAlign`, and the code of ``notebooks/04_roi_head_sampling``.

It follows chenyuntc/simple-faster-rcnn-pytorch ``model/utils/creator_tool.py`` step by step, with the
package's conventions instead of that repository's:

- boxes are ``(x1, y1, x2, y2)`` in absolute pixels (simple-faster-rcnn writes ``(y1, x1, y2, x2)``);
- the random choice is explicit: ``noise (R + M,)``, one uniform value per candidate (the R RoIs, then
  the M appended gts), and where simple-faster-rcnn calls ``np.random.choice`` we keep the candidates
  with the LARGEST noise (equal noise: the lower index first). Same distribution, reproducible,
  exportable.

Names map to the peers:

===========================  ===========================================  ==========================================
here (simple-faster-rcnn)    torchvision ``RoIHeads``                     mmdetection ``StandardRoIHead``
===========================  ===========================================  ==========================================
``ProposalTargetCreator``    ``select_training_samples``                  ``bbox_assigner`` + ``bbox_sampler`` +
                                                                          ``bbox_head.get_targets``
``n_sample``, ``pos_ratio``  ``batch_size_per_image`` (512),              ``num`` (512), ``pos_fraction``
                             ``positive_fraction``
``pos_iou_thresh``,          ``fg_iou_thresh``, ``bg_iou_thresh``         ``pos_iou_thr``, ``neg_iou_thr``
``neg_iou_thresh_hi/lo``     (no low bound)                               (``(lo, hi)`` tuple for a low bound)
``sample_roi``               ``proposals`` (sampled)                      ``sampling_result.priors``
``gt_roi_loc``               ``regression_targets``                       ``bbox_targets``
``gt_roi_label`` (0 = bg)    ``labels`` (0 = bg)                          ``labels`` (``num_classes`` = bg)
``roi_cls_loc`` (84)         ``box_regression`` (``num_classes * 4``,     ``bbox_pred`` (``num_classes * 4``, bg not
                             bg included)                                 regressed)
RoIPool / RoIAlign           ``ops.roi_pool`` / ``MultiScaleRoIAlign``    ``SingleRoIExtractor`` (RoIAlign)
===========================  ===========================================  ==========================================

Step numbers (1-8) of the sampling match the notebook and :class:`exportable.roi_head.ProposalTargetCreator`;
RoIAlign's (1-5) match :mod:`exportable.roi_align`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lessons.rpn_anchor_targets import bbox2loc, bbox_iou, choose_by_noise, sample_by_noise_reference

__all__ = [
    "LAYOUTS",
    "ProposalTargetCreator",
    "ProposalTargets",
    "benchmark_case",
    "benchmark_reference",
    "bilinear",
    "class_block",
    "demo_scene_inputs",
    "draw_roi_pooling",
    "draw_sampled_rois",
    "expand_loc",
    "loc_columns",
    "mmdet_roi_targets",
    "photo_feature_map",
    "photo_proposals",
    "pick_class_loc",
    "roi_align_reference",
    "roi_align_sample_points",
    "roi_pool_bins",
    "roi_pool_reference",
    "sample_counts",
    "sample_rois",
    "synthetic_proposals",
    "to_package_labels",
]

LOC_NORMALIZE_MEAN = (0.0, 0.0, 0.0, 0.0)
LOC_NORMALIZE_STD = (0.1, 0.1, 0.2, 0.2)


# --------------------------------------------------------------------------------------------
# The creator
# --------------------------------------------------------------------------------------------


@dataclass
class ProposalTargets:
    """One image's RoI-head targets, in simple-faster-rcnn's terms (positives first, then negatives).

    - ``sample_roi (S, 4)``: the sampled RoIs (S <= n_sample);
    - ``gt_roi_loc (S, 4)``: normalised ``(dx, dy, dw, dh)`` to the matched gt for positives, 0 for
      negatives (simple-faster-rcnn fills negatives too, with numbers its loss never reads);
    - ``gt_roi_label (S,)`` int64: **class + 1** for positives, **0 = background** (simple-faster-rcnn's and
      py-faster-rcnn's encoding; :func:`to_package_labels` gives ours);
    - ``keep_index (S,)``: each sample's index among the candidates (``[RoIs | gts]``, or ``[gts | RoIs]``
      for :func:`mmdet_roi_targets`);
    - ``gt_assignment (S,)``: each sample's argmax gt (the gt a positive regresses to);
    - ``n_pos``: how many of the S are positives; ``max_iou (R + M,)`` every candidate's best IoU.
    """

    sample_roi: Tensor
    gt_roi_loc: Tensor
    gt_roi_label: Tensor
    keep_index: Tensor
    gt_assignment: Tensor
    n_pos: int
    max_iou: Tensor

    @property
    def n_neg(self) -> int:
        return len(self.keep_index) - self.n_pos


def to_package_labels(gt_roi_label: Tensor, num_classes: int) -> Tensor:
    """simple-faster-rcnn's labels (0 = background, class + 1) -> the package's (class, ``num_classes`` = bg)."""
    return torch.where(gt_roi_label > 0, gt_roi_label - 1, torch.full_like(gt_roi_label, num_classes))


def _normalize(loc: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    return (loc - torch.tensor(mean, dtype=loc.dtype)) / torch.tensor(std, dtype=loc.dtype)


class ProposalTargetCreator:
    """Assign gts to sampled RoIs for training the RoI head (Faster R-CNN; simple-faster-rcnn's class).

    Args:
        n_sample: RoIs sampled per image (128).
        pos_ratio: at most ``round(n_sample * pos_ratio)`` = 32 positives.
        pos_iou_thresh: a candidate whose best IoU is ``>=`` this is a positive (0.5).
        neg_iou_thresh_hi, neg_iou_thresh_lo: negatives have best IoU in ``[lo, hi)`` (0.0 and 0.5;
            py-faster-rcnn's ``BG_THRESH_LO`` is 0.1).
    """

    def __init__(self, n_sample: int = 128, pos_ratio: float = 0.25, pos_iou_thresh: float = 0.5,
                 neg_iou_thresh_hi: float = 0.5, neg_iou_thresh_lo: float = 0.0) -> None:
        self.n_sample = n_sample
        self.pos_ratio = pos_ratio
        self.pos_iou_thresh = pos_iou_thresh
        self.neg_iou_thresh_hi = neg_iou_thresh_hi
        self.neg_iou_thresh_lo = neg_iou_thresh_lo

    def __call__(self, roi: Tensor, bbox: Tensor, label: Tensor, noise: Tensor,
                 loc_normalize_mean: tuple[float, ...] = LOC_NORMALIZE_MEAN,
                 loc_normalize_std: tuple[float, ...] = LOC_NORMALIZE_STD) -> ProposalTargets:
        """``roi (R, 4)`` proposals, ``bbox (M, 4)`` gts, ``label (M,)`` classes in ``[0, C)``, ``noise (R + M,)``."""
        n_bbox = len(bbox)
        # 1. the gts join the RoIs (appended): every gt is a candidate with IoU 1 with itself
        roi = torch.cat([roi.float(), bbox.float()], dim=0)  # (R + M, 4)
        # 2. each candidate's best IoU with a gt, and that gt (the first on ties; no gt: IoU 0 everywhere)
        if n_bbox:
            max_iou, gt_assignment = bbox_iou(roi, bbox).max(dim=1)  # (R + M,), (R + M,)
        else:
            max_iou = torch.zeros(len(roi))
            gt_assignment = torch.zeros(len(roi), dtype=torch.int64)
        # 3.-5. positives (IoU >= 0.5, at most 32), then negatives (0 <= IoU < 0.5, up to 128), by noise
        keep_index, n_pos = sample_rois(max_iou, noise, self.n_sample, self.pos_ratio, self.pos_iou_thresh,
                                        self.neg_iou_thresh_hi, self.neg_iou_thresh_lo)
        sample_roi, matched = roi[keep_index], gt_assignment[keep_index]  # (S, 4), (S,)
        # 6. labels: the matched gt's class + 1 for positives, 0 (background) for negatives
        gt_roi_label = torch.zeros(len(keep_index), dtype=torch.int64)
        if n_pos:
            gt_roi_label[:n_pos] = label[matched[:n_pos]] + 1
        # 7. box targets of the positives, normalised by (0.1, 0.1, 0.2, 0.2); 0 for negatives
        gt_roi_loc = torch.zeros(len(keep_index), 4)
        if n_pos:
            loc = bbox2loc(sample_roi[:n_pos], bbox[matched[:n_pos]].float())
            gt_roi_loc[:n_pos] = _normalize(loc, loc_normalize_mean, loc_normalize_std)
        # 8. positives first, then negatives (the order sample_rois returns)
        return ProposalTargets(sample_roi, gt_roi_loc, gt_roi_label, keep_index, matched, n_pos, max_iou)


def sample_rois(max_iou: Tensor, noise: Tensor, n_sample: int = 128, pos_ratio: float = 0.25,
                pos_iou_thresh: float = 0.5, neg_iou_thresh_hi: float = 0.5,
                neg_iou_thresh_lo: float = 0.0) -> tuple[Tensor, int]:
    """Steps 3-5 of :class:`ProposalTargetCreator`: ``(keep_index, n_pos)``, positives first.

    ``max_iou (K,)`` each candidate's best IoU with a gt, ``noise (K,)``. Positives: ``max_iou >= 0.5``,
    at most ``round(n_sample * pos_ratio)`` (32). Negatives: ``lo <= max_iou < hi``, filling the sample up
    to ``n_sample`` with what the KEPT positives leave; no back-filling when either side is short. Within
    each side the largest noise wins (equal noise: the lower index).
    """
    pos_roi_per_image = round(n_sample * pos_ratio)  # np.round(128 * 0.25) = 32
    # 3. positives: IoU >= 0.5; 5a. keep at most 32 of them, the largest noise
    pos_index = torch.nonzero(max_iou >= pos_iou_thresh).squeeze(1)
    n_pos = int(min(pos_roi_per_image, len(pos_index)))
    pos_index = choose_by_noise(pos_index, noise[pos_index], n_pos)
    # 4. negatives: lo <= IoU < hi; 5b. they fill the sample up to 128
    neg_index = torch.nonzero((max_iou < neg_iou_thresh_hi) & (max_iou >= neg_iou_thresh_lo)).squeeze(1)
    n_neg = int(min(n_sample - n_pos, len(neg_index)))
    neg_index = choose_by_noise(neg_index, noise[neg_index], n_neg)
    return torch.cat([pos_index, neg_index]), n_pos


def mmdet_roi_targets(
    roi: Tensor, bbox: Tensor, label: Tensor, noise: Tensor, *, num: int = 512, pos_fraction: float = 0.25,
    pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.5, neg_iou_lo: float = 0.0,
    stds: tuple[float, ...] = LOC_NORMALIZE_STD,
) -> ProposalTargets:
    """mmdetection's RoI-head targets for one image (``StandardRoIHead``: MaxIoU 0.5 / 0.5 without
    low-quality matches, ``RandomSampler(512, 0.25, add_gt_as_proposals=True)``, ``get_targets``).

    Differences from :class:`ProposalTargetCreator`: the gts are PREPENDED (candidates ``[gts | RoIs]``,
    ``noise`` in that order), ``int(512 * 0.25) = 128`` positives, and the sampled indices come back
    SORTED within positives and within negatives (``unique``). Labels are returned in simple-faster-rcnn's
    encoding like the creator's (``to_package_labels`` gives mmdetection's, which is ours).
    """
    from lessons.retinanet_targets import max_iou_assign

    cand = torch.cat([bbox.float(), roi.float()], dim=0)  # 1. gts first
    m = len(bbox)
    overlaps = bbox_iou(bbox, cand) if m and len(cand) else None  # (M, M + R) mmdetection's orientation
    assign = max_iou_assign(cand, bbox, label, pos_iou_thr=pos_iou_thr, neg_iou_thr=(neg_iou_lo, neg_iou_thr),
                            match_low_quality=False, overlaps=overlaps)  # 2.-4.
    pos_cand = torch.nonzero(assign.gt_index >= 0).squeeze(1)
    neg_cand = torch.nonzero(assign.gt_index == -1).squeeze(1)
    pos, neg = sample_by_noise_reference(pos_cand, neg_cand, noise, num, pos_fraction)  # 5. sorted within each
    keep_index = torch.cat([pos, neg])
    # each candidate's argmax gt (a positive's assigned gt: no low-quality matches here)
    gt_assignment = overlaps.max(dim=0).indices if m else torch.zeros(len(cand), dtype=torch.int64)
    gt_roi_label = torch.zeros(len(keep_index), dtype=torch.int64)
    gt_roi_label[: len(pos)] = label[assign.gt_index[pos]] + 1  # 6.
    sample_roi = cand[keep_index]
    gt_roi_loc = torch.zeros(len(keep_index), 4)
    if len(pos):  # 7.
        gt_roi_loc[: len(pos)] = _normalize(bbox2loc(sample_roi[: len(pos)], bbox[assign.gt_index[pos]].float()),
                                            LOC_NORMALIZE_MEAN, stds)
    return ProposalTargets(sample_roi, gt_roi_loc, gt_roi_label, keep_index, gt_assignment[keep_index], len(pos),
                           assign.max_overlaps if m else torch.zeros(len(cand)))


def sample_counts(n_pos_candidates: int, n_neg_candidates: int, n_sample: int = 128,
                  pos_ratio: float = 0.25) -> tuple[int, int]:
    """How many positives and negatives simple-faster-rcnn samples: ``(min(#pos, 32), min(#neg, 128 - pos))``."""
    n_pos = min(round(n_sample * pos_ratio), n_pos_candidates)
    return n_pos, min(n_sample - n_pos, n_neg_candidates)


# --------------------------------------------------------------------------------------------
# "Why 84": where the 4 numbers of a class sit in the regression output
# --------------------------------------------------------------------------------------------

LAYOUTS: dict[str, str] = {
    "py_faster_rcnn": "(C + 1) * 4 columns, background block 0, class k (0-based) at block k + 1: 21 * 4 = 84 for VOC",
    "torchvision": "the same as py_faster_rcnn: num_classes counts the background, class k + 1 at block k + 1",
    "mmdet": "C * 4 columns, class k at block k; background (label C) has no block: 20 * 4 = 80 for VOC",
    "package": "mmdetection's: exportable.roi_head.class_specific spreads (S, 4) targets to (S, 4 * C)",
}
"""The class-specific regression layouts the lesson maps (C foreground classes)."""


def loc_columns(num_classes: int, layout: str = "package") -> int:
    """Width of the class-specific regression output: ``4 * (C + 1)`` (84) or ``4 * C`` (80)."""
    _check_layout(layout)
    return 4 * (num_classes + 1) if layout in ("py_faster_rcnn", "torchvision") else 4 * num_classes


def class_block(k: int | Tensor, layout: str = "package") -> int | Tensor:
    """First column of class ``k``'s 4 numbers (``k`` 0-based foreground class): ``4 (k + 1)`` or ``4 k``."""
    _check_layout(layout)
    return 4 * (k + 1) if layout in ("py_faster_rcnn", "torchvision") else 4 * k


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")


def expand_loc(gt_roi_loc: Tensor, labels: Tensor, num_classes: int,
               layout: str = "package") -> tuple[Tensor, Tensor]:
    """py-faster-rcnn's ``_get_bbox_regression_labels``: ``(S, 4)`` targets -> ``(S, D)`` targets and weights.

    ``labels`` in the package's encoding (class in ``[0, C)``, ``C`` = background). A positive's 4 numbers
    go to its class's block (:func:`class_block`), everything else is 0 with weight 0.
    """
    s = len(labels)
    targets = torch.zeros(s, loc_columns(num_classes, layout))
    weights = torch.zeros_like(targets)
    for i in range(s):
        k = int(labels[i])
        if k < num_classes:
            c = class_block(k, layout)
            targets[i, c : c + 4] = gt_roi_loc[i]
            weights[i, c : c + 4] = 1.0
    return targets, weights


def pick_class_loc(roi_cls_loc: Tensor, labels: Tensor, num_classes: int, layout: str = "package") -> Tensor:
    """The loss's selection: the 4 predicted numbers at each RoI's true class, ``(S, D) -> (S, 4)``.

    simple-faster-rcnn: ``roi_cls_loc.view(n, -1, 4)[arange(n), gt_roi_label]`` (negatives pick the
    background block, which the loss then masks out); mmdetection / the package: ``bbox_pred.view(n, -1, 4)
    [pos, labels[pos]]`` (only positives). Here: negatives get zeros, so the two layouts give equal rows.
    """
    view = roi_cls_loc.reshape(len(labels), -1, 4)  # (S, C or C + 1, 4)
    pos = labels < num_classes
    block = labels + 1 if layout in ("py_faster_rcnn", "torchvision") else labels  # (S,)
    picked = view[torch.arange(len(labels)), block.clamp(max=view.shape[1] - 1)]  # (S, 4)
    return torch.where(pos[:, None], picked, torch.zeros_like(picked))


# --------------------------------------------------------------------------------------------
# RoIPool and RoIAlign, one RoI at a time
# --------------------------------------------------------------------------------------------


def _round_half_away(x: float) -> int:
    """C's ``round``: halves away from zero (Python's ``round`` rounds halves to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def roi_pool_bins(roi: Any, output_size: tuple[int, int], spatial_scale: float,
                  hw: tuple[int, int]) -> np.ndarray:
    """RoIPool's bins of one RoI: ``(P, Q, 4)`` int ``(hstart, hend, wstart, wend)`` cell ranges (end excluded).

    Fast R-CNN / torchvision ``roi_pool``: 1. the RoI is ROUNDED to whole cells
    (``round(x1 * spatial_scale)`` ...), at least 1 x 1; 2. bin ``p`` covers ``floor(p * bin)`` to
    ``ceil((p + 1) * bin)`` cells of it (ROUNDED again: bins overlap or skip cells); clipped to the map.
    """
    x1, y1, x2, y2 = (float(v) for v in roi)
    h, w = hw
    sw, sh = _round_half_away(x1 * spatial_scale), _round_half_away(y1 * spatial_scale)
    ew, eh = _round_half_away(x2 * spatial_scale), _round_half_away(y2 * spatial_scale)
    roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
    ph, pw = output_size
    bin_h, bin_w = roi_h / ph, roi_w / pw
    out = np.zeros((ph, pw, 4), dtype=np.int64)
    for p in range(ph):
        for q in range(pw):
            hs = min(max(math.floor(p * bin_h) + sh, 0), h)
            he = min(max(math.ceil((p + 1) * bin_h) + sh, 0), h)
            ws = min(max(math.floor(q * bin_w) + sw, 0), w)
            we = min(max(math.ceil((q + 1) * bin_w) + sw, 0), w)
            out[p, q] = (hs, he, ws, we)
    return out


def roi_pool_reference(feature: Tensor, rois: Tensor, output_size: int | tuple[int, int] = 7,
                       spatial_scale: float = 1 / 16) -> Tensor:
    """RoIPool (max over each quantised bin; an empty bin gives 0): ``(C, H, W)``, ``(K, 4)`` -> ``(K, C, P, Q)``."""
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    c, h, w = feature.shape
    out = torch.zeros(len(rois), c, *out_hw)
    for k, roi in enumerate(rois):
        bins = roi_pool_bins(roi, out_hw, spatial_scale, (h, w))
        for p in range(out_hw[0]):
            for q in range(out_hw[1]):
                hs, he, ws, we = (int(v) for v in bins[p, q])
                if he > hs and we > ws:
                    out[k, :, p, q] = feature[:, hs:he, ws:we].amax(dim=(1, 2))
    return out


def roi_align_sample_points(roi: Any, output_size: int | tuple[int, int] = 7, spatial_scale: float = 1 / 16,
                            sampling_ratio: int = 2, aligned: bool = True) -> np.ndarray:
    """RoIAlign's sample points of one RoI, in the feature map's INDEX coordinates (cell ``i`` at ``i``):
    ``(P, Q, s, s, 2)`` as ``(x, y)``. Add 0.5 to draw them on cells that span ``[i, i + 1)``.

    1. RoI on the map: ``x1 * spatial_scale - 0.5`` (``aligned``) ...; 2. P x Q bins, no rounding;
    3. an ``s x s`` grid of points per bin at ``start + (p + (i + 0.5) / s) * bin``.
    """
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (np.float32(float(v)) * np.float32(spatial_scale) - np.float32(off) for v in roi)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, np.float32(1)), max(roi_h, np.float32(1))
    bin_w, bin_h = roi_w / np.float32(out_hw[1]), roi_h / np.float32(out_hw[0])
    s = sampling_ratio
    pts = np.zeros((*out_hw, s, s, 2), dtype=np.float32)
    for p in range(out_hw[0]):
        for q in range(out_hw[1]):
            for i in range(s):
                for j in range(s):
                    # the float32 operation order of ONNX RoiAlign (and of the exportable module)
                    y = (y1 + np.float32(p) * bin_h) + np.float32(i + 0.5) * bin_h / np.float32(s)
                    x = (x1 + np.float32(q) * bin_w) + np.float32(j + 0.5) * bin_w / np.float32(s)
                    pts[p, q, i, j] = (x, y)
    return pts


def bilinear(feature: Tensor, y: float, x: float) -> Tensor:
    """The value of ``feature (C, H, W)`` at index coordinates ``(y, x)``, by ONNX ``RoiAlign``'s rules.

    4. outside ``[-1, H] x [-1, W]``: 0; otherwise clamp to ``[0, H - 1] x [0, W - 1]`` and blend the 4
    neighbouring cells: ``(1 - ly)(1 - lx) f(y0, x0) + (1 - ly) lx f(y0, x1) + ly (1 - lx) f(y1, x0)
    + ly lx f(y1, x1)`` with ``ly = y - y0``, ``lx = x - x0``.
    """
    c, h, w = feature.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(c, dtype=feature.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[:, y0, x0] + hy * lx * feature[:, y0, x1]
            + ly * hx * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def roi_align_reference(feature: Tensor, rois: Tensor, output_size: int | tuple[int, int] = 7,
                        spatial_scale: float = 1 / 16, sampling_ratio: int = 2, aligned: bool = True) -> Tensor:
    """RoIAlign (average) of one image: ``feature (C, H, W)``, ``rois (K, 4)`` pixels -> ``(K, C, P, Q)``, float64.

    Loops over RoIs, bins and sample points: 5. each bin is the mean of its ``s * s`` bilinear samples.
    """
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    f = feature.double()
    out = torch.zeros(len(rois), feature.shape[0], *out_hw, dtype=torch.float64)
    s = sampling_ratio
    for k, roi in enumerate(rois):
        pts = roi_align_sample_points(roi, out_hw, spatial_scale, s, aligned)
        for p in range(out_hw[0]):
            for q in range(out_hw[1]):
                acc = torch.zeros(feature.shape[0], dtype=torch.float64)
                for i in range(s):
                    for j in range(s):
                        x, y = (float(v) for v in pts[p, q, i, j])
                        acc += bilinear(f, y, x)
                out[k, :, p, q] = acc / (s * s)
    return out


# --------------------------------------------------------------------------------------------
# Proposals to sample from
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _photo_proposals(seed: int) -> tuple[Tensor, Tensor]:
    from exportable.anchors import AnchorGenerator, featmap_sizes_for
    from exportable.coders import DeltaXYWHCoder
    from exportable.rpn import ProposalCreator
    from lessons.scenes import default_scene

    scene = default_scene()
    gen = AnchorGenerator.faster_rcnn()
    anchors = torch.cat(gen.grid_anchors(featmap_sizes_for(scene.hw, gen.strides)))  # (10944, 4)
    g = torch.Generator().manual_seed(seed)
    iou = bbox_iou(anchors, scene.boxes)  # (N, M)
    best, arg = iou.max(dim=1)  # (N,)
    objectness = (0.6 * best + 0.4 * torch.rand(len(anchors), generator=g)).clamp(0, 1)  # (N,)
    toward = DeltaXYWHCoder().encode(anchors, scene.boxes[arg])  # (N, 4)
    deltas = 0.8 * toward * (best > 0.2).float()[:, None] + 0.25 * torch.randn(len(anchors), 4, generator=g)
    out = ProposalCreator("faster_rcnn", "train")(anchors, torch.zeros(len(anchors), dtype=torch.int64),
                                                   objectness[None], deltas[None], torch.tensor([list(scene.hw)]))
    k = int(out.counts[0])
    return out.proposals[0, :k], out.scores[0, :k]


def photo_proposals(seed: int = 0) -> tuple[Tensor, Tensor]:
    """~2,000 proposals on the photo, as an RPN in training would hand them over: ``(roi (R, 4), score (R,))``.

    A stand-in RPN on the photo's 38 x 32 x 9 = 10,944 Faster R-CNN anchors: objectness ``0.6 * best IoU +
    0.4 * U(0, 1)``, deltas 80 % of the way to the anchor's best gt (anchors with IoU > 0.2) plus N(0, 0.25);
    then the training :class:`exportable.rpn.ProposalCreator` (top 12,000, NMS 0.7, keep 2,000). Seeded.
    """
    roi, score = _photo_proposals(int(seed))
    return roi.clone(), score.clone()


def synthetic_proposals(gt_boxes: Tensor, gt_mask: Tensor, hw: tuple[int, int], k: int = 2000, seed: int = 0,
                        near_share: float = 0.25) -> Tensor:
    """``(B, k, 4)`` seeded proposals for a padded gt batch on ``(H, W)`` images (the benchmark's input).

    A ``near_share`` of them are real gts jittered by up to 1/4 of their size (positives and near misses),
    the rest boxes of sides 16 .. 0.6 * min(H, W) anywhere in the image; all clipped to the image.
    """
    b, m = gt_mask.shape
    h, w = hw
    g = torch.Generator().manual_seed(seed)
    side = 16 * torch.exp(torch.rand(b, k, 2, generator=g) * math.log(0.6 * min(h, w) / 16))  # (B, k, 2)
    centre = torch.rand(b, k, 2, generator=g) * torch.tensor([float(w), float(h)])  # (B, k, 2)
    boxes = torch.cat([centre - side / 2, centre + side / 2], dim=-1)  # (B, k, 4)
    if m:
        weights = gt_mask.float() + 1e-6  # (B, M) only real gts (uniform if none)
        src = torch.multinomial(weights, k, replacement=True, generator=g)  # (B, k)
        base = torch.gather(gt_boxes, 1, src.unsqueeze(-1).expand(-1, -1, 4))  # (B, k, 4)
        size = (base[..., 2:] - base[..., :2]).repeat(1, 1, 2)  # (B, k, 4)
        near = base + (torch.rand(b, k, 4, generator=g) - 0.5) * 0.5 * size  # (B, k, 4)
        near = torch.cat([near[..., :2].minimum(near[..., 2:]), near[..., :2].maximum(near[..., 2:])], dim=-1)
        use = (torch.rand(b, k, 1, generator=g) < near_share) & gt_mask.any(dim=1).view(b, 1, 1)  # (B, k, 1)
        boxes = torch.where(use, near, boxes)  # (B, k, 4)
    limit = torch.tensor([float(w), float(h), float(w), float(h)])
    return torch.minimum(boxes.clamp(min=0), limit)  # (B, k, 4)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def draw_sampled_rois(image: Any, proposals: Tensor, gt_boxes: Tensor, targets: ProposalTargets, *,
                      class_names: list[str] | None = None, gt_labels: Tensor | None = None,
                      title: str | None = None, ax: Any = None) -> Any:
    """The sample in two panels: the positives in their gt's colour (left), the negatives dashed (right).

    ``targets`` is one image's :class:`ProposalTargets` (candidates ``[proposals | gts]``); the
    proposals themselves are only counted in the titles (2,000 outlines would hide the photo). The gts
    are drawn in both panels. ``ax``: a pair of Axes to draw into (default: a new Figure).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    from lessons.draw import LessonFigure, color_for, show_boxes

    if ax is None:
        h, w = (image.shape[:2] if hasattr(image, "shape") else image)
        fig = LessonFigure(figsize=(11, 11 * h / (2 * w) + 0.9), layout="constrained")
        axes = fig.subplots(1, 2)
    else:
        axes = list(ax)
        fig = axes[0].figure

    def outlines(boxes: Tensor) -> list:
        b = boxes.detach().cpu().numpy()
        return [[(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)] for x1, y1, x2, y2 in b]

    pos = targets.sample_roi[: targets.n_pos]
    neg = targets.sample_roi[targets.n_pos:]
    for a, what in zip(axes, ("positives", "negatives")):
        show_boxes(image, gt_boxes, gt_labels, class_names, ax=a, color_by="index", linewidth=2.5,
                   show_text=what == "positives")
    colors = [color_for(int(j)) for j in targets.gt_assignment[: targets.n_pos]]
    axes[0].add_collection(LineCollection(outlines(pos), colors=colors, linewidths=1.1, zorder=3))
    axes[0].set_title(f"{targets.n_pos} sampled positives (IoU >= 0.5), in their gt's colour", fontsize=10)
    axes[1].add_collection(LineCollection(outlines(neg), colors=[(1.0, 1.0, 1.0, 0.9)], linewidths=0.9,
                                          linestyles="--", zorder=3))
    axes[1].set_title(f"{targets.n_neg} sampled negatives (IoU < 0.5), dashed", fontsize=10)
    handles = [Line2D([], [], color="black", lw=2.5, label="gts (solid, thick)"),
               Line2D([], [], color="0.4", lw=1, ls="--", label="sampled negatives")]
    axes[1].legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.85)
    fig.suptitle(title if title is not None else
                 f"{targets.n_pos} + {targets.n_neg} of {len(proposals):,} proposals and {len(gt_boxes)} gts",
                 fontsize=11)
    return fig


def draw_roi_pooling(feature: Any, roi: Any, *, output_size: int | tuple[int, int] = 3,
                     spatial_scale: float = 1 / 16, sampling_ratio: int = 2, highlight: tuple[int, int] = (0, 0),
                     title: str | None = None) -> Any:
    """RoIPool vs RoIAlign on one feature map (drawn in cells: cell ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``).

    Left, RoIPool: the RoI (dashed) is rounded to whole cells, its bins rounded again (shaded cells of
    each bin; the bins overlap or leave gaps); each bin takes the max of its cells. Right, RoIAlign
    (aligned): the exact RoI and bins, ``s x s`` sample points per bin (dots), and for the first sample of
    bin ``highlight`` the 4 cells its bilinear interpolation blends, with their weights.

    ``feature``: an ``(H, W)`` map (e.g. one channel) drawn in grey underneath.
    """
    from matplotlib.patches import Rectangle

    from lessons.draw import LessonFigure, color_for

    f = feature.detach().cpu().numpy() if hasattr(feature, "detach") else np.asarray(feature)
    h, w = f.shape
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in roi)
    fig = LessonFigure(figsize=(11, 5.2), layout="constrained")
    axes = fig.subplots(1, 2)
    pad = 1.5
    for ax in axes:
        ax.imshow(f, cmap="gray", extent=(0, w, h, 0), interpolation="nearest", zorder=0, alpha=0.9)
        ax.set_xticks(range(w + 1), minor=True)
        ax.set_yticks(range(h + 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.4, alpha=0.5)
        ax.tick_params(which="both", length=0, labelsize=7)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ls="--", lw=1.5, ec="yellow", zorder=3))
        ax.set_xlim(max(x1 - pad, 0), min(x2 + pad, w))
        ax.set_ylim(min(y2 + pad, h), max(y1 - pad, 0))
    # RoIPool: quantised bins
    bins = roi_pool_bins(roi, out_hw, spatial_scale, (h, w))
    for p in range(out_hw[0]):
        for q in range(out_hw[1]):
            hs, he, ws, we = (int(v) for v in bins[p, q])
            c = color_for(p * out_hw[1] + q)
            axes[0].add_patch(Rectangle((ws, hs), we - ws, he - hs, fill=True, fc=(*c[:3], 0.25), ec=c, lw=1.5,
                                        zorder=2))
            if he > hs and we > ws:
                cell = f[hs:he, ws:we]
                i, j = np.unravel_index(int(np.argmax(cell)), cell.shape)
                axes[0].plot(ws + j + 0.5, hs + i + 0.5, marker="*", ms=9, color=c, mec="black", zorder=4)
    axes[0].set_title(f"RoIPool: RoI rounded to cells, {out_hw[0]}x{out_hw[1]} bins rounded again,\n"
                      "max of each bin's cells (*)", fontsize=9)
    # RoIAlign: exact bins and sample points (index coordinates + 0.5 = cell-area coordinates)
    pts = roi_align_sample_points(roi, out_hw, spatial_scale, sampling_ratio, aligned=True) + 0.5
    bw, bh = (x2 - x1) / out_hw[1], (y2 - y1) / out_hw[0]
    for p in range(out_hw[0]):
        for q in range(out_hw[1]):
            c = color_for(p * out_hw[1] + q)
            axes[1].add_patch(Rectangle((x1 + q * bw, y1 + p * bh), bw, bh, fill=False, ec=c, lw=1.5, zorder=2))
            axes[1].scatter(pts[p, q, ..., 0].ravel(), pts[p, q, ..., 1].ravel(), s=18, color=c, ec="black",
                            lw=0.5, zorder=4)
    hx, hy = (float(v) for v in pts[highlight[0], highlight[1], 0, 0])
    cy, cx = hy - 0.5, hx - 0.5  # index coordinates of the highlighted sample
    y0, x0 = min(max(int(math.floor(max(cy, 0))), 0), h - 1), min(max(int(math.floor(max(cx, 0))), 0), w - 1)
    ly, lx = min(max(cy - y0, 0.0), 1.0), min(max(cx - x0, 0.0), 1.0)
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = min(y0 + dy, h - 1), min(x0 + dx, w - 1)
        axes[1].plot([hx, xx + 0.5], [hy, yy + 0.5], color="red", lw=1, zorder=3)
        axes[1].text(xx + 0.5, yy + 0.5, f"{wgt:.2f}", color="red", fontsize=8, ha="center", va="center",
                     bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5}, zorder=5)
    axes[1].set_title(f"RoIAlign: exact bins, {sampling_ratio}x{sampling_ratio} bilinear samples per bin, mean;\n"
                      "red: one sample's 4 cells and their weights", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# make demo and the benchmarks
# --------------------------------------------------------------------------------------------


def _photo_target_inputs(ctx: Any, variant: str = "faster_rcnn") -> tuple[Tensor, ...]:
    roi, _ = photo_proposals(0)
    rois = roi[None]  # (1, R, 4)
    roi_mask = torch.ones(rois.shape[:2], dtype=torch.bool)  # (1, R)
    m = ctx.gt_boxes.shape[1]
    noise = torch.rand(1, rois.shape[1] + m, generator=torch.Generator().manual_seed(0))  # (1, R + M)
    return rois, roi_mask, ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask, noise


def photo_feature_map(stride: int = 16) -> Tensor:
    """A stand-in feature map of the photo: its RGB averaged over ``stride x stride`` cells (zero-padded at the
    bottom and right), ``(1, 3, ceil(H / 16), ceil(W / 16))`` = ``(1, 3, 38, 32)`` in [0, 1]."""
    from lessons.scenes import load_photo

    photo = load_photo()
    h, w = photo.shape[:2]
    img = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255.0  # (1, 3, H, W)
    fh, fw = math.ceil(h / stride), math.ceil(w / stride)
    img = nn.functional.pad(img, (0, fw * stride - w, 0, fh * stride - h))  # (1, 3, fh * 16, fw * 16)
    return nn.functional.avg_pool2d(img, stride)  # (1, 3, fh, fw)


def _photo_align_inputs(ctx: Any) -> tuple[Tensor, ...]:
    return photo_feature_map(), ctx.gt_boxes.clone()


def demo_scene_inputs() -> dict[str, Callable[[Any], tuple[Tensor, ...]]]:
    """Photo inputs for ``make demo``: ~2,000 proposals + the 6 gts; the photo averaged to a stride-16 map."""
    return {
        "roi_head_targets": _photo_target_inputs,
        "roi_head_targets_mmdet": _photo_target_inputs,
        "roi_align": _photo_align_inputs,
    }


def benchmark_case(workload: str, seed: int = 0, component: str = "roi_head_targets",
                   **params: Any) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """``(module, inputs)`` for the benchmark harness, on a named workload of docs/workloads.md.

    - ``component="roi_head_targets"`` (catalog ``roi_head_targets``; ``"roi_head_targets_mmdet"`` for the
      mmdetection variant): the workload's gts (``rpn-m20``: B = 8, M = 20, 20 classes, 600 x 1000) with
      2,000 proposals per image from :func:`synthetic_proposals` (a quarter jittered gts), noise
      ``(B, 2,020)``. ``params`` go to the module (e.g. ``num=512``).
    - ``component="roi_align"`` (catalog ``roi_align``): a 600 x 1000 image's stride-16 map, ``(B, 256, 38, 63)``
      of N(0, 1) features with B = 2 (``"name@B"`` overrides), and 1,000 RoIs per image (the proposals of
      the ``roi_head_targets`` case): 2,000 RoIs of 7 x 7 x 256.

    ``workload`` is ``rpn-m20`` or ``proposals`` (the same 600 x 1000 images), optionally ``@B``.
    """
    from exportable.roi_align import RoIAlign
    from exportable.roi_head import ProposalTargetCreator as Exportable
    from lessons.scenes import WORKLOADS, make_workload_batch

    name, _, batch = workload.partition("@")
    if name not in ("rpn-m20", "proposals"):
        raise KeyError(f"workload: expected 'rpn-m20' or 'proposals' (600 x 1000 images), got {workload!r}")
    wl = WORKLOADS[name]
    if component in ("roi_head_targets", "roi_head_targets_mmdet"):
        b = int(batch) if batch else wl.batch
        gts = make_workload_batch("rpn-m20", seed=seed, batch=b)
        rois = synthetic_proposals(gts.gt_boxes, gts.gt_mask, wl.hw, 2000, seed=seed + 1)  # (B, 2000, 4)
        noise = torch.rand(b, 2000 + gts.gt_boxes.shape[1], generator=torch.Generator().manual_seed(seed + 2))
        variant = "mmdet" if component.endswith("mmdet") else "faster_rcnn"
        module = Exportable(variant, **{"num_classes": 20} | params)
        return module, (rois, torch.ones(b, 2000, dtype=torch.bool), gts.gt_boxes, gts.gt_labels, gts.gt_mask, noise)
    if component == "roi_align":
        b = int(batch) if batch else 2
        gts = make_workload_batch("rpn-m20", seed=seed, batch=b)
        rois = synthetic_proposals(gts.gt_boxes, gts.gt_mask, wl.hw, 1000, seed=seed + 1)  # (B, 1000, 4)
        fh, fw = math.ceil(wl.h / 16), math.ceil(wl.w / 16)
        features = torch.randn(b, 256, fh, fw, generator=torch.Generator().manual_seed(seed + 3))  # (B, 256, 38, 63)
        return RoIAlign(**{"output_size": 7, "spatial_scale": 1 / 16, "sampling_ratio": 2} | params), (features, rois)
    raise KeyError(f"component: expected 'roi_head_targets', 'roi_head_targets_mmdet' or 'roi_align', "
                   f"got {component!r}")


def benchmark_reference(workload: str, seed: int = 0, component: str = "roi_head_targets") -> Callable[[], Any]:
    """A zero-argument callable running the per-image reference on :func:`benchmark_case`'s inputs.

    ``roi_head_targets``: :class:`ProposalTargetCreator` once per image (simple-faster-rcnn's way);
    ``roi_head_targets_mmdet``: :func:`mmdet_roi_targets` per image. (RoIAlign has no benchmark reference:
    the per-sample Python loops of :func:`roi_align_reference` take minutes at 2,000 RoIs.)
    """
    if component not in ("roi_head_targets", "roi_head_targets_mmdet"):
        raise KeyError(f"component: no reference benchmark for {component!r}")
    module, (rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise) = benchmark_case(workload, seed, component)
    k, m = rois.shape[1], gt_boxes.shape[1]
    images = []
    for i in range(rois.shape[0]):
        real_roi, real_gt = roi_mask[i], gt_mask[i]
        if component == "roi_head_targets":  # noise in candidate order [RoIs | gts]
            z = torch.cat([noise[i, :k][real_roi], noise[i, k:][real_gt]])
        else:  # [gts | RoIs]
            z = torch.cat([noise[i, :m][real_gt], noise[i, m:][real_roi]])
        images.append((rois[i][real_roi], gt_boxes[i][real_gt], gt_labels[i][real_gt], z))
    if component == "roi_head_targets":
        creator = ProposalTargetCreator(n_sample=module.num)
        return lambda: [creator(r, g, lab, z) for r, g, lab, z in images]
    return lambda: [mmdet_roi_targets(r, g, lab, z, num=module.num) for r, g, lab, z in images]


# --------------------------------------------------------------------------------------------
# Exercise cases (notebook 04): each one a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


def keep_index_cases() -> list:
    """``my_keep_index(max_iou, noise, n_sample=128, pos_ratio=0.25) -> indices``, positives first."""
    from lessons.check import Case
    from lessons.scenes import default_scene

    def case(name: str, max_iou: list | Tensor, noise: list | Tensor, **kw: float) -> Case:
        m, z = torch.as_tensor(max_iou, dtype=torch.float32), torch.as_tensor(noise, dtype=torch.float32)
        return Case(name, (m, z), sample_rois(m, z, **kw)[0], kwargs=kw)

    g = torch.Generator().manual_seed(5)
    scarce = torch.cat([0.5 + 0.5 * torch.rand(7, generator=g), 0.49 * torch.rand(500, generator=g)])  # 7 pos
    short = torch.cat([0.5 + 0.5 * torch.rand(60, generator=g), 0.49 * torch.rand(50, generator=g)])  # 50 neg
    scene = default_scene()
    roi, _ = photo_proposals(0)
    photo_iou = bbox_iou(torch.cat([roi, scene.boxes]), scene.boxes).max(dim=1).values  # (2006,)
    photo_noise = torch.rand(len(photo_iou), generator=torch.Generator().manual_seed(0))
    return [
        case("IoU exactly 0.5 is a positive (>= 0.5, not > 0.5)", [0.5, 0.7, 0.2, 0.4], [0.1, 0.2, 0.3, 0.4],
             n_sample=4, pos_ratio=0.5),
        case("IoU exactly 0 is a negative (0 <= IoU < 0.5)", [0.0, 0.0, 0.6, 0.3], [0.9, 0.1, 0.5, 0.5],
             n_sample=3, pos_ratio=0.5),
        case("scarce positives (7): negatives fill 128 - 7 = 121, not a fixed 96", scarce,
             torch.rand(len(scarce), generator=g)),
        case("plentiful positives (the photo's 100): 32 + 96", photo_iou, photo_noise),
        case("few negative candidates (50): no back-filling with positives", short,
             torch.rand(len(short), generator=g)),
        case("equal noise: the lower index first", [0.9, 0.8, 0.7, 0.1, 0.2, 0.3], [0.5] * 6, n_sample=4,
             pos_ratio=0.5),
    ]


def pick_cases() -> list:
    """``my_pick(roi_cls_loc (S, 4 (C + 1)), gt_roi_label (S,)) -> (S, 4)``: the 4 numbers at each RoI's label."""
    from lessons.check import Case

    g = torch.Generator().manual_seed(1)

    def case(name: str, labels: list, num_classes: int) -> Case:
        lab = torch.tensor(labels, dtype=torch.int64)
        pred = torch.randn(len(labels), 4 * (num_classes + 1), generator=g)  # (S, 4 (C + 1))
        return Case(name, (pred, lab), pred.view(len(labels), -1, 4)[torch.arange(len(labels)), lab])

    return [
        case("label 0 (background) reads columns 0-3", [0, 0], 20),
        case("label K reads columns 4K .. 4K + 3, the first class too", [1, 2, 3], 20),
        case("the last class, label C = 20, reads the last 4 columns (80-83 of 84)", [20, 20], 20),
        case("128 RoIs of 6 classes, labels 0..6", torch.randint(0, 7, (128,), generator=g).tolist(), 6),
    ]


def bilinear_cases() -> list:
    """``my_bilinear(feature (C, H, W), y, x) -> (C,)`` by ONNX ``RoiAlign``'s rules."""
    from lessons.check import Case

    feature = photo_feature_map()[0]  # (3, 38, 32)

    def case(name: str, y: float, x: float) -> Case:
        return Case(name, (feature, y, x), bilinear(feature, y, x))

    return [
        case("an integer point reads one cell", 3.0, 7.0),
        case("a point between four cells blends them", 3.25, 7.5),
        case("y exactly -1 is still on the map (then clamped to row 0)", -1.0, 5.3),
        case("just beyond -1 is off the map: 0", -1.01, 4.0),
        case("y exactly H = 38 is on the map (clamped to the last row)", 38.0, 4.0),
        case("between the last row and H: the last row (y1 = min(y0 + 1, H - 1))", 37.4, 31.8),
        case("x beyond W = 32 is off the map: 0", 20.0, 33.2),
    ]
