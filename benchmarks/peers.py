"""Peers side by side: mmdetection and ultralytics on the workloads of docs/workloads.md, next to ours.

    python benchmarks/peers.py                          # every suite (what `make bench-peers` runs)
    python benchmarks/peers.py --suite maxiou --threads 2 --repeats 3
    python benchmarks/peers.py --setup-only             # only create/check the peer environments
    python benchmarks/peers.py --peer mmdet --rebuild   # recreate one peer environment
    python benchmarks/peers.py --rounds 3               # interleave 3 subprocesses per implementation (steadier)

Optional tooling, never part of `make test` or CI. Each peer gets its own virtual environment
under ``benchmarks/.peers/<peer>/`` (git-ignored), created once and marked with a stamp file that
holds a hash of its specification (a changed specification rebuilds it). Every environment pins
torch 2.13.0 and pip must resolve it to a CPU build (checked with a dry run before anything is
installed: an unpinned or CUDA torch is never downloaded).

Rules (as for ``benchmarks/run.py`` and docs/conventions.md): one run measures every implementation side by
side on the same inputs (generated once in our venv and saved as .npy, loaded by every child);
each measurement runs in its own subprocess (peak RSS only grows within a process) with fixed
thread counts; median of ``--repeats`` runs after one warm-up, per image. Ratios measured in one
run are the result; absolute CPU times are only indicative. Each suite writes
``benchmarks/results/peers_<suite>.md``. Measurement subprocesses run with glibc told to keep freed
memory (``--malloc keep``, see ``MALLOC_KEEP``); ``--malloc default`` measures the stock allocator.

A peer that cannot be set up (no network, a version missing) is reported and skipped; the script
exits 0 unless nothing at all could be measured.

This file is also the child program run by every subprocess, including the peers' own
interpreters, so its top level imports the standard library only.

Adding our implementation of a suite is one line in ``OURS`` (a registry that may be empty).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata as im
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run import _cpu  # the harness's CPU-model reader (benchmarks/ is on sys.path for these scripts)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PEERS_DIR = ROOT / "benchmarks" / ".peers"
STAMP = ".assignlab-peer-stamp"
TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # tried only when pip's own sources lack a CPU build

# `--malloc keep` (the default): glibc keeps freed memory for reuse instead of unmapping it. Without it every
# tensor above glibc's mmap threshold (32 MiB at most; one image's N x M IoU here is 73 MB) is a fresh mmap whose
# pages fault in on first touch, and on these VMs page faults are slow and vary with the load: the same eager
# IoU + max took 450-1650 ms/img with about 2/3 of it in the kernel, and a steady 110-145 ms/img with this setting.
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(16 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
CHILD_ENV: dict[str, str] = {}  # set by main() for every measurement subprocess


# ----------------------------------------------------------------------------------------------
# Peer environments
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerEnv:
    """One peer's virtual environment under ``benchmarks/.peers/<name>/``.

    ``steps`` are ``pip install`` argument lists run in order after torch (every step runs with a
    constraint file pinning torch, so nothing can pull another torch). ``fake_dists`` are
    metadata-only distributions ``(name, version)`` written into site-packages afterwards.
    ``versions`` are the distributions whose versions go into the tables.
    """

    name: str
    title: str
    steps: tuple[tuple[str, ...], ...]
    versions: tuple[str, ...]
    fake_dists: tuple[tuple[str, str], ...] = ()

    @property
    def dir(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.dir / "bin" / "python"

    def spec_hash(self) -> str:
        spec = {"torch": TORCH, "steps": self.steps, "fake": self.fake_dists, "python": sys.version_info[:2]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


ENVS: dict[str, PeerEnv] = {
    "mmdet": PeerEnv(
        name="mmdet",
        title="mmdetection",
        # mmdet 3.3 rejects mmcv 2.2 at import; mmcv-lite 2.1 has no compiled mmcv._ext (stubbed at import).
        steps=(("mmdet==3.3.0", "mmengine==0.10.7", "mmcv-lite==2.1.0"),),
        versions=("torch", "mmdet", "mmengine", "mmcv-lite", "numpy"),
    ),
    "ultralytics": PeerEnv(
        name="ultralytics",
        title="ultralytics",
        steps=(
            ("--no-deps", "ultralytics==8.4.190"),
            ("numpy", "pyyaml", "pillow", "opencv-python-headless", "psutil", "tqdm", "requests", "scipy",
             "polars", "ultralytics-thop", "matplotlib", TORCH),
        ),
        versions=("torch", "ultralytics", "numpy"),
        # ultralytics reads torchvision's version at import; ultralytics.utils.tal never calls torchvision.
        fake_dists=(("torchvision", "0.28.0"),),
    ),
}


class SetupError(RuntimeError):
    pass


def _pip(python: Path, args: list[str], log: Path) -> int:
    with log.open("a") as f:
        f.write(f"\n$ {python} -m pip {' '.join(args)}\n")
        f.flush()
        return subprocess.run([str(python), "-m", "pip", *args], stdout=f, stderr=subprocess.STDOUT).returncode


def _log_tail(log: Path, n: int = 15) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("      " + ln for ln in lines[-n:])


def _torch_source(python: Path, log: Path) -> list[str]:
    """Extra pip arguments under which ``torch==2.13.0`` resolves to a CPU build (dry run, nothing downloaded)."""
    why = []
    for extra, where in (([], "pip's configured sources"), (["--index-url", TORCH_CPU_INDEX], TORCH_CPU_INDEX)):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            rc = _pip(python, ["install", "--dry-run", "--quiet", "--retries", "2", "--report", str(report),
                               TORCH, *extra], log)
            if rc != 0 or not report.exists():
                why.append(f"{where}: pip could not resolve it (network? see the log)")
                continue
            items = json.loads(report.read_text()).get("install", [])
        found = {it["metadata"]["name"].lower(): it["metadata"]["version"] for it in items}
        if "+cpu" in found.get("torch", "") and not any(n.startswith("nvidia") for n in found):
            return extra
        why.append(f"{where}: resolves to torch {found.get('torch')} with CUDA packages, not installed")
    raise SetupError(f"no CPU build of {TORCH}: {'; '.join(why)}")


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _write_fake_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("assignlab-benchmarks-peers (metadata only)\n")


def ensure_env(env: PeerEnv, rebuild: bool = False) -> Path:
    """Create ``env`` if its stamp is missing or stale; return its python. Raises SetupError."""
    stamp = env.dir / STAMP
    want = env.spec_hash()
    if not rebuild and env.python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return env.python
    if env.dir.exists():
        shutil.rmtree(env.dir)
    env.dir.mkdir(parents=True)
    log = env.dir / "setup.log"
    print(f"  {env.name}: creating {env.dir.relative_to(ROOT)} (pip log: {log.relative_to(ROOT)}) ...", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run([sys.executable, "-m", "venv", str(env.dir)], capture_output=True, text=True)
        if rc.returncode != 0:
            raise SetupError(f"python -m venv failed: {rc.stderr.strip()[-500:]}")
        constraints = env.dir / "constraints.txt"
        constraints.write_text(f"{TORCH}\n")
        extra = _torch_source(env.python, log)
        if _pip(env.python, ["install", "--quiet", "--retries", "2", TORCH, *extra], log) != 0:
            raise SetupError(f"pip install {TORCH} failed")
        for step in env.steps:
            if _pip(env.python, ["install", "--quiet", "--retries", "2", "-c", str(constraints), *step], log) != 0:
                raise SetupError(f"pip install {' '.join(step)} failed")
        if env.fake_dists:
            site = _site_packages(env.python)
            for name, version in env.fake_dists:
                _write_fake_dist(site, name, version)
        smoke = _spawn(env.python, {"kind": "smoke", "env": env.name}, timeout=600)
        if "+cpu" not in smoke.get("versions", {}).get("torch", "") or smoke.get("cuda"):
            raise SetupError(f"torch in the environment is not the CPU build: {smoke}")
    except (SetupError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise SetupError(f"{e}\n    last lines of {log}:\n{_log_tail(log)}") from e
    stamp.write_text(want + "\n")
    print(f"  {env.name}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return env.python


# ----------------------------------------------------------------------------------------------
# Suites: inputs (our venv), peers (their venvs), ours (our venv)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRun:
    """A peer implementation: ``run(arrays, meta)`` (in the peer's venv) returns ``(step, outputs_of)``:
    ``step()`` is the timed call on the whole batch, ``outputs_of(result)`` the arrays kept for parity."""

    env: str
    run: Callable[[dict, dict], tuple[Callable[[], Any], Callable[[Any], dict]]]
    timed: str


@dataclass(frozen=True)
class Ours:
    """One of our implementations: ``module()`` builds the nn.Module (our venv), called positionally on the
    saved arrays named ``inputs``; ``outputs`` name its results. ``backend`` is ``"eager"`` (torch) or
    ``"onnxruntime"`` (exported once per workload with ``dims``, run on onnxruntime CPU). ``parity`` lists
    ``(our output, peer label, peer output, transform)`` compared per image; ``transform(peer array, meta)``
    maps the peer's encoding to ours (or None)."""

    backend: str
    module: Callable[[], Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dims: tuple[tuple[str | int, ...], ...] = ()
    parity: tuple[tuple[str, str, str, Callable[[Any, dict], Any] | None], ...] = ()
    timed: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    workloads: tuple[str, ...]
    prepare: Callable[[str], tuple[dict, dict]]  # workload -> (arrays, meta), in our venv
    peers: dict[str, PeerRun]
    extra_parity: Callable[[str, Callable[[str, str], Any], dict], list[tuple[str, str]]] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# -- maxiou ------------------------------------------------------------------------------------

MAXIOU_CFG = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)


def _prepare_maxiou(workload: str) -> tuple[dict, dict]:
    import torch

    from exportable.anchors import AnchorGenerator
    from lessons.scenes import WORKLOADS, make_workload_batch

    wl = WORKLOADS[workload]
    anchors = torch.cat(AnchorGenerator(**wl.generator_kwargs()).grid_anchors(wl.featmap_sizes()))  # (N, 4)
    gts = make_workload_batch(workload, seed=0)
    arrays = {"anchors": anchors, "gt_boxes": gts.gt_boxes, "gt_labels": gts.gt_labels, "gt_mask": gts.gt_mask}
    meta = {"batch": wl.batch, "num_priors": int(anchors.shape[0]), "m": wl.m, "num_classes": wl.num_classes}
    return {k: v.numpy() for k, v in arrays.items()}, meta


def _stub_mmcv_ext() -> None:
    """Register a stand-in ``mmcv._ext`` (mmcv-lite ships no compiled ops). ``mmcv.ops`` asks it for
    every kernel by name at import; each one raises if called. The pure-PyTorch assigners never call them."""
    import types

    if "mmcv._ext" in sys.modules:
        return
    mod = types.ModuleType("mmcv._ext", "stand-in for mmcv's compiled ops (mmcv-lite); every kernel raises")

    def __getattr__(name: str):  # PEP 562 module __getattr__
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: compiled mmcv ops are not installed (mmcv-lite)")

        missing.__name__ = name
        return missing

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["mmcv._ext"] = mod


def _import_mmdet():
    _stub_mmcv_ext()
    from mmdet.registry import TASK_UTILS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)  # imports mmdet.models (and mmcv.ops, on the stand-in)
    return TASK_UTILS


