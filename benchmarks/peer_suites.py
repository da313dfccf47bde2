"""The peer suites of ``benchmarks/peers.py``: for each suite, how its inputs are made (our venv), how each peer
runs on them (the peer's venv) and which of our implementations run beside it (``OURS``), with the parity
checks. Adding our implementation of a suite is one entry in ``OURS``.

Standard library only at the top level: the peers' interpreters import this module; torch, numpy, the peers and
our packages are imported inside the functions that need them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from peer_envs import ENVS, PEERS_DIR, ROOT  # noqa: F401

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


# Our implementations, built in our venv only (the peers' interpreters never call these): one function per
# class, imported where it is built.


def _atss(**kwargs):
    from exportable.assigners.atss import ATSSAssigner

    return ATSSAssigner(**kwargs)


def _simota(**kwargs):
    from exportable.assigners.simota import SimOTAAssigner

    return SimOTAAssigner(**kwargs)


def _hungarian(**kwargs):
    from exportable.assigners.hungarian import HungarianAssigner

    return HungarianAssigner(**kwargs)


def _dynamic_soft_label(**kwargs):
    from exportable.assigners.dynamic_soft_label import DynamicSoftLabelAssigner

    return DynamicSoftLabelAssigner(**kwargs)


def _tood(**kwargs):
    from exportable.assigners.task_aligned import TaskAlignedAssigner

    return TaskAlignedAssigner(**kwargs)


def _ultralytics_tal(**kwargs):
    from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner

    return UltralyticsTaskAlignedAssigner(**kwargs)


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
            b, partial(_atss, num_classes=80), **_ATSS_IO,
            timed="`exportable.assigners.atss.ATSSAssigner()(anchors, level_ids, gt_boxes, gt_labels, gt_mask)` on the "
                  "batch" + (" (eager)" if b == "eager" else ", exported graph on onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "simota": {
        f"ours SimOTAAssigner {b}": Ours(
            b, _simota, **_POINT_IO,
            parity=_MMDET_PARITY,
            timed="`exportable.assigners.simota.SimOTAAssigner()(points, strides, pred_scores, pred_boxes, gt_boxes, "
                  "gt_labels, gt_mask)` on the batch" + (" (eager)" if b == "eager" else ", exported, onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "hungarian": {
        f"ours HungarianAssigner {b}": Ours(
            b, _hungarian,
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
            b, _dynamic_soft_label, **_POINT_IO,
            parity=_MMDET_PARITY,
            timed="`exportable.assigners.dynamic_soft_label.DynamicSoftLabelAssigner()(points, strides, "
                  "sigmoid(logits), pred_boxes, gt_boxes, gt_labels, gt_mask)` on the batch"
                  + (" (eager)" if b == "eager" else ", exported, onnxruntime CPU"))
        for b in ("eager", "onnxruntime")
    },
    "task_aligned": {
        **{f"ours tood {b}": Ours(
            b, partial(_tood, num_classes=80), **_POINT_IO,
            parity=_MMDET_PARITY,
            timed="`TaskAlignedAssigner()` (TOOD) on the batch" + ("" if b == "eager" else ", onnxruntime CPU"))
           for b in ("eager", "onnxruntime")},
        **{f"ours ultralytics {b}": Ours(
            b, partial(_ultralytics_tal, num_classes=80), **_POINT_IO,
            parity=(("gt_index", "ultralytics", "gt_index", None), ("labels", "ultralytics", "labels", None),
                    ("target_scores", "ultralytics", "target_scores_at_label", None)),
            timed="`UltralyticsTaskAlignedAssigner()` on the batch" + ("" if b == "eager" else
                                                                                   ", onnxruntime CPU"))
           for b in ("eager", "onnxruntime")},
    },
    "one_to_one": {
        **{f"ours topk2 {b}": Ours(
            b, partial(_ultralytics_tal, topk=7, topk2=1, num_classes=80), **_POINT_IO, parity=_TOPK2_PARITY,
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


