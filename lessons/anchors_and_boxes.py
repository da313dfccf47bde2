"""Anchors and boxes, one box at a time: the readable reference for ``notebooks/01_anchors_and_boxes.ipynb``.

Everything here works on single boxes, single anchors and single feature-map levels, with plain Python
loops and the ``math`` module. It is the oracle for the batched code in ``exportable.boxes``,
``exportable.anchors`` and ``exportable.coders``: the tests in
``tests/test_anchors_and_boxes_reference.py`` check that both give the same numbers.

Conventions (the package's, see docs/conventions.md):

- A box is ``(x1, y1, x2, y2)`` in absolute pixels with ``x1 <= x2``, ``y1 <= y2``; its width is
  ``x2 - x1`` (no "+1"). Any sequence of four numbers works (tuple, list, a ``(4,)`` tensor); results
  are tuples of Python floats.
- Images and feature maps are ``(H, W)``; a stride is a number or a ``(stride_w, stride_h)`` pair.
- Aspect ratios are ``r = h / w`` (mmdetection, torchvision, py-faster-rcnn; d2l uses ``w / h``).
- Numerics follow mmdetection 3.3 (docs/algorithms.md sections 1 to 3): no "+1", the union and the
  enclosing area clamped from below at ``eps = 1e-6``, no rounding of anchor sizes.

The reference computes in float64 (Python floats); ``exportable`` computes in float32 like mmdetection. The
two agree to float32 rounding.

Step and rule numbers in the comments are those of the notebook's text: IoU steps 1 to 6, anchor rules 1 to 8,
encode steps 1 to 3, decode steps 1 to 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torch import Tensor

from lessons.draw import LessonFigure

__all__ = [
    "Box",
    "anchor_counts",
    "area",
    "base_anchors",
    "decode",
    "encode",
    "featmap_size",
    "flags_figure",
    "giou",
    "grid_anchors",
    "inside_flag",
    "iof",
    "iou",
    "level_valid_flags",
    "octave_scales",
    "overlap_matrix",
    "py_faster_rcnn_base_anchors",
    "retinanet_anchor_counts",
    "valid_flag",
]

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in absolute pixels."""

Stride = float | tuple[float, float]

RETINANET_STRIDES = (8, 16, 32, 64, 128)


def _box(b: Sequence[float] | Tensor) -> Box:
    x1, y1, x2, y2 = (float(v) for v in b)
    return x1, y1, x2, y2


def _stride_wh(stride: Stride) -> tuple[float, float]:
    """``(stride_w, stride_h)`` from a number or a pair."""
    if isinstance(stride, (tuple, list)):
        return float(stride[0]), float(stride[1])
    return float(stride), float(stride)


# ---------------------------------------------------------------------------------------------------------
# 1. IoU and friends (docs/algorithms.md section 1)


def area(box: Sequence[float]) -> float:
    """``(x2 - x1) * (y2 - y1)``; not clamped, so an inverted box has a negative area (mmdetection)."""
    x1, y1, x2, y2 = _box(box)
    return (x2 - x1) * (y2 - y1)


def _intersection(a: Box, b: Box) -> float:
    # Step 2: the overlap's sides, each clamped at 0 (boxes that do not touch overlap by 0, not by a
    # negative amount).
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    return w * h


def iou(a: Sequence[float], b: Sequence[float], eps: float = 1e-6) -> float:
    """Intersection over union of two boxes ``(x1, y1, x2, y2)``: ``inter / max(union, eps)``.

    Symmetric, in ``[0, 1]``; two zero-area boxes give 0 (not NaN) because the union is clamped at eps.
    """
    a, b = _box(a), _box(b)
    # Step 1: the areas.
    area_a, area_b = area(a), area(b)
    # Step 2: the intersection.
    inter = _intersection(a, b)
    # Step 3: the union counts the shared part once; clamp it so 0 / 0 cannot happen.
    union = max(area_a + area_b - inter, eps)
    return inter / union


