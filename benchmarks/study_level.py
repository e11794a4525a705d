"""Accuracy study: does removing the recording level from the functionals stop one-clip answers
from piling up on a corpus the general model never saw?

    python -m benchmarks.study_level [--config configs/pretrain.yaml] [--out FILE]

A clip's recording gain is arbitrary across corpora, and one clip at a time the model can only
normalise it with the training pool's global statistics. A gain ``a`` adds ``2 ln a`` to every
natural-log power descriptor (log energy, the log-mel bands) and multiplies RMS and loudness;
deltas of the log descriptors, the MFCCs (1-14: the DCT rows past 0 sum to zero) and every
spectral-shape, voice and timing descriptor do not move. Variants of the general model's recipe (`configs/pretrain.yaml`):

* **level kept** (``model.level: keep``);
* **relative level**: the location functionals (mean, percentiles, min, max, regression
  offsets) of the log-power descriptors taken relative to the clip's mean log energy; RMS and
  loudness (and their deltas) keep only their scale-free functionals
  (`stlser.featuresets.level_columns`);
* **level dropped, fixed floors**: the heads ignore every value the gain moves (those columns
  are constant when the heads are fitted, so their weights stay 0), over the functionals of the
  clip as given;
* **level dropped** (``model.level: drop``, what the shipped general model uses): the same over
  the functionals computed relative to each clip's level (``compact+large/relative``:
  `stlser.features.descriptors`, ``relative_level``), so the front end's fixed floors in
  near-silent frames no longer carry the level either;
* **level dropped, one clip only**: the level-kept heads, with the level columns' z-scores set
  to 0 when a clip is normalised with the global statistics (speaker-normalised answers
  unchanged).

Each corpus of the pool is predicted by a model fitted on the other corpora
(`stlser.pretrain.fit_pool`, leave-one-corpus-out) one clip at a time over the model's default
labels: the share of the most frequent answer and UA over every true class; and with each
test speaker's statistics (UA over the shared labels). A variant is **chosen for a corpus on the
other held-out corpora only** (best mean one-clip UA there): the corpus itself never chooses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import benchlib as bl
from stlser import config, featuresets, pretrain
from stlser.features import functionals as F
from stlser.kinds import functionals as fk
from stlser.metrics import ua

REFERENCE = "large:log_energy_mean"


def relative_level(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The *relative level* variant of functionals X[n, D] (module docstring): dropped columns
    are 0 (constant, so unused by the heads)."""
    shift, drop = featuresets.level_columns(names)
    ref = X[:, list(names).index(REFERENCE)].astype(np.float64)
    out = X.astype(np.float64, copy=True)
    out[:, shift] -= ref[:, None]
    out[:, drop] = 0.0
    out[:, list(names).index(REFERENCE)] = 0.0
    return out


KEPT, RELATIVE, FIXED, DROPPED, ONE_CLIP = (
    "level kept",
    "relative level",
    "level dropped, fixed floors",
    "level dropped (model.level: drop)",
    "level dropped, one clip only",
)
#: variant → (transform of the functionals, model.level, functionals relative to the clip's level)
VARIANTS: dict[str, tuple[Callable[[np.ndarray, Sequence[str]], np.ndarray] | None, str, bool]] = {
    KEPT: (None, "keep", False),
    RELATIVE: (relative_level, "keep", False),
    FIXED: (None, "drop", False),
    DROPPED: (None, "drop", True),
    # the level-kept heads, level columns zeroed one clip at a time
    ONE_CLIP: (None, "keep", False),
}
#: the variants whose answers the gain check compares
GAIN_VARIANTS = (KEPT, FIXED, DROPPED)


def nested_choice(score: dict[tuple[str, str], float], corpora: Sequence[str]) -> dict[str, str]:
    """For each corpus, the variant with the best mean `score[(variant, corpus)]` over the
    *other* corpora."""
    variants = sorted({v for v, _ in score}, key=list(VARIANTS).index)
    return {
        c: max(variants, key=lambda v: np.mean([score[(v, o)] for o in corpora if o != c]))
        for c in corpora
    }


