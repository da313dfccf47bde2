"""Task-aligned assignment (TOOD; ultralytics' TAL as a variant), batched and exportable.

Shape shorthand: ``B`` images, ``N`` points (priors, shared by the batch), ``M`` gts per image (padded),
``C`` classes, ``K`` = ``topk`` (13 TOOD, 10 ultralytics; ``min(topk, N)`` when there are fewer points).
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``; points are cell centres ``(x, y)``.
Returns :class:`~exportable.assigners.result.AssignResult` (``gt_index`` 0-based, -1 negative; nothing is
ever ignored; ``labels`` = ``num_classes`` (= C) for every non-positive).

The task-aligned metric of a (gt, prior) pair is ``t = s^alpha * u^beta``: ``s`` the predicted probability
at the gt's class, ``u`` the overlap of the prior's predicted box with the gt. The soft classification
target is the normalised ``t_hat = t / max t * max u``, the maxima taken per gt over its final positives.

``variant="tood"`` (default) is TOOD / mmdetection 3.3 (``docs/algorithms.md`` §10.1):

1. ``u = IoU(pred box, gt)`` (plain IoU, mmdetection's eps 1e-6), ``s = pred_scores[..., gt class]``.
2. ``t = s^alpha * u^beta`` (alpha 1, beta 6; no eps).
3. per gt the ``K = 13`` largest ``t`` over ALL points at once (ties: lower point index first).
4. positive if ``t > 0`` (strict) and the point lies inside the gt by more than 0.01 px on every side.
5. a point positive for several gts goes to the gt with the highest IoU among them (lower gt index on ties).
6. ``overlaps`` = the winning IoU, ``target_scores`` = ``t_hat`` with ``t / (max t + 1e-7) * max u`` per gt
   (TOODHead's ``10e-8``, which is 1e-7). Padded gts never take part.

``variant="ultralytics"`` is ultralytics 8.4's ``TaskAlignedAssigner`` as ``v8DetectionLoss`` builds it
(§10.3; topk 10, alpha 0.5, beta 6), on the same inputs:

1. candidates: points strictly inside the gt (``> 1e-9``), after STAL: a real gt's side shorter than
   ``stal_side`` (ultralytics' ``stride[1]`` = 16) is widened to it about the centre for this test only.
2. on candidates ``u = CIoU(gt, pred).clamp(0)`` (:func:`box_ciou`, ultralytics' formula and eps 1e-7),
   ``t = s^alpha * u^beta``; both 0 elsewhere.
3. per gt the top-10 ``t`` over all points; positive = in the top-10 AND a candidate. No ``t > 0`` test:
   a gt with fewer than 10 non-zero candidates also gets zero-metric positives (target 0) -- which zeros
   depends on the top-k tie order; here the package's rule (lower point index first), so they are the
   candidates among the lowest-index zero entries of the row (only indices ``< K`` can qualify).
4. a point positive for several gts goes to ``argmax`` of ``u`` over ALL gt rows (lower index on ties), even
   a gt that never proposed it (with all-zero overlaps: gt 0; ``Tencent/YOLO-Master issue #253``).
5. ``t_hat = t * max u / (max t + 1e-9)`` per gt over its final positives; ``overlaps`` = the winning CIoU.

Explicit keyword arguments override a variant's defaults. Not reproduced: ultralytics' ``topk2``
(YOLO26's second top-k); PaddleDetection's TAL (in-gt first like ultralytics, but IoU and eps 1e-9).

The normalisation's eps survives export (the exporter runs with ``optimize=False``; onnxscript's optimizer
deletes constants <= 1e-8 and turns ``0 / (0 + 1e-9)`` into NaN): a gt whose metric is all zero gives
``t_hat = 0``, never NaN, in eager and in onnxruntime.

How it stays fast (the peers build several ``(B, M, N)`` masks and, in mmdetection, ``(N, M)`` per image):

- the score at each gt's class is gathered as ``(B, M, N)``; ``(B, M, N, C)`` never exists.
- ``u^6`` by repeated squaring (three multiplications; ``torch.pow`` costs about 20x more on a CPU).
- after the top-k everything works on ``(B, M, K)`` candidate lists: TOOD's in-gt test, the conflicts (in
  eager as scatter-reductions over the lists, exported as one ``(B, M, N)`` scatter and a max over M), the
  per-gt maxima of ``t_hat``.
- eager: TOOD's IoU and metric a few images at a time (``eager_rows`` gt rows per step: one image at M >= 20,
  peak memory near one image's ``M x N``); ultralytics' CIoU and metric only on the candidate pairs (as
  ultralytics does), up to 320 gt rows per step. The top-k set is taken with ``torch.topk`` and repaired to
  the tie rule only where a tie straddles the k-th place at a value that matters (zero ties never matter for
  TOOD; for ultralytics they are resolved from the first K points).
- the exported graph is one batched, dense step. Same assignments either way (the tests run both).

STAL is ultralytics 8.4.190's rule (sides below ``stride[1]`` = 16 become 16). Earlier 8.x releases widened
only sides below ``stride[0]`` = 8 (to 16), as ``docs/algorithms.md`` §10.3 describes; that rule is
not reproduced.

``strides`` is part of the common point-assigner signature; neither variant reads it (STAL's size is the
constructor's ``stal_side``, as ultralytics takes it from its ``stride`` list).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_boxes,
    check_scalar,
    checks_enabled,
)
from exportable._checks import exporting as _exporting
from exportable.assigners._points import check_point_assigner_inputs
from exportable.assigners.result import NEGATIVE, AssignResult, empty_result
from exportable.batching import ensure_gt_rows
from exportable.boxes import _box_iou
from exportable.ordering import _topk

__all__ = [
    "TaskAlignedAssigner",
    "alignment_metric",
    "box_ciou",
    "gather_gt_scores",
    "points_inside",
    "stal_boxes",
    "topk_candidates",
]

Variant = Literal["tood", "ultralytics"]

VARIANT_DEFAULTS: dict[str, dict[str, float]] = {
    # topk, alpha, beta, t_hat eps, in-gt margin (px), STAL side (px; 0 = off)
    "tood": {"topk": 13, "alpha": 1.0, "beta": 6.0, "eps": 1e-7, "center_margin": 0.01, "stal_side": 0.0},
    "ultralytics": {"topk": 10, "alpha": 0.5, "beta": 6.0, "eps": 1e-9, "center_margin": 1e-9, "stal_side": 16.0},
}
"""Each variant's defaults (TOOD / mmdetection 3.3 configs; ultralytics 8.4's ``v8DetectionLoss``)."""

EAGER_ROWS = {"tood": 20, "ultralytics": 320}  # gt rows per eager step (measured on 2 CPU cores, N = 8,400)

IOU_EPS = 1e-6  # mmdetection's bbox_overlaps: IoU = inter / max(union, eps)
CIOU_EPS = 1e-7  # ultralytics' bbox_iou default eps


# ---------------------------------------------------------------------------------------------------------
# Building blocks (public: O2F and the lessons reuse them)


def gather_gt_scores(
    pred_scores: Float[Tensor, "B N C"], gt_labels: Int[Tensor, "B M"]
) -> Float[Tensor, "B M N"]:
    """``s[b, m, n] = pred_scores[b, n, gt_labels[b, m]]``: every point's probability at each gt's class.

    ``(B, M, N)`` without a ``(B, M, N, C)`` or ``(B, M, N)`` int64 index: eager copies the scores to
    ``(B, C, N)`` once and picks ``M`` rows per image; under export a ``GatherElements`` on the transposed
    scores with a broadcast index. Labels must lie in ``[0, C)`` (padded rows: pass any valid class).
    """
    b, n, c = pred_scores.shape
    m = gt_labels.shape[1]
    if _exporting():
        index = gt_labels.unsqueeze(-1).expand(b, m, n)  # (B, M, N) broadcast view
        return torch.gather(pred_scores.transpose(1, 2), 1, index)  # (B, M, N)
    by_class = pred_scores.transpose(1, 2).reshape(b * c, n)  # (B*C, N) one copy
    rows = gt_labels + torch.arange(b, device=gt_labels.device).unsqueeze(1) * c  # (B, M)
    return by_class.index_select(0, rows.reshape(-1)).reshape(b, m, n)  # (B, M, N)


def _pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0`` with IEEE-exact operations where it can (a new tensor).

    Whole exponents go by repeated squaring (``u^6 = u^4 * u^2``; 1 is a copy), 0.5 is ``sqrt``; those are
    plain multiplications, so eager, the exported graph and the lessons' reference give the same bits.
    (``torch.pow`` itself differs by 1 ulp between its vectorised and scalar paths, and onnxruntime's
    ``Pow`` from both; ``u^6`` by squaring is within 3.5 ulp (3e-7 relative) of the exact power, and about
    20x faster than ``torch.pow`` on a CPU.)
    Other exponents use ``torch.pow``.
    """
    if exponent == 0.5:
        return torch.sqrt(x)
    if exponent != int(exponent) or not 0 <= exponent <= 64:
        return torch.pow(x, exponent)
    e = int(exponent)
    if e == 0:
        return torch.ones_like(x)
    result: Tensor | None = None
    base = x
    while True:
        if e & 1:
            if result is None:
                result = base.clone() if base is x else base  # squares are fresh tensors: no copy
            else:
                result.mul_(base)
        e >>= 1
        if not e:
            return result
        base = base * base


