"""Notebook 10 (the assignment arena): its exercise checkers, and the facts its text states.

The exercise solutions are read out of the notebook (the ``def`` of the exercise cell, run on its own), so the
answer the notebook ships is the one checked. Each wrong solution breaks one rule the notebook teaches (an
ignored prior is not a positive, a padded row is not a gt, a threshold's boundary, the class, the visiting
order); the checker must raise ``AssertionError`` on it.

The facts: the numbers the notebook states in sentences, recomputed the way it computes them, and the
committed ``benchmarks/results/arena.json`` it reads (complete, no failed run, the best assigner's lead
outside the seed spread, the onnxruntime-backend proof).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from exportable.boxes import box_iou
from lessons.arena import bench, recipes
from lessons.arena.data import CLASSES, make_split, to_batch
from lessons.arena.evaluate import assignment_stats
from lessons.arena.exercises import check_assignment_stats, check_duplicates, stats_case
from lessons.arena.model import TinyDetector, decode_boxes, make_priors
from lessons.arena.train import DEFAULT_CONFIG

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "10_arena.ipynb"


def notebook_solution(name: str) -> Callable:
    """The function ``name`` as the notebook's exercise cell defines it (only the ``def`` s of that cell run)."""
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"def {name}(" in source:
            tree = ast.parse(source)
            defs = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef)], type_ignores=[])
            namespace = {"torch": torch, "np": np, "box_iou": box_iou}
            exec(compile(defs, f"10_arena.ipynb:{name}", "exec"), namespace)
            return namespace[name]
    raise LookupError(f"10_arena.ipynb has no cell defining {name}")


def test_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    headings = [line for c in cells if c["cell_type"] == "markdown" for line in "".join(c["source"]).splitlines()
                if line.startswith("## ")]
    assert headings[-2:] == ["## Questions", "## Appendix: the arena against the papers' claims"]


# -- exercise 1: positives per gt, gts without a positive ----------------------------------------------------


def _counts(gt_index, gt_mask, positive):
    return torch.stack([torch.bincount(gt_index[i][positive[i]], minlength=gt_mask.shape[1])
                        for i in range(len(gt_index))])  # (B, M) positives of each gt


def _stats_ignored_is_positive(gt_index, gt_mask):  # -2 (ignored) counted as a positive
    pos = gt_index != -1  # (B, N)
    return float(pos.sum() / gt_mask.sum()), float(((_counts(gt_index.clamp(min=0), gt_mask, pos) == 0)
                                                     & gt_mask).sum() / gt_mask.sum())


def _stats_padding_is_a_gt(gt_index, gt_mask):  # padded rows counted as gts without a positive
    pos = gt_index >= 0
    return float(pos.sum() / gt_mask.numel()), float((_counts(gt_index, gt_mask, pos) == 0).sum() / gt_mask.numel())


def _stats_mean_over_images(gt_index, gt_mask):  # per-image ratios averaged: an image without gts counts as 0
    per_image = []
    for i in range(len(gt_index)):
        m = int(gt_mask[i].sum())
        pos = gt_index[i] >= 0
        counts = torch.bincount(gt_index[i][pos], minlength=gt_mask.shape[1])[: max(m, 1)]
        per_image.append((float(pos.sum()) / m, float((counts[:m] == 0).sum()) / m) if m else (0.0, 0.0))
    return tuple(float(np.mean(v)) for v in zip(*per_image))


def test_stats_case_holds_the_boundaries():
    gt_index, gt_mask = stats_case()
    assert (gt_index == -2).any() and (~gt_mask[0]).any() and not gt_mask[1].any()
    assert assignment_stats_of(gt_index, gt_mask) == pytest.approx((4 / 3, 1 / 3))  # gt 0 x3, gt 1 x1, gt 2 none


def assignment_stats_of(gt_index, gt_mask):
    from exportable.assigners.result import AssignResult

    b, n = gt_index.shape
    fake = AssignResult(gt_index, gt_index, torch.zeros(b, n, 4), torch.zeros(b, n), torch.zeros(b, n),
                        torch.ones(b, n))
    s = assignment_stats([fake], [gt_mask])
    return s["pos_per_gt"], s["gts_without_pos"]


def test_ex1_accepts_the_notebook_solution():
    assert check_assignment_stats(notebook_solution("my_assignment_stats"))


@pytest.mark.parametrize("wrong", [_stats_ignored_is_positive, _stats_padding_is_a_gt, _stats_mean_over_images])
def test_ex1_rejects(wrong):
    with pytest.raises(AssertionError):
        check_assignment_stats(wrong)


# -- exercise 2: duplicates without NMS -----------------------------------------------------------------------


