"""Hungarian matching: the cost terms by hand, the exported solver's optimality against scipy on thousands of
random problems (tied costs included), reference <-> exportable <-> onnxruntime, degenerate and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from exportable import catalog, checks_disabled
from exportable import onnx as xonnx
from exportable.assigners.hungarian import HungarianAssigner, HungarianCost
from exportable.examples import hungarian_inputs
from exportable.lsa import _shortest_augmenting_paths, linear_sum_assignment
from lessons.matching import brute_force_matching, check_matching, hungarian_assign, hungarian_cost, matching_total


def scipy_totals(cost: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Each image's optimal total over its real gts, by scipy, float64."""
    out = []
    for c, m in zip(cost.double().numpy(), mask.numpy()):
        c = c[:, m]
        if c.size == 0:
            out.append(0.0)
            continue
        r, k = scipy_lsa(c)
        out.append(c[r, k].sum())
    return np.array(out)


def totals_and_validity(cost: torch.Tensor, mask: torch.Tensor, gt_index: torch.Tensor) -> np.ndarray:
    """Each image's total for a solver's ``gt_index (B, Q)``; asserts the matching is one-to-one, on real gts, of
    size min(Q, M_real)."""
    out = []
    for c, m, g in zip(cost.double(), mask, gt_index):
        matched = g[g >= 0]
        assert len(torch.unique(matched)) == len(matched), "a gt matched twice"
        assert bool(m[matched].all()), "a padded gt matched"
        assert len(matched) == min(c.shape[0], int(m.sum()))
        out.append(float(c[(g >= 0).nonzero()[:, 0], matched].sum()))
    return np.array(out)


# ------------------------------------------------------------------------------------------------
# The cost terms (step 2), by hand
# ------------------------------------------------------------------------------------------------


def test_cost_of_a_perfect_box_at_probability_one_half_by_hand():
    # p = 0.5: focal "positive" 0.25 * 0.5^2 * ln 2, "negative" 0.75 * 0.5^2 * ln 2; cls = 2 * (pos - neg)
    # = 2 * (-0.5 * 0.25 * ln 2) = -0.25 ln 2; the same box: L1 0, GIoU 1, so -2 from the GIoU term
    scores = torch.tensor([[[0.5, 0.9]]])
    box = torch.tensor([[[10.0, 20.0, 50.0, 40.0]]])
    cost = HungarianCost()(scores, box, box, torch.tensor([[0]]), torch.tensor([[True]]), torch.tensor([[100, 200]]))
    assert cost.item() == pytest.approx(-0.25 * math.log(2) - 2.0, abs=1e-6)


def test_l1_term_is_over_normalised_centre_and_size():
    # pred shifted by 20 px in x on a 200-wide image: cx differs by 0.1, w/h equal -> L1 0.1, x 5 = 0.5;
    # probabilities 0 -> the focal cost at eps is 0.25 * -log(1e-12); GIoU of two 40x20 boxes offset by 20 px
    pred = torch.tensor([[[30.0, 20.0, 70.0, 40.0]]])
    gt = torch.tensor([[[10.0, 20.0, 50.0, 40.0]]])
    args = (gt, torch.tensor([[0]]), torch.tensor([[True]]), torch.tensor([[100, 200]]))
    zero = torch.zeros(1, 1, 1)
    cost = HungarianCost(cls_weight=0.0, giou_weight=0.0)(zero, pred, *args)
    assert cost.item() == pytest.approx(0.5, abs=1e-6)
    cost = HungarianCost(cls_weight=0.0, l1_weight=0.0)(zero, pred, *args)
    giou = 400 / 1200 - 0.0  # inter 20x20, union 1200, enclosing 60x20 = 1200: nothing extra
    assert cost.item() == pytest.approx(-2 * giou, abs=1e-6)
    xyxy = HungarianCost(cls_weight=0.0, giou_weight=0.0, box_format="xyxy")(zero, pred, *args)
    assert xyxy.item() == pytest.approx(5 * (0.1 + 0.1), abs=1e-6)  # x1 and x2 each off by 0.1


