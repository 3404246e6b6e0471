"""Scoring a fast-mode version from the feature cache: rescoring every task for a new version is arithmetic.

A fast-mode version is the frozen base encoder (with the pooling layer) under a trained head, so the
features the encoder gives for a (prompt, answer) are the same for every fast-mode version of that base:
they are looked up in the same cache training fills, and only texts never seen go through the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.reward.decoder import KIND, DecoderRewardModel, open_feature_cache
from model.reward.features import FeatureCache
from model.reward.model import REWARD_CONFIG, RewardModel, resolve_base_model


class CachedRewardModel(RewardModel):
    """A RewardModel whose `rewards` read the encoder's features from `cache` (computing the missing ones)."""

    def __init__(self, model: RewardModel, cache: FeatureCache):
        super().__init__(model.model, model.tokenizer, model.max_length, batch_size=model.batch_size)
        self.cache = cache

    def rewards(self, prompts: list[str], answers: list[str]) -> list[float]:
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if not answers:
            return []
        features, _ = self.cache.compute(self.model, self.tokenizer, prompts, answers, self.max_length,
                                         self.batch_size, lambda fraction, message: None)
        return self._head(features)

    def rewards_by_key(self, keys) -> dict[str, float]:
        """{key: reward} for the feature-cache keys (`FeatureCache.key(prompt, answer)`) whose features are
        cached; the others are left out (their texts must go through `rewards`)."""
        present, features = self.cache.cached(keys)
        return dict(zip(present, self._head(features))) if present else {}

    def _head(self, features) -> list[float]:
        import torch

        with torch.inference_mode():  # BERT's head on the first-token state: pooler, then the classifier
            pooled = self.model.base_model.pooler(features.unsqueeze(1))
            return self.model.classifier(pooled)[:, 0].float().tolist()


def load_scorer(path, feature_cache_dir: Path | None) -> RewardModel:
    """The version in `path`, scored from the feature cache when it is a fast-mode version (and a cache
    folder is given; a causal LM's features too), else by full forward passes."""
    config_file = Path(path) / REWARD_CONFIG
    settings = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if settings.get("kind") == KIND:
        cache = None if feature_cache_dir is None else open_feature_cache(
            settings["base_model"], settings["max_length"], settings["prompt_tokens"], feature_cache_dir)
        return DecoderRewardModel.load(path, cache)
    model = RewardModel.load(path)
    pooling = json.loads((Path(path) / "metrics.json").read_text()).get("pooling") \
        if (Path(path) / "metrics.json").is_file() else None
    if feature_cache_dir is None or settings.get("mode") != "fast" or pooling is None:
        return model
    cache = FeatureCache.open(resolve_base_model(settings["base_model"]), model.max_length, pooling, feature_cache_dir)
    return CachedRewardModel(model, cache)
