"""Hardening round 2 (a hostile but fair user, continued): float audio above full scale,
shipped-model naming, CSV/markdown injection, bounded memory, slow clients, clear errors.

Each test fails on the code before the fix it covers.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stlser import audio, testing
from stlser.testing import SR, wav_bytes


def speech(seconds: float = 1.5, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like clip (harmonics, amplitude modulation) at peak 1.0."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    ph = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * ph) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x = x + 0.01 * rng.normal(size=t.size)
    return (x / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return testing.make_artefact(tmp_path_factory.mktemp("harden_model") / "model.pt", jitter=False)


@pytest.fixture(scope="module")
def shipped():
    """The shipped general model (openSMILE functionals: the wrap-around shows there)."""
    from stlser.inference import Recognizer

    return Recognizer.load(None)


# ------------------------------------------------------------ 1. float audio above full scale
def _float_wav(path: Path, x: np.ndarray, subtype: str = "FLOAT") -> Path:
    sf.write(path, x, SR, subtype=subtype)
    return path


def _same(a, b, tol=1e-4):
    assert a.label == b.label
    for k in a.probabilities:
        assert abs(a.probabilities[k] - b.probabilities[k]) <= tol, (k, a, b)


@pytest.mark.parametrize("gain", [1.5, 1e30])
def test_float_above_full_scale_is_scaled_for_files_and_arrays(
    tmp_path, shipped, model_path, gain, caplog
):
    """Before: a float WAV at peak 1.5 wrapped around in openSMILE (labels flip), x 1e30 gave
    confident nonsense. Now: same prediction as at peak 1.0, with a warning naming the peak."""
    from stlser.inference import Recognizer

    x = speech()
    ref_file = _float_wav(tmp_path / "ref.wav", x)
    loud_file = _float_wav(tmp_path / "loud.wav", x * np.float32(gain))
    for rec in (shipped, Recognizer.load(model_path)):
        ref = rec.predict(ref_file)
        with caplog.at_level(logging.WARNING, logger="stlser.audio"):
            _same(rec.predict(loud_file), ref)
        assert "loud.wav" in caplog.text and "scaled down to peak 1.0" in caplog.text
        _same(rec.predict(x * gain, sample_rate=SR), ref)
        _same(rec.predict(x.astype(np.float64) * gain, sample_rate=SR), ref)
        _same(rec.predict(loud_file.read_bytes()), ref)
        caplog.clear()


def test_float64_far_beyond_float32_range_is_scaled_not_refused(shipped):
    x = speech().astype(np.float64)
    _same(shipped.predict(x * 1e300, sample_rate=SR), shipped.predict(x, sample_rate=SR))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_everywhere(tmp_path, model_path, bad):
    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    x = speech()
    x[100] = bad
    p = _float_wav(tmp_path / "bad.wav", x)
    for call in (
        lambda: rec.predict(p),
        lambda: rec.predict(x, sample_rate=SR),
        lambda: rec.segments(p),
        lambda: rec.segments(x, sample_rate=SR),
        lambda: list(rec.stream([x], sample_rate=SR)),
        lambda: audio.check(p),
    ):
        with pytest.raises(audio.AudioError, match="NaN or infinite"):
            call()


def test_blocks_and_segments_scale_consistently(tmp_path, model_path):
    """iter_blocks (segments, /segments) measures the peak first: every block gets the same
    factor, so the decoded stream equals the one of the clip at peak 1.0."""
    from stlser.inference import Recognizer

    x = np.concatenate([speech(2.0), np.zeros(SR, np.float32), 0.5 * speech(2.0, seed=1)])
    ref = _float_wav(tmp_path / "ref.wav", x)
    loud = _float_wav(tmp_path / "loud.wav", x * np.float32(1e30))
    a = np.concatenate(list(audio.iter_blocks(ref, block_seconds=0.5)))
    b = np.concatenate(list(audio.iter_blocks(loud, block_seconds=0.5)))
    np.testing.assert_allclose(a, b, atol=1e-6)
    with open(loud, "rb") as fh:  # a file object: seekable, same factor
        c = np.concatenate(list(audio.iter_blocks(fh, block_seconds=0.5)))
    np.testing.assert_allclose(a, c, atol=1e-6)
    rec = Recognizer.load(model_path)
    sa, sb = rec.segments(ref), rec.segments(loud)
    assert [(s.start, s.end, s.label) for s in sa] == [(s.start, s.end, s.label) for s in sb]


def test_stream_chunks_above_full_scale_never_exceed_it(model_path):
    """Live chunks: a running peak (documented policy): output equals the peak-1.0 stream once
    the loudest chunk has been seen (here: the first)."""
    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    x = speech(3.0)
    chunks = [x[i : i + 4000] for i in range(0, x.size, 4000)]
    ref = list(rec.stream(chunks, SR))
    loud = list(rec.stream([c * 1e30 for c in chunks], SR))
    assert [s.label for s in ref] == [s.label for s in loud]


def test_service_scales_float_uploads(shipped):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stlser.service import create_app

    x = speech()
    app = create_app(shipped)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        ref = c.post("/predict", content=wav_bytes(x, subtype="FLOAT")).json()
        for gain in (1.5, 1e30):
            got = c.post("/predict", content=wav_bytes(x * np.float32(gain), subtype="FLOAT"))
            assert got.status_code == 200, got.text
            got = got.json()
            assert got["label"] == ref["label"]
            for k, v in ref["probabilities"].items():
                assert abs(got["probabilities"][k] - v) <= 1e-4


def test_smile_input_is_clipped():
    """openSMILE wraps float samples above 1.0 around when converting to int16."""
    from stlser import smile

    x = speech() * 1.02
    assert np.max(np.abs(smile.as_wave(x))) <= 1.0


# ------------------------------------------------------------------ 2. shipped model naming
HOSTILE = "=cmd|' /C calc'!A0"


@pytest.fixture
def clip(tmp_path) -> Path:
    p = tmp_path / "clip.wav"
    sf.write(p, speech(), SR)
    return p


def test_local_base_folder_is_not_taken_for_the_shipped_model(tmp_path, clip, monkeypatch, capsys):
    """Before: `stlser predict clip.wav` in a folder holding base/model.pt silently used it.
    Now `base` is the shipped model, wherever you are; `./base` is the local folder; the model
    loaded is always named on stderr."""
    from stlser.cli import main
    from stlser.recognizer import resolve_model_path, shipped_model

    testing.make_artefact(tmp_path / "base" / "model.pt", labels=["x1", "x2"])
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("base") in (shipped_model("base"), shipped_model("base", ".onnx"))
    assert resolve_model_path("./base") == Path("base/model.pt")
    out = tmp_path / "a.csv"
    assert main(["predict", str(clip), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "model: shipped base" in err and "sha256" in err
    assert "prob_x1" not in out.read_text()
    assert main(["predict", "--model", "./base", str(clip), "-o", str(out)]) == 0
    assert "model: base/model.pt" in capsys.readouterr().err
    assert "prob_x1" in out.read_text()


def test_plain_file_named_base_does_not_break_the_default(tmp_path, clip, monkeypatch, capsys):
    from stlser.cli import main

    (tmp_path / "base").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(clip)]) == 0
    assert "model: shipped base" in capsys.readouterr().err


# ------------------------------------------------------------------ 3. CSV / markdown injection
def test_csv_cells_are_escaped_and_round_trip():
    from stlser.utils import csv_cell, csv_uncell

    for s in [HOSTILE, "+1", "-x", "@SUM(A1)", "\tx", "\rx", "'=x", "''=x", "'plain", "plain", ""]:
        e = csv_cell(s)
        assert not (isinstance(e, str) and e[:1] in ("=", "+", "-", "@", "\t", "\r"))
        assert csv_uncell(e) == s
    assert csv_cell(-1.5) == -1.5  # numbers are not text


def test_manifest_escapes_formulas_and_reads_back_exactly(tmp_path):
    from stlser.corpora import build_manifest, read_manifest, write_manifest

    root = tmp_path / "corpus"
    for lab in (HOSTILE.replace("/", "_"), "+sad", "'=quoted", "neutral"):
        (root / lab).mkdir(parents=True)
        for i in range(2):
            sf.write(root / lab / f"u{i}.wav", speech(0.5, seed=i), SR)
    df, skipped = build_manifest("folder", root)
    path = write_manifest(df, skipped, tmp_path / "out")
    raw = path.read_text()
    for line in raw.splitlines()[1:]:
        for cell in line.split(","):
            assert cell.lstrip('"')[:1] not in ("=", "+", "-", "@"), line
    back = read_manifest(path)
    assert sorted(back["label"]) == sorted(df["label"])
    assert set(df["label"]) >= {HOSTILE.replace("/", "_"), "+sad", "'=quoted"}


def test_predict_output_csv_escapes_formula_labels(tmp_path, clip):
    from stlser.cli import main

    model = testing.make_artefact(tmp_path / "m.pt", labels=[HOSTILE, "@x", "+z", "-y"])
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), str(clip), "-o", str(out)]) == 0
    text = out.read_text()
    import csv

    rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r"), row
    assert rows[1][1] in ("'" + HOSTILE, "'@x", "'+z", "'-y")  # the label, escaped


def test_md_cell_escapes_pipes_and_newlines():
    from stlser.utils import md_cell

    row = "| " + " | ".join([md_cell("a|b"), md_cell("x\ny\r\nz"), md_cell("c\\|")]) + " |"
    # a markdown row splits on unescaped pipes only
    import re

    cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    assert len(cells) == 3 and "\n" not in row


# ------------------------------------------------------------- 4e. compressed model files
def _recompress(src: Path, dst: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for i in zi.infolist():
            zo.writestr(i.filename, zi.read(i.filename), compress_type=zipfile.ZIP_DEFLATED)
    return dst


def test_zip_bomb_model_is_refused_before_inflating(tmp_path, model_path):
    """Before: a small model.pt whose tensor is stored deflated was inflated in full by
    torch.load (a 499 kB file → 780 MB) before anything was checked."""
    import torch

    from stlser.safety import ModelLoadError, safe_torch_load

    src = tmp_path / "big.pt"
    torch.save({"format": "stlser-model/1", "w": torch.zeros(2_000_000)}, src)  # 8 MB of zeros
    bomb = _recompress(src, tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ModelLoadError, match="zip bomb"):
        safe_torch_load(bomb)
    with pytest.raises(ModelLoadError, match="declare more than"):
        safe_torch_load(src, max_bytes=1_000_000)
    assert safe_torch_load(src)["w"].numel() == 2_000_000
    # a real artefact, even recompressed (ratio below the bomb threshold), still loads
    from stlser.model import load_artefact

    load_artefact(model_path)


# ------------------------------------------------------------- 5. clear errors before work
@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"max_mb": float("inf")}, "--max-mb"),
        ({"max_mb": float("nan")}, "--max-mb"),
        ({"max_mb": 0}, "--max-mb"),
        ({"max_seconds": float("nan")}, "--max-seconds"),
        ({"max_seconds": float("inf")}, "--max-seconds"),
        ({"max_seconds": -1}, "--max-seconds"),
        ({"port": 99999}, "--port"),
        ({"port": 0}, "--port"),
        ({"max_uploads": 0}, "--max-uploads"),
        ({"read_timeout": float("nan")}, "--read-timeout"),
    ],
)
def test_serve_options_are_checked_before_starting(kw, flag, monkeypatch):
    """Before: `serve --max-seconds nan` started a server answering 500 to every upload,
    `--max-mb inf` crashed on int(inf), `--port 99999` failed inside uvicorn."""
    import uvicorn

    from stlser.service import app as app_mod

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(1))
    monkeypatch.setattr(app_mod, "_load_recognizer", lambda m: pytest.fail("loaded the model"))
    with pytest.raises(app_mod.UsageError, match=flag):
        app_mod.serve("unused", **kw)
    assert isinstance(app_mod.UsageError("x"), ValueError) and not started
    if "port" not in kw:
        with pytest.raises(app_mod.UsageError, match=flag):
            app_mod.create_app("unused", **kw)


def test_predict_output_of_the_wrong_kind_is_refused_before_work(tmp_path, clip, monkeypatch):
    import os

    from stlser.cli import main
    from stlser.cli import predict as predict_mod

    monkeypatch.setattr(predict_mod, "load_recognizer", lambda m: pytest.fail("did work"))
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    assert main(["predict", str(clip), "-o", str(fifo)]) == 2
    (tmp_path / "d.csv").mkdir()
    assert main(["predict", str(clip), "-o", str(tmp_path / "d.csv")]) == 2
    (tmp_path / "f").write_text("x")
    assert main(["predict", str(clip), "-o", str(tmp_path / "f" / "out.csv")]) == 2


def _disk_full(monkeypatch, module_name: str = "pandas.core.generic"):
    """Make every CSV/text/bytes write fail with ENOSPC after writing a little."""
    import errno

    real_write_text, real_write_bytes = Path.write_text, Path.write_bytes

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    import pandas as pd

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full())
    monkeypatch.setattr(Path, "write_bytes", lambda self, *a, **k: full())
    return real_write_text, real_write_bytes


def test_disk_full_on_predict_output_is_one_line_and_keeps_the_old_file(
    tmp_path, clip, monkeypatch, capsys
):
    from stlser.cli import main

    out = tmp_path / "p.csv"
    out.write_text("previous contents\n")
    _disk_full(monkeypatch)
    assert main(["predict", str(clip), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err and "Traceback" not in err
    monkeypatch.undo()
    assert out.read_text() == "previous contents\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_disk_full_on_manifest_keeps_both_files(tmp_path, monkeypatch, capsys):
    from stlser.cli import main

    root = tmp_path / "corpus"
    for lab in ("angry", "sad"):
        (root / lab).mkdir(parents=True)
        sf.write(root / lab / "u.wav", speech(0.5), SR)
    out = tmp_path / "m"
    assert main(["manifest", "--corpus", "folder", "--root", str(root), "-o", str(out)]) == 0
    before = {p.name: p.read_text() for p in out.iterdir()}
    _disk_full(monkeypatch)
    assert main(["manifest", "--corpus", "folder", "--root", str(root), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_disk_full_on_export_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    from stlser.cli import main

    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    _disk_full(monkeypatch)
    # refused before the graph is traced (which takes a minute or more)
    assert main(["export", "--model", "base", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert out.read_bytes() == b"old"


class _Boom:
    def run(self, *a, **k):
        from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

        raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Reshape failed\nmore")


def test_onnx_failing_at_run_time_is_a_clear_error(tmp_path, clip, monkeypatch, capsys):
    """Before: a traceback from `stlser predict`, 'internal server error' from the service."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stlser.cli import main
    from stlser.onnx_runtime import OnnxRecognizer
    from stlser.recognizer import shipped_model
    from stlser.safety import ModelRunError
    from stlser.service import create_app

    onnx = shipped_model("base", ".onnx")
    real_init = OnnxRecognizer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.session = _Boom()

    monkeypatch.setattr(OnnxRecognizer, "__init__", init)
    with pytest.raises(ModelRunError, match="Reshape failed"):
        OnnxRecognizer(onnx).predict(clip)
    assert main(["predict", "--model", str(onnx), str(clip)]) == 2
    err = capsys.readouterr().err
    assert "failed at run time" in err and "Traceback" not in err and str(onnx) in err
    with TestClient(create_app(OnnxRecognizer(onnx)), base_url="http://127.0.0.1") as c:
        r = c.post("/predict", content=clip.read_bytes())
        assert r.status_code == 500 and "failed on this input" in r.json()["error"]


