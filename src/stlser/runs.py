"""The life of a run folder, for the evaluation driver (`stlser.driver`).

1. :func:`lock`: one writer per run folder;
2. :func:`prepare`: manifest and checked folds for the config (nothing written), then
   :func:`write_inputs` (``manifest.csv``, ``splits.json``) and :func:`write_run_header`
   (the resolved ``config.yaml`` and ``environment.json``) once every check has passed;
3. :func:`plan_units`: the (fold, ensemble member) units of work, and which are already
   finished (``fold.json`` + ``probs.npy``) and may be reused on ``--resume``;
4. :func:`run_units`: run the rest in this process or on a local process pool.

Layout: member 0 of fold ``pos`` lives in ``fold_XX/``, member k > 0 in ``fold_XX/member_KK/``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stlser import config as config_mod
from stlser import corpora, splits
from stlser.config import ExperimentConfig
from stlser.splits import Fold
from stlser.utils import die_with_parent, environment, read_csv, write_json, write_text

log = logging.getLogger(__name__)


def resolve_output(cfg: ExperimentConfig, out: str | Path | None, suffix: str = "") -> Path:
    """`out`, or ``runs/<name><suffix>`` when none is given."""
    return Path(out) if out else Path("runs") / f"{cfg.name}{suffix}"


def write_run_header(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Resolved config.yaml and environment.json (versions, threads, seed, argv) of a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config_mod.dump(cfg))
    env = environment()
    env["seed"] = cfg.seed
    env["argv"] = sys.argv
    write_json(run_dir / "environment.json", env)


class RunBusy(RuntimeError):
    """Another process is writing into the run folder."""


def lock(run_dir: Path) -> Any:
    """Hold the run folder for this process (released when the returned handle is closed or
    the process ends); RunBusy if another process holds it. Creates the folder."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".stlser.lock", "a+")  # noqa: SIM115 (held for the run's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RunBusy(
            f"another stlser process is writing into {run_dir}; wait for it or choose another "
            "--output"
        ) from None
    return handle


def prepare(
    cfg: ExperimentConfig,
    check: Callable[[pd.DataFrame, list[Fold]], None] | None = None,
) -> tuple[pd.DataFrame, list[Fold], list[str], list]:
    """Manifest, leak-checked folds, sorted labels and the unreadable files for the config;
    nothing is written. `check(df, folds)`, if given, runs on them (the resume guard).

    Refused (ValueError): a corpus with fewer than two classes, ``split.folds`` naming a fold
    the protocol does not have, a chosen fold whose training speakers hold fewer than two
    classes."""
    skipped: list = []
    if cfg.data.manifest:
        df = corpora.read_manifest(cfg.data.manifest)
        if cfg.data.duplicates == "drop":
            dup = corpora.duplicates
            df, skipped, _ = dup.apply(df, dup.find(df), "drop")
    else:
        if not cfg.data.root:
            raise ValueError("config needs data.root (corpus folder) or data.manifest")
        df, skipped = corpora.build_manifest(
            cfg.data.corpus, cfg.data.root, labels=cfg.data.labels, duplicates=cfg.data.duplicates
        )
    labels = sorted(df["label"].astype(str).unique().tolist())
    if len(labels) < 2:
        raise ValueError(
            f"the corpus has {len(labels)} class(es) ({', '.join(labels) or 'none'}): emotion "
            "recognition needs at least two"
        )
    folds = splits.from_config(df, cfg.split, cfg.seed)
    wanted = cfg.split.folds or []
    if any(not 0 <= i < len(folds) for i in wanted):
        raise ValueError(
            f"config split.folds={list(wanted)}: the {cfg.split.protocol} protocol gives "
            f"{len(folds)} folds (indices 0 to {len(folds) - 1})"
        )
    label_of = dict(zip(df["utt_id"].astype(str), df["label"].astype(str), strict=True))
    for i in chosen(cfg, folds):
        seen = {label_of[str(u)] for u in [*folds[i].train, *folds[i].val]}
        if len(seen) < 2:
            raise ValueError(
                f"fold {folds[i].name}: its training speakers hold {len(seen)} class(es) "
                f"({', '.join(sorted(seen))}); no recogniser can be fitted"
            )
    if check is not None:
        check(df, folds)
    return df, folds, labels, skipped


def write_inputs(run_dir: Path, df: pd.DataFrame, skipped: list, folds: list[Fold]) -> None:
    """``manifest.csv`` (+ ``skipped.csv``) and ``splits.json`` of a run."""
    corpora.write_manifest(df, skipped, run_dir / "manifest.csv")
    if skipped:
        log.warning("%d unreadable files skipped (see %s)", len(skipped), run_dir / "skipped.csv")
    splits.save(folds, run_dir / "splits.json")


def chosen(cfg: ExperimentConfig, folds: Sequence[Fold]) -> list[int]:
    """Indices of the folds the config runs (`split.folds`, default all)."""
    return [i for i in range(len(folds)) if cfg.split.folds is None or i in cfg.split.folds]


