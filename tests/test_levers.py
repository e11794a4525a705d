"""The network's training levers, all off by default: crop training with window averaging,
Δ/ΔΔ input, the speaker-adversarial head, label smoothing; and one tiny crossval with every
lever on, through model.pt, the Recognizer and the ONNX export."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from stlser import config

TINY = [
    "model.channels=[4,8]",
    "model.pool_time=[2,2]",
    "model.pool_freq=[2,2]",
    "model.d_lstm=8",
    "model.stl_layers=1",
    "model.stl_heads=2",
    "model.stl_ff=16",
]
LEVERS = [
    "train.crop_seconds=0.8",
    "train.crops_per_utterance=2",
    "features.deltas=true",
    "model.speaker_adversarial=0.5",
    "train.label_smoothing=0.1",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest.one_torch_thread)."""


def _tiny_model(n_features: int = 40, channels: int = 1, seed: int = 0):
    from stlser.model import STLSER

    torch.manual_seed(seed)
    return STLSER(config.load(None, TINY).model, n_features, 4, channels).eval()


def _padded(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), width)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, width, generator=g)
    return x, torch.tensor(lengths)


# ------------------------------------------------------------------------------- config
def test_levers_are_off_by_default_and_checked():
    from stlser.config import FeatureConfig
    from stlser.features import FeatureCache, feature_key_config

    for cfg in (config.load(None), config.load("paper_emodb_loso.yaml")):
        assert cfg.train.crop_seconds == 0 and cfg.train.crops_per_utterance == 1
        assert cfg.features.deltas is False and cfg.features.input_channels == 1
        assert cfg.model.speaker_adversarial == 0 and cfg.train.label_smoothing == 0
    for bad in (
        "train.crop_seconds=-1",
        "train.crops_per_utterance=0",
        "model.speaker_adversarial=-0.1",
        "train.label_smoothing=1.0",
    ):
        with pytest.raises(ValueError, match=bad.split("=")[0].split(".")[1]):
            config.load(None, [bad])
    with pytest.raises(ValueError, match="deltas needs kind logmel or mfcc"):
        config.load(None, ["features.kind=egemaps", "features.deltas=true"])
    # the flag is in the feature cache key, and configs without it keep their old key
    plain, with_d = FeatureConfig(), FeatureConfig(deltas=True)
    assert "deltas" not in feature_key_config(plain)
    assert feature_key_config(with_d)["deltas"] is True
    assert FeatureCache("c", plain).config_hash != FeatureCache("c", with_d).config_hash
    assert with_d.n_features == 120 and FeatureConfig(kind="mfcc", deltas=True).n_features == 120


