"""Training end to end on the synthetic corpus: loss falls, resume is exact, report schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stlser import config

FAST = [
    "train.max_epochs=4",
    "train.patience=10",
    "train.progress=false",
    "train.batch_size=16",
    "split.protocol=group-kfold",
    "split.k=2",
    "split.folds=[0]",
]


def _cfg(corpus, tmp_path, extra=()):
    return config.load(
        None,
        [
            f"data.root={corpus}",
            "data.corpus=synth",
            f"cache_dir={tmp_path / 'cache'}",
            *FAST,
            *extra,
        ],
    )


def test_loss_decreases_and_report_schema(synth_corpus, tmp_path):
    from stlser import driver, reports

    run = driver.crossval(_cfg(synth_corpus, tmp_path, ["train.max_epochs=6"]), tmp_path / "run")
    log = pd.read_csv(run / "fold_00" / "logs" / "metrics.csv")
    train_loss = log["train_loss"].dropna().to_numpy()
    assert len(train_loss) == 6
    assert train_loss[-1] < train_loss[0] * 0.9
    rep = json.loads((run / "report.json").read_text())
    reports.validate_report(rep)
    for key in (
        "wa",
        "ua",
        "macro_f1",
        "ua_ci95",
        "folds",
        "confusion",
        "labels",
        "n_params",
        "seconds",
    ):
        assert key in rep
    assert rep["n_params"] == 468_612
    assert rep["labels"] == ["angry", "happy", "neutral", "sad"]
    lo, hi = rep["ua_ci95"]
    assert lo <= rep["ua"] <= hi
    for name in (
        "config.yaml",
        "environment.json",
        "predictions.csv",
        "report.md",
        "confusion.png",
        "splits.json",
        "manifest.csv",
        "fold_00/model.pt",
        "fold_00/embeddings.npz",
    ):
        assert (run / name).exists(), name
    preds = pd.read_csv(run / "predictions.csv")
    test_spk = set(rep["folds"][0]["test_speakers"])
    assert set(preds["speaker"].astype(str)) == test_spk
    # no test speaker was seen in training or validation
    folds = json.loads((run / "splits.json").read_text())
    man = pd.read_csv(run / "manifest.csv", dtype=str).set_index("utt_id")
    f0 = folds[0] if isinstance(folds, list) else folds["folds"][0]
    seen = set(man.loc[f0["train"] + f0["val"], "speaker"])
    assert not seen & test_spk


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_resume_reproduces_uninterrupted_run(synth_corpus, tmp_path):
    from stlser import driver
    from stlser.testing import CrashAfter, SimulatedCrash

    full = driver.crossval(_cfg(synth_corpus, tmp_path), tmp_path / "full")
    with pytest.raises(SimulatedCrash):
        driver.crossval(_cfg(synth_corpus, tmp_path), tmp_path / "cut", callbacks=CrashAfter(2))
    assert (tmp_path / "cut" / "fold_00" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "cut" / "report.json").exists()
    resumed = driver.crossval(_cfg(synth_corpus, tmp_path), tmp_path / "cut", resume=True)
    a = pd.read_csv(full / "predictions.csv")
    b = pd.read_csv(resumed / "predictions.csv")
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-5)
    hist = pd.read_csv(resumed / "fold_00" / "logs" / "metrics.csv")
    full_hist = pd.read_csv(full / "fold_00" / "logs" / "metrics.csv")
    assert sorted(hist["epoch"].unique()) == sorted(full_hist["epoch"].unique()) == [0, 1, 2, 3]
    np.testing.assert_allclose(
        hist.groupby("epoch")["val_acc"].max(), full_hist.groupby("epoch")["val_acc"].max()
    )
    ra, rb = (json.loads((r / "report.json").read_text()) for r in (full, resumed))
    assert ra["ua"] == rb["ua"] and ra["folds"][0]["best_epoch"] == rb["folds"][0]["best_epoch"]


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_seeded_runs_are_identical(synth_corpus, tmp_path):
    from stlser import driver

    a = driver.crossval(_cfg(synth_corpus, tmp_path, ["train.max_epochs=2"]), tmp_path / "a")
    b = driver.crossval(_cfg(synth_corpus, tmp_path, ["train.max_epochs=2"]), tmp_path / "b")
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb)


def test_evaluate_checkpoint_matches_crossval_predictions(synth_corpus, tmp_path):
    from stlser import driver

    run = driver.crossval(_cfg(synth_corpus, tmp_path, ["train.max_epochs=2"]), tmp_path / "r")
    out = driver.evaluate(
        run / "fold_00" / "model.pt",
        run / "manifest.csv",
        tmp_path / "ev",
        cache_dir=str(tmp_path / "cache"),
    )
    ev = pd.read_csv(out / "predictions.csv").set_index("utt_id")
    cv = pd.read_csv(run / "predictions.csv").set_index("utt_id")
    probs = [c for c in cv.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ev.loc[cv.index, probs].to_numpy(), cv[probs].to_numpy(), atol=1e-5)
    assert json.loads((out / "report.json").read_text())["labels"] == [
        "angry",
        "happy",
        "neutral",
        "sad",
    ]


@pytest.mark.corpus
def test_emodb_one_fold_learns(shared_corpora, tmp_path):
    """Real-corpus smoke check: one LOSO fold of EmoDB, a few epochs, clearly above chance."""
    from stlser import driver

    cfg = config.load(
        "paper_emodb_loso.yaml",
        [
            f"data.root={shared_corpora / 'emodb'}",
            f"cache_dir={tmp_path / 'cache'}",
            "split.folds=[0]",
            "train.max_epochs=6",
            "train.progress=false",
        ],
    )
    run = driver.crossval(cfg, tmp_path / "run")
    rep = json.loads((run / "report.json").read_text())
    assert rep["folds"][0]["test_speakers"] == ["03"]
    assert rep["folds"][0]["n"] == 49
    assert rep["ua"] > 2 / 7  # chance is 1/7


def test_every_training_option_runs(synth_corpus, tmp_path):
    """SpecAugment, mixup, tempo and gain perturbation, class weights, UA monitor: one short run."""
    from stlser import driver

    opts = [
        "train.max_epochs=2",
        "train.specaugment=true",
        "train.mixup=0.4",
        "train.time_stretch=0.15",
        "train.gain_db=6",
        "train.class_weights=true",
        "train.monitor=val_ua",
    ]
    run = driver.crossval(_cfg(synth_corpus, tmp_path, opts), tmp_path / "opts")
    log = pd.read_csv(run / "fold_00" / "logs" / "metrics.csv")
    assert np.isfinite(log["train_loss"].dropna()).all() and len(log["val_ua"].dropna()) == 2


@pytest.mark.slow  # a minute: in make slow-checks (CI), to keep make test under 10 minutes
def test_ensemble_in_parallel_equals_sequential(synth_corpus, tmp_path):
    """Two models per fold trained in two processes give exactly what one process gives, and
    the fold's probabilities are the mean of its members'."""
    from stlser import driver, reports

    extra = ["train.max_epochs=2", "train.ensemble=2", "split.folds=[0,1]", "train.num_threads=1"]
    seq = driver.crossval(_cfg(synth_corpus, tmp_path, extra), tmp_path / "seq")
    par = driver.crossval(_cfg(synth_corpus, tmp_path, [*extra, "train.jobs=2"]), tmp_path / "par")
    a, b = pd.read_csv(seq / "predictions.csv"), pd.read_csv(par / "predictions.csv")
    prob_cols = [c for c in a.columns if c.startswith("prob_")]
    pd.testing.assert_frame_equal(a, b)
    for run in (seq, par):
        rep = json.loads((run / "report.json").read_text())
        reports.validate_report(rep)
        assert rep["ensemble"] == 2
        for f, fold in enumerate(rep["folds"]):
            fdir = run / f"fold_{f:02d}"
            m0, m1 = np.load(fdir / "probs.npy"), np.load(fdir / "member_01" / "probs.npy")
            assert not np.allclose(m0, m1)  # different seeds and validation speakers
            assert [m["seed"] for m in fold["members"]] == [0, 1]
            got = pd.read_csv(fdir / "predictions.csv")[prob_cols].to_numpy()
            np.testing.assert_allclose(got, (m0 + m1) / 2, atol=2e-6)
    # resume reuses every finished member: nothing is retrained, the report is unchanged
    again = driver.crossval(
        _cfg(synth_corpus, tmp_path, [*extra, "train.jobs=2"]), tmp_path / "par", resume=True
    )
    pd.testing.assert_frame_equal(a, pd.read_csv(again / "predictions.csv"))


@pytest.mark.slow  # make test < 10 min; CI runs it in slow-checks
def test_refit_trains_on_train_and_val_and_resumes_exactly(synth_corpus, tmp_path):
    """The refit stage retrains on train + val for the best epoch count; a crash inside it
    resumes without re-entering stage 1 and ends where the uninterrupted run ends."""
    from stlser import driver
    from stlser.testing import CrashAfter, SimulatedCrash

    extra = ["train.max_epochs=3", "train.refit=true", "train.monitor=val_loss"]
    full = driver.crossval(_cfg(synth_corpus, tmp_path, extra), tmp_path / "full")
    fold = json.loads((full / "fold_00" / "fold.json").read_text())
    refit_log = pd.read_csv(full / "fold_00" / "refit" / "logs" / "metrics.csv")
    assert fold["refit"] and sorted(refit_log["epoch"].dropna().unique()) == list(
        range(fold["best_epoch"])
    )
    assert "val_loss" not in refit_log.columns  # no validation in the refit stage
    splits_ = json.loads((full / "splits.json").read_text())
    f0 = splits_[0] if isinstance(splits_, list) else splits_["folds"][0]
    assert fold["train_utterances"] == len(f0["train"]) + len(f0["val"])

    with pytest.raises(SimulatedCrash):
        driver.crossval(
            _cfg(synth_corpus, tmp_path, extra),
            tmp_path / "cut",
            callbacks=CrashAfter(1, stage="refit"),
        )
    assert (tmp_path / "cut" / "fold_00" / "stage1.json").exists()
    resumed = driver.crossval(_cfg(synth_corpus, tmp_path, extra), tmp_path / "cut", resume=True)
    a, b = pd.read_csv(full / "predictions.csv"), pd.read_csv(resumed / "predictions.csv")
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-5)


def test_freq_warp_moves_energy_and_keeps_padding():
    import torch

    from stlser.training import freq_warp

    x = torch.zeros(3, 4, 40)
    x[:, :2, 10] = 1.0  # a peak in band 10 on the first two (valid) frames; frames 2-3 padding
    y = freq_warp(x, torch.tensor([1.0, 1.2, 0.8]))
    torch.testing.assert_close(y[0], x[0])  # alpha 1 is the identity
    assert int(y[1, 0].argmax()) == 12 and int(y[2, 0].argmax()) == 8  # 10·1.2, 10·0.8
    assert (y[:, 2:] == 0).all()  # padded frames stay zero
