"""What makes a large project cheap, against a real Label Studio 1.23.2 and real Redis and worker processes:
incremental sync (created, updated and deleted annotations, with and without their webhooks), the
prediction refresh (resumed after a SIGKILL and after Label Studio went down, one prediction per task
left, the bulk import's count checked, older versions deleted), and two workers on one project."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
import redis
import requests
from label_studio_sdk import LabelStudio
from rq.job import Job
from rq.registry import FinishedJobRegistry

from backend.jobs.refresh import _remove_duplicates, refresh
from backend.labelstudio import OVERLAP_SECONDS, Connection, LabelStudioClient, LabelStudioError, ProjectRegistry
from backend.predictions import kept_version, made_by
from backend.queue import JobQueue
from backend.sync import AnnotationMirror
from conftest import REDIS_URL, ROOT
from harness import LS_TOKEN, Process, Proxy, backend_env, poll, start_backend
from model.pairs import pairs_from_tasks
from test_faults import synthetic_pairs, train_versions
from tiny_models import tiny_encoder

pytestmark = pytest.mark.e2e

CONFIG = (ROOT / "label_config.xml").read_text()
PREFIX = "rlhf-scale"


@pytest.fixture(scope="module")
def ls(label_studio):
    return LabelStudio(base_url=label_studio, api_key=LS_TOKEN)


@pytest.fixture
def connection(redis_conn):
    return redis.Redis.from_url(REDIS_URL)


def make_project(ls, title: str, n_tasks: int) -> tuple[int, list[int]]:
    project = ls.projects.create(title=title, label_config=CONFIG)
    tasks = [{"prompt": f"Question {i}: what is {i} plus {i}?", "answer1": f"It is {2 * i}, since {i}+{i}={2 * i}.",
              "answer2": f"maybe {i}"} for i in range(n_tasks)]
    return project.id, list(ls.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True).task_ids)


def pairwise(side: str) -> list[dict]:
    return [{"from_name": "comparison", "to_name": "comparison", "type": "pairwise", "value": {"selected": side}}]


def chosen_sides(mirror: AnnotationMirror) -> dict[int, list[str]]:
    sides: dict[int, list[str]] = {}
    for pair in pairs_from_tasks(mirror.tasks()):
        sides.setdefault(pair.meta["task_id"], []).append(pair.meta["chosen_side"])
    return sides


# ---------------------------------------------------------------- incremental sync

def test_sync_reads_only_the_tasks_whose_annotations_changed(ls, label_studio, connection):
    """No webhooks at all (they were lost): the catch-up on updated_at finds a created, an updated and a
    deleted annotation, and reads just those tasks; with nothing changed, one small read."""
    project, ids = make_project(ls, "sync: lost webhooks", 12)
    first = [ls.annotations.create(id=i, result=pairwise("left")) for i in ids[:3]]
    client = LabelStudioClient(Connection(label_studio, LS_TOKEN, "config"))
    mirror = AnnotationMirror(connection, PREFIX, project)

    full = mirror.sync(client, reconcile_seconds=3600)
    assert full.full and full.annotations == 3 and chosen_sides(mirror) == {i: ["left"] for i in ids[:3]}

    ls.annotations.create(id=ids[3], result=pairwise("right"))          # created
    ls.annotations.update(id=first[0].id, result=pairwise("right"))      # updated
    ls.annotations.delete(id=first[1].id)                                # deleted
    calls = client.calls
    caught_up = mirror.sync(client, reconcile_seconds=3600)
    assert not caught_up.full and caught_up.read == 3  # tasks 0, 1 and 3, not the other 9
    assert client.calls - calls == 2  # one filtered task list, one export of those tasks
    assert chosen_sides(mirror) == {ids[0]: ["right"], ids[2]: ["left"], ids[3]: ["right"]}

    calls = client.calls
    quiet = mirror.sync(client, reconcile_seconds=3600)
    assert quiet.read == 0 and client.calls - calls == 1  # "nothing changed" costs one small read


def test_sync_takes_annotations_from_their_webhooks_and_checks_them(ls, label_studio, connection, tmp_path):
    """Label Studio's own webhooks reach the real server, which keeps them for the sync: the sync then
    reads no task again. A forged event for a task Label Studio has not changed is read again and dropped."""
    project, ids = make_project(ls, "sync: webhooks", 8)
    env = backend_env(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL,
                      QUEUE_PREFIX=PREFIX, MODEL_DIR=tmp_path / "models", WORKERS=1, THREADS=2)
    server, _, url = start_backend(env, tmp_path, worker=False)
    try:
        client = LabelStudioClient(Connection(label_studio, LS_TOKEN, "config"))
        mirror = AnnotationMirror(connection, PREFIX, project)
        assert mirror.sync(client, reconcile_seconds=3600).full  # the starting point: nothing annotated
        ls.ml.create(project=project, url=url, title="rlhf-backend")  # Label Studio adds its webhook
        for i, side in zip(ids[:4], "llrr"):
            ls.annotations.create(id=i, result=pairwise({"l": "left", "r": "right"}[side]))
        poll(lambda: connection.llen(f"{PREFIX}:inbox:{project}") == 4, 30, message="four webhooks in the inbox")
        forged = {"annotation": {"id": 999999, "result": pairwise("left"), "task": ids[5]},
                  "task": {"id": ids[5], "data": {"prompt": "forged", "answer1": "a", "answer2": "b"},
                           "updated_at": "2030-01-01T00:00:00.000000Z"}}
        mirror.push_event("ANNOTATION_CREATED", forged)

        calls = client.calls
        result = mirror.sync(client, reconcile_seconds=3600)
        assert result.events == 5 and result.read == 1  # only the forged task is read again
        assert client.calls - calls == 2
        assert chosen_sides(mirror) == {ids[0]: ["left"], ids[1]: ["left"], ids[2]: ["right"], ids[3]: ["right"]}
    finally:
        server.stop()


# ---------------------------------------------------------------- the prediction refresh

def test_the_bulk_import_count_is_checked(ls, label_studio):
    """Label Studio drops predictions that fail its validation and says only how many it kept."""
    project, ids = make_project(ls, "import count", 2)
    client = LabelStudioClient(Connection(label_studio, LS_TOKEN, "config"))
    good = {"task": ids[0], "result": [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise",
                                        "value": {"selected": "left"}}], "score": 0.7, "model_version": "v1"}
    assert client.import_predictions(project, [good]) == 1
    at_the_control = dict(good, task=ids[1], result=pairwise("left"))  # to_name "comparison", what the editor writes
    with pytest.raises(LabelStudioError, match="kept 0 of 1"):
        client.import_predictions(project, [at_the_control])


def test_a_twice_written_prediction_is_removed_from_unlabelled_tasks_only(ls, label_studio):
    """The refresh's last step: an unlabelled task holding two predictions of the version keeps the newer; a
    labelled task keeps both, since its annotation may have started from either."""
    project, ids = make_project(ls, "duplicates", 3)
    client = LabelStudioClient(Connection(label_studio, LS_TOKEN, "config"))

    def guess(task: int, side: str) -> dict:
        return {"task": task, "result": [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise",
                                          "value": {"selected": side}}], "score": 0.6, "model_version": "v2"}

    client.import_predictions(project, [guess(i, "left") for i in ids])
    client.import_predictions(project, [guess(i, "right") for i in ids])
    ls.annotations.create(id=ids[0], result=pairwise("left"))
    before = {t["id"]: t["predictions"] for t in client.tasks(project, with_predictions=True)}

    assert _remove_duplicates(client, project, "v2") == 2
    after = {t["id"]: t["predictions"] for t in client.tasks(project, with_predictions=True)}
    assert [p["id"] for p in after[ids[0]]] == [p["id"] for p in before[ids[0]]]
    for task in ids[1:]:
        assert [p["id"] for p in after[task]] == [max(p["id"] for p in before[task])]
        assert after[task][0]["result"][0]["value"]["selected"] == "right"


@pytest.fixture
def refresh_setup(ls, label_studio, tmp_path, redis_conn):
    """A project of 40 unlabelled tasks, a trained v1, and a worker's environment that reaches Label Studio
    through a proxy the test can slow down or take down; the refresh writes 5 predictions per import."""
    project, ids = make_project(ls, f"refresh {tmp_path.name}", 40)
    model_dir = tmp_path / "models"
    train_versions(model_dir, project, tiny_encoder(tmp_path / "rm"), pairs=synthetic_pairs(24))
    proxy = Proxy(label_studio)
    env = backend_env(LABEL_STUDIO_URL=proxy.url, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL,
                      QUEUE_PREFIX=PREFIX, MODEL_DIR=model_dir, PREANNOTATE="always", PREDICTION_IMPORT_BATCH=5,
                      JOB_RETRIES=2)
    ProjectRegistry(redis_conn, PREFIX).record_setup(project, None, None, CONFIG)  # known: the sweep refreshes it
    yield {"project": project, "ids": ids, "proxy": proxy, "env": env, "model_dir": model_dir}
    proxy.close()


def task_predictions(label_studio: str, project: int) -> dict[int, list[dict]]:
    client = LabelStudioClient(Connection(label_studio, LS_TOKEN, "config"))
    return {task["id"]: task["predictions"] for task in client.tasks(project, with_predictions=True)}


def predictions_per_task(label_studio: str, project: int) -> dict[int, list[str]]:
    return {task: [p["model_version"] for p in ps] for task, ps in task_predictions(label_studio, project).items()}


def test_a_refresh_killed_half_way_resumes_where_it_stopped(refresh_setup, label_studio, redis_conn, tmp_path):
    setup, project = refresh_setup, refresh_setup["project"]
    setup["proxy"].delay = 0.3  # so that the kill lands between imports
    done_key = f"{PREFIX}:predictions:{project}:v1"
    JobQueue(redis_conn, PREFIX, 3600, 2).enqueue(refresh, project)
    worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep"], setup["env"], tmp_path / "w1.log")
    try:
        poll(lambda: redis_conn.scard(done_key) >= 10, 120, interval=0.05, message="two imports written")
        os.killpg(worker.popen.pid, signal.SIGKILL)
        worker.popen.wait(10)
    finally:
        worker.stop()
    written_before = redis_conn.scard(done_key)
    assert written_before < 40, "the kill was meant to land half-way"
    # An import Label Studio took just before the kill may be missing from the record: written again later.
    in_label_studio = sum(len(v) for v in predictions_per_task(label_studio, project).values())
    assert written_before <= in_label_studio <= written_before + 5

    # A fresh worker (as `rlhf-backend start` restarts one) sweeps the known projects: the refresh resumes.
    setup["proxy"].delay = 0.0
    worker = Process([sys.executable, "-m", "backend.cli", "worker"], setup["env"], tmp_path / "w2.log")
    try:
        poll(lambda: redis_conn.get(f"{PREFIX}:predictions:{project}:complete") == b"v1", 120,
             message="the refresh resumed and finished")
    finally:
        worker.stop()
    assert predictions_per_task(label_studio, project) == {i: ["v1"] for i in setup["ids"]}
    finished = [Job.fetch(j, connection=redis_conn) for j in
                FinishedJobRegistry(f"{PREFIX}-refresh", connection=redis_conn).get_job_ids()]
    resumed = [j.return_value() for j in finished if (j.return_value() or {}).get("status") == "done"]
    assert resumed and resumed[-1]["written"] == 40 - written_before  # only what was left


def test_label_studio_down_mid_refresh_retries_and_resumes(refresh_setup, label_studio, redis_conn, tmp_path):
    setup, project = refresh_setup, refresh_setup["project"]
    proxy = setup["proxy"]
    job_id = JobQueue(redis_conn, PREFIX, 3600, 2).enqueue(refresh, project).job_id
    worker = Process([sys.executable, "-m", "backend.cli", "worker", "--no-sweep"], setup["env"], tmp_path / "w.log")
    try:
        poll(lambda: proxy.count("POST", "import/predictions") >= 2, 120, interval=0.02, message="two imports")
        proxy.down.set()
        poll(lambda: Job.fetch(job_id, connection=redis_conn).get_status() == "scheduled", 60,
             message="the failed attempt scheduled for a retry")
        proxy.down.clear()
        poll(lambda: Job.fetch(job_id, connection=redis_conn).get_status() == "finished", 120,
             message="the retry finished")
    finally:
        worker.stop()
    outcome = Job.fetch(job_id, connection=redis_conn).return_value()
    assert outcome["status"] == "done" and outcome["written"] < 40  # the retry wrote only what was left
    assert predictions_per_task(label_studio, project) == {i: ["v1"] for i in setup["ids"]}
    assert "502" in worker.output() and LS_TOKEN not in worker.output()


# ---------------------------------------------------------------- two workers, several versions

def test_two_workers_never_train_one_project_at_once_and_keep_one_prediction_per_task(ls, label_studio, tmp_path,
                                                                                       redis_conn):
    """Two real workers, a project annotated in three bursts through Label Studio (real webhooks): train
    jobs of the project never overlap, the last version saw every annotation, and after all the retrains
    Label Studio holds one prediction per unlabelled task, of the current version only (a labelled task
    keeps the ones it had, renamed out of their versions)."""
    project, ids = make_project(ls, "two workers", 30)
    env = backend_env(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL,
                      QUEUE_PREFIX=PREFIX, MODEL_DIR=tmp_path / "models", REWARD_BASE_MODEL=tiny_encoder(tmp_path / "rm"),
                      PREANNOTATE="always", WORKERS=1, THREADS=4, JOB_RETRIES=1)
    server, first, url = start_backend(env, tmp_path)
    second = Process([sys.executable, "-m", "backend.cli", "worker"], env, tmp_path / "worker-2.log")
    try:
        poll(lambda: requests.get(f"{url}/health", timeout=5).json()["workers"] == 2, 60, message="two workers")
        ls.ml.create(project=project, url=url, title="rlhf-backend")
        for burst in range(3):
            for i in ids[burst * 6:(burst + 1) * 6]:
                ls.annotations.create(id=i, result=pairwise("left" if i % 3 else "right"))
            time.sleep(1.0)

        def settled():
            versions = requests.get(f"{url}/versions", params={"project": project}, timeout=5).json()
            current = versions["projects"][str(project)]["current"]
            if not current:
                return None
            metrics = json.loads((tmp_path / "models" / str(project) / current / "metrics.json").read_text())
            complete = redis_conn.get(f"{PREFIX}:predictions:{project}:complete")
            return current if metrics["n_pairs"] == 18 and complete == current.encode() else None
        version = poll(settled, 240, interval=1, message="a version of all 18 annotations, refreshed")

        runs = [Job.fetch(j, connection=redis_conn) for j in
                FinishedJobRegistry(f"{PREFIX}-train", connection=redis_conn).get_job_ids()]
        spans = sorted(j.meta["ran"] for j in runs if j.meta.get("project") == project)  # while it held the lock
        assert len(spans) >= 2
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"train jobs overlapped: {spans}"
        predictions = predictions_per_task(label_studio, project)
        assert {i: predictions[i] for i in ids[18:]} == {i: [version] for i in ids[18:]}
        # Older versions are deleted from every unlabelled task; the labelled ones keep theirs, renamed out.
        assert all(v == version or v == kept_version(made_by(v)) for v in sum(predictions.values(), []))
        assert all(len(v) == len(set(v)) for v in predictions.values())  # no task holds a version twice
    except BaseException:
        print("---- worker 1 ----\n", first.output()[-4000:], "\n---- worker 2 ----\n", second.output()[-4000:])
        raise
    finally:
        second.stop()
        first.stop()
        server.stop()


# ---------------------------------------------------------------- the refresh reads only what changed

def run_refresh(redis_conn, env: dict, project: int, log) -> dict:
    """One refresh job, run by a real worker in burst mode; its outcome."""
    job_id = JobQueue(redis_conn, PREFIX, 3600, 2).enqueue(refresh, project).job_id
    worker = Process([sys.executable, "-m", "backend.cli", "worker", "--burst", "--no-sweep"], env, log)
    try:
        worker.popen.wait(180)
    finally:
        worker.stop()
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "finished", worker.output()[-3000:]
    return job.return_value()


def scores_in_label_studio(label_studio: str, project: int, version: str) -> dict[int, float]:
    return {task: p["score"] for task, ps in task_predictions(label_studio, project).items()
            for p in ps if p["model_version"] == version}


def test_a_new_versions_refresh_reads_only_the_tasks_that_changed(refresh_setup, ls, label_studio, redis_conn,
                                                                     tmp_path):
    """The first refresh reads every unlabelled task and keeps their answers' feature keys; the next version's
    refresh reads only the tasks changed since (one labelled, one whose answer was edited, two new) and
    scores the rest from their keys, with the same scores a full read gives. The labelled task keeps the
    guess its annotation started from, renamed out of the deleted version, and the annotation its link to
    it. A deleted task, which nothing Label Studio lists shows, makes an import fail: the job then reads
    every task and finishes."""
    from backend.labels import parse_label_config
    from backend.predictions import score_tasks
    from model.reward.cached import load_scorer

    setup, project, ids = refresh_setup, refresh_setup["project"], refresh_setup["ids"]
    env = {**setup["env"], "LABEL_STUDIO_URL": label_studio, "PREDICTION_IMPORT_BATCH": "100"}
    # A catch-up looks OVERLAP_SECONDS before its cursor: let the tasks' creation fall out of that window.
    time.sleep(OVERLAP_SECONDS + 1)
    last = ls.tasks.get(id=ids[-1])
    ls.tasks.update(id=ids[-1], data=last.data)  # the newest update, so the cursor the first refresh takes
    first = run_refresh(redis_conn, env, project, tmp_path / "w1.log")
    assert first["status"] == "done" and first["tasks_read"] == 40 and first["written"] == 40

    # An annotator starts from the v1 guess on the first task: the annotation links to it.
    shown = task_predictions(label_studio, project)[ids[0]]
    assert [p["model_version"] for p in shown] == [first["version"]]
    annotation = ls.annotations.create(id=ids[0], result=pairwise("left"), parent_prediction=shown[0]["id"])
    ls.tasks.update(id=ids[1], data={"prompt": "Question 1: what is 1 plus 1?", "answer1": "Two.",
                                     "answer2": "It is 2, since 1+1=2."})
    new = list(ls.projects.import_tasks(id=project, return_task_ids=True, request=[
        {"prompt": f"New question {i}?", "answer1": f"An answer {i}.", "answer2": f"Another answer {i}."}
        for i in range(2)]).task_ids)
    v2 = train_versions(setup["model_dir"], project, setup["model_dir"].parent / "rm", pairs=synthetic_pairs(24),
                        seed=1)
    second = run_refresh(redis_conn, env, project, tmp_path / "w2.log")
    assert second["status"] == "done" and second["version"] == v2
    assert second["tasks_read"] == 5 and second["written"] == 41  # the 4 changed, the last one again (overlap)
    # v1 is gone from every unlabelled task; the labelled one keeps its guess, renamed out of v1, and the link.
    assert second["kept_on_labelled_tasks"] == 1
    versions = predictions_per_task(label_studio, project)
    assert versions[ids[0]] == [kept_version(first["version"])]
    assert all(versions[i] == [v2] for i in versions if i != ids[0])
    assert ls.annotations.get(id=annotation.id).parent_prediction == shown[0]["id"]

    scores = scores_in_label_studio(label_studio, project, v2)
    assert set(scores) == set(ids[1:]) | set(new)
    model = load_scorer(setup["model_dir"] / str(project) / v2, None)  # full forward passes: no cache
    tasks = [ls.tasks.get(id=i) for i in ids[1:] + new]
    expected = score_tasks(model, v2, [{"id": t.id, "data": t.data} for t in tasks], parse_label_config(CONFIG))
    assert scores == pytest.approx({t.id: e["score"] for t, e in zip(tasks, expected)}, abs=1e-5)

    ls.tasks.delete(id=ids[2])
    v3 = train_versions(setup["model_dir"], project, setup["model_dir"].parent / "rm", pairs=synthetic_pairs(24),
                        seed=2)
    third = run_refresh(redis_conn, env, project, tmp_path / "w3.log")
    assert third["status"] == "done" and third["version"] == v3
    assert third["tasks_read"] == 40 and third["written"] == 40  # every unlabelled task read again
    assert third["kept_on_labelled_tasks"] == 0  # nothing labelled since: no task to rename
    assert ls.annotations.get(id=annotation.id).parent_prediction == shown[0]["id"]
    assert set(scores_in_label_studio(label_studio, project, v3)) == set(ids[1:]) - {ids[2]} | set(new)
