"""Faults against a real Label Studio 1.23.2, the backend's real `serve` and `worker` processes and Redis:
a burst of annotation webhooks, the worker SIGKILLed in the middle of training and in the middle of
writing a version, and Redis going away and coming back empty."""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio
from rq.job import Job

from backend.jobs.train import train
from backend.queue import JobQueue
from conftest import FIXTURES, REDIS_URL, ROOT
from harness import LS_TOKEN, Process, backend_env, free_port, poll, start_backend, start_redis, warm_up_predict
from test_faults import synthetic_pairs, train_versions
from tiny_models import tiny_causal_lm, tiny_encoder

pytestmark = pytest.mark.e2e

CAPTURED = json.loads((FIXTURES / "ls-1.23.2-ml-requests.json").read_text())
CONFIG = (ROOT / "label_config.xml").read_text()
PREFIX = "rlhf-test"


@pytest.fixture(scope="module")
def ls(label_studio):
    return LabelStudio(base_url=label_studio, api_key=LS_TOKEN)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {"rm": tiny_encoder(folder / "rm"), "lm": tiny_causal_lm(folder / "lm")}


def make_project(ls, title: str, n_tasks: int, annotate: int, prompts_only: int = 0) -> tuple[int, list[int]]:
    """A project with `n_tasks` tasks that have answers, the first `annotate` of them annotated through the
    SDK, plus `prompts_only` tasks without answers."""
    project = ls.projects.create(title=title, label_config=CONFIG)
    tasks = [{"prompt": f"Question {i}: what is {i} plus {i}?", "answer1": f"It is {2 * i}, because {i}+{i}={2 * i}.",
              "answer2": f"maybe {i}"} for i in range(n_tasks)]
    tasks += [{"prompt": f"Unanswered prompt {i}", "answer1": "", "answer2": ""} for i in range(prompts_only)]
    ids = ls.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True).task_ids
    annotate_tasks(ls, ids[:annotate])
    return project.id, list(ids)


def annotate_tasks(ls, task_ids) -> None:
    for task_id in task_ids:
        ls.annotations.create(id=task_id, result=[{"from_name": "comparison", "to_name": "comparison",
                                                   "type": "pairwise", "value": {"selected": "left"}}])


def annotation_count(ls, project: int) -> int:
    return sum(len(t.annotations or []) for t in ls.tasks.list(project=project, fields="all"))


@pytest.fixture(scope="module")
def annotated(ls):
    """20 annotated tasks, shared read-only by the burst and the SIGKILL tests."""
    project, ids = make_project(ls, "faults: 20 annotated", 20, 20)
    return {"project": project, "tasks": ids, "annotations": annotation_count(ls, project)}


def predict_body(project: int) -> dict:
    body = copy.deepcopy(CAPTURED["predict_single_task_from_GET_task"]["json"])
    body["project"] = f"{project}.1795778391"
    body["tasks"][0]["project"] = project
    return body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------- burst

