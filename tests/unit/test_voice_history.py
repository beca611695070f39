from __future__ import annotations

from azure.ai.voicelive.models import AssistantMessageItem, UserMessageItem

from appliance.voice.history import INTERRUPTED_MARK, MAX_TEXT_CHARS, ConversationHistory


def texts(history: ConversationHistory) -> list[tuple[str, str]]:
    out = []
    for item in history.items():
        data = item.as_dict()
        out.append((data["role"], data["content"][0]["text"]))
    return out


def test_turns_come_back_in_the_order_the_items_were_created() -> None:
    history = ConversationHistory(8)
    history.user_item("u1")
    history.assistant_item("a1")
    # The answer's transcript arrives before the user's transcription finished.
    history.transcript("a1", "Hello, I am a device.", role="assistant")
    history.transcript("u1", "Who are you?", role="user")
    history.user_item("u2")
    history.transcript("u2", "Thanks.", role="user")
    assert texts(history) == [
        ("user", "Who are you?"),
        ("assistant", "Hello, I am a device."),
        ("user", "Thanks."),
    ]


def test_items_are_the_sdk_models_with_text_content() -> None:
    history = ConversationHistory(2)
    history.user_item("u1")
    history.transcript("u1", "hi", role="user")
    history.assistant_item("a1")
    history.transcript("a1", "hello", role="assistant")
    user, assistant = history.items()
    assert isinstance(user, UserMessageItem)
    assert isinstance(assistant, AssistantMessageItem)
    assert user.as_dict() == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
    }
    assert assistant.as_dict()["content"] == [{"type": "text", "text": "hello"}]


def test_messages_without_text_are_left_out() -> None:
    history = ConversationHistory(4)
    history.user_item("u1")  # transcription off: no text ever arrives
    history.assistant_item("a1")
    history.transcript("a1", "An answer.", role="assistant")
    assert texts(history) == [("assistant", "An answer.")]


def test_only_the_last_turns_are_kept() -> None:
    history = ConversationHistory(2)
    for n in range(5):
        history.user_item(f"u{n}")
        history.transcript(f"u{n}", f"question {n}", role="user")
        history.assistant_item(f"a{n}")
        history.transcript(f"a{n}", f"answer {n}", role="assistant")
    assert len(history) == 4
    assert texts(history) == [
        ("user", "question 3"),
        ("assistant", "answer 3"),
        ("user", "question 4"),
        ("assistant", "answer 4"),
    ]


def test_zero_turns_keeps_nothing() -> None:
    history = ConversationHistory(0)
    history.user_item("u1")
    history.transcript("u1", "hi", role="user")
    assert len(history) == 0
    assert history.items() == []


def test_an_interrupted_answer_is_cut_to_what_was_heard() -> None:
    history = ConversationHistory(4)
    history.assistant_item("a1")
    history.transcript("a1", "one two three four five six seven eight nine ten", role="assistant")
    history.audio("a1", 4000.0)
    history.truncated("a1", 1200)
    assert texts(history) == [("assistant", "one two three" + INTERRUPTED_MARK)]


def test_an_answer_interrupted_before_any_word_is_left_out() -> None:
    history = ConversationHistory(4)
    history.assistant_item("a1")
    history.transcript("a1", "one two three", role="assistant")
    history.audio("a1", 3000.0)
    history.truncated("a1", 100)
    assert history.items() == []


def test_long_texts_are_bounded() -> None:
    history = ConversationHistory(1)
    history.user_item("u1")
    history.transcript("u1", "word " * 1000, role="user")
    ((_, text),) = texts(history)
    assert len(text) <= MAX_TEXT_CHARS + len(INTERRUPTED_MARK)
    assert text.endswith(INTERRUPTED_MARK)


def test_a_transcript_for_an_unknown_item_is_kept_at_the_end() -> None:
    history = ConversationHistory(4)
    history.user_item("u1")
    history.transcript("u1", "first", role="user")
    history.transcript("a0", "late answer", role="assistant")
    assert texts(history) == [("user", "first"), ("assistant", "late answer")]


def test_clear_forgets_the_conversation() -> None:
    history = ConversationHistory(4)
    history.user_item("u1")
    history.transcript("u1", "hi", role="user")
    history.clear()
    assert history.items() == []
