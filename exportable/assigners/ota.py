"""OTA (Optimal Transport Assignment), with SimOTA's cost, solved by Sinkhorn iterations; batched, exportable.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``T`` Sinkhorn iterations (a constructor int: the exported graph unrolls them). Boxes are
``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; points are cell centres with one stride each.
Returns :class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; nothing is
ignored; ``target_scores`` 1 for positives, OTA's hard classification target).

OTA (Ge et al., "OTA: Optimal Transport Assignment for Object Detection", CVPR 2021, §3) treats assignment as
transport: every gt is a supplier of ``k`` units of "positive label", the background a supplier of the rest,
every prior a demander of exactly one unit; the cheapest plan says who labels whom. SimOTA (YOLOX) keeps the
cost and the dynamic k and replaces the transport by a top-k per gt. Here the cost and k are SimOTA's
(:class:`~exportable.assigners.simota.SimOTAAssigner`, mmdetection's defaults), so the two differ only in
how they solve it. Steps as in ``docs/algorithms.md`` §18.1:

1. no gts: every prior negative.
2. SimOTA's geometric prior: candidates (in any gt's box or centre square) and the pair prior.
3. the cost: gt rows ``cls_weight * BCE over all classes + iou_weight * -log(IoU + eps) + penalty * not(pair
   prior)`` (SimOTA's), the background row ``cls_weight * sum_c BCE(p_c, 0)`` (the cost of "no object");
   non-candidates are the background's alone (gt cost ``1e10``, and never positive).
4. supplies: gt g ships ``k_g = max(1, int(sum of its top-10 candidate IoUs))`` (SimOTA's dynamic k), the
   background ``N - sum k`` (at least 0); each prior takes 1.
5. ``T`` Sinkhorn iterations of the entropy-regularised problem in log space, float64, regularisation
   ``sinkhorn_eps`` (OTA: 0.1, 50 iterations): the prior potentials, then the supplier potentials; the
   plan ``pi = exp(a_i + b_n - cost / eps)``.
6. as the authors' code: each row of the plan divided by its maximum, then each prior goes to the row with
   the largest value (the first on ties; the background is the last row). A prior won by a gt is positive.
7. ``gt_index``, ``labels`` = the gt's class, ``overlaps`` = the IoU of the prediction with it.

As ``sinkhorn_eps`` goes to 0 the plan tends to an optimal integral plan: each gt gets exactly ``k_g`` priors,
the assignment a Hungarian matching of gts repeated ``k_g`` times would give. SimOTA's top-k can leave a gt
that loses a conflict with fewer priors, or none; the transport moves it to its next choice instead.
Eager goes image by image (one image's ``(M + 1, N)`` plan in memory); the graph does the batch at once.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_scalar, checks_enabled, exporting
from exportable.assigners._dynamic_k import dynamic_k
from exportable.assigners._points import check_point_assigner_inputs
from exportable.assigners.result import NEGATIVE, AssignResult
from exportable.assigners.simota import LOG_CLAMP, simota_cls_cost
from exportable.batching import ensure_gt_rows
from exportable.boxes import _box_iou, _points_in_boxes, _points_near_centers

__all__ = ["OTAAssigner", "sinkhorn"]

NEVER = 1e10  # a gt's cost at a non-candidate: finite, so a row with nothing else still ships its units


class OTAAssigner(nn.Module):
    """OTA: SimOTA's cost and dynamic k, solved as optimal transport by ``iterations`` Sinkhorn steps.

    Args:
        center_radius, candidate_topk, iou_weight, cls_weight, penalty, iou_eps, in_box_prior: SimOTA's
            (mmdetection 3.3's defaults: 2.5, 10, 3.0, 1.0, 1e5, 1e-7, True).
        sinkhorn_eps: the entropic regularisation (0.1, OTA's; smaller is closer to the exact transport and
            needs more iterations).
        iterations: the number of Sinkhorn iterations (50, OTA's); a constructor int, unrolled when exported.

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``: SimOTA's inputs (``pred_scores`` probabilities).
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
        sinkhorn_eps: float = 0.1,
        iterations: int = 50,
    ) -> None:
        super().__init__()
        self.center_radius = check_scalar("center_radius", center_radius, low=0.0)
        for name, value in (("candidate_topk", candidate_topk), ("iterations", iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        self.candidate_topk, self.iterations = candidate_topk, iterations
        self.iou_weight = check_scalar("iou_weight", iou_weight, low=0.0)
        self.cls_weight = check_scalar("cls_weight", cls_weight, low=0.0)
        self.penalty = check_scalar("penalty", penalty, low=0.0)
        self.iou_eps = check_scalar("iou_eps", iou_eps, low=0.0)
        self.in_box_prior = bool(in_box_prior)
        self.sinkhorn_eps = check_scalar("sinkhorn_eps", sinkhorn_eps)
        if self.sinkhorn_eps <= 0:
            raise ValueError(f"sinkhorn_eps: must be > 0, got {sinkhorn_eps}")

    def extra_repr(self) -> str:
        return (f"center_radius={self.center_radius}, candidate_topk={self.candidate_topk}, iou_weight="
                f"{self.iou_weight}, cls_weight={self.cls_weight}, penalty={self.penalty:g}, iou_eps={self.iou_eps:g}, "
                f"in_box_prior={self.in_box_prior}, sinkhorn_eps={self.sinkhorn_eps}, iterations={self.iterations}")

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
        args = (pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        if exporting() or pred_scores.shape[0] <= 1:
            return self._assign(points, strides, *args)
        parts = [self._assign(points, strides, *(a[i : i + 1] for a in args)) for i in range(pred_scores.shape[0])]
        return AssignResult(*(torch.cat(field, dim=0) for field in zip(*parts)))  # one image's plan at a time

    def _assign(self, points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask) -> AssignResult:
        c = pred_scores.shape[-1]
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        plan, iou, cand = self.transport_plan(points, strides, pred_scores, pred_boxes, boxes, labels, mask)
        m = boxes.shape[1]
        # 6. each row over its maximum (the authors' rescaling), then the largest row per prior
        scaled = plan / plan.amax(2, keepdim=True).clamp(min=torch.finfo(plan.dtype).tiny)  # (B, M'+1, N)
        winner = scaled.argmax(1)  # (B, N) the first on ties; M' = the background
        positive = (winner < m) & cand  # (B, N)
        gt_index = torch.where(positive, winner, NEGATIVE)  # (B, N)
        # 7. the gt, its class, the IoU with it
        matched_iou = torch.gather(iou, 1, winner.clamp(max=m - 1).unsqueeze(1)).squeeze(1)  # (B, N)
        overlaps = torch.where(positive, matched_iou, 0.0)  # (B, N)
        return AssignResult.from_gt_index(gt_index, boxes, labels, c, overlaps=overlaps)

    def transport_plan(self, points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask):
        """Steps 2-5: ``plan (B, M + 1, N)`` float64 (the background is the last row), ``iou (B, M, N)`` and
        ``candidates (B, N)``. Inputs as ``forward`` with at least one (possibly masked) gt row."""
        n = points.shape[0]
        real = gt_mask.unsqueeze(2)  # (B, M, 1)
        # 2. SimOTA's geometric prior
        gts = gt_boxes.unsqueeze(2)  # (B, M, 1, 4)
        in_box = _points_in_boxes(points, gts, aligned=True)  # (B, M, N)
        in_ctr = _points_near_centers(points, gts, strides * self.center_radius, aligned=True)  # (B, M, N)
        in_box, in_ctr = in_box & real, in_ctr & real  # (B, M, N) padding is never near anything
        cand = (in_box | in_ctr).any(1) if self.in_box_prior else in_ctr.any(1)  # (B, N)
        pair = in_box & in_ctr if self.in_box_prior else in_ctr  # (B, M, N)
        # 3. the cost: SimOTA's for (gt, candidate), the background's "no object" for every prior
        iou = _box_iou(gt_boxes, pred_boxes)  # (B, M, N)
        safe_labels = torch.where(gt_mask, gt_labels, 0)  # (B, M) padding may hold any label
        cls = simota_cls_cost(pred_scores, safe_labels)  # (B, M, N)
        cost = cls * self.cls_weight + torch.log(iou + self.iou_eps).neg() * self.iou_weight  # (B, M, N)
        cost = torch.where(pair, cost, cost + self.penalty)  # (B, M, N)
        cost = torch.where(cand.unsqueeze(1), cost, NEVER)  # (B, M, N) non-candidates: background only
        log_not = torch.log(1.0 - pred_scores).clamp(min=LOG_CLAMP)  # (B, N, C) -BCE(p, 0), torch's clamp
        background = log_not.sum(2).neg() * self.cls_weight  # (B, N)
        cost = torch.cat([cost, background.unsqueeze(1)], dim=1).to(torch.float64)  # (B, M+1, N)
        # 4. supplies: dynamic k per real gt, the rest to the background; demands: 1 per prior
        k = dynamic_k(torch.where(cand.unsqueeze(1) & real, iou, 0.0), self.candidate_topk)  # (B, M) int64
        k = torch.where(gt_mask, k.to(iou.dtype), 0.0)  # (B, M) padded gts supply nothing
        rest = (n - k.sum(1, keepdim=True)).clamp(min=0.0)  # (B, 1)
        supply = torch.cat([k, rest], dim=1).to(torch.float64)  # (B, M+1)
        demand = torch.ones_like(cost[:, 0])  # (B, N)
        # 5. Sinkhorn in log space
        return sinkhorn(cost, supply, demand, self.sinkhorn_eps, self.iterations), iou, cand


def sinkhorn(cost: Tensor, supply: Tensor, demand: Tensor, eps: float, iterations: int) -> Tensor:
    """Entropic optimal transport by ``iterations`` log-space Sinkhorn steps: ``cost (B, R, N)``, ``supply (B, R)``,
    ``demand (B, N)`` (rows with supply 0 get nothing) -> ``plan (B, R, N)``, in the dtype of ``cost``.

    With ``K = -cost / eps`` and scaled potentials ``a (B, R)``, ``b (B, N)``: ``b = log(demand) - lse_rows(a + K)``,
    then ``a = log(supply) - lse_cols(b + K)`` (the columns first, as OTA's code); ``plan = exp(a + b + K)``.
    After each step the row sums equal ``supply``; the column sums converge to ``demand``.
    """
    log_k = cost / -eps  # (B, R, N)
    log_supply, log_demand = supply.log(), demand.log()  # (B, R), (B, N) log 0 = -inf: an empty row
    a = torch.zeros_like(log_supply)  # (B, R)
    b = torch.zeros_like(log_demand)  # (B, N)
    for _ in range(iterations):  # a constructor int: unrolled in the exported graph
        b = log_demand - torch.logsumexp(a.unsqueeze(2) + log_k, dim=1)  # (B, N)
        a = log_supply - torch.logsumexp(b.unsqueeze(1) + log_k, dim=2)  # (B, R)
    return torch.exp(a.unsqueeze(2) + b.unsqueeze(1) + log_k)  # (B, R, N)
