"""Faults that need no Label Studio: Label Studio down while the real worker runs a job (retries with
backoff, then a clear failure, and the same worker keeps taking jobs), and reward-model versions landing
while the real server answers /predict under concurrent load.

The Label-Studio-backed faults (burst, SIGKILL mid-training and mid-write, Redis down) are in
test_faults_e2e.py."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from rq import Worker
from rq.job import Job

from backend.jobs.generate import generate
from backend.jobs.maintenance import ensure_webhook_auth
from backend.jobs.train import train
from backend.queue import RETRY_BACKOFF, JobQueue
from conftest import FIXTURES, REDIS_URL
from harness import Process, backend_env, free_port, poll, start_backend, warm_up_predict

CAPTURED = json.loads((FIXTURES / "ls-1.23.2-ml-requests.json").read_text())
LS_KEY = "faults-ls-key-0123456789abcdef"


def synthetic_pairs(n: int, seed: int = 0):
    """Pairs a model can learn: the chosen answer is the longer, politer one."""
    from model.pairs import PreferencePair

    rng = random.Random(seed)
    words = ["paris", "sea", "list", "sleep", "light", "seven", "clear", "kind", "fact", "short"]
    pairs = []
    for i in range(n):
        prompt = f"question {i}: " + " ".join(rng.choices(words, k=4))
        good = "Thank you for asking. " + " ".join(rng.choices(words, k=12)) + "."
        bad = " ".join(rng.choices(words, k=2))
        pairs.append(PreferencePair(prompt, good, bad, {"task_id": i, "annotation_id": i, "chosen_side": "left"}))
    return pairs


def train_versions(model_dir: Path, project: int, base_model: Path, pairs=None, seed: int = 0) -> str:
    """A real version: real training (model.reward.train, fast mode) into VersionStore, activated."""
    from model.reward.config import TrainConfig
    from model.reward.train import train_reward_model
    from model.store import VersionStore

    store = VersionStore(model_dir)
    with store.new_version(project) as pending:
        train_reward_model(pairs or synthetic_pairs(24), TrainConfig(base_model=str(base_model), seed=seed, epochs=5),
                           pending.path)
    store.activate(project, pending.name)
    return pending.name


def derived_version(model_dir: Path, project: int, source: str, seed: int) -> str:
    """A copy of `source` with a re-drawn, larger reward head: a complete version (written through
    VersionStore) that scores every pair differently from its source. Not activated."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    from model.store import VersionStore

    store = VersionStore(model_dir)
    with store.new_version(project) as pending:
        shutil.copytree(store.path(project, source), pending.path, dirs_exist_ok=True)
        model = AutoModelForSequenceClassification.from_pretrained(pending.path)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 20)
        model.save_pretrained(pending.path)
    return pending.name


# ---------------------------------------------------------------- Label Studio down during a job

@pytest.mark.integration
def test_label_studio_down_retries_with_backoff_then_fails_and_the_worker_lives_on(tmp_path, redis_conn,
                                                                                     make_settings):
    from backend.app import create_app

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = backend_env(REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-test", MODEL_DIR=tmp_path / "models",
                      LABEL_STUDIO_URL=dead, LABEL_STUDIO_API_KEY=LS_KEY, JOB_RETRIES=1)
    queue = JobQueue(redis_conn, "rlhf-test", job_timeout=3600, retries=1)
    job_id = queue.enqueue(generate, 4).job_id
    worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep"], env, tmp_path / "worker.log")
    try:
        job = Job.fetch(job_id, connection=redis_conn)
        seen, failed_first = set(), None
        deadline = time.time() + RETRY_BACKOFF[0] + 50
        while time.time() < deadline:
            status = job.get_status(refresh=True)
            seen.add(status)
            if status == "scheduled" and failed_first is None:  # the first attempt failed: a retry is due
                failed_first = time.time()
            if status == "failed":
                break
            assert worker.popen.poll() is None, worker.output()[-3000:]
            time.sleep(0.2)
        assert job.get_status(refresh=True) == "failed", (seen, worker.output()[-3000:])
        assert failed_first is not None, f"no retry was scheduled; statuses seen: {seen}"
        waited = time.time() - failed_first
        assert waited >= RETRY_BACKOFF[0] - 1.5, f"retried after {waited:.1f} s, backoff is {RETRY_BACKOFF[0]} s"
        job.refresh()
        assert job.retries_left == 0
        reason = job.latest_result().exc_string
        assert "connect" in reason.lower(), reason  # says Label Studio could not be reached
        assert LS_KEY not in reason

        # No crash loop: the same process, registered once, takes the next job.
        pid = worker.popen.pid
        other = queue.enqueue(ensure_webhook_auth, 5).job_id  # needs no Label Studio (basic auth is off)
        poll(lambda: Job.fetch(other, connection=redis_conn).get_status() == "finished", 30,
             message="the next job done by the same worker")
        assert worker.popen.poll() is None and worker.popen.pid == pid
        workers = Worker.all(connection=redis_conn)
        assert len(workers) == 1 and workers[0].pid == pid
        log = worker.output()
        assert log.count("listening on") == 1, log[-3000:]
        assert LS_KEY not in log

        health = create_app(make_settings(), redis_conn).test_client().get("/health").get_json()
        assert health["workers"] == 1
        assert health["label_studio"]["ok"] is False  # people see why: /health names the failed job
        assert "generate job for project 4 failed" in health["label_studio"]["message"]
    finally:
        worker.stop()


