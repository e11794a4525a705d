"""The default recognizer beside EmoBox's SSL leaderboard on CASIA (EmoBox's own 4 folds).

    python -m benchmarks.bench_emobox --emobox EmoBox/data/casia --audio ../shared/corpora/casia \
        --out docs/results/emobox_casia.md

EmoBox (Ma et al., Interspeech 2024) publishes fold lists for CASIA (`--emobox`: its
``data/casia`` folder, ``fold_<k>/casia_{train,test}_fold_<k>.jsonl``) and an intra-corpus
leaderboard of frozen self-supervised models on them. This script

1. turns the fold lists into a manifest with a ``fold`` column (`stlser manifest --corpus
   emobox`; the audio under `--audio`), written to ``<runs>/casia/manifest/``;
2. compares EmoBox's folds with stlser's leave-one-speaker-out folds of the same audio (the
   `casia` reader on `--audio`): test speakers and files of every fold;
3. runs the default recognizer, `configs/recommended.yaml` with ``split.protocol=predefined``,
   fine-tuned (``model.init``, `--init`) from a general model pretrained *without* CASIA
   (`configs/pretrain.yaml` on the other corpora of `--corpora`, made once as
   `bench_accuracy`'s ``finetuned`` system does; ``base``, the shipped model, has heard CASIA's
   speakers), for every seed of `--seeds`; and eGeMAPS + linear SVM (`stlser baseline`) on the
   same folds;
4. scores every fold's model two ways: (a) the test speaker normalised by its own statistics
   (crossval's protocol: the speaker's clips are all there, labels unused), (b) every test clip
   alone with the training set's global statistics (`stlser evaluate --stats global`, what
   `stlser predict` does, the leaderboard's setting);
5. writes the report (`--out`): the leaderboard's published numbers beside ours.

Runs go to ``<runs>/casia/{finetuned,svm}/seed<k>`` and are reused when finished (``--resume``),
so an interrupted call continues. UA = mean per-class recall (scikit-learn's balanced accuracy),
WA = accuracy, macro-F1: EmoBox's definitions (its `EmoEval`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from benchmarks import benchlib as bl
from stlser import config, corpora, driver, kinds, metrics, splits
from stlser.results import RunReport

CORPUS = "casia"
#: EmoBox's intra-corpus leaderboard on CASIA (frozen model + trained head, its 4 folds): WA %
#: as quoted in issue 29. EmoBox's README shows the table as an image (docs/intra-corpus.jpg);
#: its UA and macro-F1 for CASIA were not available as text here, so they are left out.
LEADERBOARD = (("Whisper-large-v3", 59.58), ("WavLM-large", 52.12), ("HuBERT-large", 45.30))
SYSTEMS = {"finetuned": "default recognizer", "svm": "eGeMAPS + linear SVM"}
WAYS = {
    "speaker": "(a) test speaker's own statistics",
    "global": "(b) one clip at a time, training set's global statistics",
}


# ------------------------------------------------------------------------------ inputs
def emobox_manifest(emobox: Path, audio: Path, out: Path) -> Path:
    """EmoBox's fold lists → ``out/manifest.csv`` (rebuilt when the lists are newer)."""
    path = out / "manifest.csv"
    lists = sorted(emobox.glob("fold_*/*.jsonl"))
    if path.exists() and all(p.stat().st_mtime <= path.stat().st_mtime for p in lists):
        return path
    df, skipped = corpora.build_manifest("emobox", emobox, audio=audio)
    return corpora.write_manifest(df, skipped, out)


def _real(paths: pd.Series) -> list[str]:
    return [os.path.realpath(p) for p in paths.astype(str)]


def fold_agreement(emo: pd.DataFrame, audio: Path) -> list[list[str]]:
    """One row per EmoBox test fold: its speakers and files against the LOSO fold of stlser's
    `casia` reader that tests the most of the same files."""
    ours, _ = corpora.build_manifest(CORPUS, audio)
    path_of = dict(zip(ours["utt_id"].astype(str), _real(ours["path"]), strict=True))
    loso = {
        ",".join(map(str, f.test_speakers)): {path_of[str(u)] for u in f.test}
        for f in splits.make_folds(ours, "loso")
    }
    emo = emo.assign(real=_real(emo["path"]))
    rows = []
    tested = sorted((f for f in emo["fold"].unique() if f != "none"), key=lambda f: int(f))
    for k in tested:
        part = emo[emo["fold"] == k]
        files = set(part["real"])
        spk, theirs = max(loso.items(), key=lambda kv: len(kv[1] & files))
        same = files == theirs
        rows.append(
            [
                k,
                ", ".join(sorted(set(part["speaker"].astype(str)))),
                str(len(files)),
                spk,
                str(len(theirs)),
                str(len(files & theirs)),
                "same files" if same else f"{len(files - theirs)} / {len(theirs - files)} differ",
            ]
        )
    return rows


