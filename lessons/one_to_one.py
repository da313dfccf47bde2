"""One-to-one task alignment, the readable way: ultralytics' ``topk2`` and YOLOv10's dual assignment, one image.

The reference (test oracle) for ``UltralyticsTaskAlignedAssigner(topk2=...)``
(:mod:`exportable.assigners.task_aligned_ultralytics`) and for
:class:`exportable.assigners.task_aligned_dual.DualTaskAlignedAssigner`. Inputs as in
:mod:`lessons.task_aligned`: ``points (N, 2)`` cell centres, ``pred_scores (N, C)`` probabilities,
``pred_boxes (N, 4)`` and ``gt_boxes (M, 4)`` as ``(x1, y1, x2, y2)`` in pixels, ``gt_labels (M,)``, the REAL
gts of ONE image. Steps numbered as in ``docs/algorithms.md`` §10.3 and §10.8:

1.-5. ultralytics' TAL (:func:`lessons.task_aligned.ultralytics_assign`), with ``topk``.
5b. ``topk2``: gt by gt, rank ALL points by ``t`` of the gt's final positives (0 for every other point),
    take the ``topk2`` best (ties: the lower point index first) and keep the gt's positives among them.
    With ``topk2 = 1`` each gt keeps at most its best-aligned positive -- or none, when its positives all have
    ``t = 0`` and a point of lower index (a zero too) takes the one place.
6.-7. targets and ``t_hat`` over the positives that are left.

YOLOv10's dual assignment is two such runs on the same metric: one-to-many (``topk = 10``) and one-to-one
(``topk = 1``); YOLO26's one-to-one branch is ``topk = 7, topk2 = 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lessons.task_aligned import TaskAlignedReference, normalise, top_candidates, ultralytics_assign

__all__ = ["dual_assign", "one_to_one_assign", "second_selection"]


def second_selection(ref: TaskAlignedReference, topk2: int) -> Tensor:
    """Step 5b on one image's assignment: the new ``gt_index (N,)`` after each gt keeps its ``topk2`` best."""
    gt_index = ref.gt_index.clone()
    for g in range(ref.metric.shape[0]):
        mine = ref.gt_index == g  # (N,) the gt's final positives
        row = torch.where(mine, ref.metric[g], 0.0)  # (N,) t of its positives, 0 for every other point
        kept = torch.zeros_like(mine)
        kept[top_candidates(row, topk2)] = True  # its topk2 best over ALL points (ties: lower index)
        gt_index[mine & ~kept] = -1
    return gt_index


def one_to_one_assign(
    points: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
    topk: int = 10, topk2: int | None = None, num_classes: int | None = None, **params: Any,
) -> TaskAlignedReference:
    """ultralytics 8.4's ``TaskAlignedAssigner(topk=topk, topk2=topk2)`` for ONE image (steps 1-7 with 5b).

    ``params``: ``alpha``, ``beta``, ``eps``, ``center_margin``, ``stal_side`` of
    :func:`lessons.task_aligned.ultralytics_assign`. ``topk2=None`` (or ``topk``) is ultralytics TAL unchanged.
    """
    ref = ultralytics_assign(points, pred_scores, pred_boxes, gt_boxes, gt_labels, topk=topk,
                             num_classes=num_classes, **params)
    if topk2 is None or topk2 == topk:  # ultralytics runs step 5b only when topk2 != topk
        return ref
    # 5b. each gt keeps the positives among its topk2 best
    gt_index = second_selection(ref, topk2)
    # 6.-7. targets and t_hat = t * max u / (max t + eps) over the positives that are left
    eps = params.get("eps", 1e-9)
    n = gt_index.shape[0]
    target, matched = torch.zeros(n), torch.zeros(n)
    for g in range(ref.metric.shape[0]):
        final = gt_index == g
        matched[final] = ref.overlap_matrix[g, final]
        target[final] = normalise(ref.metric[g, final], ref.overlap_matrix[g, final], eps, "ultralytics")
    labels = torch.full((n,), pred_scores.shape[1] if num_classes is None else num_classes, dtype=torch.int64)
    labels[gt_index >= 0] = gt_labels[gt_index[gt_index >= 0]]
    return TaskAlignedReference(gt_index, labels, matched, target, ref.metric, ref.overlap_matrix, ref.candidates,
                                ref.positive_pairs)


def dual_assign(
    points: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
    topk: int = 10, one_to_one_topk: int = 1, one_to_one_topk2: int | None = None, **params: Any,
) -> tuple[TaskAlignedReference, TaskAlignedReference]:
    """YOLOv10's consistent dual assignment of ONE image: ``(one_to_many, one_to_one)``, two independent runs of
    ultralytics' TAL on the same metric (``params`` as :func:`one_to_one_assign`)."""
    many = one_to_one_assign(points, pred_scores, pred_boxes, gt_boxes, gt_labels, topk=topk, **params)
    one = one_to_one_assign(points, pred_scores, pred_boxes, gt_boxes, gt_labels, topk=one_to_one_topk,
                            topk2=one_to_one_topk2, **params)
    return many, one
