"""Feature front end (shapes, frame formula, padding invariance, librosa parity, ONNX export),
the disk cache, and normalisation."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from stlser import features
from stlser.audio import AudioError
from stlser.config import FeatureConfig
from stlser.features import FeatureCache, LogMel, Normalizer, n_frames, normalize_all

SR = 16_000
EMODB = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "emodb" / "wav"


def noise(n: int, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def make_corpus(folder: Path, n: int = 4, seconds: float = 0.6) -> pd.DataFrame:
    """Tiny manifest of synthetic WAVs (noise + a tone, different per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        m = int(SR * (seconds + 0.1 * i))
        x = noise(m, seed=i) + 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(m) / SR)
        p = folder / f"u{i}.wav"
        sf.write(p, x.astype(np.float32), SR, subtype="PCM_16")
        rows.append(
            {
                "utt_id": f"u{i}",
                "path": str(p),
                "label": "x",
                "speaker": f"s{i % 2}",
                "duration": m / SR,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- front end
@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 4000, 16000, 16001, 23456])
def test_frame_count_formula(n):
    cfg = FeatureConfig()
    assert n_frames(n, cfg) == n // 160 + 1
    if n >= 4000:
        assert features.compute(noise(n), cfg).shape == (n // 160 + 1, 40)


def test_authors_preset_fixed_length():
    cfg = FeatureConfig(preset="authors")
    c = cfg
    assert (c.fft_size, c.hop_length, c.win_length, c.fixed_seconds) == (2048, 512, 2048, 10.0)
    assert n_frames(5000, cfg) == n_frames(400_000, cfg) == 160_000 // 512 + 1 == 313
    assert features.compute(noise(3 * SR), cfg).shape == (313, 40)
    assert features.compute(noise(12 * SR), cfg).shape == (313, 40)


@pytest.mark.parametrize("fft", [False, True])
def test_logmel_module_shapes_and_padding_invariance(fft):
    cfg = FeatureConfig()
    fe = LogMel(cfg, fft=fft).eval()
    lens = [8000, 12345, 4321]
    waves = [noise(n, seed=i) for i, n in enumerate(lens)]
    batch = np.full((3, max(lens)), 7.0, np.float32)  # garbage beyond each length must not matter
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        feats, frames = fe(torch.from_numpy(batch), torch.tensor(lens))
    assert feats.shape == (3, n_frames(max(lens), cfg), 40) and feats.dtype == torch.float32
    assert frames.dtype == torch.int64 and frames.tolist() == [n_frames(n, cfg) for n in lens]
    for i, w in enumerate(waves):
        alone = features.compute(w, cfg)
        t = int(frames[i])
        assert np.max(np.abs(feats[i, :t].numpy() - alone)) < 1e-5
        assert torch.all(feats[i, t:] == 0)
    # lengths beyond the row are clamped to it
    with torch.no_grad():
        _, fr = fe(torch.from_numpy(batch[:1, :8000]), torch.tensor([99999]))
    assert fr.tolist() == [n_frames(8000, cfg)]
    # no lengths: the whole row counts
    with torch.no_grad():
        f2, fr2 = fe(torch.from_numpy(batch[:1, :8000]))
    assert fr2.tolist() == [n_frames(8000, cfg)]
    assert np.max(np.abs(f2[0].numpy() - features.compute(waves[0], cfg))) < 1e-5


@pytest.mark.parametrize("preset,kw", [("authors", {}), ("default", {"win_length": 400})])
def test_librosa_parity(preset, kw):
    import librosa

    cfg = FeatureConfig(preset=preset)
    c = cfg
    y = noise(10 * SR, seed=3)
    ours = features.compute(y, cfg)  # fast rfft path
    with torch.no_grad():
        conv = LogMel(cfg)(torch.from_numpy(y)[None])[0][0].numpy()  # exportable conv1d path
    ref = librosa.feature.melspectrogram(
        y=y,
        sr=SR,
        n_fft=c.fft_size,
        hop_length=c.hop_length,
        n_mels=40,
        center=True,
        pad_mode="constant",
        **kw,
    )
    ref = np.log(ref + 1e-6).T
    assert ours.shape == ref.shape
    # |Δ log| bounds the relative error of the mel power
    assert np.max(np.abs(ours - ref)) < 1e-4
    assert np.max(np.abs(conv - ref)) < 1e-4


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [
        (16000, 512, 40, 0.0, None),
        (16000, 2048, 40, 0.0, None),
        (16000, 512, 64, 50.0, 7600.0),
        (22050, 1024, 80, 0.0, 8000.0),
    ],
)
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    import librosa

    ours = features.mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.allclose(ours, ref, rtol=1e-5, atol=1e-8)


