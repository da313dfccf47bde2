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

import functools
from typing import Any

import torch
from torch import Tensor

from lessons.task_aligned import TaskAlignedReference, normalise, top_candidates, ultralytics_assign

__all__ = ["check_second_selection", "dual_assign", "one_to_one_assign", "photo_inputs", "second_selection"]


def second_selection(metric: Tensor, gt_index: Tensor, topk2: int) -> Tensor:
    """Step 5b: ``metric (M, N)`` the ``t`` of every (gt, point) pair, ``gt_index (N,)`` after the conflicts
    (-1 negative) -> the new ``gt_index (N,)``: each gt keeps only its positives among its ``topk2`` best."""
    new = gt_index.clone()
    for g in range(metric.shape[0]):
        mine = gt_index == g  # (N,) the gt's FINAL positives
        row = torch.where(mine, metric[g], 0.0)  # (N,) their t; 0 for every other point, which still ranks
        kept = torch.zeros_like(mine)
        kept[top_candidates(row, topk2)] = True  # the topk2 best over ALL points (ties: lower index first)
        new[mine & ~kept] = -1
    return new


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
    gt_index = second_selection(ref.metric, ref.gt_index, topk2)
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


# --------------------------------------------------------------------------------------------
# The photo and the exercise checker (notebook 11, part B)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def photo_inputs() -> tuple[Tensor, ...]:
    """The photo's points and notebook 08's seeded mid-training predictions: ``points (N, 2)``, ``strides (N,)``,
    ``scores (N, C)``, ``boxes (N, 4)``, ``gt_boxes (M, 4)``, ``gt_labels (M,)`` (C = the scene's 6 classes)."""
    from lessons.scenes import default_scene
    from lessons.task_aligned import photo_points, photo_predictions

    scene = default_scene()
    points, strides, _ = photo_points(scene.hw)
    scores, boxes = photo_predictions(points, strides, scene.boxes, scene.labels, scene.num_classes, "mid")
    return points, strides, scores, boxes, scene.boxes, scene.labels


def check_second_selection(fn) -> None:
    """Exercise 3: ``fn(metric (M, N), gt_index (N,), topk2) -> (N,)`` step 5b. Cases: a gt whose best point went
    to another gt in the conflicts, tied metrics, fewer positives than topk2, a zero-metric positive behind a
    lower-index zero (dropped) and at index 0 (kept), the photo (YOLO26's topk 7 / topk2 1, and topk2 3)."""
    from lessons.check import Case, check_cases
    from lessons.scenes import default_scene

    lost = (torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.0, 0.5, 0.8, 0.0]]), torch.tensor([0, 1, 1, -1]))
    tied = (torch.tensor([[0.5, 0.5, 0.5, 0.2]]), torch.tensor([0, 0, 0, 0]))
    few = (torch.tensor([[0.3, 0.0, 0.6, 0.9, 0.0]]), torch.tensor([0, -1, 0, -1, -1]))
    zero_behind = (torch.zeros(1, 4), torch.tensor([-1, -1, 0, -1]))
    zero_first = (torch.zeros(1, 3), torch.tensor([0, -1, -1]))
    raw = [
        ("gt 0's best point (t 0.9) went to gt 1 in the conflicts: gt 0 ranks only its FINAL positives and keeps "
         "point 0", (*lost, 1)),
        ("three positives tied at t = 0.5, topk2 = 1: the lowest point index stays", (*tied, 1)),
        ("2 positives, topk2 = 3: both stay; point 3 (t 0.9, not a positive of gt 0) stays negative", (*few, 3)),
        ("the only positive has t = 0 and a lower-index point is a zero too: every other point enters the ranking "
         "with 0, so the gt keeps NOTHING", (*zero_behind, 1)),
        ("the only positive has t = 0 but is point 0: it takes the one place and stays", (*zero_first, 1)),
    ]
    cases = [Case(rule, args, second_selection(*args)) for rule, args in raw]
    points, _, scores, boxes, gt_boxes, gt_labels = photo_inputs()
    names = default_scene().names()
    for topk, topk2 in ((7, 1), (10, 3)):
        ref = ultralytics_assign(points, scores, boxes, gt_boxes, gt_labels, topk=topk)
        cases.append(Case(f"the photo ({len(names)} gts): topk {topk}, then topk2 {topk2}",
                          (ref.metric, ref.gt_index, topk2), second_selection(ref.metric, ref.gt_index, topk2)))
    check_cases("topk2", fn, cases)
