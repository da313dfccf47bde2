"""SimOTA, the readable way: one image at a time, mmdetection 3.3's steps in order.

The reference (test oracle) for :class:`exportable.assigners.simota.SimOTAAssigner` and the code of
``notebooks/07_simota``. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; ``points (N, 2)`` are cell
centres with ``strides (N,)``; ``pred_scores (N, C)`` are probabilities ``sqrt(sigmoid(cls) *
sigmoid(obj))``; ``pred_boxes (N, 4)`` the decoded predictions; ``gt_boxes (M, 4)``, ``gt_labels (M,)`` for
ONE image. Matrices are ``(N, M)`` (priors x gts), the orientation mmdetection keeps.

Step numbers match ``docs/algorithms.md`` §9.1, the notebook and the exportable module:

1. no gts or no priors: every prior negative.
2. geometric prior: ``in_box`` / ``in_ctr``; candidates (mmdetection's ``valid_mask``) and the pair prior.
3. the cost over the candidates: ``cls_weight * BCE summed over ALL classes + iou_weight * -log(IoU + eps)
   + penalty * not(pair prior)``.
4. dynamic k per gt: ``max(1, int(sum of its top-q IoUs))``, ``q = min(candidate_topk, candidates)``.
5. each gt marks its k cheapest candidates (here: ties to the lower index, the package's rule;
   mmdetection's ``torch.topk`` leaves the order of tied costs unspecified).
6. a prior marked by several gts goes to the cheapest gt over ALL gt rows; no re-assignment.
7. the result: matched gt, its class, the IoU with it.

The result uses the package's encoding (``gt_index`` 0-based, -1 negative); :func:`to_mmdet` gives
mmdetection's ``gt_inds`` (1-based, 0 negative) and ``max_overlaps`` (IoU for positives, -1e5 elsewhere).
Also here: the notebook's scenes and figures, its exercise checkers (``check_*``) and the benchmark cases.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MMDET_INF",
    "SimOTAReference",
    "benchmark_case",
    "benchmark_reference",
    "check_cls_cost",
    "check_dynamic_k",
    "check_resolve",
    "cls_cost_decomposed",
    "cls_cost_naive",
    "demo_scene_inputs",
    "dynamic_k",
    "geometric_prior",
    "iou_matrix",
    "photo_points",
    "prior_map",
    "simota_assign",
    "synthetic_predictions",
    "to_mmdet",
    "variant_kwargs",
    "yolox_targets",
]

MMDET_INF = 100000.0  # mmdetection's INF: the penalty and the max_overlaps fill value


def variant_kwargs(variant: str = "mmdet") -> dict[str, Any]:
    """The keyword arguments of :func:`simota_assign` for a peer: ``"mmdet"`` (mmdetection 3.3, = old
    YOLOX) or ``"yolox"`` (YOLOX since Jan 2023: 1.5-stride square only, penalty 1e6, eps 1e-8)."""
    if variant == "mmdet":
        return {"center_radius": 2.5, "penalty": 1e5, "iou_eps": 1e-7, "in_box_prior": True}
    if variant == "yolox":
        return {"center_radius": 1.5, "penalty": 1e6, "iou_eps": 1e-8, "in_box_prior": False}
    raise ValueError(f"variant: expected 'mmdet' or 'yolox', got {variant!r}")


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def iou_matrix(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """``(n, m)`` IoU as mmdetection's ``bbox_overlaps``: ``inter / max(area1 + area2 - inter, eps)``, float32."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (n, m, 2)
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (n, m, 2)
    wh = (rb - lt).clamp(min=0)  # (n, m, 2)
    inter = wh[..., 0] * wh[..., 1]  # (n, m)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # (n,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # (m,)
    union = torch.clamp(area1[:, None] + area2[None, :] - inter, min=eps)  # (n, m)
    return inter / union


