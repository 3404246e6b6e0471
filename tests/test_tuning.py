"""Generator tuning (DPO + LoRA, merged) on a tiny Llama built on the fly: the saved folder is a plain causal
LM that transformers and the generator load, the merge carries what was learned, the time budget stops
training, bad input gets a one-line error and leaves nothing behind, and a version tuned on flipped labels
is not promoted. The real SmolLM2 path runs once, in a slow test."""

from __future__ import annotations

import json
import random
import re

import pytest
from tiny_models import tiny_causal_lm, tiny_encoder

from backend import cli
from model.comparison import answer, compare_answers
from model.generation import load_generator
from model.generation.types import GenerationConfig
from model.pairs import PreferencePair, write_trl_jsonl
from model.tuning import TUNING_FILE, TuneConfig, TuningError, prompt_hash, tune

WORDS = "the quick brown fox sea wind sky poem".split()
FAST = dict(learning_rate=5e-2, beta=1.0, batch_size=4, micro_batch_size=4, epochs=2)


def questions(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=4)) + "?" for _ in range(n)]


def pairs_for(prompts, chosen="Paris", rejected="dog dog dog"):
    return [PreferencePair(p, chosen, rejected) for p in prompts]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("base") / "llama")


@pytest.fixture(scope="module")
def tuned(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    record = tune(pairs_for(questions(8)), str(base), out, TuneConfig(**FAST))
    return out, record


def sequence_logp(model, tok, prompt, answer_text):
    """log p(answer | prompt) under the chat template, as DPO scores it."""
    import torch

    prompt_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    ids = prompt_ids + tok(answer_text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    targets = torch.tensor(ids[1:])
    return float(logits[torch.arange(len(targets)), targets][len(prompt_ids) - 1:].sum())


def test_the_tuned_folder_is_a_plain_causal_lm_the_generator_loads(tuned, base):
    from transformers import AutoModelForCausalLM

    out, record = tuned
    assert not (out / "adapter_config.json").exists()  # merged: no adapter left to load
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    stored = json.loads((out / TUNING_FILE).read_text())
    assert stored["base"] == str(base) and stored["pairs_used"] == 8
    assert stored["prompt_hashes"] == sorted({prompt_hash(q) for q in questions(8)})
    assert stored["steps"] == stored["planned_steps"] == 4 and not stored["stopped_by_budget"]
    results = load_generator(GenerationConfig(model=str(out), max_new_tokens=6, seed=0)).generate(["sea wind?"])
    assert results[0].error is None and len(results[0].answers) == 2


def test_the_merge_carries_what_dpo_learned(tuned, base):
    """The saved weights differ from the base's where LoRA sat, not in the embeddings, and the chosen answer
    gained log-probability over the rejected one on prompts it was not tuned on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = tuned
    before, after = AutoModelForCausalLM.from_pretrained(base), AutoModelForCausalLM.from_pretrained(out)
    a, b = before.state_dict(), after.state_dict()
    changed = {k for k in a if not (a[k] == b[k]).all()}
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert "model.embed_tokens.weight" not in changed
    tok = AutoTokenizer.from_pretrained(out)

    def margin(model):
        return sum(sequence_logp(model, tok, q, "Paris") - sequence_logp(model, tok, q, "dog dog dog")
                   for q in questions(6, seed=1))

    assert margin(after) > margin(before) + 1.0


def test_the_adapter_covers_a_third_of_the_layers_on_a_cpu_and_the_learning_rate_rises_to_match(base, tmp_path):
    from model.tuning import default_learning_rate, default_lora_layers

    assert default_lora_layers(30, on_gpu=False) == 10 and default_lora_layers(30, on_gpu=True) == 30
    assert default_lora_layers(2, on_gpu=False) == default_lora_layers(1, on_gpu=False) == 1
    assert default_learning_rate(30, 30) == 5e-5 and default_learning_rate(30, 15) == pytest.approx(1e-4)
    assert default_learning_rate(30, 10) == default_learning_rate(30, 1) == pytest.approx(1.5e-4)  # at most 3x
    short = {**FAST, "epochs": 1}
    del short["learning_rate"]
    for name in ("default", "every", "given"):
        (tmp_path / name).mkdir()
    default = tune(pairs_for(questions(4)), str(base), tmp_path / "default", TuneConfig(**short))
    every = tune(pairs_for(questions(4)), str(base), tmp_path / "every", TuneConfig(**short, lora_layers=99))
    given = tune(pairs_for(questions(4)), str(base), tmp_path / "given",
                 TuneConfig(**short, lora_layers=1, learning_rate=2e-3))
    on_cpu = default["device"] == "cpu"  # the tiny base has 2 layers: a third is 1, at twice the rate
    assert (default["lora_layers"], default["learning_rate"]) == ((1, pytest.approx(1e-4)) if on_cpu else (2, 5e-5))
    assert default["config"]["learning_rate"] == default["learning_rate"]  # tuning.json says the rate it ran at
    assert (every["lora_layers"], every["learning_rate"]) == (2, 5e-5) and given["learning_rate"] == 2e-3


def test_a_time_budget_stops_training_and_keeps_what_it_trained(base, tmp_path):
    config = TuneConfig(**{**FAST, "micro_batch_size": 1, "batch_size": 1, "epochs": 1000}, time_budget=4)
    record = tune(pairs_for(questions(8)), str(base), tmp_path, config)  # 8,000 steps of a tiny model: not in 4 s
    assert record["stopped_by_budget"] and 0 < record["steps"] < record["planned_steps"] == 8000
    assert (tmp_path / "model.safetensors").is_file()


def test_bad_input_raises_before_anything_is_written(base, tmp_path):
    with pytest.raises(TuningError, match="none of the 2 pairs is usable"):
        tune([PreferencePair("q", "same", "same"), PreferencePair("", "a", "b")], str(base), tmp_path)
    with pytest.raises(TuningError, match="not a causal language model"):
        tune(pairs_for(["q?"]), str(tiny_encoder(tmp_path / "encoder")), tmp_path)
    with pytest.raises(TuningError, match="more than 0 seconds"):
        TuneConfig(time_budget=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]


def run_cli(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TORCH_THREADS", "1")
    capsys.readouterr()  # what fixtures printed while being built
    code = cli.main(argv)
    return code, capsys.readouterr()


@pytest.mark.parametrize("case", ["no usable pair", "not a causal LM", "budget 0", "missing base", "unknown hub id"])
def test_the_command_line_gives_a_one_line_error_and_creates_nothing(case, base, tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    write_trl_jsonl([PreferencePair("q?", "same", "same")] if case == "no usable pair" else pairs_for(questions(4)),
                    data)
    model = {"not a causal LM": str(tiny_encoder(tmp_path / "encoder")),
             "missing base": str(tmp_path / "nowhere"), "unknown hub id": "nobody/no-such-model"}.get(case, str(base))
    argv = ["tune", "--data", str(data), "--out", str(tmp_path / "out"), "--base", model]
    if case == "budget 0":
        argv += ["--time-budget", "0"]
    code, io = run_cli(argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and io.out == ""
    lines = [line for line in re.split(r"[\r\n]", io.err) if line.strip() and not line.startswith("tuning:")]
    assert len(lines) == 1 and lines[0].startswith("rlhf-backend: "), io.err  # progress bar lines aside
    assert not (tmp_path / "out").exists()


def test_tune_then_compare_from_the_command_line(base, tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    write_trl_jsonl(pairs_for(questions(40)), data)
    monkeypatch.setenv("MAX_NEW_TOKENS", "6")
    code, io = run_cli(["tune", "--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base),
                        "--learning-rate", "0.05", "--batch-size", "4", "--micro-batch-size", "4"],
                       tmp_path, monkeypatch, capsys)
    assert code == 0
    folder = io.out.strip().splitlines()[-1]
    assert folder == str(tmp_path / "out" / "cli" / "generator" / "v1")
    monkeypatch.setenv("REWARD_BASE_MODEL", str(tiny_encoder(tmp_path / "judge-base")))
    report_file = tmp_path / "report.json"
    code, io = run_cli(["compare", "--new", folder, "--base", str(base), "--data", str(data), "-o", str(report_file)],
                       tmp_path, monkeypatch, capsys)
    assert code == 0, io.err
    report = json.loads(report_file.read_text())
    tuned_on = set(json.loads((tmp_path / "out/cli/generator/v1" / TUNING_FILE).read_text())["prompt_hashes"])
    assert report["held_out_pairs"] == sum(prompt_hash(q) not in tuned_on for q in questions(40)) > 0
    assert report["n_prompts"] == len({q for q in questions(40) if prompt_hash(q) not in tuned_on})
    assert "length-controlled" in io.out and "promote:" in io.out and "judge:" in io.out


class CountJudge:
    """A judge with a known taste: the more "Par" an answer holds, the better."""

    def rewards(self, prompts, answers):
        return [a.count("Par") for a in answers]


@pytest.mark.slow
def test_a_version_tuned_on_flipped_labels_is_not_promoted(base, tmp_path):
    """On-policy pairs as in the loop: the base's own answers against "Paris". Tuned the right way round the
    version wins under the promotion rule; tuned on the same pairs flipped it loses and is not promoted."""
    generation = GenerationConfig(model=str(base), max_new_tokens=12, seed=0)
    train_prompts, eval_prompts = questions(24), [f"question {i} about the sea?" for i in range(64)]
    own = answer(str(base), train_prompts, generation)
    base_answers = answer(str(base), eval_prompts, generation)
    judge = {"judge": "counts Par", "accuracy": 1.0, "accuracy_ci": [0.95, 1.0]}
    verdicts = {}
    for name, flip in (("right", False), ("flipped", True)):
        pairs = [PreferencePair(q, *((a[0], "Paris") if flip else ("Paris", a[0]))) for q, a in zip(train_prompts, own)]
        out = tmp_path / name
        out.mkdir()
        # the adapter on the top layer only: the whole path where the reference reuses the layers below
        tune(pairs, str(base), out, TuneConfig(**{**FAST, "epochs": 6}, lora_layers=1))
        report = compare_answers(eval_prompts, base_answers, answer(str(out), eval_prompts, generation),
                                 CountJudge(), judge)
        verdicts[name] = (report["lc_win_rate"], report["promotion"]["promote"])
    assert verdicts["right"][1] and verdicts["right"][0] > 0.5
    assert not verdicts["flipped"][1] and verdicts["flipped"][0] < 0.5


@pytest.mark.slow
def test_tuning_the_packaged_smollm2(tmp_path):
    """The real path once: the GGUF base, the chat template, bf16 where native; the version then generates."""
    pairs = [PreferencePair("\n\nHuman: How do I boil an egg?\n\nAssistant:", "Put it in boiling water for 8 minutes.",
                            "I don't know."),
             PreferencePair("What is the capital of France?", "Paris.", "London, I think.")]
    out = tmp_path / "v"
    out.mkdir()
    record = tune(pairs, "smollm2", out, TuneConfig(batch_size=2, cache_dir=tmp_path / "cache"))
    assert record["steps"] == 1 and record["format"] == "conversational" and record["packed_rows"]
    on_gpu = record["device"] == "cuda"  # SmolLM2-135M has 30 layers: the top third on a CPU, at 3x the rate
    assert (record["lora_layers"], record["learning_rate"]) == ((30, 5e-5) if on_gpu else (10, pytest.approx(1.5e-4)))
    results = load_generator(GenerationConfig(model=str(out), max_new_tokens=16, seed=0)).generate(["Say hello."])
    assert results[0].error is None and all(a.strip() for a in results[0].answers)
