"""Figures for the lessons: boxes, anchors, IoU maps, matrices and assignments.

Every function draws with matplotlib's object API and **returns the Figure**; none calls
``plt.show()`` or touches pyplot's global state, so they run headless (Agg) in tests and CI. In
a notebook, a Figure that is the value of a cell is displayed once (:class:`LessonFigure`).
Pass ``ax=`` to draw into an Axes of your own (a subplot grid, say); that Axes' Figure is
returned, and if pyplot made it, end the cell's last line with ``;`` or the inline backend and
the cell's value both show it.

Conventions: boxes are ``(x1, y1, x2, y2)`` in absolute pixels; images are ``(H, W, 3)`` (or
``(H, W)``) arrays drawn so that pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``, which
puts a box edge at ``x = 0`` on the image's left border and a point at ``(j + 0.5) * stride`` in
the middle of its cell. Inputs may be torch tensors, numpy arrays or lists.

Colours: gt ``j`` (or class ``k`` when boxes are coloured by label) is ``color_for(j)`` in every
figure; negatives are faint grey dots, ignored priors black crosses.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

__all__ = [
    "LessonFigure",
    "anchor_levels",
    "assignment_map",
    "assignment_panels",
    "color_for",
    "iou_heatmap",
    "matrix_heatmap",
    "show_anchors",
    "show_boxes",
]

# tab10 without its grey (index 7), which is kept for negatives.
_PALETTE = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
NEGATIVE_COLOR = (0.55, 0.55, 0.55, 0.35)
IGNORED_COLOR = (0.0, 0.0, 0.0, 0.75)

ImageLike = Any  # (H, W, 3) / (H, W) array or tensor, an (H, W) size for a blank canvas, or None


class LessonFigure(Figure):
    """A matplotlib Figure on an Agg canvas that shows itself as PNG when it is a cell's value.

    pyplot is never involved, so a notebook shows it exactly once (pyplot figures returned from
    a cell are shown twice: once by the inline backend, once as the value), and scripts and
    tests stay headless.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _new_figure(width: float, height: float) -> LessonFigure:
    return LessonFigure(figsize=(width, height), layout="constrained")


def color_for(index: int) -> tuple[float, float, float, float]:
    """The RGBA colour of gt (or class, or level) ``index``; the same in every figure."""
    return to_rgba(_PALETTE[int(index) % len(_PALETTE)])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _np(x: Any) -> np.ndarray:
    """Tensor / array / list as a numpy array on the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_image(image: ImageLike) -> np.ndarray | tuple[int, int] | None:
    if image is None:
        return None
    if isinstance(image, tuple) and len(image) == 2 and all(isinstance(v, (int, np.integer)) for v in image):
        return int(image[0]), int(image[1])
    img = _np(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)  # (3, H, W) -> (H, W, 3), torchvision's layout
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {img.shape}")
    return img


def _figure_for(hw: tuple[int, int] | None, width: float = 6.4) -> tuple[Figure, Axes]:
    """A new Figure with one Axes, sized to the image's aspect, on an Agg canvas."""
    if hw is None:
        height = width * 0.75
    else:
        height = min(max(width * hw[0] / max(hw[1], 1), 2.5), 9.0)
    fig = _new_figure(width, height + 0.4)
    return fig, fig.add_subplot()


def _setup(image: ImageLike, ax: Axes | None, width: float = 6.4) -> tuple[Figure, Axes, tuple | None]:
    """Figure and Axes to draw on, with the image (if any) drawn; returns its ``(H, W)`` too."""
    img = _as_image(image)
    hw = None if img is None else (img if isinstance(img, tuple) else img.shape[:2])
    if ax is None:
        fig, ax = _figure_for(hw, width)
    else:
        fig = ax.figure
    if isinstance(img, np.ndarray):
        h, w = img.shape[:2]
        small = max(h, w) <= 160  # show the pixels of a toy image
        ax.imshow(
            img,
            extent=(0, w, h, 0),
            interpolation="nearest" if small else "antialiased",
            cmap="gray" if img.ndim == 2 else None,
            zorder=0,
        )
    if hw is not None:
        ax.set_xlim(0, hw[1])
        ax.set_ylim(hw[0], 0)
    else:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    return fig, ax, hw


