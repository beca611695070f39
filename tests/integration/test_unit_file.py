"""The systemd unit: `systemd-analyze verify` clean, exposure 1.5 or lower, the settings the
device depends on (restarts, watchdog, reload, the sandbox letting audio, GPIO, journald and
the network through). The unit's behaviour under a real systemd is in test_nspawn_*.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "appliance.service"
MAX_EXPOSURE = 1.5
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)"
)


def settings(section: str) -> dict[str, list[str]]:
    """Every key of a unit section with all its values, in order (keys may repeat)."""
    values: dict[str, list[str]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def seconds(value: str) -> float:
    """A systemd time span (e.g. 30s, 10min, 1min 30s) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def test_exposure_score_is_at_most_1_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        cwd=UNIT.parent,
        check=False,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for appliance\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.skipif(not SYSTEM_UNITS.is_dir(), reason="needs systemd's own units")
def test_verify_is_clean(tmp_path: Path) -> None:
    """verify in a root holding the installed layout: the unit, its binaries, systemd's units."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    for name in ("opt/appliance/venv/bin/appliance", "bin/kill"):
        executable = root / name
        executable.parent.mkdir(parents=True, exist_ok=True)
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o755)
    (root / "etc/appliance").mkdir(parents=True)
    (root / "etc/appliance/appliance.env").write_text("")
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/appliance.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "appliance.service"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_runs_as_a_notify_service_of_its_own_user() -> None:
    service = settings("Service")
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"][0].endswith("/venv/bin/appliance")
    assert service["EnvironmentFile"] == ["/etc/appliance/appliance.env"]
    assert service["User"] == ["appliance"]
    assert service["SupplementaryGroups"] == ["audio gpio"]
    assert service["StateDirectory"] == ["appliance"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_restarts_after_failures_but_not_after_a_configuration_error() -> None:
    unit, service = settings("Unit"), settings("Service")
    assert service["Restart"] == ["on-failure"]
    assert 1 <= seconds(service["RestartSec"][0]) <= 30
    assert service["RestartPreventExitStatus"] == ["78"]
    # A crash loop ends; occasional crashes at RestartSec pace never reach the limit.
    interval = seconds(unit["StartLimitIntervalSec"][0])
    burst = int(unit["StartLimitBurst"][0])
    assert burst >= 5
    assert interval > 0


def test_a_wedged_process_is_restarted_in_bounded_time() -> None:
    service = settings("Service")
    watchdog = seconds(service["WatchdogSec"][0])
    abort = seconds(service["TimeoutAbortSec"][0])
    assert 10 <= watchdog <= 120  # pings every watchdog/2 s; tolerant of a slow Pi's hiccups
    # SIGABRT cannot end a stopped process: SIGKILL follows after TimeoutAbortSec.
    assert 0 < abort <= 30
    assert watchdog + abort + seconds(service["RestartSec"][0]) <= 180


def test_the_sandbox_lets_through_what_the_device_needs() -> None:
    service = settings("Service")
    binds = " ".join(service["BindPaths"]).split()
    assert "-/dev/snd" in binds
    assert "-/dev/gpiochip0" in binds
    assert "-/dev/gpiochip4" in binds  # the header's chip on a Pi 5 with older kernels
    assert service["DeviceAllow"] == ["char-alsa rw", "char-gpiochip rw"]
    families = service["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service
    assert "InaccessiblePaths" not in service  # /run (journald, audio server sockets) stays


def test_installed_by_multi_user_target() -> None:
    assert settings("Install")["WantedBy"] == ["multi-user.target"]
