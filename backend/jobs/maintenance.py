"""Housekeeping: the webhook's basic-auth header, and the sweep that catches up at worker start."""

from __future__ import annotations

import time

from backend.auth import basic_auth_header
from backend.jobs.framework import job
from backend.queue import MAINTENANCE

WEBHOOK_WAIT_SECONDS = 60  # how long to wait for Label Studio to create its webhook


@job(MAINTENANCE)
def ensure_webhook_auth(ctx, project: int) -> dict:
    """With basic auth on, give Label Studio's event webhook for this backend our Authorization header."""
    if not ctx.settings.auth_enabled:
        return {"status": "skipped", "reason": "basic auth is off"}
    ls = ctx.label_studio(project)
    header = basic_auth_header(ctx.settings.basic_auth_user, ctx.settings.basic_auth_pass)
    # Label Studio calls /setup while connecting the backend and creates the webhook only afterwards.
    deadline = time.monotonic() + WEBHOOK_WAIT_SECONDS
    while not (found := ls.add_webhook_auth(project, header)) and time.monotonic() < deadline:
        time.sleep(2)
    if found:
        ctx.registry.mark_webhook_auth_ok(project)
    return {"status": "done", "webhooks": found}


def sweep(ctx) -> None:
    """At worker start: catch up on what events were lost while nothing listened. Each job is cheap when
    nothing changed (a train job skips after one small read, a refresh of a refreshed version at once)."""
    from backend.jobs.generate import generate
    from backend.jobs.refresh import refresh
    from backend.jobs.train import train

    for project in ctx.registry.projects():
        ctx.queue.enqueue(generate, project)
        ctx.queue.enqueue(train, project)
        ctx.queue.enqueue(refresh, project)
