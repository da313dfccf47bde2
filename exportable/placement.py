"""Where onnxruntime's CUDA provider will run each node of a graph, predicted without a GPU.

No tensors here, only graphs: the words are node, op (``op_type``), input and output slots, element
types (``float``, ``int64``, ``bool``, ...) and the opset version a node resolves to.

How onnxruntime places a node, and how :func:`predict` follows it step by step:

1. Provider-independent ("basic") optimizations run before any provider is chosen: Constant
   nodes become initializers, subgraphs of constants are folded, and ``CastLike`` -- which has no
   kernel on any provider -- is inlined as ``Cast``. :func:`predict` asks the installed onnxruntime
   (the CPU build is enough) for that graph; without onnxruntime it does the CastLike rewrite itself.
2. A node can run on CUDA when the CUDA provider registers a kernel for its op at the opset version
   the node resolves to, for the element types on the node's inputs and outputs. The kernel table is
   ``exportable/data/ort_cuda_kernels.json`` (onnxruntime's generated ``docs/OperatorKernels.md``);
   ``NonMaxSuppression`` is registered without type constraints, which that document cannot show, so
   it comes from the table's ``known_doc_omissions``. Types come from ONNX shape inference.
3. Among the nodes CUDA could run, onnxruntime keeps small host-side work on the CPU (its
   ``GetCpuPreferredNodes``): starting from outputs a CUDA kernel writes to host memory (``Shape``,
   ``Size``) and from the outputs of nodes that fell back, a node whose every input is already on the
   host -- or is a graph input, or an initializer of at most 100 elements -- is put on the CPU too,
   unless CUDA reads that input from host memory by design (``Reshape``'s shape, ``TopK``'s k, ...).
4. Every node without a CUDA kernel falls back to the CPU provider.

Each node is predicted ``cuda``, ``host`` (step 3: CUDA could, onnxruntime prefers the CPU),
``fallback`` (step 4) or ``unknown`` (its types could not be inferred), and gets a role: ``shape``
when its outputs only reach shape-like inputs (``Reshape``'s shape, ``Slice``'s bounds, ``Range``'s
bounds, ...), directly or through other such nodes; ``shape-math`` when it computes only from tensor
shapes and constants (``N - 1``, ``min(k, N)``); else ``data``. A fallback with the ``data`` role is
a **compute fallback**: its data crosses from the GPU to the host and back; :func:`check` raises on
one. A ``host`` node with the ``data`` role is reported (:attr:`Prediction.host_compute`): CUDA could
run it, but onnxruntime's heuristic reads a graph input on the host for it.

Limits: the table is a documentation table read at one onnxruntime commit (a later release may add
kernels); the bodies of ``Scan`` / ``Loop`` / ``If`` are predicted like graphs of their own (their nodes are
named ``<control node>/<body node>``), with the body's formal inputs on the device (the control node hands its
iteration values over in device memory) and values read from the enclosing graph treated as graph inputs;
the host-memory slots below cover the ops these graphs use and were read from onnxruntime's CUDA
kernel registrations (``InputMemoryType`` / ``OutputMemoryType``).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import onnx

__all__ = [
    "PlacementError",
    "NodePrediction",
    "Prediction",
    "kernel_table",
    "cuda_kernel",
    "castlike_to_cast",
    "basic_optimized",
    "predict",
    "check",
]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# CUDA kernels that write an output to host memory (onnxruntime: OutputMemoryType<OrtMemTypeCPUOutput>).
_HOST_OUTPUTS: dict[str, tuple[int, ...]] = {"Shape": (0,), "Size": (0,)}
# CUDA kernels that read an input from host memory (InputMemoryType<OrtMemTypeCPUInput>): onnxruntime
# copies such an input to the host by design, so it never pulls the producer onto the CPU for it.
_HOST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4), "Squeeze": (1,),
    "Unsqueeze": (1,), "TopK": (1,), "Tile": (1,), "CumSum": (1,), "Split": (1,), "Pad": (1, 2, 3),
    "ReduceMax": (1,), "ReduceMin": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceProd": (1,),
    "Clip": (1, 2), "NonMaxSuppression": (2, 3, 4),
}
# Inputs that hold a shape, an axis, a count or bounds rather than data: what makes a node "shape-only".
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    **{op: slots for op, slots in _HOST_INPUTS.items() if op != "Clip"},
    "Range": (0, 1, 2), "OneHot": (1,), "Resize": (1, 2, 3),
}
# onnxruntime never moves a node to the CPU when one of its inputs has one of these types.
_NO_HOST_TYPES = frozenset({"float16", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"})
_SMALL_INITIALIZER = 100  # elements: onnxruntime's kSmallInitializerThreshold


class PlacementError(RuntimeError):
    """A graph would run a compute node on the CPU when given the CUDA provider."""


# --------------------------------------------------------------------------------------------
# The kernel table
# --------------------------------------------------------------------------------------------


@functools.cache
def kernel_table() -> dict[str, Any]:
    """The CUDA provider's kernel table (``exportable/data/ort_cuda_kernels.json``), parsed once."""
    text = resources.files("exportable").joinpath("data", "ort_cuda_kernels.json").read_text()
    return json.loads(text)


