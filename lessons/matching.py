"""Matching as transport: DETR's Hungarian matching and OTA's Sinkhorn, one image at a time (notebook 12).

Shape shorthand: ``Q`` queries, ``M`` gts, ``C`` classes, ``N`` priors (points), ``R = M + 1`` suppliers (the
gts and the background). Boxes are ``(x1, y1, x2, y2)`` in pixels. These are the readable references the
tests compare :mod:`exportable.assigners.hungarian` and :mod:`exportable.assigners.ota` with; the steps are
numbered as in ``docs/algorithms.md`` §17 (Hungarian) and §18 (OTA).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from lessons.simota import cls_cost_naive, dynamic_k, geometric_prior, iou_matrix

__all__ = [
    "brute_force_matching", "check_matching", "hungarian_assign", "hungarian_cost", "matching_total",
    "ota_assign", "sinkhorn", "OTAReference", "demo_scene_inputs",
]


# ------------------------------------------------------------------------------------------------
# §17 Hungarian matching (DETR, mmdetection 3.3's HungarianAssigner)
# ------------------------------------------------------------------------------------------------


def giou_matrix(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """``(Q, 4) x (M, 4) -> (Q, M)`` generalised IoU: IoU minus the share of the enclosing box that neither covers."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # (Q,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # (M,)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (Q, M, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (Q, M, 2)
    inter = (rb - lt).clamp(min=0).prod(-1)  # (Q, M)
    union = (area1[:, None] + area2[None, :] - inter).clamp(min=eps)  # (Q, M)
    lt_c = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # (Q, M, 2) the enclosing box
    rb_c = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (Q, M, 2)
    enclose = (rb_c - lt_c).clamp(min=0).prod(-1).clamp(min=eps)  # (Q, M)
    return inter / union - (enclose - union) / enclose


def hungarian_cost(
    pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, image_size: tuple[int, int], *,
    cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0, alpha: float = 0.25,
    gamma: float = 2.0, eps: float = 1e-12,
) -> Tensor:
    """§17.1 step 2, one image: ``(Q, M)`` = focal classification + L1 on normalised (cx, cy, w, h) + -GIoU.

    ``pred_scores (Q, C)`` sigmoid probabilities, ``image_size = (H, W)``; defaults: mmdetection 3.3's
    Deformable DETR / DINO configs.
    """
    p = pred_scores[:, gt_labels]  # (Q, M) each query's probability of each gt's class
    # a. classification: the focal loss of "this class" minus that of "not this class"
    pos = alpha * (1 - p) ** gamma * -torch.log(p + eps)
    neg = (1 - alpha) * p**gamma * -torch.log(1 - p + eps)
    cls = pos - neg  # (Q, M)
    # b. L1 between (cx, cy, w, h), each divided by the image's (W, H, W, H)
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)

    def cxcywh(b: Tensor) -> Tensor:
        return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)

    l1 = torch.cdist(cxcywh(pred_boxes) / scale, cxcywh(gt_boxes) / scale, p=1)  # (Q, M)
    # c. -GIoU
    giou = giou_matrix(pred_boxes, gt_boxes)  # (Q, M)
    return cls * cls_weight + l1 * l1_weight - giou * giou_weight


def matching_total(cost: Tensor, gt_index: Tensor) -> float:
    """The total cost of a matching ``gt_index (Q,)`` (-1 = unmatched), in float64."""
    q = (gt_index >= 0).nonzero()[:, 0]
    return float(cost.double()[q, gt_index[q]].sum())


