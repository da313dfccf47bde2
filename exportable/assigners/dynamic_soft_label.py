"""DynamicSoftLabelAssigner (RTMDet's label assignment, Lyu et al. 2022), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K`` = ``topk`` (13), the static bound on every gt's dynamic k.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; points are ``(x, y)`` with one
stride per point (RTMDet's own priors sit at cell corners, ``i * stride``: pass those to reproduce it).
Returns :class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; nothing is
ignored; ``labels`` = C for every non-positive).

The steps, numbered as in ``docs/algorithms.md`` §12.1 and ``lessons/dynamic_soft_label.py`` (mmdetection
3.3's ``DynamicSoftLabelAssigner``), on the padded batch at once, gt-major ``(B, M, N)``:

1. no gts or no priors: every prior negative. Padded gt rows take part in no step below.
2. candidates: points strictly inside ANY real gt of their image (no centre region). A candidate
   competes for every gt of its image, also for gts it lies outside of.
3. cost of every (gt, candidate) pair, float32, added in mmdetection's order:
   ``soft_cls + iou_weight * -log(IoU + 1e-7) + 10^(distance / stride - soft_center_radius)``, where
   ``soft_cls = sum_c BCE(p_c, t_c) * (t_c - p_c)^2`` with the soft target ``t = onehot(y) * IoU`` and
   ``distance`` is from the point to the gt's centre. ``+inf`` where the prior is not a candidate or the
   row is padding; a candidate's cost that overflows (the centre prior passes float32's maximum beyond
   about 41.5 strides) stays selectable, as in mmdetection: it is held at float32's maximum.
4. dynamic k: ``k_g = max(1, int(sum of gt g's top-K IoUs over the candidates))``.
5. each gt marks its ``k_g`` cheapest candidates (ties: lower prior index first, the package's rule).
6. a prior marked by several gts goes to the cheapest gt over ALL gt rows (ties: lower gt index); no
   second round, so a gt can end with fewer than k positives, possibly none.
7. the result: ``gt_index``, ``labels`` = the gt's class, ``boxes`` = its box, ``overlaps`` =
   ``target_scores`` = the IoU with it (RTMDet's soft classification target), 0 elsewhere; ``weights`` 1.

Defaults are mmdetection 3.3's (RTMDet's configs): ``soft_center_radius=3.0, topk=13, iou_weight=3.0``.
``pred_scores`` are class probabilities ``sigmoid(cls)``; mmdetection passes the logits and uses
``binary_cross_entropy_with_logits``, the same cost up to float32 rounding while ``sigmoid`` is not 0 or 1.

How it stays small, and the same in eager and in onnxruntime:

- step 3 never builds the peer's ``(N, M, C)`` tensor. For a gt of class y every class but y has target 0,
  whose term is ``L0_c * p_c^2`` (``L0 = -max(log(1 - p), -100)``, torch's BCE clamp), so
  ``soft_cls = R_y + (u - p_y)^2 * (L0_y + u * (L1_y - L0_y))`` with ``R_c = sum_c' L0_c' p_c'^2 -
  L0_c p_c^2`` (the other classes) and ``L1 = -max(log p, -100)``: the class sum over ``(B, C, N)`` once,
  the tables only at the (image, class) rows some gt reads, then four row gathers per pair (padded gt rows
  read one more row, ``R = +inf``: their cost is ``+inf`` without a mask pass).
- logs, the power of 10 and the sum over classes are computed in float64 and rounded to float32 once:
  onnxruntime's float32 ``Log`` / ``Exp`` / ``Pow`` and its reduction order differ from torch's by an ulp,
  the float64 results rounded to float32 do not (and ``torch.pow`` in float32 even differs between its
  vectorised and scalar loops). Every other operation is IEEE-exact, so eager and the graph compute the
  same float32 cost, bit for bit, and pick the same priors.
- steps 2-6 run on blocks of gt rows (:func:`_in_row_blocks`): a first pass over the blocks ORs their rows
  into the candidates; a second computes each block's costs, marks its gts' k cheapest candidates and folds
  its column minimum (step 6's cheapest gt, an earlier block keeping ties) into a running ``(B, N)``
  minimum, so no ``(M, N)`` tensor ever exists whole. Eager loops over blocks of about ``CHUNK_PAIRS``
  (gt, prior) pairs; the graph runs the same block function once per iteration of an ONNX ``Scan`` over
  blocks of at most ``GRAPH_ROWS`` rows, inside the ``Scan`` over images of
  :func:`~exportable.batching.in_image_chunks` (images never interact). Any blocking gives the same result
  bit for bit (tested), and memory stays near one block's pairs in both, which is what lets M = 5,000 gts
  run.
- the graph (one image at a time) skips what eager's batch cannot: steps 3-6 see only the image's candidate
  priors (``NonZero``, then gathers) and step 6's minimum is ``ArgMin`` + a gather (no ``ReduceMin`` pass).
  Same values element by element, so the same result (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan

from exportable._checks import check_scalar, checks_enabled, exporting
from exportable.assigners._dynamic_k import dynamic_k, mark_cheapest, resolve_conflicts
from exportable.assigners._points import check_point_assigner_inputs
from exportable.assigners.result import NEGATIVE, AssignResult
from exportable.batching import ensure_gt_rows, in_image_chunks
from exportable.boxes import _box_iou, _points_in_boxes

__all__ = ["DynamicSoftLabelAssigner", "soft_cls_tables"]

CHUNK_PAIRS = 2**20  # eager works on about this many (gt, prior) pairs at a time
GRAPH_ROWS = 64  # the exported graph works on at most this many gt rows at a time
IOU_EPS = 1e-7  # mmdetection's EPS in -log(IoU + EPS)
LOG_CLAMP = -100.0  # torch.nn.functional.binary_cross_entropy clamps log(p) and log(1 - p) at -100
LN10 = math.log(10.0)
FLOAT32_MAX = torch.finfo(torch.float32).max


class DynamicSoftLabelAssigner(nn.Module):
    """RTMDet's assignment: soft-label BCE + 3 * IoU cost + a soft centre prior; dynamic k per gt.

    Args:
        soft_center_radius: the centre prior is ``10^(distance / stride - soft_center_radius)`` (3.0): 1 at
            three strides from the gt's centre, 10x more per stride beyond.
        topk: how many top IoUs make a gt's dynamic k (13); also the static top-k width K.
        iou_weight: weight of ``-log(IoU + 1e-7)`` (3.0).

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``. ``pred_scores`` are class probabilities
    ``sigmoid(cls)``; ``pred_boxes`` the decoded boxes.
    """

    def __init__(self, soft_center_radius: float = 3.0, topk: int = 13, iou_weight: float = 3.0) -> None:
        super().__init__()
        self.soft_center_radius = check_scalar("soft_center_radius", soft_center_radius)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk: expected an int >= 1, got {topk!r}")
        self.topk = topk
        self.iou_weight = check_scalar("iou_weight", iou_weight, low=0.0)

    def extra_repr(self) -> str:
        return f"soft_center_radius={self.soft_center_radius}, topk={self.topk}, iou_weight={self.iou_weight}"

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
        if checks_enabled():
            check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        # eager: the whole batch at once; the graph: one image per ONNX Scan iteration. Both in gt-row blocks
        out = in_image_chunks(lambda *image: self._assign(points, strides, *image), pred_scores.shape[0],
                              pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
        return AssignResult(*out)

    def _assign(self, points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask) -> AssignResult:
        b, n, c = pred_scores.shape
        # 1. padded rows (and the one ensure_gt_rows adds when M = 0) take part in nothing below
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M, 4), (B, M), (B, M)
        labels = torch.where(mask, labels, 0)  # (B, M) padding reads class 0, never used
        m = boxes.shape[1]

        # 2. candidates: points strictly inside any real gt of their image, folded block by block
        def inside_any(candidate, start, boxes, mask):
            boxes = torch.where(mask.unsqueeze(2), boxes, 0.0)  # (B, m, 4) padding: an empty box holds no point
            inside = _points_in_boxes(points, boxes.unsqueeze(2), aligned=True)  # (B, m, N)
            return candidate | _any_row(inside), ()  # (B, N)

        candidate = pred_boxes.new_zeros((b, n), dtype=torch.bool)  # (B, N)
        candidate = _in_row_blocks(inside_any, candidate, m, b * n, boxes, mask)[0]  # (B, N)
        # the graph (one image per Scan iteration) runs steps 3-6 on its candidate priors only, in prior order
        cols = candidate[0].nonzero().squeeze(1) if exporting() else None  # (N',) ascending
        scores, preds = pred_scores, pred_boxes  # (B, N, C), (B, N, 4)
        if cols is not None:
            points, strides, candidate = points[cols], strides[cols], candidate[:, cols]  # (N', 2), (N',), (1, N')
            scores, preds = pred_scores[:, cols], pred_boxes[:, cols]  # (1, N', C), (1, N', 4)
        blocked = torch.where(candidate, 0.0, float("inf")).unsqueeze(1)  # (B, 1, N) +inf: not a candidate
        in_play = candidate.to(pred_boxes.dtype).unsqueeze(1)  # (B, 1, N) 1: a candidate
        # 3a. the soft classification tables, only for the (image, class) rows that some gt reads, and a last
        #     row that every padded gt row reads: R = +inf (the others 0), so its cost is +inf everywhere
        rows = labels + c * torch.arange(b, device=labels.device).unsqueeze(1)  # (B, M) each gt's row
        used = torch.zeros(b * c, dtype=torch.bool, device=labels.device).index_fill_(0, rows.reshape(-1), True)
        tables = soft_cls_tables(scores, used.nonzero().squeeze(1))  # 4 x (U, N), U <= min(B * M, B * C)
        tables = tuple(torch.cat([t, t.new_full((1, t.shape[1]), v)]) for t, v in zip(tables, (0, 0, 0, math.inf)))
        rows = (used.cumsum(0) - 1).index_select(0, rows.reshape(-1)).reshape(b, m)  # (B, M) each gt's table row

        def steps_3_to_6(carry, start, boxes, rows, mask):
            least, cheapest_gt = carry  # (B, N), (B, N) the cheapest cost so far and its gt
            # 3. the cost of every (gt, prior) pair of the block; +inf on padding and off the candidates
            rows = torch.where(mask, rows, tables[0].shape[0] - 1)  # (B, m) padding reads the +inf row
            cost, iou = self._cost(points, strides, preds, tables, boxes, rows)  # (B, m, N) x 2
            if cols is None:  # eager keeps every prior: +inf cost and IoU 0 (for step 4) off the candidates
                cost.add_(blocked)  # (B, m, N)
                iou.mul_(in_play)  # (B, m, N)
            # 4. dynamic k from the top-K IoUs over the candidates (non-candidates count 0)
            k = dynamic_k(iou, self.topk)  # (B, m)
            # 5. each gt marks its k cheapest candidates
            idx, marked = mark_cheapest(cost, k, self.topk)  # (B, m, K') x 2
            # 6. (first half) the cheapest gt of every prior, folded block by block (first on ties)
            value, arg = _column_min(cost)  # (B, N), (B, N)
            better = value < least  # (B, N) strictly: an earlier block keeps its ties
            least = torch.where(better, value, least)  # (B, N)
            cheapest_gt = torch.where(better, arg + start, cheapest_gt)  # (B, N)
            return (least, cheapest_gt), (idx, marked)

        # before the first block every prior's cheapest gt is row 0 at +inf: what row 0 gives when all are +inf
        carry = (preds.new_full(candidate.shape, float("inf")), labels.new_zeros(candidate.shape))  # (B, N) x 2
        (_, cheapest_gt), (idx, marked) = _in_row_blocks(steps_3_to_6, carry, m, b * n, boxes, rows, mask)
        # 6. conflicts: the marking gt, or the cheapest gt over all rows where several gts marked a prior
        gt_index = resolve_conflicts(idx, marked, cheapest_gt)  # (B, N)
        if cols is not None:  # back to every prior: the others are negative
            gt_index = labels.new_full((b, n), NEGATIVE).index_copy(1, cols, gt_index)  # (1, N)
        # 7. the result: the matched gt's class, box and IoU (the pairwise IoU's arithmetic, same bits)
        matched = torch.gather(boxes, 1, gt_index.clamp(min=0).unsqueeze(2).expand(b, n, 4))  # (B, N, 4)
        matched_iou = _box_iou(matched, pred_boxes, aligned=True)  # (B, N)
        overlaps = torch.where(gt_index >= 0, matched_iou, 0.0)  # (B, N)
        return AssignResult.from_gt_index(gt_index, boxes, labels, c, overlaps=overlaps, target_scores=overlaps)

    def _cost(self, points, strides, pred_boxes, tables, boxes, rows) -> tuple[Tensor, Tensor]:
        """3. ``(cost, iou)``, each ``(B, m, N)`` float32, for a block of gt rows ``boxes (B, m, 4)`` whose
        rows of the :func:`soft_cls_tables` are ``rows (B, m)``."""
        b, m = rows.shape
        n = points.shape[0]
        iou = _box_iou(boxes, pred_boxes)  # (B, m, N)
        # 3a. soft classification cost: the gt's rows of the tables, then (u - p)^2 * BCE(p, u) + R
        p, l0, diff, rest = (t.index_select(0, rows.reshape(b * m)).reshape(b, m, n) for t in tables)  # 4 x (B, m, N)
        gap = iou - p  # (B, m, N) t - p at the gt's class
        cost = gap.mul_(gap).mul_(diff.mul_(iou).add_(l0)).add_(rest)  # (B, m, N) x * x, not Pow
        # 3b. IoU cost -log(IoU + eps) * iou_weight, the log in float64 rounded once
        cost.add_(torch.log((iou + IOU_EPS).double()).to(iou.dtype).mul_(-self.iou_weight))  # (B, m, N)
        # 3c. soft centre prior 10^(distance / stride - radius), the power in float64 rounded once
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0  # (B, m, 2)
        dx = points[:, 0] - centre[..., 0:1]  # (B, m, N)
        dy = points[:, 1] - centre[..., 1:2]  # (B, m, N)
        distance = dx.mul_(dx).add_(dy.mul_(dy)).sqrt_().div_(strides)  # (B, m, N) in strides
        power = torch.exp(distance.sub_(self.soft_center_radius).double().mul_(LN10)).to(iou.dtype)  # (B, m, N)
        # an overflowed centre prior (inf) stays a selectable candidate: hold it at float32's maximum (the other
        # terms are far below its ulp, so the sum stays there; a padded row's R = +inf stays +inf)
        return cost.add_(power.clamp_(max=FLOAT32_MAX)), iou


def _any_row(inside: Tensor) -> Tensor:
    """``inside.any(dim=1)`` of ``(B, m, N)``: eager a byte max, the graph a float sum (no uint8 CUDA max)."""
    if exporting():
        return inside.to(torch.float32).sum(dim=1) > 0  # (B, N) counts of at most m < 2^24
    return inside.to(torch.uint8).amax(dim=1).bool()  # (B, N)


def _column_min(cost: Tensor) -> tuple[Tensor, Tensor]:
    """``cost.min(dim=1)`` of ``(B, m, N)``, first row on ties; the graph ArgMin + gather (no ReduceMin pass)."""
    if not exporting():
        return cost.min(dim=1)  # (B, N), (B, N)
    arg = cost.argmin(dim=1, keepdim=True)  # (B, 1, N) the first minimum, as torch and ArgMin both pick
    return cost.gather(1, arg).squeeze(1), arg.squeeze(1)  # (B, N), (B, N)


def soft_cls_tables(
    pred_scores: Float[Tensor, "B N C"], rows: Int[Tensor, " R"] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The tables of the soft classification cost at the (image, class) ``rows`` (``image * C + class``;
    default every one), each ``(R, N)`` float32: ``p``, ``L0 = -max(log(1 - p), -100)``, ``L1 - L0``
    (``L1 = -max(log p, -100)``) and ``R = sum_c L0_c p_c^2 - L0 p^2``, the cost of every other class
    (target 0). A gt's row is one gather. Logs and the class sum in float64, rounded once; only the class
    sum needs every class, the rest is computed on the R rows.
    """
    b, n, c = pred_scores.shape
    p = pred_scores.transpose(1, 2).reshape(b * c, n)  # (B * C, N) one row per (image, class)
    p64 = p.double()  # (B * C, N)
    log_q = torch.log(1.0 - p64).clamp_(min=LOG_CLAMP)  # (B * C, N) -BCE(p, 0)
    neg_zero = log_q.mul(p64).mul_(p64)  # (B * C, N) -BCE(p, 0) * p^2, minus a class's cost at target 0
    neg_total = neg_zero.reshape(b, c, n).sum(dim=1)  # (B, N) minus every class's cost at target 0
    if rows is None:
        rows = torch.arange(b * c, device=p.device)  # (B * C,)
    p = p.index_select(0, rows)  # (R, N)
    l0 = log_q.index_select(0, rows).neg_()  # (R, N) BCE(p, 0); signs flip exactly
    l1 = torch.log(p.double()).clamp_(min=LOG_CLAMP).neg_()  # (R, N) BCE(p, 1)
    # every class but this one: (-zero) - (-total) rounds to the same float64 as total - zero
    rest = neg_zero.index_select(0, rows).sub_(neg_total.index_select(0, rows // c))  # (R, N)
    dtype = pred_scores.dtype
    return p.contiguous(), l0.to(dtype), l1.sub_(l0).to(dtype), rest.to(dtype)


def _in_row_blocks(
    fn: Callable[..., tuple[Any, tuple[Tensor, ...]]], init: Any, m: int, pairs_per_row: int, *rows: Tensor
) -> tuple[Any, tuple[Tensor, ...]]:
    """``fn(carry, start, *block) -> (carry, outs)`` over blocks of gt rows, in row order: ``rows`` are
    ``(B, M, ...)`` tensors, a block their rows ``start .. start + m_block - 1`` (``start`` an int64 0-d
    tensor), ``outs`` are ``(B, m_block, ...)``. Returns the last carry and every out joined along M.

    Eager: a Python loop over blocks of ``max(1, CHUNK_PAIRS // pairs_per_row)`` rows. The graph: the same
    ``fn`` once per iteration of an ONNX ``Scan``, over ``ceil(M / GRAPH_ROWS)`` blocks of ``ceil(M / blocks)``
    rows (at most ``GRAPH_ROWS``; the rows are padded with zeros up to a whole number of blocks, fewer than
    one per block, and those rows' outs are dropped: a caller's zero mask must keep them out of the carry).
    """
    if exporting():
        blocks = (m + GRAPH_ROWS - 1) // GRAPH_ROWS  # symbolic: how many blocks
        size = (m + blocks - 1) // blocks  # symbolic: rows per block, at most GRAPH_ROWS
        xs = []
        for x in rows:
            pad = x.new_zeros((x.shape[0], blocks * size - m, *x.shape[2:]))  # (B, blocks * size - M, ...)
            x = torch.cat([x, pad], dim=1)  # (B, blocks * size, ...)
            xs.append(x.reshape(x.shape[0], blocks, size, *x.shape[2:]).transpose(0, 1))  # (blocks, B, size, ...)
        starts = torch.arange(blocks, device=rows[0].device) * size  # (blocks,) each block's first row

        def body(carry: Any, block: tuple[Tensor, ...]) -> tuple[Any, tuple[Tensor, ...]]:
            carry, outs = fn(carry, block[0], *block[1:])
            return carry, tuple(o.clone() for o in outs)

        carry, outs = scan(body, init, (starts, *xs))
        return carry, tuple(o.transpose(0, 1).flatten(1, 2)[:, :m] for o in outs)  # (B, M, ...) each
    step = max(1, CHUNK_PAIRS // max(1, pairs_per_row))
    carry, parts = init, []
    for i in range(0, max(m, 1), step):
        carry, outs = fn(carry, torch.tensor(i, device=rows[0].device), *(x[:, i : i + step] for x in rows))
        parts.append(outs)
    return carry, tuple(torch.cat(field, dim=1) for field in zip(*parts))  # (B, M, ...) each
