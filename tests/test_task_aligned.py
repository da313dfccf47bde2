"""TaskAlignedAssigner (TOOD) and UltralyticsTaskAlignedAssigner: TOOD's rules by hand, ultralytics' documented
behaviour by hand, the reference, the one path in image chunks and at once, onnxruntime (degenerate inputs,
identical gts bit for bit), the variant alias, and bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners.task_aligned import (
    TaskAlignedAssigner,
    alignment_metric,
    stal_boxes,
)
from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner, listed_pairs, pair_scores
from exportable.batching import pad_gts
from exportable.box_pairs import point_blocks, points_in_boxes_pairs
from exportable.boxes import _points_in_boxes, box_ciou
from exportable.examples import task_aligned_inputs
from exportable.numerics import power
from lessons import task_aligned as ref


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def run(assigner, points, scores, preds, gts, labels=None, **kw):
    """One image: points (N, 2), scores (N, C), preds (N, 4), gts (M, 4) -> AssignResult of batch 1."""
    points, scores, preds = T(points), T(scores), T(preds)
    gts = T(gts).reshape(-1, 4)
    labels = torch.zeros(len(gts), dtype=torch.int64) if labels is None else torch.tensor(labels)
    batch = pad_gts([gts], [labels])
    strides = torch.full((len(points),), 8.0)
    return assigner(points, strides, scores[None], preds[None], batch.boxes, batch.labels, batch.mask, **kw)


def square(cx, cy, half):
    return [cx - half, cy - half, cx + half, cy + half]


# ---------------------------------------------------------------------------------------------------------
# TOOD (mmdetection 3.3) by hand


def test_tood_metric_topk_and_normalisation_by_hand():
    gt = [0.0, 0.0, 20.0, 20.0]
    points = [[5, 5], [10, 10], [15, 15], [30, 30]]
    preds = [[0, 0, 20, 20], [0, 0, 20, 10], [0, 0, 10, 10], [0, 0, 20, 20]]  # IoU 1, 0.5, 0.25, 1
    scores = [[0.5], [0.9], [0.8], [0.9]]
    res = run(TaskAlignedAssigner(topk=3, num_classes=1), points, scores, preds, [gt])
    t = [0.5 * 1.0, 0.9 * 0.5**6, 0.8 * 0.25**6, 0.9]  # s * u^6
    # top-3 by t: points 3 (0.9, centre outside the gt), 0 (0.5), 1 (0.014); point 2 is 4th
    assert res.gt_index.tolist() == [[0, 0, -1, -1]]
    assert res.labels.tolist() == [[0, 0, 1, 1]]
    assert res.overlaps[0].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    # t_hat = t / (max t + 1e-7) * max u over the gt's final positives (points 0 and 1)
    want = [t[0] / (t[0] + 1e-7) * 1.0, t[1] / (t[0] + 1e-7) * 1.0, 0.0, 0.0]
    assert res.target_scores[0].tolist() == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert res.boxes[0, 0].tolist() == gt and res.boxes[0, 2].tolist() == [0, 0, 0, 0]
    assert res.weights.tolist() == [[1.0] * 4]


def test_tood_needs_a_positive_metric_and_the_centre_inside_by_more_than_0_01():
    gt = [0.0, 0.0, 20.0, 20.0]
    points = [[10, 10], [0.01, 10], [0.02, 10], [10, 12]]
    preds = [[0, 0, 20, 20]] * 3 + [[100, 100, 110, 110]]  # point 3: IoU 0 -> t = 0 though in the top-4
    scores = [[0.5], [0.5], [0.5], [0.9]]
    res = run(TaskAlignedAssigner(topk=4), points, scores, preds, [gt])
    # point 1 sits 0.01 px from the left side: not inside (strict >); point 2 (0.02 px) is
    assert res.gt_index.tolist() == [[0, -1, 0, -1]]
    # the same with a score of 0 instead of an IoU of 0
    preds[3] = [0, 0, 20, 20]
    scores[3] = [0.0]
    assert run(TaskAlignedAssigner(topk=4), points, scores, preds, [gt]).gt_index.tolist() == [[0, -1, 0, -1]]


def test_tood_conflicts_go_to_the_highest_iou_not_the_highest_metric_and_ties_to_the_lower_gt():
    a, b = [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 16.0]
    points = [[10, 8]]
    preds = [[0, 0, 20, 17]]  # IoU 0.85 with a, 16/17 = 0.94 with b
    scores = [[0.9, 0.1]]  # class 0 (gt a) scores high: t_a = 0.9 * 0.85^6 = 0.34 > t_b = 0.1 * 0.94^6 = 0.07
    res = run(TaskAlignedAssigner(topk=1), points, scores, preds, [a, b], labels=[0, 1])
    assert res.gt_index.tolist() == [[1]] and res.labels.tolist() == [[1]]
    assert res.overlaps[0, 0].item() == pytest.approx(16 / 17)
    # equal IoU with two gts: the lower gt index wins
    res = run(TaskAlignedAssigner(topk=1), points, scores, preds, [b, b], labels=[1, 0])
    assert res.gt_index.tolist() == [[0]] and res.labels.tolist() == [[1]]


def test_tood_ties_at_the_kth_place_go_to_the_lower_point_index():
    gt = [0.0, 0.0, 40.0, 40.0]
    points = [[5, 5], [15, 15], [25, 25], [35, 35]]
    preds = [[0, 0, 40, 40]] * 4  # the same IoU for all
    scores = [[0.5], [0.7], [0.7], [0.7]]  # three equal metrics compete for 2 places
    res = run(TaskAlignedAssigner(topk=2), points, scores, preds, [gt])
    assert res.gt_index.tolist() == [[-1, 0, 0, -1]]
    res = run(TaskAlignedAssigner(topk=1), points, scores[::-1], preds, [gt])  # 0.7, 0.7, 0.7, 0.5
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]


def test_tood_single_positive_and_the_eps():
    res = run(TaskAlignedAssigner(topk=13), [[10, 10]], [[0.5]], [[0, 0, 20, 10]], [[0, 0, 20, 20]])
    t, u = 0.5 * 0.5**6, 0.5
    assert res.target_scores[0, 0].item() == pytest.approx(t / (t + 1e-7) * u, rel=1e-6)
    assert res.target_scores[0, 0].item() < u  # the eps is visible: t / (t + 1e-7) < 1 for t = 0.0078


def test_no_gts_all_padding_m1_and_fewer_points_than_topk():
    pts, st, sc, pb, _, _, _ = task_aligned_inputs({"B": 3, "N": 7, "M": 1, "C": 3}, torch.Generator().manual_seed(0))
    for variant in ("tood", "ultralytics"):
        a = TaskAlignedAssigner(variant=variant)
        empty = a(pts, st, sc, pb, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.int64),
                  torch.zeros(3, 0, dtype=torch.bool))
        assert empty.gt_index.tolist() == [[-1] * 7] * 3 and (empty.labels == 3).all()
        assert (empty.target_scores == 0).all() and (empty.overlaps == 0).all() and (empty.boxes == 0).all()
        # all padding: any finite box, any label (even out of range) in the padded rows
        nothing = torch.zeros(3, 2, dtype=torch.bool)
        pad = a(pts, st, sc, pb, torch.full((3, 2, 4), 5.0), torch.full((3, 2), -7), nothing)
        assert pad.gt_index.eq(-1).all()
        # M = 1 covering every point, N = 7 < topk: every point a candidate
        one = a(pts, st, sc, pb, T([[[-50, -50, 200, 200]]] * 3), torch.zeros(3, 1, dtype=torch.int64),
                torch.ones(3, 1, dtype=torch.bool))
        for i in range(3):
            r = ref.task_aligned_assign(pts, sc[i], pb[i], T([[-50, -50, 200, 200]]), torch.tensor([0]),
                                        variant=variant)
            assert torch.equal(one.gt_index[i], r.gt_index)
            torch.testing.assert_close(one.target_scores[i], r.target_scores, atol=1e-6, rtol=0)
        assert torch.isfinite(one.target_scores).all()
        # N = 0 (eager): empty results of the right shapes
        none = a(pts[:0], st[:0], sc[:, :0], pb[:, :0], T([[[0, 0, 5, 5]]] * 3), torch.zeros(3, 1, dtype=torch.int64),
                 torch.ones(3, 1, dtype=torch.bool))
        assert none.gt_index.shape == (3, 0) and none.boxes.shape == (3, 0, 4)


def test_padded_rows_in_the_middle_never_win():
    pts, st, sc, pb, gb, gl, gm = task_aligned_inputs({"B": 2, "N": 300, "M": 6, "C": 4},
        torch.Generator().manual_seed(3))
    gm = torch.tensor([[True, False, True, False, True, True], [False, True, True, True, False, True]])
    gl = torch.where(gm, gl, 99)  # padded rows carry an impossible class
    for variant in ("tood", "ultralytics"):
        res = TaskAlignedAssigner(variant=variant)(pts, st, sc, pb, gb, gl, gm)
        for i in range(2):
            real = gm[i].nonzero()[:, 0]
            assert set(res.gt_index[i][res.gt_index[i] >= 0].tolist()) <= set(real.tolist())
            r = ref.task_aligned_assign(pts, sc[i], pb[i], gb[i][real], gl[i][real], variant=variant)
            mapped = torch.where(r.gt_index >= 0, real[r.gt_index.clamp(min=0)], -1)
            assert torch.equal(res.gt_index[i], mapped)


# ---------------------------------------------------------------------------------------------------------
# ultralytics 8.4, from its documented behaviour (docs/algorithms.md §10.3)


def test_ultralytics_restricts_to_in_gt_points_before_the_topk():
    gt = [0.0, 0.0, 20.0, 20.0]
    points = [[30, 10], [10, 10]]  # point 0 outside the gt predicts it perfectly; point 1 inside, poorly
    preds = [gt, [0, 0, 12, 12]]
    scores = [[0.9], [0.3]]
    tood = run(TaskAlignedAssigner(topk=1), points, scores, preds, [gt])
    ultra = run(TaskAlignedAssigner(variant="ultralytics", topk=1), points, scores, preds, [gt])
    assert tood.gt_index.tolist() == [[-1, -1]]  # TOOD's top-1 is point 0, whose centre is outside: nothing
    assert ultra.gt_index.tolist() == [[-1, 0]]  # ultralytics ranks only the in-gt point


def test_ultralytics_uses_ciou_clamped_at_zero():
    gt = [0.0, 0.0, 20.0, 20.0]
    preds = [[0, 0, 20, 10], [8, 8, 40, 40]]
    ciou = box_ciou(T([gt]), T(preds))[0]
    for p, c in zip(preds, ciou.tolist()):  # the textbook formula in float64
        assert c == pytest.approx(_ciou64(gt, p), abs=1e-6)
    res = run(TaskAlignedAssigner(variant="ultralytics"), [[5, 5], [12, 12]], [[0.5], [0.5]], preds, [gt])
    assert res.overlaps[0].tolist() == pytest.approx([max(ciou[0].item(), 0), max(ciou[1].item(), 0)], abs=1e-7)
    assert ciou[1] < 0.3 * ciou[0]  # the centre distance and the aspect term cost more than IoU alone says


def _ciou64(g, p):
    iw = max(min(g[2], p[2]) - max(g[0], p[0]), 0)
    ih = max(min(g[3], p[3]) - max(g[1], p[1]), 0)
    w1, h1, w2, h2 = g[2] - g[0], g[3] - g[1], p[2] - p[0], p[3] - p[1]
    iou = iw * ih / (w1 * h1 + w2 * h2 - iw * ih)
    c2 = (max(g[2], p[2]) - min(g[0], p[0])) ** 2 + (max(g[3], p[3]) - min(g[1], p[1])) ** 2
    rho2 = ((p[0] + p[2] - g[0] - g[2]) ** 2 + (p[1] + p[3] - g[1] - g[3]) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    return iou - rho2 / c2 - v * v / (1 - iou + v)


def test_ultralytics_has_no_t_positive_test_zero_metric_positives_get_target_zero():
    gt = [0.0, 0.0, 30.0, 30.0]
    points = [[5, 5], [15, 15], [25, 25], [60, 60], [70, 70]]
    preds = [[200, 200, 210, 210]] * 5  # far from the gt: CIoU < 0 -> 0, every metric 0
    scores = [[0.5]] * 5
    ultra = run(TaskAlignedAssigner(variant="ultralytics"), points, scores, preds, [gt])
    assert ultra.gt_index.tolist() == [[0, 0, 0, -1, -1]]  # the three in-gt points: positives with target 0
    assert ultra.target_scores.tolist() == [[0.0] * 5]  # 0 / (0 + 1e-9) = 0, not NaN
    assert run(TaskAlignedAssigner(), points, scores, preds, [gt]).gt_index.tolist() == [[-1] * 5]  # TOOD: none


def test_ultralytics_zero_metric_positives_follow_the_tie_rule():
    # 12 in-gt points all with metric 0, topk 10: the 10 zero entries of lowest index are chosen
    pts = [[2.0 + 2 * i, 5.0] for i in range(12)]
    preds = [[200, 200, 210, 210]] * 12
    res = run(TaskAlignedAssigner(variant="ultralytics"), pts, [[0.5]] * 12, preds, [[0, 0, 30, 10]])
    assert res.gt_index.tolist() == [[0] * 10 + [-1] * 2]
    # one point with a real metric at index 11: it takes a place, the zero entries fill the other 9
    preds[11] = [0, 0, 30, 10]
    res = run(TaskAlignedAssigner(variant="ultralytics"), pts, [[0.5]] * 12, preds, [[0, 0, 30, 10]])
    assert res.gt_index.tolist() == [[0] * 9 + [-1, -1, 0]]


def test_ultralytics_stal_widens_small_gts_for_the_in_gt_test_only():
    tiny = [18.0, 18.0, 22.0, 22.0]  # 4 x 4 around (20, 20): no point centre inside
    points = [[14, 20], [26, 20], [20, 29]]  # 6 px and 9 px from the centre
    preds = [[16, 16, 24, 24]] * 3
    res = run(TaskAlignedAssigner(variant="ultralytics"), points, [[0.5]] * 3, preds, [tiny])
    assert res.gt_index.tolist() == [[0, 0, -1]]  # widened to 16 x 16: |dx|, |dy| < 8 inside
    assert res.boxes[0, 0].tolist() == tiny  # the target stays the original box
    off = run(TaskAlignedAssigner(variant="ultralytics", stal_side=0), points, [[0.5]] * 3, preds, [tiny])
    assert off.gt_index.tolist() == [[-1, -1, -1]]
    boxes = T([[[0, 0, 15.9, 40], [0, 0, 16, 40], [0, 0, 3, 3]]])
    wide = stal_boxes(boxes, torch.tensor([[True, True, False]]), 16.0)[0]
    cx = (boxes[0, 0, 0] + boxes[0, 0, 2]) / 2  # widened about the centre, in float32 as ultralytics
    assert wide[0].tolist() == [(cx - 8).item(), 0.0, (cx + 8).item(), 40.0]
    assert wide[1].tolist() == [0, 0, 16, 40]  # exactly 16: kept
    assert wide[2].tolist() == [0, 0, 3, 3]  # padding is never widened


def test_ultralytics_conflicts_take_the_argmax_over_all_gts_even_one_that_did_not_propose_the_point():
    # gts a and b each take point 0 as their top-1; gt c (containing point 0 as well) takes point 1, but has
    # the highest CIoU at point 0: ultralytics gives point 0 to c.
    a, b, c = [0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 44.0, 40.0], [10.0, 10.0, 30.0, 30.0]
    points = [[20, 20], [15, 15]]
    preds = [[10, 10, 30, 31], [10, 10, 30, 30]]  # point 0 nearly c; point 1 exactly c
    scores = [[0.9, 0.9, 0.2], [0.0, 0.0, 0.9]]
    res = run(TaskAlignedAssigner(variant="ultralytics", topk=1), points, scores, preds, [a, b, c], labels=[0, 1, 2])
    assert res.gt_index.tolist() == [[2, 2]]
    # c's t_hat runs over both its final positives, point 0 included although it is outside c's top-1
    u = box_ciou(T([c]), T(preds))[0].clamp(min=0)
    t = torch.sqrt(T([0.2, 0.9])) * power(u, 6.0)
    want = t * u.max() / (t.max() + 1e-9)
    torch.testing.assert_close(res.target_scores[0], want, atol=1e-6, rtol=0)
    # TOOD: positive for a and b only; the higher IoU of the two (a: 420 / 1600 > b: 420 / 1760) wins
    tood = run(TaskAlignedAssigner(topk=1), points, scores, preds, [a, b, c], labels=[0, 1, 2])
    assert tood.gt_index.tolist() == [[0, 2]]


def test_ultralytics_all_zero_overlaps_quirk_goes_to_gt_0():
    # point 0 is a zero-metric positive of gts 1 and 2; every overlap in its column is 0, so the argmax over
    # all gts is gt 0, which never proposed it (Tencent/YOLO-Master issue #253).
    g0, g1, g2 = [100.0, 100.0, 120.0, 120.0], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 22.0, 20.0]
    points = [[10, 10], [110, 110]]
    preds = [[300, 300, 310, 310], [100, 100, 120, 120]]
    res = run(TaskAlignedAssigner(variant="ultralytics", topk=1), points, [[0.5]] * 2, preds, [g0, g1, g2])
    assert res.gt_index.tolist() == [[0, 0]]
    assert res.target_scores[0, 0].item() == 0.0 and res.overlaps[0, 0].item() == 0.0


# ---------------------------------------------------------------------------------------------------------
# Building blocks


def test_power_by_squaring_is_within_4_ulp_of_pow_and_the_reference_gives_the_same_bits():
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 0.95 + 0.05  # no underflow
    for e in (0.0, 1.0, 2.0, 3.0, 6.0, 0.5, 1.5):
        mine = power(u, e)
        assert torch.equal(mine, ref.power(u, e))
        assert torch.allclose(mine.double(), torch.pow(u.double(), e), rtol=3e-7, atol=0)  # u^6: <= 3.5 ulp
    s = torch.rand(1000)
    assert torch.equal(alignment_metric(s, u[:1000], 1.0, 6.0), ref.metric_of(s, u[:1000], 1.0, 6.0))
    assert torch.equal(alignment_metric(s, u[:1000], 0.5, 6.0), ref.metric_of(s, u[:1000], 0.5, 6.0))


def mask_pairs(mask: torch.Tensor):
    """The pairs of a ``(B, M, N)`` mask by one NonZero."""
    flat = mask.reshape(-1).nonzero().squeeze(1)  # (P,)
    return listed_pairs(flat // mask.shape[2], flat % mask.shape[2], mask.shape[1], mask.shape[2])


def test_pair_scores_match_indexing():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(3, 50, 7, generator=g)
    labels = torch.randint(0, 7, (3, 4), generator=g)
    want = torch.stack([scores[b][:, labels[b]].T for b in range(3)])  # (B, M, N)
    mask = torch.rand(3, 4, 50, generator=g) < 0.3
    pairs = mask_pairs(mask)
    assert torch.equal(pair_scores(scores, labels, pairs), want[mask])  # row-major order, as NonZero
    everything = mask_pairs(torch.ones(3, 4, 50, dtype=torch.bool))
    assert torch.equal(pair_scores(scores, labels, everything).view(3, 4, 50), want)
    assert torch.equal(everything.gt.view(3, 4, 50), torch.arange(4).view(1, 4, 1).expand(3, 4, 50))
    rows = torch.arange(3).view(3, 1, 1) * 50 + torch.arange(50)  # (3, 1, 50) the point rows in B*N
    assert torch.equal(everything.pred.view(3, 4, 50), rows.expand(3, 4, 50))
    assert torch.equal(everything.point.view(3, 4, 50), torch.arange(50).expand(3, 4, 50))


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 300])
@pytest.mark.parametrize(("layout", "margin"), [("grid", 0.0), ("grid", 1e-9), ("grid", 2.5), ("shuffled", 1e-9)])
def test_block_pairs_are_the_dense_in_box_pairs(n, layout, margin):
    """The block-wise listing of the candidates (step 1) gives exactly the pairs, in the order, of one NonZero over
    the dense (B, M, N) in-box mask with the same margin: grid points and shuffled ones, block-sized counts, points
    on box edges (strictly inside only) and near them, zero-area, out-of-image and NaN (padded) boxes."""
    g = torch.Generator().manual_seed(n)
    side = int(n**0.5) + 1
    ys, xs = torch.meshgrid(torch.arange(side) * 8.0 + 4, torch.arange(side) * 8.0 + 4, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], 1)[:n]  # (N, 2) row by row, as a YOLO grid
    if layout == "shuffled":
        points = points[torch.randperm(n, generator=g)]
    boxes = torch.rand(3, 6, 4, generator=g) * 8 * side
    boxes[..., 2:] += boxes[..., :2]
    boxes[0, 0] = T([4, 4, 20, 12])  # edges through points: only points strictly inside count
    boxes[0, 1] = T([12, 12, 12, 12])  # zero area on a point
    boxes[1, 2] = T([-50, -50, -10, -10])  # outside the image
    boxes[2] = float("nan")  # a padded image (the assigner's in-gt boxes are NaN there)
    boxes[1, 5] = float("nan")
    boxes[0, 2] = T([1.5, 1.5, 22, 12])  # 2.5 from the points at x = 4 and 2 from those at y = 4 and x = 20
    want = mask_pairs(_points_in_boxes(points, boxes.unsqueeze(2), margin=margin, aligned=True))
    got = listed_pairs(*points_in_boxes_pairs(point_blocks(points), boxes.reshape(-1, 4), margin=margin), 6, n)
    for field in want._fields:
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert n < 2 or got.flat.numel() > 0  # the scene has pairs to find


def test_point_blocks_bound_their_real_points_only():
    points = torch.rand(40, 2) * 100
    blocks = point_blocks(points)  # 2 blocks: 32 + 8 real points, 24 NaN slots
    assert blocks.planes[0].shape == (2, 32) and torch.isnan(blocks.planes[0][1, 8:]).all()
    assert torch.equal(blocks.lo[:, 1], points[32:].amin(0)) and torch.equal(blocks.hi[:, 1], points[32:].amax(0))
    empty = point_blocks(points[:0])  # no points: one all-padding block that meets no box
    assert empty.lo.isinf().all() and empty.hi.isinf().all()
    assert points_in_boxes_pairs(empty, T([[0, 0, 1e9, 1e9]]))[0].numel() == 0


def test_pairwise_and_aligned_ciou_agree():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 5, 4, generator=g) * 50
    b = torch.rand(2, 9, 4, generator=g) * 50
    a[..., 2:] += a[..., :2]
    b[..., 2:] += b[..., :2]
    pair = box_ciou(a, b)  # (2, 5, 9)
    aligned = box_ciou(a.unsqueeze(2).expand(2, 5, 9, 4), b.unsqueeze(1).expand(2, 5, 9, 4), aligned=True)
    torch.testing.assert_close(pair, aligned, atol=1e-6, rtol=0)
    assert torch.allclose(box_ciou(a, a, aligned=True), torch.ones(2, 5), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Reference <-> eager (the one path, image by image and all at once)

SIZES = ({"B": 3, "N": 700, "M": 13, "C": 5}, {"B": 2, "N": 400, "M": 30, "C": 80}, {"B": 4, "N": 5, "M": 3, "C": 2})


@pytest.mark.parametrize("variant", ["tood", "ultralytics"])
def test_eager_matches_the_per_image_reference(variant):
    for seed in range(3):
        for sizes in SIZES:
            pts, st, sc, pb, gb, gl, gm = task_aligned_inputs(sizes, torch.Generator().manual_seed(seed))
            res = TaskAlignedAssigner(variant=variant)(pts, st, sc, pb, gb, gl, gm)
            for i in range(sizes["B"]):
                r = ref.task_aligned_assign(pts, sc[i], pb[i], gb[i][gm[i]], gl[i][gm[i]], variant=variant)
                assert torch.equal(res.gt_index[i], r.gt_index), (seed, sizes, i)
                assert torch.equal(res.labels[i], r.labels)
                torch.testing.assert_close(res.overlaps[i], r.overlaps, atol=1e-6, rtol=0)
                torch.testing.assert_close(res.target_scores[i], r.target_scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["tood", "ultralytics"])
def test_image_by_image_equals_all_at_once_bit_for_bit(variant):
    # eager_rows decides how many images one step of the (one) path takes; export takes all at once
    for seed in range(3):
        for sizes in SIZES:
            args = task_aligned_inputs(sizes, torch.Generator().manual_seed(seed))
            a = TaskAlignedAssigner(variant=variant)
            a.eager_rows = 1  # one image per step
            by_image = a(*args)
            a.eager_rows = 10**9  # the whole batch in one step, as the graph does
            for x, y in zip(by_image, a(*args)):
                assert torch.equal(x, y), (seed, sizes)


# ---------------------------------------------------------------------------------------------------------
# onnxruntime


def _ort(name, exported, args):
    return xonnx.run(xonnx.session(exported(name)), args)


@pytest.mark.onnx
@pytest.mark.parametrize("name", ["task_aligned_assigner", "task_aligned_assigner_ultralytics"])
def test_onnxruntime_on_degenerate_inputs_gives_zero_not_nan(name, exported):
    entry = catalog.get(name)
    module = entry.build()
    g = torch.Generator().manual_seed(7)
    pts, st, sc, pb, gb, gl, gm = task_aligned_inputs({"B": 3, "N": 90, "M": 5, "C": 3}, g)
    gb[0] = T([[400, 400, 430, 430]] * 5)  # image 0: every gt far from every prediction -> metric all 0
    gm[0] = True
    gm[1] = False  # image 1: all padding
    cases = [(pts, st, sc, pb, gb, gl, gm),
             (pts[:1], st[:1], sc[:, :1], pb[:, :1], gb[:, :1], gl[:, :1], gm[:, :1])]  # N = 1, M = 1
    for case, args in enumerate(cases):
        eager = entry.run_eager(module, args)
        got = _ort(name, exported, args)
        for spec, e, o in zip(entry.outputs, eager, got):
            assert np.isfinite(o).all() if o.dtype.kind == "f" else True
            if spec.dtype == "int64":
                assert np.array_equal(e.numpy(), o), spec.name
            else:
                np.testing.assert_allclose(o, e.numpy(), atol=1e-6, rtol=0)
        if case == 0:
            assert (got[4][:2] == 0).all()  # metric all 0 (image 0) and all padding (image 1): targets 0
            assert (got[0][1] == -1).all()


@pytest.mark.onnx
@pytest.mark.parametrize(("name", "eps"), [("task_aligned_assigner", 1e-7),
                                           ("task_aligned_assigner_ultralytics", 1e-9)])
def test_the_normalisation_eps_survives_export(name, eps, exported):
    model = exported(name)
    consts = []

    def collect(graph):  # the graph and its subgraphs (the per-image Scan body)
        consts.extend(onnx.numpy_helper.to_array(t).ravel() for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif node.op_type == "Constant" and attr.name == "value":
                    consts.append(onnx.numpy_helper.to_array(attr.t).ravel())
                elif node.op_type == "Constant" and attr.name == "value_float":
                    consts.append(np.array([attr.f]))

    collect(model.graph)
    values = np.concatenate([c.astype(np.float64) for c in consts if c.dtype.kind == "f"])
    assert np.isclose(values, np.float32(eps), rtol=1e-6, atol=0).any()
    # and it acts: ultralytics' zero-metric positives (target 0 / (0 + eps)) come out 0 in onnxruntime
    if "ultralytics" in name:
        pts = T([[5, 5], [15, 15], [25, 25]])
        args = (pts, torch.full((3,), 8.0), torch.full((1, 3, 3), 0.5), T([[[200, 200, 210, 210]] * 3]),
                T([[[0, 0, 30, 30], [0, 0, 0, 0]]]), torch.tensor([[0, 0]]), torch.tensor([[True, False]]))
        got = _ort(name, exported, args)
        assert got[0].tolist() == [[0, 0, 0]] and got[4].tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.onnx
def test_ultralytics_graph_runs_small_batches_whole_and_large_ones_image_by_image():
    """The graph's ``If``: the whole batch in one step where eager takes it in one (B * M <= eager_rows), one
    ``Scan`` step per image otherwise; both branches give eager's assignment, at sizes other than the export's."""
    entry = catalog.get("task_aligned_assigner_ultralytics")
    module = entry.build()
    module.eager_rows = 12  # gt rows per step: both branches at test sizes
    model = xonnx.export(module, entry.example({"B": 2, "N": 90, "M": 3, "C": 3}),
                         input_names=[i.name for i in entry.inputs], output_names=[o.name for o in entry.outputs],
                         input_dims=[i.dims for i in entry.inputs])
    branch = [n for n in model.graph.node if n.op_type == "If"]
    assert len(branch) == 1
    kinds = {a.name: {n.op_type for n in a.g.node} for a in branch[0].attribute}
    assert "Scan" in kinds["else_branch"] and "Scan" not in kinds["then_branch"]
    session = xonnx.session(model)
    for b, m in [(3, 4), (3, 5), (1, 12), (1, 13), (4, 0)]:  # 12, 15, 12, 13 and 0 gt rows
        args = entry.example({"B": b, "N": 112, "M": m, "C": 3}, seed=b * 100 + m)
        eager = entry.run_eager(module, args)
        got = xonnx.run(session, args)
        for spec, e, o in zip(entry.outputs, eager, got):
            if spec.dtype == "int64":
                assert np.array_equal(e.numpy(), o), (b, m, spec.name)
            else:
                np.testing.assert_allclose(o, e.numpy(), atol=1e-6, rtol=0)


def _duplicate_gt_scene(seed):
    """issue 12's scene: B = 2, N = 336 points on a 128 x 128 image, image 1's gts 4 and 5 the same small box
    (STAL-widened by ultralytics; no point centre inside it for TOOD); image 0's gts 0 and 1 the same larger box."""
    pts, st, sc, pb, gb, gl, gm = task_aligned_inputs({"B": 2, "N": 336, "M": 6, "C": 3},
                                                      torch.Generator().manual_seed(seed))
    gb[1, 4] = gb[1, 5] = T([76, 31, 86, 35.5])
    gl[1, 5] = gl[1, 4]
    gm[1] = True
    gb[0, 0] = gb[0, 1] = T([20, 20, 60, 50])
    gl[0, 1] = gl[0, 0]
    gm[0, :2] = True
    return pts, st, sc, pb, gb, gl, gm


