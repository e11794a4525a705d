"""The metrics every recogniser kind and every benchmark is scored with: a registry of
metrics over label sequences, the confusion matrix, per-class scores and bootstrap intervals.

* ``wa`` — weighted accuracy: the share of utterances classified correctly.
* ``ua`` — unweighted accuracy: the mean per-class recall over the classes *present in
  y_true* (a class with no test utterance has no recall and is left out, not counted as 0).
* ``macro_f1`` — the mean per-class F1 over the classes present in y_true or y_pred (a class
  that is predicted but never true scores F1 = 0; one absent from both is left out).

All three are functions of the confusion matrix, which is what lets :func:`bootstrap_ci`
score 1,000 resamples at once with numpy instead of looping in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MetricFn = Callable[[Sequence[Any], Sequence[Any], Sequence[Any]], float]

#: name → fn(y_true, y_pred, labels) -> float. Extend with :func:`register_metric`.
METRICS: dict[str, MetricFn] = {}

#: Vectorised forms of the built-in metrics: fn(conf[..., K, K]) -> float[...].
_FROM_CONFUSION: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: add ``fn(y_true, y_pred, labels) -> float`` to :data:`METRICS` under `name`."""

    def deco(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return deco


# ------------------------------------------------------------------------------- encoding
def _encode(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to 0..K-1 codes; any value not in `labels` is an error (a typo, not a class)."""
    index = {lab: i for i, lab in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"labels contain duplicates: {list(labels)}")
    t, p = list(y_true), list(y_pred)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} items but y_pred has {len(p)}")
    if not t:
        raise ValueError("no utterances to score")
    try:
        tc = np.fromiter((index[v] for v in t), dtype=np.int64, count=len(t))
        pc = np.fromiter((index[v] for v in p), dtype=np.int64, count=len(p))
    except KeyError as e:
        raise ValueError(f"value {e.args[0]!r} is not one of labels {list(labels)}") from None
    return tc, pc


def _confusion_codes(tc: np.ndarray, pc: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(tc * k + pc, minlength=k * k).reshape(k, k)


def confusion(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]
) -> list[list[int]]:
    """Confusion matrix as nested lists: rows = true label, columns = predicted, in `labels` order."""
    tc, pc = _encode(y_true, y_pred, labels)
    return _confusion_codes(tc, pc, len(labels)).tolist()


# ------------------------------------------------------------- metrics from confusion matrices
def _wa_conf(c: np.ndarray) -> np.ndarray:
    return np.trace(c, axis1=-2, axis2=-1) / c.sum(axis=(-2, -1))


def _ua_conf(c: np.ndarray) -> np.ndarray:
    support = c.sum(axis=-1)
    diag = np.diagonal(c, axis1=-2, axis2=-1)
    present = support > 0
    recall = np.where(present, diag / np.maximum(support, 1), 0.0)
    return recall.sum(axis=-1) / present.sum(axis=-1)


def _per_class(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, f1, support per class (0 where undefined)."""
    diag = np.diagonal(c, axis1=-2, axis2=-1).astype(float)
    support = c.sum(axis=-1)
    predicted = c.sum(axis=-2)
    precision = np.where(predicted > 0, diag / np.maximum(predicted, 1), 0.0)
    recall = np.where(support > 0, diag / np.maximum(support, 1), 0.0)
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * diag / np.maximum(denom, 1), 0.0)
    return precision, recall, f1, support


def _f1_conf(c: np.ndarray) -> np.ndarray:
    _, _, f1, support = _per_class(c)
    involved = (support + c.sum(axis=-2)) > 0
    return (f1 * involved).sum(axis=-1) / involved.sum(axis=-1)


def _builtin(name: str, from_conf: Callable[[np.ndarray], np.ndarray], doc: str) -> None:
    def fn(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]) -> float:
        tc, pc = _encode(y_true, y_pred, labels)
        return float(from_conf(_confusion_codes(tc, pc, len(labels))))

    fn.__name__ = name
    fn.__doc__ = doc
    METRICS[name] = fn
    _FROM_CONFUSION[name] = from_conf


_builtin("wa", _wa_conf, "Weighted accuracy: correct / all utterances.")
_builtin(
    "ua",
    _ua_conf,
    "Unweighted accuracy: mean per-class recall over the classes present in y_true "
    "(absent classes are skipped, not scored 0).",
)
_builtin(
    "macro_f1",
    _f1_conf,
    "Macro F1: mean per-class F1 over classes present in y_true or y_pred.",
)


def compute(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]
) -> dict[str, float]:
    """Every registered metric → its value."""
    return {name: float(fn(y_true, y_pred, labels)) for name, fn in METRICS.items()}


def per_class(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]
) -> dict[str, dict[str, float]]:
    """label → {precision, recall, f1, support}; 0 where undefined (e.g. never predicted)."""
    tc, pc = _encode(y_true, y_pred, labels)
    p, r, f, s = _per_class(_confusion_codes(tc, pc, len(labels)))
    return {
        str(lab): {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, lab in enumerate(labels)
    }


# ------------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    labels: Sequence[Any],
    metric: str = "ua",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of `metric`, resampling utterances with replacement.

    Built-in metrics are scored on all resamples at once from batched confusion matrices
    (chunked so memory stays bounded); a metric added with :func:`register_metric` falls back
    to a Python loop. Deterministic for a given seed.
    """
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    tc, pc = _encode(y_true, y_pred, labels)
    n, k = len(tc), len(labels)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot, dtype=float)
    if metric in _FROM_CONFUSION:
        pair = tc * k + pc
        chunk = max(1, min(n_boot, 4_000_000 // n))  # ≤ ~32 MB of indices at a time
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(b, n))
            codes = pair[idx] + (np.arange(b) * (k * k))[:, None]
            conf = np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k)
            values[start : start + b] = _FROM_CONFUSION[metric](conf)
    else:
        fn = METRICS[metric]
        lab = np.asarray(list(labels), dtype=object)
        for i in range(n_boot):
            idx = rng.integers(0, n, size=n)
            values[i] = fn(list(lab[tc[idx]]), list(lab[pc[idx]]), labels)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def ua(y_true: Any, y_pred: Any) -> float:
    """Unweighted accuracy of two aligned arrays (codes or labels): the mean recall over the
    classes present in `y_true` (the fast form used inside model selection)."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))
