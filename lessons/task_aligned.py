"""Task-aligned assignment, the readable way: one image at a time, one gt at a time, the peers' steps in order.

The reference (test oracle) for :class:`exportable.assigners.task_aligned.TaskAlignedAssigner` and the code
of ``notebooks/08_task_aligned``. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``points (N, 2)`` are
cell centres; ``pred_scores (N, C)`` are class probabilities (sigmoid outputs); ``pred_boxes (N, 4)`` the
decoded predictions; ``gt_boxes (M, 4)``, ``gt_labels (M,)`` the REAL gts of ONE image (no padding).
Matrices are ``(M, N)`` (gts x points).

The metric of a (gt, point) pair is ``t = s^alpha * u^beta`` (``s`` the point's probability at the gt's
class, ``u`` the overlap of its predicted box with the gt). Steps, numbered as in the notebook and in
``docs/algorithms.md`` §10:

``variant="tood"`` (:func:`tood_assign`; TOOD / mmdetection 3.3; topk 13, alpha 1, beta 6), §10.1:

1. ``u = IoU`` (eps 1e-6), ``s`` gathered at the gt's class.
2. ``t = s^alpha * u^beta``.
3. each gt takes its ``topk`` largest ``t`` over ALL points (ties: lower point index first).
4. a candidate is positive if ``t > 0`` and the point lies inside the gt by more than 0.01 px.
5. a point positive for several gts goes to the one with the highest IoU (lower gt index on ties).
6. outputs: the matched gt, its class, its IoU.
7. ``t_hat = t / (max t + 1e-7) * max u`` per gt over its final positives (TOOD's head does this).

``variant="ultralytics"`` (:func:`ultralytics_assign`; ultralytics 8.4; topk 10, alpha 0.5, beta 6), §10.3:

1. candidates: points inside the gt by more than 1e-9 px, after STAL (sides below 16 px widened to 16).
2. ``u = CIoU`` clamped at 0 and ``t = s^alpha * u^beta`` on candidates; 0 elsewhere.
3. each gt takes its ``topk`` largest ``t`` over all points (ties: lower index first).
4. those that are candidates are positive -- zero-metric ones included.
5. a point positive for several gts goes to ``argmax u`` over ALL gts (lower index on ties).
6. targets: the matched gt, its class, its CIoU.
7. ``t_hat = t * max u / (max t + 1e-9)`` per gt over its final positives.

Also here: the photo's points and predictions, the figures and the exercise checkers (``check_*``) of the notebook.

Powers with whole exponents are computed by repeated squaring (``u^6 = u^2 * u^4``), as the exportable
module does, so both give the same bits; ``x^0.5`` is ``sqrt``. The result uses the package's encoding
(``gt_index`` 0-based, -1 negative).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "TaskAlignedReference",
    "benchmark_case",
    "benchmark_reference",
    "check_stal_candidates",
    "check_t_hat",
    "check_top_k",
    "ciou_row",
    "defaults",
    "demo_scene_inputs",
    "draw_metric",
    "draw_positives",
    "inside",
    "iou_row",
    "metric_of",
    "normalise",
    "photo_points",
    "photo_predictions",
    "power",
    "stal_box",
    "task_aligned_assign",
    "tood_assign",
    "top_candidates",
    "ultralytics_assign",
]


def defaults(variant: str = "tood") -> dict[str, Any]:
    """The hyper-parameters of a variant: topk, alpha, beta, eps (of ``t_hat``), centre margin, STAL side."""
    if variant == "tood":
        return {"topk": 13, "alpha": 1.0, "beta": 6.0, "eps": 1e-7, "center_margin": 0.01, "stal_side": 0.0}
    if variant == "ultralytics":
        return {"topk": 10, "alpha": 0.5, "beta": 6.0, "eps": 1e-9, "center_margin": 1e-9, "stal_side": 16.0}
    raise ValueError(f"variant: expected 'tood' or 'ultralytics', got {variant!r}")


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def iou_row(gt: Tensor, boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of one gt ``(4,)`` with boxes ``(N, 4)``, as mmdetection: ``inter / max(union, eps)``; ``(N,)``."""
    w = (torch.minimum(gt[2], boxes[:, 2]) - torch.maximum(gt[0], boxes[:, 0])).clamp(min=0)  # (N,)
    h = (torch.minimum(gt[3], boxes[:, 3]) - torch.maximum(gt[1], boxes[:, 1])).clamp(min=0)  # (N,)
    inter = w * h
    area_gt = (gt[2] - gt[0]) * (gt[3] - gt[1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,)
    return inter / (area_gt + area - inter).clamp(min=eps)


def ciou_row(gt: Tensor, boxes: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of one gt ``(4,)`` with boxes ``(N, 4)``, ultralytics' ``bbox_iou(..., CIoU=True)``;
    ``(N,)``, not clamped. ``CIoU = IoU - rho^2 / c^2 - v * a``: ``rho`` the distance between the centres,
    ``c`` the diagonal of the smallest enclosing box, ``v = 4 / pi^2 (atan(w_p / h_p) - atan(w_g / h_g))^2``
    the aspect-ratio mismatch, ``a = v / (1 - IoU + v)``. Heights get ``+ eps``, as in ultralytics."""
    gx1, gy1, gx2, gy2 = gt
    px1, py1, px2, py2 = boxes.unbind(1)
    w1, h1 = gx2 - gx1, gy2 - gy1 + eps
    w2, h2 = px2 - px1, py2 - py1 + eps
    inter = (torch.minimum(gx2, px2) - torch.maximum(gx1, px1)).clamp(min=0) * (
        torch.minimum(gy2, py2) - torch.maximum(gy1, py1)).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(gx2, px2) - torch.minimum(gx1, px1)  # enclosing box
    ch = torch.maximum(gy2, py2) - torch.minimum(gy1, py1)
    c2 = cw * cw + ch * ch + eps  # its squared diagonal
    rho2 = ((px1 + px2 - gx1 - gx2) ** 2 + (py1 + py2 - gy1 - gy2) ** 2) / 4  # squared centre distance
    v = (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2 * (4 / math.pi**2)
    a = v / (1 - iou + v + eps)
    return iou - (rho2 / c2 + v * a)


def power(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0``: whole exponents by repeated squaring (``x^6 = x^2 * x^4``), 0.5 by
    ``sqrt``, others by ``torch.pow``. Squaring uses plain multiplications, which give the same bits on
    every backend (``torch.pow`` does not: 1 ulp between its own vector and scalar paths)."""
    if exponent == 0.5:
        return torch.sqrt(x)
    if exponent != int(exponent) or not 0 <= exponent <= 64:
        return torch.pow(x, exponent)
    e, result, square = int(exponent), None, x
    if e == 0:
        return torch.ones_like(x)
    while True:
        if e & 1:  # this bit of the exponent is set: multiply the current square in
            result = square if result is None else result * square
        e >>= 1
        if not e:
            return result.clone() if result is x else result
        square = square * square  # x^2, x^4, x^8, ...


def metric_of(s: Tensor, u: Tensor, alpha: float, beta: float) -> Tensor:
    """``t = s^alpha * u^beta``, elementwise (TOOD writes it without an eps)."""
    return power(u, beta) * s if alpha == 1.0 else power(s, alpha) * power(u, beta)


def inside(points: Tensor, box: Tensor, margin: float) -> Tensor:
    """``(N,)``: the point lies inside ``box`` by more than ``margin`` px on all four sides."""
    x, y = points[:, 0], points[:, 1]
    return (x - box[0] > margin) & (y - box[1] > margin) & (box[2] - x > margin) & (box[3] - y > margin)


def stal_box(gt: Tensor, min_side: float) -> Tensor:
    """ultralytics' STAL: sides shorter than ``min_side`` widened to it about the centre (for the in-gt test
    only). Written as ultralytics does (to centre + size and back), which also rounds unchanged boxes."""
    cx, cy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    w, h = gt[2] - gt[0], gt[3] - gt[1]
    if min_side > 0:
        w = torch.where(w < min_side, torch.tensor(min_side), w)
        h = torch.where(h < min_side, torch.tensor(min_side), h)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def top_candidates(t: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` largest values of ``t (N,)`` (all of them if N < k), the package's tie rule:
    among equal values the lower index first (a stable sort, written for clarity, not speed)."""
    order = torch.sort(t, descending=True, stable=True).indices  # (N,)
    return order[: min(k, len(t))]


def normalise(t: Tensor, u: Tensor, eps: float, variant: str = "tood") -> Tensor:
    """``t_hat`` of ONE gt's final positives: ``t (P,)``, ``u (P,)`` -> ``(P,)``.

    TOOD: ``t / (max t + eps) * max u``; ultralytics: ``t * max u / (max t + eps)`` (the same up to float
    rounding). The best-aligned positive gets ``max u`` (the best overlap among the positives), the others
    proportionally less; with all ``t = 0`` every target is 0 -- the eps keeps it from being ``0 / 0``."""
    if len(t) == 0:
        return t.clone()
    if variant == "tood":
        return t / (t.max() + eps) * u.max()
    return t * u.max() / (t.max() + eps)


# --------------------------------------------------------------------------------------------
# The assigner, one image
# --------------------------------------------------------------------------------------------


@dataclass
class TaskAlignedReference:
    """One image's task-aligned assignment and everything it computed on the way."""

    gt_index: Tensor  # (N,) 0-based gt, -1 negative
    labels: Tensor  # (N,) gt class, num_classes for non-positives
    overlaps: Tensor  # (N,) IoU (TOOD) / clamped CIoU (ultralytics) with the gt; 0 for non-positives
    target_scores: Tensor  # (N,) t_hat; 0 for non-positives
    metric: Tensor  # (M, N) t for every pair (ultralytics: 0 off the candidates)
    overlap_matrix: Tensor  # (M, N) u for every pair (ultralytics: 0 off the candidates)
    candidates: list[Tensor]  # per gt, its top-k point indices (best first)
    positive_pairs: Tensor  # (M, N) bool: positive for that gt before conflicts are resolved

    @property
    def positive(self) -> Tensor:
        return self.gt_index >= 0

    def positives_per_gt(self) -> list[int]:
        return [int((self.gt_index == g).sum()) for g in range(self.metric.shape[0])]


def task_aligned_assign(
    points: Tensor,
    pred_scores: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    variant: str = "tood",
    num_classes: int | None = None,
    **overrides: Any,
) -> TaskAlignedReference:
    """The task-aligned assignment of ONE image: :func:`tood_assign` or :func:`ultralytics_assign`.

    ``overrides`` replace the variant's :func:`defaults` (``topk``, ``alpha``, ``beta``, ``eps``,
    ``center_margin``, ``stal_side``). ``num_classes`` (default C) labels the non-positives.
    """
    p = defaults(variant)
    unknown = set(overrides) - set(p)
    if unknown:
        raise TypeError(f"unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(p)}")
    p.update(overrides)
    assign = tood_assign if variant == "tood" else ultralytics_assign
    return assign(points, pred_scores, pred_boxes, gt_boxes, gt_labels, num_classes=num_classes, **p)


def tood_assign(
    points: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, topk: int = 13,
    alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-7, center_margin: float = 0.01, stal_side: float = 0.0,
    num_classes: int | None = None,
) -> TaskAlignedReference:
    """TOOD / mmdetection 3.3 for ONE image, gt by gt, steps 1-7 of docs/algorithms.md §10.1.

    ``points (N, 2)``, ``pred_scores (N, C)`` probabilities, ``pred_boxes (N, 4)`` and ``gt_boxes (M, 4)`` as
    ``(x1, y1, x2, y2)``, ``gt_labels (M,)``. Returns ``gt_index (N,)`` (0-based, -1 negative) and the soft targets.
    """
    n, m = pred_scores.shape[0], len(gt_boxes)
    metric, overlap = torch.zeros(m, n), torch.zeros(m, n)  # t and u of every (gt, point) pair
    pos_pairs = torch.zeros(m, n, dtype=torch.bool)  # positive for that gt, before step 5
    candidates = []
    for g in range(m):
        # 1. u = IoU of every predicted box with the gt; s = every point's probability at the gt's class
        u = iou_row(gt_boxes[g], pred_boxes)  # (N,)
        s = pred_scores[:, gt_labels[g]]  # (N,)
        # 2. the alignment metric t = s^alpha * u^beta (no eps)
        t = metric_of(s, u, alpha, beta)  # (N,)
        # 3. the topk largest t over ALL points, every level at once (equal values: the lower index first)
        top = top_candidates(t, topk)  # (K,)
        # 4. positive if t > 0 and the point lies inside the gt by more than center_margin on all four sides
        box = stal_box(gt_boxes[g], stal_side) if stal_side > 0 else gt_boxes[g]
        ok = (t[top] > 0) & inside(points[top], box, center_margin)  # (K,)
        metric[g], overlap[g] = t, u
        candidates.append(top)
        pos_pairs[g, top[ok]] = True
    # 5. a point positive for several gts takes the highest IoU among THEM (the lower gt index on ties)
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    if m:
        best, arg = torch.where(pos_pairs, overlap, -1.0).max(dim=0)  # (N,)
        gt_index = torch.where(best >= 0, arg, -1)
    # 6. outputs: the matched gt's class and IoU; 7. t_hat = t / (max t + eps) * max u per gt, over its FINAL positives
    return _targets(gt_index, metric, overlap, candidates, pos_pairs, gt_labels, eps, "tood",
                    pred_scores.shape[1] if num_classes is None else num_classes)


def ultralytics_assign(
    points: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, topk: int = 10,
    alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9, center_margin: float = 1e-9, stal_side: float = 16.0,
    num_classes: int | None = None,
) -> TaskAlignedReference:
    """ultralytics 8.4's ``TaskAlignedAssigner`` for ONE image, gt by gt, steps 1-7 of docs/algorithms.md §10.3.

    Same inputs and outputs as :func:`tood_assign`; ``overlaps`` are CIoU clamped at 0.
    """
    n, m = pred_scores.shape[0], len(gt_boxes)
    metric, overlap = torch.zeros(m, n), torch.zeros(m, n)  # t and u, 0 off each gt's candidates
    pos_pairs = torch.zeros(m, n, dtype=torch.bool)
    candidates = []
    for g in range(m):
        # 1. candidates: points inside the gt by more than 1e-9, the gt's short sides widened to stal_side (STAL)
        cand = inside(points, stal_box(gt_boxes[g], stal_side), center_margin)  # (N,)
        # 2. on the candidates: u = CIoU clamped at 0, t = s^alpha * u^beta; 0 elsewhere
        s = pred_scores[:, gt_labels[g]]  # (N,)
        u = torch.where(cand, ciou_row(gt_boxes[g], pred_boxes).clamp(min=0), 0.0)  # (N,)
        t = torch.where(cand, metric_of(s, u, alpha, beta), 0.0)  # (N,)
        # 3. the topk largest t over all points (equal values: the lower index first)
        top = top_candidates(t, topk)  # (K,)
        # 4. positive: in the top-k AND a candidate; NO t > 0 test, so zero-metric candidates count
        metric[g], overlap[g] = t, u
        candidates.append(top)
        pos_pairs[g, top[cand[top]]] = True
    # 5. a point positive for several gts: argmax u over ALL gts (lower index on ties), even one that did not pick it
    count = pos_pairs.sum(dim=0)  # (N,)
    first = pos_pairs.to(torch.float32).argmax(dim=0) if m else torch.zeros(n, dtype=torch.int64)  # the only gt
    several = overlap.argmax(dim=0) if m else first  # (N,)
    gt_index = torch.where(count > 1, several, torch.where(count == 1, first, -1))
    # 6. targets; 7. t_hat = t * max u / (max t + eps) per gt, over its FINAL positives
    return _targets(gt_index, metric, overlap, candidates, pos_pairs, gt_labels, eps, "ultralytics",
                    pred_scores.shape[1] if num_classes is None else num_classes)


def _targets(gt_index: Tensor, metric: Tensor, overlap: Tensor, candidates: list[Tensor], pos_pairs: Tensor,
             gt_labels: Tensor, eps: float, variant: str, num_classes: int) -> TaskAlignedReference:
    """Steps 6-7 of both variants: labels, the matched overlap, and ``t_hat`` per gt over its final positives."""
    n = gt_index.shape[0]
    target, matched = torch.zeros(n), torch.zeros(n)
    for g in range(metric.shape[0]):
        final = gt_index == g
        matched[final] = overlap[g, final]
        target[final] = normalise(metric[g, final], overlap[g, final], eps, variant)
    labels = torch.full((n,), num_classes, dtype=torch.int64)
    labels[gt_index >= 0] = gt_labels[gt_index[gt_index >= 0]]
    return TaskAlignedReference(gt_index, labels, matched, target, metric, overlap, candidates, pos_pairs)


# --------------------------------------------------------------------------------------------
# Points and predictions for the photo
# --------------------------------------------------------------------------------------------


def photo_points(hw: tuple[int, int], strides: Sequence[int] = (8, 16, 32)) -> tuple[Tensor, Tensor, Tensor]:
    """YOLO points for an image padded to a multiple of 32: ``points (N, 2)``, ``strides (N,)``,
    ``level_ids (N,)``; cell centres ``(i + 0.5) * stride``, level by level, row-major."""
    from lessons.scenes import grid_points

    h, w = (math.ceil(v / 32) * 32 for v in hw)
    return grid_points(h, w, strides)


def photo_predictions(
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    stage: str = "mid",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Seeded predictions ``(scores (N, C), boxes (N, 4))`` of a point detector for one image.

    - ``"start"``: a network at initialisation: every box is the point's own ``stride``-wide square (a
      distance head near 0 decodes to it), jittered by a quarter stride; every probability near 0.01 (the
      classifier's prior bias). Small boxes overlap a gt only near its edge cells: ``t`` is tiny or 0.
    - ``"mid"``: a network some epochs in. A point inside a gt (the smallest containing it) predicts that
      gt's box with an error that grows away from the gt's centre, and its class with a probability that
      falls away from the centre, noisily; other points keep start-like boxes and low scores. So IoU and
      score are both high near the centres but are not the same ranking: what ``t`` is about.
    """
    g = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    s = strides[:, None]  # (N, 1)
    jitter = (torch.rand(n, 4, generator=g) * 2 - 1) * s / 4  # (N, 4)
    boxes = torch.cat([points - s / 2, points + s / 2], dim=1) + jitter  # (N, 4)
    logits = math.log(0.01 / 0.99) + 0.5 * torch.randn(n, num_classes, generator=g)  # (N, C)
    if stage == "mid" and len(gt_boxes):
        x, y = points[:, :1], points[:, 1:]  # (N, 1)
        in_box = (x > gt_boxes[:, 0]) & (x < gt_boxes[:, 2]) & (y > gt_boxes[:, 1]) & (y < gt_boxes[:, 3])  # (N, M)
        area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # (M,)
        owner = torch.where(in_box, area[None, :], float("inf")).argmin(1)  # (N,) smallest containing gt
        hit = in_box.any(1).nonzero()[:, 0]  # (P,)
        gt = gt_boxes[owner[hit]]  # (P, 4)
        wh = gt[:, 2:] - gt[:, :2]  # (P, 2)
        off = ((points[hit] - (gt[:, :2] + gt[:, 2:]) / 2).abs() / wh.clamp(min=1)).sum(1)  # (P,) 0 at the centre
        noise = torch.randn(len(hit), 4, generator=g) * wh.repeat(1, 2) * (0.04 + 0.25 * off[:, None])  # (P, 4)
        good = gt + noise  # (P, 4)
        boxes[hit] = torch.cat([torch.minimum(good[:, :2], good[:, 2:]), torch.maximum(good[:, :2], good[:, 2:])], 1)
        logits[hit, gt_labels[owner[hit]]] = 2.0 - 4.0 * off + 0.8 * torch.randn(len(hit), generator=g)
    elif stage not in ("start", "mid"):
        raise ValueError(f"stage: expected 'start' or 'mid', got {stage!r}")
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    return torch.sigmoid(logits), boxes


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def draw_metric(
    values: Tensor,
    points: Tensor,
    strides: Tensor,
    image: Any = None,
    *,
    stride: int = 8,
    floor: float = 0.0,
    gt_box: Tensor | None = None,
    marks: Tensor | None = None,
    ax: Any = None,
    title: str | None = None,
    cmap: str = "magma_r",
    vmax: float | None = None,
    label: str = "",
):
    """Per-point values ``(N,)`` of ONE level (``stride``) drawn as a map of cells over the image; cells with a
    value ``<= floor`` are left transparent. ``marks`` (point indices, any level) are circled, bigger for
    coarser levels; ``gt_box`` is outlined. Returns the Figure."""
    import numpy as np
    from matplotlib.patches import Rectangle

    from lessons.draw import _setup

    sel = strides == stride
    p, v = points[sel], values[sel].detach().double()  # (n_l, 2), (n_l,)
    cols = int(round(float(p[:, 0].max()) / stride + 0.5))
    rows = int(round(float(p[:, 1].max()) / stride + 0.5))
    grid = np.full((rows, cols), np.nan)
    ix = (p[:, 0] / stride - 0.5).round().long().numpy()
    iy = (p[:, 1] / stride - 0.5).round().long().numpy()
    grid[iy, ix] = np.where(v.numpy() > floor, v.numpy(), np.nan)
    fig, ax, _ = _setup(image, ax)
    vmax = float(v.max()) if vmax is None else vmax
    im = ax.imshow(np.ma.masked_invalid(grid), extent=(0, cols * stride, rows * stride, 0), cmap=cmap, alpha=0.8,
                   vmin=0.0, vmax=vmax if vmax > 0 else 1.0, interpolation="nearest", zorder=1)
    if marks is not None and len(marks):
        size = ((strides[marks] / 8.0) ** 2 * 40.0).numpy()
        ax.scatter(points[marks, 0], points[marks, 1], s=size, facecolors="none", edgecolors="deepskyblue",
                   linewidths=1.5, zorder=3)
    if gt_box is not None:
        x1, y1, x2, y2 = (float(t) for t in gt_box)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=2, zorder=4))
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


def draw_positives(
    image: Any,
    points: Tensor,
    gt_boxes: Tensor,
    gt_index: Tensor,
    target_scores: Tensor,
    *,
    ax: Any = None,
    title: str | None = None,
    names: Sequence[str] | None = None,
):
    """Positives as dots in their gt's colour, sized by their soft target ``t_hat``; gts outlined in the
    same colour. Returns the Figure."""
    from matplotlib.patches import Rectangle

    from lessons.draw import _setup, color_for

    fig, ax, _ = _setup(image, ax)
    for g in range(len(gt_boxes)):
        c = color_for(g)
        x1, y1, x2, y2 = (float(t) for t in gt_boxes[g])
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=2, zorder=3))
        sel = gt_index == g
        name = names[g] if names is not None else f"gt {g}"
        ax.scatter(points[sel, 0], points[sel, 1], s=(20 + 160 * target_scores[sel]).numpy(), color=c,
                   edgecolors="white", linewidths=0.6, zorder=4, label=f"{name}: {int(sel.sum())}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Benchmarks and the demo
# --------------------------------------------------------------------------------------------


def _workload_inputs(workload: str, seed: int) -> tuple[Tensor, ...]:
    from lessons.scenes import make_point_workload_inputs

    return make_point_workload_inputs(workload, seed)


def benchmark_case(workload: str, seed: int = 0, variant: str = "tood", **params: Any):
    """``(TaskAlignedAssigner(variant=variant, num_classes=80, **params), inputs)`` for ``yolox-m20`` /
    ``yolox-m100`` (or ``name@B``): B = 16 images of 640 x 640, 8,400 points (strides 8/16/32), C = 80,
    docs/workloads.md's seeded predictions. Inputs in ``forward`` order: points, strides, pred_scores,
    pred_boxes, gt_boxes, gt_labels, gt_mask."""
    from exportable.assigners.task_aligned import TaskAlignedAssigner

    return TaskAlignedAssigner(variant=variant, num_classes=80, **params).eval(), _workload_inputs(workload, seed)


def benchmark_reference(workload: str, seed: int = 0, variant: str = "tood") -> Callable[[], list]:
    """A zero-argument callable running :func:`task_aligned_assign` on every image of the workload."""
    points, _, scores, boxes, gt_boxes, gt_labels, gt_mask = _workload_inputs(workload, seed)
    images = [(scores[i], boxes[i], gt_boxes[i][gt_mask[i]], gt_labels[i][gt_mask[i]]) for i in range(len(scores))]
    return lambda: [task_aligned_assign(points, s, b, g, lab, variant=variant) for s, b, g, lab in images]


def _photo_inputs(ctx: Any) -> tuple[Tensor, ...]:
    """The photo's points (padded to (608, 512): 6,384) with seeded mid-training predictions over C = 80
    classes (the photo's 6 labels are class indices 0-5)."""
    points, strides, _ = photo_points(ctx.scene.hw)
    scores, boxes = photo_predictions(points, strides, ctx.gt_boxes[0], ctx.gt_labels[0], 80, "mid", seed=0)
    return points, strides, scores[None], boxes[None], ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask


def demo_scene_inputs() -> dict[str, Callable[[Any], tuple[Tensor, ...]]]:
    """Photo inputs of this module's catalog entries, for ``python -m lessons demo``."""
    return {"task_aligned_assigner": _photo_inputs, "task_aligned_assigner_ultralytics": _photo_inputs,
            "task_aligned_dual": _photo_inputs}


# --------------------------------------------------------------------------------------------
# Exercise checkers (notebook 08): each case sits on a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _photo_mid():  # the same scene for every checker (check_cases passes copies)
    from lessons.scenes import default_scene

    scene = default_scene()
    points, strides, _ = photo_points(scene.hw)
    scores, boxes = photo_predictions(points, strides, scene.boxes, scene.labels, scene.num_classes, "mid")
    return scene, points, scores, boxes, task_aligned_assign(points, scores, boxes, scene.boxes, scene.labels)


def check_top_k(fn) -> None:
    """Exercise 1: ``fn(t (N,), k) -> (min(k, N),)`` the indices of the k largest values, best first, equal values
    in index order. Cases: a gt with fewer than k non-zero values (the zeros fill in), all values equal, ties
    in the middle, fewer than k values, and the photo's metrics."""
    from lessons.check import Case, check_cases

    scarce = torch.zeros(100)
    scarce[[50, 60, 70]] = torch.tensor([0.3, 0.2, 0.1])  # 3 non-zero values, k = 13: ten zeros fill in
    middle = torch.tensor([0.3, 0.7, 0.7, 0.1, 0.7, 0.9])
    scene, _, _, _, ref = _photo_mid()
    cases = [
        Case("3 non-zero values and k = 13: the 10 zeros that fill in are the LOWEST indices, 0 to 9",
             (scarce, 13), top_candidates(scarce, 13)),
        Case("30 equal values, k = 13: indices 0 to 12, in order", (torch.full((30,), 0.5), 13),
             top_candidates(torch.full((30,), 0.5), 13)),
        Case("three values tied at 0.7 for places 2 to 3: indices 1 and 2", (middle, 3), top_candidates(middle, 3)),
        Case("5 values, k = 13: all 5, best first", (middle[:5], 13), top_candidates(middle[:5], 13)),
    ]
    for g in (0, 2):
        cases.append(Case(f"the photo, {scene.names()[g]}: t over 6,384 points, k = 13", (ref.metric[g], 13),
                          top_candidates(ref.metric[g], 13)))
    check_cases("top-k", fn, cases)


def check_t_hat(fn) -> None:
    """Exercise 2: ``fn(t (P,), u (P,), eps) -> (P,)`` TOOD's ``t / (max t + eps) * max u`` over one gt's final
    positives. Cases: all-zero metrics (0, not NaN), the best t and the best u on different positives, a single
    positive, another eps, the photo's gts."""
    from lessons.check import Case, check_cases

    split = (torch.tensor([0.2, 0.05, 0.1]), torch.tensor([0.6, 0.9, 0.7]))  # max t at 0, max u at 1
    cases = [
        Case("every t = 0 (a gt no prediction fits yet): targets 0, not 0 / 0 = NaN",
             (torch.zeros(4), torch.zeros(4), 1e-7), normalise(torch.zeros(4), torch.zeros(4), 1e-7)),
        Case("the best-aligned positive gets the gt's best IoU 0.9, although its own IoU is 0.6", (*split, 1e-7),
             normalise(*split, 1e-7)),
        Case("a single positive: its target is its IoU (up to eps)", (torch.tensor([0.3]), torch.tensor([0.8]), 1e-7),
             normalise(torch.tensor([0.3]), torch.tensor([0.8]), 1e-7)),
        Case("eps = 1e-9 passed in", (torch.zeros(2), torch.tensor([0.5, 0.2]), 1e-9),
             normalise(torch.zeros(2), torch.tensor([0.5, 0.2]), 1e-9)),
    ]
    scene, _, _, _, ref = _photo_mid()
    for g in (0, 3):
        final = ref.gt_index == g
        args = (ref.metric[g, final], ref.overlap_matrix[g, final], 1e-7)
        cases.append(Case(f"the photo, {scene.names()[g]}: its {int(final.sum())} positives", args,
                          ref.target_scores[final], atol=1e-7))
    check_cases("t_hat", fn, cases)


def check_stal_candidates(fn) -> None:
    """Exercise 3: ``fn(points (N, 2), gt (4,), min_side) -> (N,)`` bool: inside the gt widened about its centre to
    ``min_side``, by more than 1e-9. Cases: points exactly on a side (out), a side exactly ``min_side``
    (unchanged), a 4 x 4 speck, a thin gt (one side widened), ``min_side = 0``, the photo's gts."""
    from lessons.check import Case, check_cases
    from lessons.scenes import grid_points

    grid = grid_points(64, 64, (8,))[0]  # (64, 2) centres 4, 12, ..., 60
    scene, points, _, _, _ = _photo_mid()

    def expected(pts, gt, side):
        return inside(pts, stal_box(gt, side), 1e-9)

    raw = [
        ("a 16 x 16 gt whose sides pass through point centres: those points are OUT (strictly inside only); "
         "16 = min_side is not widened", grid, [4.0, 4.0, 20.0, 20.0], 16.0),
        ("a 4 x 4 speck containing no centre: widened about its centre to 16 x 16", grid, [26.0, 26.0, 30.0, 30.0],
         16.0),
        ("a 6 x 40 gt: only the short side is widened", grid, [30.0, 2.0, 36.0, 42.0], 16.0),
        ("min_side = 0: no widening", grid, [26.0, 26.0, 30.0, 30.0], 0.0),
    ]
    cases = [Case(rule, (pts, torch.tensor(gt), side), expected(pts, torch.tensor(gt), side))
             for rule, pts, gt, side in raw]
    for g in (3, 4):
        cases.append(Case(f"the photo, {scene.names()[g]}", (points, scene.boxes[g], 16.0),
                          expected(points, scene.boxes[g], 16.0)))
    check_cases("STAL candidates", fn, cases)
