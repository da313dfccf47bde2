"""Random sampling of positives and negatives with static shapes: the randomness is an input.

Shape shorthand: ``B`` images, ``N`` candidates per image (anchors, or RoIs plus appended gts),
``K`` the constant top-k size of one class (``min(quota_max, N)``).

Faster R-CNN trains its RPN on 256 anchors per image (at most 128 positives) and its RoI head on
128 RoIs (at most 32 positives); mmdetection's ``RandomSampler`` and simple-faster-rcnn's
``np.random.choice`` draw them at random. Here the draw is a tensor ``noise (B, N)``, uniform in
``[0, 1)``, one value per candidate, and **within each class the candidates with the largest
noise are kept** (equal noise: the lower index first, the package's tie rule). Draw the noise
with :func:`draw_noise` (eager) or feed it to the graph; the same noise gives the same sample in
eager, in onnxruntime and in the ``lessons`` reference.

The quotas are mmdetection's ``RandomSampler`` (docs/algorithms.md section 6.1), which for
the RPN is also simple-faster-rcnn's ``AnchorTargetCreator``:

1. ``num_pos = min(#pos, floor(num * pos_fraction))`` (``rounding="round"``: ``round``, as
   simple-faster-rcnn's and py-faster-rcnn's RoI sampling write it; the same number for 256 x 0.5
   and 128 x 0.25);
2. ``num_neg = min(#neg, num - num_pos)``, and with ``neg_pos_ub >= 0`` at most
   ``int(neg_pos_ub * max(1, num_pos))``;
3. no back-filling: short classes give a sample smaller than ``num``.

Static-shape formulation (docs/export.md section 6): per class one ``TopK`` of the
constant ``K = min(quota_max, N)`` over ``where(candidate, noise, -inf)``; the slots whose rank is
below the data-dependent quota are kept (:func:`exportable.ordering.rank_mask`) and scattered back
to ``(B, N)``. No ``randperm``, no ``rand_like``, no data-dependent shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from exportable._checks import check_bool, check_float, check_shape, checks_enabled
from exportable.ordering import _topk, rank_mask

__all__ = ["Sample", "NoiseSampler", "sample_by_noise", "draw_noise", "sample_quotas"]

Rounding = Literal["int", "round"]


class Sample(NamedTuple):
    """``pos (B, N)`` and ``neg (B, N)`` bool: the sampled positives and negatives (disjoint)."""

    pos: Tensor
    neg: Tensor


def draw_noise(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "..."]:
    """Eager helper: uniform noise in ``[0, 1)`` of ``shape`` (e.g. ``(B, N)``) from ``generator``.

    ``generator=None`` uses torch's global generator; pass a seeded ``torch.Generator`` for a
    reproducible sample. Never call this inside an exported module: noise is a graph input.
    """
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def _pos_quota(num: int, pos_fraction: float, rounding: Rounding) -> int:
    x = num * pos_fraction
    return int(round(x)) if rounding == "round" else int(x)


def sample_quotas(
    num_pos_candidates: Tensor,
    num_neg_candidates: Tensor,
    num: int = 256,
    pos_fraction: float = 0.5,
    neg_pos_ub: float = -1,
    rounding: Rounding = "int",
) -> tuple[Tensor, Tensor]:
    """How many positives and negatives each image keeps: ``(num_pos (B,), num_neg (B,))`` int64.

    Steps 1 and 2 of the module docstring, on the candidate counts ``(B,)``.
    """
    pos_max = _pos_quota(num, pos_fraction, rounding)
    num_pos = num_pos_candidates.clamp(max=pos_max)  # (B,)
    neg_max = num - num_pos  # (B,)
    if neg_pos_ub >= 0:
        ub = torch.floor(num_pos.clamp(min=1).to(torch.float64) * float(neg_pos_ub)).to(torch.int64)  # (B,)
        neg_max = torch.minimum(neg_max, ub)  # (B,)
    num_neg = torch.minimum(num_neg_candidates, neg_max)  # (B,)
    return num_pos, num_neg


def _keep_largest(candidates: Tensor, noise: Tensor, quota: Tensor, k_max: int) -> Tensor:
    """Within each row the ``quota`` candidates of largest noise: ``(B, N)`` bool.

    One top-k of constant ``k_max`` (clipped to N) over the candidates' noise (others -inf), the
    slots of rank below ``quota`` kept and scattered back. Candidates always rank above the rest,
    so ``quota <= #candidates`` keeps candidates only.
    """
    key = torch.where(candidates, noise, torch.full_like(noise, -math.inf))  # (B, N)
    _, index = _topk(key, k_max, dim=1)  # (B, K) largest noise first, ties to the lower index
    keep = rank_mask(quota, index.shape[1])  # (B, K) rank < quota
    # ScatterElements with unique indices per row; int64 values (no bool scatter / Where on the CUDA EP)
    out = noise.new_zeros(noise.shape, dtype=torch.int64)  # (B, N)
    out = out.scatter(1, index, keep.to(torch.int64))  # (B, N)
    return out > 0  # (B, N)


def sample_by_noise(
    pos: Bool[Tensor, "B N"],
    neg: Bool[Tensor, "B N"],
    noise: Float[Tensor, "B N"],
    num: int = 256,
    pos_fraction: float = 0.5,
    neg_pos_ub: float = -1,
    *,
    rounding: Rounding = "int",
) -> Sample:
    """Sample at most ``num`` candidates per image, at most ``num * pos_fraction`` of them positive.

    Args:
        pos, neg: ``(B, N)`` bool candidate masks (a candidate in both is treated as positive only).
        noise: ``(B, N)`` uniform in ``[0, 1)``; within each class the largest noise wins.
        num: sample size per image (RPN 256, RoI head 128 / 512).
        pos_fraction: the positive share (RPN 0.5, RoI head 0.25).
        neg_pos_ub: ``>= 0`` caps negatives at ``int(neg_pos_ub * max(1, num_pos))`` (mmdetection; -1 off).
        rounding: ``"int"`` (mmdetection) or ``"round"`` (simple-faster-rcnn / py-faster-rcnn RoI sampling)
            for ``num * pos_fraction``.

    Returns:
        :class:`Sample` ``(pos (B, N), neg (B, N))`` bool masks of the sampled candidates.
    """
    if checks_enabled():
        _check_sample_inputs(pos, neg, noise, num, pos_fraction, rounding)
    return _sample_by_noise(pos, neg, noise, num, pos_fraction, neg_pos_ub, rounding)


def _sample_by_noise(
    pos: Tensor,
    neg: Tensor,
    noise: Tensor,
    num: int,
    pos_fraction: float,
    neg_pos_ub: float,
    rounding: Rounding = "int",
) -> Sample:
    neg = neg & ~pos  # (B, N) the classes are disjoint
    num_pos, num_neg = sample_quotas(pos.sum(dim=1), neg.sum(dim=1), num, pos_fraction, neg_pos_ub, rounding)  # (B,)
    pos_max = _pos_quota(num, pos_fraction, rounding)
    pos_kept = _keep_largest(pos, noise, num_pos, pos_max)  # (B, N)
    neg_kept = _keep_largest(neg, noise, num_neg, num)  # (B, N)
    return Sample(pos_kept, neg_kept)


def _check_sample_inputs(pos: Tensor, neg: Tensor, noise: Tensor, num: int, pos_fraction: float,
                         rounding: str) -> None:
    check_bool("pos", pos)
    check_bool("neg", neg)
    check_shape("pos", pos, ("B", "N"))
    check_shape("neg", neg, tuple(pos.shape))
    check_noise(noise, tuple(pos.shape))
    check_sampler_params(num, pos_fraction, rounding)


def check_noise(noise: Tensor, shape: tuple) -> None:
    """``noise`` float ``shape``, finite, in ``[0, 1]``."""
    check_float("noise", noise)
    check_shape("noise", noise, shape)
    if noise.numel() and bool(((noise < 0) | (noise > 1)).any()):
        raise ValueError("noise: expected uniform values in [0, 1) (draw them with exportable.sampling.draw_noise)")


def check_sampler_params(num: int, pos_fraction: float, rounding: str = "int") -> None:
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"num: expected an int >= 0, got {num!r}")
    if not 0.0 <= float(pos_fraction) <= 1.0:
        raise ValueError(f"pos_fraction: expected a value in [0, 1], got {pos_fraction!r}")
    if rounding not in ("int", "round"):
        raise ValueError(f"rounding: expected 'int' or 'round', got {rounding!r}")


class NoiseSampler(nn.Module):
    """Exportable :func:`sample_by_noise`: ``forward(pos (B, N), neg (B, N), noise (B, N)) -> Sample``.

    mmdetection's ``RandomSampler(num, pos_fraction, neg_pos_ub)`` (torchvision's
    ``BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)``) with the random
    permutation replaced by the ``noise`` input: the largest noise in each class is kept.
    """

    def __init__(self, num: int = 256, pos_fraction: float = 0.5, neg_pos_ub: float = -1,
                 rounding: Rounding = "int") -> None:
        super().__init__()
        check_sampler_params(num, pos_fraction, rounding)
        self.num = num
        self.pos_fraction = float(pos_fraction)
        self.neg_pos_ub = float(neg_pos_ub)
        self.rounding: Rounding = rounding

    def forward(self, pos: Bool[Tensor, "B N"], neg: Bool[Tensor, "B N"], noise: Float[Tensor, "B N"]) -> Sample:
        if checks_enabled():
            _check_sample_inputs(pos, neg, noise, self.num, self.pos_fraction, self.rounding)
        return _sample_by_noise(pos, neg, noise, self.num, self.pos_fraction, self.neg_pos_ub, self.rounding)
