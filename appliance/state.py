"""The appliance's behaviour as a pure transition table.

``transition(context, event)`` maps the current :class:`Context` and one :class:`Event`
to a new context and the :class:`Action` list the caller must carry out, in order.
Nothing here does I/O, awaits, logs or reads a clock: the asyncio loop in ``app.py``
feeds events in and executes the actions, which keeps every rule testable on its own.

Besides the visible :class:`State`, the context tracks what the actions have switched
on (mic, connection, idle timer, retry timer), so the machine never asks for a mic to
open twice or forgets to close it, and tests can check those invariants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class State(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LISTENING = "listening"
    RESPONDING = "responding"
    ERROR = "error"


class ButtonMode(StrEnum):
    TOGGLE = "toggle"
    PUSH_TO_TALK = "push_to_talk"


class ErrorKind(StrEnum):
    """Error classes the user can tell apart by the LED."""

    OFFLINE = "offline"  # network down, service unreachable, connection dropped
    AUTH = "auth"  # credential or endpoint refused (401/403, bad config)
    RATE_LIMITED = "rate_limited"  # 429, connection quota
    DEVICE = "device"  # audio device vanished or busy
    SERVICE = "service"  # anything else the service reported


class Link(StrEnum):
    """The state of the connection to Voice Live, as far as the machine asked for it."""

    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"


class Event(StrEnum):
    PRESS = "press"
    RELEASE = "release"
    LONG_PRESS = "long_press"  # the button was held for the hold time (after PRESS)
    CONNECTED = "connected"  # socket open, session not configured yet
    SESSION_READY = "session_ready"  # session.updated received: audio may flow
    SPEECH_STARTED = "speech_started"  # server VAD heard the user start
    SPEECH_STOPPED = "speech_stopped"
    RESPONSE_STARTED = "response_started"  # response.created
    RESPONSE_DONE = "response_done"  # response.done (any status); audio may still be playing
    PLAYBACK_DONE = "playback_done"  # the speaker played the last sample of the answer
    TURN_EMPTY = "turn_empty"  # a manual turn had nothing to commit, no answer will come
    DISCONNECTED = "disconnected"  # the connection ended (payload: error kind)
    FAILED = "failed"  # connecting failed or a device failed (payload: error kind)
    IDLE_TIMEOUT = "idle_timeout"
    RETRY_TIMER = "retry_timer"
    HANG_UP = "hang_up"  # the model called the end-conversation tool: end after its answer
    AUDIO_OPENED = "audio_opened"  # a retry's OPEN_MIC opened the mic and the speaker


class Action(StrEnum):
    OPEN_MIC = "open_mic"  # start capturing; audio streams once the session is ready
    CLOSE_MIC = "close_mic"
    STOP_PLAYBACK = "stop_playback"  # clear the speaker ring now
    CANCEL_RESPONSE = "cancel_response"  # response.cancel (only emitted when one is active)
    TRUNCATE = "truncate"  # conversation.item.truncate to the audio actually played
    COMMIT_INPUT = "commit_input"  # flush captured audio, input_audio_buffer.commit
    CREATE_RESPONSE = "create_response"
    CLEAR_INPUT = "clear_input"  # input_audio_buffer.clear before a manual turn
    CONNECT = "connect"  # open (or re-open) the session; history is kept
    DISCONNECT = "disconnect"  # close the session and end the conversation (forget history)
    START_IDLE_TIMER = "start_idle_timer"  # (re)start
    STOP_IDLE_TIMER = "stop_idle_timer"
    SCHEDULE_RETRY = "schedule_retry"  # arm the reconnect timer from the backoff policy
    CANCEL_RETRY = "cancel_retry"


class LedPattern(StrEnum):
    IDLE = "idle"  # off, or a dim heartbeat
    CONNECTING = "connecting"  # fast blink
    LISTENING = "listening"  # solid on
    RESPONDING = "responding"  # slow pulse
    ERROR_OFFLINE = "error_offline"
    ERROR_AUTH = "error_auth"
    ERROR_RATE_LIMITED = "error_rate_limited"
    ERROR_DEVICE = "error_device"
    ERROR_SERVICE = "error_service"


class Earcon(StrEnum):
    LISTENING = "listening"
    ENDED = "ended"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ShowLed:
    pattern: LedPattern


@dataclass(frozen=True, slots=True)
class PlayEarcon:
    earcon: Earcon


Step = Action | ShowLed | PlayEarcon

ERROR_PATTERNS: dict[ErrorKind, LedPattern] = {
    ErrorKind.OFFLINE: LedPattern.ERROR_OFFLINE,
    ErrorKind.AUTH: LedPattern.ERROR_AUTH,
    ErrorKind.RATE_LIMITED: LedPattern.ERROR_RATE_LIMITED,
    ErrorKind.DEVICE: LedPattern.ERROR_DEVICE,
    ErrorKind.SERVICE: LedPattern.ERROR_SERVICE,
}


@dataclass(frozen=True, slots=True)
class Context:
    """Everything the rules need to know. Build the first one with :func:`initial`."""

    mode: ButtonMode = ButtonMode.TOGGLE
    half_duplex: bool = False
    # The service ends a response itself when the user talks over it (interrupt_response),
    # so a speech barge-in must not send response.cancel as well.
    server_interrupts: bool = True
    state: State = State.IDLE
    link: Link = Link.CLOSED
    in_conversation: bool = False
    mic_open: bool = False
    button_down: bool = False
    response_active: bool = False  # between response.created and response.done
    awaiting_response: bool = False  # a manual turn was committed, response.created not seen
    turn_pending: bool = False  # push-to-talk: released while connecting, commit once ready
    hang_up_pending: bool = False  # end the conversation once the current answer has played
    idle_timer: bool = False
    retry_scheduled: bool = False
    error: ErrorKind | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    context: Context
    steps: tuple[Step, ...]
    handled: bool  # False when the event means nothing in this context

    @property
    def state(self) -> State:
        return self.context.state


def initial(
    mode: ButtonMode = ButtonMode.TOGGLE,
    *,
    half_duplex: bool = False,
    server_interrupts: bool = True,
) -> Context:
    return Context(mode=mode, half_duplex=half_duplex, server_interrupts=server_interrupts)


class _Builder:
    """Accumulates steps while keeping the context's bookkeeping consistent with them."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.steps: list[Step] = []

    def set(self, **changes: Any) -> None:
        self.ctx = replace(self.ctx, **changes)

    def enter(self, state: State, led: LedPattern | None = None) -> None:
        self.set(state=state)
        self.steps.append(ShowLed(led or _STATE_PATTERNS[state]))

    def earcon(self, earcon: Earcon) -> None:
        self.steps.append(PlayEarcon(earcon))

    def open_mic(self) -> None:
        if not self.ctx.mic_open:
            self.steps.append(Action.OPEN_MIC)
            self.set(mic_open=True)

    def close_mic(self) -> None:
        if self.ctx.mic_open:
            self.steps.append(Action.CLOSE_MIC)
            self.set(mic_open=False)

    def connect(self) -> None:
        if self.ctx.link is Link.CLOSED:
            self.steps.append(Action.CONNECT)
            self.set(link=Link.OPENING)

    def start_idle_timer(self) -> None:
        self.steps.append(Action.START_IDLE_TIMER)
        self.set(idle_timer=True)

    def stop_idle_timer(self) -> None:
        if self.ctx.idle_timer:
            self.steps.append(Action.STOP_IDLE_TIMER)
            self.set(idle_timer=False)

    def schedule_retry(self) -> None:
        if not self.ctx.retry_scheduled:
            self.steps.append(Action.SCHEDULE_RETRY)
            self.set(retry_scheduled=True)

    def cancel_retry(self) -> None:
        if self.ctx.retry_scheduled:
            self.steps.append(Action.CANCEL_RETRY)
            self.set(retry_scheduled=False)

    def interrupt(self, *, by_server: bool) -> None:
        """Silence the answer now and tell the service what was actually heard."""
        self.steps.append(Action.STOP_PLAYBACK)
        # A response asked for but not yet confirmed is as good as active: the cancel goes
        # out after the create, on the same ordered connection.
        answering = self.ctx.response_active or self.ctx.awaiting_response
        if answering and not (by_server and self.ctx.server_interrupts):
            self.steps.append(Action.CANCEL_RESPONSE)
        self.steps.append(Action.TRUNCATE)
        # Talking over a goodbye means the conversation goes on.
        self.set(awaiting_response=False, hang_up_pending=False)

    def end_conversation(self, *, earcon: bool = True) -> None:
        """Back to idle from anywhere: nothing open, nothing scheduled, history forgotten."""
        had_conversation = self.ctx.in_conversation or self.ctx.link is not Link.CLOSED
        if self.ctx.state is State.RESPONDING:
            self.steps.append(Action.STOP_PLAYBACK)
        self.close_mic()
        self.stop_idle_timer()
        self.cancel_retry()
        if had_conversation:
            self.steps.append(Action.DISCONNECT)
        self.set(
            link=Link.CLOSED,
            in_conversation=False,
            response_active=False,
            awaiting_response=False,
            turn_pending=False,
            hang_up_pending=False,
            error=None,
        )
        self.enter(State.IDLE)
        if earcon and had_conversation:
            self.earcon(Earcon.ENDED)

    def fail(self, kind: ErrorKind) -> None:
        """Enter the error state; the retry timer brings the conversation back."""
        first = self.ctx.error is None
        if self.ctx.state is State.RESPONDING:
            self.steps.append(Action.STOP_PLAYBACK)
        self.close_mic()
        if first:
            # The conversation gets one idle timeout to come back, not one per retry.
            self.start_idle_timer()
        self.schedule_retry()
        self.set(
            error=kind,
            response_active=False,
            awaiting_response=False,
            turn_pending=False,
            in_conversation=True,
        )
        self.enter(State.ERROR, ERROR_PATTERNS[kind])
        if first:
            self.earcon(Earcon.ERROR)

    def listen(self, *, earcon: bool) -> None:
        """The device hears the user: mic open, LED solid."""
        self.open_mic()
        self.enter(State.LISTENING)
        if earcon:
            self.earcon(Earcon.LISTENING)

    def result(self, handled: bool = True) -> Transition:
        return Transition(self.ctx, tuple(self.steps), handled)


