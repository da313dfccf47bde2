"""The main job: every catalogued component on the embedded photo, in eager and in onnxruntime.

``python -m lessons demo`` (behind ``make demo``):

1. loads the embedded default scene (the photo with its hand-labelled gts);
2. builds RetinaNet anchors for the padded photo and counts them per level;
3. computes the IoU of every anchor with every gt and previews a MaxIoU split (0.5 / 0.4);
4. runs every catalog entry on inputs made from the photo (entries without a photo-shaped
   input use their seeded example inputs), exports each to ONNX, runs it in onnxruntime (CUDA
   when this onnxruntime has it, else CPU) and checks parity with eager;
5. writes figures (``figures/*.png``), graphs (``onnx/*.onnx``) and a summary
   (``summary.md``, ``summary.json``) under ``build/demo/``, and prints the summary table.

Exit status 1 if any component's onnxruntime result differs from eager beyond its tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from exportable import catalog
from exportable import onnx as xonnx
from exportable.anchors import AnchorGenerator, PointGenerator, featmap_sizes_for
from exportable.boxes import box_iou
from exportable.coders import DeltaXYWHCoder
from exportable.retinanet import RetinaNetTargets
from lessons.scenes import Scene, default_scene

PAD_TO = 32  # FPN detectors pad each image to a multiple of the coarsest stride that matters
POS_IOU, NEG_IOU = 0.5, 0.4  # RetinaNet's MaxIoU thresholds, for the preview


@dataclass
class Context:
    """What the demo knows about the photo; scene-shaped inputs are made from it."""

    scene: Scene
    padded_hw: tuple[int, int]
    featmap_sizes: list[tuple[int, int]]
    anchors: Tensor  # (N, 4)
    level_ids: Tensor  # (N,)
    gt_boxes: Tensor  # (1, M, 4)
    gt_labels: Tensor  # (1, M)
    gt_mask: Tensor  # (1, M)
    iou: Tensor  # (N, M)

    @property
    def image_sizes(self) -> Tensor:
        h, w = self.scene.hw
        return torch.tensor([[h, w]], dtype=torch.int64)  # (1, 2)


def build_context(scene: Scene) -> Context:
    h, w = scene.hw
    padded = (math.ceil(h / PAD_TO) * PAD_TO, math.ceil(w / PAD_TO) * PAD_TO)
    gen = AnchorGenerator.retinanet()
    sizes = featmap_sizes_for(padded, gen.strides)
    anchors = torch.cat(gen.grid_anchors(sizes))  # (N, 4)
    level_ids = gen.level_ids(sizes)  # (N,)
    gt_boxes = scene.boxes[None].to(torch.float32)  # (1, M, 4)
    return Context(
        scene=scene,
        padded_hw=padded,
        featmap_sizes=sizes,
        anchors=anchors,
        level_ids=level_ids,
        gt_boxes=gt_boxes,
        gt_labels=scene.labels[None].to(torch.int64),  # (1, M)
        gt_mask=torch.ones(gt_boxes.shape[:2], dtype=torch.bool),  # (1, M)
        iou=box_iou(anchors, scene.boxes.to(torch.float32)),  # (N, M)
    )


# --------------------------------------------------------------------------------------------
# Photo-shaped inputs per catalog entry (entries not listed use their seeded example inputs)
# --------------------------------------------------------------------------------------------


def _feats(ctx: Context, strides: tuple[int, ...]) -> tuple[Tensor, ...]:
    sizes = featmap_sizes_for(ctx.padded_hw, strides)
    return tuple(torch.zeros(1, 1, fh, fw) for fh, fw in sizes)  # one (1, 1, H_l, W_l) per level


def _matched(ctx: Context) -> Tensor:
    return ctx.gt_boxes[0][ctx.iou.argmax(dim=1)][None]  # (1, N, 4) each anchor's best gt


def _candidates(ctx: Context, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes near the gts with noisy scores: what a detector hands to NMS."""
    g = torch.Generator().manual_seed(seed)
    best, arg = ctx.iou.max(dim=1)  # (N,), (N,)
    near = (best > 0.3).nonzero()[:, 0]  # (K,)
    jitter = torch.randn(near.numel(), 4, generator=g) * 4  # (K, 4) pixels
    boxes = ctx.anchors[near] + jitter  # (K, 4)
    boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], dim=1)  # (K, 4)
    scores = (best[near] + 0.1 * torch.rand(near.numel(), generator=g)).clamp(max=1.0)  # (K,)
    return boxes, scores, ctx.gt_labels[0][arg[near]]


def _decode_inputs(ctx: Context) -> tuple[Tensor, ...]:
    coder = DeltaXYWHCoder()
    deltas = coder.encode(ctx.anchors, _matched(ctx)[0])[None]  # (1, N, 4)
    return ctx.anchors, deltas, ctx.image_sizes


