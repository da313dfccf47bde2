"""Seeded example inputs shared by the point-based assigners' catalog entries and tests."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["example_point_inputs"]


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
