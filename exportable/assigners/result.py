"""The one result every assigner returns.

Shape shorthand: ``B`` images, ``N`` anchors / priors, ``C`` classes.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``.

Encoding (one for the whole package; mmdetection's 1-based ``gt_inds`` is mapped in the lessons):

- ``gt_index`` int64: matched gt, 0-based; ``-1`` negative / background; ``-2`` ignored.
- ``labels`` int64: the matched gt's class; ``num_classes`` for every non-positive.
- ``boxes`` (B, N, 4): the matched gt box; 0 elsewhere.
- ``overlaps`` float: IoU with the matched gt for positives (MaxIoU: the max IoU over gts for every
  anchor, as mmdetection keeps it); 0 elsewhere.
- ``target_scores`` float: soft classification target at ``labels`` (1 for hard positives; IoU,
  normalised alignment or O2F soft label where the method says so); 0 for non-positives.
- ``weights`` float: classification loss weight (1 positives and negatives, 0 ignored; O2F
  1 certain, 0.4 ambiguous).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["AssignResult", "NEGATIVE", "IGNORED", "empty_result"]

NEGATIVE = -1
"""``gt_index`` of a negative (background) anchor."""
IGNORED = -2
"""``gt_index`` of an ignored anchor (no classification loss)."""


class AssignResult(NamedTuple):
    """Per-anchor assignment of a batch; every field is ``(B, N)`` except ``boxes (B, N, 4)``."""

    gt_index: Int[Tensor, "B N"]
    labels: Int[Tensor, "B N"]
    boxes: Float[Tensor, "B N 4"]
    overlaps: Float[Tensor, "B N"]
    target_scores: Float[Tensor, "B N"]
    weights: Float[Tensor, "B N"]

    @property
    def positive(self) -> Bool[Tensor, "B N"]:
        return self.gt_index >= 0

    @property
    def negative(self) -> Bool[Tensor, "B N"]:
        return self.gt_index == NEGATIVE

    @property
    def ignored(self) -> Bool[Tensor, "B N"]:
        return self.gt_index == IGNORED

    def num_positives(self) -> Int[Tensor, " B"]:
        return self.positive.sum(dim=1)

    def dense_scores(self, num_classes: int) -> Float[Tensor, "B N C"]:
        """Expand ``target_scores`` to a ``(B, N, C)`` classification target (one-hot x score).

        Non-positives carry ``labels == num_classes``; their row is all zeros.
        """
        onehot = torch.nn.functional.one_hot(self.labels, num_classes + 1)[..., :num_classes]  # (B, N, C)
        return onehot.to(self.target_scores.dtype) * self.target_scores.unsqueeze(-1)  # (B, N, C)

    @classmethod
    def from_gt_index(
        cls,
        gt_index: Int[Tensor, "B N"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        num_classes: int,
        *,
        overlaps: Float[Tensor, "B N"],
        target_scores: Float[Tensor, "B N"] | None = None,
        weights: Float[Tensor, "B N"] | None = None,
    ) -> AssignResult:
        """The result of an assignment given as ``gt_index`` (0-based gt, -1 negative, -2 ignored).

        Looks up each positive's gt box and class (non-positives: box 0, class ``num_classes``).
        ``overlaps`` is stored as given (MaxIoU keeps every anchor's best IoU, the others pass 0 for
        non-positives). ``target_scores`` defaults to 1 for positives (hard targets) and is 0 for every
        non-positive either way; ``weights`` defaults to 1 except 0 for ignored anchors. Boxes are
        ``(x1, y1, x2, y2)``. Each image's gt rows get one row in front (box 0, class ``num_classes``) that every
        non-positive reads, so the row of an anchor is ``max(gt_index, -1) + 1``: one gather per field, no
        ``(B, N, M)`` tensor and no ``where`` (onnxruntime's ``Where`` is several times slower than these
        gathers). The labels are a ``torch.gather`` (ONNX ``GatherElements``, about 6x faster in onnxruntime
        than the element-by-element ``Gather`` of ``index_select``), the boxes one ``embedding`` lookup of
        16-byte rows (a ``Gather`` straight into ``(B, N, 4)``, without a reshape that onnxruntime copies).
        """
        b, m = gt_boxes.shape[:2]
        positive = gt_index >= 0  # (B, N)
        # Image i's rows: one for its non-positives (class num_classes, box 0), then its M gts.
        rows = gt_index.clamp(min=-1) + 1  # (B, N) in [0, M]
        labels = torch.cat([gt_labels.new_full((b, 1), num_classes), gt_labels], dim=1)  # (B, M + 1)
        boxes = torch.cat([gt_boxes.new_zeros((b, 1, 4)), gt_boxes], dim=1).reshape(-1, 4)  # (B*(M+1), 4)
        flat = rows + torch.arange(b, device=gt_index.device).unsqueeze(1) * (m + 1)  # (B, N) rows of `boxes`
        if target_scores is None:
            target_scores = positive.to(overlaps.dtype)  # (B, N)
        else:
            target_scores = torch.where(positive, target_scores, 0.0)  # (B, N)
        if weights is None:
            weights = (gt_index != IGNORED).to(overlaps.dtype)  # (B, N)
        return cls(
            gt_index=gt_index,
            labels=torch.gather(labels, 1, rows),  # (B, N) ONNX GatherElements: fast in onnxruntime
            boxes=torch.nn.functional.embedding(flat, boxes),  # (B, N, 4) one ONNX Gather, no reshape
            overlaps=overlaps,
            target_scores=target_scores,
            weights=weights,
        )

    def to_mmdet(self) -> Int[Tensor, "B N"]:
        """mmdetection's 1-based ``gt_inds``: k > 0 is gt k-1, 0 negative, -1 ignored."""
        return torch.where(self.gt_index >= 0, self.gt_index + 1, torch.where(self.ignored, -1, 0))

    @staticmethod
    def from_mmdet(gt_inds: Tensor) -> Tensor:
        """Our ``gt_index`` from mmdetection's ``gt_inds``."""
        return torch.where(gt_inds > 0, gt_inds - 1, torch.where(gt_inds == 0, NEGATIVE, IGNORED))


def empty_result(batch: int, num_anchors: int, num_classes: int, *, like: Tensor) -> AssignResult:
    """All-negative result (no gts): gt_index -1, labels num_classes, zeros, weights 1."""
    b, n = batch, num_anchors
    return AssignResult(
        gt_index=torch.full((b, n), NEGATIVE, dtype=torch.int64, device=like.device),
        labels=torch.full((b, n), num_classes, dtype=torch.int64, device=like.device),
        boxes=like.new_zeros((b, n, 4)),
        overlaps=like.new_zeros((b, n)),
        target_scores=like.new_zeros((b, n)),
        weights=like.new_ones((b, n)),
    )
