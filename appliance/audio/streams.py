"""The microphone and the speaker, independent of what device drives them.

A device (PyAudio stream or WAV file) calls :meth:`Microphone._capture` or
:meth:`Speaker._render` once per period, from its own thread (PyAudio) or from the loop
(WAV files). Those two methods are the only code that runs on a device thread: they move
samples between the device and a preallocated :class:`RingBuffer`, note the callback in a
preallocated numpy log, and wake the loop with ``loop.call_soon_threadsafe`` (at most one
wake-up in flight). They never allocate audio buffers, never block, never log and never
raise. A device whose running stream fails says so once, through the ``on_failure`` it was
opened with, so that the failure is reported at once rather than at the next check.

Everything else (resampling, gain, volume, earcons, bookkeeping of which response item was
played how far) runs on the asyncio loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

import numpy as np
import numpy.typing as npt

from appliance.audio.resample import (
    StreamResampler,
    db_to_gain,
    downmix,
    scale,
    upmix,
    volume_to_gain,
)
from appliance.audio.ring import Pcm, RingBuffer, Samples
from appliance.audio.tones import EARCON_RATE, earcon
from appliance.errors import AudioDeviceError
from appliance.state import Earcon

with warnings.catch_warnings():
    # Deprecated since 3.11 and gone in 3.13, where the audioop-lts package provides it: its
    # C minmax is what makes a period's peak to peak cheap on the microphone's device thread.
    warnings.simplefilter("ignore", DeprecationWarning)
    from audioop import minmax

SPEAKER_RATE = 24000  # what Voice Live sends: PCM16 mono 24 kHz
STALL_S = 2.0  # a started stream without a callback for this long has failed
LOG_LENGTH = 1024  # callbacks remembered for latency figures (41 s at 40 ms)
# Quieter than this at the service (peak, after the gain), the microphone hears no one:
# well below speech at arm's length, above the hiss of a quiet room on a usable microphone.
QUIET_DBFS = -45.0
_NEVER = 1 << 62  # a sample position no stream reaches
_EMPTY: Samples = np.zeros(0, dtype=np.int16)
_EMPTY.flags.writeable = False


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How a device stream was opened."""

    rate: int
    channels: int
    period_frames: int


Failed = Callable[[], None]
"""Called once, from any thread, when a running stream stops working; ``failure()`` says why."""


class InputDevice(Protocol):
    """Something that captures audio, stream by stream, until it is closed."""

    description: str

    def open(self, capture: Callable[[Pcm], None], on_failure: Failed) -> StreamFormat:
        """Open a stream (not started); ``capture`` gets interleaved int16 frames per period.

        Raises :class:`~appliance.errors.AudioDeviceError` when the device is unusable.
        """

    def start(self) -> None:
        """Start the open stream; raises AudioDeviceError (and closes it) on failure."""

    def stop(self) -> None:
        """Stop and close the stream; no callback runs after this returns. Idempotent."""

    def failure(self) -> str | None:
        """Why the running stream stopped working, or None while it works."""

    def close(self) -> None:
        """Stop, and release the device for good. Idempotent."""


class Render(Protocol):
    """Fills one period of a preallocated array; returns the samples of sound ready from it on.

    That is the sound in the period plus what waits behind it, 0 for a period of silence. A
    device that keeps a buffer uses it to tell when that buffer holds nothing but silence.

    A device that still holds enough to play on for a while may say so (``can_wait=True``):
    while an answer streams and less than a period of it has come, the period is then not
    filled and :data:`NOT_YET` returned, so that the device waits for the rest rather than
    play a gap of silence inside the answer (see ``PyAudioOutput``).
    """

    def __call__(self, out: Samples, can_wait: bool = False) -> int: ...


NOT_YET = -1
"""From a render asked with ``can_wait``: the answer's next audio has not come, so nothing
was filled or taken; ask again when more has come, or without ``can_wait``."""


