"""Benchmarks: torch eager vs onnxruntime on the named workloads of docs/workloads.md.

    python benchmarks/run.py                   # every suite (what `make bench` runs)
    python benchmarks/run.py --suite iou_max --repeats 5 --threads 2

Rules (docs/conventions.md): measured side by side in one run; fixed thread counts; one subprocess per
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
import math
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
from typing import Any

from lessons import workload_cases as lesson_cases  # explicit: one function per topic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# ----------------------------------------------------------------------------------------------
# Suites
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What a suite measures on one workload: the module, its inputs and its graph I/O names."""

    module: object  # nn.Module
    inputs: tuple
    input_names: list[str]
    input_dims: list[tuple]
    output_names: list[str]
    batch: int  # images in the inputs: times are reported per image


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    workloads: tuple[str, ...]
    build: Callable[[str], Case]
    note: str = ""
    # workload -> zero-argument callable running the per-image lessons reference on the same inputs
    reference: Callable[[str], Callable[[], object]] | None = None


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


def _split(spec: str) -> tuple[str, int | None]:
    name, _, batch = spec.partition("@")
    return name, int(batch) if batch else None


def _catalog_case(entry_name: str, module, inputs: tuple) -> Case:
    """A case whose graph I/O contract is the catalog entry's (names and dynamic dims)."""
    from exportable import catalog

    entry = catalog.get(entry_name)
    specs = entry.inputs[: len(inputs)]  # a case may leave out trailing optional inputs (e.g. anchor_mask)
    batch = next((int(x.shape[spec.dims.index("B")]) for x, spec in zip(inputs, specs) if "B" in spec.dims), 1)
    return Case(module, tuple(inputs), [s.name for s in specs], [s.dims for s in specs],
                [s.name for s in entry.outputs], batch)


def _lessons_case(entry_name: str, lesson_case: Callable[..., tuple], **params):
    """Build from a lesson's ``benchmark_case(workload)`` (``lesson_cases.<topic>_case``); the contract comes
    from the catalog entry."""

    def build(workload: str) -> Case:
        module, inputs = lesson_case(workload, **params)
        return _catalog_case(entry_name, module, inputs)

    return build


def _build_simota(workload: str) -> Case:
    """``lessons.simota.benchmark_case``, plus ``yolox-m5000``: the many-object case of docs/workloads.md §5
    (the yolox points with M = 5,000 gts per image, B = 2, seeded as the named workloads)."""
    if workload != "yolox-m5000":
        return _lessons_case("simota_assigner", lesson_cases.simota_case)(workload)
    from exportable.assigners.simota import SimOTAAssigner
    from lessons.scenes import grid_points, random_batch, random_predictions

    points, strides, _ = grid_points(640, 640, (8, 16, 32))
    scores, boxes = random_predictions(points, strides, 2, 80, seed=0)
    gts = random_batch((640, 640, 2, 5000, 80), seed=0)
    inputs = (points, strides, scores, boxes, gts.gt_boxes, gts.gt_labels, gts.gt_mask)
    return _catalog_case("simota_assigner", SimOTAAssigner().eval(), inputs)


def _build_o2f(workload: str) -> Case:
    """``lessons.o2f.benchmark_case`` (steps 1-4 on windows of grid cells); ``<workload>/shared`` runs both
    eager and the graph on the general path (steps 1-4 dense over (B, M, N)), to show what the windows gain."""
    from exportable.assigners.o2f import O2FAssigner
    from lessons.o2f import benchmark_case

    class DensePathO2F(O2FAssigner):
        """O2F on the general path: steps 1-4 dense over (B, M, N), in eager and in the graph."""

        def _grid_levels(self, points, strides):
            return None

    name, _, path = workload.partition("/")
    if path not in ("", "shared"):
        raise ValueError(f"workload: expected {name!r} or {name + '/shared'!r}, got {workload!r}")
    module, inputs = benchmark_case(name, seed=0)
    if path == "shared":
        module = DensePathO2F(num_classes=module.num_classes).eval()  # benchmark_case's defaults otherwise
    return _catalog_case("o2f_assigner", module, inputs)


