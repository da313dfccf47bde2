"""Notebooks 00-12 keep the shape of a course (issue 14): short prose, exercises with checkers, questions.

Read from the committed notebooks, without running them:

- the main path (everything before the first ``## Appendix`` heading) has at most 1,500 words of prose;
- tables comparing other libraries (mmdetection, PaddleDetection, ultralytics, YOLOX, torchvision) sit in
  the appendix, not on the main path;
- no ``assert`` in a code cell: regression checks live in ``tests/``, the notebook states its facts as
  sentences or shows them with ``check(...)``;
- every exercise's cell is one ``def`` (after its imports) whose body ends in one
  ``# BEGIN SOLUTION`` / ``# END SOLUTION`` block (so ``make exercises`` strips it), and the next
  code cell runs its checker; each notebook has the number of exercises ``EXERCISES`` gives it;
- the reference is on the page: at least one ``show_source(...)`` cell;
- a ``## Questions`` section with 2 to 4 numbered questions, one of which asks for a prediction before
  running a changed hyper-parameter;
- no citation of a document the learner does not have.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[01][0-9]_*.ipynb"))
# Exercises per notebook: the tour (00) has one, the arena (10) two, matching (12) one, every other three.
EXERCISES = {"00": 1, "01": 3, "02": 3, "03": 3, "04": 3, "05": 3, "06": 3, "07": 3, "08": 3, "09": 3,
             "10": 2, "11": 3, "12": 1}
PEERS = re.compile(r"mmdetection|mmdet|PaddleDetection|ultralytics|YOLOX|torchvision|detectron2", re.I)
WORD = re.compile(r"\w[\w'’.,:;×·-]*")


def _cells(path: Path) -> list[tuple[str, str]]:
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(path.read_text())["cells"]]


def main_path_prose(path: Path) -> tuple[list[str], list[str]]:
    """``(main path lines, appendix lines)`` of the markdown, fenced code blocks left out."""
    main: list[str] = []
    appendix: list[str] = []
    for kind, source in _cells(path):
        if kind != "markdown":
            continue
        for line in re.sub(r"```.*?```", "", source, flags=re.S).splitlines():
            if re.match(r"#+ .*Appendix", line):
                appendix.append(line)
            (appendix if appendix else main).append(line)
    return main, appendix


def test_the_course_is_all_there():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(13)] == list(EXERCISES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_main_path_is_at_most_1500_words_without_peer_tables(path):
    main, _ = main_path_prose(path)
    words = sum(len(WORD.findall(line)) for line in main)
    assert words <= 1500, f"{path.name}: {words} words of prose before the appendix"
    tables = [line for line in main if line.lstrip().startswith("|") and PEERS.search(line)]
    assert not tables, f"{path.name}: a table naming other libraries on the main path: {tables[0]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_regression_asserts_in_the_notebook(path):
    for kind, source in _cells(path):
        if kind == "code":
            asserts = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assert)]
            assert not asserts, f"{path.name}: assert in a cell: {source[:80]!r}"


@pytest.mark.parametrize(("path", "expected"), [(p, EXERCISES.get(p.name[:2])) for p in NOTEBOOKS],
                         ids=lambda v: v.name[:2] if isinstance(v, Path) else str(v))
def test_each_exercise_is_a_def_with_one_solution_block_then_its_checker(path, expected):
    cells = [(k, s) for k, s in _cells(path) if k == "code"]
    exercises = [i for i, (_, s) in enumerate(cells) if "# BEGIN SOLUTION" in s]
    assert len(exercises) == expected, (path.name, len(exercises), expected)
    for i in exercises:
        source = cells[i][1]
        body = [n for n in ast.parse(source).body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(body) == 1 and isinstance(body[0], ast.FunctionDef), source[:80]
        name = body[0].name
        assert source.count("# BEGIN SOLUTION") == source.count("# END SOLUTION") == 1, name
        assert source.rstrip().endswith("# END SOLUTION"), f"{name}: code after the solution in its cell"
        checker = cells[i + 1][1]
        assert re.search(rf"(check_cases\(\"{name}\", {name},|\b(\w+\.)?check_\w+\({name}\))", checker), (name, checker)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_the_reference_is_on_the_page(path):
    assert any(k == "code" and "show_source(" in s for k, s in _cells(path)), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_two_to_four_open_questions_one_predicting_a_hyper_parameter(path):
    main, _ = main_path_prose(path)
    text = "\n".join(main)
    assert "## Questions" in text, path.name
    section = re.split(r"\n#+ ", text.split("## Questions", 1)[1])[0]
    questions = re.split(r"\n(?=\d+\. )", "\n" + section.strip())
    questions = [q for q in questions if re.match(r"\s*\d+\. ", q)]
    assert 2 <= len(questions) <= 4, (path.name, len(questions))
    assert any(re.search(r"\bpredict", q, re.I) and re.search(r"`[^`]*=[^`]*`|from \S+ to \S+", q)
               for q in questions), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_citation_of_documents_the_learner_lacks(path):
    text = "\n".join(s for _, s in _cells(path))
    for phrase in (r"source document", r"\(00\d\)", r"note \(translated\)", r"figure \([ab]\)"):
        assert not re.search(phrase, text, re.I), (path.name, phrase)
