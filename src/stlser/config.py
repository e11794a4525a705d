"""Typed experiment configuration: one YAML file per experiment, `--set a.b=c` overrides.

Sections map one-to-one to the pipeline: data → split → features → model → train. The `model`
section is one variant per recogniser kind, chosen by ``model.kind`` (:data:`MODEL_CONFIGS`):
each variant holds only its own keys. Every value is checked when the config is built — type
(a number where a number belongs, finite), range, choice, and the relations between keys — and
a bad value raises :class:`ConfigError` naming the key, before any work starts. Unknown keys are
an error (a typo must not silently fall back to a default).

Why this is one module: the sections, the model variants and the rules that check them are
read together, and the loader has to know every one of them.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from stlser.featuresets import N_LLD, OPENSMILE_EXTRA, is_own, opensmile_available
from stlser.featuresets import NAMES as FUNCTIONAL_SET_NAMES


class ConfigError(ValueError):
    """A config value, key or file that cannot be used; the message names it."""


@dataclass
class DataConfig:
    corpus: str = "synth"  # registry name (stlser.corpora.READERS) or "manifest"
    root: str = ""  # corpus folder in its release layout
    labels: Literal["native", "4class"] = "native"
    manifest: str = ""  # an existing manifest CSV (skips the corpus scan)
    pool: list[str] = field(default_factory=list)  # stlser pretrain: corpora under `root`
    duplicates: Literal["error", "drop"] = "error"  # identical files: stlser.corpora.duplicates


@dataclass
class SplitConfig:
    protocol: Literal["loso", "loso-session", "group-kfold", "paper", "predefined"] = "loso"
    k: int = 5  # folds for group-kfold
    val_speakers: int = 1  # whole training speakers held out for validation (speaker-independent)
    val_fraction: float = 0.1  # paper protocol: validation share (7/1/2 → 0.1)
    test_fraction: float = 0.2
    seeds: list[int] = field(default_factory=lambda: [0])  # paper protocol: one split per seed
    folds: list[int] | None = None  # run only these fold indices (None = all)


@dataclass
class FeatureConfig:
    """Frame features of the network, and the normalisation every kind applies. ``preset:
    authors`` (applied when the config is built): the authors' librosa recipe (n_fft 2048, hop
    512, 10 s clips). ``n_fft`` None: the next power of two ≥ the window (:attr:`fft_size`)."""

    kind: Literal["logmel", "mfcc", "lld", "egemaps"] = "logmel"
    preset: Literal["default", "authors"] = "default"
    sample_rate: int = 16_000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    fmin: float = 0.0
    fmax: float | None = None
    n_mfcc: int = 40
    fixed_seconds: float | None = None  # pad/cut every clip to this length (authors: 10.0)
    normalize: Literal["none", "global", "speaker", "utterance"] = "speaker"  # fit on training
    # Speakers with (nearly) one label or few utterances (stlser.degenerate): "global" normalises
    # them with global statistics under normalize=speaker; "off" keeps speaker statistics.
    speaker_fallback: Literal["global", "off"] = "global"
    degenerate_share: float = 0.9  # share of the most frequent label that makes it degenerate
    degenerate_min_utts: int = 5  # fewer utterances than this: degenerate
    # append Δ and ΔΔ (9-frame regression; torch front end): [static | Δ | ΔΔ], 3 input planes
    deltas: bool = False

    def __post_init__(self) -> None:
        if self.preset == "authors":
            self.n_fft, self.win_ms, self.hop_ms, self.fixed_seconds = 2048, 128.0, 32.0, 10.0

    def check(self) -> None:
        if self.deltas and self.kind not in ("logmel", "mfcc"):
            raise ConfigError(f"config features.deltas needs kind logmel or mfcc, not {self.kind}")
        lld_frames = (self.sample_rate, self.win_ms, self.hop_ms, self.fixed_seconds)
        if self.kind == "lld" and lld_frames != (16_000, 25.0, 10.0, None):
            raise ConfigError(
                "config features.kind=lld has 25 ms frames every 10 ms at 16 kHz: leave features."
                "sample_rate / win_ms / hop_ms / fixed_seconds at 16000 / 25 / 10 / null"
            )
        if self.kind == "egemaps" and not opensmile_available():
            raise ConfigError(f"config features.kind=egemaps needs openSMILE: {OPENSMILE_EXTRA}")
        if self.win_length < 1 or self.hop_length < 1:
            raise ConfigError(
                f"config features.win_ms={self.win_ms} / hop_ms={self.hop_ms} give less than one "
                f"sample at {self.sample_rate} Hz"
            )
        if self.n_fft is not None and self.n_fft < self.win_length:
            raise ConfigError(
                f"config features.n_fft={self.n_fft} is shorter than the window "
                f"({self.win_length} samples)"
            )
        top = self.sample_rate / 2
        if self.fmax is not None and not self.fmin < self.fmax <= top:
            raise ConfigError(f"config features.fmax={self.fmax} must lie in (fmin, {top:g}]")

    @property
    def win_length(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def fft_size(self) -> int:
        """``n_fft``, or the next power of two ≥ the window."""
        return self.n_fft or 1 << (max(1, self.win_length) - 1).bit_length()

    @property
    def input_channels(self) -> int:
        """Planes stacked on the feature axis: 3 with deltas (static, Δ, ΔΔ), else 1."""
        return 3 if self.deltas and self.kind in ("logmel", "mfcc") else 1

    @property
    def n_features(self) -> int:
        if self.kind == "mfcc":
            return self.n_mfcc * self.input_channels
        if self.kind in ("egemaps", "lld"):
            return 25 if self.kind == "egemaps" else N_LLD
        return self.n_mels * self.input_channels


#: Speed-perturbation factors allowed (`model.speeds`, the feature cache's ``speed``).
SPEED_RANGE = (0.5, 2.0)


@dataclass
class NetworkConfig:
    """The paper's CNN-BiLSTM-STL on frame features (`stlser.kinds.network`)."""

    kind: Literal["network"] = "network"
    # fine-tuning: start from another network's model.pt (compatible weights; classifier by label)
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

    def check(self) -> None:
        n = len(self.channels)
        if not n or not len(self.pool_time) == len(self.pool_freq) == n:
            raise ConfigError(
                "config model.channels, model.pool_time and model.pool_freq must be non-empty "
                f"lists of one length (got {n}, {len(self.pool_time)}, {len(self.pool_freq)})"
            )
        for key in ("channels", "pool_time", "pool_freq"):
            if any(v < 1 for v in getattr(self, key)):
                raise ConfigError(f"config model.{key} must hold positive integers")
        if (2 * self.d_lstm) % self.stl_heads:
            raise ConfigError(
                f"config model.stl_heads={self.stl_heads} must divide the model width "
                f"2·d_lstm = {2 * self.d_lstm}"
            )


