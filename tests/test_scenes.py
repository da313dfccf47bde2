"""lessons.scenes: the photo, the toy scene, the seeded docs/workloads.md scenes and predictions."""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lessons import scenes


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes, written out for the test."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _assert_inside(boxes: torch.Tensor, h: int, w: int) -> None:
    x1, y1, x2, y2 = boxes.reshape(-1, 4).unbind(-1)
    assert bool((x1 >= 0).all() and (y1 >= 0).all()), "box starts outside the image"
    assert bool((x2 <= w).all() and (y2 <= h).all()), "box ends outside the image"
    assert bool((x1 < x2).all() and (y1 < y2).all()), "inverted or empty box"


# --------------------------------------------------------------------------------------------
# The photo and the toy scene
# --------------------------------------------------------------------------------------------


def test_photo_is_the_real_photo():
    image = scenes.load_photo()
    assert image.shape == (600, 512, 3)
    assert image.dtype == np.uint8
    assert 40 < image.mean() < 220 and image.std() > 30  # a real photo, not a blank canvas


def test_load_photo_returns_a_fresh_copy():
    first = scenes.load_photo()
    first[:] = 0
    assert scenes.load_photo().any()


def test_default_scene_boxes_inside_and_not_inverted():
    s = scenes.default_scene()
    assert s.hw == (600, 512)
    assert s.boxes.dtype == torch.float32 and s.boxes.shape == (6, 4)
    assert s.labels.dtype == torch.int64 and s.labels.shape == (6,)
    _assert_inside(s.boxes, *s.hw)
    assert bool((s.labels >= 0).all() and (s.labels < len(s.class_names)).all())
    assert s.names() == ["person", "hat", "face", "tie", "ribbons", "name tag"]
    assert s.name == "grace_hopper" and s.num_gts == 6 and s.num_classes == 6


def test_default_scene_person_contains_the_others():
    s = scenes.default_scene()
    person, others = s.boxes[0], s.boxes[1:]
    assert bool((others[:, :2] >= person[:2]).all() and (others[:, 2:] <= person[2:]).all())
    # the cap and the face overlap: an anchor there is a fair match for both
    assert float(_iou(s.boxes[1:2], s.boxes[2:3])) > 0.05


def test_toy_scene_numbers_for_hand_computation():
    t = scenes.toy_scene()
    assert t.hw == (48, 64) and t.image.shape == (48, 64, 3) and t.image.dtype == np.uint8
    assert t.boxes.tolist() == [[4.0, 8.0, 28.0, 40.0], [20.0, 16.0, 52.0, 40.0]]
    assert t.names() == ["cat", "dog"]
    assert float(_iou(t.boxes[:1], t.boxes[1:])) == pytest.approx(1 / 7)
    # painted: a pixel of gt 0 only, of gt 1 only, of both, of neither all differ
    pixels = [tuple(t.image[y, x]) for (x, y) in [(6, 10), (40, 30), (24, 30), (60, 2)]]
    assert len(set(pixels)) == 4
    assert np.array_equal(t.image, scenes.toy_scene().image)


def test_scene_as_batch():
    b = scenes.default_scene().as_batch()
    assert b.gt_boxes.shape == (1, 6, 4) and b.gt_labels.shape == (1, 6)
    assert b.gt_mask.dtype == torch.bool and bool(b.gt_mask.all())
    assert b.image_sizes.tolist() == [[600, 512]] and b.image_sizes.dtype == torch.int64


# --------------------------------------------------------------------------------------------
# Seeded random scenes
# --------------------------------------------------------------------------------------------


def test_random_scene_deterministic_for_a_seed_and_differs_across_seeds():
    a = scenes.random_scene(480, 640, 20, seed=3)
    b = scenes.random_scene(480, 640, 20, seed=3)
    c = scenes.random_scene(480, 640, 20, seed=4)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.boxes, c.boxes)
    assert a.boxes.dtype == torch.float32 and a.labels.dtype == torch.int64
    assert a.hw == (480, 640) and len(a.class_names) == 80


