"""Row-wise scatter-max (``exportable.scatter.rows_amax``): a hand case, torch's ``index_reduce`` on random
rows with duplicates, and eager vs onnxruntime (``ScatterND`` max, checked and repaired in rounds that never
repeat a row) with empty sources and with many sources per row on several threads (onnxruntime's racy
repeated rows)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exportable import onnx as xonnx
from exportable.assigners.max_iou import AnchorGtMaxIoU
from exportable.scatter import rows_amax


class _RowsAmax(nn.Module):
    """Float and int64 row-wise scatter-max, each from its own base, as one graph."""

    def forward(self, base: torch.Tensor, rows: torch.Tensor, src: torch.Tensor, ibase: torch.Tensor,
                isrc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows_amax(base, rows, src), rows_amax(ibase, rows, isrc)


def test_hand_case_the_base_counts_and_duplicates_reduce():
    base = torch.tensor([[0.0, 5.0], [1.0, 1.0], [2.0, 2.0]])
    rows = torch.tensor([2, 0, 2])
    src = torch.tensor([[3.0, 1.0], [9.0, -1.0], [1.0, 7.0]])
    # row 0: max([0, 5], [9, -1]); row 1: untouched; row 2: max([2, 2], [3, 1], [1, 7])
    want = torch.tensor([[9.0, 5.0], [1.0, 1.0], [3.0, 7.0]])
    assert torch.equal(rows_amax(base, rows, src), want)
    assert torch.equal(base, torch.tensor([[0.0, 5.0], [1.0, 1.0], [2.0, 2.0]]))  # a new tensor


@pytest.mark.filterwarnings("ignore:index_reduce")
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_matches_index_reduce_with_include_self(dtype):
    g = torch.Generator().manual_seed(3)
    for r, s, p in [(7, 5, 30), (4, 64, 0), (1, 3, 9)]:
        base = torch.randint(-20, 20, (r, s), generator=g).to(dtype)
        rows = torch.randint(0, r, (p,), generator=g)  # many duplicates
        src = torch.randint(-20, 20, (p, s), generator=g).to(dtype)
        want = base.index_reduce(0, rows, src, "amax", include_self=True)
        assert torch.equal(rows_amax(base, rows, src), want)


def _export_rows_amax() -> onnx.ModelProto:
    g = torch.Generator().manual_seed(4)
    return xonnx.export(
        _RowsAmax(),
        (torch.zeros(3, 4), torch.tensor([0, 2, 2]), torch.rand(3, 4, generator=g),
         torch.zeros(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int64)),
        input_names=["base", "rows", "src", "ibase", "isrc"],
        output_names=["out", "iout"],
        input_dims=[["R", "S"], ["P"], ["P", "S"], ["R", "S"], ["P", "S"]],
    )


def test_onnx_scatters_rows_with_scatternd_max_then_repairs_in_a_loop_and_matches_eager_at_other_sizes():
    model = _export_rows_amax()
    scatters = [n for n in xonnx.iter_nodes(model.graph) if n.op_type == "ScatterND"]
    assert len(scatters) == 4  # per call: the scatter, and the repair inside its Loop
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == b"max" for n in scatters)
    assert [n.op_type for n in model.graph.node].count("Loop") == 2
    g = torch.Generator().manual_seed(5)
    sess = xonnx.session(model, ["CPUExecutionProvider"])
    for r, s, p in [(6, 64, 40), (5, 2, 0), (2, 9, 1), (1, 3, 6), (0, 4, 0)]:  # repeats; none; one; one row; empty
        base = torch.rand(r, s, generator=g) - 0.5
        rows = torch.randint(0, max(r, 1), (p,), generator=g)  # p = 0 when r = 0
        src = torch.rand(p, s, generator=g)
        ibase = torch.randint(-5, 5, (r, s), generator=g)
        isrc = torch.randint(-5, 5, (p, s), generator=g)
        want = _RowsAmax()(base, rows, src, ibase, isrc)
        got = xonnx.run(sess, [base, rows, src, ibase, isrc])
        for a, b in zip(got, want):
            assert np.array_equal(a, b.numpy())  # max is exact: the same bits


def test_onnx_is_exact_with_many_sources_per_row_on_two_threads():
    # One ScatterND of 20,000 source rows into 8 lets onnxruntime's threads race on a row: with that graph
    # about a quarter of these runs had wrong maxima (onnxruntime 1.32, 2 threads; 30 runs take 0.5 s), so
    # the chance that 30 runs miss a regression is about 2e-4. The repair rounds restore every lost maximum.
    sess = xonnx.session(_export_rows_amax(), ["CPUExecutionProvider"], threads=2)
    g = torch.Generator().manual_seed(6)
    for _ in range(30):
        base = torch.rand(8, 64, generator=g) - 0.5
        rows = torch.randint(0, 8, (20_000,), generator=g)
        src = torch.rand(20_000, 64, generator=g)
        ibase, isrc = torch.randint(-9, 9, (8, 64), generator=g), torch.randint(-1000, 1000, (20_000, 64), generator=g)
        want = _RowsAmax()(base, rows, src, ibase, isrc)
        got = xonnx.run(sess, [base, rows, src, ibase, isrc])
        for a, b in zip(got, want):
            assert np.array_equal(a, b.numpy())


def test_max_iou_graph_reduces_rows_with_scatternd():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0]])
    gts = torch.tensor([[[0.0, 0.0, 12.0, 12.0], [28.0, 28.0, 41.0, 41.0]]] * 2)
    model = xonnx.export(
        AnchorGtMaxIoU(), (anchors, gts, torch.ones(2, 2, dtype=torch.bool)),
        input_names=["anchors", "gt_boxes", "gt_mask"], output_names=["max_overlaps", "argmax"],
        input_dims=[["N", 4], ["B", "M", 4], ["B", "M"]],
    )
    nodes = list(xonnx.iter_nodes(model.graph))
    # step 6's best IoU and first gt, over whole rows: per call one scatter and one in its repair loop
    assert [n.op_type for n in nodes].count("ScatterND") == 4
    elementwise = [n for n in nodes if n.op_type == "ScatterElements"]
    # only the repairs' one lost source per row (R,); no element-by-element max over (P, S)
    assert [onnx.helper.get_attribute_value(a) for n in elementwise for a in n.attribute if a.name == "reduction"] \
        == [b"min", b"min"]


def test_onnx_repair_ends_on_a_nan_source():
    # NaN is never above a row, so the repair loop cannot chase it; rows without NaN stay exact
    sess = xonnx.session(_export_rows_amax(), ["CPUExecutionProvider"])
    base = torch.zeros(3, 4)
    rows = torch.tensor([0, 0, 1])
    src = torch.tensor([[float("nan"), 1.0, 2.0, 3.0], [0.5, 0.5, 0.5, 0.5], [4.0, -1.0, 5.0, -2.0]])
    ibase, isrc = torch.zeros(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int64)
    out, _ = xonnx.run(sess, [base, rows, src, ibase, isrc])
    assert np.array_equal(out[1:], np.array([[4.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    assert np.array_equal(out[0, 1:], np.array([1.0, 2.0, 3.0], dtype=np.float32))
