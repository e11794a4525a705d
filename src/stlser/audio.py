"""Audio input: decode anything soundfile reads, mix to mono, resample to 16 kHz (soxr), float32.

Every failure (empty, truncated, not audio, silent, NaN, too short) raises :class:`AudioError`,
whose message names the source and the reason, so a corpus scan can list it and go on.

Float samples beyond full scale (one policy, applied where audio enters: files, bytes, file
objects, arrays, blocks and live chunks): non-finite samples (NaN, inf) are refused with an
AudioError; a signal whose mono peak (at its native rate, before resampling) exceeds 1.0 is
divided by that peak (scaled down to peak 1.0; a warning naming the source and the peak is
logged). Integer PCM never exceeds full scale, so it is never rescaled. Whole signals (`load`, `from_array`,
and `iter_blocks` on a seekable source, which measures the peak in a first block-wise pass) are
scaled by one factor, so a clip at peak 1.5 or x 1e30 gives the same samples as at peak 1.0.
Streams that cannot be read twice (non-seekable file objects, `Recognizer.stream` chunks) are
divided by the largest peak seen so far (never above 1.0; consistent once the loudest block has
passed).

Why this is one module: every way audio enters (files, bytes, file objects, arrays, blocks,
live chunks) shares one set of checks and one full-scale policy, and they are read together.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from stlser import riff

SAMPLE_RATE = 16_000
#: Shortest clip the network accepts (its CNN pools time by 16; 0.25 s gives >= 1 step).
MIN_SECONDS = 0.25
#: Peak amplitude below which a clip counts as digital silence.
SILENCE_PEAK = 1e-4
#: Lowest sample rate accepted: telephone audio is 8 kHz; a 1 Hz header would turn a few bytes
#: into minutes of 16 kHz audio to analyse.
MIN_SAMPLE_RATE = 4_000
#: Decoding work allowed per second of the duration limit: frames x channels of 48 kHz stereo.
DECODE_SAMPLES_PER_SECOND = 96_000
#: Frames decoded at a time (then mixed to mono and resampled): bounds the multichannel buffer.
BLOCK_FRAMES = 1 << 16
#: Longest clip classified in one piece by default (`Recognizer.predict`, `stlser predict`):
#: one forward pass over an hour of audio needs gigabytes; long recordings go through segments.
MAX_CLIP_SECONDS = 600.0
#: Longest audio a corpus scan (`stlser manifest`) accepts; longer files are skipped.
MAX_CORPUS_SECONDS = 600.0
#: Full scale: float samples whose peak exceeds it are scaled down to it.
FULL_SCALE = 1.0

log = logging.getLogger("stlser.audio")

Source = str | os.PathLike | bytes | bytearray | BinaryIO


class AudioError(ValueError):
    """An input that cannot be used as audio; the message names the file and the reason."""

    def __init__(self, source: object, reason: str) -> None:
        self.source = _name(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):  # keep (source, reason) across process pools (pickle uses .args)
        return (_rebuild_error, (self.source, self.reason))


def _rebuild_error(source: str, reason: str) -> AudioError:
    return AudioError(source, reason)


class AudioTooLarge(AudioError):
    """Audio that is readable but exceeds a duration or decoding limit (HTTP 413)."""

    def __reduce__(self):
        return (AudioTooLarge, (self.source, self.reason))


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one audio file."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or "<stream>"


def _open(source: Source) -> sf.SoundFile:
    """Open `source` with libsndfile after the cheap checks (exists, not a folder, not empty,
    WAV not truncated); every failure becomes an AudioError naming the source."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise AudioError(source, "empty input (0 bytes)")
        name = source
        source = io.BytesIO(bytes(source))
        _check_riff(source, name)
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise AudioError(source, "no such file")
        if p.is_dir():
            raise AudioError(source, "is a folder, not an audio file")
        if p.stat().st_size == 0:
            raise AudioError(source, "empty file (0 bytes)")
        try:
            with open(p, "rb") as fh:
                _check_riff(fh, source)
        except PermissionError:
            raise AudioError(source, "permission denied") from None
    else:
        _check_riff(source, source)
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(source, f"not readable as audio ({_short(e)})") from None


