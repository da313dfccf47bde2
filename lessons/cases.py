"""Exercise checkers built from cases: each case names the rule it tests, at its boundary.

A checker runs the learner's function on a list of :class:`Case` s (a value exactly at a
threshold, tied scores, a cap with scarce and with plentiful positives, the photo) and compares
each answer with the reference through :func:`lessons.check.check`. It prints one line per
case::

    steps 7-8 | ok  best IoU exactly 0.4: ignored, not negative (IoU < 0.4 is negative)

and, at the first case that fails, raises ``AssertionError`` with the rule the case tests and
the checker's comparison (first differing element, max difference). Shapes: whatever the
exercise takes; the case holds the arguments and the reference answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lessons.check import check

__all__ = ["Case", "run_cases"]


@dataclass
class Case:
    """One input of an exercise and its reference answer.

    ``rule``: the sentence the learner reads when this case fails (what the boundary is).
    ``args`` / ``kwargs``: passed to the learner's function. ``expected``: the reference answer
    (a tensor, a tuple of tensors, ...). ``atol`` / ``rtol``: float tolerance (ignored for
    integer and bool answers, which must be equal).
    """

    rule: str
    args: tuple
    expected: Any
    kwargs: dict = field(default_factory=dict)
    atol: float = 1e-6
    rtol: float = 1e-5


def run_cases(name: str, fn: Callable[..., Any], cases: Sequence[Case]) -> None:
    """Run ``fn`` on every case; print one line per case; raise ``AssertionError`` at the first wrong answer."""
    for i, case in enumerate(cases, start=1):
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in case.args)  # a learner may write in place
        try:
            got = fn(*args, **case.kwargs)
        except NotImplementedError:
            raise
        except Exception as err:  # a crash on a boundary input is a wrong answer too
            raise AssertionError(f"{name}, case {i} ({case.rule}): your function raised {err!r}") from err
        result = check(name, got, case.expected, atol=case.atol, rtol=case.rtol, raise_on_fail=False, verbose=False)
        if not result.close:
            raise AssertionError(f"{name}, case {i} fails: {case.rule}\n{result.message}")
        how = "equal" if result.exact else f"within tolerance, max diff {result.max_abs_diff:.1e}"
        print(f"{name} | ok  {case.rule} ({how})")
