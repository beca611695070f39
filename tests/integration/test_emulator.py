"""The emulator with the real SDK as its client, over a real loopback WebSocket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.ai.voicelive.models import (
    ResponseAudioContentPart,
    ResponseMessageItem,
    ServerEventConversationItemCreated,
    ServerEventConversationItemInputAudioTranscriptionCompleted,
    ServerEventInputAudioBufferSpeechStarted,
    ServerEventInputAudioBufferSpeechStopped,
    ServerEventResponseAudioDelta,
    ServerEventResponseDone,
    ServerEventSessionCreated,
    ServerEventSessionUpdated,
)
from azure.core.credentials import AccessToken, AzureKeyCredential

from appliance.emulator import Emulator
from tests.fixtures.emulator import (
    MakeEmulator,
    deserialize,
    events_until,
    sdk_connect,
    send_audio,
    silence,
    speech,
)

REPO = Path(__file__).resolve().parents[2]

SERVER_VAD_ORDER = [
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.created",
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
    "deltas",
    "response.audio.done",
    "response.audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]


def collapse(types: list[str]) -> list[str]:
    deltas = {"response.audio.delta", "response.audio_transcript.delta"}
    out: list[str] = []
    for name in types:
        key = "deltas" if name in deltas else name
        if not (out and out[-1] == key == "deltas"):
            out.append(key)
    return out


class StaticToken:
    """An async token credential with a fixed token (the emulator only checks the header)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(self.token, 2**31)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


async def test_server_vad_turn_typed_events_in_reference_order(emulator: Emulator) -> None:
    audio = np.concatenate([silence(600), speech(1200), silence(800)])
    async with sdk_connect(emulator.url) as connection:
        await connection.session.update(session={"instructions": "parrot"})
        await send_audio(connection, audio)
        events = await events_until(connection, "response.done")
    assert collapse([str(e.type) for e in events]) == SERVER_VAD_ORDER
    assert isinstance(events[0], ServerEventSessionCreated)
    assert isinstance(events[1], ServerEventSessionUpdated)
    assert events[1].session.instructions == "parrot"
    started = events[2]
    assert isinstance(started, ServerEventInputAudioBufferSpeechStarted)
    assert started.audio_start_ms == 300
    user_item = events[5]
    assert isinstance(user_item, ServerEventConversationItemCreated)
    assert isinstance(user_item.item, ResponseMessageItem)
    assert user_item.item.role == "user"
    # The parrot plays back the committed audio: speech start minus padding to the stop.
    played = b"".join(e.delta for e in events if isinstance(e, ServerEventResponseAudioDelta))
    stopped = events[3]
    assert isinstance(stopped, ServerEventInputAudioBufferSpeechStopped)
    stopped_ms = stopped.audio_end_ms
    assert stopped_ms == 2300
    assert played == audio[300 * 24 : stopped_ms * 24].astype("<i2").tobytes()
    done = events[-1]
    assert isinstance(done, ServerEventResponseDone)
    assert done.response.status == "completed"
    assert done.response.output is not None
    [output] = done.response.output
    assert isinstance(output, ResponseMessageItem)
    assert isinstance(output.content[0], ResponseAudioContentPart)
    assert output.content[0].transcript == "I heard 2.0 seconds of speech."

    record = await emulator.wait_for_connection(1)
    assert record.auth_scheme == "api-key"
    assert record.model == "gpt-realtime"
    assert record.api_version == "2026-07-15"
    assert record.sent_types()[: len(events)] == [e.type for e in events]
    assert record.audio_received() == audio.astype("<i2").tobytes()
    assert record.audio_sent() == played
    await record.wait_closed()
    assert record.close_code == 1000
    assert record.closed_by == "client"


async def test_manual_turn_parrots_sample_for_sample(emulator: Emulator) -> None:
    rng = np.random.default_rng(7)
    audio = rng.integers(-12000, 12000, 24000 * 2, dtype=np.int16)  # any audio, 2 s
    async with sdk_connect(emulator.url) as connection:
        await connection.session.update(session={"turn_detection": None})
        await events_until(connection, "session.updated")
        await send_audio(connection, audio, chunk_ms=40)
        await connection.input_audio_buffer.commit()
        committed = await events_until(connection, "conversation.item.created")
        assert [e.type for e in committed] == [
            "input_audio_buffer.committed",
            "conversation.item.created",
        ]
        await connection.response.create()
        events = await events_until(connection, "response.done")
    played = b"".join(e.delta for e in events if isinstance(e, ServerEventResponseAudioDelta))
    assert played == audio.astype("<i2").tobytes()
    assert collapse([str(e.type) for e in events]) == SERVER_VAD_ORDER[6:]


