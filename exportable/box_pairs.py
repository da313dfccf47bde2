"""IoU of only the (box, anchor) pairs that can overlap, for anchors laid out on a grid.

Shape shorthand: ``N`` anchors, ``M`` boxes, ``S`` anchors per block, ``NB`` blocks, ``P`` (box, block)
pairs. Boxes are ``(x1, y1, x2, y2)``, float32.

IoU is 0 unless two boxes intersect. Consecutive anchors of a grid are neighbours, so a block of S of
them has a small bounding box; a box's IoUs can be positive only with the blocks whose bounding boxes it
intersects with positive area (about a tenth of all (box, block) pairs at RetinaNet's sizes). Any anchors
work: far-apart consecutive anchors only make the blocks prune less. MaxIoU (steps 3, 6 and 9) runs on
these pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from exportable.boxes import _planes_iou

__all__ = ["BLOCK", "AnchorBlocks", "Pairs", "anchor_blocks", "overlapping_pairs"]

BLOCK = 64
"""Anchors per block: consecutive anchors, neighbours on a grid, so a block's bounding box is small."""


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
