"""The facts notebooks 00-04 state, pinned here instead of as asserts in learner-facing cells.

Each test names the notebook and the sentence it backs; the numbers are the ones the notebooks print
(and that the study notes and papers are checked against), computed by the same lessons code.
"""

from __future__ import annotations

import math

import pytest
import torch

from exportable.anchors import AnchorGenerator, featmap_sizes_for, inside_flags
from exportable.boxes import box_iou
from exportable.nms import batched_nms, nms
from exportable.rpn import AnchorTargetCreator, ProposalCreator
from lessons import anchors_and_boxes as ab
from lessons import conventions as cv
from lessons import proposals_and_nms as pn
from lessons import roi_head_sampling as rh
from lessons import rpn_anchor_targets as rt
from lessons.scenes import default_scene, make_workload_batch, toy_scene


@pytest.fixture(scope="module")
def scene():
    return default_scene()


# --------------------------------------------------------------------------------------------
# 00 · tour
# --------------------------------------------------------------------------------------------


def test_00_what_the_heads_output():
    rpn = AnchorGenerator.faster_rcnn()
    hw = featmap_sizes_for((600, 1000), rpn.strides)
    a = rpn.num_base_anchors[0]
    assert hw == [(38, 63)] and a == 9 and rpn.num_anchors(hw) == [21_546]
    assert (2 * a, 4 * a) == (18, 36)
    assert cv.roi_head_sizes(20, "py-faster-rcnn") == (21, 84) and cv.roi_head_sizes(20, "mmdetection") == (21, 80)
    retina = AnchorGenerator.retinanet()
    assert retina.num_anchors(featmap_sizes_for((1216, 800), retina.strides)) == [136_800, 34_200, 8_550, 2_223, 630]
    assert 80 * retina.num_base_anchors[0] == 720


def test_00_best_level_per_gt_follows_object_size(scene):
    retina = AnchorGenerator.retinanet()
    sizes = featmap_sizes_for(scene.hw, retina.strides)
    iou = box_iou(torch.cat(retina.grid_anchors(sizes)), scene.boxes)  # (N, 6)
    levels = retina.level_ids(sizes)
    best = torch.stack([iou[levels == lv].max(dim=0).values for lv in range(5)]).argmax(dim=0)  # (6,)
    assert best[0] == 4  # the person: the coarsest level
    assert best[3] <= 1 and best[4] <= 1  # tie knot and ribbons: fine levels


def test_00_toy_assignment_and_its_encodings():
    toy = toy_scene()
    anchors = AnchorGenerator(strides=[8], ratios=(0.5, 1.0, 2.0), scales=(4,), base_sizes=(8,)).grid_anchors(
        [(6, 8)])[0]
    gt_index = cv.max_iou_rule(box_iou(anchors, toy.boxes))
    assert [int((gt_index == v).sum()) for v in (0, 1, -1, -2)] == [6, 8, 115, 15]
    assert torch.equal(cv.to_mmdet_gt_inds(gt_index), gt_index + 1)  # k + 1, negative 0, ignored -1
    assert torch.equal(cv.to_torchvision_matches(gt_index), gt_index)
    d2l = cv.to_d2l_anchor_map(gt_index, ignored_as_negative=True)
    assert torch.equal(d2l, torch.where(gt_index == -2, -1, gt_index))  # the one conversion that loses information


# --------------------------------------------------------------------------------------------
# 01 · anchors and boxes
# --------------------------------------------------------------------------------------------


