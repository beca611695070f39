"""sd_notify messages and the liveness watchdog, on a real datagram socket bound by the test."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from appliance.system import notify
from appliance.system.notify import Notifier, Watchdog, advancing, format_status, fresh

HAS_LIBSYSTEMD = notify._libsystemd_notify() is not None
TRANSPORTS = [
    pytest.param(False, id="datagram"),
    pytest.param(
        True,
        id="libsystemd",
        marks=pytest.mark.skipif(not HAS_LIBSYSTEMD, reason="systemd-python not installed"),
    ),
]


class Listener:
    """The systemd end: a bound AF_UNIX datagram socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def receive(self, timeout: float = 10.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        return False

    def drain(self) -> int:
        self.sock.setblocking(False)
        count = 0
        try:
            while True:
                self.sock.recv(65536)
                count += 1
        except BlockingIOError:
            return count
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # A short directory of our own: AF_UNIX paths are limited to 107 bytes.
    with (
        tempfile.TemporaryDirectory(prefix="notify-") as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = os.path.join(directory, "notify.sock")
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield Listener(sock, path)


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"appliance-test-notify-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Listener(sock, "@" + name)


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    with Notifier() as notifier:
        assert not notifier.enabled
        assert notifier.send("READY=1") is False
        notifier.ready("idle")
        notifier.watchdog()
        notifier.stopping()
        assert notifier.watchdog_interval() is None


@pytest.mark.parametrize("use_libsystemd", TRANSPORTS)
def test_lifecycle_messages_reach_the_socket(listener: Listener, use_libsystemd: bool) -> None:
    with Notifier(use_libsystemd=use_libsystemd) as notifier:
        assert notifier.enabled
        notifier.ready("idle")
        assert listener.receive() == {"READY": "1", "STATUS": "idle"}
        notifier.status(format_status("error", "offline: connection refused"))
        assert listener.receive() == {"STATUS": "error; last error: offline: connection refused"}
        notifier.reloading()
        message = listener.receive()
        assert message["RELOADING"] == "1"
        assert int(message["MONOTONIC_USEC"]) > 0
        notifier.ready()
        assert listener.receive() == {"READY": "1"}
        notifier.watchdog()
        assert listener.receive() == {"WATCHDOG": "1"}
        notifier.stopping()
        assert listener.receive() == {"STOPPING": "1", "STATUS": "stopping"}


@pytest.mark.parametrize("use_libsystemd", TRANSPORTS)
def test_abstract_socket_address(abstract_listener: Listener, use_libsystemd: bool) -> None:
    with Notifier(use_libsystemd=use_libsystemd) as notifier:
        notifier.ready("idle")
        assert abstract_listener.receive() == {"READY": "1", "STATUS": "idle"}


def test_status_is_one_bounded_line(listener: Listener) -> None:
    with Notifier(use_libsystemd=False) as notifier:
        notifier.status("error:\nREADY=1 injected\n" + "x" * 500)
        message = listener.receive()
    assert list(message) == ["STATUS"]
    assert message["STATUS"].startswith("error: READY=1 injected x")
    assert len(message["STATUS"]) == 200
    assert message["STATUS"].endswith("...")


def test_watchdog_interval_from_the_environment() -> None:
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "20000000"}).watchdog_interval() == 20.0
    assert Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": pid}).watchdog_interval() == 3.0
    assert Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({}).watchdog_interval() is None


def test_invalid_watchdog_usec_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert "WATCHDOG_USEC='soon'" in caplog.text