def _dups(boxes, scores, labels, gt_boxes, gt_labels, *, strict_iou=False, strict_score=False, any_class=False,
          best_only=False, sort=True):
    order = torch.argsort(scores, descending=True, stable=True) if sort else torch.arange(len(scores))
    iou = box_iou(boxes, torch.as_tensor(gt_boxes))  # (D, M)
    same = torch.ones_like(iou, dtype=torch.bool) if any_class else labels[:, None] == torch.as_tensor(gt_labels)
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    dups = 0
    for d in order.tolist():
        if (scores[d] <= 0.3) if strict_score else (scores[d] < 0.3):
            continue
        hit = ((iou[d] > 0.5) if strict_iou else (iou[d] >= 0.5)) & same[d]  # (M,)
        if not hit.any():
            continue
        if best_only:  # the best gt or nothing: a taken best gt makes a duplicate even when another is free
            g = int(torch.where(hit, iou[d], -1.0).argmax())
            dups += int(taken[g])
            taken[g] = True
            continue
        free = hit & ~taken
        if free.any():
            taken[int(torch.where(free, iou[d], -1.0).argmax())] = True
        else:
            dups += 1
    return dups


def test_ex2_accepts_the_notebook_solution_and_the_independent_one():
    assert check_duplicates(notebook_solution("my_duplicates"))
    assert check_duplicates(_dups)


@pytest.mark.parametrize("wrong", ["strict_iou", "strict_score", "any_class", "best_only", "unsorted"])
def test_ex2_rejects(wrong):
    kwargs = {"sort": False} if wrong == "unsorted" else {wrong: True}
    with pytest.raises(AssertionError):
        check_duplicates(lambda *a: _dups(*a, **kwargs))


# -- facts the notebook states ---------------------------------------------------------------------------------


def test_data_facts():
    val = make_split("val", 256)
    sides = np.concatenate([b[:, 2:] - b[:, :2] for b in val.boxes])  # (M, 2)
    assert len(sides) == 1334  # regression value of the seeded split
    assert np.mean(sides.max(1) < 8) > 0.2  # "one object in five is smaller than a stride-8 cell"
    assert np.mean(sides.max(1) / sides.min(1) >= 3) > 0.15
    assert np.mean(sides.prod(1) < 32**2) > 0.9  # "almost all are small by COCO's rule"


def test_priors_and_untrained_assignment_groups():
    priors = make_priors()
    assert priors.level_ids.bincount().tolist() == [256, 64, 16]  # 128 / 8, / 16, / 32 cells a side
    torch.manual_seed(0)
    model = TinyDetector(len(CLASSES))
    images, gts = to_batch(make_split("train", 256), np.arange(16))
    with torch.no_grad():
        out = model(images)
    pred = recipes.Predictions(out.cls_logits, decode_boxes(priors, out.box_deltas), out.quality_logits)
    without = {}
    for name, r in recipes.RECIPES.items():
        res = r.assign(r.build(len(CLASSES)), priors, pred, gts, recipes.Progress(0, 12))
        without[name] = assignment_stats([res], [gts.mask])["gts_without_pos"]
    # "MaxIoU and SimOTA give almost every gt something; ATSS, TOOD and O2F leave more than one in five"
    assert without["retinanet"] < 0.05 and without["simota"] < 0.05
    assert min(without["atss"], without["tood"], without["o2f"]) > 0.2


@pytest.fixture(scope="module")
def committed():
    return bench.load_results()


def test_committed_arena_is_complete(committed):
    assert committed["seeds"] == [0, 1, 2]
    assert set(committed["recipes"]) == set(recipes.RECIPES)
    eager = [r for r in committed["runs"] if r["backend"] == "eager"]
    assert len(eager) == 3 * len(recipes.RECIPES) and not any("error" in r for r in committed["runs"])
    assert committed["config"] == asdict(DEFAULT_CONFIG)  # make arena's defaults


def test_committed_arena_facts(committed):
    summary = bench.summarise(committed)
    best = max(summary, key=lambda n: summary[n]["AP50"][0])
    assert best == "simota" and summary[best]["AP50"][2] > 0.3  # every seed well above chance
    assert summary[best]["AP50"][2] > max(summary[n]["AP50"][3] for n in summary if n != best)  # outside the spread
    for name in ("atss", "tood", "o2f"):  # the point-inside-box assigners leave tiny objects without a positive
        assert summary[name]["gts_without_pos"][0] > 0.15 > summary["simota"]["gts_without_pos"][0]


def test_committed_onnxruntime_proof(committed):
    o = committed["onnxruntime"]
    assert o["recipe"] == "tood" and o["steps_same_assignment"] == o["steps"] == 1024
    assert o["loss_curves_bit_identical"] and o["max_abs_loss_diff"] == 0.0
    assert o["metrics_eager"] == o["metrics_onnxruntime"]
