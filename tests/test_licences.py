"""The default install is usable in a commercial product: no default (non-extra) dependency of
stlser, direct or transitive, carries a non-commercial licence; openSMILE is an extra only."""

from __future__ import annotations

import importlib.metadata as md
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: Phrases of licences that forbid commercial use (checked in License, License-Expression and
#: the classifiers: openSMILE's classifier says MIT while its licence text forbids it).
#: ("noncommercially" alone is not one: the GPL text bundled in scipy's licence uses it.)
NON_COMMERCIAL = re.compile(
    r"non-?commercial (use|purpose)|research licen[cs]e|research (use|purposes?) only"
    r"|\bCC[- ]BY[- ]NC|\bNC-(SA|ND)\b",
    re.IGNORECASE,
)


def default_dependencies(name: str = "stlser") -> set[str]:
    """Installed distributions `name` pulls in without any extra, transitively."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for spec in md.distribution(todo.pop()).requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra's requirement, or one for another platform
            dep = canonicalize_name(req.name)
            if dep in seen:
                continue
            try:
                md.distribution(dep)
            except md.PackageNotFoundError:
                continue
            seen.add(dep)
            todo.append(dep)
    return seen


def licence_text(dist: str) -> str:
    meta = md.metadata(dist)
    parts = [meta.get("License") or "", meta.get("License-Expression") or ""]
    parts += [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return "\n".join(parts)


def test_no_default_dependency_forbids_commercial_use():
    deps = default_dependencies()
    assert {"torch", "numpy", "soundfile", "scikit-learn"} <= deps  # the walk finds them
    flagged = {d: NON_COMMERCIAL.search(licence_text(d)).group(0) for d in sorted(deps) if NON_COMMERCIAL.search(licence_text(d))}  # fmt: skip
    assert not flagged, f"default dependencies with a non-commercial licence: {flagged}"
    assert "opensmile" not in deps


def test_opensmile_is_an_optional_extra_and_the_check_flags_it():
    reqs = [Requirement(r) for r in md.distribution("stlser").requires or []]
    smile = [r for r in reqs if canonicalize_name(r.name) == "opensmile"]
    assert smile and all(r.marker is not None and "opensmile" in str(r.marker) for r in smile)
    try:
        text = licence_text("opensmile")
    except md.PackageNotFoundError:
        pytest.skip("opensmile not installed here: the check's positive case needs it")
    assert NON_COMMERCIAL.search(text)  # the check can fail: it catches the research licence
