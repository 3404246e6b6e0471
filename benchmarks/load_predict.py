"""/predict under concurrent load, against the real server (`rlhf-backend serve` under gunicorn) serving a
trained version of the REAL packaged MiniLM reward model (trained here in fast mode on synthetic pairs).

    python benchmarks/load_predict.py [--clients 1 8 32] [--tasks 1 20] [--duration 15]

For each (tasks per request, concurrent clients) cell, closed-loop clients (threads, one keep-alive session
each) send /predict for `--duration` seconds after a warm-up. Reports throughput (requests/s and tasks/s),
latency p50/p99/max, errors, and the server's memory: RSS of the gunicorn master plus its workers, read
from /proc after the cell. Label Studio waits up to 100 s for /predict.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from harness import backend_env, start_backend, tree_rss_mib, warm_up_predict  # noqa: E402

PROJECT = 1


def synthetic_pairs(n: int, seed: int = 0):
    from model.pairs import PreferencePair

    rng = random.Random(seed)
    topics = ["the sea", "Paris", "sorting a list", "sleep", "photosynthesis", "prime numbers", "tea", "bicycles"]
    pairs = []
    for i in range(n):
        topic = rng.choice(topics)
        prompt = f"Tell me something useful about {topic} (question {i})."
        good = (f"Here is a clear answer about {topic}: it has a long history, a few key facts worth knowing, "
                f"and one practical tip you can use today.")
        bad = rng.choice(["No.", "I don't know.", f"{topic}?", "Ask someone else."])
        pairs.append(PreferencePair(prompt, good, bad, {"task_id": i, "annotation_id": i, "chosen_side": "left"}))
    return pairs


def train_version(model_dir: Path, n_pairs: int) -> tuple[str, dict]:
    from model.reward.config import TrainConfig
    from model.store import VersionStore
    from model.reward.train import train_reward_model

    store = VersionStore(model_dir)
    with store.new_version(PROJECT) as pending:
        metrics = train_reward_model(synthetic_pairs(n_pairs), TrainConfig(), pending.path)
    store.activate(PROJECT, pending.name)
    return pending.name, metrics


def predict_body(captured: dict, n_tasks: int) -> dict:
    body = copy.deepcopy(captured["predict_single_task_from_GET_task"]["json"])
    template = body["tasks"][0]
    tasks = []
    for i in range(n_tasks):
        task = copy.deepcopy(template)
        task["id"] = i + 1
        task["data"] = {"prompt": f"Question {i}: what should I know about the sea?",
                        "answer1": f"The sea covers most of the planet; answer {i} explains tides and currents.",
                        "answer2": f"Water. ({i})"}
        tasks.append(task)
    body["tasks"], body["project"] = tasks, f"{PROJECT}.1795778391"
    return body


def run_cell(url: str, body: dict, clients: int, duration: float, warmup: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + warmup
    stop_at = start_at + duration
    expected_version = None

    def client():
        session = requests.Session()
        while True:
            t = time.perf_counter()
            if t >= stop_at:
                return
            try:
                r = session.post(f"{url}/predict", json=body, timeout=120)
                ok = r.status_code == 200 and len(r.json()["results"]) == len(body["tasks"]) and \
                    all(item and item["model_version"] == expected_version for item in r.json()["results"])
                error = None if ok else f"{r.status_code} {r.text[:120]}"
            except requests.RequestException as exc:
                error = repr(exc)[:120]
            done = time.perf_counter()
            if t >= start_at and done <= stop_at + 120:
                with lock:
                    latencies.append(done - t)
                    if error:
                        errors.append(error)

    expected_version = requests.post(f"{url}/predict", json=body, timeout=300).json()["model_version"]
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    measured_wall = max(duration, max(0.0, time.perf_counter() - start_at))
    latencies.sort()
    n = len(latencies)

    def pct(q):
        return 1000 * latencies[min(n - 1, int(round(q * (n - 1))))] if n else float("nan")
    return {"requests": n, "errors": len(errors), "first_error": errors[0] if errors else "",
            "rps": n / measured_wall, "tasks_per_s": n * len(body["tasks"]) / measured_wall,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": 1000 * latencies[-1] if n else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 20], help="tasks per /predict request")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds at the start of each cell")
    parser.add_argument("--pairs", type=int, default=50, help="synthetic preference pairs to train the version on")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WORKERS)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (THREADS)")
    parser.add_argument("--torch-threads", type=int, default=None, help="TORCH_THREADS for the server")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    captured = json.loads((ROOT / "tests" / "fixtures" / "ls-1.23.2-ml-requests.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    started = time.perf_counter()
    version, metrics = train_version(work / "models", args.pairs)
    print(f"trained {version} (MiniLM, fast mode) on {metrics['n_pairs']} pairs in {time.perf_counter() - started:.1f} s"
          f", held-out accuracy {metrics['val_accuracy']}", flush=True)
    settings = dict(REDIS_URL=args.redis_url, QUEUE_PREFIX="rlhf-bench-load", MODEL_DIR=work / "models",
                    WORKERS=args.workers, THREADS=args.threads, LOG_LEVEL="WARNING", PREANNOTATE="always")
    if args.torch_threads:
        settings["TORCH_THREADS"] = args.torch_threads
    server, _, url = start_backend(backend_env(**settings), work, worker=False)
    idle = tree_rss_mib(server.popen.pid)
    try:
        warm_up_predict(url, predict_body(captured, 1), args.workers * args.threads)
        print(f"server: WORKERS={args.workers} THREADS={args.threads}, {os.cpu_count()} CPUs; "
              f"RSS before the first /predict {idle:.0f} MiB, after warm-up {tree_rss_mib(server.popen.pid):.0f} MiB",
              flush=True)
        print(f"{'tasks':>5} {'clients':>7} {'reqs':>6} {'err':>4} {'req/s':>7} {'tasks/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'RSS MiB':>8}", flush=True)
        for n_tasks in args.tasks:
            body = predict_body(captured, n_tasks)
            for clients in args.clients:
                r = run_cell(url, body, clients, args.duration, args.warmup)
                print(f"{n_tasks:>5} {clients:>7} {r['requests']:>6} {r['errors']:>4} {r['rps']:>7.1f} "
                      f"{r['tasks_per_s']:>8.1f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['max_ms']:>8.0f} "
                      f"{tree_rss_mib(server.popen.pid):>8.0f}" + (f"  first error: {r['first_error']}" if r["errors"]
                                                               else ""), flush=True)
    finally:
        server.stop()
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()


if __name__ == "__main__":
    main()
