"""Typed experiment configuration: one YAML file per experiment, `--set a.b=c` overrides.

Sections map one-to-one to the pipeline: data → split → features → model → train.
Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    corpus: str = "synth"  # registry name (stlser.corpora.READERS) or "manifest"
    root: str = ""  # corpus folder in its release layout
    labels: str = "native"  # native | 4class
    manifest: str = ""  # an existing manifest CSV (skips the corpus scan)


@dataclass
class SplitConfig:
    protocol: str = "loso"  # loso | loso-session | group-kfold | paper
    k: int = 5  # folds for group-kfold
    val_speakers: int = 1  # whole training speakers held out for validation (speaker-independent)
    val_fraction: float = 0.1  # paper protocol: validation share (7/1/2 → 0.1)
    test_fraction: float = 0.2
    seeds: list[int] = field(default_factory=lambda: [0])  # paper protocol: one split per seed
    folds: list[int] | None = None  # run only these fold indices (None = all)


@dataclass
class FeatureConfig:
    kind: str = "logmel"  # logmel | mfcc | egemaps
    preset: str = "default"  # default | authors (librosa defaults: n_fft 2048, hop 512, 10 s)
    sample_rate: int = 16_000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None  # None → next power of two ≥ window
    fmin: float = 0.0
    fmax: float | None = None
    n_mfcc: int = 40
    fixed_seconds: float | None = None  # pad/cut every clip to this length (authors: 10.0)
    normalize: str = "speaker"  # none | global | speaker | utterance (fitted on training data only)
    # Speakers with (nearly) one label or few utterances (stlser.degenerate): "global" normalises
    # them with global statistics under normalize=speaker; "off" keeps speaker statistics.
    speaker_fallback: str = "global"
    degenerate_share: float = (
        0.9  # share of the most frequent label that makes a speaker degenerate
    )
    degenerate_min_utts: int = 5  # fewer utterances than this: degenerate

    def resolved(self) -> FeatureConfig:
        """Apply the preset: `authors` reproduces the authors' librosa recipe."""
        c = dataclasses.replace(self)
        if c.preset == "authors":
            c.n_fft, c.win_ms, c.hop_ms, c.fixed_seconds = 2048, 2048 / 16, 512 / 16, 10.0
        elif c.preset != "default":
            raise ValueError(f"unknown features.preset {c.preset!r} (default | authors)")
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
    def n_features(self) -> int:
        if self.kind == "mfcc":
            return self.n_mfcc
        if self.kind == "egemaps":
            return 25
        return self.n_mels


@dataclass
class ModelConfig:
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
    aggregation: str = "conv1d"  # conv1d (paper) | last | attention | mean
    stl_over: str = "vector"  # vector (paper) | sequence
    agg_kernel: int = 3


@dataclass
class TrainConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-6
    batch_size: int = 32
    max_epochs: int = 100
    min_epochs: int = 1
    patience: int = 8
    monitor: str = "val_acc"  # val_acc | val_ua | val_loss
    class_weights: bool = False
    refit: bool = False  # after early stopping, retrain on train + val for the best epoch count
    specaugment: bool = False
    mixup: float = 0.0  # alpha; 0 = off
    gain_db: float = 0.0  # ± random gain on log-mel (dB); 0 = off
    time_stretch: float = 0.0  # tempo perturbation: stretch each batch's time axis by 1 ± this
    freq_warp: float = 0.0  # VTLP-style warp of each utterance's mel axis by 1 ± this
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


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in known:
            raise KeyError(f"unknown config key {where}{key!r}; known: {', '.join(sorted(known))}")
        sub = _SECTIONS.get(key) if cls is ExperimentConfig else None
        kwargs[key] = _build(sub, value, f"{key}.") if sub else value
    return cls(**kwargs)


_SECTIONS = {
    "data": DataConfig,
    "split": SplitConfig,
    "features": FeatureConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
    return _build(ExperimentConfig, d, "")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], yaml-parsed c)."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string; users mean a number
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip().split("."), parsed


def apply_overrides(d: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = d
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return d


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