def test_01_anchor_rules():
    scales = ab.octave_scales(4, 3)
    assert [round(s, 4) for s in scales] == [4.0, 5.0397, 6.3496]
    for stride in (8, 16, 32, 64):  # one ladder across levels
        assert math.isclose(stride * scales[2] * 2 ** (1 / 3), 2 * stride * scales[0])
    base0 = ab.base_anchors(8, [0.5, 1.0, 2.0], scales)
    for a, (x1, y1, x2, y2) in enumerate(base0):
        assert math.isclose((x2 - x1) * (y2 - y1), (8 * scales[a % 3]) ** 2)  # rule 3: the area is kept
        assert math.isclose((y2 - y1) / (x2 - x1), [0.5, 1.0, 2.0][a // 3])  # h / w
    assert base0[3] == (-16.0, -16.0, 16.0, 16.0)


def test_01_py_faster_rcnn_anchors_and_the_printed_table():
    printed = [(-83, -39, 100, 56), (-175, -87, 192, 104), (-359, -183, 376, 200), (-55, -55, 72, 72),
               (-119, -119, 136, 136), (-247, -247, 264, 264), (-35, -79, 52, 96), (-79, -167, 96, 184),
               (-167, -343, 184, 360)]
    legacy = ab.py_faster_rcnn_base_anchors()
    assert ab.py_faster_rcnn_base_anchors(first_pixel=1) == printed  # the MATLAB table ...
    assert legacy == [(x1 - 1, y1 - 1, x2 - 1, y2 - 1) for x1, y1, x2, y2 in printed]  # ... 1 px off the Python
    assert [(x2 - x1 + 1, y2 - y1 + 1) for x1, y1, x2, y2 in legacy[::3]] == [(184, 96), (128, 128), (88, 176)]


def test_01_counts_iou_and_the_face(scene):
    assert ab.retinanet_anchor_counts((1216, 800)) == [136_800, 34_200, 8_550, 2_223, 630]
    assert sum(ab.retinanet_anchor_counts(scene.hw)) == 57_780
    cat, dog = toy_scene().boxes.tolist()
    assert math.isclose(ab.iou(cat, dog), 1 / 7) and math.isclose(ab.giou(cat, dog), 1 / 56)
    assert ab.iof(cat, dog) == 0.25
    gts = scene.boxes.tolist()
    iof = ab.overlap_matrix(gts, gts, "iof")
    assert iof[3, 0] == 1.0 and iof[0, 3] < 0.02  # the tie inside the person
    grid2 = ab.grid_anchors(ab.base_anchors(32, [0.5, 1.0, 2.0], ab.octave_scales()), (19, 16), 32)
    face_iou = ab.overlap_matrix(grid2, [gts[2]])[:, 0]
    best = int(face_iou.argmax())
    assert divmod(best, 9) == (7 * 16 + 8, 5) and round(float(face_iou[best]), 3) == 0.803
    assert int((face_iou >= 0.5).sum()) == 38


def test_01_worked_encoding_and_decoding(scene):
    anchor, face = (128.0, 128.0, 384.0, 384.0), scene.boxes[2].tolist()
    deltas = ab.encode(anchor, face)
    assert all(math.isclose(d, h) for d, h in zip(deltas, (11 / 256, -20 / 256, math.log(210 / 256),
                                                             math.log(200 / 256))))
    assert all(math.isclose(u, v) for u, v in zip(ab.decode(anchor, deltas), face))
    free = ab.decode(anchor, (0.0, 0.0, 10.0, 0.0))
    assert math.isclose(free[2] - free[0], 256 * 62.5)  # dw clamped to log(1000 / 16)
    assert ab.decode(anchor, (0.0, 0.0, 10.0, 0.0), max_shape=scene.hw) == (0.0, 128.0, 512.0, 384.0)


def test_01_valid_and_inside_flags():
    gen = AnchorGenerator.retinanet()
    sizes = featmap_sizes_for((1216, 800), gen.strides)
    anchors = torch.cat(gen.grid_anchors(sizes))
    valid = gen.valid_flags(sizes, (800, 800))
    assert int(valid.sum()) == 120_087
    assert int(inside_flags(anchors, valid, (800, 800), allowed_border=0).sum()) == 102_557
    assert int(inside_flags(anchors, valid, (800, 800), allowed_border=-1).sum()) == 120_087


# --------------------------------------------------------------------------------------------
# 02 · RPN anchor targets
# --------------------------------------------------------------------------------------------


def test_02_inside_counts_not_15000_nor_6000():
    counts = rt.count_inside((600, 1000))
    assert counts["anchors"] == 21_546 and counts["inside"] == 8_044
    assert [v for k, v in counts.items() if k.startswith("inside_")] == [1_632, 1_040, 255, 1_650, 1_034, 186,
                                                                         1_482, 765, 0]
    assert rt.count_inside((600, 800))["inside"] == 5_954  # the paper's "about 6,000"
    doc_anchors, fmap = rt.faster_rcnn_anchors((600, 1000))
    legacy = torch.tensor(ab.grid_anchors(ab.py_faster_rcnn_base_anchors(), fmap, 16))
    legacy_in = (legacy[:, 0] >= 0) & (legacy[:, 1] >= 0) & (legacy[:, 2] < 1000) & (legacy[:, 3] < 600)
    assert int(legacy_in.sum()) == 8_151


def test_02_photo_labels_ties_and_sample(scene):
    anchors, _ = rt.faster_rcnn_anchors(scene.hw)
    inside = rt.get_inside_index(anchors, *scene.hw)
    ious = rt.bbox_iou(anchors[inside], scene.boxes)
    label = rt.create_labels(ious)
    assert len(anchors) == 10_944 and len(inside) == 3_053
    best = ious.max(dim=0).values
    assert [int((ious[:, j] == best[j]).sum()) for j in range(6)] == [4, 4, 12, 23, 9, 20]
    assert abs(float(best[3]) - 84 * 41 / 128**2) < 1e-6  # the knot: area(knot) / area(scale-8 anchor)
    assert ((label == 1).sum(), (label == 0).sum(), (label == -1).sum()) == (74, 2_335, 644)
    noise = torch.rand(len(anchors), generator=torch.Generator().manual_seed(0))
    targets = rt.AnchorTargetCreator()(scene.boxes, anchors, scene.hw, noise)
    assert (targets.n_pos, targets.n_neg) == (74, 182)
    assert torch.bincount(targets.matched_gt[targets.label == 1], minlength=6).tolist() == [6, 4, 12, 23, 9, 20]
    assert int((targets.loc != 0).any(dim=1).sum()) == 3_053  # targets for every inside anchor


def test_02_the_note_s_128_plus_128_on_crowded_images():
    anchors, _ = rt.faster_rcnn_anchors((600, 1000))
    batch = make_workload_batch("rpn-m20")
    noise = torch.rand(8, len(anchors), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sampled = AnchorTargetCreator()(anchors, batch.gt_boxes, batch.gt_mask, batch.image_sizes, noise)
        every = AnchorTargetCreator(num=10**6)(anchors, batch.gt_boxes, batch.gt_mask, batch.image_sizes, noise)
    assert ((every.labels == 1).sum(1) > 128).all()
    assert ((sampled.labels == 1).sum(1) == 128).all() and ((sampled.labels == 0).sum(1) == 128).all()


def test_02_mmdetection_variant_on_the_photo(scene):
    anchors, _ = rt.faster_rcnn_anchors(scene.hw)
    noise = torch.rand(len(anchors), generator=torch.Generator().manual_seed(0))
    b = scene.as_batch()
    with torch.no_grad():
        mm = AnchorTargetCreator("mmdet")(anchors, b.gt_boxes, b.gt_mask, b.image_sizes, noise[None])
    pos = mm.labels[0] == 1
    assert torch.bincount(mm.matched_gt[0][pos], minlength=6).tolist() == [66, 14, 12, 0, 0, 0]
    inside = torch.zeros(len(anchors), dtype=torch.bool)
    inside[rt.get_inside_index(anchors, *scene.hw)] = True
    assert int((pos & ~inside).sum()) == 70  # crossing the border


# --------------------------------------------------------------------------------------------
# 03 · proposals and NMS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_rpn(scene):
    anchors, _ = rt.faster_rcnn_anchors(scene.hw)
    score, loc = pn.oracle_rpn_outputs(anchors, scene.boxes, seed=0)
    return anchors, score, loc


def test_03_nms_rounds_around_the_face(scene, photo_rpn):
    anchors, score, loc = photo_rpn
    decoded = pn.clip_bbox(pn.loc2bbox(anchors, loc), scene.hw)
    near = torch.nonzero(box_iou(decoded, scene.boxes[2:3])[:, 0] >= 0.5).squeeze(1)
    cand = near[torch.sort(-score[near], stable=True).indices[:10]]
    steps = pn.nms_trace(decoded[cand], score[cand], 0.7)
    assert len(near) == 593 and [s.kept for s in steps] == [0, 2, 5, 7, 9]
    assert [s.kept for s in steps] == nms(decoded[cand], score[cand], 0.7).tolist()


def test_03_nms_rules_and_the_crowd():
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])  # IoU 0.5 exactly
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]
    crowd = pn.crowd_scene()
    agnostic = pn.greedy_nms(crowd.boxes, crowd.scores, 0.5)
    aware = pn.class_aware_nms(crowd.boxes, crowd.scores, crowd.labels, 0.5)
    soft, _ = pn.class_aware_soft_nms(crowd.boxes, crowd.scores, crowd.labels, method="gaussian")
    assert sorted(set(crowd.source[agnostic].tolist())) == [0, 2]
    assert sorted(set(crowd.source[aware].tolist())) == [0, 2, 3]
    assert sorted(crowd.source[soft[:4]].tolist()) == [0, 1, 2, 3]
    assert torch.equal(batched_nms(crowd.boxes, crowd.scores, crowd.labels, 0.5), aware)


