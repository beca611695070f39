"""Audio formats of the wire protocol: PCM16 at 24/16/8 kHz and G.711 (mu-law, A-law).

The emulator works on int16 numpy arrays internally. Conversions are vectorised; the
resampler is linear interpolation, which is plenty for a stand-in that only plays audio back.
"""

from __future__ import annotations

import base64
import math
from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

INPUT_FORMATS: Final = frozenset({"pcm16", "g711_ulaw", "g711_alaw"})
OUTPUT_FORMATS: Final = frozenset(
    {"pcm16", "pcm16_8000hz", "pcm16_16000hz", "g711_ulaw", "g711_alaw"}
)
INPUT_SAMPLING_RATES: Final = frozenset({16000, 24000})
OUTPUT_RATE: Final = 24000


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How samples travel on the wire: an encoding and a sample rate."""

    encoding: str  # "pcm16", "g711_ulaw" or "g711_alaw"
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def decode(self, data: bytes) -> Samples:
        if self.encoding == "pcm16":
            usable = len(data) - len(data) % 2
            return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
        codes = np.frombuffer(data, dtype=np.uint8)
        table = _ULAW_DECODE if self.encoding == "g711_ulaw" else _ALAW_DECODE
        return table[codes]

    def encode(self, samples: Samples) -> bytes:
        if self.encoding == "pcm16":
            return samples.astype("<i2").tobytes()
        table = _ULAW_DECODE if self.encoding == "g711_ulaw" else _ALAW_DECODE
        return _g711_encode(samples, table).tobytes()


def input_format(session: dict[str, object]) -> AudioFormat:
    encoding = str(session.get("input_audio_format") or "pcm16")
    if encoding != "pcm16":
        return AudioFormat(encoding, 8000)
    rate = session.get("input_audio_sampling_rate") or 24000
    return AudioFormat("pcm16", int(rate) if isinstance(rate, int | float | str) else 24000)


def output_format(name: str) -> AudioFormat:
    return {
        "pcm16": AudioFormat("pcm16", 24000),
        "pcm16_16000hz": AudioFormat("pcm16", 16000),
        "pcm16_8000hz": AudioFormat("pcm16", 8000),
        "g711_ulaw": AudioFormat("g711_ulaw", 8000),
        "g711_alaw": AudioFormat("g711_alaw", 8000),
    }.get(name, AudioFormat("pcm16", OUTPUT_RATE))


def resample(samples: Samples, from_rate: int, to_rate: int) -> Samples:
    if from_rate == to_rate or samples.size == 0:
        return samples
    count = max(1, round(samples.size * to_rate / from_rate))
    positions = np.arange(count, dtype=np.float64) * (from_rate / to_rate)
    resampled = np.interp(positions, np.arange(samples.size), samples.astype(np.float64))
    return np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)


def tone(seconds: float, rate: int = OUTPUT_RATE, frequency: float = 440.0) -> Samples:
    """A soft tone with faded ends: the emulator's voice when it has nothing to play back."""
    count = max(0, round(seconds * rate))
    t = np.arange(count, dtype=np.float64) / rate
    wave = 0.2 * np.sin(2 * math.pi * frequency * t)
    fade = min(count // 2, rate // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return np.rint(wave * 32767).astype(np.int16)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def duration_ms(sample_count: int, rate: int) -> int:
    return sample_count * 1000 // rate


def _ulaw_decode_table() -> Samples:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> Samples:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _g711_encode(samples: Samples, table: Samples) -> npt.NDArray[np.uint8]:
    """Nearest code of the decode table: exact round trip for decoded values."""
    order = np.argsort(table, kind="stable")
    ordered = table[order].astype(np.int32)
    values = samples.astype(np.int32)
    right = np.clip(np.searchsorted(ordered, values), 1, len(ordered) - 1)
    left = right - 1
    nearer_left = (values - ordered[left]) <= (ordered[right] - values)
    return order[np.where(nearer_left, left, right)].astype(np.uint8)


_ULAW_DECODE: Final = _ulaw_decode_table()
_ALAW_DECODE: Final = _alaw_decode_table()


class SampleBuffer:
    """Samples ``[start, end)`` of a stream, kept as the chunks appended.

    Appending never copies what is already held, so a long turn made of many small
    appends costs linear time; a range is joined only when it is taken.
    """

    def __init__(self, start: int = 0) -> None:
        self._chunks: deque[Samples] = deque()
        self.start = start
        self.end = start

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, samples: Samples) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.end += samples.size

    def take(self, start: int, end: int) -> Samples:
        """A copy of the samples ``[start, end)`` (clamped to what is held)."""
        start, end = max(start, self.start), min(end, self.end)
        parts: list[Samples] = []
        offset = self.start
        for chunk in self._chunks:
            chunk_end = offset + chunk.size
            if chunk_end > start and offset < end:
                parts.append(chunk[max(0, start - offset) : min(chunk.size, end - offset)])
            if chunk_end >= end:
                break
            offset = chunk_end
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int16)

    def drop_before(self, sample: int) -> None:
        """Forget the samples before ``sample``."""
        sample = min(max(sample, self.start), self.end)
        while self._chunks and self.start + self._chunks[0].size <= sample:
            self.start += self._chunks.popleft().size
        if self._chunks and sample > self.start:
            self._chunks[0] = self._chunks[0][sample - self.start :]
            self.start = sample

    def clear(self, at: int | None = None) -> None:
        """Forget everything; the next sample appended is ``at`` (default: where it ended)."""
        self._chunks.clear()
        self.start = self.end = self.end if at is None else at
