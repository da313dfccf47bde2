"""exportable.triton: every config.pbtxt parses with Triton's own ModelConfig and matches its ONNX graph."""

from __future__ import annotations

import json

import onnx
import pytest
from google.protobuf import text_format

from exportable import catalog, triton
from exportable.__main__ import main

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytestmark = pytest.mark.onnx

# Written out here rather than imported, so the test does not trust the module's own table.
TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}


def _parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def _check_tensors(config_tensors, graph_tensors, what):
    assert [t.name for t in config_tensors] == [v.name for v in graph_tensors], what
    for t, v in zip(config_tensors, graph_tensors):
        np_type = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        assert model_config_pb2.DataType.Name(t.data_type) == TYPES[np_type], (what, t.name)
        dims = _dims(v)
        if dims:
            assert list(t.dims) == dims and not t.HasField("reshape"), (what, t.name)
        else:  # a scalar: one element reshaped to rank 0
            assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == [], (what, t.name)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported):
    root = tmp_path_factory.mktemp("triton")
    names = catalog.names()
    paths = triton.write_repository(root, names, models={n: exported(n) for n in names}, instances=2)
    return root, paths


def test_every_entry_and_both_ensembles_are_written(repository):
    root, paths = repository
    assert [p.parent.name for p in paths] == catalog.names() + list(triton.ENSEMBLES)
    for ens in triton.ENSEMBLES:
        assert (root / ens / "1").is_dir() and not any((root / ens / "1").iterdir())


@pytest.mark.parametrize("name", catalog.names())
def test_config_matches_the_onnx_graph(repository, name):
    root, _ = repository
    config = _parse(root / name / "config.pbtxt")
    model = onnx.load(str(root / name / "1" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    entry = catalog.get(name)
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    _check_tensors(config.input, model.graph.input, "input")
    _check_tensors(config.output, model.graph.output, "output")
    assert [t.name for t in config.input] == [s.name for s in entry.inputs]
    assert [t.name for t in config.output] == [s.name for s in entry.outputs]
    # -1 exactly where the catalog names a dynamic dim
    for t, spec in zip(list(config.input) + list(config.output), entry.inputs + entry.outputs):
        if spec.dims:
            assert list(t.dims) == [-1 if isinstance(d, str) else d for d in spec.dims], (name, t.name)
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert "KIND_CPU" in (root / name / "config.pbtxt").read_text()  # the CPU fallback note
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params.pop("assignlab.component") == name
    assert json.loads(params.pop("assignlab.tolerance")) == {"atol": entry.atol, "rtol": entry.rtol}
    assert params.pop("assignlab.version")
    got = {k.removeprefix("assignlab."): json.loads(v) for k, v in params.items()}
    assert got == json.loads(json.dumps(entry.resolved()))  # every hyper-parameter the graph was built with


@pytest.mark.parametrize("ensemble", list(triton.ENSEMBLES))
def test_ensemble_wires_its_step_by_name(repository, ensemble):
    root, _ = repository
    step_name = triton.ENSEMBLES[ensemble][0]
    config = _parse(root / ensemble / "config.pbtxt")
    step_model = onnx.load(str(root / step_name / "1" / "model.onnx"))
    assert config.platform == "ensemble" and config.max_batch_size == 0
    _check_tensors(config.input, step_model.graph.input, "ensemble input")
    _check_tensors(config.output, step_model.graph.output, "ensemble output")
    (step,) = config.ensemble_scheduling.step
    assert step.model_name == step_name and (root / step.model_name / "config.pbtxt").exists()
    assert dict(step.input_map) == {v.name: v.name for v in step_model.graph.input}
    assert dict(step.output_map) == {v.name: v.name for v in step_model.graph.output}
    assert set(step.input_map.values()) == {t.name for t in config.input}


def test_cli_writes_a_repository_with_overrides(tmp_path, capsys):
    assert main(["triton", "--out", str(tmp_path), "nms", "--param", "iou_threshold=0.6"]) == 0
    assert "1 models" in capsys.readouterr().out
    config = _parse(tmp_path / "nms" / "config.pbtxt")
    assert json.loads(config.parameters["assignlab.iou_threshold"].string_value) == 0.6
    assert not (tmp_path / "retinanet_detect").exists()
    assert main(["triton", "--out", str(tmp_path), "nms", "topk", "--param", "k=3"]) == 2
