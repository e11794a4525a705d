"""eGeMAPS functionals + linear SVM baseline (the `svm` kind) on synthetic functionals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stlser import config, driver, features, kinds, metrics, reports
from stlser.kinds import svm
from stlser.splits import Fold

CLASSES = ["angry", "happy", "neutral", "sad"]
SPEAKERS = ["s1", "s2", "s3", "s4"]


def synthetic(per_class: int = 20, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Random 88-dim 'functionals': class shift on 10 dims, a large per-speaker offset on all."""
    rng = np.random.default_rng(seed)
    class_mean = rng.normal(0, 1.0, (len(CLASSES), 88)) * (np.arange(88) < 10)
    rows, feats = [], []
    for s, spk in enumerate(SPEAKERS):
        offset = rng.normal(0, 3.0, 88) + 5.0 * s  # speaker identity dominates raw features
        scale = 1.0 + 0.5 * s
        for c, lab in enumerate(CLASSES):
            for i in range(per_class):
                feats.append(offset + scale * (class_mean[c] + rng.normal(0, 0.6, 88)))
                rows.append(
                    {"utt_id": f"{spk}_{lab}_{i}", "path": "", "label": lab, "speaker": spk}
                )
    return pd.DataFrame(rows), np.asarray(feats, dtype=np.float32)


def loso(df: pd.DataFrame) -> list[Fold]:
    folds = []
    for i, s in enumerate(SPEAKERS):
        v = SPEAKERS[(i + 1) % len(SPEAKERS)]
        tr = df.utt_id[(df.speaker != s) & (df.speaker != v)].tolist()
        folds.append(
            Fold(
                f"loso-{s}",
                tr,
                df.utt_id[df.speaker == v].tolist(),
                df.utt_id[df.speaker == s].tolist(),
                [s],
                [v],
                seed=0,
                speaker_independent=True,
            )
        )
    return folds


def cross_validate(X, df, folds, normalize="speaker", selection="val", out=None):
    """The svm kind's fit on every fold (features given) → (predictions, report rows)."""
    import tempfile

    kind = kinds.get("svm")
    cfg = config.from_dict(
        {"model": {"kind": "svm", "selection": selection}, "features": {"normalize": normalize}}
    )
    labels = sorted(df.label.unique())
    data = {
        "X": np.asarray(X, np.float64),
        "y": df.label.astype(str).to_numpy(),
        "speakers": df.speaker.astype(str).to_numpy(),
        "glob": [],
        "labels": labels,
        "pos": {u: i for i, u in enumerate(df.utt_id.astype(str))},
    }
    preds, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for f in folds:
            o = kind.fit(cfg, data, f, Path(out or tmp))
            preds.append(
                reports.predictions_table(
                    df, list(f.test), f.name, labels, o.scores, "score", o.pred
                )
            )
            rows.append({"fold": f.name, "test_speakers": f.test_speakers, **o.row})
    return pd.concat(preds, ignore_index=True), rows


def test_normalize_functionals_modes():
    df, X = synthetic(per_class=5)
    spk = df.speaker.to_numpy()
    Z, mode = features.normalize_functionals(X, spk, "speaker")
    assert mode == "speaker"
    for s in SPEAKERS:
        np.testing.assert_allclose(Z[spk == s].mean(0), 0, atol=1e-6)
        np.testing.assert_allclose(Z[spk == s].std(0), 1, atol=1e-6)
    fit = np.flatnonzero(spk != "s4")
    G, mode = features.normalize_functionals(X, spk, "global", fit_idx=fit)
    np.testing.assert_allclose(G[fit].mean(0), 0, atol=1e-6)
    # Rows outside the fitting set do not influence the statistics.
    X2 = X.copy()
    X2[spk == "s4"] += 100.0
    G2, _ = features.normalize_functionals(X2, spk, "global", fit_idx=fit)
    np.testing.assert_allclose(G2[fit], G[fit])
    N, mode = features.normalize_functionals(X, spk, "utterance")
    assert mode == "none" and np.array_equal(N, X.astype(np.float64))
    with pytest.raises(ValueError, match="normalize"):
        features.normalize_functionals(X, spk, "bogus")