# ---------------------------------------------------------------- version swap under load

@pytest.fixture
def versions_for_swap(tmp_path):
    from tiny_models import tiny_encoder

    base = tiny_encoder(tmp_path / "tiny-rm")
    first = train_versions(tmp_path / "models", 4, base)
    names = [first] + [derived_version(tmp_path / "models", 4, first, seed) for seed in (2, 3)]
    return tmp_path / "models", base, names


def expected_scores(model_dir: Path, names: list[str], task: dict) -> dict[str, float]:
    from model.reward.model import RewardModel

    scores = {}
    for name in names:
        p = RewardModel.load(model_dir / "4" / name).preference(
            [task["data"]["prompt"]], [task["data"]["answer1"]], [task["data"]["answer2"]])[0]
        scores[name] = round(max(p, 1 - p), 6)
    return scores


@pytest.mark.integration
def test_versions_swap_under_concurrent_predict(tmp_path, redis_conn, versions_for_swap):
    from model.store import VersionStore

    model_dir, base, names = versions_for_swap
    body = CAPTURED["predict_batch_from_dm_action"]["json"]
    task = next(t for t in body["tasks"] if t["data"].get("answer1") and t["data"].get("answer2"))
    expected = expected_scores(model_dir, names, task)
    assert len({round(s, 3) for s in expected.values()}) == 3, f"versions must score apart: {expected}"

    env = backend_env(REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-test", MODEL_DIR=model_dir, PREANNOTATE="always",
                      REWARD_BASE_MODEL=base, WORKERS=2, THREADS=4)
    server, _, url = start_backend(env, tmp_path, worker=False)
    store = VersionStore(model_dir)
    seen: dict[int, list[tuple[float, str, float]]] = {i: [] for i in range(8)}
    errors: list[str] = []
    stop = threading.Event()
    swapped_at: dict[str, float] = {}

    def client(i: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{url}/predict", json=body, timeout=30)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    continue
                answer = r.json()
                item = answer["results"][body["tasks"].index(task)]
                if item["model_version"] != answer["model_version"]:
                    errors.append(f"result of {item['model_version']} in a response of {answer['model_version']}")
                seen[i].append((time.time(), item["model_version"], item["score"]))
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                errors.append(repr(exc))

    try:
        warm_up_predict(url, body, clients=8, timeout=240)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        poll(lambda: all(len(s) >= 2 for s in seen.values()), 60, message="every client served by v1")
        for name in names[1:]:
            before = sum(len(s) for s in seen.values())
            store.activate(4, name)
            swapped_at[name] = time.time()
            poll(lambda: sum(len(s) for s in seen.values()) >= before + 40, 60, message=f"40 answers after {name}")
        stop.set()
        for t in threads:
            t.join(timeout=40)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:5]
        total = sum(len(s) for s in seen.values())
        order = {name: i for i, name in enumerate(names)}
        for i, answers in seen.items():
            versions = [v for _, v, _ in answers]
            assert set(versions) <= set(names), versions
            ranks = [order[v] for v in versions]
            assert ranks == sorted(ranks), f"client {i} went back to an older version: {versions}"
            for at, version, score in answers:
                # The score is the one that version gives: the response names the model that produced it.
                assert abs(score - expected[version]) < 1e-4, (version, score, expected)
                # Once the pointer moved (and a request had time to notice), no older version answers.
                for name, swapped in swapped_at.items():
                    if at > swapped + 5:
                        assert order[version] >= order[name], (i, at - swapped, version, name)
        assert {v for s in seen.values() for _, v, _ in s} == set(names)
        print(f"\n{total} /predict answers from 8 clients across {len(names)} versions, no errors")
        assert "Traceback" not in server.output()
    finally:
        stop.set()
        server.stop()


# ---------------------------------------------------------------- coalescing under concurrency

def test_concurrent_events_coalesce_into_one_pending_job(redis_conn):
    """8 server threads enqueue at the same moment (what a burst of webhooks does): still one pending job.
    (test_app's burst test sends its events one after the other.) Ten bursts, each from a clean queue."""
    queue = JobQueue(redis_conn, "rlhf-test", job_timeout=3600, retries=0)
    bursts = []
    for burst in range(10):
        redis_conn.flushdb()
        barrier = threading.Barrier(8)
        results: list = []

        def events():
            barrier.wait(10)
            for _ in range(5):
                results.append(queue.enqueue(train, 4))

        threads = [threading.Thread(target=events) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 40
        queued = redis_conn.llen("rq:queue:rlhf-test-train")
        fresh = sum(not r.coalesced for r in results)
        bursts.append((queued, fresh, len({r.job_id for r in results})))
    assert all(b == (1, 1, 1) for b in bursts), \
        f"(jobs queued, answered 'queued', distinct job ids) per burst of 40 concurrent events: {bursts}"
