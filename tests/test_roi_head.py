"""ProposalTargetCreator (RoI-head sampling): the document's counts and caps, hand-computed targets,
reference <-> exportable <-> onnxruntime, the class-specific layouts ("why 84"), degenerate and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from exportable import onnx as xonnx
from exportable.boxes import box_iou
from exportable.examples import roi_target_inputs
from exportable.roi_head import ProposalTargetCreator, class_specific, counts_to_mask
from exportable.rpn import ProposalCreator
from lessons import roi_head_sampling as ref
from lessons.scenes import default_scene

EXACT = ["labels", "label_weights", "sample_index", "matched_gt", "num_pos", "num_neg", "bbox_weights"]


def reference(variant, rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise, **kw):
    """The per-image reference on the real RoIs and gts of each image; noise re-indexed to the real candidates."""
    out = []
    for i in range(rois.shape[0]):
        r, g, lab = rois[i][roi_mask[i]], gt_boxes[i][gt_mask[i]], gt_labels[i][gt_mask[i]]
        if variant == "faster_rcnn":
            z = torch.cat([noise[i, : rois.shape[1]][roi_mask[i]], noise[i, rois.shape[1]:][gt_mask[i]]])
            out.append(ref.ProposalTargetCreator(**kw)(r, g, lab, z))
        else:
            m = gt_boxes.shape[1]
            z = torch.cat([noise[i, :m][gt_mask[i]], noise[i, m:][roi_mask[i]]])
            out.append(ref.mmdet_roi_targets(r, g, lab, z, **kw))
    return out


def candidate_index(variant, roi_mask, gt_mask, i):
    """Padded-candidate index of each real candidate of image i, in the variant's candidate order."""
    k, m = roi_mask.shape[1], gt_mask.shape[1]
    rois = torch.nonzero(roi_mask[i]).squeeze(1)
    gts = torch.nonzero(gt_mask[i]).squeeze(1)
    if variant == "faster_rcnn":
        return torch.cat([rois, k + gts])
    return torch.cat([gts, m + rois])


def assert_matches(out, refs, variant, roi_mask, gt_mask, num_classes):
    for i, r in enumerate(refs):
        s = len(r.keep_index)
        assert int(out.num_pos[i]) == r.n_pos and int(out.num_neg[i]) == r.n_neg, i
        padded = candidate_index(variant, roi_mask, gt_mask, i)
        assert torch.equal(out.sample_index[i, :s], padded[r.keep_index]), i
        assert bool((out.sample_index[i, s:] == -1).all()), i
        assert torch.equal(out.labels[i, :s], ref.to_package_labels(r.gt_roi_label, num_classes)), i
        assert bool((out.labels[i, s:] == -1).all()), i
        gt_real = torch.nonzero(gt_mask[i]).squeeze(1)
        want_gt = torch.full((s,), -1, dtype=torch.int64)
        want_gt[: r.n_pos] = gt_real[r.gt_assignment[: r.n_pos]] if r.n_pos else want_gt[:0]
        assert torch.equal(out.matched_gt[i, :s], want_gt), i
        assert torch.equal(out.rois[i, :s], r.sample_roi), i
        torch.testing.assert_close(out.bbox_targets[i, :s], r.gt_roi_loc, atol=2e-5, rtol=1e-5)
        assert bool((out.rois[i, s:] == 0).all() and (out.bbox_targets[i, s:] == 0).all()), i
        assert torch.equal(out.label_weights[i], (torch.arange(out.labels.shape[1]) < s).float()), i


def photo_inputs(seed=0):
    scene = default_scene()
    roi, _ = ref.photo_proposals(0)
    noise = torch.rand(1, len(roi) + scene.num_gts, generator=torch.Generator().manual_seed(seed))
    return (roi[None], torch.ones(1, len(roi), dtype=torch.bool), scene.boxes[None], scene.labels[None],
            torch.ones(1, scene.num_gts, dtype=torch.bool), noise)


# --------------------------------------------------------------------------------------------
# The document's numbers: ~2,000 RoIs -> 128 samples, at most 32 positives


