"""One-to-one task alignment: ultralytics' ``topk2`` on UltralyticsTaskAlignedAssigner and YOLOv10's dual
assignment (DualTaskAlignedAssigner): hand-computed cases (docs/algorithms.md §10.3 step 5b, §10.8), the per-image
reference (lessons/one_to_one.py), each dual branch against the single assigner, onnxruntime at other sizes and
degenerate inputs. Peer parity with ultralytics 8.4.190: benchmarks/peers.py (suite one_to_one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners.task_aligned_dual import DualTaskAlignedAssigner
from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner
from exportable.batching import pad_gts
from exportable.boxes import box_ciou
from exportable.examples import task_aligned_inputs
from lessons import one_to_one as ref


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def run(assigner, points, scores, preds, gts, labels=None):
    """One image: points (N, 2), scores (N, C), preds (N, 4), gts (M, 4) -> the assigner's result, batch 1."""
    gts = T(gts).reshape(-1, 4)
    labels = torch.zeros(len(gts), dtype=torch.int64) if labels is None else torch.tensor(labels)
    batch = pad_gts([gts], [labels])
    strides = torch.full((len(points),), 8.0)
    return assigner(T(points), strides, T(scores)[None], T(preds)[None], batch.boxes, batch.labels, batch.mask)


# ---------------------------------------------------------------------------------------------------------
# topk2 by hand


def test_topk2_keeps_each_gts_best_aligned_positives():
    # one 32 x 32 gt, four in-gt points predicting it exactly (CIoU u the same for all), a fifth outside;
    # t = sqrt(s) * u^6 with s = 0.25, 0.64, 0.36, 0.81 -> t ordered 3 > 1 > 2 > 0
    gt = [0.0, 0.0, 32.0, 32.0]
    points = [[4, 4], [12, 12], [20, 20], [28, 28], [40, 40]]
    scores = [[0.25], [0.64], [0.36], [0.81], [0.99]]
    preds = [gt] * 5
    u = box_ciou(T([gt]), T([gt]))[0, 0].item()
    t = [s**0.5 * u**6 for s in (0.5**2, 0.8**2, 0.6**2, 0.9**2)]
    many = run(UltralyticsTaskAlignedAssigner(), points, scores, preds, [gt])
    assert many.gt_index.tolist() == [[0, 0, 0, 0, -1]]  # topk2 off: the four in-gt points
    one = run(UltralyticsTaskAlignedAssigner(topk2=1), points, scores, preds, [gt])
    assert one.gt_index.tolist() == [[-1, -1, -1, 0, -1]]  # only the best-aligned
    assert one.target_scores[0, 3].item() == pytest.approx(t[3] * u / (t[3] + 1e-9), abs=1e-6)  # t_hat = max u
    two = run(UltralyticsTaskAlignedAssigner(topk2=2), points, scores, preds, [gt])
    assert two.gt_index.tolist() == [[-1, 0, -1, 0, -1]]
    # t_hat's maxima run over the positives that are left: 0.8 / 0.9 of max u for point 1
    assert two.target_scores[0, 1].item() == pytest.approx(t[1] * u / (t[3] + 1e-9), abs=1e-6)
    assert two.overlaps[0].tolist() == pytest.approx([0, u, 0, u, 0], abs=1e-7)


def test_topk2_runs_after_the_conflicts():
    # gts a = [0, 0, 32, 32] and b = [2, 2, 34, 34]; point 1 (16, 16) lies in both and predicts b exactly, so
    # it is a's best-aligned point (t_a = 0.9 * CIoU(a, b)^6 ~ 0.2 > a's point 0, t = 0.1) but goes to b (u 1 > 0.78).
    # topk2 = 1 then ranks a's FINAL positives: a keeps point 0. Ranking before the conflicts would leave a none.
    a, b = [0.0, 0.0, 32.0, 32.0], [2.0, 2.0, 34.0, 34.0]
    points = [[1, 1], [16, 16], [33, 33]]
    scores = [[0.01], [0.81], [0.04]]
    preds = [a, b, b]
    u_ab = box_ciou(T([a]), T([b]))[0, 0].item()
    assert 0.9 * u_ab**6 > 0.1  # a's list puts point 1 first
    many = run(UltralyticsTaskAlignedAssigner(), points, scores, preds, [a, b])
    assert many.gt_index.tolist() == [[0, 1, 1]]
    one = run(UltralyticsTaskAlignedAssigner(topk2=1), points, scores, preds, [a, b])
    assert one.gt_index.tolist() == [[0, 1, -1]]  # b keeps point 1 (t 0.9 > 0.2), a its point 0
    dual = run(DualTaskAlignedAssigner(topk=10, one_to_one_topk=10, one_to_one_topk2=1), points, scores, preds, [a, b])
    assert torch.equal(dual.one_to_one.gt_index, one.gt_index)