def _peer_mmdet_maxiou(arrays: dict, meta: dict):
    import torch
    from mmengine.structures import InstanceData

    task_utils = _import_mmdet()
    assigner = task_utils.build(dict(type="MaxIoUAssigner", **MAXIOU_CFG))
    anchors = torch.from_numpy(arrays["anchors"])
    mask = torch.from_numpy(arrays["gt_mask"])
    # mmdetection holds each image's gts as its own (M_i, 4) tensor: drop the padding outside the clock.
    boxes = [b[m] for b, m in zip(torch.from_numpy(arrays["gt_boxes"]), mask)]
    labels = [lab[m] for lab, m in zip(torch.from_numpy(arrays["gt_labels"]), mask)]

    def step():  # image by image, as mmdetection's heads call it (_get_targets_single)
        return [assigner.assign(InstanceData(priors=anchors), InstanceData(bboxes=b, labels=lab))
                for b, lab in zip(boxes, labels)]

    def outputs_of(results) -> dict:
        return {"max_overlaps": torch.stack([r.max_overlaps for r in results]).numpy(),
                "gt_inds": torch.stack([r.gt_inds for r in results]).numpy(),
                "labels": torch.stack([r.labels for r in results]).numpy()}

    return step, outputs_of


def _max_iou_core():
    from exportable.assigners.max_iou import AnchorGtMaxIoU

    return AnchorGtMaxIoU()


def _max_iou_assigner():
    from exportable.assigners.max_iou import MaxIoUAssigner

    return MaxIoUAssigner(**MAXIOU_CFG, num_classes=80)


def _from_mmdet_gt_inds(gt_inds, meta):
    """1-based gt_inds -> our gt_index"""
    import numpy as np

    return np.where(gt_inds > 0, gt_inds - 1, np.where(gt_inds == 0, -1, -2))


def _from_mmdet_labels(labels, meta):
    """-1 -> num_classes"""
    import numpy as np

    return np.where(labels >= 0, labels, meta["num_classes"])


def _parity_maxiou_argmax(label: str, get: Callable[[str, str], Any], meta: dict) -> list[tuple[str, str]]:
    """Our argmax vs mmdetection's gt_inds on its positives (max IoU >= pos_iou_thr); mismatches are
    checked against mmdetection's low-quality rule (an anchor holding a gt's best IoU goes to that gt)."""
    import numpy as np

    ours, peer_inds, peer_max = get(label, "argmax"), get("mmdetection", "gt_inds"), get("mmdetection", "max_overlaps")
    if ours is None or peer_inds is None or peer_max is None:
        return []
    anchors, boxes = get("inputs", "anchors"), get("inputs", "gt_boxes")
    pos = peer_max >= MAXIOU_CFG["pos_iou_thr"]  # (B, N)
    diff = pos & (peer_inds - 1 != ours)  # (B, N)
    explained = 0
    for b, n in zip(*np.nonzero(diff)):
        g = int(peer_inds[b, n]) - 1
        iou_g = _np_iou(anchors, boxes[b, g : g + 1])[:, 0]  # (N,) this gt against every anchor
        explained += bool(iou_g[n] >= iou_g.max() - 1e-6)
    figure = f"{int(pos.sum() - diff.sum())} of {int(pos.sum())} equal"
    if diff.any():
        figure += (f"; {int(diff.sum())} differ, {explained} of them anchors where mmdetection's low-quality rule "
                   "gave the anchor to a gt whose best anchor it is (not part of our IoU+max core)")
    return [(f"`{label}` argmax vs mmdetection `gt_inds - 1` on mmdetection's positives (IoU >= 0.5)", figure)]


