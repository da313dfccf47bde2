"""lessons.anchors_and_boxes (the per-box reference) against exportable (batched), and cases by hand.

The reference computes in float64, ``exportable`` in float32: where a value is not exactly representable the
two differ by float32 rounding, so anchor coordinates are compared within two float32 ulps of the level's
largest coordinate, overlaps within 1e-6 and deltas / decoded boxes within 1e-5 (plus a relative 1e-6 for
decoded coordinates far from 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable.anchors import AnchorGenerator, featmap_sizes_for, inside_flags
from exportable.boxes import box_giou, box_iof, box_iou, clip_boxes
from exportable.coders import DeltaXYWHCoder
from lessons import anchors_and_boxes as ref
from lessons.scenes import default_scene, random_scene, toy_scene

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def assert_float32_equal(got: torch.Tensor, want: torch.Tensor, ulps: float = 2.0) -> None:
    """Equal up to ``ulps`` float32 ulps of the largest magnitude in ``want``."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.numel() == 0:
        return
    scale = float(want.abs().max())
    tol = ulps * scale * 2.0**-23
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=tol)


def scene_boxes(seed: int, m: int, h: int = 96, w: int = 128) -> torch.Tensor:
    """Seeded COCO-like boxes plus the degenerate ones on purpose: zero width, zero area, a duplicate."""
    boxes = random_scene(h, w, m, seed=seed).boxes  # (m, 4)
    extra = t([[10, 10, 10, 30], [50, 50, 50, 50], [0, 0, w, h]])  # zero width, a point, the whole image
    return torch.cat([boxes, extra, boxes[:1]])  # (m + 4, 4)


def generator_settings(gen: AnchorGenerator, level: int) -> dict:
    """The reference's arguments for one level of an ``AnchorGenerator``."""
    if gen.octave_base_scale is not None:
        scales = ref.octave_scales(gen.octave_base_scale, gen.scales_per_octave)
    else:
        scales = gen.scales.tolist()
    return {
        "base_size": gen.base_sizes[level],
        "ratios": gen.ratios.tolist(),
        "scales": scales,
        "center_offset": gen.center_offset,
        "scale_major": gen.scale_major,
    }


GENERATORS = {
    "retinanet": AnchorGenerator.retinanet(),
    "faster_rcnn": AnchorGenerator.faster_rcnn(),
    "atss": AnchorGenerator.atss(),
    "rpn_fpn": AnchorGenerator.rpn_fpn(),
    "ratios_inner_offset": AnchorGenerator(
        [(8, 12), 16], ratios=(0.5, 1.0, 3.0), scales=(1.0, 2.5), scale_major=False, center_offset=0.5
    ),
}
SMALL = [(6, 5), (3, 3), (2, 2), (1, 1), (1, 1)]
RETINA_STRIDES = (8, 16, 32, 64, 128)


# ---------------------------------------------------------------------------------------------------------
# IoU, IoF, GIoU


def test_toy_scene_by_hand():
    cat, dog = toy_scene().boxes.tolist()
    # both 768 px^2, overlap (20, 16, 28, 40) = 8 x 24 = 192: IoU = 192 / (768 + 768 - 192) = 1/7
    assert ref.area(cat) == ref.area(dog) == 768
    assert ref.iou(cat, dog) == pytest.approx(1 / 7, abs=1e-12)
    # enclosing box (4, 8, 52, 40) = 48 x 32 = 1536, union 1344: GIoU = 1/7 - 192/1536 = 1/7 - 1/8
    assert ref.giou(cat, dog) == pytest.approx(1 / 7 - 1 / 8, abs=1e-12)
    # equal areas: IoF is the same both ways here, 192 / 768
    assert ref.iof(cat, dog) == ref.iof(dog, cat) == 0.25


