"""Collection-quality statistics for Ranker projects: how well a model's order agrees with the human's
(Kendall's tau, with a bootstrap interval over tasks), and position bias by displayed slot. Pure functions.

An order is a sequence, best first, whose elements are answer ids or groups of tied ids (a tuple, list or
set: a Ranking's buckets).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Iterable, Sequence

import numpy as np

from model.rankings import Ranking
from model.stats import bootstrap_interval, wilson_interval


def _ranks(order: Sequence) -> dict:
    """{id: position of its group}; an id given twice keeps its first place."""
    ranks: dict = {}
    for position, element in enumerate(order):
        for i in element if isinstance(element, (tuple, list, set, frozenset)) else (element,):
            ranks.setdefault(i, position)
    return ranks


def kendall_tau(first: Sequence, second: Sequence) -> float:
    """Kendall's tau-b between two orders over the ids both contain: 1 the same order, -1 reversed, 0 no
    relation. Ties (groups) count as in tau-b, which equals tau-a for two full orders. nan with fewer than
    two common ids, or when either order ties them all."""
    a, b = _ranks(first), _ranks(second)
    common = [i for i in a if i in b]
    pairs = tied_a = tied_b = score = 0
    for x, y in combinations(common, 2):
        da, db = np.sign(a[x] - a[y]), np.sign(b[x] - b[y])
        pairs += 1
        tied_a += da == 0
        tied_b += db == 0
        score += int(da * db)  # +1 concordant, -1 discordant, 0 tied in either
    denominator = math.sqrt((pairs - tied_a) * (pairs - tied_b))
    return score / denominator if denominator else math.nan


def order_agreement(items: Iterable[tuple], n_boot: int = 1000, seed: int = 0) -> dict:
    """Agreement between a model's order and the human's, from (task_id, model_order, human_order) items.

    Tau is taken per annotation, averaged within a task (several annotators of one prompt are one unit),
    then over tasks; the 95% interval resamples tasks. Returns {"n_tasks", "n_rankings",
    "tau": (mean, low, high), "per_task": {task_id: tau}}; nan where undefined (no task with a defined tau).
    """
    per_task: dict = {}
    n_rankings = 0
    for task_id, model_order, human_order in items:
        tau = kendall_tau(model_order, human_order)
        if math.isfinite(tau):
            per_task.setdefault(task_id, []).append(tau)
            n_rankings += 1
    means = {t: float(np.mean(v)) for t, v in per_task.items()}
    out = {"n_tasks": len(means), "n_rankings": n_rankings, "tau": (math.nan,) * 3, "per_task": means}
    if means:
        values = np.array(list(means.values()))
        out["tau"] = (float(values.mean()), *bootstrap_interval(np.mean, values, n_boot, seed=seed))
    return out


def first_place_by_slot(items: Iterable[tuple]) -> list[dict]:
    """Position bias: how often the answer shown in each slot was ranked first, from (displayed_order,
    human_order) items, displayed_order being the ids top to bottom as shown.

    Answers are shown in random order, so each of k slots should get 1/k of the first places; a Wilson
    95% interval that excludes 1/k flags the slot (annotators favouring the top, or the UI). Items whose
    best group holds several answers, or whose best answer was not shown, are left out. One row per k:
    {"k", "n", "expected", "slots": [{"slot" (1 = top), "first", "share", "low", "high", "flagged"}]}.
    """
    counts: dict[int, list[int]] = {}
    for displayed, human in items:
        displayed = list(displayed or [])
        best = human[0] if len(human) else None
        if isinstance(best, (tuple, list, set, frozenset)):
            best = next(iter(best)) if len(best) == 1 else None
        if best is None or best not in displayed:
            continue
        counts.setdefault(len(displayed), [0] * len(displayed))[displayed.index(best)] += 1
    rows = []
    for k in sorted(counts):
        n = sum(counts[k])
        slots = []
        for slot, first in enumerate(counts[k], 1):
            low, high = wilson_interval(first, n)
            slots.append({"slot": slot, "first": first, "share": first / n, "low": low, "high": high,
                          "flagged": high < 1 / k or low > 1 / k})
        rows.append({"k": k, "n": n, "expected": 1 / k, "slots": slots})
    return rows


def position_bias_by_slot(rankings: Iterable[Ranking]) -> list[dict]:
    """`first_place_by_slot` over the rankings whose annotator started from the task's random order: a
    pre-filled prediction shows the model's order, where a top answer that stays on top is no bias."""
    return first_place_by_slot((r.meta["displayed_order"], r.groups) for r in rankings
                               if r.meta.get("displayed_from") == "data" and r.meta.get("displayed_order"))