_STATE_PATTERNS: dict[State, LedPattern] = {
    State.IDLE: LedPattern.IDLE,
    State.CONNECTING: LedPattern.CONNECTING,
    State.LISTENING: LedPattern.LISTENING,
    State.RESPONDING: LedPattern.RESPONDING,
    State.ERROR: LedPattern.ERROR_SERVICE,
}


def transition(ctx: Context, event: Event, error: ErrorKind | None = None) -> Transition:
    """Apply one event. ``error`` classifies DISCONNECTED and FAILED (default: offline)."""
    b = _Builder(ctx)
    # Bookkeeping that holds in every state.
    if event is Event.PRESS:
        b.set(button_down=True)
    elif event is Event.RELEASE:
        b.set(button_down=False)
    elif event is Event.RESPONSE_STARTED and ctx.link is Link.OPEN:
        b.set(response_active=True, awaiting_response=False)
    elif event is Event.RESPONSE_DONE and ctx.link is Link.OPEN:
        b.set(response_active=False)

    kind = error or ErrorKind.OFFLINE
    rules = _toggle if ctx.mode is ButtonMode.TOGGLE else _push_to_talk
    handled = _common(b, event, kind)
    if handled is None:
        handled = rules(b, event)
    if handled is None:
        # No rule: only the bookkeeping above applies. Response flags still matter later.
        handled = event in (Event.RESPONSE_STARTED, Event.RESPONSE_DONE) and b.ctx != ctx
    return b.result(handled)