def brute_force_matching(cost: Tensor) -> Tensor:
    """The minimum-cost matching of a SMALL ``(Q, M)`` cost by trying every one: ``gt_index (Q,)``, -1 unmatched.

    ``min(Q, M)`` pairs are made; the first matching found with the least total wins (queries in order, each
    trying gts in order). ``Q!/(Q - M)!`` matchings: fine for the hand-sized cases, hopeless for DETR's 300 x 100.
    """
    q, m = cost.shape
    best, best_index = float("inf"), torch.full((q,), -1, dtype=torch.int64)
    if q == 0 or m == 0:
        return best_index
    c = cost.double()
    if q >= m:  # each gt picks a distinct query
        for queries in itertools.permutations(range(q), m):
            total = float(c[list(queries), list(range(m))].sum())
            if total < best:
                best, best_index = total, torch.full((q,), -1, dtype=torch.int64)
                best_index[list(queries)] = torch.arange(m)
    else:  # each query picks a distinct gt
        for gts in itertools.permutations(range(m), q):
            total = float(c[list(range(q)), list(gts)].sum())
            if total < best:
                best, best_index = total, torch.tensor(gts, dtype=torch.int64)
    return best_index


def hungarian_assign(
    pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, image_size: tuple[int, int], **kw
) -> tuple[Tensor, Tensor, Tensor]:
    """mmdetection 3.3's ``HungarianAssigner.assign`` for ONE image: ``gt_index (Q,)``, ``labels (Q,)``
    (``C`` for no object), ``overlaps (Q,)`` (IoU of the query with its gt, 0 elsewhere)."""
    from scipy.optimize import linear_sum_assignment

    q, c = pred_scores.shape
    gt_index = torch.full((q,), -1, dtype=torch.int64)
    labels = torch.full((q,), c, dtype=torch.int64)
    overlaps = torch.zeros(q)
    # 1. no gts (or no queries): every query is "no object"
    if gt_boxes.shape[0] == 0 or q == 0:
        return gt_index, labels, overlaps
    # 2. the cost of every (query, gt)
    cost = hungarian_cost(pred_scores, pred_boxes, gt_boxes, gt_labels, image_size, **kw)  # (Q, M)
    if not torch.isfinite(cost).all():
        raise ValueError("cost: NaN or inf in the matching cost")
    # 3. the minimum-cost one-to-one matching
    rows, cols = linear_sum_assignment(cost.double().numpy())
    rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
    # 4. matched queries take their gt
    gt_index[rows] = cols
    labels[rows] = gt_labels[cols]
    overlaps[rows] = iou_matrix(pred_boxes[rows], gt_boxes[cols]).diagonal()
    return gt_index, labels, overlaps


def check_matching(fn) -> None:
    """Exercise: ``fn(cost (Q, M)) -> gt_index (Q,)`` int64, a minimum-cost one-to-one matching (-1 unmatched).

    Any optimal matching passes: each case compares (pairs made, every gt at most once, total cost). Cases: the
    hand case where greedy fails, more queries than gts, more gts than queries, no gts, a tie between two optima.
    """
    from lessons.check import Case, check_cases

    def summary(cost: Tensor):
        def run(c: Tensor):
            got = torch.as_tensor(fn(c.clone()))
            if got.shape != (c.shape[0],):
                return {"shape": torch.tensor(list(got.shape))}
            matched = got[got >= 0]
            return {"pairs": torch.tensor(len(matched)),
                    "gts used twice": torch.tensor(len(matched) - len(torch.unique(matched))),
                    "out of range": torch.tensor(int((got >= c.shape[1]).sum())),
                    "total": torch.tensor(matching_total(c, got.clamp(max=c.shape[1] - 1)) if c.shape[1] else 0.0,
                                          dtype=torch.float64)}
        return run

    def expected(c: Tensor):
        best = brute_force_matching(c)
        return {"pairs": torch.tensor(min(c.shape)), "gts used twice": torch.tensor(0), "out of range": torch.tensor(0),
                "total": torch.tensor(matching_total(c, best) if c.shape[1] else 0.0, dtype=torch.float64)}

    hand = torch.tensor([[1.0, 2.0, 9.0], [1.5, 9.0, 9.0], [9.0, 3.0, 4.0]])  # greedy takes (0,0), pays 9 later
    wide = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0], [0.5, 6.0, 7.0], [5.0, 5.0, 0.1]])  # (5, 3)
    tall = wide.T.contiguous()  # (3, 5): 5 gts, 3 queries
    tied = torch.tensor([[1.0, 2.0], [2.0, 1.0], [1.5, 1.5]])  # (3, 2) optima of total 2 and a query left out
    g = torch.Generator().manual_seed(12)
    rand = torch.rand(6, 4, generator=g)  # (6, 4)
    cases = [
        Case("the hand case: the cheapest first pair (0, 0) is not in the cheapest matching", (hand,),
             expected(hand)),
        Case("5 queries, 3 gts: 3 pairs, two queries left to 'no object'", (wide,), expected(wide)),
        Case("3 queries, 5 gts: only 3 pairs, two gts unmatched", (tall,), expected(tall)),
        Case("no gts: every query unmatched (-1)", (torch.zeros(4, 0),), expected(torch.zeros(4, 0))),
        Case("tied costs: any optimal matching passes", (tied,), expected(tied)),
        Case("a random 6 x 4 cost", (rand,), expected(rand), atol=1e-6),
    ]
    check_cases("matching", lambda c: summary(c)(c), cases)


