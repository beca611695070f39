"""Fault injection: the ways a real connection to Voice Live goes wrong, on demand.

A :class:`FaultPlan` belongs to one connection. Arm it before the connection exists
(``emulator.faults.next_connection()``, ``emulator.faults.for_connection(n)``) or while it is
open (``emulator.connections[i].faults``). A fault fires after a number of server events
or emulated seconds counted from when it starts to apply (the connection's start for a
plan armed in advance, the arming itself for an open connection); with neither, at once;
with both, the events are counted once the seconds have passed.
Emulated seconds are multiplied by the emulator's ``time_scale`` to give wall time, so a
test plays the service's 60-minute cap in a fraction of a second.

:class:`Faults` (``emulator.faults``) also refuses handshakes (401/403/429/503 ...) and holds
the plan every connection starts with (``every_connection``) and the connection cap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

SERVICE_MAX_CONNECTION_S: Final = 3600.0
MALFORMED_TEXT: Final = "<html>502 Bad Gateway</html>"
ERROR_CODE: Final = "server_error"
ERROR_MESSAGE: Final = "The server had an error while processing your request."
ERROR_TYPE: Final = "server_error"

REFUSAL_MESSAGES: Final = {
    400: "Bad request.",
    401: "Access denied due to invalid subscription key or wrong API endpoint.",
    403: "Forbidden: the identity has no access to this resource.",
    404: "Resource not found.",
    429: "Rate limit is exceeded. Try again later.",
    500: "Internal server error.",
    503: "The service is temporarily unavailable.",
}


@dataclass(frozen=True, slots=True)
class Close:
    """Close with a close frame: 1000 normal, 1001 going away/expired, 1011 server error."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the TCP connection without a close frame (the client sees 1006)."""