def member_dir(fdir: Path, k: int) -> Path:
    """Member 0 of a fold lives in fold_XX/ itself (the layout without an ensemble)."""
    return fdir if k == 0 else fdir / f"member_{k:02d}"


def member_folds(cfg: ExperimentConfig, df: pd.DataFrame, folds: list[Fold]) -> list[list[Fold]]:
    """Folds for each ensemble member: member k draws its validation speakers (and its model
    seed) from seed + k; the test part of every fold stays the same."""
    out = [folds]
    for k in range(1, max(1, cfg.train.ensemble)):
        fk = splits.from_config(df, cfg.split, cfg.seed + k)
        same = len(fk) == len(folds) and all(
            a.test == b.test for a, b in zip(fk, folds, strict=True)
        )
        out.append(fk if same else folds)  # e.g. the paper protocol: same split, new model seed
    return out


def finished_probs(mdir: Path, labels: list[str]) -> np.ndarray | None:
    """Test probabilities of a finished member, or None. Runs made before ensembles existed
    kept them only in fold_XX/predictions.csv."""
    if not (mdir / "fold.json").exists():
        return None
    if (mdir / "probs.npy").exists():
        return np.load(mdir / "probs.npy")
    if (mdir / "predictions.csv").exists() and not (mdir.name.startswith("member_")):
        p = read_csv(mdir / "predictions.csv", dtype={"speaker": str})
        return p[[f"prob_{name}" for name in labels]].to_numpy(np.float32)
    return None


@dataclass
class Unit:
    """One model to train: fold position `pos` (in the chosen folds), ensemble member `member`."""

    pos: int
    member: int
    fold: Fold  # the member's own fold (its validation speakers)
    cfg: ExperimentConfig  # seed + member
    dir: Path


def plan_units(
    cfg: ExperimentConfig,
    run: Path,
    df: pd.DataFrame,
    folds: list[Fold],
    labels: list[str],
    resume: bool,
) -> tuple[list[Unit], dict[tuple[int, int], np.ndarray]]:
    """Every (fold, member) unit not yet finished, and the test probabilities of those that
    are (reused only with `resume`)."""
    picked = chosen(cfg, folds)
    by_member = member_folds(cfg, df, folds)
    todo: list[Unit] = []
    done: dict[tuple[int, int], np.ndarray] = {}
    for pos, i in enumerate(picked):
        for k in range(max(1, cfg.train.ensemble)):
            mdir = member_dir(run / f"fold_{pos:02d}", k)
            probs = finished_probs(mdir, labels) if resume else None
            if probs is not None:
                done[(pos, k)] = probs
                log.info("fold %d/%d member %d already done, reused", pos + 1, len(picked), k)
                continue
            c = cfg if k == 0 else dataclasses.replace(cfg, seed=cfg.seed + k)
            todo.append(Unit(pos, k, by_member[k][i], c, mdir))
    return todo, done


WORKER: dict[str, Any] = {}  # the `state` of the running :func:`run_units` (in its processes too)


def worker_threads(requested: int | None, jobs: int) -> int:
    """Torch threads of each of `jobs` worker processes: `requested` (``train.num_threads``),
    else an equal share of the usable cores."""
    from stlser.utils import usable_cores

    return requested or max(1, usable_cores() // jobs)


def _init_worker(state: dict[str, Any], threads: int, parent: int) -> None:
    die_with_parent(parent)
    import torch

    from stlser import logs

    logs.quiet_third_party()
    torch.set_num_threads(threads)
    WORKER.update(state)


def run_units(
    units: Iterable[Unit] | Iterable[Any],
    work: Callable[[Any], Any],
    on_done: Callable[[Any, Any], None],
    state: dict[str, Any],
    jobs: int = 1,
    threads: int | None = None,
) -> None:
    """`work(unit)` for every unit, then `on_done(unit, result)`; `work` reads what the units
    share from :data:`WORKER`, which holds `state` while they run. With `jobs` > 1 the units run
    in that many spawned processes, each with its own copy of `state` and
    :func:`worker_threads` torch threads (`work` must be an importable function). In this
    process, `threads` (if given) holds for the run, and the process's own count otherwise
    (e.g. ``OMP_NUM_THREADS``)."""
    units = list(units)
    if jobs <= 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)  # rounding of the fits depends on it
        WORKER.update(state)
        try:
            for u in units:
                on_done(u, work(u))
        finally:
            WORKER.clear()
            torch.set_num_threads(before)
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(
        jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(state, worker_threads(threads, jobs), os.getpid()),
    )
    try:
        pending = {pool.submit(work, u): u for u in units}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                u = pending.pop(fut)
                on_done(u, fut.result())
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM) or a unit failed: stop the workers now rather than
        # waiting for the units they are running; finished units are already on disk
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
