"""Speaker statistics for label-free, test-time speaker adaptation of a functionals model.

The default recipe normalises each speaker's functionals with that speaker's own mean and
standard deviation (crossval does it for every test speaker, from audio alone). At prediction
time the same is possible whenever several clips of one speaker are at hand: `SpeakerStats`
holds a speaker's statistics, computed from the functionals of that speaker's unlabeled clips
exactly as crossval computes them (population mean and std per value; a std below 1e-8 counts
as 1), saved as data (``.npz`` without pickles, or ``.json``) and reused.

A recognizer adapted to a speaker (`adapted`) normalises with those statistics shrunk toward
the training set's global ones (`shrunk`): n clips count as n observations against
:data:`PRIOR_CLIPS_MEAN` pseudo-clips of the global mean and :data:`PRIOR_CLIPS_VAR` of the
global variance. A few clips' raw statistics are noisy (one clip has no spread at all) and
lose to the global ones; shrunk, two clips already gain, and with a speaker's many clips the
result is crossval's normalisation up to a few percent. The two counts were chosen on
leave-one-corpus-out predictions (decision D20, `benchmarks/bench_adapt.py --select`).

Below :data:`MIN_CLIPS` clips or :data:`MIN_SECONDS` seconds of audio the statistics do not
stand for the speaker: they are still computed and saved, but `usable` is False and
recognizers keep the training set's global statistics, saying so.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stlser.utils import atomic_path, write_text

#: Fewest clips whose (shrunk) statistics stand for a speaker.
MIN_CLIPS = 2
#: Least audio (seconds, all clips together) whose statistics stand for a speaker.
MIN_SECONDS = 3.0
#: Pseudo-clips of the global mean and of the global variance that a speaker's statistics are
#: shrunk toward (`shrunk`).
PRIOR_CLIPS_MEAN = 2.0
PRIOR_CLIPS_VAR = 8.0
FORMAT = "stlser-speaker-stats/1"
log = logging.getLogger(__name__)


def zscore_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column of X[N, D] (float64; a std below 1e-8 counts as 1): the
    statistics crossval normalises a speaker's functionals with
    (`stlser.features.normalise.normalize_functionals`) and `SpeakerStats` holds."""
    std = X.std(axis=0)
    return X.mean(axis=0), np.where(std > 1e-8, std, 1.0)


