"""The emulator's conversation state machine, without I/O: event order, content, errors.

Every server event produced here is also checked against the real SDK's deserializer: it must
become the class the reference (shared/reference/voice-live-events.json) lists for its type.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pytest
from azure.ai.voicelive import models

from appliance.emulator import (
    Conversation,
    ConversationOptions,
    Failure,
    FunctionCall,
    Script,
    Speech,
    Text,
    Turn,
)
from tests.fixtures.emulator import deserialize

RATE = 24000

# From the reference's "verification" list; the last three are SDK classes the reference
# has no example of.
REFERENCE_CLASSES = {
    "conversation.item.created": "ServerEventConversationItemCreated",
    "conversation.item.deleted": "ServerEventConversationItemDeleted",
    "conversation.item.input_audio_transcription.completed": (
        "ServerEventConversationItemInputAudioTranscriptionCompleted"
    ),
    "conversation.item.input_audio_transcription.failed": (
        "ServerEventConversationItemInputAudioTranscriptionFailed"
    ),
    "conversation.item.truncated": "ServerEventConversationItemTruncated",
    "error": "ServerEventError",
    "input_audio_buffer.cleared": "ServerEventInputAudioBufferCleared",
    "input_audio_buffer.committed": "ServerEventInputAudioBufferCommitted",
    "input_audio_buffer.speech_started": "ServerEventInputAudioBufferSpeechStarted",
    "input_audio_buffer.speech_stopped": "ServerEventInputAudioBufferSpeechStopped",
    "rate_limits.updated": "ServerEvent",
    "response.audio.delta": "ServerEventResponseAudioDelta",
    "response.audio.done": "ServerEventResponseAudioDone",
    "response.audio_transcript.delta": "ServerEventResponseAudioTranscriptDelta",
    "response.audio_transcript.done": "ServerEventResponseAudioTranscriptDone",
    "response.content_part.added": "ServerEventResponseContentPartAdded",
    "response.content_part.done": "ServerEventResponseContentPartDone",
    "response.created": "ServerEventResponseCreated",
    "response.done": "ServerEventResponseDone",
    "response.function_call_arguments.delta": "ServerEventResponseFunctionCallArgumentsDelta",
    "response.function_call_arguments.done": "ServerEventResponseFunctionCallArgumentsDone",
    "response.output_item.added": "ServerEventResponseOutputItemAdded",
    "response.output_item.done": "ServerEventResponseOutputItemDone",
    "response.text.delta": "ServerEventResponseTextDelta",
    "response.text.done": "ServerEventResponseTextDone",
    "session.created": "ServerEventSessionCreated",
    "session.updated": "ServerEventSessionUpdated",
    "warning": "ServerEventWarning",
    "conversation.item.input_audio_transcription.delta": (
        "ServerEventConversationItemInputAudioTranscriptionDelta"
    ),
    "conversation.item.retrieved": "ServerEventConversationItemRetrieved",
    "output_audio_buffer.cleared": "ServerEventOutputAudioBufferCleared",
}

RESPONSE_HEAD = ["response.created", "rate_limits.updated"]
SPOKEN_ITEM_HEAD = [
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
]
SPOKEN_ITEM_TAIL = [
    "response.audio.done",
    "response.audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
]


def speech(ms: int, amplitude: int = 8000) -> np.ndarray[Any, np.dtype[np.int16]]:
    t = np.arange(ms * RATE // 1000) / RATE
    samples: np.ndarray[Any, np.dtype[np.int16]] = np.rint(
        amplitude * np.sin(2 * math.pi * 220 * t)
    ).astype(np.int16)
    return samples


def silence(ms: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.zeros(ms * RATE // 1000, dtype=np.int16)


def append(samples: np.ndarray[Any, np.dtype[np.int16]]) -> dict[str, Any]:
    return {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(samples.astype("<i2").tobytes()).decode(),
    }


class Driver:
    """A conversation plus everything it sent, every event checked with the SDK."""

    def __init__(self, **options: Any) -> None:
        self.conversation = Conversation(ConversationOptions(**options))
        self.sent: list[dict[str, Any]] = []
        self._take(self.conversation.open())

    def _take(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for event in events:
            parsed = deserialize(event)
            assert type(parsed).__name__ == REFERENCE_CLASSES[event["type"]], event["type"]
        self.sent += events
        return events

    def send(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return self._take(self.conversation.receive(event))

    def audio(self, samples: np.ndarray[Any, np.dtype[np.int16]], chunk_ms: int = 100) -> list[Any]:
        out: list[dict[str, Any]] = []
        step = chunk_ms * RATE // 1000
        for start in range(0, samples.size, step):
            out += self.send(append(samples[start : start + step]))
        return out

    def stream(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Pull the active response's steps (all, or ``steps`` of them)."""
        out: list[dict[str, Any]] = []
        response = self.conversation.response
        if response is None:
            return out
        while steps is None or steps > 0:
            step = self.conversation.next_step(response.id)
            if step is None:
                break
            out += self._take(step.events)
            if steps is not None:
                steps -= 1
        return out


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def collapse(names: list[str]) -> list[str]:
    """Consecutive deltas collapsed to one entry, to compare orders."""
    out: list[str] = []
    deltas = {"response.audio.delta", "response.audio_transcript.delta"}
    for name in names:
        key = "deltas" if name in deltas else name
        if not out or out[-1] != key or key != "deltas":
            out.append(key)
    return out


