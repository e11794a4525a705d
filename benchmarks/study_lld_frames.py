"""Accuracy study: the paper's network on log-mel frames (its preset) against stlser's own
descriptor frames (``features.kind: lld``), scored on validation speakers only.

    python -m benchmarks.study_lld_frames --runs runs/lld [--seeds 0,1,2] [--folds 0,1,2]
    python -m benchmarks.study_lld_frames --runs runs/lld --only-finished

Each (frames, seed) is one `stlser crossval` of `configs/paper_emodb_loso.yaml` on the chosen
folds (resumable: an interrupted run continues from its checkpoints when started again); the lld
runs set ``train.freq_warp=0`` (the warp moves a mel axis, which descriptor frames do not have).
The seed draws a fold's two validation speakers and the initialisation, so the two kinds of
frames are paired on the same folds and validation speakers. The score is each fold's UA on its
validation speakers at the epoch early stopping keeps (least validation loss): the speakers that
chose the epoch, the same way for both, and never the test speaker. Test UA is not printed.

Prints a markdown table of the finished folds and the mean paired difference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import benchlib as bl

KINDS = {"logmel": [], "lld": ["features.kind=lld", "train.freq_warp=0"]}


def train(runs: Path, seeds: list[int], folds: list[int], root: str) -> None:
    for seed in seeds:
        for kind, extra in KINDS.items():
            out = runs / f"{kind}_s{seed}"
            if (out / "report.json").exists():
                continue
            sets = [
                f"seed={seed}",
                f"data.root={root}",
                f"split.folds=[{','.join(map(str, folds))}]",
                "train.progress=false",
                *extra,
            ]
            cmd = [sys.executable, "-m", "stlser.cli", "crossval"]
            cmd += ["--config", "configs/paper_emodb_loso.yaml", "-o", str(out)]
            cmd += [a for s in sets for a in ("--set", s)]
            if out.exists():
                cmd += ["--resume", "--force"]
            subprocess.run(cmd, check=True, cwd=bl.REPO_ROOT)


def val_ua(fold_dir: Path) -> tuple[float, int] | None:
    """UA (%) on the fold's validation speakers at the epoch of least validation loss."""
    if not (fold_dir / "model.pt").exists():
        return None
    m = pd.read_csv(fold_dir / "logs" / "metrics.csv").dropna(subset=["val_loss"])
    best = m.loc[m["val_loss"].idxmin()]
    return 100 * float(best["val_ua"]), int(best["epoch"])


def table(runs: Path, seeds: list[int], folds: list[int]) -> str:
    lines = [
        "| seed | fold | log-mel val UA (epoch) | lld val UA (epoch) | lld − log-mel |",
        "|---|---|---|---|---|",
    ]
    diffs = []
    for seed in seeds:
        for f in folds:
            got = {k: val_ua(runs / f"{k}_s{seed}" / f"fold_{f:02d}") for k in KINDS}
            if not any(got.values()):
                continue
            a, b = got["logmel"], got["lld"]
            cells = [f"{v[0]:.1f} ({v[1]})" if v else "not finished" for v in (a, b)]
            d = f"{b[0] - a[0]:+.1f}" if a and b else ""
            if a and b:
                diffs.append(b[0] - a[0])
            lines.append(f"| {seed} | {f} | {cells[0]} | {cells[1]} | {d} |")
    if diffs:
        lines.append(
            f"\nPaired folds: {len(diffs)}; mean lld − log-mel {np.mean(diffs):+.1f} UA points "
            f"(min {min(diffs):+.1f}, max {max(diffs):+.1f})."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder of the crossval runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--only-finished", action="store_true", help="train nothing, print the table")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    folds = [int(s) for s in a.folds.split(",")]
    if not a.only_finished:
        root = bl.corpus_root("emodb")
        if root is None:
            raise SystemExit("EmoDB not found (../shared/corpora/emodb or $STLSER_CORPORA)")
        train(a.runs, seeds, folds, str(root))
    print(table(a.runs, seeds, folds))


if __name__ == "__main__":
    main()