def geometric_prior(
    points: Tensor, strides: Tensor, gt_boxes: Tensor, center_radius: float = 2.5
) -> tuple[Tensor, Tensor]:
    """Step 2: ``in_box (N, M)`` and ``in_ctr (N, M)``, written as mmdetection's
    ``get_in_gt_and_in_center_info``.

    ``in_box``: ``min(x - x1, y - y1, x2 - x, y2 - y) > 0``, the point strictly inside the gt.
    ``in_ctr``: the same test against the square ``gt centre +- center_radius * stride`` (NOT clipped
    to the gt box: a thin gt's square sticks out of it).
    """
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    deltas = torch.stack([x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=1)
    in_box = deltas.min(dim=1).values > 0  # (N, M)
    cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2.0  # (M,)
    cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2.0  # (M,)
    r = center_radius * strides[:, None]  # (N, 1)
    ct = torch.stack([x - (cx - r), y - (cy - r), (cx + r) - x, (cy + r) - y], dim=1)  # (N, 4, M)
    in_ctr = ct.min(dim=1).values > 0  # (N, M)
    return in_box, in_ctr


def cls_cost_naive(scores: Tensor, gt_labels: Tensor) -> Tensor:
    """``(n, M)``: torch's BCE of every prior's C scores against each gt's one-hot label, summed over
    ALL C classes, as mmdetection writes it: an ``(n, M, C)`` tensor, in float32."""
    n, c = scores.shape
    m = gt_labels.shape[0]
    onehot = F.one_hot(gt_labels.to(torch.int64), c).float().unsqueeze(0).repeat(n, 1, 1)  # (n, M, C)
    repeated = scores.float().unsqueeze(1).repeat(1, m, 1)  # (n, M, C)
    return F.binary_cross_entropy(repeated, onehot, reduction="none").sum(-1)  # (n, M)


def cls_cost_decomposed(scores: Tensor, gt_labels: Tensor) -> Tensor:
    """``(n, M)``: the same sum without the ``(n, M, C)`` tensor.

    BCE(p, 0) = -log(1 - p) and BCE(p, 1) = -log(p), each log clamped at -100 (torch's rule). For a gt of
    class y, every class but y has target 0 and class y has target 1, so
    ``sum_c BCE = sum_c -log(1 - p_c)  -  (-log(1 - p_y))  +  (-log(p_y))``: a sum per prior plus two
    values at the gt's class.
    """
    p = scores.float()  # (n, C)
    bce0 = -torch.log(1 - p).clamp(min=-100)  # (n, C) target 0
    bce1 = -torch.log(p).clamp(min=-100)  # (n, C) target 1
    per_prior = bce0.sum(dim=1, keepdim=True)  # (n, 1)
    y = gt_labels.to(torch.int64)
    return per_prior - bce0[:, y] + bce1[:, y]  # (n, M)


def dynamic_k(ious: Tensor, candidate_topk: int = 10) -> Tensor:
    """Step 4: ``(M,)`` int64 ``max(1, int(sum of the q largest IoUs in each column))``, ``ious (n, M)``,
    ``q = min(candidate_topk, n)``. mmdetection's column sum; ``int()`` truncates."""
    q = min(candidate_topk, ious.shape[0])
    top = torch.topk(ious, q, dim=0).values  # (q, M) largest first
    return torch.clamp(top.sum(0).int(), min=1).to(torch.int64)


# --------------------------------------------------------------------------------------------
# The assignment, one image
# --------------------------------------------------------------------------------------------


@dataclass
class SimOTAReference:
    """One image's SimOTA result, with every intermediate the notebook shows.

    ``gt_index (N,)`` 0-based, -1 negative; ``labels (N,)`` the gt's class, ``num_classes`` elsewhere;
    ``overlaps (N,)`` IoU with the matched gt, 0 elsewhere. Over the ``n`` candidates (``candidates (N,)``
    True): ``ious (n, M)``, ``cost (n, M)``, ``pair (n, M)`` (the pair prior), ``marked (n, M)`` (step 5,
    before conflicts). ``in_box``, ``in_ctr`` are ``(N, M)``; ``dynamic_ks (M,)``.
    """

    gt_index: Tensor
    labels: Tensor
    overlaps: Tensor
    candidates: Tensor
    in_box: Tensor
    in_ctr: Tensor
    pair: Tensor
    ious: Tensor
    cost: Tensor
    dynamic_ks: Tensor
    marked: Tensor

    @property
    def positives_per_gt(self) -> Tensor:
        """``(M,)`` how many priors each gt ended with (after conflicts; can be 0)."""
        m = self.in_box.shape[1]
        pos = self.gt_index[self.gt_index >= 0]
        return torch.bincount(pos, minlength=m)[:m]

    @property
    def conflicts(self) -> int:
        """How many priors step 5 marked for more than one gt."""
        return int((self.marked.sum(1) > 1).sum())


def simota_assign(
    points: Tensor, strides: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
    center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0, cls_weight: float = 1.0,
    penalty: float = MMDET_INF, iou_eps: float = 1e-7, in_box_prior: bool = True,
    cls_cost: Callable[[Tensor, Tensor], Tensor] = cls_cost_naive, num_classes: int | None = None,
) -> SimOTAReference:
    """mmdetection 3.3's ``SimOTAAssigner.assign`` for ONE image, docs/algorithms.md §9.1 (defaults: mmdetection).

    ``points (N, 2)``, ``strides (N,)``, ``pred_scores (N, C)`` probabilities, ``pred_boxes (N, 4)`` and
    ``gt_boxes (M, 4)`` as ``(x1, y1, x2, y2)``. ``in_box_prior=False`` with ``center_radius=1.5, penalty=1e6,
    iou_eps=1e-8`` is today's YOLOX (:func:`variant_kwargs`); ``cls_cost`` sums step 3's BCE naively or decomposed.
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    c = pred_scores.shape[1] if num_classes is None else num_classes
    # 1. no gts or no priors: every prior negative
    if n == 0 or m == 0:
        none = torch.zeros(n, m, dtype=torch.bool)
        return _no_candidates(n, m, c, none.any(dim=1), none, none)
    # 2. geometric prior: candidates (near ANY gt) and the pair prior (near THIS gt); the rest stays negative
    in_box, in_ctr = geometric_prior(points, strides, gt_boxes, center_radius)  # (N, M) each
    if in_box_prior:  # mmdetection / old YOLOX: in a box or in a square; pair prior: box AND square
        candidates = in_box.any(dim=1) | in_ctr.any(dim=1)  # (N,)
        pair = in_box[candidates] & in_ctr[candidates]  # (n, M)
    else:  # YOLOX today: the 1.5-stride square only
        candidates = in_ctr.any(dim=1)  # (N,)
        pair = in_ctr[candidates]  # (n, M)
    if not candidates.any():
        return _no_candidates(n, m, c, candidates, in_box, in_ctr)
    # 3. the cost of every (candidate, gt) pair: classification + IoU + a finite penalty outside the pair prior
    ious = iou_matrix(pred_boxes[candidates].float(), gt_boxes.float())  # (n, M)
    cls = cls_cost(pred_scores[candidates].float(), gt_labels)  # (n, M) BCE summed over ALL classes
    cost = cls * cls_weight - torch.log(ious + iou_eps) * iou_weight + (~pair) * penalty  # (n, M)
    # 4. dynamic k per gt: max(1, int(sum of its q largest IoUs)), q = min(candidate_topk, n)
    ks = dynamic_k(ious, candidate_topk)  # (M,)
    # 5. each gt marks its k cheapest candidates (equal costs: the lower index first)
    marked = torch.zeros_like(cost, dtype=torch.bool)  # (n, M)
    for g in range(m):
        marked[torch.sort(cost[:, g], stable=True).indices[: int(ks[g])], g] = True
    # 6. a candidate marked by several gts goes to the cheapest gt over ALL M rows (the first on ties); no 2nd round
    count = marked.sum(dim=1)  # (n,)
    winner = torch.where(count > 1, cost.argmin(dim=1), marked.int().argmax(dim=1))  # (n,)
    # 7. write back to all N priors: matched gt, its class, the IoU with it
    rows = (count > 0).nonzero()[:, 0]  # candidate rows that are positive
    where = candidates.nonzero()[:, 0][rows]  # their prior indices
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    labels = torch.full((n,), c, dtype=torch.int64)
    overlaps = torch.zeros(n)
    gt_index[where], labels[where] = winner[rows], gt_labels[winner[rows]].long()
    overlaps[where] = ious[rows, winner[rows]]
    return SimOTAReference(gt_index, labels, overlaps, candidates, in_box, in_ctr, pair, ious, cost, ks, marked)


def _no_candidates(n: int, m: int, c: int, candidates: Tensor, in_box: Tensor, in_ctr: Tensor) -> SimOTAReference:
    """The result of an image where nothing can be positive (no gt, no prior, or no candidate)."""
    empty = torch.zeros(0, m)
    return SimOTAReference(torch.full((n,), -1, dtype=torch.int64), torch.full((n,), c, dtype=torch.int64),
                           torch.zeros(n), candidates, in_box, in_ctr, empty.bool(), empty,
                           empty, torch.zeros(m, dtype=torch.int64), empty.bool())


def to_mmdet(gt_index: Tensor, overlaps: Tensor) -> tuple[Tensor, Tensor]:
    """mmdetection's ``(gt_inds, max_overlaps)``: 1-based gt (0 negative); IoU for positives, ``-INF``
    (-1e5) for every other prior (zeros when the image has no gt or no candidate: its early exits)."""
    positive = gt_index >= 0
    gt_inds = torch.where(positive, gt_index + 1, 0)
    fill = -MMDET_INF if positive.any() else 0.0
    return gt_inds, torch.where(positive, overlaps, torch.full_like(overlaps, fill))


def yolox_targets(gt_index: Tensor, labels: Tensor, overlaps: Tensor, gt_boxes: Tensor, num_classes: int):
    """YOLOX's targets for one image: ``cls (N, C)`` = one-hot x IoU on positives, ``obj (N,)`` = 1 on
    positives and 0 elsewhere (objectness is trained on every prior), ``reg (N, 4)`` = the matched gt box."""
    positive = gt_index >= 0
    cls = F.one_hot(labels.clamp(max=num_classes - 1), num_classes).float() * overlaps[:, None]  # (N, C)
    cls[~positive] = 0.0
    obj = positive.float()  # (N,)
    reg = torch.zeros(len(gt_index), 4)
    reg[positive] = gt_boxes[gt_index[positive]].float()
    return cls, obj, reg


# --------------------------------------------------------------------------------------------
# Scenes: points and predictions for the photo and the notebook
# --------------------------------------------------------------------------------------------


def photo_points(hw: tuple[int, int], strides=(8, 16, 32)) -> tuple[Tensor, Tensor, Tensor]:
    """YOLOX's points for an image padded to a multiple of 32: ``points (N, 2)``, ``strides (N,)``,
    ``level_ids (N,)``; cell centres ``(i + 0.5) * stride``, level by level, row-major."""
    from lessons.scenes import grid_points

    h, w = (math.ceil(v / 32) * 32 for v in hw)
    return grid_points(h, w, strides)


def synthetic_predictions(
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    quality: str = "weak",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Seeded predictions ``(scores (N, C), boxes (N, 4))`` for one image, of two kinds:

    - ``"weak"``: a network at the start of training. YOLOX's box branch starts near 0, which decodes to
      a square of side ``exp(0) * stride`` at the point: boxes are those squares, each coordinate jittered
      by up to a quarter stride; scores ``sqrt(sigmoid(cls) * sigmoid(obj))`` with both logits near
      YOLOX's prior bias ``log(0.01 / 0.99)``.
    - ``"strong"``: a trained one. A point inside a gt (the smallest one containing it) predicts that
      gt's box with a small error that grows with the distance from the gt's centre, and its class with
      a high score; other points keep weak boxes and low scores.
    """
    g = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    s = strides[:, None]  # (N, 1)
    jitter = (torch.rand(n, 4, generator=g) * 2 - 1) * s / 4  # (N, 4)
    boxes = torch.cat([points - s / 2, points + s / 2], dim=1) + jitter  # (N, 4)
    prior = math.log(0.01 / 0.99)
    cls = prior + 0.5 * torch.randn(n, num_classes, generator=g)  # (N, C) logits
    obj = prior + 0.5 * torch.randn(n, generator=g)  # (N,)
    if quality == "strong" and len(gt_boxes):
        in_box, _ = geometric_prior(points, strides, gt_boxes, 0.0)  # (N, M)
        area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # (M,)
        owner = torch.where(in_box, area[None, :], float("inf")).argmin(1)  # (N,) smallest containing gt
        inside = in_box.any(1)  # (N,)
        gt = gt_boxes[owner]  # (N, 4)
        wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)  # (N, 4)
        centre = (gt[:, :2] + gt[:, 2:]) / 2  # (N, 2)
        off = ((points - centre).abs() / (gt[:, 2:] - gt[:, :2]).clamp(min=1)).sum(1, keepdim=True)  # (N, 1)
        noise = torch.randn(n, 4, generator=g) * wh * (0.03 + 0.15 * off)  # (N, 4)
        good = gt + noise  # (N, 4)
        good = torch.cat([torch.minimum(good[:, :2], good[:, 2:]), torch.maximum(good[:, :2], good[:, 2:])], 1)
        boxes = torch.where(inside[:, None], good, boxes)  # (N, 4)
        hit = inside.nonzero()[:, 0]  # (P,)
        cls[hit, gt_labels[owner[hit]]] = 2.5 - 3.0 * off[hit, 0] + 0.5 * torch.randn(len(hit), generator=g)
        obj[hit] = 2.0 - 2.0 * off[hit, 0] + 0.5 * torch.randn(len(hit), generator=g)
    elif quality != "weak":
        raise ValueError(f"quality: expected 'weak' or 'strong', got {quality!r}")
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    scores = (torch.sigmoid(cls) * torch.sigmoid(obj)[:, None]).sqrt()  # (N, C) what mmdetection 3.x passes
    return scores, boxes


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def prior_map(
    values: Tensor,
    points: Tensor,
    strides: Tensor,
    stride: int,
    image: Any = None,
    *,
    gt_box: Tensor | None = None,
    ax: Any = None,
    title: str | None = None,
    cmap: str = "magma_r",
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "",
):
    """Per-prior values ``(N,)`` of ONE level (``stride``) drawn as a map of cells over the image.

    NaN cells (e.g. non-candidates) are left transparent. Points are cell centres, so each value covers
    its ``stride x stride`` cell. Returns the Figure.
    """
    from matplotlib.colors import to_rgba

    from lessons.draw import _setup

    sel = strides == stride
    p = points[sel]  # (n_l, 2)
    v = values[sel].double().numpy()  # (n_l,)
    cols = int(round(float(p[:, 0].max()) / stride + 0.5))
    rows = int(round(float(p[:, 1].max()) / stride + 0.5))
    grid = np.full((rows, cols), np.nan)
    ix = (p[:, 0] / stride - 0.5).round().long().numpy()
    iy = (p[:, 1] / stride - 0.5).round().long().numpy()
    grid[iy, ix] = v
    fig, ax, _ = _setup(image, ax)
    im = ax.imshow(np.ma.masked_invalid(grid), extent=(0, cols * stride, rows * stride, 0), cmap=cmap, alpha=0.75,
                   vmin=vmin, vmax=vmax, interpolation="nearest", zorder=1)
    if gt_box is not None:
        x1, y1, x2, y2 = (float(t) for t in gt_box)
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=to_rgba("cyan"), linewidth=2,
                               zorder=4))
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Benchmarks and the demo
# --------------------------------------------------------------------------------------------


