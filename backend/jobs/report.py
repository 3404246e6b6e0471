"""The collection-quality report, rebuilt from the annotation mirror (no full export) after each training
or on request (`GET /report?refresh=1`)."""

from __future__ import annotations

from backend.jobs.framework import job
from backend.queue import REPORT, TRAIN


@job(REPORT)
def report(ctx, project: int) -> dict:
    from backend.report import write_report

    mirror = ctx.mirror(project)
    ls = ctx.label_studio(project)
    fields = ctx.fields(project, ls)
    if "cursor" not in mirror.state():  # never synced (no training yet): sync, as training would
        with ctx.project_lock(TRAIN, project):
            mirror.sync(ls, ctx.settings.reconcile_seconds)
    path = write_report(ctx.settings, project, mirror.tasks(), fields)
    return {"status": "done", "project": project, "path": str(path)}
