"""Sound cards through PyAudio (PortAudio): finding devices, choosing rates, the device threads.

Each open stream has a device thread (:class:`_Pump`) doing blocking reads or writes of
one period; it only hands samples to the :class:`~appliance.audio.streams.Microphone` or
:class:`~appliance.audio.streams.Speaker` that owns the stream. Those device-side
callbacks allocate no audio buffers (the speaker fills the same preallocated numpy array
every period, which PyAudio writes without a copy), never block and never log.

PortAudio enumerates devices once, when it is initialised; a USB device plugged in later is
seen after :meth:`PortAudio.refresh`, which the streams call by themselves when a device
cannot be found and no stream is open.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from appliance.audio.ring import Samples
from appliance.audio.streams import NOT_YET, StreamFormat
from appliance.errors import AudioDeviceError, SoundServerHung

log = logging.getLogger(__name__)

Direction = Literal["input", "output"]
DeviceSpec = int | str | None
_T = TypeVar("_T")
Handler = Callable[..., int | None]
"""A stream's device-side callback, once per period: an input stream hands the microphone
the period's bytes as PortAudio read them; an output stream has the speaker fill the
pump's preallocated array (:data:`~appliance.audio.streams.Render`)."""

# How long the loop waits for a PortAudio call that talks to the sound server (opening,
# starting, probing or closing a stream), and for PortAudio's start-up, which opens every
# ALSA device to list them. Normally a few milliseconds and well under a second.
CALL_TIMEOUT_S = 5.0
INIT_TIMEOUT_S = 15.0
# A device thread told to stop leaves its read or write within a period. One still in it
# after this long is stuck there: the sound server hangs, and the close need not be waited for.
STUCK_S = 1.0
PREFERRED_RATE = 24000
STANDARD_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
_FALLBACK_RATES = (48000, 44100, 16000, 32000, 22050)

# is_format_supported's answers that mean "not this format" rather than "not this device".
_UNSUPPORTED_FORMAT = {-9994, -9997, -9998}  # sample format, sample rate, channel count

# PortAudio error codes worth a sentence of their own.
_PA_ERRORS = {
    -9985: "the device is busy or unavailable (is another program using it?)",
    -9993: "the device cannot be opened (unplugged, or its sound server is not running)",
    -9996: "no such device",
    -9997: "the device does not accept this sample rate",
    -9998: "the device does not accept this number of channels",
    -9999: "PortAudio internal error (the device may have been unplugged)",
}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int
    default_input: bool = False
    default_output: bool = False

    def channels(self, direction: Direction) -> int:
        return self.max_input_channels if direction == "input" else self.max_output_channels


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Keep ALSA's and JACK's probing chatter off the terminal; log it at DEBUG instead.

    Both write straight to file descriptor 2 while PortAudio probes devices. Anything
    another thread writes to stderr meanwhile is logged at DEBUG rather than lost.
    """
    try:
        capture = os.memfd_create("portaudio-stderr")  # no file system needed
        saved = os.dup(2)
    except OSError:  # no stderr, or no memfd: let the chatter through
        yield
        return
    try:
        os.dup2(capture, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
        os.lseek(capture, 0, os.SEEK_SET)
        chatter = b""
        while block := os.read(capture, 65536):
            chatter += block
        if chatter.strip():
            log.debug("PortAudio/ALSA said:\n%s", chatter.decode(errors="replace").strip())
    finally:
        os.close(saved)
        os.close(capture)


def _error_code(exc: BaseException) -> int | None:
    """PortAudio's error code in a PyAudio exception (its place in the args varies)."""
    return next((a for a in exc.args[:2] if isinstance(a, int)), None)


def _describe_os_error(exc: BaseException) -> str:
    code = _error_code(exc)
    text = next((a for a in exc.args if isinstance(a, str)), str(exc))
    if code in _PA_ERRORS:
        return f"{_PA_ERRORS[code]} ({text})"
    return text