# ------------------------------------------------------------------ 4a/4b. bounded memory
def test_corpus_scan_reads_headers_and_decodes_in_blocks(tmp_path):
    """Before: `stlser manifest` decoded whole files (a small FLAC holding hours took GBs).
    Now: too long a file is skipped from its header, the others are validated block by
    block."""
    import tracemalloc

    from stlser.corpora import build_manifest

    root = tmp_path / "corpus"
    (root / "angry").mkdir(parents=True)
    (root / "sad").mkdir(parents=True)
    sr = 8_000
    t = np.arange(sr * 300) / sr
    sf.write(
        root / "angry" / "long.flac", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr
    )
    sf.write(root / "sad" / "ok.wav", speech(0.5), SR)
    hours = np.zeros(sr * 10, np.int16)
    with sf.SoundFile(root / "sad" / "hours.flac", "w", sr, 1, "PCM_16") as f:
        for _ in range(70):  # 700 s of silence: a tiny file
            f.write(hours)
    assert (root / "sad" / "hours.flac").stat().st_size < 300_000
    tracemalloc.start()
    try:
        df, skipped = build_manifest("folder", root, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(Path(p).name for p in df["path"]) == ["long.flac", "ok.wav"]
    assert (
        abs(df.set_index(df["path"].map(lambda p: Path(p).name)).loc["long.flac", "duration"] - 300)
        < 1e-3
    )
    ((path, reason),) = skipped
    assert path.endswith("hours.flac") and "too long" in reason and "600" in reason
    assert peak < 4_000_000, peak  # whole-file decoding of long.flac alone is 9.6 MB


@pytest.mark.parametrize("rate", [1, 100, 3999, float("nan"), float("inf"), 0, -16000])
def test_arrays_get_the_sample_rate_limit_of_files(model_path, rate):
    """Before: predict(x, sample_rate=1) upsampled 1,600 samples to 1,600 s (6.8 GB)."""
    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    x = speech(0.1)
    for call in (
        lambda: rec.predict(x, sample_rate=rate),
        lambda: rec.segments(x, sample_rate=rate),
        lambda: list(rec.stream([x], sample_rate=rate)),
        lambda: rec.predict_batch([x], sample_rate=rate),
    ):
        with pytest.raises(audio.AudioError, match="sample rate"):
            call()


def test_arrays_and_files_get_the_same_duration_limit(tmp_path, model_path):
    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    x = np.zeros(int(4_000 * (audio.MAX_CLIP_SECONDS + 1)), np.float32)
    with pytest.raises(audio.AudioTooLarge, match="too long"):
        rec.predict(x, sample_rate=4_000)
    p = tmp_path / "long.wav"
    sf.write(p, x, 4_000)
    with pytest.raises(audio.AudioTooLarge, match="too long"):
        rec.predict(p)


# --------------------------------------------------- 4c/4d. the service: memory, slow clients
import contextlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(app, header_timeout: float = 10.0):
    """The configuration `stlser serve` runs (`server_config`), on 127.0.0.1, in a thread."""
    import uvicorn

    from stlser.service.server import server_config

    port = _free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, header_timeout, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 8.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _head(path: str = "/predict", length: int | None = None) -> bytes:
    h = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + "\r\n").encode()


