"""Accuracy goals of the network against the eGeMAPS + SVM baseline, speaker-independent.

    python benchmarks/bench_accuracy.py                         # EmoDB and CASIA, ~45 min on 2 cores
    python benchmarks/bench_accuracy.py --corpora emodb --systems stl5,baseline
    python benchmarks/bench_accuracy.py --set train.ensemble=1  # any config override

For each corpus it runs `configs/<corpus>_loso.yaml` as it is (5 STL layers), the same with
`model.stl_layers=0`, and `stlser baseline` on the same folds, then prints one markdown table:
pooled UA with its bootstrap 95 % interval, WA, macro-F1, the UA gap to the baseline (the goal
is at least +5 points), wall minutes and training utterances per second. Runs go to
`--runs` (default `runs/accuracy/`) and are resumed, so an interrupted call continues and a
finished one only re-prints (minutes are those of the call that trained). The corpora are
looked up under `$STLSER_CORPORA` or `../shared/corpora`. Not part of `make bench` (it trains
dozens of models); `make bench-accuracy` runs it and writes `docs/results/accuracy.md`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

from stlser import config, experiments  # noqa: E402
from stlser.results import RunReport  # noqa: E402
from stlser.utils import write_text  # noqa: E402

SYSTEMS = ("stl5", "stl0", "baseline", "stl5x3")
GOAL = 5.0  # UA points above the baseline


def run_system(corpus: str, system: str, root: Path, runs: Path, overrides: list[str]) -> RunReport:
    """Train (or reuse) one system on one corpus; return its report."""
    sets = [f"data.root={root / corpus}", *overrides]
    if system == "stl0":
        sets.append("model.stl_layers=0")
    if system == "stl5x3":
        sets.append("train.ensemble=3")
    cfg = config.load(f"{corpus}_loso.yaml", sets)
    out = runs / corpus / system
    if (out / "report.json").exists():
        pass  # finished earlier: re-read, keeping the minutes of the call that trained it
    elif system == "baseline":
        experiments.baseline(cfg, out)
    else:
        experiments.crossval(cfg, out, resume=True)
    return RunReport.load(out / "report.json")


HEADERS = [
    "corpus",
    "system",
    "params",
    "UA [95 % CI]",
    "WA",
    "macro-F1",
    "UA − baseline",
    "goal (≥ +5)",
    "minutes",
    "train utt/s",
]


def table(results: dict[str, dict[str, RunReport]]) -> str:
    rows = []
    for corpus, by_sys in results.items():
        base = by_sys.get("baseline")
        for system, r in by_sys.items():
            lo, hi = r.ua_ci95
            gap = goal = "–"
            if base is not None and system != "baseline":
                d = 100 * (r.ua - base.ua)
                gap = f"{d:+.1f}"
                goal = "met" if d >= GOAL else "**missed**"
            name = {"stl0": "network, no STL", "baseline": "eGeMAPS + linear SVM"}.get(
                system, "network, 5 STL"
            )
            ensemble = r.extra.get("ensemble", 1)
            if ensemble > 1:
                name += f", ensemble of {ensemble}"
            rows.append(
                [
                    corpus,
                    name,
                    f"{r.n_params:,}",
                    f"{100 * r.ua:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                    f"{100 * r.wa:.1f}",
                    f"{100 * r.macro_f1:.1f}",
                    gap,
                    goal,
                    f"{(r.seconds or 0) / 60:.1f}",
                    r.extra.get("train_utt_per_second", "–"),
                ]
            )
    return bl.md_table(HEADERS, rows)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="emodb,casia")
    ap.add_argument(
        "--systems",
        default="stl5,stl0,baseline",
        help=f"comma-separated, from {','.join(SYSTEMS)} (stl5x3: 5 STL, 3 models per fold)",
    )
    ap.add_argument("--root", type=Path, default=None, help="folder holding emodb/ and casia/")
    ap.add_argument("--runs", type=Path, default=bl.REPO_ROOT / "runs" / "accuracy")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    results: dict[str, dict[str, RunReport]] = {}
    for corpus in [c for c in args.corpora.split(",") if c]:
        where = args.root / corpus if args.root else bl.corpus_root(corpus)
        if where is None or not where.is_dir():
            ap.error(f"corpus {corpus} not found (set --root or STLSER_CORPORA)")
        results[corpus] = {}
        for s in systems:
            results[corpus][s] = run_system(corpus, s, where.parent, args.runs, args.overrides)
            md = report(results, args)
            if args.out:  # after every system, so an interrupted call keeps what it measured
                write_text(args.out, md + "\n")
    md = report(results, args)
    if args.out:
        write_text(args.out, md + "\n")
    print(md)
    return md


def report(results: dict[str, dict[str, RunReport]], args: argparse.Namespace) -> str:
    return "\n\n".join(
        [
            "## Accuracy: network vs eGeMAPS + SVM, leave-one-speaker-out",
            f"`{bl.nice_cmdline()}`",
            bl.facts_table(),
            f"Overrides: {', '.join(args.overrides) or 'none'}. Runs: `{args.runs}`. "
            "Minutes are wall time of the call that trained the run.",
            table(results),
        ]
    )


if __name__ == "__main__":
    main()