def test_topk2_may_leave_a_gt_no_positive():
    # the gt's only in-gt point has s = 0 at its class (t = 0); point 0, outside, is a zero of lower index and
    # takes the one place, so the gt keeps nothing (ultralytics: the backend's top-k order among zeros)
    gt = [20.0, 20.0, 40.0, 40.0]
    points = [[4, 4], [30, 30]]
    scores = [[0.9], [0.0]]
    preds = [gt, gt]
    assert run(UltralyticsTaskAlignedAssigner(), points, scores, preds, [gt]).gt_index.tolist() == [[-1, 0]]
    assert run(UltralyticsTaskAlignedAssigner(topk2=1), points, scores, preds, [gt]).gt_index.tolist() == [[-1, -1]]
    # at index 0 the zero-metric positive is the first zero itself: it stays
    swapped = run(UltralyticsTaskAlignedAssigner(topk2=1), points[::-1], scores[::-1], preds, [gt])
    assert swapped.gt_index.tolist() == [[0, -1]] and swapped.target_scores.tolist() == [[0.0, 0.0]]


def test_topk2_equal_to_topk_is_off_and_the_yolov10_one_to_one_is_topk_1():
    args = task_aligned_inputs({"B": 2, "N": 300, "M": 9, "C": 4}, torch.Generator().manual_seed(3))
    plain = UltralyticsTaskAlignedAssigner()(*args)
    for x, y in zip(plain, UltralyticsTaskAlignedAssigner(topk2=10)(*args)):
        assert torch.equal(x, y)
    one = UltralyticsTaskAlignedAssigner(topk=1)(*args)
    per_gt = [[int((one.gt_index[i] == g).sum()) for g in range(9)] for i in range(2)]
    assert max(max(row) for row in per_gt) == 1  # at most one positive per gt
    assert one.positive.sum() < plain.positive.sum()


# ---------------------------------------------------------------------------------------------------------
# Reference <-> eager <-> onnxruntime

SIZES = ({"B": 3, "N": 700, "M": 13, "C": 5}, {"B": 2, "N": 400, "M": 30, "C": 80}, {"B": 4, "N": 5, "M": 3, "C": 2})


def _check_image(res, r, i, where):
    assert torch.equal(res.gt_index[i], r.gt_index), where
    assert torch.equal(res.labels[i], r.labels), where
    torch.testing.assert_close(res.overlaps[i], r.overlaps, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.target_scores[i], r.target_scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("topk", "topk2"), [(10, 1), (7, 1), (10, 3), (3, 10)])
def test_topk2_matches_the_per_image_reference(topk, topk2):
    for seed in range(3):
        for sizes in SIZES:
            pts, st, sc, pb, gb, gl, gm = task_aligned_inputs(sizes, torch.Generator().manual_seed(seed))
            res = UltralyticsTaskAlignedAssigner(topk=topk, topk2=topk2)(pts, st, sc, pb, gb, gl, gm)
            for i in range(sizes["B"]):
                r = ref.one_to_one_assign(pts, sc[i], pb[i], gb[i][gm[i]], gl[i][gm[i]], topk=topk, topk2=topk2)
                _check_image(res, r, i, (seed, sizes, i))


@pytest.mark.parametrize("preset", ["yolov10", "yolo26"])
def test_each_dual_branch_equals_the_single_assigner_and_the_reference(preset):
    dual = getattr(DualTaskAlignedAssigner, preset)()
    single_many = UltralyticsTaskAlignedAssigner(topk=dual.tal.topk)
    single_one = UltralyticsTaskAlignedAssigner(topk=dual.one_to_one_topk, topk2=dual.one_to_one_topk2)
    for seed in range(3):
        for sizes in SIZES:
            pts, st, sc, pb, gb, gl, gm = task_aligned_inputs(sizes, torch.Generator().manual_seed(seed))
            res = dual(pts, st, sc, pb, gb, gl, gm)
            for got, want in ((res.one_to_many, single_many(pts, st, sc, pb, gb, gl, gm)),
                              (res.one_to_one, single_one(pts, st, sc, pb, gb, gl, gm))):
                for x, y in zip(got, want):
                    assert torch.equal(x, y), (seed, sizes)
            for i in range(sizes["B"]):
                many, one = ref.dual_assign(pts, sc[i], pb[i], gb[i][gm[i]], gl[i][gm[i]],
                                            one_to_one_topk=dual.one_to_one_topk,
                                            one_to_one_topk2=dual.one_to_one_topk2)
                _check_image(res.one_to_many, many, i, (seed, sizes, i))
                _check_image(res.one_to_one, one, i, (seed, sizes, i))


def test_dual_image_by_image_equals_all_at_once_bit_for_bit():
    dual = DualTaskAlignedAssigner.yolo26()
    for seed in range(2):
        args = task_aligned_inputs(SIZES[0], torch.Generator().manual_seed(seed))
        dual.tal.eager_rows = 1
        by_image = dual(*args)
        dual.tal.eager_rows = 10**9
        for x, y in zip((*by_image.one_to_many, *by_image.one_to_one), (*dual(*args).one_to_many,
                                                                         *dual(*args).one_to_one)):
            assert torch.equal(x, y)