def test_detr_probability_cost():
    scores = torch.tensor([[[0.2, 0.7]]])
    box = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    cost = HungarianCost.detr(l1_weight=0.0, giou_weight=0.0)(
        scores, box, box, torch.tensor([[1]]), torch.tensor([[True]]), torch.tensor([[10, 10]]))
    assert cost.item() == pytest.approx(-0.7)


def test_cost_matches_the_reference_and_padding_is_zero():
    g = torch.Generator().manual_seed(3)
    args = hungarian_inputs({"B": 3, "Q": 30, "M": 7, "C": 6}, g)
    cost = HungarianCost()(*args)
    scores, pred, gts, labels, mask, sizes = args
    for i in range(3):
        real = mask[i]
        ref = hungarian_cost(scores[i], pred[i], gts[i][real], labels[i][real], tuple(sizes[i].tolist()))
        torch.testing.assert_close(cost[i][:, real], ref, atol=1e-5, rtol=1e-5)
        assert bool((cost[i][:, ~real] == 0).all())


# ------------------------------------------------------------------------------------------------
# Step 3: the solver
# ------------------------------------------------------------------------------------------------


def test_the_hand_case_greedy_would_get_wrong():
    # query 0 is cheapest on gt 0 (1.0), but query 1 can only afford gt 0: the optimum is 2 + 1.5 + 4 = 7.5,
    # not greedy's 1 + 9 + 3 = 13
    cost = torch.tensor([[1.0, 2.0, 9.0], [1.5, 9.0, 9.0], [9.0, 3.0, 4.0]])
    expected = [1, 0, 2]
    assert brute_force_matching(cost).tolist() == expected
    mask = torch.ones(1, 3, dtype=torch.bool)
    for solver in ("scipy", "graph"):
        assert linear_sum_assignment(cost[None], mask, solver=solver)[0].tolist() == expected


@pytest.mark.parametrize(
    ("q", "m", "levels", "batch"),
    [(5, 5, 4, 300), (8, 3, 3, 300), (3, 8, 3, 200), (12, 12, 2, 100), (20, 6, 5, 100), (1, 4, 2, 50),
     (6, 6, None, 200)],
    ids=["square-ties", "more-queries-ties", "more-gts-ties", "0-or-1-costs", "detr-like-ties", "one-query",
         "continuous"],
)
def test_graph_solver_reaches_scipys_optimal_total(q, m, levels, batch):
    """1,250 random problems in all: integer costs with few levels (many tied optima) and continuous ones; random
    padding (some images with no real gt, some full)."""
    g = torch.Generator().manual_seed(q * 100 + m)
    if levels is None:
        cost = torch.rand(batch, q, m, generator=g)
    else:
        cost = torch.randint(0, levels, (batch, q, m), generator=g).float()
    mask = torch.rand(batch, m, generator=g) < 0.8  # (B, M)
    mask[0], mask[1] = False, True  # one image without gts, one full
    cost = torch.where(mask[:, None], cost, torch.randn(batch, q, m, generator=g) * 100)  # padding: anything
    got = linear_sum_assignment(cost, mask, solver="graph")
    np.testing.assert_allclose(totals_and_validity(cost, mask, got), scipy_totals(cost, mask), rtol=0, atol=1e-9)
    if levels is None:  # tie-free: the same pairs as scipy
        assert torch.equal(got, linear_sum_assignment(cost, mask, solver="scipy"))


def _gt_rows(*rows):
    """The solver's rows are gts: ``cost (1, Q, M)`` from one list of query costs per gt."""
    return torch.tensor(rows).T[None].float()


def test_bidding_places_a_row_the_loop_then_moves():
    # gts A, B, C over queries q0..q3. Round 1 only (rounds=1): A and B both bid for q0, A's gap to its second
    # choice is 1 - 0, B's 5 - 0, so B takes q0 and its v falls to -5; C takes q1 (gap 100, v(q1) = -100). A is
    # left to the loop: from A, q0 is at distance 0 + 5, q1 at 1 + 100, q2 and q3 at 100, so the search takes q0
    # (B's column) and goes on from B (u = 0 + 5): q2 at 5 + 5 - 5 = 5 is free, the sink. The path
    # root -> q0 -> q2 flips back: B moves to q2, A takes q0. Total 0 + 5 + 0 = 5 (A on q1 would leave B or C
    # paying 100). Iterations: 2 search steps + 2 flip steps, the first flip in the sink's iteration: 3.
    cost = _gt_rows([0.0, 1.0, 100.0, 100.0], [0.0, 100.0, 5.0, 100.0], [100.0, 0.0, 100.0, 100.0])
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = [[0, 2, 1, -1]]  # q0 -> A, q1 -> C, q2 -> B, q3 unmatched
    got, iterations = _shortest_augmenting_paths(cost, mask, rounds=1)
    assert got.tolist() == expected and int(iterations) == 3
    assert linear_sum_assignment(cost, mask, solver="scipy").tolist() == expected
    for rounds in (0, 2):  # the pure loop; the default, where a second round lets A outbid B for q0
        assert _shortest_augmenting_paths(cost, mask, rounds=rounds)[0].tolist() == expected


