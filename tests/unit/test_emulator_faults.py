"""Fault plans: what a connection starts with, and what arming on an open one does."""

from __future__ import annotations

from appliance.emulator import SERVICE_MAX_CONNECTION_S, Close, Drop, Expire, Faults, SendError
from appliance.emulator.faults import Scheduled


def test_each_connection_gets_the_service_cap_unless_its_plan_says_otherwise() -> None:
    faults = Faults()
    faults.for_connection(2).cap_duration(60)
    first = faults.plan_for_new_connection()
    second = faults.plan_for_new_connection()
    assert first.scheduled == [Scheduled(Expire(), None, SERVICE_MAX_CONNECTION_S)]
    assert second.scheduled == [Scheduled(Expire(), None, 60)]


def test_next_connection_and_every_connection_combine() -> None:
    faults = Faults(max_connection_s=100)
    faults.every_connection.send_error(after_events=1).stop_answering_pings()
    faults.next_connection().drop(after_seconds=5).delay_events(0.5)
    plan = faults.plan_for_new_connection()
    assert plan.scheduled == [
        Scheduled(SendError(), 1, None),
        Scheduled(Drop(), None, 5),
        Scheduled(Expire(), None, 100),
    ]
    assert plan.ignore_pings
    assert plan.event_delay_s == 0.5
    # The next plan is fresh but still inherits the every-connection faults.
    assert faults.plan_for_new_connection().scheduled[0] == Scheduled(SendError(), 1, None)


def test_refusals_are_used_up_in_order() -> None:
    faults = Faults()
    faults.refuse_handshakes(503, times=2)
    faults.refuse_handshakes(401)
    assert faults.pending_refusals == 3
    assert [faults.take_refusal() for _ in range(4)] == [
        faults_refusal(503),
        faults_refusal(503),
        faults_refusal(401),
        None,
    ]


def faults_refusal(status: int) -> object:
    from appliance.emulator.faults import Refusal

    return Refusal(status)


def test_arming_an_attached_plan_reaches_the_connection_at_once() -> None:
    plan = Faults().plan_for_new_connection()
    armed: list[Scheduled] = []
    plan.attach(armed.append)
    assert armed == [Scheduled(Expire(), None, SERVICE_MAX_CONNECTION_S)]
    plan.close(1011, "bye", after_events=3)
    assert armed[-1] == Scheduled(Close(1011, "bye"), 3, None)
    plan.detach()
    plan.drop()
    assert len(armed) == 2
