"""Voice session figures against the loopback emulator (real SDK, real WebSocket).

1. connect(): token (API key here), SDK handshake, session.update -> session.updated; the
   raw SDK handshake alone for scale. Median and p95 of 20.
2. Recovery: the emulator drops the connection and accepts again at once; the appliance's
   loop waits the backoff's first step (0.5 s, jittered down to 0.375 s) and connects. From
   the Disconnected event to the session ready again, split into the wait and the connect.
3. Sending microphone audio: the loop thread's CPU per send_audio() of a 40 ms chunk, with
   the emulator in a process of its own so that only the appliance's side is counted (its
   code, the SDK's WebSocket, the socket write). Sent back to back, so caches are warm: a
   lower bound of what a send costs the appliance, which wakes for each one.

The emulator enforces no connection quota, so the session's own per-minute budget is raised
for the bench (40 connections in well under a minute).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import numpy as np
from azure.core.credentials import AzureKeyCredential

from appliance.config import (
    AudioSettings,
    AuthSettings,
    BehaviourSettings,
    GpioSettings,
    LoggingSettings,
    ServiceSettings,
    Settings,
)
from appliance.emulator import Emulator
from appliance.voice.auth import VoiceCredential
from appliance.voice.backoff import Backoff, ConnectionBudget
from appliance.voice.session import Disconnected, SessionEvent, VoiceSession
from bench.bench_appliance import emulator
from bench.report import median, percentile, table

RUNS = 20
SENDS = 4000  # per round; 5 rounds after a warm-up one
KEY = "bench-key-0123456789abcdef"


def settings() -> Settings:
    return Settings(
        service=ServiceSettings(),
        auth=AuthSettings.model_validate(
            {"APPLIANCE_AUTH": "api_key", "AZURE_VOICELIVE_API_KEY": KEY}
        ),
        audio=AudioSettings(),
        gpio=GpioSettings(),
        behaviour=BehaviourSettings(),
        logging=LoggingSettings(),
    )


async def sdk_handshake_ms(emulator: Emulator) -> float:
    from azure.ai.voicelive.aio import connect

    start = time.perf_counter()
    manager = connect(credential=AzureKeyCredential(KEY), endpoint=emulator.url, model="m")
    connection = await asyncio.wait_for(manager.__aenter__(), 10)
    elapsed = (time.perf_counter() - start) * 1000
    await connection.close()
    return elapsed


async def connect_ms(session: VoiceSession) -> float:
    start = time.perf_counter()
    await session.connect()
    elapsed = (time.perf_counter() - start) * 1000
    await session.disconnect(end_conversation=True)
    return elapsed


async def recovery(
    session: VoiceSession, emulator: Emulator, lost: asyncio.Event
) -> tuple[float, float, float]:
    """(wait ms, connect ms, total ms) from the drop being reported to ready again."""
    await session.connect()
    lost.clear()
    emulator.connections[-1].faults.drop()
    await asyncio.wait_for(lost.wait(), 10)
    reported = time.perf_counter()
    backoff = Backoff(rng=random.Random())  # fresh: its first step
    delay = backoff.next_delay()
    await asyncio.sleep(delay)  # the appliance's retry timer
    attempt = time.perf_counter()
    await session.connect()
    ready = time.perf_counter()
    await session.disconnect(end_conversation=True)
    return (attempt - reported) * 1000, (ready - attempt) * 1000, (ready - reported) * 1000


async def send_cost_us(url: str) -> list[float]:
    """Loop-thread CPU per send_audio() of a 40 ms chunk (us), one figure per round."""
    async with VoiceCredential(settings().auth) as credential:
        session = VoiceSession(settings(), credential, on_event=lambda _: None, endpoint=url)
        await session.connect()
        chunk = np.random.default_rng(1).integers(-3000, 3000, 960).astype(np.int16)
        rounds = []
        for _ in range(6):
            start = time.thread_time()
            for _ in range(SENDS):
                await session.send_audio(chunk)
                await asyncio.sleep(0)  # the loop turns between chunks, as it does streaming
            rounds.append((time.thread_time() - start) / SENDS * 1e6)
        await session.close()
    return rounds[1:]  # the first warms up


async def main_async() -> None:
    lost = asyncio.Event()

    def on_event(event: SessionEvent) -> None:
        if isinstance(event, Disconnected):
            lost.set()

    async with Emulator(api_key=KEY) as emulator, VoiceCredential(settings().auth) as credential:
        session = VoiceSession(
            settings(),
            credential,
            on_event=on_event,
            endpoint=emulator.url,
            budget=ConnectionBudget(per_minute=1000),
        )
        await connect_ms(session)  # warm-up: imports, first TCP connection
        connects = [await connect_ms(session) for _ in range(RUNS)]
        handshakes = [await sdk_handshake_ms(emulator) for _ in range(RUNS)]
        recoveries = [await recovery(session, emulator, lost) for _ in range(RUNS)]
        await session.close()

    waits = [r[0] for r in recoveries]
    reconnects = [r[1] for r in recoveries]
    totals = [r[2] for r in recoveries]
    table(
        f"Voice session against the loopback emulator (ms, {RUNS} runs each)",
        ["figure", "median", "p95", "min", "max"],
        [
            ["connect() to session.updated", *_stats(connects)],
            ["  SDK handshake alone", *_stats(handshakes)],
            ["drop reported -> ready again (backoff 1st step)", *_stats(totals)],
            ["  of which: backoff wait", *_stats(waits)],
            ["  of which: connect()", *_stats(reconnects)],
        ],
    )


def _stats(values: list[float]) -> list[float]:
    return [median(values), percentile(values, 0.95), min(values), max(values)]


def main() -> None:
    asyncio.run(main_async())
    service, url = emulator(dict(os.environ))
    try:
        sends = asyncio.run(send_cost_us(url))
    finally:
        service.stop()
    table(
        "Voice session: sending microphone audio (us of the loop thread's CPU per send)",
        ["figure", "median", "min", "max"],
        [["send_audio() of a 40 ms chunk, back to back", median(sends), min(sends), max(sends)]],
    )


if __name__ == "__main__":
    main()
