"""The expert-feature recognizer (`model.kind: expert`, stlser's recommended recipe).

openSMILE functionals of each utterance (by default eGeMAPSv02 88, ComParE_2016 6,373 and
IS10 1,582), normalised per speaker with that speaker's label-free statistics (as the
eGeMAPS + SVM baseline does; unseen speakers at inference get the training set's global
statistics), one multinomial logistic regression per functional set (L2 strength chosen by UA
on the fold's validation speakers, then refit on train + validation), and the heads'
log-probabilities averaged.

Why: under speaker-independent folds the from-scratch network loses to eGeMAPS + a linear SVM
on the small corpora here; this recipe won on validation speakers (docs/model.md). The paper's
network stays available as ``model.kind: network``.

The artefact (`model.pt`, format ``stlser-expert/1``) holds tensors and plain values only and
loads with ``weights_only=True``; the ONNX export takes the functionals as its input (openSMILE
runs before the graph, in `stlser.onnx_runtime`).

Why this is one module: the head, its fit, the fold recipe built on it (select or average over
the L2 grid, fine-tuning priors), the artefact and the cross-validation loop are one recognizer,
read together as `stlser.model` is for the network; split, each part would import the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser import __version__
from stlser.config import ExperimentConfig, ModelConfig
from stlser.safety import check_artefact, plain, rebuild, safe_torch_load, weights_digest
from stlser.utils import atomic_path

FORMAT = "stlser-expert/1"
SYSTEM = "expert functionals + logistic heads"
log = logging.getLogger(__name__)


def set_dims(sets: list[str]) -> list[int]:
    """Number of functionals of each named set (stlser.smile.FUNCTIONAL_SETS)."""
    from stlser.smile import FUNCTIONAL_SETS

    unknown = [s for s in sets if s not in FUNCTIONAL_SETS]
    if unknown or not sets:
        raise ValueError(f"model.functionals must name sets from {sorted(FUNCTIONAL_SETS)}")
    return [FUNCTIONAL_SETS[s][1] for s in sets]


class Head(nn.Module):
    """Standardise (fitting-set statistics) → Linear → log-softmax."""

    def __init__(self, d: int, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.linear = nn.Linear(d, n_classes)

    def forward(self, z: Tensor) -> Tensor:
        return torch.log_softmax(self.linear((z - self.center) / self.scale), -1)


class ExpertModel(nn.Module):
    """functionals[B, D] (raw, the sets concatenated) → probabilities[B, C].

    ``forward`` applies the stored global normalisation (for speakers never seen);
    ``log_probs`` takes already-normalised functionals (crossval's per-speaker statistics).
    """

    def __init__(self, dims: list[int], n_classes: int) -> None:
        super().__init__()
        self.dims = list(dims)
        self.heads = nn.ModuleList(Head(d, n_classes) for d in dims)
        self.register_buffer("mean", torch.zeros(sum(dims)))
        self.register_buffer("std", torch.ones(sum(dims)))

    def log_probs(self, z: Tensor) -> Tensor:
        parts = torch.split(z, self.dims, dim=-1)
        return torch.stack([h(p) for h, p in zip(self.heads, parts, strict=True)]).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.log_probs((x - self.mean) / self.std), -1)


class Prior:
    """A pretrained head as the starting point and L2 centre of a new fit (fine-tuning).

    `cols[c]` is the pretrained column of the new fit's label c (-1: a label the pretrained
    head lacks, whose weights start and are pulled toward 0). The pretrained head standardised
    with its own centre/scale; :meth:`weights` re-expresses it in the new fit's standardisation,
    so that before any step the new head computes exactly the pretrained logits.

    >>> h = Head(2, 3)
    >>> p = Prior(h, [2, -1])
    >>> W, b = p.weights(torch.zeros(2), torch.ones(2))
    >>> tuple(W.shape), tuple(b.shape)
    ((2, 2), (2,))
    """

    def __init__(self, head: Head, cols: list[int]) -> None:
        self.W = head.linear.weight.detach().T.clone()  # [D, C0]
        self.b = head.linear.bias.detach().clone()
        self.center = head.center.detach().clone()
        self.scale = head.scale.detach().clone()
        self.cols = list(cols)

    def weights(self, center: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """(W₀[D, C], b₀[C]) in the standardisation (x − center) / scale."""
        # logits = ((x - c0)/s0) W + b = ((x - c)/s) (W s/s0) + b + ((c - c0)/s0) W
        Wn = self.W * (scale / self.scale)[:, None]
        bn = self.b + ((center - self.center) / self.scale) @ self.W
        W0 = torch.zeros(len(center), len(self.cols))
        b0 = torch.zeros(len(self.cols))
        for c, j in enumerate(self.cols):
            if j >= 0:
                W0[:, c], b0[c] = Wn[:, j], bn[j]
        return W0, b0


class _RowsTimes(torch.autograd.Function):
    """``Z @ V`` for a tall Z[N, D] and a narrow V[D, C], given Z and its transpose Zt
    (contiguous): computed as ``(Vᵀ Zt)ᵀ`` and its gradient as ``(Gᵀ Z)ᵀ``, so that both
    products stream the matrices in memory order. torch's ``Z @ V`` and, worse, the backward's
    ``Zᵀ @ G`` do not (one CPU core, 12,000 × 6,373 × 6: 0.93 s → 0.13 s per step)."""

    @staticmethod
    def forward(ctx: Any, V: Tensor, Z: Tensor, Zt: Tensor) -> Tensor:
        ctx.Z = Z
        return (V.T @ Zt).T

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        return (g.T @ ctx.Z).T, None, None


def fit_head(
    head: Head,
    X: np.ndarray,
    y: np.ndarray,
    l2: float,
    max_iter: int = 100,
    mask: np.ndarray | None = None,
    prior: Prior | None = None,
    weight: np.ndarray | None = None,
    row_space: bool = True,
) -> Head:
    """Class-balanced multinomial logistic regression by full-batch L-BFGS (deterministic).

    The objective is the class-weighted mean cross-entropy + ``l2 · ||W − W₀||²``, W₀ = 0, or a
    pretrained head's weights (`prior`, fine-tuning: the fit starts there and is pulled toward
    it, so a small corpus moves it only as far as its evidence warrants). ``mask[N, C]`` (bool)
    limits each row's softmax to the labels its corpus has (multi-corpus training). ``weight[N]``
    weighs rows (e.g. extra corpora or pseudo-labels); classes are balanced by their weighted mass.

    With at most a quarter as many rows as features (ComParE's 6,373 on a few hundred clips) and
    ``row_space``, the fit runs in the span of the rows: the loss sees W only through Z·W and the
    penalty pulls the rest of W − W₀ to zero, so the optimum is the same, at a fraction of the
    cost (measured on a busy core: 400 × 6,373 fits 1.6–4× faster; at 3,000 rows the
    eigendecomposition would cost more than it saves).
    """
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    n_classes = head.linear.out_features
    center, scale = Xt.mean(0), Xt.std(0).clamp_min(1e-5)
    head.center.copy_(center)
    head.scale.copy_(scale)
    Z = (Xt - center) / scale
    if weight is None:
        count = torch.bincount(yt, minlength=n_classes).float().clamp_min(1)
        w = (len(yt) / (n_classes * count))[yt]
    else:
        wt = torch.as_tensor(weight, dtype=torch.float32)
        w = wt / torch.zeros(n_classes).index_add_(0, yt, wt).clamp_min(1e-6)[yt]
    w = w / w.sum()
    W0 = torch.zeros(Xt.shape[1], n_classes)
    b0 = torch.zeros(n_classes)
    if prior is not None:
        W0, b0 = prior.weights(center, scale)
    basis = None  # W = W0 + basis · V: V is what L-BFGS moves
    if row_space and 4 * Z.shape[0] <= Z.shape[1]:  # else the eigh costs more than it saves
        Zd = Z.double()
        ev, U = torch.linalg.eigh(Zd @ Zd.T)  # Z Zᵀ = U diag(ev) Uᵀ; row space = Zᵀ U / √ev
        keep = ev > ev[-1] * 1e-10
        basis = (Zd.T @ U[:, keep] / ev[keep].sqrt()).float()
    Zv = Z if basis is None else Z @ basis
    Zvt = Zv.T.contiguous()  # both layouts: each product then reads memory in order
    offset = Z @ W0 if prior is not None else 0.0
    V = torch.zeros(Zv.shape[1], n_classes, requires_grad=True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [V, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    absent = None if mask is None else ~torch.as_tensor(mask, dtype=torch.bool)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = _RowsTimes.apply(V, Zv, Zvt) + offset + b
        if absent is not None:
            logits = logits.masked_fill(absent, -1e4)
        ce = nn.functional.cross_entropy(logits, yt, reduction="none")
        loss = (ce * w).sum() + l2 * (V**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        W = W0 + (V if basis is None else basis @ V)
        head.linear.weight.copy_(W.T)
        head.linear.bias.copy_(b)
    return head


def average_heads(heads: list[Head]) -> Head:
    """One head whose logits are the mean of `heads`' logits (same fitting rows, so the same
    centre/scale). Exact for the model: its output is the softmax of the heads' mean
    log-probabilities, and each row's log-softmax constant cancels in that softmax.

    >>> a, b = Head(2, 2), Head(2, 2)
    >>> m = average_heads([a, b])
    >>> x = torch.randn(3, 2)
    >>> bool(torch.allclose(m.linear(x), (a.linear(x) + b.linear(x)) / 2, atol=1e-6))
    True
    """
    first = heads[0]
    if any(not torch.equal(h.center, first.center) for h in heads):
        raise ValueError("average_heads: the heads were fitted on different rows")
    out = Head(first.linear.in_features, first.linear.out_features)
    with torch.no_grad():
        out.center.copy_(first.center)
        out.scale.copy_(first.scale)
        out.linear.weight.copy_(torch.stack([h.linear.weight for h in heads]).mean(0))
        out.linear.bias.copy_(torch.stack([h.linear.bias for h in heads]).mean(0))
    return out


def balance(log_probs: Tensor, share: Tensor, iters: int = 100) -> Tensor:
    """One speaker's log-posteriors rescaled per class (Sinkhorn) so the classes sum to `share`.

    Acted corpora give every speaker every class; a speaker whose voice the heads read as, say,
    mostly angry gets that bias divided out, without any label. Each row stays a distribution.

    >>> lp = torch.log(torch.tensor([[0.9, 0.1], [0.8, 0.2]]))
    >>> balance(lp, torch.tensor([0.5, 0.5])).exp().sum(0).round(decimals=3).tolist()
    [1.0, 1.0]
    """
    target = torch.log(share.clamp_min(1e-12) * len(log_probs))
    lp = log_probs.double()
    for _ in range(iters):
        lp = lp + (target.double() - torch.logsumexp(lp, 0))
        lp = lp - torch.logsumexp(lp, 1, keepdim=True)
    return lp.to(log_probs.dtype)


def _ua(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def fit_fold(
    Z: np.ndarray,
    y: np.ndarray,
    dims: list[int],
    n_classes: int,
    train: np.ndarray,
    val: np.ndarray,
    grid: list[float],
    priors: list[Prior] | None = None,
    mode: str = "select",
    copies: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[ExpertModel, dict[str, Any]]:
    """Fit each head on the fold's training speakers (`train` + `val`; the test rows are never
    passed in). `Z` holds normalised functionals (the sets concatenated).

    ``mode="select"``: each head's L2 is the grid value with the best UA on the validation rows
    (fitting on `train`), then refit on train + val. ``mode="average"``: no choice; each head is
    the average (:func:`average_heads`) of its fits at every L2 of the grid on train + val (the
    choice on one or two validation speakers is noisy, and averaging won on validation speakers,
    docs/model.md); no validation UA is measured then.

    With `priors` (one per head, :func:`init_priors`: fine-tuning) each L2 is tried twice,
    pulling toward zero and toward the pretrained head: "select" picks the pair on validation
    (ties go to zero, so a pretrained model that does not help the validation speakers is not
    used), "average" averages all of them.

    `copies` (rows of `Z`: the speed-perturbed copies of the train rows, of the val rows) join
    every fit the rows they copy join; validation scores the original val rows only.
    """
    priors = priors or [None] * len(dims)
    model = ExpertModel(dims, n_classes)
    fit = np.concatenate([train, val])
    if copies is not None:
        train = np.concatenate([train, copies[0]])
        fit = np.concatenate([fit, *copies])
    bounds = np.cumsum([0, *dims])
    chosen, centre, val_ua = [], [], []
    val_lp = torch.zeros(len(val), n_classes)
    for i, head in enumerate(model.heads):
        Zi = Z[:, bounds[i] : bounds[i + 1]]
        cands = [(l2, None) for l2 in grid]
        if priors[i] is not None:
            cands += [(l2, priors[i]) for l2 in grid]
        if mode == "average":
            fits = [
                fit_head(Head(dims[i], n_classes), Zi[fit], y[fit], l2, prior=p) for l2, p in cands
            ]
            head.load_state_dict(average_heads(fits).state_dict())
            chosen.append(list(grid))
            centre.append("zero" if priors[i] is None else "zero+pretrained")
            continue
        # no validation speakers: the first L2, toward the pretrained head when there is one
        fallback = cands[len(grid) if priors[i] is not None else 0]
        best = (-1.0, fallback, None)
        for cand in cands if len(val) else [fallback]:
            h = fit_head(Head(dims[i], n_classes), Zi[train], y[train], cand[0], prior=cand[1])
            if not len(val):
                break
            with torch.no_grad():
                lp = h(torch.as_tensor(Zi[val], dtype=torch.float32))
            ua = _ua(y[val], lp.argmax(1).numpy())
            if ua > best[0]:
                best = (ua, cand, lp)
        l2, prior = best[1]
        chosen.append(l2)
        centre.append("zero" if prior is None else "pretrained")
        val_ua.append(best[0])
        if best[2] is not None:
            val_lp += best[2] / len(dims)
        fit_head(head, Zi[fit], y[fit], l2, prior=prior)
    if mode == "average":
        sel: dict[str, Any] = {"l2": chosen, "l2_mode": mode, "val_ua": None}
    else:
        fused = _ua(y[val], val_lp.argmax(1).numpy()) if len(val) else None
        sel = {"l2": chosen, "l2_mode": mode, "val_ua_heads": val_ua, "val_ua": fused}
    if any(p is not None for p in priors):
        sel["l2_centre"] = centre
    return model.eval(), sel


# ------------------------------------------------------------------ artefact (model.pt)
def save(
    path: str | Path,
    model: ExpertModel,
    cfg: ExperimentConfig,
    labels: list[str],
    meta: dict[str, Any],
) -> Path:
    """Write the `stlser-expert/1` artefact atomically (tensors and plain values only)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    art = {
        "format": FORMAT,
        "labels": list(labels),
        "model_config": asdict(cfg.model),
        "feature_config": asdict(cfg.features),
        "n_features": int(sum(model.dims)),
        "normalizer": {"mode": cfg.features.normalize, "applies": "global statistics"},
        "state_dict": state,
        "meta": plain({**meta, "stlser_version": __version__}),
        "weights_sha256": weights_digest(state),
    }
    with atomic_path(path) as tmp:
        torch.save(art, tmp)
    return Path(path)


