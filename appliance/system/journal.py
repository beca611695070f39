"""Logging: journald with structured fields under systemd, a concise console format otherwise.

Every handler carries a :class:`SecretFilter`, so a secret is masked wherever it would
appear: in the message, its arguments, an exception's text or a traceback. Records can carry
journal fields through ``extra`` (see :func:`fields`); the current state and session are
added to every record by :func:`set_context`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

FIELD_STATE: Final = "APPLIANCE_STATE"
FIELD_EVENT: Final = "APPLIANCE_EVENT"
FIELD_SESSION: Final = "APPLIANCE_SESSION"
FIELD_RESPONSE_LATENCY_MS: Final = "APPLIANCE_RESPONSE_LATENCY_MS"
FIELD_BARGE_IN_MS: Final = "APPLIANCE_BARGE_IN_MS"
FIELD_OUTAGE_MS: Final = "APPLIANCE_OUTAGE_MS"
FIELD_PREFIX: Final = "APPLIANCE_"

SYSLOG_IDENTIFIER: Final = "appliance"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
MASK: Final = "********"

# Loggers of libraries that log whole frames (audio included) at DEBUG.
_NOISY_LOGGERS = ("azure", "aiohttp.access", "aiohttp.websocket", "asyncio", "urllib3")

_context: dict[str, str] = {}


def set_context(*, state: str | None = None, session: str | None = None) -> None:
    """Fields stamped on every following record (the loop is the only writer)."""
    if state is not None:
        _context[FIELD_STATE] = state
    if session is not None:
        if session:
            _context[FIELD_SESSION] = session
        else:
            _context.pop(FIELD_SESSION, None)


def fields(*, event: str | None = None, **measured_ms: float) -> dict[str, Any]:
    """``extra=`` for a record: the event and latencies in ms (``response_latency=12.3``)."""
    extra: dict[str, Any] = {}
    if event is not None:
        extra[FIELD_EVENT] = event
    for name, value in measured_ms.items():
        extra[f"{FIELD_PREFIX}{name.upper()}_MS"] = f"{value:.1f}"
    return extra


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class SecretFilter(logging.Filter):
    """Masks registered secret values and anything shaped like a credential."""

    _PATTERNS: Final = (
        # Authorization: Bearer <token>, and JWTs wherever they appear.
        re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),
        re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
        # api-key: X, "api_key": "X", client_secret=X, access_token=X, password=X
        re.compile(
            r"(?i)((?:api[-_]?key|client[-_]?secret|access[-_]?token|password)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
    )

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        # Very short values would mask ordinary words; no real key or token is that short.
        self._secrets.update(s for s in secrets if s and len(s) >= 6)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in self._PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None  # only the redacted text may travel on
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class ContextFilter(logging.Filter):
    """Adds the current state and session to each record that does not carry its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class StructuredJournalHandler(JournalHandler):  # type: ignore[misc]
        """Sends the message and our APPLIANCE_* fields, nothing of the record's internals."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                extra = {k: str(v) for k, v in vars(record).items() if k.startswith(FIELD_PREFIX)}
                self.send(
                    self.format(record),
                    PRIORITY=str(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName or "",
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                    **extra,
                )
            except Exception:  # noqa: BLE001 - logging must never raise into the caller
                self.handleError(record)

    return StructuredJournalHandler()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(short_name)s: %(message)s",
            datefmt="%H:%M:%S",
        )

    def format(self, record: logging.LogRecord) -> str:
        record.short_name = record.name.removeprefix("appliance.")
        return super().format(record)


def setup_logging(
    level: str | int = "INFO",
    *,
    secrets: Iterable[str] = (),
    journal: bool | None = None,
) -> SecretFilter:
    """Configure the root logger once; returns the secret filter to register more secrets.

    ``journal=None`` chooses journald when running under systemd with a journal socket.
    """
    use_journal = under_systemd() and JOURNAL_SOCKET.exists() if journal is None else journal
    handler = _journal_handler() if use_journal else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ConsoleFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    secret_filter = SecretFilter(secrets)
    handler.addFilter(secret_filter)
    handler.addFilter(ContextFilter())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return secret_filter
