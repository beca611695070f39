"""What the LED does in each state, as data: a cycle of (brightness, seconds) steps.

Error patterns are counted blinks, so a person can tell the error class without a screen:
2 blinks offline, 3 auth refused, 4 audio device, 5 other service error; rate limiting is a
slow even blink. The README's LED table is written from this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.state import LedPattern

# A fade's frames are even steps of perceived brightness, which is about duty ** (1 / GAMMA):
# at 10 frames a second the largest step a person sees is smaller than the first steps of
# 20 frames a second even in duty were (those are the ones seen: near dark). Each frame the
# loop's timer draws costs a wake-up (see LedPlayer.catch_up), so fewer is better.
FADE_FPS = 10
GAMMA = 2.2


@dataclass(frozen=True, slots=True)
class Step:
    level: float  # 0.0 off .. 1.0 full brightness
    seconds: float  # 0 for the last step of a pattern that holds (solid on/off)


@dataclass(frozen=True, slots=True)
class Pattern:
    name: LedPattern
    look: str  # how it looks, for people (terminal view, README)
    steps: tuple[Step, ...]
    # Drawn frame by frame: a frame shown a little late, or skipped, goes unnoticed (a blink
    # does not: its count is the message).
    fades: bool = False

    @property
    def steady(self) -> bool:
        """A single held level: set once, nothing to animate."""
        return len(self.steps) == 1


def _blinks(
    count: int, *, on: float = 0.15, off: float = 0.25, pause: float = 1.2
) -> tuple[Step, ...]:
    steps: list[Step] = []
    for index in range(count):
        steps += [Step(1.0, on), Step(0.0, pause if index == count - 1 else off)]
    return tuple(steps)


def _pulse(period: float, *, low: float = 0.05, pwm: bool) -> tuple[Step, ...]:
    if not pwm:
        return (Step(1.0, period / 2), Step(0.0, period / 2))
    frames = int(FADE_FPS * period / 2)
    dim = low ** (1 / GAMMA)  # the lowest level, perceived
    perceived = [dim + (1 - dim) * i / frames for i in range(frames)]
    rise = [Step(level**GAMMA, 1 / FADE_FPS) for level in perceived]
    fall = [Step((1 + dim - level) ** GAMMA, 1 / FADE_FPS) for level in perceived]
    return tuple(rise + fall)


def pattern_for(name: LedPattern, *, pwm: bool = True, heartbeat: bool = False) -> Pattern:
    """The pattern to show; ``pwm`` False degrades fades to blinks for a plain LED."""
    if name is LedPattern.IDLE:
        if heartbeat:
            level = 0.08 if pwm else 1.0
            return Pattern(name, "off, with a dim heartbeat", (Step(level, 0.08), Step(0.0, 2.9)))
        return Pattern(name, "off", (Step(0.0, 0),))
    if name is LedPattern.CONNECTING:
        return Pattern(name, "fast blink", (Step(1.0, 0.1), Step(0.0, 0.1)))
    if name is LedPattern.LISTENING:
        return Pattern(name, "on", (Step(1.0, 0),))
    if name is LedPattern.RESPONDING:
        return Pattern(name, "slow pulse", _pulse(2.0, pwm=pwm), fades=pwm)
    if name is LedPattern.ERROR_RATE_LIMITED:
        return Pattern(name, "slow blink (rate limited)", (Step(1.0, 1.0), Step(0.0, 1.0)))
    count = {
        LedPattern.ERROR_OFFLINE: 2,
        LedPattern.ERROR_AUTH: 3,
        LedPattern.ERROR_DEVICE: 4,
        LedPattern.ERROR_SERVICE: 5,
    }[name]
    meaning = name.value.removeprefix("error_")
    return Pattern(name, f"{count} blinks, pause ({meaning})", _blinks(count))
