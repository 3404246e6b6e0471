import re
from pathlib import Path

import pytest

from backend.labels import LabelConfigError, parse_label_config
from conftest import FIXTURES
from model.pairs import DEFAULT_RANKER_FIELDS, RankerFields, TaskFields


def test_template_config(label_config):
    assert parse_label_config(label_config) == TaskFields("comparison", "prompt", "answer1", "answer2")


def test_captured_setup_schema(captured):
    fields = parse_label_config(captured["setup"]["json"]["schema"])
    assert fields.pairwise == "comparison" and (fields.left, fields.right) == ("answer1", "answer2")


def test_renamed_fields_are_read_from_the_config():
    config = """<View><Text name="question" value="$q"/>
      <Pairwise name="pick" toName="first,second"/>
      <Text name="first" value="$resp_a"/><Text name="second" value="$resp_b"/></View>"""
    # The object name (a prediction's to_name) and the data key differ here.
    assert parse_label_config(config) == TaskFields("pick", "q", "resp_a", "resp_b", left_object="first")


@pytest.mark.parametrize("config, message", [
    ("", "empty"),
    ("<View", "not valid XML"),
    ('<View><Text name="p" value="$p"/><Choices name="c" toName="p"><Choice value="a"/></Choices></View>',
     "no <Pairwise>"),
    ('<View><Text name="a" value="$a"/><Text name="b" value="$b"/><Pairwise name="c" toName="a,b"/></View>',
     "no <Text> or <Paragraphs> for the prompt"),
    ('<View><Text name="p" value="$p"/><Text name="a" value="$a"/><Pairwise name="c" toName="a"/></View>',
     "must name two Text objects"),
    ('<View><Text name="p" value="$p"/><Text name="a" value="$a"/><Pairwise name="c" toName="a,zz"/></View>',
     '"zz", which is not a <Text>'),
])
def test_unusable_configs_say_what_is_missing(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)


def test_tie_config_names_its_judgement_control():
    from pathlib import Path

    config = (Path(__file__).parent.parent / "label_config_ties.xml").read_text()
    fields = parse_label_config(config)
    assert fields.judgement == "judgement" and fields.pairwise == "comparison"


def test_an_unrelated_choices_control_is_not_a_tie_control():
    config = """<View><Text name="prompt" value="$prompt"/><Text name="a" value="$a"/><Text name="b" value="$b"/>
      <Pairwise name="c" toName="a,b"/>
      <Choices name="topic" toName="prompt"><Choice value="sports"/><Choice value="news"/></Choices></View>"""
    assert parse_label_config(config).judgement is None


def test_chat_config_reads_the_conversation_from_paragraphs():
    from pathlib import Path

    config = (Path(__file__).parent.parent / "label_config_chat.xml").read_text()
    assert parse_label_config(config) == TaskFields("comparison", "prompt", "answer1", "answer2",
                                                    dialogue_prompt=True)


# --------------------------------------------------------------------------------------------- Ranker

ROOT = Path(__file__).parent.parent


def test_the_ranker_template_gives_ranker_fields():
    fields = parse_label_config((ROOT / "label_config_ranker.xml").read_text())
    assert fields == RankerFields(ranker="rank", list_name="answers", answers="answers", prompt="prompt")
    assert fields == DEFAULT_RANKER_FIELDS and not isinstance(fields, TaskFields)


def test_ranker_names_are_read_from_the_config():
    config = """<View><Paragraphs name="chat" value="$dialogue" nameKey="role" textKey="content"/>
      <List name="replies" value="$items"/><Ranker name="order" toName="replies"/></View>"""
    assert parse_label_config(config) == RankerFields("order", "replies", "items", "dialogue", dialogue_prompt=True)


def test_the_llm_ranker_template_has_buckets_in_config_order():
    """Label Studio 1.23.2's "LLM Ranker" template (generative-ai/llm-ranker), as it ships."""
    config = (FIXTURES / "ls-1.23.2-llm-ranker.xml").read_text()
    assert parse_label_config(config) == RankerFields("rank", "answers", "items", "prompt",
                                                      buckets=("relevant_results", "biased_results"))


@pytest.mark.parametrize("config, message", [
    ('<View><Text name="p" value="$p"/><List name="l" value="$l"/><Ranker name="r" toName="l"/>'
     '<Text name="a" value="$a"/><Text name="b" value="$b"/><Pairwise name="c" toName="a,b"/></View>',
     "both a <Pairwise> and a <Ranker>"),
    ('<View><Text name="p" value="$p"/></View>', "no <Pairwise> control and no <Ranker>"),
    ('<View><Text name="p" value="$p"/><Text name="l" value="$l"/><Ranker name="r" toName="l"/></View>',
     "must name one <List>"),
    ('<View><Text name="p" value="$p"/><List name="l" value="$l"/><Ranker name="r" toName="l"/>'
     '<Ranker name="s" toName="l"/></View>', "2 <Ranker> controls"),
    ('<View><List name="l" value="$l"/><Ranker name="r" toName="l"/></View>',
     "no <Text> or <Paragraphs> for the prompt"),
    ('<View><Text name="p" value="$p"/><List name="l" value="$l"/>'
     '<Ranker name="r" toName="l"><Bucket name="good"/></Ranker></View>', "one <Bucket>, which orders nothing"),
    ('<View><Text name="p" value="$p"/><List name="l" value="$l"/>'
     '<Ranker name="r" toName="l"><Bucket name="good"/><Bucket name="good"/></Ranker></View>',
     'two <Bucket>s named "good"'),
    ('<View><Text name="p" value="$p"/><List name="l" value="$l"/>'
     '<Ranker name="r" toName="l"><Bucket name="good"/><Bucket name="_"/></Ranker></View>', "needs a name other than"),
])
def test_unusable_ranker_configs_say_what_is_wrong(config, message):
    with pytest.raises(LabelConfigError, match=re.escape(message)):
        parse_label_config(config)