def test_bidding_alone_places_every_row_when_the_best_queries_differ():
    # each gt's cheapest query is its own (gt g on query 2g), so round 1 assigns them all and the loop never runs
    cost = _gt_rows([1.0, 3.0, 0.5, 2.0, 2.0], [2.0, 2.0, 2.0, 0.0, 2.0])  # gt 0 -> q2, gt 1 -> q3
    cost = torch.cat([cost, cost.flip(2)])  # image 1: the same gts in the other order
    mask = torch.ones(2, 2, dtype=torch.bool)
    expected = [[-1, -1, 0, 1, -1], [-1, -1, 1, 0, -1]]
    got, iterations = _shortest_augmenting_paths(cost, mask)
    assert got.tolist() == expected and int(iterations) == 0
    got, iterations = _shortest_augmenting_paths(cost, mask, rounds=0)  # without step 2 the loop does it all
    assert got.tolist() == expected and int(iterations) == 2  # one search step and one flip step per gt


@pytest.mark.parametrize("rounds", [0, 1, 3])
@pytest.mark.parametrize(("q", "m", "levels"), [(6, 6, 3), (9, 4, 2), (4, 9, 3), (15, 15, 4)])
def test_graph_solver_is_optimal_with_any_number_of_bidding_rounds(rounds, q, m, levels):
    """Tied integer costs (many optima, many equal bids) and padding: the optimal total whatever step 2 left."""
    g = torch.Generator().manual_seed(rounds * 1000 + q * 10 + m)
    cost = torch.randint(0, levels, (60, q, m), generator=g).float()
    mask = torch.rand(60, m, generator=g) < 0.8
    mask[0], mask[1] = False, True
    got, iterations = _shortest_augmenting_paths(cost, mask, rounds=rounds)
    np.testing.assert_allclose(totals_and_validity(cost, mask, got), scipy_totals(cost, mask), rtol=0, atol=1e-9)
    assert int(iterations) <= (m + 1) ** 2 + 1


def test_nan_cost_ends_at_the_iteration_cap_in_the_graph_solver():
    # the graph cannot raise: with the checks off a NaN still ends the loop (at the latest at the cap)
    cost = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(0))
    cost[1, :, 2] = float("nan")
    mask = torch.ones(3, 5, dtype=torch.bool)
    with checks_disabled():
        got, iterations = _shortest_augmenting_paths(cost, mask)
    assert got.shape == (3, 7) and bool(((got >= -1) & (got < 5)).all())
    assert int(iterations) <= 6**2 + 1
    clean = linear_sum_assignment(cost[[0, 2]], mask[[0, 2]], solver="scipy")
    assert torch.equal(got[[0, 2]], clean)  # the other images are solved as usual


def test_graph_solver_on_detr_costs_and_an_empty_query_set():
    args = hungarian_inputs({"B": 4, "Q": 100, "M": 25, "C": 10}, torch.Generator().manual_seed(1))
    scipy_res = HungarianAssigner(solver="scipy")(*args)
    graph_res = HungarianAssigner(solver="graph")(*args)
    for a, b in zip(scipy_res, graph_res):
        assert torch.equal(a, b)
    empty = linear_sum_assignment(torch.zeros(2, 0, 3), torch.ones(2, 3, dtype=torch.bool), solver="graph")
    assert empty.shape == (2, 0)


