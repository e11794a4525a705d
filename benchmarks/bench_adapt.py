"""Speaker adaptation as a user runs it, on corpora the model never saw: how UA grows with the
number of a speaker's unlabeled clips whose statistics normalise that speaker.

    python -m benchmarks.bench_adapt [--pretrained runs/pretrained] [--draws 3] [--select] [--out FILE]

For each corpus of `configs/pretrain.yaml`'s pool, the general model trained without it
(`<pretrained>/without-<corpus>/model.pt`, written by `make pretrained`, i.e. `stlser pretrain
--loco`) predicts every clip of the held-out corpus on the labels both share. Each speaker's
statistics come from n of that speaker's clips drawn at random (`--draws` draws, seeded),
n = 1, 2, 3, 5, 10 and all, and normalise all of that speaker's clips:

* "raw": the statistics of the n clips as they are (`SpeakerStats.from_functionals`);
* "shrunk": shrunk toward the model's global statistics (`stlser.adapt.shrunk`);
* "as `adapt`": what `Recognizer.adapt` does: shrunk, and below the minimum
  (`stlser.adapt.MIN_CLIPS`, `MIN_SECONDS`) the global statistics;
* n = 0 is the global statistics (one clip at a time, `stlser predict` without `--adapt`).

`--per-column` also compares a per-column shrinkage of the mean (empirical Bayes: column j counts
as k_j = W_j / B_j clips, W the mean within-speaker variance and B the between-speaker variance
of the speaker means, both on the training corpora's speakers) with the shipped constant.

`--select` also runs the choice of the two shrinkage counts (`PRIOR_CLIPS_MEAN`,
`PRIOR_CLIPS_VAR`) as it was made: on a grid, for each held-out corpus, the pair with the best
mean UA over n = 1, 2, 3, 5, 10 on the *other* held-out corpora; and the shipped pair, best on
all three. UA is the mean over draws (± sd over draws). Labels never choose anything else.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import benchlib as bl
from stlser import adapt, config, featuresets
from stlser.adapt import SpeakerStats
from stlser.kinds import expert, functionals
from stlser.metrics import ua
from stlser.pretrain import pool_manifest

COUNTS = (1, 2, 3, 5, 10, 0)  # 0: all of the speaker's clips
GRID_MEAN = (0.0, 1.0, 2.0, 4.0)
GRID_VAR = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


class Held:
    """One held-out corpus: its clips' functionals, speakers, the model without it, and the
    seeded draws of n clips per speaker."""

    def __init__(self, held: str, df: pd.DataFrame, X: np.ndarray, pretrained: Path, draws: int):
        self.model, art = expert.from_artefact(pretrained / f"without-{held}" / "model.pt")
        labels = list(art["labels"])
        test = (df["corpus"] == held).to_numpy()
        shared = [lab for lab in labels if lab in set(df["label"][test])]
        self.keep = [labels.index(lab) for lab in shared]
        # a speaker's statistics come from any of its clips in the corpus (labels unused); the
        # clips scored are those with a label the model knows
        self.X = X[test].astype(np.float64)
        self.spk = df["speaker"].astype(str).to_numpy()[test]
        self.secs = df["duration"].astype(float).to_numpy()[test]
        lab = df["label"].to_numpy()[test]
        self.scored = np.isin(lab, shared)
        self.y = np.asarray([shared.index(v) for v in lab[self.scored]])
        self.sets = functionals.FunctionalsKind.sets(art)
        self.prior = (self.model.mean.numpy(), self.model.std.numpy())
        self.speakers = np.unique(self.spk)
        self.picks: dict[tuple[int, int], dict[str, SpeakerStats]] = {}
        for n in COUNTS:
            for d in range(draws if n else 1):
                rng = np.random.default_rng(1000 * d + n)
                stats = {}
                for s in self.speakers:
                    idx = np.flatnonzero(self.spk == s)
                    pick = idx if n == 0 or n >= len(idx) else rng.choice(idx, n, replace=False)
                    stats[s] = SpeakerStats.from_functionals(
                        self.X[pick], float(self.secs[pick].sum()), self.sets, s
                    )
                self.picks[(n, d)] = stats

    def ua_with(self, stats_of: dict[str, SpeakerStats | None]) -> float:
        Z = np.empty_like(self.X)
        for s in self.speakers:
            rows = self.spk == s
            st = stats_of[s]
            mean, std = self.prior if st is None else (st.mean, st.std)
            Z[rows] = (self.X[rows] - mean) / std
        with torch.no_grad():
            z = torch.as_tensor(Z[self.scored], dtype=torch.float32)
            lp = self.model.log_probs(z)[:, self.keep]
        return 100 * ua(self.y, lp.argmax(1).numpy())

    def curve(
        self, how: str, a: float | np.ndarray = 0.0, b: float = 0.0
    ) -> dict[int, list[float]]:
        """UA per n (a list over draws): `how` = raw | shrunk (with counts a, b) | adapt."""

        def use(st: SpeakerStats) -> SpeakerStats | None:
            if how == "raw":
                return st
            if how == "adapt" and not st.usable:
                return None
            return adapt.shrunk(st, self.prior, a, b)

        out: dict[int, list[float]] = {}
        for (n, _), stats in self.picks.items():
            out.setdefault(n, []).append(self.ua_with({s: use(st) for s, st in stats.items()}))
        return out

    def global_ua(self) -> float:
        return self.ua_with(dict.fromkeys(self.speakers))


def per_column_counts(X: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Empirical-Bayes pseudo-clips of each column's speaker mean: W / B, W the mean
    within-speaker variance, B the between-speaker variance of the true means (that of the
    speaker means less their sampling variance W / n), floored at 1e-3 W."""
    us = np.unique(speakers)
    rows = [speakers == s for s in us]
    m = np.stack([X[r].mean(0) for r in rows])
    v = np.stack([X[r].var(0) for r in rows])
    n = np.asarray([r.sum() for r in rows], np.float64)[:, None]
    w = v.mean(0)
    b = m.var(0) - (v / n).mean(0)
    return w / np.maximum(b, 1e-3 * w + 1e-30)


