"""ONNX export (front end and normalisation inside) and the torch-free runtime: graph checks,
metadata, torch/onnxruntime parity at several lengths and batch sizes, same API as Recognizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from stlser.cli import main  # noqa: E402
from stlser.export import export_onnx  # noqa: E402
from stlser.inference import Recognizer  # noqa: E402
from stlser.kinds.network import Pipeline  # noqa: E402
from stlser.model import count_parameters  # noqa: E402
from stlser.onnx_runtime import OnnxRecognizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_inference import LABELS, SR, burst_track, make_artefact, noise, voiced  # noqa: E402

# the module's fixture exports the network once (~90 s on a 2-core host): make test < 10 min;
# CI runs these in slow-checks
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(model.pt, model.onnx), exported once for the module with the default exporter."""
    d = tmp_path_factory.mktemp("export")
    pt = make_artefact(d / "model.pt", seed=3)
    out = export_onnx(pt, d / "model.onnx")
    return pt, out


@pytest.fixture(scope="module")
def pipeline(exported) -> Pipeline:
    return Pipeline.from_artefact(exported[0])


@pytest.fixture(scope="module")
def ort_rec(exported) -> OnnxRecognizer:
    return OnnxRecognizer(exported[1], threads=1)


def batch(seconds: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like clips of the given lengths, right-padded with garbage-free zeros."""
    waves = [
        voiced(s, f0=100 + 50 * i, seed=seed + i) + noise(s, 0.02, seed + i)
        for i, s in enumerate(seconds)
    ]
    n = max(len(w) for w in waves)
    x = np.zeros((len(waves), n), np.float32)
    for i, w in enumerate(waves):
        x[i, : len(w)] = w
    return x, np.array([len(w) for w in waves], np.int64)


def test_graph_is_valid_with_dynamic_axes_and_metadata(exported, pipeline):
    m = onnx.load(str(exported[1]))
    onnx.checker.check_model(m)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*m.graph.input, *m.graph.output]
    }
    assert isinstance(dims["wave"][0], str) and isinstance(dims["wave"][1], str)
    assert dims["lengths"] == [dims["wave"][0]]
    assert dims["probs"] == [dims["wave"][0], 4]
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["labels"]) == LABELS
    assert meta["sample_rate"] == "16000"
    assert int(meta["n_params"]) == count_parameters(pipeline.model) > 100_000
    assert json.loads(meta["feature_config"])["n_mels"] == 40
    assert meta["stlser_version"] and meta["normalizer_mode"] == "global"
    ops = {n.op_type for n in m.graph.node}
    assert "Conv" in ops and "LSTM" in ops and "STFT" not in ops


@pytest.mark.parametrize("seconds", [[0.5], [3.0], [17.0], [0.5, 3.0, 17.0], [3.0, 0.5, 1.7]])
def test_onnxruntime_matches_torch(exported, pipeline, ort_rec, seconds):
    wave, lengths = batch(seconds, seed=len(seconds))
    with torch.inference_mode():
        ref = pipeline(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()
    got = ort_rec.session.run(["probs"], {"wave": wave, "lengths": lengths})[0]
    assert got.shape == (len(seconds), 4)
    assert np.abs(got - ref).max() < 1e-4
    # a padded batch equals each clip alone in onnxruntime too
    for i, n in enumerate(lengths):
        alone = ort_rec.session.run(
            ["probs"], {"wave": wave[i : i + 1, :n], "lengths": lengths[i : i + 1]}
        )[0]
        assert np.abs(alone[0] - got[i]).max() < 1e-5


def test_onnx_recognizer_has_the_same_api(exported, ort_rec, tmp_path):
    rec = Recognizer.load(exported[0])
    via_load = Recognizer.load(exported[1])
    assert isinstance(via_load, OnnxRecognizer)
    assert ort_rec.labels == rec.labels == LABELS and ort_rec.sample_rate == 16_000
    wav = tmp_path / "clip.wav"
    sf.write(wav, voiced(2.3) + noise(2.3, 0.01, 5), SR)
    a, b = rec.predict(wav), ort_rec.predict(wav)
    assert a.label == b.label and a.duration == b.duration
    assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in LABELS) < 1e-4
    x, _ = batch([0.4, 2.0, 5.0])
    inputs = [x[0, :6400], x[1, : 2 * SR], x[2]]
    pa = rec.predict_batch(inputs, sample_rate=SR)
    pb = ort_rec.predict_batch(inputs, batch_size=2, sample_rate=SR)
    assert [p.label for p in pa] == [p.label for p in pb]
    assert (
        max(
            abs(p.probabilities[k] - q.probabilities[k])
            for p, q in zip(pa, pb, strict=True)
            for k in LABELS
        )
        < 1e-4
    )
    track, bursts = burst_track(25.0, seed=4)
    sa, sb = rec.segments(track, sample_rate=SR), ort_rec.segments(track, sample_rate=SR)
    assert len(sa) == len(sb) == len(bursts)
    assert [(s.start, s.end) for s in sa] == [(s.start, s.end) for s in sb]
    ta = list(rec.stream([track[: 5 * SR]], SR))
    tb = list(ort_rec.stream([track[: 5 * SR]], SR))
    assert (
        max(
            abs(p.probabilities[k] - q.probabilities[k])
            for p, q in zip(ta, tb, strict=True)
            for k in LABELS
        )
        < 1e-4
    )


def test_runtime_is_torch_free(exported, tmp_path):
    wav = tmp_path / "clip.wav"
    sf.write(wav, voiced(1.5), SR)
    code = (
        "import sys\n"
        "from stlser.onnx_runtime import OnnxRecognizer\n"
        f"r = OnnxRecognizer({str(exported[1])!r})\n"
        f"p = r.predict({str(wav)!r})\n"
        "s = r.segments(open(%r, 'rb').read())\n"
        "print(p.label in r.labels, len(s), 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    ) % str(wav)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "1", "False", "False"], out.stdout + out.stderr


def test_cli_predict_with_onnx_model(exported, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, voiced(1.0), SR)
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(exported[1]), str(wav), "-o", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["label"] in LABELS and abs(sum(row[f"prob_{k}"] for k in LABELS) - 1) < 1e-4


def test_legacy_torchscript_exporter_is_also_exact(tmp_path):
    """The TorchScript exporter (dynamic_axes) gives the same numbers; small model for speed."""
    pt = make_artefact(
        tmp_path / "small.pt",
        seed=1,
        channels=[8, 16, 16, 24],
        pool_time=[2, 2, 2, 2],
        pool_freq=[2, 2, 2, 1],
        d_lstm=8,
        stl_layers=2,
        stl_heads=2,
        stl_ff=32,
    )
    out = export_onnx(pt, tmp_path / "small.onnx", dynamo=False)
    pipe = Pipeline.from_artefact(pt)
    rec = OnnxRecognizer(out, threads=1)
    for seconds in ([0.5], [17.0, 3.0, 0.5]):
        wave, lengths = batch(seconds)
        with torch.inference_mode():
            ref = pipe(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()
        got = rec.session.run(["probs"], {"wave": wave, "lengths": lengths})[0]
        assert np.abs(got - ref).max() < 1e-4
    assert rec.meta["exporter"] == "torchscript"
