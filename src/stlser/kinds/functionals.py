"""What the kinds that read one vector of functionals per clip share (`expert`, `svm`): the
functionals matrix of a manifest (through the feature cache), the runtime that computes the
functionals of audio and applies a trained model to them, and that model's ONNX graph.

The functionals come from openSMILE (`stlser.smile`: eGeMAPSv02, ComParE_2016, IS10, IS09,
emobase), before the model; the ONNX graph starts at the functionals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlser import __version__
from stlser.kinds.base import Kind
from stlser.recognizer import SAMPLE_RATE, BaseRecognizer


def save_artefact(
    path: str | Path,
    fmt: str,
    model: torch.nn.Module,
    cfg: Any,
    labels: list[str],
    meta: dict[str, Any],
) -> Path:
    """Write a functionals model's artefact (format `fmt`) atomically: tensors and plain
    values only, with the weights' checksum."""
    from dataclasses import asdict

    from stlser.safety import plain, weights_digest
    from stlser.utils import atomic_path

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    art = {
        "format": fmt,
        "labels": list(labels),
        "model_config": asdict(cfg.model),
        "feature_config": asdict(cfg.features),
        "n_features": int(sum(set_dims(list(cfg.model.functionals)))),
        "normalizer": {"mode": cfg.features.normalize, "applies": "global statistics"},
        "state_dict": state,
        "meta": plain({**meta, "stlser_version": __version__}),
        "weights_sha256": weights_digest(state),
    }
    with atomic_path(path) as tmp:
        torch.save(art, tmp)
    return Path(path)


