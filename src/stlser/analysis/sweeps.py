"""Cross-validation for each value of one config key (the depth sweep, Fig. 4a)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stlser.analysis.common import _log, _report, _save_figure, fold_stats
from stlser.config import ExperimentConfig, parse_value, with_value
from stlser.utils import write_csv


# ----------------------------------------------------------------------------------- sweep
def split_values(text: str) -> list[str]:
    """Split '0,1,5' or '[16,32],[8,16]' on the top-level commas (brackets kept together)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _value_label(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def sweep(
    cfg: ExperimentConfig,
    param: str,
    values: Sequence[Any] | str,
    out: str | Path,
    engine: str = "local",
    address: str | None = None,
) -> Path:
    """Cross-validate `cfg` once per value of the config key `param`.

    Each value (YAML scalar or list, e.g. ``5``, ``conv1d``, ``[16,32]``) runs into
    ``out/<param>=<value>/``; a value whose ``report.json`` exists is reused, and a half-finished
    one resumes at its last finished fold. Writes ``sweep.csv`` (after every value) and
    ``sweep.png`` (UA and WA, mean ± std over folds). Returns the CSV path.

    Each value's units run on `engine` (`stlser.engines`; with ``ray`` one cluster serves every
    value, joined at `address` or started once); the values run one after another.
    """
    from stlser import engines

    raw = split_values(values) if isinstance(values, str) else list(values)
    if not raw:
        raise ValueError("sweep needs at least one value")
    parsed = [parse_value(v) for v in raw]
    names = [v if isinstance(v, str) else _value_label(v) for v in raw]
    cfgs = [with_value(cfg, param, v) for v in parsed]  # validate every value before any run
    engines.require(engine)
    out = Path(out)
    with engines.session(engine, address):
        rows = _cells(cfg, param, parsed, names, cfgs, out, {"engine": engine, "address": address})
    _plot_sweep(param, parsed, pd.DataFrame(rows), out / "sweep.png")
    return out / "sweep.csv"


def _cells(
    cfg: ExperimentConfig,
    param: str,
    parsed: list[Any],
    names: list[str],
    cfgs: list[ExperimentConfig],
    out: Path,
    where: dict[str, Any],
) -> list[dict[str, Any]]:
    """Cross-validate every value not finished yet; `sweep.csv` rewritten after each."""
    from stlser import driver

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for v, name, c in zip(parsed, names, cfgs, strict=True):
        run = out / f"{param}={name}".replace("/", "_").replace(" ", "")
        if (run / "report.json").exists():
            _log(f"sweep {param}={name}: {run} already finished, reused")
        else:
            _log(f"sweep {param}={name} → {run}")
            c.name = f"{cfg.name}-{param}={name}"
            driver.crossval(c, run, resume=True, **where)
        rep = _report(run)
        ua_m, ua_s = fold_stats(rep, "ua")
        wa_m, wa_s = fold_stats(rep, "wa")
        f1_m, _ = fold_stats(rep, "macro_f1")
        rows.append(
            {
                "param": param,
                "value": _value_label(v),
                "ua_mean": ua_m,
                "ua_std": ua_s,
                "wa_mean": wa_m,
                "wa_std": wa_s,
                "ua_pooled": rep.ua,
                "wa_pooled": rep.wa,
                "macro_f1_mean": f1_m,
                "n_params": rep.n_params,
                "n_folds": len(rep.folds),
                "seconds": rep.seconds,
                "run": run.name,
            }
        )
        write_csv(out / "sweep.csv", pd.DataFrame(rows))
    return rows


def _plot_sweep(param: str, values: list[Any], table: pd.DataFrame, out: Path) -> None:
    from matplotlib.figure import Figure

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = np.asarray(values, dtype=float) if numeric else np.arange(len(values))
    order = np.argsort(x, kind="stable")
    fig = Figure(figsize=(7, 4.4), layout="constrained")
    ax = fig.subplots()
    for metric, color, dx in (("ua", "C0", -0.02), ("wa", "C1", 0.02)):
        mean = 100 * table[f"{metric}_mean"].to_numpy()
        std = 100 * table[f"{metric}_std"].to_numpy()
        shift = 0.0 if numeric else dx * 5
        ax.errorbar(
            x[order] + shift,
            mean[order],
            yerr=std[order],
            color=color,
            marker="o",
            capsize=3,
            ls="-" if numeric else "none",
            label=f"{metric.upper()} (mean ± std over folds)",
        )
    if not numeric:
        ax.set_xticks(x, [_value_label(v) for v in values], rotation=20 if len(values) > 4 else 0)
        ax.set_xlim(-0.6, len(values) - 0.4)
    elif all(float(v).is_integer() for v in values):
        ax.set_xticks(sorted(set(x)))
    ax.set_xlabel(param)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(f"sweep of {param} ({int(table['n_folds'].iloc[0])} folds per value)", fontsize=10)
    _save_figure(fig, out)
