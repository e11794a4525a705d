"""What every analysis reads from a finished run: its report, fold folders, STL depth."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stlser.results import RunReport
from stlser.utils import atomic_path

KNN_K = 5
log = logging.getLogger("stlser.analysis")


def _log(msg: str) -> None:
    log.info(msg)


# --------------------------------------------------------------------------- run reading
def _report(run: Path) -> RunReport:
    path = run / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run} a finished run directory?")
    return RunReport.load(path)


def _fold_dirs(run: Path, needs: str) -> list[Path]:
    dirs = sorted(p for p in run.glob("fold_*") if (p / needs).exists())
    if not dirs:
        raise FileNotFoundError(f"no fold_*/{needs} under {run}")
    return dirs


def _stl_layers(run: Path, rep: RunReport) -> int | None:
    if rep.extra.get("stl_layers") is not None:
        return int(rep.extra["stl_layers"])
    cfg = run / "config.yaml"
    if cfg.exists():
        return int((yaml.safe_load(cfg.read_text()) or {}).get("model", {}).get("stl_layers", 0))
    return None


def _save_figure(fig: Any, out: Path, dpi: int = 130) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out


def fold_stats(rep: RunReport, key: str) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one fold) of a per-fold metric of a report."""
    a = np.asarray([getattr(f, key) for f in rep.folds], dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
