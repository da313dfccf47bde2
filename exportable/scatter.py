"""Row-wise scatter-max that exports to one ONNX ``ScatterND`` (reduction ``max``) over whole rows.

Shape shorthand: ``R`` rows of the target, ``S`` columns, ``P`` source rows.

``rows_amax(base (R, S), rows (P,), src (P, S))`` is ``base`` with each row ``r`` replaced by the
elementwise max of ``base[r]`` and every ``src[p]`` with ``rows[p] == r`` (``base`` counts: torch's
``index_reduce(..., "amax", include_self=True)``). Max is exact, so the order of duplicate rows does not
matter and eager and ONNX give the same bits.

Why: ``scatter_reduce(..., "amax")`` with an index expanded over the columns exports to
``ScatterElements(reduction="max")``, which onnxruntime's CPU provider applies element by element (about
100 times slower than ``ScatterND`` over whole rows at MaxIoU's sizes), and the exporter has no translation
for ``aten.index_reduce``. So the eager body is the custom operator ``assignlab::rows_amax`` and
``TRANSLATIONS`` maps it to ``ScatterND(base, rows[:, None], src, reduction="max")`` (opset >= 18; CPU and
CUDA providers both have the kernel).
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op
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


def _rows_amax_translation(base, rows, src):
    """onnxscript translation of ``assignlab::rows_amax``: one ``ScatterND`` with ``reduction="max"``."""
    index = op.Unsqueeze(rows, op.Constant(value_ints=[1]))  # (P, 1) whole rows
    return op.ScatterND(base, index, src, reduction="max")


TRANSLATIONS = {torch.ops.assignlab.rows_amax.default: _rows_amax_translation}
"""The exporter's translation table for this module's custom operator."""


def rows_amax(base: Tensor, rows: Tensor, src: Tensor) -> Tensor:
    """``base (R, S)`` with ``src (P, S)`` max-reduced into rows ``rows (P,)`` int64, ``base`` included;
    ``(R, S)``, a new tensor. Same dtype for ``base`` and ``src`` (float or integer). Eager calls the body
    directly (no custom-operator dispatch); the exporter sees ``assignlab::rows_amax``."""
    if _exporting():
        return torch.ops.assignlab.rows_amax(base, rows, src)
    return _rows_amax(base, rows, src)
