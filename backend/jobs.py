"""The work the RQ workers do. Each job re-reads what it needs from Label Studio (the source of truth),
so a lost or duplicated event only delays or repeats harmless work."""

from __future__ import annotations

import logging
import random
import threading
import time
from functools import cached_property

import redis
from rq import get_current_job

from backend.auth import basic_auth_header
from backend.config import Settings, generation_config, load_settings, train_config
from backend.labels import parse_label_config
from backend.labelstudio import LabelStudioClient, LabelStudioUnavailable, ProjectRegistry, resolve_connection
from backend.queue import GENERATE, MAINTENANCE, REPORT, TRAIN, JobQueue
from backend.serving import ModelCache, has_answers, pairwise_result
from model.conversation import prompt_text
from model.pairs import GENERATION_KEY, TaskFields
from model.store import VersionStore

log = logging.getLogger(__name__)

LOCK_SECONDS = 30  # renewed every 10 s while the job lives
FORCED = "START_TRAINING"  # the only reason that trains even with nothing new
WEBHOOK_WAIT_SECONDS = 60  # how long the auth job waits for Label Studio to create its webhook


class WorkerContext:
    """What jobs share within one worker process: settings, connections, and the loaded generator."""

    def __init__(self, settings: Settings, connection: redis.Redis):
        self.settings = settings
        self.redis = connection
        self.store = VersionStore(settings.model_dir)
        self.queue = JobQueue(connection, settings.queue_prefix, settings.job_timeout, settings.job_retries)
        self.registry = ProjectRegistry(connection, settings.queue_prefix)
        self.models = ModelCache(settings, self.store)

    @cached_property
    def generator(self):
        from model.generation import load_generator

        return load_generator(generation_config(self.settings))

    def label_studio(self, project: int) -> LabelStudioClient:
        try:
            connection = resolve_connection(self.settings, self.registry.get(project))
        except LabelStudioUnavailable as exc:
            self.registry.record_status(False, str(exc))
            raise
        return LabelStudioClient(connection)


_context: WorkerContext | None = None


def init(settings: Settings, connection: redis.Redis) -> WorkerContext:
    global _context
    _context = WorkerContext(settings, connection)
    return _context


def context() -> WorkerContext:
    global _context
    if _context is None:  # a job run outside `rlhf-backend worker` (e.g. a plain `rq worker`)
        from backend.app import connect_redis

        settings = load_settings()
        _context = WorkerContext(settings, connect_redis(settings.redis_url))
    return _context


def _progress(fraction: float, message: str) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(progress=round(fraction, 3), message=message)
        job.save_meta()


def _start(kind: str, project: int) -> WorkerContext:
    ctx = context()
    job = get_current_job()
    if job is not None:
        ctx.queue.claim(kind, project, job.id)
    return ctx


def _finish(ctx: WorkerContext, kind: str, outcome: dict) -> dict:
    ctx.queue.metrics.count_job(kind, outcome.get("status", "done"))
    ctx.registry.record_status(True, f"{kind} job: {outcome.get('status')}")
    log.info("%s job finished: %s", kind, outcome)
    return outcome


def generate_answers(project: int) -> dict:
    """Fill the empty answer fields of every task in the project, in batches.

    Label Studio's task PATCH replaces `data` whole, and it has no conditional update: each task is
    re-read right before its write, and skipped if a person has filled either answer meanwhile.
    """
    ctx = _start(GENERATE, project)
    try:
        ls = ctx.label_studio(project)
        fields = parse_label_config(ls.label_config(project))
        todo = [t for t in ls.tasks(project) if _needs_answers(t["data"], fields)]
        _progress(0.0, f"{len(todo)} tasks need answers")
        filled = skipped = failed = 0
        batch_size = ctx.settings.generation_batch_size
        rng = random.Random()
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            candidates = ctx.generator.generate([t["data"].get(fields.prompt) for t in batch])
            for task, cand in zip(batch, candidates):
                outcome = _write_answers(ctx, ls, project, task["id"], fields, cand, rng)
                filled += outcome == "filled"
                skipped += outcome == "skipped"
                failed += outcome == "failed"
            _progress((start + len(batch)) / len(todo), f"{start + len(batch)}/{len(todo)} tasks done")
    except Exception as exc:
        ctx.queue.metrics.count_job(GENERATE, "failed")
        ctx.registry.record_status(False, f"generate job for project {project} failed: {exc}")
        raise
    return _finish(ctx, GENERATE, {"status": "done", "project": project, "filled": filled,
                                   "skipped_human_edit": skipped, "failed_prompts": failed})


