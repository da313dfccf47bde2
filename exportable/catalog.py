"""Every exportable component, as one catalog entry with its graph I/O contract.

An :class:`Entry` knows how to build its module (``factory`` + ``params``, overridable), how
to make example inputs at any sizes (``make_inputs``), the graph's input and output names with
their dims (named dims stay dynamic in the exported graph), the sizes it is exported at and the
different sizes it is verified at, and the float tolerance of its onnxruntime parity.

    >>> from exportable import catalog
    >>> entry = catalog.get("nms")
    >>> model = entry.export(iou_threshold=0.6)   # an onnx.ModelProto
    >>> report = entry.verify(model)              # eager vs onnxruntime at entry.test_sizes

``params`` hold only what an entry changes from its constructor's defaults (a test checks it); the exported
model's metadata records every hyper-parameter. Entries are listed here, explicitly, by importing each
component's class; the seeded example inputs live in :mod:`exportable.examples`.

The CLI ``python -m exportable list | export NAME | verify NAME`` is a thin layer over this.
Shape letters: B images, N anchors/boxes/points, M gts, K kept/top-k, H, W sizes.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from exportable import examples
from exportable import onnx as xonnx
from exportable.anchors import AnchorGenerator, AnchorGrid, PointGenerator, PointGrid
from exportable.assigners.atss import ATSSAssigner
from exportable.assigners.dynamic_soft_label import DynamicSoftLabelAssigner
from exportable.assigners.hungarian import HungarianAssigner, HungarianCost
from exportable.assigners.max_iou import AnchorGtMaxIoU, MaxIoUAssigner
from exportable.assigners.o2f import O2FAssigner
from exportable.assigners.ota import OTAAssigner
from exportable.assigners.simota import SimOTAAssigner
from exportable.assigners.task_aligned import TaskAlignedAssigner
from exportable.assigners.task_aligned_dual import DualTaskAlignedAssigner
from exportable.assigners.task_aligned_ultralytics import UltralyticsTaskAlignedAssigner
from exportable.boxes import BoxOverlaps
from exportable.coders import (
    DeltaXYWHCoder,
    DeltaXYWHDecode,
    DeltaXYWHEncode,
    DistanceDecode,
    DistancePointCoder,
)
from exportable.losses import O2FLoss, RetinaNetLoss
from exportable.nms import NMS, BatchedNMS
from exportable.o2f_inference import O2FPostProcess
from exportable.ordering import TopK
from exportable.retinanet import RetinaNetPostProcess, RetinaNetTargets
from exportable.roi_align import RoIAlign
from exportable.roi_head import ProposalTargetCreator
from exportable.rpn import AnchorTargetCreator, ProposalCreator
from exportable.sampling import NoiseSampler

__all__ = ["TensorSpec", "Entry", "CATALOG", "get", "names", "parse_params", "point_assigner_specs"]

Sizes = Mapping[str, int]
_F, _I, _B = "float32", "int64", "bool"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype, dims (str = dynamic name, int = static), meaning."""

    name: str
    dtype: str
    dims: tuple[str | int, ...]
    doc: str

    def describe(self) -> str:
        return f"{self.name} {self.dtype} ({', '.join(map(str, self.dims))}): {self.doc}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.dims), "doc": self.doc}


@dataclass(frozen=True)
class Entry:
    """An exportable component: factory, parameters, I/O contract, example inputs, sizes."""

    name: str
    summary: str
    source: str
    factory: Callable[..., nn.Module]
    params: Mapping[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_inputs: Callable[[Sizes, torch.Generator], tuple[Tensor, ...]]
    export_sizes: Sizes
    test_sizes: tuple[Sizes, ...]
    atol: float = 0.0
    rtol: float = 0.0
    notes: str = ""
    signature_of: Callable[..., Any] | None = None
    """Whose keyword parameters the entry's hyper-parameters are (default: ``factory``'s own)."""

    # -- building ------------------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        """The hyper-parameters' defaults, read from the constructor's signature (``params`` overrides them)."""
        sig = inspect.signature(self.signature_of or self.factory)
        return {k: p.default for k, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and _is_literal(p.default)}

    def resolved(self, **overrides: Any) -> dict[str, Any]:
        """Every hyper-parameter: the constructor's defaults, then the entry's ``params``, then ``overrides``."""
        known = {**self.defaults(), **self.params}
        unknown = set(overrides) - set(known)
        if unknown:
            raise KeyError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        return {**known, **overrides}

    def build(self, **overrides: Any) -> nn.Module:
        return self.factory(**self.resolved(**overrides)).eval()

    def example(self, sizes: Sizes | None = None, seed: int = 0) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        return self.make_inputs(dict(sizes or self.export_sizes), g)

    # -- ONNX ----------------------------------------------------------------------------------
    def export(self, **overrides: Any) -> onnx.ModelProto:
        params = self.resolved(**overrides)
        return xonnx.export(
            self.factory(**params).eval(),
            self.example(),
            input_names=[s.name for s in self.inputs],
            output_names=[s.name for s in self.outputs],
            input_dims=[s.dims for s in self.inputs],
            output_dims=[s.dims for s in self.outputs],
            doc=self.summary,
            metadata={
                "assignlab.component": self.name,
                "assignlab.source": self.source,
                "assignlab.params": params,
                "assignlab.inputs": [s.as_dict() for s in self.inputs],
                "assignlab.outputs": [s.as_dict() for s in self.outputs],
                "assignlab.tolerance": {"atol": self.atol, "rtol": self.rtol},
            },
        )

    def run_eager(self, module: nn.Module, args: Sequence[Tensor]) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(*args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def verify(
        self,
        model: onnx.ModelProto | None = None,
        *,
        sizes: Sequence[Sizes] | None = None,
        seeds: Sequence[int] = (0, 1),
        providers: Sequence[str] | None = None,
        **overrides: Any,
    ) -> list[tuple[dict[str, int], int, list[xonnx.Comparison]]]:
        """Eager vs onnxruntime on ``sizes`` (default ``test_sizes``) and ``seeds``."""
        model = model if model is not None else self.export(**overrides)
        module = self.build(**self._params_of(model, overrides))
        sess = xonnx.session(model, providers)
        report = []
        for s in sizes or self.test_sizes:
            for seed in seeds:
                args = self.example(s, seed)
                eager = self.run_eager(module, args)
                got = xonnx.run(sess, args)
                cmp = xonnx.compare([o.name for o in self.outputs], eager, got, atol=self.atol, rtol=self.rtol)
                report.append((dict(s), seed, cmp))
        return report

    def _params_of(self, model: onnx.ModelProto, overrides: Mapping[str, Any]) -> dict[str, Any]:
        import json

        meta = {p.key: p.value for p in model.metadata_props}
        if "assignlab.params" in meta:
            return dict(json.loads(meta["assignlab.params"]))
        return self.resolved(**overrides)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}", f"  source: {self.source}"]
        lines += [f"  param  {k} = {v!r}" + ("" if k not in self.params else "  (entry)")
                  for k, v in self.resolved().items()]
        lines += [f"  input  {s.describe()}" for s in self.inputs]
        lines += [f"  output {s.describe()}" for s in self.outputs]
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)


