"""Shared pieces of the corpus readers: the entry record, label names, errors, file listing.

Every reader turns a corpus folder in its release layout into a list of :class:`Entry` with
labels already normalised to the readable English names below, so that the same emotion has
the same name in every corpus (EmoDB ``W``, IEMOCAP ``ang`` and RAVDESS ``05`` all become
``angry``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: Audio file suffixes the generic readers pick up (everything soundfile can decode).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")

#: Canonical label names shared by all corpora.
CANONICAL = (
    "angry",
    "boredom",
    "calm",
    "disgust",
    "excited",
    "fear",
    "frustrated",
    "happy",
    "neutral",
    "other",
    "sad",
    "surprise",
)

#: Lower-case native names and codes → canonical name.
SYNONYMS: dict[str, str] = {
    **{c: c for c in CANONICAL},
    "anger": "angry",
    "ang": "angry",
    "happiness": "happy",
    "hap": "happy",
    "joy": "happy",
    "sadness": "sad",
    "fearful": "fear",
    "fea": "fear",
    "disgusted": "disgust",
    "dis": "disgust",
    "surprised": "surprise",
    "sur": "surprise",
    "pleasant_surprise": "surprise",
    "pleasant_surprised": "surprise",
    "pleasant surprise": "surprise",
    "ps": "surprise",
    "neu": "neutral",
    "bored": "boredom",
    "frustration": "frustrated",
    "fru": "frustrated",
    "excitement": "excited",
    "exc": "excited",
    "oth": "other",
}

#: The standard four-class task. IEMOCAP's ``excited`` is merged into ``happy``.
FOUR_CLASS: dict[str, str] = {
    "neutral": "neutral",
    "happy": "happy",
    "excited": "happy",
    "sad": "sad",
    "angry": "angry",
}
FOUR_LABELS = ("neutral", "happy", "sad", "angry")


class CorpusError(ValueError):
    """A corpus folder that does not have the expected layout; the message says what is wrong."""


@dataclass
class Entry:
    """One utterance found by a reader (before the audio check)."""

    utt_id: str
    path: Path
    label: str
    speaker: str = ""
    session: str = ""
    gender: str = ""
    text: str = ""
    fold: str = ""  # the benchmark's test fold of the utterance (predefined protocol)


@dataclass(frozen=True)
class Reader:
    """A registered corpus reader.

    `scan(root, speaker_regex)` lists the entries; `check(df)` compares a scan (native labels,
    unreadable files removed) with the published counts and returns (warnings, note), where
    `note` says what was verified (None when the tree does not look complete enough to check).
    """

    name: str
    scan: Callable[[Path, str | None], list[Entry]]
    layout: str
    check: Callable[[pd.DataFrame], tuple[list[str], str | None]] | None = None

    def __call__(self, root: str | Path, speaker_regex: str | None = None) -> list[Entry]:
        return self.scan(Path(root), speaker_regex)


def canonical(name: str) -> str | None:
    """The canonical label for a native name/code (case-insensitive), or None if unknown."""
    return SYNONYMS.get(name.strip().lower())


def lenient_label(name: str) -> str:
    """Canonical name when known, else the name itself (user-defined labels of generic readers)."""
    return canonical(name) or name.strip()


def visible(p: Path) -> bool:
    """False for hidden files such as macOS ``._x.wav`` resource forks."""
    return not p.name.startswith(".")


def list_files(folder: Path, pattern: str = "*.wav", recursive: bool = False) -> list[Path]:
    """Visible files under `folder` matching `pattern` (case-insensitive suffix), sorted."""
    if not folder.is_dir():
        return []
    suffix = pattern.rsplit(".", 1)[-1].lower() if "." in pattern else None
    it: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    out = [
        p
        for p in it
        if p.is_file()
        and visible(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (suffix is None or p.suffix.lower() == f".{suffix}")
    ]
    return sorted(out)


def list_audio(folder: Path) -> list[Path]:
    """Visible audio files anywhere under `folder`, sorted."""
    return [
        p for p in list_files(folder, "*", recursive=True) if p.suffix.lower() in AUDIO_SUFFIXES
    ]


def no_audio(name: str, root: Path, layout: str) -> CorpusError:
    return CorpusError(f"{name}: no audio files found under {root}; expected the layout {layout}")


def unknown_code(name: str, path: Path, code: str, known: Iterable[str]) -> CorpusError:
    return CorpusError(
        f"{name}: unknown label code {code!r} in {path} (known: {', '.join(sorted(known))})"
    )


def count_check(
    corpus: str,
    what: str,
    found: dict[str, int],
    expected: dict[str, int],
) -> list[str]:
    """Compare counts per key; return one warning line per mismatch."""
    out = []
    for key, exp in expected.items():
        got = int(found.get(key, 0))
        if got != exp:
            out.append(f"{corpus}: {what} {key}: expected {exp:,}, found {got:,}")
    return out


def speaker_from_regex(regex: str, rel: str, path: Path) -> str:
    """First group (or whole match) of `regex` searched in the relative path `rel`."""
    m = re.search(regex, rel)
    if not m:
        raise CorpusError(
            f"speaker regex {regex!r} does not match the file {path} (tested {rel!r})"
        )
    return m.group(1) if m.groups() else m.group(0)