def test_photo_iof_is_asymmetric_and_giou_sees_distance():
    boxes = default_scene().boxes.tolist()  # person, hat, face, tie, ribbons, name tag
    person, hat, face, tie = boxes[:4]
    assert ref.iof(tie, person) == 1.0  # the tie lies inside the person
    assert ref.iof(person, tie) == pytest.approx(ref.area(tie) / ref.area(person))
    assert ref.iou(hat, tie) == 0.0 and ref.iou(face, tie) == 0.0
    # both pairs are disjoint, yet GIoU ranks them: the face is nearer the tie than the hat is
    assert -1 < ref.giou(hat, tie) < ref.giou(face, tie) < 0


def test_degenerate_boxes():
    point = (5.0, 5.0, 5.0, 5.0)
    line = (0.0, 0.0, 0.0, 10.0)
    assert ref.iou(point, point) == 0.0 and ref.giou(point, point) == 0.0  # union and E clamp at eps
    assert ref.iou(line, (0.0, 0.0, 4.0, 4.0)) == 0.0
    assert ref.iof(point, (0.0, 0.0, 10.0, 10.0)) == 0.0  # 0 / eps
    # two far-apart points: IoU 0, GIoU about -1 (E = 100, U = eps)
    assert ref.giou((0.0, 0.0, 0.0, 0.0), (10.0, 10.0, 10.0, 10.0)) == pytest.approx(-1.0, abs=1e-6)
    box = (1.0, 2.0, 11.0, 7.0)
    assert ref.iou(box, box) == ref.giou(box, box) == ref.iof(box, box) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("mode", "batched"), [("iou", box_iou), ("iof", box_iof), ("giou", box_giou)])
def test_overlap_matrices_match_exportable(seed, mode, batched):
    a = scene_boxes(seed, 25)  # (N, 4)
    b = scene_boxes(seed + 100, 7)  # (M, 4)
    got = ref.overlap_matrix(a, b, mode)  # (N, M) float64
    want = batched(a, b)  # (N, M) float32
    assert got.shape == want.shape == (29, 11)
    torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-6)


def test_overlap_matrix_of_empty_sets():
    assert ref.overlap_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)
    assert ref.overlap_matrix([(0, 0, 1, 1)], torch.zeros(0, 4), "giou").shape == (1, 0)


