"""Row-wise scatter-max (``exportable.scatter.rows_amax``): a hand case, torch's ``index_reduce`` on random
rows with duplicates, and eager vs onnxruntime (one ``ScatterND``, reduction max) with empty sources."""

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


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


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


def test_onnx_is_one_scatternd_max_and_matches_eager_at_other_sizes():
    g = torch.Generator().manual_seed(4)
    model = xonnx.export(
        _RowsAmax(),
        (torch.zeros(3, 4), torch.tensor([0, 2, 2]), torch.rand(3, 4, generator=g),
         torch.zeros(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int64)),
        input_names=["base", "rows", "src", "ibase", "isrc"],
        output_names=["out", "iout"],
        input_dims=[["R", "S"], ["P"], ["P", "S"], ["R", "S"], ["P", "S"]],
    )
    scatters = [n for n in _all_nodes(model.graph) if n.op_type.startswith("Scatter")]
    assert [n.op_type for n in scatters] == ["ScatterND", "ScatterND"]
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == b"max" for n in scatters)
    sess = xonnx.session(model, ["CPUExecutionProvider"])
    for r, s, p in [(6, 64, 40), (5, 2, 0), (2, 9, 1)]:  # duplicates; no source row; one
        base = torch.rand(r, s, generator=g) - 0.5
        rows = torch.randint(0, r, (p,), generator=g)
        src = torch.rand(p, s, generator=g)
        ibase = torch.randint(-5, 5, (r, s), generator=g)
        isrc = torch.randint(-5, 5, (p, s), generator=g)
        want = _RowsAmax()(base, rows, src, ibase, isrc)
        got = xonnx.run(sess, [base, rows, src, ibase, isrc])
        for a, b in zip(got, want):
            assert np.array_equal(a, b.numpy())  # max is exact: the same bits


def test_max_iou_graph_reduces_rows_with_scatternd():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0]])
    gts = torch.tensor([[[0.0, 0.0, 12.0, 12.0], [28.0, 28.0, 41.0, 41.0]]] * 2)
    model = xonnx.export(
        AnchorGtMaxIoU(), (anchors, gts, torch.ones(2, 2, dtype=torch.bool)),
        input_names=["anchors", "gt_boxes", "gt_mask"], output_names=["max_overlaps", "argmax"],
        input_dims=[["N", 4], ["B", "M", 4], ["B", "M"]],
    )
    ops = [n.op_type for n in _all_nodes(model.graph)]
    assert ops.count("ScatterND") == 2  # step 6's best IoU and first gt, over whole (S,) rows
    assert "ScatterElements" not in ops
