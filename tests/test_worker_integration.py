"""Real Redis, real `rlhf-backend worker --burst` processes: failures are clear, credentials go only where
they belong, and the worker outlives Redis going away during a job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job

from backend.app import create_app
from backend.jobs.generate import generate
from backend.queue import JobQueue
from conftest import REDIS_URL, ROOT
from harness import Process, StubServer, backend_env, free_port, poll, start_redis

pytestmark = pytest.mark.integration

CONFIGURED_KEY = "configured-ls-key-0123456789"
SETUP_TOKEN = "token-from-setup-9876543210"


def Recorder() -> StubServer:
    """A local server that records every request and answers 404."""
    return StubServer(lambda path, authorization, headers: (404, {"detail": "not found"}))


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


def run_worker_burst(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", "worker", "--burst", "--no-sweep"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def worker_env(tmp_path, **settings):
    return backend_env(REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-test", MODEL_DIR=tmp_path / "models",
                       JOB_RETRIES=0, **settings)


def setup_project(make_settings, redis_conn, captured, hostname: str, **settings):
    """Send Label Studio's captured /setup, pointing its hostname at `hostname`."""
    client = create_app(make_settings(JOB_RETRIES=0, **settings), redis_conn).test_client()
    body = dict(captured["setup"]["json"], hostname=hostname, access_token=SETUP_TOKEN)
    assert client.post("/setup", json=body).status_code == 200
    return client


def only_job(redis_conn, kind="generate") -> Job:
    ids = [k.decode().split(":", 2)[2] for k in redis_conn.keys("rq:job:*")]
    jobs = [j for j in Job.fetch_many(ids, connection=redis_conn) if j and j.id.startswith(kind)]
    assert len(jobs) == 1, [j.id for j in jobs]
    return jobs[0]


