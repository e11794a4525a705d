"""The paper's ablation (0 vs 5 STL layers) under two protocols, reported from run reports."""

from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stlser import config as config_mod
from stlser.analysis.ablation_facts import (
    BASE_CONFIGS,
    LABELS,
    PAPER,
    RESERVED,
    SI_PROTOCOL,
    STL_DEPTHS,
)
from stlser.analysis.common import _log, _report, fold_stats
from stlser.analysis.embedding_maps import embeddings
from stlser.analysis.learning_curves import curves
from stlser.analysis.rendering import render_reproduce
from stlser.analysis.sweeps import split_values
from stlser.config import ExperimentConfig
from stlser.utils import environment, write_json, write_text


# ------------------------------------------------------------------------------- reproduce
def _parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    items = split_values(seeds) if isinstance(seeds, str) else list(seeds)
    out = [int(s) for s in items]
    if not out:
        raise ValueError("reproduce needs at least one seed")
    return out


def reproduce_configs(
    corpus: str,
    root: str | Path,
    seeds: str | Sequence[int] = "0,1,2",
    overrides: list[str] | None = None,
) -> dict[str, ExperimentConfig]:
    """The four cells of :func:`reproduce`: ``<protocol>_stl<L>`` → config."""
    overrides = list(overrides or [])
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in RESERVED:
            raise ValueError(
                f"reproduce sets {key} itself (cells: protocol paper/speaker-independent × "
                f"{list(STL_DEPTHS)} STL layers); use `stlser sweep` for other values"
            )
    seed_list = _parse_seeds(seeds)
    base = BASE_CONFIGS.get(corpus)
    si = SI_PROTOCOL.get(corpus, "loso")
    cells = {}
    for protocol in ("paper", si):
        for n_layers in STL_DEPTHS:
            sets = [
                f"data.corpus={corpus}",
                f"data.labels={LABELS.get(corpus, 'native')}",
                *overrides,  # after the label default so a user may choose e.g. 4class
                f"split.protocol={protocol}",
                f"split.seeds={json.dumps(seed_list)}",
                f"model.stl_layers={n_layers}",
            ]
            cfg = config_mod.load(base, sets)
            cfg.data.root = str(root)
            cfg.name = f"reproduce-{corpus}-{protocol}-stl{n_layers}"
            cells[f"{protocol}_stl{n_layers}"] = cfg
    return cells


def _cell_summary(run: Path, out: Path) -> dict[str, Any]:
    rep = _report(run)
    wa_m, wa_s = fold_stats(rep, "wa")
    ua_m, ua_s = fold_stats(rep, "ua")
    f1_m, f1_s = fold_stats(rep, "macro_f1")
    conf = np.asarray(rep.confusion)
    support = conf.sum(1)
    return {
        "run": str(run.relative_to(out)),
        "protocol": rep.extra.get("protocol"),
        "speaker_independent": rep.speaker_independent,
        "stl_layers": rep.extra.get("stl_layers"),
        "n_params": rep.n_params,
        "n": rep.n,
        "labels": rep.labels,
        "n_folds": len(rep.folds),
        "wa": rep.wa,
        "ua": rep.ua,
        "macro_f1": rep.macro_f1,
        "wa_ci95": rep.wa_ci95,
        "ua_ci95": rep.ua_ci95,
        "wa_mean": wa_m,
        "wa_std": wa_s,
        "ua_mean": ua_m,
        "ua_std": ua_s,
        "macro_f1_mean": f1_m,
        "macro_f1_std": f1_s,
        "majority_wa": float(support.max() / support.sum()),
        "chance_ua": 1.0 / int((support > 0).sum()),
        "seconds": rep.seconds,
        "folds": [
            {
                k: f.get(k)
                for k in (
                    "fold",
                    "test_speakers",
                    "n",
                    "wa",
                    "ua",
                    "macro_f1",
                    "best_epoch",
                    "epochs_run",
                    "seconds",
                )
            }
            for f in rep.folds
        ],
    }


def sign_test(improved: int, worsened: int) -> float:
    """Two-sided exact sign test p-value (ties dropped beforehand)."""
    n = improved + worsened
    if n == 0:
        return 1.0
    k = min(improved, worsened)
    return float(min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n))


