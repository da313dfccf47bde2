"""lessons.draw: every function returns a Figure, headless, with the expected artists."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from lessons import draw, scenes  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rects(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _box_of(rect):
    x, y = rect.get_xy()
    return [x, y, x + rect.get_width(), y + rect.get_height()]


def _anchors(h, w, strides, sizes, ratios=(0.5, 1.0, 2.0)):
    """Anchors in the package's order (level by level, (y * W + x) * A + a) and their level ids."""
    out, levels = [], []
    for level, (s, size) in enumerate(zip(strides, sizes)):
        fh, fw = -(-h // s), -(-w // s)
        base = torch.tensor(
            [[-size / r**0.5 / 2, -size * r**0.5 / 2, size / r**0.5 / 2, size * r**0.5 / 2] for r in ratios]
        )  # (A, 4)
        ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
        shifts = (torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4) * s).float()  # (fh*fw, 1, 4)
        a = (shifts + base[None]).reshape(-1, 4)  # (fh*fw*A, 4)
        out.append(a)
        levels.append(torch.full((len(a),), level))
    return torch.cat(out), torch.cat(levels)


# --------------------------------------------------------------------------------------------
# show_boxes
# --------------------------------------------------------------------------------------------


def test_show_boxes_on_the_photo():
    s = scenes.default_scene()
    fig = draw.show_boxes(s.image, s.boxes, s.labels, s.class_names, title="photo")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    rects = _rects(ax)
    assert len(rects) == 6
    assert np.allclose([_box_of(r) for r in rects], s.boxes.numpy())
    assert [r.get_edgecolor() for r in rects] == [draw.color_for(k) for k in s.labels.tolist()]
    assert [t.get_text() for t in ax.texts] == [f"{j}: {n}" for j, n in enumerate(s.names())]
    assert len(ax.images) == 1 and ax.images[0].get_extent() == [0, 512, 600, 0]
    assert ax.get_title() == "photo"


def test_show_boxes_into_a_given_axes_and_options():
    t = scenes.toy_scene()
    fig, axs = plt.subplots(1, 2)
    out = draw.show_boxes(t.image, t.boxes, ax=axs[1], color="red", linestyle="--", show_text=False)
    assert out is fig
    assert len(_rects(axs[1])) == 2 and len(_rects(axs[0])) == 0 and not axs[1].texts
    assert all(r.get_linestyle() == "--" and r.get_edgecolor() == to_rgba("red") for r in _rects(axs[1]))
    fig2 = draw.show_boxes((48, 64), t.boxes.numpy(), t.labels, color_by="index")
    assert [r.get_edgecolor() for r in _rects(fig2.axes[0])] == [draw.color_for(0), draw.color_for(1)]
    fig3 = draw.show_boxes(None, t.boxes.tolist())
    assert len(_rects(fig3.axes[0])) == 2
    fig4 = draw.show_boxes(t.image, torch.zeros(0, 4))
    assert len(_rects(fig4.axes[0])) == 0


def test_show_boxes_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="3 boxes but 2 labels"):
        draw.show_boxes(None, torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))


def test_figures_render_and_show_once_in_notebooks():
    t = scenes.toy_scene()
    fig = draw.show_boxes(t.image, t.boxes, t.labels, t.class_names)
    assert isinstance(fig, draw.LessonFigure)
    assert fig._repr_png_().startswith(b"\x89PNG")
    assert plt.get_fignums() == []  # never registered with pyplot


# --------------------------------------------------------------------------------------------
# show_anchors
# --------------------------------------------------------------------------------------------


def test_show_anchors_every_location():
    anchors, levels = _anchors(32, 48, (16, 32), (16.0, 40.0))  # 2x3x3 + 1x2x3 = 24 anchors
    fig = draw.show_anchors((32, 48), anchors, levels, every=1)
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert len(_rects(ax)) == 24
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in dots] == [18, 6]  # centres, one collection per level
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["level 0: 18 anchors (3 per location)", "level 1: 6 anchors (3 per location)"]
    assert ax.get_xlim()[0] < -20  # the view widens to show anchors that leave the image


def test_show_anchors_subsampling():
    anchors, levels = _anchors(800, 1216, (8, 16, 32, 64, 128), (32, 64, 128, 256, 512))
    fig = draw.show_anchors(np.zeros((800, 1216, 3), np.uint8), anchors, levels)
    assert len(_rects(fig.axes[0])) == 5 * 4 * 3  # 4 locations per level by default, 3 anchors each
    fig = draw.show_anchors(None, anchors, levels, at=(600.0, 400.0))
    rects = _rects(fig.axes[0])
    assert len(rects) == 5 * 3
    centres = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in map(_box_of, rects)])
    assert np.abs(centres - [600.0, 400.0]).max() <= 64  # the nearest location on each level
    fig = draw.show_anchors(None, anchors, levels, every=7, centres_only=True)
    ax = fig.axes[0]
    assert len(_rects(ax)) == 0
    assert len(ax.collections[0].get_offsets()) == len(range(0, 100 * 152, 7))


def test_show_anchors_points():
    points, _, levels = scenes.grid_points(48, 64, (8, 16))
    fig = draw.show_anchors(scenes.toy_scene().image, points, levels)
    ax = fig.axes[0]
    assert len(_rects(ax)) == 0
    assert [len(c.get_offsets()) for c in ax.collections] == [48, 12]


# --------------------------------------------------------------------------------------------
# Heat maps
# --------------------------------------------------------------------------------------------


