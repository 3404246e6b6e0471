"""What every generator shares: its settings, what it returns per prompt, and the checks on prompts and
answers that both back ends apply."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from model.conversation import is_messages

SMOLLM2 = "smollm2"
MAX_TRIES = 3  # generations per prompt before giving up on getting k different answers
MAX_CANDIDATES = 26  # answers per prompt are labelled "a".."z" in the generation mapping

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationConfig:
    backend: str = "local"            # "local" (transformers) | "openai" (OpenAI-compatible chat completions)
    model: str = SMOLLM2              # "smollm2", an HF id, a local folder or a .gguf path; openai: served name
    model_b: str | None = None        # optional second model: answer B comes from it, answer A from `model` (k=2)
    base_url: str | None = None       # openai backend base URL, e.g. http://localhost:8000/v1
    api_key: str | None = field(default=None, repr=False)  # never logged, never in describe() or errors
    system_prompt: str | None = None  # starts every conversation that has no system message of its own
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int | None = None
    batch_size: int = 64              # prompts per forward pass (fewer when they are long: BATCH_TOKENS)
    dtype: str = "auto"               # auto | float32 | bfloat16 | float16
    threads: int | None = None        # torch.set_num_threads
    cache_dir: Path | None = None     # where a GGUF is converted once to safetensors
    candidates: int = 2               # answers per prompt (k): 2 for Pairwise, e.g. 4 for a Ranker project


@dataclass
class Candidates:
    prompt: str | list                # as given: text or chat messages (repr of anything else)
    answers: tuple[str, ...] | None   # k answers (A, B, ...) in the order generated; None when this prompt failed
    error: str | None = None          # per-prompt problem: empty / non-string prompt, etc.
    truncated: bool = False           # prompt was left-truncated to fit the model's context


class GenerationError(RuntimeError):
    """The generator as a whole failed (server down, model missing). The message holds no secrets."""


class Generator(Protocol):
    def generate(self, prompts: list, progress: Progress | None = None,
                 candidates: int | None = None) -> list[Candidates]: ...

    def describe(self) -> dict: ...



def prompt_problem(prompt) -> str | None:
    """Why a prompt cannot be answered, or None. A prompt is text (an hh-rlhf transcript is a
    conversation) or a list of chat messages."""
    if is_messages(prompt):
        text = "".join(m["content"] for m in prompt if m["role"] != "assistant")
    elif isinstance(prompt, str):
        text = prompt
    else:
        return ('the prompt must be text or a list of chat messages ({"role": "user", "content": "..."}), '
                f"got {type(prompt).__name__}")
    return None if text.strip() else "the prompt is empty"


def printable_prompt(prompt):
    """Candidates.prompt: the prompt as given when it is one, else its repr for the error message."""
    return prompt if isinstance(prompt, str) or is_messages(prompt) else repr(prompt)


def needs_resample(answers: tuple[str, ...]) -> bool:
    """k answers are useless to an annotator when two of them are the same or one is empty: all k are
    sampled again (a partial top-up would change what k=2 has always given for a seed)."""
    texts = [s.strip() for s in answers]
    return not all(texts) or len(set(texts)) < len(texts)


def same_answer_error(tries: int) -> str:
    return f"the model gave identical (or empty) answers in {tries} tries; try a higher temperature"


def check_candidates(k: int, model_b: str | None) -> None:
    """GenerationError unless k answers per prompt can be made."""
    if not isinstance(k, int) or not 2 <= k <= MAX_CANDIDATES:
        raise GenerationError(f"candidates must be between 2 and {MAX_CANDIDATES} answers per prompt, got {k!r}")
    if model_b and k != 2:
        raise GenerationError(f"a second model (GENERATOR_B_MODEL) gives answer B beside the first model's answer "
                              f"A, so it needs exactly 2 candidates per prompt, not {k}")

