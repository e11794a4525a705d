"""stlser's own functional sets as the default recogniser's features: registry, the default path
without openSMILE, the clear error for openSMILE sets without the extra, and the one ONNX graph
from waveform to probabilities (with optional speaker statistics)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from stlser import config, featuresets
from stlser.features.functionals import FunctionalFrontEnd
from stlser.testing import speechlike


def test_registry_dims_are_the_front_ends():
    for name, dim in featuresets.OWN_SETS.items():
        assert FunctionalFrontEnd(name).dims == [dim]
    assert featuresets.dims(["compact", "egemaps", "large"]) == [96, 88, 4282]
    assert featuresets.own_groups(["compact", "large", "egemaps", "medium"]) == [
        ["compact", "large"],
        ["egemaps"],
        ["medium"],
    ]
    with pytest.raises(ValueError, match="functional sets must be named"):
        featuresets.dims(["compact", "nope"])


def test_the_default_recipe_reads_own_sets_only():
    for name in ("recommended.yaml", "pretrain.yaml", "emodb_loso.yaml", None):
        sets = config.load(name, ["model.kind=expert"] if name is None else []).model.functionals
        assert all(featuresets.is_own(s) for s in sets), (name, sets)
    assert not any(featuresets.is_own(s) for s in config.load("opensmile.yaml").model.functionals)


def test_matrix_of_own_sets_is_one_pass_and_cached(synth_corpus, tmp_path):
    from stlser import corpora
    from stlser.kinds import functionals

    df = corpora.build_manifest("synth", synth_corpus)[0].head(5)
    X = functionals.load_matrix(df, ["compact", "large"], str(tmp_path), progress=False)
    assert X.shape == (5, 96 + 4282) and np.isfinite(X).all()
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(entries) == 1  # one cache entry per clip holds both sets
    again = functionals.load_matrix(df, ["large"], str(tmp_path / "other"), progress=False)
    assert np.array_equal(again, X[:, 96:])  # the same numbers computed alone


@pytest.mark.parametrize("name", ["compact+large", "compact+large/relative"])
def test_cache_batches_give_each_clip_its_numbers_alone(name):
    """The cache computes clips of one padded length together; a clip's values must not depend
    on its batch (nor on whether it has a voiced frame at all: the silent clip)."""
    from stlser.features.functionals import clip_functionals, clips_functionals, padded_length

    waves = [speechlike(s, seed) for seed, s in enumerate((0.3, 0.31, 0.9, 1.0, 1.05, 2.2))]
    waves.append(np.zeros(4100, np.float32))
    assert len({padded_length(len(w)) for w in waves}) < len(waves)  # some share a batch
    together = clips_functionals(waves, name)
    for w, row in zip(waves, together, strict=True):
        assert np.array_equal(clip_functionals(w, name), row)
        assert np.isfinite(row).all()


def test_voiced_only_descriptors_skip_unvoiced_frames_exactly(monkeypatch):
    """In eager mode jitter and formants are computed on voiced frames only; an exported graph
    computes every frame and masks: the two agree exactly."""
    from stlser.features import voice

    torch.manual_seed(0)
    keep = torch.rand(2, 9) > 0.5
    keep[1] = False  # a clip without any voiced frame
    x = torch.randn(2, 9, 5)

    def fn(a: torch.Tensor) -> torch.Tensor:
        return a.cumsum(-1) * 2.0

    eager = voice.on_frames(fn, keep, x)
    assert torch.equal(eager, fn(x) * keep.unsqueeze(-1))
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(voice.on_frames(fn, keep, x), eager)


DEFAULT_PATH_WITHOUT_OPENSMILE = """
import sys
sys.modules["opensmile"] = None  # not importable, as on a default install
from pathlib import Path
from stlser import config, driver, featuresets
from stlser.config import ConfigError
from stlser.inference import Recognizer
from stlser import testing

root, out = Path(sys.argv[1]), Path(sys.argv[2])
over = [
    "data.corpus=synth", f"data.root={root}", "split.val_speakers=1", f"cache_dir={out / 'cache'}",
    "train.progress=false", "train.jobs=1", "model.speeds=[]", "split.folds=[0]",
]
run = driver.crossval(config.load("recommended.yaml", over), out / "run")
rec = Recognizer.load(run / "fold_00" / "model.pt")
p = rec.predict(testing.tone(1.5, freq=200, harmonics=4, am_hz=4), sample_rate=16000)
assert p.label in rec.labels, p
try:
    config.load("opensmile.yaml", over)
