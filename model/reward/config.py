"""The reward model's training settings, with each mode's defaults filled in when the config is made."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model.generation.types import SMOLLM2

MINILM = "minilm"
DECODER_PROMPT_TOKENS = 64  # a causal LM base reads the prompt's last 64 tokens: its last turn or two on hh-rlhf
MODE_DEFAULTS = {"fast": {"max_length": 512, "prompt_tokens": 0, "epochs": 60, "learning_rate": 3e-4, "batch_size": 64},
                 "full": {"max_length": 256, "prompt_tokens": 32, "epochs": 2, "learning_rate": 1e-4, "batch_size": 8}}


@dataclass(frozen=True)
class TrainConfig:
    base_model: str = MINILM          # "minilm" = packaged all-MiniLM-L6-v2; or HF id / local folder; or a
    #                                     causal LM ("smollm2", the packaged generator; a .gguf; a local folder),
    #                                     read frozen at its middle layer in fast mode (model/reward/decoder.py)
    mode: str = "fast"                # "fast": frozen encoder, cached features, head only; "full": fine-tune
    pooling: str = "mean"             # "mean": read the encoder by mean pooling (model/reward/pooling.py); "cls"
    max_length: int | None = None     # tokens of prompt+answer; None: 512 (fast: a text costs only its own
    #                                     length to encode, once) / 256 (full: as TRL, every epoch pays it)
    prompt_tokens: int | None = None  # read only the prompt's last N tokens (0: all that fits max_length); None:
    #                                     0 (fast: its frozen features gain from more prompt) / 32 (full: the
    #                                     fine-tuned encoder scored higher with less on hh-rlhf, and faster)
    threads: int | None = None        # torch intra-op threads (None: torch's default)
    feature_cache_dir: Path | None = None  # fast mode: persistent feature cache (None: this run only)
    epochs: int | None = None         # None: the mode's default, 60 (fast) / 2 (full); the best epoch is kept
    learning_rate: float | None = None  # None: 3e-4 (fast) / 1e-4 (full, as TRL)
    batch_size: int | None = None     # pairs per step; None: 64 (fast) / 8 (full)
    weight_decay: float = 0.01
    patience: int = 10                # stop after this many epochs without a better held-out loss
    margin: float = 0.0               # TRL-style margin: loss = -logsigmoid(r_c - r_r - margin)
    center_rewards_coefficient: float | None = None  # TRL-style: + coef * mean((r_c + r_r)^2), keeps rewards ~0
    val_fraction: float = 0.15        # held-out share of the prompts (all pairs of a prompt on one side)
    min_val_pairs: int = 10           # fewer pairs than this: train on all, val_accuracy=None
    seed: int = 0
    train_layers: int | None = None   # full mode: fine-tune only the top N encoder layers (None: all)
    average_epochs: float | None = 0.7  # full mode: keep a moving average of the weights over about this
    #                                     many epochs and save that (None: the last weights)
    folds: int = 3                    # fast mode: fit this many heads, each held out from its own fold of the
    #                                     prompts, and save their weight average (1: one head, val_fraction held out)
    members: int = 1                  # full mode: fine-tune this many times from one start (own data orders)
    #                                     and save the members' weight average (WARM); N times the time
    dropout: bool = False             # full mode: fine-tune with the encoder's dropout on (TRL turns it off)
    bf16: bool = True                 # full mode: bf16 autocast where native (~2x on AVX-512 bf16 CPUs)
    eval_batch_size: int = 32
    calibrate: bool = True            # divide the rewards by a temperature fitted on the held-out pairs

    def __post_init__(self):
        if self.mode not in MODE_DEFAULTS:
            raise ValueError(f"unknown training mode {self.mode!r}: use 'fast' or 'full'")
        if self.prompt_tokens is not None and self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be 0 (the whole prompt) or more, not {self.prompt_tokens}")
        decoder = is_decoder_base(self.base_model)
        if decoder and self.mode != "fast":
            raise ValueError(f"{self.base_model!r} is a causal LM: it is read frozen at its middle layer, in fast "
                             "mode; full mode fine-tunes an encoder such as minilm")
        if self.mode == "fast" and self.prompt_tokens and not decoder:
            raise ValueError("fast mode reads the whole prompt (its frozen features lose accuracy when the prompt "
                             "is cut); prompt_tokens is a full-mode setting")
        if decoder and self.prompt_tokens is None:
            object.__setattr__(self, "prompt_tokens", DECODER_PROMPT_TOKENS)
        if self.folds < 1:
            raise ValueError(f"folds must be at least 1, not {self.folds}")
        for name, default in MODE_DEFAULTS[self.mode].items():  # None: this mode's default
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)


def is_decoder_base(name: str) -> bool:
    """True for the packaged generator ("smollm2"), a .gguf file or a local folder holding a causal LM (a
    generator version written by `rlhf-backend tune` too). Hub ids are not looked up (that needs the network):
    download such a model into a folder first."""
    if name == SMOLLM2 or name.endswith(".gguf"):
        return True
    try:
        architectures = json.loads((Path(name).expanduser() / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForCausalLM") for a in architectures or [])
