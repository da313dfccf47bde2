"""Detection losses with mmdetection's numbers: sigmoid focal loss, L1 / smooth L1, RetinaNet's loss.

Shape shorthand::

    B     images in a batch
    N     anchors of all levels concatenated (or any flattened set of predictions)
    C     classes (no background column: the background label is C)
    L     FPN levels; one head output ``(B, A * K, H_l, W_l)`` per level, A anchors per location

Losses take LOGITS (as mmdetection's ``FocalLoss``); assigners take probabilities. Boxes here are
DeltaXYWH deltas ``(dx, dy, dw, dh)`` against ``(x1, y1, x2, y2)`` anchors.

Reduction (mmdetection ``weight_reduce_loss``): the elementwise loss is multiplied by the weights, then
``reduction="none"`` keeps it, ``"sum"`` sums it, ``"mean"`` averages it, or, with ``avg_factor``, divides
the SUM by ``avg_factor`` (RetinaNet: ``avg_factor = num_total_pos``). ``avg_factor`` with ``"sum"`` is an
error, as in mmdetection. mmdetection 2.11 divides by ``avg_factor`` exactly; later 2.x and 3.3 divide by
``avg_factor + eps`` with ``eps = torch.finfo(float32).eps`` (a relative 1.2e-7 / avg_factor; pass
``avg_factor_eps=torch.finfo(torch.float32).eps`` for 3.3's numbers).

Everything here exports: the one-hot target is ``labels[..., None] == arange(C)`` (labels equal to C give
an all-zero row, mmdetection's ``one_hot(labels, C + 1)[:, :C]``), and the BCE is
``binary_cross_entropy_with_logits`` (stable for any logit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from exportable._checks import check_float, check_integer, check_scalar, check_shape, checks_enabled

__all__ = [
    "O2FLoss",
    "O2FLosses",
    "RetinaNetLoss",
    "RetinaNetLosses",
    "centerness_target",
    "flatten_levels",
    "l1_loss",
    "o2f_classification_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "weight_reduce_loss",
]

Reduction = Literal["none", "mean", "sum"]
AvgFactor = float | int | Tensor | None
_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------------------
# Reduction


def weight_reduce_loss(
    loss: Tensor,
    weights: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor = None,
    avg_factor_eps: float = 0.0,
) -> Tensor:
    """mmdetection's ``weight_reduce_loss``: ``loss * weights``, then reduce (see the module docstring).

    ``weights`` must broadcast to ``loss``. ``avg_factor`` may be a number or a 0-d tensor (any dtype).
    """
    _check_reduction(reduction, avg_factor)
    if weights is not None:
        loss = loss * weights  # broadcast to loss's shape
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return _total(loss)
        return loss
    if reduction == "none":
        return loss  # mmdetection ignores avg_factor here
    if isinstance(avg_factor, Tensor):
        denom = avg_factor.to(loss.dtype)  # ()
    else:
        denom = float(avg_factor)
    if avg_factor_eps:
        denom = denom + avg_factor_eps
    return _total(loss) / denom  # ()


def _total(loss: Tensor) -> Tensor:
    """Sum of every element: the last dim (C or 4) in the loss's dtype, the rest accumulated in float64.

    torch sums float32 pairwise (error ~1e-7); onnxruntime's ReduceSum over 168,000 float32 terms was
    8e-6 relative off (more for RetinaNet's 29 million). Accumulating the per-row sums in float64 keeps
    both within ~1e-7 of the exact sum, at the cost of one float64 copy of a ``(B, N)`` tensor.
    """
    if loss.dim() == 0:
        return loss
    rows = loss.sum(dim=-1)  # (...) one sum per prediction
    return rows.to(torch.float64).sum().to(loss.dtype)  # ()


def _check_reduction(reduction: str, avg_factor: AvgFactor) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if avg_factor is not None and reduction == "sum":
        raise ValueError('avg_factor: can not be used with reduction="sum" (mmdetection raises too)')


# ---------------------------------------------------------------------------------------------------------
# Classification: sigmoid focal loss


def sigmoid_focal_loss(
    logits: Float[Tensor, "*batch C"],
    labels: Int[Tensor, " *batch"],
    weights: Float[Tensor, " *batch"] | Float[Tensor, "*batch C"] | None = None,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor = None,
    avg_factor_eps: float = 0.0,
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) with mmdetection's ``py_sigmoid_focal_loss`` numbers.

    For every prediction and class c, with ``t = 1 if labels == c else 0`` and ``p = sigmoid(logit)``:
    ``loss = BCE(logit, t) * (alpha * t + (1 - alpha) * (1 - t)) * |t - p| ** gamma``. Labels run over
    ``[0, C]``; ``C`` is background (every class target 0). ``weights`` is per prediction ``(...)`` (broadcast
    over classes, mmdetection's ``label_weights``) or per prediction and class ``(..., C)``.

    Args:
        logits: ``(..., C)`` classification logits (e.g. ``(B, N, C)``).
        labels: ``(...)`` int64 class per prediction, ``C`` for background.
        weights: optional loss weights (``label_weights``: 0 drops an anchor).
        alpha, gamma: focal parameters (RetinaNet 0.25 and 2).
        reduction, avg_factor, avg_factor_eps: see the module docstring.
    """
    if checks_enabled():
        _check_focal(logits, labels, weights, alpha, gamma)
    loss = _focal_elementwise(logits, labels, alpha, gamma)  # (..., C)
    if weights is not None and weights.dim() == labels.dim():
        weights = weights.unsqueeze(-1)  # (..., 1) one weight per prediction
    return weight_reduce_loss(loss, weights, reduction, avg_factor, avg_factor_eps)


def _focal_elementwise(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    classes = torch.arange(logits.shape[-1], device=logits.device)  # (C,)
    target = (labels.unsqueeze(-1) == classes).to(logits.dtype)  # (..., C) background rows all 0
    p = logits.sigmoid()  # (..., C)
    pt = (1 - p) * target + p * (1 - target)  # (..., C) = |t - p|
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)  # (..., C)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (..., C)
    return bce * focal_weight  # (..., C)


def _check_focal(logits: Tensor, labels: Tensor, weights: Tensor | None, alpha: float, gamma: float) -> None:
    check_float("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected (..., C) with C >= 1 classes, got shape {tuple(logits.shape)}")
    check_integer("labels", labels)
    check_shape("labels", labels, tuple(logits.shape[:-1]))
    c = logits.shape[-1]
    if labels.numel() and bool(((labels < 0) | (labels > c)).any()):
        raise ValueError(
            f"labels: expected classes in [0, {c}] ({c} = background), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    if weights is not None:
        check_float("weights", weights)
        if tuple(weights.shape) not in (tuple(labels.shape), tuple(logits.shape)):
            raise ValueError(
                f"weights: expected shape {tuple(labels.shape)} (per prediction) or {tuple(logits.shape)} "
                f"(per class), got {tuple(weights.shape)}"
            )
    check_scalar("alpha", alpha, low=0.0, high=1.0)
    check_scalar("gamma", gamma, low=0.0)


# ---------------------------------------------------------------------------------------------------------
# Regression: L1 and smooth L1


def l1_loss(
    pred: Float[Tensor, "*batch 4"],
    target: Float[Tensor, "*batch 4"],
    weights: Float[Tensor, "*batch 4"] | None = None,
    *,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor = None,
    avg_factor_eps: float = 0.0,
) -> Tensor:
    """mmdetection's ``L1Loss`` (RetinaNet's box loss): ``|pred - target| * weights``, then reduced."""
    if checks_enabled():
        _check_regression(pred, target, weights)
    loss = (pred - target).abs()  # (..., 4)
    return weight_reduce_loss(loss, weights, reduction, avg_factor, avg_factor_eps)


def smooth_l1_loss(
    pred: Float[Tensor, "*batch 4"],
    target: Float[Tensor, "*batch 4"],
    weights: Float[Tensor, "*batch 4"] | None = None,
    *,
    beta: float = 1.0,
    reduction: Reduction = "mean",
    avg_factor: AvgFactor = None,
    avg_factor_eps: float = 0.0,
) -> Tensor:
    """mmdetection's ``SmoothL1Loss``: ``0.5 d^2 / beta`` if ``d < beta`` else ``d - 0.5 beta``, ``d = |pred -
    target|``. mmdetection's default ``beta`` is 1.0 (detectron2's RetinaNet uses 0.1, its 2018 configs 0.11;
    mmdetection's RetinaNet uses :func:`l1_loss`)."""
    if checks_enabled():
        _check_regression(pred, target, weights)
        if check_scalar("beta", beta) <= 0:
            raise ValueError(f"beta: must be > 0, got {beta}")
    diff = (pred - target).abs()  # (..., 4)
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)  # (..., 4)
    return weight_reduce_loss(loss, weights, reduction, avg_factor, avg_factor_eps)


def _check_regression(pred: Tensor, target: Tensor, weights: Tensor | None) -> None:
    check_float("pred", pred)
    check_float("target", target, finite=False)  # a zero-size gt encodes to -inf, as in mmdetection
    if target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    if weights is not None:
        check_float("weights", weights)
        if weights.shape != pred.shape:
            raise ValueError(f"weights: expected the shape of pred {tuple(pred.shape)}, got {tuple(weights.shape)}")


# ---------------------------------------------------------------------------------------------------------
# RetinaNet's loss


class RetinaNetLosses(NamedTuple):
    """``loss_cls`` and ``loss_bbox``, each a 0-d tensor (mmdetection sums its per-level lists to these)."""

    loss_cls: Float[Tensor, ""]
    loss_bbox: Float[Tensor, ""]


def flatten_levels(outputs: Sequence[Float[Tensor, "B AK H W"]], channels: int) -> Float[Tensor, "B N K"]:
    """Head outputs ``(B, A * K, H_l, W_l)`` per level -> ``(B, N, K)`` in the anchors' order.

    ``permute(0, 2, 3, 1).reshape(B, -1, K)`` per level (the document's ``loss_single``), levels
    concatenated: row ``(y * W + x) * A + a`` of each level, matching the anchor generator's order.
    """
    if len(outputs) == 0:
        raise ValueError("outputs: need at least one level")
    flat = []
    for i, out in enumerate(outputs):
        check_shape(f"outputs[{i}]", out, ("B", "AK", "H", "W"))
        if out.shape[1] % channels:
            raise ValueError(f"outputs[{i}]: {out.shape[1]} channels are not a multiple of K = {channels}")
        flat.append(out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, channels))  # (B, H * W * A, K)
    return torch.cat(flat, dim=1)  # (B, N, K)


