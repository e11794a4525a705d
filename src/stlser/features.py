"""Acoustic features: log-mel / MFCC front end in torch (ONNX-exportable), eGeMAPS through
openSMILE, a content-addressed disk cache, and feature normalisation.

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
* frames at or beyond a clip's frame count are set to 0 in a padded batch.

The ``authors`` preset (librosa defaults: n_fft 2048, hop 512) first pads/cuts every clip to
``fixed_seconds`` (10 s), so every clip gives the same number of frames.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stlser import audio
from stlser.config import FeatureConfig
from stlser.utils import save_npy, usable_cores, write_json

#: Bump when the numbers a given config produces change; old cache entries then miss.
FEATURE_VERSION = 1
#: Added to the mel power before the log (see module docstring).
LOG_FLOOR = 1e-6
#: Smallest standard deviation a normaliser divides by.
STD_FLOOR = 1e-5
#: eGeMAPSv02 low-level descriptors per frame / functionals per clip.
N_EGEMAPS_LLD = 25
N_EGEMAPS_FUNCTIONALS = 88
#: Fields of FeatureConfig that do not change the cached features.
_NOT_IN_KEY = {"normalize", "speaker_fallback", "degenerate_share", "degenerate_min_utts"}


# ----------------------------------------------------------------------------- frame counting
def _frame_count(n: Any, n_fft: int, hop: int) -> Any:
    """Frames of a clip of `n` samples (int or int64 tensor): the one formula used everywhere."""
    return (n + 2 * (n_fft // 2) - n_fft) // hop + 1


def n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Number of feature frames `compute` and `LogMel` produce for a clip of `n_samples`.

    For ``kind="egemaps"`` this is openSMILE's count (50 ms analysis window, 10 ms hop).
    """
    c = cfg.resolved()
    if c.kind == "egemaps":
        win, hop = round(0.05 * c.sample_rate), round(0.01 * c.sample_rate)
        return max(0, (int(n_samples) - win) // hop + 1)
    if c.fixed_seconds:
        n_samples = int(round(c.fixed_seconds * c.sample_rate))
    return int(_frame_count(int(n_samples), int(c.n_fft), c.hop_length))


# ------------------------------------------------------------------------------- front end
def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of `win_length`, centred in `n_fft` zeros (librosa's layout)."""
    if win_length > n_fft:
        raise ValueError(f"window ({win_length}) longer than n_fft ({n_fft})")
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    out = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    out[left : left + win_length] = w
    return out


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


def mel_filterbank(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft//2 + 1], equal to
    ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (tested);
    written out here so the front end does not import librosa (about 2 s per process)."""
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def dft_kernels(win_length: int, n_fft: int) -> np.ndarray:
    """Windowed DFT basis as conv1d weights [2 * (n_fft//2 + 1), 1, n_fft]: real rows, then
    imaginary rows (computed in float64, returned as float32)."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    angle = 2 * np.pi * np.outer(k, n) / n_fft
    w = hann_window(win_length, n_fft)
    basis = np.concatenate([np.cos(angle) * w, -np.sin(angle) * w])
    return basis[:, None, :].astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II as a [n_in, n_out] matrix (x @ D == scipy.fft.dct(x, norm='ortho')[:n_out])."""
    if n_out > n_in:
        raise ValueError(f"n_mfcc ({n_out}) must not exceed n_mels ({n_in})")
    n = np.arange(n_in)
    k = np.arange(n_out)
    d = np.cos(np.pi * np.outer(2 * n + 1, k) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    d[:, 0] /= np.sqrt(2.0)
    return d.astype(np.float32)


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
        c = cfg.resolved()
        if c.kind not in ("logmel", "mfcc"):
            raise ValueError(f"LogMel computes logmel or mfcc, not {c.kind!r}")
        self.kind = c.kind
        self.fft = bool(fft)
        self.n_fft = int(c.n_fft)
        self.hop = c.hop_length
        self.win_length = c.win_length
        self.n_bins = self.n_fft // 2 + 1
        self.fixed = int(round(c.fixed_seconds * c.sample_rate)) if c.fixed_seconds else 0
        self.n_features = c.n_features
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
        t = torch.arange(feats.shape[1], device=feats.device)
        valid = (t[None, :] < frames[:, None]).unsqueeze(-1)
        return torch.where(valid, feats, torch.zeros_like(feats)), frames


def feature_key_config(cfg: FeatureConfig) -> dict[str, Any]:
    """The resolved config fields that determine the features (cache key and front-end reuse)."""
    c = cfg.resolved()
    d = {k: v for k, v in asdict(c).items() if k not in _NOT_IN_KEY}
    if c.kind == "egemaps":
        return {"kind": "egemaps", "sample_rate": c.sample_rate}
    if c.kind != "mfcc":
        d.pop("n_mfcc", None)
    return d


@functools.lru_cache(maxsize=8)
def _front_end(key: str, fft: bool) -> LogMel:
    return LogMel(FeatureConfig(**json.loads(key)), fft=fft).eval()


def front_end(cfg: FeatureConfig, fft: bool = True) -> LogMel:
    """The process-wide LogMel for `cfg` (built once per process); the fast fft path by default."""
    d = feature_key_config(cfg)
    return _front_end(json.dumps(d, sort_keys=True), fft)


@functools.lru_cache(maxsize=2)
def _smile(level: str) -> Any:
    import opensmile

    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=getattr(opensmile.FeatureLevel, level),
    )


def _as_wave(wave: np.ndarray) -> np.ndarray:
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    return np.ascontiguousarray(x)


def compute(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Features of one mono utterance at ``cfg.sample_rate`` → float32 [T, F]."""
    c = cfg.resolved()
    x = _as_wave(wave)
    if c.kind == "egemaps":
        df = _smile("LowLevelDescriptors").process_signal(x, c.sample_rate)
        return np.ascontiguousarray(df.to_numpy(dtype=np.float32))
    fe = front_end(c)
    with torch.inference_mode():
        feats, frames = fe(torch.from_numpy(x)[None])
    return np.ascontiguousarray(feats[0, : int(frames[0])].numpy(), dtype=np.float32)


def egemaps_functionals(wave: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of one utterance (classic SVM baseline) → float32[88]."""
    df = _smile("Functionals").process_signal(_as_wave(wave), sample_rate)
    return df.to_numpy(dtype=np.float32).reshape(-1)


# ----------------------------------------------------------------------------------- cache
def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """One ``.npy`` per utterance under ``cache_dir/<config-hash>/<key[:2]>/<key>.npy``.

    The key hashes the file's absolute path, size and mtime_ns, the feature config (sorted JSON,
    without ``normalize``, which does not change features) and FEATURE_VERSION: an edited file
    or a changed config misses. ``what="functionals"`` caches eGeMAPS functionals under a
    distinct key. Entries are written atomically; an unreadable entry counts as a miss.
    """

    def __init__(
        self, cache_dir: str | os.PathLike, cfg: FeatureConfig, what: str = "frames"
    ) -> None:
        if what not in ("frames", "functionals"):
            raise ValueError(f"what must be 'frames' or 'functionals', not {what!r}")
        self.cfg = cfg.resolved()
        self.what = what
        if what == "functionals":
            desc: dict[str, Any] = {
                "kind": "egemaps_functionals",
                "sample_rate": self.cfg.sample_rate,
            }
        else:
            desc = feature_key_config(self.cfg)
        self.config = {**desc, "what": what, "feature_version": FEATURE_VERSION}
        self.config_json = json.dumps(self.config, sort_keys=True)
        self.config_hash = _sha1(self.config_json)[:16]
        self.root = Path(cache_dir) / self.config_hash

    def key(self, path: str | os.PathLike) -> str:
        """Content key of one audio file (raises AudioError if it is missing)."""
        p = os.path.abspath(path)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise audio.AudioError(path, "no such file") from None
        return _sha1(json.dumps([p, st.st_size, st.st_mtime_ns, self.config_json, FEATURE_VERSION]))

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, path: str | os.PathLike) -> np.ndarray | None:
        """Cached features of `path`, or None on a miss."""
        return self._read(self.entry(self.key(path)))

    def put(self, path: str | os.PathLike, arr: np.ndarray, key: str | None = None) -> Path:
        """Store `arr` for `path` atomically (pass `key` if it was taken before computing)."""
        if not (self.root / "config.json").exists():
            write_json(self.root / "config.json", self.config)
        return save_npy(self.entry(key or self.key(path)), np.asarray(arr, dtype=np.float32))

    def compute(self, path: str | os.PathLike) -> np.ndarray:
        """Decode `path` and compute its features (no cache involved)."""
        wave = audio.load(path, sr=self.cfg.sample_rate)
        try:
            if self.what == "functionals":
                return egemaps_functionals(wave, self.cfg.sample_rate)
            return compute(wave, self.cfg)
        except Exception as e:  # name the file in any extractor failure
            raise RuntimeError(f"{path}: feature extraction failed ({e})") from e

    def get_or_compute(self, path: str | os.PathLike) -> np.ndarray:
        key = self.key(path)
        hit = self._read(self.entry(key))
        if hit is not None:
            return hit
        arr = self.compute(path)
        self.put(path, arr, key)
        return arr

    @staticmethod
    def _read(entry: Path) -> np.ndarray | None:
        try:
            return np.load(entry, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError, EOFError):
            return None


# ----------------------------------------------------------------------- bulk extraction
def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _work(
    cache_dir: str | None,
    cfg: FeatureConfig,
    what: str,
    items: list[tuple[str, str | None]],
    keep: bool,
) -> list[Any]:
    """Compute (and store) the features of `items` [(path, key)]; return arrays or shapes."""
    cache = FeatureCache(cache_dir or ".", cfg, what)
    out: list[Any] = []
    for path, key in items:
        arr = cache.compute(path)
        if cache_dir is not None:
            cache.put(path, arr, key)
        out.append(arr if keep else arr.shape)
    return out


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch single-threaded for a while: per-utterance framing is too small to gain from
    intra-op threads, and on a busy machine they cost several times the work itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _n_workers(workers: int) -> int:
    return workers if workers > 0 else usable_cores()


def _chunks(items: Sequence[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


def _run(
    df: Any,
    cfg: FeatureConfig,
    cache_dir: str | os.PathLike | None,
    workers: int,
    progress: bool,
    keep: bool,
    what: str = "frames",
) -> tuple[dict[str, Any], int, int]:
    """Shared engine of load_features / fill_cache / load_functionals → (results, hits, misses)."""
    cfg = cfg.resolved()
    cache = FeatureCache(cache_dir or ".", cfg, what)
    root = str(cache_dir) if cache_dir is not None else None
    by_path: dict[str, list[str]] = {}
    for utt, path in zip(df["utt_id"].astype(str), df["path"].astype(str), strict=True):
        by_path.setdefault(path, []).append(utt)
    got: dict[str, Any] = {}
    misses: list[tuple[str, str | None]] = []
    for path in by_path:
        key = cache.key(path)
        arr = cache._read(cache.entry(key)) if root is not None else None
        if arr is None:
            misses.append((path, key))
        else:
            got[path] = arr if keep else arr.shape
    hits = len(by_path) - len(misses)
    if misses:
        from tqdm import tqdm

        bar = tqdm(
            total=len(misses),
            desc=f"features ({what})",
            unit="file",
            file=sys.stderr,
            disable=not progress or len(misses) < 20,
            leave=False,
        )
        n_proc = min(_n_workers(workers), len(misses))
        try:
            if n_proc <= 1 or len(misses) < 4:
                with _single_thread():
                    for path, key in misses:
                        got[path] = _work(root, cfg, what, [(path, key)], keep)[0]
                        bar.update(1)
            else:
                _run_pool(misses, n_proc, root, cfg, what, keep, got, bar.update)
        finally:
            bar.close()
    out = {utt: got[path] for path, utts in by_path.items() for utt in utts}
    return out, hits, len(misses)


def _run_pool(
    misses: list[tuple[str, str | None]],
    n_proc: int,
    root: str | None,
    cfg: FeatureConfig,
    what: str,
    keep: bool,
    got: dict[str, Any],
    step: Callable[[int], Any],
) -> None:
    import multiprocessing as mp

    # fork: workers start in milliseconds and inherit the imported modules; each one runs torch
    # single-threaded (set in the initializer), the DataLoader recipe for fork safety.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if method == "fork":  # build the filter bank / import openSMILE once, before forking
        if what == "functionals" or cfg.kind == "egemaps":
            import opensmile  # noqa: F401
        else:
            front_end(cfg)
    size = max(1, min(16, math.ceil(len(misses) / (n_proc * 8))))
    with ProcessPoolExecutor(
        n_proc, mp_context=mp.get_context(method), initializer=_init_worker
    ) as ex:
        futures = {
            ex.submit(_work, root, cfg, what, chunk, keep): chunk for chunk in _chunks(misses, size)
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                err = f.exception()
                if err is not None:
                    for p in pending:
                        p.cancel()
                    raise err
                for (path, _), res in zip(futures[f], f.result(), strict=True):
                    got[path] = res
                step(len(futures[f]))


def load_features(
    df: Any,
    cfg: FeatureConfig,
    cache_dir: str | os.PathLike | None,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Features of every manifest row → {utt_id: float32[T, F]}, through the disk cache.

    Misses are computed in a process pool (``workers``: 0 = one per core, 1 = in this process).
    ``cache_dir=None`` computes without caching. A file that fails to decode raises AudioError
    naming it.
    """
    out, _, _ = _run(df, cfg, cache_dir, workers, progress, keep=True)
    return out


def load_functionals(
    df: Any,
    cache_dir: str | os.PathLike | None,
    workers: int = 0,
    progress: bool = True,
    sample_rate: int = audio.SAMPLE_RATE,
) -> dict[str, np.ndarray]:
    """eGeMAPSv02 functionals of every row → {utt_id: float32[88]}, cached under their own key."""
    cfg = FeatureConfig(kind="egemaps", sample_rate=sample_rate)
    out, _, _ = _run(df, cfg, cache_dir, workers, progress, keep=True, what="functionals")
    return out


def _audio_seconds(df: Any) -> float:
    if "duration" in df.columns:
        d = np.asarray(_numeric(df["duration"]), dtype=float)
        if len(d) and np.all(np.isfinite(d)):
            return float(d.sum())
    return float(sum(audio.info(p).duration for p in df["path"].astype(str)))


def _numeric(s: Any) -> Any:
    import pandas as pd

    return pd.to_numeric(s, errors="coerce")


def fill_cache(
    df: Any,
    cfg: FeatureConfig,
    cache_dir: str | os.PathLike,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute and store the features of every row (cached entries are read back to verify
    them) without keeping them in memory; return throughput statistics."""
    t0 = time.perf_counter()
    _, hits, misses = _run(df, cfg, cache_dir, workers, progress, keep=False)
    wall = time.perf_counter() - t0
    seconds = _audio_seconds(df)
    return {
        "n": int(len(df)),
        "audio_seconds": seconds,
        "wall_seconds": wall,
        "hits": hits,
        "misses": misses,
        "x_realtime": seconds / wall if wall > 0 else float("inf"),
        "workers": _n_workers(workers),
        "cache_dir": str(FeatureCache(cache_dir, cfg).root),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """One line, e.g. ``535 files, 0.41 h audio in 3.2 s: 460x real time (0 cached, 535 computed)``."""
    return (
        f"{stats['n']} files, {stats['audio_seconds'] / 3600:.2f} h audio in "
        f"{stats['wall_seconds']:.1f} s: {stats['x_realtime']:.0f}x real time "
        f"({stats['hits']} cached, {stats['misses']} computed)"
    )


# --------------------------------------------------------------------------- normalisation
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
