"""The backend's guesses in Label Studio's form: a task's answers scored by the reward model, written as the
Pairwise selection the editor itself would make, with the model's confidence as the prediction score.

`/predict` returns these items, and the jobs write the same items in bulk, so the form lives here once.
The score is the confidence of the pick (0.5 to 1): sorting tasks by prediction score in Label Studio puts
the most uncertain first.

`to_name` is the first answer's Text, not the Pairwise control itself (what the editor writes): Label
Studio's bulk prediction import validates each result against the label config and drops one whose
to_name is the control; the labelling page shows both forms alike.
"""

from __future__ import annotations

from model.conversation import prompt_text
from model.pairs import TaskFields


def has_answers(data: dict, fields: TaskFields) -> bool:
    return all(isinstance(data.get(k), str) and data[k].strip() for k in (fields.left, fields.right))


def pairwise_item(fields: TaskFields, p_left: float, version: str) -> dict:
    """One prediction: the answer the model prefers, and how sure it is."""
    return {
        "result": [{"from_name": fields.pairwise, "to_name": fields.left, "type": "pairwise",
                    "value": {"selected": "left" if p_left >= 0.5 else "right"}}],
        "score": round(max(p_left, 1.0 - p_left), 6),
        "model_version": version,
    }


def score_tasks(model, version: str, tasks: list[dict], fields: TaskFields) -> list[dict | None]:
    """A prediction item for each task (in order) under the reward `model`; None for a task whose answers
    are not there yet (Label Studio then asks again later)."""
    items: list[dict | None] = [None] * len(tasks)
    ready = [i for i, t in enumerate(tasks) if has_answers(t.get("data") or {}, fields)]
    data = [tasks[i]["data"] for i in ready]
    # One call: the model batches (and the feature cache reads) all of them at once.
    p_left = model.preference([prompt_text(d.get(fields.prompt)) for d in data],
                              [d[fields.left] for d in data], [d[fields.right] for d in data]) if ready else []
    for i, p in zip(ready, p_left):
        items[i] = pairwise_item(fields, float(p), version)
    return items


def uncertainty(item: dict) -> float:
    """How close to a coin flip the guess is: 0 (sure) to 0.5 (no idea)."""
    return 1.0 - item["score"]
