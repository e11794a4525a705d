"""The classic baseline: eGeMAPSv02 functionals (88 per utterance) + a linear SVM.

It runs on exactly the folds the network uses (`stlser.runs.prepare`) and is
scored by the same :func:`stlser.evaluation.write_report`, so the two are directly comparable.

Choices, and why:

* Classifier: ``SVC(kernel="linear")`` (libsvm), not ``LinearSVC``. It is the setup of the
  eGeMAPS paper (Eyben et al. 2016, linear SVM trained by SMO): hinge loss, unpenalised bias,
  one-vs-one multi-class. It is deterministic and fast at corpus sizes (≤ a few thousand
  utterances × 88 features); LinearSVC (squared hinge, one-vs-rest, penalised bias) is
  meant for much larger problems and needs iteration limits tuned to converge.
* Pipeline ``StandardScaler → SVC``: the scaler is fitted on the fitting data only.
* Normalisation ``cfg.features.normalize`` is applied to the functionals first, as the network
  applies it to its features: ``speaker`` z-scores each speaker's functionals with that
  speaker's own mean/std (label-free, so allowed for test speakers too); ``global`` uses the
  fitting set's statistics (then the scaler is a no-op); ``none`` leaves them raw (the scaler
  still standardises with training statistics). ``utterance`` has no meaning for one vector
  per utterance and is treated as ``none`` (the report says so).
* Model selection: C ∈ {1e-3, 1e-2, 1e-1, 1, 10} × class_weight ∈ {None, "balanced"} chosen by
  UA on the fold's validation speakers, fitting on the training speakers only. The test fold is
  never touched. Ties keep the first in grid order (unweighted before balanced, then smaller C).
  A fold without validation data selects by group k-fold over its training speakers instead;
  ``selection="inner"`` does that over train + val speakers for every fold (steadier than one
  validation speaker; on EmoDB LOSO it gives ~79 % UA against ~78 % for the default).
* Refit: on train + validation with the chosen hyper-parameters, then predict test. Validation
  speakers are not test speakers, so using them for the final fit is legitimate and gives the
  SVM the same amount of speaker variety the network sees (the network only uses them for early
  stopping, which an SVM does not need).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stlser import degenerate, runs
from stlser.results import RunReport
from stlser.utils import write_csv

SYSTEM = "egemaps+linear-svm"
N_FUNCTIONALS = 88
GRID_C: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
GRID_CLASS_WEIGHT: tuple[str | None, ...] = (None, "balanced")


# --------------------------------------------------------------------------- normalisation
def normalize_functionals(
    X: np.ndarray,
    speakers: Sequence[Any],
    mode: str,
    fit_idx: np.ndarray | None = None,
    global_speakers: Sequence[str] = (),
) -> tuple[np.ndarray, str]:
    """Return (normalised copy of X, mode actually applied).

    ``speaker``: every speaker z-scored by its own statistics (no labels used).
    ``global``: z-scored with the mean/std of the rows ``fit_idx`` (the fitting set).
    ``none`` / ``utterance``: unchanged (utterance normalisation is undefined for functionals).
    `global_speakers` (``speaker`` mode): these speakers are z-scored with the statistics of the
    rows ``fit_idx`` instead of their own (the degenerate speakers of `stlser.degenerate`).
    """
    X = np.asarray(X, dtype=np.float64)
    if mode == "speaker":
        out = np.empty_like(X)
        spk = np.asarray([str(s) for s in speakers])
        skip = set(global_speakers)
        ref = X if fit_idx is None else X[fit_idx]
        for s in np.unique(spk):
            rows = spk == s
            out[rows] = _zscore(X[rows], ref if s in skip else X[rows])
        return out, "speaker"
    if mode == "global":
        ref = X if fit_idx is None else X[fit_idx]
        return _zscore(X, ref), "global"
    if mode in ("none", "utterance"):
        return X.copy(), "none"
    raise ValueError(f"unknown features.normalize {mode!r} (none | global | speaker | utterance)")


def _zscore(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return (X - mean) / std


# ------------------------------------------------------------------------------ classifier
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


def _ua(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


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
    grid_c: Sequence[float] = GRID_C,
    grid_cw: Sequence[str | None] = GRID_CLASS_WEIGHT,
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
                uas.append(_ua(y[ev], clf.predict(X[ev])))
            ua = float(np.mean(uas)) if uas else float("nan")
            scores[f"C={c:g},cw={cw}"] = ua
            if best is None or ua > best[0]:
                best = (ua, c, cw)
    assert best is not None
    return Selection(best[1], best[2], best[0], scores, how)


def n_svm_params(clf: Any) -> int:
    """Weights + biases of the fitted SVM (one hyperplane per class pair)."""
    svm = clf[-1]
    return int(svm.coef_.size + svm.intercept_.size)


# ------------------------------------------------------------------------- cross-validation
def cross_validate(
    X: np.ndarray,
    df: Any,
    folds: Sequence[Any],
    normalize: str = "speaker",
    labels: Sequence[str] | None = None,
    selection: str = "val",
    log: Callable[[str], None] | None = print,
    global_speakers: Sequence[str] = (),
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Select, refit and predict on every fold.

    Returns (predictions DataFrame, fold dicts for :func:`evaluation.write_report`, info).
    ``selection="val"`` picks C on the fold's validation speakers (the default, as the network
    early-stops on them); ``"inner"`` picks it by group k-fold over all non-test speakers
    (train + val), which is steadier when there is a single validation speaker.
    `X` is aligned with the rows of `df`; folds hold utt_id lists (train, val, test).
    """
    import pandas as pd

    if selection not in ("val", "inner"):
        raise ValueError(f"selection must be 'val' or 'inner', not {selection!r}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(df):
        raise ValueError(f"functionals shape {X.shape} does not match {len(df)} manifest rows")
    ids = df["utt_id"].astype(str).tolist()
    pos = {u: i for i, u in enumerate(ids)}
    y = df["label"].astype(str).to_numpy()
    speakers = df["speaker"].astype(str).to_numpy()
    labels = list(labels) if labels is not None else sorted(set(y))

    def rows(utts: Sequence[str]) -> np.ndarray:
        try:
            return np.asarray([pos[str(u)] for u in utts], dtype=np.int64)
        except KeyError as e:
            raise ValueError(
                f"fold names utt_id {e.args[0]!r} that is not in the manifest"
            ) from None

    preds: list[pd.DataFrame] = []
    fold_dicts: list[dict[str, Any]] = []
    applied = normalize
    n_params = 0
    for i, fold in enumerate(folds):
        t0 = time.perf_counter()
        tr, va, te = rows(fold.train), rows(fold.val), rows(fold.test)
        if set(tr.tolist()) & set(te.tolist()) or set(va.tolist()) & set(te.tolist()):
            raise ValueError(f"fold {fold.name}: test utterances also in train/val")
        # Selection: normalisation statistics (global mode) from the training rows only.
        Xs, applied = normalize_functionals(X, speakers, normalize, tr, global_speakers)
        if selection == "val":
            sel = select_params(Xs, y, speakers, tr, va)
        else:
            sel = select_params(Xs, y, speakers, np.concatenate([tr, va]), va[:0])
            sel.how = "group k-fold on train+val speakers"
        # Refit on train + val, statistics from those rows; predict test.
        fit = np.concatenate([tr, va])
        Xf, _ = normalize_functionals(X, speakers, normalize, fit, global_speakers)
        clf = make_classifier(sel.C, sel.class_weight).fit(Xf[fit], y[fit])
        n_params = max(n_params, n_svm_params(clf))
        pred = clf.predict(Xf[te])
        scores = clf.decision_function(Xf[te])
        if scores.ndim == 1:  # two classes: one score for classes_[1]
            scores = np.stack([-scores, scores], axis=1)
        frame = pd.DataFrame(
            {
                "utt_id": [ids[j] for j in te],
                "fold": str(fold.name),
                "speaker": speakers[te],
                "label": y[te],
                "pred": pred,
            }
        )
        cls = [str(c) for c in clf[-1].classes_]
        for lab in labels:
            frame[f"score_{lab}"] = scores[:, cls.index(lab)] if lab in cls else np.nan
        preds.append(frame)
        test_ua = _ua(y[te], pred)
        test_wa = float(np.mean(pred == y[te]))
        fold_dicts.append(
            {
                "fold": str(fold.name),
                "test_speakers": [str(s) for s in getattr(fold, "test_speakers", [])],
                "val_speakers": [str(s) for s in getattr(fold, "val_speakers", [])],
                "best_epoch": None,
                "C": sel.C,
                "class_weight": sel.class_weight or "none",
                "val_ua": None if np.isnan(sel.val_ua) else sel.val_ua,
                "selection": sel.how,
                "n_train": int(len(tr)),
                "n_val": int(len(va)),
                "speaker_independent": bool(getattr(fold, "speaker_independent", True)),
            }
        )
        if log:
            spk = ",".join(map(str, getattr(fold, "test_speakers", []))) or "-"
            log(
                f"[baseline] fold {i + 1}/{len(folds)} {fold.name} (test {spk}, n={len(te)}): "
                f"C={sel.C:g} class_weight={sel.class_weight} val UA={100 * sel.val_ua:.1f} → "
                f"test UA={100 * test_ua:.1f} WA={100 * test_wa:.1f} ({time.perf_counter() - t0:.1f} s)"
            )
    info = {"normalize_applied": applied, "n_params": n_params}
    return pd.concat(preds, ignore_index=True), fold_dicts, info


# ------------------------------------------------------------------------------ extraction
def extract_functionals(
    df: Any, cache_dir: str | os.PathLike | None, progress: bool = True
) -> np.ndarray:
    """eGeMAPSv02 functionals of every manifest row → float32[N, 88], in row order.

    Goes through the shared feature cache (`stlser.features.load_functionals`, one entry per
    file keyed by path, size and mtime), so a second run reads them back instead of recomputing.
    """
    from stlser import features

    t0 = time.perf_counter()
    got = features.load_functionals(df, cache_dir, progress=progress)
    X = np.stack([np.asarray(got[str(u)], dtype=np.float32).reshape(-1) for u in df["utt_id"]])
    if X.shape[1] != N_FUNCTIONALS or not np.all(np.isfinite(X)):
        raise ValueError(f"functionals have shape {X.shape} or non-finite values")
    print(f"[baseline] functionals: {len(X)} utterances in {time.perf_counter() - t0:.1f} s")
    return X


# ------------------------------------------------------------------------------- the run
def make_folds(df: Any, cfg: Any) -> list[Any]:
    """The config's folds, with the same call the experiment code makes."""
    from stlser import splits

    return splits.from_config(df, cfg.split, cfg.seed)


def load_data(cfg: Any, run_dir: str | os.PathLike) -> tuple[Any, list[Any]]:
    """Manifest and folds exactly as the network's runs obtain them (`stlser.runs.prepare`,
    which also checks the folds for leaks and writes manifest.csv and splits.json)."""
    df, folds, _ = runs.prepare(cfg, Path(run_dir))
    return df, folds


def run_baseline(
    cfg: Any,
    out: str | os.PathLike | None,
    df: Any = None,
    folds: Sequence[Any] | None = None,
    functionals: np.ndarray | None = None,
    selection: str = "val",
) -> RunReport:
    """eGeMAPS + linear SVM on the config's corpus and folds; writes a full report into `out`.

    Writes report.json/.md, confusion.png, predictions.csv, config.yaml, environment.json.
    `df`/`folds` default to what the experiment code builds from `cfg` (then manifest.csv and
    splits.json are written too); `functionals` (aligned with `df`) skips extraction.
    `out=None` → runs/<name>-baseline. `selection`: see :func:`cross_validate`.
    Returns the report.
    """
    from stlser import evaluation

    t0 = time.perf_counter()
    out = runs.resolve_output(cfg, out, suffix="-baseline")
    out.mkdir(parents=True, exist_ok=True)
    if df is None:
        df, built = load_data(cfg, out)
        folds = built if folds is None else folds
    elif folds is None:
        folds = make_folds(df, cfg)
    folds = [folds[i] for i in runs.chosen(cfg, list(folds))]
    labels = sorted(df["label"].astype(str).unique())
    runs.write_run_header(cfg, out)

    t_feat = time.perf_counter()
    if functionals is None:
        functionals = extract_functionals(df, cfg.cache_dir, progress=cfg.train.progress)
    feat_seconds = time.perf_counter() - t_feat

    speaker_norm = degenerate.report(df, cfg.features, lambda m: print(f"[baseline] {m}"))
    preds, fold_dicts, info = cross_validate(
        functionals,
        df,
        folds,
        normalize=cfg.features.normalize,
        labels=labels,
        selection=selection,
        global_speakers=sorted(degenerate.global_speakers(df, cfg.features)),
    )
    write_csv(out / "predictions.csv", preds)
    normalize_note = info["normalize_applied"]
    if cfg.features.normalize == "utterance":
        normalize_note = "none (utterance normalisation is undefined for functionals)"
    extra = {
        **runs.report_header(SYSTEM, cfg, fold_dicts),
        "normalize": normalize_note,
        "classifier": "StandardScaler + SVC(kernel='linear'), one-vs-one",
        "features": f"eGeMAPSv02 functionals ({N_FUNCTIONALS})",
        "selection": (
            "C x class_weight by UA on the validation speakers"
            if selection == "val"
            else "C x class_weight by UA in group k-fold over train+val speakers"
        )
        + "; refit on train+val",
        "grid": {"C": list(GRID_C), "class_weight": [str(c) for c in GRID_CLASS_WEIGHT]},
        "n_params": info["n_params"],
        "speaker_normalisation": speaker_norm,
        "feature_seconds": round(feat_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    report = evaluation.write_report(out, preds, labels, fold_dicts, extra)
    print(
        f"[baseline] {SYSTEM}: UA {100 * report.ua:.1f} % "
        f"[{100 * report.ua_ci95[0]:.1f}, {100 * report.ua_ci95[1]:.1f}], "
        f"WA {100 * report.wa:.1f} %, {len(folds)} folds, {report.seconds:.0f} s → {out}"
    )
    return report
