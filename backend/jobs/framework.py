"""What every RQ job gets from `@job(kind)`: the worker's shared context, the pending marker claimed, a
per-project lock, progress in the job's meta, and the same logging, metrics and status on success and on
failure. A job is a plain function `fn(ctx, progress, project, **kwargs) -> dict`; the queue refers to it
by the function itself (see `backend.queue.JobQueue.enqueue`).

Two workers never run the same kind of job for the same project at once: the second waits for the
lock. The lock is short and renewed while its job lives, so a worker that dies (SIGKILL, out of memory)
frees it within LOCK_SECONDS.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from contextlib import contextmanager
from functools import cached_property

import redis
from rq import get_current_job

from backend.config import Settings, generation_config, load_settings
from backend.labels import parse_label_config
from backend.labelstudio import LabelStudioClient, LabelStudioUnavailable, ProjectGone, ProjectRegistry, resolve_connection
from backend.queue import JobQueue, connect_redis
from backend.serving import ModelCache
from backend.sync import AnnotationMirror
from model.store import VersionStore

log = logging.getLogger(__name__)

LOCK_SECONDS = 30  # renewed every 10 s while the job lives


class WorkerContext:
    """What jobs share within one worker process: settings, connections, and the loaded models."""

    def __init__(self, settings: Settings, connection: redis.Redis):
        self.settings = settings
        self.redis = connection
        self.store = VersionStore(settings.model_dir)
        self.queue = JobQueue(connection, settings.queue_prefix, settings.job_timeout, settings.job_retries)
        self.registry = ProjectRegistry(connection, settings.queue_prefix)
        # Workers score from the feature cache (a new fast-mode version rescoring every task is arithmetic).
        self.models = ModelCache(settings, self.store, feature_cache_dir=settings.model_dir / "feature-cache")
        self.clients: list[LabelStudioClient] = []  # made by the running job

    @cached_property
    def generator(self):
        from model.generation import load_generator

        return load_generator(generation_config(self.settings))

    @cached_property
    def generators(self):
        """Per project: its current generator version, or the shared `generator` above (backend/generators.py)."""
        from backend.generators import ProjectGenerators

        return ProjectGenerators(self.settings, lambda: self.generator)

    def label_studio(self, project: int) -> LabelStudioClient:
        try:
            connection = resolve_connection(self.settings, self.registry.get(project))
        except LabelStudioUnavailable as exc:
            self.registry.record_status(False, str(exc))
            raise
        client = LabelStudioClient(connection)
        self.clients.append(client)
        return client

    def fields(self, project: int, ls: LabelStudioClient):
        """The names the project's label config gives the prompt, the answers and the controls. The config
        /setup or a PROJECT_UPDATED event last brought saves a call; Label Studio is asked otherwise."""
        config = self.registry.get(project).get("label_config") or ls.label_config(project)
        return parse_label_config(config)

    def mirror(self, project: int) -> AnnotationMirror:
        return AnnotationMirror(self.redis, self.settings.queue_prefix, project)

    @contextmanager
    def project_lock(self, kind: str, project: int):
        lock = self.redis.lock(f"{self.settings.queue_prefix}:lock:{kind}:{project}", timeout=LOCK_SECONDS,
                               blocking_timeout=self.settings.job_timeout, thread_local=False)
        if not lock.acquire():
            raise RuntimeError(f"another worker has held the {kind} lock of project {project} for too long")
        done = threading.Event()

        def renew():
            while not done.wait(LOCK_SECONDS / 3):
                try:
                    lock.reacquire()
                except (redis.RedisError, redis.exceptions.LockError) as exc:
                    log.error("project %s: lost the %s lock (%s); another worker may start the same job",
                              project, kind, exc)
                    return

        threading.Thread(target=renew, daemon=True, name=f"lock-{kind}-{project}").start()
        try:
            yield
        finally:
            done.set()
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired meanwhile: another holder's now, nothing to release
            except redis.RedisError as exc:
                log.warning("project %s: could not release the %s lock (%s); it expires in %s s",
                            project, kind, exc, LOCK_SECONDS)


_context: WorkerContext | None = None


def init(settings: Settings, connection: redis.Redis) -> WorkerContext:
    global _context
    _context = WorkerContext(settings, connection)
    return _context


def context() -> WorkerContext:
    if _context is None:  # a job run outside `rlhf-backend worker` (e.g. a plain `rq worker`)
        settings = load_settings()
        return init(settings, connect_redis(settings.redis_url))
    return _context


def progress(fraction: float, message: str) -> None:
    """Show how far the running job is (in /jobs); a no-op outside a job."""
    rq_job = get_current_job()
    if rq_job is not None:
        rq_job.meta.update(progress=round(fraction, 3), message=message)
        rq_job.save_meta()


def job(kind: str):
    """Make `fn(ctx, project, **flags) -> dict` an RQ job of `kind`, run as `fn(project)` by a worker; the
    flags are those the requests for it set (`JobQueue.enqueue(fn, project, **flags)`)."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(project: int) -> dict:
            ctx = context()
            rq_job = get_current_job()
            flags = ctx.queue.claim(kind, project, rq_job.id if rq_job is not None else None)
            gone = ctx.registry.gone_since(project)
            if gone is not None and rq_job is not None and rq_job.created_at.timestamp() <= gone:
                # Queued before Label Studio said the project is gone (e.g. by the same sweep): nothing to ask.
                ctx.queue.metrics.count_job(kind, "forgotten")
                log.debug("project %s: skipping the %s job queued before the project was forgotten", project, kind)
                return {"status": "forgotten", "project": project}
            ctx.clients.clear()
            try:
                with ctx.project_lock(kind, project):
                    ran_from = time.time()
                    outcome = fn(ctx, project, **flags)
                    if rq_job is not None:  # when it held the lock: how long it waited shows in /jobs
                        rq_job.meta["ran"] = [ran_from, time.time()]
                        rq_job.save_meta()
            except ProjectGone as exc:
                # Retrying cannot help, and the sweep would try again at every start: forget the project, and
                # say so once (jobs queued meanwhile may hear the same).
                if ctx.registry.forget(project):
                    log.warning("project %s: Label Studio says it is gone (%s); forgetting it until its next "
                                "/setup", project, exc)
                ctx.queue.metrics.count_job(kind, "forgotten")
                return {"status": "forgotten", "project": project}
            except Exception as exc:
                ctx.queue.restore(kind, project, flags)
                ctx.queue.metrics.count_job(kind, "failed")
                ctx.registry.record_status(False, f"{kind} job for project {project} failed: {exc}")
                log.warning("project %s: %s job failed: %s", project, kind, exc)
                raise
            ctx.queue.metrics.count_job(kind, outcome.get("status", "done"))
            if any(client.calls for client in ctx.clients):  # /health shows the last call's outcome
                ctx.registry.record_status(True, f"{kind} job: {outcome.get('status')}")
            log.info("project %s: %s job finished: %s", project, kind, outcome)
            return outcome

        run.kind = kind
        return run

    return decorate