def test_photo_2000_proposals_to_128_with_32_positives():
    args = photo_inputs()
    assert args[0].shape[1] == 2000  # ProposalCreator's training preset kept 2,000 (NMS 0.7)
    out = ProposalTargetCreator(num_classes=6)(*args)
    assert out.rois.shape == (1, 128, 4) and out.labels.shape == (1, 128)
    # plentiful: far more than 32 candidates reach IoU 0.5, so exactly 32 + 96
    cands = torch.cat([args[0][0], args[2][0]])
    n_candidates = int((box_iou(cands, args[2][0]).max(dim=1).values >= 0.5).sum())
    assert n_candidates > 32
    assert out.num_pos.tolist() == [32] and out.num_neg.tolist() == [96]
    assert bool((out.labels[0, :32] < 6).all()) and bool((out.labels[0, 32:] == 6).all())
    assert_matches(out, reference("faster_rcnn", *args), "faster_rcnn", args[1], args[4], 6)


def test_positives_scarce_all_kept_negatives_fill():
    # RoIs that miss every gt: the only positives are the appended gts themselves (IoU 1 with themselves)
    scene = default_scene()
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(1, 300, 2, generator=g) * 40  # (1, 300, 2) small boxes in the top-left corner
    rois = torch.cat([xy, xy + 8], dim=-1)  # (1, 300, 4)
    noise = torch.rand(1, 306, generator=g)
    args = (rois, None, scene.boxes[None], scene.labels[None], torch.ones(1, 6, dtype=torch.bool), noise)
    out = ProposalTargetCreator(num_classes=6)(*args)
    assert out.num_pos.tolist() == [6] and out.num_neg.tolist() == [122]  # 6 < 32 kept, negatives fill to 128
    assert sorted(out.sample_index[0, :6].tolist()) == list(range(300, 306))  # the gts, appended after the RoIs
    assert torch.equal(out.bbox_targets[0, :6], torch.zeros(6, 4))  # a gt regresses onto itself
    refs = reference("faster_rcnn", rois, torch.ones(1, 300, dtype=torch.bool), *args[2:])
    assert_matches(out, refs, "faster_rcnn", torch.ones(1, 300, dtype=torch.bool), args[4], 6)


def test_quota_rounding_and_sample_counts():
    assert ref.sample_counts(100, 5000) == (32, 96)
    assert ref.sample_counts(7, 5000) == (7, 121)
    assert ref.sample_counts(7, 50) == (7, 50)  # no back-filling: 57 < 128
    assert ProposalTargetCreator().pos_max == 32 and ProposalTargetCreator("mmdet").pos_max == 128
    # 0.3 * 10 = 3 either way; 0.25 * 10 = 2.5: round (simple-faster-rcnn) -> 2 (half to even), int -> 2;
    # 0.35 * 10 = 3.5: round -> 4, int (mmdetection) -> 3
    assert ProposalTargetCreator(num=10, pos_fraction=0.25).pos_max == 2
    assert ProposalTargetCreator(num=10, pos_fraction=0.35).pos_max == 4
    assert ProposalTargetCreator(num=10, pos_fraction=0.35, rounding="int").pos_max == 3


# --------------------------------------------------------------------------------------------
# A hand-computed image


