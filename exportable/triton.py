"""A Triton Inference Server model repository for catalog entries (onnxruntime backend).

No tensors here: each graph's I/O dims are written as Triton dims, a number for a static dim and -1
for a named (dynamic) one, B included (``max_batch_size: 0``: the batch is an explicit dim, because
the shared priors ``anchors (N, 4)`` / ``points (N, 2)`` carry none and Triton could not concatenate
requests along it). A 0-d tensor (``num_total_pos ()``) is ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``,
the way Triton declares a scalar.

    python -m exportable triton --out build/triton max_iou_assigner nms retinanet_postprocess

    build/triton/
      max_iou_assigner/config.pbtxt    platform onnxruntime_onnx, I/O, KIND_GPU, hyper-parameters
      max_iou_assigner/1/model.onnx    the catalog export
      ...
      retinanet_detect/config.pbtxt    ensemble: RetinaNet head outputs -> retinanet_postprocess
      retinanet_detect/1/              (Triton wants a version folder, empty for an ensemble)

Ensembles (written when their step is): ``retinanet_detect`` (head outputs -> ``retinanet_postprocess``:
sigmoid, per-level top-k, decode, class-aware NMS) and ``o2f_detect`` (head outputs ->
``o2f_postprocess``, NMS-free). Their inputs are the detector head's outputs, so a deployer puts
the network in front as a first step (``docs/deploy.md``). The files are plain protobuf text; this
module needs no Triton package (the tests parse them with Triton's own ``ModelConfig``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from exportable import catalog
from exportable import onnx as xonnx

__all__ = ["TRITON_TYPES", "ENSEMBLES", "model_config", "ensemble_config", "write_repository"]

TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}

# ensemble name -> (its one step, what it serves)
ENSEMBLES: dict[str, tuple[str, str]] = {
    "retinanet_detect": ("retinanet_postprocess", "RetinaNet head outputs -> detections (class-aware NMS)"),
    "o2f_detect": ("o2f_postprocess", "O2F head outputs -> detections (NMS-free)"),
}

_GPU_NOTE = ("# A server without a GPU: set kind: KIND_CPU (the same model.onnx runs on onnxruntime's CPU "
             "provider).\n# More instances (count) let requests overlap, e.g. around NonMaxSuppression's host sync.")


def _quote(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid protobuf text string


def _tensor(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    if t.elem_type not in TRITON_TYPES:
        raise ValueError(f"{vi.name}: element type {onnx.TensorProto.DataType.Name(t.elem_type)} has no Triton type")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    body = f"name: {_quote(vi.name)}\n    data_type: {TRITON_TYPES[t.elem_type]}\n"
    if dims:
        body += f"    dims: [ {', '.join(map(str, dims))} ]"
    else:  # a scalar: Triton declares it as one element reshaped to rank 0
        body += "    dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return "  {\n    " + body + "\n  }"


def _io_block(key: str, values: Sequence[onnx.ValueInfoProto]) -> str:
    return f"{key} [\n" + ",\n".join(_tensor(v) for v in values) + "\n]\n"


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def model_config(name: str, model: onnx.ModelProto, *, instances: int = 1) -> str:
    """``config.pbtxt`` text for ``model`` served by Triton's onnxruntime backend.

    Inputs and outputs come from the graph (names, Triton dtypes, dims with -1 for dynamic dims);
    the hyper-parameters recorded in the model's metadata (``assignlab.params``) become
    ``parameters`` named ``assignlab.<key>`` with JSON-encoded values, next to the component, its
    version and its float tolerance.
    """
    meta = _metadata(model)
    params: dict[str, Any] = json.loads(meta.get("assignlab.params", "{}"))
    entries = {f"assignlab.{k}": json.dumps(v) for k, v in sorted(params.items())}
    for key in ("assignlab.component", "assignlab.version", "assignlab.tolerance"):
        if key in meta:
            entries[key] = meta[key]
    text = f"# {model.doc_string}\n" if model.doc_string else ""
    text += f'name: {_quote(name)}\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    text += _io_block("input", model.graph.input)
    text += _io_block("output", model.graph.output)
    text += f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_GPU\n  }}\n]\n{_GPU_NOTE}\n"
    if entries:
        text += "parameters [\n" + ",\n".join(
            f"  {{\n    key: {_quote(k)}\n    value: {{ string_value: {_quote(v)} }}\n  }}" for k, v in entries.items()
        ) + "\n]\n"
    return text


def ensemble_config(name: str, step: str, model: onnx.ModelProto, summary: str = "") -> str:
    """``config.pbtxt`` of an ensemble whose one step is ``step`` (I/O passed through by name)."""
    inputs = [v.name for v in model.graph.input]
    outputs = [v.name for v in model.graph.output]
    text = f"# {summary}\n" if summary else ""
    text += (f"# Put the detector network in front as the first step: its outputs feed {', '.join(inputs[:2])}, ...\n"
             f'name: {_quote(name)}\nplatform: "ensemble"\nmax_batch_size: 0\n')
    text += _io_block("input", model.graph.input)
    text += _io_block("output", model.graph.output)
    maps = [f"      input_map {{ key: {_quote(n)} value: {_quote(n)} }}" for n in inputs]
    maps += [f"      output_map {{ key: {_quote(n)} value: {_quote(n)} }}" for n in outputs]
    text += ("ensemble_scheduling {\n  step [\n    {\n"
             f"      model_name: {_quote(step)}\n      model_version: -1\n" + "\n".join(maps) + "\n    }\n  ]\n}\n")
    return text


def write_repository(
    out: str | Path,
    names: Iterable[str] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    instances: int = 1,
    models: Mapping[str, onnx.ModelProto] | None = None,
) -> list[Path]:
    """Export ``names`` (default: every catalog entry) into a Triton model repository under ``out``.

    Args:
        out: the repository folder (created).
        names: catalog entries to write; the ensembles of :data:`ENSEMBLES` are added when their
            step is among them.
        overrides: per entry name, hyper-parameters to override (``{"nms": {"iou_threshold": 0.6}}``).
        instances: ``instance_group`` count per model.
        models: already exported models by entry name (skips their export; the tests use this).

    Returns:
        The ``config.pbtxt`` paths written, models first, then ensembles.
    """
    root = Path(out)
    names = list(names or catalog.names())
    written = []
    exported: dict[str, onnx.ModelProto] = {}
    for name in names:
        entry = catalog.get(name)
        model = (models or {}).get(name)
        if model is None:
            model = entry.export(**dict((overrides or {}).get(name, {})))
        exported[name] = model
        xonnx.save(model, root / name / "1" / "model.onnx")
        path = root / name / "config.pbtxt"
        path.write_text(model_config(name, model, instances=instances))
        written.append(path)
    for ens, (step, summary) in ENSEMBLES.items():
        if step not in exported:
            continue
        (root / ens / "1").mkdir(parents=True, exist_ok=True)
        path = root / ens / "config.pbtxt"
        path.write_text(ensemble_config(ens, step, exported[step], summary))
        written.append(path)
    return written