def _retina_workload(workload: str):
    """``_workload`` plus ``retina-m1000``: docs/workloads.md §5's many-object case for MaxIoU (the retina
    anchors, N = 182,403, with M = 1,000 gts per image, B = 2, ``random_batch``, seed 0)."""
    if workload != "retina-m1000":
        return _workload(workload)
    from lessons.scenes import WORKLOADS, random_batch

    wl = WORKLOADS["retina-m100"]
    anchors, _ = _workload("retina-m100@1")
    return anchors, random_batch((wl.h, wl.w, 2, 1000, wl.num_classes), seed=0)


def _task_aligned_case(entry_name: str, **params):
    """TaskAligned cases: the named yolox workloads through ``lessons.task_aligned.benchmark_case``, and
    ``yolox-m5000`` (docs/workloads.md §5: the yolox points, N = 8,400, with M = 5,000 gts per image, B = 2,
    ``random_batch`` + ``random_predictions``, seed 0)."""
    lessons_build = _lessons_case(entry_name, lesson_cases.task_aligned_case, **params)

    def build(workload: str) -> Case:
        if workload != "yolox-m5000":
            return lessons_build(workload)
        from exportable.assigners.task_aligned import TaskAlignedAssigner
        from lessons.scenes import grid_points, random_batch, random_predictions

        points, strides, _ = grid_points(640, 640, (8, 16, 32))  # (8400, 2), (8400,)
        scores, boxes = random_predictions(points, strides, 2, 80, seed=0)  # (2, N, 80), (2, N, 4)
        gts = random_batch((640, 640, 2, 5000, 80), seed=0)
        module = TaskAlignedAssigner(num_classes=80, **params).eval()
        return _catalog_case(entry_name, module, (points, strides, scores, boxes, gts.gt_boxes, gts.gt_labels,
                                                  gts.gt_mask))

    return build


def _build_iou_max(workload: str) -> Case:
    from exportable.assigners.max_iou import AnchorGtMaxIoU

    anchors, gts = _retina_workload(workload)
    inputs = (anchors, gts.gt_boxes, gts.gt_mask)
    return Case(AnchorGtMaxIoU(), inputs, ["anchors", "gt_boxes", "gt_mask"],
                [("N", 4), ("B", "M", 4), ("B", "M")], ["max_overlaps", "argmax"], gts.gt_boxes.shape[0])


def _build_max_iou_assigner(workload: str) -> Case:
    from exportable.assigners.max_iou import MaxIoUAssigner

    anchors, gts = _retina_workload(workload)
    inputs = (anchors, gts.gt_boxes, gts.gt_labels, gts.gt_mask)
    return Case(MaxIoUAssigner.retinanet(), inputs, ["anchors", "gt_boxes", "gt_labels", "gt_mask"],
                [("N", 4), ("B", "M", 4), ("B", "M"), ("B", "M")],
                ["gt_index", "labels", "boxes", "overlaps", "target_scores", "weights"], gts.gt_boxes.shape[0])


# -- Faster R-CNN (issue 5) ----------------------------------------------------------------------


def _rpn_target_inputs(workload: str) -> tuple:
    import torch

    from lessons.scenes import WORKLOADS

    anchors, gts = _workload(workload)
    b = gts.gt_boxes.shape[0]
    wl = WORKLOADS[_split(workload)[0]]
    image_sizes = torch.tensor([[wl.h, wl.w]] * b, dtype=torch.int64)  # (B, 2)
    noise = torch.rand(b, anchors.shape[0], generator=torch.Generator().manual_seed(1))  # (B, N)
    return anchors, gts.gt_boxes, gts.gt_mask, image_sizes, noise


def _build_rpn_targets(variant: str):
    def build(workload: str) -> Case:
        from exportable.rpn import AnchorTargetCreator

        name = "rpn_anchor_targets" + ("_mmdet" if variant == "mmdet" else "")
        return _catalog_case(name, AnchorTargetCreator(variant), _rpn_target_inputs(workload))

    return build


