"""The torch descriptor / functional front end (stlser.features.descriptors, .voice, .functionals):
known signals give the analytic values, padding and batching change nothing, output is finite
for degenerate input, and the ONNX graph equals torch."""

from __future__ import annotations

import functools
import io
import logging
import warnings

import numpy as np
import pytest
import torch

from stlser.features.descriptors import HOP, STATIC_NAMES, Descriptors, frame_count
from stlser.features.functionals import SETS, FunctionalFrontEnd, masked_functionals
from stlser.testing import speechlike

SR = 16000


@functools.lru_cache(maxsize=1)
def _desc() -> Descriptors:
    return Descriptors().eval()


@functools.lru_cache(maxsize=2)
def _fe(name: str) -> FunctionalFrontEnd:
    return FunctionalFrontEnd(name).eval()


def _lld(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Static + delta LLDs [T, F] and the voiced flags [T] of one clip."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)[None]
    m = _desc()
    with torch.inference_mode():
        lld, frames, voiced = m(x, torch.tensor([x.shape[1]]))
    n = int(frames[0])
    return lld[0, :n], voiced[0, :n], m.names


def _col(lld: torch.Tensor, names: list[str], name: str) -> torch.Tensor:
    return lld[:, names.index(name)]


def _t(seconds: float) -> torch.Tensor:
    return torch.arange(int(seconds * SR), dtype=torch.float64) / SR


def test_names_and_set_sizes():
    fe = FunctionalFrontEnd("+".join(SETS))
    assert len(fe.names) == sum(fe.dims) and len(set(fe.names)) == len(fe.names)
    assert fe.dims == [len(FunctionalFrontEnd(s).names) for s in SETS]
    size = dict(zip(SETS, fe.dims, strict=True))
    assert 80 <= size["compact"] <= 100 and 3000 <= size["large"] <= 7000
    assert 1000 <= size["medium"] <= 2500
    assert _desc().names == STATIC_NAMES + ["d_" + n for n in STATIC_NAMES]
    with pytest.raises(ValueError):
        FunctionalFrontEnd("nope")


@pytest.mark.parametrize("f0", [150.0, 220.0])
def test_sine_f0_within_2_percent(f0):
    lld, voiced, names = _lld(0.3 * torch.sin(2 * np.pi * f0 * _t(1.0)))
    assert voiced.float().mean() > 0.9
    st = _col(lld, names, "f0_semitone")[voiced]
    hz = 27.5 * 2 ** (st / 12)
    assert abs(float(hz.median()) / f0 - 1) < 0.02
    assert float((hz / f0 - 1).abs().max()) < 0.02


def test_chirp_centroid_rises_and_band_noise_centroid_at_band_centre():
    t = _t(2.0)
    f = 300 + 1350 * t  # 300 Hz → 3 kHz
    lld, _, names = _lld(0.3 * torch.sin(2 * np.pi * torch.cumsum(f, 0) / SR))
    cen = _col(lld, names, "spectral_centroid")[3:-3].double()
    assert float(torch.corrcoef(torch.stack([cen, torch.arange(len(cen)).double()]))[0, 1]) > 0.99
    assert float(cen[:10].mean()) < 0.6 and float(cen[-10:].mean()) > 2.6  # kHz
    g = np.random.default_rng(0)
    spec = np.fft.rfft(g.standard_normal(2 * SR))
    freqs = np.fft.rfftfreq(2 * SR, 1 / SR)
    spec[(freqs < 1000) | (freqs > 2000)] = 0
    lld, _, names = _lld(0.1 * np.fft.irfft(spec))
    assert abs(float(_col(lld, names, "spectral_centroid")[5:-5].mean()) - 1.5) < 0.1


def test_flatness_white_noise_vs_sine():
    g = np.random.default_rng(1)
    lld, voiced, names = _lld(0.1 * g.standard_normal(2 * SR))
    flat = float(_col(lld, names, "spectral_flatness")[3:-3].mean())
    # Gaussian white noise: magnitudes are Rayleigh, whose geometric / arithmetic mean is 0.886;
    # the Hamming window's correlated bins bring the frame average a little lower.
    assert 0.8 < flat < 0.9
    assert voiced.float().mean() < 0.05
    lld, _, names = _lld(0.3 * torch.sin(2 * np.pi * 440 * _t(1.0)))
    assert float(_col(lld, names, "spectral_flatness")[3:-3].mean()) < 0.1


def test_pulse_train_has_no_jitter():
    x = torch.zeros(2 * SR)
    x[::128] = 0.5  # 125 Hz
    lld, voiced, names = _lld(x)
    assert voiced.float().mean() > 0.9
    hz = 27.5 * 2 ** (_col(lld, names, "f0_semitone")[voiced] / 12)
    assert abs(float(hz.median()) - 125.0) < 1.0
    assert float(_col(lld, names, "jitter")[voiced].mean()) < 1e-3


def _pulses(period_sd: float, seconds: float = 2.0, period: float = 128.0) -> np.ndarray:
    """Band-limited pulses (windowed sinc) at fractional positions whose periods (samples at
    16 kHz) are drawn i.i.d. from N(period, period_sd²); returns (signal, periods)."""
    g = np.random.default_rng(0)
    n = int(seconds * SR)
    per = period + g.normal(0, period_sd, int(n / period) + 5)
    pos = np.cumsum(per)
    per, pos = per[1 : (pos < n - 80).sum()], pos[pos < n - 80]
    x = np.zeros(n)
    w = np.arange(-80, 80)
    for p in pos:  # 2 kHz band limit, like a voice source's steep spectral tilt
        i = int(p)
        if i >= 80:
            x[i + w] += np.sinc((i + w - p) * 0.25) * np.hanning(160)
    return 0.3 * x, per


def test_cycle_jitter_tracks_period_perturbation():
    """Local jitter of i.i.d. periods: E|ΔP| / P (0.44 % and 0.88 % here); measured within
    0.8-1.2× of it, and ≈ 0 for a strictly periodic train."""
    got = []
    for sd in (0.0, 0.5, 1.0):
        x, per = _pulses(sd)
        lld, voiced, names = _lld(x)
        assert voiced.float().mean() > 0.9
        got.append(float(_col(lld, names, "jitter")[voiced].mean()))
        if sd:
            expected = float(np.mean(np.abs(np.diff(per))) / 128.0)
            assert 0.8 < got[-1] / expected < 1.2, (sd, got[-1], expected)
    assert got[0] < 1e-3 and got[0] < got[1] < got[2]


def test_formants_of_a_synthetic_vowel():
    """A 125 Hz pulse train through resonators at 700 / 1200 / 2600 Hz (an /a/-like vowel)."""
    from scipy.signal import lfilter

    x = np.zeros(SR)
    x[::128] = 1.0
    for f, bw in ((700, 80), (1200, 90), (2600, 120)):
        r = np.exp(-np.pi * bw / SR)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r], x)
    lld, voiced, names = _lld(0.3 * x / np.abs(x).max())
    for i, f in enumerate((0.7, 1.2, 2.6)):
        got = float(_col(lld, names, f"formant{i + 1}")[voiced].median())
        assert abs(got / f - 1) < 0.1, (i + 1, got)


