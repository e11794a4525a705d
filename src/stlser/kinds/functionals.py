"""What the kinds that read one vector of functionals per clip share (`expert`, `svm`): the
functionals matrix of a manifest (through the feature cache), the runtime that computes the
functionals of audio and applies a trained model to them, and that model's ONNX graph.

The functionals come from stlser's own torch front end (`stlser.features.functionals`: compact,
medium, large; inside the model's ONNX graph) or from openSMILE (`stlser.smile`, the optional
extra: eGeMAPSv02, ComParE_2016, IS10, IS09, emobase; computed before the ONNX graph).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlser import __version__, adapt, featuresets
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
    """Number of functionals of each named set (`stlser.featuresets`)."""

    try:
        return featuresets.dims(sets)
    except ValueError:
        raise ValueError(
            f"model.functionals must name sets from {list(featuresets.NAMES)}"
        ) from None


def load_matrix(
    df: Any,
    sets: list[str],
    cache_dir: str | None,
    progress: bool,
    speed: float = 1.0,
    relative: bool = False,
) -> np.ndarray:
    """Functionals of every manifest row (sets concatenated) → float32[N, D], via the cache;
    with `speed` ≠ 1, of each clip speed-perturbed by that factor. Consecutive own sets are
    computed in one pass (one cache entry); `relative`: relative to each clip's level
    (`stlser.featuresets.pass_name`). Non-finite values (openSMILE gives NaN for a few
    functionals of near-silent clips) become 0."""
    from stlser.features import load_functionals

    parts = []
    for group in featuresets.own_groups(sets):
        name = featuresets.pass_name(group, relative)
        got = load_functionals(df, cache_dir, progress=progress, feature_set=name, speed=speed)
        parts.append(np.stack([np.asarray(got[str(u)], np.float32) for u in df["utt_id"]]))
    X = np.concatenate(parts, axis=1)
    bad = ~np.isfinite(X)
    if bad.any():
        X[bad] = 0.0
    return X


def functionals_of(
    wave: np.ndarray, lengths: np.ndarray, sets: list[str], relative: bool = False
) -> np.ndarray:
    """Functionals (sets concatenated) of each clip of a right-padded 16 kHz batch →
    float32[B, D]: own sets batched in torch (`relative`: relative to each clip's level),
    openSMILE sets clip by clip."""
    from stlser import smile
    from stlser.features.functionals import batch_functionals

    parts = []
    for group in featuresets.own_groups(sets):
        if featuresets.is_own(group[0]):
            parts.append(batch_functionals(wave, lengths, featuresets.pass_name(group, relative)))
        else:
            featuresets.require_opensmile(f"functional set {group[0]!r}")
            parts.append(smile.batch(wave, lengths, group, SAMPLE_RATE))
    return np.concatenate(parts, axis=1).astype(np.float32)


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
        speaker_probs: Any = None,
        relative: bool = False,
    ) -> None:
        self.model = model.eval()
        self.labels = [str(x) for x in labels]
        self.sets = list(sets)
        #: own sets computed relative to each clip's level (``model.level: drop``)
        self.relative = bool(relative)
        self.sample_rate = SAMPLE_RATE
        self.meta = dict(meta)
        self._answer_with(self.meta)
        #: normalised functionals → probabilities (the kind's `speaker_probs`); None: the
        #: model cannot be adapted to a speaker
        self._speaker_probs = speaker_probs
        if speaker_probs is not None:  # statistics name the sets (and their level) they are of
            self.functional_sets = featuresets.stats_names(sets, self.relative)
            self.functionals_dim = int(model.mean.shape[0])
            self.global_stats = (
                model.mean.detach().numpy().astype(np.float32),
                model.std.detach().numpy().astype(np.float32),
            )

    def functionals(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return functionals_of(wave, lengths, self.sets, self.relative)

    _functionals = functionals

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.functionals(wave, lengths))
        with torch.inference_mode():
            if self.speaker is None:
                return self.model(x).numpy()
            mean = torch.from_numpy(self.speaker.mean)
            std = torch.from_numpy(self.speaker.std)
            return self._speaker_probs(self.model, (x - mean) / std).numpy()

    def __repr__(self) -> str:
        kind = self.meta.get("kind", "functionals")
        return f"FunctionalsRecognizer({kind}, labels={self.labels}, source={self.meta.get('source')!r})"


def recognizer(
    model: torch.nn.Module,
    art: dict[str, Any],
    sets: list[str],
    kind: str,
    source: Any,
    speaker_probs: Any = None,
) -> FunctionalsRecognizer:
    meta = {**(art.get("meta") or {}), "source": str(source), "kind": kind}
    relative = FunctionalsKind.relative(art)
    return FunctionalsRecognizer(model, list(art["labels"]), sets, meta, speaker_probs, relative)


#: Largest |probability difference| between torch and onnxruntime a functionals graph may show
#: on the export's check clips. Step functionals (rise / fall and up-level times, peak counts)
#: change by one frame's share when float rounding moves a value across a threshold; measured
#: up to 9e-4 on 0.7-1.1 s clips, < 1e-4 at 0.5, 3 and 17 s (tests/test_own_sets.py).
GRAPH_TOLERANCE = 2e-3


class WaveModel(torch.nn.Module):
    """A functionals model with its own front end: ``wave[B, N], lengths[B] → probs[B, C]``,
    the functionals normalised by ``stats_mean[D]`` / ``stats_std[D]`` (default: the training
    set's global statistics; a speaker's own statistics adapt the model to that speaker)."""

    def __init__(
        self,
        kind: FunctionalsKind,
        model: torch.nn.Module,
        sets: list[str],
        with_functionals: bool = False,
        relative: bool = False,
    ) -> None:
        from stlser.features.functionals import FunctionalFrontEnd

        super().__init__()
        self.kind, self.model = kind, model.eval()
        self.front = FunctionalFrontEnd(featuresets.pass_name(sets, relative)).eval()
        #: also return the functionals (a second output, from which a runtime computes a
        #: speaker's statistics)
        self.with_functionals = bool(with_functionals)

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor,
        stats_mean: torch.Tensor | None = None,
        stats_std: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.front(wave, lengths)
        mean = self.model.mean if stats_mean is None else stats_mean
        std = self.model.std if stats_std is None else stats_std
        probs = self.kind.speaker_probs(self.model, (x - mean) / std)
        return (probs, x) if self.with_functionals else probs


def export(
    kind: FunctionalsKind,
    model: torch.nn.Module,
    art: dict[str, Any],
    sets: list[str],
    out: str | os.PathLike,
    **kw: Any,
) -> Path:
    """ONNX graph of a model over functionals. Own sets only (`stlser.featuresets`): one graph
    ``wave[B, N], lengths[B] (, stats_mean[D], stats_std[D]) → probs[B, C]`` with the front end
    inside, run by onnxruntime alone. With openSMILE sets: ``functionals[B, D] → probs[B, C]``,
    openSMILE computing the functionals before the graph (`stlser.onnx_runtime` does it; the
    metadata names the sets)."""
    from stlser.onnx_graph import vector_graph, wave_graph

    dim = int(sum(set_dims(sets)))
    meta = {
        "kind": kind.name,
        "labels": json.dumps(list(art["labels"])),
        "sample_rate": str(SAMPLE_RATE),
        "functionals": json.dumps(list(sets)),
        "stlser_version": __version__,
        "n_params": str(sum(p.numel() for p in model.parameters()) or model_size(model)),
        "training": json.dumps(art.get("meta") or {}, default=str),
        "outputs": "probs[B,C] float32 over labels",
    }
    meta.update(answer_metadata(art.get("meta") or {}))
    if all(featuresets.is_own(s) for s in sets):
        meta["inputs"] = (
            "wave[B,N] float32 16 kHz mono, zero-padded; lengths[B] int64 samples; optional "
            "stats_mean[D], stats_std[D] float32: a speaker's functional statistics (default: "
            "the training set's global ones)"
        )
        stats = {"stats_mean": model.mean.detach().clone(), "stats_std": model.std.detach().clone()}
        meta["global_stats"] = adapt.encode_prior(stats["stats_mean"], stats["stats_std"])
        if kind.relative(art):  # the sets computed relative to each clip's level
            meta["functionals_level"] = "relative"
        meta["outputs"] = "probs[B,C] float32 over labels; functionals[B,D] float32"
        return wave_graph(
            WaveModel(kind, model, sets, with_functionals=True, relative=kind.relative(art)),
            meta,
            out,
            optional=stats,
            outputs=["probs", "functionals"],
            tolerance=GRAPH_TOLERANCE,
            optimize=False,  # onnxscript's rewriter takes minutes on this graph; onnxruntime
            **kw,  # optimises it when a session loads it
        )
    meta["inputs"] = (
        "functionals[B,D] float32: openSMILE functionals of 16 kHz mono clips, sets "
        "concatenated in the order of 'functionals'"
    )
    return vector_graph(model, dim, meta, out)


def answer_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The answer settings of an artefact's metadata (`stlser.calibration`) as ONNX metadata:
    ``temperature`` (JSON; to apply to the graph's probabilities as p^(1/T), renormalised) and
    ``default_labels`` (JSON)."""
    return {k: json.dumps(meta[k]) for k in ("temperature", "default_labels") if meta.get(k)}


def model_size(model: torch.nn.Module) -> int:
    """Parameters, or (a model held in buffers) the buffers' size."""
    return int(sum(b.numel() for b in model.buffers()))


#: `Kind.score`'s normalisation of the scored clips
STATS = ("speaker", "global")


def check_stats(stats: str) -> None:
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, not {stats!r}")


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

    @staticmethod
    def relative(art: dict[str, Any]) -> bool:
        """Whether the artefact's own sets are computed relative to each clip's level."""
        return featuresets.relative_level(art.get("model_config") or {})

    def load(self, path: str | Path, art: dict[str, Any]) -> Any:
        return self.read_model(path, art)[0]

    def recognizer(self, path: str | Path, art: dict[str, Any]) -> FunctionalsRecognizer:
        model, art = self.read_model(path, art)
        return recognizer(model, art, self.sets(art), self.name, path, self.speaker_probs)

    def export(self, path: str | Path, art: dict[str, Any], out: str | Path, **kw: Any) -> Path:
        model, art = self.read_model(path, art)
        return export(self, model, art, self.sets(art), out, **kw)

    def score(
        self,
        path: str | Path,
        art: dict[str, Any],
        df: Any,
        cache_dir: str | None,
        stats: str = "speaker",
    ) -> Any:
        from stlser.config import FeatureConfig

        check_stats(stats)
        model, art = self.read_model(path, art)
        X = load_matrix(df, self.sets(art), cache_dir, False, relative=self.relative(art))
        X = X.astype(np.float64)
        fc = FeatureConfig(**art["feature_config"])
        with torch.no_grad():
            if fc.normalize != "speaker" or stats == "global":  # the stored global statistics
                return model(torch.as_tensor(X, dtype=torch.float32)).numpy()
            Z = speakers_normalised(X, df, fc)
            return self.speaker_probs(model, torch.as_tensor(Z, dtype=torch.float32)).numpy()

    def describe(self, art: dict[str, Any]) -> dict[str, Any]:
        return {**super().describe(art), "functionals": self.sets(art)}
