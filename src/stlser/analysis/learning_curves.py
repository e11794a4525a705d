"""Per-epoch learning curves of every fold of a run (Fig. 4b)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from stlser.analysis.common import _fold_dirs, _report, _save_figure
from stlser.utils import write_csv


# ---------------------------------------------------------------------------------- curves
def _epoch_table(path: Path) -> pd.DataFrame:
    """One row per epoch (1-based) from a Lightning CSVLogger metrics.csv."""
    m = pd.read_csv(path)
    cols = {}
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "val_ua"):
        for cand in (name, f"{name}_epoch"):
            if cand in m.columns:
                cols[name] = cand
                break
    if "epoch" not in m.columns or not cols:
        raise ValueError(f"{path} has no per-epoch metrics (columns: {list(m.columns)})")
    t = m.groupby("epoch")[list(cols.values())].last()  # last non-null value per epoch
    t = t.rename(columns={v: k for k, v in cols.items()})
    t.index = t.index.astype(int) + 1
    t.index.name = "epoch"
    return t.reindex(columns=["train_loss", "train_acc", "val_loss", "val_acc", "val_ua"])


def curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Per-epoch train/validation loss and accuracy of every fold, best epoch marked.

    Folds are thin lines, the mean over the folds still training at each epoch is bold; a star
    marks each fold's early-stopping point (the epoch whose weights were kept). Writes the PNG
    (default ``<run>/curves.png``) and the long table ``curves.csv`` beside it.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    run = Path(run)
    rep = _report(run)
    out = Path(out) if out else run / "curves.png"
    tables, best = {}, {}
    for fdir in _fold_dirs(run, "logs/metrics.csv"):
        tables[fdir.name] = _epoch_table(fdir / "logs" / "metrics.csv")
        info = fdir / "fold.json"
        if info.exists():
            best[fdir.name] = json.loads(info.read_text()).get("best_epoch")
    long = pd.concat(tables, names=["fold"]).reset_index()
    long["best_epoch"] = long["fold"].map(best)
    write_csv(out.with_suffix(".csv"), long)

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = {"train": "C0", "val": "C1"}
    for ax, what, ylabel in ((axes[0], "loss", "cross-entropy"), (axes[1], "acc", "accuracy")):
        for part in ("train", "val"):
            col = f"{part}_{what}"
            wide = pd.DataFrame({f: t[col] for f, t in tables.items()})
            for f, series in wide.items():
                s = series.dropna()
                ax.plot(s.index, s.values, color=colors[part], lw=0.7, alpha=0.35)
                be = best.get(f)
                if part == "val" and be is not None and be in s.index:
                    ax.plot([be], [s.loc[be]], marker="*", ms=9, color="C3", mec="k", mew=0.4)
            mean = wide.mean(axis=1, skipna=True).dropna()
            ax.plot(mean.index, mean.values, color=colors[part], lw=2.2, label=f"{part} (mean)")
        ax.plot([], [], marker="*", ls="", color="C3", mec="k", mew=0.4, label="best epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    axes[0].set_title("loss")
    axes[1].set_title("accuracy")
    bests = [str(b) for b in best.values() if b is not None]
    fig.suptitle(
        f"learning curves — {rep.extra.get('corpus', '')} {rep.extra.get('protocol', '')}, "
        f"{rep.extra.get('stl_layers', '?')} STL layers, {len(tables)} fold(s) (thin) and their mean "
        f"(bold); best epochs: {', '.join(bests) or '–'}",
        fontsize=10,
    )
    return _save_figure(fig, out)
