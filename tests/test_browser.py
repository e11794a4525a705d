"""The web page in a real browser: Playwright drives Debian's headless Chromium against the
service running with uvicorn on 127.0.0.1 (a free port), with a fake microphone fed from a WAV.

Skipped when /usr/bin/chromium is missing, unless STLSER_REQUIRE_BROWSER=1 (CI), then it fails.
Playwright never downloads a browser here: it is always given `executable_path`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stlser import testing

pytestmark = pytest.mark.browser

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
CHROMIUM = Path(os.environ.get("STLSER_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("STLSER_REQUIRE_BROWSER") == "1"
LABELS = ["angry", "happy", "neutral", "sad"]
SCREENSHOT = Path("/tmp/stlser_page.png")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (STLSER_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def make_artefact(path: Path) -> Path:
    return testing.make_artefact(path, LABELS, jitter=False)


def tone(seconds: float, sr: int, freq: float = 200.0) -> np.ndarray:
    """Harmonic tone with a syllable-like amplitude modulation (3 Hz)."""
    return testing.tone(seconds, sr, freq, amp=0.3, harmonics=5, am_hz=3.0)


def long_clip(sr: int = 16_000, total: float = 20.0) -> np.ndarray:
    x = np.zeros(int(total * sr), np.float32)
    t0, k = 0.5, 0
    while t0 + 2.0 <= total:
        seg = tone(2.0, sr, freq=150.0 + 40 * k)
        x[int(t0 * sr) : int(t0 * sr) + seg.size] = seg
        t0, k = t0 + 3.5, k + 1
    return x


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("browser_audio")
    out = {
        "clip": d / "clip.wav",
        "long": d / "long.wav",
        "mic": d / "mic.wav",
        "bad": d / "bad.wav",
    }
    sf.write(out["clip"], tone(1.5, 16_000), 16_000, subtype="PCM_16")
    sf.write(out["long"], long_clip(), 16_000, subtype="PCM_16")
    sf.write(out["mic"], tone(3.0, 48_000, freq=180.0), 48_000, subtype="PCM_16")
    out["bad"].write_text("not audio at all\n" * 50)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service from a model artefact, served by uvicorn in a background thread."""
    from stlser.service import create_app

    model = make_artefact(tmp_path_factory.mktemp("browser_model") / "model.pt")
    yield from _serve(create_app(model, max_mb=5.0, max_seconds=60.0))


@pytest.fixture(scope="module")
def base_server():
    """The service with the shipped model (over functionals: speaker adaptation)."""
    from stlser.service import create_app

    yield from _serve(create_app("base", max_mb=5.0, max_seconds=60.0))


def _serve(app):
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser(files):
    if not CHROMIUM.exists():
        _unavailable(f"chromium not installed: apt-get install chromium ({CHROMIUM} missing)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright not installed: pip install playwright")
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={files['mic']}",
    ]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 900, "height": 900})
    ctx.grant_permissions(["microphone"], origin=server)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "/")
    pg.wait_for_selector("body[data-ready='true']", timeout=15_000)
    yield pg
    ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def read_bars(page) -> list[tuple[str, float, float, bool]]:
    """(label, probability from data-prob, percentage shown, is top) for every bar."""
    # (selectors, not wait_for_function: the page's CSP forbids eval, as it should)
    page.wait_for_selector(f"#bars .bar:nth-child({len(LABELS)})", timeout=30_000)
    rows = page.eval_on_selector_all(
        "#bars .bar",
        "els => els.map(e => [e.dataset.label, parseFloat(e.dataset.prob),"
        " parseFloat(e.querySelector('.bar-value').textContent), e.classList.contains('top')])",
    )
    return [(str(a), float(b), float(c), bool(d)) for a, b, c, d in rows]


def check_bars(page) -> list[tuple[str, float, float, bool]]:
    bars = read_bars(page)
    assert sorted(b[0] for b in bars) == LABELS
    shown = [b[2] for b in bars]
    assert abs(sum(shown) - 100.0) < 0.5, shown  # rounded to 0.1 %
    assert abs(sum(b[1] for b in bars) - 1.0) < 1e-4
    tops = [b for b in bars if b[3]]
    assert len(tops) == 1
    assert tops[0][1] == max(b[1] for b in bars)
    assert page.inner_text("#top-label") == tops[0][0]
    assert page.is_hidden("#error")
    return bars


