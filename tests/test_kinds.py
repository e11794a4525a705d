"""The recogniser-kind interface: a kind written here, in the test suite, as one class and one
registry line, runs through every command — crossval (the one driver), evaluate, predict
(`Recognizer.load`) and export (ONNX, run by the torch-free runtime) — without any other code
knowing it exists. And every built-in kind's artefact is scored by `stlser evaluate`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from stlser import config, kinds
from stlser.kinds.base import FoldOutput, Kind
from stlser.recognizer import SAMPLE_RATE, BaseRecognizer
from tests import equivalence

FORMAT = "toy-nearest-mean/1"


@dataclass
class ToyConfig:
    kind: Literal["toy"] = "toy"
    sharpness: float = 4.0


class ToyNet(nn.Module):
    """wave[B, N], lengths[B] → softmax(-sharpness · |features − class mean|²) over 2 features
    (log RMS, zero-crossing rate) computed over each clip's valid samples."""

    def __init__(self, means: torch.Tensor, sharpness: float) -> None:
        super().__init__()
        self.register_buffer("means", means.float())
        self.sharpness = float(sharpness)

    def features(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(wave.shape[1], device=wave.device)[None, :]
        mask = (idx < lengths[:, None]).to(wave.dtype)
        n = lengths.to(wave.dtype).clamp_min(1.0)
        rms = ((wave * wave * mask).sum(1) / n).clamp_min(1e-10).sqrt().log()
        flips = ((wave[:, 1:] * wave[:, :-1]) < 0).to(wave.dtype) * mask[:, 1:]
        return torch.stack([rms, 10.0 * flips.sum(1) / n], 1)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        f = self.features(wave, lengths)
        d = ((f[:, None, :] - self.means[None]) ** 2).sum(-1)
        return torch.softmax(-self.sharpness * d, -1)


class ToyRecognizer(BaseRecognizer):
    def __init__(self, net: ToyNet, labels: list[str]) -> None:
        self.net, self.labels, self.sample_rate, self.meta = net.eval(), labels, SAMPLE_RATE, {}

    def _run(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()


class ToyKind(Kind):
    name, config, formats, system = "toy", ToyConfig, (FORMAT,), "toy nearest class mean"

    def prepare(self, cfg: Any, df: pd.DataFrame, labels: list[str]) -> dict[str, Any]:
        from stlser import audio

        net = ToyNet(torch.zeros(len(labels), 2), 1.0)
        feats = []
        for p in df["path"]:
            x = torch.from_numpy(audio.load(p))[None]
            feats.append(net.features(x, torch.tensor([x.shape[1]]))[0].numpy())
        pos = {u: i for i, u in enumerate(df["utt_id"].astype(str))}
        y = np.asarray([labels.index(v) for v in df["label"]])
        return {"F": np.stack(feats), "y": y, "labels": labels, "pos": pos}

    def fit(self, cfg, data, fold, out: Path, resume=False, callbacks=None) -> FoldOutput:
        rows = [data["pos"][str(u)] for u in [*fold.train, *fold.val]]
        test = [data["pos"][str(u)] for u in fold.test]
        F, y = data["F"], data["y"]
        means = np.stack([F[rows][y[rows] == c].mean(0) for c in range(len(data["labels"]))])
        net = ToyNet(torch.as_tensor(means), cfg.model.sharpness)
        art = {"format": FORMAT, "labels": data["labels"], "means": net.means, "sharpness": 4.0}
        art["sharpness"] = float(cfg.model.sharpness)
        torch.save(art, out / "model.pt")
        d = ((F[test][:, None] - means[None]) ** 2).sum(-1)
        probs = torch.softmax(torch.as_tensor(-cfg.model.sharpness * d), -1).numpy()
        return FoldOutput(probs, {"n_train": len(rows)}, {"best_epoch": None})

    def load(self, path, art) -> ToyNet:
        return ToyNet(art["means"], art["sharpness"])

    def recognizer(self, path, art) -> ToyRecognizer:
        return ToyRecognizer(self.load(path, art), list(art["labels"]))

    def export(self, path, art, out, **kw):
        import json

        from stlser.onnx_graph import wave_graph

        meta = {"labels": json.dumps(list(art["labels"])), "sample_rate": str(SAMPLE_RATE)}
        return wave_graph(self.load(path, art), meta, out, dynamo=False)

    def score(self, path, art, df, cache_dir):
        rec = self.recognizer(path, art)
        return rec.probabilities([__import__("stlser").audio.load(p) for p in df["path"]])


@pytest.fixture
def toy_kind():
    kind = kinds.register(ToyKind())  # the one registry line
    yield kind
    kinds.KINDS.pop("toy")
    config.MODEL_CONFIGS.pop("toy")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return equivalence.build(tmp_path_factory.mktemp("kinds") / "corpus")


def _cfg(corpus: Path, tmp: Path, *extra: str):
    base = [
        "data.corpus=csv",
        f"data.root={corpus}",
        f"cache_dir={tmp / 'cache'}",
        "train.progress=false",
        "split.val_speakers=1",
    ]
    return config.load(None, [*base, *extra])


def test_a_new_kind_runs_crossval_evaluate_predict_and_export(toy_kind, corpus, tmp_path):
    from stlser import driver
    from stlser.export import export_onnx
    from stlser.inference import Recognizer
    from stlser.onnx_runtime import OnnxRecognizer
    from stlser.results import RunReport

    cfg = _cfg(corpus, tmp_path, "model.kind=toy", "model.sharpness=2.0")
    assert isinstance(cfg.model, ToyConfig) and cfg.model.sharpness == 2.0
    run = driver.crossval(cfg, tmp_path / "run")
    rep = RunReport.load(run / "report.json")
    assert rep.system == "toy nearest class mean" and len(rep.folds) == 5
    assert rep.ua > 0.5  # chance 1/3: loudness and pitch separate the classes
    assert config.load(run / "config.yaml").model.kind == "toy"

    rec = Recognizer.load(run / "fold_00" / "model.pt")
    clip = equivalence.clip("angry", 0, 0)
    p_torch = rec.predict(clip, sample_rate=SAMPLE_RATE)
    assert p_torch.label in equivalence.LABELS

    onnx = export_onnx(run / "fold_00" / "model.pt", tmp_path / "toy.onnx")
    p_onnx = OnnxRecognizer(onnx, threads=1).predict(clip, sample_rate=SAMPLE_RATE)
    assert p_onnx.label == p_torch.label
    pt, po = p_torch.probabilities, p_onnx.probabilities
    assert max(abs(po[k] - pt[k]) for k in pt) < 1e-4

    ev = driver.evaluate(run / "fold_00" / "model.pt", run / "manifest.csv", tmp_path / "ev")
    assert RunReport.load(ev / "report.json").n == 45
    with pytest.raises(ValueError, match="toy kind scores with its training normalisation"):
        driver.evaluate(run / "fold_00", run / "manifest.csv", tmp_path / "ev1", stats="global")


def test_unknown_kind_and_foreign_keys_are_refused_by_name():
    with pytest.raises(ValueError, match="model.kind='toy' is not one of: network"):
        config.load(None, ["model.kind=toy"])
    with pytest.raises(ValueError, match="model.functionals.*model.kind=network"):
        config.load(None, ["model.functionals=[egemaps]"])
    with pytest.raises(ValueError, match="model.stl_layers.*model.kind=expert"):
        config.load("recommended.yaml", ["model.stl_layers=2"])


@pytest.mark.parametrize("system", ["expert_select", "svm", "network"])
def test_evaluate_scores_a_run_of_every_kind(system, tmp_path_factory, one_torch_thread):
    """`stlser evaluate` on a fold's model.pt of each kind: the kind's own scoring of its test
    speaker equals what crossval wrote for it (every speaker normalised by its own statistics)."""
    from stlser.cli import main

    work = tmp_path_factory.getbasetemp() / "equivalence"
    run = equivalence.run(system, work)  # reuses the folder test_equivalence made
    test = pd.read_csv(run / "fold_00" / "predictions.csv", dtype=str)
    man = pd.read_csv(run / "manifest.csv", dtype=str)
    one = work / f"{system}-fold0.csv"
    man[man.utt_id.isin(test.utt_id)].to_csv(one, index=False)
    out = work / f"{system}-evaluate"
    assert (
        main(["evaluate", "--model", str(run / "fold_00"), "--manifest", str(one), "-o", str(out)])
        == 0
    )
    got = pd.read_csv(out / "predictions.csv", dtype=str)
    assert len(got) == len(test)
    if system != "svm":  # the SVM's runtime answers the argmax of its vote scores
        assert got.set_index("utt_id").loc[test.utt_id, "pred"].tolist() == test.pred.tolist()


def test_evaluate_scores_the_shipped_model(tmp_path, corpus, one_torch_thread):
    from stlser.cli import main
    from stlser.results import RunReport

    man = pd.read_csv(corpus).head(6)
    m = tmp_path / "m.csv"
    man.to_csv(m, index=False)
    rc = main(["evaluate", "--model", "base", "--manifest", str(m), "-o", str(tmp_path / "ev")])
    assert rc == 0
    rep = RunReport.load(tmp_path / "ev" / "report.json")
    assert rep.n == 6 and rep.extra["kind"] == "expert"


def test_every_registered_kind_implements_the_interface():
    for name, kind in kinds.KINDS.items():
        assert kind.name == name and kind.formats and kind.system
        assert config.MODEL_CONFIGS[name] is kind.config
        assert dataclasses.fields(kind.config)[0].name == "kind"


@pytest.mark.parametrize("system", ["expert_select", "svm"])
def test_evaluate_with_global_stats_scores_each_clip_as_predict_does(
    system, tmp_path_factory, one_torch_thread
):
    """`stlser evaluate --stats global`: every clip normalised alone by the training set's
    global statistics, i.e. the probabilities `Recognizer.predict` gives for the file; the
    speaker statistics of crossval give other probabilities for the same clips."""
    from stlser import driver
    from stlser.inference import Recognizer
    from stlser.results import RunReport

    work = tmp_path_factory.getbasetemp() / "equivalence"
    run = work / system  # the run test_equivalence made, else made here
    run = run if (run / "report.json").exists() else equivalence.run(system, work)
    test = pd.read_csv(run / "fold_00" / "predictions.csv", dtype=str)
    man = pd.read_csv(run / "manifest.csv", dtype=str)
    one = work / f"{system}-fold0-global.csv"
    man[man.utt_id.isin(test.utt_id)].to_csv(one, index=False)
    cache = str(config.load(run / "config.yaml").cache_dir)
    ev = {
        s: driver.evaluate(run / "fold_00", one, work / f"{system}-ev-{s}", cache, stats=s)
        for s in ("speaker", "global")
    }
    assert RunReport.load(ev["global"] / "report.json").extra["stats"] == "global"
    kind, art, path = kinds.read(run / "fold_00")
    labels = [str(x) for x in art["labels"]]
    df = pd.read_csv(one, dtype=str)
    glob = kind.score(path, art, df, cache, stats="global")
    spk = kind.score(path, art, df, cache, stats="speaker")
    rec = Recognizer.load(run / "fold_00" / "model.pt")
    alone = np.array([[rec.predict(p).probabilities[lab] for lab in labels] for p in df["path"]])
    np.testing.assert_allclose(glob, alone, atol=1e-4)
    assert np.abs(glob - spk).max() > 1e-3
    # one clip scored alone = the same clip among the others (no statistics shared)
    first = kind.score(path, art, df.head(1), cache, stats="global")
    np.testing.assert_allclose(first, glob[:1], atol=1e-6)
    with pytest.raises(ValueError, match="stats must be one of"):
        kind.score(path, art, df, cache, stats="speakers")


def test_evaluate_global_stats_refused_for_the_network(tmp_path_factory, one_torch_thread):
    from stlser.cli import main

    work = tmp_path_factory.getbasetemp() / "equivalence"
    run = work / "network"
    run = run if (run / "report.json").exists() else equivalence.run("network", work)
    argv = ["evaluate", "--model", str(run / "fold_00"), "--manifest", str(run / "manifest.csv")]
    assert main([*argv, "--stats", "global", "-o", str(work / "net-global")]) == 2
