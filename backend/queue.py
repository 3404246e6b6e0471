"""The RQ queues, and enqueueing that coalesces: at most one *pending* job per (kind, project).

A burst of 200 annotation events becomes one pending train job; an event that arrives while that job
runs queues exactly one more, which will see the new annotations. The pending marker is cleared by the
job when it starts (`claim`), not when it ends, so nothing that arrives during a run is lost. What an
event asks for beyond "run" (e.g. START_TRAINING's "train even if nothing changed") travels as a flag
beside the marker, so a request that is coalesced into a pending job still reaches it.

Jobs are the functions `@job(kind)` makes in backend/jobs/; each kind has its own queue, and workers take
the queues in KINDS order.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from backend.metrics import Metrics

log = logging.getLogger(__name__)

GENERATE, TRAIN, REFRESH, MAINTENANCE, REPORT = "generate", "train", "refresh", "maintenance", "report"
TUNE = "tune"  # a generator tuning round: minutes to tens of minutes, so it comes last
# Workers take queues in this order: a train job never waits behind a long generation backlog, and a
# new version trains before the previous one's predictions are refreshed.
KINDS = (TRAIN, MAINTENANCE, REPORT, REFRESH, GENERATE, TUNE)
RETRY_BACKOFF = (10, 30, 90, 270)  # seconds between attempts; Label Studio restarts take ~30 s


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    coalesced: bool  # True: an equivalent job was already pending and absorbs this request


def connect_redis(url: str) -> redis.Redis:
    # Short timeouts: with Redis down, /health and /predict must still answer within Label Studio's 1 s.
    return redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=1.0, health_check_interval=30)


class JobQueue:
    def __init__(self, connection: redis.Redis, prefix: str, job_timeout: int, retries: int):
        self.redis = connection
        self.prefix = prefix
        self.job_timeout = job_timeout
        self.retries = retries
        self.metrics = Metrics(connection, prefix)
        self.queues = {kind: Queue(f"{prefix}-{kind}", connection=connection) for kind in KINDS}

    def queue_names(self, kinds=KINDS) -> list[str]:
        return [self.queues[k].name for k in kinds]

    def _pending_key(self, kind: str, project: int) -> str:
        return f"{self.prefix}:pending:{kind}:{project}"

    def _flags_key(self, kind: str, project: int) -> str:
        return f"{self.prefix}:flags:{kind}:{project}"

    def enqueue(self, job, project: int, **flags: str) -> Enqueued:
        """Queue `job(project)` unless a job of its kind is already pending for `project`; either way the
        job that runs next gets `flags` (see `claim`). Raises redis.RedisError if Redis is down."""
        kind = job.kind
        if flags:
            self.redis.hset(self._flags_key(kind, project), mapping=flags)
        key = self._pending_key(kind, project)
        job_id = f"{kind}-{project}-{uuid.uuid4().hex[:12]}"
        # The marker and its job are written in one transaction (WATCH/MULTI on the marker), so no request
        # ever sees a marker whose job does not exist yet. The marker expires in case its job vanished.
        retry = Retry(max=self.retries, interval=list(RETRY_BACKOFF[: self.retries])) if self.retries else None
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    existing = pipe.get(key)
                    if existing and self._is_waiting(existing.decode()):
                        pipe.reset()
                        self.metrics.count_job(kind, "coalesced")
                        return Enqueued(existing.decode(), coalesced=True)
                    pipe.multi()
                    pipe.set(key, job_id, ex=self.job_timeout * 2)
                    self.queues[kind].enqueue_call(
                        job, args=(project,), job_id=job_id,
                        timeout=self.job_timeout, retry=retry, result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
                        meta={"project": project, "kind": kind, **flags},
                        description=f"{kind} project {project}", pipeline=pipe)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # another request set the marker meanwhile: look again
        self.metrics.count_job(kind, "queued")
        log.info("queued %s for project %s (%s)", kind, project, job_id)
        return Enqueued(job_id, coalesced=False)

    def claim(self, kind: str, project: int, job_id: str | None) -> dict[str, str]:
        """Called by a job as it starts: events from now on need a new job, which may queue behind this one.
        Returns (and clears) the flags the requests for this job set."""
        key, flags_key = self._pending_key(kind, project), self._flags_key(kind, project)
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            mine = job_id is not None and pipe.get(key) == job_id.encode()
            pipe.multi()
            if mine:
                pipe.delete(key)
            pipe.hgetall(flags_key)
            pipe.delete(flags_key)
            try:
                flags = pipe.execute()[-2]
            except redis.WatchError:  # a new job took the marker in between: leave it, take the flags
                pipe.reset()
                pipe.hgetall(flags_key)
                pipe.delete(flags_key)
                flags = pipe.execute()[0]
        return {k.decode(): v.decode() for k, v in flags.items()}

    def restore(self, kind: str, project: int, flags: dict[str, str]) -> None:
        """Give back the flags of a job that failed, for its retry (or the next job) to see."""
        if flags:
            self.redis.hset(self._flags_key(kind, project), mapping=flags)

    def _is_waiting(self, job_id: str) -> bool:
        job = Job.fetch_many([job_id], connection=self.redis)[0]
        return job is not None and job.get_status(refresh=False) in ("queued", "deferred", "scheduled")

    def jobs(self, limit: int = 20) -> dict:
        """Queued, running, finished and failed jobs per queue, newest first, with their progress."""
        out = {}
        for kind, queue in self.queues.items():
            groups = {
                "queued": queue.get_job_ids()[:limit],
                "started": StartedJobRegistry(queue=queue).get_job_ids()[:limit],
                "finished": FinishedJobRegistry(queue=queue).get_job_ids(-limit, -1)[::-1],
                "failed": FailedJobRegistry(queue=queue).get_job_ids(-limit, -1)[::-1],
            }
            out[kind] = {name: [_describe(job) for job in Job.fetch_many(ids, connection=self.redis) if job]
                         for name, ids in groups.items()}
        return out


def _describe(job: Job) -> dict:
    info = {
        "id": job.id,
        "status": job.get_status(refresh=False),
        "project": job.meta.get("project"),
        "progress": job.meta.get("progress"),
        "message": job.meta.get("message"),
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
    }
    if info["status"] == "failed":
        result = job.latest_result()
        if result is not None and result.exc_string:
            info["error"] = result.exc_string.strip().splitlines()[-1]
    return info
