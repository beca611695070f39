"""Voice session figures against the loopback emulator (real SDK, real WebSocket).

1. connect(): token (API key here), SDK handshake, session.update -> session.updated; the
   raw SDK handshake alone for scale. Median and p95 of 20.
2. Recovery: the emulator drops the connection and accepts again at once; the appliance's
   loop waits the backoff's first step (0.5 s, jittered down to 0.375 s) and connects. From
   the Disconnected event to the session ready again, split into the wait and the connect.

The emulator enforces no connection quota, so the session's own per-minute budget is raised
for the bench (40 connections in well under a minute).
"""

from __future__ import annotations

import asyncio
import random
import time

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
from bench.report import median, percentile, table

RUNS = 20
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


if __name__ == "__main__":
    main()
