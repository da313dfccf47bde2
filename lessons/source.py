"""The algorithm on the page: show a reference function's source in a notebook, read from ``lessons``.

A notebook should let a learner read every line of the algorithm where they study it, while
``lessons`` stays the single definition that the tests check. ``show_source(fn)`` reads the
function's current source with :mod:`inspect` and displays it as a syntax-highlighted block
(Markdown with a fenced ``python`` block, which JupyterLab, nbconvert and the book all highlight)
under a line that says where it lives::

    from lessons.source import show_source
    show_source(ref.greedy_nms)                    # the whole function, without its docstring
    show_source(ref.ProposalCreator.__call__, docstring=True)

Several objects are shown one after another in one block. Nothing is copied into the notebook, so
the page can never drift from the code the tests run.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SourceView", "show_source", "source_lines"]


def _where(obj: Any) -> tuple[str, int]:
    """``(path relative to the package's parent, first line)`` of an object's definition."""
    path = Path(inspect.getsourcefile(obj) or "?")
    _, first = inspect.getsourcelines(obj)
    parts = path.parts
    for root in ("lessons", "exportable"):
        if root in parts:
            i = len(parts) - 1 - parts[::-1].index(root)
            return "/".join(parts[i:]), first
    return path.name, first


def source_lines(obj: Any, *, docstring: bool = False) -> list[str]:
    """The source lines of a function, method or class, dedented; without its docstring by default.

    The docstring of the object itself is dropped (``docstring=False``): the notebook's text explains
    what the code does, and the page stays short. Comments, including step numbers, are kept.
    """
    lines, _ = inspect.getsourcelines(obj)
    text = textwrap.dedent("".join(lines))
    if docstring:
        return text.rstrip("\n").splitlines()
    tree = ast.parse(text)
    node = tree.body[0]
    body = getattr(node, "body", [])
    out = text.rstrip("\n").splitlines()
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        start, end = body[0].lineno - 1, body[0].end_lineno  # 0-based start, exclusive end
        out = out[:start] + out[end:]
    return out


@dataclass
class SourceView:
    """Source code to display: shows itself as a highlighted Markdown code block in a notebook."""

    header: str
    code: str

    @property
    def n_lines(self) -> int:
        """Lines of code shown (blank lines included)."""
        return len(self.code.splitlines())

    def _repr_markdown_(self) -> str:
        return f"{self.header}\n\n```python\n{self.code}\n```\n"

    def __str__(self) -> str:
        return f"# {self.header}\n{self.code}"

    def __repr__(self) -> str:
        return str(self)


def show_source(*objects: Any, docstring: bool = False) -> SourceView:
    """The source of ``objects`` (functions, methods, classes) as one displayable block.

    Args:
        objects: what to show, in order; each is read from its module with :mod:`inspect`.
        docstring: keep each object's docstring (default: drop it).

    Returns:
        A :class:`SourceView`; as a cell's value it renders as a highlighted code block headed by
        where each object lives (``lessons/proposals_and_nms.py``, line numbers).
    """
    if not objects:
        raise ValueError("objects: expected at least one function, method or class")
    where, blocks = [], []
    for obj in objects:
        path, first = _where(obj)
        lines = source_lines(obj, docstring=docstring)
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
        where.append(f"`{name}` ({path}, line {first})")
        blocks.append("\n".join(lines))
    header = "From " + "; ".join(where) + ":"
    return SourceView(header=header, code="\n\n".join(blocks))
