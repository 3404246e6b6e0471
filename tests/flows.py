"""The product's whole loop, driven through Label Studio's API as a team would use it. Shared by the
end-to-end test and the docker-compose test (which runs the compose file's own commands)."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio
from transformers import AutoModelForSequenceClassification

from harness import poll
from model.pairs import GENERATION_KEY

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I reverse a list in Python?",
           "Explain photosynthesis to a child.", "Give me three tips for better sleep.", "What is 12 times 7?"]


def full_loop(ls_url: str, ls_token: str, backend_url: str, ls_backend_url: str, model_dir: Path,
              auth: tuple[str, str] | None = None, timeout: float = 240, prompts: list = PROMPTS,
              label_config: str = "label_config.xml") -> dict:
    """Create a project, connect the backend (at `ls_backend_url`, as Label Studio reaches it), import
    prompt-only tasks, wait for answers, get predictions, annotate, press Start Training, and check that
    Label Studio gets predictions of the new version. Returns what it saw."""
    ls = LabelStudio(base_url=ls_url, api_key=ls_token)
    config = (Path(__file__).parent.parent / label_config).read_text()
    project = ls.projects.create(title="RLHF loop", label_config=config)

    # Connect the backend as Label Studio's UI does (Settings -> Model -> Connect model).
    extra = {"auth_method": "BASIC_AUTH", "basic_auth_user": auth[0], "basic_auth_pass": auth[1]} if auth else {}
    ml = ls.ml.create(project=project.id, url=ls_backend_url, title="rlhf-backend", **extra)
    assert ls.ml.get(id=ml.id).state == "CO"

    if auth:  # LS sends no basic auth on event webhooks: the backend adds its header to LS's webhook.
        def hook_has_auth():
            hooks = ls.webhooks.list(project=str(project.id))
            return any((h.headers or {}).get("Authorization", "").startswith("Basic ") for h in hooks)
        poll(hook_has_auth, 60, message="Authorization header on Label Studio's webhook")

    # Prompt-only import: LS needs the answer keys, empty (this is what `rlhf-backend import` does).
    ls.projects.import_tasks(id=project.id, request=[{"prompt": p, "answer1": "", "answer2": ""} for p in prompts])

    def all_filled():
        tasks = list(ls.tasks.list(project=project.id, fields="all"))
        return tasks if all(t.data.get("answer1") and t.data.get("answer2") for t in tasks) else None
    tasks = poll(all_filled, timeout, interval=1, message="answers written into every task")
    for task in tasks:
        assert task.data["prompt"] in prompts
        assert task.data["answer1"] != task.data["answer2"]
        assert task.data[GENERATION_KEY]["left"] in ("a", "b")

    # Predictions through Label Studio (with PREANNOTATE=always: the zero-shot model before any training).
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    first_predictions = list(ls.predictions.list(project=project.id))

    # Annotate all but two tasks, then press "Start Training".
    labelled, unlabelled = tasks[:-2], tasks[-2:]
    for task in labelled:
        ls.annotations.create(id=task.id, result=[{
            "from_name": "comparison", "to_name": "comparison", "type": "pairwise",
            "value": {"selected": "left" if task.id % 2 == 0 else "right"}}])
    ls.ml.train(id=ml.id)

    http_auth = requests.auth.HTTPBasicAuth(*auth) if auth else None

    def trained_on_everything():
        versions = requests.get(f"{backend_url}/versions", params={"project": project.id}, auth=http_auth).json()
        current = versions["projects"][str(project.id)]["current"]
        if not current:
            return None
        metrics = json.loads((model_dir / str(project.id) / current / "metrics.json").read_text())
        return current if metrics["n_pairs"] == len(labelled) else None
    version = poll(trained_on_everything, timeout, interval=1, message="a version trained on every annotation")

    # Label Studio learns the new version from /setup and asks for predictions of it.
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    latest = [p for p in ls.predictions.list(project=project.id) if p.model_version == version]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir / str(project.id) / version)
    return {
        "project": project.id, "tasks": tasks, "unlabelled": unlabelled, "first_predictions": first_predictions,
        "version": version, "latest_predictions": latest, "loaded_model": model,
        "jobs": requests.get(f"{backend_url}/jobs", auth=http_auth).json(),
        "health": requests.get(f"{backend_url}/health", auth=http_auth).json(),
    }
