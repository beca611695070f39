"""Energy VAD on audio time, and the emulator's audio formats."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from appliance.emulator.audio import AudioFormat, resample, tone
from appliance.emulator.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    VadSettings,
    threshold_level,
)

RATE = 24000


def loud(ms: int, amplitude: int = 8000) -> np.ndarray[Any, np.dtype[np.int16]]:
    t = np.arange(ms * RATE // 1000) / RATE
    samples: np.ndarray[Any, np.dtype[np.int16]] = np.rint(
        amplitude * np.sin(2 * math.pi * 220 * t)
    ).astype(np.int16)
    return samples


def quiet(ms: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.zeros(ms * RATE // 1000, dtype=np.int16)


def test_one_turn_in_samples() -> None:
    vad = EnergyVad(VadSettings(prefix_padding_ms=300, silence_duration_ms=500), RATE)
    events = vad.feed(np.concatenate([quiet(1000), loud(1000), quiet(600)]))
    assert events == [
        SpeechStarted(start_sample=700 * 24, detected_sample=1010 * 24),
        SpeechStopped(end_sample=2500 * 24),
    ]
    assert not vad.in_speech


def test_padding_never_reaches_before_the_origin() -> None:
    vad = EnergyVad(VadSettings(prefix_padding_ms=300), RATE)
    vad.reset(48000)
    [started] = vad.feed(loud(100))
    assert isinstance(started, SpeechStarted)
    assert started.start_sample == 48000


def test_speech_duration_ignores_short_clicks() -> None:
    vad = EnergyVad(VadSettings(speech_duration_ms=100, prefix_padding_ms=0), RATE)
    assert vad.feed(np.concatenate([loud(50), quiet(200)])) == []
    [started] = vad.feed(loud(150))
    assert isinstance(started, SpeechStarted)
    assert started.start_sample == 250 * 24  # where the long enough run began


def test_threshold_maps_onto_dbfs() -> None:
    assert math.isclose(20 * math.log10(threshold_level(0.5) / 32768), -35)
    assert threshold_level(0.0) < threshold_level(0.5) < threshold_level(1.0)


@given(cuts=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=30))
def test_chunking_never_changes_the_events(cuts: list[int]) -> None:
    audio = np.concatenate([quiet(300), loud(700), quiet(200), loud(300), quiet(800), loud(90)])
    whole = EnergyVad(VadSettings(), RATE).feed(audio)
    vad = EnergyVad(VadSettings(), RATE)
    events = []
    start = 0
    for cut in [*cuts, audio.size]:
        events += vad.feed(audio[start : start + cut])
        start += cut
        if start >= audio.size:
            break
    events += vad.feed(audio[start:])
    assert events == whole


def test_g711_round_trips_its_own_values() -> None:
    for encoding in ("g711_ulaw", "g711_alaw"):
        fmt = AudioFormat(encoding, 8000)
        every_code = bytes(range(256))
        decoded = fmt.decode(every_code)
        assert fmt.decode(fmt.encode(decoded)).tolist() == decoded.tolist()
        # Near values encode to a close code: the error stays within a quantisation step.
        ramp = np.linspace(-30000, 30000, 1000).astype(np.int16)
        error = np.abs(fmt.decode(fmt.encode(ramp)).astype(int) - ramp.astype(int))
        assert error.max() <= 1100


def test_pcm16_decode_ignores_a_trailing_odd_byte() -> None:
    assert AudioFormat("pcm16", RATE).decode(b"\x01\x00\x02").tolist() == [1]


def test_resample_keeps_duration_and_tone_is_soft() -> None:
    assert resample(loud(1000), RATE, 16000).size == 16000
    assert resample(quiet(10), RATE, RATE).size == 240
    wave = tone(0.5)
    assert wave.size == 12000
    assert 0 < np.abs(wave).max() <= 0.2 * 32767 + 1


def test_sample_buffer_takes_ranges_across_chunks_and_drops() -> None:
    from appliance.emulator.audio import SampleBuffer

    buffer = SampleBuffer()
    stream = np.arange(1000, dtype=np.int16)
    for start in range(0, 1000, 70):
        buffer.append(stream[start : start + 70])
    assert (buffer.start, buffer.end, len(buffer)) == (0, 1000, 1000)
    assert buffer.take(65, 215).tolist() == stream[65:215].tolist()
    assert buffer.take(-5, 3).tolist() == [0, 1, 2]
    buffer.drop_before(100)
    assert buffer.start == 100
    assert buffer.take(0, 105).tolist() == stream[100:105].tolist()
    assert buffer.take(990, 2000).tolist() == stream[990:].tolist()
    buffer.clear()
    assert (buffer.start, buffer.end) == (1000, 1000)
    assert buffer.take(0, 2000).size == 0
