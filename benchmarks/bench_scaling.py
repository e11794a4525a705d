"""Scaling with the amount of data: time and peak memory of feature extraction and of one
training epoch on 1×, 2×, 4×, 8× a small synthetic corpus, and of `Recognizer.segments()` on
1, 10 and 60 minutes of audio. Time should grow linearly, memory stay flat (training holds its
features in memory by design, so its memory grows by the size of the features).

    python -m benchmarks.bench_scaling [--quick]
    python -m benchmarks.bench_scaling --ray    # Ray engine overhead only (needs stlser[cluster])

Every measurement runs in a fresh Python process. Peak memory is the process's peak resident
set size (VmHWM) during the measured work (reset with ``/proc/self/clear_refs`` just before it;
``ru_maxrss`` is not used because Linux carries the parent's peak into a child's), "growth" is
that peak minus the resident size just before the work (after imports and setup).
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


def cli(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if "--ray" in args:
        t0 = time.perf_counter()
        print(ray_overhead())
        print(f"({time.perf_counter() - t0:.0f} s)")
        return
    bl.cli(main, __doc__, argv)


if __name__ == "__main__":
    cli()
