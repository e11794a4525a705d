"""Inference: Pipeline, Recognizer (files, bytes, arrays, batches, long audio, streams), the
energy VAD and `stlser predict`. The model has random weights: tests check plumbing and
numerics, not accuracy."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stlser import testing
from stlser.audio import AudioError
from stlser.cli import main
from stlser.cli import predict as predict_cli
from stlser.inference import Recognizer, resolve_model_path
from stlser.kinds.network import Pipeline
from stlser.recognizer import Prediction, Segment
from stlser.vad import EnergyVAD, detect_speech, split_region

SR = 16_000
LABELS = ["angry", "happy", "neutral", "sad"]


def make_artefact(path: Path, seed: int = 0, **model_kw) -> Path:
    """A model.pt with random weights and plausible normaliser statistics."""
    meta = {"corpus": "test", "fold": 0}
    return testing.make_artefact(path, LABELS, seed=seed, meta=meta, **model_kw)


def voiced(seconds: float, f0: float = 180.0, amp: float = 0.2, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope: loud, speech-like energy."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t + seed)
    return (amp * env * x).astype(np.float32)


def noise(seconds: float, amp: float, seed: int) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_artefact(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def rec(model_path) -> Recognizer:
    return Recognizer.load(model_path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("clips")
    out = []
    for i, sec in enumerate([0.3, 1.2, 2.5, 3.0, 4.4, 7.1]):
        x = voiced(sec, f0=120 + 40 * i, seed=i) + noise(sec, 0.01, i)
        p = d / f"clip{i}.wav"
        sf.write(p, x, SR, subtype="FLOAT")
        out.append(p)
    return out


# --------------------------------------------------------------------------------- pipeline
def test_pipeline_equals_front_end_normaliser_model(model_path, clips):
    from stlser.features import compute
    from stlser.model import load_artefact

    pipe = Pipeline.from_artefact(model_path)
    model, art = load_artefact(model_path)
    x = sf.read(clips[3], dtype="float32")[0]
    feats = compute(x, pipe.feature_config)
    norm = {k: np.asarray(art["normalizer"][k], np.float32) for k in ("mean", "std")}
    z = (feats - norm["mean"]) / norm["std"]
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(z)[None], torch.tensor([len(z)])), -1)[0].numpy()
        got = pipe(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0].numpy()
    assert got.shape == (4,)
    assert abs(got.sum() - 1) < 1e-5
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_pipeline_utterance_and_none_modes(tmp_path, model_path):
    from stlser.features import compute
    from stlser.model import load_artefact

    model, art = load_artefact(model_path)
    x = voiced(2.0) + noise(2.0, 0.01, 3)
    feats = compute(x, Pipeline.from_artefact(model_path).feature_config)
    for mode, z in [
        ("utterance", (feats - feats.mean(0)) / feats.std(0)),
        ("none", feats),
    ]:
        pipe = Pipeline(
            model, Pipeline.from_artefact(model_path).feature_config, {"mode": mode}, LABELS
        )
        with torch.no_grad():
            got = pipe(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0].numpy()
            ref = torch.softmax(
                model(torch.from_numpy(z.astype(np.float32))[None], torch.tensor([len(z)])), -1
            )
        np.testing.assert_allclose(got, ref[0].numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------- predict
def test_predict_accepts_path_bytes_fileobj_and_arrays(rec, clips):
    p = clips[2]
    x, sr = sf.read(p, dtype="float32")
    by_path = rec.predict(p)
    assert isinstance(by_path, Prediction) and by_path.label in LABELS
    assert by_path.duration == pytest.approx(2.5, abs=1e-3)
    assert sum(by_path.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert by_path.label == max(by_path.probabilities, key=by_path.probabilities.get)
    others = [
        rec.predict(str(p)),
        rec.predict(p.read_bytes()),
        rec.predict(io.BytesIO(p.read_bytes())),
        rec.predict(x, sample_rate=sr),
        rec.predict(np.stack([x, x], axis=1), sample_rate=sr),  # stereo (samples, channels)
    ]
    for o in others:
        assert o.label == by_path.label
        for lab in LABELS:
            assert o.probabilities[lab] == pytest.approx(by_path.probabilities[lab], abs=1e-6)
    # another rate is resampled to 16 kHz (close, not bit-equal) and the duration is kept
    import soxr

    y = soxr.resample(x, SR, 44_100)
    o = rec.predict(y, sample_rate=44_100)
    assert o.duration == pytest.approx(2.5, abs=1e-3)
    assert max(abs(o.probabilities[k] - by_path.probabilities[k]) for k in LABELS) < 0.02
    d = by_path.to_dict()
    assert set(d) == {"label", "probabilities", "duration", "unsure"}
    assert d["unsure"] == (d["probabilities"][d["label"]] < 0.5)
    json.dumps(d)


def test_array_without_sample_rate_is_a_clear_error(rec):
    with pytest.raises(ValueError, match="sample_rate is required"):
        rec.predict(np.zeros(16000, np.float32))


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"", "empty"),
        (b"not audio at all" * 50, "not readable"),
        ("/nonexistent/x.wav", "no such file"),
    ],
)
def test_bad_audio_raises_audio_error(rec, bad, reason):
    with pytest.raises(AudioError, match=reason):
        rec.predict(bad)


def test_truncated_and_silent_inputs(rec, clips, tmp_path):
    data = clips[3].read_bytes()
    with pytest.raises(AudioError, match="truncated"):
        rec.predict(data[: len(data) // 2])
    with pytest.raises(AudioError, match="silent"):
        rec.predict(np.zeros(SR, np.float32), sample_rate=SR)


def test_predict_batch_equals_one_by_one(rec, clips):
    xs = [*clips, clips[1].read_bytes()]
    one = [rec.predict(x) for x in xs]
    for bs in (1, 3, 16):
        batch = rec.predict_batch(xs, batch_size=bs)
        assert len(batch) == len(xs)
        for a, b in zip(one, batch, strict=True):
            assert a.label == b.label and a.duration == b.duration
            assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in LABELS) < 1e-5
    # results differ between clips (the test is not vacuous)
    assert len({tuple(round(v, 7) for v in p.probabilities.values()) for p in one[:-1]}) == len(
        clips
    )
    with pytest.raises(AudioError):
        rec.predict_batch([clips[0], b"garbage" * 100])


def test_iter_predict_reports_errors_in_order(rec, clips):
    out = list(rec.iter_predict([clips[0], b"", clips[1]], batch_size=2))
    assert [i for i, _ in out] == [0, 1, 2]
    assert isinstance(out[1][1], AudioError) and isinstance(out[2][1], Prediction)


# ------------------------------------------------------------------------------------- VAD
def burst_track(seconds: float, seed: int = 0, long_burst: tuple[float, float] | None = None):
    """Background noise (-50 dBFS) with tone and noise bursts separated by silences; returns
    (signal, true bursts in seconds)."""
    rng = np.random.default_rng(seed)
    x = noise(seconds, 0.003, seed + 100)
    t, bursts = 0.8, []
    while t < seconds - 1.0:
        length = min(rng.uniform(0.5, 4.0), seconds - 0.5 - t)
        if long_burst and t + length > long_burst[0] - 0.8:
            bursts.append(long_burst)
            t = long_burst[1] + rng.uniform(0.8, 2.5)
            long_burst = None
            continue
        bursts.append((t, t + length))
        t += length + rng.uniform(0.8, 2.5)
    for i, (a, b) in enumerate(bursts):
        n = int(round(b * SR)) - int(round(a * SR))
        sig = voiced(n / SR, f0=rng.uniform(110, 260), seed=i) if i % 3 else noise(n / SR, 0.08, i)
        x[int(round(a * SR)) : int(round(a * SR)) + n] += sig
    return x, bursts


def test_vad_is_independent_of_block_size():
    x, bursts = burst_track(40.0, seed=1)
    ref = detect_speech(x)
    assert len(ref) == len(bursts)
    for block in (160, 3333, 50_000):
        vad = EnergyVAD()
        regions = []
        for i in range(0, len(x), block):
            regions += vad.push(x[i : i + block])
        regions += vad.flush()
        assert [(a / SR, b / SR) for a, b in regions] == ref


def test_vad_ignores_steady_noise_and_finds_quiet_speech():
    quiet = noise(20.0, 0.001, 0)
    assert detect_speech(quiet) == []
    assert detect_speech(np.zeros(10 * SR, np.float32)) == []
    x = quiet.copy()
    x[5 * SR : 7 * SR] += voiced(2.0, amp=0.01)  # -45 dBFS speech over -60 dBFS noise
    (region,) = detect_speech(x)
    assert region[0] == pytest.approx(5.0, abs=0.1) and region[1] == pytest.approx(7.0, abs=0.1)


def test_split_region_equal_pieces():
    assert split_region(0, 10, 6) == [(0, 5), (5, 10)]
    assert split_region(100, 104, 6) == [(100, 104)]
    pieces = split_region(0, 19 * SR, 6 * SR)
    assert len(pieces) == 4 and all(b - a <= 6 * SR for a, b in pieces)
    assert pieces[0][0] == 0 and pieces[-1][1] == 19 * SR


def test_segments_land_on_the_bursts(rec, tmp_path):
    x, bursts = burst_track(120.0, seed=0, long_burst=(60.0, 74.0))
    path = tmp_path / "long.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    segs = rec.segments(path)
    assert all(isinstance(s, Segment) and s.label in LABELS for s in segs)
    assert all(s.end - s.start <= 6.0 + 1e-9 for s in segs)
    # group contiguous windows back into regions
    regions: list[list[float]] = []
    for s in segs:
        if regions and abs(s.start - regions[-1][1]) < 1e-6:
            regions[-1][1] = s.end
        else:
            regions.append([s.start, s.end])
    assert len(regions) == len(bursts)
    for (a, b), (c, d) in zip(bursts, regions, strict=True):
        assert abs(a - c) < 0.2 and abs(b - d) < 0.2, ((a, b), (c, d))
    long_windows = [s for s in segs if 59.5 < s.start < 74.5]
    assert len(long_windows) == 3  # 14.2 s of speech → 3 windows of ~4.7 s
    assert rec.segments(np.zeros(5 * SR, np.float32), sample_rate=SR) == []
    assert segs[0].to_dict()["end"] == segs[0].end


def test_segments_stream_from_disk_in_bounded_memory(rec, tmp_path):
    """Eight minutes of audio (31 MB as float32, 15 MB as int16) are never held at once."""
    x = noise(480.0, 0.003, 7)
    x[20 * SR : 60 * SR] += voiced(40.0, amp=0.1)  # one 40 s region: windows emitted on the go
    path = tmp_path / "eight_minutes.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    rec.segments(np.zeros(SR, np.float32) + 0.1, sample_rate=SR)  # warm up
    del x
    tracemalloc.start()
    try:
        segs = rec.segments(path, max_window=6.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(segs) == 7 and all(5.0 < s.duration <= 6.0 for s in segs)
    assert segs[0].start == pytest.approx(19.9, abs=0.1) and segs[-1].end == pytest.approx(
        60.1, abs=0.1
    )
    assert all(abs(a.end - b.start) < 1e-9 for a, b in zip(segs, segs[1:], strict=False))
    assert peak < 12e6, f"peak traced memory {peak / 1e6:.1f} MB"


def test_segments_accept_bytes_and_reject_garbage(rec, tmp_path):
    x, bursts = burst_track(15.0, seed=2)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="FLAC")
    segs = rec.segments(buf.getvalue())
    assert len(segs) == len(bursts)
    path = tmp_path / "talk.flac"
    path.write_bytes(buf.getvalue())
    with open(path, "rb") as fh:
        assert [s.probabilities for s in rec.segments(fh)] == [s.probabilities for s in segs]
    # an array gives the same segments as the decoded file
    y = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0]
    segs2 = rec.segments(y, sample_rate=SR)
    assert [(s.start, s.end, s.label) for s in segs2] == [(s.start, s.end, s.label) for s in segs]
    with pytest.raises(AudioError):
        rec.segments(b"\x00" * 100)
    with pytest.raises(ValueError, match="sample_rate"):
        rec.segments(x)


# ---------------------------------------------------------------------------------- stream
def chunked(x: np.ndarray, n: int):
    for i in range(0, len(x), n):
        yield x[i : i + n]


def test_stream_is_independent_of_chunking_and_matches_predict(rec):
    x = voiced(5.5) + noise(5.5, 0.01, 1)
    ref = list(rec.stream(chunked(x, len(x)), SR, window=3.0, hop=1.0))
    assert [(s.start, s.end) for s in ref] == [
        (0.0, 1.0),
        (0.0, 2.0),
        (0.0, 3.0),
        (1.0, 4.0),
        (2.0, 5.0),
        (2.5, 5.5),
    ]
    for n in (1, 1000, 16001):
        if n == 1:
            got = list(rec.stream(chunked(x[: 2 * SR], n), SR, window=3.0, hop=1.0))
            assert [(s.start, s.end) for s in got] == [(0.0, 1.0), (0.0, 2.0)]
            assert got[1].probabilities == ref[1].probabilities
            continue
        got = list(rec.stream(chunked(x, n), SR, window=3.0, hop=1.0))
        assert [(s.start, s.end, s.label) for s in got] == [(s.start, s.end, s.label) for s in ref]
        assert all(a.probabilities == b.probabilities for a, b in zip(got, ref, strict=True))
    # each rolling window is the prediction of exactly that slice
    s = ref[4]
    p = rec.predict(x[int(s.start * SR) : int(s.end * SR)], sample_rate=SR)
    assert max(abs(p.probabilities[k] - s.probabilities[k]) for k in LABELS) < 1e-5
    # int16 chunks at 8 kHz are converted and resampled; still chunk-independent
    import soxr

    y = (soxr.resample(x, SR, 8000) * 32767).astype(np.int16)
    a = list(rec.stream(chunked(y, 800), 8000))
    b = list(rec.stream(chunked(y, 3001), 8000))
    assert len(a) == len(b) == 6 and all(
        u.probabilities == v.probabilities for u, v in zip(a, b, strict=True)
    )


# ----------------------------------------------------------------------------- loading
def test_load_resolves_run_folders(tmp_path, model_path):
    run = tmp_path / "crossval"
    (run / "fold_00").mkdir(parents=True)
    (run / "fold_00" / "model.pt").write_bytes(model_path.read_bytes())
    assert resolve_model_path(run) == run / "fold_00" / "model.pt"
    assert Recognizer.load(run).labels == LABELS
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="fold_00"):
        Recognizer.load(tmp_path / "empty")
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match="model.pt"):
        Recognizer.load(ckpt)
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(ValueError, match="not an stlser model"):
        Recognizer.load(bogus)


def test_inference_does_not_import_lightning(model_path, clips):
    code = (
        "import sys; from stlser.inference import Recognizer; "
        f"r = Recognizer.load({str(model_path)!r}); r.predict({str(clips[1])!r}); "
        "print('lightning' in sys.modules, 'pytorch_lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def folder(tmp_path, clips) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for i, c in enumerate(clips[:3]):
        (d / ("sub" if i == 2 else "") / f"ok{i}.wav").write_bytes(c.read_bytes())
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (d / "notes.txt").write_text("not audio")
    return d


def test_cli_predict_csv_with_bad_file(model_path, folder, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(model_path), str(folder), "-o", str(out)]) == 0
    import pandas as pd

    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == [
        "path",
        "label",
        "unsure",
        *[f"prob_{k}" for k in LABELS],
        "duration",
        "error",
    ]
    assert len(df) == 4
    bad = df[df["error"] != ""]
    assert len(bad) == 1 and bad["path"].iloc[0].endswith("broken.wav")
    good = df[df["error"] == ""].copy()
    probs = [f"prob_{k}" for k in LABELS]
    good[probs + ["duration"]] = good[probs + ["duration"]].astype(float)
    assert set(good["label"]) <= set(LABELS)
    np.testing.assert_allclose(good[probs].sum(axis=1), 1.0, atol=1e-4)
    assert sorted(good["duration"]) == [0.3, 1.2, 2.5]
    unsure = good[probs].max(axis=1) < 0.5
    assert list(good["unsure"].astype(str)) == [str(bool(u)) for u in unsure]
    assert bad["unsure"].iloc[0] == ""
    err = capsys.readouterr().err
    assert "broken.wav" in err
    # the numbers are the Python API's
    rec = Recognizer.load(model_path)
    row = good[good["path"].str.endswith("ok1.wav")].iloc[0]
    assert row["prob_sad"] == pytest.approx(
        rec.predict(folder / "ok1.wav").probabilities["sad"], abs=1e-6
    )


def test_cli_predict_jsonl_table_and_all_failed(model_path, folder, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_path),
                str(folder / "ok0.wav"),
                str(folder / "nope.wav"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    assert {r["path"].endswith("nope.wav") for r in rows if "error" in r} == {True}
    capsys.readouterr()
    assert main(["predict", "--model", str(model_path), str(folder / "sub")]) == 0
    table = capsys.readouterr().out
    assert "ok2.wav" in table and "label" in table.splitlines()[0]
    assert main(["predict", "--model", str(model_path), str(folder / "broken.wav")]) == 1
    assert "ERROR" in capsys.readouterr().out
    assert (
        main(["predict", "--model", str(model_path), str(folder), "-o", str(tmp_path / "x.txt")])
        == 2
    )


def test_cli_predict_segments(model_path, tmp_path):
    x, bursts = burst_track(20.0, seed=3)
    wav = tmp_path / "talk.wav"
    sf.write(wav, x, SR)
    out = tmp_path / "segs.csv"
    assert (
        main(["predict", "--model", str(model_path), "--segments", str(wav), "-o", str(out)]) == 0
    )
    import pandas as pd

    df = pd.read_csv(out, keep_default_na=False)
    assert {"start", "end", "duration", "label"} <= set(df.columns)
    assert len(df) == len(bursts)
    np.testing.assert_allclose(df["end"] - df["start"], df["duration"], atol=2e-3)
    assert abs(df["start"].iloc[0] - bursts[0][0]) < 0.2


def test_expand_inputs_finds_only_audio(folder):
    files, missing = predict_cli.expand_inputs([folder, folder / "missing.flac"])
    assert sorted(p.name for p in files) == ["broken.wav", "ok0.wav", "ok1.wav", "ok2.wav"]
    assert missing == [(str(folder / "missing.flac"), "no such file")]


def test_cli_refuses_too_long_files_without_segments(model_path, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_cli, "MAX_CLIP_SECONDS", 2.0)
    out = tmp_path / "p.csv"
    args = ["predict", "--model", str(model_path), str(clips[1]), str(clips[2]), "-o", str(out)]
    assert main(args) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith(str(clips[1]))  # input order kept
    assert "use --segments" in lines[2] and lines[2].startswith(str(clips[2]))


def test_cli_table_mixes_relative_and_absolute_paths(model_path, folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    assert main(["predict", "--model", str(model_path), "ok0.wav", str(folder / "ok1.wav")]) == 0
    table = capsys.readouterr().out
    assert "ok0.wav" in table and "ok1.wav" in table
