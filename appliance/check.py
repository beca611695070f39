"""``appliance check``: is this device ready to serve a press? One line per part, with a fix.

Each check uses the real thing the appliance would use (the configured audio devices, the
configured pin factory, the credential, a Voice Live connection up to ``session.updated``)
and reports ok, warn or FAIL. Secrets never appear: a token is obtained, not shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TextIO

from appliance.config import Settings, permission_warnings
from appliance.errors import ApplianceError, SoundServerHung


class Outcome(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    outcome: Outcome
    detail: str
    fix: str | None = None


Check = Callable[[Settings], Awaitable[Result]]


async def check_configuration(settings: Settings) -> Result:
    sources = ", ".join(str(p) for p in settings.env_files) or "no env file"
    warnings = permission_warnings(settings)
    if warnings:
        return Result(
            "configuration",
            Outcome.WARN,
            "; ".join(warnings),
            "keep secrets readable by root and the appliance group only",
        )
    return Result("configuration", Outcome.OK, f"valid ({sources}, then the environment)")


async def check_endpoint(settings: Settings) -> Result:
    endpoint = settings.service.endpoint
    if endpoint is None:
        return Result(
            "endpoint",
            Outcome.FAIL,
            "AZURE_VOICELIVE_ENDPOINT is not set",
            "set it to https://NAME.services.ai.azure.com in the env file "
            "(or use --simulate, which runs the built-in emulator)",
        )
    target = (
        f"agent {settings.service.agent_name} in {settings.service.agent_project}"
        if settings.service.agent_name
        else f"model {settings.service.model}"
    )
    return Result("endpoint", Outcome.OK, f"{endpoint}, {target}")


async def _check_stream(settings: Settings, direction: str) -> Result:
    from appliance.audio import open_audio

    name = "microphone" if direction == "input" else "speaker"
    variable = "APPLIANCE_INPUT_DEVICE" if direction == "input" else "APPLIANCE_OUTPUT_DEVICE"
    loop = asyncio.get_running_loop()
    try:
        with open_audio(
            settings.audio, service_input_rate=settings.service.input_sample_rate, loop=loop
        ) as audio:
            stream = audio.mic if direction == "input" else audio.speaker
            stream.start()
            try:
                status = stream.status()
            finally:
                stream.stop()
    except SoundServerHung as exc:
        return Result(
            name,
            Outcome.FAIL,
            str(exc),
            "the sound server (PulseAudio or PipeWire) hangs: restart it, or the device",
        )
    except ApplianceError as exc:
        return Result(
            name,
            Outcome.FAIL,
            str(exc),
            f"run `appliance devices` and set {variable} (index or part of a name)",
        )
    rate = f"{status.rate} Hz" if status.rate else "unknown rate"
    period = f", {status.period_ms:.0f} ms periods" if status.period_ms else ""
    return Result(name, Outcome.OK, f"{status.device} at {rate}{period}")


async def check_microphone(settings: Settings) -> Result:
    return await _check_stream(settings, "input")


async def check_speaker(settings: Settings) -> Result:
    return await _check_stream(settings, "output")


async def check_gpio(settings: Settings) -> Result:
    from appliance.hardware.controls import Controls, make_pin_factory

    gpio = settings.gpio
    try:
        factory = make_pin_factory(gpio.pin_factory)
        with Controls(
            gpio, loop=asyncio.get_running_loop(), on_event=lambda _: None, pin_factory=factory
        ) as controls:
            pressed = controls.pressed
    except ApplianceError as exc:
        return Result(
            "GPIO",
            Outcome.FAIL,
            str(exc),
            "check APPLIANCE_BUTTON_PIN / APPLIANCE_LED_PIN and that the appliance "
            "user is in the gpio group; on a laptop use --simulate",
        )
    held = (
        " (the button reads as pressed: check the wiring or APPLIANCE_BUTTON_PULL_UP)"
        if pressed
        else ""
    )
    outcome = Outcome.WARN if pressed else Outcome.OK
    return Result("GPIO", outcome, f"button {gpio.button_pin}, LED {gpio.led_pin or 'none'}{held}")


async def check_credential(settings: Settings) -> Result:
    from appliance.voice.auth import VoiceCredential

    try:
        async with VoiceCredential(settings.auth) as credential:
            if not credential.uses_token:
                return Result(
                    "credential",
                    Outcome.OK,
                    f"{credential.description} (checked by the service below)",
                )
            started = time.monotonic()
            token = await credential.get_token(settings.service.connect_timeout_s)
    except ApplianceError as exc:
        return Result(
            "credential",
            Outcome.FAIL,
            str(exc),
            "check APPLIANCE_AUTH and the AZURE_* variables it needs "
            "(see config/appliance.env.example)",
        )
    minutes = max(0, int((token.expires_on - time.time()) / 60))
    return Result(
        "credential",
        Outcome.OK,
        f"{credential.description}: token obtained in "
        f"{(time.monotonic() - started) * 1000:.0f} ms, valid {minutes} min",
    )


async def check_service(settings: Settings) -> Result:
    from appliance.voice.auth import VoiceCredential
    from appliance.voice.session import VoiceSession

    if settings.service.endpoint is None:
        return Result(
            "service", Outcome.FAIL, "no endpoint to reach", "set AZURE_VOICELIVE_ENDPOINT"
        )
    try:
        async with VoiceCredential(settings.auth) as credential:
            session = VoiceSession(settings, credential, on_event=lambda _: None)
            started = time.monotonic()
            try:
                await session.connect()
                session_id = session.session_id
            finally:
                await session.close()
    except ApplianceError as exc:
        return Result(
            "service",
            Outcome.FAIL,
            str(exc),
            "check the endpoint, the model name, the network and the role "
            "assignment (Cognitive Services User) of the identity",
        )
    elapsed = (time.monotonic() - started) * 1000
    return Result(
        "service", Outcome.OK, f"connected, session {session_id} configured in {elapsed:.0f} ms"
    )


CHECKS: tuple[Check, ...] = (
    check_configuration,
    check_endpoint,
    check_microphone,
    check_speaker,
    check_gpio,
    check_credential,
    check_service,
)


async def run_checks(settings: Settings, out: TextIO, checks: tuple[Check, ...] = CHECKS) -> int:
    """Print one line per check; 0 when none failed."""
    failed = 0
    out.write("appliance check\n")
    for check in checks:
        try:
            result = await check(settings)
        except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
            result = Result(
                check.__name__.removeprefix("check_"), Outcome.FAIL, f"unexpected error: {exc}"
            )
        failed += result.outcome is Outcome.FAIL
        out.write(f"  {result.outcome.value:<5} {result.name:<13} {result.detail}\n")
        if result.fix and result.outcome is not Outcome.OK:
            out.write(f"        {'':<13} fix: {result.fix}\n")
        out.flush()
    total = len(checks)
    out.write(
        f"{total - failed} of {total} checks passed\n" if failed else f"all {total} checks passed\n"
    )
    return 0 if failed == 0 else 1