@pytest.mark.onnx
@pytest.mark.parametrize("name", ["task_aligned_assigner", "task_aligned_assigner_ultralytics"])
def test_identical_gts_give_the_same_bits_in_eager_and_onnxruntime(name, exported):
    # Two identical gts get identical overlaps in both (IEEE-exact CIoU, powers by squaring), so the conflict
    # step's tie goes to the lower gt index in both, and every output is bit-identical.
    entry = catalog.get(name)
    module = entry.build()
    session = xonnx.session(exported(name))
    variant = "ultralytics" if "ultralytics" in name else "tood"
    contested = {0: 0, 1: 0}
    for seed in range(8):
        args = _duplicate_gt_scene(seed)
        eager = entry.run_eager(module, args)
        got = xonnx.run(session, args)
        for spec, e, o in zip(entry.outputs, eager, got):
            assert np.array_equal(e.numpy(), o), (seed, spec.name)
        gt_index = eager[0]
        assert not (gt_index[0] == 1).any() and not (gt_index[1] == 5).any()  # the higher twin never wins
        contested[0] += int((gt_index[0] == 0).sum())
        contested[1] += int((gt_index[1] == 4).sum())
        # the per-image reference (torch.atan, within 2 ulp of ours) agrees
        pts, _, sc, pb, gb, gl, gm = args
        for i in range(2):
            r = ref.task_aligned_assign(pts, sc[i], pb[i], gb[i][gm[i]], gl[i][gm[i]], variant=variant)
            assert torch.equal(gt_index[i], r.gt_index), (seed, i)
            torch.testing.assert_close(eager[4][i], r.target_scores, atol=1e-6, rtol=0)
    assert contested[0] > 0  # the large twins win points in both variants
    assert contested[1] > 0 or variant == "tood"  # issue 12's small twins: only ultralytics (STAL) has candidates


