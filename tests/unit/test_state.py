"""The transition table, pair by pair, and properties over random event sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.state import (
    Action,
    ButtonMode,
    Context,
    Earcon,
    ErrorKind,
    Event,
    LedPattern,
    Link,
    PlayEarcon,
    ShowLed,
    State,
    Step,
    initial,
    transition,
)

IGNORED = None

# How each row's starting context is reached from the initial one.
PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    "toggle": {
        "idle": (),
        "connecting": ("press", "release"),
        "listening": ("press", "release", "session_ready"),
        "responding": ("press", "release", "session_ready", "response_started"),
        "error": ("press", "release", "failed"),
    },
    "push_to_talk": {
        "idle": (),
        # Between turns: the conversation and its connection are kept.
        "idle_warm": (
            "press",
            "session_ready",
            "release",
            "response_started",
            "response_done",
            "playback_done",
        ),
        "connecting": ("press",),
        "listening": ("press", "session_ready"),
        "responding": ("press", "session_ready", "release", "response_started"),
        "error": ("press", "release", "failed"),
    },
}

# (mode, starting state, event) -> (new state, steps) or IGNORED. FAILED carries ErrorKind.AUTH,
# DISCONNECTED the default (offline). Every state x event pair of both modes is listed.
EXPECTED: dict[tuple[str, str, str], tuple[str, str] | None] = {
    # toggle
    ("toggle", "idle", "press"): ("connecting", "connect open_mic led:connecting"),
    ("toggle", "idle", "release"): IGNORED,
    ("toggle", "idle", "long_press"): IGNORED,
    ("toggle", "idle", "connected"): IGNORED,
    ("toggle", "idle", "session_ready"): IGNORED,
    ("toggle", "idle", "speech_started"): IGNORED,
    ("toggle", "idle", "speech_stopped"): IGNORED,
    ("toggle", "idle", "response_started"): IGNORED,
    ("toggle", "idle", "response_done"): IGNORED,
    ("toggle", "idle", "playback_done"): IGNORED,
    ("toggle", "idle", "turn_empty"): IGNORED,
    ("toggle", "idle", "disconnected"): IGNORED,
    ("toggle", "idle", "failed"): IGNORED,
    ("toggle", "idle", "idle_timeout"): IGNORED,
    ("toggle", "idle", "retry_timer"): IGNORED,
    ("toggle", "idle", "hang_up"): IGNORED,
    ("toggle", "connecting", "press"): ("idle", "close_mic disconnect led:idle earcon:ended"),
    ("toggle", "connecting", "release"): IGNORED,
    ("toggle", "connecting", "long_press"): ("idle", "close_mic disconnect led:idle earcon:ended"),
    ("toggle", "connecting", "connected"): ("connecting", ""),
    ("toggle", "connecting", "session_ready"): (
        "listening",
        "start_idle_timer led:listening earcon:listening",
    ),
    ("toggle", "connecting", "speech_started"): IGNORED,
    ("toggle", "connecting", "speech_stopped"): IGNORED,
    ("toggle", "connecting", "response_started"): IGNORED,
    ("toggle", "connecting", "response_done"): IGNORED,
    ("toggle", "connecting", "playback_done"): IGNORED,
    ("toggle", "connecting", "turn_empty"): IGNORED,
    ("toggle", "connecting", "disconnected"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_offline earcon:error",
    ),
    ("toggle", "connecting", "failed"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_auth earcon:error",
    ),
    ("toggle", "connecting", "idle_timeout"): IGNORED,
    ("toggle", "connecting", "retry_timer"): IGNORED,
    ("toggle", "connecting", "hang_up"): ("idle", "close_mic disconnect led:idle earcon:ended"),
    ("toggle", "listening", "press"): (
        "idle",
        "close_mic stop_idle_timer disconnect led:idle earcon:ended",
    ),
    ("toggle", "listening", "release"): IGNORED,
    ("toggle", "listening", "long_press"): (
        "idle",
        "close_mic stop_idle_timer disconnect led:idle earcon:ended",
    ),
    ("toggle", "listening", "connected"): IGNORED,
    ("toggle", "listening", "session_ready"): IGNORED,
    ("toggle", "listening", "speech_started"): ("listening", "stop_idle_timer"),
    ("toggle", "listening", "speech_stopped"): ("listening", "start_idle_timer"),
    ("toggle", "listening", "response_started"): ("responding", "stop_idle_timer led:responding"),
    ("toggle", "listening", "response_done"): IGNORED,
    ("toggle", "listening", "playback_done"): IGNORED,
    ("toggle", "listening", "turn_empty"): IGNORED,
    ("toggle", "listening", "disconnected"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_offline earcon:error",
    ),
    ("toggle", "listening", "failed"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_auth earcon:error",
    ),
    ("toggle", "listening", "idle_timeout"): ("idle", "close_mic disconnect led:idle earcon:ended"),
    ("toggle", "listening", "retry_timer"): IGNORED,
    ("toggle", "listening", "hang_up"): (
        "idle",
        "close_mic stop_idle_timer disconnect led:idle earcon:ended",
    ),
    ("toggle", "responding", "press"): (
        "listening",
        "stop_playback cancel_response truncate start_idle_timer led:listening",
    ),
    ("toggle", "responding", "release"): IGNORED,
    ("toggle", "responding", "long_press"): (
        "idle",
        "stop_playback close_mic disconnect led:idle earcon:ended",
    ),
    ("toggle", "responding", "connected"): IGNORED,
    ("toggle", "responding", "session_ready"): IGNORED,
    ("toggle", "responding", "speech_started"): (
        "listening",
        "stop_playback truncate led:listening",
    ),
    ("toggle", "responding", "speech_stopped"): IGNORED,
    ("toggle", "responding", "response_started"): IGNORED,
    ("toggle", "responding", "response_done"): ("responding", ""),
    ("toggle", "responding", "playback_done"): IGNORED,
    ("toggle", "responding", "turn_empty"): IGNORED,
    ("toggle", "responding", "disconnected"): (
        "error",
        "stop_playback close_mic start_idle_timer schedule_retry led:error_offline earcon:error",
    ),
    ("toggle", "responding", "failed"): (
        "error",
        "stop_playback close_mic start_idle_timer schedule_retry led:error_auth earcon:error",
    ),
    ("toggle", "responding", "idle_timeout"): IGNORED,
    ("toggle", "responding", "retry_timer"): IGNORED,
    ("toggle", "responding", "hang_up"): ("responding", ""),
    ("toggle", "error", "press"): ("connecting", "cancel_retry connect open_mic led:connecting"),
    ("toggle", "error", "release"): IGNORED,
    ("toggle", "error", "long_press"): (
        "idle",
        "stop_idle_timer cancel_retry disconnect led:idle earcon:ended",
    ),
    ("toggle", "error", "connected"): IGNORED,
    ("toggle", "error", "session_ready"): IGNORED,
    ("toggle", "error", "speech_started"): IGNORED,
    ("toggle", "error", "speech_stopped"): IGNORED,
    ("toggle", "error", "response_started"): IGNORED,
    ("toggle", "error", "response_done"): IGNORED,
    ("toggle", "error", "playback_done"): IGNORED,
    ("toggle", "error", "turn_empty"): IGNORED,
    ("toggle", "error", "disconnected"): ("error", ""),  # the LED shows offline already
    ("toggle", "error", "failed"): ("error", "led:error_auth"),
    ("toggle", "error", "idle_timeout"): ("idle", "cancel_retry disconnect led:idle"),
    ("toggle", "error", "retry_timer"): ("connecting", "connect open_mic led:connecting"),
    ("toggle", "error", "hang_up"): (
        "idle",
        "stop_idle_timer cancel_retry disconnect led:idle earcon:ended",
    ),
    # push_to_talk
    ("push_to_talk", "idle", "press"): ("connecting", "connect open_mic led:connecting"),
    ("push_to_talk", "idle", "release"): IGNORED,
    ("push_to_talk", "idle", "long_press"): IGNORED,
    ("push_to_talk", "idle", "connected"): IGNORED,
    ("push_to_talk", "idle", "session_ready"): IGNORED,
    ("push_to_talk", "idle", "speech_started"): IGNORED,
    ("push_to_talk", "idle", "speech_stopped"): IGNORED,
    ("push_to_talk", "idle", "response_started"): IGNORED,
    ("push_to_talk", "idle", "response_done"): IGNORED,
    ("push_to_talk", "idle", "playback_done"): IGNORED,
    ("push_to_talk", "idle", "turn_empty"): IGNORED,
    ("push_to_talk", "idle", "disconnected"): IGNORED,
    ("push_to_talk", "idle", "failed"): IGNORED,
    ("push_to_talk", "idle", "idle_timeout"): IGNORED,
    ("push_to_talk", "idle", "retry_timer"): IGNORED,
    ("push_to_talk", "idle", "hang_up"): IGNORED,
    ("push_to_talk", "idle_warm", "press"): (
        "listening",
        "stop_idle_timer clear_input open_mic led:listening earcon:listening",
    ),
    ("push_to_talk", "idle_warm", "release"): IGNORED,
    ("push_to_talk", "idle_warm", "long_press"): IGNORED,
    ("push_to_talk", "idle_warm", "connected"): IGNORED,
    ("push_to_talk", "idle_warm", "session_ready"): IGNORED,
    ("push_to_talk", "idle_warm", "speech_started"): IGNORED,
    ("push_to_talk", "idle_warm", "speech_stopped"): IGNORED,
    ("push_to_talk", "idle_warm", "response_started"): ("idle", ""),
    ("push_to_talk", "idle_warm", "response_done"): IGNORED,
    ("push_to_talk", "idle_warm", "playback_done"): IGNORED,
    ("push_to_talk", "idle_warm", "turn_empty"): IGNORED,
    ("push_to_talk", "idle_warm", "disconnected"): ("idle", ""),
    ("push_to_talk", "idle_warm", "failed"): ("idle", ""),
    ("push_to_talk", "idle_warm", "idle_timeout"): ("idle", "disconnect led:idle"),
    ("push_to_talk", "idle_warm", "retry_timer"): IGNORED,
    ("push_to_talk", "idle_warm", "hang_up"): (
        "idle",
        "stop_idle_timer disconnect led:idle earcon:ended",
    ),
    ("push_to_talk", "connecting", "press"): IGNORED,
    ("push_to_talk", "connecting", "release"): ("connecting", ""),
    ("push_to_talk", "connecting", "long_press"): IGNORED,
    ("push_to_talk", "connecting", "connected"): ("connecting", ""),
    ("push_to_talk", "connecting", "session_ready"): (
        "listening",
        "led:listening earcon:listening",
    ),
    ("push_to_talk", "connecting", "speech_started"): IGNORED,
    ("push_to_talk", "connecting", "speech_stopped"): IGNORED,
    ("push_to_talk", "connecting", "response_started"): IGNORED,
    ("push_to_talk", "connecting", "response_done"): IGNORED,
    ("push_to_talk", "connecting", "playback_done"): IGNORED,
    ("push_to_talk", "connecting", "turn_empty"): IGNORED,
    ("push_to_talk", "connecting", "disconnected"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_offline earcon:error",
    ),
    ("push_to_talk", "connecting", "failed"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_auth earcon:error",
    ),
    ("push_to_talk", "connecting", "idle_timeout"): IGNORED,
    ("push_to_talk", "connecting", "retry_timer"): IGNORED,
    ("push_to_talk", "connecting", "hang_up"): (
        "idle",
        "close_mic disconnect led:idle earcon:ended",
    ),
    ("push_to_talk", "listening", "press"): IGNORED,
    ("push_to_talk", "listening", "release"): (
        "responding",
        "commit_input create_response close_mic led:responding",
    ),
    ("push_to_talk", "listening", "long_press"): IGNORED,
    ("push_to_talk", "listening", "connected"): IGNORED,
    ("push_to_talk", "listening", "session_ready"): IGNORED,
    ("push_to_talk", "listening", "speech_started"): IGNORED,
    ("push_to_talk", "listening", "speech_stopped"): IGNORED,
    ("push_to_talk", "listening", "response_started"): ("listening", ""),
    ("push_to_talk", "listening", "response_done"): IGNORED,
    ("push_to_talk", "listening", "playback_done"): IGNORED,
    ("push_to_talk", "listening", "turn_empty"): IGNORED,
    ("push_to_talk", "listening", "disconnected"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_offline earcon:error",
    ),
    ("push_to_talk", "listening", "failed"): (
        "error",
        "close_mic start_idle_timer schedule_retry led:error_auth earcon:error",
    ),
    ("push_to_talk", "listening", "idle_timeout"): IGNORED,
    ("push_to_talk", "listening", "retry_timer"): IGNORED,
    ("push_to_talk", "listening", "hang_up"): (
        "idle",
        "close_mic disconnect led:idle earcon:ended",
    ),
    ("push_to_talk", "responding", "press"): (
        "listening",
        "stop_playback cancel_response truncate clear_input open_mic led:listening",
    ),
    ("push_to_talk", "responding", "release"): IGNORED,
    ("push_to_talk", "responding", "long_press"): IGNORED,
    ("push_to_talk", "responding", "connected"): IGNORED,
    ("push_to_talk", "responding", "session_ready"): IGNORED,
    ("push_to_talk", "responding", "speech_started"): IGNORED,
    ("push_to_talk", "responding", "speech_stopped"): IGNORED,
    ("push_to_talk", "responding", "response_started"): IGNORED,
    ("push_to_talk", "responding", "response_done"): ("responding", ""),
    ("push_to_talk", "responding", "playback_done"): IGNORED,
    ("push_to_talk", "responding", "turn_empty"): ("idle", "start_idle_timer led:idle"),
    ("push_to_talk", "responding", "disconnected"): (
        "error",
        "stop_playback start_idle_timer schedule_retry led:error_offline earcon:error",
    ),
    ("push_to_talk", "responding", "failed"): (
        "error",
        "stop_playback start_idle_timer schedule_retry led:error_auth earcon:error",
    ),
    ("push_to_talk", "responding", "idle_timeout"): IGNORED,
    ("push_to_talk", "responding", "retry_timer"): IGNORED,
    ("push_to_talk", "responding", "hang_up"): ("responding", ""),
    ("push_to_talk", "error", "press"): (
        "connecting",
        "cancel_retry connect open_mic led:connecting",
    ),
    ("push_to_talk", "error", "release"): IGNORED,
    ("push_to_talk", "error", "long_press"): IGNORED,
    ("push_to_talk", "error", "connected"): IGNORED,
    ("push_to_talk", "error", "session_ready"): IGNORED,
    ("push_to_talk", "error", "speech_started"): IGNORED,
    ("push_to_talk", "error", "speech_stopped"): IGNORED,
    ("push_to_talk", "error", "response_started"): IGNORED,
    ("push_to_talk", "error", "response_done"): IGNORED,
    ("push_to_talk", "error", "playback_done"): IGNORED,
    ("push_to_talk", "error", "turn_empty"): IGNORED,
    ("push_to_talk", "error", "disconnected"): ("error", ""),
    ("push_to_talk", "error", "failed"): ("error", "led:error_auth"),
    ("push_to_talk", "error", "idle_timeout"): ("idle", "cancel_retry disconnect led:idle"),
    ("push_to_talk", "error", "retry_timer"): ("connecting", "connect led:connecting"),
    ("push_to_talk", "error", "hang_up"): (
        "idle",
        "stop_idle_timer cancel_retry disconnect led:idle earcon:ended",
    ),
    # Only a device retry waits for AUDIO_OPENED (tested below); no row of the table does.
    **{(mode, name, "audio_opened"): IGNORED for mode, paths in PATHS.items() for name in paths},
}


def _short(step: Step) -> str:
    if isinstance(step, ShowLed):
        return f"led:{step.pattern.value}"
    if isinstance(step, PlayEarcon):
        return f"earcon:{step.earcon.value}"
    return step.value


def _reach(mode: str, name: str) -> Context:
    ctx = initial(ButtonMode(mode))
    for event in PATHS[mode][name]:
        ctx = transition(ctx, Event(event)).context
    return ctx


def test_the_table_lists_every_state_and_event_of_both_modes() -> None:
    for mode, paths in PATHS.items():
        reached = {_reach(mode, name).state for name in paths}
        assert reached == set(State), f"{mode}: rows must start from every state"
        for name in paths:
            for event in Event:
                assert (mode, name, event.value) in EXPECTED


@pytest.mark.parametrize(("mode", "start", "event"), sorted(EXPECTED))
def test_transition(mode: str, start: str, event: str) -> None:
    ctx = _reach(mode, start)
    assert ctx.state.value == start.removesuffix("_warm")
    error = ErrorKind.AUTH if event == "failed" else None
    result = transition(ctx, Event(event), error)
    expected = EXPECTED[(mode, start, event)]
    if expected is IGNORED:
        assert not result.handled
        assert result.steps == ()
        assert result.state is ctx.state
    else:
        assert result.handled
        assert (result.state.value, " ".join(_short(s) for s in result.steps)) == expected


# --- specific behaviours -------------------------------------------------------------------


def _run(ctx: Context, *events: Event) -> Context:
    for event in events:
        ctx = transition(ctx, event).context
    return ctx


def test_half_duplex_closes_the_mic_while_responding_and_reopens_it_after() -> None:
    ctx = _run(initial(half_duplex=True), Event.PRESS, Event.RELEASE, Event.SESSION_READY)
    responding = transition(ctx, Event.RESPONSE_STARTED)
    assert Action.CLOSE_MIC in responding.steps
    assert not responding.context.mic_open
    done = transition(_run(responding.context, Event.RESPONSE_DONE), Event.PLAYBACK_DONE)
    assert done.state is State.LISTENING
    assert Action.OPEN_MIC in done.steps


def test_speech_barge_in_cancels_when_the_service_does_not_interrupt_by_itself() -> None:
    ctx = _run(
        initial(server_interrupts=False), Event.PRESS, Event.SESSION_READY, Event.RESPONSE_STARTED
    )
    assert Action.CANCEL_RESPONSE in transition(ctx, Event.SPEECH_STARTED).steps


def test_a_finished_response_is_not_cancelled_on_interrupt() -> None:
    ctx = _run(
        initial(), Event.PRESS, Event.SESSION_READY, Event.RESPONSE_STARTED, Event.RESPONSE_DONE
    )
    steps = transition(ctx, Event.PRESS).steps
    assert Action.STOP_PLAYBACK in steps
    assert Action.TRUNCATE in steps
    assert Action.CANCEL_RESPONSE not in steps


def test_responding_lasts_until_playback_is_done_not_until_response_done() -> None:
    ctx = _run(initial(), Event.PRESS, Event.SESSION_READY, Event.RESPONSE_STARTED)
    ctx = transition(ctx, Event.RESPONSE_DONE).context
    assert ctx.state is State.RESPONDING
    assert transition(ctx, Event.PLAYBACK_DONE).state is State.LISTENING


def test_a_second_response_after_a_tool_call_keeps_responding() -> None:
    ctx = _run(
        initial(),
        Event.PRESS,
        Event.SESSION_READY,
        Event.RESPONSE_STARTED,
        Event.RESPONSE_DONE,
        Event.RESPONSE_STARTED,
    )
    assert transition(ctx, Event.PLAYBACK_DONE).state is State.RESPONDING


def test_a_drop_mid_answer_retries_and_comes_back_listening_in_the_same_conversation() -> None:
    ctx = _run(initial(), Event.PRESS, Event.SESSION_READY, Event.RESPONSE_STARTED)
    dropped = transition(ctx, Event.DISCONNECTED)
    assert dropped.state is State.ERROR
    assert ShowLed(LedPattern.ERROR_OFFLINE) in dropped.steps
    retry = transition(dropped.context, Event.RETRY_TIMER)
    assert retry.steps[0] is Action.CONNECT  # not DISCONNECT: the history is kept
    back = transition(retry.context, Event.SESSION_READY)
    assert back.state is State.LISTENING
    assert back.context.in_conversation


def test_repeated_failures_play_the_error_earcon_and_start_the_idle_timer_once() -> None:
    ctx = _run(initial(), Event.PRESS, Event.FAILED)
    again = transition(_run(ctx, Event.RETRY_TIMER), Event.FAILED)
    assert again.state is State.ERROR
    assert not any(isinstance(s, PlayEarcon) for s in again.steps)
    assert Action.START_IDLE_TIMER not in again.steps


def _device_failed(mode: ButtonMode = ButtonMode.TOGGLE) -> Context:
    ctx = _run(initial(mode), Event.PRESS, Event.SESSION_READY)
    return transition(ctx, Event.FAILED, ErrorKind.DEVICE).context


def test_a_device_failure_keeps_the_session_and_the_retry_reopens_only_the_mic() -> None:
    failed = _device_failed()
    assert failed.link is Link.OPEN
    retried = transition(failed, Event.RETRY_TIMER)
    # Still the error state: only an opened mic may show "listening".
    assert retried.state is State.ERROR
    assert retried.steps == (Action.OPEN_MIC,)
    back = transition(retried.context, Event.AUDIO_OPENED)
    assert back.state is State.LISTENING
    assert back.context.error is None
    assert Action.CONNECT not in back.steps
    assert Action.OPEN_MIC not in back.steps  # it is open already
    assert ShowLed(LedPattern.LISTENING) in back.steps
    assert PlayEarcon(Earcon.LISTENING) in back.steps


def test_a_device_that_fails_on_every_retry_shows_nothing_new_and_keeps_one_idle_timeout() -> None:
    """No "listening" flash or earcon, no error earcon per retry: the LED stays on the
    device error, and the idle timeout started at the first failure ends it."""
    ctx = _device_failed()
    for _ in range(3):
        retried = transition(ctx, Event.RETRY_TIMER)
        again = transition(retried.context, Event.FAILED, ErrorKind.DEVICE)
        assert again.state is State.ERROR
        assert again.steps == (Action.CLOSE_MIC, Action.SCHEDULE_RETRY)
        ctx = again.context
    assert transition(ctx, Event.IDLE_TIMEOUT).state is State.IDLE


def test_a_press_while_the_mic_is_retried_waits_for_its_outcome() -> None:
    trying = _run(_device_failed(), Event.RETRY_TIMER)
    assert transition(trying, Event.PRESS).steps == ()
    assert transition(trying, Event.RETRY_TIMER).steps == ()


def test_push_to_talk_device_retry_without_the_button_waits_idle_in_the_conversation() -> None:
    ctx = _run(_device_failed(ButtonMode.PUSH_TO_TALK), Event.RELEASE)
    retried = transition(ctx, Event.RETRY_TIMER)
    assert retried.state is State.IDLE
    assert Action.OPEN_MIC not in retried.steps
    assert retried.context.in_conversation
    pressed = transition(retried.context, Event.PRESS)
    assert pressed.state is State.LISTENING


def test_push_to_talk_device_retry_with_the_button_down_listens_once_the_audio_opened() -> None:
    retried = transition(_device_failed(ButtonMode.PUSH_TO_TALK), Event.RETRY_TIMER)
    assert retried.state is State.ERROR
    assert retried.steps == (Action.OPEN_MIC,)
    assert transition(retried.context, Event.AUDIO_OPENED).state is State.LISTENING


def test_push_to_talk_released_while_connecting_sends_the_turn_once_ready() -> None:
    ctx = _run(initial(ButtonMode.PUSH_TO_TALK), Event.PRESS, Event.RELEASE)
    ready = transition(ctx, Event.SESSION_READY)
    assert ready.state is State.RESPONDING
    assert ready.steps[:2] == (Action.COMMIT_INPUT, Action.CREATE_RESPONSE)


def test_push_to_talk_press_before_the_answer_started_cancels_it() -> None:
    ctx = _run(initial(ButtonMode.PUSH_TO_TALK), Event.PRESS, Event.SESSION_READY, Event.RELEASE)
    assert ctx.awaiting_response
    assert Action.CANCEL_RESPONSE in transition(ctx, Event.PRESS).steps


def test_push_to_talk_waits_for_the_new_response_not_a_stale_done() -> None:
    ctx = _run(initial(ButtonMode.PUSH_TO_TALK), Event.PRESS, Event.SESSION_READY, Event.RELEASE)
    # response.done of an earlier, cancelled response; the new one has not started yet.
    ctx = _run(ctx, Event.RESPONSE_DONE)
    assert transition(ctx, Event.PLAYBACK_DONE).state is State.RESPONDING


def test_hang_up_waits_for_the_goodbye_to_play() -> None:
    ctx = _run(initial(), Event.PRESS, Event.SESSION_READY, Event.RESPONSE_STARTED, Event.HANG_UP)
    assert ctx.state is State.RESPONDING
    ctx = _run(ctx, Event.RESPONSE_DONE)
    ended = transition(ctx, Event.PLAYBACK_DONE)
    assert ended.state is State.IDLE
    assert Action.DISCONNECT in ended.steps


def test_talking_over_the_goodbye_keeps_the_conversation() -> None:
    ctx = _run(
        initial(),
        Event.PRESS,
        Event.SESSION_READY,
        Event.RESPONSE_STARTED,
        Event.HANG_UP,
        Event.SPEECH_STARTED,
        Event.RESPONSE_DONE,
        Event.SPEECH_STOPPED,
        Event.RESPONSE_STARTED,
        Event.RESPONSE_DONE,
        Event.PLAYBACK_DONE,
    )
    assert ctx.state is State.LISTENING


def test_events_of_a_closed_connection_change_nothing() -> None:
    ctx = initial()
    for event in (
        Event.CONNECTED,
        Event.SESSION_READY,
        Event.RESPONSE_STARTED,
        Event.RESPONSE_DONE,
        Event.DISCONNECTED,
    ):
        result = transition(ctx, event)
        assert result.context == ctx
        assert not result.handled


# --- properties over any sequence of events ------------------------------------------------

events = st.lists(
    st.tuples(st.sampled_from(list(Event)), st.sampled_from([None, *ErrorKind])), max_size=60
)
contexts = st.builds(
    initial,
    st.sampled_from(list(ButtonMode)),
    half_duplex=st.booleans(),
    server_interrupts=st.booleans(),
)


def _apply(ctx: Context, sequence: list[tuple[Event, ErrorKind | None]]) -> list[Context]:
    seen = [ctx]
    for event, error in sequence:
        ctx = transition(ctx, event, error).context
        seen.append(ctx)
    return seen


def _invariants(ctx: Context) -> None:
    if ctx.state is State.IDLE:
        assert not ctx.mic_open, ctx
    if ctx.state is State.ERROR:
        # Something is always on its way out of an error: the idle timeout, and either a
        # retry or the audio a device retry opened (AUDIO_OPENED or FAILED follows at once).
        assert ctx.retry_scheduled != ctx.mic_open, ctx
        assert ctx.idle_timer, ctx
        if ctx.mic_open:
            assert ctx.link is Link.OPEN, ctx
    else:
        assert not ctx.retry_scheduled, ctx
    if ctx.state is State.IDLE and not ctx.in_conversation:
        assert ctx.link is Link.CLOSED, ctx
        assert not ctx.idle_timer, ctx
    if ctx.state in (State.LISTENING, State.RESPONDING):
        assert ctx.link is Link.OPEN, ctx
    if ctx.state is State.LISTENING:
        assert ctx.mic_open, ctx
    if ctx.state is State.CONNECTING:
        assert ctx.link is not Link.CLOSED, ctx


@settings(max_examples=400)
@given(contexts, events)
def test_invariants_hold_after_any_sequence(
    start: Context, sequence: list[tuple[Event, ErrorKind | None]]
) -> None:
    for ctx in _apply(start, sequence):
        _invariants(ctx)


def _press_and_hold(ctx: Context) -> Context:
    """A long press as gpiozero reports it: pressed, held, released."""
    return _run(ctx, Event.PRESS, Event.LONG_PRESS, Event.RELEASE)


@settings(max_examples=400)
@given(
    st.builds(
        initial,
        st.just(ButtonMode.TOGGLE),
        half_duplex=st.booleans(),
        server_interrupts=st.booleans(),
    ),
    events,
)
def test_toggle_a_long_press_always_ends_everything(
    start: Context, sequence: list[tuple[Event, ErrorKind | None]]
) -> None:
    for ctx in _apply(start, sequence):
        after = _press_and_hold(ctx)
        assert after.state is State.IDLE
        assert not after.mic_open
        assert after.link is Link.CLOSED
        assert not after.idle_timer
        assert not after.retry_scheduled
        assert not after.in_conversation


@settings(max_examples=400)
@given(contexts, events)
def test_a_press_is_always_heard(
    start: Context, sequence: list[tuple[Event, ErrorKind | None]]
) -> None:
    """From anywhere, releasing and pressing again either ends the conversation (toggle, by
    design) or leads to a device that hears the user: connecting or listening, mic open.
    After a device error the press tries the audio; it listens once the devices opened."""
    for reached in _apply(start, sequence):
        ctx = reached
        if ctx.state is State.ERROR and ctx.mic_open:
            # A device retry: the app reports its outcome before any button event.
            ctx = _run(ctx, Event.AUDIO_OPENED)
        after = _run(ctx, Event.RELEASE, Event.PRESS)
        if ctx.mode is ButtonMode.TOGGLE and ctx.state in (State.CONNECTING, State.LISTENING):
            assert after.state is State.IDLE
            continue
        if after.state is State.ERROR:
            assert after.mic_open, (ctx, after)
            after = _run(after, Event.AUDIO_OPENED)
        assert after.state in (State.CONNECTING, State.LISTENING), (ctx, after)
        assert after.mic_open


@settings(max_examples=300)
@given(contexts, events)
def test_timers_bring_any_state_back_to_idle(
    start: Context, sequence: list[tuple[Event, ErrorKind | None]]
) -> None:
    """Without the button, the idle timeout ends every conversation; what can wait on the
    service (connecting, responding) is bounded by its own events."""
    for ctx in _apply(start, sequence):
        after = _run(ctx, Event.FAILED, Event.IDLE_TIMEOUT)
        assert after.state is State.IDLE, (ctx, after)
        assert not after.mic_open
        assert after.link is Link.CLOSED
