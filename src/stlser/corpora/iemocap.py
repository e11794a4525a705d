"""IEMOCAP: labels from ``Session<n>/dialog/EmoEvaluation/<dialog>.txt``, audio from
``Session<n>/sentences/wav/<dialog>/<utterance>.wav``.

An evaluation file opens with a ``%`` header; each utterance block starts with the tab-separated
consensus line ``[start - end]  utterance  label  [v, a, d]``, followed by single annotators'
votes (``C-E2:``, ``A-F1:`` …), which are ignored, as are the sub-folders (Categorical/ …).
The speaker is the session plus the last F/M of the utterance name (the letter in the dialog
name says who wore motion capture, not who speaks).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .base import FOUR_CLASS, CorpusError, Entry, count_check, list_files, unknown_code

NAME = "iemocap"
LAYOUT = (
    "<root>/Session1..Session5/dialog/EmoEvaluation/<dialog>.txt with audio in "
    "Session<n>/sentences/wav/<dialog>/<utterance>.wav"
)
CODES = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "angry",
    "fru": "frustrated",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
    "oth": "other",
}
DROPPED = {"xxx"}  # no consensus among annotators
#: The standard four-class set (exc merged into happy) of the full release.
FOUR_TOTAL = 5531
FOUR_PER_CLASS = {"neutral": 1708, "happy": 1636, "angry": 1103, "sad": 1084}
FOUR_PER_SESSION = {
    "Session1": 1085,
    "Session2": 1023,
    "Session3": 1151,
    "Session4": 1031,
    "Session5": 1241,
}
FOUR_PER_KIND = {"scripted": 2588, "improvised": 2943}
_LINE_RE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\t(\S+)\t(\S+)\t\[")
_UTT_RE = re.compile(r"^Ses(\d\d)[FM]_.+_([FM])\d+$")
_SESSION_RE = re.compile(r"^session\s*(\d+)$", re.IGNORECASE)
_TRANS_RE = re.compile(r"^(\S+)\s+\[[\d.]+-[\d.]+\]:\s?(.*)$")


def _sessions(root: Path) -> list[tuple[str, Path]]:
    for base in (root, root / "IEMOCAP_full_release"):
        if base.is_dir():
            found = [
                (f"Session{int(m.group(1))}", p)
                for p in sorted(base.iterdir())
                if p.is_dir() and (m := _SESSION_RE.match(p.name))
            ]
            if found:
                return found
    return []


def _transcripts(session_dir: Path, dialog: str) -> dict[str, str]:
    p = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _TRANS_RE.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def parse_evaluation(path: Path) -> list[tuple[str, str]]:
    """(utterance, native code) of every consensus line of one EmoEvaluation file."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("["):  # '%' header, annotator votes, blank lines
            continue
        m = _LINE_RE.match(line)
        if not m:
            raise CorpusError(f"{NAME}: cannot parse the line {line!r} in {path}")
        out.append((m.group(3), m.group(4)))
    return out


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    """List labelled IEMOCAP utterances (``xxx`` dropped); a missing wav is kept so the scan
    reports it as skipped."""
    sessions = _sessions(root)
    if not sessions:
        raise CorpusError(
            f"{NAME}: no Session<n> folders under {root}; expected the layout {LAYOUT}"
        )
    out = []
    for session, sdir in sessions:
        evals = list_files(sdir / "dialog" / "EmoEvaluation", "*.txt")
        for ev in evals:
            dialog = ev.stem
            texts = _transcripts(sdir, dialog)
            for utt, code in parse_evaluation(ev):
                if code in DROPPED:
                    continue
                if code not in CODES:
                    raise unknown_code(NAME, ev, code, CODES)
                m = _UTT_RE.match(utt)
                if not m:
                    raise CorpusError(
                        f"{NAME}: utterance name {utt!r} in {ev} is not <dialog>_<F|M><NNN>"
                    )
                wav = sdir / "sentences" / "wav" / dialog / f"{utt}.wav"
                speaker = f"Ses{m.group(1)}{m.group(2)}"
                out.append(
                    Entry(utt, wav, CODES[code], speaker, session, m.group(2), texts.get(utt, ""))
                )
    if not out:
        raise CorpusError(
            f"{NAME}: no labelled utterances found under {root}; expected the layout {LAYOUT}"
        )
    return out


def check(df: pd.DataFrame) -> tuple[list[str], str | None]:
    """Compare the four-class subset with the standard 5,531 when all five sessions are present."""
    if not set(FOUR_PER_SESSION) <= set(df["session"]):
        return [], None
    four = df[df["label"].isin(FOUR_CLASS)]
    label4 = four["label"].map(FOUR_CLASS)
    kind = four["utt_id"].map(lambda u: "scripted" if "_script" in u else "improvised")
    warn = count_check(NAME, "four-class utterances", {"total": len(four)}, {"total": FOUR_TOTAL})
    warn += count_check(NAME, "four-class", label4.value_counts().to_dict(), FOUR_PER_CLASS)
    warn += count_check(
        NAME, "four-class", four["session"].value_counts().to_dict(), FOUR_PER_SESSION
    )
    warn += count_check(NAME, "four-class", kind.value_counts().to_dict(), FOUR_PER_KIND)
    return (
        warn,
        "four-class subset = 5,531 (neutral 1,708, happy+excited 1,636, angry 1,103, sad 1,084)",
    )
