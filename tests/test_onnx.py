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


# -- DeviceRunner: torch tensors in and out, no numpy ------------------------------------------

RUNNER_ENTRIES = ["nms", "max_iou_assigner", "topk", "anchor_grid", "retinanet_targets", "noise_sampler"]


@pytest.mark.parametrize("name", RUNNER_ENTRIES)
def test_device_runner_matches_run_without_numpy(name, exported, monkeypatch):
    from exportable import catalog

    entry = catalog.get(name)
    sess = xonnx.session(exported(name), ["CPUExecutionProvider"])
    runner = xonnx.DeviceRunner(sess)
    cases = [(sizes, entry.example(sizes, seed=3)) for sizes in entry.test_sizes]
    wants = [xonnx.run(sess, args) for _, args in cases]
    ort = pytest.importorskip("onnxruntime")

    def no_numpy(*_a, **_k):
        raise AssertionError("DeviceRunner went through numpy")

    monkeypatch.setattr(ort.OrtValue, "numpy", no_numpy)
    for (sizes, args), want in zip(cases, wants):
        got = runner(*args)
        assert runner.last_copies == []
        assert len(got) == len(want) == len(entry.outputs)
        for spec, g, w in zip(entry.outputs, got, want):
            assert isinstance(g, torch.Tensor) and g.device.type == "cpu", spec.name
            assert g.dtype == torch.from_numpy(np.asarray(w)).dtype, spec.name
            assert np.array_equal(g.numpy(), w), f"{name} {spec.name} at {sizes}"


def test_device_runner_writes_into_preallocated_outputs(exported):
    from exportable import catalog

    entry = catalog.get("max_iou_assigner")
    runner = xonnx.DeviceRunner(xonnx.session(exported("max_iou_assigner"), ["CPUExecutionProvider"]))
    args = entry.example({"B": 3, "N": 200, "M": 5}, seed=1)
    gt_index = torch.full((3, 200), -99, dtype=torch.int64)
    boxes = torch.empty(3, 200, 4)
    ptrs = (gt_index.data_ptr(), boxes.data_ptr())
    first = runner(*args, out={"gt_index": gt_index, "boxes": boxes})
    assert first[0] is gt_index and first[2] is boxes
    assert (gt_index.data_ptr(), boxes.data_ptr()) == ptrs  # onnxruntime wrote in place
    assert (gt_index != -99).all()
    assert runner.last_owners["gt_index"] == runner.last_owners["boxes"] == "yours"
    assert runner.last_owners["labels"] == "torch"  # (B, N): sized from the inputs, so torch allocates it
    eager = entry.run_eager(entry.build(), args)
    assert torch.equal(gt_index, eager[0]) and torch.equal(boxes, eager[2])
    other = entry.example({"B": 3, "N": 200, "M": 5}, seed=2)
    second = runner(*other, out={"gt_index": gt_index, "boxes": boxes})  # the same buffers, reused
    assert second[0].data_ptr() == ptrs[0] and torch.equal(second[0], entry.run_eager(entry.build(), other)[0])
    runner(*args)
    assert set(runner.last_owners.values()) == {"torch"}  # every output of an assigner is sized by its inputs


def test_device_runner_data_dependent_output_survives_the_session(exported):
    from exportable import catalog

    entry = catalog.get("nms")
    sess = xonnx.session(exported("nms"), ["CPUExecutionProvider"])
    args = entry.example({"N": 300}, seed=0)
    runner = xonnx.DeviceRunner(sess)
    (keep,) = runner(*args)  # K is known only after the run: onnxruntime allocates, torch shares it
    assert runner.last_owners == {"keep": "onnxruntime"} and keep.shape[0] > 0
    want = keep.clone()
    del runner, sess
    xonnx.DeviceRunner(xonnx.session(exported("nms"), ["CPUExecutionProvider"]))(*entry.example({"N": 300}, seed=1))
    assert torch.equal(keep, want)  # the DLPack-shared buffer outlives the session and the next run


def test_device_runner_checks_its_inputs(exported):
    runner = xonnx.DeviceRunner(xonnx.session(exported("nms"), ["CPUExecutionProvider"]))
    boxes, scores = torch.rand(5, 4), torch.rand(5)
    with pytest.raises(TypeError, match="scores.*float"):
        runner(boxes, scores.double())
    with pytest.raises(ValueError, match="takes 2 inputs"):
        runner(boxes)
    with pytest.raises(ValueError, match="boxes.*rank 2"):
        runner(boxes[None], scores)
    with pytest.raises(ValueError, match="missing"):
        runner(boxes=boxes)
    with pytest.raises(ValueError, match="binds CPU and CUDA"):
        runner(boxes.to("meta"), scores.to("meta"))
    with pytest.raises(ValueError, match="unknown output"):
        runner(boxes, scores, out={"nope": torch.empty(1)})
    strided = torch.rand(4, 5).t()  # (5, 4), not contiguous
    (keep,) = runner(strided, scores)
    assert runner.last_copies == ["input boxes: made contiguous"]
    assert torch.equal(keep, runner(strided.contiguous(), scores)[0]) and runner.last_copies == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_runner_keeps_cuda_tensors_on_the_device(exported):
    from exportable import catalog

    if "CUDAExecutionProvider" not in xonnx.available_providers():
        pytest.skip("onnxruntime without the CUDA provider")
    for name in ("max_iou_assigner", "nms"):
        entry = catalog.get(name)
        sess = xonnx.session(exported(name), ["CUDAExecutionProvider", "CPUExecutionProvider"])
        args = entry.example(entry.test_sizes[1], seed=0)
        got = xonnx.DeviceRunner(sess)(*(a.cuda() for a in args))
        want = xonnx.run(xonnx.session(exported(name), ["CPUExecutionProvider"]), args)
        for g, w in zip(got, want):
            assert g.device.type == "cuda"
            assert np.allclose(g.cpu().numpy(), w, atol=entry.atol, rtol=entry.rtol)
