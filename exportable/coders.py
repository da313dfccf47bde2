"""Box coders: mmdetection's ``DeltaXYWHBBoxCoder`` and ``DistancePointBBoxCoder``.

Shape shorthand::

    B   images in a batch (any number of leading batch dims is allowed: written ``...``)
    N   anchors / priors / points (shared by the batch, or one set per image)

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, with ``x1 <= x2`` (width ``x2 - x1``, no "+1").
Points are ``(x, y)`` pixels. Images are ``(H, W)``; ``image_sizes (B, 2)`` int64 holds ``(H, W)`` rows.

Deltas ``(dx, dy, dw, dh)``: ``dx = (gx - px) / pw``, ``dw = log(gw / pw)`` (same for y / h), then
``(d - means) / stds`` (docs/algorithms.md section 3). Distances ``(l, t, r, b)`` from a point to the
sides of a box (FCOS, TOOD, YOLOX-style heads).

Anchors and gts / deltas broadcast over leading dims: shared anchors ``(N, 4)`` with per-image deltas
``(B, N, 4)`` give ``(B, N, 4)``. Results keep the inputs' (promoted) dtype (mmdetection casts to float32).
Decoding clips to the image when ``clip_border`` and a size is given: x to ``[0, W]``, y to ``[0, H]``.

The coders are plain objects with eager, checked ``encode`` / ``decode``; the small modules
:class:`DeltaXYWHEncode`, :class:`DeltaXYWHDecode` and :class:`DistanceDecode` wrap them for export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_boxes,
    check_float,
    check_image_sizes,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable.boxes import ImageSizes, _check_image_sizes, _check_leading, _clip_boxes

__all__ = [
    "DeltaXYWHCoder",
    "DeltaXYWHDecode",
    "DeltaXYWHEncode",
    "DistanceDecode",
    "DistancePointCoder",
]

MaxShape = tuple[int, int] | Int[Tensor, "B 2"] | None


def _four(name: str, values: Sequence[float]) -> tuple[float, float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 4:
        raise ValueError(f"{name}: expected 4 values (x, y, w, h), got {len(vals)}")
    return vals  # type: ignore[return-value]


def _check_same_n(name1: str, t1: Tensor, name2: str, t2: Tensor) -> None:
    """Second-to-last dims (N) equal and leading dims broadcastable."""
    if t1.dim() < 2 or t2.dim() < 2:
        bad, t = (name1, t1) if t1.dim() < 2 else (name2, t2)
        raise ValueError(f"{bad}: expected (..., N, {t.shape[-1]}), got shape {tuple(t.shape)}")
    if t1.shape[-2] != t2.shape[-2]:
        raise ValueError(f"{name2}: expected N = {t1.shape[-2]} rows as in {name1}, got {tuple(t2.shape)}")
    _check_leading(name1, t1.shape[:-2], name2, t2.shape[:-2])


def _check_max_shape(name: str, max_shape: object, out_shape: torch.Size) -> None:
    if max_shape is None:
        return
    probe = torch.empty(out_shape, device="meta")  # shape-only stand-in for the decoded boxes
    _check_image_sizes(name, max_shape, probe)


def _check_positive_size(name: str, anchors: Tensor) -> None:
    empty = (anchors[..., 2] <= anchors[..., 0]) | (anchors[..., 3] <= anchors[..., 1])  # (..., N)
    if anchors.numel() and bool(empty.any()):
        raise ValueError(
            f"{name}: zero-width or zero-height anchor; encode divides by the anchor's width and height "
            "(no eps, like mmdetection) and would give inf/NaN"
        )


def _out_shape(a: Tensor, b: Tensor) -> torch.Size:
    return torch.broadcast_shapes(a.shape[:-1], b.shape[:-1]) + (4,)


# ---------------------------------------------------------------------------------------------------------
# DeltaXYWH


class DeltaXYWHCoder:
    """mmdetection 3.3 ``DeltaXYWHBBoxCoder`` (RPN, RetinaNet, ATSS, Faster R-CNN RoI head).

    Args:
        means, stds: delta normalisation, ``(d - means) / stds``; RoI head: ``stds = (0.1, 0.1, 0.2, 0.2)``.
        wh_ratio_clip: decode clamps ``dw, dh`` to ``±|log(wh_ratio_clip)|`` (4.1352 for 16/1000).
        clip_border: decode clips boxes to the image when a ``max_shape`` is given.
        add_ctr_clamp, ctr_clamp: clamp the decoded centre shift to ``±ctr_clamp`` pixels; ``dw, dh`` are
            then clamped from above only.

    ``encode`` has no eps, like mmdetection: a zero-width or zero-height anchor would give inf / NaN, so the
    eager check rejects it; a zero-size gt gives ``dw = -inf`` (or ``dh``), mmdetection's behaviour, and is
    allowed. Boxes are ``(x1, y1, x2, y2)``.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
        clip_border: bool = True,
        add_ctr_clamp: bool = False,
        ctr_clamp: float = 32.0,
    ) -> None:
        self.means = _four("means", means)
        self.stds = _four("stds", stds)
        if min(self.stds) <= 0:
            raise ValueError(f"stds: must be positive, got {self.stds}")
        self.wh_ratio_clip = check_scalar("wh_ratio_clip", wh_ratio_clip, low=1e-12, high=1.0)
        self.clip_border = bool(clip_border)
        self.add_ctr_clamp = bool(add_ctr_clamp)
        self.ctr_clamp = check_scalar("ctr_clamp", ctr_clamp, low=0.0)

    @property
    def max_ratio(self) -> float:
        """``|log(wh_ratio_clip)|``: the bound on decoded ``dw, dh``."""
        return abs(math.log(self.wh_ratio_clip))

    # -- encode ---------------------------------------------------------------------------------------------

    def encode(
        self, anchors: Float[Tensor, "*batch N 4"], gt: Float[Tensor, "*batch N 4"]
    ) -> Float[Tensor, "*batch N 4"]:
        """Deltas ``(dx, dy, dw, dh)`` moving each anchor ``(x1, y1, x2, y2)`` onto its gt (row i to row i).

        Leading dims broadcast: anchors ``(N, 4)`` and gts ``(B, N, 4)`` give ``(B, N, 4)``.
        """
        if checks_enabled():
            check_boxes("anchors", anchors)
            check_boxes("gt", gt)
            _check_same_n("anchors", anchors, "gt", gt)
            _check_positive_size("anchors", anchors)
        return self._encode(anchors, gt)

    def _encode(self, anchors: Tensor, gt: Tensor) -> Tensor:
        px = (anchors[..., 0] + anchors[..., 2]) * 0.5  # (..., N)
        py = (anchors[..., 1] + anchors[..., 3]) * 0.5  # (..., N)
        pw = anchors[..., 2] - anchors[..., 0]  # (..., N)
        ph = anchors[..., 3] - anchors[..., 1]  # (..., N)
        gx = (gt[..., 0] + gt[..., 2]) * 0.5  # (..., N)
        gy = (gt[..., 1] + gt[..., 3]) * 0.5  # (..., N)
        gw = gt[..., 2] - gt[..., 0]  # (..., N)
        gh = gt[..., 3] - gt[..., 1]  # (..., N)
        dx = (gx - px) / pw  # (..., N) broadcast over leading dims
        dy = (gy - py) / ph  # (..., N)
        dw = torch.log(gw / pw)  # (..., N)
        dh = torch.log(gh / ph)  # (..., N)
        deltas = torch.stack([dx, dy, dw, dh], dim=-1)  # (..., N, 4)
        if self.means != (0.0, 0.0, 0.0, 0.0):
            deltas = deltas - deltas.new_tensor(self.means)  # (..., N, 4)
        if self.stds != (1.0, 1.0, 1.0, 1.0):
            deltas = deltas / deltas.new_tensor(self.stds)  # (..., N, 4)
        return deltas

    # -- decode ---------------------------------------------------------------------------------------------

    def decode(
        self,
        anchors: Float[Tensor, "*batch N 4"],
        deltas: Float[Tensor, "*batch N 4"],
        max_shape: MaxShape = None,
    ) -> Float[Tensor, "*batch N 4"]:
        """Boxes ``(x1, y1, x2, y2)`` from anchors and deltas (row i with row i; leading dims broadcast).

        ``max_shape`` is ``None`` (no clipping), one ``(H, W)`` pair, or a ``(B, 2)`` tensor of per-image
        ``(H, W)`` rows for a result ``(B, N, 4)``; clipping happens only with ``clip_border=True``.
        """
        if checks_enabled():
            check_boxes("anchors", anchors)
            check_float("deltas", deltas)
            check_shape("deltas", deltas, ("N", 4), leading=True)
            _check_same_n("anchors", anchors, "deltas", deltas)
            _check_max_shape("max_shape", max_shape, _out_shape(anchors, deltas))
        return self._decode(anchors, deltas, max_shape)

    def _decode(self, anchors: Tensor, deltas: Tensor, max_shape: ImageSizes | None = None) -> Tensor:
        # 1. de-normalise
        d = deltas
        if self.stds != (1.0, 1.0, 1.0, 1.0):
            d = d * d.new_tensor(self.stds)  # (..., N, 4)
        if self.means != (0.0, 0.0, 0.0, 0.0):
            d = d + d.new_tensor(self.means)  # (..., N, 4)
        pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5  # (..., N, 2)
        pwh = anchors[..., 2:] - anchors[..., :2]  # (..., N, 2)
        # 2. clamp the centre shift (optional) and the log-size change
        dxy_wh = pwh * d[..., :2]  # (..., N, 2) broadcast over leading dims
        dwh = d[..., 2:]  # (..., N, 2)
        max_ratio = self.max_ratio
        if self.add_ctr_clamp:
            dxy_wh = dxy_wh.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dwh = dwh.clamp(max=max_ratio)
        else:
            dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
        # 3. centre and size, corners c -/+ w/2
        gxy = pxy + dxy_wh  # (..., N, 2)
        gwh = pwh * dwh.exp()  # (..., N, 2)
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)  # (..., N, 4)
        # 4. clip to the image
        if self.clip_border and max_shape is not None:
            boxes = _clip_boxes(boxes, max_shape)  # (..., N, 4)
        return boxes


