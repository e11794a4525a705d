"""The paper's analyses on the tiny synthetic corpus: t-SNE, learning curves, sweep, reproduce."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from stlser import analysis, config

FAST = [
    "data.corpus=synth",
    "split.protocol=group-kfold",
    "split.k=2",
    "train.max_epochs=2",
    "train.progress=false",
]
PER_LAYER = 22_064  # one transformer layer at the default width (d=48, ff=128)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("analysis_cache")


@pytest.fixture(scope="module")
def swept(synth_corpus, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cfg = config.load(None, [f"data.root={synth_corpus}", f"cache_dir={cache}", *FAST])
    return analysis.sweep(cfg, "model.stl_layers", "0,1", out)


@pytest.fixture(scope="module")
def run(swept):
    return swept.parent / "model.stl_layers=1"


def test_sweep_csv_and_plot(swept):
    table = pd.read_csv(swept)
    assert table["value"].tolist() == [0, 1]
    assert table["n_folds"].tolist() == [2, 2]
    assert table["n_params"].diff().iloc[1] == PER_LAYER
    for col in ("ua_mean", "wa_mean", "ua_pooled", "wa_pooled"):
        assert table[col].between(0, 1).all(), col
    rep = json.loads((swept.parent / "model.stl_layers=1" / "report.json").read_text())
    folds = [f["ua"] for f in rep["folds"]]
    assert table["ua_mean"].iloc[1] == pytest.approx(np.mean(folds))
    assert table["ua_std"].iloc[1] == pytest.approx(np.std(folds, ddof=1))
    assert table["wa_pooled"].iloc[1] == pytest.approx(rep["wa"])
    assert (swept.parent / "sweep.png").read_bytes()[:8] == PNG


def test_sweep_reuses_finished_values(swept, monkeypatch):
    from stlser import driver

    def boom(*a, **k):
        raise AssertionError("a finished value was trained again")

    monkeypatch.setattr(driver, "crossval", boom)
    cfg = config.load(None, FAST)
    before = pd.read_csv(swept)
    analysis.sweep(cfg, "model.stl_layers", [0, 1], swept.parent)
    pd.testing.assert_frame_equal(pd.read_csv(swept), before)


def test_sweep_rejects_unknown_key(tmp_path):
    with pytest.raises(ValueError, match="stl_layerz"):
        analysis.sweep(config.load(None, FAST), "model.stl_layerz", "1", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_embeddings_png_and_numbers(run):
    from sklearn.metrics import silhouette_score

    png = analysis.embeddings(run)
    assert png == run / "embeddings.png"
    assert png.read_bytes()[:8] == PNG
    res = json.loads((run / "embeddings.json").read_text())
    assert res["n"] == 96 and res["n_folds"] == 2 and res["stl_layers"] == 1
    for key in ("z0", "zL"):
        m = res[key]
        for name in ("silhouette", "silhouette_pooled", "silhouette_tsne"):
            assert math.isfinite(m[name]) and -1 <= m[name] <= 1, (key, name)
        for name in ("knn_acc", "knn_acc_pooled", "knn_acc_tsne"):
            assert 0 <= m[name] <= 1, (key, name)
    # the headline silhouette is the size-weighted mean of per-fold silhouettes in the raw space
    sils, ns = [], []
    for fold in ("fold_00", "fold_01"):
        d = np.load(run / fold / "embeddings.npz")
        sils.append(silhouette_score(d["zL"], d["label"]))
        ns.append(len(d["label"]))
    assert res["zL"]["silhouette"] == pytest.approx(np.average(sils, weights=ns), abs=1e-6)


def test_curves_png_and_table(run):
    png = analysis.curves(run, run / "figs" / "lc.png")
    assert png.read_bytes()[:8] == PNG
    table = pd.read_csv(run / "figs" / "lc.csv")
    assert sorted(table["fold"].unique()) == ["fold_00", "fold_01"]
    assert table.groupby("fold")["epoch"].apply(list).tolist() == [[1, 2], [1, 2]]
    assert table[["train_loss", "val_loss", "train_acc", "val_acc"]].notna().all().all()
    best = json.loads((run / "fold_00" / "fold.json").read_text())["best_epoch"]
    assert set(table.loc[table["fold"] == "fold_00", "best_epoch"]) == {best}


def test_knn_accuracy_and_helpers():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = centres[y] + rng.normal(0, 0.5, (60, 2))
    assert analysis.knn_accuracy(x, y) == 1.0
    assert analysis.knn_accuracy(x, rng.permutation(y)) < 0.7
    # k=2 with two different labels is a tie: the nearer neighbour decides (3 of 5 right;
    # breaking ties by the smaller label instead would give 2 of 5)
    pts = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    assert analysis.knn_accuracy(pts, np.array([0, 0, 1, 1, 0]), k=2) == pytest.approx(0.6)
    assert analysis.sign_test(5, 0) == pytest.approx(0.0625)
    assert analysis.sign_test(3, 3) == 1.0
    assert analysis.split_values("[16,32],[8,16], 3") == ["[16,32]", "[8,16]", "3"]
    assert analysis.tsne_perplexity(10) == 3.0 and analysis.tsne_perplexity(500) == 30.0


@pytest.mark.slow  # eight trainings: make slow-checks (CI)
def test_reproduce_report(synth_corpus, cache, tmp_path):
    over = ["train.max_epochs=1", "train.progress=false", f"cache_dir={cache}", "split.folds=[0]"]
    with pytest.raises(ValueError, match="model.stl_layers"):
        analysis.reproduce(
            "synth", synth_corpus, tmp_path, seeds="0", overrides=["model.stl_layers=3"]
        )
    report = analysis.reproduce("synth", synth_corpus, tmp_path / "r", seeds="0", overrides=over)
    assert report == tmp_path / "r" / "report.md"
    text = report.read_text()
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(s["cells"]) == {
        "paper_stl0",
        "paper_stl5",
        "loso_stl0",
        "loso_stl5",
        "loso_baseline",
    }
    assert "eGeMAPS + linear SVM (same folds)" in report.read_text()
    base = json.loads((tmp_path / "r" / "loso_baseline" / "report.json").read_text())
    stl = json.loads((tmp_path / "r" / "loso_stl5" / "report.json").read_text())
    assert [f["test_speakers"] for f in base["folds"]] == [f["test_speakers"] for f in stl["folds"]]
    cells = s["cells"]
    assert cells["paper_stl5"]["n_params"] - cells["paper_stl0"]["n_params"] == 5 * PER_LAYER
    assert cells["paper_stl0"]["speaker_independent"] is False
    assert cells["loso_stl0"]["speaker_independent"] is True
    assert s["comparable_to_paper"] is False and s["overrides"] == over
    g = s["gains"]["loso"]["wa"]
    assert g["pooled"] == pytest.approx(cells["loso_stl5"]["wa"] - cells["loso_stl0"]["wa"])
    for needle in (
        "paper (speaker-dependent)",
        "loso (speaker-independent)",
        "truncated (no STL)",
        "5 STL layers",
        "Not directly comparable",
        "72.79 %",
        f"{cells['paper_stl5']['n_params']:,}",
        f"{100 * cells['loso_stl5']['wa']:.1f}",
        "train.max_epochs=1",
    ):
        assert needle in text, needle
    for p in ("paper", "loso"):
        assert (tmp_path / "r" / s["figures"][p]["embeddings"]).exists()
        assert (tmp_path / "r" / s["figures"][p]["curves"]).exists()
        assert math.isfinite(s["embeddings"][p]["zL"]["silhouette"])
