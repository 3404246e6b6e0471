"""A reward model read off a causal LM's frozen middle layer: the mean of the answer tokens' hidden states half
way up the model (the conversation written with the LM's own chat template), under a linear head.

It is fast mode with another reader: the features are computed once per (prompt, answer) and cached, and a
retrain fits only the head. Read this way, the packaged generator SmolLM2-135M-Instruct ranks hh-rlhf's
test pairs better than MiniLM fine-tuned end to end and than TRL's RewardTrainer on MiniLM, and its middle
layers better than its last (BENCHMARKS.md).

The saved folder holds the LM's lower half as a stock model (`AutoModel` loads it; its `last_hidden_state`
is the middle layer through the model's final RMS norm) with its tokenizer, the head in HEAD_FILE, and
reward_config.json with how texts are read. `DecoderRewardModel.load` scores with it."""

from __future__ import annotations

import json
from pathlib import Path

from model.conversation import prompt_messages
from model.generation.types import SMOLLM2
from model.reward.model import REWARD_CONFIG, RewardModel, cut_prompts, mean_pool

HEAD_FILE = "reward_head.safetensors"
KIND = "decoder"  # reward_config.json's "kind" for such a folder
LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0)  # the head's L2 penalties tried, on standardised features


def _feature_dtype():
    """bf16 where this machine's CPU runs it natively, else fp32, on a GPU too: the cached features must not depend
    on whether training (on a GPU) or serving (on the CPU) computed them."""
    from model.generation.local import resolve_dtype

    return resolve_dtype("auto", "cpu")


def load_decoder_base(name: str, cache_dir: Path | None, max_length: int, prompt_tokens: int,
                      batch_size: int, layers: int | None = None) -> "DecoderRewardModel":
    """The causal LM `name` cut to its lower `layers` (default: half of them), under an untrained head (zero
    weights: every reward 0)."""
    import torch

    from model.generation.local import load_causal_lm

    tokenizer, lm = load_causal_lm(name, cache_dir, _feature_dtype())
    backbone = lm.base_model
    layers = layers or backbone.config.num_hidden_layers // 2
    backbone.layers = backbone.layers[:layers]
    backbone.config.num_hidden_layers = layers
    if isinstance(getattr(backbone.config, "layer_types", None), list):  # per-layer attention kinds
        backbone.config.layer_types = backbone.config.layer_types[:layers]
    score = torch.nn.Linear(backbone.config.hidden_size, 1)
    torch.nn.init.zeros_(score.weight)
    torch.nn.init.zeros_(score.bias)
    return DecoderRewardModel(backbone, tokenizer, score, max_length, prompt_tokens, batch_size)


