"""The appliance: one asyncio loop where every decision goes through ``state.py``.

:class:`Appliance` turns what happens (button, session events, speaker drained, timers)
into :class:`~appliance.state.Event` values, asks :func:`~appliance.state.transition` what
to do, and carries the steps out on the edges: the audio, the LED, the voice session.

- Steps that touch the audio or the LED run at once (a barge-in silences the speaker
  within one audio period); steps that talk to the service go through one ordered
  command queue, so a commit always follows the audio before it and a truncate follows
  its cancel.
- The microphone streams to the session only while the state machine has the mic open and
  the session is ready; until then (connecting) the mic ring keeps the first seconds.
- Timers (idle timeout, reconnect) are loop timers that post events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.ai.voicelive.models import (
    ServerEventConversationItemInputAudioTranscriptionCompleted,
    ServerEventError,
    ServerEventInputAudioBufferSpeechStarted,
    ServerEventInputAudioBufferSpeechStopped,
    ServerEventResponseAudioTranscriptDelta,
    ServerEventResponseAudioTranscriptDone,
    ServerEventResponseCreated,
    ServerEventResponseDone,
)

from appliance import state
from appliance.audio import Audio
from appliance.errors import ApplianceError, AudioDeviceError, ServiceError
from appliance.hardware.patterns import pattern_for
from appliance.state import ErrorKind, Event, PlayEarcon, ShowLed, State
from appliance.system.journal import fields, set_context
from appliance.system.notify import format_status
from appliance.voice.backoff import Backoff, OutageLog
from appliance.voice.session import AudioDelta, Disconnected, SessionEvent, ToolCalled

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.hardware.controls import LedPlayer
    from appliance.hardware.simulated import TerminalView
    from appliance.system.notify import Notifier
    from appliance.voice.session import VoiceSession

log = logging.getLogger(__name__)

# Service errors that mean "this turn has nothing to answer" rather than a failure.
_EMPTY_TURN_CODES = frozenset({"input_audio_buffer_commit_empty"})
_HARMLESS_ERROR_CODES = frozenset({"response_cancel_not_active"})
MIN_TURN_MS = 100  # the service's smallest commit
SESSION_CLOSE_S = 1.0  # of the 2 s a stop may take, what closing the connection may use
SPEAKER_LINGER_S = 0.5  # the output stream stays open this long after the last sound
# How often the running streams are checked for a device that failed or went silent (an
# unplugged device, a hung sound server): nothing else would tell.
AUDIO_CHECK_S = 1.0


@dataclass
class TurnClock:
    """Per-turn figures: end of user speech -> first answer audio at the speaker, and
    barge-in -> speaker silent. Times are time.monotonic_ns()."""

    speech_ended_ns: int | None = None
    first_audio_mark: int | None = None  # the speaker mark of the answer's first sample
    first_audio_response: str | None = None  # the response whose first audio that was


class Appliance:
    """The device's behaviour on one loop. Build it with its edges; ``run()`` until stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        audio: Audio,
        led: LedPlayer,
        session_factory: Callable[[Appliance], VoiceSession],
        notifier: Notifier | None = None,
        view: TerminalView | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.audio = audio
        self.led = led
        self.notifier = notifier
        self.view = view
        self.backoff = backoff or Backoff()
        self.outage = OutageLog(logging.getLogger("appliance.outage"))
        self.context = state.initial(
            settings.behaviour.button_mode,
            half_duplex=settings.audio.half_duplex,
            server_interrupts=True,
        )
        self.session = session_factory(self)
        self.audio.speaker.on_drained = self._speaker_drained
        # A device that fails says so at once; one that stalls says nothing (see _watch_audio).
        self.audio.mic.on_failure = self.audio.speaker.on_failure = self._check_audio
        self.last_error: str | None = None
        self.started_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._commands: deque[tuple[str, Callable[[], Awaitable[object]]]] = deque()
        self._commands_waiting = asyncio.Event()
        self._can_stream = asyncio.Event()
        self._streams_running = asyncio.Event()  # set when a stream starts (see _watch_audio)
        self._send_lock = asyncio.Lock()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._speaker_stop: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._interrupted_responses: deque[str] = deque(maxlen=16)
        self._truncate_target: tuple[str, int] | None = None
        self._last_failure: ServiceError | Disconnected | ErrorKind = ErrorKind.OFFLINE
        # Since an audio device failed, until a stream has run for AUDIO_CHECK_S.
        self._device_failing = False
        self._assistant_text = ""
        self._clock = TurnClock()
        self._stop_requested = asyncio.Event()
        self._restart_requested = False
        self._turn_samples = 0  # audio sent since the last commit or clear (manual turns)
        self._turn_too_short = False
        self._tasks: asyncio.TaskGroup | None = None
        self._barge_in_from = 0
        self._press_ns: int | None = None
        self._first_delta_ns = 0
        self.exit_code = 0
        self._dispatching = False
        self._pending: deque[tuple[Event, ErrorKind | None]] = deque()
        self._event = Event.PRESS  # the event whose steps are being carried out

    # ---- the one place where events are decided ---------------------------------------------

    def handle(self, event: Event, error: ErrorKind | None = None) -> None:
        """Apply an event now (events raised while carrying out steps queue behind it)."""
        self._pending.append((event, error))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                self._apply(*self._pending.popleft())
        finally:
            self._dispatching = False

    def _apply(self, event: Event, error: ErrorKind | None) -> None:
        before = self.context
        result = state.transition(before, event, error)
        self.context = result.context
        if not result.handled:
            log.debug(
                "%s ignored in %s", event.value, before.state.value, extra=fields(event=event.value)
            )
            return
        if result.state is not before.state:
            set_context(state=result.state.value)
            log.info(
                "%s -> %s on %s",
                before.state.value,
                result.state.value,
                event.value,
                extra=fields(event=event.value),
            )
        self._event = event
        for step in result.steps:
            self._carry_out(step)
        self._after_transition(before)

    def _after_transition(self, before: state.Context) -> None:
        ctx = self.context
        streaming = ctx.mic_open and ctx.link is state.Link.OPEN and self.session.ready
        if streaming:
            self._can_stream.set()
        else:
            self._can_stream.clear()
        if ctx.state is State.RESPONDING:
            self._start_speaker()
        elif ctx.state in (State.IDLE, State.ERROR):
            self.audio.speaker.release()
        self._stop_speaker_later()
        if self.notifier is not None and ctx.state is not before.state:
            self.notifier.status(format_status(ctx.state.value, self.last_error))
        self._maybe_restart()

    # ---- carrying out steps -----------------------------------------------------------------

    def _carry_out(self, step: state.Step) -> None:
        if isinstance(step, ShowLed):
            self.led.show(step.pattern)
            if self.view is not None:
                self.view.state(self.context.state.value, self.led.pattern)
            return
        if isinstance(step, PlayEarcon):
            if self.settings.behaviour.earcons:
                self._start_speaker()
                self.audio.speaker.play_earcon(step.earcon)
            return
        handler = getattr(self, f"_do_{step.value}")
        handler()

    def _do_open_mic(self) -> None:
        # The outcome is handled in this same dispatch, before any button event can come
        # between: a retry in the error state waits for it.
        retrying = self.context.state is State.ERROR
        try:
            self.audio.mic.start()
            self._streams_running.set()
            if retrying:
                # Either device may be the one that failed: a retry that opened only the mic
                # would show "listening" and fail again at the first earcon or answer.
                self._start_speaker(report=False)
        except AudioDeviceError as exc:
            self._log_device_failure(exc)
            self.handle(Event.FAILED, ErrorKind.DEVICE)
        else:
            if retrying:
                # Recovered, as far as the state goes; the outage ends once the streams have
                # kept running (see _note_working_audio).
                self.handle(Event.AUDIO_OPENED)

    def _do_close_mic(self) -> None:
        self.audio.mic.stop()

    def _do_stop_playback(self) -> None:
        started_ns = time.monotonic_ns()
        interrupted = self.audio.speaker.clear()
        for response_id in (self.session.response_id, self._clock.first_audio_response):
            if response_id is not None:
                self._interrupted_responses.append(response_id)
        if interrupted.item_id is not None:
            self._truncate_target = (interrupted.item_id, interrupted.played_ms)
        if self._event in (Event.PRESS, Event.SPEECH_STARTED):  # a barge-in, not a hang-up
            self._loop.call_later(0.25, self._log_barge_in, started_ns)

    def _do_cancel_response(self) -> None:
        self._command("cancel", self.session.cancel_response)

    def _do_truncate(self) -> None:
        target, self._truncate_target = self._truncate_target, None
        if target is None:
            return
        item_id, played_ms = target
        self._command("truncate", lambda: self.session.truncate(item_id, played_ms))

    def _do_commit_input(self) -> None:
        # Everything captured up to the release belongs to this turn: take it now, before the
        # mic closes, and send it ahead of the commit.
        rest = self.audio.mic.read()
        self._clock.speech_ended_ns = time.monotonic_ns()
        self._start_speaker()  # for the answer
        turn_ms = (self._turn_samples + len(rest)) * 1000 / self.session.input_sample_rate
        self._turn_samples = 0
        self._turn_too_short = turn_ms < MIN_TURN_MS
        if self._turn_too_short:
            # The service refuses to commit less than 100 ms; a tap is not a question.
            log.info("turn of %.0f ms is too short to send", turn_ms)
            self._loop.call_soon(self.handle, Event.TURN_EMPTY)
            self._command("clear input", self.session.clear_input)
            return

        async def send_and_commit() -> None:
            async with self._send_lock:
                if len(rest):
                    await self.session.send_audio(rest)
                if not await self.session.commit():
                    self._turn_too_short = True  # no connection: nothing to answer either
                    self._loop.call_soon(self.handle, Event.TURN_EMPTY)

        self._command("commit", send_and_commit)

    def _do_create_response(self) -> None:
        async def create() -> None:
            if not self._turn_too_short:
                await self.session.create_response()

        self._command("response.create", create)

    def _do_clear_input(self) -> None:
        self.audio.mic.read()  # what was captured before the press is not part of the turn
        self._turn_samples = 0
        self._command("clear input", self.session.clear_input)

    def _do_connect(self) -> None:
        self._command("connect", self._start_connecting)

    def _do_disconnect(self) -> None:
        self._assistant_text = ""
        self._command("disconnect", self._disconnect)

    def _do_start_idle_timer(self) -> None:
        self._do_stop_idle_timer()
        self._idle_timer = self._loop.call_later(
            self.settings.behaviour.idle_timeout_s, self.handle, Event.IDLE_TIMEOUT
        )

    def _do_stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _do_schedule_retry(self) -> None:
        self._do_cancel_retry()
        delay = self.backoff.next_delay(self._last_failure)
        self.outage.failed(self._last_failure, delay)
        self._retry_timer = self._loop.call_later(delay, self.handle, Event.RETRY_TIMER)

    def _do_cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    # ---- the service command queue ----------------------------------------------------------

    def _command(self, what: str, run: Callable[[], Awaitable[object]]) -> None:
        self._commands.append((what, run))
        self._commands_waiting.set()

    async def _run_commands(self) -> None:
        while True:
            await self._commands_waiting.wait()
            self._commands_waiting.clear()
            while self._commands:
                what, run = self._commands.popleft()
                try:
                    await run()
                except ApplianceError as exc:
                    log.warning("%s failed: %s", what, exc)

    async def _start_connecting(self) -> None:
        await self._stop_connecting()
        assert self._tasks is not None
        self._connecting = self._tasks.create_task(self._connect(), name="connect")

    async def _stop_connecting(self) -> None:
        task, self._connecting = self._connecting, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError  # we were cancelled ourselves while waiting

    async def _connect(self) -> None:
        self.handle(Event.CONNECTED)
        try:
            await self.session.connect()
        except ServiceError as exc:
            self._failed(exc, exc.kind)
            return
        except Exception as exc:  # a bug must not wedge the device: count it as a failure
            log.exception("connecting failed unexpectedly")
            self._failed(ServiceError(f"unexpected: {exc}"), ErrorKind.SERVICE)
            return
        self.backoff.connected()
        outage = self.outage.recovered()
        set_context(session=self.session.session_id or "")
        log.info(
            "session %s ready%s",
            self.session.session_id,
            f" after an outage of {outage:.1f} s" if outage else "",
        )
        self.handle(Event.SESSION_READY)

    async def _disconnect(self) -> None:
        await self._stop_connecting()
        await self.session.disconnect(end_conversation=True)
        self.outage.reset()
        set_context(session="")

    # ---- microphone to session --------------------------------------------------------------

    async def _stream_microphone(self) -> None:
        mic = self.audio.mic
        while True:
            await self._can_stream.wait()
            chunk = await mic.next_chunk()  # a microphone that went quiet: see _watch_audio
            self.led.catch_up()
            if self.view is not None and self.view.live:
                self.view.mic_level(mic.level.rms)
            if not self._can_stream.is_set():
                continue  # the session went away meanwhile; this audio has nowhere to go
            async with self._send_lock:
                if await self.session.send_audio(chunk):
                    self._turn_samples += len(chunk)
                    if self._press_ns is not None:
                        self._log_press_to_audio()

    # ---- session events ---------------------------------------------------------------------

    def on_session_event(self, event: SessionEvent) -> None:
        if isinstance(event, AudioDelta):
            self._play(event)
        elif isinstance(event, Disconnected):
            self._last_failure = event
            self.last_error = event.cause
            log.warning("connection lost: %s (close code %s)", event.cause, event.close_code)
            self.handle(Event.DISCONNECTED, event.kind)
        elif isinstance(event, ToolCalled):
            log.info("tool %s %s", event.name, "ran" if event.ok else f"failed: {event.output}")
        elif isinstance(event, ServerEventInputAudioBufferSpeechStarted):
            self._barge_in_from = time.monotonic_ns()
            self.handle(Event.SPEECH_STARTED)
        elif isinstance(event, ServerEventInputAudioBufferSpeechStopped):
            self._clock.speech_ended_ns = time.monotonic_ns()
            self.audio.mic.turn_ended()
            self._start_speaker()  # an answer is likely: have the stream running for it
            self.handle(Event.SPEECH_STOPPED)
        elif isinstance(event, ServerEventResponseCreated):
            self._assistant_text = ""
            self.handle(Event.RESPONSE_STARTED)
        elif isinstance(event, ServerEventResponseDone):
            self._response_done(event)
        elif isinstance(event, ServerEventResponseAudioTranscriptDelta):
            if event.response_id not in self._interrupted_responses:
                self._assistant_text += event.delta or ""
                if self.view is not None:
                    self.view.transcript("assistant", self._assistant_text, final=False)
        elif isinstance(event, ServerEventResponseAudioTranscriptDone):
            if self.view is not None and event.response_id not in self._interrupted_responses:
                self.view.transcript("assistant", event.transcript or "", final=True)
        elif isinstance(event, ServerEventConversationItemInputAudioTranscriptionCompleted):
            if self.view is not None:
                self.view.transcript("user", event.transcript or "", final=True)
        elif isinstance(event, ServerEventError):
            self._service_error(event)

    def _play(self, delta: AudioDelta) -> None:
        if delta.response_id in self._interrupted_responses:
            return  # still in flight when the answer was interrupted
        mark = self.audio.speaker.play(delta.pcm, delta.item_id)
        clock = self._clock
        if delta.response_id != clock.first_audio_response:  # a response's audio is contiguous
            clock.first_audio_mark = mark
            clock.first_audio_response = delta.response_id
            self._first_delta_ns = delta.received_ns
            self._loop.call_later(0.2, self._log_response_latency)

    def _response_done(self, event: ServerEventResponseDone) -> None:
        response = event.response
        response_id = response.id if response is not None else None
        status = response.status if response is not None else None
        if status == "failed":
            log.warning("the service failed to answer: %s", response.status_details)
        calls_tool = response is not None and any(
            getattr(item, "type", None) == "function_call" for item in (response.output or [])
        )
        if response_id not in self._interrupted_responses and not calls_tool:
            # The answer is complete; the speaker tells us when its last sample has played.
            self.audio.speaker.finish()
        self.handle(Event.RESPONSE_DONE)

    def _speaker_drained(self) -> None:
        self.handle(Event.PLAYBACK_DONE)
        self._stop_speaker_later()

    def _service_error(self, event: ServerEventError) -> None:
        error = event.error
        code = getattr(error, "code", None)
        message = getattr(error, "message", "")
        if code in _EMPTY_TURN_CODES:
            log.info("nothing to answer: %s", message)
            self.handle(Event.TURN_EMPTY)
        elif code in _HARMLESS_ERROR_CODES:
            log.debug("service: %s (%s)", message, code)
        else:
            log.warning("service error %s: %s", code, message)

    # ---- hardware ---------------------------------------------------------------------------

    def _failed(self, error: ServiceError, kind: ErrorKind) -> None:
        self._last_failure = error
        self.last_error = str(error)
        self.handle(Event.FAILED, kind)

    def on_button(self, event: Event) -> None:
        if event is Event.PRESS:
            self._barge_in_from = time.monotonic_ns()
        self.handle(event)
        if event is Event.PRESS:
            # Time the press to the first audio on its way, unless it ended the conversation.
            opened = self.context.mic_open and self.context.state is not State.IDLE
            self._press_ns = self._barge_in_from if opened else None

    async def _watch_audio(self) -> None:
        """Check the running streams every AUDIO_CHECK_S while any runs (see _check_audio).

        Polled, because a device that stalls sends nothing (one that fails is reported at
        once, through the streams' on_failure); and on its own, because the speaker may be
        the only stream (push-to-talk closes the microphone for the answer).
        With no stream running, as in idle, this does not wake.
        """
        mic, speaker = self.audio.mic, self.audio.speaker
        while True:
            await self._streams_running.wait()
            await asyncio.sleep(AUDIO_CHECK_S)
            if not self._check_audio():
                self._note_working_audio()
            if not (mic.started or speaker.started):
                self._streams_running.clear()  # set again when one starts

    def _check_audio(self) -> bool:
        """Report a running stream whose device failed or stopped calling back, and stop it.

        The error state this leads to retries the microphone; the speaker is started
        afresh when it is next needed. Returns whether there was one.
        """
        for stream in (self.audio.mic, self.audio.speaker):
            failure = stream.status().failure
            if failure is not None:
                stream.stop()
                self._device_failed(AudioDeviceError(failure))
                return True
        return False

    def _device_failed(self, exc: AudioDeviceError) -> None:
        self._log_device_failure(exc)
        self._loop.call_soon(self.handle, Event.FAILED, ErrorKind.DEVICE)

    def _log_device_failure(self, exc: AudioDeviceError) -> None:
        self.last_error = str(exc)
        self._last_failure = ErrorKind.DEVICE
        # Once at WARNING; the retries that fail until it works again, at DEBUG.
        if self._device_failing:
            log.debug("audio device still failing: %s", exc)
        else:
            log.warning("audio device failed: %s", exc)
        self._device_failing = True

    def _note_working_audio(self) -> None:
        """End a device outage once a stream has kept running for AUDIO_CHECK_S.

        Not when a stream starts: a device that starts and fails at once would otherwise
        log its failure at WARNING, and "works again", on every retry, and restart the
        backoff's steps each time.
        """
        if not self._device_failing or self.context.state is State.ERROR:
            return
        for stream in (self.audio.mic, self.audio.speaker):
            if stream.status().healthy and stream.running_s >= AUDIO_CHECK_S:
                self._device_failing = False
                if self.outage.kind is ErrorKind.DEVICE:
                    self.backoff.connected()  # the next failure's backoff starts afresh
                    self.outage.recovered()  # logs how long the audio was gone
                else:  # no retries were needed, or a connection outage is under way
                    log.info("audio device works again")
                return

    def _start_speaker(self, *, report: bool = True) -> None:
        """Have the output stream running; ``report=False`` raises what it would report."""
        if self._speaker_stop is not None:
            self._speaker_stop.cancel()
            self._speaker_stop = None
        speaker = self.audio.speaker
        if speaker.started:
            return
        try:
            speaker.start()
        except AudioDeviceError as exc:
            if not report:
                raise
            self._device_failed(exc)
        else:
            self._streams_running.set()

    def _stop_speaker_later(self) -> None:
        """Stop the output stream once it has been quiet for a moment.

        A running stream costs CPU every period even when silent; starting one takes a few
        milliseconds, which is why it starts as soon as an answer is likely (speech ended)
        and lingers a little after the last sound.
        """
        if self._speaker_stop is not None:
            self._speaker_stop.cancel()
            self._speaker_stop = None
        speaker = self.audio.speaker
        if not speaker.started or self.context.state is State.RESPONDING:
            return
        if not speaker.drained.is_set():
            speaker.finish()  # an earcon is playing: we hear back once it has played
            return
        self._speaker_stop = self._loop.call_later(SPEAKER_LINGER_S, self._stop_speaker)

    def _stop_speaker(self) -> None:
        self._speaker_stop = None
        speaker = self.audio.speaker
        if self.context.state is not State.RESPONDING and speaker.drained.is_set():
            # In a conversation the next answer is likely: its stream starts quicker when
            # the device keeps it open (released when the conversation ends).
            speaker.stop(keep_open=self.context.state is State.LISTENING)

    # ---- figures ----------------------------------------------------------------------------

    def _log_response_latency(self, tries: int = 10) -> None:
        """Once the answer's first sample has reached the device (checked every 0.2 s)."""
        clock = self._clock
        if clock.speech_ended_ns is None or clock.first_audio_mark is None:
            return
        handed = self.audio.speaker.handed_ns(clock.first_audio_mark)
        if handed is None:
            if tries > 1 and self.audio.speaker.started:
                self._loop.call_later(0.2, self._log_response_latency, tries - 1)
            return
        latency_ms = (handed - clock.speech_ended_ns) / 1e6
        delta_ms = (handed - self._first_delta_ns) / 1e6
        log.info(
            "answer heard %.0f ms after the end of speech (first audio delta to speaker %.1f ms)",
            latency_ms,
            delta_ms,
            extra=fields(
                event="response_audio", response_latency=latency_ms, delta_to_speaker=delta_ms
            ),
        )
        clock.speech_ended_ns = None
        clock.first_audio_mark = None

    def _log_press_to_audio(self) -> None:
        assert self._press_ns is not None
        elapsed_ms = (time.monotonic_ns() - self._press_ns) / 1e6
        self._press_ns = None
        log.info(
            "first audio sent %.1f ms after the press",
            elapsed_ms,
            extra=fields(event="press_to_audio", press_to_audio=elapsed_ms),
        )

    def _log_barge_in(self, started_ns: int) -> None:
        silent = self.audio.speaker.first_render_after_ns(started_ns)
        origin = self._barge_in_from or started_ns  # when the press or speech_started came
        if silent is None:
            return
        barge_ms = (silent - origin) / 1e6
        log.info(
            "speaker silent %.1f ms after the interruption",
            barge_ms,
            extra=fields(event="barge_in", barge_in=barge_ms),
        )

    # ---- running ----------------------------------------------------------------------------

    def stop(self, code: int = 0) -> None:
        self.exit_code = code
        self._stop_requested.set()

    async def run(self) -> int:
        """Run until stop(); every task is awaited before returning (one shutdown path)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(self._run_commands(), name="commands")
                tasks.create_task(self._stream_microphone(), name="microphone")
                tasks.create_task(self._watch_audio(), name="audio watch")
                tasks.create_task(self.led.run(), name="led")
                tasks.create_task(self._until_stopped(), name="stop")
                self.handle_ready()
        except* _Stopped:
            pass
        finally:
            await self._shutdown()
        return self.exit_code

    async def _until_stopped(self) -> None:
        await self._stop_requested.wait()
        raise _Stopped  # ends the task group: every other task is cancelled and awaited

    def handle_ready(self) -> None:
        set_context(state=self.context.state.value)
        self.led.show(state.LedPattern.IDLE)
        if self.view is not None:
            self.view.state(State.IDLE.value, pattern_for(state.LedPattern.IDLE))
        if self.notifier is not None:
            self.notifier.ready("idle: press the button to talk")
        log.info("ready: press the button to talk")

    async def _shutdown(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        self._do_stop_idle_timer()
        self._do_cancel_retry()
        await self._stop_connecting()
        try:
            # A service that does not answer the close frame must not hold up a stop.
            async with asyncio.timeout(SESSION_CLOSE_S):
                await self.session.close()
        except TimeoutError:
            log.debug("the connection did not close within %.1f s; leaving it", SESSION_CLOSE_S)
        self.audio.mic.stop()
        self.audio.speaker.stop()

    # ---- reload -----------------------------------------------------------------------------

    def apply_live(self, settings: Settings) -> None:
        """Take a reloaded configuration: volume, mic gain, LED and timings apply at once."""
        self.settings = settings
        self.audio.speaker.volume = settings.audio.volume
        self.audio.mic.gain_db = settings.audio.mic_gain_db
        self.led.set_heartbeat(settings.behaviour.led_heartbeat)
        logging.getLogger().setLevel(settings.logging.level)

    def restart_when_idle(self) -> None:
        """End this run as soon as no conversation is going on (the runtime rebuilds)."""
        self._restart_requested = True
        self._maybe_restart()

    def _maybe_restart(self) -> None:
        ctx = self.context
        if self._restart_requested and ctx.state is State.IDLE and not ctx.in_conversation:
            self.stop()

    # ---- what the device tools may do -------------------------------------------------------

    @property
    def volume(self) -> int:
        return self.audio.speaker.volume

    def set_volume(self, percent: int) -> int:
        self.audio.speaker.volume = max(0, min(100, int(percent)))
        return self.audio.speaker.volume

    def end_conversation(self) -> None:
        self._loop.call_soon(self.handle, Event.HANG_UP)

    def status(self) -> Mapping[str, Any]:
        return {
            "state": self.context.state.value,
            "uptime_s": round(time.monotonic() - self.started_at),
            "volume_percent": self.volume,
            "last_error": self.last_error,
        }


class _Stopped(Exception):
    """Raised inside the task group to end it: the one way the appliance stops."""
