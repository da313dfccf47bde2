"""Only the (box, anchor) and (box, point) pairs that can meet, for anchors and points laid out on a grid.

Shape shorthand: ``N`` anchors or points, ``M`` boxes, ``S`` anchors or points per block, ``NB`` blocks, ``P``
(box, block) pairs. Boxes are ``(x1, y1, x2, y2)``, float32; points ``(x, y)``.

IoU is 0 unless two boxes intersect. Consecutive anchors of a grid are neighbours, so a block of S of
them has a small bounding box; a box's IoUs can be positive only with the blocks whose bounding boxes it
intersects with positive area (about a tenth of all (box, block) pairs at RetinaNet's sizes). Any anchors
work: far-apart consecutive anchors only make the blocks prune less. MaxIoU (steps 3, 6 and 9) runs on
these pairs.

Points work the same way (:func:`point_blocks`, :func:`points_in_boxes_pairs`): a point can lie strictly inside
a box only if its block's bounding box reaches into the box, so the exact test runs on those blocks' points
only, never on all ``(M, N)`` pairs; ultralytics' TAL lists its candidates so.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from exportable.boxes import _planes_in_boxes, _planes_iou

__all__ = ["BLOCK", "POINT_BLOCK", "AnchorBlocks", "Pairs", "PointBlocks", "anchor_blocks", "overlapping_pairs",
           "point_blocks", "points_in_boxes_pairs"]

BLOCK = 64
"""Anchors per block: consecutive anchors, neighbours on a grid, so a block's bounding box is small."""

POINT_BLOCK = 32
"""Points per block (a row of YOLO's stride-8 grid at 640 pixels holds 80)."""


class AnchorBlocks(NamedTuple):
    """The anchors in blocks of S = BLOCK, the last ones padded with zero-size boxes: ``planes``, the
    ``(NB, S)`` planes x1, y1, x2, y2 and area, each block's bounding box as ``lo`` (min x1, y1) and ``hi``
    (max x2, y2) ``(2, NB)``, and ``index (NB, S)``, the anchor in each slot (``>= N`` for padding), and
    ``keep (N,)``, the slots of the real anchors in the flattened ``(NB * S,)`` layout (``arange(N)``)."""

    planes: tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
    lo: Tensor
    hi: Tensor
    index: Tensor
    keep: Tensor


class Pairs(NamedTuple):
    """The (box, block) pairs that can overlap: the box ``gt (P,)`` and the ``block (P,)`` of each, the IoUs
    ``iou (P, S)`` of the box with the block's anchors, and ``slot (P, S)``, the anchor of each IoU (``>= N``:
    padding)."""

    gt: Tensor
    block: Tensor
    iou: Tensor
    slot: Tensor