def _workload_inputs(workload: str, seed: int) -> tuple[Tensor, ...]:
    from lessons.scenes import make_point_workload_inputs

    return make_point_workload_inputs(workload, seed)


def benchmark_case(workload: str, seed: int = 0, **params: Any):
    """``(SimOTAAssigner(**params), inputs)`` for ``yolox-m20`` / ``yolox-m100`` (or ``name@B``): B = 16
    images of 640 x 640, 8,400 points (strides 8/16/32), C = 80, docs/workloads.md's seeded predictions
    (scores uniform in (0, 1), boxes = 4-stride squares jittered). Inputs in ``forward`` order."""
    from exportable.assigners.simota import SimOTAAssigner

    return SimOTAAssigner(**params).eval(), _workload_inputs(workload, seed)


def benchmark_reference(workload: str, seed: int = 0, **params: Any) -> Callable[[], list[SimOTAReference]]:
    """A zero-argument callable running :func:`simota_assign` (mmdetection's per-image logic, the naive
    ``(n, M, C)`` BCE) on every image of the workload, for side-by-side timings."""
    points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask = _workload_inputs(workload, seed)
    images = [(scores[i], boxes[i], gt_boxes[i][gt_mask[i]], gt_labels[i][gt_mask[i]]) for i in range(len(scores))]
    return lambda: [simota_assign(points, strides, s, b, g, lab, **params) for s, b, g, lab in images]


