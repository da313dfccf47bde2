"""RetinaNetPostProcess: reference <-> exportable <-> onnxruntime, hand cases, degenerate and bad inputs."""

from __future__ import annotations

import decimal
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import checks_disabled
from exportable import onnx as xonnx
from exportable.anchors import AnchorGenerator
from exportable.nms import nms
from exportable.ordering import topk
from exportable.retinanet import RetinaNetPostProcess, logit_threshold
from lessons.retinanet_targets import retinanet_postprocess_reference

STRIDES = (8, 16, 32, 64, 128)
A = 9
OUTPUTS = ["boxes", "scores", "labels", "counts"]


def head_outputs(b, hw, c, seed, *, mean=-5.0, std=1.5, ties=False, sizes=None, strides=STRIDES):
    """Seeded raw head outputs for images padded to ``hw``: ``(cls list, box list, image_sizes)``.

    Logits ~ N(mean, std) (mean -5: a few % of pairs above score_thr 0.05); ``ties`` rounds them to 0.5 so
    that many scores are exactly equal; image sizes default to random sizes between half and all of ``hw``.
    """
    g = torch.Generator().manual_seed(seed)
    fm = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in strides]
    cls = [torch.randn(b, A * c, h, w, generator=g) * std + mean for h, w in fm]
    if ties:
        cls = [(x * 2).round() / 2 for x in cls]
    box = [torch.randn(b, A * 4, h, w, generator=g) * 0.7 for h, w in fm]
    if sizes is None:
        hs = torch.randint(hw[0] // 2, hw[0] + 1, (b,), generator=g)
        ws = torch.randint(hw[1] // 2, hw[1] + 1, (b,), generator=g)
        sizes = torch.stack([hs, ws], dim=1)
    return cls, box, torch.as_tensor(sizes, dtype=torch.int64).reshape(b, 2)


def reference(cls, box, sizes, **kw):
    return [
        retinanet_postprocess_reference([c[i] for c in cls], [d[i] for d in box], tuple(sizes[i].tolist()), **kw)
        for i in range(sizes.shape[0])
    ]


def assert_matches_reference(out, refs):
    """Counts, labels and boxes exact; scores to 1e-6 (torch's sigmoid differs by an ulp between tensor sizes)."""
    assert out.counts.tolist() == [len(r.labels) for r in refs]
    for i, r in enumerate(refs):
        n = len(r.labels)
        assert torch.equal(out.labels[i, :n], r.labels), i
        assert torch.equal(out.boxes[i, :n], r.boxes), i
        torch.testing.assert_close(out.scores[i, :n], r.scores, atol=1e-6, rtol=0)
        assert_padding(out, i, n)


def assert_padding(out, i, n):
    assert (out.labels[i, n:] == -1).all() and (out.scores[i, n:] == 0).all() and (out.boxes[i, n:] == 0).all()


def run(module, cls, box, sizes):
    with torch.no_grad():
        return module(*cls, *box, sizes)


# ---------------------------------------------------------------------------------------------------------
# reference <-> exportable eager


PARAMS = [
    {},
    {"nms_pre": 30},
    {"max_per_img": 5},
    {"iou_threshold": 0.3, "score_thr": 0.2},
    {"min_bbox_size": None},
    {"min_bbox_size": 12.0, "score_thr": 0.0},
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults")
@pytest.mark.parametrize("c", [5, 80])
def test_reference_parity_on_random_head_outputs(c, params):
    module = RetinaNetPostProcess(num_classes=c, **params)
    for seed, ties in ((0, False), (1, True)):
        cls, box, sizes = head_outputs(2, (128, 160), c, seed, ties=ties)  # levels 16x20 ... 1x2
        assert_matches_reference(run(module, cls, box, sizes), reference(cls, box, sizes, num_classes=c, **params))


def test_reference_parity_with_many_ties_and_saturated_logits():
    # Logits on a coarse grid (ties everywhere) and some above 17, where float32 sigmoid is exactly 1.0.
    module = RetinaNetPostProcess(num_classes=5, nms_pre=40)
    cls, box, sizes = head_outputs(3, (64, 96), 5, 7, mean=0.0, std=8.0, ties=True)
    out = run(module, cls, box, sizes)
    assert (out.scores == 1.0).any()
    assert_matches_reference(out, reference(cls, box, sizes, num_classes=5, nms_pre=40))


def test_other_level_counts_through_forward_levels():
    gen = AnchorGenerator.retinanet(strides=(8, 16, 32))
    module = RetinaNetPostProcess(num_classes=4, generator=gen)
    cls, box, sizes = head_outputs(2, (96, 64), 4, 3, strides=(8, 16, 32))
    with pytest.raises(ValueError, match="forward_levels"):
        module(*cls, *cls[:2], *box, *box[:2], sizes)
    out = module.forward_levels(cls, box, sizes)
    assert_matches_reference(out, reference(cls, box, sizes, num_classes=4, generator=gen))


def test_per_class_nms_gives_the_same_detections_as_the_offset_trick():
    # The reference shifts classes apart as mmcv does; plain per-class NMS agrees away from float32 ties
    # of the IoU with the threshold (C = 5: offsets of a few hundred pixels).
    c = 5
    cls, box, sizes = head_outputs(2, (128, 160), c, 11)
    out = run(RetinaNetPostProcess(num_classes=c), cls, box, sizes)
    wide = reference(cls, box, sizes, num_classes=c, max_per_img=10_000)  # every box NMS keeps
    no_nms = reference(cls, box, sizes, num_classes=c, iou_threshold=1.0, max_per_img=10_000)  # all candidates
    for i in range(2):
        cand = no_nms[i]
        kept = []
        for k in range(c):
            idx = (cand.labels == k).nonzero()[:, 0]
            kept += idx[nms(cand.boxes[idx], cand.scores[idx], 0.5)].tolist()
        kept = sorted(kept, key=lambda j: (-float(cand.scores[j]), j))  # merge the classes by score
        assert torch.equal(cand.boxes[kept], wide[i].boxes) and torch.equal(cand.labels[kept], wide[i].labels)
        n = int(out.counts[i])
        assert n == 100 and torch.equal(cand.boxes[kept][:n], out.boxes[i, :n])


# ---------------------------------------------------------------------------------------------------------
# hand cases and degenerate inputs


def hand_case(logits: dict[tuple[int, int], float], c=80, hw=(64, 64)):
    """All logits -10 except ``{(a, class): logit}`` at level 0, cell (y, x) = (3, 3); deltas 0, so each
    box is its anchor: a = 3 is the 32 x 32 square [8, 8, 40, 40], a = 4 the 40.3 px square around the same
    centre (IoU 0.63 with it)."""
    cls, box, sizes = head_outputs(1, hw, c, 0, sizes=[hw])
    cls = [torch.full_like(x, -10.0) for x in cls]
    box = [torch.zeros_like(x) for x in box]
    for (a, k), v in logits.items():
        cls[0][0, a * c + k, 3, 3] = v
    return cls, box, sizes


@pytest.mark.parametrize(
    "logits, labels, first_a",
    [
        ({(3, 7): 2.0, (4, 7): 1.0}, [7], 3),  # one class, overlapping: the better one is kept
        ({(3, 7): 1.5, (4, 7): 1.5}, [7], 3),  # tie: the lower index (a = 3) is kept
        ({(3, 7): 1.0, (4, 7): 2.0}, [7], 4),  # the bigger square wins when it scores higher
        ({(3, 7): 2.0, (3, 9): 1.0}, [7, 9], 3),  # the same box in two classes: both kept
        ({(3, 7): 2.0, (4, 9): 1.0}, [7, 9], 3),  # overlapping boxes of two classes: both kept
    ],
)
def test_hand_cases(logits, labels, first_a):
    cls, box, sizes = hand_case(logits)
    out = run(RetinaNetPostProcess(), cls, box, sizes)
    n_boxes = len(labels)
    assert out.counts.tolist() == [n_boxes]
    assert out.labels[0, :n_boxes].tolist() == labels
    side = 32 * 2 ** (1 / 3) if first_a == 4 else 32.0
    assert out.boxes[0, 0].tolist() == pytest.approx([24 - side / 2, 24 - side / 2, 24 + side / 2, 24 + side / 2])
    assert out.scores[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(max(logits.values()))).item())
    assert_padding(out, 0, n_boxes)
    assert_matches_reference(out, reference(cls, box, sizes))


def test_nothing_above_score_thr_gives_count_zero():
    cls, box, sizes = head_outputs(3, (64, 96), 80, 2, mean=-9.0, std=0.5)
    cls[0][1] = 5.0  # only image 1 has detections
    out = run(RetinaNetPostProcess(), cls, box, sizes)
    assert out.counts[0] == 0 and out.counts[2] == 0 and out.counts[1] > 0
    for i in (0, 2):
        assert_padding(out, i, 0)
    assert_matches_reference(out, reference(cls, box, sizes))


def test_score_exactly_at_the_threshold_is_dropped():
    assert logit_threshold(0.5) == 0.0  # sigmoid(0) = 0.5 is not > 0.5: logit 0 is dropped, 1e-6 kept
    cls, box, sizes = hand_case({(3, 7): 0.0, (5, 2): 1e-6})
    out = run(RetinaNetPostProcess(score_thr=0.5), cls, box, sizes)
    assert out.counts.tolist() == [1] and out.labels[0, 0] == 2


def test_tiny_feature_maps_have_fewer_pairs_than_nms_pre():
    # 8 x 8 image: every level is 1 x 1, 9 * 80 = 720 pairs < nms_pre = 1000
    cls, box, sizes = head_outputs(2, (8, 8), 80, 4, mean=-1.0)
    assert all(x.shape[-2:] == (1, 1) for x in cls)
    out = run(RetinaNetPostProcess(), cls, box, sizes)
    assert out.counts.min() > 0
    assert_matches_reference(out, reference(cls, box, sizes))


def test_zero_size_boxes_are_dropped_as_min_bbox_size_0_says():
    # A small image in a big padded batch: anchors over the padding clip to zero-width boxes.
    cls, box, _ = head_outputs(1, (128, 160), 5, 5, mean=2.0, std=0.1)
    sizes = torch.tensor([[40, 24]])
    keep_all = run(RetinaNetPostProcess(num_classes=5, min_bbox_size=None, max_per_img=1000), cls, box, sizes)
    mmdet = run(RetinaNetPostProcess(num_classes=5, max_per_img=1000), cls, box, sizes)
    wh = lambda o: (o.boxes[0, :, 2:] - o.boxes[0, :, :2])[: int(o.counts[0])]  # noqa: E731
    assert (wh(keep_all) == 0).any()
    assert (wh(mmdet) > 0).all()
    assert_matches_reference(mmdet, reference(cls, box, sizes, num_classes=5, max_per_img=1000))


def test_outputs_are_sorted_clipped_and_capped():
    cls, box, sizes = head_outputs(3, (128, 160), 80, 6, mean=-3.0)
    out = run(RetinaNetPostProcess(max_per_img=50), cls, box, sizes)
    assert out.counts.tolist() == [50, 50, 50]
    assert (out.scores[:, 1:] <= out.scores[:, :-1]).all()
    assert (out.scores > 0.05).all()
    h, w = sizes[:, 0, None].float(), sizes[:, 1, None].float()
    assert (out.boxes[..., 2] <= w).all() and (out.boxes[..., 3] <= h).all() and (out.boxes >= 0).all()
    assert out.boxes.dtype == torch.float32 and out.labels.dtype == torch.int64 and out.counts.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------------
# the two facts the static graph relies on


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-6, 6), min_size=1, max_size=60),
    k=st.integers(1, 70),
    thr=st.integers(-6, 6),
)
def test_topk_then_mask_equals_filter_then_topk(values, k, thr):
    x = torch.tensor(values, dtype=torch.float32) / 2  # many ties
    # mmdetection: filter > thr, then the best k (stable: ties by index)
    idx = (x > thr / 2).nonzero()[:, 0]
    want = idx[torch.sort(x[idx], descending=True, stable=True).indices][:k].tolist()
    # the graph: one top-k of min(k, N) over everything, then mask <= thr
    vals, top = topk(x, k)
    assert top[vals > thr / 2].tolist() == want


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 1 - 1e-6))
def test_logit_threshold_is_the_last_float32_that_does_not_pass(s):
    t = np.float32(logit_threshold(s))
    after = np.nextafter(t, np.float32(np.inf))
    with decimal.localcontext(decimal.Context(prec=100)):  # exact enough even next to logit 0 (1e-45 steps)
        sigmoid = lambda v: 1 / (1 + (-decimal.Decimal(float(v))).exp())  # noqa: E731
        assert sigmoid(t) <= decimal.Decimal(s) < sigmoid(after)
    assert logit_threshold(0.0) == -math.inf and logit_threshold(1.0) == math.inf


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_names_the_argument():
    module = RetinaNetPostProcess(num_classes=5)
    cls, box, sizes = head_outputs(2, (64, 64), 5, 0)
    bad = [x.clone() for x in cls]
    bad[2] = torch.zeros(2, A * 5 + 1, *cls[2].shape[-2:])
    with pytest.raises(ValueError, match=r"cls_2: expected .*A \* C = 9 \* 5 = 45 channels"):
        module(*bad, *box, sizes)
    bad = [x.clone() for x in cls]
    bad[3][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="cls_3: contains NaN"):
        module(*bad, *box, sizes)
    bad = [x.clone() for x in box]
    bad[1] = bad[1][..., :-1]
    with pytest.raises(ValueError, match=r"box_1: .*does not match cls_1"):
        module(*cls, *bad, sizes)
    bad = [x.clone() for x in box]
    bad[4] = torch.zeros(2, 4 * A + 4, *box[4].shape[-2:])
    with pytest.raises(ValueError, match="box_4: expected"):
        module(*cls, *bad, sizes)
    with pytest.raises(ValueError, match=r"cls_0: batch 2 does not match image_sizes"):
        module(*cls, *box, sizes[:1])
    with pytest.raises(TypeError, match="image_sizes"):
        module(*cls, *box, sizes.float())
    with pytest.raises(ValueError, match="image_sizes"):
        module(*cls, *box, -sizes)
    with pytest.raises(ValueError, match="num_anchors"):
        RetinaNetPostProcess(num_anchors=3)
    with pytest.raises(ValueError, match="nms_pre"):
        RetinaNetPostProcess(nms_pre=0)
    with checks_disabled():  # the channel count is a static dim: checked even without the eager checks
        bad = [x.clone() for x in cls]
        bad[0] = torch.zeros(2, A * 80, *cls[0].shape[-2:])
        with pytest.raises(ValueError, match="cls_0"):
            module(*bad, *box, sizes)


