"""What the backend knows of a project's annotations, kept in Redis and brought up to date incrementally.

A retrain needs every annotation, but reading them all from Label Studio at every event costs N. So the
mirror keeps one record per annotation (the annotation and its task's data), and `AnnotationMirror.sync` brings it up to
date from what changed:
1. the annotation webhooks Label Studio sent (the server queues their payloads in the project's inbox);
2. a catch-up read of the tasks updated since the cursor (`fields=task_only`: ids and timestamps, no
   annotations), for the events that were lost (Label Studio sends each one once, with a 1 s timeout), and
   an export of just those tasks whose timestamp differs from what the mirror holds;
3. a full export only when the mirror is empty (first sync, or Redis lost it) or older than the
   reconciliation interval.
Saving or deleting an annotation updates its task's `updated_at`, and a webhook's task carries that new
value, so a task known from its webhook is not read again. Label Studio stays the source of truth: a task
that a webhook named but the catch-up does not show as changed with that same `updated_at` is read again
(a webhook anyone could have sent trains nothing on its own). The catch-up looks a little before the
cursor (`labelstudio.OVERLAP_SECONDS`), for saves that committed after a later one was already read.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis

from backend.labelstudio import LabelStudioClient

log = logging.getLogger(__name__)

INBOX_LIMIT = 100_000  # events kept when no sync drains them; older ones are caught up by the cursor
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


@dataclass(frozen=True)
class SyncResult:
    events: int        # webhook events applied
    read: int          # tasks whose annotations were read from Label Studio
    full: bool         # a full export was made
    annotations: int   # annotations known after the sync


class AnnotationMirror:
    """One project's annotations as Label Studio last showed them. Keys (prefix = QUEUE_PREFIX):
    `<prefix>:mirror:<p>:annotations` (annotation id -> {"task": {...}, "annotation": {...}}),
    `<prefix>:mirror:<p>:tasks` (task id -> {"updated_at", "annotations": [ids]} as last read),
    `<prefix>:mirror:<p>:state` (cursor, reconciled_at), `<prefix>:inbox:<p>` (webhook payloads not yet
    applied). Every update touches only the tasks it is about."""

    def __init__(self, connection: redis.Redis, prefix: str, project: int):
        self.redis = connection
        self.project = project
        base = f"{prefix}:mirror:{project}"
        self.annotations_key, self.tasks_key, self.state_key = f"{base}:annotations", f"{base}:tasks", f"{base}:state"
        self.inbox_key = f"{prefix}:inbox:{project}"

    # ---------------------------------------------------------------- the inbox (written by the server)

    def push_event(self, action: str, body: dict) -> None:
        """Queue an annotation event's payload for the next sync. Only what a sync needs is kept."""
        if action in ANNOTATION_EVENTS:
            task, annotation = body.get("task"), body.get("annotation")
            if not (isinstance(task, dict) and isinstance(annotation, dict) and "id" in annotation):
                return
            event = {"action": action, "annotation": annotation,
                     "task": {k: task.get(k) for k in ("id", "data", "updated_at")}}
        elif action in ("ANNOTATIONS_DELETED", "TASKS_DELETED"):
            key = "annotations" if action == "ANNOTATIONS_DELETED" else "tasks"
            ids = [i.get("id") for i in body.get(key) or [] if isinstance(i, dict)]
            event = {"action": action, "ids": [i for i in ids if isinstance(i, int)]}
        else:
            return
        pipe = self.redis.pipeline()
        pipe.rpush(self.inbox_key, json.dumps(event))
        pipe.ltrim(self.inbox_key, -INBOX_LIMIT, -1)
        pipe.execute()

    def _drain(self) -> list[dict]:
        pipe = self.redis.pipeline()  # MULTI: nothing pushed between the read and the trim is lost
        pipe.lrange(self.inbox_key, 0, -1)
        pipe.delete(self.inbox_key)
        raw, _ = pipe.execute()
        return [json.loads(e) for e in raw]

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.state_key).items()}

    def count(self) -> int:
        return self.redis.hlen(self.annotations_key)

    def tasks(self) -> list[dict]:
        """The annotated tasks in Label Studio's JSON export form: {"id", "data", "annotations": [...]}."""
        by_task: dict[int, dict] = {}
        for raw in self.redis.hvals(self.annotations_key):
            record = json.loads(raw)
            task = by_task.setdefault(record["task"]["id"], {**record["task"], "annotations": []})
            task["annotations"].append(record["annotation"])
        for task in by_task.values():
            task["annotations"].sort(key=lambda a: a.get("id") or 0)
        return sorted(by_task.values(), key=lambda t: t["id"])

    def clear(self) -> None:
        self.redis.delete(self.annotations_key, self.tasks_key, self.state_key)

    # ---------------------------------------------------------------- updates

    def _entries(self, task_ids) -> dict[int, dict]:
        task_ids = list(task_ids)
        raw = self.redis.hmget(self.tasks_key, task_ids) if task_ids else []
        return {i: json.loads(v) if v else {"updated_at": None, "annotations": []} for i, v in zip(task_ids, raw)}

    def _apply_tasks(self, tasks: list[dict]) -> None:
        """Replace what the mirror holds for these tasks by their annotations (Label Studio export form)."""
        entries = self._entries(t["id"] for t in tasks)
        stale = [a for entry in entries.values() for a in entry["annotations"]]
        pipe = self.redis.pipeline()
        if stale:
            pipe.hdel(self.annotations_key, *stale)
        for task in tasks:
            slim = {"id": task["id"], "data": task.get("data") or {}, "updated_at": task.get("updated_at")}
            annotations = task.get("annotations") or []
            for annotation in annotations:
                pipe.hset(self.annotations_key, annotation["id"], json.dumps({"task": slim, "annotation": annotation}))
            if task.get("updated_at") is None and not annotations:
                pipe.hdel(self.tasks_key, task["id"])  # deleted in Label Studio
            else:
                pipe.hset(self.tasks_key, task["id"], json.dumps(
                    {"updated_at": task.get("updated_at"), "annotations": [a["id"] for a in annotations]}))
        pipe.execute()

    def _apply_event(self, event: dict) -> None:
        action = event["action"]
        if action in ANNOTATION_EVENTS:
            task, annotation = event["task"], event["annotation"]
            entry = self._entries([task["id"]])[task["id"]]
            ids = sorted(set(entry["annotations"]) | {annotation["id"]})
            pipe = self.redis.pipeline()
            pipe.hset(self.annotations_key, annotation["id"], json.dumps({"task": task, "annotation": annotation}))
            pipe.hset(self.tasks_key, task["id"], json.dumps({"updated_at": task.get("updated_at"), "annotations": ids}))
            pipe.execute()
        elif action == "ANNOTATIONS_DELETED" and event["ids"]:
            records = [json.loads(r) for r in self.redis.hmget(self.annotations_key, event["ids"]) if r]
            entries = self._entries({r["task"]["id"] for r in records})
            pipe = self.redis.pipeline()
            pipe.hdel(self.annotations_key, *event["ids"])
            for task_id, entry in entries.items():
                # The deletion changed the task's updated_at, which the event does not carry: the next
                # catch-up reads the task again (None never equals a timestamp).
                entry = {"updated_at": None, "annotations": [a for a in entry["annotations"] if a not in event["ids"]]}
                pipe.hset(self.tasks_key, task_id, json.dumps(entry))
            pipe.execute()
        elif action == "TASKS_DELETED" and event["ids"]:
            self._apply_tasks([{"id": i} for i in event["ids"]])

    def _known_updated_at(self, task_ids: list[int]) -> list[str | None]:
        return [entry["updated_at"] for entry in self._entries(task_ids).values()]

    def _set_state(self, **values) -> None:
        self.redis.hset(self.state_key, mapping={k: str(v) for k, v in values.items()})

    def sync(self, ls: LabelStudioClient, reconcile_seconds: float) -> SyncResult:
        """Bring the mirror up to date with Label Studio; see the module docstring for the three sources."""
        events = self._drain()
        for event in events:
            self._apply_event(event)
        named = {e["task"]["id"] for e in events if e["action"] in ANNOTATION_EVENTS}
        state = self.state()
        reconciled = float(state.get("reconciled_at", 0))
        if "cursor" not in state or time.time() - reconciled > reconcile_seconds:
            # The cursor and the tasks the next catch-up will look at again (its overlap) are read before
            # the export: whatever changes meanwhile is caught up next time.
            cursor = ls.newest_update(self.project)
            recent, _ = ls.tasks_changed_since(self.project, cursor)
            exported = {t["id"]: t for t in ls.export(self.project)}
            self.redis.delete(self.annotations_key, self.tasks_key)
            self._apply_tasks(list(exported.values()) + [t for t in recent if t["id"] not in exported])
            self._set_state(cursor=cursor, reconciled_at=time.time())
            log.info("project %s: full sync, %s annotations on %s tasks", self.project, self.count(), len(exported))
            return SyncResult(len(events), len(exported), True, self.count())

        changed, cursor = ls.tasks_changed_since(self.project, state["cursor"])
        known = self._known_updated_at([t["id"] for t in changed])
        stale = [t for t, seen in zip(changed, known) if t.get("updated_at") != seen]
        stale += [{"id": i} for i in sorted(named - {t["id"] for t in changed})]  # unconfirmed webhooks
        if stale:
            exported = {t["id"]: t for t in ls.export(self.project, [t["id"] for t in stale])}
            # A task deleted since it was listed is absent from the export: its annotations go too.
            self._apply_tasks([{**t, **exported.get(t["id"], {"annotations": []})} for t in stale])
        self._set_state(cursor=cursor)
        return SyncResult(len(events), len(stale), False, self.count())
