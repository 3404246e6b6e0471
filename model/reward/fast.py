"""Fast mode: the encoder stays frozen; only BERT's own head (pooler dense+tanh, then the classifier) trains
on cached first-token features, so the saved model is the unchanged architecture and scores identically.

With `folds` > 1 (3 by default) the head is cross-fitted: that many heads from one start, each trained on
all the prompts but one fold's and stopped early on that fold, are averaged into the saved head, so every
pair trains and every pair is held out once. On two held-out slices of hh-rlhf three folds at max_length 512
scored 63.2% and 62.6%, one head 62.7% / 61.5% (at 256: 62.8% / 60.4%), for three times the head's fitting
time, about 1.4 s at 1,300 pairs (BENCHMARKS.md)."""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager

from model.reward.features import FeatureCache
from model.reward.model import resolve_base_model
from model.reward.objective import bt_loss, margin_loss, pair_weights


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


def train_fast(model, tokenizer, train, val, config, progress, out, folds=None):
    """Fit the head on `train`, stopped early on `val`; with `folds` (indices into `train`, which then
    holds every pair and `val` none), cross-fit one head per fold (`_cross_fit`)."""
    import torch

    base_path = resolve_base_model(config.base_model)
    cache = FeatureCache.open(base_path, config.max_length, out["pooling"], config.feature_cache_dir)
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
        if folds:
            return _cross_fit(model, chosen, rejected, pair_weights(everything), folds, config, progress, out)
        return _fit_head(model, chosen, rejected, pair_weights(everything), t_idx, v_idx, config, progress, out)


def _cross_fit(model, chosen, rejected, weights, folds, config, progress, out):
    """One head per fold from the same start, trained on the other folds and stopped early on its own; the
    model keeps their weight average (heads from one start stay close: their average is one good head).
    Returns the history, each pair's margin under the head that did not train on it, and the average's
    rewards on every pair."""
    import torch

    head, modules = _bert_head(model)
    start = copy.deepcopy(modules.state_dict())
    n = len(chosen)
    held_out_margins, states, history, best_epochs = torch.empty(n), [], [], []
    for k, fold in enumerate(folds):
        modules.load_state_dict(start)
        v_idx = torch.tensor(fold)
        t_idx = torch.tensor(sorted(set(range(n)) - set(fold)))

        def fold_progress(fraction, message, k=k):
            progress(0.5 + (k + (fraction - 0.5) / 0.45) * 0.45 / len(folds), f"head {k + 1}/{len(folds)}: {message}")

        fold_out: dict = {}
        fold_history, margins, _ = _fit_head(model, chosen, rejected, weights, t_idx, v_idx, config, fold_progress,
                                             fold_out)
        held_out_margins[v_idx] = torch.tensor(margins)
        states.append(copy.deepcopy(modules.state_dict()))
        history += [{**entry, "member": k + 1} for entry in fold_history]
        best_epochs.append(fold_out["best_epoch"])
    modules.load_state_dict({name: torch.stack([s[name] for s in states]).mean(0) for name in start})
    with torch.no_grad():
        rewards = torch.cat([head(chosen, False), head(rejected, False)])
    # The average's margins spread less than its heads' (by 2-12% on hh-rlhf): a temperature fitted on the
    # heads' held-out margins is multiplied by this to fit the average (train.py).
    heads_spread = held_out_margins.std().item()
    spread = (rewards[:n] - rewards[n:]).std().item() / heads_spread if heads_spread > 0 else 1.0
    out.update(folds=len(folds), best_epoch=best_epochs, average_spread=round(spread, 4))
    return history, held_out_margins.tolist(), rewards.tolist()


@contextmanager
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_head(model, chosen, rejected, weights, t_idx, v_idx, config, progress, out):
    import torch

    head, modules = _bert_head(model)
    # Fused AdamW: its per-tensor loop took a sixth of the head fit's time.
    optimizer = torch.optim.AdamW(modules.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay, fused=True)
    epochs, batch = config.epochs, config.batch_size
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
            r = head(torch.cat([chosen[idx], rejected[idx]]), True)  # one call for both: half the per-call overhead
            loss = bt_loss(r[:len(idx)], r[len(idx):], config, weights[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * weights[idx].sum().item()
        entry = {"epoch": epoch, "train_loss": total / weights[t_idx].sum().item()}
        if len(v_idx):
            entry["val_loss"] = margin_loss(margins(v_idx), config, weights[v_idx])
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
