"""The reward model: scoring (`model`), training (`train`, with the `fast` and `full` trainers), the feature
cache, and the pooling layer that lets a stock BERT read a sentence encoder by mean pooling."""
