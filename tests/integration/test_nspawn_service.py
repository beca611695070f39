"""The appliance as a service under a real systemd (Debian 12 in systemd-nspawn).

The installed unit runs unchanged but for a drop-in that makes it simulate-style: mock pins,
WAV files for the microphone and speaker; the Voice Live emulator runs as a second unit on
the container's loopback and the env file points the appliance at it. Every wait is on a
journal entry or a systemctl job, with a timeout.

The wedge is ``kill -STOP`` of the main process: it proves that the unit's watchdog settings
restart a process that stops pinging, in bounded time. That a wedged event loop or wedged
audio callbacks stop the pings is proven by tests/unit/test_notify.py.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.fixtures.nspawn import Container, missing_prerequisites

pytestmark = [
    pytest.mark.slow,
    pytest.mark.privileged,
    # The first test also pays for debootstrap and install.sh on a fresh clone.
    pytest.mark.timeout(2400),
    pytest.mark.skipif(missing_prerequisites() is not None, reason=str(missing_prerequisites())),
]

VENV = "/opt/appliance/venv"
UNIT = "appliance.service"
EMULATOR_PORT = 8765
ENV_FILE = "/etc/appliance/appliance.env"
COMMANDS = "/run/appliance-commands"
MIC = f"{VENV}/lib/python3.11/site-packages/appliance/assets/sample.wav"
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # systemd's MESSAGE_ID for "Started UNIT"
UNIT_STOPPED = "9d1aaa27d60140bd96365438aad20286"  # and for "Stopped UNIT"
CONFIG = (
    f"AZURE_VOICELIVE_ENDPOINT=http://127.0.0.1:{EMULATOR_PORT}\n"
    "APPLIANCE_AUTH=api_key\n"
    "AZURE_VOICELIVE_API_KEY=emulator-accepts-any-key\n"  # no IMDS in a private network
    "APPLIANCE_PIN_FACTORY=mock\n"
    "APPLIANCE_VOLUME=80\n"
)
SIMULATE = (
    "[Service]\n"
    "ExecStart=\n"
    f"ExecStart={VENV}/bin/appliance --simulate --mic {MIC}"
    " --speaker /var/lib/appliance/speaker.wav\n"
)


Predicate = Callable[[dict[str, object]], bool]


def started(unit: str = UNIT) -> Predicate:
    return lambda entry: entry.get("MESSAGE_ID") == UNIT_STARTED and entry.get("UNIT") == unit


def stopped(unit: str = UNIT) -> Predicate:
    return lambda entry: entry.get("MESSAGE_ID") == UNIT_STOPPED and entry.get("UNIT") == unit


def message_contains(text: str) -> Predicate:
    return lambda entry: text in str(entry.get("MESSAGE", ""))


def configure(container: Container, config: str = CONFIG) -> None:
    container.path(ENV_FILE).write_text(config)  # keeps its owner and mode (0640 root:appliance)


@pytest.fixture
def service(container: Container) -> Container:
    """The booted container with the emulator running and the appliance configured, stopped."""
    return prepare(container)


def prepare(container: Container) -> Container:
    configure(container)
    container.write(f"/etc/systemd/system/{UNIT}.d/simulate.conf", SIMULATE)
    container.systemctl("daemon-reload")
    container.systemctl("reset-failed", UNIT, check=False)
    with container.follow("_SYSTEMD_UNIT=voicelive-emulator.service") as journal:
        container.run(
            "systemd-run",
            "--unit=voicelive-emulator",
            "--property=DynamicUser=yes",
            f"{VENV}/bin/appliance",
            "emulator",
            "--port",
            str(EMULATOR_PORT),
        )
        journal.wait_for(
            message_contains("Voice Live emulator listening on"), 60, "from the emulator"
        )
    return container


def main_pid(container: Container) -> int:
    return int(container.show(UNIT, "MainPID")["MainPID"])


def test_reaches_ready_and_says_what_it_does(service: Container) -> None:
    service.systemctl("start", UNIT)  # a Type=notify start returns on READY=1
    state = service.show(UNIT, "ActiveState", "SubState", "StatusText", "NRestarts")
    assert state["ActiveState"] == "active"
    assert state["SubState"] == "running"
    assert state["StatusText"].startswith("idle")
    assert state["NRestarts"] == "0"


def test_a_stop_is_clean(service: Container) -> None:
    service.systemctl("start", UNIT)
    service.systemctl("stop", UNIT)
    state = service.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
        "NRestarts": "0",
    }


def test_a_quiet_start_and_stop_log_no_error(service: Container) -> None:
    # The app's records and systemd's "Stopped" travel the same journal socket, in order:
    # once "Stopped" is read, every record of the run is.
    with service.follow(f"_SYSTEMD_UNIT={UNIT}", "+", f"UNIT={UNIT}") as journal:
        service.systemctl("start", UNIT)
        service.systemctl("stop", UNIT)
        journal.wait_for(stopped(), 30, "saying the unit stopped")
    errors = [
        e.get("MESSAGE")
        for e in journal.entries
        if e.get("_SYSTEMD_UNIT") == UNIT and int(str(e.get("PRIORITY", 6))) <= 3
    ]
    assert errors == []


def test_the_ready_record_carries_the_state(service: Container) -> None:
    with service.follow(f"_SYSTEMD_UNIT={UNIT}") as journal:
        service.systemctl("start", UNIT)
        ready = journal.wait_for(
            lambda e: "LOGGER" in e and str(e.get("MESSAGE", "")).startswith("ready"),
            30,
            "saying it is ready",
        )
    assert ready.get("APPLIANCE_STATE") == "idle"


def test_reload_applies_a_valid_change_and_refuses_an_invalid_one(service: Container) -> None:
    service.systemctl("start", UNIT)
    pid = main_pid(service)
    with service.follow(f"_SYSTEMD_UNIT={UNIT}") as journal:
        configure(service, CONFIG.replace("APPLIANCE_VOLUME=80", "APPLIANCE_VOLUME=40"))
        service.systemctl("reload", UNIT)
        journal.wait_for(
            message_contains("configuration reloaded; changed: APPLIANCE_VOLUME"), 30, "reload"
        )
        configure(service, CONFIG.replace("APPLIANCE_VOLUME=80", "APPLIANCE_VOLUME=loud"))
        service.systemctl("reload", UNIT)
        refused = journal.wait_for(message_contains("reload refused"), 30, "refusing the reload")
        assert "APPLIANCE_VOLUME='loud'" in str(refused["MESSAGE"])
    state = service.show(UNIT, "ActiveState", "MainPID", "NRestarts")
    assert state == {"ActiveState": "active", "MainPID": str(pid), "NRestarts": "0"}


def test_a_killed_process_is_restarted(service: Container) -> None:
    service.systemctl("start", UNIT)
    pid = main_pid(service)
    with service.follow() as journal:
        service.systemctl("kill", f"--signal={signal.SIGKILL.name}", UNIT)
        journal.wait_for(started(), 60, "for the restarted unit")
    state = service.show(UNIT, "ActiveState", "NRestarts", "MainPID")
    assert state["ActiveState"] == "active"
    assert state["NRestarts"] == "1"
    assert int(state["MainPID"]) not in (0, pid)


def test_a_wedged_process_is_restarted_by_the_watchdog(service: Container) -> None:
    service.systemctl("start", UNIT)
    pid = main_pid(service)
    with service.follow() as journal:
        service.run("kill", "-STOP", str(pid))
        # WatchdogSec=30s, then SIGABRT, SIGKILL after TimeoutAbortSec=10s, RestartSec=5s.
        journal.wait_for(message_contains("Watchdog timeout"), 90, "about the watchdog")
        journal.wait_for(started(), 90, "for the restarted unit")
    state = service.show(UNIT, "ActiveState", "NRestarts", "MainPID")
    assert state["ActiveState"] == "active"
    assert state["NRestarts"] == "1"
    assert int(state["MainPID"]) != pid


def test_a_configuration_error_stops_with_78_and_is_not_restarted(service: Container) -> None:
    configure(service, CONFIG + "APPLIANCE_BUTTON_MODE=sometimes\n")
    assert service.systemctl("start", UNIT, check=False).returncode != 0
    # Right after the failure a restart would show as activating/auto-restart.
    state = service.show(UNIT, "ActiveState", "SubState", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    messages = " ".join(str(e.get("MESSAGE")) for e in service.journal("-u", UNIT))
    assert "APPLIANCE_BUTTON_MODE='sometimes'" in messages


def test_the_journal_has_the_structured_fields_of_a_conversation(service: Container) -> None:
    # The button comes from stdin commands, as in --simulate without a terminal: a FIFO,
    # held open by a second unit so the appliance never reads its end.
    service.run("mkfifo", "--mode=0660", COMMANDS)
    service.run("chgrp", "appliance", COMMANDS)
    service.run(
        "systemd-run", "--unit=command-pipe", "sh", "-c", f"exec 3<>{COMMANDS}; exec sleep infinity"
    )
    service.write(
        f"/etc/systemd/system/{UNIT}.d/commands.conf",
        f"[Service]\nStandardInput=file:{COMMANDS}\n",
    )
    service.systemctl("daemon-reload")
    service.systemctl("start", UNIT)
    with service.follow(f"_SYSTEMD_UNIT={UNIT}") as journal:
        service.sh(f"echo click > {COMMANDS}")
        entry = journal.wait_for(
            lambda e: e.get("APPLIANCE_STATE") == "listening" and "APPLIANCE_SESSION" in e,
            60,
            "in a listening session",
        )
        assert str(entry["APPLIANCE_SESSION"])
        events = journal.wait_for(lambda e: "APPLIANCE_EVENT" in e, 60, "with an event")
        assert str(events["APPLIANCE_EVENT"])
