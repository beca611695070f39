"""The button and the LED, over gpiozero, with the pin factory injected from the settings.

gpiozero calls the button handlers from its own threads (or, with ``MockFactory``, from
whoever drives the pin); :class:`Controls` only hands them to the asyncio loop with
``call_soon_threadsafe``. The button is a plain ``DigitalInputDevice`` and the long press a
loop timer: gpiozero's ``Button`` keeps a thread that wakes ten times a second for ever to
look for holds, which was most of what an idle appliance cost. The LED is animated by one
loop task (:meth:`LedPlayer.run`), so patterns change atomically with the state and a
steady LED costs no wake-ups at all; a fade draws its frames when the loop wakes for the
microphone anyway (:meth:`LedPlayer.catch_up`).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from appliance.config import GpioSettings, PinFactory
from appliance.errors import ApplianceError
from appliance.hardware.patterns import Pattern, pattern_for
from appliance.state import ErrorKind, Event, LedPattern

log = logging.getLogger(__name__)


class GpioError(ApplianceError):
    """The pins cannot be used (no GPIO chip, pin busy, backend missing)."""

    kind = ErrorKind.DEVICE


def make_pin_factory(choice: PinFactory) -> Any:
    """A gpiozero pin factory, or None to let gpiozero pick (lgpio first)."""
    try:
        if choice is PinFactory.AUTO:
            return None
        if choice is PinFactory.MOCK:
            return mock_pin_factory()
        if choice is PinFactory.LGPIO:
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if choice is PinFactory.RPIGPIO:
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if choice is PinFactory.PIGPIO:
            from gpiozero.pins.pigpio import PiGPIOFactory

            return PiGPIOFactory()
        from gpiozero.pins.native import NativeFactory

        return NativeFactory()
    except (ImportError, OSError, RuntimeError) as exc:
        raise GpioError(
            f"GPIO backend {choice.value!r} is not usable here ({exc}); on a Raspberry Pi "
            "install lgpio (scripts/install.sh does), or set APPLIANCE_PIN_FACTORY=mock"
        ) from exc


def mock_pin_factory(history: int = 4096) -> Any:
    """gpiozero's own MockFactory with PWM pins whose state history is bounded.

    MockPin records every change; a pulsing LED would otherwise grow that list for ever.
    ``history`` 0 keeps everything (for tests that read the whole LED history).
    """
    from gpiozero.pins.mock import MockFactory, MockPWMPin, PinState

    class BoundedHistoryPin(MockPWMPin):  # type: ignore[misc]
        def clear_states(self) -> None:
            from time import monotonic

            self._last_change = monotonic()
            self.states = deque([PinState(0.0, self._state)], maxlen=history or None)

    return MockFactory(pin_class=BoundedHistoryPin)


class LedPlayer:
    """Shows one pattern at a time on a gpiozero LED or PWMLED (or on nothing)."""

    def __init__(
        self,
        led: Any | None,
        *,
        pwm: bool,
        heartbeat: bool,
        on_level: Callable[[float], None] | None = None,
    ) -> None:
        self._led = led
        self.on_level = on_level  # told every brightness change (terminal view, tests)
        self._pwm = pwm
        self._heartbeat = heartbeat
        self._pattern = pattern_for(LedPattern.IDLE, pwm=pwm, heartbeat=heartbeat)
        self._changed = asyncio.Event()
        self._frames: _Frames | None = None  # the fade being shown
        self._frame_timer: asyncio.Timeout | None = None  # when its next frame is drawn
        self.level = 0.0
        # The latest pattern changes, for the terminal view and tests (bounded: months of use).
        self.history: deque[LedPattern] = deque(maxlen=64)

    @property
    def pattern(self) -> Pattern:
        return self._pattern

    def show(self, name: LedPattern) -> None:
        if name is self._pattern.name and self.history:
            return
        self._pattern = pattern_for(name, pwm=self._pwm, heartbeat=self._heartbeat)
        self.history.append(name)
        self._changed.set()

    def set_heartbeat(self, heartbeat: bool) -> None:
        """The idle look changed (a reload): show it at once if idle."""
        if heartbeat != self._heartbeat:
            self._heartbeat = heartbeat
            if self._pattern.name is LedPattern.IDLE:
                self._pattern = pattern_for(LedPattern.IDLE, pwm=self._pwm, heartbeat=heartbeat)
                self._changed.set()

    def _write(self, level: float) -> None:
        if self._led is not None:
            self._led.value = level if self._pwm else (1 if level >= 0.5 else 0)
        if level != self.level:
            self.level = level
            if self.on_level is not None:
                self.on_level(level)

    async def run(self) -> None:
        """Animate until cancelled; a steady pattern sleeps until the next change."""
        while True:
            self._changed.clear()
            pattern = self._pattern
            if pattern.steady:
                self._write(pattern.steps[0].level)
                await self._changed.wait()
            elif pattern.fades:
                await self._fade(pattern)
            else:
                await self._blink(pattern)

    async def _blink(self, pattern: Pattern) -> None:
        """Every step in turn, each for its full time: a blink is never skipped."""
        while not self._changed.is_set():
            for step in pattern.steps:
                self._write(step.level)
                try:
                    async with asyncio.timeout(step.seconds):
                        await self._changed.wait()
                except TimeoutError:
                    continue
                break

    async def _fade(self, pattern: Pattern) -> None:
        """Frame by frame on the clock; :meth:`catch_up` may draw frames in between."""
        loop = asyncio.get_running_loop()
        self._frames = frames = _Frames(pattern, loop.time())
        try:
            while not self._changed.is_set():
                self._write(frames.level)
                try:
                    async with asyncio.timeout_at(frames.next_due) as self._frame_timer:
                        await self._changed.wait()
                except TimeoutError:
                    frames.advance(loop.time())
        finally:
            self._frames = self._frame_timer = None

    @property
    def next_frame_at(self) -> float | None:
        """When the fade's own timer draws its next frame (loop time); None without a fade."""
        timer = self._frame_timer
        return None if timer is None else timer.when()

    def catch_up(self) -> None:
        """The loop is awake anyway: draw the fade frame due by now, if any.

        Each call also lets the fade's own timer wait one frame longer, so while something
        else wakes the loop at least once a frame (the microphone, streaming), the fade costs
        no wake-ups of its own. A wake-up is what a frame costs: drawn by its own timer, the
        responding pulse alone took 0.7 % of a core on the bench machine.
        When the calls stop, the timer draws the frames again, the first at most one late.
        """
        frames, timer = self._frames, self._frame_timer
        if frames is None or timer is None or timer.expired():
            return
        now = asyncio.get_running_loop().time()
        if now >= frames.next_due:
            frames.advance(now)
            self._write(frames.level)
        deadline = frames.next_due + frames.frame_s
        if timer.when() != deadline:
            timer.reschedule(deadline)