def read_artefact(
    path: str | Path, art: dict | None, fmt: str, build: Any
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a functionals model from its artefact (read safely unless `art` is given):
    `build(dims, n_classes)` makes the empty model the stored weights are checked against."""
    from stlser.safety import check_artefact, rebuild, safe_torch_load

    if art is None:
        art = safe_torch_load(path, "model artefact")
    art = check_artefact(path, art, fmt)
    dims = set_dims(FunctionalsKind.sets(art))
    return rebuild(path, lambda: build(dims, len(art["labels"])), art["state_dict"]), art


def set_dims(sets: list[str]) -> list[int]:
    """Number of functionals of each named set (stlser.smile.FUNCTIONAL_SETS)."""
    from stlser.smile import FUNCTIONAL_SETS

    unknown = [s for s in sets if s not in FUNCTIONAL_SETS]
    if unknown or not sets:
        raise ValueError(f"model.functionals must name sets from {sorted(FUNCTIONAL_SETS)}")
    return [FUNCTIONAL_SETS[s][1] for s in sets]


def load_matrix(
    df: Any, sets: list[str], cache_dir: str | None, progress: bool, speed: float = 1.0
) -> np.ndarray:
    """Functionals of every manifest row (sets concatenated) → float32[N, D], via the cache;
    with `speed` ≠ 1, of each clip speed-perturbed by that factor. Non-finite values (openSMILE
    gives NaN for a few functionals of near-silent clips) become 0."""
    from stlser.features import load_functionals

    parts = []
    for s in sets:
        got = load_functionals(df, cache_dir, progress=progress, feature_set=s, speed=speed)
        parts.append(np.stack([np.asarray(got[str(u)], np.float32) for u in df["utt_id"]]))
    X = np.concatenate(parts, axis=1)
    bad = ~np.isfinite(X)
    if bad.any():
        X[bad] = 0.0
    return X


def fold_rows(pos: dict[str, int], fold: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row indices (manifest order, `pos`: utt_id → row) of a fold's train, val, test."""
    return tuple(  # type: ignore[return-value]
        np.asarray([pos[str(u)] for u in part], np.int64)
        for part in (fold.train, fold.val, fold.test)
    )


def speakers_normalised(
    X: np.ndarray, df: Any, cfg_features: Any, fit: np.ndarray | None = None
) -> np.ndarray:
    """`X` normalised as in training (`features.normalize`): per speaker by that speaker's own
    statistics, degenerate speakers and ``global`` mode by the rows `fit` (all when None)."""
    from stlser import degenerate
    from stlser.features import normalize_functionals

    mode = cfg_features.normalize if cfg_features.normalize != "utterance" else "none"
    glob = sorted(degenerate.global_speakers(df, cfg_features))
    Z, _ = normalize_functionals(X, df["speaker"].astype(str).to_numpy(), mode, fit, glob)
    return Z


class FunctionalsRecognizer(BaseRecognizer):
    """Recognition with a model over functionals: openSMILE functionals of each clip → the
    model (which applies the training set's global statistics) → probabilities. Same methods
    as every `BaseRecognizer`."""

    def __init__(
        self,
        model: torch.nn.Module,
        labels: list[str],
        sets: list[str],
        meta: dict[str, Any],
    ) -> None:
        self.model = model.eval()
        self.labels = [str(x) for x in labels]
        self.sets = list(sets)
        self.sample_rate = SAMPLE_RATE
        self.meta = dict(meta)

    def functionals(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        from stlser import smile

        return smile.batch(wave, lengths, self.sets, self.sample_rate)

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.functionals(wave, lengths))
        with torch.inference_mode():
            return self.model(x).numpy()

    def __repr__(self) -> str:
        kind = self.meta.get("kind", "functionals")
        return f"FunctionalsRecognizer({kind}, labels={self.labels}, source={self.meta.get('source')!r})"


def recognizer(
    model: torch.nn.Module, art: dict[str, Any], sets: list[str], kind: str, source: Any
) -> FunctionalsRecognizer:
    meta = {**(art.get("meta") or {}), "source": str(source), "kind": kind}
    return FunctionalsRecognizer(model, list(art["labels"]), sets, meta)


def export(
    model: torch.nn.Module,
    art: dict[str, Any],
    sets: list[str],
    kind: str,
    out: str | os.PathLike,
) -> Path:
    """ONNX graph ``functionals[B, D] → probs[B, C]`` of a model over functionals; openSMILE
    computes the functionals before the graph (`stlser.onnx_runtime` does it; the metadata
    names the sets)."""
    from stlser.onnx_graph import vector_graph

    dim = int(sum(set_dims(sets)))
    meta = {
        "kind": kind,
        "labels": json.dumps(list(art["labels"])),
        "sample_rate": str(SAMPLE_RATE),
        "functionals": json.dumps(list(sets)),
        "stlser_version": __version__,
        "n_params": str(sum(p.numel() for p in model.parameters()) or model_size(model)),
        "training": json.dumps(art.get("meta") or {}, default=str),
        "inputs": "functionals[B,D] float32: openSMILE functionals of 16 kHz mono clips, "
        "sets concatenated in the order of 'functionals'",
        "outputs": "probs[B,C] float32 over labels",
    }
    return vector_graph(model, dim, meta, out)


def model_size(model: torch.nn.Module) -> int:
    """Parameters, or (a model held in buffers) the buffers' size."""
    return int(sum(b.numel() for b in model.buffers()))


class FunctionalsKind(Kind):
    """A kind whose model reads one vector of functionals per clip (`expert`, `svm`): loading,
    the runtime, the ONNX graph and `stlser evaluate` are the same for all of them; a subclass
    says how its artefact is rebuilt (`read_model`) and how its model scores speaker-normalised
    functionals (`speaker_probs`)."""

    def read_model(self, path: str | Path, art: dict[str, Any]) -> tuple[torch.nn.Module, dict]:
        raise NotImplementedError

    def speaker_probs(self, model: Any, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def sets(art: dict[str, Any]) -> list[str]:
        """The functional sets an artefact reads, in input order."""
        return [str(s) for s in (art.get("model_config") or {}).get("functionals") or []]

    def load(self, path: str | Path, art: dict[str, Any]) -> Any:
        return self.read_model(path, art)[0]

    def recognizer(self, path: str | Path, art: dict[str, Any]) -> FunctionalsRecognizer:
        model, art = self.read_model(path, art)
        return recognizer(model, art, self.sets(art), self.name, path)

    def export(self, path: str | Path, art: dict[str, Any], out: str | Path, **kw: Any) -> Path:
        model, art = self.read_model(path, art)
        return export(model, art, self.sets(art), self.name, out)

    def score(self, path: str | Path, art: dict[str, Any], df: Any, cache_dir: str | None) -> Any:
        from stlser.config import FeatureConfig

        model, art = self.read_model(path, art)
        X = load_matrix(df, self.sets(art), cache_dir, progress=False).astype(np.float64)
        fc = FeatureConfig(**art["feature_config"])
        with torch.no_grad():
            if fc.normalize != "speaker":  # the stored global statistics, as in prediction
                return model(torch.as_tensor(X, dtype=torch.float32)).numpy()
            Z = speakers_normalised(X, df, fc)
            return self.speaker_probs(model, torch.as_tensor(Z, dtype=torch.float32)).numpy()

    def describe(self, art: dict[str, Any]) -> dict[str, Any]:
        return {**super().describe(art), "functionals": self.sets(art)}
