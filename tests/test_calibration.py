"""Answer settings of a general model (stlser.calibration): default labels, temperatures."""

from __future__ import annotations

import numpy as np
import pytest

from stlser import calibration


def test_default_labels_are_those_two_corpora_teach():
    per = {"emodb": ["angry", "boredom", "disgust", "sad"], "casia": ["angry", "sad", "surprise"]}
    per["nemo"] = ["angry", "sad", "surprise"]
    labels = ["angry", "sad", "surprise", "disgust", "boredom"]
    assert calibration.default_labels(labels, per) == ["angry", "sad", "surprise"]
    assert calibration.default_labels(labels, {"one": labels}) == labels  # one corpus: all


def test_temperature_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(20000, 5))
    for t0 in (0.5, 3.0):
        p = np.exp(calibration.log_softmax(z / t0))
        y = np.array([rng.choice(5, p=row) for row in p])
        got = calibration.fit_temperature(
            [
                (calibration.log_softmax(z[:10000]), y[:10000]),
                (calibration.log_softmax(z[10000:]), y[10000:]),
            ]
        )
        assert abs(got - t0) / t0 < 0.06, (got, t0)
    with pytest.raises(ValueError, match="no row"):
        calibration.fit_temperature([(z[:3], -np.ones(3, int))])


def test_apply_keeps_the_answer_and_softens_it():
    rng = np.random.default_rng(1)
    p = np.exp(calibration.log_softmax(rng.normal(scale=5, size=(50, 6))))
    q = calibration.apply(p, 3.0)
    assert np.allclose(q.sum(1), 1) and (q.argmax(1) == p.argmax(1)).all()
    assert (q.max(1) <= p.max(1) + 1e-12).all() and q.max(1).mean() < p.max(1).mean()
    want = np.exp(np.log(p) / 3.0)
    assert np.allclose(q, want / want.sum(1, keepdims=True))
    assert calibration.apply(p, 1.0) is p


def test_ece_of_a_known_case():
    p = np.array([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    right = np.array([True] * 9 + [False] + [True] * 3 + [False] * 7)
    # bin 0.9: accuracy 0.9 vs 0.9 → 0; bin 0.6: accuracy 0.3 vs 0.6 → 0.3, half the answers
    assert calibration.ece(p, right) == pytest.approx(0.15)


def test_settings_default_and_refusal():
    assert calibration.settings({}) == ({"global": 1.0, "speaker": 1.0}, None)
    temps, labels = calibration.settings({"temperature": {"global": 3.2}, "default_labels": ["a"]})
    assert temps == {"global": 3.2, "speaker": 1.0} and labels == ["a"]
    with pytest.raises(ValueError, match="outside"):
        calibration.settings({"temperature": {"global": 0.0}})
