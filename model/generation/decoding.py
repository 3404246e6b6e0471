"""Batched sampling for small causal LMs, faster than `model.generate` on a CPU.

At 135M parameters `generate` spends most of each step outside the matrix products: it grows the KV
cache by concatenation, runs SDPA's flash kernel for a single query token (slow on CPUs), and sorts and
samples over the whole 49k vocabulary. This loop keeps the model's own forward pass but
- preallocates the KV cache (`StaticCache`),
- attends for the one new token with two small matrix products per layer (`decode_attention`),
- samples among the top-k tokens only, which gives exactly the distribution of transformers'
  temperature -> top-k -> top-p warpers, since everything outside the top k has probability zero there,
- runs a prompt's prefill once for its n answers, and stops computing rows that have produced EOS.
`BENCHMARKS.md` has the figures; `tests/test_decoding.py` checks it token for token against `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface, AttentionMaskInterface, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTENTION = "rlhf_decode"


def decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention as SDPA computes it; for a single query token (decoding), as grouped matrix products.

    Query heads [j*g, (j+1)*g) share key/value head j (the layout of transformers' `repeat_kv`), so the
    query is viewed as (batch, kv_heads, g, dim) and no key or value is copied."""
    if query.shape[2] != 1 or dropout or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:
        mask = attention_mask[..., :key.shape[2]]  # (batch, 1, 1, kv_len)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)  # (batch, kv_heads, g, dim)
    return out.reshape(batch, 1, heads, dim), None


AttentionInterface.register(ATTENTION, decode_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0   # 0: greedy
    top_k: int | None = 50     # transformers' default; None or 0: the whole vocabulary
    top_p: float = 1.0


def next_tokens(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """One token per row, drawn as transformers draws it with temperature, top-k and top-p."""
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    k = min(sampling.top_k or logits.shape[-1], logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)  # most likely first; a temperature does not change the order
    probs = torch.softmax(values.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        # Drop a token once the more likely ones before it already hold top_p of the mass (the first stays).
        drop = probs.cumsum(dim=-1) - probs >= sampling.top_p
        drop[:, 0] = False
        probs = probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(probs, 1)
    return indices.gather(-1, choice).squeeze(-1)


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token, as `generate` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def keep_cache_rows(cache: StaticCache, index: torch.Tensor) -> None:
    """Reorder, copy or drop the cache's batch rows: row i becomes old row index[i]."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[index], layer.values[index]


def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, n: int = 1, max_new_tokens: int,
           sampling: Sampling, eos_ids: list[int], pad_id: int) -> torch.Tensor:
    """`n` answers for each left-padded prompt: new tokens (prompts * n, max_new_tokens), the answers of a
    prompt on adjacent rows; after a row's EOS, `pad_id`.

    The model should use `ATTENTION` (see `use_fast_decoding`); any attention gives the same tokens, slower."""
    prompt_len = input_ids.shape[1]
    device = input_ids.device
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_new_tokens)
    mask = torch.cat([attention_mask.long(), attention_mask.new_ones(len(input_ids), max_new_tokens).long()], 1)
    positions = left_padded_positions(attention_mask)
    logits = model(input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                   cache_position=torch.arange(prompt_len, device=device), logits_to_keep=1).logits[:, -1]
    # The n answers of a prompt share its prefill: compute it once, then copy the cache.
    copies = torch.arange(len(input_ids), device=device).repeat_interleave(n)
    keep_cache_rows(cache, copies)
    logits, mask, position = (t[copies] for t in (logits, mask, positions[:, -1:]))

    eos = torch.tensor(eos_ids, device=device)
    out = torch.full((len(logits), max_new_tokens), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(len(logits), device=device)  # the row of `out` each batch row writes to
    finished = torch.zeros(len(logits), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = next_tokens(logits, sampling)
        out[rows, step] = torch.where(finished, pad_id, token)
        finished |= torch.isin(token, eos)
        done = int(finished.sum())
        if step + 1 == max_new_tokens or done == len(rows):
            break
        if done * 4 >= len(rows):  # stop computing finished rows once they are a quarter of the batch
            keep = (~finished).nonzero().squeeze(1)
            keep_cache_rows(cache, keep)
            rows, token, mask, position, finished = (t[keep] for t in (rows, token, mask, position, finished))
        position = position + 1
        logits = model(token[:, None], attention_mask=mask, position_ids=position, cache=cache,
                       cache_position=torch.tensor([prompt_len + step], device=device)).logits[:, -1]
    return out


def use_fast_decoding(model) -> bool:
    """Switch a loaded model to `decode_attention` (it falls back to SDPA wherever it does not apply);
    False, and the model unchanged, where `sample` cannot run it: no static KV cache (e.g. state-space
    models) or no pluggable attention."""
    if not getattr(model, "_can_compile_fullgraph", False) or getattr(model, "_is_stateful", False):
        return False
    try:
        model.set_attn_implementation(ATTENTION)
    except (ValueError, ImportError, NotImplementedError):
        return False
    return True
