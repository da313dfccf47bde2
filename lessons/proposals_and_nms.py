"""Proposals and NMS, the readable way: simple-faster-rcnn's ``ProposalCreator``, greedy NMS and Soft-NMS.

The reference (test oracle) for :class:`exportable.rpn.ProposalCreator` and the code of
``notebooks/03_proposals_and_nms``. One image at a time; boxes are ``(x1, y1, x2, y2)`` in absolute
pixels (simple-faster-rcnn writes ``(y1, x1, y2, x2)``), images ``(H, W)``, scores are objectness
PROBABILITIES.

- :func:`greedy_nms` -- NMS step by step (the section the Faster R-CNN study note leaves empty): sort by
  score, keep the best box, suppress every later box whose IoU with it is strictly above the threshold,
  repeat. Same semantics, and the same float32 arithmetic, as ONNX ``NonMaxSuppression`` and
  :func:`exportable.nms.nms`.
- :func:`class_aware_nms` -- one greedy NMS per class (boxes of different classes never suppress).
- :func:`soft_nms` -- Soft-NMS (Bodla et al., 2017), linear and gaussian: instead of deleting an
  overlapping box, lower its score. For the notebook only: it is not exported.
- :class:`ProposalCreator` -- decode, clip, drop small boxes, top 12,000 / 6,000, NMS 0.7, keep
  2,000 / 300 (train / test); :func:`mmdet_proposals` -- mmdetection's per-level variant;
  :func:`funnel_counts` -- how many boxes survive each stage.

Names: simple-faster-rcnn's ``ProposalCreator`` is torchvision's ``RegionProposalNetwork.filter_proposals``
(``pre_nms_top_n``, ``post_nms_top_n``) and mmdetection's ``RPNHead._predict_by_feat_single``
(``nms_pre``, ``max_per_img``, ``min_bbox_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lessons.rpn_anchor_targets import bbox2loc, bbox_iou, get_inside_index

__all__ = [
    "CrowdScene",
    "NMSStep",
    "ProposalCreator",
    "ProposalResult",
    "class_aware_nms",
    "class_aware_soft_nms",
    "clip_bbox",
    "crowd_scene",
    "funnel_counts",
    "greedy_nms",
    "iou_one_to_many",
    "loc2bbox",
    "mmdet_proposals",
    "nms_trace",
    "oracle_rpn_outputs",
    "pre_nms_candidates",
    "soft_nms",
]

WH_CLIP = abs(math.log(16 / 1000))  # 4.1352: mmdetection's bound on decoded dw, dh


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def loc2bbox(src_bbox: Tensor, loc: Tensor, wh_clip: float | None = WH_CLIP) -> Tensor:
    """Decode ``loc (n, 4) = (dx, dy, dw, dh)`` against ``src_bbox (n, 4)``: boxes ``(n, 4)``.

    Centre ``c = p + p_w * dx``, size ``w = p_w * exp(dw)``, corners ``c -/+ w / 2``. ``dw, dh`` are
    clamped to ``+-wh_clip`` (mmdetection, 4.135; ``None``: no clamp, as simple-faster-rcnn and
    py-faster-rcnn). The float32 operations of :meth:`exportable.coders.DeltaXYWHCoder.decode`.
    """
    src, loc = src_bbox.float(), loc.float()
    pxy = (src[:, :2] + src[:, 2:]) * 0.5
    pwh = src[:, 2:] - src[:, :2]
    dwh = loc[:, 2:] if wh_clip is None else loc[:, 2:].clamp(min=-wh_clip, max=wh_clip)
    gxy = pxy + pwh * loc[:, :2]
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=1)


def clip_bbox(bbox: Tensor, img_size: tuple[int, int]) -> Tensor:
    """Clip x to ``[0, W]`` and y to ``[0, H]`` (simple-faster-rcnn and mmdetection; py-faster-rcnn: W - 1)."""
    h, w = float(img_size[0]), float(img_size[1])
    out = bbox.clone()
    out[:, 0::2] = out[:, 0::2].clamp(min=0).clamp(max=w)
    out[:, 1::2] = out[:, 1::2].clamp(min=0).clamp(max=h)
    return out


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box ``(4,)`` with ``boxes (n, 4)`` in float32, as ONNX ``NonMaxSuppression`` computes it.

    ``inter / (area + areas - inter)`` with no eps; a pair that does not overlap, or involves a zero-area
    box, has IoU 0 (zero-area boxes never suppress and are never suppressed). Takes and returns tensors
    or float32 numpy arrays.
    """
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    overlap = (iw > 0) & (ih > 0) & (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1), 0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------


