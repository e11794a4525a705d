"""Shared helpers of the benchmark scripts: machine facts, timing, markdown tables, synthetic
speech-like audio, a random-weight model artefact and isolated (subprocess) measurements.

Not part of the stlser package: the scripts of this folder form the ``benchmarks`` package,
run from the repository root as ``python -m benchmarks.<script>``; they import the installed
``stlser`` and this module as ``from benchmarks import benchlib``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SR = 16_000
LABELS = ["angry", "happy", "neutral", "sad"]
BUSY_NOTE = (
    "other processes compete for the cores; multi-threaded torch ops then wait for descheduled "
    "OpenMP threads and can run 10-1000x slower, so these numbers do not describe the hardware"
)
#: The line a child process prints its JSON result on (see `run_isolated`).
RESULT_MARK = "@@BENCH-RESULT "


# ------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) -> str:
    """Which of the SIMD flags that matter for fp32/bf16 speed this CPU advertises."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in have) or "none of " + ",".join(wanted)
    except OSError:
        pass
    return "unknown"


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "-"


def cpu_busy_share(seconds: float = 0.5) -> float | None:
    """Share of all cores busy during `seconds` while this process sleeps (/proc/stat)."""

    def sample() -> tuple[int, int] | None:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f), idle

    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def load_text() -> str:
    """1/5/15-minute load averages and what they mean on this many cores."""
    la = os.getloadavg()
    # The load average lags and counts this suite's own threads; what matters is whether other
    # processes use the CPU now, while this one is idle between measurements.
    used = cpu_busy_share()
    busy = f" (BUSY: {BUSY_NOTE})" if used is not None and used > 0.25 else ""
    return f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}{busy}"


def machine_facts() -> dict[str, str]:
    """CPU, cores, threads, memory, load and library versions, as printable strings."""
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 1
    mem = "-"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    versions = ", ".join(
        f"{p} {_version(p)}"
        for p in ("stlser", "torch", "numpy", "librosa", "scikit-learn", "onnxruntime", "soundfile")
    )
    return {
        "CPU": cpu_model(),
        "SIMD flags": cpu_flags(),
        "logical cores (usable)": f"{os.cpu_count()} ({affinity})",
        "torch threads (intra / inter-op)": f"{torch.get_num_threads()} / "
        f"{torch.get_num_interop_threads()}",
        "memory": mem,
        "load average 1/5/15 min": load_text(),
        "python": platform.python_version(),
        "versions": versions,
        "platform": platform.platform(),
    }


def facts_table(facts: dict[str, str] | None = None) -> str:
    facts = facts or machine_facts()
    return md_table(["fact", "value"], [[k, v] for k, v in facts.items()])


# ------------------------------------------------------------------------------- timing
def repeat(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `reps` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def stats(times: Sequence[float]) -> dict[str, float]:
    """min, median, p50, p99 and count of a list of seconds."""
    a = np.asarray(times, dtype=float)
    return {
        "min": float(a.min()),
        "median": float(statistics.median(a.tolist())),
        "p99": float(np.percentile(a, 99)),
        "n": int(a.size),
    }


def fmt(x: float | None, digits: int = 3) -> str:
    """A number with `digits` significant figures ('-' for None/nan); no exponent below 1e6."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if x == 0:
        return "0"
    mag = int(np.floor(np.log10(abs(x))))
    decimals = max(0, digits - 1 - mag)
    return f"{x:,.{decimals}f}"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else fmt(seconds * 1000)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells converted with str; '|' escaped)."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def section(title: str, intro: str, body: str, quick: bool) -> str:
    """One markdown section: `## title`, the intro paragraph, the body (tables)."""
    mode = " (quick mode: tiny sizes, numbers only show the plumbing works)" if quick else ""
    return f"## {title}{mode}\n\n{intro.strip()}\n\n{body.strip()}\n"


def short_error(e: BaseException | str, limit: int = 300) -> str:
    """The last meaningful line of an error, shortened for a table cell."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pick = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), None)
    msg = pick or (lines[-1] if lines else type(e).__name__)
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def graph_break_summary() -> tuple[int, list[str]]:
    """(number of torch.compile graph breaks so far, their distinct reasons' first lines)."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    firsts = set()
    for reason in breaks:
        lines = [ln.strip() for ln in str(reason).splitlines() if ln.strip()]
        if lines:
            firsts.add(lines[0] if len(lines[0]) <= 80 else lines[0][:79] + "…")
    return int(sum(breaks.values())), sorted(firsts)


# ---------------------------------------------------------------------- corpora & audio
def corpus_root(name: str) -> Path | None:
    """`$STLSER_CORPORA/<name>` if that variable is set, else `../shared/corpora/<name>` from
    the repository root; None if the folder does not exist."""
    base = os.environ.get("STLSER_CORPORA")
    root = Path(base) / name if base else REPO_ROOT.parent / "shared" / "corpora" / name
    return root if root.is_dir() else None


def emodb_like_seconds(n: int, seed: int = 0) -> np.ndarray:
    """`n` utterance lengths like EmoDB's: lognormal, clipped to 1.2-9.0 s, mean about 2.8 s."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(np.log(2.55), 0.42, size=n))
    return np.clip(s, 1.2, 9.0)


def speechlike(seconds: float, rng: np.random.Generator, lead: float = 0.1) -> np.ndarray:
    """A voiced burst that looks like speech to an energy VAD and a log-mel front end:
    10 harmonics of a drifting 100-250 Hz f0, 4 Hz syllable envelope, faint noise floor."""
    n = max(1, int(round(seconds * SR)))
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros(n)
    for k in range(1, 11):
        x += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k
    env = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3))
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # 20 ms fades
    x *= env * ramp * 0.1
    pad = int(lead * SR)
    x = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    x += rng.normal(0, 3e-4, size=x.size)  # about -70 dBFS
    return x.astype(np.float32)