def _common(b: _Builder, event: Event, kind: ErrorKind) -> bool | None:
    """Rules shared by both modes. None: the mode's own table decides."""
    state = b.ctx.state
    link = b.ctx.link
    if event is Event.CONNECTED:
        return link is Link.OPENING  # informational; SESSION_READY is what moves on
    if event is Event.SESSION_READY:
        if link is Link.CLOSED or (link is Link.OPEN and state is not State.ERROR):
            return False  # stale, or a renewal the session handled itself
        if state is State.ERROR:
            b.set(link=Link.OPEN)  # a device failed meanwhile; the retry carries on
            return True
        return _session_ready(b)
    if event in (Event.DISCONNECTED, Event.FAILED):
        if event is Event.DISCONNECTED or kind is not ErrorKind.DEVICE:
            b.set(link=Link.CLOSED)
        if state is State.IDLE:
            # A connection kept between push-to-talk turns dropped: the next press reconnects.
            return link is not Link.CLOSED
        if state is State.ERROR:
            # The audio a device retry was trying failed again, or something else broke
            # meanwhile: wait for the next retry, and show the newest cause.
            b.close_mic()
            b.schedule_retry()
            if kind is not b.ctx.error:
                b.set(error=kind)
                b.steps.append(ShowLed(ERROR_PATTERNS[kind]))
            return True
        b.fail(kind)
        return True
    if event is Event.AUDIO_OPENED:
        if state is not State.ERROR or not b.ctx.mic_open or link is not Link.OPEN:
            return False
        return _session_ready(b)
    if event is Event.RETRY_TIMER:
        if state is not State.ERROR or not b.ctx.retry_scheduled:
            return False
        b.set(retry_scheduled=False)
        return _retry(b)
    if event is Event.IDLE_TIMEOUT:
        if not b.ctx.idle_timer:
            return False
        b.set(idle_timer=False)
        b.end_conversation(earcon=b.ctx.mic_open)
        return True
    if event is Event.PRESS and state is State.ERROR:
        b.cancel_retry()  # a press in error retries at once
        return _retry(b)
    if event is Event.HANG_UP:
        if state is State.IDLE and not b.ctx.in_conversation:
            return False
        if state is State.RESPONDING:
            b.set(hang_up_pending=True)
            return True
        b.end_conversation()
        return True
    if (
        event is Event.PLAYBACK_DONE
        and state is State.RESPONDING
        and b.ctx.hang_up_pending
        and not (b.ctx.response_active or b.ctx.awaiting_response)
    ):
        b.end_conversation()
        return True
    return None


