"""Which reward model answers /predict for a project, loaded once per process and swapped without a restart.

Each call looks at the project's `current` pointer (one small file read). When it names a new version,
the first thread to notice loads it under a lock while the others keep scoring with the old one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from backend.config import Settings
from model.conversation import prompt_text
from model.pairs import TaskFields
from model.store import VersionStore

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
ZERO_SHOT = "zero-shot"
SCORE_BATCH = 64  # pairs per forward pass


@dataclass(frozen=True)
class Scorer:
    version: str
    model: object  # model.reward.model.RewardModel


class ModelCache:
    def __init__(self, settings: Settings, store: VersionStore):
        self.settings = settings
        self.store = store
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
            from model.reward.model import RewardModel

            try:
                scorer = Scorer(version, RewardModel.load(self.store.path(project, version)))
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
                from model.reward.model import RewardModel

                self._zero_shot = Scorer(ZERO_SHOT, RewardModel.zero_shot(
                    self.settings.reward_base_model, self.settings.reward_max_length))
            return self._zero_shot


def has_answers(data: dict, fields: TaskFields) -> bool:
    return all(isinstance(data.get(k), str) and data[k].strip() for k in (fields.left, fields.right))


def pairwise_result(fields: TaskFields, p_left: float, version: str) -> dict:
    """One prediction in the form Label Studio's editor writes. `score` is the confidence of the pick, so
    sorting tasks by prediction score in Label Studio puts the most uncertain first."""
    return {
        "result": [{"from_name": fields.pairwise, "to_name": fields.pairwise, "type": "pairwise",
                    "value": {"selected": "left" if p_left >= 0.5 else "right"}}],
        "score": round(max(p_left, 1.0 - p_left), 6),
        "model_version": version,
    }


def predict(scorer: Scorer | None, tasks: list[dict], fields: TaskFields) -> list:
    """One item per task, in order. A task that gets no prediction gets `[]` (an empty list of predictions):
    Label Studio then stores nothing for it, so it asks again once answers or a usable model exist."""
    items: list = [[] for _ in tasks]
    if scorer is None:
        return items
    ready = [i for i, t in enumerate(tasks) if has_answers(t.get("data") or {}, fields)]
    for start in range(0, len(ready), SCORE_BATCH):
        chunk = ready[start:start + SCORE_BATCH]
        data = [tasks[i]["data"] for i in chunk]
        p_left = scorer.model.preference([prompt_text(d.get(fields.prompt)) for d in data],
                                         [d[fields.left] for d in data], [d[fields.right] for d in data])
        for i, p in zip(chunk, p_left):
            items[i] = pairwise_result(fields, float(p), scorer.version)
    return items