def _check_riff(fh: BinaryIO, source: object) -> None:
    reason = riff.truncation(fh)
    if reason:
        raise AudioError(source, reason)


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return msg[:160]


def _peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


def _refuse_nonfinite(x: np.ndarray, source: object) -> None:
    if not np.all(np.isfinite(x)):
        raise AudioError(source, "contains NaN or infinite samples")


def _warn_scaled(source: object, peak: float) -> None:
    log.warning(
        "%s: float samples peak at %.4g (above full scale 1.0); scaled down to peak 1.0",
        _name(source),
        peak,
    )


def fit_full_scale(x: np.ndarray, source: object = "<array>") -> np.ndarray:
    """The float policy on a whole signal: NaN/inf → AudioError; mono peak > 1.0 → `x` divided
    by its peak (a warning names the source and the peak); else `x` unchanged."""
    _refuse_nonfinite(x, source)
    peak = _peak(x)
    if peak > FULL_SCALE:
        _warn_scaled(source, peak)
        x = x / peak
    return x


class PeakGuard:
    """The float policy for audio seen block by block: NaN/inf → AudioError; blocks are divided
    by a fixed `peak` (measured beforehand over the whole signal) or, when it is None, by the
    largest peak seen so far once it exceeds 1.0 (one warning per stream)."""

    def __init__(self, source: object, peak: float | None = None) -> None:
        self.source = source
        self.fixed = peak is not None
        self.peak = FULL_SCALE if peak is None else max(FULL_SCALE, float(peak))
        self.warned = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _refuse_nonfinite(x, self.source)
        if not self.fixed:
            self.peak = max(self.peak, _peak(x))
        if self.peak > FULL_SCALE:
            if not self.warned:
                _warn_scaled(self.source, self.peak)
                self.warned = True
            x = x / self.peak
        return x


def _is_float(f: sf.SoundFile) -> bool:
    return str(f.subtype).upper() in ("FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III")


def _read_dtype(f: sf.SoundFile) -> str:
    return "float64" if str(f.subtype).upper() == "DOUBLE" else "float32"


def _prescan_peak(f: sf.SoundFile, source: object, cap: int | None = None) -> float | None:
    """Mono peak of a float-coded seekable file, read block by block (more than `cap` frames:
    AudioTooLarge); the position is restored. None for integer PCM (cannot exceed full scale)
    or a file that cannot seek."""
    if not _is_float(f) or not f.seekable():
        return None
    pos = f.tell()
    try:
        return _scan(f, source, cap)[1]
    finally:
        f.seek(pos)


def _scan(f: sf.SoundFile, source: object, cap: int | None) -> tuple[int, float]:
    """(frames, mono peak) of the rest of `f`, read block by block and kept nowhere; more than
    `cap` frames is AudioTooLarge, a NaN or inf sample AudioError."""
    peak, got = 0.0, 0
    while True:
        x = f.read(frames=BLOCK_FRAMES, dtype=_read_dtype(f), always_2d=True)
        if x.shape[0] == 0:
            break
        got += x.shape[0]
        if cap is not None and got > cap:
            raise AudioTooLarge(source, f"audio longer than its header says (over {cap} frames)")
        m = to_mono(x)
        _refuse_nonfinite(m, source)
        peak = max(peak, _peak(m))
        if x.shape[0] < BLOCK_FRAMES:
            break
    return got, peak


