"""Input checks for the eager wrappers.

Every public function and every module's ``forward`` validates its tensors here before computing,
so bad input gets a clear error naming the argument instead of silent garbage. The checks are
skipped while a graph is being exported (an ONNX graph cannot raise, and value checks would be
traced) and can be switched off for speed with :func:`checks_disabled` (value checks such as NaN
scans cost a device sync on GPU).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

_state = threading.local()


def exporting() -> bool:
    """True while torch is tracing or exporting (dynamo export, TorchScript, torch.compile)."""
    if torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if getattr(compiler, "is_exporting", lambda: False)():
            return True
        if compiler.is_compiling():
            return True
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def checks_enabled() -> bool:
    """True when eager input checks run (not exporting, not switched off)."""
    return getattr(_state, "enabled", True) and not exporting()


@contextlib.contextmanager
def checks_disabled() -> Iterator[None]:
    """Switch the eager input checks off inside a ``with`` block (e.g. a training loop)."""
    previous = getattr(_state, "enabled", True)
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


def _fail(name: str, what: str, tensor: Tensor | None = None) -> None:
    shape = "" if tensor is None else f" (got shape {tuple(tensor.shape)}, dtype {tensor.dtype})"
    raise ValueError(f"{name}: {what}{shape}")


def check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def _cast_hint(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "cast with .float() (numpy arrays are float64 by default: torch.from_numpy(a).float())"
    if dtype == torch.int64:
        return "cast with .long()"
    return f"cast with .to({dtype})"


def check_dtype(name: str, x: Tensor, dtype: torch.dtype) -> None:
    """Exactly ``dtype``; anything else is a ``TypeError`` that names the argument and says how to cast.

    Strict on purpose: a float64 box or an int32 label would otherwise change results silently (float64
    IoUs round differently at the thresholds) or fail deep inside torch (``index_put`` / ``scatter``).
    """
    check_tensor(name, x)
    if x.dtype != dtype:
        want, got = (str(d).removeprefix("torch.") for d in (dtype, x.dtype))
        raise TypeError(f"{name}: expected {want}, got {got}; {_cast_hint(dtype)}")


def check_float(name: str, x: Tensor, *, finite: bool = True, dtype: torch.dtype | None = torch.float32) -> None:
    """Floating dtype (exactly ``dtype``, float32 by default; ``None``: any float) and no NaN (no inf either
    when ``finite``)."""
    check_tensor(name, x)
    if dtype is not None:
        check_dtype(name, x, dtype)
    elif not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        return
    if finite:
        if not bool(torch.isfinite(x).all()):
            bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
            _fail(name, f"contains {bad}; every value must be finite", x)
    elif bool(torch.isnan(x).any()):
        _fail(name, "contains NaN", x)


def check_integer(name: str, x: Tensor) -> None:
    """int64, the package's one integer dtype (labels, indices, level ids, image sizes)."""
    check_dtype(name, x, torch.int64)


def check_labels(name: str, labels: Tensor, mask: Tensor | None, num_classes: int) -> None:
    """Every real label (``mask`` True, or all when ``mask`` is None) lies in ``[0, num_classes)``.

    Padded rows may hold anything. A ``ValueError`` names the argument, the range and the values found.
    """
    real = labels if mask is None else labels[mask]  # (real,)
    if real.numel() and bool(((real < 0) | (real >= num_classes)).any()):
        raise ValueError(f"{name}: real gts need a class in [0, {num_classes}), got values in "
                         f"[{int(real.min())}, {int(real.max())}]")


def check_image_sizes(name: str, image_sizes: Tensor, batch: int | None = None) -> None:
    """``(B, 2)`` int64 rows of ``(H, W)``, each ``>= 0``; ``B`` must equal ``batch`` when given."""
    check_integer(name, image_sizes)
    check_shape(name, image_sizes, ("B" if batch is None else batch, 2))
    if image_sizes.numel() and bool((image_sizes < 0).any()):
        _fail(name, "image sizes must be >= 0 (rows are (H, W))", image_sizes)


