"""Task-aligned assignment as TOOD defines it (mmdetection 3.3), batched and exportable, and the blocks that
ultralytics' variant (:mod:`exportable.assigners.task_aligned_ultralytics`) builds from as well.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K = min(topk, N)`` candidates per gt. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels,
float32, ``x1 <= x2``; points are cell centres ``(x, y)``. Returns
:class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; nothing is ignored;
``labels`` = C for every non-positive).

The task-aligned metric of a (gt, point) pair is ``t = s^alpha * u^beta``: ``s`` the predicted probability
at the gt's class, ``u`` the overlap of the point's predicted box with the gt. The soft classification
target is ``t_hat``, ``t`` normalised per gt so that its best-aligned positive gets its best overlap.

TOOD's steps (``docs/algorithms.md`` §10.1; topk 13, alpha 1, beta 6):

1. ``u = IoU(pred box, gt)`` for every (gt, point) pair (mmdetection's eps 1e-6), ``s`` gathered at the gt's
   class: ``(B, M, N)`` each; ``(B, M, N, C)`` never exists.
2. ``t = s^alpha * u^beta``, no eps (whole exponents by repeated squaring: the same bits everywhere).
3. per gt the K largest ``t`` over ALL points at once (ties: lower point index first): ``(B, M, K)`` lists.
4. positive: ``t > 0`` (strict) and the point inside the gt by more than 0.01 px on every side; real gts only.
5. a point positive for several gts goes to the gt with the highest IoU among them (lower gt index on ties).
6. outputs: the matched gt, its class and box; ``overlaps`` = the winning IoU.
7. ``t_hat = t / (max t + 1e-7) * max u`` (TOODHead's ``10e-8``), maxima per gt over its final positives.

One path: eager runs exactly the code that exports. Steps 1-3, the ``(M, N)`` work, run image by image
(:func:`~exportable.batching.in_image_chunks`: a few images per step in eager, one ``Scan`` iteration per
image in the graph; images never interact, so the split never changes a result, and each step's tensors stay
in cache); steps
4-7 work on the ``(B, M, K)`` lists with scatter-reductions (``ScatterElements`` max / min in ONNX). The
eps of ``t_hat`` survives export (``optimize=False``): an all-zero metric gives ``t_hat = 0``, never NaN.
``strides`` is part of the common point-assigner signature and is not read.
"""

from __future__ import annotations

import inspect

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_scalar
from exportable.assigners._points import point_assigner_gt_rows
from exportable.assigners.result import NEGATIVE, AssignResult, empty_result
from exportable.batching import in_image_chunks
from exportable.boxes import _box_iou, _points_in_boxes
from exportable.numerics import power
from exportable.ordering import _topk

__all__ = ["TaskAlignedAssigner", "alignment_metric", "gather_gt_scores", "stal_boxes"]

IOU_EPS = 1e-6  # mmdetection's bbox_overlaps: IoU = inter / max(union, eps)


# ---------------------------------------------------------------------------------------------------------
# Building blocks (shared with task_aligned_ultralytics.py)


def gather_gt_scores(pred_scores: Float[Tensor, "B N C"], gt_labels: Int[Tensor, "B M"]) -> Float[Tensor, "B M N"]:
    """``s[b, m, n] = pred_scores[b, n, gt_labels[b, m]]``: every point's probability at each gt's class.

    One copy of the scores to ``(B * C, N)`` rows, then ``M`` rows picked per image (ONNX: ``Transpose`` and
    one ``Gather``); no ``(B, M, N)`` index. Labels must lie in ``[0, C)`` (padded rows: any valid class).
    """
    b, n, c = pred_scores.shape
    m = gt_labels.shape[1]
    by_class = pred_scores.transpose(1, 2).reshape(b * c, n)  # (B*C, N)
    rows = gt_labels + torch.arange(b, device=gt_labels.device, dtype=torch.int64).unsqueeze(1) * c  # (B, M)
    return by_class.index_select(0, rows.reshape(-1)).reshape(b, m, n)  # (B, M, N)


