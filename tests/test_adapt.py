"""Label-free speaker adaptation at prediction time: statistics as crossval computes them, the
adapted recognizer equal to crossval's speaker normalisation, the fallback below the minimum,
statistics saved as data, `stlser predict --adapt`, and the ONNX graph's statistics inputs."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stlser import adapt
from stlser.adapt import SpeakerStats
from stlser.features.normalise import normalize_functionals
from stlser.testing import speechlike

BASE = Path(__file__).resolve().parents[1] / "src" / "stlser" / "models"


@pytest.fixture(scope="module")
def rec():
    from stlser.inference import Recognizer

    return Recognizer.load(BASE / "base.pt")


@pytest.fixture(scope="module")
def clips():
    return [speechlike(1.6 + 0.25 * i, 40 + i) for i in range(6)]


def test_stats_are_crossvals_speaker_normalisation():
    X = np.random.default_rng(0).normal(size=(7, 5)) * [1, 2, 3, 0, 5]
    st = SpeakerStats.from_functionals(X, 12.0, ["compact"])
    z, _ = normalize_functionals(X, ["s"] * 7, "speaker")
    assert np.allclose((X - st.mean) / st.std, z, atol=1e-5)
    assert st.std[3] == 1.0  # a constant value is left unscaled, as crossval does


def test_shrinkage_toward_the_global_statistics():
    rng = np.random.default_rng(1)
    m_g, s_g = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    X = rng.normal(size=(3, 4)) * 3 + 5
    st = SpeakerStats.from_functionals(X, 9.0, ["compact"], "s")
    got = adapt.shrunk(st, (m_g, s_g), 2.0, 4.0)
    assert np.allclose(got.mean, (3 * X.mean(0) + 2 * m_g) / 5, atol=1e-5)
    assert np.allclose(got.std**2, (3 * X.var(0) + 4 * s_g.astype(np.float64) ** 2) / 7, rtol=1e-5)
    assert (got.clips, got.seconds, got.speaker) == (3, 9.0, "s")
    # the global statistics themselves are unchanged; many clips keep their own statistics
    same = SpeakerStats(m_g, s_g, 3, 9.0, ["compact"])
    back = adapt.shrunk(same, (m_g, s_g))
    assert np.allclose(back.mean, m_g, atol=1e-6) and np.allclose(back.std, s_g, atol=1e-6)
    many = SpeakerStats.from_functionals(np.tile(X, (20_000, 1)), 9.0, ["compact"])
    near = adapt.shrunk(many, (m_g, s_g))
    assert np.allclose(near.mean, many.mean, rtol=1e-3) and np.allclose(
        near.std, many.std, rtol=1e-3
    )
    # one clip has no spread (its stored std of 1 is the crossval convention, not a spread):
    # the global variance weighted b / (1 + b)
    one = adapt.shrunk(SpeakerStats.from_functionals(X[:1], 3.0, ["compact"]), (m_g, s_g), 2, 4)
    assert np.allclose(one.std, s_g * np.sqrt(4 / 5), rtol=1e-5)
    assert np.allclose(one.mean, (X[0] + 2 * m_g) / 3, atol=1e-5)


def test_adapted_recognizer_normalises_with_shrunk_statistics(rec, clips):
    st = rec.speaker_stats(clips, sample_rate=16000, speaker="a")
    assert st.usable and st.clips == 6 and st.sets == ["compact/relative", "large/relative"]
    adapted = rec.adapt(st)
    assert rec.speaker is None and adapted.adaptation is st  # the original is unchanged
    sh = adapt.shrunk(st, rec.global_stats)
    assert np.array_equal(adapted.speaker.mean, sh.mean) and np.array_equal(
        adapted.speaker.std, sh.std
    )
    wave = clips[0][None].astype(np.float32)
    X = rec.functionals(wave, np.asarray([wave.shape[1]]))
    z = (X - sh.mean) / sh.std
    keep = [rec.all_labels.index(x) for x in rec.labels]  # the model's default labels
    with torch.no_grad():  # crossval's scores, at the model's temperature for speaker statistics
        lp = rec.model.log_probs(torch.from_numpy(z))[:, keep] / rec.temperature["speaker"]
        want = torch.softmax(lp, -1).numpy()[0]
    got = adapted.predict(clips[0], sample_rate=16000)
    assert np.allclose([got.probabilities[x] for x in rec.labels], want, atol=1e-6)
    # the keyword form and a batch give the same answer
    again = rec.predict(clips[0], sample_rate=16000, speaker=st)
    assert again.probabilities == got.probabilities
    batch = rec.predict_batch(clips[:2], sample_rate=16000, speaker=st)
    assert np.allclose([batch[0].probabilities[x] for x in rec.labels], want, atol=1e-5)
    assert got.probabilities != rec.predict(clips[0], sample_rate=16000).probabilities


def test_a_model_without_its_global_statistics_adapts_unshrunk(rec, clips, caplog):
    import copy

    old = copy.copy(rec)
    old.global_stats = None  # e.g. a graph exported before the statistics were in its metadata
    st = rec.speaker_stats(clips[:3], sample_rate=16000)
    with caplog.at_level(logging.WARNING):
        got = old.adapt(st)
    assert got.speaker is st and "unshrunk" in caplog.text


def test_too_few_clips_fall_back_to_global_statistics(rec, clips, caplog):
    with caplog.at_level(logging.WARNING):
        few = rec.adapt(clips[:1], sample_rate=16000)
    assert few.speaker is None and few.adaptation is not None and not few.adaptation.usable
    assert "below the minimum" in caplog.text and "global statistics" in caplog.text
    p = few.predict(clips[0], sample_rate=16000).probabilities
    assert p == rec.predict(clips[0], sample_rate=16000).probabilities
    assert adapt.MIN_CLIPS >= 2


def test_stats_saved_as_data_and_checked(rec, clips, tmp_path):
    st = rec.speaker_stats(clips[:5], sample_rate=16000, speaker="b")
    for name in ("s.json", "s.npz"):
        back = SpeakerStats.load(st.save(tmp_path / name))
        assert np.array_equal(back.mean, st.mean) and np.array_equal(back.std, st.std)
        assert (back.clips, back.sets, back.speaker) == (st.clips, st.sets, "b")
    with pytest.raises(ValueError, match=".json or .npz"):
        st.save(tmp_path / "s.pkl")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3), std=np.ones(3), meta=np.asarray([{}], object))
    with pytest.raises(ValueError, match="not a speaker statistics file"):
        SpeakerStats.load(tmp_path / "bad.npz")  # an object array: never unpickled
    short = SpeakerStats(st.mean[:10], st.std[:10], 9, 30.0, ["compact", "large"])
    with pytest.raises(ValueError, match="10 values; the model reads 4378"):
        rec.adapt(short)
    # the shipped model's functionals are relative to each clip's level: statistics of the
    # clips' functionals as given (a level-kept model's) are refused, naming both
    assert st.sets == ["compact/relative", "large/relative"]
    as_given = SpeakerStats(st.mean, st.std, 5, 30.0, ["compact", "large"])
    with pytest.raises(ValueError, match=r"\['compact', 'large'\].*compact/relative"):
        rec.adapt(as_given)


def test_network_models_say_they_cannot_adapt(tmp_path):
    from stlser import testing
    from stlser.inference import Recognizer

    net = Recognizer.load(testing.make_artefact(tmp_path / "net.pt", ["a", "b"]))
    assert not net.adaptable
    with pytest.raises(ValueError, match="needs a model over functionals"):
        net.adapt([speechlike(1.0, 1)] * 5, sample_rate=16000)


def _folders(root: Path) -> None:
    for s, n in (("spk1", 5), ("spk2", 1)):
        (root / s).mkdir(parents=True)
        for i in range(n):
            sf.write(root / s / f"c{i}.wav", speechlike(2.2 + 0.1 * i, 7 * i + len(s)), 16000)


def _stlser(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from stlser.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600
    )


def test_predict_adapt_folder_and_speaker_csv(rec, tmp_path):
    _folders(tmp_path / "in")
    out, stats = tmp_path / "out.csv", tmp_path / "stats"
    model = str(BASE / "base.pt")
    r = _stlser("predict", "--model", model, "--adapt", "folder", str(tmp_path / "in"),
                "--save-stats", str(stats), "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "→ adapted" in r.stderr and "global statistics (1 clip(s)" in r.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6
    saved = sorted(p.name for p in stats.iterdir())
    assert len(saved) == 2 and all(n.endswith(".json") for n in saved)
    st = SpeakerStats.load(next(p for p in stats.iterdir() if "spk1" in p.name))
    want = rec.adapt(st).predict(tmp_path / "in" / "spk1" / "c0.wav")
    row = next(r for r in rows if r["path"].endswith("spk1/c0.wav"))
    assert row["label"] == want.label
    assert abs(float(row[f"prob_{want.label}"]) - want.confidence) < 1e-5
    # the same grouping from a CSV with a speaker column
    listing = tmp_path / "list.csv"
    with open(listing, "w") as f:
        f.write("path,speaker\n")
        for p in sorted((tmp_path / "in").rglob("*.wav")):
            f.write(f"{p.relative_to(tmp_path)},{p.parent.name}\n")
    out2 = tmp_path / "out2.csv"
    r = _stlser("predict", "--model", model, "--adapt", "speaker", str(listing), "-o", str(out2))
    assert r.returncode == 0, r.stderr
    rows2 = {r["path"]: r for r in csv.DictReader(open(out2))}
    assert {Path(p).name for p in rows2} == {Path(r["path"]).name for r in rows}
    row2 = next(r for p, r in rows2.items() if p.endswith("spk1/c0.wav"))
    assert row2["label"] == row["label"]


def test_predict_adapt_refuses_before_any_work(tmp_path):
    _folders(tmp_path / "in")
    out = tmp_path / "out.csv"
    r = _stlser("predict", "--adapt", "speaker", str(tmp_path / "in"), "-o", str(out))
    assert r.returncode == 2 and "needs a CSV input" in r.stderr and not out.exists()
    r = _stlser("predict", "--speaker-stats", str(tmp_path / "nope.json"), str(tmp_path / "in"))
    assert r.returncode == 2 and "cannot read speaker statistics" in r.stderr


def test_onnx_graph_takes_a_speakers_statistics(rec, clips):
    from stlser.onnx_runtime import OnnxRecognizer

    onnx = OnnxRecognizer(BASE / "base.onnx")
    assert onnx.adaptable and onnx.functional_sets == rec.functional_sets
    # the graph carries the global statistics the speaker's are shrunk toward
    assert all(
        np.array_equal(a, b) for a, b in zip(onnx.global_stats, rec.global_stats, strict=True)
    )
    st_onnx = onnx.speaker_stats(clips, sample_rate=16000)
    st = rec.speaker_stats(clips, sample_rate=16000)
    # on the model's own scale (its global std): jitter's step functionals move most
    scale = rec.model.std.numpy()
    assert (np.abs(st_onnx.mean - st.mean) / scale).max() < 0.1
    assert (np.abs(st_onnx.std - st.std) / scale).max() < 0.1
    a = onnx.adapt(st).predict(clips[1], sample_rate=16000).probabilities
    b = rec.adapt(st).predict(clips[1], sample_rate=16000).probabilities
    assert max(abs(a[k] - b[k]) for k in a) < 2e-3
    assert a != onnx.predict(clips[1], sample_rate=16000).probabilities


def test_segments_adapted_to_the_recording(rec, tmp_path):
    """--adapt recording: the recording's speech windows give its statistics (first pass), and
    each window is normalised with them (second pass)."""
    rng = np.random.default_rng(3)
    parts = []
    for i in range(7):
        parts += [speechlike(1.5 + 0.2 * i, 60 + i), 3e-4 * rng.standard_normal(8000)]
    x = np.concatenate(parts).astype(np.float32)
    path = tmp_path / "talk.wav"
    sf.write(path, x, 16000)
    plain = rec.segments(path)
    adapted = rec.segments(path, adapt=True)
    st = rec.recording_stats(path)
    assert st is not None and st.usable and st.clips == len(plain) >= 5
    assert [(s.start, s.end) for s in adapted] == [(s.start, s.end) for s in plain]
    want = rec.adapt(st).segments(path)
    assert [s.probabilities for s in adapted] == [s.probabilities for s in want]
    assert [s.probabilities for s in adapted] != [s.probabilities for s in plain]
    with open(path, "rb") as f:  # a seekable file object is read twice
        assert [s.label for s in rec.segments(f, adapt=True)] == [s.label for s in adapted]
    out = tmp_path / "seg.csv"
    r = _stlser("predict", "--model", str(BASE / "base.pt"), "--segments", "--adapt",
                "recording", str(path), "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    labels = [row["label"] for row in csv.DictReader(open(out))]
    assert labels == [s.label for s in adapted]
    r = _stlser("predict", "--adapt", "recording", str(path))
    assert r.returncode == 2 and "needs --segments" in r.stderr


def test_running_stats_equal_the_stats_of_every_clip():
    from stlser.adapt import RunningStats, SpeakerStats

    rng = np.random.default_rng(3)
    X = rng.normal(loc=5.0, scale=[0.1, 3.0, 100.0], size=(23, 3))
    X[4, 1] = np.nan  # a non-finite value counts as 0, as in from_functionals
    run = RunningStats(3, ["compact"], "s1")
    for a, b in ((0, 1), (1, 9), (9, 10), (10, 23)):
        run.add(X[a:b], seconds=1.5 * (b - a))
    got, want = run.stats(), SpeakerStats.from_functionals(X, 1.5 * 23, ["compact"], "s1")
    assert got.clips == want.clips == 23 and got.seconds == pytest.approx(want.seconds)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(got.std, want.std, rtol=1e-5)
    with pytest.raises(ValueError, match="3 values"):
        run.add(np.zeros((1, 4)), 1.0)


def _wav(x: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_service_speaker_token_adapts_and_never_leaks(rec, clips):
    """A token's clips accumulate into that speaker's statistics; from the minimum on the
    answer is the recognizer's adapted to exactly those clips; another client (address) cannot
    use or probe the token, and its own answers stay global."""
    from starlette.testclient import TestClient

    from stlser.service.app import create_app

    app = create_app(rec)
    a = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.1", 1000))
    b = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.2", 1000))
    assert a.get("/health").json()["adaptable"] is True
    token = a.post("/speakers").json()["speaker"]
    for i, x in enumerate(clips):
        r = a.post(f"/predict?speaker={token}", files={"file": ("c.wav", _wav(x))})
        assert r.status_code == 200, r.text
        info = r.json()["speaker"]
        assert info["clips"] == i + 1 and info["adapted"] == (i + 1 >= adapt.MIN_CLIPS)
    stats = rec.speaker_stats(clips, 16000)
    assert stats.usable
    want = rec.predict(clips[-1], 16000, speaker=stats).probabilities
    got = r.json()["probabilities"]
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4
    # the other client: the token is unknown to it, the same answer as for a made-up one
    for t in (token, "made-up-token"):
        other = b.post(f"/predict?speaker={t}", files={"file": ("c.wav", _wav(clips[0]))})
        assert other.status_code == 404 and "unknown speaker token" in other.json()["error"]
        assert b.delete(f"/speakers/{t}").status_code == 404
    plain = b.post("/predict", files={"file": ("c.wav", _wav(clips[-1]))}).json()
    glob = rec.predict(clips[-1], 16000).probabilities
    assert "speaker" not in plain
    assert max(abs(plain["probabilities"][k] - glob[k]) for k in glob) < 1e-4
    assert a.delete(f"/speakers/{token}").json() == {"deleted": True}
    assert a.post(f"/predict?speaker={token}", content=_wav(clips[0])).status_code == 404


def test_speaker_tokens_are_bounded_and_expire():
    from stlser.service.speakers import SpeakerTokens, UnknownSpeaker

    now = [0.0]
    reg = SpeakerTokens(
        3, ["compact"], per_client=2, total=3, idle_seconds=10, clock=lambda: now[0]
    )
    t1, t2 = reg.create("a"), reg.create("a")
    t3 = reg.create("a")  # a third for the same client drops its oldest
    with pytest.raises(UnknownSpeaker):
        reg.check(t1, "a")
    reg.check(t2, "a")
    u1, u2 = reg.create("b"), reg.create("c")  # the registry is full at 3: LRU (t3) dropped
    assert len(reg) == 3
    with pytest.raises(UnknownSpeaker):
        reg.check(t3, "a")
    st = reg.add(u1, "b", np.ones((1, 3)), 2.0)
    assert st.clips == 1 and st.seconds == 2.0
    now[0] = 11.0  # u2 unused for 11 s: expired; u1 too
    with pytest.raises(UnknownSpeaker):
        reg.check(u2, "c")
    assert len(reg) == 0


def test_stream_with_running_statistics(rec):
    """`stream(adapt=True)`: global statistics until the adaptation minimum, then each window
    is normalised with the (shrunk) statistics of every window so far."""
    x = speechlike(12.0, 9)
    plain = list(rec.stream([x], 16000, window=3.0, hop=1.0))
    got = list(rec.stream([x[:50_000], x[50_000:]], 16000, window=3.0, hop=1.0, adapt=True))
    assert [(s.start, s.end) for s in got] == [(s.start, s.end) for s in plain]
    waves = [x[int(s.start * 16000) : int(s.end * 16000)] for s in plain]
    X = np.concatenate([rec._functionals_of([w]) for w in waves])
    for k, (g, p) in enumerate(zip(got, plain, strict=True)):
        stats = SpeakerStats.from_functionals(X[: k + 1], g.end, rec.functional_sets)
        if not stats.usable:
            assert g.probabilities == pytest.approx(p.probabilities, abs=1e-6), k
        else:
            want = rec.adapt(stats).probabilities([waves[k]])[0]
            assert list(g.probabilities.values()) == pytest.approx(list(want), abs=1e-5), k
    assert any(g.probabilities != p.probabilities for g, p in zip(got, plain, strict=True))
