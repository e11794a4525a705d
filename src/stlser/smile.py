"""openSMILE functionals of a clip (eGeMAPSv02, ComParE_2016, IS10, …), torch-free.

Shared by the feature cache, the expert recognizer and the torch-free ONNX runtime (whose graph
for an expert model starts from these functionals).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: Functional sets: name → (openSMILE feature set, number of functionals).
FUNCTIONAL_SETS: dict[str, tuple[str, int]] = {
    "egemaps": ("eGeMAPSv02", 88),
    "compare": ("ComParE_2016", 6373),
    "emobase": ("emobase", 988),
    "is09": ("IS09", 384),
    "is10": ("IS10", 1582),
}


@functools.lru_cache(maxsize=4)
def smile(level: str, feature_set: str = "eGeMAPSv02") -> Any:
    """The process-wide openSMILE extractor for a feature set and level (built once)."""
    import opensmile

    return opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, feature_set),
        feature_level=getattr(opensmile.FeatureLevel, level),
    )


def as_wave(wave: np.ndarray) -> np.ndarray:
    """A 1-D float32 waveform clipped to [-1, 1]: openSMILE converts float samples to int16
    without clipping, so a sample at 1.5 would wrap around to a negative one (stlser.audio
    already scales louder signals down to peak 1.0; this catches resampling overshoot and
    callers that bypass it)."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0))


def functionals(
    wave: np.ndarray, sample_rate: int = 16_000, feature_set: str = "egemaps"
) -> np.ndarray:
    """The openSMILE functionals of one mono clip → float32[D] (NaN, rare on silence, → 0)."""
    if feature_set not in FUNCTIONAL_SETS:
        raise ValueError(
            f"unknown functional set {feature_set!r}; known: {sorted(FUNCTIONAL_SETS)}"
        )
    df = smile("Functionals", FUNCTIONAL_SETS[feature_set][0]).process_signal(
        as_wave(wave), sample_rate
    )
    return np.nan_to_num(df.to_numpy(dtype=np.float32).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)


def batch(
    wave: np.ndarray, lengths: np.ndarray, sets: list[str], sample_rate: int = 16_000
) -> np.ndarray:
    """Functionals (sets concatenated) of each clip of a right-padded batch → float32[B, D]."""
    return np.stack(
        [
            np.concatenate([functionals(w[: int(n)], sample_rate, s) for s in sets])
            for w, n in zip(wave, lengths, strict=True)
        ]
    ).astype(np.float32)
