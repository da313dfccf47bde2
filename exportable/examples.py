"""Seeded example inputs for every catalog entry, at any sizes, with the hard cases on purpose.

Shape letters: ``B`` images, ``N`` anchors / points / boxes, ``M`` gts per image, ``K`` RoIs, ignore boxes or
kept boxes, ``C`` classes, ``H``, ``W`` image sizes. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32.

Each ``*_inputs(sizes, generator)`` returns the tensors of one graph's inputs, in ``forward`` order, from a
``torch.Generator``: the same seed gives the same inputs. The values are chosen to break implementations:
scores on coarse grids (ties), duplicated boxes (exact IoU ties), zero-area and out-of-image boxes, padding
at the end of each image, an image with no gt at all, gts far from every prior. Tests, the catalog's verify
and the CLI share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

Sizes = Mapping[str, int]

_POINT_STRIDES = (8, 16, 32)
_RETINANET_STRIDES = (8, 16, 32, 64, 128)

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


def box_iou_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return _boxes(g, (s["B"], s["N"])), _boxes(g, (s["B"], s["M"]))


def max_iou_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors = _boxes(g, (s["N"],))
    gts = _boxes(g, (s["B"], s["M"]))
    gts[:, ::3] = anchors[: gts[:, ::3].shape[1]][None] if s["N"] >= s["M"] else gts[:, ::3]  # exact IoU 1 ties
    return anchors, gts, _gt_mask(g, s["B"], s["M"])


def max_iou_assigner_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors, gts, mask = max_iou_inputs(s, g)
    anchors[..., 2:] = anchors[..., :2] + (anchors[..., 2:] - anchors[..., :2]).clamp(min=1.0)
    labels = torch.randint(0, 5, (s["B"], s["M"]), generator=g)  # (B, M)
    anchor_mask = torch.rand(s["B"], s["N"], generator=g) > 0.1  # (B, N) a few invalid anchors
    return anchors, gts, labels, mask, anchor_mask


def max_iou_assigner_ignore_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    base = max_iou_assigner_inputs(s, g)
    ignore = _boxes(g, (s["B"], s["K"]), max_side=64.0)  # (B, K, 4)
    ignore_mask = _gt_mask(g, s["B"], s["K"])  # (B, K)
    return (*base, ignore, ignore_mask)


def _feats(s: Sizes, strides: Sequence[int]) -> tuple[Tensor, ...]:
    return tuple(
        torch.zeros(s["B"], s["C"], math.ceil(s["H"] / st), math.ceil(s["W"] / st)) for st in strides
    )


def anchor_grid_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return _feats(s, (8, 16, 32, 64, 128))


def point_grid_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return _feats(s, _POINT_STRIDES)


def encode_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors = _boxes(g, (s["N"],))
    anchors[..., 2:] = anchors[..., :2] + (anchors[..., 2:] - anchors[..., :2]).clamp(min=1.0)  # positive size
    gts = _boxes(g, (s["B"], s["N"]))
    gts[..., 2:] = gts[..., :2] + (gts[..., 2:] - gts[..., :2]).clamp(min=0.5)
    return anchors, gts


def decode_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    anchors = encode_inputs(s, g)[0]
    deltas = torch.randn(s["B"], s["N"], 4, generator=g) * 2  # (B, N, 4) some beyond the wh clip
    return anchors, deltas, _image_sizes(g, s["B"])


def distance_decode_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    points = torch.rand(s["N"], 2, generator=g) * 128  # (N, 2)
    dist = torch.rand(s["B"], s["N"], 4, generator=g) * 64  # (B, N, 4)
    return points, dist, _image_sizes(g, s["B"])


def nms_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    boxes = _boxes(g, (s["N"],), extent=256.0, max_side=96.0)
    return boxes, _tied_scores(g, (s["N"],))


def batched_nms_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    boxes, scores = nms_inputs(s, g)
    return boxes, scores, torch.randint(0, 4, (s["N"],), generator=g)


def topk_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
    return (_tied_scores(g, (s["B"], s["N"]), levels=5),)


def retinanet_targets_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
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


def retinanet_loss_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
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


def retinanet_postprocess_inputs(s: Sizes, g: torch.Generator) -> tuple[Tensor, ...]:
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


def point_assigner_inputs(s, g: torch.Generator, *, far_gts: bool = True) -> tuple[Tensor, ...]:
    """Seeded inputs at sizes ``s`` (keys B, N, M, C) with the cases that matter on purpose.

    Points on a 3-level grid of a ~128 px image (any N); scores on a coarse grid and duplicated predictions
    (exact ties in the metric and in the IoU); predicted boxes around their points; gts of every size (some
    narrower than a stride: STAL), zero-width ones, some partly outside, some far from every prediction (a
    gt whose metric is all zero; ``far_gts=False`` leaves them out); padding at the end; image 0 may have
    no gt at all. Shared by the point assigners' catalog entries (SimOTA, TaskAligned).
    """
    b, n, m, c = s["B"], s["N"], s["M"], s["C"]
    level = torch.randint(0, 3, (n,), generator=g)  # (N,)
    strides = (8.0 * 2.0 ** level).float()  # (N,) 8, 16, 32
    cells = torch.randint(0, 16, (n, 2), generator=g).float()  # (N, 2)
    points = (cells // (strides[:, None] / 8) + 0.5) * strides[:, None]  # (N, 2) cell centres up to 128 px
    scores = torch.randint(1, 8, (b, n, c), generator=g).float() / 8.0  # (B, N, C) tied values
    half = torch.rand(b, n, 2, generator=g) * strides[:, None] * 2 + 1.0  # (B, N, 2)
    shift = (torch.rand(b, n, 2, generator=g) - 0.5) * strides[:, None]  # (B, N, 2)
    centre = points + shift  # (B, N, 2)
    pred = torch.cat([centre - half, centre + half], dim=-1).round(decimals=1)  # (B, N, 4)
    if n >= 4:
        pred[:, 1::4] = pred[:, 0::4][:, : pred[:, 1::4].shape[1]]  # duplicated predictions: exact ties
        scores[:, 1::4] = scores[:, 0::4][:, : scores[:, 1::4].shape[1]]
    xy = torch.rand(b, m, 2, generator=g) * 140 - 6  # (B, M, 2) some partly outside
    wh = torch.rand(b, m, 2, generator=g) ** 2 * 80  # (B, M, 2) many small, some narrower than a stride
    wh = torch.where(torch.rand(b, m, 1, generator=g) < 0.1, wh * torch.tensor([0.0, 1.0]), wh)  # zero width
    if far_gts:
        far = torch.rand(b, m, 1, generator=g) < 0.1  # (B, M, 1) a gt no prediction reaches
        xy = torch.where(far, xy + 400.0, xy)  # (B, M, 2)
    gts = torch.cat([xy, xy + wh], dim=-1).round(decimals=1)  # (B, M, 4)
    labels = torch.randint(0, c, (b, m), generator=g)  # (B, M)
    counts = torch.randint(0, m + 1, (b,), generator=g)  # (B,)
    if b > 1:
        counts[1] = m
    mask = torch.arange(m)[None, :] < counts[:, None]  # (B, M)
    return points, strides, scores, pred, gts, labels, mask


_ATSS_STRIDES = (4, 8, 16, 32, 64)  # five levels over a 128 px image


_ATSS_LEVEL_WEIGHTS = (0.45, 0.25, 0.15, 0.1, 0.05)  # fine levels large, coarse ones often smaller than k


def atss_inputs(sizes: dict[str, int], g: torch.Generator, *, preds: bool = False) -> tuple[Tensor, ...]:
    """Seeded inputs at sizes ``B, N, M``: anchors on per-level lattices (exact distance ties, duplicates),
    sorted ``level_ids`` with coarse levels often smaller than k, gts on a 0.5 px grid with zero-area and
    out-of-image rows, trailing padding (image 0 may have none real, image 1 is full), ~10 % of anchors
    outside ``anchor_mask``; with ``preds`` also ``pred_boxes`` (anchors jittered by a few px)."""
    b, n, m = sizes["B"], sizes["N"], sizes["M"]
    weights = torch.tensor(_ATSS_LEVEL_WEIGHTS)
    level_ids = torch.multinomial(weights, n, replacement=True, generator=g).sort().values if n else torch.zeros(
        0, dtype=torch.int64)  # (N,)
    stride = torch.tensor(_ATSS_STRIDES, dtype=torch.float32)[level_ids]  # (N,)
    cells = (128 / stride).to(torch.int64)  # (N,) lattice size per level
    cxy = (torch.floor(torch.rand(n, 2, generator=g) * cells[:, None]) + 0.5) * stride[:, None]  # (N, 2) cell centres
    off = torch.rand(n, generator=g) < 0.25  # (N,) a quarter off the lattice
    cxy = torch.where(off[:, None], (cxy + torch.randn(n, 2, generator=g) * 3).round(decimals=1), cxy)  # (N, 2)
    half = 2 * stride[:, None]  # (N, 1) square side 4 * stride
    anchors = torch.cat([cxy - half, cxy + half], dim=1)  # (N, 4)
    xy = (torch.rand(b, m, 2, generator=g) * 144 - 8).round()  # (B, M, 2) some outside the image
    wh = (torch.rand(b, m, 2, generator=g) * 60).round()  # (B, M, 2) some zero-area
    gt_boxes = torch.cat([xy, xy + wh], dim=-1)  # (B, M, 4)
    gt_labels = torch.randint(0, 80, (b, m), generator=g)  # (B, M)
    counts = torch.randint(0, m + 1, (b,), generator=g)  # (B,)
    if b > 1:
        counts[1] = m
    gt_mask = torch.arange(m)[None, :] < counts[:, None]  # (B, M) padding at the end
    anchor_mask = torch.rand(b, n, generator=g) < 0.9  # (B, N)
    args = (anchors, level_ids, gt_boxes, gt_labels, gt_mask, anchor_mask)
    if not preds:
        return args
    jitter = torch.randn(b, n, 4, generator=g) * 4  # (B, N, 4)
    p = anchors + jitter  # (B, N, 4)
    lo, hi = torch.minimum(p[..., :2], p[..., 2:]), torch.maximum(p[..., :2], p[..., 2:])  # (B, N, 2) each
    pred_boxes = torch.cat([lo, hi], dim=-1)  # (B, N, 4)
    return (*args, pred_boxes)


def simota_inputs(s, g: torch.Generator) -> tuple[Tensor, ...]:
    """Points on a 3-level grid of a ~128 px image (any N), tied scores, duplicated predictions, gts of every
    size incl. smaller than a stride, zero-area and partly outside (:func:`point_assigner_inputs`)."""
    return point_assigner_inputs(s, g, far_gts=False)


def task_aligned_inputs(s, g: torch.Generator) -> tuple[Tensor, ...]:
    """Seeded inputs at sizes ``s`` (keys B, N, M, C): :func:`point_assigner_inputs`
    with gts far from every prediction (a gt whose metric is all zero)."""
    return point_assigner_inputs(s, g, far_gts=True)


def dynamic_soft_label_inputs(s, g: torch.Generator) -> tuple[Tensor, ...]:
    """Seeded inputs at sizes ``s`` (keys B, N, M, C): :func:`point_assigner_inputs` with gts far from every
    point (no candidate of their own: they take another gt's candidate, at a centre prior that can overflow)."""
    return point_assigner_inputs(s, g, far_gts=True)


def _example_points(g: torch.Generator, n: int, extent: float = 128.0) -> tuple[Tensor, Tensor]:
    """``n`` cell-centre points of random levels (strides 8 / 16 / 32) in an ``extent`` square; repeats allowed."""
    level_strides = torch.tensor([8.0, 16.0, 32.0])
    strides = level_strides[torch.randint(0, 3, (n,), generator=g)]  # (N,)
    cells = torch.floor(torch.rand(n, 2, generator=g) * (extent / strides).unsqueeze(1))  # (N, 2)
    return (cells + 0.5) * strides.unsqueeze(1), strides  # (N, 2), (N,)


def _example_pred_boxes(g: torch.Generator, points: Tensor, strides: Tensor, b: int) -> Tensor:
    """Boxes around each point, side 1..4 strides, on a 0.5 px grid (equal boxes are common: ties)."""
    n = points.shape[0]
    half = (torch.rand(b, n, 4, generator=g) * 1.5 + 0.5) * strides.reshape(1, n, 1)  # (B, N, 4)
    centre = torch.cat([points, points], dim=-1).unsqueeze(0)  # (1, N, 4)
    boxes = centre + half * torch.tensor([-1.0, -1.0, 1.0, 1.0])  # (B, N, 4)
    return (boxes * 2).round() / 2


def o2f_assigner_inputs(s: dict[str, int], g: torch.Generator) -> tuple[Tensor, ...]:
    b, n, m, c = s["B"], s["N"], s["M"], s["C"]
    points, strides = _example_points(g, n)
    scores = (torch.randint(0, 8, (b, n, c), generator=g).float() + 0.5) / 8  # (B, N, C) ties
    scores = torch.where(torch.rand(b, n, c, generator=g) < 0.05, 0.0, scores)  # a few exact zeros
    pred_boxes = _example_pred_boxes(g, points, strides, b)
    gt_boxes = _boxes(g, (b, m), extent=128.0, max_side=64.0)  # (B, M, 4) zero-area and outside ones too
    labels = torch.randint(0, c, (b, m), generator=g)  # (B, M)
    ceiling = (torch.rand((), generator=g) * 0.4 + 0.2).reshape(())  # T in [0.2, 0.6)
    return points, strides, scores, pred_boxes, gt_boxes, labels, _gt_mask(g, b, m), ceiling


def o2f_loss_inputs(s: dict[str, int], g: torch.Generator) -> tuple[Tensor, ...]:
    b, n, c = s["B"], s["N"], s["C"]
    points, strides = _example_points(g, n)
    scores = torch.rand(b, n, c, generator=g)  # (B, N, C)
    scores = torch.where(torch.rand(b, n, c, generator=g) < 0.02, torch.randint(0, 2, (b, n, c), generator=g).float(),
                         scores)  # some exact 0 and 1 (the -100 log clamp)
    pred_boxes = _example_pred_boxes(g, points, strides, b)
    positive = torch.rand(b, n, generator=g) < 0.25  # (B, N)
    labels = torch.where(positive, torch.randint(0, c, (b, n), generator=g), c)  # (B, N)
    certain = positive & (torch.rand(b, n, generator=g) < 0.4)  # (B, N)
    target = torch.where(certain, 1.0, torch.where(positive, torch.rand(b, n, generator=g) * 0.6, 0.0))  # (B, N)
    weights = torch.where(positive & ~certain, 0.4, 1.0)  # (B, N)
    sides = torch.rand(b, n, 4, generator=g) * 40 + 0.5  # (B, N, 4) the point strictly inside its gt
    gts = torch.cat([points - sides[..., :2], points + sides[..., 2:]], dim=-1)  # (B, N, 4)
    gts = torch.where(positive.unsqueeze(-1), gts, 0.0)
    return scores, pred_boxes, points, labels, target, weights, gts


def o2f_postprocess_inputs(s: dict[str, int], g: torch.Generator) -> tuple[Tensor, ...]:
    """Head outputs of a C = 80 FCOS/O2F head for images (H, W): logits on a 0.25 grid (many exact ties),
    a few percent of pairs above 0.05 (more than nms_pre on the fine levels of large images), distances up
    to 4 strides (boxes leave the image and get clipped), images smaller than the batch, and with B >= 2 an
    image (index 1) where nothing passes score_thr."""
    b = s["B"]
    cls, box, ctr = [], [], []
    for stride in (8, 16, 32, 64, 128):
        h, w = math.ceil(s["H"] / stride), math.ceil(s["W"] / stride)
        logits = ((torch.randn(b, 80, h, w, generator=g) * 1.5 - 4.0) * 4).round() / 4  # (B, C, H, W)
        if b >= 2:
            logits[1] = -8.0 - torch.rand(80, h, w, generator=g)  # nothing above the threshold
        cls.append(logits)
        box.append((torch.rand(b, 4, h, w, generator=g) * 4 * stride).round(decimals=1))  # (B, 4, H, W)
        ctr.append((torch.randn(b, 1, h, w, generator=g) * 4).round() / 4)  # (B, 1, H, W)
    return (*cls, *box, *ctr, _image_sizes(g, b, s["H"], s["W"]))


def roi_target_inputs(sizes: Mapping[str, int], generator: torch.Generator,
                              num_classes: int = 20) -> tuple[Tensor, ...]:
    """``(rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise)`` for sizes ``{"B", "K", "M"}``.

    A 256 x 256 canvas. gts of sides 16..112 px; about half the RoIs are jittered copies of gts (IoU
    around and above 0.5, some exact copies: IoU 1), the rest random boxes of sides 4..160 px (a few
    zero-size, some leaving the canvas); RoIs on a 0.5 px grid. Padding: image 0 keeps a random share of
    its RoIs and may have no gt, image 1 (if any) every RoI and every gt, image 2 (if any) no gt at all;
    noise on a 1/64 grid (ties).
    """
    b, k, m = sizes["B"], sizes["K"], sizes["M"]
    g = generator
    xy = torch.rand(b, m, 2, generator=g) * 144  # (B, M, 2)
    wh = 16 + torch.rand(b, m, 2, generator=g) * 96  # (B, M, 2)
    gt_boxes = ((torch.cat([xy, xy + wh], dim=-1)) * 2).round() / 2  # (B, M, 4)
    gt_labels = torch.randint(0, num_classes, (b, m), generator=g)  # (B, M)
    counts = torch.randint(0, m + 1, (b,), generator=g)  # (B,)
    if b >= 2:
        counts[1] = m
    if b >= 3:
        counts[2] = 0
    gt_mask = torch.arange(m).unsqueeze(0) < counts.unsqueeze(1)  # (B, M)
    # RoIs: jittered gts (positives and near misses) and random boxes (mostly negatives)
    rxy = torch.rand(b, k, 2, generator=g) * 272 - 16  # (B, K, 2)
    rwh = 4 + torch.rand(b, k, 2, generator=g) * 156  # (B, K, 2)
    rois = torch.cat([rxy, rxy + rwh], dim=-1)  # (B, K, 4)
    if m >= 1:
        src = torch.randint(0, m, (b, k), generator=g)  # (B, K) which gt to jitter
        base = torch.gather(gt_boxes, 1, src.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
        side = (base[..., 2:] - base[..., :2]).repeat(1, 1, 2)  # (B, K, 4)
        jitter = (torch.rand(b, k, 4, generator=g) - 0.5) * 0.5 * side  # (B, K, 4)
        jitter = torch.where(torch.rand(b, k, 1, generator=g) < 0.1, 0.0, jitter)  # (B, K, 4) exact copies
        near = base + jitter  # (B, K, 4)
        near = torch.cat([near[..., :2].minimum(near[..., 2:]), near[..., :2].maximum(near[..., 2:])], dim=-1)
        rois = torch.where((torch.arange(k) % 2 == 0).view(1, k, 1), near, rois)  # (B, K, 4)
    rois = (rois * 2).round() / 2  # (B, K, 4)
    if k >= 2:
        rois[:, 1, 2:] = rois[:, 1, :2]  # zero-size RoI
    roi_mask = torch.ones(b, k, dtype=torch.bool)  # (B, K)
    if b >= 1:
        roi_mask[0] = torch.arange(k) < torch.randint(0, k + 1, (1,), generator=g)
    noise = torch.floor(torch.rand(b, k + m, generator=g) * 64) / 64  # (B, K + M) ties
    return rois, roi_mask, gt_boxes, gt_labels, gt_mask, noise


def roi_align_inputs(sizes: dict[str, int], generator: torch.Generator,
                             stride: int = 16) -> tuple[Tensor, Tensor]:
    """``(features (B, C, H, W), rois (B, K, 4))`` for sizes ``{"B", "C", "H", "W", "K"}``.

    Features ~ N(0, 1). RoIs in image pixels of a ``(stride * H, stride * W)`` image: sides 0..1.2 x the
    image, corners on a 0.25 px grid, some crossing or leaving the image; slot 0 is a zero-size box, slot
    1 (if any) the whole image, slot 2 (if any) far outside (reads 0), slot 3 (if any) a box thinner than a
    cell at the far corner.
    """
    b, c, h, w, k = sizes["B"], sizes["C"], sizes["H"], sizes["W"], sizes["K"]
    g = generator
    features = torch.randn(b, c, h, w, generator=g)  # (B, C, H, W)
    img = torch.tensor([w * stride, h * stride], dtype=torch.float32)  # (2,) (W, H) in pixels
    wh = torch.rand(b, k, 2, generator=g) * 1.2 * img  # (B, K, 2)
    xy = torch.rand(b, k, 2, generator=g) * (img * 1.2) - 0.2 * img  # (B, K, 2)
    rois = (torch.cat([xy, xy + wh], dim=-1) * 4).round() / 4  # (B, K, 4)
    if k >= 1:
        rois[:, 0] = torch.tensor([40.0, 24.0, 40.0, 24.0])  # zero-size
    if k >= 2:
        rois[:, 1] = torch.cat([torch.zeros(2), img])  # the whole image
    if k >= 3:
        rois[:, 2] = torch.cat([img * 2, img * 2 + 64])  # far outside: every sample reads 0
    if k >= 4:
        rois[:, 3] = torch.cat([img - 6, img - 1])  # thinner than a cell, at the far corner
    return features, rois


def _rpn_boxes(g: torch.Generator, shape: Sequence[int], extent: float, min_side: float,
                  max_side: float) -> Tensor:
    """Boxes with sides in ``[min_side, max_side)``, corners on a 0.5 px grid, some beyond ``[0, extent]``."""
    wh = min_side + torch.rand(*shape, 2, generator=g) * (max_side - min_side)  # (*shape, 2)
    xy = torch.rand(*shape, 2, generator=g) * (extent + max_side / 2) - max_side / 2  # (*shape, 2)
    boxes = torch.cat([xy, xy + wh], dim=-1)  # (*shape, 4)
    return (boxes * 2).round() / 2


def anchor_target_inputs(sizes: Mapping[str, int], generator: torch.Generator) -> tuple[Tensor, ...]:
    """``(anchors, gt_boxes, gt_mask, image_sizes, noise)`` for sizes ``{"B", "N", "M"}``.

    Anchors of sides 8..64 px over a 128 x 128 canvas (some cross the border), images 64..128 px,
    gts of sides 8..56 px inside the top-left 64 x 64 px (so inside every image), with padding (image 0
    may have none; image 1 has all M), every third gt a copy of an anchor in that region (IoU 1 ties),
    image 2 (if any) 4 x 4 px (no anchor inside: everything -1), noise on a
    1/256 grid (ties).
    """
    b, n, m = sizes["B"], sizes["N"], sizes["M"]
    g = generator
    anchors = _rpn_boxes(g, (n,), 128.0, 8.0, 64.0)  # (N, 4)
    xy = torch.rand(b, m, 2, generator=g) * 48  # (B, M, 2)
    wh = 8 + torch.rand(b, m, 2, generator=g) * (56 - xy)  # (B, M, 2) x2, y2 <= 64
    gts = (torch.cat([xy, xy + wh], dim=-1) * 2).round() / 2  # (B, M, 4)
    small = torch.nonzero((anchors[:, :2] >= 0).all(1) & (anchors[:, 2:] <= 64).all(1)).squeeze(1)  # (S,)
    if len(small) and m >= 1:
        pick = small[torch.randint(0, len(small), (b, m), generator=g)]  # (B, M)
        gts = torch.where((torch.arange(m) % 3 == 0).view(1, m, 1), anchors[pick], gts)  # (B, M, 4)
    counts = torch.randint(0, m + 1, (b,), generator=g)  # (B,)
    if b >= 2:
        counts[1] = m
    gt_mask = torch.arange(m).unsqueeze(0) < counts.unsqueeze(1)  # (B, M)
    hs = torch.randint(64, 129, (b,), generator=g)  # (B,)
    ws = torch.randint(64, 129, (b,), generator=g)  # (B,)
    image_sizes = torch.stack([hs, ws], dim=1)  # (B, 2)
    if b >= 3:
        image_sizes[2] = 4
    noise = torch.floor(torch.rand(b, n, generator=g) * 256) / 256  # (B, N) ties
    return anchors, gts, gt_mask, image_sizes.to(torch.int64), noise


def proposal_inputs(sizes: Mapping[str, int], generator: torch.Generator,
                            num_levels: int = 5) -> tuple[Tensor, ...]:
    """``(anchors, level_ids, objectness, deltas, image_sizes)`` for sizes ``{"B", "N"}``.

    Anchors of sides 4..160 px over 256 x 256 (small ones fall under ``min_size`` 16 after decoding),
    ``num_levels`` contiguous level blocks, objectness on a 1/32 grid (ties), deltas ~ N(0, 0.3^2) with
    a few beyond the wh clip, images 128..256 px; with B >= 2 image 1 is 16 x 16 px (most boxes clip to
    nothing). Many candidates overlap, so NMS removes a good share.
    """
    b, n = sizes["B"], sizes["N"]
    g = generator
    anchors = _rpn_boxes(g, (n,), 256.0, 4.0, 160.0)  # (N, 4)
    level_ids = (torch.arange(n) * num_levels) // max(n, 1)  # (N,) contiguous blocks
    objectness = torch.floor(torch.rand(b, n, generator=g) * 32) / 32  # (B, N) in [0, 1), ties
    deltas = torch.randn(b, n, 4, generator=g) * 0.3  # (B, N, 4)
    if n >= 1:
        deltas[:, 0, 2:] = 6.0  # beyond |log(16/1000)|: clamped
    hs = torch.randint(128, 257, (b,), generator=g)  # (B,)
    ws = torch.randint(128, 257, (b,), generator=g)  # (B,)
    image_sizes = torch.stack([hs, ws], dim=1)  # (B, 2)
    if b >= 2:
        image_sizes[1] = 16
    return anchors, level_ids.to(torch.int64), objectness, deltas, image_sizes.to(torch.int64)


def sampler_inputs(sizes: Mapping[str, int], generator: torch.Generator) -> tuple[Tensor, ...]:
    """Catalog example inputs ``(pos, neg, noise)`` for sizes ``{"B", "N"}``.

    Image 0 has few positives (fewer than any quota), image 1 (if any) mostly positives, the rest
    about 10 % positives and 60 % negatives; noise is quantised to 1/64 so ties are frequent.
    """
    b, n = sizes["B"], sizes["N"]
    u = torch.rand(b, n, generator=generator)  # (B, N)
    share = torch.full((b, 1), 0.1)  # (B, 1) positive share per image
    if b >= 1:
        share[0] = 0.01
    if b >= 2:
        share[1] = 0.9
    pos = u < share  # (B, N)
    neg = (u >= share) & (u < share + 0.6)  # (B, N)
    noise = torch.floor(torch.rand(b, n, generator=generator) * 64) / 64  # (B, N) in [0, 1), many ties
    return pos, neg, noise
