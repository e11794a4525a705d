"""Evaluation folds from a manifest: one factory (:func:`make_folds`) and a leak check.

Speaker-independent protocols (the honest default) keep every speaker in exactly one part of
a fold; validation speakers for early stopping are whole speakers carved out of the training
speakers, never out of the test fold. The paper's random 7/1/2 split is offered for
reproduction only and is marked ``speaker_independent=False`` ("speaker-dependent"). The
``predefined`` protocol takes a benchmark's own test folds from the manifest's ``fold`` column
and states, fold by fold, whether they share speakers.

Why this is one module: the protocols and the leak check that vets their folds share one fold
record and one notion of speaker and file identity.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stlser.utils import write_json

PROTOCOLS = ("loso", "loso-session", "group-kfold", "paper", "predefined")
PROTOCOL_LABELS = {
    "loso": "leave-one-speaker-out (speaker-independent)",
    "loso-session": "leave-one-session-out (speaker-independent)",
    "group-kfold": "speaker-grouped k-fold (speaker-independent)",
    "paper": "paper's random 7/1/2 split (speaker-dependent: speakers shared by train/val/test)",
    "predefined": "the benchmark's own test folds (manifest column 'fold')",
}
FORMAT = "stlser-splits/1"
#: ``fold`` value of rows the predefined protocol never tests (always training).
TRAIN_ONLY = "none"
#: Candidate validation-speaker sets examined per fold (combinations can explode).
_MAX_COMBOS = 2000


class LeakError(ValueError):
    """A fold that mixes utterances or speakers between its parts, or is otherwise invalid."""


@dataclass
class Fold:
    """One train/validation/test partition (lists of utt_id)."""

    name: str
    train: list[str]
    val: list[str]
    test: list[str]
    test_speakers: list[str]
    val_speakers: list[str]
    seed: int
    speaker_independent: bool
    protocol: str = ""


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _speakers(df: pd.DataFrame) -> pd.Series:
    if "speaker" not in df.columns or (df["speaker"].astype(str) == "").any():
        n = 0 if "speaker" not in df.columns else int((df["speaker"].astype(str) == "").sum())
        raise ValueError(
            f"speaker-independent splits need a speaker for every utterance; {n or 'all'} "
            "utterance(s) have none (use a reader that knows speakers, a --speaker-regex, "
            "or the speaker-dependent 'paper' protocol)"
        )
    return df["speaker"].astype(str)


def _pick_val(
    df: pd.DataFrame, candidates: Sequence[str], n: int, rng: np.random.Generator
) -> list[str]:
    """Choose `n` validation speakers among `candidates` (the training speakers).

    Deterministic given `rng`; prefers a set that leaves every label present in both
    validation and the remaining training speakers; ties keep the seeded order.
    """
    if n < 1:
        raise ValueError("val_speakers must be >= 1 (validation comes from whole speakers)")
    if len(candidates) <= n:
        raise ValueError(
            f"{len(candidates)} training speaker(s) cannot give {n} validation speaker(s) and "
            "keep at least one for training"
        )
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    by_spk = {s: set(g) for s, g in df.groupby(df["speaker"].astype(str))["label"]}
    pool = set().union(*(by_spk[s] for s in candidates))
    best, best_score = None, (-1, -1)
    for combo in itertools.islice(itertools.combinations(order, n), _MAX_COMBOS):
        val_labels = set().union(*(by_spk[s] for s in combo))
        rest = set().union(*(by_spk[s] for s in candidates if s not in combo))
        score = (len(val_labels), len(rest))
        if score > best_score:
            best, best_score = list(combo), score
            if score == (len(pool), len(pool)):
                break
    return sorted(best)


def _speaker_fold(
    df: pd.DataFrame,
    name: str,
    test_spk: Sequence[str],
    seed: int,
    index: int,
    val_speakers: int,
    protocol: str,
) -> Fold:
    spk = df["speaker"].astype(str)
    rest = sorted(set(spk) - set(test_spk))
    rng = np.random.default_rng([seed, index])
    val_spk = _pick_val(df[spk.isin(rest)], rest, val_speakers, rng)
    ids = df["utt_id"].astype(str)
    return Fold(
        name=_safe(name),
        train=ids[~spk.isin(test_spk) & ~spk.isin(val_spk)].tolist(),
        val=ids[spk.isin(val_spk)].tolist(),
        test=ids[spk.isin(test_spk)].tolist(),
        test_speakers=sorted(test_spk),
        val_speakers=val_spk,
        seed=seed,
        speaker_independent=True,
        protocol=protocol,
    )


def _paper_fold(df: pd.DataFrame, seed: int, val_fraction: float, test_fraction: float) -> Fold:
    """Stratified random split by label: per label, round(n*test) test, round(n*val) val."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            "need 0 < val_fraction, test_fraction and their sum < 1 "
            f"(got {val_fraction}, {test_fraction})"
        )
    rng = np.random.default_rng(seed)
    train, val, test = set(), set(), set()
    for label in sorted(df["label"].astype(str).unique()):
        ids = sorted(df.loc[df["label"].astype(str) == label, "utt_id"].astype(str))
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n = len(ids)
        n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
        test.update(ids[:n_test])
        val.update(ids[n_test : n_test + n_val])
        train.update(ids[n_test + n_val :])
    order = df["utt_id"].astype(str)
    fold = Fold(
        name=f"seed{seed}",
        train=[u for u in order if u in train],
        val=[u for u in order if u in val],
        test=[u for u in order if u in test],
        test_speakers=[],
        val_speakers=[],
        seed=seed,
        speaker_independent=False,
        protocol="paper",
    )
    if not fold.val or not fold.test:
        raise ValueError(
            f"too few utterances per label ({len(df)} in all) for a "
            f"{1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%} split"
        )
    return fold


