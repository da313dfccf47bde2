"""benchmarks/gpu.py and benchmarks/gpu_device.sh, checked on a machine without a GPU.

The GPU report itself runs only where CUDA is (DEVELOPERS.md); here: it says so in one line and exits
0, its whole harness runs as a CPU dry run with jaxtyping hidden (the GPU machines may lack it), every
catalog entry has inputs, the report renders what it measured, and the staging script splits and
refuses to run on a missing part.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exportable import catalog

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
HIDE_JAXTYPING = (
    "import runpy, sys\n"
    "sys.modules['jaxtyping'] = None  # as if it were not installed: importing it raises ImportError\n"
    "sys.argv = [{script!r}] + {args!r}\n"
    "runpy.run_path({script!r}, run_name='__main__')\n"
)


def _gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], *, hide_jaxtyping: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = HIDE_JAXTYPING.format(script=str(SCRIPT), args=args) if hide_jaxtyping else None
    cmd = [sys.executable, "-c", code] if code else [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would measure")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    proc = _run([], hide_jaxtyping=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "no CUDA device" in proc.stdout


@pytest.mark.onnx
def test_the_whole_harness_runs_as_a_cpu_dry_run_without_jaxtyping(tmp_path):
    out, raw = tmp_path / "gpu.md", tmp_path / "gpu.json"
    proc = _run(["--device", "cpu", "--only", "nms", "topk", "--repeats", "1", "--cpu-repeats", "1",
                 "--out", str(out), "--json", str(raw)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(jaxtyping stand-in)" in proc.stdout  # the stand-in was used, so the import really was hidden
    text = out.read_text()
    assert "DRY RUN on the CPU" in text
    table = text.split("## Goals")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    assert "| exact | exact |" in rows["`nms`"] and "| exact | exact |" in rows["`topk`"]
    assert "proposals@1 (12,000 candidates)" in text  # nms ran on its workload, not on examples
    assert "onnxruntime" in text.split("## Inputs and models")[1]  # NMS keep: allocated by onnxruntime


def test_a_dry_run_never_overwrites_the_committed_report():
    proc = _run(["--device", "cpu", "--only", "nms"], hide_jaxtyping=False)
    assert proc.returncode == 2 and "dry run" in proc.stderr


def test_every_catalog_entry_has_inputs():
    gpu = _gpu_module()
    for name in catalog.names():
        has_workload, has_sizes = name in gpu.WORKLOAD_INPUTS, name in gpu.EXAMPLE_SIZES
        assert has_workload != has_sizes, f"{name}: exactly one input source"
        if has_sizes:
            assert set(gpu.EXAMPLE_SIZES[name]) == set(catalog.get(name).export_sizes), name


@pytest.mark.parametrize("name", sorted(_gpu_module().WORKLOAD_INPUTS))
def test_workload_inputs_fit_the_graph_contract(name):
    gpu = _gpu_module()
    entry = catalog.get(name)
    inputs, what, b = gpu.WORKLOAD_INPUTS[name](entry)
    assert len(inputs) == len(entry.inputs) and b >= 1 and what
    dims: dict[str, int] = {}
    for x, spec in zip(inputs, entry.inputs):
        assert str(x.dtype).removeprefix("torch.") == spec.dtype, (name, spec.name, x.dtype)
        assert x.dim() == len(spec.dims), (name, spec.name, tuple(x.shape))
        for size, d in zip(x.shape, spec.dims):
            if isinstance(d, int):
                assert size == d, (name, spec.name)
            else:
                assert dims.setdefault(d, size) == size, f"{name}.{spec.name}: dim {d}"
    assert dims.get("B", b) == b


def test_report_counts_goals_and_lists_what_ran_off_cuda():
    gpu = _gpu_module()
    base = {"B": 8, "parity_cuda": "exact", "parity_cpu": "exact", "torch_ms": 2.0, "ort_ms": 2.2, "cpu_ms": 30.0,
            "torch_peak_mib": 10.0, "ort_peak_mib": 12.0, "observed_off": 3, "observed_compute_off": [],
            "predicted_off": 3, "predicted_compute_off": [], "agree": 50, "common": 50, "disagree": [],
            "ort_copies": [], "ort_owners": {"x": "torch"}, "parity_cuda_bad": [], "parity_cpu_bad": [],
            "inputs": "retina-m20", "model": "exported"}
    rows = [
        dict(base, name="max_iou_assigner"),
        dict(base, name="atss_assigner", ort_ms=3.0, observed_compute_off=["node_atan (Atan)"], agree=48,
             disagree=["node_atan (Atan): predicted cuda, ran on CPU"], parity_cuda="DIFFERS",
             parity_cuda_bad=["labels DIFFERS"]),
        {"name": "nms", "error": "error: RuntimeError: boom"},
        {"name": "topk", "skipped": "not run: time budget (1 s) spent"},
    ]
    args = type("Args", (), {"repeats": 5, "cpu_repeats": 2})()
    text = gpu.render(rows, "a machine", args)
    assert "within 1.2x of torch CUDA per assigner: 1 of 2 (not: atss_assigner)" in text
    assert "no compute node off CUDA (observed): 1 of 2 graphs" in text
    assert "on CUDA: 1 of 2 graphs" in text and "98 of 100 agree" in text
    assert "ran off CUDA (not shape-only): node_atan (Atan)" in text and "parity: labels DIFFERS" in text
    assert "error: RuntimeError: boom" in text and "not run: time budget" in text
    assert "| `max_iou_assigner` | 8 | exact | exact | 2 | 2.2 | 1.1 |" in text


def test_staging_script_splits_and_refuses_a_missing_part(tmp_path):
    wheel = tmp_path / ".ortgpu" / "onnxruntime_gpu-0.0-cp312-cp312-linux_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(os.urandom(5000))
    script = ROOT / "benchmarks" / "gpu_device.sh"
    env = dict(os.environ, PART_SIZE="2K")

    def sh(*args):
        return subprocess.run(["bash", str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True)

    assert sh("split").returncode == 0
    parts = sorted(tmp_path.glob(".ortgpu[0-9]*/*.part*"))
    assert [p.parent.name for p in parts] == [".ortgpu1", ".ortgpu2", ".ortgpu3"]
    assert b"".join(p.read_bytes() for p in parts) == wheel.read_bytes()
    assert "parts here: 3 of 3" in sh("parts").stdout
    parts[1].unlink()
    proc = sh("run")
    assert proc.returncode == 3 and "only 2 of 3 parts" in proc.stderr
    assert sh().returncode == 2