def test_session_created_first_and_update_echoes_the_effective_session() -> None:
    driver = Driver(model="gpt-realtime", expires_at=1767225600)
    created = driver.sent[0]
    assert created["type"] == "session.created"
    assert created["session"]["model"] == "gpt-realtime"
    assert created["session"]["id"].startswith("sess_")
    assert created["session"]["turn_detection"]["type"] == "server_vad"
    [updated] = driver.send(
        {
            "type": "session.update",
            "session": {"instructions": "be brief", "turn_detection": {"type": "server_vad"}},
        }
    )
    session = updated["session"]
    assert session["instructions"] == "be brief"
    assert session["id"] == created["session"]["id"]
    # Defaults fill what the client left out; untouched fields keep their values.
    assert session["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    }
    assert session["voice"] == created["session"]["voice"]
    parsed = deserialize(updated)
    assert isinstance(parsed, models.ServerEventSessionUpdated)
    assert parsed.session.instructions == "be brief"


@pytest.mark.parametrize(
    ("update", "param"),
    [
        ({"turn_detection": {"type": "magic_vad"}}, "session.turn_detection.type"),
        (
            {"turn_detection": {"type": "server_vad", "threshold": 2}},
            "session.turn_detection.threshold",
        ),
        ({"input_audio_format": "mp3"}, "session.input_audio_format"),
        ({"input_audio_sampling_rate": 44100}, "session.input_audio_sampling_rate"),
        ({"modalities": ["smell"]}, "session.modalities"),
    ],
)
def test_invalid_session_update_is_an_error_and_changes_nothing(
    update: dict[str, Any], param: str
) -> None:
    driver = Driver()
    before = dict(driver.conversation.session)
    [error] = driver.send({"type": "session.update", "session": update, "event_id": "c1"})
    assert error["type"] == "error"
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == "c1"
    assert driver.conversation.session == before


def test_server_vad_turn_in_reference_order_and_parrot_plays_the_committed_audio() -> None:
    driver = Driver()
    audio = np.concatenate([silence(1000), speech(1500), silence(1000)])
    turn = driver.audio(audio)
    assert types(turn) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        *RESPONSE_HEAD,
    ]
    started, stopped, committed, user_item = turn[:4]
    # Speech from 1000 ms; the prefix padding (300 ms) goes before it; stopped after 500 ms of
    # silence following the speech that ended at 2500 ms.
    assert started["audio_start_ms"] == 700
    assert stopped["audio_end_ms"] == 3000
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert user_item["item"]["id"] == committed["item_id"]
    assert user_item["item"]["role"] == "user"
    assert user_item["item"]["content"] == [{"type": "input_audio", "transcript": None}]

    response = driver.stream()
    assert collapse(types(response)) == [
        *SPOKEN_ITEM_HEAD,
        "deltas",
        *SPOKEN_ITEM_TAIL,
        "response.done",
    ]
    played = b"".join(
        base64.b64decode(e["delta"]) for e in response if e["type"] == "response.audio.delta"
    )
    assert played == audio[700 * 24 : 3000 * 24].astype("<i2").tobytes()
    transcript = "".join(
        e["delta"] for e in response if e["type"] == "response.audio_transcript.delta"
    )
    assert transcript == "I heard 2.3 seconds of speech."
    done = response[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "audio", "transcript": transcript}]
    assert response[-2]["item"]["status"] == "completed"
    assert driver.conversation.response is None


