"""The exercise checker: how close is your answer to the reference, and which rule does it break?

``check(name, got, expected)`` compares one answer and prints one line::

    iou          | ✓ exact (121 values)
    areas        | ✓ close (float rounding: max diff 5.96e-08, within 1e-06 + 1e-05·|expected|)
    cost         | ✗ 1/4 not close, first at [1, 1]: got 0.9, expected 0.4 | max diff 0.5

- **✓ exact**: every value equal (NaN equals NaN in the same place).
- **✓ close**: every value within ``atol + rtol * |expected|`` (the rule of ``torch.allclose``): a
  correct answer computed in another order or precision. Not a warning, and nothing to fix.
- **✗**: how many elements fail, the first one in row-major order, and the largest difference.
  Bool and integer values (masks, indices, labels) have no "close": they must be equal.

``check_cases(name, fn, cases)`` runs your function on a list of :class:`Case` s, each one a boundary the
lesson teaches (a value exactly at a threshold, tied scores, a cap with scarce and with plentiful
positives, an empty input), and prints one line per case::

    my_nms: 5 cases
      ✓ IoU exactly at the threshold is kept
      ✗ tied scores: the lower index comes first -- 1/2 differ, first at [0]: got 1, expected 0

A failing case names the rule it tests, so the message says what to fix, not only where.

Shapes and dtypes are compared before values. A shape mismatch fails and says so. A dtype of
the wrong kind fails: a non-bool where a bool mask is expected, a float where an integer index
or label is expected, a bool where a float is expected. A different width of the same kind
(float64 for float32, int32 for int64) and an integer where a float is expected are only noted,
unless ``strict_dtype=True``.

When the answer is not close, ``check`` and ``check_cases`` raise ``AssertionError`` with the failing
line(s) (pass ``raise_on_fail=False`` to only print). ``got`` and ``expected`` may be torch tensors,
numpy arrays, Python or numpy scalars and (nested) lists; also named tuples, dicts, or lists of
tensors, whose items are then checked one line each, named ``name.field``, ``name['key']`` or
``name[i]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "CheckResult", "check", "check_cases"]

_KIND_NAMES = {"b": "bool", "i": "integer", "u": "integer", "f": "float", "c": "complex"}


@dataclass
class CheckResult:
    """What :func:`check` found.

    Attributes:
        name: the name given to ``check``.
        exact: shapes equal, dtype kinds acceptable, every element equal.
        close: shapes equal, dtype kinds acceptable, every element within tolerance.
        max_abs_diff: the largest ``|got - expected|`` (``inf`` where only one side is NaN;
            ``nan`` when the values could not be compared, e.g. shapes differ).
        first_failure: ``(index, got, expected)`` of the first failing element, or None.
        message: the line(s) printed.
        problem: why the answer fails before its values are looked at (shape, dtype), or "".
    """

    name: str
    exact: bool
    close: bool
    max_abs_diff: float
    first_failure: tuple[tuple[int, ...], Any, Any] | None
    message: str
    problem: str = ""

    def _ipython_display_(self) -> None:
        """Nothing: ``check`` already printed its line (a cell ending in ``check(...)`` shows it once)."""

    def __bool__(self) -> bool:
        return self.close


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """A tensor, array, scalar or nested list as a numpy array (CPU, no autograd)."""
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.to(torch.float32)
        return t.numpy()
    if isinstance(x, (list, tuple)) and any(hasattr(v, "shape") for v in x):
        return np.asarray([_to_numpy(v) for v in x])
    return np.asarray(x)


def _items(x: Any) -> list[tuple[str, Any]] | None:
    """The named parts of a composite value (named tuple, dict, list of tensors), else None."""
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return [(f".{k}", v) for k, v in zip(x._fields, x)]
    if isinstance(x, Mapping):
        return [(f"[{k!r}]", v) for k, v in x.items()]
    if isinstance(x, (list, tuple)) and any(hasattr(v, "shape") for v in x):
        try:  # a list of equal-shaped arrays is one array ...
            if np.asarray([_to_numpy(v) for v in x]).dtype != object:
                return None
        except ValueError:  # ... a ragged one (one tensor per FPN level) is checked item by item
            pass
        return [(f"[{i}]", v) for i, v in enumerate(x)]
    return None


def _dtype_problem(g: np.dtype, e: np.dtype, strict: bool) -> tuple[str, str]:
    """``(failure, note)`` about the dtypes; either may be empty."""
    if g == e:
        return "", ""
    kg, ke = _KIND_NAMES.get(g.kind, g.kind), _KIND_NAMES.get(e.kind, e.kind)
    said = f"got {g} ({kg}), expected {e} ({ke})"
    wrong_kind = (
        (ke == "bool" and kg != "bool")
        or (ke == "integer" and kg not in ("integer",))
        or (ke in ("float", "complex") and kg == "bool")
        or (ke == "float" and kg == "complex")
    )
    if wrong_kind or kg not in ("bool", "integer", "float", "complex"):
        return f"dtype mismatch: {said}", ""
    if strict:
        return f"dtype mismatch (strict): {said}", ""
    return "", f"note: dtype {g}, expected {e}"


def _fmt_index(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def _fmt_value(v: Any) -> str:
    return str(v.item() if isinstance(v, np.bool_) else v)


def _fmt_diff(d: float) -> str:
    if d == 0:
        return "0"
    return f"{d:.3g}"


# --------------------------------------------------------------------------------------------
# Comparison of two arrays
# --------------------------------------------------------------------------------------------


def _compare(
    g: np.ndarray, e: np.ndarray, atol: float, rtol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Element-wise ``(exact, close, abs_diff)`` for equal-shaped numeric arrays."""
    both_integral = g.dtype.kind in "biu" and e.dtype.kind in "biu"
    if both_integral:
        exact = g == e
        close = exact
        diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
        return exact, close, diff
    wide = np.complex128 if "c" in (g.dtype.kind, e.dtype.kind) else np.float64
    gw, ew = g.astype(wide), e.astype(wide)
    both_nan = np.isnan(gw) & np.isnan(ew)
    with np.errstate(invalid="ignore"):
        exact = (gw == ew) | both_nan
        close = np.isclose(gw, ew, rtol=rtol, atol=atol, equal_nan=True)
        diff = np.abs(gw - ew).astype(np.float64)
    diff = np.where(exact, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)  # one side NaN, or inf against -inf
    return exact, close, diff


