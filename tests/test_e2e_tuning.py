"""The generator loop closed, against a real Label Studio 1.23.2 with the backend's real `serve` and `worker`
processes and tiny models built on the fly: labels arrive → the train job sees TUNE_EVERY annotations and
queues the tune job → the worker DPO-tunes the generator, judges it on held-out prompts and (TUNE_PROMOTE=
always, the setting for teams who judge versions themselves) serves the new generator version → a prompt
imported afterwards is answered by that version, and its task's rlhf_generation record says so."""

from __future__ import annotations

import json

import pytest
import requests
from label_studio_sdk import LabelStudio

from conftest import REDIS_URL, ROOT
from flows import PROMPTS
from harness import LS_TOKEN, backend_env, poll, start_backend
from model.pairs import GENERATION_KEY
from model.store import GENERATOR, VersionStore
from model.tuning import prompt_hash
from model.tuning_round import stable_split
from tiny_models import tiny_causal_lm, tiny_encoder

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("backend-tune")
    env = backend_env(
        LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL,
        QUEUE_PREFIX="rlhf-e2e-tune", MODEL_DIR=work / "models", GENERATOR_MODEL=tiny_causal_lm(work / "tiny-lm"),
        REWARD_BASE_MODEL=tiny_encoder(work / "tiny-rm"), MAX_NEW_TOKENS=12, WORKERS=1, THREADS=4, JOB_RETRIES=1,
        TUNE_EVERY=len(PROMPTS), TUNE_PROMOTE="always", TUNE_EVAL_PROMPTS=4, TORCH_THREADS=1)
    server, worker, url = start_backend(env, work)
    yield {"url": url, "models": work / "models", "server": server, "worker": worker}
    worker.stop()
    server.stop()


def filled(ls, project: int):
    tasks = list(ls.tasks.list(project=project, fields="all"))
    return tasks if tasks and all(t.data.get("answer1") and t.data.get("answer2") for t in tasks) else None


def test_labels_tune_the_generator_and_new_prompts_are_answered_by_the_new_version(label_studio, backend):
    # The default TUNE_HOLDOUT keeps some of these prompts for the evaluation and tunes on the others.
    from model.pairs import PreferencePair

    tuned, held = stable_split([PreferencePair(p, "a", "b") for p in PROMPTS], 0.2)
    assert tuned and held
    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="tuning loop", label_config=(ROOT / "label_config.xml").read_text())
    ml = ls.ml.create(project=project.id, url=backend["url"], title="rlhf-backend")
    try:
        ls.projects.import_tasks(id=project.id, request=[{"prompt": p, "answer1": "", "answer2": ""} for p in PROMPTS])
        tasks = poll(lambda: filled(ls, project.id), 240, interval=1, message="answers in every task")
        assert all(t.data[GENERATION_KEY]["generator"]["version"] is None for t in tasks)  # GENERATOR_MODEL's

        for task in tasks:  # labels arrive; Start Training makes sure the train job runs once all are in
            ls.annotations.create(id=task.id, result=[{"from_name": "comparison", "to_name": "comparison",
                                                       "type": "pairwise", "value": {"selected": "left"}}])
        ls.ml.train(id=ml.id)

        def generator_served():
            versions = requests.get(f"{backend['url']}/versions", params={"project": project.id}).json()
            return versions["projects"][str(project.id)]["generator"]["current"]
        assert poll(generator_served, 600, interval=2, message="a tuned generator version served") == "v1"

        store = VersionStore(backend["models"], GENERATOR)
        tuning = store.metrics(project.id, "v1", "tuning.json")
        evaluation = store.metrics(project.id, "v1", "evaluation.json")
        assert tuning["annotations"] == len(PROMPTS) and tuning["base_version"] is None
        assert tuning["prompt_hashes"] == sorted(prompt_hash(p.prompt) for p in tuned)
        assert evaluation["n_prompts"] == len(held) and evaluation["decision"]["by"] == "TUNE_PROMOTE=always"
        assert evaluation["judge"]["trained_pairs"] <= len(held)  # judged by a model that never saw the tuning pairs
        jobs = requests.get(f"{backend['url']}/jobs").json()["tune"]
        assert len(jobs["finished"]) == 1 and not jobs["failed"], jobs

        ls.projects.import_tasks(id=project.id, request=[{"prompt": "Name three colours.", "answer1": "",
                                                          "answer2": ""}])

        def new_task_answered():
            new = [t for t in filled(ls, project.id) or [] if t.data["prompt"] == "Name three colours."]
            return new[0] if new else None
        task = poll(new_task_answered, 240, interval=1, message="the new prompt answered")
        record = task.data[GENERATION_KEY]["generator"]
        assert record["version"] == "v1" and record["model"] == str(store.path(project.id, "v1"))
        assert task.data["answer1"] != task.data["answer2"]
    except BaseException:
        print("---- worker log ----\n", backend["worker"].output()[-15000:])
        raise
    print(json.dumps({k: evaluation.get(k) for k in ("lc_win_rate", "win_rate", "n_prompts")}))
