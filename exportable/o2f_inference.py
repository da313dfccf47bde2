"""O2F's NMS-free inference (Li et al., CVPR 2023): head outputs -> padded detections, one exportable graph.

Shape shorthand::

    B     images in a batch
    C     classes (sigmoid classification, no background channel; COCO 80)
    L     FPN levels (O2F's FCOS head: 5, strides 8 ... 128); H_l x W_l cells on level l
    N     points of all levels, N_l = H_l * W_l on level l (one point per cell, at its centre)
    K     candidates of all levels: sum over l of min(nms_pre, N_l * C)
    P     max_per_img output slots

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; images are ``(H, W)``; ``image_sizes (B, 2)`` int64
holds each unpadded image's ``(H, W)``.

The authors' ``O2FHead._get_bboxes_single`` + ``_bbox_post_process`` with ``with_nms=False``
(``strongwolf/o2f``; ``docs/algorithms.md`` §11.4), batched:

1. per level: the score of every (point, class) pair is ``sigmoid(cls) * sigmoid(ctr)``;
2. per level: pairs with score ``> score_thr`` (0.05), the best ``nms_pre`` (1000) of them
   (mmdetection's ``filter_scores_and_topk``);
3. concatenate the levels; sort by score; keep the best ``max_per_img`` (100). No NMS: O2F trains the
   duplicates away (the ``nms`` dict of its config is never read);
4. decode the kept points' ``(l, t, r, b)`` distances into boxes, clipped to the image.

Decisions (where an exportable graph has to choose):

- **Ranked in float64.** onnxruntime's float32 ``Sigmoid`` differs from torch's by up to 1.8e-7, so
  float32 scores could rank two close pairs differently in eager and in onnxruntime; RetinaNet ranks on
  logits instead, but a product of two sigmoids is no function of one logit. In float64 the two
  backends differ by about 1e-16, far below any gap between distinct scores on real inputs (equal
  inputs give equal scores in both, and ties go to the lower index). The returned ``scores`` are the
  float64 products rounded to float32 (within an ulp of the authors' float32 product). The threshold
  compares the float64 score with 0.05 (the authors compare float32 with float32(0.05); the two differ
  only for a score within 1e-9 of the threshold).
- **Static sizes.** Step 2 is one top-k of ``min(nms_pre, N_l * C)`` over all pairs of the level, then
  pairs ``<= score_thr`` are masked (the same set: every passing pair ranks above every failing one).
  Step 3 is one top-k of P over the K candidates plus P masked dummies, so the output always has P
  slots; ``counts`` says how many are real. No data-dependent size anywhere in the graph.
- **Ties** (equal float64 scores): the lower index first, per level by ``(point, class)`` pair index,
  then across levels by level. The authors' ``sort`` leaves ties to the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from exportable._checks import (
    check_float,
    check_image_sizes,
    check_scalar,
    checks_enabled,
    exporting,
)
from exportable.anchors import _grid_shifts
from exportable.coders import DistancePointCoder
from exportable.ordering import _topk

__all__ = ["O2FDetections", "O2FPostProcess"]


class O2FDetections(NamedTuple):
    """Detections of a batch, padded to ``P = max_per_img`` slots per image, best score first.

    - ``boxes (B, P, 4)``: ``(x1, y1, x2, y2)`` pixels, clipped to the image; padding 0.
    - ``scores (B, P)``: ``sigmoid(cls) * sigmoid(ctr)``; padding 0.
    - ``labels (B, P)`` int64: class in ``[0, C)``; padding -1.
    - ``counts (B,)`` int64: real detections per image; slots ``[0, counts[b])`` are filled.
    """

    boxes: Float[Tensor, "B P 4"]
    scores: Float[Tensor, "B P"]
    labels: Int[Tensor, "B P"]
    counts: Int[Tensor, " B"]


class O2FPostProcess(nn.Module):
    """O2F's test time without NMS: per-level score threshold + top ``nms_pre``, then the top ``max_per_img``.

    Args:
        num_classes: C (80 on COCO).
        strides: one stride per level (FCOS: 8, 16, 32, 64, 128); points are cell centres
            ``((x + 0.5) * s, (y + 0.5) * s)``, order ``y * W + x`` per level (mmdetection's
            ``MlvlPointGenerator``, offset 0.5).
        nms_pre: per level, keep at most this many (point, class) pairs (1000; CrowdHuman 5000).
        score_thr: keep pairs whose score is ``> score_thr`` (0.05).
        max_per_img: P, detections per image (100; CrowdHuman 500): the output slots.

    ``forward(cls_0..cls_4, box_0..box_4, ctr_0..ctr_4, image_sizes)`` takes the head's per-level outputs:
    ``cls_l (B, C, H_l, W_l)`` classification LOGITS, ``box_l (B, 4, H_l, W_l)`` distances ``(l, t, r, b)``
    in pixels (the head's output after ReLU and ``* stride``), ``ctr_l (B, 1, H_l, W_l)`` centerness LOGITS,
    and ``image_sizes (B, 2)`` int64 ``(H, W)``; it returns :class:`O2FDetections`. :meth:`forward_levels`
    takes lists (any number of levels, the ``strides``' count).

    Eager checks (skipped under export): logits without NaN (``+-inf`` allowed), finite distances, channel
    counts C / 4 / 1 and matching ``(B, H_l, W_l)`` per level, ``image_sizes`` int64 ``>= 0``. The channel
    counts are also checked while exporting (static dims).
    """

    def __init__(
        self,
        num_classes: int = 80,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        nms_pre: int = 1000,
        score_thr: float = 0.05,
        max_per_img: int = 100,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("nms_pre", nms_pre), ("max_per_img", max_per_img)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if len(strides) == 0 or any(check_scalar("strides", s) <= 0 for s in strides):
            raise ValueError(f"strides: expected one positive stride per level, got {tuple(strides)}")
        self.num_classes = num_classes
        self.strides = tuple(float(s) for s in strides)
        self.nms_pre = nms_pre
        self.score_thr = check_scalar("score_thr", score_thr, low=0.0, high=1.0)
        self.max_per_img = max_per_img
        self.coder = DistancePointCoder(clip_border=True)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def forward(
        self,
        cls_0: Float[Tensor, "B C H0 W0"],
        cls_1: Float[Tensor, "B C H1 W1"],
        cls_2: Float[Tensor, "B C H2 W2"],
        cls_3: Float[Tensor, "B C H3 W3"],
        cls_4: Float[Tensor, "B C H4 W4"],
        box_0: Float[Tensor, "B 4 H0 W0"],
        box_1: Float[Tensor, "B 4 H1 W1"],
        box_2: Float[Tensor, "B 4 H2 W2"],
        box_3: Float[Tensor, "B 4 H3 W3"],
        box_4: Float[Tensor, "B 4 H4 W4"],
        ctr_0: Float[Tensor, "B 1 H0 W0"],
        ctr_1: Float[Tensor, "B 1 H1 W1"],
        ctr_2: Float[Tensor, "B 1 H2 W2"],
        ctr_3: Float[Tensor, "B 1 H3 W3"],
        ctr_4: Float[Tensor, "B 1 H4 W4"],
        image_sizes: Int[Tensor, "B 2"],
    ) -> O2FDetections:
        if self.num_levels != 5:
            raise ValueError(f"forward takes 5 levels; this module has {self.num_levels}: use forward_levels")
        return self.forward_levels(
            (cls_0, cls_1, cls_2, cls_3, cls_4), (box_0, box_1, box_2, box_3, box_4),
            (ctr_0, ctr_1, ctr_2, ctr_3, ctr_4), image_sizes,
        )

    def forward_levels(
        self,
        cls_scores: Sequence[Float[Tensor, "B C H W"]],
        bbox_preds: Sequence[Float[Tensor, "B 4 H W"]],
        centernesses: Sequence[Float[Tensor, "B 1 H W"]],
        image_sizes: Int[Tensor, "B 2"],
    ) -> O2FDetections:
        """:meth:`forward` with one tensor per level in each list."""
        if checks_enabled():
            _check_inputs(cls_scores, bbox_preds, centernesses, image_sizes, self.num_levels, self.num_classes)
        else:
            _check_channels(cls_scores, bbox_preds, centernesses, self.num_classes)
        b, c = image_sizes.shape[0], self.num_classes
        keys, pairs, points, dists = [], [], [], []
        start = 0  # first point index of the level in the concatenated points (a SymInt under export)
        for level, (cls, box, ctr) in enumerate(zip(cls_scores, bbox_preds, centernesses)):
            h, w = cls.shape[-2], cls.shape[-1]
            stride = self.strides[level]
            # 1. (B, C, H, W) -> (B, H * W * C) float64 scores, pair index (y * W + x) * C + c
            logit = cls.permute(0, 2, 3, 1).reshape(b, -1, c)  # (B, H * W, C)
            center = ctr.permute(0, 2, 3, 1).reshape(b, -1, 1)  # (B, H * W, 1)
            score = torch.sigmoid(logit.to(torch.float64)) * torch.sigmoid(center.to(torch.float64))  # (B, HW, C)
            # 2. one top-k of min(nms_pre, H * W * C); pairs <= score_thr are masked below
            top, idx = _topk(score.reshape(b, -1), self.nms_pre, dim=1)  # (B, k), (B, k)
            keys.append(top)
            pairs.append(idx + start * c)  # (B, k) pair index into the concatenated (point, class) pairs
            points.append(_grid_shifts(h, w, (stride, stride), 0.5, box.device, box.dtype))  # (H * W, 2)
            dists.append(box.permute(0, 2, 3, 1).reshape(b, -1, 4))  # (B, H * W, 4)
            start = start + h * w
        key = torch.cat(keys, dim=1)  # (B, K) level-major
        pair = torch.cat(pairs, dim=1)  # (B, K)
        key = torch.where(key > self.score_thr, key, -1.0)  # (B, K) failing pairs below every passing one
        # 3. the best P of the K candidates; P dummies (-1) guarantee P columns for any K
        p = self.max_per_img
        key = torch.cat([key, key.new_full((b, p), -1.0)], dim=1)  # (B, K + P)
        pair = torch.cat([pair, pair.new_zeros((b, p))], dim=1)  # (B, K + P) dummies point at pair 0
        if exporting():
            # K + P >= P always: a constant k keeps the output dim a static P (sym_min(P, K + P) would not fold)
            best, slot = torch.topk(key, p, dim=1)  # (B, P), (B, P) ONNX TopK: ties to the lower index
        else:
            best, slot = _topk(key, p, dim=1)  # (B, P), (B, P) highest first, ties by candidate order
        valid = best > 0  # (B, P) real detections (scores are > score_thr >= 0)
        kept = torch.gather(pair, 1, slot)  # (B, P) pair index
        point = kept // c  # (B, P) index into the concatenated points (exact: int //, not float32 floor)
        label = kept - point * c  # (B, P) class
        # 4. decode the kept points' distances, clip to each image
        all_points = torch.cat(points, dim=0)  # (N, 2)
        dist = torch.gather(torch.cat(dists, dim=1), 1, point.unsqueeze(-1).expand(b, p, 4))  # (B, P, 4)
        boxes = self.coder._decode(all_points[point], dist, image_sizes)  # (B, P, 4)
        return O2FDetections(
            boxes=torch.where(valid.unsqueeze(-1), boxes, 0.0),  # (B, P, 4)
            scores=torch.where(valid, best, 0.0).to(dist.dtype),  # (B, P)
            labels=torch.where(valid, label, -1),  # (B, P)
            counts=valid.sum(dim=1),  # (B,)
        )


def _check_channels(
    cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], centernesses: Sequence[Tensor], c: int
) -> None:
    """Static channel counts (also while exporting: a wrong C would otherwise be baked silently)."""
    for level, (cls, box, ctr) in enumerate(zip(cls_scores, bbox_preds, centernesses)):
        for name, t, want in ((f"cls_{level}", cls, c), (f"box_{level}", box, 4), (f"ctr_{level}", ctr, 1)):
            if t.dim() != 4 or t.shape[1] != want:
                raise ValueError(f"{name}: expected (B, {want}, H, W), got shape {tuple(t.shape)}")


def _check_inputs(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    centernesses: Sequence[Tensor],
    image_sizes: Tensor,
    levels: int,
    c: int,
) -> None:
    if not len(cls_scores) == len(bbox_preds) == len(centernesses) == levels:
        raise ValueError(
            f"cls_scores, bbox_preds, centernesses: expected {levels} levels each (one per stride), got "
            f"{len(cls_scores)}, {len(bbox_preds)} and {len(centernesses)}"
        )
    check_image_sizes("image_sizes", image_sizes)
    for level, (cls, box, ctr) in enumerate(zip(cls_scores, bbox_preds, centernesses)):
        check_float(f"cls_{level}", cls, finite=False)  # logits: NaN rejected, +-inf allowed
        check_float(f"box_{level}", box)  # distances: finite
        check_float(f"ctr_{level}", ctr, finite=False)
    _check_channels(cls_scores, bbox_preds, centernesses, c)
    b = image_sizes.shape[0]
    for level, (cls, box, ctr) in enumerate(zip(cls_scores, bbox_preds, centernesses)):
        if cls.shape[0] != b:
            raise ValueError(f"cls_{level}: batch {cls.shape[0]} does not match image_sizes' B = {b}")
        for name, t in ((f"box_{level}", box), (f"ctr_{level}", ctr)):
            if t.shape[0] != b or t.shape[2:] != cls.shape[2:]:
                raise ValueError(
                    f"{name}: shape {tuple(t.shape)} does not match cls_{level}'s {tuple(cls.shape)} in (B, H, W)"
                )