def _check_one(
    name: str, got: Any, expected: Any, atol: float, rtol: float, strict_dtype: bool, width: int
) -> CheckResult:
    head = f"{name:<{width}}"
    try:
        g, e = _to_numpy(got), _to_numpy(expected)
    except (TypeError, ValueError) as err:
        line = f"{head} | ✗ cannot compare: {err}"
        return CheckResult(name, False, False, math.nan, None, line, problem=str(err))

    if g.shape != e.shape:
        problem = f"shape mismatch: got {tuple(g.shape)}, expected {tuple(e.shape)}"
        line = f"{head} | ✗ {problem}"
        return CheckResult(name, False, False, math.nan, None, line, problem=problem)
    problem, note = _dtype_problem(g.dtype, e.dtype, strict_dtype)
    if not (hasattr(got, "dtype") and hasattr(expected, "dtype")):
        note = ""  # a Python scalar or list has no dtype of its own to speak of
    if g.dtype.kind not in "biufc" or e.dtype.kind not in "biufc":
        problem = problem or f"dtype mismatch: got {g.dtype}, expected {e.dtype}"
        line = f"{head} | ✗ {problem}"
        return CheckResult(name, False, False, math.nan, None, line, problem=problem)

    exact_el, close_el, diff = _compare(g, e, atol, rtol)
    n = exact_el.size
    exact = bool(exact_el.all())
    close = bool(close_el.all())
    max_diff = float(diff.max()) if n else 0.0

    first = None
    if not exact:
        failing = ~close_el if not close else ~exact_el
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(failing.reshape(-1))), g.shape))
        first = (idx, g[idx].item(), e[idx].item())
    if problem:
        exact = close = False
        status = f"✗ {problem}"
    elif exact:
        status = f"✓ exact ({n} value{'' if n == 1 else 's'})"
    elif close:  # a correct answer up to float rounding: say so, without alarming counts
        status = (f"✓ close (float rounding: max diff {_fmt_diff(max_diff)}, "
                  f"within {atol:g} + {rtol:g}·|expected|)")
    else:
        integral = g.dtype.kind in "biu" and e.dtype.kind in "biu"
        verb = "differ" if integral else "not close"
        n_bad = int((~close_el).sum())
        status = (f"✗ {n_bad}/{n} {verb}, first at {_fmt_index(first[0])}: "
                  f"got {_fmt_value(g[first[0]])}, expected {_fmt_value(e[first[0]])} "
                  f"| max diff {_fmt_diff(max_diff)}")
    line = f"{head} | {status}" + (f" | {note}" if note else "")
    return CheckResult(name, exact, close, max_diff, first, line, problem=problem)