def test_03_nms_spreads_the_300_proposals_over_the_gts(scene, photo_rpn):
    anchors, score, loc = photo_rpn
    result = pn.ProposalCreator()(loc, score, anchors, scene.hw, training=False)
    assert result.funnel == {"anchors": 10_944, "min_size": 10_944, "pre_nms": 6_000, "nms": 350, "post_nms": 300}
    decoded = pn.clip_bbox(pn.loc2bbox(anchors, loc), scene.hw)
    top = pn.pre_nms_candidates(decoded, score, 16.0, 300)
    no_nms = box_iou(decoded[top], scene.boxes).max(dim=0).values
    with_nms = box_iou(result.roi, scene.boxes).max(dim=0).values
    assert (no_nms >= 0.5).tolist() == [True, False, True, False, False, False]
    assert bool((with_nms >= 0.5).all())


def test_03_the_funnel():
    anchors, _ = rt.faster_rcnn_anchors((600, 1000))
    g = torch.Generator().manual_seed(0)
    score = torch.rand(4, len(anchors), generator=g)[0]
    loc = (0.2 * torch.randn(4, len(anchors), 4, generator=g))[0]
    train = pn.funnel_counts(loc, score, anchors, (600, 1000), training=True)
    assert train == {"anchors": 21_546, "inside": 8_044, "min_size": 21_462, "pre_nms": 12_000, "nms": 3_702,
                     "post_nms": 2_000}
    test = pn.funnel_counts(loc, score, anchors, (600, 1000), training=False)
    assert (test["nms"], test["post_nms"]) == (2_433, 300)
    gts = make_workload_batch("rpn-m20", batch=4).gt_boxes[0]
    c_score, c_loc = pn.oracle_rpn_outputs(anchors, gts, seed=0)
    confident = pn.funnel_counts(c_loc, c_score, anchors, (600, 1000), training=True)
    assert confident["pre_nms"] == 12_000 and confident["nms"] < 2_000


