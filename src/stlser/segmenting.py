"""Torch-free recognition core shared by `stlser.inference` (torch) and `stlser.onnx_runtime`.

Holds what does not depend on the network's runtime: the result types, input decoding,
streaming decode of long files, the energy voice-activity detector, the cutting of speech into
windows, and :class:`BaseRecognizer`, which implements ``predict``/``predict_batch``/
``segments``/``stream`` on top of one method a runtime provides:
``_run(wave[B, N] float32, lengths[B] int64) -> probs[B, C]``.

Imports only numpy, soundfile, soxr and `stlser.audio`, so the ONNX runtime stays torch-free.

Voice activity detection (why energy and not a neural VAD: docs/inference.md). Frames of 20 ms;
frame level in dB (``10 log10(mean x² + 1e-12)``, 0 dB = full-scale square wave). The noise floor
is the 10th percentile of frame levels in a sliding window (30 s of history and 5 s of
look-ahead), recomputed every 0.5 s, so it follows slow changes in background noise and needs
no calibration. A region starts when a frame is ``threshold_db`` above the floor (and above an
absolute gate of -70 dBFS), reaching back to where the level first rose ``threshold_db -
hysteresis_db`` above the floor; it continues while frames stay above that lower threshold,
bridging dips shorter than ``min_silence`` (the hangover); regions shorter than ``min_speech``
are dropped. Everything runs incrementally on blocks: memory is bounded by the look-ahead, the
floor window and two analysis windows, whatever the length of the recording.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from stlser import audio
from stlser.audio import AudioError

SAMPLE_RATE = audio.SAMPLE_RATE
#: The network's CNN pools time by 16: clips are zero-padded (lengths unchanged) to this width.
MIN_BATCH_SAMPLES = int(audio.MIN_SECONDS * SAMPLE_RATE)
#: Batches are padded to a multiple of this many samples (0.5 s); see `pad_batch`.
PAD_QUANTUM = SAMPLE_RATE // 2


# ------------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """The emotion of one clip: top label, every label's probability, clip length (s)."""

    label: str
    probabilities: dict[str, float]
    duration: float

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Segment:
    """The emotion of one stretch [start, end) of a longer recording (seconds)."""

    start: float
    end: float
    label: str
    probabilities: dict[str, float]

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ decoding
def is_source(x: object) -> bool:
    """True for what `stlser.audio.load` decodes: a path, bytes or a binary file object."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray)) or hasattr(x, "read")


def decode(x: Any, sample_rate: int | None = None) -> np.ndarray:
    """Any accepted input → validated 16 kHz mono float32 (raises AudioError for bad audio).

    Paths, bytes and binary file objects are decoded at their own rate (`sample_rate` is then
    ignored); arrays (``samples`` or ``samples × channels``, float or integer PCM) need it.
    """
    if is_source(x):
        return audio.load(x)
    if sample_rate is None:
        raise ValueError(
            "sample_rate is required when passing an array of samples "
            "(e.g. recognizer.predict(x, sample_rate=44100))"
        )
    return audio.from_array(np.asarray(x), int(sample_rate))


def as_float(chunk: Any, source: str = "<array>") -> np.ndarray:
    """Samples (any dtype, ``samples[, channels]``) → mono float32 at the same rate.

    The conversion of `stlser.audio.from_array` without its length/silence checks (a live chunk
    may be short or quiet); NaN and unsupported types still raise AudioError.
    """
    a = np.asarray(chunk)
    if a.ndim == 2 and a.shape[0] < a.shape[1] and a.shape[0] <= 8:
        a = a.T
    if a.ndim not in (1, 2):
        raise AudioError(source, f"expected a 1-D or 2-D array of samples, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.unsignedinteger):
        half = float(np.iinfo(a.dtype).max // 2 + 1)
        a = (a.astype(np.float64) - half) / half
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64) / float(np.iinfo(a.dtype).max + 1)
    elif a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
        raise AudioError(source, f"unsupported sample type {a.dtype}")
    a = audio.to_mono(a.astype(np.float32, copy=False))
    if not np.all(np.isfinite(a)):
        raise AudioError(source, "contains NaN or infinite samples")
    return np.ascontiguousarray(a, dtype=np.float32)


class _Resampler:
    """Streaming resampler to 16 kHz (soxr.ResampleStream; identity at 16 kHz)."""

    def __init__(self, sr_in: int, sr_out: int = SAMPLE_RATE) -> None:
        if sr_in <= 0:
            raise ValueError(f"sample rate must be positive, got {sr_in}")
        self.stream = None
        if sr_in != sr_out:
            import soxr

            self.stream = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return x
        return self.stream.resample_chunk(x, last=last)


def iter_blocks(
    source: Any, block_seconds: float = 10.0, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """Decode a path, bytes or binary file object block by block → 16 kHz mono float32 blocks.

    Never holds more than one block: for hour-long files. Raises AudioError for unreadable,
    truncated or empty input, NaN samples, or a sample rate below `audio.MIN_SAMPLE_RATE`;
    with `max_seconds`, AudioTooLarge for longer audio (`audio.check_limits`).
    """
    meta = audio.info(source)  # existence, emptiness, WAV truncation, readability
    audio.check_limits(meta, source, max_seconds)
    cap = None if max_seconds is None else int(max_seconds * meta.sample_rate) + meta.sample_rate
    if isinstance(source, (bytes, bytearray)):
        fh: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        fh = str(source)
    else:
        fh = source
        if hasattr(fh, "seek"):
            fh.seek(0)
    resample = _Resampler(meta.sample_rate)
    n = max(1, int(block_seconds * meta.sample_rate))
    got = declared = 0
    try:
        with sf.SoundFile(fh) as f:
            declared = int(f.frames)
            while True:
                try:
                    x = f.read(frames=n, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioError(source, f"truncated or corrupt audio ({e})") from None
                if x.shape[0] == 0:
                    break
                got += x.shape[0]
                if cap is not None and got > cap:
                    raise audio.AudioTooLarge(source, "audio longer than its header says")
                y = audio.to_mono(x)
                if not np.all(np.isfinite(y)):
                    raise AudioError(source, "contains NaN or infinite samples")
                out = resample(np.ascontiguousarray(y))
                if out.size:
                    yield out
                if x.shape[0] < n:
                    break
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(source, f"not readable as audio ({e})") from None
    if got == 0:
        raise AudioError(source, "no audio samples")
    if 0 < got < declared:  # as audio.load: a file cut short must not pass as a shorter one
        raise AudioError(source, f"truncated: header says {declared} frames, read {got}")
    tail = resample(np.zeros(0, np.float32), last=True)
    if tail.size:
        yield tail


def iter_array_blocks(x: np.ndarray, block: int = 10 * SAMPLE_RATE) -> Iterator[np.ndarray]:
    """A decoded array as blocks (same code path as files)."""
    for i in range(0, len(x), block):
        yield x[i : i + block]


# ------------------------------------------------------------------------------------ VAD
@dataclass
class VADConfig:
    """Energy VAD settings (seconds and dB). See the module docstring."""

    frame: float = 0.02
    threshold_db: float = 10.0  # onset: this far above the noise floor
    hysteresis_db: float = 4.0  # offset threshold = threshold_db - hysteresis_db
    abs_floor_db: float = -70.0  # nothing quieter than this (dBFS) is speech
    min_speech: float = 0.3
    min_silence: float = 0.3
    percentile: float = 10.0
    floor_window: float = 30.0  # seconds of history for the noise floor
    lookahead: float = 5.0  # seconds of future for the noise floor (decision delay)
    update: float = 0.5  # recompute the floor every this many seconds


class EnergyVAD:
    """Incremental energy VAD: ``push(samples)`` / ``flush()`` return finished speech regions as
    ``(start, end)`` sample indices (16 kHz), in order. Memory is bounded (floor window +
    look-ahead of frame levels)."""

    def __init__(self, cfg: VADConfig | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        self.cfg = c = cfg or VADConfig()
        if c.min_speech < 0 or c.min_silence < 0 or c.frame <= 0:
            raise ValueError("VAD durations must be >= 0 (frame > 0)")
        self.flen = max(1, int(round(c.frame * sample_rate)))
        fps = sample_rate / self.flen
        self.block = max(1, int(round(c.update * fps)))
        self.look = int(round(c.lookahead * fps))
        self.hist = int(round(c.floor_window * fps))
        self.min_speech = int(math.ceil(c.min_speech * fps - 1e-9))
        self.min_silence = int(math.ceil(c.min_silence * fps - 1e-9))
        self._rest = np.zeros(0, np.float32)  # samples not yet filling a frame
        self._db = np.zeros(0, np.float64)  # levels of frames [_db_off, n_frames)
        self._db_off = 0
        self.n_frames = 0
        self.decided = 0  # frames before this are decided
        self.in_speech = False
        self.run_start: int | None = None  # first frame of the current above-offset run
        self.seg_start = 0
        self.last_active = -1
        self.floor = float("nan")

    # --- public
    def push(self, x: np.ndarray) -> list[tuple[int, int]]:
        """Feed 16 kHz samples; return the regions that ended (decisions lag by the look-ahead)."""
        x = np.concatenate([self._rest, np.asarray(x, np.float32)]) if self._rest.size else x
        n = len(x) // self.flen
        if n:
            fr = np.asarray(x[: n * self.flen], np.float64).reshape(n, self.flen)
            db = 10.0 * np.log10(np.mean(fr * fr, axis=1) + 1e-12)
            self._db = np.concatenate([self._db, db])
            self.n_frames += n
        self._rest = np.array(x[n * self.flen :], np.float32)
        return self._decide(final=False)

    def flush(self) -> list[tuple[int, int]]:
        """End of input: decide the remaining frames and close an open region."""
        out = self._decide(final=True)
        if self.in_speech:
            out += self._close()
        return out

    def open_region(self) -> tuple[int, int] | None:
        """(start, confirmed end) in samples of a region still in progress, else None."""
        if not self.in_speech:
            return None
        return self.seg_start * self.flen, (self.last_active + 1) * self.flen

    def earliest_open(self) -> int:
        """First sample a future region can still start at (audio before it may be dropped)."""
        f = self.decided
        if self.in_speech:
            f = self.seg_start
        elif self.run_start is not None:
            f = self.run_start
        return f * self.flen

    # --- internals
    def _decide(self, final: bool) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        c = self.cfg
        while self.decided < self.n_frames:
            end = min(self.decided + self.block, self.n_frames)
            if not final and end + self.look > self.n_frames:
                break
            lo = max(self._db_off, self.decided - self.hist)
            hi = min(self.n_frames, end + self.look)
            ref = self._db[lo - self._db_off : hi - self._db_off]
            self.floor = float(np.percentile(ref, c.percentile))
            on = max(self.floor + c.threshold_db, c.abs_floor_db)
            off = on - c.hysteresis_db
            for i in range(self.decided, end):
                out += self._step(i, self._db[i - self._db_off], on, off)
            self.decided = end
            drop = max(0, self.decided - self.hist - self._db_off)
            if drop > 4 * self.block:  # trim history in chunks
                self._db = self._db[drop:]
                self._db_off += drop
        return out

    def _step(self, i: int, e: float, on: float, off: float) -> list[tuple[int, int]]:
        if self.in_speech:
            if e > off:
                self.last_active = i
            elif i - self.last_active > self.min_silence:
                return self._close()
            return []
        if e > off:
            if self.run_start is None:
                self.run_start = i
            if e > on:
                self.in_speech, self.seg_start, self.last_active = True, self.run_start, i
        else:
            self.run_start = None
        return []

    def _close(self) -> list[tuple[int, int]]:
        start, end = self.seg_start, self.last_active + 1
        self.in_speech, self.run_start = False, None
        if end - start < max(self.min_speech, 1):
            return []
        return [(start * self.flen, end * self.flen)]


def detect_speech(x: np.ndarray, cfg: VADConfig | None = None) -> list[tuple[float, float]]:
    """Speech regions (seconds) of a 16 kHz mono array — the same incremental VAD, run at once."""
    vad = EnergyVAD(cfg)
    regions = []
    for block in iter_array_blocks(np.asarray(x, np.float32)):
        regions += vad.push(block)
    regions += vad.flush()
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in regions]


def split_region(start: int, end: int, max_len: int) -> list[tuple[int, int]]:
    """Cut [start, end) into the fewest equal pieces of at most `max_len` samples."""
    n = max(1, math.ceil((end - start) / max_len))
    cuts = [start + round(k * (end - start) / n) for k in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class _Buffer:
    """The recent samples of a stream, addressed by absolute sample index. Appends are queued
    and joined on demand, so many tiny chunks cost no repeated copying."""

    def __init__(self) -> None:
        self.data = np.zeros(0, np.float32)
        self.parts: list[np.ndarray] = []
        self.start = 0  # absolute index of data[0]
        self.end = 0  # absolute index after the last sample

    def append(self, x: np.ndarray) -> None:
        if len(x):
            self.parts.append(np.asarray(x, np.float32))
            self.end += len(x)

    def _join(self) -> None:
        if self.parts:
            self.data = np.concatenate([self.data, *self.parts])
            self.parts = []

    def get(self, a: int, b: int) -> np.ndarray:
        if a < self.start:
            raise RuntimeError(f"sample {a} was already dropped (buffer starts at {self.start})")
        self._join()
        return self.data[a - self.start : b - self.start].copy()

    def drop_before(self, a: int) -> None:
        k = min(max(0, a - self.start), self.end - self.start)
        if k:
            self._join()
            self.data = self.data[k:].copy()
            self.start += k


def iter_speech_windows(
    blocks: Iterable[np.ndarray],
    max_window: float = 6.0,
    pad: float = 0.1,
    vad: VADConfig | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Speech windows ``(start, end, samples)`` (16 kHz sample indices) of a stream of blocks.

    Each speech region, widened by `pad` seconds each side, is cut into the fewest equal pieces
    of at most `max_window` seconds. A region still in progress emits a full window whenever
    two windows' worth of it are confirmed, so one hour of uninterrupted speech needs no more
    memory than 12 seconds of it.
    """
    if max_window <= 0:
        raise ValueError(f"max_window must be > 0, got {max_window}")
    det = EnergyVAD(vad)
    wmax = max(1, int(round(max_window * SAMPLE_RATE)))
    padn = max(0, int(round(pad * SAMPLE_RATE)))
    buf = _Buffer()
    emitted: int | None = None  # within the open region: samples before this were emitted

    def finish(a: int, b: int) -> Iterator[tuple[int, int, np.ndarray]]:
        nonlocal emitted
        a = max(0, a - padn) if emitted is None else emitted
        b = min(buf.end, b + padn)
        emitted = None
        if b > a:
            for s, e in split_region(a, b, wmax):
                yield s, e, buf.get(s, e)

    for block in blocks:
        buf.append(block)
        for a, b in det.push(block):
            yield from finish(a, b)
        region = det.open_region()
        if region is not None:
            start = max(0, region[0] - padn) if emitted is None else emitted
            while region[1] - start >= 2 * wmax:
                yield start, start + wmax, buf.get(start, start + wmax)
                start += wmax
                emitted = start
        keep = emitted if emitted is not None else det.earliest_open() - padn
        buf.drop_before(keep)
    for a, b in det.flush():
        yield from finish(a, b)