def _reference_rpn_targets(variant: str):
    def reference(workload: str):
        from lessons import rpn_anchor_targets as ref

        anchors, gt_boxes, gt_mask, image_sizes, noise = _rpn_target_inputs(workload)
        images = [(gt_boxes[i][gt_mask[i]], tuple(image_sizes[i].tolist()), noise[i]) for i in range(len(noise))]
        if variant == "mmdet":
            return lambda: [ref.mmdet_anchor_targets(anchors, g, hw, z) for g, hw, z in images]
        creator = ref.AnchorTargetCreator()
        return lambda: [creator(g, anchors, hw, z) for g, hw, z in images]

    return reference


def _proposal_inputs(workload: str) -> tuple:
    import torch

    from lessons.scenes import WORKLOADS

    anchors, _ = _workload(workload)
    wl = WORKLOADS[_split(workload)[0]]
    b = _split(workload)[1] or wl.batch
    g = torch.Generator().manual_seed(0)
    n = anchors.shape[0]
    objectness = torch.rand(b, n, generator=g)  # (B, N)
    deltas = 0.2 * torch.randn(b, n, 4, generator=g)  # (B, N, 4)
    level_ids = torch.zeros(n, dtype=torch.int64)  # one level (stride 16)
    image_sizes = torch.tensor([[wl.h, wl.w]] * b, dtype=torch.int64)  # (B, 2)
    return anchors, level_ids, objectness, deltas, image_sizes


def _proposal_settings(workload: str) -> dict:
    from lessons.scenes import WORKLOADS

    extra = WORKLOADS[_split(workload)[0]].extra
    return dict(pre_nms=extra["pre_nms_top_n"], post_nms=extra["post_nms_top_n"],
                iou_threshold=extra["nms_iou_threshold"])


def _build_proposals(workload: str) -> Case:
    from exportable.rpn import ProposalCreator

    module = ProposalCreator("faster_rcnn", "train", **_proposal_settings(workload))
    return _catalog_case("rpn_proposals", module, _proposal_inputs(workload))


def _reference_proposals(workload: str):
    from lessons.proposals_and_nms import ProposalCreator as Reference

    anchors, _, objectness, deltas, image_sizes = _proposal_inputs(workload)
    st = _proposal_settings(workload)
    creator = Reference(nms_thresh=st["iou_threshold"], n_train_pre_nms=st["pre_nms"],
                        n_train_post_nms=st["post_nms"])
    hw = [tuple(x.tolist()) for x in image_sizes]
    return lambda: [creator(deltas[i], objectness[i], anchors, hw[i], training=True) for i in range(len(hw))]


def _nms_inputs(workload: str) -> tuple:
    """The 12,000 pre-NMS candidates of the workload's first image (decoded, clipped, best first)."""
    import torch

    from exportable.coders import DeltaXYWHCoder

    anchors, _, objectness, deltas, image_sizes = _proposal_inputs(workload)
    h, w = image_sizes[0].tolist()
    boxes = DeltaXYWHCoder().decode(anchors, deltas[0])  # (N, 4)
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)], dim=1)
    scores, order = objectness[0].topk(_proposal_settings(workload)["pre_nms"])
    return boxes[order].contiguous(), scores.contiguous()


def _build_nms(workload: str) -> Case:
    from exportable.nms import NMS

    return _catalog_case("nms", NMS(iou_threshold=_proposal_settings(workload)["iou_threshold"]),
                         _nms_inputs(workload))


def _reference_nms(workload: str):
    from lessons.proposals_and_nms import greedy_nms

    boxes, scores = _nms_inputs(workload)
    thr = _proposal_settings(workload)["iou_threshold"]
    return lambda: greedy_nms(boxes, scores, thr)