def _domain(domain: str) -> str:
    return "ai.onnx" if domain in ("", "ai.onnx") else domain


def cuda_kernel(op_type: str, domain: str, version: int) -> dict[str, list[str]] | None:
    """The type constraints of the CUDA kernel registered for ``op_type`` at ``version``, or None.

    ``version`` is the node's resolved opset version (the ``since_version`` of its schema at the
    model's opset); a kernel registered for ``since..until`` (``until`` None: onwards) matches it.
    """
    table = kernel_table()
    d = _domain(domain)
    ranges = table["ops"].get(d, {}).get(op_type) or table["known_doc_omissions"].get(d, {}).get(op_type)
    for r in ranges or ():
        if r["since"] <= version and (r["until"] is None or version <= r["until"]):
            return r["types"]
    return None


# --------------------------------------------------------------------------------------------
# Step 1: the graph onnxruntime partitions
# --------------------------------------------------------------------------------------------


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value in the main graph (inputs, initializers, inferred values)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown types are reported as such
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[node.output[0]] = onnx.TensorProto.FLOAT
                elif a.name in ("value_int", "value_ints"):
                    types[node.output[0]] = onnx.TensorProto.INT64
    return types


def castlike_to_cast(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``CastLike(x, like)`` replaced by ``Cast(x, to=type of like)``.

    onnxruntime has no CastLike kernel on any provider: it inlines the op's function body, a Cast.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = _elem_types(model)
    for node in out.graph.node:
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx"):
            continue
        like = node.input[1]
        if like not in types:
            raise PlacementError(f"CastLike node {node.name!r}: the type of {like!r} is unknown")
        kept = []
        for a in node.attribute:
            if a.name == "saturate":
                kept.append(onnx.AttributeProto())
                kept[-1].CopyFrom(a)
        node.op_type = "Cast"
        del node.input[1:]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("to", types[like]))
        node.attribute.extend(kept)
    return out


