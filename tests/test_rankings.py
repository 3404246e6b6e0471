"""Ranker projects: Label Studio 1.23.2's own exports and API tasks (tests/fixtures/ls-1.23.2-ranker-*, made
as tests/fixtures/ls-1.23.2-ranker.md describes) -> rankings -> weighted pairs and the rankings JSONL."""

from __future__ import annotations

import json
import logging
import random
from math import comb

import pytest
from label_studio_sdk.label_interface import LabelInterface

from conftest import FIXTURES, ROOT
from model.pairs import DEFAULT_RANKER_FIELDS, GENERATION_KEY, RankerFields, write_trl_jsonl
from model.rankings import (answer_texts, candidate_labels, displayed_ids, pairs_from_ranking, pairs_from_rankings,
                            rankings_from_tasks, shuffled_answers, write_rankings_jsonl)

BUCKETS = RankerFields("rank", "answers", "items", "prompt", buckets=("relevant_results", "biased_results"))


def load(name):
    return json.loads((FIXTURES / f"ls-1.23.2-ranker-{name}.json").read_text())


def by_prompt(rankings):
    return {r.prompt: r for r in rankings}


@pytest.fixture(scope="module")
def api_rankings():
    return by_prompt(rankings_from_tasks(load("tasks-API")))


@pytest.fixture(scope="module")
def export_rankings():
    return by_prompt(rankings_from_tasks(load("export-JSON")))


def test_every_submitted_annotation_becomes_a_ranking(api_rankings, export_rankings):
    # Ten annotations in the fixture: one skipped; nine give an order of at least two answers.
    assert len(api_rankings) == len(export_rankings) == 9
    assert "Summarise: the cat sat on the mat." not in api_rankings  # skipped


def test_an_order_read_from_the_data_and_its_generation_mapping(api_rankings):
    r = api_rankings["Say hello."]
    assert r.groups == (("answer3",), ("answer1",), ("answer4",), ("answer2",)) and r.full
    assert r.order == ("answer3", "answer1", "answer4", "answer2")
    assert r.answers["answer3"] == "Say hello. -> candidate d"  # the task's order is b, a, d, c
    assert r.meta["candidates"] == {"answer1": "b", "answer2": "a", "answer3": "d", "answer4": "c"}
    assert r.meta["displayed_order"] == ["answer1", "answer2", "answer3", "answer4"]
    assert r.meta["displayed_from"] == "data" and r.meta["unchanged_order"] is False
    assert r.meta["lead_time"] == 9.0 and r.meta["problems"] == []


def test_an_order_submitted_as_displayed_is_flagged(api_rankings):
    assert api_rankings["What is 2+2?"].meta["unchanged_order"] is True


def test_an_annotation_started_from_a_prediction_was_shown_the_models_order(api_rankings, export_rankings):
    """Label Studio pre-fills the annotation from the task's prediction (parent_prediction): the annotator
    starts from the model's order (reversed data order here), not the task's."""
    moved, kept = api_rankings["Name a fruit."], api_rankings["How do I boil an egg?"]
    assert moved.meta["displayed_from"] == "prediction"
    assert moved.meta["displayed_order"] == ["answer4", "answer3", "answer2", "answer1"]
    assert moved.meta["unchanged_order"] is False and kept.meta["unchanged_order"] is True
    # The JSON export lists predictions by id only: what was shown is unknown there.
    assert export_rankings["How do I boil an egg?"].meta["displayed_order"] is None
    assert export_rankings["How do I boil an egg?"].meta["unchanged_order"] is None
    assert export_rankings["How do I boil an egg?"].groups == kept.groups


def test_a_full_order_gives_all_pairs_weighted_one_over_c_k_2(api_rankings):
    r = api_rankings["Say hello."]
    pairs = pairs_from_ranking(r)
    assert len(pairs) == comb(4, 2) == 6
    assert [(p.meta["chosen_id"], p.meta["rejected_id"]) for p in pairs] == [
        ("answer3", "answer1"), ("answer3", "answer4"), ("answer3", "answer2"),
        ("answer1", "answer4"), ("answer1", "answer2"), ("answer4", "answer2")]
    assert all(p.weight == pytest.approx(1 / 6) for p in pairs)
    first = pairs[0]
    assert (first.prompt, first.chosen, first.rejected) == ("Say hello.", r.answers["answer3"], r.answers["answer1"])
    assert (first.meta["chosen_source"], first.meta["rejected_source"]) == ("d", "b")
    assert first.meta["task_id"] == r.meta["task_id"] and first.meta["ranking"] is True