# ------------------------------------------------------------------ crops and windows
def test_window_average_of_a_short_utterance_equals_the_full_pass():
    from stlser.model import predict
    from stlser.windows import window_probs

    model = _tiny_model()
    x, lengths = _padded([37, 80, 100], 40)
    with torch.no_grad():
        full = torch.softmax(model(x, lengths), -1)
        win = window_probs(model, x, lengths, crop=100)["probs"]
    torch.testing.assert_close(win, full, atol=1e-6, rtol=0)
    feats = [x[i, :n].numpy() for i, n in enumerate(lengths.tolist())]
    a, b = predict(model, feats, crop=100, embeddings=True), predict(model, feats, embeddings=True)
    for key in ("probs", "z0", "zL"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_windows_cover_the_utterance_at_half_overlap():
    from stlser.windows import crop_frames, n_windows, window_probs

    lengths = torch.tensor([1, 100, 101, 150, 151, 260])
    assert n_windows(lengths, 100).tolist() == [1, 1, 2, 2, 3, 5]
    assert crop_frames(0.8, config.FeatureConfig()) == 80 and crop_frames(0, None) == 0
    # a long clip in a padded batch: the mean of its windows, each run alone
    model = _tiny_model()
    x, lengths = _padded([260, 90], 40, seed=1)
    with torch.no_grad():
        got = window_probs(model, x, lengths, crop=100)["probs"]
        starts = [0, 50, 100, 150, 160]  # the last window ends at the clip's end
        alone = [torch.softmax(model(x[:1, s : s + 100], torch.tensor([100])), -1) for s in starts]
    torch.testing.assert_close(got[0], torch.cat(alone).mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(2))


def test_training_crops_are_seeded_by_epoch_and_index():
    from stlser.levers import TrainSet

    feats = [np.arange(50.0)[:, None], np.arange(300.0)[:, None]]
    ds = TrainSet(feats, [0, 1], crop=100, copies=2, seed=7)
    assert len(ds) == 4 and ds.lengths() == [50, 100, 50, 100]
    assert all(len(ds[(0, e)][0]) == 50 for e in range(5))  # shorter: used whole
    x, y = ds[(1, 3)]
    s = int(x[0, 0])
    assert y == 1 and len(x) == 100 and np.array_equal(x[:, 0], np.arange(s, s + 100))
    again = TrainSet(feats, [0, 1], crop=100, copies=2, seed=7)
    assert [again.start(1, e) for e in range(8)] == [ds.start(1, e) for e in range(8)]
    assert len({ds.start(1, e) for e in range(8)}) > 1  # new crops each epoch
    assert any(ds.start(1, e) != ds.start(3, e) for e in range(8))  # copies differ
    with_spk = TrainSet(feats, [0, 1], speakers=[4, 5])
    assert with_spk[1][2] == 5 and len(with_spk[1][0]) == 300


# ----------------------------------------------------------------------------- deltas
def test_deltas_of_a_linear_ramp_are_constant():
    from stlser.config import FeatureConfig
    from stlser.features.frontend import LogMel, deltas

    t = torch.arange(30, dtype=torch.float32)[:, None]
    slope = torch.tensor([0.5, -2.0, 0.0])
    ramp = (3.0 + t * slope)[None]  # [1, 30, 3]
    d1 = deltas(ramp, torch.tensor([30]))
    torch.testing.assert_close(d1, slope.expand(1, 30, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        deltas(d1, torch.tensor([30])), torch.zeros(1, 30, 3), atol=1e-5, rtol=0
    )
    # within a padded batch a clip's deltas use its own frames only
    x, lengths = _padded([30, 12], 5)
    alone = deltas(x[1:, :12], torch.tensor([12]))
    torch.testing.assert_close(deltas(x, lengths)[1:, :12], alone)
    # the front end appends [Δ | ΔΔ] to the log-mel it gives without deltas
    wave = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    base, frames = LogMel(FeatureConfig(), fft=True)(wave)
    full, frames_d = LogMel(FeatureConfig(deltas=True), fft=True)(wave)
    assert full.shape == (1, base.shape[1], 120) and torch.equal(frames, frames_d)
    torch.testing.assert_close(full[..., :40], base)
    torch.testing.assert_close(full[..., 40:80], deltas(base, frames))


def test_delta_planes_are_augmented_consistently():
    from stlser import augment

    g = torch.Generator().manual_seed(0)
    x, lengths = torch.randn(2, 20, 3 * 8, generator=g), torch.tensor([20, 20])
    y = augment.random_gain(x, g, 6.0, 0.3, width=8)  # level: the static plane only
    assert not torch.equal(y[..., :8], x[..., :8]) and torch.equal(y[..., 8:], x[..., 8:])
    masked = augment.spec_augment(x, lengths, g, f_max=3, channels=3).reshape(2, 20, 3, 8) == 0
    assert masked.any() and (masked == masked[:, :, :1]).all()  # the same bands in every plane
    warped = augment.random_freq_warp(x, torch.Generator().manual_seed(2), 0.2, channels=3)
    alpha = 1.0 + (torch.rand(2, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.2
    planes = x.reshape(2, 20, 3, 8)
    for c in range(3):
        ref = augment.freq_warp(planes[:, :, c], alpha)
        torch.testing.assert_close(warped.reshape(2, 20, 3, 8)[:, :, c], ref)


def test_delta_model_reads_three_input_channels():
    from stlser.model import STLSER

    model = _tiny_model(120, channels=3)
    assert model.blocks[0].conv.weight.shape[1] == 3
    x, lengths = _padded([40, 25], 120)
    with torch.no_grad():
        batch = model(x, lengths)
        alone = model(x[1:, :25], lengths[1:])
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="do not split"):
        STLSER(config.load(None, TINY).model, 100, 4, 3)


# ------------------------------------------------------------- adversarial, smoothing
def test_gradient_reversal_flips_and_scales_the_gradient():
    from stlser.levers import grad_reverse

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    z = torch.randn(5, 6, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    F.cross_entropy(head(z), y).backward()
    plain = z.grad.clone()
    z.grad = None
    out = grad_reverse(z, 0.3)
    assert torch.equal(out, z)
    F.cross_entropy(head(out), y).backward()
    torch.testing.assert_close(z.grad, -0.3 * plain)


def test_label_smoothing_and_speaker_head_live_in_the_training_module():
    from stlser.config import NetworkConfig, TrainConfig
    from stlser.training import SERModule

    mc = asdict(config.load(None, [*TINY, "model.speaker_adversarial=0.5"]).model)
    m = SERModule(mc, 40, ["a", "b", "c"], asdict(TrainConfig(label_smoothing=0.2)), n_speakers=4)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(m._loss(logits, y), F.cross_entropy(logits, y, label_smoothing=0.2))
    assert m.speaker_head.out_features == 4
    assert not any("speaker" in k for k in m.model.state_dict())  # what model.pt saves
    off = SERModule(asdict(NetworkConfig(**{**mc, "speaker_adversarial": 0.0})), 40, ["a"], {})
    assert off.speaker_head is None


# ------------------------------------------------------------------ all levers, end to end
def tiny_run(corpus, tmp, overrides: list[str]):
    """Crossval of one LOSO fold (two training speakers), two epochs, tiny network, with
    `overrides` → (run folder, cache folder)."""
    from stlser import driver

    cfg = config.load(
        None,
        [
            f"data.root={corpus}",
            "data.corpus=synth",
            f"cache_dir={tmp / 'cache'}",
            "split.folds=[0]",
            "train.max_epochs=2",
            "train.batch_size=16",
            "train.progress=false",
            *TINY,
            *overrides,
        ],
    )
    return driver.crossval(cfg, tmp / "run"), tmp / "cache"


@pytest.fixture(scope="module")
def lever_run(synth_corpus, tmp_path_factory):
    """One LOSO fold, two epochs, tiny network, every lever on."""
    return tiny_run(synth_corpus, tmp_path_factory.mktemp("levers"), LEVERS)


def test_every_lever_on_trains_reports_and_predicts(lever_run, synth_corpus):
    from stlser import driver
    from stlser.inference import Recognizer
    from stlser.results import RunReport

    run, cache = lever_run
    rep = RunReport.load(run / "report.json")
    assert rep.n == 24 and 0 <= rep.ua <= 1
    log = pd.read_csv(run / "fold_00" / "logs" / "metrics.csv")
    assert np.isfinite(log["train_speaker_loss"].dropna()).all()
    fold = json.loads((run / "fold_00" / "fold.json").read_text())
    steps = log["step"].max() + 1  # 2 epochs of 2 copies of the training utterances
    assert steps == 2 * -(-2 * fold["train_utterances"] // 16)
    art = torch.load(run / "fold_00" / "model.pt", weights_only=True)
    assert art["inference"] == {"crop_seconds": 0.8} and art["n_features"] == 120
    assert not any("speaker" in k for k in art["state_dict"])  # the head is training-only
    rec = Recognizer.load(run / "fold_00" / "model.pt")
    assert rec.pipeline.crop == 80
    clip = pd.read_csv(run / "manifest.csv")["path"].iloc[0]
    pred = rec.predict(clip)
    assert pred.label in rec.labels and abs(sum(pred.probabilities.values()) - 1) < 1e-5
    # scoring the artefact again (evaluate: cached features, window averaging) = crossval
    ev = driver.evaluate(
        run / "fold_00" / "model.pt", run / "manifest.csv", run / "ev", cache_dir=str(cache)
    )
    a = pd.read_csv(run / "predictions.csv").set_index("utt_id")
    b = pd.read_csv(ev / "predictions.csv").set_index("utt_id").loc[a.index]
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(b[probs].to_numpy(), a[probs].to_numpy(), atol=1e-5)


def test_every_lever_on_exports_to_onnx(lever_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from stlser.export import export_onnx
    from stlser.inference import Recognizer
    from stlser.onnx_runtime import OnnxRecognizer

    pt = lever_run[0] / "fold_00" / "model.pt"
    # the legacy exporter (seconds); the default torch.export one gives the same graph, slower
    ort = OnnxRecognizer(export_onnx(pt, tmp_path / "m.onnx", dynamo=False), threads=1)
    assert json.loads(ort.meta["windows"]) == {"crop_frames": 80, "hop_frames": 40}
    rec = Recognizer.load(pt)
    rng = np.random.default_rng(0)
    lengths = np.array([9_600, 43_200])  # 0.6 s (one window) and 2.7 s (six windows)
    wave = np.zeros((2, lengths.max()), np.float32)
    for i, n in enumerate(lengths):
        wave[i, :n] = 0.1 * rng.standard_normal(n)
    with torch.inference_mode():
        ref = rec.pipeline(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()
    got = ort.session.run(["probs"], {"wave": wave, "lengths": lengths})[0]
    assert np.abs(got - ref).max() < 1e-5
    for i, n in enumerate(lengths):
        alone = ort.session.run(
            ["probs"], {"wave": wave[i : i + 1, :n], "lengths": lengths[i : i + 1]}
        )
        assert np.abs(alone[0][0] - ref[i]).max() < 1e-5
    p_ort, p_torch = ort.predict(wave[1], 16_000), rec.predict(wave[1], 16_000)
    assert p_ort.label == p_torch.label
