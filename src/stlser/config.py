"""Typed experiment configuration: one YAML file per experiment, `--set a.b=c` overrides.

Sections map one-to-one to the pipeline: data → split → features → model → train.
Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml


@dataclass
class DataConfig:
    corpus: str = "synth"  # registry name (stlser.corpora.READERS) or "manifest"
    root: str = ""  # corpus folder in its release layout
    labels: Literal["native", "4class"] = "native"
    manifest: str = ""  # an existing manifest CSV (skips the corpus scan)
    pool: list[str] = field(default_factory=list)  # stlser pretrain: corpora under `root`


@dataclass
class SplitConfig:
    protocol: Literal["loso", "loso-session", "group-kfold", "paper"] = "loso"
    k: int = 5  # folds for group-kfold
    val_speakers: int = 1  # whole training speakers held out for validation (speaker-independent)
    val_fraction: float = 0.1  # paper protocol: validation share (7/1/2 → 0.1)
    test_fraction: float = 0.2
    seeds: list[int] = field(default_factory=lambda: [0])  # paper protocol: one split per seed
    folds: list[int] | None = None  # run only these fold indices (None = all)


@dataclass
class FeatureConfig:
    kind: Literal["logmel", "mfcc", "egemaps"] = "logmel"
    preset: Literal["default", "authors"] = (
        "default"  # authors: librosa defaults (: n_fft 2048, hop 512, 10 s)
    )
    sample_rate: int = 16_000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None  # None → next power of two ≥ window
    fmin: float = 0.0
    fmax: float | None = None
    n_mfcc: int = 40
    fixed_seconds: float | None = None  # pad/cut every clip to this length (authors: 10.0)
    # fitted on training data only
    normalize: Literal["none", "global", "speaker", "utterance"] = "speaker"
    # Speakers with (nearly) one label or few utterances (stlser.degenerate): "global" normalises
    # them with global statistics under normalize=speaker; "off" keeps speaker statistics.
    speaker_fallback: Literal["global", "off"] = "global"
    degenerate_share: float = 0.9  # share of the most frequent label that makes it degenerate
    degenerate_min_utts: int = 5  # fewer utterances than this: degenerate
    # append Δ and ΔΔ (9-frame regression, computed in the torch front end, so exported too);
    # stored as [static | Δ | ΔΔ] on the feature axis, read by the network as 3 input channels
    deltas: bool = False

    def resolved(self) -> FeatureConfig:
        """Apply the preset: `authors` reproduces the authors' librosa recipe."""
        c = dataclasses.replace(self)
        if c.preset == "authors":
            c.n_fft, c.win_ms, c.hop_ms, c.fixed_seconds = 2048, 2048 / 16, 512 / 16, 10.0
        elif c.preset != "default":
            raise ValueError(f"unknown features.preset {c.preset!r} (default | authors)")
        if c.deltas and c.kind not in ("logmel", "mfcc"):
            raise ValueError(f"features.deltas needs kind logmel or mfcc, not {c.kind!r}")
        if c.n_fft is None:
            win = int(round(c.win_ms * c.sample_rate / 1000))
            c.n_fft = 1 << (win - 1).bit_length()
        return c

    @property
    def win_length(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def input_channels(self) -> int:
        """Planes stacked on the feature axis: 3 with deltas (static, Δ, ΔΔ), else 1."""
        return 3 if self.deltas and self.kind in ("logmel", "mfcc") else 1

    @property
    def n_features(self) -> int:
        if self.kind == "mfcc":
            return self.n_mfcc * self.input_channels
        if self.kind == "egemaps":
            return 25
        return self.n_mels * self.input_channels


#: Speed-perturbation factors allowed (`model.speeds`, the feature cache's ``speed``).
SPEED_RANGE = (0.5, 2.0)


@dataclass
class ModelConfig:
    # network: the paper's CNN-BiLSTM-STL on log-mel (below); expert: openSMILE functionals →
    # speaker normalisation → one logistic head per functional set (stlser.expert)
    kind: Literal["network", "expert"] = "network"
    functionals: list[str] = field(default_factory=lambda: ["egemaps", "compare", "is10"])  # expert
    l2_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])  # expert
    # expert: "select" fits each head at every L2 and keeps the one the validation speakers
    # score best; "average" keeps no choice: each head is the mean of its fits at every L2
    l2_mode: Literal["select", "average"] = "select"
    # expert: speed-perturbed copies of the training clips (Kaldi's speed perturbation, e.g.
    # [0.9, 1.1]) join the training rows, each (speaker, factor) normalised as a speaker of its
    # own; training only (prediction never perturbs). [] = off
    speeds: list[float] = field(default_factory=list)
    # fine-tuning: start from pretrained weights, "base" (the shipped general model) or the path
    # of a model.pt of the same kind. expert: each L2 of l2_grid is fitted pulling toward zero and
    # toward the pretrained weights (l2_mode select: validation picks one; average: all averaged);
    # network: compatible weights loaded, the classifier mapped by label
    init: str | None = None
    channels: list[int] = field(default_factory=lambda: [16, 32, 48, 72, 96, 128])
    pool_time: list[int] = field(default_factory=lambda: [2, 2, 2, 2, 1, 1])
    pool_freq: list[int] = field(default_factory=lambda: [2, 2, 2, 1, 1, 1])
    kernel: int = 3
    cnn_dropout: float = 0.1
    d_lstm: int = 24
    stl_layers: int = 5
    stl_heads: int = 4
    stl_ff: int = 128
    stl_dropout: float = 0.1
    aggregation: Literal["conv1d", "last", "attention", "mean"] = "conv1d"  # paper: conv1d
    stl_over: Literal["vector", "sequence"] = "vector"  # paper: vector
    agg_kernel: int = 3
    # λ of a speaker-adversarial head (gradient reversal on zL → linear speaker classifier over
    # the fold's training speakers); training only, never in model.pt or ONNX. 0 = off
    speaker_adversarial: float = 0.0

    def __post_init__(self) -> None:
        try:  # YAML 1.1 reads "1e-3" as a string
            self.l2_grid = [float(v) for v in self.l2_grid]
        except (TypeError, ValueError):
            raise ValueError(
                f"config model.l2_grid must be numbers, got {self.l2_grid!r}"
            ) from None
        if not self.l2_grid or min(self.l2_grid) < 0:
            raise ValueError(
                f"config model.l2_grid must be non-negative numbers, got {self.l2_grid}"
            )
        try:
            self.speeds = [float(v) for v in self.speeds]
        except (TypeError, ValueError):
            raise ValueError(f"config model.speeds must be numbers, got {self.speeds!r}") from None
        lo, hi = SPEED_RANGE
        if any(not lo <= v <= hi or v == 1.0 for v in self.speeds) or len(set(self.speeds)) < len(
            self.speeds
        ):
            raise ValueError(
                f"config model.speeds must be distinct factors in [{lo}, {hi}] other than 1, "
                f"got {self.speeds}"
            )


