"""install.sh run again (another prefix, an edited env file) and uninstall.sh, for real, in a
Debian 12 rootfs; the service is checked in the booted container."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.nspawn import SOURCE_IN_ROOTFS, Container, missing_prerequisites, run_install

pytestmark = [
    pytest.mark.slow,
    pytest.mark.privileged,
    # The first test also pays for debootstrap and install.sh on a fresh clone.
    pytest.mark.timeout(2400),
    pytest.mark.skipif(missing_prerequisites() is not None, reason=str(missing_prerequisites())),
]

ENV_FILE = "/etc/appliance/appliance.env"
OWNER_EDIT = "# the owner's own file\nAPPLIANCE_VOLUME=55\n"


def group_name(rootfs: Path, gid: int) -> str:
    for line in (rootfs / "etc/group").read_text().splitlines():
        name, _, number, _ = line.split(":", 3)
        if int(number) == gid:
            return name
    return str(gid)


def names_in(rootfs: Path, database: str) -> set[str]:
    return {line.split(":", 1)[0] for line in (rootfs / f"etc/{database}").read_text().splitlines()}


def test_reinstall_with_a_custom_prefix_then_uninstall_and_purge(
    rootfs_copy: Path, tmp_path: Path
) -> None:
    env_file = rootfs_copy / ENV_FILE.lstrip("/")
    env_file.write_text(OWNER_EDIT)
    os.chown(env_file, 0, 0)
    env_file.chmod(0o600)

    again = run_install(rootfs_copy, "--prefix", "/srv/device")
    assert again.returncode == 0, again.stderr
    assert "Debian packages: all present" in again.stderr
    assert "creating the appliance system user" not in again.stderr
    assert f"keeping {ENV_FILE} as it is" in again.stderr
    assert env_file.read_text() == OWNER_EDIT  # never overwritten
    status = env_file.stat()
    assert (status.st_mode & 0o777, status.st_uid) == (0o640, 0)
    assert group_name(rootfs_copy, status.st_gid) == "appliance"  # the service can read it
    unit = (rootfs_copy / "etc/systemd/system/appliance.service").read_text()
    assert "\nExecStart=/srv/device/venv/bin/appliance\n" in unit

    container = Container(rootfs_copy, tmp_path / "console.log")
    try:
        container.boot()
        # The new prefix's appliance ran: it named the missing endpoint and exited 78.
        service = container.show("appliance.service", "ExecMainStatus", "ActiveState")
        assert service == {"ExecMainStatus": "78", "ActiveState": "failed"}
        assert (
            "/srv/device/venv/bin/appliance"
            in container.show("appliance.service", "ExecStart")["ExecStart"]
        )

        container.run("/srv/device/uninstall.sh", "--prefix", "/srv/device")
        assert not container.path("/srv/device").exists()
        assert not container.path("/etc/systemd/system/appliance.service").exists()
        assert not container.path("/etc/udev/rules.d/60-appliance-gpiochip.rules").exists()
        assert container.systemctl("cat", "appliance.service", check=False).returncode != 0
        assert "appliance" not in names_in(rootfs_copy, "passwd")
        assert "gpio" in names_in(rootfs_copy, "group")  # that install found it: not its own
        kept = env_file.stat()
        assert env_file.read_text() == OWNER_EDIT
        assert (kept.st_mode & 0o777, kept.st_uid, kept.st_gid) == (0o640, 0, 0)

        # The first install (default prefix) is still there; --purge removes it all.
        container.run(f"{SOURCE_IN_ROOTFS}/scripts/uninstall.sh", "--purge")
        for path in ("/opt/appliance", "/etc/appliance", "/var/lib/appliance"):
            assert not container.path(path).exists(), path
        assert "gpio" not in names_in(rootfs_copy, "group")  # created by the first install
        assert "appliance" not in names_in(rootfs_copy, "group")
        state = container.run("systemctl", "is-system-running", check=False).stdout.strip()
        assert state == "running"
    finally:
        container.shutdown()
