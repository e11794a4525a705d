"""Audio decoding and validation: every bad input raises AudioError naming it; every common
format, depth, rate and channel layout loads to 16 kHz mono float32."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stlser import audio, riff
from stlser.audio import AudioError
from stlser.testing import tone, wav_bytes

SR = 16_000


# ------------------------------------------------------------------------------ bad inputs
def _bad_inputs(tmp_path):
    """(source, expected words in the reason) for every kind of unusable input."""
    good = wav_bytes(tone())
    cases = {}
    (tmp_path / "empty.wav").write_bytes(b"")
    cases["empty file"] = (tmp_path / "empty.wav", "empty")
    cases["0-byte bytes"] = (b"", "empty")
    (tmp_path / "text.wav").write_text("this is not audio, just a text file\n" * 20)
    cases["text named .wav"] = (tmp_path / "text.wav", "not readable")
    (tmp_path / "half.wav").write_bytes(good[: len(good) // 2])
    cases["truncated wav"] = (tmp_path / "half.wav", "truncated")
    sf.write(tmp_path / "zeros.wav", np.zeros(SR, np.float32), SR)
    cases["all-zero"] = (tmp_path / "zeros.wav", "silent")
    sf.write(tmp_path / "nan.wav", np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    cases["nan float wav"] = (tmp_path / "nan.wav", "nan")
    sf.write(tmp_path / "short.wav", tone(seconds=0.1), SR)
    cases["too short"] = (tmp_path / "short.wav", "too short")
    (tmp_path / "folder.wav").mkdir()
    cases["directory"] = (tmp_path / "folder.wav", "folder")
    cases["missing"] = (tmp_path / "missing.wav", "no such file")
    return cases


CASES = [
    "empty file",
    "0-byte bytes",
    "text named .wav",
    "truncated wav",
    "all-zero",
    "nan float wav",
    "too short",
    "directory",
    "missing",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fn", [audio.load, audio.check])
def test_bad_input_raises_audio_error_naming_file_and_reason(tmp_path, case, fn):
    src, reason = _bad_inputs(tmp_path)[case]
    with pytest.raises(AudioError) as e:
        fn(src)
    msg = str(e.value)
    assert reason in msg.lower(), msg
    name = str(src) if not isinstance(src, bytes) else "<0 bytes>"
    assert msg.startswith(name + ": "), msg
    assert e.value.source == name and e.value.reason


def test_truncated_wav_is_caught_from_bytes_and_file_object(tmp_path):
    data = wav_bytes(tone(seconds=2.0))
    cut = data[: len(data) // 2]
    # libsndfile alone reads the half that is present: the header check is what catches it
    assert sf.info(io.BytesIO(cut)).frames > 0
    with pytest.raises(AudioError, match="truncated"):
        audio.load(cut)
    fh = io.BytesIO(cut)
    with pytest.raises(AudioError, match="truncated"):
        audio.check(fh)
    assert fh.tell() == 0  # the header probe restores the stream position
    with pytest.raises(AudioError, match="truncated: header declares 64000 bytes"):
        audio.info(cut)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "FLOAT"])
def test_truncated_wav_other_depths_and_rf64(tmp_path, subtype):
    data = wav_bytes(tone(seconds=1.0), subtype=subtype)
    with pytest.raises(AudioError, match="truncated"):
        audio.load(data[: len(data) - 100])
    rf = wav_bytes(tone(seconds=1.0), subtype=subtype, fmt="RF64")
    assert audio.load(rf).shape == (SR,)
    with pytest.raises(AudioError, match="truncated"):
        audio.load(rf[: len(rf) * 2 // 3])


@settings(max_examples=25, deadline=None)
@given(frac=st.floats(0.05, 0.995))
def test_wav_cut_anywhere_in_the_data_is_truncated(frac):
    data = wav_bytes(tone(seconds=1.0))
    header = 44
    cut = header + int(frac * (len(data) - header))
    with pytest.raises(AudioError, match="truncated"):
        audio.load(data[:cut])


def test_streaming_sizes_and_trailing_chunks_are_not_truncation(tmp_path):
    data = bytearray(wav_bytes(tone()))
    pos = data.index(b"data")
    # a streaming writer that never went back to fill in the size
    unknown = bytes(data[: pos + 4]) + struct.pack("<I", 0xFFFFFFFF) + bytes(data[pos + 8 :])
    assert riff.truncation(io.BytesIO(unknown)) is None
    # metadata after the audio (LIST chunk) is fine
    extra = b"LIST" + struct.pack("<I", 10) + b"INFOabcdef"
    with_list = bytearray(data + extra)
    with_list[4:8] = struct.pack("<I", len(with_list) - 8)
    assert audio.load(bytes(with_list)).shape == (SR,)
    # not a WAV at all: not our business
    assert riff.truncation(io.BytesIO(wav_bytes(tone(), subtype="PCM_16", fmt="FLAC"))) is None


def test_truncated_flac_raises(tmp_path):
    data = wav_bytes(tone(seconds=2.0), fmt="FLAC")
    with pytest.raises(AudioError):
        audio.load(data[: len(data) // 2])


def test_min_seconds_is_respected(tmp_path):
    p = tmp_path / "half_second.wav"
    sf.write(p, tone(seconds=0.5), SR)
    assert audio.load(p).shape == (8000,)
    with pytest.raises(AudioError, match="too short"):
        audio.load(p, min_seconds=1.0)
    with pytest.raises(AudioError, match="too short"):
        audio.check(p, min_seconds=1.0)


def test_audio_error_survives_pickling():
    e = pickle.loads(pickle.dumps(AudioError("/x/y.wav", "silent")))
    assert isinstance(e, AudioError)
    assert (e.source, e.reason, str(e)) == ("/x/y.wav", "silent", "/x/y.wav: silent")


# ----------------------------------------------------------------------------- good inputs
@pytest.mark.parametrize(
    "subtype,fmt,ext,tol",
    [
        ("PCM_U8", "WAV", "wav", 1.5 / 128),
        ("PCM_16", "WAV", "wav", 1e-4),
        ("PCM_24", "WAV", "wav", 1e-6),
        ("FLOAT", "WAV", "wav", 1e-7),
        ("PCM_16", "FLAC", "flac", 1e-4),
    ],
)
def test_lossless_formats_load_exactly(tmp_path, subtype, fmt, ext, tol):
    x = tone()
    p = tmp_path / f"a.{ext}"
    sf.write(p, x, SR, subtype=subtype, format=fmt)
    y = audio.load(p)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= tol
    info = audio.check(p)
    assert (info.sample_rate, info.channels, info.frames) == (SR, 1, SR)


def test_ogg_vorbis_loads(tmp_path):
    x = tone()
    p = tmp_path / "a.ogg"
    sf.write(p, x, SR, format="OGG", subtype="VORBIS")
    y = audio.load(p)
    assert y.dtype == np.float32 and abs(len(y) - len(x)) <= 1
    n = min(len(x), len(y))
    corr = np.corrcoef(x[:n], y[:n])[0, 1]
    assert corr > 0.99, corr


def test_stereo_is_averaged(tmp_path):
    x = tone()
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([x, 0.5 * x], axis=1), SR, subtype="FLOAT")
    y = audio.load(p)
    assert y.ndim == 1 and np.allclose(y, 0.75 * x, atol=1e-6)
    assert audio.info(p).channels == 2


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_native_rates_resample_to_16k(tmp_path, rate):
    p = tmp_path / f"r{rate}.wav"
    sf.write(p, tone(sr=rate), rate, subtype="FLOAT")
    y = audio.load(p)
    assert y.dtype == np.float32 and abs(len(y) - SR) <= 1
    ref = tone(sr=SR)
    mid = slice(800, 15200)  # skip resampler edge effects
    assert np.max(np.abs(y[mid] - ref[: len(y)][mid])) < 5e-3


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rate=st.integers(8000, 48000), seconds=st.floats(0.3, 1.5), amp=st.floats(0.05, 0.9))
def test_any_rate_and_length(tmp_path, rate, seconds, amp):
    x = tone(sr=rate, seconds=seconds, freq=300.0, amp=amp)
    y = audio.load(wav_bytes(x, rate, subtype="FLOAT"))
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - round(len(x) * SR / rate)) <= 1
    assert abs(float(np.max(np.abs(y[200:-200]))) - amp) < 0.02 * amp + 1e-3


def test_file_object_and_bytes(tmp_path):
    x = tone()
    p = tmp_path / "a.wav"
    sf.write(p, x, SR, subtype="FLOAT")
    with open(p, "rb") as fh:
        y1 = audio.load(fh)
    y2 = audio.load(p.read_bytes())
    y3 = audio.load(bytearray(p.read_bytes()))
    assert np.array_equal(y1, x) and np.array_equal(y2, x) and np.array_equal(y3, x)


def test_partial_read_start_duration(tmp_path):
    x = tone(seconds=2.0)
    p = tmp_path / "long.wav"
    sf.write(p, x, SR, subtype="FLOAT")
    y = audio.load(p, start=0.5, duration=1.0)
    assert np.array_equal(y, x[8000:24000])


def test_from_array_integer_scaling_and_layout():
    x = tone()
    i16 = np.round(x * 32767).astype(np.int16)
    assert np.max(np.abs(audio.from_array(i16, SR) - x)) < 1e-4
    u8 = np.round(x * 127 + 128).astype(np.uint8)  # 8-bit PCM is offset binary
    assert np.max(np.abs(audio.from_array(u8, SR) - x)) < 1.5 / 128
    stereo_cf = np.stack([x, x])  # (channels, samples)
    assert audio.from_array(stereo_cf, SR).shape == (SR,)
    assert audio.from_array(tone(sr=8000), 8000).shape == (SR,)
    with pytest.raises(AudioError, match="silent"):
        audio.from_array(np.zeros(SR, np.int16), SR)