def test_each_ranking_weighs_one_in_total(api_rankings):
    pairs = pairs_from_rankings(api_rankings.values())
    totals = {}
    for p in pairs:
        totals[p.meta["annotation_id"]] = totals.get(p.meta["annotation_id"], 0) + p.weight
    assert len(totals) == 9 and all(t == pytest.approx(1.0) for t in totals.values())
    assert len(pairs) == 6 * 6 + 1 + 3 + 3  # six full orders of 4, a partial of 2, one of 3, one of 3 (3 ids)


@pytest.mark.parametrize("prompt, groups, problem", [
    ("Describe the sea.", (("answer2",), ("answer1",)), "missing from the order"),
    ("Write a haiku.", (("answer4",), ("answer1",), ("answer2",), ("answer3",)), "'answer9'"),
    ("Write a haiku.", None, "repeated ids ['answer4']"),
    ("Pick a colour.", (("answer2",), ("answer1",), ("answer3",), ("answer4",)), "old array form"),
    ("Recommend a book.", (("answer4",), ("answer2",), ("answer1",)), "no text"),
])
def test_bad_results_are_used_for_what_they_say(api_rankings, prompt, groups, problem, caplog):
    r = api_rankings[prompt]
    if groups is not None:
        assert r.groups == groups
    assert any(problem in p for p in r.meta["problems"])
    with caplog.at_level(logging.WARNING, logger="model.rankings"):
        rankings_from_tasks(load("tasks-API"))
    assert any(problem in m and "task" in m for m in caplog.messages)


def test_whole_number_ids_are_read_as_the_editor_reads_them(api_rankings):
    r = api_rankings["Whole-number ids"]
    assert r.order == ("2", "x", "10") and r.answers == {"2": "two", "x": "ex", "10": "ten"}
    # The task lists 10, 2, x; the editor shows whole numbers first, ascending.
    assert r.meta["displayed_order"] == ["2", "10", "x"] and r.meta["candidates"] == {}


def test_buckets_give_pairs_between_groups_only(caplog):
    with caplog.at_level(logging.WARNING, logger="model.rankings"):
        [r] = rankings_from_tasks(load("buckets-export-JSON"), BUCKETS)
    assert r.groups == (("answer3", "answer1"), ("answer4",)) and not r.full
    pairs = pairs_from_ranking(r)
    assert [(p.meta["chosen_id"], p.meta["rejected_id"]) for p in pairs] == [("answer3", "answer4"),
                                                                             ("answer1", "answer4")]
    assert all(p.weight == 0.5 for p in pairs)  # answer2, left unsorted ("_"), is in no pair
    assert r.meta["unchanged_order"] is False and r.meta["problems"] == []
    # The other task was submitted without moving anything: every answer still in "_", no ranking.
    assert any("no ranking used (fewer than two buckets hold answers)" in m for m in caplog.messages)


def synthetic_task(result, answers=None, **extra):
    answers = [{"id": f"answer{i}", "title": "", "body": f"text {i}"} for i in (1, 2, 3)] if answers is None \
        else answers
    return {"id": 1, "data": {"prompt": "p", "answers": answers},
            "annotations": [{"id": 5, "completed_by": 1, "result": result, **extra}]}


def ranker(value, **item):
    return [{"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": value}, **item}]


@pytest.mark.parametrize("task", [
    synthetic_task(None), synthetic_task("junk"), synthetic_task([1, None, "x"]), synthetic_task([{}]),
    synthetic_task(ranker(None)), synthetic_task(ranker({"rank": None})), synthetic_task(ranker({"rank": "answer1"})),
    synthetic_task(ranker({"other": ["answer1", "answer2"]})), synthetic_task(ranker({"rank": [None, {}, True]})),
    synthetic_task(ranker({"rank": ["answer1", "answer1"]})), synthetic_task(ranker({"rank": ["answer1"]})),
    synthetic_task(ranker({"rank": ["answer1", "answer2"]}), answers="not a list"),
    synthetic_task(ranker({"rank": ["answer1", "answer2"]}), answers=[{"id": None}, "x", {"id": [1]}]),
    synthetic_task(ranker({"rank": ["answer1", "answer2"]}), was_cancelled=True),
    {"id": 2}, {"data": None, "annotations": [None, 3]}, "not a task",
])
def test_junk_gives_no_ranking_and_no_exception(task):
    assert rankings_from_tasks([task]) == []


def test_int_ids_in_a_result_mean_the_answers_with_those_ids():
    answers = [{"id": 1, "body": "one"}, {"id": 2, "body": "two"}]
    [r] = rankings_from_tasks([synthetic_task(ranker({"rank": [2, 1]}), answers=answers)])
    assert r.order == ("2", "1")


