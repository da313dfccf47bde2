"""O2F (one-to-few label assignment, Li et al. CVPR 2023), the readable way, plus the notebook's helpers.

This is the reference (test oracle) for :class:`exportable.assigners.o2f.O2FAssigner`
(:func:`o2f_assign_single`), :class:`exportable.losses.O2FLoss` (:func:`o2f_loss_reference`) and
:class:`exportable.o2f_inference.O2FPostProcess` (:func:`o2f_postprocess_single`). It follows the authors'
code (``strongwolf/o2f``: ``O2FHead._get_target_single_o2o``, ``sfl.py``, ``_get_bboxes_single``) one
image at a time, loops allowed; step numbers match the notebook ``09_o2f`` and ``docs/algorithms.md``
§11.2. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``points (N, 2)`` are cell centres with their
level's ``strides (N,)``; ``pred_scores (N, C)`` are ``sigmoid(cls) * sigmoid(ctr)``.

Where the reference departs from a literal copy, and why (the same choices as the exportable code):

- ranking by ``q^5 = p * IoU^4`` in float64 instead of the float32 ``q = p^0.2 * IoU^0.8``: the same
  order in exact arithmetic, exact in onnxruntime, no ulp-level ties (``q`` itself is shown, never used);
- ties go to the lower index (point, then gt): the authors' ``topk`` / ``max`` / ``sort`` leave them to
  the backend;
- an image without gts returns all-negative targets (the authors' code returns two values instead of four
  and crashes in ``multi_apply``).

Also here: the ``T(e)`` schedule, figures (certain vs ambiguous anchors, the schedule, the pull of the
loss, detections), the notebook's exercise checkers (``check_*``), a simulated head on the photo, a toy
training of free scores under the O2F loss, the photo inputs of ``make demo`` (:func:`demo_scene_inputs`)
and the benchmark cases (:func:`benchmark_case`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from exportable.assigners.o2f import O2FAssigner, quality_key, soft_ceiling
from exportable.boxes import box_giou, box_iou
from exportable.losses import O2FLoss
from exportable.nms import batched_nms

__all__ = [
    "FCOS_STRIDES",
    "O2FSingle",
    "PhotoHead",
    "ToyTraining",
    "benchmark_case",
    "centre_region",
    "check_center_region",
    "check_row_loss",
    "check_soft_labels",
    "demo_scene_inputs",
    "draw_certain_ambiguous",
    "draw_detections",
    "fcos_points",
    "greedy_match",
    "nms_free_vs_nms",
    "o2f_assign_single",
    "o2f_loss_reference",
    "o2f_postprocess_single",
    "photo_head",
    "plot_pull",
    "plot_schedule",
    "plot_training",
    "soft_ceiling_value",
    "toy_training",
]

FCOS_STRIDES = (8, 16, 32, 64, 128)  # O2F's FCOS head: 5 levels
TOPK, ALPHA, CENTER_RADIUS = 7, 0.8, 1.5  # o2f_topk, poto_alpha, center_sample_radius
CERTAIN_WEIGHT, AMBIGUOUS_WEIGHT = 1.0, 0.4  # max_soft_weight, soft_weight
MAX_T, MIN_T = 0.6, 0.2


def soft_ceiling_value(epoch: int, max_epoch: int, max_t: float = MAX_T, min_t: float = MIN_T) -> float:
    """The authors' ``ff``: ``T(e) = (min_t - max_t) / (max_epoch - 1) * e + max_t`` (Python float).

    0.6 in the first epoch (``e = 0``), 0.2 in the last (``e = max_epoch - 1``), linear, constant within
    an epoch. ``max_epoch = 1`` would divide by zero.
    """
    if max_epoch < 2:
        raise ValueError(f"max_epoch: must be >= 2, got {max_epoch}")
    return (min_t - max_t) / (max_epoch - 1) * epoch + max_t


def fcos_points(hw: tuple[int, int], strides: Sequence[int] = FCOS_STRIDES) -> tuple[Tensor, Tensor, Tensor]:
    """Cell-centre points of an FPN on an ``(H, W)`` image: ``points (N, 2)``, ``strides (N,)``, ``level_ids (N,)``.

    Level of stride s: ``ceil(H / s) x ceil(W / s)`` cells, point ``((x + 0.5) s, (y + 0.5) s)``, order
    ``y * W + x`` (mmdetection's ``MlvlPointGenerator`` with offset 0.5, which the O2F head uses).
    """
    from lessons.scenes import grid_points

    return grid_points(hw[0], hw[1], strides)


# --------------------------------------------------------------------------------------------
# The assignment, one image (the authors' _get_target_single_o2o)
# --------------------------------------------------------------------------------------------


@dataclass
class O2FSingle:
    """O2F's targets for one image, in the package's encoding, plus the intermediate matrices.

    Per point ``(N,)``: ``gt_index`` (0-based, -1 negative), ``labels`` (``num_classes`` for negatives),
    ``boxes (N, 4)``, ``overlaps`` (IoU of the predicted box with its gt), ``target_scores``, ``weights``,
    ``certain`` / ``ambiguous`` masks. Per (point, gt) ``(N, M)``: ``candidates`` (centre region),
    ``quality`` (the authors' float32 q, 0 outside the region), ``picked`` (in the gt's top-k and q > 0).
    """

    gt_index: Tensor
    labels: Tensor
    boxes: Tensor
    overlaps: Tensor
    target_scores: Tensor
    weights: Tensor
    certain: Tensor
    ambiguous: Tensor
    candidates: Tensor
    quality: Tensor
    picked: Tensor


def o2f_assign_single(
    points: Tensor, strides: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
    soft_ceiling: float, *, topk: int = TOPK, alpha: float = ALPHA, center_radius: float = CENTER_RADIUS,
    num_classes: int = 80, certain_weight: float = CERTAIN_WEIGHT, ambiguous_weight: float = AMBIGUOUS_WEIGHT,
) -> O2FSingle:
    """O2F's assignment for ONE image, steps 1-6 of docs/algorithms.md §11.2 (the authors' ``_get_target_single_o2o``).

    ``points (N, 2)``, ``strides (N,)``, ``pred_scores (N, C)`` = ``sigmoid(cls) * sigmoid(ctr)``, ``pred_boxes (N, 4)``
    and ``gt_boxes (M, 4)`` as ``(x1, y1, x2, y2)``, ``gt_labels (M,)``, ``soft_ceiling`` = T(e).
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    target_scores, weights = torch.zeros(n), torch.ones(n)  # negatives weigh 1: their term is 0.75 p^2 BCE(p, 0)
    certain, ambiguous = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    if n == 0 or m == 0:  # no gts: every point negative (the authors' code crashes here)
        empty = torch.zeros(n, m)
        return _o2f_result(gt_index, gt_boxes, gt_labels, empty, num_classes, target_scores, weights, certain,
                           ambiguous, empty.bool(), empty, empty.bool())
    # 1. p at each gt's class; IoU of every predicted box with every gt
    prob = pred_scores[:, gt_labels]  # (N, M)
    iou = box_iou(pred_boxes, gt_boxes)  # (N, M)
    # 2. matching quality q = p^(1 - alpha) * IoU^alpha (shown); we rank by q^5 = p * IoU^4 in float64: the same order
    quality = prob ** (1 - alpha) * iou**alpha  # (N, M)
    key = quality_key(prob, iou, alpha)  # (N, M) float64
    # 3. candidates: FCOS's centre region (1.5 strides around the gt centre, clipped to the box), every level
    candidates = torch.stack([centre_region(points, strides, box, center_radius) for box in gt_boxes], dim=1)  # (N, M)
    quality[~candidates], iou[~candidates], key[~candidates] = 0, 0, 0
    # 4. per gt: its top k = min(#{candidates with IoU > 0}, topk) points by q; the matching matrix keeps their q
    matching = torch.zeros(n, m, dtype=torch.float64)
    for g in range(m):
        k = min(int((iou[:, g] > 0).sum()), topk)
        pick = torch.sort(key[:, g], descending=True, stable=True).indices[:k]  # ties: the lower point index
        matching[pick, g] = key[pick, g]
    # 5. conflicts: a point goes to the gt with the largest stored q (the first gt on ties); positive if it is > 0
    best, winner = matching.max(dim=1)  # (N,), (N,)
    gt_index[best > 0] = winner[best > 0]
    # 6. per gt, its final positives by q: the first is CERTAIN (target 1), the others AMBIGUOUS (p / max p * T)
    for g in range(m):
        mine = (gt_index == g).nonzero()[:, 0]  # ascending point index
        ranked = mine[torch.sort(key[mine, g], descending=True, stable=True).indices]
        if len(ranked) == 0:
            continue  # no candidate with IoU > 0, or every pick went to another gt
        certain[ranked[0]], target_scores[ranked[0]], weights[ranked[0]] = True, 1.0, certain_weight
        rest = ranked[1:]
        if len(rest):
            max_prob = prob[rest, g].max()  # over the ambiguous points only, p not q
            target_scores[rest] = prob[rest, g] / max_prob * torch.tensor(soft_ceiling, dtype=prob.dtype)
            ambiguous[rest], weights[rest] = True, ambiguous_weight
    return _o2f_result(gt_index, gt_boxes, gt_labels, iou, num_classes, target_scores, weights, certain, ambiguous,
                       candidates, quality, matching > 0)