@dataclass
class ExpertConfig:
    """Functionals → speaker normalisation → one logistic head per set (`stlser.kinds.expert`)."""

    kind: Literal["expert"] = "expert"
    functionals: list[str] = field(default_factory=lambda: ["compact", "large"])
    l2_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])
    # "select": each head at the L2 the validation speakers score best; "average": mean of all
    l2_mode: Literal["select", "average"] = "select"
    # speed-perturbed copies of the training clips (Kaldi-style, e.g. [0.9, 1.1]) join the
    # training rows, each (speaker, factor) a speaker of its own; training only. [] = off
    speeds: list[float] = field(default_factory=list)
    # fine-tuning: "base" (the shipped general model) or an expert model.pt: each L2 of l2_grid
    # fitted pulling toward zero and toward the pretrained weights
    init: str | None = None
    # "drop" (own sets only): functionals relative to each clip's level, and the heads ignore
    # the ones a gain moves (`featuresets.level_columns`): answers ignore the playback volume
    level: Literal["keep", "drop"] = "keep"

    def check(self) -> None:
        if self.level == "drop" and not all(map(is_own, self.functionals)):
            raise ConfigError("config model.level=drop needs own sets; set model.level=keep")
        _check_sets(self.functionals)
        if not self.l2_grid or min(self.l2_grid) < 0:
            raise ConfigError(f"config model.l2_grid must be numbers >= 0, got {self.l2_grid}")
        lo, hi = SPEED_RANGE
        bad = [v for v in self.speeds if not lo <= v <= hi or v == 1.0]
        if bad or len(set(self.speeds)) < len(self.speeds):
            msg = f"distinct factors in [{lo}, {hi}] other than 1, got {self.speeds}"
            raise ConfigError(f"config model.speeds must be {msg}")


@dataclass
class SvmConfig:
    """The classic baseline: functionals + StandardScaler + linear SVM (`stlser.kinds.svm`)."""

    kind: Literal["svm"] = "svm"
    functionals: list[str] = field(default_factory=lambda: ["egemaps"])
    c_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    class_weights: list[Literal["none", "balanced"]] = field(
        default_factory=lambda: ["none", "balanced"]
    )
    # "val": C × class weight by UA on the fold's validation speakers; "inner": by group k-fold
    # over the training and validation speakers
    selection: Literal["val", "inner"] = "val"

    def check(self) -> None:
        _check_sets(self.functionals)
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ConfigError(f"config model.c_grid must be positive numbers, got {self.c_grid}")
        if not self.class_weights:
            raise ConfigError("config model.class_weights must name at least one of none, balanced")


