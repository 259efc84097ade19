"""`emoverse demo`: what the page computes (default run, needs Gradio) and the page itself driven by headless
Chromium (`-m browser`: needs the demo extra, Debian's chromium and playwright's Python package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from emoverse.analyze import load_module
from emoverse.data.demo_clip import FPS, demo_clip_frames, write_demo_clip
from tests.test_analyze import fit_briefly, tiny_whisper

pytest.importorskip("gradio", reason="the demo extra (pip install 'emoverse[demo]') is not installed")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_ENV = "EMOVERSE_DEMO_SCREENSHOT"
"""Where the browser test also saves its screenshot (docs/demo_page.png is taken this way)."""
CKPT_ENV = "EMOVERSE_DEMO_CKPT"
"""A checkpoint for the page to serve instead of the test's two-step fit (for the screenshot: a longer-trained one)."""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emoverse import make_demo_amt

    root = tmp_path_factory.mktemp("demo_page")
    make_demo_amt(root / "amt", seed=0, num_monologues=24, num_dialogues=4)
    fit_briefly("tiny", root / "amt", root / "tiny.ckpt")
    write_demo_clip(root / "joy.mp4", "joy", seed=0)
    return root


def test_the_page_answers_every_task_and_marks_the_peak_frame(work: Path) -> None:
    from emoverse.demo_page import DemoApp, build_page, shown_frames

    module = load_module(work / "tiny.ckpt")
    app = DemoApp(module, list(module.tasks))
    status, table, gallery, raw = app.analyze(str(work / "joy.mp4"), "I got the job.")
    _, peak = demo_clip_frames("joy", seed=0)
    assert status.startswith(f"Utterance (typed): I got the job.\n\nPeak frame (fer): {peak / FPS:.2f} s, the face ")
    assert [row.split(" ")[1] for row in table.split("\n")[2:]] == ["msa", "mer", "fer", "eri", "ecpe"]
    assert list(raw) == ["msa", "mer", "fer", "eri", "ecpe"]
    peaks = [caption for _, caption in gallery if "PEAK" in caption]
    assert len(peaks) == 1 and peaks[0].startswith(f"PEAK · {peak / FPS:.2f} s")
    assert sum("video" in caption for _, caption in gallery) == 4
    assert shown_frames(9, 4) == [1, 3, 5, 7] and shown_frames(3, 4) == [0, 1, 2]
    with pytest.raises(ValueError, match="no utterance"):
        app.analyze(str(work / "joy.mp4"), " ")
    build_page(app, [str(work / "joy.mp4")])  # builds without a server


def test_the_page_transcribes_when_no_utterance_is_typed(work: Path, tmp_path: Path) -> None:
    from emoverse.asr import Transcriber
    from emoverse.demo_page import DemoApp, build_page

    asr = Transcriber(str(tiny_whisper(tmp_path / "whisper")))
    app = DemoApp(load_module(work / "tiny.ckpt"), ["msa"], asr)
    heard = app.transcribe(str(work / "joy.mp4"))
    status, table, _, _ = app.analyze(str(work / "joy.mp4"), "")
    assert heard and status.startswith(f"Utterance (transcribed): {heard}\n") and table.count("\n") == 2
    with pytest.raises(ValueError, match="no clip"):
        app.transcribe(None)
    build_page(app)


def request_host(url: str) -> str:
    """The host a request goes to; a `blob:` URL (the uploaded clip in the page's memory) is its origin's, a `data:`
    URL goes nowhere."""
    if url.startswith("data:"):
        return "127.0.0.1"
    return urlparse(url.removeprefix("blob:")).hostname or url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_chromium_uploads_a_clip_and_reads_the_answers(work: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright's Python package is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    ckpt = os.environ.get(CKPT_ENV) or str(work / "tiny.ckpt")
    server = subprocess.Popen([sys.executable, "-m", "emoverse.cli", "demo", "--ckpt_path", ckpt,
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if "serving http://127.0.0.1" in line or server.poll() is not None:
                break
        assert server.poll() is None, f"emoverse demo exited: {server.stdout.read()}"
        hosts: set[str] = set()
        with sync_api.sync_playwright() as pw:
            # a fresh profile folder (playwright passes it as --user-data-dir)
            browser = pw.chromium.launch_persistent_context(tmp_path / "profile", executable_path=CHROMIUM,
                                                            headless=True, args=CHROMIUM_FLAGS,
                                                            viewport={"width": 1400, "height": 1000})
            page = browser.new_page()
            page.on("request", lambda request: hosts.add(request_host(request.url)))
            page.goto(url, wait_until="networkidle")
            page.locator("#clip input[type=file]").set_input_files(str(work / "joy.mp4"))
            page.locator("#clip video").wait_for(timeout=60_000)  # uploaded and shown
            page.locator("#utterance textarea").fill("I got the job.")
            page.locator("#analyse").click()
            table = page.locator("#answers table")
            table.wait_for(timeout=120_000)
            rows = [r.inner_text().split("\t") for r in table.locator("tbody tr").all()]
            assert [r[0].split()[0] for r in rows] == ["msa", "mer", "fer", "eri", "ecpe"]
            assert all(r[1].strip() for r in rows)  # every task shows an answer (or "(unreadable answer)")
            assert "Utterance (typed): I got the job." in page.locator("#status").inner_text()
            assert "Peak frame (fer): " in page.locator("#status").inner_text()
            assert "\nPEAK · " in page.locator("#frames").inner_text()  # one caption starts with PEAK
            shot = tmp_path / "demo_page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copy(shot, os.environ[SCREENSHOT_ENV])
            browser.close()
        assert hosts == {"127.0.0.1"}, f"the page requested other hosts: {hosts}"
    finally:
        server.terminate()
        server.wait(timeout=30)
