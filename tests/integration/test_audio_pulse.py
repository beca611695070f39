"""Real PyAudio streams on PulseAudio null devices (see tests/fixtures/pulse.py)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.audio import Audio, Earcon, Microphone, Speaker, earcon, open_audio
from appliance.audio.devices import Handler, PortAudio, PyAudioOutput
from appliance.audio.streams import NOT_YET, StreamFormat
from appliance.config import AudioSettings
from appliance.errors import AudioDeviceError, SoundServerHung
from appliance.runtime import sound_server_probe
from tests.fixtures.pulse import SINE_HZ, SINE_SOURCE, PulseServer, SinkRecording

RATE = 24000
CARD_LIKE_SINK = "appliance_card_like"

# Silence before the sound a test compares, as before an answer: the comparison finds
# the sound after it, wherever the stream's start fell in the recording.
LEAD_IN = np.zeros(RATE // 10, dtype=np.int16)

pytestmark = pytest.mark.usefixtures("pulse")


def noise(seconds: float, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.3, 0.3, int(seconds * RATE)) * 32767).astype(np.int16)


def tone(frequency: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def pitch(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def without_gaps(samples: np.ndarray, shortest: int = 8) -> np.ndarray:
    """``samples`` without their runs of ``shortest`` or more exact zeros.

    On a busy machine the device thread of this test process may miss the sound server's
    deadline. The server then plays silence, and the rest of the stream after it: late,
    but complete (the test sinks never rewind, see tests/fixtures/pulse.py). That silence
    is the machine's, not the appliance's: the speaker counts its own underruns, which the
    tests assert apart. Only runs of exact zeros go, which noise and tones do not have, so
    a sample lost, repeated or out of order still fails the comparison.
    """
    return np.concatenate(sounds(samples, shortest) or [samples[:0]])


def sounds(samples: np.ndarray, shortest: int = 8) -> list[np.ndarray]:
    """The parts of ``samples`` between runs of ``shortest`` or more exact zeros."""
    silent = np.concatenate([[False], samples == 0, [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    gaps = [(start, end) for start, end in zip(edges[::2], edges[1::2], strict=True)]
    bounds = [0] + [i for start, end in gaps if end - start >= shortest for i in (start, end)]
    bounds.append(len(samples))
    # A sound's own zero at its edge cannot be told from the silence beside it.
    parts = [np.trim_zeros(samples[a:b]) for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
    return [part for part in parts if len(part)]


def find(needle: np.ndarray, haystack: np.ndarray) -> tuple[int, float]:
    """Where ``needle`` is in ``haystack`` and how well it matches there (1.0 = exactly)."""
    size = len(haystack) + len(needle)
    spectrum = np.fft.rfft(haystack.astype(np.float64), size) * np.conj(
        np.fft.rfft(needle.astype(np.float64), size)
    )
    offset = int(np.argmax(np.fft.irfft(spectrum, size)[: len(haystack) - len(needle) + 1]))
    found = haystack[offset : offset + len(needle)].astype(np.float64)
    wanted = needle.astype(np.float64)
    score = float(found @ wanted / (np.linalg.norm(found) * np.linalg.norm(wanted) + 1e-9))
    return offset, score


def settings(monkeypatch: pytest.MonkeyPatch, **variables: str) -> AudioSettings:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return AudioSettings()


@pytest.fixture
async def audio(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Audio]:
    loop = asyncio.get_running_loop()
    with open_audio(
        settings(monkeypatch, APPLIANCE_VOLUME="100"), service_input_rate=RATE, loop=loop
    ) as audio:
        yield audio


async def heard_in_full(
    answer: np.ndarray, speaker: Speaker, recording: SinkRecording, start: int
) -> float:
    """Play ``answer`` on the started speaker; how well the sink's recording from ``start``
    matches it (1.0 = exactly)."""
    speaker.play(LEAD_IN, response=False)
    speaker.play(answer.tobytes(), "item")
    speaker.finish()
    await asyncio.wait_for(speaker.drained.wait(), 10)
    await recording.until(start + RATE * 2)
    return find(answer, without_gaps(recording.samples(start, start + RATE * 2)))[1]


async def until(condition: Callable[[], bool], audio: Audio, within_s: float = 10) -> None:
    """Wait, one microphone period at a time, until ``condition()`` holds."""
    async with asyncio.timeout(within_s):
        while not condition():
            await audio.mic.next_chunk()


async def test_capture_yields_what_the_source_plays(audio: Audio, pulse: PulseServer) -> None:
    mic, source = audio.mic, pulse.mic_recording
    mic.start()
    assert mic.format is not None
    assert mic.format.rate == RATE
    start = source.position
    heard: list[np.ndarray] = []
    feeding = asyncio.ensure_future(pulse.feed_mic_async(np.concatenate([LEAD_IN, noise(0.5)])))
    async with asyncio.timeout(30):
        while not feeding.done():
            heard.append(await mic.next_chunk())
        await feeding
        # then until the noise has been followed by 100 ms of silence
        while not np.concatenate(heard).any() or np.concatenate(heard)[-RATE // 10 :].any():
            heard.append(await mic.next_chunk())
    await source.until(source.position + RATE // 2)
    # What the source produced (recorded by parec alongside), from its first sound to its last.
    produced = source.samples(start, source.position)
    sounding = np.flatnonzero(produced)
    said = produced[sounding[0] : sounding[-1] + 1]
    assert len(said) >= RATE // 2
    everything = np.concatenate(heard)
    offset, score = find(said, everything)
    assert score > 0.999
    assert list(everything[offset : offset + len(said)]) == list(said)  # bit-exact
    assert mic.overruns == 0


async def test_playback_reaches_the_sink(audio: Audio, pulse: PulseServer) -> None:
    speaker, recording = audio.speaker, pulse.recording
    start = recording.position
    speaker.start()
    speaker.play(LEAD_IN, response=False)
    answer = noise(0.5, seed=3)
    for chunk in np.array_split(answer, 10):  # deltas
        speaker.play(chunk.tobytes(), "item")
    speaker.finish()
    await asyncio.wait_for(speaker.drained.wait(), 10)
    assert speaker.played_ms("item") == 500
    await recording.until(start + RATE * 2)
    recorded = without_gaps(recording.samples(start, start + RATE * 2))
    offset, score = find(answer, recorded)
    assert score > 0.999
    assert list(recorded[offset : offset + len(answer)]) == list(answer)
    assert speaker.underruns == 0


async def test_the_speaker_kept_open_between_answers_plays_the_next_in_full(
    audio: Audio, pulse: PulseServer
) -> None:
    speaker, recording, portaudio = audio.speaker, pulse.recording, audio.portaudio
    assert portaudio is not None
    speaker.start()
    assert await heard_in_full(noise(0.3, seed=21), speaker, recording, recording.position) > 0.999
    opened = portaudio.open_streams
    speaker.stop(keep_open=True)
    assert portaudio.open_streams == opened  # open, stopped
    assert speaker.status().healthy
    for seed in (22, 23):
        start = recording.position
        speaker.start()  # the same stream again: no new one is opened
        assert portaudio.open_streams == opened
        assert await heard_in_full(noise(0.5, seed=seed), speaker, recording, start) > 0.999
        speaker.stop(keep_open=True)
    speaker.release()
    assert portaudio.open_streams == opened - 1
    speaker.release()  # idempotent
    start = recording.position
    speaker.start()  # opened afresh
    assert await heard_in_full(noise(0.3, seed=24), speaker, recording, start) > 0.999


@pytest.fixture
async def speaker_device(
    audio: Audio, pulse: PulseServer
) -> AsyncIterator[tuple[Speaker, PyAudioOutput, SinkRecording]]:
    """A speaker on a device of its own, the device, and the speaker sink's recording."""
    assert audio.portaudio is not None
    device = PyAudioOutput(audio.portaudio)
    with Speaker(device, loop=asyncio.get_running_loop(), volume=100) as speaker:
        yield speaker, device, pulse.recording