def anchor_blocks(anchors: Tensor) -> AnchorBlocks:
    """:class:`AnchorBlocks` of ``anchors (N, 4)``. At least two blocks, gathered (no reshape splits N), so
    that the exporter keeps N symbolic."""
    n, dev = anchors.shape[0], anchors.device
    padded = torch.cat([anchors, anchors.new_zeros((2 * BLOCK, 4))]).movedim(1, 0).contiguous()  # (4, N + 2S)
    index = torch.arange(n // BLOCK + 2, device=dev).unsqueeze(1) * BLOCK + torch.arange(BLOCK, device=dev)  # (NB, S)
    # 1-D torch.gather per coordinate: ONNX GatherElements, several times faster in onnxruntime than a row gather
    x1, y1, x2, y2 = (torch.gather(c, 0, index.flatten()).view_as(index) for c in padded)  # (NB, S) each
    planes = (x1, y1, x2, y2, (x2 - x1) * (y2 - y1))  # the area as boxes.box_iou computes it: the same bits
    lo = torch.stack([x1.amin(dim=1), y1.amin(dim=1)])  # (2, NB)
    hi = torch.stack([x2.amax(dim=1), y2.amax(dim=1)])  # (2, NB)
    return AnchorBlocks(planes, lo, hi, index, torch.arange(n, device=dev))


def overlapping_pairs(blocks: AnchorBlocks, gts: Tensor, mask: Tensor) -> Pairs:
    """The pairs of ``gts (M, 4)`` (only where ``mask (M,)``) and blocks whose bounding boxes intersect with
    positive area, listed by one ``NonZero``, with their IoUs; every other IoU is 0."""
    x1, y1, x2, y2 = gts.movedim(1, 0).unsqueeze(2).contiguous().unbind(0)  # (M, 1) each
    meet = (x1 < blocks.hi[0]) & (y1 < blocks.hi[1]) & (x2 > blocks.lo[0]) & (y2 > blocks.lo[1])  # (M, NB)
    gt, block = (meet & mask.unsqueeze(1)).nonzero(as_tuple=True)  # (P,) each
    pair_gts = [c.index_select(0, gt) for c in (x1, y1, x2, y2)]  # 4 x (P, 1)
    anchors = [plane.index_select(0, block) for plane in blocks.planes]  # 5 x (P, S): x1, y1, x2, y2, area
    iou = _planes_iou(pair_gts, anchors[:4], anchors[4])  # (P, S) the numbers of boxes.box_iou
    return Pairs(gt, block, iou, blocks.index.index_select(0, block))


class PointBlocks(NamedTuple):
    """The points in blocks of S = POINT_BLOCK consecutive points, the last slots padded with NaN points (inside
    no box): ``planes``, the ``(NB, S)`` planes x and y, and each block's bounding box as ``lo`` (min x, y) and
    ``hi`` (max x, y) ``(2, NB)`` over its real points (an all-padding block: ``lo`` +inf, ``hi`` -inf)."""

    planes: tuple[Tensor, Tensor]
    lo: Tensor
    hi: Tensor


def point_blocks(points: Tensor) -> PointBlocks:
    """:class:`PointBlocks` of ``points (N, 2)``. At least one padded block, gathered (no reshape splits N), so
    that the exporter keeps N symbolic."""
    n, dev = points.shape[0], points.device
    padded = torch.cat([points, points.new_full((POINT_BLOCK, 2), float("nan"))]).movedim(1, 0)  # (2, N + S)
    index = (torch.arange(n // POINT_BLOCK + 1, device=dev).unsqueeze(1) * POINT_BLOCK
             + torch.arange(POINT_BLOCK, device=dev))  # (NB, S)
    px, py = (torch.gather(c, 0, index.flatten()).view_as(index) for c in padded)  # (NB, S) each
    real = index < n  # (NB, S)
    lo = torch.stack([torch.where(real, c, float("inf")).amin(dim=1) for c in (px, py)])  # (2, NB)
    hi = torch.stack([torch.where(real, c, float("-inf")).amax(dim=1) for c in (px, py)])  # (2, NB)
    return PointBlocks((px, py), lo, hi)


def points_in_boxes_pairs(blocks: PointBlocks, boxes: Tensor, *, margin: float = 0.0) -> tuple[Tensor, Tensor]:
    """The (box, point) pairs with the point more than ``margin >= 0`` inside every side of the box
    (:func:`exportable.boxes.points_in_boxes`' test and arithmetic): ``box (P,)`` into ``boxes (M, 4)`` and
    ``point (P,)``, in row-major order of the ``(M, N)`` mask (what one ``NonZero`` of it gives). NaN boxes contain
    no point. First the (box, block) pairs whose block's bounding box reaches into the box (a point inside needs
    ``x1 < max x``, ``x2 > min x`` and the same in y), then the exact test on those blocks' points: two small
    ``NonZero`` instead of one over ``(M, N)`` (onnxruntime's runs on one thread)."""
    x1, y1, x2, y2 = boxes.movedim(1, 0).unsqueeze(2).unbind(0)  # (M, 1) each
    meet = (x1 < blocks.hi[0]) & (y1 < blocks.hi[1]) & (x2 > blocks.lo[0]) & (y2 > blocks.lo[1])  # (M, NB)
    box, block = meet.nonzero(as_tuple=True)  # (H,) each
    torch._check(box.shape[0] < 2**52)  # a bound the exporter needs, so that H * S provably fits int64
    pts = [plane.index_select(0, block) for plane in blocks.planes]  # 2 x (H, S)
    inside = _planes_in_boxes(pts, [c.index_select(0, box) for c in (x1, y1, x2, y2)], margin=margin)  # (H, S)
    pair, slot = inside.nonzero(as_tuple=True)  # (P,) each
    return box.gather(0, pair), block.gather(0, pair) * POINT_BLOCK + slot