def _past_2_24_cells_scene():
    """One image with M * N = 4,000 x 8,400 > 2^25 (gt, point) cells: 3,998 small random gts, and the last two
    gts (cells past 2^25) the same box over the image's bottom-right corner, which holds the last point."""
    from lessons.scenes import grid_points

    g = torch.Generator().manual_seed(3)
    pts, st, _ = grid_points(640, 640, (8, 16, 32))  # (8400, 2), (8400,)
    n, m = len(pts), 4000
    xy = torch.rand(m, 2, generator=g) * 600  # (M, 2)
    gb = torch.cat([xy, xy + 4 + torch.rand(m, 2, generator=g) * 36], dim=1)  # (M, 4)
    gb[-2:] = T([600, 600, 640, 640])
    sc = torch.rand(1, n, 3, generator=g)  # (1, N, 3)
    pb = torch.cat([pts - 20, pts + 20], dim=1)[None] + torch.rand(1, n, 4, generator=g) * 8  # (1, N, 4)
    gl = torch.randint(0, 3, (1, m), generator=g)  # (1, M)
    return pts, st, sc, pb, gb[None], gl, torch.ones(1, m, dtype=torch.bool)


@pytest.mark.onnx
def test_onnxruntime_matches_eager_past_2_24_cells_per_image(exported):
    # The candidate pairs' flat cell indices pass 2^24 (and 2^25): an index computed through float32 anywhere
    # (the exporter writes an integer floor division as Cast, Div, Floor) would name a wrong point or gt there.
    name = "task_aligned_assigner_ultralytics"
    entry = catalog.get(name)
    args = _past_2_24_cells_scene()
    eager = entry.run_eager(entry.build(), args)
    got = _ort(name, exported, args)
    assert (eager[0][0, -100:] == 3998).any()  # the corner's last points go to the lower of the last two gts
    for spec, e, o in zip(entry.outputs, eager, got):
        if spec.dtype == "int64":
            assert np.array_equal(e.numpy(), o), spec.name
        else:  # t_hat's division may differ by an ulp
            np.testing.assert_allclose(o, e.numpy(), atol=entry.atol, rtol=entry.rtol, err_msg=spec.name)


