"""Generator tuning: DPO on preference pairs with TRL's DPOTrainer and a LoRA adapter on the linear layers (of
the top third of the decoder layers on a CPU, of all on a GPU), merged into the weights at the end, so what is
saved is a plain causal LM.

`tune(pairs, base, out_dir, config, progress)` writes into `out_dir` a `save_pretrained` folder that
`AutoModelForCausalLM.from_pretrained` and `model.generation` load unchanged, plus `tuning.json` (what it was
tuned from, on which prompts, how, and the training figures), and returns that record.

How the pairs are shown to the policy: a chat model gets TRL's conversational form, the prompt turn by turn
through its chat template exactly as the generator sends it (with the same system prompt), each answer as one
assistant message; a model without a template gets the transcript as text, each answer after a space,
ending with EOS. Prompts lose their oldest turns beyond `max_prompt_tokens` (the generator keeps more: the
latest turns carry the question). The reference model is the base itself (the adapter switched off).
A pair's `weight` is not used: every pair counts once.

Where the time goes on a CPU (BENCHMARKS.md): every pair costs a forward pass of the policy and of the
reference and a backward pass, over the prompt and both answers. The prompt is read once for both answers (a
pair is one row: model/tuning_packed.py), which changes no log-probability. On a CPU the adapter goes on the
top third of the layers by default (`lora_layers`): the backward pass stops there and the reference reuses
the policy's output of the layers below, about half the time, and at three times the learning rate (the
default rate rises with the share of layers left out) it gained as much as every layer in the simulated
loop. On a GPU it goes on every layer, and a micro-batch is the whole batch. bf16 runs as autocast over fp32
weights where the CPU (or GPU) has native bf16, so the merge happens in fp32 and loses nothing; no gradient
checkpointing (135M parameters fit).
"""

from __future__ import annotations

import hashlib
import json
import random
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from model.conversation import prompt_messages, prompt_text
from model.pairs import PreferencePair

TUNING_FILE = "tuning.json"
CPU_MICRO_BATCH = 2  # pairs per forward pass on a CPU: 1,000 hh-rlhf pairs peaked at 2.5 GiB (top third), 5.2 (all)
LEARNING_RATE = 5e-5  # of an adapter on every layer (DPO on all weights takes ~1e-6)
CPU_LORA_SHARE = 3  # on a CPU the adapter covers the top 1/3 of the layers unless told otherwise
MAX_RATE_SCALE = 3.0  # an adapter on fewer layers learns at up to 3x: on a third, 3x gained as much (BENCHMARKS.md)
Progress = Callable[[float, str], None]


class TuningError(ValueError):
    """Bad input or an impossible setting; the message is one line and names what to change."""


