"""The fast sampling loop against transformers' own `generate` and logits warpers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from model.generation.decoding import Sampling, next_tokens, sample, use_fast_decoding
from tiny_models import tiny_causal_lm

PROMPTS = ["What is the capital of France?", "Write a poem.",
           "Answer the question politely and helpfully, with clear and accurate facts about the sea."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tiny_causal_lm(tmp_path_factory.mktemp("lm"), seed=3)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return folder, tok


def left_padded(tok, prompts):
    return tok(prompts, return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def fast(tiny):
    """The tiny model on the fast decoding path, and the three prompts left-padded."""
    folder, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert use_fast_decoding(model)
    return model, left_padded(tok, PROMPTS)


def test_greedy_decoding_matches_generate_token_for_token(tiny):
    folder, tok = tiny
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    fast = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert use_fast_decoding(fast)
    enc = left_padded(tok, PROMPTS)  # three different lengths: the padding and positions must be right
    assert (enc["attention_mask"] == 0).any()
    with torch.inference_mode():
        expected = reference.generate(**enc, do_sample=False, max_new_tokens=24, min_new_tokens=24,
                                      pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
        got = sample(fast, enc["input_ids"], enc["attention_mask"], max_new_tokens=24,
                     sampling=Sampling(temperature=0), eos_ids=[-1], pad_id=tok.pad_token_id)
    assert got.tolist() == expected.tolist()


def test_decode_attention_gives_the_same_logits_as_sdpa(tiny):
    folder, tok = tiny
    sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    fast = AutoModelForCausalLM.from_pretrained(folder).eval()
    use_fast_decoding(fast)
    enc = left_padded(tok, PROMPTS)
    new = torch.tensor([[5], [9], [17]])
    ids = torch.cat([enc["input_ids"], new], dim=1)
    mask = torch.cat([enc["attention_mask"], torch.ones(3, 1, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        full = sdpa(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        prefix = fast(enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=positions[:, :-1])
        step = fast(new, attention_mask=mask, position_ids=positions[:, -1:],
                    cache=prefix.past_key_values).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)


def greedy(model, enc, max_new_tokens, **kwargs):
    with torch.inference_mode():
        return sample(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                      sampling=Sampling(temperature=0), **{"eos_ids": [-1], "pad_id": 0, **kwargs})


def test_rows_that_end_stop_and_the_others_go_on_unchanged(fast):
    model, enc = fast
    full = greedy(model, enc, 12)
    eos = int(full[0, 3])  # make row 0's fourth token its EOS: the batch then drops that row and goes on
    out = greedy(model, enc, 12, eos_ids=[eos], pad_id=-7)
    for row, reference in zip(out.tolist(), full.tolist()):
        end = reference.index(eos) if eos in reference else len(reference) - 1
        assert row[:end + 1] == reference[:end + 1]
        assert set(row[end + 1:]) <= {-7}
    assert out[0, 4:].eq(-7).all()


def test_the_answers_of_a_prompt_share_its_prefill(fast):
    model, enc = fast
    one = greedy(model, enc, 10)
    three = greedy(model, enc, 10, n=3)
    assert three.tolist() == one.repeat_interleave(3, 0).tolist()


def test_models_without_a_static_cache_keep_their_own_attention():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1))
    before = model.config._attn_implementation
    assert not use_fast_decoding(model)
    assert model.config._attn_implementation == before


@pytest.mark.parametrize("top_k,top_p,temperature", [(50, 0.95, 0.8), (5, 1.0, 1.0), (None, 0.5, 0.7),
                                                     (3, 0.01, 1.3)])
def test_sampling_draws_from_the_distribution_of_transformers_warpers(top_k, top_p, temperature):
    torch.manual_seed(0)
    logits = torch.randn(1, 200) * 3
    warped = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    warped = TopPLogitsWarper(top_p)(None, warped)
    expected = torch.softmax(warped, dim=-1)[0]

    draws = 20000
    tokens = next_tokens(logits.expand(draws, -1), Sampling(temperature=temperature, top_k=top_k, top_p=top_p))
    observed = torch.bincount(tokens, minlength=200).float() / draws
    assert set(observed.nonzero().flatten().tolist()) <= set(expected.nonzero().flatten().tolist())
    assert (observed - expected).abs().max() < 0.02


def test_one_prefill_serves_all_k_answers(fast, monkeypatch):
    """k=4 answers per prompt: the prompts run through the model once, then 4 rows per prompt decode."""
    model, enc = fast
    shapes = []
    forward = model.forward

    def recording(input_ids, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    out = greedy(model, enc, 6, n=4)
    assert out.shape == (3 * 4, 6)
    assert shapes[0] == tuple(enc["input_ids"].shape)  # the prefill: 3 prompts, not 12
    assert all(shape == (12, 1) for shape in shapes[1:]) and len(shapes) == 6