# ---------------------------------------------------------------------------------------------------------
# Distances (l, t, r, b)


class DistancePointCoder:
    """mmdetection 3.3 ``DistancePointBBoxCoder``: boxes as distances ``(l, t, r, b)`` from a point.

    ``l = px - x1``, ``t = py - y1``, ``r = x2 - px``, ``b = y2 - py`` for boxes ``(x1, y1, x2, y2)``.
    Decoding clips to the image (x to ``[0, W]``, y to ``[0, H]``) when ``clip_border`` and a size is given.
    """

    def __init__(self, clip_border: bool = True) -> None:
        self.clip_border = bool(clip_border)

    def encode(
        self,
        points: Float[Tensor, "*batch N 2"],
        gt: Float[Tensor, "*batch N 4"],
        max_dis: float | None = None,
        eps: float = 0.1,
    ) -> Float[Tensor, "*batch N 4"]:
        """Distances ``(l, t, r, b)`` from each point to the sides of its gt (row i with row i).

        With ``max_dis``, each distance is clamped to ``[0, max_dis - eps]`` (GFL / TOOD style); without it,
        a point outside its gt gets negative distances.
        """
        if checks_enabled():
            check_float("points", points)
            check_shape("points", points, ("N", 2), leading=True)
            check_boxes("gt", gt)
            _check_same_n("points", points, "gt", gt)
            if max_dis is not None:
                check_scalar("max_dis", max_dis, low=0.0)
            check_scalar("eps", eps, low=0.0)
        return self._encode(points, gt, max_dis, eps)

    def _encode(self, points: Tensor, gt: Tensor, max_dis: float | None = None, eps: float = 0.1) -> Tensor:
        left = points[..., 0] - gt[..., 0]  # (..., N) broadcast over leading dims
        top = points[..., 1] - gt[..., 1]  # (..., N)
        right = gt[..., 2] - points[..., 0]  # (..., N)
        bottom = gt[..., 3] - points[..., 1]  # (..., N)
        dist = torch.stack([left, top, right, bottom], dim=-1)  # (..., N, 4)
        if max_dis is not None:
            dist = dist.clamp(min=0, max=max_dis - eps)
        return dist

    def decode(
        self,
        points: Float[Tensor, "*batch N 2"],
        distances: Float[Tensor, "*batch N 4"],
        max_shape: MaxShape = None,
    ) -> Float[Tensor, "*batch N 4"]:
        """Boxes ``(x1, y1, x2, y2) = (px - l, py - t, px + r, py + b)``, clipped like
        :meth:`DeltaXYWHCoder.decode`. Negative distances are allowed (they give inverted boxes)."""
        if checks_enabled():
            check_float("points", points)
            check_shape("points", points, ("N", 2), leading=True)
            check_float("distances", distances)
            check_shape("distances", distances, ("N", 4), leading=True)
            _check_same_n("points", points, "distances", distances)
            _check_max_shape("max_shape", max_shape, _out_shape(points, distances))
        return self._decode(points, distances, max_shape)

    def _decode(self, points: Tensor, distances: Tensor, max_shape: ImageSizes | None = None) -> Tensor:
        x1 = points[..., 0] - distances[..., 0]  # (..., N) broadcast over leading dims
        y1 = points[..., 1] - distances[..., 1]  # (..., N)
        x2 = points[..., 0] + distances[..., 2]  # (..., N)
        y2 = points[..., 1] + distances[..., 3]  # (..., N)
        boxes = torch.stack([x1, y1, x2, y2], dim=-1)  # (..., N, 4)
        if self.clip_border and max_shape is not None:
            boxes = _clip_boxes(boxes, max_shape)  # (..., N, 4)
        return boxes


