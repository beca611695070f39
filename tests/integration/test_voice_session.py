"""VoiceSession with the real SDK over a real loopback WebSocket to the project's emulator."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import pytest
from azure.ai.voicelive.models import ServerEventError, ServerEventResponseDone

from appliance.config import (
    AudioSettings,
    AuthSettings,
    BehaviourSettings,
    GpioSettings,
    LoggingSettings,
    ServiceSettings,
    Settings,
)
from appliance.emulator import Emulator, FunctionCall, Parrot, Script, Speech
from appliance.errors import ServiceError
from appliance.state import ButtonMode, ErrorKind
from appliance.voice.auth import VoiceCredential
from appliance.voice.backoff import Backoff, ConnectionBudget, OutageLog
from appliance.voice.session import (
    AudioDelta,
    Disconnected,
    SessionEvent,
    ToolCalled,
    VoiceSession,
    append_event_text,
)
from appliance.voice.session_config import build_session
from appliance.voice.tools import device_tools
from tests.fixtures.emulator import TEST_KEY, MakeEmulator, silence, speech
from tests.fixtures.identity import StartEntra, StartIdentity

WAIT = 10.0  # generous deadline for any awaited event on a slow machine
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"


def make_settings(service: Mapping[str, str] | None = None, **auth: str) -> Settings:
    auth_values = auth or {"APPLIANCE_AUTH": "api_key", "AZURE_VOICELIVE_API_KEY": TEST_KEY}
    return Settings(
        service=ServiceSettings.model_validate(dict(service or {})),
        auth=AuthSettings.model_validate(auth_values),
        audio=AudioSettings(),
        gpio=GpioSettings(),
        behaviour=BehaviourSettings(),
        logging=LoggingSettings(),
    )


class Events:
    """The session's events as the appliance would receive them, with waiting."""

    def __init__(self) -> None:
        self.items: list[SessionEvent] = []
        self._changed = asyncio.Event()
        self.on_each: Callable[[SessionEvent], None] | None = None

    def __call__(self, event: SessionEvent) -> None:
        self.items.append(event)
        if self.on_each is not None:
            self.on_each(event)
        self._changed.set()

    def of(self, what: str | type[Any]) -> list[Any]:
        if isinstance(what, str):
            return [e for e in self.items if getattr(e, "type", None) == what]
        return [e for e in self.items if isinstance(e, what)]

    def types(self) -> list[str]:
        return [str(getattr(e, "type", type(e).__name__)) for e in self.items]

    async def wait_for(self, what: str | type[Any], count: int = 1, within: float = WAIT) -> Any:
        try:
            async with asyncio.timeout(within):
                while len(found := self.of(what)) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} #{count} in {self.types()}") from None
        return found[count - 1]


class Device:
    def __init__(self) -> None:
        self._volume = 50
        self.ended = 0

    @property
    def volume(self) -> int:
        return self._volume

    def set_volume(self, percent: int) -> int:
        self._volume = percent
        return percent

    def end_conversation(self) -> None:
        self.ended += 1

    def status(self) -> Mapping[str, Any]:
        return {"uptime_s": 1.0}


OpenSession = Callable[..., Awaitable[tuple[VoiceSession, Events]]]


@pytest.fixture
async def open_session() -> AsyncIterator[OpenSession]:
    """open_session(emulator, settings=None, **session options) -> (session, events)."""
    opened: list[tuple[VoiceSession, VoiceCredential]] = []

    async def start(
        emulator: Emulator, settings: Settings | None = None, **options: Any
    ) -> tuple[VoiceSession, Events]:
        settings = settings or make_settings()
        credential = VoiceCredential(settings.auth)
        events = Events()
        session = VoiceSession(
            settings, credential, on_event=events, endpoint=emulator.url, **options
        )
        opened.append((session, credential))
        return session, events

    yield start
    for session, credential in opened:
        await session.close()
        await credential.close()


async def say(session: VoiceSession, samples: np.ndarray, chunk_ms: int = 100) -> None:
    step = chunk_ms * 24
    for start in range(0, samples.size, step):
        assert await session.send_audio(samples[start : start + step])