def check_bool(name: str, x: Tensor) -> None:
    check_tensor(name, x)
    if x.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool tensor, got dtype {x.dtype}")


def check_shape(name: str, x: Tensor, shape: Sequence[int | str | None], *, leading: bool = False) -> None:
    """Check ``x.shape`` against ``shape``: ints must match, strings/None are free.

    With ``leading=True``, ``x`` may carry extra leading (batch) dims before ``shape``.
    """
    check_tensor(name, x)
    want = tuple(shape)
    if leading:
        if x.dim() < len(want):
            _fail(name, f"expected at least {len(want)} dims ending in {_fmt(want)}", x)
        got = tuple(x.shape[x.dim() - len(want):])
    else:
        if x.dim() != len(want):
            _fail(name, f"expected {len(want)} dims {_fmt(want)}", x)
        got = tuple(x.shape)
    for g, w in zip(got, want):
        if isinstance(w, int) and g != w:
            _fail(name, f"expected shape {_fmt(want)}", x)


def check_boxes(
    name: str,
    boxes: Tensor,
    *,
    ndim: int | None = None,
    allow_inverted: bool = False,
) -> None:
    """Boxes ``(..., 4)`` as ``(x1, y1, x2, y2)``: float, finite, and ``x1 <= x2, y1 <= y2``."""
    check_tensor(name, boxes)
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        _fail(name, "boxes must have a last dim of 4 as (x1, y1, x2, y2)", boxes)
    if ndim is not None and boxes.dim() != ndim:
        _fail(name, f"expected {ndim} dims ending in 4", boxes)
    check_float(name, boxes)
    if not allow_inverted and boxes.numel() > 0:
        inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
        if bool(inverted.any()):
            first = tuple(int(i) for i in inverted.nonzero()[0])
            _fail(name, f"inverted box at index {first} (x2 < x1 or y2 < y1); boxes are (x1, y1, x2, y2)")


def check_same_leading(names: Sequence[str], tensors: Sequence[Tensor], dims: int) -> None:
    """The first ``dims`` dims of every tensor agree (e.g. the batch dim B)."""
    ref = tuple(tensors[0].shape[:dims])
    for n, t in zip(names[1:], tensors[1:]):
        if tuple(t.shape[:dims]) != ref:
            raise ValueError(
                f"{n}: leading dims {tuple(t.shape[:dims])} do not match {names[0]}'s {ref}"
            )


def check_probabilities(name: str, x: Tensor) -> None:
    """Scores are probabilities in [0, 1], never logits; no NaN. One ``aminmax`` pass (NaN reaches both ends)."""
    check_dtype(name, x, torch.float32)
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo != lo or hi != hi:
        _fail(name, "contains NaN", x)
    if lo < 0 or hi > 1:
        _fail(name, f"expected probabilities in [0, 1] (apply sigmoid to logits first), got values in [{lo:g}, {hi:g}]",
              x)


def check_scalar(name: str, value: float, *, low: float | None = None, high: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    if v != v:
        raise ValueError(f"{name}: must not be NaN")
    if low is not None and v < low:
        raise ValueError(f"{name}: must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name}: must be <= {high}, got {v}")
    return v


def _fmt(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def check_masked_boxes(name: str, boxes: Tensor, mask: Tensor, mask_name: str = "gt_mask") -> None:
    """Padded boxes ``(B, M, 4)`` with ``mask (B, M)``: real rows valid boxes, padding anything finite."""
    check_boxes(name, boxes, ndim=3, allow_inverted=True)
    check_bool(mask_name, mask)
    check_shape(mask_name, mask, (boxes.shape[0], boxes.shape[1]))
    if boxes.numel():
        check_boxes(name, boxes.masked_fill(~mask.unsqueeze(-1), 0.0), ndim=3)