def iof(a: Sequence[float], b: Sequence[float], eps: float = 1e-6) -> float:
    """Intersection over the FIRST box's area: ``inter / max(area(a), eps)``.

    Not symmetric: ``iof(small, big) = 1`` when ``small`` lies inside ``big``, while ``iof(big, small)`` is
    ``area(small) / area(big)``. MaxIoU's ignore step asks "how much of this anchor lies in an ignore
    region?", which is ``iof(anchor, region)``.
    """
    a, b = _box(a), _box(b)
    # Step 4: divide by the first box's area only.
    return _intersection(a, b) / max(area(a), eps)


def giou(a: Sequence[float], b: Sequence[float], eps: float = 1e-6) -> float:
    """Generalised IoU: ``iou - (E - U) / max(E, eps)``, ``E`` the area of the smallest enclosing box.

    In ``[-1, 1]``. Where IoU is 0 for every pair of disjoint boxes, GIoU still says how far apart they
    are: the emptier the enclosing box, the closer to -1.
    """
    a, b = _box(a), _box(b)
    inter = _intersection(a, b)
    union = max(area(a) + area(b) - inter, eps)  # step 3's clamped union U
    # Step 5: the enclosing box, then subtract the part of it that neither box covers.
    ew = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0)
    eh = max(max(a[3], b[3]) - min(a[1], b[1]), 0.0)
    enclose = max(ew * eh, eps)
    return inter / union - (enclose - union) / enclose


_MODES: dict[str, Callable[..., float]] = {"iou": iou, "iof": iof, "giou": giou}


def overlap_matrix(
    boxes1: Sequence[Sequence[float]] | Tensor, boxes2: Sequence[Sequence[float]] | Tensor, mode: str = "iou"
) -> Tensor:
    """``(N, M)`` float64 tensor of ``iou`` / ``iof`` / ``giou`` of every box of ``boxes1`` (rows) with
    every box of ``boxes2`` (columns), one pair at a time (step 6: the pairwise matrix)."""
    fn = _MODES[mode]
    rows = [_box(b) for b in boxes1]
    cols = [_box(b) for b in boxes2]
    values = [fn(a, b) for a in rows for b in cols]
    return torch.tensor(values, dtype=torch.float64).reshape(len(rows), len(cols))


# ---------------------------------------------------------------------------------------------------------
# 2. Anchors (docs/algorithms.md section 2.1)


def octave_scales(octave_base_scale: float = 4, scales_per_octave: int = 3) -> list[float]:
    """Rule 2: ``octave_base_scale * 2 ** (i / scales_per_octave)``, ``i = 0 .. scales_per_octave - 1``.

    RetinaNet: ``4 * (1, 2 ** (1/3), 2 ** (2/3)) = 4, 5.04, 6.35``: three sizes per octave, so the next
    level's smallest anchor (twice the stride) continues where this level's largest ends.
    """
    return [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]


def base_anchors(
    base_size: float,
    ratios: Sequence[float],
    scales: Sequence[float],
    center_offset: float = 0.0,
    scale_major: bool = True,
) -> list[Box]:
    """The A = len(ratios) * len(scales) anchors of one location, as mmdetection's ``AnchorGenerator``.

    Args:
        base_size: rule 1, the level's stride by default (8 for P3 ... 128 for P7).
        ratios: rule 3, aspect ratios ``h / w``.
        scales: rule 2, multiples of ``base_size`` (RetinaNet: :func:`octave_scales`).
        center_offset: rule 5, the centre is ``(center_offset * base_size, center_offset * base_size)``;
            0 puts it on the cell's top-left corner.
        scale_major: rule 4, ``True``: ratios outer, scales inner (index ``ratio_idx * S + scale_idx``).

    Returns:
        A list of A boxes ``(x1, y1, x2, y2)``, not rounded.
    """
    # Rule 5: the base anchors are centred on the cell's corner (0, 0) by default.
    cx = cy = center_offset * base_size
    sizes = []
    for r in ratios:
        for s in scales:
            # Rule 3: keep the area (base_size * s) ** 2 and make h / w = r.
            w = base_size * s / math.sqrt(r)
            h = base_size * s * math.sqrt(r)
            sizes.append((w, h))
    if not scale_major:
        # Rule 4: scales outer, ratios inner. The loop above made index ratio_idx * S + scale_idx.
        n_s = len(scales)
        sizes = [sizes[ri * n_s + si] for si in range(n_s) for ri in range(len(ratios))]
    return [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for w, h in sizes]


