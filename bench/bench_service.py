"""Service figures: the unit's exposure score, process start to READY=1 on this machine, and
SIGKILL to READY=1 again under systemd (Debian 12 in systemd-nspawn, installed by install.sh).

Start to READY: ``appliance --simulate`` (mock pins, WAV audio, the built-in emulator) with a
NOTIFY_SOCKET this script binds; from spawning the process to the READY=1 datagram.
SIGKILL to READY: in the container, ``systemctl kill --signal=SIGKILL appliance``, then
systemd's own monotonic timestamps of the new process's exec and READY (the container shares
this machine's monotonic clock), so the figure includes the unit's RestartSec.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import median, table

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "appliance.service"
APPLIANCE = Path(sys.executable).with_name("appliance")
READY_RUNS = 10
KILL_RUNS = 5


def exposure(unit: Path) -> str:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", unit.name],
        capture_output=True,
        text=True,
        cwd=unit.parent,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    return f"{match.group(1)} {match.group(2)}" if match else "?"


def _sample_wav() -> Path:
    from importlib import resources

    return Path(str(resources.files("appliance") / "assets" / "sample.wav"))


def start_to_ready_s(runs: int = READY_RUNS) -> list[float] | str:
    """Seconds from spawning `appliance --simulate` to its READY=1, or why it cannot be run."""
    try:
        mic = _sample_wav()
    except (ModuleNotFoundError, TypeError):
        return "no sample WAV in this version"
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as directory:
        address = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(address)
            environment = {
                name: value
                for name, value in os.environ.items()
                if not name.startswith(("APPLIANCE_", "AZURE_"))
            }
            environment |= {"NOTIFY_SOCKET": address, "APPLIANCE_PIN_FACTORY": "mock"}
            for _ in range(runs):
                command = [str(APPLIANCE), "--simulate", "--mic", str(mic)]
                command += ["--speaker", os.path.join(directory, "speaker.wav")]
                start = time.perf_counter()
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=environment,
                )
                try:
                    outcome = _wait_ready(listener, process, timeout=60)
                finally:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                        process.communicate(timeout=30)
                if isinstance(outcome, str):
                    return outcome
                times.append(outcome - start)
    return times


def _wait_ready(
    listener: socket.socket, process: subprocess.Popen[bytes], timeout: float
) -> float | str:
    """perf_counter() at READY=1, or why it did not come (the process's last words)."""
    assert process.stderr is not None
    notify, stderr = listener.fileno(), process.stderr.fileno()
    deadline = time.perf_counter() + timeout
    errors = b""
    while (remaining := deadline - time.perf_counter()) > 0:
        readable, _, _ = select.select([notify, stderr], [], [], remaining)
        if notify in readable:
            now = time.perf_counter()
            if "READY=1" in listener.recv(4096).decode().splitlines():
                return now
        if stderr in readable:
            chunk = os.read(stderr, 65536)
            if not chunk:
                process.wait(timeout=30)
                return f"exited {process.returncode}: {errors.decode().strip()[-300:]}"
            errors = (errors + chunk)[-4096:]
    return f"no READY=1 within {timeout:g} s"


def sigkill_to_ready_s(runs: int = KILL_RUNS) -> tuple[list[float], list[float]] | str:
    """(SIGKILL to READY, new process exec to READY) in seconds, under systemd in nspawn."""
    from tests.fixtures import nspawn

    reason = nspawn.missing_prerequisites()
    if reason:
        return reason
    from tests.integration import test_nspawn_service as service_test

    nspawn.sweep_stale_work_dirs()
    work = nspawn.work_dir("bench")
    container = nspawn.Container(work, work.with_suffix(".console.log"))
    try:
        nspawn.copy_tree(nspawn.base_rootfs(), work)
        nspawn.copy_project(work)
        installed = nspawn.run_install(work)
        if installed.returncode != 0:
            return f"install.sh failed: {installed.stderr[-300:]}"
        container.boot()
        service_test.prepare(container)
        if container.systemctl("start", "appliance.service", check=False).returncode != 0:
            status = container.systemctl("status", "appliance.service", check=False).stdout
            return "the appliance did not start: " + status[-300:]
        to_ready, exec_to_ready = [], []
        for _ in range(runs):
            with container.follow() as journal:
                killed = time.clock_gettime(time.CLOCK_MONOTONIC)
                container.systemctl("kill", "--signal=SIGKILL", "appliance.service")
                journal.wait_for(service_test.started(), 120, "for the restarted unit")
            stamps = container.show(
                "appliance.service",
                "ExecMainStartTimestampMonotonic",
                "ActiveEnterTimestampMonotonic",
            )
            exec_at = int(stamps["ExecMainStartTimestampMonotonic"]) / 1e6
            ready_at = int(stamps["ActiveEnterTimestampMonotonic"]) / 1e6
            to_ready.append(ready_at - killed)
            exec_to_ready.append(ready_at - exec_at)
        return to_ready, exec_to_ready
    finally:
        container.shutdown()
        nspawn.remove_work_dir(work)
        work.with_suffix(".console.log").unlink(missing_ok=True)


def main() -> None:
    scores = [["systemd/appliance.service", exposure(UNIT)]]
    timesyncd = Path("/lib/systemd/system/systemd-timesyncd.service")
    if timesyncd.exists():
        scores.append(["Debian 12's systemd-timesyncd.service (for scale)", exposure(timesyncd)])
    table("Unit exposure (systemd-analyze security --offline=true)", ["unit", "score"], scores)

    ready = start_to_ready_s()
    if isinstance(ready, str):
        print(f"\nStart to READY=1: not measured ({ready})")
    else:
        table(
            f"Start to READY=1, appliance --simulate on this machine ({len(ready)} runs, s)",
            ["figure", "median", "min", "max"],
            [["spawn to READY=1", median(ready), min(ready), max(ready)]],
        )

    killed = sigkill_to_ready_s()
    if isinstance(killed, str):
        print(f"\nSIGKILL to READY=1 under systemd: not measured ({killed})")
    else:
        to_ready, exec_to_ready = killed
        table(
            f"SIGKILL to READY=1 under systemd in systemd-nspawn ({len(to_ready)} runs, s)",
            ["figure", "median", "min", "max"],
            [
                ["SIGKILL to READY=1 (includes RestartSec=5s)", *_stats(to_ready)],
                ["new process exec to READY=1", *_stats(exec_to_ready)],
            ],
        )


def _stats(values: list[float]) -> list[float]:
    return [median(values), min(values), max(values)]


if __name__ == "__main__":
    main()
