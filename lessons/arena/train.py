"""Training one recipe: the loop, the onnxruntime assignment backend, and the evaluation of a trained model.

Shape shorthand: ``B`` images per batch, ``N`` priors, ``M`` gts per image (padded), ``C`` classes.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``.

One training step (:func:`train_step`), the same for every recipe:

1. forward the batch; decode the boxes;
2. assign, without gradients, on the detached predictions (probabilities, never logits);
3. the recipe's loss on the :class:`AssignResult`; AdamW, gradient norm clipped at 10.

Everything is seeded: the weights by ``torch.manual_seed(seed)``, the batch order and the flips by
``numpy.random.default_rng(seed)``. Two runs with the same seed on the same machine give the same losses.

``assign_backend="onnxruntime"`` swaps the eager assigner for its exported graph
(``exportable.catalog``), run by onnxruntime inside the loop; ``check_backend=True`` also runs the eager
assigner on the same inputs at every step and records whether the two assignments agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from exportable import catalog
from exportable import onnx as xonnx
from exportable.assigners.result import AssignResult
from exportable.batching import GtBatch
from lessons.arena.data import CLASSES, IMAGE_SIZE, KINDS, ArenaSplit, coco_dict, make_split, to_batch
from lessons.arena.evaluate import (
    assignment_stats,
    coco_ap,
    coco_from_dict,
    duplicates_per_gt,
    postprocess,
    to_coco_detections,
)
from lessons.arena.model import Priors, TinyDetector, decode_boxes, make_priors
from lessons.arena.recipes import RECIPES, Predictions, Progress, Recipe

__all__ = ["ArenaConfig", "DEFAULT_CONFIG", "ArenaData", "OnnxAssigner", "RunResult", "load_data", "train_step",
           "train", "predict", "evaluate"]


@dataclass(frozen=True)
class ArenaConfig:
    """Every setting of a run; the defaults are ``make arena``'s."""

    epochs: int = 8
    train_images: int = 1024
    val_images: int = 256
    batch_size: int = 8
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 1e-4
    warmup_steps: int = 60  # linear warm-up, then cosine decay to 5 % of lr
    grad_clip: float = 10.0
    anchor_scale: float = 2.0  # the square anchor's side, in strides
    width: int = 64  # FPN / head channels
    data_seed: int = 0
    augment: bool = True  # random left-right flips of training images
    eval_every_epoch: bool = True  # validation AP50 for the curves, every `eval_every` epochs and at the end
    eval_every: int = 2


DEFAULT_CONFIG = ArenaConfig()


@dataclass
class ArenaData:
    """The fixed train and validation splits, with the validation set's COCO ground truth."""

    train: ArenaSplit
    val: ArenaSplit
    coco_val: Any  # pycocotools.coco.COCO


def load_data(config: ArenaConfig = DEFAULT_CONFIG) -> ArenaData:
    train = make_split("train", config.train_images, config.data_seed)
    val = make_split("val", config.val_images, config.data_seed)
    return ArenaData(train, val, coco_from_dict(coco_dict(val)))


_EXPORTED: dict[str, Any] = {}  # catalog entry -> onnx.ModelProto, one export per process


