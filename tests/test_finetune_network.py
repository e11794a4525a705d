"""Fine-tuning the paper network: `model.init` (weights from a network model.pt, the classifier
mapped by label) and `train.freeze_epochs` (the CNN front end frozen, then trained)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stlser import config
from stlser.testing import make_artefact

TINY = {
    "channels": [4, 8],
    "pool_time": [2, 2],
    "pool_freq": [2, 2],
    "d_lstm": 8,
    "stl_layers": 1,
    "stl_heads": 2,
    "stl_ff": 16,
}
N_FEATURES = 40  # make_artefact's 40 log-mel bands
RUN_LABELS = ["sad", "fear", "angry"]  # the artefact has angry, happy, neutral, sad


def _cfg(init, extra=()):
    sets = [f"model.{k}={v}" for k, v in TINY.items()]
    fast = [
        "train.max_epochs=2",
        "train.patience=10",
        "train.progress=false",
        "train.log_every_n_steps=1",
    ]
    init_set = [f"model.init={init}"] if init is not None else []
    return config.load(None, [*sets, *fast, "train.batch_size=8", *init_set, *extra])


def _data(labels=RUN_LABELS, n=(18, 6, 6)):
    from stlser.training import FoldData

    rng = np.random.default_rng(0)

    def part(k):
        y = [i % len(labels) for i in range(k)]
        x = [
            (rng.standard_normal((48 + 8 * (i % 3), N_FEATURES)) + c).astype(np.float32)
            for i, c in enumerate(y)
        ]
        return x, y

    train, val, test = (part(k) for k in n)
    ids = [f"u{i}" for i in range(len(test[0]))]
    return FoldData(train, val, test, ids, list(labels), N_FEATURES, {"mode": "none"})


def _source(tmp_path, **kw):
    path = make_artefact(tmp_path / "src" / "model.pt", seed=3, **{**TINY, **kw})
    return path, torch.load(path, weights_only=True)


def test_compatible_init_loads_backbone_and_maps_classifier(tmp_path, caplog, one_torch_thread):
    from stlser import finetune
    from stlser.training import module_for

    path, art = _source(tmp_path)
    cfg = _cfg(path, ["model.cnn_dropout=0.3", "model.stl_dropout=0.0"])  # dropout may differ
    data = _data()
    with caplog.at_level(logging.INFO, logger="stlser.finetune"):
        module = module_for(cfg, data, data.train[1], finetune.load_init(cfg, N_FEATURES))
    got, src = module.model.state_dict(), art["state_dict"]
    for name in ("blocks.0.conv.weight", "blocks.1.bn.running_var", "lstm.bwd.weight_hh_l0"):
        assert torch.equal(got[name], src[name]), name
    for i, label in enumerate(RUN_LABELS):
        if label in art["labels"]:
            j = art["labels"].index(label)
            assert torch.equal(got["classifier.weight"][i], src["classifier.weight"][j])
            assert torch.equal(got["classifier.bias"][i], src["classifier.bias"][j])
    fresh = module_for(_cfg(None), data, data.train[1]).model.state_dict()
    assert torch.equal(got["classifier.weight"][1], fresh["classifier.weight"][1])  # new: fear
    assert not torch.equal(got["blocks.0.conv.weight"], fresh["blocks.0.conv.weight"])
    n_tensors = len([k for k in src if not k.startswith("classifier.")])
    assert f"{n_tensors} tensors" in caplog.text
    assert "mapped ['sad', 'angry'], new ['fear']" in caplog.text


def test_incompatible_init_names_the_keys(tmp_path):
    from stlser import finetune

    path, _ = _source(tmp_path, d_lstm=6)
    with pytest.raises(ValueError, match=r"model\.d_lstm 6 \(init\) != 8 \(this run\)"):
        finetune.load_init(_cfg(path), N_FEATURES)
    path, _ = _source(tmp_path)
    with pytest.raises(ValueError, match=r"features\.n_mels 40 \(init\) != 32 \(this run\)"):
        finetune.load_init(_cfg(path, ["features.n_mels=32"]), 32)
    with pytest.raises(ValueError, match=r"features\.kind logmel \(init\) != mfcc"):
        finetune.load_init(_cfg(path, ["features.kind=mfcc"]), N_FEATURES)


def test_base_init_with_kind_network_is_refused(tmp_path, one_torch_thread):
    from stlser.training import train_fold

    with pytest.raises(ValueError, match=r"not a network model.*model\.kind=expert"):
        train_fold(_cfg("base"), _data(), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_freeze_epochs_holds_the_front_end_then_trains_it(tmp_path, one_torch_thread):
    from lightning.pytorch.callbacks import Callback

    from stlser.training import train_fold

    path, art = _source(tmp_path)
    snaps: list[dict[str, torch.Tensor]] = []

    class Snap(Callback):
        def _take(self, pl_module) -> None:
            snaps.append({k: v.detach().clone() for k, v in pl_module.model.named_parameters()})

        def on_train_start(self, trainer, pl_module) -> None:
            self._take(pl_module)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._take(pl_module)

    cfg = _cfg(path, ["train.freeze_epochs=1"])
    train_fold(cfg, _data(), tmp_path / "run", callbacks=lambda stage: [Snap()])
    assert len(snaps) == 3  # start, after epoch 1, after epoch 2
    start, one, two = snaps
    front = [k for k in start if k.startswith("blocks.")]
    rest = [k for k in start if not k.startswith("blocks.")]
    assert front and rest
    for k in front:  # epoch 1: frozen, still the init weights
        assert torch.equal(one[k], start[k]) and torch.equal(one[k], art["state_dict"][k]), k
    assert all(
        not torch.equal(one[k], start[k]) for k in ("lstm.fwd.weight_ih_l0", "classifier.weight")
    )
    assert all(not torch.equal(two[k], one[k]) for k in front)  # epoch 2: trained again


def test_fingerprint_follows_the_init_file_content(tmp_path):
    """Resuming after the pretrained file changed is a different run, though its name is not."""
    import pandas as pd

    from stlser import fingerprint

    path = make_artefact(tmp_path / "init.pt", **TINY)
    df = pd.DataFrame({"utt_id": ["a"], "label": ["sad"], "speaker": ["s"]})
    before = fingerprint.compute(_cfg(path), df, [])
    make_artefact(path, seed=1, **TINY)
    after = fingerprint.compute(_cfg(path), df, [])
    assert fingerprint.differences(before, after) and str(path) in after["config"]["model.init"]