def alignment_metric(
    scores: Float[Tensor, "*batch"], overlaps: Float[Tensor, "*batch"], alpha: float = 1.0, beta: float = 6.0
) -> Float[Tensor, "*batch"]:
    """TOOD's task-aligned metric ``t = s^alpha * u^beta`` (no eps), elementwise; inputs must be ``>= 0``.

    Whole exponents by repeated squaring (see :func:`_pow`): the same bits in eager and onnxruntime.
    """
    if alpha == 1.0:
        return scores * overlaps if beta == 1.0 else _pow(overlaps, beta).mul_(scores)  # one pass, no copy of s
    return _pow(scores, alpha).mul_(_pow(overlaps, beta) if beta != 1.0 else overlaps)


def box_ciou(
    boxes1: Float[Tensor, "*batch M 4"],
    boxes2: Float[Tensor, "*batch N 4"],
    *,
    aligned: bool = False,
    eps: float = CIOU_EPS,
) -> Float[Tensor, "*batch M N"]:
    """Complete IoU as ultralytics' ``bbox_iou(box1, box2, xywh=False, CIoU=True)`` computes it.

    ``CIoU = IoU - (rho^2 / c^2 + v * a)`` with ``IoU = inter / (w1 h1 + w2 h2 - inter + eps)``, heights
    taken as ``y2 - y1 + eps``, ``c^2`` the squared diagonal of the enclosing box ``+ eps``, ``rho^2`` the
    squared centre distance, ``v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2``, ``a = v / (1 - IoU + v + eps)``,
    with ultralytics' order of operations (its TAL calls it with ``box1`` = gt, ``box2`` = prediction and
    clamps the result at 0). Values lie in ``(-1.5, 1]``. Boxes are ``(x1, y1, x2, y2)``.

    Pairwise: ``(..., M, 4)`` and ``(..., N, 4)`` give ``(..., M, N)``; the ``atan`` terms are computed once
    per box. ``aligned=True`` compares row ``i`` with row ``i`` (``(..., N)``). Both give the same values on
    the same pairs (the remaining ops are IEEE-exact arithmetic in the same order).
    """
    if checks_enabled():
        check_boxes("boxes1", boxes1)
        check_boxes("boxes2", boxes2)
        check_scalar("eps", eps, low=0.0)
    c1 = boxes1.movedim(-1, 0).contiguous()  # (4, ..., M)
    c2 = boxes2.movedim(-1, 0).contiguous()  # (4, ..., N)
    atan1 = _box_atan(c1, eps)  # (..., M)
    atan2 = _box_atan(c2, eps)  # (..., N)
    if not aligned:
        c1 = c1.unsqueeze(-1)  # (4, ..., M, 1)
        c2 = c2.unsqueeze(-2)  # (4, ..., 1, N)
        atan1, atan2 = atan1.unsqueeze(-1), atan2.unsqueeze(-2)  # (..., M, 1), (..., 1, N)
    return _ciou(c1.unbind(0), c2.unbind(0), atan1, atan2, eps)  # (..., M, N) or (..., N)


