"""ATSS, the readable way: one image at a time, the official code's (= mmdetection 3.3's) steps in order.

The reference (test oracle) for :class:`exportable.assigners.atss.ATSSAssigner` and the code of
``notebooks/06_atss.ipynb``. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``anchors (N, 4)``,
``level_ids (N,)``, ``gt_boxes (M, 4)`` for ONE image. Step numbers match the notebook,
``docs/algorithms.md`` §8 and the exportable module:

1. distances between anchor centres and gt centres, ``(N, M)``;
2. per level, the ``min(k, n_l)`` anchors nearest each gt are its candidates (equal distances: the
   lower anchor index first, the package's tie rule);
3. the IoU of each candidate's anchor box with the gt (read from the table of every anchor with every
   gt, ``(N, M)``, computed up front as the official code does);
4. threshold ``t = mean + std`` of the candidates' IoUs, with the UNBIASED std (``n - 1``);
5. positive if ``IoU >= t`` and the anchor centre lies inside the gt by more than 0.01 px;
6. an anchor positive for several gts takes the highest IoU among them (the lower gt index on ties);
7. everything else is negative.

``variant="paddle"`` switches to PaddleDetection's rules (the code the study note quotes): ``IoU > t``,
margin 1e-9, and in step 6 the argmax IoU over ALL gts. The result uses the package's encoding
(``gt_index`` 0-based, -1 negative, -2 for anchors outside ``valid``).

Also here: the figures of notebook 06 and its exercise checkers (``check_*``), its photo inputs for
``python -m lessons demo``, and :func:`benchmark_case` / :func:`benchmark_reference` for the benchmark harness.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ATSSReference",
    "atss_anchors",
    "atss_assign",
    "benchmark_case",
    "benchmark_reference",
    "centre_distances",
    "check_candidates",
    "check_resolve",
    "check_threshold",
    "demo_scene_inputs",
    "draw_candidates",
    "draw_thresholds",
    "iou_table",
    "mmdet_atss_assign",
]

_RULES = {"mmdet": (False, 0.01, "positive_gts"), "paddle": (True, 1e-9, "all_gts")}


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


def iou_table(anchors: Tensor, gt_boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU ``(N, M)`` of anchors ``(N, 4)`` with gts ``(M, 4)``, mmdetection's ``bbox_overlaps`` in float32:
    ``inter / max(area_anchor + area_gt - inter, eps)``."""
    a, g = anchors[:, None, :], gt_boxes[None, :, :]  # (N, 1, 4), (1, M, 4)
    w = (torch.minimum(a[..., 2], g[..., 2]) - torch.maximum(a[..., 0], g[..., 0])).clamp(min=0)  # (N, M)
    h = (torch.minimum(a[..., 3], g[..., 3]) - torch.maximum(a[..., 1], g[..., 1])).clamp(min=0)  # (N, M)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (N, 1)
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])  # (1, M)
    return inter / (area_a + area_g - inter).clamp(min=eps)


