"""Figures for notebooks 02 (RPN anchor targets) and 03 (proposals and NMS).

Every function draws with matplotlib's object API into a :class:`lessons.draw.LessonFigure` (or into
the Axes you pass) and returns the Figure; nothing touches pyplot, so they run headless. Boxes are
``(x1, y1, x2, y2)`` in absolute pixels, images ``(H, W, 3)`` arrays or an ``(H, W)`` tuple for a blank
canvas, as in :mod:`lessons.draw`, whose colours (``color_for``) they share.

- :func:`inside_regions` -- for each anchor shape, where its centre must lie for the anchor to be
  inside the image, and how many grid centres do (notebook 02, section 2);
- :func:`sample_on_image` -- the RPN's sampled anchors: positives by gt, negatives as white dots (notebook 02);
- :func:`nms_steps` -- greedy NMS round by round (notebook 03, section 1);
- :func:`nms_comparison` -- greedy, class-aware and Soft-NMS side by side (notebook 03, section 2);
- :func:`funnel` -- how many boxes survive each stage of the proposal creator (notebook 03, section 4);
- :func:`proposals_on_image` -- the best proposals over the image (notebook 03, section 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from lessons.draw import LessonFigure, assignment_map, color_for, show_boxes

__all__ = ["funnel", "inside_regions", "nms_comparison", "nms_steps", "proposals_on_image", "sample_on_image"]

SUPPRESSED_COLOR = (0.85, 0.1, 0.1, 1.0)


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _rect(box: Sequence[float], **kw: Any) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, **kw)


def _canvas(ax: Axes, image: Any, hw: tuple[int, int]) -> None:
    """The image (or a blank canvas of size ``hw``) with its frame, y pointing down."""
    show_boxes(image if image is not None else hw, np.zeros((0, 4)), ax=ax)
    ax.add_patch(_rect((0, 0, hw[1], hw[0]), fill=False, edgecolor="black", linewidth=1.0, zorder=1))


# --------------------------------------------------------------------------------------------
# Notebook 02: which anchors lie inside the image
# --------------------------------------------------------------------------------------------


def inside_regions(
    image_hw: tuple[int, int],
    base_anchors: Any,
    stride: float,
    featmap_hw: tuple[int, int],
    *,
    inclusive: bool = True,
    ncols: int = 3,
    title: str | None = None,
) -> Figure:
    """One panel per base anchor: the region its centre must stay in, and the grid centres that do.

    An anchor ``(cx + x1, cy + y1, cx + x2, cy + y2)`` (``base_anchors`` row ``(x1, y1, x2, y2)``, centred
    at 0) lies inside an ``(H, W)`` image iff its centre is in ``[-x1, W - x2] x [-y1, H - y2]`` (the image
    shrunk by half the anchor). The centres ``(stride * x, stride * y)`` of the ``featmap_hw`` grid inside
    that region are drawn in the anchor's colour, the others as grey dots; one anchor is drawn at the
    first inside centre (or dashed red at the image centre when none fits). The panel title counts them.

    Returns:
        The Figure: one Axes per base anchor.
    """
    base = _np(base_anchors).astype(np.float32).reshape(-1, 4)
    h, w = (float(v) for v in image_hw)
    fh, fw = featmap_hw
    xs = (np.arange(fw, dtype=np.float32) * np.float32(stride))  # (W',)
    ys = (np.arange(fh, dtype=np.float32) * np.float32(stride))  # (H',)
    gx, gy = np.meshgrid(xs, ys)  # (H', W') each
    nrows = math.ceil(len(base) / ncols)
    fig = LessonFigure(figsize=(4.2 * ncols, 4.2 * nrows * h / w + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for a, (ax, (x1, y1, x2, y2)) in enumerate(zip(axes, base)):
        c = color_for(a)
        if inclusive:
            ok = (gx + x1 >= 0) & (gy + y1 >= 0) & (gx + x2 <= w) & (gy + y2 <= h)  # (H', W')
        else:
            ok = (gx + x1 >= 0) & (gy + y1 >= 0) & (gx + x2 < w) & (gy + y2 < h)  # (H', W')
        _canvas(ax, None, (int(h), int(w)))
        lo_x, hi_x, lo_y, hi_y = -x1, w - x2, -y1, h - y2
        if hi_x >= lo_x and hi_y >= lo_y:
            ax.add_patch(_rect((lo_x, lo_y, hi_x, hi_y), facecolor=(*c[:3], 0.15), edgecolor=c, linewidth=1.0))
        ax.scatter(gx[~ok], gy[~ok], s=1.0, color=(0.6, 0.6, 0.6, 0.6), linewidths=0)
        ax.scatter(gx[ok], gy[ok], s=2.5, color=c, linewidths=0)
        if ok.any():
            i, j = np.argwhere(ok)[0]
            cx, cy = float(gx[i, j]), float(gy[i, j])
            ax.add_patch(_rect((cx + x1, cy + y1, cx + x2, cy + y2), fill=False, edgecolor=c, linewidth=2.0))
        else:
            cx, cy = w / 2, h / 2
            ax.add_patch(_rect((cx + x1, cy + y1, cx + x2, cy + y2), fill=False, edgecolor=SUPPRESSED_COLOR,
                               linewidth=1.5, linestyle="--"))
        pad = 0.05 * w
        ax.set_xlim(min(0.0, float(gx.min()), cx + x1) - pad, max(w, float(gx.max()), cx + x2) + pad)
        ax.set_ylim(max(h, float(gy.max()), cy + y2) + pad, min(0.0, float(gy.min()), cy + y1) - pad)
        ax.set_title(f"a={a}: {x2 - x1:.0f} x {y2 - y1:.0f} px, {int(ok.sum())} inside", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(base):]:
        ax.set_visible(False)
    if title is not None:
        fig.suptitle(title)
    return fig


def sample_on_image(
    image: Any,
    anchors: Any,
    labels: Any,
    matched_gt: Any,
    gt_boxes: Any,
    *,
    gt_labels: Any = None,
    class_names: Sequence[str] | None = None,
    show_prior_boxes: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """One image's RPN sample: ``labels (N,)`` 1 / 0 / -1 over ``anchors (N, 4)``.

    Sampled positives (label 1) are drawn at their centres in the colour of ``matched_gt`` (their boxes too
    with ``show_prior_boxes``), sampled negatives (label 0) as white dots; anchors labelled -1 are left out.
    The legend counts the positives per gt (:func:`lessons.draw.assignment_map`) and the negatives.

    Returns:
        The Figure.
    """
    lab = _np(labels).reshape(-1).astype(np.int64)
    gt = _np(matched_gt).reshape(-1).astype(np.int64)
    a = _np(anchors).reshape(-1, 4).astype(np.float64)
    keep = lab >= 0
    gt_index = np.where(lab == 1, gt, -1)[keep]
    fig = assignment_map(image, a[keep], gt_boxes, gt_index, gt_labels=gt_labels, class_names=class_names,
                         show_prior_boxes=show_prior_boxes, max_negatives=None, ax=ax, title=title)
    ax = ax if ax is not None else fig.axes[0]
    neg = a[lab == 0]
    centres = (neg[:, :2] + neg[:, 2:]) / 2
    style = {"facecolor": (1.0, 1.0, 1.0, 0.9), "edgecolor": (0.15, 0.15, 0.15, 0.9)}
    ax.scatter(centres[:, 0], centres[:, 1], s=14, facecolors=style["facecolor"], edgecolors=style["edgecolor"],
               linewidths=0.5, zorder=2)
    legend = ax.get_legend()
    handles = [h for h, t in zip(legend.legend_handles, legend.get_texts()) if not t.get_text().startswith(
        ("negative", "ignored"))]
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor=style["facecolor"],
                          markeredgecolor=style["edgecolor"], label=f"sampled negative: {len(neg)}"))
    for h, t in zip(legend.legend_handles, legend.get_texts()):
        if not t.get_text().startswith(("negative", "ignored")):
            h.set_label(t.get_text())
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    return fig


# --------------------------------------------------------------------------------------------
# Notebook 03: NMS
# --------------------------------------------------------------------------------------------


def nms_steps(
    image: Any,
    boxes: Any,
    scores: Any,
    steps: Sequence[Any],
    *,
    max_steps: int = 4,
    crop: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Greedy NMS round by round: one panel per :class:`lessons.proposals_and_nms.NMSStep`.

    In panel ``t`` the box kept in round ``t`` is thick (its colour), the boxes it suppresses are red and
    dashed (listed with their IoU in the panel's corner), boxes kept earlier are thin in their colours, and
    the boxes still waiting are thin grey. ``crop = (x1, y1, x2, y2)`` zooms every panel. At most
    ``max_steps`` panels.

    Returns:
        The Figure: one Axes per shown round.
    """
    b = _np(boxes).astype(np.float64).reshape(-1, 4)
    s = _np(scores).astype(np.float64).reshape(-1)
    shown = list(steps)[:max_steps]
    n = max(len(shown), 1)
    fig = LessonFigure(figsize=(4.4 * n, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n)).reshape(-1)
    hw = image if isinstance(image, tuple) else tuple(_np(image).shape[:2])
    waiting = sorted(range(len(s)), key=lambda i: (-s[i], i))
    kept_before: list[int] = []
    for t, (ax, step) in enumerate(zip(axes, shown)):
        _canvas(ax, None if isinstance(image, tuple) else image, hw)
        for i in waiting:
            if i != step.kept and i not in step.suppressed:
                ax.add_patch(_rect(b[i], fill=False, edgecolor=(0.5, 0.5, 0.5, 0.9), linewidth=0.8))
        for r, i in enumerate(kept_before):
            ax.add_patch(_rect(b[i], fill=False, edgecolor=color_for(r), linewidth=1.2, alpha=0.8))
        for i in step.suppressed:
            ax.add_patch(_rect(b[i], fill=False, edgecolor=SUPPRESSED_COLOR, linewidth=1.2, linestyle="--"))
        # one list per panel instead of a label per box: suppressed boxes overlap, their labels would too
        listed = "\n".join(f"#{i}: IoU {u:.2f}" for i, u in zip(step.suppressed, step.ious)) or "none"
        ax.text(0.02, 0.02, f"suppressed by #{step.kept}:\n{listed}", transform=ax.transAxes, fontsize=7,
                color=SUPPRESSED_COLOR, va="bottom", ha="left",
                bbox={"facecolor": "white", "edgecolor": SUPPRESSED_COLOR, "alpha": 0.9, "pad": 2.0}, zorder=6)
        ax.add_patch(_rect(b[step.kept], fill=False, edgecolor=color_for(t), linewidth=3.0))
        ax.text(b[step.kept][0], b[step.kept][1], f"#{step.kept} {s[step.kept]:.2f}", color="white", fontsize=8,
                va="bottom", bbox={"facecolor": color_for(t), "edgecolor": "none", "pad": 1.5}, clip_on=True)
        ax.set_title(f"round {t + 1}: keep #{step.kept}, suppress {len(step.suppressed)}, "
                     f"{len(step.remaining)} left", fontsize=9)
        if crop is not None:
            ax.set_xlim(crop[0], crop[2])
            ax.set_ylim(crop[3], crop[1])
        kept_before.append(step.kept)
        waiting = list(step.remaining)
    handles = [Line2D([], [], color="black", linewidth=3, label="kept this round"),
               Line2D([], [], color=SUPPRESSED_COLOR, linestyle="--", label="suppressed this round"),
               Line2D([], [], color=(0.5, 0.5, 0.5), label="still waiting")]
    axes[-1].legend(handles=handles, fontsize=7, loc="lower right", framealpha=0.9)
    if title is not None:
        fig.suptitle(title)
    return fig