def _box_atan(coords: Tensor, eps: float) -> Tensor:
    """``atan(w / h)`` per box from ``(4, ...)`` coordinate planes, heights ``+ eps`` (ultralytics)."""
    x1, y1, x2, y2 = coords.unbind(0)
    return torch.atan((x2 - x1) / (y2 - y1 + eps))  # (...)


def _ciou(b1, b2, atan1: Tensor, atan2: Tensor, eps: float) -> Tensor:
    """CIoU of broadcastable coordinate views ``b1 = (x1, y1, x2, y2)`` (gts), ``b2`` (predictions)."""
    b1_x1, b1_y1, b1_x2, b1_y2 = b1
    b2_x1, b2_y1, b2_x2, b2_y2 = b2
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps  # (..., M, 1)
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps  # (..., 1, N)
    iw = torch.minimum(b1_x2, b2_x2).sub_(torch.maximum(b1_x1, b2_x1)).clamp_(min=0)  # (..., M, N)
    ih = torch.minimum(b1_y2, b2_y2).sub_(torch.maximum(b1_y1, b2_y1)).clamp_(min=0)  # (..., M, N)
    inter = iw.mul_(ih)  # (..., M, N)
    union = (w1 * h1 + w2 * h2).sub_(inter).add_(eps)  # (..., M, N)
    iou = inter.div_(union)  # (..., M, N)
    cw = torch.maximum(b1_x2, b2_x2).sub_(torch.minimum(b1_x1, b2_x1))  # (..., M, N) enclosing width
    ch = torch.maximum(b1_y2, b2_y2).sub_(torch.minimum(b1_y1, b2_y1))  # (..., M, N) enclosing height
    c2 = cw.mul_(cw).add_(ch.mul_(ch)).add_(eps)  # (..., M, N) squared diagonal
    dx = (b2_x1 + b2_x2).sub(b1_x1).sub_(b1_x2)  # (..., M, N) twice the centre distance in x
    dy = (b2_y1 + b2_y2).sub(b1_y1).sub_(b1_y2)  # (..., M, N)
    rho2 = dx.mul_(dx).add_(dy.mul_(dy)).div_(4)  # (..., M, N)
    dv = atan2 - atan1  # (..., M, N)
    v = dv.mul_(dv).mul_(4 / math.pi**2)  # (..., M, N)
    alpha = v / (1 - iou).add_(v).add_(eps)  # (..., M, N)
    return iou.sub_(rho2.div_(c2).add_(v.mul_(alpha)))  # (..., M, N)


def stal_boxes(
    gt_boxes: Float[Tensor, "B M 4"], gt_mask: Bool[Tensor, "B M"], min_side: float
) -> Float[Tensor, "B M 4"]:
    """ultralytics' small-target-aware (STAL) boxes for the in-gt test: a real gt's width or height below
    ``min_side`` becomes ``min_side`` about the box centre; padded rows are left as they are.

    Written as ultralytics writes it (to ``(cx, cy, w, h)`` and back), so even unchanged boxes carry the same
    rounding as theirs. Boxes are ``(x1, y1, x2, y2)``.
    """
    x1, y1, x2, y2 = gt_boxes.unbind(-1)  # 4 x (B, M)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2  # (B, M)
    w, h = x2 - x1, y2 - y1  # (B, M)
    if min_side > 0:
        w = torch.where((w < min_side) & gt_mask, min_side, w)  # (B, M)
        h = torch.where((h < min_side) & gt_mask, min_side, h)  # (B, M)
    hw, hh = w / 2, h / 2  # (B, M)
    return torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=-1)  # (B, M, 4)