def init_model(args: argparse.Namespace) -> str | None:
    """The ``model.init`` of the default recognizer (see the module doc)."""
    if args.init == "none":
        return None
    if args.init != "without":
        return args.init
    from benchmarks.bench_accuracy import pretrained_without

    ns = SimpleNamespace(runs=args.runs, root=args.corpora, overrides=args.overrides)
    return str(pretrained_without(CORPUS, ns))


# ------------------------------------------------------------------------------ runs
def run(system: str, seed: int, manifest: Path, args: argparse.Namespace) -> Path:
    out = args.runs / CORPUS / system / f"seed{seed}"
    if (out / "report.json").exists():
        return out
    init = init_model(args) if system == "finetuned" else None
    sets = [
        "data.corpus=manifest",
        f"data.manifest={manifest}",
        "split.protocol=predefined",
        f"seed={seed}",
        f"model.init={init if init else 'null'}",
        "train.progress=false",
        *args.overrides,
    ]
    cfg = config.load("recommended.yaml", sets)
    if system == "svm":
        return driver.baseline(cfg, out, resume=True)
    return driver.crossval(cfg, out, resume=True)


def predictions(run_dir: Path, stats: str, cache_dir: str) -> pd.DataFrame:
    """utt_id, fold, label, pred of every test clip of a finished run: crossval's own
    predictions (`stats` speaker) or each fold's model rescored with global statistics."""
    pred = pd.read_csv(run_dir / "predictions.csv", dtype={"utt_id": str, "fold": str})
    if stats == "speaker":
        return pred[["utt_id", "fold", "label", "pred"]]
    df = corpora.read_manifest(run_dir / "manifest.csv").set_index("utt_id", drop=False)
    parts = []
    for fdir in sorted(run_dir.glob("fold_[0-9][0-9]")):
        test = pd.read_csv(fdir / "predictions.csv", dtype={"utt_id": str, "fold": str})
        kind, art, path = kinds.read(fdir / "model.pt")
        probs = kind.score(path, art, df.loc[test["utt_id"]], cache_dir, stats=stats)
        labels = [str(x) for x in art["labels"]]
        parts.append(test.assign(pred=[labels[i] for i in np.asarray(probs).argmax(1)]))
    return pd.concat(parts, ignore_index=True)[["utt_id", "fold", "label", "pred"]]


def scores(pred: pd.DataFrame) -> dict[str, float]:
    y, p = pred["label"].astype(str).tolist(), pred["pred"].astype(str).tolist()
    labels = sorted(set(y))
    out = {k: 100 * v for k, v in metrics.compute(y, p, labels).items()}
    lo, hi = metrics.bootstrap_ci(y, p, labels, "ua")
    out["ua_lo"], out["ua_hi"] = 100 * lo, 100 * hi
    per_fold = {
        str(f): 100 * metrics.compute(g["label"].tolist(), g["pred"].tolist(), labels)["ua"]
        for f, g in pred.groupby("fold")
    }
    out["ua_fold_mean"] = float(np.mean(list(per_fold.values())))
    top = {  # the most frequent answer of each fold and its share of the fold's clips
        str(f): (
            str(g["pred"].value_counts().index[0]),
            100 * g["pred"].value_counts().iloc[0] / len(g),
        )
        for f, g in pred.groupby("fold")
    }
    return {**out, "per_fold": per_fold, "top": top}


# ------------------------------------------------------------------------------ report
def _fold_order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


