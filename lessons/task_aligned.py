"""Task-aligned assignment, the readable way: one image at a time, one gt at a time, the peers' steps in order.

The reference (test oracle) for :class:`exportable.assigners.task_aligned.TaskAlignedAssigner` and the code
of ``notebooks/08_task_aligned``. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``points (N, 2)`` are
cell centres; ``pred_scores (N, C)`` are class probabilities (sigmoid outputs); ``pred_boxes (N, 4)`` the
decoded predictions; ``gt_boxes (M, 4)``, ``gt_labels (M,)`` the REAL gts of ONE image (no padding).
Matrices are ``(M, N)`` (gts x points).

The metric of a (gt, point) pair is ``t = s^alpha * u^beta`` (``s`` the point's probability at the gt's
class, ``u`` the overlap of its predicted box with the gt). Steps, numbered as in the notebook and in
``docs/algorithms.md`` §10:

``variant="tood"`` (TOOD / mmdetection 3.3; topk 13, alpha 1, beta 6):

1. ``u = IoU`` (eps 1e-6), ``s`` gathered at the gt's class.
2. ``t = s^alpha * u^beta``.
3. each gt takes its ``topk`` largest ``t`` over ALL points (ties: lower point index first).
4. a candidate is positive if ``t > 0`` and the point lies inside the gt by more than 0.01 px.
5. a point positive for several gts goes to the one with the highest IoU (lower gt index on ties).
6. ``t_hat = t / (max t + 1e-7) * max u`` per gt over its final positives.

``variant="ultralytics"`` (ultralytics 8.4; topk 10, alpha 0.5, beta 6):

1. candidates: points inside the gt by more than 1e-9 px, after STAL (sides below 16 px widened to 16).
2. ``u = CIoU`` clamped at 0 and ``t = s^alpha * u^beta`` on candidates; 0 elsewhere.
3. each gt takes its ``topk`` largest ``t`` over all points (ties: lower index first); those that are
   candidates are positive -- zero-metric ones included.
4. a point positive for several gts goes to ``argmax u`` over ALL gts (lower index on ties).
5. ``t_hat = t * max u / (max t + 1e-9)`` per gt over its final positives.

Powers with whole exponents are computed by repeated squaring (``u^6 = u^2 * u^4``), as the exportable
module does, so both give the same bits; ``x^0.5`` is ``sqrt``. The result uses the package's encoding
(``gt_index`` 0-based, -1 negative).
"""

from __future__ import annotations

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
    "top_candidates",
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
    """The task-aligned assignment of ONE image, gt by gt (see the module docstring for the steps).

    ``overrides`` replace the variant's :func:`defaults` (``topk``, ``alpha``, ``beta``, ``eps``,
    ``center_margin``, ``stal_side``). ``num_classes`` (default C) labels the non-positives.
    """
    p = defaults(variant)
    unknown = set(overrides) - set(p)
    if unknown:
        raise TypeError(f"unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(p)}")
    p.update(overrides)
    n, c = pred_scores.shape
    m = len(gt_boxes)
    num_classes = c if num_classes is None else num_classes
    metric = torch.zeros(m, n)
    overlap = torch.zeros(m, n)
    pos_pairs = torch.zeros(m, n, dtype=torch.bool)
    candidates = []
    for g in range(m):
        gt, s = gt_boxes[g], pred_scores[:, gt_labels[g]]  # (4,), (N,) the class probability at the gt's class
        if variant == "tood":
            u = iou_row(gt, pred_boxes)  # 1. IoU with every prediction
            t = metric_of(s, u, p["alpha"], p["beta"])  # 2. the metric
            top = top_candidates(t, p["topk"])  # 3. top-k over all points
            box = stal_box(gt, p["stal_side"]) if p["stal_side"] > 0 else gt
            ok = (t[top] > 0) & inside(points[top], box, p["center_margin"])  # 4. t > 0 and centre in gt
        else:
            cand = inside(points, stal_box(gt, p["stal_side"]), p["center_margin"])  # 1. in-gt (STAL) first
            u = torch.where(cand, ciou_row(gt, pred_boxes).clamp(min=0), 0.0)  # 2. CIoU >= 0 on candidates
            t = torch.where(cand, metric_of(s, u, p["alpha"], p["beta"]), 0.0)
            top = top_candidates(t, p["topk"])  # 3. top-k over all points ...
            ok = cand[top]  # ... that are candidates; zero-metric ones included
        metric[g], overlap[g] = t, u
        pos_pairs[g, top[ok]] = True
        candidates.append(top)
    # 5. / 4. conflicts: points positive for several gts
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    if m:
        if variant == "tood":  # the highest IoU among the gts it is positive for
            best, arg = torch.where(pos_pairs, overlap, -1.0).max(dim=0)  # first gt on ties
            gt_index = torch.where(best >= 0, arg, -1)
        else:  # one gt: that one; several: argmax of the overlaps over ALL gts (first on ties)
            count = pos_pairs.sum(dim=0)
            first = pos_pairs.to(torch.float32).argmax(dim=0)
            gt_index = torch.where(count > 1, overlap.argmax(dim=0), torch.where(count == 1, first, -1))
    # 6. / 5. soft targets, gt by gt over its final positives
    target = torch.zeros(n)
    matched = torch.zeros(n)
    for g in range(m):
        final = gt_index == g
        matched[final] = overlap[g, final]
        target[final] = normalise(metric[g, final], overlap[g, final], p["eps"], variant)
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
    return {"task_aligned_assigner": _photo_inputs, "task_aligned_assigner_ultralytics": _photo_inputs}