def check_limits(meta: AudioInfo, source: object, max_seconds: float | None = None) -> None:
    """Refuse, from the header alone, audio too costly to decode: a sample rate below
    MIN_SAMPLE_RATE (AudioError), more than `max_seconds` of audio or more than
    `max_seconds` x DECODE_SAMPLES_PER_SECOND decoded samples (frames x channels) (AudioTooLarge).
    """
    if meta.sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(
            source, f"sample rate {meta.sample_rate} Hz is below the minimum {MIN_SAMPLE_RATE} Hz"
        )
    if max_seconds is None:
        return
    if meta.duration > max_seconds:
        raise AudioTooLarge(
            source, f"audio too long: {meta.duration:.1f} s > limit {max_seconds:g} s"
        )
    budget = int(max_seconds * DECODE_SAMPLES_PER_SECOND)
    if meta.frames * meta.channels > budget:
        raise AudioTooLarge(
            source,
            f"audio too large to decode: {meta.channels} channel(s) x {meta.frames} frames at "
            f"{meta.sample_rate} Hz > limit of {budget} samples",
        )


def info(source: Source) -> AudioInfo:
    """Read the header only (cheap): rate, channels, frames."""
    with _open(source) as f:
        return AudioInfo(int(f.samplerate), int(f.channels), int(f.frames))


def check(
    source: Source, min_seconds: float = MIN_SECONDS, max_seconds: float | None = MAX_CORPUS_SECONDS
) -> AudioInfo:
    """Validate a file for a corpus scan without holding it: the header is checked first
    (`check_limits`: sample rate, `max_seconds`, decoding budget), then the file is decoded in
    blocks of BLOCK_FRAMES at its native rate (truncation, NaN/inf, silence, too short), keeping
    nothing but counters. Memory is one block whatever the file's length. → its info."""
    with _open(source) as f:
        meta = AudioInfo(int(f.samplerate), int(f.channels), int(f.frames))
        check_limits(meta, source, max_seconds)
        cap = (
            None if max_seconds is None else int(max_seconds * meta.sample_rate) + meta.sample_rate
        )
        try:
            got, peak = _scan(f, source, cap)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(source, f"truncated or corrupt audio ({_short(e)})") from None
    if meta.frames > 0 and got < meta.frames:
        raise AudioError(source, f"truncated: header says {meta.frames} frames, read {got}")
    if got == 0:
        raise AudioError(source, "no audio samples")
    if got < int(min_seconds * meta.sample_rate):
        raise AudioError(
            source, f"too short ({got / meta.sample_rate:.3f} s < minimum {min_seconds} s)"
        )
    if peak < SILENCE_PEAK:
        raise AudioError(source, "silent (peak amplitude below 1e-4)")
    return AudioInfo(meta.sample_rate, meta.channels, got)


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal with soxr (HQ)."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def speed_perturb(x: np.ndarray, factor: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Kaldi's speed perturbation: `x` played `factor` times faster (tempo, pitch and formants
    all scale by it; the result has ``len(x) / factor`` samples at the same rate).

    >>> speed_perturb(np.zeros(16_000, np.float32), 1.25).shape
    (12800,)
    """
    return resample(x, int(round(sr * factor)), sr)


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average channels of a (frames, channels) array; pass 1-D through."""
    return x.mean(axis=1) if x.ndim == 2 else x


