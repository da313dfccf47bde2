"""lessons.check: the exercise checker."""

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch

from lessons.check import CheckResult, check


def test_exact_match(capsys):
    r = check("iou", torch.tensor([0.5, 0.25]), torch.tensor([0.5, 0.25]))
    out = capsys.readouterr().out
    assert isinstance(r, CheckResult) and r.exact and r.close and bool(r)
    assert r.max_abs_diff == 0.0 and r.first_failure is None
    assert out.count("\n") == 1
    assert out.startswith("iou") and "✓ exact (2 values)" in out and "✗" not in out


def test_close_but_not_exact_is_a_calm_pass(capsys):
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = expected.clone()
    got[2] += 2e-7 * 3
    r = check("areas", got, expected)
    out = capsys.readouterr().out
    assert not r.exact and r.close
    assert "✓ close (float rounding" in out
    # a correct answer never reads as a failure: no "exact: False", no "1/4 differ", no cross
    assert "False" not in out and "differ" not in out and "✗" not in out
    assert r.first_failure[0] == (2,)  # still recorded for whoever asks
    assert 0 < r.max_abs_diff < 1e-5


def test_failure_raises_with_first_failing_index(capsys):
    got = torch.tensor([[0.1, 0.2], [0.3, 0.9]])
    expected = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(AssertionError, match=r"first at \[1, 1\]: got 0\.9, expected 0\.4"):
        check("cost", got, expected)
    out = capsys.readouterr().out
    assert "✗ 1/4 not close" in out and "max diff 0.5" in out


def test_failure_without_raising_returns_the_case():
    r = check("x", [1.0, 5.0, 7.0], [1.0, 2.0, 3.0], raise_on_fail=False, verbose=False)
    assert not r and not r.exact and not r.close
    assert r.first_failure == ((1,), 5.0, 2.0)  # the first one, not the largest
    assert r.max_abs_diff == 4.0
    assert "2/3 not close, first at [1]" in r.message


def test_first_failure_prefers_not_close_over_inexact():
    expected = np.array([1.0, 1.0, 1.0])
    got = np.array([1.0 + 1e-9, 1.0, 2.0])
    r = check("v", got, expected, raise_on_fail=False, verbose=False)
    assert r.first_failure[0] == (2,)


def test_shape_mismatch_is_a_named_failure(capsys):
    with pytest.raises(AssertionError, match=r"shape mismatch: got \(3,\), expected \(4,\)"):
        check("labels", torch.zeros(3), torch.zeros(4))
    assert "shape mismatch" in capsys.readouterr().out
    r = check("b", torch.zeros(2, 3), torch.zeros(3, 2), raise_on_fail=False, verbose=False)
    assert r.problem.startswith("shape mismatch") and math.isnan(r.max_abs_diff)


def test_integers_and_bools_compare_exactly():
    with pytest.raises(AssertionError, match=r"1/3 differ, first at \[1\]: got 2, expected 3"):
        check("gt_index", torch.tensor([0, 2, -1]), torch.tensor([0, 3, -1]), atol=10.0, verbose=False)
    with pytest.raises(AssertionError, match=r"first at \[0\]: got False, expected True"):
        check("mask", torch.tensor([False, True]), torch.tensor([True, True]), verbose=False)
    assert check("mask", np.array([True, False]), torch.tensor([True, False]), verbose=False).exact


def test_wrong_kind_of_dtype_fails_even_with_equal_values(capsys):
    with pytest.raises(AssertionError, match="dtype mismatch: got float32 .float., expected int64 .integer."):
        check("labels", torch.tensor([1.0, 2.0]), torch.tensor([1, 2]))
    with pytest.raises(AssertionError, match="dtype mismatch"):
        check("mask", torch.tensor([1, 0]), torch.tensor([True, False]))
    capsys.readouterr()


def test_width_of_dtype_is_only_noted_unless_strict(capsys):
    r = check("iou", torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.5]))
    assert r.exact and "note: dtype float64, expected float32" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="strict"):
        check("iou", torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.5]), strict_dtype=True)
    assert check("n", torch.tensor([3], dtype=torch.int32), torch.tensor([3]), verbose=False).exact


def test_accepts_tensors_arrays_scalars_and_lists():
    assert check("scalar", 3, torch.tensor(3), verbose=False).exact
    assert check("float", 0.5, np.float32(0.5), verbose=False).exact
    assert check("list", [[1, 2], [3, 4]], np.array([[1, 2], [3, 4]]), verbose=False).exact
    assert check("grad", torch.ones(2, requires_grad=True) * 2, [2.0, 2.0], verbose=False).exact
    assert check("half", torch.tensor([0.5], dtype=torch.bfloat16), torch.tensor([0.5]), verbose=False).close
    assert check("tensors", [torch.tensor(1.0), torch.tensor(2.0)], [1.0, 2.0], verbose=False).exact


def test_nan_equals_nan_in_place_only():
    nan = float("nan")
    assert check("n", [1.0, nan], [1.0, nan], verbose=False).exact
    r = check("n", [1.0, nan], [1.0, 2.0], raise_on_fail=False, verbose=False)
    assert not r.close and r.max_abs_diff == math.inf and r.first_failure[0] == (1,)
    assert check("inf", [math.inf], [math.inf], verbose=False).exact


