"""Audio hot path: ring cost, allocations per callback, full-duplex CPU and stream health.

Runs on a private PulseAudio server with null devices (tests/fixtures/pulse.py), so it
works without a sound card. Environment knobs: BENCH_AUDIO_SECONDS (default 60) for the
length of each full-duplex run, BENCH_AUDIO_IDLE_SECONDS (default 10) for the idle run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from appliance.audio import Audio, Microphone, Speaker, open_audio
from appliance.audio.devices import _Pump
from appliance.audio.ring import RingBuffer
from appliance.audio.streams import StreamFormat
from appliance.config import AudioSettings
from bench.report import median, percentile, table
from tests.fixtures.pulse import PulseServer, SinkRecording

RATE = 24000
FRAME = 480  # 20 ms at 24 kHz
PERIOD_FORMAT = StreamFormat(rate=RATE, channels=1, period_frames=FRAME)
CALLBACKS = 10_000
DUPLEX_S = float(os.environ.get("BENCH_AUDIO_SECONDS", "60"))
IDLE_S = float(os.environ.get("BENCH_AUDIO_IDLE_SECONDS", "10"))
HEARD_TURNS = int(os.environ.get("BENCH_AUDIO_HEARD_TURNS", "40"))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


def ring_ns_per_frame() -> list[list[object]]:
    rows: list[list[object]] = []
    for drop_oldest in (True, False):
        ring = RingBuffer(RATE * 5, drop_oldest=drop_oldest)
        frame = np.arange(FRAME, dtype=np.int16)
        out = np.empty(FRAME, dtype=np.int16)
        rounds = []
        for _ in range(7):
            count = 50_000
            start = time.perf_counter_ns()
            for _ in range(count):
                ring.write(frame)
                ring.read_into(out)
            rounds.append((time.perf_counter_ns() - start) / count)
        policy = "drop oldest (microphone)" if drop_oldest else "keep (speaker)"
        rows.append([f"write + read_into, 480 samples, {policy}", median(rounds), min(rounds)])
    return rows


def measure_callback(call: Callable[[], object], count: int) -> tuple[float, int, int, float]:
    """(retained bytes per callback from appliance/, max and median transient peak, ns/call)."""
    ours = [tracemalloc.Filter(True, "*/appliance/*")]
    for _ in range(200):
        call()
    tracemalloc.start()
    try:
        for _ in range(200):  # ints our counters hold are now traced ones
            call()
        gc.collect()  # garbage waiting for the collector is not memory kept
        before = tracemalloc.take_snapshot().filter_traces(ours)
        peaks = []
        for _ in range(count):
            current = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            call()
            peaks.append(tracemalloc.get_traced_memory()[1] - current)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    retained = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    start = time.perf_counter_ns()
    for _ in range(count):
        call()
    ns = (time.perf_counter_ns() - start) / count
    return retained / count, max(peaks), int(median(peaks)), ns


async def callback_allocations(loop: asyncio.AbstractEventLoop) -> list[list[object]]:
    """Run what the device threads run every period, 10,000 times each, under tracemalloc."""
    from appliance.audio.devices import PortAudio, PyAudioInput, PyAudioOutput

    seconds = 2.2 * CALLBACKS * FRAME / RATE  # measured twice: under tracemalloc, then timed
    with PortAudio() as portaudio:
        # Rings large enough for every callback to carry audio, so that nothing but the
        # callbacks runs (no loop-side refill) while they are measured.
        mic = Microphone(PyAudioInput(portaudio), loop=loop, service_rate=RATE, buffer_s=seconds)
        speaker = Speaker(PyAudioOutput(portaudio), loop=loop, volume=100, buffer_s=seconds)
        with mic, speaker:
            mic.start()
            speaker.start()
            mic.stop()
            speaker.stop()
            t = np.arange(int(seconds * RATE)) / RATE
            speaker.play((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), "item")
            # What a device thread does with each period, minus PortAudio's read or write.
            input_pump = _Pump(None, "input", mic._capture, PERIOD_FORMAT, mic._device_failed)
            output_pump = _Pump(
                None, "output", speaker._render, PERIOD_FORMAT, speaker._device_failed
            )
            in_data = (np.arange(FRAME, dtype=np.int16) * 3).tobytes()
            rows = []
            for name, call in (
                ("input (microphone)", lambda: input_pump.deliver(in_data)),
                ("output (speaker)", output_pump.fill),
            ):
                retained, peak_max, peak_median, ns = measure_callback(call, CALLBACKS)
                rows.append([name, retained, peak_median, peak_max, ns / 1000])
            assert speaker.underruns == 0, "the speaker ran dry during the measurement"
            assert mic.overruns == 0
    return rows


async def drained(speaker: Speaker, audio_s: float) -> None:
    """Wait until the speaker has played what it was given (``audio_s`` of it at most)."""
    try:
        async with asyncio.timeout(audio_s + 30):
            await speaker.drained.wait()
    except TimeoutError:
        status = speaker.status()
        raise RuntimeError(
            f"the speaker did not finish playing: {status.failure or 'no failure reported'} "
            f"({status.callbacks} periods played)"
        ) from None


async def duplex(period_ms: int, seconds: float, loop: asyncio.AbstractEventLoop) -> list[object]:
    settings = AudioSettings(APPLIANCE_PERIOD_MS=period_ms, APPLIANCE_VOLUME=100)
    audio: Audio
    with open_audio(settings, service_input_rate=RATE, loop=loop) as audio:
        mic, speaker = audio.mic, audio.speaker
        mic.start()
        speaker.start()
        sent = 0

        async def send_microphone() -> None:
            nonlocal sent
            while True:
                chunk = await mic.next_chunk()
                sent += len(chunk.tobytes())  # what the session would base64 and send

        async def answer() -> None:
            # One long answer arriving as 100 ms deltas at twice real time, as the service does.
            t = np.arange(RATE // 10) / RATE
            delta = (6000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16).tobytes()
            for _ in range(int(seconds * 10)):
                speaker.play(delta, "answer")
                await asyncio.sleep(0.05)
            speaker.finish()
            await drained(speaker, seconds)

        wall, cpu = time.monotonic(), cpu_s()
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(send_microphone())
            await group.create_task(answer())
            sender.cancel()
        wall, cpu = time.monotonic() - wall, cpu_s() - cpu
        mic_status, speaker_status = mic.status(), speaker.status()
        expected_in = wall * 1000 / (mic_status.period_ms or period_ms)
        expected_out = wall * 1000 / period_ms
        return [
            f"{period_ms} ms",
            round(wall, 1),
            100 * cpu / wall,
            speaker.underruns,
            mic.overruns,
            round(mic.dropped_ms),
            f"{mic_status.healthy}/{speaker_status.healthy}",
            f"{mic_status.callbacks / expected_in:.3f}/"
            f"{speaker_status.callbacks / expected_out:.3f}",
            sent // 2 // RATE,
        ]


async def answer_heard(
    recording: SinkRecording, loop: asyncio.AbstractEventLoop, turns: int
) -> list[list[object]]:
    """From an answer's first delta, on a speaker stream playing silence, until it is heard.

    Between turns the speaker stream keeps running and plays silence, as it does from the end
    of the user's speech until the answer comes. "Heard" is when the answer's first sound
    reached the recorder of the sink's monitor, at most its 10 ms latency after the sink
    played it. When the device drops the silence it held, its stream starts afresh, and the
    sink mixes it in by rewinding: a sound card plays that, but the monitor has recorded
    the old mix and skips the first few ms of the answer. So this can be a few ms late.
    Playback is done (``drained``, the end of responding) once the answer has been played:
    how long after its last sound reached the monitor; below 0 it was declared done early.
    """
    t = np.arange(RATE // 10) / RATE
    delta = (6000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16)
    handed_ms: list[float] = []
    heard_ms: list[float] = []
    done_after_ms: list[float] = []
    settings = AudioSettings(APPLIANCE_VOLUME=100)
    with open_audio(settings, service_input_rate=RATE, loop=loop) as audio:
        speaker = audio.speaker
        speaker.start()
        for turn in range(turns):
            # A quiet gap of varying length, so the answers land at every phase of a period.
            await asyncio.sleep(0.3 + 0.2 * (turn % 7) / 7)
            start = recording.position
            sent_ns = time.monotonic_ns()
            mark = speaker.play(delta, f"answer-{turn}")
            speaker.play(delta, f"answer-{turn}")
            speaker.finish()
            await drained(speaker, 1.0)
            done_ns = time.monotonic_ns()
            await recording.until(recording.position + RATE // 5)
            loud = np.flatnonzero(np.abs(recording.samples(start, recording.position)) > 1000)
            handed_ns = speaker.handed_ns(mark)
            heard_ns = recording.arrival_ns(start + int(loud[0])) if len(loud) else None
            last_heard_ns = recording.arrival_ns(start + int(loud[-1])) if len(loud) else None
            if handed_ns is None or heard_ns is None or last_heard_ns is None:
                raise RuntimeError(f"turn {turn}: the answer was not played")
            handed_ms.append((handed_ns - sent_ns) / 1e6)
            heard_ms.append((heard_ns - sent_ns) / 1e6)
            done_after_ms.append((done_ns - last_heard_ns) / 1e6)
    return [
        ["first sample handed to the device", median(handed_ms), percentile(handed_ms, 0.95)],
        ["first sample heard (at the monitor)", median(heard_ms), percentile(heard_ms, 0.95)],
        [
            "playback done (drained) after its last sample was heard",
            median(done_after_ms),
            percentile(done_after_ms, 0.95),
        ],
    ]


async def idle(seconds: float, loop: asyncio.AbstractEventLoop) -> list[object]:
    with open_audio(AudioSettings(), service_input_rate=RATE, loop=loop) as audio:
        audio.mic.start()
        audio.speaker.start()
        await audio.mic.next_chunk()
        audio.mic.stop()
        audio.speaker.stop()
        wall, cpu = time.monotonic(), cpu_s()
        await asyncio.sleep(seconds)
        wall, cpu = time.monotonic() - wall, cpu_s() - cpu
        return ["streams stopped (idle between conversations)", round(wall, 1), 100 * cpu / wall]


async def warm_up(loop: asyncio.AbstractEventLoop) -> None:
    """Run both streams for a moment: a null sink that just woke up starts streams late."""
    with open_audio(AudioSettings(), service_input_rate=RATE, loop=loop) as audio:
        audio.mic.start()
        audio.speaker.start()
        async with asyncio.timeout(30):
            while audio.speaker.callbacks < 50:
                await audio.mic.next_chunk()


async def run() -> None:
    loop = asyncio.get_running_loop()
    table(
        "Ring buffer: one 20 ms frame at 24 kHz (ns per frame, 7 rounds of 50,000)",
        ["operation", "median", "best"],
        ring_ns_per_frame(),
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-audio-") as root,
        PulseServer(Path(root), record=False) as pulse,
    ):
        os.environ.update(pulse.env)  # PortAudio reads it when it initialises
        await warm_up(loop)
        table(
            f"Allocations per period on the device side ({CALLBACKS:,} calls each, "
            "tracemalloc; bytes)",
            [
                "device thread, per period",
                "retained from appliance/ per call",
                "transient peak, median",
                "transient peak, max",
                "us per call",
            ],
            await callback_allocations(loop),
        )
        default_period = AudioSettings().period_ms  # compare scripts/bench floor's rows
        periods = sorted({default_period, 20, 10}, reverse=True)
        rows = [await duplex(period, DUPLEX_S, loop) for period in periods]
        table(
            f"Full duplex on PulseAudio null devices, 24 kHz, {DUPLEX_S:.0f} s each "
            "(mic read continuously; one answer as 100 ms deltas at 2x real time)",
            [
                "period",
                "wall s",
                "CPU % of a core",
                "speaker underruns",
                "mic overruns",
                "mic dropped ms",
                "streams healthy in/out",
                "callbacks / expected in/out",
                "mic s sent",
            ],
            rows,
        )
        table(
            f"Idle ({IDLE_S:.0f} s)",
            ["state", "wall s", "CPU % of a core"],
            [await idle(IDLE_S, loop)],
        )
    with (
        tempfile.TemporaryDirectory(prefix="bench-audio-") as root,
        PulseServer(Path(root)) as pulse,
    ):
        os.environ.update(pulse.env)
        table(
            f"Answer after silence ({HEARD_TURNS} answers, {AudioSettings().period_ms} ms "
            "periods; ms from its first delta, or as said)",
            ["answer", "median", "p95"],
            await answer_heard(pulse.recording, loop, HEARD_TURNS),
        )


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
