"""ultralytics' task-aligned assignment (TAL, ultralytics 8.4, YOLOv8 - YOLO12), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K = min(topk, N)``, ``P`` candidate (gt, point) pairs of the batch. Boxes are
``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; points are cell centres ``(x, y)``. Returns
:class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; ``labels`` = C for
every non-positive).

The metric is TOOD's ``t = s^alpha * u^beta`` (:mod:`exportable.assigners.task_aligned`), but the candidates
come first and ``u`` is CIoU. Steps as ``v8DetectionLoss`` builds it (``docs/algorithms.md`` §10.3; topk 10,
alpha 0.5, beta 6):

1. candidates: points strictly inside the gt (``> 1e-9``), after STAL: a real gt's side shorter than
   ``stal_side`` (ultralytics' ``stride[1]`` = 16) is widened to it about the centre, for this test only.
2. on candidates ``u = CIoU(gt, pred).clamp(0)`` (:func:`exportable.boxes.box_ciou`, eps 1e-7) and
   ``t = s^alpha * u^beta``; both 0 elsewhere.
3. per gt the K largest ``t`` over all points (ties: lower point index first).
4. positive: in the top-K AND a candidate. No ``t > 0`` test: a gt with fewer than K non-zero candidates also
   gets zero-metric positives (target 0); which zeros follows the tie rule (ultralytics leaves it to its
   backend's top-k order).
5. a point positive for several gts goes to ``argmax`` of ``u`` over ALL gt rows (lower index on ties), even a
   gt that never proposed it (with all-zero overlaps: gt 0; ``Tencent/YOLO-Master issue #253``).
5b. ``topk2`` (YOLO26's second selection; off by default, ``topk2 = topk``): each gt keeps only those of its
   final positives that are among its ``topk2`` largest ``t`` over all points (``t`` taken as 0 off its
   positives; ties: lower point index first). With ``topk2 = 1`` a gt keeps at most one positive, and none
   when a zero-metric point of lower index outranks its only zero-metric positive.
6. outputs: the matched gt, its class and box; ``overlaps`` = its clamped CIoU.
7. ``t_hat = t * max u / (max t + 1e-9)``, maxima per gt over its final positives (which may lie outside
   its top-K after step 5).

One path, eager and exported: steps 1-2 work on the ``P`` candidate pairs only, as ultralytics does, listed block
by block (:func:`~exportable.box_pairs.points_in_boxes_pairs`: the exact in-box test runs only on the blocks of 32
consecutive points whose bounding box reaches into the gt, never over all ``(B, M, N)`` pairs); the per-box parts
(STAL boxes, CIoU's arctangents) are computed once for the whole batch; the metric is scattered into
``(B, M, N)`` for the top-K; steps 4-7 are scatter-reductions over the ``(B, M, K)`` lists and the pairs
(step 5b ranks a ``(B, M, N)`` grid of the final positives' ``t``); every per-pair lookup is a 1-D ``gather``
per coordinate plane (``GatherElements``, far cheaper than ``Gather`` in onnxruntime on the CPU). ``box_ciou``'s
arithmetic (its arctangent included) is IEEE-exact, so two identical gts get identical CIoUs in eager and in
onnxruntime, and step 5's argmax cannot flip. The batch runs image by image
(:func:`~exportable.batching.in_image_chunks`: ``eager_rows // M`` images per eager step; the graph takes the
whole batch at once where eager does, ``B * M <= eager_rows``, and otherwise one ``Scan`` iteration per image),
which never changes a result.

:class:`~exportable.assigners.task_aligned_dual.DualTaskAlignedAssigner` builds YOLOv10's one-to-many and
one-to-one assignments from the same steps 1-3. Not reproduced: the STAL rule of releases before 8.4.190 (sides
below ``stride[0]`` widened); PaddleDetection's TAL (in-gt first, IoU, eps 1e-9). ``strides`` is part of the
common point-assigner signature and is not read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import check_scalar
from exportable.assigners._points import point_assigner_gt_rows
from exportable.assigners.result import NEGATIVE, AssignResult, empty_result
from exportable.assigners.task_aligned import (
    alignment_metric,
    check_hyper_parameters,
    gt_maxima,
    list_entries,
    scatter_into,
    stal_boxes,
)
from exportable.batching import in_image_chunks
from exportable.box_pairs import PointBlocks, point_blocks, points_in_boxes_pairs
from exportable.boxes import CIOU_EPS, _ciou_atan, _ciou_planes, _planes_in_boxes
from exportable.ordering import _topk

__all__ = ["UltralyticsTaskAlignedAssigner", "listed_pairs", "pair_scores"]


# ---------------------------------------------------------------------------------------------------------
# Candidate pairs (steps 1-2 work on them only)


class Pairs(NamedTuple):
    """The True entries of a ``(B, M, N)`` (gt, point) mask as flat indices, ``(P,)`` each."""

    flat: Tensor  # into B*M*N
    row: Tensor  # the gt's row in B*M
    pred: Tensor  # the prediction's row in B*N
    gt: Tensor  # the gt's index within its image, in [0, M)
    point: Tensor  # the point's index, in [0, N)


def index_div(index: Int[Tensor, "*shape"], d: int) -> Int[Tensor, "*shape"]:
    """``index // d`` of non-negative int64 indices below 2^52, through float64: exact there (``a / d`` rounds to
    at most ``(a + d) 2^-53`` off, less than its distance ``1 / d`` to the next integer). The exporter writes an
    integer ``//`` as ``Div`` and ``Mod`` with a sign fix-up (9 nodes), a float one through float32."""
    return (index.double() / d).floor().long()


