"""Run a trained model on anyone's audio: `Pipeline` (waveform → probabilities in one module,
also what `stlser export` writes to ONNX) and `Recognizer` (files, bytes, arrays, long
recordings, live streams); `stlser predict` is `stlser.cli.predict`.

Does not import Lightning: the artefact is read with `stlser.model.load_artefact`. The parts
that do not need torch (result types, decoding, VAD, windowing, batching) live in
`stlser.recognizer`, `stlser.vad` and `stlser.audio`, shared with the torch-free
`stlser.onnx_runtime`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser import __version__
from stlser.audio import SAMPLE_RATE
from stlser.config import FeatureConfig
from stlser.features.frontend import LogMel
from stlser.features.normalise import Normalize
from stlser.model import STLSER, count_parameters, load_artefact
from stlser.recognizer import (
    BaseRecognizer,
    Prediction,
    Segment,
    resolve_model_path,
)
from stlser.safety import ModelLoadError, safe_torch_load
from stlser.windows import artefact_crop, hop_frames, window_probs

__all__ = [
    "ExpertRecognizer",
    "Pipeline",
    "Recognizer",
    "Prediction",
    "Segment",
    "resolve_model_path",
]


class Pipeline(nn.Module):
    """16 kHz waveform → class probabilities: LogMel → normalisation → STLSER → softmax.

    ``forward(wave[B, N] float32, lengths[B] int64) -> probs[B, C]``. Normalisation applies the
    training-set global statistics stored in the artefact (modes ``global`` and ``speaker`` —
    an unseen speaker gets the global statistics, as in training); ``utterance`` uses each
    clip's own valid frames; ``none`` passes through. Padded frames stay 0, so a padded batch
    gives each clip's one-by-one result.

    `crop` > 0 (frames; a model trained on crops, ``inference.crop_seconds`` in its artefact):
    the probabilities are the mean over crop-length windows at 50 % hop of the normalised
    features (`stlser.windows`), inside this module and therefore inside the ONNX graph.
    """

    def __init__(
        self,
        model: STLSER,
        feature_config: FeatureConfig,
        normalizer: dict[str, Any],
        labels: list[str],
        meta: dict[str, Any] | None = None,
        crop: int = 0,
    ) -> None:
        super().__init__()

        fc = feature_config.resolved()
        if fc.kind not in ("logmel", "mfcc"):
            raise ValueError(
                f"features.kind={fc.kind!r} has no torch front end; only logmel/mfcc models can "
                "run on raw audio"
            )
        if fc.sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"models are trained at {SAMPLE_RATE} Hz, this one says {fc.sample_rate}"
            )
        self.front_end = LogMel(fc)
        self.model = model.eval()
        self.feature_config = fc
        self.labels = [str(x) for x in labels]
        self.meta = dict(meta or {})
        self.normalizer = Normalize(normalizer, self.front_end.n_features)
        self.norm_mode = self.normalizer.mode
        self.crop = int(crop)
        self.eval()

    @classmethod
    def from_artefact(cls, path: str | os.PathLike, art: dict | None = None) -> Pipeline:
        """Build from a `model.pt` artefact (see docs/design.md)."""
        model, art = load_artefact(path, art)
        try:
            fc = FeatureConfig(**art["feature_config"])
            if fc.resolved().n_features != art["n_features"]:
                raise ValueError(
                    f"feature config gives {fc.n_features} features, model expects {art['n_features']}"
                )
            meta = {**(art.get("meta") or {}), "source": str(path)}
            return cls(model, fc, art["normalizer"], art["labels"], meta, artefact_crop(art))
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(path, f"unusable artefact settings ({e})"[:300]) from None

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    def normalize(self, feats: Tensor, frames: Tensor) -> Tensor:
        return self.normalizer(feats, frames)

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        feats, frames = self.front_end(wave, lengths)
        x = self.normalize(feats, frames)
        if self.crop:
            return window_probs(self.model, x, frames, self.crop)["probs"]
        return torch.softmax(self.model(x, frames), dim=-1)

    def export_metadata(self) -> dict[str, str]:
        """String metadata stored in the ONNX file (read back by `OnnxRecognizer`)."""
        from dataclasses import asdict

        keep = ("corpus", "fold", "seed", "val_ua", "best_epoch", "stlser_version")
        windows = {}
        if self.crop:  # the graph averages the windows itself; recorded for readers
            hop = hop_frames(self.crop)
            windows["windows"] = json.dumps({"crop_frames": self.crop, "hop_frames": hop})
        return {
            "labels": json.dumps(self.labels),
            "sample_rate": str(SAMPLE_RATE),
            "stlser_version": __version__,
            "feature_config": json.dumps(asdict(self.feature_config)),
            "normalizer_mode": self.norm_mode,
            "n_params": str(self.n_params),
            "model_config": json.dumps(asdict(self.model.cfg)),
            "training": json.dumps({k: self.meta[k] for k in keep if k in self.meta}, default=str),
            "inputs": "wave[B,N] float32 16 kHz mono in [-1,1], right-padded; lengths[B] int64 samples",
            "outputs": "probs[B,C] float32, softmax over labels"
            + (" (mean over crop-length windows at 50 % hop)" if self.crop else ""),
            **windows,
        }


class Recognizer(BaseRecognizer):
    """Emotion recognition with a trained model (torch).

    ``Recognizer.load(path)`` → ``.predict(x)``, ``.predict_batch(xs)``, ``.segments(x)``,
    ``.stream(chunks, sample_rate)``; attributes ``labels`` and ``sample_rate`` (16 000).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline.eval()
        self.labels = list(pipeline.labels)
        self.sample_rate = SAMPLE_RATE
        self.meta = dict(pipeline.meta)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Any:
        """A `model.pt` artefact, a run/crossval folder (`fold_00/model.pt`) or an `.onnx` file
        (then an `stlser.onnx_runtime.OnnxRecognizer`, which has the same methods)."""
        p = resolve_model_path(path)
        if p.suffix.lower() == ".onnx":
            from stlser.onnx_runtime import OnnxRecognizer

            return OnnxRecognizer(p)
        from stlser import expert

        art = safe_torch_load(p, "model artefact")
        if expert.is_expert(art):
            return ExpertRecognizer(*expert.from_artefact(p, art), source=p)
        return cls(Pipeline.from_artefact(p, art))

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.pipeline(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()

    def __repr__(self) -> str:
        return f"Recognizer(labels={self.labels}, source={self.meta.get('source')!r})"


class ExpertRecognizer(BaseRecognizer):
    """Recognition with an expert-feature model (`stlser.expert`): openSMILE functionals of each
    clip → the stored global normalisation → the logistic heads. Same methods as `Recognizer`."""

    def __init__(self, model: Any, art: dict[str, Any], source: str | os.PathLike = "") -> None:
        from stlser.config import ModelConfig

        self.model = model.eval()
        self.labels = [str(x) for x in art["labels"]]
        self.sets = list(ModelConfig(**art["model_config"]).functionals)
        self.sample_rate = SAMPLE_RATE
        self.meta = {**(art.get("meta") or {}), "source": str(source), "kind": "expert"}

    def functionals(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        from stlser import smile

        return smile.batch(wave, lengths, self.sets, self.sample_rate)

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.functionals(wave, lengths))
        with torch.inference_mode():
            return self.model(x).numpy()

    def __repr__(self) -> str:
        return f"ExpertRecognizer(labels={self.labels}, source={self.meta.get('source')!r})"