class PortAudio:
    """The process's PortAudio session, shared by the microphone and the speaker."""

    def __init__(
        self, *, call_timeout_s: float = CALL_TIMEOUT_S, init_timeout_s: float = INIT_TIMEOUT_S
    ) -> None:
        self._pa: Any = None
        self.generation = 0  # counts PortAudio sessions: device indices hold within one
        self._open_streams = 0
        self.call_timeout_s = call_timeout_s
        self.init_timeout_s = init_timeout_s
        # The call the loop gave up waiting for, while it has not returned (see _bounded),
        # and the streams to close once it has. Helper threads change these and the
        # count of open streams, under the lock.
        self._hung: tuple[str, float] | None = None
        self._closes_after_hang: list[tuple[Any, _Pump | None]] = []
        self._lock = threading.Lock()
        self._closed = False
        # PortAudio's JACK backend would otherwise try to start a JACK server.
        os.environ.setdefault("JACK_NO_START_SERVER", "1")

    def _session(self) -> Any:
        if self._closed:
            raise AudioDeviceError("audio is closed")
        if self._pa is None:
            import pyaudio

            try:
                self._pa = self._bounded(
                    "initialising PortAudio",
                    pyaudio.PyAudio,
                    if_late=lambda late: late.terminate(),
                    timeout_s=self.init_timeout_s,
                )
                self.generation += 1
            except OSError as exc:
                raise AudioDeviceError(
                    f"cannot initialise PortAudio: {_describe_os_error(exc)}"
                ) from exc
            _release_alsa_plugins()
        return self._pa

    @property
    def open_streams(self) -> int:
        """Streams opened and not yet closed (a close that waits for a hung server counts)."""
        return self._open_streams

    @property
    def hung_s(self) -> float:
        """How long the call the loop gave up on has not returned (0 while none hangs)."""
        hung = self._hung
        return 0.0 if hung is None else time.monotonic() - hung[1]

    @property
    def hung(self) -> str | None:
        """The PortAudio call that has not returned although the loop gave up on it, if any."""
        hung = self._hung
        return None if hung is None else f"{hung[0]} has not returned for {self.hung_s:.0f} s"

    def _bounded(
        self,
        what: str,
        call: Callable[[], _T],
        *,
        if_late: Callable[[_T], object] | None = None,
        timeout_s: float | None = None,
        blocked_s: float = 0.0,
    ) -> _T:
        """Run a PortAudio call that may talk to the sound server, waiting for it a bounded time.

        A sound server that hangs (PulseAudio or PipeWire stopped or deadlocked) makes the
        ALSA ``pulse`` plugin wait for it for ever, in whatever PortAudio call is running.
        The loop must not hang with it, or nothing would answer the button again: the call
        runs on a helper thread, and after ``timeout_s`` the loop gives up on it with an
        AudioDeviceError. While it has not returned, every further call fails at once:
        PortAudio's calls must not overlap, and the next one would only hang as well. When
        it returns at last, ``if_late`` gets what it returned (to release a stream opened
        for nobody), the streams whose close had to wait are closed, and audio works again.

        ``blocked_s``: the call is known to have been blocked that long already (it waits
        for a device thread stuck in PortAudio): it is given up on at once.
        """
        if self._hung is not None:
            raise SoundServerHung(f"the sound system does not answer: {self.hung}")
        if blocked_s:
            timeout_s = 0.0
        elif timeout_s is None:
            timeout_s = self.call_timeout_s
        handoff = threading.Lock()
        returned = threading.Event()
        outcome: list[tuple[bool, Any]] = []
        given_up = False

        def run() -> None:
            result: tuple[bool, Any]
            try:
                result = (True, call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting loop
                result = (False, exc)
            with handoff:
                if not given_up:
                    outcome.append(result)
                    returned.set()
                    return
            self._after_hang(what, result, if_late)

        threading.Thread(target=run, name="portaudio-call", daemon=True).start()
        with _quiet_stderr():  # PortAudio's probing chatter; not around our own logging
            finished = returned.wait(timeout_s)
        if not finished:
            waited_s = max(timeout_s, blocked_s)
            with handoff:
                if not outcome:
                    given_up = True
                    with self._lock:
                        self._hung = (what, time.monotonic() - waited_s)
            if given_up:
                log.error(
                    "%s did not return within %.0f s: the sound server hangs. Audio fails "
                    "until it answers again.",
                    what,
                    waited_s,
                )
                raise SoundServerHung(
                    f"the sound system does not answer ({what} did not return within "
                    f"{waited_s:g} s)"
                )
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _after_hang(
        self,
        what: str,
        result: tuple[bool, Any],
        if_late: Callable[[Any], object] | None,
    ) -> None:
        """On the helper thread, once a call the loop gave up on has returned after all."""
        ok, value = result
        if ok and if_late is not None:
            try:
                if_late(value)
            except OSError as exc:
                log.debug("releasing what %s made: %s", what, exc)
        while True:
            with self._lock:
                if not self._closes_after_hang:
                    seconds = self.hung_s
                    self._hung = None
                    break
                stream, pump = self._closes_after_hang.pop()
            self._abort_and_close(stream, pump)
            with self._lock:
                self._open_streams -= 1
        log.warning("%s returned after %.0f s: the sound server answers again", what, seconds)

    def warm_up(self) -> None:
        """Initialise PortAudio now (it takes a moment) rather than at the first start()."""
        try:
            self._session()
        except AudioDeviceError as exc:
            log.warning("%s; will retry when the audio starts", exc)

    def refresh(self) -> bool:
        """Enumerate devices afresh (after a USB device came or went); only with no stream open."""
        if self._open_streams or self._hung is not None or self._pa is None:
            return self._pa is None
        pa, self._pa = self._pa, None
        self._bounded("ending PortAudio", pa.terminate)
        return True

    def devices(self) -> list[DeviceInfo]:
        pa = self._session()
        default_in = _default_index(pa.get_default_input_device_info)
        default_out = _default_index(pa.get_default_output_device_info)
        found = []
        for index in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(index)
            try:
                host_api = str(pa.get_host_api_info_by_index(info["hostApi"])["name"])
            except (OSError, KeyError):
                host_api = "?"
            found.append(
                DeviceInfo(
                    index=index,
                    name=str(info["name"]),
                    host_api=host_api,
                    max_input_channels=int(info["maxInputChannels"]),
                    max_output_channels=int(info["maxOutputChannels"]),
                    default_rate=int(info["defaultSampleRate"]),
                    default_input=index == default_in,
                    default_output=index == default_out,
                )
            )
        return found

    def find(self, spec: DeviceSpec, direction: Direction) -> DeviceInfo:
        """The device a setting names: its index, part of its name, or None for the default."""
        devices = [d for d in self.devices() if d.channels(direction) > 0]
        variable = f"APPLIANCE_{direction.upper()}_DEVICE"
        if not devices:
            raise AudioDeviceError(f"no audio {direction} device found")
        if spec is None:
            for device in devices:
                if device.default_input if direction == "input" else device.default_output:
                    return device
            return devices[0]
        if isinstance(spec, int):
            for device in devices:
                if device.index == spec:
                    return device
            raise AudioDeviceError(
                f"no {direction} device has index {spec} ({variable}); "
                f"{direction} devices: {_names(devices)}"
            )
        wanted = spec.strip().lower()
        exact = [d for d in devices if d.name.lower() == wanted]
        partial = [d for d in devices if wanted in d.name.lower()]
        if exact or partial:
            return (exact or partial)[0]
        raise AudioDeviceError(
            f"no {direction} device name contains {spec!r} ({variable}); "
            f"{direction} devices: {_names(devices)}"
        )

    def accepts(self, device: DeviceInfo, direction: Direction, rate: int, channels: int) -> bool:
        """Whether the device opens for int16 audio at this rate and channel count.

        Probed by opening a stream (not started) and closing it again, not with PortAudio's
        Pa_IsFormatSupported, which opens the device just the same: PyAudio holds the GIL
        in that call, so a hung sound server would stop every thread of the process, not
        only the one waiting for it (see :meth:`_bounded`).
        """
        import pyaudio

        pa = self._session()

        def probe() -> bool:
            try:
                stream = pa.open(
                    rate=rate,
                    channels=channels,
                    format=pyaudio.paInt16,
                    start=False,
                    **{direction: True, f"{direction}_device_index": device.index},
                )
            except (OSError, ValueError) as exc:
                if _error_code(exc) in _UNSUPPORTED_FORMAT:
                    return False
                raise
            _close_quietly(stream)
            return True

        try:
            return self._bounded(f"probing the {direction} device {device.name!r}", probe)
        except (OSError, ValueError) as exc:
            raise AudioDeviceError(
                f"{direction} device {device.name!r}: {_describe_os_error(exc)}"
            ) from exc

    def rates(self, device: DeviceInfo, direction: Direction, channels: int = 1) -> list[int]:
        """The standard rates the device accepts for int16 audio with ``channels`` channels."""
        if device.channels(direction) < channels:
            return []
        return [r for r in STANDARD_RATES if self.accepts(device, direction, r, channels)]

    def open_stream(self, **kwargs: Any) -> Any:
        pa = self._session()
        try:
            stream = self._bounded(
                "opening an audio stream", lambda: pa.open(**kwargs), if_late=_close_quietly
            )
        except OSError as exc:
            raise AudioDeviceError(_describe_os_error(exc)) from exc
        with self._lock:
            self._open_streams += 1
        return stream

    def start_stream(self, stream: Any, *, output: bool) -> int:
        """Start an open stream; for output, return how many frames its buffer holds."""

        import pyaudio

        def start() -> int:
            # The C module's call: PyAudio's Stream still thinks a stream it did not stop
            # itself (see pause_stream) is running, and would not start it again.
            pyaudio.pa.start_stream(stream._stream)
            # Nothing is written yet: all of the device's buffer is free.
            return int(stream.get_write_available()) if output else 0

        return self._bounded("starting an audio stream", start)

    def pause_stream(self, stream: Any, pump: _Pump) -> None:
        """Stop its device thread and abort the stream, leaving it open to start again."""
        pump.cut_off()
        try:
            self._bounded(
                "stopping an audio stream",
                lambda: self._abort(stream, pump),
                blocked_s=_stuck_s(pump),
            )
        except OSError as exc:  # the device failed: not worth keeping open
            raise AudioDeviceError(_describe_os_error(exc)) from exc

    def close_stream(self, stream: Any, pump: _Pump | None = None) -> None:
        """Stop its device thread, abort (stopping would drain the device) and close.

        A vanished or hung sound server can make PortAudio block for ever (seen with a
        sound server killed under the ALSA pulse plugin: libpulse deadlocks). The loop
        does not wait for longer than ``call_timeout_s`` (see :meth:`_bounded`); the pump
        is already cut off from the microphone or speaker, and a stream whose close has
        to wait is closed once the sound server answers again.
        """
        if pump is not None:
            pump.cut_off()
        with self._lock:
            if self._hung is not None:
                self._closes_after_hang.append((stream, pump))
                return
        try:
            self._bounded(
                "closing an audio stream",
                lambda: self._abort_and_close(stream, pump),
                if_late=lambda _: self._count_closed(),
                blocked_s=0.0 if pump is None else _stuck_s(pump),
            )
        except AudioDeviceError:
            return  # counted as open until this close returns after all (if_late)
        self._count_closed()

    def _count_closed(self) -> None:
        with self._lock:
            self._open_streams -= 1

    @staticmethod
    def _abort(stream: Any, pump: _Pump | None) -> None:
        """Wait for its device thread, then abort the stream (stopping would drain it)."""
        import pyaudio

        if pump is not None:
            pump.join()  # PortAudio calls on one stream must not overlap
        # PyAudio's Stream has no abort method; its C module has.
        pyaudio.pa.abort_stream(stream._stream)

    @staticmethod
    def _abort_and_close(stream: Any, pump: _Pump | None) -> None:
        try:
            PortAudio._abort(stream, pump)
        except OSError as exc:  # the device failed; closing still frees it
            log.debug("aborting a failed stream: %s", exc)
        _close_quietly(stream)

    def close(self) -> None:
        pa, self._pa = self._pa, None
        self._closed = True
        if pa is None:
            return
        try:
            self._bounded("ending PortAudio", pa.terminate)
        except AudioDeviceError as exc:  # a call hangs, or this one did: leave it be
            log.warning("PortAudio not ended: %s", exc)

    def __enter__(self) -> PortAudio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _stuck_s(pump: _Pump) -> float:
    """How long the cut-off ``pump``'s thread has been stuck in PortAudio (0: it is out)."""
    return 0.0 if pump.leaves_portaudio(STUCK_S) else STUCK_S


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except OSError as exc:  # the device failed; closing still frees it
        log.debug("closing a failed stream: %s", exc)


def _release_alsa_plugins() -> None:
    """Let ALSA unload the plugins PortAudio's device listing loaded, and its parsed config.

    To list devices, PortAudio opens every PCM the ALSA configuration defines; on a
    system with libasound2-plugins (Debian's pulseaudio pulls it in) that loads the a52
    and lavrate codecs with libavcodec, x265, rav1e, JACK and more: about 10 MiB that
    stay resident for good, as ALSA caches its plugins. Freeing ALSA's global
    configuration (a public ALSA call; PortAudio makes it when it terminates) drops that
    cache; the next stream reads the configuration again and loads only what it uses.
    Only called right after PortAudio initialised, when no stream is open.
    """
    try:
        alsa = ctypes.CDLL("libasound.so.2")  # PortAudio's ALSA host API has it loaded
        result = alsa.snd_config_update_free_global()
    except (OSError, AttributeError) as exc:  # no ALSA (PortAudio on another host API)
        log.debug("ALSA's plugin cache not released: %s", exc)
        return
    if result < 0:
        log.debug("ALSA's plugin cache not released: error %d", result)


def _nobody_to_tell() -> None:
    """A failure callback for a stream not yet opened (a pump always gets open()'s)."""


def _default_index(getter: Callable[[], dict[str, Any]]) -> int | None:
    try:
        return int(getter()["index"])
    except (OSError, KeyError):
        return None


def _names(devices: Sequence[DeviceInfo]) -> str:
    return ", ".join(f"{d.index}: {d.name!r}" for d in devices)


class _Pump:
    """One open stream's device thread: a blocking read or write of one period at a time.

    PortAudio's callback mode would run our callback on its own thread, for which CPython
    creates (and maps memory for) a fresh thread state every period; a thread of our own
    keeps one, and blocking streams spare PortAudio's extra wake-ups as well. On the
    PulseAudio null devices of the benchmarks this is about half the process CPU of a
    stream (see ``scripts/bench audio``). The thread only moves samples between PortAudio
    and the handler, which is the microphone's or speaker's device-side callback.

    An output pump also empties the device when it holds nothing but silence and sound
    comes that can fill it again (see :meth:`_play`): an answer is then heard at once, not
    after the silence the device buffered while the service was thinking. It waits for
    room in the device where the loop can wake it, not inside PortAudio's write, so a
    barge-in's drop is carried out at once rather than after up to a period.

    A new stream gets a new pump, so a stream that could not be closed (see
    :meth:`PortAudio.close_stream`) can never reach the microphone or speaker again.
    """

    def __init__(
        self,
        stream: Any,
        direction: Direction,
        handler: Handler,
        stream_format: StreamFormat,
        on_failure: Callable[[], None],
    ) -> None:
        self.stream = stream
        self.direction = direction
        self.handler: Handler | None = handler
        self.on_failure = on_failure
        self.frames = frames = stream_format.period_frames
        self.channels = channels = stream_format.channels
        self.rate = stream_format.rate
        # Held while nobody wakes the output thread: the loop releases it to end its wait
        # for room (a drop, or the end). A bare lock is a binary semaphore that allocates
        # nothing per wait, unlike threading.Event.
        self._wake = threading.Lock()
        self._wake.acquire()
        self.buffer: Samples = np.zeros(frames * channels, dtype=np.int16)
        self.drop_requested = False  # set by the loop: discard what the device holds
        # Set by the loop: enough sound to refill the device arrived after silence.
        self.sound_waiting = False
        # Output: how many frames the device buffers ahead of what it plays (set at start).
        self.buffer_frames = 0
        # Output: waiting for an answer's next audio rather than pad a period with silence.
        self.waiting_for_sound = False
        self.sound_waits = 0  # how often it did
        self.silence_skips = 0  # sound that started on an emptied device (see _play)
        self.failure: str | None = None
        self.running = False
        self.thread = threading.Thread(
            target=self._capture if direction == "input" else self._play,
            name=f"audio-{direction}",
            daemon=True,
        )

    def start(self, buffer_frames: int = 0) -> None:
        self.buffer_frames = buffer_frames
        self.running = True
        self.thread.start()

    def cut_off(self) -> None:
        """Stop moving samples: the handler is not called again once a call in flight ends."""
        self.running = False
        self.handler = None
        self.wake()

    def request_drop(self) -> None:
        """Have the output thread discard what the device holds, now if it waits for room."""
        self.drop_requested = True
        self.wake()

    def sound_arrived(self, samples: int, *, after_silence: bool = True) -> None:
        """``samples`` of sound wait after silence: a device holding only silence, and
        waiting for room, drops it and takes them now instead of at its next period.
        Without ``after_silence``, only a thread waiting for the answer's next audio
        (see :meth:`_play`) is woken to take it."""
        if self.waiting_for_sound:
            self.wake()
        elif after_silence and samples >= self.buffer_frames * self.channels > 0:
            self.sound_waiting = True
            self.wake()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # not held: a wake-up is already pending
            self._wake.release()

    def join(self) -> None:
        """Wait until the thread is out of PortAudio (at most a period, unless it hangs)."""
        if self.thread.ident is not None:
            self.thread.join()

    def leaves_portaudio(self, within_s: float) -> bool:
        """Whether the cut-off thread ends within ``within_s`` (False: stuck in a call)."""
        if self.thread.ident is None:
            return True
        self.thread.join(within_s)
        return not self.thread.is_alive()

    def deliver(self, data: bytes) -> None:
        """One period captured: hand it to the microphone (the device side, every period)."""
        handler = self.handler
        if handler is not None:
            handler(data)

    def fill(self, can_wait: bool = False) -> int:
        """One period to play: the speaker fills the preallocated buffer (every period).

        Returns the samples of sound ready from this period on (0: it is silence), or, if
        the device ``can_wait``, NOT_YET: the speaker waits for more of an answer, and
        nothing was filled.
        """
        handler = self.handler
        if handler is None:
            self.buffer[:] = 0
            return 0
        return handler(self.buffer, can_wait) or 0

    def _capture(self) -> None:
        from pyaudio import _portaudio as pa

        read, stream, frames, deliver = (
            pa.read_stream,
            self.stream._stream,
            self.frames,
            self.deliver,
        )
        while self.running:
            try:
                # Not raising on an overflow: PyAudio closes the stream when it raises one.
                data = read(stream, frames, False)
            except OSError as exc:
                self._failed(exc)
                return
            deliver(data)

    def _play(self) -> None:
        from pyaudio import _portaudio as pa

        write, stream, frames, fill = pa.write_stream, self.stream._stream, self.frames, self.fill
        room_in, wait_for_wake = pa.get_stream_write_available, self._wake.acquire
        # How long until a period's room is free, by the room there is now (no float made
        # per period).
        waits = [(frames - room) / self.rate for room in range(frames)]
        buffer, buffer_periods = self.buffer, -(-self.buffer_frames // frames)
        buffer_samples = self.buffer_frames * self.channels
        # Without a known buffer nothing says what the device holds: never drop it then.
        may_skip = buffer_samples > 0
        # Periods written since the last one with sound, and whether any was written since
        # the device was last emptied: together, whether it holds nothing but silence.
        silent, emptied = buffer_periods, True
        # While the device holds more than half a period, a period an answer has not
        # filled yet waits for it; how long at most, by what the device holds.
        half, held_max = frames // 2, self.buffer_frames
        sound_waits = [max(held - half, 0) / self.rate for held in range(held_max + 1)]
        while self.running:
            try:
                room = room_in(stream)
                # (A drop requested while it waited for sound below is carried out at once.)
                if room < frames and not self.drop_requested:
                    # Waiting here rather than in the write lets a drop end the wait. Once,
                    # then the write waits for the rest: a stream stuck in a hung server
                    # stays stuck inside PortAudio, where closing it tells (see
                    # PortAudio.close_stream).
                    wait_for_wake(True, waits[room])
                    if self.handler is None:  # cut off while it waited
                        return
                    if self.sound_waiting:
                        self.sound_waiting = False
                        # Sound for a device that holds silence only: the fill below takes
                        # it now, and the silence is skipped. Behind sound, it is played
                        # after it, when there is room.
                        if not (may_skip and not emptied and silent >= buffer_periods):
                            continue
                    room = frames  # what it waited for
                if self.drop_requested:
                    self.drop_requested = False
                    self._restart(pa, stream)
                    silent, emptied = buffer_periods, True
                    room = held_max
                held = held_max - room
                ahead = fill(held > half)
                if ahead == NOT_YET:
                    # The answer's next audio has not come (it is late, or its first delta
                    # was shorter than the device's buffer) and the device can play on: wait
                    # for it rather than write silence into the answer. play() wakes this
                    # wait; at the latest it ends when the device holds half a period, and
                    # then the period is filled with whatever there is.
                    self.waiting_for_sound = True
                    self.sound_waits += 1
                    wait_for_wake(True, sound_waits[held])
                    self.waiting_for_sound = False
                    if self.handler is None:  # cut off while it waited
                        return
                    continue
                if not ahead:
                    silent += 1
                else:
                    if (
                        may_skip
                        and not emptied
                        and silent >= buffer_periods
                        and ahead >= buffer_samples
                    ):
                        # The device holds only silence, which would be played before this
                        # sound (an answer after the quiet while the service thought).
                        # Dropping it has the sound heard a buffer sooner; there is enough
                        # of it to fill the buffer again, so it is no likelier to run dry.
                        self._restart(pa, stream)
                        self.silence_skips += 1
                    silent = 0
                emptied = False
                # Not raising on an underflow: PyAudio closes the stream when it raises one.
                # There is room by now: this blocks for what the wait's estimate fell short.
                write(stream, buffer, frames, False)
            except OSError as exc:
                self._failed(exc)
                return

    @staticmethod
    def _restart(pa: Any, stream: Any) -> None:
        # Aborting drops the device's buffer at once (ALSA: snd_pcm_drop; the pulse plugin
        # flushes the server's too); the stream then starts afresh, empty.
        pa.abort_stream(stream)
        pa.start_stream(stream)

    def _failed(self, exc: OSError) -> None:
        if self.running:  # not cut off: a failure of the stream in use
            self.failure = _describe_os_error(exc)
            self.running = False
            self.on_failure()


class _PyAudioStream:
    """A microphone's or speaker's stream on a PortAudio device, opened and closed at will."""

    direction: Direction

    def __init__(
        self,
        portaudio: PortAudio,
        device: DeviceSpec = None,
        *,
        rate: int | None = None,
        period_ms: int = 20,
    ) -> None:
        self._portaudio = portaudio
        self._spec = device
        self._rate = rate
        self._period_ms = period_ms
        self._stream: Any = None
        self._pump: _Pump | None = None
        # The device, rate and channels the last stream opened with, and in which PortAudio
        # session: choosing probes the device a few times (each probe opens it through the
        # sound server), which would otherwise be paid again before every answer.
        self._chosen: tuple[int, DeviceInfo, int, int] | None = None
        self._past_silence_skips = 0
        self._past_sound_waits = 0
        self._buffer_frames = 0
        self._format: StreamFormat | None = None  # of the open stream
        self._paused = False  # the open stream was stopped, to start again (stop(keep_open))
        self._resumed = False  # the open stream is one that was paused, not a fresh one
        self._handler: Handler | None = None
        self._on_failure: Callable[[], None] = _nobody_to_tell
        self.description = f"{self.direction} device " + (
            "(system default)" if device is None else repr(device)
        )

    def _choose(self) -> tuple[DeviceInfo, int, int]:
        try:
            return self._choose_once()
        except AudioDeviceError:
            # PortAudio's device list is from when it started: a device plugged in (or a
            # sound server started) since then is only seen by a fresh PortAudio.
            if not self._portaudio.refresh():
                raise
            return self._choose_once()

    def _choose_once(self) -> tuple[DeviceInfo, int, int]:
        device = self._portaudio.find(self._spec, self.direction)
        probe = self._rate or PREFERRED_RATE
        channels = 1
        if not self._portaudio.accepts(device, self.direction, probe, 1):
            rate_any = self._rate or device.default_rate
            if device.channels(self.direction) >= 2 and self._portaudio.accepts(
                device, self.direction, rate_any, 2
            ):
                channels = 2
        return device, self._choose_rate(device, channels), channels

    def _choose_rate(self, device: DeviceInfo, channels: int) -> int:
        def accepts(rate: int) -> bool:
            return self._portaudio.accepts(device, self.direction, rate, channels)

        if self._rate is not None:
            if accepts(self._rate):
                return self._rate
            rates = self._portaudio.rates(device, self.direction, channels)
            raise AudioDeviceError(
                f"{self.direction} device {device.name!r} does not accept {self._rate} Hz "
                f"(APPLIANCE_DEVICE_RATE); it accepts: "
                + (", ".join(map(str, rates)) or "none of the standard rates")
            )
        for rate in (PREFERRED_RATE, device.default_rate, *_FALLBACK_RATES):
            if accepts(rate):
                return rate
        raise AudioDeviceError(
            f"{self.direction} device {device.name!r} accepts none of the usual sample rates "
            f"for 16-bit audio with {channels} channel(s)"
        )

    def open(self, handler: Handler, on_failure: Callable[[], None]) -> StreamFormat:
        """Open the stream (not started) that will hand each period to ``handler``.

        ``on_failure`` is called from the device thread if the started stream fails.
        """
        self._on_failure = on_failure
        if self._stream is not None:
            if not self._paused or self._format is None:
                raise RuntimeError(f"the {self.direction} stream is already open")
            # The stream stop(keep_open=True) left open: only a new device thread is needed.
            self._paused = False
            self._resumed = True
            self._handler = handler
            self._pump = _Pump(
                self._stream, self.direction, handler, self._format, self._on_failure
            )
            return self._format
        chosen = self._chosen
        if chosen is not None and chosen[0] == self._portaudio.generation:
            try:
                return self._open_with(handler, *chosen[1:])
            except AudioDeviceError:
                self._chosen = None  # the device may have changed since: choose afresh
        device, rate, channels = self._choose()
        stream_format = self._open_with(handler, device, rate, channels)
        self._chosen = (self._portaudio.generation, device, rate, channels)
        return stream_format

    def _open_with(
        self, handler: Handler, device: DeviceInfo, rate: int, channels: int
    ) -> StreamFormat:
        import pyaudio

        frames = max(1, round(rate * self._period_ms / 1000))
        index_key = f"{self.direction}_device_index"
        try:
            self._stream = self._portaudio.open_stream(
                rate=rate,
                channels=channels,
                format=pyaudio.paInt16,
                frames_per_buffer=frames,
                start=False,
                **{self.direction: True, index_key: device.index},
            )
        except AudioDeviceError as exc:
            raise AudioDeviceError(
                f"cannot open {self.direction} device {device.name!r} at {rate} Hz: {exc}"
            ) from exc
        self._format = StreamFormat(rate=rate, channels=channels, period_frames=frames)
        self._pump = _Pump(self._stream, self.direction, handler, self._format, self._on_failure)
        self._resumed = False
        self._handler = handler
        self.description = f"{self.direction} device {device.name!r}"
        return self._format

    def start(self) -> None:
        resumed, handler, chosen = self._resumed, self._handler, self._chosen
        self._resumed = False
        try:
            self._start_open_stream()
        except AudioDeviceError as exc:
            # A stream kept open across a sound server restart belongs to a connection
            # that is gone, and fails to start; a fresh one, in the same format, works.
            if (
                not resumed
                or handler is None
                or chosen is None
                or chosen[0] != self._portaudio.generation
                or isinstance(exc.__cause__, SoundServerHung)
            ):
                raise
            log.info(
                "the %s stream kept open does not start (%s): opened afresh", self.direction, exc
            )
            self._open_with(handler, *chosen[1:])
            self._start_open_stream()

    def _start_open_stream(self) -> None:
        if self._stream is None:
            raise RuntimeError(f"the {self.direction} stream is not open")
        try:
            # Output: the device thread keeps the buffer full, so this is also what a drop
            # discards.
            self._buffer_frames = self._portaudio.start_stream(
                self._stream, output=self.direction == "output"
            )
            assert self._pump is not None
            self._pump.start(self._buffer_frames)
        except AudioDeviceError as exc:
            self.stop()
            raise AudioDeviceError(f"cannot start {self.description}: {exc}") from exc
        except (OSError, RuntimeError) as exc:  # RuntimeError: no thread could be started
            self.stop()
            raise AudioDeviceError(
                f"cannot start {self.description}: {_describe_os_error(exc)}"
            ) from exc

    def failure(self) -> str | None:
        """Why the running stream stopped working, or None while it works."""
        if self._stream is None or self._paused:
            return None
        if self._pump is not None and self._pump.failure is not None:
            return f"{self.description} failed: {self._pump.failure}"
        try:
            if self._stream.is_active():
                return None
        except OSError as exc:
            return f"{self.description} failed: {_describe_os_error(exc)}"
        return f"{self.description} stopped (unplugged or failed)"

    def stop(self, *, keep_open: bool = False) -> None:
        """Stop the stream and close it; ``keep_open``: leave a working stream open, stopped.

        Opening a stream through a sound server takes milliseconds of the loop's time and
        of CPU; starting one that is open, about a third of that. The speaker's stream is
        kept open this way between the answers of a conversation.
        """
        stream, pump = self._stream, self._pump
        self._pump = None
        if pump is not None:
            self._past_silence_skips += pump.silence_skips
            self._past_sound_waits += pump.sound_waits
        if stream is None or (keep_open and self._paused):
            return
        if keep_open and pump is not None and pump.failure is None:
            try:
                self._portaudio.pause_stream(stream, pump)
            except AudioDeviceError as exc:  # hangs or failed: closed below (later, if it hangs)
                log.debug("the %s stream is closed, not kept open: %s", self.direction, exc)
            else:
                self._paused = True
                return
        self._stream, self._paused, self._format = None, False, None
        self._portaudio.close_stream(stream, pump)

    def close(self) -> None:
        self.stop()


class PyAudioInput(_PyAudioStream):
    """A capture stream; its device thread hands each period's bytes to the microphone."""

    direction: Direction = "input"


class PyAudioOutput(_PyAudioStream):
    """A playback stream; its device thread has the speaker fill one preallocated period."""

    direction: Direction = "output"

    @property
    def silence_skips(self) -> int:
        """Sounds that started on an emptied device instead of behind its buffered silence."""
        return self._past_silence_skips + (self._pump.silence_skips if self._pump else 0)

    def sound_arrived(self, samples: int, *, after_silence: bool = True) -> None:
        """Sound (``samples`` of it) arrived after silence: if the device holds nothing but
        silence and the sound can refill it, the device thread skips that silence and
        starts the sound now, not at its next period. Sound behind sound
        (``after_silence=False``) ends a wait of the device thread for it."""
        pump = self._pump
        if pump is not None and pump.running:
            pump.sound_arrived(samples, after_silence=after_silence)

    @property
    def sound_waits(self) -> int:
        """How often device threads waited for an answer's next audio rather than play
        silence (counted like ``silence_skips``)."""
        pump = self._pump
        return self._past_sound_waits + (pump.sound_waits if pump is not None else 0)

    @property
    def buffer_frames(self) -> int:
        """Frames the running device holds ahead of what it plays (3 periods on the ALSA
        pulse device): the device thread writes a period whenever one has been played."""
        pump = self._pump
        return self._buffer_frames if pump is not None and pump.running else 0

    def drop_buffered(self) -> int:
        """Have the device thread discard the device's buffer: at once while it waits for
        room, which is most of the time; else right after its current write.

        Without this, a barge-in would still be heard for as long as that buffer lasts
        (three periods on the ALSA pulse device) after the speaker goes silent.
        """
        pump = self._pump
        if pump is None or not pump.running:
            return 0
        pump.request_drop()
        return self._buffer_frames


def device_table(portaudio: PortAudio) -> list[tuple[DeviceInfo, list[int], list[int]]]:
    """Every device with the rates it accepts for mono 16-bit input and output."""
    rows = []
    for device in portaudio.devices():
        input_rates = portaudio.rates(device, "input") if device.max_input_channels else []
        output_rates = portaudio.rates(device, "output") if device.max_output_channels else []
        if device.max_input_channels >= 2 and not input_rates:
            input_rates = portaudio.rates(device, "input", 2)
        if device.max_output_channels >= 2 and not output_rates:
            output_rates = portaudio.rates(device, "output", 2)
        rows.append((device, input_rates, output_rates))
    return rows
