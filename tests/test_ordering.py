"""Top-k with the tie rule (lower index first) and rank masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exportable.ordering import argsort_topk, rank_mask, topk


def stable_reference(x: torch.Tensor, k: int, dim: int, largest: bool):
    order = torch.sort(x, dim=dim, descending=largest, stable=True).indices
    order = order.narrow(dim, 0, min(k, x.shape[dim]))
    return torch.gather(x, dim, order), order


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("levels", [2, 5, 1000])
def test_matches_stable_sort_on_ties(largest, levels):
    g = torch.Generator().manual_seed(levels)
    x = torch.randint(0, levels, (4, 7, 300), generator=g).float()
    for k in (1, 9, 13, 299, 300, 400):
        v, i = topk(x, k, largest=largest)
        rv, ri = stable_reference(x, k, -1, largest)
        assert torch.equal(i, ri) and torch.equal(v, rv)


def test_other_dims_integers_and_infinities():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (50, 6), generator=g)
    v, i = topk(x, 4, dim=0)
    assert torch.equal(i, stable_reference(x, 4, 0, True)[1])
    y = torch.tensor([[1.0, float("inf"), float("inf"), -float("inf"), 1.0]])
    assert topk(y, 3)[1].tolist() == [[1, 2, 0]]
    assert topk(y, 2, largest=False)[1].tolist() == [[3, 0]]


def test_k_is_clipped_and_zero_sizes():
    x = torch.tensor([[3.0, 1.0, 3.0]])
    v, i = topk(x, 10)
    assert i.tolist() == [[0, 2, 1]] and v.tolist() == [[3.0, 3.0, 1.0]]
    assert topk(x, 0)[1].shape == (1, 0)
    assert topk(torch.zeros(2, 0), 3)[1].shape == (2, 0)
    assert argsort_topk(torch.tensor([1.0, 2.0, 1.0, 2.0])).tolist() == [1, 3, 0, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.integers(1, 70))
def test_property_equals_stable_sort(values, k):
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(topk(x, k)[1], stable_reference(x, k, -1, True)[1])


def test_rank_mask():
    k = torch.tensor([[0, 2], [5, 1]])
    m = rank_mask(k, 3)
    assert m.shape == (2, 2, 3)
    assert m.tolist() == [[[False] * 3, [True, True, False]], [[True] * 3, [True, False, False]]]


def test_bad_input():
    with pytest.raises(ValueError, match="x.*NaN"):
        topk(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="k"):
        topk(torch.tensor([1.0]), -1)
    with pytest.raises(TypeError, match="x"):
        topk([1.0, 2.0], 1)


@pytest.mark.parametrize("sorted_", [True, False])
def test_zero_ties_of_a_sparse_metric_take_the_first_entries(sorted_):
    # A non-negative metric with fewer than k non-zero values in many rows: the k-th value is 0 and ties past
    # the k-th place. The rule's zeros (lowest index) are refilled from the first k entries when enough of
    # them are 0, else found by the full repair; either way the set is the stable sort's.
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 4, (3, 20, 60), generator=g).float() / 3  # many ties
    x = torch.where(torch.rand(3, 20, 60, generator=g) < 0.8, 0.0, x)  # mostly zeros
    x[0, :5] = 0.0  # rows without a non-zero value
    x[1, :5, 40:] = 0.0
    x[2, :5, :13] = 1.0  # the first entries are not zeros: the full repair
    for k in (1, 5, 10, 13, 60, 80):
        v, i = topk(x, k, sorted=sorted_)
        rv, ri = stable_reference(x, k, -1, True)
        if sorted_:
            assert torch.equal(i, ri) and torch.equal(v, rv), k
        else:
            got = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, i, True)
            want = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, ri, True)
            assert torch.equal(got, want), k
            assert torch.equal(x.gather(-1, i), v)
