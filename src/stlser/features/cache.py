"""The feature disk cache and bulk extraction (a process pool over a manifest).

The cache holds an utterance's features either as its own ``.npy`` entry (written by the
local engine) or as one row of a Parquet shard under ``<config-hash>/shards/`` (written by the
data path on Ray, `stlser.raydata`): a lookup tries the entry, then the shards.

Why this is one module: the cache's key, its two storage forms and the bulk extraction that
fills it must agree on one key and one compute path (`FeatureCache.compute_waves`), whichever
engine runs it; split, a change to one would silently make the others miss or disagree."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlser import audio, featuresets, smile
from stlser.config import SPEED_RANGE, FeatureConfig
from stlser.features import frontend
from stlser.features.frontend import compute, feature_key_config, front_end
from stlser.utils import atomic_path, save_npy, usable_cores, write_json

log = logging.getLogger(__name__)

#: Bump when the numbers a given config produces change; old cache entries then miss.
FEATURE_VERSION = 1
#: The folder of a cache's Parquet shards (beside its ``.npy`` entries).
SHARDS = "shards"
#: openSMILE functional set → the cache's `what` for it (eGeMAPS keeps its historical name).
FUNCTIONAL_WHAT = {
    name: "functionals" if name == "egemaps" else name for name in smile.FUNCTIONAL_SETS
}


def _is_own(what: str) -> bool:
    """`what` names stlser's own sets (``"compact"``, ``"compact+large"``, ``"compact/relative"``):
    one cache entry holds the sets of one pass of the torch front end."""
    return all(featuresets.is_own(s) for s in what.removesuffix(featuresets.RELATIVE).split("+"))


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """One ``.npy`` per utterance under ``cache_dir/<config-hash>/<key[:2]>/<key>.npy``.

    The key hashes the file's absolute path, size and mtime_ns, the feature config (sorted JSON,
    without ``normalize``, which does not change features) and FEATURE_VERSION: an edited file
    or a changed config misses. ``what="functionals"`` caches eGeMAPS functionals under a
    distinct key; ``speed`` ≠ 1 (functionals only) caches those of the clip speed-perturbed by that
    factor (:func:`stlser.audio.speed_perturb`), under a key of their own. Entries are written
    atomically; an unreadable entry counts as a miss.

    Shards (``<config-hash>/shards/<name>.parquet``, :meth:`write_shard`) hold many utterances
    each, one row per key (key, path, shape, float32 bytes); an entry found in neither place is
    a miss. Reading shards needs pyarrow (the ``cluster`` extra that wrote them has it).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        cfg: FeatureConfig,
        what: str = "frames",
        speed: float = 1.0,
    ) -> None:
        if what not in ("frames", *FUNCTIONAL_WHAT.values()) and not _is_own(what):
            raise ValueError(
                f"what must be 'frames', own sets joined by '+' or one of "
                f"{sorted(FUNCTIONAL_WHAT.values())}, not {what!r}"
            )
        lo, hi = SPEED_RANGE
        if speed != 1.0 and (what == "frames" or not lo <= speed <= hi):
            raise ValueError(f"speed {speed} is for functionals only, within [{lo}, {hi}]")
        self.cfg = cfg
        self.what = what
        self.speed = float(speed)
        if what == "frames":
            desc = feature_key_config(self.cfg)
        elif _is_own(what):
            from stlser.features.functionals import VERSION

            desc = {"kind": "stlser_functionals", "frontend_version": VERSION}
        else:  # eGeMAPS keeps its historical key; every other set gets its own
            desc = {
                "kind": "egemaps_functionals" if what == "functionals" else f"{what}_functionals"
            }
        if what != "frames":
            desc["sample_rate"] = self.cfg.sample_rate
            if self.speed != 1.0:
                desc["speed"] = self.speed
        self.config = {**desc, "what": what, "feature_version": FEATURE_VERSION}
        self.config_json = json.dumps(self.config, sort_keys=True)
        self.config_hash = _sha1(self.config_json)[:16]
        self.root = Path(cache_dir) / self.config_hash
        self._index: dict[str, Path] | None = None  # key → shard holding it (read lazily)

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
        key = self.key(path)
        return dict(self.iter_cached([key])).get(key)

    # --- shards
    @property
    def shards(self) -> Path:
        return self.root / SHARDS

    def shard_index(self) -> dict[str, Path]:
        """{key: shard file} of every readable shard (read once per instance; a shard that
        cannot be read is skipped, its keys miss)."""
        if self._index is None:
            self._index = {}
            files = sorted(self.shards.glob("*.parquet")) if self.shards.is_dir() else []
            if files:
                try:
                    import pyarrow.parquet as pq
                except ImportError:
                    log.warning(f"{self.shards}: reading feature shards needs pyarrow; ignored")
                    return self._index
                for f in files:
                    try:
                        keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
                    except Exception as e:  # truncated or foreign file: its keys miss
                        log.warning(f"{f}: unreadable feature shard ignored ({e})")
                        continue
                    for k in keys:
                        self._index.setdefault(k, f)
        return self._index

    def cached(self, keys: Iterable[str]) -> set[str]:
        """The keys among `keys` with an entry or a shard row (nothing is read but names)."""
        index: dict[str, Path] | None = None
        found = set()
        for k in keys:
            if self.entry(k).is_file():
                found.add(k)
                continue
            index = self.shard_index() if index is None else index
            if k in index:
                found.add(k)
        return found

    def iter_cached(self, keys: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(key, features) of the keys that are cached: entries first, then shard rows (each
        shard read once, one shard in memory at a time)."""
        rest: dict[Path, set[str]] = {}
        index: dict[str, Path] | None = None
        for k in keys:
            arr = self._read(self.entry(k))
            if arr is not None:
                yield k, arr
                continue
            index = self.shard_index() if index is None else index
            if k in index:
                rest.setdefault(index[k], set()).add(k)
        for shard, wanted in rest.items():
            yield from read_shard(shard, wanted)

    def write_shard(self, name: str, rows: Sequence[tuple[str, str, np.ndarray]]) -> Path:
        """Store [(key, path, features)] as one shard, atomically (rewriting a shard of the
        same name gives the same file)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not (self.root / "config.json").exists():
            write_json(self.root / "config.json", self.config)
        arrs = [np.ascontiguousarray(a, dtype=np.float32) for _, _, a in rows]
        table = pa.table(
            {
                "key": [k for k, _, _ in rows],
                "path": [str(p) for _, p, _ in rows],
                "shape": [list(a.shape) for a in arrs],
                "values": [a.astype("<f4").tobytes() for a in arrs],
            }
        )
        out = self.shards / f"{name}.parquet"
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
        self._index = None
        return out

    def put(self, path: str | os.PathLike, arr: np.ndarray, key: str | None = None) -> Path:
        """Store `arr` for `path` atomically (pass `key` if it was taken before computing)."""
        if not (self.root / "config.json").exists():
            write_json(self.root / "config.json", self.config)
        return save_npy(self.entry(key or self.key(path)), np.asarray(arr, dtype=np.float32))

    def decode(self, path: str | os.PathLike) -> np.ndarray:
        """The clip this cache computes features of: decoded, resampled, speed-perturbed."""
        wave = audio.load(path, sr=self.cfg.sample_rate)
        if self.speed != 1.0:
            wave = audio.speed_perturb(wave, self.speed, self.cfg.sample_rate)
        return wave

    def compute_many(self, paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
        """Features of several files (no cache involved): own sets computed in batches of clips
        of one padded length (the same numbers as one by one), any other kind file by file."""
        if self.what == "frames" or not _is_own(self.what):
            return [self.compute(p) for p in paths]
        return self.compute_waves([self.decode(p) for p in paths], paths)

    def compute_waves(
        self, waves: Sequence[np.ndarray], names: Sequence[str | os.PathLike]
    ) -> list[np.ndarray]:
        """Features of decoded clips (`decode`; `names` for error messages), as `compute_many`
        computes them: own sets in batches, any other kind clip by clip."""
        if self.what == "frames" or not _is_own(self.what):
            return [self._features(w, n) for w, n in zip(waves, names, strict=True)]
        from stlser.features.functionals import clips_functionals

        try:
            return clips_functionals(waves, self.what)
        except Exception as e:  # name the files in any extractor failure
            listed = ", ".join(str(p) for p in names)
            raise RuntimeError(f"{listed}: feature extraction failed ({e})") from e

    def compute(self, path: str | os.PathLike) -> np.ndarray:
        """Decode `path` and compute its features (no cache involved)."""
        return self._features(self.decode(path), path)

    def _features(self, wave: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        try:
            if self.what != "frames" and _is_own(self.what):
                from stlser.features.functionals import clip_functionals

                return clip_functionals(wave, self.what)
            if self.what != "frames":
                set_name = next(k for k, w in FUNCTIONAL_WHAT.items() if w == self.what)
                return frontend.functionals(wave, self.cfg.sample_rate, set_name)
            return compute(wave, self.cfg)
        except Exception as e:  # name the file in any extractor failure
            raise RuntimeError(f"{path}: feature extraction failed ({e})") from e

    def get_or_compute(self, path: str | os.PathLike) -> np.ndarray:
        key = self.key(path)
        hit = dict(self.iter_cached([key])).get(key)
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


def read_shard(shard: Path, wanted: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(key, features) of the rows of `shard` whose key is in `wanted` (none if the shard
    cannot be read: those keys miss)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(shard).to_pydict()
    except Exception as e:
        log.warning(f"{shard}: unreadable feature shard ignored ({e})")
        return
    for key, shape, values in zip(table["key"], table["shape"], table["values"], strict=True):
        if key in wanted:
            yield key, np.frombuffer(values, dtype="<f4").reshape(shape).astype(np.float32)


# ----------------------------------------------------------------------- bulk extraction
def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _work(
    cache_dir: str | None,
    cfg: FeatureConfig,
    what: str,
    items: list[tuple[str, str | None]],
    keep: bool,
    speed: float = 1.0,
) -> list[Any]:
    """Compute (and store) the features of `items` [(path, key)]; return arrays or shapes."""
    cache = FeatureCache(cache_dir or ".", cfg, what, speed)
    out: list[Any] = []
    for (path, key), arr in zip(items, cache.compute_many([p for p, _ in items]), strict=True):
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


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


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
    speed: float = 1.0,
) -> tuple[dict[str, Any], int, int]:
    """Shared engine of load_features / fill_cache / load_functionals → (results, hits, misses)."""
    cache = FeatureCache(cache_dir or ".", cfg, what, speed)
    root = str(cache_dir) if cache_dir is not None else None
    by_path: dict[str, list[str]] = {}
    for utt, path in zip(df["utt_id"].astype(str), df["path"].astype(str), strict=True):
        by_path.setdefault(path, []).append(utt)
    got: dict[str, Any] = {}
    keys = {path: cache.key(path) for path in by_path}
    if root is not None:
        path_of = {k: p for p, k in keys.items()}
        for key, arr in cache.iter_cached(list(path_of)):
            got[path_of[key]] = arr if keep else arr.shape
    misses: list[tuple[str, str | None]] = [(p, k) for p, k in keys.items() if p not in got]
    hits = len(by_path) - len(misses)
    if misses:
        from tqdm import tqdm

        bar = tqdm(
            total=len(misses),
            desc=f"features ({what})" if speed == 1.0 else f"features ({what}, speed {speed})",
            unit="file",
            file=sys.stderr,
            disable=not progress or len(misses) < 20,
            leave=False,
        )
        n_proc = min(_n_workers(workers), len(misses))
        own = what != "frames" and _is_own(what)
        if own:  # neighbours of similar length share batches (numbers do not depend on it)
            misses.sort(key=lambda m: _file_size(m[0]))
        try:
            if n_proc <= 1 or len(misses) < 4:
                with _single_thread():
                    for chunk in _chunks(misses, 16 if own else 1):
                        for (path, _), res in zip(
                            chunk, _work(root, cfg, what, chunk, keep, speed), strict=True
                        ):
                            got[path] = res
                        bar.update(len(chunk))
            else:
                _run_pool(misses, n_proc, root, cfg, what, keep, got, bar.update, speed)
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
    speed: float = 1.0,
) -> None:
    import multiprocessing as mp

    # fork: workers start in milliseconds and inherit the imported modules; each one runs torch
    # single-threaded (set in the initializer), the DataLoader recipe for fork safety.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if method == "fork":  # build the filter bank / import openSMILE once, before forking
        if what != "frames" and _is_own(what):
            from stlser.features.functionals import clip_functionals

            clip_functionals(np.zeros(1600, np.float32), what)
        elif what != "frames" or cfg.kind == "egemaps":
            import opensmile  # noqa: F401
        else:
            front_end(cfg)
    size = max(1, min(16, math.ceil(len(misses) / (n_proc * 8))))
    with ProcessPoolExecutor(
        n_proc, mp_context=mp.get_context(method), initializer=_init_worker
    ) as ex:
        futures = {
            ex.submit(_work, root, cfg, what, chunk, keep, speed): chunk
            for chunk in _chunks(misses, size)
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
    feature_set: str = "egemaps",
    speed: float = 1.0,
) -> dict[str, np.ndarray]:
    """Functionals of every row → {utt_id: float32[D]}, cached under their own key.

    ``feature_set``: stlser's own sets (``compact``, ``large``, or several joined by ``+``,
    computed in one pass: `stlser.features.functionals`) or an openSMILE set of
    `stlser.smile.FUNCTIONAL_SETS`, e.g. ``egemaps`` (eGeMAPSv02, 88) or ``compare``
    (ComParE_2016, 6,373; needs the ``opensmile`` extra). ``speed`` ≠ 1: of the speed-perturbed
    clips."""
    cfg, what = functional_target(feature_set, sample_rate)
    out, _, _ = _run(df, cfg, cache_dir, workers, progress, keep=True, what=what, speed=speed)
    return out


def functional_target(
    feature_set: str, sample_rate: int = audio.SAMPLE_RATE
) -> tuple[FeatureConfig, str]:
    """(feature config, cache ``what``) under which `load_functionals` keeps `feature_set`;
    ValueError for an unknown set, and openSMILE's sets need the ``opensmile`` extra."""
    if feature_set not in FUNCTIONAL_WHAT and not _is_own(feature_set):
        raise ValueError(
            f"feature_set must be own sets {sorted(featuresets.OWN_SETS)} (joined by '+') or one "
            f"of {sorted(FUNCTIONAL_WHAT)}, not {feature_set!r}"
        )
    if not _is_own(feature_set):
        featuresets.require_opensmile(f"functional set {feature_set!r}")
    cfg = FeatureConfig(kind="egemaps", sample_rate=sample_rate)
    return cfg, feature_set if _is_own(feature_set) else FUNCTIONAL_WHAT[feature_set]


def recipe_targets(
    model: Any, features: FeatureConfig
) -> list[tuple[str, FeatureConfig, str, float]]:
    """What a recipe reads from the cache, as (name, feature config, ``what``, speed): a model
    over functionals (a ``functionals`` list; ``speeds`` for speed-perturbed copies) reads its
    sets, consecutive own sets in one pass, at speed 1 and each speed; any other model reads
    the frames of `features`. `stlser features` fills exactly these."""
    sets = list(getattr(model, "functionals", None) or [])
    if not sets:
        return [("frames", features, "frames", 1.0)]
    relative = featuresets.relative_level(model)
    out = []
    for speed in (1.0, *[float(a) for a in getattr(model, "speeds", None) or []]):
        for group in featuresets.own_groups(sets):
            name = featuresets.pass_name(group, relative)
            cfg, what = functional_target(name)
            out.append((name if speed == 1.0 else f"{name} @{speed:g}", cfg, what, speed))
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
    what: str = "frames",
    speed: float = 1.0,
) -> dict[str, Any]:
    """Compute and store the features of every row (cached entries are read back to verify
    them) without keeping them in memory; return throughput statistics. `what`/`speed`: as
    `FeatureCache` (e.g. a functional set from `functional_target`)."""
    t0 = time.perf_counter()
    _, hits, misses = _run(
        df, cfg, cache_dir, workers, progress, keep=False, what=what, speed=speed
    )
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
        "cache_dir": str(FeatureCache(cache_dir, cfg, what, speed).root),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """One line, e.g. ``535 files, 0.41 h audio in 3.2 s: 460x real time (0 cached, 535 computed)``."""
    return (
        f"{stats['n']} files, {stats['audio_seconds'] / 3600:.2f} h audio in "
        f"{stats['wall_seconds']:.1f} s: {stats['x_realtime']:.0f}x real time "
        f"({stats['hits']} cached, {stats['misses']} computed)"
    )