# ---------------------------------------------------------------------------------------------------------
# Bad input, helpers


def test_bad_input_names_the_argument():
    pts, st, sc, pb, gb, gl, gm = task_aligned_inputs({"B": 2, "N": 20, "M": 3, "C": 4},
        torch.Generator().manual_seed(0))
    a = TaskAlignedAssigner()
    with pytest.raises(ValueError, match="pred_scores"):
        a(pts, st, sc * 3 - 1, pb, gb, gl, gm)  # logits, not probabilities
    with pytest.raises(ValueError, match="pred_scores"):
        TaskAlignedAssigner(num_classes=80)(pts, st, sc, pb, gb, gl, gm)  # C = 4
    with pytest.raises(ValueError, match="gt_labels"):
        a(pts, st, sc, pb, gb, torch.where(gm, 4, gl), gm)  # class 4 of C = 4
    with pytest.raises(ValueError, match="pred_boxes"):
        a(pts, st, sc, pb[:, :, [2, 1, 0, 3]], gb, gl, gm)  # x2 < x1
    with pytest.raises(ValueError, match="strides"):
        a(pts, st[:-1], sc, pb, gb, gl, gm)
    with pytest.raises(ValueError, match="gt_boxes"):
        a(pts, st, sc, pb, gb[:1], gl[:1], gm[:1])
    with pytest.raises(ValueError, match="variant"):
        TaskAlignedAssigner(variant="paddle")
    with pytest.raises(ValueError, match="topk"):
        TaskAlignedAssigner(topk=0)
    with pytest.raises(ValueError, match="topk"):
        UltralyticsTaskAlignedAssigner(topk=0)