def centre_region(points: Tensor, strides: Tensor, box: Tensor, radius: float = CENTER_RADIUS) -> Tensor:
    """Step 3 for one gt ``box (4,)``: ``(N,)`` points strictly inside the square of half-side ``radius * stride``
    around the box centre, clipped to the box (FCOS's centre sampling, the authors' arithmetic)."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = strides * radius  # (N,) each point's own level
    xs, ys = points[:, 0], points[:, 1]
    left = xs - torch.where(cx - r > x1, cx - r, x1)  # distances to the clipped square's sides
    top = ys - torch.where(cy - r > y1, cy - r, y1)
    right = torch.where(cx + r > x2, x2, cx + r) - xs
    bottom = torch.where(cy + r > y2, y2, cy + r) - ys
    return torch.stack([left, top, right, bottom], dim=1).min(dim=1).values > 0


def _o2f_result(gt_index: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou: Tensor, num_classes: int,
                target_scores: Tensor, weights: Tensor, certain: Tensor, ambiguous: Tensor, candidates: Tensor,
                quality: Tensor, picked: Tensor) -> O2FSingle:
    """Labels (``num_classes`` for negatives), box targets and IoUs of the positives' gts, packed with the rest."""
    n = gt_index.shape[0]
    pos = gt_index >= 0
    labels = torch.full((n,), num_classes, dtype=torch.int64)
    boxes, overlaps = torch.zeros(n, 4), torch.zeros(n)
    labels[pos], boxes[pos] = gt_labels[gt_index[pos]], gt_boxes[gt_index[pos]]
    overlaps[pos] = iou[pos, gt_index[pos]]
    return O2FSingle(gt_index, labels, boxes, overlaps, target_scores, weights, certain, ambiguous, candidates,
                     quality, picked)


