"""RoIAlign: a fixed-size feature per region, by bilinear sampling; exported as ONNX ``RoiAlign``.

Shape shorthand::

    B   images in a batch
    C   feature channels (256 for an FPN, 512 for VGG16's conv5_3)
    H, W   feature-map height and width (stride 16 on a 600 x 1000 image: 38 x 63)
    K   RoIs per image (padded: every image has K slots; the caller knows which are real)
    P, Q   output height and width (7 x 7)

RoIs are ``(x1, y1, x2, y2)`` in absolute IMAGE pixels, float32, ``x1 <= x2``, one ``(B, K, 4)`` tensor
(the padded layout of :class:`exportable.rpn.ProposalCreator` and :class:`exportable.roi_head.
ProposalTargetCreator`); ``spatial_scale`` (1/16) maps them onto the feature map. The output is
``(B, K, C, P, Q)``; in eager it is a view in channels-last memory order (call ``.contiguous()`` if you
need the standard strides).

What is computed is exactly ONNX ``RoiAlign`` (opset 16), ``mode="avg"``:

1. ``start = x1 * spatial_scale - offset``, ``end = x2 * spatial_scale - offset``; ``offset = 0.5`` when
   ``aligned`` (ONNX ``coordinate_transformation_mode="half_pixel"``, torchvision ``aligned=True``,
   detectron2's ROIAlignV2, mmcv's default), 0 otherwise (``"output_half_pixel"``, the original Mask R-CNN
   and torchvision's default ``aligned=False``); without ``aligned`` a RoI is at least 1 x 1 cell;
2. the RoI is cut into P x Q bins of ``(end - start) / Q`` by ``/ P`` cells (no rounding anywhere);
3. each bin holds a ``sampling_ratio x sampling_ratio`` grid of sample points at
   ``start + q * bin + (i + 0.5) * bin / sampling_ratio`` (and the same for y);
4. each sample is read by bilinear interpolation from its 4 neighbouring cells; a sample with
   ``y < -1`` or ``y > H`` (or ``x < -1``, ``x > W``) reads 0; one within a cell of the border reads the
   border cell (coordinates clamped to ``[0, H - 1]``);
5. a bin's value is the MEAN of its ``sampling_ratio ** 2`` samples (out-of-range samples count as 0
   in the mean).

``sampling_ratio`` must be a fixed positive int (default 2, torchvision's Faster R-CNN value): the
adaptive ``sampling_ratio=0`` of mmdetection and detectron2 (``ceil(roi_size / output_size)`` samples per
bin, different for every RoI) gives data-dependent work per RoI and is not offered. Max mode is left
out: onnxruntime's ``mode="max"`` takes the max of the 4 weighted corner terms instead of the max of the
interpolated values, so it matches no reference implementation.

Eager computes the same numbers without a loop: bilinear interpolation is separable, so each sample is
two taps along y times two taps along x, and every bin's value is a weighted sum of the ``4 * s * s``
cells those taps address. That is one ``embedding_bag`` (weighted sum of gathered rows) over the
channels-last feature table ``(B * H * W, C)``: the cells' indices and bilinear weights, shared by all
channels, are computed once per RoI, as onnxruntime's kernel does. Eager and onnxruntime agree to
float32 rounding (the sums run in a different order): ``atol = rtol = 1e-5`` for features of order 1.
The export emits one ``RoiAlign`` node through ``torch.onnx.ops.symbolic`` (no custom translation needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from exportable._checks import check_boxes, check_float, check_scalar, check_shape, checks_enabled

__all__ = ["RoIAlign", "roi_align", "sample_taps"]

OPSET_VERSION = 16  # RoiAlign-16 added coordinate_transformation_mode ("half_pixel" = aligned)


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    vals = (value, value) if isinstance(value, int) else tuple(value)
    if len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ValueError(f"{name}: expected an int >= 1 or a pair (height, width) of them, got {value!r}")
    return int(vals[0]), int(vals[1])


def _check_sampling_ratio(sampling_ratio: int) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int) or sampling_ratio < 1:
        raise ValueError(
            f"sampling_ratio: expected a fixed int >= 1 (2 is torchvision's Faster R-CNN value), got "
            f"{sampling_ratio!r}; the adaptive 0 (ceil(roi_size / output_size) samples per bin, mmdetection's and "
            "detectron2's default) depends on each RoI's size and cannot be reproduced by a static graph"
        )
    return sampling_ratio


# ---------------------------------------------------------------------------------------------------------
# The sampling grid along one axis


def sample_taps(
    start: Float[Tensor, " R"],
    size: Float[Tensor, " R"],
    bins: int,
    sampling_ratio: int,
    length: int,
) -> tuple[Tensor, Tensor]:
    """Bilinear taps of every sample point along ONE axis: ``(index (R, bins, 2s), weight (R, bins, 2s))``.

    ``start`` and ``size`` are the RoIs' start and extent in feature cells along the axis (after
    ``spatial_scale`` and the half-pixel offset), ``length`` the feature map's size along it (H or W).
    Sample ``i`` of bin ``p`` sits at ``c = start + p * bin + (i + 0.5) * bin / s`` (ONNX's order of
    float operations), reads cells ``low = floor(c)`` and ``low + 1`` with weights ``1 - (c - low)`` and
    ``c - low``; ``c`` is clamped to ``[0, length - 1]`` (both taps on the border cell there), and a
    sample with ``c < -1`` or ``c > length`` gets weight 0. The weights already carry the ``1 / s`` of
    the mean. Columns ``2i`` and ``2i + 1`` are sample ``i``'s low and high taps.
    """
    s = sampling_ratio
    bin_size = (size / bins).view(-1, 1, 1)  # (R, 1, 1)
    p = torch.arange(bins, device=start.device, dtype=start.dtype).view(1, bins, 1)  # (1, bins, 1)
    i = (torch.arange(s, device=start.device, dtype=start.dtype) + 0.5).view(1, 1, s)  # (1, 1, s)
    coord = (start.view(-1, 1, 1) + p * bin_size) + i * bin_size / s  # (R, bins, s) ONNX's operation order
    inside = (coord >= -1.0) & (coord <= length)  # (R, bins, s) out-of-range samples read 0
    coord = coord.clamp(min=0.0)  # (R, bins, s)
    low = coord.floor()  # (R, bins, s)
    at_end = low >= length - 1  # (R, bins, s) within a cell of the far border: read the border cell
    low = torch.where(at_end, torch.full_like(low, length - 1), low)  # (R, bins, s)
    coord = torch.where(at_end, low, coord)  # (R, bins, s)
    frac = coord - low  # (R, bins, s) weight of the high tap
    scale = inside.to(coord.dtype) / s  # (R, bins, s) the mean over s samples, 0 outside
    low_i = low.to(torch.int64)  # (R, bins, s)
    high_i = torch.where(at_end, low_i, low_i + 1)  # (R, bins, s)
    index = torch.stack([low_i, high_i], dim=-1).flatten(2)  # (R, bins, 2s)
    weight = torch.stack([(1.0 - frac) * scale, frac * scale], dim=-1).flatten(2)  # (R, bins, 2s)
    return index, weight


def _roi_align_eager(features: Tensor, rois: Tensor, out_hw: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int, aligned: bool) -> Tensor:
    b, c, h, w = features.shape
    k = rois.shape[1]
    ph, pw = out_hw
    s = sampling_ratio
    # 1. RoIs on the feature map (the half-pixel offset when aligned), at least 1 x 1 cell otherwise
    r = rois.to(features.dtype) * spatial_scale - (0.5 if aligned else 0.0)  # (B, K, 4)
    r = r.reshape(b * k, 4)  # (BK, 4)
    roi_w = r[:, 2] - r[:, 0]  # (BK,)
    roi_h = r[:, 3] - r[:, 1]  # (BK,)
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    # 2.-4. the bins' sample points and their bilinear taps, one axis at a time
    y_index, y_weight = sample_taps(r[:, 1], roi_h, ph, s, h)  # (BK, P, 2s) each
    x_index, x_weight = sample_taps(r[:, 0], roi_w, pw, s, w)  # (BK, Q, 2s) each
    # every (y tap, x tap) pair of a bin: cell index in the (B * H * W) table and its weight
    image = torch.arange(b, device=rois.device).repeat_interleave(k).view(b * k, 1, 1, 1, 1) * (h * w)  # (BK,1,1,1,1)
    cells = image + y_index.view(b * k, ph, 1, 2 * s, 1) * w + x_index.view(b * k, 1, pw, 1, 2 * s)  # (BK,P,Q,2s,2s)
    weights = y_weight.view(b * k, ph, 1, 2 * s, 1) * x_weight.view(b * k, 1, pw, 1, 2 * s)  # (BK, P, Q, 2s, 2s)
    # 5. each bin = the weighted sum of its cells' channel vectors: one embedding_bag over the table
    table = features.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (B*H*W, C) channels last
    taps = 4 * s * s
    pooled = F.embedding_bag(cells.reshape(-1, taps), table, mode="sum",
                             per_sample_weights=weights.reshape(-1, taps))  # (BK*P*Q, C)
    return pooled.view(b, k, ph, pw, c).permute(0, 1, 4, 2, 3)  # (B, K, C, P, Q) channels-last view


def _roi_align_onnx(features: Tensor, rois: Tensor, out_hw: tuple[int, int], spatial_scale: float,
                    sampling_ratio: int, aligned: bool) -> Tensor:
    b, c = features.shape[0], features.shape[1]
    k = rois.shape[1]
    flat = rois.reshape(-1, 4).to(features.dtype)  # (B*K, 4)
    batch_indices = torch.arange(b, device=rois.device).view(b, 1).expand(b, k).reshape(-1)  # (B*K,) int64
    pooled = torch.onnx.ops.symbolic(
        "RoiAlign",
        (features, flat, batch_indices),
        attrs={
            "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
            "mode": "avg",
            "output_height": out_hw[0],
            "output_width": out_hw[1],
            "sampling_ratio": sampling_ratio,
            "spatial_scale": float(spatial_scale),
        },
        dtype=features.dtype,
        shape=(b * k, c, out_hw[0], out_hw[1]),
        version=OPSET_VERSION,
    )  # (B*K, C, P, Q)
    return pooled.reshape(b, k, c, out_hw[0], out_hw[1])  # (B, K, C, P, Q)


def _check_inputs(features: Tensor, rois: Tensor) -> None:
    check_float("features", features)
    check_shape("features", features, ("B", "C", "H", "W"))
    if features.shape[2] == 0 or features.shape[3] == 0:
        raise ValueError(f"features: the feature map must not be empty, got shape {tuple(features.shape)}")
    check_boxes("rois", rois, ndim=3)
    if rois.shape[0] != features.shape[0]:
        raise ValueError(f"rois: expected B = {features.shape[0]} images as in features, got shape {tuple(rois.shape)}")


def roi_align(
    features: Float[Tensor, "B C H W"],
    rois: Float[Tensor, "B K 4"],
    output_size: int | Sequence[int] = 7,
    spatial_scale: float = 1 / 16,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Float[Tensor, "B K C P Q"]:
    """RoIAlign (average) of padded RoIs ``(B, K, 4)`` = ``(x1, y1, x2, y2)`` image pixels: ``(B, K, C, P, Q)``.

    See the module docstring for the exact semantics (ONNX ``RoiAlign``-16, ``mode="avg"``).

    Args:
        features: ``(B, C, H, W)`` feature maps.
        rois: ``(B, K, 4)`` RoIs per image in image pixels; padded slots give whatever their box gives.
        output_size: ``P`` (and ``Q``): an int or a ``(P, Q)`` pair (7).
        spatial_scale: image pixels -> feature cells (1/16 for stride 16).
        sampling_ratio: sample points per bin along each axis, a fixed int >= 1 (2).
        aligned: the half-pixel offset (True: ``half_pixel``; False: ``output_half_pixel``).
    """
    out_hw = _pair("output_size", output_size)
    scale = check_scalar("spatial_scale", spatial_scale, low=0.0)
    ratio = _check_sampling_ratio(sampling_ratio)
    if checks_enabled():
        _check_inputs(features, rois)
    return _roi_align(features, rois, out_hw, scale, ratio, bool(aligned))


def _roi_align(features: Tensor, rois: Tensor, out_hw: tuple[int, int], spatial_scale: float,
               sampling_ratio: int, aligned: bool) -> Tensor:
    if torch.onnx.is_in_onnx_export():  # not under torch.compile / torch.export: they run the eager body
        return _roi_align_onnx(features, rois, out_hw, spatial_scale, sampling_ratio, aligned)
    return _roi_align_eager(features, rois, out_hw, spatial_scale, sampling_ratio, aligned)


class RoIAlign(nn.Module):
    """Exportable :func:`roi_align`: ``forward(features (B, C, H, W), rois (B, K, 4)) -> (B, K, C, P, Q)``.

    torchvision's ``ops.RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)`` (which takes
    ``(K, 5)`` rows ``[batch, x1, y1, x2, y2]``) and mmcv's ``RoIAlign`` (``pool_mode="avg"``) with the
    package's padded ``(B, K, 4)`` RoIs. Faster R-CNN's RoI head feeds it the 128 (or 512) sampled RoIs of
    :class:`exportable.roi_head.ProposalTargetCreator` while training and the proposals at test time.

    Args:
        output_size: 7 (or ``(P, Q)``).
        spatial_scale: 1/16 (stride 16).
        sampling_ratio: 2 (a fixed int >= 1; see the module docstring for why not 0).
        aligned: True (half-pixel offset).
    """

    def __init__(self, output_size: int | Sequence[int] = 7, spatial_scale: float = 1 / 16, sampling_ratio: int = 2,
                 aligned: bool = True) -> None:
        super().__init__()
        self.output_size = _pair("output_size", output_size)
        self.spatial_scale = check_scalar("spatial_scale", spatial_scale, low=0.0)
        self.sampling_ratio = _check_sampling_ratio(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, features: Float[Tensor, "B C H W"], rois: Float[Tensor, "B K 4"]) -> Float[Tensor, "B K C P Q"]:
        if checks_enabled():
            _check_inputs(features, rois)
        return _roi_align(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


