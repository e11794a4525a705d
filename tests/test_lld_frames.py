"""The network on stlser's own descriptor frames (``features.kind: lld``): the config, the frames
(the descriptors of the functional front end, per frame), one tiny crossval through model.pt,
the Recognizer and the ONNX export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stlser import config
from stlser.config import N_LLD, ConfigError, FeatureConfig
from stlser.features import frontend
from stlser.features.descriptors import Descriptors
from stlser.testing import speechlike
from tests.test_levers import tiny_run


def test_lld_config_is_checked_and_sized():
    assert len(Descriptors().names) == N_LLD == FeatureConfig(kind="lld").n_features
    FeatureConfig(kind="lld").check()
    for bad in ({"hop_ms": 20.0}, {"win_ms": 30.0}, {"sample_rate": 8000}):
        with pytest.raises(ConfigError, match="kind=lld"):
            FeatureConfig(kind="lld", **bad).check()
    with pytest.raises(ConfigError, match="deltas needs kind logmel or mfcc"):
        FeatureConfig(kind="lld", deltas=True).check()
    with pytest.raises(ConfigError, match="train.freq_warp"):
        config.load(None, ["features.kind=lld", "train.freq_warp=0.1"])


def test_lld_frames_are_the_descriptors_of_the_clip():
    x = speechlike(1.3, seed=1)
    cfg = FeatureConfig(kind="lld")
    got = frontend.compute(x, cfg)
    lld, frames, _ = Descriptors()(torch.from_numpy(x)[None], torch.tensor([len(x)]))
    assert got.shape == (frontend.n_frames(len(x), cfg), N_LLD) == (int(frames[0]), N_LLD)
    np.testing.assert_array_equal(got, lld[0].numpy())
    assert np.abs(got).sum() > 0 and np.isfinite(got).all()
    # the cache folder of lld frames is apart from log-mel's and follows the front end's version
    key = frontend.feature_key_config(cfg)
    assert key["kind"] == "lld" and "frontend_version" in key


@pytest.fixture(scope="module")
def lld_run(synth_corpus, tmp_path_factory):
    """One fold (two training speakers), two epochs, tiny network on lld frames."""
    return tiny_run(synth_corpus, tmp_path_factory.mktemp("lld"), ["features.kind=lld"])


def test_network_on_lld_frames_trains_and_predicts_as_scored(lld_run):
    from stlser.inference import Recognizer
    from stlser.results import RunReport

    run, cache = lld_run
    rep = RunReport.load(run / "report.json")
    assert rep.n == 24 and 0 <= rep.ua <= 1
    art = torch.load(run / "fold_00" / "model.pt", weights_only=True)
    assert art["n_features"] == N_LLD and art["feature_config"]["kind"] == "lld"
    rec = Recognizer.load(run / "fold_00" / "model.pt")
    clip = pd.read_csv(run / "manifest.csv")["path"].iloc[0]
    pred = rec.predict(clip)
    assert pred.label in rec.labels and abs(sum(pred.probabilities.values()) - 1) < 1e-5
    # the recognizer's front end gives the frames training read from the feature cache
    from stlser.audio import load
    from stlser.features.cache import FeatureCache

    cached = FeatureCache(cache, FeatureConfig(kind="lld")).get_or_compute(clip)
    wave = torch.from_numpy(load(clip, sr=16000))[None]
    with torch.inference_mode():
        frames, n = rec.pipeline.front_end(wave, torch.tensor([wave.shape[1]]))
    np.testing.assert_allclose(frames[0, : int(n[0])].numpy(), cached, atol=1e-5)


def test_network_on_lld_frames_exports_to_one_graph(lld_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from stlser.export import export_onnx
    from stlser.inference import Recognizer
    from stlser.onnx_runtime import OnnxRecognizer

    pt = lld_run[0] / "fold_00" / "model.pt"
    ort = OnnxRecognizer(export_onnx(pt, tmp_path / "m.onnx", dynamo=False), threads=1)
    rec = Recognizer.load(pt)
    for seconds in (0.5, 3.0):
        x = speechlike(seconds, seed=3)
        wave, lengths = x[None], np.array([len(x)])
        with torch.inference_mode():
            ref = rec.pipeline(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()
        got = ort.session.run(["probs"], {"wave": wave, "lengths": lengths})[0]
        assert np.abs(got - ref).max() < 1e-4, seconds