class OnnxAssigner:
    """An exported assigner graph run by onnxruntime, called like the eager module it replaces.

    ``entry`` is the catalog entry; its parameters must be the eager assigner's (checked through
    ``extra_repr``), so the graph computes the same assignment. Inputs go in the graph's input order
    (the eager ``forward``'s), outputs come back as an :class:`AssignResult` of CPU tensors. The graph is
    exported once per process (exports take seconds).
    """

    def __init__(self, entry: str, eager: nn.Module) -> None:
        e = catalog.get(entry)
        if e.build().extra_repr() != eager.extra_repr():
            raise ValueError(f"entry: {entry}'s parameters ({e.build().extra_repr()}) differ from the eager "
                             f"assigner's ({eager.extra_repr()})")
        self.entry = entry
        if entry not in _EXPORTED:
            _EXPORTED[entry] = e.export()
        self.model = _EXPORTED[entry]
        self.session = xonnx.session(self.model, ["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *inputs: torch.Tensor) -> AssignResult:
        outs = xonnx.run(self.session, list(inputs))
        named = {name: torch.from_numpy(np.ascontiguousarray(o)) for name, o in zip(self.output_names, outs)}
        return AssignResult(**named)


@dataclass
class RunResult:
    """What one run produced (``model`` is the trained detector; the rest is JSON-friendly)."""

    recipe: str
    seed: int
    config: ArenaConfig
    losses: list[float] = field(default_factory=list)  # total loss per step
    terms: dict[str, list[float]] = field(default_factory=dict)  # each loss term per step
    positives: list[int] = field(default_factory=list)  # positives per step
    epoch_ap50: list[tuple[int, float]] = field(default_factory=list)  # (epoch, validation AP50) every eval_every
    train_seconds: float = 0.0  # the training loop alone, without evaluations
    backend: str = "eager"
    backend_checks: list[dict[str, float]] = field(default_factory=list)  # per step, onnxruntime vs eager
    metrics: dict[str, float] = field(default_factory=dict)
    model: TinyDetector | None = None


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def train_step(
    model: TinyDetector,
    recipe: Recipe,
    assigner,
    priors: Priors,
    images: torch.Tensor,
    gts: GtBatch,
    progress: Progress,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], AssignResult, Predictions]:
    """Steps 1-3 up to the loss (no optimiser step): ``(loss, terms, assignment, predictions)``."""
    out = model(images)  # 1. (B, N, C), (B, N, 4), (B, N)
    pred = Predictions(out.cls_logits, decode_boxes(priors, out.box_deltas), out.quality_logits)
    with torch.no_grad():
        result = recipe.assign(assigner, priors, pred.detach(), gts, progress)  # 2.
    terms = recipe.loss(pred, priors, result)  # 3.
    return sum(terms.values()), terms, result, pred


def _compare(a: AssignResult, b: AssignResult) -> dict[str, float]:
    same = all(torch.equal(x, y) for x, y in ((a.gt_index, b.gt_index), (a.labels, b.labels)))
    diff = max(float((x - y).abs().max()) if x.numel() else 0.0
               for x, y in ((a.boxes, b.boxes), (a.overlaps, b.overlaps), (a.target_scores, b.target_scores),
                            (a.weights, b.weights)))
    return {"same_assignment": float(same), "max_float_diff": diff}


def train(
    name: str,
    seed: int = 0,
    config: ArenaConfig = DEFAULT_CONFIG,
    data: ArenaData | None = None,
    *,
    assign_backend: str = "eager",
    check_backend: bool = False,
    steps: int | None = None,
    progress_bar: bool = True,
    evaluate_at_end: bool = True,
) -> RunResult:
    """Train recipe ``name`` from scratch with ``seed``; ``steps`` cuts the run short (smoke tests, demos)."""
    if name not in RECIPES:
        raise KeyError(f"name: unknown recipe {name!r}; known: {sorted(RECIPES)}")
    if assign_backend not in ("eager", "onnxruntime"):
        raise ValueError(f"assign_backend: expected 'eager' or 'onnxruntime', got {assign_backend!r}")
    recipe = RECIPES[name]
    if assign_backend == "onnxruntime" and recipe.onnx_entry is None:
        raise ValueError(f"assign_backend: recipe {name!r} has no exported assigner (onnx_entry)")
    data = data if data is not None else load_data(config)
    num_classes = len(CLASSES)
    torch.manual_seed(seed)
    model = TinyDetector(num_classes, width=config.width, quality_prior=recipe.quality_prior)
    priors = make_priors(IMAGE_SIZE, anchor_scale=config.anchor_scale)
    eager = recipe.build(num_classes)
    assigner = eager
    if assign_backend == "onnxruntime":
        assigner = OnnxAssigner(recipe.onnx_entry, eager)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(seed)
    per_epoch = len(data.train) // config.batch_size
    total = per_epoch * config.epochs if steps is None else steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, config.warmup_steps))
    run = RunResult(name, seed, config, backend=assign_backend)
    bar = tqdm(total=total, desc=f"{name} seed {seed}", disable=not progress_bar, mininterval=2.0, leave=True)
    step, ema, t_train = 0, None, 0.0
    for epoch in range(config.epochs):
        order = rng.permutation(len(data.train))  # (K,)
        flips = (rng.random(len(data.train)) < 0.5) & config.augment  # (K,)
        model.train()
        t0 = time.perf_counter()
        for s in range(per_epoch):
            if step >= total:
                break
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]  # (B,)
            images, gts = to_batch(data.train, idx, flips[idx])
            prog = Progress(epoch, config.epochs)
            loss, terms, result, pred = train_step(model, recipe, assigner, priors, images, gts, prog)
            if check_backend and assigner is not eager:
                with torch.no_grad():
                    reference = recipe.assign(eager, priors, pred.detach(), gts, prog)
                run.backend_checks.append(_compare(result, reference))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{name} seed {seed}: loss is {value} at step {step}")
            run.losses.append(value)
            for k, v in terms.items():
                run.terms.setdefault(k, []).append(float(v.detach()))
            run.positives.append(int(result.positive.sum()))
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            bar.set_postfix(loss=f"{ema:.3f}", pos=run.positives[-1], refresh=False)
            bar.update(1)
            step += 1
        t_train += time.perf_counter() - t0
        due = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
        if config.eval_every_epoch and due and step >= per_epoch * (epoch + 1) and steps is None:
            run.epoch_ap50.append((epoch + 1, evaluate(model, name, data, config, quick=True)["AP50"]))
            bar.set_postfix(loss=f"{ema:.3f}", val_AP50=f"{run.epoch_ap50[-1][1]:.3f}", refresh=False)
        if step >= total:
            break
    bar.close()
    run.train_seconds = t_train
    run.model = model
    if evaluate_at_end:
        run.metrics = evaluate(model, name, data, config)
    return run