def test_03_mmdetection_per_level_proposals(scene):
    fpn = AnchorGenerator.rpn_fpn()
    sizes = featmap_sizes_for(scene.hw, fpn.strides)
    anchors, levels = torch.cat(fpn.grid_anchors(sizes)), fpn.level_ids(sizes)
    score, loc = pn.oracle_rpn_outputs(anchors, scene.boxes, seed=0)
    mm = pn.mmdet_proposals(anchors, levels, score, loc, scene.hw, nms_pre=1000, max_per_img=1000)
    assert len(anchors) == 76_800 and mm.funnel["pre_nms"] == 4_152 and len(mm.roi) == 746
    cross = (box_iou(mm.roi, mm.roi) > 0.7) & (levels[mm.anchor_index][:, None] != levels[mm.anchor_index][None])
    assert int(cross.sum()) // 2 == 73 and len(pn.greedy_nms(mm.roi, mm.score, 0.7)) == 687
    with torch.no_grad():
        out = ProposalCreator("mmdet", "test", return_index=True)(anchors, levels, score[None], loc[None],
                                                                  scene.as_batch().image_sizes)
    assert torch.equal(out.anchor_index[0, : int(out.counts[0])], mm.anchor_index)


# --------------------------------------------------------------------------------------------
# 04 · RoI-head sampling
# --------------------------------------------------------------------------------------------


