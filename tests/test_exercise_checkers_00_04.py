"""The exercise checkers of notebooks 00-04 catch wrong answers.

For every exercise: a correct solution passes its checker (and prints no alarm), and at least two
plausible wrong solutions -- each breaking a rule its notebook stresses -- are rejected. A checker is
``lessons.check.check_cases`` on the lesson module's boundary cases; rejected means it raises
(``AssertionError`` naming the failing case, or the error the wrong code hits at an edge).
"""

from __future__ import annotations

import math

import pytest
import torch

from exportable.boxes import box_iou
from exportable.nms import nms
from lessons import anchors_and_boxes as ab
from lessons import conventions as cv
from lessons import proposals_and_nms as pn
from lessons import roi_head_sampling as rh
from lessons import rpn_anchor_targets as rt
from lessons.check import check_cases

CASES = {
    "assign": cv.max_iou_rule_cases,
    "anchor_counts": ab.anchor_count_cases,
    "iou": ab.iou_cases,
    "encode": ab.encode_cases,
    "count_inside": rt.count_inside_cases,
    "create_label": rt.create_labels_cases,
    "sample": rt.sampling_cases,
    "nms": pn.nms_cases,
    "batched_nms": pn.batched_nms_cases,
    "pre_nms": pn.pre_nms_cases,
    "keep_index": rh.keep_index_cases,
    "pick": rh.pick_cases,
    "bilinear": rh.bilinear_cases,
}
_cache: dict[str, list] = {}


def cases(name: str) -> list:
    if name not in _cache:
        _cache[name] = CASES[name]()
    return _cache[name]


def accepted(name: str, fn, capsys=None) -> bool:
    result = check_cases(name, fn, cases(name), raise_on_fail=False, verbose=capsys is not None)
    if capsys is not None:
        out = capsys.readouterr().out
        assert "✗" not in out and "False" not in out and "differ" not in out, out
    return bool(result)


def rejected(name: str, fn) -> bool:
    try:
        return not check_cases(name, fn, cases(name), raise_on_fail=False, verbose=False)
    except Exception:  # the wrong code crashed on a boundary case: the learner sees which one
        return True


# --------------------------------------------------------------------------------------------
# 00: the three-way MaxIoU rule
# --------------------------------------------------------------------------------------------


def assign_right(iou, pos_thr=0.5, neg_thr=0.4):
    if iou.shape[1] == 0:
        return torch.full((iou.shape[0],), -1, dtype=torch.int64)
    best, arg = iou.max(dim=1)
    return torch.where(best >= pos_thr, arg, torch.where(best < neg_thr, -1, -2))


def assign_strict_positive(iou, pos_thr=0.5, neg_thr=0.4):  # > 0.5
    if iou.shape[1] == 0:
        return torch.full((iou.shape[0],), -1, dtype=torch.int64)
    best, arg = iou.max(dim=1)
    return torch.where(best > pos_thr, arg, torch.where(best < neg_thr, -1, -2))


def assign_inclusive_negative(iou, pos_thr=0.5, neg_thr=0.4):  # <= 0.4 is negative
    if iou.shape[1] == 0:
        return torch.full((iou.shape[0],), -1, dtype=torch.int64)
    best, arg = iou.max(dim=1)
    return torch.where(best >= pos_thr, arg, torch.where(best <= neg_thr, -1, -2))


def assign_last_gt_on_ties(iou, pos_thr=0.5, neg_thr=0.4):  # the later gt wins a tie
    if iou.shape[1] == 0:
        return torch.full((iou.shape[0],), -1, dtype=torch.int64)
    m = iou.shape[1]
    best, arg_flipped = iou.flip(1).max(dim=1)
    arg = m - 1 - arg_flipped
    return torch.where(best >= pos_thr, arg, torch.where(best < neg_thr, -1, -2))


def assign_first_above(iou, pos_thr=0.5, neg_thr=0.4):  # the first gt over the threshold, not the best
    if iou.shape[1] == 0:
        return torch.full((iou.shape[0],), -1, dtype=torch.int64)
    best = iou.max(dim=1).values
    first = (iou >= pos_thr).int().argmax(dim=1)
    return torch.where(best >= pos_thr, first, torch.where(best < neg_thr, -1, -2))


def test_00_assign(capsys):
    assert accepted("assign", assign_right, capsys)
    for wrong in (assign_strict_positive, assign_inclusive_negative, assign_last_gt_on_ties, assign_first_above):
        assert rejected("assign", wrong), wrong.__name__


# --------------------------------------------------------------------------------------------
# 01: anchor counts, IoU, encode
# --------------------------------------------------------------------------------------------