def _distance_inputs(ctx: Context) -> tuple[Tensor, ...]:
    points, _, _ = PointGenerator.yolox().grid_points(featmap_sizes_for(ctx.padded_hw, (8, 16, 32)))
    gt = ctx.gt_boxes[0][box_iou(torch.cat([points - 4, points + 4], 1), ctx.gt_boxes[0]).argmax(1)]  # (N, 4)
    dist = torch.cat([points - gt[:, :2], gt[:, 2:] - points], dim=1).clamp(min=0)  # (N, 4) l, t, r, b
    return points, dist[None], ctx.image_sizes


def _assigner_inputs(ctx: Context) -> tuple[Tensor, ...]:
    h, w = ctx.scene.hw
    valid = AnchorGenerator.retinanet().valid_flags(ctx.featmap_sizes, torch.tensor([[h, w]]))  # (1, N) padding
    return ctx.anchors, ctx.gt_boxes, ctx.gt_labels, ctx.gt_mask, valid


FLAG_REGION = [0.0, 0.0, 150.0, 330.0]  # the flag behind her, as a "don't care" (ignore) region


def _assigner_ignore_inputs(ctx: Context) -> tuple[Tensor, ...]:
    return (*_assigner_inputs(ctx), torch.tensor([[FLAG_REGION]]), torch.ones(1, 1, dtype=torch.bool))


def _retinanet_targets_inputs(ctx: Context) -> tuple[Tensor, ...]:
    """The photo's RetinaNet anchors, padding flags ((608, 512) batch vs the (600, 512) photo), size, gts."""
    anchors, gt_boxes, gt_labels, gt_mask, valid = _assigner_inputs(ctx)
    return anchors, valid, ctx.image_sizes, gt_boxes, gt_labels, gt_mask


RETINANET_PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)  # RetinaNet's classifier bias init: p = 0.01


def _retinanet_loss_inputs(ctx: Context, seed: int = 0) -> tuple[Tensor, ...]:
    """The photo's targets with seeded random head outputs (logits around the prior, small deltas)."""
    targets = RetinaNetTargets()(*_retinanet_targets_inputs(ctx))
    g = torch.Generator().manual_seed(seed)
    b, n = targets.labels.shape
    logits = torch.randn(b, n, 80, generator=g) + RETINANET_PRIOR_LOGIT  # (1, N, C) C = 80 (COCO)
    deltas = torch.randn(b, n, 4, generator=g) * 0.5  # (1, N, 4)
    return (logits, deltas, targets.labels, targets.label_weights, targets.bbox_targets, targets.bbox_weights,
            targets.num_total_pos)


def _retinanet_postprocess_inputs(ctx: Context, seed: int = 0) -> tuple[Tensor, ...]:
    """RetinaNet head outputs (C = 80, A = 9) for the padded photo: background logits far below score_thr,
    and each anchor with IoU >= 0.5 scoring its gt's class (higher for better IoU) with deltas that move it
    onto that gt, plus noise; so the graph's detections land on the photo's gts."""
    g = torch.Generator().manual_seed(seed)
    a, c = 9, 80
    n = ctx.anchors.shape[0]
    logits = torch.randn(n, c, generator=g) * 0.5 - 7.0  # (N, C) sigmoid well below 0.05
    deltas = torch.randn(n, 4, generator=g) * 0.1  # (N, 4)
    best, arg = ctx.iou.max(dim=1)  # (N,), (N,)
    near = (best >= POS_IOU).nonzero()[:, 0]  # (K,)
    labels = ctx.gt_labels[0][arg[near]]  # (K,)
    logits[near, labels] = best[near] * 4 - 1 + 0.3 * torch.randn(near.numel(), generator=g)  # (K,)
    targets = DeltaXYWHCoder().encode(ctx.anchors[near], ctx.gt_boxes[0][arg[near]])  # (K, 4)
    deltas[near] = targets + 0.05 * torch.randn(near.numel(), 4, generator=g)  # (K, 4)
    cls, box, start = [], [], 0
    for h, w in ctx.featmap_sizes:
        end = start + h * w * a
        cls.append(logits[start:end].reshape(1, h, w, a * c).permute(0, 3, 1, 2).contiguous())  # (1, A*C, H, W)
        box.append(deltas[start:end].reshape(1, h, w, a * 4).permute(0, 3, 1, 2).contiguous())  # (1, A*4, H, W)
        start = end
    return (*cls, *box, ctx.image_sizes)


def _noise(ctx: Context, seed: int = 0) -> Tensor:
    return torch.rand(1, ctx.anchors.shape[0], generator=torch.Generator().manual_seed(seed))  # (1, N)