@torch.no_grad()
def predict(model: TinyDetector, name: str, images: torch.Tensor, config: ArenaConfig = DEFAULT_CONFIG) -> Predictions:
    """Predictions of a batch in eval mode (decoded boxes)."""
    model.eval()
    priors = make_priors(images.shape[-1], anchor_scale=config.anchor_scale)
    out = model(images)
    return Predictions(out.cls_logits, decode_boxes(priors, out.box_deltas), out.quality_logits)


@torch.no_grad()
def evaluate(model: TinyDetector, name: str, data: ArenaData, config: ArenaConfig = DEFAULT_CONFIG, *,
             quick: bool = False, batch: int = 64) -> dict[str, float]:
    """Validation metrics of a trained model: COCO AP (with NMS; and without, for every recipe), AP50 per
    scene kind, duplicates per gt without NMS, positives per gt and gts without positive.

    ``quick`` computes AP50 with NMS only (the per-epoch curve)."""
    recipe = RECIPES[name]
    model.eval()
    val = data.val
    priors = make_priors(IMAGE_SIZE, anchor_scale=config.anchor_scale)
    assigner = recipe.build(len(CLASSES))
    last = Progress(config.epochs - 1, config.epochs)
    dets, dets_free, raw_free, results, masks = [], [], [], [], []
    for start in range(0, len(val), batch):
        idx = np.arange(start, min(start + batch, len(val)))
        images, gts = to_batch(val, idx)
        out = model(images)
        pred = Predictions(out.cls_logits, decode_boxes(priors, out.box_deltas), out.quality_logits)
        scores = recipe.score(pred)  # (B, N, C)
        for j, i in enumerate(idx):
            b, s, lab = postprocess(scores[j], pred.boxes[j], nms=True, image_size=IMAGE_SIZE)
            dets += to_coco_detections(int(i) + 1, b, s, lab)
            if not quick:
                b, s, lab = postprocess(scores[j], pred.boxes[j], nms=False, image_size=IMAGE_SIZE)
                dets_free += to_coco_detections(int(i) + 1, b, s, lab)
                raw_free.append((b, s, lab))
        if not quick:
            results.append(recipe.assign(assigner, priors, pred, gts, last))
            masks.append(gts.mask)
    if quick:
        return {"AP50": coco_ap(data.coco_val, dets)["AP50"]}
    metrics = coco_ap(data.coco_val, dets)
    free = coco_ap(data.coco_val, dets_free)
    metrics["AP_no_nms"], metrics["AP50_no_nms"] = free["AP"], free["AP50"]
    for kind in KINDS:
        ids = [i + 1 for i in range(len(val)) if val.kinds[i] == kind]
        metrics[f"AP50_{kind}"] = coco_ap(data.coco_val, dets, ids)["AP50"]
    metrics["dup_per_gt"] = duplicates_per_gt(raw_free, val.boxes, val.labels)
    metrics.update(assignment_stats(results, masks))
    return metrics