def _np_iou(a, b):
    import numpy as np

    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, np.float32(1e-6))


# -- task_aligned -----------------------------------------------------------------------------

TAL_ULTRALYTICS_CFG = dict(topk=10, alpha=0.5, beta=6.0, stride=[8, 16, 32])


def _prepare_task_aligned(workload: str) -> tuple[dict, dict]:
    from lessons.scenes import WORKLOADS, make_workload_batch, make_workload_predictions

    wl = WORKLOADS[workload]
    points, strides, scores, pred_boxes = make_workload_predictions(workload, seed=0)
    gts = make_workload_batch(workload, seed=0)
    arrays = {"points": points, "strides": strides, "pred_scores": scores, "pred_boxes": pred_boxes,
              "gt_boxes": gts.gt_boxes, "gt_labels": gts.gt_labels, "gt_mask": gts.gt_mask}
    meta = {"batch": wl.batch, "num_priors": int(points.shape[0]), "m": wl.m, "num_classes": wl.num_classes}
    return {k: v.numpy() for k, v in arrays.items()}, meta


def _peer_ultralytics_tal(arrays: dict, meta: dict, **cfg):
    import torch
    from ultralytics.utils.tal import TaskAlignedAssigner

    assigner = TaskAlignedAssigner(num_classes=meta["num_classes"], **{**TAL_ULTRALYTICS_CFG, **cfg})
    # As v8DetectionLoss passes them: probabilities, boxes and points in pixels, float labels and mask (B, M, 1).
    args = (
        torch.from_numpy(arrays["pred_scores"]),
        torch.from_numpy(arrays["pred_boxes"]),
        torch.from_numpy(arrays["points"]),
        torch.from_numpy(arrays["gt_labels"]).unsqueeze(-1).float(),
        torch.from_numpy(arrays["gt_boxes"]),
        torch.from_numpy(arrays["gt_mask"]).unsqueeze(-1).float(),
    )

    def step():  # one call on the whole batch of 16, as ultralytics' loss calls it
        return assigner(*args)

    def outputs_of(res) -> dict:
        names = ("target_labels", "target_bboxes", "target_scores", "fg_mask", "target_gt_idx")
        return {n: t.numpy() for n, t in zip(names, res)}

    return step, outputs_of


# -- atss / simota / tood (mmdetection) ---------------------------------------------------------

ATSS_TOPK = 9
TOOD_CFG = dict(topk=13, alpha=1, beta=6)
SIMOTA_CFG = dict(center_radius=2.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0)
DSL_CFG = dict(soft_center_radius=3.0, topk=13, iou_weight=3.0)


def _prepare_atss(workload: str) -> tuple[dict, dict]:
    import torch

    from exportable.anchors import AnchorGenerator
    from lessons.scenes import WORKLOADS, make_workload_batch

    wl = WORKLOADS[workload]
    per_level = AnchorGenerator(**wl.generator_kwargs()).grid_anchors(wl.featmap_sizes())  # L x (N_l, 4)
    anchors = torch.cat(per_level)  # (N, 4)
    level_ids = torch.cat([torch.full((len(a),), i, dtype=torch.int64) for i, a in enumerate(per_level)])  # (N,)
    gts = make_workload_batch(workload, seed=0)
    arrays = {"anchors": anchors, "level_ids": level_ids, "gt_boxes": gts.gt_boxes, "gt_labels": gts.gt_labels,
              "gt_mask": gts.gt_mask}
    meta = {"batch": wl.batch, "num_priors": int(anchors.shape[0]), "m": wl.m, "num_classes": wl.num_classes,
            "num_level_priors": [len(a) for a in per_level]}
    return {k: v.numpy() for k, v in arrays.items()}, meta


def _mmdet_gts(arrays: dict):
    import torch

    mask = torch.from_numpy(arrays["gt_mask"])
    boxes = [b[m] for b, m in zip(torch.from_numpy(arrays["gt_boxes"]), mask)]
    labels = [lab[m] for lab, m in zip(torch.from_numpy(arrays["gt_labels"]), mask)]
    return boxes, labels


def _mmdet_outputs(num_classes: int):
    """mmdetection AssignResults -> our encoding: gt_index (-1 negative), labels (num_classes), overlaps."""

    def outputs_of(results) -> dict:
        import torch

        inds = torch.stack([r.gt_inds for r in results])  # (B, N) 1-based, 0 negative
        labels = torch.stack([r.labels for r in results])  # (B, N) -1 non-positive
        over = torch.stack([r.max_overlaps for r in results]).float()  # (B, N) -inf / 0 for non-positives
        pos = inds > 0
        return {"gt_index": torch.where(pos, inds - 1, -1).numpy(),
                "labels": torch.where(pos, labels, num_classes).numpy(),
                "overlaps": torch.where(pos, over, 0.0).numpy()}

    return outputs_of


def _peer_mmdet_atss(arrays: dict, meta: dict):
    import torch
    from mmengine.structures import InstanceData

    assigner = _import_mmdet().build(dict(type="ATSSAssigner", topk=ATSS_TOPK))
    anchors = torch.from_numpy(arrays["anchors"])
    boxes, labels = _mmdet_gts(arrays)

    def step():  # image by image, as ATSSHead._get_targets_single
        return [assigner.assign(InstanceData(priors=anchors), meta["num_level_priors"],
                                InstanceData(bboxes=b, labels=lab)) for b, lab in zip(boxes, labels)]

    return step, _mmdet_outputs(meta["num_classes"])


def _peer_mmdet_simota(arrays: dict, meta: dict):
    import torch
    from mmengine.structures import InstanceData

    assigner = _import_mmdet().build(dict(type="SimOTAAssigner", **SIMOTA_CFG))
    pts, st = torch.from_numpy(arrays["points"]), torch.from_numpy(arrays["strides"])
    priors = torch.cat([pts, st[:, None], st[:, None]], dim=1)  # (N, 4) centres + strides, as YOLOXHead passes
    scores, pboxes = torch.from_numpy(arrays["pred_scores"]), torch.from_numpy(arrays["pred_boxes"])
    boxes, labels = _mmdet_gts(arrays)

    def step():  # image by image, as YOLOXHead._get_targets_single (scores already sqrt(cls * obj))
        return [assigner.assign(InstanceData(priors=priors, bboxes=pb, scores=sc), InstanceData(bboxes=b, labels=lab))
                for pb, sc, b, lab in zip(pboxes, scores, boxes, labels)]

    return step, _mmdet_outputs(meta["num_classes"])


