"""Every exportable component, as one catalog entry with its graph I/O contract.

An :class:`Entry` knows how to build its module (``factory`` + ``params``, overridable), how
to make example inputs at any sizes (``make_inputs``), the graph's input and output names with
their dims (named dims stay dynamic in the exported graph), the sizes it is exported at and the
different sizes it is verified at, and the float tolerance of its onnxruntime parity.

    >>> from exportable import catalog
    >>> entry = catalog.get("nms")
    >>> model = entry.export(iou_threshold=0.6)   # an onnx.ModelProto
    >>> report = entry.verify(model)              # eager vs onnxruntime at entry.test_sizes

The CLI ``python -m exportable list | export NAME | verify NAME`` is a thin layer over this.
Shape letters: B images, N anchors/boxes/points, M gts, K kept/top-k, H, W sizes.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from exportable import onnx as xonnx
from exportable.anchors import AnchorGenerator, AnchorGrid, PointGenerator, PointGrid
from exportable.assigners.max_iou import MaxIoUAssigner
from exportable.boxes import AnchorGtMaxIoU, BoxOverlaps
from exportable.coders import (
    DeltaXYWHCoder,
    DeltaXYWHDecode,
    DeltaXYWHEncode,
    DistanceDecode,
    DistancePointCoder,
)
from exportable.losses import RetinaNetLoss
from exportable.nms import NMS, BatchedNMS
from exportable.ordering import TopK
from exportable.retinanet import RetinaNetPostProcess, RetinaNetTargets
from exportable.rpn import AnchorTargetCreator, ProposalCreator, example_anchor_target_inputs, example_proposal_inputs
from exportable.sampling import NoiseSampler, example_sampler_inputs

__all__ = ["TensorSpec", "Entry", "CATALOG", "get", "names", "parse_params", "point_assigner_inputs"]

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

    # -- building ------------------------------------------------------------------------------
    def resolved(self, **overrides: Any) -> dict[str, Any]:
        unknown = set(overrides) - set(self.params)
        if unknown:
            raise KeyError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.params)}")
        return {**self.params, **overrides}

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
        lines += [f"  param  {k} = {v!r}" for k, v in self.params.items()]
        lines += [f"  input  {s.describe()}" for s in self.inputs]
        lines += [f"  output {s.describe()}" for s in self.outputs]
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)


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
# Example inputs: seeded, with degenerate rows on purpose (zero-area, out-of-image, ties).
# ----------------------------------------------------------------------------------------------


def _boxes(g: torch.Generator, shape: Sequence[int], extent: float = 128.0, max_side: float = 48.0) -> Tensor:
    """Random (x1, y1, x2, y2) boxes; about 1 in 8 has zero width or height, some leave the image."""
    xy = torch.rand(*shape, 2, generator=g) * (extent + 16) - 8  # (*shape, 2) some outside
    wh = torch.rand(*shape, 2, generator=g) * max_side  # (*shape, 2)
    flat = torch.rand(*shape, generator=g) < 0.125  # (*shape,)
    wh = torch.where(flat[..., None], wh * torch.tensor([0.0, 1.0]), wh)  # (*shape, 2)
    return torch.cat([xy, xy + wh], dim=-1).round(decimals=1)  # (*shape, 4) on a 0.1 px grid


def _gt_mask(g: torch.Generator, b: int, m: int) -> Tensor:
    """Padding at the end of each image; the first image may have no valid gt at all."""
    counts = torch.randint(0, m + 1, (b,), generator=g)  # (B,)
    if b > 1:
        counts[1] = m
    return torch.arange(m)[None, :] < counts[:, None]  # (B, M)


def _image_sizes(g: torch.Generator, b: int, h: int = 128, w: int = 128) -> Tensor:
    hs = torch.randint(h // 2, h + 1, (b,), generator=g)
    ws = torch.randint(w // 2, w + 1, (b,), generator=g)
    return torch.stack([hs, ws], dim=1).to(torch.int64)  # (B, 2) (H, W)


def _tied_scores(g: torch.Generator, shape: Sequence[int], levels: int = 8) -> Tensor:
    """Scores on a coarse grid so ties are frequent: the tie rule gets exercised."""
    return (torch.randint(0, levels, tuple(shape), generator=g).float() + 0.5) / levels


def _inputs_box_iou(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return _boxes(g, (s["B"], s["N"])), _boxes(g, (s["B"], s["M"]))


def _inputs_max_iou(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors = _boxes(g, (s["N"],))
    gts = _boxes(g, (s["B"], s["M"]))
    gts[:, ::3] = anchors[: gts[:, ::3].shape[1]][None] if s["N"] >= s["M"] else gts[:, ::3]  # exact IoU 1 ties
    return anchors, gts, _gt_mask(g, s["B"], s["M"])


def _inputs_assigner(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors, gts, mask = _inputs_max_iou(s, g)
    anchors[..., 2:] = anchors[..., :2] + (anchors[..., 2:] - anchors[..., :2]).clamp(min=1.0)
    labels = torch.randint(0, 5, (s["B"], s["M"]), generator=g)  # (B, M)
    anchor_mask = torch.rand(s["B"], s["N"], generator=g) > 0.1  # (B, N) a few invalid anchors
    return anchors, gts, labels, mask, anchor_mask


def _inputs_assigner_ignore(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    base = _inputs_assigner(s, g)
    ignore = _boxes(g, (s["B"], s["K"]), max_side=64.0)  # (B, K, 4)
    ignore_mask = _gt_mask(g, s["B"], s["K"])  # (B, K)
    return (*base, ignore, ignore_mask)


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
_POINT_STRIDES = (8, 16, 32)


def _feats(s: Sizes, strides: Sequence[int]) -> tuple[Tensor, ...]:
    return tuple(
        torch.zeros(s["B"], s["C"], math.ceil(s["H"] / st), math.ceil(s["W"] / st)) for st in strides
    )


def _inputs_anchor_grid(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return _feats(s, (8, 16, 32, 64, 128))


def _inputs_point_grid(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return _feats(s, _POINT_STRIDES)


def _inputs_encode(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors = _boxes(g, (s["N"],))
    anchors[..., 2:] = anchors[..., :2] + (anchors[..., 2:] - anchors[..., :2]).clamp(min=1.0)  # positive size
    gts = _boxes(g, (s["B"], s["N"]))
    gts[..., 2:] = gts[..., :2] + (gts[..., 2:] - gts[..., :2]).clamp(min=0.5)
    return anchors, gts


def _inputs_decode(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors = _inputs_encode(s, g)[0]
    deltas = torch.randn(s["B"], s["N"], 4, generator=g) * 2  # (B, N, 4) some beyond the wh clip
    return anchors, deltas, _image_sizes(g, s["B"])


def _inputs_distance(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    points = torch.rand(s["N"], 2, generator=g) * 128  # (N, 2)
    dist = torch.rand(s["B"], s["N"], 4, generator=g) * 64  # (B, N, 4)
    return points, dist, _image_sizes(g, s["B"])


def _inputs_nms(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    boxes = _boxes(g, (s["N"],), extent=256.0, max_side=96.0)
    return boxes, _tied_scores(g, (s["N"],))


def _inputs_batched_nms(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    boxes, scores = _inputs_nms(s, g)
    return boxes, scores, torch.randint(0, 4, (s["N"],), generator=g)


def _inputs_topk(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return (_tied_scores(g, (s["B"], s["N"]), levels=5),)


# ----------------------------------------------------------------------------------------------
# The catalog
# ----------------------------------------------------------------------------------------------


def point_assigner_inputs(scores_doc: str, strides_doc: str = "each point's level stride") -> tuple[TensorSpec, ...]:
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


def _anchor_grid(**p: Any) -> nn.Module:
    return AnchorGrid(AnchorGenerator(**p))


def _point_grid(**p: Any) -> nn.Module:
    return PointGrid(PointGenerator(**p))


def _delta_encode(**p: Any) -> nn.Module:
    return DeltaXYWHEncode(DeltaXYWHCoder(**p))


def _delta_decode(**p: Any) -> nn.Module:
    return DeltaXYWHDecode(DeltaXYWHCoder(**p))


def _distance_decode(**p: Any) -> nn.Module:
    return DistanceDecode(DistancePointCoder(**p))


_ENTRIES: tuple[Entry, ...] = (
    Entry(
        name="box_iou",
        summary="Pairwise IoU / IoF / GIoU of two batched box sets (mmdetection numerics, eps 1e-6).",
        source="exportable/boxes.py",
        factory=BoxOverlaps,
        params={"mode": "iou", "eps": 1e-6},
        inputs=(
            TensorSpec("boxes1", _F, ("B", "N", 4), "(x1, y1, x2, y2) boxes"),
            TensorSpec("boxes2", _F, ("B", "M", 4), "(x1, y1, x2, y2) boxes"),
        ),
        outputs=(TensorSpec("overlaps", _F, ("B", "N", "M"), "overlap of every pair"),),
        make_inputs=_inputs_box_iou,
        export_sizes={"B": 2, "N": 9, "M": 4},
        test_sizes=({"B": 1, "N": 7, "M": 1}, {"B": 3, "N": 300, "M": 17}, {"B": 2, "N": 0, "M": 3}),
        atol=1e-6,
    ),
    Entry(
        name="max_iou",
        summary="IoU of shared anchors against padded gts, then the best gt per anchor (MaxIoU's step 6).",
        source="exportable/boxes.py",
        factory=AnchorGtMaxIoU,
        params={"eps": 1e-6},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors shared by the batch"),
            TensorSpec("gt_boxes", _F, ("B", "M", 4), "padded gt boxes"),
            TensorSpec("gt_mask", _B, ("B", "M"), "True for real gts, False for padding"),
        ),
        outputs=(
            TensorSpec("max_overlaps", _F, ("B", "N"), "best IoU over the image's real gts (0 if none)"),
            TensorSpec("argmax", _I, ("B", "N"), "index of that gt (lowest on ties; -1 if the image has none)"),
        ),
        make_inputs=_inputs_max_iou,
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
        params={
            "strides": (8, 16, 32, 64, 128),
            "ratios": (0.5, 1.0, 2.0),
            "octave_base_scale": 4,
            "scales_per_octave": 3,
            "center_offset": 0.0,
        },
        inputs=_feat_specs(5),
        outputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2); order level, (y * W + x) * A + a"),
            TensorSpec("level_ids", _I, ("N",), "FPN level of each anchor"),
        ),
        make_inputs=_inputs_anchor_grid,
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
        params={"strides": _POINT_STRIDES, "offset": 0.5},
        inputs=_feat_specs(3),
        outputs=(
            TensorSpec("points", _F, ("N", 2), "(x, y) = ((i + offset) * stride_w, (j + offset) * stride_h)"),
            TensorSpec("strides", _F, ("N",), "stride of each point's level"),
            TensorSpec("level_ids", _I, ("N",), "level of each point"),
        ),
        make_inputs=_inputs_point_grid,
        export_sizes={"B": 2, "C": 2, "H": 128, "W": 160},
        test_sizes=({"B": 1, "C": 3, "H": 640, "W": 640}, {"B": 2, "C": 1, "H": 72, "W": 40}),
    ),
    Entry(
        name="delta_xywh_encode",
        summary="DeltaXYWH box encoding (dx, dy, dw, dh) of gt boxes against anchors, (d - means) / stds.",
        source="exportable/coders.py",
        factory=_delta_encode,
        params={"means": (0.0, 0.0, 0.0, 0.0), "stds": (1.0, 1.0, 1.0, 1.0)},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors, positive width and height"),
            TensorSpec("gt_boxes", _F, ("B", "N", 4), "the gt box matched to each anchor"),
        ),
        outputs=(TensorSpec("deltas", _F, ("B", "N", 4), "regression targets"),),
        make_inputs=_inputs_encode,
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
        params={"means": (0.0, 0.0, 0.0, 0.0), "stds": (1.0, 1.0, 1.0, 1.0), "wh_ratio_clip": 16 / 1000,
                "clip_border": True},
        inputs=(
            TensorSpec("anchors", _F, ("N", 4), "(x1, y1, x2, y2) anchors"),
            TensorSpec("deltas", _F, ("B", "N", 4), "predicted (dx, dy, dw, dh)"),
            TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image"),
        ),
        outputs=(TensorSpec("boxes", _F, ("B", "N", 4), "decoded (x1, y1, x2, y2), clipped"),),
        make_inputs=_inputs_decode,
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
        params={"clip_border": True},
        inputs=(
            TensorSpec("points", _F, ("N", 2), "(x, y) points"),
            TensorSpec("distances", _F, ("B", "N", 4), "(l, t, r, b) distances in pixels, >= 0"),
            TensorSpec("image_sizes", _I, ("B", 2), "(H, W) of each image"),
        ),
        outputs=(TensorSpec("boxes", _F, ("B", "N", 4), "decoded (x1, y1, x2, y2), clipped"),),
        make_inputs=_inputs_distance,
        export_sizes={"B": 2, "N": 10},
        test_sizes=({"B": 1, "N": 3}, {"B": 4, "N": 257}),
        atol=1e-5,
    ),
    Entry(
        name="nms",
        summary="Greedy NMS of one box set as ONNX NonMaxSuppression (IoU at the threshold is kept).",
        source="exportable/nms.py",
        factory=NMS,
        params={"iou_threshold": 0.5, "max_output": None, "score_threshold": None},
        inputs=(
            TensorSpec("boxes", _F, ("N", 4), "(x1, y1, x2, y2) boxes"),
            TensorSpec("scores", _F, ("N",), "scores; equal scores keep the lower index first"),
        ),
        outputs=(TensorSpec("keep", _I, ("K",), "kept indices, highest score first"),),
        make_inputs=_inputs_nms,
        export_sizes={"N": 16},
        test_sizes=({"N": 1}, {"N": 7}, {"N": 600}, {"N": 0}),
    ),
    Entry(
        name="batched_nms",
        summary="Class-aware NMS in one NonMaxSuppression call (coordinate-offset trick).",
        source="exportable/nms.py",
        factory=BatchedNMS,
        params={"iou_threshold": 0.5, "max_output": None, "score_threshold": None},
        inputs=(
            TensorSpec("boxes", _F, ("N", 4), "(x1, y1, x2, y2) boxes"),
            TensorSpec("scores", _F, ("N",), "scores"),
            TensorSpec("idxs", _I, ("N",), "class (or level) of each box: only equal idxs suppress"),
        ),
        outputs=(TensorSpec("keep", _I, ("K",), "kept indices, highest score first"),),
        make_inputs=_inputs_batched_nms,
        export_sizes={"N": 16},
        test_sizes=({"N": 1}, {"N": 9}, {"N": 800}, {"N": 0}),
    ),
    Entry(
        name="topk",
        summary="Top-k with the package's tie rule (equal values: lower index first), as ONNX TopK.",
        source="exportable/ordering.py",
        factory=TopK,
        params={"k": 10, "largest": True},
        inputs=(TensorSpec("scores", _F, ("B", "N"), "values to rank along N"),),
        outputs=(
            TensorSpec("values", _F, ("B", "K"), "the k best values, best first (K = min(k, N))"),
            TensorSpec("indices", _I, ("B", "K"), "their indices"),
        ),
        make_inputs=_inputs_topk,
        export_sizes={"B": 2, "N": 40},
        test_sizes=({"B": 1, "N": 10}, {"B": 3, "N": 5}, {"B": 4, "N": 2000}),
    ),
)

_MAXIOU_PARAMS = {
    "pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0.0, "gt_max_assign_all": True,
    "match_low_quality": True, "num_classes": 80, "guard_zero_iou": False,
}

_ENTRIES += (
    Entry(
        name="max_iou_assigner",
        summary="mmdetection's MaxIoUAssigner, batched (RetinaNet defaults; low-quality matches, later gt wins).",
        source="exportable/assigners/max_iou.py",
        factory=MaxIoUAssigner,
        params=_MAXIOU_PARAMS,
        inputs=_ASSIGN_INPUTS,
        outputs=_ASSIGN_OUTPUTS,
        make_inputs=_inputs_assigner,
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
        params=_MAXIOU_PARAMS | {"ignore_iof_thr": 0.5, "ignore_wrt_candidates": True},
        inputs=_ASSIGN_INPUTS + (
            TensorSpec("ignore_boxes", _F, ("B", "K", 4), "padded ignore regions (x1, y1, x2, y2)"),
            TensorSpec("ignore_mask", _B, ("B", "K"), "True for real ignore regions"),
        ),
        outputs=_ASSIGN_OUTPUTS,
        make_inputs=_inputs_assigner_ignore,
        export_sizes={"B": 2, "N": 40, "M": 4, "K": 3},
        test_sizes=({"B": 1, "N": 9, "M": 2, "K": 1}, {"B": 3, "N": 500, "M": 11, "K": 5},
                    {"B": 2, "N": 30, "M": 3, "K": 0}),
        atol=1e-6,
    ),
)

# ----------------------------------------------------------------------------------------------
# RetinaNet: targets (MaxIoU + PseudoSampler + DeltaXYWH) and the loss (focal + L1)
# ----------------------------------------------------------------------------------------------


def _inputs_retinanet_targets(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    """Positive-size anchors and gts (zero-size gts encode to -inf: a unit test covers them), some gts
    outside the image, ~10% padding anchors, and with B >= 3 an image (index 2) without a valid anchor."""
    b, n, m = s["B"], s["N"], s["M"]
    anchors = _boxes(g, (n,))  # (N, 4)
    anchors[..., 2:] = anchors[..., :2] + (anchors[..., 2:] - anchors[..., :2]).clamp(min=1.0)
    gts = _boxes(g, (b, m))  # (B, M, 4)
    gts[..., 2:] = gts[..., :2] + (gts[..., 2:] - gts[..., :2]).clamp(min=0.5)
    labels = torch.randint(0, 5, (b, m), generator=g)  # (B, M)
    valid = torch.rand(b, n, generator=g) > 0.1  # (B, N) padding validity
    if b >= 3:
        valid[2] = False  # an image with no valid anchor: background, weight 0, counts 1
    return anchors, valid, _image_sizes(g, b), gts, labels, _gt_mask(g, b, m)


def _inputs_retinanet_loss(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    """Head outputs and targets as RetinaNetTargets makes them: ~20% positives, ~10% ignored anchors."""
    b, n, c = s["B"], s["N"], s["C"]
    logits = torch.randn(b, n, c, generator=g) * 3  # (B, N, C)
    deltas = torch.randn(b, n, 4, generator=g)  # (B, N, 4)
    kind = torch.rand(b, n, generator=g)  # (B, N)
    pos = kind < 0.2  # (B, N)
    ignored = kind > 0.9  # (B, N)
    labels = torch.where(pos, torch.randint(0, c, (b, n), generator=g), c)  # (B, N) background = C
    label_weights = (~ignored).float()  # (B, N)
    targets = torch.where(pos[..., None], torch.randn(b, n, 4, generator=g) * 0.5, 0.0)  # (B, N, 4)
    box_weights = pos[..., None].float().expand(b, n, 4).contiguous()  # (B, N, 4)
    num_total_pos = pos.sum(dim=1).clamp(min=1).sum()  # () int64
    return logits, deltas, labels, label_weights, targets, box_weights, num_total_pos


_RETINANET_TARGETS_PARAMS = {
    "num_classes": 80, "pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0.0, "allowed_border": -1,
    "means": (0.0, 0.0, 0.0, 0.0), "stds": (1.0, 1.0, 1.0, 1.0), "pos_weight": -1.0,
}

_ENTRIES += (
    Entry(
        name="retinanet_targets",
        summary="RetinaNet's anchor targets (mmdetection get_targets: inside flags, MaxIoU, PseudoSampler, "
        "DeltaXYWH, unmap), batched.",
        source="exportable/retinanet.py",
        factory=RetinaNetTargets,
        params=_RETINANET_TARGETS_PARAMS,
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
        make_inputs=_inputs_retinanet_targets,
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
        params={"alpha": 0.25, "gamma": 2.0, "loss_cls_weight": 1.0, "loss_bbox_weight": 1.0, "bbox_loss": "l1",
                "beta": 1.0, "avg_factor_eps": 0.0},
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
        make_inputs=_inputs_retinanet_loss,
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

_RETINANET_STRIDES = (8, 16, 32, 64, 128)


def _inputs_retinanet_postprocess(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    """Head outputs of a C = 80, A = 9 RetinaNet for images (H, W): logits on a 0.25 grid (many exact ties),
    about 4% of pairs above score_thr 0.05 (more than nms_pre on fine levels), deltas up to the wh clip,
    images smaller than the padded batch (zero-size clipped boxes), and with B >= 2 an image (index 1)
    where nothing passes score_thr."""
    b, a, c = s["B"], 9, 80
    sizes = [(math.ceil(s["H"] / st), math.ceil(s["W"] / st)) for st in _RETINANET_STRIDES]
    cls = []
    for h, w in sizes:
        logits = ((torch.randn(b, a * c, h, w, generator=g) * 1.5 - 5.5) * 4).round() / 4  # (B, A*C, H, W)
        if b >= 2:
            logits[1] = -8.0 - torch.rand(a * c, h, w, generator=g)  # nothing above the threshold
        cls.append(logits)
    box = [torch.randn(b, a * 4, h, w, generator=g) * 1.5 for h, w in sizes]  # (B, A*4, H, W)
    return (*cls, *box, _image_sizes(g, b, s["H"], s["W"]))


def _retinanet_postprocess(**p: Any) -> nn.Module:
    generator = AnchorGenerator(p.pop("strides"), ratios=p.pop("ratios"), octave_base_scale=p.pop("octave_base_scale"),
                                scales_per_octave=p.pop("scales_per_octave"))
    return RetinaNetPostProcess(generator=generator, **p)


_ENTRIES += (
    Entry(
        name="retinanet_postprocess",
        summary="RetinaNet test time (mmdetection): sigmoid, per-level score_thr + top nms_pre, decode + clip, "
        "class-aware NMS in one NonMaxSuppression, top max_per_img, padded.",
        source="exportable/retinanet.py",
        factory=_retinanet_postprocess,
        params={
            "num_classes": 80, "num_anchors": 9, "strides": _RETINANET_STRIDES, "ratios": (0.5, 1.0, 2.0),
            "octave_base_scale": 4, "scales_per_octave": 3, "nms_pre": 1000, "score_thr": 0.05,
            "iou_threshold": 0.5, "max_per_img": 100, "min_bbox_size": 0.0, "means": (0.0, 0.0, 0.0, 0.0),
            "stds": (1.0, 1.0, 1.0, 1.0), "wh_ratio_clip": 16 / 1000,
        },
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
        make_inputs=_inputs_retinanet_postprocess,
        export_sizes={"B": 2, "H": 256, "W": 320},
        test_sizes=({"B": 1, "H": 64, "W": 96}, {"B": 3, "H": 40, "W": 40}, {"B": 2, "H": 8, "W": 8},
                    {"B": 2, "H": 128, "W": 96}),
        atol=1e-5,
        rtol=1e-6,
        notes="C = 80 and A = 9 are baked in the channel dims (720, 36) and in the example inputs; "
        "max_per_img (100) is the static output dim. Floats: onnxruntime's Exp and Sigmoid differ from torch's "
        "by an ulp or two (boxes 6e-5 px at 1216 px, scores 6e-8); labels and counts are exact.",
    ),
)


# -- Faster R-CNN: sampling, RPN anchor targets, proposals (exportable/sampling.py, exportable/rpn.py) --

_RPN_TARGET_PARAMS = {
    "variant": "faster_rcnn", "num": 256, "pos_fraction": 0.5, "pos_iou_thr": 0.7, "neg_iou_thr": 0.3,
    "min_pos_iou": 0.0, "allowed_border": 0.0, "inclusive": True, "neg_pos_ub": -1.0,
}
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
        params={"num": 256, "pos_fraction": 0.5, "neg_pos_ub": -1.0, "rounding": "int"},
        inputs=(
            TensorSpec("pos", _B, ("B", "N"), "positive candidates"),
            TensorSpec("neg", _B, ("B", "N"), "negative candidates"),
            TensorSpec("noise", _F, ("B", "N"), "uniform [0, 1): largest noise kept"),
        ),
        outputs=(
            TensorSpec("pos_sampled", _B, ("B", "N"), "sampled positives"),
            TensorSpec("neg_sampled", _B, ("B", "N"), "sampled negatives"),
        ),
        make_inputs=example_sampler_inputs,
        export_sizes={"B": 2, "N": 300},
        test_sizes=({"B": 1, "N": 7}, {"B": 3, "N": 2000}, {"B": 2, "N": 1}, {"B": 2, "N": 0}),
    ),
    Entry(
        name="rpn_anchor_targets",
        summary="RPN anchor targets (AnchorTargetCreator) in the document's / simple-faster-rcnn's order.",
        source="exportable/rpn.py",
        factory=AnchorTargetCreator,
        params=_RPN_TARGET_PARAMS,
        inputs=_RPN_TARGET_INPUTS,
        outputs=_RPN_TARGET_OUTPUTS,
        make_inputs=example_anchor_target_inputs,
        **_RPN_TARGET_SIZES,
    ),
    Entry(
        name="rpn_anchor_targets_mmdet",
        summary="RPN anchor targets as mmdetection: MaxIoU 0.7 / 0.3 (min_pos_iou 0.3) + RandomSampler 256 / 0.5.",
        source="exportable/rpn.py",
        factory=AnchorTargetCreator,
        params=_RPN_TARGET_PARAMS
        | {"variant": "mmdet", "min_pos_iou": 0.3, "allowed_border": -1.0, "inclusive": False},
        inputs=_RPN_TARGET_INPUTS,
        outputs=_RPN_TARGET_OUTPUTS,
        make_inputs=example_anchor_target_inputs,
        **_RPN_TARGET_SIZES,
    ),
    Entry(
        name="rpn_proposals",
        summary="ProposalCreator (test preset): decode, clip, drop < 16 px, top 6,000, NMS 0.7, keep 300.",
        source="exportable/rpn.py",
        factory=ProposalCreator,
        params={"variant": "faster_rcnn", "mode": "test", "pre_nms": 6000, "post_nms": 300, "iou_threshold": 0.7,
                "min_size": 16.0},
        inputs=_PROPOSAL_INPUTS,
        outputs=_proposal_outputs(300),
        make_inputs=example_proposal_inputs,
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
        params={"variant": "mmdet", "mode": "test", "pre_nms": 1000, "post_nms": 1000, "iou_threshold": 0.7,
                "min_size": 0.0, "num_levels": 5},
        inputs=_PROPOSAL_INPUTS,
        outputs=_proposal_outputs(1000),
        make_inputs=example_proposal_inputs,
        export_sizes={"B": 2, "N": 400},
        test_sizes=({"B": 1, "N": 7}, {"B": 3, "N": 6000}, {"B": 2, "N": 1}, {"B": 2, "N": 0}),
        atol=1e-4,
        rtol=1e-6,
    ),
)

# Later components define their entries beside their code: each module below has a
# ``catalog_entries() -> tuple[Entry, ...]`` (it imports Entry / TensorSpec from here lazily).
# Order = the learning path.
_ENTRY_MODULES: tuple[str, ...] = (
    "exportable.roi_head",
    "exportable.assigners.atss",
    "exportable.assigners.simota",
    "exportable.assigners.o2f",
    "exportable.assigners.task_aligned",
)


def _collect() -> tuple[Entry, ...]:
    import importlib

    extra: tuple[Entry, ...] = ()
    for module in _ENTRY_MODULES:
        extra += tuple(importlib.import_module(module).catalog_entries())
    return _ENTRIES + extra


CATALOG: dict[str, Entry] = {e.name: e for e in _collect()}
if len(CATALOG) != len(_collect()):
    raise RuntimeError("duplicate catalog entry names")


def get(name: str) -> Entry:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"no catalog entry {name!r}; known: {', '.join(CATALOG)}") from None


def names() -> list[str]:
    return list(CATALOG)
