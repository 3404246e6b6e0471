"""A preference project at scale: what each retrain costs in Label Studio calls, seconds and memory.

Real processes throughout, as in production: Label Studio 1.23.2 on PostgreSQL (a fresh database per run;
`--db sqlite` for machines without it), a private redis-server, and the backend's own `rlhf-backend serve`
and `rlhf-backend worker` (of this checkout, or of `--source DIR` for another one) on the packaged default
models in fast mode. Nothing generates answers: every task is imported with both answers, hh-rlhf pairs
(`--data`) in random order, the file cycled when --n is larger (each copy's first human turn gets a "(copy
k)" mark, so that no two tasks share a text and the feature cache cannot pass one task's features to
another).

1. Import --n tasks (chunks of 5,000), connect the backend as Label Studio's UI does (`POST /api/ml`, so
   Label Studio sends it its event webhooks), annotate --labelled tasks through Label Studio's API (the
   hh-rlhf choice) and wait until the backend is settled: the version trained on all of them current, every
   unlabelled task carrying its prediction, no job queued or running. The first refresh in that phase
   computes every unlabelled task's features (the cold feature cache); it is reported on its own.
2. --events times: a burst of --burst annotations through Label Studio's API (Label Studio fires a real
   ANNOTATION_CREATED webhook for each), then, per event:
   - HTTP calls to Label Studio made by the backend: the sum of `label_studio_calls` in the RQ results of
     the event's jobs (the code before the redesign reports none), and, as a cross-check for any code,
     the requests in Label Studio's own access log in the event's window minus this script's own;
   - seconds from the burst's last annotation to the backend's `/versions` naming as current a version
     trained on every annotation of the burst (read from that version's metrics.json);
   - seconds from that moment to every unlabelled task in Label Studio carrying a prediction of that
     version (polled: the project's model-version counts, then a Data Manager filter for unlabelled tasks
     without it), and to the backend being idle again.
3. After the last event: Label Studio's prediction rows for the project, per version, and the tasks with
   more than one; the worker's peak resident memory (VmHWM).

Settings beyond the defaults: PREANNOTATE_MIN_ACCURACY=0, so that every trained version's predictions are
written (at the default 0.6, a version whose held-out accuracy is lower writes none, and a benchmark of
prediction writes would measure nothing). `--env KEY=VALUE` adds others.

    nice -n 5 python benchmarks/bench_scale.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl \\
        --n 10000 --labelled 1000 --label after

Results: a table on stdout, a JSON file in benchmarks/results/ (`--json-out` to choose), progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from harness import LS_TOKEN, ensure_label_studio, free_port, proc_status, tree_rss_mib, wait_for  # noqa: E402

KINDS = ("train", "refresh", "report", "generate", "maintenance")  # the backend's RQ queues (some absent before)
IMPORT_CHUNK = 5000
PAIRWISE = {"from_name": "comparison", "to_name": "comparison", "type": "pairwise"}
ACCESS_LINE = re.compile(r'^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] \[django\.server::[^\]]*\] \[\w+\] '
                         r'"(\w+) (\S+) HTTP/[\d.]+" (\d+)')


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def endpoint(method: str, path: str) -> str:
    """'POST /api/tasks/{id}/annotations': the method and the path without its query and ids."""
    path = re.sub(r"/\d+(?=/|$)", "/{id}", path.split("?", 1)[0].rstrip("/") or "/")
    return f"{method} {path}"


# ---------------------------------------------------------------- processes

class Proc:
    """A child process in a session of its own, its output in a file (stderr in another one if given)."""

    def __init__(self, args: list[str], env: dict, cwd: Path, out: Path, err: Path | None = None):
        self.out = open(out, "wb")
        self.err = open(err, "wb") if err else None
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=self.out,
                                      stderr=self.err or subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        for f in (self.out, self.err):
            if f:
                f.close()


def start_redis(folder: Path) -> tuple[Proc, int]:
    port = free_port()
    process = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(folder)], dict(os.environ), folder, folder / "redis.log")
    deadline = time.time() + 30
    while True:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.5).ping():
                return process, port
        except redis.RedisError:
            if time.time() > deadline or not process.alive():
                raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)


class Postgres:
    """A fresh database on the local PostgreSQL for Label Studio, dropped afterwards."""

    def __init__(self, host: str, port: int, user: str, password: str):
        self.host, self.port, self.user, self.password = host, port, user, password
        self.name = f"bench_scale_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        env = dict(os.environ, PGPASSWORD=self.password)
        done = subprocess.run(["psql", "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
                               "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], env=env, capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    @staticmethod
    def available(host: str, port: int, user: str, password: str) -> str | None:
        """None if a database can be created there, else why not."""
        if not shutil.which("psql"):
            return "psql is not installed"
        try:
            Postgres(host, port, user, password).psql("SELECT 1")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"PostgreSQL at {host}:{port} does not answer: {exc}"
        return None

    def create(self) -> None:
        self.psql(f"CREATE DATABASE {self.name}")

    def drop(self) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def env(self) -> dict:
        return {"DJANGO_DB": "default", "POSTGRE_NAME": self.name, "POSTGRE_USER": self.user,
                "POSTGRE_PASSWORD": self.password, "POSTGRE_HOST": self.host, "POSTGRE_PORT": str(self.port)}


def start_label_studio(folder: Path, db_env: dict) -> tuple[Proc, str]:
    binary = ensure_label_studio()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "DJANGO_DB", "LOG_LEVEL")
           and not k.startswith(("LABEL_STUDIO_", "POSTGRE_"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(folder), ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false",
               LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", **db_env)
    # Its access log (django.server) goes to stderr, the file this script reads; stdout holds the rest.
    process = Proc([str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
                    "--data-dir", str(folder), "--username", "bench@example.com", "--password", "bench-password-1",
                    "--user-token", LS_TOKEN], env, folder, folder / "label-studio.out", folder / "label-studio.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", timeout=900, process=process.popen)
    return process, url


# ---------------------------------------------------------------- Label Studio, as this script sees it

class LabelStudioAPI:
    """Label Studio's REST API for this script, counting its own requests per endpoint (to take them out
    of Label Studio's access log, which leaves the backend's)."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        self.calls: Counter = Counter()
        self.log: list[tuple[float, str]] = []  # (when it ended, endpoint)

    def request(self, method: str, path: str, timeout: float = 600, **kwargs):
        try:
            response = self.session.request(method, f"{self.url}/{path.lstrip('/')}", timeout=timeout, **kwargs)
        finally:
            name = endpoint(method, "/" + path.lstrip("/"))
            self.calls[name] += 1
            self.log.append((time.time(), name))
        if response.status_code >= 400:
            raise RuntimeError(f"Label Studio answered {response.status_code} to {method} {path}: "
                               f"{response.text[:300]}")
        return response.json() if response.content else None

    def tasks_page(self, project: int, query: dict | None, page: int, page_size: int) -> dict:
        params = {"project": project, "fields": "task_only", "page": page, "page_size": page_size}
        if query is not None:
            params["query"] = json.dumps(query)
        return self.request("GET", "api/tasks/", params=params)

    def count(self, project: int, *filters: dict) -> int:
        query = {"filters": {"conjunction": "and", "items": list(filters)}, "ordering": ["tasks:id"]}
        return int(self.tasks_page(project, query, 1, 1)["total"])

    def all_tasks(self, project: int) -> list[dict]:
        out, page = [], 1
        while True:
            try:
                tasks = self.tasks_page(project, {"filters": {"conjunction": "and", "items": []},
                                                  "ordering": ["tasks:id"]}, page, 5000)["tasks"]
            except RuntimeError as exc:
                if " 404 " in str(exc) and page > 1:
                    return out
                raise
            out += tasks
            if len(tasks) < 5000:
                return out
            page += 1

    def annotate(self, task_id: int, side: str) -> int:
        body = {"result": [{**PAIRWISE, "value": {"selected": side}}], "lead_time": 5.0}
        return self.request("POST", f"api/tasks/{task_id}/annotations", json=body)["id"]

    def model_versions(self, project: int) -> dict[str, int]:
        return self.request("GET", f"api/projects/{project}/model-versions/") or {}