def per_column(helds: dict[str, Held], df: pd.DataFrame, X: np.ndarray) -> str:
    """Five clips' share of the all-clips gain: shipped counts against per-column counts (from
    the rows of `df` / `X` outside each held-out corpus)."""
    a, b = adapt.PRIOR_CLIPS_MEAN, adapt.PRIOR_CLIPS_VAR
    speakers = df["speaker"].astype(str).to_numpy()
    rows = []
    for held, h in helds.items():
        glob = h.global_ua()
        train = (df["corpus"] != held).to_numpy()
        k = per_column_counts(X[train], speakers[train])
        for name, c in (
            ("shipped", h.curve("shrunk", a, b)),
            ("per-column", h.curve("shrunk", k, b)),
        ):
            ms = {n: float(np.mean(v)) for n, v in c.items()}
            share = 100 * (ms[5] - glob) / (ms[0] - glob) if ms[0] > glob else float("nan")
            rows.append(
                [held, name, f"{glob:.1f}", *(f"{ms[n]:.1f}" for n in COUNTS), f"{share:.0f} %"]
            )
    head = [
        "held-out corpus",
        "mean shrinkage",
        "UA global",
        *(f"n={n or 'all'}" for n in COUNTS),
        "5-clip share",
    ]
    return f"""Shrinkage of a speaker's mean: {a:g} pseudo-clips for every column (shipped) or W/B per column
(empirical Bayes, counts from the training corpora; quartiles differ by corpus); variance {b:g}:

{bl.md_table(head, rows)}
"""


def _few(curve: dict[int, list[float]]) -> float:
    return float(np.mean([np.mean(curve[n]) for n in COUNTS if n]))