def test_random_scene_is_image_zero_of_random_batch():
    s = scenes.random_scene(300, 500, 7, num_classes=5, seed=11)
    b = scenes.random_batch((300, 500, 3, 7, 5), seed=11)
    assert torch.equal(s.boxes, b.gt_boxes[0]) and torch.equal(s.labels, b.gt_labels[0])


def test_random_batch_smaller_batch_is_a_prefix():
    big = scenes.make_workload_batch("yolox-m20", seed=5)
    small = scenes.make_workload_batch("yolox-m20", seed=5, batch=3)
    assert big.gt_boxes.shape == (16, 20, 4) and small.gt_boxes.shape == (3, 20, 4)
    assert torch.equal(big.gt_boxes[:3], small.gt_boxes) and torch.equal(big.gt_labels[:3], small.gt_labels)


def test_random_batch_rules_on_unclipped_boxes():
    h, w, m = 800, 1216, 4000
    raw = scenes.random_batch((h, w, 1, m), seed=0, clip=False).gt_boxes[0].double()  # (M, 4)
    bw, bh = raw[:, 2] - raw[:, 0], raw[:, 3] - raw[:, 1]
    side, aspect = (bw * bh).sqrt(), bw / bh
    tol = 1e-4
    assert float(side.min()) >= 8 * (1 - tol) and float(side.max()) <= 0.8 * min(h, w) * (1 + tol)
    assert float(aspect.min()) >= (1 / 3) * (1 - tol) and float(aspect.max()) <= 3 * (1 + tol)
    cx, cy = (raw[:, 0] + raw[:, 2]) / 2, (raw[:, 1] + raw[:, 3]) / 2
    assert bool((cx >= 0).all() and (cx < w).all() and (cy >= 0).all() and (cy < h).all())
    # log-uniform: log side and log aspect have their interval's midpoint as mean
    mid_side = (math.log(8) + math.log(0.8 * min(h, w))) / 2
    assert float(side.log().mean()) == pytest.approx(mid_side, abs=0.1)
    assert float(aspect.log().mean()) == pytest.approx(0.0, abs=0.05)
    # the draws span the whole range, not a corner of it
    assert float(side.min()) < 10 and float(side.max()) > 500
    assert float(aspect.min()) < 0.35 and float(aspect.max()) > 2.8


