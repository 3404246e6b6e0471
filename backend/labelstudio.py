"""How the worker reaches Label Studio (the source of truth), and the few API calls the jobs need.

Credentials: LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY when configured. Otherwise the `hostname` and the
project creator's token that Label Studio sends in /setup. Anyone who can reach the backend can send a
/setup, so: the configured API key only ever goes to LABEL_STUDIO_URL, and a /setup hostname on a
private or loopback address is followed only with LABEL_STUDIO_ALLOW_PRIVATE_HOSTS=true.

Every call goes through `LabelStudioClient._request` on the SDK's HTTP client (which handles legacy tokens
and personal access tokens alike), and reads the JSON itself: the typed SDK methods parse every task into a
pydantic model (slow at 10,000 tasks), ask for `fields=all` (every annotation and prediction serialized),
send `ids=` where Label Studio reads `ids[]`, and lack the bulk endpoints. Errors carry the status, method,
path and a short body excerpt, never the response's headers (Label Studio sets a session cookie on them);
the excerpt has our key, cookies and anything token-like masked (backend/logs.py).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator
from urllib.parse import urlparse

import httpx
import redis
from label_studio_sdk import LabelStudio

from backend.config import Settings
from backend.logs import RedactSecrets

PAGE_SIZE = 1000      # tasks per page of a filtered task read (Label Studio's own maximum is larger)
EXPORT_IDS = 200      # task ids per export request (they travel in the URL)
ERROR_EXCERPT = 200   # characters of an error body kept in messages
GONE_SECONDS = 7 * 24 * 3600  # how long a forgotten project's jobs queued before it was forgotten are skipped
OVERLAP_SECONDS = 10  # a catch-up read looks this far before its cursor (saves that committed late)
EPOCH = "1970-01-01T00:00:00Z"


class LabelStudioUnavailable(RuntimeError):
    """No usable way to reach Label Studio for this project; the message says what to configure."""


class LabelStudioError(RuntimeError):
    """A call to Label Studio failed. The message names the call and never holds a credential."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ProjectGone(LabelStudioError):
    """Label Studio answers 404 or 403 for the project: it was deleted, or this key lost access to it."""


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str = field(repr=False)
    source: str  # "config" or "setup"


class ProjectRegistry:
    """What /setup told us about each project, shared through Redis with the workers."""

    def __init__(self, connection: redis.Redis, prefix: str):
        self.redis = connection
        self.prefix = prefix

    def _key(self, project: int) -> str:
        return f"{self.prefix}:project:{project}"

    def record_setup(self, project: int, hostname: str | None, access_token: str | None, label_config: str) -> None:
        key = self._key(project)
        fields = {"label_config": label_config, "seen_at": str(time.time())}
        if hostname:
            fields["hostname"] = hostname
        if access_token:
            fields["access_token"] = access_token
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=fields)
        pipe.sadd(f"{self.prefix}:projects", project)
        pipe.delete(self._gone_key(project))  # a forgotten project is back
        pipe.execute()

    def record_label_config(self, project: int, label_config: str) -> bool:
        """Remember the project's label config (from a PROJECT_UPDATED event); True if it differs from the
        one the last such event brought (/setup records the config too, but not this)."""
        pipe = self.redis.pipeline()
        pipe.hget(self._key(project), "updated_config")
        pipe.hset(self._key(project), mapping={"label_config": label_config, "updated_config": label_config})
        previous, _ = pipe.execute()
        return previous is None or previous.decode() != label_config

    def _gone_key(self, project: int) -> str:
        return f"{self.prefix}:gone:{project}"

    def forget(self, project: int) -> bool:
        """Label Studio says the project is gone: stop sweeping it, and skip the jobs queued for it before now
        (a new /setup brings it back). True for the one call that forgot it; later ones find it forgotten."""
        pipe = self.redis.pipeline()
        pipe.delete(self._key(project))
        pipe.srem(f"{self.prefix}:projects", project)
        pipe.set(self._gone_key(project), time.time(), nx=True, ex=GONE_SECONDS)
        return bool(pipe.execute()[-1])

    def gone_since(self, project: int) -> float | None:
        """When the project was forgotten (None: it was not, or it is back)."""
        raw = self.redis.get(self._gone_key(project))
        return float(raw) if raw else None

    def due_for_catch_up(self, project: int, interval: int) -> bool:
        """True at most once per `interval` seconds per project."""
        return bool(self.redis.set(f"{self.prefix}:catch-up:{project}", 1, nx=True, ex=interval))

    def webhook_auth_ok(self, project: int) -> bool:
        return bool(self.redis.exists(f"{self.prefix}:webhook-auth:{project}"))

    def mark_webhook_auth_ok(self, project: int, ttl: int = 3600) -> None:
        # Expires so that a webhook re-created in Label Studio gets its header back within the hour.
        self.redis.set(f"{self.prefix}:webhook-auth:{project}", 1, ex=ttl)

    def get(self, project: int) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(project)).items()}

    def projects(self) -> list[int]:
        return sorted(int(p) for p in self.redis.smembers(f"{self.prefix}:projects"))

    def record_status(self, ok: bool, message: str) -> None:
        """The outcome of the last Label Studio call a job made, shown by /health."""
        self.redis.set(f"{self.prefix}:label-studio-status",
                       json.dumps({"ok": ok, "message": message, "at": time.time()}))

    def status(self) -> dict | None:
        raw = self.redis.get(f"{self.prefix}:label-studio-status")
        return json.loads(raw) if raw else None