def _is_literal(value: Any) -> bool:
    """A value the model metadata (JSON) and ``--param`` (Python literals) can carry."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_is_literal(v) for v in value)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values are Python literals where they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--param expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


# ----------------------------------------------------------------------------------------------
# The catalog, in the order of the learning path. Example inputs live in exportable/examples.py.
# ----------------------------------------------------------------------------------------------

_ASSIGN_OUTPUTS = (
    TensorSpec("gt_index", _I, ("B", "N"), "matched gt (0-based); -1 negative; -2 ignored"),
    TensorSpec("labels", _I, ("B", "N"), "matched gt's class; num_classes for non-positives"),
    TensorSpec("boxes", _F, ("B", "N", 4), "matched gt box; 0 for non-positives"),
    TensorSpec("overlaps", _F, ("B", "N"), "max IoU over gts (mmdetection's max_overlaps; -1 if ignored by IoF)"),
    TensorSpec("target_scores", _F, ("B", "N"), "classification target at labels (1 positives, 0 else)"),
    TensorSpec("weights", _F, ("B", "N"), "classification loss weight (0 for ignored)"),
)
_ASSIGN_INPUTS = (
    TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors shared by the batch"),
    TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
    TensorSpec("gt_labels", _I, ("B", "M"), "gt classes"),
    TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
    TensorSpec("anchor_mask", _B, ("B", "N"), "True for anchors inside the image's valid area"),
)


def point_assigner_specs(scores_doc: str, strides_doc: str = "each point's level stride") -> tuple[TensorSpec, ...]:
    """The inputs every point-based assigner takes (SimOTA, TaskAligned, O2F), in forward order."""
    return (
        TensorSpec("points", _F, ("N", 2), "(x, y) cell-centre points of all levels, shared by the batch"),
        TensorSpec("strides", _F, ("N",), strides_doc),
        TensorSpec("pred_scores", _F, ("B", "N", "C"), scores_doc),
        TensorSpec("pred_boxes", _F, ("B", "N", 4), "decoded predicted boxes (x1, y1, x2, y2)"),
        TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
        TensorSpec("gt_labels", _I, ("B", "M"), "gt classes in [0, C)"),
        TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
    )


def _feat_specs(levels: int) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(f"feat{i}", _F, ("B", "C", f"H{i}", f"W{i}"), f"level-{i} feature map (only its shape is read)")
        for i in range(levels)
    )


# Modules that wrap a generator or a coder: the entry's hyper-parameters are the wrapped class's.


def _anchor_grid(**params: Any) -> nn.Module:
    return AnchorGrid(AnchorGenerator(**params))


def _point_grid(**params: Any) -> nn.Module:
    return PointGrid(PointGenerator(**params))


def _delta_encode(**params: Any) -> nn.Module:
    return DeltaXYWHEncode(DeltaXYWHCoder(**params))


def _delta_decode(**params: Any) -> nn.Module:
    return DeltaXYWHDecode(DeltaXYWHCoder(**params))


def _distance_decode(**params: Any) -> nn.Module:
    return DistanceDecode(DistancePointCoder(**params))


_ENTRIES: tuple[Entry, ...] = (
    Entry(
        name="box_iou",
        summary="Pairwise IoU / IoF / GIoU of two batched box sets (mmdetection numerics, eps 1e-6).",
        source="exportable/boxes.py",
        factory=BoxOverlaps,
        params={},
        inputs=(
            TensorSpec("boxes1", _F, ("B", "N", 4), "(x1, y1, x2, y2) boxes"),
            TensorSpec("boxes2", _F, ("B", "M", 4), "(x1, y1, x2, y2) boxes"),
        ),
        outputs=(TensorSpec("overlaps", _F, ("B", "N", "M"), "overlap of every pair"),),
        make_inputs=examples.box_iou_inputs,
        export_sizes={"B": 2, "N": 9, "M": 4},
        test_sizes=({"B": 1, "N": 7, "M": 1}, {"B": 3, "N": 300, "M": 17}, {"B": 2, "N": 0, "M": 3}),
        atol=1e-6,
    ),
    Entry(
        name="max_iou",
        summary="IoU of shared anchors against padded gts, then the best gt per anchor (MaxIoU's step 6).",
        source="exportable/assigners/max_iou.py",
        factory=AnchorGtMaxIoU,
        params={},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors shared by the batch"),
            TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
            TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts, False for padding"),
        ),
        outputs=(
            TensorSpec("max_overlaps", _F, ("B", "N"), "best IoU over the image's real gts (0 if none)"),
            TensorSpec("argmax", _I, ("B", "N"), "index of that gt (lowest on ties; -1 if the image has none)"),
        ),
        make_inputs=examples.max_iou_inputs,
        export_sizes={"B": 2, "N": 12, "M": 3},
        test_sizes=({"B": 1, "N": 5, "M": 1}, {"B": 3, "N": 500, "M": 9}, {"B": 2, "N": 40, "M": 0}),
        atol=1e-6,
        notes="M = 0 and all-padding images work: one masked row is appended inside the graph.",
    ),
    Entry(
        name="anchor_grid",
        summary="mmdetection AnchorGenerator grid anchors (RetinaNet defaults) from 5 feature-map shapes.",
        source="exportable/anchors.py",
        factory=_anchor_grid,
        signature_of=AnchorGenerator,
        params={"strides": (8, 16, 32, 64, 128), "octave_base_scale": 4, "scales_per_octave": 3},
        inputs=_feat_specs(5),
        outputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2); order level, (y * W + x) * A + a"),
            TensorSpec("level_ids", _I, ("N",), "FPN level of each anchor"),
        ),
        make_inputs=examples.anchor_grid_inputs,
        export_sizes={"B": 2, "C": 2, "H": 256, "W": 320},
        test_sizes=({"B": 1, "C": 3, "H": 100, "W": 152}, {"B": 2, "C": 2, "H": 1216, "W": 800},
                    {"B": 1, "C": 1, "H": 8, "W": 8}),
        notes="Five levels; change ratios and scales with --param, not the number of strides.",
    ),
    Entry(
        name="point_grid",
        summary="Cell-centre points with per-point strides (YOLOX / TOOD priors) from 3 feature-map shapes.",
        source="exportable/anchors.py",
        factory=_point_grid,
        signature_of=PointGenerator,
        params={"strides": (8, 16, 32)},
        inputs=_feat_specs(3),
        outputs=(
            TensorSpec("points", _F, ("N", 2), "(x, y) = ((i + offset) * stride_w, (j + offset) * stride_h)"),
            TensorSpec("strides", _F, ("N",), "stride of each point's level"),
            TensorSpec("level_ids", _I, ("N",), "level of each point"),
        ),
        make_inputs=examples.point_grid_inputs,
        export_sizes={"B": 2, "C": 2, "H": 128, "W": 160},
        test_sizes=({"B": 1, "C": 3, "H": 640, "W": 640}, {"B": 2, "C": 1, "H": 72, "W": 40}),
    ),
    Entry(
        name="delta_xywh_encode",
        summary="DeltaXYWH box encoding (dx, dy, dw, dh) of gt boxes against anchors, (d - means) / stds.",
        source="exportable/coders.py",
        factory=_delta_encode,
        signature_of=DeltaXYWHCoder,
        params={},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors, positive width and height"),
            TensorSpec("gt_boxes", _F, ("B", "N", 4), "the gt box matched to each anchor"),
        ),
        outputs=(TensorSpec("deltas", _F, ("B", "N", 4), "regression targets"),),
        make_inputs=examples.encode_inputs,
        export_sizes={"B": 2, "N": 10},
        test_sizes=({"B": 1, "N": 3}, {"B": 4, "N": 257}),
        atol=1e-5,
        rtol=1e-5,
    ),
    Entry(
        name="delta_xywh_decode",
        summary="DeltaXYWH decoding with the wh-ratio clip (16/1000) and clipping to each image.",
        source="exportable/coders.py",
        factory=_delta_decode,
        signature_of=DeltaXYWHCoder,
        params={},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors"),
            TensorSpec("deltas", _F, ("B", "N", 4), "predicted (dx, dy, dw, dh)"),
            TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image"),
        ),
        outputs=(TensorSpec("boxes", _F, ("B", "N", 4), "decoded (x1, y1, x2, y2), clipped"),),
        make_inputs=examples.decode_inputs,
        export_sizes={"B": 2, "N": 10},
        test_sizes=({"B": 1, "N": 3}, {"B": 4, "N": 257}),
        atol=1e-4,
        rtol=1e-5,
    ),
    Entry(
        name="distance_decode",
        summary="Distance (l, t, r, b) decoding around points, clipped to each image.",
        source="exportable/coders.py",
        factory=_distance_decode,
        signature_of=DistancePointCoder,
        params={},
        inputs=(
            TensorSpec("points", _F, ("N", 2), "(x, y) points"),
            TensorSpec("distances", _F, ("B", "N", 4), "(l, t, r, b) distances in pixels, >= 0"),
            TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image"),
        ),
        outputs=(TensorSpec("boxes", _F, ("B", "N", 4), "decoded (x1, y1, x2, y2), clipped"),),
        make_inputs=examples.distance_decode_inputs,
        export_sizes={"B": 2, "N": 10},
        test_sizes=({"B": 1, "N": 3}, {"B": 4, "N": 257}),
        atol=1e-5,
    ),
    Entry(
        name="nms",
        summary="Greedy NMS of one box set as ONNX NonMaxSuppression (IoU at the threshold is kept).",
        source="exportable/nms.py",
        factory=NMS,
        params={},
        inputs=(
            TensorSpec("boxes", _F, ("N", 4), "(x1, y1, x2, y2) boxes"),
            TensorSpec("scores", _F, ("N",), "scores; equal scores keep the lower index first"),
        ),
        outputs=(TensorSpec("keep", _I, ("K",), "kept indices, highest score first"),),
        make_inputs=examples.nms_inputs,
        export_sizes={"N": 16},
        test_sizes=({"N": 1}, {"N": 7}, {"N": 600}, {"N": 0}),
    ),
    Entry(
        name="batched_nms",
        summary="Class-aware NMS in one NonMaxSuppression call (coordinate-offset trick).",
        source="exportable/nms.py",
        factory=BatchedNMS,
        params={},
        inputs=(
            TensorSpec("boxes", _F, ("N", 4), "(x1, y1, x2, y2) boxes"),
            TensorSpec("scores", _F, ("N",), "scores"),
            TensorSpec("idxs", _I, ("N",), "class (or level) of each box: only equal idxs suppress"),
        ),
        outputs=(TensorSpec("keep", _I, ("K",), "kept indices, highest score first"),),
        make_inputs=examples.batched_nms_inputs,
        export_sizes={"N": 16},
        test_sizes=({"N": 1}, {"N": 9}, {"N": 800}, {"N": 0}),
    ),
    Entry(
        name="topk",
        summary="Top-k with the package's tie rule (equal values: lower index first), as ONNX TopK.",
        source="exportable/ordering.py",
        factory=TopK,
        params={},
        inputs=(TensorSpec("scores", _F, ("B", "N"), "values to rank along N"),),
        outputs=(
            TensorSpec("values", _F, ("B", "K"), "the k best values, best first (K = min(k, N))"),
            TensorSpec("indices", _I, ("B", "K"), "their indices"),
        ),
        make_inputs=examples.topk_inputs,
        export_sizes={"B": 2, "N": 40},
        test_sizes=({"B": 1, "N": 10}, {"B": 3, "N": 5}, {"B": 4, "N": 2000}),
    ),
)

_ENTRIES += (
    Entry(
        name="max_iou_assigner",
        summary="mmdetection's MaxIoUAssigner, batched (RetinaNet defaults; low-quality matches, later gt wins).",
        source="exportable/assigners/max_iou.py",
        factory=MaxIoUAssigner,
        params={},
        inputs=_ASSIGN_INPUTS,
        outputs=_ASSIGN_OUTPUTS,
        make_inputs=examples.max_iou_assigner_inputs,
        export_sizes={"B": 2, "N": 40, "M": 4},
        test_sizes=({"B": 1, "N": 7, "M": 1}, {"B": 3, "N": 600, "M": 13}, {"B": 2, "N": 50, "M": 0},
                    {"B": 4, "N": 1, "M": 3}),
        atol=1e-6,
        notes="RPN: --param pos_iou_thr=0.7 --param neg_iou_thr=0.3 --param min_pos_iou=0.3 --param num_classes=1",
    ),
    Entry(
        name="max_iou_assigner_ignore",
        summary="MaxIoUAssigner with ignore regions (crowd boxes): anchors with IoF > 0.5 are ignored.",
        source="exportable/assigners/max_iou.py",
        factory=MaxIoUAssigner,
        params={"ignore_iof_thr": 0.5},
        inputs=_ASSIGN_INPUTS + (
            TensorSpec("ignore_boxes", _F, ("B", "K", 4), "padded ignore regions (x1, y1, x2, y2)"),
            TensorSpec("ignore_mask", _B, ("B", "K"), "True for real ignore regions"),
        ),
        outputs=_ASSIGN_OUTPUTS,
        make_inputs=examples.max_iou_assigner_ignore_inputs,
        export_sizes={"B": 2, "N": 40, "M": 4, "K": 3},
        test_sizes=({"B": 1, "N": 9, "M": 2, "K": 1}, {"B": 3, "N": 500, "M": 11, "K": 5},
                    {"B": 2, "N": 30, "M": 3, "K": 0}),
        atol=1e-6,
    ),
)

# ----------------------------------------------------------------------------------------------
# RetinaNet: targets (MaxIoU + PseudoSampler + DeltaXYWH) and the loss (focal + L1)
# ----------------------------------------------------------------------------------------------


_ENTRIES += (
    Entry(
        name="retinanet_targets",
        summary="RetinaNet's anchor targets (mmdetection get_targets: inside flags, MaxIoU, PseudoSampler, "
        "DeltaXYWH, unmap), batched.",
        source="exportable/retinanet.py",
        factory=RetinaNetTargets,
        params={},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors of all levels, shared by the batch"),
            TensorSpec("valid_flags", _B, ("B", "N"), "True for anchors on the image, False on padding"),
            TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each unpadded image (read if allowed_border >= 0)"),
            TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
            TensorSpec("gt_labels", _I, ("B", "M"), "gt classes in [0, num_classes)"),
            TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
        ),
        outputs=(
            TensorSpec("labels", _I, ("B", "N"), "gt class for positives; num_classes (background) elsewhere"),
            TensorSpec("label_weights", _F, ("B", "N"), "1 positives and negatives; 0 ignored or outside"),
            TensorSpec("bbox_targets", _F, ("B", "N", 4), "DeltaXYWH (dx, dy, dw, dh) for positives; 0 elsewhere"),
            TensorSpec("bbox_weights", _F, ("B", "N", 4), "1 for positives; 0 elsewhere"),
            TensorSpec("num_total_pos", _I, (), "sum over images of max(num_pos, 1): the loss's avg_factor"),
            TensorSpec("num_total_neg", _I, (), "sum over images of max(num_neg, 1)"),
        ),
        make_inputs=examples.retinanet_targets_inputs,
        export_sizes={"B": 2, "N": 40, "M": 4},
        test_sizes=({"B": 1, "N": 7, "M": 1}, {"B": 3, "N": 500, "M": 9}, {"B": 2, "N": 50, "M": 0},
                    {"B": 4, "N": 2, "M": 3}),
        atol=1e-5,
        rtol=1e-5,
        notes="allowed_border=0 checks the image border (py-faster-rcnn style); -1 (RetinaNet) only padding.",
    ),
    Entry(
        name="retinanet_loss",
        summary="RetinaNet's loss: sigmoid focal loss (alpha 0.25, gamma 2) and L1 on the deltas, "
        "each summed and divided by num_total_pos (mmdetection numbers).",
        source="exportable/losses.py",
        factory=RetinaNetLoss,
        params={},
        inputs=(
            TensorSpec("cls_logits", _F, ("B", "N", "C"), "classification logits (not probabilities)"),
            TensorSpec("bbox_deltas", _F, ("B", "N", 4), "predicted (dx, dy, dw, dh)"),
            TensorSpec("labels", _I, ("B", "N"), "target class; C = background"),
            TensorSpec("label_weights", _F, ("B", "N"), "classification weight per anchor"),
            TensorSpec("bbox_targets", _F, ("B", "N", 4), "target deltas"),
            TensorSpec("bbox_weights", _F, ("B", "N", 4), "regression weight per anchor and delta"),
            TensorSpec("num_total_pos", _I, (), "avg_factor: sum over images of max(num_pos, 1)"),
        ),
        outputs=(
            TensorSpec("loss_cls", _F, (), "sum of weighted focal losses / num_total_pos"),
            TensorSpec("loss_bbox", _F, (), "sum of weighted L1 losses / num_total_pos"),
        ),
        make_inputs=examples.retinanet_loss_inputs,
        export_sizes={"B": 2, "N": 30, "C": 4},
        test_sizes=({"B": 1, "N": 5, "C": 3}, {"B": 2, "N": 0, "C": 2}, {"B": 2, "N": 64, "C": 1},
                    {"B": 3, "N": 700, "C": 80}),
        atol=1e-6,
        rtol=1e-5,
        notes="Per-anchor sums are accumulated in float64, so onnxruntime's ReduceSum order does not show "
        "(bit-equal to eager on CPU at the test sizes; plain float32 sums were 8e-6 relative off at "
        "B * N * C = 168,000).",
    ),
)


# ----------------------------------------------------------------------------------------------
# RetinaNet: test-time post-processing (head outputs -> padded detections)
# ----------------------------------------------------------------------------------------------


_ENTRIES += (
    Entry(
        name="retinanet_postprocess",
        summary="RetinaNet test time (mmdetection): sigmoid, per-level score_thr + top nms_pre, decode + clip, "
        "class-aware NMS in one NonMaxSuppression, top max_per_img, padded.",
        source="exportable/retinanet.py",
        factory=RetinaNetPostProcess,
        params={},
        inputs=tuple(
            TensorSpec(f"cls_{i}", _F, ("B", 720, f"H{i}", f"W{i}"), f"level-{i} logits, channel a*C + c (9*80)")
            for i in range(5)
        ) + tuple(
            TensorSpec(f"box_{i}", _F, ("B", 36, f"H{i}", f"W{i}"), f"level-{i} deltas, channel a*4 + j")
            for i in range(5)
        ) + (TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each unpadded image: boxes are clipped to it"),),
        outputs=(
            TensorSpec("boxes", _F, ("B", 100, 4), "(x1, y1, x2, y2) detections, best first; padding 0"),
            TensorSpec("scores", _F, ("B", 100), "class probability; padding 0"),
            TensorSpec("labels", _I, ("B", 100), "class; padding -1"),
            TensorSpec("counts", _I, ("B",), "detections per image (slots [0, count) are filled)"),
        ),
        make_inputs=examples.retinanet_postprocess_inputs,
        export_sizes={"B": 2, "H": 256, "W": 320},
        test_sizes=({"B": 1, "H": 64, "W": 96}, {"B": 3, "H": 40, "W": 40}, {"B": 2, "H": 8, "W": 8},
                    {"B": 2, "H": 128, "W": 96}),
        atol=1e-4,
        rtol=1e-6,
        notes="C = 80 and A = 9 are baked in the channel dims (720, 36) and in the example inputs; "
        "max_per_img (100) is the static output dim. Floats: onnxruntime's Exp and Sigmoid differ from torch's "
        "by an ulp or two (boxes up to 6.1e-5 px at 1216 px, hence atol 1e-4; scores 6e-8); labels and counts are "
        "exact.",
    ),
)


# -- Faster R-CNN: sampling, RPN anchor targets, proposals (exportable/sampling.py, exportable/rpn.py) --

_RPN_TARGET_INPUTS = (
    TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors shared by the batch"),
    TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
    TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
    TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image"),
    TensorSpec("noise", _F, ("B", "N"), "uniform [0, 1): the candidates with the largest noise are sampled"),
)
_RPN_TARGET_OUTPUTS = (
    TensorSpec("labels", _I, ("B", "N"), "1 positive, 0 negative, -1 not sampled / ignored / outside"),
    TensorSpec("bbox_targets", _F, ("B", "N", 4), "DeltaXYWH targets"),
    TensorSpec("bbox_weights", _F, ("B", "N", 4), "1 for sampled positives"),
    TensorSpec("matched_gt", _I, ("B", "N"), "gt each positive regresses to; -1 elsewhere"),
)
_RPN_TARGET_SIZES: dict[str, Any] = {
    "export_sizes": {"B": 2, "N": 300, "M": 4},
    "test_sizes": ({"B": 1, "N": 7, "M": 1}, {"B": 3, "N": 2000, "M": 9}, {"B": 2, "N": 50, "M": 0},
                   {"B": 4, "N": 1, "M": 3}),
    "atol": 1e-5,
    "rtol": 1e-6,
}
_PROPOSAL_INPUTS = (
    TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors"),
    TensorSpec("level_ids", _I, ("N",), "FPN level of each anchor (mmdet variant; unused by faster_rcnn)"),
    TensorSpec("objectness", _F, ("B", "N"), "objectness probabilities"),
    TensorSpec("deltas", _F, ("B", "N", 4), "predicted (dx, dy, dw, dh)"),
    TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image"),
)


def _proposal_outputs(k: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("proposals", _F, ("B", k, 4), "(x1, y1, x2, y2), best first, zero-padded"),
        TensorSpec("scores", _F, ("B", k), "objectness of each proposal; 0 for padding"),
        TensorSpec("counts", _I, ("B",), "number of real proposals per image"),
    )


_ENTRIES += (
    Entry(
        name="noise_sampler",
        summary="Random sampling with noise as an input: at most num * pos_fraction positives, negatives fill to num.",
        source="exportable/sampling.py",
        factory=NoiseSampler,
        params={},
        inputs=(
            TensorSpec("pos", _B, ("B", "N"), "positive candidates"),
            TensorSpec("neg", _B, ("B", "N"), "negative candidates"),
            TensorSpec("noise", _F, ("B", "N"), "uniform [0, 1): largest noise kept"),
        ),
        outputs=(
            TensorSpec("pos_sampled", _B, ("B", "N"), "sampled positives"),
            TensorSpec("neg_sampled", _B, ("B", "N"), "sampled negatives"),
        ),
        make_inputs=examples.sampler_inputs,
        export_sizes={"B": 2, "N": 300},
        test_sizes=({"B": 1, "N": 7}, {"B": 3, "N": 2000}, {"B": 2, "N": 1}, {"B": 2, "N": 0}),
    ),
    Entry(
        name="rpn_anchor_targets",
        summary="RPN anchor targets (AnchorTargetCreator) in the document's / simple-faster-rcnn's order.",
        source="exportable/rpn.py",
        factory=AnchorTargetCreator,
        params={"min_pos_iou": 0.0, "allowed_border": 0.0, "inclusive": True},
        inputs=_RPN_TARGET_INPUTS,
        outputs=_RPN_TARGET_OUTPUTS,
        make_inputs=examples.anchor_target_inputs,
        **_RPN_TARGET_SIZES,
    ),
    Entry(
        name="rpn_anchor_targets_mmdet",
        summary="RPN anchor targets as mmdetection: MaxIoU 0.7 / 0.3 (min_pos_iou 0.3) + RandomSampler 256 / 0.5.",
        source="exportable/rpn.py",
        factory=AnchorTargetCreator,
        params={"variant": "mmdet", "min_pos_iou": 0.3, "allowed_border": -1.0, "inclusive": False},
        inputs=_RPN_TARGET_INPUTS,
        outputs=_RPN_TARGET_OUTPUTS,
        make_inputs=examples.anchor_target_inputs,
        **_RPN_TARGET_SIZES,
    ),
    Entry(
        name="rpn_proposals",
        summary="ProposalCreator (test preset): decode, clip, drop < 16 px, top 6,000, NMS 0.7, keep 300.",
        source="exportable/rpn.py",
        factory=ProposalCreator,
        params={"mode": "test", "pre_nms": 6000, "post_nms": 300, "min_size": 16.0},
        inputs=_PROPOSAL_INPUTS,
        outputs=_proposal_outputs(300),
        make_inputs=examples.proposal_inputs,
        export_sizes={"B": 2, "N": 400},
        test_sizes=({"B": 1, "N": 7}, {"B": 3, "N": 3000}, {"B": 2, "N": 1}, {"B": 2, "N": 0}),
        atol=1e-4,
        rtol=1e-6,
        notes="Training preset: --param mode=train --param pre_nms=12000 --param post_nms=2000.",
    ),
    Entry(
        name="rpn_proposals_mmdet",
        summary="mmdetection's RPN proposals: per-level top 1,000, level-aware NMS 0.7, keep 1,000.",
        source="exportable/rpn.py",
        factory=ProposalCreator,
        params={"variant": "mmdet", "mode": "test", "pre_nms": 1000, "post_nms": 1000, "min_size": 0.0},
        inputs=_PROPOSAL_INPUTS,
        outputs=_proposal_outputs(1000),
        make_inputs=examples.proposal_inputs,
        export_sizes={"B": 2, "N": 400},
        test_sizes=({"B": 1, "N": 7}, {"B": 3, "N": 6000}, {"B": 2, "N": 1}, {"B": 2, "N": 0}),
        atol=1e-4,
        rtol=1e-6,
    ),
)

# -- RoI head: sampling (ProposalTargetCreator) and RoIAlign (exportable/roi_head.py, exportable/roi_align.py) --

_ROI_INPUTS = (
    TensorSpec("rois", _F, ("B", "K", 4), "(x1, y1, x2, y2) proposals per image, padded"),
    TensorSpec("roi_mask", _B, ("B", "K"), "True for real proposals"),
    TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
    TensorSpec("gt_labels", _I, ("B", "M"), "gt classes in [0, num_classes)"),
    TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
    TensorSpec("noise", _F, ("B", "N"), "uniform [0, 1), one per candidate (K RoIs + M gts): largest sampled"),
)


def _roi_outputs(s: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("sample_rois", _F, ("B", s, 4), "sampled RoIs: positives first, then negatives; 0 padding"),
        TensorSpec("labels", _I, ("B", s), "gt class (positives), num_classes (negatives), -1 (padding)"),
        TensorSpec("label_weights", _F, ("B", s), "1 for sampled RoIs, 0 for padding"),
        TensorSpec("bbox_targets", _F, ("B", s, 4), "normalised DeltaXYWH targets of positives; 0 elsewhere"),
        TensorSpec("bbox_weights", _F, ("B", s, 4), "1 for positives"),
        TensorSpec("sample_index", _I, ("B", s), "candidate index of each slot; -1 padding"),
        TensorSpec("matched_gt", _I, ("B", s), "gt each positive regresses to; -1 elsewhere"),
        TensorSpec("num_pos", _I, ("B",), "positive slots per image"),
        TensorSpec("num_neg", _I, ("B",), "negative slots per image"),
    )


_ROI_SIZES: dict[str, Any] = {
    "export_sizes": {"B": 2, "K": 40, "M": 4},
    "test_sizes": ({"B": 1, "K": 7, "M": 1}, {"B": 3, "K": 2000, "M": 9}, {"B": 2, "K": 50, "M": 0},
                   {"B": 4, "K": 1, "M": 3}, {"B": 2, "K": 0, "M": 2}),
    "atol": 1e-5,
    "rtol": 1e-5,
}

_ENTRIES += (
    Entry(
        name="roi_head_targets",
        summary="ProposalTargetCreator (simple-faster-rcnn): gts appended, IoU 0.5, 128 RoIs with at most 32 "
        "positives, targets normalised by (0.1, 0.1, 0.2, 0.2).",
        source="exportable/roi_head.py",
        factory=ProposalTargetCreator,
        params={"num": 128, "rounding": "round"},
        inputs=_ROI_INPUTS,
        outputs=_roi_outputs(128),
        make_inputs=examples.roi_target_inputs,
        notes="noise is (B, K + M) in candidate order [RoIs | gts]; class_specific=True turns bbox_targets and "
        "bbox_weights into (B, 128, 4 * num_classes).",
        **_ROI_SIZES,
    ),
    Entry(
        name="roi_head_targets_mmdet",
        summary="mmdetection's RoI sampling: gts prepended, MaxIoU 0.5 / 0.5, RandomSampler 512 / 0.25, "
        "ascending indices within positives and negatives.",
        source="exportable/roi_head.py",
        factory=ProposalTargetCreator,
        params={"variant": "mmdet", "num": 512, "rounding": "int"},
        inputs=_ROI_INPUTS,
        outputs=_roi_outputs(512),
        make_inputs=examples.roi_target_inputs,
        notes="noise is (B, M + K) in candidate order [gts | RoIs].",
        **_ROI_SIZES,
    ),
    Entry(
        name="roi_align",
        summary="RoIAlign (average, aligned / half_pixel, sampling_ratio 2) of padded RoIs: one ONNX RoiAlign.",
        source="exportable/roi_align.py",
        factory=RoIAlign,
        params={},
        inputs=(
            TensorSpec("features", _F, ("B", "C", "H", "W"), "feature maps (stride 1 / spatial_scale)"),
            TensorSpec("rois", _F, ("B", "K", 4), "(x1, y1, x2, y2) RoIs in image pixels, padded per image"),
        ),
        outputs=(TensorSpec("pooled", _F, ("B", "K", "C", 7, 7), "average of 2 x 2 bilinear samples per bin"),),
        make_inputs=examples.roi_align_inputs,
        export_sizes={"B": 2, "C": 3, "H": 6, "W": 7, "K": 5},
        test_sizes=({"B": 1, "C": 1, "H": 1, "W": 1, "K": 1}, {"B": 3, "C": 16, "H": 38, "W": 63, "K": 200},
                    {"B": 2, "C": 4, "H": 9, "W": 5, "K": 0}, {"B": 2, "C": 256, "H": 13, "W": 11, "K": 30}),
        atol=1e-5,
        rtol=1e-5,
        notes="Eager sums the samples in another order than onnxruntime: float32 rounding only. "
        "sampling_ratio must be a fixed int >= 1 (the adaptive 0 is not static).",
    ),
)


# -- ATSS (exportable/assigners/atss.py) --

_ATSS_INPUTS = (
    TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors of all levels, shared by the batch"),
    TensorSpec("level_ids", _I, ("N",), "FPN level of each anchor, in [0, num_levels)"),
    TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
    TensorSpec("gt_labels", _I, ("B", "M"), "gt classes in [0, num_classes)"),
    TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
    TensorSpec("anchor_mask", _B, ("B", "N"), "True for anchors that take part (inside / not padding)"),
)
_ATSS_OUTPUTS = (
    TensorSpec("gt_index", _I, ("B", "N"), "matched gt (0-based); -1 negative; -2 outside anchor_mask"),
    TensorSpec("labels", _I, ("B", "N"), "matched gt's class; num_classes for every non-positive"),
    TensorSpec("boxes", _F, ("B", "N", 4), "matched gt box; 0 elsewhere"),
    TensorSpec("overlaps", _F, ("B", "N"), "IoU(anchor, matched gt) for positives; 0 elsewhere"),
    TensorSpec("target_scores", _F, ("B", "N"), "classification target at labels: 1 (or IoU(pred, gt)) for "
               "positives, 0 elsewhere"),
    TensorSpec("weights", _F, ("B", "N"), "classification weight: 1, 0 outside anchor_mask"),
)
_ATSS_SIZES: dict[str, Any] = {
    "export_sizes": {"B": 2, "N": 40, "M": 4},
    "test_sizes": ({"B": 1, "N": 7, "M": 1}, {"B": 3, "N": 500, "M": 9}, {"B": 2, "N": 60, "M": 0},
                   {"B": 4, "N": 3, "M": 3}, {"B": 2, "N": 2000, "M": 16}),
    "atol": 1e-6,
    "rtol": 1e-6,
}


def _atss_inputs_with_preds(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return examples.atss_inputs(s, g, preds=True)


_ENTRIES += (
    Entry(
        name="atss_assigner",
        summary="ATSS (official = mmdetection 3.3): per-level top-9 nearest anchors, IoU >= mean + unbiased "
        "std, centre inside by > 0.01 px, conflicts by IoU among the gts an anchor is positive for.",
        source="exportable/assigners/atss.py",
        factory=ATSSAssigner,
        params={},
        inputs=_ATSS_INPUTS,
        outputs=_ATSS_OUTPUTS,
        make_inputs=examples.atss_inputs,
        notes="num_levels is static (one top-k per level in the graph; each level a Slice with run-time bounds); "
        "level_ids need not be sorted. "
        "A gt with a single candidate gets no positive (no unbiased std), as in the peers.",
        **_ATSS_SIZES,
    ),
    Entry(
        name="atss_assigner_paddle",
        summary="ATSS as PaddleDetection / YOLOv6: IoU > mean + std (strict), centre margin 1e-9, conflicts "
        "by argmax IoU over all gts, soft targets IoU(pred_box, gt) (PP-YOLOE).",
        source="exportable/assigners/atss.py",
        factory=ATSSAssigner,
        params={"strict": True, "center_margin": 1e-9, "conflict": "all_gts"},  # = ATSSAssigner.paddle()
        inputs=(*_ATSS_INPUTS, TensorSpec("pred_boxes", _F, ("B", "N", 4), "predicted (x1, y1, x2, y2) boxes, "
                                          "for the IoU soft targets")),
        outputs=_ATSS_OUTPUTS,
        make_inputs=_atss_inputs_with_preds,
        notes="PaddleDetection fails on a level smaller than topk; here k is clipped as in mmdetection.",
        **_ATSS_SIZES,
    ),
)


# -- Point assigners: SimOTA, TaskAligned (exportable/assigners/simota.py, task_aligned*.py) --


def _point_outputs(overlap: str, target: str, weights: str = "classification loss weight: 1 everywhere",
                   gt_index: str = "matched gt (0-based); -1 negative (nothing is ignored)") -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("gt_index", _I, ("B", "N"), gt_index),
        TensorSpec("labels", _I, ("B", "N"), "matched gt's class; C for non-positives"),
        TensorSpec("boxes", _F, ("B", "N", 4), "matched gt box (the regression target); 0 for non-positives"),
        TensorSpec("overlaps", _F, ("B", "N"), f"{overlap} of the prediction with its gt; 0 for non-positives"),
        TensorSpec("target_scores", _F, ("B", "N"), f"classification target at labels: {target}; 0 else"),
        TensorSpec("weights", _F, ("B", "N"), weights),
    )


_POINT_SIZES: dict[str, Any] = {
    "export_sizes": {"B": 2, "N": 60, "M": 4, "C": 3},
    "test_sizes": ({"B": 1, "N": 9, "M": 1, "C": 1}, {"B": 3, "N": 700, "M": 13, "C": 5},
                   {"B": 2, "N": 50, "M": 0, "C": 4}, {"B": 4, "N": 5, "M": 3, "C": 2},
                   {"B": 2, "N": 400, "M": 30, "C": 80}),
    "atol": 1e-6,
}


def _dual_task_aligned(**params: Any) -> nn.Module:
    """The dual assigner with its two results flattened into the graph's 12 outputs (one-to-many first)."""
    return _Flattened(DualTaskAlignedAssigner(**params))


