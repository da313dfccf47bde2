"""RoIAlign (and the lesson's RoIPool): hand-computed values, reference <-> exportable <-> onnxruntime
(and onnx's own reference implementation of RoiAlign), degenerate and bad inputs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from exportable import onnx as xonnx
from exportable.examples import roi_align_inputs
from exportable.roi_align import RoIAlign, roi_align
from lessons import roi_head_sampling as ref


def ramp(h, w, c=2):
    """A feature map that is linear in (y, x): f_c(y, x) = (c + 1) * (10 y + x). Bilinear sampling is exact on it."""
    y = torch.arange(h, dtype=torch.float32).view(h, 1)
    x = torch.arange(w, dtype=torch.float32).view(1, w)
    return torch.stack([(k + 1) * (10 * y + x) for k in range(c)])[None]  # (1, C, H, W)


def test_linear_map_gives_the_bin_centres():
    # On a linear map the mean of a bin's samples is the value at the bin's centre, in index coordinates
    # (aligned: pixel x maps to x / 16 - 0.5). RoI (40, 56, 152, 168) px -> cells (2, 3, 9, 10) - 0.5.
    feat = ramp(16, 16)
    roi = torch.tensor([[[40.0, 56.0, 152.0, 168.0]]])
    out = roi_align(feat, roi, output_size=(2, 4), spatial_scale=1 / 16, sampling_ratio=2)
    x1, y1, x2, y2 = 40 / 16 - 0.5, 56 / 16 - 0.5, 152 / 16 - 0.5, 168 / 16 - 0.5
    cy = y1 + (torch.arange(2) + 0.5) * (y2 - y1) / 2  # (2,) bin centres
    cx = x1 + (torch.arange(4) + 0.5) * (x2 - x1) / 4  # (4,)
    want = 10 * cy.view(2, 1) + cx.view(1, 4)  # (2, 4)
    torch.testing.assert_close(out[0, 0, 0], want)
    torch.testing.assert_close(out[0, 0, 1], 2 * want)
    # aligned=False: no half-pixel offset, the same centres shifted by +0.5 cell in x and y
    out = roi_align(feat, roi, output_size=(2, 4), spatial_scale=1 / 16, sampling_ratio=2, aligned=False)
    torch.testing.assert_close(out[0, 0, 0], want + 5.5)


def test_border_clamp_and_out_of_range_samples():
    feat = ramp(4, 4, c=1)  # values 10 y + x, y, x in 0..3
    # A 1 x 1-cell RoI whose single sample (s = 1) sits at index (4.0, 4.0) = (H, W): past the last cell but
    # not by more than one cell -> clamped to the border cell (3, 3): 33
    roi = torch.tensor([[[64.0, 64.0, 80.0, 80.0]]])  # cells (4, 4, 5, 5) - 0.5: the sample at 3.5 + 0.5
    out = roi_align(feat, roi, output_size=1, spatial_scale=1 / 16, sampling_ratio=1)
    assert out.item() == 33.0
    # Far outside (sample at index > H): 0, not the border value
    out = roi_align(feat, torch.tensor([[[200.0, 200.0, 216.0, 216.0]]]), output_size=1, spatial_scale=1 / 16,
                    sampling_ratio=1)
    assert out.item() == 0.0
    # A 2 x 2 grid where one sample row is out of range (y < -1) and one in: the mean counts the 0
    roi = torch.tensor([[[16.0, -64.0, 32.0, 16.0]]])  # y from -4.5 to 0.5 cells: samples at -3.25 and -0.75
    out = roi_align(feat, roi, output_size=1, spatial_scale=1 / 16, sampling_ratio=2)
    # x samples at 0.75 and 1.25 (mean 1.0); y: -3.25 reads 0, -0.75 clamps to row 0 -> mean (0 + (0 + 1.0)) / 2
    assert out.item() == pytest.approx(0.5)
    torch.testing.assert_close(out[0, 0], ref.roi_align_reference(feat[0], roi[0], 1, 1 / 16, 2)[0].float())


CASES = [
    {"output_size": 7, "sampling_ratio": 2, "aligned": True},
    {"output_size": (3, 5), "sampling_ratio": 1, "aligned": True},
    {"output_size": 2, "sampling_ratio": 3, "aligned": False},
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_per_roi_reference(kw, seed):
    sizes = {"B": 2, "C": 3, "H": 9, "W": 11, "K": 12}
    feat, rois = roi_align_inputs(sizes, torch.Generator().manual_seed(seed))
    out = RoIAlign(spatial_scale=1 / 16, **kw)(feat, rois)
    for b in range(2):
        want = ref.roi_align_reference(feat[b], rois[b], kw["output_size"], 1 / 16, kw["sampling_ratio"], kw["aligned"])
        torch.testing.assert_close(out[b].double(), want, atol=1e-5, rtol=1e-5)


def _onnx_roialign_model(mode: str, out_hw, sampling_ratio: int, scale: float) -> onnx.ModelProto:
    h = onnx.helper
    node = h.make_node("RoiAlign", ["X", "rois", "batch_indices"], ["Y"], coordinate_transformation_mode=mode,
                       mode="avg", output_height=out_hw[0], output_width=out_hw[1], sampling_ratio=sampling_ratio,
                       spatial_scale=scale)
    graph = h.make_graph([node], "roialign", [h.make_tensor_value_info("X", onnx.TensorProto.FLOAT, None),
                                              h.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, None),
                                              h.make_tensor_value_info("batch_indices", onnx.TensorProto.INT64, None)],
                         [h.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 16)], ir_version=10)


@pytest.mark.parametrize("kw", CASES)
def test_matches_onnx_reference_implementation_of_roialign(kw):
    """onnx's own Python RoiAlign (``onnx.reference``) is a third, independent oracle."""
    from onnx.reference import ReferenceEvaluator

    feat, rois = roi_align_inputs({"B": 2, "C": 2, "H": 6, "W": 7, "K": 6}, torch.Generator().manual_seed(5))
    module = RoIAlign(spatial_scale=1 / 16, **kw)
    out = module(feat, rois).contiguous()
    model = _onnx_roialign_model("half_pixel" if kw["aligned"] else "output_half_pixel", module.output_size,
                                 kw["sampling_ratio"], 1 / 16)
    got = ReferenceEvaluator(model).run(None, {"X": feat.numpy(), "rois": rois.reshape(-1, 4).numpy(),
                                               "batch_indices": np.repeat(np.arange(2), 6)})[0]
    np.testing.assert_allclose(out.reshape(got.shape).numpy(), got, atol=1e-5, rtol=1e-5)