def _hungarian_inputs(workload: str) -> tuple:
    """``detr-q{Q}-m{M}``: B = 8 DETR-like images, every gt real, 80 classes (the peers' suite uses the same)."""
    import torch

    from exportable.examples import hungarian_inputs

    q, m = (int(part[1:]) for part in workload.split("-")[1:])
    scores, pred_boxes, gt_boxes, gt_labels, _, sizes = hungarian_inputs({"B": 8, "Q": q, "M": m, "C": 80},
                                                                          torch.Generator().manual_seed(0))
    return scores, pred_boxes, gt_boxes, gt_labels, torch.ones(8, m, dtype=torch.bool), sizes


def _build_hungarian(solver: str):
    def build(workload: str) -> Case:
        from exportable.assigners.hungarian import HungarianAssigner

        return _catalog_case("hungarian_assigner", HungarianAssigner(solver=solver), _hungarian_inputs(workload))

    return build


def _solver_module():
    """``(cost (B, Q, M), gt_mask (B, M)) -> gt_index (B, Q)``: scipy per image in eager, the Loop when exported."""
    import torch

    from exportable.lsa import linear_sum_assignment

    class Solver(torch.nn.Module):
        def forward(self, cost, gt_mask):
            return linear_sum_assignment(cost, gt_mask)

    return Solver()


def _build_hungarian_solver(workload: str) -> Case:
    from exportable.assigners.hungarian import HungarianCost

    inputs = _hungarian_inputs(workload)
    cost = HungarianCost()(*inputs)  # (B, Q, M) the same matrices the assigner solves
    return Case(_solver_module(), (cost, inputs[4]), ["cost", "gt_mask"], [("B", "Q", "M"), ("B", "M")],
                ["gt_index"], 8)


def _reference_hungarian(workload: str):
    from lessons.matching import hungarian_assign

    scores, pred_boxes, gt_boxes, gt_labels, _, sizes = _hungarian_inputs(workload)

    def step():
        return [hungarian_assign(s, p, g, lab, tuple(hw.tolist()))
                for s, p, g, lab, hw in zip(scores, pred_boxes, gt_boxes, gt_labels, sizes)]

    return step


def _lessons_reference(lesson_reference: Callable[..., Any], **params):
    def reference(workload: str):
        return lesson_reference(workload, **params)

    return reference