def points_inside(
    points: Float[Tensor, "N 2"], boxes: Float[Tensor, "B M 4"], margin: float
) -> Bool[Tensor, "B M N"]:
    """``(B, M, N)``: point n lies inside box m by more than ``margin`` on every side (``px - x1 > margin``,
    ``y2 - py > margin`` ...), the test of mmdetection's TOOD (0.01) and ultralytics' TAL (1e-9)."""
    px, py = points.t().contiguous().unbind(0)  # (N,) each, contiguous (a strided view halves the speed)
    x1, y1, x2, y2 = (c.unsqueeze(-1) for c in boxes.unbind(-1))  # 4 x (B, M, 1)
    inside = (px - x1) > margin  # (B, M, N)
    inside &= (py - y1) > margin
    inside &= (x2 - px) > margin
    inside &= (y2 - py) > margin
    return inside


def topk_candidates(
    metric: Float[Tensor, "B M N"], k: int, *, zeros_matter: bool = True
) -> tuple[Float[Tensor, "B M K"], Int[Tensor, "B M K"]]:
    """The ``k`` largest entries of each row of a NON-NEGATIVE metric, as a set, with the package's tie rule
    (equal values: lower index first), fast in eager.

    Returns ``(values, indices)``, ``(B, M, K)`` with ``K = min(k, N)``. The SET of indices is the one
    :func:`exportable.ordering.topk` (and ONNX ``TopK``) selects; the order of the K slots is not specified
    in eager (exported: best first). ``torch.topk`` alone already gives that set unless more than k values
    are ``>=`` the k-th; that happens

    - at a positive k-th value (exact duplicates): those calls fall back to :func:`exportable.ordering.topk`;
    - at a k-th value of 0 (a row with fewer than k non-zero entries): the rule takes the zero entries of
      lowest index, which all lie among the first K points, so the zero slots are refilled from there.
      ``zeros_matter=False`` skips that (when the caller drops zero-metric candidates anyway, as TOOD does).
    """
    n = metric.shape[-1]
    if _exporting():
        return _topk(metric, k, -1)
    k = min(k, n)
    if k == 0:
        return _topk(metric, k, -1)
    k1 = min(k + 1, n)
    vals, idx = torch.topk(metric, k1, dim=-1, largest=True, sorted=True)  # (B, M, K+1)
    if k1 > k:
        kth, after = vals[..., k - 1], vals[..., k]  # (B, M)
        if bool(((after == kth) & (kth > 0)).any()):
            return _topk(metric, k, -1)  # a tie straddles the k-th place at a positive value: rare
        vals, idx = vals[..., :k], idx[..., :k]  # (B, M, K)
    if zeros_matter:
        zero = vals == 0  # (B, M, K) trailing slots of rows with fewer than k non-zero values
        if bool(zero.any()):
            ar = torch.arange(k, device=metric.device)  # (K,)
            head = metric[..., :k]  # (B, M, K) the first K points
            key = torch.where(head == 0, ar, ar + k)  # (B, M, K) zero entries first, in index order
            first_zeros = key.sort(dim=-1).values  # (B, M, K)
            slot = (ar - (~zero).sum(-1, keepdim=True)).clamp_(min=0)  # (B, M, K) rank among the zero slots
            idx = torch.where(zero, first_zeros.gather(-1, slot), idx)  # (B, M, K)
    return vals, idx


# ---------------------------------------------------------------------------------------------------------
# The assigner