def nms_comparison(
    hw: tuple[int, int],
    gt_boxes: Any,
    results: Mapping[str, tuple[Any, Any, Any]],
    class_names: Sequence[str],
    *,
    top: int | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per NMS method: the detections it keeps, with their (possibly decayed) scores.

    ``results`` maps a method name to ``(boxes (K, 4), scores (K,), labels (K,))`` of its kept detections,
    best first; ``top`` draws only the first ``top`` of each (the others are counted in the title). The
    gts are drawn as dotted black boxes; detections are coloured by class.

    Returns:
        The Figure: one Axes per method.
    """
    gts = _np(gt_boxes).reshape(-1, 4)
    n = max(len(results), 1)
    fig = LessonFigure(figsize=(4.6 * n, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n)).reshape(-1)
    for ax, (name, (boxes, scores, labels)) in zip(axes, results.items()):
        _canvas(ax, None, hw)
        for g in gts:
            ax.add_patch(_rect(g, fill=False, edgecolor="black", linewidth=1.0, linestyle=":"))
        b = _np(boxes).reshape(-1, 4)
        s = _np(scores).reshape(-1)
        lab = _np(labels).reshape(-1).astype(np.int64)
        shown = len(b) if top is None else min(top, len(b))
        for i in range(shown):
            c = color_for(int(lab[i]))
            ax.add_patch(_rect(b[i], fill=False, edgecolor=c, linewidth=2.0))
            ax.text(b[i][0] + 2, b[i][1] + 2 + 14 * (i % 2), f"{class_names[int(lab[i])]} {s[i]:.2f}", fontsize=7,
                    color="white", va="top", bbox={"facecolor": c, "edgecolor": "none", "pad": 1.0}, clip_on=True)
        extra = f" (top {shown} of {len(b)})" if shown < len(b) else ""
        ax.set_title(f"{name}: {len(b)} kept{extra}", fontsize=9)
    if title is not None:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Notebook 03: the proposal funnel and the proposals
# --------------------------------------------------------------------------------------------


def funnel(funnels: Mapping[str, Mapping[str, int]], *, stages: Sequence[str] | None = None,
           title: str | None = None) -> Figure:
    """Bars of how many boxes are left after each stage, one group of bars per stage, one bar per run.

    ``funnels`` maps a run's name to its stage counts (e.g. :func:`lessons.proposals_and_nms.funnel_counts`);
    ``stages`` are the first run's keys, in order, without ``"inside"``: the inside anchors are what the
    RPN's TRAINING targets use (notebook 02), not a stage the proposals pass through, and a bar for them
    would make the funnel drop and rise again. Log scale; every bar is labelled with its count.

    Returns:
        The Figure: one Axes, one bar per (run, stage).
    """
    names = list(funnels)
    if stages is None:
        stages = [k for k in next(iter(funnels.values()))] if funnels else []
        stages = [k for k in stages if k != "inside"]
    stages = list(stages)
    fig = LessonFigure(figsize=(max(6.0, 1.3 * len(stages) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(names), 1)
    for r, name in enumerate(names):
        values = [int(funnels[name].get(stage, 0)) for stage in stages]
        xs = np.arange(len(stages)) + (r - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, [max(v, 1) for v in values], width=width * 0.95, color=color_for(r), label=name)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() * 1.08, f"{v:,}", ha="center", va="bottom",
                    fontsize=7, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylabel("boxes left (log scale)")
    ax.set_ylim(1, 10 ** (math.log10(max([1] + [int(f.get(k, 0)) for f in funnels.values() for k in stages])) + 0.9))
    ax.legend(fontsize=8, loc="lower left")
    if title is not None:
        ax.set_title(title)
    return fig


def proposals_on_image(
    image: Any,
    proposals: Any,
    scores: Any,
    gt_boxes: Any = None,
    *,
    top: int = 50,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The first ``top`` proposals (best first) over the image, coloured by objectness; gts dashed white.

    Returns:
        The Figure: one Rectangle per drawn proposal and per gt (plus the image frame).
    """
    if ax is None:
        img = _np(image) if not isinstance(image, tuple) else None
        hw = image if isinstance(image, tuple) else img.shape[:2]
        fig = LessonFigure(figsize=(6.4, 6.4 * hw[0] / hw[1] + 0.4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
        hw = image if isinstance(image, tuple) else _np(image).shape[:2]
    _canvas(ax, None if isinstance(image, tuple) else image, (int(hw[0]), int(hw[1])))
    p = _np(proposals).reshape(-1, 4)[:top]
    s = _np(scores).reshape(-1)[:top]
    cmap = colormaps["plasma"]
    lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 1.0)
    for box, v in zip(p[::-1], s[::-1]):  # best drawn last, on top
        ax.add_patch(_rect(box, fill=False, edgecolor=cmap((v - lo) / (hi - lo) if hi > lo else 1.0), linewidth=1.2))
    if gt_boxes is not None:
        for g in _np(gt_boxes).reshape(-1, 4):
            ax.add_patch(_rect(g, fill=False, edgecolor="white", linewidth=1.5, linestyle="--"))
    ax.set_title(title if title is not None else f"the {len(p)} best proposals (yellow: highest objectness)",
                 fontsize=10)
    return fig
