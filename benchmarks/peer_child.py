"""The measurement child of ``benchmarks/peers.py``: ``<python> benchmarks/peer_child.py '<json spec>'`` runs one
implementation of one suite (a peer in its own venv, ours in ours) and prints its timings as JSON; the arrays it
produced are saved for the parity check. ``spawn`` starts one from the parent.

Standard library only at the top level: the peers' interpreters run this file.
"""

from __future__ import annotations

import importlib.metadata as im
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peer_envs import ENVS, PEERS_DIR, ROOT
from peer_suites import MAXIOU_CFG, OURS, SUITES, TAL_ULTRALYTICS_CFG, _import_mmdet

CHILD_ENV: dict[str, str] = {}  # set by the parent (peers.main) for every measurement subprocess

# ----------------------------------------------------------------------------------------------
# Children (run as `<python> benchmarks/peer_child.py '<json>'`)
# ----------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _dist_versions(names) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = im.version(n)
        except im.PackageNotFoundError:
            out[n] = "not installed"
    return out


def _clock(step: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    result = step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - t0)
    return times, result


def _load(workdir: Path, names) -> dict:
    import numpy as np

    return {n: np.load(workdir / f"in__{n}.npy") for n in names}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def _child(spec: dict) -> dict:
    kind = spec["kind"]
    if kind == "smoke":  # import check right after an environment is built
        env = ENVS[spec["env"]]
        import torch

        if env.name == "mmdet":
            _import_mmdet().build(dict(type="MaxIoUAssigner", **MAXIOU_CFG))
        elif env.name == "ultralytics":
            from ultralytics.utils.tal import TaskAlignedAssigner

            TaskAlignedAssigner(**TAL_ULTRALYTICS_CFG)
        return {"versions": _dist_versions(env.versions), "cuda": torch.version.cuda}

    suite = SUITES[spec["suite"]]
    workdir = Path(spec["workdir"])
    if kind == "prepare":  # our venv: inputs as .npy, then one export per onnxruntime implementation
        import numpy as np

        arrays, meta = suite.prepare(spec["workload"])
        for name, a in arrays.items():
            np.save(workdir / f"in__{name}.npy", a)
        (workdir / "meta.json").write_text(json.dumps({**meta, "arrays": sorted(arrays)}))
        for label, ours in OURS[suite.name].items():
            if ours.backend == "onnxruntime":
                import torch

                from exportable import onnx as xonnx

                example = [torch.from_numpy(arrays[n]) for n in ours.inputs]
                model = xonnx.export(ours.module(), example, input_names=list(ours.inputs),
                                     output_names=list(ours.outputs), input_dims=list(ours.dims))
                xonnx.save(model, workdir / f"{_slug(label)}.onnx")
        return {}

    meta = json.loads((workdir / "meta.json").read_text())
    threads, repeats, label = int(spec["threads"]), int(spec["repeats"]), spec["label"]
    if kind == "peer":
        peer = suite.peers[label]
        arrays = _load(workdir, meta["arrays"])
        import torch

        step, outputs_of = peer.run(arrays, meta)  # imports the peer first: it may set threads itself
        torch.set_num_threads(threads)
        with torch.inference_mode():
            times, result = _clock(step, repeats)
            outputs = outputs_of(result)
        versions = _dist_versions(ENVS[peer.env].versions)
    elif kind == "ours":
        ours = OURS[suite.name][label]
        arrays = _load(workdir, ours.inputs)
        if ours.backend == "eager":
            import torch

            from exportable import checks_disabled

            module = ours.module().eval()
            torch.set_num_threads(threads)
            inputs = [torch.from_numpy(arrays[n]) for n in ours.inputs]
            with torch.inference_mode(), checks_disabled():
                times, result = _clock(lambda: module(*inputs), repeats)
            outputs = {n: t.numpy() for n, t in zip(ours.outputs, result)}
            versions = _dist_versions(("torch", "assignlab"))
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(workdir / f"{_slug(label)}.onnx"), so, providers=["CPUExecutionProvider"])
            times, result = _clock(lambda: sess.run(None, arrays), repeats)
            outputs = dict(zip(ours.outputs, result))
            versions = _dist_versions(("onnxruntime", "onnx", "torch", "assignlab"))
    else:
        raise ValueError(f"unknown child kind {kind!r}")
    import numpy as np

    for name, a in outputs.items():
        np.save(workdir / f"out__{_slug(label)}__{name}.npy", np.asarray(a))
    return {"times": times, "peak_rss_mb": _peak_rss_mb(), "batch": meta["batch"], "versions": versions}


def _spawn(python: Path | str, spec: dict, timeout: float = 3600, threads: int | None = None,
           ours: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["YOLO_CONFIG_DIR"] = str(PEERS_DIR / "ultralytics-config")  # ultralytics writes its settings here
    env["YOLO_OFFLINE"] = "1"
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        env.update(CHILD_ENV)
    if ours:
        env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([str(python), str(Path(__file__).resolve()), json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec.get('kind')} {spec.get('label', '')} failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}




if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