def paired_gain(stl0: dict[str, Any], stl5: dict[str, Any]) -> dict[str, Any]:
    """STL gain (stl5 − stl0): pooled, and per fold paired by fold name (same test sets)."""
    f0 = {f["fold"]: f for f in stl0["folds"]}
    f5 = {f["fold"]: f for f in stl5["folds"]}
    common = [name for name in f5 if name in f0]
    res: dict[str, Any] = {"folds": common, "n_folds": len(common)}
    for key in ("wa", "ua", "macro_f1"):
        d = np.asarray([f5[n][key] - f0[n][key] for n in common], dtype=float)
        better, worse = int((d > 0).sum()), int((d < 0).sum())
        res[key] = {
            "pooled": stl5[key] - stl0[key],
            "relative": (stl5[key] / stl0[key] - 1) if stl0[key] > 0 else None,
            "fold_mean": float(d.mean()) if len(d) else None,
            "fold_std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "improved": better,
            "worsened": worse,
            "tied": int(len(d) - better - worse),
            "sign_test_p": sign_test(better, worse),
            "per_fold": d.tolist(),
        }
    return res


def reproduce(
    corpus: str,
    root: str | Path,
    out: str | Path,
    seeds: str | Sequence[int] = "0,1,2",
    overrides: list[str] | None = None,
) -> Path:
    """The paper's ablation (0 vs 5 STL layers) under two protocols; returns report.md's path.

    Cells: the paper's random stratified 7/1/2 split (one fold per seed) and the corpus's
    speaker-independent protocol (leave-one-session-out on IEMOCAP, leave-one-speaker-out
    elsewhere), each with 0 and 5 STL layers, into ``out/<protocol>_stl<L>/`` (finished cells
    are reused, interrupted ones resume). Then t-SNE and learning curves of the 5-layer runs,
    ``out/summary.json`` and ``out/report.md``, both generated from the run reports.
    """
    from stlser import driver

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    seed_list = _parse_seeds(seeds)
    cells = reproduce_configs(corpus, root, seed_list, overrides)
    t0 = time.time()
    for name, cfg in cells.items():
        run = out / name
        if (run / "report.json").exists():
            _log(f"reproduce: {name} already finished, reused")
            continue
        _log(f"reproduce: {name} → {run}")
        driver.crossval(cfg, run, resume=True)

    protocols = list(dict.fromkeys(cfg.split.protocol for cfg in cells.values()))
    # The classic eGeMAPS + linear-SVM baseline on exactly the speaker-independent folds.

    baselines = {}
    for protocol in protocols:
        if protocol == "paper":
            continue
        name = f"{protocol}_baseline"
        if not (out / name / "report.json").exists():
            _log(f"reproduce: {name} → {out / name}")
            driver.baseline(cells[f"{protocol}_stl5"], out / name)
        baselines[name] = out / name
    summary_cells = {name: _cell_summary(out / name, out) for name in [*cells, *baselines]}
    gains, embeds, figures = {}, {}, {}
    for protocol in protocols:
        c0, c5 = summary_cells[f"{protocol}_stl0"], summary_cells[f"{protocol}_stl5"]
        gains[protocol] = paired_gain(c0, c5)
        run5 = out / f"{protocol}_stl5"
        emb_png = embeddings(run5)
        embeds[protocol] = json.loads(emb_png.with_suffix(".json").read_text())
        embeds[protocol].pop("per_fold", None)
        figures[protocol] = {
            "embeddings": str(emb_png.relative_to(out)),
            "curves": str(curves(run5).relative_to(out)),
            "confusion_stl0": f"{protocol}_stl0/confusion.png",
            "confusion_stl5": f"{protocol}_stl5/confusion.png",
        }

    env = environment()
    env["cpu_model"] = env["processor"]
    command = shlex.join(
        ["stlser", "reproduce", "--corpus", corpus, "--root", str(root), "-o", str(out)]
        + ["--seeds", ",".join(map(str, seed_list))]
        + [x for o in overrides for x in ("--set", o)]
    )
    summary = {
        "command": command,
        "argv": list(sys.argv),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "environment": env,
        "corpus": corpus,
        "root": str(root),
        "seeds": seed_list,
        "overrides": overrides,
        "comparable_to_paper": corpus == PAPER["corpus"],
        "paper": PAPER,
        "cells": summary_cells,
        "gains": gains,
        "embeddings": embeds,
        "figures": figures,
        "seconds_this_call": round(time.time() - t0, 1),
        "seconds_training": round(sum(c["seconds"] or 0 for c in summary_cells.values()), 1),
    }
    write_json(out / "summary.json", summary)
    report = out / "report.md"
    write_text(report, render_reproduce(summary, protocols))
    return report