@dataclass
class TrainConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-6
    batch_size: int = 32
    max_epochs: int = 100
    min_epochs: int = 1
    patience: int = 8
    monitor: Literal["val_acc", "val_ua", "val_loss"] = "val_acc"
    class_weights: bool = False
    # network: the CNN front end (conv blocks) gets no updates in the first N epochs, then trains
    # with the rest; applies with or without model.init (BatchNorm statistics still adapt)
    freeze_epochs: int = 0
    refit: bool = False  # after early stopping, retrain on train + val for the best epoch count
    specaugment: bool = False
    mixup: float = 0.0  # alpha; 0 = off
    gain_db: float = 0.0  # ± random gain on log-mel (dB); 0 = off
    time_stretch: float = 0.0  # tempo perturbation: stretch each batch's time axis by 1 ± this
    freq_warp: float = 0.0  # VTLP-style warp of each utterance's mel axis by 1 ± this
    label_smoothing: float = 0.0  # of the training cross-entropy; 0 = off
    # train on random crops of this many seconds (new each epoch); validation, test and inference
    # average the posteriors of crop-length windows at 50 % hop (stored in model.pt). 0 = off
    crop_seconds: float = 0.0
    crops_per_utterance: int = 1  # each training utterance appears this many times per epoch
    precision: str = "32-true"  # 32-true | bf16-mixed
    bucket: bool = True  # batch utterances of similar length to cut padding
    num_threads: int = 0  # 0 = torch default (per process; see jobs)
    jobs: int = 1  # folds (and ensemble members) trained at once, each in its own process
    ensemble: int = (
        1  # models per fold, each with its own seed and validation speakers; probabilities averaged
    )
    deterministic: bool = True
    accelerator: str = "cpu"
    devices: int = 1
    log_every_n_steps: int = 10
    progress: bool = True


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str = ".cache/stlser"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: section → field → (lowest, highest) allowed value, inclusive; None = unbounded.
_POS, _NONNEG, _RATE = (1, None), (0, None), (0.0, 1.0)
_RANGES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "split": {"k": (2, None), "val_speakers": _NONNEG, "val_fraction": _RATE},
    "features": {"sample_rate": _POS, "n_mels": _POS, "n_mfcc": _POS, "win_ms": _NONNEG},
    "model": {"kernel": _POS, "d_lstm": _POS, "stl_layers": _NONNEG, "stl_heads": _POS},
    "train": {"lr": _NONNEG, "weight_decay": _NONNEG, "batch_size": _POS, "max_epochs": _POS},
}
_RANGES["split"].update(test_fraction=_RATE)
_RANGES["features"].update(hop_ms=_NONNEG, fmin=_NONNEG)
_RANGES["features"].update(degenerate_share=_RATE, degenerate_min_utts=_NONNEG)
_RANGES["model"].update(stl_ff=_POS, cnn_dropout=_RATE, stl_dropout=_RATE, agg_kernel=_POS)
_RANGES["train"].update(min_epochs=_NONNEG, patience=_NONNEG, mixup=_NONNEG, gain_db=_NONNEG)
_RANGES["train"].update(time_stretch=(0.0, 0.99), freq_warp=(0.0, 0.99), num_threads=_NONNEG)
_RANGES["train"].update(freeze_epochs=_NONNEG)
_RANGES["model"].update(speaker_adversarial=_NONNEG)  # λ of the speaker head, 0 = off
_RANGES["train"].update(label_smoothing=(0.0, 0.99))  # cross-entropy label smoothing
_RANGES["train"].update(crop_seconds=_NONNEG)  # training crop length (s), 0 = whole utterances
_RANGES["train"].update(crops_per_utterance=_POS)  # copies (crops) of each utterance per epoch
_RANGES["train"].update(jobs=_POS, ensemble=_POS, devices=_POS, log_every_n_steps=_POS)


