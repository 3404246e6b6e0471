"""Counters shared by every server and worker process, kept in Redis so /metrics sees them all.

Latency goes into fixed histogram buckets (like Prometheus): p50/p99 are read off the buckets.
If Redis is down, recording is skipped: metrics must never fail a request.
"""

from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)


class Metrics:
    def __init__(self, connection: redis.Redis, prefix: str):
        self.redis = connection
        self.key = f"{prefix}:metrics"

    def record_request(self, route: str, status: int, seconds: float) -> None:
        bucket = next((b for b in BUCKETS if seconds <= b), "inf")
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hincrby(f"{self.key}:requests", f"{route} {status}", 1)
            pipe.hincrbyfloat(f"{self.key}:latency_sum", route, seconds)
            pipe.hincrby(f"{self.key}:latency_buckets", f"{route} {bucket}", 1)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("metrics not recorded: %s", exc)

    def count_job(self, kind: str, event: str) -> None:
        """event: queued, coalesced, done, failed, skipped."""
        try:
            self.redis.hincrby(f"{self.key}:jobs", f"{kind} {event}", 1)
        except redis.RedisError as exc:
            log.debug("job metric not recorded: %s", exc)

    def snapshot(self) -> dict:
        requests = _pairs(self.redis.hgetall(f"{self.key}:requests"))
        sums = {k.decode(): float(v) for k, v in self.redis.hgetall(f"{self.key}:latency_sum").items()}
        buckets = _pairs(self.redis.hgetall(f"{self.key}:latency_buckets"))
        jobs = _pairs(self.redis.hgetall(f"{self.key}:jobs"))
        routes: dict[str, dict] = {}
        for (route, status), count in requests.items():
            entry = routes.setdefault(route, {"requests": 0, "by_status": {}})
            entry["requests"] += count
            entry["by_status"][status] = count
        for route, entry in routes.items():
            counts = {le: n for (r, le), n in buckets.items() if r == route}
            entry["latency_seconds"] = {
                "mean": sums.get(route, 0.0) / entry["requests"] if entry["requests"] else None,
                "p50": _quantile(counts, 0.50),
                "p99": _quantile(counts, 0.99),
                "buckets": {le: counts.get(le, 0) for le in [str(b) for b in BUCKETS] + ["inf"]},
            }
        job_counts: dict[str, dict] = {}
        for (kind, event), count in jobs.items():
            job_counts.setdefault(kind, {})[event] = count
        return {"routes": routes, "jobs": job_counts}


def _pairs(raw: dict) -> dict[tuple[str, str], int]:
    out = {}
    for field, value in raw.items():
        left, _, right = field.decode().rpartition(" ")
        out[(left, right)] = int(value)
    return out


def _quantile(counts: dict[str, int], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile (what Prometheus' histogram_quantile bounds)."""
    total = sum(counts.values())
    if not total:
        return None
    seen = 0
    for le in [str(b) for b in BUCKETS] + ["inf"]:
        seen += counts.get(le, 0)
        if seen >= q * total:
            return float(le)
    return float("inf")