def test_h1_h2_of_two_harmonics():
    t = _t(1.0)
    x = 0.3 * torch.sin(2 * np.pi * 250 * t) + 0.1 * torch.sin(2 * np.pi * 500 * t)
    lld, voiced, names = _lld(x)
    got = float(_col(lld, names, "h1_h2")[voiced].median())
    assert abs(got - 20 * np.log10(3.0)) < 0.5


def test_shimmer_follows_am_depth():
    """AM 1 + m sin(2π·8t) on a 200 Hz carrier: period-to-period relative amplitude change
    averages 4 m f_m / F0 = 0.16 m."""
    t = _t(2.0)
    got = []
    for depth in (0.05, 0.1, 0.2, 0.4):
        x = (1 + depth * torch.sin(2 * np.pi * 8 * t)) * 0.3 * torch.sin(2 * np.pi * 200 * t)
        lld, voiced, names = _lld(x)
        got.append(float(_col(lld, names, "shimmer")[voiced].mean()))
        if depth >= 0.1:
            assert 0.9 < got[-1] / (0.16 * depth) < 1.4, (depth, got[-1])
    assert all(a < b for a, b in zip(got, got[1:], strict=False))


def test_padding_and_batching_change_nothing():
    clips = [speechlike(s, i) for i, s in enumerate([0.5, 1.3, 2.1])]
    fe = _fe("compact+large")
    n = max(len(c) for c in clips) + 1234
    wave = torch.zeros(len(clips), n)
    for i, c in enumerate(clips):
        wave[i, : len(c)] = torch.from_numpy(c)
        wave[i, len(c) :] = 0.5  # garbage beyond the length must not matter
    lengths = torch.tensor([len(c) for c in clips])
    with torch.inference_mode():
        batch = fe(wave, lengths)
        for i, c in enumerate(clips):
            alone = fe(torch.from_numpy(c)[None], lengths[i : i + 1])[0]
            err = (batch[i] - alone).abs() / (1 + alone.abs())
            assert float(err.max()) < 1e-5, fe.names[int(err.argmax())]
        lld, frames, _ = _desc()(wave, lengths)
    assert frames.tolist() == frame_count(lengths).tolist() == [len(c) // HOP + 1 for c in clips]
    assert float(lld[0, int(frames[0]) :].abs().max()) == 0.0


def test_deterministic():
    x = torch.from_numpy(speechlike(1.5, 3))[None]
    fe = _fe("compact+large")
    with torch.inference_mode():
        a, b = fe(x, torch.tensor([x.shape[1]])), fe(x.clone(), torch.tensor([x.shape[1]]))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kind", ["silence", "short", "dc", "loud", "clipped", "tiny", "impulse", "nyquist"]
)
def test_finite_on_degenerate_input(kind):
    n = SR
    x = {
        "silence": torch.zeros(n),
        "short": torch.from_numpy(speechlike(0.25, 0)),
        "dc": torch.full((n,), 0.7),
        "loud": 40.0 * torch.from_numpy(speechlike(1.0, 1)),
        "clipped": torch.sign(torch.sin(2 * np.pi * 100 * _t(1.0))).float(),
        "tiny": torch.tensor([0.1, -0.2, 0.3]),
        "impulse": torch.nn.functional.one_hot(torch.tensor(8000), n).float(),
        "nyquist": torch.tensor([1.0, -1.0]).repeat(n // 2),
    }[kind].float()
    fe = _fe("compact+large")
    with torch.inference_mode():
        y = fe(x[None], torch.tensor([len(x)]))
    assert y.shape == (1, sum(fe.dims)) and y.dtype == torch.float32
    assert bool(torch.isfinite(y).all())


def test_masked_functionals_match_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 3, generator=g)
    mask = torch.rand(2, 50, 3, generator=g) > 0.3
    out = masked_functionals(x, mask, torch.tensor([50, 50]))
    from stlser.features.functionals import FUNCTIONALS

    for b in range(2):
        for f in range(3):
            v = x[b, mask[b, :, f], f].double().numpy()
            row = dict(zip(FUNCTIONALS, out[b, f].tolist(), strict=True))
            assert row["mean"] == pytest.approx(v.mean(), abs=1e-5)
            assert row["std"] == pytest.approx(v.std(), abs=1e-5)
            for q in (1, 20, 50, 80, 99):
                assert row[f"p{q}"] == pytest.approx(np.percentile(v, q), abs=1e-5)
            t = np.nonzero(mask[b, :, f].numpy())[0] * 0.01
            slope, offset = np.polyfit(t, v, 1)
            assert row["lin_slope"] == pytest.approx(slope, abs=1e-3)
            assert row["lin_offset"] == pytest.approx(offset, abs=1e-3)
            qa = np.polyfit((t - t.mean()) / 0.5, v, 2)  # time in clip durations (50 frames)
            assert [row["quad_a"], row["quad_b"], row["quad_c"]] == pytest.approx(qa, abs=1e-3)
    empty = masked_functionals(x, torch.zeros_like(mask), torch.tensor([50, 50]))
    assert float(empty.abs().max()) == 0.0