# ---------------------------------------------------------------------------- tests
def test_upload_shows_probability_bars(page, files):
    page.set_input_files("#file", str(files["clip"]))
    with page.expect_response("**/predict") as resp:
        page.click("#predict")
    assert resp.value.status == 200
    api = resp.value.json()
    bars = check_bars(page)
    for label, prob, pct, _ in bars:
        assert prob == pytest.approx(api["probabilities"][label], abs=1e-6)
        assert pct == pytest.approx(100 * prob, abs=0.051)
    # the page says "unsure" exactly when the service does
    assert isinstance(api["unsure"], bool)
    assert page.locator("#unsure").count() == int(api["unsure"])
    # widths follow the probabilities
    widths = page.eval_on_selector_all("#bars .bar-fill", "els => els.map(e => e.style.width)")
    assert [float(w.rstrip("%")) for w in widths] == pytest.approx(
        [100 * b[1] for b in bars], abs=0.01
    )
    assert page.is_hidden("#timeline-card")  # 1.5 s clip: no timeline unless asked


def test_long_audio_shows_timeline(page, files):
    page.set_input_files("#file", str(files["long"]))
    with page.expect_response("**/segments", timeout=60_000) as seg_resp:
        page.click("#predict")
    segs = seg_resp.value.json()["segments"]
    assert segs, "no segments from the API"
    page.wait_for_selector("#timeline .segment", timeout=30_000)
    check_bars(page)
    shown = page.eval_on_selector_all(
        "#timeline .segment", "els => els.map(e => [e.dataset.label, e.style.backgroundColor])"
    )
    assert [s[0] for s in shown] == [s["label"] for s in segs]
    colour = {}
    for label, bg in shown:  # one colour per label
        assert bg, "segment without colour"
        assert colour.setdefault(label, bg) == bg
    assert len(set(colour.values())) == len(colour)
    assert page.is_visible("#timeline-card")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_record_from_fake_microphone(page):
    page.click("#record")
    page.wait_for_selector("#stop:not([disabled])")
    time.sleep(2.0)
    with page.expect_response("**/predict", timeout=30_000) as resp:
        page.click("#stop")
    assert resp.value.status == 200, resp.value.text()
    duration = resp.value.json()["duration"]
    # ~2 s recorded, encoded as WAV in the page. No upper bound: that would time the machine.
    assert duration > 1.0, duration
    check_bars(page)
    assert page.get_attribute("#playback", "src").startswith("blob:")
    assert page.is_enabled("#record") and page.is_disabled("#stop")


def test_api_error_is_shown(page, files):
    page.set_input_files("#file", str(files["clip"]))
    page.click("#predict")
    read_bars(page)
    page.set_input_files("#file", str(files["bad"]))
    with page.expect_response("**/predict") as resp:
        page.click("#predict")
    assert resp.value.status == 422
    page.wait_for_selector("#error:not([hidden])")
    assert "not readable as audio" in page.inner_text("#error")
    assert page.is_hidden("#result")  # the earlier result is not left beside the error


def test_same_speaker_adapts_after_the_minimum(browser, base_server, tmp_path):
    """With "same speaker" on, the page keeps a speaker token: the status counts the clips
    until the adaptation minimum and then says the answers are adapted; "New speaker" starts
    over."""
    ctx = browser.new_context(viewport={"width": 900, "height": 900})
    pg = ctx.new_page()
    pg.goto(base_server + "/")
    pg.wait_for_selector("body[data-ready='true']", timeout=15_000)
    assert pg.is_visible("#speaker-row")
    pg.check("#speaker-toggle")
    from stlser.adapt import MIN_CLIPS

    for i in range(MIN_CLIPS + 1):
        f = tmp_path / f"s{i}.wav"
        sf.write(f, testing.speechlike(2.5, 70 + i), 16_000, subtype="PCM_16")
        pg.set_input_files("#file", str(f))
        with pg.expect_response("**/predict?speaker=*") as resp:
            pg.click("#predict")
        assert resp.value.status == 200, resp.value.text()
        info = resp.value.json()["speaker"]
        assert info["clips"] == i + 1
        pg.wait_for_selector(f"#speaker-status[data-adapted='{str(info['adapted']).lower()}']")
        text = pg.inner_text("#speaker-status")
        assert info["adapted"] == (i + 1 >= MIN_CLIPS)  # 2.5 s a clip: the seconds suffice
        assert ("Adapted" in text) == info["adapted"], text
    pg.click("#speaker-reset")
    assert pg.inner_text("#speaker-status") == ""
    ctx.close()