def listed_pairs(row: Int[Tensor, " P"], point: Int[Tensor, " P"], m: int, n: int) -> Pairs:
    """:class:`Pairs` from the gt rows ``row`` (into ``B*M``) and points of a ``(B, M, N)`` mask's True entries;
    the image is split off by :func:`index_div`."""
    image = index_div(row, m)  # (P,)
    return Pairs(row * n + point, row, image * n + point, row - image * m, point)


def take(values: Tensor, index: Int[Tensor, " P"]) -> Tensor:
    """``values[index]`` of a 1-D tensor as ``gather`` (ONNX ``GatherElements``: several times faster than the
    ``Gather`` of ``index_select`` in onnxruntime on the CPU, element by element)."""
    return values.gather(0, index)  # (P,)


def planes(table: Float[Tensor, "R D"], index: Int[Tensor, " P"]) -> list[Tensor]:
    """``table[index]`` as ``D`` coordinate planes ``(P,)``, one :func:`take` per column of the small table (the
    box functions take planes: no stack and split of a ``(P, D)`` copy)."""
    return [take(column, index) for column in table.unbind(1)]  # D x (P,)


def pair_scores(pred_scores: Float[Tensor, "B N C"], gt_labels: Int[Tensor, "B M"], pairs: Pairs) -> Tensor:
    """``s`` of each pair: the point's probability at its gt's class, one flat gather (no ``(B, M, N, C)``).
    Labels must lie in ``[0, C)`` (padded rows: any valid class)."""
    c = pred_scores.shape[-1]
    return take(pred_scores.reshape(-1), pairs.pred * c + take(gt_labels.reshape(-1), pairs.row))  # (P,)


class Scored(NamedTuple):
    """Steps 1-3 of a batch: the candidate pairs, their ``t`` and ``u`` ``(P,)``, the in-gt boxes ``(B, M, 4)``
    (NaN for padded rows) and each gt's top-K list ``(B, M, K)``."""

    pairs: Pairs
    t: Tensor
    u: Tensor
    in_boxes: Tensor
    top_i: Tensor