@pytest.mark.slow
def test_onnx_parity_at_half_3_and_17_seconds():
    """dynamo export of the compact set; parity with torch, |Δ| / (1 + |torch|) < 1e-4 (relative
    for values above 1, absolute below) except the jitter functionals (< 5e-3)."""
    ort = pytest.importorskip("onnxruntime")
    fe = _fe("compact")
    g = torch.Generator().manual_seed(0)
    ex = (0.1 * torch.randn(2, 24000, generator=g), torch.tensor([24000, 16000]))
    batch = torch.export.Dim("batch", min=1, max=1024)
    samples = torch.export.Dim("samples", min=SR // 4, max=SR * 600)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), io.StringIO() as sink:
        warnings.simplefilter("ignore")
        import contextlib

        with contextlib.redirect_stdout(sink):
            prog = torch.onnx.export(
                fe,
                ex,
                None,
                dynamo=True,
                opset_version=18,
                dynamic_shapes={"wave": {0: batch, 1: samples}, "lengths": {0: batch}},
                input_names=["wave", "lengths"],
                output_names=["functionals"],
                optimize=False,
                external_data=False,
            )
    sess = ort.InferenceSession(
        prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for seconds in (0.5, 3.0, 17.0):
        lengths = [int(seconds * SR), int(seconds * SR * 0.7), SR // 4]
        wave = torch.zeros(3, lengths[0])
        for i, n in enumerate(lengths):
            wave[i, :n] = torch.from_numpy(speechlike(n / SR, 10 + i))
        (got,) = sess.run(None, {"wave": wave.numpy(), "lengths": np.array(lengths)})
        with torch.inference_mode():
            ref = fe(wave, torch.tensor(lengths)).numpy()
        err = np.abs(got - ref) / (1 + np.abs(ref))
        # Jitter is a small difference of per-cycle periods from float32 costs that cancel
        # heavily; its functionals agree to ~1e-3 (measured ≤ 8e-4), every other value to 1e-4.
        jit = np.array(["jitter" in n for n in fe.names])
        others = [n for n, j in zip(fe.names, jit, strict=True) if not j]
        worst = others[int(err[:, ~jit].argmax()) % len(others)]
        assert err[:, ~jit].max() < 1e-4, (seconds, float(err[:, ~jit].max()), worst)
        assert err[:, jit].max() < 5e-3, (seconds, float(err[:, jit].max()))


def test_moments_and_step_functionals_do_not_depend_on_scale_or_rounding():
    """Skewness and kurtosis are scale-free (spectral flux is ~1e-3: its kurtosis must not be
    swamped by a fixed epsilon); a constant series has none; a change of float rounding size
    does not count as a rise, a fall or a peak."""
    from stlser.features.functionals import FUNCTIONALS

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, 1, generator=g) ** 3  # skewed, heavy-tailed
    mask = torch.ones_like(x, dtype=torch.bool)
    frames = torch.tensor([200])
    col = {n: i for i, n in enumerate(FUNCTIONALS)}
    big = masked_functionals(x, mask, frames)[0, 0]
    small = masked_functionals(1e-4 * x, mask, frames)[0, 0]
    for name in ("skewness", "kurtosis", "rise_time", "fall_time", "peak_rate"):
        assert float(small[col[name]]) == pytest.approx(float(big[col[name]]), rel=1e-4), name
    v = x[0, :, 0].numpy().astype(np.float64)
    assert float(big[col["kurtosis"]]) == pytest.approx(
        ((v - v.mean()) ** 4).mean() / v.var() ** 2, rel=1e-3
    )
    flat = torch.full((1, 50, 1), 0.3)
    out = masked_functionals(flat, torch.ones_like(flat, dtype=torch.bool), torch.tensor([50]))
    for name in ("skewness", "kurtosis", "rise_time", "fall_time", "peak_rate"):
        assert float(out[0, 0, col[name]]) == 0.0, name
    steps = torch.tensor([0.0, 0.0, 0.5, 0.5 + 1e-6, 0.5, 1.0]).view(1, -1, 1)
    out = masked_functionals(steps, torch.ones_like(steps, dtype=torch.bool), torch.tensor([6]))
    assert float(out[0, 0, col["rise_time"]]) == pytest.approx(2 / 5)  # 0→0.5, 0.5→1
    assert float(out[0, 0, col["fall_time"]]) == 0.0  # 1e-6 of the range is flat
    tied = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.5, 1.0]).view(1, -1, 1)
    ref = masked_functionals(tied, torch.ones_like(tied, dtype=torch.bool), torch.tensor([6]))
    for name in ("rise_time", "fall_time", "peak_rate", "peak_distance"):
        assert float(out[0, 0, col[name]]) == float(ref[0, 0, col[name]]), name  # as if tied


