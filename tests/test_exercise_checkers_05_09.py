"""The exercise checkers of notebooks 05-09 reject plausible wrong answers and accept the notebooks' own.

Each exercise's solution is read out of its notebook (the ``def`` in the exercise cell, run on its own), so
the answer the notebook ships is the one checked here. Each wrong solution below breaks one rule its
notebook teaches (a threshold's boundary, the tie rule, a cap, a normaliser); the checker must raise
``AssertionError`` on it.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lessons import atss as atss_ref
from lessons import o2f as o2f_ref
from lessons import retinanet_targets as retina_ref
from lessons import simota as simota_ref
from lessons import task_aligned as tal_ref

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_solution(notebook: str, name: str) -> Callable:
    """The function ``name`` as the notebook's exercise cell defines it (only the ``def`` s of that cell run)."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"def {name}(" in source:
            tree = ast.parse(source)
            defs = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef)], type_ignores=[])
            namespace = {"torch": torch, "F": F, "math": math, "NUM_CLASSES": 80}
            exec(compile(defs, f"{notebook}:{name}", "exec"), namespace)
            return namespace[name]
    raise LookupError(f"{notebook} has no cell defining {name}")


def rejects(checker: Callable, fn: Callable) -> None:
    with pytest.raises(AssertionError):
        checker(fn)


# --------------------------------------------------------------------------------------------
# 05 · RetinaNet targets
# --------------------------------------------------------------------------------------------


def _steps_7_8(neg_le=False, pos_gt=False, lower_bound=True, fixed=False, last_on_ties=False):
    def fn(overlaps, pos_iou_thr=0.5, neg_iou_thr=0.4):
        if fixed:
            pos_iou_thr, neg_iou_thr = 0.5, 0.4
        if last_on_ties:  # argmax of the flipped rows: the HIGHER gt index wins a tie
            max_overlaps, arg = overlaps.flip(0).max(dim=0)
            argmax = overlaps.shape[0] - 1 - arg
        else:
            max_overlaps, argmax = overlaps.max(dim=0)
        gt_index = torch.full_like(argmax, -2)
        neg = (max_overlaps <= neg_iou_thr) if neg_le else (max_overlaps < neg_iou_thr)
        if lower_bound:
            neg &= max_overlaps >= 0
        gt_index[neg] = -1
        pos = (max_overlaps > pos_iou_thr) if pos_gt else (max_overlaps >= pos_iou_thr)
        gt_index[pos] = argmax[pos]
        return gt_index

    return fn


def test_05_ex1_accepts_the_notebook_solution(capsys):
    retina_ref.check_steps_7_8(notebook_solution("05_retinanet_targets.ipynb", "my_steps_7_8"))
    out = capsys.readouterr().out
    assert "exact: False" not in out and out.count("| ok ") >= 9


@pytest.mark.parametrize("wrong", [
    pytest.param(_steps_7_8(neg_le=True), id="negatives at IoU <= 0.4"),
    pytest.param(_steps_7_8(pos_gt=True), id="positives at IoU > 0.5"),
    pytest.param(_steps_7_8(lower_bound=False), id="ignored column (-1) made negative"),
    pytest.param(_steps_7_8(fixed=True), id="thresholds hard-coded to 0.5 / 0.4"),
    pytest.param(_steps_7_8(last_on_ties=True), id="tie to the higher gt index"),
])
def test_05_ex1_rejects(wrong):
    rejects(retina_ref.check_steps_7_8, wrong)


def test_05_ex2_accepts_the_notebook_solution():
    retina_ref.check_num_total_pos(notebook_solution("05_retinanet_targets.ipynb", "my_num_total_pos"))


def _total_pos_unclamped(labels, label_weights, num_classes=80):
    return ((labels < num_classes) & (label_weights > 0)).sum()


def _total_pos_clamped_once(labels, label_weights, num_classes=80):
    return ((labels < num_classes) & (label_weights > 0)).sum().clamp(min=1)  # max(sum, 1), not sum of max


def _total_pos_counts_weights(labels, label_weights, num_classes=80):
    return (label_weights > 0).sum(dim=1).clamp(min=1).sum()  # negatives counted as positives


