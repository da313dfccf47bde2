"""exportable.onnx: the export rules are enforced, sessions run, comparisons and placement report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exportable import onnx as xonnx

pytestmark = pytest.mark.onnx


class LoopOverN(nn.Module):
    """A Python loop over a dynamic size: the exporter silently specialises N."""

    def forward(self, x):
        total = x[0]
        for i in range(1, x.shape[0]):
            total = total + x[i]
        return total


class TinyEps(nn.Module):
    """y / (x + 1e-9): the default onnxscript optimizer would delete the eps (NaN at x = 0)."""

    def forward(self, x, y):
        return y / (x + 1e-9)


def test_specialised_dim_raises():
    with pytest.raises(xonnx.ExportError, match="specialised"):
        xonnx.export(LoopOverN(), (torch.rand(5, 3),), input_names=["x"], output_names=["y"],
                     input_dims=[("N", 3)])


def test_small_eps_survives_export():
    model = xonnx.export(TinyEps(), (torch.rand(4), torch.rand(4)), input_names=["x", "y"],
                         output_names=["z"], input_dims=[("N",), ("N",)])
    sess = xonnx.session(model, ["CPUExecutionProvider"])
    x = np.zeros(3, np.float32)
    y = np.ones(3, np.float32)
    (z,) = xonnx.run(sess, [x, y])
    assert np.all(np.isfinite(z)) and np.allclose(z, 1e9, rtol=1e-3)


def test_export_strips_and_fills_metadata(tmp_path):
    model = xonnx.export(TinyEps(), (torch.rand(4), torch.rand(4)), input_names=["x", "y"],
                         output_names=["z"], input_dims=[("N",), ("N",)], metadata={"a": {"b": 1}}, doc="tiny")
    assert all(len(n.metadata_props) == 0 for n in model.graph.node)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["a"] == '{"b": 1}' and "assignlab.version" in meta and model.doc_string == "tiny"
    path = xonnx.save(model, tmp_path / "m" / "tiny.onnx")
    assert path.exists() and not list(path.parent.glob("*.data"))
    text = path.read_bytes()
    assert b"/work/" not in text and b"site-packages" not in text  # no local paths leak


def test_rank_mismatch_in_contract_is_caught():
    with pytest.raises(xonnx.ExportError, match="contract"):
        xonnx.export(TinyEps(), (torch.rand(4), torch.rand(4)), input_names=["x", "y"],
                     output_names=["z"], input_dims=[("N", 1), ("N",)])


def test_compare_reports_first_mismatch():
    res = xonnx.compare(["a", "b", "c"],
                        [torch.tensor([1, 2, 3]), torch.tensor([0.0, 1.0]), torch.zeros(2)],
                        [np.array([1, 5, 3]), np.array([0.0, 1.0 + 1e-7], np.float32), np.zeros(3, np.float32)],
                        atol=1e-6)
    assert not res[0].exact and res[0].first_mismatch == (1,) and res[0].mismatches == 1
    assert res[1].close and not res[1].exact
    assert not res[2].close and "shape" in res[2].note


def test_placement_report_on_cpu():
    model = xonnx.export(TinyEps(), (torch.rand(4), torch.rand(4)), input_names=["x", "y"],
                         output_names=["z"], input_dims=[("N",), ("N",)])
    sess = xonnx.session(model, ["CPUExecutionProvider"], record_placement=True)
    rows = xonnx.placement(sess)
    assert {r.op_type for r in rows} >= {"Add", "Div"}
    assert {r.provider for r in rows} == {"CPUExecutionProvider"}
    report = xonnx.placement_report(rows, preferred="CPUExecutionProvider")
    assert "| Div | CPUExecutionProvider | 1 |" in report and "off" not in report
    flagged = xonnx.placement_report(rows, preferred="CUDAExecutionProvider")
    assert "**compute node off CUDAExecutionProvider**" in flagged


def test_best_providers_ends_with_cpu():
    providers = xonnx.best_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert set(providers) <= set(xonnx.available_providers())