def _predefined_folds(
    df: pd.DataFrame, seed: int, val_speakers: int, val_fraction: float
) -> list[Fold]:
    """One fold per distinct value of the manifest's ``fold`` column (numbers in numeric order):
    test = its rows, train = the rows of the other folds (rows of fold ``none`` are always
    training rows).

    Validation is `val_speakers` whole speakers drawn (seeded) from the training speakers,
    preferring speakers absent from the test fold. A fold whose parts share a speaker is marked
    ``speaker_independent=False`` (several benchmarks' own folds do). Without a speaker for
    every utterance, validation is a stratified random `val_fraction` of the training rows and
    the fold is speaker-dependent.
    """
    if "fold" not in df.columns:
        raise ValueError(
            "the predefined protocol needs a 'fold' column in the manifest (the test fold of "
            "each utterance, e.g. from `stlser manifest --corpus emobox`)"
        )
    fold_of = df["fold"].astype(str).str.strip()
    if (fold_of == "").any():
        raise ValueError(f"{int((fold_of == '').sum())} utterance(s) have no fold")
    names = sorted(
        set(fold_of) - {TRAIN_ONLY}, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s)
    )
    if not names or (len(names) < 2 and not (fold_of == TRAIN_ONLY).any()):
        raise ValueError(
            f"the predefined protocol needs two test folds, or one and rows of fold "
            f"{TRAIN_ONLY!r} (training only); the manifest has {names}"
        )
    ids = df["utt_id"].astype(str)
    spk = df["speaker"].astype(str) if "speaker" in df.columns else pd.Series("", df.index)
    known = not (spk.str.strip() == "").any()
    out = []
    for i, name in enumerate(names):
        is_test = fold_of == name
        rng = np.random.default_rng([seed, i])
        if known:
            test_spk = sorted(set(spk[is_test]))
            cand = sorted(set(spk[~is_test]))
            clean = [s for s in cand if speaker_key(s) not in {speaker_key(t) for t in test_spk}]
            pool = clean if len(clean) > val_speakers else cand
            val_spk = _pick_val(df[~is_test & spk.isin(pool)], pool, val_speakers, rng)
            is_val = ~is_test & spk.isin(val_spk)
        else:
            test_spk, val_spk = [], []
            is_val = pd.Series(False, df.index)
            lab = df["label"].astype(str)
            for label in sorted(lab[~is_test].unique()):
                rows = sorted(df.index[~is_test & (lab == label)], key=lambda r: ids[r])
                n_val = max(1, round(len(rows) * val_fraction)) if len(rows) >= 2 else 0
                is_val[[rows[j] for j in rng.permutation(len(rows))[:n_val]]] = True
        is_train = ~is_test & ~is_val
        keys = {p: {speaker_key(s) for s in spk[m]} for p, m in (("tr", is_train), ("va", is_val))}
        test_keys = {speaker_key(s) for s in spk[is_test]}
        shared = test_keys & (keys["tr"] | keys["va"]) or keys["tr"] & keys["va"]
        out.append(
            Fold(
                name=_safe(f"fold-{name}"),
                train=ids[is_train].tolist(),
                val=ids[is_val].tolist(),
                test=ids[is_test].tolist(),
                test_speakers=test_spk,
                val_speakers=val_spk,
                seed=seed,
                speaker_independent=known and not shared,
                protocol="predefined",
            )
        )
    return out


