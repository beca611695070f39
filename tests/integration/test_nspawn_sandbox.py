"""The installed unit in a real systemd (Debian 12 in systemd-nspawn): install.sh's results,
and what the hardened sandbox still lets the appliance reach.

The sandbox probe runs under the installed unit itself (a drop-in replaces only ExecStart):
same user, groups, devices, file system, address families and system call filter as the
appliance. It imports everything the appliance uses, starts PortAudio, opens the sound and GPIO
device nodes through the audio/gpio groups, logs structured records to journald, talks TCP
over loopback (IPv4 and IPv6), connects to an audio server's socket under /run, reads the env
file, and says READY=1 with sd_notify.
"""

from __future__ import annotations

import json
import textwrap

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

PROBE = textwrap.dedent(
    """
    import asyncio, json, os, socket, sys, traceback

    results = {}

    def check(name, function):
        try:
            results[name] = function() or "ok"
        except BaseException as exc:
            results[name] = "FAIL " + "".join(traceback.format_exception_only(exc)).strip()

    def imports():
        import numpy, soxr, pyaudio, gpiozero, aiohttp, pydantic  # noqa
        import azure.ai.voicelive.aio, azure.identity.aio  # noqa
        import systemd.journal, systemd.daemon  # noqa
        from azure.identity.aio import ClientSecretCredential
        ClientSecretCredential("tenant", "client", "not-a-secret")  # msal, cryptography

    def portaudio():
        import pyaudio
        audio = pyaudio.PyAudio()
        try:
            return f"{audio.get_device_count()} devices"
        finally:
            audio.terminate()

    def read(path):
        with open(path) as handle:
            return handle.read().strip()

    def journal():
        from appliance.system.journal import fields, set_context, setup_logging
        import logging
        setup_logging("INFO")
        set_context(state="idle", session="sess_probe")
        logging.getLogger("appliance.probe").info(
            "probe record", extra=fields(event="probe", response_latency=1.5)
        )
        return "sent"

    async def loopback(host):
        async def answer(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(answer, host, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"ping\\n")
            line = await reader.readline()
            writer.close()
        return line.decode().strip()

    def audio_server():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect("/run/pulse/native")
            return client.recv(64).decode().strip()

    def settings():
        from appliance.config import load_settings
        return f"volume {load_settings().audio.volume}"

    def files():
        problems = []
        for path in ("/etc/probe-write", "/opt/appliance/probe-write"):
            try:
                open(path, "w").close()
                problems.append(f"{path} writable")
            except OSError:
                pass
        open("/var/lib/appliance/probe-write", "w").close()  # the StateDirectory
        for home in ("/root", "/home", "/run/user"):
            try:
                if os.listdir(home):
                    problems.append(f"{home} visible")
            except (PermissionError, FileNotFoundError):
                pass  # ProtectHome=yes: inaccessible
        return "; ".join(problems) or "ok"

    check("imports", imports)
    check("portaudio", portaudio)
    check("sound_device", lambda: read("/dev/snd/probe-node"))
    check("gpio_device", lambda: read("/dev/gpiochip0"))
    check("journal", journal)
    check("tcp_ipv4", lambda: asyncio.run(loopback("127.0.0.1")))
    check("tcp_ipv6", lambda: asyncio.run(loopback("::1")))
    check("audio_server_socket", audio_server)
    check("env_file", settings)
    check("files", files)
    check("groups", lambda: " ".join(map(str, sorted(os.getgroups()))))
    with open("/var/lib/appliance/probe.json", "w") as out:
        json.dump(results, out)
    from appliance.system.notify import Notifier
    Notifier().ready("probe done")
    """
)

# A stand-in audio server socket in /run/pulse, as a system-wide PulseAudio would have.
AUDIO_SERVER = textwrap.dedent(
    """
    import os, socket
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("/run/pulse/native")
    os.chmod("/run/pulse/native", 0o666)
    server.listen()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    while True:
        connection, _ = server.accept()
        connection.sendall(b"audio-server\\n")
        connection.close()
    """
)


