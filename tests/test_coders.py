"""exportable.coders: DeltaXYWH and distance coders by hand, round trips, clipping, bad input, ONNX."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable.coders import (
    DeltaXYWHCoder,
    DeltaXYWHDecode,
    DeltaXYWHEncode,
    DistanceDecode,
    DistancePointCoder,
)

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------
# DeltaXYWH by hand


def test_encode_by_hand():
    # anchor [0,0,10,10]: centre (5, 5), size 10 x 10; gt [5,5,15,25]: centre (10, 15), size 10 x 20.
    # dx = (10 - 5) / 10 = 0.5, dy = (15 - 5) / 10 = 1, dw = log(10 / 10) = 0, dh = log(20 / 10) = log 2.
    anchor, gt = t([[0, 0, 10, 10]]), t([[5, 5, 15, 25]])
    torch.testing.assert_close(DeltaXYWHCoder().encode(anchor, gt), t([[0.5, 1.0, 0.0, math.log(2)]]))
    # RoI-head stds (0.1, 0.1, 0.2, 0.2): (5, 10, 0, log 2 / 0.2 = 3.4657)
    rcnn = DeltaXYWHCoder(stds=RCNN_STDS)
    torch.testing.assert_close(rcnn.encode(anchor, gt), t([[5.0, 10.0, 0.0, math.log(2) / 0.2]]))
    # means are subtracted before dividing: (0.5 - 0.5) / 1 = 0
    shifted = DeltaXYWHCoder(means=(0.5, 0.0, 0.0, 0.0))
    assert shifted.encode(anchor, gt)[0, 0].item() == 0.0


def test_decode_by_hand_and_wh_clamp():
    coder = DeltaXYWHCoder()
    anchor = t([[0, 0, 10, 10]])
    # the inverse of the encode case
    torch.testing.assert_close(coder.decode(anchor, t([[0.5, 1.0, 0.0, math.log(2)]])), t([[5, 5, 15, 25]]))
    # max_ratio = |log(16 / 1000)| = 4.1352, exp(4.1352) = 62.5: dw = 10 -> w = 10 * 62.5 = 625,
    # centre 5 -> x1 = 5 - 312.5, x2 = 5 + 312.5; dh = -10 -> h = 10 * 0.016 = 0.16 -> y 5 -/+ 0.08.
    assert coder.max_ratio == pytest.approx(4.135166556742356)
    out = coder.decode(anchor, t([[0.0, 0.0, 10.0, -10.0]]))
    torch.testing.assert_close(out, t([[-307.5, 4.92, 317.5, 5.08]]))
    # clip to (H, W) = (100, 50): x to [0, 50]
    clipped = coder.decode(anchor, t([[0.0, 0.0, 10.0, -10.0]]), (100, 50))
    torch.testing.assert_close(clipped, t([[0, 4.92, 50, 5.08]]))


def test_decode_add_ctr_clamp():
    coder = DeltaXYWHCoder(add_ctr_clamp=True, ctr_clamp=32)
    anchor = t([[0, 0, 10, 10]])
    # dx = 10 -> shift 10 * 10 = 100 px, clamped to 32 -> centre 37; dy = -10 -> -32 -> centre -27.
    # dw = -10 is NOT clamped from below: w = 10 * exp(-10);
    # dh = 10 is clamped from above to 4.1352 -> h = 625.
    out = coder.decode(anchor, t([[10.0, -10.0, -10.0, 10.0]]))
    w = 10 * math.exp(-10)
    torch.testing.assert_close(out, t([[37 - w / 2, -27 - 312.5, 37 + w / 2, -27 + 312.5]]))


def test_encode_decode_broadcast_and_per_image_clip():
    g = torch.Generator().manual_seed(0)
    anchors = _boxes(g, 6)  # (N, 4)
    gts = _boxes(g, 3, 6)  # (B, N, 4)
    coder = DeltaXYWHCoder(stds=RCNN_STDS)
    deltas = coder.encode(anchors, gts)
    assert deltas.shape == (3, 6, 4)
    for i in range(3):
        torch.testing.assert_close(deltas[i], coder.encode(anchors, gts[i]), rtol=0, atol=0)
    sizes = torch.tensor([[40, 30], [200, 200], [10, 80]])
    boxes = coder.decode(anchors, deltas, sizes)
    for i in range(3):
        h, w = sizes[i].tolist()
        torch.testing.assert_close(boxes[i], coder.decode(anchors, deltas[i], (h, w)), rtol=0, atol=0)
        assert bool((boxes[i][:, 0::2] <= w).all() and (boxes[i][:, 1::2] <= h).all())
        assert bool((boxes[i] >= 0).all())
    # clip_border=False ignores the size
    free = DeltaXYWHCoder(stds=RCNN_STDS, clip_border=False)
    torch.testing.assert_close(free.decode(anchors, deltas, sizes), coder.decode(anchors, deltas))


def test_zero_size_gt_gives_minus_inf_and_empty_inputs():
    coder = DeltaXYWHCoder()
    # a zero-width gt: dw = log(0 / 10) = -inf (mmdetection's behaviour, documented)
    d = coder.encode(t([[0, 0, 10, 10]]), t([[5, 0, 5, 10]]))
    assert d[0, 2].item() == -math.inf and d[0, 3].item() == 0.0
    e = torch.zeros(0, 4)
    assert coder.encode(e, e).shape == (0, 4)
    assert coder.decode(e, e, (10, 10)).shape == (0, 4)
    assert coder.decode(e, torch.zeros(2, 0, 4), torch.tensor([[5, 5], [6, 6]])).shape == (2, 0, 4)


# ---------------------------------------------------------------------------------------------------------
# Round trips (hypothesis)


def _boxes(g: torch.Generator, *shape: int, scale: float = 100.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=g) * scale
    wh = 1 + torch.rand(*shape, 2, generator=g) * scale / 2
    return torch.cat([xy, xy + wh], dim=-1)


xy_st = st.floats(0, 200, width=32)
wh_st = st.floats(2, 100, width=32)
box_st = st.tuples(xy_st, xy_st, wh_st, wh_st).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))
# gt size relative to its anchor: within [1/50, 50], inside the 62.5x clip ratio (gts reach 200 + 100 * 50)
pair_st = st.tuples(box_st, box_st, st.floats(0.02, 50), st.floats(0.02, 50))


@settings(max_examples=60, deadline=None)
@given(st.lists(pair_st, min_size=1, max_size=8), st.sampled_from([(0, 0, 0, 0), (0.1, -0.2, 0.05, 0.0)]))
def test_delta_decode_inverts_encode(pairs, means):
    anchors = t([p[0] for p in pairs])
    gts = []
    for (ax1, ay1, ax2, ay2), (gx1, gy1, _, _), rw, rh in pairs:
        gts.append((gx1, gy1, gx1 + (ax2 - ax1) * rw, gy1 + (ay2 - ay1) * rh))
    gts = t(gts)
    for coder in (DeltaXYWHCoder(means=means), DeltaXYWHCoder(means=means, stds=RCNN_STDS)):
        deltas = coder.encode(anchors, gts)
        # within the image (6000 x 6000 holds every box), so clipping changes nothing
        torch.testing.assert_close(coder.decode(anchors, deltas, (6000, 6000)), gts, rtol=1e-5, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(box_st, st.floats(0.01, 0.99), st.floats(0.01, 0.99)), min_size=1, max_size=8))
def test_distance_decode_inverts_encode_for_points_inside(rows):
    gts = t([r[0] for r in rows])
    points = t([(x1 + (x2 - x1) * u, y1 + (y2 - y1) * v) for (x1, y1, x2, y2), u, v in rows])
    coder = DistancePointCoder()
    dist = coder.encode(points, gts)
    assert bool((dist >= 0).all())
    torch.testing.assert_close(coder.decode(points, dist, (600, 500)), gts, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# Distances by hand


def test_distance_coder_by_hand():
    coder = DistancePointCoder()
    point, gt = t([[5, 5]]), t([[0, 0, 10, 20]])
    # (l, t, r, b) = (5 - 0, 5 - 0, 10 - 5, 20 - 5)
    assert coder.encode(point, gt).tolist() == [[5, 5, 5, 15]]
    # max_dis = 10, eps = 0.1: clamped to [0, 9.9]; a point outside gets 0 instead of a negative distance
    torch.testing.assert_close(coder.encode(point, gt, max_dis=10), t([[5, 5, 5, 9.9]]))
    torch.testing.assert_close(coder.encode(t([[-2, 5]]), gt, max_dis=10), t([[0, 5, 9.9, 9.9]]))
    assert coder.encode(t([[-2, 5]]), gt).tolist() == [[-2, 5, 12, 15]]
    # decode and clip to (H, W) = (12, 8)
    assert coder.decode(point, t([[5, 5, 5, 15]])).tolist() == [[0, 0, 10, 20]]
    assert coder.decode(point, t([[9, 9, 9, 9]]), (12, 8)).tolist() == [[0, 0, 8, 12]]
    sizes = torch.tensor([[12, 8], [100, 100]])
    batched = coder.decode(point, t([[9, 9, 9, 9]]).expand(2, 1, 4), sizes)
    assert batched.tolist() == [[[0, 0, 8, 12]], [[0, 0, 14, 14]]]


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_name_the_argument():
    coder = DeltaXYWHCoder()
    anchor = t([[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="anchors"):
        coder.encode(t([[0, 0, 0, 10]]), anchor)  # zero-width anchor -> inf/NaN otherwise
    with pytest.raises(ValueError, match="anchors"):
        coder.encode(t([[0, 5, 10, 5]]), anchor)  # zero-height
    with pytest.raises(ValueError, match="gt"):
        coder.encode(anchor, t([[0, 0, 10, float("nan")]]))
    with pytest.raises(ValueError, match="gt"):
        coder.encode(anchor, torch.zeros(2, 4))  # N = 2 vs 1
    with pytest.raises(TypeError, match="deltas"):
        coder.decode(anchor, torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="deltas"):
        coder.decode(anchor, torch.zeros(1, 5))
    with pytest.raises(ValueError, match="max_shape"):
        coder.decode(anchor, torch.zeros(2, 1, 4), torch.tensor([[5, 5], [5, 5], [5, 5]]))
    with pytest.raises(ValueError, match="stds"):
        DeltaXYWHCoder(stds=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="means"):
        DeltaXYWHCoder(means=(0, 0, 0))
    dist = DistancePointCoder()
    with pytest.raises(ValueError, match="points"):
        dist.encode(torch.zeros(1, 3), anchor)
    with pytest.raises(ValueError, match="distances"):
        dist.decode(torch.zeros(1, 2), t([[1, float("inf"), 1, 1]]))
    with pytest.raises(ValueError, match="image_sizes"):
        DeltaXYWHDecode()(anchor, torch.zeros(2, 1, 4), torch.tensor([[5, 5]]))
    with pytest.raises(ValueError, match="gt_boxes"):
        DeltaXYWHEncode()(anchor, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="distances"):
        DistanceDecode()(torch.zeros(3, 2), torch.zeros(1, 2, 4), torch.tensor([[5, 5]]))


# ---------------------------------------------------------------------------------------------------------
# Modules: eager and ONNX


def test_modules_equal_the_coders():
    g = torch.Generator().manual_seed(1)
    anchors, gts = _boxes(g, 7), _boxes(g, 2, 7)
    sizes = torch.tensor([[60, 50], [120, 90]])
    coder = DeltaXYWHCoder(stds=RCNN_STDS)
    deltas = DeltaXYWHEncode(coder)(anchors, gts)
    assert torch.equal(deltas, coder.encode(anchors, gts))
    assert torch.equal(DeltaXYWHDecode(coder)(anchors, deltas, sizes), coder.decode(anchors, deltas, sizes))
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    dist = DistancePointCoder().encode(points, gts)
    want = DistancePointCoder().decode(points, dist, sizes)
    assert torch.equal(DistanceDecode()(points, dist, sizes), want)
    assert torch.equal(DeltaXYWHDecode(coder)(anchors, deltas), coder.decode(anchors, deltas))


def _session(module, args, names):
    import onnxruntime as ort
    from torch.export import Dim

    b, n = Dim("B"), Dim("N")
    shapes = [{0: n}, {0: b, 1: n}, {0: b}][: len(args)]
    program = torch.onnx.export(
        module.eval(), args, dynamo=True, optimize=False, dynamic_shapes=shapes, input_names=names
    )
    model = program.model_proto
    for inp in model.graph.input:  # B and N stay named dims
        assert all(d.dim_param for d in inp.type.tensor_type.shape.dim[:-1]), inp.name
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore:# The axis name")
def test_onnx_modules_match_eager_at_other_sizes():
    g = torch.Generator().manual_seed(2)
    sizes3 = torch.tensor([[60, 50], [120, 90], [40, 40]])
    coder = DeltaXYWHCoder(means=(0.0, 0.1, 0.0, -0.1), stds=RCNN_STDS)
    decode = DeltaXYWHDecode(coder)
    example = (_boxes(g, 5), torch.randn(3, 5, 4, generator=g), sizes3)
    s = _session(decode, example, ["anchors", "deltas", "image_sizes"])
    anchors = _boxes(g, 11)
    deltas = torch.randn(2, 11, 4, generator=g) * 3
    deltas[0, 0] = t([100.0, -100.0, 50.0, -50.0])  # hits every clamp
    sizes = torch.tensor([[80, 70], [30, 200]])
    got = s.run(None, {"anchors": anchors.numpy(), "deltas": deltas.numpy(), "image_sizes": sizes.numpy()})[0]
    np.testing.assert_allclose(got, decode(anchors, deltas, sizes).numpy(), rtol=1e-5, atol=1e-4)

    encode = DeltaXYWHEncode(coder)
    s = _session(encode, (_boxes(g, 5), _boxes(g, 3, 5)), ["anchors", "gt_boxes"])
    gts = _boxes(g, 2, 11)
    got = s.run(None, {"anchors": anchors.numpy(), "gt_boxes": gts.numpy()})[0]
    np.testing.assert_allclose(got, encode(anchors, gts).numpy(), rtol=1e-5, atol=1e-5)

    dist = DistanceDecode()
    points = torch.rand(5, 2, generator=g) * 50
    example = (points, torch.rand(3, 5, 4, generator=g) * 9, sizes3)
    s = _session(dist, example, ["points", "distances", "image_sizes"])
    points = torch.rand(11, 2, generator=g) * 100
    distances = torch.rand(2, 11, 4, generator=g) * 40
    feeds = {"points": points.numpy(), "distances": distances.numpy(), "image_sizes": sizes.numpy()}
    got = s.run(None, feeds)[0]
    assert np.array_equal(got, dist(points, distances, sizes).numpy())
