"""Sample-rate conversion and level scaling, always on the loop side (never in a callback).

Streams are converted with soxr's streaming resampler, which keeps its filter state from
one chunk to the next, so chunk boundaries leave no trace in the audio.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import soxr

Samples = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float32]

QUALITY = "HQ"  # about 40 ms of buffering; a 20 ms chunk costs ~20 us on x86
_SCALE = 32768.0


def to_float(samples: Samples) -> Floats:
    return samples.astype(np.float32) * np.float32(1.0 / _SCALE)


def to_int16(samples: Floats) -> Samples:
    """Float audio (full scale 1.0) to int16, rounded and clipped."""
    scaled = np.rint(samples * np.float32(_SCALE))
    clipped: Samples = np.clip(scaled, -32768, 32767).astype(np.int16)
    return clipped


def scale(samples: Samples, gain: float) -> Samples:
    """Multiply by a linear gain, clipping instead of wrapping around."""
    if gain == 1.0:
        return samples
    if gain == 0.0:
        return np.zeros_like(samples)
    return to_int16(to_float(samples) * np.float32(gain))


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def volume_to_gain(percent: float) -> float:
    """Speaker volume (0-100 %) to a linear gain: squared, so that steps sound even."""
    fraction = min(max(percent, 0.0), 100.0) / 100.0
    return fraction * fraction


def downmix(interleaved: Samples, channels: int) -> Samples:
    if channels == 1:
        return interleaved
    frames = interleaved[: len(interleaved) - len(interleaved) % channels]
    mixed = frames.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels
    result: Samples = mixed.astype(np.int16)
    return result


def upmix(mono: Samples, channels: int) -> Samples:
    if channels == 1:
        return mono
    return np.repeat(mono, channels)


def convert(samples: Floats, in_rate: int, out_rate: int) -> Floats:
    """Convert a whole signal at once (for files, not streams)."""
    if in_rate == out_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    converted: Floats = soxr.resample(samples, in_rate, out_rate, quality=QUALITY)
    return converted.astype(np.float32, copy=False)


class StreamResampler:
    """Converts a mono int16 stream chunk by chunk; a pass-through when the rates match."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=QUALITY
            )

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def output_length(self, input_length: int) -> int:
        """Roughly how many samples ``input_length`` input samples become."""
        return math.ceil(input_length * self.out_rate / self.in_rate)

    def process(self, samples: Samples) -> Samples:
        if self._stream is None:
            return samples
        if len(samples) == 0:
            return samples
        converted: Floats = self._stream.resample_chunk(to_float(samples))
        return to_int16(converted)

    def flush(self) -> Samples:
        """The samples still inside the filter, then start afresh for the next stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail: Floats = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return to_int16(tail)

    def reset(self) -> None:
        """Forget the stream so far (after a barge-in nothing of it may leak out later)."""
        if self._stream is not None:
            self._stream.clear()
