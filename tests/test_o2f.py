"""O2F: hand-computed assignments, the loss against its formula, NMS-free inference, reference <-> exportable
(the dense path and the grid windows) <-> onnxruntime, degenerate inputs, bad input."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners.o2f import O2FAssigner, center_region, quality_key, soft_ceiling
from exportable.batching import pad_gts
from exportable.losses import O2FLoss, o2f_classification_loss
from exportable.o2f_inference import O2FPostProcess
from lessons.o2f import (
    benchmark_case,
    o2f_assign_single,
    o2f_loss_reference,
    o2f_postprocess_single,
    photo_head,
    soft_ceiling_value,
    toy_training,
)
from lessons.scenes import default_scene, grid_points, random_batch, random_predictions


def grid(h=32, w=32, strides=(8,)):
    points, strides, _ = grid_points(h, w, strides)
    return points, strides


def assign(points, strides, scores, boxes, gts, labels, t=0.6, **kw):
    """One image: scores (N, C), boxes (N, 4), gts (M, 4) lists -> AssignResult of batch 1."""
    batch = pad_gts([torch.tensor(gts, dtype=torch.float32).reshape(-1, 4)], [torch.tensor(labels)], min_rows=0)
    module = O2FAssigner(num_classes=scores.shape[1], **kw)
    return module(points, strides, scores[None], boxes[None], batch.boxes, batch.labels, batch.mask, torch.tensor(t))


def index_of(points, x, y):
    return int(((points[:, 0] == x) & (points[:, 1] == y)).nonzero()[0, 0])


def dense(module, args):
    """The general path run in eager: steps 1-4 dense over (B, M, N) instead of windows of grid cells."""
    with mock.patch.object(O2FAssigner, "_grid_levels", lambda *_: None):
        return module(*args)


# ---------------------------------------------------------------------------------------------------------
# T(e)


def test_soft_ceiling_schedule():
    # (min_t - max_t) / (max_epoch - 1) * e + max_t: 0.6 first epoch, 0.2 last, linear per epoch
    assert soft_ceiling(0, 12).item() == pytest.approx(0.6)
    assert soft_ceiling(11, 12).item() == pytest.approx(0.2)
    assert soft_ceiling(5, 12).item() == pytest.approx(0.6 - 5 * 0.4 / 11)
    assert soft_ceiling(35, 36).item() == pytest.approx(0.2)
    assert soft_ceiling(3, 12).dim() == 0 and soft_ceiling(3, 12).dtype == torch.float32
    assert soft_ceiling(3, 12).item() == np.float32(soft_ceiling_value(3, 12))
    with pytest.raises(ValueError, match="max_epoch"):
        soft_ceiling(0, 1)  # the authors' formula divides by max_epoch - 1
    with pytest.raises(ValueError, match="epoch"):
        soft_ceiling(12, 12)


# ---------------------------------------------------------------------------------------------------------
# Hand cases: gt (0, 0, 32, 32) on stride-8 points at 4, 12, 20, 28. Centre region: centre 16 +- 12
# = (4, 28), strictly inside -> x, y in {12, 20}: four candidates.


def test_center_region_is_clipped_strict_and_spans_levels():
    points = torch.tensor([[4.0, 16.0], [12.0, 16.0], [28.0, 16.0], [16.0, 16.0], [44.0, 16.0], [36.0, 16.0]])
    strides = torch.tensor([8.0, 8.0, 8.0, 32.0, 8.0, 8.0])
    gts = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 100.0, 32.0], [50.0, 10.0, 50.0, 30.0]]])
    region = center_region(points, strides * 1.5, gts)[0]  # (M, N)
    # gt 0: x in (4, 28) -> 4 and 28 sit ON the boundary (out), 12 in; the stride-32 point's square
    # (16 +- 48) is clipped to the box, so it is in (every level qualifies)
    assert region[0].tolist() == [False, True, False, True, False, False]
    # gt 1 (100 wide): the stride-8 square 50 +- 12 = (38, 62): inside the box is not enough (12, 28, 36 out),
    # 44 in; the stride-32 point's square 50 +- 48 = (2, 98) holds x = 16
    assert region[1].tolist() == [False, False, False, True, True, False]
    assert not region[2].any()  # a zero-width gt has an empty region


def test_center_region_is_the_authors_clipped_square_test():
    # the authors test min(px - max(cx - r, x1), py - max(cy - r, y1), min(cx + r, x2) - px, ...) > 0; the
    # module uses the package's point-in-box AND centre-square tests: the same booleans, pinned on points
    # exactly on, and one ulp either side of, every side of the clipped square
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(1, 6, 2, generator=g) * 100
    gts = torch.cat([xy, xy + torch.rand(1, 6, 2, generator=g) * 60], dim=-1)  # (1, M, 4)
    x1, y1, x2, y2 = gts[0].unbind(-1)  # (M,)
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, torch.tensor(12.0)
    xs = torch.cat([torch.maximum(cx - r, x1), torch.minimum(cx + r, x2), cx])  # (3M,) on a side, or inside
    ys = torch.cat([torch.maximum(cy - r, y1), torch.minimum(cy + r, y2), cy])  # (3M,)
    xs = torch.cat([xs, torch.nextafter(xs, xs + 1), torch.nextafter(xs, xs - 1)])  # (9M,)
    ys = torch.cat([ys, torch.nextafter(ys, ys - 1), torch.nextafter(ys, ys + 1)])  # (9M,)
    points = torch.cartesian_prod(xs, ys)  # (P, 2) every x with every y
    px, py = points[:, :1], points[:, 1:]  # (P, 1)
    d = torch.stack([px - torch.maximum(cx - r, x1), py - torch.maximum(cy - r, y1),
                     torch.minimum(cx + r, x2) - px, torch.minimum(cy + r, y2) - py])  # (4, P, M)
    want = (d.min(dim=0).values > 0).T  # (M, P)
    got = center_region(points, torch.full((len(points),), 12.0), gts)[0]  # (M, P)
    assert torch.equal(got, want) and want.any() and not want.all()


def test_a_gt_with_one_candidate_gets_only_a_certain_positive():
    points, strides = grid()
    boxes = torch.tensor([[100.0, 100.0, 108.0, 108.0]]).repeat(len(points), 1)  # IoU 0 with the gt
    only = index_of(points, 20, 12)
    boxes[only] = torch.tensor([0.0, 0.0, 32.0, 32.0])  # IoU 1: the only candidate with IoU > 0
    scores = torch.full((len(points), 2), 0.5)
    res = assign(points, strides, scores, boxes, [[0, 0, 32, 32]], [1])
    assert res.positive.sum().item() == 1 and res.gt_index[0, only].item() == 0
    assert res.target_scores[0, only].item() == 1.0 and res.weights[0, only].item() == 1.0
    assert res.overlaps[0, only].item() == 1.0 and res.labels[0, only].item() == 1
    assert res.boxes[0, only].tolist() == [0, 0, 32, 32]
    negatives = ~res.positive[0]
    assert (res.labels[0, negatives] == 2).all() and (res.weights[0, negatives] == 1).all()
    assert (res.target_scores[0, negatives] == 0).all() and (res.gt_index[0, negatives] == -1).all()


def test_soft_labels_use_p_over_the_ambiguous_max_not_q():
    # three candidates with IoU > 0: A IoU 1, p 0.9 (q 0.979); B IoU 0.5, p 0.6 (q 0.515); C IoU 0.5, p 0.3
    # (q 0.448). A is certain; B = 0.6 / 0.6 * T = T; C = 0.3 / 0.6 * T = T / 2. Normalising over all
    # positives would give B = 0.6 / 0.9 T; normalising q would give C = (0.3 / 0.6)^0.2 T = 0.87 T.
    points, strides = grid()
    a, b, c, far = (index_of(points, *xy) for xy in ((12, 12), (20, 12), (12, 20), (20, 20)))
    boxes = torch.tensor([[100.0, 100.0, 108.0, 108.0]]).repeat(len(points), 1)
    boxes[a] = torch.tensor([0.0, 0.0, 32.0, 32.0])
    boxes[b] = torch.tensor([0.0, 0.0, 32.0, 16.0])  # IoU 512 / 1024
    boxes[c] = torch.tensor([0.0, 16.0, 32.0, 32.0])
    scores = torch.full((len(points), 1), 0.1)
    scores[a], scores[b], scores[c] = 0.9, 0.6, 0.3
    t = 0.42
    res = assign(points, strides, scores, boxes, [[0, 0, 32, 32]], [0], t=t)
    assert res.positive[0].nonzero().squeeze(1).tolist() == sorted([a, b, c])  # far has IoU 0
    assert res.target_scores[0, a].item() == 1.0 and res.weights[0, a].item() == 1.0
    assert res.target_scores[0, b].item() == pytest.approx(t, abs=1e-7)  # the most confident ambiguous: T
    assert res.target_scores[0, c].item() == pytest.approx(t / 2, abs=1e-7)
    assert res.weights[0, b].item() == pytest.approx(0.4) and res.weights[0, c].item() == pytest.approx(0.4)
    assert res.overlaps[0, b].item() == pytest.approx(0.5)


def test_a_gt_whose_best_anchor_another_gt_took():
    # gt 0 (0, 0, 32, 32) class 0, gt 1 (8, 8, 40, 40) class 1: their regions share the point P (20, 20),
    # whose box (4, 4, 36, 36) has IoU 784 / 1264 with both. P's p is 0.9 for class 0 and 0.5 for class 1,
    # so P is the best point of BOTH gts, and gt 0 (larger q) takes it. gt 1's certain positive is then its
    # best remaining point; its three others tie exactly (same box shape, same p): the lowest index wins.
    points, strides = grid(48, 48)
    p_idx = index_of(points, 20, 20)
    boxes = torch.cat([points - 4, points + 4], dim=1)  # 8 x 8 boxes around each point
    boxes[p_idx] = torch.tensor([4.0, 4.0, 36.0, 36.0])
    scores = torch.full((len(points), 2), 0.5)
    scores[p_idx, 0] = 0.9
    res = assign(points, strides, scores, boxes, [[0, 0, 32, 32], [8, 8, 40, 40]], [0, 1], t=0.6)
    gt1_points = [index_of(points, x, y) for x, y in ((20, 28), (28, 20), (28, 28))]  # gt 1's region, minus P
    assert res.gt_index[0, p_idx].item() == 0 and res.target_scores[0, p_idx].item() == 1.0
    certain_1 = min(gt1_points)  # ties: lower point index first
    assert res.gt_index[0, gt1_points].tolist() == [1, 1, 1]
    assert res.target_scores[0, certain_1].item() == 1.0 and res.weights[0, certain_1].item() == 1.0
    others = [j for j in gt1_points if j != certain_1]
    assert res.target_scores[0, others].tolist() == pytest.approx([0.6, 0.6])  # p / max p * T = T
    # gt 0's three other candidates are ambiguous with equal p: each gets T
    gt0_rest = [index_of(points, x, y) for x, y in ((12, 12), (20, 12), (12, 20))]
    assert res.gt_index[0, gt0_rest].tolist() == [0, 0, 0]
    assert res.target_scores[0, gt0_rest].tolist() == pytest.approx([0.6] * 3)
    assert int((res.target_scores[0] == 1).sum()) == 2  # one certain positive per gt


def test_no_candidate_with_iou_above_zero_means_no_positive():
    points, strides = grid(64, 64)
    boxes = torch.tensor([[200.0, 200.0, 210.0, 210.0]]).repeat(len(points), 1)  # overlaps nothing
    boxes[index_of(points, 52, 52)] = torch.tensor([40.0, 40.0, 64.0, 64.0])  # only gt 1 has IoU > 0
    scores = torch.full((len(points), 1), 0.7)
    res = assign(points, strides, scores, boxes, [[0, 0, 32, 32], [40, 40, 64, 64]], [0, 0])
    assert (res.gt_index[0] == 0).sum().item() == 0  # gt 0: k = min(0, 7) = 0
    assert res.gt_index[0].tolist().count(1) == 1


def test_topk_caps_the_picks_and_zero_scores_never_win():
    # gt (0, 0, 64, 64) on strides 8 / 16 / 32: 4 + 4 + 4 candidates, all with IoU > 0 -> 7 picks
    points, strides = grid(64, 64, (8, 16, 32))
    region = center_region(points, strides * 1.5, torch.tensor([[[0.0, 0.0, 64.0, 64.0]]]))[0, 0]
    assert int(region.sum()) == 12
    boxes = torch.tensor([[8.0, 8.0, 56.0, 56.0]]).repeat(len(points), 1)
    scores = torch.linspace(0.2, 0.9, len(points)).reshape(-1, 1)  # distinct p: a strict order
    res = assign(points, strides, scores, boxes, [[0, 0, 64, 64]], [0])
    assert res.positive.sum().item() == 7
    chosen = res.positive[0].nonzero().squeeze(1)
    assert set(chosen.tolist()) == set(region.nonzero().squeeze(1)[scores[region, 0].argsort()[-7:]].tolist())
    assert res.target_scores[0, chosen].max().item() == 1.0 and (res.target_scores[0] == 1).sum().item() == 1
    # topk = 4 (CrowdHuman): four picks
    assert assign(points, strides, scores, boxes, [[0, 0, 64, 64]], [0], topk=4).positive.sum().item() == 4
    # p = 0 gives q = 0: such a point is never positive, even when picked
    zero = scores.clone()
    zero[region] = 0.0
    assert assign(points, strides, zero, boxes, [[0, 0, 64, 64]], [0]).positive.sum().item() == 0


def test_quality_key_orders_like_q():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2000, generator=g)
    u = torch.rand(2000, generator=g)
    q = p.double() ** 0.2 * u.double() ** 0.8
    key = quality_key(p, u)
    assert key.dtype == torch.float64
    assert torch.equal(torch.argsort(q), torch.argsort(key))  # no ties on random data
    assert torch.allclose(key, q**5, rtol=1e-12)
    assert quality_key(torch.tensor([0.0, 0.5]), torch.tensor([0.5, 0.0])).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------
# Degenerate inputs


@pytest.mark.parametrize("m", [0, 3])
def test_no_gts_and_all_padding(m):
    points, strides = grid(64, 64, (8, 16))
    scores = torch.rand(2, len(points), 3, generator=torch.Generator().manual_seed(0))
    boxes = torch.cat([points - 8, points + 8], dim=1)[None].repeat(2, 1, 1)
    gt_boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0]]).repeat(2, m, 1)
    res = O2FAssigner(num_classes=3)(points, strides, scores, boxes, gt_boxes, torch.zeros(2, m, dtype=torch.int64),
                                     torch.zeros(2, m, dtype=torch.bool), torch.tensor(0.6))
    assert (res.gt_index == -1).all() and (res.labels == 3).all() and (res.weights == 1).all()
    assert (res.target_scores == 0).all() and (res.boxes == 0).all() and (res.overlaps == 0).all()


def test_no_points_in_eager():
    res = O2FAssigner()(torch.zeros(0, 2), torch.zeros(0), torch.zeros(2, 0, 80), torch.zeros(2, 0, 4),
                        torch.tensor([[[0.0, 0.0, 8.0, 8.0]]] * 2), torch.zeros(2, 1, dtype=torch.int64),
                        torch.ones(2, 1, dtype=torch.bool), torch.tensor(0.6))
    assert res.gt_index.shape == (2, 0) and res.boxes.shape == (2, 0, 4)


def test_bad_input_is_rejected():
    entry = catalog.get("o2f_assigner")
    module = entry.build()
    args = list(entry.example({"B": 2, "N": 60, "M": 3, "C": 4}))
    cases = [
        (2, args[2] * 3 - 1, "pred_scores"),  # logits, not probabilities
        (5, torch.full_like(args[5], 4), "gt_labels"),  # class >= C
        (7, torch.tensor([0.6]), "soft_ceiling"),  # not 0-d
        (7, torch.tensor(1.5), "soft_ceiling"),  # T outside [0, 1]
        (1, torch.zeros_like(args[1]), "strides"),
        (3, args[3][:1], "pred_boxes"),  # batch of 1 against B = 2
    ]
    for i, value, name in cases:
        bad = list(args)
        bad[i] = value
        if name == "gt_labels":
            bad[6] = torch.ones_like(args[6])
        with pytest.raises((ValueError, TypeError), match=name):
            module(*bad)


# ---------------------------------------------------------------------------------------------------------
# Reference <-> exportable (both eager paths)


def _workload_like(seed, b=2, m=12, hw=(160, 224), c=6):
    points, strides, _ = grid_points(hw[0], hw[1], (8, 16, 32))
    scores, boxes = random_predictions(points, strides, b, c, seed)
    gts = random_batch({"h": hw[0], "w": hw[1], "batch": b, "m": m, "num_classes": c}, seed)
    mask = gts.gt_mask.clone()
    mask[0, m // 2 :] = False  # some padding
    return points, strides, scores, boxes, gts.gt_boxes, gts.gt_labels, mask


def _check_against_reference(args, res):
    points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask, t = args
    for i in range(scores.shape[0]):
        real = gt_mask[i].nonzero().squeeze(1)
        ref = o2f_assign_single(points, strides, scores[i], boxes[i], gt_boxes[i][real], gt_labels[i][real], float(t),
                                num_classes=80)
        expect = torch.where(ref.gt_index >= 0, torch.cat([real, real.new_zeros(1)])[ref.gt_index.clamp(min=0)], -1)
        assert torch.equal(res.gt_index[i], expect)
        assert torch.equal(res.labels[i], ref.labels)
        assert torch.equal(res.boxes[i], ref.boxes)
        assert torch.equal(res.overlaps[i], ref.overlaps)
        assert torch.allclose(res.target_scores[i], ref.target_scores, atol=1e-6, rtol=0)
        assert torch.equal(res.weights[i], ref.weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t", [0.6, 0.2])
def test_reference_and_both_eager_paths_agree(seed, t):
    module = O2FAssigner()
    args = (*_workload_like(seed), torch.tensor(t))
    res = module(*args)
    assert res.positive.sum() > 20 and ((res.target_scores < 1) & res.positive).any()  # ambiguous ones exist
    _check_against_reference(args, res)
    for got, want in zip(dense(module, args), res):
        assert torch.equal(got, want)


@pytest.mark.parametrize("sizes", [{"B": 3, "N": 400, "M": 9, "C": 4}, {"B": 2, "N": 300, "M": 30, "C": 2}])
def test_tie_heavy_inputs_reference_and_dense(sizes):
    entry = catalog.get("o2f_assigner")  # scores on an 8-level grid, boxes on a 0.5 px grid, repeated points
    module = entry.build()
    for seed in range(3):
        args = entry.example(sizes, seed)
        res = module(*args)
        _check_against_reference(args, res)
        for got, want in zip(dense(module, args), res):
            assert torch.equal(got, want)


def _tie_heavy_grid(seed, b=3, m=12, hw=(96, 136), strides=(8, 16, 32), offset=0.5, c=4):
    """Grid points, scores on a 1/8 grid (some exact zeros), boxes on a 4 px grid: equal keys are common."""
    points, point_strides, _ = grid_points(hw[0], hw[1], strides, offset)
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randint(0, 8, (b, len(points), c), generator=g).float() + 0.5) / 8  # (B, N, C)
    scores = torch.where(torch.rand(b, len(points), c, generator=g) < 0.05, 0.0, scores)
    half = torch.randint(1, 4, (b, len(points), 4), generator=g) * point_strides[None, :, None] / 2  # (B, N, 4)
    boxes = torch.cat([points, points], dim=1)[None] + half * torch.tensor([-1.0, -1.0, 1.0, 1.0])  # (B, N, 4)
    gts = random_batch({"h": hw[0], "w": hw[1], "batch": b, "m": m, "num_classes": c}, seed)
    return points, point_strides, scores, (boxes / 4).round() * 4, gts.gt_boxes, gts.gt_labels, gts.gt_mask


@pytest.mark.parametrize("seed", [0, 1])
def test_the_grid_windows_find_the_slots_of_the_dense_top_k(seed):
    # the windows hold every centre-region point; every slot that can matter (kept, key > 0) is the dense
    # path's, in the same order, with the same p and IoU bits; the other slots store nothing
    module = O2FAssigner(num_classes=80)
    if seed == 0:  # a workload-like batch
        points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask = _workload_like(seed, m=20)
    else:  # tie-heavy
        points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask = _tie_heavy_grid(seed, c=80)
    labels = torch.where(gt_mask, gt_labels, 0)  # (B, M) as forward passes them
    args = (points, strides, scores, boxes, gt_boxes, labels, gt_mask)
    levels = module._grid_levels(points, strides)
    assert levels == (8.0, 16.0, 32.0)
    fast, full = module._slots_in_windows(levels, *args), module._slots(*args)
    live = full.keep & (full.key > 0)  # (B, M, K)
    assert live.sum() > 50 and torch.equal(fast.keep, live) and torch.equal(fast.key, torch.where(live, full.key, 0))
    for name in ("index", "prob", "iou"):
        assert torch.equal(getattr(fast, name)[live], getattr(full, name)[live]), name


def _same(a, b):
    for name, x, y in zip(a._fields, a, b):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("strides", "offset", "radius", "hw"), [
    ((8, 16, 32), 0.5, 1.5, (96, 136)),  # yolox-like, an image that is no multiple of 32
    ((8, 16, 32, 64, 128), 0.0, 1.5, (100, 90)),  # FCOS levels, mmdetection's offset 0
    ((16, 8), 0.5, 2.5, (64, 72)),  # levels in another order, a wider region
    ((8, 16, 32), 0.5, 0.4, (64, 64)),  # a region narrower than a cell
])
def test_grid_windows_equal_the_dense_path(seed, strides, offset, radius, hw):
    points, point_strides, scores, boxes, gt_boxes, gt_labels, gt_mask = _tie_heavy_grid(
        seed, hw=hw, strides=strides, offset=offset)
    t = torch.tensor(0.5)
    # degenerate gts: on the image border, past it, smaller than a stride, zero-area, one shared by two rows
    h, w = hw
    gt_boxes[0, :6] = torch.tensor([[0.0, 0.0, 20.0, 12.0], [w - 9.0, h - 30.0, w, h], [w - 4.0, 5.0, w + 40.0, 60.0],
                                    [30.0, 30.0, 33.0, 34.5], [40.0, 40.0, 40.0, 52.0], [-50.0, -50.0, 3.0, 3.0]])
    gt_boxes[1, 1], gt_mask[1, :2] = gt_boxes[1, 0], True  # two gts with equal keys everywhere
    gt_labels[1, 1] = gt_labels[1, 0]
    module = O2FAssigner(num_classes=4, center_radius=radius, grid_strides=strides)
    args = (points, point_strides, scores, boxes, gt_boxes, gt_labels, gt_mask, t)
    windows, auto = module(*args), O2FAssigner(num_classes=4, center_radius=radius)(*args)
    assert windows.positive.sum() > 10
    _same(windows, dense(module, args))
    _same(auto, windows)
    _check_against_reference_c(args, windows, 4, radius)


def _check_against_reference_c(args, res, c, radius):
    points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask, t = args
    for i in range(scores.shape[0]):
        real = gt_mask[i].nonzero().squeeze(1)
        ref = o2f_assign_single(points, strides, scores[i], boxes[i], gt_boxes[i][real], gt_labels[i][real], float(t),
                                num_classes=c, center_radius=radius)
        expect = torch.where(ref.gt_index >= 0, torch.cat([real, real.new_zeros(1)])[ref.gt_index.clamp(min=0)], -1)
        assert torch.equal(res.gt_index[i], expect)
        assert torch.allclose(res.target_scores[i], ref.target_scores, atol=1e-6, rtol=0)


def test_grid_windows_with_no_gts_and_tied_keys():
    points, strides, _ = grid_points(64, 96, (8, 16, 32))
    module = O2FAssigner(num_classes=2, grid_strides=(8, 16, 32))
    scores = torch.full((2, len(points), 2), 0.5)  # every key equal within a gt: lower point index first
    boxes = torch.tensor([8.0, 8.0, 56.0, 56.0]).repeat(2, len(points), 1)  # (B, N, 4)
    none = module(points, strides, scores, boxes, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64),
                  torch.zeros(2, 0, dtype=torch.bool), torch.tensor(0.6))  # M = 0
    assert (none.gt_index == -1).all() and (none.weights == 1).all()
    gts = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(2, 1, 1)
    args = (points, strides, scores, boxes, gts, torch.zeros(2, 1, dtype=torch.int64),
            torch.ones(2, 1, dtype=torch.bool), torch.tensor(0.6))
    res = module(*args)
    region = center_region(points, strides * 1.5, gts[:1])[0, 0]
    assert res.positive[0].nonzero().squeeze(1).tolist() == region.nonzero().squeeze(1)[:7].tolist()
    _same(res, dense(module, args))


def test_grid_strides_are_checked():
    points, strides, _ = grid_points(64, 64, (8, 16, 32))
    scores, boxes = random_predictions(points, strides, 1, 3, seed=0)
    args = (scores, boxes, torch.tensor([[[0.0, 0.0, 30.0, 30.0]]]), torch.zeros(1, 1, dtype=torch.int64),
            torch.ones(1, 1, dtype=torch.bool), torch.tensor(0.6))
    for levels in ((16, 8, 32), (8, 16), (8, 32, 16), (8, 12, 32)):  # not these points' levels
        with pytest.raises(ValueError, match="points"):
            O2FAssigner(num_classes=3, grid_strides=levels)(points, strides, *args)
    extra = O2FAssigner(num_classes=3, grid_strides=(8, 16, 32, 64))(points, strides, *args)  # a level with no point
    assert extra.positive.any()
    _same(extra, O2FAssigner(num_classes=3)(points, strides, *args))
    moved = points.clone()
    moved[5, 0] += 3.0  # a point off its cell
    with pytest.raises(ValueError, match="points"):
        O2FAssigner(num_classes=3, grid_strides=(8, 16, 32))(moved, strides, *args)
    assert O2FAssigner(num_classes=3)._grid_levels(moved, strides) is None  # eager: dense for these points
    for bad in ((), (8, 8), (8, -16), 8, (8, float("nan"))):
        with pytest.raises(ValueError, match="grid_strides"):
            O2FAssigner(grid_strides=bad)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 15), t=st.floats(0.2, 0.6))
def test_structure_of_the_targets(seed, m, t):
    args = (*_workload_like(seed, b=1, m=m, hw=(96, 128), c=3), torch.tensor(t, dtype=torch.float32))
    res = O2FAssigner(num_classes=3)(*args)
    tt = torch.tensor(t, dtype=torch.float32).item()
    for g in range(m):
        mine = res.gt_index[0] == g
        if not mine.any():
            continue
        targets = res.target_scores[0, mine]
        assert int(mine.sum()) <= 7
        assert int((targets == 1).sum()) == 1  # exactly one certain positive
        amb = targets[targets < 1]
        if amb.numel():
            assert amb.max().item() == pytest.approx(tt, abs=1e-7)  # the most confident ambiguous gets T
            assert (amb <= tt + 1e-7).all() and (amb > 0).all()
            assert (res.weights[0, mine][targets < 1] == pytest.approx(0.4))
    assert (res.overlaps[0][res.positive[0]] > 0).all()


# ---------------------------------------------------------------------------------------------------------
# onnxruntime at sizes other than the export sizes, T = 0.6 and T = 0.2


@pytest.mark.onnx
@pytest.mark.parametrize("t", [0.6, 0.2])
def test_onnxruntime_matches_eager_and_reference(exported, t):
    sess = xonnx.session(exported("o2f_assigner"))
    module = catalog.get("o2f_assigner").build()
    cases = [(*_workload_like(3, b=3, m=15), torch.tensor(t)),
             (*catalog.get("o2f_assigner").example({"B": 2, "N": 350, "M": 11, "C": 5}, 7)[:7], torch.tensor(t))]
    for args in cases:
        eager = module(*args)
        got = xonnx.run(sess, args)
        for name, e, o in zip(eager._fields, eager, got):
            o = torch.as_tensor(np.asarray(o))
            if e.dtype == torch.int64:
                assert torch.equal(o, e), name
            else:
                assert torch.allclose(o, e, atol=1e-6, rtol=0), name
        _check_against_reference(args, eager)


@pytest.fixture(scope="module")
def grid_graph():
    """The graph of O2FAssigner(grid_strides=(8, 16, 32)): steps 1-4 on windows of cells (exported once)."""
    return xonnx.session(catalog.get("o2f_assigner").export(grid_strides=(8, 16, 32)))


@pytest.mark.onnx
def test_onnxruntime_grid_windows_match_eager_and_the_dense_path(grid_graph):
    def bordered(seed, hw):  # tie-heavy, gts on the border, past it, under a stride, zero-area, padding
        args = list(_tie_heavy_grid(seed, b=2, m=9, hw=hw, c=80))
        args[4][0, :4] = torch.tensor([[0.0, 0.0, 20.0, 12.0], [hw[1] - 9.0, hw[0] - 30.0, hw[1], hw[0]],
                                       [30.0, 30.0, 33.0, 34.5], [40.0, 40.0, 40.0, 52.0]])
        args[6][1, 5:] = False
        return (*args, torch.tensor(0.2))

    cases = [(*_workload_like(3, b=3, m=15), torch.tensor(0.6)), bordered(4, (96, 136)), bordered(5, (64, 40)),
             (*_workload_like(6, b=1, m=1, hw=(32, 32)), torch.tensor(0.6))]
    empty = list(_workload_like(7, b=2, m=3, hw=(64, 96)))
    empty[4:7] = torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool)
    cases.append((*empty, torch.tensor(0.6)))  # M = 0
    module, positives = O2FAssigner(grid_strides=(8, 16, 32)), []
    for args in cases:
        eager = module(*args)
        _same(eager, dense(module, args))
        got = xonnx.run(grid_graph, args)
        for name, e, o in zip(eager._fields, eager, got):
            o = torch.as_tensor(np.asarray(o))
            if e.dtype == torch.int64 or e.dtype == torch.bool:
                assert torch.equal(o, e), name
            else:
                assert torch.allclose(o, e, atol=1e-6, rtol=0), name
        positives.append(int(eager.positive.sum()))
    assert min(positives[:3]) > 10 and positives[-1] == 0, positives


# ---------------------------------------------------------------------------------------------------------
# The loss


def test_loss_equals_the_formula():
    entry = catalog.get("o2f_loss")
    module = entry.build()
    for sizes in ({"B": 2, "N": 40, "C": 3}, {"B": 1, "N": 25, "C": 7}):
        args = entry.example(sizes, 5)
        got = module(*args)
        want = o2f_loss_reference(*args)
        assert got.loss_cls.item() == pytest.approx(want[0], rel=1e-5)
        assert got.loss_bbox.item() == pytest.approx(want[1], rel=1e-5)


def test_loss_by_hand_and_torch_bce():
    # one point, one class, certain positive p = 0.5: BCE(0.5, 1) = ln 2; one negative entry p = 0.5:
    # 0.75 * 0.25 * ln 2; normalised by 1 positive
    p = torch.tensor([[[0.5, 0.5]]])
    labels, t, w = torch.tensor([[0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]])
    box = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    loss = O2FLoss()(p, box, torch.tensor([[5.0, 5.0]]), labels, t, w, box)
    assert loss.loss_cls.item() == pytest.approx(math.log(2) * (1 + 0.75 * 0.25), rel=1e-6)
    assert loss.loss_bbox.item() == pytest.approx(0.0, abs=1e-6)  # GIoU 1 with a perfect box
    # the elementwise loss is torch's binary_cross_entropy on probabilities
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 9, 5, generator=g)
    scores[0, 0, 0], scores[0, 0, 1] = 0.0, 1.0  # the -100 clamp
    lab = torch.randint(0, 6, (4, 9), generator=g)
    ts, ws = torch.rand(4, 9, generator=g), torch.rand(4, 9, generator=g)
    elem = o2f_classification_loss(scores, lab, ts, ws)
    neg = F.binary_cross_entropy(scores, torch.zeros_like(scores), reduction="none") * scores**2 * 0.75
    onehot = F.one_hot(lab, 6)[..., :5].bool()
    pos = ws[..., None] * F.binary_cross_entropy(scores, ts[..., None].expand_as(scores), reduction="none")
    assert torch.allclose(elem, torch.where(onehot, pos, neg), atol=1e-6)


def test_the_loss_pulls_an_ambiguous_anchor_toward_its_target():
    for p0, direction in ((0.15, -1), (0.45, 1)):  # below t = 0.3: the gradient is negative (p goes up)
        p = torch.tensor([[[p0]]], requires_grad=True)
        loss = O2FLoss()(p, torch.zeros(1, 1, 4), torch.zeros(1, 2), torch.tensor([[0]]), torch.tensor([[0.3]]),
                         torch.tensor([[0.4]]), torch.tensor([[-1.0, -1.0, 1.0, 1.0]]).reshape(1, 1, 4))
        loss.loss_cls.backward()
        assert math.copysign(1, p.grad.item()) == direction


def test_loss_without_positives():
    p = torch.full((1, 3, 2), 0.2)
    loss = O2FLoss()(p, torch.zeros(1, 3, 4), torch.zeros(3, 2), torch.full((1, 3), 2), torch.zeros(1, 3),
                     torch.ones(1, 3), torch.zeros(1, 3, 4))
    assert loss.loss_bbox.item() == 0.0  # the authors' code returns the sum of the predicted distances here
    assert loss.loss_cls.item() == pytest.approx(6 * 0.75 * 0.04 * -math.log(0.8), rel=1e-6)  # / max(0, 1)


# ---------------------------------------------------------------------------------------------------------
# NMS-free inference


@pytest.mark.parametrize("params", [{}, {"nms_pre": 7, "max_per_img": 20}, {"score_thr": 0.3}])
def test_postprocess_matches_the_per_image_reference(params):
    entry = catalog.get("o2f_postprocess")
    module = O2FPostProcess(**params)
    args = entry.example({"B": 3, "H": 96, "W": 128}, 4)
    out = module(*args)
    assert out.counts[1].item() == 0  # the example's image 1 has nothing above the threshold
    for i in range(3):
        ref = o2f_postprocess_single([a[i] for a in args[:5]], [a[i] for a in args[5:10]], [a[i] for a in args[10:15]],
                                     tuple(args[15][i].tolist()), **params)
        k = ref[0].shape[0]
        assert out.counts[i].item() == k
        assert torch.equal(out.labels[i, :k], ref[2]) and (out.labels[i, k:] == -1).all()
        assert torch.allclose(out.boxes[i, :k], ref[0], atol=1e-4) and (out.boxes[i, k:] == 0).all()
        assert torch.equal(out.scores[i, :k], ref[1]) and (out.scores[i, k:] == 0).all()
        assert (out.scores[i, :k] > module.score_thr).all() and (out.scores[i, :k].diff() <= 0).all()


def test_postprocess_on_the_photo_head():
    scene = default_scene()
    head = photo_head(scene.boxes, scene.labels, (608, 512))
    out = O2FPostProcess()(*head.cls, *head.box, *head.ctr, torch.tensor([[600, 512]]))
    assert out.counts.item() == 100
    assert set(out.labels[0, :20].tolist()) <= set(scene.labels.tolist())  # the best detections are the gts'
    assert (out.boxes[0, :, 2] <= 512).all() and (out.boxes[0, :, 3] <= 600).all()  # clipped


# ---------------------------------------------------------------------------------------------------------
# Lessons helpers


def test_toy_training_duplicates_fade():
    run = toy_training()  # 12 epochs x 25 steps
    assert run.ceiling[0].item() == pytest.approx(0.6) and run.ceiling[-1].item() == pytest.approx(0.2)
    assert (run.certain_score[-1] > 0.9).all()  # each gt keeps one confident detection
    peak = int(run.duplicates.argmax())
    assert run.duplicates[peak] >= 5 and run.duplicates[-1] == 0  # duplicates above 0.3 while T is high, then none
    assert (run.duplicates[peak:].diff() <= 0).all()  # they only fade once T starts pulling them down
    assert (run.duplicate_score[-1] < run.dup_thr).all() and (run.duplicate_score[-1] <= 0.2 + 0.01).all()


def test_benchmark_case_builds_the_workload():
    module, inputs = benchmark_case("yolox-m20")
    assert isinstance(module, O2FAssigner)
    points, strides, scores, boxes, gt_boxes, gt_labels, gt_mask, t = inputs
    assert points.shape == (8400, 2) and scores.shape == (16, 8400, 80) and gt_boxes.shape == (16, 20, 4)
    assert t.dim() == 0 and t.item() == pytest.approx(0.6)
    with pytest.raises(ValueError):
        benchmark_case("retina-m20")
