"""exportable.boxes: hand-computed cases, properties, broadcasting, bad and degenerate input, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import checks_disabled
from exportable.boxes import (
    BoxOverlaps,
    _box_giou,
    _box_iof,
    _box_iou,
    _clip_boxes,
    box_area,
    box_centers,
    box_distances,
    box_giou,
    box_iof,
    box_iou,
    box_overlaps,
    box_wh,
    clip_boxes,
    points_in_boxes,
    points_near_centers,
)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_iou_of_two_offset_squares_is_one_seventh():
    # [0,0,2,2] and [1,1,3,3]: areas 4 and 4, intersection [1,1,2,2] = 1, union 4 + 4 - 1 = 7.
    iou = box_iou(t([[0, 0, 2, 2]]), t([[1, 1, 3, 3]]))
    assert iou.shape == (1, 1)
    assert iou.item() == pytest.approx(1 / 7)


def test_iof_divides_by_the_first_argument_area():
    # a = [0,0,2,2] (area 4), b = [1,1,5,5] (area 16), intersection [1,1,2,2] = 1.
    a, b = t([[0, 0, 2, 2]]), t([[1, 1, 5, 5]])
    assert box_iof(a, b).item() == pytest.approx(1 / 4)  # 1 / area(a)
    assert box_iof(b, a).item() == pytest.approx(1 / 16)  # 1 / area(b)
    assert box_iou(a, b).item() == pytest.approx(1 / 19)  # 1 / (4 + 16 - 1)
    # A box inside another: IoF of the small one is 1, IoU is the area ratio.
    big, small = t([[0, 0, 4, 4]]), t([[1, 1, 2, 2]])
    assert box_iof(small, big).item() == pytest.approx(1.0)
    assert box_iof(big, small).item() == pytest.approx(1 / 16)
    assert box_iou(small, big).item() == pytest.approx(1 / 16)


def test_giou_hand_cases():
    # Disjoint: [0,0,1,1] and [2,0,3,1]: IoU 0, U = 1 + 1 = 2, enclosing [0,0,3,1] E = 3 -> 0 - (3-2)/3.
    assert box_giou(t([[0, 0, 1, 1]]), t([[2, 0, 3, 1]])).item() == pytest.approx(-1 / 3)
    # Overlapping: [0,0,2,2] and [1,1,3,3]: IoU 1/7, U = 7, E = 3 * 3 = 9 -> 1/7 - 2/9 = -5/63.
    assert box_giou(t([[0, 0, 2, 2]]), t([[1, 1, 3, 3]])).item() == pytest.approx(-5 / 63)
    # Same box: IoU 1, E = U -> GIoU 1.
    assert box_giou(t([[3, 4, 8, 10]]), t([[3, 4, 8, 10]])).item() == pytest.approx(1.0)
    # Far apart: tends to -1: [0,0,1,1] vs [99,99,100,100]: U = 2, E = 10000 -> -(9998/10000).
    assert box_giou(t([[0, 0, 1, 1]]), t([[99, 99, 100, 100]])).item() == pytest.approx(-0.9998)


def test_zero_area_boxes_give_zero_not_nan():
    point = t([[1, 1, 1, 1]])  # zero-area (a point)
    line = t([[1, 1, 1, 5]])  # zero-area (a vertical segment)
    box = t([[0, 0, 4, 4]])
    for a, b in [(point, point), (line, line), (point, line)]:
        # inter 0, union 0 -> max(0, eps): IoU 0; enclosing area 0 -> eps: GIoU 0 - (eps - eps)/eps = 0.
        assert box_iou(a, b).item() == 0.0
        assert box_giou(a, b).item() == 0.0
        assert box_iof(a, b).item() == 0.0
    # A point inside a box: IoU 0, IoF(point, box) = 0 / max(0, eps) = 0, IoF(box, point) = 0.
    assert box_iou(point, box).item() == 0.0
    assert box_iof(point, box).item() == 0.0
    assert box_iof(box, point).item() == 0.0
    # Two separate points (mmdetection): U = eps, E = 1 -> GIoU = -(1 - eps), finite.
    g = box_giou(t([[0, 0, 0, 0]]), t([[1, 1, 1, 1]]))
    assert torch.isfinite(g).all() and g.item() == pytest.approx(-1.0, abs=1e-5)


def test_area_centers_wh():
    boxes = t([[0, 0, 2, 3], [1, 1, 1, 1], [-2, -4, 2, 4]])
    assert box_area(boxes).tolist() == [6, 0, 32]
    assert box_centers(boxes).tolist() == [[1, 1.5], [1, 1], [0, 0]]
    assert box_wh(boxes).tolist() == [[2, 3], [0, 0], [4, 8]]
    assert box_area(boxes.reshape(3, 1, 4)).shape == (3, 1)


def test_overlaps_dispatch():
    a, b = t([[0, 0, 2, 2], [1, 0, 4, 3]]), t([[1, 1, 3, 3]])
    assert torch.equal(box_overlaps(a, b), box_iou(a, b))
    assert torch.equal(box_overlaps(a, b, "iof"), box_iof(a, b))
    assert torch.equal(box_overlaps(a, b, mode="giou"), box_giou(a, b))
    assert torch.equal(box_overlaps(a, a, "iou", True), box_iou(a, a, aligned=True))
    with pytest.raises(ValueError, match="mode"):
        box_overlaps(a, b, mode="diou")


# ---------------------------------------------------------------------------------------------------------
# Aligned, broadcasting, empty


def _random_boxes(g: torch.Generator, *shape: int, scale: float = 100.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=g) * scale
    wh = torch.rand(*shape, 2, generator=g) * scale / 2
    return torch.cat([xy, xy + wh], dim=-1)


@pytest.mark.parametrize("fn", [box_iou, box_iof, box_giou])
def test_aligned_is_the_diagonal_of_pairwise(fn):
    g = torch.Generator().manual_seed(0)
    a, b = _random_boxes(g, 2, 7), _random_boxes(g, 2, 7)
    pairwise = fn(a, b)  # (2, 7, 7)
    aligned = fn(a, b, aligned=True)  # (2, 7)
    assert aligned.shape == (2, 7)
    torch.testing.assert_close(aligned, torch.diagonal(pairwise, dim1=-2, dim2=-1))


@pytest.mark.parametrize("fn", [box_iou, box_iof, box_giou])
def test_shared_anchors_broadcast_against_batched_gts(fn):
    g = torch.Generator().manual_seed(1)
    anchors = _random_boxes(g, 11)  # (N, 4)
    gts = _random_boxes(g, 3, 5)  # (B, M, 4)
    out = fn(anchors, gts)
    assert out.shape == (3, 11, 5)
    for i in range(3):
        torch.testing.assert_close(out[i], fn(anchors, gts[i]), rtol=0, atol=0)
    # and the other way round: (B, N, 4) against (M, 4)
    assert fn(gts, anchors).shape == (3, 5, 11)


def test_empty_inputs_give_empty_outputs():
    e, b = torch.zeros(0, 4), _random_boxes(torch.Generator().manual_seed(2), 3)
    for fn in (box_iou, box_iof, box_giou):
        assert fn(e, b).shape == (0, 3)
        assert fn(b, e).shape == (3, 0)
        assert fn(e, e, aligned=True).shape == (0,)
        assert fn(torch.zeros(2, 0, 4), b).shape == (2, 0, 3)
    assert box_area(e).shape == (0,)
    assert box_centers(e).shape == (0, 2)
    assert box_distances(torch.zeros(0, 2), b).shape == (0, 3, 4)
    assert points_in_boxes(torch.zeros(4, 2), e).shape == (4, 0)
    assert clip_boxes(e, (10, 10)).shape == (0, 4)
    assert clip_boxes(torch.zeros(2, 0, 4), torch.tensor([[5, 5], [6, 6]])).shape == (2, 0, 4)


# ---------------------------------------------------------------------------------------------------------
# Properties

coord = st.floats(min_value=-50, max_value=150, allow_nan=False, width=32)
big_side = st.floats(0.5, 80, width=32)
side = st.floats(min_value=0, max_value=80, allow_nan=False, width=32)
box = st.tuples(coord, coord, side, side).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))
box_lists = st.lists(box, min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(box_lists, box_lists)
def test_iou_symmetric_bounded_and_giou_below_iou(a, b):
    a, b = t(a), t(b)
    iou = box_iou(a, b)
    giou = box_giou(a, b)
    torch.testing.assert_close(iou, box_iou(b, a).T)
    torch.testing.assert_close(giou, box_giou(b, a).T)
    assert bool(((iou >= 0) & (iou <= 1 + 1e-6)).all())
    assert bool(((giou >= -1 - 1e-6) & (giou <= 1 + 1e-6)).all())
    assert bool((giou <= iou + 1e-6).all())
    assert bool(((box_iof(a, b) >= 0) & (box_iof(a, b) <= 1 + 1e-6)).all())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(coord, coord, big_side, big_side), min_size=1, max_size=6))
def test_iou_with_itself_is_one(raw):
    a = t([(x, y, x + w, y + h) for x, y, w, h in raw])
    torch.testing.assert_close(box_iou(a, a, aligned=True), torch.ones(len(raw)))
    torch.testing.assert_close(box_giou(a, a, aligned=True), torch.ones(len(raw)))
    torch.testing.assert_close(box_iof(a, a, aligned=True), torch.ones(len(raw)))


# ---------------------------------------------------------------------------------------------------------
# Points against boxes


def test_distances_and_points_in_boxes_strict():
    boxes = t([[0, 0, 10, 20]])
    points = t([[5, 5], [0, 5], [10, 10], [0.005, 5], [0.02, 5], [-1, -1]])
    d = box_distances(points, boxes)  # (6, 1, 4) as (l, t, r, b)
    assert d.shape == (6, 1, 4)
    assert d[0, 0].tolist() == [5, 5, 5, 15]
    assert d[5, 0].tolist() == [-1, -1, 11, 21]
    # strict: on the left or right edge (l == 0 or r == 0) is outside
    assert points_in_boxes(points, boxes)[:, 0].tolist() == [True, False, False, True, True, False]
    # ATSS margin 0.01: 0.005 from the edge is outside, 0.02 inside
    in_atss = points_in_boxes(points, boxes, margin=0.01)[:, 0]
    assert in_atss.tolist() == [True, False, False, False, True, False]


def test_points_near_centers_per_point_radius():
    boxes = t([[0, 0, 10, 10], [100, 100, 120, 140]])  # centres (5, 5) and (110, 120)
    points = t([[5, 5], [9, 5], [10, 5], [110, 124], [5, 15]])
    radius = t([2.5, 5.0, 5.0, 5.0, 20.0])  # e.g. 2.5 * stride
    near = points_near_centers(points, boxes, radius)  # (5, 2)
    # |9 - 5| = 4 < 5; |10 - 5| = 5 is not < 5 (strict); |124 - 120| = 4 < 5; (5, 15) within 20 of (5, 5).
    assert near.tolist() == [[True, False], [True, False], [False, False], [False, True], [True, False]]
    # a single radius in pixels
    assert points_near_centers(points, boxes, 4.5)[:, 0].tolist() == [True, True, False, False, False]
    # batched gts (B, M, 4) with shared points
    assert points_near_centers(points, boxes.expand(3, 2, 4), radius).shape == (3, 5, 2)


def test_strict_point_tests_compare_exactly_as_the_differences():
    # margin 0 and the centre square are written as comparisons (px > x1, px > cx - r): IEEE subtraction with
    # gradual underflow makes a - b > 0 exactly when a > b; pinned on points one ulp either side of every edge
    g = torch.Generator().manual_seed(7)
    boxes = _random_boxes(g, 1, 5)[0]  # (M, 4)
    radius = torch.tensor([4.0, 8.0, 12.5])  # (3,) one per point of each triple below
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2  # (M,)
    edges = torch.cat([boxes[:, 0], boxes[:, 2], cx - 8.0, cx + 8.0])  # (4M,) x values on an edge
    xs = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])  # (12M,)
    ys = torch.cat([boxes[:, 1], boxes[:, 3], cy - 8.0, cy + 8.0]).repeat(3)  # (12M,)
    points = torch.stack([xs, ys[torch.randperm(len(ys), generator=g)]], dim=1)  # (P, 2)
    r = radius.repeat(len(points) // 3 + 1)[: len(points)]  # (P,)
    px, py = points[:, :1], points[:, 1:]  # (P, 1)
    x1, y1, x2, y2 = boxes.unbind(-1)  # (M,)
    want_in = ((px - x1) > 0) & ((py - y1) > 0) & ((x2 - px) > 0) & ((y2 - py) > 0)  # (P, M)
    rr = r[:, None]  # (P, 1)
    want_near = ((px - (cx - rr)) > 0) & (((cx + rr) - px) > 0) & ((py - (cy - rr)) > 0) & (((cy + rr) - py) > 0)
    assert torch.equal(points_in_boxes(points, boxes), want_in)
    assert torch.equal(points_near_centers(points, boxes, r), want_near)
    assert want_in.any() and not want_in.all() and want_near.any() and not want_near.all()


def test_points_in_boxes_broadcasts_over_images():
    g = torch.Generator().manual_seed(3)
    gts = _random_boxes(g, 2, 4)  # (B, M, 4)
    points = torch.rand(9, 2, generator=g) * 100  # (N, 2)
    inside = points_in_boxes(points, gts)  # (B, N, M)
    assert inside.shape == (2, 9, 4) and inside.dtype == torch.bool
    for i in range(2):
        d = box_distances(points, gts[i])
        assert torch.equal(inside[i], d.min(dim=-1).values > 0)


# ---------------------------------------------------------------------------------------------------------
# Clipping


def test_clip_boxes_tuple_and_per_image():
    boxes = t([[[-5, -5, 50, 50], [10, 10, 20, 30]], [[-5, -5, 50, 50], [90, 2, 120, 3]]])  # (2, 2, 4)
    # one (H, W) = (40, 30): x to [0, 30], y to [0, 40]
    assert clip_boxes(boxes[0], (40, 30)).tolist() == [[0, 0, 30, 40], [10, 10, 20, 30]]
    sizes = torch.tensor([[40, 30], [100, 100]])  # (B, 2) int64 (H, W)
    out = clip_boxes(boxes, sizes)
    assert out.dtype == torch.float32
    assert out[0].tolist() == [[0, 0, 30, 40], [10, 10, 20, 30]]
    assert out[1].tolist() == [[0, 0, 50, 50], [90, 2, 100, 3]]
    # a (2,) tensor gives the same numbers; size tensors are int64, as everywhere (float ones are refused)
    assert torch.equal(clip_boxes(boxes[0], torch.tensor([40, 30])), out[0])
    with pytest.raises(TypeError, match=r"image_sizes: expected int64, got float32; cast with \.long\(\)"):
        clip_boxes(boxes, sizes.float())
    # a box entirely outside the image collapses onto the border (zero area)
    assert clip_boxes(t([[50, 50, 60, 60]]), (40, 30)).tolist() == [[30, 40, 30, 40]]


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_name_the_argument():
    good = t([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="boxes1"):
        box_iou(torch.zeros(3, 5), good)
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(good, t([[0, 0, float("nan"), 1]]))
    with pytest.raises(TypeError, match="boxes1"):
        box_iou(torch.zeros(2, 4, dtype=torch.int64), good)
    with pytest.raises(ValueError, match="boxes2"):
        box_giou(good, t([[2, 0, 1, 1]]))  # x2 < x1
    with pytest.raises(ValueError, match="boxes1"):
        box_iof(t([[0, 3, 1, 1]]), good)  # y2 < y1
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 5, 4))  # batch dims 2 vs 3
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(torch.zeros(3, 4), torch.zeros(5, 4), aligned=True)
    with pytest.raises(TypeError, match="boxes1"):
        box_iou([[0, 0, 1, 1]], good)
    with pytest.raises(ValueError, match="boxes"):
        box_area(t([[0, 0, 1, float("inf")]]))
    with pytest.raises(ValueError, match="points"):
        points_in_boxes(torch.zeros(3, 3), good)
    with pytest.raises(ValueError, match="radius"):
        points_near_centers(torch.zeros(3, 2), good, torch.ones(4))
    with pytest.raises(ValueError, match="image_sizes"):
        clip_boxes(torch.zeros(2, 3, 4), torch.tensor([[1, 1], [1, 1], [1, 1]]))  # B 3 vs 2
    with pytest.raises(TypeError, match="image_sizes"):
        clip_boxes(good, (1, 2, 3))


def test_checks_can_be_switched_off():
    inverted = t([[2, 0, 1, 1]])
    with checks_disabled():
        assert box_iou(inverted, inverted).shape == (1, 1)  # no error, meaningless number
    with pytest.raises(ValueError):
        box_iou(inverted, inverted)


# ---------------------------------------------------------------------------------------------------------
# ONNX: the private functions other modules call inside their graphs


class _Overlaps(torch.nn.Module):
    def forward(self, anchors, gt_boxes, image_sizes):
        clipped = _clip_boxes(anchors.unsqueeze(0), image_sizes)  # (B, N, 4)
        return (
            _box_iou(anchors, gt_boxes),
            _box_iof(gt_boxes, anchors),
            _box_giou(clipped, gt_boxes),
            clipped,
        )


@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore:# The axis name")
def test_onnx_matches_eager_at_other_sizes_with_degenerate_boxes():
    import onnxruntime as ort
    from torch.export import Dim

    g = torch.Generator().manual_seed(4)
    n, b, m = Dim("N"), Dim("B"), Dim("M")
    args = (_random_boxes(g, 6), _random_boxes(g, 2, 3), torch.tensor([[50, 60], [70, 40]]))
    program = torch.onnx.export(
        _Overlaps().eval(), args, dynamo=True, optimize=False, dynamic_shapes=({0: n}, {0: b, 1: m}, {0: b})
    )
    model = program.model_proto
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["anchors"][0] and dims["gt_boxes"][0] and dims["gt_boxes"][1]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # other sizes, with zero-area boxes (eps paths), a duplicated box and out-of-image anchors
    anchors = torch.cat([_random_boxes(g, 9, scale=150.0), t([[3, 3, 3, 3], [0, 0, 0, 10]])])  # (11, 4)
    copies = anchors[None, [9, 10, 0, 1]].expand(3, 4, 4)  # (3, 4, 4)
    gts = torch.cat([_random_boxes(g, 3, 4), copies], dim=1)  # (3, 8, 4)
    sizes = torch.tensor([[100, 120], [20, 30], [64, 64]])
    feeds = {"anchors": anchors.numpy(), "gt_boxes": gts.numpy(), "image_sizes": sizes.numpy()}
    got = session.run(None, feeds)
    want = _Overlaps()(anchors, gts, sizes)
    for x, y in zip(got, want):
        assert x.shape == tuple(y.shape)
        assert np.isfinite(x).all()
        np.testing.assert_allclose(x, y.numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Modules


def test_box_overlaps_module():
    g = torch.Generator().manual_seed(5)
    a, b = _random_boxes(g, 2, 6), _random_boxes(g, 2, 3)
    for mode, fn in [("iou", box_iou), ("iof", box_iof), ("giou", box_giou)]:
        assert torch.equal(BoxOverlaps(mode)(a, b), fn(a, b))
    assert BoxOverlaps(aligned=True)(a, a).shape == (2, 6)
    with pytest.raises(ValueError, match="mode"):
        BoxOverlaps("ciou")
    with pytest.raises(ValueError, match="boxes2"):
        BoxOverlaps()(a, torch.zeros(2, 3, 5))




def test_point_tests_pairwise_and_aligned_give_the_same_answers_in_both_layouts():
    g = torch.Generator().manual_seed(4)
    points = (torch.rand(50, 2, generator=g) * 64).round()  # (N, 2) on a pixel grid: exact edge cases
    xy = (torch.rand(3, 6, 2, generator=g) * 48).round()
    gts = torch.cat([xy, xy + (torch.rand(3, 6, 2, generator=g) * 24).round()], -1)  # (B, M, 4) some zero-size
    radius = torch.full((50,), 8.0)  # (N,)
    pair = points_in_boxes(points, gts, margin=0.01)  # (B, N, M)
    gt_major = points_in_boxes(points, gts[:, :, None], margin=0.01, aligned=True)  # (B, M, N)
    assert torch.equal(pair.transpose(1, 2), gt_major)
    near = points_near_centers(points, gts, radius)  # (B, N, M)
    assert torch.equal(near.transpose(1, 2), points_near_centers(points, gts[:, :, None], radius, aligned=True))
    # gathered candidates (B, M, K, 2) against their own gt (B, M, 1, 4)
    cand = points[torch.randint(0, 50, (3, 6, 5), generator=g)]  # (B, M, K, 2)
    inside = points_in_boxes(cand, gts[:, :, None], aligned=True)  # (B, M, K)
    d = torch.cat([cand - gts[:, :, None, :2], gts[:, :, None, 2:] - cand], -1)  # (B, M, K, 4)
    assert torch.equal(inside, d.amin(-1) > 0)
