"""The HTTP routes: Label Studio's (/health, /setup, /predict, /webhook, /train, /versions) and /metrics,
/jobs, /report for people. Each parses the request and hands it to RLHFPreferenceModel (backend/model.py),
which owns what the calls mean; nothing slow happens here.
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
from backend.jobs.report import report as report_job
from backend.logs import RedactSecrets
from backend.metrics import Metrics
from backend.model import KNOWN_EVENTS, BadRequest, RLHFPreferenceModel
from backend.queue import JobQueue, connect_redis
from backend.report import report_path
from backend.serving import ModelCache
from model.store import VersionStore

log = logging.getLogger(__name__)

MODEL_CLASS = RLHFPreferenceModel.__name__


def create_app(settings: Settings, connection: redis.Redis | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    connection = connection or connect_redis(settings.redis_url)
    queue = JobQueue(connection, settings.queue_prefix, settings.job_timeout, settings.job_retries)
    models = ModelCache(settings, VersionStore(settings.model_dir))
    model = RLHFPreferenceModel(settings, connection, queue, models)
    metrics = Metrics(connection, settings.queue_prefix)
    redactor = RedactSecrets(settings.secrets())
    app.extensions["rlhf"] = {"model": model, "models": models, "queue": queue}

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
            ls_status = model.registry.status()
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
        version = model.setup(project_id(body.get("project")), body.get("schema"), body.get("hostname"),
                              body.get("access_token"))
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        body = json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise BadRequest("'tasks' must be a non-empty list of tasks")
        for i, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise BadRequest(f"tasks[{i}] must be an object with a 'data' object")
        project = project_id(body.get("project") if body.get("project") is not None else tasks[0].get("project"))
        results, version = model.predict(project, tasks, body.get("label_config"))
        return jsonify(results=results, model_version=version)

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
        enqueued = model.fit(action, body, project)
        if enqueued is None:
            return jsonify(status="ignored", action=action)
        return jsonify(status="coalesced" if enqueued.coalesced else "queued", job=enqueued.job_id)

    @app.post("/train")  # the pre-webhook training call (only with an LS feature flag turned off)
    def legacy_train():
        body = json_body()
        enqueued = model.fit("START_TRAINING", body, project_id(body.get("project")))
        return jsonify(status="coalesced" if enqueued.coalesced else "queued", job=enqueued.job_id)

    @app.get("/versions")
    def versions():
        # Label Studio sends no project with this GET; ?project=N narrows it for people.
        wanted = request.args.get("project")
        return jsonify(model.versions(project_id(wanted) if wanted else None))

    @app.get("/metrics")
    def metrics_route():
        snapshot = metrics.snapshot()
        snapshot["versions"] = {p: d["current"] for p, d in model.versions()["projects"].items()}
        return jsonify(snapshot)

    @app.get("/report")
    def report():
        """The latest collection-quality report (rebuilt after each training, or on ?refresh=1)."""
        project = project_id(request.args.get("project"))
        path = report_path(settings.model_dir, project)
        if request.args.get("refresh") or not path.is_file():
            queue.enqueue(report_job, project)
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

