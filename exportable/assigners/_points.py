"""What the point-based assigners (SimOTA, TaskAligned, O2F) share: input checks and seeded example inputs."""

from __future__ import annotations

from exportable._checks import check_boxes, check_float, check_probabilities, check_shape
from exportable.batching import check_gt_batch

__all__ = ["check_point_assigner_inputs"]


def check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, *,
                                num_classes: int | None = None) -> None:
    """The common signature's checks: shapes, dtypes, NaN, strides > 0, probabilities, boxes, gt classes in [0, C).

    C is read from ``pred_scores``; ``num_classes``, when an assigner was built with one, must equal it.
    """
    check_float("points", points)
    check_shape("points", points, ("N", 2))
    n = points.shape[0]
    check_float("strides", strides)
    check_shape("strides", strides, (n,))
    if strides.numel() and bool((strides <= 0).any()):
        raise ValueError("strides: every point's stride must be > 0")
    check_probabilities("pred_scores", pred_scores)
    check_shape("pred_scores", pred_scores, ("B", n, "C"))
    b, c = pred_scores.shape[0], pred_scores.shape[-1]
    if c < 1:
        raise ValueError(f"pred_scores: need at least one class (C >= 1), got shape {tuple(pred_scores.shape)}")
    if num_classes is not None and c != num_classes:
        raise ValueError(f"pred_scores: {c} classes (C) but the assigner was built with num_classes={num_classes}")
    check_boxes("pred_boxes", pred_boxes, ndim=3)
    check_shape("pred_boxes", pred_boxes, (b, n, 4))
    check_gt_batch(gt_boxes, gt_labels, gt_mask, num_classes=c)
    if gt_boxes.shape[0] != b:
        raise ValueError(f"gt_boxes: batch {gt_boxes.shape[0]} does not match pred_scores' B = {b}")
