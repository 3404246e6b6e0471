"""Candidates from an OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp server, OpenAI).

One request per prompt asks for n=k choices; servers that ignore `n` (or send fewer) get more requests for
the rest. The API key
only ever travels in the Authorization header: it is in no message, log line or describe().
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import requests

from model.conversation import prompt_messages
from model.generation.types import (MAX_TRIES, Candidates, GenerationConfig, GenerationError, Progress,
                                    check_candidates, needs_resample, printable_prompt, prompt_problem,
                                    same_answer_error)

log = logging.getLogger(__name__)

TIMEOUT = (10, 300)  # (connect, read) seconds: a long answer from a busy server can take minutes


def public_url(url: str) -> str:
    """The URL without any user:password@ part, fit for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class OpenAIGenerator:
    def __init__(self, config: GenerationConfig):
        if not config.base_url:
            raise GenerationError("the openai backend needs a base URL, e.g. http://localhost:8000/v1")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.session = requests.Session()
        if config.api_key:
            self.session.headers["Authorization"] = f"Bearer {config.api_key}"

    def describe(self) -> dict:
        c = self.config
        return {"backend": "openai", "model": c.model, "model_b": c.model_b, "system_prompt": c.system_prompt,
                "temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens, "seed": c.seed}

    def _redact(self, text: str) -> str:
        return text.replace(self.config.api_key, "***") if self.config.api_key else text

    def _chat(self, model: str, prompt, n: int) -> list[str]:
        """n answers from one model; raises GenerationError for server-wide failures, ValueError for a
        request the server rejects because of this prompt (e.g. too long)."""
        c = self.config
        body = {"model": model, "messages": prompt_messages(prompt, c.system_prompt),
                "temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_new_tokens, "n": n}
        if c.seed is not None:
            body["seed"] = c.seed
        where = public_url(self.url)
        try:
            response = self.session.post(self.url, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise GenerationError(f"cannot reach the generation server at {where}: "
                                  f"{type(exc).__name__}") from None
        if response.status_code in (400, 413, 422):  # this prompt's problem (e.g. context length)
            raise ValueError(f"the server rejected the prompt ({response.status_code}): "
                             f"{self._redact(response.text[:300])}")
        if response.status_code != 200:
            raise GenerationError(f"the generation server at {where} answered {response.status_code}: "
                                  f"{self._redact(response.text[:300])}")
        try:
            choices = response.json()["choices"]
            return [(ch["message"]["content"] or "").strip() for ch in choices][:n]
        except (ValueError, KeyError, TypeError) as exc:
            raise GenerationError(f"the generation server at {where} sent a response that is not a chat "
                                  f"completion ({type(exc).__name__})") from None

    def _answers(self, model: str, prompt, k: int) -> list[str]:
        answers: list[str] = []
        while len(answers) < k:  # a server that ignores n sends one choice per request
            more = self._chat(model, prompt, k - len(answers))
            if not more:
                raise GenerationError(f"the generation server at {public_url(self.url)} sent no choices")
            answers += more
        return answers

    def _candidates(self, prompt, k: int) -> tuple[str, ...]:
        c = self.config
        if c.model_b:
            return self._answers(c.model, prompt, 1)[0], self._answers(c.model_b, prompt, 1)[0]
        return tuple(self._answers(c.model, prompt, k))

    def generate(self, prompts: list, progress: Progress | None = None,
                 candidates: int | None = None) -> list[Candidates]:
        k = self.config.candidates if candidates is None else candidates
        check_candidates(k, self.config.model_b)
        results = []
        for done, prompt in enumerate(prompts, 1):
            result = Candidates(prompt=printable_prompt(prompt), answers=None, error=prompt_problem(prompt))
            if result.error is None:
                try:
                    for _ in range(MAX_TRIES):
                        result.answers = self._candidates(prompt, k)
                        if not needs_resample(result.answers):
                            break
                    else:
                        result.answers, result.error = None, same_answer_error(MAX_TRIES)
                except ValueError as exc:
                    result.answers, result.error = None, str(exc)
            results.append(result)
            if progress:
                progress(done, len(prompts))
        return results
