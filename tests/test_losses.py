"""Losses: focal loss by hand and against the elementwise reference, mmdetection's reduction rules,
L1 / smooth L1, RetinaNet's loss flat vs the document's per-level loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from exportable.anchors import AnchorGenerator, featmap_sizes_for
from exportable.batching import pad_gts
from exportable.losses import (
    RetinaNetLoss,
    flatten_levels,
    l1_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    weight_reduce_loss,
)
from exportable.retinanet import RetinaNetTargets
from lessons.retinanet_targets import focal_loss_reference
from lessons.scenes import random_scene


def T(x):
    return torch.tensor(x, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# Focal loss
# ------------------------------------------------------------------------------------------------


def test_focal_loss_by_hand():
    # One anchor of class 1 among C = 2, logits (0, 2); alpha 0.25, gamma 2:
    #   class 0 (t = 0): p = 0.5,      -(1 - 0.25) * 0.5^2 * log(1 - 0.5)       = 0.1299651
    #   class 1 (t = 1): p = 0.880797, -0.25 * (1 - 0.880797)^2 * log(0.880797) = 0.0004509
    logits, labels = T([[0.0, 2.0]]), torch.tensor([1])
    each = sigmoid_focal_loss(logits, labels, reduction="none")
    assert each.tolist()[0] == pytest.approx([0.1299651, 0.0004509], abs=1e-7)
    assert sigmoid_focal_loss(logits, labels, reduction="sum").item() == pytest.approx(0.1304160, abs=1e-7)
    # a background anchor (label C = 2): every class is a negative
    bg = sigmoid_focal_loss(T([[-1.0, 3.0]]), torch.tensor([2]), reduction="none")
    assert bg.tolist()[0] == pytest.approx([0.0169935, 2.0747103], abs=1e-6)
    # weight 0 drops an anchor; weight 2 doubles it
    two = sigmoid_focal_loss(T([[0.0, 2.0], [-1.0, 3.0]]), torch.tensor([1, 2]), T([2.0, 0.0]), reduction="sum")
    assert two.item() == pytest.approx(2 * 0.1304160, abs=1e-6)


def _random_case(seed: int, b: int = 3, n: int = 40, c: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, c, generator=g) * 4  # (B, N, C)
    labels = torch.randint(0, c + 1, (b, n), generator=g)  # (B, N), c = background
    weights = torch.randint(0, 3, (b, n), generator=g).float()  # 0, 1 or 2
    return logits, labels, weights


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_focal_loss_equals_the_elementwise_reference(seed, alpha, gamma):
    logits, labels, weights = _random_case(seed)
    ours = sigmoid_focal_loss(logits, labels, weights, alpha=alpha, gamma=gamma, reduction="none")  # (B, N, C)
    ref = focal_loss_reference(logits.reshape(-1, 7), labels.reshape(-1), weights.reshape(-1), alpha, gamma)
    torch.testing.assert_close(ours.reshape(-1, 7).double(), ref, rtol=1e-5, atol=1e-6)


def test_focal_loss_is_mmdetections_py_sigmoid_focal_loss():
    # mmdetection's CPU path: one_hot(labels, C + 1)[:, :C], then BCE-with-logits times the focal weight
    logits, labels, weights = _random_case(7)
    flat, lab = logits.reshape(-1, 7), labels.reshape(-1)
    target = F.one_hot(lab, num_classes=8)[:, :7].type_as(flat)
    p = flat.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    fw = (0.25 * target + 0.75 * (1 - target)) * pt.pow(2.0)
    mm = F.binary_cross_entropy_with_logits(flat, target, reduction="none") * fw * weights.reshape(-1, 1)
    ours = sigmoid_focal_loss(logits, labels, weights, reduction="mean", avg_factor=13)
    assert ours.item() == pytest.approx((mm.sum() / 13).item(), rel=1e-6)


def test_focal_loss_is_finite_for_extreme_logits_and_has_gradients():
    logits = T([[100.0, -100.0, 1e4], [-1e4, 0.0, 50.0]]).requires_grad_()
    loss = sigmoid_focal_loss(logits, torch.tensor([0, 3]), reduction="sum")
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # a confident right answer costs ~0; a confident wrong one costs ~alpha * |logit| (missed positive)
    # or ~(1 - alpha) * |logit| (false positive on a background anchor, label C = 1)
    each = sigmoid_focal_loss(T([[100.0, -100.0]]), torch.tensor([0]), reduction="none")
    assert each.tolist() == [[0.0, 0.0]]
    assert sigmoid_focal_loss(T([[-100.0]]), torch.tensor([0]), reduction="sum").item() == pytest.approx(25.0)
    assert sigmoid_focal_loss(T([[100.0]]), torch.tensor([1]), reduction="sum").item() == pytest.approx(75.0)


def test_focal_loss_per_class_weights_and_bad_input():
    logits, labels, _ = _random_case(1, b=1, n=5, c=3)
    w = torch.rand(1, 5, 3)
    full = sigmoid_focal_loss(logits, labels, reduction="none")
    assert sigmoid_focal_loss(logits, labels, w, reduction="sum").item() == pytest.approx((full * w).sum().item())
    with pytest.raises(ValueError, match="weights"):
        sigmoid_focal_loss(logits, labels, torch.ones(1, 4))
    with pytest.raises(ValueError, match="labels"):
        sigmoid_focal_loss(logits, torch.full((1, 5), 4))  # C = 3: labels run over [0, 3]
    with pytest.raises(TypeError, match="labels"):
        sigmoid_focal_loss(logits, labels.float())
    with pytest.raises(ValueError, match="logits"):
        sigmoid_focal_loss(logits * float("nan"), labels)
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(logits, labels, alpha=1.5)


# ------------------------------------------------------------------------------------------------
# Reduction and box losses (mmdetection's ``weighted_loss`` docstring numbers)
# ------------------------------------------------------------------------------------------------


def test_reduction_rules_are_mmdetections():
    pred, target, weight = T([0, 2, 3]), T([1, 1, 1]), T([1, 0, 1])
    assert l1_loss(pred, target).item() == pytest.approx(4 / 3)
    assert l1_loss(pred, target, weight).item() == pytest.approx(1.0)  # mean over all 3, weights applied
    assert l1_loss(pred, target, reduction="none").tolist() == [1.0, 1.0, 2.0]
    assert l1_loss(pred, target, weight, avg_factor=2).item() == pytest.approx(1.5)  # sum / avg_factor
    assert l1_loss(pred, target, weight, avg_factor=torch.tensor(2)).item() == pytest.approx(1.5)
    assert l1_loss(pred, target, weight, reduction="sum").item() == pytest.approx(3.0)
    # 'none' ignores avg_factor; 'sum' with avg_factor is an error (mmdetection raises too)
    assert l1_loss(pred, target, weight, reduction="none", avg_factor=2).tolist() == [1.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="avg_factor"):
        l1_loss(pred, target, weight, reduction="sum", avg_factor=2)
    with pytest.raises(ValueError, match="reduction"):
        weight_reduce_loss(pred, reduction="avg")
    # mmdetection 3.3 adds float32 eps to the avg_factor
    eps = torch.finfo(torch.float32).eps
    got = l1_loss(pred, target, weight, avg_factor=1, avg_factor_eps=eps).item()
    assert got == pytest.approx(3.0 / (1 + eps), rel=1e-7) and got < 3.0


def test_smooth_l1_loss():
    pred, target = T([0.0, 0.5, 3.0]), T([1.0, 0.25, 1.0])  # |d| = 1, 0.25, 2
    # beta 1: 1 - 0.5, 0.5 * 0.25^2 / 1, 2 - 0.5
    assert smooth_l1_loss(pred, target, reduction="none").tolist() == pytest.approx([0.5, 0.03125, 1.5])
    # beta 0.5: 1 - 0.25, 0.5 * 0.0625 / 0.5, 2 - 0.25
    assert smooth_l1_loss(pred, target, beta=0.5, reduction="none").tolist() == pytest.approx([0.75, 0.0625, 1.75])
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(pred, target, beta=0.0)
    with pytest.raises(ValueError, match="target"):
        l1_loss(pred, target[:2])


# ------------------------------------------------------------------------------------------------
# RetinaNet's loss: the formula, and the document's per-level loop
# ------------------------------------------------------------------------------------------------

GEN = AnchorGenerator.retinanet()
FEAT_SIZES = featmap_sizes_for((96, 128), GEN.strides)  # (12, 16), (6, 8), (3, 4), (2, 2), (1, 1)
ANCHORS = torch.cat(GEN.grid_anchors(FEAT_SIZES))
NUM_CLASSES = 6


def _targets(seed: int = 0):
    scenes = [random_scene(96, 128, 5, num_classes=NUM_CLASSES, seed=seed),
              random_scene(80, 128, 0, num_classes=NUM_CLASSES, seed=seed + 1)]
    batch = pad_gts([s.boxes for s in scenes], [s.labels for s in scenes])
    sizes = torch.tensor([[96, 128], [80, 128]])
    valid = GEN.valid_flags(FEAT_SIZES, sizes)
    return RetinaNetTargets(num_classes=NUM_CLASSES)(ANCHORS, valid, sizes, batch.boxes, batch.labels, batch.mask)


def _head_outputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = 9
    cls = [torch.randn(2, a * NUM_CLASSES, h, w, generator=g) - 2 for h, w in FEAT_SIZES]  # (B, A * C, H, W)
    box = [torch.randn(2, a * 4, h, w, generator=g) * 0.5 for h, w in FEAT_SIZES]  # (B, A * 4, H, W)
    return cls, box


def test_retinanet_loss_is_the_formula():
    t = _targets()
    cls, box = _head_outputs()
    logits, deltas = flatten_levels(cls, NUM_CLASSES), flatten_levels(box, 4)  # (B, N, C), (B, N, 4)
    out = RetinaNetLoss()(logits, deltas, t.labels, t.label_weights, t.bbox_targets, t.bbox_weights, t.num_total_pos)
    n_pos = int(t.num_total_pos)
    assert n_pos == max(int((t.labels[0] < NUM_CLASSES).sum()), 1) + 1  # image 1 has no gts: counts 1
    ref = focal_loss_reference(logits.reshape(-1, NUM_CLASSES), t.labels.reshape(-1), t.label_weights.reshape(-1))
    assert out.loss_cls.item() == pytest.approx(ref.sum().item() / n_pos, rel=1e-6)
    l1 = ((deltas - t.bbox_targets).abs() * t.bbox_weights).sum() / n_pos
    assert out.loss_bbox.item() == pytest.approx(l1.item(), rel=1e-6)
    # loss weights scale; smooth L1 is the other box loss
    scaled = RetinaNetLoss(loss_cls_weight=2.0, loss_bbox_weight=0.5)(
        logits, deltas, t.labels, t.label_weights, t.bbox_targets, t.bbox_weights, t.num_total_pos)
    assert scaled.loss_cls.item() == pytest.approx(2 * out.loss_cls.item(), rel=1e-6)
    assert scaled.loss_bbox.item() == pytest.approx(0.5 * out.loss_bbox.item(), rel=1e-6)
    smooth = RetinaNetLoss(bbox_loss="smooth_l1", beta=0.11)(
        logits, deltas, t.labels, t.label_weights, t.bbox_targets, t.bbox_weights, t.num_total_pos)
    want = smooth_l1_loss(deltas, t.bbox_targets, t.bbox_weights, beta=0.11, avg_factor=n_pos)
    assert smooth.loss_bbox.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_per_level_sum_equals_the_flat_loss(seed):
    t = _targets(seed)
    cls, box = _head_outputs(seed)
    loss = RetinaNetLoss()
    flat = loss(flatten_levels(cls, NUM_CLASSES), flatten_levels(box, 4), t.labels, t.label_weights,
                t.bbox_targets, t.bbox_weights, t.num_total_pos)
    losses_cls, losses_bbox = loss.per_level(cls, box, t.labels, t.label_weights, t.bbox_targets, t.bbox_weights,
                                             t.num_total_pos)
    assert len(losses_cls) == len(losses_bbox) == 5
    assert sum(losses_cls).item() == pytest.approx(flat.loss_cls.item(), rel=1e-5)
    assert sum(losses_bbox).item() == pytest.approx(flat.loss_bbox.item(), rel=1e-5)


def test_flatten_levels_follows_the_anchor_order():
    # Write each anchor's coordinates into a head-shaped tensor at channel a * 4 + k of cell (y, x):
    # flattening it the document's way must give back the anchors in the generator's order.
    outputs = []
    for (h, w), level in zip(FEAT_SIZES, GEN.grid_anchors(FEAT_SIZES)):
        grid = level.reshape(h, w, 9 * 4).permute(2, 0, 1)[None]  # (1, A * 4, H, W)
        outputs.append(grid)
    assert torch.equal(flatten_levels(outputs, 4)[0], ANCHORS)


def test_inf_targets_on_weight_zero_rows_never_make_nan():
    # mmdetection multiplies |pred - target| by the weight: -inf * 0 = NaN there; we mask such rows.
    logits, deltas = torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)
    labels, lw = torch.tensor([[0, 3]]), torch.ones(1, 2)
    targets = T([[[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, -math.inf, 0.0]]])
    bw = T([[[1.0] * 4, [0.0] * 4]])
    out = RetinaNetLoss()(logits, deltas, labels, lw, targets, bw, torch.tensor(1))
    assert out.loss_bbox.item() == pytest.approx(0.1)
    bw[0, 1] = 1.0  # a positive with a -inf target (zero-size gt): inf, as in mmdetection
    assert RetinaNetLoss()(logits, deltas, labels, lw, targets, bw, torch.tensor(1)).loss_bbox.item() == math.inf


def test_retinanet_loss_bad_input_is_named():
    t = _targets()
    cls, box = _head_outputs()
    logits, deltas = flatten_levels(cls, NUM_CLASSES), flatten_levels(box, 4)
    args = [logits, deltas, t.labels, t.label_weights, t.bbox_targets, t.bbox_weights, t.num_total_pos]
    loss = RetinaNetLoss()
    for i, name, bad, err in [
        (6, "num_total_pos", t.num_total_pos.float(), TypeError),
        (6, "num_total_pos", torch.tensor(0), ValueError),
        (6, "num_total_pos", torch.tensor([3]), ValueError),
        (2, "labels", t.labels + NUM_CLASSES, ValueError),
        (1, "bbox_deltas", deltas[:, :-1], ValueError),
        (4, "bbox_targets", t.bbox_targets * float("nan"), ValueError),
        (3, "label_weights", t.label_weights[:1], ValueError),
    ]:
        broken = list(args)
        broken[i] = bad
        with pytest.raises(err, match=name):
            loss(*broken)
    with pytest.raises(ValueError, match="bbox_loss"):
        RetinaNetLoss(bbox_loss="giou")