def test_mfcc_is_orthonormal_dct_of_logmel():
    from scipy.fft import dct

    y = noise(SR, seed=5)
    lm = features.compute(y, FeatureConfig())
    mf = features.compute(y, FeatureConfig(kind="mfcc", n_mfcc=13))
    assert mf.shape == (lm.shape[0], 13)
    assert np.allclose(
        mf, dct(lm.astype(np.float64), type=2, norm="ortho", axis=1)[:, :13], atol=1e-4
    )
    assert FeatureConfig(kind="mfcc", n_mfcc=13).n_features == 13


def test_buffers_are_not_in_state_dict():
    assert LogMel(FeatureConfig()).state_dict() == {}
    assert LogMel(FeatureConfig(kind="mfcc"), fft=True).state_dict() == {}


@pytest.mark.slow
def test_onnx_export_dynamic_batch_and_length(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fe = LogMel(FeatureConfig(kind="mfcc")).eval()
    b, n = torch.export.Dim("batch"), torch.export.Dim("samples")
    out = tmp_path / "fe.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fe,
            (torch.randn(2, 8000), torch.tensor([8000, 5000])),
            str(out),
            dynamo=True,
            input_names=["wave", "lengths"],
            output_names=["feats", "frames"],
            dynamic_shapes=({0: b, 1: n}, {0: b}),
            opset_version=18,
        )
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape, lens in [((3, 12345), [12345, 3000, 7000]), ((1, 4000), [4000])]:
        w = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 0.1
        f, fr = sess.run(None, {"wave": w, "lengths": np.array(lens, np.int64)})
        with torch.no_grad():
            tf, tfr = fe(torch.from_numpy(w), torch.tensor(lens))
        assert f.shape == tuple(tf.shape) and fr.tolist() == tfr.tolist()
        assert np.max(np.abs(f - tf.numpy())) < 1e-3


# --------------------------------------------------------------------------------- eGeMAPS
def test_egemaps_lld_and_functionals():
    y = noise(SR, seed=2) + 0.3 * np.sin(2 * np.pi * 180 * np.arange(SR) / SR).astype(np.float32)
    cfg = FeatureConfig(kind="egemaps")
    lld = features.compute(y, cfg)
    assert lld.shape == (n_frames(SR, cfg), 25) == (96, 25) and lld.dtype == np.float32
    for n in (4000, 8007, 16001):
        assert features.compute(y[:n], cfg).shape == (n_frames(n, cfg), 25)
    fun = features.egemaps_functionals(y)
    assert fun.shape == (88,) and fun.dtype == np.float32 and np.all(np.isfinite(fun))


def test_functionals_cache_distinct_key(tmp_path):
    df = make_corpus(tmp_path / "wav", n=2)
    out = features.load_functionals(df, tmp_path / "cache", workers=1, progress=False)
    assert set(out) == {"u0", "u1"} and out["u0"].shape == (88,)
    fc, mc = (
        FeatureCache(tmp_path / "cache", FeatureConfig(kind="egemaps"), "functionals"),
        FeatureCache(tmp_path / "cache", FeatureConfig(kind="egemaps")),
    )
    assert fc.key(df.path[0]) != mc.key(df.path[0])
    assert np.array_equal(fc.get(df.path[0]), out["u0"])
    assert mc.get(df.path[0]) is None


