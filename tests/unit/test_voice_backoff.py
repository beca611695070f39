from __future__ import annotations

import logging
import random

import pytest

from appliance.errors import ServiceError
from appliance.state import ErrorKind
from appliance.voice.backoff import FIELD_OUTAGE_MS, Backoff, ConnectionBudget, OutageLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outages(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> OutageLog:
    """An outage log on a fake clock whose every record ``outage_records`` sees."""
    caplog.set_level(logging.DEBUG, logger="test.outage")
    return OutageLog(logging.getLogger("test.outage"), clock=clock)


def outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "test.outage"]


def offline() -> ServiceError:
    return ServiceError("unreachable", ErrorKind.OFFLINE)


def test_steps_double_from_half_a_second_up_to_the_cap() -> None:
    backoff = Backoff(jitter=0.0)
    delays = [backoff.next_delay(offline()) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_jitter_only_shortens_a_step_and_follows_the_random_source() -> None:
    backoff = Backoff(jitter=0.25, rng=random.Random(7))
    reference = random.Random(7)
    for step in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0):
        delay = backoff.next_delay(offline())
        assert delay == pytest.approx(step * (1 - 0.25 * reference.random()))
        assert step * 0.75 <= delay <= step


def test_jittered_delays_differ_between_devices() -> None:
    a = Backoff(rng=random.Random(1))
    b = Backoff(rng=random.Random(2))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]


def test_auth_refusal_goes_to_the_cap_at_once_and_stays_there() -> None:
    backoff = Backoff(jitter=0.0)
    assert backoff.next_delay(ServiceError("401", ErrorKind.AUTH)) == 30.0
    # Whatever comes next, the steps do not start over until a success.
    assert backoff.next_delay(offline()) == 30.0
    assert backoff.next_delay(ErrorKind.AUTH) == 30.0


def test_retry_after_is_honoured_but_bounded() -> None:
    backoff = Backoff(jitter=0.0, max_retry_after=120.0)
    throttled = ServiceError("429", ErrorKind.RATE_LIMITED, retry_after=45.0)
    assert backoff.next_delay(throttled) == 45.0
    assert backoff.next_delay(ServiceError("429", ErrorKind.RATE_LIMITED, retry_after=0.2)) == 1.0
    huge = ServiceError("429", ErrorKind.RATE_LIMITED, retry_after=86400.0)
    assert backoff.next_delay(huge) == 120.0


def test_rate_limited_without_retry_after_backs_off_exponentially() -> None:
    backoff = Backoff(jitter=0.0)
    throttled = ServiceError("429", ErrorKind.RATE_LIMITED)
    assert [backoff.next_delay(throttled) for _ in range(3)] == [0.5, 1.0, 2.0]


def test_a_healthy_session_resets_the_steps() -> None:
    clock = FakeClock()
    backoff = Backoff(jitter=0.0, healthy_after=10.0, clock=clock)
    for _ in range(5):
        backoff.next_delay(offline())
    backoff.connected()
    clock.advance(10.0)
    assert backoff.next_delay(offline()) == 0.5


def test_a_connection_dropped_at_once_does_not_reset_the_steps() -> None:
    clock = FakeClock()
    backoff = Backoff(jitter=0.0, healthy_after=10.0, clock=clock)
    assert [backoff.next_delay(offline()) for _ in range(3)] == [0.5, 1.0, 2.0]
    backoff.connected()
    clock.advance(1.0)  # accepted, then dropped a second later
    assert backoff.next_delay(offline()) == 4.0


def test_reset_starts_over_even_after_an_auth_refusal() -> None:
    backoff = Backoff(jitter=0.0)
    backoff.next_delay(ErrorKind.AUTH)
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay(offline()) == 0.5


def test_days_of_failures_stay_at_the_cap() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(100_000):
        delay = backoff.next_delay(offline())
    assert delay == 30.0


@pytest.mark.parametrize(
    "options",
    [{"initial": 0.0}, {"initial": 60.0, "cap": 30.0}, {"factor": 0.5}, {"jitter": 1.0}],
)
def test_nonsense_parameters_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(**options)  # type: ignore[arg-type]


