"""The GPU report: every catalog graph three ways on the benchmark workloads, in one command.

    python benchmarks/gpu.py                         # what `make bench-gpu` runs -> benchmarks/results/gpu.md
    python benchmarks/gpu.py --only nms max_iou_assigner --repeats 10
    python benchmarks/gpu.py --models build/triton   # pre-exported graphs: DIR/NAME/1/model.onnx or DIR/NAME.onnx

The three ways, on the same inputs:

1. torch eager on CUDA (the catalog entry's module, moved to the GPU);
2. onnxruntime's CUDA provider through ``exportable.onnx.DeviceRunner``: torch CUDA tensors are bound
   as inputs and outputs, nothing goes through the host;
3. onnxruntime on the CPU (``exportable.onnx.run``).

Per graph it reports parity against torch CUDA (index outputs exact, floats within the entry's
tolerance), time per image (median of ``--repeats`` runs after one warm-up; each CUDA run ends
synchronised), peak device memory (torch: ``torch.cuda.max_memory_allocated`` over the run;
onnxruntime: the device memory its CUDA provider holds after the first run -- the arena grows
exactly as requested (``kSameAsRequested``) and never shrinks, so that is its peak -- plus the
output tensors torch allocated for it), and placement: what onnxruntime really ran off CUDA
(``session.record_ep_graph_assignment_info``) against ``exportable.placement``'s prediction.

Inputs: the named workloads of docs/workloads.md (``lessons.scenes`` and each topic's
``benchmark_case``); a graph without a workload of its own gets its catalog example inputs at
workload sizes, and the table says which.

It runs from the source tree with only torch, numpy, onnx, onnxscript and onnxruntime-gpu
importable (jaxtyping, used for annotations only, gets a stand-in when missing). Staging
onnxruntime-gpu on a machine without network: DEVELOPERS.md. Without a CUDA device the script says
so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lessons import workload_cases as lesson_cases  # explicit: one function per topic

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "gpu.md"
MIB = 1024.0 * 1024.0

# Graphs that assign or sample first: if the time budget runs out, these have been measured.
PRIORITY = (
    "max_iou_assigner", "atss_assigner", "simota_assigner", "task_aligned_assigner",
    "task_aligned_assigner_ultralytics", "o2f_assigner", "retinanet_targets", "rpn_anchor_targets",
    "roi_head_targets", "rpn_proposals", "nms", "retinanet_postprocess", "o2f_postprocess",
)


def _stand_in_for_jaxtyping() -> bool:
    """Register a minimal ``jaxtyping`` when it is not installed: ``Float[Tensor, "N 4"]`` -> ``Tensor``.

    The package uses jaxtyping for annotations only; nothing checks them at run time.
    """
    if importlib.util.find_spec("jaxtyping") is not None:
        return False

    class _Dtype:
        def __getitem__(self, item: Any) -> Any:
            return item[0] if isinstance(item, tuple) else item

    def dtype(name: str) -> _Dtype:  # Float, Int, Int64, Bool, Shaped, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return _Dtype()

    module = types.ModuleType("jaxtyping")
    module.__dict__["__getattr__"] = dtype
    sys.modules["jaxtyping"] = module
    return True


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _anchors(workload: str):
    import torch

    from exportable.anchors import AnchorGenerator
    from lessons.scenes import WORKLOADS

    wl = WORKLOADS[workload]
    per_level = AnchorGenerator(**wl.generator_kwargs()).grid_anchors(wl.featmap_sizes())
    anchors = torch.cat(per_level)  # (N, 4)
    level_ids = torch.cat([torch.full((len(a),), i, dtype=torch.int64) for i, a in enumerate(per_level)])  # (N,)
    return anchors, level_ids


def _gts(workload: str, seed: int = 0):
    from lessons.scenes import make_workload_batch

    return make_workload_batch(workload, seed=seed)


def _complete(entry, given: dict[str, Any], b: int, n: int):
    """The entry's inputs in graph order; an optional mask the workload does not set is all True."""
    import torch

    out = []
    for spec in entry.inputs:
        if spec.name in given:
            out.append(given[spec.name])
        elif spec.name in ("anchor_mask", "valid_flags", "roi_mask"):
            out.append(torch.ones(b, n, dtype=torch.bool))
        else:
            raise KeyError(f"{entry.name}: the workload does not give input {spec.name!r}")
    return tuple(out)


