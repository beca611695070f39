"""Energy voice activity detection that runs on audio time.

Time is counted in samples fed since the session started, never read from a clock, so the
same audio gives the same events however it was chunked and however late it arrived. The
signal is cut into 10 ms frames; a frame is speech when its RMS level reaches the level that
the session's ``threshold`` maps to (see :func:`threshold_level`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from appliance.emulator.audio import Samples

FRAME_MS: Final = 10


@dataclass(frozen=True, slots=True)
class VadSettings:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    # Loud audio needed before speech counts as started (semantic VAD's speech_duration_ms).
    speech_duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    start_sample: int  # where the user's audio begins: first speech minus the prefix padding
    detected_sample: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    end_sample: int  # end of the audio the model gets: the last speech plus the silence


VadEvent = SpeechStarted | SpeechStopped


def threshold_level(threshold: float) -> float:
    """RMS (int16 units) a frame needs to count as speech.

    The service's threshold is a model probability; here it maps linearly onto a level in
    dBFS: 0.0 -> -60 dBFS (anything above a quiet room), 0.5 -> -35 dBFS (ordinary speech
    at a microphone, about 580 in int16 RMS), 1.0 -> -10 dBFS (shouting).
    """
    clamped = min(1.0, max(0.0, threshold))
    return float(32768 * 10 ** ((-60 + 50 * clamped) / 20))


class EnergyVad:
    """Turns a stream of int16 samples into speech started/stopped events."""

    def __init__(self, settings: VadSettings, sample_rate: int) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self._frame = sample_rate * FRAME_MS // 1000
        self._level_squared = threshold_level(settings.threshold) ** 2
        self._pending: Samples = np.empty(0, dtype=np.int16)
        self._frames_done = 0
        self._origin = 0  # session sample index of the first sample fed
        self.in_speech = False
        self._loud_run = 0  # consecutive loud frames while not yet in speech
        self._quiet_run = 0  # consecutive quiet frames while in speech

    def reset(self, at_sample: int) -> None:
        """Forget any speech in progress; the next sample fed is session sample ``at_sample``."""
        self._pending = np.empty(0, dtype=np.int16)
        self._frames_done = 0
        self._origin = at_sample
        self.in_speech = False
        self._loud_run = 0
        self._quiet_run = 0

    def feed(self, samples: Samples) -> list[VadEvent]:
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        count = data.size // self._frame
        self._pending = data[count * self._frame :].copy()
        if count == 0:
            return []
        frames = data[: count * self._frame].reshape(count, self._frame).astype(np.float32)
        loud = np.mean(frames * frames, axis=1) >= self._level_squared
        events: list[VadEvent] = []
        frame = self._frame
        start_frames = max(1, math.ceil(self.settings.speech_duration_ms / FRAME_MS))
        stop_frames = max(1, math.ceil(self.settings.silence_duration_ms / FRAME_MS))
        padding = self.settings.prefix_padding_ms * self.sample_rate // 1000
        for index, is_loud in enumerate(loud.tolist()):
            frame_end = self._origin + (self._frames_done + index + 1) * frame
            if not self.in_speech:
                self._loud_run = self._loud_run + 1 if is_loud else 0
                if self._loud_run >= start_frames:
                    self.in_speech = True
                    self._quiet_run = 0
                    first_loud = frame_end - self._loud_run * frame
                    events.append(
                        SpeechStarted(
                            start_sample=max(self._origin, first_loud - padding),
                            detected_sample=frame_end,
                        )
                    )
            else:
                self._quiet_run = 0 if is_loud else self._quiet_run + 1
                if self._quiet_run >= stop_frames:
                    self.in_speech = False
                    self._loud_run = 0
                    events.append(SpeechStopped(end_sample=frame_end))
        self._frames_done += count
        return events
