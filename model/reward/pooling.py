"""Mean pooling for a BERT-style sequence classifier, built from a stock encoder layer.

Sentence encoders such as all-MiniLM-L6-v2 are trained to be read by mean pooling, but
`BertForSequenceClassification` reads the first token ([CLS]). With frozen MiniLM features on hh-rlhf,
mean pooling gives a better reward head (BENCHMARKS.md). A custom model class would not load with
`AutoModelForSequenceClassification` in TRL or anyone else's code, so the pooling is written as one more
ordinary encoder layer whose first-token output is LayerNorm(mean of the previous layer's tokens):
- attention: query = 0, so every score is 0 and softmax spreads evenly over the unpadded tokens;
  value = identity, so each token receives the mean hidden state;
- attention output: SCALE x identity and no bias; the residual adds the token's own state, which the
  following LayerNorm (scale-invariant) shrinks to 1/SCALE of the result;
- feed-forward: zero, so the layer output is the LayerNorm above.
The saved folder is a stock BERT with one more layer. Full fine-tuning keeps it a pooling of the mean:
query and key start at zero and each one's gradient is proportional to the other, and likewise the
feed-forward's two matrices (through gelu(0) = 0), so they stay zero (only biases and LayerNorms move);
the layers below adapt instead.

Only the first token's output of that layer is ever read, so `reward_logits` and `first_token_state` compute
it on that one row (the mean goes through the value projection once, not every token through every matrix):
the same numbers as the stock forward, without a seventh of MiniLM's work.
"""

from __future__ import annotations

import copy

import torch

SCALE = 1e4
MARKER = "mean_pooling_layer"  # config.json flag: the top layer is this one; never add it twice


def add_mean_pooling_layer(model) -> bool:
    """Append the pooling layer to a BERT-style classifier in place; False (unchanged) when the
    encoder's layers are not BERT's (attention.self.query/key/value, attention.output, intermediate,
    output) or use relative positions, which would make the scores non-uniform."""
    if getattr(model.config, MARKER, False):
        return True
    try:
        layers = model.base_model.encoder.layer
        layer = copy.deepcopy(layers[-1])
        attention, attention_out, intermediate, output = (layer.attention.self, layer.attention.output,
                                                          layer.intermediate, layer.output)
    except (AttributeError, IndexError, TypeError):
        return False
    if hasattr(attention, "distance_embedding") or not hasattr(attention, "query"):
        return False
    width = attention.value.weight.shape[0]
    with torch.no_grad():
        for linear in (attention.query, attention.key, intermediate.dense, output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
        attention.value.weight.copy_(torch.eye(width))
        attention.value.bias.zero_()
        attention_out.dense.weight.copy_(SCALE * torch.eye(width))
        attention_out.dense.bias.zero_()
        for norm in (attention_out.LayerNorm, output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    setattr(model.config, MARKER, True)
    return True


def _reads_the_mean(bert) -> bool:
    """True when `bert`'s top layer is the pooling layer, its attention still uniform (key weights zero: every
    token's key is the same bias) and nothing drops out, so its first-token output depends on the mean alone."""
    if not getattr(bert.config, MARKER, False) or bert.training:
        return False
    return not bert.encoder.layer[-1].attention.self.key.weight.any()


def _without_pooling_layer(bert):
    """A view of `bert` without its top layer or pooler: the same parameters, but its own module lists, so
    `bert` itself never changes (another thread may be scoring with it)."""
    encoder = copy.copy(bert.encoder)
    encoder._modules = {**bert.encoder._modules, "layer": torch.nn.ModuleList(list(bert.encoder.layer)[:-1])}
    trunk = copy.copy(bert)
    trunk._modules = {**bert._modules, "encoder": encoder, "pooler": None}
    return trunk


def first_token_state(bert, enc) -> torch.Tensor:
    """`bert(**enc).last_hidden_state[:, 0]`, with the pooling layer computed on the first token only."""
    if not _reads_the_mean(bert):
        return bert(**enc).last_hidden_state[:, 0]
    hidden = _without_pooling_layer(bert)(**enc).last_hidden_state
    mask = enc.get("attention_mask")
    mask = (torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask).unsqueeze(-1)
    mean = (hidden * mask.to(hidden.dtype)).sum(1) / mask.sum(1).clamp(min=1).to(hidden.dtype)
    layer = bert.encoder.layer[-1]
    # Uniform attention over the unpadded tokens gives every query the mean of their values, and the value
    # projection is linear: value(mean). Then the layer's stock output, residual and feed-forward modules.
    attended = layer.attention.output(layer.attention.self.value(mean), hidden[:, 0])
    return layer.output(layer.intermediate(attended), attended)


def reward_logits(model, enc) -> torch.Tensor:
    """`model(**enc).logits` of a BERT sequence classifier, reading the pooling layer at the first token only."""
    bert = model.base_model
    if not _reads_the_mean(bert) or getattr(bert, "pooler", None) is None:
        return model(**enc).logits
    return model.classifier(model.dropout(bert.pooler(first_token_state(bert, enc).unsqueeze(1))))
