"""The expert-feature recognizer (stlser.expert): fitting, crossval, artefact, predict, ONNX,
service."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stlser import config, expert, testing


def test_fit_head_separates_and_is_deterministic():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 20)) + 3.0 * np.eye(3, 20)[y]
    a = expert.fit_head(expert.Head(20, 3), X, y, l2=1e-2)
    b = expert.fit_head(expert.Head(20, 3), X, y, l2=1e-2)
    with torch.no_grad():
        lp = a(torch.as_tensor(X, dtype=torch.float32))
        assert torch.equal(lp, b(torch.as_tensor(X, dtype=torch.float32)))
    assert (lp.argmax(1).numpy() == y).mean() > 0.95
    # a stronger L2 shrinks the weights
    c = expert.fit_head(expert.Head(20, 3), X, y, l2=10.0)
    assert c.linear.weight.norm() < a.linear.weight.norm()


def test_heads_average_log_probabilities():
    torch.manual_seed(0)
    m = expert.ExpertModel([4, 6], 3).eval()
    z = torch.randn(5, 10)
    lp = m.log_probs(z)
    want = (m.heads[0](z[:, :4]) + m.heads[1](z[:, 4:])) / 2
    assert torch.allclose(lp, want)
    # forward applies the stored global normalisation, then normalises the average
    m.mean.fill_(1.0)
    m.std.fill_(2.0)
    x = torch.randn(5, 10)
    assert torch.allclose(m(x), torch.softmax(m.log_probs((x - 1.0) / 2.0), -1))
    assert torch.allclose(m(x).sum(1), torch.ones(5))


def test_unknown_functional_set_is_refused():
    with pytest.raises(ValueError, match="model.functionals"):
        expert.set_dims(["egemaps", "mfcc"])
    with pytest.raises(ValueError, match="model.kind"):
        config.load(None, ["model.kind=svm"])


@pytest.fixture(scope="module")
def expert_run(synth_corpus, tmp_path_factory):
    from stlser import experiments

    out = tmp_path_factory.mktemp("expert")
    cfg = config.load(
        "recommended.yaml",
        [
            "data.corpus=synth",
            f"data.root={synth_corpus}",
            "split.val_speakers=1",
            f"cache_dir={out / 'cache'}",
            "train.progress=false",
        ],
    )
    return experiments.crossval(cfg, out / "run")


def test_crossval_writes_report_and_artefacts(expert_run):
    from stlser.results import RunReport

    rep = RunReport.load(expert_run / "report.json")
    assert len(rep.folds) == 4 and rep.speaker_independent
    assert rep.extra["system"] == expert.SYSTEM
    assert rep.ua > 0.5  # 4 classes of strongly different synthetic prosody; chance 0.25
    fold = json.loads((expert_run / "fold_00" / "fold.json").read_text())
    assert len(fold["l2"]) == 2 and fold["val_speakers"]
    model, art = expert.from_artefact(expert_run / "fold_00" / "model.pt")
    assert art["format"] == expert.FORMAT and model.dims == [88, 6373]


def test_recognizer_onnx_and_service_agree(expert_run, tmp_path):
    from fastapi.testclient import TestClient

    from stlser.export import export_onnx
    from stlser.inference import ExpertRecognizer, Recognizer
    from stlser.service import create_app

    rec = Recognizer.load(expert_run / "fold_00" / "model.pt")
    assert isinstance(rec, ExpertRecognizer)
    clips = [testing.tone(s, freq=f, harmonics=4, am_hz=4) for s, f in ((1.2, 180), (2.3, 260))]
    p1 = rec.predict_batch(clips, sample_rate=16000)
    p2 = rec.predict_batch(clips, sample_rate=16000)
    assert [a.probabilities for a in p1] == [b.probabilities for b in p2]  # deterministic
    onnx_path = export_onnx(expert_run / "fold_00" / "model.pt", tmp_path / "m.onnx")
    orec = Recognizer.load(onnx_path)
    for a, b in zip(p1, orec.predict_batch(clips, sample_rate=16000), strict=True):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
    segs = rec.segments(np.concatenate([clips[1], np.zeros(16000, np.float32), clips[1]]), 16000)
    assert segs and all(s.label in rec.labels for s in segs)
    with TestClient(create_app(str(onnx_path)), base_url="http://127.0.0.1") as c:
        r = c.post("/predict", files={"file": ("a.wav", testing.wav_bytes(clips[0]), "audio/wav")})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == p1[0].label