def test_every_response_event_names_the_response_item_and_indexes() -> None:
    driver = Driver()
    driver.audio(np.concatenate([speech(500), silence(600)]))
    response = driver.stream()
    item_id = response[0]["item"]["id"]
    response_id = driver.sent[-len(response) - 2]["response"]["id"]
    for event in response:
        if event["type"].startswith("response.") and event["type"] != "response.done":
            assert event["response_id"] == response_id
            assert event["output_index"] == 0
        if "content_index" in event:
            assert event["item_id"] == item_id
            assert event["content_index"] == 0


def test_vad_events_do_not_depend_on_how_the_audio_is_chunked() -> None:
    audio = np.concatenate([silence(730), speech(1210), silence(300), speech(400), silence(900)])
    results = []
    for chunk_ms in (10, 20, 100, 333, 5000):
        driver = Driver()
        events = driver.audio(audio, chunk_ms=chunk_ms)
        results.append(
            [
                (e["type"], e.get("audio_start_ms"), e.get("audio_end_ms"))
                for e in events
                if "speech" in e["type"]
            ]
        )
    assert all(result == results[0] for result in results)
    # The 300 ms gap is shorter than the 500 ms of silence needed: one turn.
    assert results[0] == [
        ("input_audio_buffer.speech_started", 430, None),
        ("input_audio_buffer.speech_stopped", None, 3140),
    ]


def test_quiet_audio_is_not_speech_and_threshold_decides() -> None:
    quiet = speech(1000, amplitude=300)  # about -40 dBFS RMS
    driver = Driver()
    assert driver.audio(np.concatenate([quiet, silence(1000)])) == []
    sensitive = Driver()
    sensitive.send(
        {
            "type": "session.update",
            "session": {"turn_detection": {"type": "server_vad", "threshold": 0.2}},
        }
    )
    events = sensitive.audio(np.concatenate([quiet, silence(1000)]))
    assert "input_audio_buffer.speech_started" in types(events)


def test_session_vad_parameters_apply() -> None:
    driver = Driver()
    driver.send(
        {
            "type": "session.update",
            "session": {
                "turn_detection": {
                    "type": "azure_semantic_vad",
                    "prefix_padding_ms": 100,
                    "silence_duration_ms": 200,
                    "create_response": False,
                }
            },
        }
    )
    events = driver.audio(np.concatenate([silence(500), speech(500), silence(500)]))
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
    ]
    assert events[0]["audio_start_ms"] == 400
    assert events[1]["audio_end_ms"] == 1200
    assert driver.conversation.response is None


