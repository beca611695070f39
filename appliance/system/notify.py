"""Telling systemd how the appliance is doing: readiness, status, reload, stop and the watchdog.

:class:`Notifier` speaks the sd_notify protocol (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``...)
to the socket systemd names in ``NOTIFY_SOCKET``; without it (not under systemd) every call
is a no-op. It goes through systemd-python's ``systemd.daemon.notify`` where that is
installed, else a plain ``AF_UNIX`` datagram (abstract ``@`` addresses included).

:class:`Watchdog` is the liveness half: an asyncio task that sends ``WATCHDOG=1`` at half
systemd's ``WatchdogSec`` only while every registered probe says healthy. A wedged event loop
stops the task itself; a probe covers what the loop cannot see, e.g. audio callbacks that stopped
while a stream is open (:func:`advancing`) or a connection that stopped answering
(:func:`fresh`). Without pings systemd aborts the process and restarts it; an idle device has
nothing open, so its probes are healthy and it is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Final, Self

log = logging.getLogger(__name__)

#: A probe returns None when healthy, else what is wrong, in words.
Probe = Callable[[], str | None]

_STATUS_LIMIT: Final = 200  # systemctl status shows one line; keep it readable


def _libsystemd_notify() -> Callable[[str], bool] | None:
    try:
        import systemd.daemon
    except ImportError:
        return None
    notify: Callable[[str], bool] = systemd.daemon.notify
    return notify


class Notifier:
    """sd_notify messages to systemd; a no-op when ``NOTIFY_SOCKET`` is not set.

    ``environ`` defaults to the process environment, read once here. libsystemd is used
    only while it would talk to the same socket (it reads the process environment itself).
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, use_libsystemd: bool = True
    ) -> None:
        env = os.environ if environ is None else environ
        self.address: str | None = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._libsystemd = _libsystemd_notify() if use_libsystemd else None
        self._socket: socket.socket | None = None
        self._failed = False  # log a failing socket once at WARNING, then at DEBUG

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """systemd's watchdog timeout in seconds, or None when no watchdog watches us."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None  # meant for another process (e.g. a shell that exec'd us later)
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not a number", self._watchdog_usec)
            return None
        return usec / 1_000_000 if usec > 0 else None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one message; True if systemd got it."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(assignments)
        try:
            if self._libsystemd is not None and os.environ.get("NOTIFY_SOCKET") == self.address:
                sent = bool(self._libsystemd(message))
            else:
                sent = self._send_datagram(message.encode())
        except OSError as exc:
            self._report_failure(exc)
            return False
        if sent:
            self._failed = False
        return sent

    def ready(self, status: str | None = None) -> None:
        """The device would serve a press now (also after a reload)."""
        self.send("READY=1", *_status_line(status))

    def status(self, text: str) -> None:
        """One line for ``systemctl status``: the state and the last error, in words."""
        self.send(*_status_line(text))

    def reloading(self) -> None:
        # MONOTONIC_USEC is what systemd >= 253 wants with RELOADING=1; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status: str | None = "stopping") -> None:
        self.send("STOPPING=1", *_status_line(status))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send_datagram(self, data: bytes) -> bool:
        assert self.address is not None
        address = self.address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            raise OSError(f"NOTIFY_SOCKET={self.address!r} is not an AF_UNIX address")
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.sendto(data, address)
        return True

    def _report_failure(self, exc: OSError) -> None:
        level = logging.DEBUG if self._failed else logging.WARNING
        log.log(level, "cannot notify systemd at %s: %s", self.address, exc)
        self._failed = True


def _status_line(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    line = " ".join(text.split())  # one line: a newline would start another assignment
    if len(line) > _STATUS_LIMIT:
        line = line[: _STATUS_LIMIT - 3] + "..."
    return (f"STATUS={line}",)


def format_status(state: str, last_error: str | None = None) -> str:
    """``STATUS=`` text: the state, then the last error if there is one."""
    return state if not last_error else f"{state}; last error: {last_error}"


def advancing(
    count: Callable[[], int], active: Callable[[], bool], what: str = "audio callbacks"
) -> Probe:
    """Healthy unless ``count`` stood still between two checks while ``active`` held.

    For a stream's callback counter: a stream that is open but whose callbacks stopped is
    wedged. A stream that just opened gets one check period to show its first callback.
    """
    last: int | None = None

    def probe() -> str | None:
        nonlocal last
        if not active():
            last = None
            return None
        now = count()
        previous, last = last, now
        if previous is not None and now == previous:
            return f"{what} stopped (still {now} while the stream is open)"
        return None

    return probe


def fresh(
    last_seen: Callable[[], float | None],
    max_age: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    what: str = "connection",
) -> Probe:
    """Healthy unless the last sign of life (``clock`` time) is older than ``max_age``.

    ``last_seen`` returns None while there is nothing to watch (e.g. no connection open).
    """

    def probe() -> str | None:
        seen = last_seen()
        if seen is None:
            return None
        age = clock() - seen
        if age > max_age:
            return f"{what} silent for {age:.1f} s (limit {max_age:g} s)"
        return None

    return probe


class Watchdog:
    """Sends ``WATCHDOG=1`` at half systemd's interval while every probe is healthy.

    ``run()`` is a task of the appliance's loop: when the loop wedges, the pings stop with
    it. A failing probe is logged once at WARNING (then at DEBUG) and its recovery at INFO.
    ``interval`` defaults to the notifier's ``WATCHDOG_USEC``; without one ``run()`` returns
    at once. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        notifier: Notifier,
        probes: Mapping[str, Probe] | None = None,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._notifier = notifier
        self._probes: dict[str, Probe] = dict(probes or {})
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self._clock = clock
        self._sleep = sleep
        self._failing_since: dict[str, float] = {}
        self.pings = 0

    def add_probe(self, name: str, probe: Probe) -> None:
        self._probes[name] = probe

    def remove_probe(self, name: str) -> None:
        self._probes.pop(name, None)
        self._failing_since.pop(name, None)

    @property
    def failing(self) -> dict[str, float]:
        """Probes failing now, with the clock time each started failing."""
        return dict(self._failing_since)

    def check(self) -> bool:
        """Run the probes once; ping systemd if all are healthy. True if it pinged."""
        now = self._clock()
        failing: dict[str, str] = {}
        for name, probe in list(self._probes.items()):
            try:
                reason = probe()
            except Exception as exc:  # noqa: BLE001 - a probe that breaks is a failing probe
                reason = f"probe raised {exc!r}"
            if reason is not None:
                failing[name] = reason
        for name, reason in failing.items():
            since = self._failing_since.get(name)
            if since is None:
                self._failing_since[name] = now
                log.warning(
                    "watchdog: %s: %s; holding back WATCHDOG=1 (systemd restarts the "
                    "service if this lasts)",
                    name,
                    reason,
                )
            else:
                log.debug("watchdog: %s still failing for %.1f s: %s", name, now - since, reason)
        for name in [n for n in self._failing_since if n not in failing]:
            since = self._failing_since.pop(name)
            log.info("watchdog: %s healthy again after %.1f s", name, now - since)
        if failing:
            return False
        self._notifier.watchdog()
        self.pings += 1
        return True

    async def run(self) -> None:
        if self.interval is None:
            log.debug("no systemd watchdog configured; not pinging")
            return
        period = self.interval / 2
        log.debug("pinging the systemd watchdog every %.1f s while healthy", period)
        while True:
            self.check()
            await self._sleep(period)
