"""Where a model file is: the models shipped inside the package (``base``), run folders and
the paths users give `stlser predict`, `Recognizer.load`, the service and ``model.init``."""

from __future__ import annotations

import os
from pathlib import Path

#: Name of the general model shipped inside the package (stlser/models/base.pt).
BASE = "base"


def shipped_model(name: str = BASE, suffix: str = ".pt") -> Path:
    """Path of a model shipped inside the package (`make pretrained` builds it)."""
    from importlib.resources import files

    p = Path(str(files("stlser") / "models" / f"{name}{suffix}"))
    if not p.is_file():
        raise FileNotFoundError(f"the shipped model {name!r} is missing from this install ({p})")
    return p


def is_shipped_name(path: object) -> bool:
    """True when `path` names the shipped model: None or the string ``"base"`` exactly.

    The rule is unambiguous and does not depend on the current folder: the string ``base``
    always means the shipped model, even where a file or folder called `base` exists; a local
    one is written with a separator (``./base``) or passed as a `Path`, which is always a path.
    """
    return path is None or (isinstance(path, str) and path == BASE)


def resolve_model_path(path: str | os.PathLike | None = None, shipped: str = ".pt") -> Path:
    """The model file a user means: ``None`` or ``"base"`` (the shipped general model, its
    `shipped` twin — ``.pt`` or ``.onnx`` — when present, else ``.pt``; see `is_shipped_name`:
    a local `base` folder must be written ``./base``), a `model.pt`/`.onnx` file, a training run
    folder holding `model.pt`, or a crossval run folder (its first fold, `fold_00/model.pt`)."""
    if is_shipped_name(path):
        try:
            return shipped_model(BASE, shipped)
        except FileNotFoundError:
            return shipped_model(BASE)
    assert path is not None
    p = Path(path)
    if p.is_dir():
        for cand in (p / "model.pt", p / "fold_00" / "model.pt", p / "model.onnx"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"{p}: no model.pt, fold_00/model.pt or model.onnx in this folder "
            "(pass a model.pt artefact, a crossval run folder, or an .onnx file)"
        )
    if not p.exists():
        raise FileNotFoundError(f"model {p} not found")
    if p.suffix == ".ckpt":
        raise ValueError(
            f"{p} is a Lightning checkpoint without the feature/normaliser settings; "
            "use the model.pt artefact written beside it (its run folder)"
        )
    return p


def describe_model(spec: object, path: str | os.PathLike) -> str:
    """One line saying which model file was loaded: ``model: shipped base (base.onnx, sha256
    1a2b…)`` or ``model: ./base/model.pt (sha256 …)`` — so a model picked up by name is never
    a surprise."""
    import hashlib

    p = Path(path)
    try:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()[:16]
    except OSError:
        digest = "unreadable"
    if is_shipped_name(spec):
        return f"model: shipped {BASE} ({p.name}, sha256 {digest}…)"
    return f"model: {p} (sha256 {digest}…)"


def resolve_init_path(spec: str) -> Path:
    """The `model.pt` that ``model.init`` names (``"base"``: the shipped model's torch artefact);
    an ONNX file holds no trainable weights and is refused."""
    try:
        path = resolve_model_path(spec, shipped=".pt")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.init: {e}") from None
    if path.suffix.lower() == ".onnx":
        raise ValueError(f"model.init {spec}: {path} is an ONNX file; give its model.pt")
    return path
