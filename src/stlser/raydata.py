"""The data path on Ray: features and predictions of many audio files, streamed over a Ray
cluster in shards (``stlser features --engine ray``, ``stlser predict --engine ray``).

The driver lists the files (paths only, never audio) and cuts them into shards of up to
`SHARD_FILES` files (`shard_size`). Each shard is one Ray task, which reads, decodes and
processes its files a few at a time, so a task holds at most one shard's results and one batch
of waveforms. The driver keeps as many tasks submitted as there are workers (by default the
cluster's CPUs) and submits the next shard as soon as one finishes, so memory stays bounded
whatever the number of files. Plain Ray tasks rather than Ray Data's streaming executor: on
this project's 2-core machine the executor's overhead cost about 30 % of the throughput
(decision D21). A task whose worker process or node dies is retried (`engines.MAX_RETRIES`).
A file that cannot be read is listed with its reason, and the rest go on.

- **Features**: a task computes the features as the local engine does
  (`FeatureCache.compute_waves`: the torch front end, own functional sets in batches) and
  writes its shard itself, as Parquet, into the cache folder
  (``<cache_dir>/<config-hash>/shards/<name>.parquet``, atomically). The ordinary
  `FeatureCache` reads those shards, so every later run, on either engine, finds these clips
  cached. A rerun skips the clips already cached: finished shards are not computed again.
- **Predictions**: a task loads the model once per worker process, checks each file's header
  and classifies its files with `iter_predict`, as `stlser predict` does. It returns the
  rows to the driver, which writes each finished shard to a parts folder. The parts are merged
  into the output in input order at the end. A rerun skips the shards already in the parts
  folder: a shard's name hashes the model file, the labels and each input's path, size and
  modification time.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stlser import audio, engines, logs
from stlser.audio import AudioError
from stlser.config import FeatureConfig
from stlser.features.cache import FeatureCache
from stlser.utils import atomic_path, usable_cores, write_csv

log = logging.getLogger(__name__)

#: Files per shard at most: one Ray task, one Parquet file, one progress line.
SHARD_FILES = 64
#: Fewer files than this many full shards: smaller shards (of at least 4 files), so that the
#: work still spreads over the CPUs.
MIN_SHARDS = 32
#: Clips decoded and processed together inside a task.
BATCH = 16


def shard_size(n: int, shard_files: int | None = None) -> int:
    """Files per shard for `n` files: `shard_files` if given, else `SHARD_FILES`, or fewer (at
    least 4) to make `MIN_SHARDS` shards. It depends on `n` only, so a rerun plans the same."""
    if shard_files:
        return max(1, shard_files)
    return min(SHARD_FILES, max(4, -(-n // MIN_SHARDS)))


def _name(parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _stat(path: str) -> list[Any]:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, -1, -1]


@contextlib.contextmanager
def _bar(total: int, what: str, progress: bool) -> Iterator[Any]:
    """A progress bar over `total` files on stderr (none when `progress` is False)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=f"{what} (ray)", unit="file", disable=not progress) as bar:
        yield bar


