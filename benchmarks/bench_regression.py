"""The local engine's speed now against an earlier revision of stlser, same machine, same run.

    python -m benchmarks.bench_regression --before REV [--reps 3] [--out FILE]

Checks that a refactor did not slow the default path. The revision is checked out in a temporary
git worktree and both trees run the same `stlser` commands (their own `src` on PYTHONPATH, this
virtual environment), alternating, `--reps` times each, on EmoDB (`../shared/corpora/emodb`):

* `features`: log-mel frames of the default config for the 535 clips into an empty cache,
  then again from that cache (2 workers);
* `crossval`: `configs/emodb_loso.yaml` (the default recipe, 10 folds, `train.jobs: 2`) from a
  feature cache each tree filled once beforehand (the front end may differ between revisions,
  so only the folds are compared).

Reports the median wall time of each command per tree and the ratio now / before.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import benchlib as bl

ROOT = Path(__file__).resolve().parents[1]


def _stlser(tree: Path, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    code = "import sys; from stlser.cli import main; sys.exit(main())"
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{tree.name}: stlser {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return wall


def measure(before: str, reps: int) -> str:
    corpus = bl.corpus_root("emodb")
    if corpus is None:
        raise FileNotFoundError("the EmoDB corpus is not in ../shared/corpora/emodb")
    rev = subprocess.run(
        ["git", "rev-parse", "--short", before],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    load = bl.load_text()
    with tempfile.TemporaryDirectory(prefix="stlser-regression-") as td:
        tmp = Path(td)
        old = tmp / f"tree-{rev}"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), rev], cwd=ROOT,
                       capture_output=True, check=True)  # fmt: skip
        trees = {"before": old, "now": ROOT}
        try:
            times: dict[tuple[str, str], list[float]] = {}
            for name, tree in trees.items():  # manifests and the folds' warm caches
                work = tmp / name
                work.mkdir()
                _stlser(tree, ["manifest", "--corpus", "emodb", "--root", str(corpus), "-o",
                               str(work / "emodb.csv")], work)  # fmt: skip
                _stlser(tree, ["crossval", "-c", str(tree / "configs" / "emodb_loso.yaml"),
                               "--set", f"cache_dir={work / 'cache'}", "--set", f"data.root={corpus}",
                               "-o", str(work / "warm")],
                        work)  # fmt: skip
            for r in range(reps):
                for name, tree in trees.items():
                    work = tmp / name
                    fcache = work / f"frames-{r}"
                    args = ["features", "--manifest", str(work / "emodb.csv"), "--cache-dir",
                            str(fcache), "--workers", "2"]  # fmt: skip
                    times.setdefault((name, "features, empty cache"), []).append(
                        _stlser(tree, args, work)
                    )
                    times.setdefault((name, "features, from the cache"), []).append(
                        _stlser(tree, args, work)
                    )
                    cv = ["crossval", "-c", str(tree / "configs" / "emodb_loso.yaml"), "--set",
                          f"cache_dir={work / 'cache'}", "--set", f"data.root={corpus}", "-o",
                          str(work / f"cv-{r}")]  # fmt: skip
                    times.setdefault((name, "crossval, 10 folds (warm cache)"), []).append(
                        _stlser(tree, cv, work)
                    )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           capture_output=True)  # fmt: skip
    rows = []
    for task in ("features, empty cache", "features, from the cache",
                 "crossval, 10 folds (warm cache)"):  # fmt: skip
        b = bl.stats(times[("before", task)])["median"]
        n = bl.stats(times[("now", task)])["median"]
        rows.append([task, bl.fmt(b), bl.fmt(n), f"{n / b:.2f}"])
    table = bl.md_table(
        ["command (local engine)", f"before ({rev}) s", "now s", "now / before"], rows
    )
    intro = f"""
The same `stlser` commands run by this tree and by revision {rev} (a temporary git worktree),
alternating, median of {reps} runs each (whole processes, start-up included), EmoDB, 2 workers /
2 fold jobs. Load average at start: {load}. A ratio near 1 means no change.
"""
    return bl.section("Local engine against an earlier revision", intro, table, False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision to compare with")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the section here (markdown)")
    a = ap.parse_args(argv)
    text = measure(a.before, a.reps)
    bl.emit(text, Path(a.out) if a.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
