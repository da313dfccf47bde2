"""exportable.placement: CUDA placement predicted without a GPU.

The checker is pinned on tiny hand-built graphs that contain each known CUDA gap (Atan, a Where on
bool values, an int32 Clip, an ArgMax over int64) and the cases that must not count as fallbacks
(CastLike, NonMaxSuppression, shape arithmetic); then every catalog graph must keep its compute
nodes on CUDA.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from exportable import catalog, placement
from exportable.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
F, I64, I32, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _by_op(pred, op_type):
    return [n for n in pred.nodes if n.op_type == op_type]


BOTH = pytest.mark.parametrize("optimize", [True, False], ids=["basic-optimized", "as-exported"])


# -- the gaps the checker must catch -----------------------------------------------------------


@BOTH
def test_atan_is_a_compute_fallback(optimize):
    atan = helper.make_node("Atan", ["x"], ["y"], name="the_atan")
    model = _model([atan], [_vi("x", F, ["N"])], [_vi("y", F, ["N"])])
    pred = placement.predict(model, optimize=optimize)
    (atan,) = _by_op(pred, "Atan")
    assert atan.kind == "fallback" and not atan.shape_only and atan.compute_fallback
    assert atan.provider == "CPUExecutionProvider" and "no CUDA kernel for Atan" in atan.reason
    with pytest.raises(placement.PlacementError, match="the_atan"):
        placement.check(model, optimize=optimize)


def _scaled_atan_body(name: str) -> onnx.GraphProto:
    """A Scan body over rows: ``atan(row * scale)``, ``scale`` read from an outer scope (nodes ``<name>_mul``,
    ``<name>_atan``); Atan has no CUDA kernel."""
    return helper.make_graph(
        [helper.make_node("Mul", ["row", "scale"], ["scaled"], name=f"{name}_mul"),
         helper.make_node("Atan", ["scaled"], ["out"], name=f"{name}_atan")],
        name, [_vi("row", F, ["N"])], [_vi("out", F, ["N"])])


@BOTH
def test_a_gap_inside_a_scan_body_is_found(optimize):
    # a Scan over rows whose body takes atan of each row times an outer-scope scale: the body's Atan falls
    # back, its Mul (a formal input and an outer value) stays on CUDA; both are named through the Scan
    body = _scaled_atan_body("body")
    scan = helper.make_node("Scan", ["x"], ["y"], name="the_scan", body=body, num_scan_inputs=1)
    model = _model([scan], [_vi("x", F, ["R", "N"]), _vi("scale", F, [])], [_vi("y", F, ["R", "N"])])
    pred = placement.predict(model, optimize=optimize)
    (atan,) = _by_op(pred, "Atan")
    assert atan.name == "the_scan/body/body_atan" and atan.compute_fallback
    (mul,) = _by_op(pred, "Mul")
    assert mul.kind == "cuda", mul.reason
    (outer,) = _by_op(pred, "Scan")
    assert outer.kind == "cuda"
    with pytest.raises(placement.PlacementError, match="body_atan"):
        placement.check(model, optimize=optimize)


@BOTH
def test_a_scan_nested_in_a_scan_body_reads_a_main_graph_value_with_its_type(optimize):
    # an outer Scan over images whose body runs an inner Scan over rows; only the inner body reads the main
    # graph's `scale` (the outer body never does): its type must still reach the inner body's nodes
    inner = _scaled_atan_body("inner")
    outer = helper.make_graph(
        [helper.make_node("Scan", ["image"], ["rows_out"], name="inner_scan", body=inner, num_scan_inputs=1)],
        "outer", [_vi("image", F, ["R", "N"])], [_vi("rows_out", F, ["R", "N"])])
    scan = helper.make_node("Scan", ["x"], ["y"], name="outer_scan", body=outer, num_scan_inputs=1)
    model = _model([scan], [_vi("x", F, ["B", "R", "N"]), _vi("scale", F, [])], [_vi("y", F, ["B", "R", "N"])])
    pred = placement.predict(model, optimize=optimize)
    assert not pred.of_kind("unknown"), pred.report()
    (mul,) = _by_op(pred, "Mul")
    assert mul.name == "outer_scan/body/inner_scan/body/inner_mul" and mul.kind == "cuda", mul.reason
    assert mul.input_types == ("float", "float")
    (atan,) = _by_op(pred, "Atan")
    assert atan.compute_fallback
    with pytest.raises(placement.PlacementError, match="inner_atan"):
        placement.check(model, optimize=optimize)


@BOTH
def test_where_on_bool_values_falls_back_where_on_float_does_not(optimize):
    nodes = [helper.make_node("Where", ["c", "a", "b"], ["y"], name="bool_where"),
             helper.make_node("Where", ["c", "u", "v"], ["z"], name="float_where")]
    model = _model(nodes, [_vi("c", B, ["N"]), _vi("a", B, ["N"]), _vi("b", B, ["N"]), _vi("u", F, ["N"]),
                           _vi("v", F, ["N"])], [_vi("y", B, ["N"]), _vi("z", F, ["N"])])
    pred = placement.predict(model, optimize=optimize)
    kinds = {n.name: n for n in pred.nodes}
    assert kinds["bool_where"].compute_fallback and "not bool" in kinds["bool_where"].reason
    assert kinds["float_where"].kind == "cuda"
    assert [n.name for n in pred.compute_fallbacks] == ["bool_where"]


@BOTH
def test_int32_clip_falls_back_int64_clip_does_not(optimize):
    inits = [helper.make_tensor("lo32", I32, [], [0]), helper.make_tensor("lo64", I64, [], [0])]
    nodes = [helper.make_node("Clip", ["x32", "lo32"], ["y32"], name="clip32"),
             helper.make_node("Clip", ["x64", "lo64"], ["y64"], name="clip64")]
    model = _model(nodes, [_vi("x32", I32, ["N"]), _vi("x64", I64, ["N"])],
                   [_vi("y32", I32, ["N"]), _vi("y64", I64, ["N"])], inits)
    pred = placement.predict(model, optimize=optimize)
    assert [n.name for n in pred.compute_fallbacks] == ["clip32"]
    assert {n.name: n.kind for n in pred.nodes}["clip64"] == "cuda"


@BOTH
def test_argmax_over_int64_falls_back(optimize):
    nodes = [helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0, name="argmax_int"),
             helper.make_node("Cast", ["x"], ["xf"], to=F),
             helper.make_node("ArgMax", ["xf"], ["j"], axis=1, keepdims=0, name="argmax_float")]
    model = _model(nodes, [_vi("x", I64, ["B", "N"])], [_vi("i", I64, ["B"]), _vi("j", I64, ["B"])])
    pred = placement.predict(model, optimize=optimize)
    assert [n.name for n in pred.compute_fallbacks] == ["argmax_int"]


# -- what must not count as a fallback ---------------------------------------------------------


def test_castlike_becomes_cast_and_computes_the_same():
    nodes = [helper.make_node("CastLike", ["x", "like"], ["y"], name="castlike")]
    model = _model(nodes, [_vi("x", I64, ["N"]), _vi("like", F, [])], [_vi("y", F, ["N"])])
    rewritten = placement.castlike_to_cast(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node] == ["Cast"]
    assert [n.op_type for n in model.graph.node] == ["CastLike"]  # the input is left alone
    ort = pytest.importorskip("onnxruntime")
    x = np.array([3, -7, 2**40], np.int64)
    feed = {"x": x, "like": np.array(0, np.float32)}
    want = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, feed)[0]
    assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
    for optimize in (True, False):
        (cast,) = placement.predict(model, optimize=optimize).nodes
        assert (cast.op_type, cast.kind, cast.output_types) == ("Cast", "cuda", ("float",))


def test_non_max_suppression_is_on_cuda_although_the_kernel_doc_omits_it():
    assert "NonMaxSuppression" not in placement.kernel_table()["ops"]["ai.onnx"]
    inits = [helper.make_tensor("max_out", I64, [1], [100]), helper.make_tensor("iou", F, [1], [0.5])]
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["sel"], name="nms")]
    model = _model(nodes, [_vi("boxes", F, [1, "N", 4]), _vi("scores", F, [1, 1, "N"])], [_vi("sel", I64, ["K", 3])],
                   inits)
    (nms,) = placement.predict(model).nodes
    assert nms.kind == "cuda"


@BOTH
def test_shape_arithmetic_without_a_kernel_is_allowed_and_reported(optimize):
    # Reshape(x, Cast(Clip(Cast(Shape(x), int32), 1), int64)): the int32 Clip only computes a shape.
    inits = [helper.make_tensor("one32", I32, [], [1])]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["s32"], to=I32),
             helper.make_node("Clip", ["s32", "one32"], ["c32"], name="shape_clip"),
             helper.make_node("Cast", ["c32"], ["c64"], to=I64),
             helper.make_node("Reshape", ["x", "c64"], ["y"], name="reshape")]
    model = _model(nodes, [_vi("x", F, ["N", 4])], [_vi("y", F, ["N", 4])], inits)
    pred = placement.check(model, optimize=optimize)  # does not raise
    (clip,) = _by_op(pred, "Clip")
    assert clip.kind == "fallback" and clip.role == "shape" and not clip.compute_fallback
    assert pred.shape_fallbacks == [clip]
    assert {n.name: n.kind for n in pred.nodes}["reshape"] == "cuda"
    assert "shape_clip" in pred.report()


def test_onnxruntime_keeps_shape_math_on_the_host():
    inits = [helper.make_tensor("zero", I64, [], [0]), helper.make_tensor("axes", I64, [1], [0]),
             helper.make_tensor("four", I64, [1], [4])]
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather"),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "four"], ["shape2"], axis=0, name="concat"),
             helper.make_node("Reshape", ["x", "shape2"], ["y"], name="reshape"),
             helper.make_node("Atan", ["y"], ["z"], name="atan"),
             helper.make_node("Neg", ["z"], ["w"], name="neg"),
             helper.make_node("Cast", ["n"], ["nf"], to=F, name="cast_n"),
             helper.make_node("Mul", ["nf", "v"], ["scaled"], name="mul_v"),
             helper.make_node("Atan", ["scaled"], ["an"], name="atan_v"),
             helper.make_node("Neg", ["an"], ["w2"], name="neg_v")]
    model = _model(nodes, [_vi("x", F, ["N", 4]), _vi("v", F, ["K"])], [_vi("w", F, ["N", 4]), _vi("w2", F, ["K"])],
                   inits)
    pred = placement.predict(model, optimize=False)
    kinds = {n.name: (n.kind, n.role) for n in pred.nodes}
    assert kinds["shape"] == ("cuda", "shape-math")  # CUDA's Shape writes its output to host memory
    assert kinds["gather"] == ("host", "shape-math") and kinds["cast_n"] == ("host", "shape-math")
    assert kinds["unsqueeze"] == kinds["concat"] == ("host", "shape")
    assert kinds["reshape"] == ("cuda", "data")  # reads its shape input from the host by design
    # A fallback fed from the GPU is not traced: its consumer stays on CUDA (the data is copied back).
    assert kinds["atan"] == ("fallback", "data") and kinds["neg"] == ("cuda", "data")
    # A graph input next to a host value: onnxruntime reads the input on the host (a copy when it is on the GPU),
    # and what follows stays there.
    assert kinds["mul_v"] == ("host", "data") and kinds["atan_v"] == ("fallback", "data")
    assert kinds["neg_v"] == ("host", "data")
    assert [n.name for n in pred.host_compute] == ["mul_v", "neg_v"]
    assert [n.name for n in pred.compute_fallbacks] == ["atan", "atan_v"]


def test_kernel_table_is_package_data_with_its_source():
    table = placement.kernel_table()
    assert table["repository"].endswith("microsoft/onnxruntime") and len(table["commit"]) == 40
    assert "OperatorKernels.md" in table["source"]
    assert "NonMaxSuppression" in table["known_doc_omissions"]["ai.onnx"]
    assert placement.cuda_kernel("Atan", "", 7) is None
    assert "bool" not in placement.cuda_kernel("Where", "", 16)["T"]
    assert placement.cuda_kernel("TopK", "", 11)["T"] == ["double", "float", "float16", "int32", "int64"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/*.json" in pyproject["tool"]["setuptools"]["package-data"]["exportable"]


# -- every catalog graph -----------------------------------------------------------------------


@pytest.mark.onnx
@pytest.mark.parametrize("name", catalog.names())
def test_catalog_graph_keeps_every_compute_node_on_cuda(name, exported):
    pred = placement.predict(exported(name))
    assert pred.optimized and pred.nodes
    assert not pred.of_kind("unknown"), pred.report()  # every node's types were inferred: the check ran
    assert not pred.compute_fallbacks, pred.report()
    assert not pred.host_compute, pred.report()  # no graph input read on the host by onnxruntime's heuristic


@pytest.mark.onnx
def test_cli_placement(capsys):
    assert main(["placement", "nms"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok   nms:") and "0 fallback (0 compute)" in out
    assert main(["placement", "nms", "--param", "iou_threshold=0.3", "--all-nodes", "--as-exported"]) == 0
    out = capsys.readouterr().out
    assert "NonMaxSuppression" in out and "as exported" in out


def test_report_is_json_serialisable_counts():
    model = _model([helper.make_node("Atan", ["x"], ["y"])], [_vi("x", F, ["N"])], [_vi("y", F, ["N"])])
    counts = placement.predict(model, optimize=False).counts()
    assert json.loads(json.dumps(counts))["compute_fallback"] == 1
