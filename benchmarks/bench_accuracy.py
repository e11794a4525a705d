"""Accuracy of the default recognizer, the paper's network and eGeMAPS + SVM, speaker-independent.

    python -m benchmarks.bench_accuracy                                   # all systems, seeds 0-2
    python -m benchmarks.bench_accuracy --corpora emodb --systems default,svm --seeds 0
    python -m benchmarks.bench_accuracy --only-finished                   # re-print what exists

Systems, per corpus, each on the folds of its config (seed k draws the validation speakers):

* ``default``  the expert recipe from scratch, `configs/<corpus>_loso.yaml` (stlser.kinds.expert)
* ``paper5``   the paper's CNN-BiLSTM + 5 STL layers, `configs/paper_<corpus>_loso.yaml`
* ``paper0``   the same network without STL (`model.stl_layers=0`)
* ``svm``      eGeMAPS functionals + linear SVM (`stlser baseline`) on the folds of `<corpus>_loso`
* ``finetuned`` the default recognizer: `configs/recommended.yaml` fine-tunes from ``base``, the
  general model, which has heard these corpora; the leak-free equivalent fine-tunes (`model.init`)
  from a general model pretrained (`stlser pretrain`, configs/pretrain.yaml) on the *other*
  corpora only, so no test speaker or corpus is seen; that model is kept in
  `<runs>/<corpus>/pretrained-without/`

Every system is compared with the SVM *on the same folds and seed*: the table gives UA mean ± sd
over seeds and the paired UA difference with a 95 % bootstrap interval (utterances resampled
jointly for both systems, differences averaged over seeds). `--network-folds k` runs the
network systems on k grouped folds instead of LOSO for corpora named in `--grouped` (nEMO by
default: a LOSO of the network there takes days on 2 cores); their SVM partner then runs on
the same grouped folds. Runs go to `--runs` (default `runs/accuracy/<corpus>/<system>/seed<k>`)
and are reused when finished, so an interrupted call continues.

`--archive DIR` (what `make bench-accuracy` passes: `results/accuracy_runs`) keeps what the
table needs of every finished run, committed and small: its report.json, config.yaml and
predictions (utterance, fold, speaker, label, prediction; gzip). A run missing under `--runs` but
present in the archive is read from there and not trained again, so the table can be
regenerated, and completed run by run, in a fresh checkout. `--rows-from REPORT` appends the
rows of another report of this script for systems that have neither a run nor an archived
copy (`make bench-accuracy`: the nEMO network rows of `results/accuracy_nemo_network.md`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import benchlib as bl
from stlser import config, driver
from stlser.results import RunReport
from stlser.utils import write_text

SYSTEMS = ("finetuned", "default", "paper5", "paper0", "svm")  # table order: the default first
POOL = ("emodb", "casia", "nemo")
NAMES = {
    "default": "expert functionals from scratch",
    "paper5": "paper network, 5 STL",
    "paper0": "paper network, no STL",
    "svm": "eGeMAPS + linear SVM",
    "finetuned": "default recognizer (expert, fine-tuned from the other corpora)",
}
GOAL = 5.0  # UA points above the SVM
N_BOOT = 1000


def grouped(system: str, corpus: str, args: argparse.Namespace) -> list[str]:
    """Split overrides of a network system on a corpus listed in --grouped (else none)."""
    if system.startswith("paper") and corpus in args.grouped.split(","):
        return ["split.protocol=group-kfold", f"split.k={args.network_folds}"]
    return []


def run_dir(
    args: argparse.Namespace, corpus: str, system: str, seed: int, split: list[str]
) -> Path:
    tag = "" if not split else f"-k{args.network_folds}"
    return args.runs / corpus / f"{system}{tag}" / f"seed{seed}"


def archive_dir(
    args: argparse.Namespace, corpus: str, system: str, seed: int, split: list[str]
) -> Path | None:
    if args.archive is None:
        return None
    return args.archive / run_dir(args, corpus, system, seed, split).relative_to(args.runs)


#: The predictions' columns the table needs (the scores are left out of the archive).
KEPT = ["utt_id", "fold", "speaker", "label", "pred"]


def keep(run: Path, dest: Path) -> None:
    """Copy what the table reads of a finished run into the archive (atomic writes)."""
    import gzip

    from stlser.utils import atomic_path

    report = (run / "report.json").read_text()
    if (dest / "report.json").exists() and (dest / "report.json").read_text() == report:
        return  # kept already
    pred = pd.read_csv(run / "predictions.csv", dtype={"utt_id": str, "speaker": str})
    with atomic_path(dest / "predictions.csv.gz") as tmp:  # no name, no time: same bytes
        tmp.write_bytes(gzip.compress(pred[KEPT].to_csv(index=False).encode(), mtime=0))
    for name in ("config.yaml", "report.json"):  # report last: it marks the copy finished
        if (run / name).exists():
            write_text(dest / name, (run / name).read_text())


def finished(
    args: argparse.Namespace, corpus: str, system: str, seed: int, split: list[str]
) -> Path | None:
    """The folder holding this run's report.json: the run itself, else its archived copy
    (--archive); None if neither exists."""
    out = run_dir(args, corpus, system, seed, split)
    kept = archive_dir(args, corpus, system, seed, split)
    if (out / "report.json").exists():
        return out
    if kept is not None and (kept / "report.json").exists():
        return kept
    return None


def load_run(
    args: argparse.Namespace, corpus: str, system: str, seed: int, split: list[str]
) -> RunReport | None:
    """The run's report (None if not finished); a finished run is archived first (--archive)."""
    have = finished(args, corpus, system, seed, split)
    kept = archive_dir(args, corpus, system, seed, split)
    if have is not None and kept is not None and have != kept:
        keep(have, kept)
    return None if have is None else RunReport.load(have / "report.json")


