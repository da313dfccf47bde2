"""Learner copies of the notebooks: every solution replaced by ``raise NotImplementedError``.

In the committed notebooks each exercise's solution sits in a code cell between a line
``# BEGIN SOLUTION`` and a line ``# END SOLUTION``, so CI runs and checks it. ``make exercises``
(``python -m lessons exercises``) writes copies under ``build/exercises/`` in which each such
block (markers included) becomes one ``raise NotImplementedError(...)`` line at the block's
indentation; the ``check(...)`` or ``check_cases(...)`` that follows then tells the learner how close
they are, case by case.

A learner copy that already exists is kept: it may hold the learner's work. ``--force`` overwrites.
``make lab`` starts JupyterLab at the repository root, so ``build/exercises/`` is in its file browser.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
_MARK = re.compile(r"^(\s*)# (BEGIN|END) SOLUTION\s*$")
PLACEHOLDER = 'raise NotImplementedError("Exercise: replace this line with your code")'


def strip_solutions(source: str) -> tuple[str, int]:
    """Replace every BEGIN/END SOLUTION block of a cell's source; returns (new source, blocks)."""
    out: list[str] = []
    blocks = 0
    inside: str | None = None
    for line in source.splitlines(keepends=True):
        m = _MARK.match(line.rstrip("\n"))
        if m and m.group(2) == "BEGIN":
            if inside is not None:
                raise ValueError("nested '# BEGIN SOLUTION'")
            inside = m.group(1)
            continue
        if m and m.group(2) == "END":
            if inside is None:
                raise ValueError("'# END SOLUTION' without a BEGIN")
            out.append(f"{inside}{PLACEHOLDER}\n")
            inside = None
            blocks += 1
            continue
        if inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError("'# BEGIN SOLUTION' without an END")
    text = "".join(out)
    return (text.rstrip("\n") if not source.endswith("\n") else text), blocks


def learner_copy(notebook: dict) -> tuple[dict, int]:
    """A copy of a notebook (nbformat JSON) without solutions or outputs, and the block count."""
    nb = json.loads(json.dumps(notebook))
    total = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new, blocks = strip_solutions(source)
        if blocks:
            ast.parse(new)  # the learner's cell must still be valid Python
            cell["source"] = new
            total += blocks
        cell["outputs"] = []
        cell["execution_count"] = None
    return nb, total


def write_exercises(src: Path, dst: Path, *, force: bool = False) -> dict[str, int]:
    """Write a learner copy of every ``src/*.ipynb`` under ``dst``; ``{name: exercise blocks}``.

    An existing copy is left alone (it may hold the learner's answers) unless ``force``; its name is
    still counted, so the result lists every notebook.
    """
    dst.mkdir(parents=True, exist_ok=True)
    counts = {}
    for path in sorted(src.glob("*.ipynb")):
        nb, n = learner_copy(json.loads(path.read_text()))
        target = dst / path.name
        if force or not target.exists():
            target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        counts[path.name] = n
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons exercises", description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="notebooks")
    parser.add_argument("--out", default="build/exercises")
    parser.add_argument("--force", action="store_true", help="overwrite existing learner copies")
    args = parser.parse_args(argv)
    existing = {p.name for p in Path(args.out).glob("*.ipynb")} if not args.force else set()
    counts = write_exercises(Path(args.src), Path(args.out), force=args.force)
    for name, n in counts.items():
        state = "kept (it exists; --force overwrites)" if name in existing else "written"
        print(f"{name}: {n} exercise(s) -> {Path(args.out) / name} {state}")
    return 0
