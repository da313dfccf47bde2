"""The numbers notebooks 05-09 state in their text, recomputed the way the notebooks compute them.

The notebooks print these numbers and say them in sentences; here they are pinned, so that a change in
`lessons` or `exportable` that moves one shows up as a failing test rather than as a wrong sentence.
Hand-derived values say where they come from (the study notes' printouts, arithmetic); the others were
read once off the seeded scenes and are regression values.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from exportable.anchors import AnchorGenerator, featmap_sizes_for, inside_flags
from exportable.assigners.atss import ATSSAssigner
from exportable.assigners.max_iou import MaxIoUAssigner
from exportable.assigners.result import AssignResult
from exportable.assigners.simota import simota_cls_cost
from exportable.batching import pad_gts
from exportable.boxes import box_iou
from exportable.losses import sigmoid_focal_loss
from exportable.o2f_inference import O2FPostProcess
from exportable.retinanet import RetinaNetTargets, images_to_levels, level_counts
from lessons import atss as atss_ref
from lessons import o2f as o2f_ref
from lessons import retinanet_targets as retina_ref
from lessons import simota as simota_ref
from lessons import task_aligned as tal_ref
from lessons.scenes import default_scene, random_scene, toy_scene

NUM_CLASSES = 80


# --------------------------------------------------------------------------------------------
# 05 · RetinaNet targets
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retina_batch():
    """Notebook 05's batch: 1216 x 800 padded, a 1088 x 800 image with 17 gts and an 800 x 800 one with 6."""
    image_hws = [(1088, 800), (800, 800)]
    scenes = [random_scene(*image_hws[0], 17, seed=0), random_scene(*image_hws[1], 6, seed=1)]
    b, m = 2, 17
    gt_boxes, gt_labels = torch.zeros(b, m, 4), torch.zeros(b, m, dtype=torch.int64)
    gt_mask = torch.zeros(b, m, dtype=torch.bool)
    for i, s in enumerate(scenes):
        gt_boxes[i, : s.num_gts], gt_labels[i, : s.num_gts], gt_mask[i, : s.num_gts] = s.boxes, s.labels, True
    image_sizes = torch.tensor(image_hws)
    gen = AnchorGenerator.retinanet()
    sizes = featmap_sizes_for((1216, 800), gen.strides)
    anchors = torch.cat(gen.grid_anchors(sizes))
    valid = gen.valid_flags(sizes, image_sizes)
    return dict(scenes=scenes, gt_boxes=gt_boxes, gt_labels=gt_labels, gt_mask=gt_mask, image_sizes=image_sizes,
                sizes=sizes, anchors=anchors, valid=valid, m=m)


def test_05_the_notes_anchor_counts(retina_batch):
    # the note prints these featmap sizes and per-level counts; 163,206 is its one image's anchor count
    assert retina_batch["sizes"] == [(152, 100), (76, 50), (38, 25), (19, 13), (10, 7)]
    assert level_counts(retina_batch["sizes"]) == [136_800, 34_200, 8_550, 2_223, 630]
    assert retina_batch["anchors"].shape == (182_403, 4)
    assert retina_batch["valid"].sum(1).tolist() == [163_206, 120_087]


def test_05_inside_flags(retina_batch):
    a, v, hw = retina_batch["anchors"], retina_batch["valid"], retina_batch["image_sizes"]
    assert torch.equal(inside_flags(a, v, hw, allowed_border=-1), v)  # b = -1: the border test is off
    assert inside_flags(a, v, hw, allowed_border=0).sum(1).tolist() == [142_369, 102_557]


def test_05_maxiou_counts_on_the_batch(retina_batch):
    rb = retina_batch
    out = MaxIoUAssigner.retinanet()(rb["anchors"], rb["gt_boxes"], rb["gt_labels"], rb["gt_mask"], rb["valid"])
    assert out.positive.sum(1).tolist() == [390, 154]
    assert out.negative.sum(1).tolist() == [162_160, 119_683]
    ignored_inside = (out.ignored & rb["valid"]).sum(1).tolist()
    assert ignored_inside == [656, 250]
    for i in range(2):  # every gt got at least one anchor here
        per_gt = torch.bincount(out.gt_index[i][out.positive[i]], minlength=rb["m"])[: int(rb["gt_mask"][i].sum())]
        assert per_gt.min() >= 1


