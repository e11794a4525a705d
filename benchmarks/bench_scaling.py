"""Scaling with the amount of data: time and peak memory of feature extraction and of one
training epoch on 1×, 2×, 4×, 8× a small synthetic corpus, and of `Recognizer.segments()` on
1, 10 and 60 minutes of audio. Time should grow linearly, memory stay flat (training holds its
features in memory by design, so its memory grows by the size of the features).

    python -m benchmarks.bench_scaling [--quick]
    python -m benchmarks.bench_scaling --ray    # Ray engine overhead only (needs stlser[cluster])
    python -m benchmarks.bench_scaling --ray-data [FILES]  # features/predict throughput, local vs
                                                # Ray, 1 and 2 workers, on FILES EmoDB clips

Every measurement runs in a fresh Python process. Peak memory is the process's peak resident
set size (VmHWM) during the measured work (reset with ``/proc/self/clear_refs`` just before it;
``ru_maxrss`` is not used because Linux carries the parent's peak into a child's), "growth" is
that peak minus the resident size just before the work (after imports and setup).

Why this is one module: every scaling question of the project (with data size, with workers,
on one engine or on Ray) is measured and reported here, on the same helpers and corpora.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import benchlib as bl

SIZES = {
    "full": {
        "base_files": 100,
        "copies": [1, 2, 4, 8],
        "feature_reps": 3,
        "train_reps": 2,
        "minutes": [1, 10, 60],
        "segment_reps": 3,
        "batch": 32,
        "isolate": True,
        "timeout": 1800.0,
    },
    "quick": {
        "base_files": 6,
        "copies": [1, 2, 4, 8],
        "feature_reps": 1,
        "train_reps": 1,
        "minutes": [0.25, 0.5, 1],
        "segment_reps": 1,
        "batch": 8,
        "isolate": True,
        "timeout": 600.0,
    },
}


# ----------------------------------------------------------------- measured in a child
def features_child(manifest: str, reps: int, cache_root: str) -> dict[str, Any]:
    """`fill_cache` (the `stlser features` path, 1 worker) into a fresh cache dir per rep."""
    import pandas as pd

    from stlser.config import FeatureConfig
    from stlser.features import fill_cache

    df = pd.read_csv(manifest)
    fill_cache(df.iloc[:1], FeatureConfig(), Path(cache_root) / "warm", 1, progress=False)
    before = bl.current_rss_mb()
    bl.reset_peak_rss()
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        st = fill_cache(df, FeatureConfig(), Path(cache_root) / f"rep{r}", 1, progress=False)
        times.append(time.perf_counter() - t0)
        if st["misses"] != len(df):
            raise RuntimeError(f"expected {len(df)} computed files, got {st['misses']}")
    return {"times": times, "rss_before_mb": before}


def train_child(frames: list[int], copies: int, reps: int, batch: int) -> dict[str, Any]:
    """One epoch (forward + backward + Adam on every utterance) over `copies` × the corpus,
    with stlser's batch sampler (bucketing on) and collate; features held in memory."""
    from benchmarks import bench_training as bt
    from stlser.training import loader

    before = bl.current_rss_mb()
    bl.reset_peak_rss()
    items = bt.random_items(list(frames) * copies, seed=0)
    feats, labels = [x for x, _ in items], [y for _, y in items]
    model, opt = bt.make_model()
    times = []
    for r in range(reps):
        dl = loader(feats, labels, batch, seed=r, shuffle=True, bucket=True)
        t0 = time.perf_counter()
        for b in dl:
            bt.train_step(model, opt, b)
        times.append(time.perf_counter() - t0)
    return {"times": times, "rss_before_mb": before, "utterances": len(items)}


def segments_child(model_path: str, wav: str, reps: int) -> dict[str, Any]:
    """`Recognizer.segments(path)` on a long WAV (decoded block by block)."""
    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    rec.segments(bl.speechlike(2.0, np.random.default_rng(0)), sample_rate=bl.SR)  # warm-up
    before = bl.current_rss_mb()
    bl.reset_peak_rss()
    times, n = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        n = len(rec.segments(wav))
        times.append(time.perf_counter() - t0)
    return {"times": times, "rss_before_mb": before, "segments": n}