def grid_anchors(base: Sequence[Sequence[float]], featmap_hw: tuple[int, int], stride: Stride) -> list[Box]:
    """One level's anchors: every base anchor shifted to every cell's top-left corner.

    Rule 5: cell ``(y, x)`` shifts by ``(x * stride_w, y * stride_h)`` (the corner, not the centre).
    Rule 6: the order is location-major: anchor ``a`` of cell ``(y, x)`` is at index ``(y * W + x) * A + a``,
    the order of a head's output ``(A * 4, H, W)`` permuted to ``(H, W, A, 4)`` and flattened.

    Returns:
        ``H * W * A`` boxes ``(x1, y1, x2, y2)``.
    """
    fh, fw = featmap_hw
    sw, sh = _stride_wh(stride)
    cells = [_box(b) for b in base]
    out: list[Box] = []
    for y in range(fh):
        for x in range(fw):
            dx, dy = x * sw, y * sh  # rule 5: the cell's corner
            for x1, y1, x2, y2 in cells:  # rule 6: the A anchors of a cell are consecutive
                out.append((x1 + dx, y1 + dy, x2 + dx, y2 + dy))
    return out


def featmap_size(image_hw: tuple[int, int], stride: Stride) -> tuple[int, int]:
    """``(ceil(H / stride_h), ceil(W / stride_w))``: the size of a level's feature map for an image."""
    sw, sh = _stride_wh(stride)
    return math.ceil(image_hw[0] / sh), math.ceil(image_hw[1] / sw)


def anchor_counts(image_hw: tuple[int, int], strides: Sequence[Stride], anchors_per_location: int) -> list[int]:
    """``H_l * W_l * A`` per level: how many anchors each level of an FPN lays on an ``(H, W)`` image."""
    counts = []
    for stride in strides:
        fh, fw = featmap_size(image_hw, stride)
        counts.append(fh * fw * anchors_per_location)
    return counts


def retinanet_anchor_counts(image_hw: tuple[int, int]) -> list[int]:
    """Anchors per level of RetinaNet (strides 8 to 128, 3 ratios x 3 scales = 9 per location).

    The RetinaNet study note's padded batch ``(1216, 800)`` gives ``[136800, 34200, 8550, 2223, 630]``, 182,403 in all.
    """
    return anchor_counts(image_hw, RETINANET_STRIDES, anchors_per_location=9)


# ---------------------------------------------------------------------------------------------------------
# 3. Which anchors take part: valid flags (padding) and inside flags (the border)


def valid_flag(
    y: int, x: int, featmap_hw: tuple[int, int], pad_hw: tuple[int, int], stride: Stride
) -> bool:
    """Rule 7: does cell ``(y, x)`` of a level lie on the image, or on the batch's padding?

    ``pad_hw`` is the image's own ``(H, W)`` inside the batch tensor (mmdetection's ``pad_shape``: the
    resized image padded to a multiple of 32, not the batch's common size). Every one of the cell's A
    anchors shares the answer, whatever its extent.
    """
    sw, sh = _stride_wh(stride)
    # The first ceil(H / stride) rows (and ceil(W / stride) columns) see some of the image.
    valid_h = min(math.ceil(pad_hw[0] / sh), featmap_hw[0])
    valid_w = min(math.ceil(pad_hw[1] / sw), featmap_hw[1])
    return y < valid_h and x < valid_w


