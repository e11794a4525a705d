"""Typed run results: `FoldResult` (one fold's test scores) and `RunReport` (a scored run).

The network, the eGeMAPS baseline and `stlser evaluate` all produce a `RunReport` through
:func:`stlser.reports.write_report`; `report.json` is ``RunReport.to_dict()`` and
``RunReport.load(path)`` reads it back, checking every field (a broken file raises
ValueError listing its problems). Facts a system adds (``val_ua``, ``C``, ``members``,
``ensemble``, ...) travel in ``extra`` and are written at the top level of the JSON.
`SpeakerNormalisation` records which speakers `stlser.degenerate` found unfit for speaker
normalisation and what was done about them (``speaker_normalisation`` in the JSON).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stlser.utils import write_json

METRIC_KEYS = ("wa", "ua", "macro_f1")
REPORT_KEYS = (
    "wa",
    "ua",
    "macro_f1",
    "ua_ci95",
    "wa_ci95",
    "folds",
    "confusion",
    "labels",
    "n_params",
    "seconds",
)
FOLD_KEYS = ("fold", "test_speakers", "n", "wa", "ua", "macro_f1", "best_epoch")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_rate(x: Any) -> bool:
    return _is_num(x) and 0.0 <= x <= 1.0


@dataclass
class FoldResult:
    """Test scores of one fold (rates in [0, 1]) plus what its system adds in `extra`."""

    fold: str
    test_speakers: list[str]
    n: int
    wa: float
    ua: float
    macro_f1: float
    best_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A field or an `extra` entry by name (for renderers that list optional columns)."""
        if key in FOLD_KEYS:
            return getattr(self, key)
        return self.extra.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in FOLD_KEYS}
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @staticmethod
    def problems(d: Any, where: str) -> list[str]:
        """What is wrong with a fold dict (empty when it is valid)."""
        if not isinstance(d, dict):
            return [f"{where} is not a dict"]
        out = [f"{where} missing {k!r}" for k in FOLD_KEYS if k not in d]
        for key in METRIC_KEYS:
            if key in d and not _is_rate(d[key]):
                out.append(f"{where}.{key} must be in [0, 1], got {d[key]!r}")
        if "n" in d and not (_is_int(d["n"]) and d["n"] > 0):
            out.append(f"{where}.n must be a positive int")
        if "test_speakers" in d and not isinstance(d["test_speakers"], list):
            out.append(f"{where}.test_speakers must be a list")
        be = d.get("best_epoch")
        if be is not None and not _is_int(be):
            out.append(f"{where}.best_epoch must be an int or null")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "fold") -> FoldResult:
        bad = cls.problems(d, where)
        if bad:
            raise ValueError("invalid fold: " + "; ".join(bad))
        return cls(
            fold=str(d["fold"]),
            test_speakers=[str(s) for s in d["test_speakers"]],
            n=int(d["n"]),
            wa=float(d["wa"]),
            ua=float(d["ua"]),
            macro_f1=float(d["macro_f1"]),
            best_epoch=None if d["best_epoch"] is None else int(d["best_epoch"]),
            extra={k: v for k, v in d.items() if k not in FOLD_KEYS},
        )


@dataclass
class SpeakerNormalisation:
    """The degenerate-speaker decision of a run (`stlser.degenerate`): speaker → reason, the
    fallback applied to them (None when none was found) and the thresholds used."""

    degenerate_speakers: dict[str, str] = field(default_factory=dict)
    speaker_fallback: str | None = None
    max_share: float | None = None
    min_utts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "degenerate_speakers": dict(self.degenerate_speakers),
            "speaker_fallback": self.speaker_fallback,
            "thresholds": {"max_share": self.max_share, "min_utts": self.min_utts},
        }

    @staticmethod
    def problems(d: Any, where: str = "speaker_normalisation") -> list[str]:
        """What is wrong with its dict form (empty when it is valid)."""
        if isinstance(d, SpeakerNormalisation):
            return []
        if not isinstance(d, dict):
            return [f"{where} is not a dict"]
        out = []
        found = d.get("degenerate_speakers", {})
        if not (isinstance(found, dict) and all(isinstance(v, str) for v in found.values())):
            out.append(f"{where}.degenerate_speakers must map speaker → reason")
        fb = d.get("speaker_fallback")
        if fb is not None and not isinstance(fb, str):
            out.append(f"{where}.speaker_fallback must be a string or null")
        if not isinstance(d.get("thresholds", {}), dict):
            out.append(f"{where}.thresholds must be a dict")
        return out

    @classmethod
    def from_dict(cls, d: Any) -> SpeakerNormalisation:
        if isinstance(d, SpeakerNormalisation):
            return d
        bad = cls.problems(d)
        if bad:
            raise ValueError("invalid speaker_normalisation: " + "; ".join(bad))
        th = d.get("thresholds") or {}
        return cls(
            degenerate_speakers={
                str(k): v for k, v in (d.get("degenerate_speakers") or {}).items()
            },
            speaker_fallback=d.get("speaker_fallback"),
            max_share=th.get("max_share"),
            min_utts=th.get("min_utts"),
        )