DIFFERENCES = """\
### What is comparable, and what differs

* **Comparable with the leaderboard: (b)**, every test clip scored alone with the statistics
  of the training speakers, as EmoBox scores a clip and as `stlser predict` does. (a) also uses
  the unlabeled clips of the test speaker (all 300 of them) to normalise that speaker, which a
  leaderboard entry does not get; it is stlser's cross-validation protocol and what `stlser
  predict --adapt` gives a user with several clips of a speaker.
* **Same folds, same audio:** the table above compares the files; EmoBox's CASIA is the same
  public 1,200-file subset (4 speakers x 6 emotions x 50 texts), fold k testing one speaker.
  The 50 texts are the same for every speaker, so every test text was also heard in
  training, by the other speakers, on both sides.
* **Models:** the leaderboard's entries are frozen self-supervised speech models (pre-trained
  on large unlabeled speech) with a small head trained on each fold's training list. stlser's
  default recognizer is {recipe}: {params:,} parameters, no GPU. Its `model.init` is a general
  model trained on EmoDB and nEMO (German, Polish; no CASIA), labelled data the leaderboard's
  heads do not see; speed-perturbed copies (0.9, 1.1) of the training clips join its training
  rows.
* **Choices:** stlser's recipe is fixed (nothing is chosen on validation speakers or test folds:
  every head is the average of its fits over the L2 grid), so the seed, which only draws the
  validation speakers, changes nothing but float rounding; the leaderboard's training recipe
  (epochs, learning rate, how a checkpoint is chosen) is EmoBox's, not re-run here.
* **Pooling:** our WA, UA and macro-F1 are pooled over the 1,200 test clips; every fold has
  300 clips, 50 per class, so pooled WA and UA equal the means of the folds' (last column).
  How EmoBox aggregates its 4 folds was not checked here.
"""


def _piles(piles: dict[tuple[str, str], tuple[float, str]]) -> list[str]:
    """A sentence per system on how far one clip at a time piles a fold's answers onto one
    label, against the same model with the speaker's own statistics."""
    out = []
    for name in SYSTEMS.values():
        if (name, "global") in piles and (name, "speaker") in piles:
            (g, gf), (a, _) = piles[(name, "global")], piles[(name, "speaker")]
            out.append(
                f"{name}: one clip at a time, up to {g:.0f} % of a fold's answers are one label "
                f"({gf}); the same models with the test speaker's own statistics give at most "
                f"{a:.0f} % to one label in any fold. Only the statistics differ between the two."
            )
    return out


