"""Any folder of audio sorted into one sub-folder per label: ``<root>/[...]/<label>/<file>``.

The label is the file's parent folder name (known emotion names are normalised, others kept
as written). An optional speaker regex is searched in the path relative to the root; its
first group is the speaker.
"""

from __future__ import annotations

from pathlib import Path

from .base import CorpusError, Entry, lenient_label, list_audio, no_audio, speaker_from_regex

NAME = "folder"
LAYOUT = "<root>/<label>/<file>.wav (any depth; the parent folder names the label)"


def utt_id_for(rel: Path) -> str:
    """A readable unique id from a relative path: folders joined with '__', suffix dropped."""
    return "__".join(rel.with_suffix("").parts)


def scan(root: Path, speaker_regex: str | None = None) -> list[Entry]:
    files = list_audio(root)
    if not files:
        raise no_audio(NAME, root, LAYOUT)
    loose = [p for p in files if p.parent == root]
    if loose:
        raise CorpusError(
            f"{NAME}: {len(loose)} audio file(s) directly in {root} (e.g. {loose[0].name}) have no "
            f"label folder; expected the layout {LAYOUT}"
        )
    out = []
    for p in files:
        rel = p.relative_to(root)
        speaker = speaker_from_regex(speaker_regex, rel.as_posix(), p) if speaker_regex else ""
        out.append(Entry(utt_id_for(rel), p, lenient_label(p.parent.name), speaker))
    return out
