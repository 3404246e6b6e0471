"""The Bradley-Terry objective both trainers minimise: loss = -log sigmoid(r_chosen - r_rejected [- margin])."""

from __future__ import annotations

from model.reward.config import TrainConfig


def bt_loss(chosen, rejected, config: TrainConfig):
    import torch.nn.functional as F

    loss = -F.logsigmoid(chosen - rejected - config.margin).mean()
    if config.center_rewards_coefficient:
        loss = loss + config.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def margin_loss(margins, config: TrainConfig) -> float:
    """Held-out Bradley-Terry loss from chosen-minus-rejected margins (no centering term)."""
    import torch
    import torch.nn.functional as F

    return -F.logsigmoid(torch.as_tensor(margins, dtype=torch.float32) - config.margin).mean().item()

