"""The command line as a user runs it: a real process, its output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import build_parser

SECRET_KEY = "7f3c9a1b2d4e5f60718293a4b5c6d7e8"
SECRET_PASSWORD = "correct-horse-battery"


def appliance(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def bad_env(env_file) -> Path:
    path: Path = env_file(
        "APPLIANCE_BUTTON_PIN=abc",
        f"AZURE_VOICELIVE_API_KEY={SECRET_KEY}",
        f"AZURE_CLIENT_CERTIFICATE_PASSWORD={SECRET_PASSWORD}",
        # The key pasted into the wrong variable must not be echoed either.
        f"AZURE_VOICELIVE_ENDPOINT=http://{SECRET_KEY}.example.com",
    )
    return path


def test_bad_env_file_names_the_variable_exits_78_and_hides_secrets(bad_env: Path) -> None:
    result = appliance("--env-file", str(bad_env))
    assert result.returncode == 78
    assert "APPLIANCE_BUTTON_PIN='abc'" in result.stderr
    assert "AZURE_VOICELIVE_ENDPOINT" in result.stderr
    output = result.stdout + result.stderr
    assert SECRET_KEY not in output
    assert SECRET_PASSWORD not in output


def test_check_validates_config_too(bad_env: Path) -> None:
    result = appliance("check", "--env-file", str(bad_env))
    assert result.returncode == 78
    assert SECRET_KEY not in result.stdout + result.stderr


def test_running_for_real_needs_an_endpoint(env_file) -> None:
    result = appliance("--env-file", str(env_file("APPLIANCE_VOLUME=50")))
    assert result.returncode == 78
    assert "AZURE_VOICELIVE_ENDPOINT" in result.stderr
    assert "--simulate" in result.stderr


def test_missing_env_file_exits_78(tmp_path: Path) -> None:
    result = appliance("--env-file", str(tmp_path / "nope.env"))
    assert result.returncode == 78
    assert "no such file" in result.stderr


def test_help_lists_the_commands() -> None:
    result = appliance("--help")
    assert result.returncode == 0
    for word in (
        "check",
        "devices",
        "emulator",
        "--simulate",
        "--mic",
        "--speaker",
        "--env-file",
        "--log-level",
    ):
        assert word in result.stdout


def test_options_may_follow_the_command() -> None:
    args = build_parser().parse_args(["run", "--simulate", "--env-file", "x.env"])
    assert args.command == "run"
    assert args.simulate
    assert args.env_file == Path("x.env")
    args = build_parser().parse_args(["--env-file", "y.env", "check"])
    assert args.env_file == Path("y.env")
    args = build_parser().parse_args(["emulator", "--port", "8765"])
    assert args.port == 8765
    assert args.host == "127.0.0.1"


def test_log_level_is_checked() -> None:
    result = appliance("--log-level", "chatty")
    assert result.returncode == 2
    assert "--log-level" in result.stderr