def _faster_rcnn_anchor_inputs(ctx: Context) -> tuple[Tensor, ...]:
    gen = AnchorGenerator.faster_rcnn()
    anchors = torch.cat(gen.grid_anchors(featmap_sizes_for(ctx.scene.hw, gen.strides)))  # (N, 4) stride 16, 9 per cell
    noise = torch.rand(1, anchors.shape[0], generator=torch.Generator().manual_seed(0))  # (1, N)
    return anchors, ctx.gt_boxes, ctx.gt_mask, ctx.image_sizes, noise


def _sampler_inputs(ctx: Context) -> tuple[Tensor, ...]:
    best = ctx.iou.max(dim=1).values[None]  # (1, N)
    return best >= POS_IOU, best < NEG_IOU, _noise(ctx)


def _proposal_inputs(ctx: Context) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    objectness = (ctx.iou.max(dim=1).values + 0.05 * torch.rand(ctx.anchors.shape[0], generator=g)).clamp(max=1)
    deltas = 0.1 * torch.randn(1, ctx.anchors.shape[0], 4, generator=g)  # (1, N, 4)
    return ctx.anchors, ctx.level_ids, objectness[None], deltas, ctx.image_sizes


SCENE_INPUTS: dict[str, Callable[[Context], tuple[Tensor, ...]]] = {
    "noise_sampler": _sampler_inputs,
    "rpn_anchor_targets": _faster_rcnn_anchor_inputs,
    "rpn_anchor_targets_mmdet": _faster_rcnn_anchor_inputs,
    "rpn_proposals": _proposal_inputs,
    "rpn_proposals_mmdet": _proposal_inputs,
    "max_iou_assigner": _assigner_inputs,
    "max_iou_assigner_ignore": _assigner_ignore_inputs,
    "box_iou": lambda c: (c.anchors[c.level_ids == 2][None], c.gt_boxes),
    "max_iou": lambda c: (c.anchors, c.gt_boxes, c.gt_mask),
    "anchor_grid": lambda c: _feats(c, (8, 16, 32, 64, 128)),
    "point_grid": lambda c: _feats(c, (8, 16, 32)),
    "delta_xywh_encode": lambda c: (c.anchors, _matched(c)),
    "delta_xywh_decode": _decode_inputs,
    "distance_decode": _distance_inputs,
    "nms": lambda c: _candidates(c)[:2],
    "batched_nms": lambda c: _candidates(c),
    "topk": lambda c: (c.iou.max(dim=1).values[None],),
    "retinanet_targets": _retinanet_targets_inputs,
    "retinanet_loss": _retinanet_loss_inputs,
    "retinanet_postprocess": _retinanet_postprocess_inputs,
}



def _topic_scene_inputs() -> None:
    """The later topics keep their photo inputs beside their lesson code (``demo_scene_inputs()`` in each
    module, which imports this module's helpers lazily); they are listed here by import, explicitly."""
    from lessons import atss, dynamic_soft_label, matching, o2f, roi_head_sampling, simota, task_aligned

    for topic in (roi_head_sampling, atss, simota, o2f, task_aligned, dynamic_soft_label, matching):
        SCENE_INPUTS.update(topic.demo_scene_inputs())


_topic_scene_inputs()


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def write_figures(ctx: Context, out: Path) -> list[Path]:
    from lessons import draw

    out.mkdir(parents=True, exist_ok=True)
    scene = ctx.scene
    best, arg = ctx.iou.max(dim=1)  # (N,), (N,)
    gt_index = torch.where(best >= POS_IOU, arg, torch.where(best < NEG_IOU, -1, -2))  # (N,)
    face = scene.class_names.index("face") if "face" in scene.class_names else 0
    face_gt = int((scene.labels == face).nonzero()[0, 0]) if (scene.labels == face).any() else 0
    level = 2
    sel = ctx.level_ids == level
    fb = scene.boxes[face_gt].tolist()
    face_centre = ((fb[0] + fb[2]) / 2, (fb[1] + fb[3]) / 2)
    figures = {
        "01_gts.png": draw.show_boxes(scene.image, scene.boxes, scene.labels, scene.class_names,
                                      title="The embedded scene: hand-labelled gts"),
        "02_anchors.png": draw.anchor_levels(scene.image, ctx.anchors, ctx.level_ids, at=face_centre,
                                             strides=[8, 16, 32, 64, 128],
                                             title="RetinaNet anchors: the 9 of the location nearest the face, "
                                             "on each level (dots: every location)"),
        "03_iou_heatmap.png": draw.iou_heatmap(ctx.iou[sel, face_gt], ctx.featmap_sizes[level], scene.image,
                                               stride=32, gt_box=scene.boxes[face_gt],
                                               title=f"IoU with gt {face_gt} on level {level} (stride 32)"),
        "04_maxiou_preview.png": draw.assignment_map(scene.image, ctx.anchors, scene.boxes, gt_index,
                                                     gt_labels=scene.labels, class_names=scene.class_names,
                                                     title=f"MaxIoU preview: IoU >= {POS_IOU} positive, "
                                                     f"< {NEG_IOU} negative"),
    }
    paths = []
    for name, fig in figures.items():
        path = out / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    inputs: str
    eager_ms: float
    export_s: float
    onnx_ms: float
    provider: str
    verdict: str
    max_abs_diff: float
    detail: str