def _balanced_groups(df: pd.DataFrame, k: int, seed: int) -> list[list[str]]:
    """Assign speakers to k groups of near-equal utterance counts (largest first, greedy)."""
    counts = df["speaker"].astype(str).value_counts()
    speakers = sorted(counts.index)
    rng = np.random.default_rng(seed)
    speakers = [speakers[i] for i in rng.permutation(len(speakers))]  # seeded tie-break
    speakers.sort(key=lambda s: -counts[s])  # stable: ties keep the seeded order
    groups: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for s in speakers:
        i = min(range(k), key=lambda j: (sizes[j], len(groups[j]), j))
        groups[i].append(s)
        sizes[i] += int(counts[s])
    return [sorted(g) for g in groups]


def make_folds(
    df: pd.DataFrame,
    protocol: str,
    seed: int = 0,
    k: int = 5,
    val_speakers: int = 1,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seeds: Sequence[int] | None = None,
) -> list[Fold]:
    """The folds of `protocol` for manifest `df` (deterministic for a given seed).

    - ``loso``: one fold per speaker.
    - ``loso-session``: one fold per ``session`` value (test = that session's speakers).
    - ``group-kfold``: `k` folds of whole speakers, balanced by utterance count.
    - ``paper``: stratified random train/val/test (1 - val - test / val / test, 7/1/2 by default),
      one fold per seed in `seeds` (or `[seed]`); speaker-dependent.
    - ``predefined``: the benchmark's own folds (:func:`_predefined_folds`).

    In the speaker-independent protocols validation is `val_speakers` whole training speakers.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if len(df) == 0:
        raise ValueError("the manifest is empty")
    if df["utt_id"].duplicated().any():
        raise ValueError("utt_id values in the manifest are not unique")
    if protocol == "paper":
        return [_paper_fold(df, int(s), val_fraction, test_fraction) for s in (seeds or [seed])]
    if protocol == "predefined":
        return _predefined_folds(df, seed, val_speakers, val_fraction)

    spk = _speakers(df)
    speakers = sorted(spk.unique())
    if protocol == "loso":
        if len(speakers) < val_speakers + 2:
            raise ValueError(
                f"loso needs at least {val_speakers + 2} speakers (test, validation, training); "
                f"the manifest has {len(speakers)}"
            )
        return [
            _speaker_fold(df, f"spk-{s}", [s], seed, i, val_speakers, protocol)
            for i, s in enumerate(speakers)
        ]
    if protocol == "loso-session":
        sess = df["session"].astype(str) if "session" in df.columns else pd.Series("", df.index)
        if (sess == "").all():
            raise ValueError(
                "loso-session needs a session for each utterance; the manifest has none"
            )
        if (sess == "").any():
            raise ValueError(f"{int((sess == '').sum())} utterance(s) have no session")
        per_spk = sess.groupby(spk).nunique()
        multi = per_spk[per_spk > 1]
        if len(multi):
            raise ValueError(
                f"speaker {multi.index[0]!r} appears in several sessions; leave-one-session-out "
                "would put the same speaker in training and test"
            )
        sessions = sorted(sess.unique())
        if len(sessions) < 2:
            raise ValueError("loso-session needs at least two sessions")
        return [
            _speaker_fold(
                df, f"session-{s}", sorted(spk[sess == s].unique()), seed, i, val_speakers, protocol
            )
            for i, s in enumerate(sessions)
        ]
    # group-kfold
    if not 2 <= k <= len(speakers):
        raise ValueError(
            f"group-kfold needs 2 <= k <= number of speakers ({len(speakers)}), got k={k}"
        )
    if len(speakers) - max(map(len, _balanced_groups(df, k, seed))) < val_speakers + 1:
        raise ValueError(
            f"too few speakers ({len(speakers)}) for k={k} and {val_speakers} validation speaker(s)"
        )
    return [
        _speaker_fold(df, f"fold{i}", g, seed, i, val_speakers, protocol)
        for i, g in enumerate(_balanced_groups(df, k, seed))
    ]


def from_config(df: pd.DataFrame, split: Any, seed: int) -> list[Fold]:
    """The folds a `config.SplitConfig` describes, checked for leaks (the one place configs
    become folds: the evaluation driver and `stlser splits` call this)."""
    folds = make_folds(
        df,
        split.protocol,
        seed=seed,
        k=split.k,
        val_speakers=split.val_speakers,
        val_fraction=split.val_fraction,
        test_fraction=split.test_fraction,
        seeds=split.seeds,
    )
    check_folds(folds, df)
    check_files(folds, df)
    return folds


def check_folds(folds: Sequence[Fold], df: pd.DataFrame) -> None:
    """Raise :class:`LeakError` unless every fold is a clean partition.

    Checks: known utt_ids, no duplicates, no utterance in two parts, every part non-empty,
    and for speaker-independent folds no speaker in two parts and the declared
    test/validation speakers equal to the speakers of those parts.
    """
    if not folds:
        raise LeakError("no folds")
    known = set(df["utt_id"].astype(str))
    speaker_of = dict(
        zip(
            df["utt_id"].astype(str),
            df.get("speaker", pd.Series("", df.index)).astype(str),
            strict=True,
        )
    )
    names = [f.name for f in folds]
    if len(set(names)) != len(names):
        raise LeakError(f"fold names are not unique: {names}")
    for f in folds:
        parts = {"train": f.train, "val": f.val, "test": f.test}
        for part, ids in parts.items():
            if not ids:
                raise LeakError(f"fold {f.name}: {part} is empty")
            if len(set(ids)) != len(ids):
                raise LeakError(f"fold {f.name}: {part} lists an utterance twice")
            unknown = set(ids) - known
            if unknown:
                raise LeakError(
                    f"fold {f.name}: {part} has {len(unknown)} utt_id(s) not in the manifest, "
                    f"e.g. {sorted(unknown)[0]!r}"
                )
        for a, b in itertools.combinations(parts, 2):
            both = set(parts[a]) & set(parts[b])
            if both:
                raise LeakError(
                    f"fold {f.name}: {len(both)} utterance(s) in both {a} and {b}, "
                    f"e.g. {sorted(both)[0]!r}"
                )
        if not f.speaker_independent:
            continue
        spk = {part: {speaker_key(speaker_of[u]) for u in ids} for part, ids in parts.items()}
        if any("" in s for s in spk.values()):
            raise LeakError(
                f"fold {f.name}: speaker-independent but some utterances have no speaker"
            )
        for a, b in itertools.combinations(spk, 2):
            both = spk[a] & spk[b]
            if both:
                raise LeakError(f"fold {f.name}: speaker(s) {sorted(both)} in both {a} and {b}")
        declared = (
            {speaker_key(x) for x in f.test_speakers},
            {speaker_key(x) for x in f.val_speakers},
        )
        if (spk["test"], spk["val"]) != declared:
            raise LeakError(
                f"fold {f.name}: declared test/val speakers {f.test_speakers}/{f.val_speakers} "
                f"differ from those of their utterances {sorted(spk['test'])}/{sorted(spk['val'])}"
            )


def speaker_key(s: object) -> str:
    """Speaker ids compare stripped and case-insensitively ("F01 " and "f01" are one person)."""
    return str(s).strip().casefold()


#: Content hashing for the duplicate-file check stops after this many bytes (cheap checks only).
HASH_BUDGET = 256 * 1024 * 1024


def _file_identity(paths: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """utt_id → resolved path, and utt_id → content hash for files whose size another file
    shares (only those can be identical; hashing stops at HASH_BUDGET bytes in all)."""
    import hashlib

    real = {u: os.path.realpath(p) for u, p in paths.items() if p}
    sizes: dict[str, int] = {}
    for u, p in real.items():
        try:
            sizes[u] = os.stat(p).st_size
        except OSError:
            continue
    by_size: dict[int, list[str]] = {}
    for u, n in sizes.items():
        by_size.setdefault(n, []).append(u)
    digest: dict[str, str] = {}
    budget = HASH_BUDGET
    for n, us in sorted(by_size.items()):
        if len({real[u] for u in us}) < 2:
            continue
        for u in us:
            if budget < n:
                return real, digest
            budget -= n
            h = hashlib.sha1()
            try:
                with open(real[u], "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(block)
            except OSError:
                continue
            digest[u] = f"{n}:{h.hexdigest()}"
    return real, digest


def duplicate_groups(df: pd.DataFrame) -> list[list[str]]:
    """Groups (≥ 2, in manifest order; groups ordered by their first member) of utt_ids whose
    files are one file or byte-identical (hashed only among files of equal size, within
    HASH_BUDGET)."""
    if "path" not in df.columns or df.empty:
        return []
    ids = df["utt_id"].astype(str).tolist()
    real, digest = _file_identity(dict(zip(ids, df["path"].astype(str), strict=True)))
    groups: dict[str, list[str]] = {}
    for u in ids:
        if u in real:
            groups.setdefault(digest.get(u) or f"path:{real[u]}", []).append(u)
    return [g for g in groups.values() if len(g) > 1]


def check_files(folds: Sequence[Fold], df: pd.DataFrame) -> None:
    """Raise LeakError when one audio file (same resolved path, or identical content) is in two
    parts of a fold under different utt_ids; the message lists every such group of the first
    fold that has one, and the way forward (``data.duplicates=drop``)."""
    if "path" not in df.columns:
        return
    real, digest = _file_identity(
        dict(zip(df["utt_id"].astype(str), df["path"].astype(str), strict=True))
    )
    for f in folds:
        parts = {"train": f.train, "val": f.val, "test": f.test}
        found: list[str] = []
        for what, key in (("file", real), ("identical content", digest)):
            groups: dict[str, list[tuple[str, str]]] = {}
            for part, ids in parts.items():
                for u in ids:
                    k = key.get(u)
                    if k is not None:
                        groups.setdefault(k, []).append((part, u))
            for members in groups.values():
                if what != "file" and len({real[u] for _, u in members}) == 1:
                    continue  # one file under several ids: reported as "the same file"
                if len({part for part, _ in members}) > 1:
                    found.append(
                        f"the same {what} is in "
                        + ", ".join(f"{part} ({u!r})" for part, u in members)
                        + f": {real.get(members[0][1], '')}"
                    )
        if found:
            raise LeakError(
                f"fold {f.name}: {len(found)} group(s) of copies of one file in two parts:\n  "
                + "\n  ".join(found)
                + "\nRemove the copies (`stlser manifest --duplicates drop` lists them) or run "
                "with --set data.duplicates=drop (keeps the first copy of each group)"
            )


def save(folds: Sequence[Fold], path: str | os.PathLike) -> Path:
    """Write folds as JSON (atomic)."""
    return write_json(path, {"format": FORMAT, "folds": [asdict(f) for f in folds]})


def load(path: str | os.PathLike) -> list[Fold]:
    """Read folds written by :func:`save`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a splits file ({FORMAT})")
    names = {f.name for f in fields(Fold)}
    return [Fold(**{k: v for k, v in d.items() if k in names}) for d in data["folds"]]


