"""CREMA-D: ``<root>/AudioWAV/1001_DFA_ANG_XX.wav`` (+ optional ``VideoDemographics.csv``)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from .base import CorpusError, Entry, count_check, list_files, no_audio, unknown_code

NAME = "cremad"
LAYOUT = (
    "<root>/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, e.g. AudioWAV/1001_DFA_ANG_XX.wav"
)
EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
TOTAL = 7442
N_ACTORS = 91
_NAME_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Za-z]{3})_([A-Z]{2})$")


def _demographics(root: Path) -> dict[str, str]:
    """Actor → M/F from VideoDemographics.csv (ActorID, ..., Sex), when present."""
    for cand in (root / "VideoDemographics.csv", root.parent / "VideoDemographics.csv"):
        if cand.is_file():
            with open(cand, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
            out = {}
            for r in rows:
                sex = (r.get("Sex") or "").strip().lower()
                if r.get("ActorID") and sex in ("male", "female"):
                    out[r["ActorID"].strip()] = "M" if sex == "male" else "F"
            return out
    return {}


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List CREMA-D clips; gender only when VideoDemographics.csv is beside AudioWAV."""
    folder = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    files = list_files(folder, "*.wav")
    if not files:
        raise no_audio(NAME, root, LAYOUT)
    sex = _demographics(folder.parent if folder.name == "AudioWAV" else folder)
    out = []
    for p in files:
        m = _NAME_RE.match(p.stem)
        if not m:
            raise CorpusError(f"{NAME}: file name {p.name!r} in {folder} does not follow {LAYOUT}")
        actor, sentence, emo, _ = m.groups()
        if emo.upper() not in EMOTIONS:
            raise unknown_code(NAME, p, emo, EMOTIONS)
        out.append(
            Entry(
                p.stem,
                p,
                EMOTIONS[emo.upper()],
                actor,
                "",
                sex.get(actor, ""),
                SENTENCES.get(sentence, ""),
            )
        )
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare with the release total (7,442) when all 91 actors are present."""
    if df["speaker"].nunique() < N_ACTORS:
        return [], None
    return count_check(
        NAME, "clips", {"total": len(df)}, {"total": TOTAL}
    ), "7,442 clips of 91 actors"