def test_05_targets_shapes_levels_and_counts(retina_batch):
    rb = retina_batch
    targets = RetinaNetTargets(num_classes=NUM_CLASSES)
    res = targets(rb["anchors"], rb["valid"], rb["image_sizes"], rb["gt_boxes"], rb["gt_labels"], rb["gt_mask"])
    assert res.labels.shape == (2, 182_403) and res.bbox_targets.shape == (2, 182_403, 4)
    counts = level_counts(rb["sizes"])
    labels_list, _, bbox_list, _, num_pos, num_neg = res.to_levels(counts)
    assert [tuple(t.shape) for t in labels_list] == [(2, n) for n in counts]
    assert [tuple(t.shape) for t in bbox_list] == [(2, n, 4) for n in counts]
    assert torch.equal(torch.cat(labels_list, dim=1), res.labels)
    assert all(torch.equal(u, v) for u, v in zip(images_to_levels([res.labels[0], res.labels[1]], counts), labels_list))
    assert int(num_pos) == 390 + 154 and int(num_neg) == 162_160 + 119_683
    assign = MaxIoUAssigner.retinanet()(rb["anchors"], rb["gt_boxes"], rb["gt_labels"], rb["gt_mask"], rb["valid"])
    assert torch.equal(res.labels < NUM_CLASSES, assign.positive)
    assert torch.equal(res.bbox_weights[..., 0] > 0, assign.positive)
    assert torch.equal(res.label_weights > 0, assign.positive | assign.negative)  # ignored and outside weigh 0
    # an image without any gt still counts 1
    empty = torch.zeros(1, rb["m"], dtype=torch.bool)
    def plus_image_1(key):
        return torch.cat([rb[key], rb[key][1:]])

    three = targets(rb["anchors"], plus_image_1("valid"), plus_image_1("image_sizes"), plus_image_1("gt_boxes"),
                    plus_image_1("gt_labels"), torch.cat([rb["gt_mask"], empty]))
    assert int(three.num_total_pos) == 545


def test_05_allowed_border_costs_the_corner_gts(retina_batch):
    rb = retina_batch

    def per_gt(border):
        inside = inside_flags(rb["anchors"], rb["valid"][1:], rb["image_sizes"][1:], border)
        a = MaxIoUAssigner.retinanet()(rb["anchors"], rb["gt_boxes"][1:], rb["gt_labels"][1:], rb["gt_mask"][1:],
                                       inside)
        return torch.bincount(a.gt_index[0][a.positive[0]], minlength=rb["m"])[:6].tolist()

    assert per_gt(-1) == [6, 13, 49, 32, 26, 28] and per_gt(0) == [6, 13, 49, 9, 26, 4]
    assert [round(v) for v in rb["scenes"][1].boxes[3].tolist()] == [0, 0, 154, 200]  # the top-left corner gt


def test_05_photo_assignment_figure_counts():
    scene = default_scene()
    pa = retina_ref.photo_assignment(scene)
    assert pa.anchors.shape == (57_780, 4)
    assert pa.positives_per_gt() == [29, 34, 43, 28, 8, 17, 3, 4]
    assert int((pa.gt_index == -2).sum()) == 310 and int(pa.low_quality.sum()) == 7
    assert int(((pa.gt_index >= 0) & pa.crosses_border).sum()) == 37
    low = pa.max_overlaps[pa.low_quality]
    assert (low == low[0]).all() and 0.30 < float(low[0]) < 0.31  # every star is a tie at the eye's best IoU
    assert set(pa.gt_index[pa.low_quality].tolist()) == {6, 7}  # only the eyes


