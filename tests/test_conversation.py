import pytest

from cdr import Conversation, ConversationError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_messages_last_assistant_is_response():
    conv = Conversation.from_messages([{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello")])
    assert conv.response == "Hello"
    assert [m.role for m in conv.prompt] == ["system", "user"]


def test_prompt_string_and_response():
    conv = Conversation.from_prompt_response("What is 2+2?", "4")
    assert conv.as_dicts() == [user("What is 2+2?"), assistant("4")]


@pytest.mark.parametrize(
    "messages, field, fragment",
    [
        ([user("Hi"), {"role": "bot", "content": "x"}], "messages[1].role", "got 'bot'"),
        ([user("Hi"), assistant("")], "messages[1].content", "empty"),
        ([user("Hi"), assistant("   \n")], "messages[1].content", "empty"),
        ([user("Hi"), {"role": "assistant", "content": ["a"]}], "messages[1].content", "got list"),
        ([user("Hi"), {"role": "assistant", "content": None}], "messages[1].content", "got NoneType"),
        ([user("Hi"), {"role": "assistant"}], "messages[1].content", "missing"),
        ([user("Hi")], "messages[0].role", "must be 'assistant'"),
        ([user("Hi"), assistant("a"), user("and?")], "messages[2].role", "must be 'assistant'"),
        ([assistant("Hello")], "messages", "user turn"),
        ([user("Hi"), {"role": "system", "content": "late"}, assistant("a")], "messages[1].role", "first message"),
        ([], "messages", "empty list"),
        ("just text", "messages", "got str"),
        ([user("Hi"), "oops"], "messages[1]", "got str"),
    ],
)
def test_invalid_messages_name_the_field(messages, field, fragment):
    with pytest.raises(ConversationError) as info:
        Conversation.from_messages(messages)
    assert info.value.field == field
    assert fragment in info.value.message


def test_prompt_response_errors():
    with pytest.raises(ConversationError) as info:
        Conversation.from_prompt_response("", "x")
    assert info.value.field == "prompt"
    with pytest.raises(ConversationError) as info:
        Conversation.from_prompt_response("q", 3)
    assert info.value.field == "response" and "got int" in info.value.message
    with pytest.raises(ConversationError) as info:
        Conversation.from_prompt_response([user("q"), assistant("a")], "b")
    assert info.value.field == "prompt[1].role"
    with pytest.raises(ConversationError) as info:
        Conversation.from_prompt_response([{"role": "system", "content": "Be nice."}], "b")
    assert (info.value.field, info.value.kind) == ("prompt", "no user turn")
