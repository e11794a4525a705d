"""TESS (Toronto emotional speech set): ``<OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav``.

Copies differ in case and in the spelling of pleasant surprise (``Pleasant_surprise``,
``pleasant_surprised``, ``ps``), so names are matched case-insensitively, files anywhere
under the root. The emotion comes from the file name, else from its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .base import Entry, canonical, count_check, list_files, no_audio, unknown_code

NAME = "tess"
LAYOUT = (
    "<root>/[...]/<OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav, "
    "e.g. OAF_Fear/OAF_back_fear.wav"
)
EMOTIONS = (
    "angry",
    "disgust",
    "fear",
    "happy",
    "neutral",
    "pleasant_surprise",
    "pleasant_surprised",
    "ps",
    "sad",
)
_EMO = "|".join(sorted(EMOTIONS, key=len, reverse=True))
_FILE_RE = re.compile(rf"^(oaf|yaf)_(.+)_({_EMO})$", re.IGNORECASE)
_DIR_RE = re.compile(rf"^(oaf|yaf)_({_EMO})$", re.IGNORECASE)
_SPK_RE = re.compile(r"^(oaf|yaf)_(.+)$", re.IGNORECASE)
TOTAL = 2800


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List TESS files (both speakers are women: gender F)."""
    files = list_files(root, "*.wav", recursive=True)
    if not files:
        raise no_audio(NAME, root, LAYOUT)
    out = []
    for p in files:
        m = _FILE_RE.match(p.stem)
        d = _DIR_RE.match(p.parent.name)
        if m:
            spk, word, emo = m.groups()
        elif d and _SPK_RE.match(p.stem):
            spk, emo = d.groups()
            word = _SPK_RE.match(p.stem).group(2)
        else:
            code = p.stem.rsplit("_", 1)[-1]
            raise unknown_code(NAME, p, code, EMOTIONS)
        label = canonical(emo.lower())
        uid = f"{spk.upper()}_{word.lower()}_{emo.lower()}"
        out.append(Entry(uid, p, label, spk.upper(), "", "F", f"Say the word {word.lower()}."))
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare with the release (2 speakers x 7 emotions x 200 = 2,800) if both speakers exist."""
    if set(df["speaker"]) != {"OAF", "YAF"}:
        return [], None
    cells = {
        f"{s}/{lab}": int(n) for (s, lab), n in df.groupby(["speaker", "label"]).size().items()
    }
    labels = ("angry", "disgust", "fear", "happy", "neutral", "surprise", "sad")
    expected = {f"{s}/{lab}": 200 for s in ("OAF", "YAF") for lab in labels}
    warn = count_check(NAME, "files", {"total": len(df)}, {"total": TOTAL})
    warn += count_check(NAME, "speaker/emotion", cells, expected)
    return warn, "2,800 files = 2 speakers x 7 emotions x 200"
