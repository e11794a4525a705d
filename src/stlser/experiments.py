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
from stlser.utils import (
    clean_stale_temps,
    environment,
    save_npy,
    usable_cores,
    write_csv,
    write_json,
    write_text,
)

SYSTEM = "cnn-bilstm-stl"


def _log(msg: str) -> None:
    print(f"[stlser] {msg}", file=sys.stderr, flush=True)


def resolve_output(cfg: ExperimentConfig, out: str | Path | None) -> Path:
    return Path(out) if out else Path("runs") / cfg.name


def prepare(
    cfg: ExperimentConfig, run_dir: Path, check: Any = None
) -> tuple[pd.DataFrame, list, list[str]]:
    """Manifest and folds for the config; written into the run directory.

    `check(df, folds)`, if given, runs before anything is written (the resume guard)."""
    from stlser import corpora, splits

    skipped: list = []
    if cfg.data.manifest:
        df = corpora.read_manifest(cfg.data.manifest)
    else:
        if not cfg.data.root:
            raise ValueError("config needs data.root (corpus folder) or data.manifest")
        df, skipped = corpora.build_manifest(cfg.data.corpus, cfg.data.root, labels=cfg.data.labels)
    folds = splits.from_config(df, cfg.split, cfg.seed)
    if check is not None:
        check(df, folds)
    corpora.write_manifest(df, skipped, run_dir / "manifest.csv")
    if skipped:
        _log(f"{len(skipped)} unreadable files skipped (see {run_dir / 'skipped.csv'})")
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


def _member_dir(fdir: Path, k: int) -> Path:
    """Member 0 of a fold lives in fold_XX/ itself (the layout without an ensemble)."""
    return fdir if k == 0 else fdir / f"member_{k:02d}"


def member_folds(cfg: ExperimentConfig, df: pd.DataFrame, folds: list) -> list[list]:
    """Folds for each ensemble member: member k draws its validation speakers (and its model
    seed) from seed + k; the test part of every fold stays the same."""
    from stlser import splits

    out = [folds]
    for k in range(1, max(1, cfg.train.ensemble)):
        fk = splits.from_config(df, cfg.split, cfg.seed + k)
        same = len(fk) == len(folds) and all(
            a.test == b.test for a, b in zip(fk, folds, strict=True)
        )
        out.append(fk if same else folds)  # e.g. the paper protocol: same split, new model seed
    return out


def _finished_probs(mdir: Path, labels: list[str]) -> np.ndarray | None:
    """Test probabilities of a finished member, or None. Runs made before ensembles existed
    kept them only in fold_XX/predictions.csv."""
    if not (mdir / "fold.json").exists():
        return None
    if (mdir / "probs.npy").exists():
        return np.load(mdir / "probs.npy")
    if (mdir / "predictions.csv").exists() and not (mdir.name.startswith("member_")):
        p = pd.read_csv(mdir / "predictions.csv", dtype={"speaker": str})
        return p[[f"prob_{name}" for name in labels]].to_numpy(np.float32)
    return None


_WORKER: dict[str, Any] = {}