async def vad_turn(session: VoiceSession, events: Events, number: int = 1) -> None:
    await say(session, np.concatenate([speech(600), silence(800)]))
    await events.wait_for("response.done", number)


# ---- connecting and configuring -----------------------------------------------------------------


async def test_connect_configures_the_session_and_the_emulator_echoes_it(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    settings = make_settings()
    session, events = await open_session(emulator, settings, device=Device())
    await session.connect()
    assert session.ready
    record = emulator.connections[0]
    assert session.session_id == record.session_id
    assert record.query["model"] == "gpt-realtime"
    assert record.query["api-version"] == settings.service.api_version
    assert record.auth_scheme == "api-key"
    (update,) = record.received_of("session.update")
    expected = build_session(
        settings.service, button_mode=ButtonMode.TOGGLE, tools=device_tools().definitions()
    ).as_dict()
    assert update["session"] == json.loads(json.dumps(expected))
    echoed = record.sent_of("session.updated")[-1]["session"]
    assert echoed["turn_detection"]["type"] == "server_vad"
    assert [t["name"] for t in echoed["tools"]] == [
        "get_current_time",
        "get_volume",
        "set_volume",
        "end_conversation",
        "get_device_status",
    ]
    # Handshake events are the session's business, not the appliance's.
    assert events.items == []


async def test_push_to_talk_sends_turn_detection_null_and_commits_manual_turns(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator, button_mode=ButtonMode.PUSH_TO_TALK)
    await session.connect()
    record = emulator.connections[0]
    assert record.received_of("session.update")[0]["session"]["turn_detection"] is None
    assert record.sent_of("session.updated")[-1]["session"]["turn_detection"] is None
    assert await session.clear_input()
    await say(session, speech(500))
    assert not session.between_turns()  # a manual turn is being recorded
    assert await session.commit()
    assert await session.create_response()
    created = await events.wait_for("response.created")
    await events.wait_for("response.done")
    assert session.between_turns()
    assert not session.response_active
    # Answer audio arrives decoded, exactly the bytes the service sent.
    deltas = events.of(AudioDelta)
    assert deltas
    assert all(d.response_id == created.response.id for d in deltas)
    assert b"".join(d.pcm for d in deltas) == record.audio_sent()
    assert session.audio_item_id == deltas[-1].item_id
    assert session.audio_received_ms(deltas[-1].item_id) == pytest.approx(500.0)
    # What was sent is what the emulator got.
    assert record.audio_received() == speech(500).astype("<i2").tobytes()


async def test_server_vad_turn_fills_the_history(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator)
    await session.connect()
    await vad_turn(session, events)
    assert "input_audio_buffer.speech_started" in events.types()
    record = emulator.connections[0]
    heard = record.sent_of("conversation.item.input_audio_transcription.completed")[0]
    said = record.sent_of("response.audio_transcript.done")[0]
    assert [(m.role, m.text) for _, m in session.history.messages()] == [
        ("user", heard["transcript"]),
        ("assistant", said["transcript"]),
    ]


async def test_audio_is_sent_only_on_a_ready_session(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, _ = await open_session(emulator)
    assert not await session.send_audio(speech(100))
    assert session.counters.audio_chunks_dropped == 1
    await session.connect()
    with pytest.raises(TypeError, match="int16"):
        await session.send_audio(np.zeros(10, dtype=np.float32))
    assert await session.send_audio(bytes(480))
    assert await session.send_audio(b"")


def test_audio_goes_out_as_the_text_the_sdk_makes_of_the_event() -> None:
    # send_audio skips the SDK's send() for speed: the text must be exactly what it sends
    # for this event (json.dumps of the mapping), for every byte value base64 may meet.
    for pcm in (b"", bytes(range(256)) * 3, speech(40).astype("<i2").tobytes()):
        event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
        assert append_event_text(pcm) == json.dumps(event)


# ---- responses, cancellation, truncation --------------------------------------------------------


async def test_cancel_only_when_a_response_is_active_and_truncate_to_what_arrived(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    long_answer = Speech(speech(4000).astype("<i2").tobytes(), "a long answer " * 10)
    emulator = await make_emulator(api_key=TEST_KEY, audio_speed=1.0, responder=Script(long_answer))
    session, events = await open_session(emulator, button_mode=ButtonMode.PUSH_TO_TALK)
    await session.connect()
    record = emulator.connections[0]
    assert not await session.cancel_response()  # nothing active: nothing sent
    await say(session, speech(300))
    await session.commit()
    await session.create_response()
    created = await events.wait_for("response.created")
    first = await events.wait_for(AudioDelta)
    assert session.response_active
    assert session.response_id == created.response.id
    assert await session.cancel_response()
    done = await events.wait_for("response.done")
    assert done.response.status == "cancelled"
    assert session.response_id is None
    (cancel,) = record.received_of("response.cancel")
    assert "response_id" not in cancel  # only one is ever active; a stale id would miss it
    assert not await session.cancel_response()
    assert len(record.received_of("response.cancel")) == 1
    # The service refuses a truncation beyond what it sent: clamp to what arrived.
    received = session.audio_received_ms(first.item_id)
    assert await session.truncate(first.item_id, 60_000)
    await emulator.wait_for_event("conversation.item.truncated")
    (truncation,) = record.truncations
    assert truncation.item_id == first.item_id
    assert truncation.audio_end_ms == int(received)
    assert not [e for e in events.of(ServerEventError)]


# ---- disconnects: every fault becomes one Disconnected, then a reconnect ------------------------

FAULTS: dict[str, tuple[Callable[[Any], Any], int | None, ErrorKind, str]] = {
    "close 1000": (lambda plan: plan.close(1000), 1000, ErrorKind.OFFLINE, "closed"),
    "close 1001": (lambda plan: plan.close(1001, "going away"), 1001, ErrorKind.OFFLINE, "1001"),
    "close 1011": (lambda plan: plan.close(1011), 1011, ErrorKind.SERVICE, "failed"),
    "drop": (lambda plan: plan.drop(), 1006, ErrorKind.OFFLINE, "dropped"),
    "malformed frame": (lambda plan: plan.send_malformed(), None, ErrorKind.SERVICE, "invalid"),
    "JSON but not an event": (
        lambda plan: plan.send_malformed('["response.audio.delta"]'),
        None,
        ErrorKind.SERVICE,
        "invalid",
    ),
    "session expired": (lambda plan: plan.cap_duration(0), 1001, ErrorKind.OFFLINE, "1001"),
    "missed pong": (
        lambda plan: plan.stop_answering_pings(),
        1006,
        ErrorKind.OFFLINE,
        "keep-alive",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_fault_is_reported_once_and_the_session_reconnects(
    make_emulator: MakeEmulator, open_session: OpenSession, fault: str
) -> None:
    arm, code, kind, cause = FAULTS[fault]
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator, heartbeat_s=0.2)
    await session.connect()
    await vad_turn(session, events)
    arm(emulator.connections[0].faults)
    lost = await events.wait_for(Disconnected)
    assert lost.close_code == code
    assert lost.kind is kind
    assert cause in lost.cause
    assert session.status()["connected"] is False
    assert session.status()["last_error"] == lost.cause
    await emulator.connections[0].wait_closed()
    # Exactly one report, however many ways the end was noticed.
    assert len(events.of(Disconnected)) == 1
    assert await session.send_audio(speech(100)) is False
    assert not await session.commit()
    await session.connect()
    assert session.ready
    second = emulator.connections[1]
    await emulator.wait_for_received("conversation.item.create", count=2, connection=second)
    restored = second.received_of("conversation.item.create")
    assert [item["item"]["role"] for item in restored] == ["user", "assistant"]
    await vad_turn(session, events, 2)
    assert len(events.of(Disconnected)) == 1


async def test_sending_into_a_dropped_connection_reports_it_once(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator)
    await session.connect()
    emulator.connections[0].faults.drop()
    # The microphone keeps streaming: whichever notices first (a send that fails, or the
    # reader), the appliance hears about it once and the sends stop being accepted.
    while await session.send_audio(bytes(960)):
        pass
    lost = await events.wait_for(Disconnected)
    assert lost.kind is ErrorKind.OFFLINE
    assert session.counters.audio_chunks_dropped >= 1
    await session.connect()
    assert len(events.of(Disconnected)) == 1


async def test_a_send_that_stalls_ends_the_connection_after_the_send_timeout(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator, send_timeout_s=0.5)
    await session.connect()
    emulator.connections[0].faults.stop_reading()
    # Large chunks fill the socket buffers quickly; then a send waits for room for ever.
    chunk, sent = bytes(256 * 1024), 0
    async with asyncio.timeout(WAIT):  # a stalled send that is never given up on
        while await session.send_audio(chunk):
            sent += 1
            assert sent < 400, "the sends never stalled"
    lost = await events.wait_for(Disconnected)
    assert lost.cause == "sending audio stalled for 0.5 s"
    assert len(events.of(Disconnected)) == 1
    assert not session.ready
    assert session.healthy()  # the stalled send was given up on: nothing is pending now
    # The next connection works.
    await session.connect()
    assert await session.send_audio(bytes(960))


async def test_an_error_event_leaves_the_session_open(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator)
    await session.connect()
    emulator.connections[0].faults.send_error("server_error", "boom")
    error = await events.wait_for("error")
    assert error.error.message == "boom"
    await vad_turn(session, events)
    assert events.of(Disconnected) == []
    assert session.ready


async def test_a_receive_timeout_ends_a_silent_connection(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator, receive_timeout_s=0.3)
    await session.connect()
    lost = await events.wait_for(Disconnected)
    assert "nothing received" in lost.cause
    assert lost.kind is ErrorKind.OFFLINE
    await emulator.connections[0].wait_closed()


async def test_closing_on_purpose_reports_nothing(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator)
    await session.connect()
    await vad_turn(session, events)
    await session.disconnect(end_conversation=False)
    await emulator.connections[0].wait_closed()
    assert emulator.connections[0].closed_by == "client"
    assert len(session.history) == 2  # kept for the next connect
    await session.connect()
    await emulator.wait_for_received("conversation.item.create", count=2, connection=2)
    await session.disconnect(end_conversation=True)
    assert len(session.history) == 0
    await session.close()
    await session.close()
    assert events.of(Disconnected) == []
    with pytest.raises(ServiceError, match="closed"):
        await session.connect()


async def test_disconnect_abandons_a_connect_in_flight(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY, time_scale=1.0)
    emulator.faults.next_connection().delay_events(30.0)  # session.updated would come late
    session, events = await open_session(emulator)
    attempt = asyncio.ensure_future(session.connect())
    record = await emulator.wait_for_connection(1, timeout=WAIT)
    await session.disconnect(end_conversation=True)
    with pytest.raises(ServiceError, match="abandoned"):
        await attempt
    await record.wait_closed(timeout=WAIT)
    assert not session.ready
    assert events.of(Disconnected) == []


# ---- refused connections ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, ErrorKind.AUTH),
        (403, ErrorKind.AUTH),
        (404, ErrorKind.AUTH),
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.SERVICE),
        (503, ErrorKind.SERVICE),
    ],
)
async def test_refused_handshakes_are_classified(
    make_emulator: MakeEmulator, open_session: OpenSession, status: int, kind: ErrorKind
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    emulator.faults.refuse_handshakes(status, retry_after_s=7 if status == 429 else None)
    session, _ = await open_session(emulator)
    with pytest.raises(ServiceError) as caught:
        await session.connect()
    assert caught.value.kind is kind
    assert f"HTTP {status}" in str(caught.value)
    assert caught.value.retry_after == (7.0 if status == 429 else None)
    assert not session.ready
    await session.connect()  # the refusal was one-off
    assert session.ready


async def test_a_wrong_key_is_an_auth_refusal(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key="the-right-key-0123456789")
    session, _ = await open_session(emulator)
    with pytest.raises(ServiceError) as caught:
        await session.connect()
    assert caught.value.kind is ErrorKind.AUTH


async def test_an_unreachable_endpoint_is_offline(open_session: OpenSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings({"AZURE_VOICELIVE_ENDPOINT": f"http://127.0.0.1:{port}"})
    credential = VoiceCredential(settings.auth)
    session = VoiceSession(settings, credential, on_event=Events())
    with pytest.raises(ServiceError) as caught:
        await session.connect()
    assert caught.value.kind is ErrorKind.OFFLINE
    await session.close()


async def test_a_handshake_that_never_completes_times_out_as_offline() -> None:
    # A TCP listener that never answers: the network swallowed the upgrade request.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    settings = make_settings(
        {
            "AZURE_VOICELIVE_ENDPOINT": f"http://127.0.0.1:{port}",
            "APPLIANCE_CONNECT_TIMEOUT_S": "0.3",
        }
    )
    credential = VoiceCredential(settings.auth)
    session = VoiceSession(settings, credential, on_event=Events())
    try:
        with pytest.raises(ServiceError, match="not accepted within") as caught:
            await session.connect()
        assert caught.value.kind is ErrorKind.OFFLINE
    finally:
        listener.close()  # resets the pending connection: the abandoned attempt ends
        await session.close()


async def test_a_service_that_never_confirms_the_session_times_out(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    emulator.faults.next_connection().delay_events(30.0)
    settings = make_settings({"APPLIANCE_CONNECT_TIMEOUT_S": "0.3"})
    session, _ = await open_session(emulator, settings)
    with pytest.raises(ServiceError, match=r"no session\.updated") as caught:
        await session.connect()
    assert caught.value.kind is ErrorKind.SERVICE
    await emulator.connections[0].wait_closed()
    assert emulator.connections[0].closed_by == "client"
    await session.connect()  # the next connection answers at once
    assert session.ready


async def test_the_session_stays_under_the_connection_quota(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, _ = await open_session(emulator, budget=ConnectionBudget(3))
    for _ in range(3):
        await session.connect()
    with pytest.raises(ServiceError) as caught:
        await session.connect()
    assert caught.value.kind is ErrorKind.RATE_LIMITED
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60
    assert len(emulator.handshakes) == 3


# ---- the reconnect loop as the appliance drives it ----------------------------------------------


async def reconnect(
    session: VoiceSession,
    backoff: Backoff,
    outages: OutageLog,
    sleep: Callable[[float], Awaitable[None]],
) -> list[ServiceError]:
    """attempt -> fail -> delay from the backoff -> (timer) -> attempt, until ready."""
    failures: list[ServiceError] = []
    while True:
        try:
            await session.connect()
        except ServiceError as error:
            failures.append(error)
            delay = backoff.next_delay(error)
            outages.failed(error, delay)
            await sleep(delay)
            continue
        backoff.connected()
        outages.recovered()
        return failures


async def test_refused_five_times_then_accepted_the_delays_follow_the_backoff(
    make_emulator: MakeEmulator,
    open_session: OpenSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    emulator.faults.refuse_handshakes(503, times=5)
    session, _ = await open_session(emulator)
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:  # the app's retry timer, on an injected clock
        slept.append(delay)
        now[0] += delay

    backoff = Backoff(rng=random.Random(42), clock=lambda: now[0])
    outages = OutageLog(logging.getLogger("test.voice.outage"), clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="test.voice.outage")
    failures = await reconnect(session, backoff, outages, fake_sleep)
    assert session.ready
    assert [f.kind for f in failures] == [ErrorKind.SERVICE] * 5
    reference = random.Random(42)
    expected = [step * (1 - 0.25 * reference.random()) for step in (0.5, 1, 2, 4, 8)]
    assert slept == pytest.approx(expected)
    records = [r for r in caplog.records if r.name == "test.voice.outage"]
    assert [r.levelno for r in records] == [logging.WARNING] + [logging.DEBUG] * 4 + [logging.INFO]
    assert f"{sum(expected):.1f} s" in records[-1].getMessage()
    assert [h.status for h in emulator.handshakes] == [503] * 5 + [101]


async def test_an_auth_refusal_waits_the_longest_step(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    emulator.faults.refuse_handshakes(401, times=2)
    session, _ = await open_session(emulator)
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    backoff = Backoff(jitter=0.0)
    await reconnect(session, backoff, OutageLog(), fake_sleep)
    assert slept == [30.0, 30.0]


async def test_retry_after_of_a_throttled_handshake_is_honoured(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    emulator.faults.refuse_handshakes(429, times=1, retry_after_s=12)
    session, _ = await open_session(emulator)
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    await reconnect(session, Backoff(jitter=0.0), OutageLog(), fake_sleep)
    assert slept == [12.0]


# ---- context restore ----------------------------------------------------------------------------


async def test_context_is_recreated_after_a_drop_mid_conversation(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    long_answer = Speech(speech(3000).astype("<i2").tobytes(), "one two three four five six")
    emulator = await make_emulator(
        api_key=TEST_KEY, audio_speed=1.0, responder=Script(Parrot(), long_answer)
    )
    session, events = await open_session(emulator, button_mode=ButtonMode.PUSH_TO_TALK)
    await session.connect()
    # Turn 1: parrot answer, heard in full.
    await say(session, speech(400))
    await session.commit()
    await session.create_response()
    await events.wait_for("response.done")
    # Turn 2: a long answer the user cuts short after 1 s, then the connection drops.
    await say(session, speech(300))
    await session.commit()
    await session.create_response()
    await events.wait_for(AudioDelta, len(events.of(AudioDelta)) + 12)  # 1.2 s of it arrived
    item = session.audio_item_id
    assert item is not None
    await session.cancel_response()
    await session.truncate(item, 1000)
    await events.wait_for("response.done", 2)
    emulator.connections[0].faults.drop()
    await events.wait_for(Disconnected)
    await session.connect()
    await emulator.wait_for_received("conversation.item.create", count=4, connection=2)
    first = emulator.connections[0]
    heard = [e["transcript"] for e in first.sent_of(TRANSCRIBED)]
    said = [e["transcript"] for e in first.sent_of("response.audio_transcript.done")]
    restored = [e["item"] for e in emulator.connections[1].received_of("conversation.item.create")]
    texts = [(i["role"], i["content"][0]["text"]) for i in restored]
    assert texts[:3] == [("user", heard[0]), ("assistant", said[0]), ("user", heard[1])]
    # The interrupted answer comes back cut to what was played, and marked as cut.
    role, cut = texts[3]
    assert role == "assistant"
    assert cut.endswith("…")
    assert "six" not in cut
    assert said[1].startswith(cut.removesuffix("…"))
    # The new connection's model has the conversation: the emulator holds the items.
    await session.create_response()
    await events.wait_for("response.done", 3)
    assert emulator.connections[1].sent_of("response.done")


# ---- proactive renewal before the connection cap ------------------------------------------------


async def test_the_connection_is_renewed_between_turns_before_the_cap(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    # Scaled time: the emulator's 60-minute cap is 4 s of wall time; renewal is due at 1 s.
    emulator = await make_emulator(api_key=TEST_KEY, time_scale=4.0 / 3600, audio_speed=1.0)
    settings = make_settings({"APPLIANCE_CONNECTION_MAX_S": "1.0"})
    session, events = await open_session(emulator, settings, button_mode=ButtonMode.PUSH_TO_TALK)
    connections_at_done: list[int] = []
    events.on_each = lambda event: (
        connections_at_done.append(len(emulator.connections))
        if isinstance(event, ServerEventResponseDone)
        else None
    )
    await session.connect()
    first = emulator.connections[0]
    # A 1.5 s answer spans the renewal time: the renewal waits for the turn to end.
    await say(session, speech(1500))
    await session.commit()
    await session.create_response()
    await events.wait_for("response.done")
    assert connections_at_done == [1]
    second = await emulator.wait_for_connection(2, timeout=WAIT)
    await first.wait_closed()
    assert first.closed_by == "client"  # closed by us, before the service's cap
    await emulator.wait_until(lambda: session.session_id == second.session_id, WAIT, "swap")
    await emulator.wait_for_received("conversation.item.create", count=2, connection=second)
    restored = second.received_of("conversation.item.create")
    assert [e["item"]["role"] for e in restored] == ["user", "assistant"]
    assert session.counters.renewals >= 1
    # Invisible to the appliance: no disconnect, and the next turn simply works.
    await say(session, speech(300))
    await session.commit()
    await session.create_response()
    await events.wait_for("response.done", 2)
    assert events.of(Disconnected) == []
    assert all(record.closed_by != "server" for record in emulator.connections)


class Warned(logging.Handler):
    """Sets an event when a WARNING arrives (the test waits for it, with a deadline)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


async def test_a_failed_renewal_leaves_the_connection_in_use(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    settings = make_settings({"APPLIANCE_CONNECTION_MAX_S": "0.2"})
    session, events = await open_session(emulator, settings)
    warned = Warned()
    logger = logging.getLogger("appliance.voice.session")
    logger.addHandler(warned)
    try:
        await session.connect()
        emulator.faults.refuse_handshakes(503)  # the renewal's handshake, due in 0.2 s
        await asyncio.wait_for(warned.seen.wait(), WAIT)
    finally:
        logger.removeHandler(warned)
    assert "renewing the Voice Live connection failed" in warned.messages[0]
    assert [h.status for h in emulator.handshakes] == [101, 503]
    assert session.ready
    assert session.session_id == emulator.connections[0].session_id
    await vad_turn(session, events)
    assert events.of(Disconnected) == []


# ---- device tools -------------------------------------------------------------------------------


async def test_a_tool_call_round_trip(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    script = Script(FunctionCall("set_volume", {"percent": 30}, call_id="call_vol"))
    emulator = await make_emulator(api_key=TEST_KEY, responder=script)
    device = Device()
    session, events = await open_session(
        emulator, button_mode=ButtonMode.PUSH_TO_TALK, device=device
    )
    await session.connect()
    await say(session, speech(300))
    await session.commit()
    await session.create_response()
    called = await events.wait_for(ToolCalled)
    assert called.name == "set_volume"
    assert called.ok
    assert device.volume == 30
    # The follow-up answer speaks the result (the emulator's parrot reads it back).
    await events.wait_for("response.done", 2)
    record = emulator.connections[0]
    outputs = [
        e["item"]
        for e in record.received_of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]
    assert outputs == [
        {
            "type": "function_call_output",
            "call_id": "call_vol",
            "output": json.dumps({"volume_percent": 30, "was_percent": 50}),
        }
    ]
    types = record.received_types()
    assert types.index("conversation.item.create") < len(types) - 1
    assert types[-1] == "response.create"
    transcript = record.sent_of("response.audio_transcript.done")[-1]["transcript"]
    assert "volume_percent" in transcript


async def test_a_failing_tool_becomes_an_answer(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    script = Script(FunctionCall("set_volume", {"percent": 500}, call_id="c1"))
    emulator = await make_emulator(api_key=TEST_KEY, responder=script)
    session, events = await open_session(
        emulator, button_mode=ButtonMode.PUSH_TO_TALK, device=Device()
    )
    await session.connect()
    await say(session, speech(300))
    await session.commit()
    await session.create_response()
    called = await events.wait_for(ToolCalled)
    assert not called.ok
    assert "error" in json.loads(called.output)
    await events.wait_for("response.done", 2)
    assert session.ready


async def test_end_conversation_tool_tells_the_device(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(
        api_key=TEST_KEY, responder=Script(FunctionCall("end_conversation"))
    )
    device = Device()
    session, events = await open_session(
        emulator, button_mode=ButtonMode.PUSH_TO_TALK, device=device
    )
    await session.connect()
    await say(session, speech(300))
    await session.commit()
    await session.create_response()
    await events.wait_for(ToolCalled)
    assert device.ended == 1
    await events.wait_for("response.done", 2)  # the goodbye


async def test_tools_switched_off_are_not_offered(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    settings = make_settings({"APPLIANCE_TOOLS": "false"})
    session, _ = await open_session(emulator, settings, device=Device())
    await session.connect()
    assert "tools" not in emulator.connections[0].received_of("session.update")[0]["session"]


# ---- credentials and agents ---------------------------------------------------------------------


async def test_managed_identity_token_is_checked_by_the_emulator(
    make_emulator: MakeEmulator,
    open_session: OpenSession,
    identity_endpoint: StartIdentity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = await identity_endpoint("app_service")
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    emulator = await make_emulator(bearer_token=endpoint.token)
    settings = make_settings(APPLIANCE_AUTH="managed_identity")
    session, _ = await open_session(emulator, settings)
    await session.connect()
    await session.disconnect(end_conversation=False)
    await session.connect()  # the cached token serves the second connection
    assert [r.auth_scheme for r in emulator.connections] == ["bearer", "bearer"]
    assert len(endpoint.token_requests) == 1
    # A token the service does not accept is an auth refusal.
    emulator.bearer_token = "another-token"
    with pytest.raises(ServiceError) as caught:
        await session.connect()
    assert caught.value.kind is ErrorKind.AUTH


async def test_service_principal_token_is_checked_by_the_emulator(
    make_emulator: MakeEmulator, entra_endpoint: StartEntra
) -> None:
    secret = "sp-secret-0123456789abcdef"
    entra = await entra_endpoint("client-1", secret)
    emulator = await make_emulator(bearer_token=entra.token)
    settings = make_settings(
        APPLIANCE_AUTH="service_principal",
        AZURE_TENANT_ID="tenant-1",
        AZURE_CLIENT_ID="client-1",
        AZURE_CLIENT_SECRET=secret,
    )
    async with VoiceCredential(
        settings.auth, authority=entra.authority, connection_verify=str(entra.ca_file)
    ) as credential:
        session = VoiceSession(settings, credential, on_event=Events(), endpoint=emulator.url)
        try:
            await session.connect()
        finally:
            await session.close()
    assert emulator.connections[0].auth_scheme == "bearer"
    assert len(entra.requests) == 1


async def test_a_foundry_agent_is_addressed_instead_of_a_model(
    make_emulator: MakeEmulator, open_session: OpenSession
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    settings = make_settings(
        {"AZURE_VOICELIVE_AGENT_NAME": "helper", "AZURE_VOICELIVE_AGENT_PROJECT": "kitchen"}
    )
    session, _ = await open_session(emulator, settings)
    await session.connect()
    record = emulator.connections[0]
    assert record.query["agent-name"] == "helper"
    assert record.query["agent-project-name"] == "kitchen"
    assert "model" not in record.query
    assert "instructions" not in record.received_of("session.update")[0]["session"]


# ---- health and secrets -------------------------------------------------------------------------


async def test_health_and_status(make_emulator: MakeEmulator, open_session: OpenSession) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    session, events = await open_session(emulator)
    assert session.healthy()
    await session.connect()
    assert session.healthy()
    assert session.last_activity is not None
    status = session.status()
    assert status["connected"] is True
    assert status["session_id"] == emulator.connections[0].session_id
    assert status["auth"] == "API key"
    emulator.connections[0].faults.drop()
    await events.wait_for(Disconnected)
    assert session.healthy()  # nothing open: waiting to retry is healthy
    assert session.status()["connections_lost"] == 1


async def test_secrets_and_tokens_never_reach_the_logs(
    make_emulator: MakeEmulator,
    open_session: OpenSession,
    identity_endpoint: StartIdentity,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = await identity_endpoint("app_service")
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    emulator = await make_emulator(bearer_token=endpoint.token)
    settings = make_settings(APPLIANCE_AUTH="managed_identity")
    session, events = await open_session(emulator, settings)
    session._credential.log_choice()
    await session.connect()
    await vad_turn(session, events)
    emulator.connections[0].faults.drop()
    await events.wait_for(Disconnected)
    emulator.faults.refuse_handshakes(401)
    with pytest.raises(ServiceError) as refused:
        await session.connect()
    logging.getLogger("test").warning("refused: %s", refused.value)

    key_emulator = await make_emulator(api_key=TEST_KEY)
    key_session, key_events = await open_session(key_emulator)
    await key_session.connect()
    key_emulator.connections[0].faults.send_malformed()
    await key_events.wait_for(Disconnected)
    key_emulator.faults.refuse_handshakes(403)
    with pytest.raises(ServiceError) as forbidden:
        await key_session.connect()
    logging.getLogger("test").warning("refused: %s", forbidden.value)

    text = caplog.text
    assert "lost" in text
    assert "refused" in text
    for secret in (endpoint.token, endpoint.header_secret, TEST_KEY):
        assert secret not in text
