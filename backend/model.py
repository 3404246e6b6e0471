"""RLHFPreferenceModel: what Label Studio's ML-backend contract means for this backend. Start reading here.

Label Studio calls four things on a model (label-studio-ml's `LabelStudioMLBase` has the same shape):
- `setup`: the project's label config, checked once per config; answers the model version Label Studio
  should know. Cheap: Label Studio calls it before every prediction batch, with a 3 s timeout.
- `predict`: one prediction per task, in order, from the reward model already loaded in this process (the
  result form is in backend/predictions.py, shared with the jobs that write predictions in bulk).
- `fit`: an event (a webhook) becomes a job on the queue; nothing slow happens here (1 s timeout, no
  retry). Annotation events also go into the project's inbox, so the train job reads them from there
  instead of from Label Studio.
- `versions`: the reward-model and generator versions per project.
The routes in backend/app.py only parse HTTP and call these; the jobs in backend/jobs/ do the work.
"""

from __future__ import annotations

import logging

import redis

from backend.config import Settings
from backend.jobs.generate import generate
from backend.jobs.maintenance import ensure_webhook_auth
from backend.jobs.train import train
from backend.labels import LabelConfigError, parse_label_config
from backend.labelstudio import ProjectRegistry
from backend.predictions import score_tasks
from backend.queue import Enqueued, JobQueue
from backend.serving import ModelCache
from backend.sync import AnnotationMirror
from model.store import GENERATOR, VersionStore

log = logging.getLogger(__name__)

TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED",
                "START_TRAINING"}
GENERATE_EVENTS = {"TASKS_CREATED", "PROJECT_UPDATED"}
KNOWN_EVENTS = TRAIN_EVENTS | GENERATE_EVENTS | {"TASKS_DELETED"}
CATCH_UP_SECONDS = 60


class BadRequest(Exception):
    """What Label Studio (or a person) sent cannot be used; the message says why (answered as a 4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class RLHFPreferenceModel:
    def __init__(self, settings: Settings, connection: redis.Redis, queue: JobQueue, models: ModelCache):
        self.settings = settings
        self.redis = connection
        self.queue = queue
        self.models = models
        self.registry = ProjectRegistry(connection, settings.queue_prefix)
        self.store = models.store

    @staticmethod
    def fields(label_config, key: str = "label_config"):
        """The project's names (prompt, answers, controls) from its label config (sent as `key`); 400 if
        it cannot drive this backend."""
        if not isinstance(label_config, str):
            raise BadRequest(f"'{key}' (the project's label config) must be a string")
        try:
            return parse_label_config(label_config)
        except LabelConfigError as exc:
            raise BadRequest(f"this label config cannot be used: {exc}") from None

    def setup(self, project: int, schema, hostname, access_token) -> str:
        self.fields(schema, "schema")
        try:
            self.registry.record_setup(project, hostname if isinstance(hostname, str) else None,
                                       access_token if isinstance(access_token, str) else None, schema)
            if self.settings.auth_enabled and not self.registry.webhook_auth_ok(project):
                self.queue.enqueue(ensure_webhook_auth, project)
            # Events can be lost (LS waits 1 s and never retries): an annotator at work (LS calls /setup
            # before each prediction batch) triggers a catch-up pass, at most once a minute.
            if self.registry.due_for_catch_up(project, CATCH_UP_SECONDS):
                self.queue.enqueue(generate, project)
                self.queue.enqueue(train, project)  # skipped after one small read unless annotations changed
        except redis.RedisError as exc:  # /setup gates every prediction batch: never fail it for Redis
            log.warning("could not record /setup for project %s: %s", project, exc)
        return self.models.version(project)

    def predict(self, project: int, tasks: list[dict], label_config) -> tuple[list, str]:
        """(one item per task: a prediction, or [] when there is none to show yet, model version)."""
        fields = self.fields(label_config)
        scorer = self.models.scorer(project)
        if scorer is None:
            return [[] for _ in tasks], self.models.version(project)
        items = score_tasks(scorer.model, scorer.version, tasks, fields)
        try:  # the version's predictions are now in Label Studio: the refresh deletes them once outdated
            self.redis.sadd(f"{self.settings.queue_prefix}:predictions:{project}:versions", scorer.version)
        except redis.RedisError as exc:
            log.warning("could not record prediction version for project %s: %s", project, exc)
        # [] (no prediction) makes Label Studio store nothing, so it asks again once answers exist.
        return [item or [] for item in items], scorer.version

    def fit(self, event: str, body: dict, project: int) -> Enqueued | None:
        """Queue the work an event calls for; None when it calls for none."""
        if event == "PROJECT_UPDATED":
            config = (body.get("project") or {}).get("label_config") if isinstance(body.get("project"), dict) else None
            # Label Studio sends this for every project change, the backend's own model-version update
            # included: only a new label config calls for a look at every task.
            if not isinstance(config, str) or not self.registry.record_label_config(project, config):
                return None
            return self.queue.enqueue(generate, project, rescan="1")
        if event == "TASKS_CREATED":
            return self.queue.enqueue(generate, project)
        if event in TRAIN_EVENTS or event == "TASKS_DELETED":
            AnnotationMirror(self.redis, self.settings.queue_prefix, project).push_event(event, body)
            if event == "TASKS_DELETED":
                return None
            if event == "START_TRAINING":
                return self.queue.enqueue(train, project, force="1")
            return self.queue.enqueue(train, project)
        return None

    def versions(self, project: int | None = None) -> dict:
        """{"versions": reward-model names across projects, "projects": {id: {"current", "versions",
        "generator": {"current", "versions"}}}}: a project's generator versions beside its reward models (a
        null generator "current" means the configured GENERATOR_MODEL answers)."""
        projects = [project] if project is not None else _store_projects(self.store)
        generators = VersionStore(self.store.root, GENERATOR)
        detail = {p: {"current": self.store.current(p), "versions": self.store.versions(p),
                      "generator": {"current": generators.current(p), "versions": generators.versions(p)}}
                  for p in projects}
        names = sorted({v for d in detail.values() for v in d["versions"]}, key=lambda v: int(v[1:]))
        return {"versions": names, "projects": detail}


def _store_projects(store: VersionStore) -> list[int]:
    if not store.root.is_dir():
        return []
    return sorted(int(p) for p in store.root.iterdir() if p.is_dir() and p.name.isdigit())
