"""The default recognizer's speed: feature extraction against openSMILE, one-clip and batch
latency of the shipped model (ONNX and torch) against the paper network's ONNX graph, and the
wall time of a full EmoDB leave-one-speaker-out run of the default recipe.

    python -m benchmarks.bench_default [--quick]

* **Extraction**: the recognizer's own path (`kinds.functionals.load_matrix`: decode, features,
  `.npy` cache; one process per core) into a fresh cache, for stlser's sets (`compact + large`,
  one pass) and for openSMILE's three sets the recipe used before (`egemaps + compare + is10`,
  needs the `opensmile` extra). EmoDB when `../shared/corpora/emodb` (or `$STLSER_CORPORA`) is
  there, else a folder of speech-like WAVs of EmoDB-like lengths. openSMILE is timed on every
  k-th file and scaled to the whole corpus by audio duration (the table says which).
* **Latency**: the shipped `base` model (`stlser/models/base.{onnx,pt}`, the default model of
  `stlser predict`) through `OnnxRecognizer` and `Recognizer`, against a default-size network
  (random weights; speed does not depend on them) exported to ONNX, on 3 s speech-like clips:
  one clip at a time (`predict`), and 32 clips in one call (`predict_batch`).
* **LOSO**: `stlser crossval --config configs/emodb_loso.yaml` (speed copies, 10 folds, 2 jobs)
  with an empty feature cache, as a first-time user runs it (needs EmoDB).

Every measurement runs in a fresh Python process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import benchlib as bl

SIZES = {
    "full": {
        "synthetic_files": 200,
        "smile_every": 3,
        "requests": 100,
        "batches": 10,
        "streams": 32,
        "clip_s": 3.0,
        "warmup": 5,
        "loso": True,
        "network": True,
        "timeout": 1800.0,
    },
    "quick": {
        "synthetic_files": 12,
        "smile_every": 4,
        "requests": 5,
        "batches": 1,
        "streams": 32,
        "clip_s": 3.0,
        "warmup": 1,
        "loso": False,
        "network": True,
        "timeout": 600.0,
    },
}
OWN_SETS = ["compact", "large"]
SMILE_SETS = ["egemaps", "compare", "is10"]
GOAL_EXTRACTION = 10.0  # × openSMILE
GOAL_LATENCY = 2.0  # × the network's ONNX latency, at most
GOAL_BATCH = 3.0  # × one-by-one throughput
GOAL_LOSO_S = 120.0


# ----------------------------------------------------------------- measured in a child
def extraction_child(manifest: str, sets: list[str], cache_dir: str) -> dict[str, Any]:
    """Wall and CPU seconds (this process and its workers) of `load_matrix` into a new cache."""
    import pandas as pd

    from stlser.kinds.functionals import load_matrix

    df = pd.read_csv(manifest)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    X = load_matrix(df, sets, cache_dir, progress=False)
    return {
        "wall": time.perf_counter() - t0,
        "cpu": _cpu_seconds() - c0,
        "dim": int(X.shape[1]),
        "files": len(df),
    }


def _cpu_seconds() -> float:
    r = os.times()
    return r.user + r.system + r.children_user + r.children_system


def latency_child(
    path: str, onnx: bool, requests: int, batches: int, streams: int, clip_s: float, warmup: int
) -> dict[str, Any]:
    """Seconds per `predict` of one clip and per `predict_batch` of `streams` clips (the
    measurement of `bench_inference`)."""
    from benchmarks.bench_inference import measure

    if onnx:
        from stlser.onnx_runtime import OnnxRecognizer

        rec: Any = OnnxRecognizer(path)
    else:
        from stlser.inference import Recognizer

        rec = Recognizer.load(path)
    return measure(rec, requests, batches, streams, clip_s, warmup)


def network_onnx_child(out: str) -> dict[str, Any]:
    """Export a default-size network with random weights to `out`."""
    from stlser.export import export_onnx

    model = bl.make_artefact(Path(out).with_suffix(".pt"))
    export_onnx(model, Path(out))
    return {}


# ----------------------------------------------------------------------------- driver
def _corpus_manifest(tmp: Path, n_synthetic: int) -> tuple[Path, str, float]:
    """(manifest CSV, description, audio seconds): EmoDB when present, else synthetic."""
    import soundfile as sf

    root = bl.corpus_root("emodb")
    if root is not None:
        from stlser import corpora

        df = corpora.build_manifest("emodb", root)[0]
        what = f"EmoDB at {root}: {len(df)} files"
    else:
        seconds = bl.emodb_like_seconds(n_synthetic, seed=5)
        paths = bl.write_speech_folder(tmp / "clips", seconds, seed=5)
        df = bl.folder_manifest(paths, seconds)
        what = f"{len(df)} speech-like WAVs of EmoDB-like lengths (no EmoDB here)"
    audio = float(sum(sf.info(str(p)).duration for p in df["path"]))
    path = tmp / "manifest.csv"
    df.to_csv(path, index=False)
    return path, what, audio


def _extraction(z: dict[str, Any], tmp: Path) -> tuple[str, dict[str, float]]:
    import pandas as pd

    manifest, what, audio = _corpus_manifest(tmp, z["synthetic_files"])
    own = bl.run_isolated(
        "bench_default",
        "extraction_child",
        {"manifest": str(manifest), "sets": OWN_SETS, "cache_dir": str(tmp / "cache_own")},
        z["timeout"],
    )
    rows = [
        [
            "stlser " + " + ".join(OWN_SETS),
            own["dim"],
            own["files"],
            bl.fmt(own["wall"]),
            bl.fmt(own["cpu"]),
            bl.fmt(audio / own["wall"]),
            "1.00",
            "-",
        ]
    ]
    facts = {"own_wall": own["wall"]}
    from stlser import featuresets

    if featuresets.opensmile_available():
        df = pd.read_csv(manifest)
        sub = df.iloc[:: z["smile_every"]]
        sub_path = tmp / "manifest_smile.csv"
        sub.to_csv(sub_path, index=False)
        import soundfile as sf

        share = float(sum(sf.info(str(p)).duration for p in sub["path"])) / audio
        sm = bl.run_isolated(
            "bench_default",
            "extraction_child",
            {"manifest": str(sub_path), "sets": SMILE_SETS, "cache_dir": str(tmp / "cache_sm")},
            z["timeout"],
        )
        wall, cpu = sm["wall"] / share, sm["cpu"] / share
        ratio = wall / own["wall"]
        facts["ratio"] = ratio
        rows.append(
            [
                "openSMILE " + " + ".join(SMILE_SETS),
                sm["dim"],
                f"{sm['files']} (every {z['smile_every']}th, scaled ×{1 / share:.2f})",
                bl.fmt(wall),
                bl.fmt(cpu),
                bl.fmt(audio / wall),
                bl.fmt(1 / ratio),
                "-",
            ]
        )
        rows[0][-1] = (
            f"≥ {GOAL_EXTRACTION:g}× openSMILE: {'met' if ratio >= GOAL_EXTRACTION else 'NOT met'}"
            f" ({ratio:.1f}×)"
        )
    else:
        rows[0][-1] = "openSMILE not installed (extra `opensmile`): no comparison"
    table = bl.md_table(
        [
            "extractor",
            "values",
            "files",
            "wall s",
            "CPU s (all processes)",
            "× real time",
            "speed vs stlser",
            "goal",
        ],
        rows,
    )
    text = f"""### Extraction ({what}, {audio:.0f} s of audio, {os.cpu_count()} cores)

Both through the recognizer's own path into an empty cache (decode, features, `.npy` writes;
one worker process per core, one torch thread each).

{table}
"""
    return text, facts


def _latency(z: dict[str, Any], tmp: Path) -> str:
    from importlib import resources

    kw = {k: z[k] for k in ("requests", "batches", "streams", "clip_s", "warmup")}
    models = resources.files("stlser") / "models"
    runs = {}
    if z["network"]:  # the reference: the paper network's ONNX graph (exported here)
        net = tmp / "network.onnx"
        bl.run_isolated("bench_default", "network_onnx_child", {"out": str(net)}, z["timeout"])
        runs["network (paper preset), ONNX"] = (str(net), True)
    runs["default `base`, ONNX"] = (str(models / "base.onnx"), True)
    runs["default `base`, torch"] = (str(models / "base.pt"), False)
    res = {
        name: bl.run_isolated(
            "bench_default", "latency_child", {"path": p, "onnx": o, **kw}, z["timeout"]
        )
        for name, (p, o) in runs.items()
    }
    ref_run = res.get("network (paper preset), ONNX")
    ref = bl.stats(ref_run["single"])["median"] if ref_run else float("nan")
    rows = []
    for name, r in res.items():
        one = bl.stats(r["single"])
        many = bl.stats(r["batch"])
        per_clip = many["median"] / z["streams"]
        gain = one["median"] / per_clip
        goals = []
        if name == "default `base`, ONNX" and ref_run:
            ratio = one["median"] / ref
            goals.append(
                f"one clip ≤ {GOAL_LATENCY:g}× network ONNX: "
                f"{'met' if ratio <= GOAL_LATENCY else 'NOT met'} ({ratio:.2f}×)"
            )
        if name.startswith("default"):
            goals.append(
                f"batch ≥ {GOAL_BATCH:g}× one-by-one: {'met' if gain >= GOAL_BATCH else 'NOT met'}"
            )
        rows.append(
            [
                name,
                bl.ms(one["min"]),
                bl.ms(one["median"]),
                bl.ms(one["p99"]),
                bl.ms(per_clip),
                bl.fmt(gain),
                bl.fmt(z["clip_s"] / one["median"]),
                "; ".join(goals) or "-",
            ]
        )
    table = bl.md_table(
        [
            "model, runtime",
            "1 clip min ms",
            "1 clip p50 ms",
            "1 clip p99 ms",
            f"ms per clip in a batch of {z['streams']} (p50)",
            "batch speed-up",
            "× real time (1 clip)",
            "goal",
        ],
        rows,
    )
    return f"""### Latency ({z["clip_s"]:g} s clips)

{z["requests"]} single requests after {z["warmup"]} warm-up; {z["batches"]} batches of
{z["streams"]} clips. The default model's ONNX graph runs from the waveform (front end, speaker
statistics, heads in one graph); its torch path batches the front end the same way.

{table}
"""


def _loso(z: dict[str, Any], tmp: Path) -> tuple[str, float | None]:
    if not z["loso"]:
        return "### EmoDB LOSO\n\nskipped (--quick).\n", None
    root = bl.corpus_root("emodb")
    if root is None:
        return "### EmoDB LOSO\n\nskipped: no EmoDB here.\n", None
    exe = Path(sys.executable).parent / "stlser"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "stlser.cli"]
    cmd += [
        "crossval",
        "--config",
        "configs/emodb_loso.yaml",
        "--set",
        f"data.root={root}",
        "--set",
        f"cache_dir={tmp / 'cache_loso'}",
        "-o",
        str(tmp / "loso"),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=str(bl.REPO_ROOT),
        env={**os.environ, "TQDM_DISABLE": "1"},
        timeout=z["timeout"],
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return f"### EmoDB LOSO\n\nfailed: {bl.short_error(proc.stderr)}\n", None
    import json

    report = json.loads((tmp / "loso" / "report.json").read_text())
    ua_txt = f"; UA {100 * float(report['ua']):.1f}"
    goal = f"≤ {GOAL_LOSO_S:g} s: {'met' if wall <= GOAL_LOSO_S else 'NOT met'}"
    return (
        f"""### EmoDB LOSO, default recipe, first run

`stlser crossval --config configs/emodb_loso.yaml` with an empty feature cache (3 × 535 clips
through the front end: the clips and their 0.9 / 1.1 speed copies; 10 folds of the averaged
logistic heads, 2 jobs): **{wall:.0f} s** wall ({goal}){ua_txt}.
""",
        wall,
    )


def main(quick: bool = False, **overrides: Any) -> str:
    """Run the default-recognizer benchmark; return its markdown section."""
    z = bl.sizes(SIZES, quick, overrides)
    load = bl.load_text()
    with tempfile.TemporaryDirectory(prefix="stlser-bench-default-") as td:
        tmp = Path(td)
        parts = []
        for fn in (_extraction, _latency, _loso):
            try:
                got = fn(z, tmp)
                parts.append(got[0] if isinstance(got, tuple) else got)
            except Exception as e:  # report, do not stop the section
                parts.append(f"### {fn.__name__.strip('_')}: FAILED\n\n{bl.short_error(e)}\n")
    intro = f"""
The default recognizer (`configs/recommended.yaml`: functionals of stlser's own front end, sets
{" + ".join(OWN_SETS)}, speaker-normalised, averaged logistic heads). Load average at start: {load}.
"""
    return bl.section("Default recognizer", intro, "\n".join(parts), quick)


if __name__ == "__main__":
    bl.cli(main, __doc__)
