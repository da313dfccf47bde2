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

from exportable.boxes import _box_iou

__all__ = ["BLOCK", "AnchorBlocks", "Pairs", "anchor_blocks", "overlapping_pairs"]

BLOCK = 64
"""Anchors per block: consecutive anchors, neighbours on a grid, so a block's bounding box is small."""


class AnchorBlocks(NamedTuple):
    """The anchors in blocks of S = BLOCK, the last ones padded with zero-size boxes: coordinate planes
    ``(4, NB, S)``, each block's bounding box as ``lo`` (min x1, y1) and ``hi`` (max x2, y2) ``(NB, 2)``, and
    ``index (NB, S)``, the anchor in each slot (``>= N`` for padding), and ``keep (N,)``, the slots of the
    real anchors in the flattened ``(NB * S,)`` layout (``arange(N)``)."""

    planes: Tensor
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
    padded = torch.cat([anchors, anchors.new_zeros((2 * BLOCK, 4))])  # (N + 2S, 4)
    index = torch.arange(n // BLOCK + 2, device=dev).unsqueeze(1) * BLOCK + torch.arange(BLOCK, device=dev)  # (NB, S)
    blocks = padded[index]  # (NB, S, 4)
    planes = blocks.permute(2, 0, 1).contiguous()  # (4, NB, S)
    keep = torch.arange(n, device=dev)  # (N,)
    return AnchorBlocks(planes, blocks[..., :2].amin(dim=1), blocks[..., 2:].amax(dim=1), index, keep)


def overlapping_pairs(blocks: AnchorBlocks, gts: Tensor, mask: Tensor) -> Pairs:
    """The pairs of ``gts (M, 4)`` (only where ``mask (M,)``) and blocks whose bounding boxes intersect with
    positive area, listed by one ``NonZero``, with their IoUs; every other IoU is 0."""
    meet = (gts[:, None, :2] < blocks.hi).all(dim=2) & (gts[:, None, 2:] > blocks.lo).all(dim=2)  # (M, NB)
    gt, block = (meet & mask.unsqueeze(1)).nonzero(as_tuple=True)  # (P,) each
    boxes = blocks.planes.index_select(1, block).permute(1, 2, 0)  # (P, S, 4) column-major: free planes in _box_iou
    iou = _box_iou(gts.index_select(0, gt).unsqueeze(1), boxes).squeeze(1)  # (P, S)
    return Pairs(gt, block, iou, blocks.index.index_select(0, block))