@dataclass(frozen=True, slots=True)
class StopReading:
    """Stop reading what the client sends, the connection left open (a server or path that
    hangs): once the socket buffers are full, the client's sends wait for ever."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """Send a text frame that is not JSON (the SDK raises ConnectionError from the iterator)."""

    text: str = MALFORMED_TEXT


@dataclass(frozen=True, slots=True)
class SendError:
    """Send an ``error`` event; the connection stays open."""

    code: str = ERROR_CODE
    message: str = ERROR_MESSAGE
    error_type: str = ERROR_TYPE


@dataclass(frozen=True, slots=True)
class Expire:
    """What the service does at its connection cap: ``session_expired`` error, close 1001."""


Action = Close | Drop | StopReading | Malformed | SendError | Expire


@dataclass(frozen=True, slots=True)
class Scheduled:
    action: Action
    after_events: int | None = None
    after_seconds: float | None = None  # emulated seconds


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    retry_after_s: float | None = None


class FaultPlan:
    """The faults of one connection. Every method returns the plan, so calls chain."""

    def __init__(self) -> None:
        self.scheduled: list[Scheduled] = []
        self.ignore_pings = False
        self.event_delay_s = 0.0  # emulated seconds before each server event
        self.max_duration_s: float | None = None  # None: the emulator's cap
        self._listener: Callable[[Scheduled], None] | None = None

    def close(
        self,
        code: int = 1000,
        reason: str = "",
        *,
        after_events: int | None = None,
        after_seconds: float | None = None,
    ) -> FaultPlan:
        return self._schedule(Close(code, reason), after_events, after_seconds)

    def drop(
        self, *, after_events: int | None = None, after_seconds: float | None = None
    ) -> FaultPlan:
        return self._schedule(Drop(), after_events, after_seconds)

    def stop_reading(
        self, *, after_events: int | None = None, after_seconds: float | None = None
    ) -> FaultPlan:
        return self._schedule(StopReading(), after_events, after_seconds)

    def send_malformed(
        self,
        text: str = MALFORMED_TEXT,
        *,
        after_events: int | None = None,
        after_seconds: float | None = None,
    ) -> FaultPlan:
        return self._schedule(Malformed(text), after_events, after_seconds)

    def send_error(
        self,
        code: str = ERROR_CODE,
        message: str = ERROR_MESSAGE,
        *,
        error_type: str = ERROR_TYPE,
        after_events: int | None = None,
        after_seconds: float | None = None,
    ) -> FaultPlan:
        return self._schedule(SendError(code, message, error_type), after_events, after_seconds)

    def stop_answering_pings(self, stop: bool = True) -> FaultPlan:
        self.ignore_pings = stop
        return self

    def delay_events(self, seconds: float) -> FaultPlan:
        self.event_delay_s = seconds
        return self

    def cap_duration(self, seconds: float) -> FaultPlan:
        """End the connection as the service does at its cap, after ``seconds`` (emulated).

        Replaces the emulator's cap when armed in advance; on an open connection it counts
        from the arming.
        """
        self.max_duration_s = seconds
        return self._schedule(Expire(), None, seconds)

    def copy(self) -> FaultPlan:
        plan = FaultPlan()
        plan.scheduled = list(self.scheduled)
        plan.ignore_pings = self.ignore_pings
        plan.event_delay_s = self.event_delay_s
        plan.max_duration_s = self.max_duration_s
        return plan

    def merge(self, other: FaultPlan) -> None:
        """Add ``other``'s faults (the every-connection plan) under this plan's own."""
        if self.max_duration_s is not None:
            # This plan's own cap wins over the every-connection one.
            inherited = [s for s in other.scheduled if not isinstance(s.action, Expire)]
        else:
            inherited = list(other.scheduled)
            self.max_duration_s = other.max_duration_s
        self.scheduled = [*inherited, *self.scheduled]
        self.ignore_pings = self.ignore_pings or other.ignore_pings
        self.event_delay_s = self.event_delay_s or other.event_delay_s

    def attach(self, listener: Callable[[Scheduled], None]) -> None:
        """The connection takes over: pending faults start counting now, new ones at arming."""
        self._listener = listener
        for scheduled in self.scheduled:
            listener(scheduled)

    def detach(self) -> None:
        self._listener = None

    def _schedule(
        self, action: Action, after_events: int | None, after_seconds: float | None
    ) -> FaultPlan:
        scheduled = Scheduled(action, after_events, after_seconds)
        self.scheduled.append(scheduled)
        if self._listener is not None:
            self._listener(scheduled)
        return self

    def __repr__(self) -> str:
        return (
            f"FaultPlan(scheduled={self.scheduled!r}, ignore_pings={self.ignore_pings}, "
            f"event_delay_s={self.event_delay_s}, max_duration_s={self.max_duration_s})"
        )


@dataclass
class Faults:
    """Emulator-wide faults: refused handshakes and the plans of connections to come."""

    max_connection_s: float = SERVICE_MAX_CONNECTION_S  # emulated seconds
    every_connection: FaultPlan = field(default_factory=FaultPlan)
    _refusals: deque[Refusal] = field(default_factory=deque)
    _plans: dict[int, FaultPlan] = field(default_factory=dict)
    _accepted: int = 0

    def refuse_handshakes(
        self, status: int = 503, times: int = 1, *, retry_after_s: float | None = None
    ) -> None:
        """Answer the next ``times`` handshakes with HTTP ``status`` instead of upgrading."""
        self._refusals.extend(Refusal(status, retry_after_s) for _ in range(times))

    @property
    def pending_refusals(self) -> int:
        return len(self._refusals)

    def for_connection(self, number: int) -> FaultPlan:
        """The plan of the ``number``-th accepted connection (1-based, over the emulator's life)."""
        return self._plans.setdefault(number, FaultPlan())

    def next_connection(self) -> FaultPlan:
        """The plan of the next connection to be accepted."""
        return self.for_connection(self._accepted + 1)

    # -- used by the server
    def take_refusal(self) -> Refusal | None:
        return self._refusals.popleft() if self._refusals else None

    def plan_for_new_connection(self) -> FaultPlan:
        self._accepted += 1
        plan = self._plans.pop(self._accepted, None) or FaultPlan()
        plan.merge(self.every_connection)
        if plan.max_duration_s is None:
            plan.cap_duration(self.max_connection_s)
        return plan


def error_body(status: int) -> dict[str, Any]:
    return {"error": {"code": str(status), "message": REFUSAL_MESSAGES.get(status, "Refused.")}}
