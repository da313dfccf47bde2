"""sample_by_noise / NoiseSampler: quotas, the noise rule, reference parity, degenerate inputs, ONNX."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable import onnx as xonnx
from exportable.examples import sampler_inputs
from exportable.sampling import (
    NoiseSampler,
    draw_noise,
    sample_by_noise,
    sample_quotas,
)
from lessons.rpn_anchor_targets import choose_by_noise, sample_by_noise_reference


def masks(n_pos: int, n_neg: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: ``n_pos`` positives and ``n_neg`` negatives at random places among ``n``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pos = torch.zeros(n, dtype=torch.bool)
    neg = torch.zeros(n, dtype=torch.bool)
    pos[perm[:n_pos]] = True
    neg[perm[n_pos : n_pos + n_neg]] = True
    return pos[None], neg[None]


def reference(pos, neg, noise, **kw):
    out = []
    for p, q, z in zip(pos, neg, noise):
        pi, ni = sample_by_noise_reference(torch.nonzero(p).squeeze(1), torch.nonzero(q & ~p).squeeze(1), z, **kw)
        mp = torch.zeros_like(p)
        mn = torch.zeros_like(q)
        mp[pi] = True
        mn[ni] = True
        out.append((mp, mn))
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


# --------------------------------------------------------------------------------------------
# The document's counts and caps


def test_positives_scarce_all_kept_and_negatives_fill_to_256():
    pos, neg = masks(40, 5000, 8000)
    s = sample_by_noise(pos, neg, draw_noise((1, 8000), torch.Generator().manual_seed(1)))
    assert torch.equal(s.pos, pos)  # every positive kept
    assert int(s.neg.sum()) == 256 - 40
    assert not (s.neg & ~neg).any()


def test_positives_plentiful_exactly_128():
    pos, neg = masks(600, 5000, 8000)
    s = sample_by_noise(pos, neg, draw_noise((1, 8000), torch.Generator().manual_seed(2)))
    assert int(s.pos.sum()) == 128 and int(s.neg.sum()) == 128
    assert not (s.pos & ~pos).any()


def test_negatives_scarce_no_backfill():
    pos, neg = masks(600, 30, 1000)
    s = sample_by_noise(pos, neg, draw_noise((1, 1000), torch.Generator().manual_seed(3)))
    assert int(s.pos.sum()) == 128 and int(s.neg.sum()) == 30  # 158 < 256: no back-filling


def test_quotas_and_neg_pos_ub():
    num_pos, num_neg = sample_quotas(torch.tensor([0, 40, 500]), torch.tensor([1000, 1000, 1000]))
    assert num_pos.tolist() == [0, 40, 128] and num_neg.tolist() == [256, 216, 128]
    num_pos, num_neg = sample_quotas(torch.tensor([0, 3, 500]), torch.tensor([1000, 1000, 1000]), neg_pos_ub=3)
    assert num_neg.tolist() == [3, 9, 128]  # int(3 * max(1, num_pos))
    # RoI head, round vs int: 128 * 0.25 = 32 either way; 6 * 0.25 = 1.5 -> int 1, round 2 (half to even)
    assert sample_quotas(torch.tensor([50]), torch.tensor([50]), 128, 0.25)[0].tolist() == [32]
    assert sample_quotas(torch.tensor([50]), torch.tensor([50]), 6, 0.25, rounding="round")[0].tolist() == [2]
    assert sample_quotas(torch.tensor([50]), torch.tensor([50]), 6, 0.25)[0].tolist() == [1]


def test_largest_noise_wins_and_ties_go_to_the_lower_index():
    pos = torch.tensor([[True] * 6])
    neg = torch.zeros_like(pos)
    noise = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.9, 0.5]])
    s = sample_by_noise(pos, neg, noise, num=6, pos_fraction=0.5)  # 3 positives
    assert s.pos[0].tolist() == [True, True, False, False, True, False]
    assert choose_by_noise(torch.arange(6), noise[0], 3).tolist() == [1, 4, 0]


def test_overlapping_candidates_count_as_positive():
    pos = torch.tensor([[True, True, False, False]])
    s = sample_by_noise(pos, torch.ones_like(pos), torch.zeros(1, 4), num=4)
    assert s.pos[0].tolist() == [True, True, False, False] and s.neg[0].tolist() == [False, False, True, True]


# --------------------------------------------------------------------------------------------
# Reference parity (same noise -> same sample), ties on purpose


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), n=st.integers(0, 300), num=st.integers(0, 64), frac=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    ub=st.sampled_from([-1, 0, 1, 3]), levels=st.sampled_from([4, 1000]), seed=st.integers(0, 10_000),
)
def test_matches_reference(b, n, num, frac, ub, levels, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(b, n, generator=g)
    pos, neg = u < 0.2, (u > 0.3) & (u < 0.8)
    noise = torch.floor(torch.rand(b, n, generator=g) * levels) / levels
    got = sample_by_noise(pos, neg, noise, num, frac, ub)
    want = reference(pos, neg, noise, num=num, pos_fraction=frac, neg_pos_ub=ub)
    assert torch.equal(got.pos, want[0]) and torch.equal(got.neg, want[1])
    assert not (got.pos & got.neg).any()
    assert (got.pos.sum(1) <= int(num * frac)).all() and ((got.pos | got.neg).sum(1) <= num).all()


# --------------------------------------------------------------------------------------------
# Degenerate and bad inputs


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tiny_inputs(n):
    pos = torch.ones(2, n, dtype=torch.bool)
    pos[1] = False
    s = sample_by_noise(pos, ~pos, torch.rand(2, n))
    assert torch.equal(s.pos, pos) and torch.equal(s.neg, ~pos)  # fewer candidates than the caps: all kept


def test_no_candidates():
    z = torch.zeros(2, 50, dtype=torch.bool)
    s = NoiseSampler()(z, z, torch.rand(2, 50))
    assert not s.pos.any() and not s.neg.any()


def test_draw_noise_is_reproducible():
    a = draw_noise((2, 7), torch.Generator().manual_seed(5))
    b = draw_noise((2, 7), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.float32 and bool(((a >= 0) & (a < 1)).all())


def test_bad_inputs():
    p = torch.zeros(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="noise"):
        sample_by_noise(p, p, torch.full((1, 4), 2.0))
    with pytest.raises(ValueError, match="noise"):
        sample_by_noise(p, p, torch.rand(1, 5))
    with pytest.raises(TypeError, match="pos"):
        sample_by_noise(p.float(), p, torch.rand(1, 4))
    with pytest.raises(ValueError, match="pos_fraction"):
        NoiseSampler(pos_fraction=1.5)
    with pytest.raises(ValueError, match="rounding"):
        NoiseSampler(rounding="ceil")


# --------------------------------------------------------------------------------------------
# ONNX: exported once, run at other sizes

SAMPLER_IO = {
    "input_names": ["pos", "neg", "noise"],
    "output_names": ["pos_sampled", "neg_sampled"],
    "input_dims": [("B", "N")] * 3,
}


@pytest.fixture(scope="module")
def sampler_session():
    module = NoiseSampler(num=64, pos_fraction=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xonnx.export(module, sampler_inputs({"B": 2, "N": 300}, torch.Generator().manual_seed(0)),
                             **SAMPLER_IO)
    return module, xonnx.session(model, ["CPUExecutionProvider"])


@pytest.mark.onnx
@pytest.mark.parametrize("sizes", [{"B": 3, "N": 1000}, {"B": 1, "N": 7}, {"B": 4, "N": 1}, {"B": 2, "N": 0}])
def test_onnx_matches_eager(sampler_session, sizes):
    module, sess = sampler_session
    args = sampler_inputs(sizes, torch.Generator().manual_seed(sizes["N"]))
    eager = module(*args)
    got = xonnx.run(sess, args)
    for e, o in zip(eager, got):
        assert np.array_equal(e.numpy(), o)
