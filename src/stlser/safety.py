"""Loading model files without running code from them, and checking what was loaded.

* :func:`safe_torch_load` reads `model.pt` artefacts and Lightning checkpoints with
  ``torch.load(weights_only=True)``: the unpickler builds only tensors, containers, numbers and
  strings (plus the few numpy types older artefacts hold, allow-listed below). A pickle that
  names any other callable (``os.system``, ``builtins.exec``, ...) is refused before it runs.
* :func:`weights_digest` is the SHA-256 of a state dict (names, dtypes, shapes, bytes), stored in
  every new artefact and verified on load, so a corrupted file does not load silently.
* :class:`ModelLoadError` is the one error for a model file that cannot be used: its message
  names the file and the problem (the CLI turns it into exit code 2).

Imports torch only (never Lightning): the inference path uses it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class ModelLoadError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelRunError(ModelLoadError):
    """A model file that loaded but failed while running (e.g. an ONNX graph whose operators
    reject the input); the message names the file. A ValueError, as ModelLoadError: the CLI
    prints one line and exits with code 2; the service answers 500 with the message."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(path, f"the model failed at run time ({problem})")


def _numpy_globals() -> list[Any]:
    """The numpy types a pickled float32/float64/int64 array needs (artefacts before
    stlser-model checksums stored the normaliser as numpy arrays)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    out: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    for t in (np.float32, np.float64, np.int64, np.int32):
        out.append(type(np.dtype(t)))
    return out


#: Largest total size the entries of a model file may declare (what loading would allocate).
MAX_MODEL_BYTES = 1 << 30
#: Largest inflation ratio (declared / stored bytes) of a compressed entry; torch never
#: compresses, so a high ratio is a zip bomb (a few kB inflating to gigabytes).
MAX_INFLATION = 20.0
#: Compressed entries smaller than this are not judged by their ratio (small pickles).
_RATIO_MIN_BYTES = 1 << 20


def check_zip_sizes(p: Path, what: str = "model file", max_bytes: int = MAX_MODEL_BYTES) -> None:
    """Refuse, from the zip directory alone (before anything is inflated), a torch zip file
    whose entries declare more than `max_bytes` in total or that inflates a compressed entry
    more than MAX_INFLATION-fold. Files that are not zips (legacy format, ONNX) pass: their
    size on disk bounds what is read."""
    try:
        if not zipfile.is_zipfile(p):
            return
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # let torch.load report the corruption
    total = 0
    for i in infos:
        total += i.file_size
        if total > max_bytes:
            raise ModelLoadError(
                p,
                f"refused to load: the {what}'s entries declare more than {max_bytes:,} bytes "
                f"(at {i.filename!r}); nothing was inflated",
            )
        if (
            i.compress_type != zipfile.ZIP_STORED
            and i.file_size > _RATIO_MIN_BYTES
            and i.file_size > MAX_INFLATION * max(i.compress_size, 1)
        ):
            raise ModelLoadError(
                p,
                f"refused to load: entry {i.filename!r} of the {what} inflates "
                f"{i.compress_size:,} stored bytes to {i.file_size:,} (a zip bomb; stlser never "
                "writes compressed entries); nothing was inflated",
            )


def safe_torch_load(
    path: str | os.PathLike, what: str = "model file", max_bytes: int = MAX_MODEL_BYTES
) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; every failure is a ModelLoadError.
    The zip's declared sizes are checked first (`check_zip_sizes`)."""
    import torch

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(p, f"{what} not found")
    if p.is_dir():
        raise ModelLoadError(p, f"is a folder, not a {what}")
    if p.stat().st_size == 0:
        raise ModelLoadError(p, f"empty file (0 bytes), not a {what}")
    check_zip_sizes(p, what, max_bytes)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        if not found:
            raise ModelLoadError(
                p, f"not a readable {what} (not a PyTorch file, or corrupt)"
            ) from None
        name = found[0].split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip()[:120]
        raise ModelLoadError(
            p,
            f"refused to load: the {what} asks to run or build {name or 'code'}, which a model "
            "file never needs; nothing from it was executed (only files written by stlser load)",
        ) from None
    except (zipfile.BadZipFile, EOFError) as e:
        raise ModelLoadError(p, f"not a readable {what} (corrupt or truncated: {e})") from None
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(p, f"not a readable {what} ({first})") from None
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise ModelLoadError(p, f"not a readable {what} ({type(e).__name__}: {e})"[:300]) from None


def weights_digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 over the sorted (name, dtype, shape, bytes) of every tensor in a state dict."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is not a tensor")
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def plain(obj: Any) -> Any:
    """numpy scalars/arrays, tuples and paths → JSON-like python values (safe to unpickle)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


#: Keys an artefact must have, with the python type each must be.
ARTEFACT_KEYS: dict[str, type | tuple[type, ...]] = {
    "labels": list,
    "model_config": dict,
    "feature_config": dict,
    "n_features": int,
    "normalizer": dict,
    "state_dict": dict,
}


def check_artefact(path: object, art: Any, fmt: str) -> dict:
    """Check the structure of a loaded artefact and its weights checksum; → the artefact."""
    if not isinstance(art, dict) or art.get("format") != fmt:
        raise ModelLoadError(path, f"not an stlser model artefact (expected format {fmt})")
    for key, typ in ARTEFACT_KEYS.items():
        if key not in art:
            raise ModelLoadError(path, f"artefact lacks {key!r} (incomplete or foreign file)")
        if not isinstance(art[key], typ) or isinstance(art[key], bool):
            raise ModelLoadError(
                path, f"artefact field {key!r} is a {type(art[key]).__name__}, not a {typ}"
            )
    if not art["labels"] or not all(isinstance(x, str) for x in art["labels"]):
        raise ModelLoadError(path, "artefact labels must be a non-empty list of strings")
    expected = art.get("weights_sha256")
    if expected is not None:
        try:
            got = weights_digest(art["state_dict"])
        except TypeError as e:
            raise ModelLoadError(path, f"bad state_dict ({e})") from None
        if got != expected:
            raise ModelLoadError(
                path,
                "weights checksum mismatch (the file is corrupted or was altered after saving): "
                f"stored {str(expected)[:16]}…, computed {got[:16]}…",
            )
    return art


def rebuild(path: object, build: Any, state_dict: Mapping[str, Any]) -> Any:
    """`build()` a module and load `state_dict` into it (eval mode); a mismatch between the
    stored config and the weights is a ModelLoadError naming the file."""
    try:
        model = build()
        model.load_state_dict(state_dict)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(
            path, f"the weights do not fit the stored model config ({first})"
        ) from None
    return model.eval()