class TaskAlignedAssigner(nn.Module):
    """Task-aligned assignment: the top-k points per gt by ``t = s^alpha * u^beta``, soft targets ``t_hat``.

    Args:
        topk: candidates per gt (TOOD 13, ultralytics 10).
        alpha: exponent of the class probability (TOOD 1, ultralytics 0.5).
        beta: exponent of the overlap (6 both).
        variant: ``"tood"`` (TOOD / mmdetection 3.3, the default) or ``"ultralytics"`` (ultralytics 8.4's
            TAL: CIoU, in-gt candidates before the top-k, no ``t > 0`` test, argmax over all gts). Selects
            the defaults of the other arguments; explicit arguments override them.
        num_classes: ``labels`` value of non-positives; must equal C of ``pred_scores`` (None: C).
        eps: the ``t_hat`` normalisation eps (TOOD 1e-7, ultralytics 1e-9).
        center_margin: a point is inside a gt if it is more than this many pixels from every side
            (TOOD 0.01, ultralytics 1e-9).
        stal_side: in-gt test only: real gts' sides shorter than this are widened to it (ultralytics'
            ``stride[1]`` = 16; 0 = off, TOOD's default).

    ``forward(points (N, 2), strides (N,), pred_scores (B, N, C), pred_boxes (B, N, 4), gt_boxes (B, M, 4),
    gt_labels (B, M), gt_mask (B, M)) -> AssignResult``: ``pred_scores`` are class probabilities (sigmoid
    outputs, never logits), ``pred_boxes`` decoded boxes in pixels. ``overlaps`` is the IoU (TOOD) or
    clamped CIoU (ultralytics) of each positive with its gt, ``target_scores`` its ``t_hat``
    (``result.dense_scores(C)`` is the ``(B, N, C)`` classification target). N = 0 works in eager.

    Attribute ``eager_rows`` (eager only): gt rows (images x M) per step of the ``(M, N)`` work; lower it to
    save memory, raise it for fewer steps. It never changes a result; the exported graph is one step.
    """

    def __init__(
        self,
        topk: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        variant: Variant = "tood",
        num_classes: int | None = None,
        eps: float | None = None,
        center_margin: float | None = None,
        stal_side: float | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANT_DEFAULTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANT_DEFAULTS)}, got {variant!r}")
        d = VARIANT_DEFAULTS[variant]
        self.variant = variant
        topk = int(d["topk"]) if topk is None else topk
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk: must be an int >= 1, got {topk!r}")
        self.topk = topk
        self.alpha = check_scalar("alpha", d["alpha"] if alpha is None else alpha, low=0.0)
        self.beta = check_scalar("beta", d["beta"] if beta is None else beta, low=0.0)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.eps = check_scalar("eps", d["eps"] if eps is None else eps, low=0.0)
        self.center_margin = check_scalar(
            "center_margin", d["center_margin"] if center_margin is None else center_margin)
        self.stal_side = check_scalar("stal_side", d["stal_side"] if stal_side is None else stal_side, low=0.0)
        # Eager only: how many gt rows (images x M) one step of the (M, N) work takes. Smaller: less memory;
        # larger: fewer, bigger steps. Never changes a result; the exported graph is one batched step.
        self.eager_rows = EAGER_ROWS[variant]

    @classmethod
    def tood(cls, **kwargs) -> TaskAlignedAssigner:
        """TOOD / mmdetection 3.3: topk 13, alpha 1, beta 6, IoU, ``t > 0``, eps 1e-7."""
        return cls(**{"variant": "tood"} | kwargs)

    @classmethod
    def ultralytics(cls, **kwargs) -> TaskAlignedAssigner:
        """ultralytics 8.4 (YOLOv8 - YOLO12): topk 10, alpha 0.5, beta 6, CIoU, in-gt first, STAL 16, eps 1e-9."""
        return cls(**{"variant": "ultralytics"} | kwargs)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, topk={self.topk}, alpha={self.alpha}, beta={self.beta}, "
                f"eps={self.eps}, center_margin={self.center_margin}, stal_side={self.stal_side}")

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
            _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, self.num_classes)
        return self._assign(points, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)

    def _assign(
        self, points: Tensor, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
        gt_mask: Tensor, *, dense: bool | None = None,
    ) -> AssignResult:
        """``dense`` (default: only under export) runs every step on the whole batch with ``(B, M', N)``
        tensors. Otherwise (eager) the ``(M', N)`` work runs one image at a time and the rest on the
        ``(B, M', K)`` candidate lists, with scatter-reductions instead of ``(B, M', N)`` masks. Same result
        (the tests run both)."""
        dense = _exporting() if dense is None else dense
        b, n, c = pred_scores.shape
        num_classes = c if self.num_classes is None else self.num_classes
        if not _exporting() and n == 0:
            return empty_result(b, 0, num_classes, like=pred_boxes)  # no points: nothing to assign
        boxes, labels, mask = ensure_gt_rows(gt_boxes, gt_labels, gt_mask)  # (B, M', 4), (B, M'), (B, M')
        labels = torch.where(mask, labels, 0)  # (B, M') padded rows may hold any label
        if self.variant == "tood":
            stage, finish = self._tood_candidates, self._tood_finish
        else:
            stage, finish = self._ultralytics_candidates, self._ultralytics_finish
        per_chunk = b if dense else max(1, self.eager_rows // boxes.shape[1])  # images per step
        if per_chunk >= b:
            lists = stage(points, pred_scores, pred_boxes, boxes, labels, mask, dense)
        else:  # eager: a few images at a time keeps peak memory near eager_rows x N per (M', N) tensor
            parts = [stage(points, pred_scores[i : i + per_chunk], pred_boxes[i : i + per_chunk],
                           boxes[i : i + per_chunk], labels[i : i + per_chunk], mask[i : i + per_chunk], dense)
                     for i in range(0, b, per_chunk)]
            lists = tuple(torch.cat(field) for field in zip(*parts))
        gt_index, overlaps, target = finish(points, boxes, mask, n, dense, *lists)
        return _result(gt_index, overlaps, target, boxes, labels, num_classes)

    def _in_gt_boxes(self, boxes: Tensor, mask: Tensor) -> Tensor:
        if self.variant == "ultralytics" or self.stal_side > 0:
            return stal_boxes(boxes, mask, self.stal_side)  # (B, M', 4)
        return boxes

    # -- TOOD / mmdetection ---------------------------------------------------------------------------------
    def _tood_candidates(self, points, pred_scores, pred_boxes, boxes, labels, mask, dense) -> tuple[Tensor, ...]:
        """Steps 1-3: ``(top_t, top_i, top_u)`` ``(B, M', K)``, plus the metric ``(B, M', N)`` when dense."""
        # 1.-2. IoU and the metric for every (gt, point) pair: (B, M', N), never (B, M', N, C).
        iou = _box_iou(boxes, pred_boxes, eps=IOU_EPS)  # (B, M', N)
        metric = alignment_metric(gather_gt_scores(pred_scores, labels), iou, self.alpha, self.beta)  # (B, M', N)
        # 3. the top-k of every gt over all points.
        top_t, top_i = topk_candidates(metric, self.topk, zeros_matter=False)  # (B, M', K)
        top_u = iou.gather(2, top_i)  # (B, M', K)
        return (top_t, top_i, top_u, metric) if dense else (top_t, top_i, top_u)

    def _tood_finish(self, points, boxes, mask, n, dense, top_t, top_i, top_u, metric=None):
        b, m, k = top_i.shape
        # 4. positive: t > 0 and the point inside the gt by more than the margin; real gts only.
        in_gt = _candidates_inside(points, self._in_gt_boxes(boxes, mask), top_i, self.center_margin)  # (B, M', K)
        pos = (top_t > 0) & in_gt & mask.unsqueeze(-1)  # (B, M', K)
        # 5. several gts: the highest IoU among the gts the point is positive for (lower index on ties).
        best, arg = _max_over_gts(top_i, torch.where(pos, top_u, -1.0), n, dense)  # (B, N), (B, N)
        positive = best >= 0  # (B, N)
        gt_index = torch.where(positive, arg, NEGATIVE)  # (B, N)
        # 6. t_hat = t / (max t + eps) * max u, per gt over its final positives (a subset of its top-k).
        owner = gt_index.gather(1, top_i.reshape(b, m * k)).reshape(b, m, k)  # (B, M', K)
        final = pos & (owner == torch.arange(m, device=owner.device).view(1, m, 1))  # (B, M', K)
        t_max = torch.where(final, top_t, 0.0).amax(dim=2)  # (B, M')
        u_max = torch.where(final, top_u, 0.0).amax(dim=2)  # (B, M')
        safe = gt_index.clamp(min=0)  # (B, N)
        if dense:
            t_win = metric.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, N)
        else:
            t_win = _list_values_at_points(top_i, final, top_t, n)  # (B, N) each point's final entry
        target = t_win / (t_max.gather(1, safe) + self.eps) * u_max.gather(1, safe)  # (B, N)
        return gt_index, torch.where(positive, best, 0.0), torch.where(positive, target, 0.0)

    # -- ultralytics ----------------------------------------------------------------------------------------
    def _ultralytics_candidates(self, points, pred_scores, pred_boxes, boxes, labels, mask, dense):
        """Steps 1-3 and step 4's argmax over all gts: ``top_i, pos`` ``(B, M', K)``, ``arg_all`` ``(B, N)``, then
        dense: ``metric, overlaps`` ``(B, M', N)``; sparse: ``t_all, u_all`` ``(B, N)`` (their values at
        ``arg_all``) and ``top_t, top_u`` ``(B, M', K)``."""
        # 1. candidates: inside the (STAL-widened) gt; real gts only (a NaN box contains no point).
        in_gt_boxes = torch.where(mask.unsqueeze(-1), self._in_gt_boxes(boxes, mask), float("nan"))  # (B, M', 4)
        cand = points_inside(points, in_gt_boxes, self.center_margin)  # (B, M', N)
        # 2. CIoU clamped at 0 and the metric on candidates; 0 elsewhere.
        overlaps, metric, *extra = self._candidate_metrics(pred_scores, pred_boxes, boxes, labels, cand, dense)
        # 3. the top-k of every gt over all points (zero ties: lower index first), kept where a candidate.
        top_t, top_i = topk_candidates(metric, self.topk, zeros_matter=True)  # (B, M', K)
        pos = cand.gather(2, top_i)  # (B, M', K)
        if dense:
            # 4. (for points several gts keep) the argmax of the overlaps over ALL gt rows, first on ties.
            return top_i, pos, overlaps.argmax(dim=1), metric, overlaps  # ArgMax on float
        # The CIoU of the list entries, recomputed pair by pair (same arithmetic): no dense overlaps in eager.
        top_u = _pair_ciou(boxes, pred_boxes, top_i).clamp_(min=0)  # (B, M', K); read only where pos
        return (top_i, pos, *extra, top_t, top_u)

    def _ultralytics_finish(self, points, boxes, mask, n, dense, top_i, pos, arg_all, *rest):
        """Steps 4-5 on the candidate lists; ``rest`` is ``(metric, overlaps)`` (dense) or
        ``(t_all, u_all, top_t, top_u)`` (sparse: the metric and overlap at ``arg_all``, and the lists')."""
        m = boxes.shape[1]
        # 4. one gt: that gt; several: the argmax over all gt rows.
        count, arg_one = _count_over_gts(top_i, pos, n, dense)  # (B, N), (B, N)
        positive = count > 0  # (B, N)
        multi = count > 1  # (B, N)
        gt_index = torch.where(multi, arg_all, torch.where(positive, arg_one, NEGATIVE))  # (B, N)
        # 5. t_hat = t * max u / (max t + eps) per gt over its final positives (which may lie outside its
        #    top-k after step 4, so the maxima run over every point the gt won).
        safe = gt_index.clamp(min=0)  # (B, N)
        if dense:
            metric, overlaps = rest
            t_win = metric.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, N)
            u_win = overlaps.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, N)
            final = gt_index.unsqueeze(1) == torch.arange(m, device=gt_index.device).view(1, m, 1)  # (B, M', N)
            t_max = torch.where(final, metric, 0.0).amax(dim=2)  # (B, M')
            u_max = torch.where(final, overlaps, 0.0).amax(dim=2)  # (B, M')
        else:
            t_all, u_all, top_t, top_u = rest
            t_win = torch.where(multi, t_all, _list_values_at_points(top_i, pos, top_t, n))  # (B, N)
            u_win = torch.where(multi, u_all, _list_values_at_points(top_i, pos, top_u, n))  # (B, N)
            t_max = _max_per_gt(gt_index, t_win, m)  # (B, M')
            u_max = _max_per_gt(gt_index, u_win, m)  # (B, M')
        target = t_win * u_max.gather(1, safe) / (t_max.gather(1, safe) + self.eps)  # (B, N)
        return gt_index, torch.where(positive, u_win, 0.0), torch.where(positive, target, 0.0)

    def _candidate_metrics(self, pred_scores, pred_boxes, boxes, labels, cand, dense) -> tuple[Tensor, Tensor]:
        """Clamped CIoU and ``t`` at candidate pairs, 0 elsewhere: ``(B, M', N)`` each; sparse also returns
        step 4's ``arg_all`` and the metric and CIoU there, ``(B, N)`` each.

        Sparse (eager) computes them on the candidate pairs only, as ultralytics does; dense on every pair,
        masked. The per-pair arithmetic is the same (``atan`` once per box in both)."""
        if dense:
            overlaps = box_ciou(boxes, pred_boxes).clamp_(min=0)  # (B, M', N)
            overlaps = torch.where(cand, overlaps, 0.0)  # (B, M', N)
            metric = alignment_metric(gather_gt_scores(pred_scores, labels), overlaps, self.alpha, self.beta)
            return overlaps, torch.where(cand, metric, 0.0)  # (B, M', N) x 2
        b, m, n = cand.shape
        bi, mi, ni = cand.nonzero(as_tuple=True)  # (P,) x 3 candidate pairs
        ciou = _pair_ciou(boxes, pred_boxes, (bi, mi, ni)).clamp_(min=0)  # (P,)
        t = alignment_metric(pred_scores[bi, ni, labels[bi, mi]], ciou, self.alpha, self.beta)  # (P,)
        metric = pred_boxes.new_zeros((b, m, n)).index_put_((bi, mi, ni), t)  # (B, M', N)
        # Step 4's argmax over all gt rows, from the pairs: non-candidates hold 0, so a point's best is its
        # largest candidate CIoU (gt 0 when that is 0), the lowest gt index among equals.
        point = bi * n + ni  # (P,)
        best = pred_boxes.new_zeros(b * n).scatter_reduce_(0, point, ciou, "amax")  # (B*N,)
        hit = (ciou == best[point]) & (ciou > 0)  # (P,)
        arg_all = torch.full((b * n,), m, dtype=torch.int64, device=cand.device)  # (B*N,)
        arg_all.scatter_reduce_(0, point[hit], mi[hit], "amin")
        arg_all = torch.where(arg_all == m, 0, arg_all)  # (B*N,)
        won = hit & (mi == arg_all[point])  # (P,) one pair per point at most
        t_all = pred_boxes.new_zeros(b * n).index_put_((point[won],), t[won])  # (B*N,)
        return None, metric, arg_all.view(b, n), t_all.view(b, n), best.view(b, n)


