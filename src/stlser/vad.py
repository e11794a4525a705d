"""Energy voice-activity detection and the cutting of speech into windows (numpy only).

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

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from stlser.audio import SAMPLE_RATE, iter_array_blocks


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


class SampleBuffer:
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
    buf = SampleBuffer()
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
