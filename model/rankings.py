"""Ranker projects (label_config_ranker.xml): k answers to one prompt, put in order by a human ->
rankings, their preference pairs, and a rankings JSONL.

Task data: {"prompt": ..., "answers": [{"id", "title", "body"}, ...], GENERATION_KEY: {"order": [...]}}.
A result, as Label Studio 1.23.2 stores it (tests/fixtures/ls-1.23.2-ranker.md):
{"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": {"rank": ["answer3", ...]}}}
keyed by the Ranker's name; with <Bucket>s, {"ranker": {"<bucket>": [...], ..., "_": [...]}}, where "_"
holds the answers left unsorted. Label Studio validates neither annotations nor these ids, so anything
can arrive here: what a result says is used, the rest is dropped with a log line.
"""

from __future__ import annotations

import json
import logging
import random
import re
import string
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from model.conversation import plain_text
from model.pairs import (DEFAULT_RANKER_FIELDS, PreferencePair, RankerFields, TaskFields, annotator_of, csv_value,
                         generation_record, pairs_from_tasks, task_prompt)

log = logging.getLogger(__name__)

UNSORTED = "_"  # the editor's column of answers not sorted into any bucket
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")


def candidate_label(index: int) -> str:
    """"a", "b", "c", ...: the index-th answer a generator returned (Pairwise's "a"/"b", extended)."""
    return string.ascii_lowercase[index]


def shuffled_answers(answers: Sequence[str], rng: random.Random) -> tuple[list[dict], dict]:
    """A generator's k answers as a Ranker task's items, in random order, and the mapping to record under
    GENERATION_KEY: {"order": [the candidate label shown in each slot, top first]}.

    Ids are "answer1".."answerk" by slot: text, because the editor lists whole-number ids in numeric order
    whatever the data's order, and they say nothing about which candidate is where."""
    slots = list(range(len(answers)))
    rng.shuffle(slots)
    items = [{"id": f"answer{n}", "title": f"Answer {n}", "body": answers[c]} for n, c in enumerate(slots, 1)]
    return items, {"order": [candidate_label(c) for c in slots]}


def answer_texts(items) -> dict[str, str]:
    """{answer id: text} of a task's answers list. Ids are read as the editor reads them, as strings; an id
    given twice keeps its first place and the last text, as in the editor's index of items."""
    items = csv_value(items)
    texts: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and _usable_id(item.get("id")):
            body = item.get("body") if item.get("body") is not None else item.get("html")
            texts[str(item["id"])] = plain_text(body)
    return texts


