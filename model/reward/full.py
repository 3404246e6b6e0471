"""Full mode: fine-tune every encoder layer (or the top `train_layers`) without dropout, in bf16 autocast
where bf16 is native (with eager attention on a CPU, and each pass padded to a multiple of 16 tokens where the
products run on tiles: AMX, tensor cores), and save a moving average of the weights, averaged again over
`members` runs."""

from __future__ import annotations

import dataclasses
import math
import random
from contextlib import contextmanager, nullcontext

from model.hardware import bf16_pays_off, bf16_runs_on_tiles
from model.reward.calibration import calibrated_loss
from model.reward.model import RewardModel, batches_by_length, encode_pairs
from model.reward.objective import bt_loss, margin_loss, pair_weights
from model.reward.pooling import reward_logits

# Forward passes per training step, each over texts of similar length. On hh-rlhf (the prompt's last 32
# tokens) one pass pads a step's 16 texts by 32%, two by 21%: a step 8% faster on a CPU; three, no faster.
FORWARD_GROUPS = 2
# Training steps in bf16 on tile units pad each pass to a multiple of this many tokens: a CPU's bf16 matrix
# products then run on whole AMX tiles (16 rows) and on fewer distinct shapes, and full mode took 0.86-0.88x as
# long on an AMX Xeon; GPUs' tensor cores like multiples of 8 alike. Elsewhere the extra tokens only cost:
# 1.00-1.02x in bf16 on a Xeon whose AMX was hidden (AVX-512 bf16 only), 1.03-1.07x in fp32 (BENCHMARKS.md).
BF16_PAD_MULTIPLE = 16


def _pad_multiple(tiles: bool, max_length: int) -> int | None:
    """What a training pass pads its length to a multiple of: BF16_PAD_MULTIPLE where it runs in bf16 on tile
    units (`tiles`) and max_length is a multiple too (else a padded pass could grow past it, and past the model's
    positions); None otherwise."""
    return BF16_PAD_MULTIPLE if tiles and max_length % BF16_PAD_MULTIPLE == 0 else None


def _freeze_lower_layers(model, train_layers: int | None) -> None:
    if train_layers is None:
        return
    n_layers = model.config.num_hidden_layers
    for name, param in model.base_model.named_parameters():
        layer = next((int(part) for part in name.split(".") if part.isdigit()), None)
        lower = "embeddings" in name or (layer is not None and layer < n_layers - train_layers)
        param.requires_grad = not lower


