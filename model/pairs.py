"""Label Studio tasks and exports -> preference pairs -> TRL preference JSONL."""

from __future__ import annotations

from dataclasses import dataclass

# Key in task data where the generation job records which candidate went left, and how it was made.
# Task data (not meta) because every export format (JSON, JSON_MIN, CSV) carries data keys.
GENERATION_KEY = "rlhf_generation"


@dataclass(frozen=True)
class TaskFields:
    """Names read from a project's label config: the Pairwise control and the data keys it compares."""

    pairwise: str  # the Pairwise control's name, e.g. "comparison"
    prompt: str    # data key of the prompt Text, e.g. "prompt"
    left: str      # data key of the first (left) answer Text, e.g. "answer1"
    right: str     # data key of the second (right) answer Text, e.g. "answer2"


DEFAULT_FIELDS = TaskFields(pairwise="comparison", prompt="prompt", left="answer1", right="answer2")
