"""The Voice Live session: one connection at a time through the ``azure-ai-voicelive`` SDK.

:class:`VoiceSession` is what the appliance loop talks to:

- :meth:`~VoiceSession.connect` is ONE attempt: a token from the credential, the SDK's
  ``connect()`` under a timeout (the SDK ignores its own handshake timeout), ``session.update``
  built from the settings, ``session.updated`` awaited, the conversation so far re-created.
  It returns when audio may flow, or raises :class:`~appliance.errors.ServiceError` whose
  ``kind`` (offline, auth, rate limited, service) and ``retry_after`` feed the backoff.
- Server events go to the ``on_event`` callback, on the loop, in order: the SDK's typed
  events, plus :class:`AudioDelta` (decoded once) instead of ``response.audio.delta``,
  :class:`ToolCalled` after a device tool ran, and :class:`Disconnected`.
- However a connection ends (the SDK's iterator simply stops, a close frame, a missed pong,
  a failed or stalled send, a frame that is not JSON), the appliance gets exactly one
  :class:`Disconnected` with the cause, the close code and an error kind. Closing it on
  purpose (:meth:`~VoiceSession.disconnect`, :meth:`~VoiceSession.close`, a renewal) does
  not produce one.
- Before the service's 60-minute cap, the connection is renewed between turns: a new one is
  opened and given the conversation, then swapped in and the old one closed. The appliance
  sees nothing of it.
- Sends return ``True`` when the event went out, ``False`` when there is no ready connection
  (counted for audio). Awaiting :meth:`~VoiceSession.send_audio` waits for the socket to take
  the chunk (aiohttp's write buffer is bounded), so a slow network slows the caller down,
  and the microphone ring buffer (bounded, counting overruns) absorbs it; nothing piles up
  here. A send that stalls for ``send_timeout_s`` ends the connection then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import aiohttp
import numpy as np
from azure.ai.voicelive.aio import ConnectionClosed, VoiceLiveConnection, connect
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.ai.voicelive.models import (
    FunctionCallOutputItem,
    ServerEvent,
    ServerEventConversationItemInputAudioTranscriptionCompleted,
    ServerEventError,
    ServerEventInputAudioBufferCommitted,
    ServerEventResponseAudioTranscriptDone,
    ServerEventResponseCreated,
    ServerEventResponseDone,
    ServerEventResponseFunctionCallArgumentsDone,
    ServerEventResponseOutputItemAdded,
    ServerEventResponseTextDone,
    ServerEventSessionCreated,
    ServerEventSessionUpdated,
)

from appliance.config import Settings
from appliance.errors import ServiceError
from appliance.state import ButtonMode, ErrorKind
from appliance.voice.auth import VoiceCredential
from appliance.voice.backoff import ConnectionBudget
from appliance.voice.history import ConversationHistory
from appliance.voice.session_config import build_session
from appliance.voice.tools import DeviceControl, ToolContext, ToolRegistry, device_tools

log = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE: Final = 24000  # PCM16 mono from the service
_BYTES_PER_MS: Final = OUTPUT_SAMPLE_RATE * 2 / 1000
_RESPONSE_EXPECTED_S: Final = 10.0  # after a commit, how long to wait for response.created
_RENEWAL_RETRY_S: Final = 30.0  # a failed renewal is tried again this much later
_CLOSE_TIMEOUT_S: Final = 2.0  # the close handshake of a connection we give up on


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """Answer audio: PCM16 mono at 24 kHz, already decoded from base64."""

    response_id: str
    item_id: str
    pcm: bytes
    received_ns: int  # time.monotonic_ns() when the frame was read from the socket

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / _BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection ended without being asked to; sent once per connection."""

    cause: str
    close_code: int | None
    kind: ErrorKind

    def __str__(self) -> str:
        return self.cause


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """The model called a device tool; its output was sent back."""

    name: str
    call_id: str
    ok: bool
    output: str


SessionEvent: TypeAlias = ServerEvent | AudioDelta | Disconnected | ToolCalled
EventCallback: TypeAlias = Callable[[SessionEvent], None]
PcmInput: TypeAlias = bytes | bytearray | memoryview | np.ndarray


@dataclass(eq=False)
class _Link:
    """One WebSocket connection and what belongs to it."""

    number: int
    conn: VoiceLiveConnection
    opened_at: float
    updated: asyncio.Future[None]
    session_id: str | None = None
    last_received: float = 0.0
    receiver: asyncio.Task[None] | None = None
    lost: bool = False  # ended, for whatever reason; nothing more is sent or delivered
    cause: str = ""  # why it ended, when it ended on its own
    kind: ErrorKind = ErrorKind.OFFLINE
    closer: asyncio.Task[None] | None = None
    restored_items: int = 0

    @property
    def websocket(self) -> aiohttp.ClientWebSocketResponse:
        """The SDK connection's own WebSocket (for the audio hot path, see send_audio)."""
        websocket: aiohttp.ClientWebSocketResponse = self.conn._connection
        return websocket


