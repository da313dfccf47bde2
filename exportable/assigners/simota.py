"""SimOTA (YOLOX's label assignment, Ge et al. 2021), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K`` = ``candidate_topk`` (10), the static bound on every gt's dynamic k.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; points are cell centres
``(x, y)`` with one stride per point. Returns :class:`~exportable.assigners.result.AssignResult`
(``gt_index`` 0-based, -1 negative; SimOTA never ignores; ``labels`` = C for every non-positive).

The steps, numbered as in ``docs/algorithms.md`` §9.1 and ``lessons/simota.py`` (mmdetection 3.3's
``SimOTAAssigner``), gt-major ``(B, M, N)`` over a few images at a time (eager) or one image per ``Scan``
iteration (the graph); images never interact:

1. no gts or no priors: every prior negative. Padded gt rows take part in no step below, so an image
   whose rows are all padding comes out all negative with no branch.
2. geometric prior: ``in_box[b, g, n]`` (point strictly inside gt g) and ``in_ctr[b, g, n]`` (strictly
   inside the square ``centre(g) +- center_radius * stride``, not clipped to the box). Candidates: priors
   in ANY real gt's box or square; the pair prior ``in_box & in_ctr`` decides the penalty.
   ``in_box_prior=False`` (today's YOLOX) drops the box test: the square alone, both times.
3. cost, float32: ``cls_weight * sum_c BCE(score_c, onehot_c) + iou_weight * -log(IoU + iou_eps)
   + penalty * not(pair prior)``; ``+inf`` where the prior is not a candidate or the row is padding.
4. dynamic k: ``k_g = max(1, int(sum of gt g's top-K IoUs over the candidates))``.
5. each gt marks its ``k_g`` cheapest candidates: one top-K of the smallest costs per gt row, keep the
   slots of rank ``< k_g`` (ties: lower prior index first, the package's rule).
6. a prior marked by one gt goes to it; a prior marked by several goes to ``argmin_g cost`` over ALL gt
   rows (ties: lower gt index), which need not be a gt that marked it (so a gt can end with more than
   k positives); no second round, so the losing gts keep fewer positives, possibly none.
7. the result: ``gt_index``, ``labels`` = the gt's class, ``boxes`` = its box, ``overlaps`` =
   ``target_scores`` = the IoU with it (0 elsewhere), ``weights`` 1 everywhere.

Defaults are mmdetection 3.3's (= YOLOX before January 2023): ``center_radius=2.5, candidate_topk=10,
iou_weight=3.0, cls_weight=1.0, penalty=1e5, iou_eps=1e-7, in_box_prior=True``.
:meth:`SimOTAAssigner.yolox` is today's official YOLOX: ``center_radius=1.5, penalty=1e6, iou_eps=1e-8,
in_box_prior=False`` (same steps, docs/algorithms.md §9.3).

Targets (YOLOX loss): ``dense_scores(C)`` gives the class target one-hot x IoU; the objectness target is
``result.positive`` (every prior is supervised); the box target is ``boxes``.

Three choices keep it small and static:

- step 3 never builds the peers' ``(N, M, C)`` tensor: ``sum_c BCE(p_c, onehot(y)_c) = S - L0_y + L1_y``
  with ``L0_c = -max(log(1 - p_c), -100)``, ``L1_c = -max(log p_c, -100)`` (torch's BCE clamps) and
  ``S = sum_c L0_c``: a sum per prior plus a gather at the gt's class (:func:`simota_cls_cost`; equal to
  the naive sum within ``1e-6 * (S + L1_y)``, tested).
- steps 4-6 are the blocks SimOTA shares with RTMDet's DynamicSoftLabel (:mod:`exportable.assigners._dynamic_k`):
  step 4 adds the top IoUs one at a time in rank order, as mmdetection's column sum does, so ``int()``
  truncates the very same float; step 6 needs no ``(B, M, N)`` mark matrix: the at most ``M * K`` marks
  are counted per prior with two scatter-adds (how many gts, and the sum of their indices).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_scalar, checks_enabled, exporting
from exportable.assigners._dynamic_k import dynamic_k, mark_cheapest, resolve_conflicts
from exportable.assigners._points import check_point_assigner_inputs
from exportable.assigners.result import AssignResult
from exportable.batching import ensure_gt_rows, in_image_chunks
from exportable.boxes import _box_iou, _points_in_boxes, _points_near_centers

__all__ = ["SimOTAAssigner", "YOLOX_PRESET", "simota_cls_cost"]

CHUNK_PAIRS = 2**18  # eager works on about this many (gt, prior) pairs at a time (1 MB per float temporary)
LOG_CLAMP = -100.0  # torch.nn.functional.binary_cross_entropy clamps log(p) and log(1 - p) at -100
YOLOX_PRESET: dict[str, float | bool] = {"center_radius": 1.5, "penalty": 1e6, "iou_eps": 1e-8, "in_box_prior": False}
"""Today's official YOLOX (``get_geometry_constraint``, since YOLOX issue #1589): what :meth:`SimOTAAssigner.yolox`
changes from the mmdetection defaults."""


class SimOTAAssigner(nn.Module):
    """SimOTA: cost = classification BCE + 3 * IoU cost + a geometric penalty; dynamic k per gt.

    Args:
        center_radius: half-side of the centre square, in strides (2.5; today's YOLOX 1.5).
        candidate_topk: how many top IoUs make a gt's dynamic k (10); also the static top-k width K.
        iou_weight: weight of ``-log(IoU + iou_eps)`` (3.0).
        cls_weight: weight of the classification cost (1.0).
        penalty: added to the cost of a (gt, prior) pair outside the pair prior (1e5; YOLOX 1e6). Finite on
            purpose: a penalised prior can still be chosen when a gt's k exceeds its good ones.
        iou_eps: ``eps`` of ``-log(IoU + eps)`` (1e-7; YOLOX 1e-8). The exporter runs with
            ``optimize=False``, so a small eps survives (docs/export.md §3.1).
        in_box_prior: True (mmdetection): candidates are priors in any gt box OR any centre square, the pair
            prior needs both; False (today's YOLOX): the centre square alone.
        variant: a thin alias for existing callers: ``"yolox"`` gives the four arguments that :meth:`yolox`
            changes its values where they are still at their defaults; ``"mmdet"`` (default) changes nothing.

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``. ``pred_scores`` are probabilities
    ``sqrt(sigmoid(cls) * sigmoid(obj))`` (what mmdetection 3.x passes); ``pred_boxes`` the decoded boxes.
    """

    def __init__(
        self,
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        iou_weight: float = 3.0,
        cls_weight: float = 1.0,
        penalty: float = 1e5,
        iou_eps: float = 1e-7,
        in_box_prior: bool = True,
        variant: Literal["mmdet", "yolox"] = "mmdet",
    ) -> None:
        super().__init__()
        if variant not in ("mmdet", "yolox"):
            raise ValueError(f"variant: expected 'mmdet' or 'yolox', got {variant!r}")
        if variant == "yolox":  # the alias: the preset's values for the arguments left at their defaults
            center_radius = YOLOX_PRESET["center_radius"] if center_radius == 2.5 else center_radius
            penalty = YOLOX_PRESET["penalty"] if penalty == 1e5 else penalty
            iou_eps = YOLOX_PRESET["iou_eps"] if iou_eps == 1e-7 else iou_eps
            in_box_prior = YOLOX_PRESET["in_box_prior"] if in_box_prior is True else in_box_prior
        self.center_radius = check_scalar("center_radius", center_radius, low=0.0)
        if isinstance(candidate_topk, bool) or not isinstance(candidate_topk, int) or candidate_topk < 1:
            raise ValueError(f"candidate_topk: expected an int >= 1, got {candidate_topk!r}")
        self.candidate_topk = candidate_topk
        self.iou_weight = check_scalar("iou_weight", iou_weight, low=0.0)
        self.cls_weight = check_scalar("cls_weight", cls_weight, low=0.0)
        self.penalty = check_scalar("penalty", penalty, low=0.0)
        self.iou_eps = check_scalar("iou_eps", iou_eps, low=0.0)
        self.in_box_prior = bool(in_box_prior)

    @classmethod
    def yolox(cls, **kwargs) -> SimOTAAssigner:
        """Today's official YOLOX prior: radius 1.5, no in-box test, penalty 1e6, eps 1e-8 (explicit kwargs win)."""
        return cls(**{**YOLOX_PRESET, **kwargs})

    def extra_repr(self) -> str:
        return (f"center_radius={self.center_radius}, candidate_topk={self.candidate_topk}, "
                f"iou_weight={self.iou_weight}, cls_weight={self.cls_weight}, penalty={self.penalty:g}, "
                f"iou_eps={self.iou_eps:g}, in_box_prior={self.in_box_prior}")

    def forward(
        self,
        points: Float[Tensor, "N 2"],
        strides: Float[Tensor, " N"],
        pred_scores: Float[Tensor, "B N C"],
        pred_boxes: Float[Tensor, "B N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
    ) -> AssignResult:
        if checks_enabled():
            check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        # the same function a few images at a time in eager (so no (B, M, N) temporary holds more than about
        # CHUNK_PAIRS pairs: memory, and cache-sized passes), one image per ONNX Scan iteration in the graph
        # (peak memory of one image's (M, N) pairs); images never interact, so the split changes no result
        b, n = pred_scores.shape[:2]
        step = max(1, CHUNK_PAIRS // max(1, gt_boxes.shape[1] * n))  # images per eager chunk
        out = in_image_chunks(lambda *image: self._assign(points, strides, *image), step,
                              pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        return AssignResult(*out)

    def _assign(self, points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask) -> AssignResult:
        b, n, c = pred_scores.shape
        # 1. padded rows (and the one ensure_gt_rows adds when M = 0) take part in nothing below
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M, 4), (B, M), (B, M)
        labels = torch.where(mask, labels, 0)  # (B, M) padding reads class 0, never used
        real = mask.unsqueeze(2)  # (B, M, 1)
        # 2. geometric prior, gt-major: (N, 2) points against (B, M, 1, 4) gts give (B, M, N)
        gts = boxes.unsqueeze(2)  # (B, M, 1, 4)
        in_ctr = _points_near_centers(points, gts, strides * self.center_radius, aligned=True)  # (B, M, N)
        if self.in_box_prior:
            in_box = _points_in_boxes(points, gts, aligned=True)  # (B, M, N)
            near, pair = in_box | in_ctr, in_box & in_ctr  # (B, M, N) each
        else:
            near, pair = in_ctr, in_ctr  # (B, M, N)
        candidate = (near & real).to(pred_boxes.dtype).amax(dim=1, keepdim=True)  # (B, 1, N) 1: in any real gt's
        # 3. cost; +inf (x + 0 = x, x + inf = inf) on non-candidates and padded rows: never marked, never a winner
        iou = _box_iou(boxes, pred_boxes)  # (B, M, N)
        cost = simota_cls_cost(pred_scores, labels)  # (B, M, N)
        if self.cls_weight != 1.0:
            cost.mul_(self.cls_weight)
        cost.add_(iou.add(self.iou_eps).log_().mul_(-self.iou_weight))  # (B, M, N)
        cost.add_(pair.logical_not(), alpha=self.penalty)  # (B, M, N)
        cost.add_(torch.where(candidate > 0, 0.0, float("inf"))).add_(torch.where(real, 0.0, float("inf")))
        # 4. dynamic k from the top-K IoUs over the candidates (non-candidates count 0)
        iou.mul_(candidate)  # (B, M, N) a positive is always a candidate: its IoU is unchanged
        k = dynamic_k(iou, self.candidate_topk)  # (B, M) int64
        # 5. each gt marks its k cheapest candidates (one top-K, ranks < k; an inf cost is never marked)
        idx, marked = mark_cheapest(cost, k, self.candidate_topk)  # (B, M, K'), K' = min(K, N)
        # 6. conflicts: a prior marked by several gts goes to the cheapest gt over ALL rows (first on ties)
        gt_index = resolve_conflicts(idx, marked, cost.min(dim=1).indices)  # (B, N)
        # 7. the result: the matched gt's class, box and IoU
        matched_iou = torch.gather(iou, 1, gt_index.clamp(min=0).unsqueeze(1)).squeeze(1)  # (B, N)
        overlaps = torch.where(gt_index >= 0, matched_iou, 0.0)  # (B, N)
        return AssignResult.from_gt_index(gt_index, boxes, labels, c, overlaps=overlaps, target_scores=overlaps)


def simota_cls_cost(pred_scores: Float[Tensor, "B N C"], gt_labels: Int[Tensor, "B M"]) -> Float[Tensor, "B M N"]:
    """``sum_c BCE(p_c, onehot(y_g)_c)`` for every (gt, prior) pair without an ``(N, M, C)`` tensor.

    ``= S - L0_y + L1_y`` with ``S = sum_c L0_c`` once per prior, ``L0 = -max(log(1 - p), -100)`` and
    ``L1 = -max(log p, -100)`` (torch's ``binary_cross_entropy`` with target 0 and 1, clamps included), then
    ``D = L1 - L0`` at the gt's class by one row gather (the ``(C, N)`` layout makes it a copy of whole rows).
    The graph takes ``log p`` over all classes and gathers ``D`` (one gather and one add per pair, whatever M);
    eager with fewer gts than classes gathers ``p`` and ``L0`` first (M logs per prior instead of C). The same
    elementwise operations on the same values: the same bits. Equal to the naive sum within float32 rounding.
    """
    b, n, c = pred_scores.shape
    m = gt_labels.shape[1]
    p = pred_scores.transpose(1, 2).contiguous().reshape(b * c, n)  # (B * C, N) one row per (image, class)
    log_not = torch.log(1.0 - p).clamp_(min=LOG_CLAMP)  # (B * C, N) = -L0
    total = log_not.reshape(b, c, n).sum(1).neg_()  # (B, N) S = sum_c L0_c
    rows = (gt_labels + c * torch.arange(b, device=gt_labels.device).unsqueeze(1)).reshape(b * m)  # (B * M,)
    if not exporting() and m < c:  # gather first: L1 - L0 from the gt's class rows only
        cost = log_not.index_select(0, rows).sub_(torch.log(p.index_select(0, rows)).clamp_(min=LOG_CLAMP))
    else:  # D = L1 - L0 for every class, then its gt rows
        cost = log_not.sub_(torch.log(p).clamp_(min=LOG_CLAMP)).index_select(0, rows)  # (B * M, N)
    return cost.reshape(b, m, n).add_(total.unsqueeze(1))  # (B, M, N)