@pytest.mark.onnx
@pytest.mark.parametrize(("name", "params"), [
    ("task_aligned_assigner_ultralytics", {"topk": 7, "topk2": 1}),
    ("task_aligned_assigner_ultralytics", {"topk2": 3}),
    ("task_aligned_dual", {"one_to_one_topk": 7, "one_to_one_topk2": 1}),
])
def test_onnxruntime_matches_eager_with_a_second_selection_at_other_sizes(name, params):
    entry = catalog.get(name)
    model = entry.export(**params)
    report = entry.verify(model, seeds=(0, 1, 2))
    assert len(report) == 3 * len(entry.test_sizes)
    for sizes, seed, comparisons in report:
        for c in comparisons:
            assert c.close and (c.exact or c.dtype.startswith("float")), (name, sizes, seed, c)


@pytest.mark.onnx
def test_dual_graph_on_degenerate_inputs(exported):
    entry = catalog.get("task_aligned_dual")
    module = entry.build()
    session = xonnx.session(exported("task_aligned_dual"))
    pts, st, sc, pb, gb, gl, gm = task_aligned_inputs({"B": 3, "N": 90, "M": 5, "C": 3},
                                                      torch.Generator().manual_seed(7))
    gb[0] = T([[400, 400, 430, 430]] * 5)  # image 0: no gt has a candidate point
    gm[0] = True
    gm[1] = False  # image 1: all padding
    cases = [(pts, st, sc, pb, gb, gl, gm),
             (pts[:1], st[:1], sc[:, :1], pb[:, :1], gb[:, :1], gl[:, :1], gm[:, :1]),  # N = 1, M = 1
             (pts, st, sc, pb, gb[:, :0], gl[:, :0], gm[:, :0])]  # M = 0
    for case, args in enumerate(cases):
        eager = entry.run_eager(module, args)
        got = xonnx.run(session, args)
        for spec, e, o in zip(entry.outputs, eager, got):
            assert o.dtype.kind != "f" or np.isfinite(o).all(), (case, spec.name)
            np.testing.assert_allclose(o, e.numpy(), atol=1e-6, rtol=0, err_msg=f"{case} {spec.name}")
        if case == 0:
            assert (got[0][:2] == -1).all() and (got[6][:2] == -1).all()  # no candidates, all padding: none
        if case == 2:
            assert (got[0] == -1).all() and (got[6] == -1).all()


def test_no_points_and_bad_hyper_parameters():
    args = task_aligned_inputs({"B": 2, "N": 0, "M": 3, "C": 4}, torch.Generator().manual_seed(0))
    res = DualTaskAlignedAssigner()(*args)
    assert res.one_to_many.gt_index.shape == (2, 0) and res.one_to_one.gt_index.shape == (2, 0)
    with pytest.raises(ValueError, match="topk2"):
        UltralyticsTaskAlignedAssigner(topk2=0)
    with pytest.raises(ValueError, match="one_to_one_topk"):
        DualTaskAlignedAssigner(topk=5, one_to_one_topk=7)
    with pytest.raises(ValueError, match="topk2"):
        DualTaskAlignedAssigner(one_to_one_topk2=0)


# ---------------------------------------------------------------------------------------------------------
# Notebook 11, exercise 3: the checker accepts the solution and rejects plausible wrong ones


def _selection(rank):
    """A second selection whose per-gt ranking is ``rank(row, mine, topk2) -> kept point indices``."""
    def fn(metric, gt_index, topk2):
        new = gt_index.clone()
        for g in range(metric.shape[0]):
            mine = gt_index == g
            kept = torch.zeros_like(mine)
            kept[rank(metric[g], mine, topk2)] = True
            new[mine & ~kept] = -1
        return new
    return fn


def _stable_top(row, k):
    return torch.sort(row, descending=True, stable=True).indices[:k]


def test_exercise_checker_accepts_the_solution(capsys):
    ref.check_second_selection(_selection(lambda row, mine, k: _stable_top(torch.where(mine, row, 0.0), k)))
    out = capsys.readouterr().out
    assert out.count("  ✓ ") == 7 and "✗" not in out, out


@pytest.mark.parametrize(("wrong", "fails_at"), [
    # ranks the gt's whole row: a point it lost in the conflicts still takes its place (topk2 before step 5)
    (lambda row, mine, k: _stable_top(row, k), "FINAL positives"),
    # among equal values the HIGHER index first
    (lambda row, mine, k: (len(row) - 1 - _stable_top(row.flip(0) * mine.flip(0), k)), "tied"),
    # ranks only among the gt's own positives (-inf elsewhere): a zero-metric positive is never outranked
    (lambda row, mine, k: _stable_top(torch.where(mine, row, float("-inf")), k), "keeps NOTHING"),
])
def test_exercise_checker_rejects_wrong_second_selections(wrong, fails_at):
    with pytest.raises(AssertionError, match=fails_at):
        ref.check_second_selection(_selection(wrong))
