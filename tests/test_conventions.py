"""lessons.conventions: every converter round-trips, hand cases, and agreement with AssignResult."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable.anchors import AnchorGenerator
from exportable.assigners.result import AssignResult
from lessons import conventions as cv

SETTINGS = settings(max_examples=60, deadline=None)

# ---------------------------------------------------------------------------------------------------------
# Strategies

coord = st.floats(-2000.0, 2000.0, allow_nan=False, width=32)
side = st.floats(0.0, 1000.0, allow_nan=False, width=32)


@st.composite
def xyxy_boxes(draw, max_n: int = 6) -> torch.Tensor:
    """(N, 4) float64 boxes with x1 <= x2, y1 <= y2 (float64 so round-trips are exact to 1e-9)."""
    n = draw(st.integers(0, max_n))
    rows = [
        [x, y, x + w, y + h]
        for x, y, w, h in draw(st.lists(st.tuples(coord, coord, side, side), min_size=n, max_size=n))
    ]
    return torch.tensor(rows, dtype=torch.float64).reshape(n, 4)


@st.composite
def gt_indices(draw, max_m: int = 5, max_n: int = 40) -> torch.Tensor:
    """(N,) our gt_index: values in -2 .. M-1."""
    m = draw(st.integers(0, max_m))
    n = draw(st.integers(0, max_n))
    return torch.tensor(draw(st.lists(st.integers(-2, m - 1), min_size=n, max_size=n)), dtype=torch.int64)


def seeded_gt_index(seed: int, shape=(3, 50), m: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, m, shape, generator=g)


# ---------------------------------------------------------------------------------------------------------
# Boxes


BOX_PAIRS = [
    (cv.xyxy_to_yxyx, cv.yxyx_to_xyxy),
    (cv.xyxy_to_cxcywh, cv.cxcywh_to_xyxy),
    (cv.xyxy_to_xywh, cv.xywh_to_xyxy),
    (cv.xyxy_to_plus_one, cv.plus_one_to_xyxy),
    (lambda b: cv.xyxy_to_normalised(b, (600, 512)), lambda b: cv.normalised_to_xyxy(b, (600, 512))),
]


@pytest.mark.parametrize("there, back", BOX_PAIRS, ids=["yxyx", "cxcywh", "xywh", "plus_one", "normalised"])
@SETTINGS
@given(boxes=xyxy_boxes())
def test_box_conversions_round_trip(there, back, boxes):
    torch.testing.assert_close(back(there(boxes)), boxes, rtol=0, atol=1e-9)
    # ... and the other way round, starting from the foreign format
    torch.testing.assert_close(there(back(there(boxes))), there(boxes), rtol=0, atol=1e-9)


def test_box_conversions_hand_cases():
    cat = torch.tensor([4.0, 8.0, 28.0, 40.0])  # the toy scene's cat: 24 x 32
    assert cv.xyxy_to_yxyx(cat).tolist() == [8.0, 4.0, 40.0, 28.0]
    assert cv.xyxy_to_cxcywh(cat).tolist() == [16.0, 24.0, 24.0, 32.0]
    assert cv.xyxy_to_xywh(cat).tolist() == [4.0, 8.0, 24.0, 32.0]
    assert cv.xyxy_to_plus_one(cat).tolist() == [4.0, 8.0, 27.0, 39.0]
    assert cv.xyxy_to_normalised(cat, (48, 64)).tolist() == pytest.approx([4 / 64, 8 / 48, 28 / 64, 40 / 48])


def test_box_conversions_keep_leading_dims_dtype_and_accept_numpy():
    b = torch.rand(2, 3, 4, dtype=torch.float32)
    for there, back in BOX_PAIRS:
        out = there(b)
        assert out.shape == (2, 3, 4) and out.dtype == torch.float32
        assert back(out).shape == (2, 3, 4)
    out = cv.xyxy_to_yxyx(np.array([[1.0, 2.0, 3.0, 4.0]]))
    assert isinstance(out, torch.Tensor) and out.tolist() == [[2.0, 1.0, 4.0, 3.0]]
    with pytest.raises(ValueError, match="boxes"):
        cv.xyxy_to_cxcywh(torch.zeros(3, 5))


def test_inputs_are_not_modified():
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    before = b.clone()
    for there, back in BOX_PAIRS:
        there(b)
        back(b)
    assert torch.equal(b, before)


def test_plus_one_widths_and_centres_of_py_faster_rcnn_anchors():
    # What py-faster-rcnn's generate_anchors() returns for base 16 (its comment prints the MATLAB table,
    # one pixel right and down of these). Widths in its +1 convention: 184 x 96, 368 x 192, ...
    pfr = torch.tensor(
        [
            [-84.0, -40.0, 99.0, 55.0],
            [-176.0, -88.0, 191.0, 103.0],
            [-360.0, -184.0, 375.0, 199.0],
            [-56.0, -56.0, 71.0, 71.0],
            [-120.0, -120.0, 135.0, 135.0],
            [-248.0, -248.0, 263.0, 263.0],
            [-36.0, -80.0, 51.0, 95.0],
            [-80.0, -168.0, 95.0, 183.0],
            [-168.0, -344.0, 183.0, 359.0],
        ]
    )
    ours = cv.plus_one_to_xyxy(pfr)
    wh = cv.xyxy_to_cxcywh(ours)[:, 2:]
    pfr_wh = pfr[:, 2:] - pfr[:, :2] + 1  # py-faster-rcnn's own width rule
    assert torch.equal(wh, pfr_wh)
    # Centred on (8, 8) in ours: the middle of the first 16 x 16 cell, where simple-faster-rcnn puts them.
    assert torch.equal(cv.xyxy_to_cxcywh(ours)[:, :2], torch.full((9, 2), 8.0))
    # anchor_wh reproduces the nine shapes (ratios outer, scales inner)
    expected = [cv.anchor_wh(16, s, r, "py-faster-rcnn") for r in (0.5, 1.0, 2.0) for s in (8, 16, 32)]
    assert wh.tolist() == [list(e) for e in expected]


# ---------------------------------------------------------------------------------------------------------
# Anchor shapes


def test_anchor_wh_hand_cases():
    w, h = cv.anchor_wh(16, 8, 0.5)  # ours: ratio = h / w
    assert w == pytest.approx(181.019336, abs=1e-5) and h == pytest.approx(90.509668, abs=1e-5)
    assert round(w, 2) == 181.02 and round(h, 2) == 90.51
    # d2l reads 0.5 as w / h: the same three numbers give the transposed shape
    assert cv.anchor_wh(16, 8, 0.5, "d2l") == pytest.approx((h, w))
    assert cv.anchor_wh(16, 8, 0.5, "w/h") == pytest.approx((h, w))
    # ... and the other definition of the same shape is 1 / r
    assert cv.anchor_wh(16, 8, cv.flip_ratio(0.5), "d2l") == pytest.approx((w, h))
    for lib in ("mmdetection", "detectron2", "simple-faster-rcnn", "h/w", "ours"):
        assert cv.anchor_wh(16, 8, 0.5, lib) == pytest.approx((w, h))
    assert cv.anchor_wh(16, 8, 0.5, "py-faster-rcnn") == (184.0, 96.0)  # 23 x 12 rounded, times 8
    assert cv.anchor_wh(16, 8, 2.0, "py-faster-rcnn") == (88.0, 176.0)  # 11 x 22
    assert cv.anchor_wh(128, 1, 0.5, "torchvision") == (182.0, 90.0)  # corners rounded: +-91, +-45
    assert cv.anchor_wh(32, 1, 1.0, "torchvision") == (32.0, 32.0)


@SETTINGS
@given(
    base=st.floats(1.0, 64.0),
    scale=st.floats(0.25, 32.0),
    ratio=st.floats(0.1, 10.0),
)
def test_anchor_wh_conventions_agree_up_to_flipping(base, scale, ratio):
    w, h = cv.anchor_wh(base, scale, ratio, "ours")
    assert w * h == pytest.approx((base * scale) ** 2, rel=1e-9)  # the area is kept
    assert h / w == pytest.approx(ratio, rel=1e-9)
    assert cv.anchor_wh(base, scale, ratio, "w/h") == pytest.approx((h, w), rel=1e-9)
    assert cv.anchor_wh(base, scale, cv.flip_ratio(ratio), "d2l") == pytest.approx((w, h), rel=1e-9)
    assert cv.flip_ratio(cv.flip_ratio(ratio)) == pytest.approx(ratio, rel=1e-12)
    tw, th = cv.anchor_wh(base * scale, 1, ratio, "torchvision")
    assert abs(tw - w) <= 1.0 and abs(th - h) <= 1.0  # rounding moves each corner by at most 0.5


def test_anchor_wh_matches_exportable_anchor_generator():
    gen = AnchorGenerator.faster_rcnn()
    base = gen.base_anchors[0]  # (9, 4), ratios outer, scales inner
    wh = (base[:, 2:] - base[:, :2]).tolist()
    expected = [cv.anchor_wh(16, s, r) for r in (0.5, 1.0, 2.0) for s in (8, 16, 32)]
    for got, exp in zip(wh, expected):
        assert got == pytest.approx(exp, rel=1e-6)


def test_anchor_wh_rejects_bad_input():
    with pytest.raises(ValueError):
        cv.anchor_wh(16, 8, 0.0)
    with pytest.raises(ValueError):
        cv.anchor_wh(16, -1, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        cv.anchor_wh(16, 8, 1.0, "yolo")


# ---------------------------------------------------------------------------------------------------------
# Match encodings


@SETTINGS
@given(gt_index=gt_indices())
def test_every_lossless_encoding_round_trips(gt_index):
    for lib in cv.LIBRARIES:
        if lib == "d2l" and bool((gt_index == -2).any()):
            continue
        back = cv.decode_match(cv.encode_match(gt_index, lib), lib)
        assert back.dtype == torch.int64
        assert torch.equal(back, gt_index), lib


@pytest.mark.parametrize("seed", range(5))
def test_round_trips_on_batches(seed):
    g = seeded_gt_index(seed)
    assert torch.equal(cv.from_mmdet_gt_inds(cv.to_mmdet_gt_inds(g)), g)
    assert torch.equal(cv.from_torchvision_matches(cv.to_torchvision_matches(g)), g)
    assert torch.equal(cv.from_detectron2_matches(*cv.to_detectron2_matches(g)), g)
    assert torch.equal(cv.from_rpn_labels(*cv.to_rpn_labels(g)), g)
    # From the foreign side: mmdetection's gt_inds -> ours -> gt_inds
    m = cv.to_mmdet_gt_inds(g)
    assert torch.equal(cv.to_mmdet_gt_inds(cv.from_mmdet_gt_inds(m)), m)
    # detectron2 keeps an argmax gt for every anchor; ours keeps it for positives only
    argmax = torch.randint(0, 7, g.shape, generator=torch.Generator().manual_seed(seed + 100))
    matches, labels = cv.to_detectron2_matches(g, argmax)
    again = cv.to_detectron2_matches(cv.from_detectron2_matches(matches, labels), argmax)
    assert torch.equal(again[0], matches) and torch.equal(again[1], labels)
    labels_rpn, argmax_gt = cv.to_rpn_labels(g, argmax)
    assert torch.equal(argmax_gt, matches) and torch.equal(labels_rpn, labels.to(torch.int64))


def test_encodings_hand_case():
    # anchors: positive of gt 0, positive of gt 1, negative, ignored
    g = torch.tensor([0, 1, -1, -2])
    assert cv.to_mmdet_gt_inds(g).tolist() == [1, 2, 0, -1]
    assert cv.to_torchvision_matches(g).tolist() == [0, 1, -1, -2]
    matches, labels = cv.to_detectron2_matches(g)
    assert matches.tolist() == [0, 1, 0, 0] and labels.tolist() == [1, 1, 0, -1] and labels.dtype == torch.int8
    assert cv.to_rpn_labels(g, torch.tensor([0, 1, 1, 0]))[0].tolist() == [1, 1, 0, -1]
    assert cv.to_rpn_labels(g, torch.tensor([0, 1, 1, 0]))[1].tolist() == [0, 1, 1, 0]
    assert cv.to_d2l_anchor_map(g, ignored_as_negative=True).tolist() == [0, 1, -1, -1]
    # The trap in one line: -1 is negative in ours and torchvision, ignored in mmdetection
    assert cv.from_mmdet_gt_inds(torch.tensor([-1])).item() == -2
    assert cv.from_torchvision_matches(torch.tensor([-1])).item() == -1


def test_d2l_has_no_ignore_state():
    g = torch.tensor([0, -2, -1])
    with pytest.raises(ValueError, match="ignored"):
        cv.to_d2l_anchor_map(g)
    with pytest.raises(ValueError, match="ignored"):
        cv.encode_match(g, "d2l")
    lossy = cv.decode_match(cv.encode_match(g, "d2l", ignored_as_negative=True), "d2l")
    assert lossy.tolist() == [0, -1, -1]  # the ignored anchor came back as a negative
    assert cv.from_d2l_anchor_map(torch.tensor([2, -1])).tolist() == [2, -1]


def test_bad_codes_are_rejected():
    with pytest.raises(ValueError, match="gt_index"):
        cv.to_mmdet_gt_inds(torch.tensor([0, -3]))
    with pytest.raises(ValueError, match="gt_inds"):
        cv.from_mmdet_gt_inds(torch.tensor([-2]))
    with pytest.raises(ValueError, match="labels"):
        cv.from_rpn_labels(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        cv.from_detectron2_matches(torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(TypeError, match="integer"):
        cv.to_mmdet_gt_inds(torch.tensor([0.0]))
    with pytest.raises(KeyError, match="match_labels"):
        cv.decode_match({"matches": torch.tensor([0])}, "detectron2")
    with pytest.raises(ValueError, match="unknown"):
        cv.encode_match(torch.tensor([0]), "yolov5")


def test_empty_inputs():
    g = torch.zeros(0, dtype=torch.int64)
    for lib in cv.LIBRARIES:
        assert cv.decode_match(cv.encode_match(g, lib), lib).shape == (0,)


def _result(gt_index: torch.Tensor, num_classes: int = 3) -> AssignResult:
    b, n = gt_index.shape
    labels = torch.where(gt_index >= 0, gt_index % num_classes, num_classes)
    zeros = torch.zeros(b, n)
    return AssignResult(gt_index, labels, torch.zeros(b, n, 4), zeros, (gt_index >= 0).float(), torch.ones(b, n))


@pytest.mark.parametrize("seed", range(5))
def test_assign_result_to_and_from_mmdet_agree_with_the_conversions(seed):
    g = seeded_gt_index(seed)
    result = _result(g)
    gt_inds = result.to_mmdet()
    assert torch.equal(gt_inds, cv.to_mmdet_gt_inds(g))
    assert torch.equal(AssignResult.from_mmdet(gt_inds), cv.from_mmdet_gt_inds(gt_inds))
    assert torch.equal(AssignResult.from_mmdet(gt_inds), g)


@SETTINGS
@given(gt_index=gt_indices())
def test_assign_result_mmdet_agrees_on_any_input(gt_index):
    result = _result(gt_index.reshape(1, -1))
    assert torch.equal(result.to_mmdet()[0], cv.to_mmdet_gt_inds(gt_index))
    assert torch.equal(AssignResult.from_mmdet(result.to_mmdet())[0], gt_index)


# ---------------------------------------------------------------------------------------------------------
# Class layout


@SETTINGS
@given(c=st.integers(1, 90), data=st.data())
def test_labels_background_first_round_trips(c, data):
    labels = torch.tensor(data.draw(st.lists(st.integers(0, c), max_size=30)), dtype=torch.int64)
    first = cv.labels_to_background_first(labels, c)
    assert torch.equal(cv.labels_from_background_first(first, c), labels)
    assert torch.equal(cv.labels_to_background_first(cv.labels_from_background_first(first, c), c), first)
    assert bool(((first == 0) == (labels == c)).all())  # background moves from C to 0


def test_labels_background_hand_case():
    # VOC: 20 classes; ours background 20, py-faster-rcnn background 0 of 21
    labels = torch.tensor([0, 14, 19, 20])
    assert cv.labels_to_background_first(labels, 20).tolist() == [1, 15, 20, 0]
    with pytest.raises(ValueError):
        cv.labels_to_background_first(torch.tensor([21]), 20)


@pytest.mark.parametrize("seed", range(3))
def test_scores_and_deltas_round_trip(seed):
    g = torch.Generator().manual_seed(seed)
    c = 20
    scores = torch.rand(5, c + 1, generator=g)
    first = cv.scores_to_background_first(scores)
    assert torch.equal(first[:, 0], scores[:, c])  # background column moved to the front
    assert torch.equal(cv.scores_from_background_first(first), scores)
    deltas = torch.randn(5, 4 * c, generator=g)
    wide = cv.deltas_to_background_first(deltas)
    assert wide.shape == (5, 84)
    assert torch.equal(cv.deltas_from_background_first(wide), deltas)
    assert torch.equal(wide[:, :4], torch.zeros(5, 4))
    # class k (ours, 0-based) reads the same four numbers in both layouts
    for k in (0, 7, 19):
        k_first = cv.labels_to_background_first(torch.tensor(k), c).item()
        assert torch.equal(
            deltas[:, list(cv.delta_columns(k, "last"))], wide[:, list(cv.delta_columns(k_first, "first"))]
        )


def test_roi_head_sizes_and_delta_columns():
    assert cv.roi_head_sizes(20, "py-faster-rcnn") == (21, 84)  # the document's 84 = 21 x 4
    assert cv.roi_head_sizes(20, "simple-faster-rcnn") == (21, 84)
    assert cv.roi_head_sizes(90, "torchvision") == (91, 364)  # torchvision's COCO models: 91 classes
    assert cv.roi_head_sizes(80, "mmdetection") == (81, 320)
    assert cv.roi_head_sizes(80, "detectron2") == (81, 320)
    assert cv.roi_head_sizes(80, "ours") == (81, 320)
    assert list(cv.delta_columns(3, "first")) == [12, 13, 14, 15]  # label K -> K*4 .. K*4+3
    with pytest.raises(ValueError):
        cv.delta_columns(0, "first")
    with pytest.raises(ValueError):
        cv.roi_head_sizes(20, "d2l")


# ---------------------------------------------------------------------------------------------------------
# The table


def test_table_has_every_library_and_renders():
    assert cv.LIBRARIES[0] == "assignlab (ours)"
    for lib in ("mmdetection", "torchvision", "detectron2", "d2l", "simple-faster-rcnn", "py-faster-rcnn"):
        assert lib in cv.LIBRARIES
    md = cv.conventions_markdown()
    lines = md.splitlines()
    assert len(lines) == 2 + len(cv.CONVENTIONS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # no stray pipes in cells
    assert "(y1, x1, y2, x2)" in md and "x2 - x1 + 1" in md and "w/h" in md
    small = cv.conventions_markdown(["library", "ratio"])
    assert small.splitlines()[0] == "| library | aspect ratio |"
    with pytest.raises(ValueError):
        cv.conventions_markdown(["colour"])
    assert len(cv.conventions_dicts()) == len(cv.CONVENTIONS)


def test_table_agrees_with_the_converters():
    assert cv.get_convention("ours") is cv.CONVENTIONS[0]
    assert cv.get_convention("mmdet").library == "mmdetection"
    for c in cv.CONVENTIONS:
        assert c.box_order in ("xyxy", "yxyx") and c.ratio in ("h/w", "w/h") and c.background in ("first", "last")
    # the one yxyx library, the one w/h library, the one +1 library
    assert [c.library for c in cv.CONVENTIONS if c.box_order == "yxyx"] == ["simple-faster-rcnn"]
    assert [c.library for c in cv.CONVENTIONS if c.ratio == "w/h"] == ["d2l"]
    assert [c.library for c in cv.CONVENTIONS if c.plus_one] == ["py-faster-rcnn"]
    # our encoding is what exportable's AssignResult says
    from exportable.assigners import result

    assert (result.NEGATIVE, result.IGNORED) == (cv.NEGATIVE, cv.IGNORED) == (-1, -2)
    assert math.isclose(cv.anchor_wh(16, 8, 0.5, cv.get_convention("ours").ratio)[0], 181.019336, abs_tol=1e-5)