# ----------------------------------------------------------------------------- recognizer
def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    waves: Sequence[np.ndarray], quantum: int = PAD_QUANTUM
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D float32 waves → (wave[B, N] float32, lengths[B] int64).

    N is at least 0.25 s and rounded up to a multiple of `quantum` samples: the network is
    exact under padding, and few distinct shapes keep the runtimes' per-shape caches (oneDNN
    primitives, allocator arenas) small — memory stays flat over hours of audio.
    """
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    n = max(int(lengths.max(initial=0)), MIN_BATCH_SAMPLES)
    if quantum > 1:
        n = -(-n // quantum) * quantum
    out = np.zeros((len(waves), n), np.float32)
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
    return out, lengths


class BaseRecognizer:
    """Everything but the network call; subclasses set `labels` and implement `_run`."""

    labels: list[str]
    sample_rate: int = SAMPLE_RATE

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """wave[B, N] float32, lengths[B] int64 → probabilities[B, C] float (numpy)."""
        raise NotImplementedError

    def probabilities(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities [B, C] of already decoded 16 kHz mono clips, as one padded batch."""
        if not waves:
            return np.zeros((0, len(self.labels)), np.float32)
        wave, lengths = pad_batch(waves)
        return np.asarray(self._run(wave, lengths), dtype=np.float64)

    def _probs_dict(self, p: np.ndarray) -> dict[str, float]:
        return {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}

    def _prediction(self, p: np.ndarray, n_samples: int) -> Prediction:
        return Prediction(
            self.labels[int(np.argmax(p))], self._probs_dict(p), n_samples / SAMPLE_RATE
        )

    def _segment(self, p: np.ndarray, a: int, b: int) -> Segment:
        return Segment(
            a / SAMPLE_RATE, b / SAMPLE_RATE, self.labels[int(np.argmax(p))], self._probs_dict(p)
        )

    # --- clips
    def predict(self, x: Any, sample_rate: int | None = None) -> Prediction:
        """Emotion of one clip: a path, bytes, a binary file object, or an array (then
        `sample_rate` is required). Bad audio raises `stlser.audio.AudioError`."""
        wave = decode(x, sample_rate)
        return self._prediction(self.probabilities([wave])[0], len(wave))

    def iter_predict(
        self,
        inputs: Iterable[Any],
        batch_size: int = 16,
        sample_rate: int | None = None,
        group: int = 8,
    ) -> Iterator[tuple[int, Prediction | AudioError]]:
        """(index, Prediction or the AudioError) for each input, in input order.

        Inputs are decoded `batch_size * group` at a time, sorted by length within that group
        and batched, so memory stays bounded for any number of files.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        it = iter(enumerate(inputs))
        while True:
            chunk = []
            for _ in range(batch_size * max(1, group)):
                try:
                    chunk.append(next(it))
                except StopIteration:
                    break
            if not chunk:
                return
            results: dict[int, Prediction | AudioError] = {}
            waves: list[np.ndarray] = []
            where: list[int] = []
            for i, x in chunk:
                try:
                    waves.append(decode(x, sample_rate))
                    where.append(i)
                except AudioError as e:
                    results[i] = e
            for batch in _batches_by_length([len(w) for w in waves], batch_size):
                probs = self.probabilities([waves[j] for j in batch])
                for j, p in zip(batch, probs, strict=True):
                    results[where[j]] = self._prediction(p, len(waves[j]))
            for i, _ in chunk:
                yield i, results[i]

    def predict_batch(
        self, inputs: Iterable[Any], batch_size: int = 16, sample_rate: int | None = None
    ) -> list[Prediction]:
        """Predictions for many clips, batching clips of similar length; equal to calling
        `predict` on each. The first bad input raises its AudioError."""
        out = []
        for _, r in self.iter_predict(inputs, batch_size, sample_rate):
            if isinstance(r, AudioError):
                raise r
            out.append(r)
        return out

    # --- long recordings
    def iter_segments(
        self,
        x: Any,
        sample_rate: int | None = None,
        max_window: float = 6.0,
        min_speech: float = 0.3,
        min_silence: float = 0.3,
        threshold_db: float = 10.0,
        pad: float = 0.1,
        batch_size: int = 8,
        block_seconds: float = 10.0,
        max_seconds: float | None = None,
    ) -> Iterator[Segment]:
        """Like `segments`, yielding segments as they are found (constant memory)."""
        if is_source(x):
            blocks: Iterable[np.ndarray] = iter_blocks(x, block_seconds, max_seconds)
        else:
            if sample_rate is None:
                raise ValueError("sample_rate is required when passing an array of samples")
            arr = audio.resample(as_float(x), int(sample_rate))  # silence is allowed here
            if arr.size == 0:
                raise AudioError("<array>", "no audio samples")
            blocks = iter_array_blocks(arr, max(1, int(block_seconds * SAMPLE_RATE)))
        cfg = VADConfig(min_speech=min_speech, min_silence=min_silence, threshold_db=threshold_db)
        pending: list[tuple[int, int, np.ndarray]] = []
        for win in iter_speech_windows(blocks, max_window, pad, cfg):
            pending.append(win)
            if len(pending) >= batch_size:
                yield from self._classify_windows(pending)
                pending = []
        yield from self._classify_windows(pending)

    def _classify_windows(self, wins: list[tuple[int, int, np.ndarray]]) -> Iterator[Segment]:
        probs = self.probabilities([w for _, _, w in wins])
        for (a, b, _), p in zip(wins, probs, strict=True):
            yield self._segment(p, a, b)

    def segments(
        self,
        x: Any,
        sample_rate: int | None = None,
        max_window: float = 6.0,
        min_speech: float = 0.3,
        **kw: Any,
    ) -> list[Segment]:
        """One prediction per speech window of a long recording.

        Energy VAD finds speech regions (module docstring); each is cut into windows of at most
        `max_window` s and classified. Paths, bytes and file objects are decoded block by block,
        so memory does not grow with the recording's length. Other keywords: `min_silence`,
        `threshold_db`, `pad`, `batch_size`, `block_seconds`, `max_seconds` (refuse longer
        audio, `stlser.audio.check_limits`). No speech → [].
        """
        return list(self.iter_segments(x, sample_rate, max_window, min_speech, **kw))

    # --- live audio
    def stream(
        self, chunks: Iterable[Any], sample_rate: int, window: float = 3.0, hop: float = 1.0
    ) -> Iterator[Segment]:
        """Rolling predictions over live audio.

        `chunks` are arrays of any size at `sample_rate`. Every `hop` seconds of audio (at
        t = hop, 2·hop, ...) yields a Segment for the last `window` seconds [max(0, t - window),
        t); at the end of the stream one more for the last window if audio arrived since. The
        output depends only on the samples, not on how they were chunked.
        """
        if window <= 0 or hop <= 0:
            raise ValueError("window and hop must be > 0")
        resample = _Resampler(int(sample_rate))
        win_n = max(1, int(round(window * SAMPLE_RATE)))
        hop_n = max(1, int(round(hop * SAMPLE_RATE)))
        buf = _Buffer()
        due = hop_n
        last_end = 0

        def emit(t: int) -> Segment:
            a = max(0, t - win_n)
            p = self.probabilities([buf.get(a, t)])[0]
            return self._segment(p, a, t)

        for chunk in chunks:
            buf.append(resample(as_float(chunk, "<stream>")))
            while buf.end >= due:
                yield emit(due)
                last_end = due
                due += hop_n
                buf.drop_before(last_end - win_n)  # the final window may start there
        tail = resample(np.zeros(0, np.float32), last=True)
        buf.append(tail)
        while buf.end >= due:
            yield emit(due)
            last_end = due
            due += hop_n
            buf.drop_before(last_end - win_n)
        if buf.end > last_end and buf.end >= MIN_BATCH_SAMPLES:
            yield emit(buf.end)


#: File extensions per libsndfile major format (only the formats this libsndfile has are used).
_EXTENSIONS = {
    "WAV": (".wav",),
    "WAVEX": (".wav",),
    "RF64": (".rf64",),
    "W64": (".w64",),
    "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"),
    "MP3": (".mp3",),
    "AIFF": (".aiff", ".aif", ".aifc"),
    "AU": (".au", ".snd"),
    "CAF": (".caf",),
}


def audio_extensions() -> set[str]:
    """Extensions `stlser predict` picks up in folders: the formats libsndfile reads here."""
    have = sf.available_formats()
    return {e for fmt, exts in _EXTENSIONS.items() if fmt in have for e in exts}


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files and folders → (audio files, [(input, reason)] for inputs that do not exist).

    Folders are searched recursively for extensions libsndfile reads (sorted, hidden skipped).
    """
    exts = audio_extensions()
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and q.suffix.lower() in exts
                and not any(part.startswith(".") for part in q.relative_to(p).parts)
            )
            if not found:
                missing.append((str(p), "folder holds no audio files"))
            files += found
        elif p.exists():
            files.append(p)
        else:
            missing.append((str(p), "no such file"))
    return files, missing
