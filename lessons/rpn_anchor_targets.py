"""RPN anchor targets, the readable way: simple-faster-rcnn's ``AnchorTargetCreator``, one image at a time.

The reference (test oracle) for :class:`exportable.rpn.AnchorTargetCreator` and
:func:`exportable.sampling.sample_by_noise`, and the code of ``notebooks/02_rpn_anchor_targets``.

It follows chenyuntc/simple-faster-rcnn-pytorch ``model/utils/creator_tool.py`` step by step, with the
package's conventions instead of that repository's:

- boxes are ``(x1, y1, x2, y2)`` in absolute pixels (simple-faster-rcnn writes ``(y1, x1, y2, x2)``;
  :func:`xyxy_to_yxyx` converts), images ``(H, W)``;
- the random choice is explicit: ``noise (N,)``, one uniform value per anchor, and where
  simple-faster-rcnn calls ``np.random.choice`` to DISABLE the surplus, we KEEP the anchors with the
  LARGEST noise (equal noise: the lower index first). Same distribution, reproducible, exportable.

Names map to the peers:

===========================  ==========================================  ========================================
here (simple-faster-rcnn)    torchvision                                 mmdetection
===========================  ==========================================  ========================================
``AnchorTargetCreator``      ``RegionProposalNetwork.assign_targets_to_  ``RPNHead.get_targets`` / ``AnchorHead.
                             anchors`` + ``BalancedPositiveNegative      _get_targets_single`` (MaxIoUAssigner +
                             Sampler``                                   RandomSampler)
``label`` 1 / 0 / -1         ``labels`` 1 / 0 / -1                       ``labels`` 0 (fg) / 1 (bg) + weights
``loc``                      ``regression_targets``                      ``bbox_targets``
``n_sample``, ``pos_ratio``  ``batch_size_per_image``, ``positive_       ``num``, ``pos_fraction``
                             fraction``
===========================  ==========================================  ========================================

Step numbers (1-8) match the notebook and :class:`exportable.rpn.AnchorTargetCreator`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exportable.anchors import AnchorGenerator
from lessons.retinanet_targets import max_iou_assign

__all__ = [
    "AnchorTargetCreator",
    "AnchorTargets",
    "RPNHead",
    "RPNHeadOutput",
    "bbox2loc",
    "bbox_iou",
    "choose_by_noise",
    "count_inside",
    "create_labels",
    "faster_rcnn_anchors",
    "get_inside_index",
    "mmdet_anchor_targets",
    "sample_by_noise_reference",
    "subsample_labels",
    "unmap",
    "xyxy_to_yxyx",
]


# --------------------------------------------------------------------------------------------
# Small tools (simple-faster-rcnn's bbox_tools, in (x1, y1, x2, y2))
# --------------------------------------------------------------------------------------------


def xyxy_to_yxyx(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` <-> ``(y1, x1, y2, x2)`` (its own inverse): simple-faster-rcnn's box order."""
    return boxes[..., [1, 0, 3, 2]]


