"""Records reach a real systemd-journald with their structured fields, and no secret.

journald runs in a private mount namespace (its sockets and files on tmpfs), so the test
never touches the host's journal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

JOURNALD = Path("/lib/systemd/systemd-journald")
SECRET = "s3cr3t-client-value-42"

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace"),
    pytest.mark.skipif(
        not JOURNALD.exists() or shutil.which("unshare") is None,
        reason="needs systemd-journald and unshare",
    ),
]

CHILD = textwrap.dedent(
    f"""
    import logging, os
    os.environ["INVOCATION_ID"] = "0123456789abcdef"
    from appliance.system.journal import fields, set_context, setup_logging
    setup_logging("INFO", secrets=["{SECRET}"])
    log = logging.getLogger("appliance.app")
    set_context(state="listening", session="sess_emu0001")
    log.info("state listening -> responding", extra=fields(event="response_started",
             response_latency=412.5))
    log.warning("token refused: Bearer {SECRET}")
    try:
        raise ValueError("bad secret {SECRET}")
    except ValueError:
        log.exception("credential failed")
    """
)

SCRIPT = """
set -eu
mount --make-rprivate /
for d in /run/systemd/journal /run/log/journal /var/log/journal; do
    mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
{journald} &
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
{python} {child}
# journald has every datagram once the sender returns; sync makes it write them out.
journalctl --sync
journalctl --directory=/run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=appliance
kill $!
"""


def test_records_reach_journald_with_fields_and_without_secrets(tmp_path: Path) -> None:
    child = tmp_path / "child.py"  # a file, so the secret is not on the command line
    child.write_text(CHILD)
    script = SCRIPT.format(journald=JOURNALD, python=sys.executable, child=child)
    result = subprocess.run(
        ["unshare", "--mount", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == 3, result.stdout
    first, second, third = entries
    assert first["MESSAGE"] == "state listening -> responding"
    assert first["APPLIANCE_STATE"] == "listening"
    assert first["APPLIANCE_SESSION"] == "sess_emu0001"
    assert first["APPLIANCE_EVENT"] == "response_started"
    assert first["APPLIANCE_RESPONSE_LATENCY_MS"] == "412.5"
    assert first["PRIORITY"] == "6"
    assert second["PRIORITY"] == "4"
    assert "ValueError" in third["MESSAGE"]
    assert SECRET not in result.stdout