def _needs_answers(data: dict, fields: TaskFields) -> bool:
    if isinstance(data.get(GENERATION_KEY), dict) and data[GENERATION_KEY].get("error"):
        return False  # a prompt we could not answer: recorded on the task, not retried forever
    return not any(isinstance(data.get(k), str) and data[k].strip() for k in (fields.left, fields.right))


def _write_answers(ctx: WorkerContext, ls: LabelStudioClient, project: int, task_id: int, fields: TaskFields,
                   cand, rng: random.Random) -> str:
    fresh = ls.task(task_id)["data"]
    if not _needs_answers(fresh, fields):
        log.info("task %s: answers were written by someone else meanwhile; leaving them", task_id)
        return "skipped"
    if cand.answers is None:
        ls.update_task_data(task_id, {**fresh, GENERATION_KEY: {"error": cand.error}})
        log.warning("task %s: no answers generated: %s", task_id, cand.error)
        return "failed"
    left_source = rng.choice("ab")  # which candidate the annotator sees on the left
    a, b = cand.answers
    left, right = (a, b) if left_source == "a" else (b, a)
    data = {**fresh, fields.left: left, fields.right: right,
            GENERATION_KEY: {"left": left_source, "right": "b" if left_source == "a" else "a",
                             "truncated": cand.truncated, "generator": ctx.generator.describe()}}
    ls.update_task_data(task_id, data)
    scorer = ctx.models.scorer(project)
    if scorer is not None:  # so the annotator sees a guess at once, without waiting for /predict
        p_left = scorer.model.preference([prompt_text(data.get(fields.prompt))], [left], [right])[0]
        item = pairwise_result(fields, float(p_left), scorer.version)
        ls.create_prediction(task_id, item["result"], item["score"], scorer.version)
    return "filled"


def train_reward_model(project: int, reason: str = FORCED) -> dict:
    """Fetch every annotation, train a new version, make it current, then refresh the predictions of the
    unlabelled tasks so that Label Studio can order them by the new model's uncertainty."""
    from model.pairs import pairs_from_tasks
    from model.reward.train import train_reward_model as fit

    ctx = _start(TRAIN, project)
    # A short lock, renewed while this job lives: a worker that dies (SIGKILL, OOM) frees it in LOCK_SECONDS.
    lock = ctx.redis.lock(f"{ctx.settings.queue_prefix}:train-lock:{project}", timeout=LOCK_SECONDS,
                          blocking_timeout=ctx.settings.job_timeout, thread_local=False)
    if not lock.acquire():
        raise RuntimeError(f"another worker has been training project {project} for too long")
    alive = threading.Event()

    def renew():
        while not alive.wait(LOCK_SECONDS / 3):
            try:
                lock.reacquire()
            except redis.RedisError:
                return

    threading.Thread(target=renew, daemon=True).start()
    try:
        ls = ctx.label_studio(project)
        fields = parse_label_config(ls.label_config(project))
        _progress(0.0, "fetching annotations")
        tasks = ls.export(project)
        pairs = pairs_from_tasks(tasks, fields)
        keys = sorted({_pair_key(p) for p in pairs})
        current = ctx.store.current(project)
        previous = set(ctx.store.metrics(project, current).get("annotation_keys", [])) if current else set()
        changed = len(previous.symmetric_difference(keys))
        if not pairs:
            return _finish(ctx, TRAIN, {"status": "skipped", "reason": "no usable annotations yet"})
        if reason != FORCED and changed < ctx.settings.min_new_annotations:
            return _finish(ctx, TRAIN, {"status": "skipped",
                                        "reason": f"{changed} changed annotations < MIN_NEW_ANNOTATIONS"})
        with ctx.store.new_version(project) as pending:
            metrics = fit(pairs, train_config(ctx.settings), pending.path,
                          progress=lambda f, m: _progress(0.05 + 0.85 * f, m))
            _add_keys(pending.path, metrics, keys)
        ctx.store.activate(project, pending.name)
        ctx.store.prune(project, ctx.settings.keep_versions)
        log.info("project %s: reward model %s is current (%s pairs, held-out accuracy %s)",
                 project, pending.name, len(pairs), metrics.get("val_accuracy"))
        refreshed = _refresh_predictions(ctx, ls, project, fields)
        _write_report(ctx, project, tasks, fields)
    except Exception as exc:
        ctx.queue.metrics.count_job(TRAIN, "failed")
        ctx.registry.record_status(False, f"train job for project {project} failed: {exc}")
        raise
    finally:
        alive.set()
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired meanwhile
    return _finish(ctx, TRAIN, {"status": "done", "project": project, "version": pending.name,
                                "pairs": len(pairs), "val_accuracy": metrics.get("val_accuracy"),
                                "predictions_refreshed": refreshed})


