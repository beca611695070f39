from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.config import variable_names

# Fixture modules of tests/fixtures/, one per real part (PulseAudio, emulator, ...).
pytest_plugins: list[str] = [
    "tests.fixtures.disk",
    "tests.fixtures.emulator",
    "tests.fixtures.appliance",
    "tests.fixtures.identity",
    "tests.fixtures.nspawn",
    "tests.fixtures.pulse",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the appliance or Azure variables of the machine that runs it."""
    for name in variable_names():
        monkeypatch.delenv(name, raising=False)
    for name in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def env_file(tmp_path: Path):
    """Write an env file: env_file("A=1", "B=2") -> its path (mode 0600)."""

    def write(*lines: str, mode: int = 0o600) -> Path:
        path = tmp_path / f"appliance-{len(list(tmp_path.iterdir()))}.env"
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, mode)
        return path

    return write