def _retina_assigner(workload: str):
    def make(entry):
        import torch

        anchors, _ = _anchors(workload)
        g = _gts(workload)
        b, n = g.gt_boxes.shape[0], anchors.shape[0]
        given = {"anchors": anchors, "gt_boxes": g.gt_boxes, "gt_labels": g.gt_labels, "gt_mask": g.gt_mask,
                 "image_sizes": g.image_sizes,
                 # max_iou_assigner_ignore: the first 3 gts of each image, shifted, as crowd regions
                 "ignore_boxes": g.gt_boxes[:, :3] + 4.0, "ignore_mask": torch.ones(b, 3, dtype=torch.bool)}
        return _complete(entry, given, b, n), workload, b
    return make


def _rpn_targets(entry):
    import torch

    anchors, _ = _anchors("rpn-m20")
    g = _gts("rpn-m20")
    b, n = g.gt_boxes.shape[0], anchors.shape[0]
    noise = torch.rand(b, n, generator=torch.Generator().manual_seed(1))  # (B, N)
    given = {"anchors": anchors, "gt_boxes": g.gt_boxes, "gt_mask": g.gt_mask, "image_sizes": g.image_sizes,
             "noise": noise}
    return _complete(entry, given, b, n), "rpn-m20", b


def _proposal_inputs():
    import torch

    from lessons.scenes import WORKLOADS

    anchors, level_ids = _anchors("proposals")
    wl = WORKLOADS["proposals"]
    g = torch.Generator().manual_seed(0)
    n = anchors.shape[0]
    objectness = torch.rand(wl.batch, n, generator=g)  # (B, N)
    deltas = 0.2 * torch.randn(wl.batch, n, 4, generator=g)  # (B, N, 4)
    image_sizes = torch.tensor([[wl.h, wl.w]] * wl.batch, dtype=torch.int64)  # (B, 2)
    return anchors, level_ids, objectness, deltas, image_sizes


def _proposals(entry):
    anchors, level_ids, objectness, deltas, image_sizes = _proposal_inputs()
    return (anchors, level_ids, objectness, deltas, image_sizes), "proposals", objectness.shape[0]


def _nms_candidates():
    """The proposals workload's first image: decode, clip, top 12,000 by objectness (best first)."""
    import torch

    from exportable.coders import DeltaXYWHCoder

    anchors, _, objectness, deltas, image_sizes = _proposal_inputs()
    h, w = image_sizes[0].tolist()
    boxes = DeltaXYWHCoder().decode(anchors, deltas[0])  # (N, 4)
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)], dim=1)  # (N, 4)
    scores, order = objectness[0].topk(12_000)
    return boxes[order].contiguous(), scores.contiguous()


def _nms(entry):
    import torch

    boxes, scores = _nms_candidates()
    given = {"boxes": boxes, "scores": scores,
             "idxs": torch.randint(0, 80, (boxes.shape[0],), generator=torch.Generator().manual_seed(2))}
    return tuple(given[s.name] for s in entry.inputs), "proposals@1 (12,000 candidates)", 1


def _lessons_case(lesson_case, workload: str, **params):
    def make(entry):
        import torch

        _, inputs = lesson_case(workload, **params)
        named = dict(zip([s.name for s in entry.inputs], inputs))
        b = next(int(x.shape[s.dims.index("B")]) for x, s in zip(inputs, entry.inputs) if "B" in s.dims)
        n = int(inputs[0].shape[0]) if entry.inputs[0].dims[:1] == ("N",) else 0
        if "pred_boxes" in [s.name for s in entry.inputs] and "pred_boxes" not in named:  # ATSS, Paddle's variant
            g = torch.Generator().manual_seed(3)
            anchors = named["anchors"]
            named["pred_boxes"] = anchors[None] + torch.randn(b, *anchors.shape, generator=g) * 4.0  # (B, N, 4)
        if "soft_ceiling" in [s.name for s in entry.inputs] and "soft_ceiling" not in named:
            named["soft_ceiling"] = torch.tensor(0.6)
        return _complete(entry, named, b, n), workload, b
    return make


