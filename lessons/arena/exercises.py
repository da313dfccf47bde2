"""Notebook 10's exercise checks: hand-built cases that sit on every boundary the notebook teaches.

Shape shorthand: ``B`` images, ``N`` priors, ``M`` gts per image (padded), ``D`` detections.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``.

- :func:`check_assignment_stats`: positives per gt and the fraction of gts without a positive, from
  ``gt_index`` and ``gt_mask``. The case holds ignored priors (``-2``, not positives), padded gt rows
  (not gts), a gt with no positive and a batch whose second image has no gt at all.
- :func:`check_duplicates`: duplicates among detections without NMS. The case holds an IoU of exactly
  0.5 and a score of exactly 0.3 (both count), a detection of the wrong class (a false positive, not a
  duplicate), a detection whose best gt is taken while a second one is free (it takes the free one), and
  detections handed over out of score order (visiting them in the given order finds a different count).

Each check runs the learner's function on the case and compares with the reference through
:func:`lessons.check.check`, which raises when the answer is not close.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from exportable.assigners.result import AssignResult
from lessons.arena.evaluate import assignment_stats, duplicates_per_gt
from lessons.check import CheckResult, check

__all__ = ["stats_case", "duplicates_case", "check_assignment_stats", "check_duplicates"]


def stats_case() -> tuple[Tensor, Tensor]:
    """``gt_index (B, N)`` and ``gt_mask (B, M)`` with ignored priors, padding and an image without gts."""
    gt_index = torch.tensor([
        [0, 0, 0, -2, -2, -2, 1, -1, -1, -1],  # image 0: gt 0 x3, gt 1 x1, gt 2 none, 3 ignored
        [-1, -1, -2, -1, -1, -1, -1, -1, -1, -1],  # image 1: no gt (one ignored prior all the same)
    ])  # (B, N) = (2, 10)
    gt_mask = torch.tensor([[True, True, True, False], [False, False, False, False]])  # (B, M) = (2, 4)
    return gt_index, gt_mask


def _reference_stats(gt_index: Tensor, gt_mask: Tensor) -> tuple[float, float]:
    b, n = gt_index.shape
    fake = AssignResult(gt_index, gt_index, torch.zeros(b, n, 4), torch.zeros(b, n), torch.zeros(b, n),
                        torch.ones(b, n))
    s = assignment_stats([fake], [gt_mask])
    return s["pos_per_gt"], s["gts_without_pos"]


def check_assignment_stats(fn: Callable[[Tensor, Tensor], tuple[float, float]]) -> CheckResult:
    """``fn(gt_index (B, N), gt_mask (B, M)) -> (positives per gt, fraction of gts without positive)``."""
    gt_index, gt_mask = stats_case()
    # rounded to 6 decimals: a float32 division (4 / 3) and Python's float64 one are the same answer
    got = tuple(round(float(v), 6) for v in fn(gt_index.clone(), gt_mask.clone()))
    expected = tuple(round(v, 6) for v in _reference_stats(gt_index, gt_mask))
    return check("(pos_per_gt, gts_without_pos)", got, expected)


def duplicates_case() -> tuple[Tensor, Tensor, Tensor, np.ndarray, np.ndarray]:
    """One image: detections ``(D, 4)``, scores ``(D,)``, labels ``(D,)``, gts ``(M, 4)``, gt labels ``(M,)``.

    Two duplicates: ``y`` (its only gt went to ``x``, which scores higher) and ``f`` (score exactly 0.3, gt 2
    taken by ``e`` at IoU exactly 0.5). ``z2``'s best gt is taken but a second one is free: not a duplicate.
    """
    gt_boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [40, 40, 60, 60], [80, 0, 90, 10], [84, 0, 94, 10]],
                        np.float32)  # (M, 4) gts 0/1 and 3/4 overlap pairwise (IoU 0.43)
    gt_labels = np.array([0, 0, 1, 0, 0])  # (M,)
    dets = {  # name: (box, score, class)
        "x": ([1, 0, 11, 10], 0.95, 0),  # IoU 0.82 with gt 0, 0.54 with gt 1: takes gt 0
        "y": ([0, 0, 10, 10], 0.90, 0),  # gt 0 exactly, taken; 0.43 with gt 1: a duplicate
        "z1": ([84, 0, 94, 10], 0.85, 0),  # gt 4 exactly: takes it
        "z2": ([83, 0, 93, 10], 0.80, 0),  # 0.82 with gt 4 (taken), 0.54 with gt 3 (free): takes gt 3
        "d": ([40, 40, 60, 60], 0.70, 0),  # gt 2's place, wrong class: a false positive, not a duplicate
        "e": ([40, 40, 60, 80], 0.60, 1),  # IoU exactly 0.5 with gt 2: takes it
        "f": ([40, 40, 60, 60], 0.30, 1),  # score exactly 0.3, gt 2 taken: a duplicate
        "g": ([0, 0, 10, 10], 0.29, 0),  # below the score threshold: not looked at
    }
    given = ["y", "f", "z1", "x", "g", "e", "d", "z2"]  # out of score order: visiting in this order finds 1
    boxes = torch.tensor([dets[k][0] for k in given], dtype=torch.float32)  # (D, 4)
    scores = torch.tensor([dets[k][1] for k in given])  # (D,)
    labels = torch.tensor([dets[k][2] for k in given])  # (D,)
    return boxes, scores, labels, gt_boxes, gt_labels


def check_duplicates(fn: Callable[..., int]) -> CheckResult:
    """``fn(boxes (D, 4), scores (D,), labels (D,), gt_boxes (M, 4), gt_labels (M,)) -> duplicates (int)``:
    score ``>= 0.3``, IoU ``>= 0.5`` with a gt of the same class, best score first."""
    boxes, scores, labels, gt_boxes, gt_labels = duplicates_case()
    ref = duplicates_per_gt([(boxes, scores, labels)], [gt_boxes], [gt_labels]) * len(gt_boxes)
    got = fn(boxes.clone(), scores.clone(), labels.clone(), gt_boxes.copy(), gt_labels.copy())
    return check("duplicates", int(got), int(round(ref)))
