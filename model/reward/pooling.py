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