def alignment_metric(
    scores: Float[Tensor, "*batch"], overlaps: Float[Tensor, "*batch"], alpha: float = 1.0, beta: float = 6.0
) -> Float[Tensor, "*batch"]:
    """``t = s^alpha * u^beta`` elementwise (no eps), inputs ``>= 0``, powers by :func:`~exportable.numerics.power`
    (repeated squaring, ``sqrt`` for 0.5): the same bits in eager, onnxruntime and the lessons' reference."""
    if alpha == 1.0:
        return power(overlaps, beta).mul_(scores)  # (*batch) no copy of s
    return power(scores, alpha).mul_(power(overlaps, beta))  # (*batch)


def stal_boxes(
    gt_boxes: Float[Tensor, "B M 4"], gt_mask: Bool[Tensor, "B M"], min_side: float
) -> Float[Tensor, "B M 4"]:
    """ultralytics' small-target-aware (STAL) boxes for the in-gt test: a real gt's width or height below
    ``min_side`` becomes ``min_side`` about the box centre; padded rows keep their sides.

    Written as ultralytics writes it (to ``(cx, cy, w, h)`` and back), so even unchanged boxes round as theirs.
    """
    x1, y1, x2, y2 = gt_boxes.unbind(-1)  # 4 x (B, M)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2  # (B, M)
    w, h = x2 - x1, y2 - y1  # (B, M)
    if min_side > 0:
        w = torch.where((w < min_side) & gt_mask, min_side, w)  # (B, M)
        h = torch.where((h < min_side) & gt_mask, min_side, h)  # (B, M)
    hw, hh = w / 2, h / 2  # (B, M)
    return torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=-1)  # (B, M, 4)


def list_entries(top_i: Int[Tensor, "B M K"], n: int) -> tuple[Int[Tensor, " L"], Int[Tensor, " L"]]:
    """The top-K lists flattened, ``L = B*M*K``: each entry's point row in ``B*N`` and its gt's index."""
    b, m, _ = top_i.shape
    point = (top_i + torch.arange(b, device=top_i.device, dtype=torch.int64).view(b, 1, 1) * n).reshape(-1)  # (L,)
    gt = torch.arange(m, device=top_i.device, dtype=torch.int64).view(1, m, 1).expand_as(top_i).reshape(-1)  # (L,)
    return point, gt


def scatter_into(index: Int[Tensor, " P"], values: Tensor, size: int, fill: float | int, reduce: str) -> Tensor:
    """``(size,)`` slots holding ``fill``, each reduced (``"amax"`` / ``"amin"``, ``fill`` included) with the
    values scattered to it. Order-free: eager and onnxruntime agree bit for bit."""
    return torch.full((size,), fill, dtype=values.dtype, device=values.device).scatter_reduce_(0, index, values, reduce)


def gt_maxima(gt_index: Int[Tensor, "B N"], values: Float[Tensor, "B N"], m: int) -> Float[Tensor, "B N"]:
    """Per positive point, the max of ``values (>= 0)`` over the final positives of its gt: the ``max t`` and
    ``max u`` of ``t_hat`` (non-positives get gt 0's; mask them). One scatter-max into ``(B * M)``, one gather."""
    b = gt_index.shape[0]
    offsets = torch.arange(b, device=gt_index.device, dtype=torch.int64).unsqueeze(1) * m  # (B, 1)
    rows = (gt_index.clamp(min=0) + offsets).reshape(-1)  # (B*N,) in B*M
    per_gt = scatter_into(rows, torch.where(gt_index >= 0, values, 0.0).reshape(-1), b * m, 0.0, "amax")  # (B*M,)
    return per_gt.index_select(0, rows).view_as(values)  # (B, N)