def test_relative_level_leaves_only_the_level_functionals_to_the_gain():
    """Clips with digital-silence pauses, played 40 dB quieter and 10 dB louder: relative to
    the clip's level, every functional but the level ones stays (the few that move are step
    functionals of jitter crossing a threshold by float rounding), the level ones move by
    exactly the gain; with the fixed floors, most of the others move too."""
    from stlser.features.functionals import clips_functionals
    from stlser.featuresets import level_columns

    def clip(seed: int) -> np.ndarray:
        x = speechlike(0.6, seed)
        y = speechlike(0.5, seed + 10)
        return np.concatenate([x, np.zeros(3200, np.float32), y, np.zeros(1600, np.float32)])

    waves = [clip(s) for s in range(4)]
    for name, fixed in (("compact+large/relative", False), ("compact+large", True)):
        names = _fe(name).names
        level = np.logical_or(*level_columns(names))
        a = np.stack(clips_functionals(waves, name)).astype(np.float64)
        spread = a.std(0) + 1e-6
        for gain in (0.01,) if fixed else (0.01, 3.0):
            b = np.stack(clips_functionals([gain * w for w in waves], name)).astype(np.float64)
            moved = (np.abs(b - a) / spread)[:, ~level] > 0.05
            if fixed:
                assert moved.mean() > 0.2
                continue
            assert moved.mean() < 0.005, np.asarray(names)[~level][moved.any(0)][:5]
            bad = [n for n in np.asarray(names)[~level][moved.any(0)] if "jitter" not in n]
            assert not bad
            j = names.index("large:log_energy_mean")
            np.testing.assert_allclose(b[:, j] - a[:, j], 2 * np.log(gain), atol=1e-4)
            j = names.index("large:rms_mean")
            np.testing.assert_allclose(b[:, j] / a[:, j], gain, rtol=1e-4)


