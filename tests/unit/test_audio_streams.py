"""Microphone and Speaker logic, with the device's periods driven by the test.

The device here is a hand-cranked stand-in that calls the very callbacks PortAudio calls
(``Speaker._render`` / ``Microphone._capture``), one period per :meth:`period` call, so
the bookkeeping (played time, drained, underruns, overflow) is checked sample-exactly.
The same behaviours on real PyAudio streams are in tests/integration/test_audio_pulse.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from appliance.audio import Earcon, Microphone, Speaker, StreamFormat, earcon
from appliance.audio.resample import volume_to_gain
from appliance.audio.ring import Pcm, Samples
from appliance.audio.streams import NOT_YET, Failed, Render
from appliance.errors import AudioDeviceError

RATE = 24000
PERIOD = 480  # 20 ms


def tone(frequency: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def ramp(count: int, start: int = 0) -> Samples:
    return (np.arange(start, start + count) % 30000 + 1).astype(np.int16)


def dominant_frequency(samples: Samples, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


class CrankedOutput:
    """An output device whose periods happen when the test calls :meth:`period`."""

    description = "cranked output"

    def __init__(self, rate: int = RATE, channels: int = 1, period: int = PERIOD) -> None:
        self.format = StreamFormat(rate, channels, period)
        self.render: Render | None = None
        self.ready = 0  # what the last period's render said was ready from it on
        self.running = False
        self.fail_open: str | None = None
        self.failed: str | None = None
        self.on_failure: Failed | None = None
        self.sound_arrivals: list[int] = []  # what sound_arrived() was told, in order
        self.more_arrivals: list[int] = []  # the same, for sound behind sound (not silence)

    def open(self, render: Render, on_failure: Failed) -> StreamFormat:
        if self.fail_open:
            raise AudioDeviceError(self.fail_open)
        self.render, self.on_failure = render, on_failure
        self.failed = None
        return self.format

    def start(self) -> None:
        self.running = True

    def sound_arrived(self, samples: int, *, after_silence: bool = True) -> None:
        (self.sound_arrivals if after_silence else self.more_arrivals).append(samples)

    def drop_buffered(self) -> int:
        return 0  # it holds nothing: each period is taken when the test cranks it

    @property
    def buffer_frames(self) -> int:
        return 0

    def stop(self, *, keep_open: bool = False) -> None:
        self.running = False

    def failure(self) -> str | None:
        return self.failed

    def fail(self, why: str) -> None:
        """The device's own thread finds the stream broken, as a PortAudio error would."""
        fail_on_a_device_thread(self, why)

    def close(self) -> None:
        self.stop()

    def period(self, *, can_wait: bool = False) -> Samples:
        assert self.render is not None
        assert self.running
        out = np.full(self.format.period_frames * self.format.channels, 12345, dtype=np.int16)
        self.ready = self.render(out, can_wait)
        return out.copy()

    def periods(self, count: int) -> Samples:
        return np.concatenate([self.period() for _ in range(count)])


class CrankedInput:
    """An input device whose periods are pushed by the test.

    It hands the microphone each period's bytes, as PortAudio does, or (``as_bytes=False``)
    an array, as a WAV file input does.
    """

    description = "cranked input"

    def __init__(
        self, rate: int = RATE, channels: int = 1, period: int = PERIOD, *, as_bytes: bool = True
    ) -> None:
        self.format = StreamFormat(rate, channels, period)
        self.as_bytes = as_bytes
        self.capture: Callable[[Pcm], None] | None = None
        self.running = False
        self.failed: str | None = None
        self.on_failure: Failed | None = None

    def open(self, capture: Callable[[Pcm], None], on_failure: Failed) -> StreamFormat:
        self.capture, self.on_failure = capture, on_failure
        self.failed = None
        return self.format

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def failure(self) -> str | None:
        return self.failed

    def fail(self, why: str) -> None:
        fail_on_a_device_thread(self, why)

    def close(self) -> None:
        self.stop()

    def push(self, samples: Samples) -> None:
        assert self.capture is not None
        assert self.running
        step = self.format.period_frames * self.format.channels
        for start in range(0, len(samples), step):
            period = samples[start : start + step]
            self.capture(period.tobytes() if self.as_bytes else period)