# ---------------------------------------------------------------------------------------------------------
# Exportable modules


def _check_batch(name: str, t: Tensor, n: int, last: int, batch: int | None) -> None:
    check_float(name, t)
    check_shape(name, t, ("B", n, last))
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name}: expected B = {batch} images, got shape {tuple(t.shape)}")


def _check_sizes_tensor(name: str, image_sizes: Tensor | None, like: Tensor) -> None:
    if image_sizes is None:
        return
    check_image_sizes(name, image_sizes, like.shape[0])  # the graph contract: int64 (B, 2) rows of (H, W)


class DeltaXYWHEncode(nn.Module):
    """``forward(anchors (N, 4), gt_boxes (B, N, 4)) -> deltas (B, N, 4)``: :meth:`DeltaXYWHCoder.encode`."""

    def __init__(self, coder: DeltaXYWHCoder | None = None) -> None:
        super().__init__()
        self.coder = coder if coder is not None else DeltaXYWHCoder()

    def forward(
        self, anchors: Float[Tensor, "N 4"], gt_boxes: Float[Tensor, "B N 4"]
    ) -> Float[Tensor, "B N 4"]:
        if checks_enabled():
            check_boxes("anchors", anchors, ndim=2)
            check_boxes("gt_boxes", gt_boxes, ndim=3)
            _check_same_n("anchors", anchors, "gt_boxes", gt_boxes)
            _check_positive_size("anchors", anchors)
        return self.coder._encode(anchors, gt_boxes)  # (B, N, 4)