def _check_sets(sets: list[str]) -> None:
    unknown = [s for s in sets if s not in FUNCTIONAL_SET_NAMES]
    if unknown or not sets or len(set(sets)) < len(sets):
        names = " | ".join(FUNCTIONAL_SET_NAMES)
        raise ConfigError(f"config model.functionals={sets} must name distinct sets from: {names}")
    if any(not is_own(s) for s in sets) and not opensmile_available():
        raise ConfigError(f"config model.functionals={sets} needs openSMILE: {OPENSMILE_EXTRA}")


#: model.kind → its config variant. A new kind adds its own (`register_model_config`).
MODEL_CONFIGS: dict[str, type] = {
    "network": NetworkConfig,
    "expert": ExpertConfig,
    "svm": SvmConfig,
}


def known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of `d` that are fields of `cls` (an artefact's stored settings may hold others)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def model_from_dict(d: dict[str, Any]) -> Any:
    """The model config variant of a stored ``model_config``, other kinds' keys left out."""
    cls = MODEL_CONFIGS.get(str(d.get("kind", "network")))
    if cls is None:
        raise ConfigError(f"model.kind={d.get('kind')!r} is not one of: {', '.join(MODEL_CONFIGS)}")
    return cls(**known_fields(cls, d))


def register_model_config(kind: str, cls: type) -> None:
    """Make ``model.kind: <kind>`` build `cls` (a dataclass whose first field is `kind`)."""
    MODEL_CONFIGS[kind] = cls


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
    # network: the CNN blocks are frozen for the first N epochs (BatchNorm statistics adapt)
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
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "64-true"] = "32-true"
    bucket: bool = True  # batch utterances of similar length to cut padding
    num_threads: int = 0  # 0 = torch default (per process; see jobs)
    jobs: int = 1  # folds (and ensemble members) trained at once, each in its own process
    ensemble: int = 1  # models per fold (own seed, own validation speakers), scores averaged
    deterministic: bool = True
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    # one network on devices × num_nodes processes (stlser.ddp); batch_size is the global batch
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    log_every_n_steps: int = 10
    progress: bool = True

    def check(self) -> None:
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    f"config train.accelerator={self.accelerator!r}: no CUDA device on this "
                    "machine (use cpu)"
                )
        from stlser.ddp import config_problem  # devices, num_nodes, strategy, jobs together

        if problem := config_problem(self):
            raise ConfigError(problem)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: Any = field(default_factory=NetworkConfig)  # one of MODEL_CONFIGS, by model.kind
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str = ".cache/stlser"

    def check(self) -> None:
        if self.train.freq_warp and self.features.kind not in ("logmel", "mfcc"):
            raise ConfigError("config train.freq_warp needs a mel axis: features.kind logmel/mfcc")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- checks
Check = tuple[Callable[[float], bool], str]
_POS: Check = (lambda v: v >= 1, ">= 1")
_NONNEG: Check = (lambda v: v >= 0, ">= 0")
_GT0: Check = (lambda v: v > 0, "> 0")
_RATE: Check = (lambda v: 0 <= v <= 1, "in [0, 1]")
_OPEN_RATE: Check = (lambda v: 0 < v < 1, "in (0, 1)")
_SHARE: Check = (lambda v: 0 < v <= 1, "in (0, 1]")
_BELOW1: Check = (lambda v: 0 <= v <= 0.99, "in [0, 0.99]")
#: (test, keys): every listed ``section.key`` must pass the test (lists: every element).
_RULES: list[tuple[Check, str]] = [
    (_POS, "features.n_mels features.n_mfcc features.n_fft model.kernel model.d_lstm "
     "model.stl_heads model.stl_ff model.agg_kernel train.batch_size train.max_epochs "
     "train.crops_per_utterance train.jobs train.ensemble train.devices train.num_nodes "
     "train.log_every_n_steps"),
    (_NONNEG, ".seed split.val_speakers features.fmin features.degenerate_min_utts "
     "model.stl_layers model.speaker_adversarial train.weight_decay train.min_epochs "
     "train.patience train.freeze_epochs train.mixup train.gain_db train.crop_seconds "
     "train.num_threads"),
    (_GT0, "features.win_ms features.hop_ms features.fmax features.fixed_seconds train.lr"),
    (_RATE, "split.val_fraction"),
    (_OPEN_RATE, "split.test_fraction"),
    (_SHARE, "features.degenerate_share"),
    (_BELOW1, "model.cnn_dropout model.stl_dropout train.time_stretch train.freq_warp "
     "train.label_smoothing"),
    ((lambda v: v >= 2, ">= 2"), "split.k"),
    ((lambda v: v >= 4000, ">= 4000"), "features.sample_rate"),
]  # fmt: skip
#: section → field → (test, description); a value failing its test is refused.
_RANGES: dict[str, dict[str, Check]] = {}
for _test, _keys in _RULES:
    for _key in _keys.split():
        _section, _, _name = _key.rpartition(".")
        _RANGES.setdefault(_section, {})[_name] = _test


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of: " + " | ".join(map(str, get_args(hint)))
    if get_origin(hint) is list:
        return f"a list of {_describe(get_args(hint)[0])}"
    if get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " (or null)"
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
    return names.get(hint, str(hint))