def test_frame_signal_equals_indexed_frames():
    from stlser.features.voice import frame_signal

    x = torch.randn(2, 1234, generator=torch.Generator().manual_seed(1))
    for n_frames, width, hop in ((7, 400, 160), (20, 467, 80), (30, 80, 80), (1, 50, 160)):
        idx = torch.arange(n_frames)[:, None] * hop + torch.arange(width)[None, :]
        padded = torch.nn.functional.pad(x, (0, int(idx.max()) + 1))
        torch.testing.assert_close(frame_signal(x, n_frames, width, hop), padded[:, idx])


def test_exported_arithmetic_gives_the_eager_descriptors(monkeypatch):
    """An exported graph computes the STFT and YIN's correlation as products with fixed
    matrices (YIN's from hop-long blocks) instead of FFTs: the same descriptors to float
    rounding, and the same voiced frames."""
    from stlser.features import descriptors, voice

    d = Descriptors().eval()
    lengths = torch.tensor([int(3.0 * SR), int(0.5 * SR)])
    wave = torch.zeros(2, int(lengths[0]))
    for i, n in enumerate(lengths.tolist()):
        wave[i, :n] = torch.from_numpy(speechlike(n / SR, 20 + i))
    with torch.inference_mode():
        eager, _, v_eager = d(wave, lengths)
        monkeypatch.setattr(voice, "exporting", lambda: True)
        monkeypatch.setattr(descriptors, "exporting", lambda: True)
        graph, _, v_graph = d(wave, lengths)
    assert torch.equal(v_eager, v_graph)
    scale = eager.abs().amax(1, keepdim=True) + 1e-6  # per clip and descriptor
    assert float(((graph - eager).abs() / scale).max()) < 2e-4