def check_hyper_parameters(module: nn.Module, topk: int, num_classes: int | None, **scalars: float) -> None:
    """Set ``topk`` (an int >= 1), ``num_classes`` (None or >= 1) and the scalars (``alpha``, ``beta``, ``eps``
    >= 0 ...) on ``module``, with errors that name the argument."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk: must be an int >= 1, got {topk!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    module.topk, module.num_classes = topk, None if num_classes is None else int(num_classes)
    for name, value in scalars.items():
        setattr(module, name, check_scalar(name, value, low=None if name == "center_margin" else 0.0))


# ---------------------------------------------------------------------------------------------------------
# The assigner


class TaskAlignedAssigner(nn.Module):
    """TOOD's task-aligned assignment (mmdetection 3.3): top-k points per gt by ``t = s^alpha * IoU^beta``,
    positives inside the gt with ``t > 0``, soft targets ``t_hat``.

    Args:
        topk: candidates per gt (13).
        alpha: exponent of the class probability (1).
        beta: exponent of the IoU (6).
        variant: ``"tood"``; ``"ultralytics"`` is an alias for existing callers: the constructor then returns
            an :class:`~exportable.assigners.task_aligned_ultralytics.UltralyticsTaskAlignedAssigner` built
            with the other arguments given (its own defaults for the rest).
        num_classes: ``labels`` value of non-positives; must equal C of ``pred_scores`` (None: C).
        eps: the ``t_hat`` normalisation eps (1e-7).
        center_margin: a point is inside a gt if more than this many pixels from every side (0.01).
        stal_side: in-gt test only: real gts' sides shorter than this are widened to it (0 = off, TOOD).

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``: ``pred_scores`` are class probabilities (sigmoid
    outputs, never logits), ``pred_boxes`` decoded boxes in pixels; ``overlaps`` is each positive's IoU with
    its gt, ``target_scores`` its ``t_hat`` (``result.dense_scores(C)`` is the ``(B, N, C)`` target).
    N = 0 works in eager. Attribute ``eager_rows`` (eager only): gt rows (images x M) per step; it bounds
    memory and never changes a result.
    """

    variant = "tood"

    def __new__(cls, *args, **kwargs):
        if cls is TaskAlignedAssigner:
            given = inspect.signature(cls.__init__).bind(None, *args, **kwargs).arguments  # only those passed
            variant = given.pop("variant", "tood")
            if variant == "ultralytics":
                from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner

                given.pop("self")
                return UltralyticsTaskAlignedAssigner(**given)  # not a TaskAlignedAssigner: no __init__ below
            if variant != "tood":
                raise ValueError(f"variant: expected 'tood' or 'ultralytics', got {variant!r}")
        return super().__new__(cls)

    def __init__(
        self,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        variant: str = "tood",
        num_classes: int | None = None,
        eps: float = 1e-7,
        center_margin: float = 0.01,
        stal_side: float = 0.0,
    ) -> None:
        super().__init__()
        check_hyper_parameters(self, topk, num_classes, alpha=alpha, beta=beta, eps=eps, center_margin=center_margin,
                               stal_side=stal_side)
        self.eager_rows = 20  # one image per step at M >= 20 (measured on 2 cores, N = 8,400)

    @classmethod
    def tood(cls, **kwargs) -> TaskAlignedAssigner:
        """TOOD / mmdetection 3.3 (the defaults): topk 13, alpha 1, beta 6, IoU, ``t > 0``, eps 1e-7."""
        return cls(**kwargs)

    @classmethod
    def ultralytics(cls, **kwargs) -> nn.Module:
        """ultralytics 8.4's TAL: an :class:`~exportable.assigners.task_aligned_ultralytics.
        UltralyticsTaskAlignedAssigner` (topk 10, alpha 0.5, beta 6, CIoU, in-gt first, STAL 16, eps 1e-9)."""
        from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner

        return UltralyticsTaskAlignedAssigner(**kwargs)

    def extra_repr(self) -> str:
        return (f"topk={self.topk}, alpha={self.alpha}, beta={self.beta}, eps={self.eps}, "
                f"center_margin={self.center_margin}, stal_side={self.stal_side}")

    def forward(
        self,
        points: Float[Tensor, "N 2"],
        strides: Float[Tensor, " N"],
        pred_scores: Float[Tensor, "B N C"],
        pred_boxes: Float[Tensor, "B N 4"],
        gt_boxes: Float[Tensor, "B M 4"],
        gt_labels: Int[Tensor, "B M"],
        gt_mask: Bool[Tensor, "B M"],
    ) -> AssignResult:
        num_classes, rows = point_assigner_gt_rows(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels,
                                                   gt_mask, num_classes=self.num_classes)
        if rows is None:
            return empty_result(pred_scores.shape[0], 0, num_classes, like=pred_boxes)  # no points: nothing to assign
        boxes, labels, mask = rows  # (B, M', 4), (B, M'), (B, M')
        # 1.-3. each gt's top-K list, a few images at a time in eager.
        images = max(1, self.eager_rows // boxes.shape[1])
        top_t, top_i, top_u = in_image_chunks(self._top_k, images, pred_scores, pred_boxes, boxes, labels)
        n = points.shape[0]
        gt_index, overlaps, target = self._positives(points, top_t, top_i, top_u, boxes, mask, n)  # 4., 5., 7.
        # 6. outputs: the matched gt's box and class (7.'s t_hat as the target score).
        return AssignResult.from_gt_index(gt_index, boxes, labels, num_classes, overlaps=overlaps,
                                          target_scores=target)

    def _top_k(self, pred_scores: Tensor, pred_boxes: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        """Steps 1-3: each gt's K largest ``t``, their points and their IoUs, ``(B, M, K)`` each."""
        # 1. u = IoU of every (gt, prediction) pair, s = every point's probability at each gt's class.
        iou = _box_iou(boxes, pred_boxes, eps=IOU_EPS)  # (B, M, N)
        # 2. t = s^alpha * u^beta.
        metric = alignment_metric(gather_gt_scores(pred_scores, labels), iou, self.alpha, self.beta)  # (B, M, N)
        # 3. the K largest t of every gt over all points (equal values: lower point index first).
        top_t, top_i = _topk(metric, self.topk, -1, True, False)  # (B, M, K) as a set
        return top_t, top_i, iou.gather(2, top_i)

    def _positives(self, points: Tensor, top_t: Tensor, top_i: Tensor, top_u: Tensor, boxes: Tensor, mask: Tensor,
                   n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 4, 5 and 7 on the lists: ``gt_index``, ``overlaps``, ``t_hat``, ``(B, N)`` each."""
        b, m, _ = top_i.shape
        listed, list_gt = list_entries(top_i, n)  # (B*M*K,) each
        # 4. positive: t > 0 and the point inside the gt by more than the margin; real gts only.
        in_boxes = stal_boxes(boxes, mask, self.stal_side) if self.stal_side > 0 else boxes  # (B, M, 4)
        inside = _points_in_boxes(points[top_i], in_boxes.unsqueeze(2), margin=self.center_margin,
                                  aligned=True)  # (B, M, K) from (B, M, K, 2) and (B, M, 1, 4)
        pos = ((top_t > 0) & inside & mask.unsqueeze(-1)).reshape(-1)  # (B*M*K,)
        # 5. a point positive for several gts: the highest IoU among them, the lower gt index on ties.
        u_pos = torch.where(pos, top_u.reshape(-1), -1.0)  # (B*M*K,)
        best = scatter_into(listed, u_pos, b * n, -1.0, "amax")  # (B*N,) -1: positive for no gt
        hit = pos & (u_pos == best.index_select(0, listed))  # (B*M*K,)
        winner = scatter_into(listed, torch.where(hit, list_gt, m), b * n, m, "amin")  # (B*N,) lowest index
        positive = best >= 0  # (B*N,)
        # 7. t_hat = t / (max t + eps) * max u, the maxima per gt over its final positives; a positive's t is
        #    that of the one list entry of its gt naming it.
        final = pos & (list_gt == winner.index_select(0, listed))  # (B*M*K,)
        t_win = scatter_into(listed, torch.where(final, top_t.reshape(-1), 0.0), b * n, 0.0, "amax").view(b, n)
        u_win = torch.where(positive, best, 0.0).view(b, n)  # (B, N)
        gt_index = torch.where(positive, winner, NEGATIVE).view(b, n)  # (B, N)
        target = t_win / (gt_maxima(gt_index, t_win, m) + self.eps) * gt_maxima(gt_index, u_win, m)  # (B, N)
        return gt_index, u_win, torch.where(positive.view(b, n), target, 0.0)