def level_valid_flags(
    featmap_hw: tuple[int, int], pad_hw: tuple[int, int], stride: Stride, anchors_per_location: int
) -> list[bool]:
    """:func:`valid_flag` of every anchor of one level, in the order of :func:`grid_anchors`."""
    fh, fw = featmap_hw
    flags = []
    for y in range(fh):
        for x in range(fw):
            flag = valid_flag(y, x, featmap_hw, pad_hw, stride)
            flags.extend([flag] * anchors_per_location)
    return flags


def inside_flag(anchor: Sequence[float], image_hw: tuple[int, int], allowed_border: float = 0) -> bool:
    """Rule 8: may this anchor be used, given how far it sticks out of the image?

    mmdetection's ``anchor_inside_flags`` for one anchor (AND it with the anchor's valid flag):
    ``allowed_border >= 0``: ``x1 >= -b``, ``y1 >= -b``, ``x2 < W + b``, ``y2 < H + b`` (strict on the far
    side, so an anchor ending exactly on the right border is out); ``allowed_border < 0`` (RetinaNet and
    mmdetection's RPN use -1): every anchor may be used.
    """
    if allowed_border < 0:
        return True
    x1, y1, x2, y2 = _box(anchor)
    h, w = image_hw
    b = allowed_border
    return x1 >= -b and y1 >= -b and x2 < w + b and y2 < h + b


# ---------------------------------------------------------------------------------------------------------
# 4. DeltaXYWH box coder (docs/algorithms.md section 3)


def _centre_size(box: Box) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def encode(
    anchor: Sequence[float],
    gt: Sequence[float],
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> tuple[float, float, float, float]:
    """The deltas ``(dx, dy, dw, dh)`` that move ``anchor`` onto ``gt`` (both ``(x1, y1, x2, y2)``).

    No eps (mmdetection): a zero-width anchor divides by zero, a zero-width gt gives ``log(0)``.
    """
    # Step 1: centres and sizes.
    px, py, pw, ph = _centre_size(_box(anchor))
    gx, gy, gw, gh = _centre_size(_box(gt))
    # Step 2: the centre shift in anchor widths / heights, the size change as a log ratio.
    d = ((gx - px) / pw, (gy - py) / ph, math.log(gw / pw), math.log(gh / ph))
    # Step 3: normalise (RPN / RetinaNet: means 0, stds 1; Faster R-CNN's RoI head: stds 0.1, 0.1, 0.2, 0.2).
    dx, dy, dw, dh = ((d[i] - means[i]) / stds[i] for i in range(4))
    return dx, dy, dw, dh


def decode(
    anchor: Sequence[float],
    delta: Sequence[float],
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    wh_ratio_clip: float = 16 / 1000,
    max_shape: tuple[int, int] | None = None,
) -> Box:
    """The box ``(x1, y1, x2, y2)`` that ``delta`` makes of ``anchor``: the inverse of :func:`encode`.

    ``max_shape = (H, W)`` clips x to ``[0, W]`` and y to ``[0, H]``.
    """
    # Step 1: undo the normalisation.
    dx, dy, dw, dh = (float(delta[i]) * stds[i] + means[i] for i in range(4))
    # Step 2: a box may grow or shrink by at most 1 / wh_ratio_clip = 62.5 times per side: |dw| <= 4.135.
    max_ratio = abs(math.log(wh_ratio_clip))
    dw = min(max(dw, -max_ratio), max_ratio)
    dh = min(max(dh, -max_ratio), max_ratio)
    # Step 3: the new centre and size.
    px, py, pw, ph = _centre_size(_box(anchor))
    gx, gy = px + pw * dx, py + ph * dy
    gw, gh = pw * math.exp(dw), ph * math.exp(dh)
    x1, y1, x2, y2 = gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2
    # Step 4: clip to the image.
    if max_shape is not None:
        h, w = max_shape
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    return x1, y1, x2, y2


# ---------------------------------------------------------------------------------------------------------
# 5. The original anchors, for comparison


def py_faster_rcnn_base_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (8, 16, 32),
    first_pixel: int = 0,
) -> list[Box]:
    """py-faster-rcnn's ``generate_anchors``: the same 9 shapes as :func:`base_anchors`, built the old way.

    Three differences from mmdetection 2.x/3.x:

    1. pixel-inclusive boxes: a box covers pixels ``x1 .. x2``, so its width is ``x2 - x1 + 1``;
    2. the reference window is the first cell's pixels ``(0, 0, 15, 15)``, centred at ``(7.5, 7.5)``, not
       the corner ``(0, 0)``;
    3. sizes are rounded to whole pixels once per ratio, before scaling: ``ws = round(sqrt(256 / r))``,
       ``hs = round(ws * r)`` (23 x 12, 16 x 16, 11 x 22), then multiplied by the scale.

    ``first_pixel=1`` starts the window at pixel 1 (``(1, 1, 16, 16)``, centre 8.5), as the authors' MATLAB
    code did; that gives the table printed in py-faster-rcnn's source, one pixel right of and below
    what its Python code returns. Python's ``round`` rounds halves to even, like numpy's.
    """
    # The reference window and its centre: (7.5, 7.5) for base 16.
    cx = cy = first_pixel + (base_size - 1) / 2
    out: list[Box] = []
    for r in ratios:
        # Round the base shape for this ratio: keep the area base_size ** 2, make h / w close to r.
        ws = round(math.sqrt(base_size * base_size / r))
        hs = round(ws * r)
        for s in scales:
            w, h = ws * s, hs * s
            # Pixel-inclusive: x2 = x1 + w - 1.
            out.append((cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2))
    return out


