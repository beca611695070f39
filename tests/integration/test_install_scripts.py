"""scripts/install.sh and scripts/uninstall.sh on this machine: --dry-run changes nothing and
shows every step with the chosen prefix; bad options are refused. Real installs and
uninstalls run inside a Debian 12 rootfs (test_nspawn_install.py), never on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
UNINSTALL = ROOT / "scripts" / "uninstall.sh"
PREFIX = "/srv/appliance-dry-run-test"

# What a real install would create or change on the host.
WATCHED = (
    PREFIX,
    "/etc/appliance",
    "/etc/systemd/system/appliance.service",
    "/etc/systemd/system/multi-user.target.wants/appliance.service",
    "/etc/udev/rules.d/60-appliance-gpiochip.rules",
)


def run(script: Path, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    command = [str(script), *args]
    if as_nobody:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def host_state() -> dict[str, object]:
    state: dict[str, object] = {path: os.path.lexists(path) for path in WATCHED}
    for database in ("passwd", "group"):
        state[database] = Path(f"/etc/{database}").read_text()
    return state


def test_dry_run_changes_nothing_and_shows_every_step_with_the_prefix() -> None:
    before = host_state()
    result = run(INSTALL, "--dry-run", "--prefix", PREFIX + "/", "--no-pi")
    assert result.returncode == 0, result.stderr
    assert host_state() == before
    out = result.stdout
    assert f"+ python3 -m venv {PREFIX}/venv\n" in out
    assert f"{PREFIX}/venv/bin/python -m pip install" in out
    assert f"|   ExecStart={PREFIX}/venv/bin/appliance\n" in out
    assert f"|   Documentation=file://{PREFIX}/README.md\n" in out
    assert "|   EnvironmentFile=/etc/appliance/appliance.env\n" in out
    assert f"+ install -m 0755 {ROOT}/scripts/uninstall.sh {PREFIX}/uninstall.sh\n" in out
    if "appliance:" not in str(before["passwd"]):
        assert "+ useradd --system --user-group" in out
    if not Path("/etc/appliance/appliance.env").exists():
        assert "+ install -m 0640 -o root -g appliance" in out
    assert "systemctl enable" in out


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_dry_run_needs_no_root_and_a_real_run_does() -> None:
    dry = run(INSTALL, "--dry-run", "--prefix", PREFIX, as_nobody=True)
    assert dry.returncode == 0, dry.stderr
    assert f"ExecStart={PREFIX}/venv/bin/appliance" in dry.stdout
    real = run(INSTALL, "--prefix", PREFIX, as_nobody=True)
    assert real.returncode == 1
    assert "run it as root" in real.stderr
    assert not os.path.exists(PREFIX)


@pytest.mark.parametrize("prefix", ["relative/path", "/with space", "/", "/a;b"])
def test_an_unusable_prefix_is_refused(prefix: str) -> None:
    result = run(INSTALL, "--dry-run", "--prefix", prefix)
    assert result.returncode == 1
    assert "--prefix" in result.stderr


def test_unknown_options_show_the_usage() -> None:
    for script in (INSTALL, UNINSTALL):
        result = run(script, "--frobnicate")
        assert result.returncode == 2
        assert "unknown option --frobnicate" in result.stderr
        assert "--dry-run" in result.stderr
    assert "--prefix DIR" in run(INSTALL, "--help").stderr


def test_uninstall_dry_run_changes_nothing() -> None:
    before = host_state()
    result = run(UNINSTALL, "--dry-run", "--purge", "--prefix", PREFIX)
    assert result.returncode == 0, result.stderr
    assert host_state() == before


@pytest.mark.parametrize("prefix", ["/usr", "/opt", "/etc"])
def test_uninstall_refuses_to_remove_a_system_folder(prefix: str) -> None:
    result = run(UNINSTALL, "--dry-run", "--prefix", prefix)
    assert result.returncode == 1
    assert f"refusing to remove the prefix {prefix}" in result.stderr