# ---------------------------------------------------------------------------------------------------------
# onnxruntime (the catalog's export: C = 80, shared with tests/test_catalog.py)


@pytest.fixture(scope="module")
def ort_session(exported):
    return xonnx.session(exported("retinanet_postprocess"), ["CPUExecutionProvider"])


ORT_CASES = {
    "B1-128x160": lambda: head_outputs(1, (128, 160), 80, 20),
    "B3-64x96-ties": lambda: head_outputs(3, (64, 96), 80, 21, mean=-3.0, ties=True),
    "B2-1x1-levels": lambda: head_outputs(2, (8, 8), 80, 22, mean=-1.0),
    "B3-nothing-passes": lambda: head_outputs(3, (40, 40), 80, 23, mean=-9.0, std=0.5),
    "B1-hand-case": lambda: hand_case({(3, 7): 1.5, (4, 7): 1.5, (3, 9): 1.0}),
}


@pytest.mark.onnx
@pytest.mark.parametrize("case", list(ORT_CASES))
def test_onnxruntime_matches_eager_and_reference(case, ort_session):
    cls, box, sizes = ORT_CASES[case]()
    module = RetinaNetPostProcess()
    eager = run(module, cls, box, sizes)
    got = xonnx.run(ort_session, [*cls, *box, sizes])
    for cmp in xonnx.compare(OUTPUTS, eager, got, atol=1e-5, rtol=1e-6):
        assert cmp.close, f"{case}: {cmp}"
        if cmp.dtype == "int64":
            assert cmp.exact, f"{case}: {cmp}"
    assert_matches_reference(eager, reference(cls, box, sizes))
    if case == "B3-nothing-passes":
        assert got[3].tolist() == [0, 0, 0]


@pytest.mark.onnx
def test_graph_is_one_nms_and_five_topks_and_stays_dynamic(exported):
    model = exported("retinanet_postprocess")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("NonMaxSuppression") == 1 and ops.count("TopK") == 5
    assert not any(op in ("Loop", "If", "NonZero") for op in ops)
    dims = xonnx.dynamic_dims(model)
    for i in range(5):
        assert dims[f"cls_{i}"] == ["B", 720, f"H{i}", f"W{i}"] and dims[f"box_{i}"] == ["B", 36, f"H{i}", f"W{i}"]
    assert dims["image_sizes"] == ["B", 2] and dims["boxes"] == ["B", 100, 4] and dims["counts"] == ["B"]