# Entries without a workload of their own: their catalog example inputs at workload-like sizes.
EXAMPLE_SIZES: dict[str, dict[str, int]] = {
    "box_iou": {"B": 8, "N": 182_403, "M": 20},
    "max_iou": {"B": 8, "N": 182_403, "M": 100},
    "anchor_grid": {"B": 8, "C": 1, "H": 800, "W": 1216},
    "point_grid": {"B": 16, "C": 1, "H": 640, "W": 640},
    "delta_xywh_encode": {"B": 8, "N": 182_403},
    "delta_xywh_decode": {"B": 8, "N": 182_403},
    "distance_decode": {"B": 16, "N": 8_400},
    "topk": {"B": 16, "N": 8_400},
    "retinanet_loss": {"B": 8, "N": 182_403, "C": 80},
    "retinanet_postprocess": {"B": 8, "H": 800, "W": 1216},
    "noise_sampler": {"B": 8, "N": 21_546},
    "roi_align": {"B": 2, "C": 256, "H": 38, "W": 63, "K": 1_000},
    "o2f_loss": {"B": 16, "N": 8_400, "C": 80},
    "o2f_postprocess": {"B": 16, "H": 640, "W": 640},
    "hungarian_cost": {"B": 8, "Q": 300, "M": 100, "C": 80},
    "hungarian_assigner": {"B": 8, "Q": 300, "M": 100, "C": 80},
}

WORKLOAD_INPUTS: dict[str, Callable] = {
    "max_iou_assigner": _retina_assigner("retina-m100"),
    "max_iou_assigner_ignore": _retina_assigner("retina-m20"),
    "retinanet_targets": _retina_assigner("retina-m20"),
    "rpn_anchor_targets": _rpn_targets,
    "rpn_anchor_targets_mmdet": _rpn_targets,
    "rpn_proposals": _proposals,
    "rpn_proposals_mmdet": _proposals,
    "nms": _nms,
    "batched_nms": _nms,
    "roi_head_targets": _lessons_case(lesson_cases.roi_head_sampling_case, "rpn-m20"),
    "roi_head_targets_mmdet": _lessons_case(lesson_cases.roi_head_sampling_case, "rpn-m20",
                                            component="roi_head_targets_mmdet"),
    "atss_assigner": _lessons_case(lesson_cases.atss_case, "atss-m100"),
    "atss_assigner_paddle": _lessons_case(lesson_cases.atss_case, "atss-m100"),
    "simota_assigner": _lessons_case(lesson_cases.simota_case, "yolox-m20"),
    "simota_assigner_yolox": _lessons_case(lesson_cases.simota_case, "yolox-m20"),
    "ota_assigner": _lessons_case(lesson_cases.simota_case, "yolox-m20"),
    "dynamic_soft_label_assigner": _lessons_case(lesson_cases.dynamic_soft_label_case, "yolox-m100"),
    "task_aligned_assigner": _lessons_case(lesson_cases.task_aligned_case, "yolox-m100"),
    "task_aligned_assigner_ultralytics": _lessons_case(lesson_cases.task_aligned_case, "yolox-m100",
                                                       variant="ultralytics"),
    "task_aligned_dual": _lessons_case(lesson_cases.task_aligned_case, "yolox-m100", variant="ultralytics"),
    "o2f_assigner": _lessons_case(lesson_cases.o2f_case, "yolox-m100"),
}


def make_inputs(entry) -> tuple[tuple, str, int]:
    """``(inputs on the CPU, what they are, B)`` for one catalog entry."""
    maker = WORKLOAD_INPUTS.get(entry.name)
    if maker is not None:
        try:
            return maker(entry)
        except Exception as exc:  # noqa: BLE001 - a renamed workload helper must not stop the report
            note = f"example inputs (workload maker failed: {type(exc).__name__}: {exc})"
    else:
        note = "example inputs"
    sizes = EXAMPLE_SIZES.get(entry.name, dict(entry.export_sizes))
    inputs = entry.example(sizes, seed=0)
    b = sizes.get("B", 1)
    return inputs, f"{note} at {', '.join(f'{k}={v:,}' for k, v in sizes.items())}", b


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _parity(entry, names, reference, got) -> tuple[str, list[str]]:
    from exportable import onnx as xonnx

    cmps = xonnx.compare(names, [r.detach().cpu() for r in reference], got, atol=entry.atol, rtol=entry.rtol)
    bad = [str(c) for c in cmps if not c.close]
    verdict = "exact" if all(c.exact for c in cmps) else ("close" if not bad else "DIFFERS")
    return verdict, bad


