"""What the emulator saw and did, per connection, for tests to assert on.

Records never hold a credential: only which scheme the client used.
"""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.emulator.faults import FaultPlan
from appliance.emulator.protocol import Truncation
from appliance.emulator.responders import Responder

Event = dict[str, Any]
AuthScheme = Literal["api-key", "bearer"]
Closer = Literal["client", "server", "dropped", "emulator"]


class Changes:
    """Wakes every waiter when anything is recorded; waiters re-check their condition."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def wait_until(
        self, condition: Callable[[], Any], deadline_s: float, describe: Callable[[], str]
    ) -> Any:
        try:
            async with asyncio.timeout(deadline_s):
                while not (result := condition()):
                    if self._waiter is None:
                        self._waiter = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._waiter)
                return result
        except TimeoutError:
            raise TimeoutError(f"after {deadline_s} s: {describe()}") from None


@dataclass(frozen=True, slots=True)
class HandshakeRecord:
    """One upgrade request, accepted or refused."""

    status: int  # 101 when upgraded
    path: str
    query: dict[str, str]
    auth_scheme: AuthScheme | None
    reason: str = ""


@dataclass(eq=False)
class ConnectionRecord:
    """One accepted WebSocket connection."""

    number: int  # 1-based, over the emulator's life
    query: dict[str, str]
    auth_scheme: AuthScheme
    faults: FaultPlan
    received: MutableSequence[Event] = field(default_factory=list)  # client events, in order
    sent: MutableSequence[Event] = field(default_factory=list)  # server events, in order
    truncations: list[Truncation] = field(default_factory=list)
    close_code: int | None = None
    closed_by: Closer | None = None
    session_id: str = ""
    pings: int = 0  # WebSocket pings received (answered unless a fault says otherwise)
    # A responder for this connection only (else the emulator's).
    responder: Responder | None = None
    _changes: Changes = field(default_factory=Changes, repr=False)
    _live: Any = field(default=None, repr=False)  # the server's handle while open

    @property
    def model(self) -> str | None:
        return self.query.get("model")

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def open(self) -> bool:
        return self.closed_by is None

    def sent_types(self) -> list[str]:
        return [event["type"] for event in self.sent]

    def received_types(self) -> list[str]:
        return [str(event.get("type")) for event in self.received]

    def sent_of(self, event_type: str) -> list[Event]:
        return [event for event in self.sent if event["type"] == event_type]

    def received_of(self, event_type: str) -> list[Event]:
        return [event for event in self.received if event.get("type") == event_type]

    def audio_sent(self, response_id: str | None = None) -> bytes:
        """The decoded ``response.audio.delta`` payloads (of one response, or all)."""
        return b"".join(
            base64.b64decode(event["delta"])
            for event in self.sent_of("response.audio.delta")
            if response_id is None or event.get("response_id") == response_id
        )

    def audio_received(self) -> bytes:
        """The decoded ``input_audio_buffer.append`` payloads, in order."""
        return b"".join(
            base64.b64decode(event["audio"])
            for event in self.received_of("input_audio_buffer.append")
            if isinstance(event.get("audio"), str)
        )

    # -- live control (no effect once closed)
    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close this connection now from the service side."""
        if self._live is not None:
            await self._live.close(code, reason)

    # Tests wait with a deadline on every call, so the deadline is a parameter.
    async def wait_closed(self, timeout: float = 5.0) -> ConnectionRecord:  # noqa: ASYNC109
        await self._changes.wait_until(
            lambda: not self.open, timeout, lambda: f"connection {self.number} still open"
        )
        return self


def bounded(limit: int | None) -> MutableSequence[Event]:
    return list() if limit is None else deque(maxlen=limit)


def matching(
    events: Iterable[Event], event_type: str, where: Callable[[Event], bool] | None
) -> Iterator[Event]:
    return (e for e in events if e.get("type") == event_type and (where is None or where(e)))
