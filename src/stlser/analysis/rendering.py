"""Number formatting and report.md of :func:`stlser.analysis.reproduce`."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from stlser.analysis.ablation_facts import STL_DEPTHS
from stlser.analysis.common import KNN_K
from stlser.analysis.embedding_maps import _fmt


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _ci(v: float, ci: Sequence[float] | None) -> str:
    return f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else _pct(v)


def _signed(x: float | None, scale: float = 100.0, unit: str = " pp") -> str:
    return "–" if x is None else f"{scale * x:+.1f}{unit}"


def render_reproduce(s: dict[str, Any], protocols: list[str]) -> str:
    """report.md of :func:`reproduce`, generated entirely from `summary.json`'s content."""
    env, cells, paper = s["environment"], s["cells"], s["paper"]
    some = next(iter(cells.values()))
    labels = some["labels"]
    si = [p for p in protocols if p != "paper"]
    lines = [
        f"# Reproduction of the STL ablation on {s['corpus']}",
        "",
        "Wang et al., *A Novel End-to-End Speech Emotion Recognition Network with Stacked "
        'Transformer Layers*, ICASSP 2021: the same CNN-BiLSTM network without ("truncated") '
        f"and with {paper['stl_layers']} stacked transformer layers, under the paper's random "
        f"split and under the speaker-independent protocol ({', '.join(si)}). Every number below "
        "is read from the run reports (`summary.json` has them all).",
        "",
        "```",
        s["command"],
        "```",
        "",
        f"- invoked as: `{shlex.join(s['argv'])}`",
        f"- date (UTC): {s['date']}",
        f"- machine: {env.get('cpu_model')}, {env.get('cpu_count')} logical CPUs, "
        f"torch threads {env.get('torch_threads')}; {env.get('platform')}",
        f"- versions: python {env.get('python')}, stlser {env.get('stlser')}, torch {env.get('torch')}, "
        f"lightning {env.get('lightning')}, scikit-learn {env.get('scikit-learn')}, numpy {env.get('numpy')}",
        f"- corpus: {s['corpus']} at `{s['root']}`, {len(labels)} classes ({', '.join(labels)}); "
        + ", ".join(f"{p}: {cells[p + '_stl5']['n']} test predictions" for p in protocols),
        f"- paper-protocol seeds: {', '.join(map(str, s['seeds']))} (one random stratified 7/1/2 split each)",
        f"- overrides applied to every cell: {', '.join(f'`{o}`' for o in s['overrides']) or 'none'}",
        f"- training time of the four cells: {s['seconds_training'] / 60:.1f} min "
        f"(this call: {s['seconds_this_call'] / 60:.1f} min)",
        "",
        "## Results",
        "",
        "WA = accuracy, UA = mean per-class recall. Mean ± std over folds (paper protocol: over "
        "seeds); pooled = all test predictions together, with a 95 % bootstrap interval.",
        "",
        "| protocol | system | params | folds | WA mean ± std | UA mean ± std | pooled WA [95 % CI] "
        "| pooled UA [95 % CI] | macro-F1 | best epochs | minutes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for protocol in protocols:
        for n_layers in STL_DEPTHS:
            c = cells[f"{protocol}_stl{n_layers}"]
            system = "truncated (no STL)" if n_layers == 0 else f"{n_layers} STL layers"
            kind = "speaker-dependent" if protocol == "paper" else "speaker-independent"
            bests = ", ".join(str(f["best_epoch"]) for f in c["folds"])
            lines.append(
                f"| {protocol} ({kind}) | {system} | {c['n_params']:,} | {c['n_folds']} | "
                f"{_pm(c['wa_mean'], c['wa_std'])} | {_pm(c['ua_mean'], c['ua_std'])} | "
                f"{_ci(c['wa'], c['wa_ci95'])} | {_ci(c['ua'], c['ua_ci95'])} | "
                f"{_pct(c['macro_f1'])} | {bests} | {(c['seconds'] or 0) / 60:.1f} |"
            )
        if f"{protocol}_baseline" in cells:
            c = cells[f"{protocol}_baseline"]
            lines.append(
                f"| {protocol} (speaker-independent) | eGeMAPS + linear SVM (same folds) | "
                f"{c['n_params'] or 0:,} | {c['n_folds']} | "
                f"{_pm(c['wa_mean'], c['wa_std'])} | {_pm(c['ua_mean'], c['ua_std'])} | "
                f"{_ci(c['wa'], c['wa_ci95'])} | {_ci(c['ua'], c['ua_ci95'])} | "
                f"{_pct(c['macro_f1'])} | – | {(c['seconds'] or 0) / 60:.1f} |"
            )
    c_any = cells[f"{protocols[0]}_stl0"]
    lines += [
        "",
        f"Reference points: always predicting the most frequent class gives WA "
        f"{_pct(c_any['majority_wa'])} % on the paper-protocol test sets; chance UA is "
        f"{_pct(c_any['chance_ua'])} %.",
        "",
        "## Beside the paper",
        "",
    ]
    if not s["comparable_to_paper"]:
        lines += [
            f"**Not directly comparable.** The paper's numbers are on IEMOCAP, 4 classes; this run "
            f"is on {s['corpus']} with {len(labels)} classes. Compare the direction and size of "
            "the STL gain, not the absolute accuracies. Parameter counts differ from the paper's "
            "also by the classifier, which grows with the number of classes.",
            "",
        ]
    else:
        lines += [
            "Same corpus and label set as the paper. The paper's figures come from one random "
            "7/1/2 split, so compare them with the paper-protocol row; the speaker-independent row "
            "is the stricter protocol the paper did not report.",
            "",
        ]
    pp = "paper"
    head = "| | paper (IEMOCAP, random 7/1/2) | ours: paper protocol |" + "".join(
        f" ours: {p} |" for p in si
    )
    lines += [head, "|---|---:|---:|" + "---:|" * len(si)]

    def row(name: str, paper_val: str, fn) -> str:
        vals = [fn(cells[f"{p}_stl0"], cells[f"{p}_stl5"], gains_of(p)) for p in [pp, *si]]
        return f"| {name} | {paper_val} | " + " | ".join(vals) + " |"

    def gains_of(p: str) -> dict[str, Any]:
        return s["gains"][p]

    lines += [
        row(
            "params, truncated",
            f"{paper['params_stl0'] // 1000} K",
            lambda c0, c5, g: f"{c0['n_params']:,}",
        ),
        row(
            f"params, {paper['stl_layers']} STL",
            f"{paper['params_stl5'] // 1000} K",
            lambda c0, c5, g: f"{c5['n_params']:,}",
        ),
        row(
            "WA, truncated (mean over folds)",
            f"{_pct(paper['wa_stl0'], 2)} %",
            lambda c0, c5, g: f"{_pct(c0['wa_mean'], 2)} %",
        ),
        row(
            f"WA, {paper['stl_layers']} STL (mean over folds)",
            f"≈ {_pct(paper['wa_stl5'], 2)} % (derived: 72.79 × 1.185)",
            lambda c0, c5, g: f"{_pct(c5['wa_mean'], 2)} %",
        ),
        row(
            "WA gain (of the means)",
            _signed(paper["wa_stl5"] - paper["wa_stl0"]),
            lambda c0, c5, g: _signed(c5["wa_mean"] - c0["wa_mean"]),
        ),
        row(
            "relative WA gain (of the means)",
            _signed(paper["relative_gain"], unit=" %"),
            lambda c0, c5, g: (
                _signed(c5["wa_mean"] / c0["wa_mean"] - 1, unit=" %") if c0["wa_mean"] > 0 else "–"
            ),
        ),
    ]
    lines += [
        "",
        "## What the stacked transformer layers add",
        "",
        "Per-fold paired differences (5 STL − truncated) on the same test sets. A fold counts as "
        "improved when the difference is above zero; p is the two-sided exact sign test.",
        "",
        "| protocol | metric | pooled Δ | mean Δ ± std over folds | improved / worsened / tied | sign-test p |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for p in protocols:
        for key, name in (("wa", "WA"), ("ua", "UA"), ("macro_f1", "macro-F1")):
            g = s["gains"][p][key]
            mean_std = (
                "–"
                if g["fold_mean"] is None
                else f"{100 * g['fold_mean']:+.1f} ± {100 * g['fold_std']:.1f} pp"
            )
            lines.append(
                f"| {p} | {name} | {_signed(g['pooled'])} | {mean_std} | "
                f"{g['improved']} / {g['worsened']} / {g['tied']} | {g['sign_test_p']:.3g} |"
            )
    lines += [
        "",
        "## Embeddings before and after the STL (5-layer runs)",
        "",
        f"Test-utterance embeddings Z0 (the 1-D convolution's output, before the STL) and "
        f"Z{paper['stl_layers']} (after). Silhouette of the true classes (−1 … 1, higher = "
        f"tighter, better separated classes) and leave-one-out {KNN_K}-NN label accuracy, both in "
        "the original embedding space, per fold and averaged by fold size; the t-SNE columns "
        "measure the same in the 2-D map drawn in the figure.",
        "",
        "| protocol | embedding | silhouette | 5-NN acc | silhouette (t-SNE) | 5-NN acc (t-SNE) | figure |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for p in protocols:
        e = s["embeddings"][p]
        for key, name in (("z0", "Z0 (before)"), ("zL", f"Z{e.get('stl_layers')} (after)")):
            m = e[key]
            lines.append(
                f"| {p} | {name} | {_fmt(m['silhouette'])} | {_fmt(m['knn_acc'], True)} | "
                f"{_fmt(m['silhouette_tsne'])} | {_fmt(m['knn_acc_tsne'], True)} | "
                f"[t-SNE]({s['figures'][p]['embeddings']}) |"
            )
    lines += ["", "## Figures", ""]
    for p in protocols:
        f = s["figures"][p]
        lines += [
            f"- {p}: [t-SNE of Z0 vs Z_L]({f['embeddings']}), "
            f"[learning curves, 5 STL]({f['curves']}), "
            f"confusion matrices [truncated]({f['confusion_stl0']}) and [5 STL]({f['confusion_stl5']})",
        ]
    lines += [
        "",
        "## Caveats",
        "",
        "- The paper protocol's random split puts the same speakers in training and test: it "
        "measures speaker-dependent accuracy and is shown only to compare with the paper.",
        "- In the paper protocol every seed draws a different split; all seeds train with the "
        "same model seed.",
        "- Each fold trains its own model, so pooled embeddings come from different networks; "
        "the separation numbers are therefore computed per fold.",
        "",
    ]
    return "\n".join(lines)