def test_manual_turn_commit_then_response_create() -> None:
    driver = Driver()
    driver.send({"type": "session.update", "session": {"turn_detection": None}})
    audio = np.concatenate([silence(200), speech(800), silence(200)])
    assert driver.audio(audio) == []  # appends are never acknowledged, no VAD
    committed = driver.send({"type": "input_audio_buffer.commit"})
    assert types(committed) == ["input_audio_buffer.committed", "conversation.item.created"]
    assert committed[0]["previous_item_id"] is None
    assert driver.conversation.response is None  # a commit alone does not answer
    created = driver.send({"type": "response.create"})
    assert types(created) == RESPONSE_HEAD
    response = driver.stream()
    played = b"".join(
        base64.b64decode(e["delta"]) for e in response if e["type"] == "response.audio.delta"
    )
    assert played == audio.astype("<i2").tobytes()
    assert response[-1]["response"]["status"] == "completed"
    # The next user item follows the assistant's.
    driver.audio(speech(300))
    [next_commit, next_item] = driver.send({"type": "input_audio_buffer.commit"})
    assert next_commit["previous_item_id"] == response[0]["item"]["id"]
    assert next_item["previous_item_id"] == response[0]["item"]["id"]


@pytest.mark.parametrize("ms", [0, 50])
def test_commit_of_an_empty_or_tiny_buffer_is_an_error(ms: int) -> None:
    driver = Driver()
    driver.send({"type": "session.update", "session": {"turn_detection": None}})
    driver.audio(speech(ms)) if ms else None
    [error] = driver.send({"type": "input_audio_buffer.commit", "event_id": "evt_client_7"})
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "evt_client_7"
    assert driver.conversation.items == []


def test_clear_empties_the_buffer() -> None:
    driver = Driver()
    driver.send({"type": "session.update", "session": {"turn_detection": None}})
    driver.audio(speech(500))
    assert types(driver.send({"type": "input_audio_buffer.clear"})) == [
        "input_audio_buffer.cleared"
    ]
    [error] = driver.send({"type": "input_audio_buffer.commit"})
    assert error["type"] == "error"


def test_16khz_input_is_played_back_at_24khz() -> None:
    driver = Driver()
    driver.send(
        {
            "type": "session.update",
            "session": {"turn_detection": None, "input_audio_sampling_rate": 16000},
        }
    )
    t = np.arange(16000) / 16000
    audio = np.rint(8000 * np.sin(2 * math.pi * 220 * t)).astype(np.int16)
    driver.send(append(audio))
    driver.send({"type": "input_audio_buffer.commit"})
    driver.send({"type": "response.create"})
    played = b"".join(
        base64.b64decode(e["delta"]) for e in driver.stream() if e["type"] == "response.audio.delta"
    )
    assert len(played) == 24000 * 2


def test_input_transcription_placeholder_when_configured() -> None:
    driver = Driver()
    driver.send(
        {
            "type": "session.update",
            "session": {"input_audio_transcription": {"model": "azure-speech"}},
        }
    )
    events = driver.audio(np.concatenate([speech(1000), silence(600)]))
    assert types(events)[4:6] == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    completed = events[5]
    assert completed["item_id"] == events[2]["item_id"]
    assert completed["transcript"] == "(1.5 seconds of speech)"  # speech + 500 ms


