"""Bradley-Terry reward-model training: loss = -log sigmoid(r_chosen - r_rejected [- margin]).

Two modes, both ending in a stock `AutoModelForSequenceClassification` folder (a causal LM base: a stock
`AutoModel` folder and a linear head beside it, model/reward/decoder.py):
* fast: the encoder is frozen; its last-layer first-token hidden state per (prompt, answer) is computed
  once and cached by text hash; only BERT's own head (pooler dense+tanh, then the classifier) trains on
  those features, so the saved model is the unchanged architecture and scores identically. With
  pooling="mean" (the default) that first token is the mean of the tokens (model/reward/pooling.py).
  With `folds` > 1 (3 by default), that many heads are cross-fitted on folds of the prompts and averaged.
  A causal LM base ("smollm2", the packaged generator) is read the same way at its middle layer: the mean of
  the answer tokens' hidden states under a linear head (model/reward/decoder.py).
* full: every encoder layer (or the top `train_layers`) is fine-tuned without dropout (as TRL does), in
  bf16 autocast where bf16 is native, on each prompt's last `prompt_tokens` tokens (the saved model reads
  them the same way); what is saved is a moving average of the weights, averaged again over `members`
  runs from one start when asked.
The loss is the mean over pairs weighted by each pair's `weight` (model/reward/objective.py). The best point
by held-out loss is kept (fast: per epoch, stopping early once it stops improving; full: per epoch, of two
by default, compared as the calibrated model will serve), then the rewards are divided by a temperature
fitted on the held-out pairs (`calibrate`). The encoder runs on a CUDA GPU when torch sees one (fast mode's
encoding, all of full mode); fast mode's head fit is too small to gain from it and stays on the CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from model.evaluation import both_orientations, loss_curves, margin_metrics, reliability_diagram
from model.pairs import PreferencePair
from model.reward.calibration import fit_temperature, scale_rewards
from model.reward.config import TrainConfig, is_decoder_base
from model.reward.decoder import KIND, load_decoder_base, train_decoder
from model.reward.fast import train_fast
from model.reward.full import train_full
from model.reward.model import REWARD_CONFIG, cut_pair_prompts, load_reward_base, resolve_base_model
from model.reward.objective import margin_loss, pair_weights
from model.reward.splits import prompt_folds, split_pairs

Progress = Callable[[float, str], None]


def train_reward_model(pairs: list[PreferencePair], config: TrainConfig, out_dir: Path,
                       progress: Progress | None = None) -> dict:
    """Train on `pairs` and write a loadable model, metrics.json, loss.png and reliability.png INTO
    `out_dir` (an existing folder). Returns the metrics. Fewer than `config.min_val_pairs` pairs: no
    held-out split, val_accuracy/val_accuracy_ci/val_loss/ece are None and the other figures are
    measured on the training pairs."""
    import numpy as np
    import torch

    if not pairs:
        raise ValueError("no preference pairs to train on: annotate some tasks first "
                         "(skipped and cancelled annotations do not count)")
    if config.members < 1:
        raise ValueError(f"members must be at least 1, not {config.members}")
    pair_weights(pairs)  # a pair without a positive weight fails here, before any training
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} does not exist")
    report = progress or (lambda fraction, message: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    report(0.0, "loading base model")
    decoder = is_decoder_base(config.base_model)
    if decoder:  # a causal LM's lower half under a linear head; it cuts each prompt as it reads it
        # A GGUF base is converted once into the feature cache's folder (model/generation/local.py).
        model = load_decoder_base(config.base_model, config.feature_cache_dir, config.max_length,
                                  config.prompt_tokens, config.eval_batch_size)
        tokenizer, pooling = model.tokenizer, KIND
    else:
        torch.manual_seed(config.seed)  # the classifier's fresh initialization
        model, tokenizer, pooling = load_reward_base(resolve_base_model(config.base_model), config.pooling)
        # Cut once, before the pairs are split and batched by length; the saved model cuts what it scores alike.
        pairs = cut_pair_prompts(tokenizer, pairs, config.prompt_tokens) if config.prompt_tokens else pairs
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    # A cross-fitted fast mode (folds > 1): every pair trains all the heads but one and is held out from
    # that one, which scores it, so `margins` are of every pair. Otherwise they are of the held-out split.
    folds = prompt_folds(pairs, config) if config.mode == "fast" else None
    train, val = (list(pairs), []) if folds else split_pairs(pairs, config)
    held_out = train if folds else val

    extra: dict = {"pooling": pooling}
    if decoder:
        history, margins, rewards = train_decoder(model, train, val, folds, config, report, extra)
    elif config.mode == "fast":
        history, margins, rewards = train_fast(model, tokenizer, train, val, config, report, extra, folds)
    else:
        history, margins, rewards = train_full(model, tokenizer, train, val, config, report, extra)
    if config.calibrate and held_out:
        temperature = fit_temperature(margins, pair_weights(held_out))
        # Cross-fitted: the held-out margins are the heads', calibrated by `temperature`; the saved average's
        # spread less, so its own temperature is smaller by as much (fast.py).
        saved_temperature = temperature * extra.get("average_spread", 1.0)
        if scale_rewards(model, 1 / saved_temperature):
            margins, rewards = [m / temperature for m in margins], [r / saved_temperature for r in rewards]
            extra["temperature"] = saved_temperature
    train_seconds = time.perf_counter() - started

    report(0.96, "saving")
    model.to("cpu")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / REWARD_CONFIG).write_text(json.dumps(
        {"max_length": config.max_length, "prompt_tokens": config.prompt_tokens, "base_model": config.base_model,
         "mode": config.mode, **({"kind": KIND} if decoder else {})}, indent=2))
    scored = margin_metrics(margins, seed=config.seed)
    has_val = bool(held_out)
    metrics = {
        "n_pairs": len(pairs), "n_train": len(train), "n_val": len(held_out),
        "val_accuracy": scored["accuracy"] if has_val else None,
        "val_accuracy_ci": [scored["ci_low"], scored["ci_high"]] if has_val else None,
        # of the saved model (cross-fitted: of the heads it averages, each on its own fold)
        "val_loss": margin_loss(margins, config, pair_weights(held_out)) if has_val else None,
        "train_loss": history[-1]["train_loss"],
        "mean_margin": scored["mean_margin"],
        "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
        "ece": scored["ece"] if has_val else None,
        "base_model": config.base_model, "mode": config.mode, "max_length": config.max_length,
        "prompt_tokens": config.prompt_tokens,
        "epochs": config.epochs, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
        "train_seconds": round(train_seconds, 2), **extra, "history": history,
    }
    loss_curves(history, out_dir / "loss.png")
    probs, labels = both_orientations(margins)
    reliability_diagram(probs, labels, out_dir / "reliability.png",
                        title="Held-out reliability" if has_val else "Training-set reliability")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report(1.0, "done")
    return metrics
