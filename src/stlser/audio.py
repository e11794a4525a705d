"""Audio input: decode anything soundfile reads, mix to mono, resample to 16 kHz (soxr), float32.

Every failure (empty, truncated, not audio, silent, NaN, too short) raises :class:`AudioError`,
whose message names the source and the reason, so a corpus scan can list it and go on.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

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


#: Sizes a streaming writer leaves in the header when it does not know the final length.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def riff_truncation(fh: BinaryIO) -> str | None:
    """Return why a RIFF/RF64 WAV stream is truncated, or None (also for any other format).

    libsndfile silently reads the frames that are present when a WAV is cut short, so a file cut
    in half would pass as a shorter clip. The `data` chunk's declared size (from ds64 for RF64)
    is compared with the bytes that follow it. Unknown sizes (0 or 0xFFFFFFFF, written by
    streaming recorders) are accepted. The stream position is restored.
    """
    try:
        if not fh.seekable():
            return None
        base = fh.tell()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        end = fh.seek(0, os.SEEK_END)
        fh.seek(base)
        head = fh.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
            return None
        order = ">" if head[:4] == b"RIFX" else "<"
        pos, ds64_data = base + 12, None
        for _ in range(10_000):  # chunk walk; a sane WAV has a handful of chunks
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None  # no data chunk: let libsndfile report what is wrong
            cid, (size,) = chunk[:4], struct.unpack(order + "I", chunk[4:])
            if cid == b"ds64":
                body = fh.read(16)
                if len(body) == 16:
                    (ds64_data,) = struct.unpack("<Q", body[8:16])
            elif cid == b"data":
                declared = size
                if head[:4] == b"RF64" and size == 0xFFFFFFFF and ds64_data is not None:
                    declared = ds64_data
                if declared in _UNKNOWN_SIZES:
                    return None
                held = end - (pos + 8)
                if held < declared:
                    return (
                        f"truncated: header declares {declared} bytes of audio data, "
                        f"the file holds {max(held, 0)}"
                    )
                return None
            pos += 8 + size + (size & 1)
        return None
    finally:
        fh.seek(base)


def _check_riff(fh: BinaryIO, source: object) -> None:
    reason = riff_truncation(fh)
    if reason:
        raise AudioError(source, reason)


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return msg[:160]


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


def check(source: Source, min_seconds: float = MIN_SECONDS) -> AudioInfo:
    """Decode the whole file at its native rate and validate it (for corpus scans); return its info."""
    with _open(source) as f:
        try:
            x = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(source, f"truncated or corrupt audio ({_short(e)})") from None
        meta = AudioInfo(int(f.samplerate), int(f.channels), int(f.frames))
    if meta.frames > 0 and x.shape[0] < meta.frames:
        raise AudioError(source, f"truncated: header says {meta.frames} frames, read {x.shape[0]}")
    validate(to_mono(x), source, min_seconds, meta.sample_rate)
    return AudioInfo(meta.sample_rate, meta.channels, x.shape[0])


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
    """Check a decoded 16 kHz mono signal; raise AudioError for NaN, silence or too short."""
    if x.size == 0:
        raise AudioError(source, "no audio samples")
    if not np.all(np.isfinite(x)):
        raise AudioError(source, "contains NaN or infinite samples")
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

    `start`/`duration` (seconds) read only part of the file, for streaming long recordings.
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
            x, got = _read_blocks(f, n, native, sr, source, cap)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(source, f"truncated or corrupt audio ({_short(e)})") from None
        declared = f.frames
    if duration is None and start == 0 and declared > 0 and got < declared:
        raise AudioError(source, f"truncated: header says {declared} frames, read {got}")
    return validate(x, source, min_seconds, sr)


def _read_blocks(
    f: sf.SoundFile, n: int, native: int, sr: int, source: object, cap: int | None
) -> tuple[np.ndarray, int]:
    """Read `n` frames (-1: all) block by block, mixing each block to mono and resampling it as
    a stream (the same samples as resampling the whole signal at once) → (mono at sr, frames
    read). Memory: one multichannel block plus the mono output. More than `cap` frames →
    AudioTooLarge (a header that understates the length)."""
    stream = None
    if native != sr:
        import soxr

        stream = soxr.ResampleStream(native, sr, 1, dtype="float32", quality="HQ")
    parts: list[np.ndarray] = []
    got, remaining = 0, n
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
        del x  # one multichannel block alive at a time
        parts.append(stream.resample_chunk(m) if stream is not None else m)
        if short:
            break
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return y.astype(np.float32, copy=False), got


def to_float(x: Any, source: str = "<array>") -> np.ndarray:
    """Samples (any dtype, ``samples[, channels]``) → mono float32 at the same rate, without the
    length/silence checks of :func:`from_array` (a live chunk may be short or quiet); NaN and
    unsupported types raise AudioError."""
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
    y = to_mono(a.astype(np.float32, copy=False))
    if not np.all(np.isfinite(y)):
        raise AudioError(source, "contains NaN or infinite samples")
    return np.ascontiguousarray(y, dtype=np.float32)


def from_array(
    x: np.ndarray, sample_rate: int, sr: int = SAMPLE_RATE, min_seconds: float = MIN_SECONDS
) -> np.ndarray:
    """Validate and convert a caller's array (samples[, channels]) to mono float32 at `sr`."""
    y = resample(to_float(x), int(sample_rate), sr)
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
    with `max_seconds`, AudioTooLarge for longer audio (`check_limits`).
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
            while True:
                try:
                    x = f.read(frames=n, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioError(source, f"truncated or corrupt audio ({e})") from None
                if x.shape[0] == 0:
                    break
                got += x.shape[0]
                if cap is not None and got > cap:
                    raise AudioTooLarge(source, "audio longer than its header says")
                y = to_mono(x)
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


def write_wav(
    path: str | os.PathLike, x: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16"
) -> None:
    """Write a WAV atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    sf.write(str(tmp), x, sr, subtype=subtype, format="WAV")
    os.replace(tmp, p)