def greedy_nms(boxes: Tensor, scores: Tensor, iou_thresh: float = 0.7, max_output: int | None = None) -> Tensor:
    """Greedy NMS: indices of the kept boxes, highest score first.

    1. order the boxes by score, highest first (equal scores: the lower index first);
    2. take the first box of the list: it is kept;
    3. remove from the list every box whose IoU with it is ``> iou_thresh`` (equal is kept);
    4. repeat from 2 until the list is empty (or ``max_output`` boxes are kept).

    float32 numpy inside: the loop runs once per KEPT box, thousands of times for RPN proposals.
    """
    b = boxes.detach().float().numpy()
    s = scores.detach().float().tolist()
    alive = np.array(sorted(range(len(s)), key=lambda i: (-s[i], i)), dtype=np.int64)  # 1.
    keep: list[int] = []
    thr = np.float32(iou_thresh)
    while len(alive) and (max_output is None or len(keep) < max_output):
        best = int(alive[0])  # 2.
        keep.append(best)
        rest = alive[1:]
        alive = rest[~(iou_one_to_many(b[best], b[rest]) > thr)]  # 3.
    return torch.tensor(keep, dtype=torch.int64)


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float = 0.5) -> Tensor:
    """One greedy NMS per class; the kept indices of all classes, highest score first (ties: lower index)."""
    keep: list[int] = []
    for c in sorted(set(labels.tolist())):
        idx = torch.nonzero(labels == c).squeeze(1)
        keep += idx[greedy_nms(boxes[idx], scores[idx], iou_thresh)].tolist()
    keep.sort(key=lambda i: (-float(scores[i]), i))
    return torch.tensor(keep, dtype=torch.int64)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_thresh: float = 0.3,
    sigma: float = 0.5,
    score_thresh: float = 0.001,
    method: str = "linear",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., ICCV 2017): ``(kept indices in the order picked, their decayed scores)``.

    Repeatedly pick the box with the highest CURRENT score (ties: lower index); every remaining box ``b``
    with IoU ``u`` to it has its score multiplied by

    - ``"linear"``: ``1 - u`` if ``u > iou_thresh`` else 1;
    - ``"gaussian"``: ``exp(-u**2 / sigma)`` (every box, however small ``u``);
    - ``"greedy"``: ``0`` if ``u > iou_thresh`` else 1 (plain NMS, for comparison);

    and boxes whose score falls below ``score_thresh`` are dropped. Defaults are the paper's
    (``Nt = 0.3``, ``sigma = 0.5``, threshold 0.001), also mmcv's ``soft_nms``.
    """
    if method not in ("linear", "gaussian", "greedy"):
        raise ValueError(f"method: expected 'linear', 'gaussian' or 'greedy', got {method!r}")
    b = boxes.detach().float().numpy()
    current = scores.detach().float().numpy().copy()
    alive = list(range(len(current)))
    keep: list[int] = []
    kept_scores: list[float] = []
    while alive:
        best = max(alive, key=lambda i: (float(current[i]), -i))
        if float(current[best]) < score_thresh:
            break
        keep.append(best)
        kept_scores.append(float(current[best]))
        alive.remove(best)
        if not alive:
            break
        rest = np.array(alive, dtype=np.int64)
        u = iou_one_to_many(b[best], b[rest])
        if method == "linear":
            decay = np.where(u > iou_thresh, 1 - u, 1).astype(np.float32)
        elif method == "gaussian":
            decay = np.exp(-(u * u) / np.float32(sigma)).astype(np.float32)
        else:
            decay = np.where(u > iou_thresh, 0, 1).astype(np.float32)
        current[rest] = current[rest] * decay
        alive = [i for i in alive if float(current[i]) >= score_thresh]
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept_scores, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------


@dataclass
class ProposalResult:
    """One image's proposals: ``roi (S, 4)``, ``score (S,)``, ``anchor_index (S,)`` (best first) and
    ``funnel``: how many boxes were left after each stage."""

    roi: Tensor
    score: Tensor
    anchor_index: Tensor
    funnel: dict[str, int] = field(default_factory=dict)


class ProposalCreator:
    """Turn the RPN's objectness and deltas into proposals (simple-faster-rcnn's ``ProposalCreator``).

    Args:
        nms_thresh: NMS IoU threshold (0.7).
        n_train_pre_nms, n_train_post_nms: boxes kept before / after NMS when training (12000 / 2000).
        n_test_pre_nms, n_test_post_nms: the same at test time (6000 / 300).
        min_size: boxes with a side below ``min_size * scale`` are dropped (16 px of the original image).
        wh_clip: bound on decoded ``dw, dh`` (mmdetection's 4.135, as the exportable module; ``None``: none).

    Unlike simple-faster-rcnn, the mode is an argument (``training=``), not the parent model's
    ``.training`` flag.
    """

    def __init__(self, nms_thresh: float = 0.7, n_train_pre_nms: int = 12000, n_train_post_nms: int = 2000,
                 n_test_pre_nms: int = 6000, n_test_post_nms: int = 300, min_size: float = 16,
                 wh_clip: float | None = WH_CLIP) -> None:
        self.nms_thresh = nms_thresh
        self.n_train_pre_nms = n_train_pre_nms
        self.n_train_post_nms = n_train_post_nms
        self.n_test_pre_nms = n_test_pre_nms
        self.n_test_post_nms = n_test_post_nms
        self.min_size = min_size
        self.wh_clip = wh_clip

    def __call__(self, loc: Tensor, score: Tensor, anchor: Tensor, img_size: tuple[int, int], scale: float = 1.0,
                 training: bool = True) -> ProposalResult:
        """``loc (N, 4)`` deltas, ``score (N,)`` objectness probabilities, ``anchor (N, 4)``, ``img_size (H, W)``."""
        n_pre_nms = self.n_train_pre_nms if training else self.n_test_pre_nms
        n_post_nms = self.n_train_post_nms if training else self.n_test_post_nms
        funnel = {"anchors": len(anchor)}
        # 1. decode every anchor with its predicted deltas
        roi = loc2bbox(anchor, loc, self.wh_clip)
        # 2. clip to the image
        roi = clip_bbox(roi, img_size)
        # 3.-4. drop boxes with a side below min_size (16 px of the ORIGINAL image: times the resize scale),
        #       THEN sort by objectness and keep the first n_pre_nms
        min_size = self.min_size * scale
        funnel["min_size"] = int(((roi[:, 2] - roi[:, 0] >= min_size) & (roi[:, 3] - roi[:, 1] >= min_size)).sum())
        index = pre_nms_candidates(roi, score, min_size, n_pre_nms)
        roi, score = roi[index], score[index]
        funnel["pre_nms"] = len(index)
        # 5. NMS at nms_thresh
        keep = greedy_nms(roi, score, self.nms_thresh)
        funnel["nms"] = len(keep)
        # 6. keep the first n_post_nms
        keep = keep[:n_post_nms]
        funnel["post_nms"] = len(keep)
        return ProposalResult(roi[keep], score[keep], index[keep], funnel)


def pre_nms_candidates(roi: Tensor, score: Tensor, min_size: float = 16.0, n_pre_nms: int = 12000) -> Tensor:
    """Steps 3-4 of :class:`ProposalCreator`: indices of the boxes that go to NMS, best first.

    ``roi (N, 4)`` decoded, clipped boxes and ``score (N,)``. A box with a side ``< min_size`` is dropped
    (a side of exactly ``min_size`` stays) BEFORE the top-k, so it never takes one of the ``n_pre_nms``
    places. Equal scores: the lower index first.
    """
    ws, hs = roi[:, 2] - roi[:, 0], roi[:, 3] - roi[:, 1]
    # 3. the size filter first
    index = torch.nonzero((ws >= min_size) & (hs >= min_size)).squeeze(1)
    # 4. then the top n_pre_nms by score (ties: lower index)
    s = score[index].tolist()
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:n_pre_nms]
    return index[torch.tensor(order, dtype=torch.int64)]


def mmdet_proposals(
    anchor: Tensor, level_ids: Tensor, score: Tensor, loc: Tensor, img_size: tuple[int, int], *,
    nms_pre: int = 2000, max_per_img: int = 1000, iou_threshold: float = 0.7, min_bbox_size: float = 0.0,
    wh_clip: float | None = WH_CLIP,
) -> ProposalResult:
    """mmdetection 3.x ``RPNHead._predict_by_feat_single`` for one image (train ``nms_pre`` 2000, test 1000).

    1. per level: the top ``nms_pre`` anchors by objectness (ties: lower index first);
    2. decode those, clip to the image;
    3. drop boxes with ``w <= min_bbox_size`` or ``h <= min_bbox_size`` (0: zero-size boxes only) -- AFTER
       the top-k, unlike simple-faster-rcnn;
    4. NMS per level in one call (mmcv ``batched_nms``: boxes shifted by ``level * (max coordinate + 1)``);
    5. keep ``max_per_img``.
    """
    funnel = {"anchors": len(anchor)}
    picked = []
    for lv in sorted(set(level_ids.tolist())):  # 1.
        idx = torch.nonzero(level_ids == lv).squeeze(1)
        s, ix = score[idx].tolist(), idx.tolist()
        order = sorted(range(len(ix)), key=lambda i: (-s[i], ix[i]))[:nms_pre]
        picked.append(idx[torch.tensor(order, dtype=torch.int64)])
    index = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.int64)
    funnel["pre_nms"] = len(index)
    roi = clip_bbox(loc2bbox(anchor[index], loc[index], wh_clip), img_size)  # 2.
    if min_bbox_size >= 0:  # 3.
        w, h = roi[:, 2] - roi[:, 0], roi[:, 3] - roi[:, 1]
        keep = torch.nonzero((w > min_bbox_size) & (h > min_bbox_size)).squeeze(1)
        roi, index = roi[keep], index[keep]
    funnel["min_size"] = len(index)
    sc, lvl = score[index].float(), level_ids[index]
    if len(index):  # 4. the offset trick, as mmcv computes it
        span = torch.clamp(roi.max(), min=0) + 1
        shifted = roi + (lvl.to(roi.dtype) * span)[:, None]
        keep = greedy_nms(shifted, sc, iou_threshold)
    else:
        keep = torch.zeros(0, dtype=torch.int64)
    funnel["nms"] = len(keep)
    keep = keep[:max_per_img]  # 5.
    funnel["post_nms"] = len(keep)
    return ProposalResult(roi[keep], sc[keep], index[keep], funnel)


def funnel_counts(
    loc: Tensor, score: Tensor, anchor: Tensor, img_size: tuple[int, int], *, training: bool = True,
    scale: float = 1.0, **creator_kwargs,
) -> dict[str, int]:
    """How many boxes survive each stage of :class:`ProposalCreator` on one image.

    Keys in order: ``anchors`` (all), ``inside`` (anchors inside the image: what AnchorTargetCreator
    trains on; proposals do not use it, shown for comparison), ``min_size`` (decoded, clipped boxes big
    enough), ``pre_nms`` (the top 12,000 / 6,000), ``nms`` (what NMS keeps), ``post_nms`` (the first
    2,000 / 300). The notebook's funnel 20,000 -> 12,000 -> 2,000 (train) and 6,000 -> 300 (test).
    """
    result = ProposalCreator(**creator_kwargs)(loc, score, anchor, img_size, scale=scale, training=training)
    inside = len(get_inside_index(anchor, img_size[0], img_size[1]))
    f = result.funnel
    return {"anchors": f["anchors"], "inside": inside, "min_size": f["min_size"], "pre_nms": f["pre_nms"],
            "nms": f["nms"], "post_nms": f["post_nms"]}


# --------------------------------------------------------------------------------------------
# Notebook 03 helpers: a stand-in RPN, NMS step by step, a crowded scene for Soft-NMS
# --------------------------------------------------------------------------------------------


def oracle_rpn_outputs(
    anchor: Tensor, bbox: Tensor, seed: int = 0, *, pull: float = 0.5, loc_noise: float = 0.1,
    score_noise: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """A stand-in for a TRAINED RPN on one image (we have none): ``(score (N,), loc (N, 4))``.

    - ``score = clamp(best IoU of the anchor with any gt + U(0, score_noise), 0, 1)``: objectness
      PROBABILITIES that are high where an anchor fits an object, with a little noise so that no two
      anchors tie;
    - ``loc = pull * encode(anchor, its best gt) + N(0, loc_noise^2)`` for anchors that overlap a gt
      (``pull = 0.5``: each box moves half-way onto its gt), noise only for the others.

    ``anchor (N, 4)``, ``bbox (R, 4)`` ``(x1, y1, x2, y2)`` pixels (``R = 0`` allowed: noise only).
    Draw order from a ``torch.Generator`` seeded with ``seed``: ``randn(N, 4)``, then ``rand(N)``.
    """
    g = torch.Generator().manual_seed(seed)
    n = anchor.shape[0]
    jitter = torch.randn(n, 4, generator=g) * loc_noise  # (N, 4)
    bonus = torch.rand(n, generator=g) * score_noise  # (N,)
    if bbox.shape[0] == 0 or n == 0:
        return bonus.clamp(0, 1), jitter
    ious = bbox_iou(anchor, bbox)  # (N, R)
    best, arg = ious.max(dim=1)  # (N,)
    target = bbox2loc(anchor, bbox[arg])  # (N, 4)
    loc = torch.where((best > 0)[:, None], pull * target, torch.zeros_like(target)) + jitter
    return (best + bonus).clamp(0, 1), loc


@dataclass
class NMSStep:
    """One round of greedy NMS: the box ``kept``, the boxes it ``suppressed`` (with their ``ious`` to it)
    and the boxes still ``remaining`` afterwards, in score order (indices into the input)."""

    kept: int
    suppressed: list[int]
    ious: list[float]
    remaining: list[int]


def nms_trace(boxes: Tensor, scores: Tensor, iou_thresh: float = 0.7) -> list[NMSStep]:
    """:func:`greedy_nms`, one :class:`NMSStep` per kept box (for tables and figures).

    The kept boxes, in order, are exactly ``greedy_nms(boxes, scores, iou_thresh)``.
    """
    b = boxes.detach().float().numpy()
    s = scores.detach().float().tolist()
    alive = np.array(sorted(range(len(s)), key=lambda i: (-s[i], i)), dtype=np.int64)
    thr = np.float32(iou_thresh)
    steps: list[NMSStep] = []
    while len(alive):
        best, rest = int(alive[0]), alive[1:]
        u = iou_one_to_many(b[best], b[rest])
        gone = u > thr
        alive = rest[~gone]
        steps.append(NMSStep(best, rest[gone].tolist(), [float(v) for v in u[gone]], alive.tolist()))
    return steps


def class_aware_soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, **soft_kwargs) -> tuple[Tensor, Tensor]:
    """:func:`soft_nms` per class: ``(kept indices, decayed scores)``, highest decayed score first.

    Boxes of different classes never decay each other. ``soft_kwargs`` go to :func:`soft_nms`
    (``method``, ``iou_thresh``, ``sigma``, ``score_thresh``). Equal scores: the lower index first.
    """
    keep: list[int] = []
    kept_scores: list[float] = []
    for c in sorted(set(labels.tolist())):
        idx = torch.nonzero(labels == c).squeeze(1)
        k, s = soft_nms(boxes[idx], scores[idx], **soft_kwargs)
        keep += idx[k].tolist()
        kept_scores += s.tolist()
    order = sorted(range(len(keep)), key=lambda i: (-kept_scores[i], keep[i]))
    return (torch.tensor([keep[i] for i in order], dtype=torch.int64),
            torch.tensor([kept_scores[i] for i in order], dtype=torch.float32))


@dataclass
class CrowdScene:
    """A hand-made scene where plain NMS fails, with a detector's raw (pre-NMS) detections.

    ``hw`` the canvas ``(H, W)``; gts ``gt_boxes (M, 4)``, ``gt_labels (M,)``, ``class_names``;
    detections ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` and ``source (D,)``: the gt each
    detection was made from. Boxes ``(x1, y1, x2, y2)`` pixels.
    """

    hw: tuple[int, int]
    gt_boxes: Tensor
    gt_labels: Tensor
    class_names: list[str]
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    source: Tensor


def crowd_scene() -> CrowdScene:
    """Two failure cases of greedy NMS at IoU 0.5, on a 320 x 480 canvas.

    - gt 0 and gt 1: two people, one half behind the other (IoU 0.59, the same class): greedy NMS,
      class-aware or not, removes the one behind; Soft-NMS only lowers its score.
    - gt 2 and gt 3: a motorcyclist seen from the front and the motorcycle (IoU 0.56, different classes):
      class-agnostic NMS removes the motorcycle; class-aware NMS keeps it.

    Each gt gets four detections: a close one (score ``s``) and three sloppier duplicates
    (``s - 0.15``, ``s - 0.25``, ``s - 0.35``); ``s`` = 0.95, 0.80 (the occluded person), 0.90, 0.85.
    """
    gt_boxes = torch.tensor([
        [60.0, 50.0, 150.0, 290.0],  # 0: person in front
        [80.0, 60.0, 170.0, 300.0],  # 1: person behind (IoU 0.59 with 0)
        [300.0, 40.0, 400.0, 250.0],  # 2: motorcyclist
        [295.0, 100.0, 405.0, 290.0],  # 3: motorcycle (IoU 0.56 with 2)
    ])
    gt_labels = torch.tensor([0, 0, 0, 1])
    best = [0.95, 0.80, 0.90, 0.85]
    shifts = torch.tensor([  # (x1, y1, x2, y2) offsets of the four detections of a gt, in px
        [2.0, -2.0, 1.0, 2.0],
        [5.0, -4.0, 6.0, 3.0],
        [-4.0, 4.0, -3.0, -5.0],
        [6.0, 5.0, 3.0, 7.0],
    ])
    drops = [0.0, 0.15, 0.25, 0.35]
    boxes, scores, labels, source = [], [], [], []
    for j in range(len(gt_boxes)):
        for shift, drop in zip(shifts, drops):
            boxes.append(gt_boxes[j] + shift)
            scores.append(best[j] - drop)
            labels.append(int(gt_labels[j]))
            source.append(j)
    return CrowdScene(
        hw=(320, 480), gt_boxes=gt_boxes, gt_labels=gt_labels, class_names=["person", "motorcycle"],
        boxes=torch.stack(boxes), scores=torch.tensor(scores, dtype=torch.float32),
        labels=torch.tensor(labels, dtype=torch.int64), source=torch.tensor(source, dtype=torch.int64),
    )


# --------------------------------------------------------------------------------------------
# Exercise cases (notebook 03): each one a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


def _random_boxes(n: int = 300, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded boxes ``(n, 4)`` and scores ``(n,)`` with many ties (20 distinct values)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200  # (n, 2)
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 60], dim=1)  # (n, 4)
    scores = torch.randint(0, 20, (n,), generator=g).float() / 20  # (n,)
    return boxes, scores


def nms_cases() -> list:
    """``my_nms(boxes, scores, iou_threshold) -> kept indices (K,) int64``, highest score first."""
    from lessons.check import Case

    def case(name: str, boxes: list | Tensor, scores: list | Tensor, thr: float) -> Case:
        b, s = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32)
        return Case(name, (b, s, thr), greedy_nms(b, s, thr))

    boxes, scores = _random_boxes()
    return [
        case("IoU exactly at the threshold is kept (suppress only IoU > threshold)",
             [[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], 0.5),
        case("tied scores: the lower index comes first", [[0, 0, 10, 10], [1, 0, 11, 10]], [0.7, 0.7], 0.5),
        case("a box removed in round 1 suppresses nothing later (greedy, in order)",
             [[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], [0.9, 0.8, 0.7], 0.5),
        case("no boxes: nothing kept", torch.zeros(0, 4), torch.zeros(0), 0.7),
        case("300 boxes with tied scores, threshold 0.3", boxes, scores, 0.3),
        case("the same at 0.7", boxes, scores, 0.7),
    ]


def batched_nms_cases() -> list:
    """``my_batched_nms(boxes, scores, labels, iou_threshold) -> kept indices`` (one call of ``nms``)."""
    from lessons.check import Case

    def case(name: str, boxes: list | Tensor, scores: list | Tensor, labels: list | Tensor, thr: float) -> Case:
        b, s = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32)
        lab = torch.as_tensor(labels, dtype=torch.int64)
        return Case(name, (b, s, lab, thr), class_aware_nms(b, s, lab, thr))

    boxes, scores = _random_boxes(seed=1)
    labels = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(1))
    return [
        case("identical boxes of two classes: both kept", [[0, 0, 50, 50], [0, 0, 50, 50]], [0.9, 0.8], [0, 1], 0.5),
        case("the same class still suppresses", [[0, 0, 50, 50], [0, 0, 50, 50]], [0.9, 0.8], [1, 1], 0.5),
        case("coordinates beyond 1,000 px: the offset must exceed the whole range",
             [[1000, 1000, 1500, 1500], [0, 0, 500, 500]], [0.9, 0.8], [0, 1], 0.5),
        case("negative coordinates (boxes not clipped): the range is max - min, not max",
             [[0, 0, 100, 100], [-100, -100, 0, 0]], [0.9, 0.8], [0, 1], 0.5),
        case("300 boxes of 3 classes, threshold 0.5", boxes, scores, labels, 0.5),
    ]


def pre_nms_cases() -> list:
    """``my_pre_nms(roi, score, min_size, n_pre_nms) -> indices (K,)`` (steps 3-4 of the ProposalCreator)."""
    from lessons.check import Case
    from lessons.rpn_anchor_targets import faster_rcnn_anchors
    from lessons.scenes import default_scene

    def case(name: str, roi: list | Tensor, score: list | Tensor, min_size: float, n: int) -> Case:
        r, s = torch.as_tensor(roi, dtype=torch.float32), torch.as_tensor(score, dtype=torch.float32)
        return Case(name, (r, s, min_size, n), pre_nms_candidates(r, s, min_size, n))

    small = [[0, 0, 10, 40], [0, 0, 40, 12], [5, 5, 20, 20]]
    big = [[0, 0, 40, 40], [10, 10, 60, 50], [0, 0, 100, 30]]
    scene = default_scene()
    anchors, _ = faster_rcnn_anchors(scene.hw)
    score, loc = oracle_rpn_outputs(anchors, scene.boxes, seed=0)
    roi = clip_bbox(loc2bbox(anchors, loc), scene.hw)
    return [
        case("a side of exactly min_size stays (>= 16)", [[0, 0, 16, 16], [0, 0, 15.9, 40], [0, 0, 40, 16]],
             [0.5, 0.9, 0.7], 16.0, 10),
        case("the size filter comes BEFORE the top-k: small boxes take no places", small + big,
             [0.99, 0.98, 0.97, 0.6, 0.5, 0.4], 16.0, 2),
        case("equal scores: the lower index first", big + big, [0.5, 0.9, 0.5, 0.9, 0.5, 0.9], 16.0, 4),
        case("fewer boxes than n_pre_nms: all that pass the filter", big, [0.1, 0.3, 0.2], 16.0, 100),
        case("the photo's 10,944 decoded boxes, top 6,000", roi, score, 16.0, 6000),
    ]
