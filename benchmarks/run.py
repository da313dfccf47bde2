"""Benchmarks: torch eager vs onnxruntime on the named workloads of WORKLOADS.md.

    python benchmarks/run.py                   # every suite (what `make bench` runs)
    python benchmarks/run.py --suite iou_max --repeats 5 --threads 2

Rules (DESIGN.md): measured side by side in one run; fixed thread counts; one subprocess per
measurement (peak RSS only grows within a process); ratios are the result, absolute CPU times
are only indicative. Each suite writes ``benchmarks/results/<suite>.md``.

A suite is a function that builds (module, inputs) for a workload; the harness exports the
module once (in a preparation subprocess), saves the inputs as .npy files, and then times
eager (a torch child) and onnxruntime (a child that imports only numpy and onnxruntime).
Later issues add suites to ``SUITES``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# ----------------------------------------------------------------------------------------------
# Suites
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    workloads: tuple[str, ...]
    build: Callable[[str], tuple]  # workload -> (module, inputs tuple, input names, input dims, output names)
    note: str = ""


def _workload(spec: str):
    """``name`` or ``name@B`` (the workload with another batch size) -> (anchors, gt batch)."""
    import torch

    from exportable.anchors import AnchorGenerator
    from lessons.scenes import WORKLOADS, make_workload_batch

    name, _, batch = spec.partition("@")
    wl = WORKLOADS[name]
    gen = AnchorGenerator(**wl.generator_kwargs())
    anchors = torch.cat(gen.grid_anchors(wl.featmap_sizes()))  # (N, 4)
    return anchors, make_workload_batch(name, seed=0, batch=int(batch) if batch else None)


def _build_iou_max(workload: str):
    from exportable.boxes import AnchorGtMaxIoU

    anchors, gts = _workload(workload)
    inputs = (anchors, gts.gt_boxes, gts.gt_mask)
    return (AnchorGtMaxIoU(), inputs, ["anchors", "gt_boxes", "gt_mask"],
            [("N", 4), ("B", "M", 4), ("B", "M")], ["max_overlaps", "argmax"])


def _build_max_iou_assigner(workload: str):
    from exportable.assigners.max_iou import MaxIoUAssigner

    anchors, gts = _workload(workload)
    inputs = (anchors, gts.gt_boxes, gts.gt_labels, gts.gt_mask)
    return (MaxIoUAssigner.retinanet(), inputs, ["anchors", "gt_boxes", "gt_labels", "gt_mask"],
            [("N", 4), ("B", "M", 4), ("B", "M"), ("B", "M")],
            ["gt_index", "labels", "boxes", "overlaps", "target_scores", "weights"])


SUITES: dict[str, Suite] = {
    "iou_max": Suite(
        name="iou_max",
        title="Pairwise IoU of anchors vs padded gts + max/argmax over gts (MaxIoU's core)",
        workloads=("retina-m20", "retina-m100"),
        build=_build_iou_max,
        note="Eager processes the batch one image at a time (peak memory near one image's N x M); "
        "the ONNX graph is fully batched, as exported graphs are (the deployer picks B).",
    ),
    "max_iou_assigner": Suite(
        name="max_iou_assigner",
        title="MaxIoUAssigner, RetinaNet settings (0.5 / 0.4, min_pos_iou 0, low-quality matches)",
        workloads=("retina-m20", "retina-m100", "retina-m100@16"),
        build=_build_max_iou_assigner,
        note="`retina-m100@16` is the same workload with B = 16: the eager peak-memory check (one image at "
        "a time keeps it near one image's N x M). The ONNX graph is fully batched: its peak grows with B. "
        "mmdetection 3.3's figures for orientation (WORKLOADS.md, other runs, 2 cores): 118 ms/img at "
        "M = 20, 443-513 ms/img at M = 100; `make bench-peers` measures it side by side.",
    ),
}


# ----------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child_prepare(suite: str, workload: str, workdir: Path, export: bool = True) -> None:
    """Export the module (unless ``export=False``) and save its inputs (in its own subprocess)."""
    import numpy as np

    from exportable import onnx as xonnx

    module, inputs, in_names, in_dims, out_names = SUITES[suite].build(workload)
    if export:
        model = xonnx.export(module, inputs, input_names=in_names, output_names=out_names, input_dims=in_dims)
        xonnx.save(model, workdir / "model.onnx")
    for name, x in zip(in_names, inputs):
        np.save(workdir / f"{name}.npy", x.numpy())
    (workdir / "inputs.json").write_text(json.dumps(in_names))


def _child_eager(suite: str, workload: str, workdir: Path, threads: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from exportable import checks_disabled

    torch.set_num_threads(threads)
    module = SUITES[suite].build(workload)[0].eval()
    names = json.loads((workdir / "inputs.json").read_text())
    inputs = [torch.from_numpy(np.load(workdir / f"{n}.npy")) for n in names]
    times = []
    with torch.inference_mode(), checks_disabled():
        module(*inputs)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss_mb": _peak_rss_mb(), "batch": int(inputs[1].shape[0])}


def _child_onnxruntime(suite: str, workload: str, workdir: Path, threads: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(workdir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = json.loads((workdir / "inputs.json").read_text())
    feed = {n: np.load(workdir / f"{n}.npy") for n in names}
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss_mb": _peak_rss_mb(), "batch": int(feed[names[1]].shape[0])}


CHILDREN = {"eager": _child_eager, "onnxruntime": _child_onnxruntime}


def _spawn(args: list[str], timeout: float = 1800) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------


def _versions() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import torch, onnx, onnxruntime as o; "
         "print(f'torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {o.__version__}')"],
        capture_output=True, text=True)
    return out.stdout.strip()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_suite(suite: Suite, threads: int, repeats: int) -> str:
    rows = []
    for workload in suite.workloads:
        with tempfile.TemporaryDirectory() as tmp:
            if "@" not in workload:
                _spawn(["--child", "prepare", suite.name, workload, tmp])
            else:
                _spawn(["--child", "inputs", suite.name, workload, tmp])
            # "name@B" rows are eager memory checks: the fully batched graph would need B x one image's memory.
            backends = ["eager"] if "@" in workload else list(CHILDREN)
            res = {b: _spawn(["--child", b, suite.name, workload, tmp, str(threads), str(repeats)])
                   for b in backends}
        batch = res["eager"]["batch"]
        med = {b: statistics.median(r["times"]) * 1000 / batch for b, r in res.items()}
        for b in CHILDREN:
            res.setdefault(b, {"times": [float("nan")], "peak_rss_mb": float("nan")})
            med.setdefault(b, float("nan"))
        rows.append((workload, batch, med, {b: r["peak_rss_mb"] for b, r in res.items()},
                     {b: [round(t * 1000 / batch, 1) for t in r["times"]] for b, r in res.items()}))
        print(f"  {workload}: eager {med['eager']:.1f} ms/img, onnxruntime {med['onnxruntime']:.1f} ms/img",
              flush=True)
    lines = [
        f"# {suite.title}",
        "",
        f"`python benchmarks/run.py --suite {suite.name} --threads {threads} --repeats {repeats}` on "
        f"{dt.date.today().isoformat()}; {_cpu()}, {os.cpu_count()} cores; {_versions()}; "
        f"{threads} threads for both; median of {repeats} runs after one warm-up, per image.",
        "",
        "| workload | B | eager ms/img | onnxruntime CPU ms/img | eager / onnxruntime | eager peak RSS MB "
        "| onnxruntime peak RSS MB | all runs (ms/img) eager; onnxruntime |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload, batch, med, rss, runs in rows:
        lines.append(
            f"| `{workload}` | {batch} | {med['eager']:.1f} | {med['onnxruntime']:.1f} | "
            f"{med['eager'] / med['onnxruntime']:.2f} | {rss['eager']:.0f} | {rss['onnxruntime']:.0f} | "
            f"{runs['eager']}; {runs['onnxruntime']} |"
        )
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    alloc = (f"glibc allocator settings for every child: {malloc} (freed memory kept, so page faults on fresh "
             "large tensors do not swamp the figures)") if malloc else "stock glibc allocator"
    lines += ["", suite.note, "", alloc + ".",
              "Absolute CPU times vary up to 3x between runs on these machines; compare the ratio column.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), help="default: all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, suite, workload, workdir, *rest = args.child
        if kind in ("prepare", "inputs"):
            _child_prepare(suite, workload, Path(workdir), export=kind == "prepare")
            print("{}")
        else:
            print(json.dumps(CHILDREN[kind](suite, workload, Path(workdir), int(rest[0]), int(rest[1]))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.suite or sorted(SUITES):
        print(f"{name}:", flush=True)
        table = run_suite(SUITES[name], args.threads, args.repeats)
        (out / f"{name}.md").write_text(table)
        print(f"  wrote {out / f'{name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
