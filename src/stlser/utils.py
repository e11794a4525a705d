"""Small shared helpers: atomic writes, JSON, seeding, environment facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class OutputError(OSError, RuntimeError):
    """A file that could not be written (disk full, read-only, no permission): the message
    names the file and says the previous contents are unchanged. An OSError (handlers of
    OSError still see it) and a RuntimeError (the CLI prints one line and exits with code 2)."""


def _output_error(p: Path, e: OSError) -> OutputError:
    why = e.strerror or str(e) or type(e).__name__
    return OutputError(
        e.errno,
        f"cannot write {p}: {why}; nothing was written "
        f"(the previous {p.name}, if any, is unchanged)",
    )


def check_writable(path: str | os.PathLike) -> None:
    """OutputError naming `path` unless a file can be written beside it (a probe, removed
    again): for outputs that take long to compute."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=p.parent)
        os.close(fd)
        try:
            Path(tmp).write_bytes(b"\0")
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise _output_error(p, e) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (atomic on POSIX).

    A failed write (an OSError such as ENOSPC in the body, or in creating or renaming the
    temporary file) removes the temporary file, leaves `path` as it was and raises
    `OutputError` naming `path`."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
    except OutputError:
        raise
    except OSError as e:
        raise _output_error(p, e) from None
    try:
        try:
            yield Path(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
            os.replace(tmp, p)
        except OutputError:
            raise
        except OSError as e:
            raise _output_error(p, e) from None
    finally:
        if os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


#: Names `atomic_path` gives its temporary files: ``.<target name>.<8 random chars>.tmp``.
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files `atomic_path` left under `folder` when a process was killed
    mid-write (SIGKILL skips its cleanup). Call only when no other process writes there."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for p in root.rglob(".*.tmp"):
        if p.is_file() and _TEMP_NAME.match(p.name):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


#: Characters that make a spreadsheet read a cell as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED = re.compile(r"^'*[=+\-@\t\r]")


def csv_cell(value: Any) -> Any:
    """A text cell made safe for spreadsheets: one ``'`` is put before text that begins (after
    any ``'``) with ``= + - @`` tab or CR, so ``=cmd|' /C calc'!A0`` is shown, not run.
    Numbers and other non-text values pass unchanged. Lossless: `csv_uncell` undoes it."""
    if isinstance(value, str) and _ESCAPED.match(value):
        return "'" + value
    return value


def csv_uncell(value: Any) -> Any:
    """Undo `csv_cell` (for text read back from a CSV that stlser wrote)."""
    if isinstance(value, str) and value.startswith("'") and _ESCAPED.match(value[1:]):
        return value[1:]
    return value


def escape_frame(df: Any) -> Any:
    """A copy of a DataFrame whose text cells and column names went through `csv_cell`."""
    from pandas.api.types import is_numeric_dtype

    out = df.copy()
    for i in range(out.shape[1]):  # by position: column names may repeat
        col = out.iloc[:, i]
        if not is_numeric_dtype(col.dtype):  # object, str, category: may hold text
            out.isetitem(i, [csv_cell(v) for v in col.astype(object)])
    out.columns = [csv_cell(c) for c in out.columns]
    return out


def unescape_frame(df: Any) -> Any:
    """Undo `escape_frame` in place on a DataFrame read back with ``dtype=str``; → `df`."""
    from pandas.api.types import is_numeric_dtype

    df.columns = [csv_uncell(c) for c in df.columns]
    for i in range(df.shape[1]):
        col = df.iloc[:, i]
        if not is_numeric_dtype(col.dtype):
            df.isetitem(i, [csv_uncell(v) for v in col.astype(object)])
    return df


def read_csv(path: str | os.PathLike, **kw: Any) -> Any:
    """`pandas.read_csv` of a CSV written by `write_csv`, with the formula escaping undone
    (text columns; pass ``dtype=str`` to undo it in every column)."""
    import pandas as pd

    return unescape_frame(pd.read_csv(path, **kw))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: Any) -> str:
    """Text safe to print on a terminal: control characters (escape sequences, newlines that
    would forge table rows) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def md_cell(value: Any) -> str:
    """Text made safe for one cell of a markdown table: ``|`` escaped as ``\\|`` (it would end
    the cell), backslashes doubled first, line breaks (CR, LF) replaced by a space."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"[\r\n]+", " ", text)


def write_csv(path: str | os.PathLike, df: Any, escape: bool = True) -> Path:
    """Write a pandas DataFrame as CSV (no index), atomically. Text cells that a spreadsheet
    would run as a formula are escaped (`csv_cell`; `read_csv`/`unescape_frame` undo it)."""
    frame = escape_frame(df) if escape else df
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    return Path(path)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (torch only if already imported or importable)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions, threads and machine facts written beside every run."""
    import importlib.metadata as md

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    for pkg in (
        "stlser",
        "torch",
        "lightning",
        "numpy",
        "scikit-learn",
        "librosa",
        "onnxruntime",
        "opensmile",
    ):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed run leaves no worker);
    a parent that died while this worker was starting ends it now."""
    if platform.system() == "Linux":
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)
