"""The built-in synthetic corpus: layout, manifest, audio format, determinism, prosody by class."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stlser import synth


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.wav"))
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Three tiny corpora: seed 0 twice (one and two workers) and seed 1."""
    out = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 2), ("c", 1, 2)):
        d = tmp_path_factory.mktemp(f"synth_{name}")
        synth.generate(d, speakers=2, per_class=2, seed=seed, progress=False, workers=workers)
        out[name] = d
    return out


def test_layout_and_manifest(synth_corpus: Path) -> None:
    rows = _rows(synth_corpus / "manifest.csv")
    assert list(rows[0]) == list(synth.MANIFEST_COLUMNS)
    assert len(rows) == 4 * 4 * 6
    assert len({r["utt_id"] for r in rows}) == len(rows)
    for r in rows:
        p = Path(r["path"])
        assert p.is_absolute() and p.is_file()
        assert p == synth_corpus / "wav" / r["speaker"] / r["label"] / f"{r['utt_id']}.wav"
        assert r["utt_id"].startswith(f"{r['speaker']}_{r['label']}_")
        assert r["corpus"] == "synth" and r["session"] == "" and r["text"]
    speakers = sorted({r["speaker"] for r in rows})
    assert speakers == ["spk00", "spk01", "spk02", "spk03"]
    for s in speakers:  # all four classes, per_class each, for every speaker
        labels = [r["label"] for r in rows if r["speaker"] == s]
        assert {lab: labels.count(lab) for lab in set(labels)} == {lab: 6 for lab in synth.LABELS}
    table = _rows(synth_corpus / "speakers.csv")
    assert [t["speaker"] for t in table] == speakers
    assert [t["gender"] for t in table] == ["M", "F", "M", "F"]
    assert len({t["voice"] for t in table}) == 4
    gender = {t["speaker"]: t["gender"] for t in table}
    assert all(r["gender"] == gender[r["speaker"]] for r in rows)
    readme = (synth_corpus / "README.txt").read_text()
    assert "synthetic" in readme.lower() and "demos and tests only" in readme


def test_audio_format_and_duration(synth_corpus: Path) -> None:
    for r in _rows(synth_corpus / "manifest.csv"):
        info = sf.info(r["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 > 0.5
        assert abs(float(r["duration"]) - info.frames / 16000) < 1e-3
        x, _ = sf.read(r["path"], dtype="float32")
        assert 0.05 < np.abs(x).max() < 0.99


def test_same_text_across_classes(synth_corpus: Path) -> None:
    """Within a speaker every class speaks the same sentences, so text cannot give the label."""
    rows = _rows(synth_corpus / "manifest.csv")
    for s in {r["speaker"] for r in rows}:
        texts = {
            lab: sorted(r["text"] for r in rows if r["speaker"] == s and r["label"] == lab)
            for lab in synth.LABELS
        }
        assert all(t == texts["neutral"] for t in texts.values())
        assert set(texts["neutral"]) <= set(synth.load_sentences())


def test_deterministic_for_a_seed(tiny: dict[str, Path]) -> None:
    a, b, c = (_hashes(tiny[k]) for k in "abc")
    assert len(a) == 2 * 4 * 2
    assert a == b  # same seed, different worker count: byte-identical WAVs
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)  # other seed: all differ
    ma = (tiny["a"] / "manifest.csv").read_text().replace(str(tiny["a"]), "<out>")
    mb = (tiny["b"] / "manifest.csv").read_text().replace(str(tiny["b"]), "<out>")
    assert ma == mb
    assert (tiny["a"] / "speakers.csv").read_bytes() == (tiny["b"] / "speakers.csv").read_bytes()


def _speech_level_db(x: np.ndarray) -> float:
    """Level of the loud (speech) frames: 90th percentile of 25 ms frame RMS, in dB."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160]
    return float(20 * np.log10(np.percentile(np.sqrt((frames**2).mean(1)), 90)))


def _median_f0(x: np.ndarray, sr: int = 16000) -> float:
    """Median F0 of clearly voiced frames from a normalised autocorrelation peak."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 640)[::160]
    frames = frames - frames.mean(1, keepdims=True)
    energy = (frames**2).mean(1)
    frames = frames[energy > np.percentile(energy, 50)]
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 1280)) ** 2)[:, :640]
    ac = ac / (ac[:, :1] + 1e-12)
    lo, hi = sr // 400, sr // 60
    lag = lo + ac[:, lo:hi].argmax(1)
    voiced = ac[np.arange(lag.size), lag] > 0.5
    return float(np.median(sr / lag[voiced]))


