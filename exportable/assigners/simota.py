"""SimOTA (YOLOX's label assignment), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K`` = ``candidate_topk`` (10), the static bound on every gt's dynamic k.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; points are cell centres
``(x, y)`` with one stride per point. Returns :class:`~exportable.assigners.result.AssignResult`
(``gt_index`` 0-based, -1 negative; SimOTA never ignores; ``labels`` = C for every non-positive).

The steps are mmdetection 3.3's ``SimOTAAssigner`` (= the old official YOLOX prior), numbered as in
``docs/algorithms.md`` §9.1:

2. geometric prior: ``in_box[g, n]`` (point strictly inside gt g) and ``in_ctr[g, n]`` (strictly inside
   the square ``centre(g) +- center_radius * stride``). Candidates: priors in ANY gt's box or square;
   the pair prior ``in_box & in_ctr`` (both) decides the penalty.
3. cost over candidates: ``cls_weight * sum_c BCE(score_c, onehot_c) + iou_weight * -log(IoU + eps)
   + penalty * not(pair prior)``, in float32.
4. dynamic k: ``k_g = max(1, int(sum of gt g's top-10 IoUs over the candidates))``.
5. each gt marks its ``k_g`` cheapest candidates (ties: lower index first, the package's rule).
6. a prior marked by several gts goes to ``argmin_g cost`` over ALL gt rows (ties: lower gt index), which
   need not be a gt that marked it (so a gt can end with more than k positives); no second round, so the
   losing gts keep fewer positives -- possibly none (``open-mmlab/mmdetection issue #8628``).
7. ``gt_index``, ``labels`` = the gt's class, ``overlaps`` = IoU with that gt (mmdetection fills -1e5
   elsewhere, we fill 0, as every package assigner does).

``variant="yolox"`` is the current official YOLOX (``get_geometry_constraint`` since YOLOX issue #1589):
centre square only (radius 1.5, no in-box test, candidates = priors in any square), penalty 1e6,
IoU-cost eps 1e-8. Explicit keyword arguments override a variant's defaults.

Targets (YOLOX loss): ``target_scores`` = IoU for positives (``dense_scores(C)`` gives one-hot x IoU,
the classification target), objectness target = ``result.positive`` (every prior is supervised),
box target = ``boxes``. ``weights`` is 1 everywhere.

How it stays fast and static (the peers' costs are dominated by an ``(N, M, C)`` BCE tensor):

- ``sum_c BCE(p_c, onehot(y)_c) = S - L0_y + L1_y`` with ``L0_c = -max(log(1 - p_c), -100)`` (BCE with
  target 0), ``L1_c = -max(log p_c, -100)`` (target 1) and ``S = sum_c L0_c``: a per-prior sum plus a
  gather of ``L1 - L0`` at the gt's class. ``(N, C)`` work once, ``(M, N)`` gathers, never ``(N, M, C)``.
  torch's ``binary_cross_entropy`` clamps its logs at -100 the same way; the sums differ from the naive
  ``(N, M, C)`` sum only by float32 rounding: ``|ours - naive| <= 1e-6 * (S + L1_y)`` (tested; measured
  at most 4e-7 of that scale, i.e. about 3e-5 on the ~80 of a C = 80 cost). The scale is S rather than
  the cost because ``S - L0_y`` cancels when ``p_y`` is near 1.
- dynamic k (step 4): the top-10 IoUs are summed in rank order, one add at a time, as mmdetection's
  column sum does (so ``int()`` truncates the very same float); non-candidates count as IoU 0.
- step 5 without a per-gt loop: one top-k of ``K = 10`` smallest costs per gt row, keep rank ``< k_g``.
- eager on the CPU goes one image at a time over that image's candidates only (gathered, as mmdetection
  does; about one image's ``(M, N)`` in memory), and step 6 lists the at most ``M * K`` marks, looking at
  every gt's cost only for priors marked twice. The exported graph (and eager on other devices) keeps all
  ``N`` priors, non-candidates at cost ``+inf``, with a dense ``(B, M, N)`` mark matrix. Same assignment
  (tested); no ``(N, M, C)`` tensor on either path.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_scalar,
    checks_enabled,
)
from exportable._checks import exporting as _exporting
from exportable.assigners._points import check_point_assigner_inputs
from exportable.assigners.result import NEGATIVE, AssignResult, empty_result
from exportable.batching import ensure_gt_rows
from exportable.boxes import _box_iou
from exportable.ordering import _topk

__all__ = ["SimOTAAssigner", "SIMOTA_VARIANTS", "simota_cls_cost"]

Variant = Literal["mmdet", "yolox"]

SIMOTA_VARIANTS: dict[str, dict[str, float | bool]] = {
    # mmdetection 3.3 SimOTAAssigner (= YOLOX before Jan 2023): box OR square candidates, box AND square prior
    "mmdet": {"center_radius": 2.5, "penalty": 1e5, "iou_eps": 1e-7, "in_box_prior": True},
    # YOLOX today (get_geometry_constraint / simota_matching): the 1.5-stride square only
    "yolox": {"center_radius": 1.5, "penalty": 1e6, "iou_eps": 1e-8, "in_box_prior": False},
}

LOG_CLAMP = -100.0  # torch.nn.functional.binary_cross_entropy clamps log(p) and log(1 - p) at -100


class SimOTAAssigner(nn.Module):
    """SimOTA: cost = classification BCE + 3 * IoU cost + a geometric penalty; dynamic k per gt.

    Args:
        center_radius: half-side of the centre square, in strides (mmdet 2.5; yolox 1.5).
        candidate_topk: how many top IoUs make a gt's dynamic k (10); also the static top-k width.
        iou_weight: weight of ``-log(IoU + eps)`` (3.0).
        cls_weight: weight of the classification cost (1.0).
        penalty: added to the cost of a (gt, prior) pair outside the pair prior (mmdet 1e5, yolox 1e6).
            Finite on purpose: a penalised prior can still be chosen when a gt's k exceeds its good ones.
        iou_eps: ``eps`` of ``-log(IoU + eps)`` (mmdet 1e-7, yolox 1e-8).
        in_box_prior: True (mmdet): candidates are priors in any gt box OR any centre square, the pair
            prior needs both; False (yolox): the centre square alone.
        variant: ``"mmdet"`` (default, mmdetection 3.3 = old YOLOX) or ``"yolox"`` (current YOLOX); selects
            the defaults of the arguments left as None.

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``. ``pred_scores`` are probabilities
    ``sqrt(sigmoid(cls) * sigmoid(obj))`` (what mmdetection 3.x passes); ``pred_boxes`` the decoded boxes.
    """

    def __init__(
        self,
        center_radius: float | None = None,
        candidate_topk: int = 10,
        iou_weight: float = 3.0,
        cls_weight: float = 1.0,
        penalty: float | None = None,
        iou_eps: float | None = None,
        in_box_prior: bool | None = None,
        variant: Variant = "mmdet",
    ) -> None:
        super().__init__()
        if variant not in SIMOTA_VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(SIMOTA_VARIANTS)}, got {variant!r}")
        base = SIMOTA_VARIANTS[variant]
        self.variant = variant
        self.center_radius = check_scalar(
            "center_radius", base["center_radius"] if center_radius is None else center_radius, low=0.0)
        if isinstance(candidate_topk, bool) or not isinstance(candidate_topk, int) or candidate_topk < 1:
            raise ValueError(f"candidate_topk: expected an int >= 1, got {candidate_topk!r}")
        self.candidate_topk = candidate_topk
        self.iou_weight = check_scalar("iou_weight", iou_weight, low=0.0)
        self.cls_weight = check_scalar("cls_weight", cls_weight, low=0.0)
        self.penalty = check_scalar("penalty", base["penalty"] if penalty is None else penalty, low=0.0)
        # The exporter runs with optimize=False, so a small eps survives (docs/export.md 3.1).
        self.iou_eps = check_scalar("iou_eps", base["iou_eps"] if iou_eps is None else iou_eps, low=0.0)
        self.in_box_prior = bool(base["in_box_prior"] if in_box_prior is None else in_box_prior)

    @classmethod
    def yolox(cls, **kwargs) -> SimOTAAssigner:
        """The current official YOLOX prior (radius 1.5, no in-box test, penalty 1e6, eps 1e-8)."""
        return cls(variant="yolox", **kwargs)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, center_radius={self.center_radius}, candidate_topk={self.candidate_topk}, "
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
            _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        if _exporting():
            return self._assign_batched(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        return self._assign_eager(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)

    # -- eager on CPU: one image at a time, on its candidate priors only -----------------------------
    def _assign_eager(self, points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask) -> AssignResult:
        b, n, c = pred_scores.shape
        if n == 0 or gt_boxes.shape[1] == 0:
            return empty_result(b, n, c, like=pred_boxes)
        if pred_scores.device.type != "cpu":  # on an accelerator the batched graph wins (no host syncs)
            return self._assign_batched(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        out = empty_result(b, n, c, like=pred_boxes)
        for i in range(b):
            real = gt_mask[i].nonzero().squeeze(1)  # (M_i,) the image's real gts, in order
            if real.numel() == 0:
                continue  # 1. no gts: every prior negative
            boxes = gt_boxes[i].index_select(0, real)  # (M_i, 4)
            labels = gt_labels[i].index_select(0, real)  # (M_i,)
            in_box, in_ctr = _geometry(points, strides, boxes, self.center_radius)  # (M_i, N) each
            # 2. candidates: mmdetection gathers them (valid_mask) and works on those columns only
            if self.in_box_prior:
                cand = (in_box | in_ctr).any(0)  # (N,)
                pair = in_box.logical_and_(in_ctr)  # (M_i, N)
            else:
                cand, pair = in_ctr.any(0), in_ctr  # (N,), (M_i, N)
            keep = cand.nonzero().squeeze(1)  # (N_v,)
            if keep.numel() == 0:
                continue  # no candidate prior: every prior negative
            scores, pboxes = pred_scores[i], pred_boxes[i]  # (N, C), (N, 4)
            if keep.numel() < n:
                pair = pair.index_select(1, keep)  # (M_i, N_v)
                scores, pboxes = scores.index_select(0, keep), pboxes.index_select(0, keep)  # (N_v, C), (N_v, 4)
            iou = _box_iou(boxes, pboxes)  # (M_i, N_v)
            cost = self._cost(scores[None], iou[None], labels[None], pair[None])[0]  # (M_i, N_v)
            match = _match_sparse(cost, iou, self.candidate_topk)  # (N_v,) 0..M_i-1 or -1
            pos = (match >= 0).nonzero().squeeze(1)  # (P,) among the candidates
            g = match.index_select(0, pos)  # (P,) local gt of each positive
            matched_iou = iou[g, pos]  # (P,)
            cols = keep.index_select(0, pos)  # (P,) among all N priors
            out.gt_index[i, cols] = real.index_select(0, g)
            out.labels[i, cols] = labels.index_select(0, g)
            out.boxes[i, cols] = boxes.index_select(0, g)
            out.overlaps[i, cols] = matched_iou
            out.target_scores[i, cols] = matched_iou
        return out

    # -- exported: the whole batch, static shapes ----------------------------------------------------
    def _assign_batched(self, points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask) -> AssignResult:
        c = pred_scores.shape[-1]
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        in_box, in_ctr = _geometry(points, strides, boxes, self.center_radius)  # (B, M', N) each
        real = mask.unsqueeze(2)  # (B, M', 1)
        in_box = in_box & real  # (B, M', N) padding is never a candidate
        in_ctr = in_ctr & real  # (B, M', N)
        # 2. candidates (any real gt) and the pair prior
        cand = (in_box | in_ctr).any(1) if self.in_box_prior else in_ctr.any(1)  # (B, N)
        pair = in_box & in_ctr if self.in_box_prior else in_ctr  # (B, M', N)
        iou = _box_iou(boxes, pred_boxes)  # (B, M', N)
        cost = self._cost(pred_scores, iou, labels, pair)  # (B, M', N)
        # Non-candidates and padded gts never get chosen; their IoUs count 0 in the dynamic k.
        usable = cand.unsqueeze(1) & real  # (B, M', N)
        cost = torch.where(usable, cost, float("inf"))  # (B, M', N)
        iou_k = torch.where(usable, iou, 0.0)  # (B, M', N)
        gt_index = _match(cost, iou_k, mask, self.candidate_topk)  # (B, N)
        positive = gt_index >= 0  # (B, N)
        safe = gt_index.clamp(min=0)  # (B, N)
        matched_iou = torch.gather(iou, 1, safe.unsqueeze(1)).squeeze(1)  # (B, N)
        matched_labels = torch.gather(labels, 1, safe)  # (B, N)
        matched_boxes = torch.gather(boxes, 1, safe.unsqueeze(-1).expand(-1, -1, 4))  # (B, N, 4)
        overlaps = torch.where(positive, matched_iou, 0.0)  # (B, N)
        return AssignResult(
            gt_index=gt_index,
            labels=torch.where(positive, matched_labels, c),
            boxes=torch.where(positive.unsqueeze(-1), matched_boxes, 0.0),
            overlaps=overlaps,
            target_scores=torch.where(positive, matched_iou, 0.0),  # (B, N) its own graph output
            weights=torch.ones_like(overlaps),
        )

    def _cost(self, scores: Tensor, iou: Tensor, labels: Tensor, pair: Tensor) -> Tensor:
        """3. ``cls_weight * cls + iou_weight * -log(IoU + eps) + penalty * not(pair)``, ``(B, M, N)`` float32."""
        cls_cost = simota_cls_cost(scores, labels)  # (B, M, N)
        iou_cost = torch.log(iou + self.iou_eps).neg_()  # (B, M, N)
        cost = cls_cost.mul_(self.cls_weight).add_(iou_cost.mul_(self.iou_weight))  # (B, M, N)
        return torch.where(pair, cost, cost + self.penalty)  # (B, M, N)


def simota_cls_cost(pred_scores: Float[Tensor, "B N C"], gt_labels: Int[Tensor, "B M"]) -> Float[Tensor, "B M N"]:
    """``sum_c BCE(p_c, onehot(y_g)_c)`` for every (gt, prior) pair without an ``(N, M, C)`` tensor.

    ``= S - L0_y + L1_y``: ``S = sum_c L0_c`` once per prior, then one row gather of ``D = L1 - L0``
    (the ``(C, N)`` layout makes it a copy of whole rows). ``L0 = -max(log(1 - p), -100)`` and
    ``L1 = -max(log p, -100)`` are torch's ``binary_cross_entropy`` with target 0 and 1, clamps included.
    float32 in, float32 out; equal to the naive sum within float32 rounding (module docstring).
    """
    b, _, c = pred_scores.shape
    m = gt_labels.shape[1]
    p = pred_scores.float().transpose(1, 2).contiguous()  # (B, C, N) rows per class
    log_not = torch.log(1.0 - p).clamp_(min=LOG_CLAMP)  # (B, C, N) = -L0
    log_p = torch.log(p).clamp_(min=LOG_CLAMP)  # (B, C, N) = -L1
    total = log_not.sum(1).neg_()  # (B, N) S = sum_c L0_c
    diff = log_not.sub_(log_p)  # (B, C, N) D = L1 - L0
    rows = gt_labels + c * torch.arange(b, device=gt_labels.device).unsqueeze(1)  # (B, M) row of (b, y_g)
    picked = diff.reshape(-1, diff.shape[-1]).index_select(0, rows.reshape(-1))  # (B * M, N)
    return picked.reshape(b, m, -1).add_(total.unsqueeze(1))  # (B, M, N)


def _geometry(points: Tensor, strides: Tensor, gt_boxes: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """2. ``in_box`` and ``in_ctr``, each ``(..., M, N)`` bool, with mmdetection's float32 arithmetic.

    ``x > x1`` is the sign of mmdetection's ``x - x1 > 0`` (a float difference is 0 only for equal
    floats); the centre square's sides are ``cx -+ radius * stride`` with ``cx = (x1 + x2) / 2``.
    """
    px, py = points[:, 0].contiguous(), points[:, 1].contiguous()  # (N,), (N,)
    x1, y1, x2, y2 = (v.unsqueeze(-1) for v in gt_boxes.unbind(-1))  # 4 x (..., M, 1)
    in_box = (px > x1) & (py > y1) & (x2 > px) & (y2 > py)  # (..., M, N)
    r = strides * radius  # (N,)
    cx = (x1 + x2) / 2.0  # (..., M, 1)
    cy = (y1 + y2) / 2.0  # (..., M, 1)
    in_ctr = (px > cx - r) & (py > cy - r) & (cx + r > px) & (cy + r > py)  # (..., M, N)
    return in_box, in_ctr


def _dynamic_k(iou: Tensor, k_max: int) -> Tensor:
    """4. ``max(1, int(sum of the top-k_max IoUs))`` per gt row of ``iou (..., M, N)`` (0 = not a candidate).

    The top IoUs are added one at a time in rank order, as mmdetection's column sum does, so ``int()``
    truncates the very same float; ``k_max`` zero columns stand in for priors that do not exist.
    Returns float ``(..., M)``.
    """
    n = iou.shape[-1]
    top = torch.topk(iou, torch.sym_min(k_max, n), dim=-1).values  # (..., M, K') largest first
    top = torch.cat([top, iou.new_zeros(*iou.shape[:-1], k_max)], dim=-1)  # (..., M, K' + K)
    total = top[..., 0]  # (..., M)
    for j in range(1, k_max):
        total = total + top[..., j]  # (..., M)
    return torch.floor(total).clamp(min=1.0)  # (..., M) int() truncation (total >= 0), at least 1


def _match(cost: Tensor, iou: Tensor, mask: Tensor, k_max: int) -> Tensor:
    """Steps 4-6, batched and static: ``cost (B, M, N)`` (``+inf`` = never), ``iou (B, M, N)`` (0 where not
    a candidate), ``mask (B, M)``. Returns ``gt_index (B, N)`` (-1 unmatched)."""
    k = torch.where(mask, _dynamic_k(iou, k_max), 0.0)  # (B, M) padded gts choose nothing
    # 5. the k cheapest priors per gt: one top-k of K = 10, ties to the lower index, keep rank < k
    _, idx = _topk(cost, k_max, dim=-1, largest=False)  # (B, M, K')
    ranks = torch.arange(idx.shape[-1], device=cost.device, dtype=k.dtype)  # (K',)
    chosen = (ranks < k.unsqueeze(-1)) & (torch.gather(cost, -1, idx) < float("inf"))  # (B, M, K')
    marks = torch.zeros_like(cost).scatter_(-1, idx, chosen.to(cost.dtype))  # (B, M, N) 1 = marked
    # 6. conflicts: a prior marked by several gts goes to the cheapest gt over ALL rows (first on ties)
    count = marks.sum(1)  # (B, N)
    only = marks.argmax(1)  # (B, N) the marking gt when count == 1
    cheapest = cost.argmin(1)  # (B, N)
    gt_index = torch.where(count > 1.0, cheapest, only)  # (B, N)
    return torch.where(count > 0.0, gt_index, NEGATIVE)  # (B, N)


def _match_sparse(cost: Tensor, iou: Tensor, k_max: int) -> Tensor:
    """Steps 4-6 for one image in eager: ``cost (M, N)``, ``iou (M, N)``, every column a candidate.

    Same result as :func:`_match`, without ``(M, N)`` passes after the top-k: the at most ``M * K`` marks
    are listed, and only the priors marked twice or more look at every gt's cost.
    """
    m, n = cost.shape
    k = _dynamic_k(iou, k_max)  # (M,)
    _, idx = _topk(cost, k_max, dim=-1, largest=False)  # (M, K')
    chosen = torch.arange(idx.shape[-1], dtype=k.dtype) < k.unsqueeze(-1)  # (M, K')
    prior = idx[chosen]  # (P,) marked priors, gt by gt
    gt = torch.arange(m).unsqueeze(1).expand_as(idx)[chosen]  # (P,) the gt that marked it
    gt_index = torch.full((n,), NEGATIVE, dtype=torch.int64)  # (N,)
    gt_index[prior] = gt  # a prior marked twice gets one of them here, fixed just below
    clash = (torch.bincount(prior, minlength=n) > 1).nonzero().squeeze(1)  # (Q,)
    if clash.numel():
        gt_index[clash] = cost.index_select(1, clash).argmin(0)  # (Q,) cheapest over ALL gts, first on ties
    return gt_index


def _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask) -> None:
    check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)