def test_05_the_1_based_encoding_on_the_toy():
    gts = torch.tensor([[0.0, 0.0, 10.0, 9.0], [30.0, 30.0, 50.0, 50.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 10.0, 20.0],
                            [30.0, 30.0, 60.0, 60.0], [60.0, 60.0, 70.0, 70.0], [0.0, 0.0, 10.0, 10.0]])
    inside = torch.tensor([[True, True, True, True, True, False]])
    out = MaxIoUAssigner.retinanet(num_classes=2)(anchors, gts[None], torch.tensor([[0, 1]]),
                                                  torch.ones(1, 2, dtype=torch.bool), inside)
    assert out.gt_index[0].tolist() == [0, -1, -2, 1, -1, -2]
    assert out.to_mmdet()[0].tolist() == [1, 0, -1, 2, 0, -1]
    assert torch.equal(retina_ref.to_mmdet_gt_inds(out.gt_index[0]), out.to_mmdet()[0])
    assert torch.equal(AssignResult.from_mmdet(out.to_mmdet()[0]), out.gt_index[0])
    reference = retina_ref.max_iou_assign(anchors[:5], gts, torch.tensor([0, 1]), num_classes=2)
    assert reference.gt_index.tolist() == [0, -1, -2, 1, -1]


def test_05_overwrite_and_hijack():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 0.0, 48.0, 16.0]])
    gts = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 16.0, 16.0]])
    iou = box_iou(gts, anchors)
    assert iou.argmax(dim=1).tolist() == [0, 0] and iou[0].max() < 0.4
    assert retina_ref.max_iou_assign(anchors, gts, torch.tensor([0, 1]), num_classes=2).gt_index.tolist() == [1, -1]
    scene = default_scene()
    bad = torch.tensor([[200.0, 300.0, 260.0, 300.0]])
    assert retina_ref.photo_assignment(scene, extra_boxes=bad, extra_names=("bad",)).positives_per_gt() == [
        0, 0, 0, 0, 0, 0, 57_780]
    pa = retina_ref.photo_assignment(scene)
    boxes = torch.cat([scene.boxes, bad])
    guarded = MaxIoUAssigner.retinanet(guard_zero_iou=True)(pa.anchors, boxes[None], torch.arange(7)[None],
                                                            torch.ones(1, 7, dtype=torch.bool))
    assert torch.bincount(guarded.gt_index[0][guarded.positive[0]], minlength=7).tolist() == [29, 34, 43, 28, 8, 17, 0]


def test_05_focal_loss_hands_the_loss_to_the_positives(retina_batch):
    rb = retina_batch
    res = RetinaNetTargets(num_classes=NUM_CLASSES)(rb["anchors"], rb["valid"], rb["image_sizes"], rb["gt_boxes"],
                                                    rb["gt_labels"], rb["gt_mask"])
    flat = res.labels[res.label_weights > 0]
    is_pos = flat < NUM_CLASSES
    assert int(is_pos.sum()) == 544 and int((~is_pos).sum()) == 281_843
    prior = -math.log(99.0)
    shares = {}
    for std in (0.0, 1.0):
        g = torch.Generator().manual_seed(0)
        tot = {"ce": [0.0, 0.0], "fl": [0.0, 0.0]}
        for chunk in torch.split(torch.arange(flat.shape[0]), 50_000):
            logits = prior + std * torch.randn(len(chunk), NUM_CLASSES, generator=g)
            lab = flat[chunk]
            target = F.one_hot(lab, NUM_CLASSES + 1)[:, :NUM_CLASSES].float()
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)
            fl = sigmoid_focal_loss(logits, lab, reduction="none").sum(1)
            for k, v in (("ce", ce), ("fl", fl)):
                tot[k][0] += v[is_pos[chunk]].sum().item()
                tot[k][1] += v[~is_pos[chunk]].sum().item()
        shares[std] = {k: n / (p + n) for k, (p, n) in tot.items()}
    assert shares[0.0]["ce"] > 0.95 and shares[1.0]["ce"] > 0.95
    assert shares[0.0]["fl"] < 0.05 and shares[1.0]["fl"] < 0.7
    for p, factor in ((0.9, 100), (0.99, 10_000)):  # gamma = 2 divides an easy example's loss by 1 / (1 - p)^2
        assert math.isclose(1 / (1 - p) ** 2, factor, rel_tol=1e-9)


