"""RAVDESS: ``Actor_NN/03-01-05-01-02-01-12.wav`` (speech and song, any folder depth).

Fields: modality, vocal channel (01 speech, 02 song), emotion, intensity, statement,
repetition, actor (odd male, even female).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .base import CorpusError, Entry, count_check, list_files, no_audio, unknown_code

NAME = "ravdess"
LAYOUT = "<root>/[...]/Actor_NN/MM-VV-EE-II-SS-RR-AA.wav, e.g. Actor_12/03-01-05-01-02-01-12.wav"
EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
#: Published counts: speech 1,440 (24 actors x 60); song 1,012 (actor 18 has no song files).
SPEECH_TOTAL = 1440
SONG_TOTAL = 1012
_NAME_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_ACTOR_RE = re.compile(r"^actor_(\d+)$", re.IGNORECASE)


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List RAVDESS audio files in every ``Actor_NN`` folder under `root`."""
    actor_dirs = sorted(
        p for p in [root, *root.rglob("*")] if p.is_dir() and _ACTOR_RE.match(p.name)
    )
    out = []
    for d in actor_dirs:
        for p in list_files(d, "*.wav"):
            m = _NAME_RE.match(p.stem)
            if not m:
                raise CorpusError(f"{NAME}: file name {p.name!r} in {d} does not follow {LAYOUT}")
            _, channel, emo, _, statement, _, actor = m.groups()
            if emo not in EMOTIONS:
                raise unknown_code(NAME, p, emo, EMOTIONS)
            if channel not in ("01", "02"):
                raise CorpusError(
                    f"{NAME}: unknown vocal channel {channel!r} in {p} (01 speech, 02 song)"
                )
            gender = "M" if int(actor) % 2 else "F"
            out.append(
                Entry(
                    p.stem,
                    p,
                    EMOTIONS[emo],
                    f"Actor_{actor}",
                    "",
                    gender,
                    STATEMENTS.get(statement, ""),
                )
            )
    if not out:
        raise no_audio(NAME, root, LAYOUT)
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare speech (1,440) and song (1,012) totals when all 24 actors are present."""
    channel = df["utt_id"].str.slice(3, 5)
    speech, song = df[channel == "01"], df[channel == "02"]
    warn, notes = [], []
    if speech["speaker"].nunique() == 24:
        warn += count_check(NAME, "speech files", {"total": len(speech)}, {"total": SPEECH_TOTAL})
        notes.append(f"speech {SPEECH_TOTAL:,}")
    if song["speaker"].nunique() >= 23:
        warn += count_check(NAME, "song files", {"total": len(song)}, {"total": SONG_TOTAL})
        notes.append(f"song {SONG_TOTAL:,}")
    if not notes:
        return [], None
    return warn, f"{' and '.join(notes)} files, as in the release"