def test_speech_during_a_response_cancels_it_with_turn_detected() -> None:
    driver = Driver()
    driver.audio(np.concatenate([speech(2000), silence(600)]))
    partial = driver.stream(steps=3)  # the item is open and some audio is out
    assert "response.audio.delta" in types(partial)
    barge = driver.audio(speech(200))
    assert types(barge) == [
        "input_audio_buffer.speech_started",
        *SPOKEN_ITEM_TAIL,
        "response.done",
    ]
    done = barge[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert barge[-2]["item"]["status"] == "incomplete"
    assert driver.conversation.response is None
    assert driver.stream() == []  # nothing more of the cancelled response
    parsed = deserialize(barge[-1])
    assert isinstance(parsed, models.ServerEventResponseDone)
    assert isinstance(parsed.response.status_details, models.ResponseCancelledDetails)


def test_interrupt_response_false_lets_the_response_finish() -> None:
    driver = Driver()
    driver.send(
        {
            "type": "session.update",
            "session": {"turn_detection": {"type": "server_vad", "interrupt_response": False}},
        }
    )
    driver.audio(np.concatenate([speech(1000), silence(600)]))
    driver.stream(steps=2)
    assert types(driver.audio(speech(200))) == ["input_audio_buffer.speech_started"]
    assert driver.stream()[-1]["response"]["status"] == "completed"


def test_client_cancel_ends_the_response_with_client_cancelled() -> None:
    driver = Driver()
    driver.audio(np.concatenate([speech(1000), silence(600)]))
    driver.stream(steps=2)
    cancelled = driver.send({"type": "response.cancel"})
    assert types(cancelled) == [*SPOKEN_ITEM_TAIL, "response.done"]
    assert cancelled[-1]["response"]["status_details"]["reason"] == "client_cancelled"


def test_cancel_before_the_first_item_has_no_item_events() -> None:
    driver = Driver()
    driver.send({"type": "response.create"})
    assert types(driver.send({"type": "response.cancel"})) == ["response.done"]


def test_cancel_with_nothing_active_is_an_error() -> None:
    driver = Driver()
    [error] = driver.send({"type": "response.cancel"})
    assert error["error"]["code"] == "response_cancel_not_active"
    assert error["error"]["message"] == "Cancellation failed: no active response found"


def test_second_response_create_while_active_is_an_error() -> None:
    driver = Driver()
    driver.send({"type": "response.create"})
    [error] = driver.send({"type": "response.create"})
    assert error["error"]["code"] == "conversation_already_has_active_response"


def test_truncate_records_and_checks_bounds() -> None:
    driver = Driver()
    driver.audio(np.concatenate([speech(1000), silence(600)]))
    response = driver.stream()
    item_id = response[0]["item"]["id"]
    [truncated] = driver.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 800,
        }
    )
    assert truncated == {
        "type": "conversation.item.truncated",
        "event_id": truncated["event_id"],
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 800,
    }
    assert [
        (t.item_id, t.content_index, t.audio_end_ms) for t in driver.conversation.truncations
    ] == [(item_id, 0, 800)]
    # Longer than the audio (1900 ms), an unknown item, a user item: errors, nothing recorded.
    for bad in (
        {"item_id": item_id, "content_index": 0, "audio_end_ms": 1901},
        {"item_id": "item_nope", "content_index": 0, "audio_end_ms": 1},
        {"item_id": driver.sent[4]["item"]["id"], "content_index": 0, "audio_end_ms": 1},
    ):
        [error] = driver.send({"type": "conversation.item.truncate", **bad})
        assert error["type"] == "error"
    assert len(driver.conversation.truncations) == 1


def test_function_call_round_trip() -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    script = Script(FunctionCall("get_weather", {"city": "Oslo"}, call_id="call_1"))
    driver = Driver(responder=lambda: script)
    driver.send({"type": "session.update", "session": {"tools": tools, "turn_detection": None}})
    driver.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "weather?"}],
            },
        }
    )
    driver.send({"type": "response.create"})
    call = driver.stream()
    assert collapse(types(call)) == [
        "response.output_item.added",
        "conversation.item.created",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    args = "".join(
        e["delta"] for e in call if e["type"] == "response.function_call_arguments.delta"
    )
    assert args == '{"city":"Oslo"}'
    done_args = next(e for e in call if e["type"] == "response.function_call_arguments.done")
    assert (done_args["call_id"], done_args["name"], done_args["arguments"]) == (
        "call_1",
        "get_weather",
        args,
    )
    assert call[-1]["response"]["output"][0]["type"] == "function_call"
    # Nothing more until the client answers the call and asks for a response.
    assert driver.conversation.response is None
    [created] = driver.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        }
    )
    assert created["item"]["type"] == "function_call_output"
    driver.send({"type": "response.create"})
    answer = driver.stream()
    transcript = next(e for e in answer if e["type"] == "response.audio_transcript.done")
    assert transcript["transcript"] == "The function get_weather returned sunny."


