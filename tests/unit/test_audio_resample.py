"""Streaming sample-rate conversion and level helpers."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio.resample import (
    StreamResampler,
    db_to_gain,
    downmix,
    scale,
    upmix,
    volume_to_gain,
)


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def pitch(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(48000, 24000), (44100, 24000), (24000, 44100), (48000, 16000)]
)
def test_chunked_conversion_keeps_pitch_and_length(in_rate: int, out_rate: int) -> None:
    resampler = StreamResampler(in_rate, out_rate)
    signal = tone(997, 2.0, in_rate)
    period = in_rate // 50
    parts = [resampler.process(signal[i : i + period]) for i in range(0, len(signal), period)]
    parts.append(resampler.flush())
    out = np.concatenate(parts)
    assert len(out) == pytest.approx(2.0 * out_rate, abs=2)
    assert pitch(out, out_rate) == pytest.approx(997, abs=1)
    # chunk boundaries leave no trace: the same as converting in one go
    whole = StreamResampler(in_rate, out_rate)
    once = np.concatenate([whole.process(signal), whole.flush()])
    assert np.max(np.abs(out.astype(np.int32) - once.astype(np.int32))) <= 1


def test_equal_rates_pass_samples_through_untouched() -> None:
    resampler = StreamResampler(24000, 24000)
    samples = tone(440, 0.1, 24000)
    assert resampler.passthrough
    assert resampler.process(samples) is samples
    assert len(resampler.flush()) == 0


def test_reset_forgets_the_stream() -> None:
    resampler = StreamResampler(48000, 24000)
    resampler.process(tone(440, 0.5, 48000))
    resampler.reset()
    silence = np.concatenate([resampler.process(np.zeros(4800, dtype=np.int16)), resampler.flush()])
    assert not silence.any()


def test_scale_clips_instead_of_wrapping() -> None:
    samples = np.array([20000, -20000, 100], dtype=np.int16)
    assert list(scale(samples, 2.0)) == [32767, -32768, 200]
    assert scale(samples, 1.0) is samples
    assert not scale(samples, 0.0).any()


def test_gain_and_volume_curves() -> None:
    assert db_to_gain(0) == 1.0
    assert db_to_gain(20) == pytest.approx(10)
    assert volume_to_gain(100) == 1.0
    assert volume_to_gain(0) == 0.0
    assert volume_to_gain(50) == pytest.approx(0.25)


def test_channel_mixing() -> None:
    stereo = np.array([100, 300, -100, -300], dtype=np.int16)
    assert list(downmix(stereo, 2)) == [200, -200]
    assert list(upmix(np.array([1, 2], dtype=np.int16), 2)) == [1, 1, 2, 2]
