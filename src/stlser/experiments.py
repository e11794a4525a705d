"""Experiment glue: config → manifest → folds → features → train/test per fold → report.

Every run directory holds `config.yaml` (resolved), `environment.json`, `manifest.csv`,
`splits.json`, one `fold_XX/` per fold (checkpoints, logs, `model.pt`, `fold.json`,
`embeddings.npz`), `predictions.csv`, `report.json`, `report.md` and `confusion.png`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stlser import config as config_mod
from stlser import runs
from stlser.config import ExperimentConfig
from stlser.evaluation import predictions_table
from stlser.results import RunReport
from stlser.utils import (
    clean_stale_temps,
    save_npy,
    write_csv,
)

if TYPE_CHECKING:
    from stlser.training import StageCallbacks

SYSTEM = "cnn-bilstm-stl"
log = logging.getLogger(__name__)

# Run-folder lifecycle names kept here for callers of the old API.
resolve_output = runs.resolve_output
prepare = runs.prepare
write_run_header = runs.write_run_header


def fold_data(
    cfg: ExperimentConfig, df: pd.DataFrame, feats: dict[str, np.ndarray], fold, labels: list[str]
):
    """Normalise features with statistics fitted on the fold's training part; build FoldData."""
    from stlser import degenerate, features
    from stlser.training import FoldData

    fc = cfg.features
    normed, norm = features.normalize_all(
        feats,
        df,
        fc.normalize,
        list(fold.train),
        global_speakers=degenerate.global_speakers(df, fc),
    )
    lab = dict(zip(df["utt_id"], df["label"], strict=True))
    index = {name: i for i, name in enumerate(labels)}
    speakers = df["speaker"].fillna("").astype(str) if "speaker" in df.columns else [""] * len(df)
    spk = dict(zip(df["utt_id"], speakers, strict=True))

    def part(ids):
        return [normed[u] for u in ids], [index[lab[u]] for u in ids]

    state = norm.state()
    n_features = next(iter(feats.values())).shape[1]
    static = n_features // fc.input_channels  # a level change moves the log-mel, not its deltas
    std = np.asarray(state.get("std", [1.0]), np.float32)[:static]
    gain_scale = (
        float(np.mean(math.log(10) / 10 / np.maximum(std, 1e-5))) if fc.kind == "logmel" else 0.0
    )
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
        [spk[u] for u in fold.train],
        [spk[u] for u in fold.val],
    )


def _train_unit(unit: runs.Unit) -> dict[str, Any]:
    """Train one (fold, member) and return its fold info with the test probabilities."""
    from stlser.training import train_fold

    w = runs.WORKER
    data = fold_data(unit.cfg, w["df"], w["feats"], unit.fold, w["labels"])
    info = train_fold(unit.cfg, data, unit.dir, resume=w["resume"], callbacks=w["callbacks"])
    info["val_speakers"] = list(unit.fold.val_speakers)
    return info