def basic_optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph after onnxruntime's basic (provider-independent) optimizations.

    These run before providers are chosen, so this is the graph the CUDA provider is offered
    (constants folded, Constant nodes as initializers, CastLike inlined as Cast). The installed
    onnxruntime does the work on its CPU provider; nothing here needs a GPU.
    """
    from exportable.onnx import _ort

    ort = _ort()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "basic.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(path)
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=[CPU])
        return onnx.load(str(path))


# --------------------------------------------------------------------------------------------
# Steps 2-4: per node
# --------------------------------------------------------------------------------------------


@dataclass
class NodePrediction:
    """Where one node is predicted to run, and why."""

    name: str
    op_type: str
    domain: str
    version: int | None  # the opset version the node resolves to; None if ONNX has no schema for it
    input_types: tuple[str, ...]  # element type per input slot ("" for a missing optional input)
    output_types: tuple[str, ...]
    kind: str  # "cuda", "host", "fallback" or "unknown"
    role: str  # "shape" (feeds only shape inputs), "shape-math" (computed from shapes and constants), "data"
    reason: str = ""

    @property
    def provider(self) -> str:
        return CUDA if self.kind == "cuda" else CPU

    @property
    def shape_only(self) -> bool:
        """Shape work: it only feeds shape inputs, or only reads tensor shapes and constants."""
        return self.role != "data"

    @property
    def compute_fallback(self) -> bool:
        return self.kind == "fallback" and self.role == "data"

    def types(self) -> str:
        return f"({', '.join(t or '-' for t in self.input_types)}) -> ({', '.join(self.output_types)})"


@dataclass
class Prediction:
    """The predicted placement of every node of one graph."""

    nodes: list[NodePrediction]
    exported_nodes: int  # nodes in the model as given (before onnxruntime's basic optimizations)
    optimized: bool  # True when the nodes are those of onnxruntime's basic-optimized graph
    opset: int
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[NodePrediction]:
        return [n for n in self.nodes if n.kind == kind]

    @property
    def compute_fallbacks(self) -> list[NodePrediction]:
        return [n for n in self.nodes if n.compute_fallback]

    @property
    def shape_fallbacks(self) -> list[NodePrediction]:
        return [n for n in self.nodes if n.kind == "fallback" and n.shape_only]

    @property
    def host_compute(self) -> list[NodePrediction]:
        """Nodes CUDA could run that onnxruntime keeps on the CPU although they read data (not only shapes):
        one input already on the host, the others graph inputs or small constants (onnxruntime assumes graph
        inputs are cheap to read on the host; bound on the GPU, they are copied there)."""
        return [n for n in self.nodes if n.kind == "host" and n.role == "data"]

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("cuda", "host", "fallback", "unknown")}
        for n in self.nodes:
            out[n.kind] += 1
        out["shape_only_off_cuda"] = sum(n.shape_only for n in self.nodes if n.kind != "cuda")
        out["host_compute"] = len(self.host_compute)
        out["compute_fallback"] = len(self.compute_fallbacks)
        return out

    def summary(self) -> str:
        c = self.counts()
        return (f"{len(self.nodes)} nodes: {c['cuda']} CUDA, {c['host']} host ({c['host_compute']} reading data), "
                f"{c['fallback']} fallback ({c['compute_fallback']} compute), {c['unknown']} unknown")

    def report(self, *, all_nodes: bool = False) -> str:
        """Text report: counts, then every node off CUDA (or every node) with its types and reason."""
        graph = "onnxruntime's basic-optimized graph" if self.optimized else "the graph as exported"
        lines = [f"{self.summary()} ({graph}, opset {self.opset}; {self.exported_nodes} nodes exported)"]
        lines += [f"note: {n}" for n in self.notes]
        shown = self.nodes if all_nodes else [n for n in self.nodes if n.kind != "cuda"]
        if shown:
            width = max(len(n.name) for n in shown)
            lines.append(f"{'node':<{width}}  {'op':<18} {'placed':<9} {'role':<10} types / why")
            for n in shown:
                why = f"  {n.reason}" if n.reason else ""
                lines.append(f"{n.name:<{width}}  {n.op_type:<18} {n.kind:<9} {n.role:<10} {n.types()}{why}")
        return "\n".join(lines)


def _type_name(elem: int | None) -> str:
    if not elem:
        return ""
    return onnx.TensorProto.DataType.Name(elem).lower()


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {_domain(o.domain): o.version for o in model.opset_import}


def _slot_types(schema: Any, params: Sequence[Any], names: Sequence[str], types: dict[str, int]):
    """Yield (formal parameter, actual element type name) for each present slot of a node."""
    for i, name in enumerate(names):
        if not name:
            continue
        if i < len(params):
            p = params[i]
        elif params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            p = params[-1]
        else:
            continue
        yield p, _type_name(types.get(name))


def _kernel_check(node: onnx.NodeProto, opsets: dict[str, int], types: dict[str, int]):
    """(version, kind, reason): does CUDA register a kernel for this node's op, version and types?"""
    domain = _domain(node.domain)
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        schema = None
    if schema is None:
        return None, "unknown", f"ONNX has no schema for {domain}.{node.op_type}"
    version = schema.since_version
    constraints = cuda_kernel(node.op_type, domain, version)
    if constraints is None:
        return version, "fallback", f"no CUDA kernel for {node.op_type} (version {version})"
    slots = list(_slot_types(schema, schema.inputs, node.input, types))
    slots += list(_slot_types(schema, schema.outputs, node.output, types))
    for key, allowed in constraints.items():
        for p, actual in slots:
            if p.type_str != key and p.name != key:
                continue
            if not actual:
                return version, "unknown", f"type of {p.name} not inferred"
            if actual not in allowed:
                return version, "fallback", (f"CUDA's {node.op_type} takes {key} in {{{', '.join(allowed)}}}, "
                                             f"not {actual} ({p.name})")
    return version, "cuda", ""


