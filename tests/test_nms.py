"""NMS: hand cases on exact IoU boundaries, a per-pair reference, greedy properties, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import onnx as xonnx
from exportable.nms import NMS, batched_nms, nms, non_max_suppression


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS, one pair at a time, float32 arithmetic as ONNX kernels use."""
    f = np.float32
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            iw = f(min(boxes[i, 2], boxes[j, 2])) - f(max(boxes[i, 0], boxes[j, 0]))
            ih = f(min(boxes[i, 3], boxes[j, 3])) - f(max(boxes[i, 1], boxes[j, 1]))
            if iw <= 0 or ih <= 0:
                continue
            inter = f(iw * ih)
            ai = f(f(boxes[i, 2] - boxes[i, 0]) * f(boxes[i, 3] - boxes[i, 1]))
            aj = f(f(boxes[j, 2] - boxes[j, 0]) * f(boxes[j, 3] - boxes[j, 1]))
            if ai <= 0 or aj <= 0:
                continue
            if f(inter / f(f(aj + ai) - inter)) > f(thr):
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def iou_np(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 and inter > 0 else 0.0


def T(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# --- hand-computed cases ---------------------------------------------------------------------

def test_iou_exactly_at_threshold_is_kept():
    # [0,0,2,1] (area 2) and [0,0,1,1] (area 1): inter 1, union 2 -> IoU exactly 0.5.
    boxes = T([[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6]])
    scores = T([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.49).tolist() == [0, 2]


def test_three_quarters_overlap():
    # [0,0,4,1] vs [0,0,3,1]: inter 3, union 4 -> 0.75.
    boxes = T([[0, 0, 3, 1], [0, 0, 4, 1]])
    scores = T([0.2, 0.6])
    assert nms(boxes, scores, 0.75).tolist() == [1, 0]
    assert nms(boxes, scores, 0.7).tolist() == [1]


def test_equal_scores_keep_lower_index_first():
    boxes = T([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    scores = T([0.5, 0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]


def test_zero_area_boxes_never_suppress():
    boxes = T([[0, 0, 10, 10], [0, 0, 0, 10], [2, 2, 2, 2], [0, 0, 10, 10]])
    scores = T([0.1, 0.9, 0.8, 0.05])
    # The two zero-area boxes are kept and suppress nothing; box 3 duplicates box 0.
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 0]


def test_max_output_and_score_threshold():
    boxes = T([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]])
    scores = T([0.1, 0.4, 0.3, 0.2])
    assert nms(boxes, scores, 0.5, max_output=2).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, max_output=0).tolist() == []
    # score == threshold is dropped (ONNX keeps score > threshold)
    assert nms(boxes, scores, 0.5, score_threshold=0.2).tolist() == [1, 2]


def test_no_boxes():
    out = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    out = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert out.shape == (0,)


def test_batched_nms_separates_groups_even_with_negative_coordinates():
    boxes = T([[-50, -50, -10, -10], [-50, -50, -10, -10], [-48, -50, -10, -10]])
    scores = T([0.9, 0.8, 0.7])
    idxs = torch.tensor([0, 1, 0])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_non_max_suppression_rows_per_image_and_class():
    boxes = T([[[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]]] * 2)  # (2, 3, 4)
    scores = T([[[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]], [[0.3, 0.9, 0.5], [0.0, 0.0, 0.0]]])  # (2, 2, 3)
    rows = non_max_suppression(boxes, scores, 0.5, score_threshold=0.05)
    assert rows.tolist() == [[0, 0, 0], [0, 0, 2], [0, 1, 2], [0, 1, 1], [1, 0, 1], [1, 0, 2]]


# --- reference and properties ----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_tied_scenes(seed):
    g = torch.Generator().manual_seed(seed)
    n = 150
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 80], 1).round()
    scores = torch.randint(0, 6, (n,), generator=g).float() / 5
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == reference_nms(boxes.numpy(), scores.numpy(), thr)


def test_batched_equals_per_group_nms():
    g = torch.Generator().manual_seed(3)
    n = 300
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], 1)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 5, (n,), generator=g)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    expected = []
    for c in range(5):
        members = (idxs == c).nonzero()[:, 0]
        expected += members[nms(boxes[members], scores[members], 0.5)].tolist()
    expected.sort(key=lambda i: -float(scores[i]))
    assert kept.tolist() == expected