def _init_unit_worker(df: pd.DataFrame, feats: dict[str, np.ndarray], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(df=df, feats=feats)


def _train_unit(
    cfg: ExperimentConfig,
    fold,
    labels: list[str],
    mdir: Path,
    resume: bool,
    fail_at_epoch: int | None,
    df: pd.DataFrame | None = None,
    feats: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train one (fold, member) and return its fold info with the test probabilities."""
    from stlser.training import train_fold

    df = _WORKER["df"] if df is None else df
    feats = _WORKER["feats"] if feats is None else feats
    data = fold_data(cfg, df, feats, fold, labels)
    info = train_fold(cfg, data, mdir, resume=resume, fail_at_epoch=fail_at_epoch)
    info["val_speakers"] = list(fold.val_speakers)
    return info


def crossval(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    fail_at_epoch: int | None = None,
    force: bool = False,
) -> Path:
    """Train and test every fold of the configured protocol; write the pooled report.

    With `train.ensemble` K > 1 each fold trains K models (own seed, own validation speakers)
    and its test probabilities are their mean. With `train.jobs` J > 1 the (fold, member)
    units run in J processes at once; results do not depend on J.

    `resume` reuses finished folds and continues interrupted ones, only if the run folder's
    fingerprint (stlser.fingerprint) matches this config, manifest and folds; `force` resumes
    despite a mismatch (logged and recorded in fingerprint.json).
    """
    import dataclasses

    from stlser import evaluation, features, fingerprint

    run = resolve_output(cfg, out)
    t0 = time.time()
    guarded: dict[str, Any] = {}

    def check(df: pd.DataFrame, folds: list) -> None:  # before anything is written into `run`
        fp = fingerprint.compute(cfg, df, folds)
        guarded["fp"] = fingerprint.guard(run, fp, resume, force, _log)

    df, folds, labels = prepare(cfg, run, check=check)
    write_run_header(cfg, run)
    fingerprint.store(run, guarded["fp"])
    for stale in clean_stale_temps(run):
        _log(f"removed a temporary file left by a killed run: {stale}")
    from stlser import degenerate

    degenerate_info = degenerate.report(df, cfg.features, _log)
    chosen = [i for i in range(len(folds)) if cfg.split.folds is None or i in cfg.split.folds]
    n_members = max(1, cfg.train.ensemble)
    by_member = member_folds(cfg, df, folds)
    _log(
        f"{cfg.name}: {len(df)} utterances, {len(labels)} classes, protocol {cfg.split.protocol}, "
        f"{len(chosen)} folds" + (f" × {n_members} models" if n_members > 1 else "") + f" → {run}"
    )
    feats = features.load_features(df, cfg.features.resolved(), cfg.cache_dir)

    # Work units: (position, member). A finished member (fold.json + probs.npy) is reused.
    results: dict[tuple[int, int], dict[str, Any]] = {}
    todo: list[tuple[int, int]] = []
    for pos in range(len(chosen)):
        fdir = run / f"fold_{pos:02d}"
        for k in range(n_members):
            mdir = _member_dir(fdir, k)
            probs = _finished_probs(mdir, labels) if resume else None
            if probs is not None:
                info = json.loads((mdir / "fold.json").read_text())
                info["probs"] = probs
                results[(pos, k)] = info
                _log(f"fold {pos + 1}/{len(chosen)} member {k} already done, reused")
            else:
                todo.append((pos, k))

    def unit_args(pos: int, k: int):
        c = cfg if k == 0 else dataclasses.replace(cfg, seed=cfg.seed + k)
        mdir = _member_dir(run / f"fold_{pos:02d}", k)
        return c, by_member[k][chosen[pos]], labels, mdir, resume, fail_at_epoch

    def finish(pos: int, k: int, info: dict[str, Any]) -> None:
        mdir = _member_dir(run / f"fold_{pos:02d}", k)
        save_npy(mdir / "probs.npy", np.asarray(info["probs"], np.float32))
        results[(pos, k)] = info
        fold = folds[chosen[pos]]
        _log(
            f"fold {pos + 1}/{len(chosen)} (test {','.join(map(str, fold.test_speakers)) or fold.name})"
            + (f" member {k}" if n_members > 1 else "")
            + f": best epoch {info['best_epoch']}, {info['seconds']:.0f} s"
        )

    jobs = max(1, min(cfg.train.jobs, len(todo)))
    if jobs == 1:
        for pos, k in todo:
            finish(pos, k, _train_unit(*unit_args(pos, k), df=df, feats=feats))
    else:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = cfg.train.num_threads or max(1, usable_cores() // jobs)
        quiet = dataclasses.replace(cfg.train, progress=False)
        _log(f"training {len(todo)} models in {jobs} processes, {threads} torch thread(s) each")
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_unit_worker, initargs=(df, feats, threads)
        ) as pool:
            pending = {}
            for pos, k in todo:
                c, *rest = unit_args(pos, k)
                c = dataclasses.replace(c, train=quiet)
                pending[pool.submit(_train_unit, c, *rest)] = (pos, k)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    pos, k = pending.pop(fut)
                    finish(pos, k, fut.result())

    preds, fold_infos, n_params, speed = [], [], 0, []
    for pos, i in enumerate(chosen):
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
        "speaker_normalisation": degenerate_info,
    }
    write_csv(run / "predictions.csv", allp)
    rep = evaluation.write_report(run, allp, labels, fold_infos, extra)
    _log(
        f"UA {100 * rep['ua']:.2f} %  WA {100 * rep['wa']:.2f} %  macro-F1 {100 * rep['macro_f1']:.2f} %  "
        f"({extra['seconds']:.0f} s)"
    )
    return run


def train(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    fold: int = 0,
    force: bool = False,
) -> Path:
    """Train (and test) one fold of the configured protocol."""
    cfg.split.folds = [fold]
    return crossval(cfg, out, resume=resume, force=force)


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
