"""The general model shipped inside the package (`make pretrained`, docs/model_card.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from stlser import testing
from stlser.recognizer import shipped_model

CARD = Path(__file__).resolve().parents[1] / "docs" / "model_card.md"


def test_shipped_files_match_the_model_card():
    card = CARD.read_text()
    for suffix in (".pt", ".onnx"):
        p = shipped_model("base", suffix)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        assert digest in card, f"{p.name}: sha256 {digest} is not the one in {CARD.name}"
        assert p.stat().st_size < 10 * 1024 * 1024


def test_default_recognizer_loads_and_predicts_deterministically():
    from stlser.inference import Recognizer
    from stlser.kinds.functionals import FunctionalsRecognizer as ExpertRecognizer

    rec = Recognizer.load()
    assert isinstance(rec, ExpertRecognizer) and rec.labels == Recognizer.load("base").labels
    assert {"angry", "happy", "neutral", "sad"} <= set(rec.labels)
    clip = testing.tone(1.8, freq=210, harmonics=4, am_hz=4, noise=0.01)
    a, b = rec.predict(clip, 16000), rec.predict(clip, 16000)
    assert a.probabilities == b.probabilities
    onnx = Recognizer.load(shipped_model("base", ".onnx"))
    c = onnx.predict(clip, 16000)
    assert c.label == a.label
    assert max(abs(a.probabilities[k] - c.probabilities[k]) for k in a.probabilities) < 1e-4


def test_the_shipped_model_answers_alike_at_any_playback_volume():
    """The general model reads functionals relative to each clip's level and ignores the ones a
    gain moves (`model.level: drop`): a clip with digital-silence pauses and its copies 20 and
    40 dB quieter and 6 dB louder get the same answer with the same probabilities to 0.005."""
    from stlser.inference import Recognizer
    from stlser.kinds import expert

    assert expert.from_artefact(shipped_model("base", ".pt"))[1]["model_config"]["level"] == "drop"
    rec = Recognizer.load()
    for seed, freq in ((0, 140), (1, 230)):
        tone = testing.tone(1.0, freq=freq, harmonics=5, am_hz=3, noise=0.003, seed=seed)
        clip = np.concatenate([tone, np.zeros(5000, np.float32), tone[:8000], np.zeros(3000)])
        a = rec.predict(clip, 16000)
        for gain in (0.1, 0.01, 2.0):
            b = rec.predict(gain * clip, 16000)
            assert b.label == a.label
            assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 5e-3


def test_predict_without_model_and_with_label_subset(tmp_path, capsys):
    import soundfile as sf

    from stlser.cli import main

    wav = tmp_path / "clip.wav"
    sf.write(str(wav), testing.tone(1.5, freq=240, harmonics=3, am_hz=3), 16000)
    assert main(["predict", str(wav), "-o", str(tmp_path / "p.csv")]) == 0
    head = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert "prob_angry" in head and "prob_surprise" in head
    four = "angry,happy,neutral,sad"
    assert main(["predict", str(wav), "--labels", four, "-o", str(tmp_path / "q.csv")]) == 0
    lines = (tmp_path / "q.csv").read_text().splitlines()
    probs = [c for c in lines[0].split(",") if c.startswith("prob_")]
    assert probs == [f"prob_{x}" for x in four.split(",")]
    row = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    assert abs(sum(float(row[p]) for p in probs) - 1) < 1e-4 and row["label"] in four
    capsys.readouterr()
    assert main(["predict", str(wav), "--labels", "calm"]) == 2
    assert re.search("calm", capsys.readouterr().err)


def test_service_without_model_serves_the_shipped_model():
    from fastapi.testclient import TestClient

    from stlser.service import create_app

    with TestClient(create_app(None), base_url="http://127.0.0.1") as c:
        labels = c.get("/labels").json()["labels"]
        assert {"angry", "happy", "neutral", "sad"} <= set(labels)
        wav = testing.wav_bytes(testing.tone(1.2, freq=230, harmonics=3, am_hz=3))
        r = c.post("/predict", files={"file": ("a.wav", wav, "audio/wav")})
        assert r.status_code == 200 and r.json()["label"] in labels
