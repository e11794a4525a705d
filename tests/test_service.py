"""HTTP service: happy paths and every error path through FastAPI's TestClient.

The model is a real `model.pt` artefact with random weights (built once per module), so these
tests exercise the whole upload → decode → features → network → JSON path.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from stlser import testing
from stlser.testing import wav_bytes

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import stlser  # noqa: E402
from stlser.service import create_app  # noqa: E402
from stlser.service.uploads import ApiError, _read_body  # noqa: E402

LABELS = ["angry", "happy", "neutral", "sad"]
SR = 16_000


# ---------------------------------------------------------------------------- fixtures
def make_artefact(path: Path) -> Path:
    return testing.make_artefact(path, LABELS, jitter=False)


def tone(seconds: float, sr: int = SR, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """A voiced-like harmonic tone with a little noise, amplitude 0.3."""
    return testing.tone(seconds, sr, freq, amp=0.3, harmonics=5, noise=0.01, seed=seed)


def bursts(total: float = 20.0, sr: int = SR) -> np.ndarray:
    """~20 s: 2 s bursts of tone separated by 1.5 s of near silence."""
    x = np.zeros(int(total * sr), np.float32) + 1e-3 * np.random.default_rng(1).standard_normal(
        int(total * sr)
    ).astype(np.float32)
    t0, k = 0.5, 0
    while t0 + 2.0 <= total:
        seg = tone(2.0, sr, freq=150.0 + 40 * k, seed=k)
        x[int(t0 * sr) : int(t0 * sr) + seg.size] += seg
        t0 += 3.5
        k += 1
    return x


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_artefact(tmp_path_factory.mktemp("service_model") / "model.pt")


@pytest.fixture(scope="module")
def recognizer(model_path):
    from stlser.inference import Recognizer

    return Recognizer.load(model_path)


@pytest.fixture(scope="module")
def client(model_path) -> TestClient:
    """The app as `stlser serve` builds it: from the artefact path, with a 1 MB / 30 s limit."""
    with TestClient(
        create_app(model_path, max_mb=1.0, max_seconds=30.0), base_url="http://127.0.0.1"
    ) as c:
        yield c


@pytest.fixture(scope="module")
def clip() -> bytes:
    return wav_bytes(tone(1.5))


def assert_error(resp, status: int, *words: str) -> str:
    """The response is JSON {"error": str} with `status` and the message holds every word."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]
    return body["error"]


# ---------------------------------------------------------------------------- happy paths
def test_health_and_labels(client):
    h = client.get("/health")
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "ok"
    assert body["labels"] == LABELS
    assert body["version"] == stlser.__version__
    assert body["max_mb"] == 1.0 and body["max_seconds"] == 30.0
    assert client.get("/labels").json() == {"labels": LABELS}
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 404  # would load scripts from a CDN


def check_prediction(body: dict, duration: float) -> None:
    probs = body["probabilities"]
    assert list(probs) == LABELS or sorted(probs) == LABELS
    assert abs(sum(probs.values()) - 1.0) < 1e-4
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert body["label"] == max(probs, key=probs.get)
    assert body["duration"] == pytest.approx(duration, abs=0.02)