# ----------------------------------------------------------------------------------- cache
def test_cache_hits_misses_and_invalidation(tmp_path, monkeypatch):
    df = make_corpus(tmp_path / "wav")
    cache = tmp_path / "cache"
    cfg = FeatureConfig()
    s1 = features.fill_cache(df, cfg, cache, workers=1, progress=False)
    assert (s1["n"], s1["hits"], s1["misses"]) == (4, 0, 4)
    assert s1["audio_seconds"] == pytest.approx(df.duration.sum())
    entries = sorted((cache).rglob("*.npy"))
    assert len(entries) == 4
    cfg_hash = FeatureCache(cache, cfg).config_hash
    assert all(
        e.parent.parent.name == cfg_hash and e.stem.startswith(e.parent.name) for e in entries
    )

    # a second run reads: computing is forbidden
    def boom(self, path):
        raise AssertionError(f"recomputed {path}")

    real_compute = FeatureCache.compute
    monkeypatch.setattr(FeatureCache, "compute", boom)
    s2 = features.fill_cache(df, cfg, cache, workers=1, progress=False)
    assert (s2["hits"], s2["misses"]) == (4, 0)
    feats = features.load_features(df, cfg, cache, workers=1, progress=False)
    assert feats["u2"].shape == (n_frames(int(df.duration[2] * SR), cfg), 40)
    assert (
        np.max(np.abs(feats["u0"] - features.compute(sf.read(df.path[0], dtype="float32")[0], cfg)))
        < 1e-6
    )
    # the normalisation mode does not change features: still hits
    assert features.fill_cache(df, FeatureConfig(normalize="global"), cache, workers=1)["hits"] == 4
    monkeypatch.setattr(FeatureCache, "compute", real_compute)

    # touching one file (new mtime) misses for that file only
    st = os.stat(df.path[1])
    os.utime(df.path[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    s3 = features.fill_cache(df, cfg, cache, workers=1, progress=False)
    assert (s3["hits"], s3["misses"]) == (3, 1)
    # a changed config misses everywhere and lives in its own folder
    s4 = features.fill_cache(df, FeatureConfig(n_mels=32), cache, workers=1, progress=False)
    assert (s4["hits"], s4["misses"]) == (0, 4)
    assert len({p.parent.parent for p in cache.rglob("*.npy")}) == 2
    # a corrupt entry is recomputed, not trusted
    c = FeatureCache(cache, cfg)
    entry = c.entry(c.key(df.path[3]))
    entry.write_bytes(b"garbage")
    s5 = features.fill_cache(df, cfg, cache, workers=1, progress=False)
    assert (s5["hits"], s5["misses"]) == (3, 1) and np.load(entry).shape[1] == 40
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    df = make_corpus(tmp_path / "wav", n=1)
    cache = tmp_path / "cache"

    def half_write(f, arr, *a, **k):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        features.load_features(df, FeatureConfig(), cache, workers=1, progress=False)
    assert not list(cache.rglob("*.npy")) and not [
        p for p in cache.rglob("*") if p.name.endswith(".tmp")
    ]


def test_process_pool_matches_in_process(tmp_path):
    df = make_corpus(tmp_path / "wav", n=6, seconds=0.4)
    cfg = FeatureConfig(kind="mfcc", n_mfcc=20)
    a = features.load_features(df, cfg, tmp_path / "c1", workers=2, progress=False)
    b = features.load_features(df, cfg, None, workers=1, progress=False)
    assert set(a) == set(b) == set(df.utt_id)
    for u in a:
        assert a[u].shape[1] == 20 and np.array_equal(a[u], b[u])
    assert len(list((tmp_path / "c1").rglob("*.npy"))) == 6


@pytest.mark.parametrize("workers", [1, 2])
def test_undecodable_file_raises_audio_error_naming_it(tmp_path, workers):
    df = make_corpus(tmp_path / "wav", n=5)
    bad = tmp_path / "wav" / "u3.wav"
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(AudioError) as e:
        features.load_features(df, FeatureConfig(), tmp_path / "c", workers=workers, progress=False)
    assert str(bad) in str(e.value) and "truncated" in str(e.value)


def test_format_stats():
    s = {
        "n": 535,
        "audio_seconds": 0.41 * 3600,
        "wall_seconds": 3.2,
        "hits": 0,
        "misses": 535,
        "x_realtime": 0.41 * 3600 / 3.2,
    }
    assert (
        features.format_stats(s)
        == "535 files, 0.41 h audio in 3.2 s: 461x real time (0 cached, 535 computed)"
    )


# --------------------------------------------------------------------------- normalisation
def _fake_feats():
    rng = np.random.default_rng(0)
    feats, rows = {}, []
    for spk, (mu, sd) in {"a": (5.0, 2.0), "b": (-3.0, 0.5), "c": (10.0, 4.0)}.items():
        for i in range(3):
            u = f"{spk}{i}"
            feats[u] = (mu + sd * rng.standard_normal((50 + 10 * i, 4))).astype(np.float32)
            rows.append({"utt_id": u, "speaker": spk})
    return feats, pd.DataFrame(rows)


def test_global_normaliser_fitted_on_train_only():
    feats, df = _fake_feats()
    train = [u for u in feats if u[0] in "ab"]
    out, norm = normalize_all(feats, df, "global", train)
    tr = np.concatenate([feats[u] for u in train])
    allf = np.concatenate(list(feats.values()))
    assert np.allclose(norm.mean, tr.mean(0), atol=1e-4) and np.allclose(
        norm.std, tr.std(0), atol=1e-4
    )
    assert not np.allclose(norm.mean, allf.mean(0), atol=0.5)
    z = np.concatenate([out[u] for u in train])
    assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-3)
    assert np.allclose(out["c0"], (feats["c0"] - norm.mean) / norm.std, atol=1e-5)
    assert feats["a0"].mean() > 3  # inputs are not modified in place


def test_speaker_normalisation_standardises_each_speaker():
    feats, df = _fake_feats()
    train = [u for u in feats if u[0] in "ab"]
    out, norm = normalize_all(feats, df, "speaker", train)
    for spk in "abc":
        z = np.concatenate([out[u] for u in out if u[0] == spk])
        assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-3)
    tr = np.concatenate([feats[u] for u in train])
    assert np.allclose(norm.mean, tr.mean(0), atol=1e-4)  # inference stats: training frames only
    # an unknown speaker at inference gets the global training statistics
    assert np.allclose(norm.transform(feats["c0"]), (feats["c0"] - norm.mean) / norm.std, atol=1e-5)


