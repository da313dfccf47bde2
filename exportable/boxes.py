"""Box geometry: areas, pairwise IoU / IoF / GIoU, centres, point-in-box tests, clipping.

Shape shorthand::

    B   images in a batch (any number of leading batch dims is allowed: written ``...``)
    N   boxes of the first argument (anchors, priors, points)
    M   boxes of the second argument (ground truths)

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, with ``x1 <= x2`` and ``y1 <= y2``; a box's
width is ``x2 - x1`` (no "+1"). Points are ``(x, y)`` in pixels. Images are ``(H, W)``.

Numerics follow mmdetection 3.3 ``bbox_overlaps`` (docs/algorithms.md section 1): areas are not
clamped, the intersection sides are clamped at 0, the union and the enclosing area are clamped from
below with ``max(., eps)``, ``eps = 1e-6``. So two zero-area boxes give IoU 0 (not NaN), and two equal
zero-area boxes give GIoU 0.

Pairwise functions broadcast leading dims: anchors ``(N, 4)`` against gts ``(B, M, 4)`` give
``(B, N, M)``. They compute on ``(..., N, 1)`` against ``(..., 1, M)`` views, one coordinate at a time, so
only a few ``(..., N, M)`` float tensors are alive at once.

:class:`BoxOverlaps` wraps the overlaps for export (pairwise IoU / IoF / GIoU of batched boxes).

Every public function validates its inputs (when :func:`exportable._checks.checks_enabled`) and then
calls a private unchecked twin (``_box_iou`` ...) that other modules call directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_boxes,
    check_float,
    check_image_sizes,
    check_integer,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable.numerics import atan

__all__ = [
    "BoxOverlaps",
    "box_area",
    "box_centers",
    "box_ciou",
    "box_distances",
    "box_giou",
    "box_iof",
    "box_iou",
    "box_overlaps",
    "box_wh",
    "clip_boxes",
    "points_in_boxes",
    "points_near_centers",
]

OverlapMode = Literal["iou", "iof", "giou"]
ImageSizes = tuple[int, int] | tuple[float, float] | Tensor


# ---------------------------------------------------------------------------------------------------------
# Input checks shared by the wrappers


def _check_pair(boxes1: Tensor, boxes2: Tensor, aligned: bool, eps: float) -> None:
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    check_scalar("eps", eps, low=0.0)
    if aligned:
        try:
            torch.broadcast_shapes(boxes1.shape[:-1], boxes2.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"boxes2: aligned boxes must have the same (broadcastable) shape as boxes1, got "
                f"{tuple(boxes2.shape)} vs boxes1 {tuple(boxes1.shape)}"
            ) from None
        return
    if boxes1.dim() < 2:
        raise ValueError(f"boxes1: pairwise overlaps need (..., N, 4), got shape {tuple(boxes1.shape)}")
    if boxes2.dim() < 2:
        raise ValueError(f"boxes2: pairwise overlaps need (..., M, 4), got shape {tuple(boxes2.shape)}")
    _check_leading("boxes1", boxes1.shape[:-2], "boxes2", boxes2.shape[:-2])


def _check_leading(name1: str, lead1: torch.Size, name2: str, lead2: torch.Size) -> None:
    try:
        torch.broadcast_shapes(lead1, lead2)
    except RuntimeError:
        raise ValueError(
            f"{name2}: leading (batch) dims {tuple(lead2)} do not broadcast with {name1}'s {tuple(lead1)}"
        ) from None


def _check_points(name: str, points: Tensor) -> None:
    check_float(name, points)
    check_shape(name, points, ("N", 2), leading=True)


def _check_image_sizes(name: str, image_sizes: object, boxes: Tensor) -> None:
    """``(H, W)`` pair of numbers, or a tensor ``(2,)`` / ``(B, 2)`` whose B is ``boxes``' first dim."""
    if isinstance(image_sizes, Tensor):
        if image_sizes.dim() == 1:
            check_integer(name, image_sizes)
            check_shape(name, image_sizes, (2,))
            if bool((image_sizes < 0).any()):
                raise ValueError(f"{name}: image sizes must be >= 0 (rows are (H, W))")
            return
        check_image_sizes(name, image_sizes)
        if boxes.dim() < 3 or boxes.shape[0] != image_sizes.shape[0]:
            raise ValueError(
                f"{name}: per-image sizes (B, 2) = {tuple(image_sizes.shape)} need boxes (B, ..., 4) "
                f"with the same B, got boxes of shape {tuple(boxes.shape)}"
            )
        return
    if not isinstance(image_sizes, (tuple, list)) or len(image_sizes) != 2:
        raise TypeError(f"{name}: expected an (H, W) pair or a (B, 2) tensor, got {image_sizes!r}")
    check_scalar(f"{name}[0] (H)", image_sizes[0], low=0.0)
    check_scalar(f"{name}[1] (W)", image_sizes[1], low=0.0)


