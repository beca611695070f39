"""What streaming costs before any appliance code: the floor under the appliance's CPU figures.

``scripts/bench appliance`` measures the whole appliance. This bench measures, on the same
private PulseAudio null devices, the least any client that streams the same audio can cost,
each row in a child process of its own over BENCH_FLOOR_S seconds (default 30), as % of one
core (all the child's threads, from ``time.process_time``):

- the devices alone: the PyAudio streams the appliance opens (24 kHz mono, 16-bit, blocking
  reads and writes of one period in threads of their own), the microphone read continuously,
  then with the speaker playing silence as well;
- the same, plus what any streaming client must add: each microphone period woken onto an
  asyncio loop, base64-encoded and sent as an ``input_audio_buffer.append`` text frame on an
  aiohttp WebSocket, to a local server that reads and discards it (in another process, so
  its cost is not counted; the appliance's own benches send to the emulator the same way).

The rows run at the appliance's default periods (``APPLIANCE_CHUNK_MS`` for the microphone,
``APPLIANCE_PERIOD_MS`` for the speaker) and at the low-power setting the README describes
(100 ms each). The null sinks are kept awake as in ``scripts/bench appliance``, and the
append text is the appliance's own (``append_event_text``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config import AudioSettings
from appliance.voice.session import append_event_text
from bench.bench_appliance import KEEPALIVE_MS, LOW_POWER, RATE
from bench.report import table
from tests.fixtures.pulse import PulseServer

SETTLE_S = 3.0  # streams started, null sinks awake, before the measured window
MEASURE_S = float(os.environ.get("BENCH_FLOOR_S", "30"))


def _start_devices(
    pa: Any, mic_ms: int, speaker_ms: int | None, on_period: Callable[[bytes], None]
) -> None:
    """The appliance's device threads, minus its ring buffers: read, hand over, repeat."""
    import pyaudio

    mic_frames = RATE * mic_ms // 1000
    mic = pa.open(
        format=pyaudio.paInt16, channels=1, rate=RATE, input=True, frames_per_buffer=mic_frames
    )

    def read_forever() -> None:
        while True:
            on_period(mic.read(mic_frames, exception_on_overflow=False))

    # Daemon threads: the child ends with os._exit, and a blocking read has no way out.
    threading.Thread(target=read_forever, daemon=True).start()
    if speaker_ms is None:
        return
    speaker_frames = RATE * speaker_ms // 1000
    silence = bytes(2 * speaker_frames)
    speaker = pa.open(
        format=pyaudio.paInt16,
        channels=1,
        rate=RATE,
        output=True,
        frames_per_buffer=speaker_frames,
    )

    def play_forever() -> None:
        while True:
            speaker.write(silence)

    threading.Thread(target=play_forever, daemon=True).start()


async def _measure(count: Callable[[], int]) -> dict[str, float]:
    """CPU of one core by every thread of this process, and microphone periods a second."""
    await asyncio.sleep(SETTLE_S)
    cpu, wall, counted = time.process_time(), time.monotonic(), count()
    await asyncio.sleep(MEASURE_S)
    wall = time.monotonic() - wall
    return {
        "cpu_percent": (time.process_time() - cpu) / wall * 100,
        "periods_per_s": (count() - counted) / wall,
    }


async def _devices_only(pa: Any, mic_ms: int, speaker_ms: int | None) -> dict[str, float]:
    periods = 0

    def count(_: bytes) -> None:
        nonlocal periods
        periods += 1

    _start_devices(pa, mic_ms, speaker_ms, count)
    return await _measure(lambda: periods)


async def _streaming(pa: Any, url: str, mic_ms: int, speaker_ms: int | None) -> dict[str, float]:
    import aiohttp

    loop = asyncio.get_running_loop()
    captured: collections.deque[bytes] = collections.deque()
    ready = asyncio.Event()
    sent = 0

    def hand_over(period: bytes) -> None:  # on the microphone's thread, as the appliance's
        captured.append(period)
        loop.call_soon_threadsafe(ready.set)

    async def send_periods(websocket: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal sent
        while True:
            await ready.wait()
            ready.clear()
            while captured:
                await websocket.send_str(append_event_text(captured.popleft()))
                sent += 1

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url) as websocket,
        asyncio.TaskGroup() as tasks,
    ):
        _start_devices(pa, mic_ms, speaker_ms, hand_over)
        sender = tasks.create_task(send_periods(websocket))
        figures = await _measure(lambda: sent)
        sender.cancel()
    return figures


async def _sink() -> None:
    """A WebSocket server that reads everything and answers nothing, until killed."""
    from aiohttp import WSMsgType, web

    async def discard(request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse()
        await websocket.prepare(request)
        async for message in websocket:
            if message.type is WSMsgType.ERROR:
                break
        return websocket

    app = web.Application()
    app.router.add_get("/", discard)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"http://{host}:{port}/", flush=True)
    await asyncio.Event().wait()


def child(arguments: list[str]) -> None:
    """One row, in this process: print its figures as a JSON line, then end at once."""
    import pyaudio

    mode, mic_ms, speaker_ms, url = arguments
    speaker = int(speaker_ms) or None
    pa = pyaudio.PyAudio()
    if mode == "devices":
        figures = asyncio.run(_devices_only(pa, int(mic_ms), speaker))
    else:
        figures = asyncio.run(_streaming(pa, url, int(mic_ms), speaker))
    print(json.dumps(figures), flush=True)
    os._exit(0)  # the device threads block in PortAudio; nothing else is left to do


def _row(
    env: dict[str, str], mode: str, mic_ms: int, speaker_ms: int | None, url: str
) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_floor",
            "--child",
            mode,
            str(mic_ms),
            str(speaker_ms or 0),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=SETTLE_S + MEASURE_S + 60,
        check=True,
    )
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--sink"]:
        asyncio.run(_sink())
        return
    defaults = AudioSettings()
    setups = [
        (
            f"default ({defaults.chunk_ms} / {defaults.period_ms} ms)",
            defaults.chunk_ms,
            defaults.period_ms,
        ),
        (
            "low power ({APPLIANCE_CHUNK_MS} / {APPLIANCE_PERIOD_MS} ms)".format(**LOW_POWER),
            int(LOW_POWER["APPLIANCE_CHUNK_MS"]),
            int(LOW_POWER["APPLIANCE_PERIOD_MS"]),
        ),
    ]
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-floor-") as root,
        PulseServer(Path(root), record=False, keepalive_ms=KEEPALIVE_MS) as pulse,
    ):
        env = {**os.environ, **pulse.client_env()}
        sink = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_floor", "--sink"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sink.stdout is not None
            url = sink.stdout.readline().strip()  # empty if it died: the first row fails
            for name, mic_ms, speaker_ms in setups:
                for mode, what in (
                    ("devices", "PyAudio streams alone"),
                    ("streaming", "+ each period sent on a WebSocket"),
                ):
                    for speaker, who in (
                        (None, "microphone"),
                        (speaker_ms, "microphone + speaker"),
                    ):
                        figures = _row(env, mode, mic_ms, speaker, url)
                        rows.append(
                            [name, who, what, figures["cpu_percent"], figures["periods_per_s"]]
                        )
        finally:
            sink.terminate()
            sink.wait(timeout=10)
    table(
        f"The floor: streaming without the appliance ({MEASURE_S:.0f} s a row, % of one core; "
        "compare scripts/bench appliance)",
        ["periods (mic / speaker)", "streams", "work", "CPU %", "mic periods / s"],
        rows,
    )


if __name__ == "__main__":
    main()
