"""Read the field names the backend needs from a project's label config (parsed with label-studio-sdk).

Nothing is hard-coded: a project that renames `answer1` or the Pairwise control keeps working.
"""

from __future__ import annotations

from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

from model.pairs import BOTH_BAD, TIE, TaskFields


PROMPT_TAGS = ("text", "paragraphs")


class LabelConfigError(ValueError):
    """The label config cannot drive this backend; the message says what is missing."""


def text_data_key(tag) -> str | None:
    """`$prompt` -> `prompt`; None for a Text with a literal value."""
    value = getattr(tag, "value", None) or ""
    return value[1:] if value.startswith("$") and len(value) > 1 else None


@lru_cache(maxsize=128)  # /setup parses the same config before every prediction batch
def parse_label_config(config: str) -> TaskFields:
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the label config is empty")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML/validation error types
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from None

    pairwise = [c for c in interface.controls if c.tag.lower() == "pairwise"]
    if not pairwise:
        raise LabelConfigError(
            'the label config has no <Pairwise> control; add one over the two answers, e.g. '
            '<Pairwise name="comparison" toName="answer1,answer2"/>')
    if len(pairwise) > 1:
        raise LabelConfigError(f"the label config has {len(pairwise)} <Pairwise> controls; use exactly one")
    control = pairwise[0]
    objects = {o.name: o for o in interface.objects}
    targets = list(control.to_name or [])
    if len(targets) != 2:
        raise LabelConfigError(f'<Pairwise name="{control.name}"> must name two Text objects in toName, '
                               f"got {len(targets)}")
    answer_keys = []
    for name in targets:
        tag = objects.get(name)
        if tag is None or tag.tag.lower() != "text":
            raise LabelConfigError(f'<Pairwise name="{control.name}"> refers to "{name}", '
                                   "which is not a <Text> object in the config")
        key = text_data_key(tag)
        if key is None:
            raise LabelConfigError(f'<Text name="{name}"> needs a task-data value such as value="${name}"')
        answer_keys.append(key)

    # A conversation shows best as <Paragraphs layout="dialogue" nameKey="role" textKey="content">.
    prompts = [o for o in interface.objects
               if o.tag.lower() in PROMPT_TAGS and o.name not in targets and text_data_key(o)]
    if not prompts:
        raise LabelConfigError('the label config has no <Text> or <Paragraphs> for the prompt besides the two '
                               'answers, e.g. <Text name="prompt" value="$prompt"/>')
    # Several candidates: prefer one literally called "prompt", else the first in the config.
    prompt = next((o for o in prompts if o.name == "prompt"), prompts[0])
    return TaskFields(pairwise=control.name, prompt=text_data_key(prompt),
                      left=answer_keys[0], right=answer_keys[1], judgement=_judgement_control(interface),
                      dialogue_prompt=prompt.tag.lower() == "paragraphs")


def _judgement_control(interface) -> str | None:
    """The optional Choices control offering "tie" and/or "both bad" (label_config_ties.xml)."""
    for control in interface.controls:
        if control.tag.lower() != "choices":
            continue
        values = {str(label).strip().lower() for label in control.labels or []}
        if values & {TIE, BOTH_BAD}:
            return control.name
    return None
