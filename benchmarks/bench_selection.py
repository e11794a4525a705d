"""Recipe candidates for the default recognizer, scored on validation speakers only.

    python -m benchmarks.bench_selection --corpora emodb,casia --seeds 0,1,2
    python -m benchmarks.bench_selection --corpora casia --candidates base,loso

For every fold of `configs/<corpus>_loso.yaml` (and each seed, which draws the validation
speakers), a candidate recipe is given the fold's *training* speakers only, does whatever inner
selection it needs on them, and is scored on the fold's validation speakers. The test speaker is
never passed in, so these numbers can choose a recipe (docs/decisions.md). Printed: UA pooled
over the validation utterances of all folds, mean ± sd over seeds, and the mean over seeds of
the paired difference to the reference (``base``, or ``--ref``), same folds.

Candidates (each an expert recipe on speaker-normalised eGeMAPS ‖ ComParE functionals):

* ``base``    one held-out inner speaker picks each head's L2, refit, heads averaged (the
  recipe of `stlser.heads.fit_heads` when it has only these speakers)
* ``avg``     no inner choice: each head the mean of its fits at every L2 of the grid, on all
  the training speakers (``model.l2_mode: average``)
* ``avg-ft``  ``avg`` with the fits pulled toward each head of a pretrained model (``--init``,
  made without this corpus: `python -m benchmarks.bench_accuracy` keeps one in
  ``<runs>/<corpus>/pretrained-without/``) averaged in as well (``model.init``)
* ``avg-ft-aug`` ``avg-ft`` with the speed-perturbed copies of ``aug`` (below) as extra rows
* ``avg-ft2`` ``avg-ft`` with the fits toward the pretrained heads counted twice (2/3 of the mean)
* ``avg-ft2-aug`` both of the above
* ``avg-ft10`` ``avg-ft`` with one more fit toward the pretrained heads, at L2 10 (closer to them)
* ``avg-aug`` ``avg`` with the speed copies (the corpus configs' recipe: from scratch)
* ``avg-aug-pool``, ``avg-ft-aug-pool`` ``avg-aug`` and ``avg-ft-aug`` with the other shared
  corpora's rows in every fit (weight ``--pool-weight``): how much the general model's
  training data would give beyond its heads as a prior
* ``loso``    each head's L2 by pooled UA over inner leave-one-speaker-out, refit on all
* ``bag``     ``loso``, then the inner models and the refit averaged (a speaker bagging)
* ``pool``    ``loso`` with the other shared corpora added to the training rows (weight
  ``--pool-weight``, the softmax of each row limited to its corpus's labels)
* ``self``    ``loso``, then transductive self-training on the (unlabelled) scored speaker:
  its confident predictions join the training rows as pseudo-labels for two rounds
* ``aug``     ``loso`` with speed-perturbed copies (``--speeds``, Kaldi-style: tempo, pitch and
  formants scale together) of the training rows added, each (speaker, factor) normalised as a
  speaker of its own: more "speakers" for corpora that have few
* ``base-aug`` ``base`` with the same copies
* ``bal``     ``base``, then each scored speaker's posteriors balanced (Sinkhorn) so the
  classes it is given match the training speakers' class frequencies (label-free, transductive
  like the per-speaker normalisation; acted corpora give each speaker every class)
* ``bal-u``   the same, balanced to equal class counts
* ``boaw``    ``base`` with a bag-of-audio-words head beside the functional heads: eGeMAPS
  low-level descriptor frames (25 per 10 ms), z-scored per speaker; a codebook of
  ``--boaw-words`` frames drawn from the training speakers' frames; each frame counts for its
  ``--boaw-assign`` nearest words; log(1 + 100 · share) histogram → one more logistic head
  (openXBOW's recipe: the distribution of frames, which functionals summarise by moments)

``--sets`` (repeatable) runs every candidate with other functional sets, one head per set, e.g.
``--sets egemaps,compare --sets egemaps,compare,is10``; the first combination's ``base`` is the
reference of the "− base" column.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import benchlib as bl
from stlser import config, corpora, degenerate, heads, metrics, splits
from stlser.features import normalize_functionals
from stlser.kinds import expert, functionals

GRID = [0.001, 0.01, 0.1, 1.0]
SETS = ["egemaps", "compare"]
DIMS = functionals.set_dims(SETS)
BOUNDS = np.cumsum([0, *DIMS])
POOL = ("emodb", "casia", "nemo")


def use_sets(sets: list[str]) -> None:
    """The functional sets the candidates use, one head each."""
    global SETS, DIMS, BOUNDS
    SETS = list(sets)
    DIMS = functionals.set_dims(SETS)
    BOUNDS = np.cumsum([0, *DIMS])


@dataclass
class Data:
    """One corpus's normalised functionals and labels (rows of the manifest)."""

    Z: np.ndarray
    y: np.ndarray
    spk: np.ndarray
    labels: list[str]
    mask: np.ndarray  # [N, C] labels each row's corpus has (all True for the corpus itself)
    extra: Data | None = None  # other corpora, mapped to this corpus's labels
    # [N, F, D] speed-perturbed copies, each (speaker, factor) normalised
    aug: np.ndarray | None = None
    # [sum of frames, 25] eGeMAPS LLD frames z-scored per speaker, and the row of each frame
    frames: np.ndarray | None = None
    owner: np.ndarray | None = None
    priors: list[heads.Prior] | None = None  # pretrained heads (``--init``), one per set


