"""WAV files as microphone and speaker (``--mic WAV``, ``--speaker WAV``), paced in real time.

Both are driven by the asyncio loop's monotonic clock (``loop.call_at`` ticks, no thread):
each tick moves exactly the samples that are due since the stream started, so a late tick
catches up instead of drifting.

- :class:`WavInput`: the file, converted at load time to mono int16 at the service rate,
  starts playing when the microphone first opens and advances only while it is open;
  after its end the microphone hears silence.
- :class:`WavOutput`: everything handed to the "device" while the speaker is open,
  including the silence between answers, appended to a 24 kHz mono 16-bit WAV file whose
  header is brought up to date after every write, so the file is valid at any moment
  (also when the process is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from appliance.audio.resample import Floats, convert, to_int16
from appliance.audio.ring import Pcm, Samples
from appliance.audio.streams import SPEAKER_RATE, Failed, Render, StreamFormat
from appliance.errors import ConfigError, ConfigProblem

log = logging.getLogger(__name__)

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE
_HEADER_BYTES = 44


class WavFormatError(ValueError):
    """The file is not a WAV file this reader understands; the message says why."""


def read_wav(path: Path) -> tuple[Floats, int]:
    """Decode a WAV file (PCM 8/16/24/32-bit or float 32/64-bit, any channels) to mono float."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WavFormatError(exc.strerror or str(exc)) from exc
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise WavFormatError("not a WAV file (no RIFF/WAVE header)")
    if data[:4] == b"RIFX":
        raise WavFormatError("big-endian (RIFX) WAV files are not supported")
    fmt: tuple[int, int, int, int] | None = None
    payload: bytes | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = data[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise WavFormatError("the fmt chunk is too short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                (tag,) = struct.unpack_from("<H", body, 24)  # first bytes of the subformat GUID
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            payload = body  # a header cut short by a killed writer: take what is there
            break
        offset += 8 + size + (size & 1)
    if fmt is None:
        raise WavFormatError("no fmt chunk")
    if payload is None:
        raise WavFormatError("no data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise WavFormatError(f"invalid format: {channels} channels at {rate} Hz")
    samples = _decode(payload, tag, bits)
    frames = len(samples) // channels
    mono = samples[: frames * channels].reshape(frames, channels).mean(axis=1, dtype=np.float64)
    return mono.astype(np.float32), rate


def _decode(payload: bytes, tag: int, bits: int) -> Floats:
    if tag == _PCM and bits == 8:
        raw8 = np.frombuffer(payload, dtype=np.uint8)
        return ((raw8.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if tag == _PCM and bits == 16:
        raw16 = np.frombuffer(payload[: len(payload) // 2 * 2], dtype="<i2")
        return (raw16.astype(np.float32) / 32768.0).astype(np.float32)
    if tag == _PCM and bits == 24:
        raw = np.frombuffer(payload[: len(payload) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
        wide = (
            raw[:, 0].astype(np.int32)
            | (raw[:, 1].astype(np.int32) << 8)
            | (raw[:, 2].astype(np.int32) << 16)
        )
        wide = np.where(wide >= 1 << 23, wide - (1 << 24), wide)
        return (wide.astype(np.float32) / float(1 << 23)).astype(np.float32)
    if tag == _PCM and bits == 32:
        raw32 = np.frombuffer(payload[: len(payload) // 4 * 4], dtype="<i4")
        return (raw32.astype(np.float64) / float(1 << 31)).astype(np.float32)
    if tag == _FLOAT and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        width = bits // 8
        floats = np.frombuffer(payload[: len(payload) // width * width], dtype=dtype)
        clipped: Floats = np.clip(floats, -1.0, 1.0).astype(np.float32)
        return clipped
    kind = {_PCM: "integer PCM", _FLOAT: "float"}.get(tag, f"format tag {tag:#x}")
    raise WavFormatError(f"unsupported encoding: {bits}-bit {kind}")


def load_wav(path: Path, rate: int, *, option: str = "--mic") -> Samples:
    """The file as int16 mono at ``rate``; a clear configuration error if it is unusable."""
    try:
        mono, file_rate = read_wav(path)
    except WavFormatError as exc:
        raise ConfigError([ConfigProblem(option, str(path), str(exc))]) from exc
    return to_int16(convert(mono, file_rate, rate))


class WavWriter:
    """A mono int16 WAV file that is valid after every :meth:`append` (header kept current)."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self.frames = 0
        file = None
        try:
            file = path.open("wb")
            file.write(self._header(0))
            file.flush()  # a full disk says so here, as a bad path does, before the start
        except OSError as exc:
            if file is not None:
                with contextlib.suppress(OSError):  # what could not be flushed is lost anyway
                    file.close()
            raise ConfigError(
                [ConfigProblem("--speaker", str(path), exc.strerror or str(exc))]
            ) from exc
        self._file: BinaryIO | None = file

    def _header(self, data_bytes: int) -> bytes:
        return struct.pack(
            "<4sI4s4sIHHIIHH4sI",
            b"RIFF",
            36 + data_bytes,
            b"WAVE",
            b"fmt ",
            16,
            _PCM,
            1,
            self.rate,
            self.rate * 2,
            2,
            16,
            b"data",
            data_bytes,
        )

    def append(self, samples: Samples) -> None:
        file = self._file
        if file is None or len(samples) == 0:
            return
        file.write(samples.astype("<i2", copy=False).tobytes())
        self.frames += len(samples)
        data_bytes = self.frames * 2
        file.seek(4)
        file.write(struct.pack("<I", 36 + data_bytes))
        file.seek(40)
        file.write(struct.pack("<I", data_bytes))
        file.seek(0, 2)
        file.flush()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()  # flushes what a full disk refused before, and may refuse it again
        except OSError as exc:
            log.warning("the end of %s could not be written: %s", self.path, exc.strerror or exc)


class _Paced:
    """Ticks on the loop's clock while started; counts the samples due since the start."""

    description = "WAV"

    def __init__(self, *, rate: int, period_ms: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.rate = rate
        self.period_frames = max(1, round(rate * period_ms / 1000))
        self._period_s = self.period_frames / rate
        self._timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._done = 0  # samples moved since the start
        self._failure: str | None = None
        self._on_failure: Callable[[], None] | None = None

    def start(self) -> None:
        if self._timer is not None:
            return
        self._failure = None
        self._started_at = self._loop.time()
        self._done = 0
        self._timer = self._loop.call_at(self._started_at + self._period_s, self._tick)

    def stop(self, *, keep_open: bool = False) -> None:  # nothing to keep open: a timer
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._catch_up()  # what was due until now still happened

    def failure(self) -> str | None:
        return self._failure

    def _tick(self) -> None:
        self._catch_up()
        if self._timer is None:
            return
        ticks = int((self._loop.time() - self._started_at) / self._period_s) + 1
        self._timer = self._loop.call_at(self._started_at + ticks * self._period_s, self._tick)

    def _catch_up(self) -> None:
        due = int((self._loop.time() - self._started_at) * self.rate) - self._done
        try:
            while due > 0:
                count = min(due, self.period_frames)
                self._move(count)
                self._done += count
                due -= count
        except OSError as exc:
            self._failure = f"{self.description}: {exc.strerror or exc}"
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
                if self._on_failure is not None:
                    self._on_failure()

    def _move(self, count: int) -> None:
        raise NotImplementedError


class WavInput(_Paced):
    """``--mic WAV``: the file as the microphone, at the service rate, then silence."""

    def __init__(
        self, path: Path, *, rate: int, period_ms: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(rate=rate, period_ms=period_ms, loop=loop)
        self.path = path
        self.samples = load_wav(path, rate, option="--mic")
        self.description = f"WAV microphone {str(path)!r}"
        self._position = 0  # advances only while the microphone is open
        self._silence = np.zeros(self.period_frames, dtype=np.int16)
        self._capture: Callable[[Pcm], None] | None = None

    @property
    def finished(self) -> bool:
        """The whole file has been heard."""
        return self._position >= len(self.samples)

    def open(self, capture: Callable[[Pcm], None], on_failure: Failed) -> StreamFormat:
        self._capture, self._on_failure = capture, on_failure
        return StreamFormat(rate=self.rate, channels=1, period_frames=self.period_frames)

    def _move(self, count: int) -> None:
        start = self._position
        chunk = self.samples[start : start + count]
        if len(chunk) < count:
            chunk = np.concatenate([chunk, self._silence[: count - len(chunk)]])
        self._position += count
        if self._capture is not None:
            self._capture(chunk)

    def close(self) -> None:
        self.stop()


class WavOutput(_Paced):
    """``--speaker WAV``: whatever the speaker plays, silence included, into a WAV file."""

    def __init__(self, path: Path, *, period_ms: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(rate=SPEAKER_RATE, period_ms=period_ms, loop=loop)
        self.path = path
        self.description = f"WAV speaker {str(path)!r}"
        self._writer = WavWriter(path, SPEAKER_RATE)
        self._buffer = np.zeros(self.period_frames, dtype=np.int16)
        self._render: Render | None = None

    def open(self, render: Render, on_failure: Failed) -> StreamFormat:
        self._render, self._on_failure = render, on_failure
        return StreamFormat(rate=self.rate, channels=1, period_frames=self.period_frames)

    def _move(self, count: int) -> None:
        out = self._buffer if count == self.period_frames else self._buffer[:count]
        if self._render is not None:
            self._render(out)
        else:
            out[:] = 0
        self._writer.append(out)

    def sound_arrived(self, samples: int, *, after_silence: bool = True) -> None:
        pass  # each period is written as it is rendered: nothing is held back or waited for

    def drop_buffered(self) -> int:
        return 0  # each period is written as it is rendered: nothing is held back

    @property
    def buffer_frames(self) -> int:
        return 0  # written as rendered: heard (in the file) as soon as it is handed

    @property
    def frames_written(self) -> int:
        return self._writer.frames

    def close(self) -> None:
        self.stop()
        self._writer.close()
