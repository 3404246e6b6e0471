"""model/folders.py: which folder a --model path names, and one line when it names none of what is expected."""

import json

import pytest

from model.folders import NotAModel, generator_problem, reward_model_folder
from model.store import VersionStore


def fake_model(folder, architecture):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": "x"}))
    return folder


def reward_store(root, project="cli", versions=2, current="v2"):
    store = VersionStore(root)
    for _ in range(versions):
        with store.new_version(project) as pending:
            fake_model(pending.path, "BertForSequenceClassification")
    if current:
        store.activate(project, current)
    return store


def test_a_store_root_a_project_folder_and_a_version_folder_name_the_same_reward_model(tmp_path):
    reward_store(tmp_path / "out")  # what `train --out out` writes: out/cli/v1, v2, current -> v2
    version = tmp_path / "out" / "cli" / "v2"
    for given in (tmp_path / "out", tmp_path / "out" / "cli", version):
        assert reward_model_folder(given) == version
    plain = fake_model(tmp_path / "hf", "DebertaV2ForSequenceClassification")
    assert reward_model_folder(str(plain)) == plain


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist: expected a reward-model version folder"),
    ("file", "is a file: expected a reward-model version folder"),
    ("empty", "holds no model (no config.json, no versions): expected a reward-model version folder"),
    ("causal", "holds a LlamaForCausalLM, not a reward model: expected"),
    ("no current", "has no current version (v1, v2): pass a version folder, e.g. "),
    ("two projects", "is a version store with several projects (4, cli): pass one of them, e.g. "),
])
def test_anything_else_is_one_line_saying_what_was_expected(tmp_path, case, expected):
    path = tmp_path / "given"
    if case == "file":
        path.write_text("x")
    elif case == "empty":
        path.mkdir()
    elif case == "causal":
        fake_model(path, "LlamaForCausalLM")
    elif case == "no current":
        reward_store(path.parent, project=path.name, current=None)
    elif case == "two projects":
        reward_store(path, "cli")
        reward_store(path, "4", versions=1, current="v1")
    with pytest.raises(NotAModel) as exc:
        reward_model_folder(path)
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_a_generator_is_a_folder_holding_a_causal_lm(tmp_path):
    assert generator_problem(str(fake_model(tmp_path / "plain", "LlamaForCausalLM"))) is None
    assert generator_problem(str(fake_model(tmp_path / "4" / "generator" / "v1", "LlamaForCausalLM"))) is None
    for name in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "/nowhere/model.gguf"):
        assert generator_problem(name) is None  # left to the generator, which says what is wrong with them
    reward_store(tmp_path / "store")
    problems = {
        "reward version": (tmp_path / "store" / "cli" / "v2", "holds a reward model (BertForSequenceClassification), "
                                                              "not a generator: expected smollm2, a Hugging Face id"),
        "reward store": (tmp_path / "store", "is a reward-model version store, not a generator"),
        "folder of versions": (tmp_path / "store" / "cli", "is a folder of versions, not a model: pass a version "
                                                           "folder, e.g. "),
        "encoder": (fake_model(tmp_path / "enc", "BertModel"), "holds no causal LM (BertModel)"),
        "empty": (tmp_path / "store" / "nothing", "holds no model (no config.json)"),
        "missing": (tmp_path / "gone", "does not exist: expected smollm2"),
    }
    (tmp_path / "store" / "nothing").mkdir()
    for case, (path, expected) in problems.items():
        problem = generator_problem(str(path))
        assert problem and expected in problem and "\n" not in problem, (case, problem)
