"""Experiment glue: config → manifest → folds → features → train/test per fold → report.

Every run directory holds `config.yaml` (resolved), `environment.json`, `manifest.csv`,
`splits.json`, one `fold_XX/` per fold (checkpoints, logs, `model.pt`, `fold.json`,
`embeddings.npz`), `predictions.csv`, `report.json`, `report.md` and `confusion.png`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stlser import config as config_mod
from stlser.config import ExperimentConfig
from stlser.utils import environment, write_csv, write_json, write_text

SYSTEM = "cnn-bilstm-stl"


def _log(msg: str) -> None:
    print(f"[stlser] {msg}", file=sys.stderr, flush=True)


def resolve_output(cfg: ExperimentConfig, out: str | Path | None) -> Path:
    return Path(out) if out else Path("runs") / cfg.name


def prepare(cfg: ExperimentConfig, run_dir: Path) -> tuple[pd.DataFrame, list, list[str]]:
    """Manifest and folds for the config; written into the run directory."""
    from stlser import corpora, splits

    if cfg.data.manifest:
        df = corpora.read_manifest(cfg.data.manifest)
        corpora.write_manifest(df, [], run_dir / "manifest.csv")
    else:
        if not cfg.data.root:
            raise ValueError("config needs data.root (corpus folder) or data.manifest")
        df, skipped = corpora.build_manifest(cfg.data.corpus, cfg.data.root, labels=cfg.data.labels)
        corpora.write_manifest(df, skipped, run_dir / "manifest.csv")
        if skipped:
            _log(f"{len(skipped)} unreadable files skipped (see {run_dir / 'skipped.csv'})")
    folds = splits.from_config(df, cfg.split, cfg.seed)
    splits.save(folds, run_dir / "splits.json")
    labels = sorted(df["label"].unique().tolist())
    return df, folds, labels


def write_run_header(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Resolved config.yaml and environment.json (versions, threads, seed, argv) of a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config_mod.dump(cfg))
    env = environment()
    env["seed"] = cfg.seed
    env["argv"] = sys.argv
    write_json(run_dir / "environment.json", env)


def fold_data(
    cfg: ExperimentConfig, df: pd.DataFrame, feats: dict[str, np.ndarray], fold, labels: list[str]
):
    """Normalise features with statistics fitted on the fold's training part; build FoldData."""
    from stlser import features
    from stlser.training import FoldData

    fc = cfg.features
    normed, norm = features.normalize_all(feats, df, fc.normalize, list(fold.train))
    lab = dict(zip(df["utt_id"], df["label"], strict=True))
    index = {name: i for i, name in enumerate(labels)}

    def part(ids):
        return [normed[u] for u in ids], [index[lab[u]] for u in ids]

    state = norm.state()
    std = np.asarray(state.get("std", [1.0]), np.float32)
    gain_scale = (
        float(np.mean(math.log(10) / 10 / np.maximum(std, 1e-5))) if fc.kind == "logmel" else 0.0
    )
    n_features = next(iter(feats.values())).shape[1]
    return FoldData(
        part(fold.train),
        part(fold.val),
        part(fold.test),
        list(fold.test),
        labels,
        n_features,
        state,
        gain_scale,
        {"fold": fold.name, "test_speakers": list(fold.test_speakers)},
    )


def predictions_table(
    df: pd.DataFrame, ids: list[str], fold: str, labels: list[str], probs: np.ndarray
) -> pd.DataFrame:
    """The predictions.csv rows of utterances `ids` (in order): truth, prediction, probabilities."""
    sub = df.set_index("utt_id").loc[ids]
    p = pd.DataFrame(
        {
            "utt_id": ids,
            "fold": fold,
            "speaker": sub["speaker"].astype(str).values,
            "label": sub["label"].values,
            "pred": [labels[i] for i in probs.argmax(1)],
        }
    )
    for j, name in enumerate(labels):
        p[f"prob_{name}"] = probs[:, j].round(6)
    return p


