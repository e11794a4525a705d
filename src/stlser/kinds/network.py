"""The paper's network as a recogniser kind (`model.kind: network`).

CNN-BiLSTM-STL (`stlser.model`) on log-mel, MFCC or own-descriptor (lld) frames
(`stlser.features`), trained per fold
with Lightning (`stlser.training`, imported only when a fold is fitted). Its runtime is
:class:`Pipeline` — front end, the training set's normalisation, the network and the softmax
in one torch module, which is also the ONNX graph (`stlser.onnx_graph.wave_graph`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stlser import __version__
from stlser.config import FeatureConfig, NetworkConfig
from stlser.features import frontend
from stlser.features.normalise import Normalize
from stlser.kinds.base import FoldOutput, Kind
from stlser.model import ARTEFACT_FORMAT, STLSER, count_parameters, load_artefact
from stlser.recognizer import SAMPLE_RATE, BaseRecognizer
from stlser.safety import ModelLoadError
from stlser.windows import artefact_crop, hop_frames, window_probs

SYSTEM = "cnn-bilstm-stl"


def fold_data(cfg: Any, df: Any, feats: dict[str, np.ndarray], fold: Any, labels: list[str]) -> Any:
    """Normalise features with statistics fitted on the fold's training part; build FoldData."""
    from stlser import degenerate, features
    from stlser.training import FoldData

    fc = cfg.features
    normed, norm = features.normalize_all(
        feats,
        df,
        fc.normalize,
        list(fold.train),
        global_speakers=degenerate.global_speakers(df, fc),
    )
    lab = dict(zip(df["utt_id"], df["label"], strict=True))
    index = {name: i for i, name in enumerate(labels)}
    speakers = df["speaker"].fillna("").astype(str) if "speaker" in df.columns else [""] * len(df)
    spk = dict(zip(df["utt_id"], speakers, strict=True))

    def part(ids):
        return [normed[u] for u in ids], [index[lab[u]] for u in ids]

    state = norm.state()
    n_features = next(iter(feats.values())).shape[1]
    static = n_features // fc.input_channels  # a level change moves the log-mel, not its deltas
    std = np.asarray(state.get("std", [1.0]), np.float32)[:static]
    gain_scale = (
        float(np.mean(math.log(10) / 10 / np.maximum(std, 1e-5))) if fc.kind == "logmel" else 0.0
    )
    return FoldData(
        part(fold.train),
        part(fold.val),
        part(fold.test),
        list(fold.test),
        labels,
        n_features,
        state,
        gain_scale,
        {"fold": fold.name, "test_speakers": list(fold.test_speakers)},
        [spk[u] for u in fold.train],
        [spk[u] for u in fold.val],
    )


class Pipeline(nn.Module):
    """16 kHz waveform → class probabilities: frames (LogMel or LldFrames) → normalisation →
    STLSER → softmax.

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

        fc = feature_config
        if fc.kind not in ("logmel", "mfcc", "lld"):
            raise ValueError(
                f"features.kind={fc.kind!r} has no torch front end; only logmel/mfcc/lld models "
                "can run on raw audio"
            )
        if fc.sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"models are trained at {SAMPLE_RATE} Hz, this one says {fc.sample_rate}"
            )
        self.front_end = frontend.frame_module(fc)
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
            if fc.n_features != art["n_features"]:
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


class NetworkRecognizer(BaseRecognizer):
    """Emotion recognition with a trained network (torch): the :class:`Pipeline` behind the
    methods of `stlser.recognizer.BaseRecognizer`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline.eval()
        self.labels = list(pipeline.labels)
        self.sample_rate = SAMPLE_RATE
        self.meta = dict(pipeline.meta)

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.pipeline(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()

    def __repr__(self) -> str:
        return f"NetworkRecognizer(labels={self.labels}, source={self.meta.get('source')!r})"


class NetworkKind(Kind):
    name = "network"
    config = NetworkConfig
    formats = (ARTEFACT_FORMAT,)
    system = SYSTEM

    def check(self, cfg: Any) -> None:
        if cfg.model.init:  # an incompatible artefact fails now, not after the features are made
            from stlser import finetune

            finetune.load_init(cfg, cfg.features.n_features)

    def prepare(self, cfg: Any, df: Any, labels: list[str]) -> dict[str, Any]:
        from stlser import features

        feats = features.load_features(df, cfg.features, cfg.cache_dir)
        return {"df": df, "feats": feats, "labels": labels}

    def fit(
        self,
        cfg: Any,
        data: dict[str, Any],
        fold: Any,
        out: Path,
        resume: bool = False,
        callbacks: Any = None,
    ) -> FoldOutput:
        from stlser.training import train_fold

        fd = fold_data(cfg, data["df"], data["feats"], fold, data["labels"])
        info = train_fold(cfg, fd, out, resume=resume, callbacks=callbacks)
        probs = np.asarray(info.pop("probs"), np.float32)
        row = {k: info.get(k) for k in ("best_epoch", "epochs_run", "seconds")}
        return FoldOutput(probs, info, row)

    def report_facts(self, cfg: Any, data: Any, infos: list[dict]) -> dict[str, Any]:
        speed = [i.get("utt_per_second") or 0 for i in infos]
        return {
            "n_params": infos[0].get("n_params", 0) if infos else 0,
            "train_utt_per_second": round(float(np.mean(speed)), 1) if speed else 0.0,
            "stl_layers": cfg.model.stl_layers,
            "aggregation": cfg.model.aggregation,
            "stl_over": cfg.model.stl_over,
        }

    def load(self, path: str | Path, art: dict[str, Any]) -> STLSER:
        return load_artefact(path, art)[0]

    def recognizer(self, path: str | Path, art: dict[str, Any]) -> NetworkRecognizer:
        return NetworkRecognizer(Pipeline.from_artefact(path, art))

    def export(self, path: str | Path, art: dict[str, Any], out: str | Path, **kw: Any) -> Path:
        from stlser.onnx_graph import wave_graph

        pipeline = Pipeline.from_artefact(path, art)
        doc = "stlser: 16 kHz waveform -> speech emotion probabilities (log-mel front end inside)"
        return wave_graph(pipeline, pipeline.export_metadata(), out, doc, **kw)

    def score(
        self,
        path: str | Path,
        art: dict[str, Any],
        df: Any,
        cache_dir: str | None,
        stats: str = "speaker",
    ) -> Any:
        from stlser import features
        from stlser.model import predict

        if stats != "speaker":
            raise ValueError(
                f"stats={stats!r}: the network kind is scored with its training normalisation "
                "only (stats='speaker')"
            )
        model, art = load_artefact(path, art)
        fc = FeatureConfig(**art["feature_config"])
        feats = features.load_features(df, fc, cache_dir)
        fitted = features.Normalizer.from_state(art["normalizer"])
        # the training-time mode with the model's own global statistics; in speaker mode each
        # speaker of the manifest is standardised by its own (label-free) statistics
        normed, _ = features.normalize_all(feats, df, fitted.mode, [], fitted=fitted)
        ids = df["utt_id"].tolist()
        return predict(model, [normed[u] for u in ids], crop=artefact_crop(art))["probs"]

    def describe(self, art: dict[str, Any]) -> dict[str, Any]:
        return {**super().describe(art), "model_config": art.get("model_config")}
