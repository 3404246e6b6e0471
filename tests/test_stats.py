"""Collection-quality statistics on data with a known answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import FIXTURES, ROOT
from model.stats import (Judgement, agreement, cohen_kappa, judgement_choices, judgement_counts, judgements,
                         krippendorff_alpha_nominal, lead_times, learning_curve, percent_agreement,
                         position_bias, timeline, wilson_interval)
from synthetic_export import annotation_result


def ann(annotator, side=None, choices=(), minute=0, lead=None, cancelled=False, aid=None):
    return {"id": aid, "completed_by": annotator, "result": annotation_result(side, *choices),
            "was_cancelled": cancelled, "lead_time": lead, "created_at": f"2026-11-27T10:{minute:02d}:00.000000Z"}


def task(tid, *annotations):
    return {"id": tid, "data": {"prompt": "p", "answer1": "a", "answer2": "b"}, "annotations": list(annotations)}


def j(task_id, annotator, label):
    side = label if label in ("left", "right") else None
    choices = (label,) if label in ("tie", "both bad") else ()
    return Judgement(task_id, None, annotator, side, choices, None, None)


def test_identical_annotators_agree_fully():
    rng = np.random.default_rng(1)
    items = []
    for t in range(60):
        side = rng.choice(["left", "right"])
        items += [j(t, "ann", side), j(t, "bob", side)]
    out = agreement(items, n_boot=200)
    assert out["n_multi"] == 60 and not out["disagreements"]
    assert out["percent"][0] == 1.0 and out["alpha"][0] == pytest.approx(1.0)
    (pair,) = out["pairs"]
    assert pair["annotators"] == ("ann", "bob") and pair["n"] == 60
    assert pair["kappa"][0] == pytest.approx(1.0) and pair["kappa"][1] == pytest.approx(1.0)


def test_independent_random_annotators_have_kappa_near_zero():
    rng = np.random.default_rng(2)
    items = []
    for t in range(2000):
        items += [j(t, "ann", rng.choice(["left", "right"])), j(t, "bob", rng.choice(["left", "right"]))]
    out = agreement(items, n_boot=200)
    kappa, lo, hi = out["pairs"][0]["kappa"]
    assert abs(kappa) < 0.05 and lo < 0 < hi
    assert abs(out["alpha"][0]) < 0.05
    assert out["percent"][0] == pytest.approx(0.5, abs=0.03)
    assert len(out["disagreements"]) == pytest.approx(1000, rel=0.1)


def test_kappa_and_alpha_textbook_values():
    # 2x2 table: both left 20, both right 15, ann left/bob right 5, ann right/bob left 10 (n=50).
    a = ["left"] * 20 + ["right"] * 15 + ["left"] * 5 + ["right"] * 10
    b = ["left"] * 20 + ["right"] * 15 + ["right"] * 5 + ["left"] * 10
    po, pe = 35 / 50, (25 / 50) * (30 / 50) + (25 / 50) * (20 / 50)
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    # Krippendorff's nominal alpha for two coders, no missing data: 1 - (n-1) * D_o / sum n_c n_k (c != k).
    n, n_left = 100, 25 + 30
    assert krippendorff_alpha_nominal([[x, y] for x, y in zip(a, b)]) == pytest.approx(
        1 - (n - 1) * 2 * 15 / (2 * n_left * (n - n_left)))
    assert math.isnan(cohen_kappa(["left"] * 5, ["left"] * 5))  # no variation: undefined, not 1
    assert percent_agreement([["left", "left", "right"]]) == pytest.approx(1 / 3)


def test_agreement_interval_contains_truth():
    # Bob copies Ann with probability 0.8, else picks at random: expected raw agreement 0.9.
    rng = np.random.default_rng(3)
    items = []
    for t in range(400):
        side = rng.choice(["left", "right"])
        other = side if rng.random() < 0.8 else rng.choice(["left", "right"])
        items += [j(t, "ann", side), j(t, "bob", other)]
    value, lo, hi = agreement(items, n_boot=300)["percent"]
    assert lo < 0.9 < hi and lo < value < hi


def test_always_left_annotator_is_flagged():
    rng = np.random.default_rng(4)
    items = [j(t, "lefty", "left") for t in range(40)]
    items += [j(t, "fair", rng.choice(["left", "right"])) for t in range(200)]
    items += [j(t, "fair", "tie") for t in range(200, 220)]  # ties have no side: not counted
    out = position_bias(items)
    rows = {r["annotator"]: r for r in out["annotators"]}
    assert rows["lefty"]["flagged"] and rows["lefty"]["share"] == 1.0 and rows["lefty"]["low"] > 0.9
    assert not rows["fair"]["flagged"] and rows["fair"]["n"] == 200
    assert rows["fair"]["low"] < 0.5 < rows["fair"]["high"]
    assert out["overall"]["n"] == 240


def test_wilson_interval_covers_the_truth():
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(400):
        k = int((rng.random(50) < 0.3).sum())
        lo, hi = wilson_interval(k, 50)
        covered += lo <= 0.3 <= hi
    assert 0.92 <= covered / 400 <= 0.98
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_ties_and_both_bad_are_read_from_choices():
    tasks = [task(1, ann(1, "left", minute=1, lead=2.0), ann(2, None, ["tie"], minute=2, lead=4.0)),
             task(2, ann(1, "right", ["both bad"], minute=3, lead=6.0), ann(2, cancelled=True)),
             task(3, ann(1, None, ["Both bad"], minute=4))]
    items = judgements(tasks)
    assert [x.label for x in items] == ["left", "tie", "right", "both bad"]
    counts = judgement_counts(tasks, items)
    assert counts == {"tasks": 3, "labelled_tasks": 3, "annotations": 4, "skipped": 1, "annotators": 2,
                      "ties": 1, "both_bad": 2}
    # Only the named control counts when a name is given; unnamed: only tie/both-bad values.
    result = [{"type": "choices", "from_name": "topic", "value": {"choices": ["sports"]}},
              {"type": "choices", "from_name": "judgement", "value": {"choices": ["tie"]}}]
    assert judgement_choices(result) == ("tie",)
    assert judgement_choices(result, "topic") == ("sports",)


def test_lead_times_and_timeline():
    tasks = [task(t, ann("a", "left", minute=t, lead=float(t + 1))) for t in range(10)]
    tasks.append(task(99, ann("b", "right", minute=30, lead=None)))
    items = judgements(tasks)
    rows = {r["annotator"]: r for r in lead_times(items)}
    assert rows["a"]["median"] == pytest.approx(5.5) and rows["a"]["p90"] == pytest.approx(9.1)
    assert "b" not in rows and rows["all"]["n"] == 10
    tl = timeline(items)
    assert tl["cumulative"][-1] == 11 and tl["bucket"] == "minute"
    assert sum(tl["per_bucket"]) == 11 and len(tl["per_bucket"]) == 31


def test_captured_export_parses():
    tasks = json.loads((FIXTURES / "ls-1.23.2-export-JSON.json").read_text())
    items = judgements(tasks)
    assert len(items) == 2 and {x.side for x in items} == {"left", "right"}
    assert agreement(items)["n_multi"] == 0  # single-annotated: no agreement figures, no crash


def test_learning_curve_rises_on_separable_features():
    rng = np.random.default_rng(6)
    truth = rng.normal(size=16)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    noisy = (a - b) @ truth + rng.logistic(size=600) * 2 > 0
    chosen, rejected = np.where(noisy[:, None], a, b), np.where(noisy[:, None], b, a)
    curve = learning_curve(chosen, rejected, sizes=[8, 400], repeats=3)
    assert curve["sizes"] == [8, 400]
    assert curve["mean"][1] > 0.75 and curve["mean"][1] > curve["mean"][0]
    assert all(lo <= m <= hi for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"]))


def test_ties_label_config_parses():
    from backend.labels import parse_label_config

    fields = parse_label_config((ROOT / "label_config_ties.xml").read_text())
    assert (fields.pairwise, fields.prompt, fields.left, fields.right) == ("comparison", "prompt", "answer1", "answer2")
    assert 'name="judgement"' in (ROOT / "label_config_ties.xml").read_text()
