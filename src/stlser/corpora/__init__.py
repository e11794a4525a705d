"""Corpus readers and the manifest: one CSV row per usable utterance.

Each corpus is read in its own release layout, untouched, from a folder the user names.
:func:`build_manifest` lists the utterances with the corpus's reader (:data:`READERS`), decodes
and validates every file (unreadable ones are listed in ``skipped``, the scan goes on),
compares complete releases with their published counts (a mismatch is printed and kept in the
summary, never hidden) and returns a DataFrame with the columns of :data:`COLUMNS`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from stlser import audio
from stlser.utils import atomic_path, escape_frame, printable, unescape_frame

from . import (
    casia,
    cremad,
    duplicates,
    emobox,
    emodb,
    folder,
    iemocap,
    nemo,
    ravdess,
    savee,
    synthetic,
    table,
    tess,
)
from . import duplicates as duplicates_mod
from .base import (
    CANONICAL,
    FOUR_CLASS,
    FOUR_LABELS,
    CorpusError,
    Entry,
    Reader,
    canonical,
)

__all__ = [
    "CANONICAL",
    "COLUMNS",
    "FOUR_CLASS",
    "FOUR_LABELS",
    "READERS",
    "CorpusError",
    "Entry",
    "Reader",
    "build_manifest",
    "canonical",
    "duplicates",
    "manifest_output",
    "read_manifest",
    "summarize",
    "write_manifest",
]

#: Manifest columns, in order (``text`` is added when the corpus provides transcripts, ``fold``
#: when it provides a benchmark's test folds).
COLUMNS = ["utt_id", "path", "label", "speaker", "session", "gender", "duration", "corpus"]
LABEL_SETS = ("native", "4class")
#: Above this many files the audio check shows a progress bar (stderr).
PROGRESS_MIN = 200


def _reader(mod, check: bool = True) -> Reader:
    return Reader(mod.NAME, mod.scan, mod.LAYOUT, getattr(mod, "check", None) if check else None)


#: Registry: corpus name → reader.
READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        _reader(iemocap),
        _reader(emodb),
        _reader(ravdess),
        _reader(cremad),
        _reader(tess),
        _reader(savee),
        _reader(casia),
        _reader(nemo),
        _reader(emobox),
        _reader(folder),
        _reader(table),
        _reader(synthetic),
    )
}
#: Readers that take a speaker regex (the others know their speakers from the layout).
REGEX_READERS = ("folder", "csv", "emobox")


def _check_one(path: Path) -> tuple[float | None, str]:
    try:
        return audio.check(path).duration, ""
    except audio.AudioError as e:
        return None, e.reason
    except OSError as e:  # permissions, vanished files
        return None, f"cannot read ({e.strerror or e})"


def _check_audio(
    paths: Sequence[Path], desc: str, workers: int | None
) -> list[tuple[float | None, str]]:
    """Decode and validate every file in a thread pool (soundfile releases the GIL)."""
    from tqdm.auto import tqdm

    n_workers = workers or min(8, 2 * (os.cpu_count() or 1))
    with (
        ThreadPoolExecutor(max_workers=n_workers) as pool,
        tqdm(
            total=len(paths),
            desc=desc,
            unit="file",
            file=sys.stderr,
            disable=len(paths) <= PROGRESS_MIN,
        ) as bar,
    ):
        out = []
        for res in pool.map(_check_one, paths):
            out.append(res)
            bar.update(1)
    return out


def _frame(entries: Iterable[Entry], corpus: str) -> pd.DataFrame:
    rows = [
        {
            "utt_id": e.utt_id,
            "path": str(e.path),
            "label": e.label,
            "speaker": e.speaker,
            "session": e.session,
            "gender": e.gender,
            "corpus": corpus,
            "text": e.text,
            "fold": e.fold,
        }
        for e in entries
    ]
    cols = ["utt_id", "path", "label", "speaker", "session", "gender", "corpus", "text", "fold"]
    return pd.DataFrame(rows, columns=cols)


def build_manifest(
    corpus: str,
    root: str | os.PathLike,
    labels: str = "native",
    speaker_regex: str | None = None,
    workers: int | None = None,
    audio: str | os.PathLike | None = None,
    duplicates: str = "error",
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Scan `corpus` at `root` → (manifest DataFrame, skipped [(path, reason)]).

    `labels="4class"` keeps neutral/happy/sad/angry (IEMOCAP excited → happy) and drops the
    rest. Raises :class:`CorpusError` when the folder does not have the corpus's layout.
    Count-check warnings are printed to stderr and kept in ``df.attrs["warnings"]``.
    `audio` is the audio folder of readers whose lists live apart from the audio (``emobox``).
    Byte-identical files under several ids are found and handled by `duplicates`
    (``error``: kept, ``drop``: see :mod:`stlser.corpora.duplicates`); the table of every group
    member is ``df.attrs["duplicates"]`` (records).
    """
    if duplicates not in duplicates_mod.MODES:
        raise CorpusError(f"duplicates must be one of {duplicates_mod.MODES}, got {duplicates!r}")
    if audio is not None and corpus != "emobox":
        raise CorpusError(f"--audio applies only to the emobox reader, not {corpus}")
    if corpus not in READERS:
        raise CorpusError(f"unknown corpus {corpus!r}; known: {', '.join(READERS)}")
    if labels not in LABEL_SETS:
        raise CorpusError(f"labels must be one of {LABEL_SETS}, got {labels!r}")
    if speaker_regex and corpus not in REGEX_READERS:
        raise CorpusError(
            f"a speaker regex applies only to the {'/'.join(REGEX_READERS)} readers; "
            f"{corpus} takes its speakers from the layout"
        )
    reader = READERS[corpus]
    base = Path(root).expanduser().absolute()
    if not base.exists():
        raise CorpusError(f"{corpus}: corpus root {base} does not exist")
    if corpus != "csv" and not base.is_dir():
        raise CorpusError(f"{corpus}: corpus root {base} is not a folder; expected {reader.layout}")

    if corpus == "emobox":
        entries = emobox.scan(base, speaker_regex, audio)
    else:
        entries = reader(base, speaker_regex)
    seen: dict[str, Path] = {}
    for e in entries:
        if e.utt_id in seen:
            raise CorpusError(
                f"{corpus}: two files give the utterance id {e.utt_id!r}: {seen[e.utt_id]} and "
                f"{e.path} (does the folder hold two copies of the corpus?)"
            )
        seen[e.utt_id] = e.path

    native = _frame(entries, corpus)
    if labels == "4class":
        keep = native[native["label"].isin(FOUR_CLASS)].copy()
        keep["label"] = keep["label"].map(FOUR_CLASS)
        if keep.empty:
            raise CorpusError(
                f"{corpus}: none of the {len(native)} utterances under {base} has a four-class "
                f"label ({'/'.join(FOUR_LABELS)}); labels found: "
                f"{', '.join(sorted(set(native['label'])))}"
            )
    else:
        keep = native.copy()

    results = _check_audio([Path(p) for p in keep["path"]], f"checking {corpus} audio", workers)
    keep["duration"] = [None if d is None else round(d, 4) for d, _ in results]
    skipped = [(p, r) for p, (d, r) in zip(keep["path"], results, strict=True) if d is None]
    df = keep[keep["duration"].notna()].copy()
    df["duration"] = df["duration"].astype(float)

    warnings: list[str] = []
    verified = ""
    if reader.check is not None:
        bad = {p for p, _ in skipped}
        present = native[~native["path"].isin(bad)].reset_index(drop=True)
        warnings, note = reader.check(present)
        if note and not warnings:
            verified = note
        if warnings and skipped:
            warnings.append(f"{corpus}: ({len(skipped)} file(s) were skipped as unreadable)")
    for w in warnings:
        print(f"stlser: warning: {w}", file=sys.stderr)

    cols = COLUMNS + [c for c in ("text", "fold") if (df[c] != "").any()]
    df = df[cols].sort_values("utt_id", kind="stable").reset_index(drop=True)
    df, dropped, table = duplicates_mod.apply(df, duplicates_mod.find(df), duplicates)
    df.attrs = {
        "corpus": corpus,
        "labels": labels,
        "warnings": warnings,
        "verified": verified,
        "duplicates": table.to_dict("records"),
    }
    return df, sorted(skipped + dropped)


