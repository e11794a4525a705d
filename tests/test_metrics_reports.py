"""Metrics, bootstrap intervals (stlser.metrics) and report files (stlser.reports)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stlser import metrics as ev
from stlser import reports

LABELS = ["a", "b", "c"]
# Hand example, 10 utterances: 6 × a (all right), 2 × b (one right, one → a),
# 2 × c (one → a, one → b).
Y_TRUE = ["a"] * 6 + ["b", "b"] + ["c", "c"]
Y_PRED = ["a"] * 6 + ["b", "a"] + ["a", "b"]


def test_hand_computed_three_class_example():
    # WA = (6 + 1 + 0) / 10 = 0.7
    # UA = (recall_a + recall_b + recall_c) / 3 = (6/6 + 1/2 + 0/2) / 3 = 0.5
    # F1: a: tp 6, predicted 8, true 6 → 2·6/(6+8) = 6/7
    #     b: tp 1, predicted 2, true 2 → 2·1/(2+2) = 1/2
    #     c: tp 0                      → 0
    #     macro = (6/7 + 1/2 + 0) / 3 = 19/42
    m = ev.compute(Y_TRUE, Y_PRED, LABELS)
    assert m["wa"] == pytest.approx(0.7)
    assert m["ua"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(19 / 42)
    assert m["wa"] != pytest.approx(m["ua"])
    assert ev.confusion(Y_TRUE, Y_PRED, LABELS) == [[6, 0, 0], [1, 1, 0], [1, 1, 0]]


def test_metrics_agree_with_sklearn_on_random_data():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    labs = list("wxyz")
    t = [labs[i] for i in rng.integers(0, 4, 300)]
    p = [labs[i] for i in rng.integers(0, 4, 300)]
    m = ev.compute(t, p, labs)
    assert m["wa"] == pytest.approx(accuracy_score(t, p))
    assert m["ua"] == pytest.approx(balanced_accuracy_score(t, p))
    assert m["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))


def test_ua_ignores_classes_absent_from_y_true():
    # c never occurs in y_true: UA averages recall over a and b only: (1/2 + 1/2) / 2 = 0.5
    # (counting c as recall 0 would give 1/3).
    t, p = ["a", "a", "b", "b"], ["a", "b", "b", "c"]
    assert ev.METRICS["ua"](t, p, LABELS) == pytest.approx(0.5)
    # macro-F1 keeps c because it was predicted (a false alarm): (2/3 + 1/2 + 0) / 3
    assert ev.METRICS["macro_f1"](t, p, LABELS) == pytest.approx((2 / 3 + 0.5) / 3)


def test_unknown_label_and_length_mismatch_raise():
    with pytest.raises(ValueError, match="not one of labels"):
        ev.compute(["a", "d"], ["a", "a"], LABELS)
    with pytest.raises(ValueError, match="items"):
        ev.compute(["a"], ["a", "b"], LABELS)
    with pytest.raises(ValueError):
        ev.compute([], [], LABELS)


def test_register_metric_is_used_by_compute(monkeypatch):
    monkeypatch.setattr(ev, "METRICS", dict(ev.METRICS))

    @ev.register_metric("errors")
    def errors(y_true, y_pred, labels):
        return float(sum(t != p for t, p in zip(y_true, y_pred, strict=True)))

    assert ev.compute(Y_TRUE, Y_PRED, LABELS)["errors"] == 3.0


def _noisy(n: int, acc: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 3, n)
    p = np.where(rng.random(n) < acc, t, rng.integers(0, 3, n))
    return [LABELS[i] for i in t], [LABELS[i] for i in p]


def test_bootstrap_contains_estimate_narrows_and_is_deterministic():
    t, p = _noisy(200, 0.7, 0)
    for metric in ("ua", "wa", "macro_f1"):
        lo, hi = ev.bootstrap_ci(t, p, LABELS, metric=metric, n_boot=500, seed=3)
        assert lo < ev.METRICS[metric](t, p, LABELS) < hi
    small = ev.bootstrap_ci(t, p, LABELS, n_boot=500, seed=3)
    assert small == ev.bootstrap_ci(t, p, LABELS, n_boot=500, seed=3)
    assert small != ev.bootstrap_ci(t, p, LABELS, n_boot=500, seed=4)
    t2, p2 = _noisy(5000, 0.7, 0)
    big = ev.bootstrap_ci(t2, p2, LABELS, n_boot=500, seed=3)
    # Width shrinks roughly with 1/sqrt(n): 25× the data → ~5× narrower.
    assert (big[1] - big[0]) < 0.4 * (small[1] - small[0])
    # Roughly the normal-approximation width for accuracy 0.8 at n=200: 2·1.96·sqrt(.8·.2/200)
    wa_lo, wa_hi = ev.bootstrap_ci(t, p, LABELS, metric="wa", n_boot=1000)
    assert 0.07 < wa_hi - wa_lo < 0.15


def test_bootstrap_of_builtin_metrics_is_vectorised(monkeypatch):
    """Built-in metrics are scored from batched confusion matrices, never resample by resample
    through the per-call metric function (that loop is what made 1,000 resamples slow)."""
    t, p = _noisy(5000, 0.7, 1)

    def per_call(*_):
        raise AssertionError("bootstrap called the metric once per resample")

    monkeypatch.setattr(ev, "METRICS", {**ev.METRICS, "ua": per_call, "wa": per_call})
    lo, hi = ev.bootstrap_ci(t, p, LABELS, metric="ua", n_boot=1000)
    assert 0 < lo < hi < 1


def test_bootstrap_loop_fallback_matches_vectorised(monkeypatch):
    monkeypatch.setattr(ev, "METRICS", dict(ev.METRICS))
    ev.register_metric("ua_slow")(lambda t, p, labels: ev.METRICS["ua"](t, p, labels))
    t, p = _noisy(150, 0.6, 2)
    fast = ev.bootstrap_ci(t, p, LABELS, metric="ua", n_boot=200, seed=7)
    slow = ev.bootstrap_ci(t, p, LABELS, metric="ua_slow", n_boot=200, seed=7)
    assert slow == pytest.approx(fast)


# ------------------------------------------------------------------------------- reports
def _predictions() -> tuple[pd.DataFrame, list[dict]]:
    rng = np.random.default_rng(5)
    rows = []
    for fold, spk in (("f1", "s1"), ("f2", "s2"), ("f3", "s3")):
        for i in range(40):
            t = LABELS[i % 3]
            p = t if rng.random() < 0.7 else LABELS[rng.integers(0, 3)]
            prob = rng.dirichlet(np.ones(3))
            rows.append(
                {
                    "utt_id": f"{spk}_{i}",
                    "fold": fold,
                    "speaker": spk,
                    "label": t,
                    "pred": p,
                    **{f"prob_{lab}": prob[j] for j, lab in enumerate(LABELS)},
                }
            )
    folds = [
        {"fold": "f1", "test_speakers": ["s1"], "best_epoch": 3, "val_ua": 0.6},
        {"fold": "f2", "test_speakers": ["s2"], "best_epoch": 7},
        {"fold": "f3", "test_speakers": ["s3"], "best_epoch": None},
    ]
    return pd.DataFrame(rows), folds


def test_write_report_files_schema_and_fold_numbers(tmp_path):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    df, folds = _predictions()
    extra = {"n_params": 1234, "seconds": 5.5, "system": "test", "speaker_independent": True}
    r = reports.write_report(tmp_path, df, LABELS, folds, extra)
    for name in ("report.json", "report.md", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind
    on_disk = json.loads((tmp_path / "report.json").read_text())
    reports.validate_report(on_disk)
    assert on_disk["n_params"] == 1234 and on_disk["system"] == "test"
    assert on_disk["labels"] == LABELS
    assert on_disk["wa"] == pytest.approx(accuracy_score(df.label, df.pred))
    assert on_disk["ua"] == pytest.approx(balanced_accuracy_score(df.label, df.pred))
    lo, hi = on_disk["ua_ci95"]
    assert lo < on_disk["ua"] < hi
    assert sum(map(sum, on_disk["confusion"])) == len(df)
    assert [f["fold"] for f in on_disk["folds"]] == ["f1", "f2", "f3"]
    uas = []
    for f in on_disk["folds"]:
        sub = df[df.fold == f["fold"]]
        assert f["n"] == len(sub)
        assert f["wa"] == pytest.approx(accuracy_score(sub.label, sub.pred))
        assert f["ua"] == pytest.approx(balanced_accuracy_score(sub.label, sub.pred))
        assert f["macro_f1"] == pytest.approx(f1_score(sub.label, sub.pred, average="macro"))
        uas.append(f["ua"])
    assert on_disk["folds"][0]["best_epoch"] == 3 and on_disk["folds"][0]["val_ua"] == 0.6
    assert on_disk["ua_fold_mean"] == pytest.approx(np.mean(uas))
    assert on_disk["ua_fold_std"] == pytest.approx(np.std(uas, ddof=1))
    assert r.ua == on_disk["ua"]

    md = (tmp_path / "report.md").read_text()
    assert "speaker-independent" in md and "NOT" not in md
    assert f"{100 * on_disk['ua']:.1f}" in md
    assert "| **a** | " + " | ".join(map(str, on_disk["confusion"][0])) + " |" in md
    assert "precision" in md and "f3" in md

    png = (tmp_path / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "confusion.png")
    assert img.shape[0] > 200 and img.shape[1] > 200


def test_write_report_speaker_dependent_flag_and_mismatches(tmp_path):
    df, folds = _predictions()
    for f in folds:
        f["speaker_independent"] = False
    r = reports.write_report(tmp_path, df, LABELS, folds, {})
    assert r.speaker_independent is False
    assert "NOT speaker-independent" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="not in `folds`"):
        reports.write_report(tmp_path, df, LABELS, folds[:2], {})
    extra_fold = [*folds, {"fold": "f4", "test_speakers": ["s4"], "best_epoch": None}]
    with pytest.raises(ValueError, match="no predictions"):
        reports.write_report(tmp_path, df, LABELS, extra_fold, {})


def test_validate_report_rejects_broken_reports(tmp_path):
    df, folds = _predictions()
    good = reports.write_report(
        tmp_path, df, LABELS, folds, {"n_params": 1, "seconds": 1.0}
    ).to_dict()
    reports.validate_report(good)
    for mutate, msg in (
        (lambda d: d.pop("ua"), "missing key 'ua'"),
        (lambda d: d.__setitem__("ua_ci95", [0.9, 0.1]), "ua_ci95"),
        (lambda d: d.__setitem__("wa", 1.5), "wa must"),
        (lambda d: d["confusion"].pop(), "confusion"),
        (lambda d: d["folds"][0].pop("best_epoch"), "best_epoch"),
        (lambda d: d.__setitem__("n_params", -3), "n_params"),
    ):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        with pytest.raises(ValueError, match=msg):
            reports.validate_report(bad)