def summarize(folds: Sequence[Fold], df: pd.DataFrame) -> str:
    """A table: fold, test speakers, validation speakers, n train/val/test, protocol label."""
    protocols = sorted(
        {f.protocol or ("paper" if not f.speaker_independent else "?") for f in folds}
    )
    label = "; ".join(PROTOCOL_LABELS.get(p, p) for p in protocols)
    rows = [["fold", "test speakers", "val speakers", "train", "val", "test", "protocol"]]
    for f in folds:
        kind = "speaker-independent" if f.speaker_independent else "speaker-dependent"
        rows.append(
            [
                f.name,
                _short(f.test_speakers)
                if f.test_speakers
                else ("-" if f.protocol == "predefined" else "(random)"),
                _short(f.val_speakers) if f.val_speakers else "(random)",
                str(len(f.train)),
                str(len(f.val)),
                str(len(f.test)),
                f"{f.protocol or '?'} ({kind})",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = [False, False, False, True, True, True, False]
    lines = [f"{len(folds)} fold(s), {len(df):,} utterances: {label}"]
    for r in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right, strict=True)
            ).rstrip()
        )
    lines += [f"{f.name}: {why}" for f in folds if (why := shared_speakers(f, df))]
    return "\n".join(lines)


def shared_speakers(fold: Fold, df: pd.DataFrame) -> str:
    """Why a ``predefined`` fold is speaker-dependent ('' when it is not, or is another
    protocol's): the benchmark's test speakers also in training, or speakers unknown."""
    if fold.protocol != "predefined" or fold.speaker_independent:
        return ""
    if "speaker" not in df.columns or (df["speaker"].astype(str).str.strip() == "").any():
        return "speaker-dependent: the manifest does not name every speaker"
    of = dict(zip(df["utt_id"].astype(str), df["speaker"].astype(str), strict=True))
    test = {speaker_key(of[u]) for u in fold.test}
    both = sorted({of[u] for u in [*fold.train, *fold.val] if speaker_key(of[u]) in test})
    return (
        f"speaker-dependent: the benchmark's folds share {len(both)} speaker(s) between "
        f"training and test ({_short(both)})"
    )


def _short(items: Sequence[str], limit: int = 4) -> str:
    if len(items) <= limit:
        return ",".join(items)
    return ",".join(items[:limit]) + f",+{len(items) - limit}"
