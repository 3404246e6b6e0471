"""How good a reward model's preferences are: accuracy with a bootstrap interval, calibration (ECE),
and the plots that go with them (reliability diagram, loss curves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def accuracy_ci(correct, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-pair scores (1 right, 0 wrong, 0.5 tie) and its percentile-bootstrap interval."""
    correct = np.asarray(correct, dtype=float)
    if correct.size == 0:
        raise ValueError("no pairs to score")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, correct.size, size=(n_boot, correct.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(correct.mean()), float(lo), float(hi)


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """Sum over equal-width probability bins of |mean prediction - observed frequency| * bin share."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=float)
    bins = np.clip((probs * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            ece += inside.mean() * abs(probs[inside].mean() - labels[inside].mean())
    return float(ece)


def both_orientations(margins) -> tuple[np.ndarray, np.ndarray]:
    """Chosen-minus-rejected reward margins -> (P(first preferred), label) for both orders of each pair.

    Every pair is oriented chosen-first, so its label is always 1; scoring each pair both ways gives a
    calibration measure that punishes overconfidence on both sides of 0.5.
    """
    p = 0.5 * (1.0 + np.tanh(np.asarray(margins, dtype=float) / 2))  # sigmoid without overflow
    return np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


def margin_metrics(margins, n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy (ties count half), its 95% CI, ECE and mean margin from chosen-minus-rejected margins."""
    margins = np.asarray(margins, dtype=float)
    correct = np.where(margins > 0, 1.0, np.where(margins < 0, 0.0, 0.5))
    accuracy, lo, hi = accuracy_ci(correct, n_boot=n_boot, seed=seed)
    probs, labels = both_orientations(margins)
    return {"n": int(margins.size), "accuracy": accuracy, "ci_low": lo, "ci_high": hi,
            "ece": expected_calibration_error(probs, labels), "mean_margin": float(margins.mean())}


def reliability_diagram(probs, labels, path, n_bins: int = 10, title: str = "Reliability") -> Path:
    """Observed frequency against mean predicted probability per bin, with bin counts; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=float)
    bins = np.clip((probs * n_bins).astype(int), 0, n_bins - 1)
    centers, freqs, counts = [], [], []
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            centers.append(probs[inside].mean())
            freqs.append(labels[inside].mean())
            counts.append(int(inside.sum()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(centers, freqs, "o-", label="model")
    for x, y, c in zip(centers, freqs, counts):
        ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(first preferred)", ylabel="observed frequency",
           title=f"{title} (ECE {expected_calibration_error(probs, labels, n_bins):.3f})")
    ax.legend(loc="upper left")
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves(history: list[dict], path) -> Path:
    """Train (and held-out) loss per epoch from training's history; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    members = sorted({h.get("member") for h in history}, key=lambda m: m or 0)  # [None] for one run
    for member in members:
        runs = [h for h in history if h.get("member") == member]
        epochs = [h["epoch"] for h in runs]
        suffix = f" (member {member})" if member else ""
        ax.plot(epochs, [h["train_loss"] for h in runs], "o-", label="train" + suffix)
        if any(h.get("val_loss") is not None for h in runs):
            ax.plot(epochs, [h.get("val_loss") for h in runs], "o--", label="held-out" + suffix)
        if any(h.get("val_loss_calibrated") is not None for h in runs):  # what full mode picks its point by
            ax.plot(epochs, [h.get("val_loss_calibrated") for h in runs], "s:", label="held-out, calibrated" + suffix)
    ax.axhline(np.log(2), color="grey", linestyle="--", label="chance (ln 2)")
    ax.set(xlabel="epoch", ylabel="Bradley-Terry loss", title="Reward model training")
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