async def answered_after_silence(
    audio: Audio, speaker: Speaker, recording: SinkRecording, deltas: list[np.ndarray]
) -> np.ndarray:
    """Start ``speaker``, let it play ten periods of silence (which leaves the sound device's
    buffer full of it, as between the user's turn and the answer), then ``deltas`` as one
    answer. Returns what the sink played from just before the answer on."""
    audio.mic.start()
    speaker.start()
    await until(lambda: speaker.callbacks >= 10, audio)
    start = recording.position
    for delta in deltas:
        speaker.play(delta.tobytes(), "answer")
    speaker.finish()
    await asyncio.wait_for(speaker.drained.wait(), 10)
    await recording.until(start + RATE * 2)
    return recording.samples(start, start + RATE * 2)


def played_exactly(samples: np.ndarray, recorded: np.ndarray) -> bool:
    recorded = without_gaps(recorded)
    offset, _ = find(samples, recorded)
    return list(recorded[offset : offset + len(samples)]) == list(samples)


async def test_an_answer_after_silence_is_heard_in_full_without_the_silence_before_it(
    audio: Audio, speaker_device: tuple[Speaker, PyAudioOutput, SinkRecording]
) -> None:
    speaker, device, recording = speaker_device
    answer = noise(0.5, seed=5)
    # 100 ms deltas: more than the device buffers
    recorded = await answered_after_silence(audio, speaker, recording, np.array_split(answer, 5))
    # The device dropped the silence it held, once, and the answer lost nothing by it.
    assert device.silence_skips == 1
    assert played_exactly(answer, recorded)
    assert speaker.played_ms("answer") == 500
    assert speaker.underruns == 0