def test_budget_allows_thirty_connections_a_minute_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    budget = ConnectionBudget(30, clock=clock)
    for _ in range(30):
        assert budget.take() == 0.0
        clock.advance(1.0)
    # 30 connections in the last 30 s: the first one leaves the window 30 s from now.
    assert budget.take() == pytest.approx(30.0)
    clock.advance(30.0)
    assert budget.take() == 0.0


def test_budget_refusal_does_not_count_as_a_connection() -> None:
    clock = FakeClock()
    budget = ConnectionBudget(2, clock=clock)
    assert budget.take() == 0.0
    assert budget.take() == 0.0
    for _ in range(10):
        assert budget.take() == pytest.approx(60.0)
    clock.advance(60.0)
    assert budget.take() == 0.0
    assert budget.take() == 0.0
    assert budget.take() > 0


def test_outage_is_logged_once_at_warning_then_debug_then_recovery_at_info(
    caplog: pytest.LogCaptureFixture, outages: OutageLog, clock: FakeClock
) -> None:
    outages.failed(offline(), 0.5)
    clock.advance(0.5)
    outages.failed(offline(), 1.0)
    clock.advance(1.0)
    outages.failed(offline(), 2.0)
    clock.advance(2.0)
    assert outages.recovered() == pytest.approx(3.5)
    levels = [r.levelno for r in outage_records(caplog)]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.INFO]
    assert "unreachable" in outage_records(caplog)[0].getMessage()
    recovery = outage_records(caplog)[-1]
    assert "3.5 s" in recovery.getMessage()
    assert getattr(recovery, FIELD_OUTAGE_MS) == "3500.0"
    # A new outage is news again.
    caplog.clear()
    outages.failed(offline(), 0.5)
    assert outage_records(caplog)[0].levelno == logging.WARNING


def test_a_different_kind_of_failure_is_reported_again(
    caplog: pytest.LogCaptureFixture, outages: OutageLog
) -> None:
    outages.failed(offline(), 0.5)
    outages.failed(offline(), 1.0)
    outages.failed(ServiceError("HTTP 401", ErrorKind.AUTH), 30.0)
    outages.failed(ServiceError("HTTP 401", ErrorKind.AUTH), 30.0)
    levels = [r.levelno for r in outage_records(caplog)]
    assert levels == [logging.WARNING, logging.DEBUG, logging.WARNING, logging.DEBUG]


def test_an_audio_device_outage_is_named_as_such_and_keeps_out_of_the_reconnect_field(
    caplog: pytest.LogCaptureFixture, outages: OutageLog, clock: FakeClock
) -> None:
    kinds = [outages.kind]
    outages.failed(ErrorKind.DEVICE, 0.5)
    kinds.append(outages.kind)  # the app ends only a device outage when the audio works
    clock.advance(2.0)
    outages.recovered()
    kinds.append(outages.kind)
    assert kinds == [None, ErrorKind.DEVICE, None]
    failed, recovered = outage_records(caplog)
    assert failed.getMessage() == "audio device unavailable (device); retrying in 0.5 s (attempt 1)"
    assert recovered.getMessage() == "audio device works again after 2.0 s (1 failed attempt)"
    assert not hasattr(recovered, FIELD_OUTAGE_MS)


def test_recovery_without_an_outage_logs_nothing(
    caplog: pytest.LogCaptureFixture, outages: OutageLog
) -> None:
    assert outages.recovered() is None
    assert outage_records(caplog) == []


def test_a_disconnect_event_is_a_failure_the_policy_understands(
    caplog: pytest.LogCaptureFixture, outages: OutageLog
) -> None:
    from appliance.voice.session import Disconnected

    backoff = Backoff(jitter=0.0)
    dropped = Disconnected("connection dropped (code 1006)", 1006, ErrorKind.OFFLINE)
    assert backoff.next_delay(dropped) == 0.5
    assert backoff.next_delay(Disconnected("policy violation", 1008, ErrorKind.AUTH)) == 30.0
    outages.failed(dropped, 0.5)
    (record,) = outage_records(caplog)
    assert "offline" in record.getMessage()
    assert "connection dropped (code 1006)" in record.getMessage()
