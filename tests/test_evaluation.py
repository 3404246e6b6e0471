"""Accuracy intervals and calibration on data whose answers are known."""

import numpy as np
import pytest

from model.evaluation import (accuracy_ci, both_orientations, expected_calibration_error, margin_metrics,
                              reliability_diagram)


def test_accuracy_ci_contains_the_truth():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(40):
        correct = rng.random(400) < 0.7
        acc, lo, hi = accuracy_ci(correct, n_boot=500, seed=trial)
        assert lo <= acc <= hi and hi - lo < 0.12
        hits += lo <= 0.7 <= hi
    assert hits >= 34  # a 95% interval: ~38 of 40 expected


def test_accuracy_ci_rejects_empty():
    with pytest.raises(ValueError):
        accuracy_ci([])


def test_ece_of_calibrated_predictor_is_small_and_of_overconfident_is_large():
    rng = np.random.default_rng(0)
    probs = rng.random(20000)
    labels = rng.random(20000) < probs  # outcomes drawn with exactly the predicted probability
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = np.where(probs > 0.5, 0.99, 0.01)
    assert expected_calibration_error(overconfident, labels) > 0.2


def test_margin_metrics_counts_ties_as_half_and_is_symmetric():
    m = margin_metrics([2.0, 1.0, -1.0, 0.0], n_boot=200)
    assert m["n"] == 4 and m["accuracy"] == pytest.approx(0.625) and m["mean_margin"] == pytest.approx(0.5)
    probs, labels = both_orientations([3.0])
    assert probs[0] == pytest.approx(1 - probs[1]) and list(labels) == [1, 0]


def test_reliability_diagram_writes_a_png(tmp_path):
    probs, labels = both_orientations(np.linspace(-3, 3, 50))
    path = reliability_diagram(probs, labels, tmp_path / "r.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
