"""Conversations: hh-rlhf transcripts, chat message lists and plain text in each other's form."""

import json

import pytest

from model.conversation import (answer_text, end_of_turn, is_messages, prompt_messages, prompt_text,
                                split_conversations)

TRANSCRIPT = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: How do I bake bread?\n\nAssistant:"
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "How do I bake bread?"}]


def test_a_transcript_and_its_messages_are_one_conversation():
    assert prompt_messages(TRANSCRIPT) == MESSAGES
    assert prompt_text(MESSAGES) == TRANSCRIPT  # with the assistant's cue, as hh-rlhf prompts end
    assert prompt_messages(MESSAGES) == MESSAGES


def test_a_lone_question_is_plain_text_either_way():
    assert prompt_text([{"role": "user", "content": "Name a colour."}]) == "Name a colour."
    assert prompt_messages("Name a colour.") == [{"role": "user", "content": "Name a colour."}]
    # An hh-rlhf single-turn transcript stays as it is given: its text is what the reward model reads.
    assert prompt_text("\n\nHuman: Name a colour.\n\nAssistant:") == "\n\nHuman: Name a colour.\n\nAssistant:"


def test_two_conversations_split_at_the_end_of_their_shared_beginning():
    q = [{"role": "user", "content": "Name a colour."}]
    assert split_conversations(q + [{"role": "assistant", "content": "Red."}],
                               q + [{"role": "assistant", "content": "No."}]) == ("Name a colour.", "Red.", "No.")
    assert split_conversations(MESSAGES + [{"role": "assistant", "content": "Knead."}],
                               MESSAGES + [{"role": "assistant", "content": "Buy."}]) == (TRANSCRIPT, "Knead.", "Buy.")
    assert split_conversations([{"role": "user", "content": "a"}],
                               [{"role": "user", "content": "b"}]) == ("", "\n\nHuman: a", "\n\nHuman: b")


def test_system_messages_and_a_transcript_without_leading_blank_line():
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert prompt_messages(prompt_text(messages)) == messages
    assert prompt_messages("Human: Hi\n\nAssistant:") == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("text", ["Write a poem about the sea.", "Quote: Human: mortal.\nAssistant: me",
                                  "Explain how a Human: prefix works", ""])
def test_plain_text_is_one_user_message(text):
    assert prompt_messages(text) == [{"role": "user", "content": text}]
    assert prompt_text(text) == text


def test_a_transcript_cut_at_the_front_keeps_the_end_of_a_user_turn_and_drops_that_of_an_assistant_turn():
    cut_in_question = "ou help?\n\nAssistant: Yes.\n\nHuman: Bread?\n\nAssistant:"
    assert prompt_messages(cut_in_question) == [{"role": "user", "content": "ou help?"},
                                                {"role": "assistant", "content": "Yes."},
                                                {"role": "user", "content": "Bread?"}]
    cut_in_answer = "w can I help?\n\nHuman: Bread?\n\nAssistant:"
    assert prompt_messages(cut_in_answer) == [{"role": "user", "content": "Bread?"}]


def test_answers_in_conversational_form_are_their_text():
    assert answer_text([{"role": "assistant", "content": "Mix flour."}]) == "Mix flour."
    assert answer_text("Mix flour.") == "Mix flour."
    assert answer_text(None) == ""


@pytest.mark.parametrize("value", [[], [{"role": "robot", "content": "x"}], [{"role": "user"}],
                                   [{"role": "user", "content": 3}], ["Hi"], {"role": "user", "content": "x"}])
def test_anything_else_is_not_messages_and_reads_as_its_json(value):
    assert not is_messages(value)
    assert prompt_text(value) == json.dumps(value, ensure_ascii=False, sort_keys=True)


def test_numbers_and_none_read_as_text():
    assert prompt_text(7) == "7" and prompt_text(None) == ""


def test_an_answer_ends_where_the_next_human_turn_starts():
    assert end_of_turn(" Knead it.\n\nHuman: And then?\n\nAssistant: Bake it.") == " Knead it."
    assert end_of_turn("Knead it.\n\nThen bake.") == "Knead it.\n\nThen bake."
