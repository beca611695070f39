"""What the emulated model says: a responder turns the conversation so far into replies.

A responder is any callable ``(Turn) -> Reply | Sequence[Reply]``. Each reply becomes one
output item of the response, in order: :class:`Speech` (audio with its transcript),
:class:`Text`, :class:`FunctionCall`, or :class:`Failure` (the response fails). The default,
:class:`Parrot`, plays the user's own committed audio back; :class:`Script` lets a test say
exactly what each response is.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.emulator.audio import OUTPUT_RATE, Samples


@dataclass(frozen=True, slots=True)
class FunctionOutput:
    call_id: str
    name: str | None  # of the call it answers, when that call is in the conversation
    output: str


@dataclass(frozen=True, slots=True)
class Turn:
    """What a responder sees when a response starts."""

    number: int  # 1 for the first response of the connection
    items: tuple[Mapping[str, Any], ...]  # the conversation as the service holds it
    # The input that triggered the response: the conversation's trailing input items.
    user_audio: Samples | None  # int16 mono at 24 kHz, when the last user item was audio
    user_text: str | None
    function_outputs: tuple[FunctionOutput, ...]
    session: Mapping[str, Any]
    response: Mapping[str, Any]  # the response.create parameters (empty under server VAD)
    tools: tuple[Mapping[str, Any], ...]  # tools offered for this response

    @property
    def user_audio_seconds(self) -> float:
        return 0.0 if self.user_audio is None else self.user_audio.size / OUTPUT_RATE

    def tool(self, name: str) -> Mapping[str, Any] | None:
        return next((tool for tool in self.tools if tool.get("name") == name), None)


@dataclass(frozen=True, slots=True)
class Speech:
    """Spoken output: PCM16 LE mono 24 kHz audio and the transcript of it."""

    audio: bytes
    transcript: str


@dataclass(frozen=True, slots=True)
class Text:
    """Text output. In an audio session it is spoken as a soft tone, 0.25 s per word."""

    text: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    name: str
    arguments: str | Mapping[str, Any] = field(default_factory=dict)
    call_id: str | None = None  # generated when None

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Failure:
    """The response fails: ``response.done`` with status ``failed`` and this error."""

    code: str = "internal_error"
    message: str = "The emulated model failed."
    type: str = "server_error"


Reply = Speech | Text | FunctionCall | Failure
Responder = Callable[[Turn], "Reply | Sequence[Reply]"]


def describe_seconds(seconds: float) -> str:
    return f"{seconds:.1f} second" + ("" if f"{seconds:.1f}" == "1.0" else "s")


class Parrot:
    """Plays the user's committed audio back, and says how long it was."""

    def __call__(self, turn: Turn) -> Reply:
        if turn.user_audio is not None:
            audio = turn.user_audio.astype("<i2").tobytes()
            seconds = describe_seconds(turn.user_audio_seconds)
            return Speech(audio, f"I heard {seconds} of speech.")
        if turn.function_outputs:
            result = turn.function_outputs[-1]
            return Text(f"The function {result.name or result.call_id} returned {result.output}.")
        if turn.user_text is not None:
            return Text(f"You said: {turn.user_text}")
        return Text("Hello, this is the Voice Live emulator.")


class Script:
    """One entry per response, in order; then ``then`` (the parrot by default).

    An entry is a reply, a sequence of replies (several output items in one response), or a
    responder called with the turn.
    """

    def __init__(
        self, *entries: Reply | Sequence[Reply] | Responder, then: Responder | None = None
    ) -> None:
        self._entries: deque[Reply | Sequence[Reply] | Responder] = deque(entries)
        self._then: Responder = then or Parrot()

    @property
    def remaining(self) -> int:
        return len(self._entries)

    def add(self, *entries: Reply | Sequence[Reply] | Responder) -> None:
        self._entries.extend(entries)

    def __call__(self, turn: Turn) -> Reply | Sequence[Reply]:
        if not self._entries:
            return self._then(turn)
        entry = self._entries.popleft()
        if isinstance(entry, Speech | Text | FunctionCall | Failure | Sequence):
            return entry
        return entry(turn)


def replies_of(answer: Reply | Sequence[Reply]) -> list[Reply]:
    if isinstance(answer, Speech | Text | FunctionCall | Failure):
        return [answer]
    return list(answer)


def speech_from_samples(samples: Samples, transcript: str) -> Speech:
    return Speech(np.asarray(samples, dtype=np.int16).astype("<i2").tobytes(), transcript)
