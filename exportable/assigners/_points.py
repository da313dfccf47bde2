"""What the point-based assigners (SimOTA, TaskAligned, O2F) share: input checks and seeded example inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from exportable._checks import check_boxes, check_float, check_probabilities, check_shape
from exportable.batching import check_gt_batch

__all__ = ["check_point_assigner_inputs", "example_point_inputs"]


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
    check_gt_batch(gt_boxes, gt_labels, gt_mask)
    if gt_boxes.shape[0] != b:
        raise ValueError(f"gt_boxes: batch {gt_boxes.shape[0]} does not match pred_scores' B = {b}")
    real = gt_labels[gt_mask]  # (real gts,)
    if real.numel() and bool(((real < 0) | (real >= c)).any()):
        raise ValueError(f"gt_labels: real gts need a class in [0, {c}) (C from pred_scores), got values in "
                         f"[{int(real.min())}, {int(real.max())}]")


def example_point_inputs(s, g: torch.Generator, *, far_gts: bool = True) -> tuple[Tensor, ...]:
    """Seeded inputs at sizes ``s`` (keys B, N, M, C) with the cases that matter on purpose.

    Points on a 3-level grid of a ~128 px image (any N); scores on a coarse grid and duplicated predictions
    (exact ties in the metric and in the IoU); predicted boxes around their points; gts of every size (some
    narrower than a stride: STAL), zero-width ones, some partly outside, some far from every prediction (a
    gt whose metric is all zero; ``far_gts=False`` leaves them out); padding at the end; image 0 may have
    no gt at all. Shared by the point assigners' catalog entries (SimOTA, TaskAligned).
    """
    b, n, m, c = s["B"], s["N"], s["M"], s["C"]
    level = torch.randint(0, 3, (n,), generator=g)  # (N,)
    strides = (8.0 * 2.0 ** level).float()  # (N,) 8, 16, 32
    cells = torch.randint(0, 16, (n, 2), generator=g).float()  # (N, 2)
    points = (cells // (strides[:, None] / 8) + 0.5) * strides[:, None]  # (N, 2) cell centres up to 128 px
    scores = torch.randint(1, 8, (b, n, c), generator=g).float() / 8.0  # (B, N, C) tied values
    half = torch.rand(b, n, 2, generator=g) * strides[:, None] * 2 + 1.0  # (B, N, 2)
    shift = (torch.rand(b, n, 2, generator=g) - 0.5) * strides[:, None]  # (B, N, 2)
    centre = points + shift  # (B, N, 2)
    pred = torch.cat([centre - half, centre + half], dim=-1).round(decimals=1)  # (B, N, 4)
    if n >= 4:
        pred[:, 1::4] = pred[:, 0::4][:, : pred[:, 1::4].shape[1]]  # duplicated predictions: exact ties
        scores[:, 1::4] = scores[:, 0::4][:, : scores[:, 1::4].shape[1]]
    xy = torch.rand(b, m, 2, generator=g) * 140 - 6  # (B, M, 2) some partly outside
    wh = torch.rand(b, m, 2, generator=g) ** 2 * 80  # (B, M, 2) many small, some narrower than a stride
    wh = torch.where(torch.rand(b, m, 1, generator=g) < 0.1, wh * torch.tensor([0.0, 1.0]), wh)  # zero width
    if far_gts:
        far = torch.rand(b, m, 1, generator=g) < 0.1  # (B, M, 1) a gt no prediction reaches
        xy = torch.where(far, xy + 400.0, xy)  # (B, M, 2)
    gts = torch.cat([xy, xy + wh], dim=-1).round(decimals=1)  # (B, M, 4)
    labels = torch.randint(0, c, (b, m), generator=g)  # (B, M)
    counts = torch.randint(0, m + 1, (b,), generator=g)  # (B,)
    if b > 1:
        counts[1] = m
    mask = torch.arange(m)[None, :] < counts[:, None]  # (B, M)
    return points, strides, scores, pred, gts, labels, mask
