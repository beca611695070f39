from __future__ import annotations

import logging

import pytest

from appliance.system import journal
from appliance.system.journal import SecretFilter, fields, set_context, setup_logging

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2FpLmF6dXJlLmNvbSJ9.c2lnbmF0dXJl"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture):
    secret_filter = setup_logging("DEBUG", secrets=["registered-secret-1"], journal=False)
    caplog.handler.addFilter(secret_filter)
    yield caplog
    logging.getLogger().handlers.clear()


def test_registered_secrets_are_masked_in_message_and_arguments(captured) -> None:
    log = logging.getLogger("appliance.test")
    log.info("key is %s", "registered-secret-1")
    log.info("inline registered-secret-1 here")
    assert "registered-secret-1" not in captured.text
    assert journal.MASK in captured.text


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        f"token {TOKEN}",
        "headers={'api-key': 'abcdef0123456789'}",
        "client_secret=abcdef0123456789&grant_type=client_credentials",
        '"access_token": "abcdef0123456789"',
    ],
)
def test_credential_shapes_are_masked_even_when_unregistered(text: str) -> None:
    redacted = SecretFilter().redact(text)
    assert "abcdef0123456789" not in redacted
    assert TOKEN not in redacted
    assert journal.MASK in redacted


def test_exceptions_and_tracebacks_are_masked(captured) -> None:
    log = logging.getLogger("appliance.test")
    try:
        raise RuntimeError("refused with registered-secret-1")
    except RuntimeError:
        log.exception("connect failed")
    record = captured.records[-1]
    assert record.exc_info is None
    assert "registered-secret-1" not in (record.exc_text or "")
    assert "RuntimeError" in (record.exc_text or "")
    assert "registered-secret-1" not in captured.text


def test_short_values_are_not_treated_as_secrets() -> None:
    assert SecretFilter(["abc"]).redact("abc def") == "abc def"


def test_fields_name_events_and_latencies() -> None:
    assert fields(event="press", response_latency=12.345) == {
        "APPLIANCE_EVENT": "press",
        "APPLIANCE_RESPONSE_LATENCY_MS": "12.3",
    }


def test_context_is_stamped_on_records(captured) -> None:
    set_context(state="listening", session="sess_1")
    try:
        logging.getLogger("appliance.test").info("hello")
        record = captured.records[-1]
        assert record.APPLIANCE_STATE == "listening"
        assert record.APPLIANCE_SESSION == "sess_1"
    finally:
        set_context(state="idle", session="")


def test_console_is_used_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    setup_logging("INFO")
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    assert logging.getLogger("azure").level == logging.WARNING
    logging.getLogger().handlers.clear()
