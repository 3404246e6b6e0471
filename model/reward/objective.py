"""The Bradley-Terry objective both trainers minimise: the weighted mean over pairs of
-log sigmoid(r_chosen - r_rejected [- margin]), each pair weighted by its `PreferencePair.weight` (a ranking
of k answers gives C(k,2) pairs of weight 1/C(k,2), so the ranking counts once). Weights of 1 give the
plain mean."""

from __future__ import annotations

from model.reward.config import TrainConfig


def _weighted_mean(values, weights):
    if weights is None:
        return values.mean()
    weights = weights.to(values)
    return (values * weights).sum() / weights.sum()


def bt_loss(chosen, rejected, config: TrainConfig, weights=None):
    import torch.nn.functional as F

    loss = _weighted_mean(-F.logsigmoid(chosen - rejected - config.margin), weights)
    if config.center_rewards_coefficient:
        loss = loss + config.center_rewards_coefficient * _weighted_mean((chosen + rejected) ** 2, weights)
    return loss


def margin_loss(margins, config: TrainConfig, weights=None) -> float:
    """Held-out Bradley-Terry loss from chosen-minus-rejected margins (no centering term)."""
    import torch
    import torch.nn.functional as F

    losses = -F.logsigmoid(torch.as_tensor(margins, dtype=torch.float32) - config.margin)
    return _weighted_mean(losses, None if weights is None else torch.as_tensor(weights)).item()


def pair_weights(pairs):
    """The pairs' loss weights as a float tensor."""
    import torch

    weights = [p.weight for p in pairs]
    if any(not w > 0 for w in weights):  # also catches NaN
        raise ValueError("every preference pair needs a positive weight")
    return torch.tensor(weights, dtype=torch.float32)