def load(corpus: str, root: Path, overrides: list[str]) -> tuple[Data, object]:
    cfg = config.load(
        f"{corpus}_loso.yaml", [f"data.root={root}", "train.progress=false", *overrides]
    )
    df, _ = corpora.build_manifest(cfg.data.corpus, cfg.data.root, labels=cfg.data.labels)
    X = functionals.load_matrix(df, SETS, cfg.cache_dir, False).astype(np.float64)
    spk = df["speaker"].astype(str).to_numpy()
    glob = sorted(degenerate.global_speakers(df, cfg.features))
    Z, _ = normalize_functionals(X, spk, "speaker", None, glob)
    labels = sorted(df["label"].unique().tolist())
    y = np.asarray([labels.index(v) for v in df["label"].astype(str)])
    data = Data(Z, y, spk, labels, np.ones((len(y), len(labels)), bool))
    return data, (cfg, df)


def add_pool(data: Data, corpus: str, root: Path, cache_dir: str | None) -> None:
    """The other shared corpora, labels mapped by name to `data.labels` (unshared labels dropped)."""
    from stlser import pretrain

    others = [c for c in POOL if c != corpus and (root / c).is_dir()]
    df = pretrain.pool_manifest(root, others)
    df = df[df["label"].isin(data.labels)].reset_index(drop=True)
    X = functionals.load_matrix(df, SETS, cache_dir, False).astype(np.float64)
    spk = df["speaker"].astype(str).to_numpy()
    Z, _ = normalize_functionals(X, spk, "speaker", None, ())
    y = np.asarray([data.labels.index(v) for v in df["label"]])
    data.extra = Data(Z, y, spk, data.labels, pretrain.label_mask(df, data.labels))


# ------------------------------------------------------------------------------ recipe parts
def ua(y: np.ndarray, pred: np.ndarray) -> float:
    return metrics.ua(y, pred)


def cols(head: int | None) -> slice:
    """The columns of `Data.Z` one head reads (None: all of them)."""
    return slice(None) if head is None else slice(BOUNDS[head], BOUNDS[head + 1])


