"""Fine-tuning the paper network (`model.kind: network`) from a trained `model.pt`.

* :func:`load_init` reads the artefact named by ``model.init`` (a network `model.pt`, or a run
  folder holding one) with the safe loader and checks it against this run: the architecture
  keys of the model config and the input width (feature kind, n_mels/n_mfcc) must match; dropout
  may differ. ``"base"`` (the shipped general model) is an expert model and is refused for
  this kind with a message saying what to use instead.
* :func:`apply_init` copies every tensor but the classifier into a fresh network; classifier
  rows are copied for the labels both label sets share (matched by name), new labels keep
  their fresh initialisation.
* :func:`set_front_end_trainable` freezes or unfreezes the CNN front end (``train.freeze_epochs``,
  applied by `stlser.training.SERModule` at the start of each epoch).

Imports torch only (never Lightning).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from stlser.config import ExperimentConfig, FeatureConfig, NetworkConfig
from stlser.model import ARTEFACT_FORMAT, STLSER, load_artefact
from stlser.recognizer import resolve_init_path
from stlser.safety import safe_torch_load

log = logging.getLogger(__name__)

#: Model config keys that decide the network's tensor shapes (dropout rates may differ).
ARCH_KEYS = (
    "channels",
    "pool_time",
    "pool_freq",
    "kernel",
    "d_lstm",
    "stl_layers",
    "stl_heads",
    "stl_ff",
    "aggregation",
    "stl_over",
    "agg_kernel",
)
#: The feature config key that sets the input width, per feature kind.
WIDTH_KEY = {"logmel": "n_mels", "mfcc": "n_mfcc"}
CLASSIFIER = "classifier."


@dataclass
class Init:
    """A checked network artefact to start from: its file, labels and weights."""

    path: Path
    labels: list[str]
    state_dict: dict[str, Tensor]


def _differences(art: dict, cfg: ExperimentConfig, n_features: int) -> list[str]:
    """`model.KEY a (init) != b (this run)` for every architecture or input-width mismatch."""
    theirs, ours = asdict(NetworkConfig(**art["model_config"])), asdict(cfg.model)
    diffs = [
        f"model.{k} {theirs[k]} (init) != {ours[k]} (this run)"
        for k in ARCH_KEYS
        if theirs[k] != ours[k]
    ]
    theirs_fc = FeatureConfig(**art["feature_config"])
    kind = theirs_fc.kind
    if theirs_fc.deltas != cfg.features.deltas:
        diffs.append(
            f"features.deltas {theirs_fc.deltas} (init) != {cfg.features.deltas} (this run)"
        )
    if kind != cfg.features.kind:
        diffs.append(f"features.kind {kind} (init) != {cfg.features.kind} (this run)")
    elif art["n_features"] != n_features and theirs_fc.deltas == cfg.features.deltas:
        key = f"features.{WIDTH_KEY[kind]}" if kind in WIDTH_KEY else "input features"
        planes = theirs_fc.input_channels  # the same on both sides here
        diffs.append(
            f"{key} {art['n_features'] // planes} (init) != {n_features // planes} (this run)"
        )
    return diffs


def load_init(cfg: ExperimentConfig, n_features: int) -> Init:
    """The network artefact named by ``cfg.model.init``, checked against this run's model
    config and input width (`n_features`); ValueError names every differing key."""
    spec = str(cfg.model.init)
    path = resolve_init_path(spec)
    art = safe_torch_load(path, "model.init artefact")
    fmt = art.get("format") if isinstance(art, dict) else None
    if fmt != ARTEFACT_FORMAT:
        what = "the shipped general model" if spec == "base" else str(path)
        raise ValueError(
            f"model.init {spec} is incompatible: {what} is not a network model (format "
            f"{fmt!r}) and has no network weights, this run is model.kind=network (give "
            "model.init the model.pt of a network run; the shipped model fine-tunes with "
            "model.kind=expert)"
        )
    net, art = load_artefact(path, art)  # checks format, checksum and that the weights fit
    diffs = _differences(art, cfg, n_features)
    if diffs:
        raise ValueError(f"model.init {spec} is incompatible: " + "; ".join(diffs))
    return Init(path, [str(x) for x in art["labels"]], net.state_dict())


@torch.no_grad()
def apply_init(model: STLSER, init: Init, labels: list[str]) -> dict[str, list[str] | int]:
    """Copy `init`'s weights into `model` (built for `labels`): every tensor but the
    classifier, and the classifier rows of the labels both share. → what was loaded."""
    own = model.state_dict()
    loaded = 0
    for name, src in init.state_dict.items():
        if name.startswith(CLASSIFIER):
            continue
        if name not in own or own[name].shape != src.shape:
            got = tuple(own[name].shape) if name in own else "missing"
            raise ValueError(
                f"model.init {init.path}: tensor {name} {tuple(src.shape)} does not fit {got}"
            )
        own[name].copy_(src)
        loaded += 1
    mapped = [v for v in labels if v in init.labels]
    for v in mapped:
        i, j = labels.index(v), init.labels.index(v)
        for part in ("weight", "bias"):
            own[CLASSIFIER + part][i] = init.state_dict[CLASSIFIER + part][j]
    new = [v for v in labels if v not in init.labels]
    log.info(
        f"model.init: {loaded} tensors from {init.path} (all but the classifier); "
        f"classifier labels mapped {mapped}, new {new}"
    )
    if not mapped:
        log.warning(f"model.init {init.path}: no label in common; the classifier starts fresh")
    return {"tensors": loaded, "mapped": mapped, "new": new}


def front_end(model: STLSER) -> list[torch.nn.Parameter]:
    """The CNN front end's parameters (every conv block, BatchNorm affine included)."""
    return list(model.blocks.parameters())


def set_front_end_trainable(model: STLSER, trainable: bool) -> None:
    """Freeze (no gradients, so no optimiser updates) or unfreeze the CNN front end. BatchNorm
    running statistics keep adapting to the data while frozen (they are not parameters)."""
    for p in front_end(model):
        p.requires_grad_(trainable)