def _status(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def _post(port: int, body: bytes, source: str = "127.0.0.1") -> int:
    with _connect(port, source) as s:
        s.sendall(_head(length=len(body)) + body)
        return _status(s)


@pytest.fixture(scope="module")
def slow_app(model_path):
    pytest.importorskip("fastapi")
    from stlser.service import create_app

    return create_app(model_path, max_uploads=4, read_timeout=60, rate_grace=0.5)


def test_slow_headers_are_timed_out(slow_app):
    """Before: a connection sending its headers a byte at a time was never timed out."""
    with _server(slow_app, header_timeout=0.5) as port, _connect(port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        assert _status(s) == 408
        assert s.recv(4096) == b"" or s.recv(4096) == b""  # then closed


def test_trickling_body_is_cut_off_by_the_minimum_rate(slow_app):
    """Before: 1 byte/s kept an upload slot for the whole --read-timeout (here 60 s)."""
    with _server(slow_app) as port, _connect(port) as s:
        s.sendall(_head(length=100_000))
        for _ in range(50):  # ~1 byte / 0.05 s: far below 8 kB/s
            try:
                s.sendall(b"R")
            except OSError:
                break
            time.sleep(0.05)
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
                s.settimeout(8.0)
        assert _status(s) == 408


def test_one_client_cannot_take_every_upload_slot(slow_app):
    """Before: four slow uploads (= --max-uploads) from one client gave every other client
    503. Now one IP holds at most 2 uploads (429 beyond), others are served."""
    clip = wav_bytes(speech(1.0))
    with _server(slow_app) as port:
        held = []
        for _ in range(2):
            s = _connect(port, "127.0.0.2")
            s.sendall(_head(length=len(clip)) + clip[:10])
            held.append(s)
        time.sleep(0.2)
        statuses = [_post(port, clip, "127.0.0.2") for _ in range(2)]
        assert statuses == [429, 429]
        assert _post(port, clip, "127.0.0.3") == 200
        for s in held:
            assert _status(s) == 408  # and the trickles are cut off by the rate
            s.close()


_MEM_SERVER = r"""
import sys, uvicorn
from stlser.service import create_app
from stlser.service.server import server_config
app = create_app(sys.argv[1], max_seconds=300)
uvicorn.Server(server_config(app, "127.0.0.1", int(sys.argv[2]), log_level="warning")).run()
"""


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_service_memory_per_request_is_bounded(tmp_path, model_path):
    """Before: a small FLAC holding 600 s took the server's peak memory up by gigabytes (one
    forward pass over all of it). Now /predict decodes long audio block by block and classifies
    20 s windows: the peak grows by about one window's forward pass."""
    import os

    sr = 4_000  # 300 s: before, a pass over all of it (+265 MB); now 20 s windows
    t = np.arange(sr * 300) / sr
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    flac = wav_bytes(x.astype(np.float32), sr, fmt="FLAC")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(audio.__file__).parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEM_SERVER, str(model_path), str(port)], env=env
    )
    try:
        for _ in range(600):
            try:
                with _connect(port, timeout=1) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    if _status(s) == 200:
                        break
            except OSError:
                time.sleep(0.05)
        short = wav_bytes(speech(2.0))
        assert _post(port, short) == 200  # warm up: first-call allocations
        before = _vm(proc.pid, "VmHWM")
        with _connect(port, timeout=120) as s:
            s.sendall(_head(length=len(flac)) + flac)
            assert _status(s) == 200
        growth = _vm(proc.pid, "VmHWM") - before
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"service peak memory growth for 300 s: {growth / 2**20:.0f} MB")
    assert growth < 150 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MB"


