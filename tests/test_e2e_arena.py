"""`rlhf-backend arena` against a real Label Studio 1.23.2 with two tiny generator versions: tasks imported in
the project's own template with the version mapping, annotations submitted through the API (picks, a tie, a
skip), the report's human win rate counts them, and the export turns them into ordinary preference pairs; a
Ranker project is refused with nothing imported."""

from __future__ import annotations

import json
import re

import pytest
from label_studio_sdk import LabelStudio
from tiny_models import tiny_causal_lm

from backend.cli import build_parser
from backend.config import ConfigError
from conftest import ROOT
from harness import LS_TOKEN
from model.pairs import GENERATION_KEY
from model.store import GENERATOR, VersionStore
from synthetic_export import annotation_result

pytestmark = pytest.mark.e2e

PROMPTS = ["What is the capital of France?", "Write a poem about the sea.", "Name a colour.",
           "How do I add two numbers?", "Say something polite.", "Describe the wind."]


def run(settings, *argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return args.handler(args, settings)


def test_arena_tasks_labels_report_and_export(label_studio, make_settings, tmp_path, capsys):
    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="arena", label_config=(ROOT / "label_config_ties.xml").read_text())
    settings = make_settings(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, TORCH_DTYPE="float32")
    store = VersionStore(settings.model_dir, GENERATOR)
    for seed in (1, 2):
        with store.new_version(project.id) as pending:
            tiny_causal_lm(pending.path, seed=seed)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    assert run(settings, "arena", str(prompts), "--project", str(project.id), "--a", "v1", "--b", "v2",
               "--max-new-tokens", "8", "--seed", "4") == 0
    assert f"imported 6 arena tasks (v1 against v2) into project {project.id}" in capsys.readouterr().err

    tasks = sorted(ls.tasks.list(project=project.id), key=lambda t: t.id)
    assert sorted(t.data["prompt"] for t in tasks) == sorted(PROMPTS)
    answers = {}  # task id -> {"a": text, "b": text}
    for task in tasks:
        record = task.data[GENERATION_KEY]
        assert record["arena"] == {"a": "v1", "b": "v2"} and {record["left"], record["right"]} == {"a", "b"}
        assert record["generator"]["model"] == str(store.path(project.id, "v1"))
        assert record["generator"]["model_b"] == str(store.path(project.id, "v2"))
        left, right = task.data["answer1"], task.data["answer2"]
        assert left.strip() and right.strip() and left != right
        answers[task.id] = {record["left"]: left, record["right"]: right}

    # Four picks of v2's answer, one of v1's, one tie, one skip (on the tie's task, by a second call).
    def side_of(task, who):
        return "left" if task.data[GENERATION_KEY]["left"] == who else "right"

    labels = [side_of(t, "b") for t in tasks[:4]] + [side_of(tasks[4], "a")]
    for task, side in zip(tasks, labels):
        ls.annotations.create(id=task.id, result=annotation_result(side), lead_time=2.0)
    ls.annotations.create(id=tasks[5].id, result=annotation_result(None, "tie"), lead_time=2.0)
    ls.annotations.create(id=tasks[5].id, result=[], was_cancelled=True)

    out = tmp_path / "report.html"
    assert run(settings, "report", "--project", str(project.id), "-o", str(out), "--no-learning-curve") == 0
    section = re.search(r'<section id="arena">(.*?)</section>', out.read_text(), re.S).group(1)
    # 4 wins, 1 loss, 1 tie: (4 + 0.5) / 6 = 75%; Wilson 95% interval of 4.5 of 6: [36.5%, 94.0%].
    assert "<td>v1</td><td>v2</td><td>6</td><td>4</td><td>1</td><td>1</td><td>75.0% " in section
    assert "[36.5%, 94.0%]" in section and "<td>1</td><td>6 / 6</td>" in section
    assert "v2 preferred in 75% [36, 94] of 6 verdicts against v1: no clear difference yet" in section

    pairs_file = tmp_path / "pairs.jsonl"
    assert run(settings, "export", "--project", str(project.id), "-o", str(pairs_file)) == 0
    pairs = sorted((json.loads(line) for line in pairs_file.read_text().splitlines()), key=lambda p: p["prompt"])
    expected = sorted([{"prompt": t.data["prompt"], "chosen": answers[t.id]["b"], "rejected": answers[t.id]["a"],
                        "both_bad": False} for t in tasks[:4]]
                      + [{"prompt": tasks[4].data["prompt"], "chosen": answers[tasks[4].id]["a"],
                          "rejected": answers[tasks[4].id]["b"], "both_bad": False}], key=lambda p: p["prompt"])
    assert pairs == expected  # the tie and the skip are no pairs


def test_arena_refuses_a_ranker_project_and_imports_nothing(label_studio, make_settings, tmp_path):
    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="arena ranker", label_config=(ROOT / "label_config_ranker.xml").read_text())
    settings = make_settings(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, TORCH_DTYPE="float32")
    with VersionStore(settings.model_dir, GENERATOR).new_version(project.id) as pending:
        tiny_causal_lm(pending.path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\n")
    with pytest.raises(ConfigError, match=f"project {project.id} ranks answers .*arena needs a Pairwise project"):
        run(settings, "arena", str(prompts), "--project", str(project.id), "--a", "base", "--b", "v1")
    assert list(ls.tasks.list(project=project.id)) == []