@pytest.mark.parametrize("wrong", [_total_pos_unclamped, _total_pos_clamped_once, _total_pos_counts_weights])
def test_05_ex2_rejects(wrong):
    rejects(retina_ref.check_num_total_pos, wrong)


def test_05_ex3_accepts_the_notebook_solution():
    retina_ref.check_focal_weight(notebook_solution("05_retinanet_targets.ipynb", "my_focal_weight"))


def _focal_alpha_everywhere(logits, labels, alpha=0.25, gamma=2.0):
    c = logits.shape[1]
    t = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
    p = logits.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    return alpha * (1 - p_t) ** gamma  # alpha also on the negatives, instead of 1 - alpha


def _focal_one_minus_p(logits, labels, alpha=0.25, gamma=2.0):
    c = logits.shape[1]
    t = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * (1 - logits.sigmoid()) ** gamma  # (1 - p)^gamma: wrong for t = 0


def _focal_no_background(logits, labels, alpha=0.25, gamma=2.0):
    t = F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # fails on the background label C
    p = logits.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma


@pytest.mark.parametrize("wrong", [_focal_alpha_everywhere, _focal_one_minus_p, _focal_no_background])
def test_05_ex3_rejects(wrong):
    rejects(retina_ref.check_focal_weight, wrong)


# --------------------------------------------------------------------------------------------
# 06 · ATSS
# --------------------------------------------------------------------------------------------


def test_06_ex1_accepts_the_notebook_solution():
    atss_ref.check_candidates(notebook_solution("06_atss.ipynb", "my_candidates"))


def _candidates_topk(dist, level_ids, k=9):
    chosen = []
    for lv in torch.unique(level_ids).tolist():
        idx = torch.nonzero(level_ids == lv)[:, 0]
        chosen.append(idx[torch.topk(dist[idx], min(k, len(idx)), largest=False).indices])  # no tie rule
    return torch.cat(chosen)


def _candidates_unstable_argsort(dist, level_ids, k=9):
    chosen = []
    for lv in torch.unique(level_ids).tolist():
        idx = torch.nonzero(level_ids == lv)[:, 0]
        key = dist[idx] - 1e-6 * torch.arange(len(idx))  # "breaks" ties toward the HIGHER index
        chosen.append(idx[torch.argsort(key)[:k]])
    return torch.cat(chosen)


def _candidates_across_levels(dist, level_ids, k=9):
    n_levels = len(torch.unique(level_ids))
    return torch.sort(dist, stable=True).indices[: k * n_levels]  # the nearest overall, not per level


def _candidates_unclipped(dist, level_ids, k=9):
    chosen = []
    for lv in torch.unique(level_ids).tolist():
        idx = torch.nonzero(level_ids == lv)[:, 0]
        chosen.append(idx[torch.topk(dist[idx], k, largest=False, sorted=True).indices])  # fails on a small level
    return torch.cat(chosen)


@pytest.mark.parametrize("wrong", [_candidates_topk, _candidates_unstable_argsort, _candidates_across_levels,
                                   _candidates_unclipped])
def test_06_ex1_rejects(wrong):
    rejects(atss_ref.check_candidates, wrong)


def test_06_ex2_accepts_the_notebook_solution():
    atss_ref.check_threshold(notebook_solution("06_atss.ipynb", "my_threshold"))


def _threshold_biased(ious):
    m = ious.mean()
    return m + ((ious - m) ** 2).mean().sqrt()  # divides by K: np.std's default


def _threshold_mean_only(ious):
    return ious.mean()


def _threshold_variance(ious):
    m = ious.mean()
    return m + ((ious - m) ** 2).sum() / (len(ious) - 1)  # the variance, not its square root


@pytest.mark.parametrize("wrong", [_threshold_biased, _threshold_mean_only, _threshold_variance])
def test_06_ex2_rejects(wrong):
    rejects(atss_ref.check_threshold, wrong)


def test_06_ex3_accepts_the_notebook_solution():
    atss_ref.check_resolve(notebook_solution("06_atss.ipynb", "my_resolve"))


def _resolve_over_all_gts(positive, ious):
    return torch.where(positive.any(dim=1), ious.argmax(dim=1), -1)  # PaddleDetection's rule