def test_install_sh_left_a_complete_installation(container: Container) -> None:
    assert container.run(f"{VENV}/bin/appliance", "--version").stdout.startswith("appliance ")
    user = container.run("id", "appliance").stdout
    assert "(audio)" in user
    assert "(gpio)" in user
    stat = container.run("stat", "-c", "%a %U:%G", "/etc/appliance/appliance.env").stdout.split()
    assert stat == ["640", "root:appliance"]
    assert container.systemctl("is-enabled", "appliance.service").stdout.strip() == "enabled"
    rule = container.path("/etc/udev/rules.d/60-appliance-gpiochip.rules").read_text()
    assert 'GROUP="gpio"' in rule
    # Installed from the example, which sets nothing: the service refuses to run (exit 78,
    # the endpoint named) and systemd does not restart it.
    service = container.show("appliance.service", "ActiveState", "ExecMainStatus", "NRestarts")
    assert service == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}
    messages = [e["MESSAGE"] for e in container.journal("-u", "appliance.service")]
    assert any("AZURE_VOICELIVE_ENDPOINT" in str(message) for message in messages), messages


def test_the_installed_unit_verifies_clean_inside(container: Container) -> None:
    result = container.run("systemd-analyze", "verify", "appliance.service", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_the_sandbox_reaches_audio_gpio_journald_and_the_network(container: Container) -> None:
    # Device nodes as a Pi has them (group-owned, 0660); regular files stand in for the
    # character devices this machine lacks, which still shows they are bound in and that the
    # supplementary groups work inside the user namespace.
    container.sh(
        "mkdir -p /dev/snd && echo alsa > /dev/snd/probe-node"
        " && chown root:audio /dev/snd/probe-node && chmod 0660 /dev/snd/probe-node"
        " && echo gpio > /dev/gpiochip0 && chown root:gpio /dev/gpiochip0"
        " && chmod 0660 /dev/gpiochip0"
    )
    container.write("/opt/probe.py", PROBE)
    container.write("/opt/audio-server.py", AUDIO_SERVER)
    container.run(
        "systemd-run",
        "--unit=audio-server",
        "--property=Type=notify",
        "--property=NotifyAccess=all",
        "--property=RuntimeDirectory=pulse",
        "--property=RuntimeDirectoryMode=0755",
        "/usr/bin/python3",
        "/opt/audio-server.py",
    )
    env = container.path("/etc/appliance/appliance.env")
    env.write_text(env.read_text() + "\nAPPLIANCE_VOLUME=37\n")
    container.write(
        "/etc/systemd/system/appliance.service.d/probe.conf",
        f"[Service]\nExecStart=\nExecStart={VENV}/bin/python /opt/probe.py\n",
    )
    container.systemctl("daemon-reload")
    container.systemctl("reset-failed", "appliance.service")
    start = container.systemctl("start", "appliance.service", check=False)  # waits for READY=1
    assert start.returncode == 0, (
        start.stderr + container.run("journalctl", "-u", "appliance", "--no-pager").stdout
    )
    results = json.loads(container.path("/var/lib/appliance/probe.json").read_text())
    failures = {name: value for name, value in results.items() if value.startswith("FAIL")}
    assert failures == {}, results
    assert results["sound_device"] == "alsa"
    assert results["gpio_device"] == "gpio"
    assert results["tcp_ipv4"] == results["tcp_ipv6"] == "ping"
    assert results["audio_server_socket"] == "audio-server"
    assert results["env_file"] == "volume 37"
    assert results["files"] == "ok"
    entries = container.journal("-u", "appliance.service")
    [record] = [entry for entry in entries if entry.get("MESSAGE") == "probe record"]
    assert record["APPLIANCE_STATE"] == "idle"
    assert record["APPLIANCE_SESSION"] == "sess_probe"
    assert record["APPLIANCE_EVENT"] == "probe"
    assert record["APPLIANCE_RESPONSE_LATENCY_MS"] == "1.5"