def fit(
    d: Data,
    rows: np.ndarray,
    head: int | None,
    l2: float,
    extra_w: float = 0.0,
    pseudo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    aug: bool = False,
    prior: heads.Prior | None = None,
) -> heads.Head:
    """One head fitted on `rows` (+ the pool, + pseudo-labelled rows (Z, y, weight)), pulled
    toward zero or toward a pretrained head (`prior`)."""
    sl = cols(head)
    X, y, m = d.Z[rows, sl], d.y[rows], d.mask[rows]
    w = np.ones(len(rows))
    if extra_w and d.extra is not None:
        e = d.extra
        X = np.concatenate([X, e.Z[:, sl]])
        y = np.concatenate([y, e.y])
        m = np.concatenate([m, e.mask])
        w = np.concatenate([w, np.full(len(e.y), extra_w)])
    if aug and d.aug is not None:
        for k in range(d.aug.shape[1]):
            X = np.concatenate([X, d.aug[rows, k, sl]])
            y = np.concatenate([y, d.y[rows]])
            m = np.concatenate([m, d.mask[rows]])
            w = np.concatenate([w, np.ones(len(rows))])
    if pseudo is not None:
        X = np.concatenate([X, pseudo[0][:, sl]])
        y = np.concatenate([y, pseudo[1]])
        m = np.concatenate([m, np.ones((len(pseudo[1]), m.shape[1]), bool)])
        w = np.concatenate([w, pseudo[2]])
    h = heads.Head(X.shape[1], len(d.labels))
    return heads.fit_head(h, X, y, l2, mask=m, weight=w, prior=prior)


def lp(h: heads.Head, d: Data, rows: np.ndarray, head: int | None) -> torch.Tensor:
    with torch.no_grad():
        return h(torch.as_tensor(d.Z[rows, cols(head)], dtype=torch.float32))


def pick_l2(
    d: Data, rows: np.ndarray, head: int | None, inner: list[np.ndarray], extra_w: float, aug=False
):
    """L2 with the best pooled UA over the inner held-out speaker groups; and their models."""
    best = (-1.0, GRID[0], [])
    for l2 in GRID:
        preds, ys, models = [], [], []
        for held in inner:
            keep = np.setdiff1d(rows, held)
            h = fit(d, keep, head, l2, extra_w, aug=aug)
            preds.append(lp(h, d, held, head).argmax(1).numpy())
            ys.append(d.y[held])
            models.append(h)
        score = ua(np.concatenate(ys), np.concatenate(preds))
        if score > best[0]:
            best = (score, l2, models)
    return best[1], best[2]


def groups(d: Data, rows: np.ndarray) -> list[np.ndarray]:
    """Row groups of each speaker among `rows`."""
    s = d.spk[rows]
    return [rows[s == v] for v in sorted(set(s))]


# ------------------------------------------------------------------------------- candidates
Recipe = Callable[[Data, np.ndarray, np.ndarray, np.random.Generator], torch.Tensor]


def make_holdout(aug: bool = False, boaw: tuple[int, int] | None = None) -> Recipe:
    """One held-out inner speaker (drawn by the seed) picks each head's L2; refit on all.
    With `boaw` (words, assignments) a bag-of-audio-words head joins the average."""

    def recipe(d: Data, rows: np.ndarray, target: np.ndarray, rng) -> torch.Tensor:
        g = groups(d, rows)
        held = g[int(rng.integers(len(g)))]
        heads: list[tuple[Data, int | None]] = [(d, i) for i in range(len(DIMS))]
        if boaw is not None:
            book = np.random.default_rng(int(rows.sum()))  # leaves `rng`'s draws to `base`'s
            H = histograms(d, rows, *boaw, book)
            heads.append((Data(H, d.y, d.spk, d.labels, d.mask), None))
        out = 0
        for dd, i in heads:
            l2, _ = pick_l2(dd, rows, i, [held], 0.0, aug)
            out = out + lp(fit(dd, rows, i, l2, aug=aug), dd, target, i) / len(heads)
        return out

    return recipe


