"""Padding ragged ground truth into dense, masked batches.

Shape shorthand: ``B`` images, ``M`` gts per image (the padded maximum), ``N`` anchors.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``.

Every module takes ``gt_boxes (B, M, 4)``, ``gt_labels (B, M)`` int64 and ``gt_mask (B, M)`` bool.
A zero-size axis breaks reductions in torch and in onnxruntime alike, so modules never see
M = 0: :func:`ensure_gt_rows` appends one masked row when M is 0 (eager) and is free otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch._higher_order_ops.scan import scan

from exportable._checks import check_bool, check_boxes, check_integer, check_labels, check_shape, exporting

__all__ = ["GtBatch", "pad_gts", "unpad_gts", "ensure_gt_rows", "check_gt_batch", "in_image_chunks"]


class GtBatch(NamedTuple):
    """A padded batch of ground truth: boxes (B, M, 4), labels (B, M), mask (B, M)."""

    boxes: Float[Tensor, "B M 4"]
    labels: Int[Tensor, "B M"]
    mask: Bool[Tensor, "B M"]


def pad_gts(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor] | None = None,
    *,
    min_rows: int = 0,
) -> GtBatch:
    """Pad per-image gts ``[(M_i, 4)]`` and labels ``[(M_i,)]`` into a :class:`GtBatch`.

    Padded rows have zero boxes, label 0 and ``mask = False``. ``M = max(M_i, min_rows)``; with
    no gts at all M is 0 (``min_rows=1`` gives one masked row, which exported graphs need).
    """
    if len(boxes) == 0:
        raise ValueError("boxes: need at least one image")
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"labels: {len(labels)} images, boxes has {len(boxes)}")
    ref = boxes[0]
    m = max([int(b.shape[0]) for b in boxes] + [min_rows])
    batch = len(boxes)
    out_boxes = ref.new_zeros((batch, m, 4), dtype=torch.float32)  # (B, M, 4)
    out_labels = torch.zeros((batch, m), dtype=torch.int64, device=ref.device)  # (B, M)
    out_mask = torch.zeros((batch, m), dtype=torch.bool, device=ref.device)  # (B, M)
    for i, b in enumerate(boxes):
        check_boxes(f"boxes[{i}]", b.reshape(-1, 4) if b.numel() == 0 else b, ndim=2)
        k = int(b.shape[0])
        out_boxes[i, :k] = b.to(torch.float32)
        out_mask[i, :k] = True
        if labels is not None:
            lab = labels[i]
            check_integer(f"labels[{i}]", lab)
            check_shape(f"labels[{i}]", lab, (k,))
            out_labels[i, :k] = lab.to(torch.int64)
    return GtBatch(out_boxes, out_labels, out_mask)


def unpad_gts(batch: GtBatch) -> tuple[list[Tensor], list[Tensor]]:
    """The inverse of :func:`pad_gts`: lists of per-image (M_i, 4) boxes and (M_i,) labels."""
    boxes = [b[m] for b, m in zip(batch.boxes, batch.mask)]
    labels = [lab[m] for lab, m in zip(batch.labels, batch.mask)]
    return boxes, labels


def ensure_gt_rows(
    gt_boxes: Float[Tensor, "B M 4"],
    gt_labels: Int[Tensor, "B M"] | None,
    gt_mask: Bool[Tensor, "B M"],
) -> GtBatch:
    """Make sure the gt axis is never empty, so every max / argmax / top-k over gts is defined.

    ``gt_labels`` may be None (returned as None). Eager: appends one masked row only when
    ``M == 0`` (free otherwise). Under export M is symbolic and a branch on it would become a
    guard, so the graph always appends the masked row (M + 1 columns); a masked row never
    changes a result, so eager and ONNX agree.
    """
    if not exporting() and gt_boxes.shape[1] != 0:
        return GtBatch(gt_boxes, gt_labels, gt_mask)
    b = gt_boxes.shape[0]
    return GtBatch(
        torch.cat([gt_boxes, gt_boxes.new_zeros((b, 1, 4))], dim=1),  # (B, M + 1, 4)
        None if gt_labels is None else torch.cat([gt_labels, gt_labels.new_zeros((b, 1))], dim=1),  # (B, M + 1)
        torch.cat([gt_mask, gt_mask.new_zeros((b, 1))], dim=1),  # (B, M + 1)
    )


def check_gt_batch(
    gt_boxes: Tensor, gt_labels: Tensor | None, gt_mask: Tensor, *, num_classes: int | None = None
) -> None:
    """Eager checks of a padded gt batch; padded rows (mask False) may hold anything finite.

    ``gt_boxes (B, M, 4)`` float32, ``gt_labels (B, M)`` int64, ``gt_mask (B, M)`` bool (TypeErrors name the
    argument and the cast); real boxes are valid ``(x1, y1, x2, y2)``; with ``num_classes`` every real label
    lies in ``[0, num_classes)`` (ValueError). ``gt_labels=None`` for components that take no labels.
    """
    check_boxes("gt_boxes", gt_boxes, ndim=3, allow_inverted=True)
    check_bool("gt_mask", gt_mask)
    check_shape("gt_mask", gt_mask, (gt_boxes.shape[0], gt_boxes.shape[1]))
    if gt_labels is not None:
        check_integer("gt_labels", gt_labels)
        check_shape("gt_labels", gt_labels, (gt_boxes.shape[0], gt_boxes.shape[1]))
        if num_classes is not None:
            check_labels("gt_labels", gt_labels, gt_mask, num_classes)
    if gt_boxes.numel():
        real = gt_boxes.masked_fill(~gt_mask.unsqueeze(-1), 0.0)  # (B, M, 4) padding cannot trip the check
        check_boxes("gt_boxes", real, ndim=3)


def in_image_chunks(fn: Callable[..., tuple[Tensor, ...]], images: int, *batched: Tensor,
                    whole_in_graph: bool | torch.SymBool = False) -> tuple[Tensor, ...]:
    """``fn(*batched)`` for a batch, image by image: eager calls it on ``images`` images at a time, the exported
    graph on one image per iteration of an ONNX ``Scan``; results are concatenated along B. Images never
    interact, so the split never changes a result; it keeps each step's ``(M, N)`` work small (in cache).

    ``whole_in_graph`` (the graph only; eager follows ``images``): a condition on the symbolic sizes, such as
    eager's ``B * M <= rows``. Where it holds at run time, the graph calls ``fn`` once on the whole batch (an ONNX
    ``If``), and image by image otherwise: a small batch then runs as a few large operators instead of ``B``
    rounds of small ones, which onnxruntime cannot spread over its threads. The graph holds ``fn`` twice."""
    if exporting():
        def body(carry: Tensor, xs: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
            out = fn(*(x.unsqueeze(0) for x in xs))  # one image
            return carry.clone(), tuple(y.squeeze(0).clone() for y in out)

        def per_image(*xs: Tensor) -> tuple[Tensor, ...]:
            return tuple(scan(body, xs[0].new_zeros(()), xs)[1])  # (B, ...) each

        if whole_in_graph is False:
            return per_image(*batched)
        return tuple(torch.cond(whole_in_graph, lambda *xs: tuple(y.clone() for y in fn(*xs)), per_image, batched))
    b = batched[0].shape[0]
    if images >= b:
        return fn(*batched)
    parts = [fn(*(x[i : i + images] for x in batched)) for i in range(0, b, images)]
    return tuple(torch.cat(field) for field in zip(*parts))