def _shapes(args: tuple[Tensor, ...]) -> str:
    return " ".join("x".join(map(str, a.shape)) or "()" for a in args)


def run_component(name: str, ctx: Context, out: Path, providers: list[str]) -> Row:
    entry = catalog.get(name)
    make = SCENE_INPUTS.get(name)
    args = make(ctx) if make else entry.example(entry.test_sizes[-1])
    module = entry.build()
    entry.run_eager(module, args)  # warm-up (first calls pay for dispatch and allocation)
    t0 = time.perf_counter()
    eager = entry.run_eager(module, args)
    eager_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = entry.export()
    export_s = time.perf_counter() - t0
    xonnx.save(model, out / f"{name}.onnx")
    sess = xonnx.session(model, providers)
    xonnx.run(sess, args)  # warm-up
    t0 = time.perf_counter()
    got = xonnx.run(sess, args)
    onnx_ms = (time.perf_counter() - t0) * 1000
    cmps = xonnx.compare([o.name for o in entry.outputs], eager, got, atol=entry.atol, rtol=entry.rtol)
    verdict = "exact" if all(c.exact for c in cmps) else ("close" if all(c.close for c in cmps) else "DIFFERS")
    detail = "; ".join(f"{o.name} {tuple(e.shape)}" for o, e in zip(entry.outputs, eager))
    return Row(name, _shapes(args), eager_ms, export_s, onnx_ms, sess.get_providers()[0].replace(
        "ExecutionProvider", ""), verdict, max(c.max_abs_diff for c in cmps), detail)


def summary_table(rows: list[Row]) -> str:
    lines = [
        "| component | inputs | eager ms | export s | onnxruntime ms | provider | parity | max abs diff | outputs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.inputs} | {r.eager_ms:.1f} | {r.export_s:.1f} | {r.onnx_ms:.1f} | "
                     f"{r.provider} | {r.verdict} | {r.max_abs_diff:.2g} | {r.detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these catalog entries")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--providers", default=None, help="comma-separated onnxruntime providers")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = args.only or catalog.names()
    providers = args.providers.split(",") if args.providers else xonnx.best_providers()

    scene = default_scene()
    h, w = scene.hw
    print(f"scene: {scene.name}, (H, W) = ({h}, {w}), {scene.num_gts} gts: {', '.join(scene.names())}")
    ctx = build_context(scene)
    counts = [int((ctx.level_ids == i).sum()) for i in range(len(ctx.featmap_sizes))]
    print(f"anchors: padded to {ctx.padded_hw}, featmaps {ctx.featmap_sizes} -> "
          f"{' + '.join(f'{c:,}' for c in counts)} = {sum(counts):,} RetinaNet anchors")
    best = ctx.iou.max(dim=1).values
    per_gt = ctx.iou.max(dim=0).values
    print(f"IoU: {int((best >= POS_IOU).sum())} anchors >= {POS_IOU}, {int((best < NEG_IOU).sum()):,} < {NEG_IOU}, "
          f"{int(((best >= NEG_IOU) & (best < POS_IOU)).sum())} in between; best IoU per gt: "
          + ", ".join(f"{n} {v:.2f}" for n, v in zip(scene.names(), per_gt.tolist())))
    if not args.no_figures:
        paths = write_figures(ctx, out / "figures")
        print(f"figures: {len(paths)} under {out / 'figures'}")
    print(f"onnxruntime providers: {', '.join(providers)}")

    rows: list[Row] = []
    for name in tqdm(names, desc="export + onnxruntime", unit="component", file=sys.stdout):
        rows.append(run_component(name, ctx, out / "onnx", providers))
    table = summary_table(rows)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(f"# assignlab demo on {scene.name}\n\n{table}\n")
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    bad = [r.name for r in rows if r.verdict == "DIFFERS"]
    print(f"{len(rows) - len(bad)} of {len(rows)} components agree with eager in onnxruntime; "
          f"graphs under {out / 'onnx'}")
    return 1 if bad else 0