def is_expert(art: Any) -> bool:
    return isinstance(art, dict) and art.get("format") == FORMAT


def from_artefact(path: str | Path, art: dict | None = None) -> tuple[ExpertModel, dict]:
    """Rebuild the model from its artefact (loaded safely unless `art` is given)."""
    if art is None:
        art = safe_torch_load(path, "model artefact")
    art = check_artefact(path, art, FORMAT)

    def build() -> ExpertModel:
        sets = ModelConfig(**art["model_config"]).functionals
        return ExpertModel(set_dims(sets), len(art["labels"]))

    return rebuild(path, build, art["state_dict"]), art


def init_priors(
    spec: str, sets: list[str], labels: list[str], corpus: str | None = None
) -> list[Prior]:
    """The heads of a pretrained expert model (``"base"``, the shipped general model, or a
    `model.pt` path) as fine-tuning priors for a run with functional `sets` and `labels`.

    Labels are matched by name; the run's labels the model lacks start from zero. A model of
    another kind, other functional sets, or no shared label is refused with ValueError. A model
    trained on the run's `corpus` (e.g. ``base`` on EmoDB) has heard its test speakers: that is
    logged as a warning, since scores are then not speaker-independent.
    """
    from stlser.recognizer import resolve_init_path

    path = resolve_init_path(spec)
    art = safe_torch_load(path, "model.init artefact")
    if not is_expert(art):
        raise ValueError(
            f"model.init {spec} is incompatible: {path} is a network model, this run is "
            "model.kind=expert (use a model.pt written by an expert run, or 'base')"
        )
    base, art = from_artefact(path, art)
    theirs = list(ModelConfig(**art["model_config"]).functionals)
    if theirs != list(sets):
        raise ValueError(
            f"model.init {spec} is incompatible: model.functionals {theirs} (init) != "
            f"{list(sets)} (this run)"
        )
    names = list(art["labels"])
    cols = [names.index(v) if v in names else -1 for v in labels]
    if all(c < 0 for c in cols):
        raise ValueError(
            f"model.init {spec} is incompatible: no label in common (init {names}, "
            f"this run {list(labels)})"
        )
    meta = art.get("meta") or {}
    seen = meta.get("corpora") or [meta.get("corpus")]
    if corpus is not None and corpus in seen:
        log.warning(
            f"model.init {spec} was trained on {corpus} itself: its speakers, the test speakers "
            "of this run among them, were seen in pretraining, so these scores are not "
            "speaker-independent (for an honest score, pretrain without this corpus: "
            "benchmarks/bench_accuracy.py --systems finetuned does)"
        )
    new = [v for v, c in zip(labels, cols, strict=True) if c < 0]
    log.info(
        f"model.init: {len(base.heads)} heads from {path}; labels mapped "
        f"{[v for v in labels if v not in new]}, new {new}"
    )
    return [Prior(h, cols) for h in base.heads]


