"""How generated answers go into a task: one per answer slot (Pairwise) or list item (Ranker), in random
order, with a record of which candidate is where (under GENERATION_KEY, in the task data, so every export
format carries it).

The record is what lets the export map a choice back to the model that wrote the answer, and the report
measure position bias. The `generate` command and the generation job both place answers through here.
"""

from __future__ import annotations

import random

from model.pairs import GENERATION_KEY, RankerFields, TaskFields
from model.rankings import answer_texts, shuffled_answers


def candidates_for(fields: TaskFields | RankerFields, configured: int) -> int:
    """Answers to generate per prompt: two for a Pairwise project, CANDIDATES for a Ranker one."""
    return configured if isinstance(fields, RankerFields) else 2


def needs_answers(data: dict, fields: TaskFields | RankerFields) -> bool:
    """True while no answer holds text and generation has not given up on this prompt."""
    record = data.get(GENERATION_KEY)
    if isinstance(record, dict) and record.get("error"):
        return False  # a prompt we could not answer: recorded on the task, not retried forever
    if isinstance(fields, RankerFields):
        return not any(text.strip() for text in answer_texts(data.get(fields.answers)).values())
    return not any(isinstance(data.get(k), str) and data[k].strip() for k in (fields.left, fields.right))


def place_answers(answers: tuple[str, ...], fields: TaskFields | RankerFields, rng: random.Random,
                  generator: dict, truncated: bool) -> dict:
    """The task-data keys that show `answers` (candidates "a", "b", ...) in random slots."""
    if isinstance(fields, RankerFields):
        items, mapping = shuffled_answers(answers, rng)
        return {fields.answers: items, GENERATION_KEY: {**mapping, "truncated": truncated, "generator": generator}}
    a, b = answers
    left = rng.choice("ab")  # which candidate the annotator sees on the left
    first, second = (a, b) if left == "a" else (b, a)
    return {fields.left: first, fields.right: second,
            GENERATION_KEY: {"left": left, "right": "b" if left == "a" else "a", "truncated": truncated,
                             "generator": generator}}


def failure(error: str) -> dict:
    """The task-data key that records why no answers could be generated for its prompt."""
    return {GENERATION_KEY: {"error": error}}
