"""Run reports: a predictions table scored into a `RunReport` (``report.json``, ``report.md``,
``confusion.png``) with the metrics of `stlser.metrics`, and the predictions table itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stlser.metrics import bootstrap_ci, compute, confusion, per_class
from stlser.results import FOLD_KEYS, FoldResult, RunReport
from stlser.utils import atomic_path, md_cell, write_text


# --------------------------------------------------------------------------------- reports
def _fold_stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single fold) across folds."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def write_report(
    run_dir: str | os.PathLike,
    predictions: Any,
    labels: list[str],
    folds: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> RunReport:
    """Score a run and write ``report.json``, ``report.md`` and ``confusion.png`` into `run_dir`.

    `predictions` is a pandas DataFrame with columns ``utt_id, fold, speaker, label, pred``
    (optionally ``prob_<label>``). Pooled metrics and their 95 % bootstrap intervals use every
    row; per-fold metrics use the rows whose ``fold`` equals the fold's name. `folds` gives one
    dict per fold (``fold``, ``test_speakers``, ``best_epoch``, plus anything else worth
    keeping, e.g. ``val_ua``); every fold must have predictions and vice versa. `extra` (e.g.
    n_params, seconds, system, config, protocol, speaker_independent) is merged in last.
    Returns the :class:`~stlser.results.RunReport`.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    labels = [str(x) for x in labels]
    missing = [
        c for c in ("utt_id", "fold", "speaker", "label", "pred") if c not in predictions.columns
    ]
    if missing:
        raise ValueError(f"predictions lack columns {missing}")
    if len(predictions) == 0:
        raise ValueError("predictions are empty")
    y_true = predictions["label"].astype(str).tolist()
    y_pred = predictions["pred"].astype(str).tolist()
    fold_col = predictions["fold"].astype(str)

    names = [str(f["fold"]) for f in folds]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate fold names in folds: {names}")
    unknown = sorted(set(fold_col) - set(names))
    if unknown:
        raise ValueError(f"predictions name folds not in `folds`: {unknown}")

    fold_entries: list[FoldResult] = []
    for f in folds:
        name = str(f["fold"])
        mask = (fold_col == name).to_numpy()
        if not mask.any():
            raise ValueError(f"fold {name!r} has no predictions")
        ft = [y for y, m in zip(y_true, mask, strict=True) if m]
        fp = [y for y, m in zip(y_pred, mask, strict=True) if m]
        m = compute(ft, fp, labels)
        fold_entries.append(
            FoldResult(
                fold=name,
                test_speakers=[str(s) for s in f.get("test_speakers", [])],
                n=int(mask.sum()),
                wa=m["wa"],
                ua=m["ua"],
                macro_f1=m["macro_f1"],
                best_epoch=f.get("best_epoch"),
                extra={k: v for k, v in f.items() if k not in FOLD_KEYS},
            )
        )

    pooled = compute(y_true, y_pred, labels)
    report: dict[str, Any] = {
        **pooled,
        "ua_ci95": list(bootstrap_ci(y_true, y_pred, labels, "ua")),
        "wa_ci95": list(bootstrap_ci(y_true, y_pred, labels, "wa")),
        "macro_f1_ci95": list(bootstrap_ci(y_true, y_pred, labels, "macro_f1")),
        "n": len(y_true),
        "folds": [f.to_dict() for f in fold_entries],
        "confusion": confusion(y_true, y_pred, labels),
        "per_class": per_class(y_true, y_pred, labels),
        "labels": labels,
        "n_params": None,
        "seconds": None,
    }
    for key in ("ua", "wa", "macro_f1"):
        mean, std = _fold_stats([getattr(e, key) for e in fold_entries])
        report[f"{key}_fold_mean"], report[f"{key}_fold_std"] = mean, std
    if "speaker_independent" not in extra:
        flags = [f.get("speaker_independent") for f in folds]
        if flags and all(isinstance(x, bool) for x in flags):
            report["speaker_independent"] = all(flags)
    report.update(extra)
    result = RunReport.from_dict(report)

    result.save(run_dir / "report.json")
    write_text(run_dir / "report.md", render_markdown(result))
    plot_confusion(result.confusion, labels, run_dir / "confusion.png", title=result.system)
    return result


def validate_report(d: dict[str, Any]) -> RunReport:
    """Check a report dict's schema; raise ValueError listing every problem, else parse it."""
    return RunReport.from_dict(d)


