"""Collection-quality statistics on Label Studio JSON-export tasks: agreement, position bias, progress over
time, lead times, ties / both-bad, and a learning-curve helper. Pure functions on numpy.

The unit is a `Judgement` (one submitted annotation). Its `label` is what agreement compares: "left",
"right", or "tie" when the optional tie/both-bad Choices (label_config_ties.xml) says tie. "both bad" is a
flag beside the preference, not a preference: an annotator can find both answers bad and still pick the
less bad one, so it only becomes the label when no side was picked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations

import numpy as np

from model.pairs import BOTH_BAD, DEFAULT_FIELDS, TIE, TaskFields, judgement_choices, selected_side
Z95 = 1.959964


@dataclass(frozen=True)
class Judgement:
    task_id: object
    annotation_id: object
    annotator: object
    side: str | None           # "left" / "right" from the Pairwise control
    choices: tuple[str, ...]   # lower-cased values of the tie/both-bad Choices ("tie", "both bad")
    created_at: datetime | None
    lead_time: float | None

    @property
    def tie(self) -> bool:
        return TIE in self.choices

    @property
    def both_bad(self) -> bool:
        return BOTH_BAD in self.choices

    @property
    def label(self) -> str | None:
        if self.tie:
            return TIE
        return self.side or (BOTH_BAD if self.both_bad else None)


def parse_time(value) -> datetime | None:
    """LS timestamps ("2026-11-27T11:20:05.807235Z") as aware datetimes; None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _user(value):
    return value.get("id", value.get("email")) if isinstance(value, dict) else value


def judgements(tasks: list[dict], fields: TaskFields = DEFAULT_FIELDS,
               choices_name: str | None = None) -> list[Judgement]:
    """Submitted annotations of LS JSON-export tasks; skipped (cancelled) ones and ones with neither a side
    nor a tie/both-bad choice are left out (see `skipped_count`)."""
    out = []
    for task in tasks:
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            result = ann.get("result")
            j = Judgement(task.get("id"), ann.get("id"), _user(ann.get("completed_by")),
                          selected_side(result, fields), judgement_choices(result, choices_name),
                          parse_time(ann.get("created_at")), _float(ann.get("lead_time")))
            if j.label is not None:
                out.append(j)
    return out


def skipped_count(tasks: list[dict]) -> int:
    return sum(bool(a.get("was_cancelled")) for t in tasks for a in t.get("annotations") or [])


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- intervals

def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sane at 0/n and n/n, where the normal interval collapses."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(statistic, units: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `statistic(units[resampled rows])`, resampling units (tasks) with replacement.
    Resamples where the statistic is undefined (nan) are dropped; (nan, nan) if all are."""
    units = np.asarray(units)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(units[rng.integers(0, len(units), size=len(units))]) for _ in range(n_boot)],
                      dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


# ---------------------------------------------------------------- agreement
# Units (tasks) are held as a count matrix, units x categories, so that bootstrap resamples are cheap.

def labels_by_task(items: list[Judgement]) -> dict:
    """{task_id: {annotator: label}}; an annotator's later annotation of the same task wins."""
    out: dict = {}
    for j in items:
        out.setdefault(j.task_id, {})[j.annotator] = j.label
    return out


def _counts(units: list[list[str]]) -> np.ndarray:
    cats = {c: i for i, c in enumerate(sorted({c for u in units for c in u}))}
    counts = np.zeros((len(units), max(1, len(cats))))
    for row, labels in enumerate(units):
        for c in labels:
            counts[row, cats[c]] += 1
    return counts


def _percent(counts: np.ndarray) -> float:
    m = counts.sum(axis=1)
    total = (m * (m - 1)).sum()
    return float((counts * (counts - 1)).sum() / total) if total else math.nan


