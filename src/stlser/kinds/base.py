"""The interface every recogniser kind implements (:class:`Kind`) and what a fold gives back
(:class:`FoldOutput`).

A kind is what `model.kind` names: how one fold is fitted on its training (and validation)
speakers and scored on its test speakers, what its artefact (`model.pt`) holds, how a trained
artefact runs on audio (`stlser.recognizer.BaseRecognizer`) and exports to ONNX. Everything
else — manifests, folds, resume, jobs, ensembles, reports, the command line — is shared
(`stlser.driver`) and never asks which kind it drives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from stlser.config import ExperimentConfig
    from stlser.recognizer import BaseRecognizer
    from stlser.splits import Fold


@dataclass
class FoldOutput:
    """One fitted (fold, ensemble member).

    `scores[n_test, C]`: the test rows' probabilities (``column="prob"``) or decision scores
    (``"score"``); `pred` the predicted class indices when they are not the argmax of `scores`
    (e.g. a one-vs-one SVM's votes). `info` is written to ``fold.json``; `row` is what the
    report's per-fold table keeps of it."""

    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    pred: np.ndarray | None = None
    column: str = "prob"


class Kind(ABC):
    """A recogniser kind. Subclasses set the class attributes and implement the methods."""

    #: the value of ``model.kind``
    name: str = ""
    #: its config variant (a dataclass whose first field is ``kind``)
    config: type = object
    #: the ``format`` strings of the artefacts it reads (the first is the one it writes)
    formats: tuple[str, ...] = ()
    #: the system's name in reports
    system: str = ""

    # ------------------------------------------------------------------ cross-validation
    def check(self, cfg: ExperimentConfig) -> None:  # noqa: B027 (optional hook)
        """Refuse (ValueError) what cannot work before anything is computed or written:
        e.g. a ``model.init`` that is missing or of another kind."""

    @abstractmethod
    def prepare(self, cfg: ExperimentConfig, df: pd.DataFrame, labels: list[str]) -> Any:
        """What every fold shares (the features of every manifest row, fine-tuning priors),
        computed once in the driver's process and handed to each fold (in a worker process
        too: it must pickle)."""

    @abstractmethod
    def fit(
        self,
        cfg: ExperimentConfig,
        data: Any,
        fold: Fold,
        out: Path,
        resume: bool = False,
        callbacks: Any = None,
    ) -> FoldOutput:
        """Fit on `fold`'s training (and validation) rows, write the artefact
        ``out/model.pt``, and score the test rows (in `fold.test` order)."""

    def report_facts(self, cfg: ExperimentConfig, data: Any, infos: list[dict]) -> dict[str, Any]:
        """Facts the report adds for this kind (settings, feature sizes, speeds)."""
        return {}

    # ------------------------------------------------------------------ artefacts
    @abstractmethod
    def load(self, path: str | Path, art: dict[str, Any]) -> Any:
        """The trained model (a torch module) from its checked artefact."""

    @abstractmethod
    def recognizer(self, path: str | Path, art: dict[str, Any]) -> BaseRecognizer:
        """The runtime that predicts from audio (files, bytes, arrays, streams)."""

    @abstractmethod
    def export(self, path: str | Path, art: dict[str, Any], out: str | Path) -> Path:
        """Write the artefact's ONNX graph to `out` (checked against torch first)."""

    @abstractmethod
    def score(
        self,
        path: str | Path,
        art: dict[str, Any],
        df: pd.DataFrame,
        cache_dir: str | None,
        stats: str = "speaker",
    ) -> np.ndarray:
        """Probabilities[N, C] (the artefact's labels) of every manifest row (`stlser
        evaluate`): `stats` ``speaker`` normalises each speaker as in training; ``global``
        normalises every clip by the training set's global statistics, one clip at a time as
        `stlser predict` does (ValueError for a kind that cannot)."""

    def describe(self, art: dict[str, Any]) -> dict[str, Any]:
        """The artefact in a few facts: kind, labels, parameters, training metadata."""
        state = art.get("state_dict") or {}
        n = sum(int(np.prod(getattr(v, "shape", ()) or (1,))) for v in state.values())
        return {
            "kind": self.name,
            "format": art.get("format"),
            "labels": list(art.get("labels") or []),
            "n_params": n,
            "meta": dict(art.get("meta") or {}),
        }
