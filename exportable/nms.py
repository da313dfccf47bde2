"""Greedy non-maximum suppression, in eager and as ONNX ``NonMaxSuppression``.

Shape shorthand: ``B`` images, ``C`` classes (or groups), ``N`` boxes, ``K`` kept boxes (data
dependent). Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``.

Semantics, the same in eager and in onnxruntime (they are ONNX ``NonMaxSuppression``'s):

1. (optional) drop boxes whose score is not strictly above ``score_threshold``;
2. visit boxes by score, highest first; among equal scores the lower index first;
3. keep a box unless its IoU with an already kept box is strictly above ``iou_threshold``
   (IoU exactly at the threshold is kept, as in torchvision and mmcv);
4. zero-area boxes never suppress and are never suppressed;
5. stop once ``max_output`` boxes are kept (per image and class).

IoU is computed in float32 with the same operation order as onnxruntime's kernel
(``inter / (area1 + area2 - inter)``, no eps), so boundary cases agree bit for bit.

Export: the eager body is registered as the custom operator ``assignlab::nms`` (a fake kernel
gives its output a data-dependent size) and ``TRANSLATIONS`` maps it to one ONNX
``NonMaxSuppression`` node. Pass ``TRANSLATIONS`` as ``custom_translation_table`` (the
``exportable.onnx`` helpers do). Class-aware NMS uses the coordinate-offset trick, so one call
serves every class: onnxruntime's CUDA kernel loops over (image, class) pairs on the host.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from jaxtyping import Float, Int
from onnxscript import opset18 as op
from torch import Tensor, nn

from exportable._checks import (
    check_boxes,
    check_float,
    check_integer,
    check_scalar,
    check_shape,
    checks_enabled,
)

__all__ = [
    "nms",
    "batched_nms",
    "non_max_suppression",
    "NMS",
    "BatchedNMS",
    "TRANSLATIONS",
]


# --------------------------------------------------------------------------------------------
# The eager kernel: greedy NMS with onnxruntime's float32 arithmetic.
# --------------------------------------------------------------------------------------------


def _greedy_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    max_output: int | None,
    iou_threshold: float,
    score_threshold: float | None,
) -> np.ndarray:
    """Kept indices (highest score first) of one image and class: boxes (N, 4), scores (N,).

    The candidates live in score order in contiguous per-coordinate arrays that shrink as boxes
    are suppressed (the first entry is always the next box to keep); the IoU of the kept box with
    the rest is onnxruntime's float32 arithmetic, so decisions at the threshold agree bit for bit.
    """
    if max_output is not None and max_output <= 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.arange(scores.shape[0])
    if score_threshold is not None:
        candidates = candidates[scores > np.float32(score_threshold)]
    # Stable sort of the negated scores: equal scores keep their index order.
    idx = candidates[np.argsort(-scores[candidates], kind="stable")]  # (N',)
    lo = np.minimum(boxes[idx, :2], boxes[idx, 2:])  # (N', 2) corners in either order, as ONNX allows
    hi = np.maximum(boxes[idx, :2], boxes[idx, 2:])  # (N', 2)
    x1, y1, x2, y2 = (np.ascontiguousarray(c) for c in (lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]))  # (N',) each
    area = (x2 - x1) * (y2 - y1)  # (N',)
    thr = np.float32(iou_threshold)
    keep: list[int] = []
    while idx.size:
        keep.append(int(idx[0]))
        if max_output is not None and len(keep) >= max_output:
            break
        ix = np.minimum(x2[0], x2[1:]) - np.maximum(x1[0], x1[1:])  # (R,)
        iy = np.minimum(y2[0], y2[1:]) - np.maximum(y1[0], y1[1:])  # (R,)
        inter = ix * iy  # (R,)
        union = area[0] + area[1:] - inter  # (R,)
        overlap = (ix > 0) & (iy > 0) & (inter > 0) & (area[0] > 0) & (area[1:] > 0) & (union > 0)  # (R,)
        with np.errstate(divide="ignore", invalid="ignore"):
            suppressed = overlap & (inter / union > thr)  # (R,) IoU exactly at the threshold is kept
        rest = ~suppressed  # (R,)
        x1, y1, x2, y2, area, idx = (a[1:][rest] for a in (x1, y1, x2, y2, area, idx))
    return np.asarray(keep, dtype=np.int64)


@torch.library.custom_op("assignlab::nms", mutates_args=())
def _nms_op(
    boxes: Tensor,
    scores: Tensor,
    max_output_boxes_per_class: int | None,
    iou_threshold: float,
    score_threshold: float | None,
) -> Tensor:
    """ONNX ``NonMaxSuppression``: boxes (B, N, 4), scores (B, C, N) -> (K, 3) rows [b, c, i]."""
    b_np = boxes.detach().to("cpu", torch.float32).numpy()  # (B, N, 4)
    s_np = scores.detach().to("cpu", torch.float32).numpy()  # (B, C, N)
    rows = []
    for b in range(s_np.shape[0]):
        for c in range(s_np.shape[1]):
            kept = _greedy_nms(
                b_np[b], s_np[b, c], max_output_boxes_per_class, iou_threshold, score_threshold
            )  # (K_bc,)
            triple = np.stack([np.full_like(kept, b), np.full_like(kept, c), kept], axis=1)  # (K_bc, 3)
            rows.append(triple)
    out = np.concatenate(rows, axis=0) if rows else np.zeros((0, 3), dtype=np.int64)  # (K, 3)
    return torch.from_numpy(out.reshape(-1, 3)).to(boxes.device)


@_nms_op.register_fake
def _nms_fake(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
    k = torch.library.get_ctx().new_dynamic_size()  # data-dependent number of kept boxes
    return boxes.new_empty((k, 3), dtype=torch.int64)


def _nms_translation(boxes, scores, max_output_boxes_per_class=None, iou_threshold=0.5, score_threshold=None):
    """onnxscript translation of ``assignlab::nms`` into one ``NonMaxSuppression`` node."""
    if max_output_boxes_per_class is None:
        # Unlimited: the number of boxes itself, read from the shape at run time.
        max_out = op.Shape(boxes, start=1, end=2)
    else:
        limit = [max_output_boxes_per_class]
        max_out = op.Constant(value=onnx.helper.make_tensor("max_out", onnx.TensorProto.INT64, [1], limit))
    iou = op.Constant(value=onnx.helper.make_tensor("iou", onnx.TensorProto.FLOAT, [1], [iou_threshold]))
    if score_threshold is None:
        return op.NonMaxSuppression(boxes, scores, max_out, iou)
    thr = op.Constant(value=onnx.helper.make_tensor("thr", onnx.TensorProto.FLOAT, [1], [score_threshold]))
    return op.NonMaxSuppression(boxes, scores, max_out, iou, thr)


TRANSLATIONS = {torch.ops.assignlab.nms.default: _nms_translation}
"""The exporter's translation table for the package's custom operators."""


# --------------------------------------------------------------------------------------------
# Public functions (checked) and modules (exportable).
# --------------------------------------------------------------------------------------------


def _check_common(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int | None,
                  score_threshold: float | None) -> None:
    check_boxes("boxes", boxes, ndim=2)
    check_float("scores", scores, finite=False)
    check_shape("scores", scores, (boxes.shape[0],))
    check_scalar("iou_threshold", iou_threshold, low=0.0, high=1.0)
    if score_threshold is not None:
        check_scalar("score_threshold", score_threshold)
    if max_output is not None and (not isinstance(max_output, int) or max_output < 0):
        raise ValueError(f"max_output: expected None or an int >= 0, got {max_output!r}")


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int | None,
         score_threshold: float | None) -> Tensor:
    selected = torch.ops.assignlab.nms(
        boxes.to(torch.float32).unsqueeze(0),  # (1, N, 4)
        scores.to(torch.float32).reshape(1, 1, -1),  # (1, 1, N)
        max_output,
        float(iou_threshold),
        None if score_threshold is None else float(score_threshold),
    )  # (K, 3)
    return selected[:, 2]  # (K,)


def _group_offsets(boxes: Tensor, idxs: Tensor) -> Tensor:
    """Shift each group's boxes so boxes of different groups never overlap: (N, 4) -> (N, 4)."""
    flat = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)])  # (4N + 1,) never empty
    span = flat.max() - flat.min() + 1  # () wider than any group's extent, negatives included
    offset = idxs.to(boxes.dtype) * span  # (N,)
    return boxes + offset[:, None]  # (N, 4)


