"""A Ranker project end to end against a real Label Studio 1.23.2 and the backend's real `serve` and
`worker` processes: prompts imported, four answers generated into each task, a predicted order present
(accepted by Label Studio's bulk import, which validates it), rankings submitted, a retrain on six pairs
per ranking, and the new version's order on every unlabelled task. Tiny models built on the fly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.predictions import kept_version, made_by
from conftest import REDIS_URL, ROOT
from flows import PROMPTS
from harness import LS_TOKEN, backend_env, poll, start_backend
from model.pairs import GENERATION_KEY
from tiny_models import tiny_causal_lm, tiny_encoder

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("ranker")
    env = backend_env(
        LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-e2e-rank",
        MODEL_DIR=work / "models", GENERATOR_MODEL=tiny_causal_lm(work / "lm"), REWARD_BASE_MODEL=tiny_encoder(work / "rm"),
        MAX_NEW_TOKENS=12, TEMPERATURE=1.2, CANDIDATES=4, PREANNOTATE="always", WORKERS=1, THREADS=4, JOB_RETRIES=1)
    server, worker, url = start_backend(env, work)
    yield {"url": url, "models": work / "models", "server": server, "worker": worker}
    worker.stop()
    server.stop()


def ranked_tasks(ls, project: int) -> list:
    tasks = list(ls.tasks.list(project=project, fields="all"))
    return tasks if all(len(t.data.get("answers") or []) == 4 for t in tasks) else None


def test_a_ranker_project_from_prompts_to_a_retrained_order(label_studio, backend, tmp_path):
    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="ranking", label_config=(ROOT / "label_config_ranker.xml").read_text())
    ml = ls.ml.create(project=project.id, url=backend["url"], title="rlhf-backend")
    ls.projects.import_tasks(id=project.id, request=[{"prompt": p, "answers": []} for p in PROMPTS])
    try:
        tasks = poll(lambda: ranked_tasks(ls, project.id), 240, interval=1, message="four answers in every task")
        for task in tasks:
            items = task.data["answers"]
            assert [i["id"] for i in items] == ["answer1", "answer2", "answer3", "answer4"]
            assert len({i["body"] for i in items}) == 4 and all(i["body"].strip() for i in items)
            assert sorted(task.data[GENERATION_KEY]["order"]) == ["a", "b", "c", "d"]

        # Zero-shot orders first (PREANNOTATE=always), written by the refresh job through the bulk import.
        def zero_shot_everywhere():
            predictions = list(ls.predictions.list(project=project.id))
            return predictions if {p.task for p in predictions} == {t.id for t in tasks} else None
        first = poll(zero_shot_everywhere, 120, interval=1, message="a predicted order on every task")
        for prediction in first:
            order = prediction.result[0]["value"]["ranker"]["rank"]
            assert prediction.result[0]["to_name"] == "answers" and sorted(order) == [f"answer{i}" for i in range(1, 5)]
            assert 0.5 <= prediction.score <= 1.0

        # Rankings for all but two tasks (the last answer first, for a preference the model can learn),
        # then Start Training.
        labelled, unlabelled = tasks[:-2], tasks[-2:]
        for task in labelled:
            ids = [i["id"] for i in task.data["answers"]]
            ls.annotations.create(id=task.id, result=[{"from_name": "rank", "to_name": "answers", "type": "ranker",
                                                       "value": {"ranker": {"rank": ids[::-1]}}}])
        ls.ml.train(id=ml.id)

        def trained_on_every_pair():
            current = requests.get(f"{backend['url']}/versions", params={"project": project.id}).json()
            version = current["projects"][str(project.id)]["current"]
            if not version:
                return None
            metrics = json.loads((backend["models"] / str(project.id) / version / "metrics.json").read_text())
            return (version, metrics) if metrics["n_pairs"] == 6 * len(labelled) else None
        version, metrics = poll(trained_on_every_pair, 240, interval=1, message="a version trained on 6 pairs a ranking")

        def refreshed():  # the new version's order on every unlabelled task, every older prediction deleted
            predictions = list(ls.predictions.list(project=project.id))  # (labelled tasks keep theirs, renamed)
            on_unlabelled = [p for p in predictions if p.task in {t.id for t in unlabelled}]
            covered = {p.task for p in on_unlabelled} == {t.id for t in unlabelled}
            kept = {p.model_version for p in predictions} - {p.model_version for p in on_unlabelled}
            return covered and {p.model_version for p in on_unlabelled} == {version} and \
                all(v == kept_version(made_by(v)) for v in kept)
        poll(refreshed, 120, interval=1, message=f"only {version}'s order, on every unlabelled task")
        assert ls.projects.get(id=project.id).model_version == version  # what the labelling page shows

        out, rankings = tmp_path / "pairs.jsonl", tmp_path / "rankings.jsonl"
        env = dict(backend_env(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN))
        subprocess.run([sys.executable, "-m", "backend.cli", "export", "--project", str(project.id), "-o", str(out),
                        "--rankings", str(rankings)], env=env, check=True, cwd=ROOT, timeout=120)
        assert len(out.read_text().splitlines()) == 6 * len(labelled)
        lines = [json.loads(line) for line in rankings.read_text().splitlines()]
        bodies = {t.data["prompt"]: [i["body"] for i in t.data["answers"]][::-1] for t in labelled}
        assert sorted(line["prompt"] for line in lines) == sorted(bodies)
        assert all(line["answers"] == bodies[line["prompt"]] for line in lines)
    except BaseException:
        print("---- worker log ----\n", backend["worker"].output()[-8000:])
        raise
