"""DPO over packed rows (model/tuning_packed.py), on a tiny Llama built on the fly: a pair packed as prompt +
chosen + rejected scores each answer exactly as its own row would, padding and other rows change nothing, an
answer past max_length loses its end, the LM head's hand-made gradient equals autograd's, and the reference
computed from the policy's output of the layers below the adapter equals a full reference forward pass."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import tiny_causal_lm

from model.tuning_packed import PairRows, TokenLogProbs, capture_output, decoder_layers, pair_logps, start_above


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("packed") / "llama", layers=3)


PAD = 0


def load(folder, attention="sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention).eval()


def examples(n, seed=0):
    rng = random.Random(seed)

    def ids(low, high):
        return [rng.randrange(6, 200) for _ in range(rng.randint(low, high))]

    return [{"prompt_ids": ids(1, 9), "chosen_ids": ids(1, 7), "rejected_ids": ids(1, 7)} for _ in range(n)]


def own_row_logp(model, prompt, answer):
    """log p(answer | prompt) from a row of its own, the way TRL's DPOTrainer reads a pair (two rows)."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    return float(logps[torch.arange(len(targets)), targets][len(prompt) - 1:].sum())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_row_scores_every_answer_as_its_own_row_would(folder, attention):
    model = load(folder, attention)
    rows = examples(3)
    with torch.no_grad():
        chosen, rejected = pair_logps(model, PairRows(max_length=64, pad_token_id=PAD)(rows))
    for i, row in enumerate(rows):
        assert chosen[i].item() == pytest.approx(own_row_logp(model, row["prompt_ids"], row["chosen_ids"]), abs=1e-4)
        assert rejected[i].item() == pytest.approx(own_row_logp(model, row["prompt_ids"], row["rejected_ids"]),
                                                   abs=1e-4)


def test_padding_and_other_pairs_change_nothing_and_long_answers_lose_their_end(folder):
    model = load(folder)
    rows = examples(2, seed=1)
    rows[1] = {**rows[1], "chosen_ids": list(range(10, 40))}  # 30 tokens: cut to fit max_length
    limit = len(rows[1]["prompt_ids"]) + 12
    batch = PairRows(max_length=limit, pad_token_id=PAD)(rows)
    with torch.no_grad():
        chosen, rejected = pair_logps(model, batch)
        alone, _ = pair_logps(model, PairRows(max_length=limit, pad_token_id=PAD)(rows[:1]))
    assert chosen[0].item() == pytest.approx(alone[0].item(), abs=1e-4)  # padded beside a longer row: the same
    assert chosen[1].item() == pytest.approx(own_row_logp(model, rows[1]["prompt_ids"], list(range(10, 22))),
                                             abs=1e-4)
    assert batch["input_ids"].shape == (2, max(len(r["prompt_ids"]) + min(len(r["chosen_ids"]), 12)
                                               + min(len(r["rejected_ids"]), 12) for r in rows))


def test_the_lm_heads_gradient_is_autograds_with_slices_smaller_than_the_tokens(monkeypatch):
    import model.tuning_packed as packed

    monkeypatch.setattr(packed, "HEAD_SLICE", 3)  # 7 tokens: three slices, the last one short
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 11, (7,), generator=generator)
    upstream = torch.randn(7, generator=generator, dtype=torch.float64)
    ours = TokenLogProbs.apply(hidden, weight, targets)
    (ours * upstream).sum().backward()
    ours_grad, hidden.grad = hidden.grad, None
    reference = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None])[:, 0]
    (reference * upstream).sum().backward()
    assert torch.allclose(ours.double(), reference, atol=1e-5)
    assert torch.allclose(ours_grad, hidden.grad, atol=1e-5)


def test_the_reference_starts_from_the_policys_output_of_the_layers_below_the_adapter(folder):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(load(folder), LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=[2], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, weight in policy.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)  # the adapter changes the policy, so policy and reference differ
    batch = PairRows(max_length=64, pad_token_id=PAD)(examples(3, seed=2))
    layers = decoder_layers(policy.get_base_model())
    trunk = []
    with torch.no_grad():
        with capture_output(layers[1], trunk):
            policy_chosen, _ = pair_logps(policy, batch)
        with policy.disable_adapter():
            full_chosen, full_rejected = pair_logps(policy, batch)
            with start_above(layers, 2, trunk[0]):
                shared_chosen, shared_rejected = pair_logps(policy, batch)
        again, _ = pair_logps(policy, batch)
    assert torch.allclose(shared_chosen, full_chosen, atol=1e-5)
    assert torch.allclose(shared_rejected, full_rejected, atol=1e-5)
    assert not torch.allclose(policy_chosen, full_chosen, atol=1e-3)  # the adapter matters: the check can fail
    assert torch.allclose(again, policy_chosen, atol=1e-6)  # the layers are whole again afterwards