def histograms(
    d: Data, rows: np.ndarray, words: int, assign: int, rng: np.random.Generator
) -> np.ndarray:
    """Bag-of-audio-words of every row: a codebook drawn from the frames of `rows` (the
    training speakers), each frame counted for its `assign` nearest words → log(1 + 100·share)."""
    pool = np.flatnonzero(np.isin(d.owner, rows))
    book = d.frames[rng.choice(pool, words, replace=False)]
    H = np.zeros((len(d.y), words))
    sq = (book**2).sum(1)
    for s in range(0, len(d.frames), 50_000):
        dist = sq[None] - 2 * d.frames[s : s + 50_000] @ book.T
        near = np.argpartition(dist, assign, axis=1)[:, :assign]
        np.add.at(H, (np.repeat(d.owner[s : s + 50_000], assign), near.ravel()), 1.0)
    H /= np.maximum(np.bincount(d.owner, minlength=len(d.y)), 1)[:, None]
    return np.log1p(100 * H)


def _lld_frames(path: str) -> np.ndarray:
    from stlser import audio, smile

    ex = smile.smile("LowLevelDescriptors", "eGeMAPSv02")
    return np.nan_to_num(ex.process_signal(smile.as_wave(audio.load(path)), 16_000).to_numpy())


def add_frames(d: Data, df, out: Path) -> None:
    """eGeMAPS LLD frames of every row (computed once, kept in `out`), z-scored per speaker."""
    import hashlib
    from concurrent.futures import ProcessPoolExecutor

    from stlser.utils import save_npy, usable_cores

    key = hashlib.sha1("\n".join(df["path"].astype(str)).encode()).hexdigest()[:16]
    path = out / f"lld-{key}.npy"
    if path.exists():
        packed = np.load(path)
    else:
        with ProcessPoolExecutor(usable_cores()) as ex:
            got = list(ex.map(_lld_frames, [str(p) for p in df["path"]], chunksize=8))
        owner = np.repeat(np.arange(len(got)), [len(f) for f in got])
        packed = np.concatenate([owner[:, None], np.concatenate(got)], axis=1)
        out.mkdir(parents=True, exist_ok=True)
        save_npy(path, packed.astype(np.float32))
    d.owner = packed[:, 0].astype(int)
    F = packed[:, 1:].astype(np.float64)
    frame_spk = d.spk[d.owner]
    for v in sorted(set(d.spk)):
        at = frame_spk == v
        F[at] = (F[at] - F[at].mean(0)) / (F[at].std(0) + 1e-8)
    d.frames = F.astype(np.float32)


def make_average(
    init: bool = False,
    aug: bool = False,
    prior_weight: int = 1,
    prior_grid: tuple = (),
    extra_w: float = 0.0,
) -> Recipe:
    """No inner choice: each head the average of its fits at every L2 of the grid on all the
    training speakers (`stlser.heads.fit_heads(mode="average")`, `model.l2_mode: average`).
    With `init`, also the fits pulled toward the pretrained heads of `Data.priors` (fine-tuning
    from a model that never saw this corpus), counted `prior_weight` times, at the L2s of the
    grid and of `prior_grid`. With `aug`, the speed-perturbed copies join the rows; with
    `extra_w`, the other corpora's rows (`add_pool`) at that weight."""

    def recipe(d: Data, rows: np.ndarray, target: np.ndarray, rng) -> torch.Tensor:
        out = 0
        for i in range(len(DIMS)):
            fits = [fit(d, rows, i, l2, extra_w, aug=aug) for l2 in GRID]
            if init:
                pulled = [
                    fit(d, rows, i, l2, extra_w, aug=aug, prior=d.priors[i])
                    for l2 in (*GRID, *prior_grid)
                ]
                fits += pulled * prior_weight
            h = heads.average_heads(fits)
            out = out + lp(h, d, target, i) / len(DIMS)
        return out

    return recipe


