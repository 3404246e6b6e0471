"""The RL step's side: TRL 1.16's RewardTrainer trains on the `export` JSONL as written, starting from a
version folder this project saved (mean-pooling layer included), and its GRPOTrainer trains a policy on a
saved version through `trl_reward_function`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_cli_reward import FIXTURES, run, synthetic
from tiny_models import tiny_causal_lm, tiny_encoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model.pairs import read_pairs, write_trl_jsonl
from model.reward.config import TrainConfig
from model.reward.model import RewardModel, trl_reward_function
from model.reward.train import train_reward_model


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    work = tmp_path_factory.mktemp("rl")
    folder = work / "v1"
    folder.mkdir()
    train_reward_model(synthetic(40), TrainConfig(base_model=str(tiny_encoder(work / "enc")), epochs=2,
                                                  max_length=48, threads=1), folder)
    return folder


def test_the_export_trains_with_trls_reward_trainer_from_a_saved_version(version, tmp_path, capsys):
    from datasets import load_dataset  # imported here: collecting the fast set need not load TRL's trainer
    from trl import RewardConfig, RewardTrainer

    exported = tmp_path / "pairs.jsonl"
    code, _ = run(["export", "--from", str(FIXTURES / "ls-1.23.2-export-JSON.json"), "-o", str(exported)],
                  tmp_path, capsys)
    assert code == 0
    more = tmp_path / "more.jsonl"  # a few more rows in the same form, so training takes several steps
    write_trl_jsonl(synthetic(10), more)
    rows = exported.read_text() + more.read_text()
    exported.write_text(rows)

    model = AutoModelForSequenceClassification.from_pretrained(version)
    tokenizer = AutoTokenizer.from_pretrained(version)
    before = [p.detach().clone() for p in model.parameters()]

    data = load_dataset("json", data_files=str(exported), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(data) == len(read_pairs(exported)) == 12
    config = RewardConfig(output_dir=str(tmp_path / "trl"), max_length=64, per_device_train_batch_size=4,
                          max_steps=3, learning_rate=1e-3, report_to="none", save_strategy="no",
                          logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()

    assert result.global_step == 3 and math.isfinite(result.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert json.loads(exported.read_text().splitlines()[0])["chosen"] == "changed too"


def test_the_rl_reward_function_scores_pairs_as_the_backend_does_text_or_conversational(version):
    reward = trl_reward_function(version, device="cpu")
    prompts = ["Name a colour.", "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A poem?\n\nAssistant:"]
    answers = ["politely and helpfully red", "no"]
    expected = RewardModel.load(version).rewards(prompts, answers)
    assert reward(prompts=prompts, completions=answers) == pytest.approx(expected, rel=1e-5)
    conversations = [[{"role": "user", "content": "Name a colour."}],
                     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "A poem?"}]]
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    assert reward(prompts=conversations, completions=completions, completion_ids=None) == pytest.approx(expected,
                                                                                                        rel=1e-5)
    assert expected[0] != pytest.approx(expected[1])


def test_grpo_trains_a_policy_on_the_reward_function(version, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    policy_dir = tiny_causal_lm(tmp_path / "policy")
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    before = [p.detach().clone() for p in policy.parameters()]
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Write about the {w}."}]
                                            for w in ("sea", "sky", "wind", "fox")]})
    config = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                        max_completion_length=8, max_steps=2, learning_rate=1e-2, report_to="none",
                        save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = GRPOTrainer(model=policy, reward_funcs=[trl_reward_function(version, device="cpu")], args=config,
                          train_dataset=prompts, processing_class=AutoTokenizer.from_pretrained(policy_dir))
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    logged = [e for e in trainer.state.log_history if f"rewards/reward_model_{version.name}/mean" in e]
    assert logged and all(math.isfinite(e[f"rewards/reward_model_{version.name}/mean"]) for e in logged)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