def write_speech_folder(folder: Path, seconds: Sequence[float], seed: int = 0) -> list[Path]:
    """One 16-bit WAV per length in `folder` (names utt_00000.wav ...); returns the paths."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, s in enumerate(seconds):
        p = folder / f"utt_{i:05d}.wav"
        sf.write(str(p), speechlike(float(s), rng), SR, subtype="PCM_16")
        paths.append(p)
    return paths


def iter_long_recording(minutes: float, seed: int = 0) -> Iterator[np.ndarray]:
    """Blocks of a long recording: speech-like bursts of 0.8-4 s separated by 0.3-2 s of
    near-silence, `minutes` long in total; generated block by block (constant memory)."""
    rng = np.random.default_rng(seed)
    total = int(round(minutes * 60 * SR))
    done = 0
    while done < total:
        burst = speechlike(rng.uniform(0.8, 4.0), rng, lead=0.0)
        gap = rng.normal(0, 3e-4, size=int(rng.uniform(0.3, 2.0) * SR)).astype(np.float32)
        block = np.concatenate([burst, gap])[: total - done]
        done += block.size
        yield block


def write_long_wav(path: Path, minutes: float, seed: int = 0) -> Path:
    """Stream a `minutes`-long speech/silence recording to a 16-bit WAV with soundfile."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16", format="WAV") as f:
        for block in iter_long_recording(minutes, seed):
            f.write(block)
    return path


def folder_manifest(paths: Sequence[Path], seconds: Sequence[float], copies: int = 1) -> Any:
    """A manifest DataFrame over `paths` (labels cycle through LABELS)."""
    import pandas as pd

    rows = []
    for c in range(copies):
        for i, (p, s) in enumerate(zip(paths, seconds, strict=True)):
            rows.append(
                {
                    "utt_id": f"c{c}_utt{i:05d}",
                    "path": str(p),
                    "label": LABELS[i % len(LABELS)],
                    "speaker": f"spk{i % 4}",
                    "session": "",
                    "gender": "",
                    "duration": float(s) + 0.2,  # speechlike() adds 0.1 s either side
                    "corpus": "bench",
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- model
def make_artefact(path: Path, seed: int = 0) -> Path:
    """A default-config `model.pt` with random weights (speed does not depend on training)."""
    from stlser import testing

    return testing.make_artefact(path, LABELS, seed=seed, jitter=False, meta={"corpus": "bench"})


# ------------------------------------------------------------------ isolated measurements
def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM) since start or the last
    `reset_peak_rss`. VmHWM rather than ``getrusage().ru_maxrss``: Linux carries the parent's
    peak into a child's ru_maxrss across vfork + exec, so a child of a large process would
    report the parent's peak."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now (VmRSS), or the peak where /proc is missing."""
    rss = _status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5), so that
    `peak_rss_mb` afterwards is the peak of what follows; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_isolated(module: str, func: str, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Call `module.func(**kwargs)` (a module of this package, e.g. ``"bench_scaling"``) in a
    fresh Python process (started in the repository root, so ``benchmarks`` imports) and
    return its JSON-able dict result plus ``peak_rss_mb`` of that process (see `peak_rss_mb`;
    a function that calls `reset_peak_rss` makes it the peak of its measured work). A failure
    or a timeout raises RuntimeError carrying the end of the child's stderr."""
    code = "from benchmarks import benchlib; benchlib._child()"
    payload = json.dumps({"module": module, "func": func, "kwargs": kwargs})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(REPO_ROOT),
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"did not finish within {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"child exited with code {proc.returncode}: {tail}")


def _child() -> None:
    """Entry point of `run_isolated`'s child: read the call from stdin, print the result."""
    import importlib

    req = json.loads(sys.stdin.read())
    mod = importlib.import_module(f"{__package__}.{req['module']}")
    res = dict(getattr(mod, req["func"])(**req["kwargs"]))
    res["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(res), flush=True)


def sizes(table: dict[str, dict[str, Any]], quick: bool, overrides: dict[str, Any]) -> dict:
    """The size settings for this run: the quick or full row, updated by `overrides`."""
    chosen = dict(table["quick" if quick else "full"])
    unknown = set(overrides) - set(chosen)
    if unknown:
        raise TypeError(f"unknown size settings {sorted(unknown)}; known: {sorted(chosen)}")
    chosen.update(overrides)
    return chosen


def nice_cmdline() -> str:
    """This process's command line as typed: ``python -m benchmarks.<script> …`` for a module
    run with ``-m``, else the interpreter's name and ``sys.argv``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("benchmarks."):
        return " ".join([Path(sys.executable).name, "-m", spec.name, *sys.argv[1:]])
    return " ".join([Path(sys.executable).name, *sys.argv])


def cli(main: Callable[..., str], doc: str | None, argv: list[str] | None = None) -> None:
    """Command line of one benchmark script: `--quick`, then facts + its section + wall time."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(facts_table() + "\n\n" + main(a.quick))
    print(f"({time.perf_counter() - t0:.0f} s)")


def emit(report: str, out: Path | None) -> str:
    """Print a script's report and, with `out`, also write it there (atomically)."""
    from stlser.utils import write_text

    if out:
        write_text(out, report + "\n")
    print(report)
    return report
