"""Temperature scaling of a trained reward model: one scalar T, fitted on the held-out pairs, divides every
reward. It changes no ranking (so no accuracy), only how confident P(chosen) = sigmoid(margin / T) is, and it
is folded into the classifier's weights, so the saved folder stays a stock model."""

from __future__ import annotations

import math


def _fit(margins, weights) -> tuple[float, float]:
    """(T, loss): the T minimising the (weighted) held-out Bradley-Terry loss of margins / T, searched on a log
    grid from 1/4 to 4 (a coarse grid is enough: the loss is flat near its minimum), and that loss."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(margins, dtype=torch.float64)
    w = torch.ones_like(m) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    grid = [math.exp(math.log(4) * (k / 40 - 1)) for k in range(81)]
    losses = [((F.softplus(-m / t) * w).sum() / w.sum()).item() for t in grid]
    best = min(range(len(grid)), key=losses.__getitem__)
    return grid[best], losses[best]


def fit_temperature(margins, weights=None) -> float:
    """The temperature the held-out margins call for (see `_fit`)."""
    return _fit(margins, weights)[0]


def calibrated_loss(margins, weights=None) -> float:
    """The held-out loss the margins would have once divided by their fitted temperature: what a point of a
    training run would score as served, when serving is calibrated. A run's later points are often
    overconfident, which raises their plain loss but not this one."""
    return _fit(margins, weights)[1]


def scale_rewards(model, factor: float) -> bool:
    """Multiply every reward the model gives by `factor`, through its final linear layer (BERT's
    `classifier`, the `score` head of decoder models); False (unchanged) when it has none."""
    import torch

    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        return False
    with torch.no_grad():
        head.weight.mul_(factor)
        if head.bias is not None:
            head.bias.mul_(factor)
    return True
