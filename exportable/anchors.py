"""Anchors and points: mmdetection 3.3 ``AnchorGenerator`` / ``MlvlPointGenerator`` semantics.

Shape shorthand::

    B     images in a batch
    L     FPN levels
    H, W  feature-map height and width of one level (H_l, W_l)
    A     base anchors per location of a level (ratios x scales)
    N     anchors (or points) of all levels concatenated: sum over levels of H_l * W_l * A_l

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, with ``x1 <= x2`` (width ``x2 - x1``, no
"+1"). Points are ``(x, y)`` pixels. Images and feature maps are ``(H, W)``; strides are ``(stride_w,
stride_h)`` pairs (an int means both), as in mmdetection.

Facts (docs/algorithms.md section 2):

- ratio ``r = h / w``; ``w = base_size / sqrt(r) * scale``, ``h = base_size * sqrt(r) * scale``; no rounding
  (py-faster-rcnn and torchvision round, mmdetection 2.x/3.x do not).
- base anchors are centred at ``center_offset * base_size`` (default 0) and shifted to the top-left
  CORNER of every cell: ``shift = arange(W) * stride``.
- flattened order per level is ``(y * W + x) * A + a`` (location-major, anchor-minor), and with
  ``scale_major=True`` base anchor ``a = ratio_idx * num_scales + scale_idx``.
- points are cell centres ``((x + offset) * stride_w, (y + offset) * stride_h)`` with ``offset = 0.5``.

The generators are plain Python objects that make tensors for given feature-map sizes. The exportable
modules :class:`AnchorGrid` and :class:`PointGrid` compute the same tensors from feature maps' SHAPES only,
so an exported graph keeps H_l and W_l dynamic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_bool,
    check_boxes,
    check_integer,
    check_scalar,
    check_shape,
    checks_enabled,
)
from exportable.boxes import _check_image_sizes, _size_bounds

__all__ = [
    "AnchorGenerator",
    "AnchorGrid",
    "PointGenerator",
    "PointGrid",
    "featmap_sizes_for",
    "inside_flags",
]

Stride = int | float | tuple[int, int] | tuple[float, float]
FeatmapSizes = Sequence[tuple[int, int]]


def _pair(stride: Stride) -> tuple[float, float]:
    """``(stride_w, stride_h)`` from an int or a pair (mmdetection's ``_pair``)."""
    if isinstance(stride, (tuple, list)):
        if len(stride) != 2:
            raise ValueError(f"strides: a stride is a number or a (stride_w, stride_h) pair, got {stride!r}")
        sw, sh = stride
    else:
        sw = sh = stride
    for s in (sw, sh):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ValueError(f"strides: strides must be positive numbers, got {stride!r}")
    return sw, sh


def _check_featmap_sizes(featmap_sizes: FeatmapSizes, num_levels: int) -> list[tuple[int, int]]:
    sizes = [tuple(int(v) for v in hw) for hw in featmap_sizes]
    if len(sizes) != num_levels:
        raise ValueError(f"featmap_sizes: expected {num_levels} (H, W) pairs, one a level, got {len(sizes)}")
    for hw in sizes:
        if len(hw) != 2 or min(hw) < 0:
            raise ValueError(f"featmap_sizes: every level needs an (H, W) pair of sizes >= 0, got {hw}")
    return sizes  # type: ignore[return-value]


def featmap_sizes_for(image_hw: tuple[int, int], strides: Sequence[Stride]) -> list[tuple[int, int]]:
    """Feature-map sizes ``(ceil(H / stride_h), ceil(W / stride_w))`` per level for an image ``(H, W)``.

    With the document's padded RetinaNet batch ``(1216, 800)`` and strides 8..128 this gives
    ``[(152, 100), (76, 50), (38, 25), (19, 13), (10, 7)]``. (A real FPN with stride-2 convolutions gives the
    same sizes when the image is padded to a multiple of 32, as mmdetection does.)
    """
    h, w = image_hw
    out = []
    for stride in strides:
        sw, sh = _pair(stride)
        out.append((math.ceil(h / sh), math.ceil(w / sw)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Shared grid code: used by the generators (ints) and by the modules (symbolic sizes under export)


def _grid_shifts(h: int, w: int, stride: tuple[float, float], offset: float, device, dtype) -> Tensor:
    """``(H * W, 2)`` grid positions ``((x + offset) * stride_w, (y + offset) * stride_h)``, index y*W + x."""
    sx = torch.arange(w, device=device).to(dtype)  # (W,)
    sy = torch.arange(h, device=device).to(dtype)  # (H,)
    if offset != 0:
        sx = sx + offset
        sy = sy + offset
    sx = sx * stride[0]  # (W,)
    sy = sy * stride[1]  # (H,)
    xx = sx.unsqueeze(0).expand(h, w)  # (H, W)
    yy = sy.unsqueeze(1).expand(h, w)  # (H, W)
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)  # (H * W, 2)


def _grid_level_anchors(base: Tensor, h: int, w: int, stride: tuple[float, float]) -> Tensor:
    """One level's anchors ``(H * W * A, 4)``: base anchors ``(A, 4)`` shifted to every cell corner."""
    xy = _grid_shifts(h, w, stride, 0.0, base.device, base.dtype)  # (H * W, 2)
    shifts = torch.cat([xy, xy], dim=-1)  # (H * W, 4) as (x, y, x, y)
    return (base.unsqueeze(0) + shifts.unsqueeze(1)).reshape(-1, 4)  # (H * W * A, 4)


def _level_ids_like(n: Tensor, level: int) -> Tensor:
    """``(n,)`` int64 filled with ``level``, sized from a tensor's first dim (exports with dynamic n)."""
    return torch.full_like(n, level, dtype=torch.int64)  # (n,)


# ---------------------------------------------------------------------------------------------------------
# Anchors


class AnchorGenerator:
    """mmdetection 3.3 ``AnchorGenerator``: base anchors per level, placed on every feature-map cell.

    Args:
        strides: one stride per level, an int or a ``(stride_w, stride_h)`` pair.
        ratios: aspect ratios ``h / w``.
        scales: anchor scales (multiples of ``base_size``); exactly one of ``scales`` or
            (``octave_base_scale`` and ``scales_per_octave``).
        base_sizes: base size per level; default ``min(stride_w, stride_h)`` of the level.
        octave_base_scale, scales_per_octave: scales ``octave_base_scale * 2 ** (i / scales_per_octave)``,
            ``i = 0 .. scales_per_octave - 1`` (RetinaNet: 4 and 3).
        center_offset: base anchors centred at ``center_offset * base_size`` (0: on the cell corner).
        scale_major: ``True``: base anchor ``a = ratio_idx * num_scales + scale_idx`` (ratios outer).
        centers: optional explicit ``(cx, cy)`` centre per level (overrides ``center_offset``).

    Anchors are ``(x1, y1, x2, y2)`` absolute pixels, float32, corner-aligned: the first anchor of a level
    is centred at ``(0, 0)`` with the default ``center_offset``.
    """

    def __init__(
        self,
        strides: Sequence[Stride],
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] | None = None,
        base_sizes: Sequence[float] | None = None,
        octave_base_scale: float | None = None,
        scales_per_octave: int | None = None,
        center_offset: float = 0.0,
        scale_major: bool = True,
        centers: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        self.strides = [_pair(s) for s in strides]
        if not self.strides:
            raise ValueError("strides: need at least one level")
        if base_sizes is None:
            base_sizes = [min(s) for s in self.strides]
        if len(base_sizes) != len(self.strides):
            raise ValueError(
                f"base_sizes: expected one base size per level ({len(self.strides)}), got {len(base_sizes)}"
            )
        self.base_sizes = list(base_sizes)
        if centers is not None and center_offset != 0:
            raise ValueError("centers: give either centers or a non-zero center_offset, not both")
        if centers is not None and len(centers) != len(self.strides):
            raise ValueError(
                f"centers: expected one (cx, cy) per level ({self.num_levels}), got {len(centers)}"
            )
        self.centers = None if centers is None else [tuple(c) for c in centers]
        if not 0.0 <= center_offset <= 1.0:
            raise ValueError(f"center_offset: must be in [0, 1], got {center_offset}")
        self.center_offset = float(center_offset)

        octave = octave_base_scale is not None or scales_per_octave is not None
        if scales is not None and octave:
            raise ValueError("scales: give either scales or (octave_base_scale, scales_per_octave), not both")
        if scales is None:
            if octave_base_scale is None or scales_per_octave is None:
                raise ValueError(
                    "scales: give either scales or both octave_base_scale and scales_per_octave"
                )
            if int(scales_per_octave) < 1:
                raise ValueError(f"scales_per_octave: must be >= 1, got {scales_per_octave}")
            # float64 (Python floats, like mmdetection's numpy), then stored as float32.
            n = int(scales_per_octave)
            scales = [2 ** (i / n) * octave_base_scale for i in range(n)]
        if len(scales) == 0 or len(ratios) == 0:
            raise ValueError("scales, ratios: need at least one scale and one ratio")
        if min(ratios) <= 0 or min(scales) <= 0:
            raise ValueError("scales, ratios: must be positive")
        self.octave_base_scale = octave_base_scale
        self.scales_per_octave = scales_per_octave
        self.scales = torch.tensor(list(scales), dtype=torch.float32)  # (S,)
        self.ratios = torch.tensor(list(ratios), dtype=torch.float32)  # (R,)
        self.scale_major = bool(scale_major)
        self.base_anchors = [self._base_level(i) for i in range(len(self.strides))]  # L x (A, 4)

    # -- factories for the common detectors (docs/algorithms.md section 2.3) -------------------------

    @classmethod
    def retinanet(cls, strides: Sequence[Stride] = (8, 16, 32, 64, 128), **kwargs) -> AnchorGenerator:
        """RetinaNet (mmdetection): octave base scale 4, 3 scales per octave, ratios 0.5/1/2 -> 9 per cell."""
        kwargs = {"octave_base_scale": 4, "scales_per_octave": 3, "ratios": (0.5, 1.0, 2.0), **kwargs}
        return cls(strides, **kwargs)

    @classmethod
    def faster_rcnn(cls, strides: Sequence[Stride] = (16,), **kwargs) -> AnchorGenerator:
        """Faster R-CNN single level (py-faster-rcnn's settings): base 16, scales 8/16/32, ratios 0.5/1/2.

        Built with mmdetection semantics (no rounding, centred on the cell corner), not py-faster-rcnn's
        rounded, +1, ``(7.5, 7.5)``-centred anchors.
        """
        kwargs = {"base_sizes": (16,), "scales": (8, 16, 32), "ratios": (0.5, 1.0, 2.0), **kwargs}
        return cls(strides, **kwargs)

    @classmethod
    def rpn_fpn(cls, strides: Sequence[Stride] = (4, 8, 16, 32, 64), **kwargs) -> AnchorGenerator:
        """Faster R-CNN FPN RPN (mmdetection): scale 8, ratios 0.5/1/2 -> 3 per cell."""
        kwargs = {"scales": (8,), "ratios": (0.5, 1.0, 2.0), **kwargs}
        return cls(strides, **kwargs)

    @classmethod
    def atss(cls, strides: Sequence[Stride] = (8, 16, 32, 64, 128), **kwargs) -> AnchorGenerator:
        """ATSS (official and mmdetection): one square anchor of side ``8 * stride`` per cell."""
        kwargs = {"octave_base_scale": 8, "scales_per_octave": 1, "ratios": (1.0,), **kwargs}
        return cls(strides, **kwargs)

    # -- base anchors ---------------------------------------------------------------------------------------

    def _base_level(self, level: int) -> Tensor:
        base = self.base_sizes[level]
        if self.centers is None:
            cx = cy = self.center_offset * base
        else:
            cx, cy = self.centers[level]
        h_ratios = torch.sqrt(self.ratios)  # (R,)
        w_ratios = 1 / h_ratios  # (R,)
        # Same operation order as mmdetection, so float32 values are bit-identical.
        if self.scale_major:
            ws = (base * w_ratios[:, None] * self.scales[None, :]).reshape(-1)  # (R * S,)
            hs = (base * h_ratios[:, None] * self.scales[None, :]).reshape(-1)  # (R * S,)
        else:
            ws = (base * self.scales[:, None] * w_ratios[None, :]).reshape(-1)  # (S * R,)
            hs = (base * self.scales[:, None] * h_ratios[None, :]).reshape(-1)  # (S * R,)
        return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)  # (A, 4)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_anchors(self) -> list[int]:
        """Anchors per location, per level (A_l)."""
        return [b.shape[0] for b in self.base_anchors]

    # -- grids --------------------------------------------------------------------------------------------

    def num_anchors(self, featmap_sizes: FeatmapSizes) -> list[int]:
        """``H_l * W_l * A_l`` per level."""
        sizes = _check_featmap_sizes(featmap_sizes, self.num_levels)
        return [h * w * a for (h, w), a in zip(sizes, self.num_base_anchors)]

    def grid_anchors(
        self,
        featmap_sizes: FeatmapSizes,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Float[Tensor, "HWA 4"]]:
        """Anchors ``(H_l * W_l * A_l, 4)`` per level, as ``(x1, y1, x2, y2)``; flattened ``(y*W + x)*A + a``.

        ``device=None`` is torch's default device; pass the device of your feature maps.
        """
        sizes = _check_featmap_sizes(featmap_sizes, self.num_levels)
        out = []
        for (h, w), base, stride in zip(sizes, self.base_anchors, self.strides):
            base = base.to(device=device, dtype=dtype)  # (A, 4)
            out.append(_grid_level_anchors(base, h, w, stride))  # (H * W * A, 4)
        return out

    def level_ids(
        self, featmap_sizes: FeatmapSizes, *, device: torch.device | str | None = None
    ) -> Int[Tensor, " N"]:
        """Level index ``(N,)`` int64 of every anchor of all levels concatenated."""
        counts = self.num_anchors(featmap_sizes)
        levels = torch.arange(len(counts), device=device)  # (L,)
        return levels.repeat_interleave(torch.tensor(counts, device=device))  # (N,)

    def valid_flags(
        self,
        featmap_sizes: FeatmapSizes,
        pad_hw: tuple[int, int] | Int[Tensor, "B 2"],
        *,
        device: torch.device | str | None = None,
    ) -> Bool[Tensor, " N"] | Bool[Tensor, "B N"]:
        """Which anchors sit on cells covered by the (unpadded) image, all levels concatenated.

        ``pad_hw`` is one ``(H, W)`` pair -> ``(N,)`` bool, or a ``(B, 2)`` int64 tensor of per-image
        ``(H, W)`` sizes -> ``(B, N)`` bool. Per level ``valid_h = min(ceil(H / stride_h), H_l)`` (same for
        w); a cell is valid when ``y < valid_h and x < valid_w``, and all its A anchors share the flag.
        This is about padding only; see :func:`inside_flags` for anchors that straddle the border.
        """
        sizes = _check_featmap_sizes(featmap_sizes, self.num_levels)
        if isinstance(pad_hw, Tensor):
            if checks_enabled():
                check_integer("pad_hw", pad_hw)
                check_shape("pad_hw", pad_hw, ("B", 2))
            if device is None:
                device = pad_hw.device
            pad = pad_hw.to(device=device, dtype=torch.int64)  # (B, 2)
        else:
            if len(pad_hw) != 2:
                raise ValueError(f"pad_hw: expected an (H, W) pair or a (B, 2) tensor, got {pad_hw!r}")
        out = []
        for (h, w), (sw, sh), a in zip(sizes, self.strides, self.num_base_anchors):
            # y < min(ceil(H / s), H_l) is y < ceil(H / s) for y in [0, H_l).
            if isinstance(pad_hw, Tensor):
                valid_h = _ceil_div(pad[:, 0:1], sh)  # (B, 1)
                valid_w = _ceil_div(pad[:, 1:2], sw)  # (B, 1)
            else:
                valid_h = torch.tensor([[math.ceil(pad_hw[0] / sh)]], device=device)  # (1, 1)
                valid_w = torch.tensor([[math.ceil(pad_hw[1] / sw)]], device=device)  # (1, 1)
            vy = torch.arange(h, device=device).unsqueeze(0) < valid_h  # (B, H)
            vx = torch.arange(w, device=device).unsqueeze(0) < valid_w  # (B, W)
            cell = vy.unsqueeze(2) & vx.unsqueeze(1)  # (B, H, W)
            flags = cell.unsqueeze(-1).expand(-1, h, w, a)  # (B, H, W, A)
            out.append(flags.reshape(flags.shape[0], -1))  # (B, H * W * A)
        flags = torch.cat(out, dim=1)  # (B, N)
        return flags if isinstance(pad_hw, Tensor) else flags[0]  # (B, N) or (N,)


def _ceil_div(size: Tensor, stride: float) -> Tensor:
    """``ceil(size / stride)`` of int64 sizes: exact integer arithmetic for int strides."""
    if isinstance(stride, int):
        return (size + (stride - 1)) // stride  # int // exports exactly (rounding_mode="floor" goes through float32)
    return torch.ceil(size.to(torch.float64) / stride).to(torch.int64)


def inside_flags(
    anchors: Float[Tensor, "N 4"],
    valid: Bool[Tensor, "B N"] | Bool[Tensor, " N"],
    image_sizes: tuple[int, int] | Int[Tensor, "B 2"],
    allowed_border: float = 0,
) -> Bool[Tensor, "B N"] | Bool[Tensor, " N"]:
    """mmdetection's ``anchor_inside_flags``: valid anchors that lie within the image (plus a border).

    ``allowed_border >= 0``: ``valid & x1 >= -b & y1 >= -b & x2 < W + b & y2 < H + b`` (strict on the far
    side: an anchor with ``x2 == W`` is outside); ``allowed_border < 0`` (mmdetection's ``-1``): ``valid``.
    Anchors are ``(x1, y1, x2, y2)``; ``image_sizes`` is an ``(H, W)`` pair or a ``(B, 2)`` int64 tensor.
    ``(N,)`` or ``(B, N)`` flags broadcast with ``(B, 2)`` sizes to ``(B, N)``.
    """
    if checks_enabled():
        _check_inside_args(anchors, valid, image_sizes, allowed_border)
    return _inside_flags(anchors, valid, image_sizes, allowed_border)


def _check_inside_args(anchors: Tensor, valid: Tensor, image_sizes: object, allowed_border: float) -> None:
    check_boxes("anchors", anchors)
    check_shape("anchors", anchors, ("N", 4), leading=True)
    check_bool("valid", valid)
    n = anchors.shape[-2]
    if valid.dim() not in (1, 2) or valid.shape[-1] != n:
        raise ValueError(f"valid: expected (N,) or (B, N) flags with N = {n}, got shape {tuple(valid.shape)}")
    check_scalar("allowed_border", allowed_border)
    batch = [("valid", valid.shape[0])] if valid.dim() == 2 else []
    if anchors.dim() == 3:
        batch.append(("anchors", anchors.shape[0]))
    elif anchors.dim() > 3:
        raise ValueError(f"anchors: expected (N, 4) or (B, N, 4), got shape {tuple(anchors.shape)}")
    if isinstance(image_sizes, Tensor) and image_sizes.dim() == 2:
        batch.append(("image_sizes", image_sizes.shape[0]))
    if len({b for _, b in batch}) > 1:
        raise ValueError("image_sizes: batch sizes disagree: " + ", ".join(f"{k} has {b}" for k, b in batch))
    # _check_image_sizes wants boxes (B, ..., 4) for per-image sizes: give it a view with that B.
    probe = anchors.new_zeros(batch[0][1] if batch else 1, n, 4) if anchors.dim() == 2 else anchors
    _check_image_sizes("image_sizes", image_sizes, probe)


def _inside_flags(anchors: Tensor, valid: Tensor, image_sizes, allowed_border: float = 0) -> Tensor:
    if allowed_border < 0:
        if isinstance(image_sizes, Tensor) and image_sizes.dim() == 2 and valid.dim() == 1:
            return valid.unsqueeze(0).expand(image_sizes.shape[0], -1)  # (B, N)
        return valid
    b = float(allowed_border)
    if isinstance(image_sizes, Tensor) and image_sizes.dim() == 2 and anchors.dim() == 2:
        anchors = anchors.unsqueeze(0)  # (1, N, 4) so the per-image (B, 1) bounds broadcast to (B, N)
    h, w = _size_bounds(image_sizes, anchors)  # numbers, () or (B, 1)
    inside = (
        (anchors[..., 0] >= -b)
        & (anchors[..., 1] >= -b)
        & (anchors[..., 2] < w + b)
        & (anchors[..., 3] < h + b)
    )  # (B, N) or (N,)
    return valid & inside  # (B, N) or (N,)


class AnchorGrid(nn.Module):
    """Exportable anchors: ``forward(*feats)`` -> ``(anchors (N, 4), level_ids (N,))``.

    Takes one feature map ``(B, C, H_l, W_l)`` per level and uses only their shapes (``arange`` of the
    sizes), so an exported graph keeps every ``H_l, W_l`` dynamic. Same values as
    ``torch.cat(generator.grid_anchors(sizes))``. Anchors are ``(x1, y1, x2, y2)``, float32 by default, on
    the feature maps' device.
    """

    def __init__(self, generator: AnchorGenerator, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.strides = list(generator.strides)
        self.num_levels = generator.num_levels
        for i, base in enumerate(generator.base_anchors):
            self.register_buffer(f"base_anchors_{i}", base.to(dtype), persistent=False)  # (A_l, 4)

    def forward(self, *feats: Float[Tensor, "B C H W"]) -> tuple[Float[Tensor, "N 4"], Int[Tensor, " N"]]:
        if checks_enabled():
            _check_feats(feats, self.num_levels)
        anchors, level_ids = [], []
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            base = getattr(self, f"base_anchors_{level}").to(feat.device)  # (A, 4)
            h, w = feat.shape[-2], feat.shape[-1]
            level_anchors = _grid_level_anchors(base, h, w, stride)  # (H * W * A, 4)
            anchors.append(level_anchors)
            level_ids.append(_level_ids_like(level_anchors[:, 0], level))  # (H * W * A,)
        return torch.cat(anchors, dim=0), torch.cat(level_ids, dim=0)  # (N, 4), (N,)


def _check_feats(feats: Sequence[Tensor], num_levels: int) -> None:
    if len(feats) != num_levels:
        raise ValueError(f"feats: expected {num_levels} feature maps (one per level), got {len(feats)}")
    for i, f in enumerate(feats):
        check_shape(f"feats[{i}]", f, ("B", "C", "H", "W"))


# ---------------------------------------------------------------------------------------------------------
# Points


class PointGenerator:
    """mmdetection 3.3 ``MlvlPointGenerator``: one point per feature-map cell, at its centre by default.

    Args:
        strides: one stride per level, an int or a ``(stride_w, stride_h)`` pair.
        offset: 0.5 puts points on cell centres (the package's convention); YOLOX's 0 plus ``stride / 2``
            gives the same points.

    Points are ``((x + offset) * stride_w, (y + offset) * stride_h)`` in pixels, order ``y * W + x`` per
    level, levels concatenated. The per-point stride is ``stride_w`` (what SimOTA's centre radius uses).
    """

    def __init__(self, strides: Sequence[Stride], offset: float = 0.5) -> None:
        self.strides = [_pair(s) for s in strides]
        if not self.strides:
            raise ValueError("strides: need at least one level")
        self.offset = float(offset)

    @classmethod
    def yolox(cls, strides: Sequence[Stride] = (8, 16, 32), **kwargs) -> PointGenerator:
        """YOLOX / ultralytics points: strides 8, 16, 32 (640 x 640 -> 8,400 points)."""
        return cls(strides, **kwargs)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def num_points(self, featmap_sizes: FeatmapSizes) -> list[int]:
        """``H_l * W_l`` per level."""
        return [h * w for h, w in _check_featmap_sizes(featmap_sizes, self.num_levels)]

    def grid_points(
        self,
        featmap_sizes: FeatmapSizes,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Float[Tensor, "N 2"], Float[Tensor, " N"], Int[Tensor, " N"]]:
        """``(points (N, 2), strides (N,) float, level_ids (N,) int64)`` over all levels concatenated."""
        sizes = _check_featmap_sizes(featmap_sizes, self.num_levels)
        points, strides, level_ids = [], [], []
        for level, ((h, w), stride) in enumerate(zip(sizes, self.strides)):
            p = _grid_shifts(h, w, stride, self.offset, device, dtype)  # (H * W, 2)
            points.append(p)
            strides.append(torch.full((h * w,), float(stride[0]), device=device, dtype=dtype))  # (H * W,)
            level_ids.append(torch.full((h * w,), level, device=device, dtype=torch.int64))  # (H * W,)
        return torch.cat(points), torch.cat(strides), torch.cat(level_ids)  # (N, 2), (N,), (N,)


class PointGrid(nn.Module):
    """Exportable points: ``forward(*feats)`` -> ``(points (N, 2), strides (N,), level_ids (N,))``.

    One feature map ``(B, C, H_l, W_l)`` per level; only the shapes are used, so an exported graph keeps
    every ``H_l, W_l`` dynamic. Same values as ``generator.grid_points(sizes)``.
    """

    def __init__(self, generator: PointGenerator, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.strides = list(generator.strides)
        self.offset = generator.offset
        self.num_levels = generator.num_levels
        self.dtype = dtype

    def forward(
        self, *feats: Float[Tensor, "B C H W"]
    ) -> tuple[Float[Tensor, "N 2"], Float[Tensor, " N"], Int[Tensor, " N"]]:
        if checks_enabled():
            _check_feats(feats, self.num_levels)
        points, strides, level_ids = [], [], []
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            h, w = feat.shape[-2], feat.shape[-1]
            p = _grid_shifts(h, w, stride, self.offset, feat.device, self.dtype)  # (H * W, 2)
            points.append(p)
            strides.append(torch.full_like(p[:, 0], float(stride[0])))  # (H * W,)
            level_ids.append(_level_ids_like(p[:, 0], level))  # (H * W,)
        return torch.cat(points), torch.cat(strides), torch.cat(level_ids)  # (N, 2), (N,), (N,)