def _check(cls: type, obj: Any, where: str) -> None:
    """Allowed values: Literal choices and the ranges in `_RANGES`; ValueError names the key."""
    hints = get_type_hints(cls)
    section = where.rstrip(".")
    for f in fields(cls):
        value, hint = getattr(obj, f.name), hints[f.name]
        if get_origin(hint) is Literal and value not in get_args(hint):
            choices = " | ".join(map(str, get_args(hint)))
            raise ValueError(f"config {where}{f.name}={value!r} is not one of: {choices}")
        lo, hi = _RANGES.get(section, {}).get(f.name, (None, None))
        if lo is None and hi is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config {where}{f.name} must be a number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise ValueError(f"config {where}{f.name}={value!r} is outside {span}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in known:
            raise KeyError(f"unknown config key {where}{key!r}; known: {', '.join(sorted(known))}")
        sub = _SECTIONS.get(key) if cls is ExperimentConfig else None
        kwargs[key] = _build(sub, value, f"{key}.") if sub else value
    obj = cls(**kwargs)
    _check(cls, obj, where)
    return obj


_SECTIONS = {
    "data": DataConfig,
    "split": SplitConfig,
    "features": FeatureConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
    return _build(ExperimentConfig, d, "")


def parse_value(v: Any) -> Any:
    """A value as written on the command line: a YAML scalar or list; '1e-3' (a string to
    YAML 1.1) becomes a float."""
    if not isinstance(v, str):
        return v
    x = yaml.safe_load(v)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], parsed c)."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip().split("."), parse_value(value)


def apply_overrides(d: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """A copy of the config dict `d` with every `a.b=c` override applied."""
    d = copy.deepcopy(d)
    for item in overrides or []:
        path, value = parse_override(item)
        node = d
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return d


def with_value(cfg: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    """A checked copy of `cfg` with the dotted `key` set to `value` (unknown keys are an error)."""
    d = cfg.to_dict()
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise KeyError(f"unknown config key {key!r}")
        node = node[p]
    if parts[-1] not in node:
        raise KeyError(f"unknown config key {key!r}; known: {', '.join(sorted(node))}")
    node[parts[-1]] = value
    return from_dict(d)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or start from defaults), apply `--set` overrides, validate."""
    d: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.exists():
            packaged = Path(__file__).parent / "configs" / p.name
            if packaged.exists():
                p = packaged
            else:
                raise FileNotFoundError(f"config {path} not found")
        d = yaml.safe_load(p.read_text()) or {}
    return from_dict(apply_overrides(d, overrides))


def dump(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
