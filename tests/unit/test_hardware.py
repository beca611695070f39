"""Button and LED over gpiozero's own MockFactory pins, driven as a finger would."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from appliance.config import GpioSettings, PinFactory
from appliance.hardware.controls import Controls, LedPlayer, make_pin_factory, mock_pin_factory
from appliance.hardware.patterns import GAMMA, pattern_for
from appliance.hardware.simulated import (
    CommandError,
    Finger,
    TerminalView,
    parse_command,
    run_commands,
)
from appliance.state import Event, LedPattern


def gpio(**overrides: object) -> GpioSettings:
    return GpioSettings.model_validate(
        {
            "APPLIANCE_HOLD_S": 0.3,
            "APPLIANCE_BOUNCE_MS": 0,
            **{k: str(v) for k, v in overrides.items()},
        }
    )


class Received:
    """Button events as the loop receives them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    async def until(self, *expected: Event) -> None:
        async with asyncio.timeout(5):
            while self.events[: len(expected)] != list(expected):
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
def factory() -> MockFactory:
    return mock_pin_factory(history=0)


async def test_button_events_reach_the_loop(factory: MockFactory) -> None:
    received = Received()
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=received, pin_factory=factory
    ) as controls:
        finger = Finger(lambda: controls.button)
        finger.press()
        finger.release()
        await received.until(Event.PRESS, Event.RELEASE)


async def test_a_long_press_is_reported_while_still_held(factory: MockFactory) -> None:
    received = Received()
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=received, pin_factory=factory
    ) as controls:
        finger = Finger(lambda: controls.button)
        finger.press()
        await received.until(Event.PRESS, Event.LONG_PRESS)
        assert finger.pressed
        finger.release()
        await received.until(Event.PRESS, Event.LONG_PRESS, Event.RELEASE)


async def test_a_short_press_is_no_long_press(factory: MockFactory) -> None:
    received = Received()
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=received, pin_factory=factory
    ) as controls:
        finger = Finger(lambda: controls.button)
        finger.press()
        finger.release()
        finger.press()
        # A long press left over from the first press would be due before this one.
        await received.until(Event.PRESS, Event.RELEASE, Event.PRESS, Event.LONG_PRESS)
        assert received.events == [Event.PRESS, Event.RELEASE, Event.PRESS, Event.LONG_PRESS]


async def test_an_idle_button_runs_no_thread(factory: MockFactory) -> None:
    # An appliance waits for a press for months: nothing may poll meanwhile.
    threads = threading.active_count()
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=Received(), pin_factory=factory
    ):
        assert threading.active_count() == threads


async def test_closing_while_held_reports_no_long_press(factory: MockFactory) -> None:
    received = Received()
    loop = asyncio.get_running_loop()
    controls = Controls(gpio(), loop=loop, on_event=received, pin_factory=factory)
    Finger(lambda: controls.button).press()
    await received.until(Event.PRESS)
    controls.close()
    expired = loop.create_future()
    # Only the absence of an event is checked here, so the test waits out the hold time.
    loop.call_later(0.5, expired.set_result, None)
    await expired
    assert received.events == [Event.PRESS]


async def test_a_pull_down_button_is_pressed_by_driving_high(factory: MockFactory) -> None:
    received = Received()
    with Controls(
        gpio(APPLIANCE_BUTTON_PULL_UP="false"),
        loop=asyncio.get_running_loop(),
        on_event=received,
        pin_factory=factory,
    ) as controls:
        Finger(lambda: controls.button).press()
        await received.until(Event.PRESS)
        assert factory.pin(17).state


async def test_closing_releases_the_pins(factory: MockFactory) -> None:
    loop = asyncio.get_running_loop()
    controls = Controls(gpio(), loop=loop, on_event=Received(), pin_factory=factory)
    controls.close()
    controls.close()  # idempotent
    with Controls(gpio(), loop=loop, on_event=Received(), pin_factory=factory):
        pass


async def test_steady_patterns_are_set_once(factory: MockFactory) -> None:
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=Received(), pin_factory=factory
    ) as controls:
        led_pin = factory.pin(18)
        player = controls.led
        task = asyncio.create_task(player.run())
        try:
            levels = await _levels(player, LedPattern.LISTENING, count=1)
            assert levels == [1.0]
            assert led_pin.state == 1.0
            levels = await _levels(player, LedPattern.IDLE, count=1)
            assert levels == [0.0]
            assert led_pin.state == 0.0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def _levels(player: LedPlayer, pattern: LedPattern, count: int) -> list[float]:
    seen: list[float] = []
    enough = asyncio.Event()

    def record(level: float) -> None:
        seen.append(level)
        if len(seen) >= count:
            enough.set()

    player.on_level = record
    player.show(pattern)
    async with asyncio.timeout(5):
        await enough.wait()
    player.on_level = None
    return seen