# --------------------------------------------------------------------------------------------
# The loss, written out (sfl.py + the GIoU part of O2FHead.loss)
# --------------------------------------------------------------------------------------------


def _bce(p: Tensor, t: Tensor) -> Tensor:
    """Binary cross-entropy on probabilities with torch's -100 clamp on the logs, float64."""
    return -(t * torch.log(p).clamp(min=-100) + (1 - t) * torch.log1p(-p).clamp(min=-100))


def o2f_loss_reference(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    labels: Tensor,
    target_scores: Tensor,
    weights: Tensor,
    target_boxes: Tensor,
    *,
    neg_weight: float = 0.75,
    loss_bbox_weight: float = 2.0,
) -> tuple[float, float]:
    """``(loss_cls, loss_bbox)`` of a batch ``(B, N, ...)``, each term written out in float64.

    Classification: every (point, class) entry ``0.75 p^2 BCE(p, 0)``; the positive's own entry replaced by
    ``w BCE(p, t)``; the sum divided by ``max(#positives, 1)``. Box: over positives, ``c (1 - GIoU)`` with the
    FCOS centerness ``c`` of the point in its gt, divided by ``max(sum c, 1e-6)``, times 2.
    """
    p = pred_scores.double()
    b, n, c = p.shape
    total_cls = 0.0
    num_pos = 0
    box_sum, center_sum = 0.0, 0.0
    for i in range(b):
        loss = _bce(p[i], torch.zeros_like(p[i])) * p[i] ** 2 * neg_weight  # (N, C) negatives
        for j in range(n):
            k = int(labels[i, j])
            if k >= c:
                continue
            num_pos += 1
            t = target_scores[i, j].double()
            loss[j, k] = weights[i, j].double() * _bce(p[i, j, k], t)  # replaced, not added
            px, py = points[j].double()
            x1, y1, x2, y2 = target_boxes[i, j].double()
            lr = (px - x1, x2 - px)
            tb = (py - y1, y2 - py)
            center = math.sqrt(min(lr) / max(lr) * min(tb) / max(tb))
            giou = float(box_giou(pred_boxes[i, j][None], target_boxes[i, j][None])[0, 0])
            box_sum += center * (1 - giou)
            center_sum += center
        total_cls += float(loss.sum())
    return total_cls / max(num_pos, 1), loss_bbox_weight * box_sum / max(center_sum, 1e-6)


# --------------------------------------------------------------------------------------------
# NMS-free inference, one image (_get_bboxes_single + _bbox_post_process, with_nms=False)
# --------------------------------------------------------------------------------------------