def test_predict_multipart_matches_recognizer(client, recognizer, clip):
    r = client.post("/predict", files={"file": ("clip.wav", clip, "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    check_prediction(body, 1.5)
    direct = recognizer.predict(clip)
    assert body["label"] == direct.label
    for k, p in direct.probabilities.items():
        assert body["probabilities"][k] == pytest.approx(p, abs=1e-5)


@pytest.mark.parametrize("ctype", ["audio/wav", "application/octet-stream", "text/plain", None])
def test_predict_raw_body_any_content_type(client, clip, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/predict", content=clip, headers=headers)
    assert r.status_code == 200, r.text
    check_prediction(r.json(), 1.5)
    ref = client.post("/predict", files={"file": ("x.wav", clip)}).json()
    assert r.json()["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-6)


def test_predict_other_format_and_rate(client):
    """FLAC at 44.1 kHz stereo is decoded too: content decides, not the name."""
    x = tone(1.0, sr=44_100)
    data = wav_bytes(np.stack([x, 0.5 * x], axis=1), sr=44_100, fmt="FLAC")
    r = client.post("/predict", files={"file": ("no_extension", data, "application/x-whatever")})
    assert r.status_code == 200, r.text
    check_prediction(r.json(), 1.0)


def test_segments_long_audio(client):
    x = bursts(20.0)
    r = client.post("/segments", files={"file": ("long.wav", wav_bytes(x))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration"] == pytest.approx(20.0, abs=0.01)
    segs = body["segments"]
    assert len(segs) >= 3
    prev_end = 0.0
    for s in segs:
        assert set(s) >= {"start", "end", "label", "probabilities"}
        assert 0.0 <= s["start"] < s["end"] <= 20.0 + 1e-3
        assert s["end"] - s["start"] <= 6.0 + 1e-3
        assert s["start"] >= prev_end - 1e-3  # ordered, not overlapping
        prev_end = s["end"]
        assert s["label"] in LABELS
        assert abs(sum(s["probabilities"].values()) - 1.0) < 1e-4
    # the 1.5 s gaps of near silence are not covered by one single segment from 0 to 20 s
    covered = sum(s["end"] - s["start"] for s in segs)
    assert covered < 19.5


def test_segments_raw_body_and_window(client):
    x = bursts(20.0)
    r = client.post(
        "/segments?max_window=2.5", content=wav_bytes(x), headers={"content-type": "audio/wav"}
    )
    assert r.status_code == 200, r.text
    assert all(s["end"] - s["start"] <= 2.5 + 1e-3 for s in r.json()["segments"])


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for el in (
        'id="file"',
        'id="predict"',
        'id="record"',
        'id="stop"',
        'id="bars"',
        'id="timeline"',
        'id="error"',
    ):
        assert el in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from outside
    for name, ctype in [
        ("app.js", "javascript"),
        ("style.css", "text/css"),
        ("recorder-worklet.js", "javascript"),
    ]:
        s = client.get(f"/static/{name}")
        assert s.status_code == 200 and ctype in s.headers["content-type"]
        assert "http://" not in s.text and "https://" not in s.text
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in r.headers["content-security-policy"]


# ---------------------------------------------------------------------------- error paths
def test_empty_body(client):
    assert_error(
        client.post("/predict", content=b"", headers={"content-type": "audio/wav"}), 400, "empty"
    )
    assert_error(client.post("/segments"), 400, "empty")
    assert_error(client.post("/predict", files={"file": ("a.wav", b"")}), 400, "empty")


def test_not_audio(client):
    text = b"this is a text file pretending to be a wav\n" * 20
    err = assert_error(
        client.post("/predict", files={"file": ("clip.wav", text, "audio/wav")}),
        422,
        "not readable as audio",
    )
    assert "clip.wav" not in err  # client names are not echoed back as server paths
    assert "BytesIO" not in err and "0x" not in err  # no Python internals in messages
    assert_error(
        client.post("/segments", content=text, headers={"content-type": "audio/wav"}),
        422,
        "not readable as audio",
    )


def test_truncated_silent_and_too_short(client, clip):
    assert_error(client.post("/predict", content=clip[: len(clip) // 2]), 422, "truncated")
    silent = wav_bytes(np.zeros(SR, np.float32))
    assert_error(client.post("/predict", content=silent), 422, "silent")
    short = wav_bytes(tone(0.1))
    assert_error(client.post("/predict", content=short), 422, "too short")


def test_oversize(model_path, clip):
    with TestClient(
        create_app(model_path, max_mb=0.01, max_seconds=30.0), base_url="http://127.0.0.1"
    ) as small:
        assert len(clip) > 0.01 * 1024 * 1024
        assert_error(small.post("/predict", content=clip), 413, "too large")
        assert_error(small.post("/predict", files={"file": ("a.wav", clip)}), 413, "too large")
        # chunked upload without Content-Length: the streamed read stops at the limit
        chunks = (clip[i : i + 4096] for i in range(0, len(clip), 4096))
        assert_error(small.post("/segments", content=chunks), 413, "too large")
        # a small clip still passes
        ok = small.post("/predict", content=wav_bytes(tone(0.3)))
        assert ok.status_code == 200, ok.text


def test_read_body_stops_at_limit():
    """The body is read chunk by chunk and reading stops once the limit is passed."""
    from starlette.requests import Request

    sent = {"n": 0}

    async def receive():
        sent["n"] += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": sent["n"] < 1000}

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    with pytest.raises(ApiError) as e:
        asyncio.run(_read_body(Request(scope, receive), limit=5000))
    assert e.value.status == 413
    assert sent["n"] == 6  # 6 kB read of the 1 MB offered

    declared = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-length", b"999999")],
    }
    sent["n"] = 0
    with pytest.raises(ApiError):
        asyncio.run(_read_body(Request(declared, receive), limit=5000))
    assert sent["n"] == 0  # rejected from the header alone


def test_too_long(model_path):
    with TestClient(
        create_app(model_path, max_mb=5.0, max_seconds=1.0), base_url="http://127.0.0.1"
    ) as short:
        r = short.post("/predict", content=wav_bytes(tone(2.0)))
        assert_error(r, 413, "too long", "2.0 s")
        assert short.post("/predict", content=wav_bytes(tone(0.8))).status_code == 200


def test_wrong_field_name(client, clip):
    err = assert_error(client.post("/predict", files={"audio": ("a.wav", clip)}), 400, "'file'")
    assert "'audio'" in err
    assert_error(
        client.post("/segments", data={"x": "1"}, files={"upload": ("a.wav", clip)}), 400, "'file'"
    )


def test_malformed_multipart(client):
    r = client.post(
        "/predict",
        content=b"--zzz\r\nnot a header line\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert r.status_code == 400 and set(r.json()) == {"error"}
    r = client.post("/predict", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert_error(r, 400, "boundary")


def test_methods_paths_and_validation(client):
    assert_error(client.get("/predict"), 405, "method not allowed")
    assert_error(client.put("/segments", content=b"x"), 405)
    assert_error(client.delete("/health"), 405)
    assert_error(client.get("/nope"), 404, "not found")
    assert_error(client.get("/static/../app.py"), 404)
    assert_error(client.get("/static/%2e%2e/app.py"), 404)
    err = assert_error(client.post("/segments?max_window=abc", content=b"x"), 422, "max_window")
    assert "detail" not in err
    assert_error(client.post("/segments?max_window=0", content=b"x"), 422, "max_window")


def test_inference_runs_off_the_event_loop(model_path, recognizer, clip):
    """predict/segments run in a worker thread: the event loop is never blocked by the model."""
    seen: list[tuple[str, bool]] = []

    class Spy:
        labels = recognizer.labels
        sample_rate = recognizer.sample_rate

        def _record(self, name: str) -> None:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            seen.append((name, on_loop))

        def predict(self, x, sample_rate=None):
            self._record("predict")
            return recognizer.predict(x, sample_rate)

        def segments(self, x, sample_rate=None, max_window=6.0):
            self._record("segments")
            return recognizer.segments(x, sample_rate, max_window=max_window)

    with TestClient(create_app(Spy()), base_url="http://127.0.0.1") as c:
        assert c.post("/predict", content=clip).status_code == 200
        assert c.post("/segments", content=clip).status_code == 200
    assert seen == [("predict", False), ("segments", False)]
    assert threading.current_thread() is threading.main_thread()


def test_no_files_written(model_path, clip, tmp_path, monkeypatch):
    """Uploads are handled in memory: nothing appears in the working folder or the temp folder,
    and a hostile client file name does not become a path."""
    work = tmp_path / "cwd"
    tmpd = tmp_path / "tmp"
    work.mkdir()
    tmpd.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpd))
    big = wav_bytes(bursts(20.0))
    with TestClient(create_app(model_path, max_mb=5.0), base_url="http://127.0.0.1") as c:
        for name in ("../../evil.wav", "/tmp/evil.wav", "x/../../y.wav", "a.wav"):
            r = c.post("/predict", files={"file": (name, clip, "audio/wav")})
            assert r.status_code == 200, r.text
        assert c.post("/segments", files={"file": ("../long.wav", big)}).status_code == 200
        assert c.post("/predict", content=b"junk" * 100).status_code == 422
    assert list(work.iterdir()) == []
    assert list(tmpd.iterdir()) == []
    assert not (tmp_path / "evil.wav").exists() and not Path("/tmp/evil.wav").exists()


def test_create_app_rejects_bad_model(tmp_path):
    with pytest.raises(TypeError):
        create_app(object())
    with pytest.raises((FileNotFoundError, ValueError, OSError)):
        create_app(tmp_path / "missing.pt")
    with pytest.raises(ValueError):
        create_app(tmp_path / "missing.pt", max_mb=0)


def test_error_bodies_are_json_only(client):
    """Errors never leak FastAPI's default {"detail": ...} shape."""
    for resp in (
        client.get("/nope"),
        client.get("/predict"),
        client.post("/predict"),
        client.post("/segments?max_window=-1", content=b"x"),
    ):
        assert "detail" not in json.loads(resp.text)