SUITES: dict[str, Suite] = {
    "iou_max": Suite(
        name="iou_max",
        title="Pairwise IoU of anchors vs padded gts + max/argmax over gts (MaxIoU's core)",
        workloads=("retina-m20", "retina-m100", "retina-m1000"),
        build=_build_iou_max,
        note="Eager and the ONNX graph run the same per-image function (a Python loop; one ONNX Scan over the "
        "images), so both hold one image's overlapping (gt, anchor) pairs at a time.",
    ),
    "max_iou_assigner": Suite(
        name="max_iou_assigner",
        title="MaxIoUAssigner, RetinaNet settings (0.5 / 0.4, min_pos_iou 0, low-quality matches)",
        workloads=("retina-m20", "retina-m100", "retina-m1000", "retina-m100@16"),
        build=_build_max_iou_assigner,
        note="`retina-m100@16` is the same workload with B = 16: the eager peak-memory check (eager and the "
        "ONNX graph hold one image's overlapping (gt, anchor) pairs at a time, so the peak barely grows with B). "
        "mmdetection 3.3's figures for orientation (docs/workloads.md, other runs, 2 cores): 118 ms/img at "
        "M = 20, 443-513 ms/img at M = 100; `make bench-peers` measures it side by side.",
    ),
    "rpn_anchor_targets": Suite(
        name="rpn_anchor_targets",
        title="RPN anchor targets (AnchorTargetCreator, simple-faster-rcnn order), batched vs per-image reference",
        workloads=("rpn-m20",),
        build=_build_rpn_targets("faster_rcnn"),
        reference=_reference_rpn_targets("faster_rcnn"),
        note="The reference is `lessons.rpn_anchor_targets.AnchorTargetCreator`, called once per image as "
        "simple-faster-rcnn does (its numpy body rewritten in torch). Goal (issue 5): batched eager at least "
        "5x faster than the per-image reference.",
    ),
    "rpn_anchor_targets_mmdet": Suite(
        name="rpn_anchor_targets_mmdet",
        title="RPN anchor targets, mmdetection variant (MaxIoU 0.7 / 0.3, min_pos_iou 0.3, sampler 256 / 0.5)",
        workloads=("rpn-m20",),
        build=_build_rpn_targets("mmdet"),
        reference=_reference_rpn_targets("mmdet"),
        note="The reference is `lessons.rpn_anchor_targets.mmdet_anchor_targets`, once per image.",
    ),
    "proposals": Suite(
        name="proposals",
        title="ProposalCreator, training preset: decode, clip, min size 16, top 12,000, NMS 0.7, keep 2,000",
        workloads=("proposals",),
        build=_build_proposals,
        reference=_reference_proposals,
        note="One ONNX NonMaxSuppression over the whole batch in the graph; eager uses the same custom op "
        "(torchvision-free, float32 arithmetic of onnxruntime). The reference is "
        "`lessons.proposals_and_nms.ProposalCreator` per image (greedy NMS in numpy). Goal (issue 5): "
        "onnxruntime within 1.25x of eager or faster.",
    ),
    "nms": Suite(
        name="nms",
        title="Greedy NMS (IoU 0.7) of 12,000 RPN candidates of one image",
        workloads=("proposals@1",),
        build=_build_nms,
        reference=_reference_nms,
        note="The candidates are the `proposals` workload's first image after decode, clip and top 12,000. "
        "B = 1: times are per call. Reference: `lessons.proposals_and_nms.greedy_nms` (numpy loop over kept "
        "boxes). Goal (issue 5): onnxruntime within 1.25x of eager or faster.",
    ),
    "atss": Suite(
        name="atss",
        title="ATSS (topk 9, mmdetection 3.3 / official rules), B = 8",
        workloads=("atss-m20", "atss-m100"),
        build=_lessons_case("atss_assigner", lesson_cases.atss_case),
        reference=_lessons_reference(lesson_cases.atss_reference),
        note="`lessons.atss.benchmark_case`: 20,267 anchors (one square of side 8 stride per location, strides "
        "8-128 at 800 x 1216) and the workload's gts. The reference column is `lessons.atss.mmdet_atss_assign`, "
        "mmdetection's per-image steps transcribed (the mmdetection package itself: `make bench-peers`).",
    ),
    "simota": Suite(
        name="simota",
        title="SimOTA (mmdetection 3.3 settings: radius 2.5, top-10 dynamic k, IoU weight 3), B = 16",
        workloads=("yolox-m20", "yolox-m100", "yolox-m5000"),
        build=_build_simota,
        note="`lessons.simota.benchmark_case`: the points and seeded predictions of `make_workload_predictions`; "
        "`yolox-m5000` is the many-object case of docs/workloads.md §5 (M = 5,000, B = 2). One path: eager runs "
        "the exported function, a few images at a time (about 2^18 gt-prior pairs per chunk, at least one image); "
        "the graph runs the same function on one image per iteration of an ONNX `Scan` (`in_image_chunks`). "
        "mmdetection 3.3 for orientation (docs/workloads.md): 170-190 ms/img at "
        "M = 20, 750-1,030 at M = 100; `make bench-peers` measures it side by side.",
    ),
    "task_aligned": Suite(
        name="task_aligned",
        title="TaskAligned, TOOD / mmdetection 3.3 (topk 13, alpha 1, beta 6), B = 16",
        workloads=("yolox-m20", "yolox-m100", "yolox-m5000"),
        build=_task_aligned_case("task_aligned_assigner"),
        note="`lessons.task_aligned.benchmark_case`: the points and seeded predictions of "
        "`make_workload_predictions`. One path: eager runs `eager_rows // M` images per step, the graph one image "
        "per `Scan` iteration. "
        "Peers side by side: `python benchmarks/peers.py --suite task_aligned`.",
    ),
    "task_aligned_ultralytics": Suite(
        name="task_aligned_ultralytics",
        title="TaskAligned, ultralytics 8.4 variant (topk 10, alpha 0.5, beta 6, CIoU, STAL 16 px), B = 16",
        workloads=("yolox-m20", "yolox-m100", "yolox-m5000"),
        build=_task_aligned_case("task_aligned_assigner_ultralytics", variant="ultralytics"),
        note="Same inputs as `task_aligned`. Peers side by side: `python benchmarks/peers.py --suite task_aligned`.",
    ),
    "o2f": Suite(
        name="o2f",
        title="O2F one-to-few assignment (top 7, centre radius 1.5 stride, T = 0.6), B = 16",
        workloads=("yolox-m20", "yolox-m20/shared", "yolox-m100", "yolox-m100/shared"),
        build=_build_o2f,
        note="`lessons.o2f.benchmark_case`: the points and seeded predictions of `make_workload_predictions`, "
        "T = 0.6, `O2FAssigner(grid_strides=(8, 16, 32))`: steps 1-4 (each gt's top-7 slots) look at a 5 x 5 "
        "window of grid cells per gt and level (B, M, 75), in eager and in the graph alike, then steps 5-6 run on "
        "the M x 7 slots. `<workload>/shared` rows run eager and the graph on the general path (steps 1-4 dense "
        "over (B, M, N) with a float64 ranking key, for any points): their columns over the plain row's are what "
        "the windows gain. Run beside `task_aligned` "
        "(`python benchmarks/run.py --suite task_aligned --suite task_aligned_ultralytics --suite o2f`).",
    ),
    "hungarian": Suite(
        name="hungarian",
        title="Hungarian matching (DETR; focal 2 + L1 5 + GIoU 2): scipy in eager vs the exact Loop solver in "
        "onnxruntime, B = 8",
        workloads=("detr-q300-m100", "detr-q300-m20"),
        build=_build_hungarian("auto"),
        reference=_reference_hungarian,
        note="Inputs: `exportable.examples.hungarian_inputs` (B = 8, 80 classes, tie-free), every gt real. Eager is "
        "the batched cost + `scipy.optimize.linear_sum_assignment` per image (what every peer runs); onnxruntime runs "
        "the exported graph, whose solver is the batched shortest-augmenting-path Loop (`exportable/lsa.py`); the "
        "reference is `lessons.matching.hungarian_assign` per image (per-image cost + scipy). mmdetection side by "
        "side: `python benchmarks/peers.py --suite hungarian`.",
    ),
    "hungarian_solver": Suite(
        name="hungarian_solver",
        title="The matching step alone on DETR costs (300 queries, B = 8): scipy per image vs the exact Loop solver "
        "in onnxruntime",
        workloads=("detr-q300-m100", "detr-q300-m20"),
        build=_build_hungarian_solver,
        note="Inputs: the `hungarian` suite's cost matrices `(8, 300, M)` (computed once by `HungarianCost`). Eager: "
        "`exportable.lsa.linear_sum_assignment` = `scipy.optimize.linear_sum_assignment` image by image (float64; the "
        "input checks off, as for every eager row); onnxruntime: the exported batched shortest-augmenting-path "
        "`Loop`. Both return the same `gt_index` on these tie-free costs (`tests/test_hungarian.py`).",
    ),
    "dynamic_soft_label": Suite(
        name="dynamic_soft_label",
        title="DynamicSoftLabel (RTMDet, mmdetection 3.3: soft centre radius 3, top-13 dynamic k, IoU weight 3)",
        workloads=("yolox-m20", "yolox-m100", "yolox-m1000", "yolox-m5000"),
        build=_lessons_case("dynamic_soft_label_assigner", lesson_cases.dynamic_soft_label_case),
        note="`lessons.dynamic_soft_label.benchmark_case`: the yolox points and seeded predictions of "
        "`make_workload_predictions`; `yolox-m1000` / `yolox-m5000` are docs/workloads.md's many-object cases "
        "(B = 2, gts from `random_batch((640, 640, 2, M, 80), 0)`), named without `@2` so that the harness also "
        "runs the graph on them. Eager works on blocks of gt rows (about 2^20 "
        "pairs each), so its peak stays near one block; the graph runs the same block function in an ONNX "
        "`Scan` over blocks of at most 64 gt rows, nested in a `Scan` over images (`in_image_chunks`), so its "
        "peak grows with neither M nor B. mmdetection side by side: "
        "`python benchmarks/peers.py --suite dynamic_soft_label`.",
    ),
    "roi_head_targets": Suite(
        name="roi_head_targets",
        title="RoI-head sampling (ProposalTargetCreator): 2,000 proposals + gts -> 128 samples, 25 % positives",
        workloads=("rpn-m20",),
        build=_lessons_case("roi_head_targets", lesson_cases.roi_head_sampling_case),
        reference=_lessons_reference(lesson_cases.roi_head_sampling_reference),
        note="`lessons.roi_head_sampling.benchmark_case`: the `rpn-m20` gts (B = 8, M = 20) with 2,000 synthetic "
        "proposals per image (a quarter jittered gts). Reference: `lessons.roi_head_sampling.ProposalTargetCreator` "
        "once per image, as simple-faster-rcnn calls it.",
    ),
    "roi_align": Suite(
        name="roi_align",
        title="RoIAlign: 2,000 RoIs (2 images x 1,000), 7 x 7 bins, 256 channels, sampling_ratio 2, aligned",
        workloads=("proposals",),
        build=_lessons_case("roi_align", lesson_cases.roi_head_sampling_case, component="roi_align"),
        note="Features `(2, 256, 38, 63)` (a 600 x 1000 image at stride 16), RoIs from the `roi_head_targets` case. "
        "Eager: one batched bilinear gather (`embedding_bag`); onnxruntime: one `RoiAlign` node (opset 16, "
        "half_pixel, avg). Times per image (1,000 RoIs).",
    ),
}


