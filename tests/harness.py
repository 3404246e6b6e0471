"""Real processes for integration and end-to-end tests: Label Studio 1.23.2 from PyPI in its own venv,
and the backend's own `serve` and `worker` commands."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

LABEL_STUDIO_VERSION = "1.23.2"
LS_VENV = Path(os.environ.get("RLHF_LS_VENV",
                              Path.home() / ".cache" / "rlhf-backend" / f"label-studio-{LABEL_STUDIO_VERSION}"))
LS_TOKEN = "e2e0123456789abcdef0123456789abcdef0123"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float, process: subprocess.Popen | None = None, **kwargs) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=2, **kwargs).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def ensure_label_studio() -> Path:
    """Install label-studio into a venv of its own (its pins clash with ours); reuse it when complete."""
    binary, done = LS_VENV / "bin" / "label-studio", LS_VENV / ".installed"
    if done.exists():
        return binary
    shutil.rmtree(LS_VENV, ignore_errors=True)  # an interrupted install
    subprocess.run([sys.executable, "-m", "venv", str(LS_VENV)], check=True)
    subprocess.run([str(LS_VENV / "bin" / "pip"), "install", "-q", f"label-studio=={LABEL_STUDIO_VERSION}"],
                   check=True, timeout=900)
    done.touch()
    return binary


class Process:
    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                      cwd=ROOT, start_new_session=True)

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


def start_label_studio(data_dir: Path) -> tuple[Process, str]:
    binary = ensure_label_studio()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN") and not k.startswith("LABEL_STUDIO_")}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false",
               LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true")
    process = Process([str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
                       "--data-dir", str(data_dir), "--username", "e2e@example.com", "--password", "e2e-password-1",
                       "--user-token", LS_TOKEN], env, data_dir / "label-studio.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", timeout=300, process=process.popen)
    return process, url


def backend_env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in settings.items()})
    return env


def start_backend(env: dict, log_dir: Path, worker: bool = True) -> tuple[Process, Process | None, str]:
    port = free_port()
    env = dict(env, PORT=str(port), HOST="127.0.0.1")
    server = Process([sys.executable, "-m", "backend.cli", "serve"], env, log_dir / "server.log")
    url = f"http://127.0.0.1:{port}"
    auth = (env["BASIC_AUTH_USER"], env["BASIC_AUTH_PASS"]) if env.get("BASIC_AUTH_USER") else None
    wait_for(f"{url}/health", timeout=60, process=server.popen, auth=auth)
    worker_process = Process([sys.executable, "-m", "backend.cli", "worker"], env, log_dir / "worker.log") \
        if worker else None
    return server, worker_process, url


def poll(check, timeout: float, interval: float = 0.5, message: str = "condition"):
    """Call `check` until it returns something truthy; return that."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout} s")
        time.sleep(interval)


class StubServer:
    """A local HTTP server standing in for a peer (Label Studio, an OpenAI server): records each request's
    path and Authorization header in `requests`, and answers what `respond(path, authorization, headers)`
    returns: (status, JSON body), or (status, JSON body, response headers) as [(name, value)] pairs (a
    name may repeat, as Set-Cookie does)."""

    def __init__(self, respond):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                authorization = self.headers.get("Authorization")
                stub.requests.append((self.path, authorization))
                status, body, *extra = respond(self.path, authorization, dict(self.headers))
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in extra[0] if extra else ():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PATCH = do_PUT = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def warm_up_predict(url: str, body: dict, clients: int, timeout: float = 300) -> None:
    """Each gunicorn worker imports torch and loads the model on its first /predict (tens of seconds on a
    busy 2-core machine): send concurrent requests until every one of them is answered within 2 s."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        started = time.perf_counter()
        requests.post(f"{url}/predict", json=body, timeout=timeout).raise_for_status()
        return time.perf_counter() - started

    deadline = time.time() + timeout
    with ThreadPoolExecutor(clients) as pool:
        while max(pool.map(one, range(clients * 2))) > 2.0:
            if time.time() > deadline:
                raise TimeoutError("the server did not warm up")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM ... of `pid` in KiB (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if v.strip().endswith("kB")}


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants (gunicorn's master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        total += proc_status(p).get("VmRSS", 0)
    return total / 1024


def start_redis(port: int, folder: Path) -> Process:
    """A Redis of its own, without persistence: a restart comes back empty (the worst case)."""
    process = Process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(folder)], dict(os.environ), folder / f"redis-{time.time():.0f}.log")
    poll(lambda: _pings(port), 20, interval=0.1, message="redis-server up")
    return process


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return False


def progress_job(steps: int, pause: float) -> int:
    """A job for worker tests (the worker imports it from tests/): saves its progress to Redis each step."""
    from rq import get_current_job

    job = get_current_job()
    for step in range(steps):
        job.meta["step"] = step
        job.save_meta()
        time.sleep(pause)
    return steps


class Proxy:
    """A forwarding HTTP proxy in front of Label Studio that a test can take down (connections then get a
    502, as from a load balancer whose backend is gone) or slow down, and that counts the requests by
    method and path."""

    def __init__(self, target: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.target = target.rstrip("/")
        self.down = threading.Event()
        self.delay = 0.0
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, self.path.split("?")[0]))
                time.sleep(proxy.delay)
                if proxy.down.is_set():
                    status, data, kind = 502, b'{"detail": "Label Studio is down"}', "application/json"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                    answer = requests.request(self.command, proxy.target + self.path, data=body or None,
                                              headers=headers, timeout=120)
                    status, data, kind = answer.status_code, answer.content, answer.headers.get("Content-Type", "")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = handle_any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, path in self.requests if m == method and fragment in path)

    def close(self):
        self.server.shutdown()
