"""The conventions you meet in other detection code, and converters to and from ours.

Every library a learner reads writes the same ideas down differently: the order of a box's four
numbers, whether a width counts a "+1", what "aspect ratio 0.5" means, where an anchor sits in its
cell, how a match between anchors and gts is stored, and where the background class lives. This
module is the package's convention in the middle (the hub) and one small converter per spoke, each
with its inverse, so that any two libraries can be compared by going through ours.

Ours (docs/conventions.md), in one line each:

- boxes ``(x1, y1, x2, y2)`` in absolute pixels, width ``x2 - x1`` (pixel ``i`` covers ``[i, i + 1)``);
- aspect ratio ``r = h / w``; anchors centred on the top-left corner of their cell (mmdetection);
- a match is ``gt_index`` per anchor: the matched gt, 0-based; ``-1`` negative; ``-2`` ignored;
- class labels ``0 .. C - 1`` for objects and ``C`` (= ``num_classes``) for background, last.

:data:`CONVENTIONS` lists the same facts for mmdetection, torchvision, detectron2, d2l,
simple-faster-rcnn and py-faster-rcnn; :func:`conventions_markdown` renders them side by side.

Shape shorthand: ``N`` anchors (or boxes), ``C`` object classes (background not counted), ``...`` any
leading dims. Converters take torch tensors (numpy arrays and lists are converted with
``torch.as_tensor``) and return new tensors; the inputs are never modified.

Sources (docs/algorithms.md sections 0.1, 2.4, 3.4): ``open-mmlab/mmdetection``
``mmdet/models/task_modules/assigners/assign_result.py`` and ``prior_generators/anchor_generator.py``;
``pytorch/vision`` ``torchvision/models/detection/_utils.py`` (``Matcher``) and ``anchor_utils.py``;
``facebookresearch/detectron2`` ``detectron2/modeling/matcher.py`` and ``anchor_generator.py``;
``d2l-ai/d2l-en`` ``chapter_computer-vision/anchor.md``; ``chenyuntc/simple-faster-rcnn-pytorch``
``model/utils/bbox_tools.py`` and ``creator_tool.py``; ``rbgirshick/py-faster-rcnn``
``lib/rpn/generate_anchors.py`` and ``anchor_target_layer.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "CONVENTIONS",
    "LIBRARIES",
    "Convention",
    "anchor_wh",
    "cxcywh_to_xyxy",
    "conventions_dicts",
    "conventions_markdown",
    "decode_match",
    "delta_columns",
    "deltas_from_background_first",
    "deltas_to_background_first",
    "encode_match",
    "flip_ratio",
    "from_d2l_anchor_map",
    "from_detectron2_matches",
    "from_mmdet_gt_inds",
    "from_rpn_labels",
    "from_torchvision_matches",
    "get_convention",
    "labels_from_background_first",
    "labels_to_background_first",
    "normalised_to_xyxy",
    "plus_one_to_xyxy",
    "roi_head_sizes",
    "scores_from_background_first",
    "scores_to_background_first",
    "to_d2l_anchor_map",
    "to_detectron2_matches",
    "to_mmdet_gt_inds",
    "to_rpn_labels",
    "to_torchvision_matches",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_normalised",
    "xyxy_to_plus_one",
    "xyxy_to_xywh",
    "xyxy_to_yxyx",
    "yxyx_to_xyxy",
]

NEGATIVE = -1  # our gt_index of a negative (background) anchor; same as exportable.assigners.result
IGNORED = -2  # our gt_index of an ignored anchor


# ---------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Convention:
    """How one library writes boxes, anchors, matches and classes down.

    The first fields are codes that the converters of this module read; the rest are short texts for
    the side-by-side table.

    Attributes:
        library: the name used everywhere in this module (``"mmdetection"``, ``"d2l"`` ...).
        box_order: ``"xyxy"`` or ``"yxyx"``.
        plus_one: widths are ``x2 - x1 + 1`` (a box lists the first and the last pixel it covers).
        ratio: the aspect ratio's definition, ``"h/w"`` or ``"w/h"``.
        background: ``"first"`` (class 0 is background, objects are 1..C) or ``"last"`` (objects 0..C-1,
            background C).
        anchor_centre: where the base anchors of a cell are centred.
        anchor_shapes: rounding and order of the base anchor shapes.
        delta_order: the order of the four regression outputs per box.
        match_encoding: how an anchor's match is stored.
        source: where to read it in the library.
    """

    library: str
    box_order: str
    plus_one: bool
    ratio: str
    background: str
    anchor_centre: str
    anchor_shapes: str
    delta_order: str
    match_encoding: str
    source: str

    @property
    def box_text(self) -> str:
        return "(x1, y1, x2, y2)" if self.box_order == "xyxy" else "(y1, x1, y2, x2)"

    @property
    def width_text(self) -> str:
        return "x2 - x1 + 1" if self.plus_one else "x2 - x1"

    @property
    def background_text(self) -> str:
        return "0, first (C + 1 classes)" if self.background == "first" else "C, last"


CONVENTIONS: list[Convention] = [
    Convention(
        library="assignlab (ours)",
        box_order="xyxy",
        plus_one=False,
        ratio="h/w",
        background="last",
        anchor_centre="cell corner (x * stride, y * stride)",
        anchor_shapes="no rounding; ratios outer, scales inner",
        delta_order="dx, dy, dw, dh",
        match_encoding="gt_index: gt 0-based; -1 negative; -2 ignored",
        source="exportable/assigners/result.py",
    ),
    Convention(
        library="mmdetection",
        box_order="xyxy",
        plus_one=False,
        ratio="h/w",
        background="last",
        anchor_centre="cell corner (center_offset=0)",
        anchor_shapes="no rounding; ratios outer, scales inner (scale_major=True)",
        delta_order="dx, dy, dw, dh",
        match_encoding="gt_inds: gt 1-based; 0 negative; -1 ignored",
        source="mmdet/models/task_modules/assigners/assign_result.py",
    ),
    Convention(
        library="torchvision",
        box_order="xyxy",
        plus_one=False,
        ratio="h/w",
        background="first",
        anchor_centre="cell corner",
        anchor_shapes="corners rounded to integers; ratios outer, sizes inner",
        delta_order="dx, dy, dw, dh",
        match_encoding="Matcher: gt 0-based; -1 below low threshold; -2 between thresholds",
        source="torchvision/models/detection/_utils.py (Matcher), anchor_utils.py",
    ),
    Convention(
        library="detectron2",
        box_order="xyxy",
        plus_one=False,
        ratio="h/w",
        background="last",
        anchor_centre="cell corner (config OFFSET = 0.0; the class default is 0.5)",
        anchor_shapes="no rounding; sizes outer, ratios inner",
        delta_order="dx, dy, dw, dh",
        match_encoding="Matcher: matches = argmax gt (0-based, every anchor) + labels 1 fg / 0 bg / -1 ignore",
        source="detectron2/modeling/matcher.py, anchor_generator.py",
    ),
    Convention(
        library="d2l",
        box_order="xyxy",
        plus_one=False,
        ratio="w/h",
        background="first",
        anchor_centre="cell centre ((x + 0.5) / W); coordinates normalised to [0, 1]",
        anchor_shapes="no rounding; n + m - 1 shapes per cell (first size x all ratios, first ratio x all sizes)",
        delta_order="dx, dy, dw, dh (scaled by 10, 10, 5, 5)",
        match_encoding="anchors_bbox_map: gt 0-based; -1 background; no ignore state",
        source="d2l-en chapter_computer-vision/anchor.md (multibox_prior, multibox_target)",
    ),
    Convention(
        library="simple-faster-rcnn",
        box_order="yxyx",
        plus_one=False,
        ratio="h/w",
        background="first",
        anchor_centre="cell centre (base_size / 2 = 8 for base 16)",
        anchor_shapes="no rounding; ratios outer, scales inner",
        delta_order="dy, dx, dh, dw",
        match_encoding="RPN label 1 / 0 / -1 + argmax_ious (gt 0-based, every anchor)",
        source="model/utils/bbox_tools.py, creator_tool.py",
    ),
    Convention(
        library="py-faster-rcnn",
        box_order="xyxy",
        plus_one=True,
        ratio="h/w",
        background="first",
        anchor_centre="cell centre in +1 pixels ((base_size - 1) / 2 = 7.5)",
        anchor_shapes="rounded to whole pixels once per ratio, then scaled; ratios outer, scales inner",
        delta_order="dx, dy, dw, dh",
        match_encoding="RPN labels 1 / 0 / -1 + argmax_overlaps (gt 0-based, every anchor)",
        source="lib/rpn/generate_anchors.py, anchor_target_layer.py",
    ),
]
"""One row per library; ours first. Facts for mmdetection 2.x/3.x, torchvision 0.2x, detectron2, d2l-en."""

LIBRARIES: list[str] = [c.library for c in CONVENTIONS]

_ALIASES = {"ours": "assignlab (ours)", "assignlab": "assignlab (ours)", "mmdet": "mmdetection"}


def get_convention(library: str) -> Convention:
    """The row of :data:`CONVENTIONS` for ``library`` (``"ours"`` and ``"mmdet"`` are accepted too)."""
    name = _ALIASES.get(library, library)
    for c in CONVENTIONS:
        if c.library == name:
            return c
    raise ValueError(f"library: unknown {library!r}; known: {', '.join(LIBRARIES)}")


_COLUMNS = {
    "library": ("library", lambda c: c.library),
    "box_order": ("box order", lambda c: c.box_text),
    "width": ("width", lambda c: c.width_text),
    "ratio": ("aspect ratio", lambda c: c.ratio),
    "anchor_centre": ("anchor centre", lambda c: c.anchor_centre),
    "anchor_shapes": ("anchor shapes", lambda c: c.anchor_shapes),
    "delta_order": ("deltas", lambda c: c.delta_order),
    "match_encoding": ("match encoding", lambda c: c.match_encoding),
    "background": ("background class", lambda c: c.background_text),
    "source": ("where to read it", lambda c: c.source),
}


def conventions_markdown(columns: list[str] | None = None, rows: list[Convention] | None = None) -> str:
    """:data:`CONVENTIONS` as a Markdown table (one row per library).

    Args:
        columns: keys of the columns to show, in order; default all but ``source``. Keys: ``library``,
            ``box_order``, ``width``, ``ratio``, ``anchor_centre``, ``anchor_shapes``, ``delta_order``,
            ``match_encoding``, ``background``, ``source``.
        rows: the conventions to show; default all.

    In a notebook: ``IPython.display.Markdown(conventions_markdown())``.
    """
    keys = columns if columns is not None else [k for k in _COLUMNS if k != "source"]
    unknown = [k for k in keys if k not in _COLUMNS]
    if unknown:
        raise ValueError(f"columns: unknown {unknown}; known: {list(_COLUMNS)}")
    rows = CONVENTIONS if rows is None else rows
    head = "| " + " | ".join(_COLUMNS[k][0] for k in keys) + " |"
    rule = "|" + "|".join("---" for _ in keys) + "|"
    body = ["| " + " | ".join(_COLUMNS[k][1](c).replace("|", "\\|") for k in keys) + " |" for c in rows]
    return "\n".join([head, rule, *body])


def conventions_dicts() -> list[dict[str, Any]]:
    """:data:`CONVENTIONS` as plain dicts (for pandas, JSON, your own table)."""
    return [asdict(c) for c in CONVENTIONS]


# ---------------------------------------------------------------------------------------------------------
# Boxes


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x)


def _four(boxes: Any) -> Tensor:
    b = _t(boxes)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes: expected (..., 4), got shape {tuple(b.shape)}")
    return b


def xyxy_to_yxyx(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """``(x1, y1, x2, y2)`` -> ``(y1, x1, y2, x2)``, simple-faster-rcnn's order (also TensorFlow's)."""
    return _four(boxes)[..., [1, 0, 3, 2]]  # (..., 4)


def yxyx_to_xyxy(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """``(y1, x1, y2, x2)`` -> ``(x1, y1, x2, y2)``. Swapping twice is the identity: same code as the way in."""
    return _four(boxes)[..., [1, 0, 3, 2]]  # (..., 4)


def xyxy_to_cxcywh(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``: the centre and size the box coder works with."""
    b = _four(boxes)
    x1, y1, x2, y2 = b.unbind(-1)  # 4 x (...)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)  # (..., 4)