class OutputDevice(Protocol):
    """Something that plays audio; ``render`` fills a preallocated array once per period."""

    description: str

    def open(self, render: Render, on_failure: Failed) -> StreamFormat: ...

    def start(self) -> None: ...

    def sound_arrived(self, samples: int, *, after_silence: bool = True) -> None:
        """``samples`` of sound wait in the ring.

        ``after_silence``: the ring was empty, so a device that would play the silence it
        holds first may start them at once instead. Otherwise the ring held less than a
        period: a device waiting for an answer's next audio (see :data:`NOT_YET`) may take
        it now.
        """

    def drop_buffered(self) -> int:
        """Discard the audio the device holds but has not played yet (within a period).

        Returns how many frames that is: what ``render`` filled that will not be heard.
        """

    @property
    def buffer_frames(self) -> int:
        """Frames the running device holds ahead of what it plays (0: none, or stopped).

        A rendered sample is heard once the device has asked for that many more frames.
        """

    def stop(self, *, keep_open: bool = False) -> None:
        """Stop (no render after this returns) and close; idempotent.

        ``keep_open``: the device may leave its stream open, stopped, so that the next
        open() and start() are quicker; a stop() without it closes it.
        """

    def failure(self) -> str | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Liveness of one stream, for the watchdog: callbacks must keep coming while started."""

    started: bool
    callbacks: int  # only grows
    last_callback_ns: int  # time.monotonic_ns() of the latest callback; 0 before the first
    failure: str | None  # why the device stopped, when it did
    device: str
    rate: int | None
    period_ms: float | None

    @property
    def healthy(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, slots=True)
class Level:
    """Loudness of the latest microphone chunk, as fractions of full scale."""

    rms: float = 0.0
    peak: float = 0.0

    @property
    def dbfs(self) -> float:
        return 20 * math.log10(self.rms) if self.rms > 0 else -math.inf


@dataclass(frozen=True, slots=True)
class Interrupted:
    """What :meth:`Speaker.clear` cut short: the newest response item and how much was heard."""

    item_id: str | None
    played_ms: int


class _CallbackLog:
    """Per-callback records (stream position after it, real samples, monotonic ns)."""

    def __init__(self) -> None:
        # The device thread writes through the array: a plain store per field, where numpy
        # would look up the dtype of each Python int. The loop reads a numpy view of it.
        self._fields = array.array("q", bytes(8 * 3 * LOG_LENGTH))
        self.records: npt.NDArray[np.int64] = np.frombuffer(self._fields, dtype=np.int64).reshape(
            LOG_LENGTH, 3
        )
        self.count = 0  # callbacks so far; written by the device side only

    def note(self, position: int, samples: int) -> None:
        fields, at = self._fields, self.count % LOG_LENGTH * 3
        fields[at] = position
        fields[at + 1] = samples
        fields[at + 2] = time.monotonic_ns()
        self.count += 1

    def sound_in_last(self, callbacks: int) -> int:
        """Samples of sound the last ``callbacks`` callbacks moved (silence not counted)."""
        count = self.count
        total = 0
        for index in range(max(0, count - min(callbacks, LOG_LENGTH)), count):
            total += int(self.records[index % LOG_LENGTH, 1])
        return total

    def reached(self, position: int, enough: int) -> int:
        """How many of the latest callbacks, up to ``enough``, left the stream at ``position``
        or beyond (the first of them handed the sample before ``position`` to the device)."""
        count = self.count
        seen = 0
        for index in range(count - 1, count - 1 - min(enough, count, LOG_LENGTH), -1):
            if self.records[index % LOG_LENGTH, 0] < position:
                break
            seen += 1
        return seen

    def last_ns(self) -> int:
        if self.count == 0:
            return 0
        return int(self.records[(self.count - 1) % LOG_LENGTH, 2])

    def snapshot(self) -> npt.NDArray[np.int64]:
        """The remembered records, oldest first (a copy)."""
        count = self.count
        if count <= LOG_LENGTH:
            return self.records[:count].copy()
        start = count % LOG_LENGTH
        return np.concatenate([self.records[start:], self.records[:start]])


def _status(
    device: InputDevice | OutputDevice,
    fmt: StreamFormat | None,
    started: bool,
    started_ns: int,
    log: _CallbackLog,
) -> StreamStatus:
    failure = device.failure() if started else None
    last_ns = log.last_ns()
    if started and failure is None:
        quiet_s = (time.monotonic_ns() - max(started_ns, last_ns)) / 1e9
        if quiet_s > STALL_S:
            failure = f"{device.description}: no audio callback for {quiet_s:.1f} s"
    return StreamStatus(
        started=started,
        callbacks=log.count,
        last_callback_ns=last_ns,
        failure=failure,
        device=device.description,
        rate=fmt.rate if fmt else None,
        period_ms=fmt.period_frames * 1000 / fmt.rate if fmt else None,
    )


class _DeviceStream:
    """What the microphone and the speaker share: a device stream opened at start().

    A subclass names its device callback and prepares its ring and resampler for the
    format the device opened with (keeping them when the format is the one before).
    """

    _what: str  # "microphone" or "speaker", for errors

    def __init__(self, device: InputDevice | OutputDevice, loop: asyncio.AbstractEventLoop) -> None:
        self._device = device
        self._loop = loop
        self._format: StreamFormat | None = None
        self._log = _CallbackLog()
        # The wake-up handshake: set by the device side, cleared by the loop.
        self._wake_pending = False
        self._started = False
        self._started_ns = 0
        self._closed = False
        # Called on the loop when the running stream's device fails (its status() says how).
        self.on_failure: Callable[[], object] | None = None

    def _open(self) -> StreamFormat:
        raise NotImplementedError

    def _device_failed(self) -> None:
        # The device side, once per failed stream: not a per-period path.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to tell
            self._loop.call_soon_threadsafe(self._report_failure)

    def _report_failure(self) -> None:
        if self._started and self.on_failure is not None:
            self.on_failure()

    def _prepare(self, fmt: StreamFormat, *, same_format: bool) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Open and start the device stream; raises AudioDeviceError if it is unusable."""
        if self._closed:
            raise AudioDeviceError(f"the {self._what} is closed")
        if self._started:
            return
        fmt = self._open()
        previous = self._format
        try:
            same = previous is not None and (fmt.rate, fmt.channels) == (
                previous.rate,
                previous.channels,
            )
            self._format = fmt
            self._wake_pending = False
            self._prepare(fmt, same_format=same)
            self._device.start()
        except BaseException:
            self._format = None  # the ring may not match it: build afresh next time
            self._device.stop()
            raise
        self._started_ns = time.monotonic_ns()
        self._started = True

    def close(self) -> None:
        self.stop()
        self._device.close()
        self._closed = True

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._started

    @property
    def running_s(self) -> float:
        """How long the stream has been started; 0 while it is stopped."""
        return (time.monotonic_ns() - self._started_ns) / 1e9 if self._started else 0.0

    @property
    def format(self) -> StreamFormat | None:
        return self._format

    def status(self) -> StreamStatus:
        return _status(self._device, self._format, self._started, self._started_ns, self._log)


