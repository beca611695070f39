"""Earcons: short, not loud, click-free, and telling apart start, end and error."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio.tones import EARCON_RATE, earcon
from appliance.state import Earcon


def pitch(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("kind", list(Earcon))
def test_earcons_are_short_moderate_and_start_and_end_softly(kind: Earcon) -> None:
    sound = earcon(kind)
    assert sound.dtype == np.int16
    assert 0.15 <= len(sound) / EARCON_RATE <= 0.5
    peak = np.max(np.abs(sound)) / 32768
    assert 0.2 < peak < 0.5  # audible, never harsh
    assert abs(int(sound[0])) < 200
    assert abs(int(sound[-1])) < 200
    assert np.max(np.abs(np.diff(sound.astype(np.int32)))) < 0.25 * 32768  # no clicks


def test_listening_rises_end_falls_error_is_low() -> None:
    def halves(kind: Earcon) -> tuple[float, float]:
        sound = earcon(kind)
        half = len(sound) // 2
        return pitch(sound[:half], EARCON_RATE), pitch(sound[half:], EARCON_RATE)

    start_first, start_second = halves(Earcon.LISTENING)
    end_first, end_second = halves(Earcon.ENDED)
    error_first, error_second = halves(Earcon.ERROR)
    assert start_second > start_first
    assert end_second < end_first
    assert max(error_first, error_second) < min(start_first, end_second)


def test_earcons_are_cached_and_read_only() -> None:
    first = earcon("listening")
    assert earcon(Earcon.LISTENING) is first
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1
    assert len(earcon(Earcon.ENDED, 48000)) == pytest.approx(2 * len(earcon(Earcon.ENDED)), abs=2)