def make_loso(
    bag: bool = False, extra_w: float = 0.0, self_train: bool = False, aug: bool = False
) -> Recipe:
    def recipe(d: Data, rows: np.ndarray, target: np.ndarray, rng) -> torch.Tensor:
        out = 0
        chosen = []
        for i in range(len(DIMS)):
            l2, inner = pick_l2(d, rows, i, groups(d, rows), extra_w, aug)
            chosen.append(l2)
            full = fit(d, rows, i, l2, extra_w, aug=aug)
            parts = [lp(full, d, target, i)]
            if bag:
                parts += [lp(h, d, target, i) for h in inner]
            out = out + torch.stack(parts).mean(0) / len(DIMS)
        if self_train:
            for _ in range(2):
                p = out.exp()
                conf, lab = p.max(1)
                pseudo = (d.Z[target], lab.numpy(), conf.numpy())
                out = 0
                for i in range(len(DIMS)):
                    h = fit(d, rows, i, chosen[i], extra_w, pseudo, aug)
                    out = out + lp(h, d, target, i) / len(DIMS)
        return out

    return recipe


def make_balanced(uniform: bool = False) -> Recipe:
    """`base`, then each scored speaker's posteriors balanced to the training class shares."""
    inner = make_holdout()

    def recipe(d: Data, rows: np.ndarray, target: np.ndarray, rng) -> torch.Tensor:
        out = inner(d, rows, target, rng)
        C = len(d.labels)
        share = np.ones(C) / C if uniform else np.bincount(d.y[rows], minlength=C) / len(rows)
        res = out.clone()
        s = d.spk[target]
        for v in sorted(set(s)):
            at = np.flatnonzero(s == v)
            res[at] = heads.balance(out[at], torch.as_tensor(share, dtype=torch.float32))
        return res

    return recipe


def candidates(args: argparse.Namespace) -> dict[str, Recipe]:
    return {
        "base": make_holdout(),
        "avg": make_average(),
        "avg-ft": make_average(init=True),
        "avg-ft-aug": make_average(init=True, aug=True),
        "avg-ft2": make_average(init=True, prior_weight=2),
        "avg-ft10": make_average(init=True, prior_grid=(10.0,)),
        "avg-ft2-aug": make_average(init=True, aug=True, prior_weight=2),
        "avg-aug": make_average(aug=True),
        "avg-aug-pool": make_average(aug=True, extra_w=args.pool_weight),
        "avg-ft-aug-pool": make_average(init=True, aug=True, extra_w=args.pool_weight),
        "loso": make_loso(),
        "bag": make_loso(bag=True),
        "pool": make_loso(extra_w=args.pool_weight),
        "self": make_loso(self_train=True),
        "aug": make_loso(aug=True),
        "base-aug": make_holdout(aug=True),
        "bal": make_balanced(),
        "bal-u": make_balanced(uniform=True),
        "boaw": make_holdout(boaw=(args.boaw_words, args.boaw_assign)),
    }


def add_aug(d: Data, df, cache_dir: str | None, factors: tuple[float, ...]) -> None:
    """Speed-perturbed functionals of the sets in use for every row (`model.speeds`, through the
    feature cache), each (speaker, factor) group normalised by its own statistics, as a new
    speaker would be."""
    A = np.stack(
        [functionals.load_matrix(df, SETS, cache_dir, True, a).astype(np.float64) for a in factors],
        1,
    )
    for k in range(A.shape[1]):
        A[:, k], _ = normalize_functionals(A[:, k], d.spk, "speaker", None, ())
    d.aug = A


