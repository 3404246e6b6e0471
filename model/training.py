"""Bradley-Terry reward-model training: loss = -log sigmoid(r_chosen - r_rejected [- margin]).

Two modes, both ending in a stock `AutoModelForSequenceClassification` folder:
* fast: the encoder is frozen; its last-layer first-token hidden state per (prompt, answer) is computed
  once and cached by text hash; only BERT's own head (pooler dense+tanh, then the classifier) trains on
  those features, so the saved model is the unchanged architecture and scores identically. With
  pooling="mean" (the default) that first token is the mean of the tokens (model/pooling.py).
* full: every encoder layer (or the top `train_layers`) is fine-tuned without dropout (as TRL does), in
  bf16 autocast where bf16 is native; what is saved is a moving average of the weights, averaged again
  over `members` runs from one start when asked.
The best point by held-out loss is kept (fast: per epoch, stopping early once it stops improving; full:
per half epoch). The encoder runs on a CUDA GPU when torch sees one (fast mode's encoding, all of full
mode); fast mode's head fit is too small to gain from it and stays on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import time
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

from model.evaluation import both_orientations, loss_curves, margin_metrics, reliability_diagram
from model.hardware import bf16_pays_off
from model.pairs import PreferencePair
from model.pooling import add_mean_pooling_layer
from model.reward import (REWARD_CONFIG, RewardModel, TrainConfig, encode_pairs, load_classifier,
                          load_tokenizer, resolve_base_model)

Progress = Callable[[float, str], None]
MAX_SHARDS = 16  # feature-cache shards on disk before they are merged into one


def split_pairs(pairs: list[PreferencePair], config: TrainConfig) -> tuple[list, list]:
    """Held-out split grouped by comparison (prompt + both answers): several annotators' judgments of
    one task stay on one side, so held-out accuracy is not inflated by duplicates. Below
    `min_val_pairs` there is no split (everything trains; val_accuracy is reported as None)."""
    if len(pairs) < config.min_val_pairs or config.val_fraction <= 0:
        return list(pairs), []
    groups: dict[tuple, list] = {}
    for p in pairs:
        groups.setdefault((p.prompt, *sorted((p.chosen, p.rejected))), []).append(p)
    keys = list(groups)
    random.Random(config.seed).shuffle(keys)
    n_val = max(1, round(len(keys) * config.val_fraction))
    if n_val >= len(keys):
        return list(pairs), []
    val = [p for k in keys[:n_val] for p in groups[k]]
    train = [p for k in keys[n_val:] for p in groups[k]]
    return train, val


def _bt_loss(chosen, rejected, config: TrainConfig):
    import torch.nn.functional as F

    loss = -F.logsigmoid(chosen - rejected - config.margin).mean()
    if config.center_rewards_coefficient:
        loss = loss + config.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def _margin_loss(margins, config: TrainConfig) -> float:
    """Held-out Bradley-Terry loss from chosen-minus-rejected margins (no centering term)."""
    import torch
    import torch.nn.functional as F

    return -F.logsigmoid(torch.as_tensor(margins, dtype=torch.float32) - config.margin).mean().item()


def load_reward_base(base_path: str, pooling: str):
    """(model, tokenizer, pooling) that training starts from: the base as a one-label classifier, read by
    mean pooling when asked and its layers allow it (the pooling it got is returned)."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"unknown pooling {pooling!r}: use 'mean' or 'cls'")
    tokenizer = load_tokenizer(base_path)
    model = load_classifier(base_path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    pooled = pooling == "mean" and add_mean_pooling_layer(model)
    return model, tokenizer, "mean" if pooled else "cls"


# ---------------------------------------------------------------- fast mode: cached frozen features

class FeatureCache:
    """First-token hidden states of a frozen encoder, keyed by sha256(prompt, answer).

    On disk (optional) under <dir>/<model key>/, where the model key hashes the base model, its weight
    files' size and mtime, max_length and pooling. Each run appends one shard file written to a temp name and
    renamed, so concurrent workers never read a partial shard and never overwrite each other.
    """

    def __init__(self, base_path: str, max_length: int, pooling: str, folder: Path | None):
        self.features: dict[str, object] = {}
        self.folder = None
        if folder is not None:
            self.folder = Path(folder) / _model_key(base_path, f"{max_length}|{pooling}")
            for shard in sorted(self.folder.glob("shard-*.pt")):
                self._load_shard(shard)

    def _load_shard(self, shard: Path) -> None:
        import torch

        try:
            data = torch.load(shard, weights_only=True)
        except (OSError, RuntimeError, EOFError):  # unreadable shard: recompute those features
            return
        self.features.update(zip(data["keys"], data["features"]))

    @staticmethod
    def key(prompt: str, answer: str) -> str:
        return hashlib.sha256(f"{len(prompt)}:{prompt}{answer}".encode()).hexdigest()

    def compute(self, model, tokenizer, prompts, answers, max_length, batch_size, progress) -> object:
        """Features for every (prompt, answer); only the missing ones go through the encoder."""
        import torch

        keys = [self.key(p, a) for p, a in zip(prompts, answers)]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.features}.values(),
                      key=lambda i: len(prompts[i]) + len(answers[i]))
        new_keys, new_feats = [], []
        encoder = model.base_model
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                enc = encode_pairs(tokenizer, [prompts[i] for i in idx], [answers[i] for i in idx], max_length)
                hidden = encoder(**enc.to(model.device)).last_hidden_state[:, 0].float().cpu().clone()
                for i, h in zip(idx, hidden):
                    self.features[keys[i]] = h
                    new_keys.append(keys[i])
                    new_feats.append(h)
                progress(min(start + batch_size, len(todo)) / len(todo), f"encoded {start + len(idx)}/{len(todo)}")
        if new_keys and self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_shard(new_keys, torch.stack(new_feats))
            self._compact()
        return torch.stack([self.features[k] for k in keys]), len(todo)

    def _write_shard(self, keys: list[str], features) -> None:
        import torch

        tmp = self.folder / f"tmp-{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as f:
            torch.save({"keys": keys, "features": features}, f)
        os.replace(tmp, self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.pt")

    def _compact(self) -> None:
        """A retrain per annotation adds a shard per annotation: past MAX_SHARDS, merge them into one.
        The merged shard is in place before any shard it holds is deleted, and a shard another process
        writes meanwhile is not touched, so no feature is ever lost (at worst some are stored twice)."""
        import torch

        shards = sorted(self.folder.glob("shard-*.pt"))
        if len(shards) <= MAX_SHARDS:
            return
        keys = list(self.features)
        self._write_shard(keys, torch.stack([self.features[k] for k in keys]))
        for shard in shards:
            shard.unlink(missing_ok=True)


def _model_key(base_path: str, variant: str) -> str:
    parts = [base_path, variant]
    folder = Path(base_path)
    if folder.is_dir():  # a changed checkpoint at the same path must not reuse old features
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _bert_head(model):
    """BertForSequenceClassification's head as a function of the first-token hidden state."""
    import torch

    pooler = getattr(model.base_model, "pooler", None)
    classifier = getattr(model, "classifier", None)
    if pooler is None or not isinstance(classifier, torch.nn.Linear):
        raise ValueError(f"fast mode needs a BERT-style model (pooler + linear classifier); "
                         f"{type(model).__name__} has none: use mode='full'")
    dropout = getattr(model, "dropout", torch.nn.Identity())
    modules = torch.nn.ModuleList([pooler, classifier])

    def head(features, train: bool):
        modules.train(train)
        dropout.train(train)
        return classifier(dropout(pooler(features.unsqueeze(1))))[:, 0]

    return head, modules


def _train_fast(model, tokenizer, train, val, config, progress, out):
    import torch

    base_path = resolve_base_model(config.base_model)
    cache = FeatureCache(base_path, config.max_length, out["pooling"], config.feature_cache_dir)
    everything = train + val
    prompts = [p.prompt for p in everything] * 2
    answers = [p.chosen for p in everything] + [p.rejected for p in everything]
    started = time.perf_counter()
    feats, n_encoded = cache.compute(model, tokenizer, prompts, answers, config.max_length,
                                     config.eval_batch_size, lambda f, m: progress(0.5 * f, m))
    out["feature_seconds"] = round(time.perf_counter() - started, 2)
    out["features_encoded"] = n_encoded
    model.to("cpu")  # the head fit below works on the cached (CPU) features
    n = len(everything)
    chosen, rejected = feats[:n], feats[n:2 * n]
    t_idx, v_idx = torch.arange(len(train)), torch.arange(len(train), n)

    with _one_thread():  # small head ops: OpenMP hand-offs cost more than they save, badly so on busy cores
        return _fit_head(model, chosen, rejected, t_idx, v_idx, config, progress, out)


@contextmanager
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_head(model, chosen, rejected, t_idx, v_idx, config, progress, out):
    import torch

    head, modules = _bert_head(model)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=config.resolved("learning_rate"),
                                  weight_decay=config.weight_decay)
    epochs, batch = config.resolved("epochs"), config.resolved("batch_size")
    gen = torch.Generator().manual_seed(config.seed)

    def margins(idx):
        with torch.no_grad():
            return head(chosen[idx], False) - head(rejected[idx], False)

    best, history = None, []
    for epoch in range(1, epochs + 1):
        perm = t_idx[torch.randperm(len(t_idx), generator=gen)]
        total = 0.0
        for start in range(0, len(perm), batch):
            idx = perm[start:start + batch]
            loss = _bt_loss(head(chosen[idx], True), head(rejected[idx], True), config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        entry = {"epoch": epoch, "train_loss": total / len(t_idx)}
        if len(v_idx):
            entry["val_loss"] = _margin_loss(margins(v_idx), config)
        history.append(entry)
        score = entry.get("val_loss", entry["train_loss"])
        if best is None or score < best[0]:
            best = (score, epoch, copy.deepcopy(modules.state_dict()))
        progress(0.5 + 0.45 * epoch / epochs, f"epoch {epoch}/{epochs} loss {entry['train_loss']:.4f}")
        if len(v_idx) and epoch - best[1] >= config.patience:
            break  # held-out loss stopped improving: later epochs only overfit the head
    modules.load_state_dict(best[2])
    out["best_epoch"] = best[1]
    eval_idx = v_idx if len(v_idx) else t_idx
    with torch.no_grad():
        rewards = torch.cat([head(chosen[eval_idx], False), head(rejected[eval_idx], False)])
    return history, margins(eval_idx).tolist(), rewards.tolist()




# ---------------------------------------------------------------- full mode: fine-tuning

def _freeze_lower_layers(model, train_layers: int | None) -> None:
    if train_layers is None:
        return
    n_layers = model.config.num_hidden_layers
    for name, param in model.base_model.named_parameters():
        layer = next((int(part) for part in name.split(".") if part.isdigit()), None)
        lower = "embeddings" in name or (layer is not None and layer < n_layers - train_layers)
        param.requires_grad = not lower


def _length_batches(pairs: list, batch: int, rng: random.Random) -> list[list]:
    """Batches of similar length (less padding: ~2x faster on hh-rlhf) in random order. Lengths get
    +-25% noise so batches differ between epochs."""
    def size(p):
        return (len(p.prompt) + max(len(p.chosen), len(p.rejected))) * rng.uniform(0.75, 1.25)

    ordered = sorted(pairs, key=size)
    batches = [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    rng.shuffle(batches)
    return batches


class _WeightAverage:
    """Exponential moving average of the trainable weights over about `horizon` steps. Averaging a
    fine-tuning trajectory generalises better than its last point (SWA; for reward models, WARM), and the
    start's weight (decay^steps) pulls toward the pretrained encoder. The result is plain weights: the
    saved model is still a stock one."""

    def __init__(self, model, horizon: float):
        self.decay = 1.0 - 1.0 / max(1.0, horizon)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().clone() for n, p in self.params.items()}

    def update(self) -> None:
        import torch

        with torch.no_grad():
            for name, param in self.params.items():
                self.average[name].lerp_(param.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own weights again after it."""
        import torch

        own = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(own[name])


def _pair_margins(scorer, pairs) -> tuple[list, list]:
    """(chosen - rejected margins, all rewards) of `pairs` under the scorer's model as it is now."""
    r = scorer.rewards([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    return [c - x for c, x in zip(r[:len(pairs)], r[len(pairs):])], r


def _train_full(model, tokenizer, train, val, config, progress, out):
    """Fine-tune `config.members` times from one initialisation (the same head too), each with its own
    data order, and save the average of the members' kept weights (WARM: fine-tunes from a shared start
    stay in one basin, so their weight average is one model that generalises better than any of them).
    The average is saved even when a member's held-out loss is lower: each member's point was picked as
    the minimum of that same loss, which biases such a comparison toward the members. On hh-rlhf the
    lowest-loss member always won it, yet the average scored higher on the test pairs on every seed
    measured (BENCHMARKS.md)."""
    scorer = RewardModel(model, tokenizer, config.max_length, batch_size=config.eval_batch_size)
    members = config.members
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    share = 0.95 / members  # of the progress bar, per member
    runs, history = [], []
    for k in range(members):
        model.load_state_dict(start, strict=False)
        label = f"member {k + 1}/{members}: " if members > 1 else ""

        def member_progress(fraction, message, k=k, label=label):
            progress(share * (k + fraction / 0.95), label + message)

        run = _fine_tune(model, tokenizer, train, val, dataclasses.replace(config, seed=config.seed + k),
                         member_progress, scorer)
        history += [{**entry, "member": k + 1} if members > 1 else entry for entry in run["history"]]
        runs.append(run)
    epochs = [r["epoch"] for r in runs]
    out.update(best_epoch=epochs[0] if members == 1 else epochs, average_epochs=config.average_epochs,
               dropout=config.dropout, members=members, bf16=runs[0]["bf16"])
    if members > 1:
        import torch

        weights = [r["weights"] for r in runs]
        model.load_state_dict({n: torch.stack([w[n] for w in weights]).mean(0) for n in weights[0]}, strict=False)
        if val:
            out["member_val_losses"] = [r["val_loss"] for r in runs]
    model.eval()
    m, rewards = _pair_margins(scorer, val or train)
    return history, m, rewards


def _fine_tune(model, tokenizer, train, val, config, progress, scorer) -> dict:
    """One fine-tuning run; every half epoch the held-out loss of the served weights (the moving
    average, or the model's own with average_epochs=None) is measured and the best point is kept.
    Leaves the model holding that point; returns it with the run's history."""
    import torch

    _freeze_lower_layers(model, config.train_layers)
    device = model.device
    # Where bf16 is not native (older GPUs, most CPUs) it trains in fp32: fp16 would need loss scaling,
    # and emulated bf16 is ~20x slower than fp32 on a CPU.
    bf16 = config.bf16 and bf16_pays_off(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.resolved("learning_rate"), weight_decay=config.weight_decay)
    epochs, batch = config.resolved("epochs"), config.resolved("batch_size")
    per_epoch = math.ceil(len(train) / batch)
    steps = epochs * per_epoch
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up then linear decay to 0
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    average = _WeightAverage(model, config.average_epochs * per_epoch) if config.average_epochs else None
    served = average.applied if average else nullcontext
    rng = random.Random(config.seed)
    checkpoints = {per_epoch // 2, per_epoch} - {0}  # steps within an epoch after which to measure

    best, history, step = None, [], 0
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for i, chunk in enumerate(_length_batches(train, batch, rng), start=1):
            enc = encode_pairs(tokenizer, [p.prompt for p in chunk] * 2,
                               [p.chosen for p in chunk] + [p.rejected for p in chunk], config.max_length)
            # Without dropout, chosen and rejected are scored by the same network, as they are when served.
            model.train(config.dropout)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                r = model(**enc.to(device)).logits[:, 0].float()
            loss = _bt_loss(r[:len(chunk)], r[len(chunk):], config)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            if average:
                average.update()
            step += 1
            total, seen = total + loss.item() * len(chunk), seen + len(chunk)
            progress(0.95 * step / steps, f"epoch {epoch + 1}/{epochs} step {step}/{steps}")
            if i not in checkpoints:
                continue
            model.eval()
            entry = {"epoch": round(epoch + i / per_epoch, 2), "train_loss": total / seen}
            total, seen = 0.0, 0
            with served():
                if val:
                    entry["val_loss"] = _margin_loss(_pair_margins(scorer, val)[0], config)
                score = entry.get("val_loss", entry["train_loss"])
                if best is None or score < best["score"]:
                    best = {"score": score, "epoch": entry["epoch"], "val_loss": entry.get("val_loss"),
                            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}
            history.append(entry)
    model.load_state_dict(best["weights"], strict=False)  # parameters only; buffers never change
    model.eval()
    return {**best, "history": history, "bf16": bf16}


# ---------------------------------------------------------------- entry point

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
    if config.mode not in ("fast", "full"):
        raise ValueError(f"unknown training mode {config.mode!r}: use 'fast' or 'full'")
    if config.members < 1:
        raise ValueError(f"members must be at least 1, not {config.members}")
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} does not exist")
    report = progress or (lambda fraction, message: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    report(0.0, "loading base model")
    base_path = resolve_base_model(config.base_model)
    torch.manual_seed(config.seed)  # the classifier's fresh initialization
    model, tokenizer, pooling = load_reward_base(base_path, config.pooling)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    train, val = split_pairs(pairs, config)

    extra: dict = {"pooling": pooling}
    trainer = _train_fast if config.mode == "fast" else _train_full
    history, margins, rewards = trainer(model, tokenizer, train, val, config, report, extra)
    train_seconds = time.perf_counter() - started

    report(0.96, "saving")
    model.eval().to("cpu")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / REWARD_CONFIG).write_text(json.dumps(
        {"max_length": config.max_length, "base_model": config.base_model, "mode": config.mode}, indent=2))
    scored = margin_metrics(margins, seed=config.seed)
    has_val = bool(val)
    metrics = {
        "n_pairs": len(pairs), "n_train": len(train), "n_val": len(val),
        "val_accuracy": scored["accuracy"] if has_val else None,
        "val_accuracy_ci": [scored["ci_low"], scored["ci_high"]] if has_val else None,
        "val_loss": _margin_loss(margins, config) if has_val else None,  # of the saved model
        "train_loss": history[-1]["train_loss"],
        "mean_margin": scored["mean_margin"],
        "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
        "ece": scored["ece"] if has_val else None,
        "base_model": config.base_model, "mode": config.mode, "max_length": config.max_length,
        "epochs": config.resolved("epochs"), "learning_rate": config.resolved("learning_rate"),
        "train_seconds": round(train_seconds, 2), **extra, "history": history,
    }
    loss_curves(history, out_dir / "loss.png")
    probs, labels = both_orientations(margins)
    reliability_diagram(probs, labels, out_dir / "reliability.png",
                        title="Held-out reliability" if has_val else "Training-set reliability")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report(1.0, "done")
    return metrics
