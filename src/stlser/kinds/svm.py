"""The classic baseline as a kind (`model.kind: svm`, `stlser baseline`): eGeMAPSv02
functionals (88 per utterance) + StandardScaler + a linear SVM.

Choices, and why:

* Classifier: ``SVC(kernel="linear")`` (libsvm), not ``LinearSVC``: the setup of the eGeMAPS
  paper (Eyben et al. 2016, linear SVM trained by SMO): hinge loss, unpenalised bias,
  one-vs-one multi-class; deterministic and fast at corpus sizes.
* Normalisation ``features.normalize`` first, as every kind: ``speaker`` z-scores each
  speaker's functionals with that speaker's own statistics (label-free, so allowed for test
  speakers too); ``global`` uses the fitting rows' statistics; ``none`` leaves them raw (the
  scaler still standardises with the fitting rows' statistics); ``utterance`` is undefined
  for one vector per utterance and applied as ``none`` (the report says so).
* Model selection: C (``model.c_grid``) × class weight (``model.class_weights``) by UA on the
  fold's validation speakers, fitting on the training speakers only; ties keep the first in
  grid order. A fold without validation speakers, or ``model.selection: inner``, selects by
  group k-fold over the training (and validation) speakers instead. Then refit on train +
  validation and predict the test speakers.

The artefact (``stlser-svm/1``) holds the scaler and the one-vs-one hyperplanes as tensors
(:class:`SvmModel`), so the model runs, and exports to ONNX, without scikit-learn. Its
"probabilities" are the softmax of scikit-learn's one-vs-rest-shaped vote scores (votes plus
scaled confidences): the argmax is the SVM's decision; the values are not calibrated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser.config import SvmConfig
from stlser.kinds import functionals
from stlser.kinds.base import FoldOutput
from stlser.metrics import ua

FORMAT = "stlser-svm/1"
SYSTEM = "egemaps+linear-svm"
log = logging.getLogger(__name__)


def make_classifier(C: float, class_weight: str | None) -> Any:
    """StandardScaler → linear-kernel SVC (one-vs-one, libsvm)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(
        StandardScaler(),
        SVC(
            kernel="linear",
            C=C,
            class_weight=class_weight,
            decision_function_shape="ovr",
            cache_size=500,
        ),
    )


@dataclass
class Selection:
    """The chosen hyper-parameters and the validation score they reached."""

    C: float
    class_weight: str | None
    val_ua: float
    scores: dict[str, float]
    how: str  # "validation speakers" | "group k-fold on training speakers" | "fixed"


def select_params(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    grid_c: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
    grid_cw: Sequence[str | None] = (None, "balanced"),
) -> Selection:
    """Pick (C, class_weight) by UA, fitting on `train_idx` and scoring on `val_idx` only.

    Only rows in ``train_idx ∪ val_idx`` are read; the test rows are never passed in.
    Without validation rows, scores by group k-fold (≤ 5 folds) over the training groups.
    """
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    if len(val_idx):
        splits = [(train_idx, val_idx)]
        how = "validation speakers"
    else:
        from sklearn.model_selection import GroupKFold

        g = groups[train_idx]
        n_groups = len(np.unique(g))
        if n_groups < 2:
            return Selection(1.0, None, float("nan"), {}, "fixed")
        gkf = GroupKFold(n_splits=min(5, n_groups))
        splits = [(train_idx[a], train_idx[b]) for a, b in gkf.split(train_idx, groups=g)]
        how = "group k-fold on training speakers"
    best: tuple[float, float, str | None] | None = None
    scores: dict[str, float] = {}
    for cw in grid_cw:
        for c in grid_c:
            uas = []
            for fit, ev in splits:
                if len(np.unique(y[fit])) < 2:
                    continue
                clf = make_classifier(c, cw).fit(X[fit], y[fit])
                uas.append(ua(y[ev], clf.predict(X[ev])))
            got = float(np.mean(uas)) if uas else float("nan")
            scores[f"C={c:g},cw={cw}"] = got
            if best is None or got > best[0]:
                best = (got, c, cw)
    assert best is not None
    return Selection(best[1], best[2], best[0], scores, how)