class DecoderRewardModel(RewardModel):
    """Rewards from a causal LM's lower half: `score`(mean of the answer tokens' last hidden states). With a
    FeatureCache (`cache`), features already computed for a (prompt, answer) are looked up, not encoded."""

    def __init__(self, backbone, tokenizer, score, max_length: int, prompt_tokens: int, batch_size: int = 16,
                 cache=None):
        super().__init__(backbone, tokenizer, max_length, batch_size=batch_size, prompt_tokens=prompt_tokens)
        self.score = score  # named as transformers' decoder heads: calibration.scale_rewards scales it
        self.cache = cache

    @classmethod
    def load(cls, path, cache=None) -> "DecoderRewardModel":
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from model.reward.model import quiet_transformers

        path = Path(path)
        settings = json.loads((path / REWARD_CONFIG).read_text())
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(path, dtype=_feature_dtype())
            tokenizer = AutoTokenizer.from_pretrained(path)
        head = load_file(path / HEAD_FILE)
        score = torch.nn.Linear(head["weight"].shape[1], 1)
        score.load_state_dict(head)
        return cls(backbone, tokenizer, score, int(settings["max_length"]), int(settings["prompt_tokens"]), cache=cache)

    def save_pretrained(self, folder) -> None:
        """The backbone as transformers saves it, and the head (the tokenizer and reward_config.json are the
        trainer's to write, as for every version)."""
        from safetensors.torch import save_file

        self.model.save_pretrained(folder)
        save_file({k: v.detach().float().contiguous() for k, v in self.score.state_dict().items()},
                  Path(folder) / HEAD_FILE)

    def to(self, device) -> "DecoderRewardModel":
        self.model.to(device)
        return self

    def features(self, prompts: list[str], answers: list[str], progress=lambda fraction, message: None):
        """The (n, hidden) features of each (prompt, answer): from the cache where it has them."""
        from model.reward.features import FeatureCache

        cache = self.cache or FeatureCache("uncached", self.max_length, KIND, None)
        return cache.compute_with(self._encode_batch, prompts, answers, self.batch_size, progress,
                                  order=pair_order(prompts, answers))

    def rewards(self, prompts: list[str], answers: list[str]) -> list[float]:
        import torch

        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if not answers:
            return []
        features, _ = self.features(prompts, answers)
        with torch.inference_mode():
            return self.score(features)[:, 0].tolist()

    def rewards_by_key(self, keys) -> dict[str, float]:
        """{key: reward} for the feature-cache keys (`FeatureCache.key(prompt, answer)`) whose features are
        cached; the others are left out (their texts must go through `rewards`)."""
        import torch

        present, features = self.cache.cached(keys) if self.cache is not None else ([], None)
        if not present:
            return {}
        with torch.inference_mode():
            return dict(zip(present, self.score(features)[:, 0].tolist()))

    def _token_ids(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """(token ids, how many of the last are the answer's): the prompt then the answer as one conversation,
        at most max_length tokens (the prompt's start and then the answer's end dropped to fit)."""
        tok = self.tokenizer
        if tok.chat_template:
            messages = prompt_messages(prompt)
            head = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False))
            whole = list(tok.apply_chat_template(messages + [{"role": "assistant", "content": answer}],
                                                 tokenize=True, return_dict=False))
            answer_ids = whole[len(head):] if whole[:len(head)] == head else \
                tok(answer, add_special_tokens=False)["input_ids"]
        else:  # a base LM: the texts one after the other, the answer closed by EOS
            head = tok(prompt)["input_ids"]
            answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        answer_ids = answer_ids[:max(self.max_length // 2, self.max_length - len(head))] or [tok.eos_token_id]
        head = head[max(0, len(head) - (self.max_length - len(answer_ids))):]
        return head + answer_ids, len(answer_ids)

    def _encode_batch(self, prompts: list[str], answers: list[str]):
        """Features of one batch: the answer tokens' last hidden states averaged (`answer_states`)."""
        outputs, mask = self.answer_states(prompts, answers)
        return mean_pool(outputs.last_hidden_state.float(), mask)

    def answer_states(self, prompts: list[str], answers: list[str], **forward):
        """(the model's outputs over the answer tokens, the answer tokens' mask), `forward` passed on. Each
        distinct conversation head (system, prompt, the assistant's cue) goes through the model once, and its
        answers continue from its cached keys and values (a pair's two answers share their prompt: about a
        third less work on hh-rlhf). Both passes are right-padded, every token at the position it has alone,
        so a feature does not depend on its batch."""
        import torch

        with self._tokenizer_lock:
            cut = cut_prompts(self.tokenizer, prompts, self.prompt_tokens)
            rows = [self._token_ids(p, a) for p, a in zip(cut, answers)]
        heads: dict[tuple, int] = {}
        row_head = [heads.setdefault(tuple(ids[:len(ids) - n]), len(heads)) for ids, n in rows]
        head_ids, head_mask = self._padded(list(heads))
        answer_ids, answer_mask = self._padded([ids[len(ids) - n:] for ids, n in rows])
        device = self.model.device
        cache = self.model(input_ids=head_ids.to(device), attention_mask=head_mask.to(device), use_cache=True).cache
        index = torch.tensor(row_head)
        cache.batch_select_indices(index.to(device))  # each row continues from its own head
        positions = head_mask.sum(1)[index].unsqueeze(1) + torch.arange(answer_ids.shape[1])
        outputs = self.model(input_ids=answer_ids.to(device), cache=cache, position_ids=positions.to(device),
                             attention_mask=torch.cat([head_mask[index], answer_mask], 1).to(device), **forward)
        return outputs, answer_mask.to(device)

    def _padded(self, sequences: list) -> tuple:
        """(ids, attention mask) of token sequences, right-padded to the longest."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(sequences), max(map(len, sequences))), pad, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.long)
        for r, sequence in enumerate(sequences):
            ids[r, :len(sequence)] = torch.tensor(sequence)
            mask[r, :len(sequence)] = 1
        return ids, mask


def pair_order(prompts: list[str], answers: list[str]):
    """A sort key over the texts' indices that puts a prompt's answers side by side (so they share its pass) and
    the prompts by their longest answer (so a batch pads little)."""
    longest: dict[str, int] = {}
    for prompt, answer in zip(prompts, answers):
        longest[prompt] = max(longest.get(prompt, 0), len(answer))
    return lambda i: (longest[prompts[i]], prompts[i], len(answers[i]))


def fit_head(score, chosen, rejected, weights, splits, progress, out):
    """Set the linear head `score` (a Linear to one output) from the pairs' features: L2-penalised Bradley-Terry
    (a logistic regression on the chosen-minus-rejected differences, the features standardised), the penalty
    chosen by the held-out loss.

    `splits` are (fitted, held-out) index tensors with disjoint held-out sets: cross-fitting folds (every pair
    held out once, as in fast mode), one held-out split, or one split holding nothing out (then the middle
    penalty, and the margins are the training pairs'). For each penalty one head per split is fitted; the
    penalty whose heads' held-out loss is lowest wins, and its heads' average is kept. Returns (history, the
    held-out pairs' margins in pair order, the kept head's rewards of every chosen then every rejected answer)."""
    import torch
    import torch.nn.functional as F

    n = len(chosen)
    held = torch.cat([v for _, v in splits]).sort().values
    scale = torch.cat([chosen, rejected]).std(0).clamp(min=1e-6)
    diffs = (chosen - rejected) / scale
    w = weights / weights.mean()
    tried = LAMBDAS if len(held) else (LAMBDAS[len(LAMBDAS) // 2],)
    history, best = [], None
    for step, penalty in enumerate(tried):
        heads = [_logistic(diffs[t], w[t], penalty) for t, _ in splits]
        margins = torch.empty(n)
        for head, (_, v) in zip(heads, splits):
            margins[v] = diffs[v] @ head
        entry = {"epoch": step + 1, "l2": penalty,
                 "train_loss": sum((F.softplus(-(diffs[t] @ h)) * w[t]).sum().item() / w[t].sum().item()
                                   for h, (t, _) in zip(heads, splits)) / len(splits)}
        if len(held):
            entry["val_loss"] = (F.softplus(-margins[held]) * w[held]).sum().item() / w[held].sum().item()
        history.append(entry)
        loss = entry.get("val_loss", entry["train_loss"])
        if best is None or loss < best[0]:
            best = (loss, penalty, torch.stack(heads).mean(0), margins)
        progress(0.5 + 0.45 * (step + 1) / len(tried), f"head: L2 {penalty:g}, loss {loss:.4f}")
    _, penalty, head, margins = best
    weight = head / scale
    features = torch.cat([chosen, rejected])
    with torch.no_grad():
        score.weight.copy_(weight.unsqueeze(0))
        score.bias.fill_(-(features.mean(0) @ weight).item())  # rewards centred on 0
        rewards = score(features)[:, 0]
    margins = margins[held] if len(held) else diffs @ head
    # The average of cross-fitted heads spreads its margins less than the heads did (train.py's temperature).
    spread = (rewards[:n] - rewards[n:])[held].std().item() / margins.std().item() \
        if len(splits) > 1 and margins.std() > 0 else 1.0
    out.update(l2=penalty, average_spread=round(spread, 4))
    return history, margins.tolist(), rewards.tolist()


def _logistic(x, weights, penalty: float):
    """argmin_w mean_i weights_i * softplus(-x_i . w) + penalty * |w|^2 (L-BFGS: convex, a few dozen steps)."""
    import torch

    w = torch.zeros(x.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = (torch.nn.functional.softplus(-(x @ w)) * weights).mean() + penalty * (w * w).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return w.detach()


def train_decoder(scorer: DecoderRewardModel, train, val, folds, config, progress, out):
    """Features of every pair (cached in config.feature_cache_dir), then the head (`fit_head`): cross-fitted
    on `folds` (indices into `train`, which then holds every pair), else fitted on `train` and held out on `val`."""
    import time

    import torch

    from model.reward.fast import _one_thread
    from model.reward.objective import pair_weights

    scorer.cache = open_feature_cache(config.base_model, config.max_length, config.prompt_tokens,
                                      config.feature_cache_dir)
    pairs = train + val
    started = time.perf_counter()
    features, encoded = scorer.features([p.prompt for p in pairs] * 2,
                                        [p.chosen for p in pairs] + [p.rejected for p in pairs],
                                        lambda f, m: progress(0.5 * f, m))
    out.update(feature_seconds=round(time.perf_counter() - started, 2), features_encoded=encoded)
    n, everyone = len(pairs), set(range(len(pairs)))
    if folds:
        splits = [(torch.tensor(sorted(everyone - set(f))), torch.tensor(sorted(f))) for f in folds]
    else:
        splits = [(torch.arange(len(train)), torch.arange(len(train), n))]
    out["folds"] = len(folds) if folds else 1
    with _one_thread():  # small matrix products: thread hand-offs cost more than they save
        return fit_head(scorer.score, features[:n], features[n:], pair_weights(pairs), splits, progress, out)


def open_feature_cache(base_model: str, max_length: int, prompt_tokens: int, folder: Path | None):
    """The feature cache of this base read this way (FeatureCache.open), keyed for the packaged model by its
    weights' file."""
    from model.reward.features import FeatureCache

    if base_model == SMOLLM2:
        from model.generation.local import smollm2_gguf

        base_model = str(smollm2_gguf())
    return FeatureCache.open(base_model, max_length, f"{KIND}|{prompt_tokens}", folder)