def _prepare_dsl(workload: str) -> tuple[dict, dict]:
    """The yolox inputs, with the scores also as logits (mmdetection's DynamicSoftLabelAssigner reads logits): ours
    get ``sigmoid(logits)``, the very probabilities mmdetection computes inside, so both see the same scores."""
    import torch

    arrays, meta = _prepare_task_aligned(workload)
    logits = torch.logit(torch.from_numpy(arrays["pred_scores"]).double()).float()  # (B, N, C)
    arrays["pred_logits"] = logits.numpy()
    arrays["pred_scores"] = torch.sigmoid(logits).numpy()
    return arrays, meta


def _peer_mmdet_dsl(arrays: dict, meta: dict):
    import torch
    from mmengine.structures import InstanceData

    assigner = _import_mmdet().build(dict(type="DynamicSoftLabelAssigner", **DSL_CFG))
    pts, st = torch.from_numpy(arrays["points"]), torch.from_numpy(arrays["strides"])
    priors = torch.cat([pts, st[:, None], st[:, None]], dim=1)  # (N, 4) points + strides, as RTMDetHead passes
    logits, pboxes = torch.from_numpy(arrays["pred_logits"]), torch.from_numpy(arrays["pred_boxes"])
    boxes, labels = _mmdet_gts(arrays)

    def step():  # image by image, as RTMDetHead._get_targets_single (scores are the class logits)
        return [assigner.assign(InstanceData(priors=priors, bboxes=pb, scores=sc), InstanceData(bboxes=b, labels=lab))
                for pb, sc, b, lab in zip(pboxes, logits, boxes, labels)]

    return step, _mmdet_outputs(meta["num_classes"])


def _peer_mmdet_tood(arrays: dict, meta: dict):
    import torch
    from mmengine.structures import InstanceData

    assigner = _import_mmdet().build(dict(type="TaskAlignedAssigner", topk=TOOD_CFG["topk"]))
    pts = torch.from_numpy(arrays["points"])
    priors = torch.cat([pts, pts], dim=1)  # (N, 4) zero-size boxes at the points: TOOD reads only their centres
    scores, pboxes = torch.from_numpy(arrays["pred_scores"]), torch.from_numpy(arrays["pred_boxes"])
    boxes, labels = _mmdet_gts(arrays)

    def step():  # image by image, as TOODHead._get_targets_single
        return [assigner.assign(InstanceData(priors=priors, bboxes=pb, scores=sc), InstanceData(bboxes=b, labels=lab),
                                alpha=TOOD_CFG["alpha"], beta=TOOD_CFG["beta"])
                for pb, sc, b, lab in zip(pboxes, scores, boxes, labels)]

    return step, _mmdet_outputs(meta["num_classes"])


def _peer_ultralytics_tal_ours_encoding(arrays: dict, meta: dict, **cfg):
    """ultralytics' assigner, with its outputs also in our encoding (gt_index, labels, target_scores)."""
    step, raw = _peer_ultralytics_tal(arrays, meta, **cfg)

    def outputs_of(res) -> dict:
        import numpy as np

        out = raw(res)
        fg = out["fg_mask"].astype(bool)  # (B, N)
        out["gt_index"] = np.where(fg, out["target_gt_idx"], -1)
        out["labels"] = np.where(fg, out["target_labels"], meta["num_classes"])
        out["target_scores_at_label"] = out["target_scores"].sum(-1)  # one nonzero class per anchor
        return out

    return step, outputs_of


def _prepare_hungarian(workload: str) -> tuple[dict, dict]:
    """``detr-q{Q}-m{M}``: B = 8 DETR-like images (``exportable.examples.hungarian_inputs``, continuous scores and
    boxes: tie-free), every gt real, 80 classes."""
    import torch

    from exportable.examples import hungarian_inputs

    q, m = (int(part[1:]) for part in workload.split("-")[1:])
    b, c = 8, 80
    scores, pred_boxes, gt_boxes, gt_labels, _, image_sizes = hungarian_inputs(
        {"B": b, "Q": q, "M": m, "C": c}, torch.Generator().manual_seed(0))
    arrays = {"pred_scores": scores, "pred_boxes": pred_boxes, "gt_boxes": gt_boxes, "gt_labels": gt_labels,
              "gt_mask": torch.ones(b, m, dtype=torch.bool), "image_sizes": image_sizes}
    meta = {"batch": b, "num_priors": q, "m": m, "num_classes": c}
    return {k: v.numpy() for k, v in arrays.items()}, meta


