"""`rlhf-backend generate` end to end on the tiny model, and the pure parts of `import`."""

from __future__ import annotations

import argparse
import json

import pytest
from tiny_models import tiny_causal_lm

from backend.cli_generation import build_tasks, dataset_items, read_records, register
from backend.config import ConfigError, load_settings
from model.generation.types import Candidates
from model.pairs import GENERATION_KEY, TaskFields


def parser():
    p = argparse.ArgumentParser(prog="rlhf-backend")
    register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("text", [
    '["What is 2+2?", {"prompt": "Name a colour.", "id": 7}]',
    '"What is 2+2?"\n\n{"prompt": "Name a colour.", "id": 7}\n',
])
def test_read_records_json_and_jsonl(tmp_path, text):
    path = tmp_path / "prompts"
    path.write_text(text)
    assert read_records(path) == ["What is 2+2?", {"prompt": "Name a colour.", "id": 7}]


def test_read_records_plain_text_one_prompt_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('What is 2+2?\n\n  Say "hi" {politely}  \n[not json\n')
    assert read_records(path) == ["What is 2+2?", 'Say "hi" {politely}', "[not json"]


def test_dataset_items_randomise_order_and_keep_the_mapping():
    import random

    results = [Candidates(prompt=f"p{i}", answers=(f"a{i}", f"b{i}"), truncated=i == 0) for i in range(40)]
    results.append(Candidates(prompt="", answers=None, error="the prompt is empty"))
    items = dataset_items(results, {"model": "m"}, random.Random(0), [{"id": i} for i in range(41)])
    assert len(items) == 40  # the failed prompt is left out
    lefts = [item[GENERATION_KEY]["left"] for item in items]
    assert set(lefts) == {"a", "b"}  # both orders occur
    for i, item in enumerate(items):
        meta = item[GENERATION_KEY]
        assert item["prompt"] == f"p{i}" and item["id"] == i and meta["generator"] == {"model": "m"}
        a, b = (item["answer1"], item["answer2"]) if meta["left"] == "a" else (item["answer2"], item["answer1"])
        assert (a, b) == (f"a{i}", f"b{i}") and meta["truncated"] == (i == 0)


def test_generate_command_writes_the_dataset(tmp_path, capsys):
    model = tiny_causal_lm(tmp_path / "tiny")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is the capital of France?", "source": "faq"}\n"Write a poem."\n""\n')
    out = tmp_path / "dataset.json"
    args = parser().parse_args(["generate", str(prompts), "-o", str(out), "--model", str(model),
                                "--max-new-tokens", "8", "--seed", "3", "--batch-size", "2"])
    settings = load_settings({"MODEL_DIR": str(tmp_path / "models"), "TORCH_DTYPE": "float32"})
    assert args.handler(args, settings) == 1  # the empty prompt failed; the others are written
    items = json.loads(out.read_text())
    assert [i["prompt"] for i in items] == ["What is the capital of France?", "Write a poem."]
    assert items[0]["source"] == "faq"
    for item in items:
        assert item["answer1"] and item["answer2"] and item["answer1"] != item["answer2"]
        meta = item[GENERATION_KEY]
        assert meta["left"] in ("a", "b") and meta["truncated"] is False
        assert meta["generator"]["model"] == str(model) and meta["generator"]["seed"] == 3
        assert meta["generator"]["max_new_tokens"] == 8
    err = capsys.readouterr().err
    assert "prompt 3: the prompt is empty" in err and "wrote 2 items" in err

    again = tmp_path / "again.json"  # same seed: same answers in the same order
    args.output = str(again)
    args.handler(args, settings)
    assert json.loads(again.read_text()) == items


def test_generate_with_a_reward_model_says_what_was_expected_in_one_line(tmp_path, capsys, monkeypatch):
    from backend.cli import main

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("backend.cli.setup_logging", lambda *args: None)  # leave pytest's logging alone
    version = tmp_path / "models" / "4" / "v1"
    version.mkdir(parents=True)
    (version / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a poem.\n")
    assert main(["generate", str(prompts), "-o", str(tmp_path / "out.json"), "--model", str(version)]) == 2
    err = capsys.readouterr().err
    assert err == (f"rlhf-backend: generate --model: {version} holds a reward model (BertForSequenceClassification), "
                   "not a generator: expected smollm2, a Hugging Face id, a .gguf file or a folder holding a causal "
                   "LM (a save_pretrained folder, or a generator version such as MODEL_DIR/4/generator/v2)\n")
    assert not (tmp_path / "out.json").exists()


def test_build_tasks_fills_missing_answers_and_renames_to_the_project_fields():
    fields = TaskFields(pairwise="cmp", prompt="question", left="left", right="right")
    records = ["Name a colour.",
               {"prompt": "What is 2+2?", "answer1": "4", "answer2": "5", GENERATION_KEY: {"left": "a"}},
               {"data": {"question": "Why?", "left": "Because."}}]
    assert build_tasks(records, fields) == [
        {"data": {"question": "Name a colour.", "left": "", "right": ""}},
        {"data": {"question": "What is 2+2?", "left": "4", "right": "5", GENERATION_KEY: {"left": "a"}}},
        {"data": {"question": "Why?", "left": "Because.", "right": ""}},
    ]
    assert build_tasks(["hi"]) == [{"data": {"prompt": "hi", "answer1": "", "answer2": ""}}]
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bread?"}]
    assert build_tasks([{"prompt": chat}]) == [{"data": {"prompt": chat, "answer1": "", "answer2": ""}}]


def test_build_tasks_turns_text_prompts_into_messages_for_a_project_that_shows_a_dialogue():
    fields = TaskFields(pairwise="comparison", prompt="prompt", left="answer1", right="answer2", dialogue_prompt=True)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bread?"}]
    tasks = build_tasks(["Name a colour.", "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bread?\n\nAssistant:",
                         {"prompt": chat}], fields)
    assert [t["data"]["prompt"] for t in tasks] == [[{"role": "user", "content": "Name a colour."}], chat, chat]


@pytest.mark.parametrize("record", [{"answer1": "x"}, {"prompt": "  "}, 42, {"prompt": [{"role": "user"}]},
                                    {"prompt": [{"role": "user", "content": ""}]}])
def test_build_tasks_rejects_records_without_a_prompt(record):
    with pytest.raises(ConfigError, match="item 2"):
        build_tasks(["fine", record])


def test_import_needs_label_studio_settings(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    args = parser().parse_args(["import", str(path), "--project", "3"])
    with pytest.raises(ConfigError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        args.handler(args, load_settings({"LABEL_STUDIO_URL": "http://localhost:8080"}))


def test_help_texts(capsys):
    for command in ("generate", "import"):
        with pytest.raises(SystemExit):
            parser().parse_args([command, "--help"])
        assert "usage:" in capsys.readouterr().out