class SvmModel(nn.Module):
    """functionals[B, D] → softmax of the one-vs-one SVM's vote scores [B, C].

    ``forward`` applies the stored global normalisation (unseen speakers); ``scores`` takes
    already-normalised functionals. The scores are scikit-learn's ``decision_function`` with
    ``decision_function_shape="ovr"``: votes + confidences / (3 (|confidences| + 1))."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
        self.dim, self.n_classes = dim, n_classes
        win = torch.zeros(len(pairs), n_classes)
        lose = torch.zeros(len(pairs), n_classes)
        for k, (i, j) in enumerate(pairs):
            win[k, i], lose[k, j] = 1.0, 1.0
        self.register_buffer("win", win, persistent=False)  # pair k → its first class
        self.register_buffer("lose", lose, persistent=False)  # pair k → its second class
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(len(pairs), dim))
        self.register_buffer("bias", torch.zeros(len(pairs)))

    def decision(self, z: Tensor) -> Tensor:
        """The pairwise decision values [B, P] (positive: the pair's first class)."""
        return ((z - self.center) / self.scale) @ self.weight.T + self.bias

    def scores(self, z: Tensor) -> Tensor:
        dec = self.decision(z)
        first = (dec >= 0).to(dec.dtype)
        votes = first @ self.win + (1 - first) @ self.lose
        conf = dec @ (self.win - self.lose)
        return votes + conf / (3 * (conf.abs() + 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.scores((x - self.mean) / self.std), -1)


def to_model(clf: Any, raw: np.ndarray, labels: list[str]) -> SvmModel:
    """The fitted pipeline (scaler + SVC) as an :class:`SvmModel` over `labels`, with the
    global statistics of the raw fitting rows `raw`."""
    scaler, svc = clf[0], clf[-1]
    classes = [str(c) for c in svc.classes_]
    if classes != list(labels):
        raise ValueError(f"the SVM saw classes {classes}, the run has {labels}")
    model = SvmModel(raw.shape[1], len(labels))
    with torch.no_grad():
        model.mean.copy_(torch.as_tensor(raw.mean(0)))
        model.std.copy_(torch.as_tensor(raw.std(0)).clamp_min(1e-5))
        model.center.copy_(torch.as_tensor(scaler.mean_))
        model.scale.copy_(torch.as_tensor(scaler.scale_))
        coef, icpt = np.array(svc.coef_, np.float64), np.array(svc.intercept_, np.float64)
        if len(labels) == 2:  # scikit-learn keeps the binary hyperplane with the opposite sign
            coef, icpt = -coef, -icpt
        model.weight.copy_(torch.as_tensor(coef))
        model.bias.copy_(torch.as_tensor(icpt))
    return model.eval()


def save(path: Path, model: SvmModel, cfg: Any, labels: list[str], meta: dict[str, Any]) -> Path:
    """Write the `stlser-svm/1` artefact atomically (tensors and plain values only)."""
    return functionals.save_artefact(path, FORMAT, model, cfg, labels, meta)


def from_artefact(path: str | Path, art: dict | None = None) -> tuple[SvmModel, dict]:
    """Rebuild the model from its artefact (loaded safely unless `art` is given)."""

    def build(dims: list[int], n_classes: int) -> SvmModel:
        return SvmModel(int(sum(dims)), n_classes)

    return functionals.read_artefact(path, art, FORMAT, build)  # type: ignore[return-value]


class SvmKind(functionals.FunctionalsKind):
    name = "svm"
    config = SvmConfig
    formats = (FORMAT,)
    system = SYSTEM

    def prepare(self, cfg: Any, df: Any, labels: list[str]) -> dict[str, Any]:
        t0 = time.perf_counter()
        sets = list(cfg.model.functionals)
        X = functionals.load_matrix(df, sets, cfg.cache_dir, cfg.train.progress)
        log.info(
            f"functionals {'+'.join(sets)}: {len(X)} utterances in {time.perf_counter() - t0:.1f} s"
        )
        from stlser import degenerate

        return {
            "X": X.astype(np.float64),
            "y": df["label"].astype(str).to_numpy(),
            "speakers": df["speaker"].astype(str).to_numpy(),
            "glob": sorted(degenerate.global_speakers(df, cfg.features)),
            "labels": labels,
            "pos": {u: i for i, u in enumerate(df["utt_id"].astype(str))},
        }

    def fit(self, cfg: Any, data: dict[str, Any], fold: Any, out: Path, *_: Any) -> FoldOutput:
        from stlser.features import normalize_functionals

        tr, va, te = functionals.fold_rows(data["pos"], fold)
        X, y, spk, glob = data["X"], data["y"], data["speakers"], data["glob"]
        m, mode = cfg.model, cfg.features.normalize
        grid_cw = [None if w == "none" else w for w in m.class_weights]
        # selection: normalisation statistics (global mode) from the training rows only
        Xs, _ = normalize_functionals(X, spk, mode, tr, glob)
        if m.selection == "val":
            sel = select_params(Xs, y, spk, tr, va, m.c_grid, grid_cw)
        else:
            sel = select_params(Xs, y, spk, np.concatenate([tr, va]), va[:0], m.c_grid, grid_cw)
            sel.how = "group k-fold on train+val speakers"
        fit = np.concatenate([tr, va])
        Xf, _ = normalize_functionals(X, spk, mode, fit, glob)
        clf = make_classifier(sel.C, sel.class_weight).fit(Xf[fit], y[fit])
        labels = data["labels"]
        cls = [str(c) for c in clf[-1].classes_]
        scores = clf.decision_function(Xf[te])
        if scores.ndim == 1:  # two classes: one score for classes_[1]
            scores = np.stack([-scores, scores], axis=1)
        full = np.full((len(te), len(labels)), np.nan)
        for j, lab in enumerate(labels):
            if lab in cls:
                full[:, j] = scores[:, cls.index(lab)]
        pred = np.asarray([labels.index(str(p)) for p in clf.predict(Xf[te])])
        val_ua = None if np.isnan(sel.val_ua) else sel.val_ua
        info = {
            "C": sel.C,
            "class_weight": sel.class_weight or "none",
            "val_ua": val_ua,
            "selection": sel.how,
            "n_params": int(clf[-1].coef_.size + clf[-1].intercept_.size),
        }
        if cls == list(labels):
            meta = {"corpus": cfg.data.corpus, "fold": fold.name, "seed": cfg.seed, **info}
            save(out / "model.pt", to_model(clf, X[fit], labels), cfg, labels, meta)
        else:
            log.warning(f"fold {fold.name}: training rows lack classes; no model.pt written")
        row = {
            "best_epoch": None,
            **{k: info[k] for k in ("C", "class_weight", "val_ua", "selection")},
        }
        return FoldOutput(full.astype(np.float64), info, row, pred=pred, column="score")

    def report_facts(self, cfg: Any, data: Any, infos: list[dict]) -> dict[str, Any]:
        m, mode = cfg.model, cfg.features.normalize
        applied = "none" if mode in ("none", "utterance") else mode
        if mode == "utterance":
            applied = "none (utterance normalisation is undefined for functionals)"
        dims = functionals.set_dims(list(m.functionals))
        sel = (
            "C x class_weight by UA on the validation speakers"
            if m.selection == "val"
            else "C x class_weight by UA in group k-fold over train+val speakers"
        )
        return {
            "normalize": applied,
            "classifier": "StandardScaler + SVC(kernel='linear'), one-vs-one",
            "features": " + ".join(f"{s} ({d})" for s, d in zip(m.functionals, dims, strict=True)),
            "selection": sel + "; refit on train+val",
            "grid": {"C": list(m.c_grid), "class_weight": list(m.class_weights)},
            "n_params": max((i.get("n_params", 0) for i in infos), default=0),
        }

    def read_model(self, path: str | Path, art: dict[str, Any]) -> tuple[SvmModel, dict]:
        return from_artefact(path, art)

    def speaker_probs(self, model: SvmModel, z: Tensor) -> Tensor:
        return torch.softmax(model.scores(z), -1)
