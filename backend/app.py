"""The HTTP routes Label Studio calls, plus /metrics, /jobs and /versions for people.

Nothing slow happens here: /webhook only enqueues, /setup only parses the label config (cached) and
records what Label Studio sent, /predict scores with a model loaded once per process.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from flask import Flask, Response, g, jsonify, request, send_file
from rq import Worker
from werkzeug.exceptions import HTTPException

from backend.auth import credentials_match
from backend.config import Settings
from backend.labels import LabelConfigError, parse_label_config
from backend.labelstudio import ProjectRegistry
from backend.logs import RedactSecrets
from backend.metrics import Metrics
from backend.queue import GENERATE, MAINTENANCE, REPORT, TRAIN, JobQueue
from backend.report import report_path
from backend.serving import ModelCache, predict
from model.store import VersionStore

log = logging.getLogger(__name__)

MODEL_CLASS = "RLHFPreferenceModel"
TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED",
                "START_TRAINING"}
GENERATE_EVENTS = {"TASKS_CREATED", "PROJECT_UPDATED"}
KNOWN_EVENTS = TRAIN_EVENTS | GENERATE_EVENTS | {"TASKS_DELETED"}
CATCH_UP_SECONDS = 60


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def connect_redis(url: str) -> redis.Redis:
    # Short timeouts: with Redis down, /health and /predict must still answer within Label Studio's 1 s.
    return redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=1.0, health_check_interval=30)


def create_app(settings: Settings, connection: redis.Redis | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    connection = connection or connect_redis(settings.redis_url)
    store = VersionStore(settings.model_dir)
    models = ModelCache(settings, store)
    queue = JobQueue(connection, settings.queue_prefix, settings.job_timeout, settings.job_retries)
    registry = ProjectRegistry(connection, settings.queue_prefix)
    metrics = Metrics(connection, settings.queue_prefix)
    redactor = RedactSecrets(settings.secrets())
    app.extensions["rlhf"] = {"models": models, "queue": queue, "store": store}

    @app.before_request
    def authenticate():
        g.started = time.perf_counter()
        if settings.auth_enabled and not credentials_match(
                request.headers.get("Authorization"), settings.basic_auth_user, settings.basic_auth_pass):
            return Response(json.dumps({"error": "authentication required"}), 401, mimetype="application/json",
                            headers={"WWW-Authenticate": 'Basic realm="rlhf-backend"'})

    @app.after_request
    def count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.record_request(f"{request.method} {route}", response.status_code,
                               time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        log.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.description), exc.code

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError):
        log.error("Redis unavailable on %s %s: %s", request.method, request.path, exc)
        return jsonify(error=f"the job queue (Redis) is unavailable: {type(exc).__name__}; retry later"), 503

    @app.get("/")
    @app.get("/health")
    def health():
        redis_ok, workers = True, None
        try:
            connection.ping()
            workers = Worker.count(connection=connection)
            ls_status = registry.status()
        except redis.RedisError:
            redis_ok, ls_status = False, None
        problems = []
        if not redis_ok:
            problems.append("Redis is unreachable: events cannot be queued")
        elif not workers:
            problems.append("no worker is running: answers are not generated and nothing trains")
        if not settings.label_studio_url:
            problems.append("LABEL_STUDIO_URL is not set: jobs rely on the hostname and token from /setup")
        if ls_status and ls_status.get("message"):
            ls_status["message"] = redactor.redact(ls_status["message"])
        if ls_status and not ls_status["ok"]:
            problems.append(f"last Label Studio call failed: {ls_status['message']}")
        return jsonify(status="UP" if redis_ok and workers else "DEGRADED", model_class=MODEL_CLASS,
                       redis=redis_ok, workers=workers, label_studio=ls_status, problems=problems)

    @app.post("/setup")
    def setup():
        body = json_body()
        project = project_id(body.get("project"))
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BadRequest("'schema' (the project's label config) must be a string")
        try:
            parse_label_config(schema)
        except LabelConfigError as exc:
            raise BadRequest(f"this label config cannot be used: {exc}") from None
        hostname, token = body.get("hostname"), body.get("access_token")
        try:
            registry.record_setup(project, hostname if isinstance(hostname, str) else None,
                                  token if isinstance(token, str) else None, schema)
            if settings.auth_enabled and not registry.webhook_auth_ok(project):
                queue.enqueue(MAINTENANCE, project)
            # Events can be lost (LS waits 1 s and never retries): an annotator at work (LS calls /setup
            # before each prediction batch) triggers a catch-up pass, at most once a minute.
            if registry.due_for_catch_up(project, CATCH_UP_SECONDS):
                queue.enqueue(GENERATE, project)
                queue.enqueue(TRAIN, project, reason="catch-up")  # skipped unless annotations changed
        except redis.RedisError as exc:  # /setup gates every prediction batch: never fail it for Redis
            log.warning("could not record /setup for project %s: %s", project, exc)
        return jsonify(model_version=models.version(project))

    @app.post("/predict")
    def predict_route():
        body = json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise BadRequest("'tasks' must be a non-empty list of tasks")
        for i, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise BadRequest(f"tasks[{i}] must be an object with a 'data' object")
        project = project_id(body.get("project") if body.get("project") is not None else tasks[0].get("project"))
        config = body.get("label_config")
        if not isinstance(config, str):
            raise BadRequest("'label_config' must be a string")
        try:
            fields = parse_label_config(config)
        except LabelConfigError as exc:
            raise BadRequest(f"this label config cannot be used: {exc}") from None
        scorer = models.scorer(project)
        results = predict(scorer, tasks, fields)
        return jsonify(results=results, model_version=scorer.version if scorer else models.version(project))

    @app.post("/webhook")
    def webhook():
        body = json_body()
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest("'action' must be a string naming a Label Studio event")
        if action not in KNOWN_EVENTS:
            log.info("ignoring unknown webhook action %r", action[:100])
            return jsonify(status="ignored", action=action[:100])
        project_obj = body.get("project")
        project = project_id(project_obj.get("id") if isinstance(project_obj, dict) else project_obj)
        if action == "TASKS_DELETED":
            return jsonify(status="ignored", action=action)
        kind = TRAIN if action in TRAIN_EVENTS else GENERATE
        kwargs = {"reason": action} if kind == TRAIN else {}
        enqueued = queue.enqueue(kind, project, **kwargs)
        return jsonify(status="coalesced" if enqueued.coalesced else "queued", job=enqueued.job_id)

    @app.post("/train")  # the pre-webhook training call (only with an LS feature flag turned off)
    def legacy_train():
        body = json_body()
        project = project_id(body.get("project"))
        enqueued = queue.enqueue(TRAIN, project, reason="START_TRAINING")
        return jsonify(status="coalesced" if enqueued.coalesced else "queued", job=enqueued.job_id)

    @app.get("/versions")
    def versions():
        # Label Studio sends no project with this GET; ?project=N narrows it for people.
        wanted = request.args.get("project")
        projects = [project_id(wanted)] if wanted else _store_projects(store)
        detail = {p: {"current": store.current(p), "versions": store.versions(p)} for p in projects}
        names = sorted({v for d in detail.values() for v in d["versions"]}, key=lambda v: int(v[1:]))
        return jsonify(versions=names, projects=detail)

    @app.get("/metrics")
    def metrics_route():
        snapshot = metrics.snapshot()
        snapshot["versions"] = {p: store.current(p) for p in _store_projects(store)}
        return jsonify(snapshot)

    @app.get("/report")
    def report():
        """The latest collection-quality report (rebuilt after each training, or on ?refresh=1)."""
        project = project_id(request.args.get("project"))
        path = report_path(settings.model_dir, project)
        if request.args.get("refresh") or not path.is_file():
            queue.enqueue(REPORT, project)
        if not path.is_file():
            return Response('<meta http-equiv="refresh" content="15"><p>Building the report for project '
                            f'{project}; this page reloads itself.</p>', 202, mimetype="text/html")
        return send_file(path, mimetype="text/html", max_age=0)

    @app.get("/jobs")
    def jobs():
        limit = request.args.get("limit", "20")
        if not (limit.isascii() and limit.isdigit()):
            raise BadRequest("'limit' must be a whole number of jobs")
        listing = queue.jobs(limit=max(1, min(int(limit), 200)))
        for groups in listing.values():
            for group in groups.values():
                for job in group:
                    if job.get("error"):
                        job["error"] = redactor.redact(job["error"])
        return jsonify(listing)

    return app


def json_body() -> dict:
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def project_id(value) -> int:
    """Label Studio names projects "4.1795778391" (id.created-timestamp) in /setup and /predict, 4 elsewhere."""
    if isinstance(value, bool):
        raise BadRequest("'project' must be a project id such as 4 or \"4.1795778391\"")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str):
        head = value.strip().split(".", 1)[0]
        if head.isascii() and head.isdigit() and int(head) > 0:
            return int(head)
    raise BadRequest("'project' must be a project id such as 4 or \"4.1795778391\"")


def _store_projects(store: VersionStore) -> list[int]:
    if not store.root.is_dir():
        return []
    return sorted(int(p.name) for p in store.root.iterdir() if p.is_dir() and p.name.isdigit())
