"""The shared numerics (exportable/numerics.py): accurate, and the same bits in eager and onnxruntime."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exportable import onnx as xonnx
from exportable.boxes import box_ciou
from exportable.numerics import atan, power

F32_EPS = torch.finfo(torch.float32).eps


def _wide_range() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([
        torch.linspace(-60, 60, 40001),
        torch.logspace(-9, 9, 20001), -torch.logspace(-9, 9, 2001),
        torch.rand(20000, generator=g) * 4,  # the reduction's three intervals, densely
        torch.tensor([0.0, -0.0, 1.0, -1.0, 2.414213562373095, 0.41421356237309503, 1e30, -1e30]),
    ]).float()


def test_atan_is_within_two_ulp_of_the_exact_value_and_of_torch():
    x = _wide_range()
    exact = torch.atan(x.double())
    ours = atan(x).double()
    ulp = F32_EPS * exact.abs().clamp(min=torch.finfo(torch.float32).tiny)
    assert ((ours - exact).abs() / ulp).max() <= 2.0
    assert (atan(x) - torch.atan(x)).abs().max() <= 2 * F32_EPS * math.pi / 2


def test_atan_limits_signs_and_nan():
    got = atan(torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, float("nan")]))
    assert got[0] == pytest.approx(math.pi / 2) and got[1] == pytest.approx(-math.pi / 2)
    assert got[2] == 0 and got[3] == 0 and torch.isnan(got[4])
    x = _wide_range()
    assert torch.equal(atan(-x), -atan(x))  # odd, exactly


def test_power_by_squaring_matches_pow_within_4_ulp_and_special_exponents():
    u = torch.rand(10000, generator=torch.Generator().manual_seed(1))
    for e, ulps in ((1, 0), (2, 1), (3, 2), (6, 4), (7, 4), (13, 8)):  # the error grows with the multiplications
        exact = u.double() ** e
        normal = exact > torch.finfo(torch.float32).tiny  # below it float32 itself has fewer digits (subnormals)
        err = (power(u, e).double() - exact).abs()[normal]
        assert (err <= ulps * F32_EPS * exact[normal]).all(), e
    assert torch.equal(power(u, 0), torch.ones_like(u))
    assert torch.equal(power(u, 0.5), torch.sqrt(u))
    assert torch.allclose(power(u, 0.8), u.pow(0.8))  # other exponents fall back to torch.pow
    one = power(u, 1)
    assert torch.equal(one, u) and one.data_ptr() != u.data_ptr()  # a new tensor, never an alias


class _Numerics(nn.Module):
    def forward(self, x, boxes1, boxes2):
        return atan(x), power(x.abs(), 6), box_ciou(boxes1, boxes2)


@pytest.mark.onnx
def test_atan_power_and_ciou_give_the_same_bits_in_onnxruntime_and_need_no_atan_or_pow_node():
    g = torch.Generator().manual_seed(2)
    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 100
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50], 1).round(decimals=1)  # (n, 4)
    args = (_wide_range()[:3000].contiguous(), boxes(7), boxes(11))
    model = xonnx.export(_Numerics(), args, input_names=["x", "boxes1", "boxes2"],
                         output_names=["atan", "pow6", "ciou"], input_dims=[("N",), ("M", 4), ("K", 4)])
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Atan", "Pow"}, ops
    sess = xonnx.session(model, ["CPUExecutionProvider"])
    x = torch.cat([_wide_range(), torch.rand(12345, generator=g)])  # other sizes than the export's
    b1, b2 = boxes(40), boxes(333)
    b1[5] = b1[6]  # two identical gts: identical rows, and the same bits as eager
    got = [torch.from_numpy(o) for o in xonnx.run(sess, (x, b1, b2))]
    want = _Numerics()(x, b1, b2)
    for w, o in zip(want, got):
        assert torch.equal(w, o)
    assert torch.equal(got[2][5], got[2][6])


def test_ciou_pairwise_and_aligned_agree_and_a_box_with_itself_is_one():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 5, 2, generator=g) * 50
    a = torch.cat([xy, xy + 1 + torch.rand(2, 5, 2, generator=g) * 30], -1)  # (2, 5, 4)
    xy = torch.rand(2, 9, 2, generator=g) * 50
    b = torch.cat([xy, xy + 1 + torch.rand(2, 9, 2, generator=g) * 30], -1)  # (2, 9, 4)
    pair = box_ciou(a, b)  # (2, 5, 9)
    aligned = box_ciou(a.unsqueeze(2), b.unsqueeze(1), aligned=True)  # broadcast (2, 5, 9)
    assert torch.equal(pair, aligned)
    assert torch.allclose(box_ciou(a, a, aligned=True), torch.ones(2, 5), atol=1e-5)
