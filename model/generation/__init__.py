"""Candidate generation: k answers per prompt, for humans to compare.

`load_generator(config)` returns a generator once per process (loading is the slow part); its
`generate(prompts, candidates=k)` returns one `Candidates` per prompt, in order, each with k answers
(`config.candidates` unless given: one loaded generator serves Pairwise and Ranker projects). Two back
ends, sharing `types`:
- "local" (`local.py`): transformers on this machine, with the fast sampling loop of `decoding.py`;
- "openai" (`openai_compatible.py`): any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp
  server, OpenAI).
"""

from __future__ import annotations

from model.generation.types import GenerationConfig, GenerationError, Generator, check_candidates


def load_generator(config: GenerationConfig) -> Generator:
    if config.max_new_tokens < 1:
        raise GenerationError("max_new_tokens must be at least 1")
    check_candidates(config.candidates, config.model_b)
    if config.backend == "local":
        from model.generation.local import LocalGenerator

        return LocalGenerator(config)
    if config.backend == "openai":
        from model.generation.openai_compatible import OpenAIGenerator

        return OpenAIGenerator(config)
    raise GenerationError(f"unknown generation backend {config.backend!r}; use 'local' or 'openai'")
