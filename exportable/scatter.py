"""Row-wise scatter-max that exports to ONNX ``ScatterND`` (reduction ``max``) over whole rows, checked.

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
translation therefore checks and repairs: after the ``ScatterND``, every source row is compared with its
target row; the sources still above it (the lost maxima, usually none or a handful) are applied again, one
per target row per round, so no repair repeats a row, and each round settles at least one lost source of
every row it touches. Rounds continue while any source is above its row, so the result is exact on every
provider and thread count. The check costs about one more pass over the
sources (a ``Gather`` of the target rows and a compare); rows with distinct targets never loop. Rows and
sources must be finite (NaN never compares above).
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
    """onnxscript translation of ``assignlab::rows_amax``: ``ScatterND(reduction="max")``, then rounds that
    re-apply the maxima it lost, one source per target row each (see the module docstring). The loop's
    names are long on purpose: the exporter's inliner clashes with graph outputs of the same name."""
    one = op.Constant(value_ints=[1])
    zero = op.Constant(value_ints=[0])
    p = op.Shape(rows)  # (1,) P
    r = op.Shape(base, start=0, end=1)  # (1,) R
    rows_amax_acc = op.ScatterND(base, op.Unsqueeze(rows, one), src, reduction="max")  # (R, S) maybe short
    # (P,) 0 where a source is above its row somewhere: ReduceMin over uint8, the narrowest type the CPU and
    # CUDA providers both reduce (ReduceMax has no uint8 CUDA kernel); NaN is never above, so it never loops
    kept = op.ReduceMin(op.Cast(op.Not(op.Greater(src, op.Gather(rows_amax_acc, rows))), to=2), one, keepdims=0)
    rows_amax_lost = op.Squeeze(op.NonZero(op.Not(op.Cast(kept, to=9))), zero)  # (Q,) sources above their row
    rows_amax_left = op.Size(rows_amax_lost) > op.Constant(value_int=0)
    while rows_amax_left:
        target = op.Gather(rows, rows_amax_lost)  # (Q,)
        first = op.ScatterElements(op.Expand(p, r), target, rows_amax_lost, reduction="min")  # (R,) P: none
        fix = op.Squeeze(op.NonZero(op.Less(first, p)), zero)  # (F,) distinct target rows
        rows_amax_acc = op.ScatterND(rows_amax_acc, op.Unsqueeze(fix, one), op.Gather(src, op.Gather(first, fix)),
                                     reduction="max")  # (R, S)
        above = op.Greater(op.Gather(src, rows_amax_lost), op.Gather(rows_amax_acc, target))  # (Q, S)
        kept = op.ReduceMin(op.Cast(op.Not(above), to=2), one, keepdims=0)  # (Q,)
        rows_amax_lost = op.Gather(rows_amax_lost, op.Squeeze(op.NonZero(op.Not(op.Cast(kept, to=9))), zero))
        rows_amax_left = op.Size(rows_amax_lost) > op.Constant(value_int=0)
    return rows_amax_acc


TRANSLATIONS = {torch.ops.assignlab.rows_amax.default: _rows_amax_translation}
"""The exporter's translation table for this module's custom operator."""


def rows_amax(base: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    """``base (R, S)`` with ``src (P, S)`` max-reduced into rows ``rows (P,)`` int64, ``base`` included;
    ``(R, S)``, a new tensor. Same dtype for ``base`` and ``src`` (float or integer). Eager calls the body
    directly (no custom-operator dispatch); the exporter sees ``assignlab::rows_amax``."""
    if _exporting():
        return torch.ops.assignlab.rows_amax(base, rows, src)
    return _rows_amax(base, rows, src)
