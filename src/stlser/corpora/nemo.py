"""nEMO, Polish acted emotional speech: ``<root>/samples/<SPK>_<emotion>_<n>.{wav,ogg}``.

The release holds 24 kHz WAV files and ``data.tsv`` (file_id, emotion, raw_text,
normalized_text, speaker_id, gender, age; ``speaker_id`` carries leading spaces and
``file_id`` names the ``.wav``). A re-encoded copy (e.g. 16 kHz Ogg Vorbis) is read the same
way: a file is matched to its ``data.tsv`` row by its stem. Speaker and emotion come from the
file name; gender and transcript from ``data.tsv`` when it is there. Licence: CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from .base import AUDIO_SUFFIXES, CorpusError, Entry, canonical, count_check, list_files, no_audio

NAME = "nemo"
LAYOUT = "<root>/samples/<SPK>_<emotion>_<n>.wav (or .ogg) with <root>/data.tsv"
EMOTIONS = ("anger", "fear", "happiness", "neutral", "sadness", "surprised")
#: Published counts of the release.
SPEAKERS = {
    "EB0": 539,
    "IC0": 540,
    "KD0": 540,
    "KS0": 540,
    "MK0": 450,
    "MP0": 256,
    "SM0": 538,
    "TP0": 539,
    "WR0": 539,
}
COUNTS = {"angry": 749, "fear": 736, "happy": 749, "neutral": 809, "sad": 769, "surprise": 669}
_NAME_RE = re.compile(r"^([A-Za-z]+\d*)_([a-z]+)_(\d+)$")


def _metadata(root: Path) -> dict[str, dict[str, str]]:
    """data.tsv rows keyed by file stem (empty when the file is absent)."""
    tsv = root / "data.tsv"
    if not tsv.is_file():
        return {}
    with open(tsv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "file_id" not in rows[0]:
        raise CorpusError(f"{NAME}: {tsv} has no file_id column; expected the release's data.tsv")
    return {Path((r.get("file_id") or "").strip()).stem: r for r in rows}


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List nEMO utterances (WAV or any re-encoding soundfile reads)."""
    folder = root / "samples" if (root / "samples").is_dir() else root
    files = [p for p in list_files(folder, "*") if p.suffix.lower() in AUDIO_SUFFIXES]
    if not files:
        raise no_audio(NAME, root, LAYOUT)
    meta = _metadata(root)
    out, seen = [], set()
    for p in files:
        m = _NAME_RE.match(p.stem)
        if not m:
            raise CorpusError(f"{NAME}: file name {p.name!r} in {folder} does not follow {LAYOUT}")
        spk, emo, _ = m.groups()
        if emo not in EMOTIONS:
            raise CorpusError(
                f"{NAME}: unknown emotion {emo!r} in {p} (known: {', '.join(EMOTIONS)})"
            )
        if p.stem in seen:
            raise CorpusError(f"{NAME}: {p.stem} exists in two formats under {folder}")
        seen.add(p.stem)
        row = meta.get(p.stem, {})
        gender = {"male": "M", "female": "F"}.get((row.get("gender") or "").strip().lower(), "")
        label = canonical(emo)
        assert label is not None
        out.append(Entry(p.stem, p, label, spk, "", gender, (row.get("raw_text") or "").strip()))
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare with the release (4,481 utterances, per speaker and emotion) if all speakers exist."""
    if not set(SPEAKERS) <= set(df["speaker"]):
        return [], None
    warn = count_check(NAME, "utterances", {"total": len(df)}, {"total": sum(COUNTS.values())})
    warn += count_check(NAME, "label", df["label"].value_counts().to_dict(), COUNTS)
    warn += count_check(NAME, "speaker", df["speaker"].value_counts().to_dict(), SPEAKERS)
    return warn, "4,481 utterances, per-emotion and per-speaker counts match the nEMO release"