async def test_the_offline_error_blinks_twice_then_pauses(factory: MockFactory) -> None:
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=Received(), pin_factory=factory
    ) as controls:
        task = asyncio.create_task(controls.led.run())
        try:
            levels = await _levels(controls.led, LedPattern.ERROR_OFFLINE, count=5)
            assert levels[:5] == [1.0, 0.0, 1.0, 0.0, 1.0]
            assert list(controls.led.history) == [LedPattern.ERROR_OFFLINE]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    # The pin went through those levels too.
    assert [s.state for s in factory.pin(18).states][1:5] == [1.0, 0.0, 1.0, 0.0]


async def test_a_led_without_pwm_falls_back_to_on_off() -> None:
    factory = MockFactory(pin_class=MockPin)
    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=Received(), pin_factory=factory
    ) as controls:
        task = asyncio.create_task(controls.led.run())
        try:
            levels = await _levels(controls.led, LedPattern.RESPONDING, count=3)
            assert set(levels) <= {0.0, 1.0}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


class ManualClock:
    """The running loop's clock, moved by the test: timers fire only when it says so."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = loop.time()
        self._loop = loop

    def __enter__(self) -> ManualClock:
        self._loop.time = lambda: self.now  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._loop.time  # back to the class's own clock


@contextlib.asynccontextmanager
async def running_player(factory: MockFactory) -> AsyncIterator[tuple[ManualClock, LedPlayer]]:
    """The LED player animating on a loop whose clock the test moves."""
    loop = asyncio.get_running_loop()
    with (
        ManualClock(loop) as clock,
        Controls(gpio(), loop=loop, on_event=Received(), pin_factory=factory) as controls,
    ):
        task = asyncio.create_task(controls.led.run())
        try:
            yield clock, controls.led
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_a_fade_rides_on_other_wake_ups_and_goes_on_alone_when_they_stop(
    factory: MockFactory,
) -> None:
    fade = pattern_for(LedPattern.RESPONDING)
    assert fade.fades
    assert fade.steps[0].seconds == pytest.approx(0.1)  # the times below assume it
    drawn: list[float] = []
    new_frame = asyncio.Event()

    def record(level: float) -> None:
        drawn.append(level)
        new_frame.set()

    async with running_player(factory) as (clock, player):
        player.on_level = record
        player.show(LedPattern.RESPONDING)
        await new_frame.wait()
        # Something wakes the loop every 90 ms (never on a frame's boundary, which floats
        # would make a coin toss): each time, the frame due is drawn there and then, and
        # the fade's own timer, always more than a wake-up ahead, never fires.
        start = clock.now
        for _ in range(9):
            clock.now += 0.09
            player.catch_up()
            frame = int((clock.now - start) / 0.1)
            assert drawn[-1] == fade.steps[frame].level  # drawn there and then
            next_frame_at = player.next_frame_at
            assert next_frame_at is not None
            assert next_frame_at > clock.now + 0.09  # the fade's timer stays asleep
            for _ in range(5):
                await asyncio.sleep(0)  # give a due timer every chance to fire
        # 0.81 s in: frames 0 to 8, each drawn once.
        expected = [step.level for step in fade.steps[:9]]
        assert drawn == expected
        # The wake-ups stop: the fade draws the frame of the moment (1.01 s) itself. Its
        # timer was due a frame after frame 9 was (1.0 s), so that one went unseen.
        new_frame.clear()
        clock.now += 0.2
        await new_frame.wait()
        assert drawn == [*expected, fade.steps[10].level]


def test_the_responding_pulse_steps_evenly_in_perceived_brightness() -> None:
    fade = pattern_for(LedPattern.RESPONDING)
    levels = [step.level for step in fade.steps]
    assert sum(step.seconds for step in fade.steps) == pytest.approx(2.0)
    assert min(levels) == pytest.approx(0.05)
    assert max(levels) == 1.0
    perceived = [level ** (1 / GAMMA) for level in levels]
    following = perceived[1:] + perceived[:1]
    steps = [abs(after - before) for before, after in zip(perceived, following, strict=True)]
    assert max(steps) == pytest.approx(min(steps))  # around the whole cycle


async def test_catching_up_does_nothing_to_blinks_or_steady_patterns(
    factory: MockFactory,
) -> None:
    LedPlayer(None, pwm=True, heartbeat=False).catch_up()  # not running: nothing to draw
    async with running_player(factory) as (clock, player):
        # Each pattern's first level differs from the one before, so it can be awaited.
        for name in (LedPattern.LISTENING, LedPattern.IDLE, LedPattern.ERROR_OFFLINE):
            levels = await _levels(player, name, count=1)
            clock.now += 0.3  # past the first blink: catching up must not skip it
            player.catch_up()
            assert player.level == levels[0]


def test_a_fade_held_up_skips_the_frames_it_missed() -> None:
    from appliance.hardware.controls import _Frames

    fade = pattern_for(LedPattern.RESPONDING)
    frame_s = fade.steps[0].seconds
    frames = _Frames(fade, start=100.0)
    frames.advance(100.0 + 3.5 * frame_s)
    assert frames.level == fade.steps[3].level
    assert frames.next_due == pytest.approx(100.0 + 4 * frame_s)
    # Held up for longer than a whole cycle (a suspended board): go on from now.
    frames.advance(10_000.0)
    assert frames.next_due == pytest.approx(10_000.0 + fade.steps[frames.index].seconds)


def test_patterns() -> None:
    for name in LedPattern:
        pattern = pattern_for(name)
        assert pattern.steps
        assert all(0.0 <= step.level <= 1.0 for step in pattern.steps)
        plain = pattern_for(name, pwm=False)
        assert {step.level for step in plain.steps} <= {0.0, 1.0}
    assert pattern_for(LedPattern.LISTENING).steady
    assert pattern_for(LedPattern.IDLE).steady
    assert not pattern_for(LedPattern.IDLE, heartbeat=True).steady
    errors = [n for n in LedPattern if n.value.startswith("error_")]
    looks = {pattern_for(n).look for n in errors}
    assert len(looks) == len(errors), "every error class must look different"
    pulse = pattern_for(LedPattern.RESPONDING)
    assert 0 < min(s.level for s in pulse.steps) < 0.5 < max(s.level for s in pulse.steps)


def test_pin_factory_choices() -> None:
    assert make_pin_factory(PinFactory.AUTO) is None
    assert isinstance(make_pin_factory(PinFactory.MOCK), MockFactory)


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("press", ("press", 0.0)),
        ("  CLICK ", ("click", 0.0)),
        ("hold 2.5", ("hold", 2.5)),
        ("wait 0", ("wait", 0.0)),
        ("quit", ("quit", 0.0)),
        ("# a comment", None),
        ("", None),
        ("release # done", ("release", 0.0)),
    ],
)
def test_parse_command(line: str, command: tuple[str, float] | None) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize("line", ["jump", "hold", "hold x", "wait -1", "press now"])
def test_bad_commands_say_what_is_allowed(line: str) -> None:
    with pytest.raises(CommandError):
        parse_command(line)


async def test_stdin_commands_drive_the_button(factory: MockFactory) -> None:
    received = Received()
    quit_requested = asyncio.Event()
    lines = iter(["press\n", "release\n", "bogus\n", "click\n", "hold 0.4\n", "quit\n", "press\n"])

    async def next_line() -> str:
        return next(lines, "")

    with Controls(
        gpio(), loop=asyncio.get_running_loop(), on_event=received, pin_factory=factory
    ) as controls:
        await run_commands(next_line, Finger(lambda: controls.button), quit_requested.set)
        assert quit_requested.is_set()
        await received.until(
            Event.PRESS,
            Event.RELEASE,
            Event.PRESS,
            Event.RELEASE,
            Event.PRESS,
            Event.LONG_PRESS,
            Event.RELEASE,
        )
        assert not controls.pressed  # nothing after quit was carried out


def test_view_prints_a_line_per_change_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    view = TerminalView(out)
    assert not view.live
    view.state("listening", pattern_for(LedPattern.LISTENING))
    view.state("listening", pattern_for(LedPattern.LISTENING))
    view.transcript("user", "what time is it", final=False)
    view.transcript("user", "what time is it", final=True)
    view.mic_level(0.5)
    assert out.getvalue().splitlines() == [
        "state listening  led listening (on)",
        "user: what time is it",
    ]


def test_live_view_renders_led_state_words_and_meter() -> None:
    view = TerminalView(io.StringIO(), live=True)
    view.attach_led(lambda: 0.4)
    view.state("responding", pattern_for(LedPattern.RESPONDING))
    view.transcript("assistant", "It is noon", final=False)
    view.mic_level(0.2)
    line = view.render()
    assert line.startswith("◐ slow pulse")
    assert "responding" in line
    assert "It is noon" in line