class RetinaNetLoss(nn.Module):
    """RetinaNet's loss (mmdetection ``AnchorHead.loss`` with ``FocalLoss`` and ``L1Loss``), batched.

    ``loss_cls = loss_cls_weight * sum(focal(cls_logits, labels) * label_weights) / num_total_pos`` and
    ``loss_bbox = loss_bbox_weight * sum(|bbox_deltas - bbox_targets| * bbox_weights) / num_total_pos``
    (``avg_factor = num_total_pos`` because RetinaNet does not sample; the targets come from
    :class:`~exportable.retinanet.RetinaNetTargets`).

    Args:
        alpha, gamma: focal parameters (0.25, 2).
        loss_cls_weight, loss_bbox_weight: mmdetection's ``loss_weight`` of each loss (1, 1).
        bbox_loss: ``"l1"`` (mmdetection's RetinaNet) or ``"smooth_l1"`` with ``beta``.
        avg_factor_eps: 0 (mmdetection 2.11) or ``torch.finfo(torch.float32).eps`` (3.3).

    ``forward(cls_logits (B, N, C), bbox_deltas (B, N, 4), labels (B, N), label_weights (B, N),
    bbox_targets (B, N, 4), bbox_weights (B, N, 4), num_total_pos ())`` returns :class:`RetinaNetLosses`.
    :meth:`per_level` is the document's loop (``loss_single`` per level, same ``avg_factor``); its sum
    equals :meth:`forward` up to float summation order.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 1.0,
        bbox_loss: Literal["l1", "smooth_l1"] = "l1",
        beta: float = 1.0,
        avg_factor_eps: float = 0.0,
    ) -> None:
        super().__init__()
        self.alpha = check_scalar("alpha", alpha, low=0.0, high=1.0)
        self.gamma = check_scalar("gamma", gamma, low=0.0)
        self.loss_cls_weight = check_scalar("loss_cls_weight", loss_cls_weight)
        self.loss_bbox_weight = check_scalar("loss_bbox_weight", loss_bbox_weight)
        if bbox_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"bbox_loss: expected 'l1' or 'smooth_l1', got {bbox_loss!r}")
        self.bbox_loss = bbox_loss
        self.beta = check_scalar("beta", beta)
        if self.beta <= 0:
            raise ValueError(f"beta: must be > 0, got {beta}")
        self.avg_factor_eps = check_scalar("avg_factor_eps", avg_factor_eps, low=0.0)

    def forward(
        self,
        cls_logits: Float[Tensor, "B N C"],
        bbox_deltas: Float[Tensor, "B N 4"],
        labels: Int[Tensor, "B N"],
        label_weights: Float[Tensor, "B N"],
        bbox_targets: Float[Tensor, "B N 4"],
        bbox_weights: Float[Tensor, "B N 4"],
        num_total_pos: Int[Tensor, ""],
    ) -> RetinaNetLosses:
        if checks_enabled():
            _check_loss_inputs(cls_logits, bbox_deltas, labels, label_weights, bbox_targets, bbox_weights,
                               num_total_pos)
        return self._loss(cls_logits, bbox_deltas, labels, label_weights, bbox_targets, bbox_weights,
                          num_total_pos)

    def _loss(self, cls_logits, bbox_deltas, labels, label_weights, bbox_targets, bbox_weights, avg_factor):
        focal = _focal_elementwise(cls_logits, labels, self.alpha, self.gamma)  # (B, N, C)
        loss_cls = weight_reduce_loss(focal, label_weights.unsqueeze(-1), "mean", avg_factor, self.avg_factor_eps)
        if self.bbox_loss == "l1":
            box = (bbox_deltas - bbox_targets).abs()  # (B, N, 4)
        else:
            diff = (bbox_deltas - bbox_targets).abs()  # (B, N, 4)
            box = torch.where(diff < self.beta, 0.5 * diff * diff / self.beta, diff - 0.5 * self.beta)  # (B, N, 4)
        # Rows with weight 0 may hold target 0 only (RetinaNetTargets); mask so inf * 0 never makes NaN.
        box = torch.where(bbox_weights != 0, box * bbox_weights, 0.0)  # (B, N, 4)
        loss_bbox = weight_reduce_loss(box, None, "mean", avg_factor, self.avg_factor_eps)  # ()
        return RetinaNetLosses(self.loss_cls_weight * loss_cls, self.loss_bbox_weight * loss_bbox)

    def loss_single(
        self,
        cls_score: Float[Tensor, "B AC H W"],
        bbox_pred: Float[Tensor, "B A4 H W"],
        labels: Int[Tensor, "B Nl"],
        label_weights: Float[Tensor, "B Nl"],
        bbox_targets: Float[Tensor, "B Nl 4"],
        bbox_weights: Float[Tensor, "B Nl 4"],
        num_total_samples: Int[Tensor, ""] | int,
    ) -> RetinaNetLosses:
        """The document's ``loss_single`` for one level: head outputs ``(B, A * C, H, W)`` and
        ``(B, A * 4, H, W)`` against that level's targets ``(B, N_l, ...)``, divided by ``num_total_samples``."""
        c = cls_score.shape[1] * 4 // bbox_pred.shape[1]  # C = (A * C) / A, A = (A * 4) / 4
        cls = cls_score.permute(0, 2, 3, 1).reshape(-1, c)  # (B * N_l, C)
        box = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4)  # (B * N_l, 4)
        if checks_enabled():
            _check_loss_inputs(cls[None], box[None], labels.reshape(1, -1), label_weights.reshape(1, -1),
                               bbox_targets.reshape(1, -1, 4), bbox_weights.reshape(1, -1, 4), None)
        return self._loss(cls, box, labels.reshape(-1), label_weights.reshape(-1), bbox_targets.reshape(-1, 4),
                          bbox_weights.reshape(-1, 4), num_total_samples)

    def per_level(
        self,
        cls_scores: Sequence[Float[Tensor, "B AC H W"]],
        bbox_preds: Sequence[Float[Tensor, "B A4 H W"]],
        labels: Int[Tensor, "B N"],
        label_weights: Float[Tensor, "B N"],
        bbox_targets: Float[Tensor, "B N 4"],
        bbox_weights: Float[Tensor, "B N 4"],
        num_total_pos: Int[Tensor, ""] | int,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The document's ``loss``: ``images_to_levels`` on the targets, then :meth:`loss_single` per level.

        Returns mmdetection's ``(losses_cls, losses_bbox)``: one 0-d loss per level each (sum them for the
        totals). Eager only.
        """
        from exportable.retinanet import images_to_levels

        if len(cls_scores) != len(bbox_preds):
            raise ValueError(f"bbox_preds: {len(bbox_preds)} levels, cls_scores has {len(cls_scores)}")
        counts = [(b.shape[1] // 4) * b.shape[2] * b.shape[3] for b in bbox_preds]  # N_l = A * H * W
        levels = zip(
            cls_scores,
            bbox_preds,
            images_to_levels(labels, counts),
            images_to_levels(label_weights, counts),
            images_to_levels(bbox_targets, counts),
            images_to_levels(bbox_weights, counts),
        )
        losses = [self.loss_single(*level, num_total_samples=num_total_pos) for level in levels]
        return [lo.loss_cls for lo in losses], [lo.loss_bbox for lo in losses]


def _check_loss_inputs(cls_logits, bbox_deltas, labels, label_weights, bbox_targets, bbox_weights, num_total_pos):
    check_float("cls_logits", cls_logits)
    check_shape("cls_logits", cls_logits, ("B", "N", "C"))
    if cls_logits.shape[-1] < 1:
        raise ValueError(f"cls_logits: need C >= 1 classes, got shape {tuple(cls_logits.shape)}")
    b, n, c = cls_logits.shape
    check_float("bbox_deltas", bbox_deltas)
    check_shape("bbox_deltas", bbox_deltas, (b, n, 4))
    check_integer("labels", labels)
    check_shape("labels", labels, (b, n))
    if labels.numel() and bool(((labels < 0) | (labels > c)).any()):
        raise ValueError(f"labels: expected classes in [0, {c}] ({c} = background)")
    check_float("label_weights", label_weights)
    check_shape("label_weights", label_weights, (b, n))
    check_float("bbox_targets", bbox_targets, finite=False)  # -inf: a zero-size gt (mmdetection's encode)
    check_shape("bbox_targets", bbox_targets, (b, n, 4))
    check_float("bbox_weights", bbox_weights)
    check_shape("bbox_weights", bbox_weights, (b, n, 4))
    if num_total_pos is not None:
        check_integer("num_total_pos", num_total_pos)
        check_shape("num_total_pos", num_total_pos, ())
        if int(num_total_pos) < 1:
            raise ValueError(f"num_total_pos: the avg_factor must be >= 1, got {int(num_total_pos)}")


# ---------------------------------------------------------------------------------------------------------
# O2F's loss (Li et al., CVPR 2023; the authors' ``strongwolf/o2f`` ``sfl.py`` and ``O2FHead.loss``)
#
# On PROBABILITIES p = sigmoid(cls) * sigmoid(ctr) (the score the assigner ranks and inference keeps), with
# the targets of :class:`exportable.assigners.o2f.O2FAssigner` (``docs/algorithms.md`` §11.3):
#
#   1. every (point, class) entry: 0.75 * p^2 * BCE(p, 0)            (QFL's negative term, beta = 2)
#   2. at (positive point, its class) that entry is REPLACED by w * BCE(p, t): t = 1, w = 1 for the certain
#      positive, t = p_j / max p * T, w = 0.4 for ambiguous anchors (no |t - p|^beta factor on positives)
#   3. loss_cls = sum / max(#positives, 1)
#   4. loss_bbox = 2.0 * sum_pos c * (1 - GIoU(pred, gt)) / max(sum_pos c, 1e-6) over ALL positives, with c
#      the FCOS centerness of the point in its gt: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
#
# BCE is torch's ``binary_cross_entropy`` on probabilities: ``(t - 1) max(log1p(-p), -100) - t max(log p, -100)``.
# ---------------------------------------------------------------------------------------------------------


class O2FLosses(NamedTuple):
    """``loss_cls`` and ``loss_bbox`` of O2F, each a 0-d tensor."""

    loss_cls: Float[Tensor, ""]
    loss_bbox: Float[Tensor, ""]


def _bce_prob(p: Tensor, t: Tensor | float) -> Tensor:
    """torch's ``binary_cross_entropy(p, t)`` on probabilities, written out (logs clamped at -100)."""
    log_p = torch.log(p).clamp(min=-100.0)  # (...)
    log_q = torch.log1p(-p).clamp(min=-100.0)  # (...) log(1 - p)
    return (t - 1) * log_q - t * log_p  # (...)


