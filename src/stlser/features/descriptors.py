"""Low-level descriptors (LLDs) per 10 ms frame, batched over clips of different lengths, in torch.

``Descriptors()(wave[B, N] float32, lengths[B] int64) -> (lld[B, T, F], frames[B], voiced[B, T])``
with ``T = N // 160 + 1`` and ``frames[b] = lengths[b] // 160 + 1``; ``names`` lists the F
descriptors: the static ones (:data:`STATIC_NAMES`) then their deltas (``"d_" + name``).
Samples at or beyond ``lengths[b]`` are treated as zeros, and every descriptor of frame ``t``
reads only the clip's own samples and frames ≤ ``t`` (or, for the deltas, the clip's own valid
frames), so a clip gives the same values alone as inside a padded batch. Values of frames at or
beyond ``frames[b]`` are 0. The module computes on the input as given (no int16 conversion), so
input with peaks above 1 gives larger but finite values; the decode boundary (``stlser.audio``)
is where such input is scaled down, with a warning.

Frames: 25 ms Hamming window (400 samples, 512-point FFT) centred on ``t * 10 ms``, zeros
outside the clip. Power spectrum ``P[k]`` normalised by the window's energy. Descriptors
(definitions from the papers named; no code from any implementation):

* energy: RMS and natural-log energy (``log(mean x² + 1e-10)``) of the 25 ms frame; loudness
  as the sum over 26 auditory (mel) bands of band power raised to 0.3 (Stevens' power law, the
  intensity-loudness step of Hermansky 1990 PLP, as in Schuller et al. 2013 ComParE); the
  zero-crossing rate (sign changes per sample).
* spectral shape (Peeters 2004, CUIDADO report; Schuller et al. 2013): flux (squared change of
  the L1-normalised magnitude spectrum from the previous frame), centroid, spread, skewness and
  kurtosis of the normalised power distribution (kHz), entropy (normalised to [0, 1]), flatness
  (geometric over arithmetic mean of the magnitude spectrum; 0.886 for Gaussian white noise,
  whose magnitudes are Rayleigh), slope (regression of the dB power on frequency, dB/kHz),
  roll-off points 25/50/75/90 % (kHz), harmonicity (mean dB of the spectral peaks minus mean dB
  of the valleys below 5 kHz); alpha ratio (dB energy 50-1000 Hz over 1-5 kHz) and Hammarberg
  index (strongest dB peak 0-2 kHz minus 2-5 kHz) of Eyben et al. 2016 (eGeMAPS).
* 26 log mel band energies (20 Hz-8 kHz, Slaney filters) and MFCC 1-14 (orthonormal DCT-II of
  the log mel energies). ``rasta=True`` filters the log band trajectories with the RASTA band
  pass ``0.1 (2 + z⁻¹ − z⁻³ − 2z⁻⁴) / (1 − 0.94 z⁻¹)`` (Hermansky & Morgan 1994) before the DCT,
  its pole realised as a causal FIR of :data:`RASTA_TAPS` frames.
* voice: F0 (semitones re 27.5 Hz, 0 when unvoiced), voicing probability, jitter, shimmer, HNR
  (:mod:`stlser.features.voice`: YIN, de Cheveigné & Kawahara 2002; Boersma 1993); formants
  F1-F3 (kHz, 0 when unvoiced) from an LPC envelope (:mod:`stlser.features.formants`); the
  harmonic differences H1-H2 and H1-A3 (dB; Hanson 1997, eGeMAPS).
* deltas: the 9-frame regression Δ of every static descriptor (``frontend.deltas``).

``relative_level=True`` makes every descriptor but the level ones independent of the clip's
gain: the clip is scaled to an RMS of :data:`LEVEL_REF` (over its valid samples) before
anything is computed, so the fixed floors above (``1e-10`` in the logarithms, the voicing
energy gate, the silent-frame tests) sit at a fixed distance below the clip's own level instead
of at a fixed absolute level, and the level descriptors (RMS, log energy, loudness, the log mel
bands) are then moved back by that scale, exactly. A clip played at another gain then gives the
same values but for those (which move by exactly the gain) and float rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stlser.features.dsp import dct_matrix, deltas, mel_filterbank
from stlser.features.formants import dft_matrices, formants, pre_emphasis_gain
from stlser.features.voice import (
    ST_REF,
    exporting,
    frame_signal,
    lowpass_taps,
    on_frames,
    rdft_matrix,
    voice_features,
    yin_dft_matrices,
)

SAMPLE_RATE = 16000
HOP = 160
WIN = 400
N_FFT = 512
N_MELS = 26
N_MFCC = 14
ENERGY_FLOOR = 1e-10
#: RMS (full scale = 1) a clip is scaled to under ``relative_level``, and the smallest clip
#: RMS scaled up to it (quieter clips, e.g. digital silence, get the largest gain).
LEVEL_REF = 0.1
LEVEL_MIN_RMS = 1e-6
RASTA_POLE = 0.94
RASTA_TAPS = 64
ROLLOFFS = (0.25, 0.5, 0.75, 0.9)

SPECTRAL_NAMES = [
    "spectral_flux",
    "spectral_centroid",
    "spectral_spread",
    "spectral_skewness",
    "spectral_kurtosis",
    "spectral_entropy",
    "spectral_flatness",
    "spectral_slope",
    *[f"spectral_rolloff{int(q * 100)}" for q in ROLLOFFS],
    "spectral_harmonicity",
    "alpha_ratio",
    "hammarberg_index",
]
ENERGY_NAMES = ["rms", "log_energy", "loudness", "zcr"]
VOICE_NAMES = ["f0_semitone", "voicing_prob", "jitter", "shimmer", "hnr"]
FORMANT_NAMES = ["formant1", "formant2", "formant3", "h1_h2", "h1_a3"]
STATIC_NAMES = [
    *ENERGY_NAMES,
    *SPECTRAL_NAMES,
    *[f"mel{i + 1:02d}" for i in range(N_MELS)],
    *[f"mfcc{i + 1}" for i in range(N_MFCC)],
    *VOICE_NAMES,
    *FORMANT_NAMES,
]
#: Descriptors defined on voiced frames only (their functionals use voiced frames).
VOICED_ONLY = ("f0_semitone", "jitter", "shimmer", "hnr", *FORMANT_NAMES)


def frame_count(lengths: Tensor) -> Tensor:
    """Valid frames of clips of `lengths` samples (int64 tensor): ``lengths // HOP + 1``."""
    return lengths // HOP + 1