# ------------------------------------------------------------------------- cross-validation
def load_matrix(
    df: Any, sets: list[str], cache_dir: str | None, progress: bool, speed: float = 1.0
) -> np.ndarray:
    """Functionals of every manifest row (sets concatenated) → float32[N, D], via the cache;
    with `speed` ≠ 1, of each clip speed-perturbed by that factor."""
    from stlser.features import load_functionals

    parts = []
    for s in sets:
        got = load_functionals(df, cache_dir, progress=progress, feature_set=s, speed=speed)
        parts.append(np.stack([np.asarray(got[str(u)], np.float32) for u in df["utt_id"]]))
    X = np.concatenate(parts, axis=1)
    bad = ~np.isfinite(X)
    if bad.any():  # openSMILE gives NaN for a few functionals of near-silent clips
        X[bad] = 0.0
    return X


def _fit_part(part: tuple[int, np.ndarray, np.ndarray, np.ndarray]) -> tuple:
    """One fold of :func:`crossval`: normalise with the training speakers' statistics, fit the
    heads (:func:`fit_fold`), score the test rows. A module-level function so `train.jobs` > 1
    can run folds in spawned processes."""
    from stlser import runs
    from stlser.baseline import normalize_functionals

    _, tr, va, te = part
    s = runs.WORKER
    X, n = s["X"], s["n"]  # rows n, 2n, …: the speed-perturbed copies of rows 0 … n−1
    fit = np.concatenate([tr, va])
    copies = None
    if len(X) > n:
        k = np.arange(1, len(X) // n)[:, None] * n
        copies = ((tr + k).ravel(), (va + k).ravel())
    every = fit if copies is None else np.concatenate([fit, *copies])
    Z, _ = normalize_functionals(X, s["speakers"], s["mode"], every, s["glob"])
    model, sel = fit_fold(
        Z, s["y"], s["dims"], s["n_classes"], tr, va, s["grid"], s["priors"], s["l2_mode"], copies
    )
    raw = torch.as_tensor(X[fit], dtype=torch.float32)
    model.mean.copy_(raw.mean(0))
    model.std.copy_(raw.std(0).clamp_min(1e-5))
    with torch.no_grad():
        probs = torch.softmax(model.log_probs(torch.as_tensor(Z[te], dtype=torch.float32)), -1)
    return model, sel, probs


def crossval(cfg: ExperimentConfig, out: str | Path | None) -> Path:
    """Every fold of the configured protocol: select, refit, test, save `fold_XX/model.pt`;
    writes predictions.csv and the pooled report (same format as the network's runs).

    Functionals come from the feature cache, so a repeated run costs seconds; it is recomputed
    from the cache rather than resumed. With `train.jobs` J > 1 the folds are fitted in J
    processes (each a copy of the functionals; about 1.5 min a fold on one core for nEMO's
    12,000 training rows with the speed copies); the models do not depend on J beyond float
    rounding.
    """
    from stlser import degenerate, evaluation, runs
    from stlser.evaluation import predictions_table
    from stlser.utils import write_csv, write_json

    t0 = time.time()
    run = runs.resolve_output(cfg, out)
    df, folds, labels = runs.prepare(cfg, run)
    runs.write_run_header(cfg, run)
    speaker_norm = degenerate.report(df, cfg.features, log.warning)
    sets = list(cfg.model.functionals)
    dims = set_dims(sets)
    log.info(f"{cfg.name}: functionals {'+'.join(sets)} of {len(df)} utterances")
    X = load_matrix(df, sets, cfg.cache_dir, cfg.train.progress).astype(np.float64)
    speakers = df["speaker"].astype(str).to_numpy()
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.asarray([index[v] for v in df["label"].astype(str)])
    pos = {u: i for i, u in enumerate(df["utt_id"].astype(str))}
    glob = sorted(degenerate.global_speakers(df, cfg.features))
    n = len(X)
    if cfg.model.speeds:  # each (speaker, speed) normalised as a speaker of its own
        log.info(f"speed-perturbed copies {cfg.model.speeds} of every clip join the training rows")
        X = np.concatenate(
            [X]
            + [
                load_matrix(df, sets, cfg.cache_dir, cfg.train.progress, a)
                for a in cfg.model.speeds
            ]
        ).astype(np.float64)
        tags = [f"@{a}" for a in cfg.model.speeds]
        speakers = np.concatenate(
            [speakers] + [np.asarray([v + t for v in speakers]) for t in tags]
        )
        glob = glob + [g + t for t in tags for g in glob]
        y = np.tile(y, len(cfg.model.speeds) + 1)
    t_feat = time.time() - t0
    mode = cfg.features.normalize if cfg.features.normalize != "utterance" else "none"
    picked = runs.chosen(cfg, folds)
    priors = None
    if cfg.model.init:
        priors = init_priors(cfg.model.init, sets, labels, cfg.data.corpus)
    parts = []
    for i in picked:
        fold = folds[i]
        tr, va, te = (
            np.asarray([pos[u] for u in part], np.int64)
            for part in (fold.train, fold.val, fold.test)
        )
        parts.append((i, tr, va, te))
    state = dict(X=X, n=n, y=y, speakers=speakers, mode=mode, glob=glob, dims=dims, priors=priors)
    state.update(n_classes=len(labels), grid=list(cfg.model.l2_grid), l2_mode=cfg.model.l2_mode)
    done: dict[int, tuple[Any, dict[str, Any]]] = {}  # fold index → (predictions, info)

    def finish(part: tuple, result: tuple[ExpertModel, dict[str, Any], Tensor]) -> None:
        """Save a fitted fold as soon as it arrives (folds may finish out of order)."""
        i, tr, va, _ = part
        fold, (model, sel, probs) = folds[i], result
        ids = [str(u) for u in fold.test]
        fdir = run / f"fold_{i:02d}"
        meta = {"corpus": cfg.data.corpus, "fold": fold.name, "seed": cfg.seed, **sel}
        save(fdir / "model.pt", model, cfg, labels, meta)
        info = {
            "fold": fold.name,
            "test_speakers": list(fold.test_speakers),
            "val_speakers": list(fold.val_speakers),
            "best_epoch": None,
            "val_ua": sel["val_ua"],
            "n_train": int(len(tr)),
            "n_val": int(len(va)),
            "speaker_independent": bool(fold.speaker_independent),
        }
        write_json(fdir / "fold.json", {**info, **sel})
        done[i] = (predictions_table(df, ids, fold.name, labels, probs.numpy()), info)
        test_ua = _ua(y[[pos[u] for u in ids]], probs.argmax(1).numpy())
        vua = "–" if sel["val_ua"] is None else f"{100 * sel['val_ua']:.1f}"
        l2 = sel["l2"] if cfg.model.l2_mode == "select" else f"averaged over {cfg.model.l2_grid}"
        log.info(
            f"fold {len(done)}/{len(parts)} {fold.name}: L2 {l2} val UA {vua}"
            f" → test UA {100 * test_ua:.1f}"
        )

    jobs = max(1, min(cfg.train.jobs, len(parts)))
    if jobs > 1:  # each process gets its own copy of the functionals (spawned: nothing shared)
        threads = runs.worker_threads(cfg.train.num_threads, jobs)
        log.info(f"fitting {len(parts)} folds in {jobs} processes, {threads} torch thread(s) each")
    runs.run_units(parts, _fit_part, finish, state, jobs=jobs, threads=cfg.train.num_threads)
    preds = [done[i][0] for i in picked]
    infos = [done[i][1] for i in picked]
    import pandas as pd

    allp = pd.concat(preds, ignore_index=True)
    write_csv(run / "predictions.csv", allp)
    extra = {
        **runs.report_header(SYSTEM, cfg, infos),
        "normalize": mode,
        "features": " + ".join(f"{s} ({d})" for s, d in zip(sets, dims, strict=True)),
        "classifier": "one class-balanced logistic regression per set, log-probabilities averaged",
        "selection": (
            "L2 per head by UA on the validation speakers; refit on train+val"
            if cfg.model.l2_mode == "select"
            else "each head the average of its fits at every L2 of the grid on train+val"
        ),
        "n_params": int(sum(p.numel() for p in ExpertModel(dims, len(labels)).parameters())),
        "speed_copies": list(cfg.model.speeds),
        "speaker_normalisation": speaker_norm,
        "feature_seconds": round(t_feat, 2),
        "seconds": round(time.time() - t0, 2),
    }
    rep = evaluation.write_report(run, allp, labels, infos, extra)
    log.info(f"{rep.summary()}  ({extra['seconds']:.0f} s)")
    return run