def _usable_id(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def displayed_ids(items) -> list[str]:
    """Answer ids top to bottom as the editor shows them before anyone moves one: it keys the items by id in
    a JavaScript object, whose keys list whole numbers first, ascending, then the rest in data order."""
    ids = list(answer_texts(items))
    numeric = sorted((i for i in ids if _ARRAY_INDEX.fullmatch(i) and int(i) < 2 ** 32 - 1), key=int)
    return numeric + [i for i in ids if i not in numeric]


def candidate_labels(data: dict, fields: RankerFields = DEFAULT_RANKER_FIELDS) -> dict[str, str]:
    """{answer id: candidate label} from GENERATION_KEY's "order" (one label per item of the answers list,
    in the list's order); {} when the answers were not generated here or the list changed since."""
    order = generation_record(data).get("order")
    items = csv_value(data.get(fields.answers))
    if not isinstance(order, list) or not isinstance(items, list) or len(order) != len(items):
        return {}
    return {str(item["id"]): label for item, label in zip(items, order)
            if isinstance(item, dict) and _usable_id(item.get("id")) and isinstance(label, str)}


Groups = tuple[tuple[str, ...], ...]


def ranker_groups(result, fields: RankerFields, texts: dict[str, str]) -> tuple[Groups, list[str]]:
    """The groups of answer ids a result says, best first, and what was wrong with it (for a log line).

    A full order is one id per group; buckets are one group each, in the config's order. Only ids of
    answers with text count: unknown ids are dropped, a repeated id keeps its first (best) place, and
    the answers an order leaves out are left out. The old array form {"ranker": [...]} reads as a full order."""
    item = next((r for r in result or [] if isinstance(r, dict)
                 and (r.get("from_name") == fields.ranker or r.get("type") == "ranker")), None)
    value = item.get("value") if item else None
    ranker = value.get("ranker") if isinstance(value, dict) else None
    problems: list[str] = []
    if isinstance(ranker, list):
        problems.append('the old array form {"ranker": [...]} read as a full order')
        raw, full = [[x] for x in ranker], True
    elif isinstance(ranker, dict) and fields.buckets and any(b in ranker for b in fields.buckets):
        raw, full = [ranker.get(b) or [] for b in fields.buckets], False
        extra = sorted(k for k in ranker if k not in fields.buckets and k != UNSORTED)
        if extra:
            problems.append(f"unknown buckets {extra} ignored")
    elif isinstance(ranker, dict) and isinstance(ranker.get(fields.ranker), list):
        raw, full = [[x] for x in ranker[fields.ranker]], True
    else:
        where = f"buckets {list(fields.buckets)} or " if fields.buckets else ""
        return (), [f'no order under {where}"{fields.ranker}" in the ranker result']

    seen: set[str] = set()
    unknown, repeated, empty, groups = [], [], [], []
    for members in raw:
        ids = []
        for x in members if isinstance(members, list) else [members]:
            key = str(x) if _usable_id(x) else None
            if key is None or key not in texts:
                unknown.append(x)
            elif key in seen:
                repeated.append(key)
            elif not texts[key].strip():
                empty.append(key)
                seen.add(key)
            else:
                ids.append(key)
                seen.add(key)
        if ids:
            groups.append(tuple(ids))
    missing = [i for i in texts if i not in seen and texts[i].strip()]
    for found, what in ((unknown, "unknown answer ids {} dropped"),
                        (repeated, "repeated ids {} kept at their first place"),
                        (empty, "answers {} have no text and were left out"),
                        (missing if full else [], "answers {} missing from the order were left out")):
        if found:
            problems.append(what.format(found))
    if len(groups) < 2:
        problems.append("fewer than two answers in order" if full else "fewer than two buckets hold answers")
    return tuple(groups), problems


@dataclass(frozen=True)
class Ranking:
    """One annotation of a Ranker task: answer ids in `groups`, best first (a full order has one id per group).

    `meta` (not part of equality): task_id, annotation_id, annotator, lead_time; displayed_order (the ids
    top to bottom as the annotator first saw them, None when unknown) and displayed_from ("data": the
    task's random order, "prediction": a model's order pre-filled by Label Studio); unchanged_order (the
    submitted order is the displayed one: maybe no judgement at all; None when unknown); candidates
    ({answer id: candidate label} from the generation mapping); problems (what was dropped from the result).
    """

    prompt: str
    groups: tuple[tuple[str, ...], ...]
    answers: dict = field(compare=False)  # {answer id: text}
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(i for group in self.groups for i in group)

    @property
    def full(self) -> bool:
        return all(len(group) == 1 for group in self.groups)


def _displayed(task: dict, ann: dict, fields: RankerFields, texts: dict[str, str]):
    """(displayed ids, displayed groups, source). Label Studio pre-fills a new annotation from a prediction
    when the task has one (setting parent_prediction): the annotator then starts from the model's order."""
    parent = ann.get("parent_prediction")
    if parent is None:
        ids = displayed_ids((task.get("data") or {}).get(fields.answers))
        shown = () if fields.buckets else tuple((i,) for i in ids if texts.get(i, "").strip())
        return ids, shown, "data"
    for prediction in [ann.get("prediction"), *(task.get("predictions") or [])]:
        if isinstance(prediction, dict) and prediction.get("id") == parent:
            shown, _ = ranker_groups(prediction.get("result"), fields, texts)
            return [i for group in shown for i in group], shown, "prediction"
    return None, None, "prediction"  # exports list predictions by id only


def rankings_from_tasks(tasks: list[dict], fields: RankerFields = DEFAULT_RANKER_FIELDS) -> list[Ranking]:
    """Rankings from Label Studio JSON-export tasks (or API task dicts of the same shape), one per submitted
    annotation; skipped (cancelled) annotations are left out, and so is a result that orders fewer than
    two answers (logged)."""
    rankings = []
    for task in tasks:
        if not isinstance(task, dict):
            continue
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        texts = answer_texts(data.get(fields.answers))
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            where = f"task {task.get('id')} annotation {ann.get('id')}"
            groups, problems = ranker_groups(ann.get("result"), fields, texts)
            if len(groups) < 2:
                log.warning("%s: no ranking used (%s)", where, "; ".join(problems))
                continue
            if problems:
                log.warning("%s: %s", where, "; ".join(problems))
            ids, shown, source = _displayed(task, ann, fields, texts)
            meta = {"task_id": task.get("id"), "annotation_id": ann.get("id"),
                    "annotator": annotator_of(ann.get("completed_by")), "lead_time": ann.get("lead_time"),
                    "displayed_order": ids, "displayed_from": source,
                    "unchanged_order": None if shown is None else groups == shown,
                    "candidates": candidate_labels(data, fields), "problems": problems}
            rankings.append(Ranking(task_prompt(data.get(fields.prompt)), groups,
                                    {i: texts[i] for group in groups for i in group}, meta))
    return rankings


def pairs_from_ranking(ranking: Ranking) -> list[PreferencePair]:
    """Every answer over every answer of a worse group: C(k,2) pairs for a full order of k, and pairs
    between groups only for buckets. Each pair weighs 1/(number of pairs), so a ranking counts as much as
    one judgement in the loss however many pairs it gives (InstructGPT's guard against overfitting to one
    prompt). Two answers with the same text make no pair."""
    combos = [(a, b) for n, better in enumerate(ranking.groups) for worse in ranking.groups[n + 1:]
              for a in better for b in worse if ranking.answers[a] != ranking.answers[b]]
    meta = {k: ranking.meta.get(k)
            for k in ("task_id", "annotation_id", "annotator", "lead_time", "unchanged_order")}
    sources = ranking.meta.get("candidates") or {}
    return [PreferencePair(ranking.prompt, ranking.answers[a], ranking.answers[b],
                           {**meta, "ranking": True, "chosen_id": a, "rejected_id": b,
                            "chosen_source": sources.get(a), "rejected_source": sources.get(b)},
                           weight=1 / len(combos))
            for a, b in combos]


def pairs_from_rankings(rankings: Iterable[Ranking]) -> list[PreferencePair]:
    return [pair for ranking in rankings for pair in pairs_from_ranking(ranking)]


def task_pairs(tasks: list[dict], fields: TaskFields | RankerFields) -> list[PreferencePair]:
    """The preference pairs of a project's annotated tasks, Pairwise or Ranker alike."""
    if isinstance(fields, RankerFields):
        return pairs_from_rankings(rankings_from_tasks(tasks, fields))
    return pairs_from_tasks(tasks, fields)


def write_rankings_jsonl(rankings: Iterable[Ranking], path) -> int:
    """One line per annotation: {"prompt", "answers": texts best first, "groups": texts per group (one
    each for a full order; a bucket's in the order the annotator left them), "sources": the candidate
    label of each answer in "answers" (null where unknown), "unchanged_order", "task_id",
    "annotation_id"}. Annotators stay out: ids and e-mails would mix types across lines, which trips
    `datasets.load_dataset("json")`."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rankings:
            sources = r.meta.get("candidates") or {}
            row = {"prompt": r.prompt, "answers": [r.answers[i] for i in r.order],
                   "groups": [[r.answers[i] for i in group] for group in r.groups],
                   "sources": [sources.get(i) for i in r.order],
                   "unchanged_order": bool(r.meta.get("unchanged_order")),
                   "task_id": r.meta.get("task_id"), "annotation_id": r.meta.get("annotation_id")}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
