"""ATSSAssigner: each quirk of docs/algorithms.md §8 by hand, reference and mmdetection parity, eager chunks and
the level split, onnxruntime on hand-made and degenerate inputs, the paddle preset, bad input."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners.atss import ATSSAssigner, _levels
from exportable.batching import pad_gts
from exportable.examples import atss_inputs
from lessons.atss import atss_anchors, atss_assign, benchmark_case, benchmark_reference, mmdet_atss_assign
from lessons.scenes import random_scene


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def assign(assigner, anchors, gts, level_ids=None, labels=None, **kw):
    anchors = T(anchors)
    level_ids = torch.zeros(len(anchors), dtype=torch.int64) if level_ids is None else torch.tensor(level_ids)
    labels = torch.arange(len(gts)) if labels is None else torch.tensor(labels)
    batch = pad_gts([T(gts).reshape(-1, 4)], [labels])
    return assigner(anchors, level_ids, batch.boxes, batch.labels, batch.mask, **kw)


def shifted(shifts, size=10.0):
    """size x size anchors shifted right by each amount from the gt (0, 0, size, size): IoU (s - d) / (s + d)."""
    return [[s, 0.0, s + size, size] for s in shifts]


# -- hand-made cases: one per quirk ------------------------------------------------------------------------


def test_unbiased_std_decides_a_borderline_anchor():
    # One level, k = 4, gt (0, 0, 10, 10); anchors shifted by 1, 2, 4, 10 px: IoUs 9/11, 8/12, 6/14, 0.
    ious = [9 / 11, 8 / 12, 6 / 14, 0.0]
    unbiased = statistics.mean(ious) + statistics.stdev(ious)  # 0.835: torch.std, official, mmdetection
    biased = statistics.mean(ious) + statistics.pstdev(ious)  # 0.787: a NumPy port (np.std, ddof=0)
    assert biased < 9 / 11 < unbiased
    anchors = shifted([1, 2, 4, 10])
    res = assign(ATSSAssigner(topk=4, num_levels=1), anchors, [[0, 0, 10, 10]])
    assert res.gt_index.tolist() == [[-1, -1, -1, -1]]  # unbiased: nobody reaches 0.835
    ref = atss_assign(T(anchors), torch.zeros(4, dtype=torch.int64), T([[0, 0, 10, 10]]), torch.tensor([0]), topk=4)
    assert float(ref.threshold[0]) == pytest.approx(unbiased, abs=1e-7)
    assert ref.gt_index.tolist() == [-1, -1, -1, -1]


def test_threshold_equality_ge_vs_strict():
    # Four 20 x 20 anchors at (10 +- 4, 10 +- 4) around the gt (0, 0, 20, 20): every IoU is 256 / 544, so the
    # std is 0 and the threshold equals each IoU exactly. Official/mmdetection (>=): all four; Paddle (>): none.
    anchors = [[c[0] - 10, c[1] - 10, c[0] + 10, c[1] + 10] for c in [(6, 6), (14, 6), (6, 14), (14, 14)]]
    gt = [[0, 0, 20, 20]]
    mm = assign(ATSSAssigner(topk=4, num_levels=1), anchors, gt)
    pd = assign(ATSSAssigner(topk=4, num_levels=1, variant="paddle"), anchors, gt)
    assert mm.gt_index.tolist() == [[0, 0, 0, 0]] and mm.overlaps[0].tolist() == pytest.approx([256 / 544] * 4)
    assert pd.gt_index.tolist() == [[-1, -1, -1, -1]]
    assert assign(ATSSAssigner(topk=4, num_levels=1, strict=True), anchors, gt).gt_index.tolist() == [[-1] * 4]
    for variant in ("mmdet", "paddle"):
        ref = atss_assign(T(anchors), torch.zeros(4, dtype=torch.int64), T(gt), torch.tensor([0]), topk=4,
                          variant=variant)
        assert ref.gt_index.tolist() == (mm if variant == "mmdet" else pd).gt_index[0].tolist()


def test_single_candidate_gets_no_positive():
    # k = 1 on one level: one candidate, a perfect match (IoU 1), but no unbiased std -> no positive.
    anchors = [[0, 0, 10, 10], [30, 0, 40, 10]]
    res = assign(ATSSAssigner(topk=1, num_levels=1), anchors, [[0, 0, 10, 10]])
    assert res.gt_index.tolist() == [[-1, -1]]
    ref = atss_assign(T(anchors), torch.zeros(2, dtype=torch.int64), T([[0, 0, 10, 10]]), torch.tensor([0]), topk=1)
    assert ref.gt_index.tolist() == [-1, -1] and math.isnan(float(ref.std[0]))
    # torch.std itself gives NaN for one value, and NaN compares False: the peers' behaviour
    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert math.isnan(torch.tensor([1.0]).std().item())
    # the same single candidate through anchor_mask: one valid anchor in the image
    res = assign(ATSSAssigner(topk=9, num_levels=1), anchors, [[0, 0, 10, 10]],
                 anchor_mask=torch.tensor([[True, False]]))
    assert res.gt_index.tolist() == [[-1, -2]]
    # two candidates (two levels, k = 1): the threshold mean + |d| / sqrt(2) exceeds both IoUs -> still none,
    # three (k = 3) give the perfect match its positive
    assert assign(ATSSAssigner(topk=1, num_levels=2), anchors, [[0, 0, 10, 10]], level_ids=[0, 1]).gt_index.tolist() \
        == [[-1, -1]]
    three = shifted([0, 5, 30])
    assert assign(ATSSAssigner(topk=3, num_levels=1), three, [[0, 0, 10, 10]]).gt_index.tolist() == [[0, -1, -1]]


def test_level_smaller_than_k_is_clipped():
    # Level 0: 12 anchors, level 1: 2 anchors, level 2: none; k = 9 -> 9 + 2 = 11 candidates.
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(14, 2, generator=g) * 60
    anchors = torch.cat([xy, xy + 20], dim=1)  # (14, 4)
    level_ids = torch.tensor([0] * 12 + [1] * 2)
    gts = pad_gts([T([[10, 10, 40, 40], [30, 5, 60, 35]])], [torch.tensor([3, 4])])
    a = ATSSAssigner(topk=9, num_levels=3)
    assert [lv.tolist() for lv in _levels(level_ids, 3)] == [list(range(12)), [12, 13], []]  # 9 + 2 + 0 slots
    res = a(anchors, level_ids, gts.boxes, gts.labels, gts.mask)
    for j in range(2):
        ref = atss_assign(anchors, level_ids, gts.boxes[0], gts.labels[0])
        assert len(ref.candidates[j]) == 11 and sorted(ref.candidate_levels[j].tolist()) == [0] * 9 + [1] * 2
    assert torch.equal(res.gt_index[0], ref.gt_index) and res.positive.sum() > 0


def test_tied_distances_take_the_lower_anchor_index():
    # One row of 32 x 32 anchors; the gt's centre x = 12 is 4 px from x = 8 and 16 and 12 px from x = 0 and 24.
    # k = 3: the two at 4 px, then the tie at 12 px goes to the LOWER anchor index (the reference's candidates).
    xs = [24.0, 8.0, 16.0, 0.0, 32.0]
    anchors = T([[x - 16, -16, x + 16, 16] for x in xs])
    gt = T([[[2, -10, 22, 10]]])  # centre (12, 0)
    lv = torch.zeros(5, dtype=torch.int64)
    ref = atss_assign(anchors, lv, gt[0], torch.tensor([0]), topk=3)
    assert ref.candidates[0].tolist() == [1, 2, 0]  # x = 8, 16, then x = 24 (index 0) before x = 0 (index 3)


@pytest.mark.parametrize("tied_first", ["wide", "small"])
def test_the_tied_candidate_decides_the_threshold(tied_first):
    # gt (0, 0, 20, 20), one level, k = 3. Anchors: a perfect match (IoU 1), one shifted by 4 px (IoU 2/3), then
    # two anchors 8 px from the gt centre: a 20 px one to the right (IoU 3/7) and an 8 px one below (IoU 3/26).
    # The third candidate is the tied anchor of LOWER index. Wide: t = 0.985 and the perfect match is positive;
    # small: t = 1.041 and no anchor is.
    def box(cx, cy, side):
        return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]

    wide, small = box(18, 10, 20), box(10, 18, 8)
    anchors = [box(10, 10, 20), box(14, 10, 20), *((wide, small) if tied_first == "wide" else (small, wide))]
    gt = [[0, 0, 20, 20]]
    res = assign(ATSSAssigner(topk=3, num_levels=1), anchors, gt)
    expected = [0, -1, -1, -1] if tied_first == "wide" else [-1, -1, -1, -1]
    assert res.gt_index[0].tolist() == expected
    ref = atss_assign(T(anchors), torch.zeros(4, dtype=torch.int64), T(gt), torch.tensor([0]), topk=3)
    assert ref.candidates[0].tolist() == [0, 1, 2] and ref.gt_index.tolist() == expected
    assert float(ref.threshold[0]) == pytest.approx(0.9854 if tied_first == "wide" else 1.0408, abs=1e-4)


def test_conflicts_highest_iou_among_its_gts_vs_argmax_over_all_gts():
    # Anchor 0 = (0, 0, 10, 10); three far anchors have IoU 0 with every gt (so each gt's threshold is low).
    # gt 0 (0, 0, 20, 20): IoU 0.25, centre inside -> positive;  gt 1 (-12, -10, 10, 10): IoU 100/440, positive;
    # gt 2 (5.5, 0, 15.5, 10): IoU 45/155 = 0.29, the highest, but the anchor's centre x = 5 is outside it.
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210], [300, 0, 310, 10]]
    gts = [[0, 0, 20, 20], [-12, -10, 10, 10], [5.5, 0, 15.5, 10]]
    mm = assign(ATSSAssigner(num_levels=1), anchors, gts)
    pd = assign(ATSSAssigner(num_levels=1, variant="paddle"), anchors, gts)
    assert mm.gt_index[0, 0].item() == 0 and mm.overlaps[0, 0].item() == pytest.approx(0.25)  # among its gts
    assert pd.gt_index[0, 0].item() == 2 and pd.overlaps[0, 0].item() == pytest.approx(45 / 155)  # over all gts
    # the rule is the IoU, not the order: gts 1 and 0 swapped, gt (0, 0, 20, 20) still wins
    swapped = assign(ATSSAssigner(num_levels=1), anchors, [gts[1], gts[0], gts[2]])
    assert swapped.gt_index[0, 0].item() == 1
    # equal IoUs: the lower gt index
    tie = assign(ATSSAssigner(num_levels=1), anchors, [[0, 0, 20, 20], [-10, -10, 10, 10]])
    assert tie.gt_index[0, 0].item() == 0
    for variant, res in (("mmdet", mm), ("paddle", pd)):
        ref = atss_assign(T(anchors), torch.zeros(4, dtype=torch.int64), T(gts), torch.arange(3), variant=variant)
        assert ref.gt_index.tolist() == res.gt_index[0].tolist()
        assert bool(ref.positive[0, 0]) and bool(ref.positive[0, 1]) and not bool(ref.positive[0, 2])


@pytest.mark.parametrize("variant", ["mmdet", "paddle"])
def test_crowded_scene_and_duplicate_gts(variant):
    # 40 gts on a 320 x 480 image: dozens of anchors are positive for several gts (step 6 decides them); gt 3 is
    # repeated as gt 40 and gt 41: the same IoUs, so every anchor of gt 3 stays with gt 3 (the lower index)
    scene = random_scene(320, 480, 40, seed=2)
    boxes = torch.cat([scene.boxes, scene.boxes[3:4], scene.boxes[3:4]])  # (42, 4)
    labels = torch.cat([scene.labels, torch.tensor([7, 8])])
    anchors, level_ids = atss_anchors((320, 480))
    batch = pad_gts([boxes, scene.boxes[:5]], [labels, scene.labels[:5]])
    a = ATSSAssigner(variant=variant)
    res = a(anchors, level_ids, batch.boxes, batch.labels, batch.mask)
    ref = atss_assign(anchors, level_ids, boxes, labels, variant=variant)
    assert int((ref.positive.sum(dim=1) > 1).sum()) > 20  # anchors positive for several gts
    assert torch.equal(res.gt_index[0], ref.gt_index) and torch.equal(res.overlaps[0], ref.overlaps)
    assert bool(ref.positive[:, 3].any()) and torch.equal(ref.positive[:, 3], ref.positive[:, 40])
    assert not bool((res.gt_index[0] >= 40).any())  # the duplicates win nothing
    ref1 = atss_assign(anchors, level_ids, scene.boxes[:5], scene.labels[:5], variant=variant)
    assert torch.equal(res.gt_index[1], ref1.gt_index)


def test_centre_margin():
    # An anchor centre 0.005 px inside the gt's edge: not inside for mmdetection (0.01), inside for Paddle (1e-9).
    # IoUs 200.1 / 599.9 and three zeros: the threshold is 3/4 of anchor 0's IoU, only the centre test decides.
    anchors = [[-10, -10, 10, 10], [40, 40, 60, 60], [80, 80, 100, 100], [120, 0, 140, 20]]
    gt = [[-0.005, -10, 19.995, 10]]  # the centre (0, 0) of anchor 0 is 0.005 px from the left edge
    mm = ATSSAssigner(num_levels=1, topk=4)
    res = assign(mm, anchors, gt)
    assert res.gt_index[0, 0].item() == -1
    res = assign(ATSSAssigner(num_levels=1, topk=4, center_margin=1e-9), anchors, gt)
    assert res.gt_index[0, 0].item() == 0


def test_small_zero_area_and_out_of_image_gts():
    anchors, level_ids = atss_anchors((128, 128))  # level 0: 64 x 64 anchors centred on the cell corners 8i, 8j
    # a 3 x 3 gt around the centre (8, 8) of anchor 17: each level's candidates all contain it (equal IoUs per
    # level, 9/4096 on level 0 and smaller above), so level 0 is above mean + std, and the one anchor whose
    # centre is inside is the gt's only positive
    gts = [[6.5, 6.5, 9.5, 9.5], [9, 9, 11, 11], [40, 40, 40, 60], [500, 500, 520, 520]]
    res = assign(ATSSAssigner(), anchors.tolist(), gts, level_ids=level_ids.tolist())
    per_gt = torch.bincount(res.gt_index[res.gt_index >= 0], minlength=4).tolist()
    assert anchors[17].tolist() == [-24.0, -24.0, 40.0, 40.0]
    assert per_gt[0] == 1 and res.gt_index[0, 17].item() == 0 and res.overlaps[0, 17].item() == pytest.approx(9 / 4096)
    assert per_gt[1] == 0  # a 2 x 2 gt between four anchor centres: no centre inside
    assert per_gt[2] == 0  # zero-area: IoU 0 everywhere, no centre strictly inside
    assert per_gt[3] == 0  # outside the image: its nearest anchors exist, but none has its centre inside
    ref = atss_assign(anchors, level_ids, T(gts), torch.arange(4))
    assert torch.equal(ref.gt_index, res.gt_index[0])
    assert float(ref.threshold[2]) == 0.0  # zero-area: mean 0, std 0 -> IoU 0 >= 0 passes, the centre test fails
    pd = assign(ATSSAssigner(variant="paddle"), anchors.tolist(), gts, level_ids=level_ids.tolist())
    assert torch.equal(pd.gt_index, res.gt_index)


def test_no_gts_all_padding_one_gt_no_anchors_and_anchor_mask():
    a = ATSSAssigner()
    anchors, level_ids = atss_anchors((64, 96))
    gts = pad_gts([torch.zeros(0, 4), T([[10, 10, 50, 40]])], [torch.zeros(0, dtype=torch.int64), torch.tensor([7])])
    res = a(anchors, level_ids, gts.boxes, gts.labels, gts.mask)
    assert (res.gt_index[0] == -1).all() and (res.labels[0] == 80).all() and (res.overlaps[0] == 0).all()
    assert res.positive[1].sum() > 0 and set(res.labels[1][res.positive[1]].tolist()) == {7}  # M = 1
    assert (res.weights == 1).all() and torch.equal(res.target_scores, res.positive.float())
    assert torch.equal(res.boxes[1][res.positive[1]], T([[10, 10, 50, 40]]).expand(int(res.positive[1].sum()), 4))
    none = pad_gts([torch.zeros(0, 4)] * 3)  # M = 0
    res = a(anchors, level_ids, none.boxes, none.labels, none.mask)
    assert res.gt_index.shape == (3, anchors.shape[0]) and (res.gt_index == -1).all()
    padded = pad_gts([T([[10, 10, 50, 40]])], min_rows=3)
    padded.mask[:] = False  # all rows padding
    assert (a(anchors, level_ids, padded.boxes, padded.labels, padded.mask).gt_index == -1).all()
    res = a(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), gts.boxes, gts.labels, gts.mask)  # N = 0
    assert res.gt_index.shape == (2, 0) and res.boxes.shape == (2, 0, 4)
    off = torch.zeros(2, anchors.shape[0], dtype=torch.bool)  # nothing valid: every anchor ignored, weight 0
    res = a(anchors, level_ids, gts.boxes, gts.labels, gts.mask, off)
    assert (res.gt_index == -2).all() and (res.weights == 0).all()


def test_pred_boxes_give_iou_soft_targets():
    anchors, level_ids = atss_anchors((64, 96))
    gts = pad_gts([T([[10, 10, 50, 40], [40, 20, 90, 60]])], [torch.tensor([1, 2])])
    pred = anchors[None] * 0.5 + 10  # (1, N, 4) some boxes
    a = ATSSAssigner(variant="paddle")
    res = a(anchors, level_ids, gts.boxes, gts.labels, gts.mask, pred_boxes=pred)
    pos = res.positive[0]
    from exportable.boxes import box_iou

    expected = box_iou(pred[0][pos], res.boxes[0][pos], aligned=True)
    assert torch.equal(res.target_scores[0][pos], expected) and (res.target_scores[0][~pos] == 0).all()
    assert torch.equal(res.gt_index, a(anchors, level_ids, gts.boxes, gts.labels, gts.mask).gt_index)


# -- parity: reference, mmdetection, the static path ---------------------------------------------------------


@pytest.mark.parametrize("variant", ["mmdet", "paddle"])
@pytest.mark.parametrize("seed", range(6))
def test_reference_parity_on_tie_heavy_random_scenes(variant, seed):
    # lattice anchors (exact distance ties, duplicates), small coarse levels, padding, anchor_mask, pred_boxes
    g = torch.Generator().manual_seed(seed)
    anchors, level_ids, boxes, labels, mask, anchor_mask, pred = atss_inputs({"B": 3, "N": 400, "M": 8}, g,
                                                                                 preds=True)
    a = ATSSAssigner(variant=variant)
    res = a(anchors, level_ids, boxes, labels, mask, anchor_mask, pred)
    for i in range(3):
        ref = atss_assign(anchors, level_ids, boxes[i][mask[i]], labels[i][mask[i]], variant=variant,
                          valid=anchor_mask[i], pred_boxes=pred[i])
        assert torch.equal(res.gt_index[i], ref.gt_index), i
        assert torch.equal(res.labels[i], ref.labels)
        assert torch.equal(res.overlaps[i], ref.overlaps)
        assert torch.equal(res.target_scores[i], ref.target_scores)


def test_eager_chunks_do_not_change_results(monkeypatch):
    import exportable.assigners.atss as atss_module

    g = torch.Generator().manual_seed(7)
    args = atss_inputs({"B": 5, "N": 400, "M": 9}, g, preds=True)
    for variant in ("mmdet", "paddle"):
        a = ATSSAssigner(variant=variant)
        whole = a(*args)  # 45 rows: one chunk
        monkeypatch.setattr(atss_module, "_EAGER_ROWS", 20)  # two images per chunk
        chunked = a(*args)
        monkeypatch.undo()
        assert all(torch.equal(x, y) for x, y in zip(whole, chunked))


@pytest.mark.parametrize("seed", range(3))
def test_unsorted_level_ids(seed):
    g = torch.Generator().manual_seed(100 + seed)
    anchors, level_ids, boxes, labels, mask, anchor_mask = atss_inputs({"B": 2, "N": 300, "M": 6}, g)
    perm = torch.randperm(300, generator=g)
    anchors, level_ids, anchor_mask = anchors[perm], level_ids[perm], anchor_mask[:, perm]
    a = ATSSAssigner()
    levels = _levels(level_ids, 5)  # each level's anchors, in anchor order
    assert torch.equal(torch.cat(levels).sort().values, torch.arange(300))
    assert all(bool((level_ids[lv] == j).all()) and bool((lv[1:] > lv[:-1]).all()) for j, lv in enumerate(levels))
    res = a(anchors, level_ids, boxes, labels, mask, anchor_mask)
    for i in range(2):
        ref = atss_assign(anchors, level_ids, boxes[i][mask[i]], labels[i][mask[i]], valid=anchor_mask[i])
        assert torch.equal(res.gt_index[i], ref.gt_index)


@pytest.mark.parametrize("seed", range(3))
def test_mmdetection_parity_on_coco_like_scenes(seed):
    # tie-free (float gts): mmdetection's own code, transcribed, gives the same assignment
    anchors, level_ids = atss_anchors((320, 480))
    counts = torch.bincount(level_ids).tolist()
    scenes = [random_scene(320, 480, m, seed=seed * 3 + j) for j, m in enumerate((1, 12, 40))]
    batch = pad_gts([s.boxes for s in scenes], [s.labels for s in scenes])
    res = ATSSAssigner()(anchors, level_ids, batch.boxes, batch.labels, batch.mask)
    for i, s in enumerate(scenes):
        assert torch.equal(res.to_mmdet()[i], mmdet_atss_assign(anchors, counts, s.boxes))
    assert res.positive.sum() > 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(0, 50), st.integers(0, 50)),
                min_size=1, max_size=6), st.sampled_from(["mmdet", "paddle"]))
def test_every_positive_passes_its_gts_test(gts, variant):
    anchors, level_ids = atss_anchors((96, 128))
    boxes = T([[x, y, x + w, y + h] for x, y, w, h in gts])
    res = assign(ATSSAssigner(variant=variant), anchors.tolist(), boxes.tolist(), level_ids=level_ids.tolist())
    ref = atss_assign(anchors, level_ids, boxes, torch.arange(len(gts)), variant=variant)
    assert torch.equal(res.gt_index[0], ref.gt_index)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for n in res.positive[0].nonzero()[:, 0].tolist():
        j = int(res.gt_index[0, n])
        if variant == "mmdet":  # a positive is one of its gt's candidates, above the threshold, centre inside
            assert n in ref.candidates[j].tolist()
            assert float(ref.ious[n, j]) >= statistics.mean(ref.candidate_ious[j].tolist()) \
                + statistics.stdev(ref.candidate_ious[j].tolist()) - 1e-6
            b = boxes[j]
            assert min(centres[n, 0] - b[0], centres[n, 1] - b[1], b[2] - centres[n, 0], b[3] - centres[n, 1]) > 0.01
        else:  # Paddle: positive for one gt -> that gt; for several -> the highest IoU over ALL gts
            hits = ref.positive[n].nonzero()[:, 0].tolist()
            assert hits == [j] if len(hits) == 1 else float(ref.ious[n, j]) == float(ref.ious[n].max())


def test_paddle_preset_the_variant_alias_and_the_catalog_entry():
    rules = lambda a: (a.topk, a.num_levels, a.num_classes, a.strict, a.center_margin, a.conflict)  # noqa: E731
    assert rules(ATSSAssigner()) == (9, 5, 80, False, 0.01, "positive_gts")  # the paper's / mmdetection's
    assert rules(ATSSAssigner.paddle()) == (9, 5, 80, True, 1e-9, "all_gts")
    assert rules(ATSSAssigner(variant="paddle")) == rules(ATSSAssigner.paddle())
    assert rules(ATSSAssigner(variant="mmdet")) == rules(ATSSAssigner())
    assert rules(ATSSAssigner.paddle(topk=5, center_margin=0.5)) == (5, 5, 80, True, 0.5, "all_gts")
    assert rules(catalog.get("atss_assigner_paddle").build()) == rules(ATSSAssigner.paddle())
    assert rules(catalog.get("atss_assigner").build()) == rules(ATSSAssigner())
    with pytest.raises(ValueError, match="variant"):
        ATSSAssigner(variant="paddle", strict=True)  # the alias takes no rule keyword: ATSSAssigner.paddle(...)
    with pytest.raises(ValueError, match="center_margin"):
        ATSSAssigner.paddle(center_margin=float("nan"))


# -- onnxruntime ----------------------------------------------------------------------------------------------


def _ort_vs_eager(name, exported, args):
    from exportable import catalog

    entry = catalog.get(name)
    sess = xonnx.session(exported(name))
    eager = entry.run_eager(entry.build(), args)
    got = xonnx.run(sess, args)
    for c in xonnx.compare([o.name for o in entry.outputs], eager, got, atol=entry.atol, rtol=entry.rtol):
        assert c.exact if c.dtype.startswith(("int", "bool")) else c.close, c
    return eager


@pytest.mark.onnx
def test_onnxruntime_on_hand_made_and_degenerate_inputs(exported):
    ones = lambda b, n: torch.ones(b, n, dtype=torch.bool)  # noqa: E731
    # ties on a 5 x 5 lattice: the gt's centre (20, 20) is a cell corner; the 9th place falls in a ring of 8
    xy = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).reshape(-1, 2) * 8 + 4
    lattice = torch.cat([xy - 16, xy + 16], dim=1)  # (25, 4)
    lv = torch.zeros(25, dtype=torch.int64)
    gts = pad_gts([T([[12, 12, 28, 28], [0, 0, 40, 40]]), T([[4, 4, 4, 30]])],
                  [torch.tensor([1, 2]), torch.tensor([3])])
    out = _ort_vs_eager("atss_assigner", exported, (lattice, lv, gts.boxes, gts.labels, gts.mask, ones(2, 25)))
    assert out[0][0].ge(0).sum() > 0 and (out[0][1] == -1).all()  # image 1: a zero-width gt, no positive
    # a single valid anchor (a single candidate): no positive, in the graph too
    one = torch.zeros(1, 25, dtype=torch.bool)
    one[0, 12] = True
    g1 = pad_gts([T([[4 + 8 * 2 - 16, 4 + 8 * 2 - 16, 4 + 8 * 2 + 16, 4 + 8 * 2 + 16]])], [torch.tensor([0])])
    out = _ort_vs_eager("atss_assigner", exported, (lattice, lv, g1.boxes, g1.labels, g1.mask, one))
    assert out[0].tolist()[0] == [-2] * 12 + [-1] + [-2] * 12
    # std = 0 (the four symmetric anchors): >= keeps all four in the graph too
    four = T([[c[0] - 10, c[1] - 10, c[0] + 10, c[1] + 10] for c in [(6, 6), (14, 6), (6, 14), (14, 14)]])
    g4 = pad_gts([T([[0, 0, 20, 20]])], [torch.tensor([5])])
    out = _ort_vs_eager("atss_assigner", exported, (four, torch.zeros(4, dtype=torch.int64), g4.boxes, g4.labels,
                                                    g4.mask, ones(1, 4)))
    assert out[0].tolist() == [[0, 0, 0, 0]]
    # M = 0, and unsorted level ids with levels smaller than k on the photo-sized grid
    anchors, level_ids = atss_anchors((96, 160))
    none = pad_gts([torch.zeros(0, 4)] * 2)
    out = _ort_vs_eager("atss_assigner", exported, (anchors, level_ids, none.boxes, none.labels, none.mask,
                                                    ones(2, anchors.shape[0])))
    assert (out[0] == -1).all()
    perm = torch.randperm(anchors.shape[0], generator=torch.Generator().manual_seed(0))
    scene = random_scene(96, 160, 7, seed=3)
    b = pad_gts([scene.boxes], [scene.labels])
    out = _ort_vs_eager("atss_assigner", exported, (anchors[perm], level_ids[perm], b.boxes, b.labels, b.mask,
                                                    ones(1, anchors.shape[0])))
    assert out[0].ge(0).sum() > 0
    # level 2 without any anchor (the split gives it no slot), and no anchors at all
    gap = torch.where(level_ids >= 2, (level_ids + 1).clamp(max=4), level_ids)  # levels 0, 1, 3, 4
    out = _ort_vs_eager("atss_assigner", exported, (anchors, gap, b.boxes, b.labels, b.mask,
                                                    ones(1, anchors.shape[0])))
    assert out[0].ge(0).sum() > 0
    out = _ort_vs_eager("atss_assigner_paddle", exported, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                                           gts.boxes, gts.labels, gts.mask, ones(2, 0),
                                                           torch.zeros(2, 0, 4)))
    assert out[0].shape == (2, 0)


@pytest.mark.onnx
def test_onnxruntime_on_the_workload_scene(exported):
    model, args = benchmark_case("atss-m20@2")
    sess = xonnx.session(exported("atss_assigner"))
    got = xonnx.run(sess, (*args, torch.ones(2, args[0].shape[0], dtype=torch.bool)))
    eager = model(*args)
    assert args[0].shape == (20_267, 4)
    assert torch.equal(torch.from_numpy(got[0]), eager.gt_index) and eager.positive.sum() > 100
    assert torch.allclose(torch.from_numpy(got[3]), eager.overlaps, atol=1e-6)


# -- benchmark helpers and bad input --------------------------------------------------------------------------


def test_benchmark_case_and_reference():
    model, args = benchmark_case("atss-m100@1")
    assert [tuple(a.shape) for a in args] == [(20_267, 4), (20_267,), (1, 100, 4), (1, 100), (1, 100)]
    gt_inds = benchmark_reference("atss-m100@1")()
    assert torch.equal(model(*args).to_mmdet()[0], gt_inds[0])
    with pytest.raises(ValueError, match="workload"):
        benchmark_case("yolox-m20")


def test_bad_input_is_named():
    a = ATSSAssigner()
    anchors, level_ids = atss_anchors((64, 64))
    b = pad_gts([T([[0, 0, 10, 10]])], [torch.tensor([0])])
    n = anchors.shape[0]
    with pytest.raises(ValueError, match="level_ids"):
        a(anchors, level_ids + 5, b.boxes, b.labels, b.mask)  # out of [0, num_levels)
    with pytest.raises(ValueError, match="level_ids"):
        a(anchors, level_ids[:-1], b.boxes, b.labels, b.mask)
    with pytest.raises(TypeError, match="level_ids"):
        a(anchors, level_ids.float(), b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="anchor_mask"):
        a(anchors, level_ids, b.boxes, b.labels, b.mask, torch.ones(1, n + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="pred_boxes"):
        a(anchors, level_ids, b.boxes, b.labels, b.mask, None, torch.zeros(1, n - 1, 4))
    with pytest.raises(ValueError, match="anchors"):
        a(anchors[:, [2, 1, 0, 3]], level_ids, b.boxes, b.labels, b.mask)  # inverted boxes
    with pytest.raises(ValueError, match="variant"):
        ATSSAssigner(variant="yolov6")
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)
    with pytest.raises(ValueError, match="conflict"):
        ATSSAssigner(conflict="first")
