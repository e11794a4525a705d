"""Speaker adaptation as a user runs it, on corpora the model never saw: how UA grows with the
number of a speaker's unlabeled clips whose statistics normalise that speaker.

    python -m benchmarks.bench_adapt [--pretrained runs/pretrained] [--draws 3] [--out FILE]

For each corpus of `configs/pretrain.yaml`'s pool, the general model trained without it
(`<pretrained>/without-<corpus>/model.pt`, written by `make pretrained`, i.e. `stlser pretrain
--loco`) predicts every clip of the held-out corpus on the labels both share. Each speaker's
statistics come from n of that speaker's clips drawn at random (`--draws` draws, seeded),
n = 1, 2, 5, 10 and all, and normalise all of that speaker's clips:

* "raw": the statistics of the n clips as they are (`SpeakerStats.from_functionals`);
* "as `adapt`": what `Recognizer.adapt` does: below 5 clips or 10 s of audio, the global
  statistics (`stlser.adapt.MIN_CLIPS`, `MIN_SECONDS`);
* n = 0 is the global statistics (one clip at a time, `stlser predict` without `--adapt`).

UA is the mean over draws (± sd over draws). Labels are never used to choose anything here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import benchlib as bl
from stlser import adapt, config
from stlser.adapt import SpeakerStats
from stlser.kinds import expert, functionals
from stlser.metrics import ua
from stlser.pretrain import pool_manifest

COUNTS = (1, 2, 5, 10, 0)  # 0: all of the speaker's clips


def _ua_with(stats_of: dict[str, SpeakerStats | None], X, spk, model, y, keep) -> float:
    Z = np.empty_like(X)
    for s in np.unique(spk):
        rows = spk == s
        st = stats_of[s]
        mean, std = (model.mean.numpy(), model.std.numpy()) if st is None else (st.mean, st.std)
        Z[rows] = (X[rows] - mean) / std
    with torch.no_grad():
        lp = model.log_probs(torch.as_tensor(Z, dtype=torch.float32))[:, keep]
    return ua(y, lp.argmax(1).numpy())


def corpus_rows(held: str, df: pd.DataFrame, X: np.ndarray, pretrained: Path, draws: int) -> list:
    model, art = expert.from_artefact(pretrained / f"without-{held}" / "model.pt")
    labels = list(art["labels"])
    test = (df["corpus"] == held).to_numpy()
    shared = [lab for lab in labels if lab in set(df["label"][test])]
    rows = test & df["label"].isin(shared).to_numpy()
    y = np.asarray([shared.index(v) for v in df["label"][rows]])
    keep = [labels.index(lab) for lab in shared]
    # a speaker's statistics come from any of its clips in the corpus (labels unused); the
    # clips scored are those with a label the model knows
    Xc = X[test].astype(np.float64)
    spk_all = df["speaker"].astype(str).to_numpy()[test]
    secs = df["duration"].astype(float).to_numpy()[test]
    scored = rows[test]
    sets = functionals.FunctionalsKind.sets(art)
    out = []
    spk = spk_all[scored]
    Xs = Xc[scored]
    glob = _ua_with(dict.fromkeys(np.unique(spk)), Xs, spk, model, y, keep)
    out.append([held, "0 (global)", f"{100 * glob:.1f}", "-", f"{100 * glob:.1f}", "-"])
    for n in COUNTS[:-1] + (0,):
        raw, rule = [], []
        for d in range(draws if n else 1):
            rng = np.random.default_rng(1000 * d + n)
            st_raw: dict[str, SpeakerStats | None] = {}
            st_rule: dict[str, SpeakerStats | None] = {}
            for s in np.unique(spk):
                idx = np.flatnonzero(spk_all == s)
                pick = idx if n == 0 or n >= len(idx) else rng.choice(idx, n, replace=False)
                st = SpeakerStats.from_functionals(Xc[pick], float(secs[pick].sum()), sets, s)
                st_raw[s] = st
                st_rule[s] = st if st.usable else None
            raw.append(_ua_with(st_raw, Xs, spk, model, y, keep))
            rule.append(_ua_with(st_rule, Xs, spk, model, y, keep))
        label = "all" if n == 0 else str(n)
        sd = (lambda v: f"{100 * np.std(v):.1f}") if len(raw) > 1 else (lambda v: "-")
        out.append(
            [
                held,
                label,
                f"{100 * np.mean(raw):.1f}",
                sd(raw),
                f"{100 * np.mean(rule):.1f}",
                sd(rule),
            ]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", default="runs/pretrained")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--config", default="pretrain.yaml")
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    a = ap.parse_args(argv)
    cfg = config.load(a.config)
    pretrained = Path(a.pretrained)
    missing = [c for c in cfg.data.pool if not (pretrained / f"without-{c}" / "model.pt").exists()]
    if missing:
        print(f"no leave-one-corpus-out models for {missing} under {pretrained}: run "
              "`make pretrained` (stlser pretrain --loco) first", file=sys.stderr)  # fmt: skip
        return 2
    df = pool_manifest(cfg.data.root, list(cfg.data.pool))
    X = functionals.load_matrix(df, list(cfg.model.functionals), cfg.cache_dir, progress=True)
    rows = []
    for held in cfg.data.pool:
        rows += corpus_rows(held, df, X, pretrained, a.draws)
        print(f"{held} done", file=sys.stderr)
    table = bl.md_table(
        ["held-out corpus", "clips per speaker (n)", "UA raw", "sd", "UA as `adapt`", "sd"], rows
    )
    text = f"""Speaker adaptation from n unlabeled clips per speaker, general model trained
without the corpus (`{pretrained}/without-<corpus>`); {a.draws} random draws of the n clips
(mean, sd over draws); minimum for `adapt`: {adapt.MIN_CLIPS} clips and {adapt.MIN_SECONDS:g} s.

{table}
"""
    print(text)
    if a.out:
        bl.emit(text, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
