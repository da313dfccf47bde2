"""``make book``: the notebooks as a static site, opened in headless Chromium.

Building the whole book executes every notebook (minutes); ``make test`` already executes each one
with nbmake. This test builds the book from two notebooks (00 and 01, about a minute on 2 cores),
then opens the index and one notebook page in headless Chromium over the DevTools protocol: the
table of contents lists the pages in learning-path order, every figure has loaded (decoded, with a
width), the exercise solutions are folded behind a click, and a screenshot of each page is written
to ``build/book-test/``.

Chromium is Debian's ``chromium`` package: installed here with apt-get when missing and possible
(root, apt-get present); otherwise the browser half of the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lessons.book import SOLUTION_TAG, build_book, stage_sources

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SHOTS = ROOT / "build" / "book-test"
BOOK_PAGES = ["00_tour", "01_anchors_and_boxes"]


def test_staging_tags_solutions_and_finds_notebooks_by_glob(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    cell = {"cell_type": "code", "metadata": {}, "source": ["x = 1\n", "# BEGIN SOLUTION\n", "y = 2\n",
                                                            "# END SOLUTION\n"], "outputs": [], "execution_count": None}
    plain = {"cell_type": "code", "metadata": {}, "source": "z = 3", "outputs": [], "execution_count": None}
    for name in ("12_later", "00_first", "10_arena"):  # a notebook added later joins without any change
        nb = {"cells": [dict(cell), dict(plain)], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        (src / f"{name}.ipynb").write_text(json.dumps(nb))
    names = stage_sources(src, tmp_path / "stage")
    assert names == ["00_first", "10_arena", "12_later"]  # learning-path order: by file name
    index = (tmp_path / "stage" / "index.md").read_text()
    assert index.index("00_first") < index.index("10_arena") < index.index("12_later")
    staged = json.loads((tmp_path / "stage" / "10_arena.ipynb").read_text())
    assert staged["cells"][0]["metadata"]["tags"] == [SOLUTION_TAG] and "tags" not in staged["cells"][1]["metadata"]
    assert 'nb_execution_mode = "force"' in (tmp_path / "stage" / "conf.py").read_text()
    assert stage_sources(src, tmp_path / "stage2", only=["10"]) == ["10_arena"]
    with pytest.raises(FileNotFoundError, match="only"):
        stage_sources(src, tmp_path / "stage3", only=["99_missing"])


# --------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol (tornado's websocket client; jupyterlab brings tornado)
# --------------------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium is needed to open the book: install Debian's `chromium` package "
                    "(apt-get install chromium); not root or no apt-get here, so the test cannot install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-qq", "chromium"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            break
        if shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip("headless Chromium is needed to open the book, and `apt-get install chromium` failed here "
                "(no network or no package); install Debian's `chromium` package to run this test")


class Browser:
    """One headless Chromium page driven over the DevTools protocol."""

    def __init__(self, executable: str) -> None:
        self.executable = executable

    async def __aenter__(self) -> Browser:
        from tornado.httpclient import AsyncHTTPClient
        from tornado.websocket import websocket_connect

        self.profile = tempfile.mkdtemp(prefix="book-chromium-")
        self.proc = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--window-size=1280,1000",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("chromium did not open its DevTools port within 30 s")
        port = port_file.read_text().split()[0]
        targets = json.loads((await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/json/list")).body)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 << 20)
        self.next_id = 0
        await self.call("Page.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        mine = self.next_id
        await self.ws.write_message(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), timeout=60)
            if raw is None:
                raise RuntimeError("chromium closed the DevTools connection")
            msg = json.loads(raw)
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        for _ in range(300):
            if await self.evaluate("document.readyState") == "complete":
                # wait for every <img> to finish (loaded or failed), however it is loaded
                await self.evaluate("Promise.all(Array.from(document.images).map(i => i.complete ? 0 : "
                                    "new Promise(r => { i.onload = r; i.onerror = r; })))")
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{url} did not finish loading within 30 s")

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    pytest.importorskip("myst_nb", reason="the book needs the `book` extra (pip install -e '.[book]')")
    pytest.importorskip("sphinx_book_theme", reason="the book needs the `book` extra (pip install -e '.[book]')")
    out = tmp_path_factory.mktemp("book")
    return build_book(NOTEBOOKS, out, only=BOOK_PAGES, jobs=2)


@pytest.mark.slow
def test_book_builds_and_opens_in_chromium(book):
    assert book.name == "index.html" and book.exists()
    for name in BOOK_PAGES:
        assert (book.parent / f"{name}.html").exists()
    chromium = _chromium()

    async def visit() -> tuple[list, list, list, int]:
        async with Browser(chromium) as browser:
            await browser.open(book.as_uri())
            toc = await browser.evaluate(
                "Array.from(document.querySelectorAll('.toctree-wrapper a.reference.internal'))"
                ".map(a => a.getAttribute('href'))")
            index_png = await browser.screenshot(SHOTS / "index.png")
            await browser.open((book.parent / f"{BOOK_PAGES[0]}.html").as_uri())
            images = await browser.evaluate(
                "Array.from(document.images).filter(i => i.src.includes('_images/'))"
                ".map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight])")
            folded = await browser.evaluate(
                "Array.from(document.querySelectorAll('details.hide.above-input')).map(d => d.open)")
            await browser.evaluate("window.scrollTo(0, document.images.length ? "
                                   "document.images[document.images.length - 1].offsetTop - 200 : 0)")
            page_png = await browser.screenshot(SHOTS / f"{BOOK_PAGES[0]}.png")
            return toc, images, folded, min(len(index_png), len(page_png))

    toc, images, folded, smallest_png = asyncio.run(visit())
    assert toc[: len(BOOK_PAGES)] == [f"{name}.html" for name in BOOK_PAGES], toc  # the learning path's order
    assert len(images) >= 2, images  # the tour draws the photo with its gts and the toy assignment at least
    broken = [src for src, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert not broken, f"figures that did not load: {broken}"
    assert folded and not any(folded), "every exercise solution is folded (closed <details>) until clicked"
    assert smallest_png > 10_000  # a real page, not a blank one
