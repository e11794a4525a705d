"""Accuracy study: the torch functional front end (compact, medium, large) against openSMILE's
eGeMAPS + ComParE + IS10, on EmoDB (and CASIA with ``--corpus casia``).

Recipe per feature set: z-score each speaker's rows with that speaker's own mean and std, then a
class-balanced multinomial logistic regression; its probabilities are averaged over
C ∈ {0.01, 0.1, 1}; a combination of sets averages the sets' log-probabilities.

Protocol: leave-one-speaker-out over the corpus' speakers. This is a **development estimate,
not a test score**: the same folds were looked at while the descriptors were developed, so the
numbers say how the front ends compare, not what either scores on unseen data.

    PYTHONPATH=src python benchmarks/study_frontend.py --cache /tmp/fe_cache [--corpus emodb]

Prints a table (UA = unweighted average recall, pooled over all held-out predictions, and the
mean and minimum of the per-speaker UA).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score

from stlser import smile
from stlser.features.functionals import FunctionalFrontEnd

CORPORA = Path("/work/shared/corpora")
EMODB_EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
                  "T": "sadness", "N": "neutral"}  # fmt: skip
C_GRID = (0.01, 0.1, 1.0)
SMILE_SETS = ("egemaps", "compare", "is10")
TORCH_SETS = ("compact", "medium", "large")


def corpus_files(corpus: str) -> tuple[list[Path], list[str], list[str]]:
    """(paths, speakers, labels) of a corpus, sorted by path."""
    if corpus == "emodb":
        paths = sorted((CORPORA / "emodb" / "wav").glob("*.wav"))
        return paths, [p.name[:2] for p in paths], [EMODB_EMOTIONS[p.name[5]] for p in paths]
    if corpus == "casia":
        paths = sorted((CORPORA / "casia").glob("*/*/*.wav"))
        return paths, [p.parts[-3] for p in paths], [p.parts[-2] for p in paths]
    raise ValueError(corpus)


def load_waves(paths: list[Path]) -> list[np.ndarray]:
    out = []
    for p in paths:
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if sr != 16000:
            import soxr

            x = soxr.resample(x, sr, 16000).astype(np.float32)
        out.append(np.ascontiguousarray(x))
    return out


def torch_features(waves: list[np.ndarray], set_name: str, batch: int = 16) -> np.ndarray:
    """Functionals of every clip, batched by length (sorted, `batch` clips a batch)."""
    fe = FunctionalFrontEnd(set_name).eval()
    order = np.argsort([len(w) for w in waves], kind="stable")
    out = np.zeros((len(waves), sum(fe.dims)), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            lengths = torch.tensor([len(waves[j]) for j in idx])
            wave = torch.zeros(len(idx), int(lengths.max()))
            for k, j in enumerate(idx):
                wave[k, : len(waves[j])] = torch.from_numpy(waves[j])
            out[idx] = fe(wave, lengths).numpy()
    return out


def features(corpus: str, waves: list[np.ndarray], cache: Path | None) -> dict[str, np.ndarray]:
    """{set: [n, D]} for the openSMILE and torch sets (cached as .npy under `cache`)."""
    feats = {}
    for s in SMILE_SETS + TORCH_SETS:
        f = cache / f"{corpus}_{s}.npy" if cache else None
        if f is not None and f.exists():
            feats[s] = np.load(f)
            continue
        t0 = time.perf_counter()
        if s in SMILE_SETS:
            feats[s] = np.stack([smile.functionals(w, 16000, s) for w in waves])
        else:
            feats[s] = torch_features(waves, s)
        print(f"  {s}: {feats[s].shape[1]} features in {time.perf_counter() - t0:.1f} s")
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, feats[s])
    return feats


def per_speaker_z(x: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    out = np.zeros_like(x)
    for s in np.unique(speakers):
        m = speakers == s
        mu, sd = x[m].mean(0), x[m].std(0)
        out[m] = (x[m] - mu) / np.where(sd > 1e-8, sd, 1.0)
    return out


def loso_log_probs(x: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Held-out log-probabilities [n, C] of the per-speaker-z + balanced LR recipe."""
    classes = np.unique(y)
    out = np.zeros((len(y), len(classes)))
    z = per_speaker_z(x, speakers)
    for s in np.unique(speakers):
        te = speakers == s
        p = np.zeros((te.sum(), len(classes)))
        for c in C_GRID:
            lr = LogisticRegression(C=c, class_weight="balanced", max_iter=300)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                lr.fit(z[~te], y[~te])
            p += lr.predict_proba(z[te])
        out[te] = np.log(p / len(C_GRID) + 1e-12)
    return out


def scores(lp: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> tuple[float, float, float]:
    classes = np.unique(y)
    pred = classes[lp.argmax(1)]
    pooled = recall_score(y, pred, average="macro")
    per = []
    for s in np.unique(speakers):  # UA over the classes the speaker has
        m = speakers == s
        per.append(recall_score(y[m], pred[m], labels=np.unique(y[m]), average="macro"))
    return 100 * pooled, 100 * float(np.mean(per)), 100 * float(np.min(per))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="emodb", choices=["emodb", "casia"])
    ap.add_argument("--cache", type=Path, default=None, help="folder for the feature matrices")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths, speakers, labels = corpus_files(args.corpus)
    print(f"{args.corpus}: {len(paths)} clips, {len(set(speakers))} speakers")
    feats = features(args.corpus, load_waves(paths), args.cache)
    y, spk = np.array(labels), np.array(speakers)
    lps = {}
    for s, x in feats.items():
        t0 = time.perf_counter()
        lps[s] = loso_log_probs(x, y, spk)
        print(f"  fitted {s} in {time.perf_counter() - t0:.0f} s")
    combos = {
        "openSMILE egemaps+compare+is10": SMILE_SETS,
        "torch compact+medium+large": TORCH_SETS,
        "torch compact+large": ("compact", "large"),
        "torch compact": ("compact",),
        "torch medium": ("medium",),
        "torch large": ("large",),
        "openSMILE egemaps": ("egemaps",),
        "openSMILE compare": ("compare",),
        "openSMILE is10": ("is10",),
        "all six": SMILE_SETS + TORCH_SETS,
    }
    print(f"\n{args.corpus}, LOSO over all speakers: development estimate, not a test score")
    print(f"| {'features':32s} | UA pooled | UA mean/speaker | UA min/speaker |")
    print(f"|{'-' * 34}|-----------|-----------------|----------------|")
    for name, sets in combos.items():
        lp = np.mean([lps[s] for s in sets], axis=0)
        ua, mean, low = scores(lp, y, spk)
        print(f"| {name:32s} | {ua:9.1f} | {mean:15.1f} | {low:14.1f} |")


if __name__ == "__main__":
    main()