def _resolve_last_on_ties(positive, ious):
    masked = torch.where(positive, ious, -1.0).flip(1)
    return torch.where(positive.any(dim=1), positive.shape[1] - 1 - masked.argmax(dim=1), -1)


def _resolve_no_negatives(positive, ious):
    return torch.where(positive, ious, -1.0).argmax(dim=1)  # an anchor positive for none gets gt 0


@pytest.mark.parametrize("wrong", [_resolve_over_all_gts, _resolve_last_on_ties, _resolve_no_negatives])
def test_06_ex3_rejects(wrong):
    rejects(atss_ref.check_resolve, wrong)


# --------------------------------------------------------------------------------------------
# 07 · SimOTA
# --------------------------------------------------------------------------------------------


def test_07_ex1_accepts_the_notebook_solution():
    simota_ref.check_cls_cost(notebook_solution("07_simota.ipynb", "my_cls_cost"))


def _cls_cost_gt_column_only(scores, labels):
    return -torch.log(scores[:, labels]).clamp(min=-100)  # the gt's class only: the other classes are left out


def _cls_cost_unclamped(scores, labels):
    l0, l1 = -torch.log(1 - scores), -torch.log(scores)  # inf at p = 0 or 1
    return l0.sum(1, keepdim=True) - l0[:, labels] + l1[:, labels]


def _cls_cost_no_correction(scores, labels):
    l0 = -torch.log(1 - scores).clamp(min=-100)
    l1 = -torch.log(scores).clamp(min=-100)
    return l0.sum(1, keepdim=True) + l1[:, labels]  # forgets to take class y's target-0 term out


@pytest.mark.parametrize("wrong", [_cls_cost_gt_column_only, _cls_cost_unclamped, _cls_cost_no_correction])
def test_07_ex1_rejects(wrong):
    rejects(simota_ref.check_cls_cost, wrong)


def test_07_ex2_accepts_the_notebook_solution():
    simota_ref.check_dynamic_k(notebook_solution("07_simota.ipynb", "my_dynamic_k"))


def _dynamic_k_rounded(ious, candidate_topk=10):
    q = min(candidate_topk, ious.shape[0])
    return torch.topk(ious, q, dim=0).values.sum(0).round().clamp(min=1).long()  # rounds instead of truncating


def _dynamic_k_no_floor(ious, candidate_topk=10):
    q = min(candidate_topk, ious.shape[0])
    return torch.topk(ious, q, dim=0).values.sum(0).int().long()  # k = 0 possible


def _dynamic_k_fixed_q(ious, candidate_topk=10):
    return torch.topk(ious, 10, dim=0).values.sum(0).int().clamp(min=1).long()  # fails with fewer candidates


def _dynamic_k_all_candidates(ious, candidate_topk=10):
    return ious.sum(0).int().clamp(min=1).long()  # every candidate's IoU, not the top q


@pytest.mark.parametrize("wrong", [_dynamic_k_rounded, _dynamic_k_no_floor, _dynamic_k_fixed_q,
                                   _dynamic_k_all_candidates])
def test_07_ex2_rejects(wrong):
    rejects(simota_ref.check_dynamic_k, wrong)


def test_07_ex3_accepts_the_notebook_solution():
    simota_ref.check_resolve(notebook_solution("07_simota.ipynb", "my_resolve"))


def _resolve_among_markers(marked, cost):
    masked = torch.where(marked, cost, torch.inf)
    return torch.where(marked.any(1), masked.argmin(1), -1)  # the cheapest MARKING gt, not over all rows


def _resolve_argmin_always(marked, cost):
    return torch.where(marked.any(1), cost.argmin(1), -1)  # re-decides single marks too


def _resolve_last_on_ties(marked, cost):
    last = cost.shape[1] - 1 - cost.flip(1).argmin(1)
    count = marked.sum(1)
    return torch.where(count > 1, last, torch.where(count == 1, marked.int().argmax(1), -1))


def _resolve_unmarked_zero(marked, cost):
    count = marked.sum(1)
    return torch.where(count > 1, cost.argmin(1), marked.int().argmax(1))  # an unmarked candidate gets gt 0


@pytest.mark.parametrize("wrong", [_resolve_among_markers, _resolve_argmin_always, _resolve_last_on_ties,
                                   _resolve_unmarked_zero])
