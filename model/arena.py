"""Humans as the judge between two generator versions.

An arena task is an ordinary Pairwise task whose two answers come from two generator versions, one answer
each: candidate "a" from version A and candidate "b" from version B, on random sides. Its generation record
(task data, GENERATION_KEY) holds the usual {"left": "a"|"b", "right": ...} mapping plus
ARENA_KEY: {"a": "v1", "b": "v2"}, so the export maps a choice back to a candidate exactly as for any task
(the labels are ordinary training pairs) and the report maps the candidate to its version.

`arena_results` counts the annotators' verdicts per pair of versions: a pick of B's answer is a win of B, a
pick of A's a loss; a tie, or "both bad" without a side, counts half to each (Chatbot Arena counts both as
ties); "both bad" with a side picked still says which answer is less bad, and counts as that pick (as in
training). Skipped annotations are no verdicts and are counted apart. Each row is oriented so that B is the
later version of the two (base before v1 before v2), whichever side of the command it was on: tasks from
`--a v1 --b v2` and from `--a v2 --b v1` add up in one row.
"""

from __future__ import annotations

import re

from model.pairs import BOTH_BAD, DEFAULT_FIELDS, TIE, TaskFields, _source, generation_record, judgement_choices, \
    selected_side
from model.winrate import human_win_rate

ARENA_KEY = "arena"
BASE = "base"  # the configured generator (GENERATOR_MODEL)


def arena_versions(data: dict) -> tuple[str, str] | None:
    """(version of candidate "a", version of candidate "b") of an arena task's data; None for other tasks."""
    record = generation_record(data).get(ARENA_KEY)
    if not isinstance(record, dict):
        return None
    a, b = record.get("a"), record.get("b")
    return (str(a), str(b)) if a is not None and b is not None and a != b else None


def version_order(name: str) -> tuple:
    """Sort key: base first, then v1, v2, ... by number, then any other name."""
    if name == BASE:
        return (0, 0, "")
    match = re.fullmatch(r"v(\d+)", name)
    return (1, int(match.group(1)), "") if match else (2, 0, name)


def verdict(annotation: dict, data: dict, fields: TaskFields, choices_name: str | None) -> str | None:
    """"a" or "b" (whose answer was picked), "tie", "skip", or None (no verdict: an empty annotation)."""
    if annotation.get("was_cancelled"):
        return "skip"
    result = annotation.get("result")
    choices = judgement_choices(result, choices_name)
    side = selected_side(result, fields)
    if TIE in choices or (side is None and BOTH_BAD in choices):
        return "tie"
    return _source(data, side) if side else None


def arena_results(tasks: list[dict], fields: TaskFields = DEFAULT_FIELDS,
                  choices_name: str | None = None) -> list[dict]:
    """One row per pair of versions found in arena tasks, oldest pair first: {"a", "b", "tasks", "labelled_tasks",
    "skipped", **human_win_rate(wins of b, losses of b, ties)}. [] when no task is an arena task."""
    rows: dict[tuple[str, str], dict] = {}
    for task in tasks:
        data = task.get("data") or {}
        versions = arena_versions(data)
        if versions is None:
            continue
        a, b = sorted(versions, key=version_order)
        flipped = (a, b) != versions  # the task's candidate "a" is this row's B
        row = rows.setdefault((a, b), {"a": a, "b": b, "tasks": 0, "labelled_tasks": 0, "skipped": 0,
                                       "wins": 0, "losses": 0, "ties": 0})
        row["tasks"] += 1
        counted = False
        for annotation in task.get("annotations") or []:
            said = verdict(annotation, data, fields, choices_name)
            if said == "skip":
                row["skipped"] += 1
            elif said == "tie":
                row["ties"] += 1
            elif said in ("a", "b"):
                row["wins" if (said == "b") != flipped else "losses"] += 1
            counted = counted or said in ("a", "b", "tie")
        row["labelled_tasks"] += counted
    return [{**row, **human_win_rate(row["wins"], row["losses"], row["ties"])}
            for _, row in sorted(rows.items(), key=lambda item: (version_order(item[0][0]), version_order(item[0][1])))]


def reading(row: dict) -> str:
    """One line: "v2 preferred in 58% [51, 65] of 180 verdicts against v1: v2 is better"."""
    if not row["n"]:
        return f"{row['b']} against {row['a']}: no verdicts yet"
    lo, hi = row["win_rate_ci"]
    line = (f"{row['b']} preferred in {row['win_rate']:.0%} [{100 * lo:.0f}, {100 * hi:.0f}] of {row['n']} verdicts "
            f"against {row['a']}")
    if lo > 0.5:
        return line + f": {row['b']} is better"
    if hi < 0.5:
        return line + f": {row['a']} is better"
    return line + ": no clear difference yet"