def validate(
    x: np.ndarray,
    source: object = "<array>",
    min_seconds: float = MIN_SECONDS,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """Check a decoded 16 kHz mono signal; raise AudioError for NaN/inf, silence or too short.
    (Full scale is the decoders' business: they measure the peak at the native rate, before
    resampling, so integer PCM — whose resampled peak may overshoot 1.0 a little — is never
    rescaled.) → `x`."""
    if x.size == 0:
        raise AudioError(source, "no audio samples")
    _refuse_nonfinite(x, source)
    if x.size < int(min_seconds * sr):
        raise AudioError(source, f"too short ({x.size / sr:.3f} s < minimum {min_seconds} s)")
    if float(np.max(np.abs(x))) < SILENCE_PEAK:
        raise AudioError(source, "silent (peak amplitude below 1e-4)")
    return x


def load(
    source: Source,
    sr: int = SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
    start: float = 0.0,
    duration: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode `source` (path, bytes or file object) to a validated mono float32 array at `sr`.

    `start`/`duration` (seconds) read only part of the file, for streaming long recordings
    (float audio above full scale is then scaled by the peak of the part read).
    The file is decoded, mixed to mono and resampled in blocks. Sample rates below
    MIN_SAMPLE_RATE are refused; with `max_seconds`, so is (from the header, before decoding)
    audio longer than that or needing more decoding than `check_limits` allows (AudioTooLarge).
    """
    with _open(source) as f:
        native = int(f.samplerate)
        check_limits(AudioInfo(native, int(f.channels), int(f.frames)), source, max_seconds)
        cap = None if max_seconds is None else int(max_seconds * native) + native
        try:
            if start:
                f.seek(int(start * native))
            n = -1 if duration is None else int(round(duration * native))
            x, got, peak = _read_blocks(f, n, native, sr, source, cap)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(source, f"truncated or corrupt audio ({_short(e)})") from None
        declared = f.frames
    if duration is None and start == 0 and declared > 0 and got < declared:
        raise AudioError(source, f"truncated: header says {declared} frames, read {got}")
    _refuse_nonfinite(x, source)
    if peak > FULL_SCALE:  # the float policy (module docstring), by the native-rate peak
        _warn_scaled(source, peak)
        x = x / np.float32(peak)
    return validate(x, source, min_seconds, sr)


def _read_blocks(
    f: sf.SoundFile, n: int, native: int, sr: int, source: object, cap: int | None
) -> tuple[np.ndarray, int]:
    """Read `n` frames (-1: all) block by block, mixing each block to mono and resampling it as
    a stream (the same samples as resampling the whole signal at once) → (mono at sr, frames
    read, mono peak at the native rate). Memory: one multichannel block plus the mono output.
    More than `cap` frames → AudioTooLarge (a header that understates the length)."""
    stream = None
    if native != sr:
        import soxr

        stream = soxr.ResampleStream(native, sr, 1, dtype="float32", quality="HQ")
    parts: list[np.ndarray] = []
    got, remaining, peak = 0, n, 0.0
    while remaining != 0:
        want = BLOCK_FRAMES if remaining < 0 else min(BLOCK_FRAMES, remaining)
        x = f.read(frames=want, dtype="float32", always_2d=True)
        if x.shape[0] == 0:
            break
        got += x.shape[0]
        if cap is not None and got > cap:
            raise AudioTooLarge(source, f"audio longer than its header says (over {cap} frames)")
        if remaining > 0:
            remaining -= x.shape[0]
        short = x.shape[0] < want
        m = np.ascontiguousarray(to_mono(x), dtype=np.float32)
        if m.size and np.all(np.isfinite(m)):
            peak = max(peak, _peak(m))
        del x  # one multichannel block alive at a time
        parts.append(stream.resample_chunk(m) if stream is not None else m)
        if short:
            break
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return y.astype(np.float32, copy=False), got, peak


def to_float(x: Any, source: str = "<array>", fit: bool = True) -> np.ndarray:
    """Samples (any dtype, ``samples[, channels]``) → mono float32 at the same rate, without the
    length/silence checks of :func:`from_array` (a live chunk may be short or quiet); NaN/inf and
    unsupported types raise AudioError. With `fit` (a whole signal), a float peak above 1.0 is
    scaled down to 1.0 (`fit_full_scale`, in float64 before the cast, so x 1e300 works too);
    without it (one chunk of a stream) the caller applies a `PeakGuard`."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[0] < a.shape[1] and a.shape[0] <= 8:
        a = a.T  # (channels, samples) → (samples, channels)
    if a.ndim not in (1, 2):
        raise AudioError(source, f"expected a 1-D or 2-D array, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.unsignedinteger):  # offset binary, e.g. 8-bit PCM
        half = float(np.iinfo(a.dtype).max // 2 + 1)
        a = (a.astype(np.float64) - half) / half
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64) / float(np.iinfo(a.dtype).max + 1)
    elif a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
        raise AudioError(source, f"unsupported sample type {a.dtype}")
    _refuse_nonfinite(a, source)
    if a.dtype.itemsize > 4:  # float64: mix and scale before the cast (1e300 would become inf)
        y = to_mono(a)
        y = fit_full_scale(y, source) if fit else y
        if not fit and not np.all(np.isfinite(y.astype(np.float32))):
            raise AudioError(source, "samples beyond the float32 range")
    else:
        y = to_mono(a.astype(np.float32, copy=False))
        y = fit_full_scale(y, source) if fit else y
    return np.ascontiguousarray(y, dtype=np.float32)


def check_array(
    n_samples: int,
    sample_rate: Any,
    channels: int = 1,
    max_seconds: float | None = None,
    source: object = "<array>",
) -> int:
    """The header checks of files for a caller's array (`check_limits`): a sample rate that is
    not a finite number >= MIN_SAMPLE_RATE, and with `max_seconds` too long an array, raise
    before any resampling. → the sample rate as int."""
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(source, f"sample rate {sample_rate!r} is not a number") from None
    if not math.isfinite(rate) or rate != int(rate):
        raise AudioError(source, f"sample rate {sample_rate!r} is not a whole number of Hz")
    check_limits(AudioInfo(int(rate), int(channels), int(n_samples)), source, max_seconds)
    return int(rate)


def array_shape(x: Any) -> tuple[int, int]:
    """(samples, channels) of a caller's array as `to_float` reads it."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[0] < a.shape[1] and a.shape[0] <= 8:
        return int(a.shape[1]), int(a.shape[0])
    if a.ndim == 2:
        return int(a.shape[0]), int(a.shape[1])
    return (int(a.shape[0]) if a.ndim == 1 else int(a.size)), 1


def from_array(
    x: np.ndarray,
    sample_rate: int,
    sr: int = SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Validate and convert a caller's array (samples[, channels]) to mono float32 at `sr`.

    The limits of files apply before resampling (`check_array`): a sample rate below
    MIN_SAMPLE_RATE is refused, and with `max_seconds` so is a longer array (AudioTooLarge)."""
    n, ch = array_shape(x)
    rate = check_array(n, sample_rate, ch, max_seconds)
    y = resample(to_float(x), rate, sr)
    return validate(y, "<array>", min_seconds, sr)


# ------------------------------------------------------------------------ block decoding
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
    truncated or empty input, NaN samples, or a sample rate below `MIN_SAMPLE_RATE`;
    with `max_seconds`, AudioTooLarge for longer audio (`check_limits`). Float-coded seekable
    sources are read twice: first for their peak, so that every block is scaled by the same
    factor (module docstring); other streams use a running `PeakGuard`.
    """
    meta = info(source)  # existence, emptiness, WAV truncation, readability
    check_limits(meta, source, max_seconds)
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
            try:
                guard = PeakGuard(source, _prescan_peak(f, source, cap))
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(source, f"truncated or corrupt audio ({e})") from None
            while True:
                try:
                    x = f.read(frames=n, dtype=_read_dtype(f), always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioError(source, f"truncated or corrupt audio ({e})") from None
                if x.shape[0] == 0:
                    break
                got += x.shape[0]
                if cap is not None and got > cap:
                    raise AudioTooLarge(source, "audio longer than its header says")
                y = guard(to_mono(x))
                out = resample(np.ascontiguousarray(y, dtype=np.float32))
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


def write_wav(
    path: str | os.PathLike, x: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16"
) -> None:
    """Write a WAV atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    sf.write(str(tmp), x, sr, subtype=subtype, format="WAV")
    os.replace(tmp, p)