def bbox_iou(bbox_a: Tensor, bbox_b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of every box in ``bbox_a (A, 4)`` with every box in ``bbox_b (B, 4)``: ``(A, B)`` float32.

    ``inter / (area_a + area_b - inter)``, the union clamped at ``eps`` (two zero-area boxes give 0;
    simple-faster-rcnn has no eps and would divide by zero). The same float32 operations, in the same
    order, as :func:`exportable.boxes.box_iou`, so the two agree bit for bit.
    """
    a = bbox_a.float()[:, None, :]  # (A, 1, 4)
    b = bbox_b.float()[None, :, :]  # (1, B, 4)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)  # (A, B)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)  # (A, B)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (A, 1)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (1, B)
    return inter / (area_a + area_b - inter).clamp(min=eps)


def bbox2loc(src_bbox: Tensor, dst_bbox: Tensor) -> Tensor:
    """Offsets and scales ``(dx, dy, dw, dh)`` that move ``src_bbox`` onto ``dst_bbox`` (row i to row i).

    ``dx = (gx - px) / pw``, ``dw = log(gw / pw)`` (same for y / h), centres ``(x1 + x2) / 2``, widths
    ``x2 - x1``: mmdetection's ``bbox2delta`` with means 0 and stds 1. simple-faster-rcnn computes the
    centre as ``x1 + 0.5 * w`` and clamps the anchor width at the float eps: the same numbers up to
    float rounding for positive-size anchors.
    """
    src, dst = src_bbox.float(), dst_bbox.float()
    px = (src[:, 0] + src[:, 2]) * 0.5
    py = (src[:, 1] + src[:, 3]) * 0.5
    pw = src[:, 2] - src[:, 0]
    ph = src[:, 3] - src[:, 1]
    gx = (dst[:, 0] + dst[:, 2]) * 0.5
    gy = (dst[:, 1] + dst[:, 3]) * 0.5
    gw = dst[:, 2] - dst[:, 0]
    gh = dst[:, 3] - dst[:, 1]
    return torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)


def unmap(data: Tensor, count: int, index: Tensor, fill: float = 0) -> Tensor:
    """Put the rows of ``data`` back at positions ``index`` among ``count`` rows; the others are ``fill``."""
    out = torch.full((count, *data.shape[1:]), fill, dtype=data.dtype)
    out[index] = data
    return out


def get_inside_index(anchor: Tensor, H: float, W: float, allowed_border: float = 0, inclusive: bool = True) -> Tensor:
    """Indices of the anchors lying completely inside an ``H x W`` image (grown by ``allowed_border``).

    simple-faster-rcnn: ``x1 >= 0, y1 >= 0, x2 <= W, y2 <= H`` (``inclusive=True``). mmdetection's
    ``anchor_inside_flags`` is strict on the far side (``x2 < W``, ``inclusive=False``). py-faster-rcnn
    writes ``x2 < W`` on its "+1" pixel grid (``x2 = W - 1`` is the last pixel), which is the inclusive
    test in our continuous coordinates. ``allowed_border < 0``: every anchor.
    """
    if allowed_border < 0:
        return torch.arange(len(anchor))
    b = allowed_border
    x1, y1, x2, y2 = anchor.float().unbind(1)
    if inclusive:
        far = (x2 <= W + b) & (y2 <= H + b)
    else:
        far = (x2 < W + b) & (y2 < H + b)
    return torch.nonzero((x1 >= -b) & (y1 >= -b) & far).squeeze(1)


def choose_by_noise(index: Tensor, noise: Tensor, size: int) -> Tensor:
    """The ``size`` entries of ``index`` whose ``noise`` is largest (equal noise: lower index first).

    ``noise`` is aligned with ``index`` (one value per entry). This replaces simple-faster-rcnn's
    ``np.random.choice(index, size, replace=False)``: with uniform noise it is the same distribution.
    """
    order = sorted(range(len(index)), key=lambda i: (-float(noise[i]), int(index[i])))
    return index[torch.tensor(order[:size], dtype=torch.int64)]


# --------------------------------------------------------------------------------------------
# The creator
# --------------------------------------------------------------------------------------------


@dataclass
class AnchorTargets:
    """One image's RPN targets over ALL anchors (after the unmap).

    ``loc (N, 4)`` regression targets (every inside anchor, 0 outside), ``label (N,)`` int64 1 / 0 / -1,
    ``argmax_ious (N,)`` int64 the gt each inside anchor overlaps most (-1 outside the image or when the
    image has no gt), ``inside_index`` the anchors inside the image. simple-faster-rcnn returns
    ``(loc, label)``.
    """

    loc: Tensor
    label: Tensor
    argmax_ious: Tensor
    inside_index: Tensor

    @property
    def n_pos(self) -> int:
        return int((self.label == 1).sum())

    @property
    def n_neg(self) -> int:
        return int((self.label == 0).sum())

    @property
    def matched_gt(self) -> Tensor:
        """The gt each sampled positive regresses to (its argmax gt); -1 elsewhere."""
        return torch.where(self.label == 1, self.argmax_ious, torch.full_like(self.argmax_ious, -1))


class AnchorTargetCreator:
    """Assign gt boxes to anchors for training the RPN (Faster R-CNN; simple-faster-rcnn's class).

    Args:
        n_sample: anchors sampled per image (256).
        pos_iou_thresh: an anchor whose best IoU is ``>=`` this is positive (0.7).
        neg_iou_thresh: an anchor whose best IoU is ``<`` this is negative (0.3).
        pos_ratio: at most ``int(pos_ratio * n_sample)`` positives (128).
        allowed_border, inclusive: the inside test (:func:`get_inside_index`).
    """

    def __init__(self, n_sample: int = 256, pos_iou_thresh: float = 0.7, neg_iou_thresh: float = 0.3,
                 pos_ratio: float = 0.5, allowed_border: float = 0, inclusive: bool = True) -> None:
        self.n_sample = n_sample
        self.pos_iou_thresh = pos_iou_thresh
        self.neg_iou_thresh = neg_iou_thresh
        self.pos_ratio = pos_ratio
        self.allowed_border = allowed_border
        self.inclusive = inclusive

    def __call__(self, bbox: Tensor, anchor: Tensor, img_size: tuple[int, int], noise: Tensor) -> AnchorTargets:
        """``bbox (R, 4)`` the image's gts, ``anchor (N, 4)``, ``img_size = (H, W)``, ``noise (N,)``."""
        img_H, img_W = img_size
        n_anchor = len(anchor)
        # 1. keep the anchors that lie inside the image
        inside_index = get_inside_index(anchor, img_H, img_W, self.allowed_border, self.inclusive)
        anchor = anchor[inside_index]
        # 2. IoU of every inside anchor with every gt, and each anchor's best gt (the first on ties)
        ious = bbox_iou(anchor, bbox)  # (n_inside, R)
        if len(bbox):
            argmax_ious = ious.argmax(dim=1)  # (n_inside,)
        else:
            argmax_ious = torch.full((len(anchor),), -1, dtype=torch.int64)
        # 3.-5. labels: 0 below 0.3, then 1 for every gt's best anchors and for IoU >= 0.7
        label = create_labels(ious, self.pos_iou_thresh, self.neg_iou_thresh)
        # 6. sample at most 128 positives, negatives up to 256; the others become -1
        label = subsample_labels(label, noise[inside_index], self.n_sample, self.pos_ratio)
        # 7. regression targets of EVERY inside anchor against its argmax gt (the loss keeps positives)
        if len(bbox):
            loc = bbox2loc(anchor, bbox[argmax_ious])
        else:
            loc = torch.zeros(len(anchor), 4)
        # 8. map back to all anchors: label -1 and loc 0 outside the image
        return AnchorTargets(
            loc=unmap(loc, n_anchor, inside_index, fill=0),
            label=unmap(label, n_anchor, inside_index, fill=-1),
            argmax_ious=unmap(argmax_ious, n_anchor, inside_index, fill=-1),
            inside_index=inside_index,
        )


def create_labels(ious: Tensor, pos_iou_thresh: float = 0.7, neg_iou_thresh: float = 0.3) -> Tensor:
    """Steps 3-5: labels ``(n,)`` int64 (1 positive, 0 negative, -1 don't care) from ``ious (n, R)``.

    simple-faster-rcnn's ``_create_label`` before sampling. Every anchor tied at a gt's best IoU is
    positive (``np.where(ious == gt_max_ious)`` keeps all ties). No gt: every anchor is negative.
    """
    label = torch.full((ious.shape[0],), -1, dtype=torch.int64)
    if ious.shape[0] == 0 or ious.shape[1] == 0:
        label[:] = 0  # no gt (simple-faster-rcnn would fail): every anchor's best IoU is 0
        return label
    max_ious = ious.max(dim=1).values  # (n,) each anchor's best IoU
    gt_max_ious = ious.max(dim=0).values  # (R,) each gt's best IoU
    # 3. negatives first, so that positives can overwrite them
    label[max_ious < neg_iou_thresh] = 0
    # 4. for each gt, every anchor tied at its best IoU
    label[(ious == gt_max_ious).any(dim=1)] = 1
    # 5. every anchor with IoU >= 0.7 with some gt
    label[max_ious >= pos_iou_thresh] = 1
    return label


def subsample_labels(label: Tensor, noise: Tensor, n_sample: int = 256, pos_ratio: float = 0.5) -> Tensor:
    """Step 6: keep at most ``int(pos_ratio * n_sample)`` positives, then negatives up to ``n_sample``.

    ``label (n,)`` 1 / 0 / -1 and ``noise (n,)``; the anchors with the largest noise are kept (equal
    noise: the lower index), the surplus becomes -1. Returns a new tensor.
    """
    label = label.clone()
    # 6a. too many positives: keep n_pos of them, disable the rest
    n_pos = int(pos_ratio * n_sample)
    pos_index = torch.nonzero(label == 1).squeeze(1)
    if len(pos_index) > n_pos:
        keep = choose_by_noise(pos_index, noise[pos_index], n_pos)
        label[pos_index[~torch.isin(pos_index, keep)]] = -1
    # 6b. negatives fill the sample up to n_sample (what the KEPT positives leave)
    n_neg = n_sample - int((label == 1).sum())
    neg_index = torch.nonzero(label == 0).squeeze(1)
    if len(neg_index) > n_neg:
        keep = choose_by_noise(neg_index, noise[neg_index], n_neg)
        label[neg_index[~torch.isin(neg_index, keep)]] = -1
    return label


# --------------------------------------------------------------------------------------------
# mmdetection's RPN targets (the other variant)
# --------------------------------------------------------------------------------------------


def sample_by_noise_reference(
    pos_index: Tensor, neg_index: Tensor, noise: Tensor, num: int = 256, pos_fraction: float = 0.5,
    neg_pos_ub: float = -1,
) -> tuple[Tensor, Tensor]:
    """mmdetection's ``RandomSampler`` with noise: ``(sampled positive indices, sampled negative indices)``.

    ``noise (N,)`` covers every candidate; indices come back sorted (mmdetection's ``unique``).
    """
    num_expected_pos = int(num * pos_fraction)
    pos = pos_index if len(pos_index) <= num_expected_pos else choose_by_noise(
        pos_index, noise[pos_index], num_expected_pos)
    num_expected_neg = num - len(pos)
    if neg_pos_ub >= 0:
        num_expected_neg = min(num_expected_neg, int(neg_pos_ub * max(1, len(pos))))
    neg = neg_index if len(neg_index) <= num_expected_neg else choose_by_noise(
        neg_index, noise[neg_index], num_expected_neg)
    return pos.sort().values, neg.sort().values


def mmdet_anchor_targets(
    anchor: Tensor, bbox: Tensor, img_size: tuple[int, int], noise: Tensor, *, n_sample: int = 256,
    pos_ratio: float = 0.5, pos_iou_thresh: float = 0.7, neg_iou_thresh: float = 0.3, min_pos_iou: float = 0.3,
    allowed_border: float = -1,
) -> AnchorTargets:
    """mmdetection's RPN targets for one image (``AnchorHead._get_targets_single`` with the RPN config).

    MaxIoU 0.7 / 0.3 / ``min_pos_iou`` 0.3 (:func:`lessons.retinanet_targets.max_iou_assign`), then
    ``RandomSampler(256, 0.5)`` by noise, targets for the sampled positives only. ``argmax_ious`` holds
    the ASSIGNED gt of every positive (a low-quality match goes to the gt it is best for; a later gt
    wins), -1 elsewhere.
    """
    n_anchor = len(anchor)
    # 1. inside flags (allowed_border -1: every anchor; otherwise mmdetection's strict far side)
    inside_index = get_inside_index(anchor, img_size[0], img_size[1], allowed_border, inclusive=False)
    anchor = anchor[inside_index]
    # 2. MaxIoU on the inside anchors (one class: every gt label 0)
    overlaps = bbox_iou(bbox, anchor) if len(bbox) and len(anchor) else None
    assign = max_iou_assign(anchor, bbox, torch.zeros(len(bbox), dtype=torch.int64), pos_iou_thr=pos_iou_thresh,
                            neg_iou_thr=neg_iou_thresh, min_pos_iou=min_pos_iou, num_classes=1, overlaps=overlaps)
    # 3. RandomSampler: positives gt_index >= 0, negatives gt_index == -1 (ignored -2 never sampled)
    pos, neg = sample_by_noise_reference(
        torch.nonzero(assign.gt_index >= 0).squeeze(1), torch.nonzero(assign.gt_index == -1).squeeze(1),
        noise[inside_index], n_sample, pos_ratio,
    )
    label = torch.full((len(anchor),), -1, dtype=torch.int64)
    label[pos] = 1
    label[neg] = 0
    # 4. targets of the sampled positives against their assigned gt
    loc = torch.zeros(len(anchor), 4)
    gt = torch.full((len(anchor),), -1, dtype=torch.int64)
    if len(pos):
        loc[pos] = bbox2loc(anchor[pos], bbox[assign.gt_index[pos]])
        gt[pos] = assign.gt_index[pos]
    return AnchorTargets(unmap(loc, n_anchor, inside_index), unmap(label, n_anchor, inside_index, fill=-1),
                         unmap(gt, n_anchor, inside_index, fill=-1), inside_index)


# --------------------------------------------------------------------------------------------
# How many of the 21,546 anchors lie inside a 600 x 1000 image?
# --------------------------------------------------------------------------------------------


def faster_rcnn_anchors(image_hw: tuple[int, int] = (600, 1000), stride: int = 16,
                        center_offset: float = 0.0) -> tuple[Tensor, tuple[int, int]]:
    """Faster R-CNN's single-level anchors (base 16, scales 8 / 16 / 32, ratios 0.5 / 1 / 2) for an image.

    The feature map is ``(ceil(H / 16), ceil(W / 16))`` = 38 x 63 for 600 x 1000, so 38 * 63 * 9 = 21,546
    anchors (VGG16's four floor-poolings give 37 x 62 = 20,646 in simple-faster-rcnn). ``center_offset``
    0 centres the anchors on the cell corners ``(16 i, 16 j)`` (mmdetection); 0.5 on ``(16 i + 8, 16 j + 8)``
    (py-faster-rcnn, simple-faster-rcnn). Returns ``(anchors (N, 4), featmap (H', W'))``.
    """
    fh, fw = math.ceil(image_hw[0] / stride), math.ceil(image_hw[1] / stride)
    gen = AnchorGenerator.faster_rcnn(strides=(stride,), center_offset=center_offset)
    return gen.grid_anchors([(fh, fw)])[0], (fh, fw)


def count_inside(image_hw: tuple[int, int] = (600, 1000), center_offset: float = 0.0, allowed_border: float = 0,
                 inclusive: bool = True) -> dict[str, int]:
    """``{"anchors": N, "inside": n_inside}`` for Faster R-CNN's anchors on an ``(H, W)`` image.

    Also per anchor shape (``"inside_<w>x<h>"``): the big 512- and 724-px anchors barely fit a 600-px-high
    image, which is why far fewer than the ~15,000 the Faster R-CNN study note guesses are inside.
    """
    anchors, _ = faster_rcnn_anchors(image_hw, center_offset=center_offset)
    inside = get_inside_index(anchors, image_hw[0], image_hw[1], allowed_border, inclusive)
    out = {"anchors": len(anchors), "inside": len(inside)}
    a = 9
    flags = torch.zeros(len(anchors), dtype=torch.bool)
    flags[inside] = True
    for k in range(a):
        base = anchors[k]
        key = f"inside_{round(float(base[2] - base[0]))}x{round(float(base[3] - base[1]))}"
        out[key] = int(flags[k::a].sum())
    return out


# --------------------------------------------------------------------------------------------
# What the RPN outputs: the 18 and 36 channels (notebook 02, section 1)
# --------------------------------------------------------------------------------------------


class RPNHeadOutput(NamedTuple):
    """The RPN head's outputs for ``B`` images, one row per anchor in the anchors' order.

    ``rpn_locs (B, H * W * A, 4)`` predicted ``(dx, dy, dw, dh)``; ``rpn_scores (B, H * W * A, 2)``
    logits ``(background, foreground)``; ``rpn_fg_scores (B, H * W * A)`` the softmax foreground
    probability, the one number per anchor that :class:`lessons.proposals_and_nms.ProposalCreator` and
    :class:`exportable.rpn.ProposalCreator` read. Row ``(y * W + x) * A + a`` belongs to anchor ``a`` of
    feature-map cell ``(y, x)``.
    """

    rpn_locs: Tensor
    rpn_scores: Tensor
    rpn_fg_scores: Tensor


class RPNHead(nn.Module):
    """The head of simple-faster-rcnn's ``RegionProposalNetwork``: where the 18 and 36 channels come from.

    A 3 x 3 conv (``in_channels -> mid_channels``, ReLU) slides over the backbone's feature map
    ``(B, 512, H, W)``; two 1 x 1 convs read every cell:

    - ``score``: ``2 * A`` channels (18 for A = 9): a (background, foreground) pair of logits per anchor,
      channel ``2 * a + k``;
    - ``loc``: ``4 * A`` channels (36): ``(dx, dy, dw, dh)`` per anchor, channel ``4 * a + c``.

    ``forward`` moves the channels last and flattens ``(B, H, W, A, k)`` to ``(B, H * W * A, k)``:
    location-major, anchor-minor, the order of :func:`faster_rcnn_anchors`. Weights are drawn from
    N(0, 0.01^2) as simple-faster-rcnn initialises them (``seed`` makes them reproducible), biases 0;
    an untrained head therefore says "foreground: 0.5" everywhere.

    Peers: torchvision's ``RPNHead`` (``conv``, ``cls_logits`` with A channels, ``bbox_pred`` with 4A)
    and mmdetection's ``RPNHead`` (``rpn_conv``, ``rpn_cls`` with A channels, ``rpn_reg`` with 4A) use
    one sigmoid logit per anchor instead of a softmax pair: 9 + 36 channels. softmax of a pair is the
    sigmoid of the difference of its logits, so both give one probability per anchor.
    py-faster-rcnn (Caffe) orders its 18 channels differently: all 9 background logits, then all 9
    foreground logits.
    """

    def __init__(self, in_channels: int = 512, mid_channels: int = 512, n_anchor: int = 9, seed: int = 0) -> None:
        super().__init__()
        self.n_anchor = n_anchor
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, 1, 1)
        self.score = nn.Conv2d(mid_channels, n_anchor * 2, 1, 1, 0)
        self.loc = nn.Conv2d(mid_channels, n_anchor * 4, 1, 1, 0)
        g = torch.Generator().manual_seed(seed)
        for layer in (self.conv1, self.score, self.loc):
            nn.init.normal_(layer.weight, 0.0, 0.01, generator=g)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> RPNHeadOutput:
        """``x (B, C, H, W)`` feature map -> :class:`RPNHeadOutput` with ``H * W * A`` rows per image."""
        n, _, hh, ww = x.shape
        h = F.relu(self.conv1(x))  # (B, mid, H, W)
        rpn_locs = self.loc(h).permute(0, 2, 3, 1).reshape(n, -1, 4)  # (B, 4A, H, W) -> (B, H * W * A, 4)
        rpn_scores = self.score(h).permute(0, 2, 3, 1).reshape(n, hh, ww, self.n_anchor, 2)  # (B, H, W, A, 2)
        rpn_fg_scores = F.softmax(rpn_scores, dim=4)[..., 1].reshape(n, -1)  # (B, H * W * A)
        return RPNHeadOutput(rpn_locs, rpn_scores.reshape(n, -1, 2), rpn_fg_scores)


# --------------------------------------------------------------------------------------------
# Exercise cases (notebook 02): each one a boundary the notebook teaches
# --------------------------------------------------------------------------------------------


def count_inside_cases() -> list:
    """``my_count_inside(image_hw, stride, featmap_hw, base) -> list[int]`` (one count per base anchor)."""
    from lessons.check import Case

    base = AnchorGenerator.faster_rcnn().base_anchors[0]  # (9, 4) centred on (0, 0)

    def case(name: str, hw: tuple[int, int]) -> Case:
        fmap = (math.ceil(hw[0] / 16), math.ceil(hw[1] / 16))
        counts = count_inside(hw)
        return Case(name, (hw, 16, fmap, base.clone()), [v for k, v in counts.items() if k.startswith("inside_")])

    return [
        case("the note's 600 x 1000 image", (600, 1000)),
        case("an anchor ending exactly on the border is inside (x2 <= W, y1 >= 0)", (600, 512)),
        case("a 600 x 800 image (the shape of most VOC photos)", (600, 800)),
        case("an image smaller than every anchor: none inside", (100, 100)),
    ]


def _photo_and_m20_labels() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Labels before sampling (steps 3-5) and noise for the photo's and the first rpn-m20 image's inside anchors."""
    from lessons.scenes import default_scene, make_workload_batch

    scene = default_scene()
    photo_anchors, _ = faster_rcnn_anchors(scene.hw)
    inside = get_inside_index(photo_anchors, *scene.hw)
    photo_label = create_labels(bbox_iou(photo_anchors[inside], scene.boxes))
    photo_noise = torch.rand(len(photo_anchors), generator=torch.Generator().manual_seed(0))[inside]
    doc_anchors, _ = faster_rcnn_anchors((600, 1000))
    doc_inside = get_inside_index(doc_anchors, 600, 1000)
    gts = make_workload_batch("rpn-m20", batch=1).gt_boxes[0]
    m20_label = create_labels(bbox_iou(doc_anchors[doc_inside], gts))
    m20_noise = torch.rand(len(doc_anchors), generator=torch.Generator().manual_seed(0))[doc_inside]
    return photo_label, photo_noise, m20_label, m20_noise


def create_labels_cases() -> list:
    """``my_create_label(ious, pos_iou_thresh=0.7, neg_iou_thresh=0.3) -> label (n,)`` (steps 3-5)."""
    from lessons.check import Case
    from lessons.scenes import make_workload_batch

    def case(name: str, ious: list | Tensor) -> Case:
        t = torch.as_tensor(ious, dtype=torch.float32)
        return Case(name, (t,), create_labels(t))

    doc_anchors, _ = faster_rcnn_anchors((600, 1000))
    gts = make_workload_batch("rpn-m20", batch=1).gt_boxes[0]
    return [
        case("IoU exactly 0.7 is positive (>= 0.7, not > 0.7)", [[0.7, 0.0], [0.0, 0.9], [0.8, 0.1], [0.1, 0.0]]),
        case("IoU exactly 0.3 is not negative (negatives are < 0.3): it stays -1",
             [[0.3, 0.0], [0.9, 0.0], [0.0, 0.8], [0.29, 0.0]]),
        case("every anchor tied at a gt's best IoU is positive, not only the first",
             [[0.21, 0.0], [0.21, 0.0], [0.1, 0.0], [0.21, 0.0], [0.0, 0.9]]),
        case("a gt's best anchor is positive even below 0.3 (step 4 comes after step 3)",
             [[0.2, 0.0], [0.1, 0.0], [0.0, 0.75]]),
        case("a gt's best anchor counts even when the anchor overlaps another gt more",
             [[0.5, 0.4], [0.6, 0.0], [0.0, 0.3]]),
        case("the first rpn-m20 image: 8,044 inside anchors x 20 gts",
             bbox_iou(doc_anchors[get_inside_index(doc_anchors, 600, 1000)], gts)),
    ]


def sampling_cases() -> list:
    """``my_sample(label, noise, n_sample=256, pos_ratio=0.5) -> label`` (step 6)."""
    from lessons.check import Case

    photo_label, photo_noise, m20_label, m20_noise = _photo_and_m20_labels()
    g = torch.Generator().manual_seed(3)
    few = torch.full((400,), -1, dtype=torch.int64)
    few[:10], few[10:30] = 1, 0  # 10 positives, 20 negatives
    many = torch.randint(-1, 2, (300,), generator=g)  # about 100 of each
    ties = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])

    def case(name: str, label: Tensor, noise: Tensor, **kw: float) -> Case:
        return Case(name, (label, noise), subsample_labels(label, noise, **kw), kwargs=kw)

    return [
        case("scarce positives (the photo's 74): negatives fill 256 - 74 = 182", photo_label, photo_noise),
        case("plentiful positives (rpn-m20, over 128): 128 + 128", m20_label, m20_noise),
        case("no positives: 256 negatives", torch.zeros(1000, dtype=torch.int64), torch.rand(1000, generator=g)),
        case("fewer candidates than places: every one is kept", few, torch.rand(400, generator=g)),
        case("equal noise: the lower index is kept", ties, torch.full((8,), 0.5), n_sample=4),
        case("a smaller sample: n_sample 8, pos_ratio 0.25 keeps at most 2 positives", many,
             torch.rand(300, generator=g), n_sample=8, pos_ratio=0.25),
    ]
