"""Training losses the arena needs beyond :mod:`exportable.losses`: GIoU and the quality focal loss.

Shape shorthand: ``B`` images, ``N`` priors, ``C`` classes, ``P`` positives. Boxes are ``(x1, y1, x2, y2)``
in absolute pixels, float32, ``x1 <= x2``. Losses return SUMS; each method divides by its own normaliser
(number of positives, sum of centre-ness targets, sum of alignment targets), as its paper does.

- :func:`giou_loss`: ``1 - GIoU(pred, target)`` per pair (Rezatofighi et al. 2019), optionally weighted.
- :func:`quality_focal_loss`: the soft-target focal loss of GFL (Li et al. 2020), which TOOD uses as its
  task-aligned loss: ``|t - p|^beta * BCE(p, t)`` for every (prior, class), ``t`` the soft target
  (``t_hat`` at the positive's class, 0 elsewhere), ``p = sigmoid(logit)``. A hard target ``t = 1`` makes
  it the focal loss without ``alpha``.
- :func:`bce_sum`: plain BCE with logits, summed (YOLOX's classification and objectness, ATSS's
  centre-ness).

The focal loss of RetinaNet and ATSS is :func:`exportable.losses.sigmoid_focal_loss`; O2F's is
:class:`exportable.losses.O2FLoss`.
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from exportable.boxes import box_giou

__all__ = ["giou_loss", "quality_focal_loss", "bce_sum"]


def giou_loss(
    pred: Float[Tensor, "P 4"], target: Float[Tensor, "P 4"], weights: Float[Tensor, " P"] | None = None
) -> Float[Tensor, ""]:
    """``sum(w * (1 - GIoU(pred, target)))`` over aligned pairs; 0 when there is no pair."""
    if pred.shape[0] == 0:
        return pred.sum() * 0.0  # keeps the graph (and the dtype) without positives
    loss = 1.0 - box_giou(pred, target, aligned=True)  # (P,)
    return (loss if weights is None else loss * weights).sum()


def quality_focal_loss(
    logits: Float[Tensor, "B N C"], target: Float[Tensor, "B N C"], beta: float = 2.0
) -> Float[Tensor, ""]:
    """``sum(|t - p|^beta * BCE(p, t))`` with ``p = sigmoid(logits)``; ``target`` soft, in [0, 1]."""
    p = logits.sigmoid()  # (B, N, C)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, N, C)
    return (bce * (target - p).abs().pow(beta)).sum()


def bce_sum(logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Float[Tensor, ""]:
    """``sum(w * BCE(sigmoid(logits), target))``, any matching shapes."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # same shape as logits
    return (loss if weights is None else loss * weights).sum() if loss.numel() else logits.sum() * 0.0
