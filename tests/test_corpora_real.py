"""Real-corpus checks on ../shared/corpora (EmoDB, CASIA, nEMO): counts, leak-free LOSO folds,
and the default recognizer against the SVM on EmoDB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stlser.corpora import build_manifest, summarize
from stlser.splits import check_folds, make_folds

pytestmark = pytest.mark.corpus

CORPORA = Path(
    os.environ.get("STLSER_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora")
)


def _root(name: str) -> Path:
    root = CORPORA / name
    if not root.is_dir():
        pytest.skip(f"real corpus not found: {root}")
    return root


@pytest.fixture(scope="module")
def emodb():
    return build_manifest("emodb", _root("emodb"))


@pytest.fixture(scope="module")
def casia():
    return build_manifest("casia", _root("casia"))


def test_emodb_native(emodb) -> None:
    df, skipped = emodb
    assert len(df) == 535 and skipped == []
    assert df["label"].value_counts().to_dict() == {
        "angry": 127,
        "neutral": 79,
        "boredom": 81,
        "happy": 71,
        "fear": 69,
        "sad": 62,
        "disgust": 46,
    }
    assert sorted(df["speaker"].unique()) == [
        "03",
        "08",
        "09",
        "10",
        "11",
        "12",
        "13",
        "14",
        "15",
        "16",
    ]
    male = sorted(df.loc[df["gender"] == "M", "speaker"].unique())
    assert male == ["03", "10", "11", "12", "15"]
    assert df["utt_id"].is_unique and df.attrs["warnings"] == []
    assert round(df["duration"].sum() / 3600, 2) == 0.41
    assert "count check: OK" in summarize(df, skipped)


def test_emodb_four_class() -> None:
    df, skipped = build_manifest("emodb", _root("emodb"), labels="4class")
    assert len(df) == 339 and skipped == []
    assert df["label"].value_counts().to_dict() == {
        "angry": 127,
        "neutral": 79,
        "happy": 71,
        "sad": 62,
    }


def test_casia(casia) -> None:
    df, skipped = casia
    assert len(df) == 1200 and skipped == []
    assert sorted(df["speaker"].unique()) == ["ZhaoZuoxiang", "liuchanhg", "wangzhe", "zhaoquanyin"]
    assert df["label"].value_counts().to_dict() == {
        lab: 200 for lab in ("angry", "fear", "happy", "neutral", "sad", "surprise")
    }
    assert df.attrs["warnings"] == []


@pytest.mark.parametrize(("name", "n_folds"), [("emodb", 10), ("casia", 4)])
def test_loso_folds_leak_free(name: str, n_folds: int, request: pytest.FixtureRequest) -> None:
    df, _ = request.getfixturevalue(name)
    folds = make_folds(df, "loso", seed=0)
    check_folds(folds, df)
    assert len(folds) == n_folds
    assert sorted(u for f in folds for u in f.test) == sorted(df["utt_id"])
    for f in folds:
        assert len(f.test_speakers) == 1 and len(f.val_speakers) == 1
        assert f.test_speakers != f.val_speakers
        # validation covers every label of the corpus
        assert set(df.set_index("utt_id").loc[f.val, "label"]) == set(df["label"])


def test_nemo_release_counts() -> None:
    df, skipped = build_manifest("nemo", _root("nemo"))
    assert len(df) == 4481 and skipped == []
    assert df["label"].value_counts().to_dict() == {
        "neutral": 809,
        "sad": 769,
        "angry": 749,
        "happy": 749,
        "fear": 736,
        "surprise": 669,
    }
    assert df["speaker"].nunique() == 9 and set(df["gender"]) == {"F", "M"}
    assert df.attrs["verified"] and not df.attrs["warnings"]


def test_default_recognizer_beats_the_svm_on_emodb_loso(tmp_path) -> None:
    """The expert recipe from scratch (emodb_loso.yaml: the recommended recipe without the
    general model, which heard EmoDB) and eGeMAPS + SVM on the same 10 EmoDB LOSO folds (seed 0):
    measured 88.7 vs 79.5 % UA with stlser's own sets and the speed copies of model.speeds (the
    openSMILE sets: 89.4; docs/decisions.md D14); the check asks for a clear win. From a cold
    cache the copies make it extract three times the functionals."""
    from stlser import config, driver
    from stlser.results import RunReport

    sets = [
        f"data.root={_root('emodb')}",
        f"cache_dir={tmp_path / 'cache'}",
        "train.progress=false",
    ]
    cfg = config.load("emodb_loso.yaml", sets)
    run = driver.crossval(cfg, tmp_path / "expert")
    ours = RunReport.load(run / "report.json")
    svm = RunReport.load(driver.baseline(cfg, tmp_path / "svm") / "report.json")
    assert len(ours.folds) == len(svm.folds) == 10
    assert ours.ua >= 0.82 and ours.ua >= svm.ua + 0.03, (ours.ua, svm.ua)
