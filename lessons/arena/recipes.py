"""The arena's contestants: one :class:`Recipe` per assigner = the assigner + the loss its paper pairs with it.

Shape shorthand: ``B`` images, ``N`` priors, ``M`` gts per image (padded), ``C`` classes, ``P`` positives.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``.

A recipe sees the detector only through :class:`Predictions` and the assigner only through
:class:`~exportable.assigners.result.AssignResult`, so every assigner plugs in the same way:

- ``build(C)`` makes the assigner (the paper's defaults; ``num_levels=3`` where an assigner needs it);
- ``assign(assigner, priors, predictions, gts, progress)`` calls it with what it reads: anchors (MaxIoU,
  ATSS) or points and detached predictions as probabilities (SimOTA, TOOD, O2F), plus O2F's ``T(e)``;
- ``loss(predictions, priors, result)`` returns the named loss terms (each already normalised);
- ``score(predictions)`` gives the ``(B, N, C)`` detection scores used at test time.

:data:`RECIPES` is the explicit registry: a name -> recipe dict built from imported classes. An assigner
added later plugs in with one entry (reuse an ``_assign_*`` adapter when its inputs are the same).

The pairings (``docs/algorithms.md`` §4, §8-§11):

- ``retinanet``: MaxIoU 0.5 / 0.4 on anchors; focal loss (hard labels), GIoU x 2; score ``sigmoid(cls)``.
- ``atss``: ATSS top-9 per level on anchors; focal loss, GIoU x 2 weighted by the centre-ness target,
  centre-ness BCE; score ``cls * ctr``.
- ``simota``: SimOTA (YOLOX) on points; BCE to one-hot x IoU at positives, objectness BCE on every prior,
  GIoU x 5; score ``cls * obj``.
- ``tood``: TaskAligned (TOOD) on points; quality focal loss to ``t_hat``, GIoU x 2 weighted by ``t_hat``;
  score ``sigmoid(cls)``.
- ``o2f``: O2F on points (one certain positive, soft ambiguous ones, ``T(e)`` 0.6 -> 0.2); O2F's soft focal loss
  on ``cls * ctr`` and centre-ness-weighted GIoU x 2; score ``cls * ctr``, also evaluated NMS-free.

Where the arena departs from a paper, on purpose and the same for everyone: one prior per location
(square anchors of side ``anchor_scale * stride``), boxes regressed as FCOS distances and decoded before the
loss, GIoU for every box loss (YOLOX uses an IoU loss), no TOOD T-head and no ATSS warm-up before TOOD's
assigner (ultralytics trains TAL from scratch the same way), one shared NMS setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from exportable.assigners.atss import ATSSAssigner
from exportable.assigners.max_iou import MaxIoUAssigner
from exportable.assigners.o2f import O2FAssigner, soft_ceiling
from exportable.assigners.result import AssignResult
from exportable.assigners.simota import SimOTAAssigner
from exportable.assigners.task_aligned import TaskAlignedAssigner
from exportable.batching import GtBatch
from exportable.losses import O2FLoss, centerness_target, sigmoid_focal_loss
from lessons.arena.losses import bce_sum, giou_loss, quality_focal_loss
from lessons.arena.model import Priors

__all__ = ["Predictions", "Progress", "Recipe", "RECIPES"]


class Predictions(NamedTuple):
    """What recipes read: ``cls_logits (B, N, C)``, decoded ``boxes (B, N, 4)``, ``quality_logits (B, N)``."""

    cls_logits: Float[Tensor, "B N C"]
    boxes: Float[Tensor, "B N 4"]
    quality_logits: Float[Tensor, "B N"]

    def detach(self) -> Predictions:
        return Predictions(*(t.detach() for t in self))


class Progress(NamedTuple):
    """Where training is: ``epoch`` (0-based) of ``num_epochs`` (O2F's ``T(e)`` reads it)."""

    epoch: int
    num_epochs: int


@dataclass(frozen=True)
class Recipe:
    """One contestant; see the module docstring for what each field does."""

    title: str
    build: Callable[[int], nn.Module]
    assign: Callable[[Callable[..., AssignResult], Priors, Predictions, GtBatch, Progress], AssignResult]
    loss: Callable[[Predictions, Priors, AssignResult], dict[str, Tensor]]
    score: Callable[[Predictions], Float[Tensor, "B N C"]]
    nms_free: bool = False  # also evaluated without NMS as its paper intends
    onnx_entry: str | None = None  # catalog entry of the same assigner (--assign-backend onnxruntime)
    quality_prior: float = 0.5  # initial sigmoid of the quality logit (FCOS centre-ness 0.5, YOLOX objectness 0.01)


# ---------------------------------------------------------------------------------------------------
# Scores (probabilities, never logits: what the assigners take)


def cls_prob(p: Predictions) -> Tensor:
    return p.cls_logits.sigmoid()  # (B, N, C)


def cls_times_quality(p: Predictions) -> Tensor:
    return p.cls_logits.sigmoid() * p.quality_logits.sigmoid().unsqueeze(-1)  # (B, N, C)


def _num_pos(result: AssignResult) -> Tensor:
    return result.positive.sum().clamp(min=1).to(torch.float32)  # () at least 1


# ---------------------------------------------------------------------------------------------------
# Assign adapters: what each assigner reads


def _assign_anchors(assigner, priors: Priors, pred: Predictions, gts: GtBatch, progress: Progress) -> AssignResult:
    return assigner(priors.anchors, gts.boxes, gts.labels, gts.mask)


def _assign_anchors_levels(assigner, priors: Priors, pred: Predictions, gts: GtBatch, progress: Progress):
    return assigner(priors.anchors, priors.level_ids, gts.boxes, gts.labels, gts.mask)


def _assign_points(score: Callable[[Predictions], Tensor]):
    """Point assigners that read ``(points, strides, pred_scores, pred_boxes, gts)``; ``score`` makes the scores."""

    def assign(assigner, priors: Priors, pred: Predictions, gts: GtBatch, progress: Progress) -> AssignResult:
        return assigner(priors.points, priors.strides, score(pred), pred.boxes, gts.boxes, gts.labels, gts.mask)

    return assign


def _sqrt_cls_obj(p: Predictions) -> Tensor:
    return cls_times_quality(p).sqrt()  # (B, N, C) mmdetection 3.x's SimOTA input


def _assign_o2f(assigner, priors: Priors, pred: Predictions, gts: GtBatch, progress: Progress) -> AssignResult:
    ceiling = soft_ceiling(progress.epoch, max(progress.num_epochs, 2))  # () T(e), 0.6 -> 0.2 (one epoch: 0.6)
    return assigner(priors.points, priors.strides, cls_times_quality(pred), pred.boxes, gts.boxes, gts.labels,
                    gts.mask, ceiling)


# ---------------------------------------------------------------------------------------------------
# Losses, one per paper


def loss_retinanet(pred: Predictions, priors: Priors, res: AssignResult) -> dict[str, Tensor]:
    """Focal loss on hard labels (ignored anchors weight 0) + GIoU x 2, both over the number of positives."""
    pos, n = res.positive, _num_pos(res)
    cls = sigmoid_focal_loss(pred.cls_logits, res.labels, res.weights, reduction="sum") / n
    box = 2.0 * giou_loss(pred.boxes[pos], res.boxes[pos]) / n  # (P, 4) pairs
    return {"cls": cls, "box": box}


def loss_atss(pred: Predictions, priors: Priors, res: AssignResult) -> dict[str, Tensor]:
    """Focal loss + GIoU x 2 weighted by the centre-ness target (over its sum) + centre-ness BCE."""
    pos, n = res.positive, _num_pos(res)
    cls = sigmoid_focal_loss(pred.cls_logits, res.labels, res.weights, reduction="sum") / n
    points = priors.points.expand(pos.shape[0], -1, -1)[pos]  # (P, 2)
    ctr = centerness_target(points, res.boxes[pos])  # (P,)
    box = 2.0 * giou_loss(pred.boxes[pos], res.boxes[pos], ctr) / ctr.sum().clamp(min=1e-6)
    quality = bce_sum(pred.quality_logits[pos], ctr) / n
    return {"cls": cls, "box": box, "ctr": quality}


def loss_yolox(pred: Predictions, priors: Priors, res: AssignResult) -> dict[str, Tensor]:
    """YOLOX: BCE to one-hot x IoU at positives, objectness BCE on every prior, GIoU x 5; all over #positives."""
    pos, n = res.positive, _num_pos(res)
    c = pred.cls_logits.shape[-1]
    cls = bce_sum(pred.cls_logits[pos], res.dense_scores(c)[pos]) / n  # (P, C)
    obj = bce_sum(pred.quality_logits, pos.to(pred.quality_logits.dtype)) / n  # (B, N)
    box = 5.0 * giou_loss(pred.boxes[pos], res.boxes[pos]) / n
    return {"cls": cls, "obj": obj, "box": box}


def loss_tood(pred: Predictions, priors: Priors, res: AssignResult) -> dict[str, Tensor]:
    """TOOD: quality focal loss to ``t_hat`` + GIoU x 2 weighted by ``t_hat``; both over ``sum(t_hat)``."""
    pos = res.positive
    c = pred.cls_logits.shape[-1]
    norm = res.target_scores.sum().clamp(min=1.0)  # () mmdetection clamps the alignment sum at 1
    cls = quality_focal_loss(pred.cls_logits, res.dense_scores(c)) / norm
    box = 2.0 * giou_loss(pred.boxes[pos], res.boxes[pos], res.target_scores[pos]) / norm
    return {"cls": cls, "box": box}


_O2F_LOSS = O2FLoss()


def loss_o2f(pred: Predictions, priors: Priors, res: AssignResult) -> dict[str, Tensor]:
    """O2F's loss: soft focal on ``cls * ctr`` (certain 1, ambiguous ``T``-scaled) + centre-ness-weighted GIoU x 2."""
    out = _O2F_LOSS(cls_times_quality(pred), pred.boxes, priors.points, res.labels, res.target_scores, res.weights,
                    res.boxes)
    return {"cls": out.loss_cls, "box": out.loss_bbox}


# ---------------------------------------------------------------------------------------------------
# The registry

RECIPES: dict[str, Recipe] = {
    "retinanet": Recipe(
        "RetinaNet: MaxIoU 0.5 / 0.4 (anchors)",
        build=lambda c: MaxIoUAssigner.retinanet(num_classes=c),
        assign=_assign_anchors, loss=loss_retinanet, score=cls_prob),
    "atss": Recipe(
        "ATSS: mean + std of 9 per level (anchors)",
        build=lambda c: ATSSAssigner(topk=9, num_levels=3, num_classes=c),
        assign=_assign_anchors_levels, loss=loss_atss, score=cls_times_quality),
    "simota": Recipe(
        "SimOTA: cost + dynamic k (points)",
        build=lambda c: SimOTAAssigner(),
        assign=_assign_points(_sqrt_cls_obj), loss=loss_yolox, score=cls_times_quality, quality_prior=0.01),
    "tood": Recipe(
        "TOOD: task-aligned top-13 (points)",
        build=lambda c: TaskAlignedAssigner.tood(),
        assign=_assign_points(cls_prob), loss=loss_tood, score=cls_prob, onnx_entry="task_aligned_assigner"),
    "o2f": Recipe(
        "O2F: one certain + soft ambiguous (points)",
        build=lambda c: O2FAssigner(num_classes=c),
        assign=_assign_o2f, loss=loss_o2f, score=cls_times_quality, nms_free=True),
}