def report(agree: list[list[str]], got: dict, init: str, recipe: dict, note: str = "") -> str:
    seeds = sorted({s for (_, _, s) in got})
    folds = sorted(next(iter(got.values()))["per_fold"], key=_fold_order) if got else []
    rows, fold_rows, top_rows = [], [], []
    piles: dict[tuple[str, str], tuple[float, str]] = {}
    for system, name in SYSTEMS.items():
        for stats, way in WAYS.items():
            have = [got[(system, stats, s)] for s in seeds if (system, stats, s) in got]
            if not have:
                continue
            keys = ("wa", "ua", "macro_f1", "ua_fold_mean")
            m = {k: float(np.mean([h[k] for h in have])) for k in keys}
            sd = float(np.std([h["ua"] for h in have], ddof=1)) if len(have) > 1 else None
            first = have[0]
            rows.append(
                [
                    name,
                    way,
                    "**yes**" if stats == "global" else "no (uses test-speaker statistics)",
                    f"{m['wa']:.1f}",
                    f"{m['ua']:.1f}" + (f" ± {sd:.1f}" if sd is not None else ""),
                    f"[{first['ua_lo']:.1f}, {first['ua_hi']:.1f}]",
                    f"{m['macro_f1']:.1f}",
                    f"{m['ua_fold_mean']:.1f}",
                ]
            )
            fold_rows.append([name, way, *(f"{first['per_fold'][f]:.1f}" for f in folds)])
            top_rows.append(
                [name, way, *(f"{first['top'][f][0]} {first['top'][f][1]:.0f} %" for f in folds)]
            )
            piles[(name, stats)] = max((first["top"][f][1], f) for f in folds)
    board = [[m, f"{wa:.2f}", "not available here", "not available here"] for m, wa in LEADERBOARD]
    return "\n\n".join(
        [
            "## stlser's default recognizer beside EmoBox's SSL leaderboard: CASIA, EmoBox folds",
            f"`{bl.nice_cmdline()}`",
            bl.facts_table(),
            "### EmoBox's folds against stlser's leave-one-speaker-out folds",
            "Every EmoBox test fold of CASIA (from its fold lists) against the LOSO fold of "
            "stlser's `casia` reader that tests the most of the same audio files (compared by "
            "resolved path).",
            bl.md_table(
                [
                    "EmoBox fold",
                    "EmoBox test speaker(s)",
                    "files",
                    "LOSO fold (test speaker)",
                    "files",
                    "shared",
                    "agreement",
                ],
                agree,
            ),
            "### Published: EmoBox intra-corpus leaderboard, CASIA",
            "Frozen pre-trained model, a small head trained on each fold's training list, every "
            "test clip scored alone. WA as quoted in stlser's issue 29; EmoBox's README shows "
            "the leaderboard as an image, and its UA and macro-F1 for CASIA were not available "
            "as text here, so they are not given.",
            bl.md_table(["model (frozen)", "WA %", "UA %", "macro-F1 %"], board),
            "### stlser on the same folds",
            f"Seeds {','.join(map(str, seeds))}; the default recognizer's `model.init`: "
            f"`{init}`. Pooled over the {sum(int(r[2]) for r in agree)} test clips of the "
            f"{len(agree)} folds; UA 95 % interval: bootstrap over clips (first seed); last "
            'column: mean of the per-fold UA. "Comparable" = the setting of the leaderboard '
            "(no test-speaker statistics).",
            bl.md_table(
                [
                    "system",
                    "normalisation of the test clips",
                    "comparable with the leaderboard",
                    "WA %",
                    "UA %",
                    "UA 95 % CI",
                    "macro-F1 %",
                    "UA, mean of folds",
                ],
                rows,
            ),
            "UA per EmoBox fold (first seed):",
            bl.md_table(["system", "normalisation", *(f"UA {f}" for f in folds)], fold_rows),
            "The most frequent answer per fold and its share of the fold's 300 clips (50 per "
            "class, so 17 % would be an even spread; first seed):",
            bl.md_table(["system", "normalisation", *(f"top answer {f}" for f in folds)], top_rows),
            *_piles(piles),
            DIFFERENCES.format(**recipe).strip(),
            *([f"### About this run\n\n{note}"] if note else []),
        ]
    )


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emobox", type=Path, required=True, help="EmoBox's data/casia folder")
    ap.add_argument("--audio", type=Path, default=bl.corpus_root(CORPUS), help="CASIA's audio")
    ap.add_argument(
        "--corpora",
        type=Path,
        default=None,
        help="folder holding the corpora the general model is pretrained on (--init without)",
    )
    ap.add_argument(
        "--init",
        default="without",
        help="model.init of the default recognizer: 'without' (a general model pretrained "
        "without CASIA, made once), 'none' (from scratch), 'base' (the shipped model, which "
        "has heard CASIA: not speaker-independent) or a model.pt",
    )
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"from {','.join(SYSTEMS)}")
    ap.add_argument("--runs", type=Path, default=bl.REPO_ROOT / "runs" / "emobox")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument(
        "--note",
        type=Path,
        default=None,
        help="a markdown file saying where the fold lists (and the init model) came from, "
        "appended to the report",
    )
    args = ap.parse_args(argv)
    if args.audio is None or not args.audio.is_dir():
        ap.error("CASIA's audio not found: give --audio")
    systems = [s for s in args.systems.split(",") if s]
    if set(systems) - set(SYSTEMS):
        ap.error(f"unknown systems {sorted(set(systems) - set(SYSTEMS))}")
    manifest = emobox_manifest(args.emobox, args.audio, args.runs / CORPUS / "manifest")
    emo = corpora.read_manifest(manifest)
    agree = fold_agreement(emo, args.audio)
    cache = config.load("recommended.yaml", list(args.overrides)).cache_dir
    got = {}
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for system in systems:
        for seed in seeds:
            done = run(system, seed, manifest, args)
            for stats in WAYS:
                got[(system, stats, seed)] = scores(predictions(done, stats, cache))
    init = "none (from scratch)" if args.init == "none" else str(init_model(args))
    if args.init == "without":
        init = f"a general model pretrained without CASIA ({init})"
    first = RunReport.load(args.runs / CORPUS / systems[0] / f"seed{seeds[0]}" / "report.json")
    recipe = {
        "recipe": f"{first.extra.get('features', '')} functionals, "
        f"{first.extra.get('classifier', 'one classifier per set')}"
        if systems[0] == "finetuned"
        else "not run",
        "params": first.n_params or 0,
    }
    note = args.note.read_text(encoding="utf-8").strip() if args.note else ""
    return bl.emit(report(agree, got, init, recipe, note), args.out)


if __name__ == "__main__":
    main()
