"""Humans as the judge between generator versions: the win rate counted from a hand-checkable synthetic export
(picks mapped through the recorded sides, ties and both-bad, skips, reversed runs, other pairs and ordinary
tasks), its report section, and the arena command's checks that stop it before anything is generated."""

from __future__ import annotations

import argparse
import math
import random
import re

import pytest

from backend.cli_arena import arena_tasks, register
from backend.config import ConfigError, load_settings
from backend.report import build_report
from backend.report_pairwise import ARENA_SECTION, PAIRWISE_SECTIONS
from backend.report_sources import tasks_from_rows
from model.arena import arena_results, reading
from model.generation.types import Candidates
from model.pairs import DEFAULT_FIELDS, GENERATION_KEY, TaskFields, pairs_from_tasks
from synthetic_export import annotation_result, synthetic_export

_ids = iter(range(1000, 100000))


def arena_task(a: str, b: str, left: str, *labels) -> dict:
    """A labelled arena task: candidate `left` ("a"/"b") on the left; each label is (side, choice) or "skip"."""
    right = "b" if left == "a" else "a"
    answers = {"a": f"answer of {a}", "b": f"answer of {b}"}
    annotations = [{"id": next(_ids), "completed_by": 1, "was_cancelled": True, "result": []} if label == "skip"
                   else {"id": next(_ids), "completed_by": 1, "was_cancelled": False,
                         "result": annotation_result(*label)} for label in labels]
    return {"id": next(_ids), "annotations": annotations, "data": {
        "prompt": "Say something.", "answer1": answers[left], "answer2": answers[right],
        GENERATION_KEY: {"left": left, "right": right, "truncated": False, "generator": {"model": a, "model_b": b},
                         "arena": {"a": a, "b": b}}}}


def picks(b_side_of: str, who: str) -> tuple:
    """The (side, None) label that picks `who`'s answer ("a" or "b") on a task whose left candidate is `b_side_of`."""
    return ("left" if b_side_of == who else "right", None)


def hand_checked_export() -> list[dict]:
    tasks = []
    # v1 (a) against v2 (b): 6 picks of v2 (on both sides), 2 of v1, a tie, both bad with v2's answer picked (a
    # pick of v2), both bad without a side (a tie), a skip, and a task nobody labelled.
    for left in "ab" * 3:
        tasks.append(arena_task("v1", "v2", left, picks(left, "b")))
    tasks += [arena_task("v1", "v2", "a", picks("a", "a")), arena_task("v1", "v2", "b", picks("b", "a")),
              arena_task("v1", "v2", "a", (None, "tie")), arena_task("v1", "v2", "b", ("left", "both bad")),
              arena_task("v1", "v2", "a", (None, "both bad")), arena_task("v1", "v2", "b", "skip"),
              arena_task("v1", "v2", "a")]
    # The same two versions imported the other way round (--a v2 --b v1): a pick of its candidate "a" is v2's.
    tasks += [arena_task("v2", "v1", "a", ("left", None)), arena_task("v2", "v1", "b", ("right", None))]
    # base against v1, two annotators on one task: 1 pick each way.
    tasks.append(arena_task("base", "v1", "a", ("left", None), ("right", None)))
    return tasks + synthetic_export(n_tasks=6)  # ordinary tasks: no verdicts of any version


def wilson(successes: float, n: int) -> tuple[float, float]:
    z = 1.959964
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_win_rate_per_pair_of_versions_by_hand():
    rows = arena_results(hand_checked_export(), DEFAULT_FIELDS, "judgement")
    assert [(r["a"], r["b"]) for r in rows] == [("base", "v1"), ("v1", "v2")]
    base_v1, v1_v2 = rows
    # v2 won 6 + 1 (both bad, side v2) + 2 (reversed run) = 9, lost 2, tied 2 (tie, both bad without side).
    assert (v1_v2["wins"], v1_v2["losses"], v1_v2["ties"], v1_v2["n"]) == (9, 2, 2, 13)
    assert (v1_v2["skipped"], v1_v2["tasks"], v1_v2["labelled_tasks"]) == (1, 15, 13)
    assert v1_v2["win_rate"] == pytest.approx(10 / 13)  # a tie counts half
    assert v1_v2["win_rate_ci"] == pytest.approx(wilson(10, 13))
    assert (base_v1["wins"], base_v1["losses"], base_v1["n"], base_v1["win_rate"]) == (1, 1, 2, 0.5)
    lo, hi = wilson(10, 13)
    assert lo < 0.5  # 10 of 13 is not enough to tell
    assert reading(v1_v2) == (f"v2 preferred in 77% [{100 * lo:.0f}, {100 * hi:.0f}] of 13 verdicts against v1: "
                              "no clear difference yet")
    assert reading(base_v1).endswith("no clear difference yet")


def test_reading_says_which_version_is_better():
    rows = arena_results([arena_task("v1", "v2", "a", picks("a", "a")) for _ in range(12)])
    assert rows[0]["win_rate"] == 0 and reading(rows[0]).endswith(": v1 is better")
    rows = arena_results([arena_task("v1", "v2", "b", picks("b", "b")) for _ in range(12)])
    assert reading(rows[0]) == "v2 preferred in 100% [76, 100] of 12 verdicts against v1: v2 is better"
    assert reading({"a": "v1", "b": "v2", "n": 0}) == "v2 against v1: no verdicts yet"


def test_arena_labels_are_ordinary_training_pairs():
    tasks = [arena_task("v1", "v2", left, picks(left, "b")) for left in "ab"]
    pairs = pairs_from_tasks(tasks, DEFAULT_FIELDS)
    expected = [("answer of v2", "answer of v1", "b")] * 2
    assert [(p.chosen, p.rejected, p.meta["chosen_source"]) for p in pairs] == expected