def test_utterance_and_none_modes_state_and_floor():
    feats, df = _fake_feats()
    out, _ = normalize_all(feats, df, "utterance", list(feats))
    for x in out.values():
        assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)
    out, norm = normalize_all(feats, df, "none", list(feats))
    assert all(np.array_equal(out[u], feats[u]) for u in feats)
    const = [np.full((20, 3), 2.0, np.float32)]
    n = Normalizer("global").fit(const, ["a"])
    assert np.allclose(n.std, 1e-5) and np.all(np.isfinite(n.transform(const[0])))
    s = n.state()
    assert set(s) == {"mode", "mean", "std"} and s["mean"].dtype == np.float32
    m = Normalizer.from_state(
        {"mode": "global", "mean": s["mean"].tolist(), "std": s["std"].tolist()}
    )
    assert np.array_equal(m.transform(const[0]), n.transform(const[0]))
    with pytest.raises(ValueError):
        Normalizer("bogus")


def test_normalize_all_with_a_trained_normaliser_and_no_train_ids():
    feats, df = _fake_feats()
    _, trained = normalize_all(feats, df, "global", ["a0", "a1"])
    out, norm = normalize_all(feats, df, "global", [], fitted=trained)
    assert np.array_equal(norm.mean, trained.mean)
    assert np.allclose(out["c1"], (feats["c1"] - trained.mean) / trained.std, atol=1e-5)
    # speaker mode needs no global statistics when every row names its speaker
    out, norm = normalize_all(feats, df, "speaker", [])
    z = np.concatenate([out[u] for u in out if u[0] == "b"])
    assert norm.mean is None and np.allclose(z.mean(0), 0, atol=1e-4)
    with pytest.raises(RuntimeError, match="not fitted"):
        normalize_all(feats, df.drop(columns="speaker"), "speaker", [])


# ---------------------------------------------------------------------------- real corpus
@pytest.mark.corpus
def test_emodb_fill_cache_twice_second_run_all_hits(tmp_path, shared_corpora):
    files = sorted(EMODB.glob("*.wav"))  # under shared_corpora (skipped where it is absent)
    assert len(files) == 535
    df = pd.DataFrame(
        {
            "utt_id": [f.stem for f in files],
            "path": [str(f) for f in files],
            "speaker": [f.stem[:2] for f in files],
            "label": [f.stem[5] for f in files],
            "duration": [sf.info(f).duration for f in files],
        }
    )
    cfg = FeatureConfig()
    s1 = features.fill_cache(df, cfg, tmp_path / "cache", workers=0, progress=False)
    assert (s1["hits"], s1["misses"]) == (0, 535)
    s2 = features.fill_cache(df, cfg, tmp_path / "cache", workers=0, progress=False)
    assert (s2["hits"], s2["misses"]) == (535, 0)
    assert s2["audio_seconds"] == pytest.approx(0.41 * 3600, rel=0.03)
    assert s2["x_realtime"] > s1["x_realtime"]
