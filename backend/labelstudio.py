"""How the worker reaches Label Studio (the source of truth), and the few SDK calls the jobs need.

Credentials: LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY when configured. Otherwise the `hostname` and the
project creator's token that Label Studio sends in /setup. Anyone who can reach the backend can send a
/setup, so: the configured API key only ever goes to LABEL_STUDIO_URL, and a /setup hostname on a
private or loopback address is followed only with LABEL_STUDIO_ALLOW_PRIVATE_HOSTS=true.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import urlparse

import redis
from label_studio_sdk import LabelStudio

from backend.config import Settings


class LabelStudioUnavailable(RuntimeError):
    """No usable way to reach Label Studio for this project; the message says what to configure."""


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
        pipe.execute()

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


class LabelStudioClient:
    """The SDK calls the jobs make. Task and annotation dicts keep Label Studio's export shapes."""

    def __init__(self, connection: Connection, timeout: float = 60.0):
        self.connection = connection
        self.sdk = LabelStudio(base_url=connection.url, api_key=connection.api_key, timeout=timeout)

    def label_config(self, project: int) -> str:
        return self.sdk.projects.get(id=project).label_config

    def tasks(self, project: int, page_size: int = 200) -> Iterator[dict]:
        """Every task of the project: id, data, and whether it is labelled."""
        for task in self.sdk.tasks.list(project=project, page_size=page_size, fields="all"):
            yield {"id": task.id, "data": dict(task.data or {}), "is_labeled": bool(task.is_labeled),
                   "total_annotations": task.total_annotations or 0}

    def task(self, task_id: int) -> dict:
        task = self.sdk.tasks.get(id=str(task_id))
        return {"id": task.id, "data": dict(task.data or {})}

    def update_task_data(self, task_id: int, data: dict) -> None:
        # Label Studio replaces `data` whole: callers pass every key, not just the changed ones.
        self.sdk.tasks.update(id=str(task_id), data=data)

    def create_prediction(self, task_id: int, result: list, score: float, model_version: str) -> None:
        self.sdk.predictions.create(task=task_id, result=result, score=score, model_version=model_version)

    def export(self, project: int) -> list[dict]:
        """Annotated tasks in Label Studio's JSON export form (annotations included)."""
        raw = b"".join(self.sdk.projects.exports.download_sync(id=project, export_type="JSON"))
        return json.loads(raw)

    def add_webhook_auth(self, project: int, authorization: str) -> int:
        """Put our basic-auth header on the webhook Label Studio created for this backend (LS sends basic auth
        on its ML calls but not on event webhooks). Returns how many such webhooks exist (0: not created yet)."""
        backend_urls = {b.url.rstrip("/") + "/webhook" for b in self.sdk.ml.list(project=project)}
        found = 0
        for hook in self.sdk.webhooks.list(project=str(project)):
            if hook.url.rstrip("/") not in backend_urls:
                continue
            found += 1
            if (hook.headers or {}).get("Authorization") != authorization:
                self.sdk.webhooks.update(id=hook.id, headers={**(hook.headers or {}), "Authorization": authorization})
        return found
