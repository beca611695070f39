"""The emulator's WebSocket server: handshake, connection tasks, records and faults.

Each connection runs three kinds of tasks in one TaskGroup: the reader (client frames into
the :class:`~appliance.emulator.protocol.Conversation`), the writer (the only task that sends,
so events leave in the order the conversation produced them, and where per-event faults
apply), and a streamer per response (pacing audio with the loop's timers). Timed faults are
tasks of the same group, so closing a connection ends all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

from aiohttp import WSMsgType, web

from appliance.emulator.faults import (
    Action,
    Close,
    Drop,
    Expire,
    Faults,
    Malformed,
    Scheduled,
    SendError,
    StopReading,
    error_body,
)
from appliance.emulator.protocol import Conversation, ConversationOptions, Event
from appliance.emulator.records import (
    AuthScheme,
    Changes,
    Closer,
    ConnectionRecord,
    HandshakeRecord,
    bounded,
    matching,
)
from appliance.emulator.responders import Parrot, Responder

log = logging.getLogger("appliance.emulator")

PATH: Final = "/voice-live/realtime"
API_VERSION: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
DEFAULT_AUDIO_SPEED: Final = 8.0
CLOSE_WAIT_S: Final = 2.0  # how long shutting down waits for a client to answer the close


class _Stop(Exception):
    """Raised inside a connection's TaskGroup to end the connection."""


