"""DynamicSoftLabelAssigner (RTMDet): a case computed by hand from the formula, the soft classification
tables vs the naive (n, M, C) sum, reference parity on random scenes, eager blocks vs one block,
eager vs onnxruntime at other sizes, degenerate inputs, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners import dynamic_soft_label as dsl_module
from exportable.assigners.dynamic_soft_label import DynamicSoftLabelAssigner, soft_cls_tables
from exportable.batching import pad_gts
from exportable.examples import dynamic_soft_label_inputs
from lessons.dynamic_soft_label import benchmark_case, dsl_assign, soft_cls_cost, to_mmdet


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def batch_of(points, scores_per_image, preds_per_image, boxes_per_image, labels_per_image, stride=8.0):
    """Padded batch in forward order from per-image lists."""
    batch = pad_gts([T(x).reshape(-1, 4) for x in boxes_per_image],
                    [torch.tensor(lab, dtype=torch.int64) for lab in labels_per_image])
    pts = T(points)
    return (pts, torch.full((len(pts),), stride), T(scores_per_image), T(preds_per_image),
            batch.boxes, batch.labels, batch.mask)


def assert_same_as_reference(args, res, **params):
    points, strides, scores, preds, boxes, labels, mask = args
    for i in range(scores.shape[0]):
        ref = dsl_assign(points, strides, scores[i], preds[i], boxes[i][mask[i]], labels[i][mask[i]],
                         num_classes=scores.shape[2], **params)
        real = torch.cumsum(mask[i], 0) - 1  # padded row -> its index among the real gts
        got = torch.where(res.gt_index[i] >= 0, real[res.gt_index[i].clamp(min=0)], -1)
        assert torch.equal(got, ref.gt_index), i
        assert torch.equal(res.labels[i], ref.labels), i
        assert torch.equal(res.overlaps[i], ref.overlaps), i


# ------------------------------------------------------------------------------------------------
# A case computed by hand (plain Python floats, docs/algorithms.md §12.1)
# ------------------------------------------------------------------------------------------------

G0, G1 = [0.0, 0.0, 32.0, 16.0], [8.0, 0.0, 24.0, 16.0]  # G1 is nested in G0, another class
HAND = dict(
    points=[[4.0, 8.0], [12.0, 8.0], [20.0, 8.0], [28.0, 8.0], [36.0, 8.0], [44.0, 8.0]],  # stride 8
    # p1, p2 predict G0 exactly; p5 too, but p5 lies outside every gt: no candidate, its IoU 1 must not count
    preds=[[-4.0, 0.0, 12.0, 16.0], G0, G0, [20.0, 0.0, 36.0, 16.0], [28.0, 0.0, 44.0, 16.0], G0],
    scores=[[0.2, 0.1], [0.6, 0.8], [0.7, 0.3], [0.2, 0.2], [0.5, 0.5], [0.9, 0.1]],
)


def hand_cost(p, label, u, distance_in_strides):
    """sum_c BCE(p_c, t_c) * (t_c - p_c)^2 with t = onehot(label) * u, + 3 * -log(u + 1e-7) + 10^(d - 3)."""
    soft = 0.0
    for c, pc in enumerate(p):
        t = u if c == label else 0.0
        soft += -(t * math.log(pc) + (1 - t) * math.log(1 - pc)) * (t - pc) ** 2
    return soft + 3.0 * -math.log(u + 1e-7) + 10.0 ** (distance_in_strides - 3.0)


def test_hand_case_costs_dynamic_k_and_a_conflict_that_leaves_a_gt_with_none():
    args = batch_of(HAND["points"], [HAND["scores"]], [HAND["preds"]], [[G0, G1]], [[0, 1]])
    points, strides, scores, preds, boxes, labels, _ = args
    ref = dsl_assign(points, strides, scores[0], preds[0], boxes[0], labels[0])
    # 2. candidates: p0..p3 lie strictly inside G0 (x < 32); p4 (x = 36) and p5 inside nothing
    assert ref.candidates.tolist() == [True, True, True, True, False, False]
    # IoUs of p0..p3 by hand: with G0 1/3, 1, 1, 1/3 (p0: 12 x 16 of 256 + 512 - 192); with G1 1/7, 1/2, 1/2, 1/7
    ious = [[1 / 3, 1 / 7], [1.0, 0.5], [1.0, 0.5], [1 / 3, 1 / 7]]
    torch.testing.assert_close(ref.ious, T(ious), rtol=1e-6, atol=0)
    centres = [(16.0, 8.0), (16.0, 8.0)]
    expected = [[hand_cost(HAND["scores"][i], g, ious[i][g], abs(HAND["points"][i][0] - centres[g][0]) / 8.0)
                 for g in range(2)] for i in range(4)]
    torch.testing.assert_close(ref.cost, T(expected), rtol=1e-5, atol=1e-5)
    # the exportable module's cost over every prior (+inf for the non-candidates p4, p5 comes later)
    a = DynamicSoftLabelAssigner()
    cost, _ = a._cost(points, strides, preds, soft_cls_tables(scores), boxes, labels)  # (1, 2, 6)
    torch.testing.assert_close(cost[0, :, :4].T, T(expected), rtol=1e-5, atol=1e-5)
    # 4. k(G0) = int(1 + 1 + 1/3 + 1/3) = 2 (3 if p5's IoU 1 counted); k(G1) = int(1.29) = 1
    assert ref.dynamic_ks.tolist() == [2, 1]
    # 5. costs by hand: G0 p0..p3 = 3.34, 1.11, 0.067, 3.35 -> marks p2, p1; G1 = 5.88, 2.49, 2.70, 5.88 -> p1
    # 6. p1 is marked twice: G0 (1.11) is cheaper than G1 (2.49), so G1 ends with no positive (no second round)
    assert ref.gt_index.tolist() == [-1, 0, 0, -1, -1, -1]
    assert ref.positives_per_gt.tolist() == [2, 0] and ref.conflicts == 1
    res = a(*args)
    assert res.gt_index[0].tolist() == [-1, 0, 0, -1, -1, -1]
    assert res.labels[0].tolist() == [2, 0, 0, 2, 2, 2]  # C = 2 for every non-positive
    assert res.overlaps[0].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert torch.equal(res.target_scores, res.overlaps)  # the soft target is the IoU (0 off positives)
    gt_inds, max_overlaps = to_mmdet(ref.gt_index, ref.overlaps)
    assert gt_inds.tolist() == [0, 1, 1, 0, 0, 0] and max_overlaps[0] == -1e8


def test_a_gt_without_candidate_takes_the_first_overflowed_candidate_another_gt_left():
    """A gt far from every point has no candidate of its own, but competes for G0's: all its costs overflow
    float32 (about 71 strides away), so they tie and the lowest prior index that G0 did not mark is its."""
    far = [400.0, 400.0, 420.0, 420.0]
    args = batch_of(HAND["points"], [HAND["scores"]], [HAND["preds"]], [[G0, far]], [[0, 1]])
    res = DynamicSoftLabelAssigner()(*args)
    assert res.gt_index[0].tolist() == [1, 0, 0, -1, -1, -1]
    assert res.overlaps[0, 0] == 0.0 and res.labels[0, 0] == 1
    assert_same_as_reference(args, res)
    # alone in its image it has no candidate at all: nothing is positive
    alone = batch_of(HAND["points"], [HAND["scores"]], [HAND["preds"]], [[far]], [[1]])
    res = DynamicSoftLabelAssigner()(*alone)
    assert (res.gt_index == -1).all() and (res.labels == 2).all() and (res.overlaps == 0).all()


# ------------------------------------------------------------------------------------------------
# Step 3: the soft classification cost without the (n, M, C) tensor
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3, 80])
def test_soft_cls_tables_equal_the_naive_sum_including_scores_0_and_1(c):
    g = torch.Generator().manual_seed(c)
    scores = torch.rand(1, 50, c, generator=g)  # (1, N, C)
    scores[0, :5] = torch.randint(0, 2, (5, c), generator=g).float()  # exactly 0 and 1: the -100 clamp
    labels = torch.randint(0, c, (7,), generator=g)
    pred = torch.rand(50, 2, generator=g) * 50
    preds = torch.cat([pred, pred + 10 + torch.rand(50, 2, generator=g) * 20], 1)[None]  # (1, 50, 4)
    gts = torch.cat([pred[:7] - 3, pred[:7] + 25], 1)[None]  # (1, 7, 4)
    naive = soft_cls_cost(scores[0], labels, dsl_module._box_iou(preds[0], gts[0]))  # (50, 7)
    p, l0, diff, rest = soft_cls_tables(scores)
    iou = dsl_module._box_iou(gts, preds)[0]  # (7, 50)
    rows = labels  # B = 1: row = label
    fast = (iou - p[rows]) ** 2 * (l0[rows] + iou * diff[rows]) + rest[rows]  # (7, 50)
    torch.testing.assert_close(fast.T, naive, rtol=1e-5, atol=2e-4)


# ------------------------------------------------------------------------------------------------
# Reference <-> exportable <-> onnxruntime
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_reference_parity_on_random_scenes(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = dict(B=3, N=int(torch.randint(8, 400, (1,), generator=g)), M=int(torch.randint(1, 15, (1,), generator=g)),
                 C=int(torch.randint(1, 12, (1,), generator=g)))
    args = dynamic_soft_label_inputs(sizes, g)  # tied scores, duplicated predictions, far gts, padding
    assert_same_as_reference(args, DynamicSoftLabelAssigner()(*args))


def test_reference_parity_with_other_hyper_parameters():
    g = torch.Generator().manual_seed(5)
    args = dynamic_soft_label_inputs(dict(B=2, N=300, M=12, C=5), g)
    params = dict(soft_center_radius=1.5, topk=4, iou_weight=1.0)
    assert_same_as_reference(args, DynamicSoftLabelAssigner(**params)(*args), **params)


def test_workload_images_match_the_reference():
    module, args = benchmark_case("yolox-m20@2")
    assert_same_as_reference(args, module(*args))


def test_eager_blocks_of_gt_rows_give_the_one_block_result(monkeypatch):
    g = torch.Generator().manual_seed(3)
    args = dynamic_soft_label_inputs(dict(B=2, N=350, M=23, C=4), g)
    a = DynamicSoftLabelAssigner()
    whole = a(*args)
    monkeypatch.setattr(dsl_module, "CHUNK_PAIRS", 1)  # one gt row per block
    blocks = a(*args)
    for x, y in zip(whole, blocks):
        assert torch.equal(x, y)


def tied_scene(sizes, seed):
    """Seeded inputs with gts repeated (same box and class: equal cost rows, step 6 decided by the lower gt
    index) at rows that fall into different blocks, and one padded row in the middle."""
    args = list(dynamic_soft_label_inputs(sizes, torch.Generator().manual_seed(seed)))
    m = sizes["M"]
    boxes, labels, mask = args[4].clone(), args[5].clone(), args[6].clone()
    for src, dst in ((0, m - 1), (1, m // 2), (m // 2 + 1, 2)):
        if 0 <= src < m and 0 <= dst < m and src != dst:
            boxes[:, dst], labels[:, dst] = boxes[:, src], labels[:, src]
    if m > 4:
        mask[0, 3] = False
    return (*args[:4], boxes, labels, mask)


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_eager_row_blocks_of_any_size_give_the_one_block_result_with_tied_gts(monkeypatch, rows):
    args = tied_scene(dict(B=2, N=300, M=11, C=4), rows)  # M = 11: no block size here divides it but 1
    a = DynamicSoftLabelAssigner()
    monkeypatch.setattr(dsl_module, "CHUNK_PAIRS", 2**40)  # one block
    whole = a(*args)
    monkeypatch.setattr(dsl_module, "CHUNK_PAIRS", rows * 2 * 300)  # `rows` gt rows per block (B * N pairs each)
    blocks = a(*args)
    for x, y in zip(whole, blocks):
        assert torch.equal(x, y)
    assert (whole.gt_index >= 0).any()
    assert_same_as_reference(args, blocks)


def test_in_row_blocks_folds_in_row_order_and_joins_the_outs(monkeypatch):
    # a running column minimum with its first row (the step 6 fold) and a per-row output, vs the unblocked ops
    x = torch.randint(0, 4, (2, 7, 5), generator=torch.Generator().manual_seed(0)).float()  # (B, M, N) ties

    def fold(carry, start, block):
        least, first = carry
        value, arg = block.min(dim=1)
        better = value < least
        return (torch.where(better, value, least), torch.where(better, arg + start, first)), (block.sum(dim=2),)

    init = (torch.full((2, 5), float("inf")), torch.zeros(2, 5, dtype=torch.int64))
    for rows in (1, 2, 3, 7, 8):
        monkeypatch.setattr(dsl_module, "CHUNK_PAIRS", rows)
        (least, first), (sums,) = dsl_module._in_row_blocks(fold, init, 7, 1, x)
        assert torch.equal(least, x.min(dim=1).values) and torch.equal(first, x.min(dim=1).indices), rows
        assert torch.equal(sums, x.sum(dim=2)), rows


@pytest.mark.onnx
def test_onnxruntime_graph_row_blocks_match_eager_at_other_sizes_with_ties(monkeypatch):
    """The graph's gt-row Scan with 3 rows per block (its padded last block: M + 1 rows, a multiple of 3 or not),
    vs eager in its own blocks, on tied scenes and at M = 0 and 1."""
    entry = catalog.get("dynamic_soft_label_assigner")
    monkeypatch.setattr(dsl_module, "GRAPH_ROWS", 3)
    model = entry.export()
    monkeypatch.undo()
    bodies = [a.g for node in model.graph.node if node.op_type == "Scan" for a in node.attribute if a.name == "body"]
    assert any(node.op_type == "Scan" for body in bodies for node in body.node)  # the gt-row Scan is in the graph
    sess = xonnx.session(model, ["CPUExecutionProvider"])
    module = entry.build()
    for i, m in enumerate((0, 1, 2, 3, 5, 8, 11, 14)):
        sizes = dict(B=2 + i % 2, N=90 + 37 * i, M=m, C=3 + i % 3)
        args = tied_scene(sizes, i) if m else dynamic_soft_label_inputs(sizes, torch.Generator().manual_seed(i))
        eager = entry.run_eager(module, args)
        got = xonnx.run(sess, args)
        for c in xonnx.compare([o.name for o in entry.outputs], eager, got, atol=0.0):
            assert c.exact, (m, str(c))


@pytest.mark.onnx
def test_onnxruntime_on_a_workload_batch_and_degenerate_images(exported):
    entry = catalog.get("dynamic_soft_label_assigner")
    sess = xonnx.session(exported("dynamic_soft_label_assigner"), ["CPUExecutionProvider"])
    module = entry.build()
    _, (p, s, sc, pb, gb, gl, gm) = benchmark_case("yolox-m20@2")
    gm = gm.clone()
    gm[1, 5:] = False  # image 1 partly padded ...
    gm[1, 2] = False  # ... with a hole in the middle
    far = [400.0, 400.0, 420.0, 420.0]
    hand = batch_of(HAND["points"], [HAND["scores"]] * 3, [HAND["preds"]] * 3, [[G0, far], [], [far]],
                    [[0, 1], [], [1]])
    several = tied_scene(dict(B=2, N=500, M=300, C=4), 7)  # M + 1 = 301 rows: 3 blocks of 101 in the graph
    for a in ((p, s, sc, pb, gb, gl, gm), hand, several):
        eager = entry.run_eager(module, a)
        got = xonnx.run(sess, a)
        for c in xonnx.compare([o.name for o in entry.outputs], eager, got, atol=entry.atol):
            assert c.exact if c.dtype.startswith("int") else c.close, str(c)


# ------------------------------------------------------------------------------------------------
# Degenerate inputs and bad input
# ------------------------------------------------------------------------------------------------


def test_no_gts_all_padding_and_no_priors():
    a = DynamicSoftLabelAssigner()
    args = batch_of(HAND["points"], [HAND["scores"]] * 2, [HAND["preds"]] * 2, [[], []], [[], []])  # M = 0
    res = a(*args)
    assert res.gt_index.shape == (2, 6) and (res.gt_index == -1).all() and (res.labels == 2).all()
    assert (res.overlaps == 0).all() and (res.target_scores == 0).all() and (res.weights == 1).all()
    args = batch_of(HAND["points"], [HAND["scores"]] * 2, [HAND["preds"]] * 2, [[G0], [G1]], [[0], [1]])
    padded = args[:6] + (torch.zeros_like(args[6]),)  # every row padding
    assert (a(*padded).gt_index == -1).all()
    none = (args[0][:0], args[1][:0], args[2][:, :0], args[3][:, :0], *args[4:])  # N = 0
    assert a(*none).gt_index.shape == (2, 0)


def test_bad_input_is_named():
    a = DynamicSoftLabelAssigner()
    args = batch_of(HAND["points"], [HAND["scores"]], [HAND["preds"]], [[G0, G1]], [[0, 1]])
    p, s, sc, pb, gb, gl, gm = args
    with pytest.raises(ValueError, match="pred_scores"):
        a(p, s, sc * 3 - 1, pb, gb, gl, gm)  # logits, not probabilities
    with pytest.raises(TypeError, match="pred_scores"):
        a(p, s, sc.double(), pb, gb, gl, gm)
    with pytest.raises(ValueError, match="gt_labels"):
        a(p, s, sc, pb, gb, gl + 1, gm)  # class 2 of C = 2
    with pytest.raises(ValueError, match="strides"):
        a(p, s * 0, sc, pb, gb, gl, gm)
    with pytest.raises(ValueError, match="topk"):
        DynamicSoftLabelAssigner(topk=0)
    with pytest.raises(ValueError, match="iou_weight"):
        DynamicSoftLabelAssigner(iou_weight=-1.0)


# ------------------------------------------------------------------------------------------------
# Notebook 11's exercises: the checkers accept the notebook's solutions and reject plausible mistakes
# ------------------------------------------------------------------------------------------------


def _solution(name):
    import ast
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "notebooks" / "11_soft_and_one_to_one.ipynb"
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"def {name}(" in source:
            defs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
            namespace = {"torch": torch}
            exec(compile(ast.Module(body=defs, type_ignores=[]), name, "exec"), namespace)
            return namespace[name]
    raise LookupError(name)


def _soft_hard_target(scores, labels, ious):  # target 1 at the gt's class: SimOTA's cost, weighted
    target = torch.nn.functional.one_hot(labels, scores.shape[1]).float()[None].expand(scores.shape[0], -1, -1)
    p = scores[:, None, :].expand_as(target)
    return (torch.nn.functional.binary_cross_entropy(p, target, reduction="none") * (target - p) ** 2).sum(-1)


def _soft_gt_class_only(scores, labels, ious):  # mmyolo's shortcut: the other classes are left out
    p = scores[:, labels]  # (n, M)
    return torch.nn.functional.binary_cross_entropy(p, ious, reduction="none") * (ious - p) ** 2


def _soft_abs_weight(scores, labels, ious):  # |t - p| instead of |t - p|^2
    target = torch.nn.functional.one_hot(labels, scores.shape[1]).float()[None] * ious[..., None]
    p = scores[:, None, :].expand_as(target)
    return (torch.nn.functional.binary_cross_entropy(p, target, reduction="none") * (target - p).abs()).sum(-1)


def _soft_unclamped(scores, labels, ious):  # hand-written BCE without torch's -100 clamp: inf at p = 0 or 1
    target = torch.nn.functional.one_hot(labels, scores.shape[1]).float()[None] * ious[..., None]
    p = scores[:, None, :].expand_as(target)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    return (bce * (target - p) ** 2).sum(-1)


def test_exercise_1_accepts_the_notebook_solution():
    from lessons.dynamic_soft_label import check_soft_cls_cost

    check_soft_cls_cost(_solution("my_soft_cls_cost"))


@pytest.mark.parametrize("wrong", [_soft_hard_target, _soft_gt_class_only, _soft_abs_weight, _soft_unclamped])
def test_exercise_1_rejects(wrong):
    from lessons.dynamic_soft_label import check_soft_cls_cost

    with pytest.raises(AssertionError):
        check_soft_cls_cost(wrong)


def _prior_corner(points, strides, gt_boxes, soft_center_radius=3.0):  # distance to the top-left corner
    d = (points[:, None] - gt_boxes[None, :, :2]).pow(2).sum(-1).sqrt() / strides[:, None]
    return torch.pow(10.0, d - soft_center_radius)


def _prior_pixels(points, strides, gt_boxes, soft_center_radius=3.0):  # distance in pixels / 8, not per stride
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    return torch.pow(10.0, (points[:, None] - centre[None]).pow(2).sum(-1).sqrt() / 8.0 - soft_center_radius)


def _prior_chebyshev(points, strides, gt_boxes, soft_center_radius=3.0):  # max(|dx|, |dy|) instead of Euclidean
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    d = (points[:, None] - centre[None]).abs().amax(-1) / strides[:, None]
    return torch.pow(10.0, d - soft_center_radius)


def _prior_fixed_radius(points, strides, gt_boxes, soft_center_radius=3.0):  # ignores the radius passed in
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    return torch.pow(10.0, (points[:, None] - centre[None]).pow(2).sum(-1).sqrt() / strides[:, None] - 3.0)


def test_exercise_2_accepts_the_notebook_solution():
    from lessons.dynamic_soft_label import check_center_prior

    check_center_prior(_solution("my_center_prior"))


@pytest.mark.parametrize("wrong", [_prior_corner, _prior_pixels, _prior_chebyshev, _prior_fixed_radius])
def test_exercise_2_rejects(wrong):
    from lessons.dynamic_soft_label import check_center_prior

    with pytest.raises(AssertionError):
        check_center_prior(wrong)
