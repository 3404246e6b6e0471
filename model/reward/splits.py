"""Held-out pairs grouped by prompt: several annotators' judgements of one task, a ranking's C(k,2) pairs and
the same prompt in two tasks all fall on one side, so held-out figures are measured on prompts the model
never trained on."""

from __future__ import annotations

import random

from model.pairs import PreferencePair
from model.reward.config import TrainConfig


def _prompt_groups(pairs: list[PreferencePair], seed: int) -> list[list[PreferencePair]]:
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(p.prompt, []).append(p)
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
    return [p for g in groups[n_val:] for p in g], [p for g in groups[:n_val] for p in g]


def prompt_folds(pairs: list[PreferencePair], config: TrainConfig) -> list[list[int]] | None:
    """`config.folds` disjoint folds of the pairs' indices, by prompt, for cross-fitting; None when there
    are fewer pairs than `min_val_pairs`, fewer prompts than folds, or one fold is asked for."""
    if config.folds < 2 or len(pairs) < config.min_val_pairs:
        return None
    position = {id(p): i for i, p in enumerate(pairs)}
    groups = _prompt_groups(pairs, config.seed)
    if len(groups) < config.folds:
        return None
    return [[position[id(p)] for g in groups[k::config.folds] for p in g] for k in range(config.folds)]