def _typed(value: Any, hint: Any, key: str) -> Any:
    """`value` as the type `hint` says (ints for int, finite floats for float, ...), or
    ConfigError naming `key`."""

    def bad() -> ConfigError:
        return ConfigError(f"config {key}={value!r} must be {_describe(hint)}")

    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _typed(value, a, key)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        same = [a for a in get_args(hint) if a == value and type(a) is type(value)]
        if same:
            return value
        raise bad()
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        return [_typed(v, get_args(hint)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint in (bool, str):
        if isinstance(value, hint):
            return value
        raise bad()
    if hint is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise bad()
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if not math.isfinite(value):
            raise bad()
        return float(value)
    return value


def _check(cls: type, obj: Any, where: str) -> None:
    """Types, then the ranges in `_RANGES`, then the variant's own `check()`."""
    hints = get_type_hints(cls)
    section = where.rstrip(".")
    for f in fields(cls):
        if f.name in _SECTIONS and cls is ExperimentConfig:
            continue
        key = f"{where}{f.name}"
        value = _typed(getattr(obj, f.name), hints[f.name], key)
        object.__setattr__(obj, f.name, value)
        test = _RANGES.get(section, {}).get(f.name)
        if test is None or value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if not test[0](v):
                raise ConfigError(f"config {key}={value!r} must be {test[1]}")
    if hasattr(obj, "check"):
        obj.check()


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        name = where.rstrip(".") or "the config file"
        raise ConfigError(f"config {name} must be a mapping of keys to values, got {data!r}")
    if cls is ExperimentConfig and "model" in data:
        data = {**data, "model": data["model"] or {}}
    if where == "model.":
        kind = data.get("kind", "network")
        if kind not in MODEL_CONFIGS:
            raise ConfigError(
                f"config model.kind={kind!r} is not one of: " + " | ".join(MODEL_CONFIGS)
            )
        cls = MODEL_CONFIGS[kind]
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            scope = f" for model.kind={data.get('kind', 'network')}" if where == "model." else ""
            raise ConfigError(
                f"unknown config key '{where}{key}'{scope}; known: {', '.join(sorted(known))}"
            )
        sub = _SECTIONS.get(key) if cls is ExperimentConfig else None
        kwargs[key] = _build(sub, value, f"{key}.") if sub else value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {where.rstrip('.') or 'file'}: {e}") from None
    _check(cls, obj, where)
    return obj


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "split": SplitConfig,
    "features": FeatureConfig,
    "model": NetworkConfig,  # the variant is chosen by model.kind in _build
    "train": TrainConfig,
}


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
    return _build(ExperimentConfig, d, "")


def parse_value(v: Any) -> Any:
    """A value as written on the command line: a YAML scalar or list; '1e-3' (a string to
    YAML 1.1) becomes a float."""
    if not isinstance(v, str):
        return v
    try:
        x = yaml.safe_load(v)
    except yaml.YAMLError:
        return v
    if isinstance(x, str):
        try:
            return float(x) if x.strip().lower() not in ("nan", "inf", "-inf") else x
        except ValueError:
            return x
    return x


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], parsed c)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip().split("."), parse_value(value)


def apply_overrides(d: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """A copy of the config dict `d` with every `a.b=c` override applied."""
    d = copy.deepcopy(d)
    for item in overrides or []:
        path, value = parse_override(item)
        node = d
        for i, k in enumerate(path[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"--set {item}: config {'.'.join(path[: i + 1])} is a value, not a section"
                )
            node = nxt
        node[path[-1]] = value
    return d


def with_value(cfg: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    """A checked copy of `cfg` with the dotted `key` set to `value` (unknown keys are an error)."""
    d = cfg.to_dict()
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"unknown config key {key!r}")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}; known: {', '.join(sorted(node))}")
    node[parts[-1]] = value
    return from_dict(d)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping (safe YAML: no tags that build objects); ConfigError says why
    a file cannot be used."""
    p = Path(path)
    if not p.exists():
        p = Path(__file__).parent / "configs" / p.name  # a packaged config by its name
        if not p.exists():
            raise ConfigError(f"config {path} not found")
    if not p.is_file():
        raise ConfigError(f"config {path} is not a file")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{at}: {problem}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(d).__name__}")
    return d


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or start from defaults), apply `--set` overrides, check it all."""
    d = read_yaml(path) if path else {}
    return from_dict(apply_overrides(d, overrides))


def dump(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
