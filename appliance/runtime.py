"""Assembling the appliance from its settings, and running it until it is told to stop.

What lives for the whole process (signal handlers, the systemd notifier and watchdog, the
built-in emulator, stdin commands in --simulate, the GPIO pin factory) is set up once here.
What a configuration decides (credential, audio devices, pins, the session) is built for
each configuration: a reload that changes more than the volume or the LED rebuilds them
when the device is next idle, so a change takes effect at the next conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from appliance.app import Appliance
from appliance.config import AudioSettings, AuthMode, Settings
from appliance.errors import AudioDeviceError
from appliance.hardware.controls import Controls, make_pin_factory, mock_pin_factory
from appliance.hardware.simulated import (
    Finger,
    TerminalView,
    run_commands,
    run_keyboard,
    stdin_lines,
)
from appliance.state import Event
from appliance.system.notify import Notifier, Probe, Watchdog, advancing
from appliance.system.reload import Reloaded, Reloader

if TYPE_CHECKING:
    from appliance.audio.devices import PortAudio

log = logging.getLogger(__name__)

# What a reload can change while a conversation goes on; anything else waits for idle.
LIVE_CHANGES = {
    ("audio", "volume"),
    ("audio", "mic_gain_db"),
    ("behaviour", "led_heartbeat"),
    ("behaviour", "earcons"),
    ("behaviour", "idle_timeout_s"),
    ("logging", "level"),
}
SOUND_SERVER_HANG_S = 60.0  # then the watchdog stops pinging, and systemd restarts us
EMULATOR_EVENTS_KEPT = 20_000  # the emulator's record of a long simulate session stays bounded


@dataclass(frozen=True, slots=True)
class RunOptions:
    simulate: bool = False
    env_file: Path | None = None
    mic_wav: Path | None = None
    speaker_wav: Path | None = None
    led_history: Path | None = None


def sample_wav() -> Path:
    """The bundled spoken sample used as the microphone when there is no sound card."""
    return Path(str(resources.files("appliance") / "assets" / "sample.wav"))


class Runtime:
    """The process: one configuration after another until a stop signal or ``quit``."""

    def __init__(
        self, settings: Settings, options: RunOptions, portaudio: PortAudio | None = None
    ) -> None:
        self.settings = settings
        self.options = options
        self.portaudio = portaudio  # shared by every configuration; the caller closes it
        self.notifier = Notifier()
        self.view = TerminalView(sys.stdout) if options.simulate else None
        self.reloader = Reloader(options.env_file, notifier=self.notifier)
        self.watchdog = Watchdog(self.notifier)
        self.pin_factory: Any = None
        self.appliance: Appliance | None = None
        self.controls: Controls | None = None
        self.finger = Finger(lambda: self.controls.button if self.controls else None)
        self._stop_code: int | None = None
        self._next: Settings | None = None

    # ---- signals and commands -----------------------------------------------------------------

    def stop(self, code: int = 0) -> None:
        self._stop_code = code
        if self.appliance is not None:
            self.appliance.stop(code)

    def reload(self) -> None:
        current = self.appliance.settings if self.appliance is not None else self.settings
        reloaded = self.reloader.reload(current)
        if reloaded is None or not reloaded.changes or self.appliance is None:
            return
        self.apply(reloaded)

    def apply(self, reloaded: Reloaded) -> None:
        appliance = self.appliance
        assert appliance is not None
        live = {(c.group, c.field) for c in reloaded.changes} <= LIVE_CHANGES
        appliance.apply_live(reloaded.settings)
        if live:
            return
        log.info("the new configuration takes effect at the next conversation")
        self._next = reloaded.settings
        appliance.restart_when_idle()

    # ---- running --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            async with AsyncExitStack() as stack:
                stack.enter_context(self.notifier)
                endpoint, settings = await self._service(stack, self.settings)
                self.pin_factory = (
                    mock_pin_factory(history=0 if self.options.led_history else 4096)
                    if self.options.simulate
                    else make_pin_factory(settings.gpio.pin_factory)
                )
                async with asyncio.TaskGroup() as tasks:
                    if self.view is not None:
                        tasks.create_task(self.view.run(), name="view")
                        tasks.create_task(self._simulated_input(), name="button input")
                    tasks.create_task(self.watchdog.run(), name="watchdog")
                    tasks.create_task(self._configurations(endpoint, settings), name="appliance")
        except BaseExceptionGroup as group:
            done, failures = group.split(_Done)
            if failures is not None:
                raise _first(failures) from group  # one clear error for the CLI (exit 1 or 78)
            assert done is not None
            code = _first(done).args[0]
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self._write_led_history()
            if self.view is not None:
                self.view.close()
        return int(code)

    async def _service(self, stack: AsyncExitStack, settings: Settings) -> tuple[str, Settings]:
        """The endpoint to talk to: the configured one, or the built-in emulator."""
        if settings.service.endpoint is not None:
            return settings.service.endpoint, settings
        from appliance.emulator import Emulator

        emulator = await stack.enter_async_context(
            Emulator(max_recorded_events=EMULATOR_EVENTS_KEPT)
        )
        self._note(
            f"no AZURE_VOICELIVE_ENDPOINT set: talking to the built-in Voice Live emulator at "
            f"{emulator.url} (it answers by playing back what it heard)"
        )
        auth = settings.auth.model_copy(
            update={"mode": AuthMode.API_KEY, "api_key": SecretStr("emulator-key")}
        )
        return emulator.url, settings.model_copy(update={"auth": auth})

    async def _configurations(self, endpoint: str, settings: Settings) -> None:
        """Run each configuration in turn; raises _Done (ending the task group) at the end."""
        while True:
            code = await self._run_configuration(endpoint, settings)
            if self._stop_code is not None or self._next is None:
                raise _Done(code if self._stop_code is None else self._stop_code)
            settings = (
                self._next.model_copy(update={"auth": settings.auth})
                if (self._next.service.endpoint is None)
                else self._next
            )
            self._next = None
            self._note("the new configuration is in effect")

    async def _run_configuration(self, endpoint: str, settings: Settings) -> int:
        from appliance.audio import open_audio
        from appliance.voice.auth import VoiceCredential
        from appliance.voice.session import VoiceSession

        loop = asyncio.get_running_loop()
        mic_wav, speaker_wav = self._audio_files(settings)
        async with AsyncExitStack() as stack:
            credential = await stack.enter_async_context(VoiceCredential(settings.auth))
            credential.log_choice()
            audio = stack.enter_context(
                open_audio(
                    settings.audio,
                    service_input_rate=settings.service.input_sample_rate,
                    loop=loop,
                    mic_wav=mic_wav,
                    speaker_wav=speaker_wav,
                    portaudio=self.portaudio,
                    turn_silence_ms=settings.service.vad_silence_ms,
                )
            )
            relay = _ButtonRelay()
            controls = stack.enter_context(
                Controls(
                    settings.gpio,
                    loop=loop,
                    on_event=relay,
                    pin_factory=self.pin_factory,
                    heartbeat=settings.behaviour.led_heartbeat,
                )
            )
            if self.view is not None:
                self.view.attach_led(lambda: controls.led.level)
                controls.led.on_level = self.view.led_level
            self.controls = controls

            def session_for(appliance: Appliance) -> VoiceSession:
                return VoiceSession(
                    settings,
                    credential,
                    on_event=appliance.on_session_event,
                    endpoint=endpoint,
                    device=appliance,
                )

            appliance = Appliance(
                settings,
                audio=audio,
                led=controls.led,
                session_factory=session_for,
                notifier=self.notifier,
                view=self.view,
            )
            relay.target = appliance.on_button
            self.appliance = appliance
            self._watch(appliance)
            if self._stop_code is not None:
                appliance.stop(self._stop_code)
            try:
                return await appliance.run()
            finally:
                self.appliance = None
                self.controls = None

    def _audio_files(self, settings: Settings) -> tuple[Path | None, Path | None]:
        mic, speaker = self.options.mic_wav, self.options.speaker_wav
        if not self.options.simulate or (mic is not None and speaker is not None):
            return mic, speaker
        if mic is None and not _has_sound_card(settings.audio, "input", self.portaudio):
            mic = sample_wav()
            self._note(f"no microphone found: the mic is the bundled sample {mic}")
        if speaker is None and not _has_sound_card(settings.audio, "output", self.portaudio):
            speaker = Path("appliance-speaker.wav").resolve()
            self._note(f"no speaker found: what the device says goes to {speaker}")
        return mic, speaker

    def _watch(self, appliance: Appliance) -> None:
        mic, speaker = appliance.audio.mic, appliance.audio.speaker
        self.watchdog.add_probe(
            "microphone", advancing(lambda: mic.callbacks, lambda: mic.started, "mic callbacks")
        )
        self.watchdog.add_probe(
            "speaker",
            advancing(lambda: speaker.callbacks, lambda: speaker.started, "speaker callbacks"),
        )
        portaudio = appliance.audio.portaudio
        if portaudio is not None:
            self.watchdog.add_probe("sound server", sound_server_probe(portaudio))
        self.watchdog.add_probe(
            "connection",
            lambda: None if appliance.session.healthy() else "the connection stopped answering",
        )

    async def _simulated_input(self) -> None:
        if sys.stdin is None or sys.stdin.closed:
            return
        if sys.stdin.isatty():
            self._note("keys: space = button, h = hold (ends the conversation), q = quit")
            await run_keyboard(
                sys.stdin,
                self.finger,
                push_to_talk=self._push_to_talk(),
                hold_s=self.settings.gpio.hold_s,
                quit_=self.stop,
            )
            return
        lines = await stdin_lines(sys.stdin)
        await run_commands(lines, self.finger, self.stop)

    def _push_to_talk(self) -> bool:
        from appliance.state import ButtonMode

        return self.settings.behaviour.button_mode is ButtonMode.PUSH_TO_TALK

    def _note(self, text: str) -> None:
        log.info("%s", text)
        if self.view is not None:
            self.view.note(text)

    def _write_led_history(self) -> None:
        """--led-history: the LED pin's states as gpiozero's MockPin recorded them."""
        path = self.options.led_history
        if path is None or self.pin_factory is None:
            return
        pin = self.pin_factory.pin(self.settings.gpio.led_pin)
        states = [{"after_s": s.timestamp, "level": float(s.state)} for s in pin.states]
        path.write_text(json.dumps(states))


def sound_server_probe(portaudio: PortAudio, limit_s: float = SOUND_SERVER_HANG_S) -> Probe:
    """A watchdog probe that fails once a PortAudio call has hung for ``limit_s``.

    Such a call will not come back by itself (libpulse can deadlock when its server dies);
    the restart that the failing probe leads to gets a fresh sound library.
    """

    def probe() -> str | None:
        return portaudio.hung if portaudio.hung_s > limit_s else None

    return probe


def _has_sound_card(audio: AudioSettings, direction: str, shared: PortAudio | None) -> bool:
    """Whether the configured device opens (a listed ALSA device without a server does not)."""
    from appliance.audio.devices import PortAudio, PyAudioInput, PyAudioOutput

    kind = PyAudioInput if direction == "input" else PyAudioOutput
    spec = audio.input_device if direction == "input" else audio.output_device
    try:
        with contextlib.nullcontext(shared) if shared else PortAudio() as portaudio:
            stream = kind(portaudio, spec, rate=audio.device_rate, period_ms=audio.period_ms)
            try:
                stream.open(lambda _: None, lambda: None)
            finally:
                stream.close()
    except AudioDeviceError as exc:
        log.debug("no usable %s device: %s", direction, exc)
        return False
    return True


class _ButtonRelay:
    """Button events go to whichever appliance runs now."""

    def __init__(self) -> None:
        self.target: Callable[[Event], None] | None = None

    def __call__(self, event: Event) -> None:
        if self.target is not None:
            self.target(event)


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception of a (possibly nested) exception group."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class _Done(Exception):
    """Ends the runtime's task group with the exit code."""


async def run(settings: Settings, options: RunOptions, portaudio: PortAudio | None = None) -> int:
    return await Runtime(settings, options, portaudio).run()