# ------------------------------------------------------------------------------------------------
# §18 OTA: SimOTA's cost solved as optimal transport
# ------------------------------------------------------------------------------------------------


def sinkhorn(cost: Tensor, supply: Tensor, demand: Tensor, eps: float, iterations: int) -> Tensor:
    """§18.1 step 5: ``plan (R, N)`` of the entropy-regularised transport, by ``iterations`` log-space steps.

    The plan is ``exp(a_r + b_n - cost / eps)``; each step fixes the columns (each prior receives its demand),
    then the rows (each supplier ships its supply). ``logsumexp`` keeps small ``eps`` from underflowing.
    """
    log_k = -cost.double() / eps  # (R, N)
    a = torch.zeros(cost.shape[0], dtype=torch.float64)  # (R,)
    b = torch.zeros(cost.shape[1], dtype=torch.float64)  # (N,)
    for _ in range(iterations):
        b = demand.double().log() - torch.logsumexp(a[:, None] + log_k, dim=0)  # columns sum to the demand
        a = supply.double().log() - torch.logsumexp(b[None, :] + log_k, dim=1)  # rows sum to the supply
    return torch.exp(a[:, None] + b[None, :] + log_k)


@dataclass
class OTAReference:
    """One image's OTA result: ``gt_index (N,)`` (-1 negative), ``labels (N,)``, ``overlaps (N,)``, and the
    ``plan (M + 1, N)`` (background last), ``cost (M + 1, N)``, ``supply (M + 1,)``, ``candidates (N,)``."""

    gt_index: Tensor
    labels: Tensor
    overlaps: Tensor
    plan: Tensor
    cost: Tensor
    supply: Tensor
    candidates: Tensor


