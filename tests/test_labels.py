import pytest

from backend.labels import LabelConfigError, parse_label_config
from model.pairs import TaskFields


def test_template_config(label_config):
    assert parse_label_config(label_config) == TaskFields("comparison", "prompt", "answer1", "answer2")


def test_captured_setup_schema(captured):
    fields = parse_label_config(captured["setup"]["json"]["schema"])
    assert fields.pairwise == "comparison" and (fields.left, fields.right) == ("answer1", "answer2")


def test_renamed_fields_are_read_from_the_config():
    config = """<View><Text name="question" value="$q"/>
      <Pairwise name="pick" toName="first,second"/>
      <Text name="first" value="$resp_a"/><Text name="second" value="$resp_b"/></View>"""
    assert parse_label_config(config) == TaskFields("pick", "q", "resp_a", "resp_b")


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