def centre_distances(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """Distances ``(N, M)`` between anchor centres and gt centres, ``sqrt(dx² + dy²)`` (mmdetection)."""
    acx, acy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2  # (N,)
    gcx, gcy = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2  # (M,)
    return ((acx[:, None] - gcx[None, :]) ** 2 + (acy[:, None] - gcy[None, :]) ** 2).sqrt()


@dataclass
class ATSSReference:
    """One image's ATSS assignment and everything the steps computed on the way."""

    gt_index: Tensor  # (N,) 0-based gt for positives, -1 negative, -2 outside `valid`
    overlaps: Tensor  # (N,) IoU with the matched gt for positives, 0 elsewhere
    labels: Tensor  # (N,) matched gt's class, num_classes elsewhere
    candidates: list[Tensor]  # per gt: candidate anchor indices, level by level, nearest first
    candidate_levels: list[Tensor]  # per gt: the level of each candidate
    candidate_ious: list[Tensor]  # per gt: IoU (float32) of each candidate
    mean: Tensor  # (M,) float64 mean of the candidates' IoUs
    std: Tensor  # (M,) float64 unbiased std (NaN with a single candidate)
    threshold: Tensor  # (M,) float64 mean + std
    positive: Tensor  # (N, M) bool: steps 4-5 passed (before step 6)
    ious: Tensor  # (N, M) every anchor with every gt (step 3 reads the candidates')
    target_scores: Tensor  # (N,) 1 for positives (IoU(pred_box, gt) with pred_boxes), 0 elsewhere

    def positives_per_gt(self) -> list[int]:
        m = self.positive.shape[1]
        return torch.bincount(self.gt_index[self.gt_index >= 0], minlength=m)[:m].tolist()


def atss_assign(
    anchors: Tensor, level_ids: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, topk: int = 9, num_classes: int = 80,
    variant: str = "mmdet", valid: Tensor | None = None, pred_boxes: Tensor | None = None,
) -> ATSSReference:
    """ATSS for ONE image (official code = mmdetection 3.3's ``ATSSAssigner.assign``), docs/algorithms.md §8.1.

    ``anchors (N, 4)`` as ``(x1, y1, x2, y2)``, ``level_ids (N,)``, ``gt_boxes (M, 4)``, ``gt_labels (M,)``;
    ``valid (N,)`` keeps only some anchors (the others take no part, -2); ``pred_boxes (N, 4)`` makes the
    positives' targets ``IoU(pred_box, gt)``. ``variant="paddle"``: ``IoU > t``, margin 1e-9, argmax over all gts.
    """
    strict, margin, conflict = _RULES[variant]
    n, m = anchors.shape[0], gt_boxes.shape[0]
    valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
    # the IoU table of every anchor box with every gt (read at the candidates in step 3); 1. centre distances
    ious = iou_table(anchors, gt_boxes)  # (N, M)
    dist = centre_distances(anchors, gt_boxes)  # (N, M)
    acx, acy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2  # (N,)
    positive = torch.zeros(n, m, dtype=torch.bool)  # steps 4-5 passed, per (anchor, gt)
    stats = _Statistics(m)  # what the notebook draws: candidates, mean, std, threshold per gt
    for g in range(m):
        # 2. per level, the min(k, n_l) valid anchors nearest the gt (a stable sort: equal distances, lower index)
        chosen = []
        for level in torch.unique(level_ids).tolist():
            idx = torch.nonzero((level_ids == level) & valid)[:, 0]  # this level's valid anchors
            chosen.append(idx[torch.sort(dist[idx, g], stable=True).indices[:topk]])  # nearest first
        c = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.int64)  # (K,) level by level
        x = ious[c, g].double()  # (K,) 3. the candidates' IoUs
        # 4. threshold = mean + UNBIASED std (divisor K - 1; NaN for a single candidate: no positive)
        mean = x.mean()
        std = x.std() if len(c) > 1 else torch.tensor(math.nan, dtype=torch.float64)
        threshold = mean + std
        # 5. positive: IoU >= threshold (paddle: >) and the anchor centre inside the gt by more than the margin
        passes = x > threshold if strict else x >= threshold
        x1, y1, x2, y2 = gt_boxes[g].tolist()
        inside = torch.stack([acx[c] - x1, acy[c] - y1, x2 - acx[c], y2 - acy[c]]).min(dim=0).values  # (K,)
        positive[c, g] = passes & (inside > margin)
        stats.record(g, c, level_ids[c], ious[c, g], mean, std, threshold)
    # 6. an anchor positive for several gts takes the highest IoU among THOSE gts (the lower gt index on ties)
    hits = positive.sum(dim=1)  # (N,)
    best, arg = torch.where(positive, ious, -math.inf).max(dim=1) if m else (torch.zeros(n), torch.zeros(n).long())
    if conflict == "all_gts" and m:  # PaddleDetection: several gts -> argmax IoU over ALL gts
        top, top_arg = ious.max(dim=1)
        best, arg = torch.where(hits > 1, top, best), torch.where(hits > 1, top_arg, arg)
    # 7. every other anchor is negative; anchors outside `valid` take no part (-2)
    gt_index = torch.where(hits > 0, arg, -1)
    gt_index[~valid] = -2
    pos = gt_index >= 0
    overlaps = torch.where(pos, best, torch.zeros(()))
    labels = torch.full((n,), num_classes, dtype=torch.int64)
    labels[pos] = gt_labels[gt_index[pos]]
    target_scores = pos.float()  # 1 for positives; with pred_boxes: how well the prediction fits its gt
    if pred_boxes is not None:
        target_scores[pos] = iou_table(pred_boxes[pos], gt_boxes[gt_index[pos]]).diagonal()
    return ATSSReference(gt_index, overlaps, labels, *stats.fields(), positive, ious, target_scores)


