"""The RQ worker process: one job at a time, models kept loaded between jobs."""

from __future__ import annotations

import logging
import signal
import time

import redis
from rq import SimpleWorker, Worker

from backend.config import Settings
from backend.heap import return_freed_memory
from backend.jobs.framework import init
from backend.jobs.maintenance import sweep as sweep_projects
from backend.queue import KINDS

log = logging.getLogger(__name__)


def run_worker(settings: Settings, kinds: tuple[str, ...] = KINDS, burst: bool = False, fork: bool = False,
               sweep: bool = True) -> bool:
    """Work the given queues. Without `fork`, jobs run in this process (RQ's SimpleWorker), so the generator
    and feature caches stay loaded between jobs; that is also what CUDA needs (no fork after CUDA init).
    With `fork`, each job runs in a forked child (RQ's default): a crash costs only that job.

    RQ rides out a Redis outage while it waits for jobs, but not one during a job: the job's next Redis
    write fails, and RQ's worker quits (or raises, when Redis is still down for its teardown). Unless it
    was asked to stop, this waits for Redis and goes on with a fresh worker (sweeping again for the events
    lost meanwhile)."""
    return_freed_memory()
    # No socket timeout here: the worker blocks on Redis for new jobs.
    connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
    context = init(settings, connection)
    worker_class = _resilient(Worker if fork else SimpleWorker)
    queues = context.queue.queue_names(kinds)
    while True:
        worker = worker_class(queues, connection=connection)
        try:
            if sweep:
                sweep_projects(context)
            log.info("worker %s listening on %s", worker.name, ", ".join(queues))
            worked = worker.work(with_scheduler=True, burst=burst, logging_level=settings.log_level)
            if burst or worker.stop_requested:
                return worked
            log.warning("worker %s quit on an error (logged above); a fresh worker takes over once Redis answers",
                        worker.name)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if burst:
                raise
            log.warning("worker %s lost Redis (%s); a fresh worker takes over once Redis answers", worker.name,
                        type(exc).__name__)
        _wait_for_redis(connection)


def _wait_for_redis(connection: redis.Redis) -> None:
    # RQ's handlers would raise StopRequested out of this wait; a stop request now simply ends the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pause = 1.0  # also keeps a worker that keeps quitting from spinning
    while True:
        time.sleep(pause)
        try:
            connection.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            pause = min(pause * 2, 5.0)


def _resilient(base):
    """A worker that registers itself again when Redis lost its registration (a restart without
    persistence), so that /health counts it, and that remembers whether it was asked to stop. It checks
    the set of workers, not its own key: a job that outlived the restart has already recreated that key
    in part."""

    class Resilient(base):
        stop_requested = False

        def request_stop(self, signum, frame):
            self.stop_requested = True
            return super().request_stop(signum, frame)

        def heartbeat(self, *args, **kwargs):
            if not self.connection.sismember(self.redis_workers_keys, self.key):
                self.connection.delete(self.key)  # register_birth refuses a key without a death date
                self.register_birth()
            return super().heartbeat(*args, **kwargs)

    Resilient.__name__ = base.__name__
    return Resilient