@dataclass
class RunReport:
    """A scored run: pooled metrics with 95 % bootstrap intervals, per-fold results, confusion."""

    wa: float
    ua: float
    macro_f1: float
    ua_ci95: list[float]
    wa_ci95: list[float]
    n: int
    folds: list[FoldResult]
    confusion: list[list[int]]
    labels: list[str]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    macro_f1_ci95: list[float] | None = None
    n_params: int | None = None
    seconds: float | None = None
    speaker_independent: bool | None = None
    #: Degenerate speakers and the normalisation fallback (runs that normalise per speaker).
    speaker_normalisation: SpeakerNormalisation | None = None
    #: ``<metric>_fold_mean`` / ``<metric>_fold_std`` for wa, ua, macro_f1.
    fold_stats: dict[str, float] = field(default_factory=dict)
    #: Everything else a system records (system, config, corpus, protocol, ensemble, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = (
        "wa",
        "ua",
        "macro_f1",
        "ua_ci95",
        "wa_ci95",
        "macro_f1_ci95",
        "n",
        "folds",
        "confusion",
        "per_class",
        "labels",
        "n_params",
        "seconds",
        "speaker_independent",
        "speaker_normalisation",
    )

    def __post_init__(self) -> None:
        bad = self.problems(self.to_dict())
        if bad:
            raise ValueError("invalid report: " + "; ".join(bad))

    # --- convenient names for the usual facts
    @property
    def system(self) -> str:
        return str(self.extra.get("system") or "")

    def get(self, key: str, default: Any = None) -> Any:
        """Any top-level key of ``report.json`` by name."""
        return self.to_dict().get(key, default)

    def summary(self) -> str:
        return (
            f"UA {100 * self.ua:.2f} % | WA {100 * self.wa:.2f} % | "
            f"macro-F1 {100 * self.macro_f1:.2f} %"
        )

    # --- JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in self._FIELDS:
            v = getattr(self, k)
            if k == "folds":
                v = [f.to_dict() for f in v]
            if k == "speaker_normalisation" and v is not None:
                v = v.to_dict()
            if k in ("macro_f1_ci95", "speaker_independent", "speaker_normalisation") and v is None:
                continue
            d[k] = v
        d.update(self.fold_stats)
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunReport:
        """Parse and check a report dict; ValueError lists every problem."""
        bad = cls.problems(d)
        if bad:
            raise ValueError("invalid report: " + "; ".join(bad))
        stats = {
            f"{m}_fold_{s}": float(d[f"{m}_fold_{s}"])
            for m in METRIC_KEYS
            for s in ("mean", "std")
            if f"{m}_fold_{s}" in d
        }
        known = set(cls._FIELDS) | set(stats)
        return cls(
            wa=float(d["wa"]),
            ua=float(d["ua"]),
            macro_f1=float(d["macro_f1"]),
            ua_ci95=[float(x) for x in d["ua_ci95"]],
            wa_ci95=[float(x) for x in d["wa_ci95"]],
            macro_f1_ci95=d.get("macro_f1_ci95"),
            n=int(d.get("n", sum(map(sum, d["confusion"])))),
            folds=[FoldResult.from_dict(f, f"folds[{i}]") for i, f in enumerate(d["folds"])],
            confusion=d["confusion"],
            per_class=d.get("per_class") or {},
            labels=list(d["labels"]),
            n_params=d["n_params"],
            seconds=d["seconds"],
            speaker_independent=d.get("speaker_independent"),
            speaker_normalisation=(
                None
                if d.get("speaker_normalisation") is None
                else SpeakerNormalisation.from_dict(d["speaker_normalisation"])
            ),
            fold_stats=stats,
            extra={k: v for k, v in d.items() if k not in known},
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunReport:
        """Read a ``report.json`` (or a run folder holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        return cls.from_dict(json.loads(p.read_text()))

    # --- schema
    @staticmethod
    def problems(d: Any) -> list[str]:
        """What is wrong with a report dict (empty when it is valid)."""
        if not isinstance(d, dict):
            return ["report is not a dict"]
        out = [f"missing key {key!r}" for key in REPORT_KEYS if key not in d]
        for key in METRIC_KEYS:
            if key in d and not _is_rate(d[key]):
                out.append(f"{key} must be a number in [0, 1], got {d[key]!r}")
        for key in ("ua_ci95", "wa_ci95"):
            ci = d.get(key)
            if key in d and not (
                isinstance(ci, (list, tuple))
                and len(ci) == 2
                and all(_is_rate(v) for v in ci)
                and ci[0] <= ci[1]
            ):
                out.append(f"{key} must be [lo, hi] with 0 <= lo <= hi <= 1, got {ci!r}")
        labels = d.get("labels")
        if "labels" in d and not (
            isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
        ):
            out.append("labels must be a non-empty list of strings")
            labels = None
        conf = d.get("confusion")
        if "confusion" in d:
            k = len(labels) if labels else None
            ok = isinstance(conf, list) and all(isinstance(r, list) for r in conf)
            ok = ok and (k is None or (len(conf) == k and all(len(r) == k for r in conf)))
            ok = ok and all(_is_int(v) and v >= 0 for r in conf for v in r)
            if not ok:
                out.append("confusion must be a K×K list of non-negative ints (K = len(labels))")
            elif "n" in d and sum(map(sum, conf)) != d["n"]:
                out.append(f"confusion sums to {sum(map(sum, conf))} but n = {d['n']}")
        folds = d.get("folds")
        if "folds" in d:
            if not (isinstance(folds, list) and folds):
                out.append("folds must be a non-empty list")
            else:
                for i, f in enumerate(folds):
                    out += FoldResult.problems(f, f"folds[{i}]")
        if d.get("n_params") is not None and not (_is_int(d["n_params"]) and d["n_params"] >= 0):
            out.append("n_params must be a non-negative int or null")
        if d.get("seconds") is not None and not (_is_num(d["seconds"]) and d["seconds"] >= 0):
            out.append("seconds must be a non-negative number or null")
        if d.get("speaker_normalisation") is not None:
            out += SpeakerNormalisation.problems(d["speaker_normalisation"])
        return out
