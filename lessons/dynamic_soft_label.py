"""RTMDet's DynamicSoftLabel assignment, the readable way: one image at a time, mmdetection 3.3's steps in order.

The reference (test oracle) for :class:`exportable.assigners.dynamic_soft_label.DynamicSoftLabelAssigner` and
the code of ``notebooks/11_soft_and_one_to_one``. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels;
``points (N, 2)`` with ``strides (N,)``; ``pred_scores (N, C)`` are class probabilities ``sigmoid(cls)``;
``pred_boxes (N, 4)`` the decoded predictions; ``gt_boxes (M, 4)``, ``gt_labels (M,)`` for ONE image.
Matrices are ``(n, M)`` (candidate priors x gts), the orientation mmdetection keeps.

Step numbers match ``docs/algorithms.md`` §12.1, the notebook and the exportable module:

1. no gts or no priors: every prior negative.
2. candidates: priors whose point lies strictly inside ANY gt (mmdetection's ``valid_mask``).
3. the cost of every (candidate, gt) pair: the soft classification cost (BCE against the IoU-scaled
   one-hot target, weighted by ``|target - p|^2``, summed over ALL classes) ``+ iou_weight * -log(IoU +
   1e-7) + 10^(distance / stride - soft_center_radius)``.
4. dynamic k per gt: ``max(1, int(sum of its top-q IoUs))``, ``q = min(topk, candidates)``.
5. each gt marks its k cheapest candidates (here: ties to the lower index, the package's rule;
   mmdetection's ``torch.topk`` leaves the order of tied costs unspecified).
6. a prior marked by several gts goes to the cheapest gt over ALL gt rows; no re-assignment.
7. the result: matched gt, its class, the IoU with it (also RTMDet's soft classification target).

The result uses the package's encoding (``gt_index`` 0-based, -1 negative); :func:`to_mmdet` gives
mmdetection's ``gt_inds`` (1-based, 0 negative) and ``max_overlaps`` (IoU for positives, -1e8 elsewhere).
Also here: the notebook's exercise cases (``*_cases``) and the benchmark cases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lessons.simota import dynamic_k, iou_matrix

__all__ = [
    "MMDET_INF",
    "DSLReference",
    "benchmark_case",
    "benchmark_reference",
    "center_prior",
    "center_prior_cases",
    "check_center_prior",
    "check_soft_cls_cost",
    "demo_scene_inputs",
    "dsl_assign",
    "in_any_gt",
    "photo_inputs",
    "soft_cls_cost",
    "soft_cls_cost_cases",
    "to_mmdet",
    "workload_inputs",
]

MMDET_INF = 100000000.0  # mmdetection's INF in dynamic_soft_label_assigner.py: max_overlaps of non-positives is -INF
IOU_EPS = 1e-7  # mmdetection's EPS in -log(IoU + EPS)


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def in_any_gt(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """Step 2: ``(N, M)`` True where the point lies strictly inside the gt: ``min(x - x1, y - y1, x2 - x, y2 - y)
    > 0``, as mmdetection writes it (a point on an edge is outside)."""
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    deltas = torch.stack([x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=1)
    return deltas.min(dim=1).values > 0  # (N, M)


def soft_cls_cost(scores: Tensor, gt_labels: Tensor, ious: Tensor) -> Tensor:
    """Step 3a: ``(n, M)`` the soft classification cost, as mmdetection writes it (an ``(n, M, C)`` tensor).

    The target of gt g at prior i is ``t = onehot(label_g) * IoU(i, g)``: the IoU at the gt's class, 0 at every
    other class. Each class costs ``BCE(p, t) * |t - p|^2`` (torch's BCE, logs clamped at -100), summed over ALL
    C classes. ``scores (n, C)`` are probabilities, ``ious (n, M)``.
    """
    n, c = scores.shape
    target = F.one_hot(gt_labels.long(), c).float()[None] * ious[..., None]  # (n, M, C) soft one-hot
    p = scores.float()[:, None, :].expand_as(target)  # (n, M, C)
    return (F.binary_cross_entropy(p, target, reduction="none") * (target - p).abs().pow(2)).sum(-1)  # (n, M)


def center_prior(points: Tensor, strides: Tensor, gt_boxes: Tensor, soft_center_radius: float = 3.0) -> Tensor:
    """Step 3c: ``(n, M)`` the soft centre prior ``10^(distance / stride - soft_center_radius)``.

    ``distance`` is Euclidean, from the point to the gt box's centre, measured in the point's own stride: 1 at
    three strides, 10 at four, 0.001 at the centre. The power is taken in float64 and rounded to float32 once
    (mmdetection's float32 ``torch.pow`` can differ by an ulp between equal inputs; see the exportable module).
    Far points overflow float32 to ``inf`` (beyond about 41.5 strides), as in mmdetection.
    """
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0  # (M, 2)
    distance = (points[:, None, :] - centre[None, :, :]).pow(2).sum(-1).sqrt() / strides[:, None]  # (n, M)
    return torch.pow(10.0, (distance - soft_center_radius).double()).float()  # (n, M)


# --------------------------------------------------------------------------------------------
# The assignment, one image
# --------------------------------------------------------------------------------------------


@dataclass
class DSLReference:
    """One image's result, with every intermediate the notebook shows.

    ``gt_index (N,)`` 0-based, -1 negative; ``labels (N,)`` the gt's class, ``num_classes`` elsewhere;
    ``overlaps (N,)`` IoU with the matched gt, 0 elsewhere (RTMDet's soft target). ``inside (N, M)``; over the
    ``n`` candidates (``candidates (N,)`` True): ``ious``, ``cls_cost``, ``iou_cost``, ``center_cost``,
    ``cost`` and ``marked`` (step 5, before conflicts), each ``(n, M)``; ``dynamic_ks (M,)``.
    """

    gt_index: Tensor
    labels: Tensor
    overlaps: Tensor
    candidates: Tensor
    inside: Tensor
    ious: Tensor
    cls_cost: Tensor
    iou_cost: Tensor
    center_cost: Tensor
    cost: Tensor
    dynamic_ks: Tensor
    marked: Tensor

    @property
    def positives_per_gt(self) -> Tensor:
        """``(M,)`` how many priors each gt ended with (after conflicts; can be 0)."""
        m = self.inside.shape[1]
        return torch.bincount(self.gt_index[self.gt_index >= 0], minlength=m)[:m]

    @property
    def conflicts(self) -> int:
        """How many priors step 5 marked for more than one gt."""
        return int((self.marked.sum(1) > 1).sum())

    def cost_map(self, g: int) -> Tensor:
        """``(N,)`` gt g's cost at every prior, NaN where the prior is not a candidate (for figures)."""
        out = torch.full(self.candidates.shape, float("nan"))
        out[self.candidates] = self.cost[:, g]
        return out


def dsl_assign(
    points: Tensor, strides: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
    soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0, num_classes: int | None = None,
) -> DSLReference:
    """mmdetection 3.3's ``DynamicSoftLabelAssigner.assign`` for ONE image, docs/algorithms.md §12.1."""
    n, m = points.shape[0], gt_boxes.shape[0]
    c = pred_scores.shape[1] if num_classes is None else num_classes
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    labels = torch.full((n,), c, dtype=torch.int64)
    overlaps = torch.zeros(n)
    # 1. no gts or no priors: every prior negative
    inside = in_any_gt(points, gt_boxes) if n and m else torch.zeros(n, m, dtype=torch.bool)  # (N, M)
    # 2. candidates: priors strictly inside ANY gt; each one competes for EVERY gt of the image
    candidates = inside.any(dim=1)  # (N,)
    if not candidates.any():
        empty = torch.zeros(0, m)
        return DSLReference(gt_index, labels, overlaps, candidates, inside, *[empty] * 5,
                            torch.zeros(m, dtype=torch.int64), empty.bool())
    # 3. the cost of every (candidate, gt) pair: soft classification + IoU + soft centre prior
    ious = iou_matrix(pred_boxes[candidates].float(), gt_boxes.float())  # (n, M)
    cls_cost = soft_cls_cost(pred_scores[candidates], gt_labels, ious)  # (n, M) over ALL classes
    iou_cost = -torch.log(ious + IOU_EPS) * iou_weight  # (n, M)
    center_cost = center_prior(points[candidates], strides[candidates], gt_boxes, soft_center_radius)  # (n, M)
    cost = cls_cost + iou_cost + center_cost  # (n, M)
    # 4. dynamic k per gt: max(1, int(sum of its q largest IoUs)), q = min(topk, n)
    ks = dynamic_k(ious, topk)  # (M,)
    # 5. each gt marks its k cheapest candidates (equal costs: the lower index first)
    marked = torch.zeros_like(cost, dtype=torch.bool)  # (n, M)
    for g in range(m):
        marked[torch.sort(cost[:, g], stable=True).indices[: int(ks[g])], g] = True
    # 6. a candidate marked by several gts goes to the cheapest gt over ALL M rows (the first on ties)
    count = marked.sum(dim=1)  # (n,)
    winner = torch.where(count > 1, cost.argmin(dim=1), marked.int().argmax(dim=1))  # (n,)
    # 7. write back to all N priors: matched gt, its class, the IoU with it
    rows = (count > 0).nonzero()[:, 0]  # candidate rows that are positive
    where = candidates.nonzero()[:, 0][rows]  # their prior indices
    gt_index[where], labels[where] = winner[rows], gt_labels[winner[rows]].long()
    overlaps[where] = ious[rows, winner[rows]]
    return DSLReference(gt_index, labels, overlaps, candidates, inside, ious, cls_cost, iou_cost, center_cost,
                        cost, ks, marked)


def to_mmdet(gt_index: Tensor, overlaps: Tensor) -> tuple[Tensor, Tensor]:
    """mmdetection's ``(gt_inds, max_overlaps)``: 1-based gt (0 negative); IoU for positives, ``-INF`` (-1e8)
    for every other prior (zeros when the image has no gt or no candidate: its early exits)."""
    positive = gt_index >= 0
    gt_inds = torch.where(positive, gt_index + 1, 0)
    fill = -MMDET_INF if positive.any() else 0.0
    return gt_inds, torch.where(positive, overlaps, torch.full_like(overlaps, fill))


# --------------------------------------------------------------------------------------------
# The photo (notebook 11) and the benchmarks
# --------------------------------------------------------------------------------------------


def photo_inputs(quality: str = "strong") -> tuple[Tensor, ...]:
    """The photo's points (cell centres, padded to (608, 512): 6,384) and one set of seeded predictions over its
    6 classes (``lessons.simota.synthetic_predictions``), shared with SimOTA so the two costs can be compared:
    ``points, strides, scores (N, C), boxes (N, 4), gt_boxes (M, 4), gt_labels (M,)``."""
    from lessons.scenes import default_scene
    from lessons.simota import photo_points, synthetic_predictions

    scene = default_scene()
    points, strides, _ = photo_points(scene.hw)
    scores, boxes = synthetic_predictions(points, strides, scene.boxes, scene.labels, scene.num_classes, quality)
    return points, strides, scores, boxes, scene.boxes, scene.labels


def demo_scene_inputs() -> dict[str, Any]:
    """Photo inputs of this module's catalog entry, for ``python -m lessons demo``: SimOTA's (the same points and
    seeded predictions, so the demo's two assignments can be compared)."""
    from lessons.simota import demo_scene_inputs as simota_inputs

    return {"dynamic_soft_label_assigner": simota_inputs()["simota_assigner"]}


def workload_inputs(workload: str, seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs in ``forward`` order for ``yolox-m20`` / ``yolox-m100`` (or ``name@B``) and for the many-object cases
    ``yolox-m1000`` / ``yolox-m5000`` (B = 2 unless ``@B`` says otherwise; docs/workloads.md §5: the yolox points and
    seeded predictions, the gts of ``random_batch((640, 640, B, M, 80), seed)``)."""
    from lessons.scenes import WORKLOADS, make_point_workload_inputs, make_workload_predictions, random_batch

    name, _, batch = workload.partition("@")
    if name in WORKLOADS:
        return make_point_workload_inputs(workload, seed)
    if not name.startswith("yolox-m") or not name[len("yolox-m"):].isdigit():
        raise ValueError(f"workload: expected yolox-m20 / yolox-m100 / yolox-m<M>@B, got {workload!r}")
    b, m = int(batch) if batch else 2, int(name[len("yolox-m"):])
    points, strides, scores, boxes = make_workload_predictions("yolox-m20", seed=seed, batch=b)
    gts = random_batch((640, 640, b, m, 80), seed)
    return points, strides, scores, boxes, gts.gt_boxes, gts.gt_labels, gts.gt_mask


def benchmark_case(workload: str, seed: int = 0, **params: Any):
    """``(DynamicSoftLabelAssigner(**params), inputs)`` for :func:`workload_inputs`' workloads: 640 x 640, 8,400
    points, C = 80. Inputs in ``forward`` order."""
    from exportable.assigners.dynamic_soft_label import DynamicSoftLabelAssigner

    return DynamicSoftLabelAssigner(**params).eval(), workload_inputs(workload, seed)


def benchmark_reference(workload: str, seed: int = 0, **params: Any) -> Callable[[], list[DSLReference]]:
    """A zero-argument callable running :func:`dsl_assign` (the naive ``(n, M, C)`` soft BCE) on every image."""
    points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask = workload_inputs(workload, seed)
    images = [(scores[i], boxes[i], gt_boxes[i][gt_mask[i]], gt_labels[i][gt_mask[i]]) for i in range(len(scores))]
    return lambda: [dsl_assign(points, strides, s, b, g, lab, **params) for s, b, g, lab in images]


# --------------------------------------------------------------------------------------------
# Exercise cases (notebook 11): each sits on a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _photo_reference() -> tuple[tuple[Tensor, ...], DSLReference]:
    args = photo_inputs("strong")
    return args, dsl_assign(*args)


def soft_cls_cost_cases() -> list:
    """Exercise: ``fn(scores (n, C), gt_labels (M,), ious (n, M)) -> (n, M)``, the soft classification cost."""
    from lessons.check import Case

    def case(rule, scores, labels, ious, **tol):
        s, lab, u = torch.tensor(scores), torch.tensor(labels), torch.tensor(ious)
        return Case(rule, (s, lab, u), soft_cls_cost(s, lab, u), **tol)

    (points, strides, scores, boxes, gt_boxes, gt_labels), ref = _photo_reference()
    photo_scores = scores[ref.candidates]  # (n, 6)
    g = torch.Generator().manual_seed(11)
    wide = (torch.rand(300, 80, generator=g), torch.randint(0, 80, (12,), generator=g),
            torch.rand(300, 12, generator=g))  # (300, 80), (12,), (300, 12)
    return [
        case("the target is the IoU, not 1: p = IoU = 0.6 at the gt's class costs nothing there",
             [[0.6, 0.0]], [0], [[0.6]]),
        case("every class counts: class 1 is no gt's class, and p = 0.5 there costs BCE(0.5, 0) * 0.5^2",
             [[0.3, 0.5]], [0], [[0.3]]),
        case("the weight is squared: |t - p|^2 = 0.25 (not 0.5) for p = 0.8 and IoU 0.3",
             [[0.8]], [0], [[0.3]]),
        case("IoU 0: the gt's own class has target 0 as well", [[0.4, 0.2]], [1], [[0.0]]),
        case("scores exactly 0 and 1: torch's BCE clamps each log at -100 (cost 100 * weight, not inf)",
             [[0.0, 1.0], [1.0, 0.0]], [0, 1], [[0.5, 0.5], [0.5, 0.5]], atol=1e-4),
        Case(f"the photo's {len(photo_scores):,} candidates x 6 gts", (photo_scores, gt_labels, ref.ious),
             ref.cls_cost, atol=1e-4),
        Case("80 classes, 12 gts, random IoUs: every class enters the sum", wide, soft_cls_cost(*wide), atol=1e-4),
    ]


def center_prior_cases() -> list:
    """Exercise: ``fn(points (n, 2), strides (n,), gt_boxes (M, 4), soft_center_radius) -> (n, M)``."""
    from lessons.check import Case

    def case(rule, points, strides, boxes, radius=3.0, **tol):
        args = (torch.tensor(points), torch.tensor(strides), torch.tensor(boxes), radius)
        return Case(rule, args, center_prior(*args), **tol)

    (points, strides, scores, boxes, gt_boxes, gt_labels), ref = _photo_reference()
    return [
        case("three strides from the centre: 10^0 = 1 (the centre, not a corner, of the box)",
             [[44.0, 20.0]], [8.0], [[0.0, 0.0, 40.0, 40.0]]),
        case("the same 24 px, measured in each point's own stride: 1 at stride 8, 10^-2.25 at stride 32",
             [[44.0, 20.0], [44.0, 20.0]], [8.0, 32.0], [[0.0, 0.0, 40.0, 40.0]]),
        case("Euclidean distance: 3-4-5, five strides away gives 10^2 = 100",
             [[44.0, 52.0]], [8.0], [[0.0, 0.0, 40.0, 40.0]]),
        case("another radius passed in: soft_center_radius = 2.0", [[44.0, 20.0]], [8.0], [[0.0, 0.0, 40.0, 40.0]],
             2.0),
        case("at the gt's centre: 10^-3, small but not 0", [[20.0, 20.0]], [16.0], [[0.0, 0.0, 40.0, 40.0]]),
        Case("the photo's candidates x 6 gts", (points[ref.candidates], strides[ref.candidates], gt_boxes, 3.0),
             ref.center_cost, rtol=1e-5),
    ]


def check_soft_cls_cost(fn) -> None:
    """Exercise 1 of notebook 11: ``fn(scores (n, C), gt_labels (M,), ious (n, M)) -> (n, M)``; raises
    ``AssertionError`` naming the first rule a wrong answer breaks."""
    from lessons.check import check_cases

    check_cases("soft cls cost", fn, soft_cls_cost_cases(), atol=1e-5)


def check_center_prior(fn) -> None:
    """Exercise 2 of notebook 11: ``fn(points (n, 2), strides (n,), gt_boxes (M, 4), soft_center_radius) -> (n, M)``."""
    from lessons.check import check_cases

    check_cases("centre prior", fn, center_prior_cases(), atol=1e-6, rtol=1e-5)
