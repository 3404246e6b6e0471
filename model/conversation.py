"""Prompts that are conversations.

A prompt arrives as plain text, as an hh-rlhf transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...", ending
with the cue "\\n\\nAssistant:"), or as a list of chat messages [{"role", "content"}] (Label Studio's
Paragraphs tag, TRL's conversational datasets, OpenAI's API). Generators need messages and the reward model
reads text; the two forms convert into each other, so one conversation given either way is generated for,
trained on and scored alike.
"""

from __future__ import annotations

import json
import re

ROLES = ("system", "user", "assistant")
_CUE = {"system": "\n\nSystem:", "user": "\n\nHuman:", "assistant": "\n\nAssistant:"}
_ROLE = {"System": "system", "Human": "user", "Assistant": "assistant"}
ASSISTANT_CUE = _CUE["assistant"]
NEXT_HUMAN_TURN = _CUE["user"]
# A turn starts at a blank line, or at the very start with "Human:".
_TURN = re.compile(r"(?:\A\s*(?=Human:)|\n\n)(System|Human|Assistant):")


def is_messages(value) -> bool:
    """A non-empty list of {"role": system|user|assistant, "content": str} dicts."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                    for m in value))


def transcript(messages: list[dict]) -> str:
    return "".join(f"{_CUE[m['role']]} {m['content']}" for m in messages)


def prompt_text(value) -> str:
    """The prompt as the reward model reads it: text as it is; a lone user message as its text, the same
    question typed into the basic template; other messages as an hh-rlhf transcript that ends with the
    assistant's cue (what `split_hh` takes as the prompt of an hh-rlhf record)."""
    if not is_messages(value):
        return plain_text(value)
    if len(value) == 1 and value[0]["role"] == "user":
        return value[0]["content"]
    return transcript(value) + ("" if value[-1]["role"] == "assistant" else ASSISTANT_CUE)


def split_conversations(chosen: list[dict], rejected: list[dict]) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of two conversations that share their beginning, the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return prompt_text(chosen[:n]) if n else "", answer_text(chosen[n:]), answer_text(rejected[n:])


def answer_text(value) -> str:
    """An answer as text: TRL's conversational answers are [{"role": "assistant", "content": ...}]."""
    if is_messages(value):
        if all(m["role"] == "assistant" for m in value):
            return "\n\n".join(m["content"] for m in value)
        return transcript(value)
    return plain_text(value)


def plain_text(value) -> str:
    """Text as it is; None as ""; anything else a task may hold (numbers, other JSON) as its JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def prompt_messages(value, system: str | None = None) -> list[dict]:
    """The prompt as chat messages for a generator: messages as they are; a transcript turn by turn,
    without its closing cue (the chat template adds its own); other text as one user message. `system`
    starts the conversation unless it has a system message of its own."""
    messages = _messages(value)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _messages(value) -> list[dict]:
    if is_messages(value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    text = prompt_text(value)
    turns = list(_TURN.finditer(text))
    if not turns:
        return [{"role": "user", "content": text}]
    messages = []
    head = text[:turns[0].start()].strip()
    if head and turns[0].group(1) == "Assistant":
        # The end of a user turn whose start was cut off (a prompt shortened to fit a model). The end of
        # an assistant turn is dropped instead: several chat templates refuse to start with one.
        messages.append({"role": "user", "content": head})
    for turn, following in zip(turns, turns[1:] + [None]):
        end = following.start() if following else len(text)
        messages.append({"role": _ROLE[turn.group(1)], "content": text[turn.end():end].strip()})
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the closing cue
    return messages


def end_of_turn(answer: str) -> str:
    """A model without a chat template, continuing a transcript, goes on to write the human's next turn:
    the answer ends where that turn starts."""
    return answer.split(NEXT_HUMAN_TURN, 1)[0]
