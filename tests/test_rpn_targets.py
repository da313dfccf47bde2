"""AnchorTargetCreator (RPN anchor targets): the document's caps, reference <-> exportable <-> onnxruntime,
simple-faster-rcnn's own (yxyx, numpy) formulation, quirks, degenerate and bad inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from exportable import onnx as xonnx
from exportable.boxes import box_iou
from exportable.coders import DeltaXYWHCoder
from exportable.examples import anchor_target_inputs
from exportable.rpn import AnchorTargetCreator, anchor_inside
from lessons.rpn_anchor_targets import AnchorTargetCreator as RefCreator
from lessons.rpn_anchor_targets import (
    count_inside,
    faster_rcnn_anchors,
    get_inside_index,
    mmdet_anchor_targets,
    xyxy_to_yxyx,
)

INPUTS = ["anchors", "gt_boxes", "gt_mask", "image_sizes", "noise"]
OUTPUTS = ["labels", "bbox_targets", "bbox_weights", "matched_gt"]
DIMS = [("N", 4), ("B", "M", 4), ("B", "M"), ("B", 2), ("B", "N")]


def reference(variant, anchors, gts, mask, sizes, noise, **kw):
    out = []
    for i in range(gts.shape[0]):
        args = (gts[i][mask[i]], anchors, tuple(sizes[i].tolist()), noise[i])
        if variant == "faster_rcnn":
            out.append(RefCreator(**kw)(*args))
        else:
            out.append(mmdet_anchor_targets(anchors, args[0], args[2], noise[i], **kw))
    return out


def assert_matches(out, refs, variant):
    for i, r in enumerate(refs):
        assert torch.equal(out.labels[i], r.label), i
        want_gt = r.matched_gt if variant == "faster_rcnn" else r.argmax_ious
        assert torch.equal(out.matched_gt[i], want_gt), i
        torch.testing.assert_close(out.bbox_targets[i], r.loc, atol=1e-6, rtol=1e-6)
        assert torch.equal(out.bbox_weights[i], (r.label == 1).float()[:, None].expand(-1, 4)), i


def scene_600x1000(num_gts: int, seed: int, copies: int = 0):
    """Faster R-CNN anchors on a 600 x 1000 image, ``num_gts`` random gts, ``copies`` of them exact copies
    of distinct inside anchors (each one at least one IoU-1 positive)."""
    anchors, _ = faster_rcnn_anchors((600, 1000))
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_gts, 2, generator=g) * torch.tensor([800.0, 450.0])
    wh = 40 + torch.rand(num_gts, 2, generator=g) * 150
    gts = torch.cat([xy, xy + wh], dim=1)
    if copies:
        inside = get_inside_index(anchors, 600, 1000)
        pick = inside[torch.randperm(len(inside), generator=g)[:copies]]
        gts[:copies] = anchors[pick]
    noise = torch.rand(1, len(anchors), generator=g)
    return anchors, gts[None], torch.ones(1, num_gts, dtype=torch.bool), torch.tensor([[600, 1000]]), noise


# --------------------------------------------------------------------------------------------
# The document's numbers


def test_600x1000_anchor_count_and_inside():
    anchors, featmap = faster_rcnn_anchors((600, 1000))
    assert featmap == (38, 63) and len(anchors) == 21_546
    flags = anchor_inside(anchors, torch.tensor([[600, 1000]]))
    ref = get_inside_index(anchors, 600, 1000)
    assert int(flags.sum()) == len(ref) == 8_044  # not ~15,000 (the document), not ~6,000 (the paper)
    assert torch.equal(torch.nonzero(flags[0]).squeeze(1), ref)
    counts = count_inside()
    assert counts["inside"] == 8_044 and counts["inside_362x724"] == 0  # the tall 724-px anchors never fit
    # strict far side with py-faster-rcnn's centres (16 i + 8): a few anchors touching the border drop out
    assert count_inside(center_offset=0.5, inclusive=False)["inside"] == 7_856


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
def test_600x1000_sample_is_256_with_at_most_128_positives(variant):
    args = scene_600x1000(num_gts=5, seed=0)
    out = AnchorTargetCreator(variant)(*args)
    labels = out.labels[0]
    assert int((labels == 1).sum()) <= 128 and int((labels >= 0).sum()) == 256
    if variant == "faster_rcnn":
        assert ((labels >= 0) <= anchor_inside(args[0], args[3])[0]).all()  # only inside anchors sampled
    assert_matches(out, reference(variant, *args), variant)


def test_positives_scarce_all_kept_negatives_fill():
    args = scene_600x1000(num_gts=2, seed=1)
    ref = RefCreator()(args[1][0], args[0], (600, 1000), args[4][0])
    out = AnchorTargetCreator()(*args)
    # before sampling: every anchor with IoU >= 0.7 or a gt's best is a candidate; fewer than 128 of them
    n_pos = int((out.labels == 1).sum())
    assert 2 <= n_pos < 128
    assert int((out.labels == 0).sum()) == 256 - n_pos
    assert torch.equal(out.labels[0], ref.label)


def test_positives_plentiful_exactly_128():
    args = scene_600x1000(num_gts=160, seed=2, copies=160)
    out = AnchorTargetCreator()(*args)
    assert int((out.labels == 1).sum()) == 128 and int((out.labels == 0).sum()) == 128
    assert_matches(out, reference("faster_rcnn", *args), "faster_rcnn")
    out = AnchorTargetCreator("mmdet")(*args)
    assert int((out.labels == 1).sum()) == 128 and int((out.labels == 0).sum()) == 128


# --------------------------------------------------------------------------------------------
# reference <-> exportable on seeded random scenes (same noise, exact labels)

PARAMS = [
    ("faster_rcnn", {}, {}),
    ("faster_rcnn", {"inclusive": False, "allowed_border": 8.0}, {"inclusive": False, "allowed_border": 8.0}),
    ("faster_rcnn", {"num": 32, "pos_fraction": 0.25}, {"n_sample": 32, "pos_ratio": 0.25}),
    ("mmdet", {}, {}),
    ("mmdet", {"allowed_border": 0.0}, {"allowed_border": 0.0}),
    ("mmdet", {"num": 20}, {"n_sample": 20}),
]


@pytest.mark.parametrize("variant,kw,ref_kw", PARAMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(variant, kw, ref_kw, seed):
    args = anchor_target_inputs({"B": 3, "N": 600, "M": 6}, torch.Generator().manual_seed(seed))
    out = AnchorTargetCreator(variant, **kw)(*args)
    assert_matches(out, reference(variant, *args, **ref_kw), variant)


def _sfrcnn_numpy(bbox, anchor, H, W, noise, n_sample=256, pos_ratio=0.5):
    """simple-faster-rcnn's label rules written in its own terms: numpy, (y1, x1, y2, x2) boxes; its
    ``np.random.choice`` of the anchors to disable replaced by "keep the largest noise"."""
    inside = np.where((anchor[:, 0] >= 0) & (anchor[:, 1] >= 0) & (anchor[:, 2] <= H) & (anchor[:, 3] <= W))[0]
    a = anchor[inside]
    tl = np.maximum(a[:, None, :2], bbox[:, :2])
    br = np.minimum(a[:, None, 2:], bbox[:, 2:])
    inter = np.prod(br - tl, axis=2) * (tl < br).all(axis=2)
    ious = inter / (np.prod(a[:, 2:] - a[:, :2], axis=1)[:, None] + np.prod(bbox[:, 2:] - bbox[:, :2], axis=1) - inter)
    argmax = ious.argmax(axis=1)
    max_ious = ious[np.arange(len(a)), argmax]
    gt_argmax = np.where(ious == ious[ious.argmax(axis=0), np.arange(ious.shape[1])])[0]
    label = np.full(len(a), -1)
    label[max_ious < 0.3] = 0
    label[gt_argmax] = 1
    label[max_ious >= 0.7] = 1
    z = noise[inside]
    for value, cap in ((1, int(pos_ratio * n_sample)), (0, None)):
        cap = n_sample - int((label == 1).sum()) if cap is None else cap
        idx = np.where(label == value)[0]
        if len(idx) > cap:
            order = idx[np.lexsort((idx, -z[idx]))]  # largest noise first, ties by index
            label[order[cap:]] = -1
    out = np.full(len(anchor), -1)
    out[inside] = label
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_simple_faster_rcnn_in_its_own_box_order(seed):
    anchors, gts, mask, sizes, noise = anchor_target_inputs({"B": 2, "N": 900, "M": 5},
                                                                   torch.Generator().manual_seed(seed + 10))
    out = AnchorTargetCreator()(anchors, gts, mask, sizes, noise)
    for i in range(2):
        if not mask[i].any():
            continue
        h, w = sizes[i].tolist()
        want = _sfrcnn_numpy(xyxy_to_yxyx(gts[i][mask[i]]).numpy(), xyxy_to_yxyx(anchors).numpy(), h, w,
                             noise[i].numpy())
        assert np.array_equal(out.labels[i].numpy(), want)


# --------------------------------------------------------------------------------------------
# Quirks and variant differences


def test_gt_overlapping_no_inside_anchor_turns_zero_iou_anchors_positive():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [90, 0, 110, 10]])
    gts = torch.tensor([[[0.0, 0, 10, 10], [95, 0, 105, 10]]])  # the second gt touches only an outside anchor
    mask = torch.ones(1, 2, dtype=torch.bool)
    sizes = torch.tensor([[20, 60]])
    noise = torch.rand(1, 4)
    fr = AnchorTargetCreator()(anchors, gts, mask, sizes, noise)
    assert fr.labels[0].tolist() == [1, 1, 1, -1]  # gt 1's best inside IoU is 0: every zero-IoU anchor ties
    mm = AnchorTargetCreator("mmdet", allowed_border=0.0)(anchors, gts, mask, sizes, noise)
    assert mm.labels[0].tolist() == [1, 0, 0, -1]  # min_pos_iou 0.3 gates it
    gated = AnchorTargetCreator(min_pos_iou=0.3)(anchors, gts, mask, sizes, noise)
    assert gated.labels[0].tolist() == [1, 0, 0, -1]


def test_all_ties_of_a_gts_best_and_the_matched_gt():
    # anchors 0 and 1 tie at gt 0's best IoU (1/3); anchor 1 overlaps gt 1 more (its argmax)
    anchors = torch.tensor([[0.0, 0, 20, 10], [10, 0, 30, 10], [60, 0, 80, 10]])
    gts = torch.tensor([[[10.0, 0, 20, 10], [12, 0, 32, 10]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    sizes = torch.tensor([[10, 100]])
    noise = torch.rand(1, 3)
    fr = AnchorTargetCreator()(anchors, gts, mask, sizes, noise)
    assert fr.labels[0].tolist() == [1, 1, 0]
    assert fr.matched_gt[0].tolist() == [0, 1, -1]  # a positive regresses to its own argmax gt
    mm = AnchorTargetCreator("mmdet", min_pos_iou=0.0)(anchors, gts, mask, sizes, noise)
    assert mm.labels[0].tolist() == [1, 1, 0] and mm.matched_gt[0].tolist() == [0, 1, -1]


@pytest.mark.parametrize("seed", [0, 1])
def test_variants_agree_on_labels_when_the_gate_never_bites(seed):
    anchors, gts, mask, sizes, noise = anchor_target_inputs({"B": 2, "N": 500, "M": 5},
                                                                   torch.Generator().manual_seed(seed))
    pick = torch.randperm(500, generator=torch.Generator().manual_seed(seed))[:10].view(2, 5)
    gts = anchors[pick] + 0.5  # every gt's best IoU is high
    fr = AnchorTargetCreator(allowed_border=-1)(anchors, gts, mask, sizes, noise)
    mm = AnchorTargetCreator("mmdet")(anchors, gts, mask, sizes, noise)
    assert torch.equal(fr.labels, mm.labels)


def test_inclusive_far_side():
    anchors = torch.tensor([[0.0, 0, 100, 50], [0, 0, 100.5, 50]])
    sizes = torch.tensor([[50, 100]])
    assert anchor_inside(anchors, sizes)[0].tolist() == [True, False]  # simple-faster-rcnn: x2 <= W
    assert anchor_inside(anchors, sizes, inclusive=False)[0].tolist() == [False, False]  # mmdetection: x2 < W
    assert anchor_inside(anchors, sizes, allowed_border=1, inclusive=False)[0].tolist() == [True, True]
    assert anchor_inside(anchors, sizes, allowed_border=-1)[0].tolist() == [True, True]


def test_targets_faster_rcnn_every_inside_anchor_mmdet_positives_only():
    args = anchor_target_inputs({"B": 2, "N": 300, "M": 4}, torch.Generator().manual_seed(7))
    inside = anchor_inside(args[0], args[3])
    fr = AnchorTargetCreator()(*args)
    has_gt = args[2].any(1, keepdim=True)
    assert ((fr.bbox_targets != 0).any(-1) <= (inside & has_gt)).all()
    assert (fr.bbox_targets[inside & has_gt] != 0).any()
    mm = AnchorTargetCreator("mmdet")(*args)
    assert ((mm.bbox_targets != 0).any(-1) <= (mm.labels == 1)).all()
    for t in (fr, mm):
        assert ((t.matched_gt >= 0) == (t.labels == 1)).all()


# --------------------------------------------------------------------------------------------
# Degenerate inputs


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
@pytest.mark.parametrize("m", [0, 3])
def test_no_gts(variant, m):
    anchors, _, _, sizes, noise = anchor_target_inputs({"B": 2, "N": 400, "M": 1}, torch.Generator())
    gts = torch.zeros(2, m, 4)
    out = AnchorTargetCreator(variant)(anchors, gts, torch.zeros(2, m, dtype=torch.bool), sizes, noise)
    assert not (out.labels == 1).any() and (out.bbox_targets == 0).all() and (out.matched_gt == -1).all()
    candidates = anchor_inside(anchors, sizes).sum(1) if variant == "faster_rcnn" else torch.tensor([400, 400])
    assert (out.labels == 0).sum(1).tolist() == candidates.clamp(max=256).tolist()


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
def test_every_anchor_outside(variant):
    anchors = torch.tensor([[-10.0, -10, 20, 20], [50, 50, 90, 90]])
    gts = torch.tensor([[[0.0, 0, 10, 10]]])
    kw = {"allowed_border": 0.0} if variant == "mmdet" else {}
    out = AnchorTargetCreator(variant, **kw)(anchors, gts, torch.ones(1, 1, dtype=torch.bool),
                                             torch.tensor([[40, 40]]), torch.rand(1, 2))
    assert (out.labels == -1).all() and (out.bbox_targets == 0).all() and (out.bbox_weights == 0).all()


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_anchors_than_the_caps(variant, n):
    args = anchor_target_inputs({"B": 2, "N": n, "M": 2}, torch.Generator().manual_seed(n))
    out = AnchorTargetCreator(variant)(*args)
    assert out.labels.shape == (2, n) and out.bbox_targets.shape == (2, n, 4)
    assert_matches(out, reference(variant, *args), variant)


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
def test_no_images(variant):
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])
    out = AnchorTargetCreator(variant)(anchors, torch.zeros(0, 2, 4), torch.zeros(0, 2, dtype=torch.bool),
                                       torch.zeros(0, 2, dtype=torch.int64), torch.rand(0, 2))
    assert [tuple(x.shape) for x in out] == [(0, 2), (0, 2, 4), (0, 2, 4), (0, 2)]


def test_bad_inputs():
    args = list(anchor_target_inputs({"B": 2, "N": 10, "M": 2}, torch.Generator()))
    module = AnchorTargetCreator()
    with pytest.raises(ValueError, match="noise"):
        module(*args[:4], args[4] + 2)
    with pytest.raises(ValueError, match="noise"):
        module(*args[:4], args[4][:, :5])
    with pytest.raises(TypeError, match="image_sizes"):
        module(*args[:3], args[3].float(), args[4])
    bad = args[0].clone()
    bad[0, 2] = bad[0, 0]
    with pytest.raises(ValueError, match="anchors"):
        module(bad, *args[1:])
    with pytest.raises(ValueError, match="variant"):
        AnchorTargetCreator("torchvision")


def test_variant_defaults_and_overrides():
    fr, mm = AnchorTargetCreator(), AnchorTargetCreator("mmdet")
    assert (fr.min_pos_iou, fr.allowed_border, fr.inclusive) == (0.0, 0.0, True)
    assert (mm.min_pos_iou, mm.allowed_border, mm.inclusive) == (0.3, -1.0, False)
    assert AnchorTargetCreator("mmdet", allowed_border=0, inclusive=True).inclusive is True


# --------------------------------------------------------------------------------------------
# ONNX: each variant exported once (dynamic B, N, M), run at other sizes


@pytest.fixture(scope="module", params=["faster_rcnn", "mmdet"])
def exported_targets(request):
    module = AnchorTargetCreator(request.param)
    example = anchor_target_inputs({"B": 2, "N": 300, "M": 4}, torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xonnx.export(module, example, input_names=INPUTS, output_names=OUTPUTS, input_dims=DIMS)
    return module, xonnx.session(model, ["CPUExecutionProvider"])


@pytest.mark.onnx
def test_onnx_matches_eager(exported_targets):
    module, sess = exported_targets
    cases = [anchor_target_inputs(sizes, torch.Generator().manual_seed(sizes["N"]))
             for sizes in ({"B": 3, "N": 2000, "M": 9}, {"B": 1, "N": 7, "M": 1}, {"B": 2, "N": 50, "M": 0},
                           {"B": 4, "N": 1, "M": 3}, {"B": 2, "N": 0, "M": 3})]
    cases.append(scene_600x1000(num_gts=160, seed=2, copies=160))  # positives plentiful: the 128 cap binds
    for args in cases:
        sizes = {"B": args[1].shape[0], "N": args[0].shape[0], "M": args[1].shape[1]}
        with torch.no_grad():
            eager = module(*args)
        got = xonnx.run(sess, args)
        for cmp in xonnx.compare(OUTPUTS, eager, got, atol=1e-5, rtol=1e-6):
            assert cmp.close, (sizes, str(cmp))
            if cmp.name != "bbox_targets":
                assert cmp.exact, (sizes, str(cmp))


def _run_onnx(sess, args):
    with torch.no_grad():
        return [torch.from_numpy(x) for x in xonnx.run(sess, args)]


def _one_image(anchors, gts, sizes):
    """One image with every gt real and uniform noise: ``(anchors, gt_boxes, gt_mask, image_sizes, noise)``."""
    return (anchors, gts[None], torch.ones(1, len(gts), dtype=torch.bool), torch.tensor([sizes]),
            torch.rand(1, len(anchors), generator=torch.Generator().manual_seed(0)))


@pytest.mark.onnx
def test_onnx_ties_and_a_gt_without_inside_anchor(exported_targets):
    # the hand-computed faster_rcnn cases above, through the graph (sizes unlike the export's); the mmdet
    # variant is checked against its eager run only
    module, sess = exported_targets
    ties = _one_image(torch.tensor([[0.0, 0, 20, 10], [10, 0, 30, 10], [60, 0, 80, 10]]),
                      torch.tensor([[10.0, 0, 20, 10], [12, 0, 32, 10]]), (10, 100))
    labels, _, _, matched = _run_onnx(sess, ties)
    if module.variant == "faster_rcnn":  # anchors 0 and 1 tie at gt 0's best; anchor 1's argmax is gt 1
        assert labels[0].tolist() == [1, 1, 0] and matched[0].tolist() == [0, 1, -1]
    lonely = _one_image(torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [90, 0, 110, 10]]),
                        torch.tensor([[0.0, 0, 10, 10], [95, 0, 105, 10]]), (20, 60))
    labels = _run_onnx(sess, lonely)[0]
    if module.variant == "faster_rcnn":
        assert labels[0].tolist() == [1, 1, 1, -1]  # gt 1's best inside IoU is 0: every zero-IoU anchor ties
    for args in (ties, lonely):
        for cmp in xonnx.compare(OUTPUTS, module(*args), xonnx.run(sess, args)):
            assert cmp.exact, str(cmp)


@pytest.mark.onnx
@pytest.mark.parametrize("tiny", [[0, 1, 2], [1]])
def test_onnx_images_without_inside_anchors(exported_targets, tiny):
    # images of 4 x 4 px hold no anchor: each lists only the stand-in (no empty reduction in the graph),
    # also when no image of the batch has an inside anchor
    module, sess = exported_targets
    args = list(anchor_target_inputs({"B": 3, "N": 700, "M": 5}, torch.Generator().manual_seed(3)))
    args[2][:] = True
    args[3][:] = 128
    args[3][tiny] = 4
    with torch.no_grad():
        eager = module(*args)
    for cmp in xonnx.compare(OUTPUTS, eager, xonnx.run(sess, args), atol=1e-5, rtol=1e-6):
        assert cmp.close and (cmp.exact or cmp.name == "bbox_targets"), str(cmp)
    if module.variant == "faster_rcnn":
        assert (eager.labels[tiny] == -1).all() and (eager.bbox_targets[tiny] == 0).all()
        others = [i for i in range(3) if i not in tiny]
        assert all((eager.labels[i] == 1).any() for i in others)  # the others are labelled as usual


@pytest.mark.onnx
def test_onnx_padding_zero_area_and_out_of_image_gts(exported_targets):
    # padded rows copy anchors (IoU 1 if they took part); image 0 is all padding; image 1 has a zero-area gt
    # (targets -inf: log 0) and a gt beyond the image
    module, sess = exported_targets
    anchors, gts, mask, sizes, noise = anchor_target_inputs({"B": 2, "N": 600, "M": 4},
                                                            torch.Generator().manual_seed(5))
    inside = anchor_inside(anchors, sizes)
    gts[0] = anchors[inside[0].nonzero()[:4, 0]]
    mask[0] = False
    gts[1, 0] = torch.tensor([20.0, 20, 20, 30])  # zero width
    gts[1, 1] = torch.tensor([140.0, 140, 180, 170])  # outside every image (<= 128 px)
    gts[1, 2] = anchors[inside[1].nonzero()[0, 0]]
    gts[1, 3] = anchors[inside[1].nonzero()[1, 0]]  # padding
    mask[1] = torch.tensor([True, True, True, False])
    with torch.no_grad():
        eager = module(anchors, gts, mask, sizes, noise)
    got = xonnx.run(sess, (anchors, gts, mask, sizes, noise))
    for cmp in xonnx.compare(OUTPUTS, eager, got, atol=1e-5, rtol=1e-6):
        assert cmp.close and (cmp.exact or cmp.name == "bbox_targets"), str(cmp)
    assert not (eager.labels[0] == 1).any() and (eager.bbox_targets[0] == 0).all()
    if module.variant == "faster_rcnn":
        assert torch.isinf(eager.bbox_targets[1]).any()  # anchors whose argmax is the zero-area gt
        assert_matches(eager, reference("faster_rcnn", anchors, gts, mask, sizes, noise), "faster_rcnn")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_pos_iou", [0.0, 0.3])
def test_inside_anchor_lists_equal_the_dense_formulation(seed, min_pos_iou):
    # the module works image by image on lists of inside anchors (a Scan in the graph); the dense (B, N, M)
    # formulation with outside anchors and padded gts masked gives the same numbers, bit for bit
    g = torch.Generator().manual_seed(seed)
    anchors, gts, gt_mask, image_sizes, _ = anchor_target_inputs({"B": 4, "N": 500, "M": 7}, g)
    gt_mask[0] = False  # an image without gts; image 2 has no inside anchor
    module = AnchorTargetCreator(min_pos_iou=min_pos_iou)
    inside = anchor_inside(anchors, image_sizes, module.allowed_border, module.inclusive)
    got = module._inside_anchors(anchors, gts, gt_mask, inside)
    pair = inside.unsqueeze(2) & gt_mask.unsqueeze(1)  # (B, N, M)
    ious = torch.where(pair, box_iou(anchors, gts), -1.0)  # (B, N, M)
    max_ious, argmax = ious.max(dim=2)  # (B, N) each
    gt_max = ious.amax(dim=1, keepdim=True)  # (B, 1, M)
    best = ((ious == gt_max) & pair & (gt_max >= min_pos_iou)).any(dim=2)  # (B, N)
    gt_of = torch.gather(gts, 1, argmax.unsqueeze(-1).expand(-1, -1, 4))  # (B, N, 4)
    has_target = (inside & gt_mask.any(dim=1, keepdim=True)).unsqueeze(-1)  # (B, N, 1)
    targets = torch.where(has_target, DeltaXYWHCoder().encode(anchors, gt_of), 0.0)  # (B, N, 4)
    for name, g_, w in zip(["max_ious", "argmax_ious", "best", "bbox_targets"], got, (max_ious, argmax, best, targets)):
        torch.testing.assert_close(g_, w, rtol=0, atol=0, msg=name)
    assert best.any() and (max_ious[inside] >= 0).any() and not inside[2].any()  # not vacuous
