"""ProposalCreator and the NMS lessons: reference <-> exportable <-> onnxruntime, presets, the filter-then-sort
order, level-aware NMS, greedy vs Soft-NMS, the funnel, degenerate and bad inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from exportable import onnx as xonnx
from exportable.examples import proposal_inputs
from exportable.nms import batched_nms, nms
from exportable.rpn import ProposalCreator
from lessons.proposals_and_nms import ProposalCreator as RefCreator
from lessons.proposals_and_nms import (
    class_aware_nms,
    funnel_counts,
    greedy_nms,
    mmdet_proposals,
    soft_nms,
)

INPUTS = ["anchors", "level_ids", "objectness", "deltas", "image_sizes"]
OUTPUTS = ["proposals", "scores", "counts", "anchor_index"]
DIMS = [("N", 4), ("N",), ("B", "N"), ("B", "N", 4), ("B", 2)]


def reference(variant, anchors, level_ids, objectness, deltas, sizes, *, pre_nms, post_nms, min_size=None,
              training=True):
    out = []
    for i in range(objectness.shape[0]):
        hw = tuple(sizes[i].tolist())
        if variant == "faster_rcnn":
            kw = {"min_size": 16 if min_size is None else min_size}
            creator = RefCreator(n_train_pre_nms=pre_nms, n_train_post_nms=post_nms, n_test_pre_nms=pre_nms,
                                 n_test_post_nms=post_nms, **kw)
            out.append(creator(deltas[i], objectness[i], anchors, hw, training=training))
        else:
            out.append(mmdet_proposals(anchors, level_ids, objectness[i], deltas[i], hw, nms_pre=pre_nms,
                                       max_per_img=post_nms, min_bbox_size=0.0 if min_size is None else min_size))
    return out


def assert_matches(out, refs):
    """Counts and anchor indices exact; boxes to 1e-4 px (exp differs by an ulp between tensor lengths)."""
    assert out.counts.tolist() == [len(r.roi) for r in refs]
    for i, r in enumerate(refs):
        n = len(r.roi)
        assert torch.equal(out.anchor_index[i, :n], r.anchor_index), i
        assert torch.equal(out.scores[i, :n], r.score), i
        torch.testing.assert_close(out.proposals[i, :n], r.roi, atol=1e-4, rtol=1e-6)
        assert (out.anchor_index[i, n:] == -1).all() and (out.scores[i, n:] == 0).all()
        assert (out.proposals[i, n:] == 0).all()


# --------------------------------------------------------------------------------------------
# reference <-> exportable

CASES = [
    ("faster_rcnn", {"pre_nms": 12000, "post_nms": 2000}, {"B": 2, "N": 1500}),
    ("faster_rcnn", {"pre_nms": 300, "post_nms": 100}, {"B": 3, "N": 2000}),
    ("faster_rcnn", {"pre_nms": 50, "post_nms": 300, "min_size": 0.0}, {"B": 2, "N": 400}),
    ("mmdet", {"pre_nms": 2000, "post_nms": 1000}, {"B": 2, "N": 1500}),
    ("mmdet", {"pre_nms": 100, "post_nms": 120}, {"B": 3, "N": 2000}),
    ("mmdet", {"pre_nms": 40, "post_nms": 30, "min_size": 20.0}, {"B": 2, "N": 400}),
]


@pytest.mark.parametrize("variant,kw,sizes", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(variant, kw, sizes, seed):
    args = proposal_inputs(sizes, torch.Generator().manual_seed(seed))
    out = ProposalCreator(variant, return_index=True, **kw)(*args)
    assert_matches(out, reference(variant, *args, **kw))


def test_default_output_is_the_pinned_triple():
    args = proposal_inputs({"B": 2, "N": 300}, torch.Generator())
    out = ProposalCreator()(*args)
    assert out._fields == ("proposals", "scores", "counts")
    assert out.proposals.shape == (2, 2000, 4) and out.scores.shape == (2, 2000) and out.counts.dtype == torch.int64


# --------------------------------------------------------------------------------------------
# Presets and the document's funnel


def test_presets_do_not_follow_train_eval():
    train, test = ProposalCreator.train_preset(), ProposalCreator.test_preset()
    assert (train.pre_nms, train.post_nms, train.min_size, train.iou_threshold) == (12000, 2000, 16.0, 0.7)
    assert (test.pre_nms, test.post_nms) == (6000, 300)
    assert (train.eval().pre_nms, test.train().post_nms) == (12000, 300)
    mm = ProposalCreator.train_preset("mmdet")
    assert (mm.pre_nms, mm.post_nms, mm.min_size) == (2000, 1000, 0.0)
    assert ProposalCreator("mmdet", "test").pre_nms == 1000
    assert ProposalCreator(mode="test", post_nms=50).post_nms == 50


def test_funnel_train_and_test():
    # a 600 x 1000 image's 21,546 anchors, confident and overlapping: 20,000 -> 12,000 -> 2,000 (train)
    from lessons.rpn_anchor_targets import faster_rcnn_anchors

    anchors, _ = faster_rcnn_anchors((600, 1000))
    g = torch.Generator().manual_seed(0)
    n = len(anchors)
    score = torch.rand(n, generator=g)
    loc = torch.randn(n, 4, generator=g) * 0.1
    train = funnel_counts(loc, score, anchors, (600, 1000))
    assert list(train) == ["anchors", "inside", "min_size", "pre_nms", "nms", "post_nms"]
    assert train["anchors"] == 21_546 and train["inside"] == 8_044
    assert train["pre_nms"] == min(12_000, train["min_size"]) and train["post_nms"] == 2_000
    test = funnel_counts(loc, score, anchors, (600, 1000), training=False)
    assert test["pre_nms"] == 6_000 and test["post_nms"] == 300
    out = ProposalCreator.test_preset(return_index=True)(anchors, torch.zeros(n, dtype=torch.int64), score[None],
                                                         loc[None], torch.tensor([[600, 1000]]))
    ref = RefCreator()(loc, score, anchors, (600, 1000), training=False)
    assert int(out.counts[0]) == 300 and torch.equal(out.anchor_index[0], ref.anchor_index)


# --------------------------------------------------------------------------------------------
# Step order and NMS semantics on hand-made inputs


def one_image(anchors, scores, levels=None):
    anchors = torch.tensor(anchors, dtype=torch.float32)
    n = len(anchors)
    levels = torch.zeros(n, dtype=torch.int64) if levels is None else torch.tensor(levels)
    return anchors, levels, torch.tensor([scores]), torch.zeros(1, n, 4), torch.tensor([[100, 100]])


def test_small_boxes_are_dropped_before_the_top_k():
    # the best-scoring box is 10 px wide: faster_rcnn filters first, then takes the top 1 -> the 30 px box
    args = one_image([[0, 0, 10, 10], [50, 50, 80, 80]], [0.9, 0.5])
    fr = ProposalCreator(pre_nms=1, post_nms=5, return_index=True)(*args)
    assert fr.counts.tolist() == [1] and fr.anchor_index[0, 0] == 1
    # mmdetection takes the top 1 first, then drops boxes of size <= 12: nothing left
    mm = ProposalCreator("mmdet", pre_nms=1, post_nms=5, min_size=12.0, return_index=True)(*args)
    assert mm.counts.tolist() == [0]


def test_level_aware_nms_keeps_overlapping_boxes_of_different_levels():
    args = one_image([[10, 10, 50, 50], [10, 10, 50, 50], [12, 10, 50, 50]], [0.9, 0.8, 0.7], levels=[0, 1, 1])
    fr = ProposalCreator(return_index=True)(*args)
    assert fr.counts.tolist() == [1]  # whole-image NMS: one box survives
    mm = ProposalCreator("mmdet", return_index=True)(*args)
    assert mm.counts.tolist() == [2] and mm.anchor_index[0, :2].tolist() == [0, 1]


def test_iou_exactly_at_the_threshold_is_kept():
    args = one_image([[0, 0, 40, 40], [20, 0, 60, 40]], [0.9, 0.8])  # inter 800, union 2400: IoU 1/3 (float32)
    assert ProposalCreator(iou_threshold=1 / 3)(*args).counts.tolist() == [2]
    assert ProposalCreator(iou_threshold=0.3)(*args).counts.tolist() == [1]


def test_equal_scores_keep_the_lower_anchor_first():
    args = one_image([[0, 0, 40, 40], [1, 0, 41, 40], [60, 60, 90, 90]], [0.5, 0.5, 0.5])
    out = ProposalCreator(return_index=True)(*args)
    assert out.anchor_index[0, :2].tolist() == [0, 2]


def test_zero_scores_still_take_part():
    args = one_image([[0, 0, 40, 40], [60, 60, 90, 90]], [0.0, 0.0])
    assert ProposalCreator()(*args).counts.tolist() == [2]


# --------------------------------------------------------------------------------------------
# Degenerate inputs


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs(variant, n):
    args = proposal_inputs({"B": 2, "N": n}, torch.Generator().manual_seed(n))
    out = ProposalCreator(variant, return_index=True, pre_nms=5, post_nms=3)(*args)
    assert out.proposals.shape == (2, 3, 4)
    assert_matches(out, reference(variant, *args, pre_nms=5, post_nms=3))


@pytest.mark.parametrize("variant", ["faster_rcnn", "mmdet"])
def test_one_proposal(variant):
    args = one_image([[10, 10, 60, 60]], [0.3])
    out = ProposalCreator(variant, return_index=True)(*args)
    assert out.counts.tolist() == [1] and out.scores[0, 0] == 0.3 and out.proposals[0, 0].tolist() == [10, 10, 60, 60]


def test_everything_too_small():
    args = list(proposal_inputs({"B": 2, "N": 100}, torch.Generator()))
    out = ProposalCreator(min_size=1000.0)(*args)
    assert out.counts.tolist() == [0, 0] and (out.proposals == 0).all()
    args[4] = torch.zeros(2, 2, dtype=torch.int64)  # 0 x 0 images: every clipped box has size 0
    assert ProposalCreator("mmdet")(*args).counts.tolist() == [0, 0]


def test_bad_inputs():
    args = list(proposal_inputs({"B": 2, "N": 20}, torch.Generator()))
    with pytest.raises(ValueError, match="objectness"):
        ProposalCreator()(*args[:2], args[2] * 4 - 2, *args[3:])  # logits, not probabilities
    with pytest.raises(ValueError, match="level_ids"):
        ProposalCreator("mmdet", num_levels=2)(*args)
    with pytest.raises(ValueError, match="deltas"):
        ProposalCreator()(*args[:3], args[3][:, :5], args[4])
    with pytest.raises(ValueError, match="mode"):
        ProposalCreator(mode="eval")
    with pytest.raises(ValueError, match="post_nms"):
        ProposalCreator(post_nms=0)


# --------------------------------------------------------------------------------------------
# The NMS lessons


def random_boxes(n, seed, ties=True):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 60], dim=1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = torch.floor(scores * 8) / 8
    return boxes, scores, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_greedy_nms_equals_the_exportable_nms(seed, thr):
    boxes, scores, labels = random_boxes(300, seed)
    assert torch.equal(greedy_nms(boxes, scores, thr), nms(boxes, scores, thr))
    assert torch.equal(class_aware_nms(boxes, scores, labels, thr), batched_nms(boxes, scores, labels, thr))


def test_soft_nms():
    boxes, scores, _ = random_boxes(120, 0, ties=False)
    keep, _ = soft_nms(boxes, scores, 0.5, method="greedy")
    assert torch.equal(keep, greedy_nms(boxes, scores, 0.5))  # zero decay = plain NMS
    lin, lin_scores = soft_nms(boxes, scores, 0.5, method="linear")
    gau, gau_scores = soft_nms(boxes, scores, method="gaussian")
    assert len(lin) > len(keep) and len(gau) > len(keep)  # overlapping boxes survive with lower scores
    for k, s in ((lin, lin_scores), (gau, gau_scores)):
        assert (s <= scores[k]).all() and (s >= 0.001).all()
        assert len(set(k.tolist())) == len(k)
    # two identical boxes: linear decay (1 - IoU) = 0 removes the second, gaussian exp(-1 / 0.5) keeps it
    two = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert soft_nms(two, torch.tensor([0.9, 0.8]), method="linear")[0].tolist() == [0]
    k, s = soft_nms(two, torch.tensor([0.9, 0.8]), method="gaussian")
    assert k.tolist() == [0, 1] and abs(float(s[1]) - 0.8 * float(np.exp(-2.0))) < 1e-6


# --------------------------------------------------------------------------------------------
# ONNX: each variant exported once (dynamic B and N), run at other sizes

ONNX_PARAMS = {"faster_rcnn": {"pre_nms": 400, "post_nms": 150}, "mmdet": {"pre_nms": 150, "post_nms": 200}}


@pytest.fixture(scope="module", params=["faster_rcnn", "mmdet"])
def exported_proposals(request):
    module = ProposalCreator(request.param, return_index=True, **ONNX_PARAMS[request.param])
    example = proposal_inputs({"B": 2, "N": 300}, torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xonnx.export(module, example, input_names=INPUTS, output_names=OUTPUTS, input_dims=DIMS)
    return module, xonnx.session(model, ["CPUExecutionProvider"])


@pytest.mark.onnx
def test_onnx_matches_eager(exported_proposals):
    module, sess = exported_proposals
    for sizes in ({"B": 3, "N": 2500}, {"B": 1, "N": 7}, {"B": 2, "N": 1}, {"B": 2, "N": 0}):
        args = proposal_inputs(sizes, torch.Generator().manual_seed(sizes["N"]))
        with torch.no_grad():
            eager = module(*args)
        got = xonnx.run(sess, args)
        for cmp in xonnx.compare(OUTPUTS, eager, got, atol=1e-4, rtol=1e-6):
            assert cmp.close, (sizes, str(cmp))
            if cmp.name != "proposals":
                assert cmp.exact, (sizes, str(cmp))
