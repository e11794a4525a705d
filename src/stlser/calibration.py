"""What a general model answers with by default, and how sure it says it is.

A model trained on several corpora (`stlser.pretrain`) stores two answer settings in its
metadata, both chosen on leave-one-corpus-out predictions (each corpus scored by a model that
never saw it, the situation of a user's own audio):

* ``default_labels``: the labels at least :data:`MIN_CORPORA` of its training corpora teach.
  A label taught by one corpus is learnt from one language, one set of actors and one
  recording set-up; the others stay available on request (`Recognizer.restrict`).
* ``temperature``: one temperature for a clip normalised with the training set's global
  statistics (``global``) and one for a clip normalised with its speaker's own statistics
  (``speaker``), each fitted by maximum likelihood (Guo et al., "On Calibration of Modern
  Neural Networks", ICML 2017). Applied to probabilities as ``p^(1/T)`` renormalised, which is
  the softmax of the log-probabilities divided by T, so the top label never changes.

An answer whose calibrated probability is below :data:`UNSURE_BELOW` is marked unsure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: A label is answered by default when at least this many training corpora teach it.
MIN_CORPORA = 2
#: Below this calibrated top probability an answer is marked unsure.
UNSURE_BELOW = 0.5
#: Temperatures are searched in this range.
T_RANGE = (0.2, 20.0)


def default_labels(
    labels: Sequence[str], labels_per_corpus: Mapping[str, Iterable[str]]
) -> list[str]:
    """The labels (in model order) at least MIN_CORPORA corpora teach; every label when the
    model was trained on fewer corpora than that."""
    taught = [set(v) for v in labels_per_corpus.values()]
    if len(taught) < MIN_CORPORA:
        return list(labels)
    return [lab for lab in labels if sum(lab in t for t in taught) >= MIN_CORPORA]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fit_temperature(groups: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """The temperature minimising the mean negative log-likelihood over every group's rows
    (`groups`: pairs of log-probabilities [N, C] and true columns [N]; -1 = a true label outside
    the columns, ignored). Golden-section search on log T."""
    data = [(lp[y >= 0], y[y >= 0]) for lp, y in groups]
    n = sum(len(y) for _, y in data)
    if n == 0:
        raise ValueError("fit_temperature: no row with a true label among the columns")

    def nll(log_t: float) -> float:
        t = float(np.exp(log_t))
        return -sum(float(log_softmax(lp / t)[np.arange(len(y)), y].sum()) for lp, y in data) / n

    a, b = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    g = (np.sqrt(5.0) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return round(float(np.exp((a + b) / 2)), 4)


def apply(p: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities [B, C] → the same at `temperature` (rows renormalised; argmax kept)."""
    if temperature == 1.0 or p.size == 0:
        return p
    lp = np.log(np.clip(p, 1e-300, None)) / temperature
    return np.exp(log_softmax(lp))


def ece(p: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top probability (equal-width bins): the mean over
    answers of |accuracy − confidence| within each answer's bin."""
    conf = p.max(1)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    err = 0.0
    for b in np.unique(idx):
        m = idx == b
        err += m.mean() * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return float(err)


def settings(meta: Mapping[str, Any]) -> tuple[dict[str, float], list[str] | None]:
    """A model's answer settings from its metadata: temperatures (``global``, ``speaker``; 1.0
    when absent) and its default labels (None: all)."""
    t = meta.get("temperature") or {}
    temps = {k: float(t.get(k, 1.0)) for k in ("global", "speaker")}
    if any(not (T_RANGE[0] <= v <= T_RANGE[1]) for v in temps.values()):
        raise ValueError(f"temperature {temps} outside {T_RANGE}")
    labels = meta.get("default_labels")
    return temps, (None if not labels else [str(x) for x in labels])