class Emulator:
    """A local Voice Live service on loopback; ``async with Emulator() as emulator: ...``.

    ``emulator.url`` is the endpoint for the SDK (``http://127.0.0.1:PORT``).
    ``api_key``/``bearer_token``: the credential the service requires (when both are None,
    any api-key or bearer token is accepted, but one must be present). ``audio_speed``: how
    much faster than real time response audio is sent (``math.inf``: as fast as possible).
    ``time_scale``: wall seconds per emulated second for timed faults and event delays.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        bearer_token: str | None = None,
        responder: Responder | None = None,
        audio_speed: float = DEFAULT_AUDIO_SPEED,
        time_scale: float = 1.0,
        faults: Faults | None = None,
        audio_chunk_ms: int = 100,
        rate_limit_events: bool = True,
        max_recorded_events: int | None = None,
    ) -> None:
        if audio_speed <= 0:
            raise ValueError("audio_speed must be positive (math.inf: no pacing)")
        if time_scale < 0:
            raise ValueError("time_scale must not be negative")
        self.host = host
        self._requested_port = port
        self.port = port
        self.api_key = api_key
        self.bearer_token = bearer_token
        self.responder: Responder = responder or Parrot()
        self.audio_speed = audio_speed
        self.time_scale = time_scale
        self.faults = faults or Faults()
        self.audio_chunk_ms = audio_chunk_ms
        self.rate_limit_events = rate_limit_events
        self.max_recorded_events = max_recorded_events
        self.connections: list[ConnectionRecord] = []
        self.handshakes: list[HandshakeRecord] = []
        self._changes = Changes()
        self._live: set[_Connection] = set()
        self._runner: web.AppRunner | None = None
        self._closed = False

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> Emulator:
        if self._runner is not None:
            return self
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        log.debug("Voice Live emulator listening on %s", self.url)
        return self

    async def close(self) -> None:
        """Close every connection (1001 going away) and stop listening. Idempotent."""
        if self._runner is None or self._closed:
            return
        self._closed = True
        async with asyncio.TaskGroup() as group:
            for connection in list(self._live):
                group.create_task(connection.shut_down())
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- waiting
    # Every wait takes its deadline as a parameter: tests never wait without one.
    async def wait_for_connection(
        self,
        number: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> ConnectionRecord:
        """The ``number``-th accepted connection (1-based), once it exists."""
        await self._changes.wait_until(
            lambda: len(self.connections) >= number,
            timeout,
            lambda: f"{len(self.connections)} connection(s), waiting for {number}",
        )
        return self.connections[number - 1]

    async def wait_for_event(
        self,
        event_type: str,
        *,
        count: int = 1,
        connection: int | ConnectionRecord | None = None,
        where: Callable[[Event], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Event:
        """The ``count``-th server event of this type sent (already, or from now on)."""
        return await self._wait_for(
            event_type,
            direction="sent",
            count=count,
            connection=connection,
            where=where,
            deadline_s=timeout,
        )

    async def wait_for_received(
        self,
        event_type: str,
        *,
        count: int = 1,
        connection: int | ConnectionRecord | None = None,
        where: Callable[[Event], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Event:
        """The ``count``-th client event of this type received."""
        return await self._wait_for(
            event_type,
            direction="received",
            count=count,
            connection=connection,
            where=where,
            deadline_s=timeout,
        )

    async def wait_for_handshakes(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[HandshakeRecord]:
        await self._changes.wait_until(
            lambda: len(self.handshakes) >= count,
            timeout,
            lambda: f"{len(self.handshakes)} handshake(s), waiting for {count}",
        )
        return list(self.handshakes)

    async def wait_until(
        self,
        condition: Callable[[], Any],
        timeout: float = 5.0,  # noqa: ASYNC109
        what: str = "condition",
    ) -> Any:
        """Wait until ``condition()`` is true, re-checking whenever anything is recorded."""
        return await self._changes.wait_until(condition, timeout, lambda: f"{what} not met")

    async def _wait_for(
        self,
        event_type: str,
        *,
        direction: str,
        count: int,
        connection: int | ConnectionRecord | None,
        where: Callable[[Event], bool] | None,
        deadline_s: float,
    ) -> Event:
        def records() -> list[ConnectionRecord]:
            if connection is None:
                return list(self.connections)
            if isinstance(connection, ConnectionRecord):
                return [connection]
            return self.connections[connection - 1 : connection]

        def found() -> Event | None:
            seen = 0
            for record in records():
                events = record.sent if direction == "sent" else record.received
                for event in matching(events, event_type, where):
                    seen += 1
                    if seen == count:
                        return event
            return None

        def describe() -> str:
            lines = [f"no {direction} {event_type!r} #{count}; {direction} so far:"]
            for record in records():
                types = record.sent_types() if direction == "sent" else record.received_types()
                lines.append(f"  connection {record.number}: {_summarise(types)}")
            return "\n".join(lines)

        event: Event = await self._changes.wait_until(found, deadline_s, describe)
        return event

    # ----------------------------------------------------------------- handshake
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        scheme, credential = _credential(request)
        refusal = self.faults.take_refusal()
        if refusal is not None:
            headers = {}
            if refusal.retry_after_s is not None:
                headers["Retry-After"] = str(math.ceil(refusal.retry_after_s))
            return self._refuse(
                request,
                query=query,
                scheme=scheme,
                status=refusal.status,
                reason="injected",
                headers=headers,
            )
        if not API_VERSION.match(query.get("api-version", "")):
            return self._refuse(
                request,
                query=query,
                scheme=scheme,
                status=400,
                reason="missing or malformed api-version",
            )
        if not query.get("model") and not query.get("agent-name"):
            return self._refuse(
                request, query=query, scheme=scheme, status=400, reason="missing model"
            )
        if not self._authorised(scheme, credential):
            return self._refuse(
                request, query=query, scheme=scheme, status=401, reason="credential refused"
            )
        assert scheme is not None
        websocket = web.WebSocketResponse(autoping=False, max_msg_size=MAX_MESSAGE_BYTES)
        if not websocket.can_prepare(request).ok:
            return self._refuse(
                request, query=query, scheme=scheme, status=400, reason="not a WebSocket upgrade"
            )
        await websocket.prepare(request)
        self.handshakes.append(HandshakeRecord(101, request.path, query, scheme))
        connection = _Connection(self, request, websocket, query, scheme)
        self._live.add(connection)
        try:
            await connection.run()
        finally:
            self._live.discard(connection)
        return websocket

    def _authorised(self, scheme: AuthScheme | None, credential: str) -> bool:
        if scheme is None or not credential:
            return False
        if self.api_key is None and self.bearer_token is None:
            return True
        expected = self.api_key if scheme == "api-key" else self.bearer_token
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), credential.encode("utf-8")
        )

    def _refuse(
        self,
        request: web.Request,
        *,
        query: dict[str, str],
        scheme: AuthScheme | None,
        status: int,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.handshakes.append(HandshakeRecord(status, request.path, query, scheme, reason))
        self._changes.notify()
        log.info("handshake refused with %d (%s; auth: %s)", status, reason, scheme or "none")
        return web.json_response(error_body(status), status=status, headers=headers)


class _Connection:
    """One accepted WebSocket: its conversation, record, tasks and faults."""

    def __init__(
        self,
        emulator: Emulator,
        request: web.Request,
        websocket: web.WebSocketResponse,
        query: dict[str, str],
        scheme: AuthScheme,
    ) -> None:
        self.emulator = emulator
        self.request = request
        self.websocket = websocket
        plan = emulator.faults.plan_for_new_connection()
        number = len(emulator.connections) + 1
        limit = emulator.max_recorded_events
        self.record = ConnectionRecord(
            number=number,
            query=query,
            auth_scheme=scheme,
            faults=plan,
            received=bounded(limit),
            sent=bounded(limit),
            _changes=emulator._changes,
        )
        self.record._live = self
        cap = plan.max_duration_s if plan.max_duration_s is not None else 0.0
        self.conversation = Conversation(
            ConversationOptions(
                model=query.get("model") or "agent",
                responder=self._responder,
                audio_chunk_ms=emulator.audio_chunk_ms,
                rate_limit_events=emulator.rate_limit_events,
                expires_at=int(time.time() + cap),
            )
        )
        self.record.session_id = str(self.conversation.session["id"])
        self.record.truncations = self.conversation.truncations
        self._outbox: asyncio.Queue[Event | Action] = asyncio.Queue()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._streaming: str | None = None
        self._event_faults: list[tuple[int, Action]] = []
        self._sent_count = 0
        self._ending = False
        self._closer: asyncio.Task[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()  # the socket is done with: the tasks may end

    def _responder(self) -> Responder:
        return self.record.responder or self.emulator.responder

    # ----------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        emulator = self.emulator
        emulator.connections.append(self.record)
        emulator._changes.notify()
        log.info(
            "connection %d opened (model %s, auth %s)",
            self.record.number,
            self.record.model,
            self.record.auth_scheme,
        )
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._reader = self._spawn(self._read_loop())
                self._spawn(self._write_loop())
                self.record.faults.attach(self._arm)
                for event in self.conversation.open():
                    self._outbox.put_nowait(event)
                await self._finished.wait()
                self._end_tasks()
        except* _Stop:
            pass
        finally:
            self._group = None
            self.record.faults.detach()
            self.record._live = None
            if self.record.closed_by is None:
                self.record.closed_by = "client"
            if self.record.close_code is None:
                self.record.close_code = self.websocket.close_code
            emulator._changes.notify()
            log.info(
                "connection %d closed by %s (code %s)",
                self.record.number,
                self.record.closed_by,
                self.record.close_code,
            )

    def _spawn(self, coroutine: Any) -> asyncio.Task[None] | None:
        if self._group is None or self._ending:
            coroutine.close()
            return None
        task: asyncio.Task[None] = self._group.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _end_tasks(self) -> None:
        """Cancel the connection's tasks, except one that is closing the socket."""
        self._ending = True
        for task in list(self._tasks):
            if task is not asyncio.current_task() and task is not self._closer:
                task.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close from the service side (a fault, or the emulator shutting down)."""
        await self._perform(Close(code, reason), closed_by="emulator")

    async def shut_down(self) -> None:
        """Close with 1001; a client that never answers the close frame is cut off."""
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.close(1001, "server shutting down")
        except TimeoutError:
            log.debug("connection %d did not answer the close in time", self.record.number)

    # ----------------------------------------------------------------- reading
    async def _read_loop(self) -> None:
        try:
            await self._read_messages()
        finally:
            # During a close from our side the closer says when the socket is done: if the
            # handler returned now, aiohttp would close with 1000 before our code went out.
            if self._closer is None:
                self._finished.set()

    async def _read_messages(self) -> None:
        websocket = self.websocket
        while True:
            message = await websocket.receive()
            if message.type == WSMsgType.TEXT:
                self._received(message.data)
            elif message.type == WSMsgType.PING:
                self.record.pings += 1
                self.emulator._changes.notify()
                if not self.record.faults.ignore_pings:
                    await websocket.pong(message.data)
            elif message.type == WSMsgType.BINARY:
                self._record_received({"type": None, "binary_bytes": len(message.data)})
                self._emit(
                    [
                        self.conversation.error_event(
                            "invalid_value", "Binary frames are not supported: send JSON text."
                        )
                    ]
                )
            elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            elif message.type == WSMsgType.ERROR:
                log.debug("connection %d: %s", self.record.number, websocket.exception())
                return

    def _received(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        self._record_received(event if isinstance(event, dict) else {"type": None, "raw": text})
        events = (
            self.conversation.receive(event)
            if isinstance(event, dict)
            else self.conversation.receive_text(text)
        )
        self._emit(events)

    def _record_received(self, event: Event) -> None:
        self.record.received.append(event)
        self.emulator._changes.notify()

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            self._outbox.put_nowait(event)
        response = self.conversation.response
        if response is not None and response.id != self._streaming:
            self._streaming = response.id
            self._spawn(self._stream(response.id))

    # ----------------------------------------------------------------- responses
    async def _stream(self, response_id: str) -> None:
        """Hand the response's steps to the writer, audio paced at ``audio_speed``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        audio_seconds = 0.0
        speed = self.emulator.audio_speed
        while True:
            step = self.conversation.next_step(response_id)
            if step is None:
                return
            for event in step.events:
                self._outbox.put_nowait(event)
            audio_seconds += step.audio_seconds
            if math.isinf(speed):
                await asyncio.sleep(0)
            else:
                # Deadlines from the start, so timer lateness does not accumulate.
                await asyncio.sleep(max(0.0, started + audio_seconds / speed - loop.time()))

    # ----------------------------------------------------------------- writing
    async def _write_loop(self) -> None:
        while not self._ending:
            item = await self._outbox.get()
            if isinstance(item, dict):
                await self._send_event(item)
            else:
                await self._perform(item, closed_by="server")

    async def _send_event(self, event: Event) -> None:
        delay = self.record.faults.event_delay_s * self.emulator.time_scale
        if delay > 0:
            await asyncio.sleep(delay)
        await self._send_text(json.dumps(event, separators=(",", ":")), event)
        due = [fault for fault in self._event_faults if fault[0] <= self._sent_count]
        for fault in due:
            self._event_faults.remove(fault)
            await self._perform(fault[1], closed_by="server")

    async def _send_text(self, text: str, recorded_as: Event) -> None:
        try:
            await self.websocket.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            # The client went away mid-send: this connection is over.
            log.debug("connection %d: send failed: %s", self.record.number, exc)
            raise _Stop from exc
        self.record.sent.append(recorded_as)
        self._sent_count += 1
        self.emulator._changes.notify()

    # ----------------------------------------------------------------- faults
    def _arm(self, scheduled: Scheduled) -> None:
        if self._ending:
            return
        if scheduled.after_events is not None:
            threshold = self._sent_count + scheduled.after_events
            if scheduled.after_seconds is None:
                self._event_faults.append((threshold, scheduled.action))
                return
        if scheduled.after_seconds is not None or scheduled.after_events is None:
            self._spawn(self._fire_later(scheduled))

    async def _fire_later(self, scheduled: Scheduled) -> None:
        if scheduled.after_seconds is not None:
            await asyncio.sleep(scheduled.after_seconds * self.emulator.time_scale)
        if scheduled.after_events is not None:
            # Both given: the events are counted from when the seconds have passed.
            self._event_faults.append((self._sent_count + scheduled.after_events, scheduled.action))
            return
        if isinstance(scheduled.action, Malformed | SendError):
            self._outbox.put_nowait(scheduled.action)  # in order with the events queued
        else:
            await self._perform(scheduled.action, closed_by="server")

    async def _perform(self, action: Action, *, closed_by: Closer) -> None:
        websocket = self.websocket
        number = self.record.number
        if isinstance(action, SendError | Expire):
            error = (
                action
                if isinstance(action, SendError)
                else SendError(
                    "session_expired",
                    "Your session hit the maximum duration.",
                    "invalid_request_error",
                )
            )
            await self._send_event(
                self.conversation.error_event(
                    error.code, error.message, error_type=error.error_type
                )
            )
            if isinstance(action, SendError):
                return
            action = Close(1001, "session_expired")
        if isinstance(action, Malformed):
            await self._send_text(action.text, {"type": None, "raw": action.text})
            return
        if websocket.closed or self.record.closed_by is not None:
            return
        if isinstance(action, StopReading):
            log.info("connection %d: no longer reading what the client sends", number)
            transport = self.request.transport
            if transport is not None:
                transport.pause_reading()
            return
        if isinstance(action, Drop):
            log.info("connection %d: dropping TCP without a close frame", number)
            self.record.closed_by = "dropped"
            self.record.close_code = 1006
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            self._end_tasks()
            return
        log.info("connection %d: closing with %d %s", number, action.code, action.reason)
        self.record.closed_by = "emulator" if closed_by == "emulator" else "server"
        self.record.close_code = action.code
        self._closer = asyncio.current_task()
        self._end_tasks()
        # A proper closing handshake, as the service does: the reader stops first (receive is
        # cancel-safe), then close() sends our frame and reads until the client's reply, so
        # the client sees our code even if it was not reading at that moment.
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            await asyncio.wait([reader])
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await websocket.close(code=action.code, message=action.reason.encode("utf-8"))
        finally:
            self._finished.set()


def _credential(request: web.Request) -> tuple[AuthScheme | None, str]:
    key = request.headers.get("api-key")
    if key:
        return "api-key", key
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "bearer", token.strip()
    return None, ""


def _summarise(types: list[str]) -> str:
    """Event types with runs collapsed: 'a, b x12, c'."""
    parts: list[str] = []
    for event_type in types:
        if parts and parts[-1].split(" x")[0] == event_type:
            head, _, times = parts[-1].partition(" x")
            parts[-1] = f"{head} x{int(times or 1) + 1}"
        else:
            parts.append(event_type)
    return ", ".join(parts) if parts else "(nothing)"