# --------------------------------------------------------------------------------------------
# 06 · ATSS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atss_photo():
    scene = default_scene()
    gen = AnchorGenerator.atss()
    sizes = featmap_sizes_for((608, 512), gen.strides)
    anchors, level_ids = torch.cat(gen.grid_anchors(sizes)), gen.level_ids(sizes)
    valid = gen.valid_flags(sizes, torch.tensor([scene.hw]))[0]
    result = atss_ref.atss_assign(anchors, level_ids, scene.boxes, scene.labels, valid=valid)
    return scene, anchors, level_ids, valid, result


def test_06_anchors_and_candidates(atss_photo):
    scene, anchors, level_ids, valid, result = atss_photo
    assert torch.bincount(level_ids).tolist() == [4864, 1216, 304, 80, 20] and anchors.shape == (6484, 4)
    assert int(valid.sum()) == 6484 - 64  # level 0's last row lies on the padding
    assert len(result.candidates[2]) == 45 and torch.bincount(result.candidate_levels[2]).tolist() == [9] * 5
    assert int(result.candidate_ious[2].argmax()) // 9 == 2  # the face's best-fitting anchors are on level 2


def test_06_figure_3_cases_on_the_photo(atss_photo):
    _, _, level_ids, _, result = atss_photo
    assert torch.bincount(level_ids[result.gt_index == 0], minlength=5).tolist() == [0, 0, 0, 9, 0]  # (a)
    assert torch.bincount(level_ids[result.gt_index == 1], minlength=5).tolist() == [0, 9, 9, 0, 0]  # (b)
    assert float(result.std[0]) > float(result.std[1])


def test_06_atss_vs_maxiou_on_the_photo(atss_photo):
    scene, anchors, _, valid, result = atss_photo
    assert result.positives_per_gt() == [9, 18, 9, 9, 9, 9]
    maxiou = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, match_low_quality=False)(
        anchors, scene.boxes[None], scene.labels[None], torch.ones(1, 6, dtype=torch.bool), valid[None])
    assert torch.bincount(maxiou.gt_index[0][maxiou.positive[0]], minlength=6).tolist() == [16, 3, 12, 9, 0, 0]
    assert 0.29 < float(result.threshold.min()) and float(result.threshold.max()) < 0.51
    assert (result.gt_index == -2).sum() == 64 and (result.gt_index == -1).sum() == 6484 - 64 - 63


def test_06_k_barely_matters(atss_photo):
    scene, anchors, level_ids, valid, _ = atss_photo
    thresholds = []
    for k in (3, 5, 7, 9, 11, 13, 15, 19):
        r = atss_ref.atss_assign(anchors, level_ids, scene.boxes, scene.labels, topk=k, valid=valid)
        if k <= 15:
            assert [r.positives_per_gt()[j] for j in (0, 2, 3, 4, 5)] == [k] * 5
        thresholds.append(r.threshold)
    spread = torch.stack(thresholds).amax(0) - torch.stack(thresholds).amin(0)
    assert float(spread.max()) < 0.11


def test_06_crowded_conflicts_and_paddle():
    crowd = random_scene(320, 480, 40, seed=2)
    anchors, levels = atss_ref.atss_anchors(crowd.hw)
    r = atss_ref.atss_assign(anchors, levels, crowd.boxes, crowd.labels)
    paddle = atss_ref.atss_assign(anchors, levels, crowd.boxes, crowd.labels, variant="paddle")
    differ = torch.nonzero(paddle.gt_index != r.gt_index)[:, 0]
    assert int((r.positive.sum(1) > 1).sum()) == 27 and len(differ) == 3
    assert not any(bool(r.positive[n, paddle.gt_index[n]]) for n in differ.tolist())  # Paddle's gt was never positive