def _below(labels: Tensor, c: int) -> Tensor:
    """``labels < c`` with ``c`` (a size read from a shape) first made a tensor on the labels' device.

    Same values as ``labels < c``. Compared with a bare size, the exported ``Less`` mixes a graph input
    with a host-side shape value, and onnxruntime's CUDA provider then keeps it -- and the gathers and
    selects it feeds, ``pred_scores`` included -- on the CPU (``python -m exportable placement o2f_loss``).
    """
    return labels < torch.full_like(labels, c)  # (...)


def o2f_classification_loss(
    pred_scores: Float[Tensor, "*batch C"],
    labels: Int[Tensor, " *batch"],
    target_scores: Float[Tensor, " *batch"],
    weights: Float[Tensor, " *batch"],
    *,
    neg_weight: float = 0.75,
    beta: float = 2.0,
) -> Float[Tensor, "*batch C"]:
    """Elementwise O2F classification loss ``(..., C)`` (the authors' ``quality_focal_loss_with_prob``).

    ``neg_weight * p^beta * BCE(p, 0)`` everywhere, replaced at ``(row, labels[row])`` of positive rows
    (``labels < C``) by ``weights[row] * BCE(p, target_scores[row])``. ``pred_scores`` are probabilities.
    """
    c = pred_scores.shape[-1]
    p = pred_scores
    scale = p * p if beta == 2.0 else p.pow(beta)  # (..., C) torch's pow(2) is this product
    negative = _bce_prob(p, 0.0) * scale * neg_weight  # (..., C)
    positive = _below(labels, c)  # (...)
    safe = torch.where(positive, labels, 0)  # (...) any class for negatives; masked below
    p_pos = torch.gather(p, -1, safe.unsqueeze(-1)).squeeze(-1)  # (...) p at the row's class
    t = target_scores.to(p.dtype)  # (...)
    pos_term = weights.to(p.dtype) * _bce_prob(p_pos, t)  # (...)
    onehot = (labels.unsqueeze(-1) == torch.arange(c, device=labels.device)) & positive.unsqueeze(-1)  # (..., C)
    return torch.where(onehot, pos_term.unsqueeze(-1), negative)  # (..., C)