def read_predictions(where: Path) -> pd.DataFrame:
    """A run's predictions.csv, or the archive's predictions.csv.gz."""
    path = where / "predictions.csv"
    if not path.exists():
        path = where / "predictions.csv.gz"
    return pd.read_csv(path, dtype={"utt_id": str, "speaker": str})


def run_one(
    corpus: str, system: str, seed: int, split: list[str], args: argparse.Namespace
) -> RunReport | None:
    out = run_dir(args, corpus, system, seed, split)
    got = load_run(args, corpus, system, seed, split)
    if got is not None or args.only_finished:
        return got
    root = args.root / corpus if args.root else bl.corpus_root(corpus)
    sets = [f"data.root={root}", f"seed={seed}", "train.progress=false", *split, *args.overrides]
    name = f"paper_{corpus}_loso.yaml" if system.startswith("paper") else f"{corpus}_loso.yaml"
    if system == "paper0":
        sets.append("model.stl_layers=0")
    if system == "finetuned":
        sets.append(f"model.init={pretrained_without(corpus, args)}")
    cfg = config.load(name, sets)
    if system == "svm":
        driver.baseline(cfg, out)
    else:
        driver.crossval(cfg, out, resume=True)
    got = load_run(args, corpus, system, seed, split)
    assert got is not None, f"{out} finished without a report.json"
    return got


def pretrained_without(corpus: str, args: argparse.Namespace) -> Path:
    """The general model pretrained on every corpus of POOL but `corpus` (made once, with the
    --set overrides that are not about data or splits)."""
    from stlser import pretrain

    out = args.runs / corpus / "pretrained-without"
    if not (out / "model.pt").exists():
        root = args.root or bl.corpus_root(corpus).parent
        others = [c for c in POOL if c != corpus and (root / c).is_dir()]
        same = [o for o in args.overrides if not o.startswith(("data.", "split.", "model.speeds"))]
        cfg = config.load(
            "pretrain.yaml",
            [f"data.root={root}", f"data.pool=[{','.join(others)}]", "train.progress=false", *same],
        )
        pretrain.pretrain(cfg, out)
    return out / "model.pt"


