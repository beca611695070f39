"""Interruption, truncation, cancellation and function calls, with the real SDK as client."""

from __future__ import annotations

import json

import numpy as np
from azure.ai.voicelive.models import (
    FunctionCallOutputItem,
    FunctionTool,
    InputTextContentPart,
    RequestSession,
    ResponseCancelledDetails,
    ResponseFunctionCallItem,
    ResponseMessageItem,
    ServerEventConversationItemTruncated,
    ServerEventError,
    ServerEventResponseAudioTranscriptDone,
    ServerEventResponseDone,
    ServerEventResponseFunctionCallArgumentsDone,
    ServerEventResponseOutputItemAdded,
    UserMessageItem,
)

from appliance.emulator import Emulator, FunctionCall, Script, Speech, Turn
from tests.fixtures.emulator import (
    MakeEmulator,
    events_until,
    sdk_connect,
    send_audio,
    silence,
    speech,
)

# A minute of answer at real-time pace: it is surely still streaming when the test acts.
LONG_ANSWER = Speech(bytes(24000 * 2 * 60), "a very long answer indeed")


async def start_long_answer(make_emulator: MakeEmulator) -> Emulator:
    return await make_emulator(responder=Script(LONG_ANSWER), audio_speed=1.0)


async def test_user_speech_interrupts_the_response(make_emulator: MakeEmulator) -> None:
    emulator = await start_long_answer(make_emulator)
    async with sdk_connect(emulator.url) as connection:
        await send_audio(connection, np.concatenate([speech(500), silence(600)]))
        head = await events_until(connection, "response.audio.delta")
        added = next(e for e in head if isinstance(e, ServerEventResponseOutputItemAdded))
        assert added.item is not None
        item_id = added.item.id
        assert item_id is not None
        await send_audio(connection, speech(300))
        events = await events_until(connection, "response.done")
        assert [e.type for e in events if not e.type.endswith(".delta")] == [
            "input_audio_buffer.speech_started",
            "response.audio.done",
            "response.audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ]
        done = events[-1]
        assert isinstance(done, ServerEventResponseDone)
        assert done.response.status == "cancelled"
        assert isinstance(done.response.status_details, ResponseCancelledDetails)
        assert done.response.status_details.reason == "turn_detected"

        # The client tells the service how much of the answer was heard (at most what came).
        await connection.conversation.item.truncate(
            item_id=item_id, audio_end_ms=60, content_index=0
        )
        [truncated] = [
            e
            for e in await events_until(connection, "conversation.item.truncated")
            if isinstance(e, ServerEventConversationItemTruncated)
        ]
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, 60)
    record = emulator.connections[0]
    assert [(t.item_id, t.content_index, t.audio_end_ms) for t in record.truncations] == [
        (item_id, 0, 60)
    ]
    assert record.received_of("conversation.item.truncate")[0]["audio_end_ms"] == 60


async def test_client_cancel_ends_the_response(make_emulator: MakeEmulator) -> None:
    emulator = await start_long_answer(make_emulator)
    async with sdk_connect(emulator.url) as connection:
        await connection.session.update(session={"turn_detection": None})
        await connection.response.create()
        await events_until(connection, "response.audio.delta")
        await connection.response.cancel()
        events = await events_until(connection, "response.done")
    done = events[-1]
    assert isinstance(done, ServerEventResponseDone)
    assert done.response.status == "cancelled"
    assert isinstance(done.response.status_details, ResponseCancelledDetails)
    assert done.response.status_details.reason == "client_cancelled"
    assert done.response.output is not None
    [item] = done.response.output
    assert isinstance(item, ResponseMessageItem)
    assert item.status == "incomplete"
    # What was streamed before the cancel is all there is of the answer.
    record = emulator.connections[0]
    assert record.sent_types()[-1] == "response.done"
    assert 0 < len(record.audio_sent()) < len(LONG_ANSWER.audio)


async def test_cancel_with_nothing_active_is_an_error_event(make_emulator: MakeEmulator) -> None:
    emulator = await make_emulator()
    async with sdk_connect(emulator.url) as connection:
        await connection.response.cancel(event_id="client-cancel-1")
        events = await events_until(connection, "error")
        error = events[-1]
        assert isinstance(error, ServerEventError)
        assert error.error.code == "response_cancel_not_active"
        assert error.error.event_id == "client-cancel-1"
        # The session goes on.
        await connection.session.update(session={"instructions": "still here"})
        await events_until(connection, "session.updated")


async def test_function_call_round_trip(make_emulator: MakeEmulator) -> None:
    turns: list[Turn] = []

    def answer(turn: Turn) -> Speech:
        turns.append(turn)
        output = json.loads(turn.function_outputs[0].output)
        return Speech(bytes(4800), f"It is {output['sky']} in Oslo.")

    script = Script(FunctionCall("get_weather", {"city": "Oslo"}), answer)
    emulator = await make_emulator(responder=script)
    tool = FunctionTool(
        name="get_weather",
        description="Weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    async with sdk_connect(emulator.url) as connection:
        await connection.session.update(session=RequestSession(tools=[tool], turn_detection=None))
        await connection.conversation.item.create(
            item=UserMessageItem(content=[InputTextContentPart(text="Weather in Oslo?")])
        )
        await connection.response.create()
        events = await events_until(connection, "response.done")
        call = next(
            e for e in events if isinstance(e, ServerEventResponseFunctionCallArgumentsDone)
        )
        assert call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Oslo"}
        done = events[-1]
        assert isinstance(done, ServerEventResponseDone)
        assert done.response.output is not None
        assert isinstance(done.response.output[0], ResponseFunctionCallItem)

        await connection.conversation.item.create(
            item=FunctionCallOutputItem(call_id=call.call_id, output=json.dumps({"sky": "sunny"}))
        )
        await connection.response.create()
        events = await events_until(connection, "response.done")
    transcript = next(e for e in events if isinstance(e, ServerEventResponseAudioTranscriptDone))
    assert transcript.transcript == "It is sunny in Oslo."
    [turn] = turns
    assert turn.function_outputs[0].name == "get_weather"
    assert turn.tool("get_weather") is not None
    record = emulator.connections[0]
    assert record.received_types() == [
        "session.update",
        "conversation.item.create",
        "response.create",
        "conversation.item.create",
        "response.create",
    ]
