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
CONFIG = (
    f"AZURE_VOICELIVE_ENDPOINT=http://127.0.0.1:{EMULATOR_PORT}\n"
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