def test_07_ex3_rejects(wrong):
    rejects(simota_ref.check_resolve, wrong)


# --------------------------------------------------------------------------------------------
# 08 · Task-aligned
# --------------------------------------------------------------------------------------------


def test_08_ex1_accepts_the_notebook_solution():
    tal_ref.check_top_k(notebook_solution("08_task_aligned.ipynb", "my_top_k"))


def _top_k_torch_topk(t, k):
    return torch.topk(t, min(k, len(t))).indices  # no tie rule: the known failure of the old checker


def _top_k_argsort(t, k):
    return torch.argsort(t, descending=True)[:k]  # not stable


def _top_k_flipped_stable(t, k):
    return torch.sort(t, stable=True).indices.flip(0)[:k]  # ascending then reversed: ties to the HIGHER index


def _top_k_unclipped(t, k):
    return torch.topk(t, k).indices  # fails when N < k


@pytest.mark.parametrize("wrong", [_top_k_torch_topk, _top_k_argsort, _top_k_flipped_stable, _top_k_unclipped])
def test_08_ex1_rejects(wrong):
    rejects(tal_ref.check_top_k, wrong)


def test_08_ex2_accepts_the_notebook_solution():
    tal_ref.check_t_hat(notebook_solution("08_task_aligned.ipynb", "my_t_hat"))


def _t_hat_no_eps(t, u, eps=1e-7):
    return t / t.max() * u.max()  # 0 / 0 = NaN for an all-zero gt


def _t_hat_own_iou(t, u, eps=1e-7):
    return t / (t.max() + eps) * u  # each positive's own IoU instead of the gt's best


def _t_hat_by_sum(t, u, eps=1e-7):
    return t / (t.sum() + eps) * u.max()  # normalised by the sum, not the max


@pytest.mark.parametrize("wrong", [_t_hat_no_eps, _t_hat_own_iou, _t_hat_by_sum])
def test_08_ex2_rejects(wrong):
    rejects(tal_ref.check_t_hat, wrong)


def test_08_ex3_accepts_the_notebook_solution():
    tal_ref.check_stal_candidates(notebook_solution("08_task_aligned.ipynb", "my_candidates"))


def _stal(points, gt, min_side=16.0, strict=True, about_centre=True, always=False):
    w, h = gt[2] - gt[0], gt[3] - gt[1]
    if always:
        w, h = torch.tensor(min_side), torch.tensor(min_side)
    else:
        w, h = torch.clamp(w, min=min_side), torch.clamp(h, min=min_side)
    if about_centre:
        cx, cy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:  # widened from the top-left corner
        x1, y1, x2, y2 = gt[0], gt[1], gt[0] + w, gt[1] + h
    x, y = points[:, 0], points[:, 1]
    d = torch.stack([x - x1, y - y1, x2 - x, y2 - y]).min(dim=0).values
    return d > 1e-9 if strict else d >= 0


@pytest.mark.parametrize("wrong", [
    pytest.param(lambda p, g, m=16.0: _stal(p, g, m, strict=False), id="points on a side count"),
    pytest.param(lambda p, g, m=16.0: _stal(p, g, m, about_centre=False), id="widened from the corner"),
    pytest.param(lambda p, g, m=16.0: _stal(p, g, m, always=True), id="every side set to min_side"),
])
def test_08_ex3_rejects(wrong):
    rejects(tal_ref.check_stal_candidates, wrong)


# --------------------------------------------------------------------------------------------
# 09 · O2F
# --------------------------------------------------------------------------------------------


def test_09_ex1_accepts_the_notebook_solution():
    o2f_ref.check_center_region(notebook_solution("09_o2f.ipynb", "my_center_region"))


def _region(points, strides, box, radius=1.5, clip=True, strict=True, per_stride=True):
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = strides * radius if per_stride else torch.full_like(strides, 8.0 * radius)
    lo_x, lo_y, hi_x, hi_y = cx - r, cy - r, cx + r, cy + r
    if clip:
        lo_x, lo_y = torch.maximum(lo_x, x1), torch.maximum(lo_y, y1)
        hi_x, hi_y = torch.minimum(hi_x, x2), torch.minimum(hi_y, y2)
    d = torch.stack([points[:, 0] - lo_x, points[:, 1] - lo_y, hi_x - points[:, 0], hi_y - points[:, 1]]).min(dim=0)
    return d.values > 0 if strict else d.values >= 0


