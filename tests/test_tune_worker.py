"""The tune job on a real `rlhf-backend worker` process and real Redis, with a local stand-in for Label
Studio's two reads (the task list and the export): `rlhf-backend tune --project N` queues a round that leaves
a new, served generator version; a round that fails, and one whose worker is killed mid-round, leave the
served version as it was and no partial version behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from rq.job import Job
from synthetic_export import annotation_result
from tiny_models import tiny_causal_lm, tiny_encoder

from backend.labelstudio import ProjectRegistry
from conftest import REDIS_URL, ROOT
from harness import Process, StubServer, backend_env, poll
from model.store import GENERATOR, VersionStore

pytestmark = pytest.mark.integration

PROJECT = 4
KEY = "stub-ls-key-0123456789"


def export(n: int) -> list[dict]:
    """n annotated Pairwise tasks, in Label Studio's JSON export form: the left answer is always chosen."""
    return [{"id": t, "project": PROJECT, "updated_at": "2026-12-01T10:00:00Z",
             "data": {"prompt": f"Question {t}: what is the capital of country {t}?",
                      "answer1": f"The capital is city {t}.", "answer2": "dog " * (1 + t % 5)},
             "annotations": [{"id": 1000 + t, "completed_by": 1, "result": annotation_result("left"),
                              "was_cancelled": False, "task": t, "project": PROJECT}]}
            for t in range(1, n + 1)]


@pytest.fixture
def label_studio():
    """Answers the sync's reads: no task changed recently, and the export holds the annotated tasks."""
    tasks = {"export": export(24)}

    def respond(path, authorization, headers):
        if f"/api/projects/{PROJECT}/export" in path:
            return 200, tasks["export"]
        if path.startswith("/api/tasks"):
            return 200, {"tasks": [], "total": 0}
        return 404, {"detail": "not found"}

    stub = StubServer(respond)
    stub.tasks = tasks
    yield stub
    stub.close()


@pytest.fixture
def project(tmp_path, redis_conn, label_config, label_studio):
    ProjectRegistry(redis_conn, "rlhf-test").record_setup(PROJECT, None, None, label_config)
    base = tiny_causal_lm(tmp_path / "tiny-lm")
    env = backend_env(REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-test", MODEL_DIR=tmp_path / "models", JOB_RETRIES=0,
                      LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=KEY, GENERATOR_MODEL=base,
                      REWARD_BASE_MODEL=tiny_encoder(tmp_path / "tiny-rm"), MAX_NEW_TOKENS=6, TORCH_THREADS=1,
                      TUNE_HOLDOUT=0.5, TUNE_EVAL_PROMPTS=4, TUNE_PROMOTE="always")
    return {"env": env, "store": VersionStore(tmp_path / "models", GENERATOR), "base": base}


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def served_version(store) -> None:
    """v1, made current, as an earlier round would leave it."""
    with store.new_version(PROJECT) as pending:
        tiny_causal_lm(pending.path, seed=1)
    store.activate(PROJECT, "v1")


def test_a_queued_round_leaves_a_new_served_version(project, redis_conn):
    queued = cli(project["env"], "tune", "--project", str(PROJECT))
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    worker = cli(project["env"], "worker", "--burst", "--no-sweep", "--queues", "tune")
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "finished", worker.stderr[-4000:]
    result = job.return_value()
    assert result["status"] == "done" and result["version"] == "v1" and result["promoted"], result
    assert result["annotations"] == 24 and result["tuning_pairs"] + result["held_out_pairs"] == 24
    store = project["store"]
    assert store.current(PROJECT) == "v1"
    assert store.metrics(PROJECT, "v1", "evaluation.json")["decision"]["by"] == "TUNE_PROMOTE=always"
    assert store.metrics(PROJECT, "v1", "tuning.json")["base"] == str(project["base"])


def test_a_failed_round_leaves_the_served_version(project, redis_conn, tmp_path):
    store = project["store"]
    served_version(store)
    env = dict(project["env"], REWARD_BASE_MODEL=str(tmp_path / "no-such-judge"))  # fails after the tuning
    job_id = cli(env, "tune", "--project", str(PROJECT)).stdout.strip()
    worker = cli(env, "worker", "--burst", "--no-sweep", "--queues", "tune")
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "failed", worker.stderr[-4000:]
    assert "no-such-judge" in job.latest_result().exc_string  # the judge, trained after the tuning, failed
    assert store.versions(PROJECT) == ["v1"] and store.current(PROJECT) == "v1"
    assert not list(store.project_dir(PROJECT).glob(".tmp-*"))


def test_a_killed_round_leaves_the_served_version(project, redis_conn, label_studio, tmp_path):
    store = project["store"]
    served_version(store)
    label_studio.tasks["export"] = export(400)  # a round long enough to be killed in the middle
    job_id = cli(project["env"], "tune", "--project", str(PROJECT)).stdout.strip()
    worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep", "--queues", "tune"],
                     project["env"], tmp_path / "worker.log")
    try:
        def tuning():
            job = Job.fetch(job_id, connection=redis_conn)
            return (job.meta.get("message") or "").startswith("tuning") and (job.meta.get("progress") or 0) > 0.05
        poll(tuning, 120, interval=0.1, message="the round's training under way")
        assert list(store.project_dir(PROJECT).glob(".tmp-*"))  # the version being written, hidden
        worker.stop(signal.SIGKILL)
    finally:
        worker.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert store.versions(PROJECT) == ["v1"] and store.current(PROJECT) == "v1", worker.output()[-3000:]