class _Statistics:
    """Per-gt bookkeeping of :func:`atss_assign` (candidates, their levels and IoUs, mean, std, threshold)."""

    def __init__(self, m: int) -> None:
        self.candidates: list[Tensor] = [torch.zeros(0, dtype=torch.int64)] * m
        self.levels: list[Tensor] = [torch.zeros(0, dtype=torch.int64)] * m
        self.ious: list[Tensor] = [torch.zeros(0)] * m
        self.mean = torch.full((m,), math.nan, dtype=torch.float64)
        self.std, self.threshold = self.mean.clone(), self.mean.clone()

    def record(self, g: int, c: Tensor, levels: Tensor, ious: Tensor, mean: Tensor, std: Tensor, thr: Tensor) -> None:
        self.candidates[g], self.levels[g], self.ious[g] = c, levels, ious
        if len(c):
            self.mean[g], self.std[g], self.threshold[g] = mean, std, thr

    def fields(self) -> tuple:
        return self.candidates, self.levels, self.ious, self.mean, self.std, self.threshold


def mmdet_atss_assign(anchors: Tensor, num_level_anchors: Sequence[int], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """mmdetection 3.3's ``ATSSAssigner.assign`` as it is written (no ignore boxes), for comparison and
    timing: returns mmdetection's 1-based ``gt_inds (N,)`` (0 negative). Its top-k tie order is torch's."""
    inf = 100000000
    overlaps = iou_table(anchors, gt_boxes)  # (N, M)
    n, m = anchors.shape[0], gt_boxes.shape[0]
    gt_inds = torch.zeros(n, dtype=torch.int64)
    if m == 0 or n == 0:
        return gt_inds
    distances = centre_distances(anchors, gt_boxes)  # (N, M)
    candidate_idxs, start = [], 0
    for count in num_level_anchors:
        _, idx = distances[start : start + count].topk(min(topk, count), dim=0, largest=False)  # (k, M)
        candidate_idxs.append(idx + start)
        start += count
    candidate_idxs = torch.cat(candidate_idxs)  # (K, M)
    cand_ious = overlaps[candidate_idxs, torch.arange(m)]  # (K, M)
    is_pos = cand_ious >= (cand_ious.mean(0) + cand_ious.std(0))[None, :]
    acx, acy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    cx, cy = acx[candidate_idxs], acy[candidate_idxs]  # (K, M)
    ltrb = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], 1)
    is_pos &= ltrb.min(dim=1).values > 0.01
    flat = (candidate_idxs + torch.arange(m) * n).t().reshape(-1)[is_pos.t().reshape(-1)]  # gt-major index
    overlaps_inf = torch.full((m * n,), -inf, dtype=overlaps.dtype)
    overlaps_inf[flat] = overlaps.t().reshape(-1)[flat]
    max_overlaps, argmax = overlaps_inf.view(m, n).t().max(dim=1)
    gt_inds[max_overlaps != -inf] = argmax[max_overlaps != -inf] + 1
    return gt_inds


# --------------------------------------------------------------------------------------------
# Anchors, photo inputs, benchmark cases
# --------------------------------------------------------------------------------------------


def atss_anchors(image_hw: tuple[int, int], strides: Sequence[int] = (8, 16, 32, 64, 128)) -> tuple[Tensor, Tensor]:
    """ATSS's anchors for an ``(H, W)`` input: one square of side ``8 * stride`` per cell, all levels.

    Returns ``anchors (N, 4)`` and ``level_ids (N,)``.
    """
    from exportable.anchors import AnchorGenerator, featmap_sizes_for

    gen = AnchorGenerator.atss(strides)
    sizes = featmap_sizes_for(image_hw, gen.strides)
    return torch.cat(gen.grid_anchors(sizes)), gen.level_ids(sizes)


def _photo_inputs(ctx: Any) -> tuple[Tensor, ...]:
    """The photo's ATSS anchors (padded to (608, 512): 6,484), its gts, and the padding as anchor_mask."""
    from exportable.anchors import AnchorGenerator, featmap_sizes_for

    gen = AnchorGenerator.atss()
    sizes = featmap_sizes_for(ctx.padded_hw, gen.strides)
    anchors, level_ids = torch.cat(gen.grid_anchors(sizes)), gen.level_ids(sizes)
    valid = gen.valid_flags(sizes, ctx.image_sizes)  # (1, N)
    return anchors, level_ids, ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask, valid


