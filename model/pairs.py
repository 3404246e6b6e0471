"""Label Studio tasks and exports -> preference pairs -> TRL preference JSONL."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from model.conversation import (ASSISTANT_CUE, answer_text, is_messages, plain_text, prompt_messages, prompt_text,
                                split_conversations)

# Key in task data where the generation job records which candidate went left, and how it was made.
# Task data (not meta) because every export format (JSON, JSON_MIN, CSV) carries data keys.
GENERATION_KEY = "rlhf_generation"


@dataclass(frozen=True)
class TaskFields:
    """Names read from a project's label config: the Pairwise control and the data keys it compares."""

    pairwise: str  # the Pairwise control's name, e.g. "comparison"
    prompt: str    # data key of the prompt Text, e.g. "prompt"
    left: str      # data key of the first (left) answer Text, e.g. "answer1"
    right: str     # data key of the second (right) answer Text, e.g. "answer2"
    judgement: str | None = None  # optional Choices control offering "tie" / "both bad" (label_config_ties.xml)
    dialogue_prompt: bool = False  # the prompt shows as a dialogue (<Paragraphs>): task data holds chat messages
    left_object: str = "answer1"  # the first answer's Text name: a prediction's to_name


DEFAULT_FIELDS = TaskFields(pairwise="comparison", prompt="prompt", left="answer1", right="answer2")


@dataclass(frozen=True)
class RankerFields:
    """Names read from a Ranker project's label config (label_config_ranker.xml): k answers in a <List>."""

    ranker: str       # the Ranker control's name, e.g. "rank": the key of a full order in the result
    list_name: str    # the List object's name, e.g. "answers": a prediction's to_name
    answers: str      # data key of the List's items [{"id", "title", "body"}], e.g. "answers"
    prompt: str       # data key of the prompt Text or Paragraphs, e.g. "prompt"
    buckets: tuple[str, ...] = ()  # <Bucket> names in config order, read as best group first; () = full order
    dialogue_prompt: bool = False  # the prompt shows as a dialogue (<Paragraphs>): task data holds chat messages


DEFAULT_RANKER_FIELDS = RankerFields(ranker="rank", list_name="answers", answers="answers", prompt="prompt")


@dataclass(frozen=True)
class PreferencePair:
    """One human judgment: `chosen` was preferred over `rejected` as an answer to `prompt`.

    `meta` (not part of equality) carries provenance: task_id, annotation_id, annotator, chosen_side
    ("left"/"right"), chosen_source ("a"/"b": which generator made the chosen answer), lead_time.
    `weight` scales the pair's share of the training loss: a ranking of k answers gives C(k,2) pairs of
    weight 1/C(k,2) each, so one prompt read counts once (InstructGPT's recipe).
    """

    prompt: str
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict, compare=False)
    weight: float = field(default=1.0, compare=False)