def counts_right(image_hw, strides, a):
    return [math.ceil(image_hw[0] / s) * math.ceil(image_hw[1] / s) * a for s in strides]


def counts_floor(image_hw, strides, a):
    return [(image_hw[0] // s) * (image_hw[1] // s) * a for s in strides]


def counts_round(image_hw, strides, a):
    return [round(image_hw[0] / s) * round(image_hw[1] / s) * a for s in strides]


def counts_plus_one(image_hw, strides, a):
    return [(image_hw[0] // s + 1) * (image_hw[1] // s + 1) * a for s in strides]


def test_01_anchor_counts(capsys):
    assert accepted("anchor_counts", counts_right, capsys)
    for wrong in (counts_floor, counts_round, counts_plus_one):
        assert rejected("anchor_counts", wrong), wrong.__name__


def _iou(a, b, *, clamp=True, eps=1e-6, plus=0.0, subtract_inter=True):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + plus
    ih = min(a[3], b[3]) - max(a[1], b[1]) + plus
    if clamp:
        iw, ih = max(iw, 0.0), max(ih, 0.0)
    inter = iw * ih
    union = (a[2] - a[0] + plus) * (a[3] - a[1] + plus) + (b[2] - b[0] + plus) * (b[3] - b[1] + plus)
    if subtract_inter:
        union -= inter
    if eps is None:
        return inter / union if union else float("nan")
    return inter / max(union, eps)


def test_01_iou(capsys):
    assert accepted("iou", _iou, capsys)
    for name, wrong in {
        "no clamp of the overlap": lambda a, b: _iou(a, b, clamp=False),
        "no eps: 0 / 0": lambda a, b: _iou(a, b, eps=None),
        "+1 widths": lambda a, b: _iou(a, b, plus=1.0),
        "union without removing the overlap": lambda a, b: _iou(a, b, subtract_inter=False),
    }.items():
        assert rejected("iou", wrong), name


def _encode(anchor, gt, *, by="anchor", corners=False, flip=False, dy_by_width=False):
    px, py = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    pw, ph = anchor[2] - anchor[0], anchor[3] - anchor[1]
    gx, gy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    if corners:
        px, py, gx, gy = anchor[0], anchor[1], gt[0], gt[1]
    dw, dh = (pw, ph) if by == "anchor" else (gw, gh)
    dx, dy = (gx - px) / dw, (gy - py) / (dw if dy_by_width else dh)
    sw, sh = (math.log(pw / gw), math.log(ph / gh)) if flip else (math.log(gw / pw), math.log(gh / ph))
    return dx, dy, sw, sh


def test_01_encode(capsys):
    assert accepted("encode", _encode, capsys)
    for name, wrong in {
        "shift in gt widths": lambda a, g: _encode(a, g, by="gt"),
        "corner shift instead of centre": lambda a, g: _encode(a, g, corners=True),
        "log(anchor / gt)": lambda a, g: _encode(a, g, flip=True),
        "dy in anchor widths": lambda a, g: _encode(a, g, dy_by_width=True),
    }.items():
        assert rejected("encode", wrong), name


# --------------------------------------------------------------------------------------------
# 02: inside count, labels (steps 3-5), sampling (step 6)
# --------------------------------------------------------------------------------------------


def _count_inside(image_hw, stride, featmap_hw, base, *, strict=False, offset=0.0):
    h, w = image_hw
    xs = torch.arange(featmap_hw[1], dtype=torch.float32) * stride + offset
    ys = torch.arange(featmap_hw[0], dtype=torch.float32) * stride + offset
    out = []
    for x1, y1, x2, y2 in base.tolist():
        if strict:
            cols = ((xs + x1 > 0) & (xs + x2 < w)).sum()
            rows = ((ys + y1 > 0) & (ys + y2 < h)).sum()
        else:
            cols = ((xs + x1 >= 0) & (xs + x2 <= w)).sum()
            rows = ((ys + y1 >= 0) & (ys + y2 <= h)).sum()
        out.append(int(cols * rows))
    return out


def test_02_count_inside(capsys):
    assert accepted("count_inside", _count_inside, capsys)
    for name, wrong in {
        "strict inequalities": lambda *a: _count_inside(*a, strict=True),
        "centres at 16x + 8 (py-faster-rcnn's)": lambda *a: _count_inside(*a, offset=8.0),
        "columns only": lambda hw, s, f, b: [int(((torch.arange(f[1]) * s + x1 >= 0)
                                                  & (torch.arange(f[1]) * s + x2 <= hw[1])).sum()) * f[0]
                                             for x1, _, x2, _ in b.tolist()],
    }.items():
        assert rejected("count_inside", wrong), name


def _create_label(ious, pos_iou_thresh=0.7, neg_iou_thresh=0.3, *, strict_pos=False, inclusive_neg=False,
                  argmax_only=False, negatives_last=False, own_gt_only=False):
    max_ious, argmax = ious.max(dim=1)
    gt_max_ious = ious.max(dim=0).values
    label = torch.full((ious.shape[0],), -1, dtype=torch.int64)
    neg = max_ious <= neg_iou_thresh if inclusive_neg else max_ious < neg_iou_thresh
    if not negatives_last:
        label[neg] = 0
    if argmax_only:
        label[ious.argmax(dim=0)] = 1
    elif own_gt_only:
        label[max_ious == gt_max_ious[argmax]] = 1
    else:
        label[(ious == gt_max_ious).any(dim=1)] = 1
    label[max_ious > pos_iou_thresh if strict_pos else max_ious >= pos_iou_thresh] = 1
    if negatives_last:
        label[neg] = 0
    return label


def test_02_create_label(capsys):
    assert accepted("create_label", _create_label, capsys)
    for flag in ("strict_pos", "inclusive_neg", "argmax_only", "negatives_last", "own_gt_only"):
        assert rejected("create_label", lambda ious, *a, _f=flag, **k: _create_label(ious, *a, **{_f: True}, **k)), flag


def _sample(label, noise, n_sample=256, pos_ratio=0.5, *, fixed_neg=None, cap_from_candidates=False,
            later_index_on_ties=False, fixed_pos_cap=None):
    label = label.clone()
    if later_index_on_ties:
        order = len(noise) - 1 - torch.sort(-noise.flip(0), stable=True).indices
    else:
        order = torch.sort(-noise, stable=True).indices
    n_pos = fixed_pos_cap if fixed_pos_cap is not None else int(pos_ratio * n_sample)
    candidates = int((label == 1).sum())
    pos = order[label[order] == 1]
    label[pos[n_pos:]] = -1
    n_neg = n_sample - (candidates if cap_from_candidates else int((label == 1).sum()))
    if fixed_neg is not None:
        n_neg = fixed_neg
    neg = order[label[order] == 0]
    label[neg[max(n_neg, 0):]] = -1
    return label


def test_02_sample(capsys):
    assert accepted("sample", _sample, capsys)
    wrongs = {
        "a fixed 128 negatives (the issue's)": lambda *a, **k: _sample(*a, **k, fixed_neg=128),
        "negatives = 256 - positive candidates, before the cap": lambda *a, **k: _sample(*a, **k,
                                                                                        cap_from_candidates=True),
        "the later index wins a tie": lambda *a, **k: _sample(*a, **k, later_index_on_ties=True),
        "a hard-coded cap of 128 positives": lambda *a, **k: _sample(*a, **k, fixed_pos_cap=128),
    }
    for name, wrong in wrongs.items():
        assert rejected("sample", wrong), name


# --------------------------------------------------------------------------------------------
# 03: greedy NMS, class-aware NMS in one call, the pre-NMS selection
# --------------------------------------------------------------------------------------------


def _nms(boxes, scores, iou_threshold, *, inclusive=False, later_on_ties=False, one_pass=False):
    if later_on_ties:
        order = len(scores) - 1 - torch.sort(-scores.flip(0), stable=True).indices
    else:
        order = torch.sort(-scores, stable=True).indices
    if one_pass:  # suppress every box that overlaps ANY better box, removed or not
        iou = box_iou(boxes[order], boxes[order]) if len(order) else torch.zeros(0, 0)
        over = torch.triu(iou > iou_threshold, diagonal=1).any(dim=0)
        return order[~over]
    keep = []
    while len(order):
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        iou = box_iou(boxes[best][None], boxes[rest])[0]
        order = rest[iou < iou_threshold] if inclusive else rest[iou <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64)


def test_03_nms(capsys):
    assert accepted("nms", _nms, capsys)
    for flag in ("inclusive", "later_on_ties", "one_pass"):
        assert rejected("nms", lambda *a, _f=flag: _nms(*a, **{_f: True})), flag


def _batched(boxes, scores, labels, iou_threshold, *, span=None):
    if span is None:
        span = boxes.max() - boxes.min() + 1
    elif span == "max+1":  # mmcv's offset: right only for non-negative coordinates
        span = boxes.max() + 1
    shifted = boxes + (labels.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def test_03_batched_nms(capsys):
    assert accepted("batched_nms", _batched, capsys)
    for span in (1000.0, "max+1", 0.0):
        assert rejected("batched_nms", lambda *a, _s=span: _batched(*a, span=_s)), span


def _pre_nms(roi, score, min_size, n_pre_nms, *, topk_first=False, strict=False, later_on_ties=False):
    ws, hs = roi[:, 2] - roi[:, 0], roi[:, 3] - roi[:, 1]
    big = (ws > min_size) & (hs > min_size) if strict else (ws >= min_size) & (hs >= min_size)
    if later_on_ties:
        order = len(score) - 1 - torch.sort(-score.flip(0), stable=True).indices
    else:
        order = torch.sort(-score, stable=True).indices
    if topk_first:
        order = order[:n_pre_nms]
        return order[big[order]]
    return order[big[order]][:n_pre_nms]


def test_03_pre_nms(capsys):
    assert accepted("pre_nms", _pre_nms, capsys)
    for flag in ("topk_first", "strict", "later_on_ties"):
        assert rejected("pre_nms", lambda *a, _f=flag: _pre_nms(*a, **{_f: True})), flag


# --------------------------------------------------------------------------------------------
# 04: the RoI sample, which 4 numbers the loss reads, one bilinear sample
# --------------------------------------------------------------------------------------------


def _keep_index(max_iou, noise, n_sample=128, pos_ratio=0.25, *, strict_pos=False, fixed_neg=None,
                backfill=False, positive_lo=False):
    def by_noise(index, size):
        order = sorted(index.tolist(), key=lambda i: (-float(noise[i]), i))
        return torch.tensor(order[:size], dtype=torch.int64)

    pos = torch.nonzero(max_iou > 0.5 if strict_pos else max_iou >= 0.5).squeeze(1)
    neg = torch.nonzero(((max_iou > 0.0) if positive_lo else (max_iou >= 0.0)) & (max_iou < 0.5)).squeeze(1)
    n_pos = min(round(n_sample * pos_ratio), len(pos))
    n_neg = min(n_sample - n_pos if fixed_neg is None else fixed_neg, len(neg))
    if backfill:  # fill the places the negatives cannot take with more positives
        n_pos = min(len(pos), n_sample - n_neg)
    return torch.cat([by_noise(pos, n_pos), by_noise(neg, n_neg)])


def test_04_keep_index(capsys):
    assert accepted("keep_index", _keep_index, capsys)
    wrongs = {
        "positives at > 0.5 (the issue's)": dict(strict_pos=True),
        "a fixed 96 negatives (the issue's)": dict(fixed_neg=96),
        "both of the issue's mistakes at once": dict(strict_pos=True, fixed_neg=96),
        "back-filling with positives": dict(backfill=True),
        "negatives only above 0": dict(positive_lo=True),
    }
    for name, kw in wrongs.items():
        assert rejected("keep_index", lambda *a, _k=kw, **k: _keep_index(*a, **k, **_k)), name


def test_04_pick(capsys):
    def right(roi_cls_loc, label):
        return roi_cls_loc.view(roi_cls_loc.shape[0], -1, 4)[torch.arange(roi_cls_loc.shape[0]), label]

    def shifted(roi_cls_loc, label):  # mmdetection's block (label - 1) in py-faster-rcnn's layout
        return roi_cls_loc.view(roi_cls_loc.shape[0], -1, 4)[torch.arange(roi_cls_loc.shape[0]), (label - 1).clamp(0)]

    def transposed(roi_cls_loc, label):  # reads the columns as (4, C + 1) instead of (C + 1, 4)
        return roi_cls_loc.view(roi_cls_loc.shape[0], 4, -1)[torch.arange(roi_cls_loc.shape[0]), :, label]

    assert accepted("pick", right, capsys)
    for wrong in (shifted, transposed):
        assert rejected("pick", wrong), wrong.__name__


def _bilinear(feature, y, x, *, low=-1.0, high_is_last=False, clamp_top=True):
    c, h, w = feature.shape
    if y < low or x < low or y > (h - 1 if high_is_last else h) or x > (w - 1 if high_is_last else w):
        return torch.zeros(c, dtype=feature.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    if clamp_top:
        y, x = min(y, h - 1), min(x, w - 1)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def test_04_bilinear(capsys):
    assert accepted("bilinear", _bilinear, capsys)
    for name, kw in {"off the map below 0, not below -1": dict(low=0.0),
                     "off the map beyond H - 1, not beyond H": dict(high_is_last=True),
                     "no clamp to the last row": dict(clamp_top=False)}.items():
        assert rejected("bilinear", lambda f, y, x, _k=kw: _bilinear(f, y, x, **_k)), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_exercise_has_boundary_cases_named_as_rules(name):
    cs = cases(name)
    assert len(cs) >= 4, name
    assert len({c.name for c in cs}) == len(cs)