async def test_two_turns_on_one_connection_and_waiting_helpers(emulator: Emulator) -> None:
    async with sdk_connect(emulator.url) as connection:
        reader = asyncio.create_task(events_until(connection, "session.created"))
        await reader
        for _ in range(2):
            await send_audio(connection, np.concatenate([speech(500), silence(600)]))
        first = await emulator.wait_for_event("response.done")
        second = await emulator.wait_for_event("response.done", count=2)
        assert first["response"]["id"] != second["response"]["id"]
        update = await emulator.wait_for_received("input_audio_buffer.append", count=22)
        assert update["type"] == "input_audio_buffer.append"
    with pytest.raises(TimeoutError, match=r"response\.done"):
        await emulator.wait_for_event("response.done", count=3, timeout=0.05)


async def test_input_transcription_events(emulator: Emulator) -> None:
    async with sdk_connect(emulator.url) as connection:
        await connection.session.update(
            session={"input_audio_transcription": {"model": "azure-speech"}}
        )
        await send_audio(connection, np.concatenate([speech(1000), silence(600)]))
        events = await events_until(connection, "response.done")
    completed = [
        e
        for e in events
        if isinstance(e, ServerEventConversationItemInputAudioTranscriptionCompleted)
    ]
    assert [e.transcript for e in completed] == ["(1.5 seconds of speech)"]


async def test_bearer_token_and_required_credentials(make_emulator: MakeEmulator) -> None:
    emulator = await make_emulator(api_key="right-key-123", bearer_token="right-token-456")
    async with sdk_connect(emulator.url, credential=StaticToken("right-token-456")) as connection:
        await events_until(connection, "session.created")
    async with sdk_connect(
        emulator.url, credential=AzureKeyCredential("right-key-123")
    ) as connection:
        await events_until(connection, "session.created")
    for wrong in (AzureKeyCredential("wrong-key"), StaticToken("wrong-token")):
        with pytest.raises(VoiceLiveConnectionError) as refused:
            async with sdk_connect(emulator.url, credential=wrong):
                pass
        assert "401" in str(refused.value)
    assert [h.status for h in emulator.handshakes] == [101, 101, 401, 401]
    assert [c.auth_scheme for c in emulator.connections] == ["bearer", "api-key"]
    # No credential value is kept in any record.
    assert "right-key-123" not in repr(emulator.handshakes) + repr(emulator.connections)


async def test_handshake_checks_api_version_model_and_credential(emulator: Emulator) -> None:
    with pytest.raises(VoiceLiveConnectionError, match="400"):
        async with sdk_connect(emulator.url, model=None):
            pass
    with pytest.raises(VoiceLiveConnectionError, match="400"):
        async with sdk_connect(emulator.url, api_version="latest"):
            pass
    with pytest.raises(VoiceLiveConnectionError, match="401"):
        async with sdk_connect(emulator.url, credential=AzureKeyCredential("")):
            pass
    assert [h.reason for h in emulator.handshakes] == [
        "missing model",
        "missing or malformed api-version",
        "credential refused",
    ]
    assert emulator.connections == []


async def test_every_event_sent_deserializes_to_its_own_class(emulator: Emulator) -> None:
    from azure.ai.voicelive.models import ServerEvent

    async with sdk_connect(emulator.url) as connection:
        await send_audio(connection, np.concatenate([speech(300), silence(600)]))
        await events_until(connection, "response.done")
    record = emulator.connections[0]
    assert len(record.sent) > 10
    for event in record.sent:
        parsed = deserialize(event)
        # Only rate_limits.updated has no class of its own in the SDK.
        assert (type(parsed) is ServerEvent) == (event["type"] == "rate_limits.updated")


def test_cli_emulator_serves_the_sdk_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Voice Live emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()

        async def converse() -> bytes:
            async with sdk_connect(url) as connection:
                await connection.session.update(session={"turn_detection": None})
                await send_audio(connection, speech(500))
                await connection.input_audio_buffer.commit()
                await connection.response.create()
                events = await events_until(connection, "response.done")
            return b"".join(e.delta for e in events if isinstance(e, ServerEventResponseAudioDelta))

        assert asyncio.run(converse()) == speech(500).astype("<i2").tobytes()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_emulator_on_a_taken_port_says_so_and_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "appliance", "emulator", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"the emulator cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_script_holds_a_conversation() -> None:
    """The development section's script, run as written against `appliance emulator`."""
    readme = (REPO / "README.md").read_text()
    script = readme.split("<!-- emulator-script -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(script.strip().splitlines()) <= 25
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        port = url.rsplit(":", 1)[1]
        result = subprocess.run(
            [sys.executable, "-c", script.replace("8765", port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("assistant: I heard") == 2, result.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
