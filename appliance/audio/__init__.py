"""Audio: microphone and speaker on PyAudio devices or WAV files, ring buffers, earcons.

The appliance builds both with :func:`open_audio` and talks only to :class:`Microphone`
and :class:`Speaker`; which device drives them (a sound card through PortAudio, or WAV
files for ``--mic``/``--speaker``) is decided here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.audio.ring import RingBuffer, Samples
from appliance.audio.streams import (
    LOG_LENGTH,
    SPEAKER_RATE,
    InputDevice,
    Interrupted,
    Level,
    Microphone,
    OutputDevice,
    Speaker,
    StreamFormat,
    StreamStatus,
)
from appliance.audio.tones import earcon
from appliance.state import Earcon

if TYPE_CHECKING:
    from appliance.audio.devices import PortAudio
    from appliance.config import AudioSettings

# After sound, the microphone keeps its short chunks until the service ends the turn, or
# for the turn's closing silence and this much more if it does not (the sound was not
# speech to it): so the service ends a turn no later than it would, also when its end of
# the speech lags the last sound the microphone heard (see Microphone.turn_ended).
SOUND_HOLD_MARGIN_MS = 1500

__all__ = [
    "LOG_LENGTH",
    "SPEAKER_RATE",
    "Audio",
    "Earcon",
    "InputDevice",
    "Interrupted",
    "Level",
    "Microphone",
    "OutputDevice",
    "RingBuffer",
    "Samples",
    "Speaker",
    "StreamFormat",
    "StreamStatus",
    "earcon",
    "open_audio",
]


class Audio:
    """The microphone and the speaker, and the PortAudio session behind them (if any)."""

    def __init__(
        self,
        mic: Microphone,
        speaker: Speaker,
        portaudio: PortAudio | None,
        *,
        owns_portaudio: bool = True,
    ) -> None:
        self.mic = mic
        self.speaker = speaker
        self.portaudio = portaudio
        self._owns_portaudio = owns_portaudio

    def close(self) -> None:
        """Stop both streams and release the devices (the WAV speaker file is complete)."""
        try:
            self.mic.close()
        finally:
            try:
                self.speaker.close()
            finally:
                if self.portaudio is not None and self._owns_portaudio:
                    self.portaudio.close()

    def __enter__(self) -> Audio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_audio(
    settings: AudioSettings,
    *,
    service_input_rate: int,
    loop: asyncio.AbstractEventLoop,
    mic_wav: Path | None = None,
    speaker_wav: Path | None = None,
    mic_buffer_s: float = 5.0,
    speaker_buffer_s: float = 2.0,
    portaudio: PortAudio | None = None,
    turn_silence_ms: int = 500,
) -> Audio:
    """Build the microphone and the speaker; no stream is opened until ``start()``.

    WAV files replace the sound card where given. A bad ``--mic`` file (or an unwritable
    ``--speaker`` path) raises :class:`~appliance.errors.ConfigError` naming the option;
    sound card problems surface later, from ``start()``, as
    :class:`~appliance.errors.AudioDeviceError` (the appliance shows them and retries).
    ``portaudio`` is a PortAudio session to use and leave open (the runtime keeps one for
    the whole process); without it the Audio makes its own and closes it.
    ``turn_silence_ms`` is the silence after which the service ends a turn
    (``vad_silence_ms``): after sound, the microphone's quiet chunks wait until the
    service ends the turn, or that long and SOUND_HOLD_MARGIN_MS more.
    """
    from appliance.audio.wavfile import WavInput, WavOutput

    owns_portaudio = portaudio is None  # else the caller's, shared and closed by it
    # The microphone's audio leaves in chunks anyway: capturing in chunk-sized periods
    # wakes the device thread and the sound server half as often (or less) for nothing lost.
    input_period_ms = max(settings.period_ms, settings.chunk_ms)
    input_device: InputDevice
    output_device: OutputDevice
    try:
        if mic_wav is not None:
            input_device = WavInput(
                mic_wav, rate=service_input_rate, period_ms=input_period_ms, loop=loop
            )
        else:
            from appliance.audio.devices import PortAudio, PyAudioInput

            portaudio = portaudio or PortAudio()
            input_device = PyAudioInput(
                portaudio,
                settings.input_device,
                rate=settings.device_rate,
                period_ms=input_period_ms,
            )
        if speaker_wav is not None:
            output_device = WavOutput(speaker_wav, period_ms=settings.period_ms, loop=loop)
        else:
            from appliance.audio.devices import PortAudio, PyAudioOutput

            portaudio = portaudio or PortAudio()
            output_device = PyAudioOutput(
                portaudio,
                settings.output_device,
                rate=settings.device_rate,
                period_ms=settings.period_ms,
            )
    except BaseException:
        if portaudio is not None and owns_portaudio:
            portaudio.close()
        raise
    if portaudio is not None:
        portaudio.warm_up()
    mic = Microphone(
        input_device,
        loop=loop,
        service_rate=service_input_rate,
        gain_db=settings.mic_gain_db,
        buffer_s=mic_buffer_s,
        chunk_ms=settings.chunk_ms,
        quiet_chunk_ms=settings.quiet_chunk_ms,
        sound_hold_ms=turn_silence_ms + SOUND_HOLD_MARGIN_MS,
    )
    speaker = Speaker(output_device, loop=loop, volume=settings.volume, buffer_s=speaker_buffer_s)
    return Audio(mic, speaker, portaudio, owns_portaudio=owns_portaudio)