@dataclass
class _Counters:
    connections: int = 0
    renewals: int = 0
    disconnects: int = 0
    audio_chunks_sent: int = 0
    audio_chunks_dropped: int = 0
    audio_bytes_sent: int = 0
    tool_calls: int = 0
    last_error: str | None = None
    last_error_at: str | None = None


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class VoiceSession:
    """The appliance's connection to Voice Live (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        credential: VoiceCredential,
        *,
        on_event: EventCallback,
        endpoint: str | None = None,
        button_mode: ButtonMode | None = None,
        device: DeviceControl | None = None,
        tools: ToolRegistry | None = None,
        budget: ConnectionBudget | None = None,
        heartbeat_s: float = 30.0,
        send_timeout_s: float = 10.0,
        receive_timeout_s: float | None = None,
    ) -> None:
        service = settings.service
        self.settings = settings
        self.endpoint = endpoint or service.endpoint
        if not self.endpoint:
            raise ValueError("no Voice Live endpoint: set AZURE_VOICELIVE_ENDPOINT")
        self.button_mode = button_mode or settings.behaviour.button_mode
        self._credential = credential
        self._on_event = on_event
        self._device = device
        # Tools act on the device: without one (or with APPLIANCE_TOOLS=false) none are offered.
        if tools is None and device is not None and service.tools:
            tools = device_tools()
        self._tools = tools if service.tools and device is not None else None
        self._budget = budget or ConnectionBudget()
        self._heartbeat_s = heartbeat_s
        self._send_timeout_s = send_timeout_s
        self._receive_timeout_s = receive_timeout_s
        self.history = ConversationHistory(service.history_turns)
        self.counters = _Counters()

        self._current: _Link | None = None
        self._numbers = itertools.count(1)
        self._connect_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._turn_changed = asyncio.Event()  # something that decides "between turns" moved
        self._link_changed = asyncio.Event()
        self._closed = False
        self._opening: asyncio.Task[_Link] | None = None  # connect()'s attempt in flight
        self._renewal_failures = 0
        self._send_ids = itertools.count()
        # Sends under way: when each started, and the deadline the send watch expires.
        self._pending_sends: dict[int, tuple[float, asyncio.Timeout]] = {}
        self._send_watch: asyncio.TimerHandle | None = None

        # What the conversation is doing on the current connection.
        self._responses: OrderedDict[str, None] = OrderedDict()  # active response ids
        self._response_expected_at: float | None = None
        self._speaking = False
        self._uncommitted_audio = False
        self._tool_followup = False  # send response.create once the calling response is done
        self._audio_item: str | None = None
        self._audio_ms: OrderedDict[str, float] = OrderedDict()
        self._history_version = 0

    # ---- properties the appliance reads ----------------------------------------------------

    @property
    def ready(self) -> bool:
        """A configured connection takes audio now."""
        return self._current is not None and not self._current.lost

    @property
    def response_active(self) -> bool:
        return bool(self._responses)

    @property
    def response_id(self) -> str | None:
        """The newest active response, if any."""
        return next(reversed(self._responses), None) if self._responses else None

    @property
    def audio_item_id(self) -> str | None:
        """The assistant item whose audio arrived last: the one to truncate on barge-in."""
        return self._audio_item

    def audio_received_ms(self, item_id: str) -> float:
        return self._audio_ms.get(item_id, 0.0)

    @property
    def session_id(self) -> str | None:
        return self._current.session_id if self._current else None

    @property
    def input_sample_rate(self) -> int:
        return self.settings.service.input_sample_rate

    @property
    def last_activity(self) -> float | None:
        """time.monotonic() of the last frame received on the current connection."""
        return self._current.last_received if self._current else None

    def healthy(self) -> bool:
        """False when an open connection stopped working in a way not reported yet.

        For the watchdog: a send pending longer than the send timeout, or a connection whose
        reader has died. No connection at all is healthy (idle, or waiting to retry).
        """
        now = time.monotonic()
        if any(now - started > self._send_timeout_s for started, _ in self._pending_sends.values()):
            return False
        link = self._current
        return not (link is not None and (link.receiver is None or link.receiver.done()))

    def status(self) -> dict[str, Any]:
        """Facts for the device-status tool, `appliance check` and logs. No secrets."""
        link = self._current
        return {
            "connected": self.ready,
            "session_id": link.session_id if link else None,
            "connection_age_s": round(time.monotonic() - link.opened_at, 1) if link else None,
            "connections_opened": self.counters.connections,
            "connections_renewed": self.counters.renewals,
            "connections_lost": self.counters.disconnects,
            "last_error": self.counters.last_error,
            "last_error_at": self.counters.last_error_at,
            "audio_chunks_dropped": self.counters.audio_chunks_dropped,
            "history_messages": len(self.history),
            "auth": self._credential.description,
        }

    # ---- connecting ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """One attempt to open a ready session (keeping the conversation); raises ServiceError."""
        if self._closed:
            raise ServiceError("the voice session is closed", ErrorKind.SERVICE)
        async with self._connect_lock:
            await self._stop_renewer()
            old = self._current
            if old is not None:
                self._set_current(None)
                self._retire(old)
            # In a task of its own, so that disconnect() can abandon it.
            self._opening = asyncio.ensure_future(self._open_link())
            try:
                link = await self._opening
            except asyncio.CancelledError:
                caller = asyncio.current_task()
                if caller is not None and caller.cancelling():
                    raise
                raise ServiceError(
                    "the connection attempt was abandoned (disconnected meanwhile)"
                ) from None
            finally:
                self._opening = None
            self._set_current(link)
            self._ensure_renewer()
            log.info(
                "Voice Live session %s ready (connection %d%s)",
                link.session_id or "?",
                link.number,
                f", {link.restored_items} items restored" if link.restored_items else "",
            )

    async def _open_link(self) -> _Link:
        """Open, configure and restore a connection; nothing is delivered from it yet."""
        service = self.settings.service
        wait = self._budget.take()
        if wait > 0:
            raise ServiceError(
                f"holding back: {self._budget.per_minute} new connections a minute is the "
                f"service's quota (next in {wait:.0f} s)",
                ErrorKind.RATE_LIMITED,
                retry_after=wait,
            )
        self.counters.connections += 1
        deadline = time.monotonic() + service.connect_timeout_s

        def remaining() -> float:
            return max(0.01, deadline - time.monotonic())

        sdk_credential = await self._credential.for_connect(remaining())
        agent: dict[str, str] = {}
        if service.agent_name and service.agent_project:
            agent = {"agent_name": service.agent_name, "project_name": service.agent_project}
        manager = connect(  # type: ignore[call-overload]
            credential=sdk_credential,
            endpoint=self.endpoint,
            api_version=service.api_version,
            model=None if agent else service.model,
            connection_options={
                "heartbeat": self._heartbeat_s,
                "close_timeout": _CLOSE_TIMEOUT_S,
            },
            credential_scopes=self._credential.scope,
            **agent,
        )
        conn = await self._handshake(manager, remaining())
        now = time.monotonic()
        link = _Link(
            number=next(self._numbers),
            conn=conn,
            opened_at=now,
            updated=asyncio.get_running_loop().create_future(),
            last_received=now,
        )
        link.receiver = self._spawn(self._receive(link), f"voice-receive-{link.number}")
        try:
            await self._configure(link, remaining)
        except BaseException:
            self._retire(link)
            raise
        return link

    async def _configure(self, link: _Link, remaining: Callable[[], float]) -> None:
        """session.update, wait for session.updated, then re-create the conversation."""
        service = self.settings.service
        session = build_session(
            service,
            button_mode=self.button_mode,
            tools=self._tools.definitions() if self._tools else (),
        )
        # A failed send ends the link, which fails `updated` with the cause.
        await self._send(link, "session.update", link.conn.session.update(session=session))
        try:
            async with asyncio.timeout(remaining()):
                await asyncio.shield(link.updated)
        except TimeoutError:
            raise ServiceError(
                f"no session.updated within {service.connect_timeout_s:g} s", ErrorKind.SERVICE
            ) from None
        for item in self.history.items():
            create = link.conn.conversation.item.create(item=item)
            if not await self._send(link, "conversation.item.create", create):
                raise ServiceError(
                    f"connection lost while restoring the conversation: {link.cause}", link.kind
                )
            link.restored_items += 1

    async def _handshake(self, manager: Any, time_limit: float) -> VoiceLiveConnection:
        """The SDK's connect under a timeout, with failures classified."""
        attempt: asyncio.Task[VoiceLiveConnection] = asyncio.ensure_future(manager.__aenter__())
        try:
            done, _ = await asyncio.wait({attempt}, timeout=time_limit)
        except asyncio.CancelledError:
            self._reap(attempt)
            raise
        if not done:
            # Cancelling the SDK mid-handshake would leak its aiohttp session; let aiohttp's
            # own timeouts end the attempt, and close the connection if it arrives late.
            self._reap(attempt)
            raise ServiceError(
                f"the connection was not accepted within {time_limit:.1f} s", ErrorKind.OFFLINE
            )
        try:
            return attempt.result()
        except (VoiceLiveConnectionError, aiohttp.ClientError, ValueError, OSError) as exc:
            raise handshake_error(exc) from exc

    def _reap(self, attempt: asyncio.Task[VoiceLiveConnection]) -> None:
        async def reap() -> None:
            try:
                conn = await attempt
            except asyncio.CancelledError:
                attempt.cancel()
                raise
            except Exception:  # the attempt was already reported as timed out
                log.debug("a connection attempt given up on failed later", exc_info=True)
                return
            await conn.close()

        self._spawn(reap(), "voice-reap")

    # ---- receiving --------------------------------------------------------------------------

    async def _receive(self, link: _Link) -> None:
        while True:
            try:
                if self._receive_timeout_s is None:
                    event = await self._next_event(link)
                else:
                    async with asyncio.timeout(self._receive_timeout_s):
                        event = await self._next_event(link)
            except ConnectionClosed as exc:
                code, cause = _close_details(link.conn, exc)
                self._lose(link, cause, code)
                return
            except VoiceLiveConnectionError as exc:
                # A frame that is not a JSON event: the protocol is off track.
                self._lose(link, f"invalid frame from the service ({exc})", None, ErrorKind.SERVICE)
                return
            except TimeoutError:
                self._lose(link, f"nothing received for {self._receive_timeout_s:g} s", None)
                return
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                self._lose(link, f"connection failed ({type(exc).__name__}: {exc})", None)
                return
            link.last_received = time.monotonic()
            try:
                await self._handle(link, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in handling one event must not silently kill the connection.
                log.exception("handling %s failed", _event_type(event))

    async def _next_event(self, link: _Link) -> ServerEvent | _RawAudioDelta:
        """The next event: typed by the SDK, except answer audio, which stays a mapping.

        Answer audio is most of what arrives; building the SDK's model for it and then
        reading its fields through the model costs several times what the rest of the
        delta's way to the speaker does. Everything else is typed exactly as the SDK's own
        ``recv()`` types it.
        """
        raw = await link.conn.recv_bytes()
        received_ns = time.monotonic_ns()
        if not raw:
            raise ConnectionClosed(1006, "Empty WebSocket frame")
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise VoiceLiveConnectionError(f"Failed to parse message: {exc}") from exc
        if not isinstance(payload, dict):
            raise VoiceLiveConnectionError(f"a {type(payload).__name__} is not an event")
        if payload.get("type") == _AUDIO_DELTA:
            return _RawAudioDelta(payload, received_ns)
        try:
            return _typed_event(payload)
        except (ValueError, TypeError) as exc:
            raise VoiceLiveConnectionError(f"Failed to parse message: {exc}") from exc

    async def _handle(self, link: _Link, event: ServerEvent | _RawAudioDelta) -> None:
        if isinstance(event, ServerEventSessionCreated | ServerEventSessionUpdated):
            link.session_id = event.session.id or link.session_id
            if isinstance(event, ServerEventSessionUpdated) and not link.updated.done():
                link.updated.set_result(None)
                return
        if not link.updated.done():
            if isinstance(event, ServerEventError):
                error = event.error
                kind = (
                    ErrorKind.AUTH if error.type == "invalid_request_error" else ErrorKind.SERVICE
                )
                link.updated.set_exception(
                    ServiceError(
                        f"the service refused the session configuration: "
                        f"{error.code or error.type}: {error.message}",
                        kind,
                    )
                )
            return
        if link is not self._current or link.lost:
            return  # a renewal not swapped in yet, or a connection being retired

        if isinstance(event, _RawAudioDelta):
            self._audio(event.decode())
            return

        self._track(event)
        self._emit(event)
        if isinstance(event, ServerEventResponseFunctionCallArgumentsDone):
            await self._run_tool(link, event)
        elif (
            isinstance(event, ServerEventResponseDone)
            and self._tool_followup
            and not self._responses
        ):
            self._tool_followup = False
            await self._send(link, "response.create", link.conn.response.create())
            self._response_expected_at = time.monotonic()

    def _audio(self, delta: AudioDelta) -> None:
        ms = delta.duration_ms
        self._audio_item = delta.item_id
        self._audio_ms[delta.item_id] = self._audio_ms.get(delta.item_id, 0.0) + ms
        while len(self._audio_ms) > 16:
            self._audio_ms.popitem(last=False)
        self.history.audio(delta.item_id, ms)
        self._emit(delta)

    def _track(self, event: ServerEvent) -> None:
        """Keep what decides truncation, cancellation, renewal and the history up to date."""
        changed = True
        if isinstance(event, ServerEventResponseCreated):
            if event.response.id:
                self._responses[event.response.id] = None
            self._response_expected_at = None
        elif isinstance(event, ServerEventResponseDone):
            self._responses.pop(event.response.id or "", None)
            if event.response.id is None:
                self._responses.clear()
        elif event.type == "input_audio_buffer.speech_started":
            self._speaking = True
        elif event.type == "input_audio_buffer.speech_stopped":
            self._speaking = False
        elif isinstance(event, ServerEventInputAudioBufferCommitted):
            self._speaking = False
            self._uncommitted_audio = False
            self.history.user_item(event.item_id)
            self._history_version += 1
            if self.button_mode is ButtonMode.TOGGLE:
                self._response_expected_at = time.monotonic()  # server VAD answers on its own
        elif event.type == "input_audio_buffer.cleared":
            self._speaking = False
            self._uncommitted_audio = False
        elif isinstance(event, ServerEventResponseOutputItemAdded):
            item = event.item
            if (
                item is not None
                and item.type == "message"
                and item.id
                and getattr(item, "role", None) == "assistant"
            ):
                self.history.assistant_item(item.id)
                self._history_version += 1
                self._audio_item = item.id
        elif isinstance(
            event, ServerEventResponseAudioTranscriptDone | ServerEventResponseTextDone
        ):
            text = (
                event.transcript
                if isinstance(event, ServerEventResponseAudioTranscriptDone)
                else event.text
            )
            self.history.transcript(event.item_id, text, role="assistant")
            self._history_version += 1
        elif isinstance(event, ServerEventConversationItemInputAudioTranscriptionCompleted):
            self.history.transcript(event.item_id, event.transcript, role="user")
            self._history_version += 1
        else:
            changed = False
        if changed:
            self._turn_changed.set()

    async def _run_tool(
        self, link: _Link, event: ServerEventResponseFunctionCallArgumentsDone
    ) -> None:
        self.counters.tool_calls += 1
        if self._tools is None or self._device is None:
            output = '{"error": "Device tools are switched off."}'
            ok = False
        else:
            context = ToolContext(self._device, self.status())
            result = await self._tools.call(event.name, event.arguments or "", context)
            output, ok = result.output, result.ok
        log.info("tool %s called (%s)", event.name, "ok" if ok else "failed")
        item = FunctionCallOutputItem(call_id=event.call_id, output=output)
        if not await self._send(
            link, "function call output", link.conn.conversation.item.create(item=item)
        ):
            return
        self._emit(ToolCalled(event.name, event.call_id, ok, output))
        # The answer that uses the output is a new response, once the calling one is done.
        if event.response_id in self._responses:
            self._tool_followup = True
        else:
            await self._send(link, "response.create", link.conn.response.create())
            self._response_expected_at = time.monotonic()
        self._turn_changed.set()

    def _emit(self, event: SessionEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("the session's event handler failed on %s", type(event).__name__)

    # ---- losing and closing connections ----------------------------------------------------

    def _lose(
        self,
        link: _Link,
        cause: str,
        close_code: int | None,
        kind: ErrorKind | None = None,
    ) -> None:
        """The connection ended on its own: report it once, then close what is left of it."""
        if link.lost:
            return
        link.cause = cause
        link.kind = kind or _kind_for_close(close_code)
        current = link is self._current
        self._retire(link, ServiceError(f"connection lost: {cause}", link.kind))
        if not current:
            log.debug("connection %d (not in use) ended: %s", link.number, cause)
            return
        self._set_current(None)
        self.counters.disconnects += 1
        self.counters.last_error = cause
        self.counters.last_error_at = _now_text()
        # The appliance reports outages (once at WARNING, see backoff.OutageLog); a service
        # that accepts and drops in a loop must not flood the log from here.
        log.debug("Voice Live connection %d lost: %s", link.number, cause)
        # Delivered on the next loop iteration: the loss may be noticed inside a send the
        # appliance itself is awaiting, and its handler must not run re-entrantly.
        disconnected = Disconnected(cause, close_code, link.kind)
        asyncio.get_running_loop().call_soon(self._emit, disconnected)

    def _retire(self, link: _Link, error: ServiceError | None = None) -> None:
        """Stop using a connection now and close it in the background (bounded)."""
        link.lost = True
        if not link.updated.done():
            link.updated.set_exception(error or ServiceError("connection closed"))
            link.updated.exception()  # mark it retrieved: the handshake may not be waiting
        if link.closer is None:
            link.closer = self._spawn(self._close_link(link), f"voice-close-{link.number}")

    async def _close_link(self, link: _Link) -> None:
        receiver = link.receiver
        if receiver is not None and receiver is not asyncio.current_task():
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
        await link.conn.close()

    def _set_current(self, link: _Link | None) -> None:
        self._current = link
        self._responses.clear()
        self._response_expected_at = None
        self._speaking = False
        self._uncommitted_audio = False
        self._tool_followup = False
        if link is None:
            self._audio_item = None
        self._link_changed.set()
        self._turn_changed.set()

    async def disconnect(self, *, end_conversation: bool) -> None:
        """Close the connection on purpose (no Disconnected event); optionally forget the talk.

        A connect() still in flight is abandoned: it raises instead of opening a session.
        """
        if self._opening is not None:
            self._opening.cancel()
        await self._stop_renewer()
        link = self._current
        if link is not None:
            self._set_current(None)
            self._retire(link)
            log.info("Voice Live connection %d closed", link.number)
        if end_conversation:
            self.history.clear()
            self._audio_ms.clear()

    async def close(self) -> None:
        """End everything: the connection, renewals, background closes. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None
        await self.disconnect(end_conversation=True)
        tasks = list(self._tasks)
        for task in tasks:
            if not task.get_name().startswith("voice-close-"):
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> VoiceSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- sending ------------------------------------------------------------------------------

    async def _send(self, link: _Link, what: str, sending: Coroutine[Any, Any, None]) -> bool:
        if link.lost:
            sending.close()
            return False
        send_id = next(self._send_ids)
        try:
            # No timer per send: almost every send is done without waiting, 25 a second
            # while streaming, and a timer each cost the loop a tenth of its CPU. The send
            # watch expires the deadline of a send still pending after the send timeout.
            async with asyncio.timeout(None) as deadline:
                self._pending_sends[send_id] = (time.monotonic(), deadline)
                if self._send_watch is None:
                    self._watch_sends_soon()
                await sending
            return True
        except TimeoutError:
            self._lose(link, f"sending {what} stalled for {self._send_timeout_s:g} s", None)
            return False
        except (VoiceLiveConnectionError, aiohttp.ClientError, OSError, RuntimeError) as exc:
            # The SDK wraps most failures; a connection lost while aiohttp waits for the
            # socket to drain surfaces as the builtin ConnectionError (an OSError).
            code = getattr(link.conn._connection, "close_code", None)
            self._lose(link, f"sending {what} failed ({_first_line(exc)})", code)
            return False
        finally:
            self._pending_sends.pop(send_id, None)

    def _watch_sends_soon(self) -> None:
        """Have the send watch wake when the oldest send under way reaches the send timeout.

        While sends finish at once, that is one wake-up per send timeout, however many
        sends there are; a send still under way then is given up right on time.
        """
        oldest = next(
            (
                started
                for started, deadline in self._pending_sends.values()
                if deadline.when() is None
            ),
            None,
        )
        if oldest is not None:
            wait_s = oldest + self._send_timeout_s - time.monotonic()
            self._send_watch = asyncio.get_running_loop().call_later(wait_s, self._watch_sends)

    def _watch_sends(self) -> None:
        """Give up on the sends pending for the send timeout; watch those that remain.

        A given-up send raises TimeoutError where it waits (see _send).
        """
        self._send_watch = None
        now, loop = time.monotonic(), asyncio.get_running_loop()
        for started, deadline in self._pending_sends.values():
            if now - started >= self._send_timeout_s and deadline.when() is None:
                deadline.reschedule(loop.time())
        if not self._closed:
            self._watch_sends_soon()

    def _ready_link(self) -> _Link | None:
        link = self._current
        return link if link is not None and not link.lost else None

    async def send_audio(self, pcm: PcmInput) -> bool:
        """Append microphone audio (PCM16 mono at ``input_sample_rate``); False if not sent."""
        link = self._ready_link()
        if link is None:
            self.counters.audio_chunks_dropped += 1
            return False
        data = _pcm_bytes(pcm)
        if not data:
            return True
        # The hot path, 25 times a second: the text the SDK's send() would make of this event
        # (json.dumps of the mapping), put straight on the SDK connection's WebSocket. Going
        # through send() costs the loop a fifth more CPU while streaming: a JSON encoder set
        # up per call and isinstance checks against typing's Mapping, for a fixed shape.
        if not await self._send(link, "audio", link.websocket.send_str(append_event_text(data))):
            self.counters.audio_chunks_dropped += 1
            return False
        self.counters.audio_chunks_sent += 1
        self.counters.audio_bytes_sent += len(data)
        if not self._uncommitted_audio:
            self._uncommitted_audio = True
            self._turn_changed.set()
        return True

    async def commit(self) -> bool:
        """input_audio_buffer.commit (manual turns)."""
        link = self._ready_link()
        if link is None:
            return False
        sent = await self._send(link, "commit", link.conn.input_audio_buffer.commit())
        if sent:
            self._uncommitted_audio = False
        return sent

    async def clear_input(self) -> bool:
        link = self._ready_link()
        if link is None:
            return False
        sent = await self._send(link, "clear", link.conn.input_audio_buffer.clear())
        if sent:
            self._uncommitted_audio = False
        return sent

    async def create_response(self) -> bool:
        link = self._ready_link()
        if link is None:
            return False
        sent = await self._send(link, "response.create", link.conn.response.create())
        if sent:
            self._response_expected_at = time.monotonic()
            self._turn_changed.set()
        return sent

    async def cancel_response(self) -> bool:
        """response.cancel for the active response; does nothing (False) when none is active.

        A response asked for (response.create sent) but not confirmed yet is cancelled too:
        the cancel follows the create on the same connection, so the service has it by then.
        No response id is named: only one response is ever active, and the id we know may
        be of one that has just ended, which would leave the new one running.
        """
        link = self._ready_link()
        if link is None or (self.response_id is None and self._response_expected_at is None):
            return False
        self._tool_followup = False
        return await self._send(link, "response.cancel", link.conn.response.cancel())

    async def truncate(self, item_id: str, audio_end_ms: int) -> bool:
        """Tell the service the user heard only ``audio_end_ms`` of this answer item."""
        link = self._ready_link()
        if link is None:
            return False
        received = self._audio_ms.get(item_id)
        if received is not None:
            # The service refuses a truncation beyond the audio it sent.
            audio_end_ms = min(audio_end_ms, int(received))
        audio_end_ms = max(0, int(audio_end_ms))
        self.history.truncated(item_id, audio_end_ms)
        return await self._send(
            link,
            "truncate",
            link.conn.conversation.item.truncate(
                item_id=item_id, audio_end_ms=audio_end_ms, content_index=0
            ),
        )

    # ---- proactive renewal --------------------------------------------------------------------

    def between_turns(self) -> bool:
        """Nothing of a turn is in flight: no answer, no speech, no turn being recorded."""
        now = time.monotonic()
        expected = (
            self._response_expected_at is not None
            and now - self._response_expected_at < _RESPONSE_EXPECTED_S
        )
        manual_turn = self.button_mode is ButtonMode.PUSH_TO_TALK and self._uncommitted_audio
        return not (
            self._responses or self._speaking or expected or manual_turn or self._tool_followup
        )

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = self._spawn(self._renew_forever(), "voice-renew")

    async def _stop_renewer(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew_forever(self) -> None:
        max_age = self.settings.service.connection_max_s
        while True:
            link = self._current
            if link is None:
                return  # the next connect() starts a new renewer
            due = link.opened_at + max_age - time.monotonic()
            if due > 0:
                self._link_changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._link_changed.wait()
                continue  # re-read: a new connection, or the time has come
            while link is self._current and not self.between_turns():
                self._turn_changed.clear()
                with contextlib.suppress(TimeoutError):
                    # The "response expected" window ends by itself; look again then.
                    async with asyncio.timeout(_RESPONSE_EXPECTED_S):
                        await self._turn_changed.wait()
            if link is not self._current:
                continue
            if not await self._renew(link):
                self._link_changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RENEWAL_RETRY_S):
                        await self._link_changed.wait()

    async def _renew(self, old: _Link) -> bool:
        """Make before break: open and restore a new connection, then swap it in."""
        version = self._history_version
        try:
            new = await self._open_link()
        except ServiceError as exc:
            self._renewal_failures += 1
            level = logging.WARNING if self._renewal_failures == 1 else logging.DEBUG
            log.log(level, "renewing the Voice Live connection failed (%s); will retry", exc)
            return False
        self._renewal_failures = 0
        age = time.monotonic() - old.opened_at
        if old is not self._current or old.lost:
            self._retire(new)
            return True
        if not self.between_turns() or version != self._history_version:
            # A turn began while the new connection was being prepared: try again later.
            log.debug("renewal postponed: a turn started")
            self._retire(new)
            return True
        audio_item = self._audio_item
        self._set_current(new)
        self._audio_item = audio_item
        self._retire(old)
        self.counters.renewals += 1
        log.info(
            "Voice Live connection renewed after %.0f s: %d -> %d (session %s, %d items restored)",
            age,
            old.number,
            new.number,
            new.session_id or "?",
            new.restored_items,
        )
        return True

    # ---- task bookkeeping -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("voice task %s failed", task.get_name(), exc_info=task.exception())


# ---- helpers ------------------------------------------------------------------------------------


_AUDIO_DELTA: Final = "response.audio.delta"


@dataclass(frozen=True, slots=True)
class _RawAudioDelta:
    """A ``response.audio.delta`` as received: its JSON object, not yet decoded."""

    payload: dict[str, Any]
    received_ns: int

    def decode(self) -> AudioDelta:
        payload = self.payload
        return AudioDelta(
            str(payload.get("response_id") or ""),
            str(payload.get("item_id") or ""),
            base64.b64decode(payload.get("delta") or ""),
            self.received_ns,
        )


def _typed_event(payload: dict[str, Any]) -> ServerEvent:
    # What the SDK's own recv() does with the JSON it reads (azure-ai-voicelive 1.x); the
    # unit tests hold every reference event to it.
    event: ServerEvent = ServerEvent._deserialize(payload, [])  # type: ignore[no-untyped-call]
    return event


def _event_type(event: ServerEvent | _RawAudioDelta) -> str:
    if isinstance(event, _RawAudioDelta):
        return _AUDIO_DELTA
    return str(getattr(event, "type", "an event"))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


_APPEND_HEAD: Final = '{"type": "input_audio_buffer.append", "audio": "'
_APPEND_TAIL: Final = '"}'


def append_event_text(pcm: bytes) -> str:
    """``input_audio_buffer.append`` of ``pcm`` as JSON text, as the SDK serialises it.

    Base64 needs no escaping in a JSON string, so the text is the fixed head and tail around it.
    """
    return _APPEND_HEAD + base64.b64encode(pcm).decode("ascii") + _APPEND_TAIL


def _pcm_bytes(pcm: PcmInput) -> bytes:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype.kind != "i" or pcm.dtype.itemsize != 2:
            raise TypeError(f"audio must be int16 samples, not {pcm.dtype}")
        return pcm.astype("<i2", copy=False).tobytes()
    return bytes(pcm)


_CLOSE_MEANINGS: Mapping[int, str] = {
    1000: "closed by the service",
    1001: "the service ended the session (going away; e.g. the 60-minute limit)",
    1006: "connection dropped",
    1008: "the service closed it for a policy violation",
    1011: "the service failed (internal error)",
    1012: "the service is restarting",
    1013: "the service is overloaded; try again later",
}


def _close_details(conn: VoiceLiveConnection, closed: ConnectionClosed) -> tuple[int, str]:
    """The close code and a readable cause of a connection that ended.

    The SDK reports a TCP connection that vanished without a close frame as ``1000
    "Connection closed"``; aiohttp's own close code (1006) says what really happened.
    """
    code, reason = closed.code, closed.reason
    websocket = getattr(conn, "_connection", None)
    actual = getattr(websocket, "close_code", None)
    without_frame = reason == "Connection closed"
    if isinstance(actual, int) and without_frame:
        code = int(actual)  # aiohttp's WSCloseCode enum, as a plain number
    meaning = _CLOSE_MEANINGS.get(code, "connection closed")
    detail = "" if without_frame else _first_line(Exception(reason)) if reason else ""
    if without_frame and code != 1006:
        meaning = "the connection closed without a close frame"
    if "pong" in detail.lower() or "heartbeat" in detail.lower():
        meaning = "no answer to the keep-alive ping"
    return code, f"{meaning} (code {code}{': ' + detail if detail else ''})"


def _kind_for_close(code: int | None) -> ErrorKind:
    if code == 1008:
        return ErrorKind.AUTH
    if code == 1013:
        return ErrorKind.RATE_LIMITED
    if code == 1011:
        return ErrorKind.SERVICE
    return ErrorKind.OFFLINE


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """An HTTP Retry-After value (seconds or an HTTP date) in seconds from now."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


def handshake_error(error: BaseException) -> ServiceError:
    """A failed connect, as the backoff needs it: refused (auth/config), throttled, offline."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, aiohttp.ClientError | OSError):
        cause = cause.__cause__
    if isinstance(cause, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        status = cause.status
        headers: Mapping[str, str] = cause.headers or {}
        retry_after = retry_after_seconds(headers.get("Retry-After"))
        reason = f"HTTP {status}"
        if status in (401, 403):
            return ServiceError(
                f"Voice Live refused the credential ({reason}): check APPLIANCE_AUTH and the "
                "role assignment (Cognitive Services User) of the identity",
                ErrorKind.AUTH,
            )
        if status == 429:
            return ServiceError(
                f"Voice Live is throttling connections ({reason})",
                ErrorKind.RATE_LIMITED,
                retry_after=retry_after,
            )
        if status >= 500:
            return ServiceError(
                f"Voice Live failed to accept the connection ({reason})",
                ErrorKind.SERVICE,
                retry_after=retry_after,
            )
        if status in (101, 200):
            return ServiceError(
                f"the endpoint did not speak WebSocket ({reason}): check AZURE_VOICELIVE_ENDPOINT",
                ErrorKind.AUTH,
            )
        return ServiceError(
            f"Voice Live refused the connection ({reason}): check AZURE_VOICELIVE_ENDPOINT, "
            "AZURE_VOICELIVE_MODEL and AZURE_VOICELIVE_API_VERSION",
            ErrorKind.AUTH,
        )
    if isinstance(error, ValueError) or "redirect" in str(error).lower():
        return ServiceError(
            f"the endpoint cannot be used ({_first_line(error)}): check AZURE_VOICELIVE_ENDPOINT",
            ErrorKind.AUTH,
        )
    detail = _first_line(cause if cause is not None else error)
    return ServiceError(f"Voice Live is unreachable ({detail})", ErrorKind.OFFLINE)


__all__ = [
    "OUTPUT_SAMPLE_RATE",
    "AudioDelta",
    "Disconnected",
    "EventCallback",
    "SessionEvent",
    "ToolCalled",
    "VoiceSession",
    "handshake_error",
    "retry_after_seconds",
]
