"""Export to ONNX, run in onnxruntime, compare with eager, and report where each node ran.

The export rules (``docs/export.md``), applied by :func:`export` every time:

1. the dynamo exporter with ``optimize=False`` (the default optimizer deletes small eps
   constants and turns guarded divisions into NaN) and the package's custom-op translations;
2. every dim named dynamic stays dynamic (the exporter can silently make a dim static): checked,
   and a :class:`ExportError` is raised if one was specialised;
3. node metadata (stack traces with local paths) stripped; model metadata filled with the
   component, package version, hyper-parameters and the I/O contract;
4. ``onnx.checker`` (full check) and strict shape inference pass;
5. saved as one file (``external_data=False``).

Running: :func:`session` (best providers first) and :func:`run` (tensors or arrays in, numpy out), or
:class:`DeviceRunner` (torch tensors in and out on their device, through onnxruntime's I/O binding:
nothing copied through the host). :func:`placement` reports which provider ran each node;
``exportable.placement`` predicts it for the CUDA provider without a GPU.

onnxruntime is an optional dependency (extras ``cpu`` or ``gpu``); it is imported on first use.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from exportable.nms import TRANSLATIONS as _NMS_TRANSLATIONS
from exportable.scatter import TRANSLATIONS as _SCATTER_TRANSLATIONS

__all__ = [
    "ExportError",
    "export",
    "save",
    "dynamic_dims",
    "check_dynamic_dims",
    "graph_io",
    "iter_nodes",
    "available_providers",
    "best_providers",
    "session",
    "run",
    "DeviceRunner",
    "compare",
    "Comparison",
    "placement",
    "placement_report",
]
TRANSLATIONS = {**_NMS_TRANSLATIONS, **_SCATTER_TRANSLATIONS}
"""The exporter's translation table for the package's custom operators (NMS, row-wise scatter-max)."""

# Shape-only operators that onnxruntime deliberately places on CPU; never a performance concern.
SHAPE_OPS = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Reshape", "Unsqueeze", "Squeeze", "Concat",
    "Gather", "Slice", "Cast", "Range", "Equal", "Max", "Min", "Identity", "Expand",
})


class ExportError(RuntimeError):
    """An export that would silently produce a wrong or less general graph."""


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _torch_dynamic_shapes(
    args: Sequence[Tensor], dims: Sequence[Sequence[str | int]]
) -> tuple[dict[int, Any], ...]:
    """``torch.export.Dim`` per named dim; the same name is the same Dim across inputs."""
    made: dict[str, Any] = {}
    shapes = []
    for arg, spec in zip(args, dims):
        if arg.dim() != len(spec):
            raise ExportError(f"example input has shape {tuple(arg.shape)}, the contract says {tuple(spec)}")
        axes = {}
        for axis, d in enumerate(spec):
            if isinstance(d, str):
                if d not in made:
                    made[d] = torch.export.Dim(d)
                axes[axis] = made[d]
        shapes.append(axes)
    return tuple(shapes)


def _strip(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip(attr.g)
            for g in attr.graphs:
                _strip(g)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        del vi.metadata_props[:]
        vi.doc_string = ""
    for init in graph.initializer:
        del init.metadata_props[:]
    del graph.metadata_props[:]
    graph.doc_string = ""


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove per-node metadata (stack traces, local paths, FX text) so bytes are reproducible."""
    _strip(model.graph)
    for fn in model.functions:
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""
        del fn.metadata_props[:]
    del model.metadata_props[:]
    return model


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, then, after each node, the nodes of its subgraphs (``Scan``, ``Loop`` and
    ``If`` bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_nodes(attr.g)
            for g in attr.graphs:
                yield from iter_nodes(g)


def dynamic_dims(model: onnx.ModelProto) -> dict[str, list[str | int | None]]:
    """Per graph input and output, each dim's ``dim_param`` (str), ``dim_value`` (int) or None."""
    out: dict[str, list[str | int | None]] = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims: list[str | int | None] = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                dims.append(d.dim_param)
            elif d.HasField("dim_value"):
                dims.append(d.dim_value)
            else:
                dims.append(None)
        out[vi.name] = dims
    return out


def check_dynamic_dims(model: onnx.ModelProto, input_dims: Mapping[str, Sequence[str | int]]) -> None:
    """Raise :class:`ExportError` if a dim meant to be dynamic became a constant."""
    got = dynamic_dims(model)
    for name, spec in input_dims.items():
        if name not in got:
            raise ExportError(f"graph input {name!r} is missing (inputs: {list(got)})")
        if len(got[name]) != len(spec):
            raise ExportError(f"graph input {name!r} has rank {len(got[name])}, expected {len(spec)}")
        for axis, (want, have) in enumerate(zip(spec, got[name])):
            if isinstance(want, str) and not isinstance(have, str):
                raise ExportError(
                    f"graph input {name!r} axis {axis} ({want}) was specialised to {have}: the "
                    "exporter made a dynamic dim static (a Python branch or loop on that size?)"
                )
            if isinstance(want, int) and have != want:
                raise ExportError(f"graph input {name!r} axis {axis}: expected {want}, got {have}")


def _name_dims(model: onnx.ModelProto, dims: Mapping[str, Sequence[str | int]]) -> None:
    """Write the contract's dim names onto graph inputs/outputs (e.g. NMS's ``u0`` -> ``K``)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        spec = dims.get(vi.name)
        if spec is None:
            continue
        for d, want in zip(vi.type.tensor_type.shape.dim, spec):
            if isinstance(want, str) and not d.HasField("dim_value"):
                d.dim_param = want


def export(
    module: nn.Module,
    args: Sequence[Tensor],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    input_dims: Sequence[Sequence[str | int]],
    output_dims: Sequence[Sequence[str | int]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    doc: str = "",
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export ``module`` called on ``args`` following the package's export rules.

    Args:
        module: an ``nn.Module`` whose ``forward`` takes ``args`` positionally.
        args: example inputs; every dynamic dim should be at least 2 (the exporter specialises
            dims of size 0 and 1).
        input_names, output_names: graph I/O names.
        input_dims: per input, each axis as a dim name (dynamic) or an int (static).
        output_dims: per output, names to write onto the output dims (documentation only).
        metadata: model-level ``metadata_props`` (values JSON-encoded unless str).
        doc: the model's doc string.
        opset: ONNX opset; the exporter's default when None.

    Returns:
        The checked, stripped ``onnx.ModelProto``.
    """
    module = module.eval()
    shapes: Any = _torch_dynamic_shapes(args, input_dims)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        shapes = (shapes,)  # forward(*feats): torch.export wants one spec for the whole *args
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" etc.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                tuple(args),
                dynamo=True,
                optimize=False,
                dynamic_shapes=shapes,
                input_names=list(input_names),
                output_names=list(output_names),
                custom_translation_table=TRANSLATIONS,
                verbose=False,
                **kwargs,
            )
    quiet.setLevel(level)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    strip_metadata(model)
    in_dims = dict(zip(input_names, input_dims))
    check_dynamic_dims(model, in_dims)
    _name_dims(model, in_dims | dict(zip(output_names, output_dims or ())))
    meta = {"assignlab.version": _version()} | dict(metadata or {})
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    model.doc_string = doc
    model.producer_name = "assignlab"
    model.producer_version = _version()
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` as one self-contained file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def graph_io(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """The graph's I/O contract: names, element types and dims (for golden tests and docs)."""
    def one(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        elem = vi.type.tensor_type.elem_type
        dims = dynamic_dims_of(vi)
        return {"name": vi.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(elem).name, "shape": dims}

    return {"inputs": [one(v) for v in model.graph.input], "outputs": [one(v) for v in model.graph.output]}


def dynamic_dims_of(vi: onnx.ValueInfoProto) -> list[str | int | None]:
    out: list[str | int | None] = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None))
    return out


def _version() -> str:
    from exportable import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the extra installed
        raise ImportError(
            "onnxruntime is not installed: pip install 'assignlab[cpu]' (or 'assignlab[gpu]' for CUDA)"
        ) from exc
    return onnxruntime


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def best_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always last."""
    have = available_providers()
    order = [p for p in ("CUDAExecutionProvider",) if p in have]
    return order + ["CPUExecutionProvider"]


def session(
    model: onnx.ModelProto | str | Path | bytes,
    providers: Sequence[str] | None = None,
    *,
    threads: int | None = None,
    record_placement: bool = False,
    profile: bool = False,
):
    """An ``onnxruntime.InferenceSession`` with the best available providers.

    Args:
        model: a ModelProto, serialized bytes, or a path.
        providers: explicit providers; default :func:`best_providers`.
        threads: intra-op threads (benchmarks fix this); default onnxruntime's choice.
        record_placement: record which execution provider runs each node (see :func:`placement`).
        profile: enable onnxruntime's profiler (per-kernel provider and timings).
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if record_placement:
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if profile:
        so.enable_profiling = True
    if isinstance(model, onnx.ModelProto):
        source: Any = model.SerializeToString()
    elif isinstance(model, Path):
        source = str(model)
    else:
        source = model
    return ort.InferenceSession(source, so, providers=list(providers or best_providers()))


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def run(sess, inputs: Sequence[Any] | Mapping[str, Any]) -> list[np.ndarray]:
    """Run ``sess`` on tensors/arrays given in graph-input order or by name."""
    names = [i.name for i in sess.get_inputs()]
    if isinstance(inputs, Mapping):
        feed = {k: _to_numpy(v) for k, v in inputs.items()}
    else:
        if len(inputs) != len(names):
            raise ValueError(f"inputs: the graph takes {len(names)} inputs {names}, got {len(inputs)}")
        feed = {n: _to_numpy(v) for n, v in zip(names, inputs)}
    return sess.run(None, feed)


# ORT type strings <-> torch dtypes (numpy dtypes name the element type when binding).
_ORT_TO_TORCH = {
    "tensor(float)": torch.float32, "tensor(double)": torch.float64, "tensor(float16)": torch.float16,
    "tensor(bfloat16)": torch.bfloat16, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
    "tensor(int16)": torch.int16, "tensor(int8)": torch.int8, "tensor(uint8)": torch.uint8,
    "tensor(bool)": torch.bool,
}
_TORCH_TO_NUMPY = {
    torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16, torch.int64: np.int64,
    torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
}


class DeviceRunner:
    """Run an onnxruntime session on torch tensors where they live (CPU or CUDA), through IOBinding.

    Inputs are bound by their data pointers and outputs come back as torch tensors on the same
    device: nothing goes through numpy.

    - Outputs whose shape is fixed by the inputs (every dim a number or a dim name that an input
      carries, e.g. ``gt_index (B, N)``) are allocated by torch before the run and onnxruntime writes
      into them; pass ``out={"name": tensor}`` to supply the buffer yourself (reused across calls).
    - Outputs whose size depends on the data (NMS ``keep (K,)``, ``anchors (N, 4)`` from feature-map
      shapes) and zero-size outputs are allocated by onnxruntime on the device and handed to torch
      through DLPack, which shares the memory.

    Copies that remain, listed in ``last_copies`` after each call: a non-contiguous input is made
    contiguous first; an onnxruntime without DLPack support returns ORT-allocated outputs through
    the host. Host syncs that remain on CUDA: one before the run (torch's stream is synchronised,
    onnxruntime computes on its own stream) and onnxruntime's own at the end of the run; inside
    the graph, CUDA ``NonMaxSuppression`` copies its per-(image, class) counts to the host and waits.

        runner = DeviceRunner(session(model))            # CUDA provider first when available
        gt_index, labels, *rest = runner(*tensors)       # torch tensors in, torch tensors out
    """

    def __init__(self, sess) -> None:
        self.sess = sess
        self.inputs = list(sess.get_inputs())
        self.outputs = list(sess.get_outputs())
        self.providers = list(sess.get_providers())
        self.last_copies: list[str] = []
        self.last_owners: dict[str, str] = {}  # per output: who allocated it ("yours", "torch", "onnxruntime")
        for o in self.outputs:
            if o.type not in _ORT_TO_TORCH:
                raise TypeError(f"output {o.name!r} has type {o.type}, which DeviceRunner does not map to torch")

    def _device(self, tensors: Sequence[Tensor]) -> torch.device:
        device = tensors[0].device if tensors else torch.device("cpu")
        for spec, t in zip(self.inputs, tensors):
            if t.device != device:
                raise ValueError(f"{spec.name}: on {t.device}, but {self.inputs[0].name} is on {device}; "
                                 "put every input on one device")
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in self.providers:
                raise ValueError(f"inputs are on {device} but the session runs on {self.providers}: make the "
                                 "session with the CUDA provider (onnxruntime-gpu), or move the inputs to the CPU")
            want = self.sess.get_provider_options().get("CUDAExecutionProvider", {}).get("device_id", "0")
            if int(want) != (device.index or 0):
                raise ValueError(f"inputs are on {device} but the session's CUDA device is {want}")
        elif device.type != "cpu":
            raise ValueError(f"inputs on {device}: DeviceRunner binds CPU and CUDA tensors only")
        return device

    def __call__(self, *args: Tensor, out: Mapping[str, Tensor] | None = None, **kwargs: Tensor) -> tuple[Tensor, ...]:
        """Run on ``args`` (graph-input order) or ``kwargs`` (by name); returns the outputs in graph order."""
        names = [i.name for i in self.inputs]
        if args and kwargs:
            raise ValueError("pass the inputs either in graph order or by name, not both")
        if kwargs:
            missing = [n for n in names if n not in kwargs]
            unknown = sorted(set(kwargs) - set(names))
            if missing or unknown:
                raise ValueError(f"inputs: missing {missing}, unknown {unknown}; the graph takes {names}")
            args = tuple(kwargs[n] for n in names)
        if len(args) != len(names):
            raise ValueError(f"inputs: the graph takes {len(names)} inputs {names}, got {len(args)}")
        self.last_copies = []
        self.last_owners = {}
        tensors = []
        for spec, t in zip(self.inputs, args):
            if not isinstance(t, Tensor):
                raise TypeError(f"{spec.name}: expected a torch.Tensor, got {type(t).__name__}")
            want = _ORT_TO_TORCH.get(spec.type)
            if t.dtype != want:
                raise TypeError(f"{spec.name}: the graph takes {spec.type}, got {t.dtype}; cast with .to({want})")
            if t.dim() != len(spec.shape):
                raise ValueError(f"{spec.name}: the graph takes rank {len(spec.shape)} {tuple(spec.shape)}, "
                                 f"got shape {tuple(t.shape)}")
            if not t.is_contiguous():
                t = t.contiguous()
                self.last_copies.append(f"input {spec.name}: made contiguous")
            tensors.append(t)
        device = self._device(tensors)
        ort_device, device_id = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)

        # Dim names the inputs fix (the same name must have the same size everywhere).
        sizes: dict[str, int] = {}
        for spec, t in zip(self.inputs, tensors):
            for axis, d in enumerate(spec.shape):
                if isinstance(d, str):
                    if sizes.setdefault(d, t.shape[axis]) != t.shape[axis]:
                        raise ValueError(f"{spec.name}: dim {d} is {t.shape[axis]} here but {sizes[d]} in an "
                                         "earlier input")

        binding = self.sess.io_binding()
        for spec, t in zip(self.inputs, tensors):
            binding.bind_input(spec.name, ort_device, device_id, _TORCH_TO_NUMPY[t.dtype], list(t.shape), t.data_ptr())
        results: list[Tensor | None] = []
        out = dict(out or {})
        unknown = sorted(set(out) - {o.name for o in self.outputs})
        if unknown:
            raise ValueError(f"out: unknown output(s) {unknown}; the graph's outputs are "
                             f"{[o.name for o in self.outputs]}")
        for spec in self.outputs:
            dtype = _ORT_TO_TORCH[spec.type]
            shape = [d if isinstance(d, int) else sizes.get(d) if isinstance(d, str) else None for d in spec.shape]
            buf = out.get(spec.name)
            if buf is not None:
                if buf.dtype != dtype or buf.device != device or not buf.is_contiguous():
                    raise ValueError(f"out[{spec.name!r}]: needs a contiguous {dtype} tensor on {device}, got "
                                     f"{buf.dtype} on {buf.device}")
                if None not in shape and list(buf.shape) != shape:
                    raise ValueError(f"out[{spec.name!r}]: shape {tuple(buf.shape)}, the graph writes {tuple(shape)}")
                self.last_owners[spec.name] = "yours"
            elif None not in shape and math.prod(shape) > 0:
                buf = torch.empty(shape, dtype=dtype, device=device)
                self.last_owners[spec.name] = "torch"
            if buf is not None and buf.numel() > 0:
                binding.bind_output(spec.name, ort_device, device_id, _TORCH_TO_NUMPY[dtype], list(buf.shape),
                                    buf.data_ptr())
                results.append(buf)
            else:  # data-dependent (or empty) shape: onnxruntime allocates on the device
                binding.bind_output(spec.name, ort_device, device_id)
                results.append(None)
                self.last_owners[spec.name] = "onnxruntime"
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # inputs written on torch's stream are ready
        self.sess.run_with_iobinding(binding)
        values = binding.get_outputs()
        final = []
        for spec, buf, value in zip(self.outputs, results, values):
            final.append(buf if buf is not None else self._to_torch(spec.name, value, device))
        return tuple(final)

    def _to_torch(self, name: str, value: Any, device: torch.device) -> Tensor:
        if hasattr(value, "__dlpack__"):
            return torch.from_dlpack(value)
        c_value = getattr(value, "_ortvalue", None)
        if c_value is not None and hasattr(c_value, "to_dlpack"):
            return torch.from_dlpack(c_value.to_dlpack())
        self.last_copies.append(f"output {name}: through the host (this onnxruntime has no DLPack export)")
        return torch.from_numpy(value.numpy()).to(device)


@dataclass
class Comparison:
    """Eager vs onnxruntime on one set of inputs."""

    name: str
    exact: bool
    close: bool
    max_abs_diff: float
    shape_eager: tuple[int, ...]
    shape_onnx: tuple[int, ...]
    dtype: str
    mismatches: int = 0
    note: str = ""
    first_mismatch: tuple[int, ...] | None = field(default=None)

    def __str__(self) -> str:
        verdict = "exact" if self.exact else ("close" if self.close else "DIFFERS")
        where = "" if self.first_mismatch is None else f", first at {self.first_mismatch}"
        return (
            f"{self.name:<16} {verdict:<8} max|diff| {self.max_abs_diff:.3g} shape {self.shape_eager}"
            f" ({self.mismatches} mismatches{where}) {self.note}"
        )


def compare(
    names: Sequence[str],
    eager: Sequence[Any],
    onnx_out: Sequence[np.ndarray],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> list[Comparison]:
    """Compare outputs: integer and bool outputs must be equal; floats within atol + rtol·|x|."""
    results = []
    for name, e, o in zip(names, eager, onnx_out):
        e = _to_numpy(e)
        o = np.asarray(o)
        if e.shape != o.shape or e.dtype != o.dtype:
            results.append(Comparison(name, False, False, float("inf"), e.shape, o.shape, str(e.dtype),
                                      note=f"shape/dtype differ: eager {e.shape} {e.dtype}, onnx {o.shape} {o.dtype}"))
            continue
        if e.size == 0:
            results.append(Comparison(name, True, True, 0.0, e.shape, o.shape, str(e.dtype)))
            continue
        if np.issubdtype(e.dtype, np.floating):
            same = (e == o) | (np.isnan(e) & np.isnan(o))
            with np.errstate(invalid="ignore"):
                diff = np.where(same, 0.0, np.abs(e.astype(np.float64) - o.astype(np.float64)))
            ok = same | (diff <= atol + rtol * np.abs(e.astype(np.float64)))
            exact, close = bool(same.all()), bool(ok.all())
            max_diff = float(np.nanmax(diff)) if diff.size else 0.0
            bad = ~ok
        else:
            bad = e != o
            exact = close = not bool(bad.any())
            max_diff = float(np.abs(e.astype(np.int64) - o.astype(np.int64)).max()) if e.size else 0.0
        first = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None
        results.append(Comparison(name, exact, close, max_diff, e.shape, o.shape, str(e.dtype),
                                  mismatches=int(bad.sum()), first_mismatch=first))
    return results


# --------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------


@dataclass
class NodePlacement:
    op_type: str
    name: str
    provider: str

    @property
    def shape_only(self) -> bool:
        return self.op_type in SHAPE_OPS


def placement(sess) -> list[NodePlacement]:
    """Which execution provider runs each node (session made with ``record_placement=True``)."""
    info = getattr(sess, "get_provider_graph_assignment_info", None)
    if info is None:
        raise RuntimeError("this onnxruntime cannot report placement (needs >= 1.22)")
    rows = []
    for sub in info():
        for node in sub.get_nodes():
            rows.append(NodePlacement(node.op_type, node.name, sub.ep_name))
    return rows


def placement_report(rows: Sequence[NodePlacement], *, preferred: str | None = None) -> str:
    """A markdown table of op types per provider; flags compute nodes off the preferred provider."""
    preferred = preferred or (rows[0].provider if rows else "")
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r.op_type, r.provider)] = counts.get((r.op_type, r.provider), 0) + 1
    lines = ["| op | provider | nodes | note |", "|---|---|---|---|"]
    for (op_type, provider), n in sorted(counts.items()):
        note = ""
        if provider != preferred:
            note = "shape computation (expected)" if op_type in SHAPE_OPS else "**compute node off " + preferred + "**"
        lines.append(f"| {op_type} | {provider} | {n} | {note} |")
    return "\n".join(lines)


def model_bytes(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    return buf.getvalue()