def _check_tree(
    name: str, got: Any, expected: Any, atol: float, rtol: float, strict_dtype: bool, width: int
) -> list[CheckResult]:
    parts = _items(expected)
    if parts is None:
        return [_check_one(name, got, expected, atol, rtol, strict_dtype, width)]
    got_parts = _items(got)
    if got_parts is None:
        problem = f"structure mismatch: got {type(got).__name__}, expected {type(expected).__name__}"
        line = f"{name:<{width}} | ✗ {problem}"
        return [CheckResult(name, False, False, math.nan, None, line, problem=problem)]
    got_by_key = dict(got_parts)
    width = max([width] + [len(name + key) for key, _ in parts])  # align the items' lines
    results = []
    for key, value in parts:
        if key not in got_by_key:
            sub = name + key
            problem = f"missing: {type(got).__name__} has no {key}"
            line = f"{sub:<{width}} | ✗ {problem}"
            results.append(CheckResult(sub, False, False, math.nan, None, line, problem=problem))
            continue
        results += _check_tree(name + key, got_by_key[key], value, atol, rtol, strict_dtype, width)
    extra = [k for k, _ in got_parts if k not in dict(parts)]
    if extra:
        problem = f"unexpected items: {', '.join(extra)}"
        line = f"{name:<{width}} | ✗ {problem}"
        results.append(CheckResult(name, False, False, math.nan, None, line, problem=problem))
    return results


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


