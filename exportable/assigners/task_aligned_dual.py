"""YOLOv10's consistent dual assignment: one-to-many and one-to-one task alignment from one metric, in one pass.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K = min(topk, N)``. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``;
points are cell centres ``(x, y)``. Returns :class:`DualAssignResult`: two
:class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; ``labels`` = C for
every non-positive).

YOLOv10 trains two heads: a one-to-many head (ultralytics' TAL with topk 10: several positives per object,
rich supervision, needs NMS at inference) and a one-to-one head (the same TAL with topk 1: at most one
positive per object, so its predictions need no NMS). Its "consistent matching metric" gives both the same
``t = s^0.5 * CIoU^6``, so an object's one-to-one positive is the best-aligned of its one-to-many candidates.
ultralytics' ``E2EDetectLoss`` runs ``v8DetectionLoss(tal_topk=10)`` and ``v8DetectionLoss(tal_topk=1)``;
YOLO26's ``E2ELoss`` uses ``tal_topk=7, tal_topk2=1`` for the one-to-one branch (:meth:`yolo26`).

Steps (``docs/algorithms.md`` §10.8), on one set of predictions:

1.-3. ultralytics' steps 1-3 once (:class:`~exportable.assigners.task_aligned_ultralytics.
   UltralyticsTaskAlignedAssigner`): in-gt (STAL) candidates, CIoU and ``t`` on them, each gt's top-``topk``
   list ordered best first (ties: lower point index), so its first ``one_to_one_topk`` entries are the
   one-to-one branch's top-k.
4.-7. ultralytics' steps 4-7 twice: on the whole lists (one-to-many, ``topk2 = topk``) and on their first
   ``one_to_one_topk`` entries (one-to-one, with its ``one_to_one_topk2``).

Each branch equals :class:`~exportable.assigners.task_aligned_ultralytics.UltralyticsTaskAlignedAssigner`
run alone with its own ``topk`` / ``topk2`` (tested). In training, each head's own predictions are assigned
by its branch; on one head's predictions this module shows both assignments of the same metric (the
notebook's view, and one exported graph for a deployer who needs both). ``strides`` is not read.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable.assigners._points import point_assigner_gt_rows
from exportable.assigners.result import AssignResult, empty_result
from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner
from exportable.box_pairs import PointBlocks

__all__ = ["DualAssignResult", "DualTaskAlignedAssigner"]


class DualAssignResult(NamedTuple):
    """The two assignments of one batch."""

    one_to_many: AssignResult
    one_to_one: AssignResult


class DualTaskAlignedAssigner(nn.Module):
    """YOLOv10's dual assignment: ultralytics' TAL with ``topk`` (one-to-many) and with ``one_to_one_topk``
    (one-to-one) on the same metric and the same predictions.

    Args:
        topk: one-to-many candidates per gt (10).
        one_to_one_topk: one-to-one candidates per gt (1; at most ``topk``).
        one_to_one_topk2: the one-to-one branch's second selection (None: ``one_to_one_topk``, off).
        alpha, beta, num_classes, eps, center_margin, stal_side: as
            :class:`~exportable.assigners.task_aligned_ultralytics.UltralyticsTaskAlignedAssigner` (0.5, 6, None,
            1e-9, 1e-9, 16), shared by both branches.

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> DualAssignResult``.
    """

    def __init__(
        self,
        topk: int = 10,
        one_to_one_topk: int = 1,
        one_to_one_topk2: int | None = None,
        alpha: float = 0.5,
        beta: float = 6.0,
        num_classes: int | None = None,
        eps: float = 1e-9,
        center_margin: float = 1e-9,
        stal_side: float = 16.0,
    ) -> None:
        super().__init__()
        self.tal = UltralyticsTaskAlignedAssigner(topk, alpha, beta, num_classes, eps, center_margin, stal_side)
        one = UltralyticsTaskAlignedAssigner(one_to_one_topk, topk2=one_to_one_topk2)  # checks both
        if one_to_one_topk > topk:
            raise ValueError(f"one_to_one_topk: must be <= topk ({topk}), got {one_to_one_topk}")
        self.one_to_one_topk, self.one_to_one_topk2 = one.topk, one.topk2

    @classmethod
    def yolov10(cls, **kwargs) -> DualTaskAlignedAssigner:
        """YOLOv10 / ultralytics ``E2EDetectLoss`` (the defaults): one-to-many topk 10, one-to-one topk 1."""
        return cls(**kwargs)

    @classmethod
    def yolo26(cls, **kwargs) -> DualTaskAlignedAssigner:
        """YOLO26 / ultralytics ``E2ELoss``: one-to-one topk 7 then topk2 1."""
        return cls(**{"one_to_one_topk": 7, "one_to_one_topk2": 1, **kwargs})

    def extra_repr(self) -> str:
        return f"one_to_one_topk={self.one_to_one_topk}, one_to_one_topk2={self.one_to_one_topk2}"

    def forward(
        self,
        points: Float[Tensor, "N 2"],
        strides: Float[Tensor, " N"],
        pred_scores: Float[Tensor, "B N C"],
        pred_boxes: Float[Tensor, "B N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
    ) -> DualAssignResult:
        tal = self.tal
        num_classes, rows = point_assigner_gt_rows(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels,
                                                   gt_mask, num_classes=tal.num_classes)
        if rows is None:
            empty = empty_result(pred_scores.shape[0], 0, num_classes, like=pred_boxes)  # no points: nothing to assign
            return DualAssignResult(empty, empty)
        boxes, labels, mask = rows  # (B, M', 4), (B, M'), (B, M')
        out = tal._in_chunks(self._assign, points, gt_boxes.shape[1],
                             *tal._per_box(pred_scores, pred_boxes, boxes, labels, mask))  # 6 x (B, N)
        # 6. outputs of each branch: the matched gt's box and class (7.'s t_hat as the target score).
        many, one = (AssignResult.from_gt_index(gt_index, boxes, labels, num_classes, overlaps=overlaps,
                                                target_scores=target)
                     for gt_index, overlaps, target in (out[:3], out[3:]))
        return DualAssignResult(many, one)

    def _assign(self, points: Tensor, blocks: PointBlocks, *batch: Tensor) -> tuple[Tensor, ...]:
        """Steps 1-3 once, 4-7 per branch, on a batch of the ultralytics assigner's ``_per_box`` tensors:
        ``gt_index``, ``overlaps``, ``t_hat`` of each, ``(B, N)`` each."""
        tal, k1 = self.tal, self.one_to_one_topk
        # 1.-3. candidates, CIoU, t and each gt's top-K list, best first.
        scored = tal._top_k(blocks, *batch, topk=tal.topk, ordered=True)
        # 4.-7. one-to-many on the whole lists, one-to-one on their first k1 entries.
        many = tal._select(points, scored, scored.top_i, tal.topk, tal.topk)
        one = tal._select(points, scored, scored.top_i[..., :k1], k1, self.one_to_one_topk2)  # (B, M, k1) lists
        return (*many, *one)
