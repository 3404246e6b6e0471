"""Every unlabelled task's prediction from the current version, written in bulk, the previous ones removed.

Annotators sort by prediction score to label the most uncertain tasks first, so a new version's scores
must reach every unlabelled task, and soon. A fast-mode version scores from cached encoder features
(arithmetic, not forward passes), and the job reads from Label Studio only the tasks changed since the last
refresh (backend/task_index.py); any other version reads every unlabelled task (a page per 1,000). It
writes the most uncertain first through Label Studio's bulk import, points the project's model version at
it (the labelling page and the Data Manager's score column show only that version's predictions), then
deletes the predictions of every older version it or /predict wrote. Label Studio then holds one
prediction per unlabelled task for this backend. A labelled task keeps the predictions it had: an
annotation that started from one links to it (`parent_prediction`, which the reports read), and Label
Studio clears that link when the prediction is deleted. The version's delete is project-wide, so those
predictions are first renamed out of it (`kept_version`); the tasks to rename are listed by a filter on
the versions being deleted, so each refresh reads only the tasks labelled since the last one.

It is resumable: the ids written for a version are kept in Redis, so a retry or the next run after a
killed worker continues where it stopped, and it stops as soon as a newer version is current (that
version's refresh takes over).
"""

from __future__ import annotations

import logging

import redis

from backend.jobs.framework import job, progress
from backend.labelstudio import (LABELLED, SEVERAL_PREDICTIONS, UNLABELLED, LabelStudioError, holding_versions,
                                 task_query)
from backend.predictions import has_answers, kept_version, prediction, score_tasks, uncertainty
from backend.queue import REFRESH
from backend.task_index import UnlabelledIndex, feature_keys

log = logging.getLogger(__name__)

SCORE_CHUNK = 1000  # tasks scored per call, between progress reports

class WrittenPredictions:
    """Which of this backend's model versions have predictions in Label Studio, and for a version being
    refreshed, which tasks already have one. Keys: `<prefix>:predictions:<p>:versions` (set),
    `<prefix>:predictions:<p>:<version>` (set of task ids), `<prefix>:predictions:<p>:complete` (version)."""

    def __init__(self, connection: redis.Redis, prefix: str, project: int):
        self.redis = connection
        self.base = f"{prefix}:predictions:{project}"

    def add(self, version: str, task_ids) -> None:
        pipe = self.redis.pipeline()
        pipe.sadd(f"{self.base}:versions", version)
        if task_ids:
            pipe.sadd(f"{self.base}:{version}", *task_ids)
        pipe.execute()

    def done(self, version: str) -> set[int]:
        return {int(i) for i in self.redis.smembers(f"{self.base}:{version}")}

    def versions(self) -> set[str]:
        return {v.decode() for v in self.redis.smembers(f"{self.base}:versions")}

    def forget(self, version: str) -> None:
        pipe = self.redis.pipeline()
        pipe.srem(f"{self.base}:versions", version)
        pipe.delete(f"{self.base}:{version}")
        pipe.execute()

    def complete(self) -> str | None:
        value = self.redis.get(f"{self.base}:complete")
        return value.decode() if value else None

    def mark_complete(self, version: str | None) -> None:
        if version is None:
            self.redis.delete(f"{self.base}:complete")
        else:
            self.redis.set(f"{self.base}:complete", version)


def written(ctx, project: int) -> WrittenPredictions:
    return WrittenPredictions(ctx.redis, ctx.settings.queue_prefix, project)


def write_predictions(ctx, ls, project: int, version: str, items: list[tuple[int, dict]],
                      still_current=lambda: True) -> int:
    """Bulk-import (task id, prediction) items in PREDICTION_IMPORT_BATCH chunks, recording each chunk's
    tasks as done for `version`; stops before a chunk once `still_current()` is false. Returns how many
    were written. Each import makes Label Studio recount the project: chunks stay large."""
    record, size = written(ctx, project), ctx.settings.prediction_import_batch
    for start in range(0, len(items), size):
        if not still_current():
            return start
        chunk = items[start:start + size]
        ls.import_predictions(project, [{"task": task, **item} for task, item in chunk])
        record.add(version, [task for task, _ in chunk])
        progress(0.2 + 0.7 * (start + len(chunk)) / len(items), f"{start + len(chunk)}/{len(items)} written")
    return len(items)


