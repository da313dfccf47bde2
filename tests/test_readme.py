"""The README runs as written.

Its Python snippets and the `python -m exportable` lines of its deployment section are run in
document order in a fresh folder, with the set-up the README states (the project's virtual
environment: ``.venv/bin/python`` is the interpreter running these tests, which has the package and
onnxruntime). Python snippets share one namespace, as the README says they continue one another; a
``print(x)  # value`` line must print ``value``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from exportable import catalog

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
CLI = re.compile(r"^(?:\.venv/bin/)?python -m exportable\b(.*?)(?:\s+#.*)?$")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 3)
    return README[start:end if end > 0 else None]


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _check_prints(code: str, out: str) -> None:
    expected = [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+#\s*(.+)$", code, re.M)]
    if expected:
        printed = out.strip().splitlines()
        assert printed[-len(expected):] == expected, f"printed {printed}, the README says {expected}"


def test_readme_has_the_snippets_this_test_runs():
    deploy = _blocks(_section("Deploying"))
    assert sum(lang == "python" for lang, _ in deploy) >= 3
    cli = [line for lang, body in deploy if lang == "bash" for line in body.splitlines() if CLI.match(line)]
    assert len(cli) >= 5 and all(line.startswith(".venv/bin/python -m exportable ") for line in cli)


@pytest.mark.onnx
def test_readme_snippets_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    deploy = _section("Deploying")
    namespace: dict = {}
    ran = 0
    for lang, body in _blocks(README):
        in_deploy = body in deploy
        if lang == "bash" and in_deploy:
            for line in body.splitlines():
                m = CLI.match(line.strip())
                if not m:
                    continue
                proc = subprocess.run([sys.executable, "-m", "exportable", *shlex.split(m.group(1))], env=env,
                                      capture_output=True, text=True, timeout=900)
                assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
                ran += 1
        elif lang == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(body, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
            _check_prints(body, out.getvalue())
            ran += 1
    assert ran >= 9
    assert (tmp_path / "build" / "onnx" / "batched_nms.onnx").exists()
    assert (tmp_path / "build" / "triton" / "batched_nms" / "config.pbtxt").exists()


def test_catalog_table_lists_every_entry():
    table = _section("Deploying").split("| entry | inputs | outputs |")[1]
    named = set()
    for row in table.splitlines():
        m = re.match(r"\| `(\w+)`(?: \(`(_\w+)`\))?", row)
        if m:
            named.add(m.group(1))
            if m.group(2):
                named.add(m.group(1) + m.group(2))
    assert named == set(catalog.names())