async def test_a_sound_too_short_to_refill_the_device_plays_behind_its_silence(
    audio: Audio, speaker_device: tuple[Speaker, PyAudioOutput, SinkRecording]
) -> None:
    speaker, device, recording = speaker_device
    blip = noise(0.03, seed=6)  # less than the device's three periods
    recorded = await answered_after_silence(audio, speaker, recording, [blip])
    # Dropping the silence would leave the device nearly empty: it is played as it is.
    assert device.silence_skips == 0
    assert played_exactly(blip, recorded)


class WaitWatchingOutput(PyAudioOutput):
    """The real output device; ``waited`` is set when its thread first waits for more of an
    answer (its render returned NOT_YET)."""

    def __init__(self, portaudio: PortAudio, *, period_ms: int) -> None:
        super().__init__(portaudio, period_ms=period_ms)
        self.waited = threading.Event()

    def open(self, handler: Handler, on_failure: Callable[[], None]) -> StreamFormat:
        def watched(out: np.ndarray, can_wait: bool = False) -> int | None:
            ready = handler(out, can_wait)
            if ready == NOT_YET:
                self.waited.set()
            return ready

        return super().open(watched, on_failure)


async def test_an_answer_whose_first_delta_is_shorter_than_the_buffer_plays_without_a_gap(
    audio: Audio, pulse: PulseServer
) -> None:
    # The default 40 ms periods: the device buffers three (120 ms), more than the 100 ms
    # first delta of an answer that comes as the stream starts (the speaker starts when the
    # user stops speaking; the emulator answers at once). The device thread used to take
    # all of it at once and fill the rest of its buffer with silence: a gap in the answer.
    assert audio.portaudio is not None
    device = WaitWatchingOutput(audio.portaudio, period_ms=AudioSettings().period_ms)
    recording = pulse.recording
    answer = noise(0.5, seed=9)
    deltas = np.array_split(answer, 5)
    with Speaker(device, loop=asyncio.get_running_loop(), volume=100) as speaker:
        audio.mic.start()
        start = recording.position
        speaker.start()
        speaker.play(deltas[0].tobytes(), "answer")
        # The device plays its two whole periods and waits for more rather than play
        # silence; the rest of the answer wakes it.
        assert await asyncio.to_thread(device.waited.wait, 10)
        assert device.sound_waits >= 1
        for delta in deltas[1:]:
            speaker.play(delta.tobytes(), "answer")
        speaker.finish()
        await asyncio.wait_for(speaker.drained.wait(), 10)
        assert speaker.underruns == 0
        await recording.until(start + RATE * 2)
        assert played_exactly(answer, recording.samples(start, start + RATE * 2))


async def test_a_device_that_ran_dry_keeps_playing(audio: Audio) -> None:
    assert audio.portaudio is not None
    device = PyAudioOutput(audio.portaudio)
    periods = 0

    def render(out: np.ndarray, can_wait: bool = False) -> int:
        nonlocal periods
        periods += 1
        out[:] = 0
        if periods == 5:
            time.sleep(0.3)  # longer than the device's buffer lasts: it underruns
        return 0

    audio.mic.start()
    device.open(render, lambda: None)
    try:
        device.start()
        await until(lambda: periods >= 40 or device.failure() is not None, audio)
        assert device.failure() is None
    finally:
        device.stop()


