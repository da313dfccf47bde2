"""RetinaNetTargets: the document's steps by hand, reference parity, counting, degenerate inputs, ONNX."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import catalog
from exportable import onnx as xonnx
from exportable.anchors import AnchorGenerator, featmap_sizes_for
from exportable.batching import pad_gts
from exportable.boxes import box_iou
from exportable.coders import DeltaXYWHCoder
from exportable.retinanet import (
    RetinaNetTargets,
    images_to_levels,
    level_counts,
    level_counts_from_ids,
)
from lessons.retinanet_targets import retinanet_get_targets, retinanet_targets_single
from lessons.scenes import random_scene

C = 80


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def run(anchors, gts_per_image, labels_per_image=None, image_hw=(20, 20), valid=None, **kw):
    """RetinaNetTargets on a small hand-made batch; returns the result and its inputs."""
    anchors = T(anchors)
    gts = [T(g).reshape(-1, 4) for g in gts_per_image]
    if labels_per_image is None:
        labels_per_image = [[0] * len(g) for g in gts]
    batch = pad_gts(gts, [torch.tensor(lab, dtype=torch.int64) for lab in labels_per_image])
    b, n = len(gts), len(anchors)
    valid = torch.ones(b, n, dtype=torch.bool) if valid is None else torch.tensor(valid)
    sizes = torch.tensor([image_hw] * b, dtype=torch.int64)
    res = RetinaNetTargets(**kw)(anchors, valid, sizes, batch.boxes, batch.labels, batch.mask)
    return res, (anchors, valid, sizes, gts, labels_per_image)


def reference(inputs, **kw):
    anchors, valid, sizes, gts, labels = inputs
    return retinanet_get_targets(
        anchors, list(valid), [tuple(s.tolist()) for s in sizes], gts,
        [torch.tensor(lab, dtype=torch.int64) for lab in labels], **kw,
    )


def assert_matches_reference(res, inputs, **kw):
    ref = reference(inputs, **kw)
    assert ref is not None
    singles, total_pos, total_neg = ref
    for i, r in enumerate(singles):
        assert torch.equal(res.labels[i], r.labels)
        assert torch.equal(res.label_weights[i], r.label_weights)
        assert torch.equal(res.bbox_weights[i], r.bbox_weights)
        torch.testing.assert_close(res.bbox_targets[i], r.bbox_targets, atol=1e-5, rtol=1e-5)
    assert int(res.num_total_pos) == total_pos and int(res.num_total_neg) == total_neg


# ------------------------------------------------------------------------------------------------
# Hand cases (the document's steps)
# ------------------------------------------------------------------------------------------------


def test_mmdetection_documented_example():
    # MaxIoUAssigner's docstring example: anchors [0,0,10,10], [10,10,20,20]; gt [0,0,10,9] (IoU 0.9, 0)
    res, inputs = run([[0, 0, 10, 10], [10, 10, 20, 20]], [[[0, 0, 10, 9]]], [[3]])
    assert res.labels.tolist() == [[3, C]]
    assert res.label_weights.tolist() == [[1.0, 1.0]]  # positive and negative both count
    # encode: dx = 0, dy = (4.5 - 5) / 10, dw = log(10 / 10), dh = log(9 / 10)
    assert res.bbox_targets[0, 0].tolist() == pytest.approx([0.0, -0.05, 0.0, math.log(0.9)], abs=1e-6)
    assert res.bbox_targets[0, 1].tolist() == [0.0] * 4
    assert res.bbox_weights.tolist() == [[[1.0] * 4, [0.0] * 4]]
    assert res.num_total_pos.dtype == torch.int64 and res.num_total_pos.shape == ()
    assert int(res.num_total_pos) == 1 and int(res.num_total_neg) == 1
    assert_matches_reference(res, inputs)


BORDER_ANCHORS = [
    [0, 0, 10, 10],  # inside: the gt itself
    [15, 15, 25, 25],  # crosses the far corner (x2 = 25 >= W = 20)
    [12, 0, 20, 8],  # ends exactly on the right edge: x2 = 20 is NOT < 20 -> outside at border 0
    [-3, 2, 6, 9],  # starts left of the image (x1 = -3); IoU 42/121 with the gt: negative
]


@pytest.mark.parametrize(("allowed_border", "weights", "negatives"), [
    (-1, [1.0, 1.0, 1.0, 1.0], 3),  # RetinaNet: only padding matters
    (0, [1.0, 0.0, 0.0, 0.0], 1),  # py-faster-rcnn style: 0 negatives still count 1
    (5, [1.0, 0.0, 1.0, 1.0], 2),  # x2 = 25 is not < 20 + 5; the others fit in the 5 px border
])
def test_out_of_border_anchors_weigh_zero_only_with_allowed_border(allowed_border, weights, negatives):
    res, inputs = run(BORDER_ANCHORS, [[[0, 0, 10, 10]]], [[7]], allowed_border=allowed_border)
    assert res.label_weights[0].tolist() == weights
    assert res.labels[0].tolist() == [7, C, C, C]  # outside anchors are background ("unmap" fill)
    assert res.bbox_weights[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert int(res.num_total_pos) == 1 and int(res.num_total_neg) == negatives
    assert_matches_reference(res, inputs, allowed_border=allowed_border)


def test_ignored_band_weighs_zero():
    # IoUs with the gt [0,0,10,10]: 1.0 (positive), 0.45 (between 0.4 and 0.5: ignored), 0.2 (negative)
    res, inputs = run([[0, 0, 10, 10], [0, 0, 4.5, 10], [0, 0, 2, 10]], [[[0, 0, 10, 10]]], [[2]])
    assert res.labels[0].tolist() == [2, C, C]
    assert res.label_weights[0].tolist() == [1.0, 0.0, 1.0]
    assert res.bbox_weights[0, :, 0].tolist() == [1.0, 0.0, 0.0]
    assert int(res.num_total_neg) == 1
    assert_matches_reference(res, inputs)


def test_padding_anchors_take_no_part_even_in_low_quality_matches():
    anchors = [[0, 0, 10, 10], [0, 0, 4, 10]]  # IoU 1.0 and 0.4 with the gt
    res, inputs = run(anchors, [[[0, 0, 10, 10]]], [[5]])
    assert res.labels[0].tolist() == [5, C] and res.label_weights[0].tolist() == [1.0, 0.0]  # 0.4: ignored band
    # anchor 0 on padding: the gt's best VALID anchor (IoU 0.4) becomes its low-quality positive
    res, inputs = run(anchors, [[[0, 0, 10, 10]]], [[5]], valid=[[False, True]])
    assert res.labels[0].tolist() == [C, 5] and res.label_weights[0].tolist() == [0.0, 1.0]
    assert res.bbox_targets[0, 1].tolist() == pytest.approx([0.5 * 10 / 4 - 0.5, 0.0, math.log(10 / 4), 0.0])
    assert_matches_reference(res, inputs)


def test_num_total_pos_and_neg_count_at_least_one_per_image():
    anchors = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
    gts = [
        [[0, 0, 10, 10], [20, 0, 30, 10]],  # 2 positives, 1 negative
        [],  # no gts: 0 positives (counts 1), 3 negatives
        [[0, 0, 50, 10]],  # IoU 0.2 with each: all tie for the gt's best -> 3 low-quality positives, 0 negatives
    ]
    res, inputs = run(anchors, gts, [[1, 2], [], [3]], image_hw=(20, 60))
    assert (res.labels < C).sum(dim=1).tolist() == [2, 0, 3]
    assert res.labels[2].tolist() == [3, 3, 3]
    assert int(res.num_total_pos) == 2 + 1 + 3  # max(0, 1) for the image without positives
    assert int(res.num_total_neg) == 1 + 3 + 1  # max(0, 1) for the image without negatives
    assert_matches_reference(res, inputs)
    ref = reference(inputs)[0]
    assert [r.num_pos for r in ref] == [2, 1, 3] and [len(r.pos_inds) for r in ref] == [2, 0, 3]


@pytest.mark.parametrize(("pos_weight", "want"), [(-1.0, 1.0), (0.0, 1.0), (2.5, 2.5)])
def test_pos_weight(pos_weight, want):
    res, inputs = run([[0, 0, 10, 10], [30, 0, 40, 10]], [[[0, 0, 10, 10]]], pos_weight=pos_weight)
    assert res.label_weights[0].tolist() == [want, 1.0]
    assert_matches_reference(res, inputs, pos_weight=pos_weight)


def test_means_and_stds_normalise_the_targets():
    means, stds = (0.1, -0.1, 0.0, 0.05), (0.1, 0.1, 0.2, 0.2)
    anchors, gt = [[0, 0, 10, 10], [30, 0, 40, 10]], [[1, 2, 12, 11]]
    res, inputs = run(anchors, [gt], means=means, stds=stds)
    plain = DeltaXYWHCoder().encode(T(anchors[:1]), T(gt))  # (1, 4)
    want = (plain - T(means)) / T(stds)
    torch.testing.assert_close(res.bbox_targets[0, :1], want)
    assert res.bbox_targets[0, 1].tolist() == [0.0] * 4  # not "-means / stds": masked to 0
    assert_matches_reference(res, inputs, means=means, stds=stds)


# ------------------------------------------------------------------------------------------------
# Reference parity on seeded random scenes
# ------------------------------------------------------------------------------------------------

GEN = AnchorGenerator.retinanet()
PAD_HW = (128, 160)
SIZES = featmap_sizes_for(PAD_HW, GEN.strides)
ANCHORS = torch.cat(GEN.grid_anchors(SIZES))  # (3834, 4)


def _random_batch(seed: int):
    hws = [(128, 160), (100, 150), (120, 90)]
    gts = [
        random_scene(*hws[0], 9, seed=seed, clip=False),  # some boxes leave the image
        random_scene(*hws[1], 0, seed=seed + 1),  # no gts
        random_scene(*hws[2], 5, seed=seed + 2),
    ]
    boxes = [s.boxes for s in gts]
    labels = [s.labels for s in gts]
    batch = pad_gts(boxes, labels)
    sizes = torch.tensor(hws, dtype=torch.int64)
    valid = GEN.valid_flags(SIZES, sizes)  # (3, N) padding of each image inside the (128, 160) batch
    return batch, boxes, labels, sizes, valid, hws


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cfg", [
    {},
    {"allowed_border": 0},
    {"allowed_border": 8, "pos_weight": 2.0},
    {"pos_iou_thr": 0.6, "neg_iou_thr": 0.3, "min_pos_iou": 0.2, "means": (0.0, 0.0, 0.1, 0.1),
     "stds": (0.1, 0.1, 0.2, 0.2)},
    {"ignore_iof_thr": 0.5},
])
def test_reference_parity_on_random_scenes(seed, cfg):
    batch, boxes, labels, sizes, valid, hws = _random_batch(seed)
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 2, generator=g) * 100
    ignore = [torch.cat([xy, xy + 30], 1), torch.zeros(0, 4), T([[0, 0, 40, 40]])]  # per-image ignore regions
    kw = {}
    if "ignore_iof_thr" in cfg:
        ign = pad_gts(ignore, min_rows=1)
        kw = {"ignore_boxes": ign.boxes, "ignore_mask": ign.mask}
    res = RetinaNetTargets(num_classes=C, **cfg)(ANCHORS, valid, sizes, batch.boxes, batch.labels, batch.mask, **kw)
    total_pos = total_neg = 0
    for i in range(3):
        overlaps = box_iou(boxes[i], ANCHORS) if len(boxes[i]) else None  # (M, N): the same floats as ours
        ref = retinanet_targets_single(
            ANCHORS, valid[i], hws[i], boxes[i], labels[i], num_classes=C, overlaps=overlaps,
            ignore_boxes=ignore[i] if kw else None, **cfg,
        )
        assert torch.equal(res.labels[i], ref.labels), (i, cfg)
        assert torch.equal(res.label_weights[i], ref.label_weights)
        assert torch.equal(res.bbox_weights[i], ref.bbox_weights)
        torch.testing.assert_close(res.bbox_targets[i], ref.bbox_targets, atol=1e-5, rtol=1e-5)
        total_pos += ref.num_pos
        total_neg += ref.num_neg
    assert (int(res.num_total_pos), int(res.num_total_neg)) == (total_pos, total_neg)
    assert int((res.labels[0] < C).sum()) > 0  # the scene has positives


def test_image_without_inside_anchors_reference_none_batched_counts_one():
    anchors = [[0, 0, 10, 10], [20, 0, 30, 10]]
    res, inputs = run(anchors, [[[0, 0, 10, 10]], [[0, 0, 10, 10]]], valid=[[True, True], [False, False]])
    assert res.labels[1].tolist() == [C, C] and res.label_weights[1].tolist() == [0.0, 0.0]
    assert res.bbox_weights[1].sum() == 0
    assert int(res.num_total_pos) == 1 + 1 and int(res.num_total_neg) == 1 + 1
    # the document (mmdetection 2.11) returns None for such an image, and get_targets None for the batch
    a, valid, sizes, gts, labels = inputs
    assert retinanet_targets_single(a, valid[1], (20, 20), gts[1], torch.tensor(labels[1])) is None
    assert reference(inputs) is None


# ------------------------------------------------------------------------------------------------
# Degenerate inputs
# ------------------------------------------------------------------------------------------------


def test_no_gts_and_all_padding_gts_make_every_valid_anchor_negative():
    anchors = T([[0, 0, 10, 10], [5, 5, 15, 15], [12, 12, 19, 19]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    sizes = torch.tensor([[20, 20], [20, 20]])
    m = RetinaNetTargets()
    for batch in (pad_gts([torch.zeros(0, 4)] * 2),  # M = 0
                  pad_gts([torch.zeros(0, 4)] * 2, min_rows=3)):  # M = 3, all padding
        res = m(anchors, valid, sizes, batch.boxes, batch.labels, batch.mask)
        assert (res.labels == C).all()
        assert res.label_weights.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
        assert (res.bbox_targets == 0).all() and (res.bbox_weights == 0).all()
        assert int(res.num_total_pos) == 2 and int(res.num_total_neg) == 2 + 3


def test_no_anchors_in_eager():
    batch = pad_gts([T([[0, 0, 10, 10]]), torch.zeros(0, 4)])
    res = RetinaNetTargets()(torch.zeros(0, 4), torch.zeros(2, 0, dtype=torch.bool), torch.tensor([[20, 20]] * 2),
                             batch.boxes, batch.labels, batch.mask)
    assert res.labels.shape == (2, 0) and res.bbox_targets.shape == (2, 0, 4) and res.bbox_weights.shape == (2, 0, 4)
    assert int(res.num_total_pos) == 2 and int(res.num_total_neg) == 2


def test_zero_area_gt_hijacks_and_encodes_to_minus_inf_never_nan():
    # min_pos_iou = 0: a zero-area gt has best IoU 0 >= 0 and takes every IoU-0 anchor (the quirk), and
    # encode has no eps: dw = log(0 / 10) = -inf, as in mmdetection. Nothing is NaN.
    anchors = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    gts = [[[0, 0, 10, 10], [25, 0, 25, 10]]]  # gt 1: zero width, height 10
    res, inputs = run(anchors, gts, [[1, 2]], image_hw=(60, 60))
    assert res.labels[0].tolist() == [2, 2, 2]
    assert not torch.isnan(res.bbox_targets).any()
    assert res.bbox_targets[0, :, 2].tolist() == [-math.inf] * 3  # dw
    assert torch.isfinite(res.bbox_targets[0, :, [0, 1, 3]]).all()
    assert_matches_reference(res, inputs)


def test_out_of_image_gt_and_ignored_rows_are_finite():
    anchors = [[0, 0, 10, 10], [8, 8, 18, 18], [15, 0, 19, 9]]
    gts = [[[100, 100, 140, 130], [0, 0, 9, 9]]]  # gt 0 lies entirely outside the 20 x 20 image
    for border in (-1, 0):
        res, inputs = run(anchors, gts, [[4, 6]], allowed_border=border)
        assert torch.isfinite(res.bbox_targets).all()
        assert_matches_reference(res, inputs, allowed_border=border)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-10, 70), st.integers(-10, 70), st.integers(0, 40), st.integers(0, 40)),
                min_size=0, max_size=5),
       st.sampled_from([-1, 0, 4]))
def test_invariants(gts, border):
    g = torch.Generator().manual_seed(len(gts))
    xy = torch.rand(60, 2, generator=g) * 70 - 5
    anchors = torch.cat([xy, xy + 2 + torch.rand(60, 2, generator=g) * 30], 1)
    boxes = T([[x, y, x + w, y + h] for x, y, w, h in gts]).reshape(-1, 4)
    batch = pad_gts([boxes], [torch.arange(len(gts))])
    valid = torch.rand(1, 60, generator=g) > 0.2
    sizes = torch.tensor([[64, 48]])
    res = RetinaNetTargets(allowed_border=border)(anchors, valid, sizes, batch.boxes, batch.labels, batch.mask)
    pos = res.labels < C
    assert torch.equal(res.bbox_weights, pos[..., None].float().expand(-1, -1, 4))
    assert not torch.isnan(res.bbox_targets).any()
    assert (res.bbox_targets[~pos] == 0).all()
    assert (res.label_weights[~valid] == 0).all() and (res.labels[~valid] == C).all()
    assert set(res.label_weights.unique().tolist()) <= {0.0, 1.0}
    assert (res.label_weights[pos] == 1).all()
    assert int(res.num_total_pos) == max(int(pos.sum()), 1)
    assert int(res.num_total_neg) == max(int(((res.label_weights == 1) & ~pos).sum()), 1)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_input_is_named():
    m = RetinaNetTargets(num_classes=3)
    a = T([[0, 0, 10, 10], [5, 5, 15, 15]])
    b = pad_gts([T([[0, 0, 10, 10]])], [torch.tensor([1])])
    v = torch.ones(1, 2, dtype=torch.bool)
    s = torch.tensor([[20, 20]])
    with pytest.raises(ValueError, match="valid_flags"):
        m(a, torch.ones(1, 3, dtype=torch.bool), s, b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="valid_flags"):
        m(a, torch.ones(2, dtype=torch.bool), s, b.boxes, b.labels, b.mask)
    with pytest.raises(TypeError, match="image_sizes"):
        m(a, v, s.float(), b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="image_sizes"):
        m(a, v, torch.tensor([[20, 20], [20, 20]]), b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="image_sizes"):
        m(a, v, torch.tensor([[-1, 20]]), b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="gt_labels"):
        m(a, v, s, b.boxes, torch.tensor([[3]]), b.mask)  # 3 = num_classes is the background label
    with pytest.raises(ValueError, match="anchors"):
        m(T([[0, 0, 0, 10], [5, 5, 15, 15]]), v, s, b.boxes, b.labels, b.mask)  # zero width
    with pytest.raises(ValueError, match="anchors"):
        m(T([[0, 0, float("nan"), 10], [5, 5, 15, 15]]), v, s, b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="gt_boxes"):
        m(a, v, s, T([[[10, 0, 0, 10]]]), b.labels, b.mask)  # inverted
    with pytest.raises(ValueError, match="ignore_boxes and ignore_mask"):
        m(a, v, s, b.boxes, b.labels, b.mask, ignore_boxes=b.boxes)
    with pytest.raises(ValueError, match="stds"):
        RetinaNetTargets(stds=(1, 1, 0, 1))
    with pytest.raises(TypeError, match="allowed_border"):
        RetinaNetTargets(allowed_border=None)


# ------------------------------------------------------------------------------------------------
# The document's shapes: the padded (1216, 800) batch of 2 images
# ------------------------------------------------------------------------------------------------


def test_document_shapes_for_the_1216_by_800_batch():
    sizes = featmap_sizes_for((1216, 800), GEN.strides)
    assert sizes == [(152, 100), (76, 50), (38, 25), (19, 13), (10, 7)]
    counts = level_counts(sizes, GEN.num_base_anchors)
    assert counts == [136800, 34200, 8550, 2223, 630] and sum(counts) == 182403
    assert level_counts_from_ids(GEN.level_ids(sizes)) == counts
    anchors = torch.cat(GEN.grid_anchors(sizes))  # (182403, 4)
    hws = torch.tensor([[800, 800], [1216, 800]])  # the document's image 3: img_shape = pad_shape (800, 800)
    valid = GEN.valid_flags(sizes, hws)
    batch = pad_gts([random_scene(800, 800, 4, seed=0).boxes, random_scene(1216, 800, 2, seed=1).boxes],
                    [torch.tensor([74, 13, 13, 0]), torch.tensor([0, 13])])
    res = RetinaNetTargets()(anchors, valid, hws, batch.boxes, batch.labels, batch.mask)
    assert res.labels.shape == (2, 182403) and res.label_weights.shape == (2, 182403)
    assert res.bbox_targets.shape == (2, 182403, 4) and res.bbox_weights.shape == (2, 182403, 4)
    labels_list, weights_list, targets_list, bbox_weights_list, pos, neg = res.to_levels(counts)
    assert [tuple(t.shape) for t in labels_list] == [(2, 136800), (2, 34200), (2, 8550), (2, 2223), (2, 630)]
    assert [tuple(t.shape) for t in targets_list] == [(2, n, 4) for n in counts]
    assert int(pos) == int((res.labels < C).sum()) and int(pos) > 2
    # image 0's padding (rows 800..1215) holds no valid anchor: all weight 0 there
    assert int(res.label_weights[0].sum()) < int(res.label_weights[1].sum())


def test_images_to_levels_list_or_batched_and_bad_counts():
    per_image = [torch.arange(10), torch.arange(10, 20)]
    levels = images_to_levels(per_image, [6, 3, 1])
    assert [lv.tolist() for lv in levels] == [[[0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15]],
                                              [[6, 7, 8], [16, 17, 18]], [[9], [19]]]
    assert all(torch.equal(a, b) for a, b in zip(levels, images_to_levels(torch.stack(per_image), [6, 3, 1])))
    with pytest.raises(ValueError, match="num_level_anchors"):
        images_to_levels(per_image, [6, 3])
    with pytest.raises(ValueError, match="num_base_anchors"):
        level_counts([(2, 2), (1, 1)], [9])


# ------------------------------------------------------------------------------------------------
# ONNX: the border path and degenerate rows
# ------------------------------------------------------------------------------------------------


@pytest.mark.onnx
def test_onnx_with_allowed_border_zero_matches_eager():
    entry = catalog.get("retinanet_targets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = entry.export(allowed_border=0)
    report = entry.verify(model, seeds=(0, 1))
    for sizes, seed, comparisons in report:
        for c in comparisons:
            assert c.close, (sizes, seed, str(c))
            if c.dtype.startswith("int"):
                assert c.exact


@pytest.mark.onnx
def test_onnx_degenerate_rows_zero_area_gt_and_all_padding(exported):
    sess = xonnx.session(exported("retinanet_targets"), ["CPUExecutionProvider"])
    module = catalog.get("retinanet_targets").build()
    anchors = T([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    batch = pad_gts([T([[0, 0, 10, 10], [25, 0, 25, 10]]), torch.zeros(0, 4), T([[0, 0, 9, 9]])],
                    [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64), torch.tensor([3])])
    valid = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    sizes = torch.tensor([[60, 60]] * 3)
    args = (anchors, valid, sizes, batch.boxes, batch.labels, batch.mask)
    eager = module(*args)
    got = xonnx.run(sess, args)
    for e, o in zip(eager, got):
        e = e.numpy()
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-5)  # -inf == -inf counts as equal
        else:
            np.testing.assert_array_equal(o, e)
    assert np.isneginf(got[2][0, :, 2]).all() and not np.isnan(got[2]).any()
    assert int(got[4]) == 3 + 1 + 1 and int(got[5]) == 1 + 2 + 1