def _initializer_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Element count of every initializer, counting Constant nodes (onnxruntime makes them initializers)."""
    sizes = {}
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        sizes[t.name] = n
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                n = 1
                if a.name == "value":
                    for d in a.t.dims:
                        n *= d
                elif a.name in ("value_floats", "value_ints"):
                    n = len(a.floats) + len(a.ints)
                sizes[node.output[0]] = n
    return sizes


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The values ``graph`` reads from its enclosing scopes: its nodes' inputs and, recursively, what its nested
    bodies read from scopes above them, less what ``graph`` defines (inputs, initializers, node outputs)."""
    own = {x.name for x in graph.input} | {t.name for t in graph.initializer}
    own |= {o for n in graph.node for o in n.output}
    reads = {x for n in graph.node for x in n.input if x}
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                reads |= _outer_reads(a.g)
    return reads - own


def _body_models(model: onnx.ModelProto, types: dict[str, int]) -> list[tuple[str, onnx.ModelProto, set[str]]]:
    """``(control node name, body as a model, the body's formal inputs)`` for every graph attribute of the
    main graph's nodes. Values the body reads from the enclosing scope (also those only its own nested bodies
    read) become extra graph inputs, typed from ``types``."""
    out = []
    for i, node in enumerate(model.graph.node):
        for a in node.attribute:
            if a.type != onnx.AttributeProto.GRAPH:
                continue
            body = onnx.GraphProto()
            body.CopyFrom(a.g)
            outer = sorted(_outer_reads(body))
            formal = {x.name for x in body.input}
            for name in outer:
                body.input.append(onnx.helper.make_tensor_value_info(name, types.get(name, 0), None))
            sub = onnx.helper.make_model(body, opset_imports=list(model.opset_import))
            sub.ir_version = model.ir_version
            out.append((f"{node.name or f'#{i}'}/{a.name}", sub, formal))
    return out


def predict(model: onnx.ModelProto, *, optimize: bool = True) -> Prediction:
    """Predict the provider of every node of ``model`` under ``[CUDA, CPU]`` (see the module doc).

    Args:
        model: an ONNX model (a catalog export, or any graph in the ``ai.onnx`` domain).
        optimize: first apply onnxruntime's basic optimizations (step 1; needs onnxruntime, any
            build). Without them the prediction runs on the graph as given, with CastLike rewritten
            and Constant nodes counted as initializers.
    """
    exported = len(model.graph.node)
    notes = []
    graph_model = model
    if optimize:
        try:
            graph_model = basic_optimized(model)
        except ImportError:
            optimize = False
            notes.append("onnxruntime is not installed: predicted on the graph as exported")
        except Exception as exc:  # noqa: BLE001 - e.g. a node the CPU provider has no kernel for either
            optimize = False
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"onnxruntime could not load the graph on its CPU provider ({first}): predicted on "
                         "the graph as exported")
    return _predict(graph_model, exported, optimize, notes, set())


