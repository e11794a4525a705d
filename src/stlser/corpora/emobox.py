"""EmoBox benchmark folds (Ma et al., Interspeech 2024): one corpus's fold lists → a manifest
with a ``fold`` column for the ``predefined`` split protocol.

`root` is EmoBox's ``data/<corpus>`` folder: ``fold_<k>/<corpus>_{train,test}_fold_<k>.jsonl``,
one JSON object a line with ``key`` (the utterance id), ``wav`` (the audio path as EmoBox's
preparation wrote it, e.g. ``downloads/cremad/AudioWAV/1001_DFA_ANG_XX.wav``) and ``emo``
(the label; codes are named by ``label_map.json`` beside the folds when present). The test fold
of an utterance is the ``k`` of the test list naming it; an utterance in no test list (a corpus
with one official train/test split) has the fold ``none`` and is always trained on.

Audio paths: the ``wav`` path is looked up under the audio folder (``--audio``; default `root`)
whole, then with its leading components stripped one by one (``downloads/cremad/AudioWAV/x.wav``,
``cremad/AudioWAV/x.wav``, ``AudioWAV/x.wav``, ``x.wav``); the first existing file wins; then
the same candidates with letter case ignored, one unambiguous match per path component
(EmoBox's lists spell some folders in lower case: CASIA's ``ZhaoZuoxiang`` is ``zhaozuoxiang``).
An absolute path that exists is used as it is. A file found nowhere is kept at the first
candidate and reported as unreadable by the audio check.

Speakers: a ``speaker`` field of the line; else the first group of ``--speaker-regex`` searched
in the key; else the corpus's known key naming (:data:`KEY_SPEAKER`); else none (the
predefined protocol then calls the folds speaker-dependent).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath

from .base import CorpusError, Entry, lenient_label, speaker_from_regex

NAME = "emobox"
LAYOUT = (
    "EmoBox's data/<corpus> folder: fold_<k>/<corpus>_test_fold_<k>.jsonl and "
    "<corpus>_train_fold_<k>.jsonl (lines with key, wav, emo)"
)
#: Fold id of utterances that no test list names (always in training).
TRAIN_ONLY = "none"
#: Speaker from the key, per corpus (first group), where the naming is known.
KEY_SPEAKER = {"cremad": r"^cremad-(\d{4})-", "casia": r"^casia-\d+-([^-]+)-"}
_LIST_RE = re.compile(r"^(?P<corpus>.+)_(?P<part>train|test)_fold_(?P<k>\d+)\.jsonl$")


def _lines(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{NAME}: {path} line {i}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not all(
                isinstance(rec.get(f), str) and rec.get(f) for f in ("key", "wav", "emo")
            ):
                raise CorpusError(f"{NAME}: {path} line {i}: needs string fields key, wav, emo")
            out.append(rec)
    return out


def resolve(wav: str, audio: Path) -> tuple[Path, bool]:
    """(path, found) for an EmoBox ``wav`` entry under `audio` (the module doc's rule)."""
    rel = PurePosixPath(wav.replace("\\", "/"))
    if rel.is_absolute() and os.path.isfile(wav):
        return Path(wav), True
    parts = [p for p in rel.parts if p not in ("/", ".", "..")]
    cands = [audio.joinpath(*parts[i:]) for i in range(len(parts))]
    for c in cands:
        if c.is_file():
            return c, True
    for i in range(len(parts)):
        if (c := _nocase(audio, parts[i:])) is not None:
            return c, True
    return (cands[0] if cands else audio / wav), False


def _nocase(base: Path, parts: list[str]) -> Path | None:
    """`base`/`parts` with each component matched ignoring letter case (None if a component
    has no match or several)."""
    cur = base
    for part in parts:
        if not (cur / part).exists():
            try:
                hits = [n for n in os.listdir(cur) if n.lower() == part.lower()]
            except OSError:
                return None
            if len(hits) != 1:
                return None
            part = hits[0]
        cur = cur / part
    return cur if cur.is_file() else None


def _label_map(root: Path) -> dict[str, str]:
    p = root / "label_map.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{NAME}: {p} is not JSON ({e})") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def scan(
    root: Path, speaker_regex: str | None = None, audio: str | os.PathLike | None = None
) -> list[Entry]:
    """List the utterances of every fold list under `root` with their test fold."""
    lists = sorted(
        (int(m["k"]), m["part"], p)
        for p in root.glob("fold_*/*.jsonl")
        if (m := _LIST_RE.match(p.name)) and p.parent.name == f"fold_{m['k']}"
    )
    if not any(part == "test" for _, part, _ in lists):
        raise CorpusError(f"{NAME}: no test fold lists under {root}; expected {LAYOUT}")
    base = Path(audio).expanduser().absolute() if audio else root
    if not base.is_dir():
        raise CorpusError(f"{NAME}: audio folder {base} does not exist")
    names = _label_map(root)
    rule = speaker_regex or KEY_SPEAKER.get(root.name.lower())
    recs: dict[str, dict] = {}
    fold: dict[str, str] = {}
    for k, part, path in lists:
        for rec in _lines(path):
            key = rec["key"]
            old = recs.setdefault(key, rec)
            if old["emo"] != rec["emo"]:
                raise CorpusError(
                    f"{NAME}: {key!r} has the label {old['emo']!r} in one list and "
                    f"{rec['emo']!r} in {path}"
                )
            if part == "test":
                if key in fold and fold[key] != str(k):
                    raise CorpusError(
                        f"{NAME}: {key!r} is in the test lists of folds {fold[key]} and {k}"
                    )
                fold[key] = str(k)
    out, found = [], 0
    for key in sorted(recs):
        rec = recs[key]
        path, ok = resolve(rec["wav"], base)
        found += ok
        speaker = str(rec.get("speaker") or "").strip()
        if not speaker and rule:
            if speaker_regex or re.search(rule, key):
                speaker = speaker_from_regex(rule, key, path)
        emo = rec["emo"]
        out.append(
            Entry(
                key,
                path,
                lenient_label(names.get(emo, emo)),
                speaker,
                str(rec.get("session") or ""),
                str(rec.get("gender") or ""),
                "",
                fold.get(key, TRAIN_ONLY),
            )
        )
    if out and not found:
        raise CorpusError(
            f"{NAME}: none of the {len(out)} audio files was found under {base} (e.g. "
            f"{recs[next(iter(sorted(recs)))]['wav']!r}); give the folder holding the audio "
            "with --audio"
        )
    return out