UNLABELLED = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
SEVERAL = {"filter": "filter:tasks:total_predictions", "operator": "greater", "type": "Number", "value": 1}


def without_version(version: str) -> dict:
    # A substring match in Label Studio ("v1" also excludes tasks holding "v10"): exact for the newest
    # version, the only one asked about (the backend numbers its versions upwards).
    return {"filter": "filter:tasks:predictions_model_versions", "operator": "not_contains", "type": "List",
            "value": [version]}


class AccessLog:
    """Label Studio's access log lines (time, endpoint), read as the file grows. Label Studio's logging
    config writes each line twice (the django logger's handler and the root's); `factor` says how often."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.entries: list[tuple[float, str]] = []
        self.factor = 1

    def read(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            match = ACCESS_LINE.match(line)
            if match:
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1000
                self.entries.append((stamp, endpoint(match[3], match[4])))

    def calibrate(self, api: LabelStudioAPI) -> None:
        """Send three known requests and see how many lines they made."""
        before = self._count("GET /api/version")
        for _ in range(3):
            api.request("GET", "api/version")
        time.sleep(0.5)
        self.read()
        self.factor = max(1, round((self._count("GET /api/version") - before) / 3))

    def _count(self, name: str) -> int:
        return sum(1 for _, e in self.entries if e == name)

    def window(self, start: float, end: float) -> list[tuple[float, str]]:
        """The requests that ended between start and end, in order: (time, endpoint)."""
        self.read()
        raw = Counter((t, e) for t, e in self.entries if start <= t <= end)
        return sorted(item for item, count in raw.items() for _ in range(max(1, round(count / self.factor))))


# ---------------------------------------------------------------- the backend's jobs, read from RQ

class Jobs:
    def __init__(self, connection: redis.Redis, prefix: str):
        from rq import Queue

        self.redis = connection
        self.queues = {kind: Queue(f"{prefix}-{kind}", connection=connection) for kind in KINDS}

    def busy(self) -> list[str]:
        """Ids of the jobs queued, running, scheduled (a retry's wait) or deferred."""
        from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry

        out = []
        for queue in self.queues.values():
            out += queue.get_job_ids()
            for registry in (StartedJobRegistry, ScheduledJobRegistry, DeferredJobRegistry):
                out += registry(queue=queue).get_job_ids()
        return out

    def ended(self) -> set[str]:
        from rq.registry import FailedJobRegistry, FinishedJobRegistry

        out: set[str] = set()
        for queue in self.queues.values():
            out.update(FinishedJobRegistry(queue=queue).get_job_ids())
            out.update(FailedJobRegistry(queue=queue).get_job_ids())
        return out

    def describe(self, ids) -> list[dict]:
        """What each job did, oldest first: kind, status, start, seconds, and its result."""
        from rq.job import Job

        out = []
        for job in Job.fetch_many(sorted(ids), connection=self.redis):
            if job is None:
                continue
            result = None
            try:
                result = job.return_value()
            except Exception:  # noqa: BLE001 - a failed job has none
                pass
            started, ended = _epoch(job.started_at), _epoch(job.ended_at)
            out.append({"id": job.id, "kind": job.origin.rsplit("-", 1)[-1], "status": job.get_status(refresh=False),
                        "enqueued": _epoch(job.enqueued_at), "started": started, "ended": ended,
                        "seconds": round(ended - started, 2) if started and ended else None,
                        "result": result if isinstance(result, dict) else None})
        return sorted(out, key=lambda j: j["started"] or 0)


def _epoch(moment) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def summarize_jobs(jobs: list[dict]) -> dict:
    """Per kind: how many ran (by status), their seconds, and the Label Studio calls they report."""
    out: dict = {}
    for job in jobs:
        kind = out.setdefault(job["kind"], {"jobs": 0, "statuses": Counter(), "seconds": 0.0, "calls": 0,
                                            "reporting_jobs": 0})
        kind["jobs"] += 1
        result = job["result"] or {}
        kind["statuses"][result.get("status") or job["status"]] += 1
        kind["seconds"] += job["seconds"] or 0.0
        if "label_studio_calls" in result:
            kind["calls"] += result["label_studio_calls"]
            kind["reporting_jobs"] += 1
    for kind in out.values():
        kind["statuses"] = dict(kind["statuses"])
        kind["seconds"] = round(kind["seconds"], 2)
    return out


# ---------------------------------------------------------------- the scenario

def load_tasks(path: Path, n: int, seed: int) -> list[tuple[dict, str]]:
    """n tasks (data, the side hh-rlhf chose) from the pairs in `path`, cycled; copies marked in their first
    human turn so that every task's texts are distinct."""
    from model.pairs import read_pairs

    pairs = [p for p in read_pairs(path) if isinstance(p.prompt, str) and p.chosen.strip() and p.rejected.strip()
             and p.chosen != p.rejected]
    if not pairs:
        raise SystemExit(f"{path} holds no usable pairs")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pair, copy = pairs[i % len(pairs)], i // len(pairs)
        prompt = pair.prompt
        if copy:
            prompt = prompt.replace("Human: ", f"Human: (copy {copy}) ", 1) if "Human: " in prompt \
                else f"(copy {copy}) {prompt}"
        left_chosen = rng.random() < 0.5
        left, right = (pair.chosen, pair.rejected) if left_chosen else (pair.rejected, pair.chosen)
        out.append(({"prompt": prompt, "answer1": left, "answer2": right}, "left" if left_chosen else "right"))
    return out


class Bench:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.source = Path(args.source).resolve() if args.source else ROOT
        self.procs: dict[str, Proc] = {}
        self.postgres: Postgres | None = None

    # ------------------------------------------------------------ start and stop

    def start(self) -> None:
        args = self.args
        (self.work / "redis").mkdir()
        self.procs["redis"], redis_port = start_redis(self.work / "redis")
        self.redis = redis.Redis(port=redis_port)
        if args.db == "postgres":
            self.postgres = Postgres(args.pg_host, args.pg_port, args.pg_user, args.pg_password)
            self.postgres.create()
            db_env = self.postgres.env()
            log(f"PostgreSQL database {self.postgres.name} created")
        else:
            db_env = {"DJANGO_DB": "sqlite"}
        (self.work / "ls").mkdir()
        started = time.perf_counter()
        self.procs["label-studio"], self.ls_url = start_label_studio(self.work / "ls", db_env)
        log(f"Label Studio up at {self.ls_url} on {args.db} in {time.perf_counter() - started:.0f} s")
        self.api = LabelStudioAPI(self.ls_url, LS_TOKEN)
        self.access = AccessLog(self.work / "ls" / "label-studio.log")
        self.access.calibrate(self.api)

        self.prefix = "bench"
        self.model_dir = self.work / "models"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")
               and k not in ("HOST", "PORT", "REDIS_URL", "QUEUE_PREFIX", "MODEL_DIR", "PYTHONPATH")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(self.source), HOST="127.0.0.1", PORT=str(port),
                   REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", QUEUE_PREFIX=self.prefix,
                   MODEL_DIR=str(self.model_dir), LABEL_STUDIO_URL=self.ls_url, LABEL_STUDIO_API_KEY=LS_TOKEN,
                   TRAIN_MODE="fast", PREANNOTATE="trained", PREANNOTATE_MIN_ACCURACY="0", LOG_LEVEL="INFO")
        if args.reward_model:
            env["REWARD_BASE_MODEL"] = args.reward_model
        for item in args.env:
            key, _, value = item.partition("=")
            env[key] = value
        self.backend_env = {k: env[k] for k in env if k not in os.environ or os.environ[k] != env[k]}
        self.backend_env.pop("LABEL_STUDIO_API_KEY", None)
        imported = subprocess.run([sys.executable, "-c", "import backend; print(backend.__file__)"], env=env,
                                  cwd=self.source, capture_output=True, text=True, check=True).stdout.strip()
        if not imported.startswith(str(self.source)):
            raise SystemExit(f"the backend would be imported from {imported}, not from {self.source}")
        self.url = f"http://127.0.0.1:{port}"
        self.procs["server"] = Proc([sys.executable, "-m", "backend.cli", "serve"], env, self.source,
                                    self.work / "server.log")
        wait_for(f"{self.url}/health", timeout=300, process=self.procs["server"].popen)
        self.procs["worker"] = Proc([sys.executable, "-m", "backend.cli", "worker"], env, self.source,
                                    self.work / "worker.log")
        from rq import Worker

        deadline = time.time() + 300
        while not Worker.all(connection=self.redis):
            if time.time() > deadline or not self.procs["worker"].alive():
                raise RuntimeError(f"no worker registered: {(self.work / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.5)
        self.jobs = Jobs(self.redis, self.prefix)
        log(f"backend from {self.source} up at {self.url} (worker pid {self.procs['worker'].pid})")

    def stop(self) -> None:
        for name in ("worker", "server", "label-studio", "redis"):
            if name in self.procs:
                self.procs[name].stop()
        if self.postgres is not None:
            try:
                self.postgres.drop()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"could not drop database {self.postgres.name}: {exc}")

    def check_alive(self) -> None:
        for name, process in self.procs.items():
            if not process.alive():
                raise RuntimeError(f"{name} exited with {process.popen.returncode}")

    # ------------------------------------------------------------ waiting for the backend

    def current(self) -> str | None:
        body = requests.get(f"{self.url}/versions", params={"project": self.project}, timeout=30).json()
        return (body.get("projects", {}).get(str(self.project)) or {}).get("current")

    def trained_on(self, version: str) -> set[int]:
        path = self.model_dir / str(self.project) / version / "metrics.json"
        try:
            keys = json.loads(path.read_text()).get("annotation_keys", [])
        except (OSError, ValueError):
            return set()
        return {int(k.split(":")[1]) for k in keys if k.split(":")[1].isdigit()}

    def wait_served(self, annotations: list[int], timeout: float) -> tuple[str, float, bool]:
        """(the first version current that trained on every annotation given, when it was seen, whether it
        did). Falls back to the current version once the backend has been idle for 10 s without one."""
        wanted, deadline, idle_since, checked = set(annotations), time.time() + timeout, None, {}
        while True:
            version = self.current()
            now = time.time()
            if version:
                if version not in checked or not checked[version]:
                    checked[version] = wanted <= self.trained_on(version)
                if checked[version]:
                    return version, now, True
            if self.jobs.busy():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since > 10 and version:
                log(f"  no version trained on all {len(wanted)} annotations; the backend is idle with {version}")
                return version, now, False
            if now > deadline:
                raise TimeoutError(f"no new version within {timeout} s")
            self.check_alive()
            time.sleep(0.25)

    def lacking(self, version: str) -> int:
        return self.api.count(self.project, UNLABELLED, without_version(version))

    def wait_predicted(self, version: str, unlabelled: int, timeout: float) -> tuple[str, float]:
        """When every unlabelled task carries a prediction of `version` (or of a newer current one)."""
        deadline = time.time() + timeout
        interval = 0.5 if self.args.n <= 2000 else 1.0
        while True:
            counts = self.api.model_versions(self.project)
            if counts.get(version, 0) >= unlabelled and self.lacking(version) == 0:
                return version, time.time()
            newer = self.current()
            if newer and newer != version:
                log(f"  {newer} replaced {version} before its predictions were all written; waiting for {newer}")
                version = newer
            if time.time() > deadline:
                raise TimeoutError(f"unlabelled tasks still lack {version} after {timeout} s "
                                   f"({counts.get(version, 0)} of {unlabelled} written)")
            self.check_alive()
            time.sleep(interval)

    def wait_idle(self, timeout: float, quiet: float = 3.0) -> float:
        """When no job has been queued or running for `quiet` seconds; returns the moment it went quiet."""
        deadline, since = time.time() + timeout, None
        while True:
            now = time.time()
            if self.jobs.busy():
                since = None
            elif since is None:
                since = now
            elif now - since >= quiet:
                return since
            if now > deadline:
                raise TimeoutError(f"jobs still running after {timeout} s: {self.jobs.busy()}")
            self.check_alive()
            time.sleep(0.5)

    def backend_calls(self, start: float, end: float, own: Counter) -> dict:
        """The requests in Label Studio's access log between start and end, minus this script's own (`own`:
        its requests in that window, per endpoint). Each of this script's requests is also matched to the
        log line nearest in time, which leaves the backend's requests in order: the longest gaps between
        two of them show its slowest calls (or its own work between calls)."""
        seen = self.access.window(start, end)
        counts = Counter(e for _, e in seen)
        backend = Counter({k: counts[k] - own.get(k, 0) for k in counts})
        backend = Counter({k: v for k, v in backend.items() if v})
        taken = [False] * len(seen)
        by_name: dict[str, list[int]] = {}
        for i, (_, name) in enumerate(seen):
            by_name.setdefault(name, []).append(i)
        for t, name in self.api.log:
            if start - 1 <= t <= end + 1:
                near = [i for i in by_name.get(name, []) if not taken[i] and abs(seen[i][0] - t) < 1.0]
                if near:
                    taken[min(near, key=lambda i: abs(seen[i][0] - t))] = True
        theirs = [(t, name) for (t, name), mine in zip(seen, taken) if not mine]
        gaps = sorted(((b[0] - a[0], b[1], b[0] - start) for a, b in zip(theirs, theirs[1:])), reverse=True)[:6]
        out = {"total": sum(backend.values()), "by_endpoint": dict(backend.most_common()),
               "longest_gaps": [[round(g, 2), name, round(at, 2)] for g, name, at in gaps]}
        if len(theirs) <= 3000:
            out["timeline"] = [[round(t - start, 2), name] for t, name in theirs]
        return out

    # ------------------------------------------------------------ the run

    def run(self) -> dict:
        args = self.args
        result: dict = {"started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                        "args": {k: v for k, v in vars(args).items() if k not in ("pg_password",)},
                        "machine": machine(), "backend": describe_source(self.source)}
        tasks = load_tasks(args.data, args.n, args.seed)
        log(f"{len(tasks)} tasks from {args.data.name}")
        self.start()
        result["backend"]["env"] = self.backend_env

        config = (ROOT / "label_config.xml").read_text()
        self.project = self.api.request("POST", "api/projects", json={"title": f"scale {args.n}",
                                                                      "label_config": config})["id"]
        started = time.perf_counter()
        for start in range(0, len(tasks), IMPORT_CHUNK):
            chunk = [{"data": data} for data, _ in tasks[start:start + IMPORT_CHUNK]]
            self.api.request("POST", f"api/projects/{self.project}/import", json=chunk, timeout=1800)
            log(f"imported {start + len(chunk)}/{len(tasks)} tasks")
        result["import_seconds"] = round(time.perf_counter() - started, 1)
        listed = self.api.all_tasks(self.project)
        if len(listed) != len(tasks):
            raise RuntimeError(f"Label Studio holds {len(listed)} tasks, not {len(tasks)}")
        by_text: dict[tuple, list[int]] = {}
        for task in listed:
            by_text.setdefault((task["data"]["prompt"], task["data"]["answer1"]), []).append(task["id"])
        ids = [by_text[(data["prompt"], data["answer1"])].pop(0) for data, _ in tasks]

        seen_jobs = self.jobs.ended()
        own = Counter(self.api.calls)
        started = time.time()
        self.api.request("POST", "api/ml", json={"url": self.url, "project": self.project, "title": "rlhf-backend",
                                                 "is_interactive": False})
        log(f"backend connected to project {self.project} (POST /api/ml)")

        # ---- starting point
        next_task = 0
        annotated: list[int] = []
        t0 = time.perf_counter()
        for i in range(args.labelled):
            annotated.append(self.api.annotate(ids[next_task], tasks[next_task][1]))
            next_task += 1
            if (i + 1) % max(1, args.labelled // 10) == 0:
                log(f"starting point: {i + 1}/{args.labelled} annotations")
        annotate_seconds = time.perf_counter() - t0
        log(f"starting point: {args.labelled} annotations in {annotate_seconds:.0f} s; waiting for the backend")
        version, served_at, covered = self.wait_served(annotated, args.timeout)
        log(f"starting point: {version} current")
        version, predicted_at = self.wait_predicted(version, args.n - next_task, args.timeout)
        idle_at = self.wait_idle(args.timeout)
        end = max(idle_at, predicted_at) + 1
        jobs = self.jobs.describe(self.jobs.ended() - seen_jobs)
        seen_jobs = self.jobs.ended()
        refreshes = [j for j in jobs if j["kind"] == "refresh" and (j["result"] or {}).get("status") != "skipped"]
        trains = [j for j in jobs if j["kind"] == "train"]
        result["starting_point"] = {
            "annotations": args.labelled, "annotate_seconds": round(annotate_seconds, 1),
            "connect_to_settled_seconds": round(end - 1 - started, 1),
            "version": version, "version_trained_on_all": covered,
            "last_annotation_to_predicted_seconds": round(predicted_at - (started + annotate_seconds), 1),
            "jobs": summarize_jobs(jobs),
            "first_refresh": refreshes[0] if refreshes else None,
            "first_trained_refresh": next((j for j in trains if (j["result"] or {}).get("status") == "done"), None),
            "label_studio_calls_in_log": self.backend_calls(started, end, Counter(self.api.calls) - own),
            "job_list": jobs,
        }
        if refreshes:
            first = refreshes[0]
            log(f"first refresh (cold feature cache): {first['seconds']} s, {first['result']}")
        log(f"starting point settled: {version}, {len(jobs)} jobs, {end - 1 - started:.0f} s after connecting")

        # ---- events
        result["events"] = []
        for event in range(1, args.events + 1):
            if next_task + args.burst > len(ids):
                log("no unlabelled tasks left for another burst")
                break
            own = Counter(self.api.calls)
            start = time.time()
            burst = []
            for _ in range(args.burst):
                burst.append(self.api.annotate(ids[next_task], tasks[next_task][1]))
                next_task += 1
            last = time.time()
            version, served_at, covered = self.wait_served(burst, args.timeout)
            log(f"event {event}: {version} current {served_at - last:.1f} s after the burst's last annotation")
            version, predicted_at = self.wait_predicted(version, args.n - next_task, args.timeout)
            log(f"event {event}: every unlabelled task has a {version} prediction "
                f"{predicted_at - served_at:.1f} s later")
            idle_at = self.wait_idle(args.timeout)
            end = max(idle_at, predicted_at) + 1
            time.sleep(max(0.0, end - time.time()))
            jobs = self.jobs.describe(self.jobs.ended() - seen_jobs)
            seen_jobs = self.jobs.ended()
            summary = summarize_jobs(jobs)
            trained = [j for j in jobs if j["kind"] == "train" and (j["result"] or {}).get("status") == "done"]
            # The jobs that report their calls (train, refresh, generate since the redesign; none before it).
            complete = any(k["reporting_jobs"] for k in summary.values())
            reported = sum(k["calls"] for k in summary.values())
            changed = [(j["result"] or {}).get("changed") for j in trained]
            budget = sum(20 + (c if c is not None else args.burst) / 100 + args.n / 1000 for c in changed) \
                if trained else None
            in_log = self.backend_calls(start, end, Counter(self.api.calls) - own)
            row = {
                "event": event, "burst": args.burst, "labelled": next_task, "unlabelled": args.n - next_task,
                "version": version, "version_trained_on_all": covered,
                "burst_seconds": round(last - start, 2),
                "burst_to_served_seconds": round(served_at - last, 2),
                "served_to_predicted_seconds": round(predicted_at - served_at, 2),
                "served_to_idle_seconds": round(idle_at - served_at, 2),
                "retrains": len(trained), "changed_annotations": changed,
                "label_studio_calls_reported": reported if complete else None,
                "label_studio_calls_in_log": in_log,
                "calls_budget": round(budget, 1) if budget is not None else None,
                "jobs": summary, "job_list": jobs,
                "worker_rss_mib": round(proc_status(self.procs["worker"].pid).get("VmRSS", 0) / 1024),
            }
            result["events"].append(row)
            log(f"event {event}: {in_log['total']} calls in Label Studio's log"
                + (f", {reported} reported by the jobs" if complete else "")
                + f"; jobs: { {k: v['statuses'] for k, v in summary.items()} }")

        # ---- the end state
        counts = self.api.model_versions(self.project)
        current = self.current()
        result["final"] = {
            "tasks": args.n, "labelled": next_task, "current_version": current,
            "prediction_rows": sum(counts.values()), "prediction_rows_by_version": counts,
            "tasks_with_several_predictions": self.api.count(self.project, SEVERAL),
            "unlabelled_without_current": self.lacking(current) if current else None,
            "project_model_version": self.api.request("GET", f"api/projects/{self.project}").get("model_version"),
        }
        worker = proc_status(self.procs["worker"].pid)
        result["memory_mib"] = {
            "worker_peak": round(worker.get("VmHWM", 0) / 1024), "worker_now": round(worker.get("VmRSS", 0) / 1024),
            "server_now": round(tree_rss_mib(self.procs["server"].pid)),
            "label_studio_peak": round(proc_status(self.procs["label-studio"].pid).get("VmHWM", 0) / 1024),
        }
        result["ended_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        result["machine"]["load_average_end"] = os.getloadavg()
        return result


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
            "load_average_start": os.getloadavg()}


def describe_source(source: Path) -> dict:
    def git(*cmd):
        done = subprocess.run(["git", "-C", str(source), *cmd], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no", "--", "backend", "model")
    return {"source": str(source), "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes_in_backend_or_model": bool(status)}


# ---------------------------------------------------------------- output

def targets(result: dict) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for the issue's targets that this run can speak to."""
    events = result.get("events", [])
    n = result["args"]["n"]
    out = []
    if events:
        served = max(e["burst_to_served_seconds"] for e in events)
        predicted = max(e["served_to_predicted_seconds"] for e in events)
        out.append(("burst -> new version served <= 15 s", f"max {served:.1f} s", _yes(served <= 15)))
        out.append(("new version -> every unlabelled task predicted <= 60 s", f"max {predicted:.1f} s",
                    _yes(predicted <= 60)))
        over = [e for e in events if e["calls_budget"] is not None
                and _calls(e) > e["calls_budget"]]
        worst = max(events, key=lambda e: _calls(e) - (e["calls_budget"] or 0))
        out.append(("HTTP calls per retrain <= 20 + changed/100 + N/1000",
                    f"worst event {_calls(worst)} calls for {worst['retrains']} retrain(s), budget "
                    f"{worst['calls_budget']}", _yes(not over)))
    final = result.get("final", {})
    if final:
        rows = final["prediction_rows"]
        ok = final["tasks_with_several_predictions"] == 0 and rows <= n
        out.append(("Label Studio prediction rows <= one per task", f"{rows} rows for {n} tasks, "
                    f"{final['tasks_with_several_predictions']} tasks with more than one", _yes(ok)))
    memory = result.get("memory_mib", {})
    if memory:
        peak = memory["worker_peak"]
        out.append(("worker memory <= 1.5 GiB (at N = 50,000)", f"peak {peak:,} MiB at N = {n:,}",
                    _yes(peak <= 1536) + ("" if n >= 50000 else " (at this N)")))
    return out


def _calls(event: dict) -> int:
    reported = event["label_studio_calls_reported"]
    return reported if reported is not None else event["label_studio_calls_in_log"]["total"]


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(result: dict) -> str:
    args = result["args"]
    lines = [f"N = {args['n']:,} tasks, {args['labelled']:,} labelled to start, bursts of {args['burst']}; backend "
             f"{result['backend']['commit']} ({result['backend']['source']}); Label Studio on {args['db']}; "
             f"{result['started_utc']} to {result.get('ended_utc', '?')} UTC; {result['machine']['cpu']}, "
             f"load average {result['machine']['load_average_start'][0]:.1f} at the start", ""]
    start = result.get("starting_point")
    if start:
        first = start["first_refresh"]
        lines.append(f"Starting point: {start['annotations']} annotations through the API in "
                     f"{start['annotate_seconds']:.0f} s; settled (version {start['version']} current, every "
                     f"unlabelled task predicted, no job running) {start['connect_to_settled_seconds']:.0f} s "
                     f"after connecting. First refresh (cold feature cache): "
                     + (f"{first['seconds']} s, {json.dumps(first['result'])}" if first else "none ran") + ".")
        lines.append("")
    lines += ["| event | changed annotations (retrains) | HTTP calls: jobs' count / LS access log | budget | "
              "burst -> served s | served -> all predicted s | served -> idle s | train / refresh / report job s |",
              "|---|---|---|---|---|---|---|---|"]
    for e in result.get("events", []):
        jobs = e["jobs"]
        seconds = " / ".join(f"{jobs[k]['seconds']:.1f}" if k in jobs else "-" for k in ("train", "refresh", "report"))
        reported = e["label_studio_calls_reported"]
        lines.append(f"| {e['event']} | {', '.join(str(c) for c in e['changed_annotations'])} ({e['retrains']}) | "
                     f"{reported if reported is not None else 'n/a'} / {e['label_studio_calls_in_log']['total']} | "
                     f"{e['calls_budget']} | {e['burst_to_served_seconds']:.1f} | "
                     f"{e['served_to_predicted_seconds']:.1f} | {e['served_to_idle_seconds']:.1f} | {seconds} |")
    final = result.get("final")
    if final:
        lines += ["", f"After the last event: {final['prediction_rows']:,} prediction rows in Label Studio for "
                      f"{final['tasks']:,} tasks ({final['labelled']:,} labelled), by version "
                      f"{json.dumps(final['prediction_rows_by_version'])}; "
                      f"{final['tasks_with_several_predictions']} tasks with more than one; unlabelled tasks "
                      f"without a {final['current_version']} prediction: {final['unlabelled_without_current']}."]
    memory = result.get("memory_mib")
    if memory:
        lines.append(f"Worker peak RSS (VmHWM) {memory['worker_peak']:,} MiB (now {memory['worker_now']:,}); "
                     f"server {memory['server_now']:,} MiB; Label Studio peak {memory['label_studio_peak']:,} MiB.")
    if result.get("events"):
        lines += ["", "Busiest endpoints in the last event (Label Studio's log, this script's requests taken out): "
                  + ", ".join(f"{k} x{v}" for k, v in list(
                      result["events"][-1]["label_studio_calls_in_log"]["by_endpoint"].items())[:8])]
        gaps = result["events"][-1]["label_studio_calls_in_log"].get("longest_gaps") or []
        lines.append("Longest gaps between two of the backend's requests in the last event (seconds, the request "
                     "that ended it, seconds after the burst began): "
                     + ", ".join(f"{g} before {name} at {at}" for g, name, at in gaps[:4]))
    rows = targets(result)
    if rows:
        lines += ["", "| target | measured | met |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="hh-rlhf JSONL (chosen/rejected)")
    parser.add_argument("--n", type=int, default=1000, help="tasks in the project (default 1000)")
    parser.add_argument("--labelled", type=int, default=None, help="annotated before the events (default n/10)")
    parser.add_argument("--events", type=int, default=3, help="bursts of annotations (default 3)")
    parser.add_argument("--burst", type=int, default=20, help="annotations per burst (default 20)")
    parser.add_argument("--source", help="run the backend from this checkout (default: this one)")
    parser.add_argument("--label", default=None, help="name in the results file (default: the source's commit)")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--pg-host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--pg-user", default=os.environ.get("PGUSER", "postgres"))
    parser.add_argument("--pg-password", default=os.environ.get("PGPASSWORD", ""))
    parser.add_argument("--reward-model", help="REWARD_BASE_MODEL (default: the packaged MiniLM)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more backend settings")
    parser.add_argument("--seed", type=int, default=0, help="the answers' order in each task")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds any one wait may take")
    parser.add_argument("--json-out", type=Path, help="default benchmarks/results/scale-<label>-n<N>.json")
    parser.add_argument("--keep", action="store_true", help="leave everything running (and the data) to inspect")
    args = parser.parse_args(argv)
    if args.labelled is None:
        args.labelled = max(1, args.n // 10)
    if args.labelled + args.events * args.burst > args.n:
        parser.error("--labelled + --events x --burst must not exceed --n")
    if args.db == "postgres":
        why = Postgres.available(args.pg_host, args.pg_port, args.pg_user, args.pg_password)
        if why:
            parser.error(f"{why} (use --db sqlite)")

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    log(f"work folder {work}")
    bench = Bench(args, work)
    result: dict = {}
    try:
        result = bench.run()
    except BaseException as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        for name in ("worker.log", "server.log"):
            path = work / name
            if path.is_file():
                log(f"---- {name} (end) ----\n{path.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        if args.keep:
            log(f"--keep: Label Studio {getattr(bench, 'ls_url', '?')} (token {LS_TOKEN}), backend "
                f"{getattr(bench, 'url', '?')}, data in {work}; process groups "
                f"{ {k: p.pid for k, p in bench.procs.items()} }")
        else:
            bench.stop()
            shutil.rmtree(work, ignore_errors=True)
    label = args.label or result["backend"]["commit"] or "run"
    out = args.json_out or ROOT / "benchmarks" / "results" / f"scale-{label}-n{args.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table(result))
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
