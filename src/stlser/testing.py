"""Helpers for the test suite and the benchmarks: test signals, in-memory audio files, a model
artefact with random weights, and a training hook that simulates a killed run.

Imports numpy and soundfile only; torch and Lightning are imported when a helper needs them.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SR = 16_000
LABELS = ["angry", "happy", "neutral", "sad"]


def tone(
    seconds: float = 1.0,
    sr: int = SR,
    freq: float = 440.0,
    amp: float = 0.5,
    harmonics: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    am_hz: float = 0.0,
    channels: int = 1,
) -> np.ndarray:
    """float32 tone: `harmonics` partials of `freq` at 1/k amplitude (peak-normalised when
    more than one), scaled by `amp`, optionally amplitude-modulated at `am_hz` (0.6 ± 0.4,
    syllable-like) and with Gaussian `noise` (std, seeded). `channels` > 1 gives the same
    signal in every channel, shape (samples, channels)."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))
    if harmonics > 1:
        x = x / np.max(np.abs(x))
    if am_hz:
        x = (0.6 + 0.4 * np.sin(2 * np.pi * am_hz * t)) * x
    x = amp * x
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(t.size)
    x = np.asarray(x, dtype=np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def speechlike(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """float32 speech-like test signal: a harmonic tone (11 partials) with a moving F0
    (120 ± 40 Hz), a syllable-like amplitude envelope with pauses, and a little noise (seeded).
    Unlike an exactly periodic `tone`, consecutive frames rarely tie."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    ph = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * ph) / k for k in range(1, 12))
    env = (np.sin(2 * np.pi * 2.5 * t + seed) > -0.3) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return (0.1 * x * env + 0.003 * g.standard_normal(len(t))).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    """`x` encoded as an audio file in memory (WAV PCM-16 by default)."""
    buf = io.BytesIO()
    sf.write(buf, x, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def make_artefact(
    path: str | os.PathLike,
    labels: list[str] | None = None,
    seed: int = 0,
    jitter: bool = True,
    meta: dict[str, Any] | None = None,
    **model_kw: Any,
) -> Path:
    """A `model.pt` with seeded random weights (default model config, 40 log-mel features) and
    plausible global normaliser statistics (mean ≈ -5, std ≈ 2; seeded per-dimension jitter
    unless `jitter` is false). `model_kw` overrides NetworkConfig fields."""
    import dataclasses

    import torch

    from stlser.config import ExperimentConfig
    from stlser.model import STLSER, save_artefact

    labels = list(LABELS if labels is None else labels)
    torch.manual_seed(seed)
    cfg = ExperimentConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_kw))
    model = STLSER(cfg.model, 40, len(labels))
    rng = np.random.default_rng(seed)
    mean = np.full(40, -5.0) + (rng.normal(0, 0.5, 40) if jitter else 0.0)
    std = np.full(40, 2.0) + (rng.uniform(0, 0.5, 40) if jitter else 0.0)
    norm = {"mode": "global", "mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    return save_artefact(path, model, cfg, 40, labels, norm, dict(meta or {}))


class SimulatedCrash(RuntimeError):
    """Raised by :class:`CrashAfter` (a run killed mid-way)."""


@dataclass(frozen=True)
class CrashAfter:
    """Training hook for `driver.crossval(..., callbacks=CrashAfter(n))`: raise
    SimulatedCrash after epoch `epoch` of training stage `stage` (``early_stopping`` or
    ``refit``). Picklable, so it also reaches worker processes."""

    epoch: int
    stage: str = "early_stopping"

    def __call__(self, stage: str) -> list[Any]:
        if stage != self.stage:
            return []
        from lightning.pytorch.callbacks import Callback

        n = self.epoch

        class _Crash(Callback):
            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                if trainer.current_epoch + 1 >= n:
                    raise SimulatedCrash(f"simulated crash after epoch {n}")

        return [_Crash()]
