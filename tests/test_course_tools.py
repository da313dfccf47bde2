"""The learner's tools around the notebooks: `make lab`, `make exercises` and `lessons.source`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lessons.exercises import PLACEHOLDER, write_exercises
from lessons.source import show_source, source_lines

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# make exercises: learner copies are never overwritten by accident
# --------------------------------------------------------------------------------------------


def _notebook(source: str) -> dict:
    cell = {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}
    return {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_existing_learner_copies_are_kept_unless_forced(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "01_x.ipynb").write_text(json.dumps(_notebook("# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n")))
    assert write_exercises(src, dst) == {"01_x.ipynb": 1}
    assert PLACEHOLDER in json.loads((dst / "01_x.ipynb").read_text())["cells"][0]["source"]
    (dst / "01_x.ipynb").write_text(json.dumps(_notebook("y = 2  # my answer")))
    assert write_exercises(src, dst) == {"01_x.ipynb": 1}
    assert "my answer" in (dst / "01_x.ipynb").read_text()  # the learner's work survives a second run
    write_exercises(src, dst, force=True)
    assert "my answer" not in (dst / "01_x.ipynb").read_text()


# --------------------------------------------------------------------------------------------
# make lab: as root, at the repository root (notebooks/ and build/exercises/ in one file browser)
# --------------------------------------------------------------------------------------------


def _make_lab_command() -> str:
    out = subprocess.run(["make", "-n", "-o", ".venv/.assignlab-installed", "lab"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    out = out.replace("\\\n", " ")  # join the recipe's continued lines
    return next(line for line in out.splitlines() if "jupyter lab" in line)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX user ids")
def test_make_lab_passes_allow_root_only_for_root_and_starts_at_the_repo_root():
    line = _make_lab_command()
    assert ("--allow-root" in line) == (os.geteuid() == 0), line
    assert f'--ServerApp.root_dir="{ROOT}"' in line or f"--ServerApp.root_dir={ROOT}" in line, line
    assert "--LabApp.default_url=/lab/tree/notebooks/00_tour.ipynb" in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lab_starts_with_the_makefile_flags_and_lists_the_learner_copies(tmp_path):
    pytest.importorskip("jupyterlab", reason="the lab needs the `notebooks` extra")
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "00_tour.ipynb").write_text(json.dumps(_notebook("x = 1")))
    write_exercises(root / "notebooks", root / "build" / "exercises")
    flags = [f for f in _make_lab_command().split() if f.startswith("--")]
    flags = [f"--ServerApp.root_dir={root}" if f.startswith("--ServerApp.root_dir") else f for f in flags]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", *flags, "--no-browser", f"--port={port}",
                             "--ServerApp.token=lab-test", "--ServerApp.open_browser=False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listing = None
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/api/contents/build/exercises?token=lab-test", timeout=2) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, "jupyter lab did not answer within 60 s"
        assert [c["name"] for c in listing["content"]] == ["00_tour.ipynb"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token=lab-test", timeout=5) as r:
            assert r.url.endswith("/lab/tree/notebooks/00_tour.ipynb?token=lab-test") or "/lab" in r.url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------------------------
# lessons.source: the algorithm on the page, read from lessons
# --------------------------------------------------------------------------------------------


def _documented(x, y=2):
    """A docstring that the page leaves out.

    Over two lines.
    """
    # 1. add
    return x + y


def test_show_source_drops_the_docstring_and_keeps_the_step_comments():
    lines = source_lines(_documented)
    assert lines == ["def _documented(x, y=2):", "    # 1. add", "    return x + y"]
    assert any("docstring" in line for line in source_lines(_documented, docstring=True))
    view = show_source(_documented)
    md = view._repr_markdown_()
    assert md.startswith("From `_documented` (") and "test_course_tools.py, line" in md
    assert "```python\ndef _documented(x, y=2):\n    # 1. add\n    return x + y\n```" in md
    assert view.n_lines == 3
    with pytest.raises(ValueError, match="objects"):
        show_source()


def test_show_source_of_a_method_names_its_module_under_lessons():
    from lessons.proposals_and_nms import ProposalCreator, greedy_nms

    view = show_source(greedy_nms, ProposalCreator.__call__)
    assert "`greedy_nms` (lessons/proposals_and_nms.py, line" in view.header
    assert "`ProposalCreator.__call__` (lessons/proposals_and_nms.py" in view.header
    assert "def __call__(self" in view.code and "# 5. NMS" in view.code
