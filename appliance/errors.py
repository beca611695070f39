"""Exception types shared across the appliance, each carrying what the user must know."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.state import ErrorKind

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 2  # a subcommand whose capability has not landed
EXIT_CONFIG = 78  # EX_CONFIG; the unit sets RestartPreventExitStatus=78


class ApplianceError(Exception):
    """Base of the appliance's own errors. Messages never contain secrets."""

    kind: ErrorKind = ErrorKind.SERVICE


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    variable: str
    value: str | None  # already masked when the variable is a secret; None when unset
    reason: str
    source: str | None = None  # "environment" or the env file the value came from

    def __str__(self) -> str:
        shown = "(unset)" if self.value is None else repr(self.value)
        where = f" [from {self.source}]" if self.source else ""
        return f"{self.variable}={shown}{where}: {self.reason}"


class ConfigError(ApplianceError):
    """The configuration cannot be used. The CLI prints it and exits 78."""

    kind = ErrorKind.AUTH

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        head = "configuration error" if count == 1 else f"{count} configuration errors"
        lines = [f"{head}:"] + [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class AudioDeviceError(ApplianceError):
    """An audio device is missing, busy or failed. The appliance shows it and retries."""

    kind = ErrorKind.DEVICE


class SoundServerHung(AudioDeviceError):
    """A PortAudio call did not return in time: the sound server (PulseAudio, PipeWire) hangs."""


class ServiceError(ApplianceError):
    """Voice Live refused or failed. ``kind`` tells offline, auth and rate limiting apart.

    ``retry_after`` is the wait in seconds the service asked for (HTTP 429 Retry-After), if any.
    """

    def __init__(
        self,
        message: str,
        kind: ErrorKind = ErrorKind.SERVICE,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class NotAvailableYet(ApplianceError):
    """A command whose capability has not been built yet."""