def test_06_appendix_quirks():
    four = torch.tensor([[c[0] - 10, c[1] - 10, c[0] + 10, c[1] + 10] for c in [(6, 6), (14, 6), (6, 14), (14, 14)]],
                        dtype=torch.float32)
    g20 = pad_gts([torch.tensor([[0.0, 0, 20, 20]])], [torch.tensor([0])])
    lv0 = torch.zeros(4, dtype=torch.int64)
    assert ATSSAssigner(topk=4, num_levels=1)(four, lv0, *g20).gt_index[0].tolist() == [0, 0, 0, 0]
    assert ATSSAssigner(topk=4, num_levels=1, variant="paddle")(four, lv0, *g20).gt_index[0].tolist() == [-1] * 4
    perfect = torch.tensor([[0.0, 0, 10, 10], [30, 0, 40, 10]])
    one = ATSSAssigner(topk=1, num_levels=1)(perfect, torch.zeros(2, dtype=torch.int64),
                                             *pad_gts([perfect[:1]], [torch.tensor([0])]))
    assert one.gt_index[0].tolist() == [-1, -1]
    ious4 = torch.tensor([9 / 11, 8 / 12, 6 / 14, 0.0], dtype=torch.float64)
    unbiased, biased = ious4.mean() + ious4.std(), ious4.mean() + ious4.std(unbiased=False)
    assert biased < 9 / 11 < unbiased and round(float(unbiased), 3) == 0.835 and round(float(biased), 3) == 0.787
    shifted = torch.tensor([[s, 0.0, s + 10, 10] for s in (1, 2, 4, 10)])
    hand = ATSSAssigner(topk=4, num_levels=1)(shifted, lv0, *pad_gts([torch.tensor([[0.0, 0, 10, 10]])],
                                                                     [torch.tensor([0])]))
    assert hand.gt_index[0].tolist() == [-1, -1, -1, -1]
    small_anchors, small_levels = atss_ref.atss_anchors((64, 96))
    small = atss_ref.atss_assign(small_anchors, small_levels, torch.tensor([[20.0, 10, 60, 50]]), torch.tensor([0]))
    assert torch.bincount(small.candidate_levels[0]).tolist() == [9, 9, 6, 2, 1]
    grid = atss_ref.atss_anchors((40, 40))[0][:25]
    tied = atss_ref.atss_assign(grid, torch.zeros(25, dtype=torch.int64), torch.tensor([[12.0, 12.0, 28.0, 28.0]]),
                                torch.tensor([0]))
    assert tied.candidates[0].tolist() == [12, 13, 17, 18, 7, 8, 11, 14, 16]


# --------------------------------------------------------------------------------------------
# 07 · SimOTA
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simota_photo():
    scene = default_scene()
    points, strides, level_ids = simota_ref.photo_points(scene.hw)
    out = {"scene": scene, "points": points, "strides": strides, "level_ids": level_ids}
    for q in ("weak", "strong"):
        scores, boxes = simota_ref.synthetic_predictions(points, strides, scene.boxes, scene.labels,
                                                         scene.num_classes, q)
        out[q] = (scores, boxes, simota_ref.simota_assign(points, strides, scores, boxes, scene.boxes, scene.labels))
    return out


def test_07_points_and_networks(simota_photo):
    lv = simota_photo["level_ids"]
    assert [int((lv == i).sum()) for i in range(3)] == [76 * 64, 38 * 32, 19 * 16]
    assert simota_photo["weak"][0].max() < 0.05 < 0.9 < simota_photo["strong"][0].max()


def test_07_geometric_prior(simota_photo):
    weak, strong = simota_photo["weak"][2], simota_photo["strong"][2]
    assert int(strong.candidates.sum()) == 5_940
    assert strong.in_ctr.sum(0).tolist() == [75, 60, 75, 75, 75, 75]  # 5 x 5 per level; the hat's is cut by the top
    assert strong.pair.sum(0).tolist() == [75, 60, 75, 37, 39, 33]  # flat gts lose square points outside the box
    assert torch.equal(strong.candidates, weak.candidates)  # geometry only
    assert (strong.cost >= 1e5).float().mean() > 0.95  # most pairs pay the penalty


def test_07_dynamic_k_and_conflicts(simota_photo):
    weak, strong = simota_photo["weak"][2], simota_photo["strong"][2]
    assert weak.dynamic_ks.tolist() == [1] * 6  # the note: "about 1" at the start
    assert strong.dynamic_ks.tolist() == [9, 9, 9, 8, 8, 8]
    row = int((weak.marked.sum(1) > 1).nonzero()[0, 0])
    assert weak.conflicts == 1 and weak.marked[row].nonzero()[:, 0].tolist() == [0, 2]
    assert weak.positives_per_gt.tolist() == [0, 1, 1, 1, 1, 1]  # the person is left with none
    assert strong.conflicts == 0 and strong.positives_per_gt.tolist() == [9, 9, 9, 8, 8, 8]


