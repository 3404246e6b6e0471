"""How often one generator's answers beat another's: raw and length-controlled win rates with 95% bootstrap
intervals over prompts, the change in answer length, Wilson intervals for human verdicts, and the rule that
promotes a tuned version.

Length control follows AlpacaEval 2's LC win rate: fit P(new wins) = sigmoid(theta + phi * tanh(dlen / sd))
by logistic regression over the comparisons (dlen = new answer's length minus the base answer's, in
characters; sd = the standard deviation of dlen over all comparisons) and report sigmoid(theta), the win rate
the fit predicts for answers of equal length. AlpacaEval's per-instruction difficulty term needs many models
and is left out. Each prompt may carry several comparisons (several sampled answers); the bootstrap resamples
prompts, so answers to one prompt move together.
"""

from __future__ import annotations

import numpy as np

from model.stats import wilson_interval

MAX_LENGTH_GROWTH = 0.25  # a version whose answers grew more than this is not promoted
RULE = ("promote only when the lower end of the 95% interval of the length-controlled win rate is above 50%, "
        f"the answers are at most {MAX_LENGTH_GROWTH:.0%} longer on average, and the judge itself ranks held-out "
        "human pairs better than chance (the lower end of its accuracy interval above 50%)")


def outcomes(rewards_new, rewards_base) -> np.ndarray:
    """Per comparison: 1 where the judge scores the new answer higher, 0 where lower, 0.5 on a tie."""
    diff = np.asarray(rewards_new, dtype=float) - np.asarray(rewards_base, dtype=float)
    return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))


def fit_lc(y, x, weights=None, l2: float = 1e-3, iterations: int = 50) -> np.ndarray:
    """(theta, phi) of the logistic fit y ~ sigmoid(theta + phi * x), one row per row of `weights` (B x n
    comparison weights, e.g. bootstrap counts; None: one fit with every weight 1). y may be 0, 0.5 or 1. A
    small ridge keeps the fit finite when one side wins every comparison. Newton's method, all fits at once."""
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    w = np.ones((1, y.size)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    features = np.stack([np.ones_like(x), x], axis=1)  # n x 2
    beta = np.zeros((w.shape[0], 2))
    ridge = l2 * np.eye(2)
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh((beta @ features.T) / 2))  # sigmoid without overflow
        grad = (w * (y - p)) @ features - l2 * beta
        s0, s1, s2 = ((w * p * (1 - p)) @ np.stack([np.ones_like(x), x, x * x], axis=1)).T  # sums of 1, x, x^2
        curvature = np.stack([np.stack([s0, s1], -1), np.stack([s1, s2], -1)], -2) + ridge
        step = np.linalg.solve(curvature, grad[..., None])[..., 0]
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return beta[0] if weights is None else beta


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(np.asarray(z) / 2))


def _interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def win_rate_report(prompt_ids, rewards_new, rewards_base, length_new, length_base, n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """Raw and length-controlled win rate of the new answers over the base answers, with 95% percentile
    bootstrap intervals over prompts, and the relative change in mean answer length with its interval.
    One entry per comparison; `prompt_ids` groups comparisons of the same prompt."""
    y = outcomes(rewards_new, rewards_base)
    if y.size == 0:
        raise ValueError("no comparisons to score")
    length_new, length_base = np.asarray(length_new, dtype=float), np.asarray(length_base, dtype=float)
    delta = length_new - length_base
    sd = float(delta.std())
    x = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    _, groups = np.unique(np.asarray([str(p) for p in prompt_ids]), return_inverse=True)
    n_prompts = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot)  # B x prompts
    weights = counts[:, groups].astype(float)  # B x comparisons
    raw_boot = (weights * y).sum(1) / weights.sum(1)
    growth_boot = (weights * length_new).sum(1) / np.maximum((weights * length_base).sum(1), 1e-9) - 1
    theta, phi = fit_lc(y, x)
    lc_boot = _sigmoid(fit_lc(y, x, weights)[:, 0])
    return {
        "n_prompts": n_prompts, "n_comparisons": int(y.size),
        "wins": int((y == 1).sum()), "losses": int((y == 0).sum()), "ties": int((y == 0.5).sum()),
        "win_rate": float(y.mean()), "win_rate_ci": _interval(raw_boot),
        "lc_win_rate": float(_sigmoid(theta)), "lc_win_rate_ci": _interval(lc_boot),
        "length_coefficient": float(phi), "length_sd": sd,
        "mean_length_base": float(length_base.mean()), "mean_length_new": float(length_new.mean()),
        "length_change": float(length_new.mean() / max(length_base.mean(), 1e-9) - 1),
        "length_change_ci": _interval(growth_boot),
    }


def human_win_rate(wins: int, losses: int, ties: int = 0) -> dict:
    """People's verdicts between two versions: the win rate (a tie counts half) with its Wilson interval."""
    n = wins + losses + ties
    score = wins + ties / 2
    lo, hi = wilson_interval(score, n)
    return {"n": n, "wins": wins, "losses": losses, "ties": ties,
            "win_rate": score / n if n else None, "win_rate_ci": [lo, hi] if n else None}


def judge_note(accuracy: float | None) -> str:
    """What a judge's own accuracy does to the win rates it reports."""
    if accuracy is None:
        return "the judge's own accuracy is unknown: read the win rates with care"
    shrink = 2 * accuracy - 1
    return (f"a judge that agrees with people on {accuracy:.0%} of held-out pairs reads a true win rate w as "
            f"about 50% + {shrink:.2f} x (w - 50%) (if its mistakes fall at random): every figure here is pulled "
            f"toward 50%, e.g. a true 60% reads as {0.5 + shrink * 0.1:.1%}")


def promotion(report: dict, judge_accuracy_ci: list[float] | None = None,
              max_length_growth: float = MAX_LENGTH_GROWTH) -> dict:
    """{"promote": bool, "reasons": [...]} under RULE; every failed condition is named."""
    reasons = []
    low = report["lc_win_rate_ci"][0]
    if not low > 0.5:
        reasons.append(f"the length-controlled win rate's interval reaches down to {low:.1%} (needs > 50%)")
    if report["length_change"] > max_length_growth:
        reasons.append(f"answers grew {report['length_change']:+.0%} (at most {max_length_growth:+.0%} allowed)")
    if judge_accuracy_ci is None:
        reasons.append("the judge's held-out accuracy is unknown")
    elif not judge_accuracy_ci[0] > 0.5:
        reasons.append(f"the judge's held-out accuracy interval reaches down to {judge_accuracy_ci[0]:.1%}: "
                       "it cannot tell better from worse reliably")
    return {"promote": not reasons, "rule": RULE, "reasons": reasons}