def test_prosody_differs_by_class(synth_corpus: Path) -> None:
    """Angry is louder, higher and faster than sad for every speaker (Murray & Arnott 1993)."""
    rows = _rows(synth_corpus / "manifest.csv")
    for s in sorted({r["speaker"] for r in rows}):
        stats = {}
        for lab in ("sad", "angry"):
            xs = [
                sf.read(r["path"], dtype="float32")[0]
                for r in rows
                if r["speaker"] == s and r["label"] == lab
            ]
            stats[lab] = (
                np.mean([_speech_level_db(x) for x in xs]),
                np.mean([_median_f0(x) for x in xs]),
                np.mean([x.size for x in xs]),
            )
        (sad_db, sad_f0, sad_n), (ang_db, ang_f0, ang_n) = stats["sad"], stats["angry"]
        assert ang_db > sad_db + 2.0, (s, ang_db, sad_db)
        assert ang_f0 > sad_f0 * 1.2, (s, ang_f0, sad_f0)
        assert ang_n < sad_n, (s, ang_n, sad_n)  # same sentences, spoken faster


def test_noise_and_tilt_helpers() -> None:
    rng = np.random.default_rng(0)
    for colour in ("white", "pink"):
        n = synth.make_noise(rng, 16000, colour)
        assert n.dtype == np.float32 and abs(float(np.sqrt(np.mean(n**2))) - 1) < 1e-3
    pink = np.abs(np.fft.rfft(synth.make_noise(rng, 16000, "pink"))) ** 2
    assert pink[50:500].mean() > 10 * pink[5000:8000].mean()  # 1/f: low bands dominate
    x = rng.standard_normal(16000).astype(np.float32)
    spec = np.abs(np.fft.rfft(synth.apply_tilt(x, 16000, 3.0))) / np.abs(np.fft.rfft(x))
    # +3 dB/octave around 1 kHz: 4 kHz up 6 dB (x2), 125 Hz down 9 dB (x0.35), 1 kHz unchanged
    np.testing.assert_allclose(spec[[4000, 125, 1000]], [2.0, 0.354, 1.0], rtol=0.01)
    assert synth.apply_tilt(x, 16000, 0.0) is x


def test_speaker_table_alternates_gender() -> None:
    table = synth.speaker_table(24)
    assert [g for _, g, _ in table[:4]] == ["M", "F", "M", "F"]
    assert table[23][0] == "spk23"
    assert len({v for _, _, v in table[:20]}) == 20


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        synth.generate("/nonexistent/never", speakers=0)
    with pytest.raises(ValueError):
        synth.generate("/nonexistent/never", per_class=0)


def test_missing_library_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "nope.so"))
    with pytest.raises(RuntimeError, match="library not found"):
        synth.generate(tmp_path / "out", speakers=1, per_class=1, progress=False)
    fake = tmp_path / "libespeak-ng.so"
    fake.write_text("not a shared library")
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(fake))
    with pytest.raises(RuntimeError, match="cannot load the eSpeak NG library"):
        synth.Engine()


def test_cli_synth(tmp_path: Path) -> None:
    from stlser import cli

    out = tmp_path / "corpus"
    stale = out / "wav" / "spk07" / "sad" / "spk07_sad_000.wav"  # from an earlier, larger run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    other = out / "wav" / "notes.txt"
    other.write_text("user file")
    rc = cli.main(["synth", "-o", str(out), "--speakers", "1", "--per-class", "1", "--seed", "3"])
    assert rc == 0
    rows = _rows(out / "manifest.csv")
    assert sorted(r["label"] for r in rows) == sorted(synth.LABELS)
    assert not stale.exists() and other.exists()