box_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 30), st.integers(0, 30),
              st.integers(0, 4)),
    min_size=1, max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(box_strategy, st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0]))
def test_greedy_properties(rows, thr):
    boxes = T([[x, y, x + w, y + h] for x, y, w, h, _ in rows])
    scores = T([s / 4 for *_, s in rows])
    keep = nms(boxes, scores, thr).tolist()
    b = boxes.numpy()
    # 1. no kept pair overlaps above the threshold
    for i in keep:
        for j in keep:
            assert i == j or iou_np(b[i], b[j]) <= thr + 1e-6
    # 2. every dropped box is covered by a kept box ranked before it
    rank = {i: r for r, i in enumerate(sorted(range(len(rows)), key=lambda i: (-scores[i], i)))}
    for i in set(range(len(rows))) - set(keep):
        assert any(rank[j] < rank[i] and iou_np(b[i], b[j]) >= thr - 1e-6 for j in keep)
    # 3. highest score first, ties by index
    assert keep == sorted(keep, key=lambda i: (-float(scores[i]), i))


# --- eager vs onnxruntime at exact IoU boundaries ---------------------------------------------

@pytest.fixture(scope="module")
def nms_sessions():
    out = {}
    for thr in (0.5, 0.75):
        model = xonnx.export(NMS(thr), (torch.rand(8, 4) * 10 + T([0, 0, 10, 10]), torch.rand(8)),
                             input_names=["boxes", "scores"], output_names=["keep"],
                             input_dims=[("N", 4), ("N",)])
        out[thr] = xonnx.session(model, ["CPUExecutionProvider"])
    return out


@pytest.mark.onnx
@pytest.mark.parametrize("scale", [1.0, 0.25, 4.0, 64.0, 1024.0])
def test_boundary_iou_kept_in_eager_and_onnxruntime(nms_sessions, scale):
    # Pairs with IoU exactly 0.5 and exactly 0.75 (powers-of-two scaling keeps them exact).
    pairs = [([0, 0, 2, 1], [0, 0, 1, 1], 0.5), ([0, 0, 4, 1], [0, 0, 3, 1], 0.75),
             ([10, 10, 12, 11], [11, 10, 12, 11], 0.5), ([0, 0, 4, 4], [0, 0, 4, 3], 0.75)]
    for a, b, iou in pairs:
        boxes = T([a, b]) * scale
        scores = T([0.9, 0.8])
        for thr in (0.5, 0.75):
            expected = [0, 1] if iou <= thr else [0]
            assert nms(boxes, scores, thr).tolist() == expected
            got = xonnx.run(nms_sessions[thr], [boxes, scores])[0]
            assert got.tolist() == expected, (a, b, thr, scale)


@pytest.mark.onnx
def test_onnxruntime_matches_eager_on_tie_heavy_scenes(nms_sessions):
    g = torch.Generator().manual_seed(11)
    for n in (1, 2, 33, 1000):
        xy = torch.rand(n, 2, generator=g) * 300
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 120], 1).round()
        scores = torch.randint(0, 3, (n,), generator=g).float()
        got = xonnx.run(nms_sessions[0.5], [boxes, scores])[0]
        np.testing.assert_array_equal(got, nms(boxes, scores, 0.5).numpy())


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_named():
    boxes, scores = T([[0, 0, 1, 1]]), T([0.5])
    with pytest.raises(ValueError, match="boxes"):
        nms(T([[0, 0, 1]]), scores, 0.5)
    with pytest.raises(ValueError, match="inverted"):
        nms(T([[2, 0, 1, 1]]), scores, 0.5)
    with pytest.raises(ValueError, match="scores.*NaN"):
        nms(boxes, T([float("nan")]), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, T([0.5, 0.2]), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(boxes, scores, 1.5)
    with pytest.raises(TypeError, match="boxes"):
        nms(torch.tensor([[0, 0, 1, 1]]), scores, 0.5)
    with pytest.raises(TypeError, match="idxs"):
        batched_nms(boxes, scores, T([0.0]), 0.5)