def on_grid(values: Float[Tensor, " P"], pairs: Pairs, shape: tuple[int, int, int]) -> Float[Tensor, "B M N"]:
    """The pairs' values on a ``(B, M, N)`` grid of zeros (each pair once: a plain scatter)."""
    b, m, n = shape
    grid = torch.zeros(b * m * n, dtype=values.dtype, device=values.device)  # (B*M*N,) Expand, no Cast in ONNX
    return grid.scatter_(0, pairs.flat, values).view(b, m, n)


# ---------------------------------------------------------------------------------------------------------
# The assigner


class UltralyticsTaskAlignedAssigner(nn.Module):
    """ultralytics 8.4's ``TaskAlignedAssigner`` as ``v8DetectionLoss`` builds it: in-gt (STAL) candidates,
    CIoU, the top-10 of ``sqrt(s) * CIoU^6``, conflicts by argmax over all gts, soft targets ``t_hat``.

    Args:
        topk: candidates per gt (10).
        alpha: exponent of the class probability (0.5).
        beta: exponent of the CIoU (6).
        num_classes: ``labels`` value of non-positives; must equal C of ``pred_scores`` (None: C).
        eps: the ``t_hat`` normalisation eps (1e-9).
        center_margin: a point is a candidate if more than this many pixels inside every side (1e-9; >= 0).
        stal_side: real gts' sides shorter than this are widened to it for the candidate test (16,
            ultralytics' ``stride[1]``; 0 = off).
        topk2: step 5b's second selection, at most this many positives per gt (None: ``topk``, off; YOLO26's
            one-to-one branch uses ``topk=7, topk2=1``).

    ``forward`` is :class:`~exportable.assigners.task_aligned.TaskAlignedAssigner`'s: ``(points (N, 2),
    strides (N,), pred_scores (B, N, C) probabilities, pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``; ``overlaps`` is each positive's clamped CIoU,
    ``target_scores`` its ``t_hat``. Attribute ``eager_rows`` (eager only): gt rows (images x M) per step.
    """

    variant = "ultralytics"

    def __init__(
        self,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        num_classes: int | None = None,
        eps: float = 1e-9,
        center_margin: float = 1e-9,
        stal_side: float = 16.0,
        topk2: int | None = None,
    ) -> None:
        super().__init__()
        check_hyper_parameters(self, topk, num_classes, alpha=alpha, beta=beta, eps=eps, stal_side=stal_side)
        self.center_margin = check_scalar("center_margin", center_margin, low=0.0)  # >= 0: see step 1
        if topk2 is not None and (isinstance(topk2, bool) or not isinstance(topk2, int) or topk2 < 1):
            raise ValueError(f"topk2: must be None or an int >= 1, got {topk2!r}")
        self.topk2 = topk if topk2 is None else topk2
        self.eager_rows = 320  # gt rows per eager step (measured on 2 cores, N = 8,400)

    def extra_repr(self) -> str:
        return (f"topk={self.topk}, alpha={self.alpha}, beta={self.beta}, eps={self.eps}, "
                f"center_margin={self.center_margin}, stal_side={self.stal_side}, topk2={self.topk2}")

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
        gt_index, overlaps, target = self._in_chunks(self._assign, points, gt_boxes.shape[1],
                                                     *self._per_box(pred_scores, pred_boxes, boxes, labels, mask))
        # 6. outputs: the matched gt's box and class (7.'s t_hat as the target score).
        return AssignResult.from_gt_index(gt_index, boxes, labels, num_classes, overlaps=overlaps,
                                          target_scores=target)

    def _per_box(self, pred_scores: Tensor, pred_boxes: Tensor, boxes: Tensor, labels: Tensor,
                 mask: Tensor) -> tuple[Tensor, ...]:
        """The per-box part of steps 1-2 for the whole batch at once (before the image-by-image steps): the
        inputs of :meth:`_top_k` after ``points``: ``pred_scores``, ``pred_boxes``, the predictions' CIoU
        arctangents ``(B, N)``, ``boxes``, theirs ``(B, M)``, ``labels`` and the in-gt boxes ``(B, M, 4)``
        (STAL-widened; NaN for padded rows, which contain no point)."""
        in_boxes = torch.where(mask.unsqueeze(-1), stal_boxes(boxes, mask, self.stal_side), float("nan"))
        return (pred_scores, pred_boxes, _ciou_atan(pred_boxes.movedim(-1, 0)), boxes, _ciou_atan(boxes.movedim(-1, 0)),
                labels, in_boxes)

    def _in_chunks(self, fn: Callable[..., tuple[Tensor, ...]], points: Tensor, m: int,
                   *batch: Tensor) -> tuple[Tensor, ...]:
        """``fn(points, blocks, *images)`` over :meth:`_per_box`'s ``batch``, ``eager_rows // M'`` images per eager
        step; the graph takes the whole batch where eager does, judged with the caller's ``m`` gts (a graph's
        ``M'`` is ``m + 1``), and otherwise one image per step."""
        blocks = point_blocks(points)  # the points' blocks, for step 1
        b, rows = batch[0].shape[0], batch[3].shape[1]  # pred_scores (B, N, C), boxes (B, M', 4)
        return in_image_chunks(lambda *images: fn(points, blocks, *images), max(1, self.eager_rows // rows), *batch,
                               whole_in_graph=b * m <= self.eager_rows)

    def _assign(self, points: Tensor, blocks: PointBlocks, *batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-7 for a batch of :meth:`_per_box`: ``gt_index``, ``overlaps``, ``t_hat``, ``(B, N)`` each."""
        scored = self._top_k(blocks, *batch, topk=self.topk, ordered=False)
        return self._select(points, scored, scored.top_i, self.topk, self.topk2)

    def _top_k(self, blocks: PointBlocks, pred_scores: Tensor, pred_boxes: Tensor, pred_atan: Tensor,
               boxes: Tensor, gt_atan: Tensor, labels: Tensor, in_boxes: Tensor, *, topk: int, ordered: bool) -> Scored:
        """Steps 1-3 on :meth:`_per_box`'s tensors: the candidate pairs with their ``u`` and ``t``, and each gt's
        top-K list (``ordered``: best first, ties by point index, so that a list's first k entries are the top-k
        for any k <= K)."""
        b, n, _ = pred_scores.shape
        m = boxes.shape[1]
        # 1. candidates: inside the STAL-widened gt by more than the margin (NaN rows, padding: none), listed block
        #    by block.
        pairs = listed_pairs(*points_in_boxes_pairs(blocks, in_boxes.reshape(-1, 4), margin=self.center_margin),
                             m, n)  # (P,) of (B, M, N)
        # 2. on the candidates u = CIoU clamped at 0 and t = s^alpha * u^beta (0 elsewhere).
        u = _ciou_planes(planes(boxes.reshape(-1, 4), pairs.row), planes(pred_boxes.reshape(-1, 4), pairs.pred),
                         take(gt_atan.reshape(-1), pairs.row), take(pred_atan.reshape(-1), pairs.pred),
                         eps=CIOU_EPS).clamp_(min=0)  # (P,)
        t = alignment_metric(pair_scores(pred_scores, labels, pairs), u, self.alpha, self.beta)  # (P,)
        # 3. the K largest t of every gt over all points (equal values, zeros included: lower index first).
        _, top_i = _topk(on_grid(t, pairs, (b, m, n)), topk, -1, True, ordered)  # (B, M, K)
        return Scored(pairs, t, u, in_boxes, top_i)

    def _select(self, points: Tensor, scored: Scored, top_i: Tensor, topk: int, topk2: int) -> tuple[Tensor, ...]:
        """Steps 4-7 on the top-K lists ``top_i (B, M, K)``: ``gt_index``, ``overlaps``, ``t_hat``, ``(B, N)`` each."""
        pairs, t, u, in_boxes = scored.pairs, scored.t, scored.u, scored.in_boxes
        b, m, _ = top_i.shape
        n = points.shape[0]
        # 4. positive: in the top-K and a candidate (zero-metric candidates included).
        px, py = (c.view_as(top_i) for c in planes(points, top_i.reshape(-1)))  # (B, M, K) each
        pos = _planes_in_boxes((px, py), [c.unsqueeze(-1) for c in in_boxes.unbind(-1)],
                               margin=self.center_margin).reshape(-1)  # (B*M*K,) from 2 x (B, M, K), 4 x (B, M, 1)
        listed, list_gt = list_entries(top_i, n)  # (B*M*K,) each
        count = torch.zeros(b * n, dtype=torch.int64, device=pos.device).scatter_add_(0, listed, pos.long())  # (B*N,)
        only = scatter_into(listed, torch.where(pos, list_gt, m), b * n, m, "amin")  # (B*N,) its gt when count == 1
        # 5. several gts: argmax of u over all gt rows, lowest row on ties; an all-zero column: row 0.
        best = scatter_into(pairs.pred, u, b * n, 0.0, "amax")  # (B*N,) each point's largest candidate CIoU
        hit = (u > 0) & (u == take(best, pairs.pred))  # (P,)
        arg_all = scatter_into(pairs.pred, torch.where(hit, pairs.gt, m), b * n, m, "amin")  # (B*N,) m: no CIoU > 0
        winner = torch.where(count > 1, torch.where(arg_all == m, 0, arg_all), only)  # (B*N,)
        gt_index = torch.where(count > 0, winner, NEGATIVE).view(b, n)  # (B, N)
        # A positive's t and u are those of its pair with its gt (0 if that is no candidate: an all-zero column's
        # row 0).
        won = pairs.gt == take(gt_index.reshape(-1), pairs.pred)  # (P,) one pair per point at most
        t_win = scatter_into(pairs.pred, torch.where(won, t, 0.0), b * n, 0.0, "amax").view(b, n)  # (B, N)
        u_win = scatter_into(pairs.pred, torch.where(won, u, 0.0), b * n, 0.0, "amax").view(b, n)  # (B, N)
        # 5b. topk2 (off when topk2 == topk, as in ultralytics): each gt keeps those of its final positives that
        #     are among the topk2 largest of its t over all points (0 off its positives; ties: lower point index).
        if topk2 != topk:
            gt_index = self._second_selection(gt_index, t_win, m, topk2)  # (B, N)
        # 6. (in forward) the matched gt's box and class. 7. t_hat = t * max u / (max t + eps), maxima per gt over
        #    its final positives.
        target = t_win * gt_maxima(gt_index, u_win, m) / (gt_maxima(gt_index, t_win, m) + self.eps)  # (B, N)
        positive = gt_index >= 0  # (B, N)
        return gt_index, torch.where(positive, u_win, 0.0), torch.where(positive, target, 0.0)

    @staticmethod
    def _second_selection(gt_index: Tensor, t_win: Tensor, m: int, topk2: int) -> Tensor:
        """Step 5b: ``gt_index (B, N)`` with the positives outside their gt's topk2 list made negative."""
        b, n = gt_index.shape
        image = torch.arange(b, device=gt_index.device, dtype=torch.int64).unsqueeze(1)  # (B, 1)
        point = torch.arange(n, device=gt_index.device, dtype=torch.int64).unsqueeze(0)  # (1, N)
        cell = ((image * m + gt_index.clamp(min=0)) * n + point).reshape(-1)  # (B*N,) each point's (gt, point) cell
        grid = t_win.new_zeros(b * m * n).scatter_(0, cell, torch.where(gt_index >= 0, t_win, 0.0).reshape(-1))
        _, top2 = _topk(grid.view(b, m, n), topk2, -1, True, False)  # (B, M, K2) as a set
        listed, list_gt = list_entries(top2, n)  # (B*M*K2,) each
        named = gt_index.reshape(-1).index_select(0, listed) == list_gt  # (B*M*K2,) the entry is a final positive
        kept = scatter_into(listed, named.long(), b * n, 0, "amax").view(b, n)  # (B, N)
        return torch.where(kept > 0, gt_index, NEGATIVE)
