"""The mean-pooling layer: a stock BERT layer whose [CLS] output is LayerNorm(mean of the tokens)."""

from __future__ import annotations

import torch
from tiny_models import build_tokenizer, tiny_encoder
from transformers import AutoModelForSequenceClassification

from model.reward.pooling import add_mean_pooling_layer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Write a poem.", "What is the capital of France?"]


def test_first_token_becomes_the_layer_normed_mean_of_the_unpadded_tokens(tmp_path):
    folder = tiny_encoder(tmp_path / "enc", seed=1)
    tok = build_tokenizer()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # padding must not count in the mean
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = model.base_model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.layer_norm((hidden * mask).sum(1) / mask.sum(1), hidden.shape[-1:])
        assert add_mean_pooling_layer(model)
        pooled = model.base_model(**enc).last_hidden_state[:, 0]
    torch.testing.assert_close(pooled, expected, atol=2e-3, rtol=1e-3)


def test_the_pooled_model_saves_and_loads_as_a_stock_classifier_and_is_not_pooled_twice(tmp_path):
    folder = tiny_encoder(tmp_path / "enc", seed=2)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    layers = model.config.num_hidden_layers
    add_mean_pooling_layer(model)
    model.save_pretrained(tmp_path / "pooled")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pooled").eval()
    assert type(loaded) is type(model) and loaded.config.num_hidden_layers == layers + 1
    enc = build_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, model(**enc).logits)
    assert add_mean_pooling_layer(loaded) and loaded.config.num_hidden_layers == layers + 1


def test_models_without_bert_layers_are_left_alone():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2))
    assert not add_mean_pooling_layer(model)
    assert model.config.num_hidden_layers == 1


def test_fine_tuning_keeps_the_attention_uniform_and_the_feed_forward_off(tmp_path):
    """Query/key and the feed-forward's matrices start at zero in pairs whose gradients vanish together."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder(tmp_path / "enc", seed=3), num_labels=1)
    add_mean_pooling_layer(model)
    enc = build_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(5):
        rewards = model(**enc).logits[:, 0]
        loss = -torch.nn.functional.logsigmoid(rewards[0] - rewards[1:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pooling = model.base_model.encoder.layer[-1]
    for linear in (pooling.attention.self.query, pooling.attention.self.key, pooling.intermediate.dense,
                   pooling.output.dense):
        assert not linear.weight.any()
    assert model.base_model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0  # the rest trained


def _trained_pooling_classifier(tmp_path, seed):
    """A tiny pooled classifier whose pooling layer moved as fine-tuning moves it (value, output, biases,
    LayerNorms; the query and the feed-forward too, which exactness must not depend on), key weights still zero."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder(tmp_path / "enc", seed=seed), num_labels=1)
    add_mean_pooling_layer(model)
    pooling = model.base_model.encoder.layer[-1]
    with torch.no_grad():
        for name, param in pooling.named_parameters():
            if name != "attention.self.key.weight":  # the query's may move: every key is the same
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def test_reward_logits_read_the_pooling_layer_at_the_first_token_exactly_as_the_stock_forward(tmp_path):
    from model.reward.pooling import reward_logits

    model = _trained_pooling_classifier(tmp_path, seed=4)
    enc = build_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()
    layers = len(model.base_model.encoder.layer)
    fast = reward_logits(model, enc)
    fast[:, 0].sum().backward()
    fast_grads = [p.grad.clone() for p in model.base_model.encoder.layer[0].parameters()]
    model.zero_grad()
    stock = model(**enc).logits
    stock[:, 0].sum().backward()
    torch.testing.assert_close(fast, stock)
    for fast_grad, param in zip(fast_grads, model.base_model.encoder.layer[0].parameters()):
        torch.testing.assert_close(fast_grad, param.grad)  # training through it is the same training
    assert len(model.base_model.encoder.layer) == layers and model.base_model.pooler is not None  # unchanged


def test_reward_logits_fall_back_to_the_stock_forward_when_the_attention_is_no_longer_uniform(tmp_path):
    from model.reward.pooling import first_token_state, reward_logits

    model = _trained_pooling_classifier(tmp_path, seed=5)
    with torch.no_grad():
        model.base_model.encoder.layer[-1].attention.self.key.weight.normal_()
    enc = build_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reward_logits(model, enc), model(**enc).logits)
        torch.testing.assert_close(first_token_state(model.base_model, enc),
                                   model.base_model(**enc).last_hidden_state[:, 0])
