"""The built-in synthetic corpus written by :mod:`stlser.synth`.

Layout ``<root>/wav/<speaker>/<label>/<speaker>_<label>_<NNN>.wav``; genders in an optional
``<root>/speakers.csv`` (speaker,gender), else empty.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .base import FOUR_LABELS, CorpusError, Entry, list_files, no_audio, unknown_code

NAME = "synth"
LAYOUT = (
    "<root>/wav/<speaker>/<label>/<speaker>_<label>_<NNN>.wav, "
    "e.g. wav/spk00/happy/spk00_happy_003.wav"
)
_FILE_RE = re.compile(r"^(.+)_([a-z]+)_(\d+)$")


def _genders(root: Path) -> dict[str, str]:
    p = root / "speakers.csv"
    if not p.is_file():
        return {}
    with open(p, newline="", encoding="utf-8") as f:
        return {r["speaker"].strip(): (r.get("gender") or "").strip() for r in csv.DictReader(f)}


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    wav = root / "wav"
    genders = _genders(root)
    out = []
    spk_dirs = sorted(p for p in wav.iterdir() if p.is_dir()) if wav.is_dir() else []
    for sdir in spk_dirs:
        for ldir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            for p in list_files(ldir, "*.wav"):
                m = _FILE_RE.match(p.stem)
                if not m or m.group(1) != sdir.name or m.group(2) != ldir.name:
                    raise CorpusError(f"{NAME}: file {p} does not follow {LAYOUT}")
                if ldir.name not in FOUR_LABELS:
                    raise unknown_code(NAME, p, ldir.name, FOUR_LABELS)
                out.append(Entry(p.stem, p, ldir.name, sdir.name, "", genders.get(sdir.name, "")))
    if not out:
        raise no_audio(NAME, root, LAYOUT)
    return out
