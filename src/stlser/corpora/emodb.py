"""EmoDB (Berlin Database of Emotional Speech): ``<root>/wav/03a01Fa.wav``.

Name: speaker (2 digits), text code (3), emotion letter (index 5), version letter.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .base import CorpusError, Entry, count_check, list_files, no_audio, unknown_code

NAME = "emodb"
LAYOUT = "<root>/wav/<SS><text><E><v>.wav, e.g. wav/03a01Fa.wav"
LETTERS = {
    "W": "angry",  # Wut/Ärger
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happy",  # Freude
    "T": "sad",  # Trauer
    "N": "neutral",
}
MALE = {"03", "10", "11", "12", "15"}
SPEAKERS = {"03", "08", "09", "10", "11", "12", "13", "14", "15", "16"}
#: The ten sentences of the corpus (text codes a01 … b10).
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
#: Published counts of the release (per native letter, via canonical name).
COUNTS = {
    "angry": 127,
    "boredom": 81,
    "disgust": 46,
    "fear": 69,
    "happy": 71,
    "sad": 62,
    "neutral": 79,
}
FOUR_CLASS_TOTAL = 339
_NAME_RE = re.compile(r"^(\d\d)([a-z]\d\d)([A-Za-z])([a-z])$")


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List EmoDB utterances; speaker, gender and sentence come from the file name."""
    folder = root / "wav" if (root / "wav").is_dir() else root
    files = list_files(folder, "*.wav")
    if not files:
        raise no_audio(NAME, root, LAYOUT)
    out = []
    for p in files:
        m = _NAME_RE.match(p.stem)
        if not m:
            raise CorpusError(
                f"{NAME}: file name {p.name!r} in {p.parent} does not follow {LAYOUT}"
            )
        spk, text, letter, _ = m.groups()
        if letter not in LETTERS:
            raise unknown_code(NAME, p, letter, LETTERS)
        out.append(
            Entry(
                p.stem,
                p,
                LETTERS[letter],
                spk,
                "",
                "M" if spk in MALE else "F",
                TEXTS.get(text, ""),
            )
        )
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare with the release (535, per-letter counts, 339 four-class) if all speakers exist."""
    if not SPEAKERS <= set(df["speaker"]):
        return [], None
    counts = df["label"].value_counts().to_dict()
    warn = count_check(NAME, "utterances", {"total": len(df)}, {"total": sum(COUNTS.values())})
    warn += count_check(NAME, "label", counts, COUNTS)
    four = sum(counts.get(k, 0) for k in ("angry", "happy", "sad", "neutral"))
    warn += count_check(NAME, "four-class", {"total": four}, {"total": FOUR_CLASS_TOTAL})
    return warn, "535 utterances, per-emotion counts and 339 four-class match the EmoDB release"
