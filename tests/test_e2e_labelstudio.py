"""The whole loop against a real Label Studio 1.23.2 (installed from PyPI into its own venv on first use),
with the backend's real `serve` and `worker` processes on a real Redis, basic auth on, and tiny models built
on the fly that go through the same loading code as the packaged ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REDIS_URL, ROOT
from flows import PROMPTS, full_loop
from harness import LS_TOKEN, backend_env, start_backend
from tiny_models import tiny_causal_lm, tiny_encoder

pytestmark = pytest.mark.e2e

AUTH = ("labelstudio", "backend-pass-e2e")


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("backend")
    env = backend_env(
        LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-e2e",
        MODEL_DIR=work / "models", GENERATOR_MODEL=tiny_causal_lm(work / "tiny-lm"),
        REWARD_BASE_MODEL=tiny_encoder(work / "tiny-rm"), MAX_NEW_TOKENS=12, PREANNOTATE="always",
        BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1], WORKERS=1, THREADS=4, JOB_RETRIES=1)
    server, worker, url = start_backend(env, work)
    yield {"url": url, "models": work / "models", "server": server, "worker": worker}
    worker.stop()
    server.stop()


def test_full_loop(label_studio, backend):
    try:
        seen = full_loop(label_studio, LS_TOKEN, backend["url"], backend["url"], backend["models"], auth=AUTH)
    except BaseException:
        print("---- server log ----\n", backend["server"].output()[-5000:])
        print("---- worker log ----\n", backend["worker"].output()[-10000:])
        raise
    task_ids = {t.id for t in seen["tasks"]}
    assert {p.task for p in seen["first_predictions"]} == task_ids  # zero-shot guesses for every task
    for p in seen["first_predictions"]:
        assert p.result[0]["type"] == "pairwise" and p.result[0]["value"]["selected"] in ("left", "right")
    assert {p.task for p in seen["latest_predictions"]} >= {t.id for t in seen["unlabelled"]}
    assert all(0.5 <= p.score <= 1.0 for p in seen["latest_predictions"])
    assert seen["loaded_model"].config.num_labels == 1
    assert not seen["jobs"]["train"]["failed"] and not seen["jobs"]["generate"]["failed"], seen["jobs"]
    assert seen["health"]["status"] == "UP" and seen["health"]["workers"] == 1


def test_full_loop_with_conversations_exported_for_trl(label_studio, backend, tmp_path):
    """Prompts imported as chat messages (label_config_chat.xml shows them as a dialogue): answers are
    generated for the conversation, predicted, trained on, and exported in TRL's conversational form."""
    chats = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": p}] for p in PROMPTS]
    seen = full_loop(label_studio, LS_TOKEN, backend["url"], backend["url"], backend["models"], auth=AUTH,
                     prompts=chats, label_config="label_config_chat.xml")
    assert {p.task for p in seen["latest_predictions"]} >= {t.id for t in seen["unlabelled"]}
    out = tmp_path / "pairs.jsonl"
    env = dict(os.environ, LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN)
    subprocess.run([sys.executable, "-m", "backend.cli", "export", "--project", str(seen["project"]),
                    "--conversational", "-o", str(out)], env=env, check=True, cwd=ROOT, timeout=120)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    answers = {t.data["prompt"][-1]["content"]: {t.data["answer1"], t.data["answer2"]} for t in seen["tasks"]}
    assert len(rows) == len(seen["tasks"]) - len(seen["unlabelled"])
    for row in rows:
        assert row["prompt"] in chats
        assert {row["chosen"][0]["content"], row["rejected"][0]["content"]} == answers[row["prompt"][-1]["content"]]
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"


def test_a_human_edit_during_generation_survives(label_studio, tmp_path, redis_conn):
    """A person fills an answer while the generation job is busy generating: the job must leave that task
    alone (it re-reads each task right before its write) and still fill the others."""
    from label_studio_sdk import LabelStudio

    from backend.config import generation_config, load_settings
    from backend.jobs.framework import init
    from backend.jobs.generate import generate
    from model.generation import load_generator

    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="human edit", label_config=(ROOT / "label_config.xml").read_text())
    ids = ls.projects.import_tasks(id=project.id, return_task_ids=True, request=[
        {"prompt": p, "answer1": "", "answer2": ""} for p in ("First prompt", "Second prompt", "Third prompt")
    ]).task_ids
    settings = load_settings(dict(
        LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-test",
        MODEL_DIR=str(tmp_path / "models"), GENERATOR_MODEL=str(tiny_causal_lm(tmp_path / "lm")), MAX_NEW_TOKENS="8"))
    context = init(settings, redis_conn)
    real = load_generator(generation_config(settings))
    human = {"prompt": "Second prompt", "answer1": "Written by a person.", "answer2": ""}

    class EditsWhileGenerating:
        """The real generator; while it runs, a person edits task 2 through Label Studio's API."""

        def generate(self, prompts, progress=None, candidates=2):
            ls.tasks.update(id=str(ids[1]), data=human)
            return real.generate(prompts, progress, candidates=candidates)

        def describe(self):
            return real.describe()

    context.__dict__["generator"] = EditsWhileGenerating()
    outcome = generate(project.id)

    assert outcome["filled"] == 2 and outcome["skipped_human_edit"] == 1
    assert ls.tasks.get(id=str(ids[1])).data == human
    for task_id in (ids[0], ids[2]):
        data = ls.tasks.get(id=str(task_id)).data
        assert data["answer1"] and data["answer2"] and data["answer1"] != data["answer2"]


def test_a_rescan_gives_guesses_to_unlabelled_tasks_only(label_studio, tmp_path, redis_conn):
    """A label-config change makes the generation job look at every task again: the tasks with answers and
    no annotation get the current version's guess, an annotated task gets none (its annotator is done)."""
    from label_studio_sdk import LabelStudio

    from backend.config import load_settings
    from backend.jobs.framework import init
    from backend.jobs.generate import generate

    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="rescan", label_config=(ROOT / "label_config.xml").read_text())
    ids = ls.projects.import_tasks(id=project.id, return_task_ids=True, request=[
        {"prompt": f"Prompt {i}", "answer1": f"First answer {i}", "answer2": f"Second answer {i}"} for i in range(3)
    ]).task_ids
    ls.annotations.create(id=ids[0], result=[{"from_name": "comparison", "to_name": "answer1", "type": "pairwise",
                                              "value": {"selected": "left"}}])
    settings = load_settings(dict(
        LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-rescan",
        MODEL_DIR=str(tmp_path / "models"), REWARD_BASE_MODEL=str(tiny_encoder(tmp_path / "rm")),
        PREANNOTATE="always"))
    context = init(settings, redis_conn)

    generate.__wrapped__(context, project.id, rescan="1")  # as run with the flag a PROJECT_UPDATED event sets

    predicted = {task_id: len(ls.predictions.list(task=task_id)) for task_id in ids}
    assert predicted == {ids[0]: 0, ids[1]: 1, ids[2]: 1}