# ---------------------------------------------------------------------------------------------------------
# Areas, centres, sizes


def box_area(boxes: Float[Tensor, "*batch 4"]) -> Float[Tensor, " *batch"]:
    """Area ``(x2 - x1) * (y2 - y1)`` of boxes ``(x1, y1, x2, y2)``; not clamped (mmdetection)."""
    if checks_enabled():
        check_boxes("boxes", boxes)
    return _box_area(boxes)


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (...)


def box_centers(boxes: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 2"]:
    """Centres ``((x1 + x2) / 2, (y1 + y2) / 2)`` of boxes ``(x1, y1, x2, y2)``."""
    if checks_enabled():
        check_boxes("boxes", boxes)
    return _box_centers(boxes)


def _box_centers(boxes: Tensor) -> Tensor:
    cx = (boxes[..., 0] + boxes[..., 2]) / 2  # (...)
    cy = (boxes[..., 1] + boxes[..., 3]) / 2  # (...)
    return torch.stack([cx, cy], dim=-1)  # (..., 2)


def box_wh(boxes: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 2"]:
    """Widths and heights ``(x2 - x1, y2 - y1)`` of boxes ``(x1, y1, x2, y2)``."""
    if checks_enabled():
        check_boxes("boxes", boxes)
    return _box_wh(boxes)


def _box_wh(boxes: Tensor) -> Tensor:
    return boxes[..., 2:] - boxes[..., :2]  # (..., 2)


# ---------------------------------------------------------------------------------------------------------
# IoU, IoF, GIoU


def _split(boxes1: Tensor, boxes2: Tensor, aligned: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Coordinates of both arguments as views that broadcast to ``(..., N, M)`` (or ``(..., N)``)."""
    # Contiguous coordinate planes: views of (..., N, 4) are strided by 4 and keep every broadcast
    # op below from vectorising (about 3x slower on CPU); the copy is only (..., N) x 4.
    c1 = boxes1.movedim(-1, 0).contiguous()  # (4, ..., N)
    c2 = boxes2.movedim(-1, 0).contiguous()  # (4, ..., M)
    if aligned:
        return list(c1.unbind(0)), list(c2.unbind(0))  # 4 x (..., N)
    a = [c.unsqueeze(-1) for c in c1.unbind(0)]  # 4 x (..., N, 1)
    b = [c.unsqueeze(-2) for c in c2.unbind(0)]  # 4 x (..., 1, M)
    return a, b


def _inter_and_areas(boxes1: Tensor, boxes2: Tensor, aligned: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection ``(..., N, M)`` and the two areas as broadcastable views."""
    return _planes_inter_and_areas(*_split(boxes1, boxes2, aligned))


def _planes_inter_and_areas(a: Sequence[Tensor], b: Sequence[Tensor],
                            area_b: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_inter_and_areas` from coordinate planes ``(x1, y1, x2, y2)`` that broadcast together;
    ``area_b``: the second boxes' areas if already known (computed by the same formula: the same bits)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a, b
    iw = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)  # (..., N, M)
    ih = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)  # (..., N, M)
    inter = iw.mul_(ih)  # (..., N, M)
    area1 = (ax2 - ax1) * (ay2 - ay1)  # (..., N, 1)
    area2 = (bx2 - bx1) * (by2 - by1) if area_b is None else area_b  # (..., 1, M)
    return inter, area1, area2


def _planes_iou(a: Sequence[Tensor], b: Sequence[Tensor], area_b: Tensor | None = None,
                eps: float = 1e-6) -> Tensor:
    """:func:`_box_iou` from coordinate planes (see :func:`_planes_inter_and_areas`): the same numbers."""
    inter, area1, area2 = _planes_inter_and_areas(a, b, area_b)
    union = (area1 + area2 - inter).clamp_(min=eps)  # (..., N, M)
    return inter.div_(union)  # (..., N, M)


def box_iou(
    boxes1: Float[Tensor, "*batch N 4"],
    boxes2: Float[Tensor, "*batch M 4"],
    *,
    aligned: bool = False,
    eps: float = 1e-6,
) -> Float[Tensor, "*batch N M"]:
    """IoU ``inter / max(area1 + area2 - inter, eps)`` of boxes ``(x1, y1, x2, y2)``.

    Pairwise: ``(..., N, 4)`` and ``(..., M, 4)`` give ``(..., N, M)``; the leading dims broadcast
    (anchors ``(N, 4)`` against gts ``(B, M, 4)`` give ``(B, N, M)``). With ``aligned=True`` row ``i`` is
    compared with row ``i``: ``(..., N, 4)`` and ``(..., N, 4)`` give ``(..., N)``.
    Two zero-area boxes give 0. Same numbers as mmdetection's ``bbox_overlaps(mode='iou')``.
    """
    if checks_enabled():
        _check_pair(boxes1, boxes2, aligned, eps)
    return _box_iou(boxes1, boxes2, aligned=aligned, eps=eps)


def _box_iou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, eps: float = 1e-6) -> Tensor:
    return _planes_iou(*_split(boxes1, boxes2, aligned), eps=eps)


def box_iof(
    boxes1: Float[Tensor, "*batch N 4"],
    boxes2: Float[Tensor, "*batch M 4"],
    *,
    aligned: bool = False,
    eps: float = 1e-6,
) -> Float[Tensor, "*batch N M"]:
    """Intersection over the FIRST argument's area: ``inter / max(area(boxes1), eps)``.

    Boxes are ``(x1, y1, x2, y2)``; shapes and broadcasting as :func:`box_iou`. Not symmetric: MaxIoU's
    ignore step calls it in both orders (docs/algorithms.md section 4).
    """
    if checks_enabled():
        _check_pair(boxes1, boxes2, aligned, eps)
    return _box_iof(boxes1, boxes2, aligned=aligned, eps=eps)


def _box_iof(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, eps: float = 1e-6) -> Tensor:
    inter, area1, _ = _inter_and_areas(boxes1, boxes2, aligned)
    return inter / area1.clamp(min=eps)  # (..., N, M)


def box_giou(
    boxes1: Float[Tensor, "*batch N 4"],
    boxes2: Float[Tensor, "*batch M 4"],
    *,
    aligned: bool = False,
    eps: float = 1e-6,
) -> Float[Tensor, "*batch N M"]:
    """Generalised IoU ``iou - (E - U) / max(E, eps)`` of boxes ``(x1, y1, x2, y2)``.

    ``U`` is the eps-clamped union and ``E`` the area of the smallest enclosing box. Values lie in
    ``[-1, 1]``. Two equal zero-area boxes give 0; two zero-area boxes far apart give about -1 (their
    enclosing box has an area, their union is eps), as in mmdetection. Shapes as :func:`box_iou`.
    """
    if checks_enabled():
        _check_pair(boxes1, boxes2, aligned, eps)
    return _box_giou(boxes1, boxes2, aligned=aligned, eps=eps)


def _box_giou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, eps: float = 1e-6) -> Tensor:
    inter, area1, area2 = _inter_and_areas(boxes1, boxes2, aligned)
    union = (area1 + area2 - inter).clamp(min=eps)  # (..., N, M)
    iou = inter / union  # (..., N, M)
    del inter
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = _split(boxes1, boxes2, aligned)
    ew = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)  # (..., N, M)
    eh = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)  # (..., N, M)
    enclose = (ew * eh).clamp(min=eps)  # (..., N, M)
    return iou - (enclose - union) / enclose  # (..., N, M)


_OVERLAPS = {"iou": _box_iou, "iof": _box_iof, "giou": _box_giou}


def box_overlaps(
    boxes1: Float[Tensor, "*batch N 4"],
    boxes2: Float[Tensor, "*batch M 4"],
    mode: OverlapMode = "iou",
    aligned: bool = False,
    eps: float = 1e-6,
) -> Float[Tensor, "*batch N M"]:
    """Dispatch to :func:`box_iou`, :func:`box_iof` or :func:`box_giou` by ``mode`` (mmdetection's
    ``bbox_overlaps``). Boxes are ``(x1, y1, x2, y2)``; shapes as :func:`box_iou`."""
    if mode not in _OVERLAPS:
        raise ValueError(f"mode: expected one of {sorted(_OVERLAPS)}, got {mode!r}")
    if checks_enabled():
        _check_pair(boxes1, boxes2, aligned, eps)
    return _OVERLAPS[mode](boxes1, boxes2, aligned=aligned, eps=eps)


def _box_overlaps(
    boxes1: Tensor, boxes2: Tensor, mode: str = "iou", aligned: bool = False, eps: float = 1e-6
) -> Tensor:
    return _OVERLAPS[mode](boxes1, boxes2, aligned=aligned, eps=eps)


# ---------------------------------------------------------------------------------------------------------
# Points against boxes


def box_distances(
    points: Float[Tensor, "*batch N 2"], boxes: Float[Tensor, "*batch M 4"]
) -> Float[Tensor, "*batch N M 4"]:
    """Distances ``(l, t, r, b) = (px - x1, py - y1, x2 - px, y2 - py)`` from every point to the sides
    of every box ``(x1, y1, x2, y2)``; negative where the point lies outside that side.

    ``(..., N, 2)`` points and ``(..., M, 4)`` boxes give ``(..., N, M, 4)`` (leading dims broadcast).
    """
    if checks_enabled():
        _check_points("points", points)
        check_boxes("boxes", boxes)
        _check_pairwise_dims(points, boxes)
    return _box_distances(points, boxes)


def _check_pairwise_dims(points: Tensor, boxes: Tensor) -> None:
    if boxes.dim() < 2:
        raise ValueError(f"boxes: expected (..., M, 4), got shape {tuple(boxes.shape)}")
    _check_leading("points", points.shape[:-2], "boxes", boxes.shape[:-2])


def _point_planes(points: Tensor, boxes: Tensor, aligned: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(px, py)`` and ``(x1, y1, x2, y2)`` as contiguous planes that broadcast to the output shape.

    Pairwise: ``(..., N, 1)`` against ``(..., 1, M)``; aligned: the inputs' own leading shapes. Contiguous
    planes because a strided view of ``(..., 2)`` or ``(..., 4)`` keeps the comparisons from vectorising.
    """
    p = points.movedim(-1, 0).contiguous()  # (2, ..., N)
    b = boxes.movedim(-1, 0).contiguous()  # (4, ..., M)
    if not aligned:
        p = p.unsqueeze(-1)  # (2, ..., N, 1)
        b = b.unsqueeze(-2)  # (4, ..., 1, M)
    return tuple(p.unbind(0)), tuple(b.unbind(0))


def _box_distances(points: Tensor, boxes: Tensor) -> Tensor:
    (px, py), (x1, y1, x2, y2) = _point_planes(points, boxes, aligned=False)
    return torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=-1)  # (..., N, M, 4)


def _check_point_pair(points: Tensor, boxes: Tensor, aligned: bool) -> None:
    check_float("points", points)
    if points.dim() == 0 or points.shape[-1] != 2:
        raise ValueError(f"points: expected (..., 2) as (x, y), got shape {tuple(points.shape)}")
    check_boxes("boxes", boxes)
    if aligned:
        _check_leading("points", points.shape[:-1], "boxes", boxes.shape[:-1])
    else:
        if points.dim() < 2:
            raise ValueError(f"points: pairwise tests need (..., N, 2), got shape {tuple(points.shape)}")
        _check_pairwise_dims(points, boxes)


def points_in_boxes(
    points: Float[Tensor, "*batch N 2"],
    boxes: Float[Tensor, "*batch M 4"],
    *,
    margin: float = 0.0,
    aligned: bool = False,
) -> Bool[Tensor, "*batch N M"]:
    """True where the point lies inside the box ``(x1, y1, x2, y2)`` by MORE than ``margin`` pixels on every
    side: ``px - x1 > margin``, ``py - y1 > margin``, ``x2 - px > margin``, ``y2 - py > margin`` (strict, so a
    point on an edge is outside).

    Pairwise: ``(..., N, 2)`` points and ``(..., M, 4)`` boxes give ``(..., N, M)``. With ``aligned=True`` the
    two broadcast elementwise: ``points (N, 2)`` against ``gt_boxes[:, :, None] (B, M, 1, 4)`` gives the
    assigners' gt-major ``(B, M, N)``; gathered candidates ``(B, M, K, 2)`` against ``(B, M, 1, 4)`` give
    ``(B, M, K)``. Margins in use: ATSS and TOOD 0.01 px, SimOTA 0, ultralytics' TAL 1e-9
    (docs/algorithms.md §8, §9, §10).
    """
    if checks_enabled():
        _check_point_pair(points, boxes, aligned)
        check_scalar("margin", margin)
    return _points_in_boxes(points, boxes, margin=margin, aligned=aligned)


def _points_in_boxes(points: Tensor, boxes: Tensor, *, margin: float = 0.0, aligned: bool = False) -> Tensor:
    return _planes_in_boxes(*_point_planes(points, boxes, aligned), margin=margin)


def _planes_in_boxes(points: Sequence[Tensor], boxes: Sequence[Tensor], *, margin: float = 0.0) -> Tensor:
    """:func:`points_in_boxes` from coordinate planes ``(px, py)`` and ``(x1, y1, x2, y2)`` that broadcast."""
    (px, py), (x1, y1, x2, y2) = points, boxes
    if margin == 0.0:  # a - b > 0 exactly when a > b (IEEE, gradual underflow): no float temporaries
        inside = px > x1  # (..., N, M) or the broadcast shape
        inside &= py > y1
        inside &= x2 > px
        inside &= y2 > py
        return inside
    inside = (px - x1) > margin  # (..., N, M) or the broadcast shape
    inside &= (py - y1) > margin
    inside &= (x2 - px) > margin
    inside &= (y2 - py) > margin
    return inside


def points_near_centers(
    points: Float[Tensor, "*batch N 2"],
    boxes: Float[Tensor, "*batch M 4"],
    radius: Float[Tensor, "*batch N"] | float,
    *,
    aligned: bool = False,
) -> Bool[Tensor, "*batch N M"]:
    """True where the point lies strictly inside the square of half-side ``radius`` around the centre of the
    box ``(x1, y1, x2, y2)``: ``px - (cx - r) > 0``, ``(cx + r) - px > 0`` and the same in y, written in that
    order as mmdetection's SimOTA writes it (so the same bits at the square's edge).

    ``radius`` is one number (pixels) or a tensor that broadcasts with the points' leading shape (one radius
    per point, e.g. ``2.5 * strides``). Shapes as :func:`points_in_boxes`: pairwise ``(..., N, M)``, or with
    ``aligned=True`` elementwise broadcasting (``points (N, 2)``, ``radius (N,)``, ``gt_boxes[:, :, None]``
    give ``(B, M, N)``).
    """
    if checks_enabled():
        _check_point_pair(points, boxes, aligned)
        if isinstance(radius, Tensor):
            check_float("radius", radius)
            if radius.dim() > 0 and radius.shape[-1] not in (1, points.shape[-2]):
                raise ValueError(
                    f"radius: expected one radius per point (N,) with N = {points.shape[-2]}, "
                    f"got shape {tuple(radius.shape)}"
                )
        else:
            check_scalar("radius", radius, low=0.0)
    return _points_near_centers(points, boxes, radius, aligned=aligned)


def _points_near_centers(points: Tensor, boxes: Tensor, radius: Tensor | float, *, aligned: bool = False) -> Tensor:
    (px, py), (x1, y1, x2, y2) = _point_planes(points, boxes, aligned)
    cx = (x1 + x2) / 2  # (..., 1, M) or broadcast
    cy = (y1 + y2) / 2
    r = radius.unsqueeze(-1) if isinstance(radius, Tensor) and radius.dim() > 0 and not aligned else radius
    # a - b > 0 exactly when a > b (IEEE, gradual underflow): compare without the float difference
    near = px > cx - r  # (..., N, M) or the broadcast shape
    near &= cx + r > px
    near &= py > cy - r
    near &= cy + r > py
    return near


# ---------------------------------------------------------------------------------------------------------
# Complete IoU (ultralytics' CIoU)

CIOU_EPS = 1e-7  # ultralytics' bbox_iou default eps


def box_ciou(
    boxes1: Float[Tensor, "*batch M 4"],
    boxes2: Float[Tensor, "*batch N 4"],
    *,
    aligned: bool = False,
    eps: float = CIOU_EPS,
) -> Float[Tensor, "*batch M N"]:
    """Complete IoU of boxes ``(x1, y1, x2, y2)``, with ultralytics' ``bbox_iou(..., CIoU=True)`` formula.

    ``CIoU = IoU - (rho^2 / c^2 + v * a)``: ``IoU = inter / (w1 h1 + w2 h2 - inter + eps)`` with heights
    ``y2 - y1 + eps``; ``c^2`` the squared diagonal of the enclosing box ``+ eps``; ``rho^2`` the squared
    distance of the centres; ``v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2``; ``a = v / (1 - IoU + v + eps)``.
    Values lie in ``(-1.5, 1]``. ultralytics' TAL calls it with ``boxes1`` = gts and ``boxes2`` = predictions
    and clamps at 0 (docs/algorithms.md §10.3).

    ``atan`` is :func:`exportable.numerics.atan` (within 2 ulp of ``torch.atan``): every operation is then
    IEEE-exact, so eager, onnxruntime CPU and CUDA give the same bits (two identical gts get identical
    values, and a later argmax over them cannot flip), and the CUDA provider, which has no ``Atan`` kernel,
    runs the whole computation. Pairwise: ``(..., M, 4)`` and ``(..., N, 4)`` give ``(..., M, N)``, the
    arctangents computed once per box; ``aligned=True`` broadcasts elementwise. Both give the same values on
    the same pairs.
    """
    if checks_enabled():
        _check_pair(boxes1, boxes2, aligned, eps)
    return _box_ciou(boxes1, boxes2, aligned=aligned, eps=eps)


def _box_ciou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, eps: float = CIOU_EPS) -> Tensor:
    c1 = boxes1.movedim(-1, 0).contiguous()  # (4, ..., M)
    c2 = boxes2.movedim(-1, 0).contiguous()  # (4, ..., N)
    atan1, atan2 = _ciou_atan(c1, eps), _ciou_atan(c2, eps)  # (..., M), (..., N) per box, once
    if not aligned:
        c1, c2 = c1.unsqueeze(-1), c2.unsqueeze(-2)  # (4, ..., M, 1), (4, ..., 1, N)
        atan1, atan2 = atan1.unsqueeze(-1), atan2.unsqueeze(-2)  # (..., M, 1), (..., 1, N)
    return _ciou_planes(c1.unbind(0), c2.unbind(0), atan1, atan2, eps=eps)


def _ciou_atan(planes: Sequence[Tensor], eps: float = CIOU_EPS) -> Tensor:
    """``atan(w / (h + eps))`` of boxes given as coordinate planes ``(x1, y1, x2, y2)`` (a ``(4, ...)`` tensor or
    four tensors): CIoU's per-box aspect term, for :func:`_ciou_planes`."""
    return atan((planes[2] - planes[0]) / (planes[3] - planes[1] + eps))  # (...)


def _ciou_planes(b1: Sequence[Tensor], b2: Sequence[Tensor], atan1: Tensor, atan2: Tensor, *,
                eps: float = CIOU_EPS) -> Tensor:
    """:func:`box_ciou` from the coordinate planes ``(x1, y1, x2, y2)`` of both sides and their
    :func:`_ciou_atan`, all broadcasting to the output shape (the same bits as :func:`box_ciou`). For callers
    that gather per-pair planes and would otherwise stack and split them, or recompute the arctangents."""
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
    c2_diag = cw.mul_(cw).add_(ch.mul_(ch)).add_(eps)  # (..., M, N) squared diagonal
    dx = (b2_x1 + b2_x2).sub(b1_x1).sub_(b1_x2)  # (..., M, N) twice the centre distance in x
    dy = (b2_y1 + b2_y2).sub(b1_y1).sub_(b1_y2)  # (..., M, N)
    rho2 = dx.mul_(dx).add_(dy.mul_(dy)).div_(4)  # (..., M, N)
    dv = atan2 - atan1  # (..., M, N)
    v = dv.mul_(dv).mul_(4 / math.pi**2)  # (..., M, N)
    alpha = v / (1 - iou).add_(v).add_(eps)  # (..., M, N)
    return iou.sub_(rho2.div_(c2_diag).add_(v.mul_(alpha)))  # (..., M, N)


# ---------------------------------------------------------------------------------------------------------
# Clipping


def clip_boxes(
    boxes: Float[Tensor, "*batch N 4"],
    image_sizes: tuple[int, int] | Int[Tensor, "B 2"] | Float[Tensor, "B 2"],
) -> Float[Tensor, "*batch N 4"]:
    """Clip boxes ``(x1, y1, x2, y2)``: x to ``[0, W]``, y to ``[0, H]`` (no ``-1``; mmdetection).

    ``image_sizes`` is one ``(H, W)`` pair for every box, a ``(2,)`` tensor ``(H, W)``, or a ``(B, 2)``
    tensor of per-image ``(H, W)`` rows (int64 or float) for boxes ``(B, N, 4)`` (any dims between B and
    the last are allowed). Returns a new tensor of the boxes' shape and dtype.
    """
    if checks_enabled():
        check_boxes("boxes", boxes, allow_inverted=True)
        _check_image_sizes("image_sizes", image_sizes, boxes)
    return _clip_boxes(boxes, image_sizes)


def _size_bounds(image_sizes: ImageSizes, boxes: Tensor) -> tuple[Tensor | float, Tensor | float]:
    """``(H, W)`` as numbers, or as tensors in the boxes' dtype shaped to broadcast with ``boxes[..., 0]``."""
    if not isinstance(image_sizes, Tensor):
        return float(image_sizes[0]), float(image_sizes[1])
    sizes = image_sizes.to(dtype=boxes.dtype, device=boxes.device)  # (B, 2) or (2,)
    if sizes.dim() == 1:
        return sizes[0], sizes[1]  # () each
    ones = [1] * (boxes.dim() - 2)
    h = sizes[:, 0].reshape(-1, *ones)  # (B, 1, ...)
    w = sizes[:, 1].reshape(-1, *ones)  # (B, 1, ...)
    return h, w


def _clamp_upper(x: Tensor, bound: Tensor | float) -> Tensor:
    """``clamp(x, 0, bound)`` that also exports when ``bound`` is a tensor (no 0-d tensor bounds)."""
    x = x.clamp(min=0)
    if isinstance(bound, Tensor):
        return torch.minimum(x, bound)  # broadcast to x's shape
    return x.clamp(max=bound)


def _clip_boxes(boxes: Tensor, image_sizes: ImageSizes) -> Tensor:
    h, w = _size_bounds(image_sizes, boxes)
    x1 = _clamp_upper(boxes[..., 0], w)  # (..., N)
    y1 = _clamp_upper(boxes[..., 1], h)  # (..., N)
    x2 = _clamp_upper(boxes[..., 2], w)  # (..., N)
    y2 = _clamp_upper(boxes[..., 3], h)  # (..., N)
    return torch.stack([x1, y1, x2, y2], dim=-1)  # (..., N, 4)


# ---------------------------------------------------------------------------------------------------------
# Exportable modules


class BoxOverlaps(nn.Module):
    """``forward(boxes1 (B, N, 4), boxes2 (B, M, 4)) -> overlaps (B, N, M)``: :func:`box_overlaps`.

    ``mode`` is ``"iou"``, ``"iof"`` or ``"giou"``; boxes are ``(x1, y1, x2, y2)``; leading dims broadcast as
    in :func:`box_iou`. With ``aligned=True`` the output is ``(B, N)``.
    """

    def __init__(self, mode: OverlapMode = "iou", eps: float = 1e-6, aligned: bool = False) -> None:
        super().__init__()
        if mode not in _OVERLAPS:
            raise ValueError(f"mode: expected one of {sorted(_OVERLAPS)}, got {mode!r}")
        self.mode = mode
        self.eps = check_scalar("eps", eps, low=0.0)
        self.aligned = bool(aligned)

    def forward(
        self, boxes1: Float[Tensor, "*batch N 4"], boxes2: Float[Tensor, "*batch M 4"]
    ) -> Float[Tensor, "*batch N M"]:
        if checks_enabled():
            _check_pair(boxes1, boxes2, self.aligned, self.eps)
        return _OVERLAPS[self.mode](boxes1, boxes2, aligned=self.aligned, eps=self.eps)  # (B, N, M)
