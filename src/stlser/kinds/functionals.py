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
from stlser.recognizer import SAMPLE_RATE, BaseRecognizer


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
