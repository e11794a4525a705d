"""t-SNE maps of the utterance embeddings (Z0, Z_L) and separation measures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from stlser.analysis.common import KNN_K, _fold_dirs, _report, _save_figure, _stl_layers
from stlser.results import RunReport
from stlser.utils import write_json


# ---------------------------------------------------------------------- separation measures
def _silhouette(x: np.ndarray, y: np.ndarray) -> float | None:
    """Mean silhouette of the true classes (euclidean); None when undefined (< 2 classes)."""
    from sklearn.metrics import silhouette_score

    k = len(np.unique(y))
    if k < 2 or k > len(y) - 1:
        return None
    return float(silhouette_score(x, y, metric="euclidean"))


def knn_accuracy(x: np.ndarray, y: np.ndarray, k: int = KNN_K) -> float | None:
    """Leave-one-out k-nearest-neighbour label accuracy (ties go to the nearer neighbour).

    A second, classifier-like measure of class separation: the share of points whose k nearest
    other points mostly carry their own label. None when there are too few points.
    """
    from sklearn.neighbors import NearestNeighbors

    y = np.asarray(y)
    n = len(y)
    if n <= k or len(np.unique(y)) < 2:
        return None
    idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)  # self excluded
    _, codes = np.unique(y, return_inverse=True)
    votes = codes[idx]
    counts = np.zeros((n, codes.max() + 1))
    rank_bonus = 1e-3 * (k - np.arange(k)) / k  # nearer neighbours break ties
    np.add.at(counts, (np.repeat(np.arange(n), k), votes.ravel()), 1.0 + np.tile(rank_bonus, n))
    return float(np.mean(counts.argmax(1) == codes))


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)


def _weighted_mean(values: list[float | None], weights: list[int]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    if not pairs:
        return None
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))


def tsne_perplexity(n: int) -> float:
    """Perplexity adapted to the number of points: (n - 1) / 3 clipped to [2, 30]."""
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    return float(np.clip((n - 1) / 3, 2.0, 30.0))


def _tsne(x: np.ndarray, perplexity: float, random_state: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = x.astype(np.float64)
    if x.shape[1] > 50:
        x = PCA(n_components=50, random_state=random_state).fit_transform(x)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=random_state,
    )
    # One OpenMP thread: Barnes-Hut t-SNE slows down 4-10x when its threads compete for busy
    # cores (measured on 2 cores under load), and the result does not depend on the count.
    with threadpool_limits(1):
        return tsne.fit_transform(x)


# ------------------------------------------------------------------------------ embeddings
def embeddings(
    run: str | Path,
    out: str | Path | None = None,
    standardize: bool = True,
    random_state: int = 0,
) -> Path:
    """t-SNE of Z0 (before the STL) and Z_L (after) for every fold's test utterances.

    Each fold has its own trained model, so the separation measures in the original space
    (silhouette of the true classes and leave-one-out 5-NN accuracy) are computed per fold and
    averaged weighted by the fold's size; the pooled versions (all folds together, each fold
    standardised per dimension when `standardize`) and the same measures in the 2-D t-SNE map
    are reported too. Writes the PNG (default ``<run>/embeddings.png``) and a JSON of the numbers
    beside it (``embeddings.json``). Returns the PNG path.
    """
    run = Path(run)
    rep = _report(run)
    labels = [str(x) for x in rep.labels]
    out = Path(out) if out else run / "embeddings.png"
    n_layers = _stl_layers(run, rep)

    per_fold, pooled = [], {"z0": [], "zL": []}
    ys = []
    for fdir in _fold_dirs(run, "embeddings.npz"):
        d = np.load(fdir / "embeddings.npz")
        y = np.asarray(d["label"], dtype=int)
        entry: dict[str, Any] = {"fold": fdir.name, "n": int(len(y))}
        for key in ("z0", "zL"):
            z = np.asarray(d[key], dtype=np.float64)
            entry[key] = {"silhouette": _silhouette(z, y), "knn_acc": knn_accuracy(z, y)}
            pooled[key].append(_standardize(z) if standardize else z)
        per_fold.append(entry)
        ys.append(y)
    y = np.concatenate(ys)
    n = len(y)
    if not labels:
        labels = [str(i) for i in range(int(y.max()) + 1)]
    perplexity = tsne_perplexity(n)
    weights = [f["n"] for f in per_fold]

    result: dict[str, Any] = {
        "run": str(run),
        "n": n,
        "n_folds": len(per_fold),
        "labels": labels,
        "stl_layers": n_layers,
        "standardize_per_fold": standardize,
        "perplexity": perplexity,
        "random_state": random_state,
        "knn_k": KNN_K,
        "figure": out.name,
    }
    maps = {}
    for key in ("z0", "zL"):
        x = np.concatenate(pooled[key])
        xy = _tsne(x, perplexity, random_state)
        maps[key] = xy
        result[key] = {
            "dim": int(x.shape[1]),
            "silhouette": _weighted_mean([f[key]["silhouette"] for f in per_fold], weights),
            "knn_acc": _weighted_mean([f[key]["knn_acc"] for f in per_fold], weights),
            "silhouette_pooled": _silhouette(x, y),
            "knn_acc_pooled": knn_accuracy(x, y),
            "silhouette_tsne": _silhouette(xy, y),
            "knn_acc_tsne": knn_accuracy(xy, y),
        }
    result["per_fold"] = per_fold
    _plot_embeddings(maps, y, labels, result, rep, out)
    write_json(out.with_suffix(".json"), result)
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:.1f} %" if pct else f"{x:.3f}"


def _plot_embeddings(
    maps: dict[str, np.ndarray],
    y: np.ndarray,
    labels: list[str],
    res: dict[str, Any],
    rep: RunReport,
    out: Path,
) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    fig = Figure(figsize=(12, 5.8), layout="constrained")
    axes = fig.subplots(1, 2)
    n_layers = res["stl_layers"]
    names = {
        "z0": "Z0: before the STL",
        "zL": "Z_L = Z0 (no STL layers)"
        if n_layers == 0
        else f"Z{n_layers if n_layers is not None else '_L'}: after {n_layers} STL layers",
    }
    for ax, key in zip(axes, ("z0", "zL"), strict=True):
        xy, m = maps[key], res[key]
        for i, name in enumerate(labels):
            sel = y == i
            if sel.any():
                ax.scatter(
                    xy[sel, 0], xy[sel, 1], s=9, alpha=0.75, color=cmap(i % cmap.N), label=name
                )
        ax.set_title(
            f"{names[key]}\nsilhouette {_fmt(m['silhouette'])} (t-SNE map {_fmt(m['silhouette_tsne'])}),"
            f" {KNN_K}-NN acc {_fmt(m['knn_acc'], True)}",
            fontsize=10,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2)
    fig.suptitle(
        f"t-SNE of test-utterance embeddings — {rep.extra.get('corpus', '')} {rep.extra.get('protocol', '')}, "
        f"{res['n']} utterances from {res['n_folds']} fold(s), perplexity {res['perplexity']:.0f}\n"
        "silhouette and k-NN measured in the original embedding space (per fold, size-weighted mean)",
        fontsize=10,
    )
    _save_figure(fig, out)