def _pair_ciou(boxes: Tensor, pred_boxes: Tensor, pairs: Tensor | tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """:func:`box_ciou` of chosen (gt, prediction) pairs, with the same arithmetic as the pairwise form
    (``atan`` per box, then gathered). ``pairs`` is a ``(B, M, K)`` index into the points of each gt row
    (result ``(B, M, K)``) or ``(b, m, n)`` index vectors (result ``(P,)``)."""
    atan_g = _box_atan(boxes.movedim(-1, 0), CIOU_EPS)  # (B, M)
    atan_p = _box_atan(pred_boxes.movedim(-1, 0), CIOU_EPS)  # (B, N)
    if isinstance(pairs, Tensor):
        b, m, k = pairs.shape
        g = boxes.movedim(-1, 0).unsqueeze(-1)  # (4, B, M, 1)
        p = torch.stack([c.gather(1, pairs.reshape(b, m * k)).reshape(b, m, k)
                         for c in pred_boxes.movedim(-1, 0)])  # (4, B, M, K)
        a_p = atan_p.gather(1, pairs.reshape(b, m * k)).reshape(b, m, k)  # (B, M, K)
        return _ciou(g.unbind(0), p.unbind(0), atan_g.unsqueeze(-1), a_p, CIOU_EPS)  # (B, M, K)
    bi, mi, ni = pairs
    g = boxes[bi, mi].movedim(-1, 0)  # (4, P)
    p = pred_boxes[bi, ni].movedim(-1, 0)  # (4, P)
    return _ciou(g.unbind(0), p.unbind(0), atan_g[bi, mi], atan_p[bi, ni], CIOU_EPS)  # (P,)


def _list_values_at_points(index: Tensor, keep: Tensor, values: Tensor, n: int) -> Tensor:
    """``(B, N)``: for each point, the value of a kept list entry naming it (0 if none). Meant for a ``keep``
    with at most one entry per point (else the largest value, for values >= 0)."""
    b = index.shape[0]
    flat = (index + torch.arange(b, device=index.device).view(b, 1, 1) * n)[keep]  # (P,)
    out = torch.zeros(b * n, dtype=values.dtype, device=values.device)  # (B*N,)
    return out.scatter_reduce_(0, flat, values[keep], "amax").view(b, n)


def _max_over_gts(index: Tensor, values: Tensor, n: int, dense: bool) -> tuple[Tensor, Tensor]:
    """Per point, the max of ``values (B, M, K)`` over the gts whose lists ``index (B, M, K)`` name it, and the
    lowest gt index that reaches it: ``(best, arg)``, ``(B, N)``; ``best = -1``, ``arg = 0`` for unnamed points.
    ``values`` must be ``>= 0`` or exactly -1 (left out). Dense: one ``(B, M, N)`` scatter and a max over M
    (first index on ties); sparse: two scatter-reductions over the ``B * M * K`` entries. Same result."""
    b, m, k = index.shape
    if dense:
        grid = torch.full((b, m, n), -1.0, dtype=values.dtype, device=values.device)  # (B, M, N)
        return grid.scatter_(2, index, values).max(dim=1)  # (B, N), (B, N)
    flat = (index + torch.arange(b, device=index.device).view(b, 1, 1) * n).reshape(-1)  # (B*M*K,)
    v = values.reshape(-1)  # (B*M*K,)
    best = torch.full((b * n,), -1.0, dtype=values.dtype, device=values.device)  # (B*N,)
    best.scatter_reduce_(0, flat, v, "amax")
    gid = torch.arange(m, device=index.device).view(1, m, 1).expand(b, m, k).reshape(-1)  # (B*M*K,)
    hit = (v >= 0) & (v == best[flat])  # (B*M*K,)
    arg = torch.full((b * n,), m, dtype=torch.int64, device=index.device)  # (B*N,)
    arg.scatter_reduce_(0, flat[hit], gid[hit], "amin")
    return best.view(b, n), torch.where(arg == m, 0, arg).view(b, n)


def _count_over_gts(index: Tensor, keep: Tensor, n: int, dense: bool) -> tuple[Tensor, Tensor]:
    """Per point, how many gts keep it (``keep (B, M, K)`` over the lists ``index (B, M, K)``) and the lowest
    such gt (0 if none): ``(count, first)``, ``(B, N)`` each."""
    b, m, k = index.shape
    if dense:
        grid = torch.zeros((b, m, n), dtype=torch.bool, device=index.device).scatter_(2, index, keep)  # (B, M, N)
        return grid.sum(dim=1), grid.to(torch.float32).argmax(dim=1)  # (B, N) x 2; ArgMax on float
    flat = (index + torch.arange(b, device=index.device).view(b, 1, 1) * n).reshape(-1)  # (B*M*K,)
    kept = keep.reshape(-1)  # (B*M*K,)
    count = torch.zeros(b * n, dtype=torch.int64, device=index.device).scatter_add_(0, flat, kept.long())  # (B*N,)
    gid = torch.arange(m, device=index.device).view(1, m, 1).expand(b, m, k).reshape(-1)  # (B*M*K,)
    first = torch.full((b * n,), m, dtype=torch.int64, device=index.device)  # (B*N,)
    first.scatter_reduce_(0, flat[kept], gid[kept], "amin")
    return count.view(b, n), torch.where(first == m, 0, first).view(b, n)


def _max_per_gt(gt_index: Tensor, values: Tensor, m: int) -> Tensor:
    """``(B, M)``: per gt, the max of ``values (B, N)`` (``>= 0``) over the points assigned to it; 0 if none."""
    b = gt_index.shape[0]
    won = gt_index >= 0  # (B, N)
    flat = (gt_index + torch.arange(b, device=gt_index.device).view(b, 1) * m)[won]  # (P,)
    out = torch.zeros(b * m, dtype=values.dtype, device=values.device)  # (B*M,)
    return out.scatter_reduce_(0, flat, values[won], "amax").view(b, m)


def _candidates_inside(points: Tensor, boxes: Tensor, index: Tensor, margin: float) -> Tensor:
    """``(B, M, K)``: is candidate point ``index[b, m, j]`` inside gt ``m`` by more than ``margin``."""
    px = points[:, 0][index]  # (B, M, K)
    py = points[:, 1][index]  # (B, M, K)
    x1, y1, x2, y2 = (c.unsqueeze(-1) for c in boxes.unbind(-1))  # 4 x (B, M, 1)
    return ((px - x1) > margin) & ((py - y1) > margin) & ((x2 - px) > margin) & ((y2 - py) > margin)


def _result(gt_index: Tensor, overlaps: Tensor, target: Tensor, boxes: Tensor, labels: Tensor,
            num_classes: int) -> AssignResult:
    b, n = gt_index.shape
    m = boxes.shape[1]
    positive = gt_index >= 0  # (B, N)
    rows = (gt_index.clamp(min=0) + torch.arange(b, device=gt_index.device).view(b, 1) * m).reshape(-1)  # (B*N,)
    matched_labels = labels.reshape(b * m).index_select(0, rows).view(b, n)  # (B, N)
    matched_boxes = boxes.reshape(b * m, 4).index_select(0, rows).view(b, n, 4)  # (B, N, 4)
    return AssignResult(
        gt_index=gt_index,
        labels=torch.where(positive, matched_labels, num_classes),
        boxes=matched_boxes.mul_(positive.unsqueeze(-1)),
        overlaps=overlaps,
        target_scores=target,
        weights=torch.ones_like(overlaps),
    )


def _check_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, num_classes) -> None:
    check_point_assigner_inputs(points, strides, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask,
                                num_classes=num_classes)