def _call(isolate: bool, func: str, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
    if isolate:
        return bl.run_isolated("bench_scaling", func, kwargs, timeout)
    res = dict(globals()[func](**kwargs))
    res["peak_rss_mb"] = bl.peak_rss_mb()  # since the function's reset_peak_rss()
    return res


# ----------------------------------------------------------------------------- driver
def _linkfarm(base: list[Path], copies: int, root: Path) -> list[Path]:
    """`copies` × the base files under distinct paths (symlinks), so each is computed."""
    out = []
    for c in range(copies):
        d = root / f"copy{c}"
        d.mkdir(parents=True, exist_ok=True)
        for p in base:
            link = d / p.name
            if not link.exists():
                os.symlink(p, link)
            out.append(link)
    return out


def _ratio_text(per_unit: list[float], what: str) -> str:
    r = per_unit[-1] / per_unit[0] if per_unit[0] > 0 else float("nan")
    return f"{what} at the largest size / at the smallest: {r:.2f} (1.00 = perfectly linear)"


def main(quick: bool = False, **overrides: Any) -> str:
    """Run the scaling benchmark; return its markdown section."""
    z = bl.sizes(SIZES, quick, overrides)
    load = bl.load_text()
    iso, timeout = z["isolate"], z["timeout"]
    feat_rows, train_rows, seg_rows = [], [], []
    feat_unit, train_unit, seg_unit = [], [], []
    with tempfile.TemporaryDirectory(prefix="stlser-bench-scale-") as td:
        tmp = Path(td)
        seconds = bl.emodb_like_seconds(z["base_files"], seed=4)
        base = bl.write_speech_folder(tmp / "base", seconds, seed=4)
        base_audio = float(seconds.sum()) + 0.2 * len(base)
        frames = [int(round((s + 0.2) * 100)) + 1 for s in seconds]
        for k in z["copies"]:
            paths = _linkfarm(base, k, tmp / f"x{k}")
            df = bl.folder_manifest(paths, list(seconds) * k)
            manifest = tmp / f"manifest_x{k}.csv"
            df.to_csv(manifest, index=False)
            res = _call(
                iso,
                "features_child",
                {
                    "manifest": str(manifest),
                    "reps": z["feature_reps"],
                    "cache_root": str(tmp / f"cache_x{k}"),
                },
                timeout,
            )
            s = bl.stats(res["times"])
            audio_min = k * base_audio / 60
            feat_unit.append(s["median"] / audio_min)
            feat_rows.append(
                [
                    f"{k}×",
                    str(len(df)),
                    bl.fmt(audio_min),
                    bl.fmt(s["min"]),
                    bl.fmt(s["median"]),
                    bl.fmt(s["median"] / audio_min),
                    bl.fmt(audio_min * 60 / s["median"]),
                    bl.fmt(res["peak_rss_mb"]),
                    bl.fmt(res["peak_rss_mb"] - res["rss_before_mb"]),
                ]
            )
            res = _call(
                iso,
                "train_child",
                {"frames": frames, "copies": k, "reps": z["train_reps"], "batch": z["batch"]},
                timeout,
            )
            s = bl.stats(res["times"])
            n = res["utterances"]
            train_unit.append(s["median"] / n)
            train_rows.append(
                [
                    f"{k}×",
                    str(n),
                    bl.fmt(audio_min),
                    bl.fmt(s["min"]),
                    bl.fmt(s["median"]),
                    bl.ms(s["median"] / n),
                    bl.fmt(n / s["median"]),
                    bl.fmt(res["peak_rss_mb"]),
                    bl.fmt(res["peak_rss_mb"] - res["rss_before_mb"]),
                ]
            )
        from importlib import resources

        models = {
            "network (random weights)": bl.make_artefact(tmp / "model.pt"),
            "default `base`": Path(str(resources.files("stlser") / "models" / "base.pt")),
        }
        for minutes in z["minutes"]:
            wav = bl.write_long_wav(tmp / f"long_{minutes}min.wav", minutes, seed=5)
            for label, model in models.items():
                res = _call(
                    iso,
                    "segments_child",
                    {"model_path": str(model), "wav": str(wav), "reps": z["segment_reps"]},
                    timeout,
                )
                s = bl.stats(res["times"])
                if label == "default `base`":
                    seg_unit.append(s["median"] / minutes)
                seg_rows.append(
                    [
                        label,
                        bl.fmt(minutes),
                        str(res["segments"]),
                        bl.fmt(s["min"]),
                        bl.fmt(s["median"]),
                        bl.fmt(s["median"] / minutes),
                        f"{s['median'] / (minutes * 60):.4f}",
                        bl.fmt(res["peak_rss_mb"]),
                        bl.fmt(res["peak_rss_mb"] - res["rss_before_mb"]),
                    ]
                )
            wav.unlink()

    where = "in a fresh process per measurement" if iso else "in this process"
    intro = f"""
Base corpus: {len(base)} speech-like WAVs (harmonic bursts, EmoDB-like lengths),
{base_audio / 60:.1f} min of audio; k× = the same files listed k times under distinct paths
(symlinks, distinct `utt_id`s), so every copy is decoded and computed. Feature extraction =
`features.fill_cache` (what `stlser features` runs) with 1 worker and a fresh cache directory
per repetition ({z["feature_reps"]} repetitions). Training epoch = forward + backward + Adam over
every utterance at batch {z["batch"]}, stlser's `loader` (bucketing on), random features of the
same lengths held in memory ({z["train_reps"]} repetition(s)). Measured {where}; peak RSS =
peak resident memory during the measured work (Linux VmHWM, reset just before it), growth =
that peak minus the resident size just before it.
Load average at start: {load}.
"""
    feat_table = bl.md_table(
        [
            "data",
            "files",
            "audio min",
            "min s",
            "median s",
            "s per audio min",
            "× real time",
            "peak RSS MB",
            "RSS growth MB",
        ],
        feat_rows,
    )
    train_table = bl.md_table(
        [
            "data",
            "utterances",
            "audio min",
            "min s",
            "median s",
            "ms per utterance",
            "utt/s",
            "peak RSS MB",
            "RSS growth MB",
        ],
        train_rows,
    )
    seg_table = bl.md_table(
        [
            "model",
            "audio min",
            "segments",
            "min s",
            "median s",
            "s per audio min",
            "RTF",
            "peak RSS MB",
            "RSS growth MB",
        ],
        seg_rows,
    )
    body = f"""Feature extraction (cold cache):

{feat_table}

{_ratio_text(feat_unit, "Time per audio minute")}.

One training epoch:

{train_table}

{_ratio_text(train_unit, "Time per utterance")}.

`Recognizer.segments(path)` of the default model and of a network on one long WAV (speech-like bursts of 0.8-4 s between 0.3-2 s
pauses, written block by block with soundfile; energy VAD, windows of at most 6 s, batches of 8;
{z["segment_reps"]} repetition(s)):

{seg_table}

{_ratio_text(seg_unit, "Time per audio minute")}.
"""
    return bl.section("Scaling with data size", intro, body, quick)


def ray_overhead(tasks: int = 40, rounds: int = 3) -> str:
    """Ray engine costs on this machine (run in a fresh process: Ray reads its settings when
    imported): import, embedded-cluster start, the first round of no-op units (worker start and
    torch import included), warm rounds of no-op units through `engines.run_ray`, `ray.put` of
    a feature-sized array, shutdown."""
    from stlser import engines
    from stlser.utils import usable_cores

    t = time.perf_counter()
    started = engines.init_ray(None)
    t_init = time.perf_counter() - t
    import ray

    def batch() -> float:
        got: list[int] = []
        t = time.perf_counter()
        engines.run_ray(range(tasks), abs, lambda u, r: got.append(r), {}, threads=1)
        assert sorted(got) == list(range(tasks))
        return time.perf_counter() - t

    first = batch()
    warm = [batch() for _ in range(rounds)]
    arr = np.zeros((2000, 6373), np.float32)  # ~2000 utterances of ComParE functionals, 51 MB
    t = time.perf_counter()
    ray.get(ray.put(arr)).sum()
    t_put = time.perf_counter() - t
    t = time.perf_counter()
    if started:
        ray.shutdown()
    t_down = time.perf_counter() - t
    med = bl.stats(warm)["median"]
    rows = [
        ["start the embedded cluster (import + `ray.init`)", bl.fmt(t_init)],
        [f"first {tasks} no-op units (worker start, torch import)", bl.fmt(first)],
        [f"{tasks} no-op units, warm (median of {rounds})", bl.fmt(med)],
        ["per unit, warm, in ms (2 at a time on 2 CPUs)", bl.ms(med / tasks)],
        [f"`ray.put` + `ray.get` of {arr.nbytes / 1e6:.0f} MB", bl.fmt(t_put)],
        ["`ray.shutdown`", bl.fmt(t_down)],
    ]
    body = bl.md_table(["Ray engine step", "seconds"], rows)
    intro = f"""
No-op units (`abs` of an int) through `stlser.engines.run_ray` on the embedded cluster
(127.0.0.1, token auth, {usable_cores()} usable cores). Load average at start:
{bl.load_text()}.
"""
    return bl.section("Ray engine overhead", intro, body, False)


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


#: The projection's cluster: nodes × cores, and the audio it processes.
PROJECT_NODES, PROJECT_CORES, PROJECT_HOURS = 8, 32, 1000.0


def ray_data_throughput(files: int = 120, reps: int = 3) -> str:
    """Throughput of `stlser features` (frames of the default config, and the torch front end's
    ``compact`` functionals) and of `stlser predict` (the shipped model) on the first `files`
    EmoDB clips: the local engine and Ray (`stlser.raydata`) at 1 and 2 workers, parallel
    efficiency at 2, Ray's fixed costs, and a projection to a cluster. Run in a fresh process
    (Ray reads its settings when imported)."""
    import pandas as pd
    import soundfile as sf

    from stlser import engines, raydata
    from stlser.config import FeatureConfig
    from stlser.features import fill_cache, load_functionals
    from stlser.onnx_runtime import OnnxRecognizer
    from stlser.recognizer import resolve_model_path

    root = bl.corpus_root("emodb")
    if root is None:
        raise FileNotFoundError("the EmoDB corpus is not in ../shared/corpora/emodb")
    paths = sorted((root / "wav").glob("*.wav"))[:files]
    seconds = [sf.info(str(p)).duration for p in paths]
    audio_s = float(sum(seconds))
    df = pd.DataFrame({"utt_id": [p.stem for p in paths], "path": [str(p) for p in paths]})
    df["duration"] = seconds
    cfg = FeatureConfig()
    model = resolve_model_path("base", shipped=".onnx")
    load = bl.load_text()
    runs: dict[tuple[str, str, int], list[float]] = {}

    def timed(key: tuple[str, str, int], fn: Any) -> None:
        runs.setdefault(key, []).append(_timed(fn))

    with tempfile.TemporaryDirectory(prefix="stlser-bench-raydata-") as td:
        tmp = Path(td)
        recs = {w: OnnxRecognizer(model, threads=w) for w in (1, 2)}
        # warm-up: imports, the filter bank, the ONNX session's first runs
        fill_cache(df.head(4), cfg, tmp / "lw", workers=1, progress=False)
        load_functionals(df.head(4), tmp / "lw", workers=1, progress=False, feature_set="compact")
        for rec in recs.values():
            list(rec.iter_predict([str(p) for p in paths[:4]], batch_size=16))
        for r in range(reps):
            for w in (1, 2):
                timed(
                    ("features (frames)", "local", w),
                    lambda d=tmp / f"lf{w}-{r}", w=w: fill_cache(
                        df, cfg, d, workers=w, progress=False
                    ),
                )
                timed(
                    ("features (compact)", "local", w),
                    lambda d=tmp / f"lc{w}-{r}", w=w: load_functionals(
                        df, d, workers=w, progress=False, feature_set="compact"
                    ),
                )
                timed(
                    ("predict", "local", w),
                    lambda rec=recs[w]: list(
                        rec.iter_predict([str(p) for p in paths], batch_size=16)
                    ),
                )
        t_start = _timed(lambda: engines.init_ray(None))
        import ray

        def ray_features(name: str, what: str, n: int, w: int) -> None:
            st = raydata.fill_cache(
                df.head(n), cfg, tmp / name, what=what, workers=w, progress=False
            )
            if st["misses"] != n:
                raise RuntimeError(f"expected {n} computed files, got {st['misses']}")

        def ray_predict(name: str, n: int, w: int) -> None:
            got = list(raydata.predict_files(model, paths[:n], None, tmp / name, workers=w))
            if sum(1 for r in got if not r[4]) != n:
                raise RuntimeError("a clip was not classified")

        def warm() -> None:  # worker processes start, import torch, load the model
            ray_features("warm-f", "frames", 8, 2)
            ray_features("warm-c", "compact", 8, 2)
            ray_predict("warm-p", 8, 2)

        t_warm = _timed(warm)
        n = len(paths)
        for r in range(reps):
            for w in (1, 2):
                timed(
                    ("features (frames)", "ray", w),
                    lambda w=w, r=r: ray_features(f"rf{w}-{r}", "frames", n, w),
                )
                timed(
                    ("features (compact)", "ray", w),
                    lambda w=w, r=r: ray_features(f"rc{w}-{r}", "compact", n, w),
                )
                timed(("predict", "ray", w), lambda w=w, r=r: ray_predict(f"rp{w}-{r}", n, w))
        t_down = _timed(ray.shutdown)
    times = {k: bl.stats(v)["median"] for k, v in runs.items()}
    shards = -(-len(paths) // raydata.shard_size(len(paths)))
    rows, projection = [], []
    for task in ("features (frames)", "features (compact)", "predict"):
        for engine in ("local", "ray"):
            t1, t2 = times[(task, engine, 1)], times[(task, engine, 2)]
            eff = t1 / (2 * t2)
            rows.append(
                [
                    task,
                    engine,
                    bl.fmt(t1),
                    bl.fmt(len(paths) / t1),
                    bl.fmt(t2),
                    bl.fmt(len(paths) / t2),
                    f"{100 * eff:.0f} %",
                ]
            )
            if engine == "ray":
                cost = t1 / audio_s  # worker-seconds per second of audio, overheads included
                cores = PROJECT_NODES * PROJECT_CORES
                hours = PROJECT_HOURS * 3600 * cost / (cores * min(1.0, eff)) / 3600
                projection.append(
                    [
                        task,
                        f"{1000 * cost:.2f}",
                        f"{100 * min(1.0, eff):.0f} %",
                        bl.fmt(hours),
                        bl.fmt(hours * min(1.0, eff)),
                    ]
                )
    local_ray = [
        ["start the embedded cluster (import + `ray.init`)", bl.fmt(t_start)],
        ["first runs on 8 files (workers start, import torch, load the model)", bl.fmt(t_warm)],
        ["`ray.shutdown`", bl.fmt(t_down)],
    ]
    for task in ("features (frames)", "features (compact)", "predict"):
        extra = (times[(task, "ray", 1)] - times[(task, "local", 1)]) / shards
        local_ray.append([f"{task}: Ray minus local at 1 worker, per shard", bl.fmt(extra)])
    intro = f"""
The first {len(paths)} EmoDB clips (sorted by name, {audio_s / 60:.1f} min of audio), read from
the shared corpus folder. Local engine: `fill_cache` / `load_functionals` with 1 and 2 pool
processes; predict = `iter_predict` of the shipped ONNX model (what `stlser predict` runs)
with 1 and 2 onnxruntime threads (the local predict has no process pool). Ray: `stlser.raydata`
on the embedded cluster ({bl.load_text()} load at the end; 2 CPUs), `workers` = Ray tasks
at once, shards of {raydata.shard_size(len(paths))} files ({shards} shards), after a warm-up
run that started the worker processes (the local engine warmed up too). Median of {reps} runs
per cell, a fresh cache or parts folder each.
Efficiency at 2 = time at 1 / (2 × time at 2). This machine is shared with other jobs (load
average at start: {load}), so the timings are noisy.
"""
    body = f"""{
        bl.md_table(
            [
                "task",
                "engine",
                "1 worker s",
                "files/s",
                "2 workers s",
                "files/s",
                "efficiency at 2",
            ],
            rows,
        )
    }

Ray's fixed costs on this machine:

{bl.md_table(["Ray step", "seconds"], local_ray)}

Projection (not a measurement) for {PROJECT_HOURS:.0f} hours of audio on {PROJECT_NODES} nodes
× {PROJECT_CORES} cores = {PROJECT_NODES * PROJECT_CORES} Ray workers: the measured cost of
one Ray worker per second of audio (1-worker run, per-shard overhead included) divided by the
workers and by the efficiency measured at 2 workers, assuming it holds at
{PROJECT_NODES * PROJECT_CORES}, cores as fast as these, the audio and cache on a filesystem
that keeps up, and EmoDB-like clip lengths. Add the cluster's start-up (tens of seconds).

{
        bl.md_table(
            [
                "task",
                "ms of worker time per audio second",
                "efficiency assumed",
                "projected hours",
                "hours at 100 % efficiency",
            ],
            projection,
        )
    }
"""
    return bl.section("Ray throughput: features and predict", intro, body, False)


def cli(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if "--ray-data" in args:
        rest = args[args.index("--ray-data") + 1 :]
        t0 = time.perf_counter()
        print(ray_data_throughput(int(rest[0]) if rest else 120))
        print(f"({time.perf_counter() - t0:.0f} s)")
        return
    if "--ray" in args:
        t0 = time.perf_counter()
        print(ray_overhead())
        print(f"({time.perf_counter() - t0:.0f} s)")
        return
    bl.cli(main, __doc__, argv)


if __name__ == "__main__":
    cli()
