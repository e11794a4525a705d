"""The one evaluation driver, for every recogniser kind (`stlser.kinds`).

``crossval``: config → checks → manifest and folds → the kind's shared inputs (features) →
every (fold, ensemble member) fitted, here or in worker processes → pooled predictions →
`RunReport`. Resume (with the fingerprint guard), jobs, ensembles, the run-folder lock and the
report live here once; the kind only fits a fold and scores its test rows.
``evaluate`` scores a trained artefact of any kind (the shipped model too) on a manifest.

A run folder holds `config.yaml` (resolved), `environment.json`, `manifest.csv`,
`splits.json`, `fingerprint.json`, one `fold_XX/` per fold (`model.pt`, `fold.json`,
`probs.npy`; members k > 0 of an ensemble in `fold_XX/member_KK/`), `predictions.csv`,
`report.json`, `report.md` and `confusion.png`. Nothing is written into it before every check
has passed and the features are computed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stlser import config as config_mod
from stlser import ddp, engines, kinds, runs
from stlser.config import ExperimentConfig
from stlser.kinds.base import FoldOutput
from stlser.metrics import ua
from stlser.reports import predictions_table
from stlser.results import RunReport
from stlser.utils import clean_stale_temps, save_npy, write_csv, write_json

log = logging.getLogger(__name__)


def _fit_unit(unit: runs.Unit) -> FoldOutput:
    """Fit one (fold, member): a module-level function so worker processes can run it."""
    w = runs.WORKER
    unit.dir.mkdir(parents=True, exist_ok=True)
    return w["kind"].fit(unit.cfg, w["data"], unit.fold, unit.dir, w["resume"], w["callbacks"])


def _reused(mdir: Path, scores: np.ndarray) -> FoldOutput:
    """A finished member read back from its folder (``--resume``)."""
    info = json.loads((mdir / "fold.json").read_text())
    column = info.pop("column", "prob")
    row = info.pop("report_row", None)
    if row is None:  # a fold written before report rows were kept
        row = {k: info.get(k) for k in ("best_epoch", "epochs_run", "seconds")}
    pred = np.load(mdir / "pred.npy") if (mdir / "pred.npy").exists() else None
    return FoldOutput(scores, info, row, pred, column)


def crossval(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    callbacks: Any = None,
    force: bool = False,
    engine: str = "local",
    address: str | None = None,
) -> Path:
    """Fit and test every fold of the configured protocol with ``model.kind``; write the pooled
    report into `out` (default ``runs/<name>``) and return its path.

    With `train.ensemble` K > 1 each fold fits K models (own seed, own validation speakers) and
    its test scores are their mean. With `train.jobs` J > 1 the (fold, member) units run in J
    processes at once; results do not depend on J. `callbacks(stage)` adds Lightning callbacks
    to a network's training stage (`stlser.training.train_fold`).

    `resume` reuses finished members and continues interrupted ones, only if the run folder's
    fingerprint (`stlser.fingerprint`) matches this config, manifest and folds; `force`
    resumes despite a mismatch (logged and recorded in fingerprint.json).

    `engine` runs the units here (``local``) or as Ray tasks (``ray``, on the cluster at
    `address`, else an embedded local one; `stlser.engines`); results do not depend on it.

    Under torchrun (``train.num_nodes`` machines, `stlser.ddp`) every rank runs this with the
    same config: each computes the same units and trains them together, only rank 0 writes.
    """
    from stlser import fingerprint

    kind = kinds.get(cfg.model.kind)
    run = runs.resolve_output(cfg, out)
    if run.exists() and not run.is_dir():
        raise ValueError(f"--output {run} is a file, not a run folder")
    kind.check(cfg)
    engines.require(engine)
    ddp.check_launch(cfg.train)
    if ddp.launched() and engine != "local":
        raise ValueError(f"--engine {engine}: under torchrun every process runs the units itself")
    t0 = time.time()
    guarded: dict[str, Any] = {}

    def check(df: pd.DataFrame, folds: list) -> None:
        fp = fingerprint.compute(cfg, df, folds)
        guarded["fp"] = fingerprint.guard(run, fp, resume, force, log.warning)

    if ddp.global_rank() > 0:  # a torchrun rank besides 0: trains, writes nothing
        df, folds, labels, _ = runs.prepare(cfg)
        data = kind.prepare(cfg, df, labels)
        return _run_folds(cfg, kind, data, run, df, folds, labels, resume, callbacks, t0)
    df, folds, labels, skipped = runs.prepare(cfg, check=check)
    handle = runs.lock(run)
    try:
        data = kind.prepare(cfg, df, labels)
        runs.write_inputs(run, df, skipped, folds)
        runs.write_run_header(cfg, run)
        fingerprint.store(run, guarded["fp"])
        for stale in clean_stale_temps(run):
            log.info(f"removed a temporary file left by a killed run: {stale}")
        where = {"engine": engine, "address": address}
        return _run_folds(cfg, kind, data, run, df, folds, labels, resume, callbacks, t0, where)
    finally:
        handle.close()


def _run_folds(
    cfg: ExperimentConfig,
    kind: kinds.Kind,
    data: Any,
    run: Path,
    df: pd.DataFrame,
    folds: list,
    labels: list[str],
    resume: bool,
    callbacks: Any,
    t0: float,
    where: dict[str, Any] | None = None,
) -> Path:
    from stlser import degenerate, reports

    speaker_norm = degenerate.report(df, cfg.features, log.warning)
    picked = runs.chosen(cfg, folds)
    n_members = max(1, cfg.train.ensemble)
    log.info(
        f"{cfg.name}: {kind.name}, {len(df)} utterances, {len(labels)} classes, protocol "
        f"{cfg.split.protocol}, {len(picked)} folds"
        + (f" × {n_members} models" if n_members > 1 else "")
        + f" → {run}"
    )
    todo, reused = runs.plan_units(cfg, run, df, folds, labels, resume)
    results: dict[tuple[int, int], FoldOutput] = {}
    for (pos, k), scores in reused.items():
        results[(pos, k)] = _reused(runs.member_dir(run / f"fold_{pos:02d}", k), scores)
    label_of = dict(zip(df["utt_id"].astype(str), df["label"].astype(str), strict=True))

    follower = ddp.global_rank() > 0

    def finish(unit: runs.Unit, res: FoldOutput) -> None:
        if follower:
            return
        fold = folds[picked[unit.pos]]
        save_npy(unit.dir / "probs.npy", np.asarray(res.scores, np.float32))
        if res.pred is not None:
            save_npy(unit.dir / "pred.npy", np.asarray(res.pred, np.int64))
        facts = {
            "fold": fold.name,
            "test_speakers": [str(s) for s in fold.test_speakers],
            "val_speakers": [str(s) for s in unit.fold.val_speakers],
            "n_train": len(unit.fold.train),
            "n_val": len(unit.fold.val),
            "speaker_independent": bool(fold.speaker_independent),
        }
        res.row = {**facts, **res.row}
        write_json(
            unit.dir / "fold.json",
            {**facts, **res.info, "report_row": res.row, "column": res.column},
        )
        results[(unit.pos, unit.member)] = res
        pred = res.scores.argmax(1) if res.pred is None else res.pred
        test = [label_of[str(u)] for u in fold.test]
        got = 100 * ua(np.asarray(test), np.asarray([labels[j] for j in pred]))
        val, best = res.row.get("val_ua"), res.row.get("best_epoch")
        said = [f"val UA {100 * val:.1f}" if isinstance(val, float) else ""]
        said.append(f"best epoch {best}" if best is not None else "")
        log.info(
            f"fold {unit.pos + 1}/{len(picked)} {fold.name}"
            + (f" member {unit.member}" if n_members > 1 else "")
            + f": {', '.join(w for w in said if w) or 'fitted'} → test UA {got:.1f}"
        )

    jobs = max(1, min(cfg.train.jobs, len(todo)))
    state = {"kind": kind, "data": data, "resume": resume, "callbacks": callbacks}
    if jobs > 1:
        threads = runs.worker_threads(cfg.train.num_threads, jobs)
        quiet = dataclasses.replace(cfg.train, progress=False)
        todo = [dataclasses.replace(u, cfg=dataclasses.replace(u.cfg, train=quiet)) for u in todo]
        log.info(f"fitting {len(todo)} models in {jobs} processes, {threads} torch thread(s) each")
    engines.run(
        todo, _fit_unit, finish, state, jobs=jobs, threads=cfg.train.num_threads,
        gpus=engines.unit_gpus(cfg), **(where or {}),
    )  # fmt: skip
    if follower:
        return run

    preds, rows, infos = [], [], []
    for pos, i in enumerate(picked):
        fold = folds[i]
        members = [results[(pos, k)] for k in range(n_members)]
        scores = np.mean([np.asarray(m.scores, np.float64) for m in members], axis=0)
        pred = members[0].pred if n_members == 1 else None
        ids = [str(u) for u in fold.test]
        p = predictions_table(df, ids, fold.name, labels, scores, members[0].column, pred)
        write_csv(run / f"fold_{pos:02d}" / "predictions.csv", p)
        preds.append(p)
        row = dict(members[0].row)
        if any("seconds" in m.row for m in members):
            row["seconds"] = round(sum(m.row.get("seconds") or 0 for m in members), 2)
        if len({label_of[u] for u in ids}) < 2:
            row["single_class_test"] = True
        if n_members > 1:
            row["members"] = [
                {"seed": cfg.seed + k, **{a: b for a, b in m.row.items() if a != "fold"}}
                for k, m in enumerate(members)
            ]
        rows.append(row)
        infos += [m.info for m in members]
    allp = pd.concat(preds, ignore_index=True)
    write_csv(run / "predictions.csv", allp)
    single = [r["fold"] for r in rows if r.get("single_class_test")]
    if single:
        log.warning(
            f"{len(single)} fold(s) test a single class ({', '.join(single[:5])}): their UA and "
            "macro-F1 say little; the pooled scores are the ones to read"
        )
    extra = {
        "system": kind.system,
        "kind": kind.name,
        "config": cfg.name,
        "corpus": cfg.data.corpus,
        "protocol": cfg.split.protocol,
        "speaker_independent": all(r["speaker_independent"] for r in rows),
        "ensemble": n_members,
        "jobs": jobs,
        "speaker_normalisation": speaker_norm,
        **kind.report_facts(cfg, data, infos),
        "seconds": round(time.time() - t0, 1),
    }
    if single:
        extra["single_class_test_folds"] = single
    rep = reports.write_report(run, allp, labels, rows, extra)
    log.info(f"{rep.summary()}  ({extra['seconds']:.0f} s)")
    return run


def train(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    fold: int = 0,
    force: bool = False,
    **where: Any,
) -> Path:
    """Fit (and test) one fold of the configured protocol (`where`: `crossval`'s engine and
    address)."""
    one = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, folds=[fold]))
    return crossval(one, out, resume=resume, force=force, **where)


def baseline(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool = False,
    force: bool = False,
    **where: Any,
) -> Path:
    """The eGeMAPS + linear-SVM baseline (the `svm` kind with its default settings) on exactly
    the corpus, folds and normalisation of `cfg` (`where`: `crossval`'s engine and address)."""
    from stlser.config import SvmConfig

    svm = config_mod.with_value(cfg, "model", dataclasses.asdict(SvmConfig()))
    run = runs.resolve_output(cfg, out, suffix="-baseline")
    return crossval(svm, run, resume=resume, force=force, **where)


def evaluate(
    model: str | Path | None,
    manifest: str | Path,
    out: str | Path | None = None,
    cache_dir: str = ".cache/stlser",
    stats: str = "speaker",
) -> Path:
    """Score a trained model of any kind (a `model.pt`, a run folder, or ``base``, the shipped
    model) on every utterance of a manifest whose labels it knows; writes a report. `stats`:
    ``speaker`` normalises each speaker of the manifest by its own statistics (as crossval
    does with a test speaker), ``global`` each clip alone by the training set's global
    statistics (as `stlser predict` does; functionals kinds only)."""
    from stlser import corpora, reports

    t0 = time.time()
    kind, art, path = kinds.read(model)
    df = corpora.read_manifest(manifest)
    labels = [str(x) for x in art["labels"]]
    unknown = sorted(set(df["label"].astype(str)) - set(labels))
    if unknown:
        raise ValueError(
            f"manifest has labels the model does not know: {unknown}; model labels: {labels}"
        )
    run = Path(out) if out else path.parent / "evaluate"
    if run.exists() and not run.is_dir():
        raise ValueError(f"--output {run} is a file, not a folder")
    if stats != "speaker" and "stats" not in inspect.signature(kind.score).parameters:
        raise ValueError(f"the {kind.name} kind scores with its training normalisation only")
    extra = {} if stats == "speaker" else {"stats": stats}  # a kind written before `stats`
    probs = np.asarray(kind.score(path, art, df, cache_dir, **extra), np.float64)
    run.mkdir(parents=True, exist_ok=True)
    ids = df["utt_id"].astype(str).tolist()
    p = predictions_table(df, ids, "evaluate", labels, probs)
    write_csv(run / "predictions.csv", p)
    about = kind.describe(art)
    reports.write_report(
        run,
        p,
        labels,
        [
            {
                "fold": "evaluate",
                "test_speakers": sorted(df["speaker"].astype(str).unique()),
                "best_epoch": about["meta"].get("best_epoch"),
            }
        ],
        {
            "system": kind.system,
            "kind": kind.name,
            "model": str(path),
            "manifest": str(manifest),
            "stats": stats,
            "n_params": about["n_params"],
            "seconds": round(time.time() - t0, 1),
        },
    )
    return run


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
