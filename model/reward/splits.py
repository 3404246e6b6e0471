"""Held-out pairs grouped by prompt: several annotators' judgements of one task, a ranking's C(k,2) pairs and
the same prompt in two tasks all fall on one side, so held-out figures are measured on prompts the model
never trained on."""

from __future__ import annotations

import random

from model.pairs import PreferencePair
from model.reward.config import TrainConfig


def _prompt_groups(pairs: list[PreferencePair], seed: int) -> list[list[int]]:
    """The pairs' indices grouped by prompt, the groups in a random order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt, []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    return [groups[k] for k in keys]


def split_pairs(pairs: list[PreferencePair], config: TrainConfig) -> tuple[list, list]:
    """(train, held-out): a random `val_fraction` of the distinct prompts is held out with every pair of
    theirs. Below `min_val_pairs` pairs there is no split (everything trains; val_accuracy is reported as
    None)."""
    if len(pairs) < config.min_val_pairs or config.val_fraction <= 0:
        return list(pairs), []
    groups = _prompt_groups(pairs, config.seed)
    n_val = max(1, round(len(groups) * config.val_fraction))
    if n_val >= len(groups):
        return list(pairs), []
    return [pairs[i] for g in groups[n_val:] for i in g], [pairs[i] for g in groups[:n_val] for i in g]


def prompt_folds(pairs: list[PreferencePair], config: TrainConfig) -> list[list[int]] | None:
    """`config.folds` disjoint folds of the pairs' indices, by prompt, for cross-fitting; None when there
    are fewer pairs than `min_val_pairs`, fewer prompts than folds, or one fold is asked for."""
    if config.folds < 2 or len(pairs) < config.min_val_pairs:
        return None
    groups = _prompt_groups(pairs, config.seed)
    if len(groups) < config.folds:
        return None
    return [[i for g in groups[k::config.folds] for i in g] for k in range(config.folds)]