def _pair_key(pair) -> str:
    meta = pair.meta
    return f"{meta.get('task_id')}:{meta.get('annotation_id')}:{meta.get('chosen_side')}"


def _add_keys(folder, metrics: dict, keys: list[str]) -> None:
    """Record which annotations trained this version, so the next job can tell what changed."""
    import json

    metrics = {**metrics, "annotation_keys": keys}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))


def _refresh_predictions(ctx: WorkerContext, ls: LabelStudioClient, project: int, fields: TaskFields) -> int:
    scorer = ctx.models.scorer(project)
    if scorer is None:
        return 0
    tasks = [t for t in ls.tasks(project) if not t["is_labeled"] and has_answers(t["data"], fields)]
    for start in range(0, len(tasks), 64):
        chunk = tasks[start:start + 64]
        data = [t["data"] for t in chunk]
        p_left = scorer.model.preference([prompt_text(d.get(fields.prompt)) for d in data],
                                         [d[fields.left] for d in data], [d[fields.right] for d in data])
        for task, p in zip(chunk, p_left):
            item = pairwise_result(fields, float(p), scorer.version)
            ls.create_prediction(task["id"], item["result"], item["score"], scorer.version)
        _progress(0.9 + 0.1 * (start + len(chunk)) / len(tasks), "refreshing predictions")
    return len(tasks)


def _write_report(ctx: WorkerContext, project: int, tasks: list[dict], fields: TaskFields) -> None:
    """Refresh the project's report after training; a report problem never fails the training job."""
    from backend.report import write_report

    try:
        write_report(ctx.settings, project, tasks, fields, learning_curve=ctx.settings.train_mode == "fast")
    except Exception:
        log.warning("project %s: could not write the report", project, exc_info=True)


def build_report(project: int) -> dict:
    """The collection-quality report, written to MODEL_DIR/<project>/report.html for GET /report."""
    from backend.report import write_report

    ctx = _start(REPORT, project)
    ls = ctx.label_studio(project)
    fields = parse_label_config(ls.label_config(project))
    path = write_report(ctx.settings, project, ls.export(project), fields)
    return _finish(ctx, REPORT, {"status": "done", "project": project, "path": str(path)})


def ensure_webhook_auth(project: int) -> dict:
    """With basic auth on, give Label Studio's event webhook for this backend our Authorization header."""
    ctx = _start(MAINTENANCE, project)
    if not ctx.settings.auth_enabled:
        return {"status": "skipped", "reason": "basic auth is off"}
    ls = ctx.label_studio(project)
    header = basic_auth_header(ctx.settings.basic_auth_user, ctx.settings.basic_auth_pass)
    # Label Studio calls /setup while connecting the backend and creates the webhook only afterwards.
    deadline = time.monotonic() + WEBHOOK_WAIT_SECONDS
    while not (found := ls.add_webhook_auth(project, header)) and time.monotonic() < deadline:
        time.sleep(2)
    if found:
        ctx.registry.mark_webhook_auth_ok(project)
    return _finish(ctx, MAINTENANCE, {"status": "done", "webhooks": found})


def sweep(ctx: WorkerContext) -> None:
    """At worker start: catch up on what events were lost while nothing listened."""
    for project in ctx.registry.projects():
        ctx.queue.enqueue(GENERATE, project)
        ctx.queue.enqueue(TRAIN, project, reason="sweep")