except ConfigError as e:
    assert "stlser[opensmile]" in str(e) and "model.functionals" in str(e), e
else:
    raise AssertionError("an openSMILE config loaded without openSMILE")
try:
    featuresets.require_opensmile("functional set 'egemaps'")
except featuresets.MissingExtraError as e:
    assert "non-commercial" in str(e)
else:
    raise AssertionError("no error")
print("OK", p.label)
"""


def test_default_path_runs_without_opensmile(synth_corpus, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", DEFAULT_PATH_WITHOUT_OPENSMILE, str(synth_corpus), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    assert "opensmile" not in r.stderr.lower() or "stlser[opensmile]" in r.stderr


def test_cli_names_the_extra_before_any_work(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opensmile"] = None
        from stlser.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-c", code, "baseline", "--config", "emodb_loso.yaml", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "stlser[opensmile]" in r.stderr and not out.exists()


@pytest.mark.slow
def test_one_onnx_graph_from_waveform_with_optional_speaker_statistics(synth_corpus, tmp_path):
    """Expert model over own sets → one graph (wave, lengths[, stats_mean, stats_std] → probs),
    run by onnxruntime alone; parity with torch < 1e-4 at 0.5, 3 and 17 s."""
    import onnxruntime as ort

    from stlser import driver, kinds
    from stlser.export import export_onnx
    from stlser.kinds.functionals import WaveModel
    from stlser.onnx_runtime import OnnxRecognizer

    over = [
        "data.corpus=synth",
        f"data.root={synth_corpus}",
        "split.val_speakers=1",
        f"cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
        "model.speeds=[]",
        "model.init=null",
    ]
    run = driver.crossval(config.load("recommended.yaml", over), tmp_path / "run")
    onnx_path = export_onnx(run / "fold_00" / "model.pt", tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["wave", "lengths"]
    assert sorted(i.name for i in sess.get_overridable_initializers()) == [
        "stats_mean",
        "stats_std",
    ]
    kind, art, path = kinds.read(run / "fold_00" / "model.pt")
    model, _ = kind.read_model(path, art)
    torch_model = WaveModel(kind, model, kind.sets(art)).eval()
    g = torch.Generator().manual_seed(0)
    spk = {
        "stats_mean": model.mean + 0.5 * model.std * torch.randn(model.mean.shape, generator=g),
        "stats_std": model.std * (1 + 0.5 * torch.rand(model.std.shape, generator=g)),
    }
    worst = {}
    for seconds in (0.5, 3.0, 17.0):
        lengths = [int(seconds * 16000), int(seconds * 16000 * 0.7)]
        wave = np.zeros((2, lengths[0]), np.float32)
        for i, n in enumerate(lengths):
            wave[i, :n] = speechlike(n / 16000, 10 + i)
        feeds = {"wave": wave, "lengths": np.asarray(lengths, np.int64)}
        (got,) = sess.run(["probs"], feeds)
        (got_spk,) = sess.run(["probs"], {**feeds, **{k: v.numpy() for k, v in spk.items()}})
        with torch.inference_mode():
            ref = torch_model(torch.from_numpy(wave), torch.tensor(lengths)).numpy()
            ref_spk = torch_model(torch.from_numpy(wave), torch.tensor(lengths), *spk.values())
        worst[seconds] = float(
            max(np.abs(got - ref).max(), np.abs(got_spk - ref_spk.numpy()).max())
        )
        assert np.abs(got_spk - got).max() > 1e-3  # the statistics are used
    assert max(worst.values()) < 1e-4, worst
    rec = OnnxRecognizer(onnx_path)  # the torch-free runtime takes the same graph
    clip = speechlike(2.0, 3)
    with torch.inference_mode():
        ref = torch_model(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))[0].numpy()
    probs = rec.predict(clip, sample_rate=16000).probabilities
    assert max(abs(probs[k] - float(ref[i])) for i, k in enumerate(rec.labels)) < 1e-4