def manifest_output(out: str | os.PathLike) -> Path:
    """The manifest file `out` names (a folder, existing or without suffix, →
    ``<out>/manifest.csv``), refused (CorpusError) when writing it would replace something of
    another kind: a suffix other than ``.csv`` (e.g. an audio file), a pipe or device, a path
    under a file. Cheap: call it before scanning."""
    p = Path(out)
    if p.is_dir() or not p.suffix:
        p = p / "manifest.csv"
    if p.suffix.lower() != ".csv":
        raise CorpusError(f"manifest output must be a folder or a .csv file, got {p.name!r}")
    if p.exists() and not p.is_file():
        raise CorpusError(f"manifest output {p} exists and is not a regular file")
    for side in ("skipped.csv", "duplicates.csv"):
        if (p.parent / side).exists() and not (p.parent / side).is_file():
            raise CorpusError(f"{p.parent / side} exists and is not a regular file")
    probe = p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CorpusError(f"manifest output {p}: {probe} is not a folder")
    return p


def write_manifest(
    df: pd.DataFrame,
    skipped: Iterable[tuple[str, str]],
    out: str | os.PathLike,
    duplicates: pd.DataFrame | None = None,
) -> Path:
    """Write the manifest CSV atomically and ``skipped.csv`` (path,reason) beside it, and the
    table of byte-identical files (`duplicates.apply`) as ``duplicates.csv`` when given.

    `out` may be a folder (an existing one, or a path without suffix) → ``<out>/manifest.csv``;
    an output of another kind is refused (`manifest_output`).
    """
    p = manifest_output(out)
    skip = pd.DataFrame(list(skipped), columns=["path", "reason"])
    # both files are written to temporary files first and renamed only when both succeeded:
    # a full disk leaves the previous manifest and skipped.csv as they were (OutputError)
    with atomic_path(p) as tmp_manifest:
        escape_frame(df).to_csv(tmp_manifest, index=False)
        with atomic_path(p.parent / "skipped.csv") as tmp_skipped:
            escape_frame(skip).to_csv(tmp_skipped, index=False)
            if duplicates is not None:
                with atomic_path(p.parent / "duplicates.csv") as tmp_dup:
                    escape_frame(duplicates).to_csv(tmp_dup, index=False)
    return p


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV: text columns as str ('' when missing), duration as float.

    Relative paths (a hand-written manifest) resolve from the manifest's folder. Cells that
    `write_manifest` escaped against spreadsheet formulas (``'=…``) are read back as written
    (`stlser.utils.csv_uncell`), so a manifest round-trips exactly.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    df = unescape_frame(pd.read_csv(p, dtype=str, keep_default_na=False))  # see write_csv
    missing = {"utt_id", "path", "label"} - set(df.columns)
    if missing:
        raise CorpusError(f"manifest {p} lacks column(s): {', '.join(sorted(missing))}")
    for col in ("speaker", "session", "gender", "corpus"):
        if col not in df.columns:
            df[col] = ""
    if "duration" in df.columns:
        df["duration"] = pd.to_numeric(df["duration"].replace("", None), errors="coerce")
    else:
        df["duration"] = float("nan")
    base = p.parent.absolute()
    df["path"] = [q if os.path.isabs(q) else str(base / q) for q in df["path"]]
    dup = df["utt_id"][df["utt_id"].duplicated()]
    if len(dup):
        raise CorpusError(f"manifest {p}: utt_id not unique (e.g. {dup.iloc[0]!r})")
    return normalize_manifest(df, str(p))


def normalize_manifest(df: pd.DataFrame, name: str = "manifest") -> pd.DataFrame:
    """Labels and speakers of a (possibly hand-written) manifest as the readers give them:
    labels by `lenient_label` (canonical name when known, else stripped), speakers stripped,
    and speaker ids that differ only in case merged into their first spelling (with a warning)."""
    from .base import lenient_label

    df["label"] = [lenient_label(x) for x in df["label"].astype(str)]
    spk = df["speaker"].astype(str).str.strip()
    first: dict[str, str] = {}
    merged: dict[str, set[str]] = {}
    for s in spk:
        k = s.casefold()
        first.setdefault(k, s)
        if first[k] != s:
            merged.setdefault(first[k], set()).add(s)
    if merged:
        eg = ", ".join(f"{sorted(v)} → {k!r}" for k, v in list(merged.items())[:3])
        print(
            f"stlser: warning: {name}: speaker ids differing only in case are one speaker: {eg}",
            file=sys.stderr,
        )
    df["speaker"] = [first[s.casefold()] for s in spk]
    return df


def _table(rows: list[list[str]], right: Sequence[bool]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def summarize(df: pd.DataFrame, skipped: Sequence[tuple[str, str]] = ()) -> str:
    """Human-readable summary: totals, hours, counts per label and speaker, skipped, checks.
    Names from the data (labels, speakers, paths) are shown with control characters escaped
    (`utils.printable`): a folder name cannot forge lines or send terminal escapes."""
    attrs = dict(df.attrs)
    df = df.copy()
    for col in ("label", "speaker", "gender", "session", "corpus"):
        if col in df:
            df[col] = [printable(v) for v in df[col].astype(str)]
    df.attrs = attrs
    skipped = [(printable(p), printable(r)) for p, r in skipped]
    corpus = df.attrs.get("corpus") or (df["corpus"].iloc[0] if len(df) else "manifest")
    hours = float(df["duration"].sum()) / 3600 if "duration" in df else float("nan")
    n_spk = df["speaker"].replace("", pd.NA).nunique()
    lines = [
        f"{corpus} ({df.attrs.get('labels', 'labels as given')}): {len(df):,} utterances, "
        f"{hours:.2f} h, {df['label'].nunique()} labels, {n_spk} speakers, {len(skipped)} skipped"
    ]
    if len(df) and "duration" in df:
        lines.append(
            f"duration: min {df['duration'].min():.2f} s, median {df['duration'].median():.2f} s, "
            f"max {df['duration'].max():.2f} s"
        )
    labels = sorted(df["label"].unique())
    counts = df["label"].value_counts()
    lines.append("labels: " + ", ".join(f"{lab} {counts[lab]:,}" for lab in labels))
    if n_spk:
        tab = pd.crosstab(df["speaker"], df["label"]).reindex(columns=labels, fill_value=0)
        gender = df.groupby("speaker")["gender"].first()
        if len(tab) <= 30:
            rows = [["speaker", "gender", *labels, "total"]]
            for spk, r in tab.iterrows():
                rows.append(
                    [str(spk), gender.get(spk, "") or "-", *map(str, r.tolist()), str(r.sum())]
                )
            rows.append(["all", "", *map(str, tab.sum().tolist()), str(int(tab.values.sum()))])
            lines.append(_table(rows, [False, False] + [True] * (len(labels) + 1)))
        else:
            per = tab.sum(axis=1)
            lines.append(
                f"per speaker: min {per.min()}, median {int(per.median())}, "
                f"max {per.max()} utterances"
            )
    if (df["session"] != "").any():
        sess = df["session"].value_counts().sort_index()
        lines.append("sessions: " + ", ".join(f"{s} {n:,}" for s, n in sess.items()))
    if skipped:
        lines.append(f"skipped {len(skipped)} file(s) (reasons in skipped.csv), e.g.:")
        lines += [f"  {p}: {r}" for p, r in skipped[:5]]
    if df.attrs.get("verified"):
        lines.append(f"count check: OK ({df.attrs['verified']})")
    for w in df.attrs.get("warnings", []):
        lines.append(f"WARNING count check: {w}")
    return "\n".join(lines)
