"""Latency of the routes Label Studio calls synchronously, against the real server (`rlhf-backend serve`
under gunicorn) on a real Redis, with the payloads Label Studio 1.23.2 really sends.

    python benchmarks/bench_routes.py [--requests 500] [--concurrency 1 8]

Label Studio's limits: /health 1 s, /setup 3 s, /webhook 1 s (no retry), /predict 100 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import backend_env, start_backend  # noqa: E402


def measure(session_factory, method: str, url: str, body, n: int, concurrency: int) -> dict:
    def one(_):
        session = session_factory()
        start = time.perf_counter()
        response = session.request(method, url, json=body, timeout=10)
        return time.perf_counter() - start, response.status_code

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(min(20, n))))  # warm-up: connections, imports, caches
        started = time.perf_counter()
        results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    return {"n": n, "errors": sum(1 for r in results if r[1] >= 400),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "max_ms": 1000 * latencies[-1], "rps": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per route and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()

    captured = json.loads((ROOT / "tests" / "fixtures" / "ls-1.23.2-ml-requests.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bench-routes-"))
    env = backend_env(REDIS_URL=args.redis_url, QUEUE_PREFIX="rlhf-bench", MODEL_DIR=work / "models",
                      WORKERS=2, THREADS=4, LOG_LEVEL="WARNING")
    server, _, url = start_backend(env, work, worker=False)
    routes = [("GET", "/health", None), ("POST", "/setup", captured["setup"]["json"]),
              ("POST", "/webhook", captured["webhook_ANNOTATION_CREATED"]["json"]),
              ("POST", "/predict", captured["predict_single_task_from_GET_task"]["json"])]
    try:
        print(f"{'route':<14} {'conc':>4} {'n':>5} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>7}")
        for method, path, body in routes:
            for concurrency in args.concurrency:
                r = measure(requests.Session, method, url + path, body, args.requests, concurrency)
                print(f"{path:<14} {concurrency:>4} {r['n']:>5} {r['errors']:>4} {r['p50_ms']:>8.1f} "
                      f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['rps']:>7.0f}")
    finally:
        server.stop()
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()


if __name__ == "__main__":
    main()
