"""What the point-based assigners (SimOTA, TaskAligned, O2F) share: input checks and seeded example inputs, and
the FPN grid's layout read off the points (O2F's windows of cells)."""

from __future__ import annotations

import torch
from torch import Tensor

from exportable._checks import check_boxes, check_float, check_probabilities, check_shape, checks_enabled, exporting
from exportable.batching import check_gt_batch, ensure_gt_rows

__all__ = ["check_point_assigner_inputs", "grid_geometry", "grid_levels", "on_grid", "point_assigner_gt_rows"]


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


def point_assigner_gt_rows(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, *,
                           num_classes: int | None = None) -> tuple[int, tuple[Tensor, Tensor, Tensor] | None]:
    """The TaskAligned assigners' prologue: the input checks (when enabled), the class count C, and the gt rows
    ``(boxes (B, M', 4), labels (B, M'), mask (B, M'))`` with at least one (padding) row and padded rows'
    labels set to 0, as they may hold any label. The rows are ``None`` when eager has no points to assign
    (the caller returns an empty result); the graph always runs its steps (N stays dynamic)."""
    if checks_enabled():
        check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask,
                                    num_classes=num_classes)
    c = pred_scores.shape[-1] if num_classes is None else num_classes
    if pred_scores.shape[1] == 0 and not exporting():
        return c, None
    boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
    return c, (boxes, torch.where(mask, labels, 0), mask)


def grid_geometry(points: Tensor, strides: Tensor, levels: tuple[float, ...]) -> list[tuple[Tensor, ...]]:
    """Per level of stride s: ``(start, width, height, x0, y0)`` as 0-d tensors, read off the points (O(N), no
    sync, exports). The level is the run ``strides == s`` after the previous levels; its width the number of
    them on its first point's row, ``(x0, y0)`` that first point. Holds for an FPN grid (:func:`on_grid`)."""
    n, start, out = points.shape[0], torch.zeros((), dtype=torch.int64, device=points.device), []
    for s in levels:
        on = strides == s  # (N,)
        count = on.sum()  # ()
        first = points.index_select(0, start.clamp(max=n - 1).reshape(1)).reshape(2)  # (2,)
        width = (on & (points[:, 1] == first[1])).sum().clamp(min=1)  # ()
        out.append((start, width, count // width, first[0], first[1]))
        start = start + count
    return out


def on_grid(points: Tensor, strides: Tensor, levels: tuple[float, ...]) -> bool:
    """Eager: the points are these levels in order, each a row-major grid of spacing = stride (every point within
    s / 4 of its cell's ideal place), as :func:`grid_geometry` reads them. A level may hold no point."""
    n, end = points.shape[0], 0
    for s, (start, width, height, x0, y0) in zip(levels, grid_geometry(points, strides, levels)):
        count = int(width * height)
        if int(start) != end or count != int((strides == s).sum()) or end + count > n:
            return False
        i = torch.arange(count, device=points.device)  # (count,)
        ideal = torch.stack([x0 + (i % width) * s, y0 + (i // width) * s], 1)
        level = slice(end, end + count)
        if not ((strides[level] == s).all() and ((points[level] - ideal).abs() <= s / 4).all()):
            return False
        end += count
    return end == n


def grid_levels(points: Tensor, strides: Tensor) -> tuple[float, ...] | None:
    """Eager: the levels' strides (runs of equal strides, in order) when the points form an FPN grid, else None."""
    if points.shape[0] == 0:
        return None
    starts = torch.cat([strides.new_zeros(1, dtype=torch.int64), (strides[1:] != strides[:-1]).nonzero()[:, 0] + 1])
    levels = tuple(strides[starts].tolist())  # (L,) one stride per run of equal strides
    return levels if len(set(levels)) == len(levels) and on_grid(points, strides, levels) else None