class _Flattened(nn.Module):
    """``module``'s tuple of tuples as one flat tuple of tensors."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for part in self.module(*args) for t in part)


_SIMOTA_INPUTS = point_assigner_specs("class probabilities sqrt(sigmoid(cls) * sigmoid(obj))")
_TAL_INPUTS = point_assigner_specs("class probabilities (sigmoid outputs, not logits)",
                                   "stride of each point's level (not read: the common signature)")

_ENTRIES += (
    Entry(
        name="simota_assigner",
        summary="SimOTA as mmdetection 3.3 (box or 2.5-stride square candidates, 1e5 penalty, dynamic k "
        "from the top-10 IoUs, conflicts to the cheapest gt), batched with one top-k.",
        source="exportable/assigners/simota.py",
        factory=SimOTAAssigner,
        params={},
        inputs=_SIMOTA_INPUTS,
        outputs=_point_outputs("IoU", "the IoU (YOLOX)"),
        make_inputs=examples.simota_inputs,
        notes="The cost never builds (N, M, C): sum_c BCE = S - L0_y + L1_y. Ties: lower prior index first.",
        **_POINT_SIZES,
    ),
    Entry(
        name="simota_assigner_yolox",
        summary="SimOTA with today's official YOLOX prior: 1.5-stride centre square only, 1e6 penalty, eps 1e-8.",
        source="exportable/assigners/simota.py",
        factory=SimOTAAssigner,
        params={"center_radius": 1.5, "penalty": 1e6, "iou_eps": 1e-8, "in_box_prior": False},  # SimOTAAssigner.yolox()
        inputs=_SIMOTA_INPUTS,
        outputs=_point_outputs("IoU", "the IoU (YOLOX)"),
        make_inputs=examples.simota_inputs,
        **_POINT_SIZES,
    ),
    Entry(
        name="task_aligned_assigner",
        summary="TOOD's task-aligned assigner as mmdetection 3.3 (top-13 of s * IoU^6 over all points, t > 0, "
        "centre in gt, conflicts to the highest IoU), soft targets t_hat with eps 1e-7.",
        source="exportable/assigners/task_aligned.py",
        factory=TaskAlignedAssigner,
        params={},
        inputs=_TAL_INPUTS,
        outputs=_point_outputs("IoU", "t_hat = normalised s^alpha u^beta"),
        make_inputs=examples.task_aligned_inputs,
        notes="Ties: lower point index first (top-k), lower gt index first (conflicts). No (B, M, N, C) tensor.",
        **_POINT_SIZES,
    ),
    Entry(
        name="task_aligned_assigner_ultralytics",
        summary="ultralytics 8.4's TAL (YOLOv8-YOLO12): CIoU, in-gt (STAL 16 px) before the top-10 of "
        "sqrt(s) * CIoU^6, no t > 0 test, conflicts by argmax over all gts, eps 1e-9.",
        source="exportable/assigners/task_aligned_ultralytics.py",
        factory=UltralyticsTaskAlignedAssigner,
        params={},
        inputs=_TAL_INPUTS,
        outputs=_point_outputs("CIoU (clamped at 0)", "t_hat = normalised s^alpha u^beta"),
        make_inputs=examples.task_aligned_inputs,
        notes="Zero-metric positives follow the tie rule (lower point index first); ultralytics' own order "
        "for them is its backend's top-k order.",
        **_POINT_SIZES,
    ),
    Entry(
        name="task_aligned_dual",
        summary="YOLOv10's consistent dual assignment: ultralytics' TAL one-to-many (top-10) and one-to-one "
        "(top-1) on the same metric and predictions, steps 1-3 shared, both assignments from one graph.",
        source="exportable/assigners/task_aligned_dual.py",
        factory=_dual_task_aligned,
        signature_of=DualTaskAlignedAssigner,
        params={},
        inputs=_TAL_INPUTS,
        outputs=tuple(TensorSpec(f"{branch}_{s.name}", s.dtype, s.dims, f"{what}: {s.doc}")
                      for branch, what in (("o2m", "one-to-many"), ("o2o", "one-to-one"))
                      for s in _point_outputs("CIoU (clamped at 0)", "t_hat = normalised s^alpha u^beta")),
        make_inputs=examples.task_aligned_inputs,
        notes="Each branch equals UltralyticsTaskAlignedAssigner alone with its topk / topk2. One-to-one: at most "
        "one positive per gt (possibly none).",
        **_POINT_SIZES,
    ),
)


# -- O2F: the assigner, the loss and the NMS-free inference (assigners/o2f.py, losses.py, o2f_inference.py) --

_ENTRIES += (
    Entry(
        name="o2f_assigner",
        summary="O2F one-to-few assignment (the authors' code): centre region, top-7 by p^0.2 IoU^0.8, one "
        "certain positive (1, weight 1) and ambiguous ones (p / max p * T, weight 0.4) per gt.",
        source="exportable/assigners/o2f.py",
        factory=O2FAssigner,
        params={},
        inputs=(
            *point_assigner_specs("sigmoid(cls) * sigmoid(ctr), probabilities"),
            TensorSpec("soft_ceiling", _F, (), "T(e): 0.6 in the first epoch -> 0.2 in the last"),
        ),
        outputs=_point_outputs("IoU", "1 certain, p / max p * T ambiguous", "1 certain, 0.4 ambiguous, 1 negatives",
                               "matched gt (0-based); -1 negative"),
        make_inputs=examples.o2f_assigner_inputs,
        export_sizes={"B": 2, "N": 40, "M": 4, "C": 3},
        test_sizes=({"B": 1, "N": 7, "M": 1, "C": 3}, {"B": 3, "N": 500, "M": 9, "C": 80},
                    {"B": 2, "N": 50, "M": 0, "C": 2}, {"B": 4, "N": 300, "M": 30, "C": 5},
                    {"B": 2, "N": 1, "M": 3, "C": 1}),
        atol=1e-6,
        notes="Ranks by p * IoU^4 in float64 (the same order as p^0.2 IoU^0.8, no Pow): indices exact in "
        "onnxruntime.",
    ),
    Entry(
        name="o2f_loss",
        summary="O2F's loss (the authors' SoftFocalLoss + GIoU): 0.75 p^2 BCE(p, 0) everywhere, w BCE(p, t) at "
        "positives, / #positives; 2.0 x centerness-weighted GIoU on all positives.",
        source="exportable/losses.py",
        factory=O2FLoss,
        params={},
        inputs=(
            TensorSpec("pred_scores", _F, ("B", "N", "C"), "sigmoid(cls) * sigmoid(ctr), probabilities"),
            TensorSpec("pred_boxes", _F, ("B", "N", 4), "decoded predicted boxes (x1, y1, x2, y2)"),
            TensorSpec("points", _F, ("N", 2), "(x, y) points"),
            TensorSpec("labels", _I, ("B", "N"), "target class; C = background"),
            TensorSpec("target_scores", _F, ("B", "N"), "soft target at the label (O2FAssigner.target_scores)"),
            TensorSpec("weights", _F, ("B", "N"), "positive's loss weight (O2FAssigner.weights)"),
            TensorSpec("target_boxes", _F, ("B", "N", 4), "matched gt box (O2FAssigner.boxes)"),
        ),
        outputs=(
            TensorSpec("loss_cls", _F, (), "classification loss / max(#positives, 1)"),
            TensorSpec("loss_bbox", _F, (), "2.0 * sum c (1 - GIoU) / sum c over positives"),
        ),
        make_inputs=examples.o2f_loss_inputs,
        export_sizes={"B": 2, "N": 30, "C": 4},
        test_sizes=({"B": 1, "N": 5, "C": 3}, {"B": 2, "N": 0, "C": 2}, {"B": 2, "N": 64, "C": 1},
                    {"B": 3, "N": 700, "C": 80}),
        atol=1e-5,
        rtol=1e-5,
        notes="log1p has no ONNX operator (it becomes Log(1 + x)) and Log differs by an ulp: the losses agree "
        "to ~1e-7 relative; sums accumulate in float64.",
    ),
    Entry(
        name="o2f_postprocess",
        summary="O2F test time without NMS: sigmoid(cls) * sigmoid(ctr), per-level score_thr 0.05 + top 1000, "
        "top 100 overall, distances decoded and clipped, padded.",
        source="exportable/o2f_inference.py",
        factory=O2FPostProcess,
        params={},
        inputs=tuple(
            TensorSpec(f"cls_{k}", _F, ("B", 80, f"H{k}", f"W{k}"), f"level-{k} class logits") for k in range(5)
        ) + tuple(
            TensorSpec(f"box_{k}", _F, ("B", 4, f"H{k}", f"W{k}"), f"level-{k} (l, t, r, b) distances in pixels")
            for k in range(5)
        ) + tuple(
            TensorSpec(f"ctr_{k}", _F, ("B", 1, f"H{k}", f"W{k}"), f"level-{k} centerness logits") for k in range(5)
        ) + (TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each unpadded image: boxes are clipped to it"),),
        outputs=(
            TensorSpec("boxes", _F, ("B", 100, 4), "(x1, y1, x2, y2) detections, best first; padding 0"),
            TensorSpec("scores", _F, ("B", 100), "sigmoid(cls) * sigmoid(ctr); padding 0"),
            TensorSpec("labels", _I, ("B", 100), "class; padding -1"),
            TensorSpec("counts", _I, ("B",), "detections per image (slots [0, count) are filled)"),
        ),
        make_inputs=examples.o2f_postprocess_inputs,
        export_sizes={"B": 2, "H": 256, "W": 320},
        test_sizes=({"B": 1, "H": 64, "W": 96}, {"B": 3, "H": 40, "W": 40}, {"B": 2, "H": 8, "W": 8},
                    {"B": 2, "H": 128, "W": 96}),
        atol=1e-5,
        rtol=1e-6,
        notes="C = 80 is baked in the channel dim; max_per_img (100) is the static output dim. Scores are ranked "
        "in float64 (onnxruntime's float32 Sigmoid differs from torch's by up to 1.8e-7).",
    ),
)


# -- DynamicSoftLabel, RTMDet (exportable/assigners/dynamic_soft_label.py) --

_ENTRIES += (
    Entry(
        name="dynamic_soft_label_assigner",
        summary="RTMDet's DynamicSoftLabelAssigner as mmdetection 3.3: candidates inside any gt, cost = soft-label "
        "BCE + 3 x -log IoU + 10^(distance / stride - 3), dynamic k from the top-13 IoUs, conflicts to the "
        "cheapest gt; soft targets = IoU.",
        source="exportable/assigners/dynamic_soft_label.py",
        factory=DynamicSoftLabelAssigner,
        params={},
        inputs=point_assigner_specs("class probabilities sigmoid(cls) (mmdetection passes the logits)"),
        outputs=_point_outputs("IoU", "the IoU (RTMDet's quality focal loss target)"),
        make_inputs=examples.dynamic_soft_label_inputs,
        notes="No (N, M, C) tensor: the other classes' cost is one table per (image, class, prior). Logs, the power "
        "of 10 and the class sum run in float64, rounded once: the same float32 cost in eager and onnxruntime.",
        **_POINT_SIZES,
    ),
)

# -- Hungarian matching (assigners/hungarian.py, lsa.py) --

_HUNGARIAN_INPUTS = (
    TensorSpec("pred_scores", _F, ("B", "Q", "C"), "class probabilities of the queries (sigmoid outputs)"),
    TensorSpec("pred_boxes", _F, ("B", "Q", 4), "decoded query boxes (x1, y1, x2, y2) in pixels"),
    TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
    TensorSpec("gt_labels", _I, ("B", "M"), "gt classes in [0, C)"),
    TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts"),
    TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image: the L1 cost's normaliser"),
)
_HUNGARIAN_SIZES: dict[str, Any] = {
    "export_sizes": {"B": 2, "Q": 12, "M": 4, "C": 3},
    "test_sizes": ({"B": 1, "Q": 5, "M": 1, "C": 1}, {"B": 3, "Q": 300, "M": 30, "C": 80},
                   {"B": 2, "Q": 10, "M": 0, "C": 4}, {"B": 3, "Q": 4, "M": 9, "C": 2},
                   {"B": 4, "Q": 40, "M": 13, "C": 5}),
    "atol": 1e-5,
}

_ENTRIES += (
    Entry(
        name="hungarian_cost",
        summary="DETR's matching cost (mmdetection 3.3, Deformable DETR / DINO): 2 x focal + 5 x L1 on "
        "normalised (cx, cy, w, h) + 2 x -GIoU, for a host-side solver.",
        source="exportable/assigners/hungarian.py",
        factory=HungarianCost,
        params={},
        inputs=_HUNGARIAN_INPUTS,
        outputs=(TensorSpec("cost", _F, ("B", "Q", "M"), "matching cost of every (query, gt); padded gts 0"),),
        make_inputs=examples.hungarian_inputs,
        notes="The whole assignment, solver included, is the hungarian_assigner entry; this graph stops at the "
        "cost for a host step (e.g. scipy.optimize.linear_sum_assignment on each image's real columns).",
        **_HUNGARIAN_SIZES,
    ),
    Entry(
        name="hungarian_assigner",
        summary="DETR's one-to-one Hungarian matching (mmdetection 3.3's HungarianAssigner with focal, L1 and "
        "GIoU costs): the cost matrix and an exact batched shortest-augmenting-path solver in an ONNX Loop.",
        source="exportable/assigners/hungarian.py",
        factory=HungarianAssigner,
        params={},
        inputs=_HUNGARIAN_INPUTS,
        outputs=(
            TensorSpec("gt_index", _I, ("B", "Q"), "matched gt (0-based); -1 for a query left to no-object"),
            TensorSpec("labels", _I, ("B", "Q"), "matched gt's class; C for no-object"),
            TensorSpec("boxes", _F, ("B", "Q", 4), "matched gt box; 0 for no-object"),
            TensorSpec("overlaps", _F, ("B", "Q"), "IoU of the query's box with its gt; 0 for no-object"),
            TensorSpec("target_scores", _F, ("B", "Q"), "classification target at labels: 1; 0 for no-object"),
            TensorSpec("weights", _F, ("B", "Q"), "classification loss weight: 1 everywhere"),
        ),
        make_inputs=examples.hungarian_inputs,
        notes="Eager solves with scipy, the graph with its own exact solver (float64): the same optimal total on "
        "every problem, the same matching on tie-free costs. A batched bidding step places most gts; the loop "
        "inserts the rest (0 to 13 iterations on the benchmark's DETR costs, 300 queries x 20 or 100 gts).",
        **_HUNGARIAN_SIZES,
    ),
)

# -- OTA: SimOTA's cost solved as optimal transport (assigners/ota.py) --

_ENTRIES += (
    Entry(
        name="ota_assigner",
        summary="OTA with SimOTA's cost and dynamic k (mmdetection 3.3 defaults): gts supply k units, the "
        "background the rest, 50 log-space Sinkhorn iterations (eps 0.1, float64), argmax of the rescaled plan.",
        source="exportable/assigners/ota.py",
        factory=OTAAssigner,
        params={},
        inputs=_SIMOTA_INPUTS,
        outputs=_point_outputs("IoU", "1 (OTA's hard target)"),
        make_inputs=examples.simota_inputs,
        notes="The iterations are unrolled (a constructor int); the plan is float64, so eager and onnxruntime "
        "agree on every argmax.",
        **_POINT_SIZES,
    ),
)

CATALOG: dict[str, Entry] = {e.name: e for e in _ENTRIES}
if len(CATALOG) != len(_ENTRIES):
    raise RuntimeError("duplicate catalog entry names")


def get(name: str) -> Entry:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"no catalog entry {name!r}; known: {', '.join(CATALOG)}") from None


def names() -> list[str]:
    return list(CATALOG)