class _Frames:
    """Where a fade is: its current frame and when the next one is due (loop time)."""

    def __init__(self, pattern: Pattern, start: float) -> None:
        self.steps = pattern.steps
        self.cycle_s = sum(step.seconds for step in self.steps)
        self.frame_s = min(step.seconds for step in self.steps)
        self.index = 0
        self.next_due = start + self.steps[0].seconds

    @property
    def level(self) -> float:
        return self.steps[self.index].level

    def advance(self, now: float) -> None:
        """To the frame of ``now``, skipping those whose time went by unseen."""
        if now - self.next_due > self.cycle_s:
            self.next_due = now  # the loop was held up for long: go on from here
        while now >= self.next_due:
            self.index = (self.index + 1) % len(self.steps)
            self.next_due += self.steps[self.index].seconds


class Controls:
    """Button and LED. Button events reach ``on_event`` on the loop; ``close()`` frees pins."""

    def __init__(
        self,
        settings: GpioSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[Event], None],
        pin_factory: Any = None,
        heartbeat: bool = False,
    ) -> None:
        from gpiozero import LED, PWMLED, DigitalInputDevice
        from gpiozero.exc import GPIOZeroError, PinFactoryFallback, PinPWMUnsupported

        self._loop = loop
        self._on_event = on_event
        self._closed = False
        self._hold_s = settings.hold_s
        self._hold_timer: asyncio.TimerHandle | None = None
        self.button: Any = None
        led: Any = None
        try:
            # gpiozero warns for every backend it tries on its way to a working one; the
            # backend it settles on is logged below, and a failure says what to do.
            warnings.simplefilter("ignore", PinFactoryFallback)
            self.button = DigitalInputDevice(
                settings.button_pin,
                pull_up=settings.button_pull_up,
                bounce_time=settings.bounce_ms / 1000 or None,
                pin_factory=pin_factory,
            )
            self.button.when_activated = lambda: self._emit(Event.PRESS)
            self.button.when_deactivated = lambda: self._emit(Event.RELEASE)
            pwm = True
            if settings.led_pin is not None:
                try:
                    led = PWMLED(
                        settings.led_pin,
                        active_high=settings.led_active_high,
                        pin_factory=pin_factory,
                    )
                except PinPWMUnsupported:
                    pwm = False
                    led = LED(
                        settings.led_pin,
                        active_high=settings.led_active_high,
                        pin_factory=pin_factory,
                    )
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            if self.button is not None:
                self.button.close()
            raise GpioError(
                f"cannot use GPIO (button {settings.button_pin}, LED {settings.led_pin}): {exc}"
            ) from exc
        self._led = led
        self.led = LedPlayer(led, pwm=pwm, heartbeat=heartbeat)
        log.info(
            "button on %s, LED on %s%s (%s)",
            settings.button_pin,
            settings.led_pin or "nothing",
            "" if pwm else " (no PWM: fades become blinks)",
            type(self.button.pin_factory).__name__,
        )

    @property
    def pressed(self) -> bool:
        """The button is down now."""
        return bool(self.button.is_active)

    def _emit(self, event: Event) -> None:
        # Runs on a gpiozero thread (or the loop, with MockFactory driven from the loop).
        if not self._closed:
            self._loop.call_soon_threadsafe(self._on_button, event)

    def _on_button(self, event: Event) -> None:
        """On the loop: a press starts the long-press timer, a release stops it."""
        if self._closed:
            return
        self._cancel_hold()
        if event is Event.PRESS:
            self._hold_timer = self._loop.call_later(self._hold_s, self._held)
        self._on_event(event)

    def _held(self) -> None:
        self._hold_timer = None
        if not self._closed:
            self._on_event(Event.LONG_PRESS)

    def _cancel_hold(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_hold()
        for device in (self.button, self._led):
            if device is not None:
                device.close()

    def __enter__(self) -> Controls:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
