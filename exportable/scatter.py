"""Row-wise scatter-max that exports to ONNX ``ScatterND`` (reduction ``max``) over whole rows, in rounds.

Shape shorthand: ``R`` rows of the target, ``S`` columns, ``P`` source rows.

``rows_amax(base (R, S), rows (P,), src (P, S))`` is ``base`` with each row ``r`` replaced by the
elementwise max of ``base[r]`` and every ``src[p]`` with ``rows[p] == r`` (``base`` counts: torch's
``index_reduce(..., "amax", include_self=True)``). Max is exact, so the order of duplicate rows does not
matter and eager and ONNX give the same bits.

Why: ``scatter_reduce(..., "amax")`` with an index expanded over the columns exports to
``ScatterElements(reduction="max")``, which onnxruntime's CPU provider applies element by element (about
100 times slower than ``ScatterND`` over whole rows at MaxIoU's sizes), and the exporter has no translation
for ``aten.index_reduce``. So the eager body is the custom operator ``assignlab::rows_amax`` and
``TRANSLATIONS`` maps it to ``ScatterND(reduction="max")`` over whole rows (opset >= 18; CPU and CUDA
providers both have the kernel).

One ``ScatterND`` is not enough: onnxruntime's CPU kernel (1.32) splits the source rows over its threads
and applies them without guarding repeated rows, so two threads updating one row race and a few maxima come
out wrong, differently from run to run (onnxruntime issue 18048; MaxIoU's pairs repeat every block). The
translation therefore scatters in rounds: the source rows are ordered stably by target row, and round ``k``
scatters each target row's ``k``-th source row, so no round repeats a row. The rounds are an ONNX ``Loop``
whose trip count is the largest number of source rows sharing a target row (the most gts overlapping one
anchor block in MaxIoU), each round one ``ScatterND``.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from onnxscript import INT64, script
from onnxscript import opset18 as op
from onnxscript.onnx_types import TensorType
from torch import Tensor

from exportable._checks import exporting as _exporting

__all__ = ["TRANSLATIONS", "rows_amax"]


@torch.library.custom_op("assignlab::rows_amax", mutates_args=())
def _rows_amax_op(base: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    """``base (R, S)`` with ``src (P, S)`` max-reduced into rows ``rows (P,)`` (base included)."""
    return _rows_amax(base, rows, src)


def _rows_amax(base: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    """The eager body: ``scatter_reduce`` with the row index expanded over the columns (the same numbers as
    ``index_reduce(0, rows, src, "amax", include_self=True)``, which is still beta in torch 2.13)."""
    index = rows.unsqueeze(1).expand(-1, src.shape[1])  # (P, S)
    return base.scatter_reduce(0, index, src, "amax")  # (R, S)


@_rows_amax_op.register_fake
def _rows_amax_fake(base: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    return torch.empty_like(base)


_T = TypeVar("_T", bound=TensorType)


@script()
def _rows_amax_translation(base: _T, rows: INT64, src: _T) -> _T:
    """onnxscript translation of ``assignlab::rows_amax``: ``ScatterND(reduction="max")`` in rounds that never
    repeat a target row (see the module docstring)."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    p = op.Shape(rows)  # (1,) P
    r = op.Shape(base, start=0, end=1)  # (1,) R
    ar = op.Range(op.Constant(value_int=0), op.Squeeze(p), op.Constant(value_int=1))  # (P,)
    _, order = op.TopK(rows * p + ar, p, largest=0, sorted=1)  # (P,) source rows by target row, stable
    counts = op.ScatterElements(op.Expand(zero, r), rows, op.Expand(one, p), reduction="add")  # (R,)
    start = op.CumSum(counts, zero, exclusive=1)  # (R,) each target row's first place in ``order``
    rounds = op.ReduceMax(op.Concat(counts, zero, axis=0), keepdims=0)  # () the most sources of one row
    out = base
    for k in range(rounds):
        live = op.Squeeze(op.NonZero(counts > k), zero)  # (R_k,) target rows with a k-th source
        pick = op.Gather(order, op.Gather(start, live) + k)  # (R_k,) their k-th sources: distinct rows
        out = op.ScatterND(out, op.Unsqueeze(op.Gather(rows, pick), one), op.Gather(src, pick), reduction="max")
    return out


TRANSLATIONS = {torch.ops.assignlab.rows_amax.default: _rows_amax_translation}
"""The exporter's translation table for this module's custom operator."""


def rows_amax(base: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    """``base (R, S)`` with ``src (P, S)`` max-reduced into rows ``rows (P,)`` int64, ``base`` included;
    ``(R, S)``, a new tensor. Same dtype for ``base`` and ``src`` (float or integer). Eager calls the body
    directly (no custom-operator dispatch); the exporter sees ``assignlab::rows_amax``."""
    if _exporting():
        return torch.ops.assignlab.rows_amax(base, rows, src)
    return _rows_amax(base, rows, src)
