"""Basic auth on the real server, and no secret in any log: the real `serve` and `worker` processes (and
the `generate` command) run a scenario where every configured secret is used and jobs fail with
tracebacks, against a Redis with a password and a hostile local server that echoes the credentials it
receives back in its error bodies. Their whole stdout/stderr must not contain any of those secrets."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
import requests

from conftest import FIXTURES, ROOT
from harness import Process, StubServer, backend_env, free_port, poll, start_backend

pytestmark = pytest.mark.integration

CAPTURED = json.loads((FIXTURES / "ls-1.23.2-ml-requests.json").read_text())
USER = "ls-basic-user"
PASSWORD = "basic-pass-6f1d2c9e8b"
LS_KEY = "ls-api-key-0a9b8c7d6e5f4a3b"
OPENAI_KEY = "sk-openai-key-5e4d3c2b1a09f8e7"
REDIS_PASSWORD = "redis-pass-7c6b5a4d3e2f"
SETUP_TOKEN = "setup-token-1b2c3d4e5f6a7b8c"
SECRETS = {"BASIC_AUTH_PASS": PASSWORD, "LABEL_STUDIO_API_KEY": LS_KEY, "OPENAI_API_KEY": OPENAI_KEY,
           "redis password": REDIS_PASSWORD, "access_token from /setup": SETUP_TOKEN,
           "basic auth header": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
ROUTES = [("GET", "/"), ("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"),
          ("POST", "/train"), ("GET", "/versions"), ("GET", "/metrics"), ("GET", "/jobs")]


def Echo() -> StubServer:
    """A hostile stand-in for Label Studio and the OpenAI server: every request gets a 401 whose body
    repeats the credentials and the URL it was sent."""
    return StubServer(lambda path, authorization, headers: (401, {
        "detail": f"Invalid credentials: Authorization: {authorization or ''} for {path}", "headers": headers}))


@pytest.fixture
def echo():
    e = Echo()
    yield e
    e.close()


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own, with a password."""
    import redis

    port = free_port()
    process = Process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--requirepass", REDIS_PASSWORD, "--dir", str(tmp_path)], dict(os.environ),
                      tmp_path / "redis.log")
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"

    def up():
        try:
            return redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False
    poll(up, 20, interval=0.1, message="redis-server up")
    yield url
    process.stop()


def auth_header(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_and_no_secret_in_any_log(tmp_path, echo, private_redis):
    env = backend_env(REDIS_URL=private_redis, QUEUE_PREFIX="rlhf-secrets", MODEL_DIR=tmp_path / "models",
                      BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD, LABEL_STUDIO_URL=echo.url,
                      LABEL_STUDIO_API_KEY=LS_KEY, GENERATOR="openai", OPENAI_BASE_URL=f"{echo.url}/v1",
                      GENERATOR_MODEL="served-model", OPENAI_API_KEY=OPENAI_KEY, JOB_RETRIES=0, LOG_LEVEL="DEBUG",
                      WORKERS=1, THREADS=2)
    server, worker, url = start_backend(env, tmp_path)
    good = auth_header(USER, PASSWORD)
    outputs = {}
    try:
        # 1. Auth on every route of the real server.
        wrong = [None, auth_header(USER, "wrong-password"), auth_header("someone", PASSWORD),
                 auth_header(USER, PASSWORD + "x"), {"Authorization": "Basic not-base64!"},
                 {"Authorization": f"Bearer {PASSWORD}"}, {"Authorization": "Basic " + base64.b64encode(
                     PASSWORD.encode()).decode()}]
        for method, route in ROUTES:
            for headers in wrong:
                r = requests.request(method, url + route, headers=headers, json={}, timeout=10)
                assert r.status_code == 401, (method, route, headers, r.status_code)
                assert r.headers.get("WWW-Authenticate", "").startswith("Basic")
                assert r.json()["error"]
        assert requests.get(f"{url}/health", headers=good, timeout=10).status_code == 200

        # 2. Every secret in use: /setup with Label Studio's token, events that queue jobs which call
        #    "Label Studio" with LABEL_STUDIO_API_KEY and fail with the echo in their tracebacks.
        setup = dict(CAPTURED["setup"]["json"], access_token=SETUP_TOKEN)
        assert requests.post(f"{url}/setup", json=setup, headers=good, timeout=10).status_code == 200
        for name in ("webhook_START_TRAINING", "webhook_TASKS_CREATED"):
            r = requests.post(f"{url}/webhook", json=CAPTURED[name]["json"], headers=good, timeout=10)
            assert r.status_code == 200, r.text
        r = requests.post(f"{url}/predict", json=CAPTURED["predict_single_task_from_GET_task"]["json"],
                          headers=good, timeout=60)
        assert r.status_code == 200
        bad = requests.post(f"{url}/predict", data=b"{oops", headers=good, timeout=10)
        assert bad.status_code == 400

        def failed_jobs():
            jobs = requests.get(f"{url}/jobs", headers=good, timeout=10).json()
            failed = [j for kind in jobs.values() for j in kind["failed"]]
            return failed if len(failed) >= 3 else None  # maintenance, train, generate
        failed = poll(failed_jobs, 120, interval=1, message="the three jobs failed")
        assert any(LS_KEY in seen for seen in [a or '' for _, a in echo.requests]), "the jobs did use LABEL_STUDIO_API_KEY"

        # 3. The OpenAI key, through the `generate` command (a real process too).
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("What is the capital of France?\n")
        generate = subprocess.run([sys.executable, "-m", "backend.cli", "generate", str(prompts), "-o",
                                   str(tmp_path / "out.json")], env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)
        assert generate.returncode != 0 and "401" in generate.stderr, generate.stderr[-2000:]
        assert any(OPENAI_KEY in seen for seen in [a or '' for _, a in echo.requests]), "the generate command did use OPENAI_API_KEY"
        outputs["generate"] = generate.stdout + generate.stderr
        health = requests.get(f"{url}/health", headers=good, timeout=10).json()
    finally:
        worker.stop()
        server.stop()
    outputs["server"], outputs["worker"] = server.output(), worker.output()
    assert "Traceback" in outputs["worker"], "the failed jobs' tracebacks should be in the worker log"

    leaks = [f"{name} in the {where} log" for where, text in outputs.items() for name, secret in SECRETS.items()
             if secret in text]
    leaks += [f"{name} in /jobs' error of {job['id']}" for job in failed for name, secret in SECRETS.items()
              if secret in (job.get("error") or "")]
    leaks += [f"{name} in /health" for name, secret in SECRETS.items() if secret in json.dumps(health)]
    for where, text in outputs.items():  # show the first offending line of each log
        for line in text.splitlines():
            if any(secret in line for secret in SECRETS.values()):
                leaks.append(f"{where}: {line[:300]}")
                break
    print("\n".join(leaks))
    assert not leaks, leaks


# What Label Studio itself may hand back: a session cookie (14 days), its CSRF cookie, a personal access
# token (a JWT) and someone's legacy token. None of them is configured here, so only their form gives them away.
SESSION = "q8w7e6r5t4y3u2i1o0p9a8s7d6f5g4h3"
CSRF = "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDc"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsInVzZXJfaWQiOjF9."
       "Q2hvc2VuU2lnbmF0dXJlMTIzNDU2Nzg5MA")
