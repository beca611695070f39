"""How long to wait before the next connection attempt, and how outages are reported.

Pure policy, no I/O and no sleeping: the caller asks :meth:`Backoff.next_delay` after each
failed attempt and arms its own timer (the state machine's SCHEDULE_RETRY). Clock and random
source are injectable, so tests check exact delays without waiting.

- Capped, jittered exponential steps: ``initial``, ×``factor`` per failure, at most ``cap``.
  Jitter only shortens a step (by up to ``jitter`` of it), so the cap is a true bound.
- Auth and configuration refusals jump to the cap at once: retrying sooner cannot help.
- A 429 with Retry-After waits at least that long.
- After a session that stayed up ``healthy_after`` seconds the steps start over; a
  connection that is accepted and then dropped at once does not reset them, so a service
  that accepts and drops cannot drive a tight reconnect loop.

:class:`ConnectionBudget` keeps the device under the service's quota of new connections per
minute, counting every connection (retries, renewals, button presses). :class:`OutageLog`
reports an outage once at WARNING, its repeats at DEBUG and the recovery at INFO with the
outage's length (journald field ``APPLIANCE_OUTAGE_MS``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from appliance.state import ErrorKind

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# The journald field for an outage's length (documented in config/appliance.env.example).
FIELD_OUTAGE_MS = "APPLIANCE_OUTAGE_MS"


class Classified(Protocol):
    """A failure with a kind: ServiceError, the session's Disconnected event.

    A ``retry_after`` attribute (seconds, from HTTP 429) is honoured when present.
    """

    @property
    def kind(self) -> ErrorKind: ...


Failure = Classified | ErrorKind | BaseException


def _kind_of(error: Failure | None) -> ErrorKind:
    if isinstance(error, ErrorKind):
        return error
    kind = getattr(error, "kind", None)
    return kind if isinstance(kind, ErrorKind) else ErrorKind.OFFLINE


def _retry_after_of(error: Failure | None) -> float | None:
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class Backoff:
    """Reconnect delays: ``next_delay(error)`` after each failure, ``connected()`` on success."""

    def __init__(
        self,
        *,
        initial: float = 0.5,
        factor: float = 2.0,
        cap: float = 30.0,
        jitter: float = 0.25,
        healthy_after: float = 10.0,
        max_retry_after: float = 600.0,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 < initial <= cap or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial <= cap, factor >= 1 and 0 <= jitter < 1")
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self.healthy_after = healthy_after
        self.max_retry_after = max_retry_after
        self._rng = rng or random.Random()
        self._clock = clock
        self._failures = 0
        self._connected_at: float | None = None

    @property
    def failures(self) -> int:
        """Failures since the last reset."""
        return self._failures

    def base_delay(self, failures: int) -> float:
        """The un-jittered step after ``failures`` consecutive failures (1 = first)."""
        if failures <= 0:
            return 0.0
        # Step by step, stopping at the cap: days of failures never overflow a float.
        step = self.initial
        for _ in range(failures - 1):
            step *= self.factor
            if step >= self.cap:
                return self.cap
        return min(step, self.cap)

    def next_delay(self, error: Failure | None = None) -> float:
        """Seconds to wait before the next attempt, after this failure."""
        if self._connected_at is not None:
            if self._clock() - self._connected_at >= self.healthy_after:
                self._failures = 0
            self._connected_at = None
        kind = _kind_of(error)
        if kind is ErrorKind.AUTH:
            # Jump to the cap and stay there until a success resets the steps.
            self._failures = max(self._failures + 1, self._steps_to_cap())
        else:
            self._failures += 1
        delay = self.base_delay(self._failures)
        delay *= 1.0 - self.jitter * self._rng.random()
        retry_after = _retry_after_of(error)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def connected(self) -> None:
        """A session became ready; the steps start over if it stays up long enough."""
        self._connected_at = self._clock()

    def reset(self) -> None:
        """Start over at the first step now (a new conversation, a changed configuration)."""
        self._failures = 0
        self._connected_at = None

    def _steps_to_cap(self) -> int:
        steps = 1
        while self.base_delay(steps) < self.cap:
            steps += 1
        return steps


class ConnectionBudget:
    """At most ``per_minute`` new connections in any 60 seconds (the service's quota is 30)."""

    def __init__(
        self, per_minute: int = 30, *, window: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.window = window
        self._clock = clock
        self._starts: deque[float] = deque()

    def wait_time(self) -> float:
        """Seconds until a new connection would fit in the budget (0: now)."""
        now = self._clock()
        while self._starts and now - self._starts[0] >= self.window:
            self._starts.popleft()
        if len(self._starts) < self.per_minute:
            return 0.0
        return self._starts[0] + self.window - now

    def take(self) -> float:
        """Record a connection starting now, if it fits: returns 0. Otherwise the wait."""
        wait = self.wait_time()
        if wait == 0.0:
            self._starts.append(self._clock())
        return wait


class OutageLog:
    """Reports an outage once at WARNING, repeats at DEBUG, the recovery at INFO."""

    def __init__(self, logger: logging.Logger | None = None, *, clock: Clock = time.monotonic):
        self._log = logger or log
        self._clock = clock
        self._since: float | None = None
        self._kind: ErrorKind | None = None
        self._attempts = 0

    @property
    def in_outage(self) -> bool:
        return self._since is not None

    @property
    def kind(self) -> ErrorKind | None:
        """What the outage in progress is of (its latest failure); None without one."""
        return self._kind

    def failed(self, error: Failure, delay: float) -> None:
        """An attempt failed (or the connection dropped); the next one is in ``delay`` s."""
        kind = _kind_of(error)
        self._attempts += 1
        first = self._since is None
        if first:
            self._since = self._clock()
        # A different kind of failure is news (offline, then refused): say it once more.
        level = logging.WARNING if first or kind is not self._kind else logging.DEBUG
        self._kind = kind
        # A bare kind (an audio device failure, reported where it happened) has no more to say.
        detail = getattr(error, "cause", None) or error
        cause = "" if isinstance(error, ErrorKind) else f": {detail}"
        self._log.log(
            level,
            "%s unavailable (%s)%s; retrying in %.1f s (attempt %d)",
            _subject(kind),
            kind.value,
            cause,
            delay,
            self._attempts,
        )

    def recovered(self) -> float | None:
        """The connection is back: log the outage's length; None if there was no outage."""
        if self._since is None:
            return None
        outage = self._clock() - self._since
        device = self._kind is ErrorKind.DEVICE
        self._log.info(
            "%s after %.1f s (%d failed attempt%s)",
            "audio device works again" if device else "Voice Live back",
            outage,
            self._attempts,
            "" if self._attempts == 1 else "s",
            # The journal field is the reconnect outage; a device's is only in the message.
            extra={} if device else {FIELD_OUTAGE_MS: f"{outage * 1000:.1f}"},
        )
        self._since = None
        self._kind = None
        self._attempts = 0
        return outage

    def reset(self) -> None:
        """Forget an outage without reporting a recovery (the conversation was ended)."""
        self._since = None
        self._kind = None
        self._attempts = 0


def _subject(kind: ErrorKind) -> str:
    return "audio device" if kind is ErrorKind.DEVICE else "Voice Live"
