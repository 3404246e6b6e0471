"""Pairs from the real Label Studio 1.23.2 exports and from TRL / hh-rlhf files."""

import json
from pathlib import Path

import pytest

from model.pairs import (DEFAULT_FIELDS, GENERATION_KEY, PreferencePair, TaskFields, pairs_from_json_min,
                         pairs_from_tasks, read_pairs, split_hh, write_trl_jsonl)

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = [("What is 2+2?", "changed too", "changed", "right"),
            ("Name a colour.", "short 1", "a much longer answer number 1", "left")]


def summary(pairs):
    return [(p.prompt, p.chosen, p.rejected, p.meta["chosen_side"]) for p in pairs]


@pytest.mark.parametrize("name", ["JSON.json", "JSON_MIN.json", "CSV.csv"])
def test_captured_exports_give_the_annotated_pairs(name):
    pairs = read_pairs(FIXTURES / f"ls-1.23.2-export-{name}")
    assert summary(pairs) == EXPECTED
    assert str(pairs[0].meta["task_id"]) == "1" and str(pairs[0].meta["annotation_id"]) == "1"
    assert str(pairs[0].meta["annotator"]) == "1"


def task(result, data=None, cancelled=False, annotator=1, task_id=7):
    data = data or {"prompt": "P", "answer1": "L", "answer2": "R"}
    return {"id": task_id, "data": data,
            "annotations": [{"id": 1, "completed_by": annotator, "result": result, "was_cancelled": cancelled}]}


def ui_results():
    recorded = json.loads((FIXTURES / "ls-1.23.2-ml-requests.json").read_text())["ui_created_annotation_results"]
    return recorded


def test_to_name_answer1_form_and_editor_form_both_count():
    results = ui_results()
    for key in ("manual_click_on_answer2", "accepted_prediction_to_name_comparison",
                "accepted_prediction_to_name_answer1"):
        pairs = pairs_from_tasks([task(results[key])])
        assert summary(pairs) == [("P", "R", "L", "right")], key


def test_skipped_cancelled_and_empty_are_dropped():
    skipped = ui_results()["skipped_task"]
    good = [{"from_name": "comparison", "to_name": "comparison", "type": "pairwise", "value": {"selected": "left"}}]
    tasks = [
        {"id": 1, "data": {"prompt": "P", "answer1": "L", "answer2": "R"}, "annotations": [skipped]},
        task(good, cancelled=True),
        task([]),
        task([{"from_name": "other", "type": "choices", "value": {"choices": ["x"]}}]),
        task(good, data={"prompt": "P", "answer1": "  ", "answer2": "R"}),
        {"id": 9, "data": {"prompt": "P", "answer1": "L", "answer2": "R"}, "annotations": []},
    ]
    assert pairs_from_tasks(tasks) == []
    rows = [{"prompt": "P", "answer1": "L", "answer2": "R", "id": 1},  # skipped: no selection
            {"prompt": "P", "answer1": "", "answer2": "R", "id": 2, "comparison": [{"selected": "left"}]}]
    assert pairs_from_json_min(rows) == []


def test_every_annotator_is_kept():
    left = [{"from_name": "comparison", "type": "pairwise", "value": {"selected": "left"}}]
    right = [{"from_name": "comparison", "type": "pairwise", "value": {"selected": "right"}}]
    t = task(left)
    t["annotations"].append({"id": 2, "completed_by": {"id": 5, "email": "b@x"}, "result": right,
                             "was_cancelled": False})
    pairs = pairs_from_tasks([t])
    assert summary(pairs) == [("P", "L", "R", "left"), ("P", "R", "L", "right")]
    assert [p.meta["annotator"] for p in pairs] == [1, 5]


@pytest.mark.parametrize("mapping, side, source", [
    ({"left": "b", "right": "a"}, "left", "b"),
    ({"left": "b", "right": "a"}, "right", "a"),
    ({"left": "a"}, "right", "b"),
    (json.dumps({"left": "b"}), "left", "b"),  # as a CSV export carries it
])
def test_generation_mapping_gives_the_chosen_source(mapping, side, source):
    data = {"prompt": "P", "answer1": "L", "answer2": "R", GENERATION_KEY: mapping}
    result = [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise", "value": {"selected": side}}]
    (pair,) = pairs_from_tasks([task(result, data=data)])
    assert pair.meta["chosen_source"] == source


def test_renamed_fields_from_the_label_config():
    fields = TaskFields(pairwise="pick", prompt="question", left="a", right="b")
    data = {"question": "Q", "a": "A", "b": "B"}
    result = [{"from_name": "pick", "to_name": "pick", "type": "pairwise", "value": {"selected": "right"}}]
    assert summary(pairs_from_tasks([task(result, data=data)], fields)) == [("Q", "B", "A", "right")]
    rows = [{**data, "id": 3, "pick": [{"selected": "left"}]}]
    assert summary(pairs_from_json_min(rows, fields)) == [("Q", "A", "B", "left")]


def test_hh_prompt_is_the_shared_prefix_up_to_the_last_assistant_cue():
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    pair = split_hh(prompt + " Mix flour and water.", prompt + " Assistant: no.")
    assert pair == PreferencePair(prompt, "Mix flour and water.", "Assistant: no.")
    # Answers that share their first words must not pull those words into the prompt.
    pair = split_hh(prompt + " Sure, mix flour.", prompt + " Sure, buy some.")
    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, "Sure, mix flour.", "Sure, buy some.")