def _quiet_span(gain: float) -> int:
    """The largest peak-to-peak span of a device period that is still quiet at this gain."""
    return round(2 * 32768 * db_to_gain(QUIET_DBFS) / gain)


class Microphone(_DeviceStream):
    """Capture: the device writes into a drop-oldest ring; the loop reads, resamples, scales.

    ``read()`` returns int16 mono at ``service_rate``. The ring holds ``buffer_s`` seconds,
    so audio captured while the connection is still being set up is kept for sending once
    the session is ready; beyond that the oldest audio is dropped and counted.

    The device side wakes the loop once ``chunk_ms`` of audio waits, or, while the
    microphone hears no one, once ``quiet_chunk_ms`` waits (if that is longer): sound
    wakes it at the next period, and the short chunks last after the last sound (and
    after each start) until the service ends the user's turn (:meth:`turn_ended`), or
    for ``sound_hold_ms`` at most.
    """

    def __init__(
        self,
        device: InputDevice,
        *,
        loop: asyncio.AbstractEventLoop,
        service_rate: int,
        gain_db: float = 0.0,
        buffer_s: float = 5.0,
        on_audio: Callable[[], None] | None = None,
        chunk_ms: float = 0.0,
        quiet_chunk_ms: float = 0.0,
        sound_hold_ms: float = 1000.0,
    ) -> None:
        super().__init__(device, loop)
        self._device: InputDevice = device
        self.service_rate = service_rate
        # Wake the loop once this much audio waits (0: every period). Each wake-up costs a
        # thread switch and, downstream, one message to the service: batching saves CPU.
        self.chunk_ms = chunk_ms
        self._wake_samples = 0
        # While the microphone hears nothing above QUIET_DBFS, wake the loop only once
        # quiet_chunk_ms waits. Sound wakes it at the next period and keeps chunk_ms until
        # the service ends the turn (sound_hold_ms at most): the silence that ends a turn
        # reaches the service as promptly as the speech did. Only the audio's timing
        # changes, never its content.
        self.quiet_chunk_ms = quiet_chunk_ms
        self.sound_hold_ms = sound_hold_ms
        self._quiet_wake_samples = 0
        self._hold_periods = 0
        # Callback counts, each written by one side only: the last period with sound (the
        # device side), and the last one before the service ended the turn (the loop).
        self._last_sound = 0
        self._turn_ended_at = 0
        self._gain = db_to_gain(gain_db)
        self._gain_db = gain_db
        self._quiet_span = _quiet_span(self._gain)
        self._buffer_s = buffer_s
        self.on_audio = on_audio
        self.audio_ready = asyncio.Event()
        self.muted = False
        self._last: Samples = _EMPTY  # the latest chunk read, for the level meter
        self._ring: RingBuffer | None = None
        self._resampler: StreamResampler | None = None
        self._flush_pending = False
        self.callback_errors = 0

    # ---- device side ---------------------------------------------------------------------

    def _capture(self, frames: Pcm) -> None:
        try:
            ring = self._ring
            if ring is None:
                return
            log = self._log
            written = ring.write(frames)
            log.note(ring.write_position, written)
            wake = self._wake_samples
            if self._quiet_wake_samples > wake:
                # Peak to peak: a microphone's DC offset is not sound.
                count = log.count
                low, high = minmax(frames if isinstance(frames, bytes) else frames.data, 2)
                if high - low > self._quiet_span:
                    self._last_sound = count
                elif (
                    count - self._last_sound > self._hold_periods
                    or self._turn_ended_at > self._last_sound
                ):
                    wake = self._quiet_wake_samples
            if not self._wake_pending and ring.available() >= wake:
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._woken)
        except BaseException:  # noqa: BLE001 - never raise into the device thread
            self.callback_errors += 1

    # ---- loop side -----------------------------------------------------------------------

    def _woken(self) -> None:
        self._wake_pending = False
        self.audio_ready.set()
        if self.on_audio is not None:
            self.on_audio()

    _what = "microphone"

    def _open(self) -> StreamFormat:
        return self._device.open(self._capture, self._device_failed)

    def _prepare(self, fmt: StreamFormat, *, same_format: bool) -> None:
        if same_format:
            assert self._ring is not None
            assert self._resampler is not None
            self._ring.clear()
            self._resampler.reset()
        else:
            capacity = max(1, round(self._buffer_s * fmt.rate)) * fmt.channels
            self._ring = RingBuffer(capacity, drop_oldest=True)
            self._resampler = StreamResampler(fmt.rate, self.service_rate)
        self._wake_samples = round(self.chunk_ms * fmt.rate / 1000) * fmt.channels
        self._quiet_wake_samples = round(self.quiet_chunk_ms * fmt.rate / 1000) * fmt.channels
        period_ms = fmt.period_frames * 1000 / fmt.rate
        self._hold_periods = math.ceil(self.sound_hold_ms / period_ms)
        # A fresh start counts as sound: the first audio after a press leaves at once.
        self._last_sound = self._log.count
        self._flush_pending = False

    def stop(self) -> None:
        """Stop capturing. What was captured stays readable until the next start()."""
        if self._started:
            self._started = False
            self._device.stop()
            self._flush_pending = True  # the resampler still holds the last few ms

    def turn_ended(self) -> None:
        """The service ended the user's turn (speech_stopped): the silence that ended it has
        reached it, so quiet audio may go in quiet chunks again at once. Sound after this
        keeps the short chunks again."""
        self._turn_ended_at = self._log.count

    @property
    def gain_db(self) -> float:
        return self._gain_db

    @gain_db.setter
    def gain_db(self, value: float) -> None:
        self._gain_db = value
        self._gain = db_to_gain(value)
        self._quiet_span = _quiet_span(self._gain)

    def read(self) -> Samples:
        """All audio captured since the last read: int16 mono at the service rate (maybe empty).

        After stop(), the first read also returns the tail the resampler still held, so
        that everything said before the button was released is sent.
        """
        ring, resampler, fmt = self._ring, self._resampler, self._format
        if ring is None or resampler is None or fmt is None:
            return _EMPTY
        count = ring.available()
        flush = self._flush_pending and not self._started
        if count == 0 and not flush:
            return _EMPTY
        raw = np.empty(count, dtype=np.int16)
        got = ring.read_into(raw) if count else 0
        converted = resampler.process(downmix(raw[:got], fmt.channels))
        if flush:
            self._flush_pending = False
            converted = np.concatenate([converted, resampler.flush()])
        out = scale(converted, self._gain)
        if len(out):
            self._last = out
        if self.muted:
            return np.zeros_like(out)
        return out

    @property
    def level(self) -> Level:
        """Loudness of the latest chunk read (computed when asked: only a meter needs it)."""
        if len(self._last) == 0:
            return Level()
        as_float = self._last.astype(np.float32) / 32768.0
        return Level(
            rms=float(np.sqrt(np.mean(as_float * as_float))),
            peak=float(np.max(np.abs(as_float))),
        )

    async def next_chunk(self) -> Samples:
        """Wait for captured audio and return it (never empty)."""
        while True:
            self.audio_ready.clear()
            chunk = self.read()
            if len(chunk):
                return chunk
            await self.audio_ready.wait()

    @property
    def overruns(self) -> int:
        """Callbacks whose audio pushed out older audio the loop had not read."""
        return self._ring.overruns if self._ring is not None else 0

    @property
    def dropped_ms(self) -> float:
        """Audio lost because the loop did not read it in time."""
        if self._ring is None or self._format is None:
            return 0.0
        return self._ring.dropped / self._format.channels / self._format.rate * 1000

    @property
    def callbacks(self) -> int:
        return self._log.count

    def capture_log(self) -> npt.NDArray[np.int64]:
        """Per callback: (samples captured so far, samples in it, time.monotonic_ns())."""
        return self._log.snapshot()