def _retry(b: _Builder) -> bool:
    if b.ctx.link is Link.OPEN:
        # Only a device failed; the session survived. Try the audio again, still in the
        # error state: the LED and the earcons say "listening" only once the devices have
        # opened (AUDIO_OPENED); if one fails again (FAILED), the next retry tries again.
        if b.ctx.mode is ButtonMode.TOGGLE or b.ctx.button_down:
            b.open_mic()
            return True
        return _session_ready(b)
    b.connect()
    if b.ctx.mode is ButtonMode.TOGGLE or b.ctx.button_down:
        b.open_mic()
    b.enter(State.CONNECTING)
    return True


def _session_ready(b: _Builder) -> bool:
    """The session takes audio now; where the conversation goes depends on how we got here."""
    first_connect = b.ctx.error is None
    # A fresh connection has no response in flight.
    b.set(link=Link.OPEN, in_conversation=True, error=None, response_active=False)
    b.cancel_retry()
    if b.ctx.mode is ButtonMode.TOGGLE:
        b.start_idle_timer()
        b.listen(earcon=True)
        return True
    if b.ctx.button_down:
        b.stop_idle_timer()
        b.listen(earcon=first_connect)
        return True
    if b.ctx.turn_pending:
        # Released while connecting: what was said meanwhile waits in the mic ring. Send it.
        b.set(turn_pending=False)
        _commit_turn(b)
        return True
    b.close_mic()
    b.start_idle_timer()
    b.enter(State.IDLE)
    return True


def _commit_turn(b: _Builder) -> None:
    b.stop_idle_timer()
    b.steps += [Action.COMMIT_INPUT, Action.CREATE_RESPONSE]
    b.set(awaiting_response=True)
    b.close_mic()
    b.enter(State.RESPONDING)


def _toggle(b: _Builder, event: Event) -> bool | None:
    state = b.ctx.state
    if event is Event.LONG_PRESS:
        if state is State.IDLE:
            return False
        b.end_conversation()
        return True
    if event is Event.PRESS:
        if state is State.IDLE:
            b.set(in_conversation=True)
            b.connect()
            b.open_mic()
            b.enter(State.CONNECTING)
        elif state is State.RESPONDING:
            b.interrupt(by_server=False)
            b.start_idle_timer()
            b.listen(earcon=False)
        else:  # connecting or listening: the conversation ends
            b.end_conversation()
        return True

    if state is State.LISTENING:
        if event is Event.SPEECH_STARTED:
            b.stop_idle_timer()
            return True
        if event is Event.SPEECH_STOPPED:
            b.start_idle_timer()
            return True
        if event is Event.RESPONSE_STARTED:
            b.stop_idle_timer()
            if b.ctx.half_duplex:
                b.close_mic()
            b.enter(State.RESPONDING)
            return True
    elif state is State.RESPONDING:
        if event is Event.SPEECH_STARTED:
            b.interrupt(by_server=True)
            b.listen(earcon=False)
            return True
        if event is Event.PLAYBACK_DONE and not b.ctx.response_active:
            b.start_idle_timer()
            b.listen(earcon=False)
            return True
    return None


def _push_to_talk(b: _Builder, event: Event) -> bool | None:
    state = b.ctx.state
    if event is Event.PRESS:
        if state is State.IDLE:
            b.stop_idle_timer()
            b.set(in_conversation=True)
            if b.ctx.link is Link.OPEN:
                b.steps.append(Action.CLEAR_INPUT)
                b.listen(earcon=True)
            else:
                b.connect()
                b.open_mic()
                b.enter(State.CONNECTING)
            return True
        if state is State.CONNECTING:
            if b.ctx.mic_open:
                return False
            b.open_mic()
            return True
        if state is State.RESPONDING:
            b.interrupt(by_server=False)
            b.steps.append(Action.CLEAR_INPUT)
            b.listen(earcon=False)
            return True
        return False  # listening: the button is already down
    if event is Event.RELEASE:
        if state is State.CONNECTING and b.ctx.mic_open:
            b.set(turn_pending=True)
            return True
        if state is State.LISTENING:
            _commit_turn(b)
            return True
        return False
    if state is State.RESPONDING and (
        event is Event.TURN_EMPTY
        or (event is Event.PLAYBACK_DONE and not (b.ctx.response_active or b.ctx.awaiting_response))
    ):
        b.set(awaiting_response=False)
        b.start_idle_timer()
        b.enter(State.IDLE)
        return True
    return None
