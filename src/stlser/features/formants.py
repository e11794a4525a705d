"""Formant frequencies F1-F3 per frame from a linear-prediction envelope, batched in torch.

For each frame's power spectrum (from :mod:`stlser.features.descriptors`): pre-emphasis
(``1 − 0.97 z⁻¹``, applied as its squared magnitude response), the autocorrelation by inverse
real FFT (Wiener-Khinchin), an order-:data:`LPC_ORDER` all-pole model by the Levinson-Durbin
recursion (Makhoul 1975, Proc. IEEE 63(4); white-noise correction 1e-4 on r(0)), and the model's
envelope ``1 / |A(e^{jω})|²`` on the 512-point grid. F1, F2, F3 are the frequencies (kHz) of the
first three local maxima of the envelope between 150 Hz and 5 kHz (0 where fewer peaks exist),
refined by parabolic interpolation of the log envelope. Peak picking on the LPC envelope rather
than polynomial root finding keeps the graph free of data-dependent shapes (ONNX export).
Formants are the eGeMAPS formant parameters' frequencies (Eyben et al. 2016); the
recursion is a fixed Python loop over the model order, not over frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

LPC_ORDER = 16
PRE_EMPHASIS = 0.97
F_LO, F_HI = 0.15, 5.0  # kHz
N_FORMANTS = 3


def pre_emphasis_gain(freqs_khz: np.ndarray, sr: int = 16000) -> np.ndarray:
    """|1 − a e^{−jω}|² on the frequency grid (kHz)."""
    w = 2 * np.pi * freqs_khz * 1000.0 / sr
    return (1 + PRE_EMPHASIS**2 - 2 * PRE_EMPHASIS * np.cos(w)).astype(np.float32)


def levinson(r: Tensor, order: int = LPC_ORDER) -> Tensor:
    """Prediction polynomial a[..., 0..order] (a[0] = 1) from autocorrelation r[..., 0..order]."""
    r0 = r[..., :1] * (1.0 + 1e-4) + 1e-12
    a = torch.zeros_like(r[..., : order + 1])
    a = torch.cat([torch.ones_like(r0), a[..., 1:]], dim=-1)
    err = r0[..., 0]
    for i in range(1, order + 1):
        acc = r[..., i] + (a[..., 1:i] * r[..., 1:i].flip(-1)).sum(-1)
        k = (-acc / err).clamp(-0.9999, 0.9999)
        upd = a[..., 1:i] + k.unsqueeze(-1) * a[..., 1:i].flip(-1)
        a = torch.cat([a[..., :1], upd, k.unsqueeze(-1), a[..., i + 1 :]], dim=-1)
        err = (err * (1 - k * k)).clamp_min(1e-12)
    return a


def dft_matrices(n_fft: int, order: int = LPC_ORDER) -> dict[str, np.ndarray]:
    """Fixed matrices for the two short transforms of :func:`formants` (only ``order + 1`` lags
    and coefficients are involved, so a product with a [K, order + 1] matrix costs less than a
    full FFT, in torch and in onnxruntime alike): ``acf`` [K, order + 1] maps a real
    one-sided power spectrum to its autocorrelation (the inverse real DFT), ``cos`` / ``sin``
    [order + 1, K] map polynomial coefficients to the real and imaginary parts of their DFT."""
    k = np.arange(n_fft // 2 + 1)[:, None]
    lag = np.arange(order + 1)[None, :]
    ang = 2 * np.pi * k * lag / n_fft  # [K, L]
    weight = np.full((len(k), 1), 2.0)
    weight[0] = weight[-1] = 1.0  # DC and Nyquist appear once in the two-sided spectrum
    return {
        "acf": (weight * np.cos(ang) / n_fft).astype(np.float32),
        "cos": np.cos(ang).T.astype(np.float32),
        "sin": (-np.sin(ang)).T.astype(np.float32),
    }


def formants(power: Tensor, freqs_khz: Tensor, emphasis: Tensor, mats: dict[str, Tensor]) -> Tensor:
    """F1-F3 (kHz) of every frame of power[B, T, K] → [B, T, 3] (module docstring); `mats` from
    :func:`dft_matrices` as tensors."""
    r = torch.matmul(power * emphasis, mats["acf"])
    a = levinson(r)
    re, im = torch.matmul(a, mats["cos"]), torch.matmul(a, mats["sin"])
    log_env = -torch.log(re * re + im * im + 1e-12)
    mid = log_env[..., 1:-1]
    band = (freqs_khz[1:-1] >= F_LO) & (freqs_khz[1:-1] <= F_HI)
    pk = (mid > log_env[..., :-2]) & (mid >= log_env[..., 2:]) & band
    order = torch.cumsum(pk.to(torch.int32), dim=-1)
    df = freqs_khz[1] - freqs_khz[0]
    out = []
    for i in range(1, N_FORMANTS + 1):
        hit = pk & (order == i)
        j = torch.argmax(hit.to(torch.int32), dim=-1, keepdim=True)  # index into mid
        ya = log_env.gather(-1, j)
        yb = log_env.gather(-1, j + 1)
        yc = log_env.gather(-1, j + 2)
        den = ya - 2 * yb + yc
        shift = torch.where(den < -1e-9, 0.5 * (ya - yc) / den.clamp(max=-1e-9), 0 * den)
        f = (j.to(power.dtype) + 1 + shift.clamp(-0.5, 0.5)) * df
        out.append(torch.where(hit.any(-1, keepdim=True), f, torch.zeros_like(f))[..., 0])
    return torch.stack(out, dim=-1)
