"""Ranker statistics on hand-computed cases: Kendall's tau against a model's order, position bias by slot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import FIXTURES
from model.ranking_stats import first_place_by_slot, kendall_tau, order_agreement, position_bias_by_slot
from model.rankings import rankings_from_tasks


@pytest.mark.parametrize("first, second, tau", [
    ("abcd", "abcd", 1.0),
    ("abcd", "dcba", -1.0),
    ("abcd", "bacd", (5 - 1) / 6),           # one swapped pair of six
    ("abcd", "badc", (4 - 2) / 6),
    ("abcde", "eabcd", (6 - 4) / 10),        # e moved from last to first: 4 discordant pairs
    ("abc", "cxab", (1 - 2) / 3),            # x is in one order only: pairs over a, b, c; c first: 2 discordant
    ([("a", "b"), "c"], "abc", 2 / math.sqrt(2 * 3)),  # tau-b: a, b tied in the first order
    ([("a", "b"), ("c", "d")], "abcd", 4 / math.sqrt(4 * 6)),
    ([("a", "b"), ("c", "d")], [("a", "c"), ("b", "d")], 0.0),  # (a,d) concordant, (b,c) discordant, 4 ties
])
def test_kendall_tau_hand_computed(first, second, tau):
    assert kendall_tau(list(first), list(second)) == pytest.approx(tau)
    assert kendall_tau(list(second), list(first)) == pytest.approx(tau)  # symmetric


@pytest.mark.parametrize("first, second", [("a", "a"), ("ab", "cd"), ([("a", "b")], "ab"), ("", "")])
def test_kendall_tau_undefined_is_nan(first, second):
    assert math.isnan(kendall_tau(list(first), list(second)))


def test_order_agreement_averages_annotators_within_a_task_then_tasks():
    items = [(1, "abcd", "abcd"),            # tau 1
             (1, "abcd", "dcba"),            # tau -1: task 1 averages to 0
             (2, "abcd", "bacd"),            # tau 2/3
             (3, "ab", "a")]                 # undefined: left out
    out = order_agreement([(t, list(m), list(h)) for t, m, h in items], n_boot=200)
    assert out["per_task"] == pytest.approx({1: 0.0, 2: 2 / 3})
    assert out["n_tasks"] == 2 and out["n_rankings"] == 3
    mean, low, high = out["tau"]
    assert mean == pytest.approx(1 / 3) and 0.0 <= low <= mean <= high <= 2 / 3


def test_order_agreement_interval_covers_a_known_tau():
    # The human agrees with the model except one random adjacent swap of four: tau = 2/3 on every task.
    rng = np.random.default_rng(0)
    items = []
    for t in range(300):
        human = list("abcd")
        i = int(rng.integers(0, 3))
        human[i], human[i + 1] = human[i + 1], human[i]
        items.append((t, list("abcd") if t % 2 else list("dcba"), human))  # half of the model orders reversed
    out = order_agreement(items, n_boot=300)
    mean, low, high = out["tau"]
    assert mean == pytest.approx(0.0, abs=1e-9)  # (+2/3 - 2/3) / 2 exactly, 150 tasks each
    assert low < 0 < high and high - low < 0.3


def test_order_agreement_without_data_is_nan():
    out = order_agreement([])
    assert out["n_tasks"] == 0 and all(math.isnan(v) for v in out["tau"])


def test_first_place_by_slot_counts_the_top_choice_per_displayed_slot():
    shown = ["s1", "s2", "s3", "s4"]
    items = [(shown, ["s1", "s3", "s2", "s4"])] * 6 + [(shown, ["s2", "s1", "s3", "s4"])] * 2 + \
            [(shown, [("s3", "s4"), ("s1", "s2")])] + [(shown, ["zz", "s1"])] + [(["x", "y"], ["y", "x"])]
    rows = first_place_by_slot(items)
    assert [row["k"] for row in rows] == [2, 4]
    two, four = rows
    assert two["n"] == 1 and [s["first"] for s in two["slots"]] == [0, 1]
    assert four["n"] == 8 and four["expected"] == 0.25  # a tied top group and an unknown top are left out
    assert [s["first"] for s in four["slots"]] == [6, 2, 0, 0]
    assert [s["share"] for s in four["slots"]] == [0.75, 0.25, 0, 0]
    top = four["slots"][0]
    assert top["slot"] == 1 and top["low"] > 0.25 and top["flagged"]  # Wilson [0.41, 0.93] excludes 1/4
    assert not four["slots"][1]["flagged"]


def test_no_bias_is_not_flagged():
    rng = np.random.default_rng(1)
    shown = ["s1", "s2", "s3", "s4"]
    items = [(shown, list(rng.permutation(shown))) for _ in range(2000)]
    [row] = first_place_by_slot(items)
    assert not any(s["flagged"] for s in row["slots"])
    assert all(abs(s["share"] - 0.25) < 0.04 for s in row["slots"])


def test_position_bias_uses_only_annotations_that_started_from_the_random_order():
    tasks = json.loads((FIXTURES / "ls-1.23.2-ranker-tasks-API.json").read_text())
    rankings = rankings_from_tasks(tasks)
    rows = position_bias_by_slot(rankings)
    # Nine rankings: two started from a prediction; the task with three whole-number ids has k=3.
    assert [(row["k"], row["n"]) for row in rows] == [(3, 1), (4, 6)]
    assert sum(s["first"] for s in rows[1]["slots"]) == 6