@dataclass
class SpeakerStats:
    """One speaker's functionals statistics (``mean[D]``, ``std[D]``) and what they rest on."""

    mean: np.ndarray
    std: np.ndarray
    clips: int
    seconds: float
    #: the functional sets the values belong to (a model over other sets cannot use them)
    sets: list[str] = field(default_factory=list)
    speaker: str = ""

    @property
    def usable(self) -> bool:
        """Enough clips and audio to stand for the speaker (module docstring)."""
        return self.clips >= MIN_CLIPS and self.seconds >= MIN_SECONDS

    def why_not(self) -> str:
        """Why the statistics are not used ('' if they are)."""
        if self.usable:
            return ""
        return (
            f"{self.clips} clip(s), {self.seconds:.1f} s of audio: below the minimum of "
            f"{MIN_CLIPS} clips and {MIN_SECONDS:g} s for speaker statistics"
        )

    @classmethod
    def from_functionals(
        cls, X: np.ndarray, seconds: float, sets: list[str], speaker: str = ""
    ) -> SpeakerStats:
        """Statistics of the rows of X[N, D] (one row per clip), as crossval computes them."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError("speaker statistics need at least one clip's functionals")
        mean, std = zscore_stats(np.where(np.isfinite(X), X, 0.0))
        return cls(
            mean.astype(np.float32),
            std.astype(np.float32),
            len(X),
            float(seconds),
            list(sets),
            str(speaker),
        )

    def check(self, dim: int, sets: list[str]) -> None:
        """ValueError unless these statistics fit a model over `sets` with `dim` values."""
        if self.mean.shape != (dim,) or self.std.shape != (dim,):
            raise ValueError(
                f"speaker statistics have {self.mean.shape[-1]} values; the model reads {dim}"
            )
        if self.sets and list(sets) and list(self.sets) != list(sets):
            raise ValueError(
                f"speaker statistics are of functional sets {self.sets}; the model reads {sets}"
            )

    # ------------------------------------------------------------------ as data
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "speaker": self.speaker,
            "clips": self.clips,
            "seconds": self.seconds,
            "sets": self.sets,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.json`` or ``.npz`` (by the suffix), atomically."""
        p = Path(path)
        if p.suffix.lower() == ".json":
            write_text(p, json.dumps(self.to_dict()) + "\n")
        elif p.suffix.lower() == ".npz":
            with atomic_path(p) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    mean=self.mean,
                    std=self.std,
                    meta=np.asarray(json.dumps({**self.to_dict(), "mean": [], "std": []})),
                )
        else:
            raise ValueError(f"speaker statistics are saved as .json or .npz, not {p.name!r}")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpeakerStats:
        """Read a file written by `save` (never unpickles); ValueError names what is wrong."""
        p = Path(path)
        try:
            if p.suffix.lower() == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    d = json.loads(str(z["meta"]))
                    d["mean"], d["std"] = z["mean"], z["std"]
            else:
                d = json.loads(p.read_text(encoding="utf-8"))
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r} is not {FORMAT}")
            mean = np.asarray(d["mean"], dtype=np.float32).reshape(-1)
            std = np.asarray(d["std"], dtype=np.float32).reshape(-1)
            if mean.shape != std.shape or not (np.isfinite(mean).all() and (std > 0).all()):
                raise ValueError("mean and std must be finite, of one length, std > 0")
            return cls(
                mean,
                std,
                int(d["clips"]),
                float(d["seconds"]),
                [str(s) for s in d.get("sets") or []],
                str(d.get("speaker") or ""),
            )
        except OSError as e:
            raise ValueError(f"{p}: cannot read speaker statistics ({e.strerror or e})") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{p}: not a speaker statistics file ({e})") from None


def shrunk(
    stats: SpeakerStats,
    prior: tuple[np.ndarray, np.ndarray],
    mean_clips: float = PRIOR_CLIPS_MEAN,
    var_clips: float = PRIOR_CLIPS_VAR,
) -> SpeakerStats:
    """`stats` of n clips shrunk toward `prior` (the global mean and std): mean = (n·m + a·m_g) /
    (n + a), variance = (n·v + b·v_g) / (n + b), a = `mean_clips`, b = `var_clips` (a
    conjugate-prior style estimate: the global statistics count as a and b clips). Statistics
    equal to the prior come back unchanged; the clip count and audio stay `stats`'s."""
    n = float(stats.clips)
    mean_g, std_g = (np.asarray(v, np.float64) for v in prior)
    mean = (n * stats.mean.astype(np.float64) + mean_clips * mean_g) / (n + mean_clips)
    # one clip has no spread: its stored std of 1 is the convention for constant values
    var_s = stats.std.astype(np.float64) ** 2 if stats.clips > 1 else 0.0
    var = (n * var_s + var_clips * std_g**2) / (n + var_clips)
    std = np.sqrt(var)
    return SpeakerStats(
        mean.astype(np.float32),
        np.where(std > 1e-8, std, 1.0).astype(np.float32),
        stats.clips,
        stats.seconds,
        list(stats.sets),
        stats.speaker,
    )


def encode_prior(mean: np.ndarray, std: np.ndarray) -> str:
    """Global statistics as text for an ONNX graph's metadata (``global_stats``): base64 of
    float32 little-endian, the means then the stds."""
    import base64

    both = np.concatenate([np.asarray(mean, "<f4").ravel(), np.asarray(std, "<f4").ravel()])
    return base64.b64encode(both.tobytes()).decode("ascii")