# ------------------------------------------------------------------------------------------------
# The assigner: reference parity, degenerate inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_assigner_matches_the_reference_per_image(seed):
    sizes = [{"B": 3, "Q": 50, "M": 10, "C": 5}, {"B": 2, "Q": 7, "M": 12, "C": 3}][seed % 2]
    args = hungarian_inputs(sizes, torch.Generator().manual_seed(seed))
    res = HungarianAssigner()(*args)
    scores, pred, gts, labels, mask, image_sizes = args
    for i in range(sizes["B"]):
        real = mask[i].nonzero()[:, 0]
        ref_index, ref_labels, ref_overlaps = hungarian_assign(scores[i], pred[i], gts[i][real], labels[i][real],
                                                               tuple(image_sizes[i].tolist()))
        expected = torch.where(ref_index >= 0, real[ref_index.clamp(min=0)] if len(real) else -1, -1)
        assert torch.equal(res.gt_index[i], expected)
        assert torch.equal(res.labels[i], ref_labels)
        torch.testing.assert_close(res.overlaps[i], ref_overlaps, atol=1e-6, rtol=1e-6)


def test_more_gts_than_queries_leaves_the_expensive_gts_unmatched():
    # 2 queries, 3 gts: each query sits on a gt; gt 1 has no query near it and stays unmatched
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0], [80.0, 80.0, 95.0, 95.0]]])
    pred = gts[:, [2, 0]] + 0.5  # query 0 on gt 2, query 1 on gt 0
    scores = torch.full((1, 2, 2), 0.5)
    res = HungarianAssigner()(scores, pred, gts, torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool),
                              torch.tensor([[100, 100]]))
    assert res.gt_index.tolist() == [[2, 0]] and res.labels.tolist() == [[1, 0]]
    graph = HungarianAssigner(solver="graph")(scores, pred, gts, torch.tensor([[0, 1, 1]]),
                                              torch.ones(1, 3, dtype=torch.bool), torch.tensor([[100, 100]]))
    assert graph.gt_index.tolist() == [[2, 0]]


