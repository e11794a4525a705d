"""Recipes of the general model (`stlser pretrain`), chosen without the corpus they are for.

    python -m benchmarks.bench_pretrain                       # speeds [] vs [0.9, 1.1]
    python -m benchmarks.bench_pretrain --variant copies=model.speeds=[0.9,1.1]

The shipped model is judged by leave-one-corpus-out: trained on two corpora, scored on the
third (`stlser pretrain --loco`). Choosing its recipe on those scores would tune on the test
corpus, so a recipe is scored here, for each held-out corpus H, only on the other two: the
general recipe fitted on one of them and scored on the other, both ways (a leave-one-corpus-out
over the pool without H, `stlser.pretrain.leave_one_corpus_out`). H is never read. Printed per
H: UA of each variant on its two validation pairs (speaker-normalised, the labels both sides
share), and each variant's paired difference to the first. Runs go to `--runs` and are reused
(a finished model of the same recipe is not refit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks import benchlib as bl
from stlser import config, pretrain

POOL = ("emodb", "casia", "nemo")


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default=",".join(POOL), help="the pool (three or more)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[;KEY=VALUE]",
        help="a recipe: overrides of configs/pretrain.yaml (default: none vs copies)",
    )
    ap.add_argument("--root", type=Path, default=None, help="folder holding the corpora")
    ap.add_argument("--runs", type=Path, default=bl.REPO_ROOT / "runs" / "bench_pretrain")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    variants = args.variant or ["none=model.speeds=[]", "copies=model.speeds=[0.9,1.1]"]
    named = [
        (v.partition("=")[0], [o for o in v.partition("=")[2].split(";") if o]) for v in variants
    ]
    pool = [c for c in args.corpora.split(",") if c]  # reader names, or reader=folder
    if len(pool) < 3:
        ap.error("the pool needs three corpora: one held out, two to validate on")
    root = args.root or bl.corpus_root(pool[0]).parent
    folder = {e: e.partition("=")[2] or e for e in pool}  # what results are keyed by
    rows, gains = [], {name: [] for name, _ in named[1:]}
    for entry in pool:
        held = folder[entry]
        others = [c for c in pool if c != entry]
        uas = {}
        for name, sets in named:
            cfg = config.load(
                "pretrain.yaml",
                [
                    f"data.root={root}",
                    f"data.pool=[{','.join(others)}]",
                    "train.progress=false",
                    *args.overrides,
                    *sets,
                ],
            )
            res = pretrain.leave_one_corpus_out(cfg, args.runs / f"without-{held}" / name)
            uas[name] = {folder[c]: res[folder[c]]["speaker_norm"]["ua"] for c in others}
        ref = named[0][0]
        for c in [folder[o] for o in others]:
            trained = [folder[o] for o in others if folder[o] != c][0]
            row = [held, f"{trained} → {c}"]
            for name, _ in named:
                row.append(f"{100 * uas[name][c]:.1f}")
            for name, _ in named[1:]:
                d = 100 * (uas[name][c] - uas[ref][c])
                gains[name].append(d)
                row.append(f"{d:+.1f}")
            rows.append(row)
    heads = ["held out (never read)", "validation pair"]
    heads += [f"UA {name}" for name, _ in named]
    heads += [f"{name} − {named[0][0]}" for name, _ in named[1:]]
    summary = [
        [name, f"{np.mean(g):+.1f}", f"{sum(x > 0 for x in g)} of {len(g)}"]
        for name, g in gains.items()
    ]
    md = "\n\n".join(
        [
            "## General-model recipes on validation corpora (the held-out corpus never read)",
            f"`{bl.nice_cmdline()}`",
            bl.facts_table(),
            "Variants: " + "; ".join(f"`{n}`: {', '.join(s) or 'pretrain.yaml'}" for n, s in named),
            bl.md_table(heads, rows),
            bl.md_table([f"variant − {named[0][0]}", "mean over pairs", "pairs gained"], summary),
        ]
    )
    return bl.emit(md, args.out)


if __name__ == "__main__":
    main()
