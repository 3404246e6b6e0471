"""The backend's guesses in Label Studio's form: a task's answers scored by the reward model, written as the
Pairwise selection or the Ranker order the editor itself would make, with the model's confidence as the
prediction score.

`/predict` returns these items, and the jobs write the same items in bulk, so the forms live here once.
The score is how sure the model is of its pick (0.5 to 1): for a Ranker order, the mean over every pair
of answers of the probability that the pair is in the right order. Sorting tasks by prediction score in
Label Studio puts the most uncertain first.

`to_name` is an object (the first answer's Text, or the List), not the control itself (what the editor
writes for Pairwise): Label Studio's bulk prediction import validates each result against the label
config and drops one aimed at the control; the labelling page shows both forms alike.
"""

from __future__ import annotations

import math

from model.conversation import prompt_text
from model.pairs import RankerFields, TaskFields
from model.rankings import answer_texts

KEPT_SUFFIX = " (annotated)"


def kept_version(version: str) -> str:
    """The model_version a prediction of `version` is renamed to when its task is labelled: out of the
    version's bulk delete (which would clear the annotation's parent_prediction), and still readable."""
    return version + KEPT_SUFFIX


def made_by(model_version: str | None) -> str | None:
    """The version that made a prediction, whether it was kept (`kept_version`) or not."""
    if isinstance(model_version, str) and model_version.endswith(KEPT_SUFFIX):
        return model_version[:-len(KEPT_SUFFIX)]
    return model_version


def answers_of(data: dict, fields: TaskFields | RankerFields) -> dict[str, str]:
    """{answer id: text} of a task's non-empty answers ("left"/"right" for a Pairwise task)."""
    if isinstance(fields, RankerFields):
        texts = answer_texts(data.get(fields.answers))
    else:
        texts = {"left": data.get(fields.left), "right": data.get(fields.right)}
    return {i: t for i, t in texts.items() if isinstance(t, str) and t.strip()}


def has_answers(data: dict, fields: TaskFields | RankerFields) -> bool:
    answers = answers_of(data, fields)
    return len(answers) >= 2 if isinstance(fields, RankerFields) else len(answers) == 2


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(x / 2))


def prediction(fields: TaskFields | RankerFields, rewards: dict[str, float], version: str) -> dict:
    """One prediction from each answer's reward: the order (or pick) the model prefers, and how sure it is."""
    order = sorted(rewards, key=lambda i: -rewards[i])
    pairs = [(a, b) for n, a in enumerate(order) for b in order[n + 1:]]
    score = sum(_sigmoid(rewards[a] - rewards[b]) for a, b in pairs) / len(pairs)
    if isinstance(fields, RankerFields):
        result = {"from_name": fields.ranker, "to_name": fields.list_name, "type": "ranker",
                  "value": {"ranker": {fields.ranker: order}}}
    else:
        result = {"from_name": fields.pairwise, "to_name": fields.left_object, "type": "pairwise",
                  "value": {"selected": order[0]}}
    return {"result": [result], "score": round(score, 6), "model_version": version}


def score_tasks(model, version: str, tasks: list[dict], fields: TaskFields | RankerFields) -> list[dict | None]:
    """A prediction for each task (in order) under the reward `model`; None for a task whose answers are
    not there yet (Label Studio then asks again later)."""
    items: list[dict | None] = [None] * len(tasks)
    ready = [(i, answers_of(t.get("data") or {}, fields)) for i, t in enumerate(tasks)
             if has_answers(t.get("data") or {}, fields)]
    prompts = [prompt_text(tasks[i]["data"].get(fields.prompt)) for i, answers in ready for _ in answers]
    texts = [text for _, answers in ready for text in answers.values()]
    # One call: the model batches (and the feature cache reads) every answer of every task at once.
    rewards = iter(model.rewards(prompts, texts) if texts else [])
    for i, answers in ready:
        items[i] = prediction(fields, {key: next(rewards) for key in answers}, version)
    return items


def uncertainty(item: dict) -> float:
    """How close to a coin flip the guess is: 0 (sure) to 0.5 (no idea)."""
    return 1.0 - item["score"]