def _alpha(counts: np.ndarray) -> float:
    counts = counts[counts.sum(axis=1) >= 2]
    if len(counts) == 0:
        return math.nan
    weight = 1 / (counts.sum(axis=1) - 1)
    # Coincidences: o[c,k] = sum over units of (pairs of values c,k in the unit) / (values in the unit - 1).
    o = (counts * weight[:, None]).T @ counts - np.diag((counts * weight[:, None]).sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    expected = n * n - (n_c ** 2).sum()
    return math.nan if expected <= 1e-12 else float(1 - (n - 1) * (n - np.trace(o)) / expected)


def percent_agreement(units: list[list[str]]) -> float:
    """Share of agreeing label pairs within units (tasks), over all pairs; nan without any pair."""
    return _percent(_counts(units))


def krippendorff_alpha_nominal(units: list[list[str]]) -> float:
    """Krippendorff's alpha for nominal labels: 1 - (n-1) * disagreeing coincidences / expected ones.
    Handles any number of annotators per unit and missing labels; units with one label are not pairable
    and ignored. nan when there is no variation at all (expected disagreement 0)."""
    return _alpha(_counts(units))


def _kappa(codes: np.ndarray) -> float:
    """Cohen's kappa from an (items, 2) array of integer category codes."""
    if len(codes) == 0:
        return math.nan
    k = int(codes.max()) + 1
    po = float(np.mean(codes[:, 0] == codes[:, 1]))
    pe = float(np.bincount(codes[:, 0], minlength=k) @ np.bincount(codes[:, 1], minlength=k)) / len(codes) ** 2
    return math.nan if pe >= 1 - 1e-12 else (po - pe) / (1 - pe)


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two annotators over the same items; nan when chance agreement is 1 (both always
    gave one and the same label), where kappa is undefined."""
    if len(a) != len(b):
        raise ValueError("both annotators must label the same items")
    cats = {c: i for i, c in enumerate(sorted(set(a) | set(b)))}
    return _kappa(np.array([[cats[x], cats[y]] for x, y in zip(a, b)], dtype=int).reshape(-1, 2))


def agreement(items: list[Judgement], n_boot: int = 1000, seed: int = 0) -> dict:
    """Agreement on tasks labelled by two or more annotators, with bootstrap intervals over tasks.

    Returns {"n_tasks", "n_multi", "percent": (value, lo, hi), "alpha": (value, lo, hi),
    "pairs": [{"annotators": (a, b), "n", "percent", "kappa": (value, lo, hi)}],
    "disagreements": [{"task_id", "labels": {annotator: label}}]}. Values are nan where undefined.
    """
    by_task = labels_by_task(items)
    multi = {t: labels for t, labels in by_task.items() if len(labels) >= 2}
    out = {"n_tasks": len(by_task), "n_multi": len(multi), "percent": (math.nan,) * 3,
           "alpha": (math.nan,) * 3, "pairs": [], "disagreements": []}
    if not multi:
        return out
    counts = _counts([list(labels.values()) for labels in multi.values()])
    out["percent"] = (_percent(counts), *bootstrap_interval(_percent, counts, n_boot, seed=seed))
    out["alpha"] = (_alpha(counts), *bootstrap_interval(_alpha, counts, n_boot, seed=seed))
    cats = {c: i for i, c in enumerate(sorted({c for labels in multi.values() for c in labels.values()}))}
    annotators = sorted({a for labels in multi.values() for a in labels}, key=str)
    for a, b in combinations(annotators, 2):
        codes = np.array([[cats[labels[a]], cats[labels[b]]] for labels in multi.values()
                          if a in labels and b in labels], dtype=int).reshape(-1, 2)
        if len(codes) == 0:
            continue
        out["pairs"].append({"annotators": (a, b), "n": len(codes),
                             "percent": float(np.mean(codes[:, 0] == codes[:, 1])),
                             "kappa": (_kappa(codes), *bootstrap_interval(_kappa, codes, n_boot, seed=seed))})
    out["disagreements"] = [{"task_id": t, "labels": labels} for t, labels in multi.items()
                            if len(set(labels.values())) > 1]
    return out


# ---------------------------------------------------------------- position bias

def position_bias(items: list[Judgement]) -> dict:
    """Share of "left" picks among left/right picks (ties excluded), overall and per annotator, with Wilson
    95% intervals. Answers are shown in random order, so an interval that excludes 0.5 flags an annotator
    (or the UI) favouring a side. Returns {"overall": row, "annotators": [row]}, row = {"annotator", "n",
    "left", "share", "low", "high", "flagged"}."""
    def row(annotator, picks):
        n, left = len(picks), sum(s == "left" for s in picks)
        low, high = wilson_interval(left, n)
        return {"annotator": annotator, "n": n, "left": left, "share": left / n if n else math.nan,
                "low": low, "high": high, "flagged": n > 0 and (high < 0.5 or low > 0.5)}

    sided = [j for j in items if j.side in ("left", "right") and not j.tie]
    per: dict = {}
    for j in sided:
        per.setdefault(j.annotator, []).append(j.side)
    return {"overall": row("all", [j.side for j in sided]),
            "annotators": [row(a, per[a]) for a in sorted(per, key=str)]}


# ---------------------------------------------------------------- progress, lead times, ties

def timeline(items: list[Judgement]) -> dict:
    """Labelled count over time from annotation created_at: sorted times, the cumulative count, and a rate
    per bucket (hour, or day when the work spans more than three days; minute under two hours)."""
    times = sorted(j.created_at for j in items if j.created_at is not None)
    if not times:
        return {"times": [], "cumulative": [], "bucket": None, "buckets": [], "per_bucket": []}
    span = (times[-1] - times[0]).total_seconds()
    bucket = 60 if span < 2 * 3600 else 3600 if span < 3 * 86400 else 86400
    name = {60: "minute", 3600: "hour", 86400: "day"}[bucket]
    stamps = np.array([t.timestamp() for t in times])
    start = math.floor(stamps[0] / bucket) * bucket
    counts = np.bincount(((stamps - start) // bucket).astype(int))
    starts = [datetime.fromtimestamp(start + i * bucket, tz=times[0].tzinfo) for i in range(len(counts))]
    return {"times": times, "cumulative": list(range(1, len(times) + 1)), "bucket": name,
            "buckets": starts, "per_bucket": counts.tolist()}


def lead_times(items: list[Judgement]) -> list[dict]:
    """Per annotator (then "all"): n, median and p90 of lead_time in seconds (the time LS measured on the
    task). Annotators without any lead time are left out."""
    per: dict = {}
    for j in items:
        if j.lead_time is not None:
            per.setdefault(j.annotator, []).append(j.lead_time)

    def row(annotator, values):
        v = np.asarray(values)
        return {"annotator": annotator, "n": int(v.size), "median": float(np.median(v)),
                "p90": float(np.percentile(v, 90))}

    rows = [row(a, per[a]) for a in sorted(per, key=str)]
    if per:
        rows.append(row("all", [x for v in per.values() for x in v]))
    return rows


def judgement_counts(tasks: list[dict], items: list[Judgement]) -> dict:
    """Tasks, labelled tasks, submitted and skipped annotations, annotators, ties and both-bad."""
    return {"tasks": len(tasks), "labelled_tasks": len({j.task_id for j in items}),
            "annotations": len(items), "skipped": skipped_count(tasks),
            "annotators": len({j.annotator for j in items}),
            "ties": sum(j.tie for j in items), "both_bad": sum(j.both_bad for j in items)}


# ---------------------------------------------------------------- learning curve

def fit_bradley_terry(diffs: np.ndarray, l2: float = 1e-2, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    """Linear Bradley-Terry on feature differences (chosen - rejected): logistic regression through the
    origin, by gradient descent on the mean loss + l2/2 |w|^2. The fast mode's head, linearised, so a
    learning curve costs milliseconds per point."""
    x = np.asarray(diffs, dtype=float)
    scale = x.std() or 1.0  # keeps the step size sensible for any feature scale
    x = x / scale
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        w -= lr * ((x.T @ (p - 1)) / len(x) + l2 * w)
    return w / scale


def learning_curve(chosen: np.ndarray, rejected: np.ndarray, groups=None, sizes=None,
                   test_fraction: float = 0.25, repeats: int = 5, seed: int = 0) -> dict:
    """Held-out accuracy against the number of labelled pairs, from per-pair features (e.g. the frozen
    encoder's fast-mode features of chosen and rejected answers).

    Each repeat splits the comparisons (`groups`, e.g. task ids, so duplicates stay on one side) into test
    and pool, trains `fit_bradley_terry` on the first n pool pairs for each size and scores the test pairs.
    Returns {"sizes", "mean", "low", "high"}: mean accuracy and a 95% interval across repeats (normal
    approximation; with one repeat, low = high = mean)."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    n = len(chosen)
    if groups is None:
        groups = np.arange(n)
    else:
        ids: dict = {}
        groups = np.asarray([ids.setdefault(g, len(ids)) for g in groups])
    keys = np.unique(groups)
    if len(keys) < 4:
        return {"sizes": [], "mean": [], "low": [], "high": []}
    rng = np.random.default_rng(seed)
    n_test_keys = max(1, round(len(keys) * test_fraction))
    if sizes is None:  # about the pool size after the test split
        top = max(4, round(n * (1 - test_fraction)))
        sizes = sorted({int(s) for s in np.geomspace(4, top, 8).round()})
    acc = np.full((repeats, len(sizes)), np.nan)
    diffs = chosen - rejected
    for r in range(repeats):
        test_keys = rng.permutation(keys)[:n_test_keys]
        is_test = np.isin(groups, test_keys)
        pool = rng.permutation(np.nonzero(~is_test)[0])
        test = np.nonzero(is_test)[0]
        for i, size in enumerate(sizes):
            if size > len(pool):
                continue
            w = fit_bradley_terry(diffs[pool[:size]])
            acc[r, i] = float(np.mean(diffs[test] @ w > 0))
    sizes_kept, mean, low, high = [], [], [], []
    for i, size in enumerate(sizes):
        column = acc[:, i][np.isfinite(acc[:, i])]
        if column.size == 0:
            continue
        half = Z95 * column.std(ddof=1) / math.sqrt(column.size) if column.size > 1 else 0.0
        sizes_kept.append(size)
        mean.append(float(column.mean()))
        low.append(float(column.mean() - half))
        high.append(float(column.mean() + half))
    return {"sizes": sizes_kept, "mean": mean, "low": low, "high": high}