def ota_assign(
    points: Tensor, strides: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
    center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0, cls_weight: float = 1.0,
    penalty: float = 1e5, iou_eps: float = 1e-7, sinkhorn_eps: float = 0.1, iterations: int = 50,
) -> OTAReference:
    """OTA for ONE image, §18.1 (SimOTA's cost and dynamic k, mmdetection 3.3's defaults; OTA's eps and 50 steps)."""
    n, m = points.shape[0], gt_boxes.shape[0]
    c = pred_scores.shape[1]
    gt_index, labels, overlaps = torch.full((n,), -1), torch.full((n,), c), torch.zeros(n)
    # 1. no gts: every prior negative
    if m == 0:
        empty = torch.zeros(1, n, dtype=torch.float64)
        return OTAReference(gt_index, labels, overlaps, empty + 1, empty, torch.tensor([float(n)]),
                            torch.zeros(n, dtype=torch.bool))
    # 2. SimOTA's geometric prior
    in_box, in_ctr = geometric_prior(points, strides, gt_boxes, center_radius)  # (N, M) each
    candidates = in_box.any(1) | in_ctr.any(1)  # (N,)
    pair = in_box & in_ctr  # (N, M)
    # 3. the cost: gt rows (SimOTA's, 1e10 off the candidates), then the background's "no object" row
    ious = iou_matrix(pred_boxes, gt_boxes)  # (N, M)
    cost = cls_cost_naive(pred_scores, gt_labels) * cls_weight - torch.log(ious + iou_eps) * iou_weight
    cost = cost + (~pair) * penalty  # (N, M)
    cost = torch.where(candidates[:, None], cost, 1e10).T  # (M, N)
    background = -torch.log(1 - pred_scores).clamp(min=-100).sum(1) * cls_weight  # (N,)
    cost = torch.cat([cost, background[None]]).double()  # (M + 1, N)
    # 4. supplies: each gt its dynamic k, the background the rest; each prior demands 1
    k = dynamic_k(ious[candidates], candidate_topk).double() if candidates.any() else torch.ones(m).double()  # (M,)
    supply = torch.cat([k, (n - k.sum()).clamp(min=0)[None]])  # (M + 1,)
    # 5. Sinkhorn
    plan = sinkhorn(cost, supply, torch.ones(n), sinkhorn_eps, iterations)  # (M + 1, N)
    # 6. each row over its maximum, then each prior to its largest row (first on ties)
    winner = (plan / plan.amax(1, keepdim=True).clamp(min=torch.finfo(plan.dtype).tiny)).argmax(0)  # (N,)
    positive = (winner < m) & candidates  # (N,)
    # 7. write back
    gt_index[positive] = winner[positive]
    labels[positive] = gt_labels[winner[positive]]
    overlaps[positive] = ious[positive, winner[positive]]
    return OTAReference(gt_index, labels, overlaps, plan, cost, supply, candidates)


# ------------------------------------------------------------------------------------------------
# The photo for ``python -m lessons demo``
# ------------------------------------------------------------------------------------------------


def _photo_queries(ctx, num_queries: int = 100) -> tuple[Tensor, ...]:
    """DETR-like queries on the photo: one near each gt (its box jittered by up to 10 % of its size, its class
    likely), the rest spread over the image with low scores; seeded. ``(pred_scores (1, Q, C), pred_boxes (1, Q, 4),
    gt_boxes, gt_labels, gt_mask, image_sizes)``."""
    g = torch.Generator().manual_seed(0)
    h, w = ctx.scene.hw
    gts, labels = ctx.gt_boxes[0], ctx.gt_labels[0]  # (M, 4), (M,)
    m, c = gts.shape[0], ctx.scene.num_classes
    size = (gts[:, 2:] - gts[:, :2]).repeat(1, 2)  # (M, 4)
    near = gts + (torch.rand(m, 4, generator=g) - 0.5) * 0.2 * size  # (M, 4)
    centre = torch.rand(num_queries - m, 2, generator=g) * torch.tensor([w, h])  # (Q - M, 2)
    half = torch.rand(num_queries - m, 2, generator=g) * 60 + 4  # (Q - M, 2)
    spread = torch.cat([centre - half, centre + half], dim=1)  # (Q - M, 4)
    boxes = torch.cat([near, spread])  # (Q, 4)
    scores = torch.rand(num_queries, c, generator=g) * 0.2  # (Q, C) low everywhere
    scores[torch.arange(m), labels] = 0.6 + 0.3 * torch.rand(m, generator=g)  # (M,) the gt's class likely
    return scores[None], boxes[None], ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask, ctx.image_sizes


def demo_scene_inputs() -> dict:
    """Photo inputs of the matching entries: queries for Hungarian, SimOTA's points and predictions for OTA."""
    from lessons.simota import demo_scene_inputs as simota_inputs

    return {"hungarian_cost": _photo_queries, "hungarian_assigner": _photo_queries,
            "ota_assigner": simota_inputs()["simota_assigner"]}
