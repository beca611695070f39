"""Earcons: short sounds that tell the person in the room what the device is doing.

Generated with numpy at start-up (no files): soft bell-like notes (a fundamental with two
quieter harmonics, a 4 ms attack and an exponential decay), well below full scale.
A rising pair means "I am listening", a falling pair "I stopped listening", a low, slower
pair "something went wrong".
"""

from __future__ import annotations

from functools import cache

import numpy as np

from appliance.audio.resample import Floats, Samples, to_int16
from appliance.state import Earcon  # the machine names the sounds; here is how they sound

EARCON_RATE = 24000  # the speaker's input rate (the service's output rate)
PEAK = 0.35  # about -9 dBFS: audible, never harsh


# (frequency Hz, duration s) per note; E5/A5 a fourth apart, F4/D4 for errors.
_NOTES: dict[Earcon, tuple[tuple[float, float], ...]] = {
    Earcon.LISTENING: ((659.25, 0.09), (880.0, 0.14)),
    Earcon.ENDED: ((880.0, 0.09), (659.25, 0.14)),
    Earcon.ERROR: ((349.23, 0.16), (293.66, 0.26)),
}
_GAP_S = 0.015


def _note(frequency: float, duration: float, rate: int) -> Floats:
    t = np.arange(int(duration * rate), dtype=np.float64) / rate
    wave = (
        np.sin(2 * np.pi * frequency * t)
        + 0.25 * np.sin(2 * np.pi * 2 * frequency * t)
        + 0.08 * np.sin(2 * np.pi * 3 * frequency * t)
    )
    envelope = np.exp(-t / (duration / 3.5))
    attack = min(len(t), int(0.004 * rate))
    envelope[:attack] *= np.sin(np.linspace(0, np.pi / 2, attack)) ** 2
    release = min(len(t), int(0.010 * rate))
    envelope[len(t) - release :] *= np.cos(np.linspace(0, np.pi / 2, release)) ** 2
    return (wave * envelope).astype(np.float32)


@cache
def _earcon(kind: Earcon, rate: int) -> Samples:
    gap = np.zeros(int(_GAP_S * rate), dtype=np.float32)
    parts: list[Floats] = []
    for frequency, duration in _NOTES[kind]:
        parts += [_note(frequency, duration, rate), gap]
    signal = np.concatenate(parts[:-1])
    signal *= np.float32(PEAK / float(np.max(np.abs(signal))))
    samples = to_int16(signal)
    samples.flags.writeable = False  # cached and shared: nobody may change it
    return samples


def earcon(kind: Earcon | str, rate: int = EARCON_RATE) -> Samples:
    """The earcon as int16 mono samples at ``rate`` (read-only, cached)."""
    return _earcon(Earcon(kind), rate)