def test_several_annotators_give_one_ranking_each():
    task = synthetic_task(ranker({"rank": ["answer3", "answer1", "answer2"]}))
    task["annotations"].append({"id": 6, "completed_by": {"id": 2, "email": "b@x"},
                                "result": ranker({"rank": ["answer1", "answer2", "answer3"]})})
    rankings = rankings_from_tasks([task])
    assert [r.meta["annotator"] for r in rankings] == [1, 2]
    assert [r.meta["unchanged_order"] for r in rankings] == [False, True]


def test_answers_with_the_same_text_make_no_pair():
    answers = [{"id": "a", "body": "same"}, {"id": "b", "body": "same"}, {"id": "c", "body": "other"}]
    [r] = rankings_from_tasks([synthetic_task(ranker({"rank": ["a", "c", "b"]}), answers=answers)])
    pairs = pairs_from_ranking(r)
    assert [(p.meta["chosen_id"], p.meta["rejected_id"]) for p in pairs] == [("a", "c"), ("c", "b")]
    assert all(p.weight == 0.5 for p in pairs)


def test_shuffled_answers_record_which_candidate_is_in_which_slot():
    answers = ["first", "second", "third", "fourth"]
    items, mapping = shuffled_answers(answers, random.Random(3))
    assert [item["id"] for item in items] == ["answer1", "answer2", "answer3", "answer4"]
    assert [item["title"] for item in items] == ["Answer 1", "Answer 2", "Answer 3", "Answer 4"]
    assert sorted(mapping["order"]) == ["a", "b", "c", "d"] and mapping["order"] != ["a", "b", "c", "d"]
    for item, label in zip(items, mapping["order"]):
        assert item["body"] == answers["abcd".index(label)]
    data = {"prompt": "p", "answers": items, GENERATION_KEY: {**mapping, "generator": {}}}
    assert candidate_labels(data) == {item["id"]: label for item, label in zip(items, mapping["order"])}
    assert displayed_ids(items) == [item["id"] for item in items]  # text ids: shown in data order
    orders = {tuple(shuffled_answers(answers, random.Random(seed))[1]["order"]) for seed in range(200)}
    assert len(orders) == 24  # every permutation of four turns up


def test_displayed_ids_follow_javascript_object_key_order():
    items = [{"id": 10, "body": "a"}, {"id": "x", "body": "b"}, {"id": "2", "body": "c"}, {"id": "01", "body": "d"},
             {"id": 4294967295, "body": "e"}, {"id": "x", "body": "f"}]
    # Array indices (canonical whole numbers below 2**32 - 1) first, ascending; then the rest in insertion order.
    assert displayed_ids(items) == ["2", "10", "x", "01", "4294967295"]
    assert answer_texts(items)["x"] == "f"  # a repeated id keeps its first place and the last text


def test_rankings_jsonl_lists_the_answers_best_first(api_rankings, tmp_path):
    path = tmp_path / "rankings.jsonl"
    rankings = [api_rankings["Say hello."], api_rankings["How do I boil an egg?"]]
    assert write_rankings_jsonl(rankings, path) == 2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["prompt"] == "Say hello."
    assert rows[0]["answers"] == [f"Say hello. -> candidate {c}" for c in "dbca"]
    assert rows[0]["sources"] == ["d", "b", "c", "a"] and rows[0]["groups"] == [[a] for a in rows[0]["answers"]]
    assert [row["unchanged_order"] for row in rows] == [False, True]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 2 and ds[0]["answers"] == rows[0]["answers"]


def test_ranking_pairs_export_as_trl_pairs(api_rankings, tmp_path):
    path = tmp_path / "pairs.jsonl"
    assert write_trl_jsonl(pairs_from_ranking(api_rankings["Say hello."]), path) == 6
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"prompt": "Say hello.", "chosen": "Say hello. -> candidate d",
                     "rejected": "Say hello. -> candidate b", "both_bad": False}


def test_label_studio_kept_exactly_the_predictions_the_sdk_validates():
    """import/predictions drops invalid predictions silently; each recorded outcome (created 1 or 0) must
    match the SDK's validate_prediction, which the backend can run before sending."""
    configs = {None: (ROOT / "label_config_ranker.xml").read_text(),
               "llm-ranker": (FIXTURES / "ls-1.23.2-llm-ranker.xml").read_text()}
    outcomes = load("predictions")
    assert {o["created"] for o in outcomes} == {0, 1}
    for o in outcomes:
        valid = LabelInterface(configs[o.get("config")]).validate_prediction({"result": o["result"], "score": o["score"]})
        assert valid == bool(o["created"]), o["case"]


def test_default_ranker_fields_match_the_template():
    from backend.labels import parse_label_config

    assert parse_label_config((ROOT / "label_config_ranker.xml").read_text()) == DEFAULT_RANKER_FIELDS