def _photo_inputs(ctx: Any, quality: str = "strong") -> tuple[Tensor, ...]:
    """The photo's points (padded to (608, 512): 6,384) with seeded predictions over its 6 classes."""
    points, strides, _ = photo_points(ctx.scene.hw)
    scores, boxes = synthetic_predictions(points, strides, ctx.gt_boxes[0], ctx.gt_labels[0], ctx.scene.num_classes,
                                          quality, seed=0)
    return points, strides, scores[None], boxes[None], ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask


def demo_scene_inputs() -> dict[str, Callable[[Any], tuple[Tensor, ...]]]:
    """Photo inputs of this module's catalog entries, for ``python -m lessons demo``."""
    return {"simota_assigner": _photo_inputs, "simota_assigner_yolox": _photo_inputs}


# --------------------------------------------------------------------------------------------
# Exercise checkers (notebook 07): each case sits on a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _photo_results():  # the same scene for every checker (run_cases passes copies)
    from lessons.scenes import default_scene

    scene = default_scene()
    points, strides, _ = photo_points(scene.hw)
    out = {}
    for quality in ("weak", "strong"):
        scores, boxes = synthetic_predictions(points, strides, scene.boxes, scene.labels, scene.num_classes, quality)
        out[quality] = (scores, simota_assign(points, strides, scores, boxes, scene.boxes, scene.labels))
    return scene, out


