"""The RQ worker process: one job at a time, models kept loaded between jobs."""

from __future__ import annotations

import logging

import redis
from rq import SimpleWorker, Worker

from backend import jobs
from backend.config import Settings
from backend.queue import KINDS

log = logging.getLogger(__name__)


def run_worker(settings: Settings, kinds: tuple[str, ...] = KINDS, burst: bool = False, fork: bool = False,
               sweep: bool = True) -> bool:
    """Work the given queues. Without `fork`, jobs run in this process (RQ's SimpleWorker), so the generator
    and feature caches stay loaded between jobs; that is also what CUDA needs (no fork after CUDA init).
    With `fork`, each job runs in a forked child (RQ's default): a crash costs only that job."""
    # No socket timeout here: the worker blocks on Redis for new jobs.
    connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
    context = jobs.init(settings, connection)
    if sweep:
        jobs.sweep(context)
    worker_class = _reregistering(Worker if fork else SimpleWorker)
    worker = worker_class(context.queue.queue_names(kinds), connection=connection)
    log.info("worker %s listening on %s", worker.name, ", ".join(context.queue.queue_names(kinds)))
    return worker.work(with_scheduler=True, burst=burst, logging_level=settings.log_level)


def _reregistering(base):
    """A worker that registers itself again when Redis lost its registration (a restart without
    persistence), so that /health counts it."""

    class Reregistering(base):
        def heartbeat(self, *args, **kwargs):
            if not self.connection.exists(self.key):
                self.register_birth()
            return super().heartbeat(*args, **kwargs)

    Reregistering.__name__ = base.__name__
    return Reregistering