def test_random_batch_clipping_is_the_only_difference():
    spec = {"h": 200, "w": 300, "batch": 4, "m": 50, "num_classes": 7}
    raw = scenes.random_batch(spec, seed=1, clip=False)
    clipped = scenes.random_batch(spec, seed=1)
    expected = raw.gt_boxes.clone()
    expected[..., 0::2] = expected[..., 0::2].clamp(0, 300)
    expected[..., 1::2] = expected[..., 1::2].clamp(0, 200)
    assert torch.allclose(clipped.gt_boxes, expected, atol=1e-4)
    assert torch.equal(raw.gt_labels, clipped.gt_labels)
    assert not torch.equal(raw.gt_boxes, clipped.gt_boxes)  # some boxes did cross the border
    _assert_inside(clipped.gt_boxes, 200, 300)
    assert bool((clipped.gt_labels >= 0).all() and (clipped.gt_labels < 7).all())
    assert len(clipped.gt_labels.unique()) == 7


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(20, 1400),
    w=st.integers(20, 1400),
    m=st.integers(0, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_batch_always_valid(h, w, m, seed):
    b = scenes.random_batch((h, w, 2, m, 3), seed=seed)
    assert b.gt_boxes.shape == (2, m, 4) and b.gt_boxes.dtype == torch.float32
    assert b.gt_labels.shape == (2, m) and b.gt_labels.dtype == torch.int64
    assert b.gt_mask.shape == (2, m) and bool(b.gt_mask.all())
    assert b.image_sizes.tolist() == [[h, w], [h, w]]
    _assert_inside(b.gt_boxes, h, w)


def test_random_batch_rejects_tiny_images_and_bad_specs():
    with pytest.raises(ValueError, match="too small"):
        scenes.random_batch((8, 8, 1, 3), seed=0)
    with pytest.raises(KeyError, match="unknown workload"):
        scenes.make_workload_batch("retina-m30")
    with pytest.raises(ValueError, match="expected"):
        scenes.random_batch((10, 10), seed=0)


def test_random_batch_same_in_a_fresh_process():
    """Same seed, same boxes: a benchmark run on another day draws the same scenes."""
    code = (
        "import hashlib, torch; from lessons import scenes;"
        "b = scenes.make_workload_batch('retina-m20', seed=7, batch=2);"
        "print(hashlib.sha256(b.gt_boxes.numpy().tobytes() + b.gt_labels.numpy().tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    b = scenes.make_workload_batch("retina-m20", seed=7, batch=2)
    here = hashlib.sha256(b.gt_boxes.numpy().tobytes() + b.gt_labels.numpy().tobytes()).hexdigest()
    assert out.stdout.strip() == here


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------

EXPECTED = {
    # name: (H, W, B, M, C, N)
    "retina-m20": (800, 1216, 8, 20, 80, 182_403),
    "retina-m100": (800, 1216, 8, 100, 80, 182_403),
    "atss-m20": (800, 1216, 8, 20, 80, 20_267),
    "atss-m100": (800, 1216, 8, 100, 80, 20_267),
    "rpn-m20": (600, 1000, 8, 20, 20, 21_546),
    "proposals": (600, 1000, 8, 0, 0, 21_546),
    "yolox-m20": (640, 640, 16, 20, 80, 8_400),
    "yolox-m100": (640, 640, 16, 100, 80, 8_400),
}


def test_every_workload_of_workloads_md():
    assert set(scenes.WORKLOADS) == set(EXPECTED)
    for name, (h, w, b, m, c, n) in EXPECTED.items():
        wl = scenes.WORKLOADS[name]
        assert (wl.h, wl.w, wl.batch, wl.m, wl.num_classes) == (h, w, b, m, c), name
        assert wl.priors["num_priors"] == n, name
        assert wl.count_priors() == n, name  # the settings reproduce the document's count


def test_workload_prior_settings_are_plain_data():
    rpn = scenes.WORKLOADS["rpn-m20"]
    assert rpn.featmap_sizes() == [(38, 63)] and rpn.priors_per_location() == 9
    retina = scenes.WORKLOADS["retina-m20"]
    assert retina.featmap_sizes() == [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    assert scenes.WORKLOADS["proposals"].extra == {
        "pre_nms_top_n": 12_000,
        "nms_iou_threshold": 0.7,
        "post_nms_top_n": 2_000,
    }
    for wl in scenes.WORKLOADS.values():
        assert wl.priors["kind"] in ("anchors", "points")
        assert all(isinstance(v, (str, int, float, tuple)) for v in wl.priors.values())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_make_workload_batch_shapes(name):
    h, w, b, m, c, _ = EXPECTED[name]
    gt_boxes, gt_labels, gt_mask, image_sizes = scenes.make_workload_batch(name, seed=0, batch=2)
    assert gt_boxes.shape == (2, m, 4) and gt_boxes.dtype == torch.float32
    assert gt_labels.shape == (2, m) and gt_labels.dtype == torch.int64
    assert gt_mask.shape == (2, m) and gt_mask.dtype == torch.bool and bool(gt_mask.all())
    assert image_sizes.tolist() == [[h, w]] * 2 and image_sizes.dtype == torch.int64
    if m:
        _assert_inside(gt_boxes, h, w)
        assert int(gt_labels.max()) < c


def test_gt_batch_to_device():
    b = scenes.make_workload_batch("rpn-m20", batch=1).to("cpu")
    assert isinstance(b, scenes.GtBatch) and b.gt_boxes.device.type == "cpu"


# --------------------------------------------------------------------------------------------
# Points and predictions
# --------------------------------------------------------------------------------------------


def test_grid_points_are_cell_centres():
    points, strides, levels = scenes.grid_points(640, 640, (8, 16, 32))
    assert points.shape == (8400, 2) and strides.shape == (8400,) and levels.shape == (8400,)
    assert points[0].tolist() == [4.0, 4.0] and points[1].tolist() == [12.0, 4.0]
    assert points[80].tolist() == [4.0, 12.0]  # row-major: the second row starts at index W
    assert points[6400].tolist() == [8.0, 8.0] and strides[6400] == 16 and levels[6400] == 1
    assert torch.bincount(levels).tolist() == [6400, 1600, 400]


def test_random_predictions_rules():
    points, strides, _ = scenes.grid_points(64, 96, (8, 16))
    scores, boxes = scenes.random_predictions(points, strides, batch=3, num_classes=5, seed=2)
    n = points.shape[0]
    assert scores.shape == (3, n, 5) and boxes.shape == (3, n, 4)
    assert bool((scores > 0).all() and (scores < 1).all())
    s = strides[None, :, None]  # (1, N, 1)
    square = torch.cat([points - 2 * strides[:, None], points + 2 * strides[:, None]], -1)[None]
    assert bool(((boxes - square).abs() <= s + 1e-4).all())  # jitter within one stride
    assert float((boxes - square).abs().max()) > 0.9 * 16  # and it does use the range
    assert bool((boxes[..., 2] - boxes[..., 0] >= 2 * strides - 1e-4).all())
    assert bool((boxes[..., 3] - boxes[..., 1] >= 2 * strides - 1e-4).all())
    again = scenes.random_predictions(points, strides, batch=3, num_classes=5, seed=2)
    other = scenes.random_predictions(points, strides, batch=3, num_classes=5, seed=3)
    assert torch.equal(scores, again[0]) and torch.equal(boxes, again[1])
    assert not torch.equal(scores, other[0])


def test_random_predictions_follow_points_dtype():
    points, strides, _ = scenes.grid_points(32, 32, (8,))
    scores, boxes = scenes.random_predictions(points.double(), strides, 1, 2, seed=0)
    assert scores.dtype == torch.float64 and boxes.dtype == torch.float64


def test_make_workload_predictions():
    points, strides, scores, boxes = scenes.make_workload_predictions("yolox-m20", seed=0, batch=2)
    assert points.shape == (8400, 2) and strides.shape == (8400,)
    assert scores.shape == (2, 8400, 80) and boxes.shape == (2, 8400, 4)
    with pytest.raises(ValueError, match="not points"):
        scenes.make_workload_predictions("atss-m20")


def test_workload_settings_build_the_exportable_generators():
    """The plain-data prior settings are keyword arguments of exportable's generators."""
    anchors = pytest.importorskip("exportable.anchors")
    if not all(hasattr(anchors, n) for n in ("AnchorGenerator", "PointGenerator", "featmap_sizes_for")):
        pytest.skip("exportable.anchors is not complete yet")
    for wl in scenes.WORKLOADS.values():
        sizes = anchors.featmap_sizes_for(wl.hw, wl.priors["strides"])
        assert [tuple(s) for s in sizes] == wl.featmap_sizes(), wl.name
        if wl.priors["kind"] == "anchors":
            n = sum(anchors.AnchorGenerator(**wl.generator_kwargs()).num_anchors(sizes))
        else:
            n = sum(anchors.PointGenerator(**wl.generator_kwargs()).num_points(sizes))
        assert n == wl.priors["num_priors"], wl.name
    ours = scenes.grid_points(640, 640, (8, 16, 32))
    theirs = anchors.PointGenerator(strides=(8, 16, 32)).grid_points(
        anchors.featmap_sizes_for((640, 640), (8, 16, 32))
    )
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b.to(a.dtype))
