"""Reloading the env file on SIGHUP: valid changes apply, invalid ones leave the old config."""

from __future__ import annotations

import io
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from appliance.config import Settings, load_settings
from appliance.system.journal import setup_logging
from appliance.system.notify import Notifier
from appliance.system.reload import Reloader

BASE = ("AZURE_VOICELIVE_ENDPOINT=https://example.services.ai.azure.com", "APPLIANCE_VOLUME=80")


@pytest.fixture
def system_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The unit's EnvironmentFile: written, and its values put in the environment as systemd
    does at start. Returns a function that rewrites the file (as the owner edits it)."""
    path = tmp_path / "appliance.env"

    def write(*lines: str) -> Path:
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o640)
        return path

    write(*BASE)
    for name, value in dotenv_values(path).items():
        assert value is not None
        monkeypatch.setenv(name, value)
    return write


def start(path: Path, **kwargs: object) -> tuple[Settings, Reloader]:
    settings = load_settings(system_env_file=path)
    return settings, Reloader(system_env_file=path, **kwargs)  # type: ignore[arg-type]


def test_a_valid_edit_is_read_although_the_environment_holds_the_old_value(
    system_file, caplog: pytest.LogCaptureFixture
) -> None:
    path = system_file(*BASE)
    settings, reloader = start(path)
    assert settings.audio.volume == 80
    system_file(BASE[0], "APPLIANCE_VOLUME=35", "APPLIANCE_LED_HEARTBEAT=true")
    with caplog.at_level(logging.INFO, logger="appliance.system.reload"):
        result = reloader.reload(settings)
    assert result is not None
    assert result.settings.audio.volume == 35
    assert result.settings.behaviour.led_heartbeat is True
    assert result.changed == ("APPLIANCE_VOLUME", "APPLIANCE_LED_HEARTBEAT")
    assert result.touches("audio", "volume")
    assert result.touches("behaviour")
    assert not result.touches("service")
    assert os.environ["APPLIANCE_VOLUME"] == "35"
    assert "changed: APPLIANCE_VOLUME, APPLIANCE_LED_HEARTBEAT" in caplog.text


def test_an_unchanged_file_reloads_with_no_changes(system_file) -> None:
    settings, reloader = start(system_file(*BASE))
    result = reloader.reload(settings)
    assert result is not None
    assert result.changes == ()
    assert result.settings == settings


def test_an_invalid_edit_is_logged_by_name_and_the_running_config_stays(
    system_file, caplog: pytest.LogCaptureFixture
) -> None:
    settings, reloader = start(system_file(*BASE))
    system_file(BASE[0], "APPLIANCE_VOLUME=150", "APPLIANCE_BUTTON_MODE=sometimes")
    with caplog.at_level(logging.ERROR, logger="appliance.system.reload"):
        assert reloader.reload(settings) is None
    [record] = caplog.records
    assert "reload refused, the running configuration stays" in record.getMessage()
    assert "APPLIANCE_VOLUME='150'" in record.getMessage()
    assert "APPLIANCE_BUTTON_MODE='sometimes'" in record.getMessage()
    assert os.environ["APPLIANCE_VOLUME"] == "80"  # the environment is as before

    # Fixed later: the next reload compares against what is running and applies.
    system_file(BASE[0], "APPLIANCE_VOLUME=60")
    result = reloader.reload(settings)
    assert result is not None
    assert result.changed == ("APPLIANCE_VOLUME",)
    assert result.settings.audio.volume == 60


def test_a_variable_removed_from_the_file_returns_to_its_default(system_file) -> None:
    settings, reloader = start(system_file(*BASE, "APPLIANCE_HOLD_S=5"))
    assert settings.gpio.hold_s == 5.0
    system_file(*BASE)
    result = reloader.reload(settings)
    assert result is not None
    assert result.settings.gpio.hold_s == 2.0
    assert "APPLIANCE_HOLD_S" not in os.environ


def test_a_variable_set_outside_the_file_keeps_winning(
    system_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = system_file(*BASE, "APPLIANCE_PIN_FACTORY=native")
    monkeypatch.setenv("APPLIANCE_PIN_FACTORY", "mock")  # e.g. Environment= in a drop-in
    settings, reloader = start(path)
    assert settings.gpio.pin_factory == "mock"
    system_file(*BASE, "APPLIANCE_PIN_FACTORY=lgpio", "APPLIANCE_VOLUME=10")
    result = reloader.reload(settings)
    assert result is not None
    assert result.settings.gpio.pin_factory == "mock"
    assert result.changed == ("APPLIANCE_VOLUME",)


def test_an_env_file_given_on_the_command_line_is_read_again(
    tmp_path: Path, env_file, system_file
) -> None:
    system = system_file(*BASE)
    extra = env_file("APPLIANCE_IDLE_TIMEOUT_S=45")
    reloader = Reloader(extra, system_env_file=system)
    settings = load_settings(extra, system_env_file=system)
    extra.write_text("APPLIANCE_IDLE_TIMEOUT_S=90\n")
    result = reloader.reload(settings)
    assert result is not None
    assert result.changed == ("APPLIANCE_IDLE_TIMEOUT_S",)
    assert result.settings.behaviour.idle_timeout_s == 90.0


def test_a_changed_secret_is_named_but_never_shown(system_file) -> None:
    old_key, new_key = "first-api-key-0123456789", "second-api-key-9876543210"
    path = system_file(*BASE, "APPLIANCE_AUTH=api_key", f"AZURE_VOICELIVE_API_KEY={old_key}")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    output = io.StringIO()
    try:
        setup_logging("INFO", secrets=[old_key])
        root.handlers[0].setStream(output)  # type: ignore[attr-defined]
        settings, reloader = start(path)
        system_file(*BASE, "APPLIANCE_AUTH=api_key", f"AZURE_VOICELIVE_API_KEY={new_key}")
        result = reloader.reload(settings)
        assert result is not None
        assert result.changed == ("AZURE_VOICELIVE_API_KEY",)
        logging.getLogger("appliance.test").info("the service said: bad key %s", new_key)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = output.getvalue()
    assert "changed: AZURE_VOICELIVE_API_KEY" in text
    assert "the service said: bad key ********" in text
    assert new_key not in text
    assert old_key not in text


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    with (
        tempfile.TemporaryDirectory(prefix="notify-") as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = os.path.join(directory, "notify.sock")
        sock.bind(path)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
def test_systemd_hears_reloading_then_ready(
    system_file, notify_socket: socket.socket, valid: bool
) -> None:
    with Notifier() as notifier:
        settings, reloader = start(system_file(*BASE), notifier=notifier)
        system_file(BASE[0], "APPLIANCE_VOLUME=" + ("50" if valid else "loud"))
        assert (reloader.reload(settings) is not None) is valid
    first = notify_socket.recv(4096).decode().splitlines()
    second = notify_socket.recv(4096).decode().splitlines()
    assert "RELOADING=1" in first
    assert any(line.startswith("MONOTONIC_USEC=") for line in first)
    assert second == ["READY=1"]