def check_cls_cost(fn) -> None:
    """Exercise 1: ``fn(scores (n, C), labels (M,)) -> (n, M)`` the BCE against each gt's one-hot label, summed over
    ALL classes, without an ``(n, M, C)`` tensor. Cases: scores exactly 0 and 1 (the logs clamp at -100), two gts of
    one class, the photo's candidates, 80 classes."""
    from lessons.cases import Case, run_cases

    edge = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25], [0.5, 0.5, 0.5]])  # (3, 3) probabilities
    edge_labels = torch.tensor([0, 2, 1])
    same = torch.tensor([[0.9, 0.05, 0.05, 0.0], [0.1, 0.7, 0.1, 0.1]])  # (2, 4)
    same_labels = torch.tensor([1, 1, 3])
    scene, res = _photo_results()
    scores, r = res["strong"]
    cand = scores[r.candidates]  # (n, C)
    g = torch.Generator().manual_seed(0)
    wide = torch.rand(500, 80, generator=g)  # (500, 80)
    wide_labels = torch.randint(0, 80, (20,), generator=g)  # (20,)
    cases = [
        Case("scores exactly 0 and 1: torch clamps each log at -100, so the term costs 100, not inf",
             (edge, edge_labels), cls_cost_naive(edge, edge_labels), atol=1e-4),
        Case("two gts of the same class get the same column; a class no gt has still counts (target 0)",
             (same, same_labels), cls_cost_naive(same, same_labels), atol=1e-5),
        Case(f"the photo's {len(cand):,} candidates x 6 gts, strong predictions", (cand, scene.labels),
             cls_cost_naive(cand, scene.labels), atol=1e-4, rtol=1e-6),
        Case("80 classes, 20 gts: every class enters the sum", (wide, wide_labels), cls_cost_naive(wide, wide_labels),
             atol=1e-4, rtol=1e-6),
    ]
    run_cases("cls cost", fn, cases)


