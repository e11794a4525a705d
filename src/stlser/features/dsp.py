"""Signal-processing pieces shared by the log-mel front end (`frontend`) and the descriptors
(`descriptors`): the Hann window, the Slaney mel filter bank, the DCT-II matrix and the
regression deltas over time within each clip (definitions in `frontend`'s docstring)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of `win_length`, centred in `n_fft` zeros (librosa's layout)."""
    if win_length > n_fft:
        raise ValueError(f"window ({win_length}) longer than n_fft ({n_fft})")
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    out = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    out[left : left + win_length] = w
    return out


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


def mel_filterbank(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft//2 + 1], equal to
    ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (tested);
    written out here so the front end does not import librosa (about 2 s per process)."""
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II as a [n_in, n_out] matrix (x @ D == scipy.fft.dct(x, norm='ortho')[:n_out])."""
    if n_out > n_in:
        raise ValueError(f"n_mfcc ({n_out}) must not exceed n_mels ({n_in})")
    n = np.arange(n_in)
    k = np.arange(n_out)
    d = np.cos(np.pi * np.outer(2 * n + 1, k) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    d[:, 0] /= np.sqrt(2.0)
    return d.astype(np.float32)


#: Half-width of the delta regression window (9 frames, librosa's default width).
DELTA_N = 4


def _shifted(x: Tensor, offset: int, last: Tensor) -> Tensor:
    """x[:, t + offset] for every t, with each clip's frames 0..last[b] continued past both
    ends by point reflection (2·x[edge] − x[mirror]); exportable (gathers, no data-dependent
    shapes)."""
    b, t, f = x.shape
    j = torch.arange(t, device=x.device)[None, :] + offset  # [1, T]
    below, above = j < 0, j > last  # [1, T], [B, T]
    src = torch.where(below, -j, torch.where(above, 2 * last - j, j))
    src = torch.minimum(src.clamp_min(0), last)
    v = x.gather(1, src.unsqueeze(-1).expand(b, t, f))
    end = x.gather(1, last.unsqueeze(-1).expand(b, 1, f))
    v = torch.where(below.unsqueeze(-1), 2 * x[:, :1] - v, v)
    return torch.where(above.unsqueeze(-1), 2 * end - v, v)


def deltas(x: Tensor, frames: Tensor, n: int = DELTA_N) -> Tensor:
    """Δ of x[B, T, F] over time within each clip's `frames` (module docstring); values at or
    beyond a clip's frame count are meaningless (the caller masks them)."""
    last = (frames.to(torch.int64) - 1).clamp_min(0)[:, None]  # [B, 1]
    acc = torch.zeros_like(x)
    for k in range(1, n + 1):
        acc = acc + k * (_shifted(x, k, last) - _shifted(x, -k, last))
    return acc / float(2 * sum(k * k for k in range(1, n + 1)))