def hand_case():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 140.0, 120.0]]])  # (1, 2, 4)
    rois = torch.tensor([[
        [0.0, 0.0, 10.0, 20.0],  # IoU 100 / 200 = 0.5 with gt 0: positive (>=)
        [0.0, 0.0, 10.0, 4.0],  # IoU 0.4 with gt 0: negative
        [50.0, 50.0, 60.0, 60.0],  # IoU 0: negative with lo = 0, nothing with lo = 0.1
        [100.0, 100.0, 140.0, 130.0],  # IoU 800 / 1200 = 2/3 with gt 1: positive
        [100.0, 100.0, 120.0, 120.0],  # IoU 0.5 with gt 1: positive
        [0.0, 0.0, 10.0, 19.0],  # IoU 100 / 190 = 0.526 with gt 0: positive
    ]])
    labels = torch.tensor([[3, 7]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    return rois, gt, labels, mask


def test_hand_computed_labels_and_normalised_targets():
    rois, gt, labels, mask = hand_case()
    noise = torch.tensor([[0.9, 0.5, 0.4, 0.8, 0.7, 0.6, 0.3, 0.2]])  # RoIs 0..5, then gts 0, 1
    out = ProposalTargetCreator(num_classes=10, num=6, pos_fraction=0.5)(rois, None, gt, labels, mask, noise)
    # candidates >= 0.5: RoIs 0, 3, 4, 5 and both gts (6); 3 kept by noise: 0 (0.9), 3 (0.8), 4 (0.7)
    assert out.sample_index[0].tolist() == [0, 3, 4, 1, 2, -1]  # negatives 1 (0.5) and 2 (0.4): only two exist
    assert out.labels[0].tolist() == [3, 7, 7, 10, 10, -1]
    assert out.matched_gt[0].tolist() == [0, 1, 1, -1, -1, -1]
    assert out.num_pos.tolist() == [3] and out.num_neg.tolist() == [2]
    # RoI 0 -> gt 0: centres (5, 10) -> (5, 5), sizes 10 x 20 -> 10 x 10: d = (0, -0.25, 0, log 0.5), / stds
    want0 = torch.tensor([0.0, -0.25 / 0.1, 0.0, math.log(0.5) / 0.2])
    # RoI 3 -> gt 1: centres (120, 115) -> (120, 110), 40 x 30 -> 40 x 20: d = (0, -5/30, 0, log(2/3))
    want3 = torch.tensor([0.0, (-5 / 30) / 0.1, 0.0, math.log(2 / 3) / 0.2])
    torch.testing.assert_close(out.bbox_targets[0, 0], want0)
    torch.testing.assert_close(out.bbox_targets[0, 1], want3)
    assert torch.equal(out.bbox_targets[0, 3:], torch.zeros(3, 4))
    assert out.bbox_weights[0].sum(dim=1).tolist() == [4, 4, 4, 0, 0, 0]
    # py-faster-rcnn's BG_THRESH_LO = 0.1: the IoU-0 RoI 2 is no longer a negative
    out = ProposalTargetCreator(num_classes=10, num=6, pos_fraction=0.5, neg_iou_lo=0.1)(rois, None, gt, labels,
                                                                                         mask, noise)
    assert out.sample_index[0].tolist() == [0, 3, 4, 1, -1, -1]
    # the reference agrees, in simple-faster-rcnn's label encoding (class + 1, 0 = background)
    r = ref.ProposalTargetCreator(n_sample=6, pos_ratio=0.5)(rois[0], gt[0], labels[0], noise[0])
    assert r.keep_index.tolist() == [0, 3, 4, 1, 2] and r.gt_roi_label.tolist() == [4, 8, 8, 0, 0]
    torch.testing.assert_close(r.gt_roi_loc[0], want0)


def test_mmdet_variant_prepends_gts_and_sorts():
    rois, gt, labels, mask = hand_case()
    noise = torch.tensor([[0.2, 0.3, 0.9, 0.5, 0.4, 0.8, 0.7, 0.6]])  # gts 0, 1, then RoIs 0..5
    out = ProposalTargetCreator("mmdet", num_classes=10, num=6, pos_fraction=0.5)(rois, None, gt, labels, mask, noise)
    # candidates [gt0, gt1, RoI0 .. RoI5]: positives 0, 1 (the gts), 2, 5, 6, 7 (RoIs 0, 3, 4, 5); int(6 * 0.5) = 3
    # of them by noise: 2 (0.9), 5 (0.8), 6 (0.7); then sorted ascending (mmdetection's unique)
    assert out.sample_index[0, :3].tolist() == [2, 5, 6]
    assert out.sample_index[0, 3:].tolist() == [3, 4, -1]  # negatives RoI 1 (idx 3) and RoI 2 (idx 4), ascending
    r = ref.mmdet_roi_targets(rois[0], gt[0], labels[0], noise[0], num=6, pos_fraction=0.5)
    assert r.keep_index.tolist() == [2, 5, 6, 3, 4]


# --------------------------------------------------------------------------------------------
# reference <-> exportable on seeded random scenes (same noise: exact indices and labels)

PARAMS = [
    ("faster_rcnn", {}, {}),
    ("faster_rcnn", {"neg_iou_lo": 0.1}, {"neg_iou_thresh_lo": 0.1}),
    ("faster_rcnn", {"num": 16, "pos_fraction": 0.5, "pos_iou_thr": 0.6},
     {"n_sample": 16, "pos_ratio": 0.5, "pos_iou_thresh": 0.6}),
    ("mmdet", {}, {}),
    ("mmdet", {"num": 40}, {"num": 40}),
]


@pytest.mark.parametrize("variant,kw,ref_kw", PARAMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(variant, kw, ref_kw, seed):
    args = roi_target_inputs({"B": 3, "K": 300, "M": 7}, torch.Generator().manual_seed(seed))
    rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise = args
    out = ProposalTargetCreator(variant, num_classes=20, **kw)(*args)
    refs = reference(variant, *args, **ref_kw)
    assert_matches(out, refs, variant, roi_mask, gt_mask, 20)


def test_tied_noise_lower_candidate_index_first():
    args = list(roi_target_inputs({"B": 2, "K": 200, "M": 5}, torch.Generator().manual_seed(7)))
    args[5] = torch.floor(args[5] * 4) / 4  # 4 noise values only: ties everywhere
    for variant in ("faster_rcnn", "mmdet"):
        out = ProposalTargetCreator(variant)(*args)
        assert_matches(out, reference(variant, *args), variant, args[1], args[4], 20)


def test_same_noise_same_sample_and_noise_decides():
    args = roi_target_inputs({"B": 2, "K": 400, "M": 6}, torch.Generator().manual_seed(1))
    creator = ProposalTargetCreator()
    a, b = creator(*args), creator(*args)
    assert torch.equal(a.sample_index, b.sample_index)
    other = creator(*args[:5], torch.rand(args[5].shape, generator=torch.Generator().manual_seed(9)))
    assert not torch.equal(a.sample_index, other.sample_index)
    # within each class the sample is in decreasing noise
    for i in range(2):
        idx = a.sample_index[i]
        p, n = int(a.num_pos[i]), int(a.num_neg[i])
        for part in (idx[:p], idx[p : p + n]):
            z = args[5][i][part]
            assert bool((z[:-1] >= z[1:]).all())


# --------------------------------------------------------------------------------------------
# "Why 84": class-specific layouts


def test_why_84_layouts():
    assert ref.loc_columns(20, "py_faster_rcnn") == 84 == 21 * 4  # the document's FC 84: background included
    assert ref.loc_columns(20, "torchvision") == 84
    assert ref.loc_columns(20, "mmdet") == ref.loc_columns(20, "package") == 80
    assert ref.class_block(0, "py_faster_rcnn") == 4 and ref.class_block(0, "package") == 0
    args = photo_inputs()
    out = ProposalTargetCreator(num_classes=6)(*args)
    spread = ProposalTargetCreator(num_classes=6, class_specific=True)(*args)
    assert spread.bbox_targets.shape == (1, 128, 24)
    t, w = ref.expand_loc(out.bbox_targets[0], out.labels[0], 6, layout="package")
    assert torch.equal(spread.bbox_targets[0], t) and torch.equal(spread.bbox_weights[0], w)
    assert torch.equal(class_specific(out.bbox_targets, out.labels, 6)[0], spread.bbox_targets)
    # the document's rule: a positive of (1-based) label K uses columns 4K .. 4K + 3 of the 84-wide layout
    t84, w84 = ref.expand_loc(out.bbox_targets[0], out.labels[0], 6, layout="py_faster_rcnn")
    k = int(out.labels[0, 0]) + 1  # simple-faster-rcnn's label of slot 0 (a positive)
    assert torch.equal(t84[0, 4 * k : 4 * k + 4], out.bbox_targets[0, 0])
    assert w84[0].sum() == 4 and w84[32:].sum() == 0  # negatives: no box loss
    # the loss picks the true class's 4 numbers: the same rows from either layout
    pred = torch.randn(128, 6, 4, generator=torch.Generator().manual_seed(0))  # (S, C, 4) per-class deltas
    pred84 = torch.cat([torch.randn(128, 1, 4), pred], dim=1).reshape(128, 28)  # background block first
    pick = ref.pick_class_loc(pred.reshape(128, 24), out.labels[0], 6, layout="package")
    assert torch.equal(pick, ref.pick_class_loc(pred84, out.labels[0], 6, layout="py_faster_rcnn"))
    assert torch.equal(pick[:32], pred[torch.arange(32), out.labels[0, :32]])
    with pytest.raises(ValueError, match="layout"):
        ref.loc_columns(20, "caffe")


# --------------------------------------------------------------------------------------------
# Degenerate inputs


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
def test_no_gts_all_negatives(variant):
    rois = roi_target_inputs({"B": 2, "K": 300, "M": 1}, torch.Generator().manual_seed(2))[0]
    gt = torch.zeros(2, 0, 4)
    out = ProposalTargetCreator(variant, num=128)(rois, None, gt, torch.zeros(2, 0, dtype=torch.int64),
                                                  torch.zeros(2, 0, dtype=torch.bool), torch.rand(2, 300))
    assert out.num_pos.tolist() == [0, 0] and out.num_neg.tolist() == [128, 128]
    assert bool((out.labels == 20).all()) and bool((out.matched_gt == -1).all())
    assert bool((out.bbox_targets == 0).all())
    # lo = 0.1: with no gt every RoI has IoU 0, so nothing at all is sampled
    out = ProposalTargetCreator(variant, num=128, neg_iou_lo=0.1)(rois, None, gt, torch.zeros(2, 0, dtype=torch.int64),
                                                                  torch.zeros(2, 0, dtype=torch.bool),
                                                                  torch.rand(2, 300))
    assert out.num_neg.tolist() == [0, 0] and bool((out.sample_index == -1).all())


def test_fewer_candidates_than_the_caps_and_one_proposal():
    rois, gt, labels, mask = hand_case()
    noise = torch.rand(1, 8, generator=torch.Generator().manual_seed(0))
    out = ProposalTargetCreator(num_classes=10)(rois, None, gt, labels, mask, noise)
    assert out.num_pos.tolist() == [6] and out.num_neg.tolist() == [2]  # all 8 candidates, 120 padding slots
    assert int((out.sample_index >= 0).sum()) == 8 and out.labels.shape == (1, 128)
    one = ProposalTargetCreator(num_classes=10)(rois[:, 3:4], None, gt, labels, mask, noise[:, :3])
    assert one.num_pos.tolist() == [3] and one.num_neg.tolist() == [0]  # RoI 3 and both gts
    assert sorted(one.sample_index[0, :3].tolist()) == [0, 1, 2]


def test_padding_zero_size_and_empty_images():
    rois, gt, labels, mask = hand_case()
    rois = torch.cat([rois, rois], dim=0)  # (2, 6, 4)
    rois[1, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero-size: IoU 0, never a positive
    roi_mask = torch.ones(2, 6, dtype=torch.bool)
    roi_mask[0] = False  # image 0: every RoI is padding
    rois[0, 2] = torch.tensor([9.0, 9.0, 1.0, 1.0])  # an inverted PADDED RoI is allowed
    gt = torch.cat([gt, torch.tensor([[[3.0, 3.0, 3.0, 8.0], [0.0, 0.0, 0.0, 0.0]]])], dim=0)  # image 1: zero-size gt
    labels = torch.cat([labels, torch.tensor([[1, 0]])])
    mask = torch.tensor([[True, True], [True, False]])
    noise = torch.rand(2, 8, generator=torch.Generator().manual_seed(4))
    out = ProposalTargetCreator(num_classes=10, num=16)(rois, roi_mask, gt, labels, mask, noise)
    assert out.num_pos.tolist()[0] == 2 and out.num_neg.tolist()[0] == 0  # only the 2 gts are candidates
    # image 1: a zero-size gt has IoU 0 even with itself -> its candidates are all negatives
    assert out.num_pos.tolist()[1] == 0 and out.num_neg.tolist()[1] == 7
    assert bool(torch.isfinite(out.bbox_targets).all())
    refs = reference("faster_rcnn", rois, roi_mask, gt, labels, mask, noise, n_sample=16)
    assert_matches(out, refs, "faster_rcnn", roi_mask, mask, 10)
    # nothing at all: K = 0 and M = 0
    empty = (torch.zeros(3, 0, 4), None, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.int64),
             torch.zeros(3, 0, dtype=torch.bool), torch.zeros(3, 0))
    out = ProposalTargetCreator()(*empty)
    assert out.rois.shape == (3, 128, 4) and bool((out.sample_index == -1).all()) and out.num_neg.tolist() == [0] * 3


def test_counts_to_mask_from_proposal_creator_then_roi_align():
    from exportable.anchors import AnchorGenerator
    from exportable.roi_align import RoIAlign

    gen = AnchorGenerator.faster_rcnn()
    anchors = torch.cat(gen.grid_anchors([(8, 10)]))  # (720, 4) on a 128 x 160 image
    g = torch.Generator().manual_seed(0)
    objectness = torch.rand(2, len(anchors), generator=g)
    deltas = 0.1 * torch.randn(2, len(anchors), 4, generator=g)
    props = ProposalCreator(post_nms=60, min_size=4.0)(anchors, torch.zeros(len(anchors), dtype=torch.int64),
                                                       objectness, deltas, torch.tensor([[128, 160], [96, 64]]))
    roi_mask = counts_to_mask(props.counts, 60)
    assert roi_mask.sum(1).tolist() == props.counts.tolist()
    gt = torch.tensor([[[10.0, 10.0, 80.0, 90.0]], [[0.0, 0.0, 40.0, 60.0]]])
    out = ProposalTargetCreator(num=32)(props.proposals, roi_mask, gt, torch.tensor([[2], [5]]),
                                        torch.ones(2, 1, dtype=torch.bool), torch.rand(2, 61, generator=g))
    assert bool((out.sample_index[:, :1] >= 0).all())
    idx = out.sample_index
    real = torch.gather(roi_mask, 1, idx.clamp(0, 59))  # (2, 32) is the slot's RoI a real one?
    assert bool(((idx < 0) | (idx >= 60) | real).all())  # never a padded RoI
    pooled = RoIAlign(7, 1 / 16)(torch.randn(2, 8, 8, 10, generator=g), out.rois)
    assert pooled.shape == (2, 32, 8, 7, 7)


# --------------------------------------------------------------------------------------------
# onnxruntime: exact indices and labels at other sizes, degenerate inputs (the catalog adds more sizes)


@pytest.mark.onnx
@pytest.mark.parametrize("name", ["roi_head_targets", "roi_head_targets_mmdet"])
def test_onnxruntime_on_the_photo_and_on_degenerate_inputs(name, exported):
    from exportable import catalog

    entry = catalog.get(name)
    sess = xonnx.session(exported(name))
    module = entry.build()
    names = [o.name for o in entry.outputs]
    rois, gt, labels, mask = hand_case()
    cases = [
        photo_inputs(),  # 2,000 proposals, 6 gts
        (rois, torch.zeros(1, 6, dtype=torch.bool), gt, labels, mask, torch.rand(1, 8)),  # every RoI padding
        (rois[:, :1], torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.int64),
         torch.zeros(1, 0, dtype=torch.bool), torch.rand(1, 1)),  # one proposal, no gt column at all
    ]
    for args in cases:
        eager = entry.run_eager(module, args)
        got = xonnx.run(sess, args)
        for c in xonnx.compare(names, eager, got, atol=entry.atol, rtol=entry.rtol):
            assert c.close, str(c)
            if c.name in EXACT:
                assert c.exact, str(c)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_name_the_argument():
    rois, gt, labels, mask = hand_case()
    noise = torch.rand(1, 8)
    creator = ProposalTargetCreator(num_classes=10)
    with pytest.raises(ValueError, match="gt_labels"):
        creator(rois, None, gt, torch.tensor([[3, 10]]), mask, noise)  # class 10 with num_classes 10
    with pytest.raises(ValueError, match="noise"):
        creator(rois, None, gt, labels, mask, torch.rand(1, 6))  # K + M = 8 values needed
    with pytest.raises(ValueError, match="roi_mask"):
        creator(rois, torch.ones(1, 5, dtype=torch.bool), gt, labels, mask, noise)
    bad = rois.clone()
    bad[0, 1] = torch.tensor([10.0, 10.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="rois"):
        creator(bad, None, gt, labels, mask, noise)  # an inverted real RoI
    with pytest.raises(ValueError, match="gt_boxes"):
        creator(rois, None, torch.cat([gt, gt]), torch.cat([labels, labels]), torch.cat([mask, mask]), noise)
    with pytest.raises(ValueError, match="variant"):
        ProposalTargetCreator("detectron2")
    with pytest.raises(ValueError, match="num"):
        ProposalTargetCreator(num=0)
    with pytest.raises(ValueError, match="neg_iou_lo"):
        ProposalTargetCreator(neg_iou_lo=0.6)
    with pytest.raises(ValueError, match="num_classes"):
        ProposalTargetCreator(num_classes=0)