def _boxes(boxes: Any) -> np.ndarray:
    b = _np(boxes).astype(np.float64)
    if b.ndim == 3 and b.shape[0] == 1:
        b = b[0]  # (1, M, 4) -> (M, 4): one image of a batch
    b = b.reshape(-1, 4) if b.size else np.zeros((0, 4))
    return b


def _rect(box: Sequence[float], **kw: Any) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **kw)


def _grow_limits(ax: Axes, hw: tuple | None, xs: np.ndarray, ys: np.ndarray) -> None:
    """Widen the view to show everything drawn, keeping the image's frame and y pointing down."""
    if xs.size == 0:
        return
    x_lo, x_hi = float(np.min(xs)), float(np.max(xs))
    y_lo, y_hi = float(np.min(ys)), float(np.max(ys))
    if hw is not None:
        x_lo, x_hi = min(x_lo, 0.0), max(x_hi, float(hw[1]))
        y_lo, y_hi = min(y_lo, 0.0), max(y_hi, float(hw[0]))
    pad = 0.02 * max(x_hi - x_lo, y_hi - y_lo, 1.0)
    ax.set_xlim(x_lo - pad, x_hi + pad)
    ax.set_ylim(y_hi + pad, y_lo - pad)


def _label_box(ax: Axes, box: np.ndarray, text: str, color: Any) -> None:
    ax.text(
        box[0],
        box[1],
        text,
        fontsize=8,
        color="white",
        va="bottom",
        ha="left",
        bbox={"facecolor": color, "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
        clip_on=True,
        zorder=5,
    )


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def show_boxes(
    image: ImageLike,
    boxes: Any,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    color: Any = None,
    linestyle: str = "-",
    *,
    color_by: str = "label",
    linewidth: float = 2.0,
    show_text: bool = True,
) -> Figure:
    """Draw boxes ``(M, 4)`` = ``(x1, y1, x2, y2)`` pixels over an image; one Rectangle per box.

    Args:
        image: ``(H, W, 3)`` / ``(H, W)`` array or tensor, an ``(H, W)`` tuple for a blank canvas,
            or None.
        boxes: ``(M, 4)`` (or ``(1, M, 4)``).
        labels: ``(M,)`` class indices, optional.
        class_names: names of the class indices, for the text on each box.
        ax: draw into this Axes instead of a new Figure.
        title: the Axes title.
        color: one colour for every box (overrides ``color_by``).
        linestyle: matplotlib line style, e.g. ``"--"`` for predictions over solid gts.
        color_by: ``"label"`` (class ``k`` gets ``color_for(k)``; the default when labels are
            given) or ``"index"`` (box ``j`` gets ``color_for(j)``, as gt ``j`` in
            :func:`assignment_map`).
        linewidth: line width in points.
        show_text: write ``"j: name"`` on each box.

    Returns:
        The Figure.
    """
    fig, ax, hw = _setup(image, ax)
    b = _boxes(boxes)
    lab = None if labels is None else _np(labels).reshape(-1).astype(np.int64)
    if lab is not None and lab.shape[0] != b.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {lab.shape[0]} labels")
    for j, box in enumerate(b):
        if color is not None:
            c = to_rgba(color)
        elif color_by == "label" and lab is not None:
            c = color_for(lab[j])
        else:
            c = color_for(j)
        ax.add_patch(_rect(box, edgecolor=c, linewidth=linewidth, linestyle=linestyle, zorder=4))
        if show_text:
            if lab is None:
                text = f"{j}"
            elif class_names is not None and 0 <= lab[j] < len(class_names):
                text = f"{j}: {class_names[lab[j]]}"
            else:
                text = f"{j}: class {lab[j]}"
            _label_box(ax, box, text, c)
    if hw is None and b.size:
        _grow_limits(ax, None, b[:, 0::2], b[:, 1::2])
    if title is not None:
        ax.set_title(title)
    return fig


def _anchors_per_location(anchors: np.ndarray) -> int:
    """A, read off the data: how many leading rows share the first row's centre."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    same = np.all(np.isclose(centres, centres[:1]), axis=1)
    a = int(np.argmin(same)) if not same.all() else len(anchors)
    return a if a > 0 and len(anchors) % a == 0 else 1


def show_anchors(
    image: ImageLike,
    anchors: Any,
    level_ids: Any = None,
    every: int | None = None,
    centres_only: bool = False,
    *,
    at: tuple[float, float] | None = None,
    max_locations: int = 4,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Draw anchors ``(N, 4)`` (or points ``(N, 2)``) level by level, subsampled to stay readable.

    Anchors are expected in the package's order: level by level, location-major within a level
    (``(y * W + x) * A + a``). The number A of anchors per location is read off the data (rows
    that share a centre). One colour per level.

    Args:
        image: the image, an ``(H, W)`` tuple for a blank canvas, or None.
        anchors: ``(N, 4)`` boxes ``(x1, y1, x2, y2)``, or ``(N, 2)`` points (drawn as centres).
        level_ids: ``(N,)`` level of each anchor; None means one level.
        every: draw the anchors of every ``every``-th location of each level. None: at most
            ``max_locations`` locations per level, evenly spread over the level.
        centres_only: draw only centre dots (of every ``every``-th location, all if None).
        at: ``(x, y)`` pixels: draw the anchors of the location nearest this point on each level
            instead (the classic "all anchors at one place" picture).
        max_locations: see ``every``.
        ax, title: as in :func:`show_boxes`.

    Returns:
        The Figure: one Rectangle per anchor drawn, one dot collection per level.
    """
    fig, ax, hw = _setup(image, ax)
    arr = _np(anchors).astype(np.float64)
    is_points = arr.ndim == 2 and arr.shape[1] == 2
    arr = arr.reshape(-1, 2 if is_points else 4)
    levels = np.zeros(len(arr), dtype=np.int64) if level_ids is None else _np(level_ids).reshape(-1)
    if len(levels) != len(arr):
        raise ValueError(f"{len(arr)} anchors but {len(levels)} level ids")
    xs_all, ys_all = [], []
    handles = []
    for level in np.unique(levels):
        rows = arr[levels == level]  # (n_l, 4) or (n_l, 2)
        c = color_for(int(level))
        a = 1 if is_points else _anchors_per_location(rows)
        n_loc = len(rows) // a
        if at is not None:
            centres = rows if is_points else (rows[:, :2] + rows[:, 2:]) / 2
            d = np.sum((centres[::a] - np.asarray(at, dtype=np.float64)) ** 2, axis=1)
            locs = np.array([int(np.argmin(d))])
        elif every is not None:
            locs = np.arange(0, n_loc, max(int(every), 1))
        elif centres_only or is_points:
            locs = np.arange(n_loc)
        else:
            locs = np.unique(np.linspace(0, n_loc - 1, min(n_loc, max_locations)).round().astype(np.int64))
        if centres_only or is_points:
            picked = locs * a  # one row per location: its centre
        else:
            picked = (locs[:, None] * a + np.arange(a)[None, :]).reshape(-1)  # (len(locs) * A,)
        chosen = rows[picked]
        centres = chosen if is_points else (chosen[:, :2] + chosen[:, 2:]) / 2
        ax.scatter(centres[:, 0], centres[:, 1], s=6, color=c, zorder=3, linewidths=0)
        if not (centres_only or is_points):
            for box in chosen:
                ax.add_patch(_rect(box, edgecolor=c, linewidth=1.0, alpha=0.8, zorder=2))
            xs_all.append(chosen[:, 0::2])
            ys_all.append(chosen[:, 1::2])
        else:
            xs_all.append(centres[:, 0])
            ys_all.append(centres[:, 1])
        what = "points" if is_points else f"anchors ({a} per location)"
        handles.append(
            Line2D(
                [],
                [],
                color=c,
                marker="s" if not is_points else "o",
                linestyle="",
                label=f"level {int(level)}: {len(rows)} {what}",
            )
        )
    if xs_all:
        _grow_limits(
            ax,
            hw,
            np.concatenate([x.reshape(-1) for x in xs_all]),
            np.concatenate([y.reshape(-1) for y in ys_all]),
        )
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.8)
    if title is not None:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# Heat maps