def test_hh_and_trl_jsonl_are_detected(tmp_path):
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: Q\n\nAssistant: good", "rejected": "\n\nHuman: Q\n\nAssistant: bad"})
                  + "\n")
    assert summary_plain(read_pairs(hh)) == [("\n\nHuman: Q\n\nAssistant:", "good", "bad")]


def summary_plain(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


def test_trl_jsonl_round_trip(tmp_path):
    pairs = [PreferencePair("P1", "c1", "r1", {"task_id": 1}), PreferencePair("P\n2 \"q\"", "c2 é", "r2")]
    path = tmp_path / "pairs.jsonl"
    assert write_trl_jsonl(pairs, path) == 2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "both_bad": False}
                    for p in pairs]
    assert read_pairs(path) == pairs


def test_trl_jsonl_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "pairs.jsonl"
    write_trl_jsonl(read_pairs(FIXTURES / "ls-1.23.2-export-JSON.json"), path)
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["prompt", "chosen", "rejected", "both_bad"] and ds[0]["chosen"] == "changed too"


def test_default_fields_match_the_ls_template():
    assert DEFAULT_FIELDS == TaskFields("comparison", "prompt", "answer1", "answer2")


def test_ties_are_dropped_and_both_bad_is_kept_as_a_flag(tmp_path):
    import json as _json

    from model.pairs import TaskFields, pairs_from_tasks, write_trl_jsonl

    fields = TaskFields("comparison", "prompt", "answer1", "answer2", judgement="judgement")
    side = lambda s: {"from_name": "comparison", "to_name": "comparison", "type": "pairwise",  # noqa: E731
                      "value": {"selected": s}}
    choice = lambda c: {"from_name": "judgement", "to_name": "prompt", "type": "choices",  # noqa: E731
                        "value": {"choices": [c]}}
    task = {"id": 1, "data": {"prompt": "p", "answer1": "A", "answer2": "B"}, "annotations": [
        {"id": 10, "completed_by": 1, "result": [side("left")]},
        {"id": 11, "completed_by": 2, "result": [side("right"), choice("tie")]},
        {"id": 12, "completed_by": 3, "result": [side("right"), choice("both bad")]},
        {"id": 13, "completed_by": 4, "result": [choice("both bad")]},  # no side: nothing to learn
    ]}
    pairs = pairs_from_tasks([task], fields)
    assert [(p.meta["annotation_id"], p.chosen, p.meta["both_bad"]) for p in pairs] == [(10, "A", False),
                                                                                         (12, "B", True)]
    out = tmp_path / "pairs.jsonl"
    write_trl_jsonl(pairs, out)
    rows = [_json.loads(line) for line in out.read_text().splitlines()]
    assert [r["both_bad"] for r in rows] == [False, True]


BREAD = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
BREAD_MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "How do I bake bread?"}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("row", [
    {"chosen": BREAD + " Mix flour.", "rejected": BREAD + " Buy some."},                      # hh-rlhf text
    {"prompt": BREAD, "chosen": "Mix flour.", "rejected": "Buy some."},                        # TRL text
    {"prompt": BREAD_MESSAGES, "chosen": assistant("Mix flour."), "rejected": assistant("Buy some.")},
    {"chosen": BREAD_MESSAGES + assistant("Mix flour."), "rejected": BREAD_MESSAGES + assistant("Buy some.")},
], ids=["hh-text", "trl-text", "trl-conversational", "trl-implicit-conversational"])
def test_every_form_of_one_conversation_reads_as_the_same_pair(tmp_path, row):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert summary_plain(read_pairs(path)) == [(BREAD, "Mix flour.", "Buy some.")]


def test_a_task_whose_prompt_is_chat_messages_gives_the_transcript_as_prompt():
    task = {"id": 1, "data": {"prompt": BREAD_MESSAGES, "answer1": "Mix flour.", "answer2": "Buy some."},
            "annotations": [{"id": 2, "result": [{"from_name": "comparison", "type": "pairwise",
                                                  "value": {"selected": "right"}}]}]}
    assert summary(pairs_from_tasks([task])) == [(BREAD, "Buy some.", "Mix flour.", "right")]


def test_a_csv_export_row_carries_a_chat_prompt_as_json():
    row = {"id": 1, "prompt": json.dumps(BREAD_MESSAGES), "answer1": "Mix flour.", "answer2": "Buy some.",
           "comparison": '[{"selected": "left"}]'}
    assert summary(pairs_from_json_min([row])) == [(BREAD, "Mix flour.", "Buy some.", "left")]
    row["prompt"] = "[{not json}] is a fine prompt"
    assert pairs_from_json_min([row])[0].prompt == "[{not json}] is a fine prompt"


def test_the_conversational_export_reads_back_and_trl_renders_it_with_a_chat_template(tmp_path):
    from tiny_models import build_tokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    pairs = [PreferencePair(BREAD, "Mix flour.", "Buy some."), PreferencePair("Name a colour.", "Red.", "No.")]
    path = tmp_path / "pairs.jsonl"
    assert write_trl_jsonl(pairs, path, conversational=True) == 2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"prompt": BREAD_MESSAGES, "chosen": assistant("Mix flour."),
                       "rejected": assistant("Buy some."), "both_bad": False}
    assert rows[1]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert read_pairs(path) == pairs  # a multi-turn transcript and a lone question both come back as they were
    example = {k: rows[0][k] for k in ("prompt", "chosen", "rejected")}
    assert is_conversational(example)
    rendered = apply_chat_template(example, build_tokenizer())
    assert rendered["prompt"].endswith("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n")
    assert rendered["chosen"].startswith("Mix flour.") and rendered["rejected"].startswith("Buy some.")