def test_04_the_photo_sample(scene):
    roi, _ = rh.photo_proposals(0)
    noise = torch.rand(len(roi) + 6, generator=torch.Generator().manual_seed(0))
    t = rh.ProposalTargetCreator()(roi, scene.boxes, scene.labels, noise)
    assert len(t.max_iou) == 2_006 and int((t.max_iou >= 0.5).sum()) == 100
    assert int(((t.max_iou >= 0.0) & (t.max_iou < 0.5)).sum()) == 1_906
    assert (t.n_pos, t.n_neg) == (32, 96)
    assert torch.bincount(t.gt_assignment[:32], minlength=6).tolist() == [6, 7, 12, 2, 5, 0]
    assert bool((t.max_iou[2000:] == 1).all())  # each gt is a perfect positive of itself
    assert bool((t.gt_roi_label[:32] >= 1).all()) and bool((t.gt_roi_label[32:] == 0).all())
    lo = rh.ProposalTargetCreator(neg_iou_thresh_lo=0.1)(roi, scene.boxes, scene.labels, noise)
    assert int(((t.max_iou >= 0.1) & (t.max_iou < 0.5)).sum()) == 996
    assert float(t.max_iou[lo.keep_index[32:]].min()) >= 0.1
    assert rh.sample_counts(7, 50) == (7, 50) and rh.sample_counts(60, 50) == (32, 50)


def test_04_normalised_targets_have_unit_spread(scene):
    roi, _ = rh.photo_proposals(0)
    cand = torch.cat([roi, scene.boxes])
    iou, arg = rt.bbox_iou(cand, scene.boxes).max(dim=1)
    raw = rt.bbox2loc(cand[iou >= 0.5], scene.boxes[arg[iou >= 0.5]])
    assert torch.allclose(raw.std(dim=0), torch.tensor([0.133, 0.123, 0.244, 0.250]), atol=1e-3)


def test_04_why_84_and_roi_pooling(scene):
    assert rh.loc_columns(20, "py_faster_rcnn") == 84 and rh.loc_columns(20, "mmdet") == 80
    fmap = rh.photo_feature_map()
    assert fmap.shape == (1, 3, 38, 32)
    tie = scene.boxes[3:4]
    moved = tie + torch.tensor([7.0, 0.0, 7.0, 0.0])
    pool = rh.roi_pool_reference(fmap[0], torch.cat([tie, moved]), 7, 1 / 16)
    from exportable.roi_align import roi_align

    align = roi_align(fmap, torch.stack([tie, moved], dim=1), 7, 1 / 16, 2)
    assert torch.equal(pool[0], pool[1])  # RoIPool does not see a 7 px shift
    assert float((align[0, 1] - align[0, 0]).abs().max()) > 0.05  # RoIAlign does