def centerness_target(
    points: Float[Tensor, "*batch 2"], boxes: Float[Tensor, "*batch 4"]
) -> Float[Tensor, " *batch"]:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of points in their boxes.

    ``(l, t, r, b)`` are the distances from the point to the box ``(x1, y1, x2, y2)``'s sides; for a point
    strictly inside they are all > 0 (O2F's positives). Rows with a zero max give 0 instead of NaN.
    """
    left = points[..., 0] - boxes[..., 0]  # (...)
    top = points[..., 1] - boxes[..., 1]  # (...)
    right = boxes[..., 2] - points[..., 0]  # (...)
    bottom = boxes[..., 3] - points[..., 1]  # (...)
    lr_max = torch.maximum(left, right)  # (...)
    tb_max = torch.maximum(top, bottom)  # (...)
    ok = (lr_max > 0) & (tb_max > 0)  # (...)
    ratio = (torch.minimum(left, right) / torch.where(ok, lr_max, 1.0)) * (
        torch.minimum(top, bottom) / torch.where(ok, tb_max, 1.0)
    )  # (...)
    return torch.where(ok, ratio.clamp(min=0), 0.0).sqrt()  # (...)


class O2FLoss(nn.Module):
    """O2F's loss (the authors' ``SoftFocalLoss`` + centerness-weighted GIoU), batched and exportable.

    Args:
        neg_weight, beta: the negative term ``neg_weight * p^beta * BCE(p, 0)`` (0.75, 2).
        loss_cls_weight: weight of ``loss_cls`` (1.0).
        loss_bbox_weight: weight of the GIoU loss (the authors' config: 2.0).
        giou_eps: eps of the GIoU's union and enclosing area (mmdetection 1e-6).
        avg_factor_eps: added to both normalisers (0; later mmdetection 2.x adds float32 eps).

    ``forward(pred_scores (B, N, C), pred_boxes (B, N, 4), points (N, 2), labels (B, N), target_scores (B, N),
    weights (B, N), target_boxes (B, N, 4))`` returns :class:`O2FLosses`. ``pred_scores`` are PROBABILITIES
    ``sigmoid(cls) * sigmoid(ctr)``; ``pred_boxes`` the decoded predicted boxes ``(x1, y1, x2, y2)``; the
    targets are :class:`~exportable.assigners.o2f.O2FAssigner`'s ``labels`` (C = background),
    ``target_scores``, ``weights`` (read at positives only) and ``boxes``.

    Where it differs from the authors' code on purpose: a batch without any positive gives ``loss_bbox = 0``
    (theirs returns the sum of all predicted distances, which is not a loss). The box term is computed
    between ``pred_boxes`` and the gt box decoded back from the point's ``(l, t, r, b)`` target, as theirs.
    Sums accumulate in float64 per row (as :class:`RetinaNetLoss`), so onnxruntime's reduction order does
    not show.
    """

    def __init__(
        self,
        neg_weight: float = 0.75,
        beta: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        giou_eps: float = 1e-6,
        avg_factor_eps: float = 0.0,
    ) -> None:
        super().__init__()
        self.neg_weight = check_scalar("neg_weight", neg_weight, low=0.0)
        self.beta = check_scalar("beta", beta, low=0.0)
        self.loss_cls_weight = check_scalar("loss_cls_weight", loss_cls_weight)
        self.loss_bbox_weight = check_scalar("loss_bbox_weight", loss_bbox_weight)
        self.giou_eps = check_scalar("giou_eps", giou_eps, low=0.0)
        self.avg_factor_eps = check_scalar("avg_factor_eps", avg_factor_eps, low=0.0)

    def forward(
        self,
        pred_scores: Float[Tensor, "B N C"],
        pred_boxes: Float[Tensor, "B N 4"],
        points: Float[Tensor, "N 2"],
        labels: Int[Tensor, "B N"],
        target_scores: Float[Tensor, "B N"],
        weights: Float[Tensor, "B N"],
        target_boxes: Float[Tensor, "B N 4"],
    ) -> O2FLosses:
        from exportable.boxes import _box_giou

        if checks_enabled():
            _check_o2f_inputs(pred_scores, pred_boxes, points, labels, target_scores, weights, target_boxes)
        c = pred_scores.shape[-1]
        positive = _below(labels, c)  # (B, N)
        num_pos = positive.sum().to(pred_scores.dtype).clamp(min=1.0)  # () avg_factor, at least 1
        # 1.-3. classification: negatives everywhere, replaced at (positive, its class)
        cls = o2f_classification_loss(pred_scores, labels, target_scores, weights, neg_weight=self.neg_weight,
                                      beta=self.beta)  # (B, N, C)
        loss_cls = _total(cls) / (num_pos + self.avg_factor_eps) * self.loss_cls_weight  # ()
        # 4. GIoU on every positive, weighted by the centerness of the point in its gt
        pos4 = positive.unsqueeze(-1)  # (B, N, 1)
        unit = target_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])  # (4,) a safe box for non-positive rows
        gts = torch.where(pos4, target_boxes, unit)  # (B, N, 4)
        pts = points.unsqueeze(0).expand_as(gts[..., :2])  # (B, N, 2)
        center = torch.where(positive, centerness_target(pts, gts), 0.0)  # (B, N)
        ltrb = torch.cat([pts - gts[..., :2], gts[..., 2:] - pts], dim=-1)  # (B, N, 4) the authors' targets
        decoded = torch.cat([pts - ltrb[..., :2], pts + ltrb[..., 2:]], dim=-1)  # (B, N, 4) decoded back
        giou = _box_giou(pred_boxes, decoded, aligned=True, eps=self.giou_eps)  # (B, N)
        box = torch.where(positive, center * (1 - giou), 0.0)  # (B, N)
        denom = _total(center.unsqueeze(-1)).clamp(min=1e-6)  # () sum of centerness, at least 1e-6
        loss_bbox = _total(box.unsqueeze(-1)) / (denom + self.avg_factor_eps) * self.loss_bbox_weight  # ()
        return O2FLosses(loss_cls, loss_bbox)


def _check_o2f_inputs(pred_scores, pred_boxes, points, labels, target_scores, weights, target_boxes) -> None:
    check_float("pred_scores", pred_scores)
    check_shape("pred_scores", pred_scores, ("B", "N", "C"))
    b, n, c = pred_scores.shape
    if c < 1:
        raise ValueError(f"pred_scores: need C >= 1 classes, got shape {tuple(pred_scores.shape)}")
    if pred_scores.numel():
        low, high = torch.aminmax(pred_scores.detach())
        if float(low) < 0 or float(high) > 1:
            raise ValueError("pred_scores: expected probabilities in [0, 1] (sigmoid(cls) * sigmoid(ctr), not logits)")
    check_float("pred_boxes", pred_boxes)
    check_shape("pred_boxes", pred_boxes, (b, n, 4))
    check_float("points", points)
    check_shape("points", points, (n, 2))
    check_integer("labels", labels)
    check_shape("labels", labels, (b, n))
    if labels.numel() and bool(((labels < 0) | (labels > c)).any()):
        raise ValueError(f"labels: expected classes in [0, {c}] ({c} = background)")
    check_float("target_scores", target_scores)
    check_shape("target_scores", target_scores, (b, n))
    if target_scores.numel() and bool(((target_scores < 0) | (target_scores > 1)).any()):
        raise ValueError("target_scores: expected soft targets in [0, 1]")
    check_float("weights", weights)
    check_shape("weights", weights, (b, n))
    check_float("target_boxes", target_boxes)
    check_shape("target_boxes", target_boxes, (b, n, 4))
