"""The assignment arena: data, COCO export and AP on hand cases, post-processing, smoke training of every
recipe, and the onnxruntime assignment backend against eager."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from exportable.assigners.task_aligned import TaskAlignedAssigner
from exportable.o2f_inference import O2FPostProcess
from lessons.arena import data as arena_data
from lessons.arena.evaluate import coco_ap, coco_from_dict, postprocess, to_coco_detections
from lessons.arena.model import TinyDetector, decode_boxes, make_priors
from lessons.arena.recipes import RECIPES, Predictions, Progress
from lessons.arena.train import ArenaConfig, OnnxAssigner, load_data, train, train_step

SMOKE = ArenaConfig(epochs=6, train_images=4, val_images=4, batch_size=4, warmup_steps=1, augment=False,
                    eval_every_epoch=False)


@pytest.fixture(scope="module")
def smoke_data():
    return load_data(SMOKE)


# -- data ---------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_and_independent_of_split_size():
    a = arena_data.draw_image(0, "train", 5)
    b = arena_data.draw_image(0, "train", 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    small, large = arena_data.make_split("val", 3, seed=1), arena_data.make_split("val", 6, seed=1)
    np.testing.assert_array_equal(small.images, large.images[:3])
    for x, y in zip(small.boxes, large.boxes[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(arena_data.draw_image(1, "train", 5)[0], a[0])  # another seed, another image
    assert not np.array_equal(arena_data.draw_image(0, "val", 5)[0], a[0])  # another split, another image


def test_split_holds_every_hard_case():
    split = arena_data.make_split("val", 32)
    assert [split.kinds[i] for i in range(4)] == list(arena_data.KINDS)
    boxes = np.concatenate(split.boxes)  # (M, 4)
    wh = boxes[:, 2:] - boxes[:, :2]  # (M, 2)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= arena_data.IMAGE_SIZE).all() and (wh > 0).all()
    assert (wh.max(1) < 8).any()  # objects smaller than the finest stride
    assert (wh.max(1) / wh.min(1) >= 3).any()  # extreme aspect ratios
    small = [len(b) for b, k in zip(split.boxes, split.kinds) if k == "small"]
    assert min(small) >= 5  # many small objects per image
    crowded = [b for b, k in zip(split.boxes, split.kinds) if k == "crowded"]
    from exportable.boxes import box_iou

    overlaps = [float((box_iou(torch.as_tensor(b), torch.as_tensor(b)) - torch.eye(len(b))).max()) for b in crowded]
    assert max(overlaps) > 0.3  # crowded scenes overlap


def test_tight_box_of_a_drawn_shape():
    img, boxes, labels = arena_data.draw_image(0, "train", 0)
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and boxes.shape == (len(labels), 4)
    assert np.array_equal(boxes, np.round(boxes))  # hulls of whole pixels


def test_coco_export_round_trips_through_pycocotools(tmp_path):
    split = arena_data.make_split("val", 8, seed=3)
    path = arena_data.write_coco(split, tmp_path)
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == split.image_ids
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(arena_data.CLASSES)
    for i, (boxes, labels) in enumerate(zip(split.boxes, split.labels)):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[i + 1]))
        got = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                        for a in anns], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(got, boxes)
        assert [a["category_id"] - 1 for a in anns] == labels.tolist()


# -- AP on hand cases ---------------------------------------------------------------------------------------


def _coco(images: list[list[tuple[list[float], int]]]) -> COCO:
    anns, imgs = [], []
    for i, gts in enumerate(images):
        imgs.append({"id": i + 1, "height": 100, "width": 100, "file_name": f"{i}.png"})
        for (x1, y1, x2, y2), cat in gts:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return coco_from_dict({"images": imgs, "annotations": anns,
                           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]})


def _det(image_id, box, cat, score):
    x1, y1, x2, y2 = box
    return {"image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


def test_a_perfect_detector_scores_one():
    gts = [[([10, 10, 30, 30], 1), ([50, 50, 90, 70], 2)], [([5, 5, 12, 40], 1)]]
    dets = [_det(i + 1, box, cat, 1.0) for i, img in enumerate(gts) for box, cat in img]
    ap = coco_ap(_coco(gts), dets)
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)


def test_hand_computed_ap():
    # Two gts; detections by score: A hits gt 1 exactly, B hits nothing, C overlaps gt 2 with IoU 0.72.
    # At IoU 0.50-0.70 (5 thresholds): recall 0.5, 0.5, 1; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3.
    #   101 recall points: r <= 0.50 (51 points) read 1, r in 0.51..1.00 (50 points) read 2/3.
    # At IoU 0.75-0.95 (5 thresholds) C misses: recall stops at 0.5 -> 51 points read 1, 50 read 0.
    gts = [[([10, 10, 30, 30], 1), ([60, 60, 80, 80], 1)]]
    dets = [_det(1, [10, 10, 30, 30], 1, 0.9), _det(1, [40, 0, 50, 10], 1, 0.8), _det(1, [60, 60, 80, 74.4], 1, 0.7)]
    ap = coco_ap(_coco(gts), dets)
    matched = (51 + 50 * 2 / 3) / 101
    missed = 51 / 101
    assert ap["AP50"] == pytest.approx(matched, abs=1e-9)
    assert ap["AP75"] == pytest.approx(missed, abs=1e-9)
    assert ap["AP"] == pytest.approx((5 * matched + 5 * missed) / 10, abs=1e-9)


def test_no_detection_scores_zero():
    assert coco_ap(_coco([[([10, 10, 30, 30], 1)]]), [])["AP50"] == 0.0


# -- post-processing ----------------------------------------------------------------------------------------


def test_postprocess_nms_is_class_aware():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 5.9], [50, 50, 60, 60]],
                         dtype=torch.float32)  # IoU with box 0: 1, 1, 0.7, 0.59, 0
    scores = torch.zeros(5, 2)
    scores[0, 0], scores[1, 1], scores[2, 0], scores[3, 0], scores[4, 0] = 0.9, 0.8, 0.65, 0.6, 0.04
    b, s, lab = postprocess(scores, boxes, nms=True, iou_threshold=0.6)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.6]) and lab.tolist() == [0, 1, 0]  # 0.65 suppressed by 0.9
    torch.testing.assert_close(b, boxes[[0, 1, 3]])
    _, s2, lab2 = postprocess(scores, boxes, nms=False)
    assert s2.tolist() == pytest.approx([0.9, 0.8, 0.65, 0.6]) and lab2.tolist() == [0, 1, 0, 0]  # 0.04 < 0.05
    _, s3, _ = postprocess(scores, boxes, nms=False, max_det=2)
    assert s3.tolist() == pytest.approx([0.9, 0.8])


def test_no_nms_postprocess_equals_o2f_exported_postprocess():
    g = torch.Generator().manual_seed(0)
    sizes = [(16, 16), (8, 8), (4, 4)]
    cls = [torch.randn(2, 4, h, w, generator=g) * 2 - 1 for h, w in sizes]
    ctr = [torch.randn(2, 1, h, w, generator=g) for h, w in sizes]
    deltas = [torch.randn(2, 4, h, w, generator=g) * 0.5 for h, w in sizes]
    priors = make_priors()
    dist = [d.exp() * s for d, s in zip(deltas, (8, 16, 32))]  # (B, 4, H, W) pixels
    ref = O2FPostProcess(num_classes=4, strides=(8, 16, 32)).forward_levels(
        cls, dist, ctr, torch.tensor([[128, 128]] * 2))
    flat = lambda xs, k: torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, k) for x in xs], 1)  # noqa: E731
    pred = Predictions(flat(cls, 4), decode_boxes(priors, flat(deltas, 4)), flat(ctr, 1)[..., 0])
    scores = RECIPES["o2f"].score(pred)  # (B, N, C)
    for i in range(2):
        b, s, lab = postprocess(scores[i], pred.boxes[i], nms=False, image_size=128)
        n = int(ref.counts[i])
        assert n == len(s) > 0
        assert torch.equal(lab, ref.labels[i, :n])
        torch.testing.assert_close(s, ref.scores[i, :n], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b, ref.boxes[i, :n], rtol=1e-5, atol=1e-4)


# -- training -----------------------------------------------------------------------------------------------


def test_registry_is_explicit_and_complete():
    assert {"retinanet", "atss", "simota", "tood", "o2f"} <= set(RECIPES)
    priors = make_priors()
    model = TinyDetector(4)
    images, gts = arena_data.to_batch(arena_data.make_split("val", 2), [0, 1])
    with torch.no_grad():
        out = model(images)
    pred = Predictions(out.cls_logits, decode_boxes(priors, out.box_deltas), out.quality_logits)
    for name, recipe in RECIPES.items():
        res = recipe.assign(recipe.build(4), priors, pred, gts, Progress(0, 6))
        assert res.gt_index.shape == (2, priors.points.shape[0]), name
        assert res.positive.any(), name
        terms = recipe.loss(pred, priors, res)
        assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values()), name


def test_bad_arguments_are_named():
    with pytest.raises(KeyError, match="name"):
        train("hungarian", steps=1)
    with pytest.raises(ValueError, match="assign_backend"):
        train("tood", assign_backend="tensorrt", steps=1)
    with pytest.raises(ValueError, match="onnx_entry"):
        train("retinanet", assign_backend="onnxruntime", steps=1)
    with pytest.raises(ValueError, match="entry"):
        OnnxAssigner("task_aligned_assigner", TaskAlignedAssigner.tood(topk=9))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_smoke_training_is_deterministic_and_learns(name, smoke_data):
    a = train(name, 0, SMOKE, smoke_data, progress_bar=False, evaluate_at_end=False)
    b = train(name, 0, SMOKE, smoke_data, progress_bar=False, evaluate_at_end=False)
    assert len(a.losses) == 6 and a.losses == b.losses  # same seed, same losses, bit for bit
    assert np.mean(a.losses[-2:]) < np.mean(a.losses[:2])  # six steps on the same four images: it learns
    assert all(p > 0 for p in a.positives)


def test_onnxruntime_step_equals_eager_step(smoke_data):
    recipe = RECIPES["tood"]
    eager = recipe.build(4)
    onnx = OnnxAssigner("task_aligned_assigner", eager)
    priors = make_priors()
    images, gts = arena_data.to_batch(smoke_data.train, [0, 1, 2, 3])
    steps = {}
    for key, assigner in (("eager", eager), ("onnxruntime", onnx)):
        torch.manual_seed(0)
        model = TinyDetector(4)
        loss, terms, res, _ = train_step(model, recipe, assigner, priors, images, gts, Progress(0, 8))
        loss.backward()
        steps[key] = (loss.detach(), res, [p.grad for p in model.parameters()])  # None: unused (quality)
    (l_e, r_e, g_e), (l_o, r_o, g_o) = steps["eager"], steps["onnxruntime"]
    assert torch.equal(r_e.gt_index, r_o.gt_index) and torch.equal(r_e.labels, r_o.labels)
    for x, y in zip(r_e[2:], r_o[2:]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)  # the catalog entry's tolerance
    torch.testing.assert_close(l_o, l_e, atol=1e-6, rtol=1e-6)
    assert [g is None for g in g_e] == [g is None for g in g_o]
    for x, y in zip(g_e, g_o):
        if x is not None:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_run_arena_writes_the_report_and_trains_through_onnxruntime(smoke_data, tmp_path, monkeypatch):
    from lessons.arena import bench

    monkeypatch.setattr(bench, "SHOWCASE_IMAGES", (0,))
    cfg = replace(SMOKE, epochs=3, eval_every_epoch=True)
    bench.run_arena(["retinanet", "tood"], (0,), cfg, tmp_path / "out", tmp_path / "build", progress_bar=False)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"arena.md", "arena.json", "arena_ap.png",
                                                                "arena_curves.png"}
    assert (tmp_path / "build" / "val_seed0.json").exists()
    saved = json.loads((tmp_path / "out" / "arena.json").read_text())
    assert len(saved["runs"]) == 2 and set(saved["positives"]) == {"retinanet", "tood"}
    onnx = saved["onnxruntime"]  # TOOD trained again with the exported assigner in onnxruntime
    assert onnx["steps_same_assignment"] == onnx["steps"] == 3
    assert onnx["max_float_diff_vs_eager_assigner"] <= 1e-6 and onnx["max_rel_loss_diff"] <= 1e-5
    report = (tmp_path / "out" / "arena.md").read_text()
    assert "within the seed spread" in report or "outside the seed spread" in report
    again = bench.run_arena(["retinanet"], (0,), cfg, tmp_path / "out2", tmp_path / "build", progress_bar=False)
    assert again["machine"]["runs_from_cache"] == 1 and again["runs"][0] == saved["runs"][0]  # resumed, same run


def test_coco_detections_use_xywh_and_one_based_categories():
    dets = to_coco_detections(3, torch.tensor([[1.0, 2.0, 5.0, 10.0]]), torch.tensor([0.5]), torch.tensor([2]))
    assert dets == [{"image_id": 3, "category_id": 3, "bbox": [1.0, 2.0, 4.0, 8.0], "score": 0.5}]