def test_degenerate_inputs():
    feat = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert roi_align(feat, torch.zeros(2, 0, 4)).shape == (2, 0, 3, 7, 7)  # K = 0
    one = torch.randn(1, 2, 1, 1)
    out = roi_align(one, torch.tensor([[[0.0, 0.0, 16.0, 16.0]]]), output_size=2)  # a 1 x 1 map: every sample
    torch.testing.assert_close(out, one.view(1, 1, 2, 1, 1).expand(1, 1, 2, 2, 2))  # reads its only cell
    zero = roi_align(feat, torch.tensor([[[24.0, 24.0, 24.0, 24.0]]] * 2))  # zero-size: every sample at (1, 1)
    torch.testing.assert_close(zero[0, 0], feat[0, :, 1, 1].view(3, 1, 1).expand(3, 7, 7))


def test_gradient_reaches_the_features_with_unit_weight_per_sample():
    feat = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[[16.0, 16.0, 96.0, 80.0], [40.0, 8.0, 72.0, 100.0]]])  # every sample inside the map
    roi_align(feat, rois, output_size=3).sum().backward()
    # each bin's weights sum to 1 (mean of bilinear samples), so each channel receives 2 RoIs x 9 bins
    torch.testing.assert_close(feat.grad.sum(dim=(0, 2, 3)), torch.full((2,), 18.0))


