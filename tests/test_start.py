"""`rlhf-backend start`, the README's main command: server and worker together, and a worker that dies
(SIGKILL, e.g. the OOM killer) comes back on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests
from rq import Worker

from conftest import REDIS_URL, ROOT
from harness import backend_env, free_port, poll

pytestmark = pytest.mark.integration


def live_worker_pids(redis_conn) -> set[int]:
    pids = set()
    for worker in Worker.all(connection=redis_conn):
        try:
            os.kill(worker.pid, 0)
            pids.add(worker.pid)
        except (ProcessLookupError, TypeError):
            pass  # a dead worker's registration lingers until its TTL
    return pids


def test_start_serves_and_restarts_a_killed_worker(tmp_path, redis_conn):
    port = free_port()
    env = backend_env(REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-test", MODEL_DIR=tmp_path / "models",
                      PORT=port, HOST="127.0.0.1", WORKERS=1)
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "start"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/health"
    try:
        def up():
            try:
                body = requests.get(url, timeout=2).json()
            except requests.RequestException:
                return None
            return body if body["status"] == "UP" else None
        poll(up, 60, message="/health UP with a worker")
        (first,) = poll(lambda: live_worker_pids(redis_conn), 30, message="a live worker")
        os.kill(first, signal.SIGKILL)
        new = poll(lambda: live_worker_pids(redis_conn) - {first}, 60, message="a restarted worker")
        assert len(new) == 1
        assert requests.get(url, timeout=2).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=40)
    assert proc.returncode == 0, stderr[-3000:]
    assert "restarting" in stderr


def test_server_workers_import_the_model_code_when_they_start():
    """The post_worker_init hook leaves torch and transformers' classes imported, in a fresh interpreter."""
    bert = "transformers.models.bert.modeling_bert"
    code = ("import sys; from backend.cli import import_model_code; "
            f"before = {bert!r} in sys.modules; import_model_code(); "
            f"print(before, {bert!r} in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True"]