def test_07_winner_over_all_rows():
    same = torch.tensor([[0.0, 0.0, 40.0, 40.0]] * 3)
    rows = simota_ref.simota_assign(torch.tensor([[12.0, 20.0], [20.0, 20.0]]), torch.tensor([8.0, 8.0]),
                                    torch.tensor([[0.6, 0.6, 0.8], [0.1, 0.1, 0.95]]),
                                    torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 2), same, torch.tensor([0, 1, 2]))
    assert rows.marked.tolist() == [[True, True, False], [False, False, True]]
    assert rows.gt_index.tolist() == [2, 2] and rows.positives_per_gt.tolist() == [0, 0, 2]


def test_07_tiny_objects_and_penalised_ties(simota_photo):
    points, strides, scene = simota_photo["points"], simota_photo["strides"], simota_photo["scene"]
    g = torch.Generator().manual_seed(0)
    side = 2 + 6 * torch.rand(200, generator=g)
    centre = torch.rand(200, 2, generator=g) * torch.tensor([512.0, 600.0])
    tiny = torch.cat([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)
    in_box, in_sq = simota_ref.geometric_prior(points, strides, tiny, 2.5)
    _, in_sq_new = simota_ref.geometric_prior(points, strides, tiny, 1.5)
    assert int((~(in_box & in_sq).any(0)).sum()) == 102 and int((~in_sq_new.any(0)).sum()) == 0
    scores, boxes, _ = simota_photo["strong"]
    boxes7 = torch.cat([scene.boxes, torch.tensor([[250.0, 270.0, 255.0, 275.0]])])  # 5 x 5 px: no point inside
    labels7 = torch.cat([scene.labels, torch.tensor([2])])
    res7 = simota_ref.simota_assign(points, strides, scores, boxes, boxes7, labels7)
    col = res7.cost[:, 6]
    assert int(res7.pair[:, 6].sum()) == 0 and bool((col >= 1e5).all())
    assert col.unique().numel() == 1_089  # of 5,940 candidates: the +1e5 rounds costs to multiples of 1/128
    yolox = simota_ref.simota_assign(points, strides, scores, boxes, scene.boxes, scene.labels,
                                     **simota_ref.variant_kwargs("yolox"))
    assert int(yolox.candidates.sum()) < 5_940


def test_07_decomposed_cost_on_80_classes():
    _, (points, strides, scores, boxes, gts, labels, mask) = simota_ref.benchmark_case("yolox-m20@1")
    naive = simota_ref.cls_cost_naive(scores[0, :2000], labels[0]).double()  # (2000, 20)
    fast = simota_cls_cost(scores[:, :2000], labels)[0].T.double()
    assert (fast - naive).abs().max() < 1e-6 * naive.min()  # float32 rounding of a sum of ~80 terms


# --------------------------------------------------------------------------------------------
# 08 · Task-aligned
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tal_photo():
    scene = default_scene()
    points, strides, level_ids = tal_ref.photo_points(scene.hw)
    mid = tal_ref.photo_predictions(points, strides, scene.boxes, scene.labels, scene.num_classes, "mid")
    start = tal_ref.photo_predictions(points, strides, scene.boxes, scene.labels, scene.num_classes, "start")
    return scene, points, mid, start


def test_08_the_metric_on_the_face(tal_photo):
    scene, points, (scores, boxes), (scores0, _) = tal_photo
    assert points.shape == (6_384, 2) and scores0.max() < 0.1 < 0.9 < scores.max()
    s, u = scores[:, scene.labels[2]], tal_ref.iou_row(scene.boxes[2], boxes)
    t = tal_ref.metric_of(s, u, 1.0, 6.0)
    top = tal_ref.top_candidates(t, 13)
    assert int(top[0]) == int(t.argmax()) and len(set(top.tolist())) == 13
    assert int(s.argmax()) != int(u.argmax())  # the best score and the best IoU sit at different points
    assert (int((t > t[s.argmax()]).sum()) + 1, int((t > t[u.argmax()]).sum()) + 1) == (13, 6)
    same = tal_ref.metric_of(torch.tensor([1.0, 0.0596]), torch.tensor([0.5, 0.8]), 1.0, 6.0)
    assert abs(same[0] - same[1]) < 1e-4  # a 0.06-score box at IoU 0.8 ranks with a perfect score at IoU 0.5
    by_iou, by_score = set(tal_ref.top_candidates(u, 13).tolist()), set(tal_ref.top_candidates(s, 13).tolist())
    shared = {}
    for alpha, beta in ((0.0, 1.0), (0.5, 6.0), (1.0, 6.0), (1.0, 1.0), (1.0, 0.0)):
        chosen = set(tal_ref.top_candidates(tal_ref.metric_of(s, u, alpha, beta), 13).tolist())
        shared[alpha, beta] = (len(chosen & by_iou), len(chosen & by_score))
    assert shared[0.0, 1.0] == (13, 0) and shared[1.0, 0.0] == (0, 13)
    assert shared[0.5, 6.0][0] > shared[1.0, 6.0][0] > shared[1.0, 1.0][0]


def test_08_tood_and_t_hat_on_the_mid_network(tal_photo):
    scene, points, (scores, boxes), _ = tal_photo
    tood = tal_ref.task_aligned_assign(points, scores, boxes, scene.boxes, scene.labels)
    assert tood.positives_per_gt() == [13] * 6
    outside = [int((~tal_ref.inside(points[c], scene.boxes[g], 0.01)).sum()) for g, c in enumerate(tood.candidates)]
    assert outside == [0] * 6
    for g in range(6):
        sel = tood.gt_index == g
        assert abs(tood.target_scores[sel].max() - tood.overlaps[sel].max()) < 1e-6  # top t_hat = the best IoU
    ultra = tal_ref.task_aligned_assign(points, scores, boxes, scene.boxes, scene.labels, variant="ultralytics")
    same_k = tal_ref.task_aligned_assign(points, scores, boxes, scene.boxes, scene.labels, variant="ultralytics",
                                         topk=13, alpha=1.0)
    both = tood.positive & same_k.positive
    assert ultra.positives_per_gt() == [10] * 6 and int(both.sum()) == 74
    assert (same_k.overlaps[both] <= tood.overlaps[both] + 1e-6).all()  # CIoU <= IoU


def test_08_at_initialisation(tal_photo):
    scene, points, _, (scores0, boxes0) = tal_photo
    tood0 = tal_ref.task_aligned_assign(points, scores0, boxes0, scene.boxes, scene.labels)
    ultra0 = tal_ref.task_aligned_assign(points, scores0, boxes0, scene.boxes, scene.labels, variant="ultralytics")
    outside = [int((~tal_ref.inside(points[c], scene.boxes[g], 0.01)).sum()) for g, c in enumerate(tood0.candidates)]
    assert tood0.metric[0].max() < 1e-12 and tood0.metric.max() < 1e-4
    assert tood0.positives_per_gt() == [11, 13, 13, 8, 9, 12] and outside[3:] == [5, 4, 1]
    assert ultra0.positives_per_gt() == [10] * 6


def test_08_zero_metric_positives_and_eps():
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * 8 + 4
    gts = torch.tensor([[0.0, 0.0, 30.0, 20.0], [34.0, 20.0, 60.0, 44.0]])
    far = torch.tensor([[200.0, 200.0, 210.0, 210.0]]).expand(48, 4)
    flat = torch.full((48, 1), 0.5)
    assert tal_ref.task_aligned_assign(pts, flat, far, gts, torch.tensor([0, 0])).positives_per_gt() == [0, 0]
    ultra = tal_ref.task_aligned_assign(pts, flat, far, gts, torch.tensor([0, 0]), variant="ultralytics")
    assert ultra.gt_index.eq(0).nonzero()[:, 0].tolist() == [0, 1, 2, 3, 8, 9] and (ultra.target_scores == 0).all()
    z = torch.zeros(4)
    assert torch.isnan(z / z.max() * z.max()).all() and (tal_ref.normalise(z, z, 1e-9) == 0).all()
    speck = torch.tensor([254.0, 89.0, 258.0, 93.0])
    points = tal_ref.photo_points((600, 512))[0]
    assert not tal_ref.inside(points, speck, 1e-9).any()
    assert int(tal_ref.inside(points, tal_ref.stal_box(speck, 16.0), 1e-9).sum()) == 4


# --------------------------------------------------------------------------------------------
# 09 · O2F
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def o2f_photo():
    scene = default_scene()
    head = o2f_ref.photo_head(scene.boxes, scene.labels, (608, 512))
    single = o2f_ref.o2f_assign_single(head.points, head.strides, head.pred_scores[0], head.pred_boxes[0], scene.boxes,
                                       scene.labels, o2f_ref.soft_ceiling_value(0, 12))
    return scene, head, single


def test_09_points_and_candidates(o2f_photo):
    scene, head, single = o2f_photo
    assert [int((head.level_ids == lvl).sum()) for lvl in range(5)] == [4864, 1216, 304, 80, 20]
    assert torch.equal(head.points[:2], torch.tensor([[4.0, 4.0], [12.0, 4.0]]))  # cell centres, stride 8
    assert single.candidates.sum(0).tolist() == [45, 29, 40, 19, 18, 18]
    face = single.candidates[:, 2]
    assert [int((face & (head.level_ids == lvl)).sum()) for lvl in range(5)] == [9, 9, 9, 9, 4]  # every level


def test_09_certain_and_ambiguous(o2f_photo):
    scene, head, single = o2f_photo
    assert int(single.certain.sum()) == 6 and int(single.ambiguous.sum()) == 36  # 7 per gt: 1 + 6
    for g in range(scene.num_gts):
        mine = (single.gt_index == g).nonzero()[:, 0]
        mine = mine[torch.sort(single.quality[mine, g], descending=True, stable=True).indices]
        assert single.target_scores[mine[0]] == 1 and single.certain[mine[0]]
        assert math.isclose(single.target_scores[mine[1:]].max().item(), 0.6, rel_tol=1e-6)  # the best ambiguous = T
    schedule = [o2f_ref.soft_ceiling_value(e, 12) for e in range(12)]
    assert math.isclose(schedule[0], 0.6) and math.isclose(schedule[-1], 0.2)
    assert math.isclose(schedule[5], 0.6 - 5 * 0.4 / 11)


def test_09_toy_training_fades_the_duplicates():
    run = o2f_ref.toy_training()
    peak = int(run.duplicates.argmax())
    assert run.duplicates[peak] >= 5 and run.duplicates[-1] == 0 and (run.duplicates[peak:].diff() <= 0).all()
    assert (run.certain_score[-1] > 0.9).all() and (run.duplicate_score[-1] <= 0.21).all()
    toy = toy_scene()
    (free_b, free_s, free_l), (nms_b, _, _) = o2f_ref.nms_free_vs_nms(run.pred_boxes[0], run.pred_scores[0])
    assert torch.equal(free_b[:2], nms_b[:2])
    assert sorted(o2f_ref.greedy_match(free_b, free_s, free_l, toy.boxes, toy.labels)[:2].tolist()) == [0, 1]
    assert free_s[2].item() < 0.21  # every duplicate NMS-free keeps sits below T = 0.2 (and its target)


def test_09_nms_free_needs_o2f_training(o2f_photo):
    scene, head, _ = o2f_photo
    free = O2FPostProcess()(*head.cls, *head.box, *head.ctr, torch.tensor([[600, 512]]))
    assert int(free.counts[0]) == 100
    top = (free.boxes[0, :20], free.scores[0, :20], free.labels[0, :20])
    match = o2f_ref.greedy_match(*top, scene.boxes, scene.labels)
    assert int((match == -2).sum()) == 15 and 5 not in match.tolist()  # the name tag is crowded out
    _, (nms_b, nms_s, nms_l) = o2f_ref.nms_free_vs_nms(head.pred_boxes[0], head.pred_scores[0])
    nms_match = o2f_ref.greedy_match(nms_b, nms_s, nms_l, scene.boxes, scene.labels)
    assert sorted(nms_match[nms_match >= 0].tolist()) == list(range(6))