HUNGARIAN_COSTS = [dict(type="FocalLossCost", weight=2.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                   dict(type="IoUCost", iou_mode="giou", weight=2.0)]


def _peer_mmdet_hungarian(arrays: dict, meta: dict):
    import torch
    from mmengine.structures import InstanceData

    assigner = _import_mmdet().build(dict(type="HungarianAssigner", match_costs=HUNGARIAN_COSTS))
    logits = torch.logit(torch.from_numpy(arrays["pred_scores"]).double()).float()  # FocalLossCost applies sigmoid
    pboxes = torch.from_numpy(arrays["pred_boxes"])
    sizes = arrays["image_sizes"].tolist()
    boxes, labels = _mmdet_gts(arrays)

    def step():  # image by image, as DeformableDETRHead / DINOHead._get_targets_single
        return [assigner.assign(InstanceData(scores=sc, bboxes=pb), InstanceData(bboxes=b, labels=lab),
                                img_meta=dict(img_shape=tuple(hw)))
                for sc, pb, b, lab, hw in zip(logits, pboxes, boxes, labels, sizes)]

    def outputs_of(results) -> dict:
        inds = torch.stack([r.gt_inds for r in results])  # (B, Q) 1-based, 0 unmatched
        labels_ = torch.stack([r.labels for r in results])  # (B, Q) -1 unmatched
        pos = inds > 0
        return {"gt_index": torch.where(pos, inds - 1, -1).numpy(),
                "labels": torch.where(pos, labels_, meta["num_classes"]).numpy()}

    return step, outputs_of


def _ultralytics_tal_with(**cfg):
    """:func:`_peer_ultralytics_tal_ours_encoding` with ``cfg`` (``topk``, ``topk2``) over TAL_ULTRALYTICS_CFG."""
    return lambda arrays, meta: _peer_ultralytics_tal_ours_encoding(arrays, meta, **cfg)


def _dual_flat():
    from exportable.assigners.task_aligned_dual import DualTaskAlignedAssigner

    class Flat(DualTaskAlignedAssigner):  # the catalog graph's 12 outputs: one-to-many, then one-to-one
        def forward(self, *args):
            return tuple(t for part in super().forward(*args) for t in part)

    return Flat(num_classes=80)


def _ours(module_path: str, cls: str, **kwargs):
    def build():
        import importlib

        return getattr(importlib.import_module(module_path), cls)(**kwargs)

    return build


# -- the registries ----------------------------------------------------------------------------

_CORE_IO = dict(inputs=("anchors", "gt_boxes", "gt_mask"), outputs=("max_overlaps", "argmax"),
                dims=(("N", 4), ("B", "M", 4), ("B", "M")),
                parity=(("max_overlaps", "mmdetection", "max_overlaps", None),))
_ASSIGNER_IO = dict(inputs=("anchors", "gt_boxes", "gt_labels", "gt_mask"),
                    outputs=("gt_index", "labels", "boxes", "overlaps", "target_scores", "weights"),
                    dims=(("N", 4), ("B", "M", 4), ("B", "M"), ("B", "M")),
                    parity=(("gt_index", "mmdetection", "gt_inds", _from_mmdet_gt_inds),
                            ("labels", "mmdetection", "labels", _from_mmdet_labels),
                            ("overlaps", "mmdetection", "max_overlaps", None)))

_RESULT = ("gt_index", "labels", "boxes", "overlaps", "target_scores", "weights")
_MMDET_PARITY = (("gt_index", "mmdetection", "gt_index", None), ("labels", "mmdetection", "labels", None),
                 ("overlaps", "mmdetection", "overlaps", None))
_ATSS_IO = dict(inputs=("anchors", "level_ids", "gt_boxes", "gt_labels", "gt_mask"), outputs=_RESULT,
                dims=(("N", 4), ("N",), ("B", "M", 4), ("B", "M"), ("B", "M")), parity=_MMDET_PARITY)
_POINT_IO = dict(inputs=("points", "strides", "pred_scores", "pred_boxes", "gt_boxes", "gt_labels", "gt_mask"),
                 outputs=_RESULT,
                 dims=(("N", 2), ("N",), ("B", "N", "C"), ("B", "N", 4), ("B", "M", 4), ("B", "M"), ("B", "M")))

SUITES: dict[str, Suite] = {
    "maxiou": Suite(
        name="maxiou",
        title="MaxIoU (RetinaNet: pos 0.5 / neg 0.4, min_pos_iou 0) against mmdetection",
        workloads=("retina-m20", "retina-m100"),
        prepare=_prepare_maxiou,
        peers={"mmdetection": PeerRun(
            env="mmdet", run=_peer_mmdet_maxiou,
            timed="`TASK_UTILS.build(dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, "
                  "min_pos_iou=0.0))` `.assign(InstanceData(priors=anchors), InstanceData(bboxes, labels))`, "
                  "image by image (the whole assign: IoU, max both ways, thresholds, per-gt low-quality loop, "
                  "labels)")},
        extra_parity=_parity_maxiou_argmax,
        notes=(
            "Like-for-like: the `ours MaxIoUAssigner` rows (the whole assignment, mmdetection's steps). "
            "**Not like-for-like:** the `ours IoU+max core` rows time `exportable.assigners.max_iou.AnchorGtMaxIoU`, "
            "the IoU + max/argmax step of MaxIoU only (mmdetection's `overlaps.max(dim=0)`), the suite's module "
            "before `MaxIoUAssigner` landed; their ratio against mmdetection's whole `assign` overstates our "
            "advantage and is kept as the cost of that step alone.",
            "Our eager modules and their ONNX graphs run the same per-image function (eager: a Python loop; the "
            "graph: one ONNX Scan over the images), so both hold one image's overlapping (gt, anchor) pairs at a "
            "time.",
        ),
    ),
    "atss": Suite(
        name="atss",
        title="ATSS (topk 9) against mmdetection",
        workloads=("atss-m20", "atss-m100"),
        prepare=_prepare_atss,
        peers={"mmdetection": PeerRun(
            env="mmdet", run=_peer_mmdet_atss,
            timed="`TASK_UTILS.build(dict(type='ATSSAssigner', topk=9))` `.assign(InstanceData(priors=anchors), "
                  "num_level_priors, InstanceData(bboxes, labels))`, image by image")},
        notes=("Inputs: the `atss-m20` / `atss-m100` anchors (one square anchor of side 8 stride per location) and "
               "`make_workload_batch`, seed 0. Random boxes give distinct IoUs and centre distances except on "
               "the regular anchor grid, where equal distances can occur: a mismatch count there is a tie order, "
               "not a different rule (parity is claimed on tie-free inputs).",),
    ),
    "simota": Suite(
        name="simota",
        title="SimOTA (centre radius 2.5, top-10 dynamic k, IoU weight 3) against mmdetection",
        workloads=("yolox-m20", "yolox-m100"),
        prepare=_prepare_task_aligned,
        peers={"mmdetection": PeerRun(
            env="mmdet", run=_peer_mmdet_simota,
            timed="`TASK_UTILS.build(dict(type='SimOTAAssigner', center_radius=2.5, candidate_topk=10, "
                  "iou_weight=3.0, cls_weight=1.0))` `.assign(InstanceData(priors=(x, y, stride, stride), bboxes, "
                  "scores), InstanceData(bboxes, labels))`, image by image")},
        notes=("Scores are passed as they are (mmdetection's YOLOXHead passes sqrt(cls * obj)); inputs from "
               "`make_workload_predictions` and `make_workload_batch`, seed 0.",),
    ),
    "dynamic_soft_label": Suite(
        name="dynamic_soft_label",
        title="DynamicSoftLabel (RTMDet: soft centre radius 3, top-13 dynamic k, IoU weight 3) against mmdetection",
        workloads=("yolox-m20", "yolox-m100"),
        prepare=_prepare_dsl,
        peers={"mmdetection": PeerRun(
            env="mmdet", run=_peer_mmdet_dsl,
            timed="`TASK_UTILS.build(dict(type='DynamicSoftLabelAssigner', soft_center_radius=3.0, topk=13, "
                  "iou_weight=3.0))` `.assign(InstanceData(priors=(x, y, stride, stride), bboxes, scores=logits), "
                  "InstanceData(bboxes, labels))`, image by image")},
        notes=("mmdetection reads the class logits and ours the probabilities: the inputs hold logits (float32 "
               "`logit` of `make_workload_predictions`' scores, seed 0) and ours get `sigmoid(logits)`, the "
               "probabilities mmdetection computes inside. Its `binary_cross_entropy_with_logits` and our BCE on "
               "probabilities round differently (an ulp of the cost), so parity is claimed on tie-free inputs "
               "(continuous random scores and boxes).",
               "The many-object cases (M = 1,000 and 5,000, B = 2) are in `benchmarks/results/dynamic_soft_label.md` "
               "(ours only): mmdetection's `(n, M, C)` float32 tensors there are 2.7 GB (M = 1,000) and 13 GB "
               "(M = 5,000) each, several alive at once, beyond what the shared 24 GB machine can give it.",),
    ),
    "task_aligned": Suite(
        name="task_aligned",
        title="TaskAligned: TOOD (topk 13, alpha 1, beta 6) against mmdetection; ultralytics' variant "
              "(topk 10, alpha 0.5, beta 6) against ultralytics",
        workloads=("yolox-m20", "yolox-m100"),
        prepare=_prepare_task_aligned,
        peers={"mmdetection": PeerRun(
            env="mmdet", run=_peer_mmdet_tood,
            timed="`TASK_UTILS.build(dict(type='TaskAlignedAssigner', topk=13))` `.assign(InstanceData(priors, "
                  "bboxes, scores), InstanceData(bboxes, labels), alpha=1, beta=6)`, image by image"),
               "ultralytics": PeerRun(
            env="ultralytics", run=_peer_ultralytics_tal_ours_encoding,
            timed="`TaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0, stride=[8, 16, 32])"
                  "(pd_scores, pd_bboxes, anc_points, gt_labels (B, M, 1), gt_bboxes, mask_gt (B, M, 1))`, "
                  "one call on the batch of 16")},
        notes=(
            "Each peer is compared with our variant of the same name: `ours tood` with mmdetection, "
            "`ours ultralytics` with ultralytics.",
            "Inputs: `lessons.scenes.make_workload_predictions` (scores uniform in (0, 1), boxes = each point's "
            "square of side 4 stride jittered by +-1 stride) and `make_workload_batch`, seed 0.",
        ),
    ),
    "hungarian": Suite(
        name="hungarian",
        title="Hungarian matching (DETR; focal 2 + L1 5 + GIoU 2) against mmdetection, B = 8",
        workloads=("detr-q300-m100", "detr-q300-m20"),
        prepare=_prepare_hungarian,
        peers={"mmdetection": PeerRun(
            env="mmdet", run=_peer_mmdet_hungarian,
            timed="`TASK_UTILS.build(dict(type='HungarianAssigner', match_costs=[FocalLossCost 2, BBoxL1Cost 5 "
                  "(xywh), IoUCost giou 2]))` `.assign(InstanceData(scores=logits, bboxes), InstanceData(bboxes, "
                  "labels), img_meta=dict(img_shape=(H, W)))`, image by image (the cost, then scipy on the CPU)")},
        notes=("Inputs: `exportable.examples.hungarian_inputs` (B = 8, 80 classes, continuous sigmoid scores and "
               "boxes: tie-free), every gt real; mmdetection gets `logit(p)` (its FocalLossCost applies the "
               "sigmoid). Our eager solves with scipy per image, as mmdetection; our onnxruntime graph solves with "
               "its own exact batched solver (an ONNX Loop). mmdetection records no overlaps: parity covers "
               "gt_index and labels.",),
    ),
}

SUITES["one_to_one"] = Suite(
    name="one_to_one",
    title="One-to-one task alignment: ultralytics' topk2 (YOLO26's one-to-one branch, topk 7, topk2 1) and "
          "YOLOv10's dual assignment (one-to-many topk 10, one-to-one topk 1) against ultralytics",
    workloads=("yolox-m20", "yolox-m100"),
    prepare=_prepare_task_aligned,
    peers={f"ultralytics {what}": PeerRun(
        env="ultralytics", run=_ultralytics_tal_with(**cfg),
        timed=f"`TaskAlignedAssigner({', '.join(f'{k}={v}' for k, v in cfg.items())}, num_classes=80, alpha=0.5, "
              "beta=6.0, stride=[8, 16, 32])(...)` as in the `task_aligned` suite, one call on the batch of 16")
        for what, cfg in (("topk 7 topk2 1", {"topk": 7, "topk2": 1}), ("topk 10", {"topk": 10}),
                          ("topk 1", {"topk": 1}))},
    notes=(
        "`ours topk2` is compared with `ultralytics topk 7 topk2 1` (ultralytics' `E2ELoss` one-to-one branch); "
        "`ours dual` returns both assignments from one call: its `o2m_*` outputs are compared with "
        "`ultralytics topk 10`, its `o2o_*` with `ultralytics topk 1` (ultralytics' `E2EDetectLoss`, YOLOv10), "
        "and its time with each of the two calls it replaces.",
        "Inputs: the `task_aligned` suite's (`make_workload_predictions`: scores uniform in (0, 1), boxes jittered "
        "by +-1 stride; `make_workload_batch`, seed 0): continuous random values, so the metrics have no ties.",
    ),
)

_TOPK2_PARITY = (("gt_index", "ultralytics topk 7 topk2 1", "gt_index", None),
                 ("labels", "ultralytics topk 7 topk2 1", "labels", None),
                 ("target_scores", "ultralytics topk 7 topk2 1", "target_scores_at_label", None))
_DUAL_OUT = tuple(f"{branch}_{name}" for branch in ("o2m", "o2o") for name in _RESULT)
_DUAL_PARITY = tuple((f"{branch}_{mine}", peer, theirs, None)
                     for branch, peer in (("o2m", "ultralytics topk 10"), ("o2o", "ultralytics topk 1"))
                     for mine, theirs in (("gt_index", "gt_index"), ("labels", "labels"),
                                          ("target_scores", "target_scores_at_label")))

OURS: dict[str, dict[str, Ours]] = {
    "maxiou": {
        "ours MaxIoUAssigner eager": Ours(
            "eager", _max_iou_assigner, **_ASSIGNER_IO,
            timed="`exportable.assigners.max_iou.MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)"
                  "(anchors, gt_boxes, gt_labels, gt_mask)` on the batch (eager runs it image by image)"),
        "ours MaxIoUAssigner onnxruntime": Ours(
            "onnxruntime", _max_iou_assigner, **_ASSIGNER_IO,
            timed="the exported `MaxIoUAssigner` graph, whole batch, onnxruntime CPU EP"),
        "ours IoU+max core eager": Ours(
            "eager", _max_iou_core, **_CORE_IO,
            timed="`exportable.assigners.max_iou.AnchorGtMaxIoU()(anchors, gt_boxes, gt_mask)` on the batch: "
                  "MaxIoU's IoU + max/argmax step only (eager runs it image by image)"),
        "ours IoU+max core onnxruntime": Ours(
            "onnxruntime", _max_iou_core, **_CORE_IO,
            timed="the exported `AnchorGtMaxIoU` graph, whole batch, onnxruntime CPU EP"),
    },
    "atss": {
        f"ours ATSSAssigner {b}": Ours(
            b, _ours("exportable.assigners.atss", "ATSSAssigner", num_classes=80), **_ATSS_IO,
            timed="`exportable.assigners.atss.ATSSAssigner()(anchors, level_ids, gt_boxes, gt_labels, gt_mask)` on the "
                  "batch" + (" (eager)" if b == "eager" else ", exported graph on onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "simota": {
        f"ours SimOTAAssigner {b}": Ours(
            b, _ours("exportable.assigners.simota", "SimOTAAssigner"), **_POINT_IO,
            parity=_MMDET_PARITY,
            timed="`exportable.assigners.simota.SimOTAAssigner()(points, strides, pred_scores, pred_boxes, gt_boxes, "
                  "gt_labels, gt_mask)` on the batch" + (" (eager)" if b == "eager" else ", exported, onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "hungarian": {
        f"ours HungarianAssigner {b}": Ours(
            b, _ours("exportable.assigners.hungarian", "HungarianAssigner"),
            inputs=("pred_scores", "pred_boxes", "gt_boxes", "gt_labels", "gt_mask", "image_sizes"), outputs=_RESULT,
            dims=(("B", "Q", "C"), ("B", "Q", 4), ("B", "M", 4), ("B", "M"), ("B", "M"), ("B", 2)),
            parity=(("gt_index", "mmdetection", "gt_index", None), ("labels", "mmdetection", "labels", None)),
            timed="`exportable.assigners.hungarian.HungarianAssigner()(pred_scores, pred_boxes, gt_boxes, gt_labels, "
                  "gt_mask, image_sizes)` on the batch" + (" (eager: scipy per image)" if b == "eager" else
                                                           ", exported (the Loop solver), onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "dynamic_soft_label": {
        f"ours DynamicSoftLabelAssigner {b}": Ours(
            b, _ours("exportable.assigners.dynamic_soft_label", "DynamicSoftLabelAssigner"), **_POINT_IO,
            parity=_MMDET_PARITY,
            timed="`exportable.assigners.dynamic_soft_label.DynamicSoftLabelAssigner()(points, strides, "
                  "sigmoid(logits), pred_boxes, gt_boxes, gt_labels, gt_mask)` on the batch"
                  + (" (eager)" if b == "eager" else ", exported, onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "task_aligned": {
        **{f"ours tood {b}": Ours(
            b, _ours("exportable.assigners.task_aligned", "TaskAlignedAssigner", num_classes=80), **_POINT_IO,
            parity=_MMDET_PARITY,
            timed="`TaskAlignedAssigner(variant='tood')` on the batch" + ("" if b == "eager" else ", onnxruntime CPU"))
           for b in ("eager", "onnxruntime")},
        **{f"ours ultralytics {b}": Ours(
            b, _ours("exportable.assigners.task_aligned", "TaskAlignedAssigner", variant="ultralytics",
                     num_classes=80), **_POINT_IO,
            parity=(("gt_index", "ultralytics", "gt_index", None), ("labels", "ultralytics", "labels", None),
                    ("target_scores", "ultralytics", "target_scores_at_label", None)),
            timed="`TaskAlignedAssigner(variant='ultralytics')` on the batch" + ("" if b == "eager" else
                                                                                   ", onnxruntime CPU"))
           for b in ("eager", "onnxruntime")},
    },
    "one_to_one": {
        **{f"ours topk2 {b}": Ours(
            b, _ours("exportable.assigners.task_aligned_ultralytics", "UltralyticsTaskAlignedAssigner", topk=7,
                     topk2=1, num_classes=80), **_POINT_IO, parity=_TOPK2_PARITY,
            timed="`UltralyticsTaskAlignedAssigner(topk=7, topk2=1)` on the batch" + ("" if b == "eager" else
                                                                                    ", onnxruntime CPU"))
           for b in ("eager", "onnxruntime")},
        **{f"ours dual {b}": Ours(
            b, _dual_flat, **{**_POINT_IO, "outputs": _DUAL_OUT}, parity=_DUAL_PARITY,
            timed="`DualTaskAlignedAssigner()` on the batch, both assignments" + ("" if b == "eager" else
                                                                                ", onnxruntime CPU"))
           for b in ("eager", "onnxruntime")},
    },
}


# ----------------------------------------------------------------------------------------------
# Children (run as `<python> benchmarks/peers.py --child '<json>'`)
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
    proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec.get('kind')} {spec.get('label', '')} failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------


def _fmt_ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _compare(a, b) -> str:
    """Per-image comparison of two (B, ...) arrays: max |difference| for floats, mismatch counts for integers."""
    import numpy as np

    if a.shape != b.shape:
        return f"shapes differ: {a.shape} vs {b.shape}"
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating):
        per = [float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
               for x, y in zip(a, b)]
        worst = max(per) if per else 0.0
        return ("equal in every image (max abs diff 0)" if worst == 0 else
                f"max abs diff {worst:.3g}; per image [{', '.join(f'{p:.2g}' for p in per)}]")
    per = [int(np.sum(x != y)) for x, y in zip(a, b)]
    return ("equal in every image" if sum(per) == 0 else
            f"{sum(per)} of {a.size} differ; per image {per}")


def _parity(suite: Suite, workdir: Path, meta: dict, measured: set[str]) -> list[tuple[str, str]]:
    import numpy as np

    def get(label: str, name: str):
        path = (workdir / f"in__{name}.npy") if label == "inputs" else workdir / f"out__{_slug(label)}__{name}.npy"
        return np.load(path) if (label == "inputs" or label in measured) and path.exists() else None

    rows = []
    ours = [(label, o) for label, o in OURS[suite.name].items() if label in measured]
    for label, o in ours:
        for mine, peer, theirs, transform in o.parity:
            a, b = get(label, mine), get(peer, theirs)
            if a is not None and b is not None:
                what = f"{peer} {theirs}"
                if transform is not None:
                    what, b = f"{what} ({transform.__doc__})", transform(b, meta)
                rows.append((f"`{label}` {mine} vs {what}", _compare(a, b)))
        if suite.extra_parity is not None:
            rows += suite.extra_parity(label, get, meta)
    same = [(x, y) for x, y in zip(ours, ours[1:]) if x[0].rsplit(" ", 1)[0] == y[0].rsplit(" ", 1)[0]]
    for (label_a, a), (label_b, b) in same:  # the same implementation of ours: eager vs onnxruntime
        for name in a.outputs:
            if name in b.outputs and get(label_a, name) is not None and get(label_b, name) is not None:
                rows.append((f"`{label_a}` vs `{label_b}` {name}", _compare(get(label_a, name), get(label_b, name))))
    return rows


def run_suite(suite: Suite, args, pythons: dict[str, Path], skipped: dict[str, str]) -> str | None:
    impls: list[tuple[str, str, Path | str, str]] = []  # (label, kind, python, what is timed)
    for label, peer in suite.peers.items():
        if peer.env in pythons:
            impls.append((label, "peer", pythons[peer.env], peer.timed))
    for label, o in OURS[suite.name].items():
        impls.append((label, "ours", sys.executable, o.timed or o.backend))
    if not impls:
        print(f"  nothing to measure in {suite.name}", flush=True)
        return None
    workloads = [w for w in suite.workloads if not args.workload or w in args.workload]
    rows, parity, failures, versions = [], [], [], {}
    for workload in workloads:
        with tempfile.TemporaryDirectory(prefix="assignlab-peers-") as tmp:
            try:
                _spawn(sys.executable, {"kind": "prepare", "suite": suite.name, "workload": workload, "workdir": tmp},
                       threads=args.threads, ours=True)
            except (RuntimeError, subprocess.SubprocessError) as e:
                failures.append(f"`{workload}`: preparing the inputs failed: {str(e).splitlines()[0]}")
                print(f"  {workload}: preparing inputs failed:\n{e}", flush=True)
                continue
            meta = json.loads((Path(tmp) / "meta.json").read_text())
            res: dict[str, dict] = {}
            failed: set[str] = set()
            for r in range(args.rounds):  # rounds > 1 interleave the implementations (order rotated each round)
                for label, kind, python, _ in impls[r % len(impls):] + impls[: r % len(impls)]:
                    if label in failed:
                        continue
                    spec = {"kind": kind, "suite": suite.name, "workload": workload, "workdir": tmp, "label": label,
                            "threads": args.threads, "repeats": args.repeats}
                    try:
                        got = _spawn(python, spec, threads=args.threads, ours=kind == "ours")
                    except (RuntimeError, subprocess.SubprocessError) as e:
                        failures.append(f"`{workload}` {label}: {str(e).strip().splitlines()[-1][:300]}")
                        print(f"  {workload}: {label} failed:\n{e}", flush=True)
                        failed.add(label)
                        res.pop(label, None)
                        continue
                    if label in res:  # pool the runs of every round; peak RSS is the largest subprocess's
                        got["times"] = res[label]["times"] + got["times"]
                        got["peak_rss_mb"] = max(res[label]["peak_rss_mb"], got["peak_rss_mb"])
                    res[label] = got
                    versions[label] = got["versions"]
            for label, _, _, _ in impls:
                if label in res:
                    ms = statistics.median(res[label]["times"]) * 1000 / meta["batch"]
                    print(f"  {workload}: {label} {_fmt_ms(ms)} ms/img", flush=True)
            if res:
                parity.append((workload, _parity(suite, Path(tmp), meta, set(res))))
            rows.append((workload, meta, res))
    if not any(res for _, _, res in rows):
        return None
    return _table(suite, args, impls, rows, parity, failures, versions, skipped)


def _malloc_text(mode: str) -> str:
    if mode == "keep":
        return ("Every measurement subprocess runs with glibc told to keep freed memory (`MALLOC_MMAP_THRESHOLD_` and "
                "`MALLOC_TRIM_THRESHOLD_` = 16 GiB, `--malloc keep`, the default): with the stock allocator each "
                "tensor above 32 MiB is a fresh mmap whose page faults, slow and load-dependent on these VMs, "
                "dominated the torch figures (the same eager IoU + max: 450-1650 ms/img, 2/3 of it kernel time, vs "
                "a steady 110-145 ms/img kept). `--malloc default` measures the stock allocator.")
    return ("Stock glibc allocator (`--malloc default`): tensors above glibc's mmap threshold are fresh mmaps; their "
            "page faults are slow and load-dependent on these VMs and can dominate the torch figures.")


def _table(suite, args, impls, rows, parity, failures, versions, skipped) -> str:
    peers = [label for label, kind, _, _ in impls if kind == "peer"]
    cmd = " ".join(["python benchmarks/peers.py", *(args.argv or [])])
    load, load0 = os.getloadavg(), args.load_at_start
    runs_text = f"median of {args.repeats} runs after one warm-up"
    if args.rounds > 1:
        runs_text = (f"median of {args.rounds} x {args.repeats} runs ({args.rounds} interleaved subprocesses per "
                     f"implementation, each {args.repeats} runs after one warm-up)")
    lines = [
        f"# Peers: {suite.title}",
        "",
        f"`{cmd}` on {dt.date.today().isoformat()}; {_cpu()}, {os.cpu_count()} cores, **shared**: other work ran "
        f"on the machine during this run (1-minute load average {load0:.1f} at the start, {load[0]:.1f} at the end), "
        "so "
        "absolute times are indicative only; the ratios, measured side by side in this one run, are what count. "
        f"{args.threads} threads for every implementation (torch `set_num_threads`, onnxruntime intra-op threads, "
        f"OMP/MKL variables); {runs_text}, per image; each implementation in "
        "its own subprocess (peak RSS is that process's, imports included) on the same inputs (.npy files written "
        "once from our venv). " + _malloc_text(args.malloc),
        "",
        "Versions:",
    ]
    for label, kind, python, _ in impls:
        if label in versions:
            where = "our `.venv`" if kind == "ours" else f"`{Path(python).parent.parent.relative_to(ROOT)}`"
            vs = ", ".join(f"{k} {v}" for k, v in versions[label].items())
            lines.append(f"- {label} ({where}): {vs}")
    for name, why in skipped.items():
        lines.append(f"- {name}: **not measured**: {why}")
    lines += ["", "What is timed:"]
    lines += [f"- {label}: {what}" for label, _, _, what in impls]
    ratio_heads = "".join(f" | {p} / this" for p in peers)
    lines += ["", f"| workload | B | implementation | ms/img (median) | all runs ms/img | peak RSS MB{ratio_heads} |",
              "|---|---|---|---|---|---" + "|---" * len(peers) + "|"]
    for workload, meta, res in rows:
        med = {lab: statistics.median(r["times"]) * 1000 / meta["batch"] for lab, r in res.items()}
        for label, _, _, _ in impls:
            if label not in res:
                lines.append(f"| `{workload}` | {meta['batch']} | {label} | failed | | " + "| " * len(peers) + "|")
                continue
            r = res[label]
            runs = ", ".join(_fmt_ms(t * 1000 / meta["batch"]) for t in r["times"])
            ratios = "".join(f" | {med[p] / med[label]:.2f}" if p in med else " | –" for p in peers)
            lines.append(f"| `{workload}` | {meta['batch']} | {label} | {_fmt_ms(med[label])} | {runs} "
                         f"| {r['peak_rss_mb']:.0f}{ratios} |")
    if peers:
        lines += ["", "`<peer> / this` > 1 means this implementation is faster than the peer."]
    if any(p for _, p in parity):
        lines += ["", "## Parity on these inputs", "", "| workload | comparison | result |", "|---|---|---|"]
        for workload, prs in parity:
            lines += [f"| `{workload}` | {what} | {figure} |" for what, figure in prs]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in suite.notes]
    lines += ["- The machine class is noisy (the same command varied up to 3x between runs, docs/workloads.md): "
              "compare the ratio columns, never absolute times across runs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), help="default: all")
    parser.add_argument("--workload", action="append", help="only these workloads of the suites (default: all)")
    parser.add_argument("--peer", action="append", choices=sorted(ENVS), help="only these peers (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every implementation's subprocess this many times, interleaved, and pool the "
                        "runs (steadier ratios on a shared machine)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: every measurement subprocess runs with glibc told to keep freed memory "
                        "(MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 16 GiB), so page faults on fresh large "
                        "tensors do not swamp the figures; default: the stock allocator")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--setup-only", action="store_true", help="create/check the peer environments and stop")
    parser.add_argument("--rebuild", action="store_true", help="recreate the peer environments even if stamped")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.load_at_start = os.getloadavg()[0]
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    if args.malloc == "keep":
        CHILD_ENV.update(MALLOC_KEEP)
    suites = [SUITES[s] for s in (args.suite or sorted(SUITES))]
    wanted = {p.env for s in suites for p in s.peers.values()}
    if args.peer:
        wanted &= set(args.peer)
    print("peer environments:", flush=True)
    pythons: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in sorted(wanted):
        try:
            pythons[name] = ensure_env(ENVS[name], rebuild=args.rebuild)
            print(f"  {name}: {pythons[name].parent.parent.relative_to(ROOT)}", flush=True)
        except SetupError as e:
            skipped[ENVS[name].title] = f"its environment could not be set up ({str(e).splitlines()[0]})"
            print(f"  {name}: SKIPPED, environment could not be set up: {e}", flush=True)
    if args.setup_only:
        return 0 if pythons or not wanted else 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measured = 0
    for suite in suites:
        print(f"{suite.name}:", flush=True)
        sk = {t: w for t, w in skipped.items() if t in suite.peers}
        table = run_suite(suite, args, pythons, sk)
        if table is None:
            print(f"  {suite.name}: nothing measured, no table written", flush=True)
            continue
        measured += 1
        path = out / f"peers_{suite.name}.md"
        path.write_text(table)
        print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    if not measured:
        print("nothing could be measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
