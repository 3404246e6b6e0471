"""Win rates: the length-controlled fit recovers known coefficients, removes a pure length preference and
keeps a real one; the bootstrap resamples prompts; Wilson intervals for people; the promotion rule."""

import numpy as np
import pytest

from model.winrate import fit_lc, human_win_rate, judge_note, outcomes, promotion, win_rate_report


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def simulated(theta, phi, n=600, mean_dlen=0.0, seed=0):
    """n comparisons whose win probability is sigmoid(theta + phi * tanh(dlen / sd)), two per prompt."""
    rng = np.random.default_rng(seed)
    length_base = rng.normal(400, 80, n).clip(20)
    dlen = rng.normal(mean_dlen, 120, n)
    x = np.tanh(dlen / dlen.std())
    won = rng.random(n) < sigmoid(theta + phi * x)
    return np.arange(n) // 2, won.astype(float), np.full(n, 0.5), length_base + dlen, length_base


def test_the_fit_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    x = np.tanh(rng.normal(0, 1, 40000))
    y = (rng.random(x.size) < sigmoid(0.4 + 1.2 * x)).astype(float)
    theta, phi = fit_lc(y, x)
    assert theta == pytest.approx(0.4, abs=0.05) and phi == pytest.approx(1.2, abs=0.08)


def test_a_pure_length_preference_inflates_the_raw_rate_but_not_the_length_controlled_one():
    report = win_rate_report(*simulated(theta=0.0, phi=1.5, mean_dlen=100))
    assert report["win_rate_ci"][0] > 0.55  # longer answers win...
    lo, hi = report["lc_win_rate_ci"]
    assert lo < 0.5 < hi  # ...but at equal length the new version is no better
    assert report["length_change"] == pytest.approx(0.25, abs=0.05)


def test_a_real_gain_survives_length_control():
    report = win_rate_report(*simulated(theta=0.6, phi=1.0, mean_dlen=0))
    assert report["lc_win_rate"] == pytest.approx(sigmoid(0.6), abs=0.05) and report["lc_win_rate_ci"][0] > 0.5
    assert report["n_prompts"] == 300 and report["n_comparisons"] == 600


def test_the_bootstrap_resamples_prompts_not_comparisons():
    """Two comparisons per prompt that always agree carry the information of one: the interval must be as wide
    as for 300 independent comparisons, not 600."""
    rng = np.random.default_rng(3)
    per_prompt = (rng.random(300) < 0.6).astype(float)
    lengths = np.full(600, 100.0)
    paired = win_rate_report(np.arange(600) // 2, np.repeat(per_prompt, 2), np.full(600, 0.5), lengths, lengths)
    single = win_rate_report(np.arange(300), per_prompt, np.full(300, 0.5), lengths[:300], lengths[:300])
    width = lambda r: r["win_rate_ci"][1] - r["win_rate_ci"][0]  # noqa: E731
    assert width(paired) == pytest.approx(width(single), rel=0.15)


def test_ties_count_half_and_equal_lengths_leave_phi_at_zero():
    assert list(outcomes([1, 0, 2], [0, 1, 2])) == [1.0, 0.0, 0.5]
    lengths = np.full(4, 50.0)
    report = win_rate_report([0, 1, 2, 3], [1, 1, 0, 2], [0, 0, 1, 2], lengths, lengths)
    assert report["ties"] == 1 and report["win_rate"] == pytest.approx(0.625) and report["length_coefficient"] == 0


def test_human_win_rate_uses_a_wilson_interval():
    result = human_win_rate(wins=18, losses=2)
    assert result["win_rate"] == 0.9 and result["win_rate_ci"] == pytest.approx([0.699, 0.972], abs=1e-3)
    assert human_win_rate(0, 0)["win_rate"] is None
    assert human_win_rate(1, 1, ties=2)["win_rate"] == 0.5


def test_promotion_needs_every_condition_and_says_which_failed():
    good = {"lc_win_rate_ci": [0.53, 0.61], "length_change": 0.10}
    assert promotion(good, [0.55, 0.65]) == {"promote": True, "rule": promotion(good, [0.55, 0.65])["rule"],
                                             "reasons": []}
    assert "interval reaches down to 49.0%" in promotion({**good, "lc_win_rate_ci": [0.49, 0.6]}, [0.55, 0.65])["reasons"][0]
    assert "grew +40%" in promotion({**good, "length_change": 0.4}, [0.55, 0.65])["reasons"][0]
    assert "cannot tell better from worse" in promotion(good, [0.45, 0.7])["reasons"][0]
    assert not promotion(good, None)["promote"]


def test_the_judge_note_states_the_shrinkage():
    assert "a true 60% reads as 52.2%" in judge_note(0.61)