def is_private_host(host: str) -> bool:
    """True if `host` is or resolves to a loopback, private, link-local or otherwise reserved address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return True  # unresolvable: treat as unsafe
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            return True
    return False


def resolve_connection(settings: Settings, setup: dict[str, str]) -> Connection:
    if settings.label_studio_url:
        key = settings.label_studio_api_key or setup.get("access_token")
        if not key:
            raise LabelStudioUnavailable("LABEL_STUDIO_URL is set but no LABEL_STUDIO_API_KEY, and Label Studio "
                                         "has not called /setup with a token yet")
        return Connection(settings.label_studio_url, key, "config")
    hostname, token = setup.get("hostname"), setup.get("access_token")
    if not hostname or not token:
        raise LabelStudioUnavailable("no way to reach Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                                     "(or connect the backend in Label Studio so that /setup supplies them)")
    parsed = urlparse(hostname)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise LabelStudioUnavailable(f"the hostname from /setup is not an http(s) URL: {hostname!r}")
    if not settings.label_studio_allow_private_hosts and is_private_host(parsed.hostname):
        raise LabelStudioUnavailable(
            f"the hostname from /setup ({parsed.hostname}) is a private or local address; set LABEL_STUDIO_URL, "
            "or LABEL_STUDIO_ALLOW_PRIVATE_HOSTS=true if you trust every client that can reach this backend")
    return Connection(hostname.rstrip("/"), token, "setup")


def task_query(*filters: dict, ids: list[int] | None = None, ordering: str = "tasks:id") -> str:
    """A Data Manager query: every filter must hold (and the task is one of `ids`, when given)."""
    query: dict = {"filters": {"conjunction": "and", "items": list(filters)}, "ordering": [ordering]}
    if ids is not None:
        query["selectedItems"] = {"all": False, "included": list(ids)}
    return json.dumps(query)


def updated_after(timestamp: str) -> dict:
    return {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": timestamp}


def _parse_timestamp(timestamp: str) -> datetime:
    """Label Studio's timestamps (2026-12-04T10:21:46.861372Z; the fraction is left out when it is 0)."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def _shifted(timestamp: str, seconds: float) -> str:
    return (_parse_timestamp(timestamp) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def holding_versions(versions) -> dict:
    """Tasks with a prediction whose model_version contains one of `versions` (a substring match: "v1" also
    matches "v10"; check the predictions themselves)."""
    return {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
            "value": sorted(versions)}


def id_after(task_id: int) -> dict:
    return {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": task_id}


UNLABELLED = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
LABELLED = {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
SEVERAL_PREDICTIONS = {"filter": "filter:tasks:total_predictions", "operator": "greater", "type": "Number", "value": 1}


class LabelStudioClient:
    """The calls the jobs make. Tasks come back as Label Studio's dicts (`fields=task_only`: id, data,
    updated_at and the counters, no annotations or predictions)."""

    def __init__(self, connection: Connection, timeout: float = 120.0):
        self.connection = connection
        self.sdk = LabelStudio(base_url=connection.url, api_key=connection.api_key, timeout=timeout)
        self.calls = 0  # HTTP requests made (benchmarks and logs count them)
        self._redactor = RedactSecrets([connection.api_key])

    def _request(self, method: str, path: str, *, project: int | None = None, params=None, json_body=None):
        self.calls += 1
        try:
            response = self.sdk._client_wrapper.httpx_client.request(path, method=method, params=params,
                                                                     json=json_body)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.connection.url} ({method} /{path}): "
                                   f"{type(exc).__name__}") from None
        if response.status_code >= 400:
            # Masked before it is cut: a cookie or token that Label Studio echoes is masked whole, not in part.
            excerpt = self._redactor.redact(" ".join(response.text[:ERROR_EXCERPT * 20].split()))[:ERROR_EXCERPT]
            message = f"Label Studio answered {response.status_code} to {method} /{path}: {excerpt}"
            gone = project is not None and response.status_code in (403, 404)
            raise (ProjectGone if gone else LabelStudioError)(message, response.status_code)
        return response.json() if response.content else None

    # ---------------------------------------------------------------- projects

    def project(self, project: int) -> dict:
        return self._request("GET", f"api/projects/{project}", project=project)

    def label_config(self, project: int) -> str:
        return self.project(project)["label_config"]

    def set_model_version(self, project: int, version: str) -> None:
        """The project's model version decides which predictions the labelling page and the Data Manager's
        score column show (Label Studio 1.23 filters them on it)."""
        self._request("PATCH", f"api/projects/{project}", project=project, json_body={"model_version": version})

    # ---------------------------------------------------------------- tasks

    def tasks(self, project: int, query: str | None = None, page_size: int = PAGE_SIZE,
              with_predictions: bool = False) -> Iterator[dict]:
        """The project's tasks that match `query` (see `task_query`), page by page; `with_predictions` adds
        each task's `predictions` and annotations (`fields=all`: for the few tasks a filter selects)."""
        page = 1
        while True:
            params = {"project": project, "fields": "all" if with_predictions else "task_only", "page": page,
                      "page_size": page_size}
            if query:
                params["query"] = query
            try:
                body = self._request("GET", "api/tasks/", project=project, params=params)
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:  # Label Studio answers 404 past the last page
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1

    def newest_update(self, project: int) -> str:
        """The latest `updated_at` of the project's tasks: the cursor to take before a full read."""
        newest = next(self.tasks(project, task_query(ordering="-tasks:updated_at"), page_size=1), None)
        return newest["updated_at"] if newest else EPOCH

    def tasks_changed_since(self, project: int, cursor: str) -> tuple[list[dict], str]:
        """The tasks updated since `cursor` (looking OVERLAP_SECONDS before it, for saves that committed after
        a later one was already read) and the cursor for the next catch-up."""
        changed = list(self.tasks(project, task_query(updated_after(_shifted(cursor, -OVERLAP_SECONDS)))))
        stamps = [t["updated_at"] for t in changed if t.get("updated_at")]
        return changed, max([cursor, *stamps], key=_parse_timestamp)

    def count(self, project: int, query: str | None = None) -> int:
        params = {"project": project, "fields": "task_only", "page": 1, "page_size": 1}
        if query:
            params["query"] = query
        return int(self._request("GET", "api/tasks/", project=project, params=params).get("total", 0))

    def update_task_data(self, task_id: int, data: dict) -> None:
        # Label Studio replaces `data` whole: callers pass every key, not just the changed ones.
        self._request("PATCH", f"api/tasks/{task_id}", json_body={"data": data})

    def export(self, project: int, ids: list[int] | None = None) -> list[dict]:
        """Tasks in Label Studio's JSON export form, annotations included: every annotated task, or the
        tasks in `ids` (annotated or not)."""
        if ids is None:
            return self._request("GET", f"api/projects/{project}/export", project=project,
                                 params={"exportType": "JSON"})
        out = []
        for start in range(0, len(ids), EXPORT_IDS):
            params = {"exportType": "JSON", "download_all_tasks": "true", "ids[]": ids[start:start + EXPORT_IDS]}
            out += self._request("GET", f"api/projects/{project}/export", project=project, params=params)
        return out

    # ---------------------------------------------------------------- predictions

    def import_predictions(self, project: int, predictions: list[dict]) -> int:
        """Bulk-create predictions; raises if Label Studio kept fewer than were sent (it drops predictions
        that fail its validation against the label config without saying which)."""
        if not predictions:
            return 0
        body = self._request("POST", f"api/projects/{project}/import/predictions", project=project,
                             json_body=predictions)
        created = int((body or {}).get("created", 0))
        if created != len(predictions):
            raise LabelStudioError(f"Label Studio kept {created} of {len(predictions)} predictions for project "
                                   f"{project}: it drops those that do not fit the label config")
        return created

    def delete_model_version(self, project: int, version: str) -> int:
        body = self._request("DELETE", f"api/projects/{project}/model-versions/", project=project,
                             json_body={"model_version": version})
        return int((body or {}).get("deleted_predictions", 0))

    def delete_prediction(self, prediction_id: int) -> None:
        self._request("DELETE", f"api/predictions/{prediction_id}")

    def rename_prediction(self, prediction_id: int, model_version: str) -> None:
        self._request("PATCH", f"api/predictions/{prediction_id}", json_body={"model_version": model_version})

    # ---------------------------------------------------------------- webhooks

    def add_webhook_auth(self, project: int, authorization: str) -> int:
        """Put our basic-auth header on the webhook Label Studio created for this backend (LS sends basic auth
        on its ML calls but not on event webhooks). Returns how many such webhooks exist (0: not created yet)."""
        backends = self._request("GET", "api/ml/", project=project, params={"project": project}) or []
        backend_urls = {b["url"].rstrip("/") + "/webhook" for b in backends}
        found = 0
        for hook in self._request("GET", "api/webhooks/", project=project, params={"project": project}) or []:
            if hook["url"].rstrip("/") not in backend_urls:
                continue
            found += 1
            headers = hook.get("headers") or {}
            if headers.get("Authorization") != authorization:
                self._request("PATCH", f"api/webhooks/{hook['id']}",
                              json_body={"headers": {**headers, "Authorization": authorization}})
        return found
