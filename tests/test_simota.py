"""SimOTAAssigner: hand-made cases for every step and quirk, the BCE decomposition, reference parity,
batch vs image by vs padded, eager vs onnxruntime, degenerate inputs, bad input."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners import simota
from exportable.assigners.simota import SimOTAAssigner, simota_cls_cost
from exportable.batching import pad_gts
from exportable.boxes import points_in_boxes, points_near_centers
from exportable.examples import simota_inputs
from lessons.scenes import default_scene
from lessons.simota import (
    benchmark_case,
    benchmark_reference,
    cls_cost_decomposed,
    cls_cost_naive,
    geometric_prior,
    photo_points,
    simota_assign,
    synthetic_predictions,
    to_mmdet,
    variant_kwargs,
    yolox_targets,
)


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def run(points, strides, scores, preds, gts, labels, assigner=None):
    """One image through the module, alone and with padded gt rows appended (padding changes nothing)."""
    assigner = assigner or SimOTAAssigner()
    batch = pad_gts([T(gts).reshape(-1, 4)], [torch.tensor(labels, dtype=torch.int64)])
    args = (T(points), T(strides), T(scores)[None], T(preds)[None], batch.boxes, batch.labels, batch.mask)
    res = assigner(*args)
    padded = assigner(*args[:4], *_with_padding(batch.boxes, batch.labels, batch.mask))
    for a, b in zip(res, padded):
        assert torch.equal(a, b)
    return res


def _with_padding(gt_boxes, gt_labels, gt_mask, rows=2):
    """The same gts plus ``rows`` padded rows at the end, holding a box over everything and label -1."""
    b = gt_boxes.shape[0]
    boxes = torch.cat([gt_boxes, T([0.0, 0.0, 1e4, 1e4]).expand(b, rows, 4)], 1)  # (B, M + rows, 4)
    labels = torch.cat([gt_labels, torch.full((b, rows), -1)], 1)  # (B, M + rows)
    return boxes, labels, torch.cat([gt_mask, torch.zeros(b, rows, dtype=torch.bool)], 1)


def image_by_image(assigner, args):
    """The batch result equals each image run alone (images never interact)."""
    res = assigner(*args)
    p, s, sc, pb, gb, gl, gm = args
    for i in range(sc.shape[0]):
        one = assigner(p, s, sc[i : i + 1], pb[i : i + 1], gb[i : i + 1], gl[i : i + 1], gm[i : i + 1])
        for x, y in zip(res, one):
            assert torch.equal(x[i : i + 1], y)
    return res


def reference(points, strides, scores, preds, gts, labels, **kw):
    return simota_assign(T(points), T(strides), T(scores), T(preds), T(gts).reshape(-1, 4),
                         torch.tensor(labels, dtype=torch.int64), **kw)


# ------------------------------------------------------------------------------------------------
# Step 2: the geometric prior
# ------------------------------------------------------------------------------------------------


def test_geometric_prior_is_strict_and_the_square_is_not_clipped():
    gt = T([[8.0, 0.0, 24.0, 100.0]])  # a tall thin gt, centre (16, 50)
    points = T([[8.0, 50.0], [9.0, 50.0], [16.0, 50.0], [30.0, 50.0], [36.0, 50.0], [16.0, 70.0]])
    strides = T([8.0] * 6)  # square: 16 +- 20 in x, 50 +- 20 in y
    in_box, in_ctr = geometric_prior(points, strides, gt, 2.5)
    assert in_box[:, 0].tolist() == [False, True, True, False, False, True]  # x = 8 is on the edge: outside
    assert in_ctr[:, 0].tolist() == [True, True, True, True, False, False]  # x = 30 is outside the box, inside
    # the square (it sticks out of the thin gt); x = 36 and y = 70 sit exactly on its edge: outside
    # the module's step 2 is the package's shared geometry, gt-major (aligned=True)
    gts = gt[None, :, None]  # (1, 1, 1, 4)
    assert torch.equal(points_in_boxes(points, gts, aligned=True)[0, 0], in_box[:, 0])
    assert torch.equal(points_near_centers(points, gts, strides * 2.5, aligned=True)[0, 0], in_ctr[:, 0])
    assert SimOTAAssigner().center_radius == 2.5 and SimOTAAssigner.yolox().center_radius == 1.5


# ------------------------------------------------------------------------------------------------
# Step 3: the classification cost without an (N, M, C) tensor
# ------------------------------------------------------------------------------------------------


def test_cls_cost_by_hand_two_classes():
    # p = (0.8, 0.3): gt class 0 -> -log 0.8 - log 0.7; gt class 1 -> -log 0.2 - log 0.3
    scores = T([[0.8, 0.3]])
    labels = torch.tensor([0, 1])
    want = [-math.log(0.8) - math.log(0.7), -math.log(0.2) - math.log(0.3)]
    assert cls_cost_naive(scores, labels)[0].tolist() == pytest.approx(want, rel=1e-6)
    assert cls_cost_decomposed(scores, labels)[0].tolist() == pytest.approx(want, rel=1e-6)
    assert simota_cls_cost(scores[None], labels[None])[0, :, 0].tolist() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("m", [3, 40])  # M < C = 80: eager gathers first
def test_cls_cost_gather_first_and_class_first_give_the_same_bits(monkeypatch, m):
    # eager with M < C gathers p first; the graph (and M >= C) takes log p over all classes, then gathers
    g = torch.Generator().manual_seed(m)
    scores = torch.rand(2, 50, 80, generator=g) ** 3  # (B, N, C)
    scores[:, ::7, 3] = 1.0
    scores[:, ::5, 9] = 0.0
    labels = torch.randint(0, 80, (2, m), generator=g)  # (B, M)
    labels[:, :2] = torch.tensor([3, 9])
    eager = simota_cls_cost(scores, labels)
    monkeypatch.setattr(simota, "exporting", lambda: True)
    assert torch.equal(simota_cls_cost(scores, labels), eager)


def test_cls_cost_keeps_torch_bce_clamp_at_minus_100():
    # p = 0 at the gt class and p = 1 at another: torch's BCE clamps both logs at -100
    scores = T([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
    labels = torch.tensor([0, 2])
    naive = cls_cost_naive(scores, labels)  # (2, 2)
    ours = simota_cls_cost(scores[None], labels[None])[0].T  # (2, 2)
    assert naive[0, 0].item() == pytest.approx(100 + 100 + math.log(2), rel=1e-6)
    assert naive[1, 0].item() == pytest.approx(0 + 0 + math.log(2), abs=1e-6)
    assert torch.allclose(ours, naive, rtol=1e-6, atol=1e-5)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("c", [1, 7, 80, 365])
def test_cls_cost_equals_the_naive_sum_within_float32_rounding(c):
    g = torch.Generator().manual_seed(c)
    scores = torch.rand(300, c, generator=g) ** 3  # (N, C) many small, a few near 1
    scores[::17, 0] = 1.0
    scores[::13, -1] = 0.0
    labels = torch.randint(0, c, (25,), generator=g)
    naive = cls_cost_naive(scores, labels).double()  # (N, M)
    ours = simota_cls_cost(scores[None], labels[None])[0].T.double()  # (N, M)
    # the tolerance stated in the module docstring: 1e-6 of the scale S + L1_y, where
    # S = sum_c BCE(p_c, 0) and L1_y = BCE(p_y, 1) (S - L0_y cancels when p_y is near 1)
    bce0 = torch.nn.functional.binary_cross_entropy(scores, torch.zeros_like(scores), reduction="none")
    bce1 = torch.nn.functional.binary_cross_entropy(scores, torch.ones_like(scores), reduction="none")
    scale = bce0.sum(1, keepdim=True).double() + bce1[:, labels].double()  # (N, M)
    assert ((ours - naive).abs() <= 1e-6 * scale).all()
    assert ((cls_cost_decomposed(scores, labels).double() - naive).abs() <= 1e-6 * scale).all()


# ------------------------------------------------------------------------------------------------
# Steps 4-6 by hand
# ------------------------------------------------------------------------------------------------

GRID = [[4.0 + 8 * i, 4.0 + 8 * j] for j in range(5) for i in range(5)]  # 25 points of a 40 x 40 image


def test_dynamic_k_and_the_tie_rule_on_equal_costs():
    # 12 points inside gt (0, 0, 40, 40) and its centre square (20 +- 20); every prediction is the box
    # (0, 0, 20, 20): IoU 400 / 1600 = 0.25, ten of them sum to exactly 2.5 -> k = 2. Equal scores make
    # every cost equal: the two lowest indices win.
    points = GRID[6:18]
    preds = [[0.0, 0.0, 20.0, 20.0]] * 12
    res = run(points, [8.0] * 12, [[0.5]] * 12, preds, [[0, 0, 40, 40]], [0])
    assert res.gt_index[0].tolist() == [0, 0] + [-1] * 10
    assert res.overlaps[0, :2].tolist() == [0.25, 0.25] and res.target_scores[0, :2].tolist() == [0.25, 0.25]
    ref = reference(points, [8.0] * 12, [[0.5]] * 12, preds, [[0, 0, 40, 40]], [0])
    assert ref.dynamic_ks.tolist() == [2] and ref.gt_index.tolist() == res.gt_index[0].tolist()
    # a cheaper prior (higher score) jumps the queue: priors 7 (score 0.9) and then 0
    scores = [[0.5]] * 12
    scores[7] = [0.9]
    res = run(points, [8.0] * 12, scores, preds, [[0, 0, 40, 40]], [0])
    assert (res.gt_index[0] == 0).nonzero()[:, 0].tolist() == [0, 7]


def test_dynamic_k_truncates_is_at_least_one_and_uses_fewer_than_ten_candidates():
    gt = [[0.0, 0.0, 100.0, 100.0]]
    points = [[50.0, 50.0], [45.0, 50.0], [55.0, 50.0]]  # the only 3 candidates (stride 8: square 50 +- 20)
    # IoUs 1, 1, 0.99: sum 2.99 -> int() gives 2, not 3
    preds = [[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 99.0]]
    ref = reference(points, [8.0] * 3, [[0.5]] * 3, preds, gt, [0])
    assert ref.ious[:, 0].tolist() == pytest.approx([1.0, 1.0, 0.99]) and ref.dynamic_ks.tolist() == [2]
    assert run(points, [8.0] * 3, [[0.5]] * 3, preds, gt, [0]).gt_index[0].tolist() == [0, 0, -1]
    # three exact matches: q = min(10, 3) = 3 candidates, sum 3 -> k = 3
    res = run(points, [8.0] * 3, [[0.5]] * 3, [gt[0]] * 3, gt, [0])
    assert res.gt_index[0].tolist() == [0, 0, 0]
    # predictions that miss the gt entirely: every IoU 0, k = max(1, 0) = 1 all the same
    far = [[200.0, 200.0, 210.0, 210.0]] * 3
    res = run(points, [8.0] * 3, [[0.5]] * 3, far, gt, [0])
    assert res.gt_index[0].tolist() == [0, -1, -1] and res.overlaps[0].tolist() == [0.0, 0.0, 0.0]


def test_conflict_goes_to_the_cheaper_gt_and_can_leave_a_gt_with_none():
    # Two identical gt boxes of classes 0 and 1; every prior says class 0 (0.9) rather than 1 (0.1).
    # IoUs are small (k = 1 for both) and the best prediction is the same for both gts: both mark it,
    # gt 0 is cheaper there, gt 1 ends with no positive at all (mmdetection issue #8628).
    gts = [[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 40.0]]
    points = GRID[6:9]
    preds = [[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 12.0, 12.0], [0.0, 0.0, 4.0, 4.0]]  # IoU 0.04, 0.09, 0.01
    scores = [[0.9, 0.1]] * 3
    res = run(points, [8.0] * 3, scores, preds, gts, [0, 1])
    assert res.gt_index[0].tolist() == [-1, 0, -1]
    ref = reference(points, [8.0] * 3, scores, preds, gts, [0, 1])
    assert ref.marked[1].tolist() == [True, True] and ref.conflicts == 1
    assert ref.positives_per_gt.tolist() == [1, 0]  # gt 1 is left with none
    # the same with equal labels: equal costs, the lower gt index wins
    res = run(points, [8.0] * 3, scores, preds, gts, [0, 0])
    assert res.gt_index[0].tolist() == [-1, 0, -1]


def test_conflict_is_decided_over_all_gt_rows_not_only_the_markers():
    # Three identical gt boxes of classes 0, 1, 2; two candidates with the same prediction (IoU 0.25 ->
    # k = 1 each). Prior 0 scores (0.6, 0.6, 0.8), prior 1 (0.1, 0.1, 0.95). gts 0 and 1 mark prior 0
    # (cost 3.04 vs 5.40), gt 2 marks prior 1 (0.26 vs 2.05). Prior 0's conflict goes to the cheapest
    # over ALL rows: gt 2 (2.05 < 3.04), which did not mark it. gts 0 and 1 end with nothing.
    gts = [[0.0, 0.0, 40.0, 40.0]] * 3
    points = GRID[11:13]
    preds = [[0.0, 0.0, 20.0, 20.0]] * 2
    scores = [[0.6, 0.6, 0.8], [0.1, 0.1, 0.95]]
    ref = reference(points, [8.0] * 2, scores, preds, gts, [0, 1, 2])
    ab = -math.log(0.6) - math.log(0.4) - math.log(0.2)  # gt 0 (or 1) at prior 0: 3.04
    c = -math.log(0.4) - math.log(0.4) - math.log(0.8)  # gt 2 at prior 0: 2.06
    iou_cost = -3 * math.log(0.25)
    assert ref.cost[0].tolist() == pytest.approx([ab + iou_cost, ab + iou_cost, c + iou_cost], rel=1e-5)
    assert ref.marked.tolist() == [[True, True, False], [False, False, True]]
    res = run(points, [8.0] * 2, scores, preds, gts, [0, 1, 2])
    assert res.gt_index[0].tolist() == [2, 2] and res.labels[0].tolist() == [2, 2]
    assert ref.gt_index.tolist() == [2, 2]


def test_penalised_priors_are_chosen_when_k_exceeds_the_good_ones_ties_by_index():
    # gt (0, 0, 40, 40), stride 1: the centre square is 20 +- 2.5, so only the point (20, 20) is in the
    # pair prior; eleven more points are in the box only (candidates, +1e5). Twelve exact predictions:
    # IoU 1 each, k = 10. The pair prior comes first, then nine penalised priors whose costs are all
    # equal (1e5 + the same cls cost): the nine lowest indices. The pair prior is last on purpose.
    points = [[4.0 + 3 * i, 4.0] for i in range(11)] + [[20.0, 20.0]]
    preds = [[0.0, 0.0, 40.0, 40.0]] * 12
    ref = reference(points, [1.0] * 12, [[0.5]] * 12, preds, [[0, 0, 40, 40]], [0])
    assert ref.pair[:, 0].tolist() == [False] * 11 + [True] and ref.dynamic_ks.tolist() == [10]
    assert (ref.cost[:11, 0] >= 1e5).all() and ref.cost[11, 0] < 10
    res = run(points, [1.0] * 12, [[0.5]] * 12, preds, [[0, 0, 40, 40]], [0])
    assert res.gt_index[0].tolist() == [0] * 9 + [-1, -1, 0]


def test_float32_rounding_of_the_penalty_makes_ties_and_the_lower_index_wins():
    # Two penalised priors whose costs differ by 0.001 before the +1e5: float32 spacing at 1e5 is
    # 1/128, so both round to the same value. The tie rule takes the lower index even though prior 1
    # was (slightly) cheaper. mmdetection's torch.topk may return either.
    points = [[4.0, 4.0], [8.0, 4.0], [20.0, 20.0]]  # stride 1: only (20, 20) is near the centre
    preds = [[0.0, 0.0, 40.0, 40.0]] * 3
    scores = [[0.5], [0.5005], [0.01]]
    gts = [[0.0, 0.0, 40.0, 40.0]]
    preds[2] = [0.0, 0.0, 40.0, 20.0]  # the centre prior: IoU 0.5, so IoUs 1, 1, 0.5 -> k = 2
    ref = reference(points, [1.0] * 3, scores, preds, gts, [0])
    assert ref.dynamic_ks.tolist() == [2]
    unrounded = [-math.log(0.5), -math.log(0.5005)]
    assert unrounded[1] < unrounded[0] and ref.cost[0, 0] == ref.cost[1, 0]  # tied after rounding
    res = run(points, [1.0] * 3, scores, preds, gts, [0])
    assert res.gt_index[0].tolist() == [0, -1, 0] and ref.gt_index.tolist() == [0, -1, 0]


def test_tiny_objects_old_prior_penalises_everything_new_prior_does_not():
    # A 4 x 4 gt between the points of a stride-8 grid: no point inside it, so the mmdetection pair
    # prior (box AND square) is empty and every chosen prior pays +1e5. YOLOX's new prior has no
    # in-box test: the 1.5-stride square alone finds unpenalised priors.
    points, strides = GRID, [8.0] * 25
    gt = [[13.0, 13.0, 17.0, 17.0]]  # centre (15, 15); grid points at 4, 12, 20, ...
    preds = [[p[0] - 6, p[1] - 6, p[0] + 6, p[1] + 6] for p in points]
    scores = [[0.5]] * 25
    old = reference(points, strides, scores, preds, gt, [0])
    assert not old.in_box.any() and not old.pair.any() and old.candidates.sum() > 0
    new = reference(points, strides, scores, preds, gt, [0], **variant_kwargs("yolox"))
    assert new.pair.sum() == 9  # x, y in {4, 12, 20}: inside the square 15 +- 12
    for assigner, ref in ((SimOTAAssigner(), old), (SimOTAAssigner.yolox(), new)):
        res = run(points, strides, scores, preds, gt, [0], assigner)
        assert res.gt_index[0].tolist() == ref.gt_index.tolist()
        assert (res.gt_index[0] == 0).sum() >= 1


def test_a_gt_far_from_every_prior_still_takes_one_penalised_prior():
    # gt 1 lies outside the grid: no candidate of its own, IoUs 0 -> k = 1, and it takes the cheapest
    # candidate of the image (all penalised for it), here one of gt 0's: docs/algorithms.md §9.5.
    points = GRID
    preds = [[p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4] for p in points]
    scores = [[0.5, 0.5]] * 25
    scores[3] = [0.5, 0.99]  # the cheapest prior for gt 1 (class 1)
    gts = [[0.0, 0.0, 40.0, 40.0], [300.0, 300.0, 310.0, 310.0]]
    ref = reference(points, [8.0] * 25, scores, preds, gts, [0, 1])
    assert not ref.in_box[:, 1].any() and not ref.in_ctr[:, 1].any() and ref.dynamic_ks[1] == 1
    res = run(points, [8.0] * 25, scores, preds, gts, [0, 1])
    assert res.gt_index[0].tolist() == ref.gt_index.tolist()
    assert res.gt_index[0, 3].item() == 1 and res.overlaps[0, 3].item() == 0.0


def test_a_perfect_prediction_outside_the_geometric_prior_is_not_a_candidate():
    # mmdetection prices candidates only: point 3 lies outside the gt's box and square but predicts the gt
    # exactly (IoU 1). It neither counts in the dynamic k nor can be chosen.
    points = GRID[6:9] + [[300.0, 300.0]]
    preds = [[0.0, 0.0, 40.0, 20.0]] * 3 + [[0.0, 0.0, 40.0, 40.0]]  # IoU 0.5 x 3 (k = 1), then 1 (would be 2)
    ref = reference(points, [8.0] * 4, [[0.5]] * 4, preds, [[0, 0, 40, 40]], [0])
    assert ref.candidates.tolist() == [True, True, True, False] and ref.dynamic_ks.tolist() == [1]
    res = run(points, [8.0] * 4, [[0.5]] * 4, preds, [[0, 0, 40, 40]], [0])
    assert res.gt_index[0].tolist() == [0, -1, -1, -1]


def test_half_precision_scores_are_refused_with_the_cast_to_make():
    p, s, sc, pb, gb, gl, gm = _tiny_batch([[[0, 0, 40, 40], [10, 10, 30, 26]]], [[0, 2]])
    with pytest.raises(TypeError, match=r"pred_scores: expected float32, got float16; cast with \.float\(\)"):
        SimOTAAssigner()(p, s, sc.half(), pb, gb, gl, gm)


# ------------------------------------------------------------------------------------------------
# Degenerate inputs
# ------------------------------------------------------------------------------------------------


def _tiny_batch(boxes_per_image, labels_per_image, n_points=25):
    points, strides = T(GRID[:n_points]), T([8.0] * n_points)
    b = len(boxes_per_image)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(b, n_points, 3, generator=g)  # (B, N, 3)
    preds = torch.cat([points - 6, points + 6], 1)[None].repeat(b, 1, 1)  # (B, N, 4)
    batch = pad_gts([T(x).reshape(-1, 4) for x in boxes_per_image],
                    [torch.tensor(lab, dtype=torch.int64) for lab in labels_per_image])
    return points, strides, scores, preds, batch.boxes, batch.labels, batch.mask


def test_no_gts_all_padding_and_no_priors():
    a = SimOTAAssigner()
    args = _tiny_batch([[], []], [[], []])  # M = 0
    res = a(*args)
    assert res.gt_index.shape == (2, 25) and (res.gt_index == -1).all() and (res.labels == 3).all()
    assert (res.weights == 1).all() and (res.overlaps == 0).all()
    args = _tiny_batch([[], [[0, 0, 40, 40]]], [[], [2]])  # image 0 all padding
    res = a(*args)
    assert (res.gt_index[0] == -1).all() and (res.gt_index[1] >= 0).sum() >= 1
    image_by_image(a, args)
    p, s, sc, pb, gb, gl, gm = args
    res = a(p[:0], s[:0], sc[:, :0], pb[:, :0], gb, gl, gm)  # N = 0
    assert res.gt_index.shape == (2, 0) and res.boxes.shape == (2, 0, 4)


def test_padding_in_the_middle_and_zero_area_gts():
    a = SimOTAAssigner()
    p, s, sc, pb, gb, gl, gm = _tiny_batch([[[0, 0, 40, 40], [8, 8, 8, 30], [20, 20, 36, 36]]], [[0, 1, 2]])
    gm = torch.tensor([[True, False, True]])  # the zero-area row is padding here
    res = a(p, s, sc, pb, gb, gl, gm)
    assert not (res.gt_index == 1).any()
    assert torch.equal(res.gt_index, a(p, s, sc, pb, *_with_padding(gb, gl, gm)).gt_index)
    ref = simota_assign(p, s, sc[0], pb[0], gb[0][[0, 2]], gl[0][[0, 2]])
    assert res.gt_index[0].tolist() == torch.where(ref.gt_index == 1, 2, ref.gt_index).tolist()
    # as a real gt, the zero-area box has no point inside and IoU 0 with everything: still k = 1
    gm = torch.ones(1, 3, dtype=torch.bool)
    res = a(p, s, sc, pb, gb, gl, gm)
    ref = simota_assign(p, s, sc[0], pb[0], gb[0], gl[0])
    assert ref.dynamic_ks[1] == 1 and res.gt_index[0].tolist() == ref.gt_index.tolist()


def test_no_candidate_prior_means_all_negative():
    a = SimOTAAssigner()
    args = _tiny_batch([[[500, 500, 520, 520]]], [[0]])  # far outside the 40 x 40 grid
    res = a(*args)
    assert (res.gt_index == -1).all()
    assert (a(*args[:4], *_with_padding(*args[4:])).gt_index == -1).all()


def test_one_gt_one_prior_and_fewer_than_ten_priors():
    a = SimOTAAssigner()
    args = _tiny_batch([[[0, 0, 16, 16]]], [[1]], n_points=1)  # N = 1, M = 1
    res = a(*args)
    assert res.gt_index.tolist() == [[0]] and res.labels.tolist() == [[1]]
    assert res.boxes[0, 0].tolist() == [0, 0, 16, 16]
    assert res.dense_scores(3)[0, 0].tolist() == [0.0, res.overlaps[0, 0].item(), 0.0]


# ------------------------------------------------------------------------------------------------
# Reference parity: mmdetection's per-image steps (naive BCE) vs the module, exact indices
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["mmdet", "yolox"])
@pytest.mark.parametrize("seed", range(6))
def test_reference_parity_on_random_scenes(variant, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = {"B": 3, "N": 200 + 97 * seed, "M": 2 + 3 * seed, "C": [1, 5, 80][seed % 3]}
    p, s, sc, pb, gb, gl, gm = simota_inputs(sizes, g)  # tie-heavy scores, duplicated predictions
    if seed % 2:
        sc = torch.rand(sc.shape, generator=g)  # continuous scores
    a = SimOTAAssigner(variant=variant)
    res = image_by_image(a, (p, s, sc, pb, gb, gl, gm))
    for i in range(3):
        real = gm[i].nonzero()[:, 0]
        ref = simota_assign(p, s, sc[i], pb[i], gb[i][real], gl[i][real], **variant_kwargs(variant))
        want = torch.where(ref.gt_index >= 0, real[ref.gt_index.clamp(min=0)] if len(real) else -1, -1)
        assert torch.equal(res.gt_index[i], want), (variant, seed, i)
        assert torch.equal(res.labels[i], ref.labels)
        assert torch.equal(res.overlaps[i], ref.overlaps)
        assert torch.equal(res.target_scores[i], ref.overlaps)


@pytest.mark.parametrize("quality", ["weak", "strong"])
def test_reference_parity_on_the_photo(quality):
    scene = default_scene()
    points, strides, _ = photo_points(scene.hw)
    scores, boxes = synthetic_predictions(points, strides, scene.boxes, scene.labels, 6, quality)
    ref = simota_assign(points, strides, scores, boxes, scene.boxes, scene.labels)
    b = scene.as_batch()
    res = SimOTAAssigner()(points, strides, scores[None], boxes[None], b.gt_boxes, b.gt_labels, b.gt_mask)
    assert torch.equal(res.gt_index[0], ref.gt_index) and torch.equal(res.overlaps[0], ref.overlaps)
    gt_inds, max_overlaps = to_mmdet(ref.gt_index, ref.overlaps)
    assert torch.equal(gt_inds, res.to_mmdet()[0])
    assert set(max_overlaps[ref.gt_index < 0].tolist()) == {-1e5}
    cls, obj, reg = yolox_targets(ref.gt_index, ref.labels, ref.overlaps, scene.boxes, 6)
    assert torch.equal(cls, res.dense_scores(6)[0]) and torch.equal(obj, res.positive[0].float())
    assert torch.equal(reg, res.boxes[0])


def test_workload_scene_matches_the_reference_and_k_stays_within_ten():
    a, (p, s, sc, pb, gb, gl, gm) = benchmark_case("yolox-m20@1")
    assert p.shape == (8400, 2) and sc.shape == (1, 8400, 80) and gb.shape == (1, 20, 4)
    res = a(p, s, sc, pb, gb, gl, gm)
    (ref,) = benchmark_reference("yolox-m20@1")()  # mmdetection's per-image logic on the same inputs
    assert torch.equal(res.gt_index[0], ref.gt_index)
    assert (ref.dynamic_ks <= 10).all() and (ref.positives_per_gt <= ref.dynamic_ks).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 120), st.floats(0, 120), st.floats(0, 60), st.floats(0, 60),
                          st.integers(0, 3)), min_size=1, max_size=8),
       st.integers(0, 2**16))
def test_properties_each_positive_was_marked_by_its_gt_or_won_a_conflict(gts, seed):
    points, strides, _ = photo_points((128, 128))  # 336 points, strides 8 / 16 / 32
    g = torch.Generator().manual_seed(seed)
    boxes = T([[x, y, x + w, y + h] for x, y, w, h, _ in gts])
    labels = torch.tensor([c for *_, c in gts])
    scores = torch.rand(len(points), 4, generator=g)
    preds = torch.cat([points - 2 * strides[:, None], points + 2 * strides[:, None]], 1)
    ref = simota_assign(points, strides, scores, preds, boxes, labels)
    res = SimOTAAssigner()(points, strides, scores[None], preds[None], boxes[None], labels[None],
                           torch.ones(1, len(gts), dtype=torch.bool))
    assert torch.equal(res.gt_index[0], ref.gt_index)
    pos = res.gt_index[0] >= 0
    assert torch.equal(res.labels[0][pos], labels[res.gt_index[0][pos]])
    assert (ref.dynamic_ks <= 10).all() and int(pos.sum()) <= int(ref.dynamic_ks.sum())
    # a positive was marked by its gt, or it was a conflict won by the cheapest gt of ALL rows (which
    # need not have marked it: so a gt can end with MORE positives than its k)
    row = torch.cumsum(ref.candidates.long(), 0) - 1  # (N,) prior -> row of the candidate matrices
    for i in pos.nonzero()[:, 0].tolist():
        g, r = int(res.gt_index[0, i]), int(row[i])
        assert ref.marked[r, g] or (ref.marked[r].sum() > 1 and int(ref.cost[r].argmin()) == g)


# ------------------------------------------------------------------------------------------------
# onnxruntime
# ------------------------------------------------------------------------------------------------


@pytest.mark.onnx
def test_onnxruntime_on_a_workload_batch_and_degenerate_images(exported):
    entry = catalog.get("simota_assigner")
    sess = xonnx.session(exported("simota_assigner"), ["CPUExecutionProvider"])
    module = entry.build()
    _, args = benchmark_case("yolox-m20@2")
    p, s, sc, pb, gb, gl, gm = args
    gm = gm.clone()
    gm[1, 5:] = False  # image 1 partly padded
    gm[1, 2] = False  # ... and a hole in the middle
    for a in ((p, s, sc, pb, gb, gl, gm), _tiny_batch([[], [[0, 0, 40, 40], [13, 13, 17, 17]]], [[], [2, 1]])):
        eager = entry.run_eager(module, a)
        got = xonnx.run(sess, a)
        for c in xonnx.compare([o.name for o in entry.outputs], eager, got, atol=entry.atol):
            assert c.exact if c.dtype.startswith("int") else c.close, str(c)


# ------------------------------------------------------------------------------------------------
# Bad input and constructor arguments
# ------------------------------------------------------------------------------------------------


def test_bad_input_is_named():
    a = SimOTAAssigner()
    p, s, sc, pb, gb, gl, gm = _tiny_batch([[[0, 0, 40, 40]]], [[0]])
    with pytest.raises(ValueError, match="strides"):
        a(p, s * 0, sc, pb, gb, gl, gm)
    with pytest.raises(ValueError, match="pred_scores"):
        a(p, s, sc * 3 - 1, pb, gb, gl, gm)  # logits, not probabilities
    with pytest.raises(ValueError, match="gt_labels"):
        a(p, s, sc, pb, gb, gl + 3, gm)  # class 3 of C = 3
    with pytest.raises(ValueError, match="pred_boxes"):
        a(p, s, sc, pb[..., [2, 1, 0, 3]], gb, gl, gm)  # inverted boxes
    with pytest.raises(ValueError, match="pred_scores"):
        a(p, s, sc[:, :-1], pb, gb, gl, gm)  # N does not match
    with pytest.raises(ValueError, match="gt_boxes"):
        a(p, s, sc, pb, gb.repeat(2, 1, 1), gl.repeat(2, 1), gm.repeat(2, 1))  # B does not match
    with pytest.raises(ValueError, match="variant"):
        SimOTAAssigner(variant="ppdet")
    with pytest.raises(ValueError, match="candidate_topk"):
        SimOTAAssigner(candidate_topk=0)
    with pytest.raises(ValueError, match="center_radius"):
        SimOTAAssigner(center_radius=-1.0)


def test_variant_defaults_and_overrides():
    y = SimOTAAssigner.yolox(penalty=5e5)
    assert (y.center_radius, y.penalty, y.iou_eps, y.in_box_prior) == (1.5, 5e5, 1e-8, False)
    m = SimOTAAssigner()
    assert (m.center_radius, m.penalty, m.iou_eps, m.in_box_prior) == (2.5, 1e5, 1e-7, True)
    assert variant_kwargs("yolox") == {"center_radius": 1.5, "penalty": 1e6, "iou_eps": 1e-8, "in_box_prior": False}
    # the signature shows mmdetection 3.3's defaults; variant="yolox" is a thin alias of the preset
    sig = inspect.signature(SimOTAAssigner).parameters
    assert {k: sig[k].default for k in ("center_radius", "candidate_topk", "iou_weight", "cls_weight", "penalty",
                                         "iou_eps", "in_box_prior")} == {
        "center_radius": 2.5, "candidate_topk": 10, "iou_weight": 3.0, "cls_weight": 1.0, "penalty": 1e5,
        "iou_eps": 1e-7, "in_box_prior": True}
    assert SimOTAAssigner(variant="yolox").extra_repr() == SimOTAAssigner.yolox().extra_repr()
    assert SimOTAAssigner(variant="yolox", penalty=5e5).extra_repr() == y.extra_repr()
    assert SimOTAAssigner(variant="mmdet").extra_repr() == m.extra_repr()


def test_eager_chunks_of_images_give_the_same_result(monkeypatch):
    # eager runs a few images at a time (CHUNK_PAIRS bounds each chunk's M x N); the export runs the batch
    _, args = benchmark_case("yolox-m20@3")
    a = SimOTAAssigner()
    monkeypatch.setattr(simota, "CHUNK_PAIRS", 3 * 20 * 8400)  # the whole batch in one chunk
    whole = a(*args)
    monkeypatch.setattr(simota, "CHUNK_PAIRS", 20 * 8400)  # one image per chunk
    for x, y in zip(a(*args), whole):
        assert torch.equal(x, y)
    assert (whole.gt_index >= 0).sum() > 100