def test_report_section_shows_the_win_rate_and_is_absent_without_arena_tasks():
    html = build_report(hand_checked_export(), DEFAULT_FIELDS, n_boot=50)
    sids = re.findall(r'<section id="([^"]+)">', html)
    assert sids[:2] == ["summary", ARENA_SECTION[0]] and sids[2:] == [sid for sid, _ in PAIRWISE_SECTIONS[1:]]
    section = re.search(r'<section id="arena">(.*?)</section>', html, re.S).group(1)
    lo, hi = wilson(10, 13)
    assert f"<td>v1</td><td>v2</td><td>13</td><td>9</td><td>2</td><td>2</td><td>76.9% " in section
    assert f"[{lo:.1%}, {hi:.1%}]" in section and "<td>1</td><td>13 / 15</td>" in section
    assert "v2 preferred in 77%" in section and "base</td><td>v1</td><td>2</td>" in section
    assert "<img" in section  # the interval plot

    plain = build_report(synthetic_export(n_tasks=6), DEFAULT_FIELDS, n_boot=50)
    assert 'id="arena"' not in plain


def test_report_section_from_a_json_min_export_and_with_renamed_fields():
    fields = TaskFields(pairwise="cmp", prompt="q", left="x", right="y")
    rows = []
    for n, left in enumerate("abab"):
        task = arena_task("v3", "v4", left)
        data = {"q": task["data"]["prompt"], "x": task["data"]["answer1"], "y": task["data"]["answer2"],
                GENERATION_KEY: task["data"][GENERATION_KEY]}
        # JSON_MIN rows: the control's value under its name; the generation record as Label Studio exports it.
        rows.append({"id": n, "annotator": 1, "annotation_id": n, **data,
                     "cmp": [{"selected": "left" if left == "b" else "right"}]})
    tasks = tasks_from_rows(rows, fields)
    html = build_report(tasks, fields, n_boot=50, export_format="JSON_MIN")
    section = re.search(r'<section id="arena">(.*?)</section>', html, re.S).group(1)
    assert "<td>v3</td><td>v4</td><td>4</td><td>4</td><td>0</td><td>0</td><td>100.0% " in section
    assert "<td>–</td><td>4 / 4</td>" in section  # JSON_MIN says nothing of skips


def test_arena_tasks_record_the_versions_and_random_sides():
    results = [Candidates(prompt=f"p{i}", answers=(f"a{i}", f"b{i}")) for i in range(30)]
    results.append(Candidates(prompt="", answers=None, error="the prompt is empty"))
    fields = TaskFields(pairwise="cmp", prompt="q", left="x", right="y")
    tasks = arena_tasks(results, {"model": "A", "model_b": "B"}, "v1", "v2", random.Random(0), fields)
    assert len(tasks) == 30
    assert {t["data"][GENERATION_KEY]["left"] for t in tasks} == {"a", "b"}
    for i, task in enumerate(tasks):
        data = task["data"]
        record = data[GENERATION_KEY]
        assert record["arena"] == {"a": "v1", "b": "v2"} and record["generator"] == {"model": "A", "model_b": "B"}
        assert data["q"] == f"p{i}" and data["x" if record["left"] == "a" else "y"] == f"a{i}"


def parser():
    p = argparse.ArgumentParser(prog="rlhf-backend")
    register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture
def store(tmp_path):
    from model.store import GENERATOR, VersionStore

    versions = VersionStore(tmp_path / "models", GENERATOR)
    with versions.new_version(3) as pending:
        (pending.path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return tmp_path


@pytest.mark.parametrize("argv, prompts, message", [
    (["--a", "v1", "--b", "v7"], "Hi\n", "project 3 has no generator version 'v7' under {models}/3/generator; it has "
                                          "v1, or use base"),
    (["--a", "v1", "--b", "v1"], "Hi\n", "--a and --b are both v1: compare two different versions"),
    (["--a", "base", "--b", "v1"], "\n \n", "{prompts} holds no prompt"),
    (["--a", "base", "--b", "v1"], '["Hi", {"prompt": " "}]', "{prompts}: item 2: the prompt is empty"),
])
def test_bad_input_stops_before_label_studio_is_called(store, argv, prompts, message):
    path = store / "prompts.txt"
    path.write_text(prompts)
    # An address nothing answers on: any call to Label Studio would fail with another message.
    settings = load_settings({"MODEL_DIR": str(store / "models"), "LABEL_STUDIO_URL": "http://127.0.0.1:9",
                              "LABEL_STUDIO_API_KEY": "x"})
    args = parser().parse_args(["arena", str(path), "--project", "3", *argv])
    with pytest.raises(ConfigError) as error:
        args.handler(args, settings)
    assert str(error.value) == message.format(models=store / "models", prompts=path)


def test_a_project_without_versions_says_so(tmp_path):
    settings = load_settings({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://127.0.0.1:9",
                              "LABEL_STUDIO_API_KEY": "x"})
    args = parser().parse_args(["arena", "p.txt", "--project", "5", "--a", "base", "--b", "v2"])
    with pytest.raises(ConfigError, match="has no generator version 'v2' .*; it has none yet"):
        args.handler(args, settings)


def test_help_is_there(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["arena", "--help"])
    out = capsys.readouterr().out
    assert "--project N" in out and "Wilson" in out


def test_the_report_job_page_has_the_section(make_settings):
    from backend.report import write_report

    settings = make_settings()
    path = write_report(settings, 7, hand_checked_export(), DEFAULT_FIELDS, learning_curve=False)
    assert "v2 preferred in 77%" in re.search(r'<section id="arena">(.*?)</section>', path.read_text(), re.S).group(1)