# ------------------------------------------------------------------------------------ table
def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="emodb,casia")
    ap.add_argument("--candidates", default="base,loso,bag,pool,self")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", type=Path, default=None, help="folder holding the corpora")
    ap.add_argument("--pool-weight", type=float, default=0.3)
    ap.add_argument("--aug-dir", default=str(bl.REPO_ROOT / "runs" / "selection"))
    ap.add_argument("--speeds", type=float, nargs="+", default=[0.9, 1.1])
    ap.add_argument(
        "--init",
        default=None,
        help="avg-ft's pretrained model; {corpus} is replaced by the corpus "
        "(e.g. runs/accuracy/{corpus}/pretrained-without/model.pt)",
    )
    ap.add_argument("--boaw-words", type=int, default=500)
    ap.add_argument("--boaw-assign", type=int, default=10)
    ap.add_argument(
        "--sets",
        action="append",
        default=None,
        metavar="A,B",
        help="functional sets, one head each (stlser.smile; default egemaps,compare); repeat to "
        "compare combinations: every candidate runs with each, '− base' is against `base` with "
        "the first",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--ref", default="base", help="the candidate of the paired − column")
    args = ap.parse_args(argv)
    combos = [c.split(",") for c in (args.sets or ["egemaps,compare"])]
    for c in combos:
        try:
            functionals.set_dims(c)
        except ValueError as e:
            ap.error(str(e))
    recipes = candidates(args)
    names = [c for c in args.candidates.split(",") if c]
    if set(names) - set(recipes):
        ap.error(f"unknown candidates {sorted(set(names) - set(recipes))}; from {list(recipes)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows_out = []
    for corpus in args.corpora.split(","):
        root = args.root / corpus if args.root else bl.corpus_root(corpus)
        preds: dict[str, dict[int, np.ndarray]] = {}
        yv: dict[int, np.ndarray] = {}
        t0: dict[str, float] = {}
        for combo in combos:
            use_sets(combo)
            d, (cfg, df) = load(corpus, root, args.overrides)
            if any("pool" in n for n in names):
                add_pool(d, corpus, root.parent, cfg.cache_dir)
            if any("aug" in n for n in names):
                add_aug(d, df, cfg.cache_dir, tuple(args.speeds))
            if "boaw" in names:
                add_frames(d, df, Path(args.aug_dir))
            if any(n.startswith("avg-ft") for n in names):
                if not args.init:
                    ap.error("avg-ft needs --init (a pretrained model made without the corpus)")
                d.priors = expert.init_priors(args.init.format(corpus=corpus), SETS, d.labels)
            pos = {u: i for i, u in enumerate(df["utt_id"].astype(str))}
            for seed in seeds:
                folds = splits.from_config(df, cfg.split, seed)
                for n in names:
                    key = n if len(combos) == 1 else f"{n} [{'+'.join(combo)}]"
                    rng = np.random.default_rng(seed)
                    ys, ps = [], []
                    for f in folds:
                        tr = np.asarray([pos[u] for u in f.train])
                        va = np.asarray([pos[u] for u in f.val])
                        t = time.time()
                        out = recipes[n](d, tr, va, rng)
                        t0[key] = t0.get(key, 0.0) + time.time() - t
                        ys.append(d.y[va])
                        ps.append(out.argmax(1).numpy())
                    preds.setdefault(key, {})[seed] = np.concatenate(ps)
                    yv[seed] = np.concatenate(ys)
                    print(
                        f"{corpus} seed {seed} {key}: val UA "
                        f"{100 * ua(yv[seed], preds[key][seed]):.1f}",
                        flush=True,
                    )
        ref = next((k for k in preds if k.split(" [")[0] == args.ref), None)
        for key in preds:
            uas = np.array([ua(yv[s], preds[key][s]) for s in seeds])
            diff = ""
            if ref is not None and key != ref:
                dd = [ua(yv[s], preds[key][s]) - ua(yv[s], preds[ref][s]) for s in seeds]
                diff = f"{100 * np.mean(dd):+.1f} ({', '.join(f'{100 * x:+.1f}' for x in dd)})"
            sd = f" ± {100 * uas.std(ddof=1):.1f}" if len(uas) > 1 else ""
            rows_out.append(
                [corpus, key, f"{100 * uas.mean():.1f}{sd}", diff, f"{t0[key] / len(seeds):.0f}"]
            )
    md = "\n\n".join(
        [
            "## Recipe candidates on validation speakers (the test speaker never seen)",
            f"`{bl.nice_cmdline()}`",
            bl.md_table(
                [
                    "corpus",
                    "candidate",
                    "val UA (mean ± sd over seeds)",
                    f"− {ref or args.ref} (per seed)",
                    "s/seed",
                ],
                rows_out,
            ),
        ]
    )
    return bl.emit(md, args.out)


if __name__ == "__main__":
    main()