def test_label_studio_down_fails_the_job_with_a_clear_reason(tmp_path, redis_conn, make_settings, captured):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = setup_project(make_settings, redis_conn, captured, "http://unused.example")
    proc = run_worker_burst(worker_env(tmp_path, LABEL_STUDIO_URL=dead, LABEL_STUDIO_API_KEY=CONFIGURED_KEY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = only_job(redis_conn)
    assert job.get_status() == "failed"
    assert "connect" in job.latest_result().exc_string.lower()
    health = client.get("/health").get_json()
    assert health["label_studio"]["ok"] is False and "generate job for project 4 failed" in health["label_studio"]["message"]
    assert CONFIGURED_KEY not in proc.stderr and CONFIGURED_KEY not in job.latest_result().exc_string


def test_setup_hostname_on_a_private_address_is_not_followed(tmp_path, redis_conn, make_settings, captured, recorder):
    setup_project(make_settings, redis_conn, captured, recorder.url)
    proc = run_worker_burst(worker_env(tmp_path, LABEL_STUDIO_API_KEY=CONFIGURED_KEY))
    job = only_job(redis_conn)
    assert job.get_status() == "failed" and "private or local address" in job.latest_result().exc_string
    assert recorder.requests == []  # nothing was sent there, least of all our key
    assert CONFIGURED_KEY not in proc.stderr


def test_allowed_private_hostname_gets_only_its_own_token(tmp_path, redis_conn, make_settings, captured, recorder):
    setup_project(make_settings, redis_conn, captured, recorder.url)
    proc = run_worker_burst(worker_env(tmp_path, LABEL_STUDIO_API_KEY=CONFIGURED_KEY,
                                       LABEL_STUDIO_ALLOW_PRIVATE_HOSTS="true"))
    assert recorder.requests, proc.stderr[-3000:]  # the job did call the /setup host
    for path, authorization in recorder.requests:
        assert CONFIGURED_KEY not in (authorization or "")
        assert SETUP_TOKEN in (authorization or "")


def test_configured_key_goes_only_to_label_studio_url(tmp_path, redis_conn, make_settings, captured):
    configured, other = Recorder(), Recorder()
    try:
        setup_project(make_settings, redis_conn, captured, other.url)
        run_worker_burst(worker_env(tmp_path, LABEL_STUDIO_URL=configured.url, LABEL_STUDIO_API_KEY=CONFIGURED_KEY))
        assert configured.requests and all(CONFIGURED_KEY in (a or "") for _, a in configured.requests)
        assert other.requests == []
    finally:
        configured.close()
        other.close()


def test_failed_jobs_are_listed_with_their_error(tmp_path, redis_conn, make_settings, captured):
    client = setup_project(make_settings, redis_conn, captured, "http://unused.example")
    run_worker_burst(worker_env(tmp_path, LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}",
                                LABEL_STUDIO_API_KEY=CONFIGURED_KEY))
    failed = client.get("/jobs").get_json()["generate"]["failed"]
    assert len(failed) == 1 and failed[0]["project"] == 4 and failed[0]["error"]
    assert client.get("/metrics").get_json()["jobs"]["generate"]["failed"] == 1


def test_a_project_label_studio_says_is_gone_is_forgotten_once_until_its_next_setup(tmp_path, make_settings, captured,
                                                                                   recorder):
    """Label Studio answers 404 for a project the backend remembers. Real workers, with retries on, and a
    Redis of this test's own: the first worker's sweep finds it gone after one call, says so once, retries
    nothing and skips the project's other queued jobs; the next worker start's sweep queues nothing for it;
    a /setup brings it back."""
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry

    from backend.labelstudio import ProjectRegistry

    port = free_port()
    rds = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    connection = redis.Redis.from_url(url)
    env = backend_env(REDIS_URL=url, QUEUE_PREFIX="rlhf-test", MODEL_DIR=tmp_path / "models", JOB_RETRIES=3,
                      LABEL_STUDIO_URL=recorder.url, LABEL_STUDIO_API_KEY=CONFIGURED_KEY)
    client = create_app(make_settings(REDIS_URL=url, JOB_RETRIES=3), connection).test_client()
    registry = ProjectRegistry(connection, "rlhf-test")

    def worker_start() -> str:  # a worker with its start-up sweep, until the queues are empty
        proc = subprocess.run([sys.executable, "-m", "backend.cli", "worker", "--burst"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    def jobs() -> list[Job]:
        ids = [k.decode().split(":", 2)[2] for k in connection.keys("rq:job:*")]
        return Job.fetch_many(ids, connection=connection)

    try:
        assert client.post("/setup", json=captured["setup"]["json"]).status_code == 200
        assert registry.projects() == [4]
        log = worker_start()
        assert len(recorder.requests) == 1, recorder.requests  # the first job's first call; nothing after it
        assert log.count("project 4: Label Studio says it is gone (Label Studio answered 404") == 1, log[-3000:]
        assert registry.projects() == [] and registry.get(4) == {}
        done = jobs()
        assert {j.func.kind for j in done} == {"train", "generate", "refresh"}
        assert all(j.get_status() == "finished" and j.return_value() == {"status": "forgotten", "project": 4}
                   for j in done), [(j.id, j.get_status(), j.return_value()) for j in done]
        for queue in JobQueue(connection, "rlhf-test", 60, 3).queues.values():  # no retry waits, none failed
            assert ScheduledJobRegistry(queue=queue).count == 0 and FailedJobRegistry(queue=queue).count == 0

        log = worker_start()
        assert "for project 4" not in log and len(jobs()) == len(done) and len(recorder.requests) == 1

        assert client.post("/setup", json=captured["setup"]["json"]).status_code == 200
        assert registry.projects() == [4] and registry.gone_since(4) is None
        log = worker_start()  # swept again: Label Studio is asked again, and it is forgotten again
        assert len(recorder.requests) == 2 and log.count("project 4: Label Studio says it is gone") == 1
    finally:
        rds.stop(sig=signal.SIGKILL)


def test_retries_back_off(redis_conn):
    queue = JobQueue(redis_conn, "rlhf-test", job_timeout=60, retries=3)
    job = Job.fetch(queue.enqueue(generate, 9).job_id, connection=redis_conn)
    assert job.retries_left == 3 and job.retry_intervals == [10, 30, 90]


@pytest.mark.parametrize("steps, pause", [(200, 0.05), (2, 4.0)], ids=["job-lost", "job-outlives-outage"])
def test_worker_outlives_redis_dying_during_a_job(tmp_path, steps, pause):
    """Redis dies during a job and comes back empty. A job that writes to Redis meanwhile fails, and the
    worker waits for Redis; a job that sleeps through the outage finishes. Either way the worker
    registers again (for /health) and works the next job."""
    port = free_port()
    rds = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    env = dict(worker_env(tmp_path, PYTHONPATH=str(ROOT / "tests")), REDIS_URL=url)
    worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep"], env, tmp_path / "worker.log")
    try:
        connection = redis.Redis.from_url(url)
        queue = Queue("rlhf-test-generate", connection=connection)
        running = queue.enqueue("harness.progress_job", steps, pause)
        poll(lambda: running.get_meta(refresh=True).get("step") is not None, 60, message="the job running")
        rds.stop(sig=signal.SIGKILL)
        time.sleep(0.5)
        rds = start_redis(port, tmp_path)
        poll(lambda: Worker.count(connection=connection) == 1, 30, message="the worker registered again")
        assert worker.popen.poll() is None
        after = queue.enqueue("harness.progress_job", 2, 0.0)
        poll(lambda: after.get_status(refresh=True) == "finished", 30, message="the next job done")
        assert after.return_value() == 2
        lost = "a fresh worker takes over" in worker.log_path.read_text()
        assert lost == (pause < 1), "only the job that wrote during the outage is lost"
        started = time.perf_counter()
        worker.stop()  # SIGTERM still stops it: a stop request is not an error to recover from
        assert worker.popen.returncode == 0 and time.perf_counter() - started < 10
    finally:
        worker.stop()
        rds.stop(sig=signal.SIGKILL)