coord = st.floats(-50, 150, allow_nan=False, width=32)
side = st.floats(0, 120, allow_nan=False, width=32)
box_st = st.tuples(coord, coord, side, side).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@settings(max_examples=150, deadline=None)
@given(box_st, box_st)
def test_properties_and_parity_on_any_pair(a, b):
    i, g = ref.iou(a, b), ref.giou(a, b)
    assert 0 <= i <= 1 and -1 <= g <= i + 1e-12
    assert i == pytest.approx(ref.iou(b, a), abs=1e-12)
    assert ref.iof(a, b) >= i - 1e-12 or ref.area(a) == 0  # inter / area(a) >= inter / union
    ta, tb = t([a]), t([b])
    # float32 boxes: compare on the float32 coordinates the batched code sees
    a32, b32 = ta[0].tolist(), tb[0].tolist()
    assert ref.iou(a32, b32) == pytest.approx(box_iou(ta, tb).item(), abs=1e-6)
    assert ref.giou(a32, b32) == pytest.approx(box_giou(ta, tb).item(), abs=1e-6)
    assert ref.iof(a32, b32) == pytest.approx(box_iof(ta, tb).item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Anchors


def test_octave_scales():
    assert ref.octave_scales(4, 3) == [4.0, 4 * 2 ** (1 / 3), 4 * 2 ** (2 / 3)]
    assert ref.octave_scales(8, 1) == [8.0]  # ATSS


@pytest.mark.parametrize("name", list(GENERATORS))
def test_base_anchors_match_exportable(name):
    gen = GENERATORS[name]
    for level in range(gen.num_levels):
        got = t(ref.base_anchors(**generator_settings(gen, level)))
        assert_float32_equal(got, gen.base_anchors[level])


@pytest.mark.parametrize("name", list(GENERATORS))
def test_grid_anchors_match_exportable(name):
    gen = GENERATORS[name]
    sizes = SMALL[: gen.num_levels]
    batched = gen.grid_anchors(sizes)
    for level, (hw, want) in enumerate(zip(sizes, batched)):
        base = ref.base_anchors(**generator_settings(gen, level))
        got = t(ref.grid_anchors(base, hw, gen.strides[level]))
        assert_float32_equal(got, want)


def test_squares_on_whole_pixels_are_exact():
    # ATSS: squares of side 8 * stride, every coordinate an integer: exactly equal, no rounding at all
    gen = AnchorGenerator.atss()
    for level, want in enumerate(gen.grid_anchors(SMALL)):
        base = ref.base_anchors(**generator_settings(gen, level))
        assert torch.equal(t(ref.grid_anchors(base, SMALL[level], gen.strides[level])), want)


def test_order_is_location_major_scale_major():
    # 2 ratios x 2 scales on a 2 x 3 grid of stride 10: index (y * W + x) * A + ratio_idx * 2 + scale_idx
    ratios, scales = (0.25, 1.0), (1.0, 2.0)
    base = ref.base_anchors(4, ratios, scales)
    grid = ref.grid_anchors(base, (2, 3), 10)
    for y in range(2):
        for x in range(3):
            for ri, r in enumerate(ratios):
                for si, s in enumerate(scales):
                    x1, y1, x2, y2 = grid[(y * 3 + x) * 4 + ri * 2 + si]
                    assert ((x1 + x2) / 2, (y1 + y2) / 2) == (10 * x, 10 * y)  # the cell's corner
                    assert (y2 - y1) / (x2 - x1) == pytest.approx(r)
                    assert (x2 - x1) * (y2 - y1) == pytest.approx((4 * s) ** 2)


def test_retinanet_counts_of_the_document():
    counts = ref.retinanet_anchor_counts((1216, 800))
    assert counts == [136_800, 34_200, 8_550, 2_223, 630]
    assert sum(counts) == 182_403
    gen = AnchorGenerator.retinanet()
    assert counts == gen.num_anchors(featmap_sizes_for((1216, 800), gen.strides))
    # Faster R-CNN on a 600 x 1000 image: a 38 x 63 map of stride 16, 9 anchors each ("about 20,000")
    assert ref.anchor_counts((600, 1000), [16], 9) == [21_546]


@pytest.mark.parametrize("hw", [(1, 1), (600, 512), (333, 517), (800, 1333), (64, 64)])
def test_counts_match_exportable(hw):
    for gen in GENERATORS.values():
        a = gen.num_base_anchors[0]
        assert ref.anchor_counts(hw, gen.strides, a) == gen.num_anchors(featmap_sizes_for(hw, gen.strides))
        assert [ref.featmap_size(hw, s) for s in gen.strides] == featmap_sizes_for(hw, gen.strides)


# ---------------------------------------------------------------------------------------------------------
# Valid and inside flags


@pytest.mark.parametrize("pad_hw", [(48, 40), (33, 17), (1, 1), (64, 64), (200, 300)])
@pytest.mark.parametrize("name", ["retinanet", "atss", "ratios_inner_offset"])
def test_valid_flags_match_exportable(name, pad_hw):
    gen = GENERATORS[name]
    sizes = featmap_sizes_for((64, 64), gen.strides)  # the batch is 64 x 64; the image may be smaller
    got = []
    for level, hw in enumerate(sizes):
        got += ref.level_valid_flags(hw, pad_hw, gen.strides[level], gen.num_base_anchors[level])
    assert torch.equal(torch.tensor(got), gen.valid_flags(sizes, pad_hw))
    batched = gen.valid_flags(sizes, torch.tensor([pad_hw, (64, 64)]))  # (B, N)
    assert torch.equal(batched[0], torch.tensor(got)) and bool(batched[1].all())


def test_valid_counts_of_the_document():
    # The document's batch is (1216, 800); its image 3 is 800 x 800 (img_shape = pad_shape).
    gen = AnchorGenerator.retinanet()
    sizes = featmap_sizes_for((1216, 800), gen.strides)

    def count(pad_hw):
        return sum(
            sum(ref.level_valid_flags(hw, pad_hw, s, 9)) for hw, s in zip(sizes, RETINA_STRIDES)
        )

    # 100*100 + 50*50 + 25*25 + 13*13 + 7*7 = 13,343 cells, 9 anchors each
    assert count((800, 800)) == 120_087 == int(gen.valid_flags(sizes, (800, 800)).sum())
    # The document prints 163,206 anchors left of 182,403: an image padded to (1088, 800)
    assert count((1088, 800)) == 163_206
    assert count((1216, 800)) == 182_403


@pytest.mark.parametrize("allowed_border", [-1, 0, 8, 32.5])
def test_inside_flags_match_exportable(allowed_border):
    gen = AnchorGenerator.retinanet()
    image_hw = (600, 512)
    sizes = featmap_sizes_for(image_hw, gen.strides)[2:]  # levels 2..4 keep the loops short
    anchors = torch.cat(gen.grid_anchors(featmap_sizes_for(image_hw, gen.strides))[2:])  # (N, 4)
    valid = torch.ones(anchors.shape[0], dtype=torch.bool)
    want = inside_flags(anchors, valid, image_hw, allowed_border)
    got = torch.tensor([ref.inside_flag(a, image_hw, allowed_border) for a in anchors.tolist()])
    assert sum(h * w * 9 for h, w in sizes) == anchors.shape[0]
    assert torch.equal(got, want)
    if allowed_border < 0:
        assert bool(got.all())


def test_inside_flag_edges():
    # strict on the far side: an anchor ending on the right border is out with allowed_border 0
    assert ref.inside_flag((0, 0, 10, 10), (20, 20)) and not ref.inside_flag((0, 0, 20, 10), (20, 20))
    assert ref.inside_flag((0, 0, 20, 10), (20, 20), allowed_border=1)
    assert not ref.inside_flag((-0.5, 0, 10, 10), (20, 20)) and ref.inside_flag((-0.5, 0, 10, 10), (20, 20), 1)
    assert ref.inside_flag((-1e6, -1e6, 1e6, 1e6), (20, 20), allowed_border=-1)


# ---------------------------------------------------------------------------------------------------------
# DeltaXYWH coder


def test_encode_decode_by_hand():
    anchor, gt = (0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 20.0, 40.0)
    # centres (5, 5) -> (10, 20), sizes 10 x 10 -> 20 x 40: (0.5, 1.5, log 2, log 4)
    assert ref.encode(anchor, gt) == pytest.approx((0.5, 1.5, math.log(2), math.log(4)))
    assert ref.encode(anchor, gt, stds=RCNN_STDS) == pytest.approx((5.0, 15.0, 5 * math.log(2), 5 * math.log(4)))
    assert ref.decode(anchor, ref.encode(anchor, gt)) == pytest.approx(gt)
    # dw = 10 is clamped to |log(0.016)| = 4.1352: the width grows 62.5 times, 10 -> 625
    x1, _, x2, _ = ref.decode(anchor, (0, 0, 10, 0))
    assert (x1, x2) == pytest.approx((5 - 312.5, 5 + 312.5))
    assert ref.decode(anchor, (0, 0, 10, 0), max_shape=(100, 50)) == pytest.approx((0, 0, 50, 10))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stds", [(1.0, 1.0, 1.0, 1.0), RCNN_STDS])
def test_encode_decode_match_exportable(seed, stds):
    anchors = random_scene(160, 200, 40, seed=seed).boxes  # (N, 4)
    gts = random_scene(160, 200, 40, seed=seed + 50).boxes  # (N, 4), row i pairs with anchor i
    keep = ((anchors[:, 2:] - anchors[:, :2]) > 0).all(1) & ((gts[:, 2:] - gts[:, :2]) > 0).all(1)
    anchors, gts = anchors[keep], gts[keep]
    coder = DeltaXYWHCoder(stds=stds)
    want = coder.encode(anchors, gts)  # (N, 4)
    got = t([ref.encode(a, g, stds=stds) for a, g in zip(anchors.tolist(), gts.tolist())])
    # dividing by stds of 0.1 multiplies float32 rounding by 10: tolerance 1e-5 on the raw deltas
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5 / min(stds))
    # decode large deltas too (beyond the wh clip), with and without clipping to a 150 x 180 image
    g = torch.Generator().manual_seed(seed)
    deltas = torch.randn(anchors.shape[0], 4, generator=g) * 3  # (N, 4)
    for max_shape in (None, (150, 180)):
        want = coder.decode(anchors, deltas, max_shape)
        got = t([
            ref.decode(a, d, stds=stds, max_shape=max_shape) for a, d in zip(anchors.tolist(), deltas.tolist())
        ])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    clipped = clip_boxes(coder.decode(anchors, deltas), (150, 180))
    torch.testing.assert_close(clipped, coder.decode(anchors, deltas, (150, 180)))