@pytest.mark.parametrize("wrong", [
    pytest.param(lambda p, s, b, radius=1.5: _region(p, s, b, radius, clip=False), id="square not clipped to the box"),
    pytest.param(lambda p, s, b, radius=1.5: _region(p, s, b, radius, strict=False), id="points on a side count"),
    pytest.param(lambda p, s, b, radius=1.5: _region(p, s, b, radius, per_stride=False), id="one stride for all"),
])
def test_09_ex1_rejects(wrong):
    rejects(o2f_ref.check_center_region, wrong)


def test_09_ex2_accepts_the_notebook_solution():
    o2f_ref.check_soft_labels(notebook_solution("09_o2f.ipynb", "my_soft_labels"))


def _soft_labels(prob, T, certain_weight=1.0, ambiguous_weight=0.4, over_all=False, by_certain=False, weight=None):
    targets = torch.ones_like(prob)
    weights = torch.full_like(prob, certain_weight)
    if prob.numel() > 1:
        norm = prob.max() if over_all else prob[0] if by_certain else prob[1:].max()
        targets[1:] = prob[1:] / norm * T
        weights[1:] = ambiguous_weight if weight is None else weight
    return targets, weights


@pytest.mark.parametrize("wrong", [
    pytest.param(lambda p, T: _soft_labels(p, T, over_all=True), id="max over all positives, certain included"),
    pytest.param(lambda p, T: _soft_labels(p, T, by_certain=True), id="normalised by the certain point's p"),
    pytest.param(lambda p, T: _soft_labels(p, T, weight=1.0), id="ambiguous weight 1"),
])
def test_09_ex2_rejects(wrong):
    rejects(o2f_ref.check_soft_labels, wrong)


def test_09_ex3_accepts_the_notebook_solution():
    o2f_ref.check_row_loss(notebook_solution("09_o2f.ipynb", "my_row_loss"))


def _row_loss(p, label, t, w, add=False, qfl=False, neg_weight=0.75, clamp=True):
    def bce(p, t):
        lp, lq = torch.log(p), torch.log1p(-p)
        if clamp:
            lp, lq = lp.clamp(min=-100), lq.clamp(min=-100)
        return -(t * lp + (1 - t) * lq)

    out = neg_weight * p**2 * bce(p, torch.zeros_like(p))
    if label < p.shape[0]:
        t = torch.as_tensor(t, dtype=p.dtype)
        pos = w * bce(p[label], t) * ((t - p[label]).abs() ** 2 if qfl else 1.0)
        out[label] = out[label] + pos if add else pos
    return out


@pytest.mark.parametrize("wrong", [
    pytest.param(lambda p, y, t, w: _row_loss(p, y, t, w, add=True), id="positive term added, not replacing"),
    pytest.param(lambda p, y, t, w: _row_loss(p, y, t, w, qfl=True), id="QFL factor on positives"),
    pytest.param(lambda p, y, t, w: _row_loss(p, y, t, w, neg_weight=1.0), id="negative weight 1 instead of 0.75"),
    pytest.param(lambda p, y, t, w: _row_loss(p, y, t, w, clamp=False), id="logs not clamped"),
])
def test_09_ex3_rejects(wrong):
    rejects(o2f_ref.check_row_loss, wrong)


# --------------------------------------------------------------------------------------------
# The case runner itself
# --------------------------------------------------------------------------------------------


def test_a_placeholder_still_raises_not_implemented():
    def placeholder(*args, **kwargs):
        raise NotImplementedError("Exercise: replace this line with your code")

    with pytest.raises(NotImplementedError):  # the learner copies rely on it
        simota_ref.check_resolve(placeholder)


def test_a_solution_that_writes_into_its_inputs_cannot_corrupt_the_next_check():
    solution = notebook_solution("07_simota.ipynb", "my_resolve")

    def scribbler(marked, cost):
        out = solution(marked, cost)
        marked.zero_()
        cost.fill_(-1.0)
        return out

    simota_ref.check_resolve(scribbler)
    simota_ref.check_resolve(solution)  # the cached photo scene is intact