def _predict(graph_model: onnx.ModelProto, exported: int, optimize: bool, notes: list[str],
             device_inputs: set[str]) -> Prediction:
    """Steps 2-4 on ``graph_model`` (already optimized if ``optimize``); ``device_inputs``: graph inputs that
    live in device memory (a control-flow body's formal inputs). Bodies are predicted recursively."""
    graph_model = castlike_to_cast(graph_model)
    types = _elem_types(graph_model)
    opsets = _opsets(graph_model)
    g = graph_model.graph
    nodes = [n for n in g.node if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx"))]
    init_sizes = _initializer_sizes(graph_model)
    graph_inputs = {i.name for i in g.input} - set(init_sizes) - device_inputs
    graph_outputs = {o.name for o in g.output}
    uses: dict[str, list[tuple[int, int]]] = {}
    for j, n in enumerate(nodes):
        for k, name in enumerate(n.input):
            if name:
                uses.setdefault(name, []).append((j, k))

    # Step 2: kernels.
    checked = [_kernel_check(n, opsets, types) for n in nodes]

    # Shape-only: every use of every output is a shape-like input or feeds a shape-only node.
    shape_only = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        outs = [o for o in nodes[i].output if o]
        if not outs or any(o in graph_outputs for o in outs):
            continue
        consumers = [u for o in outs for u in uses.get(o, ())]
        shape_only[i] = bool(consumers) and all(
            k in _SHAPE_INPUTS.get(nodes[j].op_type, ()) or shape_only[j] for j, k in consumers)

    # Shape math: every input is a constant, a Shape / Size output or the output of other shape math.
    constants = set(init_sizes)
    shape_values: set[str] = set()
    shape_math = [False] * len(nodes)
    for i, n in enumerate(nodes):
        present = [x for x in n.input if x]
        if n.op_type in ("Shape", "Size"):
            shape_math[i] = True
        elif present and any(x not in constants for x in present):
            shape_math[i] = all(x in constants or x in shape_values for x in present)
        if shape_math[i]:
            shape_values.update(o for o in n.output if o)

    # Step 3: onnxruntime's forward trace from host-resident outputs.
    on_cuda = {i for i, (_, kind, _) in enumerate(checked) if kind == "cuda"}
    host_args: set[str] = set()
    heap: list[int] = []

    def push_consumers(names: Sequence[str]) -> None:
        for name in names:
            for j, _ in uses.get(name, ()):
                heapq.heappush(heap, j)

    for i in sorted(on_cuda):
        for slot in _HOST_OUTPUTS.get(nodes[i].op_type, ()):
            if slot < len(nodes[i].output) and nodes[i].output[slot]:
                host_args.add(nodes[i].output[slot])
                push_consumers([nodes[i].output[slot]])
    visited: set[int] = set()
    host: set[int] = set()
    while heap:
        i = heapq.heappop(heap)
        if i in visited:
            continue
        visited.add(i)
        node = nodes[i]
        if i not in on_cuda:  # a fallback (or unknown) node: its outputs are on the host
            host_args.update(o for o in node.output if o)
            push_consumers(node.output)
            continue
        place = True
        for k, name in enumerate(node.input):
            if _type_name(types.get(name)) in _NO_HOST_TYPES:
                place = False
                break
            if name and (init_sizes.get(name, _SMALL_INITIALIZER + 1) <= _SMALL_INITIALIZER or name in graph_inputs):
                continue
            if name not in host_args or k in _HOST_INPUTS.get(node.op_type, ()):
                place = False
                break
        if place:
            host.add(i)
            host_args.update(o for o in node.output if o)
            push_consumers(node.output)

    out = []
    for i, (node, (version, kind, reason)) in enumerate(zip(nodes, checked)):
        if kind == "cuda" and i in host:
            kind, reason = "host", "every input is already on the host (onnxruntime keeps it on the CPU)"
        out.append(NodePrediction(
            name=node.name or f"#{i}", op_type=node.op_type, domain=_domain(node.domain), version=version,
            input_types=tuple(_type_name(types.get(x)) if x else "" for x in node.input),
            output_types=tuple(_type_name(types.get(x)) for x in node.output if x),
            kind=kind, role="shape" if shape_only[i] else "shape-math" if shape_math[i] else "data",
            reason=reason))
    for prefix, body, formal in _body_models(graph_model, types):
        for n in _predict(body, 0, optimize, [], formal).nodes:
            out.append(dataclasses.replace(n, name=f"{prefix}/{n.name}"))
    return Prediction(out, exported, optimize, opsets.get("ai.onnx", 0), notes)


def check(model: onnx.ModelProto, *, name: str = "model", optimize: bool = True) -> Prediction:
    """:func:`predict`, raising :class:`PlacementError` when a compute node would fall back to the CPU."""
    pred = predict(model, optimize=optimize)
    bad = pred.compute_fallbacks
    if bad:
        listed = "; ".join(f"{n.name} ({n.op_type} {n.types()}: {n.reason})" for n in bad)
        raise PlacementError(f"{name}: {len(bad)} compute node(s) would fall back to the CPU: {listed}")
    return pred