def nms(
    boxes: Float[Tensor, "N 4"],
    scores: Float[Tensor, " N"],
    iou_threshold: float,
    max_output: int | None = None,
    *,
    score_threshold: float | None = None,
) -> Int[Tensor, " K"]:
    """Greedy NMS of one set of boxes.

    Args:
        boxes: ``(N, 4)`` as ``(x1, y1, x2, y2)``.
        scores: ``(N,)``; NaN is rejected.
        iou_threshold: suppress a box whose IoU with a kept box is strictly above this, in [0, 1].
        max_output: keep at most this many (``None``: no limit).
        score_threshold: if given, only boxes with ``score > score_threshold`` take part.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, highest score first (torchvision's contract).
    """
    if checks_enabled():
        _check_common(boxes, scores, iou_threshold, max_output, score_threshold)
    return _nms(boxes, scores, iou_threshold, max_output, score_threshold)


def batched_nms(
    boxes: Float[Tensor, "N 4"],
    scores: Float[Tensor, " N"],
    idxs: Int[Tensor, " N"],
    iou_threshold: float,
    max_output: int | None = None,
    *,
    score_threshold: float | None = None,
) -> Int[Tensor, " K"]:
    """Class-aware (or level-aware) NMS: boxes only suppress boxes with the same ``idxs``.

    One NMS call over boxes shifted by ``idx * span`` (``span`` = the coordinate range plus 1,
    so negative coordinates are safe too). The shift costs float32 precision: at offsets of
    about 1e5 px an IoU that sits exactly on the threshold can round to either side, so
    boundary-exact results are only promised by :func:`nms` on one group. Eager and onnxruntime
    compute the same shifted values and agree with each other.

    Returns:
        ``(K,)`` int64 indices of kept boxes, highest score first over all groups.
    """
    if checks_enabled():
        _check_common(boxes, scores, iou_threshold, max_output, score_threshold)
        check_integer("idxs", idxs)
        check_shape("idxs", idxs, (boxes.shape[0],))
    return _nms(_group_offsets(boxes, idxs), scores, iou_threshold, max_output, score_threshold)


