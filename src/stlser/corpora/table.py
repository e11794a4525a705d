"""The user's own table: a CSV with at least ``path,label`` (optional ``speaker``, ``session``,
``gender``, ``utt_id``, ``text``, ``fold``). Relative paths resolve from the table's folder."""

from __future__ import annotations

import csv
from pathlib import Path

from .base import CorpusError, Entry, lenient_label, speaker_from_regex
from .folder import utt_id_for

NAME = "csv"
LAYOUT = "a CSV file with columns path,label[,speaker,session,gender,utt_id,text,fold]"


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    if not root.is_file():
        raise CorpusError(f"{NAME}: {root} is not a file; the csv reader expects {LAYOUT}")
    with open(root, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        rows = list(reader)
    missing = {"path", "label"} - set(cols)
    if missing:
        raise CorpusError(
            f"{NAME}: {root} lacks column(s) {', '.join(sorted(missing))}; expected {LAYOUT}"
        )
    if not rows:
        raise CorpusError(f"{NAME}: {root} has a header but no rows")
    base = root.parent
    out = []
    for i, raw in enumerate(rows, start=2):
        r = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not r["path"] or not r["label"]:
            raise CorpusError(f"{NAME}: {root} line {i}: empty path or label")
        rel = Path(r["path"])
        path = rel if rel.is_absolute() else (base / rel)
        speaker = r.get("speaker", "")
        if not speaker and speaker_regex:
            speaker = speaker_from_regex(speaker_regex, rel.as_posix(), path)
        uid = r.get("utt_id") or utt_id_for(
            Path(*[p for p in rel.parts if p not in ("/", "..", ".")])
        )
        out.append(
            Entry(
                uid,
                path.resolve(),
                lenient_label(r["label"]),
                speaker,
                r.get("session", ""),
                r.get("gender", ""),
                r.get("text", ""),
                r.get("fold", ""),
            )
        )
    return out