@job(REFRESH)
def refresh(ctx, project: int) -> dict:
    scorer = ctx.models.scorer(project)
    if scorer is None:
        return {"status": "skipped", "project": project, "reason": "no version may be shown (PREANNOTATE)"}
    version, record = scorer.version, written(ctx, project)
    if record.complete() == version:
        return {"status": "skipped", "project": project, "reason": f"{version} is refreshed already"}
    ls = ctx.label_studio(project)
    fields = ctx.fields(project, ls)
    index = UnlabelledIndex(ctx.redis, ctx.settings.queue_prefix, project)
    while True:
        progress(0.0, "reading unlabelled tasks")
        items, read, from_index = _scored(ctx, ls, project, fields, scorer, record.done(version), index)
        items.sort(key=lambda item: -uncertainty(item[1]))  # the most uncertain first
        try:
            count = write_predictions(ctx, ls, project, version, items,
                                      still_current=lambda: ctx.models.version(project) == version)
            break
        except LabelStudioError as exc:
            if exc.status != 400 or not from_index:
                raise
            # Most likely a task deleted since the index saw it (nothing Label Studio lists says so).
            log.info("project %s: an import was refused (%s); reading every unlabelled task", project, exc)
            index.clear()
    if count < len(items):  # a newer version is current: its own refresh takes over
        return {"status": "superseded", "project": project, "version": version, "written": count}
    ls.set_model_version(project, version)
    old_versions = record.versions() - {version}
    kept = _keep_labelled_tasks_predictions(ls, project, old_versions)
    deleted = 0
    for old in old_versions:
        deleted += ls.delete_model_version(project, old)
        record.forget(old)
    duplicates = _remove_duplicates(ls, project, version)
    record.mark_complete(version)
    return {"status": "done", "project": project, "version": version, "written": count, "tasks_read": read,
            "kept_on_labelled_tasks": kept, "deleted_old": deleted, "duplicates_removed": duplicates,
            "label_studio_calls": ls.calls}


def _scored(ctx, ls, project: int, fields, scorer, done: set[int], index: UnlabelledIndex):
    """(task id, prediction) for every unlabelled task with answers not in `done`, how many tasks were read
    from Label Studio for it, and whether the index stood in for the rest. A fast-mode version with a
    current index reads only the tasks changed since the index's cursor and scores the rest by their
    feature keys; otherwise every unlabelled task is read (and the index rebuilt from them)."""
    cached = hasattr(scorer.model, "rewards_by_key")  # a CachedRewardModel (imported lazily: it needs torch)
    if cached and index.fresh(ctx.settings.reconcile_seconds):
        changed, cursor = ls.tasks_changed_since(project, index.state()["cursor"])
        index.update(changed, fields, cursor)
        read = {t["id"]: t for t in changed if t["id"] not in done and feature_keys(t, fields) is not None}
        entries = {i: keys for i, keys in index.entries().items() if i not in done and i not in read}
        rewards = scorer.model.rewards_by_key(k for keys in entries.values() for k in keys.values())
        if all(k in rewards for keys in entries.values() for k in keys.values()):
            items = [(i, prediction(fields, {slot: rewards[k] for slot, k in keys.items()}, scorer.version))
                     for i, keys in entries.items()]
            return items + _score_read(scorer, list(read.values()), fields), len(changed), True
        # Features missing (the cache was cleared, or the version has another base): read every task.
    cursor = ls.newest_update(project) if cached else None
    tasks = list(ls.tasks(project, task_query(UNLABELLED)))
    if cached:
        index.rebuild(tasks, fields, cursor)
    todo = [t for t in tasks if t["id"] not in done and has_answers(t["data"], fields)]
    return _score_read(scorer, todo, fields), len(tasks), False


def _score_read(scorer, tasks: list[dict], fields) -> list[tuple[int, dict]]:
    items = []
    for start in range(0, len(tasks), SCORE_CHUNK):  # a cold feature cache encodes for minutes: show how far
        progress(0.1 + 0.1 * start / max(len(tasks), 1), f"scoring: {start}/{len(tasks)} tasks")
        chunk = tasks[start:start + SCORE_CHUNK]
        items += zip((t["id"] for t in chunk), score_tasks(scorer.model, scorer.version, chunk, fields))
    return items


def _keep_labelled_tasks_predictions(ls, project: int, old_versions: set[str]) -> int:
    """Rename the predictions of `old_versions` on labelled tasks out of those versions, before their delete.
    A version is looked for only by the refresh that deletes it, so only the tasks labelled since it was
    written are read. A task labelled between this and the delete still loses its link (a moment's window)."""
    if not old_versions:
        return 0
    kept = 0
    for task in ls.tasks(project, task_query(LABELLED, holding_versions(old_versions)), with_predictions=True):
        for item in task.get("predictions", []):
            if item.get("model_version") in old_versions:
                ls.rename_prediction(item["id"], kept_version(item["model_version"]))
                kept += 1
    return kept


def _remove_duplicates(ls, project: int, version: str) -> int:
    """An unlabelled task that got a prediction of `version` twice (Label Studio asked /predict for it while
    this job wrote it, or an import was retried after its answer was lost) keeps its newest one. A labelled
    task keeps both: either may be the one its annotation started from."""
    removed = 0
    for task in ls.tasks(project, task_query(SEVERAL_PREDICTIONS, UNLABELLED), with_predictions=True):
        ours = sorted((p for p in task.get("predictions", []) if p.get("model_version") == version),
                      key=lambda p: p["id"])
        for duplicate in ours[:-1]:
            ls.delete_prediction(duplicate["id"])
            removed += 1
    return removed