def test_variant_defaults_and_overrides():
    u = TaskAlignedAssigner.ultralytics()
    assert (u.topk, u.alpha, u.beta, u.eps, u.center_margin, u.stal_side) == (10, 0.5, 6.0, 1e-9, 1e-9, 16.0)
    t = TaskAlignedAssigner.tood(topk=9)
    assert (t.topk, t.alpha, t.beta, t.eps, t.center_margin, t.stal_side) == (9, 1.0, 6.0, 1e-7, 0.01, 0.0)


def test_variant_alias_builds_the_ultralytics_class():
    # existing callers: TaskAlignedAssigner(variant="ultralytics") and .ultralytics() give the ultralytics class,
    # with its own defaults for the arguments not given
    for a in (TaskAlignedAssigner(variant="ultralytics"), TaskAlignedAssigner.ultralytics(),
              TaskAlignedAssigner(10, 0.5, 6.0, "ultralytics")):
        assert type(a) is UltralyticsTaskAlignedAssigner and a.variant == "ultralytics"
        assert (a.topk, a.alpha, a.beta, a.eps) == (10, 0.5, 6.0, 1e-9)
    a = TaskAlignedAssigner(variant="ultralytics", topk=13, alpha=1.0, num_classes=80)
    assert (a.topk, a.alpha, a.beta, a.num_classes, a.stal_side) == (13, 1.0, 6.0, 80, 16.0)
    t = TaskAlignedAssigner(variant="tood")
    assert type(t) is TaskAlignedAssigner and t.variant == "tood" and t.topk == 13
    assert type(copy.deepcopy(t)) is TaskAlignedAssigner and copy.deepcopy(a).topk == 13
    # the alias is the class: same result
    args = task_aligned_inputs({"B": 2, "N": 200, "M": 7, "C": 4}, torch.Generator().manual_seed(9))
    for x, y in zip(TaskAlignedAssigner(variant="ultralytics")(*args), UltralyticsTaskAlignedAssigner()(*args)):
        assert torch.equal(x, y)
    with pytest.raises(TypeError):
        TaskAlignedAssigner(variant="ultralytics", radius=2.5)


def test_benchmark_case_builds_the_workload():
    module, args = ref.benchmark_case("yolox-m20@2")
    assert [tuple(a.shape) for a in args] == [(8400, 2), (8400,), (2, 8400, 80), (2, 8400, 4), (2, 20, 4), (2, 20),
                                              (2, 20)]
    res = module(*args)
    assert res.gt_index.shape == (2, 8400) and bool((res.gt_index >= 0).any())
    module, _ = ref.benchmark_case("yolox-m100@1", variant="ultralytics")
    assert module.variant == "ultralytics" and module.topk == 10