@dataclass(slots=True)
class _Queued:
    """Audio waiting on the loop side for room in the ring (24 kHz, volume not applied)."""

    item_id: str | None
    samples: Samples
    mark: int  # index of its first sample among all samples ever queued
    flush: bool = False  # end of a response: push the resampler's tail out


@dataclass(slots=True)
class _Segment:
    """A stretch of ring positions that holds one response item's audio."""

    item_id: str | None
    start: int
    end: int
    samples_per_ms: float


class Speaker(_DeviceStream):
    """Playback: the loop queues 24 kHz audio, the device drains a ring at the device rate.

    ``play()`` never blocks and never drops: what does not fit into the ring waits in a
    loop-side queue and is resampled, scaled by the volume and moved in as the ring drains
    (the device side wakes the loop when the ring runs below three quarters). The ring holds
    ``buffer_s`` seconds, which is also how long a volume change takes at most to be heard.
    """

    def __init__(
        self,
        device: OutputDevice,
        *,
        loop: asyncio.AbstractEventLoop,
        volume: int = 80,
        buffer_s: float = 2.0,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(device, loop)
        self._device: OutputDevice = device
        self._buffer_s = buffer_s
        self.on_drained = on_drained
        self.drained = asyncio.Event()
        self.drained.set()
        self._volume = 0
        self._gain = 0.0
        self.volume = volume
        self._ring: RingBuffer | None = None
        self._resampler: StreamResampler | None = None
        self._queue: deque[_Queued] = deque()
        self._staged: Samples = _EMPTY  # resampled and scaled, waiting for ring space
        self._staged_item: str | None = None
        self._queued_total = 0  # 24 kHz samples ever queued (marks for latency lookups)
        self._marks: deque[tuple[int, int]] = deque(maxlen=LOG_LENGTH)
        self._segments: deque[_Segment] = deque(maxlen=256)
        self._last_item: str | None = None
        self._finish_requested = False
        self._low_water = 0
        # Ring position where sound last followed silence (-1: none since the ring was made).
        self._sound_from = -1
        # Read by the device side, written by the loop only:
        self._streaming = False  # a response is arriving: a dry ring is an underrun
        self._want_feed = False  # the loop has audio waiting for ring space
        self._finish_pos = _NEVER  # the last sample of the finished audio, once in the ring
        # Written by the device side only:
        self.underruns = 0
        self.callback_errors = 0

    # ---- device side ---------------------------------------------------------------------

    def _render(self, out: Samples, can_wait: bool = False) -> int:
        try:
            ring = self._ring
            if ring is None:
                out[:] = 0
                return 0
            answering = self._streaming or self._want_feed
            if can_wait and answering and ring.available() < len(out):
                # The answer's next audio is late, or this is its start and its first delta
                # is shorter than the device's buffer: the device can play on for a while,
                # so it waits for more rather than add silence to the answer.
                return NOT_YET
            real = ring.read_into(out)
            if real < len(out) and answering:
                self.underruns += 1
            position = ring.read_position
            self._log.note(position, real)
            if not self._wake_pending and (
                position >= self._finish_pos
                or (self._want_feed and ring.available() < self._low_water)
            ):
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._woken)
            return real + ring.available() if real else 0
        except BaseException:  # noqa: BLE001 - never raise into the device thread
            self.callback_errors += 1
            out[:] = 0
            return 0

    # ---- loop side -----------------------------------------------------------------------

    def _woken(self) -> None:
        self._wake_pending = False
        self._feed()
        self._check_drained()

    _what = "speaker"

    def _open(self) -> StreamFormat:
        return self._device.open(self._render, self._device_failed)

    def _prepare(self, fmt: StreamFormat, *, same_format: bool) -> None:
        if not same_format:
            capacity = max(fmt.period_frames * 4, round(self._buffer_s * fmt.rate))
            self._ring = RingBuffer(capacity * fmt.channels, drop_oldest=False)
            self._resampler = StreamResampler(SPEAKER_RATE, fmt.rate)
            self._low_water = self._ring.capacity * 3 // 4
            self._sound_from = -1
            self._segments.clear()
            self._marks.clear()
        self._feed()  # so that the first callback already has the queued audio

    def stop(self, *, keep_open: bool = False) -> None:
        """Stop the output stream and drop whatever was still to be played.

        ``keep_open``: the device may keep its stream open for a quicker start() (between
        the answers of a conversation); :meth:`release` closes it.
        """
        if self._started:
            self._started = False
            self._device.stop(keep_open=keep_open)
        self._discard()

    def release(self) -> None:
        """Close the stream a stop(keep_open=True) left open; nothing while started."""
        if not self._started:
            self._device.stop()

    @property
    def volume(self) -> int:
        return self._volume

    @volume.setter
    def volume(self, percent: int) -> None:
        """0-100 %. Applies to audio moved into the ring from now on (within ``buffer_s``)."""
        if not 0 <= percent <= 100:
            raise ValueError("volume is a percentage, 0-100")
        self._volume = int(percent)
        self._gain = volume_to_gain(percent)

    def play(
        self, pcm: bytes | Samples, item_id: str | None = None, *, response: bool = True
    ) -> int:
        """Queue int16 mono 24 kHz audio; never blocks, never drops.

        Returns a mark (the index of its first sample among all samples ever queued) for
        :meth:`handed_ns`. ``response=False`` is for sounds that are not part of a
        streamed answer (earcons): the ring running dry after them is not an underrun.
        """
        if self._closed:
            return self._queued_total
        if isinstance(pcm, bytes | bytearray | memoryview):
            if len(pcm) % 2:
                raise ValueError("PCM16 audio has an even number of bytes")
            samples: Samples = np.frombuffer(pcm, dtype=np.int16)
        else:
            samples = np.asarray(pcm, dtype=np.int16)
        mark = self._queued_total
        if len(samples) == 0:
            return mark
        self._queue.append(_Queued(item_id, samples, mark))
        self._queued_total += len(samples)
        if item_id is not None:
            self._last_item = item_id
        if response:
            self._cancel_finish()
        self.drained.clear()
        ring = self._ring
        before = ring.available() if ring is not None else 0
        if ring is not None and before == 0:
            self._sound_from = ring.write_position
        self._feed()
        if ring is not None and self._started:
            if ring.read_position <= self._sound_from:
                # Sound after silence that the device has not begun to play: told of all of
                # it, each time more comes, the device may skip the silence it holds once
                # there is enough to refill it (an answer's first delta may be shorter than
                # its buffer).
                self._device.sound_arrived(ring.available())
            elif self._short_of_a_period(before):
                self._device.sound_arrived(ring.available(), after_silence=False)
        if response:
            # Only now: a device period running meanwhile must not count the ring, still
            # empty before the feed above, as run dry.
            self._streaming = True
        return mark

    def play_earcon(self, kind: Earcon | str) -> int:
        return self.play(earcon(kind, EARCON_RATE), None, response=False)

    def finish(self) -> None:
        """Everything queued so far is complete: notify once its last sample has been played.

        ``drained`` is set and ``on_drained`` called (on the loop) when the device has
        played the last sample queued before this call: it was handed to the device, and
        the device has since asked for what it held ahead of it (see ``buffer_frames``).
        Earcons queued afterwards do not cancel that; more response audio (``play()``) does,
        until the next ``finish()``.
        """
        self._streaming = False
        if not (self._queue and self._queue[-1].flush):
            self._queue.append(_Queued(self._last_item, _EMPTY, self._queued_total, flush=True))
        self._finish_requested = True
        self._feed()
        ring = self._ring
        if ring is not None and self._started and self._short_of_a_period(ring.available()):
            # A device waiting for more of the answer (see NOT_YET) plays its tail now.
            self._device.sound_arrived(ring.available(), after_silence=False)
        self._loop.call_soon(self._check_drained)

    def _short_of_a_period(self, samples: int) -> bool:
        fmt = self._format
        return fmt is not None and samples < fmt.period_frames * fmt.channels

    def clear(self) -> Interrupted:
        """Barge-in: silence from the next device period on; drop everything queued.

        What the sound device still holds is discarded too, so the speaker itself goes
        quiet within a period. Returns the newest response item and how much of it was
        played: handed to the device and not discarded there.
        """
        unheard = 0
        fmt = self._format
        if self._started and fmt is not None:
            held = self._device.drop_buffered()
            if held:
                # The device holds at most the periods it was handed last; of those, only
                # their sound was counted as played (silence from an underrun or from
                # before the answer was not), so only that is taken back.
                periods = -(-held // fmt.period_frames)
                unheard = min(held * fmt.channels, self._log.sound_in_last(periods))
        self._discard(unheard)
        item = self._last_item
        return Interrupted(item, self.played_ms(item) if item is not None else 0)

    def _discard(self, unheard: int = 0) -> None:
        """Drop everything not yet handed to the device, and ``unheard`` samples of what was."""
        self._streaming = False
        self._want_feed = False
        self._cancel_finish()
        self._queue.clear()
        self._staged = _EMPTY
        if self._resampler is not None:
            self._resampler.reset()
        if self._ring is not None:
            handed = self._ring.read_position - unheard
            for segment in self._segments:
                if segment.end > handed:
                    segment.end = max(segment.start, handed)
            self._ring.clear()
        self.drained.set()

    def _cancel_finish(self) -> None:
        self._finish_requested = False
        self._finish_pos = _NEVER
        if any(queued.flush for queued in self._queue):
            self._queue = deque(queued for queued in self._queue if not queued.flush)

    def _feed(self) -> None:
        """Move queued audio into the ring as far as it has room."""
        ring, resampler, fmt = self._ring, self._resampler, self._format
        if ring is None or resampler is None or fmt is None:
            if self._finish_requested and all(q.flush for q in self._queue):
                self._queue.clear()
                self._finish_pos = 0  # nothing was queued: drained at once
            return
        channels = fmt.channels
        while True:
            if len(self._staged) == 0:
                if not self._queue:
                    break
                queued = self._queue.popleft()
                if queued.flush:
                    converted = resampler.flush()
                    if self._finish_requested:
                        self._finish_pos = ring.write_position + len(converted) * channels
                else:
                    converted = resampler.process(queued.samples)
                    self._marks.append((queued.mark, ring.write_position))
                self._staged = upmix(scale(converted, self._gain), channels)
                self._staged_item = queued.item_id
                continue
            room = ring.free()
            room -= room % channels
            if room == 0:
                break
            start = ring.write_position
            written = ring.write(self._staged[:room])
            self._staged = self._staged[written:]
            self._note_segment(self._staged_item, start, start + written, fmt)
        self._want_feed = bool(self._queue) or len(self._staged) > 0

    def _note_segment(self, item_id: str | None, start: int, end: int, fmt: StreamFormat) -> None:
        last = self._segments[-1] if self._segments else None
        if last is not None and last.item_id == item_id and last.end == start:
            last.end = end
        else:
            per_ms = fmt.rate * fmt.channels / 1000
            self._segments.append(_Segment(item_id, start, end, per_ms))

    def _check_drained(self) -> None:
        ring, fmt = self._ring, self._format
        position = ring.read_position if ring is not None else 0
        if not self._finish_requested or position < self._finish_pos or self._want_feed:
            return
        if ring is not None and fmt is not None and self._started:
            # Handed is not heard: the device plays what it holds first. Each period it
            # asks for after the last sample means one period of that played.
            held = -(-self._device.buffer_frames // fmt.period_frames)
            if held and self._log.reached(self._finish_pos, held + 1) <= held:
                return  # the device side wakes us at each period until then
        self._finish_requested = False
        self._finish_pos = _NEVER
        self.drained.set()
        if self.on_drained is not None:
            self.on_drained()

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed to the device so far (for item truncation)."""
        handed = self._ring.read_position if self._ring is not None else 0
        total = 0.0
        for segment in self._segments:
            if segment.item_id == item_id:
                total += max(0, min(segment.end, handed) - segment.start) / segment.samples_per_ms
        return int(total)

    def handed_ns(self, mark: int) -> int | None:
        """When the first sample of the audio ``play()`` returned ``mark`` for reached the device.

        None if it has not been played yet (or was cleared, or is too old to remember).
        """
        position = next((p for m, p in self._marks if m == mark), None)
        if position is None:
            return None
        records = self._log.snapshot()
        played = records[(records[:, 0] > position) & (records[:, 1] > 0)]
        return int(played[0, 2]) if len(played) else None

    def first_render_after_ns(self, t_ns: int) -> int | None:
        """Time of the first device callback after ``t_ns`` (after clear(): the silent one)."""
        records = self._log.snapshot()
        later = records[records[:, 2] > t_ns]
        return int(later[0, 2]) if len(later) else None

    def render_log(self) -> npt.NDArray[np.int64]:
        """Per callback: (ring read position after it, real samples in it, monotonic ns)."""
        return self._log.snapshot()

    @property
    def queued_ms(self) -> float:
        """Audio not yet handed to the device (ring + loop-side queue), in ms."""
        fmt = self._format
        waiting = sum(len(q.samples) for q in self._queue) * 1000 / SPEAKER_RATE
        if fmt is None or self._ring is None:
            return waiting
        in_ring = self._ring.available() + len(self._staged)
        return waiting + in_ring / fmt.channels / fmt.rate * 1000

    @property
    def callbacks(self) -> int:
        return self._log.count