def crossval(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    fail_at_epoch: int | None = None,
) -> Path:
    """Train and test every fold of the configured protocol; write the pooled report."""
    from stlser import evaluation, features
    from stlser.training import train_fold

    run = resolve_output(cfg, out)
    t0 = time.time()
    write_run_header(cfg, run)
    df, folds, labels = prepare(cfg, run)
    selected = [f for i, f in enumerate(folds) if cfg.split.folds is None or i in cfg.split.folds]
    _log(
        f"{cfg.name}: {len(df)} utterances, {len(labels)} classes, protocol {cfg.split.protocol}, "
        f"{len(selected)} folds → {run}"
    )
    feats = features.load_features(df, cfg.features.resolved(), cfg.cache_dir)
    preds, fold_infos, n_params, speed = [], [], 0, []
    for i, fold in enumerate(selected):
        fdir = run / f"fold_{i:02d}"
        done = fdir / "fold.json"
        if resume and done.exists() and (fdir / "predictions.csv").exists():
            info = json.loads(done.read_text())
            p = pd.read_csv(fdir / "predictions.csv", dtype={"speaker": str})
            _log(f"fold {i + 1}/{len(selected)} ({fold.name}) already done, reused")
        else:
            _log(
                f"fold {i + 1}/{len(selected)}: test {','.join(map(str, fold.test_speakers)) or fold.name}"
            )
            data = fold_data(cfg, df, feats, fold, labels)
            info = train_fold(cfg, data, fdir, resume=resume, fail_at_epoch=fail_at_epoch)
            p = predictions_table(df, list(fold.test), fold.name, labels, info.pop("probs"))
            write_csv(fdir / "predictions.csv", p)
        preds.append(p)
        n_params = info["n_params"]
        speed.append(info.get("utt_per_second") or 0)
        fold_infos.append(
            {
                "fold": fold.name,
                "test_speakers": list(fold.test_speakers),
                "best_epoch": info["best_epoch"],
                "epochs_run": info.get("epochs_run"),
                "seconds": info.get("seconds"),
            }
        )
    allp = pd.concat(preds, ignore_index=True)
    extra = {
        "system": SYSTEM,
        "config": cfg.name,
        "corpus": cfg.data.corpus,
        "protocol": cfg.split.protocol,
        "speaker_independent": cfg.split.protocol != "paper",
        "n_params": n_params,
        "seconds": round(time.time() - t0, 1),
        "train_utt_per_second": round(float(np.mean(speed)), 1),
        "stl_layers": cfg.model.stl_layers,
        "aggregation": cfg.model.aggregation,
        "stl_over": cfg.model.stl_over,
    }
    write_csv(run / "predictions.csv", allp)
    rep = evaluation.write_report(run, allp, labels, fold_infos, extra)
    _log(
        f"UA {100 * rep['ua']:.2f} %  WA {100 * rep['wa']:.2f} %  macro-F1 {100 * rep['macro_f1']:.2f} %  "
        f"({extra['seconds']:.0f} s)"
    )
    return run


def train(
    cfg: ExperimentConfig, out: str | Path | None, resume: bool = False, fold: int = 0
) -> Path:
    """Train (and test) one fold of the configured protocol."""
    cfg.split.folds = [fold]
    return crossval(cfg, out, resume=resume)


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path | None = None,
    cache_dir: str = ".cache/stlser",
) -> Path:
    """Score a `model.pt` artefact on every utterance of a manifest (labels must be known to it)."""
    from stlser import corpora, evaluation, features
    from stlser.config import FeatureConfig
    from stlser.training import load_artefact, predict

    model, art = load_artefact(checkpoint)
    df = corpora.read_manifest(manifest)
    labels = art["labels"]
    unknown = sorted(set(df["label"]) - set(labels))
    if unknown:
        raise ValueError(
            f"manifest has labels the model does not know: {unknown}; model labels: {labels}"
        )
    fc = FeatureConfig(**art["feature_config"])
    feats = features.load_features(df, fc.resolved(), cache_dir)
    fitted = features.Normalizer.from_state(art["normalizer"])
    # The training-time mode with the model's own global statistics; in speaker mode each
    # speaker of the manifest is standardised by its own (label-free) statistics, as in training.
    normed, _ = features.normalize_all(feats, df, fitted.mode, [], fitted=fitted)
    ids = df["utt_id"].tolist()
    probs = predict(model, [normed[u] for u in ids])["probs"]
    run = Path(out) if out else Path(checkpoint).parent / "evaluate"
    run.mkdir(parents=True, exist_ok=True)
    p = predictions_table(df, ids, "evaluate", labels, probs)
    write_csv(run / "predictions.csv", p)
    evaluation.write_report(
        run,
        p,
        labels,
        [
            {
                "fold": "evaluate",
                "test_speakers": sorted(df["speaker"].astype(str).unique()),
                "best_epoch": art["meta"].get("best_epoch"),
            }
        ],
        {
            "system": SYSTEM,
            "checkpoint": str(checkpoint),
            "manifest": str(manifest),
            "n_params": sum(v.numel() for v in model.parameters()),
            "seconds": 0.0,
        },
    )
    return run


def baseline(cfg: ExperimentConfig, out: str | Path) -> Path:
    """eGeMAPS functionals + linear SVM on exactly the folds of this config."""
    from stlser.baseline import run_baseline

    run_baseline(cfg, out)
    return Path(out)


def demo(out: str | Path = "runs/demo") -> Path:
    """The built-in end-to-end demo: synthesize → crossval → report (a few minutes on 2 cores)."""
    from stlser import synth

    out = Path(out)
    cfg = config_mod.load("demo.yaml")
    corpus = out / "corpus"
    if not (corpus / "manifest.csv").exists():
        _log(f"synthesizing the built-in corpus into {corpus} (demo data, not real emotions)")
        synth.generate(corpus, speakers=6, per_class=20, seed=cfg.seed)
    cfg.data.root = str(corpus)
    run = crossval(cfg, out / "run")
    rep = json.loads((run / "report.json").read_text())
    print(
        f"\nDemo finished: UA {100 * rep['ua']:.1f} %, WA {100 * rep['wa']:.1f} % on the synthetic corpus "
        f"({rep['protocol']}, speaker-independent)."
    )
    print(f"Report: {run / 'report.md'}\nModel of fold 0: {run / 'fold_00' / 'model.pt'}")
    return run


def report_summary(report: dict[str, Any]) -> str:
    return f"UA {100 * report['ua']:.2f} % | WA {100 * report['wa']:.2f} % | macro-F1 {100 * report['macro_f1']:.2f} %"