# ----------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


RUN_SECONDS = 0.25
"""Each timed run repeats the call back to back for at least this long (calibrated on the warm-up call) and
records the mean: a call of a few milliseconds, timed alone, moves by a third from run to run."""


def _timed(call, repeats: int) -> list[float]:
    """``repeats`` runs of ``call`` after one warm-up, each the mean time of ``k`` back-to-back calls (seconds)."""
    t0 = time.perf_counter()
    call()  # warm-up
    k = max(1, math.ceil(RUN_SECONDS / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            call()
        times.append((time.perf_counter() - t0) / k)
    return times


def _child_prepare(suite: str, workload: str, workdir: Path, export: bool = True) -> None:
    """Export the module (unless ``export=False``) and save its inputs (in its own subprocess)."""
    import numpy as np

    from exportable import onnx as xonnx

    case = SUITES[suite].build(workload)
    if export:
        model = xonnx.export(case.module, case.inputs, input_names=case.input_names, output_names=case.output_names,
                             input_dims=case.input_dims)
        xonnx.save(model, workdir / "model.onnx")
    for name, x in zip(case.input_names, case.inputs):
        np.save(workdir / f"{name}.npy", x.numpy())
    (workdir / "inputs.json").write_text(json.dumps(case.input_names))
    (workdir / "batch.json").write_text(json.dumps(case.batch))


def _child_eager(suite: str, workload: str, workdir: Path, threads: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from exportable import checks_disabled

    torch.set_num_threads(threads)
    module = SUITES[suite].build(workload).module.eval()
    names = json.loads((workdir / "inputs.json").read_text())
    inputs = [torch.from_numpy(np.load(workdir / f"{n}.npy")) for n in names]
    with torch.inference_mode(), checks_disabled():
        times = _timed(lambda: module(*inputs), repeats)
    return {"times": times, "peak_rss_mb": _peak_rss_mb(), "batch": json.loads((workdir / "batch.json").read_text())}


def _child_onnxruntime(suite: str, workload: str, workdir: Path, threads: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(workdir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = json.loads((workdir / "inputs.json").read_text())
    feed = {n: np.load(workdir / f"{n}.npy") for n in names}
    times = _timed(lambda: sess.run(None, feed), repeats)
    return {"times": times, "peak_rss_mb": _peak_rss_mb(), "batch": json.loads((workdir / "batch.json").read_text())}


def _child_reference(suite: str, workload: str, workdir: Path, threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    step = SUITES[suite].reference(workload)
    with torch.inference_mode():
        times = _timed(step, repeats)
    return {"times": times, "peak_rss_mb": _peak_rss_mb(), "batch": json.loads((workdir / "batch.json").read_text())}


CHILDREN = {"reference": _child_reference, "eager": _child_eager, "onnxruntime": _child_onnxruntime}


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
        name, batch = _split(workload)
        # "name@B" rows (B other than the workload's) without a reference are eager memory checks: the fully
        # batched graph would need B x one image's memory.
        memory_row = batch is not None and suite.reference is None
        backends = (["reference"] if suite.reference else []) + ["eager"] + ([] if memory_row else ["onnxruntime"])
        with tempfile.TemporaryDirectory() as tmp:
            _spawn(["--child", "inputs" if memory_row else "prepare", suite.name, workload, tmp])
            res = {b: _spawn(["--child", b, suite.name, workload, tmp, str(threads), str(repeats)])
                   for b in backends}
        batch = res["eager"]["batch"]
        med = {b: statistics.median(r["times"]) * 1000 / batch for b, r in res.items()}
        rows.append((workload, batch, med, {b: r["peak_rss_mb"] for b, r in res.items()},
                     {b: [round(t * 1000 / batch, 2) for t in r["times"]] for b, r in res.items()}))
        print(f"  {workload}: " + ", ".join(f"{b} {m:.2f} ms/img" for b, m in med.items()), flush=True)
    backends = [b for b in CHILDREN if any(b in r[2] for r in rows)]
    has_ref = "reference" in backends
    head = ["workload", "B"] + [f"{b} ms/img" for b in backends]
    head += (["reference / eager"] if has_ref else []) + ["onnxruntime / eager"]
    head += [f"{b} peak RSS MB" for b in backends] + ["all runs (ms/img): " + "; ".join(backends)]
    lines = [
        f"# {suite.title}",
        "",
        f"`python benchmarks/run.py --suite {suite.name} --threads {threads} --repeats {repeats}` on "
        f"{dt.date.today().isoformat()}; {_cpu()}, {os.cpu_count()} cores; {_versions()}; "
        f"{threads} threads for every backend; median of {repeats} runs after one warm-up, per image; each "
        f"run the mean of back-to-back calls lasting at least {RUN_SECONDS} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    nan = float("nan")
    for workload, batch, med, rss, runs in rows:
        cells = [f"`{workload}`", str(batch)] + [_ms(med.get(b, nan)) for b in backends]
        if has_ref:
            cells.append(f"{med.get('reference', nan) / med['eager']:.1f}")
        cells.append(f"{med.get('onnxruntime', nan) / med['eager']:.2f}")
        cells += [f"{rss.get(b, nan):.0f}" for b in backends]
        cells.append("; ".join(str(runs.get(b, "-")) for b in backends))
        lines.append("| " + " | ".join(cells) + " |")
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    alloc = (f"glibc allocator settings for every child: {malloc} (freed memory kept, so page faults on fresh "
             "large tensors do not swamp the figures)") if malloc else "stock glibc allocator"
    lines += ["", suite.note, "", alloc + ".",
              "Absolute CPU times vary up to 3x between runs on these machines; compare the ratio columns "
              "(measured in the same run).", ""]
    return "\n".join(lines)


def _ms(x: float) -> str:
    return "-" if x != x else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


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