@contextmanager
def _training_attention(model, bf16: bool):
    """Eager attention inside the block (a training step's forward passes; the backward pass follows the graph
    they recorded) when training runs in bf16 on a CPU, the model's own after it. There PyTorch's fused
    attention (sdpa) spends about a third of a MiniLM step in its backward pass, and eager attention makes a
    step about a fifth faster; in fp32 on a CPU sdpa is the faster one (BENCHMARKS.md), and GPUs keep their
    fused kernels. Scoring and the saved folder keep the model's own attention. Switching costs under a
    millisecond."""
    own = model.config._attn_implementation
    if not (bf16 and model.device.type == "cpu" and own == "sdpa"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(own)


def _length_batches(pairs: list, batch: int, rng: random.Random) -> list[list]:
    """Batches of similar length (less padding: ~2x faster on hh-rlhf) in random order. Lengths get
    +-25% noise so batches differ between epochs."""
    def size(p):
        return (len(p.prompt) + max(len(p.chosen), len(p.rejected))) * rng.uniform(0.75, 1.25)

    ordered = sorted(pairs, key=size)
    batches = [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    rng.shuffle(batches)
    return batches


def _rewards(model, tokenizer, prompts, answers, max_length, groups: int = FORWARD_GROUPS,
             pad_to_multiple_of: int | None = None):
    """Each (prompt, answer)'s reward, in the order given, from `groups` forward passes over texts of
    similar length: a pair's two answers often differ in length, and one pass pads all to the longest."""
    import torch

    order, parts = [], []
    for idx in batches_by_length(prompts, answers, math.ceil(len(answers) / groups)):
        enc = encode_pairs(tokenizer, [prompts[i] for i in idx], [answers[i] for i in idx], max_length,
                           pad_to_multiple_of=pad_to_multiple_of)
        parts.append(reward_logits(model, enc.to(model.device))[:, 0])
        order += idx
    rewards = torch.cat(parts)
    return rewards[torch.tensor(order, device=rewards.device).argsort()]


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

        with torch.no_grad():  # one fused call over all tensors: a per-tensor loop costs ~2x on a CPU
            torch._foreach_lerp_(list(self.average.values()), [p.detach() for p in self.params.values()],
                                 1.0 - self.decay)

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


def train_full(model, tokenizer, train, val, config, progress, out):
    """Fine-tune `config.members` times from one initialisation (the same head too), each with its own
    data order, and save the average of the members' kept weights (WARM: fine-tunes from a shared start
    stay in one basin, so their weight average is one model that generalises better than any of them).
    The average is saved even when a member's held-out loss is lower: each member's point was picked as
    the minimum of that same loss, which biases such a comparison toward the members. On hh-rlhf the
    lowest-loss member always won it, yet the average scored higher on the test pairs on every seed
    measured (BENCHMARKS.md)."""
    # Where bf16 is not native (older GPUs, most CPUs) it trains in fp32: fp16 would need loss scaling,
    # and emulated bf16 is ~20x slower than fp32 on a CPU. The held-out passes score in the training's
    # precision: in bf16 a pass takes 0.6x the time on an AVX-512 CPU, and on hh-rlhf the kept epoch, the
    # fitted temperature and the saved model's test figures came out the same (BENCHMARKS.md).
    bf16 = config.bf16 and bf16_pays_off(model.device)
    scorer = RewardModel(model, tokenizer, config.max_length, batch_size=config.eval_batch_size, bf16=bf16)
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
                         member_progress, scorer, bf16)
        history += [{**entry, "member": k + 1} if members > 1 else entry for entry in run["history"]]
        runs.append(run)
    epochs = [r["epoch"] for r in runs]
    out.update(best_epoch=epochs[0] if members == 1 else epochs, average_epochs=config.average_epochs,
               dropout=config.dropout, members=members, bf16=bf16)
    if members == 1 and val:  # the kept point was scored on the held-out pairs already
        return history, *runs[0]["scored"]
    if members > 1:
        import torch

        weights = [r["weights"] for r in runs]
        model.load_state_dict({n: torch.stack([w[n] for w in weights]).mean(0) for n in weights[0]}, strict=False)
        if val:
            out["member_val_losses"] = [r["val_loss"] for r in runs]
    model.eval()
    m, rewards = _pair_margins(scorer, val or train)
    return history, m, rewards


def _fine_tune(model, tokenizer, train, val, config, progress, scorer, bf16: bool) -> dict:
    """One fine-tuning run; after every epoch the held-out loss of the served weights (the moving
    average, or the model's own with average_epochs=None) is measured and the best point is kept. With
    `calibrate` that is the loss after temperature scaling, as the saved model will serve: the second epoch
    is often overconfident, which raises its plain loss but not its calibrated one, and on both of hh-rlhf's
    test slices it ranked the pairs better (BENCHMARKS.md).
    Leaves the model holding that point; returns it (with its held-out margins and rewards) and the
    run's history."""
    import torch

    _freeze_lower_layers(model, config.train_layers)
    device = model.device
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW (TRL's default too): the loop version costs ~20x more per step on a CPU, a fifth of
    # a MiniLM training step, most of it on the embedding matrix.
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    epochs, batch = config.epochs, config.batch_size
    per_epoch = math.ceil(len(train) / batch)
    steps = epochs * per_epoch
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up then linear decay to 0
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    average = _WeightAverage(model, config.average_epochs * per_epoch) if config.average_epochs else None
    served = average.applied if average else nullcontext
    val_weights = pair_weights(val) if val else None
    rng = random.Random(config.seed)
    pad_to = _pad_multiple(bf16 and bf16_runs_on_tiles(device), config.max_length)

    best, history, step = None, [], 0
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for chunk in _length_batches(train, batch, rng):
            # Without dropout, chosen and rejected are scored by the same network, as they are when served.
            model.train(config.dropout)
            with _training_attention(model, bf16), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                r = _rewards(model, tokenizer, [p.prompt for p in chunk] * 2,
                             [p.chosen for p in chunk] + [p.rejected for p in chunk], config.max_length,
                             pad_to_multiple_of=pad_to).float()
            weights = pair_weights(chunk).to(device)
            loss = bt_loss(r[:len(chunk)], r[len(chunk):], config, weights)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            if average:
                average.update()
            step += 1
            total, seen = total + loss.item() * weights.sum().item(), seen + weights.sum().item()
            progress(0.95 * step / steps, f"epoch {epoch + 1}/{epochs} step {step}/{steps}")
        # Once an epoch, not more often: each held-out pass costs about a tenth of an epoch's training.
        model.eval()
        entry = {"epoch": epoch + 1, "train_loss": total / seen}
        with served():
            scored = _pair_margins(scorer, val) if val else None
            if val:
                entry["val_loss"] = margin_loss(scored[0], config, val_weights)
                if config.calibrate:  # the saved model will be calibrated: compare the points as it will serve
                    entry["val_loss_calibrated"] = calibrated_loss(scored[0], val_weights)
            score = entry.get("val_loss_calibrated", entry.get("val_loss", entry["train_loss"]))
            if best is None or score < best["score"]:
                best = {"score": score, "epoch": entry["epoch"], "val_loss": entry.get("val_loss"), "scored": scored,
                        "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}
        history.append(entry)
    model.load_state_dict(best["weights"], strict=False)  # parameters only; buffers never change
    model.eval()
    return {**best, "history": history}