def cxcywh_to_xyxy(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    b = _four(boxes)
    cx, cy, w, h = b.unbind(-1)  # 4 x (...)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)  # (..., 4)


def xyxy_to_xywh(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """``(x1, y1, x2, y2)`` -> ``(x, y, w, h)`` with ``(x, y)`` the top-left corner: COCO's ``bbox`` field."""
    b = _four(boxes)
    x1, y1, x2, y2 = b.unbind(-1)  # 4 x (...)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)  # (..., 4)


def xywh_to_xyxy(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """COCO's ``(x, y, w, h)`` (top-left corner and size) -> ``(x1, y1, x2, y2)``."""
    b = _four(boxes)
    x, y, w, h = b.unbind(-1)  # 4 x (...)
    return torch.stack([x, y, x + w, y + h], dim=-1)  # (..., 4)


def xyxy_to_plus_one(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """Ours -> the "+1" convention of py-faster-rcnn (and Detectron, mmdetection 1.x).

    There a box lists the first and the last pixel it covers, so its width is ``x2 - x1 + 1``. Ours
    lists the edges (pixel ``i`` covers ``[i, i + 1)``), so the same pixels are ``(x1, y1, x2 - 1, y2 - 1)``
    over there: only the far corner moves, and every width and height is the same number in both.
    """
    b = _four(boxes)
    return b - b.new_tensor([0.0, 0.0, 1.0, 1.0])  # (..., 4)


def plus_one_to_xyxy(boxes: Float[Tensor, "... 4"]) -> Float[Tensor, "... 4"]:
    """The "+1" convention (py-faster-rcnn) -> ours: the far corner moves one pixel right and down.

    py-faster-rcnn's first base anchor ``(-84, -40, 99, 55)`` (184 x 96 pixels, centre ``(7.5, 7.5)``)
    becomes ``(-84, -40, 100, 56)``: still 184 x 96, centred at ``(8, 8)``, the middle of the first
    16 x 16 cell.
    """
    b = _four(boxes)
    return b + b.new_tensor([0.0, 0.0, 1.0, 1.0])  # (..., 4)


def xyxy_to_normalised(boxes: Float[Tensor, "... 4"], image_hw: tuple[float, float]) -> Float[Tensor, "... 4"]:
    """Pixels -> coordinates divided by the image size, in ``[0, 1]`` (d2l's anchors and labels)."""
    b = _four(boxes)
    h, w = image_hw
    return b / b.new_tensor([w, h, w, h])  # (..., 4)


def normalised_to_xyxy(boxes: Float[Tensor, "... 4"], image_hw: tuple[float, float]) -> Float[Tensor, "... 4"]:
    """Coordinates in ``[0, 1]`` (d2l) -> pixels of an image of size ``(H, W)``."""
    b = _four(boxes)
    h, w = image_hw
    return b * b.new_tensor([w, h, w, h])  # (..., 4)


# ---------------------------------------------------------------------------------------------------------
# Anchor shapes


def flip_ratio(ratio: float) -> float:
    """The same anchor shape's ratio in the other definition: ``h / w`` <-> ``w / h`` is ``1 / r``."""
    if not ratio > 0:
        raise ValueError(f"ratio: must be positive, got {ratio}")
    return 1.0 / ratio


def anchor_wh(base_size: float, scale: float, ratio: float, convention: str = "ours") -> tuple[float, float]:
    """Width and height in pixels of the anchor that a library builds from ``(base_size, scale, ratio)``.

    The anchor's side at ratio 1 is ``size = base_size * scale`` and every library keeps the area near
    ``size ** 2``; they differ in what ``ratio`` means and in rounding:

    - ``"h/w"`` (ours, mmdetection, detectron2, simple-faster-rcnn): ``w = size / sqrt(r)``,
      ``h = size * sqrt(r)``.
    - ``"w/h"`` (d2l): ``w = size * sqrt(r)``, ``h = size / sqrt(r)``: the same number gives the
      transposed shape. d2l's size ``s`` is a fraction of the image height: pass ``base_size = H``,
      ``scale = s``.
    - ``"torchvision"``: h/w, and the base anchor's corners ``(-w/2, -h/2, w/2, h/2)`` are rounded to
      integers, so ``w = 2 * round(w / 2)``. torchvision's sizes are absolute: pass ``scale = 1``.
    - ``"py-faster-rcnn"``: h/w, rounded to whole pixels once per ratio at the base size
      (``ws = round(sqrt(base_size**2 / r))``, ``hs = round(ws * r)``), then multiplied by the scale; the
      widths are pixel counts (its "+1" widths).

    Args:
        base_size: reference size in pixels (16 for Faster R-CNN's stride-16 level).
        scale: multiple of ``base_size`` (Faster R-CNN: 8, 16, 32).
        ratio: the aspect ratio, in the convention's definition.
        convention: a library of :data:`CONVENTIONS` (or ``"ours"``), or ``"h/w"`` / ``"w/h"``.

    Returns:
        ``(w, h)`` in pixels, as Python floats.

    Example: base 16, scale 8, ratio 0.5 is 181.02 wide x 90.51 high in ours (h/w); in d2l (w/h) the
    same three numbers give 90.51 x 181.02; py-faster-rcnn makes it 184 x 96, torchvision 182 x 90.
    """
    if not ratio > 0:
        raise ValueError(f"ratio: must be positive, got {ratio}")
    if not (base_size > 0 and scale > 0):
        raise ValueError(f"base_size, scale: must be positive, got {base_size}, {scale}")
    size = base_size * scale
    if convention == "torchvision":
        w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
        return 2.0 * round(w / 2), 2.0 * round(h / 2)  # round() halves to even, like torch.round
    if convention == "py-faster-rcnn":
        ws = round(math.sqrt(base_size * base_size / ratio))  # whole pixels, at the base size
        hs = round(ws * ratio)
        return float(ws * scale), float(hs * scale)
    definition = convention if convention in ("h/w", "w/h") else get_convention(convention).ratio
    if definition == "w/h":
        return size * math.sqrt(ratio), size / math.sqrt(ratio)
    return size / math.sqrt(ratio), size * math.sqrt(ratio)


# ---------------------------------------------------------------------------------------------------------
# Match encodings (ours is the hub: gt_index, 0-based; -1 negative; -2 ignored)


def _index(name: str, x: Any) -> Tensor:
    t = _t(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")
    return t.to(torch.int64)


def _check_gt_index(gt_index: Tensor) -> None:
    if gt_index.numel() and int(gt_index.min()) < IGNORED:
        raise ValueError(f"gt_index: values must be >= -2 (-1 negative, -2 ignored), got {int(gt_index.min())}")


def to_mmdet_gt_inds(gt_index: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """Ours -> mmdetection's ``gt_inds``: gt ``k`` is ``k + 1`` (1-based), negative ``0``, ignored ``-1``.

    The trap: ``-1`` is *negative* in ours and torchvision but *ignored* in mmdetection.
    Same numbers as ``AssignResult.to_mmdet()``.
    """
    g = _index("gt_index", gt_index)
    _check_gt_index(g)
    return torch.where(g >= 0, g + 1, torch.where(g == NEGATIVE, 0, -1))  # (...)


def from_mmdet_gt_inds(gt_inds: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """mmdetection's ``gt_inds`` (1-based, 0 negative, -1 ignored) -> ours."""
    m = _index("gt_inds", gt_inds)
    if m.numel() and int(m.min()) < -1:
        raise ValueError(f"gt_inds: values must be >= -1 (0 negative, -1 ignored), got {int(m.min())}")
    return torch.where(m > 0, m - 1, torch.where(m == 0, NEGATIVE, IGNORED))  # (...)


def to_torchvision_matches(gt_index: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """Ours -> torchvision ``Matcher`` output (``matched_idxs``): the same numbers.

    torchvision writes ``-1`` (``BELOW_LOW_THRESHOLD``) for a negative and ``-2`` (``BETWEEN_THRESHOLDS``)
    for an anchor between the two IoU thresholds, which it ignores; ours uses the same two codes on
    purpose. The names tell the difference: torchvision's ``-2`` is only ever "between thresholds",
    ours covers every reason to ignore (ignore regions, outside the image, ...). The RPN then turns them
    into labels 1 / 0 / -1 (see :func:`to_rpn_labels`).
    """
    g = _index("gt_index", gt_index)
    _check_gt_index(g)
    return g.clone()  # (...)


def from_torchvision_matches(matches: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """torchvision ``Matcher`` output (0-based, -1 below low, -2 between thresholds) -> ours: the same."""
    m = _index("matches", matches)
    _check_gt_index(m)
    return m.clone()  # (...)


def _label_pair(gt_index: Tensor, argmax: Any | None) -> tuple[Tensor, Tensor]:
    """(matched gt for every anchor, labels 1 / 0 / -1) shared by detectron2 and the Faster R-CNN codes."""
    g = _index("gt_index", gt_index)
    _check_gt_index(g)
    labels = torch.where(g >= 0, 1, torch.where(g == NEGATIVE, 0, -1))  # (...)
    if argmax is None:
        fill = torch.zeros_like(g)  # a placeholder: these libraries never read it for non-positives
    else:
        fill = _index("argmax", argmax)
        if fill.shape != g.shape:
            raise ValueError(f"argmax: expected shape {tuple(g.shape)}, got {tuple(fill.shape)}")
    return torch.where(g >= 0, g, fill), labels  # (...), (...)


def _from_label_pair(name: str, matched: Any, labels: Any) -> Tensor:
    m, lab = _index(name, matched), _index("labels", labels)
    if m.shape != lab.shape:
        raise ValueError(f"{name}, labels: shapes differ: {tuple(m.shape)} and {tuple(lab.shape)}")
    if lab.numel() and not bool(((lab >= -1) & (lab <= 1)).all()):
        raise ValueError("labels: values must be 1 (positive), 0 (negative) or -1 (ignored)")
    return torch.where(lab == 1, m, torch.where(lab == 0, NEGATIVE, IGNORED))  # (...)


def to_detectron2_matches(
    gt_index: Int[Tensor, "..."], argmax: Int[Tensor, "..."] | None = None
) -> tuple[Int[Tensor, "..."], Int[Tensor, "..."]]:
    """Ours -> detectron2 ``Matcher``'s ``(matches, match_labels)``.

    ``matches`` holds a gt index for *every* anchor (its best gt, even when the IoU is tiny) and
    ``match_labels`` (int8) says what to make of it: ``1`` foreground, ``0`` background, ``-1`` ignore.
    Ours does not keep the best gt of a non-positive; pass ``argmax`` (the per-anchor argmax gt) to fill
    those entries, else they are 0.
    """
    matches, labels = _label_pair(gt_index, argmax)
    return matches, labels.to(torch.int8)  # (...), (...)


def from_detectron2_matches(matches: Int[Tensor, "..."], match_labels: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """detectron2's ``(matches, match_labels)`` -> ours (``matches`` is read only where the label is 1)."""
    return _from_label_pair("matches", matches, match_labels)


def to_rpn_labels(
    gt_index: Int[Tensor, "..."], argmax: Int[Tensor, "..."] | None = None
) -> tuple[Int[Tensor, "..."], Int[Tensor, "..."]]:
    """Ours -> the Faster R-CNN RPN codes: ``(labels, argmax_gt)``.

    ``labels`` is ``1`` positive, ``0`` negative, ``-1`` "don't care" (py-faster-rcnn's
    ``anchor_target_layer``, simple-faster-rcnn's ``AnchorTargetCreator``; torchvision's RPN writes the same
    values as floats). ``argmax_gt`` is the gt each anchor's box target is computed from (py-faster-rcnn
    ``argmax_overlaps``, simple-faster-rcnn ``argmax_ious``): ours for positives, ``argmax`` (or 0)
    elsewhere. Returned as ``(labels, argmax_gt)``, int64 both.

    In those libraries ``-1`` also means "not sampled" and "outside the image": by the time you see the
    labels, several reasons to be ignored share one code, as they do in ours.
    """
    argmax_gt, labels = _label_pair(gt_index, argmax)
    return labels, argmax_gt  # (...), (...)


def from_rpn_labels(labels: Int[Tensor, "..."], argmax_gt: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """The RPN codes ``(labels 1 / 0 / -1, argmax_gt)`` -> ours."""
    return _from_label_pair("argmax_gt", argmax_gt, labels)


def to_d2l_anchor_map(gt_index: Int[Tensor, "..."], *, ignored_as_negative: bool = False) -> Int[Tensor, "..."]:
    """Ours -> d2l's ``anchors_bbox_map``: gt 0-based, ``-1`` background. d2l has no "ignored".

    An ignored anchor cannot be written down in d2l: this raises unless ``ignored_as_negative=True``,
    which makes it a negative (it would then be trained as background: a different training signal, and
    the way back cannot tell it from a true negative).
    """
    g = _index("gt_index", gt_index)
    _check_gt_index(g)
    if bool((g == IGNORED).any()) and not ignored_as_negative:
        raise ValueError(
            "gt_index: d2l has no 'ignored' state; pass ignored_as_negative=True to train ignored anchors as background"
        )
    return torch.where(g == IGNORED, NEGATIVE, g)  # (...)


def from_d2l_anchor_map(anchors_bbox_map: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """d2l's ``anchors_bbox_map`` (0-based, -1 background) -> ours: the same numbers, never ``-2``."""
    m = _index("anchors_bbox_map", anchors_bbox_map)
    if m.numel() and int(m.min()) < NEGATIVE:
        raise ValueError(f"anchors_bbox_map: values must be >= -1, got {int(m.min())}")
    return m.clone()  # (...)


# Names the libraries give their tensors, used as the keys of encode_match's dict.
_MATCH_NAMES = {
    "assignlab (ours)": ("gt_index",),
    "mmdetection": ("gt_inds",),
    "torchvision": ("matched_idxs",),
    "detectron2": ("matches", "match_labels"),
    "d2l": ("anchors_bbox_map",),
    "simple-faster-rcnn": ("label", "argmax_ious"),
    "py-faster-rcnn": ("labels", "argmax_overlaps"),
}


def encode_match(
    gt_index: Int[Tensor, "..."], library: str, *, argmax: Int[Tensor, "..."] | None = None, **kwargs: Any
) -> dict[str, Tensor]:
    """Our ``gt_index`` written the way ``library`` stores it, under that library's variable names.

    ``{"gt_inds": ...}`` for mmdetection, ``{"matched_idxs": ...}`` for torchvision,
    ``{"matches": ..., "match_labels": ...}`` for detectron2, ``{"anchors_bbox_map": ...}`` for d2l,
    ``{"label": ..., "argmax_ious": ...}`` for simple-faster-rcnn, ``{"labels": ..., "argmax_overlaps": ...}``
    for py-faster-rcnn, ``{"gt_index": ...}`` for ours. ``argmax`` as in :func:`to_detectron2_matches`;
    other keyword arguments go to the converter (``ignored_as_negative`` for d2l).
    """
    lib = get_convention(library).library
    names = _MATCH_NAMES[lib]
    if lib == "assignlab (ours)":
        g = _index("gt_index", gt_index)
        _check_gt_index(g)
        values: tuple[Tensor, ...] = (g.clone(),)
    elif lib == "mmdetection":
        values = (to_mmdet_gt_inds(gt_index),)
    elif lib == "torchvision":
        values = (to_torchvision_matches(gt_index),)
    elif lib == "detectron2":
        values = to_detectron2_matches(gt_index, argmax)
    elif lib == "d2l":
        values = (to_d2l_anchor_map(gt_index, **kwargs),)
    else:  # the two Faster R-CNN codes
        values = to_rpn_labels(gt_index, argmax)
    return dict(zip(names, values))


def decode_match(encoded: dict[str, Tensor], library: str) -> Int[Tensor, "..."]:
    """The inverse of :func:`encode_match`: ``library``'s tensors (by its names) -> our ``gt_index``."""
    lib = get_convention(library).library
    names = _MATCH_NAMES[lib]
    missing = [n for n in names if n not in encoded]
    if missing:
        raise KeyError(f"encoded: {library} stores {names}, missing {missing}")
    parts = [encoded[n] for n in names]
    if lib == "assignlab (ours)":
        g = _index("gt_index", parts[0])
        _check_gt_index(g)
        return g.clone()
    if lib == "mmdetection":
        return from_mmdet_gt_inds(parts[0])
    if lib == "torchvision":
        return from_torchvision_matches(parts[0])
    if lib == "detectron2":
        return from_detectron2_matches(parts[0], parts[1])
    if lib == "d2l":
        return from_d2l_anchor_map(parts[0])
    return from_rpn_labels(parts[0], parts[1])


# ---------------------------------------------------------------------------------------------------------
# Class layout: background last (ours, mmdetection, detectron2) or first (py-faster-rcnn, torchvision, d2l)


def labels_to_background_first(labels: Int[Tensor, "..."], num_classes: int) -> Int[Tensor, "..."]:
    """Our labels (objects ``0 .. C-1``, background ``C``) -> background first (``0``; objects ``1 .. C``)."""
    lab = _index("labels", labels)
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) > num_classes):
        raise ValueError(f"labels: expected values in [0, {num_classes}] (background {num_classes})")
    return torch.where(lab == num_classes, 0, lab + 1)  # (...)


def labels_from_background_first(labels: Int[Tensor, "..."], num_classes: int) -> Int[Tensor, "..."]:
    """Background-first labels (``0`` background, objects ``1 .. C``) -> ours (objects ``0 .. C-1``, ``C``)."""
    lab = _index("labels", labels)
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) > num_classes):
        raise ValueError(f"labels: expected values in [0, {num_classes}] (background 0)")
    return torch.where(lab == 0, num_classes, lab - 1)  # (...)


def scores_to_background_first(scores: Float[Tensor, "... K"]) -> Float[Tensor, "... K"]:
    """Class scores ``(..., C + 1)`` with background last -> background in column 0."""
    s = _t(scores)
    return torch.cat([s[..., -1:], s[..., :-1]], dim=-1)  # (..., C + 1)


def scores_from_background_first(scores: Float[Tensor, "... K"]) -> Float[Tensor, "... K"]:
    """Class scores ``(..., C + 1)`` with background in column 0 -> background last."""
    s = _t(scores)
    return torch.cat([s[..., 1:], s[..., :1]], dim=-1)  # (..., C + 1)


def deltas_to_background_first(deltas: Float[Tensor, "... D"]) -> Float[Tensor, "... E"]:
    """Class-specific box deltas ``(..., 4 * C)`` (mmdetection, detectron2) -> ``(..., 4 * (C + 1))``.

    py-faster-rcnn (and torchvision) keep four never-trained outputs for the background in columns 0..3,
    so that class ``K`` (1-based) reads columns ``4K .. 4K + 3``; here they are zeros.
    """
    d = _t(deltas)
    if d.shape[-1] % 4:
        raise ValueError(f"deltas: last dim must be a multiple of 4, got {d.shape[-1]}")
    return torch.cat([d.new_zeros((*d.shape[:-1], 4)), d], dim=-1)  # (..., 4 * (C + 1))


def deltas_from_background_first(deltas: Float[Tensor, "... E"]) -> Float[Tensor, "... D"]:
    """Box deltas ``(..., 4 * (C + 1))`` with the background's four first -> ``(..., 4 * C)``."""
    d = _t(deltas)
    if d.shape[-1] % 4 or d.shape[-1] < 4:
        raise ValueError(f"deltas: last dim must be a positive multiple of 4, got {d.shape[-1]}")
    return d[..., 4:]  # (..., 4 * C)


def delta_columns(label: int, background: str = "last") -> range:
    """The four columns of class-specific box deltas that belong to class ``label``.

    ``background="last"`` (ours, mmdetection, detectron2): label ``k`` in ``0 .. C-1`` reads ``4k .. 4k+3``.
    ``background="first"`` (py-faster-rcnn, torchvision): label ``K`` in ``1 .. C`` reads ``4K .. 4K+3``;
    ``0 .. 3`` belong to the background and are never trained.
    """
    if background not in ("first", "last"):
        raise ValueError(f"background: 'first' or 'last', got {background!r}")
    if background == "first" and label < 1:
        raise ValueError("label: background-first object labels start at 1 (0 is the background)")
    return range(4 * label, 4 * label + 4)


def roi_head_sizes(num_classes: int, library: str = "ours") -> tuple[int, int]:
    """``(class scores, box deltas)`` per RoI of a class-specific Faster R-CNN head for ``C`` object classes.

    Background first (py-faster-rcnn, torchvision, simple-faster-rcnn, d2l): ``(C + 1, 4 * (C + 1))``, e.g.
    ``(21, 84)`` for the 20 VOC classes. Background last (ours, mmdetection, detectron2):
    ``(C + 1, 4 * C)``, e.g. ``(21, 80)``. ``num_classes`` never counts the background here.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: need at least one object class, got {num_classes}")
    convention = get_convention(library)
    if convention.library == "d2l":
        raise ValueError("library: d2l's detector (SSD) has no RoI head; it regresses 4 deltas per anchor")
    first = convention.background == "first"
    return num_classes + 1, 4 * (num_classes + 1 if first else num_classes)


# ---------------------------------------------------------------------------------------------------------
# The tour's rule (notebook 00): MaxIoU without its extras, and the cases its exercise is checked on


def max_iou_rule(iou: Float[Tensor, "N M"], pos_thr: float = 0.5, neg_thr: float = 0.4) -> Int[Tensor, " N"]:
    """The simplest MaxIoU assignment: ``gt_index (N,)`` in our encoding from ``iou (N, M)``.

    1. each anchor's best IoU and its gt (equal IoUs: the lower gt index);
    2. best IoU ``>= pos_thr``: a positive of that gt;
    3. best IoU ``< neg_thr``: a negative (-1);
    4. in between: ignored (-2). No gt (M = 0): every anchor is a negative.
    """
    n, m = iou.shape
    if m == 0:
        return torch.full((n,), NEGATIVE, dtype=torch.int64)
    best, arg = iou.max(dim=1)  # (N,), (N,): torch returns the first index among equal maxima
    return torch.where(best >= pos_thr, arg, torch.where(best < neg_thr, NEGATIVE, IGNORED))  # (N,)


def max_iou_rule_cases() -> list:
    """The boundary cases notebook 00's exercise is checked on: ``my_assign(iou) -> gt_index``."""
    from exportable.anchors import AnchorGenerator
    from exportable.boxes import box_iou
    from lessons.check import Case
    from lessons.scenes import toy_scene

    def case(name: str, iou: list | Tensor) -> Case:
        t = torch.as_tensor(iou, dtype=torch.float32)
        return Case(name, (t,), max_iou_rule(t))

    toy = toy_scene()
    toy_anchors = AnchorGenerator(strides=[8], ratios=(0.5, 1.0, 2.0), scales=(4,), base_sizes=(8,)).grid_anchors(
        [(6, 8)])[0]
    return [
        case("IoU exactly 0.5 is positive (>= 0.5, not > 0.5)", [[0.5, 0.1], [0.1, 0.5]]),
        case("IoU exactly 0.4 is ignored: negatives are < 0.4", [[0.4, 0.0], [0.0, 0.45]]),
        case("just below 0.4 is negative", [[0.3999, 0.2], [0.0, 0.0]]),
        case("equal best IoUs: the lower gt index wins", [[0.6, 0.6], [0.2, 0.2]]),
        case("the best gt decides, not the first one above the threshold", [[0.55, 0.8], [0.45, 0.3]]),
        Case("no gts: every anchor is negative", (torch.zeros(3, 0),), torch.full((3,), NEGATIVE)),
        case("the toy scene's 144 anchors", box_iou(toy_anchors, toy.boxes)),
    ]
