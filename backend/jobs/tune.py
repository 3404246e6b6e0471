"""Tune the project's generator on its preference pairs (one round of `model.tuning_round`): DPO from the
version it serves now, judged on held-out prompts, served from the next generation job on only when it wins
(TUNE_PROMOTE). Queued by `rlhf-backend tune --project N`, or by the train job every TUNE_EVERY annotations.

Its own lock kind (`tune`), so a round that takes minutes never holds up reward-model training; the
annotation mirror is brought up to date under the train lock (the two must not sync it at once), which a
train job holds for seconds in fast mode.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile

from backend.config import generation_config, train_config, tuning_config
from backend.jobs.framework import job, progress
from backend.queue import TRAIN, TUNE

log = logging.getLogger(__name__)


def _mark_key(ctx, project: int) -> str:
    return f"{ctx.settings.queue_prefix}:tune-mark:{project}"


def annotation_count(keys) -> int:
    """Annotations behind the pair keys (task:annotation:choice) the train job computes."""
    return len({key.rsplit(":", 1)[0] for key in keys})


def maybe_queue_tune(ctx, project: int, annotations: int) -> bool:
    """Called by the train job with the project's annotation count: queue a tuning round once the project
    has TUNE_EVERY more annotations than when the last round was queued (the count is kept in Redis; without
    it, the newest generator version's tuning.json says how many annotations it saw). Coalesced as any job."""
    every = ctx.settings.tune_every
    if not every:
        return False
    raw = ctx.redis.get(_mark_key(ctx, project))
    if raw is not None:
        mark = int(raw)
    else:
        from model.store import GENERATOR, VersionStore

        store = VersionStore(ctx.settings.model_dir, GENERATOR)
        names = store.versions(project)
        mark = int(store.metrics(project, names[-1], "tuning.json").get("annotations", 0)) if names else 0
    if annotations - mark < every:
        return False
    ctx.queue.enqueue(tune, project)
    ctx.redis.set(_mark_key(ctx, project), annotations)
    log.info("project %s: %s annotations, %s more than at the last tuning round: queued one", project,
             annotations, annotations - mark)
    return True


@job(TUNE)
def tune(ctx, project: int) -> dict:
    """Sync the mirror, take its pairs, run a tuning round (model.tuning_round.run_round)."""
    from backend.jobs.train import _pair_key
    from model.rankings import task_pairs
    from model.store import GENERATOR, VersionStore
    from model.tuning_round import RoundConfig, run_round

    settings = ctx.settings
    if settings.generator != "local":
        return {"status": "skipped", "project": project,
                "reason": "GENERATOR=openai: the generator is served elsewhere; tune a local copy with "
                          "`rlhf-backend tune --data PAIRS --out DIR --base MODEL`"}
    ls = ctx.label_studio(project)
    fields = ctx.fields(project, ls)
    progress(0.0, "syncing annotations")
    with ctx.project_lock(TRAIN, project):
        ctx.mirror(project).sync(ls, settings.reconcile_seconds)
    pairs = task_pairs(ctx.mirror(project).tasks(), fields)
    annotations = annotation_count({_pair_key(p) for p in pairs})
    config = RoundConfig(
        tune=tuning_config(settings),
        generation=dataclasses.replace(generation_config(settings), backend="local", model_b=None, seed=0),
        judge=train_config(settings, mode="fast", seed=0),
        holdout=settings.tune_holdout, eval_prompts=settings.tune_eval_prompts, promote=settings.tune_promote,
        keep_versions=settings.keep_versions)
    store = VersionStore(settings.model_dir, GENERATOR)
    with tempfile.TemporaryDirectory(prefix="rlhf-tune-eval-") as work:
        outcome = run_round(pairs, project, store, settings.generator_model, config, work,
                            provenance={"project": project, "annotations": annotations},
                            progress=lambda f, m: progress(0.02 + 0.98 * f, m))
    return {"project": project, "annotations": annotations, "label_studio_calls": ls.calls, **outcome}
