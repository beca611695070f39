"""``appliance check`` against real parts: PulseAudio null devices through PyAudio, gpiozero's
mock pins, the emulator as the service (requiring the key), a real process and its output."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from appliance.emulator import Emulator
from tests.fixtures.emulator import TEST_KEY, MakeEmulator
from tests.fixtures.pulse import PulseServer

pytestmark = pytest.mark.slow


async def check(env: dict[str, str], *args: str) -> tuple[int, str]:
    """The exit code, and what it printed: its report, then what went to stderr (its log,
    the sound libraries' messages), read apart so that nothing can land inside a report
    line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "check",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        report, messages = await process.communicate()
    assert process.returncode is not None
    return process.returncode, report.decode() + messages.decode(errors="replace")


def device_env(pulse: PulseServer, emulator: Emulator, **extra: str) -> dict[str, str]:
    return {
        **pulse.client_env(),
        "AZURE_VOICELIVE_ENDPOINT": emulator.url,
        "APPLIANCE_AUTH": "api_key",
        "AZURE_VOICELIVE_API_KEY": TEST_KEY,
        "APPLIANCE_PIN_FACTORY": "mock",
        **extra,
    }


async def test_everything_passes_on_a_working_device(
    pulse: PulseServer, make_emulator: MakeEmulator
) -> None:
    emulator = await make_emulator(api_key=TEST_KEY)
    code, output = await check(device_env(pulse, emulator))
    assert code == 0, output
    lines = output.splitlines()
    for name in (
        "configuration",
        "endpoint",
        "microphone",
        "speaker",
        "GPIO",
        "credential",
        "service",
    ):
        assert any(line.split()[:2] == ["ok", name] for line in lines), output
    assert "all 7 checks passed" in output
    assert "session sess_" in output
    assert TEST_KEY not in output
    assert emulator.connections[0].close_code == 1000  # the check hangs up properly


async def test_a_refused_key_fails_the_service_with_a_fix_and_no_secret(
    pulse: PulseServer, make_emulator: MakeEmulator
) -> None:
    emulator = await make_emulator(api_key="the-right-key-0123456789")
    code, output = await check(device_env(pulse, emulator))
    assert code == 1
    (service,) = [line for line in output.splitlines() if "service" in line.split()[1:2]]
    assert service.split()[0] == "FAIL"
    assert "fix:" in output
    assert TEST_KEY not in output
    assert "the-right-key-0123456789" not in output
    assert "6 of 7 checks passed" in output


async def test_missing_audio_device_and_gpio_are_named_with_a_fix(
    pulse: PulseServer, emulator: Emulator, tmp_path: Path
) -> None:
    env = device_env(
        pulse, emulator, APPLIANCE_INPUT_DEVICE="no such microphone", APPLIANCE_PIN_FACTORY="native"
    )
    code, output = await check(env)
    assert code == 1
    lines = output.splitlines()
    mic = next((i for i, line in enumerate(lines) if line.split()[1:2] == ["microphone"]), None)
    assert mic is not None, output
    assert lines[mic].split()[0] == "FAIL"
    assert "APPLIANCE_INPUT_DEVICE" in lines[mic + 1]
    gpio = next((line for line in lines if line.split()[1:2] == ["GPIO"]), "")
    assert gpio.split()[:1] == ["FAIL"], output
    assert any(line.split()[:2] == ["ok", "speaker"] for line in lines)


async def test_no_endpoint_says_how_to_set_one(pulse: PulseServer) -> None:
    env = {
        **pulse.client_env(),
        "APPLIANCE_PIN_FACTORY": "mock",
        "APPLIANCE_AUTH": "api_key",
        "AZURE_VOICELIVE_API_KEY": TEST_KEY,
    }
    code, output = await check(env)
    assert code == 1
    assert "AZURE_VOICELIVE_ENDPOINT is not set" in output