def test_unreachable_socket_is_logged_once_then_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    with caplog.at_level(logging.DEBUG, logger="appliance.system.notify"):
        notifier = Notifier(use_libsystemd=False)
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
    levels = [r.levelno for r in caplog.records if "cannot notify" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


# ---- probes ---------------------------------------------------------------------------


class Stream:
    """What the audio helper exposes per stream: a callback counter and an active flag."""

    def __init__(self) -> None:
        self.callbacks = 0
        self.active = False

    def probe(self) -> notify.Probe:
        return advancing(lambda: self.callbacks, lambda: self.active)


def test_advancing_probe_flags_a_stalled_open_stream_only() -> None:
    stream = Stream()
    probe = stream.probe()
    assert probe() is None  # closed: nothing to watch
    assert probe() is None
    stream.active = True
    assert probe() is None  # just opened: one period of grace
    stream.callbacks += 5
    assert probe() is None
    reason = probe()  # open, and no callback since the last check
    assert reason is not None
    assert "audio callbacks stopped" in reason
    stream.callbacks += 1
    assert probe() is None
    stream.active = False
    assert probe() is None  # closed streams do not call back; that is fine


def test_fresh_probe_uses_the_injected_clock() -> None:
    now = [100.0]
    last: list[float | None] = [None]
    probe = fresh(lambda: last[0], 30.0, clock=lambda: now[0], what="connection")
    assert probe() is None  # no connection open
    last[0] = 95.0
    assert probe() is None
    now[0] = 125.0
    assert probe() is None  # exactly 30 s: still fine
    now[0] = 126.0
    assert probe() == "connection silent for 31.0 s (limit 30 s)"


# ---- the watchdog ---------------------------------------------------------------------


class Recorder(Notifier):
    """A notifier that records WATCHDOG=1 instead of sending it."""

    def __init__(self) -> None:
        super().__init__({})
        self.count = 0

    def watchdog(self) -> None:
        self.count += 1


def test_check_pings_only_while_every_probe_is_healthy(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    health: dict[str, str | None] = {"loop": None, "audio": None}
    recorder = Recorder()

    def probe_of(name: str) -> notify.Probe:
        return lambda: health[name]

    watchdog = Watchdog(
        recorder,
        {name: probe_of(name) for name in health},
        interval=10.0,
        clock=lambda: now[0],
    )
    with caplog.at_level(logging.DEBUG, logger="appliance.system.notify"):
        assert watchdog.check()
        health["audio"] = "audio callbacks stopped"
        for second in (5.0, 10.0, 15.0):
            now[0] = second
            assert not watchdog.check()
        assert watchdog.failing == {"audio": 5.0}
        health["audio"] = None
        now[0] = 20.0
        assert watchdog.check()
    assert recorder.count == 2
    assert watchdog.pings == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not every tick
    assert "audio: audio callbacks stopped" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["watchdog: audio healthy again after 15.0 s"]


def test_a_probe_that_raises_counts_as_failing() -> None:
    def broken() -> str | None:
        raise RuntimeError("device gone")

    recorder = Recorder()
    watchdog = Watchdog(recorder, {"audio": broken}, interval=10.0)
    assert not watchdog.check()
    assert recorder.count == 0
    watchdog.remove_probe("audio")
    assert watchdog.check()
    assert recorder.count == 1


async def test_without_a_watchdog_run_returns_at_once() -> None:
    watchdog = Watchdog(Recorder())
    assert watchdog.interval is None
    await asyncio.wait_for(watchdog.run(), timeout=5)


async def test_run_pings_at_half_the_interval_and_stops_on_an_audio_wedge() -> None:
    stream = Stream()
    stream.active = True
    recorder = Recorder()
    ticks: asyncio.Queue[float] = asyncio.Queue()
    proceed = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await ticks.put(seconds)
        await proceed.wait()
        proceed.clear()

    watchdog = Watchdog(recorder, {"audio": stream.probe()}, interval=20.0, sleep=sleep)

    async def tick() -> float:
        proceed.set()
        return await asyncio.wait_for(ticks.get(), timeout=5)

    task = asyncio.create_task(watchdog.run())
    try:
        assert await asyncio.wait_for(ticks.get(), timeout=5) == 10.0  # half of 20 s
        assert recorder.count == 1
        stream.callbacks += 2
        await tick()
        assert recorder.count == 2
        await tick()  # the callbacks stood still: wedged audio, no ping
        await tick()
        assert recorder.count == 2
        stream.callbacks += 1
        await tick()
        assert recorder.count == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_wedged_event_loop_stops_the_pings(listener: Listener) -> None:
    """A real loop in a thread, a real socket: blocking the loop silences the watchdog."""
    loop = asyncio.new_event_loop()
    notifier = Notifier({"NOTIFY_SOCKET": listener.address}, use_libsystemd=False)
    watchdog = Watchdog(notifier, interval=0.1)  # a ping every 50 ms
    task_holder: list[asyncio.Task[None]] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        task_holder.append(loop.create_task(watchdog.run()))
        loop.run_forever()

    thread = threading.Thread(target=serve, name="wedged-loop")
    thread.start()
    blocked, release = threading.Event(), threading.Event()

    def wedge() -> None:  # runs on the loop and holds it, as a blocking call would
        blocked.set()
        release.wait(timeout=60)

    try:
        assert listener.receive() == {"WATCHDOG": "1"}
        loop.call_soon_threadsafe(wedge)
        assert blocked.wait(timeout=10)
        listener.drain()  # pings sent before the wedge
        assert listener.nothing_within(1.0)  # twenty periods without a ping
        release.set()
        assert listener.receive() == {"WATCHDOG": "1"}  # alive again, pinging again
    finally:
        release.set()

        def stop() -> None:
            for task in task_holder:
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(stop)
        thread.join(timeout=10)
        loop.close()
        notifier.close()