# --------------------------------------------------------------------------------------------


def _infer_stride(hw: tuple[int, int], fh: int, fw: int) -> float:
    """The stride s with ``ceil(H / s), ceil(W / s) == fh, fw``: a power of two if one fits."""
    guess = 2.0 ** round(np.log2(hw[1] / fw))
    if -(-hw[0] // guess) == fh and -(-hw[1] // guess) == fw:
        return guess
    return hw[1] / fw


def iou_heatmap(
    iou: Any,
    featmap_hw: tuple[int, int],
    image: ImageLike = None,
    *,
    stride: float | None = None,
    offset: float = 0.0,
    anchor: int | None = None,
    gt_box: Any = None,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    alpha: float = 0.6,
    colorbar: bool = True,
) -> Figure:
    """The IoU of one gt with every anchor of one level, as a map over that level's grid.

    Args:
        iou: ``(H * W * A,)`` values in the package's anchor order ``(y * W + x) * A + a`` (or
            already ``(H, W, A)`` / ``(H, W)``), for one gt and one level.
        featmap_hw: ``(H, W)`` of the level's feature map.
        image: drawn underneath; each cell covers ``stride x stride`` pixels of it.
        stride: the level's stride in pixels. None: read off the image (the power of two ``s``
            with ``ceil(image H / s), ceil(image W / s) == H, W``, else ``image W / W``); without
            an image, 1 (cell units).
        offset: where the level's anchors are centred in their cells, in strides: 0 for the
            package's anchors (``AnchorGenerator``'s default ``center_offset=0``, mmdetection's:
            anchor ``(y, x)`` is centred on ``(x * stride, y * stride)``), 0.5 for points (cell
            centres). Each value is drawn as a stride-wide square centred on its anchor's centre.
        anchor: show anchor ``a`` of each location instead of the max over the A anchors.
        gt_box: ``(4,)`` box to outline.
        ax, title: as in :func:`show_boxes`.
        cmap, alpha: colour map and opacity of the map (IoU 0 to 1).
        colorbar: add a colour bar.

    Returns:
        The Figure; its map is an ``(H, W)`` image: ``iou.reshape(H, W, A).max(-1)``.
    """
    fh, fw = int(featmap_hw[0]), int(featmap_hw[1])
    values = _np(iou).astype(np.float64).reshape(-1)
    cells = fh * fw
    if cells == 0 or values.size % cells != 0:
        raise ValueError(f"{values.size} IoU values do not fill a {fh} x {fw} grid with A anchors each")
    a = values.size // cells
    grid = values.reshape(fh, fw, a)  # (H, W, A)
    grid = grid.max(axis=-1) if anchor is None else grid[..., int(anchor)]  # (H, W)
    fig, ax, hw = _setup(image, ax)
    if stride is None:
        stride = _infer_stride(hw, fh, fw) if hw is not None else 1.0
    lo = (offset - 0.5) * stride  # each square is centred on its anchor's centre
    extent = (lo, lo + fw * stride, lo + fh * stride, lo)
    im = ax.imshow(
        grid, extent=extent, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="nearest", zorder=1
    )
    if hw is None:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    if gt_box is not None:
        box = _boxes(gt_box)[0]
        ax.add_patch(_rect(box, edgecolor="red", linewidth=2.0, zorder=4))
    if colorbar:
        label = "IoU" if anchor is not None else f"max IoU over {a} anchors"
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    if title is not None:
        ax.set_title(title)
    else:
        best = np.unravel_index(int(np.argmax(grid)), grid.shape)
        ax.set_title(
            f"{fh} x {fw} grid, stride {stride:g}: "
            f"best IoU {grid[best]:.3f} at cell y={best[0]}, x={best[1]}",
            fontsize=9,
        )
    return fig


def _cell_text(v: float, fmt: str) -> str:
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, fmt)


