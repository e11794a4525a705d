"""The acoustic front end: log-mel / MFCC in torch (ONNX-exportable) and eGeMAPS through
openSMILE.

Front end (``LogMel``), the one definition used for training, inference and ONNX export:

* the clip is zero-padded by ``n_fft // 2`` on each side and framed with stride ``hop``
  (librosa's ``center=True, pad_mode="constant"``), so a clip of N samples gives
  ``n_frames(N) = (N + 2 * (n_fft // 2) - n_fft) // hop + 1`` frames (= ``N // hop + 1``).
  Zero padding rather than reflect: it exports as one ``Pad`` node and makes a padded batch give
  exactly the frames each clip gives alone.
* the STFT is a ``conv1d`` whose kernels are the DFT basis (real and imaginary rows) multiplied by
  a periodic Hann window of ``win_length`` centred in ``n_fft`` zeros (as librosa does) —
  ``torch.stft`` is avoided because it does not export to ONNX reliably. ``LogMel(cfg, fft=True)``
  computes the same spectrum with ``unfold`` + ``rfft`` (10-20x faster on CPU, not for export);
  :func:`compute` and the cache use it. The two paths agree to ~1e-6 (tested), far below any
  effect on a model trained with one and deployed with the other;
* power spectrum → librosa's Slaney mel filter bank → ``log(mel + 1e-6)``. The natural log with
  a fixed 1e-6 floor (not ``power_to_db``'s max-relative ``top_db`` clipping) keeps each frame
  independent of the rest of the clip, so streaming, batching and export all agree. 1e-6 sits
  about 80 dB below a full-scale tone's mel power (~200 with the default 25 ms window) and at
  the level of 16-bit quantisation noise, so digital silence maps to log(1e-6) ≈ -13.8 while
  any audible signal stays well above the floor.
* ``kind="mfcc"``: orthonormal DCT-II of the log-mel, first ``n_mfcc`` coefficients.
* ``deltas=True``: Δ and ΔΔ appended on the feature axis, ``[static | Δ | ΔΔ]`` (3·F wide;
  the network reads the three as input channels). Δ is the 9-frame regression
  ``Σₙ n·(x[t+n] − x[t−n]) / (2·Σₙ n²)``, n = 1..4 — librosa's ``feature.delta(width=9)`` in the
  interior — and ΔΔ is Δ of Δ (HTK's convention, not librosa's second-order Savitzky-Golay).
  At a clip's own edges the frames are continued by point reflection
  (``x[−n] = 2·x[0] − x[n]``), so a linear ramp has a constant Δ and a zero ΔΔ everywhere;
  only valid frames enter, so a padded batch gives each clip's own deltas. See :func:`deltas`.
* frames at or beyond a clip's frame count are set to 0 in a padded batch.

The ``authors`` preset (librosa defaults: n_fft 2048, hop 512) first pads/cuts every clip to
``fixed_seconds`` (10 s), so every clip gives the same number of frames.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stlser import audio
from stlser import smile as smile_mod
from stlser.config import FeatureConfig
from stlser.features.descriptors import LldFrames
from stlser.features.dsp import (  # noqa: F401 (re-exported: the front end's building blocks)
    DELTA_N,
    dct_matrix,
    deltas,
    hann_window,
    mel_filterbank,
)
from stlser.features.functionals import VERSION as LLD_VERSION

#: Added to the mel power before the log (see module docstring).
LOG_FLOOR = 1e-6
#: eGeMAPSv02 low-level descriptors per frame / functionals per clip.
N_EGEMAPS_LLD = 25
N_EGEMAPS_FUNCTIONALS = smile_mod.FUNCTIONAL_SETS["egemaps"][1]
#: Fields of FeatureConfig that do not change the features (cache key and front-end reuse).
_NOT_IN_KEY = {"normalize", "speaker_fallback", "degenerate_share", "degenerate_min_utts"}


# ----------------------------------------------------------------------------- frame counting
def _frame_count(n: Any, n_fft: int, hop: int) -> Any:
    """Frames of a clip of `n` samples (int or int64 tensor): the one formula used everywhere."""
    return (n + 2 * (n_fft // 2) - n_fft) // hop + 1


def n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Number of feature frames `compute` and `LogMel` produce for a clip of `n_samples`.

    For ``kind="egemaps"`` this is openSMILE's count (50 ms analysis window, 10 ms hop).
    """
    c = cfg
    if c.kind == "egemaps":
        win, hop = round(0.05 * c.sample_rate), round(0.01 * c.sample_rate)
        return max(0, (int(n_samples) - win) // hop + 1)
    if c.fixed_seconds:
        n_samples = int(round(c.fixed_seconds * c.sample_rate))
    return int(_frame_count(int(n_samples), int(c.fft_size), c.hop_length))


# ------------------------------------------------------------------------------- front end
def dft_kernels(win_length: int, n_fft: int) -> np.ndarray:
    """Windowed DFT basis as conv1d weights [2 * (n_fft//2 + 1), 1, n_fft]: real rows, then
    imaginary rows (computed in float64, returned as float32)."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    angle = 2 * np.pi * np.outer(k, n) / n_fft
    w = hann_window(win_length, n_fft)
    basis = np.concatenate([np.cos(angle) * w, -np.sin(angle) * w])
    return basis[:, None, :].astype(np.float32)


class LogMel(nn.Module):
    """Waveform → log-mel (or MFCC) frames; exportable to ONNX with dynamic batch and length.

    ``forward(wave[B, N] float32, lengths[B] int64 | None) -> (feats[B, T, F], frames[B] int64)``
    with ``T = n_frames(N)``; samples at or beyond ``lengths[b]`` are treated as zeros and frames
    at or beyond ``frames[b]`` are 0. Buffers are not saved in a state_dict: they are rebuilt
    from the feature config. ``fft=True`` swaps the conv1d DFT for unfold + rfft (faster, same
    numbers to ~1e-6, but not meant for ONNX export).
    """

    def __init__(self, cfg: FeatureConfig, fft: bool = False) -> None:
        super().__init__()
        c = cfg
        if c.kind not in ("logmel", "mfcc"):
            raise ValueError(f"LogMel computes logmel or mfcc, not {c.kind!r}")
        self.kind = c.kind
        self.fft = bool(fft)
        self.n_fft = int(c.fft_size)
        self.hop = c.hop_length
        self.win_length = c.win_length
        self.n_bins = self.n_fft // 2 + 1
        self.fixed = int(round(c.fixed_seconds * c.sample_rate)) if c.fixed_seconds else 0
        self.n_features = c.n_features
        self.deltas = bool(c.deltas)
        fb = mel_filterbank(c.sample_rate, self.n_fft, c.n_mels, c.fmin, c.fmax)
        if self.fft:
            window = torch.from_numpy(hann_window(self.win_length, self.n_fft).astype(np.float32))
            self.register_buffer("window", window, persistent=False)
        else:
            kernels = torch.from_numpy(dft_kernels(self.win_length, self.n_fft))
            self.register_buffer("kernels", kernels, persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(fb.astype(np.float32)), persistent=False)
        if self.kind == "mfcc":
            self.register_buffer(
                "dct", torch.from_numpy(dct_matrix(c.n_mels, c.n_mfcc)), persistent=False
            )

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if lengths is None:
            lengths = (
                torch.zeros(wave.shape[:1], dtype=torch.int64, device=wave.device) + wave.shape[1]
            )
        lengths = torch.clamp(lengths.to(torch.int64), min=0, max=wave.shape[1])
        idx = torch.arange(wave.shape[1], device=wave.device)
        wave = torch.where(idx[None, :] < lengths[:, None], wave, torch.zeros_like(wave))
        if self.fixed:  # authors' recipe: every clip padded/cut to the same length
            wave = F.pad(wave, (0, self.fixed))[:, : self.fixed]
            lengths = torch.zeros_like(lengths) + self.fixed
        pad = self.n_fft // 2
        x = F.pad(wave, (pad, pad))  # [B, N + 2 pad]
        if self.fft:
            spec = torch.fft.rfft(x.unfold(-1, self.n_fft, self.hop) * self.window)  # [B, T, K]
            power = spec.real * spec.real + spec.imag * spec.imag
        else:
            spec = F.conv1d(x.unsqueeze(1), self.kernels, stride=self.hop)  # [B, 2K, T]
            re, im = spec[:, : self.n_bins], spec[:, self.n_bins :]
            power = (re * re + im * im).transpose(1, 2)  # [B, T, K]
        mel = torch.matmul(power, self.mel_fb.T)  # [B, T, M]
        feats = torch.log(mel + LOG_FLOOR)
        if self.kind == "mfcc":
            feats = torch.matmul(feats, self.dct)
        frames = _frame_count(lengths, self.n_fft, self.hop)
        if self.deltas:
            d1 = deltas(feats, frames)
            feats = torch.cat([feats, d1, deltas(d1, frames)], dim=-1)
        t = torch.arange(feats.shape[1], device=feats.device)
        valid = (t[None, :] < frames[:, None]).unsqueeze(-1)
        return torch.where(valid, feats, torch.zeros_like(feats)), frames


def feature_key_config(cfg: FeatureConfig) -> dict[str, Any]:
    """The config fields that determine the features (cache key and front-end reuse), with
    the FFT size the window implies."""
    c = cfg
    d = {k: v for k, v in asdict(c).items() if k not in _NOT_IN_KEY}
    d["n_fft"] = c.fft_size
    if c.kind == "egemaps":
        return {"kind": "egemaps", "sample_rate": c.sample_rate}
    if c.kind == "lld":
        return {"kind": "lld", "sample_rate": c.sample_rate, "frontend_version": LLD_VERSION}
    if c.kind != "mfcc":
        d.pop("n_mfcc", None)
    if not c.deltas:  # keys (cache folders) of configs without deltas stay what they were
        d.pop("deltas", None)
    return d


def frame_module(cfg: FeatureConfig, fft: bool = False) -> nn.Module:
    """A new torch module computing `cfg`'s frames: ``(wave[B, N], lengths[B]) → (feats[B, T, F],
    frames[B])`` — `LogMel` for logmel / mfcc, the own descriptors (`LldFrames`) for lld."""
    if cfg.kind == "lld":
        return LldFrames().eval()
    return LogMel(cfg, fft=fft).eval()


@functools.lru_cache(maxsize=8)
def _front_end(key: str, fft: bool) -> nn.Module:
    d = json.loads(key)
    if d.get("kind") == "lld":
        return frame_module(FeatureConfig(kind="lld"))
    return frame_module(FeatureConfig(**d), fft=fft)


def front_end(cfg: FeatureConfig, fft: bool = True) -> nn.Module:
    """The process-wide frame module for `cfg` (built once per process; `frame_module`), LogMel
    on the fast fft path by default."""
    d = feature_key_config(cfg)
    return _front_end(json.dumps(d, sort_keys=True), fft)


def _smile(level: str, feature_set: str = "eGeMAPSv02") -> Any:
    return smile_mod.smile(level, feature_set)


_as_wave = smile_mod.as_wave
FUNCTIONAL_SETS = smile_mod.FUNCTIONAL_SETS


def compute(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Features of one mono utterance at ``cfg.sample_rate`` → float32 [T, F]."""
    c = cfg
    x = _as_wave(wave)
    if c.kind == "egemaps":
        df = _smile("LowLevelDescriptors").process_signal(x, c.sample_rate)
        return np.ascontiguousarray(df.to_numpy(dtype=np.float32))
    fe = front_end(c)
    with torch.inference_mode():
        feats, frames = fe(torch.from_numpy(x)[None])
    return np.ascontiguousarray(feats[0, : int(frames[0])].numpy(), dtype=np.float32)


functionals = smile_mod.functionals


def egemaps_functionals(wave: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of one utterance (classic SVM baseline) → float32[88]."""
    return functionals(wave, sample_rate, "egemaps")
