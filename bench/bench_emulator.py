"""Voice Live emulator figures: event throughput of one connection, CPU while streaming.

The emulator runs in its own process (``appliance emulator``, or this module with
``--serve`` for options the CLI does not offer), the client (the real SDK) in this one, so
the figures are the emulator's own. CPU comes from /proc/PID/stat (user + system time).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from azure.ai.voicelive.aio import VoiceLiveConnection, connect
from azure.core.credentials import AzureKeyCredential

from bench.report import median, table

T = TypeVar("T")
RATE = 24000
APPLIANCE = Path(sys.executable).with_name("appliance")
FLOOD_APPENDS = 5000
RUNS = 5
ANSWER_S = 300
STREAM_SECONDS = 30
IDLE_SECONDS = 10
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


class EmulatorProcess:
    def __init__(self, command: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1].strip()
        self.pid = self.process.pid

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[VoiceLiveConnection]:
    manager = connect(endpoint=url, credential=AzureKeyCredential("bench"), model="gpt-realtime")
    connection = await asyncio.wait_for(manager.__aenter__(), 10)
    try:
        yield connection
    finally:
        await manager.__aexit__(None, None, None)


async def until(connection: VoiceLiveConnection, event_type: str) -> int:
    """Read events up to ``event_type``; returns how many were read."""
    count = 0
    async with asyncio.timeout(120):
        async for event in connection:
            count += 1
            if event.type == event_type:
                return count
    raise RuntimeError(f"connection ended before {event_type}")


def tone(ms: int, amplitude: int = 8000) -> npt.NDArray[np.int16]:
    t = np.arange(ms * RATE // 1000) / RATE
    samples: npt.NDArray[np.int16] = np.rint(amplitude * np.sin(2 * math.pi * 220 * t)).astype(
        np.int16
    )
    return samples


def b64(samples: npt.NDArray[np.int16]) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")


async def flood_appends(url: str, *, vad: bool) -> float:
    """Appends/s the emulator takes in: 20 ms chunks sent back to back, then a session.update
    whose session.updated (answered in order) marks that all appends were processed."""
    chunk = b64(tone(20) if vad else np.zeros(480, dtype=np.int16))
    async with connected(url) as connection:
        if not vad:
            await connection.session.update(session={"turn_detection": None})
            await until(connection, "session.updated")
        else:
            await until(connection, "session.created")
        started = time.perf_counter()
        for _ in range(FLOOD_APPENDS):
            await connection.input_audio_buffer.append(audio=chunk)
        await connection.session.update(session={"instructions": "done"})
        await until(connection, "session.updated")
        return FLOOD_APPENDS / (time.perf_counter() - started)


async def long_response(url: str, seconds: int) -> float:
    """Server events/s of one response of ``seconds`` of audio, unpaced (response.create to
    response.done, every event read and deserialized by the SDK)."""
    async with connected(url) as connection:
        await connection.session.update(session={"turn_detection": None})
        await until(connection, "session.updated")
        audio = tone(1000 * seconds)
        for start in range(0, audio.size, RATE):
            await connection.input_audio_buffer.append(audio=b64(audio[start : start + RATE]))
        await connection.input_audio_buffer.commit()
        await until(connection, "conversation.item.created")
        started = time.perf_counter()
        await connection.response.create()
        count = await until(connection, "response.done")
        return count / (time.perf_counter() - started)


async def real_time_conversation(url: str, seconds: int) -> tuple[int, int]:
    """Mic audio appended at real-time pace in 20 ms chunks: 1.5 s of speech then 1.5 s of
    silence, over and over. Returns (turns answered, server events received)."""
    pattern = np.concatenate([tone(1500), np.zeros(RATE * 3 // 2, dtype=np.int16)])
    chunks = [b64(pattern[i : i + 480]) for i in range(0, pattern.size, 480)]
    async with connected(url) as connection:
        received = {"events": 0, "turns": 0}

        async def read() -> None:
            async for event in connection:
                received["events"] += 1
                if event.type == "response.done":
                    received["turns"] += 1

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index in range(seconds * 50):
            await asyncio.sleep(max(0.0, started + index * 0.02 - loop.time()))
            await connection.input_audio_buffer.append(audio=chunks[index % len(chunks)])
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        return received["turns"], received["events"]


async def idle_connection(url: str, seconds: float) -> None:
    async with connected(url) as connection:
        await until(connection, "session.created")
        await asyncio.sleep(seconds)


def measure_cpu(emulator: EmulatorProcess, work: Coroutine[Any, Any, T]) -> tuple[float, float, T]:
    """CPU % of one core the emulator used while ``work`` ran; wall seconds; its result."""
    cpu_before, wall_before = cpu_seconds(emulator.pid), time.perf_counter()
    result = asyncio.run(work)
    wall = time.perf_counter() - wall_before
    return 100 * (cpu_seconds(emulator.pid) - cpu_before) / wall, wall, result


def throughput() -> None:
    command = [sys.executable, "-m", "bench.bench_emulator", "--serve", "--unpaced"]
    rows: list[list[object]] = []

    def run(
        emulator: EmulatorProcess, label: str, work: Callable[[], Coroutine[Any, Any, float]]
    ) -> None:
        rates, loads = [], []
        for _ in range(RUNS):
            load, _, rate = measure_cpu(emulator, work())
            rates.append(rate)
            loads.append(load)
        rate, load = median(rates), median(loads)
        rows.append([label, rate, load, rate / (load / 100)])

    emulator = EmulatorProcess(command)
    try:
        run(
            emulator,
            f"client -> emulator: {FLOOD_APPENDS} appends of 20 ms silence, manual turns",
            lambda: flood_appends(emulator.url, vad=False),
        )
        run(
            emulator,
            f"client -> emulator: {FLOOD_APPENDS} appends of 20 ms speech, server VAD",
            lambda: flood_appends(emulator.url, vad=True),
        )
        run(
            emulator,
            f"emulator -> client: one {ANSWER_S} s answer unpaced, 100 ms audio deltas",
            lambda: long_response(emulator.url, ANSWER_S),
        )
    finally:
        emulator.close()
    chunked = EmulatorProcess([*command, "--chunk-ms", "20"])
    try:
        run(
            chunked,
            f"emulator -> client: one {ANSWER_S // 5} s answer unpaced, 20 ms audio deltas",
            lambda: long_response(chunked.url, ANSWER_S // 5),
        )
    finally:
        chunked.close()
    table(
        f"Emulator throughput, one connection (median of {RUNS} runs). events/s: events handled "
        "/ wall time from the first send to the last reply, with the real SDK as the client in "
        "another process (the client is the bottleneck: the emulator's CPU stays below 100 %); "
        "per CPU-s: events/s divided by the emulator's share of a core, what it would sustain "
        "on one full core",
        ["what", "events/s", "emulator CPU %", "events per emulator CPU-s"],
        rows,
    )


def cpu() -> None:
    emulator = EmulatorProcess([str(APPLIANCE), "emulator", "--port", "0"])
    try:
        time.sleep(1)  # let start-up settle before measuring idle
        idle, idle_wall, _ = measure_cpu(emulator, asyncio.sleep(IDLE_SECONDS))
        connected_idle, _, _ = measure_cpu(emulator, idle_connection(emulator.url, IDLE_SECONDS))
        streaming, wall, result = measure_cpu(
            emulator, real_time_conversation(emulator.url, STREAM_SECONDS)
        )
        rss = rss_mib(emulator.pid)
    finally:
        emulator.close()
    turns, events = result
    table(
        "Emulator CPU (`appliance emulator`, default 8x answers; % of one core, /proc/PID/stat)",
        ["state", "seconds", "CPU %"],
        [
            ["idle, no connection", f"{idle_wall:.0f}", idle],
            ["idle, one connection open", f"{IDLE_SECONDS}", connected_idle],
            [
                f"streaming in real time: 20 ms appends, {turns} turns answered, "
                f"{events} events out",
                f"{wall:.0f}",
                streaming,
            ],
            ["resident memory after that (MiB)", "", rss],
        ],
    )


async def serve(chunk_ms: int, unpaced: bool) -> None:
    from appliance.emulator import Emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    speed = math.inf if unpaced else 8.0
    async with Emulator(audio_speed=speed, audio_chunk_ms=chunk_ms) as emulator:
        print(f"Voice Live emulator listening on {emulator.url}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help="run an emulator (for the bench)")
    parser.add_argument("--unpaced", action="store_true")
    parser.add_argument("--chunk-ms", type=int, default=100)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.chunk_ms, args.unpaced))
        return
    throughput()
    cpu()


if __name__ == "__main__":
    main()