def _cuda_session(model, ort):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    providers = [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA provider did not load (session providers: {sess.get_providers()})")
    return sess


def _probe_cuda(ort) -> str | None:
    """Why onnxruntime cannot run on CUDA here, or None. Also absorbs the provider's one-time set-up
    (CUDA context, cuBLAS / cuDNN handles), so the first graph's memory figure does not carry it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.checker.check_model(model)
    try:
        sess = _cuda_session(model, ort)
        import numpy as np

        sess.run(None, {"x": np.ones(4, np.float32)})
    except Exception as exc:  # noqa: BLE001 - reported in one line
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    return None


def _load_model(entry, models: Path | None):
    import onnx

    if models is not None:
        for path in (models / entry.name / "1" / "model.onnx", models / f"{entry.name}.onnx"):
            if path.exists():
                return onnx.load(str(path)), f"loaded {path.relative_to(models)}"
    t0 = time.perf_counter()
    model = entry.export()
    return model, f"exported here in {time.perf_counter() - t0:.1f} s"


def measure(entry, args, ort, models: Path | None) -> dict[str, Any]:
    """Everything the report says about one catalog entry."""
    import torch

    from exportable import onnx as xonnx
    from exportable import placement

    row: dict[str, Any] = {"name": entry.name}
    model, row["model"] = _load_model(entry, models)
    inputs, row["inputs"], b = make_inputs(entry)
    row["B"] = b
    names = [s.name for s in entry.outputs]
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    # 1. torch eager on CUDA
    meta = {p.key: p.value for p in model.metadata_props}
    params = json.loads(meta["assignlab.params"]) if "assignlab.params" in meta else {}
    module = entry.build(**params).to(dev)
    cuda_inputs = tuple(x.to(dev) for x in inputs)
    with torch.no_grad():
        eager = entry.run_eager(module, cuda_inputs)  # warm-up, and the reference outputs
        row["torch_peak_mib"] = None
        if on_gpu:
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            entry.run_eager(module, cuda_inputs)
            sync()
            row["torch_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / MIB
        row["torch_ms"] = _median_ms(lambda: entry.run_eager(module, cuda_inputs), args.repeats, sync) / b

    # 2. onnxruntime CUDA, device-resident
    if on_gpu:
        torch.cuda.empty_cache()
        sync()
        free0, reserved0 = torch.cuda.mem_get_info()[0], torch.cuda.memory_reserved()
    sess = _cuda_session(model, ort) if on_gpu else xonnx.session(model, ["CPUExecutionProvider"],
                                                                  record_placement=True)
    runner = xonnx.DeviceRunner(sess)
    got = runner(*cuda_inputs)
    row["ort_peak_mib"] = None
    if on_gpu:
        sync()
        free1, reserved1 = torch.cuda.mem_get_info()[0], torch.cuda.memory_reserved()
        outputs_bytes = sum(t.numel() * t.element_size() for t in got)
        row["ort_peak_mib"] = ((free0 - free1) - (reserved1 - reserved0) + outputs_bytes) / MIB
    row["ort_owners"] = dict(runner.last_owners)
    row["ort_copies"] = list(runner.last_copies)
    row["parity_cuda"], row["parity_cuda_bad"] = _parity(entry, names, eager, [t.cpu().numpy() for t in got])
    row["ort_ms"] = _median_ms(lambda: runner(*cuda_inputs), args.repeats, sync) / b
    observed = xonnx.placement(sess)
    predicted = placement.predict(model)
    by_name = {n.name: n for n in predicted.nodes}
    row["observed_nodes"] = len(observed)
    cuda_ep = "CUDAExecutionProvider" if on_gpu else "CPUExecutionProvider"  # the dry run's stand-in
    off = [r for r in observed if r.provider != cuda_ep]
    row["observed_off"] = len(off)
    row["observed_compute_off"] = sorted(
        f"{r.name} ({r.op_type})" for r in off if not (by_name.get(r.name) and by_name[r.name].shape_only))
    # the prediction is for the CUDA provider: a CPU dry run has nothing to compare it with
    common = [r for r in observed if r.name in by_name] if on_gpu else []
    row["agree"] = sum((r.provider == cuda_ep) == (by_name[r.name].kind == "cuda") for r in common)
    row["common"] = len(common)
    row["predicted_off"] = sum(n.kind != "cuda" for n in predicted.nodes)
    row["predicted_compute_off"] = sorted(f"{n.name} ({n.op_type})" for n in predicted.compute_fallbacks)
    row["disagree"] = sorted(
        f"{r.name} ({r.op_type}): predicted {by_name[r.name].kind}, ran on "
        f"{r.provider.replace('ExecutionProvider', '')}"
        for r in common if (r.provider == cuda_ep) != (by_name[r.name].kind == "cuda"))

    # 3. onnxruntime CPU
    cpu = xonnx.session(model, ["CPUExecutionProvider"])
    cpu_out = xonnx.run(cpu, inputs)
    row["parity_cpu"], row["parity_cpu_bad"] = _parity(entry, names, eager, cpu_out)
    row["cpu_ms"] = _median_ms(lambda: xonnx.run(cpu, inputs), args.cpu_repeats, lambda: None) / b
    return row  # the sessions and tensors go with this frame; main() collects and empties the cache


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}" if x < 100 else f"{x:,.0f}"


def _environment(ort, device: str = "cuda") -> str:
    import torch

    if device != "cuda":
        return (f"DRY RUN on the CPU ({platform.processor() or platform.machine()}): the CUDA columns measure "
                f"the CPU; torch {torch.__version__}; onnxruntime {ort.__version__}")
    props = torch.cuda.get_device_properties(0)
    return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs); torch "
            f"{torch.__version__} (CUDA {torch.version.cuda}); onnxruntime {ort.__version__} "
            f"({', '.join(ort.get_available_providers())}); Python {platform.python_version()}; "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")


def render(rows: list[dict[str, Any]], env: str, args) -> str:
    ok = [r for r in rows if "error" not in r and "skipped" not in r]
    lines = [
        "# GPU report: torch CUDA vs onnxruntime CUDA vs onnxruntime CPU",
        "",
        f"Machine: {env}.",
        "",
        "Written by `python benchmarks/gpu.py` (`make bench-gpu`). Per catalog graph, on the inputs named in the "
        "last table: parity of each onnxruntime run against torch eager on CUDA (index outputs exact, floats "
        "within the entry's tolerance), time per image (median of "
        f"{args.repeats} runs after a warm-up; CPU: {args.cpu_repeats}), peak device memory and the nodes "
        "onnxruntime ran off CUDA. onnxruntime CUDA runs through `exportable.onnx.DeviceRunner` (torch CUDA "
        "tensors bound in and out). Memory: torch = `max_memory_allocated` over one run; onnxruntime = device "
        "memory its CUDA provider holds after the first run (arena grown exactly as requested, never shrunk) + "
        "the outputs torch allocated for it.",
        "",
        "| graph | B | parity ORT CUDA | parity ORT CPU | torch CUDA ms/img | ORT CUDA ms/img | ORT / torch | "
        "ORT CPU ms/img | torch peak MiB | ORT peak MiB | off CUDA: observed (compute) | predicted (compute) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| `{r['name']}` | – | {r.get('error') or r.get('skipped')} |" + " – |" * 9)
            continue
        ratio = r["ort_ms"] / r["torch_ms"] if r["torch_ms"] > 0 else float("nan")
        lines.append(
            f"| `{r['name']}` | {r['B']} | {r['parity_cuda']} | {r['parity_cpu']} | {_f(r['torch_ms'])} | "
            f"{_f(r['ort_ms'])} | {_f(ratio, 2)} | {_f(r['cpu_ms'])} | {_f(r['torch_peak_mib'])} | "
            f"{_f(r['ort_peak_mib'])} | {r['observed_off']} ({len(r['observed_compute_off'])}) | "
            f"{r['predicted_off']} ({len(r['predicted_compute_off'])}) |")
    assigners = [r for r in ok if "assigner" in r["name"]]
    fast = [r for r in assigners if r["ort_ms"] <= 1.2 * r["torch_ms"]]
    exact = [r for r in ok if r["parity_cuda"] != "DIFFERS"]
    on_cuda = [r for r in ok if not r["observed_compute_off"]]
    agree = sum(r["agree"] for r in ok)
    common = sum(r["common"] for r in ok)
    lines += [
        "",
        "## Goals",
        "",
        f"- onnxruntime CUDA within 1.2x of torch CUDA per assigner: {len(fast)} of {len(assigners)}"
        + (f" (not: {', '.join(r['name'] for r in assigners if r not in fast)})" if len(fast) < len(assigners) else ""),
        f"- no compute node off CUDA (observed): {len(on_cuda)} of {len(ok)} graphs",
        f"- parity (indices exact, floats within tolerance) on CUDA: {len(exact)} of {len(ok)} graphs",
        f"- static placement prediction vs what onnxruntime did, over nodes present in both graphs: "
        f"{agree} of {common} agree",
        "",
        "## Placement details",
        "",
    ]
    for r in ok:
        details = []
        if r["observed_compute_off"]:
            details.append("ran off CUDA (not shape-only): " + ", ".join(r["observed_compute_off"]))
        if r["disagree"]:
            details.append("prediction differed: " + "; ".join(r["disagree"][:12])
                           + (f" (+{len(r['disagree']) - 12})" if len(r["disagree"]) > 12 else ""))
        if r["ort_copies"]:
            details.append("copies: " + "; ".join(r["ort_copies"]))
        bad = r["parity_cuda_bad"] + r["parity_cpu_bad"]
        if bad:
            details.append("parity: " + "; ".join(bad[:4]))
        if details:
            lines.append(f"- `{r['name']}`: " + " | ".join(details))
    if not any(line.startswith("- `") for line in lines[-len(ok) - 1:]):
        lines.append("- every graph: nothing off CUDA beyond shape computations, and the prediction agreed.")
    lines += ["", "## Inputs and models", "", "| graph | inputs | model | outputs allocated by |", "|---|---|---|---|"]
    for r in ok:
        owners = ", ".join(sorted(set(r["ort_owners"].values())))
        lines.append(f"| `{r['name']}` | {r['inputs']} | {r['model']} | {owners} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME", help="catalog entries (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed CUDA runs per way (median)")
    parser.add_argument("--cpu-repeats", type=int, default=2, help="timed onnxruntime CPU runs (median)")
    parser.add_argument("--models", type=Path, default=None, help="folder of pre-exported graphs")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no new graph after this many seconds")
    parser.add_argument("--out", type=Path, default=OUT, help="the markdown report")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows as JSON")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a dry run of the harness without a GPU (tests use it); never a report")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    stand_in = _stand_in_for_jaxtyping()
    sys.path.insert(0, str(ROOT))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    if args.device == "cpu" and args.out == OUT:
        parser.error("--device cpu is a dry run: give --out somewhere other than benchmarks/results/gpu.md")
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - torch's CUDA libraries may already be loaded; the check below decides
            pass
    if args.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"benchmarks/gpu.py: onnxruntime {ort.__version__} has no CUDA provider "
              f"({ort.get_available_providers()}): install onnxruntime-gpu (DEVELOPERS.md)", file=sys.stderr)
        return 1

    if args.device == "cuda":
        why = _probe_cuda(ort)
        if why:
            print(f"benchmarks/gpu.py: onnxruntime {ort.__version__} cannot run on CUDA here ({why}); the CUDA 13 "
                  "and cuDNN 9 libraries must be on the loader path (DEVELOPERS.md)", file=sys.stderr)
            return 1

    from exportable import catalog

    names = args.only or catalog.names()
    names = [n for n in PRIORITY if n in names] + [n for n in names if n not in PRIORITY]
    env = _environment(ort, args.device)
    print(env + (" (jaxtyping stand-in)" if stand_in else ""), flush=True)
    rows = []
    for name in names:
        entry = catalog.get(name)
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            rows.append({"name": name, "skipped": f"not run: time budget ({args.budget_s:.0f} s) spent"})
            continue
        t0 = time.perf_counter()
        try:
            row = measure(entry, args, ort, args.models)
        except Exception as exc:  # noqa: BLE001 - one failing graph must not lose the others
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            row = {"name": name, "error": f"error: {type(exc).__name__}: {first}"}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.append(row)
        summary = row.get("error") or (f"cuda {row['parity_cuda']}, cpu {row['parity_cpu']}, torch "
                                        f"{_f(row['torch_ms'])} ms/img, ort {_f(row['ort_ms'])} ms/img, "
                                        f"off CUDA {row['observed_off']} ({len(row['observed_compute_off'])} compute)")
        print(f"{name}: {summary} [{time.perf_counter() - t0:.1f} s]", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, env, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
