"""Learner copies: solutions replaced, cells still parse, and the copies raise where solutions were."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from lessons.exercises import PLACEHOLDER, learner_copy, strip_solutions, write_exercises

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_strip_keeps_indentation_and_surroundings():
    src = "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    y = x * 2\n    # END SOLUTION\n    return y\ncheck(f(2), 4)"
    new, n = strip_solutions(src)
    assert n == 1
    assert new == f"def f(x):\n    y = 1\n    {PLACEHOLDER}\n    return y\ncheck(f(2), 4)"


UNBALANCED = ["# BEGIN SOLUTION\nx = 1", "x = 1\n# END SOLUTION", "# BEGIN SOLUTION\n# BEGIN SOLUTION"]


@pytest.mark.parametrize("bad", UNBALANCED)
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(ValueError):
        strip_solutions(bad)


def _notebooks_with_exercises():
    out = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if "# BEGIN SOLUTION" in path.read_text():
            out.append(path)
    return out


def test_every_committed_notebook_has_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


@pytest.mark.parametrize("path", _notebooks_with_exercises(), ids=lambda p: p.name)
def test_learner_copy_raises_at_the_first_exercise(path, tmp_path):
    counts = write_exercises(NOTEBOOKS, tmp_path)
    assert counts[path.name] >= 1
    nb, n = learner_copy(json.loads(path.read_text()))
    assert "# BEGIN SOLUTION" not in json.dumps(nb) and n == counts[path.name]
    first = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and PLACEHOLDER in c["source"])
    node = nbformat.reads(json.dumps(nb), as_version=4)
    client = NotebookClient(node, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert "NotImplementedError" in str(err.value)
    ran = [i for i, c in enumerate(node.cells) if c.cell_type == "code" and c.get("outputs")]
    # it stopped at the first exercise: in the solution's own cell, or in the checker's cell right after it
    # (a solution cell that only defines a function raises when the checker first calls it)
    checker = next(i for i in range(first + 1, len(node.cells)) if node.cells[i].cell_type == "code")
    assert max(ran) in (first, checker)
    assert "NotImplementedError" in "".join(str(o) for o in node.cells[max(ran)].outputs)
