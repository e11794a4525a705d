"""Recogniser kinds and their registry: ``model.kind`` → a :class:`~stlser.kinds.base.Kind`.

    from stlser import kinds
    kinds.get("expert")                 # the kind a config names
    kind, art = kinds.read("model.pt")  # the kind that wrote an artefact, and the artefact

A new kind is one module (a `Kind` subclass and its config dataclass) and one line:
``kinds.register(MyKind())``, which also teaches the config loader ``model.kind: my``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stlser import config as config_mod
from stlser.kinds.base import FoldOutput, Kind
from stlser.kinds.expert import ExpertKind
from stlser.kinds.network import NetworkKind
from stlser.kinds.svm import SvmKind

__all__ = ["KINDS", "FoldOutput", "Kind", "get", "read", "register"]

KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add `kind` to the registry (and its config variant to the config loader)."""
    if not kind.name or not kind.formats:
        raise ValueError("a kind needs a name and at least one artefact format")
    KINDS[kind.name] = kind
    config_mod.register_model_config(kind.name, kind.config)
    return kind


register(NetworkKind())
register(ExpertKind())
register(SvmKind())


def get(name: str) -> Kind:
    """The kind registered under `name` (``model.kind``)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"model.kind {name!r} is not one of: {', '.join(KINDS)}") from None


def for_artefact(art: Any, path: str | os.PathLike = "") -> Kind:
    """The kind whose artefact format `art` declares."""
    fmt = art.get("format") if isinstance(art, dict) else None
    for kind in KINDS.values():
        if fmt in kind.formats:
            return kind
    known = sorted(f for k in KINDS.values() for f in k.formats)
    from stlser.safety import ModelLoadError

    raise ModelLoadError(path, f"not an stlser model (format {fmt!r}; known: {', '.join(known)})")


def read(path: str | os.PathLike | None) -> tuple[Kind, dict[str, Any], Path]:
    """(kind, artefact, file) of the model a user names (`stlser.recognizer.resolve_model_path`:
    a `model.pt`, a run folder, or ``base``), read without running code."""
    from stlser.recognizer import resolve_model_path
    from stlser.safety import safe_torch_load

    p = resolve_model_path(path)
    if p.suffix.lower() == ".onnx":
        raise ValueError(f"{p} is an ONNX graph; this needs the model.pt it was exported from")
    art = safe_torch_load(p, "model artefact")
    return for_artefact(art, p), art, p