def _ua_rows(y: np.ndarray, p: np.ndarray, labels: list[str], idx: np.ndarray) -> np.ndarray:
    """UA of every bootstrap replicate (rows of `idx`)."""
    recalls = []
    for lab in labels:
        mask = y[idx] == lab
        hit = (p[idx] == lab) & mask
        n = mask.sum(1)
        recalls.append(np.where(n > 0, hit.sum(1) / np.maximum(n, 1), np.nan))
    return np.nanmean(np.stack(recalls), 0)


def paired(runs: list[tuple[Path, Path]], seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of UA(system) − UA(svm) on the same utterances, with a 95 % interval."""
    rng = np.random.default_rng(seed)
    diffs, boots = [], []
    for sys_dir, svm_dir in runs:
        a, b = read_predictions(sys_dir), read_predictions(svm_dir)
        m = a[["utt_id", "label", "pred"]].merge(
            b[["utt_id", "pred"]], on="utt_id", suffixes=("", "_svm")
        )
        if len(m) != len(a) or len(m) != len(b):
            raise ValueError(f"{sys_dir} and {svm_dir} were not tested on the same utterances")
        y, pa, pb = (m[c].astype(str).to_numpy() for c in ("label", "pred", "pred_svm"))
        labels = sorted(set(y))
        full = np.arange(len(y))[None]
        diffs.append(float(_ua_rows(y, pa, labels, full)[0] - _ua_rows(y, pb, labels, full)[0]))
        idx = rng.integers(0, len(y), size=(N_BOOT, len(y)))
        boots.append(_ua_rows(y, pa, labels, idx) - _ua_rows(y, pb, labels, idx))
    mean_boot = np.mean(boots, 0)
    lo, hi = np.percentile(mean_boot, [2.5, 97.5])
    return float(np.mean(diffs)), float(lo), float(hi)


HEADERS = [
    "corpus",
    "system",
    "folds",
    "seeds",
    "UA mean ± sd",
    "WA",
    "macro-F1",
    "UA − SVM [95 % CI], same folds",
    "goal (≥ +5)",
    "params",
    "min/run",
]


def rows_for(
    corpus: str, args: argparse.Namespace, seeds: list[int], systems: list[str]
) -> list[list[str]]:
    rows = []
    for system in systems:
        split = grouped(system, corpus, args)
        got = {k: run_one(corpus, system, k, split, args) for k in seeds}
        done = {k: r for k, r in got.items() if r is not None}
        if not done:
            rows.append([corpus, NAMES[system], "–", "–", "not run", "", "", "", "", "", ""])
            continue
        ua = np.array([r.ua for r in done.values()])
        gap = goal = "–"
        if system != "svm":
            pairs = []
            for k in done:
                if run_one(corpus, "svm", k, split, args) is not None:
                    pairs.append(
                        (
                            finished(args, corpus, system, k, split),
                            finished(args, corpus, "svm", k, split),
                        )
                    )
            if pairs:
                d, lo, hi = paired(pairs)
                gap = f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (n={len(pairs)})"
                goal = "met" if 100 * d >= GOAL else "**missed**"
        first = next(iter(done.values()))
        protocol = first.extra.get("protocol", "")
        rows.append(
            [
                corpus,
                NAMES[system],
                f"{len(first.folds)} ({protocol})",
                ",".join(map(str, done)),
                f"{100 * ua.mean():.1f} ± {100 * ua.std(ddof=1):.1f}"
                if len(ua) > 1
                else f"{100 * ua.mean():.1f} (one seed)",
                f"{100 * np.mean([r.wa for r in done.values()]):.1f}",
                f"{100 * np.mean([r.macro_f1 for r in done.values()]):.1f}",
                gap,
                goal,
                f"{first.n_params:,}",
                f"{np.mean([(r.seconds or 0) for r in done.values()]) / 60:.1f}",
            ]
        )
    return rows


FT_GOAL = 3.0  # UA points of fine-tuning over training from scratch (issue 13)


def finetune_rows(corpus: str, args: argparse.Namespace, seeds: list[int]) -> list[list[str]]:
    """Fine-tuned (the default recognizer) vs from scratch, paired on the same folds and seed."""
    pairs = [
        (finished(args, corpus, "finetuned", k, []), finished(args, corpus, "default", k, []))
        for k in seeds
    ]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return []
    d, lo, hi = paired(pairs)
    goal = "met" if 100 * d >= FT_GOAL else "**missed**"
    return [[corpus, f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (n={len(pairs)})", goal]]


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="emodb,casia,nemo")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"from {','.join(SYSTEMS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--grouped", default="nemo", help="corpora whose network runs use --network-folds"
    )
    ap.add_argument("--network-folds", type=int, default=3)
    ap.add_argument("--root", type=Path, default=None, help="folder holding the corpora")
    ap.add_argument("--runs", type=Path, default=bl.REPO_ROOT / "runs" / "accuracy")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--only-finished", action="store_true", help="train nothing; table what exists")
    ap.add_argument(
        "--rows-from",
        dest="earlier",
        type=Path,
        action="append",
        default=[],
        help="another report of this script: its rows for systems that have no run or archived "
        "copy here are appended, marked with their source (repeatable)",
    )
    ap.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="keep each finished run's report and predictions here; read runs missing under "
        "--runs from here (make bench-accuracy: results/accuracy_runs)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows: list[list[str]] = []
    ft_rows: list[list[str]] = []
    for corpus in [c for c in args.corpora.split(",") if c]:
        where = args.root / corpus if args.root else bl.corpus_root(corpus)
        if where is None or not where.is_dir():
            ap.error(f"corpus {corpus} not found (set --root or STLSER_CORPORA)")
        rows += rows_for(corpus, args, seeds, systems)
        if {"finetuned", "default"} <= set(systems):
            ft_rows += finetune_rows(corpus, args, seeds)
        md = report(rows, args, ft_rows)
        if args.out:  # after every corpus, so an interrupted call keeps what it measured
            write_text(args.out, md + "\n")
    return bl.emit(report(rows, args, ft_rows), args.out)


def earlier_rows(rows: list[list[str]], paths: list[Path]) -> list[list[str]]:
    """Rows of other reports (`--rows-from`) for (corpus, system) pairs `rows` has not run,
    each with its source file in front."""
    missing = {(r[0], r[1]) for r in rows if r[4] == "not run"}
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == len(HEADERS) and (cells[0], cells[1]) in missing:
                out.append([f"`{path.name}`", *cells])
    return out


def report(rows: list[list[str]], args: argparse.Namespace, ft_rows: list[list[str]]) -> str:
    old = []
    if args.earlier and (got := earlier_rows(rows, args.earlier)):
        old = [
            "### Systems without archived runs, copied from other reports",
            "Rows copied from the reports named in the first column (each names its command and "
            "machine); their predictions are not archived, so a call without --only-finished "
            "trains these systems again.",
            bl.md_table(["source", *HEADERS], got),
        ]
    ft = []
    if ft_rows:
        ft = [
            "### Fine-tuned from the other corpora vs from scratch (paired, same folds and seeds)",
            bl.md_table(
                ["corpus", "UA fine-tuned − from scratch [95 % CI]", "goal (≥ +3)"], ft_rows
            ),
        ]
    return "\n\n".join(
        [
            "## Accuracy: default recognizer, paper network, eGeMAPS + SVM (speaker-independent)",
            f"`{bl.nice_cmdline()}`",
            bl.facts_table(),
            f"Overrides: {', '.join(args.overrides) or 'none'}. Runs: `{args.runs}`"
            + (f", else the archived copies in `{args.archive}`" if args.archive else "")
            + ". UA is pooled "
            "over all test utterances of a run; mean ± sd over seeds (the seed draws the "
            "validation speakers and the network's initialisation). Minutes: wall time of the "
            "call that trained the run.",
            bl.md_table(HEADERS, rows),
            *ft,
            *old,
        ]
    )


if __name__ == "__main__":
    main()