def rasta_fir(n: int = RASTA_TAPS, pole: float = RASTA_POLE) -> np.ndarray:
    """Impulse response (first n taps) of the RASTA band pass (Hermansky & Morgan 1994)."""
    num = 0.1 * np.array([2.0, 1.0, 0.0, -1.0, -2.0])
    h = np.zeros(n)
    for i in range(n):
        acc = num[i] if i < len(num) else 0.0
        h[i] = acc + (pole * h[i - 1] if i else 0.0)
    return h.astype(np.float32)


def _local_peaks(x: Tensor, tol: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Boolean masks of local maxima and minima of x[..., K] along the last axis (interior);
    steps below `tol` count as flat, so float rounding cannot make or break a peak."""
    left = x[..., 1:-1] - x[..., :-2]
    right = x[..., 1:-1] - x[..., 2:]
    pad = torch.zeros_like(x[..., :1], dtype=torch.bool)
    peaks = torch.cat([pad, (left > tol) & (right >= -tol), pad], dim=-1)
    valleys = torch.cat([pad, (left < -tol) & (right <= tol), pad], dim=-1)
    return peaks, valleys


class Descriptors(nn.Module):
    """Waveform → frame-level LLDs and their deltas (module docstring); ONNX-exportable.

    ``forward(wave[B, N], lengths[B]) -> (lld[B, T, F], frames[B] int64, voiced[B, T] bool)``.
    """

    def __init__(
        self, rasta: bool = False, with_deltas: bool = True, relative_level: bool = False
    ) -> None:
        super().__init__()
        self.rasta = bool(rasta)
        self.relative_level = bool(relative_level)
        self.with_deltas = bool(with_deltas)
        self.static_names = list(STATIC_NAMES)
        self.names = self.static_names + (
            ["d_" + n for n in self.static_names] if with_deltas else []
        )
        win = np.hamming(WIN + 1)[:WIN]
        freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE) / 1000.0  # kHz
        bufs = {
            "window": win.astype(np.float32),
            "freqs": freqs.astype(np.float32),
            "mel_fb": mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 20.0, 8000.0),
            "dct": dct_matrix(N_MELS, N_MFCC + 1)[:, 1:],
            "taps": lowpass_taps(),
            "rasta_h": rasta_fir()[::-1].copy(),
            "emphasis": pre_emphasis_gain(freqs),
        }
        fc = freqs - freqs.mean()
        step = np.full_like(freqs, freqs[1])  # roll-off: bins below the point × bin width
        bufs["fpow"] = np.stack([freqs**i for i in range(1, 5)], axis=1).astype(np.float32)
        bufs["fslope"] = (fc / (fc * fc).sum()).astype(np.float32)
        bufs["fstep"] = step.astype(np.float32)
        bufs["alpha_bands"] = np.stack(
            [(freqs >= 0.05) & (freqs < 1.0), (freqs >= 1.0) & (freqs < 5.0)], axis=1
        ).astype(np.float32)
        self.n_harm_bins = int((freqs <= 5.0).sum())
        self.n_ham_lo = int((freqs <= 2.0).sum())
        bufs.update({f"dft_{k}": v for k, v in dft_matrices(N_FFT).items()})
        # used only while exporting (voice.exporting): the DFTs as products with fixed matrices
        bufs["stft"] = rdft_matrix(WIN, N_FFT, win)
        bufs.update(yin_dft_matrices(HOP // 2))
        for k, v in bufs.items():
            self.register_buffer(k, torch.from_numpy(np.ascontiguousarray(v)), persistent=False)
        self.win_energy = float((win**2).sum())

    @property
    def _dft(self) -> dict[str, Tensor]:
        return {"acf": self.dft_acf, "cos": self.dft_cos, "sin": self.dft_sin}

    @property
    def _yin(self) -> dict[str, Tensor]:
        return {"yin_e": self.yin_e, "yin_inv": self.yin_inv}

    def _power(self, fr: Tensor) -> Tensor:
        """Power spectrum [B, T, K] of the Hamming-windowed frames fr[B, T, WIN], normalised by
        the window's energy: an FFT in eager torch, a product with a fixed matrix when exported."""
        if exporting():
            spec = torch.matmul(fr, self.stft)
            k = N_FFT // 2 + 1
            re, im = spec[..., :k], spec[..., k:]
        else:
            spec = torch.fft.rfft(fr * self.window, n=N_FFT)
            re, im = spec.real, spec.imag
        return (re * re + im * im) / self.win_energy

    # ------------------------------------------------------------------ pieces
    def _frames(self, x: Tensor, n_frames: int) -> Tensor:
        return frame_signal(F.pad(x, (WIN // 2, 0)), n_frames, WIN, HOP)  # [B, T, WIN]

    def _energy(self, fr: Tensor, mel_pow: Tensor, log_gain: Tensor | None) -> list[Tensor]:
        ms = (fr * fr).mean(-1)
        rms = torch.sqrt(ms + 1e-20)
        log_e = torch.log(ms + ENERGY_FLOOR)
        loud = torch.pow(mel_pow + 1e-20, 0.3).sum(-1)
        if log_gain is not None:  # the levels of the clip as given (relative_level)
            lg = log_gain[:, None]
            rms, log_e, loud = rms * torch.exp(-lg), log_e - 2.0 * lg, loud * torch.exp(-0.6 * lg)
        pos = fr >= 0
        zcr = (pos[..., 1:] != pos[..., :-1]).to(fr.dtype).mean(-1)
        return [rms, log_e, loud, zcr]

    @staticmethod
    def _level_gain(wave: Tensor, lengths: Tensor) -> Tensor:
        """log of the gain [B] that brings each (masked) clip to an RMS of LEVEL_REF. Summed in
        float64, so that how a runtime splits the sum (by batch size or padded length) does not
        move the float32 gain, and with it every value of the clip, by a rounding step."""
        w = wave.to(torch.float64)
        ms = (w * w).sum(-1) / lengths.clamp_min(1).to(torch.float64)
        rms = torch.sqrt(ms).clamp_min(LEVEL_MIN_RMS)
        return (np.log(LEVEL_REF) - torch.log(rms)).to(wave.dtype)

    def _spectral(self, power: Tensor) -> list[Tensor]:
        kk = power.shape[-1]
        lp = torch.log(power + ENERGY_FLOOR)  # natural log power; dB = 10 log10(e) * lp
        mag = torch.exp(0.5 * lp)
        nm = mag / (mag.sum(-1, keepdim=True) + 1e-12)
        d = nm[:, 1:] - nm[:, :-1]
        flux = F.pad((d * d).sum(-1), (1, 0))
        tot = power.sum(-1)
        silent = tot <= 1e-14
        inv = 1.0 / (tot + 1e-14)
        mom = torch.matmul(power, self.fpow) * inv.unsqueeze(-1)  # raw moments 1..4
        m1, m2, m3, m4 = mom.unbind(-1)
        var = (m2 - m1 * m1).clamp_min(0.0)
        spread = torch.sqrt(var + 1e-12)
        c3 = m3 - 3 * m1 * m2 + 2 * m1**3
        c4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4
        skew = c3 / (var * spread + 1e-9)
        kurt = c4.clamp_min(0.0) / (var * var + 1e-9)
        # entropy of p = P / ΣP: −Σ p log p = log ΣP − Σ P log P / ΣP (natural log, / log K)
        plp = (power * lp).sum(-1) * inv
        ent = (torch.log(tot + 1e-14) - plp) / float(np.log(kk))
        flat = torch.exp(0.5 * lp.mean(-1)) / (mag.mean(-1) + 1e-10)
        db_per_ln = 10.0 / float(np.log(10.0))
        slope = db_per_ln * (lp * self.fslope).sum(-1)  # per row: the same in any batch
        cum = torch.cumsum(power, dim=-1) * inv.unsqueeze(-1)
        rolls = [torch.matmul((cum < q).to(power.dtype), self.fstep) for q in ROLLOFFS]
        nb = self.n_harm_bins
        lpb = lp[..., :nb]
        pk, vl = _local_peaks(lpb)
        pkf, vlf = pk.to(power.dtype), vl.to(power.dtype)
        harm = db_per_ln * (
            (lpb * pkf).sum(-1) / pkf.sum(-1).clamp_min(1.0)
            - (lpb * vlf).sum(-1) / vlf.sum(-1).clamp_min(1.0)
        )
        bands = torch.matmul(power, self.alpha_bands)  # [B, T, 2]
        alpha = db_per_ln * (
            torch.log(bands[..., 0] + ENERGY_FLOOR) - torch.log(bands[..., 1] + ENERGY_FLOOR)
        )
        k2 = self.n_ham_lo
        ham = db_per_ln * (lp[..., :k2].amax(-1) - lp[..., k2:nb].amax(-1))
        out = [flux, m1, spread, skew, kurt, ent, flat, slope, *rolls, harm, alpha, ham]
        zero = torch.zeros_like(m1)
        # Shape descriptors of an all-zero frame are defined as 0.
        return [torch.where(silent, zero, v) for v in out]

    def _bands(self, power: Tensor, log_gain: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        mel_pow = torch.matmul(power, self.mel_fb.T)  # [B, T, M]
        logmel = torch.log(mel_pow + ENERGY_FLOOR)
        if self.rasta:
            b, t, m = logmel.shape
            seq = logmel.transpose(1, 2).reshape(b * m, 1, t)
            seq = F.conv1d(F.pad(seq, (RASTA_TAPS - 1, 0)), self.rasta_h.view(1, 1, -1))
            logmel = seq.reshape(b, m, t).transpose(1, 2)
        mfcc = torch.matmul(logmel, self.dct)
        if log_gain is not None and not self.rasta:  # the bands of the clip as given
            logmel = logmel - 2.0 * log_gain[:, None, None]  # (RASTA removes the level)
        return mel_pow, logmel, mfcc

    def _harmonic_differences(self, power: Tensor, f0_hz: Tensor, f3_khz: Tensor) -> Tensor:
        """H1-H2 and H1-A3 (dB): the strongest bin within ±1 bin of F0, of 2·F0 and of F3
        (Hanson 1997; eGeMAPS, Eyben et al. 2016) → [B, T, 2]; 0 where F0 is 0."""
        k_max = power.shape[-1] - 1
        df = float(SAMPLE_RATE) / N_FFT
        near = torch.tensor([-1, 0, 1], device=power.device)

        def peak_db(hz: Tensor) -> Tensor:
            centre = torch.round(hz / df).to(torch.int64).unsqueeze(-1)
            idx = (centre + near).clamp(0, k_max)
            return 10.0 * torch.log10(power.gather(-1, idx).amax(-1) + ENERGY_FLOOR)

        h1 = peak_db(f0_hz)
        out = torch.stack([h1 - peak_db(2 * f0_hz), h1 - peak_db(1000.0 * f3_khz)], dim=-1)
        return out * (f0_hz > 0).to(power.dtype).unsqueeze(-1)

    # ------------------------------------------------------------------ forward
    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = wave.shape[1]
        lengths = torch.clamp(lengths.to(torch.int64), min=0, max=n)
        idx = torch.arange(n, device=wave.device)
        wave = torch.where(idx[None, :] < lengths[:, None], wave, torch.zeros_like(wave))
        log_gain = None
        if self.relative_level:
            log_gain = self._level_gain(wave, lengths)
            wave = wave * torch.exp(log_gain)[:, None]
        n_frames = n // HOP + 1
        frames = frame_count(lengths)
        fr = self._frames(wave, n_frames)
        power = self._power(fr)
        mel_pow, logmel, mfcc = self._bands(power, log_gain)
        energy = self._energy(fr, mel_pow, log_gain)
        spectral = self._spectral(power)
        v = voice_features(wave, lengths, n_frames, HOP // 2, self.taps, self._yin)
        voiced = v["voiced"]
        f0_st = torch.where(
            voiced, 12.0 * torch.log2(v["f0"].clamp_min(1.0) / ST_REF), torch.zeros_like(v["f0"])
        )
        hnr = torch.where(voiced, v["hnr"], torch.zeros_like(v["hnr"]))
        voice = [f0_st, v["voicing_prob"], v["jitter"], v["shimmer"], hnr]
        fmt = on_frames(lambda p: formants(p, self.freqs, self.emphasis, self._dft), voiced, power)
        harm = self._harmonic_differences(power, v["f0"], fmt[..., 2]) * voiced.unsqueeze(-1)
        lld = torch.cat(
            [
                torch.stack(energy + spectral, dim=-1),
                logmel,
                mfcc,
                torch.stack(voice, dim=-1),
                fmt.to(logmel.dtype),
                harm,
            ],
            dim=-1,
        )
        if self.with_deltas:
            lld = torch.cat([lld, deltas(lld, frames)], dim=-1)
        t = torch.arange(n_frames, device=wave.device)
        valid = t[None, :] < frames[:, None]
        lld = torch.where(valid.unsqueeze(-1), lld, torch.zeros_like(lld))
        return lld, frames, voiced & valid


class LldFrames(nn.Module):
    """The network's frame features of ``features.kind: lld``: the descriptors and their deltas
    of every 10 ms frame, with LogMel's interface.

    ``forward(wave[B, N] float32, lengths[B] int64 | None) -> (lld[B, T, 138], frames[B] int64)``
    with ``T = N // 160 + 1`` (LogMel's count for a 25 ms window at 16 kHz); frames at or beyond
    ``frames[b]`` are 0."""

    def __init__(self) -> None:
        super().__init__()
        self.descriptors = Descriptors()
        self.n_features = len(self.descriptors.names)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if lengths is None:
            lengths = torch.zeros(wave.shape[:1], dtype=torch.int64, device=wave.device)
            lengths = lengths + wave.shape[1]
        lld, frames, _ = self.descriptors(wave, lengths)
        return lld, frames