def check(
    name: str,
    got: Any,
    expected: Any,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    raise_on_fail: bool = True,
    strict_dtype: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare your answer ``got`` with the reference ``expected``; print one line per array.

    Args:
        name: what is checked, printed first (``"iou"``, ``"gt_index"``).
        got: your answer: tensor, array, scalar, (nested) list, or a named tuple / dict / list
            of those.
        expected: the reference answer, same structure.
        atol, rtol: float tolerance, ``|got - expected| <= atol + rtol * |expected|``.
            Ignored for bool and integer values, which must be equal.
        raise_on_fail: raise ``AssertionError`` (with the printed line) when not close.
        strict_dtype: also fail on a dtype of the right kind but another width.
        verbose: print the line(s).

    Returns:
        A :class:`CheckResult` (truthy when close). For a named tuple / dict / list it sums up its
        items: exact / close when every item is, the largest max diff, the first failing item.

    Raises:
        AssertionError: when ``raise_on_fail`` and the answer is not close; the message is the
            printed line of every failing item, and names the first failing index.
    """
    width = max(12, len(name))
    results = _check_tree(name, got, expected, atol, rtol, strict_dtype, width)
    if verbose:
        for r in results:
            print(r.message)
    if len(results) == 1:
        result = results[0]
        if result.name != name:  # a composite with a single item: keep the item's name
            result = CheckResult(
                name,
                result.exact,
                result.close,
                result.max_abs_diff,
                result.first_failure,
                result.message,
                result.problem,
            )
    else:
        diffs = [r.max_abs_diff for r in results]
        known = [d for d in diffs if not math.isnan(d)]
        failing = [r for r in results if not r.exact]
        first = next((r for r in results if not r.close), failing[0] if failing else None)
        result = CheckResult(
            name=name,
            exact=all(r.exact for r in results),
            close=all(r.close for r in results),
            max_abs_diff=(max(known) if len(known) == len(diffs) and known else math.nan) if results else 0.0,
            first_failure=first.first_failure if first is not None else None,
            message="\n".join(r.message for r in results),
            problem=first.problem if first is not None else "",
        )
    if raise_on_fail and not result.close:
        raise AssertionError("\n".join(r.message for r in results if not r.close))
    return result


# --------------------------------------------------------------------------------------------
# Boundary cases: run the learner's function on the inputs where wrong answers show
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One input to an exercise function, and what the reference returns for it.

    Attributes:
        name: the rule this case tests, said as a sentence the learner can act on
            ("IoU exactly 0.7 is positive (>=, not >)").
        args: positional arguments for the function (copied before each call, so a function that
            changes its inputs in place cannot spoil the next case).
        expected: the reference's answer.
        kwargs: keyword arguments for the function.
        atol, rtol: float tolerance for this case (None: the ``check_cases`` defaults).
    """

    name: str
    args: tuple
    expected: Any
    kwargs: dict = field(default_factory=dict)
    atol: float | None = None
    rtol: float | None = None


def check_cases(
    name: str,
    fn: Callable[..., Any],
    cases: Sequence[Case],
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    raise_on_fail: bool = True,
    strict_dtype: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Run ``fn`` on every case and compare with the case's expected answer; one line per case.

    Args:
        name: the exercise's name, printed first.
        fn: the learner's function.
        cases: :class:`Case` s built by the lesson's module (each names the boundary it tests).
        atol, rtol, strict_dtype: as in :func:`check`, unless a case sets its own tolerance.
        raise_on_fail: raise ``AssertionError`` naming every failing case when any fails.
        verbose: print the lines.

    Returns:
        A :class:`CheckResult`: exact / close when every case is, the largest max diff, the first
        failing case's first failure; ``problem`` names the first failing case.

    An exception raised by ``fn`` (``NotImplementedError`` in a learner copy, an ``IndexError`` at an
    edge) propagates unchanged after a line naming the case it happened in.
    """
    if not cases:
        raise ValueError("cases: expected at least one Case")
    lines = [f"{name}: {len(cases)} case{'' if len(cases) == 1 else 's'}"]
    if verbose:
        print(lines[0])
    results = []
    for case in cases:
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            got = fn(*args, **kwargs)
        except Exception as err:
            line = f"  ✗ {case.name} -- raised {type(err).__name__}"
            if verbose:
                print(line)
            raise
        a = case.atol if case.atol is not None else atol
        r = case.rtol if case.rtol is not None else rtol
        parts = _check_tree(case.name, got, case.expected, a, r, strict_dtype, len(case.name))
        bad = [p for p in parts if not p.close]
        if not bad:
            mark = "✓"
            diffs = [p.max_abs_diff for p in parts if not math.isnan(p.max_abs_diff)]
            detail = "" if all(p.exact for p in parts) else f" (float rounding, max diff {_fmt_diff(max(diffs))})"
            line = f"  {mark} {case.name}{detail}"
        else:
            why = bad[0].message.split(" | ", 1)[1] if " | " in bad[0].message else bad[0].message
            field_name = bad[0].name[len(case.name):]
            line = f"  ✗ {case.name} -- {field_name + ': ' if field_name else ''}{why.lstrip('✗ ')}"
        if verbose:
            print(line)
        lines.append(line)
        diffs = [p.max_abs_diff for p in parts]
        first_bad = bad[0] if bad else next((p for p in parts if not p.exact), None)
        results.append(CheckResult(
            name=case.name,
            exact=all(p.exact for p in parts),
            close=not bad,
            max_abs_diff=max(diffs) if diffs and not any(math.isnan(d) for d in diffs) else math.nan,
            first_failure=first_bad.first_failure if first_bad is not None else None,
            message=line,
            problem=bad[0].problem if bad else "",
        ))
    failing = [r for r in results if not r.close]
    summary = CheckResult(
        name=name,
        exact=all(r.exact for r in results),
        close=not failing,
        max_abs_diff=max((r.max_abs_diff for r in results), default=0.0),
        first_failure=failing[0].first_failure if failing else None,
        message="\n".join(lines),
        problem=f"case {failing[0].name!r}" if failing else "",
    )
    if raise_on_fail and failing:
        raise AssertionError(f"{name}: {len(failing)} of {len(results)} cases fail\n"
                             + "\n".join(r.message for r in failing))
    return summary