def test_a_burst_of_200_annotation_webhooks(ls, label_studio, annotated, tiny, tmp_path, redis_conn):
    project = annotated["project"]
    env = backend_env(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL,
                      QUEUE_PREFIX=PREFIX, MODEL_DIR=tmp_path / "models", REWARD_BASE_MODEL=tiny["rm"],
                      WORKERS=2, THREADS=4, JOB_RETRIES=1)
    server, worker, url = start_backend(env, tmp_path)
    try:
        poll(lambda: requests.get(f"{url}/health", timeout=5).json()["workers"] == 1, 60, message="a worker")
        payloads = []
        for i in range(200):
            event = copy.deepcopy(CAPTURED["webhook_ANNOTATION_CREATED"]["json"])
            event["project"]["id"] = project
            event["annotation"].update(project=project, task=annotated["tasks"][i % 20], id=i + 1)
            payloads.append(event)
        started = time.perf_counter()

        def send(client: int) -> list[tuple[int, float]]:
            session, out = requests.Session(), []
            for k, event in enumerate(payloads[client::8]):  # 25 each, paced over 2 s
                time.sleep(max(0.0, started + k * 0.08 - time.perf_counter()))
                t = time.perf_counter()
                response = session.post(f"{url}/webhook", json=event, timeout=10)
                out.append((response.status_code, time.perf_counter() - t))
            return out

        with ThreadPoolExecutor(8) as pool:
            answers = [a for chunk in pool.map(send, range(8)) for a in chunk]
        elapsed = time.perf_counter() - started
        latencies = [s for _, s in answers]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(f"\nburst: {len(answers)} webhooks from 8 clients in {elapsed:.2f} s; "
              f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        assert len(answers) == 200 and all(200 <= status < 300 for status, _ in answers), \
            sorted({status for status, _ in answers})
        assert elapsed < 4, f"the burst took {elapsed:.1f} s"

        def quiet():
            jobs = requests.get(f"{url}/jobs", params={"limit": 200}, timeout=10).json()["train"]
            idle = not jobs["queued"] and not jobs["started"] and not redis_conn.exists(f"{PREFIX}:pending:train:{project}")
            return jobs if idle and (jobs["finished"] or jobs["failed"]) else None
        jobs = poll(quiet, 240, interval=1, message="every train job done")
        time.sleep(2)
        jobs = poll(quiet, 30, interval=1, message="every train job done")
        ran = jobs["finished"] + jobs["failed"]
        print(f"train jobs run for 200 events: {len(ran)}, enqueued at "
              f"{sorted(j['enqueued_at'][11:23] for j in ran)}")
        assert not jobs["failed"], jobs["failed"]

        current = requests.get(f"{url}/versions", params={"project": project}, timeout=10).json()
        version = current["projects"][str(project)]["current"]
        metrics = json.loads((tmp_path / "models" / str(project) / version / "metrics.json").read_text())
        assert metrics["n_pairs"] == annotation_count(ls, project) == annotated["annotations"] == 20
        assert len(metrics["annotation_keys"]) == 20
        # Coalescing: one job pending at a time, so a burst shorter than a training run gives at most two.
        assert 1 <= len(ran) <= 2, f"{len(ran)} train jobs for one burst: {[j['id'] for j in ran]}"
    except BaseException:
        print("---- worker log ----\n", worker.output()[-6000:])
        raise
    finally:
        worker.stop()
        server.stop()


# ---------------------------------------------------------------- SIGKILL mid-training / mid-write

def complete(folder: Path) -> bool:
    """A version folder as training leaves it: loadable weights, tokenizer, reward config and metrics."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return {"config.json", "model.safetensors", "reward_config.json", "metrics.json"} <= names


class StoreWatcher(threading.Thread):
    """Checks, as often as it can, what a reader of the store sees: only complete versions listed, and
    `current` naming a complete one."""

    def __init__(self, model_dir: Path, project: int):
        super().__init__(daemon=True)
        from model.store import VersionStore

        self.store, self.project = VersionStore(model_dir), project
        self.violations: list[str] = []
        self.checks = 0
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for name in self.store.versions(self.project):
                if not complete(self.store.path(self.project, name)) and self.store.path(self.project, name).exists():
                    self.violations.append(f"incomplete version listed: {name}")
            current = self.store.current(self.project)
            if current is None or not complete(self.store.path(self.project, current)):
                self.violations.append(f"current names {current!r}, not a complete version")
            self.checks += 1
            time.sleep(0.005)

    def stop(self):
        self.stopping.set()
        self.join(10)


class PredictPoller(threading.Thread):
    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.answers: list[str] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self):
        session = requests.Session()
        while not self.stopping.is_set():
            try:
                r = session.post(f"{self.url}/predict", json=self.body, timeout=30)
                if r.status_code == 200:
                    self.answers.append(r.json()["results"][0]["model_version"])
                else:
                    self.errors.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
            time.sleep(0.1)

    def stop(self):
        self.stopping.set()
        self.join(40)


def wait_for_next_train_job(redis_conn, job_id: str, project: int, timeout: float = 120) -> Job:
    lock_key = f"{PREFIX}:lock:train:{project}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = Job.fetch(job_id, connection=redis_conn)
        status = job.get_status()
        if status in ("finished", "failed"):
            return job
        ttl = redis_conn.ttl(lock_key)
        if status == "started" and not job.meta.get("progress") and ttl > 300 and time.time() > deadline - timeout + 30:
            pytest.fail(f"the next train job has waited 30 s for the train lock that the killed worker took; "
                        f"the lock lives {ttl} s more (JOB_TIMEOUT), so training is blocked that long")
        time.sleep(0.5)
    pytest.fail(f"the next train job did not end within {timeout} s (status {status})")


@pytest.mark.parametrize("moment", ["training", "writing"])
def test_worker_killed_mid_job_leaves_the_served_version_intact(moment, ls, label_studio, annotated, tiny, tmp_path,
                                                                redis_conn):
    """SIGKILL the worker while the real train job fits the MiniLM reward model (progress in the job's
    meta), or once the new version's files appear in the store's hidden temporary folder. The server keeps
    answering with v1, no reader ever sees a partial version, and the next job succeeds."""
    project = annotated["project"]
    model_dir = tmp_path / "models"
    v1 = train_versions(model_dir, project, tiny["rm"], pairs=synthetic_pairs(12))
    env = backend_env(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL,
                      QUEUE_PREFIX=PREFIX, MODEL_DIR=model_dir, REWARD_BASE_MODEL="minilm", PREANNOTATE="always",
                      WORKERS=1, THREADS=4, JOB_RETRIES=0)
    server, _, url = start_backend(env, tmp_path, worker=False)
    body = predict_body(project)
    watcher, poller = StoreWatcher(model_dir, project), PredictPoller(url, body)
    worker = None
    try:
        warm_up_predict(url, body, clients=2, timeout=240)
        watcher.start()
        poller.start()
        queue = JobQueue(redis_conn, PREFIX, job_timeout=3600, retries=0)
        job_id = queue.enqueue(train, project, force="1").job_id
        worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep"], env, tmp_path / "worker-1.log")
        project_dir = model_dir / str(project)

        def mid_training():
            progress = Job.fetch(job_id, connection=redis_conn).meta.get("progress") or 0
            return 0.06 <= progress < 0.85

        def mid_write():
            return any(p.is_file() for tmp in project_dir.glob(".tmp-*") for p in tmp.iterdir())

        condition = mid_training if moment == "training" else mid_write
        deadline = time.time() + 240
        while not condition():
            assert worker.popen.poll() is None, worker.output()[-3000:]
            assert time.time() < deadline, f"never saw the job {moment}: {worker.output()[-3000:]}"
            assert Job.fetch(job_id, connection=redis_conn).get_status() != "finished", "the job ended first"
            time.sleep(0.002 if moment == "writing" else 0.02)
        os.killpg(worker.popen.pid, signal.SIGKILL)
        worker.popen.wait(10)
        leftovers = [p.name for p in project_dir.glob(".tmp-*")]
        print(f"\nkilled while {moment}: job meta {Job.fetch(job_id, connection=redis_conn).meta}; "
              f"left behind: {leftovers}")
        assert leftovers, "the kill was meant to land before the version was renamed into place"
        time.sleep(2)  # the server keeps answering after the kill
        from model.store import VersionStore
        store = VersionStore(model_dir)
        assert store.versions(project) == [v1] and store.current(project) == v1
        answered_before = len(poller.answers)
        poll(lambda: len(poller.answers) >= answered_before + 3, 30, message="/predict answers after the kill")
        assert set(poller.answers) == {v1} and not poller.errors, (set(poller.answers), poller.errors[:3])
        assert watcher.checks > 20 and not watcher.violations, watcher.violations[:5]

        # The next job: a fresh worker (what `start` does), Label Studio's Start Training event.
        worker.stop()
        worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep"], env, tmp_path / "worker-2.log")
        event = copy.deepcopy(CAPTURED["webhook_START_TRAINING"]["json"])
        event["project"]["id"] = project
        answer = requests.post(f"{url}/webhook", json=event, timeout=10)
        assert answer.status_code == 200, answer.text
        job = wait_for_next_train_job(redis_conn, answer.json()["job"], project)
        assert job.get_status() == "finished", (job.latest_result().exc_string if job.latest_result() else None)
        v2 = job.return_value()["version"]
        assert store.current(project) == v2 and complete(store.path(project, v2)) and v2 != v1
        assert store.metrics(project, v2)["n_pairs"] == annotated["annotations"]
        poll(lambda: poller.answers[-1] == v2, 60, message=f"/predict answering with {v2}")
        watcher.stop()
        assert watcher.checks > 100 and not watcher.violations, watcher.violations[:5]
        assert not poller.errors, poller.errors[:3]
    except BaseException:
        if worker is not None:
            print("---- worker log ----\n", worker.output()[-6000:])
        raise
    finally:
        watcher.stop()
        poller.stop()
        if worker is not None:
            worker.stop(sig=signal.SIGKILL)
        server.stop()


# ---------------------------------------------------------------- Redis down

def test_redis_down_then_back_empty(ls, label_studio, tiny, tmp_path):
    port = free_port()
    rds = start_redis(port, tmp_path)
    redis_url = f"redis://127.0.0.1:{port}/0"
    project, ids = make_project(ls, "faults: redis down", 6, 0)
    model_dir = tmp_path / "models"
    v1 = train_versions(model_dir, project, tiny["rm"], pairs=synthetic_pairs(12))
    env = backend_env(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=redis_url,
                      QUEUE_PREFIX=PREFIX, MODEL_DIR=model_dir, REWARD_BASE_MODEL=tiny["rm"], GENERATOR_MODEL=tiny["lm"],
                      MAX_NEW_TOKENS=8, PREANNOTATE="always", WORKERS=1, THREADS=4, JOB_RETRIES=1)
    server, worker, url = start_backend(env, tmp_path)
    problems: list[str] = []
    try:
        poll(lambda: requests.get(f"{url}/health", timeout=5).json()["status"] == "UP", 60, message="/health UP")
        ls.ml.create(project=project, url=url, title="rlhf-backend")  # LS: /health, /setup, and its webhook
        body = predict_body(project)
        warm_up_predict(url, body, clients=1, timeout=240)

        rds.stop(sig=signal.SIGKILL)
        t = time.perf_counter()
        health = requests.get(f"{url}/health", timeout=5)
        assert time.perf_counter() - t < 1.0, "Label Studio waits 1 s for /health"
        assert health.status_code == 200 and health.json()["status"] == "DEGRADED" and health.json()["redis"] is False
        predicted = requests.post(f"{url}/predict", json=body, timeout=30)
        assert predicted.status_code == 200 and predicted.json()["results"][0]["model_version"] == v1
        event = copy.deepcopy(CAPTURED["webhook_ANNOTATION_CREATED"]["json"])
        event["project"]["id"] = project
        hook = requests.post(f"{url}/webhook", json=event, timeout=5)
        assert hook.status_code == 503 and "Redis" in hook.json()["error"], hook.text

        # While Redis is down, people keep working: their events reach the backend and are lost.
        new_ids = ls.projects.import_tasks(id=project, return_task_ids=True, request=[
            {"prompt": f"Prompt imported while Redis was down {i}", "answer1": "", "answer2": ""} for i in range(3)
        ]).task_ids
        annotate_tasks(ls, ids[:4])
        time.sleep(1)

        rds = start_redis(port, tmp_path)
        if worker.popen.poll() is not None:
            problems.append(f"the worker exited when Redis went away (code {worker.popen.returncode})")
        try:
            poll(lambda: requests.get(f"{url}/health", timeout=5).json()["status"] == "UP", 30,
                 message="/health UP again (a live worker registered in the restarted Redis)")
        except TimeoutError as exc:
            problems.append(f"{exc}: {requests.get(f'{url}/health', timeout=5).json()['problems']}")

        # Label Studio's next prediction batch calls /setup: the catch-up pass fills the lost tasks.
        ls.actions.create(id="retrieve_tasks_predictions", project=project, selected_items={"all": True, "excluded": []})

        def filled():
            data = [ls.tasks.get(id=str(i)).data for i in new_ids]
            return all(d.get("answer1") and d.get("answer2") for d in data)
        try:
            poll(filled, 180, interval=2, message="answers in the tasks imported while Redis was down")
        except TimeoutError as exc:
            problems.append(str(exc))

        # The annotations made during the outage get trained on.
        def trained():
            current = requests.get(f"{url}/versions", params={"project": project}, timeout=10).json()
            version = current["projects"][str(project)]["current"]
            return version if version != v1 and \
                json.loads((model_dir / str(project) / version / "metrics.json").read_text())["n_pairs"] == 4 else None
        try:
            poll(trained, 60, interval=2, message="a version trained on the 4 annotations made while Redis was down")
        except TimeoutError as exc:
            problems.append(f"{exc}; train jobs: {requests.get(f'{url}/jobs', timeout=10).json()['train']}")
        assert not problems, problems
    except BaseException:
        print("---- worker log ----\n", worker.output()[-5000:])
        raise
    finally:
        worker.stop()
        server.stop()
        rds.stop()
