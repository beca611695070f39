"""Every injectable fault, observed from the real SDK's side of a real socket."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import WSServerHandshakeError
from azure.ai.voicelive.aio import ConnectionClosed, VoiceLiveConnection
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.ai.voicelive.models import ServerEvent, ServerEventError

from appliance.emulator import Emulator
from tests.fixtures.emulator import MakeEmulator, drain, events_until, sdk_connect


async def until_closed(
    connection: VoiceLiveConnection,
) -> tuple[list[ServerEvent], ConnectionClosed]:
    """Events received until the close frame, and the close (with the service's code)."""
    events: list[ServerEvent] = []
    async with asyncio.timeout(10):
        while True:
            try:
                events.append(await connection.recv())
            except ConnectionClosed as closed:
                return events, closed


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, ""), (1001, "session_expired"), (1011, "internal error")]
)
async def test_close_with_a_code_after_n_events(emulator: Emulator, code: int, reason: str) -> None:
    emulator.faults.next_connection().close(code, reason, after_events=2)
    async with sdk_connect(emulator.url) as connection:
        await connection.session.update(session={"instructions": "x"})
        events, closed = await until_closed(connection)
    assert [e.type for e in events] == ["session.created", "session.updated"]
    assert closed.code == code
    record = await emulator.connections[0].wait_closed()
    assert (record.close_code, record.closed_by) == (code, "server")


async def test_close_after_emulated_seconds(make_emulator: MakeEmulator) -> None:
    # 10 emulated minutes at 1/10000 scale: 60 ms of wall time.
    emulator = await make_emulator(time_scale=1e-4)
    emulator.faults.next_connection().close(1001, "session_expired", after_seconds=600)
    async with sdk_connect(emulator.url) as connection:
        events, closed = await until_closed(connection)
    assert [e.type for e in events] == ["session.created"]
    assert closed.code == 1001


async def test_faults_armed_on_an_open_connection(emulator: Emulator) -> None:
    async with sdk_connect(emulator.url) as connection:
        await events_until(connection, "session.created")
        record = await emulator.wait_for_connection(1)
        record.faults.close(1011, after_events=1)  # counted from now
        await connection.session.update(session={"instructions": "x"})
        events, closed = await until_closed(connection)
    assert [e.type for e in events] == ["session.updated"]
    assert closed.code == 1011


async def test_drop_without_a_close_frame_ends_iteration_silently(emulator: Emulator) -> None:
    emulator.faults.next_connection().drop(after_events=1)
    async with sdk_connect(emulator.url) as connection:
        events = await drain(connection)  # no exception: the SDK just stops
        assert [e.type for e in events] == ["session.created"]
        assert connection._connection.close_code == 1006  # no close frame came
    record = await emulator.connections[0].wait_closed()
    assert record.closed_by == "dropped"


async def test_unanswered_pings_make_the_client_give_up(emulator: Emulator) -> None:
    emulator.faults.next_connection().stop_answering_pings()
    async with sdk_connect(emulator.url, connection_options={"heartbeat": 0.2}) as connection:
        events = await drain(connection)
        assert [e.type for e in events] == ["session.created"]
        assert connection._connection.close_code == 1006
    record = await emulator.connections[0].wait_closed()
    assert record.closed_by == "client"
    assert record.pings >= 1


async def test_pings_are_answered_by_default(emulator: Emulator) -> None:
    async with sdk_connect(emulator.url, connection_options={"heartbeat": 0.05}) as connection:
        await events_until(connection, "session.created")
        record = await emulator.wait_for_connection(1)
        await emulator.wait_until(lambda: record.pings >= 3, timeout=10, what="three pings")
        await connection.session.update(session={"instructions": "x"})
        await events_until(connection, "session.updated")
    await record.wait_closed()
    assert record.close_code == 1000