def _photo_inputs_paddle(ctx: Any) -> tuple[Tensor, ...]:
    """As :func:`_photo_inputs`, plus predicted boxes: each anchor shrunk to half its side, jittered (seeded)."""
    args = _photo_inputs(ctx)
    anchors = args[0]
    g = torch.Generator().manual_seed(0)
    centre, side = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]  # (N, 2) each
    half = side / 4 * (1 + 0.2 * torch.rand(anchors.shape[0], 2, generator=g))  # (N, 2)
    pred = torch.cat([centre - half, centre + half], dim=1)[None]  # (1, N, 4)
    return (*args, pred)


def demo_scene_inputs() -> dict[str, Callable[[Any], tuple[Tensor, ...]]]:
    """Photo inputs of the ATSS catalog entries, for ``python -m lessons demo``."""
    return {"atss_assigner": _photo_inputs, "atss_assigner_paddle": _photo_inputs_paddle}


def _workload_inputs(workload: str, seed: int) -> tuple[Tensor, ...]:
    from lessons.scenes import WORKLOADS, make_workload_batch

    name, _, batch = workload.partition("@")
    if name not in ("atss-m20", "atss-m100"):
        raise ValueError(f"workload: ATSS runs on atss-m20 / atss-m100 (optionally name@B), got {workload!r}")
    wl = WORKLOADS[name]
    anchors, level_ids = atss_anchors(wl.hw, wl.priors["strides"])
    gts = make_workload_batch(name, seed=seed, batch=int(batch) if batch else None)
    return anchors, level_ids, gts.gt_boxes, gts.gt_labels, gts.gt_mask


def benchmark_case(workload: str, seed: int = 0, **params: Any) -> tuple[torch.nn.Module, tuple[Tensor, ...]]:
    """``(ATSSAssigner(**params), inputs)`` for ``atss-m20`` / ``atss-m100`` (or ``name@B``): B = 8 images of
    800 x 1216, 20,267 anchors (one square of side 8 * stride per cell, strides 8-128), M = 20 / 100 seeded
    COCO-like gts. Inputs in ``forward`` order: anchors, level_ids, gt_boxes, gt_labels, gt_mask."""
    from exportable.assigners.atss import ATSSAssigner

    return ATSSAssigner(**params).eval(), _workload_inputs(workload, seed)


def benchmark_reference(workload: str, seed: int = 0, topk: int = 9) -> Callable[[], list[Tensor]]:
    """A zero-argument callable running mmdetection's per-image ATSS logic (:func:`mmdet_atss_assign`) on
    every image of the workload, for side-by-side timings."""
    anchors, level_ids, gt_boxes, _, gt_mask = _workload_inputs(workload, seed)
    counts = torch.bincount(level_ids).tolist()
    images = [gt_boxes[i][gt_mask[i]] for i in range(gt_boxes.shape[0])]
    return lambda: [mmdet_atss_assign(anchors, counts, g, topk) for g in images]


# --------------------------------------------------------------------------------------------
# Figures for notebook 06
# --------------------------------------------------------------------------------------------


