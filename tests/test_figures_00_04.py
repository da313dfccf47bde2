"""Figures of notebooks 00-04 and the demo stay readable: no stacked markers, one location per panel,
no funnel bar that rises again, no per-box labels piling up, the RoI sample in panels."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.patches import Rectangle

from exportable.anchors import AnchorGenerator, featmap_sizes_for
from exportable.boxes import box_iou
from lessons import conventions as cv
from lessons import draw
from lessons import proposals_and_nms as pn
from lessons import roi_head_sampling as rh
from lessons.rpn_figures import funnel, nms_steps
from lessons.scenes import default_scene, toy_scene


def _toy():
    toy = toy_scene()
    anchors = AnchorGenerator(strides=[8], ratios=(0.5, 1.0, 2.0), scales=(4,), base_sizes=(8,)).grid_anchors(
        [(6, 8)])[0]  # (144, 4): 48 locations x 3 shapes
    return toy, anchors, cv.max_iou_rule(box_iou(anchors, toy.boxes))


def test_assignment_panels_put_one_marker_per_location_in_each_panel():
    toy, anchors, gt_index = _toy()
    fig = draw.assignment_panels(toy.image, anchors, toy.boxes, gt_index, 3, shape_names=["a", "b", "c"])
    assert len(fig.axes) == 3
    for ax in fig.axes:
        points = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
        assert len(points) == 48  # every location once: nothing stacked
        assert len({(round(x, 6), round(y, 6)) for x, y in points}) == 48
    legend = fig.axes[-1].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[-2:] == [f"negative: {int((gt_index == -1).sum())}", f"ignored: {int((gt_index == -2).sum())}"]
    assert all(ax.get_legend() is None for ax in fig.axes[:-1])


def test_anchor_levels_draws_exactly_one_location_per_level():
    scene = default_scene()
    gen = AnchorGenerator.retinanet()
    sizes = featmap_sizes_for((608, 512), gen.strides)
    anchors, levels = torch.cat(gen.grid_anchors(sizes)), gen.level_ids(sizes)
    fig = draw.anchor_levels(scene.image, anchors, levels, at=(267.0, 236.0), strides=[8, 16, 32, 64, 128])
    assert len(fig.axes) == 5
    for level, ax in enumerate(fig.axes):
        boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
        assert len(boxes) == 9, (level, len(boxes))
        centres = {(round(b.get_x() + b.get_width() / 2, 3), round(b.get_y() + b.get_height() / 2, 3)) for b in boxes}
        assert len(centres) == 1  # the nine share one location


def test_funnel_has_no_inside_bar_and_only_falls():
    funnels = {"run": {"anchors": 21_546, "inside": 8_044, "min_size": 21_462, "pre_nms": 12_000, "nms": 3_702,
                       "post_nms": 2_000}}
    fig = funnel(funnels)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["anchors", "min_size", "pre_nms", "nms", "post_nms"]
    heights = [p.get_height() for p in ax.patches]
    assert heights == sorted(heights, reverse=True)  # a funnel: never rises again


def test_nms_steps_lists_suppressed_boxes_once_per_panel():
    scene = default_scene()
    boxes = torch.tensor([[100, 100, 300, 300], [105, 100, 300, 305], [100, 110, 310, 300], [400, 400, 500, 500]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    steps = pn.nms_trace(boxes, scores, 0.7)
    fig = nms_steps(scene.image, boxes, scores, steps, max_steps=2)
    first = fig.axes[0]
    texts = [t.get_text() for t in first.texts]
    listed = [t for t in texts if "IoU" in t]
    assert len(listed) == 1  # one list, not one label per suppressed box
    assert "#1: IoU" in listed[0] and "#2: IoU" in listed[0]


def test_the_roi_sample_is_drawn_in_two_panels_without_the_proposals():
    scene = default_scene()
    roi, _ = rh.photo_proposals(0)
    noise = torch.rand(len(roi) + 6, generator=torch.Generator().manual_seed(0))
    targets = rh.ProposalTargetCreator()(roi, scene.boxes, scene.labels, noise)
    fig = rh.draw_sampled_rois(scene.image, roi, scene.boxes, targets, class_names=scene.class_names,
                               gt_labels=scene.labels)
    assert len(fig.axes) == 2
    drawn = [sum(len(c.get_segments()) for c in ax.collections) for ax in fig.axes]
    assert drawn == [targets.n_pos, targets.n_neg]  # 32 and 96 outlines, not 2,000