def test_svm_kind_beats_chance_and_its_artefact_reproduces_its_scores(tmp_path):
    df, X = synthetic()
    folds = loso(df)
    preds, rows = cross_validate(X, df, folds[:1], out=tmp_path)
    assert metrics.compute(preds.label, preds.pred, CLASSES)["ua"] > 0.8  # chance is 0.25
    assert rows[0]["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    assert rows[0]["selection"] == "validation speakers"
    # the artefact: scaler + one-vs-one hyperplanes as tensors, scikit-learn's scores exactly
    import torch

    kind, art, path = kinds.read(tmp_path / "model.pt")
    assert kind.name == "svm" and art["labels"] == CLASSES
    model = kind.load(path, art)
    Z, _ = features.normalize_functionals(X, df.speaker, "speaker")
    test = [df.utt_id.tolist().index(u) for u in folds[0].test]
    with torch.no_grad():
        got = model.scores(torch.as_tensor(Z[test], dtype=torch.float32)).numpy()
    want = preds[[f"score_{c}" for c in CLASSES]].to_numpy(float)
    assert np.abs(got - want).max() < 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()  # the SVM's own vote may break ties otherwise
    assert kind.describe(art)["n_params"] > 6 * 88


def test_speaker_normalisation_helps_on_speaker_shifted_data(tmp_path):
    df, X = synthetic()
    folds = loso(df)
    uas = {}
    for mode in ("speaker", "none"):
        preds, _ = cross_validate(X, df, folds, normalize=mode)
        uas[mode] = metrics.compute(preds.label, preds.pred, CLASSES)["ua"]
    assert uas["speaker"] > uas["none"] + 0.1


def test_selection_uses_train_and_val_only(monkeypatch):
    df, X = synthetic(per_class=10)
    folds = loso(df)
    pos = {u: i for i, u in enumerate(df.utt_id)}
    seen = []
    real = svm.select_params

    def spy(Xs, y, groups, train_idx, val_idx, *a, **k):
        seen.append((set(train_idx.tolist()), set(val_idx.tolist())))
        return real(Xs, y, groups, train_idx, val_idx, *a, **k)

    monkeypatch.setattr(svm, "select_params", spy)
    cross_validate(X, df, folds, normalize="speaker")
    assert len(seen) == len(folds)
    for (tr, va), fold in zip(seen, folds, strict=True):
        test = {pos[u] for u in fold.test}
        assert not (tr | va) & test
        assert va == {pos[u] for u in fold.val}


def test_test_labels_never_influence_choice_or_predictions():
    """Scrambling the test speaker's labels must change nothing but the scores."""
    df, X = synthetic(per_class=10, seed=3)
    fold = loso(df)[0]
    preds, dicts = cross_validate(X, df, [fold], normalize="speaker")
    df2 = df.copy()
    test_rows = df2.speaker == fold.test_speakers[0]
    rng = np.random.default_rng(0)
    df2.loc[test_rows, "label"] = rng.permutation(df2.loc[test_rows, "label"].to_numpy())
    preds2, dicts2 = cross_validate(X, df2, [fold], normalize="speaker")
    assert (dicts[0]["C"], dicts[0]["class_weight"]) == (dicts2[0]["C"], dicts2[0]["class_weight"])
    assert preds.pred.tolist() == preds2.pred.tolist()
    assert preds.label.tolist() != preds2.label.tolist()


def test_select_params_without_validation_uses_training_groups():
    df, X = synthetic(per_class=8)
    Z, _ = features.normalize_functionals(X, df.speaker, "speaker")
    y, g = df.label.to_numpy(), df.speaker.to_numpy()
    tr = np.flatnonzero(g != "s4")
    sel = svm.select_params(Z, y, g, tr, np.array([], dtype=int), grid_c=(0.01, 1.0))
    assert sel.how == "group k-fold on training speakers"
    assert sel.C in (0.01, 1.0) and sel.val_ua > 0.6
    assert set(sel.scores) == {f"C={c:g},cw={w}" for c in (0.01, 1.0) for w in (None, "balanced")}


def test_inner_selection_never_sees_test_rows(monkeypatch):
    df, X = synthetic(per_class=8)
    folds = loso(df)
    pos = {u: i for i, u in enumerate(df.utt_id)}
    seen = []
    real = svm.make_classifier

    def spy(C, cw):
        clf = real(C, cw)
        fit = clf.fit

        def recording_fit(Xf, yf):
            seen.append({tuple(np.round(r, 6)) for r in Xf})
            return fit(Xf, yf)

        clf.fit = recording_fit
        return clf

    monkeypatch.setattr(svm, "make_classifier", spy)
    preds, dicts = cross_validate(X, df, folds[:1], normalize="speaker", selection="inner")
    Z, _ = features.normalize_functionals(X, df.speaker, "speaker")
    test_rows = {tuple(np.round(Z[pos[u]], 6)) for u in folds[0].test}
    assert len(seen) > 10 and all(not (s & test_rows) for s in seen)
    assert dicts[0]["selection"] == "group k-fold on train+val speakers"
    assert metrics.compute(preds.label, preds.pred, CLASSES)["ua"] > 0.5
    with pytest.raises(ValueError, match="model.selection"):
        config.load(None, ["model.kind=svm", "model.selection=test"])


def _tone_manifest(tmp_path: Path, per_class: int = 3) -> Path:
    """Tiny corpus: 4 speakers × 4 classes; each class a different pitch and loudness."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    rows = []
    for s, spk in enumerate(SPEAKERS):
        for c, lab in enumerate(CLASSES):
            for i in range(per_class):
                f0 = 120 * (1 + 0.1 * s) * (1 + 0.6 * c) * (1 + 0.02 * i)
                x = (0.05 + 0.1 * c) * np.sin(2 * np.pi * f0 * t) + 0.003 * rng.normal(size=t.size)
                p = tmp_path / "wav" / f"{spk}_{lab}_{i}.wav"
                p.parent.mkdir(exist_ok=True)
                sf.write(p, x.astype(np.float32), 16000)
                rows.append({"utt_id": p.stem, "path": str(p), "label": lab, "speaker": spk})
    m = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    return m


def test_extract_functionals_through_feature_cache(tmp_path, monkeypatch):
    from stlser import features
    from stlser.kinds import functionals

    df = pd.read_csv(_tone_manifest(tmp_path, per_class=1), dtype=str)
    X = functionals.load_matrix(df, ["egemaps"], tmp_path / "cache", progress=False)
    assert X.shape == (len(df), 88) and X.dtype == np.float32 and np.all(np.isfinite(X))
    assert not np.allclose(X[0], X[1])

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(features.frontend, "egemaps_functionals", boom)
    X2 = functionals.load_matrix(df, ["egemaps"], tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(X, X2)


def test_run_baseline_from_manifest_config(tmp_path):
    """End to end through the driver (the same manifest/folds path as every kind); the
    report, config and artefacts of each fold are written."""
    m = _tone_manifest(tmp_path)
    cfg = config.load(
        None,
        [
            f"data.manifest={m}",
            "split.protocol=loso",
            f"cache_dir={tmp_path / 'cache'}",
            "train.progress=false",
        ],
    )
    from stlser.results import RunReport

    r = RunReport.load(driver.baseline(cfg, tmp_path / "run") / "report.json")
    assert r.system == "egemaps+linear-svm" and r.n_params == 6 * 89
    assert len(r.folds) == 4 and r.labels == sorted(CLASSES)
    assert r.speaker_independent is True
    assert r.ua > 0.5  # chance 0.25: pitch and level separate the classes
    for name in ("manifest.csv", "splits.json", "predictions.csv", "report.md", "config.yaml"):
        assert (tmp_path / "run" / name).exists()
    assert config.load(tmp_path / "run" / "config.yaml").model.kind == "svm"
    reports.validate_report(json.loads((tmp_path / "run" / "report.json").read_text()))
    assert (tmp_path / "run" / "fold_00" / "model.pt").exists()


def _corpus_root() -> Path | None:
    for root in (
        Path(__file__).resolve().parents[1].parent / "shared" / "corpora",
        Path("/work/shared/corpora"),
    ):
        if (root / "emodb" / "wav").is_dir():
            return root
    return None


@pytest.mark.corpus
def test_emodb_loso_baseline(tmp_path):
    root = _corpus_root()
    if root is None:
        pytest.skip("EmoDB not found")
    cfg = config.load(
        None,
        [
            "data.corpus=emodb",
            f"data.root={root / 'emodb'}",
            "split.protocol=loso",
            "features.normalize=speaker",
            f"cache_dir={tmp_path / 'cache'}",
        ],
    )
    from stlser.results import RunReport

    r = RunReport.load(driver.baseline(cfg, tmp_path / "run") / "report.json")
    assert r.system == "egemaps+linear-svm" and r.n_params == 21 * 89
    assert len(r.folds) == 10 and r.speaker_independent is True
    assert len(r.labels) == 7 and r.n == 535
    assert r.ua > 0.72  # the lead's reference: ~0.795
