"""Train a reward-model version on every annotation the project has, once enough of them changed."""

from __future__ import annotations

import json
import logging

from backend.config import train_config
from backend.jobs.framework import job, progress
from backend.queue import TRAIN

log = logging.getLogger(__name__)


@job(TRAIN)
def train(ctx, project: int, force: str = "") -> dict:
    """Bring the annotation mirror up to date (what changed only), train a new version when at least
    MIN_NEW_ANNOTATIONS annotations changed since the current one (or `force`, the Start Training button),
    make it current, then queue the refresh of every unlabelled task's prediction and the report."""
    from backend.jobs.refresh import refresh
    from backend.jobs.report import report
    from backend.jobs.tune import annotation_count, maybe_queue_tune
    from model.rankings import task_pairs
    from model.reward.train import train_reward_model

    ls = ctx.label_studio(project)
    fields = ctx.fields(project, ls)
    progress(0.0, "syncing annotations")
    synced = ctx.mirror(project).sync(ls, ctx.settings.reconcile_seconds)
    pairs = task_pairs(ctx.mirror(project).tasks(), fields)
    keys = sorted({_pair_key(p) for p in pairs})
    current = ctx.store.current(project)
    previous = set(ctx.store.metrics(project, current).get("annotation_keys", [])) if current else set()
    changed = len({key.rsplit(":", 1)[0] for key in previous.symmetric_difference(keys)})  # annotations
    outcome = {"project": project, "pairs": len(pairs), "changed": changed, "read_tasks": synced.read,
               "label_studio_calls": ls.calls}
    outcome["tune_queued"] = maybe_queue_tune(ctx, project, annotation_count(keys))  # TUNE_EVERY
    if not pairs:
        return {**outcome, "status": "skipped", "reason": "no usable annotations yet"}
    if not force and changed < ctx.settings.min_new_annotations:
        return {**outcome, "status": "skipped", "reason": f"{changed} changed annotations < MIN_NEW_ANNOTATIONS"}
    with ctx.store.new_version(project) as pending:
        metrics = train_reward_model(pairs, train_config(ctx.settings), pending.path,
                                     progress=lambda f, m: progress(0.05 + 0.9 * f, m))
        metrics = {**metrics, "annotation_keys": keys}  # what trained it: the next job sees what changed
        (pending.path / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    ctx.store.activate(project, pending.name)
    ctx.store.prune(project, ctx.settings.keep_versions)
    log.info("project %s: reward model %s is current (%s pairs, held-out accuracy %s)",
             project, pending.name, len(pairs), metrics.get("val_accuracy"))
    ctx.queue.enqueue(refresh, project)
    ctx.queue.enqueue(report, project)
    return {**outcome, "status": "done", "version": pending.name, "val_accuracy": metrics.get("val_accuracy")}


def _pair_key(pair) -> str:
    """task:annotation:what it chose; a changed judgement changes its keys."""
    meta = pair.meta
    chose = meta.get("chosen_side") or f"{meta.get('chosen_id')}>{meta.get('rejected_id')}"
    return f"{meta.get('task_id')}:{meta.get('annotation_id')}:{chose}"
