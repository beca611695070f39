"""``--simulate``: a finger on gpiozero's MockFactory button pin, and a terminal view.

On a terminal, a key is the button (space or enter: click; in push-to-talk mode space holds
and releases; ``h`` holds long enough to end the conversation; ``q`` quits). Otherwise stdin
carries one command a line: ``press``, ``release``, ``click``, ``hold SECONDS``,
``wait SECONDS``, ``quit``. The end of stdin means no more commands, not quit: under systemd
stdin is /dev/null and the appliance must keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

from appliance.hardware.patterns import Pattern

log = logging.getLogger(__name__)

CLICK_S = 0.12  # how long a click holds the button down, like a finger would


class Finger:
    """Presses and releases the simulated button by driving its MockFactory pin.

    ``button`` returns the gpiozero input device of the button to press (None: there is
    none right now, e.g. while the appliance rebuilds after a reload).
    """

    def __init__(self, button: Callable[[], Any | None]) -> None:
        self._button = button

    @property
    def pressed(self) -> bool:
        button = self._button()
        return button is not None and bool(button.is_active)

    def press(self) -> None:
        if not self.pressed:
            self._drive(active=True)

    def release(self) -> None:
        if self.pressed:
            self._drive(active=False)

    def _drive(self, *, active: bool) -> None:
        button = self._button()
        if button is None:
            return
        # With the pull-up, the wired button pulls the pin to GND when pressed.
        if active == bool(button.pull_up):
            button.pin.drive_low()
        else:
            button.pin.drive_high()

    async def hold(self, seconds: float) -> None:
        # Holding a button is a human action that takes time: this sleep is the simulation.
        self.press()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.release()


class CommandError(ValueError):
    pass


def parse_command(line: str) -> tuple[str, float] | None:
    """One stdin line to (verb, seconds); None for blank lines and comments."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    verb, args = words[0].lower(), words[1:]
    if verb in ("press", "release", "click", "quit") and not args:
        return verb, 0.0
    if verb in ("hold", "wait") and len(args) == 1:
        try:
            seconds = float(args[0])
        except ValueError:
            seconds = -1.0
        if 0 <= seconds <= 3600:
            return verb, seconds
        raise CommandError(f"{verb} needs a number of seconds (0-3600), got {args[0]!r}")
    raise CommandError(
        f"unknown command {line.strip()!r}; use press, release, click, hold S, wait S, quit"
    )


async def run_commands(
    lines: Callable[[], Awaitable[str]], finger: Finger, quit_: Callable[[], None]
) -> None:
    """Carry out stdin commands in order until ``quit`` or the end of input."""
    while line := await lines():
        try:
            command = parse_command(line)
        except CommandError as exc:
            log.warning("%s", exc)
            continue
        if command is None:
            continue
        verb, seconds = command
        if verb == "press":
            finger.press()
        elif verb == "release":
            finger.release()
        elif verb == "click":
            await finger.hold(CLICK_S)
        elif verb == "hold":
            await finger.hold(seconds)
        elif verb == "wait":
            await asyncio.sleep(seconds)
        else:
            quit_()
            return
    log.info("end of stdin: no more commands (the appliance keeps running)")


async def stdin_lines(stream: TextIO) -> Callable[[], Awaitable[str]]:
    """An async readline for stdin whether it is a pipe, a device or a regular file."""
    mode = os.fstat(stream.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        # A file redirected into stdin is finite, and /dev/null (stdin under systemd) is
        # empty; epoll takes neither. Read it now, hand it out line by line.
        pending = iter(stream.readlines())

        async def from_file() -> str:
            return next(pending, "")

        return from_file
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)

    async def from_pipe() -> str:
        return (await reader.readline()).decode(errors="replace")

    return from_pipe


@contextlib.contextmanager
def cbreak(stream: TextIO) -> Iterator[None]:
    """Keys arrive one by one, unechoed; Ctrl-C still interrupts. Restored on exit."""
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_keyboard(
    stream: TextIO,
    finger: Finger,
    *,
    push_to_talk: bool,
    hold_s: float,
    quit_: Callable[[], None],
) -> None:
    """Keys as the button, until ``q``."""
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[str] = asyncio.Queue()
    fd = stream.fileno()
    loop.add_reader(fd, lambda: keys.put_nowait(os.read(fd, 32).decode(errors="replace")))
    try:
        with cbreak(stream):
            while True:
                for key in await keys.get():
                    if key in " \n\r":
                        if not push_to_talk:
                            await finger.hold(CLICK_S)
                        elif finger.pressed:
                            finger.release()
                        else:
                            finger.press()
                    elif key in "hH":
                        await finger.hold(hold_s + 0.2)
                    elif key in "qQ":
                        quit_()
                        return
    finally:
        loop.remove_reader(fd)


class TerminalView:
    """What the device would show, in the terminal.

    On a terminal: one line redrawn in place (LED as it looks, state, last words of both
    sides, a mic level meter). Otherwise: a line per change, easy to read in a log or a test.
    """

    METER = " ▁▂▃▄▅▆▇█"

    def __init__(self, out: TextIO, *, live: bool | None = None) -> None:
        self._out = out
        self.live = out.isatty() if live is None else live
        self._state = "idle"
        self._pattern: Pattern | None = None
        self._level: Callable[[], float] = lambda: 0.0
        self._user = ""
        self._assistant = ""
        self._mic = 0.0
        self._dirty = asyncio.Event()

    def attach_led(self, level: Callable[[], float]) -> None:
        self._level = level

    def led_level(self, _level: float) -> None:
        self._dirty.set()

    def state(self, state: str, pattern: Pattern) -> None:
        changed = state != self._state or pattern != self._pattern
        self._state, self._pattern = state, pattern
        if not self.live and changed:
            self._line(f"state {state}  led {pattern.name.value} ({pattern.look})")
        self._dirty.set()

    def transcript(self, role: str, text: str, *, final: bool) -> None:
        if role == "user":
            self._user = text
        else:
            self._assistant = text
        if not self.live and final and text:
            self._line(f"{role}: {text}")
        self._dirty.set()

    def mic_level(self, rms: float) -> None:
        if self.live and abs(rms - self._mic) > 0.01:
            self._mic = rms
            self._dirty.set()

    def note(self, text: str) -> None:
        if self.live:
            self._out.write("\r\033[K")
        self._line(text)
        self._dirty.set()

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def render(self) -> str:
        level = self._level()
        glyph = "●" if level >= 0.75 else "◐" if level > 0.02 else "○"
        look = self._pattern.look if self._pattern else "off"
        meter = self.METER[min(len(self.METER) - 1, int(self._mic * 4 * len(self.METER)))]
        return (
            f"{glyph} {look:<24.24} {self._state:<10} mic {meter}  "
            f"you: {self._user[-30:]:<30}  assistant: {self._assistant[-40:]}"
        )

    async def run(self) -> None:
        """Redraw the live line when something changed, at most ten times a second."""
        if not self.live:
            return
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._out.write("\r\033[K" + self.render())
            self._out.flush()
            await asyncio.sleep(0.1)  # rate limit: a pulsing LED changes 20 times a second

    def close(self) -> None:
        if self.live:
            self._out.write("\n")
            self._out.flush()


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()