@dataclass(frozen=True)
class TuneConfig:
    epochs: float = 1.0
    learning_rate: float | None = None  # of the LoRA weights; None: default_learning_rate(layers, lora_layers)
    beta: float = 0.1                 # DPO's KL strength: higher stays closer to the base
    batch_size: int = 8               # pairs per optimizer step
    micro_batch_size: int | None = None  # pairs per forward/backward pass; None: 2 on a CPU, batch_size on a GPU
    lora_r: int = 16
    lora_alpha: int | None = None     # None: twice the rank
    lora_layers: int | None = None    # adapter on the top N decoder layers (N >= their number: all); None:
    #                                   default_lora_layers (a third on a CPU, all on a GPU)
    packed: bool = True               # a pair as one row, its prompt read once (tuning_packed); False: TRL's rows
    max_prompt_tokens: int = 256      # a longer prompt loses its oldest turns
    max_length: int = 512             # prompt + answer tokens; a longer answer is cut at the end
    time_budget: float | None = None  # seconds from the start of tune() to the last training step
    bf16: bool = True                 # mixed precision where bf16 is native (never emulated: ~20x slower)
    system_prompt: str | None = None  # as the generator's SYSTEM_PROMPT: the policy is tuned on what it is sent
    seed: int = 0
    threads: int | None = None        # torch intra-op threads
    cache_dir: Path | None = None     # where the packaged GGUF is converted once (the generator's cache)

    def __post_init__(self):
        if self.time_budget is not None and not self.time_budget > 0:
            raise TuningError(f"the time budget must be more than 0 seconds, got {self.time_budget}")
        for name in ("epochs", "learning_rate", "beta"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise TuningError(f"{name} must be more than 0, got {getattr(self, name)}")
        for name in ("batch_size", "lora_r", "lora_layers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TuningError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise TuningError(f"micro_batch_size must be between 1 and batch_size ({self.batch_size}), "
                              f"got {self.micro_batch_size}")
        if not 8 <= self.max_prompt_tokens < self.max_length:
            raise TuningError(f"max_prompt_tokens ({self.max_prompt_tokens}) must be at least 8 and below "
                              f"max_length ({self.max_length})")


def default_lora_layers(layers: int, on_gpu: bool) -> int:
    """Every layer on a GPU; on a CPU the top third (at least one): a round in about half the time and memory,
    which at the raised learning rate gained as much in the simulated loop (BENCHMARKS.md)."""
    return layers if on_gpu else max(1, round(layers / CPU_LORA_SHARE))


def default_learning_rate(layers: int, lora_layers: int) -> float:
    """LEARNING_RATE for an adapter on every layer; on the top `lora_layers` only, each of them has to move further
    for the same change, so the rate rises with layers / lora_layers, at most MAX_RATE_SCALE times."""
    return LEARNING_RATE * min(MAX_RATE_SCALE, layers / lora_layers)


def prompt_hash(prompt: str) -> str:
    """A prompt's identity in tuning.json: which prompts a version was tuned on, without storing them."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def usable_pairs(pairs: list[PreferencePair]) -> list[PreferencePair]:
    """Pairs DPO can learn from: a prompt and two different, non-empty answers."""
    return [p for p in pairs if p.prompt.strip() and p.chosen.strip() and p.rejected.strip()
            and p.chosen.strip() != p.rejected.strip()]


def check_causal_lm(base: str) -> None:
    """TuningError, before any weights load, when `base` is a model folder whose saved architecture is not
    a causal language model (a reward model, a sentence encoder)."""
    folder = Path(base).expanduser()
    if not folder.is_dir():
        if base.startswith(("/", ".", "~")) and not base.endswith(".gguf"):
            raise TuningError(f"there is no model folder at {base}")
        return  # "smollm2", a .gguf file or a hub id: the loader says what is wrong with it
    config = folder / "config.json"
    if not config.is_file():
        raise TuningError(f"{folder} is not a model folder (no config.json)")
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise TuningError(f"{config} is not a readable model config: {exc}") from None
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise TuningError(f"{folder} holds a {', '.join(architectures)}, not a causal language model; "
                          "tune a generator (smollm2, a Hugging Face id or a folder written by tune)")


def load_base(base: str, cache_dir: Path | None):
    """(tokenizer, fp32 model) of the generator to start from, loaded as the generator loads it."""
    import torch

    from model.generation.local import load_causal_lm
    from model.generation.types import GenerationError

    from model.reward.model import quiet_transformers

    check_causal_lm(base)
    try:
        with quiet_transformers():
            tok, model = load_causal_lm(base, cache_dir, torch.float32)
    except GenerationError as exc:
        raise TuningError(str(exc).splitlines()[0]) from None
    if not model.can_generate():
        raise TuningError(f"{base} loads as a {type(model).__name__}, which cannot generate text")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, model


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def fit_prompt(tok, prompt: str, system: str | None, max_tokens: int):
    """The prompt as the policy will read it, within `max_tokens`: chat messages (oldest turns dropped, then
    the last message cut from the left) for a chat model, else the transcript text cut from the left.
    Returns (prompt, its token count)."""
    if not tok.chat_template:
        ids = tok(prompt_text(prompt))["input_ids"]
        return (tok.decode(ids[-max_tokens:]) if len(ids) > max_tokens else prompt_text(prompt)), min(len(ids), max_tokens)
    messages = prompt_messages(prompt, system)
    head = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(head):]

    def count(turns):
        return len(_ids(tok.apply_chat_template(head + turns, add_generation_prompt=True, tokenize=True)))

    n = count(turns)
    while n > max_tokens and len(turns) > 1:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] == "assistant":  # a conversation starts with the user
            turns = turns[1:]
        n = count(turns)
    for _ in range(4):  # the last message alone is too long: keep its end
        if n <= max_tokens:
            break
        content = tok(turns[-1]["content"], add_special_tokens=False)["input_ids"]
        keep = max(1, len(content) - (n - max_tokens))
        turns = turns[:-1] + [{**turns[-1], "content": tok.decode(content[-keep:])}]
        n = count(turns)
    return head + turns, n


def dpo_rows(tok, pairs: list[PreferencePair], config: TuneConfig) -> tuple[list[dict], list[int]]:
    """TRL preference rows (conversational for a chat model, else text) and each pair's length in tokens as
    one packed row (prompt and both answers)."""
    rows, lengths = [], []
    for p in pairs:
        prompt, n_prompt = fit_prompt(tok, p.prompt, config.system_prompt, config.max_prompt_tokens)
        chosen, rejected = p.chosen.strip(), p.rejected.strip()
        if tok.chat_template:
            row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                   "rejected": [{"role": "assistant", "content": rejected}]}
        else:
            row = {"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected}
        rows.append(row)
        room = config.max_length - n_prompt
        lengths.append(n_prompt + sum(min(len(tok(a)["input_ids"]), room) for a in (chosen, rejected)))
    return rows, lengths


def length_grouped_order(lengths: list[int], batch: int, seed: int) -> list[int]:
    """A shuffled order in which each run of `batch` rows has similar lengths (little padding): shuffle,
    sort within windows of 16 batches, then shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


def precision(device: str, wanted: bool) -> str:
    """"bf16", "fp16" or "fp32": the autocast precision the trainer runs in on `device`."""
    import torch

    from model.hardware import bf16_pays_off

    if not wanted:
        return "fp32"
    if bf16_pays_off(torch.device(device)):
        return "bf16"
    return "fp16" if device == "cuda" else "fp32"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def tune(pairs: list[PreferencePair], base: str, out_dir, config: TuneConfig = TuneConfig(),
         progress: Progress | None = None, provenance: dict | None = None) -> dict:
    """DPO-tune `base` on `pairs` and write the merged model, its tokenizer and tuning.json INTO `out_dir` (an
    existing, empty folder). Returns the tuning record. `provenance` (e.g. the base's version, the data file)
    is stored in the record as it is. Raises TuningError on bad input, before anything is written."""
    import torch

    from model.tuning_trainer import train_dpo

    started = time.monotonic()
    report = progress or (lambda fraction, message: None)
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise TuningError(f"output folder {out_dir} does not exist")
    usable = usable_pairs(pairs)
    if not usable:
        raise TuningError(f"none of the {len(pairs)} pairs is usable: each needs a prompt and two different, "
                          "non-empty answers")
    if config.threads:
        torch.set_num_threads(config.threads)
    report(0.0, "loading the base model")
    tok, model = load_base(base, config.cache_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mixed = precision(device, config.bf16)
    on_gpu = device == "cuda"
    micro = config.micro_batch_size or (config.batch_size if on_gpu else min(CPU_MICRO_BATCH, config.batch_size))
    layers = model.config.num_hidden_layers
    lora_layers = min(config.lora_layers or default_lora_layers(layers, on_gpu), layers)
    config = replace(config, learning_rate=config.learning_rate or default_learning_rate(layers, lora_layers))
    rows, lengths = dpo_rows(tok, usable, config)
    rows = [rows[i] for i in length_grouped_order(lengths, micro, config.seed)]
    if config.time_budget is not None and time.monotonic() - started >= config.time_budget:
        raise TuningError(f"the time budget of {config.time_budget:g} s ran out while loading the base model; "
                          "give it more time")
    with tempfile.TemporaryDirectory(prefix="rlhf-tune-") as scratch:
        model, trained = train_dpo(model, tok, rows, config, micro, lora_layers, mixed, device, scratch, started,
                                   report)
    report(0.96, "saving the merged model")
    import peft
    import trl

    from model.reward.model import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)

    record = {
        "base": base, **(provenance or {}),
        "pairs": len(pairs), "pairs_used": len(usable),
        "prompt_hashes": sorted({prompt_hash(p.prompt) for p in usable}),
        "format": "conversational" if tok.chat_template else "text",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "micro_batch_size": micro, "lora_layers": lora_layers, "device": device, "precision": mixed,
        **trained, "seconds": round(time.monotonic() - started, 1), "peak_rss_gib": round(_peak_rss_gib(), 2),
        "trl": trl.__version__, "peft": peft.__version__,
    }
    (out_dir / TUNING_FILE).write_text(json.dumps(record, indent=2))
    report(1.0, f"done: {trained['steps']} steps" + (", stopped by the time budget" if trained["stopped_by_budget"] else ""))
    return record


def read_tuning(folder) -> dict:
    """A version's tuning.json, or {} for a model that was not written by `tune`."""
    try:
        return json.loads((Path(folder) / TUNING_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}