def matrix_heatmap(
    matrix: Any,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    *,
    ax: Axes | None = None,
    annotate: bool | None = None,
    fmt: str = ".2f",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """A matrix as coloured cells: an IoU table ``(N, M)``, a cost matrix ``(M, N)``, ...

    Args:
        matrix: 2-D values (a 1-D vector is drawn as one row). NaN and +-inf are drawn grey and
            left out of the colour range.
        row_labels, col_labels: tick labels; default row / column indices (when not too many).
        title: the Axes title.
        ax: draw into this Axes.
        annotate: print each value in its cell; None prints when there are at most 400 cells.
        fmt: format of the printed values.
        cmap, vmin, vmax: colour map and range (default: the finite values' min and max).
        xlabel, ylabel: axis labels.

    Returns:
        The Figure (one text per cell when annotated).
    """
    m = _np(matrix).astype(np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    rows, cols = m.shape
    if ax is None:
        width = min(max(0.45 * cols + 2.0, 4.0), 12.0)
        height = min(max(0.35 * rows + 1.2, 2.5), 10.0)
        fig = _new_figure(width, height)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    finite = np.isfinite(m)
    lo = vmin if vmin is not None else (float(m[finite].min()) if finite.any() else 0.0)
    hi = vmax if vmax is not None else (float(m[finite].max()) if finite.any() else 1.0)
    colours = colormaps[cmap].with_extremes(bad=(0.8, 0.8, 0.8, 1.0))
    im = ax.imshow(
        np.ma.masked_invalid(m),
        cmap=colours,
        vmin=lo,
        vmax=hi,
        interpolation="nearest",
        aspect="equal" if max(rows, cols) <= 40 else "auto",
    )
    fig.colorbar(im, ax=ax, shrink=0.8)
    if annotate is None:
        annotate = rows * cols <= 400
    if annotate:
        span = hi - lo if hi > lo else 1.0
        for i in range(rows):
            for j in range(cols):
                v = m[i, j]
                if np.isfinite(v):
                    r, g, b, _ = colours((v - lo) / span)
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                else:
                    dark = False
                ax.text(
                    j,
                    i,
                    _cell_text(v, fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    if row_labels is not None:
        ax.set_yticks(range(rows), [str(s) for s in row_labels])
    elif rows <= 50:
        ax.set_yticks(range(rows))
    if col_labels is not None:
        ax.set_xticks(range(cols), [str(s) for s in col_labels], rotation=90 if cols > 12 else 0)
    elif cols <= 50:
        ax.set_xticks(range(cols))
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# Assignments
# --------------------------------------------------------------------------------------------


def assignment_map(
    image: ImageLike,
    priors: Any,
    gt_boxes: Any,
    gt_index: Any,
    *,
    gt_labels: Any = None,
    class_names: Sequence[str] | None = None,
    gt_mask: Any = None,
    show_prior_boxes: bool = False,
    max_negatives: int | None = 4000,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Which prior learns which gt: positives in their gt's colour, negatives grey, ignored crosses.

    Args:
        image: the image, an ``(H, W)`` tuple, or None.
        priors: ``(N, 4)`` anchors ``(x1, y1, x2, y2)`` or ``(N, 2)`` points; drawn at their centres.
        gt_boxes: ``(M, 4)`` gts of this image (``(1, M, 4)`` is accepted).
        gt_index: ``(N,)`` the package's encoding: ``>= 0`` matched gt, ``-1`` negative,
            ``-2`` ignored (``AssignResult.gt_index`` of one image).
        gt_labels, class_names: name each gt in the legend.
        gt_mask: ``(M,)`` which gt rows are real (padding rows are not drawn).
        show_prior_boxes: also draw each positive anchor's box (anchors only).
        max_negatives: draw at most this many negatives (evenly spaced); the legend counts all.
        ax, title: as in :func:`show_boxes`.

    Returns:
        The Figure: one Rectangle per drawn gt (plus one per positive anchor with
        ``show_prior_boxes``), one dot collection per gt with positives, one for negatives, one
        for ignored priors, and a legend with the counts.
    """
    fig, ax, hw = _setup(image, ax, width=8.0)
    p = _np(priors).astype(np.float64)
    is_points = p.ndim == 2 and p.shape[1] == 2
    p = p.reshape(-1, 2 if is_points else 4)
    centres = p if is_points else (p[:, :2] + p[:, 2:]) / 2  # (N, 2)
    idx = _np(gt_index).astype(np.int64)
    if idx.ndim == 2 and idx.shape[0] == 1:
        idx = idx[0]
    idx = idx.reshape(-1)
    if len(idx) != len(p):
        raise ValueError(f"{len(p)} priors but gt_index has {len(idx)} entries")
    boxes = _boxes(gt_boxes)
    m = len(boxes)
    if idx.size and idx.max() >= m:
        raise ValueError(f"gt_index refers to gt {int(idx.max())} but there are only {m} gts")
    valid = np.ones(m, dtype=bool) if gt_mask is None else _np(gt_mask).astype(bool).reshape(-1)
    labels = None if gt_labels is None else _np(gt_labels).astype(np.int64).reshape(-1)

    neg = np.flatnonzero(idx == -1)
    ign = np.flatnonzero(idx < -1)
    handles = []
    shown_neg = neg
    if max_negatives is not None and len(neg) > max_negatives:
        shown_neg = neg[np.linspace(0, len(neg) - 1, max_negatives).round().astype(np.int64)]
    size = 10.0 if len(p) <= 2000 else 4.0
    ax.scatter(
        centres[shown_neg, 0],
        centres[shown_neg, 1],
        s=size * 0.6,
        color=NEGATIVE_COLOR,
        linewidths=0,
        zorder=1,
    )
    ax.scatter(
        centres[ign, 0],
        centres[ign, 1],
        s=size * 1.5,
        marker="x",
        color=IGNORED_COLOR,
        linewidths=0.8,
        zorder=2,
    )
    n_pos = 0
    for j in range(m):
        pos = np.flatnonzero(idx == j)
        n_pos += len(pos)
        if not valid[j]:
            continue
        c = color_for(j)
        ax.add_patch(_rect(boxes[j], edgecolor=c, linewidth=2.2, zorder=4))
        if len(pos):
            ax.scatter(
                centres[pos, 0],
                centres[pos, 1],
                s=size * 2.5,
                color=c,
                edgecolors="white",
                linewidths=0.5,
                zorder=3,
            )
            if show_prior_boxes and not is_points:
                for i in pos:
                    ax.add_patch(_rect(p[i], edgecolor=c, linewidth=0.8, alpha=0.6, zorder=3))
        name = f"gt {j}"
        if labels is not None:
            k = int(labels[j])
            name += f" ({class_names[k] if class_names is not None and 0 <= k < len(class_names) else k})"
        label = f"{name}: {len(pos)} positive"
        handles.append(Line2D([], [], color=c, marker="o", linestyle="-", label=label))
    handles.append(
        Line2D([], [], color=NEGATIVE_COLOR, marker="o", linestyle="", label=f"negative: {len(neg)}")
    )
    handles.append(
        Line2D([], [], color=IGNORED_COLOR, marker="x", linestyle="", label=f"ignored: {len(ign)}")
    )
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    if hw is None:
        everything = np.concatenate([centres, boxes[valid, :2], boxes[valid, 2:]])
        _grow_limits(ax, None, everything[:, 0], everything[:, 1])
    ax.set_title(
        title if title is not None else f"{n_pos} positive, {len(neg)} negative, {len(ign)} ignored",
        fontsize=10,
    )
    return fig


def assignment_panels(
    image: ImageLike,
    priors: Any,
    gt_boxes: Any,
    gt_index: Any,
    anchors_per_location: int,
    *,
    shape_names: Sequence[str] | None = None,
    gt_labels: Any = None,
    class_names: Sequence[str] | None = None,
    show_prior_boxes: bool = True,
    title: str | None = None,
) -> Figure:
    """:func:`assignment_map` with one panel per anchor shape, so that no two markers share a point.

    The A anchors of a location share its centre; drawn in one panel, their markers stack and hide each
    other. Panel ``a`` shows anchor ``a`` of every location (rows ``a::A`` of the package's
    location-major order), so each location has exactly one marker per panel.

    Args:
        image, priors, gt_boxes, gt_index, gt_labels, class_names, show_prior_boxes: as in
            :func:`assignment_map`; ``priors (N, 4)`` with ``N = locations * anchors_per_location``.
        anchors_per_location: A.
        shape_names: one title per panel (e.g. ``"h/w 0.5"``); default ``"anchor a"``.
        title: the Figure's title.

    Returns:
        The Figure: one Axes per anchor shape, the legend (with the counts of all panels) on the right.
    """
    a = int(anchors_per_location)
    p = _np(priors).reshape(-1, 4)
    idx = _np(gt_index).astype(np.int64).reshape(-1)
    if a < 1 or len(p) % a or len(idx) != len(p):
        raise ValueError(f"{len(p)} priors, {len(idx)} gt_index entries: not a multiple of {a} per location")
    img = _as_image(image)
    hw = img if isinstance(img, tuple) or img is None else img.shape[:2]
    width = 4.2
    height = width * (hw[0] / hw[1] if hw is not None else 0.75) + 0.6
    fig = LessonFigure(figsize=(width * a + 2.2, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, a)).reshape(-1)
    for k, ax in enumerate(axes):
        name = shape_names[k] if shape_names is not None else f"anchor {k}"
        sub = idx[k::a]
        assignment_map(image, p[k::a], gt_boxes, sub, gt_labels=gt_labels, class_names=class_names,
                       show_prior_boxes=show_prior_boxes, max_negatives=None, ax=ax,
                       title=f"{name}: {int((sub >= 0).sum())} pos, {int((sub == -1).sum())} neg, "
                       f"{int((sub < -1).sum())} ign")
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
    counts = [int((idx == j).sum()) for j in range(int(idx.max()) + 1 if (idx >= 0).any() else 0)]
    labels = None if gt_labels is None else _np(gt_labels).astype(np.int64).reshape(-1)
    handles = []
    for j, n in enumerate(counts):
        name = f"gt {j}"
        if labels is not None and j < len(labels):
            k = int(labels[j])
            name += f" ({class_names[k] if class_names is not None and 0 <= k < len(class_names) else k})"
        handles.append(Line2D([], [], color=color_for(j), marker="o", linestyle="-", label=f"{name}: {n} positive"))
    n_neg, n_ign = int((idx == -1).sum()), int((idx < -1).sum())
    handles.append(Line2D([], [], color=NEGATIVE_COLOR, marker="o", linestyle="", label=f"negative: {n_neg}"))
    handles.append(Line2D([], [], color=IGNORED_COLOR, marker="x", linestyle="", label=f"ignored: {n_ign}"))
    axes[-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), framealpha=0.9)
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig


def anchor_levels(
    image: ImageLike,
    anchors: Any,
    level_ids: Any,
    at: tuple[float, float],
    *,
    strides: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per pyramid level: the A anchors of the location nearest ``at``, and the level's grid.

    The readable version of "all anchors at once": every panel shows the image, the level's anchor
    centres as small dots (every location of the level), and the A boxes of one location in the level's
    colour; the view grows to show boxes that stick out of the image (the coarse levels' do).

    Args:
        image: the image (or an ``(H, W)`` size).
        anchors: ``(N, 4)`` anchors of all levels, level by level, location-major within a level.
        level_ids: ``(N,)`` level of each anchor.
        at: ``(x, y)`` pixels; each panel draws the location nearest it.
        strides: per level, for the panel titles.
        title: the Figure's title.

    Returns:
        The Figure: one Axes per level.
    """
    arr = _np(anchors).astype(np.float64).reshape(-1, 4)
    levels = _np(level_ids).reshape(-1)
    if len(levels) != len(arr):
        raise ValueError(f"{len(arr)} anchors but {len(levels)} level ids")
    ids = [int(v) for v in np.unique(levels)]
    fig = LessonFigure(figsize=(3.6 * len(ids), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(ids))).reshape(-1)
    for ax, level in zip(axes, ids):
        rows = arr[levels == level]
        a = _anchors_per_location(rows)
        show_anchors(image, rows, np.full(len(rows), level), at=at, ax=ax)
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        centres = (rows[::a, :2] + rows[::a, 2:]) / 2  # (H_l * W_l, 2): one per location
        if len(centres) <= 5000:
            ax.scatter(centres[:, 0], centres[:, 1], s=1.0, color="white", alpha=0.7, linewidths=0, zorder=1)
        stride = f"stride {strides[level]:g}, " if strides is not None and level < len(strides) else ""
        ax.set_title(f"level {level}: {stride}{len(rows) // a:,} locations x {a}", fontsize=9)
        ax.tick_params(labelsize=7)
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig
