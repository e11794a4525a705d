"""Inference speed of a default-size model (random weights): real-time factor and latency of
`Recognizer` (torch eager), a torch.compile'd pipeline and ONNX Runtime, for one stream and 32
streams, plus the throughput of `stlser predict` over a folder of files.

    python -m benchmarks.bench_inference [--quick]

Speed does not depend on the weights, so the model is a random-weight `model.pt` of the
default configuration. A request is a 3 s float32 array at 16 kHz; its latency is the wall time
of `predict(x, sample_rate=16000)` (input checks, padding, front end, network, softmax).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import benchlib as bl

SIZES = {
    "full": {
        "requests": 300,
        "batches": 20,
        "streams": 32,
        "clip_s": 3.0,
        "warmup": 5,
        "cli_files": 200,
        "cli_reps": 3,
        "onnx": True,
        "compile": True,
        "compile_timeout": 900.0,
    },
    "quick": {
        "requests": 20,
        "batches": 2,
        "streams": 32,
        "clip_s": 3.0,
        "warmup": 2,
        "cli_files": 8,
        "cli_reps": 1,
        "onnx": True,
        "compile": False,
        "compile_timeout": 300.0,
    },
}
GOAL_RTF = 0.002
GOAL_ONNX = 1.5


def clips(n: int, seconds: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    n_samples = int(round(seconds * bl.SR))
    return [bl.speechlike(seconds, rng, lead=0.0)[:n_samples] for _ in range(n)]


def measure(
    rec: Any, requests: int, batches: int, streams: int, clip_s: float, warmup: int
) -> dict[str, Any]:
    """Latencies (s) of single requests and of `streams`-clip batches with `rec`."""
    singles = clips(8, clip_s, seed=1)
    group = clips(streams, clip_s, seed=2)
    i = iter(range(10**9))
    single = bl.repeat(
        lambda: rec.predict(singles[next(i) % 8], sample_rate=bl.SR), requests, warmup
    )
    batch = bl.repeat(
        lambda: rec.predict_batch(group, batch_size=streams, sample_rate=bl.SR),
        batches,
        max(1, warmup // 2),
    )
    return {"single": single, "batch": batch}


def compiled_variant(
    model_path: str, requests: int, batches: int, streams: int, clip_s: float, warmup: int
) -> dict[str, Any]:
    """`Recognizer` whose pipeline is torch.compile'd (run in a child process by `main`)."""
    import torch

    from stlser.inference import Recognizer

    rec = Recognizer.load(model_path)
    rec.pipeline = torch.compile(rec.pipeline)
    t0 = time.perf_counter()
    rec.predict(clips(1, clip_s, 0)[0], sample_rate=bl.SR)
    rec.predict_batch(clips(streams, clip_s, 0), batch_size=streams, sample_rate=bl.SR)
    first = time.perf_counter() - t0
    res = measure(rec, requests, batches, streams, clip_s, warmup)
    n_breaks, reasons = bl.graph_break_summary()
    res.update(compile_s=first, graph_breaks=n_breaks, reasons=reasons)
    return res


def stlser_command() -> list[str]:
    exe = Path(sys.executable).parent / "stlser"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from stlser.cli import main; sys.exit(main())"]


def cli_workers_supported() -> bool:
    out = subprocess.run([*stlser_command(), "predict", "--help"], capture_output=True, text=True)
    return "--workers" in out.stdout


def time_cli(model: Path, folder: Path, out: Path, workers: int | None) -> float:
    cmd = [*stlser_command(), "predict", "--model", str(model), str(folder), "-o", str(out)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"stlser predict failed: {bl.short_error(proc.stderr)}")
    return wall


def main(quick: bool = False, **overrides: Any) -> str:
    """Run the inference benchmark; return its markdown section."""
    import torch

    from stlser.inference import Recognizer

    z = bl.sizes(SIZES, quick, overrides)
    load = bl.load_text()
    kw = {k: z[k] for k in ("requests", "batches", "streams", "clip_s", "warmup")}
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="stlser-bench-inf-") as td:
        tmp = Path(td)
        model = bl.make_artefact(tmp / "model.pt")
        results["torch eager (`Recognizer`)"] = measure(Recognizer.load(model), **kw)
        notes["torch eager (`Recognizer`)"] = f"{torch.get_num_threads()} torch threads"
        name = "torch.compile(Pipeline)"
        if z["compile"]:
            try:
                t0 = time.perf_counter()
                res = bl.run_isolated(
                    "bench_inference",
                    "compiled_variant",
                    {"model_path": str(model), **kw},
                    z["compile_timeout"],
                )
                results[name] = res
                notes[name] = (
                    f"compile (first calls) {res['compile_s']:.0f} s, child process "
                    f"{time.perf_counter() - t0:.0f} s; {res['graph_breaks']} graph "
                    f"break(s)" + (f" ({'; '.join(res['reasons'])})" if res["reasons"] else "")
                )
            except RuntimeError as e:
                notes[name] = f"failed: {bl.short_error(e)}"
        else:
            notes[name] = "skipped (--quick)"
        onnx_path = None
        name = "ONNX Runtime (`OnnxRecognizer`)"
        if z["onnx"]:
            try:
                from stlser.export import export_onnx
                from stlser.onnx_runtime import OnnxRecognizer

                t0 = time.perf_counter()
                onnx_path = export_onnx(model, tmp / "model.onnx")
                export_s = time.perf_counter() - t0
                threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
                results[name] = measure(OnnxRecognizer(onnx_path, threads=threads), **kw)
                notes[name] = (
                    f"{threads or 'default'} intra-op threads; export took {export_s:.0f} s"
                )
            except Exception as e:  # report, do not stop the suite
                notes[name] = f"failed: {bl.short_error(e)}"
        else:
            notes[name] = "skipped"

        # --- CLI throughput
        n = z["cli_files"]
        seconds = bl.emodb_like_seconds(n, seed=3)
        folder = tmp / "clips"
        bl.write_speech_folder(folder, seconds, seed=3)
        one = tmp / "one"
        one.mkdir()
        shutil.copy(folder / "utt_00000.wav", one / "utt_00000.wav")
        audio_s = float(seconds.sum()) + 0.2 * n
        has_workers = cli_workers_supported()
        cli_rows = []
        models = [("model.pt", model)] + ([("model.onnx", onnx_path)] if onnx_path else [])
        for label, path in models:
            for workers in (1, 2) if has_workers else (None,):
                try:
                    start = bl.stats(
                        [time_cli(path, one, tmp / "o1.csv", workers) for _ in range(z["cli_reps"])]
                    )
                    full = bl.stats(
                        [
                            time_cli(path, folder, tmp / "o.csv", workers)
                            for _ in range(z["cli_reps"])
                        ]
                    )
                except RuntimeError as e:
                    cli_rows.append(
                        [label, str(workers or 1), "-", "-", "-", "-", "-", bl.short_error(e)]
                    )
                    continue
                steady = (n - 1) / max(full["median"] - start["median"], 1e-9)
                cli_rows.append(
                    [
                        label,
                        str(workers or 1),
                        bl.fmt(start["median"]),
                        bl.fmt(full["min"]),
                        bl.fmt(full["median"]),
                        bl.fmt(n / full["median"]),
                        bl.fmt(steady),
                        bl.fmt(audio_s / full["median"]),
                    ]
                )

    eager = results.get("torch eager (`Recognizer`)")
    rows = []
    for name in (
        "torch eager (`Recognizer`)",
        "torch.compile(Pipeline)",
        "ONNX Runtime (`OnnxRecognizer`)",
    ):
        for mode in ("single", "batch"):
            r = results.get(name)
            label = "1 (sequential)" if mode == "single" else f"{z['streams']} (one batch)"
            if r is None:
                if mode == "single":
                    rows.append([name, label, *["-"] * 7, notes.get(name, "")])
                continue
            s = bl.stats(r[mode])
            audio = z["clip_s"] * (1 if mode == "single" else z["streams"])
            rtf = s["median"] / audio
            speed = bl.stats(eager[mode])["median"] / s["median"] if eager else float("nan")
            goals = []
            if mode == "single":
                goals.append(f"RTF ≤ {GOAL_RTF}: {'met' if rtf <= GOAL_RTF else 'NOT met'}")
            if name.startswith("ONNX"):
                goals.append(f"≥ {GOAL_ONNX}× eager: {'met' if speed >= GOAL_ONNX else 'NOT met'}")
            rows.append(
                [
                    name,
                    label,
                    bl.ms(s["min"]),
                    bl.ms(s["median"]),
                    bl.ms(s["p99"]),
                    f"{rtf:.4f}",
                    bl.fmt(audio / s["median"]),
                    bl.fmt(speed),
                    "; ".join(goals) or "-",
                    notes.get(name, "") if mode == "single" else "",
                ]
            )
    headers = [
        "runtime",
        "streams",
        "min ms",
        "p50 ms",
        "p99 ms",
        "RTF (p50)",
        "× real time",
        "speed-up vs eager (p50)",
        "goal",
        "note",
    ]
    intro = f"""
Model: default configuration, random weights (`model.pt` written by `stlser.model.save_artefact`).
1 stream = sequential requests, each one {z["clip_s"]:g} s clip (`predict(x, sample_rate=16000)`),
{z["requests"]} timed after {z["warmup"]} warm-up. {z["streams"]} streams = one batch of
{z["streams"]} different {z["clip_s"]:g} s clips through `predict_batch(..., batch_size={z["streams"]})`
({z["batches"]} timed batches; a server would micro-batch concurrent streams like this — a pool of
{z["streams"]} threads on {os.cpu_count()} cores would only queue). RTF = processing time / audio
time (lower is better); for the batch the audio is {z["streams"]} × {z["clip_s"]:g} s.
Load average at start: {load}.
"""
    workers_txt = (
        "with 1 and 2 worker processes (`--workers`)"
        if has_workers
        else "in 1 process: `stlser predict` has no `--workers` option"
    )
    cli_headers = [
        "model",
        "workers",
        "start-up s (1 file)",
        "min s",
        "median s",
        "files/s",
        "files/s without start-up",
        "× real time",
    ]
    body = bl.md_table(headers, rows)
    body += f"""

`stlser predict` over a folder of {n} speech-like WAVs (EmoDB-like lengths, {audio_s:.0f} s of
audio) written to a CSV, {workers_txt}; wall time of the whole command including Python and torch
start-up ({z["cli_reps"]} repetition(s)). "without start-up" = (files − 1) / (t(folder) − t(1 file)).

{bl.md_table(cli_headers, cli_rows)}
"""
    return bl.section("Inference", intro, body, quick)


def cli(argv: list[str] | None = None) -> None:
    bl.cli(main, __doc__, argv)


if __name__ == "__main__":
    cli()
