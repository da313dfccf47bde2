"""Lesson helpers of notebooks 02 and 03: the RPN head sketch, the stand-in RPN, NMS traces, the crowded
scene, class-aware Soft-NMS, the inside counts behind the paper's "about 6,000", and the figures."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from exportable.anchors import AnchorGenerator  # noqa: E402
from exportable.boxes import box_iou  # noqa: E402
from exportable.nms import batched_nms, nms  # noqa: E402
from lessons import rpn_figures  # noqa: E402
from lessons.proposals_and_nms import (  # noqa: E402
    class_aware_nms,
    class_aware_soft_nms,
    crowd_scene,
    greedy_nms,
    loc2bbox,
    nms_trace,
    oracle_rpn_outputs,
    soft_nms,
)
from lessons.rpn_anchor_targets import RPNHead, count_inside, faster_rcnn_anchors  # noqa: E402
from lessons.scenes import default_scene  # noqa: E402


def random_boxes(n: int, seed: int, ties: bool = True):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], dim=1)
    scores = (torch.randint(0, 10, (n,), generator=g).float() / 10) if ties else torch.rand(n, generator=g)
    return boxes, scores, torch.randint(0, 3, (n,), generator=g)


# --------------------------------------------------------------------------------------------
# RPNHead: the 18 and 36 channels


def test_rpn_head_shapes_and_row_order():
    head = RPNHead(in_channels=8, mid_channels=16, n_anchor=9, seed=3)
    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = head(x)
        hidden = torch.relu(head.conv1(x))
        raw_loc, raw_score = head.loc(hidden), head.score(hidden)  # (2, 36, 5, 7), (2, 18, 5, 7)
    assert raw_loc.shape == (2, 36, 5, 7) and raw_score.shape == (2, 18, 5, 7)
    assert out.rpn_locs.shape == (2, 5 * 7 * 9, 4) and out.rpn_scores.shape == (2, 315, 2)
    assert out.rpn_fg_scores.shape == (2, 315)
    for b, y, x_, a in [(0, 0, 0, 0), (1, 4, 6, 8), (0, 2, 3, 5), (1, 1, 6, 0)]:
        row = (y * 7 + x_) * 9 + a  # location-major, anchor-minor: the anchors' order
        assert torch.equal(out.rpn_locs[b, row], raw_loc[b, 4 * a : 4 * a + 4, y, x_])
        assert torch.equal(out.rpn_scores[b, row], raw_score[b, 2 * a : 2 * a + 2, y, x_])
    # softmax over the (background, foreground) pair = sigmoid of the difference
    diff = out.rpn_scores[..., 1] - out.rpn_scores[..., 0]
    torch.testing.assert_close(out.rpn_fg_scores, torch.sigmoid(diff), atol=1e-6, rtol=0)


def test_rpn_head_is_seeded_and_starts_near_one_half():
    a, b, c = RPNHead(4, 4, seed=0), RPNHead(4, 4, seed=0), RPNHead(4, 4, seed=1)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)
    assert float(a.conv1.bias.detach().abs().sum()) == 0.0 and abs(float(a.loc.weight.detach().std()) - 0.01) < 0.005
    with torch.no_grad():
        fg = a(torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))).rpn_fg_scores
    assert ((fg - 0.5).abs() < 0.05).all()  # an untrained head: "foreground 0.5" everywhere


def test_rpn_head_rows_match_the_anchor_grid():
    # 600 x 1000 at stride 16: 38 x 63 cells x 9 = 21,546 rows, row r is anchor r of faster_rcnn_anchors
    anchors, (fh, fw) = faster_rcnn_anchors((600, 1000))
    head = RPNHead(2, 2, seed=0)
    with torch.no_grad():
        out = head(torch.zeros(1, 2, fh, fw))
    assert out.rpn_locs.shape[1] == anchors.shape[0] == 21_546
    y, x = 17, 40
    rows = torch.arange((y * fw + x) * 9, (y * fw + x) * 9 + 9)
    centres = (anchors[rows, :2] + anchors[rows, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[16.0 * x, 16.0 * y]]).expand(9, 2), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------------------------
# Inside counts: the note's 15,000, the paper's 6,000


def test_inside_counts_by_hand_at_600x800():
    # a w x h anchor centred on (16x, 16y) is inside iff w/2 <= 16x <= W - w/2 and h/2 <= 16y <= H - h/2
    c = count_inside((600, 800))
    assert c["anchors"] == 38 * 50 * 9 == 17_100
    assert c["inside_128x128"] == 43 * 30  # x in [4, 46], y in [4, 33]
    assert c["inside_256x256"] == 35 * 22  # x in [8, 42], y in [8, 29]
    assert c["inside_512x512"] == 19 * 6  # x in [16, 34], y in [16, 21]
    assert c["inside_362x724"] == 0  # 724 > 600
    assert c["inside"] == 5_954  # the paper's "about 6,000" fits a 4:3 image, not its 1000 x 600 example
    assert count_inside((600, 1000))["inside"] == 8_044


def test_inside_regions_figure_counts_match_count_inside():
    _, fmap = faster_rcnn_anchors((600, 800))
    base = AnchorGenerator.faster_rcnn().base_anchors[0]  # (9, 4) centred on (0, 0)
    fig = rpn_figures.inside_regions((600, 800), base, 16, fmap)
    assert isinstance(fig, Figure)
    counts = [v for k, v in count_inside((600, 800)).items() if k.startswith("inside_")]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 9
    assert [int(t.split(", ")[1].split(" ")[0]) for t in titles] == counts


# --------------------------------------------------------------------------------------------
# The stand-in RPN


def test_oracle_outputs_are_seeded_probabilities():
    s = default_scene()
    anchors, _ = faster_rcnn_anchors(s.hw)
    score, loc = oracle_rpn_outputs(anchors, s.boxes, seed=0)
    again, loc2 = oracle_rpn_outputs(anchors, s.boxes, seed=0)
    other, _ = oracle_rpn_outputs(anchors, s.boxes, seed=1)
    assert score.shape == (anchors.shape[0],) and loc.shape == (anchors.shape[0], 4)
    assert torch.equal(score, again) and torch.equal(loc, loc2) and not torch.equal(score, other)
    assert float(score.min()) >= 0.0 and float(score.max()) <= 1.0
    best = box_iou(anchors, s.boxes).max(dim=1).values
    assert ((score - best) >= -1e-6).all() and ((score - best.clamp(max=1)) <= 0.1 + 1e-6).all()


def test_oracle_pull_moves_boxes_onto_their_gt():
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 40.0, 30.0], [100.0, 100.0, 120.0, 120.0]])
    gts = torch.tensor([[5.0, 5.0, 25.0, 35.0]])
    _, loc = oracle_rpn_outputs(anchors, gts, pull=1.0, loc_noise=0.0)
    boxes = loc2bbox(anchors, loc)
    torch.testing.assert_close(boxes[:2], gts.expand(2, 4), atol=1e-4, rtol=0)  # overlapping anchors land on it
    assert torch.equal(loc[2], torch.zeros(4))  # no overlap: no pull, no noise
    _, half = oracle_rpn_outputs(anchors, gts, pull=0.5, loc_noise=0.0)
    torch.testing.assert_close(half[:2], loc[:2] * 0.5)


def test_oracle_without_gts_is_noise_only():
    anchors, _ = faster_rcnn_anchors((64, 64))
    score, loc = oracle_rpn_outputs(anchors, torch.zeros(0, 4), seed=2, score_noise=0.1, loc_noise=0.1)
    assert score.shape == (anchors.shape[0],) and float(score.max()) < 0.1
    assert float(loc.abs().max()) < 1.0  # 0.1 * N(0, 1)


# --------------------------------------------------------------------------------------------
# NMS, step by step


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_nms_trace_replays_greedy_nms(seed, thr):
    boxes, scores, _ = random_boxes(150, seed)
    steps = nms_trace(boxes, scores, thr)
    kept = [st.kept for st in steps]
    assert kept == greedy_nms(boxes, scores, thr).tolist() == nms(boxes, scores, thr).tolist()
    seen = kept + [i for st in steps for i in st.suppressed]
    assert sorted(seen) == list(range(150))  # every box is kept or suppressed exactly once
    for st in steps:
        assert all(u > thr for u in st.ious) and len(st.ious) == len(st.suppressed)
        iou = box_iou(boxes[st.kept][None], boxes[st.remaining])[0] if st.remaining else torch.zeros(0)
        assert bool((iou <= thr + 1e-6).all())  # what remains overlaps the kept box by at most thr
    assert steps[-1].remaining == []


def test_nms_trace_by_hand_and_empty():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 5.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    steps = nms_trace(boxes, scores, 0.5)
    # box 1: IoU 90 / 110 = 0.818 > 0.5 -> suppressed; box 2: IoU exactly 0.5 -> kept; box 3 far away
    assert [(st.kept, st.suppressed) for st in steps] == [(0, [1]), (2, []), (3, [])]
    assert abs(steps[0].ious[0] - 90 / 110) < 1e-6
    assert nms_trace(torch.zeros(0, 4), torch.zeros(0)) == []


# --------------------------------------------------------------------------------------------
# Class-aware Soft-NMS and the crowded scene


@pytest.mark.parametrize("seed", range(3))
def test_class_aware_soft_nms_with_zero_decay_is_class_aware_nms(seed):
    boxes, scores, labels = random_boxes(120, seed)
    scores = scores + 0.05  # all above Soft-NMS's score threshold (0.001), ties kept
    keep, kept_scores = class_aware_soft_nms(boxes, scores, labels, method="greedy", iou_thresh=0.5)
    assert torch.equal(keep, class_aware_nms(boxes, scores, labels, 0.5))
    assert torch.equal(kept_scores, scores[keep])


def test_class_aware_soft_nms_classes_never_decay_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, s = class_aware_soft_nms(boxes, scores, torch.tensor([0, 1, 0]), method="gaussian")
    assert keep.tolist() == [0, 1, 2]
    assert s[:2].tolist() == pytest.approx([0.9, 0.8])  # box 1 is alone in its class: untouched
    assert float(s[2]) == pytest.approx(0.7 * math.exp(-((90 / 110) ** 2) / 0.5), rel=1e-5)
    same_keep, same_s = soft_nms(boxes, scores, method="gaussian")  # one class: box 1 decays
    assert float(same_s[same_keep.tolist().index(1)]) < 0.8


def test_crowd_scene_shows_each_failure():
    c = crowd_scene()
    gt_iou = box_iou(c.gt_boxes, c.gt_boxes)
    assert 0.5 < float(gt_iou[0, 1]) < 0.65 and 0.5 < float(gt_iou[2, 3]) < 0.65  # both pairs above 0.5
    assert c.gt_labels[0] == c.gt_labels[1] and c.gt_labels[2] != c.gt_labels[3]
    assert c.boxes.shape == (16, 4) and torch.bincount(c.source).tolist() == [4, 4, 4, 4]
    assert torch.equal(c.labels, c.gt_labels[c.source])
    agnostic = greedy_nms(c.boxes, c.scores, 0.5)
    aware = class_aware_nms(c.boxes, c.scores, c.labels, 0.5)
    assert sorted(c.source[agnostic].tolist()) == [0, 2]
    assert sorted(c.source[aware].tolist()) == [0, 2, 3]
    assert torch.equal(batched_nms(c.boxes, c.scores, c.labels, 0.5), aware)
    for method in ("linear", "gaussian"):
        keep, s = class_aware_soft_nms(c.boxes, c.scores, c.labels, method=method)
        assert sorted(c.source[keep[:4]].tolist()) == [0, 1, 2, 3]  # one per object on top
        assert bool((s[:-1] >= s[1:]).all())


# --------------------------------------------------------------------------------------------
# Figures


def _rects(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_nms_steps_and_comparison_figures():
    boxes, scores, labels = random_boxes(12, 0, ties=False)
    steps = nms_trace(boxes, scores, 0.3)
    fig = rpn_figures.nms_steps((120, 160), boxes, scores, steps, max_steps=3, crop=(0, 0, 150, 150))
    assert isinstance(fig, Figure) and len(fig.axes) == min(3, len(steps))
    first = fig.axes[0]
    # every box but those suppressed in round 1 is drawn once; the suppressed once (dashed); + the image frame
    assert len(_rects(first)) == 12 + 1
    assert first.get_title().startswith(f"round 1: keep #{steps[0].kept}")
    c = crowd_scene()
    fig = rpn_figures.nms_comparison(c.hw, c.gt_boxes, {"a": (c.boxes[:3], c.scores[:3], c.labels[:3]),
                                                        "b": (c.boxes, c.scores, c.labels)}, c.class_names, top=2)
    assert len(fig.axes) == 2
    assert [len(_rects(ax)) for ax in fig.axes] == [1 + 4 + 2, 1 + 4 + 2]  # frame + gts + top 2
    assert fig.axes[1].get_title() == "b: 16 kept (top 2 of 16)"


def test_funnel_and_proposals_figures():
    f = {"x": {"anchors": 100, "pre_nms": 50, "nms": 20}, "y": {"anchors": 100, "pre_nms": 30, "nms": 0}}
    fig = rpn_figures.funnel(f, title="t")
    (ax,) = fig.axes
    assert len(ax.patches) == 6 and [t.get_text() for t in ax.get_xticklabels()] == ["anchors", "pre_nms", "nms"]
    s = default_scene()
    props = s.boxes + 3.0
    fig = rpn_figures.proposals_on_image(s.image, props, torch.linspace(1, 0.5, 6), s.boxes, top=4)
    assert len(_rects(fig.axes[0])) == 1 + 4 + 6  # frame, 4 proposals, 6 gts


def test_sample_on_image_counts():
    s = default_scene()
    anchors = torch.tensor([[0.0, 0.0, 100.0, 100.0], [100.0, 100.0, 200.0, 200.0], [200.0, 200, 300, 300],
                            [300.0, 300, 400, 400]])
    labels = torch.tensor([1, 0, -1, 0])
    matched = torch.tensor([2, -1, -1, -1])
    fig = rpn_figures.sample_on_image(s.image, anchors, labels, matched, s.boxes, gt_labels=s.labels,
                                      class_names=s.class_names)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "gt 2 (face): 1 positive" in texts and "sampled negative: 2" in texts
    assert not any(t.startswith(("negative", "ignored")) for t in texts)
