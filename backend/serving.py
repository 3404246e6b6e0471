"""Which reward model scores a project's tasks, loaded once per process and swapped without a restart.

Each call looks at the project's `current` pointer (one small file read). When it names a new version,
the first thread to notice loads it under a lock while the others keep scoring with the old one. Workers
pass a feature-cache folder: their fast-mode versions then score from cached encoder features.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.config import Settings, train_config
from model.store import VersionStore

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class Scorer:
    version: str
    model: object  # model.reward.model.RewardModel


class ModelCache:
    def __init__(self, settings: Settings, store: VersionStore, feature_cache_dir: Path | None = None):
        self.settings = settings
        self.store = store
        self.feature_cache_dir = feature_cache_dir
        self._loaded: dict[int, Scorer] = {}
        self._accuracy: dict[tuple[int, str], float | None] = {}
        self._zero_shot: Scorer | None = None
        self._lock = threading.Lock()

    def version(self, project: int) -> str:
        """The model version Label Studio should know (what /setup answers)."""
        current = self.store.current(project)
        if current:
            return current
        return ZERO_SHOT if self.settings.preannotate == "always" else UNTRAINED

    def scorer(self, project: int) -> Scorer | None:
        """The model whose guesses annotators may see under the PREANNOTATE policy, or None."""
        policy = self.settings.preannotate
        if policy == "never":
            return None
        current = self.store.current(project)
        if current is None:
            return self._zero_shot_scorer() if policy == "always" else None
        if policy == "trained" and not self._good_enough(project, current):
            return None
        return self._load(project, current)

    def _good_enough(self, project: int, version: str) -> bool:
        key = (project, version)
        if key not in self._accuracy:
            self._accuracy[key] = self.store.metrics(project, version).get("val_accuracy")
        accuracy = self._accuracy[key]
        return accuracy is not None and accuracy >= self.settings.preannotate_min_accuracy

    def _load(self, project: int, version: str) -> Scorer | None:
        cached = self._loaded.get(project)
        if cached and cached.version == version:
            return cached
        with self._lock:
            cached = self._loaded.get(project)
            if cached and cached.version == version:
                return cached
            from model.reward.cached import load_scorer

            try:
                scorer = Scorer(version, load_scorer(self.store.path(project, version), self.feature_cache_dir))
            except Exception:  # a bad version must not take /predict down: keep serving the old one
                log.exception("could not load project %s version %s; still serving %s",
                              project, version, cached.version if cached else "nothing")
                return cached
            self._loaded[project] = scorer
            log.info("project %s now served by reward model %s", project, version)
            return scorer

    def _zero_shot_scorer(self) -> Scorer:
        with self._lock:
            if self._zero_shot is None:
                from model.reward.config import MINILM, is_decoder_base
                from model.reward.model import RewardModel

                # Prompt/answer similarity needs a sentence encoder: a causal LM base leaves it to MiniLM.
                base = self.settings.reward_base_model
                self._zero_shot = Scorer(ZERO_SHOT, RewardModel.zero_shot(
                    MINILM if is_decoder_base(base) else base, train_config(self.settings).max_length))
            return self._zero_shot

