"""Command line: ``appliance [run options]``, ``appliance check|devices|emulator``.

Importing this module must stay cheap (``appliance --help`` is instant): everything heavy
is imported inside the command that needs it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__

if TYPE_CHECKING:
    from appliance.audio.devices import Direction, PortAudio
    from appliance.config import Settings
    from appliance.system.journal import SecretFilter

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Masking:
    """Set once logging is up, so that even the error path masks every known secret."""

    filter: SecretFilter | None = None


def _common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Subcommands repeat the common options so they may come before or after the command.
    missing = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        default=missing,
        help="env file with the settings (over /etc/appliance/appliance.env; "
        "the process environment wins over both)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        default=missing,
        help="DEBUG, INFO, WARNING or ERROR (default: APPLIANCE_LOG_LEVEL, else INFO)",
    )


def _run_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    missing = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--simulate",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="simulated button and LED (keyboard, or stdin commands); the built-in Voice Live "
        "emulator when AZURE_VOICELIVE_ENDPOINT is not set",
    )
    parser.add_argument(
        "--mic",
        type=Path,
        metavar="WAV",
        default=missing,
        help="use this WAV file as the microphone, paced in real time",
    )
    parser.add_argument(
        "--speaker",
        type=Path,
        metavar="WAV",
        default=missing,
        help="write everything played to this WAV file, paced in real time",
    )
    parser.add_argument(
        "--led-history",
        type=Path,
        metavar="JSON",
        default=missing,
        help="with --simulate: at exit, write the states the LED pin went through "
        "(as gpiozero's MockFactory recorded them) to this file",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Push-button voice assistant on Azure AI Voice Live.",
        epilog="Without a command, runs the appliance. Exit codes: 0 clean stop, "
        "78 configuration error, 1 anything else.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    _common_options(parser, defaults=True)
    _run_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the appliance (the default)")
    _common_options(run, defaults=False)
    _run_options(run, defaults=False)

    check = commands.add_parser(
        "check", help="check config, audio, GPIO, credential and service; exit 0 if all pass"
    )
    _common_options(check, defaults=False)

    devices = commands.add_parser("devices", help="list audio devices and the rates they accept")
    _common_options(devices, defaults=False)

    emulator = commands.add_parser("emulator", help="run the local Voice Live emulator")
    _common_options(emulator, defaults=False)
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: a free one, printed)"
    )
    return parser


def load_config(args: argparse.Namespace) -> Settings:
    """Settings for this run; logging is set up with every known secret masked."""
    from appliance import config
    from appliance.errors import ConfigError
    from appliance.system.journal import setup_logging

    env_file: Path | None = args.env_file
    secrets = config.secret_values_in_sources(env_file)
    try:
        settings = config.load_settings(env_file)
    except ConfigError:
        _Masking.filter = setup_logging(args.log_level or "INFO", secrets=secrets)
        raise
    _Masking.filter = setup_logging(
        args.log_level or settings.logging.level, secrets=[*secrets, *settings.secrets()]
    )
    import logging

    for warning in config.permission_warnings(settings):
        logging.getLogger("appliance.config").warning(warning)
    return settings


def _not_available(what: str) -> int:
    from appliance.errors import NotAvailableYet

    raise NotAvailableYet(f"`appliance {what}` is not available yet in this version")


def require_endpoint(settings: Settings, args: argparse.Namespace) -> None:
    """Outside --simulate there is no emulator to fall back on."""
    from appliance.errors import ConfigError, ConfigProblem

    if settings.service.endpoint is None and not args.simulate:
        raise ConfigError(
            [
                ConfigProblem(
                    "AZURE_VOICELIVE_ENDPOINT",
                    None,
                    "required (the https:// endpoint of your Azure AI resource), unless --simulate",
                )
            ]
        )


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    settings = load_config(args)
    require_endpoint(settings, args)
    # PortAudio starts before the rest of the appliance is imported, and lives as long as
    # the process: listing devices loads every ALSA plugin for a moment (see
    # devices._release_alsa_plugins), and that moment should not come on top of the
    # process's full size, nor again at every reload.
    portaudio = None if args.mic and args.speaker else _start_portaudio()

    from appliance.runtime import RunOptions, run

    options = RunOptions(
        simulate=args.simulate,
        env_file=args.env_file,
        mic_wav=args.mic,
        speaker_wav=args.speaker,
        led_history=args.led_history,
    )
    with portaudio or contextlib.nullcontext():
        return asyncio.run(run(settings, options, portaudio))


def _start_portaudio() -> PortAudio:
    from appliance.audio.devices import PortAudio

    portaudio = PortAudio()
    portaudio.warm_up()
    return portaudio


def cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    from appliance.check import run_checks

    settings = load_config(args)
    return asyncio.run(run_checks(settings, sys.stdout))


def cmd_devices(args: argparse.Namespace) -> int:
    """List the sound devices, the rates each accepts, and which ones the settings select."""
    from appliance.audio.devices import PortAudio, device_table
    from appliance.errors import AudioDeviceError, ConfigError

    try:
        audio = load_config(args).audio
    except ConfigError as exc:  # listing devices helps to fix the audio settings
        print(f"appliance: {exc}\n(listing the devices with default audio settings)\n")
        from appliance.config import AudioSettings

        audio = AudioSettings.model_construct()
    with PortAudio() as portaudio:
        try:
            rows = device_table(portaudio)
            chosen = {
                "input": _chosen_device(portaudio, audio.input_device, "input"),
                "output": _chosen_device(portaudio, audio.output_device, "output"),
            }
        except AudioDeviceError as exc:
            print(f"appliance: {exc}", file=sys.stderr)
            return 1
    if not rows:
        print("No audio devices found (is the sound card connected, or the sound server up?)")
        return 1
    print("Audio devices (rates in Hz that each accepts for 16-bit audio):\n")
    for device, input_rates, output_rates in rows:
        marks = [
            f"{name} (default)" if default else name
            for name, default, present in (
                ("input", device.default_input, device.max_input_channels),
                ("output", device.default_output, device.max_output_channels),
            )
            if present
        ]
        print(f"  [{device.index}] {device.name}  ({device.host_api}; {', '.join(marks)})")
        if device.max_input_channels:
            print(f"      input:  {device.max_input_channels} ch, {_rates(input_rates)}")
        if device.max_output_channels:
            print(f"      output: {device.max_output_channels} ch, {_rates(output_rates)}")
    print()
    for direction, variable in (
        ("input", "APPLIANCE_INPUT_DEVICE"),
        ("output", "APPLIANCE_OUTPUT_DEVICE"),
    ):
        print(f"{variable}: {chosen[direction]}")
    return 0


def _rates(rates: list[int]) -> str:
    return ", ".join(map(str, rates)) if rates else "no standard rate"


def _chosen_device(portaudio: PortAudio, spec: int | str | None, direction: Direction) -> str:
    from appliance.errors import AudioDeviceError

    shown = "(empty: the system default)" if spec is None else repr(spec)
    try:
        device = portaudio.find(spec, direction)
    except AudioDeviceError as exc:
        return f"{shown} -> not usable: {exc}"
    return f"{shown} -> [{device.index}] {device.name}"


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the local Voice Live emulator until SIGINT/SIGTERM; any credential is accepted."""
    import asyncio
    import signal

    from appliance.emulator import Emulator
    from appliance.system.journal import setup_logging

    _Masking.filter = setup_logging(args.log_level or "INFO")

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        emulator = Emulator(args.host, args.port)
        try:
            await emulator.start()
        except OSError as exc:  # the port is taken, the address is not this machine's, ...
            print(
                f"appliance: the emulator cannot listen on {args.host}:{args.port}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
        async with emulator:
            print(f"Voice Live emulator listening on {emulator.url}", flush=True)
            await stop.wait()
        return 0

    return asyncio.run(serve())


COMMANDS = {
    None: cmd_run,
    "run": cmd_run,
    "check": cmd_check,
    "devices": cmd_devices,
    "emulator": cmd_emulator,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here, not at the top: `appliance --help` should not pay for them.
    from appliance.errors import (
        EXIT_CONFIG,
        EXIT_FAILURE,
        EXIT_UNAVAILABLE,
        ApplianceError,
        ConfigError,
        NotAvailableYet,
    )

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        masking = _Masking.filter
        message = str(exc) if masking is None else masking.redact(str(exc))
        print(f"appliance: {message}", file=sys.stderr)
        return EXIT_CONFIG
    except NotAvailableYet as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # the last line of defence: one clear line, exit 1
        import logging

        logging.getLogger("appliance").critical(
            "stopped by an unexpected error: %s", exc, exc_info=True
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
