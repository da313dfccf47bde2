"""The course as a static web site: ``make book`` (``python -m lessons book``).

Sphinx with MyST-NB (the engine of Jupyter Book) and the Sphinx Book Theme build one HTML page per
notebook, executed top to bottom, with the figures inline and a table of contents in the order of
the learning path. Nothing here writes HTML: this module only stages the sources and calls Sphinx.

1. Every ``notebooks/*.ipynb`` (or the ``--only`` ones) is copied to ``<out>/src/``, found by glob,
   so a new notebook (``10_arena``, ``11_...``) joins the book without any change here. The file
   names sort in the order of the path (``00_`` ... ``12_``), and so does the table of contents.
2. A code cell that holds an exercise's solution (``# BEGIN SOLUTION``) gets the cell tag
   ``hide-input``: the page shows the checker's verdict, and the solution code only after a click
   ("Show code cell source").
3. ``conf.py`` and ``index.md`` (the landing page with the table of contents) are written next to
   them, and ``sphinx-build`` runs MyST-NB, which executes each notebook (``--no-execute`` renders
   them as they are) and writes ``<out>/html/index.html``.

The book is built, never committed (``build/`` is ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lessons.exercises import BEGIN

__all__ = ["SOLUTION_TAG", "build_book", "stage_sources", "tag_solutions"]

SOLUTION_TAG = "hide-input"  # MyST-NB folds such a cell's source behind a "Show code cell source" click

_CONF = '''\
# Written by `python -m lessons book`; do not edit (see lessons/book.py).
project = "assignlab"
author = "assignlab developers"
copyright = "assignlab developers"
extensions = ["myst_nb"]
html_theme = "sphinx_book_theme"
html_title = "assignlab: label assignment, step by step"
html_theme_options = {{"show_toc_level": 2, "use_download_button": True}}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
nb_execution_mode = "{mode}"
nb_execution_timeout = {timeout}
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
'''

_INDEX = """\
# assignlab: label assignment, step by step

A detector predicts a class and a box for every anchor (or point) on its feature maps. Training
first has to answer one question: *which anchor should learn which object?* These notebooks answer
it for Faster R-CNN's RPN and RoI head, RetinaNet, ATSS, SimOTA, TOOD and O2F, one picture and one
algorithm at a time. Each page is a notebook of the repository, executed; exercise solutions are
folded: click "Show code cell source" to read one after trying it yourself.

```{{toctree}}
:maxdepth: 1
:caption: The learning path

{entries}
```
"""


def tag_solutions(notebook: dict, tag: str = SOLUTION_TAG) -> int:
    """Add ``tag`` to every code cell holding a ``# BEGIN SOLUTION`` block; returns how many cells."""
    count = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if BEGIN in source:
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if tag not in tags:
                tags.append(tag)
            count += 1
    return count


def _select(src: Path, only: list[str] | None) -> list[Path]:
    paths = sorted(src.glob("*.ipynb"))
    if only:
        wanted = [name.removesuffix(".ipynb") for name in only]
        missing = [w for w in wanted if not any(p.stem == w or p.stem.startswith(w) for p in paths)]
        if missing:
            raise FileNotFoundError(f"only: no notebook named {missing} in {src}")
        paths = [p for p in paths if any(p.stem == w or p.stem.startswith(w) for w in wanted)]
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {src}")
    return paths


def stage_sources(src: Path, stage: Path, *, only: list[str] | None = None, execute: bool = True,
                  timeout: int = 600) -> list[str]:
    """Copy the notebooks (solutions tagged) and write ``conf.py`` and ``index.md`` into ``stage``.

    Returns the staged notebook names (without ``.ipynb``), in table-of-contents order.
    """
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    names = []
    for path in _select(src, only):
        nb = json.loads(path.read_text())
        tag_solutions(nb)
        (stage / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        names.append(path.stem)
    (stage / "conf.py").write_text(_CONF.format(mode="force" if execute else "off", timeout=int(timeout)))
    (stage / "index.md").write_text(_INDEX.format(entries="\n".join(names)))
    return names


def build_book(src: Path = Path("notebooks"), out: Path = Path("build/book"), *, only: list[str] | None = None,
               execute: bool = True, jobs: int | str = "auto", timeout: int = 600, quiet: bool = True) -> Path:
    """Stage the sources under ``out/src`` and build the HTML under ``out/html``; returns ``index.html``.

    Raises ``subprocess.CalledProcessError`` when Sphinx fails (a notebook cell that raises fails the
    build: ``nb_execution_raise_on_error``).
    """
    stage_sources(src, out / "src", only=only, execute=execute, timeout=timeout)
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-j", str(jobs), str(out / "src"), str(html),
           "-d", str(out / "doctrees")]
    if quiet:
        cmd.append("-q")
    env = dict(os.environ)
    # the kernels must import this checkout's `lessons` and `exportable`, as nbmake's do
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    subprocess.run(cmd, check=True, env=env)
    return html / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons book", description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="notebooks", help="folder of the notebooks (default notebooks)")
    parser.add_argument("--out", default="build/book", help="output folder (default build/book)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these notebooks (e.g. 00_tour 03)")
    parser.add_argument("--no-execute", action="store_true", help="render the notebooks as they are")
    parser.add_argument("--jobs", default="auto", help="parallel Sphinx workers (default auto)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per notebook cell (default 600)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    index = build_book(Path(args.src), Path(args.out), only=args.only, execute=not args.no_execute,
                       jobs=args.jobs, timeout=args.timeout)
    print(f"book: {index} ({time.perf_counter() - t0:.0f} s); open it in a browser")
    return 0
