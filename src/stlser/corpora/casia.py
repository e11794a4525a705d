"""CASIA Chinese emotional speech, public 1,200-file subset.

Layout: ``<root>/<speaker>/<emotion>/<NNN>.wav``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .base import CorpusError, Entry, canonical, count_check, list_files, no_audio, unknown_code

NAME = "casia"
LAYOUT = "<root>/<speaker>/<emotion>/<NNN>.wav, e.g. wangzhe/angry/201.wav"
EMOTIONS = ("angry", "fear", "happy", "neutral", "sad", "surprise")
SPEAKERS = {"ZhaoZuoxiang", "liuchanhg", "wangzhe", "zhaoquanyin"}
PER_CELL = 50


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List CASIA utterances; speaker and emotion come from the two folder levels.

    Gender is left empty: the public subset does not document it.
    """
    out = []
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for emo_dir in sorted(
            p for p in spk_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            files = list_files(emo_dir, "*.wav")
            if not files:
                continue
            label = canonical(emo_dir.name)
            if label is None or emo_dir.name.lower() not in EMOTIONS:
                raise unknown_code(NAME, emo_dir, emo_dir.name, EMOTIONS)
            for p in files:
                if not p.stem.isdigit():
                    raise CorpusError(f"{NAME}: file name {p.name!r} in {emo_dir} is not <NNN>.wav")
                uid = f"{spk_dir.name}_{emo_dir.name.lower()}_{p.stem}"
                out.append(Entry(uid, p, label, spk_dir.name))
    if not out:
        raise no_audio(NAME, root, LAYOUT)
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare with the public subset (4 speakers x 6 emotions x 50 = 1,200) if complete."""
    if not SPEAKERS <= set(df["speaker"]):
        return [], None
    cells = df.groupby(["speaker", "label"]).size()
    expected = {f"{s}/{canonical(e)}": PER_CELL for s in sorted(SPEAKERS) for e in EMOTIONS}
    found = {f"{s}/{lab}": int(n) for (s, lab), n in cells.items()}
    warn = count_check(NAME, "utterances", {"total": len(df)}, {"total": 1200})
    warn += count_check(NAME, "speaker/emotion", found, expected)
    return warn, "1,200 utterances = 4 speakers x 6 emotions x 50, as in the public subset"