def test_iou_heatmap_takes_the_max_over_anchors_per_location():
    fh, fw, a = 3, 4, 2
    iou = torch.rand(fh * fw * a, generator=torch.Generator().manual_seed(0))
    image = np.zeros((24, 32, 3), np.uint8)
    fig = draw.iou_heatmap(iou, (fh, fw), image, offset=0.5, gt_box=torch.tensor([2.0, 2.0, 10.0, 12.0]))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heat = [im for im in ax.images if im.get_array().shape == (fh, fw)]
    assert len(heat) == 1 and len(ax.images) == 2  # the photo underneath, the map on top
    expected = iou.numpy().reshape(fh, fw, a).max(-1)
    assert np.allclose(heat[0].get_array(), expected)
    assert heat[0].get_extent() == [0.0, 32.0, 24.0, 0.0]  # stride 8 read off the image
    assert len(_rects(ax)) == 1 and len(fig.axes) == 2  # the gt box; a colour bar
    one = draw.iou_heatmap(iou, (fh, fw), anchor=1, stride=16, colorbar=False)
    (im,) = one.axes[0].images
    assert np.allclose(im.get_array(), iou.numpy().reshape(fh, fw, a)[..., 1])
    assert im.get_extent() == [-8.0, 56.0, 40.0, -8.0] and len(one.axes) == 1  # anchors on cell corners


def test_iou_heatmap_reads_the_stride_off_the_image():
    fig = draw.iou_heatmap(torch.zeros(38 * 63 * 9), (38, 63), (600, 1000), offset=0.5)  # rpn-m20
    assert fig.axes[0].images[0].get_extent() == [0.0, 1008.0, 608.0, 0.0]  # stride 16
    fig = draw.iou_heatmap(torch.zeros(7 * 10), (7, 10), (800, 1216), offset=0.5)  # retina, P7
    assert fig.axes[0].images[0].get_extent() == [0.0, 1280.0, 896.0, 0.0]  # stride 128


def test_iou_heatmap_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="do not fill a 3 x 4 grid"):
        draw.iou_heatmap(torch.zeros(13), (3, 4))


def test_matrix_heatmap_prints_every_cell_when_small():
    m = torch.tensor([[0.0, 0.5, 1.0], [float("inf"), 0.25, float("nan")]])
    fig = draw.matrix_heatmap(m, ["gt 0", "gt 1"], ["a", "b", "c"], "cost")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.50", "1.00", "inf", "0.25", "nan"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gt 0", "gt 1"]
    assert ax.get_title() == "cost"
    assert ax.images[0].get_clim() == (0.0, 1.0)  # the colour range ignores inf and nan


def test_matrix_heatmap_large_and_vector():
    big = draw.matrix_heatmap(np.arange(30 * 20).reshape(30, 20))
    assert len(big.axes[0].texts) == 0  # 600 cells: too many to print
    vec = draw.matrix_heatmap([1, 2, 3], annotate=True, fmt=".0f")
    assert [t.get_text() for t in vec.axes[0].texts] == ["1", "2", "3"]
    with pytest.raises(ValueError, match="2-D"):
        draw.matrix_heatmap(np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------------------------
# assignment_map
# --------------------------------------------------------------------------------------------


def test_assignment_map_points():
    t = scenes.toy_scene()
    points, _, _ = scenes.grid_points(48, 64, (8,))  # 48 points
    gt_index = torch.full((48,), -1)
    gt_index[[9, 10, 17]] = 0
    gt_index[[20, 28]] = 1
    gt_index[[11, 19, 27]] = -2
    fig = draw.assignment_map(
        t.image, points, t.boxes, gt_index, gt_labels=t.labels, class_names=t.class_names
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    rects = _rects(ax)
    assert len(rects) == 2 and [r.get_edgecolor() for r in rects] == [draw.color_for(0), draw.color_for(1)]
    sizes = sorted(len(c.get_offsets()) for c in ax.collections)
    assert sizes == sorted([48 - 8, 3, 3, 2])  # negatives, ignored, gt 0, gt 1
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    assert legend == ["gt 0 (cat): 3 positive", "gt 1 (dog): 2 positive", "negative: 40", "ignored: 3"]
    assert ax.get_title() == "5 positive, 40 negative, 3 ignored"


def test_assignment_map_anchor_boxes_mask_and_subsampling():
    t = scenes.toy_scene()
    anchors, _ = _anchors(48, 64, (8,), (16.0,), ratios=(1.0,))  # 48 anchors
    gt_index = torch.full((1, 48), -1)  # a batch of one image is accepted
    gt_index[0, [9, 10]] = 0
    gt_index[0, 20] = 1
    gt_boxes = torch.cat([t.boxes, torch.zeros(1, 4)])[None]  # (1, 3, 4) with one padding row
    gt_mask = torch.tensor([True, True, False])
    fig = draw.assignment_map(
        t.image, anchors, gt_boxes, gt_index, gt_mask=gt_mask, show_prior_boxes=True, max_negatives=10
    )
    ax = fig.axes[0]
    assert len(_rects(ax)) == 2 + 3  # two real gts, three positive anchors
    negatives = ax.collections[0]
    assert len(negatives.get_offsets()) == 10
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    assert "negative: 45" in legend and len(legend) == 2 + 2


def test_assignment_map_rejects_bad_indices():
    points, _, _ = scenes.grid_points(16, 16, (8,))
    with pytest.raises(ValueError, match="only 1 gts"):
        draw.assignment_map(None, points, torch.zeros(1, 4), torch.tensor([0, 1, -1, -1]))
    with pytest.raises(ValueError, match="4 priors but gt_index has 3"):
        draw.assignment_map(None, points, torch.zeros(1, 4), torch.tensor([0, -1, -1]))