def selection(helds: dict[str, Held]) -> str:
    """The nested choice of the shrinkage counts (module docstring)."""
    grid = [(a, b) for a, b in itertools.product(GRID_MEAN, GRID_VAR)]
    few = {(c, a, b): _few(h.curve("shrunk", a, b)) for c, h in helds.items() for a, b in grid}
    rows = []
    for held in helds:
        others = [c for c in helds if c != held]
        a, b = max(grid, key=lambda ab: np.mean([few[(c, *ab)] for c in others]))
        rows.append([held, ", ".join(others), f"{a:g}", f"{b:g}", f"{few[(held, a, b)]:.1f}"])
    a, b = max(grid, key=lambda ab: np.mean([few[(c, *ab)] for c in helds]))
    rows.append(["(shipped)", ", ".join(helds), f"{a:g}", f"{b:g}", "-"])
    table = bl.md_table(
        ["held-out corpus", "chosen on", "mean clips", "variance clips", "UA held-out, n=1-10"],
        rows,
    )
    return f"""Choice of the shrinkage counts (grid: mean {GRID_MEAN}, variance {GRID_VAR}; best mean
UA over n = 1, 2, 3, 5, 10 on the other held-out corpora; the shipped pair on all three;
`stlser.adapt` holds {adapt.PRIOR_CLIPS_MEAN:g} and {adapt.PRIOR_CLIPS_VAR:g}):

{table}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", default="runs/pretrained")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--config", default="pretrain.yaml")
    ap.add_argument("--select", action="store_true", help="also run the shrinkage choice")
    ap.add_argument("--per-column", action="store_true", help="also try per-column counts")
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
    rel = featuresets.relative_level(cfg.model)  # the functionals the models read
    X = functionals.load_matrix(df, list(cfg.model.functionals), cfg.cache_dir, True, relative=rel)
    helds = {c: Held(c, df, X, pretrained, a.draws) for c in cfg.data.pool}
    rows, shares = [], []
    ab = (adapt.PRIOR_CLIPS_MEAN, adapt.PRIOR_CLIPS_VAR)
    for held, h in helds.items():
        glob = h.global_ua()
        rows.append([held, "0 (global)"] + [f"{glob:.1f}", "-"] * 3)
        curves = [h.curve("raw"), h.curve("shrunk", *ab), h.curve("adapt", *ab)]
        for n in COUNTS:
            cells = []
            for c in curves:
                v = c[n]
                cells += [f"{np.mean(v):.1f}", f"{np.std(v):.1f}" if len(v) > 1 else "-"]
            rows.append([held, "all" if n == 0 else str(n), *cells])
        share = []
        for c in curves:  # how much of the all-clips gain 5 clips give
            full = np.mean(c[0]) - glob
            share.append(f"{100 * (np.mean(c[5]) - glob) / full:.0f} %" if full > 0 else "-")
        shares.append([held, f"{glob:.1f}", *share])
        print(f"{held} done", file=sys.stderr)
    table = bl.md_table(
        ["held-out corpus", "clips per speaker (n)", "UA raw", "sd", "UA shrunk", "sd",
         "UA as `adapt`", "sd"],
        rows,
    )  # fmt: skip
    text = f"""Speaker adaptation from n unlabeled clips per speaker, general model trained
without the corpus (`{pretrained}/without-<corpus>`); {a.draws} random draws of the n clips
(mean, sd over draws); shrinkage toward the global statistics with {ab[0]:g} and {ab[1]:g}
pseudo-clips (mean, variance); minimum for `adapt`: {adapt.MIN_CLIPS} clips and
{adapt.MIN_SECONDS:g} s.

{table}

Five clips' share of the all-clips gain over the global statistics:

{bl.md_table(["held-out corpus", "UA global", "raw", "shrunk", "as `adapt`"], shares)}
"""
    if a.select:
        text += "\n" + selection(helds)
    if a.per_column:
        text += "\n" + per_column(helds, df, X)
    bl.emit(text, Path(a.out) if a.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