def test_tolerances():
    assert check("a", [1.0 + 5e-7], [1.0], verbose=False).close  # within atol
    assert not check("a", [1.0 + 5e-5], [1.0], raise_on_fail=False, verbose=False).close
    assert check("a", [1.0 + 5e-5], [1.0], atol=1e-4, verbose=False).close
    assert check("r", [1000.005], [1000.0], verbose=False).close  # rtol * |expected| = 0.01
    assert check("empty", torch.zeros(0, 4), torch.zeros(0, 4), verbose=False).exact


class Result(NamedTuple):
    gt_index: torch.Tensor
    overlaps: torch.Tensor


def test_named_tuples_are_checked_field_by_field(capsys):
    ref = Result(torch.tensor([0, -1, 1]), torch.tensor([0.7, 0.1, 0.6]))
    assert check("assign", Result(ref.gt_index.clone(), ref.overlaps.clone()), ref).exact
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["assign.gt_index", "assign.overlaps"]

    bad = Result(torch.tensor([0, -1, 1]), torch.tensor([0.7, 0.2, 0.6]))
    with pytest.raises(AssertionError) as err:
        check("assign", bad, ref)
    assert "assign.overlaps" in str(err.value) and "first at [1]" in str(err.value)
    assert "assign.gt_index" not in str(err.value)
    r = check("assign", bad, ref, raise_on_fail=False, verbose=False)
    assert not r.close and r.first_failure[0] == (1,)


def test_dicts_and_ragged_lists():
    levels = [torch.zeros(6, 4), torch.zeros(2, 4)]  # one tensor per FPN level
    assert check("anchors", [t.clone() for t in levels], levels, verbose=False).exact
    with pytest.raises(AssertionError, match=r"anchors\[1\]"):
        check("anchors", [levels[0], torch.ones(2, 4)], levels, verbose=False)
    with pytest.raises(AssertionError, match="missing"):
        check("d", {"a": 1}, {"a": 1, "b": 2}, verbose=False)
    with pytest.raises(AssertionError, match="structure mismatch"):
        check("d", torch.zeros(2), {"a": 1}, verbose=False)


# --------------------------------------------------------------------------------------------
# check_cases: boundary cases
# --------------------------------------------------------------------------------------------


def _rule_cases():
    from lessons.check import Case

    return [
        Case("IoU exactly 0.7 is positive (>=, not >)", (torch.tensor([0.7, 0.2]),), torch.tensor([1, 0])),
        Case("IoU just below 0.7 is not", (torch.tensor([0.6999]),), torch.tensor([0])),
        Case("no input, no output", (torch.zeros(0),), torch.zeros(0, dtype=torch.int64)),
    ]


def test_check_cases_passes_a_correct_function_quietly(capsys):
    from lessons.check import check_cases

    r = check_cases("rule", lambda iou: (iou >= 0.7).long(), _rule_cases())
    out = capsys.readouterr().out.splitlines()
    assert r and r.exact and out[0] == "rule: 3 cases"
    assert all(line.startswith("  ✓ ") for line in out[1:]) and len(out) == 4


def test_check_cases_names_the_broken_boundary(capsys):
    from lessons.check import check_cases

    with pytest.raises(AssertionError, match=r"1 of 3 cases fail\n  ✗ IoU exactly 0.7 is positive"):
        check_cases("rule", lambda iou: (iou > 0.7).long(), _rule_cases())
    out = capsys.readouterr().out
    assert "✓ IoU just below 0.7 is not" in out and "first at [0]: got 0, expected 1" in out
    r = check_cases("rule", lambda iou: (iou > 0.7).long(), _rule_cases(), raise_on_fail=False, verbose=False)
    assert not r and r.problem == "case 'IoU exactly 0.7 is positive (>=, not >)'" and r.first_failure[0] == (0,)


def test_check_cases_copies_inputs_and_reports_exceptions(capsys):
    from lessons.check import Case, check_cases

    shared = torch.tensor([0.9])
    cases = [Case("first", (shared,), torch.tensor([1])), Case("second", (shared,), torch.tensor([1]))]

    def destructive(iou):
        out = (iou >= 0.7).long()
        iou.zero_()  # changes its input: must not affect the next case
        return out

    assert check_cases("d", destructive, cases, verbose=False)
    assert float(shared) == pytest.approx(0.9)

    def unfinished(iou):
        raise NotImplementedError("Exercise: replace this line with your code")

    with pytest.raises(NotImplementedError):
        check_cases("u", unfinished, cases)
    assert "✗ first -- raised NotImplementedError" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cases"):
        check_cases("none", unfinished, [])


def test_check_cases_structured_answers_and_tolerance():
    from lessons.check import Case, check_cases

    cases = [Case("pair", (1.0,), {"iou": torch.tensor([1.0]), "label": torch.tensor([2])}, atol=1e-3)]
    r = check_cases("t", lambda x: {"iou": torch.tensor([x + 1e-4]), "label": torch.tensor([2])}, cases, verbose=False)
    assert r.close and not r.exact and "✓ pair (float rounding" in r.message
    r = check_cases("t", lambda x: {"iou": torch.tensor([x]), "label": torch.tensor([3])}, cases,
                    raise_on_fail=False, verbose=False)
    assert not r and "✗ pair -- ['label']: 1/1 differ" in r.message
