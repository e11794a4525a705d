"""Voice-source descriptors per frame in torch: F0, voicing probability, HNR, jitter, shimmer.

All frames of all clips are computed at once (no Python loop over frames or clips); every
shape depends only on the input's shape, so the graph exports to ONNX with a dynamic batch and
length.

* **Decimation**: the 16 kHz wave is low-pass filtered (windowed-sinc FIR, 3.5 kHz) and
  decimated to 8 kHz; frame ``t`` is centred on ``t * 10 ms``, as the spectral frames are.
* **F0 and voicing** follow YIN (de Cheveigné & Kawahara 2002, JASA 111(4)), steps 1-5: the
  difference function ``d(τ) = Σₙ (x[n] − x[n+τ])²`` over a 40 ms integration window, written as
  ``E₀ + E_τ − 2 r(τ)`` with the cross-correlation ``r`` from one real FFT and the energies
  from a cumulative sum; the cumulative-mean-normalised ``d'(τ) = d(τ) τ / Σⱼ≤τ d(j)``; the
  first local minimum of ``d'`` below an absolute threshold (else the global minimum) within
  55-500 Hz; parabolic interpolation of the lag. The voicing probability is ``1 − d'(τ*)``
  (YIN's aperiodicity), zero below an energy gate; a frame is voiced when it exceeds
  :data:`VOICED_PROB`.
* **HNR** from the normalised cross-correlation at the period lag, ``ρ = r(τ)/√(E₀ E_τ)``,
  ``HNR = 10 log₁₀(ρ / (1 − ρ))`` dB (Boersma 1993, Proc. Inst. Phonetic Sciences 17), with
  ``ρ`` clipped to [1e-3, 1 − 1e-4].
* **Shimmer** (local, relative): within each frame's 58 ms segment the signal is cut into
  consecutive windows exactly one (fractional) period long; each window's RMS amplitude ``Aₖ``
  comes from the interpolated cumulative energy, so it does not depend on the phase at which
  the cut starts; ``shimmer = mean|Aₖ₊₁ − Aₖ| / mean Aₖ`` (the period-to-period amplitude
  perturbation of Eyben et al. 2016 eGeMAPS / Farrús et al. 2007, with the period's RMS as its
  amplitude). For an amplitude modulation ``1 + m sin(2π f_m t)`` it approaches
  ``4 m f_m / F0``.
* **Jitter** (local, relative, cycle to cycle): the frame's segment is cut into consecutive
  windows one frame period ``P`` long; each window's own period ``Pₖ`` minimises the squared
  difference between the window and the signal ``τ`` later over the integer lags
  ``round(P) − 1 … round(P) + 1`` (YIN's difference function restricted to that window), at
  the vertex of the parabola through those three costs (clipped to ±1.5 samples); ``jitter = mean|Pₖ₊₁ − Pₖ| / mean Pₖ`` over the windows
  whose lagged copy lies inside the segment (Eyben et al. 2016 eGeMAPS, Farrús et al. 2007:
  local jitter). Periods are resolved to about 0.05 sample at 8 kHz, so jitter below about
  0.1 % of a period is not resolved.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Sample rate of the pitch analysis (the 16 kHz input is decimated by 2).
PITCH_SR = 8000
#: YIN integration window (samples at 8 kHz, 40 ms) and largest lag (55 Hz).
YIN_WIN = 320
F0_MIN, F0_MAX = 55.0, 500.0
TAU_MAX = int(math.ceil(PITCH_SR / F0_MIN))  # 146
TAU_MIN = int(math.floor(PITCH_SR / F0_MAX))  # 16
SEGMENT = YIN_WIN + TAU_MAX + 1  # samples a frame's analysis reads
CORR_FFT = 512
#: YIN's absolute threshold on d' (first dip below it) and the voicing decision (1 - d').
YIN_THRESHOLD = 0.2
VOICED_PROB = 0.7
#: Mean-square energy (full scale = 1) under which a frame is unvoiced whatever d' says.
ENERGY_GATE = 1e-8
#: Decimation filter taps.
N_TAPS = 31
#: Semitone reference (eGeMAPS: F0 in semitones relative to 27.5 Hz).
ST_REF = 27.5


def lowpass_taps(n_taps: int = N_TAPS, cutoff: float = 3500.0, sr: int = 16000) -> np.ndarray:
    """Hamming-windowed sinc low-pass FIR (unit DC gain) for the decimation to 8 kHz."""
    n = np.arange(n_taps) - (n_taps - 1) / 2
    h = 2 * cutoff / sr * np.sinc(2 * cutoff / sr * n) * np.hamming(n_taps)
    return (h / h.sum()).astype(np.float32)


def _interp(cs: Tensor, pos: Tensor) -> Tensor:
    """Linear interpolation of cs[..., S+1] at fractional positions pos[..., K] in [0, S]."""
    last = cs.shape[-1] - 1
    pos = pos.clamp(0, last)
    i0 = pos.floor().clamp(max=last - 1)
    frac = pos - i0
    i0 = i0.to(torch.int64)
    a = cs.gather(-1, i0)
    b = cs.gather(-1, i0 + 1)
    return a + frac * (b - a)


def decimate(wave16: Tensor, taps: Tensor) -> Tensor:
    """Low-pass FIR (odd length, symmetric, centred, zeros outside) and keep every second sample:
    [B, N] → [B, ceil(N / 2)]. Written as a sum of shifted slices, so every output sample is
    computed by the same operations whatever the batch (bit-identical alone and batched)."""
    half = N_TAPS // 2
    n = wave16.shape[1]
    xp = F.pad(wave16, (half, half + 1))
    x2 = xp[:, : 2 * ((n + 1) // 2) + 2 * half].reshape(xp.shape[0], -1, 2)  # even / odd pairs
    m = (n + 1) // 2
    half_n = N_TAPS // 2

    def tap(i: int) -> Tensor:
        return x2[:, i // 2 : i // 2 + m, i % 2]

    # the taps are symmetric: taps[i] (x[i] + x[N_TAPS - 1 - i]), half the multiplications
    out = taps[half_n] * tap(half_n)
    for i in range(half_n):
        out = out + taps[i] * (tap(i) + tap(N_TAPS - 1 - i))
    return out


def exporting() -> bool:
    """True while torch traces or exports the graph (static shapes, no FFT nodes wanted)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling()


