"""SAVEE: ``<DC|JE|JK|KL>/<code><NN>.wav`` or ``ALL/<spk>_<code><NN>.wav`` (any folder depth).

Codes: a anger, d disgust, f fear, h happiness, n neutral, sa sadness, su surprise — the
two-letter codes are tried first so ``sa01`` is sadness, not anger.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .base import CorpusError, Entry, count_check, list_files, no_audio, unknown_code

NAME = "savee"
LAYOUT = "<root>/<DC|JE|JK|KL>/<code><NN>.wav or <root>/ALL/<spk>_<code><NN>.wav, e.g. DC/sa01.wav"
CODES = {
    "sa": "sad",
    "su": "surprise",
    "a": "angry",
    "d": "disgust",
    "f": "fear",
    "h": "happy",
    "n": "neutral",
}
SPEAKERS = ("DC", "JE", "JK", "KL")
#: Per speaker: 30 neutral, 15 of each other emotion → 120; 480 in all.
PER_SPEAKER = {
    "neutral": 30,
    "angry": 15,
    "disgust": 15,
    "fear": 15,
    "happy": 15,
    "sad": 15,
    "surprise": 15,
}
_SPK = "|".join(SPEAKERS)
_FLAT_RE = re.compile(rf"^({_SPK})_([a-z]+?)(\d+)$", re.IGNORECASE)
_CODE_RE = re.compile(r"^([a-z]+?)(\d+)$", re.IGNORECASE)


def _label(code: str, p: Path) -> str:
    # `code` is the whole letter run before the number, so "sa" can never be read as "a".
    label = CODES.get(code.lower())
    if label is None:
        raise unknown_code(NAME, p, code, CODES)
    return label


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List SAVEE files in either layout; the four speakers are men (gender M)."""
    files = list_files(root, "*.wav", recursive=True)
    out = []
    for p in files:
        flat = _FLAT_RE.match(p.stem)
        if flat:
            spk, code, num = flat.groups()
        elif p.parent.name.upper() in SPEAKERS:
            m = _CODE_RE.match(p.stem)
            if not m:
                raise CorpusError(
                    f"{NAME}: file name {p.name!r} in {p.parent} does not follow {LAYOUT}"
                )
            spk, (code, num) = p.parent.name, m.groups()
        else:
            continue  # not part of the corpus layout
        spk = spk.upper()
        out.append(Entry(f"{spk}_{code.lower()}{num}", p, _label(code, p), spk, "", "M"))
    if not out:
        raise no_audio(NAME, root, LAYOUT)
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare with the release (4 x 120 = 480) when all four speakers are present."""
    if not set(SPEAKERS) <= set(df["speaker"]):
        return [], None
    cells = {
        f"{s}/{lab}": int(n) for (s, lab), n in df.groupby(["speaker", "label"]).size().items()
    }
    expected = {f"{s}/{lab}": n for s in SPEAKERS for lab, n in PER_SPEAKER.items()}
    warn = count_check(NAME, "files", {"total": len(df)}, {"total": 480})
    warn += count_check(NAME, "speaker/emotion", cells, expected)
    return warn, "480 files = 4 speakers x 120"