def test_a_call_to_a_tool_the_session_lacks_fails_the_response() -> None:
    driver = Driver(responder=lambda: Script(FunctionCall("launch")))
    driver.send({"type": "response.create"})
    done = driver.stream()[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["error"]["code"] == "tool_not_found"


def test_scripted_replies_text_modality_and_failure() -> None:
    seen: list[Turn] = []

    def remember(turn: Turn) -> Text:
        seen.append(turn)
        return Text("noted")

    script = Script(
        [Speech(b"\x01\x00" * 2400, "one"), Text("two words")],
        remember,
        Failure("rate_limited", "slow down"),
    )
    driver = Driver(responder=lambda: script)
    driver.send({"type": "response.create"})
    first = driver.stream()
    assert first[-1]["response"]["status"] == "completed"
    assert [item["content"][0]["transcript"] for item in first[-1]["response"]["output"]] == [
        "one",
        "two words",
    ]
    assert [e["output_index"] for e in first if e["type"] == "response.output_item.added"] == [0, 1]
    driver.send(
        {
            "type": "response.create",
            "response": {"modalities": ["text"]},
            "additional_instructions": "x",
        }
    )
    second = driver.stream()
    assert "response.text.delta" in types(second)
    assert next(e for e in second if e["type"] == "response.text.done")["text"] == "noted"
    assert seen[0].number == 2
    assert seen[0].response == {"modalities": ["text"], "additional_instructions": "x"}
    driver.send({"type": "response.create"})
    failed = driver.stream()
    assert types(failed) == ["response.done"]
    assert failed[0]["response"]["status_details"]["error"]["code"] == "rate_limited"


def test_items_create_retrieve_delete() -> None:
    driver = Driver()
    [created] = driver.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "m1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "hi"}],
            },
        }
    )
    assert created["item"]["id"] == "m1"
    assert created["previous_item_id"] is None
    [retrieved] = driver.send({"type": "conversation.item.retrieve", "item_id": "m1"})
    assert retrieved["item"]["content"] == [{"type": "text", "text": "hi"}]
    [again] = driver.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "m1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "x"}],
            },
        }
    )
    assert again["error"]["code"] == "item_id_exists"
    [deleted] = driver.send({"type": "conversation.item.delete", "item_id": "m1"})
    assert deleted["item_id"] == "m1"
    [missing] = driver.send({"type": "conversation.item.delete", "item_id": "m1"})
    assert missing["error"]["code"] == "item_not_found"


def test_unknown_event_and_bad_json_are_errors_that_keep_the_session() -> None:
    driver = Driver()
    [unknown] = driver.send({"type": "session.destroy"})
    assert unknown["error"]["param"] == "type"
    [bad] = driver.conversation.receive_text("{not json")
    assert bad["error"]["code"] == "invalid_json"
    [bad_audio] = driver.send({"type": "input_audio_buffer.append", "audio": "***"})
    assert bad_audio["error"]["param"] == "audio"
    assert types(driver.send({"type": "session.update", "session": {}})) == ["session.updated"]


def test_g711_input_is_decoded_for_turn_detection() -> None:
    from appliance.emulator.audio import AudioFormat

    driver = Driver()
    driver.send({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
    t = np.arange(8000) / 8000
    tone = np.rint(8000 * np.sin(2 * math.pi * 220 * t)).astype(np.int16)
    ulaw = AudioFormat("g711_ulaw", 8000)
    audio = np.concatenate([tone, np.zeros(8000, dtype=np.int16)])
    events = driver.send(
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(ulaw.encode(audio)).decode(),
        }
    )
    assert events[0]["type"] == "input_audio_buffer.speech_started"
    assert events[1]["audio_end_ms"] == 1500


def test_a_failing_responder_fails_the_response_visibly(caplog: pytest.LogCaptureFixture) -> None:
    def broken(turn: Turn) -> Text:
        raise ValueError("script bug")

    driver = Driver(responder=lambda: broken)
    driver.send({"type": "response.create"})
    done = driver.stream()[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["error"]["code"] == "responder_error"
    assert "script bug" in caplog.text
