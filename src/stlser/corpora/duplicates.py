"""Byte-identical files under several utterance ids: listed at manifest time, kept or dropped.

A group is every manifest row whose file is the same file or has the same bytes
(`stlser.splits.duplicate_groups`). ``error`` keeps every row (the leak check later refuses a
group split between training and test); ``drop`` keeps the first row of each group (manifest
order) and skips the others with the reason ``duplicate of <utt_id>``; a group whose copies
disagree on the label is skipped entirely (``duplicate with conflicting labels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from stlser.utils import printable

MODES = ("error", "drop")
CONFLICT = "duplicate with conflicting labels"
COLUMNS = ["group", "utt_id", "path", "label", "speaker", "action"]
#: Groups shown on the terminal (the file beside the manifest lists them all).
SHOW = 20


def find(df: pd.DataFrame) -> list[list[str]]:
    """Groups of utt_ids holding one file's bytes (see module doc)."""
    from stlser.splits import duplicate_groups

    return duplicate_groups(df)


def apply(
    df: pd.DataFrame, groups: Sequence[Sequence[str]], mode: str
) -> tuple[pd.DataFrame, list[tuple[str, str]], pd.DataFrame]:
    """(manifest, skipped [(path, reason)], table of every group member and its fate).

    `mode` ``error`` keeps every row (fate ``kept``); ``drop`` removes the copies as the module
    doc says."""
    if mode not in MODES:
        raise ValueError(f"duplicates must be one of {MODES}, got {mode!r}")
    rows = df.set_index(df["utt_id"].astype(str))
    skipped: list[tuple[str, str]] = []
    drop: set[str] = set()
    table = []
    for i, g in enumerate(groups, start=1):
        labels = {str(rows.at[u, "label"]) for u in g}
        for j, u in enumerate(g):
            if mode == "error":
                fate = "kept"
            elif len(labels) > 1:
                fate = CONFLICT
            else:
                fate = "kept" if j == 0 else f"duplicate of {g[0]}"
            if fate != "kept":
                drop.add(u)
                skipped.append((str(rows.at[u, "path"]), fate))
            table.append(
                {
                    "group": i,
                    "utt_id": u,
                    "path": str(rows.at[u, "path"]),
                    "label": str(rows.at[u, "label"]),
                    "speaker": str(rows.at[u, "speaker"]) if "speaker" in rows else "",
                    "action": fate,
                }
            )
    cols = COLUMNS
    out = df[~df["utt_id"].astype(str).isin(drop)].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out, skipped, pd.DataFrame(table, columns=cols)


def describe(table: pd.DataFrame, mode: str, limit: int = SHOW) -> str:
    """Count, the first `limit` groups, and the way forward."""
    n = int(table["group"].nunique()) if len(table) else 0
    if not n:
        return "duplicates: none (no two utterances share a file's bytes)"
    spk = table.groupby("group")["speaker"].nunique()
    lines = [
        f"duplicates: {n} group(s) of byte-identical files ({len(table)} utterances; "
        f"{int((spk > 1).sum())} group(s) under two or more speakers):"
    ]
    for g, rows in list(table.groupby("group", sort=True))[:limit]:
        members = ", ".join(
            f"{printable(r.utt_id)} [{printable(r.label)}"
            + (f", {printable(r.speaker)}" if r.speaker else "")
            + f"] {'kept' if r.action == 'kept' else 'dropped'}"
            for r in rows.itertuples()
        )
        lines.append(f"  {g}: {members}")
    if n > limit:
        lines.append(f"  … {n - limit} more group(s) in duplicates.csv")
    if mode == "error":
        lines.append(
            "all copies are kept: a fold with copies in training and test is refused; drop them "
            "with `stlser manifest --duplicates drop` or `--set data.duplicates=drop`"
        )
    else:
        lines.append("first copy kept, the others listed in skipped.csv")
    return "\n".join(lines)