class DeltaXYWHDecode(nn.Module):
    """``forward(anchors (N, 4), deltas (B, N, 4), image_sizes (B, 2) int64) -> boxes (B, N, 4)``.

    :meth:`DeltaXYWHCoder.decode` with per-image ``(H, W)`` clipping (cast to the boxes' dtype inside);
    ``image_sizes=None`` skips clipping.
    """

    def __init__(self, coder: DeltaXYWHCoder | None = None) -> None:
        super().__init__()
        self.coder = coder if coder is not None else DeltaXYWHCoder()

    def forward(
        self,
        anchors: Float[Tensor, "N 4"],
        deltas: Float[Tensor, "B N 4"],
        image_sizes: Int[Tensor, "B 2"] | None = None,
    ) -> Float[Tensor, "B N 4"]:
        if checks_enabled():
            check_boxes("anchors", anchors, ndim=2)
            _check_batch("deltas", deltas, anchors.shape[0], 4, None)
            _check_sizes_tensor("image_sizes", image_sizes, deltas)
        return self.coder._decode(anchors, deltas, image_sizes)  # (B, N, 4)


class DistanceDecode(nn.Module):
    """``forward(points (N, 2), distances (B, N, 4), image_sizes (B, 2) int64) -> boxes (B, N, 4)``.

    :meth:`DistancePointCoder.decode` with per-image ``(H, W)`` clipping; ``image_sizes=None`` skips it.
    """

    def __init__(self, coder: DistancePointCoder | None = None) -> None:
        super().__init__()
        self.coder = coder if coder is not None else DistancePointCoder()

    def forward(
        self,
        points: Float[Tensor, "N 2"],
        distances: Float[Tensor, "B N 4"],
        image_sizes: Int[Tensor, "B 2"] | None = None,
    ) -> Float[Tensor, "B N 4"]:
        if checks_enabled():
            check_float("points", points)
            check_shape("points", points, ("N", 2))
            _check_batch("distances", distances, points.shape[0], 4, None)
            _check_sizes_tensor("image_sizes", image_sizes, distances)
        return self.coder._decode(points, distances, image_sizes)  # (B, N, 4)