def evaluate(
    X: dict[bool, np.ndarray], df: pd.DataFrame, cfg: config.ExperimentConfig, names: Sequence[str]
) -> dict[tuple[str, str], dict[str, float | str]]:
    """Every variant × held-out corpus → share and label of the most frequent one-clip answer,
    one-clip UA, speaker-statistics UA. `X[relative]`: the functionals of every row of `df`,
    of the clip as given (False) and relative to its level (True)."""
    corpora = list(cfg.data.pool)
    shift, drop = featuresets.level_columns(names)
    out: dict[tuple[str, str], dict[str, float]] = {}
    fits: dict[tuple[str, str], tuple] = {}  # reused one clip at a time and by the gain check
    for variant, (fn, level, rel) in VARIANTS.items():
        Xv = X[rel] if fn is None else fn(X[rel], names)
        cfg_v = config.with_value(cfg, "model.level", level)
        for held in corpora:
            if variant == ONE_CLIP:
                model, labels, info = fits[(KEPT, held)]
            else:
                tr = (df["corpus"] != held).to_numpy()
                model, labels, info = pretrain.fit_pool(
                    Xv[tr], df[tr].reset_index(drop=True), cfg_v
                )
                if variant in GAIN_VARIANTS:
                    fits[(variant, held)] = (model, labels, info)
            te = (df["corpus"] == held).to_numpy()
            dte = df[te].reset_index(drop=True)
            zs = pretrain._normalise(Xv[te], dte, cfg)
            xg = Xv[te]
            if variant == ONE_CLIP:  # the level columns at the global mean: z-score 0
                xg = xg.copy()
                level = shift | drop
                xg[:, level] = model.mean.numpy()[level]
            # one clip as `stlser pretrain --loco` scores it: the default labels, every clip
            g = pretrain._answers(model, labels, info, zs, xg, dte)["scores"]["every_label_global"]
            top = max(g["answered"], key=g["answered"].get)
            y = dte["label"].astype(str).to_numpy()
            shared = [v for v in labels if v in set(y)]
            rows = np.isin(y, shared)
            with torch.no_grad():
                lp_s = model.log_probs(torch.as_tensor(zs[rows], dtype=torch.float32)).numpy()
            pred_s = np.asarray(shared)[lp_s[:, [labels.index(v) for v in shared]].argmax(1)]
            out[(variant, held)] = {
                "share": 100 * g["answered"][top],
                "top": top,
                "ua_one": 100 * g["ua"],
                "ua_speaker": 100 * ua(y[rows], pred_s),
            }
            print(f"{variant} / {held}: {out[(variant, held)]}", file=sys.stderr, flush=True)
    out.update(gain_check(df, cfg, fits))
    return out


GAINS = (0.5, 0.1)
GAIN_CLIPS = 30


def gain_check(df: pd.DataFrame, cfg: config.ExperimentConfig, fits: dict) -> dict:
    """One clip at a time, the held-out corpus's clips (every k-th, :data:`GAIN_CLIPS`) and their
    copies played at each of :data:`GAINS`: share of changed answers (default labels) and median
    largest probability change, for the models of :data:`GAIN_VARIANTS`."""
    from stlser.audio import load

    out = {}
    for held in cfg.data.pool:
        rows = df.index[df["corpus"] == held]
        rows = rows[:: max(1, len(rows) // GAIN_CLIPS)][:GAIN_CLIPS]
        waves = [load(str(df.at[r, "path"])) for r in rows]
        feats = {
            rel: {
                g: F.clips_functionals(
                    [g * w for w in waves], featuresets.pass_name(cfg.model.functionals, rel)
                )
                for g in (1.0, *GAINS)
            }
            for rel in (False, True)
        }
        for variant in GAIN_VARIANTS:
            model, labels, info = fits[(variant, held)]
            keep = [labels.index(v) for v in info["default_labels"]]
            with torch.no_grad():
                p = {
                    g: model(torch.as_tensor(np.stack(x)))[:, keep].numpy()
                    for g, x in feats[VARIANTS[variant][2]].items()
                }
            for g in GAINS:
                out[(f"gain {g:g}: {variant}", held)] = {
                    "changed": 100 * float((p[g].argmax(1) != p[1.0].argmax(1)).mean()),
                    "moved": float(np.median(np.abs(p[g] - p[1.0]).max(1))),
                }
    return out


def render(res: dict, corpora: Sequence[str]) -> str:
    rows = []
    for v in VARIANTS:
        cells = [res[(v, c)] for c in corpora]
        rows.append([v, *(f"{r['share']:.1f} % {r['top']} · {r['ua_one']:.1f} · {r['ua_speaker']:.1f}" for r in cells)])  # fmt: skip
    chosen = nested_choice({k: r["ua_one"] for k, r in res.items() if k[0] in VARIANTS}, corpora)
    picked = [res[(chosen[c], c)] for c in corpora]
    rows.append(["chosen on the other corpora", *(f"{chosen[c]}: {r['share']:.1f} % · {r['ua_one']:.1f}" for c, r in zip(corpora, picked, strict=True))])  # fmt: skip
    head = [
        "variant",
        *(f"{c}: top answer share · UA one clip · UA speaker stats" for c in corpora),
    ]
    gains = []
    for g in GAINS:
        for v in GAIN_VARIANTS:
            cells = [res[(f"gain {g:g}: {v}", c)] for c in corpora]
            gains.append([f"{20 * np.log10(g):.0f} dB", v, *(f"{x['changed']:.0f} % · {x['moved']:.3f}" for x in cells)])  # fmt: skip
    gain_head = [
        "played",
        "variant",
        *(f"{c}: answers changed · median prob. change" for c in corpora),
    ]
    return f"""Leave-one-corpus-out, the general model's recipe; one clip = global statistics,
default labels (share of the most frequent answer, UA over every true class); speaker stats = each
test speaker's own statistics, shared labels.

{bl.md_table(head, rows)}

The same held-out clips ({GAIN_CLIPS} per corpus) played quieter, one clip at a time: share of
answers that change, median of each clip's largest probability change.

{bl.md_table(gain_head, gains)}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pretrain.yaml")
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    a = ap.parse_args(argv)
    cfg = config.load(a.config)
    df = pretrain.pool_manifest(cfg.data.root, list(cfg.data.pool))
    sets = list(cfg.model.functionals)
    X = {
        rel: fk.load_matrix(df, sets, cfg.cache_dir, True, relative=rel).astype(np.float64)
        for rel in (False, True)
    }
    names = F.FunctionalFrontEnd("+".join(sets)).names
    res = evaluate(X, df, cfg, names)
    bl.emit(render(res, list(cfg.data.pool)), Path(a.out) if a.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