LEGACY = "0f1e2d3c4b5a69788796a5b4c3d2e1f001234567"
ECHOED = {"session cookie": SESSION, "CSRF cookie": CSRF, "JWT": JWT, "legacy token": LEGACY}


def Leaky() -> StubServer:
    """Label Studio answering errors with cookies and tokens in its headers and in the first 200 characters
    of its body (the JWT runs across the 200th, where the excerpt is cut): 404 for project 5 (it is gone),
    500 for everything else."""
    headers = [("Set-Cookie", f"sessionid={SESSION}; expires=Thu, 17 Dec 2026 10:00:00 GMT; HttpOnly; "
                              "Max-Age=1209600; Path=/; SameSite=Lax"),
               ("Set-Cookie", f"csrftoken={CSRF}; Path=/"), ("Authorization", f"Bearer {JWT}"),
               ("X-Token", LEGACY)]

    def respond(path, authorization, request_headers):
        if "project=5" in path or "/projects/5" in path:
            return 404, {"detail": "Not found.", "set-cookie": f"sessionid={SESSION}; Path=/",
                         "auth": f"Token {LEGACY}", "cookie": f"csrftoken={CSRF}"}, headers
        return 500, {"detail": f"Server Error sessionid={SESSION}; csrftoken={CSRF}", "auth": f"Token {LEGACY}",
                     "refresh": JWT}, headers
    return StubServer(respond)


def test_cookies_and_tokens_label_studio_answers_with_are_in_no_log_health_or_job_error(tmp_path, private_redis):
    import redis

    from backend.app import create_app
    from backend.config import load_settings

    leaky = Leaky()
    env = backend_env(REDIS_URL=private_redis, QUEUE_PREFIX="rlhf-leaky", MODEL_DIR=tmp_path / "models",
                      LABEL_STUDIO_URL=leaky.url, LABEL_STUDIO_API_KEY=LS_KEY, JOB_RETRIES=0, LOG_LEVEL="DEBUG")
    client = create_app(load_settings(env), redis.Redis.from_url(private_redis)).test_client()
    try:
        for project in (4, 5):  # each /setup queues a catch-up: generation and training
            r = client.post("/setup", json=dict(CAPTURED["setup"]["json"], project=f"{project}.1795778391"))
            assert r.status_code == 200, r.text
        worker = subprocess.run([sys.executable, "-m", "backend.cli", "worker", "--burst"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=180)
    finally:
        leaky.close()
    assert worker.returncode == 0, worker.stderr[-3000:]
    log = worker.stdout + worker.stderr
    health = client.get("/health").get_json()
    errors = [j["error"] for kind in client.get("/jobs").get_json().values() for j in kind["failed"]]

    # The calls failed as meant, and what they say is still useful: status, method, path.
    assert "Label Studio answered 500 to GET /api/" in health["label_studio"]["message"], health
    assert errors and all("Label Studio answered 500 to GET /api/" in e for e in errors), errors
    assert "project 5: Label Studio says it is gone (Label Studio answered 404 to GET /api/" in log, log[-3000:]
    assert "Traceback" in log
    texts = {"worker log": log, "/health": json.dumps(health), "/jobs' errors": "\n".join(errors)}
    # Whole or cut at the excerpt's end: no 12 characters of any of them in a row.
    leaks = [f"{name} in {where}: {line[:300]}" for where, text in texts.items() for line in text.splitlines()
             for name, secret in ECHOED.items() if any(secret[i:i + 12] in line for i in range(len(secret) - 11))]
    assert not leaks, "\n".join(leaks)
    assert "sessionid=***" in log and "Token ***" in log  # masked, with the name left to read
