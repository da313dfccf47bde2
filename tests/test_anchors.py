"""exportable.anchors: mmdetection AnchorGenerator / point semantics, document counts, flags, ONNX grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from exportable.anchors import (
    AnchorGenerator,
    AnchorGrid,
    PointGenerator,
    PointGrid,
    featmap_sizes_for,
    inside_flags,
)

RETINA_SIZES = [(152, 100), (76, 50), (38, 25), (19, 13), (10, 7)]


# ---------------------------------------------------------------------------------------------------------
# The document's counts


def test_featmap_sizes_for_the_padded_retinanet_batch():
    # (H, W) = (1216, 800): ceil(1216 / 64) = 19, ceil(800 / 64) = 13,
    # ceil(1216 / 128) = 10, ceil(800 / 128) = 7.
    assert featmap_sizes_for((1216, 800), (8, 16, 32, 64, 128)) == RETINA_SIZES
    assert featmap_sizes_for((600, 1000), (16,)) == [(38, 63)]  # ceil(37.5), ceil(62.5)
    assert featmap_sizes_for((100, 60), [(10, 20)]) == [(5, 6)]  # (stride_w, stride_h) = (10, 20)


def test_retinanet_counts_per_level():
    gen = AnchorGenerator.retinanet()
    assert gen.num_levels == 5 and gen.num_base_anchors == [9] * 5
    counts = gen.num_anchors(featmap_sizes_for((1216, 800), gen.strides))
    # 152*100*9, 76*50*9, 38*25*9, 19*13*9, 10*7*9
    assert counts == [136_800, 34_200, 8_550, 2_223, 630]
    assert sum(counts) == 182_403
    anchors = gen.grid_anchors(RETINA_SIZES)
    assert [a.shape[0] for a in anchors] == counts
    assert all(a.dtype == torch.float32 and a.shape[1] == 4 for a in anchors)
    ids = gen.level_ids(RETINA_SIZES)
    assert ids.dtype == torch.int64 and ids.shape == (182_403,)
    assert torch.bincount(ids).tolist() == counts


def test_atss_and_faster_rcnn_counts():
    atss = AnchorGenerator.atss()
    # 100*152 + 50*76 + 25*38 + 13*19 + 7*10 = 15200 + 3800 + 950 + 247 + 70
    assert sum(atss.num_anchors(featmap_sizes_for((800, 1216), atss.strides))) == 20_267
    frcnn = AnchorGenerator.faster_rcnn()
    assert frcnn.num_anchors(featmap_sizes_for((600, 1000), frcnn.strides)) == [38 * 63 * 9] == [21_546]
    rpn = AnchorGenerator.rpn_fpn()
    assert rpn.num_base_anchors == [3] * 5 and [s[0] for s in rpn.strides] == [4, 8, 16, 32, 64]


# ---------------------------------------------------------------------------------------------------------
# Base anchors


def test_faster_rcnn_base_anchors_by_hand():
    gen = AnchorGenerator.faster_rcnn()
    base = gen.base_anchors[0]  # (9, 4), scale-major: index = ratio_idx * 3 + scale_idx
    r2 = math.sqrt(2)
    # ratio 0.5 (h/w), scale 8: w = 16 * (1/sqrt(0.5)) * 8 = 128*sqrt(2) = 181.019,
    # h = 16 * sqrt(0.5) * 8 = 90.510; centred at (0, 0): (-90.510, -45.255, 90.510, 45.255)
    want0 = [-64 * r2, -32 * r2, 64 * r2, 32 * r2]
    # ratio 1, scale 16: 256 x 256 -> (-128, -128, 128, 128)
    want4 = [-128, -128, 128, 128]
    # ratio 2, scale 32: w = 16 / sqrt(2) * 32 = 362.039, h = 16 * sqrt(2) * 32 = 724.077
    want8 = [-256 / r2, -256 * r2, 256 / r2, 256 * r2]
    # ratio 0.5, scale 16 is index 1: w = 256*sqrt(2) = 362.039, h = 128*sqrt(2) = 181.019
    want1 = [-128 * r2, -64 * r2, 128 * r2, 64 * r2]
    for i, want in [(0, want0), (1, want1), (4, want4), (8, want8)]:
        torch.testing.assert_close(base[i], torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-4)
    # w/h of every anchor: ratio = h / w
    wh = base[:, 2:] - base[:, :2]
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3))


def test_retinanet_octave_scales_and_order():
    gen = AnchorGenerator.retinanet()
    # scales 4 * 2**(i/3): 4, 5.0397, 6.3496 (computed in float64, stored float32)
    torch.testing.assert_close(gen.scales, torch.tensor([4.0, 4 * 2 ** (1 / 3), 4 * 2 ** (2 / 3)]))
    base = gen.base_anchors[0]  # base size 8 on level 0
    # index 3 = ratio 1 (idx 1), scale 4 (idx 0): a 32 x 32 square centred on (0, 0)
    assert base[3].tolist() == [-16.0, -16.0, 16.0, 16.0]
    # index 5 = ratio 1, scale 6.3496: side 50.797
    torch.testing.assert_close(base[5, 2], torch.tensor(4 * 8 * 2 ** (2 / 3) / 2))
    # level 4 (stride 128): side 4 * 128 = 512 for ratio 1 / scale 4
    assert gen.base_anchors[4][3].tolist() == [-256.0, -256.0, 256.0, 256.0]


def test_scale_major_false_puts_ratios_inner():
    a = AnchorGenerator([16], ratios=(0.5, 1.0, 2.0), scales=(1.0, 2.0), scale_major=True).base_anchors[0]
    b = AnchorGenerator([16], ratios=(0.5, 1.0, 2.0), scales=(1.0, 2.0), scale_major=False).base_anchors[0]
    for r in range(3):
        for s in range(2):
            assert torch.equal(a[r * 2 + s], b[s * 3 + r])


def test_atss_base_anchor_and_centers_options():
    atss = AnchorGenerator.atss()
    # octave_base_scale 8, one scale, ratio 1: a square of side 8 * stride, centred on the cell corner
    assert [b.tolist() for b in atss.base_anchors[:2]] == [[[-32, -32, 32, 32]], [[-64, -64, 64, 64]]]
    # center_offset 0.5 moves the centre to base_size / 2
    half = AnchorGenerator([8], ratios=(1.0,), scales=(1.0,), center_offset=0.5).base_anchors[0]
    assert half.tolist() == [[0, 0, 8, 8]]
    own = AnchorGenerator([8], ratios=(1.0,), scales=(1.0,), centers=[(3.0, 5.0)]).base_anchors[0]
    assert own.tolist() == [[-1, 1, 7, 9]]


# ---------------------------------------------------------------------------------------------------------
# Grids


def test_flattened_order_is_location_major_and_corner_aligned():
    # stride 10, base 4, scales 1 and 2, ratio 1: A = 2 squares of side 4 and 8.
    gen = AnchorGenerator([10], ratios=(1.0,), scales=(1.0, 2.0), base_sizes=[4])
    h, w, a = 2, 3, 2
    anchors = gen.grid_anchors([(h, w)])[0]  # (H * W * A, 4)
    assert anchors.shape == (h * w * a, 4)
    for y in range(h):
        for x in range(w):
            for k in range(a):
                half = 2.0 * (k + 1)
                cx, cy = 10.0 * x, 10.0 * y  # cell corner, not centre
                assert anchors[(y * w + x) * a + k].tolist() == [cx - half, cy - half, cx + half, cy + half]


def test_first_anchor_of_every_level_is_centred_on_the_origin():
    gen = AnchorGenerator.retinanet()
    for level in gen.grid_anchors(RETINA_SIZES[:3] + [(2, 2), (1, 1)]):
        centres = (level[:9, :2] + level[:9, 2:]) / 2
        assert torch.equal(centres, torch.zeros(9, 2))


def test_non_square_strides_and_device_dtype():
    gen = AnchorGenerator([(8, 16)], ratios=(1.0,), scales=(1.0,), base_sizes=[8])
    anchors = gen.grid_anchors([(2, 2)], dtype=torch.float64, device="cpu")[0]
    assert anchors.dtype == torch.float64
    # shift x by stride_w = 8, y by stride_h = 16
    assert anchors[:, 0].tolist() == [-4, 4, -4, 4]
    assert anchors[:, 1].tolist() == [-4, -4, 12, 12]


def test_empty_levels():
    gen = AnchorGenerator.retinanet()
    sizes = [(4, 3), (2, 2), (1, 1), (0, 1), (0, 0)]
    anchors = gen.grid_anchors(sizes)
    assert [a.shape for a in anchors] == [(108, 4), (36, 4), (9, 4), (0, 4), (0, 4)]
    assert gen.level_ids(sizes).shape == (153,)
    assert gen.valid_flags(sizes, (32, 24)).shape == (153,)
    points, strides, ids = PointGenerator([8, 16]).grid_points([(0, 4), (2, 0)])
    assert points.shape == (0, 2) and strides.shape == (0,) and ids.shape == (0,)


# ---------------------------------------------------------------------------------------------------------
# Valid and inside flags


def test_valid_flags_for_a_padded_image():
    # one level, stride 8, feature map 4 x 5, A = 3; the image covers (H, W) = (20, 30) of the padded batch:
    # valid_h = ceil(20 / 8) = 3, valid_w = ceil(30 / 8) = 4 -> cells with y < 3 and x < 4.
    gen = AnchorGenerator([8], ratios=(0.5, 1.0, 2.0), scales=(1.0,))
    flags = gen.valid_flags([(4, 5)], (20, 30))
    assert flags.shape == (60,) and flags.dtype == torch.bool
    cells = flags.reshape(4, 5, 3)
    assert torch.equal(cells, cells[..., :1].expand(4, 5, 3))  # all anchors of a cell share the flag
    want = torch.zeros(4, 5, dtype=torch.bool)
    want[:3, :4] = True
    assert torch.equal(cells[..., 0], want)
    # per-image tensor form (B, 2) -> (B, N); a padded size larger than the map is all valid
    sizes = torch.tensor([[20, 30], [32, 40], [100, 100], [1, 1]])
    batched = gen.valid_flags([(4, 5)], sizes)
    assert batched.shape == (4, 60)
    assert torch.equal(batched[0], flags)
    assert bool(batched[1].all()) and bool(batched[2].all())
    assert batched[3].sum().item() == 3  # only cell (0, 0)
    # a float stride takes the float ceil path and gives the same flags
    float_gen = AnchorGenerator([8.0], ratios=(0.5, 1.0, 2.0), scales=(1.0,))
    assert torch.equal(float_gen.valid_flags([(4, 5)], sizes), batched)


def test_valid_flags_retinanet_levels_tuple_equals_tensor():
    gen = AnchorGenerator.retinanet()
    sizes = torch.tensor([[1216, 800], [1000, 700], [333, 517]])
    batched = gen.valid_flags(RETINA_SIZES, sizes)
    assert batched.shape == (3, 182_403)
    assert bool(batched[0].all())
    for i in range(3):
        assert torch.equal(batched[i], gen.valid_flags(RETINA_SIZES, tuple(sizes[i].tolist())))


def test_inside_flags_strict_far_side_and_borders():
    # image (H, W) = (10, 20)
    anchors = torch.tensor(
        [
            [0, 0, 19, 9],  # inside
            [0, 0, 20, 9],  # x2 == W: outside (strict <)
            [-1, 0, 5, 5],  # x1 < 0: outside with border 0, inside with border 1
            [5, 5, 15, 10],  # y2 == H: outside
            [2, 2, 4, 4],  # inside but not valid
        ],
        dtype=torch.float32,
    )
    valid = torch.tensor([True, True, True, True, False])
    assert inside_flags(anchors, valid, (10, 20), 0).tolist() == [True, False, False, False, False]
    assert inside_flags(anchors, valid, (10, 20), 1).tolist() == [True, True, True, True, False]
    assert inside_flags(anchors, valid, (10, 20), -1).tolist() == valid.tolist()
    # per-image sizes (B, 2) with shared valid (N,) or per-image valid (B, N)
    sizes = torch.tensor([[10, 20], [100, 100]])
    out = inside_flags(anchors, valid, sizes)
    assert out.tolist() == [[True, False, False, False, False], [True, True, False, True, False]]
    per_image = torch.stack([valid, torch.ones(5, dtype=torch.bool)])
    assert inside_flags(anchors, per_image, sizes)[1].tolist() == [True, True, False, True, True]
    assert inside_flags(anchors, valid, sizes, -1).shape == (2, 5)


# ---------------------------------------------------------------------------------------------------------
# Points


def test_points_are_cell_centres_with_per_point_strides():
    gen = PointGenerator([8, 16])
    points, strides, ids = gen.grid_points([(2, 3), (1, 2)])
    assert gen.num_points([(2, 3), (1, 2)]) == [6, 2]
    # level 0, order y * W + x: ((x + 0.5) * 8, (y + 0.5) * 8)
    want = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert points.tolist() == want
    assert strides.tolist() == [8] * 6 + [16] * 2 and strides.dtype == torch.float32
    assert ids.tolist() == [0] * 6 + [1] * 2 and ids.dtype == torch.int64
    # YOLOX 640 x 640: 80*80 + 40*40 + 20*20 = 8,400
    yolox = PointGenerator.yolox()
    assert sum(yolox.num_points(featmap_sizes_for((640, 640), yolox.strides))) == 8_400
    # offset 0 (YOLOX's priors) plus stride / 2 gives the same points
    p0, s0, _ = PointGenerator([8, 16], offset=0.0).grid_points([(2, 3), (1, 2)])
    assert torch.equal(p0 + s0[:, None] / 2, points)


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="scales"):
        AnchorGenerator([8], scales=(1.0,), octave_base_scale=4, scales_per_octave=3)
    with pytest.raises(ValueError, match="scales"):
        AnchorGenerator([8])
    with pytest.raises(ValueError, match="scales"):
        AnchorGenerator([8], octave_base_scale=4)
    with pytest.raises(ValueError, match="base_sizes"):
        AnchorGenerator([8, 16], scales=(1.0,), base_sizes=[8])
    with pytest.raises(ValueError, match="strides"):
        AnchorGenerator([0], scales=(1.0,))
    with pytest.raises(ValueError, match="centers"):
        AnchorGenerator([8], scales=(1.0,), centers=[(0.0, 0.0)], center_offset=0.5)
    gen = AnchorGenerator.retinanet()
    with pytest.raises(ValueError, match="featmap_sizes"):
        gen.grid_anchors([(10, 10)])
    with pytest.raises(TypeError, match="pad_hw"):
        gen.valid_flags(RETINA_SIZES, torch.tensor([[1216.0, 800.0]]))
    anchors = torch.tensor([[0, 0, 4, 4]], dtype=torch.float32)
    with pytest.raises(TypeError, match="valid"):
        inside_flags(anchors, torch.ones(1), (10, 10))
    with pytest.raises(ValueError, match="valid"):
        inside_flags(anchors, torch.ones(2, dtype=torch.bool), (10, 10))
    with pytest.raises(ValueError, match="anchors"):
        inside_flags(torch.tensor([[4.0, 0, 0, 4]]), torch.ones(1, dtype=torch.bool), (10, 10))
    with pytest.raises(ValueError, match="image_sizes"):
        inside_flags(anchors, torch.ones(3, 1, dtype=torch.bool), torch.tensor([[10, 10], [10, 10]]))
    with pytest.raises(ValueError, match="feats"):
        AnchorGrid(gen)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="feats"):
        PointGrid(PointGenerator([8]))(torch.zeros(4, 4))


# ---------------------------------------------------------------------------------------------------------
# Exportable modules


def _feats(sizes, batch=1):
    return tuple(torch.zeros(batch, 2, h, w) for h, w in sizes)


def test_anchor_grid_and_point_grid_equal_the_generators():
    gen = AnchorGenerator.retinanet()
    anchors, ids = AnchorGrid(gen)(*_feats(RETINA_SIZES))
    assert torch.equal(anchors, torch.cat(gen.grid_anchors(RETINA_SIZES)))
    assert torch.equal(ids, gen.level_ids(RETINA_SIZES))
    pgen = PointGenerator([8, 16, 32])
    sizes = [(80, 80), (40, 40), (20, 20)]
    got = PointGrid(pgen)(*_feats(sizes))
    for x, y in zip(got, pgen.grid_points(sizes)):
        assert torch.equal(x, y)


def _export(module, feats):
    from torch.export import Dim

    batch = Dim("B")
    shapes = tuple({0: batch, 2: Dim(f"H{i}"), 3: Dim(f"W{i}")} for i in range(len(feats)))
    names = [f"feat{i}" for i in range(len(feats))]
    program = torch.onnx.export(
        module.eval(), feats, dynamo=True, optimize=False, dynamic_shapes=(shapes,), input_names=names
    )
    model = program.model_proto
    for inp in model.graph.input:  # every H_l, W_l (and B) stays a named dim
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[2].dim_param and dims[3].dim_param, inp.name
    return model


@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore:# The axis name")
def test_anchor_grid_onnx_at_other_sizes():
    import onnxruntime as ort

    gen = AnchorGenerator.retinanet(strides=(8, 16, 32))
    module = AnchorGrid(gen)
    model = _export(module, _feats([(10, 12), (5, 6), (3, 3)], batch=2))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for sizes in ([(7, 9), (4, 5), (2, 3)], [(100, 152), (50, 76), (25, 38)]):
        feats = _feats(sizes)
        got = session.run(None, {f"feat{i}": f.numpy() for i, f in enumerate(feats)})
        want = module(*feats)
        assert np.array_equal(got[0], want[0].numpy()) and np.array_equal(got[1], want[1].numpy())
        assert np.array_equal(got[0], torch.cat(gen.grid_anchors(sizes)).numpy())


@pytest.mark.onnx
@pytest.mark.filterwarnings("ignore:# The axis name")
def test_point_grid_onnx_at_other_sizes():
    import onnxruntime as ort

    gen = PointGenerator([8, (16, 12)])
    module = PointGrid(gen)
    model = _export(module, _feats([(6, 5), (3, 3)], batch=2))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sizes = [(80, 64), (40, 33)]
    feats = _feats(sizes, batch=3)
    got = session.run(None, {f"feat{i}": f.numpy() for i, f in enumerate(feats)})
    for x, y in zip(got, gen.grid_points(sizes)):
        assert np.array_equal(x, y.numpy())