def frame_signal(x: Tensor, n_frames: int, width: int, hop: int) -> Tensor:
    """Frames ``x[:, t·hop : t·hop + width]``, t < `n_frames`, of x[B, M] → [B, n_frames, width]
    (zeros past the end of x). Built from hop-long blocks by slicing and concatenation: the
    exported graph copies memory instead of gathering element by element (onnxruntime's
    GatherND took ~9 ms of a 3 s clip's 100 ms)."""
    k = -(-width // hop)  # blocks a frame touches
    x = F.pad(x, (0, (n_frames + k) * hop))[:, : (n_frames + k) * hop]
    blocks = x.reshape(x.shape[0], n_frames + k, hop)
    parts = [blocks[:, i : i + n_frames] for i in range(k)]
    out = torch.cat(parts, dim=-1)  # [B, T, k·hop]
    return out[..., :width]


def rdft_matrix(n_in: int, n_fft: int, window: np.ndarray | None = None) -> np.ndarray:
    """``x[..., n_in] @ M`` = ``[Re | Im]`` of ``rfft(window · x, n=n_fft)`` → M [n_in, 2K],
    K = n_fft // 2 + 1 (computed in float64). An exported graph multiplies by this fixed matrix
    instead of calling onnxruntime's DFT, which took 3-4× longer for these sizes."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_fft // 2 + 1)[None, :]
    ang = 2 * np.pi * n * k / n_fft
    w = np.ones((n_in, 1)) if window is None else np.asarray(window, np.float64)[:, None]
    return np.concatenate([w * np.cos(ang), -w * np.sin(ang)], axis=1).astype(np.float32)


def irdft_matrix(n_fft: int, n_out: int) -> np.ndarray:
    """``[Re | Im] @ M`` = the first `n_out` samples of ``irfft(X, n=n_fft)`` → M [2K, n_out]
    (the imaginary parts of DC and Nyquist are ignored, as irfft does)."""
    k = np.arange(n_fft // 2 + 1)[:, None]
    t = np.arange(n_out)[None, :]
    ang = 2 * np.pi * k * t / n_fft
    w = np.full((len(k), 1), 2.0)
    w[0] = w[-1] = 1.0
    return np.concatenate([w * np.cos(ang), -w * np.sin(ang)], axis=0).astype(np.float32) / n_fft


#: YIN's cross-correlation in an exported graph: hop-long blocks (80 samples at 8 kHz), each
#: correlated with the 3 blocks from it on through one 256-point real DFT.
BLOCK_FFT = 256
_BLOCK_SPAN = 3


def yin_dft_matrices(hop8: int = 80) -> dict[str, np.ndarray]:
    """The fixed matrices of YIN's cross-correlation in an exported graph
    (:func:`cross_correlation`)."""
    return {
        "yin_e": rdft_matrix(_BLOCK_SPAN * hop8, BLOCK_FFT),  # its first hop8 rows: one block's
        "yin_inv": irdft_matrix(BLOCK_FFT, TAU_MAX + 1),
    }


def cross_correlation(
    x8: Tensor, seg: Tensor, n_frames: int, hop8: int, mats: dict[str, Tensor] | None = None
) -> Tensor:
    """r(τ) = Σₙ win[n] seg[n + τ] for τ = 0..TAU_MAX of every frame, win = seg[..., :YIN_WIN]
    (seg[B, T, SEGMENT]: the frames of x8[B, M] at hop `hop8`) → [B, T, TAU_MAX + 1].

    Eager torch: one 512-point real FFT of the window and of the segment per frame. While
    exporting (`mats`: :func:`yin_dft_matrices` as tensors) the same sums are built from blocks
    of `hop8` samples, since a frame's window is 4 consecutive blocks: the correlation of block
    s with the 3 blocks from s on, c[s, τ] = Σₘ x[s·hop + m] x[s·hop + m + τ] (m < hop), by a
    256-point DFT written as products with fixed matrices, then r[t] = c[t] + … + c[t + 3].
    That is 4-5× fewer multiplications than a 512-point DFT per frame, and no DFT node (the
    same numbers to float rounding)."""
    if mats is None or not exporting():
        cross = torch.fft.rfft(seg, n=CORR_FFT) * torch.conj(
            torch.fft.rfft(seg[..., :YIN_WIN], n=CORR_FFT)
        )
        return torch.fft.irfft(cross, n=CORR_FFT)[..., : TAU_MAX + 1]
    per = YIN_WIN // hop8  # blocks per window (4)
    n_blocks = n_frames + per - 1
    span = frame_signal(x8, n_blocks, _BLOCK_SPAN * hop8, hop8)  # block s and the 2 after it
    k = BLOCK_FFT // 2 + 1
    a = torch.matmul(span[..., :hop8], mats["yin_e"][:hop8])  # block s alone
    e = torch.matmul(span, mats["yin_e"])
    ar, ai, er, ei = a[..., :k], a[..., k:], e[..., :k], e[..., k:]
    c = torch.matmul(torch.cat([er * ar + ei * ai, ei * ar - er * ai], dim=-1), mats["yin_inv"])
    r = c[:, :n_frames]
    for i in range(1, per):
        r = r + c[:, i : i + n_frames]
    return r


JITTER_LAGS = (-1, 0, 1)  # the parabola below reads exactly these three


def cycle_jitter(seg: Tensor, cs: Tensor, period: Tensor) -> Tensor:
    """Cycle-to-cycle relative jitter of each frame (module docstring) from its segment
    seg[B, T, S], the cumulative energy cs[B, T, S+1] and the frame period[B, T] (samples)."""
    s_len = seg.shape[-1]
    dev, dt = seg.device, seg.dtype
    n_win = s_len // TAU_MIN
    k = torch.arange(n_win + 1, device=dev, dtype=dt)
    edges = torch.round(k * period.unsqueeze(-1)).to(torch.int64).clamp(max=s_len)  # [B,T,K+1]
    a, b = edges[..., :-1], edges[..., 1:]
    p0 = torch.round(period).to(torch.int64)
    lo, n_lag = JITTER_LAGS[0], len(JITTER_LAGS)
    # seg[n + p0 + lag] for every lag: one gather of S + n_lag - 1 samples, then slices.
    idx = torch.arange(s_len + n_lag - 1, device=dev) + (p0 + lo).clamp_min(1).unsqueeze(-1)
    base = seg.gather(-1, idx.clamp(max=s_len - 1)) * (idx < s_len).to(dt)
    prods = torch.stack([seg * base[..., i : i + s_len] for i in range(n_lag)], dim=-2)
    cp = torch.nn.functional.pad(torch.cumsum(prods, dim=-1), (1, 0))  # [B, T, L, S+1]
    e_win = cs.gather(-1, b) - cs.gather(-1, a)
    costs = []
    for i, dl in enumerate(JITTER_LAGS):
        tau = (p0 + dl).clamp_min(1).unsqueeze(-1)  # [B, T, 1]
        e_sh = cs.gather(-1, (b + tau).clamp(max=s_len)) - cs.gather(-1, (a + tau).clamp(max=s_len))
        cpi = cp[..., i, :]
        costs.append(e_win + e_sh - 2 * (cpi.gather(-1, b) - cpi.gather(-1, a)))
    c = torch.stack(costs, dim=-1)  # [B, T, K, L]
    # vertex of the parabola through the costs at round(P) - 1, round(P), round(P) + 1: a
    # continuous function of the costs, so a flip of round(P) moves it little
    ya, yb, yc = c[..., 0], c[..., 1], c[..., 2]
    den = ya - 2 * yb + yc
    shift = (0.5 * (ya - yc) / den.clamp_min(1e-12)) * (den > 1e-12).to(dt)
    per = p0.unsqueeze(-1).to(dt) + shift.clamp(-1.5, 1.5)  # [B, T, K]
    # a window counts when its lagged copy (longest lag) ends inside the segment
    ok = (b + p0.unsqueeze(-1) + JITTER_LAGS[-1]) <= s_len
    ok = ok & (b > a)
    pair = (ok[..., 1:] & ok[..., :-1]).to(dt)
    okf = ok.to(dt)
    mean_p = (per * okf).sum(-1) / okf.sum(-1).clamp_min(1.0)
    dif = ((per[..., 1:] - per[..., :-1]).abs() * pair).sum(-1) / pair.sum(-1).clamp_min(1.0)
    return dif / mean_p.clamp_min(1.0)


def on_frames(fn: Callable[..., Tensor], keep: Tensor, *args: Tensor) -> Tensor:
    """``fn(*args)`` (each arg [B, T, ...], result [B, T, ...]) computed only on the frames where
    ``keep[B, T]`` is true, zeros elsewhere. Every frame's value is computed by the same
    per-frame operations either way; in eager mode this skips the frames whose value is
    discarded (unvoiced ones), while a traced or exported graph keeps static shapes and
    computes every frame."""
    if exporting():
        full = fn(*args)
        return full * keep.view(*keep.shape, *[1] * (full.dim() - 2)).to(full.dtype)
    b, t = keep.shape
    idx = keep.reshape(-1).nonzero().squeeze(1)
    if idx.numel() == 0:  # nothing to keep (also no zero-size FFT): the shape from one frame
        if b * t == 0:
            return fn(*args)
        one = fn(*[a.reshape(b * t, *a.shape[2:])[:1].unsqueeze(0) for a in args])[0]
        return one.new_zeros(b, t, *one.shape[1:])
    sub = [a.reshape(b * t, *a.shape[2:]).index_select(0, idx).unsqueeze(0) for a in args]
    got = fn(*sub)[0]
    out = got.new_zeros(b * t, *got.shape[1:])
    out.index_copy_(0, idx, got)
    return out.reshape(b, t, *got.shape[1:])


def voice_features(
    wave16: Tensor,
    lengths: Tensor,
    n_frames: int,
    hop8: int,
    taps: Tensor,
    dft: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """F0 (Hz, 0 when unvoiced), voicing probability, voiced flag, HNR (dB), jitter, shimmer of
    every frame of masked 16 kHz waves [B, N] with `lengths[B]` samples → each [B, T]
    (T = `n_frames`).

    `hop8` is the frame hop at 8 kHz; frame t's integration window is centred on sample
    ``t * hop8`` (zeros outside the clip). `dft`: :func:`yin_dft_matrices` as tensors, used
    in an exported graph instead of FFTs."""
    dev = wave16.device
    x8 = decimate(wave16, taps)
    # the filter's tail past a clip's end is cut, as it is when the clip is alone
    n8 = (lengths + 1) // 2
    x8 = x8 * (torch.arange(x8.shape[1], device=dev)[None, :] < n8[:, None]).to(x8.dtype)
    left = YIN_WIN // 2
    x8 = F.pad(x8, (left, 0))
    seg = frame_signal(x8, n_frames, SEGMENT, hop8)  # [B, T, S]
    # Step 1-2: difference function from the cross-correlation and cumulative energies.
    r = cross_correlation(x8, seg, n_frames, hop8, dft)  # [B, T, L+1]
    sq = seg * seg
    cs = F.pad(torch.cumsum(sq, dim=-1), (1, 0))  # [B, T, S+1]
    lags = torch.arange(TAU_MAX + 1, device=dev)
    e_tau = cs[..., lags + YIN_WIN] - cs[..., lags]
    e0 = e_tau[..., :1]
    d = (e0 + e_tau - 2 * r).clamp_min(0.0)
    # Step 3: cumulative-mean-normalised difference d'(τ) = d(τ) τ / Σ_{j≤τ} d(j), τ ≥ 1.
    cum = torch.cumsum(d[..., 1:], dim=-1)
    tiny = 1e-6 * e0 + 1e-20
    dn = d[..., 1:] * lags[1:].to(d.dtype) / torch.maximum(cum, tiny)  # index = lag - 1
    dn = torch.where(cum[..., -1:] > tiny, dn, torch.ones_like(dn[..., :1]))
    # Step 4: first local minimum below the threshold within [TAU_MIN, TAU_MAX), else the
    # global minimum there.
    lo, hi = TAU_MIN - 1, TAU_MAX - 1
    mid = dn[..., lo:hi]
    cand = (
        (mid < YIN_THRESHOLD)
        & (mid <= dn[..., lo - 1 : hi - 1])
        & (mid <= dn[..., lo + 1 : hi + 1])
    )
    first = torch.argmax(cand.to(torch.uint8), dim=-1)
    fallback = torch.argmin(mid, dim=-1)
    j = torch.where(cand.any(dim=-1), first, fallback) + lo  # index into dn
    # Step 5: parabolic interpolation around the chosen lag.
    ji = j.unsqueeze(-1)
    ya = dn.gather(-1, ji - 1)[..., 0]
    yb = dn.gather(-1, ji)[..., 0]
    yc = dn.gather(-1, ji + 1)[..., 0]
    den = ya - 2 * yb + yc
    shift = (0.5 * (ya - yc) / den.clamp_min(1e-12)) * (den > 1e-12).to(den.dtype)
    tau = j + 1
    ti = tau.unsqueeze(-1)
    period = tau.to(dn.dtype) + shift.clamp(-0.5, 0.5)  # samples at 8 kHz
    energy = e0[..., 0] / YIN_WIN
    prob = (1.0 - yb).clamp(0.0, 1.0) * (energy > ENERGY_GATE).to(yb.dtype)
    voiced = prob >= VOICED_PROB
    vf = voiced.to(period.dtype)
    f0 = vf * PITCH_SR / period
    # HNR from the normalised cross-correlation at the period lag.
    rho = r.gather(-1, ti)[..., 0] / torch.sqrt(e0[..., 0] * e_tau.gather(-1, ti)[..., 0] + 1e-20)
    rho = rho.clamp(1e-3, 1.0 - 1e-4)
    hnr = 10.0 * torch.log10(rho / (1.0 - rho))
    # Shimmer: RMS of consecutive one-period windows of the segment.
    n_per = SEGMENT // TAU_MIN
    k = torch.arange(n_per + 1, device=dev, dtype=dn.dtype)
    p = period.unsqueeze(-1)
    edges = _interp(cs, k * p)  # [B, T, K+1]
    amp = torch.sqrt((edges[..., 1:] - edges[..., :-1]).clamp_min(0.0) / p + 1e-20)  # [B, T, K]
    whole = (k[1:] * p) <= SEGMENT - 1  # periods that fit in the segment
    pair = whole[..., 1:] & whole[..., :-1]
    n_pair = pair.sum(-1).clamp_min(1).to(dn.dtype)
    n_amp = whole.sum(-1).clamp_min(1).to(dn.dtype)
    diff = (amp[..., 1:] - amp[..., :-1]).abs() * pair.to(amp.dtype)
    mean_amp = (amp * whole.to(amp.dtype)).sum(-1) / n_amp
    shimmer = vf * diff.sum(-1) / n_pair / (mean_amp + 1e-10)
    jitter = on_frames(cycle_jitter, voiced, seg, cs, period)
    return {
        "f0": f0,
        "voicing_prob": prob,
        "voiced": voiced,
        "hnr": hnr,
        "jitter": jitter,
        "shimmer": shimmer,
    }
