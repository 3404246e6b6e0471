"""Read the field names the backend needs from a project's label config (parsed with label-studio-sdk).

Nothing is hard-coded: a project that renames `answer1` or the Pairwise control keeps working. A project
compares two answers (<Pairwise>, label_config.xml) or ranks k answers (<Ranker> over a <List>,
label_config_ranker.xml).
"""

from __future__ import annotations

from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface
from lxml import etree

from model.pairs import BOTH_BAD, TIE, RankerFields, TaskFields
from model.rankings import UNSORTED


PROMPT_TAGS = ("text", "paragraphs")


class LabelConfigError(ValueError):
    """The label config cannot drive this backend; the message says what is missing."""


def text_data_key(tag) -> str | None:
    """`$prompt` -> `prompt`; None for a Text with a literal value."""
    value = getattr(tag, "value", None) or ""
    return value[1:] if value.startswith("$") and len(value) > 1 else None


@lru_cache(maxsize=128)  # /setup parses the same config before every prediction batch
def parse_label_config(config: str) -> TaskFields | RankerFields:
    """TaskFields for a Pairwise project (two answers), RankerFields for a Ranker project (k answers in a
    <List>); LabelConfigError saying what is missing when the config can drive neither."""
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the label config is empty")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML/validation error types
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from None

    pairwise = [c for c in interface.controls if c.tag.lower() == "pairwise"]
    rankers = [c for c in interface.controls if c.tag.lower() == "ranker"]
    if pairwise and rankers:
        raise LabelConfigError("the label config has both a <Pairwise> and a <Ranker> control; a project collects "
                               "one kind of preference: keep one of them")
    if rankers:
        return _ranker_fields(config, interface, rankers)
    if not pairwise:
        raise LabelConfigError(
            'the label config has no <Pairwise> control and no <Ranker>; add a Pairwise over two answers, e.g. '
            '<Pairwise name="comparison" toName="answer1,answer2"/> (label_config.xml), or a Ranker over a List '
            'of answers, e.g. <List name="answers" value="$answers"/><Ranker name="rank" toName="answers"/> '
            '(label_config_ranker.xml)')
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
    prompt = _prompt_object(interface, targets, "the two answers")
    return TaskFields(pairwise=control.name, prompt=text_data_key(prompt),
                      left=answer_keys[0], right=answer_keys[1], judgement=_judgement_control(interface),
                      dialogue_prompt=prompt.tag.lower() == "paragraphs", left_object=targets[0])


def _prompt_object(interface, answers: list[str], what: str):
    """The Text or Paragraphs that shows the prompt."""
    # A conversation shows best as <Paragraphs layout="dialogue" nameKey="role" textKey="content">.
    prompts = [o for o in interface.objects
               if o.tag.lower() in PROMPT_TAGS and o.name not in answers and text_data_key(o)]
    if not prompts:
        raise LabelConfigError(f'the label config has no <Text> or <Paragraphs> for the prompt besides {what}, '
                               'e.g. <Text name="prompt" value="$prompt"/>')
    # Several candidates: prefer one literally called "prompt", else the first in the config.
    return next((o for o in prompts if o.name == "prompt"), prompts[0])


def _ranker_fields(config: str, interface, rankers) -> RankerFields:
    if len(rankers) > 1:
        raise LabelConfigError(f"the label config has {len(rankers)} <Ranker> controls; use exactly one")
    control = rankers[0]
    targets = list(control.to_name or [])
    objects = {o.name: o for o in interface.objects}
    tag = objects.get(targets[0]) if len(targets) == 1 else None
    if tag is None or tag.tag.lower() != "list":
        raise LabelConfigError(f'<Ranker name="{control.name}"> must name one <List> object in toName, e.g. '
                               f'<List name="answers" value="$answers"/><Ranker name="{control.name}" '
                               'toName="answers"/>')
    key = text_data_key(tag)
    if key is None:
        raise LabelConfigError(f'<List name="{tag.name}"> needs a task-data value such as value="$answers"')
    buckets = _bucket_names(config, control.name)
    if len(buckets) == 1:
        raise LabelConfigError(f'<Ranker name="{control.name}"> has one <Bucket>, which orders nothing: use none '
                               "(a full order) or two or more (groups, best first)")
    prompt = _prompt_object(interface, [tag.name], "the answers")
    return RankerFields(ranker=control.name, list_name=tag.name, answers=key, prompt=text_data_key(prompt),
                        buckets=buckets, dialogue_prompt=prompt.tag.lower() == "paragraphs")


def _bucket_names(config: str, ranker: str) -> tuple[str, ...]:
    """Names of the <Bucket>s inside the Ranker, in config order (the SDK does not keep them)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(config.strip().encode("utf-8"), parser)
    names: list[str] = []
    for element in root.iter():
        if not _is(element, "ranker") or element.get("name") != ranker:
            continue
        for child in element.iter():
            if not _is(child, "bucket"):
                continue
            name = child.get("name")
            if not name or name == UNSORTED:
                raise LabelConfigError(f'every <Bucket> in <Ranker name="{ranker}"> needs a name other than '
                                       f'"{UNSORTED}", e.g. <Bucket name="best" title="Best answers"/>')
            if name in names:
                raise LabelConfigError(f'<Ranker name="{ranker}"> has two <Bucket>s named "{name}"')
            names.append(name)
    return tuple(names)


def _is(element, tag: str) -> bool:
    return isinstance(element.tag, str) and element.tag.lower() == tag


def _judgement_control(interface) -> str | None:
    """The optional Choices control offering "tie" and/or "both bad" (label_config_ties.xml)."""
    for control in interface.controls:
        if control.tag.lower() != "choices":
            continue
        values = {str(label).strip().lower() for label in control.labels or []}
        if values & {TIE, BOTH_BAD}:
            return control.name
    return None