def test_predict_windows_equals_predict_up_to_one_window_and_averages_beyond(tmp_path, model_path):
    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    x = np.concatenate([speech(1.5, seed=s) for s in range(4)])  # 6 s
    p = tmp_path / "x.wav"
    sf.write(p, x, SR)
    _same(rec.predict_windows(p, window=20.0), rec.predict(p))
    got = rec.predict_windows(p, window=3.0)  # two 3 s windows, averaged
    a, b = rec.probabilities([x[: 3 * SR]]), rec.probabilities([x[3 * SR :]])
    want = (a[0] + b[0]) / 2
    assert got.label == rec.labels[int(np.argmax(want))]
    np.testing.assert_allclose([got.probabilities[k] for k in rec.labels], want, atol=1e-5)
    assert abs(got.duration - 6.0) < 1e-6
    with pytest.raises(audio.AudioError, match="silent"):
        sf.write(tmp_path / "z.wav", np.zeros(4 * SR, np.float32), SR)
        rec.predict_windows(tmp_path / "z.wav", window=1.0)


def test_predict_table_does_not_print_control_characters(tmp_path, capsys):
    """A file name or label holding an escape sequence or a newline would forge terminal
    output (rows, colours, titles)."""
    from stlser.cli import main

    model = testing.make_artefact(tmp_path / "m.pt", labels=["a\x1b[2J", "b\nforged", "c", "d"])
    clip = tmp_path / "x\x1b]0;pwned\x07\nforged row.wav"
    sf.write(clip, speech(), SR)
    assert main(["predict", "--model", str(model), str(clip)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and len(out.strip().splitlines()) == 2


def test_write_csv_escapes_text_not_numbers_and_read_csv_undoes_it(tmp_path):
    """utils.write_csv is the writer of predictions.csv, skipped.csv, sweeps, histories."""
    import pandas as pd

    from stlser.utils import read_csv, write_csv

    df = pd.DataFrame(
        {"utt_id": ["a", "b"], "label": [HOSTILE, "+sad"], "prob": [-0.5, 0.25], "n": [-1, 2]}
    )
    p = write_csv(tmp_path / "predictions.csv", df)
    lines = p.read_text().splitlines()
    assert lines[1] == "a,'" + HOSTILE + ",-0.5,-1"
    assert lines[2] == "b,'+sad,0.25,2"
    back = read_csv(p)
    assert back["label"].tolist() == [HOSTILE, "+sad"] and back["n"].tolist() == [-1, 2]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--max-mb", "inf"], "--max-mb"),
        (["--port", "99999"], "--port"),
        (["--max-seconds", "nan"], "--max-seconds"),
    ],
)
def test_serve_cli_bad_options_exit_2_naming_the_flag(args, flag, monkeypatch, capsys):
    import uvicorn

    from stlser.cli import main

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: pytest.fail("server started"))
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_torch_model_failing_at_run_time_is_a_clear_error(model_path, clip, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stlser.inference import Recognizer
    from stlser.safety import ModelRunError
    from stlser.service import create_app

    rec = Recognizer.load(model_path)

    def boom(wave, lengths):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory\nstack")

    monkeypatch.setattr(rec, "_run", boom)
    with pytest.raises(ModelRunError, match="can't allocate memory") as e:
        rec.predict(clip)
    assert str(model_path) in str(e.value) and "stack" not in str(e.value)
    with TestClient(create_app(rec), base_url="http://127.0.0.1") as c:
        r = c.post("/predict", content=clip.read_bytes())
        assert r.status_code == 500 and "can't allocate memory" in r.json()["error"]


def test_manifest_output_of_the_wrong_kind_is_refused(tmp_path, capsys):
    """Before: `manifest -o clip.wav` replaced an audio file with CSV text."""
    from stlser.cli import main
    from stlser.corpora import CorpusError, manifest_output

    root = tmp_path / "corpus"
    (root / "sad").mkdir(parents=True)
    sf.write(root / "sad" / "u.wav", speech(0.5), SR)
    victim = tmp_path / "keep.wav"
    sf.write(victim, speech(0.5), SR)
    before = victim.read_bytes()
    assert main(["manifest", "--corpus", "folder", "--root", str(root), "-o", str(victim)]) == 2
    assert victim.read_bytes() == before
    with pytest.raises(CorpusError, match="not a folder"):
        (tmp_path / "f").write_text("x")
        manifest_output(tmp_path / "f" / "m.csv")
    assert manifest_output(tmp_path / "new") == tmp_path / "new" / "manifest.csv"


def test_manifest_summary_escapes_control_characters():
    import pandas as pd

    from stlser.corpora import summarize

    df = pd.DataFrame(
        {
            "utt_id": ["a", "b"],
            "label": ["x\x1b[2J", "y\nforged line"],
            "speaker": ["s1", "s\x072"],
            "session": ["", ""],
            "gender": ["", ""],
            "duration": [1.0, 2.0],
            "corpus": ["folder", "folder"],
        }
    )
    out = summarize(df, [("p\x1b]0;t\x07.wav", "bad\nline")])
    assert "\x1b" not in out and "\x07" not in out and "forged line" in out
    assert not any(line.startswith("forged") for line in out.splitlines())