def check_dynamic_k(fn) -> None:
    """Exercise 2: ``fn(ious (n, M), candidate_topk) -> (M,)`` int64 ``max(1, int(sum of the q largest))``,
    ``q = min(candidate_topk, n)``. Cases: a sum of 2.7 (truncated to 2), a sum of exactly 3, all IoUs 0 (k = 1),
    fewer candidates than 10, another ``candidate_topk``, the weak and the strong photo."""
    from lessons.cases import Case, run_cases

    hand = torch.tensor([[0.9, 0.5, 0.0], [0.9, 0.5, 0.0], [0.9, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.5, 0.0],
                         [0.0, 0.5, 0.0]] + [[0.0, 0.0, 0.0]] * 6)  # (12, 3): sums 2.7, 3.0 and 0
    many = torch.linspace(0.1, 0.9, 30)[:, None].repeat(1, 2)  # (30, 2): more than 10 candidates
    _, res = _photo_results()
    cases = [
        Case("gt 0: top IoUs sum to 2.7, int() truncates: k = 2 (not 3) | gt 1: exactly 3.0: k = 3 | gt 2: all 0: "
             "k = 1 (never 0)", (hand, 10), dynamic_k(hand, 10)),
        Case("only 3 candidates: q = min(10, 3)", (hand[:3], 10), dynamic_k(hand[:3], 10)),
        Case("30 candidates: only the 10 largest IoUs count", (many, 10), dynamic_k(many, 10)),
        Case("candidate_topk = 5 passed in", (many, 5), dynamic_k(many, 5)),
    ]
    for quality in ("weak", "strong"):
        ious = res[quality][1].ious
        cases.append(Case(f"the photo, {quality} predictions", (ious, 10), dynamic_k(ious, 10)))
    run_cases("dynamic k", fn, cases)