# ---------------------------------------------------------------------------------------------------------
# py-faster-rcnn's anchors (docs/algorithms.md section 2.4)

MATLAB_TABLE = [
    (-83, -39, 100, 56), (-175, -87, 192, 104), (-359, -183, 376, 200),
    (-55, -55, 72, 72), (-119, -119, 136, 136), (-247, -247, 264, 264),
    (-35, -79, 52, 96), (-79, -167, 96, 184), (-167, -343, 184, 360),
]


def test_py_faster_rcnn_anchors():
    python = ref.py_faster_rcnn_base_anchors()  # window (0, 0, 15, 15), centre 7.5
    matlab = ref.py_faster_rcnn_base_anchors(first_pixel=1)  # window (1, 1, 16, 16), centre 8.5
    # The table in py-faster-rcnn's source comment (docs/algorithms.md §2.4) is the MATLAB one ...
    assert matlab == MATLAB_TABLE
    # ... the Python code returns it shifted by one pixel up and left.
    assert python == [(x1 - 1, y1 - 1, x2 - 1, y2 - 1) for x1, y1, x2, y2 in MATLAB_TABLE]
    for x1, y1, x2, y2 in python:
        assert ((x1 + x2) / 2, (y1 + y2) / 2) == (7.5, 7.5)
    # +1 widths on rounded shapes: 23 x 12, 16 x 16, 11 x 22 per unit scale
    sizes = [(x2 - x1 + 1, y2 - y1 + 1) for x1, y1, x2, y2 in python]
    assert sizes[::3] == [(184, 96), (128, 128), (88, 176)]


def test_ours_differ_from_py_faster_rcnn_by_rounding_centre_and_plus_one():
    ours = ref.base_anchors(16, (0.5, 1.0, 2.0), (8, 16, 32))
    legacy = ref.py_faster_rcnn_base_anchors()
    # the same order (ratios outer) and the same squares' areas, but:
    # ratio 0.5, scale 8: ours 181.02 x 90.51 centred on (0, 0); legacy 184 x 96 (+1) centred on (7.5, 7.5)
    x1, y1, x2, y2 = ours[0]
    assert (x2 - x1, y2 - y1) == pytest.approx((128 * math.sqrt(2), 64 * math.sqrt(2)))
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == (0.0, 0.0)
    # squares agree in size once the +1 is taken out, and sit 7.5 px apart
    for i in (3, 4, 5):
        ox1, oy1, ox2, oy2 = ours[i]
        lx1, ly1, lx2, ly2 = legacy[i]
        assert ox2 - ox1 == lx2 - lx1 + 1
        assert (lx1 - ox1, ly1 - oy1) == (8.0, 8.0)  # the 7.5 centre shift plus half the +1 pixel
    # and they agree with the batched generator
    assert_float32_equal(t(ours), AnchorGenerator.faster_rcnn().base_anchors[0])