def _run_shard(fn: Any, shard: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """Inside a Ray task: `fn` over one shard."""
    return fn(shard, **kwargs)


def _stream(
    ray: Any, shards: list[dict[str, Any]], fn: Any, kwargs: dict[str, Any], workers: int
) -> Iterator[Any]:
    """`fn(shard, **kwargs)` of every shard, one Ray task each, in the order they finish. At most
    `workers` tasks are submitted at once (0: the cluster's CPUs), the next one as soon as one
    finishes, so the driver holds a few shards' results at a time whatever the number of
    shards; `kwargs` go to the object store once."""
    task = ray.remote(num_cpus=1, max_retries=engines.MAX_RETRIES, scheduling_strategy="SPREAD")(
        _run_shard
    )
    width = workers if workers > 0 else max(1, int(ray.cluster_resources().get("CPU", 1)))
    shared = ray.put(kwargs)
    todo = iter(shards)
    pending = [task.remote(fn, shard, shared) for shard in itertools.islice(todo, width)]
    while pending:
        (ready,), pending = ray.wait(pending, num_returns=1)
        pending += [task.remote(fn, shard, shared) for shard in itertools.islice(todo, 1)]
        yield ray.get(ready)


def _worker_setup() -> None:
    import torch

    logs.quiet_third_party()
    torch.set_num_threads(1)  # one task per CPU


# ------------------------------------------------------------------------------- features
def _feature_shard(
    shard: dict[str, Any], cache_dir: str, cfg: FeatureConfig, what: str, speed: float
) -> dict[str, Any]:
    """One Ray task: the features of one shard's files → its Parquet shard; returns the shard's
    name, the files done, the unreadable files ([path, reason]) and the node it ran on."""
    import ray

    _worker_setup()
    cache = FeatureCache(cache_dir, cfg, what, speed)
    rows: list[tuple[str, str, np.ndarray]] = []
    failed: list[list[str]] = []
    items = list(zip(shard["paths"], shard["keys"], strict=True))
    for i in range(0, len(items), BATCH):
        rows += _features_of(cache, items[i : i + BATCH], failed)
    if rows:
        cache.write_shard(shard["shard"], rows)
    node = ray.get_runtime_context().get_node_id()
    return {"shard": shard["shard"], "done": len(rows), "failed": failed, "node": node}


def _features_of(
    cache: FeatureCache, items: list[tuple[str, str]], failed: list[list[str]]
) -> list[tuple[str, str, np.ndarray]]:
    """[(key, path, features)] of a few files; the ones that fail are added to `failed`."""
    waves, ok = [], []
    for path, key in items:
        try:
            waves.append(cache.decode(path))
            ok.append((path, key))
        except AudioError as e:
            failed.append([path, e.reason])
    try:
        arrs = cache.compute_waves(waves, [p for p, _ in ok])
    except RuntimeError:  # find the clip the extractor refuses: one by one
        arrs, kept = [], []
        for w, (path, key) in zip(waves, ok, strict=True):
            try:
                arrs += cache.compute_waves([w], [path])
                kept.append((path, key))
            except RuntimeError as e:
                failed.append([path, f"feature extraction failed ({e.__cause__ or e})"])
        ok = kept
    return [(key, path, a) for (path, key), a in zip(ok, arrs, strict=True)]


def _seconds(paths: Sequence[str], durations: Any) -> float:
    if durations is not None:
        d = np.asarray(durations, dtype=float)
        if len(d) and np.all(np.isfinite(d)):
            return float(d.sum())
    total = 0.0
    for p in paths:
        with contextlib.suppress(AudioError, OSError):
            total += audio.info(p).duration
    return total


def fill_cache(
    df: Any,
    cfg: FeatureConfig,
    cache_dir: str | os.PathLike,
    what: str = "frames",
    speed: float = 1.0,
    address: str | None = None,
    workers: int = 0,
    shard_files: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`stlser.features.fill_cache` on Ray: the features of every manifest row not yet
    cached, computed by Ray tasks and written as Parquet shards into the cache folder.
    `workers` caps the tasks running at once (0: as many as the cluster has CPUs).

    Returns the statistics of `fill_cache`, plus ``skipped`` ([(path, reason)] of the files
    that could not be read or computed; they stay uncached, and are listed in ``skipped.csv``
    in the cache's config folder, path ``skipped_csv``), ``shards`` (written now) and ``nodes``
    (how many Ray nodes ran them)."""
    import time

    t0 = time.perf_counter()
    cache = FeatureCache(os.path.abspath(cache_dir), cfg, what, speed)
    paths = list(dict.fromkeys(os.path.abspath(p) for p in df["path"].astype(str)))
    skipped: list[tuple[str, str]] = []
    keyed: dict[str, str] = {}
    for p in paths:
        try:
            keyed[p] = cache.key(p)
        except AudioError as e:
            skipped.append((p, e.reason))
    done = cache.cached(keyed.values())
    misses = [(p, k) for p, k in keyed.items() if k not in done]
    misses.sort(key=lambda m: (_stat(m[0])[1], m[0]))  # similar lengths share a shard
    plan = []
    size = shard_size(len(misses), shard_files)
    for i in range(0, len(misses), size):
        part = misses[i : i + size]
        name = _name([k for _, k in part])
        plan.append({"shard": name, "paths": [p for p, _ in part], "keys": [k for _, k in part]})
    log.info(
        f"features ({what}) on Ray: {len(paths)} files, {len(keyed) - len(misses)} cached, "
        f"{len(misses)} to compute in {len(plan)} shard(s) of up to {size}"
    )
    computed, nodes = 0, set()
    if plan:
        kwargs = {"cache_dir": str(cache.root.parent), "cfg": cfg, "what": what, "speed": speed}
        with engines.session("ray", address), _bar(len(misses), "features", progress) as bar:
            import ray

            for n, row in enumerate(_stream(ray, plan, _feature_shard, kwargs, workers), 1):
                computed += int(row["done"])
                nodes.add(row["node"])
                failed = [tuple(x) for x in row["failed"]]
                bar.update(int(row["done"]) + len(failed))
                for path, reason in failed:
                    log.warning(f"skipped {path}: {reason}")
                skipped += failed
                log.info(
                    f"features: shard {n}/{len(plan)} written ({computed}/{len(misses)} files"
                    f", {len(skipped)} skipped)"
                )
    wall = time.perf_counter() - t0
    listing = cache.root / "skipped.csv"
    if skipped:
        import pandas as pd

        write_csv(listing, pd.DataFrame(skipped, columns=["path", "reason"]))
        log.warning(f"{len(skipped)} file(s) skipped, listed in {listing}")
    good = [p for p in paths if p not in {s for s, _ in skipped}]
    durations = df["duration"] if "duration" in df.columns and not skipped else None
    seconds = _seconds(good, durations)
    return {
        "n": len(paths),
        "audio_seconds": seconds,
        "wall_seconds": wall,
        "hits": len(keyed) - len(misses),
        "misses": computed,
        "x_realtime": seconds / wall if wall > 0 else float("inf"),
        "workers": workers or usable_cores(),
        "cache_dir": str(cache.root),
        "shards": len(plan),
        "nodes": len(nodes),
        "skipped": skipped,
        "skipped_csv": str(listing) if skipped else None,
    }


# ----------------------------------------------------------------------------- prediction
_MODELS: dict[tuple[str, tuple[str, ...] | None], Any] = {}


def _recognizer(model: str, labels: tuple[str, ...] | None) -> Any:
    """The model, loaded once per worker process."""
    if (model, labels) not in _MODELS:
        if model.lower().endswith(".onnx"):  # one thread: the task has one CPU
            from stlser.onnx_runtime import OnnxRecognizer

            rec = OnnxRecognizer(model, threads=1)
        else:
            from stlser.inference import Recognizer

            rec = Recognizer.load(model)
        _MODELS[(model, labels)] = rec.restrict(list(labels) if labels else None)
    return _MODELS[(model, labels)]


def _predict_shard(
    shard: dict[str, Any], model: str, labels: tuple[str, ...] | None, max_seconds: float
) -> dict[str, Any]:
    """One Ray task: the predictions of one shard's files: the shard's name and a row per file
    in the shard's order (path, label, probs, duration, error)."""
    from stlser.inference import clip_problem

    _worker_setup()
    rec = _recognizer(model, labels)
    paths = list(shard["paths"])
    rows: dict[int, dict[str, Any]] = {}
    todo = []
    for i, p in enumerate(paths):
        problem = clip_problem(p, max_seconds)
        if problem is None:
            todo.append(i)
        else:
            rows[i] = {"label": "", "probs": [], "duration": np.nan, "error": problem.reason}
    for j, r in rec.iter_predict([paths[i] for i in todo], batch_size=BATCH):
        if isinstance(r, AudioError):
            rows[todo[j]] = {"label": "", "probs": [], "duration": np.nan, "error": r.reason}
        else:
            probs = [float(r.probabilities[lab]) for lab in rec.labels]
            rows[todo[j]] = {"label": r.label, "probs": probs, "duration": r.duration, "error": ""}
    return {
        "shard": shard["shard"],
        "rows": [{"path": paths[i], **rows[i]} for i in range(len(paths))],
    }


def _write_part(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "path": [str(r["path"]) for r in rows],
            "label": [str(r["label"] or "") for r in rows],
            "probs": [
                [float(x) for x in (r["probs"] if r["probs"] is not None else [])] for r in rows
            ],
            "duration": [np.nan if r["duration"] is None else float(r["duration"]) for r in rows],
            "error": [str(r["error"] or "") for r in rows],
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def predict_files(
    model: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    labels: Sequence[str] | None,
    parts: str | os.PathLike,
    address: str | None = None,
    workers: int = 0,
    shard_files: int | None = None,
    max_seconds: float = audio.MAX_CLIP_SECONDS,
    progress: bool = True,
) -> Iterator[tuple[str, str, list[float], float, str]]:
    """(path, label, probabilities, duration, error) of every file, in input order, computed
    by Ray tasks; a file that cannot be classified has an `error` (and no label). `model` is a
    model file (``.pt`` or ``.onnx``) every worker can read at this path; `labels` restricts
    the answer as `restrict` does. Finished shards are kept in the folder `parts` and reused by
    a rerun (the caller removes it once the output is written)."""
    from stlser.recognizer import resolve_model_path

    model_path = str(resolve_model_path(model).resolve())
    names = [os.path.abspath(f) for f in files]
    head = [_stat(model_path), list(labels) if labels else None]
    plan = []
    size = shard_size(len(names), shard_files)
    for i in range(0, len(names), size):
        part = names[i : i + size]
        plan.append({"shard": _name([head, [_stat(p) for p in part]]), "paths": part})
    folder = Path(parts)
    todo = [s for s in plan if not (folder / f"{s['shard']}.parquet").is_file()]
    log.info(
        f"predict on Ray: {len(names)} files in {len(plan)} shard(s) of up to {size}, "
        f"{len(plan) - len(todo)} already done"
    )
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {
            "model": model_path,
            "labels": tuple(labels) if labels else None,
            "max_seconds": max_seconds,
        }
        total = sum(len(s["paths"]) for s in todo)
        with engines.session("ray", address), _bar(total, "predict", progress) as bar:
            import ray

            for n, done in enumerate(_stream(ray, todo, _predict_shard, kwargs, workers), 1):
                _write_part(folder / f"{done['shard']}.parquet", done["rows"])
                bar.update(len(done["rows"]))
                log.info(f"predict: shard {n}/{len(todo)} done")
    import pyarrow.parquet as pq

    for s in plan:
        table = pq.read_table(folder / f"{s['shard']}.parquet").to_pydict()
        yield from zip(
            table["path"],
            table["label"],
            table["probs"],
            table["duration"],
            table["error"],
            strict=True,
        )
