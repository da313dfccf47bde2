"""MaxIoUAssigner: mmdetection's documented example, each quirk by hand, reference parity, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable.assigners.max_iou import AnchorGtMaxIoU, MaxIoUAssigner
from exportable.batching import pad_gts
from exportable.box_pairs import anchor_blocks, overlapping_pairs
from exportable.boxes import box_iou
from exportable.onnx import TRANSLATIONS
from lessons.retinanet_targets import max_iou_assign, to_mmdet_gt_inds


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def assign(assigner, anchors, gts, labels=None, **kw):
    labels = torch.zeros(len(gts), dtype=torch.int64) if labels is None else torch.tensor(labels)
    batch = pad_gts([T(gts).reshape(-1, 4)], [labels], min_rows=0)
    return assigner(T(anchors), batch.boxes, batch.labels, batch.mask, **kw)


def test_mmdetection_documented_example():
    # mmdetection's docstring: anchors [[0,0,10,10],[10,10,20,20]], gt [[0,0,10,9]]
    # -> gt_inds [1, 0]: the first anchor is positive for gt 0 (IoU 0.9), the second negative.
    res = assign(MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5), [[0, 0, 10, 10], [10, 10, 20, 20]],
                 [[0, 0, 10, 9]], labels=[3])
    assert res.gt_index.tolist() == [[0, -1]]
    assert res.to_mmdet().tolist() == [[1, 0]]
    assert res.labels.tolist() == [[3, 80]]
    assert res.overlaps[0].tolist() == pytest.approx([0.9, 0.0])
    assert res.boxes[0, 0].tolist() == [0, 0, 10, 9] and res.boxes[0, 1].tolist() == [0, 0, 0, 0]
    assert res.weights.tolist() == [[1.0, 1.0]] and res.target_scores.tolist() == [[1.0, 0.0]]


def test_thresholds_and_the_ignored_band():
    # IoUs with the gt [0,0,10,10]: 1.0, 0.45 (ignored band 0.4..0.5), 0.2 (negative)
    anchors = [[0, 0, 10, 10], [0, 0, 4.5, 10], [0, 0, 2, 10]]
    res = assign(MaxIoUAssigner(match_low_quality=False), anchors, [[0, 0, 10, 10]])
    assert res.gt_index.tolist() == [[0, -2, -1]]
    assert res.weights.tolist() == [[1.0, 0.0, 1.0]]
    # a (low, high) negative range: 0.2 is below 0.3 -> ignored, not negative
    res = assign(MaxIoUAssigner(neg_iou_thr=(0.3, 0.5), match_low_quality=False), anchors, [[0, 0, 10, 10]])
    assert res.gt_index.tolist() == [[0, -1, -2]]


def test_low_quality_match_and_later_gt_overwrites():
    # One anchor is the best (IoU 0.25 and 0.2) for two gts; no anchor reaches 0.5.
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110]]
    gts = [[0, 0, 5, 5], [5, 0, 10, 4]]  # IoU 0.25 and 0.2 with anchor 0
    res = assign(MaxIoUAssigner(), anchors, gts, labels=[1, 2])
    # gt 0's best is anchor 0 (0.25) -> 0; then gt 1's best is also anchor 0 (0.2) -> overwritten by 1
    assert res.gt_index.tolist() == [[1, -1]]
    assert res.labels.tolist() == [[2, 80]]
    # max_overlaps keeps step 6's raw value (best IoU 0.25 with gt 0), not the low-quality gt's
    assert res.overlaps[0, 0].item() == pytest.approx(0.25)
    ref = max_iou_assign(T(anchors), T(gts), torch.tensor([1, 2]))
    assert ref.gt_index.tolist() == [1, -1]
    # min_pos_iou gates it: with 0.22 only gt 0 qualifies
    res = assign(MaxIoUAssigner(min_pos_iou=0.22), anchors, gts)
    assert res.gt_index.tolist() == [[0, -1]]


def test_gt_max_assign_all_takes_every_tie():
    anchors = [[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 30, 10]]
    gt = [[5, 0, 25, 10]]  # IoU 1/3 with anchors 0 and 1 (tie), 2/3 with anchor 2
    res = assign(MaxIoUAssigner(pos_iou_thr=0.9, neg_iou_thr=0.1), anchors[:2], gt)
    assert res.gt_index.tolist() == [[0, 0]]
    res = assign(MaxIoUAssigner(pos_iou_thr=0.9, neg_iou_thr=0.1, gt_max_assign_all=False), anchors[:2], gt)
    assert res.gt_index.tolist() == [[0, -2]]  # only the first anchor among the tie


def test_zero_iou_hijack_and_its_guard():
    # A gt far from every anchor has best IoU 0 >= min_pos_iou = 0: it grabs every IoU-0 anchor.
    anchors = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    gts = [[0, 0, 10, 10], [500, 500, 510, 510]]
    res = assign(MaxIoUAssigner(), anchors, gts)
    # The quirk: every anchor has IoU 0 with gt 1, so gt 1 (visited last) takes them ALL, even
    # anchor 0, a perfect (IoU 1) match of gt 0. mmdetection's reference does exactly this.
    assert res.gt_index.tolist() == [[1, 1, 1]]
    assert max_iou_assign(T(anchors), T(gts), torch.tensor([0, 0])).gt_index.tolist() == [1, 1, 1]
    guarded = assign(MaxIoUAssigner(guard_zero_iou=True), anchors, gts)
    assert guarded.gt_index.tolist() == [[0, -1, -1]]
    # RPN's min_pos_iou = 0.3 prevents it as well
    assert assign(MaxIoUAssigner.rpn(), anchors, gts).gt_index.tolist() == [[0, -1, -1]]


def test_zero_area_gt_hijacks_too():
    anchors = [[0, 0, 10, 10], [20, 20, 30, 30]]
    res = assign(MaxIoUAssigner(), anchors, [[0, 0, 10, 10], [5, 5, 5, 5]])
    assert res.gt_index.tolist() == [[1, 1]]  # a zero-area gt has IoU 0 with everything: it takes all
    assert assign(MaxIoUAssigner(guard_zero_iou=True), anchors, [[0, 0, 10, 10], [5, 5, 5, 5]]).gt_index.tolist() == [
        [0, -1]]


def test_ignore_regions_both_iof_directions():
    anchors = [[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 140, 140]]
    gt = [[0, 0, 10, 10]]
    ignore = pad_gts([T([[48, 48, 62, 62], [100, 100, 105, 105]])])
    kw = {"ignore_boxes": ignore.boxes, "ignore_mask": ignore.mask}
    # IoF over the anchor: anchor 1 is fully inside the first ignore box (1.0); anchor 2 is 25/1600
    res = assign(MaxIoUAssigner(ignore_iof_thr=0.5), anchors, gt, **kw)
    assert res.gt_index.tolist() == [[0, -2, -1]]
    assert res.overlaps[0, 1].item() == -1.0  # mmdetection keeps -1 for ignored anchors
    # IoF over the ignore box: the small box lies fully inside anchor 2 -> anchor 2 ignored as well
    res = assign(MaxIoUAssigner(ignore_iof_thr=0.5, ignore_wrt_candidates=False), anchors, gt, **kw)
    assert res.gt_index.tolist() == [[0, -2, -2]]
    # off by default
    assert assign(MaxIoUAssigner(), anchors, gt, **kw).gt_index.tolist() == [[0, -1, -1]]


def test_no_gts_no_anchors_all_padding_and_anchor_mask():
    a = MaxIoUAssigner()
    anchors = T([[0, 0, 10, 10], [5, 5, 15, 15]])
    empty = pad_gts([torch.zeros(0, 4), T([[0, 0, 10, 10]])], [torch.zeros(0, dtype=torch.int64), torch.tensor([4])])
    res = a(anchors, empty.boxes, empty.labels, empty.mask)
    assert res.gt_index.tolist() == [[-1, -1], [0, -1]]  # [5,5,15,15] has IoU 25/175 with the gt
    assert res.overlaps[0].tolist() == [0.0, 0.0] and res.labels[0].tolist() == [80, 80]
    none = pad_gts([torch.zeros(0, 4)] * 2)  # M = 0
    res = a(anchors, none.boxes, none.labels, none.mask)
    assert res.gt_index.shape == (2, 2) and (res.gt_index == -1).all()
    res = a(torch.zeros(0, 4), empty.boxes, empty.labels, empty.mask)  # N = 0
    assert res.gt_index.shape == (2, 0) and res.boxes.shape == (2, 0, 4)
    mask = torch.tensor([[True, False], [False, True]])
    res = a(anchors, empty.boxes, empty.labels, empty.mask, anchor_mask=mask)
    # invalid anchors take no part (ignored, weight 0); in image 1 the gt's best VALID anchor
    # (IoU 25/175, a low-quality match) becomes its positive
    assert res.gt_index.tolist() == [[-1, -2], [-2, 0]]
    assert res.weights.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_duplicate_gts_lower_index_wins_step_8_and_later_wins_step_9():
    anchors = [[0, 0, 10, 10], [0, 0, 9, 10]]
    res = assign(MaxIoUAssigner(), anchors, [[0, 0, 10, 10], [0, 0, 10, 10]])
    # step 8 gives gt 0 (first on ties); step 9 then re-assigns gt 1's best anchor (anchor 0) to gt 1
    assert res.gt_index.tolist() == [[1, 0]]


def _random_case(seed: int, n: int = 300, m: int = 8, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 40], 1).round()
    anchors[::17] = anchors[1::17][: len(anchors[::17])]  # duplicated anchors: exact ties
    gxy = torch.rand(m, 2, generator=g) * 100
    gts = torch.cat([gxy, gxy + 2 + torch.rand(m, 2, generator=g) * 50], 1).round()
    gts[-1] = T([900, 900, 910, 910])  # a gt away from everything: the zero-IoU quirk
    labels = torch.randint(0, 5, (m,), generator=g)
    ixy = torch.rand(k, 2, generator=g) * 100
    ignore = torch.cat([ixy, ixy + 30], 1)
    return anchors, gts, labels, ignore


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cfg", [
    {},
    {"pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3},
    {"neg_iou_thr": (0.1, 0.4), "gt_max_assign_all": False},
    {"match_low_quality": False, "ignore_iof_thr": 0.5},
    {"ignore_iof_thr": 0.3, "ignore_wrt_candidates": False, "guard_zero_iou": True},
])
def test_reference_parity_on_random_scenes(seed, cfg):
    anchors, gts, labels, ignore = _random_case(seed)
    ours = MaxIoUAssigner(num_classes=5, **cfg)
    # a batch of three images: this scene, the same without gts, and a subset of gts
    batch = pad_gts([gts, torch.zeros(0, 4), gts[:3]], [labels, labels[:0], labels[:3]])
    ign = pad_gts([ignore, ignore[:1], ignore[:0]], min_rows=1)
    res = ours(anchors, batch.boxes, batch.labels, batch.mask, ignore_boxes=ign.boxes, ignore_mask=ign.mask)
    ref_cfg = {k: v for k, v in cfg.items()}
    images = [(gts, labels, ignore), (gts[:0], labels[:0], ignore[:1]), (gts[:3], labels[:3], ignore[:0])]
    for i, (g, lab, ib) in enumerate(images):
        overlaps = box_iou(g, anchors) if len(g) else None  # (M, N), the same floats as ours
        ref = max_iou_assign(anchors, g, lab, ignore_boxes=ib, num_classes=5, overlaps=overlaps, **ref_cfg)
        assert torch.equal(res.gt_index[i], ref.gt_index), (i, cfg)
        assert torch.equal(res.labels[i], ref.labels)
        assert torch.equal(res.to_mmdet()[i], to_mmdet_gt_inds(ref.gt_index))
        assert torch.allclose(res.overlaps[i], ref.max_overlaps)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(1, 40), st.integers(1, 40)),
                min_size=1, max_size=6),
       st.sampled_from([0.0, 0.3, 0.5]))
def test_every_positive_reaches_the_threshold_or_is_a_gts_best(gts, min_pos_iou):
    g = torch.Generator().manual_seed(len(gts))
    xy = torch.rand(120, 2, generator=g) * 80
    anchors = torch.cat([xy, xy + 3 + torch.rand(120, 2, generator=g) * 30], 1)
    boxes = T([[x, y, x + w, y + h] for x, y, w, h in gts])
    res = assign(MaxIoUAssigner(min_pos_iou=min_pos_iou), anchors.tolist(), boxes.tolist())
    iou = box_iou(anchors, boxes)  # (N, M)
    best_per_gt = iou.max(dim=0).values  # (M,)
    for n in (res.gt_index[0] >= 0).nonzero()[:, 0].tolist():
        j = int(res.gt_index[0, n])
        assert iou[n, j] >= 0.5 or (iou[n, j] == best_per_gt[j] and best_per_gt[j] >= min_pos_iou)


def test_bad_input_is_named():
    a = MaxIoUAssigner()
    b = pad_gts([T([[0, 0, 1, 1]])], [torch.tensor([0])])
    with pytest.raises(ValueError, match="anchors"):
        a(T([[0, 0, 1]]), b.boxes, b.labels, b.mask)
    with pytest.raises(ValueError, match="anchor_mask"):
        a(T([[0, 0, 1, 1]]), b.boxes, b.labels, b.mask, anchor_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="ignore_boxes and ignore_mask"):
        a(T([[0, 0, 1, 1]]), b.boxes, b.labels, b.mask, ignore_boxes=b.boxes)
    with pytest.raises(TypeError, match="gt_labels"):
        a(T([[0, 0, 1, 1]]), b.boxes, b.labels.float(), b.mask)
    with pytest.raises(TypeError, match="neg_iou_thr"):
        MaxIoUAssigner(neg_iou_thr="0.4")
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(neg_iou_thr=(0.5, 0.1))
def _boxes(g: torch.Generator, *shape: int, scale: float = 100.0) -> torch.Tensor:
    xy = torch.rand(*shape, 2, generator=g) * scale
    return torch.cat([xy, xy + torch.rand(*shape, 2, generator=g) * scale / 2], dim=-1)


def test_anchor_gt_max_iou_padding_ties_and_empty_images():
    anchors = T([[0, 0, 2, 2], [10, 10, 12, 12], [0, 0, 4, 4]])
    # image 0: gts 0 and 2 are real and equal (a tie), gt 1 is padding that would win if it counted
    gts = T([[[0, 0, 2, 2], [10, 10, 12, 12], [0, 0, 2, 2]], [[0, 0, 0, 0]] * 3])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    best, argmax = AnchorGtMaxIoU()(anchors, gts, mask)
    # anchor 0: IoU 1 with gts 0 and 2 -> the lower index 0; anchor 1: IoU 0 with every real gt -> index 0;
    # anchor 2 ([0,0,4,4]): IoU 4/16 with gts 0 and 2 -> 0. Image 1 has no real gt: 0 and -1.
    torch.testing.assert_close(best, T([[1.0, 0.0, 0.25], [0.0, 0.0, 0.0]]))
    assert argmax.tolist() == [[0, 0, 0], [-1, -1, -1]]
    assert argmax.dtype == torch.int64
    # M = 0 works (one masked row is appended inside)
    best, argmax = AnchorGtMaxIoU()(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert best.tolist() == [[0.0] * 3] * 2 and argmax.tolist() == [[-1] * 3] * 2
    with pytest.raises(ValueError, match="gt_mask"):
        AnchorGtMaxIoU()(anchors, gts, mask[:, :2])


@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore:# The axis name")
def test_anchor_gt_max_iou_onnx_with_no_gts():
    import onnxruntime as ort
    from torch.export import Dim

    g = torch.Generator().manual_seed(6)
    module = AnchorGtMaxIoU().eval()
    n, b, m = Dim("N"), Dim("B"), Dim("M")
    example = (_boxes(g, 12), _boxes(g, 2, 3), torch.tensor([[True, False, True], [True] * 3]))
    program = torch.onnx.export(  # plain torch export: the package's custom operators need their table
        module, example, dynamo=True, optimize=False, dynamic_shapes=({0: n}, {0: b, 1: m}, {0: b, 1: m}),
        custom_translation_table=TRANSLATIONS,
    )
    model = program.model_proto
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    anchors = _boxes(g, 40)
    for gts, mask in [
        (torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool)),  # M = 0
        (torch.cat([_boxes(g, 3, 5), anchors[None, :2].expand(3, 2, 4)], 1),  # exact IoU-1 ties
         torch.tensor([[True] * 7, [False] * 7, [True, False] * 3 + [True]])),  # an all-padding image
    ]:
        feeds = {"anchors": anchors.numpy(), "gt_boxes": gts.numpy(), "gt_mask": mask.numpy()}
        got = session.run(None, feeds)
        want = module(anchors, gts, mask)
        np.testing.assert_allclose(got[0], want[0].numpy(), rtol=0, atol=1e-6)
        assert np.array_equal(got[1], want[1].numpy())


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 300])
@pytest.mark.parametrize("grid", [True, False])
def test_overlapping_pairs_hold_every_nonzero_iou(n, grid):
    """The pairs' IoUs, scattered into (M, N), are exactly the dense IoU (padded gts: 0), for grid anchors and
    scattered ones, block-sized edge counts, zero-area and out-of-image gts."""
    g = torch.Generator().manual_seed(n)
    if grid:
        side = int(n**0.5) + 1
        ys, xs = torch.meshgrid(torch.arange(side) * 8.0, torch.arange(side) * 8.0, indexing="ij")
        xy = torch.stack([xs.flatten(), ys.flatten()], 1)[:n]  # (N, 2) row by row, as an anchor grid
        anchors = torch.cat([xy - 10, xy + 10], 1)
    else:
        anchors = _boxes(g, n)
    gts = torch.cat([_boxes(g, 6), T([[30, 30, 30, 30], [500, 500, 520, 530], [-40, -40, -5, -5], [40, 40, 60, 50]])])
    mask = torch.tensor([True] * 9 + [False])  # the last gt is padding
    blocks = anchor_blocks(anchors)
    pairs = overlapping_pairs(blocks, gts, mask)
    dense = torch.zeros(len(gts), blocks.index.numel())  # (M, NB * S)
    dense[pairs.gt.unsqueeze(1).expand_as(pairs.slot), pairs.slot] = pairs.iou
    want = torch.where(mask.unsqueeze(1), box_iou(gts, anchors), 0.0)  # (M, N)
    assert torch.equal(dense[:, :n], want)
    assert (dense[:, n:] == 0).all()  # padding slots


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cfg", [
    {"gt_max_assign_all": False},
    {"ignore_iof_thr": 0.5},
    {"ignore_iof_thr": 0.3, "gt_max_assign_all": False, "neg_iou_thr": (0.1, 0.4)},
    {"pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3},
])
def test_anchor_mask_is_the_reference_on_the_inside_anchors(seed, cfg):
    """anchor_mask: as if mmdetection ran on the inside anchors only; the far gt (gt_max 0) hijacks, and with
    gt_max_assign_all=False it takes the first INSIDE anchor."""
    anchors, gts, labels, ignore = _random_case(seed)
    g = torch.Generator().manual_seed(100 + seed)
    inside = torch.rand(2, len(anchors), generator=g) > 0.3  # (B, N)
    inside[:, :5] = False  # the first anchors outside: the first inside one is not anchor 0
    batch = pad_gts([gts, gts[:4]], [labels, labels[:4]])
    ign = pad_gts([ignore, ignore[:1]])
    res = MaxIoUAssigner(num_classes=5, **cfg)(anchors, batch.boxes, batch.labels, batch.mask, anchor_mask=inside,
                                               ignore_boxes=ign.boxes, ignore_mask=ign.mask)
    for i, (gt, lab, ib) in enumerate([(gts, labels, ignore), (gts[:4], labels[:4], ignore[:1])]):
        a = anchors[inside[i]]
        ref = max_iou_assign(a, gt, lab, ignore_boxes=ib, num_classes=5, overlaps=box_iou(gt, a), **cfg)
        assert torch.equal(res.gt_index[i][inside[i]], ref.gt_index), (i, cfg)
        assert torch.equal(res.overlaps[i][inside[i]], ref.max_overlaps)
        assert (res.gt_index[i][~inside[i]] == -2).all() and (res.overlaps[i][~inside[i]] == 0).all()