@pytest.mark.parametrize("solver", ["scipy", "graph"])
def test_no_gts_every_query_is_no_object(solver):
    args = list(hungarian_inputs({"B": 2, "Q": 6, "M": 3, "C": 4}, torch.Generator().manual_seed(0)))
    for m in (0, 3):
        a = list(args)
        a[2], a[3], a[4] = a[2][:, :m], a[3][:, :m], torch.zeros(2, m, dtype=torch.bool)
        res = HungarianAssigner(solver=solver)(*a)
        assert (res.gt_index == -1).all() and (res.labels == 4).all() and (res.overlaps == 0).all()
        assert (res.target_scores == 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_cost_is_rejected_with_a_clear_error(bad):
    cost = torch.rand(2, 4, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    cost[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"cost: image 1 has .* \(query 2, gt 0\); every cost of a real gt must be"):
        linear_sum_assignment(cost, mask)
    mask[1, 0] = False  # on a padded gt it is ignored
    assert linear_sum_assignment(cost, mask).shape == (2, 4)


def test_nan_input_boxes_are_rejected_before_the_cost():
    args = list(hungarian_inputs({"B": 2, "Q": 6, "M": 3, "C": 4}, torch.Generator().manual_seed(0)))
    args[1] = args[1].clone()
    args[1][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pred_boxes"):
        HungarianAssigner()(*args)


def test_bad_solver_and_image_sizes():
    with pytest.raises(ValueError, match="solver"):
        HungarianAssigner(solver="auction")
    args = list(hungarian_inputs({"B": 2, "Q": 6, "M": 3, "C": 4}, torch.Generator().manual_seed(0)))
    args[5] = torch.tensor([[0, 10], [10, 10]])
    with pytest.raises(ValueError, match="image_sizes"):
        HungarianAssigner()(*args)


# ------------------------------------------------------------------------------------------------
# onnxruntime: the Loop solver on tied costs, at sizes other than the export's
# ------------------------------------------------------------------------------------------------


class _Solver(torch.nn.Module):
    def forward(self, cost, gt_mask):
        return linear_sum_assignment(cost, gt_mask, solver="graph")


@pytest.mark.onnx
def test_exported_loop_solver_is_optimal_in_onnxruntime():
    g = torch.Generator().manual_seed(0)
    model = xonnx.export(_Solver(), (torch.rand(2, 5, 3, generator=g), torch.ones(2, 3, dtype=torch.bool)),
                         input_names=["cost", "gt_mask"], output_names=["gt_index"],
                         input_dims=[("B", "Q", "M"), ("B", "M")])
    assert any(n.op_type == "Loop" for n in model.graph.node)
    sess = xonnx.session(model, ["CPUExecutionProvider"])
    for b, q, m, levels in [(64, 9, 4, 3), (64, 4, 9, 3), (16, 30, 30, 5), (8, 300, 20, None), (3, 1, 1, None)]:
        cost = torch.rand(b, q, m, generator=g) if levels is None else torch.randint(0, levels, (b, q, m), generator=g)
        cost = cost.float()
        mask = torch.rand(b, m, generator=g) < 0.7
        mask[0] = False
        got = torch.from_numpy(xonnx.run(sess, [cost.numpy(), mask.numpy()])[0])
        np.testing.assert_allclose(totals_and_validity(cost, mask, got), scipy_totals(cost, mask), atol=1e-9)
        if levels is None:
            assert torch.equal(got, linear_sum_assignment(cost, mask, solver="scipy"))


@pytest.mark.onnx
def test_catalog_graph_matches_eager_on_the_reference_scene(exported):
    entry = catalog.get("hungarian_assigner")
    sess = xonnx.session(exported("hungarian_assigner"), ["CPUExecutionProvider"])
    args = hungarian_inputs({"B": 5, "Q": 60, "M": 15, "C": 7}, torch.Generator().manual_seed(7))
    got = xonnx.run(sess, [a.numpy() for a in args])
    want = entry.build()(*args)
    for g_, w in zip(got, want):
        np.testing.assert_allclose(g_, w.numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# The notebook's exercise checker
# ------------------------------------------------------------------------------------------------


def _greedy(cost):
    q, m = cost.shape
    out, used = torch.full((q,), -1, dtype=torch.int64), set()
    for i in range(q):
        for j in torch.argsort(cost[i]).tolist():
            if j not in used:
                out[i] = j
                used.add(j)
                break
    return out


def _row_argmin(cost):
    if cost.shape[1] == 0:
        return torch.full((cost.shape[0],), -1, dtype=torch.int64)
    return cost.argmin(1)


def _maximise(cost):
    return brute_force_matching(-cost)


def _scipy_only_square(cost):  # forgets that with more queries than gts the unmatched queries are -1
    if cost.shape[1] == 0:
        return torch.zeros(cost.shape[0], dtype=torch.int64)
    r, c = scipy_lsa(cost.numpy())
    out = torch.zeros(cost.shape[0], dtype=torch.int64)
    out[r] = torch.from_numpy(c)
    return out


def test_checker_accepts_correct_solutions():
    check_matching(brute_force_matching)

    def via_scipy(cost):
        out = torch.full((cost.shape[0],), -1, dtype=torch.int64)
        if cost.shape[1]:
            r, c = scipy_lsa(cost.numpy())
            out[r] = torch.from_numpy(c)
        return out

    check_matching(via_scipy)


@pytest.mark.parametrize("wrong", [_greedy, _row_argmin, _maximise, _scipy_only_square])
def test_checker_rejects_wrong_solutions(wrong):
    with pytest.raises(AssertionError):
        check_matching(wrong)


def test_matching_total():
    cost = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert matching_total(cost, torch.tensor([1, -1, 0])) == 7.0


def test_notebook_12_solution_passes_its_checker():
    """The ``def my_matching`` of notebook 12's exercise cell, run on its own, passes the checker."""
    import ast
    import itertools
    import json
    from pathlib import Path

    nb = Path(__file__).resolve().parent.parent / "notebooks" / "12_matching_as_transport.ipynb"
    cells = json.loads(nb.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and "def my_matching(" in "".join(
        c["source"]))
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")  # committed without outputs
    tree = ast.parse(source)
    defs = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef)], type_ignores=[])
    namespace = {"torch": torch, "itertools": itertools}
    exec(compile(defs, "12_matching_as_transport:my_matching", "exec"), namespace)  # noqa: S102
    check_matching(namespace["my_matching"])
