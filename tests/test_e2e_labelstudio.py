"""The whole loop against a real Label Studio 1.23.2 (installed from PyPI into its own venv on first use),
with the backend's real `serve` and `worker` processes on a real Redis, and tiny models built on the fly
that go through the same loading code as the packaged ones.

Flow: create a project -> connect the backend (basic auth on) -> import prompt-only tasks -> the worker
writes two answers into each -> Label Studio gets predictions -> annotations through the LS API -> "Start
Training" -> a new reward-model version -> Label Studio gets predictions of that version.
"""

from __future__ import annotations

import json

import pytest
import requests
from transformers import AutoModelForSequenceClassification

from harness import LS_TOKEN, backend_env, poll, start_backend, start_label_studio
from model.pairs import GENERATION_KEY
from tiny_models import tiny_causal_lm, tiny_encoder

pytestmark = pytest.mark.e2e

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I reverse a list in Python?",
           "Explain photosynthesis to a child.", "Give me three tips for better sleep.", "What is 12 times 7?"]
AUTH = ("labelstudio", "backend-pass-e2e")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("label-studio")
    process, url = start_label_studio(data)
    yield url
    process.stop()


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio, request):
    import redis

    from conftest import REDIS_URL

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
    if request.session.testsfailed:  # the logs say why, when something went wrong
        print("---- server log ----\n", server.output()[-6000:], "\n---- worker log ----\n", worker.output()[-8000:])


def test_full_loop(label_studio, backend, label_config):
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="RLHF e2e", label_config=label_config)

    # Connect the backend as Label Studio's UI does (Settings -> Model -> Connect model), with basic auth.
    ml = ls.ml.create(project=project.id, url=backend["url"], title="rlhf-backend", auth_method="BASIC_AUTH",
                      basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])
    assert ls.ml.get(id=ml.id).state == "CO"

    # LS sends no basic auth on event webhooks: the backend adds its header to the webhook LS created.
    def hook_has_auth():
        hooks = ls.webhooks.list(project=str(project.id))
        return any((h.headers or {}).get("Authorization", "").startswith("Basic ") for h in hooks)
    poll(hook_has_auth, 60, message="Authorization header on LS's webhook")

    # Prompt-only import: LS needs the answer keys, empty (this is what `rlhf-backend import` does).
    ls.projects.import_tasks(id=project.id, request=[{"prompt": p, "answer1": "", "answer2": ""} for p in PROMPTS])

    def all_filled():
        tasks = list(ls.tasks.list(project=project.id, fields="all"))
        return tasks if all(t.data.get("answer1") and t.data.get("answer2") for t in tasks) else None
    tasks = poll(all_filled, 180, interval=1, message="answers written into every task")
    for task in tasks:
        assert task.data["prompt"] in PROMPTS
        assert task.data["answer1"] != task.data["answer2"]
        assert task.data[GENERATION_KEY]["left"] in ("a", "b")

    # Predictions through Label Studio (PREANNOTATE=always: the zero-shot model before any training).
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    predictions = list(ls.predictions.list(project=project.id))
    assert {p.task for p in predictions} == {t.id for t in tasks}
    for p in predictions:
        assert p.result[0]["type"] == "pairwise" and p.result[0]["value"]["selected"] in ("left", "right")

    # Annotate all but two tasks: prefer the answer the generator put on the left when task id is even.
    labelled, unlabelled = tasks[:-2], tasks[-2:]
    for task in labelled:
        ls.annotations.create(id=task.id, result=[{
            "from_name": "comparison", "to_name": "comparison", "type": "pairwise",
            "value": {"selected": "left" if task.id % 2 == 0 else "right"}}])
    ls.ml.train(id=ml.id)  # "Start Training"

    auth = requests.auth.HTTPBasicAuth(*AUTH)

    def trained_on_everything():
        versions = requests.get(f"{backend['url']}/versions", params={"project": project.id}, auth=auth).json()
        current = versions["projects"][str(project.id)]["current"]
        if not current:
            return None
        metrics = json.loads((backend["models"] / str(project.id) / current / "metrics.json").read_text())
        return current if metrics["n_pairs"] == len(labelled) else None
    version = poll(trained_on_everything, 240, interval=1, message="a version trained on every annotation")

    # Label Studio learns the new version from /setup and asks for predictions of it.
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    latest = [p for p in ls.predictions.list(project=project.id) if p.model_version == version]
    assert {p.task for p in latest} >= {t.id for t in unlabelled}
    assert all(0.5 <= p.score <= 1.0 for p in latest)

    # The version is a standard transformers folder.
    model = AutoModelForSequenceClassification.from_pretrained(backend["models"] / str(project.id) / version)
    assert model.config.num_labels == 1

    jobs = requests.get(f"{backend['url']}/jobs", auth=auth).json()
    assert not jobs["train"]["failed"] and not jobs["generate"]["failed"], jobs
    health = requests.get(f"{backend['url']}/health", auth=auth).json()
    assert health["status"] == "UP" and health["workers"] == 1
