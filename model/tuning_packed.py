"""DPO with each prompt read once: a pair is one row, prompt + chosen + rejected, in which the rejected
answer's tokens see the prompt but not the chosen answer (a block of a 4D attention mask) and take up the
prompt's positions where the chosen answer does. TRL's DPOTrainer puts the prompt in two rows, one per
answer, so every forward and backward pass reads it twice; prompts are most of a pair (the first 1,000
hh-rlhf pairs: 120 of ~165 tokens a row, 331 tokens a pair in two rows against 211 in one). The
log-probabilities are the same as two rows' (up to rounding): every token sees exactly the context it would
see in its own row, at the same position.

Rows of a micro-batch are padded to the longest (tuning.length_grouped_order puts pairs of similar length
together): one row per pair keeps attention quadratic in a pair, not in the micro-batch. Only the positions
that predict an answer token go through the LM head (`TokenLogProbs`), a slice of them at a time, and the
gradient with respect to the hidden state is worked out on the spot, so no [tokens x vocabulary] logits
outlive their slice.

`PairRows` is the collator; `PackedDPOTrainer` is TRL's DPOTrainer with the sigmoid DPO loss computed from
those rows, the reference being the policy with its LoRA adapter switched off. Both need an attention that
takes a 4D mask (sdpa, eager) and a plain LM head; `packs(model)` says whether the model has them.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl import DPOTrainer

PACKABLE_ATTENTION = ("sdpa", "eager")
HEAD_SLICE = 256  # answer tokens per LM-head product: 256 x 49k logits in float32 is 50 MB


def packs(model) -> bool:
    config = model.config.get_text_config()
    plain_head = not any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale",
                                                                    "logits_scaling", "output_multiplier"))
    return getattr(model.config, "_attn_implementation", None) in PACKABLE_ATTENTION and plain_head


@dataclass
class PairRows:
    """Collates TRL's tokenized rows ({prompt_ids, chosen_ids, rejected_ids}) into one row per pair, padded to
    the longest. An answer that does not fit in `max_length` with its prompt loses its end, as TRL's collator
    cuts it."""

    max_length: int
    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        n = len(examples)
        pieces = []
        for example in examples:
            prompt = list(example["prompt_ids"])
            room = max(self.max_length - len(prompt), 0)
            pieces.append((prompt, list(example["chosen_ids"])[:room], list(example["rejected_ids"])[:room]))
        width = max(len(p) + len(c) + len(r) for p, c, r in pieces)
        ids = torch.full((n, width), self.pad_token_id)
        positions = torch.zeros((n, width), dtype=torch.long)
        mask = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding sees itself only (no empty softmax)
        keep, targets, owner = [], [], []
        for i, (prompt, chosen, rejected) in enumerate(pieces):
            p, c, r = len(prompt), len(chosen), len(rejected)
            ids[i, :p + c + r] = torch.tensor(prompt + chosen + rejected)
            positions[i, :p + c + r] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
            mask[i, :p + c + r, :p + c + r] = torch.ones(p + c + r, p + c + r, dtype=torch.bool).tril_()
            mask[i, p + c:p + c + r, p:p + c] = False  # the rejected answer does not see the chosen one
            # the token at position t is predicted at t - 1; each answer's first token, at the prompt's end
            row = i * width
            keep += [row + p - 1 + j for j in range(c)]
            keep += [row + p - 1] + [row + p + c + j - 1 for j in range(1, r)] if r else []
            targets += chosen + rejected
            owner += [i] * c + [n + i] * r  # chosen sums land in 0..n-1, rejected in n..2n-1
        return {"input_ids": ids, "position_ids": positions, "attention_mask": mask[:, None],
                "keep": torch.tensor(keep), "targets": torch.tensor(targets), "owner": torch.tensor(owner)}


class TokenLogProbs(torch.autograd.Function):
    """log p(target) of each hidden state under a frozen LM head, a slice of tokens at a time. Its gradient
    with respect to the hidden state, W^T (onehot - softmax), is computed with the forward product, so the
    backward pass needs no logits: one [slice x vocabulary] block is alive at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else hidden.dtype
        w = weight.to(dtype)
        logps = torch.empty(len(hidden), device=hidden.device)
        grad = torch.empty(hidden.shape, device=hidden.device) if ctx.needs_input_grad[0] else None
        for start in range(0, len(hidden), HEAD_SLICE):
            part = slice(start, start + HEAD_SLICE)
            log_probs = torch.log_softmax((hidden[part].to(dtype) @ w.T).float(), dim=-1)
            logps[part] = log_probs.gather(1, targets[part, None])[:, 0]
            if grad is not None:
                d_logits = log_probs.exp_().neg_()  # d log p(target) / d logits = onehot - softmax
                d_logits.scatter_add_(1, targets[part, None], torch.ones(len(d_logits), 1, device=hidden.device))
                grad[part] = (d_logits.to(dtype) @ w).float()
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        (grad,) = ctx.saved_tensors
        return (grad * grad_logps[:, None]).to(ctx.hidden_dtype), None, None


def pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each pair's chosen and rejected answer (PairRows)."""
    mask = batch["attention_mask"]
    if getattr(model.config, "_attn_implementation", None) == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 attention_mask=mask, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    if (head.weight.requires_grad and torch.is_grad_enabled()) or getattr(head, "bias", None) is not None:
        raise ValueError("packed DPO scores answers with a frozen LM head without bias")
    token_logps = TokenLogProbs.apply(hidden.flatten(0, 1)[batch["keep"]], head.weight, batch["targets"])
    n = len(batch["input_ids"])
    sums = torch.zeros(2 * n, device=token_logps.device).index_add(0, batch["owner"], token_logps)
    return sums[:n], sums[n:]


def decoder_layers(model):
    """The decoder's layer list (Llama, Qwen, Mistral, Gemma, SmolLM...), or None."""
    layers = getattr(model.get_decoder(), "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


@contextmanager
def capture_output(layer, into: list):
    handle = layer.register_forward_hook(lambda module, args, output: into.append(output))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def start_above(layers, first: int, hidden):
    """Run the model from layer `first` on: the layers below it pass their input through and the last of them
    hands on `hidden`, the output it gave before (the policy and the reference share those layers exactly
    when only the layers from `first` on carry the adapter)."""
    for layer in layers[:first - 1]:
        layer.forward = lambda hidden_states, *args, **kwargs: hidden_states
    layers[first - 1].forward = lambda *args, **kwargs: hidden
    try:
        yield
    finally:
        for layer in layers[:first]:
            del layer.forward


class PackedDPOTrainer(DPOTrainer):
    """DPOTrainer's sigmoid loss over PairRows; the reference is the adapter switched off. With
    `first_adapted` (the lowest layer with an adapter), the reference starts from the policy's output of the
    layers below it instead of computing them again."""

    def __init__(self, *args, first_adapted: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_adapted = first_adapted

    def _compute_loss(self, model, inputs, return_outputs):
        unwrapped = self.accelerator.unwrap_model(model)
        layers = decoder_layers(unwrapped.get_base_model())
        shared = layers is not None and 0 < self.first_adapted < len(layers)
        trunk: list = []
        with capture_output(layers[self.first_adapted - 1], trunk) if shared else nullcontext():
            chosen, rejected = pair_logps(model, inputs)
        with torch.no_grad(), unwrapped.disable_adapter(), \
                start_above(layers, self.first_adapted, trunk[0]) if shared else nullcontext():
            ref_chosen, ref_rejected = pair_logps(model, inputs)
        chosen_rewards = self.beta * (chosen - ref_chosen)
        rejected_rewards = self.beta * (rejected - ref_rejected)
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()

        metrics = self._metrics["train" if self.model.training else "eval"]
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        for key, value in (("rewards/chosen", chosen_rewards.mean()), ("rewards/rejected", rejected_rewards.mean()),
                           ("rewards/accuracies", (chosen_rewards > rejected_rewards).float().mean()),
                           ("rewards/margins", (chosen_rewards - rejected_rewards).mean()),
                           ("logps/chosen", chosen.detach().mean()), ("logps/rejected", rejected.detach().mean())):
            metrics[key].append(value.item())
        return (loss, {}) if return_outputs else loss
