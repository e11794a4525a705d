"""Feature-extraction speed on EmoDB: the torch functional front end (compact, medium, large,
compact+large, all three) against openSMILE's eGeMAPS, ComParE_2016 and IS10 functionals.

Torch: ``torch.set_num_threads(--threads)`` (2 by default), clips sorted by length and batched
(``--batch`` clips, 16 by default), one warm-up batch before timing. openSMILE: one clip at a
time through ``stlser.smile.functionals`` (single-threaded, as openSMILE runs); ``--smile-files N``
times the first N clips of the length-sorted list spread evenly (every k-th) and scales by
audio duration, ``0`` (default) times every clip. Decoding is not timed.

    python benchmarks/bench_frontend.py [--threads 2] [--batch 16] [--smile-files 0]

Prints a table: wall seconds, × real time (audio seconds / wall seconds), the speed ratio
against openSMILE's three sets together, and the same ratio on process CPU seconds (which a
machine shared with other jobs disturbs less than wall time).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from stlser import smile
from stlser.features.functionals import FunctionalFrontEnd

EMODB = Path("/work/shared/corpora/emodb/wav")
SMILE_SETS = ("egemaps", "compare", "is10")


def load() -> list[np.ndarray]:
    return [sf.read(p, dtype="float32")[0] for p in sorted(EMODB.glob("*.wav"))]


def batches(waves: list[np.ndarray], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = np.argsort([len(w) for w in waves], kind="stable")
    out = []
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        lengths = torch.tensor([len(waves[j]) for j in idx])
        wave = torch.zeros(len(idx), int(lengths.max()))
        for k, j in enumerate(idx):
            wave[k, : len(waves[j])] = torch.from_numpy(waves[j])
        out.append((wave, lengths))
    return out


def time_torch(set_name: str, data: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for every batch."""
    fe = FunctionalFrontEnd(set_name).eval()
    with torch.inference_mode():
        fe(*data[len(data) // 2])  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        for wave, lengths in data:
            fe(wave, lengths)
        return time.perf_counter() - start, time.process_time() - cpu


def time_smile(set_name: str, waves: list[np.ndarray], n: int) -> tuple[float, float]:
    """(wall, CPU) seconds for every clip (measured on `n` clips spread over the list and
    scaled by audio duration when 0 < n < len(waves))."""
    pick = waves if n <= 0 or n >= len(waves) else waves[:: max(1, len(waves) // n)][:n]
    smile.functionals(pick[0], 16000, set_name)  # builds the extractor
    start, cpu = time.perf_counter(), time.process_time()
    for w in pick:
        smile.functionals(w, 16000, set_name)
    scale = sum(len(w) for w in waves) / sum(len(w) for w in pick)
    return (time.perf_counter() - start) * scale, (time.process_time() - cpu) * scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--smile-files", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    waves = load()
    audio = sum(len(w) for w in waves) / 16000
    data = batches(waves, args.batch)
    rows = {}
    for s in ("compact", "medium", "large", "compact+large", "compact+medium+large"):
        rows[f"torch {s}"] = time_torch(s, data)
    wall = cpu = 0.0
    for s in SMILE_SETS:
        rows[f"openSMILE {s}"] = time_smile(s, waves, args.smile_files)
        wall, cpu = wall + rows[f"openSMILE {s}"][0], cpu + rows[f"openSMILE {s}"][1]
    rows["openSMILE egemaps+compare+is10"] = (wall, cpu)
    print(f"EmoDB: {len(waves)} clips, {audio:.0f} s of audio; torch threads {args.threads}, "
          f"batch {args.batch}; openSMILE clips timed: {args.smile_files or len(waves)}; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    print(f"| {'extractor':32s} | wall s | x real time | speed vs openSMILE 3 | CPU s | "
          "speed vs openSMILE 3 (CPU) |")  # fmt: skip
    print(f"|{'-' * 34}|--------|-------------|----------------------|-------|"
          "----------------------------|")  # fmt: skip
    for name, (w, c) in rows.items():
        print(f"| {name:32s} | {w:6.1f} | {audio / w:11.0f} | {wall / w:20.1f} | {c:5.1f} | "
              f"{cpu / c:26.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