# ------------------------------------------------------------------------------- rendering
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def render_markdown(r: RunReport) -> str:
    """The human-readable report: headline, per-fold, per-class and confusion tables."""
    labels = r.labels
    title = r.system or r.extra.get("name") or "run"
    lines = [f"# Report: {title}", ""]
    facts = []
    for key in ("config", "name", "corpus", "protocol"):
        if r.extra.get(key) not in (None, ""):
            facts.append(f"{key}: `{md_cell(r.extra[key])}`")
    facts.append(f"utterances: {r.n}")
    facts.append(f"folds: {len(r.folds)}")
    if r.n_params is not None:
        facts.append(f"parameters: {r.n_params:,}")
    if r.seconds is not None:
        facts.append(f"wall time: {r.seconds:.1f} s")
    lines += [" · ".join(facts), ""]
    if r.speaker_independent is True:
        lines.append(
            "**Protocol is speaker-independent**: no test speaker is seen in training or validation."
        )
    elif r.speaker_independent is False:
        lines.append(
            "**Protocol is NOT speaker-independent**: test speakers also occur in training "
            "(speaker-dependent; numbers are optimistic)."
        )
    else:
        lines.append("Speaker independence of the protocol: not stated.")
    sn = r.speaker_normalisation
    if sn is not None and sn.degenerate_speakers:
        found = sn.degenerate_speakers
        eg = md_cell(", ".join(f"{s} ({why})" for s, why in list(found.items())[:8]))
        lines += [
            "",
            f"**Speaker normalisation: {len(found)} degenerate speaker(s)** (one emotion or too few "
            f"utterances: {eg}); fallback: `{sn.speaker_fallback}`.",
        ]
    lines += ["", "## Pooled over all folds (95 % bootstrap CI over utterances)", ""]
    lines += ["| metric | % | 95 % CI | fold mean ± std |", "|---|---:|---:|---:|"]
    cis = {"wa": r.wa_ci95, "ua": r.ua_ci95, "macro_f1": r.macro_f1_ci95}
    for key, name in (
        ("wa", "WA (accuracy)"),
        ("ua", "UA (mean recall)"),
        ("macro_f1", "macro-F1"),
    ):
        mean, std = r.fold_stats.get(f"{key}_fold_mean"), r.fold_stats.get(f"{key}_fold_std")
        fm = "–" if mean is None else f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"
        lines.append(f"| {name} | {_pct(getattr(r, key))} | {_ci(cis[key])} | {fm} |")

    lines += ["", "## Per fold", ""]
    extra_cols = [c for c in ("val_ua", "C", "class_weight") if any(c in f.extra for f in r.folds)]
    head = ["fold", "test speakers", "n", "WA %", "UA %", "macro-F1 %", "best epoch", *extra_cols]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in r.folds:
        row = [
            f.fold,
            ", ".join(map(str, f.test_speakers)) or "–",
            str(f.n),
            _pct(f.wa),
            _pct(f.ua),
            _pct(f.macro_f1),
            "–" if f.best_epoch is None else str(f.best_epoch),
        ]
        for c in extra_cols:
            v = f.extra.get(c)
            row.append("–" if v is None else (_pct(v) if c == "val_ua" else str(v)))
        lines.append("| " + " | ".join(md_cell(c) for c in row) + " |")

    if r.per_class:
        lines += ["", "## Per class (pooled)", ""]
        lines += [
            "| class | precision % | recall % | F1 % | support |",
            "|---|---:|---:|---:|---:|",
        ]
        for lab in labels:
            pc = r.per_class[lab]
            lines.append(
                f"| {md_cell(lab)} | {_pct(pc['precision'])} | {_pct(pc['recall'])} | {_pct(pc['f1'])} | {pc['support']} |"
            )

    lines += ["", "## Confusion matrix (rows = true, columns = predicted)", ""]
    lines += [
        "| true \\ pred | " + " | ".join(md_cell(x) for x in labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for lab, row in zip(labels, r.confusion, strict=True):
        lines.append(f"| **{md_cell(lab)}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion matrix](confusion.png)", ""]
    return "\n".join(lines)


def plot_confusion(
    conf: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Row-normalised confusion heatmap with counts annotated, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(conf, dtype=float)
    rows = c.sum(axis=1, keepdims=True)
    norm = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)
    k = len(labels)
    size = max(4.0, 0.7 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    try:
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(k), labels=list(labels), rotation=45, ha="right")
        ax.set_yticks(range(k), labels=list(labels))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(c[i, j])}\n{100 * norm[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        ax.set_title(("Confusion (row-normalised)" + (f": {title}" if title else "")), fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def predictions_table(
    df: Any,
    ids: list[str],
    fold: str,
    labels: list[str],
    scores: np.ndarray,
    column: str = "prob",
    pred: np.ndarray | None = None,
) -> Any:
    """The predictions.csv rows of utterances `ids` (in order): truth, prediction and one
    ``<column>_<label>`` score per label (probabilities, or a classifier's decision scores);
    the prediction is the argmax of the scores unless `pred` gives the class indices."""
    import pandas as pd

    scores = np.asarray(scores)
    sub = df.set_index("utt_id").loc[ids]
    chosen = scores.argmax(1) if pred is None else np.asarray(pred)
    p = pd.DataFrame(
        {
            "utt_id": ids,
            "fold": fold,
            "speaker": sub["speaker"].astype(str).values,
            "label": sub["label"].values,
            "pred": [labels[i] for i in chosen],
        }
    )
    for j, name in enumerate(labels):
        p[f"{column}_{name}"] = scores[:, j].round(6) if column == "prob" else scores[:, j]
    return p