@pytest.mark.parametrize("status", [401, 403, 429, 503])
async def test_refused_handshakes(emulator: Emulator, status: int) -> None:
    emulator.faults.refuse_handshakes(status, times=2, retry_after_s=7)
    for _ in range(2):
        with pytest.raises(VoiceLiveConnectionError) as refused:
            async with sdk_connect(emulator.url):
                pass
        cause = refused.value.__cause__
        assert isinstance(cause, WSServerHandshakeError)
        assert cause.status == status
        assert cause.headers is not None
        assert cause.headers["Retry-After"] == "7"
    async with sdk_connect(emulator.url) as connection:
        await events_until(connection, "session.created")
    assert [h.status for h in emulator.handshakes] == [status, status, 101]
    assert len(emulator.connections) == 1


async def test_delayed_events(emulator: Emulator) -> None:
    emulator.faults.next_connection().delay_events(0.05)
    started = time.monotonic()
    async with sdk_connect(emulator.url) as connection:
        for _ in range(3):
            await connection.session.update(session={"instructions": "x"})
        events = await events_until(connection, "session.updated")
        await events_until(connection, "session.updated")
        await events_until(connection, "session.updated")
    # Four events, each held back 50 ms: a lower bound, whatever the machine's load.
    assert [e.type for e in events] == ["session.created", "session.updated"]
    assert time.monotonic() - started >= 4 * 0.05 - 0.01


async def test_malformed_frame_raises_out_of_the_iterator(emulator: Emulator) -> None:
    emulator.faults.next_connection().send_malformed("<html>oops</html>", after_events=1)
    async with sdk_connect(emulator.url) as connection:
        with pytest.raises(VoiceLiveConnectionError, match="Failed to parse"):
            await drain(connection)
    record = emulator.connections[0]
    assert record.sent[1] == {"type": None, "raw": "<html>oops</html>"}


async def test_error_event_leaves_the_session_open(emulator: Emulator) -> None:
    emulator.faults.next_connection().send_error(
        "server_error", "transient trouble", after_events=1
    )
    async with sdk_connect(emulator.url) as connection:
        events = await events_until(connection, "error")
        error = events[-1]
        assert isinstance(error, ServerEventError)
        assert (error.error.code, error.error.message) == ("server_error", "transient trouble")
        await connection.session.update(session={"instructions": "x"})
        await events_until(connection, "session.updated")


async def test_connection_cap_expires_the_session(make_emulator: MakeEmulator) -> None:
    # The service's 60 minutes at 1/10000 scale: 0.36 s of wall time.
    emulator = await make_emulator(time_scale=1e-4)
    async with sdk_connect(emulator.url) as connection:
        events, closed = await until_closed(connection)
    assert [e.type for e in events] == ["session.created", "error"]
    error = events[1]
    assert isinstance(error, ServerEventError)
    assert error.error.code == "session_expired"
    assert closed.code == 1001
    record = await emulator.connections[0].wait_closed()
    assert record.close_code == 1001


async def test_cap_per_connection_and_for_every_connection(make_emulator: MakeEmulator) -> None:
    emulator = await make_emulator(time_scale=1e-3)
    emulator.faults.max_connection_s = 100_000  # effectively no cap ...
    emulator.faults.for_connection(2).cap_duration(60)  # ... except for the second
    emulator.faults.every_connection.send_error("warmup", "every connection", after_events=1)
    async with sdk_connect(emulator.url) as first:
        events = await events_until(first, "error")
        async with sdk_connect(emulator.url) as second:
            second_events, closed = await until_closed(second)
        assert closed.code == 1001
        assert [e.type for e in second_events] == ["session.created", "error", "error"]
        # The first connection is untouched by the second one's cap.
        await first.session.update(session={"instructions": "x"})
        await events_until(first, "session.updated")
    assert [e.type for e in events] == ["session.created", "error"]


async def test_emulator_close_ends_open_connections_with_1001(make_emulator: MakeEmulator) -> None:
    emulator = await make_emulator()
    async with sdk_connect(emulator.url) as connection:
        await events_until(connection, "session.created")
        reading = asyncio.create_task(until_closed(connection))
        await emulator.close()
        events, closed = await reading
    assert events == []
    assert closed.code == 1001
    await emulator.close()  # idempotent