def draw_candidates(
    image: Any,
    anchors: Tensor,
    gt_box: Tensor,
    candidates: Tensor,
    candidate_levels: Tensor,
    positive: Tensor | None = None,
    *,
    ax: Any = None,
    title: str | None = None,
    zoom: float | None = 1.6,
) -> Any:
    """One gt and its candidates on the image: each candidate's centre in its level's colour, its anchor box
    drawn for the positives (``positive (K,)`` bool per candidate), the gt in black.

    ``zoom``: show a window ``zoom`` times the largest positive (or candidate) anchor around the gt; None
    shows the whole image. Returns the Figure.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from lessons.draw import color_for, show_boxes

    fig = show_boxes(image, gt_box[None], color="black", ax=ax, show_text=False, linewidth=2.5)
    ax = fig.axes[0] if ax is None else ax
    a = anchors[candidates].numpy()  # (K, 4)
    centres = (a[:, :2] + a[:, 2:]) / 2
    pos = np.zeros(len(a), dtype=bool) if positive is None else positive.numpy().astype(bool)
    levels = candidate_levels.numpy()
    handles = []
    for level in np.unique(levels):
        sel = levels == level
        c = color_for(int(level))
        ax.scatter(centres[sel & ~pos, 0], centres[sel & ~pos, 1], s=22, color=c, edgecolors="white",
                   linewidths=0.5, zorder=5)
        ax.scatter(centres[sel & pos, 0], centres[sel & pos, 1], s=120, marker="*", color=c, edgecolors="black",
                   linewidths=0.6, zorder=6)
        for box in a[sel & pos]:
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=c,
                                   linewidth=0.8, alpha=0.5, zorder=3))
        label = f"level {int(level)}: {int(sel.sum())} candidates"
        if positive is not None:
            label += f", {int((sel & pos).sum())} positive"
        handles.append(Line2D([], [], color=c, marker="o", linestyle="", label=label))
    if zoom is not None and len(a):
        g = gt_box.numpy()
        cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
        ref = a[pos] if pos.any() else a
        half = zoom * max(float((ref[:, 2:] - ref[:, :2]).max()), float(g[2] - g[0]), float(g[3] - g[1])) / 2
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy + half, cy - half)
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.85)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


def draw_thresholds(ref: ATSSReference, gts: Sequence[int], names: Sequence[str] | None = None) -> Any:
    """The paper's figure: for each gt, its candidates' IoUs as bars grouped by level (in the level's colour),
    with the mean and the threshold mean + std as lines; positives are the hatched bars. Returns the Figure."""
    from matplotlib.patches import Patch

    from lessons.draw import LessonFigure, color_for

    fig = LessonFigure(figsize=(5.2 * len(gts), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(gts), sharey=True))
    for ax, g, name in zip(axes, gts, names or [f"gt {g}" for g in gts]):
        ious = ref.candidate_ious[g].numpy()
        levels = ref.candidate_levels[g].numpy()
        pos = ref.positive[ref.candidates[g], g].numpy()
        for i, (v, level, p) in enumerate(zip(ious, levels, pos)):
            ax.bar(i, v, color=color_for(int(level)), hatch="///" if p else None, edgecolor="black" if p else "none",
                   linewidth=0.5)
        mean, std = float(ref.mean[g]), float(ref.std[g])
        ax.axhline(mean, color="0.3", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.axhline(mean + std, color="crimson", linewidth=1.5, label=f"mean + std {mean + std:.3f} (std {std:.3f})")
        ticks = [i for i in range(len(levels)) if i == 0 or levels[i] != levels[i - 1]]
        ax.set_xticks(ticks, [f"L{int(levels[i])}" for i in ticks])
        ax.set_title(f"{name}: {int(pos.sum())} positive of {len(ious)}", fontsize=10)
        ax.set_xlabel("candidates, level by level (nearest first)")
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="positive"))
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    axes[0].set_ylabel("IoU(anchor, gt)")
    axes[0].set_ylim(0, 1)
    return fig


# --------------------------------------------------------------------------------------------
# Exercise checkers (notebook 06): each case sits on a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _photo_case():  # the same scene for every checker (run_cases passes copies)
    from lessons.scenes import default_scene

    scene = default_scene()
    anchors, level_ids = atss_anchors((608, 512))
    return scene, anchors, level_ids


def check_candidates(fn) -> None:
    """Exercise 1: ``fn(dist (N,), level_ids (N,), k) -> (K,)`` candidate indices, level by level, nearest first,
    equal distances in index order. Cases: a gt centred on a cell corner (a tied ring), a level of equal distances,
    a level with fewer than k anchors, another k, and two gts of the photo."""
    from lessons.cases import Case, run_cases

    def expected(dist, level_ids, k):
        chosen = []
        for level in torch.unique(level_ids).tolist():
            idx = torch.nonzero(level_ids == level)[:, 0]
            chosen.append(idx[torch.sort(dist[idx], stable=True).indices[:k]])
        return torch.cat(chosen)

    grid = atss_anchors((40, 40))[0][:25]  # level 0 of a 40 x 40 image: 5 x 5 centres, stride 8
    ring = centre_distances(grid, torch.tensor([[12.0, 12.0, 28.0, 28.0]]))[:, 0]  # centre on a cell corner
    one_level = torch.zeros(25, dtype=torch.int64)
    flat = torch.cat([torch.ones(20), torch.arange(6, dtype=torch.float32)])  # (26,) level 0 all equal, then level 1
    flat_levels = torch.tensor([0] * 20 + [1] * 6)
    small = torch.cat([torch.linspace(9, 1, 12), torch.tensor([3.0, 1.0, 2.0])])  # level 1 has 3 anchors
    small_levels = torch.tensor([0] * 12 + [1] * 3)
    scene, anchors, level_ids = _photo_case()
    dist = centre_distances(anchors, scene.boxes)  # (N, M)
    cases = [
        Case("a gt centred on a cell corner: 4 at one distance, then a ring of 8 ties; k = 9 takes the lower "
             "indices of the ring", (ring, one_level, 9), expected(ring, one_level, 9)),
        Case("every distance on a level equal: the first k indices, in order", (flat, flat_levels, 9),
             expected(flat, flat_levels, 9)),
        Case("a level with fewer than k anchors gives all of them (9 + 3)", (small, small_levels, 9),
             expected(small, small_levels, 9)),
        Case("k = 4 passed in", (ring, one_level, 4), expected(ring, one_level, 4)),
    ]
    for g in (2, 4):
        cases.append(Case(f"the photo, gt {g} ({scene.names()[g]}): 5 levels x 9", (dist[:, g], level_ids, 9),
                          expected(dist[:, g], level_ids, 9)))
    run_cases("candidates", fn, cases)


def check_threshold(fn) -> None:
    """Exercise 2: ``fn(ious (K,) float64) -> ()`` mean + UNBIASED std. Cases: the 4-candidate example of the
    notebook, two candidates, equal IoUs (std 0), a single candidate (NaN: no positive), the photo's gts."""
    from lessons.cases import Case, run_cases

    def expected(x):
        return x.mean() + (x.std() if len(x) > 1 else torch.tensor(math.nan, dtype=torch.float64))

    scene, anchors, level_ids = _photo_case()
    ref = atss_assign(anchors, level_ids, scene.boxes, scene.labels)
    raw = [
        ("four candidates with IoUs 9/11, 8/12, 6/14, 0: the unbiased threshold 0.835 is above the best IoU",
         [9 / 11, 8 / 12, 6 / 14, 0.0]),
        ("two candidates: the threshold m + |x1 - x2| / sqrt(2) lies above both", [0.5, 0.3]),
        ("nine equal IoUs: std 0, the threshold equals the IoU", [0.3] * 9),
        ("a single candidate: the unbiased std is 0 / 0 = NaN (so no positive)", [0.7]),
    ]
    cases = [Case(rule, (torch.tensor(v, dtype=torch.float64),), expected(torch.tensor(v, dtype=torch.float64)),
                  atol=1e-12, rtol=0.0) for rule, v in raw]
    for g in (0, 1, 4):
        x = ref.candidate_ious[g].double()
        cases.append(Case(f"the photo, gt {g} ({scene.names()[g]}): 45 candidates", (x,), expected(x), atol=1e-12,
                          rtol=0.0))
    run_cases("threshold", fn, cases)


def check_resolve(fn) -> None:
    """Exercise 3: ``fn(positive (N, M) bool, ious (N, M)) -> gt_index (N,)``: the highest IoU among the gts an
    anchor is positive for (lower gt index on ties), -1 if none. Cases: a higher IoU with a gt the anchor is NOT
    positive for, two positive gts tied, no positive gt, and the crowded scene (27 anchors positive twice)."""
    from lessons.cases import Case, run_cases
    from lessons.scenes import random_scene

    def expected(positive, ious):
        best, arg = torch.where(positive, ious, -1.0).max(dim=1)
        return torch.where(positive.any(dim=1), arg, -1)

    crowd = random_scene(320, 480, 40, seed=2)
    anchors, levels = atss_anchors(crowd.hw)
    r = atss_assign(anchors, levels, crowd.boxes, crowd.labels)
    hand = [  # (rule, positive (2, 3), ious (2, 3))
        ("gt 1 has the highest IoU, but the anchor is not positive for it: gt 2, the best of ITS gts",
         [[True, False, True], [False, True, False]], [[0.4, 0.9, 0.5], [0.7, 0.3, 0.0]]),
        ("positive for gts 0 and 1 at the same IoU: the lower index, gt 0",
         [[True, True, False], [False, True, True]], [[0.6, 0.6, 0.1], [0.1, 0.5, 0.5]]),
        ("positive for no gt: -1, whatever the IoUs", [[False, False, False], [False, False, True]],
         [[0.8, 0.2, 0.1], [0.0, 0.0, 0.3]]),
    ]
    cases = [Case(rule, (torch.tensor(p), torch.tensor(i)), expected(torch.tensor(p), torch.tensor(i)))
             for rule, p, i in hand]
    cases.append(Case(f"the crowded scene: 40 gts, {int((r.positive.sum(1) > 1).sum())} anchors positive for several",
                      (r.positive, r.ious), r.gt_index))
    run_cases("resolve", fn, cases)