def test_roi_pool_quantises_and_roi_align_does_not():
    feat = torch.arange(64, dtype=torch.float32).view(1, 8, 8)  # (C, H, W), value 8 y + x
    # RoIPool: a RoI 4 x 4 cells big pooled to 2 x 2 is the max of each 2 x 2 quadrant (cells incl. the end: +1)
    bins = ref.roi_pool_bins([16.0, 16.0, 64.0, 64.0], (2, 2), 1 / 16, (8, 8))
    assert bins[0, 0].tolist() == [1, 3, 1, 3] and bins[1, 1].tolist() == [3, 5, 3, 5]
    out = ref.roi_pool_reference(feat, torch.tensor([[16.0, 16.0, 64.0, 64.0]]), 2, 1 / 16)
    assert out[0, 0].tolist() == [[18.0, 20.0], [34.0, 36.0]]
    # moving the RoI by 7 px (< half a cell) changes nothing for RoIPool (rounded away), but RoIAlign follows
    moved = torch.tensor([[23.0, 16.0, 71.0, 64.0]])
    assert torch.equal(ref.roi_pool_reference(feat, moved, 2, 1 / 16), out)
    a = roi_align(feat[None], torch.tensor([[[16.0, 16.0, 64.0, 64.0]]]), 2)
    b = roi_align(feat[None], moved[None], 2)
    torch.testing.assert_close(b - a, torch.full_like(a, 7 / 16))  # the ramp's x slope is 1 per cell
    assert ref._round_half_away(2.5) == 3 and ref._round_half_away(-2.5) == -3


@pytest.mark.onnx
def test_one_roialign_node_and_parity_at_other_sizes(exported):
    model = exported("roi_align")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("RoiAlign") == 1 and "Loop" not in ops
    node = next(n for n in model.graph.node if n.op_type == "RoiAlign")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["mode"] == b"avg"
    assert attrs["sampling_ratio"] == 2 and attrs["output_height"] == attrs["output_width"] == 7
    sess = xonnx.session(model)
    # the document's size: a 600 x 1000 image at stride 16 (38 x 63), 300 RoIs per image, 256 channels
    feat, rois = roi_align_inputs({"B": 2, "C": 256, "H": 38, "W": 63, "K": 300},
                                          torch.Generator().manual_seed(3))
    got = xonnx.run(sess, (feat, rois))[0]
    np.testing.assert_allclose(got, RoIAlign()(feat, rois).numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.onnx
def test_output_half_pixel_export_matches_eager():
    module = RoIAlign(output_size=(2, 3), spatial_scale=1 / 8, sampling_ratio=3, aligned=False)
    feat, rois = roi_align_inputs({"B": 2, "C": 3, "H": 6, "W": 7, "K": 5}, torch.Generator().manual_seed(0),
                                          stride=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xonnx.export(module, (feat, rois), input_names=["features", "rois"], output_names=["pooled"],
                             input_dims=[("B", "C", "H", "W"), ("B", "K", 4)])
    sess = xonnx.session(model)
    other = ({"B": 1, "C": 5, "H": 11, "W": 4, "K": 9}, {"B": 3, "C": 2, "H": 3, "W": 20, "K": 1})
    for seed, sizes in enumerate(other):
        feat, rois = roi_align_inputs(sizes, torch.Generator().manual_seed(seed), stride=8)
        got = xonnx.run(sess, (feat, rois))[0]
        np.testing.assert_allclose(got, module(feat, rois).numpy(), atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_argument():
    feat = torch.randn(2, 3, 5, 4)
    rois = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]] * 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoIAlign(sampling_ratio=0)  # the adaptive mode: not static
    with pytest.raises(ValueError, match="output_size"):
        RoIAlign(output_size=(7, 0))
    with pytest.raises(ValueError, match="rois"):
        roi_align(feat, rois[:1])  # B = 1 vs 2
    with pytest.raises(ValueError, match="rois"):
        roi_align(feat, torch.tensor([[[16.0, 0.0, 0.0, 16.0]]] * 2))  # inverted
    with pytest.raises(ValueError, match="features"):
        roi_align(feat[0], rois)  # (C, H, W)
    with pytest.raises(ValueError, match="features"):
        roi_align(torch.zeros(2, 3, 0, 4), rois)  # an empty map
    with pytest.raises(ValueError, match="spatial_scale"):
        RoIAlign(spatial_scale=-1.0)