def check_resolve(fn) -> None:
    """Exercise 3: ``fn(marked (n, M) bool, cost (n, M)) -> (n,)`` int64: the only marking gt; for a candidate marked
    by several, the cheapest gt over ALL M columns (first on ties); -1 if unmarked. Cases: a winner that never marked
    the candidate, tied costs, a single mark that is not the cheapest gt, the weak and the strong photo."""
    from lessons.cases import Case, run_cases

    def expected(marked, cost):
        count = marked.sum(1)
        return torch.where(count > 1, cost.argmin(1), torch.where(count == 1, marked.int().argmax(1), -1))

    hand = [
        ("marked by gts 0 and 1, but gt 2 is cheaper: gt 2 wins although it never marked it",
         [[True, True, False]], [[3.0, 2.0, 1.0]]),
        ("marked by gts 1 and 2 at equal cost: the first, gt 1", [[False, True, True]], [[5.0, 2.0, 2.0]]),
        ("marked by gt 2 alone, gt 0 cheaper: gt 2 keeps it (only conflicts are re-decided)",
         [[False, False, True]], [[1.0, 3.0, 2.0]]),
        ("marked by no gt: -1", [[False, False, False]], [[1.0, 1.0, 1.0]]),
    ]
    cases = [Case(rule, (torch.tensor(m), torch.tensor(c)), expected(torch.tensor(m), torch.tensor(c)))
             for rule, m, c in hand]
    _, res = _photo_results()
    for quality in ("weak", "strong"):
        r = res[quality][1]
        cases.append(Case(f"the photo, {quality} predictions ({r.conflicts} conflict(s))", (r.marked, r.cost),
                          r.gt_index[r.candidates]))
    run_cases("resolve", fn, cases)