def fail_on_a_device_thread(device: CrankedInput | CrankedOutput, why: str) -> None:
    def fail() -> None:
        device.failed, device.running = why, False
        assert device.on_failure is not None
        device.on_failure()

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()


async def settle() -> None:
    """Let the loop run what the device side scheduled with call_soon_threadsafe."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
def output() -> CrankedOutput:
    return CrankedOutput()


@pytest.fixture
async def speaker(output: CrankedOutput):
    speaker = Speaker(output, loop=asyncio.get_running_loop(), volume=100, buffer_s=0.5)
    speaker.start()
    yield speaker
    speaker.close()


# ---- speaker ------------------------------------------------------------------------------


async def test_plays_queued_audio_in_order_then_silence(
    speaker: Speaker, output: CrankedOutput
) -> None:
    audio = ramp(1000)
    speaker.play(audio.tobytes(), "item")
    played = output.periods(3)
    assert list(played[:1000]) == list(audio)
    assert not played[1000:].any()


async def test_each_period_tells_the_device_how_much_sound_is_ready_from_it_on(
    speaker: Speaker, output: CrankedOutput
) -> None:
    # A device with a buffer (see PyAudioOutput) uses this to tell when it holds only silence.
    output.period()
    assert output.ready == 0
    speaker.play(ramp(1000), "item")
    readiness = []
    for _ in range(4):
        output.period()
        readiness.append(output.ready)
    assert readiness == [1000, 1000 - PERIOD, 1000 - 2 * PERIOD, 0]


async def test_the_device_hears_of_sound_that_arrives_after_silence_at_once(
    speaker: Speaker, output: CrankedOutput
) -> None:
    # A device with a buffer (see PyAudioOutput) may then skip the silence it holds now
    # rather than at its next period.
    output.period()
    speaker.play(ramp(1000), "item")
    assert output.sound_arrivals == [1000]
    # More before the device began to play it: told of all of it, which may now be enough
    # to refill the device where the first delta alone was not.
    speaker.play(ramp(500), "item")
    assert output.sound_arrivals == [1000, 1500]
    output.period()
    speaker.play(ramp(300), "item")  # behind sound being played: nothing to skip
    assert output.sound_arrivals == [1000, 1500]
    output.periods(4)  # the rest of the 1800 samples and a little silence
    speaker.play(ramp(200), "item")  # the ring ran dry: silence again before this
    assert output.sound_arrivals == [1000, 1500, 200]


async def test_a_device_that_can_wait_waits_for_the_rest_of_an_answer_not_filling_silence(
    speaker: Speaker, output: CrankedOutput
) -> None:
    # A device that still plays on for a while (see PyAudioOutput) asks with can_wait: less
    # than a period of a streaming answer is not padded with silence, nor taken.
    speaker.play(ramp(PERIOD + 100), "item")
    assert list(output.period(can_wait=True)) == list(ramp(PERIOD))
    assert output.ready == PERIOD + 100
    untouched = output.period(can_wait=True)
    assert output.ready == NOT_YET
    assert (untouched == 12345).all()  # nothing filled
    assert speaker.callbacks == 1  # and not counted as a period played
    assert speaker.underruns == 0
    speaker.play(ramp(PERIOD, start=PERIOD + 100), "item")  # the rest came in time
    assert list(output.periods(2)) == list(ramp(2 * PERIOD + 100)[PERIOD:]) + [0] * (PERIOD - 100)
    # Without can_wait (the device would run dry) the short period is played as it was
    # before: what there is, then silence, and counted as an underrun.
    assert speaker.underruns == 1


async def test_no_wait_for_more_once_the_answer_is_complete_or_between_answers(
    speaker: Speaker, output: CrankedOutput
) -> None:
    output.period(can_wait=True)
    assert output.ready == 0  # no answer streams: silence, not a wait
    speaker.play(ramp(100), "item")
    output.period(can_wait=True)
    assert output.ready == NOT_YET
    speaker.finish()  # nothing more will come: its tail plays now
    assert list(output.period(can_wait=True)) == list(ramp(100)) + [0] * (PERIOD - 100)
    assert output.ready == 100
    assert speaker.underruns == 0


async def test_the_device_hears_of_sound_behind_sound_while_it_may_wait_for_it(
    speaker: Speaker, output: CrankedOutput
) -> None:
    output.period()
    speaker.play(ramp(PERIOD + 100), "item")
    output.period()  # the device began to play it: later audio is behind sound
    assert output.more_arrivals == []
    speaker.play(ramp(50), "item")  # the ring held less than a period: the device is told
    assert output.more_arrivals == [150]
    speaker.play(ramp(PERIOD), "item")  # still less before it: told of all there is now
    assert output.more_arrivals == [150, PERIOD + 150]
    speaker.play(ramp(PERIOD), "item")  # a period's worth before it: nothing to tell
    assert output.more_arrivals == [150, PERIOD + 150]
    output.periods(2)
    speaker.finish()  # the tail a waiting device should play now
    assert output.more_arrivals == [150, PERIOD + 150, 150]  # what two periods left
    assert output.sound_arrivals == [PERIOD + 100]


async def test_never_drops_an_answer_longer_than_the_ring(
    speaker: Speaker, output: CrankedOutput
) -> None:
    answer = ramp(RATE * 5)  # 5 s into a 0.5 s ring: deltas arrive faster than real time
    for chunk in np.array_split(answer, 50):
        speaker.play(chunk, "item")
    assert speaker.queued_ms == pytest.approx(5000, abs=1)
    played = []
    for _ in range(RATE * 5 // PERIOD):
        played.append(output.period())
        await settle()  # the loop refills the ring when the device side asks
    assert list(np.concatenate(played)) == list(answer)
    assert speaker.underruns == 0


async def test_volume_scales_what_is_queued_from_then_on(
    speaker: Speaker, output: CrankedOutput
) -> None:
    speaker.volume = 50
    speaker.play(np.full(PERIOD, 20000, dtype=np.int16))
    assert output.period()[0] == round(20000 * volume_to_gain(50))
    speaker.volume = 0
    speaker.play(np.full(PERIOD, 20000, dtype=np.int16))
    assert not output.period().any()
    with pytest.raises(ValueError, match="0-100"):
        speaker.volume = 101


async def test_clear_silences_the_next_period_and_reports_what_was_heard(
    speaker: Speaker, output: CrankedOutput
) -> None:
    speaker.play(tone(440, 3.0), "item_a")
    output.periods(10)  # 200 ms handed to the device
    cut = speaker.clear()
    assert cut.item_id == "item_a"
    assert cut.played_ms == 200
    assert not output.period().any()  # the very next period is silent
    assert speaker.played_ms("item_a") == 200
    assert speaker.drained.is_set()
    speaker.play(np.full(PERIOD, 7, dtype=np.int16), "item_b")
    await settle()
    following = output.periods(2)
    assert list(following[:PERIOD]) == [7] * PERIOD
    assert speaker.played_ms("item_a") == 200
    assert speaker.played_ms("item_b") == 20


class BufferingOutput(CrankedOutput):
    """A cranked output that, like a sound card, still holds its last three periods."""

    held_periods = 3

    def drop_buffered(self) -> int:
        return self.buffer_frames

    @property
    def buffer_frames(self) -> int:
        return self.held_periods * self.format.period_frames if self.running else 0


@pytest.mark.parametrize(
    ("sound_periods", "silent_periods", "played_ms"),
    [
        (10, 0, 140),  # three periods of sound were still in the device: not heard
        (10, 1, 160),  # one of the three held periods was silence after the sound ran out
        (2, 5, 40),  # the device held only silence: all of the sound was heard
    ],
)
async def test_clear_takes_back_only_the_sound_the_device_still_held(
    sound_periods: int, silent_periods: int, played_ms: int
) -> None:
    output = BufferingOutput()
    with Speaker(output, loop=asyncio.get_running_loop(), volume=100) as speaker:
        speaker.start()
        speaker.play(ramp(sound_periods * PERIOD), "item")
        output.periods(sound_periods + silent_periods)
        cut = speaker.clear()
        assert cut.played_ms == played_ms
        assert speaker.played_ms("item") == played_ms


async def test_played_ms_counts_only_what_the_device_was_handed(
    speaker: Speaker, output: CrankedOutput
) -> None:
    speaker.play(ramp(RATE), "first")
    speaker.play(ramp(RATE // 2), "second")
    for _ in range(60):  # 1.2 s
        output.period()
        await settle()
    assert speaker.played_ms("first") == 1000
    assert speaker.played_ms("second") == 200
    assert speaker.played_ms("unknown") == 0


async def test_finish_notifies_once_when_the_last_sample_was_handed(
    speaker: Speaker, output: CrankedOutput
) -> None:
    drained: list[float] = []
    speaker.on_drained = lambda: drained.append(time.monotonic())
    speaker.play(ramp(PERIOD * 3 + 100), "item")
    speaker.finish()
    assert not speaker.drained.is_set()
    output.periods(3)
    await settle()
    assert not drained  # 100 samples are still waiting
    output.period()
    await settle()
    assert len(drained) == 1
    assert speaker.drained.is_set()
    output.periods(5)
    await settle()
    assert len(drained) == 1


async def test_finish_notifies_once_a_buffering_device_has_played_the_last_sample() -> None:
    # Handed is not heard: the device still holds three periods ahead of what it plays.
    output = BufferingOutput()
    with Speaker(output, loop=asyncio.get_running_loop(), volume=100) as speaker:
        drained: list[int] = []
        speaker.on_drained = lambda: drained.append(speaker.callbacks)
        speaker.start()
        speaker.play(ramp(PERIOD * 2 + 100), "item")
        speaker.finish()
        for _ in range(3):  # the last sample handed in the third
            output.period()
            await settle()
        assert not drained
        assert not speaker.drained.is_set()
        for _ in range(3):  # three more: the device has played what it held before them
            output.period()
            await settle()
        assert drained == [6]
        assert speaker.drained.is_set()
        output.periods(5)
        await settle()
        assert drained == [6]


async def test_finish_after_the_device_played_the_sound_notifies_at_once() -> None:
    output = BufferingOutput()
    with Speaker(output, loop=asyncio.get_running_loop(), volume=100) as speaker:
        drained: list[int] = []
        speaker.on_drained = lambda: drained.append(speaker.callbacks)
        speaker.start()
        speaker.play(ramp(PERIOD), "item")
        output.periods(5)  # one of sound, four of silence after it
        speaker.finish()
        await settle()
        assert drained == [5]


async def test_finish_with_nothing_queued_notifies_at_once(speaker: Speaker) -> None:
    calls = []
    speaker.on_drained = lambda: calls.append(1)
    speaker.finish()
    await settle()
    assert calls == [1]


async def test_more_audio_after_finish_postpones_the_notification(
    speaker: Speaker, output: CrankedOutput
) -> None:
    calls = []
    speaker.on_drained = lambda: calls.append(1)
    speaker.play(ramp(PERIOD), "item")
    speaker.finish()
    speaker.play(ramp(PERIOD), "item")  # the answer went on after all
    output.periods(3)
    await settle()
    assert calls == []
    speaker.finish()
    await settle()
    assert calls == [1]


async def test_an_earcon_after_finish_does_not_postpone_the_end_of_the_answer(
    speaker: Speaker, output: CrankedOutput
) -> None:
    calls = []
    speaker.on_drained = lambda: calls.append(1)
    speaker.play(ramp(PERIOD), "item")
    speaker.finish()
    speaker.play_earcon(Earcon.ENDED)
    output.period()
    await settle()
    assert calls == [1]


async def test_underruns_count_only_while_an_answer_streams(
    speaker: Speaker, output: CrankedOutput
) -> None:
    output.periods(3)  # idle: silence is not an underrun
    assert speaker.underruns == 0
    speaker.play(ramp(PERIOD // 2), "item")
    output.period()  # ran dry mid-period while the answer is still arriving
    assert speaker.underruns == 1
    speaker.finish()
    output.periods(3)
    assert speaker.underruns == 1
    speaker.play_earcon(Earcon.LISTENING)
    output.periods(20)
    assert speaker.underruns == 1


async def test_earcons_play_through_the_speaker_at_its_volume(
    speaker: Speaker, output: CrankedOutput
) -> None:
    speaker.volume = 80
    speaker.play_earcon("listening")
    sound = earcon(Earcon.LISTENING)
    played = output.periods(len(sound) // PERIOD + 1)[: len(sound)]
    expected = np.rint(sound * volume_to_gain(80))
    assert np.max(np.abs(played - expected)) <= 1


async def test_audio_queued_before_start_plays_when_started(output: CrankedOutput) -> None:
    speaker = Speaker(output, loop=asyncio.get_running_loop(), volume=100)
    with speaker:
        speaker.play(ramp(100), "item")
        speaker.start()
        assert list(output.period()[:100]) == list(ramp(100))


async def test_stop_drops_what_was_queued(speaker: Speaker, output: CrankedOutput) -> None:
    speaker.play(ramp(RATE), "item")
    speaker.finish()
    output.period()
    speaker.stop()
    assert speaker.drained.is_set()
    speaker.start()
    assert not output.period().any()


async def test_a_device_error_on_start_is_raised_and_can_be_retried(
    output: CrankedOutput,
) -> None:
    speaker = Speaker(output, loop=asyncio.get_running_loop())
    output.fail_open = "no such device"
    with pytest.raises(AudioDeviceError, match="no such device"):
        speaker.start()
    assert not speaker.status().started
    output.fail_open = None
    speaker.start()
    assert speaker.status().started
    speaker.close()
    speaker.close()  # idempotent
    with pytest.raises(AudioDeviceError, match="closed"):
        speaker.start()


async def test_resamples_to_the_device_rate_keeping_the_pitch() -> None:
    output = CrankedOutput(rate=48000, period=960)
    with Speaker(output, loop=asyncio.get_running_loop(), volume=100) as speaker:
        speaker.start()
        speaker.play(tone(1000, 1.0), "item")
        speaker.finish()
        played = []
        for _ in range(60):
            played.append(output.period())
            await settle()
        audio = np.concatenate(played)
        assert speaker.drained.is_set()
        sounding = np.flatnonzero(audio)
        assert sounding[-1] - sounding[0] + 1 == pytest.approx(48000, abs=48)
        assert dominant_frequency(audio[4800:43200], 48000) == pytest.approx(1000, abs=3)
        assert speaker.played_ms("item") == pytest.approx(1000, abs=5)


async def test_a_stereo_device_gets_the_mono_audio_on_both_channels() -> None:
    output = CrankedOutput(channels=2)
    with Speaker(output, loop=asyncio.get_running_loop(), volume=100) as speaker:
        speaker.start()
        speaker.play(ramp(PERIOD), "item")
        frames = output.period().reshape(-1, 2)
        assert list(frames[:, 0]) == list(ramp(PERIOD))
        assert list(frames[:, 1]) == list(ramp(PERIOD))
        assert speaker.played_ms("item") == 20


async def test_latency_marks_find_when_a_chunk_reached_the_device(
    speaker: Speaker, output: CrankedOutput
) -> None:
    output.periods(2)
    first = speaker.play(ramp(PERIOD), "item")
    second = speaker.play(ramp(PERIOD), "item")
    before = time.monotonic_ns()
    output.period()
    handed_first = speaker.handed_ns(first)
    assert handed_first is not None
    assert handed_first >= before
    assert speaker.handed_ns(second) is None  # not played yet
    output.period()
    handed_second = speaker.handed_ns(second)
    assert handed_second is not None
    assert handed_second > handed_first
    cleared = time.monotonic_ns()
    speaker.clear()
    output.period()
    silent = speaker.first_render_after_ns(cleared)
    assert silent is not None
    assert silent > cleared
    log = speaker.render_log()
    assert log.shape == (5, 3)
    assert list(log[-1, :2]) == [log[-2, 0] + 0, 0]  # no audio in the last period


async def test_status_reports_liveness(speaker: Speaker, output: CrankedOutput) -> None:
    status = speaker.status()
    assert status.started
    assert status.healthy
    assert status.callbacks == 0
    output.periods(3)
    status = speaker.status()
    assert status.callbacks == 3
    assert status.last_callback_ns > 0
    assert status.rate == RATE
    assert status.period_ms == 20


async def test_a_device_that_fails_is_reported_on_the_loop_at_once(
    speaker: Speaker, output: CrankedOutput
) -> None:
    reported = asyncio.Event()
    failures: list[str | None] = []

    def on_failure() -> None:
        failures.append(speaker.status().failure)
        reported.set()

    speaker.on_failure = on_failure
    output.periods(3)
    output.fail("cranked output failed: unplugged")
    await asyncio.wait_for(reported.wait(), 5)
    assert failures == ["cranked output failed: unplugged"]


async def test_a_failure_that_comes_after_the_stop_is_not_reported(
    mic: Microphone, mic_input: CrankedInput
) -> None:
    # The device thread may fail just as the loop stops the stream: stopped is stopped.
    failures: list[str | None] = []
    mic.on_failure = lambda: failures.append(mic.status().failure)
    mic_input.fail("cranked input failed")
    mic.stop()
    await settle()
    assert failures == []
    mic.start()
    mic_input.fail("cranked input failed again")
    await settle()
    assert failures == ["cranked input failed again"]


def retained_bytes(call: Callable[[], object], count: int) -> int:
    """Bytes still allocated by the callback path after ``count`` calls (after a warm-up).

    Only blocks allocated in the files the callbacks run through, on a stack that passes
    through this test file, are counted: other threads of the test process (fixtures, a
    PortAudio callback of an earlier test's stream still closing) cannot blur the figure.
    """
    ours = [
        tracemalloc.Filter(True, "*/appliance/audio/streams.py"),
        tracemalloc.Filter(True, "*/appliance/audio/ring.py"),
    ]
    this_test = [tracemalloc.Filter(True, __file__, all_frames=True)]

    def snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(this_test).filter_traces(ours)

    tracemalloc.start(32)
    try:
        for _ in range(1000):
            call()
        gc.collect()  # garbage waiting for the collector is not memory kept
        before = snapshot()
        for _ in range(count):
            call()
        gc.collect()
        after = snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


async def test_the_speaker_callback_keeps_no_memory(
    speaker: Speaker, output: CrankedOutput
) -> None:
    speaker.play(tone(440, 30.0), "item")  # more than the ring: the loop refills it
    buffer = np.zeros(PERIOD, dtype=np.int16)
    assert output.render is not None
    render = output.render
    assert retained_bytes(lambda: render(buffer), 2000) == 0


# ---- microphone ---------------------------------------------------------------------------


@pytest.fixture(params=["bytes", "array"])
def mic_input(request: pytest.FixtureRequest) -> CrankedInput:
    """Every microphone test runs on both forms a device hands its periods in."""
    return CrankedInput(as_bytes=request.param == "bytes")


@pytest.fixture
async def mic(mic_input: CrankedInput):
    mic = Microphone(mic_input, loop=asyncio.get_running_loop(), service_rate=RATE, buffer_s=1.0)
    mic.start()
    yield mic
    mic.close()


async def test_reads_what_was_captured(mic: Microphone, mic_input: CrankedInput) -> None:
    audio = ramp(PERIOD * 5)
    mic_input.push(audio)
    assert list(mic.read()) == list(audio)
    assert len(mic.read()) == 0


async def test_wakes_the_loop_when_audio_arrives(mic: Microphone, mic_input: CrankedInput) -> None:
    woken = []
    mic.on_audio = lambda: woken.append(1)
    waiting = asyncio.ensure_future(mic.next_chunk())
    await settle()
    assert not waiting.done()
    mic_input.push(ramp(PERIOD))
    chunk = await asyncio.wait_for(waiting, 5)
    assert list(chunk) == list(ramp(PERIOD))
    assert woken == [1]


async def test_gain_and_level(mic: Microphone, mic_input: CrankedInput) -> None:
    mic.gain_db = 6.0206  # x2
    mic_input.push(np.full(PERIOD, 1000, dtype=np.int16))
    assert set(mic.read()) == {2000}
    assert mic.level.peak == pytest.approx(2000 / 32768, rel=1e-3)
    mic_input.push(np.full(PERIOD, 30000, dtype=np.int16))
    assert set(mic.read()) == {32767}  # clipped, not wrapped around


async def test_muted_sends_silence_but_still_measures(
    mic: Microphone, mic_input: CrankedInput
) -> None:
    mic.muted = True
    mic_input.push(np.full(PERIOD, 1000, dtype=np.int16))
    chunk = mic.read()
    assert len(chunk) == PERIOD
    assert not chunk.any()
    assert mic.level.rms > 0


async def test_a_slow_reader_loses_the_oldest_audio_and_it_is_counted(
    mic: Microphone, mic_input: CrankedInput
) -> None:
    audio = ramp(RATE * 3)  # 3 s into a 1 s ring
    mic_input.push(audio)
    assert list(mic.read()) == list(audio[-RATE:])
    assert mic.dropped_ms == pytest.approx(2000)
    assert mic.overruns == 100  # every period after the first second pushed audio out


async def test_audio_stays_readable_after_stop_until_the_next_start(
    mic: Microphone, mic_input: CrankedInput
) -> None:
    mic_input.push(ramp(PERIOD))
    mic.stop()
    assert len(mic.read()) == PERIOD
    mic_input.running = True
    mic_input.push(ramp(PERIOD))
    mic.start()
    assert len(mic.read()) == 0  # a new conversation hears nothing of the old one


async def test_resamples_a_48k_device_to_the_service_rate() -> None:
    device = CrankedInput(rate=48000, period=960)
    with Microphone(device, loop=asyncio.get_running_loop(), service_rate=16000) as mic:
        mic.start()
        device.push(tone(440, 1.0, rate=48000))
        audio = mic.read()
        assert 16000 * 0.9 < len(audio) < 16000  # the filter holds back a few ms...
        assert dominant_frequency(audio, 16000) == pytest.approx(440, abs=2)
        mic.stop()
        tail = mic.read()  # ...which come out once the microphone stops
        assert len(audio) + len(tail) == pytest.approx(16000, abs=2)
        assert np.abs(tail[:40]).max() > 1000
        assert len(mic.read()) == 0


async def test_a_stereo_device_is_mixed_down() -> None:
    device = CrankedInput(channels=2)
    with Microphone(device, loop=asyncio.get_running_loop(), service_rate=RATE) as mic:
        mic.start()
        left = np.full(PERIOD, 1000, dtype=np.int16)
        right = np.full(PERIOD, 3000, dtype=np.int16)
        device.push(np.column_stack([left, right]).reshape(-1))
        assert set(mic.read()) == {2000}


async def test_the_microphone_callback_keeps_no_memory(
    mic: Microphone, mic_input: CrankedInput
) -> None:
    frame: Pcm = ramp(PERIOD).tobytes() if mic_input.as_bytes else ramp(PERIOD)
    assert mic_input.capture is not None
    capture = mic_input.capture

    def period() -> None:
        capture(frame)
        if mic.callbacks % 25 == 0:
            mic.read()

    assert retained_bytes(period, 2000) == 0


# ---- microphone: longer chunks while it hears no one -------------------------------------

QUIET = np.zeros(PERIOD, dtype=np.int16)
SOUND = tone(440, PERIOD / RATE, amplitude=0.1)  # -20 dBFS: someone speaking


def batching_microphone(device: CrankedInput, *, sound_hold_ms: float = 40) -> Microphone:
    """Chunks of one 20 ms period, of five while quiet, kept short for a while after sound."""
    return Microphone(
        device,
        loop=asyncio.get_running_loop(),
        service_rate=RATE,
        buffer_s=1.0,
        chunk_ms=20,
        quiet_chunk_ms=100,
        sound_hold_ms=sound_hold_ms,
    )


@pytest.fixture
async def batching_mic(mic_input: CrankedInput):
    """Short chunks kept for two periods after sound."""
    mic = batching_microphone(mic_input)
    mic.start()
    yield mic
    mic.close()


async def chunks_woken(mic: Microphone, device: CrankedInput, periods: list[Samples]) -> list[int]:
    """Push the periods one by one, as time would; the size of each chunk the loop woke for."""
    chunks: list[int] = []
    mic.on_audio = lambda: chunks.append(len(mic.read()))
    for period in periods:
        device.push(period)
        await settle()
    return chunks


async def test_a_quiet_microphone_wakes_the_loop_once_per_quiet_chunk(
    batching_mic: Microphone, mic_input: CrankedInput
) -> None:
    chunks = await chunks_woken(batching_mic, mic_input, [QUIET] * 12)
    # The two periods after the start count as after sound: a press's first audio leaves
    # at once. Then five periods at a time.
    assert chunks == [PERIOD, PERIOD, 5 * PERIOD, 5 * PERIOD]


async def test_sound_wakes_the_loop_at_once_and_short_chunks_follow_it(
    batching_mic: Microphone, mic_input: CrankedInput
) -> None:
    await chunks_woken(batching_mic, mic_input, [QUIET] * 2)  # the start's short chunks
    periods = [QUIET] * 3 + [SOUND] + [QUIET] * 2 + [QUIET] * 5 + [SOUND, SOUND]
    captured = np.concatenate(periods)
    received: list[Samples] = []

    def woken() -> None:
        received.append(batching_mic.read())

    batching_mic.on_audio = woken
    for period in periods:
        mic_input.push(period)
        await settle()
    # The quiet audio waiting goes along with the sound; then one period at a time until
    # the hold after the sound ends; then the quiet chunk; sound again at once.
    sizes = [len(chunk) for chunk in received]
    assert sizes == [4 * PERIOD, PERIOD, PERIOD, 5 * PERIOD, PERIOD, PERIOD]
    assert np.array_equal(np.concatenate(received), captured)  # when, never what


async def test_the_end_of_the_turn_ends_the_short_chunks_at_once(
    mic_input: CrankedInput,
) -> None:
    with batching_microphone(mic_input, sound_hold_ms=400) as mic:
        mic.start()
        # Sound, then quiet: the short chunks stay on, for up to 20 periods here.
        assert await chunks_woken(mic, mic_input, [SOUND] + [QUIET] * 3) == [PERIOD] * 4
        mic.turn_ended()  # speech_stopped: the silence that ended the turn got there
        assert await chunks_woken(mic, mic_input, [QUIET] * 5) == [5 * PERIOD]
        # Sound after the end of the turn (the user goes on): short chunks again, held.
        chunks = await chunks_woken(mic, mic_input, [QUIET, SOUND] + [QUIET] * 3)
        assert chunks == [2 * PERIOD] + [PERIOD] * 3


async def test_a_turn_that_ended_before_the_start_does_not_end_its_short_chunks(
    mic_input: CrankedInput,
) -> None:
    with batching_microphone(mic_input, sound_hold_ms=60) as mic:
        mic.start()
        await chunks_woken(mic, mic_input, [SOUND])
        mic.stop()
        mic.read()
        mic.turn_ended()  # late, for the audio before the stop
        mic.start()  # a press: its first audio leaves at once all the same
        assert await chunks_woken(mic, mic_input, [QUIET] * 8) == [PERIOD] * 3 + [5 * PERIOD]


async def test_whether_a_period_is_quiet_is_judged_after_the_gain(
    batching_mic: Microphone, mic_input: CrankedInput
) -> None:
    await chunks_woken(batching_mic, mic_input, [QUIET] * 2)
    faint = tone(440, PERIOD / RATE, amplitude=10 ** (-50 / 20))  # -50 dBFS
    assert await chunks_woken(batching_mic, mic_input, [faint] * 4) == []
    batching_mic.gain_db = 20  # -30 dBFS at the service: someone there
    assert await chunks_woken(batching_mic, mic_input, [faint]) == [5 * PERIOD]


async def test_a_dc_offset_is_not_sound(batching_mic: Microphone, mic_input: CrankedInput) -> None:
    await chunks_woken(batching_mic, mic_input, [QUIET] * 2)
    offset = np.full(PERIOD, -12000, dtype=np.int16)
    assert await chunks_woken(batching_mic, mic_input, [offset] * 5) == [5 * PERIOD]


async def test_quiet_chunks_no_longer_than_the_chunks_change_nothing(
    mic_input: CrankedInput,
) -> None:
    loop = asyncio.get_running_loop()
    with Microphone(
        mic_input, loop=loop, service_rate=RATE, chunk_ms=40, quiet_chunk_ms=20, sound_hold_ms=0
    ) as mic:
        mic.start()
        chunks = await chunks_woken(mic, mic_input, [QUIET] * 6)
    assert chunks == [2 * PERIOD] * 3


async def test_the_microphone_callback_keeps_no_memory_with_quiet_chunks(
    batching_mic: Microphone, mic_input: CrankedInput
) -> None:
    assert mic_input.capture is not None
    capture = mic_input.capture
    sound, quiet = (SOUND.tobytes(), QUIET.tobytes()) if mic_input.as_bytes else (SOUND, QUIET)

    def period() -> None:
        capture(sound if batching_mic.callbacks % 40 == 0 else quiet)
        if batching_mic.callbacks % 25 == 0:
            batching_mic.read()

    assert retained_bytes(period, 2000) == 0