def csv_value(value):
    """A value from an export row as JSON and JSON_MIN give it: CSV exports carry nested values (lists,
    objects) as JSON strings."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def generation_record(data: dict) -> dict:
    """data[GENERATION_KEY] as a dict."""
    value = csv_value(data.get(GENERATION_KEY))
    return value if isinstance(value, dict) else {}


def _source(data: dict, side: str) -> str | None:
    """Which candidate ("a"/"b") was shown on `side`, from the mapping the generation job recorded."""
    gen = generation_record(data)
    if gen.get(side) in ("a", "b"):
        return gen[side]
    left = gen.get("left")
    if left in ("a", "b"):
        return left if side == "left" else {"a": "b", "b": "a"}[left]
    return None


def _make_pair(data: dict, selected: str, fields: TaskFields, meta: dict) -> PreferencePair | None:
    left, right = plain_text(data.get(fields.left)), plain_text(data.get(fields.right))
    if not left.strip() or not right.strip():
        return None
    chosen, rejected = (left, right) if selected == "left" else (right, left)
    meta = {**meta, "chosen_side": selected, "chosen_source": _source(data, selected)}
    return PreferencePair(task_prompt(data.get(fields.prompt)), chosen, rejected, meta)


def task_prompt(value) -> str:
    """The prompt's text; a prompt of chat messages may come as a CSV export's JSON string."""
    decoded = csv_value(value)
    return prompt_text(decoded if is_messages(decoded) else value)


def selected_side(result: Iterable[dict], fields: TaskFields = DEFAULT_FIELDS) -> str | None:
    """"left"/"right" from an annotation's result list, or None.

    Keys on from_name/type only: to_name is "comparison" when the editor writes the result but keeps
    whatever an accepted prediction said (e.g. "answer1"), so it is not reliable.
    """
    for item in result or []:
        if not isinstance(item, dict):
            continue
        if item.get("from_name") == fields.pairwise or item.get("type") == "pairwise":
            selected = (item.get("value") or {}).get("selected")
            if selected in ("left", "right"):
                return selected
    return None


TIE, BOTH_BAD = "tie", "both bad"


def judgement_choices(result, choices_name: str | None = None) -> tuple[str, ...]:
    """Values of "choices" result items, lower-cased; only from `choices_name` when given (the Choices
    control's name, "judgement" in label_config_ties.xml). Without a name only "tie"/"both bad" count, so
    an unrelated Choices control in a custom config cannot turn into a tie."""
    found = []
    for item in result or []:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        if choices_name is not None and item.get("from_name") != choices_name:
            continue
        for value in (item.get("value") or {}).get("choices") or []:
            value = str(value).strip().lower()
            if choices_name is not None or value in (TIE, BOTH_BAD):
                found.append(value)
    return tuple(found)


def annotator_of(value):
    """completed_by is an id in exports but may be a user dict in some API responses."""
    if isinstance(value, dict):
        return value.get("id", value.get("email"))
    return value


def pairs_from_tasks(tasks: list[dict], fields: TaskFields = DEFAULT_FIELDS) -> list[PreferencePair]:
    """Pairs from LS JSON-export tasks (or SDK/API task dicts of the same shape).

    Cancelled (skipped) and empty annotations are dropped, as are tasks with an empty answer. A task
    labelled by several annotators gives one pair per annotator: disagreement is real signal about how
    close the answers are, and the Bradley-Terry loss turns split votes into a probability near 0.5
    instead of an arbitrary majority pick. The train/validation split groups pairs by task, so the
    same comparison never lands on both sides.

    With the tie / both-bad Choices (label_config_ties.xml): a tie says neither answer is preferred, so it
    is no Bradley-Terry pair and is dropped, even if a side was clicked too. "Both bad" with a side picked
    stays a pair (the less bad answer is still preferred) flagged `meta["both_bad"]`, which the export keeps.
    """
    pairs = []
    for task in tasks:
        data = task.get("data") or {}
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            selected = selected_side(ann.get("result"), fields)
            choices = judgement_choices(ann.get("result"), fields.judgement)
            if selected is None or TIE in choices:
                continue
            meta = {"task_id": task.get("id"), "annotation_id": ann.get("id"),
                    "annotator": annotator_of(ann.get("completed_by")), "lead_time": ann.get("lead_time"),
                    "both_bad": BOTH_BAD in choices}
            pair = _make_pair(data, selected, fields, meta)
            if pair is not None:
                pairs.append(pair)
    return pairs


def _min_selection(value) -> str | None:
    """JSON_MIN puts the Pairwise value under the control's name: [{"selected": "left"}] (CSV: as JSON)."""
    value = csv_value(value)
    if isinstance(value, dict):
        value = [value]
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and item.get("selected") in ("left", "right"):
            return item["selected"]
    return None


def pairs_from_json_min(rows: list[dict], fields: TaskFields = DEFAULT_FIELDS) -> list[PreferencePair]:
    """Pairs from JSON_MIN export rows (one row per annotation; data keys at the top level).

    Skipped annotations carry no selection and are dropped; see `pairs_from_tasks` for why every
    annotator's row is kept.
    """
    pairs = []
    for row in rows:
        selected = _min_selection(row.get(fields.pairwise))
        if selected is None:
            continue
        meta = {"task_id": row.get("id"), "annotation_id": row.get("annotation_id"),
                "annotator": row.get("annotator"), "lead_time": row.get("lead_time")}
        pair = _make_pair(row, selected, fields, meta)
        if pair is not None:
            pairs.append(pair)
    return pairs


def split_hh(chosen: str, rejected: str) -> PreferencePair:
    """An hh-rlhf record -> pair: the prompt is the shared prefix up to and including the last
    "\\n\\nAssistant:"; chosen/rejected are the rest, stripped. Without a shared cue the prompt is empty."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT_CUE, 0, n)
    if cut < 0 or cut + len(ASSISTANT_CUE) > n:
        return PreferencePair("", chosen.strip(), rejected.strip())
    end = cut + len(ASSISTANT_CUE)
    return PreferencePair(chosen[:end], chosen[end:].strip(), rejected[end:].strip())


def _pairs_from_records(rows: list[dict], fields: TaskFields) -> list[PreferencePair]:
    """Dispatch on the shape of the first record."""
    if not rows:
        return []
    first = rows[0]
    if "annotations" in first or ("data" in first and isinstance(first.get("data"), dict)):
        return pairs_from_tasks(rows, fields)
    if "chosen" in first and "rejected" in first:
        pairs = []
        for i, row in enumerate(rows):
            chosen, rejected = row.get("chosen"), row.get("rejected")
            if "prompt" in row:  # TRL's explicit-prompt form, text or conversational
                pair = PreferencePair(prompt_text(row["prompt"]), answer_text(chosen), answer_text(rejected))
            elif is_messages(chosen) and is_messages(rejected):  # TRL's implicit-prompt conversations
                pair = PreferencePair(*split_conversations(chosen, rejected))
            else:  # hh-rlhf transcripts
                pair = split_hh(plain_text(chosen), plain_text(rejected))
            extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
            pairs.append(PreferencePair(pair.prompt, pair.chosen, pair.rejected, {"line": i, **extra}))
        return pairs
    return pairs_from_json_min(rows, fields)


def read_pairs(path, fields: TaskFields = DEFAULT_FIELDS) -> list[PreferencePair]:
    """Read pairs from a file, detecting the format: LS JSON export, JSON_MIN, CSV export, TRL JSONL
    {"prompt","chosen","rejected"} (text or conversational), or {"chosen","rejected"} conversations
    whose shared beginning is the prompt (hh-rlhf transcripts, TRL's implicit-prompt form)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    head = text.lstrip()[:1]
    if path.suffix.lower() == ".csv" or head not in ("[", "{"):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        return pairs_from_json_min(rows, fields)
    if head == "[":
        return _pairs_from_records(json.loads(text), fields)
    try:  # a single JSON object (e.g. one task) or JSON Lines
        records = [json.loads(text)]
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return _pairs_from_records(records, fields)


def write_trl_jsonl(pairs: Iterable[PreferencePair], path, conversational: bool = False) -> int:
    """Write TRL's explicit-prompt preference format, one {"prompt","chosen","rejected"} per line, plus a
    boolean "both_bad" (the annotator found both answers bad; filter on it before RL if you like).
    `conversational`: the prompt as chat messages (a transcript turn by turn) and each answer as one
    assistant message, so TRL applies the policy's chat template instead of reading raw text.

    Other meta values have mixed types (ids, None, floats) that would trip
    `datasets.load_dataset("json")` schema inference, so they stay out; "both_bad" is always a bool.
    """
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            if conversational:
                row = {"prompt": prompt_messages(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
                       "rejected": [{"role": "assistant", "content": p.rejected}]}
            else:
                row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            f.write(json.dumps({**row, "both_bad": bool(p.meta.get("both_bad"))}, ensure_ascii=False) + "\n")
            count += 1
    return count
