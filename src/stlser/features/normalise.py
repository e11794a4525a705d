"""Feature normalisation: statistics fitted on training data only (numpy, for the feature
tables; :func:`normalize_functionals` for one vector per utterance) and :class:`Normalize`, the same standardisation as a torch module for the waveform
pipeline (`stlser.inference.Pipeline`, hence the ONNX export). The floor and the modes are
defined here once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser.adapt import zscore_stats

#: Smallest standard deviation a normaliser divides by.
STD_FLOOR = 1e-5
NORM_MODES = ("none", "global", "speaker", "utterance")


def frame_stats(
    feats: Iterable[np.ndarray], floor: float = STD_FLOOR
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (floored) over all frames of `feats` (float64 accumulation)."""
    n, s, ss = 0, None, None
    for x in feats:
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            continue
        n += x.shape[0]
        s = x.sum(0) if s is None else s + x.sum(0)
        ss = (x * x).sum(0) if ss is None else ss + (x * x).sum(0)
    if n == 0 or s is None or ss is None:
        raise ValueError("no frames to compute statistics from")
    mean = s / n
    var = np.maximum(ss / n - mean * mean, 0.0)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), floor).astype(np.float32)


class Normalizer:
    """Per-dimension standardisation of [T, F] features.

    ``fit`` computes GLOBAL mean/std over all frames of the training utterances only; they are
    what inference applies (``model.pt`` stores them). Modes: ``none``; ``global`` (training
    stats for everyone); ``utterance`` (each utterance by its own stats); ``speaker`` (each
    speaker by the stats of that speaker's own frames, passed as ``speaker_stats``; without
    them, e.g. an unknown speaker at inference, the global training stats are used).
    """

    def __init__(self, mode: str = "global", floor: float = STD_FLOOR) -> None:
        if mode not in NORM_MODES:
            raise ValueError(f"normalize must be one of {NORM_MODES}, not {mode!r}")
        self.mode = mode
        self.floor = floor
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, feats: Sequence[np.ndarray], speakers: Sequence[str] | None = None) -> Normalizer:
        """Fit the global statistics on the TRAINING utterances (`speakers` is accepted for a
        uniform call; speaker statistics are computed per speaker by :func:`normalize_all`)."""
        self.mean, self.std = frame_stats(feats, self.floor)
        return self

    def transform(
        self, x: np.ndarray, speaker_stats: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """Normalised float32 copy of one utterance's features."""
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "none":
            return x.copy()
        if self.mode == "utterance":
            mean, std = frame_stats([x], self.floor)
        elif self.mode == "speaker" and speaker_stats is not None:
            mean, std = speaker_stats
        else:
            if self.mean is None or self.std is None:
                raise RuntimeError("Normalizer is not fitted")
            mean, std = self.mean, self.std
        return ((x - mean) / np.maximum(std, self.floor)).astype(np.float32)

    def state(self) -> dict[str, Any]:
        """``{"mode", "mean", "std"}`` for the model artefact (float32 arrays or None)."""
        return {"mode": self.mode, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Normalizer:
        n = cls(d["mode"])
        n.mean = None if d.get("mean") is None else np.asarray(d["mean"], dtype=np.float32)
        n.std = None if d.get("std") is None else np.asarray(d["std"], dtype=np.float32)
        return n


def normalize_all(
    feats: dict[str, np.ndarray],
    df: Any,
    mode: str,
    train_ids: Iterable[str],
    fitted: Normalizer | None = None,
    global_speakers: Iterable[str] = (),
) -> tuple[dict[str, np.ndarray], Normalizer]:
    """Normalised copies of `feats` and the Normalizer fitted on `train_ids` only.

    ``speaker`` mode standardises every speaker — test speakers included — with the mean/std of
    that speaker's own frames. These statistics use audio only, never labels: this is the
    standard speaker normalisation of SER and the one place test-speaker audio is used. Rows
    with an empty speaker fall back to the global training statistics, as unknown speakers do
    at inference.

    To apply a trained model's normaliser (evaluation), pass it as `fitted` with no
    `train_ids`: its global statistics are used instead of fitting new ones. With neither, only
    modes that need no global statistics work (``none``, ``utterance``, ``speaker`` when every
    row names its speaker).

    `global_speakers` (``speaker`` mode): speakers normalised with the global statistics instead
    of their own — the degenerate speakers of `stlser.degenerate`.
    """
    if mode not in NORM_MODES:
        raise ValueError(f"normalize must be one of {NORM_MODES}, not {mode!r}")
    train = [u for u in train_ids if u in feats]
    if "speaker" in df.columns:
        spk_col = df["speaker"].fillna("").astype(str)
    else:
        spk_col = [""] * len(df)
    speaker_of = dict(zip(df["utt_id"].astype(str), spk_col, strict=True))
    norm = Normalizer(mode)
    if train:
        norm.fit([feats[u] for u in train], [speaker_of.get(u, "") for u in train])
    elif fitted is not None:
        norm.mean, norm.std = fitted.mean, fitted.std
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if mode == "speaker":
        groups: dict[str, list[str]] = {}
        for u in feats:
            spk = speaker_of.get(u, "")
            if spk:
                groups.setdefault(spk, []).append(u)
        skip = set(global_speakers)
        stats = {
            s: frame_stats([feats[u] for u in us], norm.floor)
            for s, us in groups.items()
            if s not in skip
        }
    out = {u: norm.transform(x, stats.get(speaker_of.get(u, ""))) for u, x in feats.items()}
    return out, norm


class Normalize(nn.Module):
    """Torch form of :class:`Normalizer` for padded batches ``feats[B, T, F]`` with ``frames[B]``.

    Modes ``global`` and ``speaker`` apply the stored training-set statistics (an unseen speaker
    gets the global statistics, as in training); ``utterance`` uses each clip's own valid frames;
    ``none`` passes through. Padded frames stay 0.
    """

    def __init__(self, state: dict[str, Any], n_features: int) -> None:
        super().__init__()
        self.mode = str(state.get("mode", "global"))
        if self.mode not in NORM_MODES:
            raise ValueError(f"unknown normalizer mode {self.mode!r}")
        mean, std = state.get("mean"), state.get("std")
        if self.mode in ("global", "speaker") and (mean is None or std is None):
            raise ValueError(f"normalizer mode {self.mode!r} needs mean and std in the artefact")
        n = n_features
        mean = np.zeros(n, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(-1)
        std = np.ones(n, np.float32) if std is None else np.asarray(std, np.float32).reshape(-1)
        if mean.shape != (n,) or std.shape != (n,):
            raise ValueError(f"normalizer has {mean.shape[0]} dims, front end gives {n}")
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("std", torch.from_numpy(np.maximum(std, STD_FLOOR)))

    def forward(self, feats: Tensor, frames: Tensor) -> Tensor:
        valid = (
            torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        ).unsqueeze(-1)
        if self.mode == "none":
            return feats
        if self.mode == "utterance":
            m = valid.to(feats.dtype)
            n = m.sum(1, keepdim=True).clamp_min(1.0)
            mean = (feats * m).sum(1, keepdim=True) / n
            var = ((feats - mean) ** 2 * m).sum(1, keepdim=True) / n
            x = (feats - mean) / var.sqrt().clamp_min(STD_FLOOR)
        else:
            x = (feats - self.mean) / self.std
        return torch.where(valid, x, torch.zeros_like(x))


def normalize_functionals(
    X: np.ndarray,
    speakers: Sequence[Any],
    mode: str,
    fit_idx: np.ndarray | None = None,
    global_speakers: Sequence[str] = (),
) -> tuple[np.ndarray, str]:
    """Return (normalised copy of X, mode actually applied).

    ``speaker``: every speaker z-scored by its own statistics (no labels used).
    ``global``: z-scored with the mean/std of the rows ``fit_idx`` (the fitting set).
    ``none`` / ``utterance``: unchanged (utterance normalisation is undefined for functionals).
    `global_speakers` (``speaker`` mode): these speakers are z-scored with the statistics of the
    rows ``fit_idx`` instead of their own (the degenerate speakers of `stlser.degenerate`).
    """
    X = np.asarray(X, dtype=np.float64)
    if mode == "speaker":
        out = np.empty_like(X)
        spk = np.asarray([str(s) for s in speakers])
        skip = set(global_speakers)
        ref = X if fit_idx is None else X[fit_idx]
        for s in np.unique(spk):
            rows = spk == s
            out[rows] = _zscore(X[rows], ref if s in skip else X[rows])
        return out, "speaker"
    if mode == "global":
        ref = X if fit_idx is None else X[fit_idx]
        return _zscore(X, ref), "global"
    if mode in ("none", "utterance"):
        return X.copy(), "none"
    raise ValueError(f"unknown features.normalize {mode!r} (none | global | speaker | utterance)")


def _zscore(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mean, std = zscore_stats(ref)
    return (X - mean) / std