def decode_prior(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`encode_prior`'s inverse; ValueError unless it holds 2 × `dim` finite values, std > 0."""
    import base64
    import binascii

    try:
        both = np.frombuffer(base64.b64decode(text, validate=True), "<f4").astype(np.float32)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"global_stats is not base64 float32 ({e})") from None
    if both.shape != (2 * dim,) or not np.isfinite(both).all() or not (both[dim:] > 0).all():
        raise ValueError(f"global_stats holds {both.size} values, not {2 * dim} finite ones")
    return both[:dim], both[dim:]


class RunningStats:
    """A speaker's statistics accumulated clip by clip (streams, the service's speaker tokens):
    count, mean and sum of squared deviations merged per batch of rows (Chan et al., "Updating
    formulae and a pairwise algorithm for computing sample variances", 1979), so the memory is
    three vectors whatever the number of clips; `stats()` equals `SpeakerStats.from_functionals`
    of every row seen (to float rounding)."""

    def __init__(self, dim: int, sets: list[str], speaker: str = "") -> None:
        self.n = 0
        self.seconds = 0.0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)
        self.sets, self.speaker = list(sets), str(speaker)

    def add(self, X: np.ndarray, seconds: float) -> None:
        """Rows X[N, D] (one per clip) holding `seconds` of audio together."""
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"running statistics of {len(self.mean)} values got {X.shape}")
        X = np.where(np.isfinite(X), X, 0.0)
        n, mean = len(X), X.mean(0)
        total = self.n + n
        delta = mean - self.mean
        self.m2 += ((X - mean) ** 2).sum(0) + delta**2 * self.n * n / total
        self.mean += delta * n / total
        self.n, self.seconds = total, self.seconds + float(seconds)

    def stats(self) -> SpeakerStats:
        if not self.n:
            raise ValueError("speaker statistics need at least one clip")
        std = np.sqrt(self.m2 / self.n)
        std = np.where(std > 1e-8, std, 1.0)
        return SpeakerStats(
            self.mean.astype(np.float32),
            std.astype(np.float32),
            self.n,
            self.seconds,
            self.sets,
            self.speaker,
        )


# ------------------------------------------------------------------ with a recognizer
#: What a recognizer over log-mel frames says when asked to adapt.
NOT_ADAPTABLE = (
    "speaker adaptation needs a model over functionals (the default recipe, e.g. the shipped "
    "model); this model reads log-mel frames"
)


def stats_of(
    waves: Iterable[np.ndarray],
    functionals: Callable[[list[np.ndarray]], np.ndarray],
    sets: list[str],
    speaker: str = "",
    batch_size: int = 16,
    sample_rate: int = 16000,
) -> SpeakerStats | None:
    """The statistics of decoded clips (`waves`, consumed `batch_size` at a time, so any
    number fits in memory) through `functionals` (a batch of clips → [B, D]); None if there is
    no clip."""
    rows: list[np.ndarray] = []
    samples = 0
    it = iter(waves)
    while True:
        batch = [w for _, w in zip(range(batch_size), it, strict=False)]
        if not batch:
            break
        samples += sum(len(w) for w in batch)
        rows.append(np.asarray(functionals(batch), np.float64))
    if not rows:
        return None
    return SpeakerStats.from_functionals(np.concatenate(rows), samples / sample_rate, sets, speaker)


def adapted(rec: Any, stats: SpeakerStats) -> Any:
    """A copy of `rec` normalising with `stats` shrunk toward the model's global statistics
    (`shrunk`; global statistics below the minimum, with a warning); `rec.adaptation` records
    what was given (`BaseRecognizer.adapt`)."""
    import copy

    if not rec.adaptable:
        raise ValueError(NOT_ADAPTABLE)
    stats.check(rec.functionals_dim, list(rec.functional_sets or []))
    new = copy.copy(rec)
    new.adaptation = stats
    if not stats.usable:
        new.speaker = None
        who = f"speaker {stats.speaker!r}: " if stats.speaker else ""
        log.warning(f"{who}{stats.why_not()}; the global statistics are used")
    elif rec.global_stats is None:
        new.speaker = stats
        log.warning(
            "the model does not carry its global statistics: the speaker's are used unshrunk"
        )
    else:
        new.speaker = shrunk(stats, rec.global_stats)
    return new
