"""What a refresh needs of each unlabelled task, kept between refreshes so that it reads only what changed.

A new fast-mode version rescores every unlabelled task from cached encoder features, so the refresh needs
no text, only each answer's feature-cache key (a hash of prompt and answer). Reading every unlabelled task
from Label Studio costs about 3 ms a task (32 s at 10,000 tasks, on PostgreSQL), longer than the scoring and
half the refresh; the index makes that read one filtered list of the tasks updated since its cursor. An
annotation saved or deleted, and an answer written, change a task's `updated_at`, so that list also says
which tasks left (or came back to) the unlabelled set. A deleted task changes nothing Label Studio lists:
the refresh drops the index when an import names a task that is gone, and a full read rebuilds it, as it
does once per reconciliation interval (RECONCILE_HOURS) and whenever Redis has lost it.

Keys (prefix = QUEUE_PREFIX): `<prefix>:index:<p>:tasks` (task id -> {answer id: feature key}),
`<prefix>:index:<p>:state` (cursor, built_at).
"""

from __future__ import annotations

import json
import time

import redis

from backend.predictions import answers_of, has_answers, prompt_text
from model.reward.features import FeatureCache


def feature_keys(task: dict, fields) -> dict[str, str] | None:
    """{answer id: feature key} of an unlabelled task with its answers, else None (not to be scored)."""
    data = task.get("data") or {}
    if task.get("total_annotations") or not has_answers(data, fields):
        return None
    prompt = prompt_text(data.get(fields.prompt))
    return {slot: FeatureCache.key(prompt, text) for slot, text in answers_of(data, fields).items()}


class UnlabelledIndex:
    def __init__(self, connection: redis.Redis, prefix: str, project: int):
        self.redis = connection
        base = f"{prefix}:index:{project}"
        self.tasks_key, self.state_key = f"{base}:tasks", f"{base}:state"

    def state(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.state_key).items()}

    def fresh(self, reconcile_seconds: float) -> bool:
        """Built, and not longer ago than the reconciliation interval."""
        state = self.state()
        return "cursor" in state and time.time() - float(state.get("built_at", 0)) <= reconcile_seconds

    def entries(self) -> dict[int, dict[str, str]]:
        return {int(k): json.loads(v) for k, v in self.redis.hgetall(self.tasks_key).items()}

    def rebuild(self, tasks: list[dict], fields, cursor: str) -> None:
        """Hold exactly these tasks (a full read of the unlabelled ones, made after `cursor` was read)."""
        pipe = self.redis.pipeline()  # MULTI: a reader never sees half an index
        pipe.delete(self.tasks_key)
        self._put(pipe, tasks, fields)
        pipe.hset(self.state_key, mapping={"cursor": cursor, "built_at": time.time()})
        pipe.execute()

    def update(self, tasks: list[dict], fields, cursor: str) -> None:
        """Apply tasks updated since the cursor: each is put in, or taken out when labelled (or its answers
        are not there)."""
        pipe = self.redis.pipeline()
        self._put(pipe, tasks, fields)
        pipe.hset(self.state_key, "cursor", cursor)
        pipe.execute()

    def _put(self, pipe, tasks: list[dict], fields) -> None:
        for task in tasks:
            keys = feature_keys(task, fields)
            if keys is None:
                pipe.hdel(self.tasks_key, task["id"])
            else:
                pipe.hset(self.tasks_key, task["id"], json.dumps(keys))

    def clear(self) -> None:
        self.redis.delete(self.tasks_key, self.state_key)