def o2f_postprocess_single(
    cls_levels: Sequence[Tensor],
    box_levels: Sequence[Tensor],
    ctr_levels: Sequence[Tensor],
    image_hw: tuple[int, int],
    strides: Sequence[int] = FCOS_STRIDES,
    *,
    nms_pre: int = 1000,
    score_thr: float = 0.05,
    max_per_img: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Detections ``(boxes (K, 4), scores (K,), labels (K,))`` of one image, best first, ``K <= max_per_img``.

    Per level: ``cls (C, H, W)`` logits, ``box (4, H, W)`` ``(l, t, r, b)`` pixels, ``ctr (1, H, W)`` logits;
    score = ``sigmoid(cls) * sigmoid(ctr)`` (ranked in float64, see the exportable module), keep the pairs
    ``> score_thr``, sort, the first ``nms_pre``; decode and clip to ``image_hw``; then all levels sorted
    by score, the first ``max_per_img``. No NMS. Ties: stable sorts, lower index first.
    """
    h_img, w_img = image_hw
    all_scores, all_labels, all_boxes = [], [], []
    for cls, box, ctr, s in zip(cls_levels, box_levels, ctr_levels, strides):
        c, h, w = cls.shape
        scores = torch.sigmoid(cls.double()).permute(1, 2, 0).reshape(-1, c)  # (H * W, C)
        scores = scores * torch.sigmoid(ctr.double()).permute(1, 2, 0).reshape(-1, 1)  # (H * W, C)
        flat = scores.reshape(-1)  # pair (y * W + x) * C + c
        passing = (flat > score_thr).nonzero().squeeze(1)  # filter_scores_and_topk: threshold first ...
        order = torch.sort(flat[passing], descending=True, stable=True).indices[:nms_pre]  # ... then top-k
        keep = passing[order]
        point, label = keep // c, keep % c
        ys, xs = (point // w).double(), (point % w).double()
        px, py = (xs + 0.5) * s, (ys + 0.5) * s  # the cell centre
        d = box.permute(1, 2, 0).reshape(-1, 4)[point].double()  # (k, 4) l, t, r, b
        decoded = torch.stack([px - d[:, 0], py - d[:, 1], px + d[:, 2], py + d[:, 3]], dim=1)
        decoded[:, 0::2] = decoded[:, 0::2].clamp(0, w_img)
        decoded[:, 1::2] = decoded[:, 1::2].clamp(0, h_img)
        all_scores.append(flat[keep])
        all_labels.append(label)
        all_boxes.append(decoded)
    scores, labels, boxes = torch.cat(all_scores), torch.cat(all_labels), torch.cat(all_boxes)
    order = torch.sort(scores, descending=True, stable=True).indices[:max_per_img]  # no NMS
    return boxes[order].float(), scores[order].float(), labels[order]


# --------------------------------------------------------------------------------------------
# A simulated head on the photo (what a detector half-way through training might output)
# --------------------------------------------------------------------------------------------


@dataclass
class PhotoHead:
    """Per-level head outputs for one image and the same predictions flattened for the assigner.

    ``cls`` / ``box`` / ``ctr``: one ``(1, C, H, W)`` / ``(1, 4, H, W)`` / ``(1, 1, H, W)`` tensor per level
    (logits, ``(l, t, r, b)`` pixels, logits). ``points (N, 2)``, ``strides (N,)``, ``level_ids (N,)``,
    ``pred_scores (1, N, C)`` = ``sigmoid(cls) * sigmoid(ctr)``, ``pred_boxes (1, N, 4)`` decoded.
    """

    cls: list[Tensor]
    box: list[Tensor]
    ctr: list[Tensor]
    points: Tensor
    strides: Tensor
    level_ids: Tensor
    pred_scores: Tensor
    pred_boxes: Tensor
    featmap_sizes: list[tuple[int, int]] = field(default_factory=list)


def photo_head(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    padded_hw: tuple[int, int],
    num_classes: int = 80,
    strides: Sequence[int] = FCOS_STRIDES,
    seed: int = 0,
) -> PhotoHead:
    """Seeded head outputs that "see" the gts: every point inside a gt (the smallest one containing it)
    predicts that gt's box with ~10% noise and scores its class higher the nearer it is to the gt centre
    and the better its level fits the gt's size; every other point predicts a small box and low scores.
    Many points score high for each gt: the duplicates NMS would remove.
    """
    g = torch.Generator().manual_seed(seed)
    points, point_strides, level_ids = fcos_points(padded_hw, strides)
    n = points.shape[0]
    gts = gt_boxes.float()
    inside = (points[:, None, 0] > gts[None, :, 0]) & (points[:, None, 0] < gts[None, :, 2]) & (
        points[:, None, 1] > gts[None, :, 1]) & (points[:, None, 1] < gts[None, :, 3])  # (N, M)
    area = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])  # (M,)
    owner = torch.where(inside, area[None, :], math.inf).argmin(dim=1)  # (N,) the smallest containing gt
    owned = inside.any(dim=1)  # (N,)
    box = gts[owner]  # (N, 4)
    ltrb = torch.cat([points - box[:, :2], box[:, 2:] - points], dim=1)  # (N, 4)
    ltrb = (ltrb * (1 + 0.1 * torch.randn(n, 4, generator=g))).clamp(min=0)  # noisy, >= 0
    background = (2 * point_strides[:, None] * (1 + 0.2 * torch.rand(n, 4, generator=g))).expand(n, 4)
    dist = torch.where(owned[:, None], ltrb, background)  # (N, 4)
    half_w = (box[:, 2] - box[:, 0]).clamp(min=1) / 2  # (N,)
    half_h = (box[:, 3] - box[:, 1]).clamp(min=1) / 2
    off = torch.maximum((points[:, 0] - (box[:, 0] + box[:, 2]) / 2).abs() / half_w,
                        (points[:, 1] - (box[:, 1] + box[:, 3]) / 2).abs() / half_h)  # (N,) 0 centre, 1 edge
    size = torch.sqrt(4 * half_w * half_h)  # (N,)
    fit = (torch.log2(size / (8 * point_strides))).abs()  # (N,) 0 when the gt is 8 strides wide
    logits = torch.randn(n, num_classes, generator=g) * 0.5 - 6.0  # (N, C) background
    own = 3.0 - 4.0 * off - 1.5 * fit + 0.5 * torch.randn(n, generator=g)  # (N,)
    logits[owned, gt_labels[owner[owned]]] = own[owned]
    ctr = torch.where(owned, 2.0 - 4.0 * off, -2.0) + 0.3 * torch.randn(n, generator=g)  # (N,)
    pred_scores = torch.sigmoid(logits) * torch.sigmoid(ctr)[:, None]  # (N, C)
    pred_boxes = torch.cat([points - dist[:, :2], points + dist[:, 2:]], dim=1)  # (N, 4)
    sizes = [(math.ceil(padded_hw[0] / s), math.ceil(padded_hw[1] / s)) for s in strides]
    cls_l, box_l, ctr_l, start = [], [], [], 0
    for h, w in sizes:
        end = start + h * w
        cls_l.append(logits[start:end].reshape(1, h, w, num_classes).permute(0, 3, 1, 2).contiguous())
        box_l.append(dist[start:end].reshape(1, h, w, 4).permute(0, 3, 1, 2).contiguous())
        ctr_l.append(ctr[start:end].reshape(1, h, w, 1).permute(0, 3, 1, 2).contiguous())
        start = end
    return PhotoHead(cls_l, box_l, ctr_l, points, point_strides, level_ids, pred_scores[None], pred_boxes[None],
                     sizes)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def draw_certain_ambiguous(
    image,
    points: Tensor,
    gt_index: Tensor,
    target_scores: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    *,
    ax=None,
    title: str | None = None,
    annotate: bool = False,
):
    """Gts as boxes (colour of gt j), certain positives as stars, ambiguous anchors as circles whose
    opacity is their soft target; negatives are not drawn. ``points (N, 2)``, ``gt_index (N,)``,
    ``target_scores (N,)`` (one image). Returns the Figure."""
    from lessons.draw import color_for, show_boxes

    fig = show_boxes(image, gt_boxes, gt_labels, class_names, ax=ax, title=title, color_by="index", linewidth=1.5)
    ax = ax if ax is not None else fig.axes[0]
    pos = (gt_index >= 0).nonzero().squeeze(1)
    for j in pos.tolist():
        g, t = int(gt_index[j]), float(target_scores[j])
        x, y = float(points[j, 0]), float(points[j, 1])
        colour = color_for(g)
        if t >= 1.0:
            ax.scatter([x], [y], marker="*", s=260, color=colour, edgecolors="black", linewidths=0.8, zorder=7)
        else:
            ax.scatter([x], [y], marker="o", s=70, color=colour, alpha=max(0.15, min(1.0, t / 0.6)),
                       edgecolors=colour, linewidths=1.2, zorder=6)
        if annotate:
            ax.annotate(f"{t:.2f}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, zorder=8,
                        color="black", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    return fig


def plot_schedule(max_epochs: Sequence[int] = (12, 36), ax=None):
    """``T(e)`` for each ``max_epoch``: a staircase, constant within an epoch. Returns the Figure."""
    from lessons.draw import LessonFigure

    if ax is None:
        fig = LessonFigure(figsize=(6.4, 3.6), layout="constrained")
        ax = fig.subplots()
    fig = ax.figure
    for max_epoch in max_epochs:
        es = list(range(max_epoch))
        ts = [soft_ceiling_value(e, max_epoch) for e in es]
        ax.step([e / (max_epoch - 1) for e in es] + [1.0], ts + [ts[-1]], where="post",
                label=f"max_epoch = {max_epoch}")
    ax.set(xlabel="training progress  e / (max_epoch - 1)", ylabel="T(e)", ylim=(0, 0.7),
           title="the ceiling of the ambiguous anchors' soft labels")
    ax.axhline(MAX_T, color="0.7", lw=0.8, ls=":")
    ax.axhline(MIN_T, color="0.7", lw=0.8, ls=":")
    ax.legend()
    return fig


def plot_pull(target: float = 0.3, weight: float = AMBIGUOUS_WEIGHT, ax=None):
    """The ambiguous anchor's loss ``w BCE(p, t)`` and its slope against p, next to a negative's
    ``0.75 p^2 BCE(p, 0)``. Returns the Figure."""
    from lessons.draw import LessonFigure

    if ax is None:
        fig = LessonFigure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.subplots()
    fig = ax.figure
    p = torch.linspace(0.01, 0.99, 197, dtype=torch.float64, requires_grad=True)
    amb = weight * _bce(p, torch.full_like(p, target))
    (grad,) = torch.autograd.grad(amb.sum(), p)
    neg = 0.75 * p**2 * _bce(p, torch.zeros_like(p))
    x = p.detach()
    ax.plot(x, amb.detach(), label=f"ambiguous: {weight} BCE(p, t = {target})")
    ax.plot(x, neg.detach(), label="negative: 0.75 p² BCE(p, 0)")
    ax.plot(x, grad / 10, ls="--", color="C0", alpha=0.6, label="slope of the ambiguous loss / 10")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axvline(target, color="C3", lw=1, ls=":")
    ax.annotate("p < t: gradient descent\nraises p", (target / 2, 0.9), ha="center", fontsize=8)
    ax.annotate("p > t: it lowers p", ((1 + target) / 2, 0.9), ha="center", fontsize=8)
    ax.set(xlabel="score p", ylabel="loss", ylim=(-1.0, 1.6), title="the pull of a soft target")
    ax.legend(fontsize=8, loc="lower right")
    return fig


# --------------------------------------------------------------------------------------------
# A toy training: free scores under the O2F loss, duplicates fade epoch by epoch
# --------------------------------------------------------------------------------------------


def greedy_match(
    boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou_thr: float = 0.5
) -> Tensor:
    """COCO-style matching of detections sorted by score: ``(K,)`` gt index of each true positive, -1 for
    a detection matching no gt, -2 for a DUPLICATE (it would match a gt that a higher score already took)."""
    out = torch.full((boxes.shape[0],), -1, dtype=torch.int64)
    taken: set[int] = set()
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return out
    iou = box_iou(boxes, gt_boxes)  # (K, M)
    iou[labels[:, None] != gt_labels[None, :]] = -1
    for k in torch.sort(scores, descending=True, stable=True).indices.tolist():
        best, g = iou[k].max(dim=0)
        if best >= iou_thr:
            out[k] = -2 if int(g) in taken else int(g)
            taken.add(int(g))
    return out


@dataclass
class ToyTraining:
    """What :func:`toy_training` records.

    ``ceiling (E,)`` T per epoch; ``certain_score (E, M)`` each gt's best-matching detection score at the
    end of the epoch; ``duplicate_score (E, M)`` the best duplicate's score per gt; ``duplicates (E,)``
    duplicates scoring above ``dup_thr``; ``loss (E,)`` the last step's ``loss_cls``; the final
    ``pred_scores (1, N, C)``, ``pred_boxes (1, N, 4)``, ``points``, ``strides``, the last assignment.
    """

    ceiling: Tensor
    certain_score: Tensor
    duplicate_score: Tensor
    duplicates: Tensor
    loss: Tensor
    pred_scores: Tensor
    pred_boxes: Tensor
    points: Tensor
    strides: Tensor
    assignment: object
    dup_thr: float


def _toy_boxes(points: Tensor, gt_boxes: Tensor, shift: float = 0.3) -> Tensor:
    """Fixed predicted boxes: a point near a gt centre predicts that gt, moved by ``shift`` times the point's
    offset from the centre (IoU falls off from the centre); other points predict their own small square."""
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (M, 2)
    dist = torch.cdist(points, centres)  # (N, M)
    inside = (points[:, None, 0] > gt_boxes[None, :, 0]) & (points[:, None, 0] < gt_boxes[None, :, 2]) & (
        points[:, None, 1] > gt_boxes[None, :, 1]) & (points[:, None, 1] < gt_boxes[None, :, 3])  # (N, M)
    near = torch.where(inside, dist, math.inf).argmin(dim=1)  # (N,)
    owned = inside.any(dim=1)
    offset = (points - centres[near]) * shift  # (N, 2)
    moved = gt_boxes[near] + torch.cat([offset, offset], dim=1)  # (N, 4)
    square = torch.cat([points - 4, points + 4], dim=1)  # (N, 4)
    return torch.where(owned[:, None], moved, square)


def toy_training(
    epochs: int = 12,
    steps_per_epoch: int = 25,
    lr: float = 0.1,
    strides: Sequence[int] = (8, 16),
    dup_thr: float = 0.3,
    seed: int = 0,
) -> ToyTraining:
    """Train free score parameters on the toy scene under the O2F classification loss, ``T`` decaying per epoch.

    The "network" is a table: one class logit per (point, class) and one centerness logit per point, so
    ``p = sigmoid(cls) * sigmoid(ctr)``; predicted boxes are fixed (:func:`_toy_boxes`). Every step assigns
    with :class:`O2FAssigner` on the current (detached) scores and takes an Adam step on ``O2FLoss.loss_cls``.
    After each epoch the NMS-free detections (score > 0.05, top 100) are matched to the gts
    (:func:`greedy_match`) and the duplicates counted. CPU, about a second.
    """
    from lessons.scenes import grid_points, toy_scene

    scene = toy_scene()
    h, w = scene.hw
    points, point_strides, _ = grid_points(h, w, strides)
    gt_boxes, gt_labels = scene.boxes, scene.labels
    n, c, m = points.shape[0], scene.num_classes, scene.num_gts
    boxes = _toy_boxes(points, gt_boxes)[None]  # (1, N, 4)
    g = torch.Generator().manual_seed(seed)
    prior = -math.log((1 - 0.01) / 0.01)  # the classifier's bias init: sigmoid = 0.01
    cls = nn.Parameter(prior + 0.1 * torch.randn(n, c, generator=g))
    ctr = nn.Parameter(0.1 * torch.randn(n, generator=g))
    opt = torch.optim.Adam([cls, ctr], lr=lr)
    assigner, criterion = O2FAssigner(num_classes=c), O2FLoss()
    gts, labels, mask = gt_boxes[None], gt_labels[None], torch.ones(1, m, dtype=torch.bool)
    ceilings, certain_scores, dup_scores, dups, losses = [], [], [], [], []
    result = None
    for epoch in range(epochs):
        t = soft_ceiling(epoch, epochs)
        for _ in range(steps_per_epoch):
            p = (torch.sigmoid(cls) * torch.sigmoid(ctr)[:, None])[None]  # (1, N, C)
            result = assigner(points, point_strides, p.detach(), boxes, gts, labels, mask, t)
            loss = criterion(p, boxes, points, result.labels, result.target_scores, result.weights, result.boxes)
            opt.zero_grad()
            loss.loss_cls.backward()
            opt.step()
        with torch.no_grad():
            p = torch.sigmoid(cls) * torch.sigmoid(ctr)[:, None]  # (N, C)
            det_boxes, det_scores, det_labels = _nms_free(boxes[0], p)
            match = greedy_match(det_boxes, det_scores, det_labels, gt_boxes, gt_labels)
        best = torch.zeros(m)
        dup = torch.zeros(m)
        for j in range(m):
            tp = det_scores[match == j]
            best[j] = tp.max() if tp.numel() else 0.0
        for k in (match == -2).nonzero().squeeze(1).tolist():  # each duplicate's gt: its best IoU, same class
            iou = box_iou(det_boxes[k][None], gt_boxes)[0]
            iou[gt_labels != det_labels[k]] = -1
            j = int(iou.argmax())
            dup[j] = max(float(dup[j]), float(det_scores[k]))
        ceilings.append(float(t))
        certain_scores.append(best)
        dup_scores.append(dup)
        dups.append(int(((match == -2) & (det_scores > dup_thr)).sum()))
        losses.append(float(loss.loss_cls.detach()))
    with torch.no_grad():
        final = (torch.sigmoid(cls) * torch.sigmoid(ctr)[:, None])[None]
    return ToyTraining(torch.tensor(ceilings), torch.stack(certain_scores), torch.stack(dup_scores),
                       torch.tensor(dups), torch.tensor(losses), final, boxes, points, point_strides, result, dup_thr)


def _nms_free(boxes: Tensor, scores: Tensor, score_thr: float = 0.05, max_per_img: int = 100):
    """NMS-free selection on flat predictions: pairs ``> score_thr``, sorted, the first ``max_per_img``."""
    c = scores.shape[1]
    flat = scores.reshape(-1)
    keep = (flat > score_thr).nonzero().squeeze(1)
    keep = keep[torch.sort(flat[keep], descending=True, stable=True).indices[:max_per_img]]
    return boxes[keep // c], flat[keep], keep % c


def nms_free_vs_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.6, score_thr: float = 0.05,
                    max_per_img: int = 100) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """The same flat predictions ``boxes (N, 4)``, ``scores (N, C)`` through NMS-free top-k and through
    class-aware NMS (IoU ``iou_threshold``, O2F's unused config value 0.6): two ``(boxes, scores, labels)``."""
    free = _nms_free(boxes, scores, score_thr, max_per_img)
    c = scores.shape[1]
    flat = scores.reshape(-1)
    cand = (flat > score_thr).nonzero().squeeze(1)
    kept = batched_nms(boxes[cand // c], flat[cand], cand % c, iou_threshold, max_per_img)
    sel = cand[kept]
    return free, (boxes[sel // c], flat[sel], sel % c)


def plot_training(run: ToyTraining, ax=None):
    """Per epoch: T, each gt's best detection score, its best duplicate's score. Returns the Figure."""
    from lessons.draw import LessonFigure, color_for

    if ax is None:
        fig = LessonFigure(figsize=(6.8, 4.0), layout="constrained")
        ax = fig.subplots()
    fig = ax.figure
    e = torch.arange(run.ceiling.shape[0])
    ax.step(e, run.ceiling, where="mid", color="black", lw=1.2, label="T(e)")
    for j in range(run.certain_score.shape[1]):
        ax.plot(e, run.certain_score[:, j], marker="*", color=color_for(j), label=f"gt {j}: best detection")
        ax.plot(e, run.duplicate_score[:, j], marker="o", ls="--", color=color_for(j), label=f"gt {j}: best duplicate")
    ax.axhline(run.dup_thr, color="0.6", lw=0.8, ls=":")
    ax.set(xlabel="epoch", ylabel="score p", ylim=(0, 1.05), title="toy training: duplicates fade with T")
    ax.legend(fontsize=7, ncol=2, loc="center right")
    return fig


# --------------------------------------------------------------------------------------------
# Photo inputs for `make demo` and the benchmark cases
# --------------------------------------------------------------------------------------------


def _photo(ctx) -> PhotoHead:
    return photo_head(ctx.gt_boxes[0], ctx.gt_labels[0], ctx.padded_hw)


def _assigner_inputs(ctx) -> tuple[Tensor, ...]:
    head = _photo(ctx)
    return (head.points, head.strides, head.pred_scores, head.pred_boxes, ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask,
            soft_ceiling(0, 12))


def _loss_inputs(ctx) -> tuple[Tensor, ...]:
    args = _assigner_inputs(ctx)
    res = O2FAssigner()(*args)
    return args[2], args[3], args[0], res.labels, res.target_scores, res.weights, res.boxes


def _postprocess_inputs(ctx) -> tuple[Tensor, ...]:
    head = _photo(ctx)
    return (*head.cls, *head.box, *head.ctr, ctx.image_sizes)


def demo_scene_inputs() -> dict[str, Callable]:
    """Photo-shaped inputs of this topic's catalog entries for ``python -m lessons demo``."""
    return {
        "o2f_assigner": _assigner_inputs,
        "o2f_loss": _loss_inputs,
        "o2f_postprocess": _postprocess_inputs,
    }


def benchmark_case(workload: str, seed: int = 0) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """``(O2FAssigner(grid_strides=...), inputs)`` for ``yolox-m20`` / ``yolox-m100`` (docs/workloads.md): B = 16,
    8,400 points on the strides 8 / 16 / 32 grid (steps 1-4 on windows of cells, in eager and in the graph),
    seeded predictions (``make_workload_predictions``: scores uniform, boxes jittered squares), the first
    epoch's ``T = 0.6``. Call ``module(*inputs)``."""
    from lessons.scenes import WORKLOADS, make_workload_batch, make_workload_predictions

    if workload not in ("yolox-m20", "yolox-m100"):
        raise ValueError(f"workload: O2F runs on the point workloads yolox-m20 / yolox-m100, got {workload!r}")
    points, strides, pred_scores, pred_boxes = make_workload_predictions(workload, seed)
    gts = make_workload_batch(workload, seed)
    grid = tuple(WORKLOADS[workload].priors["strides"])
    module = O2FAssigner(num_classes=pred_scores.shape[2], grid_strides=grid).eval()
    return module, (points, strides, pred_scores, pred_boxes, gts.gt_boxes, gts.gt_labels, gts.gt_mask,
                    soft_ceiling(0, 12))


# --------------------------------------------------------------------------------------------
# Exercise checkers (notebook 09): each case sits on a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _photo_assignment():  # the same scene for every checker (check_cases passes copies)
    from lessons.scenes import default_scene

    scene = default_scene()
    head = photo_head(scene.boxes, scene.labels, (608, 512))
    single = o2f_assign_single(head.points, head.strides, head.pred_scores[0], head.pred_boxes[0], scene.boxes,
                               scene.labels, soft_ceiling_value(0, 12))
    return scene, head, single


def check_center_region(fn) -> None:
    """Exercise 1: ``fn(points (N, 2), strides (N,), box (4,), radius) -> (N,)`` bool: strictly inside the square of
    half-side ``radius * stride`` (each point's own stride) around the box centre, clipped to the box. Cases: a
    thin gt whose coarse-level square sticks out of the box, points exactly on the clipped sides, mixed strides,
    another radius, the photo."""
    from exportable.assigners.o2f import center_region
    from lessons.check import Case, check_cases

    def expected(points, strides, box, radius):
        return center_region(points, strides * radius, box[None, None])[0, 0]  # the exportable module's test

    thin = torch.tensor([100.0, 100.0, 120.0, 200.0])  # 20 x 100 px, centre (110, 150)
    coarse = torch.tensor([[110.0, 150.0], [130.0, 150.0], [100.0, 150.0]])  # stride 64: square half-side 96
    fine = torch.tensor([[110.0, 150.0], [110.0, 138.0], [110.0, 134.0]])  # stride 8: half-side 12 (20 at 2.5)
    s64, s8 = torch.full((3,), 64.0), torch.full((3,), 8.0)
    mixed = torch.cat([coarse, fine])
    s_mixed = torch.cat([s64, s8])
    scene, head, _ = _photo_assignment()
    cases = [
        Case("stride 64 on a 20 x 100 gt: the square sticks out of the box and is clipped to it, so (130, 150) is "
             "out; (100, 150) lies ON the box's side: out", (coarse, s64, thin, 1.5), expected(coarse, s64, thin, 1.5)),
        Case("stride 8: the square's top is y = 150 - 12 = 138; (110, 138) lies on it: out",
             (fine, s8, thin, 1.5), expected(fine, s8, thin, 1.5)),
        Case("radius 2.5 passed in: the top moves to y = 130, and (110, 134) is in", (fine, s8, thin, 2.5),
             expected(fine, s8, thin, 2.5)),
        Case("each point uses its own stride", (mixed, s_mixed, thin, 1.5), expected(mixed, s_mixed, thin, 1.5)),
    ]
    for g in (2, 5):
        cases.append(Case(f"the photo, {scene.names()[g]}: 6,484 points on 5 levels",
                          (head.points, head.strides, scene.boxes[g], 1.5),
                          expected(head.points, head.strides, scene.boxes[g], 1.5)))
    check_cases("centre region", fn, cases)


def check_soft_labels(fn) -> None:
    """Exercise 2: ``fn(prob (K,) in q order, T) -> (targets (K,), weights (K,))``: 1 and 1 for the first (certain),
    ``prob / max(prob[1:]) * T`` and 0.4 for the others. Cases: one positive, two (the ambiguous one gets exactly T),
    a certain positive with a LOWER p than the ambiguous ones, another T, every gt of the photo."""
    from lessons.check import Case, check_cases

    def expected(prob, t):
        targets, weights = torch.ones_like(prob), torch.full_like(prob, CERTAIN_WEIGHT)
        if len(prob) > 1:
            targets[1:] = prob[1:] / prob[1:].max() * t
            weights[1:] = AMBIGUOUS_WEIGHT
        return targets, weights

    raw = [
        ("a gt with one positive: only the certain one (1, weight 1)", [0.3], 0.6),
        ("two positives: the ambiguous one's target is exactly T", [0.5, 0.2], 0.6),
        ("the certain positive (best q) has a LOWER p than the ambiguous ones: the max is over the ambiguous only",
         [0.1, 0.4, 0.2, 0.3], 0.6),
        ("the last epoch's T = 0.2", [0.9, 0.8, 0.4], 0.2),
    ]
    cases = [Case(rule, (torch.tensor(p), t), expected(torch.tensor(p), t), atol=1e-7) for rule, p, t in raw]
    scene, head, single = _photo_assignment()
    for g in range(scene.num_gts):
        mine = (single.gt_index == g).nonzero()[:, 0]
        mine = mine[torch.sort(single.quality[mine, g], descending=True, stable=True).indices]  # q order
        prob = head.pred_scores[0, mine, scene.labels[g]]
        cases.append(Case(f"the photo, {scene.names()[g]}: {len(mine)} positives, T = 0.6", (prob, 0.6),
                          (single.target_scores[mine], single.weights[mine]), atol=1e-6))
    check_cases("soft labels", fn, cases)


def check_row_loss(fn) -> None:
    """Exercise 3: ``fn(p (C,), label, t, w) -> (C,)``: ``0.75 p^2 BCE(p, 0)`` everywhere, and at ``label < C`` the
    entry REPLACED by ``w BCE(p, t)``; logs clamped at -100. Cases: a negative row, the certain positive, an
    ambiguous one, scores of exactly 0 and 1, rows of the photo."""
    from exportable.losses import o2f_classification_loss
    from lessons.check import Case, check_cases

    def expected(p, label, t, w):
        return o2f_classification_loss(p[None], torch.tensor([label]), torch.tensor([t]), torch.tensor([w]))[0]

    p = torch.tensor([0.05, 0.6, 0.3, 0.9])
    edge = torch.tensor([0.0, 1.0, 0.5, 1.0])
    raw = [
        ("a negative row (label = C): 0.75 p^2 BCE(p, 0) in every class", (p, 4, 0.0, 1.0)),
        ("the certain positive: its entry is 1 * BCE(p, 1), not added to the negative term", (p, 1, 1.0, 1.0)),
        ("an ambiguous positive: 0.4 * BCE(p, 0.35), no |t - p|^2 factor", (p, 2, 0.35, 0.4)),
        ("scores of exactly 0 and 1: the logs clamp at -100, every entry finite", (edge, 1, 0.5, 0.4)),
    ]
    cases = [Case(rule, args, expected(*args), atol=1e-6) for rule, args in raw]
    scene, head, single = _photo_assignment()
    for j in ((single.gt_index >= 0).nonzero()[:3, 0].tolist() + [0, 100]):
        args = (head.pred_scores[0, j], int(single.labels[j]), float(single.target_scores[j]), float(single.weights[j]))
        cases.append(Case(f"the photo, point {j} ({'positive' if single.gt_index[j] >= 0 else 'negative'})", args,
                          expected(*args), atol=1e-6))
    check_cases("row loss", fn, cases)


def draw_detections(image, boxes: Tensor, labels: Tensor, class_names: Sequence[str], *, ax, title: str,
                    show_text: bool = True, linewidth: float = 1.5):
    """Detections ``(K, 4)`` in their class colour; with ``show_text`` each is named ``"k: class"`` INSIDE its top-left
    corner, so that a box touching the image's top edge keeps a readable label. Returns the Figure."""
    from lessons.draw import color_for, show_boxes

    fig = show_boxes(image, boxes, labels, class_names, ax=ax, title=title, linewidth=linewidth, show_text=False)
    if show_text:
        for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
            ax.text(box[0] + 2, box[1] + 2, f"{k}: {class_names[label]}", fontsize=8, color="white", va="top",
                    ha="left", zorder=6, clip_on=True,
                    bbox={"facecolor": color_for(label), "edgecolor": "none", "alpha": 0.85, "pad": 1.2})
    return fig