def crossval(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    callbacks: StageCallbacks | None = None,
    force: bool = False,
) -> Path:
    """Train and test every fold of the configured protocol; write the pooled report.

    With `train.ensemble` K > 1 each fold trains K models (own seed, own validation speakers)
    and its test probabilities are their mean. With `train.jobs` J > 1 the (fold, member)
    units run in J processes at once; results do not depend on J. `callbacks(stage)` adds
    Lightning callbacks to a training stage (see `stlser.training.train_fold`).

    `resume` reuses finished folds and continues interrupted ones, only if the run folder's
    fingerprint (stlser.fingerprint) matches this config, manifest and folds; `force` resumes
    despite a mismatch (logged and recorded in fingerprint.json).
    """
    from stlser import degenerate, evaluation, features, fingerprint

    if cfg.model.kind == "expert":  # functionals + logistic heads: seconds per fold, no resume
        from stlser import expert

        return expert.crossval(cfg, out)
    if cfg.model.init:  # an incompatible artefact fails now, not after the features are made
        from stlser import finetune

        finetune.load_init(cfg, cfg.features.resolved().n_features)
    run = runs.resolve_output(cfg, out)
    t0 = time.time()
    guarded: dict[str, Any] = {}

    def check(df: pd.DataFrame, folds: list) -> None:  # before anything is written into `run`
        fp = fingerprint.compute(cfg, df, folds)
        guarded["fp"] = fingerprint.guard(run, fp, resume, force, log.warning)

    df, folds, labels = runs.prepare(cfg, run, check=check)
    runs.write_run_header(cfg, run)
    fingerprint.store(run, guarded["fp"])
    for stale in clean_stale_temps(run):
        log.info(f"removed a temporary file left by a killed run: {stale}")
    speaker_norm = degenerate.report(df, cfg.features, log.warning)
    picked = runs.chosen(cfg, folds)
    n_members = max(1, cfg.train.ensemble)
    log.info(
        f"{cfg.name}: {len(df)} utterances, {len(labels)} classes, protocol {cfg.split.protocol}, "
        f"{len(picked)} folds" + (f" × {n_members} models" if n_members > 1 else "") + f" → {run}"
    )
    feats = features.load_features(df, cfg.features.resolved(), cfg.cache_dir)

    todo, reused = runs.plan_units(cfg, run, df, folds, labels, resume)
    results: dict[tuple[int, int], dict[str, Any]] = {}
    for (pos, k), probs in reused.items():
        mdir = runs.member_dir(run / f"fold_{pos:02d}", k)
        results[(pos, k)] = {**json.loads((mdir / "fold.json").read_text()), "probs": probs}

    def finish(unit: runs.Unit, info: dict[str, Any]) -> None:
        save_npy(unit.dir / "probs.npy", np.asarray(info["probs"], np.float32))
        results[(unit.pos, unit.member)] = info
        fold = folds[picked[unit.pos]]
        log.info(
            f"fold {unit.pos + 1}/{len(picked)} (test {','.join(map(str, fold.test_speakers)) or fold.name})"
            + (f" member {unit.member}" if n_members > 1 else "")
            + f": best epoch {info['best_epoch']}, {info['seconds']:.0f} s"
        )

    jobs = max(1, min(cfg.train.jobs, len(todo)))
    state = {"df": df, "feats": feats, "labels": labels, "resume": resume, "callbacks": callbacks}
    if jobs > 1:
        threads = runs.worker_threads(cfg.train.num_threads, jobs)
        quiet = dataclasses.replace(cfg.train, progress=False)
        todo = [dataclasses.replace(u, cfg=dataclasses.replace(u.cfg, train=quiet)) for u in todo]
        log.info(f"training {len(todo)} models in {jobs} processes, {threads} torch thread(s) each")
    runs.run_units(todo, _train_unit, finish, state, jobs=jobs, threads=cfg.train.num_threads)

    preds, fold_infos, n_params, speed = [], [], 0, []
    for pos, i in enumerate(picked):
        fold = folds[i]
        members = [results[(pos, k)] for k in range(n_members)]
        probs = np.mean([np.asarray(m["probs"]) for m in members], axis=0)
        p = predictions_table(df, list(fold.test), fold.name, labels, probs)
        write_csv(run / f"fold_{pos:02d}" / "predictions.csv", p)
        preds.append(p)
        n_params = members[0]["n_params"]
        speed.extend(m.get("utt_per_second") or 0 for m in members)
        info = {
            "fold": fold.name,
            "test_speakers": list(fold.test_speakers),
            "best_epoch": members[0]["best_epoch"],
            "epochs_run": members[0].get("epochs_run"),
            "seconds": round(sum(m.get("seconds") or 0 for m in members), 2),
        }
        if n_members > 1:
            info["members"] = [
                {
                    "seed": cfg.seed + k,
                    "val_speakers": m.get("val_speakers"),
                    "best_epoch": m["best_epoch"],
                    "epochs_run": m.get("epochs_run"),
                }
                for k, m in enumerate(members)
            ]
        fold_infos.append(info)
    allp = pd.concat(preds, ignore_index=True)
    extra = {
        "system": SYSTEM,
        "config": cfg.name,
        "corpus": cfg.data.corpus,
        "protocol": cfg.split.protocol,
        "speaker_independent": cfg.split.protocol != "paper",
        "n_params": n_params,
        "ensemble": n_members,
        "jobs": jobs,
        "seconds": round(time.time() - t0, 1),
        "train_utt_per_second": round(float(np.mean(speed)), 1) if speed else 0.0,
        "stl_layers": cfg.model.stl_layers,
        "aggregation": cfg.model.aggregation,
        "stl_over": cfg.model.stl_over,
        "speaker_normalisation": speaker_norm,
    }
    write_csv(run / "predictions.csv", allp)
    rep = evaluation.write_report(run, allp, labels, fold_infos, extra)
    log.info(f"{rep.summary()}  ({extra['seconds']:.0f} s)")
    return run


def train(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    fold: int = 0,
    force: bool = False,
) -> Path:
    """Train (and test) one fold of the configured protocol."""
    one = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, folds=[fold]))
    return crossval(one, out, resume=resume, force=force)


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path | None = None,
    cache_dir: str = ".cache/stlser",
) -> Path:
    """Score a `model.pt` artefact on every utterance of a manifest (labels must be known to it)."""
    from stlser import corpora, evaluation, features
    from stlser.config import FeatureConfig
    from stlser.model import load_artefact, predict
    from stlser.windows import artefact_crop

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
    probs = predict(model, [normed[u] for u in ids], crop=artefact_crop(art))["probs"]
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
        log.info(f"synthesizing the built-in corpus into {corpus} (demo data, not real emotions)")
        synth.generate(corpus, speakers=6, per_class=20, seed=cfg.seed)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(corpus)))
    run = crossval(cfg, out / "run")
    rep = RunReport.load(run / "report.json")
    print(
        f"\nDemo finished: UA {100 * rep.ua:.1f} %, WA {100 * rep.wa:.1f} % on the synthetic corpus "
        f"({rep.extra['protocol']}, speaker-independent)."
    )
    print(f"Report: {run / 'report.md'}\nModel of fold 0: {run / 'fold_00' / 'model.pt'}")
    return run
