"""Hungarian matching (DETR's one-to-one assignment), batched and exportable.

Shape shorthand: ``B`` images, ``Q`` queries (the decoder's predictions), ``M`` gts per image (padded),
``C`` classes. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; ``image_sizes
(B, 2)`` int64 rows are ``(H, W)``. Returns :class:`~exportable.assigners.result.AssignResult` over the
``Q`` queries (``gt_index`` 0-based, -1 for a query left to "no object"; nothing is ignored).

The steps are mmdetection 3.3's ``HungarianAssigner`` with the match costs of its Deformable DETR / DINO
configs, numbered as in ``docs/algorithms.md`` §17.1:

1. no gts: every query is "no object".
2. the cost of every (query, gt) pair, :class:`HungarianCost`, ``(B, Q, M)``:

   - classification, ``cls_weight`` (2.0) x mmdetection's ``FocalLossCost`` on the probabilities
     ``p = pred_scores`` (sigmoid outputs): ``alpha (1 - p)^gamma (-log(p + eps)) - (1 - alpha) p^gamma
     (-log(1 - p + eps))`` at the gt's class, alpha 0.25, gamma 2, eps 1e-12. ``cls_cost="prob"`` is DETR's
     softmax cost ``-p`` at the gt's class (``HungarianCost.detr()``: weight 1);
   - box L1, ``l1_weight`` (5.0) x the L1 distance of the two boxes, each normalised by the image size
     ``(W, H, W, H)``, as ``(cx, cy, w, h)`` (``box_format="cxcywh"``, DETR's) or ``(x1, y1, x2, y2)``;
   - GIoU, ``giou_weight`` (2.0) x ``-GIoU(pred, gt)`` (mmdetection's eps 1e-6).

   Padded gts' columns hold 0 and are never matched.
3. the minimum-cost one-to-one matching of queries and real gts (:func:`~exportable.lsa.
   linear_sum_assignment`): scipy's ``linear_sum_assignment`` per image in eager, as every peer; in the
   exported graph a batched exact shortest-augmenting-path solver (an ONNX ``Loop``, ``exportable/lsa.py``).
   Both reach the same optimal total; they agree pair for pair unless several matchings share it.
4. matched queries take their gt: ``labels`` its class, ``boxes`` its box, ``overlaps`` the IoU of the
   query's box with it, ``target_scores`` 1; every other query is "no object" (``labels`` = C).

With more gts than queries, ``Q`` gts are matched and the rest go unmatched (the cheapest such choice).
Eager rejects a NaN or inf cost with a ``ValueError`` (scipy's own failure); an exported graph cannot
raise, so check the inputs upstream.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_boxes,
    check_image_sizes,
    check_probabilities,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable.assigners.result import AssignResult
from exportable.batching import check_gt_batch, ensure_gt_rows
from exportable.boxes import _box_giou, _box_iou
from exportable.lsa import Solver, linear_sum_assignment
from exportable.numerics import power

__all__ = ["HungarianAssigner", "HungarianCost"]

ClsCost = Literal["focal", "prob"]
BoxFormat = Literal["cxcywh", "xyxy"]


class HungarianCost(nn.Module):
    """Step 2: DETR's matching cost ``(B, Q, M)``, classification + box L1 + GIoU (mmdetection 3.3's terms).

    Args:
        cls_weight: weight of the classification cost (2.0, Deformable DETR / DINO; DETR 1.0).
        l1_weight: weight of the normalised box L1 cost (5.0).
        giou_weight: weight of the ``-GIoU`` cost (2.0).
        alpha, gamma, eps: the focal cost's parameters (0.25, 2, 1e-12, mmdetection's ``FocalLossCost``).
        cls_cost: ``"focal"`` (sigmoid heads) or ``"prob"`` (DETR: ``-p`` of a softmax head).
        box_format: ``"cxcywh"`` (DETR: centres and sizes over the image size) or ``"xyxy"``.

    ``forward(pred_scores (B, Q, C), pred_boxes (B, Q, 4), gt_boxes (B, M, 4), gt_labels (B, M), gt_mask (B, M),
    image_sizes (B, 2)) -> cost (B, Q, M)``; padded gts' columns are 0.
    """

    def __init__(
        self,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        eps: float = 1e-12,
        cls_cost: ClsCost = "focal",
        box_format: BoxFormat = "cxcywh",
    ) -> None:
        super().__init__()
        self.cls_weight = check_scalar("cls_weight", cls_weight, low=0.0)
        self.l1_weight = check_scalar("l1_weight", l1_weight, low=0.0)
        self.giou_weight = check_scalar("giou_weight", giou_weight, low=0.0)
        self.alpha = check_scalar("alpha", alpha, low=0.0, high=1.0)
        self.gamma = check_scalar("gamma", gamma, low=0.0)
        self.eps = check_scalar("eps", eps, low=0.0)
        if cls_cost not in ("focal", "prob"):
            raise ValueError(f"cls_cost: expected 'focal' or 'prob', got {cls_cost!r}")
        if box_format not in ("cxcywh", "xyxy"):
            raise ValueError(f"box_format: expected 'cxcywh' or 'xyxy', got {box_format!r}")
        self.cls_cost, self.box_format = cls_cost, box_format

    @classmethod
    def detr(cls, **kwargs) -> HungarianCost:
        """DETR's own costs: ``-p`` of a softmax head (weight 1), L1 5, GIoU 2."""
        return cls(**{"cls_cost": "prob", "cls_weight": 1.0, **kwargs})

    def extra_repr(self) -> str:
        return (f"cls_cost={self.cls_cost!r}, cls_weight={self.cls_weight}, l1_weight={self.l1_weight}, "
                f"giou_weight={self.giou_weight}, alpha={self.alpha}, gamma={self.gamma}, eps={self.eps:g}, "
                f"box_format={self.box_format!r}")

    def forward(
        self,
        pred_scores: Float[Tensor, "B Q C"],
        pred_boxes: Float[Tensor, "B Q 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        image_sizes: Int[Tensor, "B 2"],
    ) -> Float[Tensor, "B Q M"]:
        if checks_enabled():
            check_hungarian_inputs(pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, image_sizes)
        return self._cost(pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, image_sizes)

    def _cost(self, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, image_sizes) -> Tensor:
        b, q, _ = pred_scores.shape
        m = gt_boxes.shape[1]
        labels = torch.where(gt_mask, gt_labels, 0)  # (B, M) padding may hold any label
        # classification: each query's probability at each gt's class, then the cost of it. mmdetection computes
        # the cost of every class and gathers after; the arithmetic is elementwise, so gathering first gives the
        # same bits with M instead of C columns
        p = torch.gather(pred_scores, 2, labels.unsqueeze(1).expand(b, q, m))  # (B, Q, M)
        if self.cls_cost == "focal":  # mmdetection's FocalLossCost, same operation order
            neg = -(1 - p + self.eps).log() * (1 - self.alpha) * power(p, self.gamma)  # (B, Q, M)
            pos = -(p + self.eps).log() * self.alpha * power(1 - p, self.gamma)  # (B, Q, M)
            cls = (pos - neg) * self.cls_weight  # (B, Q, M)
        else:  # ClassificationCost: -softmax probability
            cls = -p * self.cls_weight  # (B, Q, M)
        # box L1 over the image size, on normalised (cx, cy, w, h) or (x1, y1, x2, y2)
        factor = image_sizes.flip(1).repeat(1, 2).to(pred_boxes.dtype).unsqueeze(1)  # (B, 1, 4) (W, H, W, H)
        pred, gt = _to_format(pred_boxes, self.box_format), _to_format(gt_boxes, self.box_format)  # (B, *, 4)
        pred = (pred / factor).transpose(1, 2).unsqueeze(3)  # (B, 4, Q, 1) coordinates first: onnxruntime
        gt = gt.div(factor).transpose(1, 2).unsqueeze(2)  # (B, 4, 1, M) broadcasts a 4-wide last axis slowly
        l1 = (pred - gt).abs_().sum(1)  # (B, Q, M)
        # GIoU
        giou = -_box_giou(pred_boxes, gt_boxes)  # (B, Q, M)
        cost = cls + l1 * self.l1_weight + giou * self.giou_weight  # (B, Q, M)
        return torch.where(gt_mask.unsqueeze(1), cost, 0.0)  # (B, Q, M) padded gts: 0


def _to_format(boxes: Tensor, box_format: str) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` (mmdetection's ``bbox_xyxy_to_cxcywh``) or unchanged."""
    if box_format == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)  # 4 x (B, *)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)  # (B, *, 4)


class HungarianAssigner(nn.Module):
    """DETR's one-to-one matching: the :class:`HungarianCost` matrix, then the minimum-cost matching.

    Args: those of :class:`HungarianCost` (the paper's and mmdetection's defaults), plus
        solver: ``"auto"`` (scipy in eager, the exact ONNX Loop solver in an exported graph), ``"scipy"`` or
            ``"graph"`` (the exported solver, also in eager; for tests and devices without a host round trip).

    ``forward(pred_scores (B, Q, C), pred_boxes (B, Q, 4), gt_boxes (B, M, 4), gt_labels (B, M), gt_mask (B, M),
    image_sizes (B, 2)) -> AssignResult`` over the Q queries. ``pred_scores`` are probabilities (sigmoid for the
    focal cost, softmax without the no-object column for ``cls_cost="prob"``), ``pred_boxes`` the decoded boxes
    in pixels of the image whose ``(H, W)`` is ``image_sizes``.
    """

    def __init__(
        self,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        eps: float = 1e-12,
        cls_cost: ClsCost = "focal",
        box_format: BoxFormat = "cxcywh",
        solver: Solver = "auto",
    ) -> None:
        super().__init__()
        self.cost = HungarianCost(cls_weight, l1_weight, giou_weight, alpha, gamma, eps, cls_cost, box_format)
        if solver not in ("auto", "scipy", "graph"):
            raise ValueError(f"solver: expected 'auto', 'scipy' or 'graph', got {solver!r}")
        self.solver = solver

    @classmethod
    def detr(cls, **kwargs) -> HungarianAssigner:
        """DETR's own costs: ``-p`` of a softmax head (weight 1), L1 5, GIoU 2."""
        return cls(**{"cls_cost": "prob", "cls_weight": 1.0, **kwargs})

    def extra_repr(self) -> str:
        return f"solver={self.solver!r}"

    def forward(
        self,
        pred_scores: Float[Tensor, "B Q C"],
        pred_boxes: Float[Tensor, "B Q 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
        image_sizes: Int[Tensor, "B 2"],
    ) -> AssignResult:
        if checks_enabled():
            check_hungarian_inputs(pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, image_sizes)
        c = pred_scores.shape[-1]
        # 1. no gts: a masked row keeps every reduction defined; with no real gt nothing is matched
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        # 2. the cost matrix
        cost = self.cost._cost(pred_scores, pred_boxes, boxes, labels, mask, image_sizes)  # (B, Q, M')
        # 3. the minimum-cost matching (eager first rejects a NaN / inf cost with a clear error, not scipy's)
        gt_index = linear_sum_assignment(cost, mask, solver=self.solver)  # (B, Q) -1 unmatched
        # 4. matched queries take their gt; the IoU of each query's box with its gt
        safe = gt_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)  # (B, Q, 4)
        matched = torch.gather(boxes, 1, safe)  # (B, Q, 4)
        iou = _box_iou(pred_boxes, matched, aligned=True)  # (B, Q)
        overlaps = torch.where(gt_index >= 0, iou, 0.0)  # (B, Q)
        return AssignResult.from_gt_index(gt_index, boxes, labels, c, overlaps=overlaps)


def check_hungarian_inputs(pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, image_sizes) -> None:
    """Shapes, dtypes, NaN, probabilities, valid boxes, gt classes in ``[0, C)``, image sizes > 0."""
    check_probabilities("pred_scores", pred_scores)
    check_shape("pred_scores", pred_scores, ("B", "Q", "C"))
    b, q, c = pred_scores.shape
    if c < 1:
        raise ValueError(f"pred_scores: need at least one class (C >= 1), got shape {tuple(pred_scores.shape)}")
    check_boxes("pred_boxes", pred_boxes, ndim=3)
    check_shape("pred_boxes", pred_boxes, (b, q, 4))
    check_gt_batch(gt_boxes, gt_labels, gt_mask, num_classes=c)
    if gt_boxes.shape[0] != b:
        raise ValueError(f"gt_boxes: batch {gt_boxes.shape[0]} does not match pred_scores' B = {b}")
    check_image_sizes("image_sizes", image_sizes, b)
    if image_sizes.numel() and bool((image_sizes <= 0).any()):
        raise ValueError("image_sizes: every (H, W) must be > 0: the L1 cost divides by them")
