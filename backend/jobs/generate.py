"""Answers for the tasks imported with only a prompt, and a first prediction for every new task.

New tasks are found by an id cursor (tasks with an id above the last one seen), read a page of 1,000 per
call with `fields=task_only`. Answers are generated a batch at a time; just before a batch is written its
tasks are read again in one call, and a task whose answers someone filled meanwhile is left alone. Label
Studio's task update replaces `data` whole and has no conditional form, so a person who saves answers
into a task in the moment between that read and the write (well under a second per task) would see them
replaced; nothing else overwrites a human answer. Each batch's predictions are written in one bulk import.
"""

from __future__ import annotations

import logging
import random

from backend.answers import candidates_for, failure, needs_answers, place_answers
from backend.generators import describe
from backend.jobs.framework import job, progress
from backend.jobs.refresh import refresh, write_predictions, written
from backend.labelstudio import id_after, task_query
from backend.predictions import has_answers, score_tasks
from backend.queue import GENERATE

log = logging.getLogger(__name__)


@job(GENERATE)
def generate(ctx, project: int, rescan: str = "") -> dict:
    """`rescan`: look at every task again, not only the new ones (the label config changed)."""
    ls = ctx.label_studio(project)
    fields = ctx.fields(project, ls)
    cursor_key = f"{ctx.settings.queue_prefix}:generate-cursor:{project}"
    cursor = 0 if rescan else int(ctx.redis.get(cursor_key) or 0)
    new = list(ls.tasks(project, task_query(id_after(cursor))))
    todo = [t for t in new if needs_answers(t["data"], fields)]
    progress(0.0, f"{len(todo)} of {len(new)} new tasks need answers")
    # A labelled task needs no guess (a rescan after a label-config change meets every task).
    _predict(ctx, ls, project, fields, [t for t in new if has_answers(t["data"], fields)
                                        and not t.get("total_annotations")])
    counts = {"filled": 0, "skipped_human_edit": 0, "failed_prompts": 0}
    rng = random.Random()
    size = ctx.settings.generation_batch_size
    generator, version = ctx.generators.for_project(project) if todo else (None, None)  # a tuned version, or not
    for start in range(0, len(todo), size):
        batch = todo[start:start + size]
        candidates = generator.generate([t["data"].get(fields.prompt) for t in batch],
                                        candidates=candidates_for(fields, ctx.settings.candidates))
        fresh = {t["id"]: t for t in ls.tasks(project, task_query(ids=[t["id"] for t in batch]))}
        filled = []
        for task, cand in zip(batch, candidates):
            data = fresh.get(task["id"], {}).get("data")
            if data is None or not needs_answers(data, fields):
                log.info("task %s: answers were written by someone else meanwhile (or it is gone); leaving it",
                         task["id"])
                counts["skipped_human_edit"] += 1
            elif cand.answers is None:
                ls.update_task_data(task["id"], {**data, **failure(cand.error)})
                log.warning("task %s: no answers generated: %s", task["id"], cand.error)
                counts["failed_prompts"] += 1
            else:
                data = {**data, **place_answers(cand.answers, fields, rng, describe(generator, version), cand.truncated)}
                ls.update_task_data(task["id"], data)
                filled.append({"id": task["id"], "data": data})
                counts["filled"] += 1
        _predict(ctx, ls, project, fields, filled)
        ctx.redis.set(cursor_key, batch[-1]["id"])  # resumable: a retry starts after the last written batch
        progress((start + len(batch)) / len(todo), f"{start + len(batch)}/{len(todo)} tasks done")
    if new:
        ctx.redis.set(cursor_key, max(cursor, new[-1]["id"]))
    return {"status": "done", "project": project, "new_tasks": len(new), **counts, "generator_version": version,
            "label_studio_calls": ls.calls}


def _predict(ctx, ls, project: int, fields, tasks: list[dict]) -> None:
    """So the annotator sees a guess at once, without waiting for the refresh or /predict: one import. A
    worker that sees no version it may show (e.g. a generation-only worker without the shared MODEL_DIR)
    leaves them to the refresh job."""
    if not tasks:
        return
    scorer = ctx.models.scorer(project)
    if scorer is None:
        written(ctx, project).mark_complete(None)
        ctx.queue.enqueue(refresh, project)
        return
    done = written(ctx, project).done(scorer.version)
    tasks = [t for t in tasks if t["id"] not in done]  # a rescan meets tasks that have one already
    items = score_tasks(scorer.model, scorer.version, tasks, fields)
    write_predictions(ctx, ls, project, scorer.version, [(t["id"], item) for t, item in zip(tasks, items) if item])
    if written(ctx, project).complete() != scorer.version:
        # Label Studio's score column and sort by score count only the project's model version's predictions:
        # the refresh points the project at this one (the zero-shot version, before any training, has no other).
        ctx.queue.enqueue(refresh, project)