async def test_speaker_conversion_at_44100_keeps_a_tone(
    monkeypatch: pytest.MonkeyPatch, pulse: PulseServer
) -> None:
    loop = asyncio.get_running_loop()
    chosen = settings(monkeypatch, APPLIANCE_DEVICE_RATE="44100", APPLIANCE_VOLUME="100")
    with open_audio(chosen, service_input_rate=RATE, loop=loop) as audio:
        speaker, recording = audio.speaker, pulse.recording
        speaker.start()
        assert speaker.format is not None
        assert speaker.format.rate == 44100
        start = recording.position
        speaker.play(tone(1000, 1.0), "item")
        speaker.finish()
        await asyncio.wait_for(speaker.drained.wait(), 10)
        await recording.until(start + RATE * 2)
        played = without_gaps(recording.samples(start, start + RATE * 2))
    loud = np.flatnonzero(np.abs(played) > 1000)
    sounding = played[loud[0] : loud[-1] + 1]
    assert len(sounding) == pytest.approx(RATE, abs=RATE // 100)
    assert pitch(sounding, RATE) == pytest.approx(1000, abs=2)


async def test_microphone_conversion_from_48000_keeps_a_tone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULSE_SOURCE", SINE_SOURCE)  # read by the ALSA pulse plugin at open
    loop = asyncio.get_running_loop()
    chosen = settings(monkeypatch, APPLIANCE_DEVICE_RATE="48000")
    with open_audio(chosen, service_input_rate=16000, loop=loop) as audio:
        mic = audio.mic
        mic.start()
        assert mic.format is not None
        assert mic.format.rate == 48000
        heard: list[np.ndarray] = []
        async with asyncio.timeout(30):
            while sum(map(len, heard)) < 16000 * 1.5:
                heard.append(await mic.next_chunk())
    audio_16k = np.concatenate(heard)[4000:]
    assert pitch(audio_16k, 16000) == pytest.approx(SINE_HZ, abs=2)
    assert audio.mic.level.peak > 0.1


@pytest.fixture(scope="module")
def card_like_recording(pulse: PulseServer) -> Iterator[SinkRecording]:
    """What a second null sink played, one that rewinds as a sound card's does.

    A flushed stream (a barge-in) is then taken back from what the sink had rendered
    ahead, as a card takes it back from what it had not played yet. On the tests' own
    sink, which never rewinds (see tests/fixtures/pulse.py), that part is heard.
    """
    module = pulse.pactl(
        "load-module",
        "module-null-sink",
        f"sink_name={CARD_LIKE_SINK}",
        f"rate={RATE}",
        "channels=1",
    ).strip()
    recording = SinkRecording(pulse.client_env(), CARD_LIKE_SINK)
    try:
        recording.wait_until(RATE // 10, timeout=30)
        yield recording
    finally:
        recording.close()
        pulse.pactl("unload-module", module)


async def test_barge_in_cuts_the_answer_where_it_was(
    audio: Audio, card_like_recording: SinkRecording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULSE_SINK", CARD_LIKE_SINK)  # read by libpulse as a stream opens
    speaker, recording = audio.speaker, card_like_recording
    audio.mic.start()
    speaker.start()
    start = recording.position
    speaker.play(tone(700, 5.0), "answer")
    await until(lambda: speaker.played_ms("answer") >= 300, audio)
    handed_ms = speaker.played_ms("answer")
    cleared_ns = time.monotonic_ns()
    cut = speaker.clear()
    assert cut.item_id == "answer"
    # The sound device's buffer is discarded: what it held is neither heard nor counted.
    assert 0 < cut.played_ms < handed_ms
    await until(lambda: speaker.first_render_after_ns(cleared_ns) is not None, audio)
    log = speaker.render_log()
    after = log[log[:, 2] > cleared_ns]
    # A period already being filled when clear() ran may finish; every later one is silent.
    assert after[0, 1] in (0, 480)
    assert not after[1:, 1].any()
    await recording.until(recording.position + RATE)  # everything handed has been played
    recorded = without_gaps(recording.samples(start, recording.position))
    sounding = np.flatnonzero(np.abs(recorded) > 1000)
    heard_ms = (sounding[-1] - sounding[0]) * 1000 / RATE
    assert heard_ms == pytest.approx(cut.played_ms, abs=25)
    assert speaker.played_ms("answer") == cut.played_ms


async def test_earcons_and_answers_share_the_speaker(audio: Audio, pulse: PulseServer) -> None:
    speaker, recording = audio.speaker, pulse.recording
    start = recording.position
    speaker.start()
    speaker.play(LEAD_IN, response=False)
    speaker.play_earcon(Earcon.LISTENING)
    speaker.finish()
    await asyncio.wait_for(speaker.drained.wait(), 10)
    await recording.until(start + RATE * 2)
    recorded = without_gaps(recording.samples(start, start + RATE * 2))
    chime = sounds(earcon(Earcon.LISTENING))  # two notes, with a silence of its own between
    assert len(chime) == 2
    for note in chime:
        assert find(note, recorded)[1] > 0.999


async def test_status_tells_a_running_stream_from_a_stopped_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The speaker runs at the audio period; the microphone in periods of a chunk.
    chosen = settings(monkeypatch, APPLIANCE_PERIOD_MS="20", APPLIANCE_CHUNK_MS="40")
    with open_audio(chosen, service_input_rate=RATE, loop=asyncio.get_running_loop()) as audio:
        mic, speaker = audio.mic, audio.speaker
        assert not mic.status().started
        mic.start()
        speaker.start()
        first = speaker.status().callbacks
        await until(lambda: speaker.status().callbacks > first + 5, audio)
        for status, period_ms in ((mic.status(), 40), (speaker.status(), 20)):
            assert status.started
            assert status.healthy
            assert status.period_ms == period_ms
            assert status.last_callback_ns > 0
        speaker.stop()
        mic.stop()
        assert not speaker.status().started
        assert speaker.status().failure is None


async def test_a_missing_device_is_a_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    chosen = settings(monkeypatch, APPLIANCE_INPUT_DEVICE="no-such-mic")
    with open_audio(chosen, service_input_rate=RATE, loop=loop) as audio:
        with pytest.raises(AudioDeviceError) as caught:
            audio.mic.start()
        message = str(caught.value)
        assert "no input device name contains 'no-such-mic' (APPLIANCE_INPUT_DEVICE)" in message
        assert "'default'" in message
        assert not audio.mic.started
        audio.speaker.start()  # the speaker is not affected


@pytest.fixture
def private_pulse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseServer]:
    """A PulseAudio server of the test's own, to kill or stop; this process's env points at it."""
    with PulseServer(tmp_path / "pulse", speaker_rewinds=False) as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server


async def test_a_crashed_sound_server_is_reported_and_audio_comes_back(
    private_pulse: PulseServer,
) -> None:
    server = private_pulse
    loop = asyncio.get_running_loop()
    with open_audio(AudioSettings(), service_input_rate=RATE, loop=loop) as audio:
        mic, speaker = audio.mic, audio.speaker
        mic_failed, speaker_failed = asyncio.Event(), asyncio.Event()
        mic.on_failure, speaker.on_failure = mic_failed.set, speaker_failed.set
        mic.start()
        speaker.start()
        for _ in range(5):
            await asyncio.wait_for(mic.next_chunk(), 10)
        server.kill()
        # Each device thread finds its stream broken and says so, without waiting for a
        # status() probe.
        async with asyncio.timeout(10):
            await mic_failed.wait()
            await speaker_failed.wait()
        for stream in (mic, speaker):
            failure = stream.status().failure
            assert failure is not None
            assert "device 'default' failed" in failure
        started = time.monotonic()
        mic.stop()
        speaker.stop()
        assert time.monotonic() - started < 5  # a dead device never hangs the loop
        with pytest.raises(AudioDeviceError):
            mic.start()
        server.start()
        mic.start()
        speaker.start()
        for _ in range(5):
            await asyncio.wait_for(mic.next_chunk(), 10)
        assert mic.status().healthy


async def test_a_speaker_kept_open_across_a_sound_server_restart_opens_afresh(
    private_pulse: PulseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between two answers the speaker's stream stays open; the sound server that held it
    # may restart meanwhile (a crash, an update). The next answer must not fail for it.
    server = private_pulse
    loop = asyncio.get_running_loop()
    with open_audio(
        settings(monkeypatch, APPLIANCE_VOLUME="100"), service_input_rate=RATE, loop=loop
    ) as audio:
        speaker, portaudio = audio.speaker, audio.portaudio
        assert portaudio is not None
        speaker.start()
        start = server.recording.position
        assert await heard_in_full(noise(0.3, seed=31), speaker, server.recording, start) > 0.999
        speaker.stop(keep_open=True)
        assert portaudio.open_streams == 1
        server.kill()
        server.start()
        start = server.recording.position
        speaker.start()
        assert portaudio.open_streams == 1  # the dead stream closed, a fresh one open
        answer = noise(0.5, seed=32)
        assert await heard_in_full(answer, speaker, server.recording, start) > 0.999
        assert speaker.status().healthy


@contextlib.contextmanager
def audio_waiting_at_most(call_timeout_s: float) -> Iterator[tuple[PortAudio, Audio]]:
    """Audio on a PortAudio of its own that waits ``call_timeout_s`` for a call (on a loop)."""
    loop = asyncio.get_running_loop()
    with (
        PortAudio(call_timeout_s=call_timeout_s) as portaudio,
        open_audio(
            AudioSettings(), service_input_rate=RATE, loop=loop, portaudio=portaudio
        ) as audio,
    ):
        yield portaudio, audio


async def stalled(*streams: Microphone | Speaker, within_s: float = 10) -> None:
    """Until every stream has gone without a period for longer than the stall limit."""
    async with asyncio.timeout(within_s):
        while any(stream.status().healthy for stream in streams):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def answering_again(portaudio: PortAudio, within_s: float = 10) -> None:
    """Until the call PortAudio gave up on has returned (nothing signals it: polled)."""
    async with asyncio.timeout(within_s):
        while portaudio.hung is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_hung_sound_server_never_hangs_the_loop_and_audio_comes_back(
    private_pulse: PulseServer,
) -> None:
    # A stopped (or deadlocked) sound server makes the ALSA pulse plugin wait for ever in
    # whatever PortAudio call is running: opening a stream, starting it, closing it.
    server = private_pulse
    with audio_waiting_at_most(1.0) as (portaudio, audio):
        mic, speaker = audio.mic, audio.speaker
        mic.start()
        await asyncio.wait_for(mic.next_chunk(), 10)
        speaker.start()
        with server.hung():
            started = time.monotonic()
            mic.stop()  # its device thread is stuck in a read: the close waits for it
            speaker.stop()
            with pytest.raises(SoundServerHung) as caught:
                mic.start()
            assert "closing an audio stream has not returned" in str(caught.value)
            # Bounded: the one call that hung was given up after call_timeout_s, and
            # nothing waits for it again.
            assert time.monotonic() - started < 4
            assert portaudio.hung_s >= 1.0
            assert portaudio.open_streams == 2
        # Once the server answers, the closes that waited run, and audio works again.
        await answering_again(portaudio)
        assert portaudio.open_streams == 0
        assert portaudio.hung_s == 0
        mic.start()
        speaker.start()
        for _ in range(3):
            await asyncio.wait_for(mic.next_chunk(), 10)
        assert mic.status().healthy
        assert speaker.status().healthy
        mic.stop()
        with server.hung():
            # An open that hangs is given up on as well; the stream it makes late is
            # closed, not leaked.
            with pytest.raises(SoundServerHung, match="opening an audio stream"):
                mic.start()
            assert not mic.started
        await answering_again(portaudio)
        assert portaudio.open_streams == 1  # the speaker's
        mic.start()
        await asyncio.wait_for(mic.next_chunk(), 10)


async def test_a_stream_stuck_in_a_hung_server_is_given_up_without_waiting_for_the_timeout(
    private_pulse: PulseServer,
) -> None:
    # Closing a stream waits for its device thread; one stuck in a read from a stopped
    # server would hold the loop for the whole call timeout. It is seen stuck sooner.
    server = private_pulse
    with audio_waiting_at_most(120) as (portaudio, audio):
        mic, speaker = audio.mic, audio.speaker
        mic.start()
        speaker.start()
        await asyncio.wait_for(mic.next_chunk(), 10)
        with server.hung():
            # As the appliance does: it closes the streams once they have stalled. A device
            # thread that has not come back for that long is stuck in PortAudio. Closing at
            # once could find it out of PortAudio, between two periods; the close then calls
            # into the stopped server, and the call bound is all that limits it.
            await stalled(mic, speaker)
            started = time.monotonic()
            mic.stop()
            speaker.stop()
            assert time.monotonic() - started < 60  # STUCK_S each, not 120 s
            assert portaudio.hung is not None
            with pytest.raises(SoundServerHung):
                speaker.start()
            # Hung past the limit: the watchdog's probe fails, so systemd restarts us.
            hung_for = portaudio.hung_s
            assert sound_server_probe(portaudio, limit_s=hung_for + 3600)() is None
            failing = sound_server_probe(portaudio, limit_s=hung_for / 2)()
            assert failing is not None
            assert "closing an audio stream has not returned" in failing
        await answering_again(portaudio)
        assert sound_server_probe(portaudio, limit_s=0)() is None
        assert portaudio.open_streams == 0
        mic.start()
        speaker.start()
        await asyncio.wait_for(mic.next_chunk(), 10)
        assert speaker.status().healthy


def test_appliance_devices_lists_devices_and_rates(pulse: PulseServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "devices"],
        env={**pulse.client_env(), "APPLIANCE_OUTPUT_DEVICE": "pulse"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout
    assert "24000" in result.stdout
    assert "APPLIANCE_INPUT_DEVICE: (empty: the system default) -> [" in result.stdout
    assert "APPLIANCE_OUTPUT_DEVICE: 'pulse' -> [" in result.stdout
    assert "ALSA lib" not in result.stdout + result.stderr


async def test_a_remembered_device_that_no_longer_opens_is_chosen_afresh(
    audio: Audio, pulse: PulseServer
) -> None:
    # Streams reopen with the device and rate they last opened with, without probing the
    # device again; when that fails (the device changed since), the choice is made afresh.
    speaker, recording = audio.speaker, pulse.recording
    speaker.start()
    speaker.stop()
    output = speaker._device
    assert isinstance(output, PyAudioOutput)
    assert output._chosen is not None
    generation, device, _, channels = output._chosen
    output._chosen = (generation, device, 1, channels)  # a rate no device accepts
    start = recording.position
    speaker.start()
    assert speaker.format is not None
    assert speaker.format.rate == RATE
    assert await heard_in_full(noise(0.5, seed=5), speaker, recording, start) > 0.999
    assert output._chosen[2] == RATE


def _mapped(library: str) -> bool:
    return any(library in line for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.skipif(
    not list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_a52.so")),
    reason="libasound2-plugins' a52 PCM is not installed: there is nothing to unload",
)
async def test_the_plugins_portaudio_lists_devices_with_are_unloaded_again(
    audio: Audio, pulse: PulseServer
) -> None:
    # PortAudio opens every PCM ALSA defines to list devices; the a52 one loads libavcodec
    # (about 10 MiB with its kin). ALSA would keep it for good; the session lets it go, and
    # the streams still work: they load only the plugin they use.
    assert audio.portaudio is not None
    assert audio.portaudio.devices()  # the session is up: the listing has happened
    assert not _mapped("libasound_module_pcm_a52")
    assert not _mapped("libavcodec")
    speaker, recording = audio.speaker, pulse.recording
    start = recording.position
    speaker.start()
    assert await heard_in_full(noise(0.5, seed=11), speaker, recording, start) > 0.999
    assert _mapped("libasound_module_pcm_pulse")


async def test_a_shared_portaudio_outlives_the_audio_built_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The runtime keeps one PortAudio for the process: a reload rebuilds the audio on it
    # without listing the devices again.
    loop = asyncio.get_running_loop()
    with PortAudio() as portaudio:
        portaudio.warm_up()
        generation = portaudio.generation
        for _ in range(2):
            with open_audio(
                settings(monkeypatch), service_input_rate=RATE, loop=loop, portaudio=portaudio
            ) as audio:
                audio.mic.start()
                await asyncio.wait_for(audio.mic.next_chunk(), 10)
        assert portaudio.generation == generation
        assert portaudio.devices()  # still open