# ---------------------------------------------------------------------------------------------------------
# A figure for the flags


def flags_figure(
    image: np.ndarray,
    pad_hw: tuple[int, int],
    batch_hw: tuple[int, int],
    anchors: Sequence[Sequence[float]] | Tensor,
    valid: Sequence[bool] | Tensor,
    inside: Sequence[bool] | Tensor,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Anchor centres of one level over an image in a padded batch, coloured by their flags.

    The image ``(H, W, 3)`` sits in the top-left corner of a ``batch_hw`` canvas; its own padded size
    ``pad_hw`` is outlined. Green dots: valid and inside (used); orange: valid but dropped by the border
    rule; grey crosses: on the padding (not valid). Anchors are ``(x1, y1, x2, y2)``, flags ``(N,)``.

    Pass ONE anchor per location (``anchors[a::A]``, with its flags): the A anchors of a location share a
    centre, and their dots would hide each other.

    Returns:
        The Figure.
    """
    if ax is None:
        fig = LessonFigure(figsize=(6.0, 6.0 * batch_hw[0] / batch_hw[1] + 0.4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    bh, bw = batch_hw
    ax.add_patch(Rectangle((0, 0), bw, bh, facecolor=(0.85, 0.85, 0.85), edgecolor="black", zorder=0))
    ih, iw = image.shape[:2]
    ax.imshow(image, extent=(0, iw, ih, 0), zorder=1)
    ax.add_patch(Rectangle((0, 0), pad_hw[1], pad_hw[0], fill=False, edgecolor="black", linestyle="--", zorder=2))
    boxes = np.asarray(torch.as_tensor(anchors, dtype=torch.float64)).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    valid = np.asarray(torch.as_tensor(valid)).astype(bool).reshape(-1)
    inside = np.asarray(torch.as_tensor(inside)).astype(bool).reshape(-1)
    groups = [
        (valid & inside, "o", "tab:green", "valid and inside: used"),
        (valid & ~inside, "o", "tab:orange", "valid, crosses the border: dropped"),
        (~valid, "x", (0.3, 0.3, 0.3), "on the padding: not valid"),
    ]
    handles = []
    for mask, marker, colour, label in groups:
        ax.scatter(centres[mask, 0], centres[mask, 1], s=10, marker=marker, color=colour, zorder=3, linewidths=1)
        handles.append(
            Line2D([], [], marker=marker, linestyle="", color=colour, label=f"{label} ({int(mask.sum())})")
        )
    ax.set_xlim(-0.05 * bw, 1.05 * bw)
    ax.set_ylim(1.05 * bh, -0.05 * bh)
    ax.set_aspect("equal")
    ax.legend(handles=handles, fontsize=7, loc="lower right", framealpha=0.9)
    if title is not None:
        ax.set_title(title, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Exercise cases (notebook 01): each one a boundary the notebook teaches


def anchor_count_cases() -> list:
    """``my_anchor_counts(image_hw, strides, anchors_per_location) -> list[int]``."""
    from lessons.check import Case

    def case(name: str, hw: tuple[int, int], strides: list[int], a: int) -> Case:
        return Case(name, (hw, strides, a), anchor_counts(hw, strides, a))

    return [
        case("a size the stride divides exactly: no extra row or column", (512, 512), [32], 9),
        case("a partly covered cell still counts (ceil, not floor): 800 / 64 = 12.5 -> 13", (1216, 800),
             list(RETINANET_STRIDES), 9),
        case("less than half a cell left over still counts (ceil, not round): 333 / 32 = 10.4 -> 11", (333, 517),
             list(RETINANET_STRIDES), 1),
        case("an image smaller than the stride still has one cell", (20, 30), [64], 9),
        case("Faster R-CNN at 600 x 1000: 38 x 63 cells x 9", (600, 1000), [16], 9),
    ]


def iou_cases() -> list:
    """``my_iou(a, b) -> float`` for two boxes ``(x1, y1, x2, y2)``."""
    from lessons.check import Case

    def case(name: str, a: Box, b: Box) -> Case:
        return Case(name, (a, b), iou(a, b))

    return [
        case("two overlapping boxes (the toy cat and dog): 1/7", (4, 8, 28, 40), (20, 16, 52, 40)),
        case("apart in x only: 0 (the overlap's width is clamped at 0)", (0, 0, 10, 10), (20, 0, 30, 10)),
        case("apart in x and y: 0, not (-10) x (-10) = 100", (0, 0, 10, 10), (20, 20, 30, 30)),
        case("touching edges: 0", (0, 0, 10, 10), (10, 0, 20, 10)),
        case("a box inside another: the area ratio", (0, 0, 10, 10), (2, 2, 7, 7)),
        case("widths are x2 - x1, no '+1': 1 x 1 in 2 x 2 is 1/4", (0, 0, 1, 1), (0, 0, 2, 2)),
        case("two zero-area boxes: 0, not 0 / 0", (5, 5, 5, 5), (5, 5, 5, 5)),
        case("identical boxes: 1", (3, 4, 13, 24), (3, 4, 13, 24)),
    ]


def encode_cases() -> list:
    """``my_encode(anchor, gt) -> (dx, dy, dw, dh)`` with means 0 and stds 1."""
    from lessons.check import Case

    def case(name: str, anchor: Box, gt: Box) -> Case:
        return Case(name, (anchor, gt), encode(anchor, gt), atol=1e-9)

    return [
        case("the same box: all four deltas are 0", (10, 20, 110, 70), (10, 20, 110, 70)),
        case("a shift of half the anchor's width: dx = 0.5 (in anchor widths)", (0, 0, 100, 50), (50, 0, 150, 50)),
        case("dy counts in the anchor's HEIGHT: 25 px down a 50 px anchor is 0.5", (0, 0, 100, 50), (0, 25, 100, 75)),
        case("a gt twice as wide: dw = log 2", (0, 0, 100, 50), (-50, 0, 150, 50)),
        case("a gt half as tall: dh = log(1/2), negative", (0, 0, 100, 50), (0, 12.5, 100, 37.5)),
        case("the face and its level-3 anchor (worked by hand above)", (128, 128, 384, 384), (162, 136, 372, 336)),
    ]