def non_max_suppression(
    boxes: Float[Tensor, "B N 4"],
    scores: Float[Tensor, "B C N"],
    iou_threshold: float,
    max_output_per_class: int | None = None,
    *,
    score_threshold: float | None = None,
) -> Int[Tensor, "K 3"]:
    """ONNX ``NonMaxSuppression`` itself: NMS per (image, class), rows ``[b, c, i]``.

    Rows come grouped by image, then class, each group highest score first. On the CUDA
    execution provider prefer :func:`batched_nms` (one call) over many classes.
    """
    if checks_enabled():
        check_boxes("boxes", boxes, ndim=3)
        check_float("scores", scores, finite=False)
        if scores.dim() != 3 or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
            raise ValueError(
                f"scores: expected shape (B, C, N) = ({boxes.shape[0]}, C, {boxes.shape[1]}), "
                f"got {tuple(scores.shape)}"
            )
        check_scalar("iou_threshold", iou_threshold, low=0.0, high=1.0)
    return torch.ops.assignlab.nms(
        boxes.to(torch.float32), scores.to(torch.float32), max_output_per_class, float(iou_threshold),
        None if score_threshold is None else float(score_threshold),
    )


class NMS(nn.Module):
    """Exportable single-group NMS: ``forward(boxes (N, 4), scores (N,)) -> keep (K,)``."""

    def __init__(self, iou_threshold: float = 0.5, max_output: int | None = None,
                 score_threshold: float | None = None) -> None:
        super().__init__()
        self.iou_threshold = check_scalar("iou_threshold", iou_threshold, low=0.0, high=1.0)
        self.max_output = max_output
        self.score_threshold = score_threshold

    def forward(self, boxes: Float[Tensor, "N 4"], scores: Float[Tensor, " N"]) -> Int[Tensor, " K"]:
        if checks_enabled():
            _check_common(boxes, scores, self.iou_threshold, self.max_output, self.score_threshold)
        return _nms(boxes, scores, self.iou_threshold, self.max_output, self.score_threshold)


class BatchedNMS(NMS):
    """Exportable class-aware NMS: ``forward(boxes (N, 4), scores (N,), idxs (N,)) -> keep (K,)``."""

    def forward(  # type: ignore[override]
        self, boxes: Float[Tensor, "N 4"], scores: Float[Tensor, " N"], idxs: Int[Tensor, " N"]
    ) -> Int[Tensor, " K"]:
        if checks_enabled():
            _check_common(boxes, scores, self.iou_threshold, self.max_output, self.score_threshold)
            check_integer("idxs", idxs)
            check_shape("idxs", idxs, (boxes.shape[0],))
        return _nms(_group_offsets(boxes, idxs), scores, self.iou_threshold, self.max_output,
                    self.score_threshold)
