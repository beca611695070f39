"""The service side of one Voice Live connection, as a pure state machine.

:class:`Conversation` takes client events (dicts, as decoded from the JSON frames) and gives
back the server events to send, as dicts shaped like the reference examples
(``shared/reference/voice-live-events.json``). No I/O and no clock: the server decides when
to call :meth:`Conversation.next_step` to stream the active response, and paces audio by the
``audio_seconds`` each step carries. Audio time is counted in samples, so turn detection does
not depend on when frames arrive.
"""

from __future__ import annotations

import binascii
import copy
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from appliance.emulator.audio import (
    INPUT_FORMATS,
    INPUT_SAMPLING_RATES,
    OUTPUT_FORMATS,
    OUTPUT_RATE,
    SampleBuffer,
    Samples,
    b64decode,
    b64encode,
    input_format,
    output_format,
    resample,
    tone,
)
from appliance.emulator.responders import (
    Failure,
    FunctionCall,
    FunctionOutput,
    Parrot,
    Reply,
    Responder,
    Speech,
    Turn,
    describe_seconds,
    replies_of,
)
from appliance.emulator.vad import EnergyVad, SpeechStarted, SpeechStopped, VadSettings

Event = dict[str, Any]
log = logging.getLogger("appliance.emulator")

TURN_DETECTION_TYPES: Final = frozenset(
    {"server_vad", "azure_semantic_vad", "azure_semantic_vad_en", "azure_semantic_vad_multilingual"}
)
VAD_DEFAULTS: Final[Mapping[str, Any]] = {
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}
MIN_COMMIT_MS: Final = 100
SPOKEN_SECONDS_PER_WORD: Final = 0.25

DEFAULT_SESSION: Final[Mapping[str, Any]] = {
    "object": "realtime.session",
    "modalities": ["text", "audio"],
    "instructions": "You are a helpful assistant.",
    "voice": {"type": "azure-standard", "name": "en-US-Ava:DragonHDLatestNeural"},
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "input_audio_sampling_rate": 24000,
    "turn_detection": {"type": "server_vad", **VAD_DEFAULTS},
    "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
    "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
    "input_audio_transcription": None,
    "tools": [],
    "tool_choice": "auto",
    "temperature": 0.8,
    "max_response_output_tokens": "inf",
}

_WORD: Final = re.compile(r"\S+\s*")


class ProtocolError(Exception):
    """A client event the service rejects; it becomes an ``error`` event, the session stays."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class Step:
    """Events to send together; ``audio_seconds`` of audio they carry (for pacing)."""

    events: list[Event]
    audio_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Truncation:
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(eq=False, slots=True)
class Item:
    """A conversation item: its wire form plus what the emulator keeps beside it."""

    wire: Event
    audio: Samples | None = None  # user audio at 24 kHz (kept for the latest user item only)
    output_samples: int = 0  # assistant audio sent so far, at 24 kHz
    from_response: bool = False

    @property
    def id(self) -> str:
        return str(self.wire["id"])


@dataclass
class _OpenPart:
    kind: str  # "audio" or "text"
    text_sent: str = ""


class ActiveResponse:
    """A response being streamed: the state a cancellation needs to close it properly."""

    def __init__(self, response_id: str, params: Mapping[str, Any]) -> None:
        self.id = response_id
        self.params = dict(params)
        self.output: list[Event] = []
        self.item: Item | None = None
        self.part: _OpenPart | None = None
        self.output_index = -1
        self.steps: Iterator[Step] = iter(())
        self.audio_ms = 0
        self.words = 0


@dataclass
class ConversationOptions:
    model: str = "gpt-realtime"
    responder: Callable[[], Responder] = field(default=Parrot)
    audio_chunk_ms: int = 100
    rate_limit_events: bool = True
    expires_at: int = 0
    id_prefix: str = field(default_factory=lambda: secrets.token_hex(4))


class Conversation:
    """One connection's session, input buffer, turn detection, conversation and response."""

    def __init__(self, options: ConversationOptions | None = None) -> None:
        self.options = options or ConversationOptions()
        self._counter = 0
        self.session: Event = copy.deepcopy(dict(DEFAULT_SESSION))
        self.session["id"] = f"sess_{self.options.id_prefix}"
        self.session["model"] = self.options.model
        self.session["expires_at"] = self.options.expires_at
        self.items: list[Item] = []
        self.truncations: list[Truncation] = []
        self.response: ActiveResponse | None = None
        self.responses_started = 0
        # Input audio, counted in samples since the session began (or the last format change).
        self._format = input_format(self.session)
        self._samples_base = 0  # session samples before the last format change ...
        self._ms_base = 0  # ... and the audio time they took
        self._input = SampleBuffer()
        self._vad: EnergyVad | None = None
        self._speech_item_id: str | None = None
        self._speech_start = 0
        self._configure_input()

    # ----------------------------------------------------------------- entry points
    def open(self) -> list[Event]:
        return [self._event("session.created", session=copy.deepcopy(self.session))]

    def receive_text(self, text: str) -> list[Event]:
        try:
            event = json.loads(text)
        except ValueError:
            return [self._error(ProtocolError("invalid_json", "The event is not valid JSON."))]
        if not isinstance(event, dict):
            return [self._error(ProtocolError("invalid_json", "The event must be a JSON object."))]
        return self.receive(event)

    def receive(self, event: Mapping[str, Any]) -> list[Event]:
        handler = self._handlers.get(str(event.get("type")))
        if handler is None:
            unknown = ProtocolError(
                "invalid_value",
                f"Invalid value: {event.get('type')!r}. Supported values are: "
                + ", ".join(sorted(self._handlers))
                + ".",
                param="type",
            )
            return [self._error(unknown, event.get("event_id"))]
        try:
            return handler(self, event)
        except ProtocolError as exc:
            return [self._error(exc, event.get("event_id"))]

    def server_event(self, event_type: str, **fields: Any) -> Event:
        """A server event with a fresh event_id (for faults the server injects)."""
        return self._event(event_type, **fields)

    def error_event(
        self,
        code: str,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> Event:
        return self._error(
            ProtocolError(code, message, param=param, error_type=error_type), client_event_id
        )

    def next_step(self, response_id: str) -> Step | None:
        """The next events of response ``response_id``; None once it is over or replaced."""
        response = self.response
        if response is None or response.id != response_id:
            return None
        return next(response.steps, None)

    # ----------------------------------------------------------------- helpers
    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self.options.id_prefix}{self._counter:04d}"

    def _event(self, event_type: str, **fields: Any) -> Event:
        return {"type": event_type, "event_id": self._next_id("event"), **fields}

    def _error(self, exc: ProtocolError, client_event_id: object = None) -> Event:
        return self._event(
            "error",
            error={
                "type": exc.error_type,
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": client_event_id if isinstance(client_event_id, str) else None,
            },
        )

    def _sample_ms(self, sample: int) -> int:
        return self._ms_base + (sample - self._samples_base) * 1000 // self._format.rate

    @property
    def turn_detection(self) -> Mapping[str, Any] | None:
        detection = self.session.get("turn_detection")
        return detection if isinstance(detection, dict) else None

    def _configure_input(self) -> None:
        detection = self.turn_detection
        if detection is None:
            self._vad = None
        else:
            settings = VadSettings(
                threshold=float(detection.get("threshold", VAD_DEFAULTS["threshold"])),
                prefix_padding_ms=int(
                    detection.get("prefix_padding_ms", VAD_DEFAULTS["prefix_padding_ms"])
                ),
                silence_duration_ms=int(
                    detection.get("silence_duration_ms", VAD_DEFAULTS["silence_duration_ms"])
                ),
                speech_duration_ms=int(detection.get("speech_duration_ms") or 0),
            )
            self._vad = EnergyVad(settings, self._format.rate)
            self._vad.reset(self._input.end)
        self._speech_item_id = None

    def _previous_item_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def _find(self, item_id: object) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise ProtocolError(
            "item_not_found", f"Item with item_id {item_id!r} not found.", param="item_id"
        )

    # ----------------------------------------------------------------- session
    def _session_update(self, event: Mapping[str, Any]) -> list[Event]:
        update = event.get("session")
        if not isinstance(update, dict):
            raise ProtocolError("missing_required_parameter", "Missing session.", param="session")
        merged = {**self.session, **copy.deepcopy(update)}
        merged["id"], merged["model"] = self.session["id"], self.session["model"]
        merged["object"], merged["expires_at"] = "realtime.session", self.session["expires_at"]
        _validate_session(merged)
        detection = merged.get("turn_detection")
        if isinstance(detection, dict):
            merged["turn_detection"] = {**VAD_DEFAULTS, **detection}
        input_changed = input_format(merged) != self._format
        detection_changed = merged.get("turn_detection") != self.session.get("turn_detection")
        self.session = merged
        if input_changed:
            # Audio time continues; the buffer in the old format is dropped.
            self._ms_base = self._sample_ms(self._input.end)
            self._format = input_format(merged)
            self._samples_base = 0
            self._input.clear(at=0)
        if input_changed or detection_changed:
            self._configure_input()
        return [self._event("session.updated", session=copy.deepcopy(self.session))]

    # ----------------------------------------------------------------- input audio
    def _append(self, event: Mapping[str, Any]) -> list[Event]:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("missing_required_parameter", "Missing audio.", param="audio")
        try:
            data = b64decode(audio)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(
                "invalid_value", "Invalid audio: not base64.", param="audio"
            ) from exc
        samples = self._format.decode(data)
        self._input.append(samples)
        out: list[Event] = []
        if self._vad is not None:
            for vad_event in self._vad.feed(samples):
                if isinstance(vad_event, SpeechStarted):
                    out += self._speech_started(vad_event)
                else:
                    out += self._speech_stopped(vad_event)
            if not self._vad.in_speech:
                self._trim_buffer()
        return out

    def _trim_buffer(self) -> None:
        # Between turns only the prefix padding can still become part of a user item.
        detection = self.turn_detection or {}
        keep_ms = (
            int(detection.get("prefix_padding_ms") or 0)
            + int(detection.get("speech_duration_ms") or 0)
            + 1000
        )
        keep = keep_ms * self._format.rate // 1000
        if len(self._input) > 2 * keep:
            self._input.drop_before(self._input.end - keep)

    def _speech_started(self, started: SpeechStarted) -> list[Event]:
        item_id = self._next_id("item")
        self._speech_item_id = item_id
        self._speech_start = max(started.start_sample, self._input.start)
        out = [
            self._event(
                "input_audio_buffer.speech_started",
                audio_start_ms=self._sample_ms(self._speech_start),
                item_id=item_id,
            )
        ]
        detection = self.turn_detection or {}
        if self.response is not None and detection.get("interrupt_response", True):
            out += self._cancel(self.response, "turn_detected")
        return out

    def _speech_stopped(self, stopped: SpeechStopped) -> list[Event]:
        item_id = self._speech_item_id or self._next_id("item")
        self._speech_item_id = None
        out = [
            self._event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=self._sample_ms(stopped.end_sample),
                item_id=item_id,
            )
        ]
        out += self._commit_range(self._speech_start, stopped.end_sample, item_id)
        detection = self.turn_detection or {}
        if detection.get("create_response", True) and self.response is None:
            out += self._start_response({})
        return out

    def _commit(self, event: Mapping[str, Any]) -> list[Event]:
        buffered_ms = self._sample_ms(self._input.end) - self._sample_ms(self._input.start)
        if buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        item_id = self._speech_item_id or self._next_id("item")
        out = self._commit_range(self._input.start, self._input.end, item_id)
        if self._vad is not None:
            self._vad.reset(self._input.end)
        self._speech_item_id = None
        return out

    def _commit_range(self, start: int, end: int, item_id: str) -> list[Event]:
        audio = self._input.take(start, end)
        # What follows the committed range stays in the buffer for the next turn.
        self._input.drop_before(end)
        previous = self._previous_item_id()
        transcribing = self.session.get("input_audio_transcription") is not None
        seconds = describe_seconds(audio.size / self._format.rate)
        transcript = f"({seconds} of speech)" if transcribing else None
        wire: Event = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        for item in self.items:
            item.audio = None  # only the latest user audio is kept (the parrot's input)
        self.items.append(Item(wire=wire, audio=resample(audio, self._format.rate, OUTPUT_RATE)))
        out = [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self._event(
                "conversation.item.created", previous_item_id=previous, item=copy.deepcopy(wire)
            ),
        ]
        if transcript is not None:
            wire["content"][0]["transcript"] = transcript
            out += [
                self._event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=transcript,
                ),
                self._event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript,
                ),
            ]
        return out

    def _clear(self, event: Mapping[str, Any]) -> list[Event]:
        self._input.clear()
        if self._vad is not None:
            self._vad.reset(self._input.end)
        self._speech_item_id = None
        return [self._event("input_audio_buffer.cleared")]

    # ----------------------------------------------------------------- conversation items
    def _item_create(self, event: Mapping[str, Any]) -> list[Event]:
        raw = event.get("item")
        if not isinstance(raw, dict):
            raise ProtocolError("missing_required_parameter", "Missing item.", param="item")
        item = self._item_from_client(raw)
        previous_id = event.get("previous_item_id")
        if previous_id is None:
            previous = self._previous_item_id()
            self.items.append(item)
        elif previous_id == "root":
            previous = None
            self.items.insert(0, item)
        else:
            index = self.items.index(self._find(previous_id))
            previous = str(previous_id)
            self.items.insert(index + 1, item)
        return [
            self._event(
                "conversation.item.created",
                previous_item_id=previous,
                item=copy.deepcopy(item.wire),
            )
        ]

    def _item_from_client(self, raw: Mapping[str, Any]) -> Item:
        item_id = raw.get("id") or self._next_id("item")
        if any(existing.id == item_id for existing in self.items):
            raise ProtocolError(
                "item_id_exists", f"Item with id {item_id!r} already exists.", param="item.id"
            )
        kind = raw.get("type")
        base: Event = {"id": item_id, "object": "realtime.item", "type": kind}
        if kind == "message":
            role = raw.get("role")
            if role not in ("user", "assistant", "system"):
                raise ProtocolError("invalid_value", f"Invalid role: {role!r}.", param="item.role")
            content = raw.get("content")
            if not isinstance(content, list) or not content:
                raise ProtocolError(
                    "missing_required_parameter", "Missing content.", param="item.content"
                )
            parts: list[Event] = []
            audio: Samples | None = None
            for part in content:
                part_type = part.get("type") if isinstance(part, dict) else None
                if part_type in ("input_text", "text"):
                    parts.append({"type": part_type, "text": str(part.get("text", ""))})
                elif part_type == "input_audio" and role == "user":
                    data = b64decode(str(part.get("audio", "")))
                    audio = resample(self._format.decode(data), self._format.rate, OUTPUT_RATE)
                    parts.append({"type": "input_audio", "transcript": part.get("transcript")})
                else:
                    raise ProtocolError(
                        "invalid_value",
                        f"Invalid content type {part_type!r} for a {role} message.",
                        param="item.content",
                    )
            wire = {**base, "status": "completed", "role": role, "content": parts}
            if audio is not None:
                for existing in self.items:
                    existing.audio = None
            return Item(wire=wire, audio=audio)
        if kind == "function_call_output":
            call_id, output = raw.get("call_id"), raw.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise ProtocolError(
                    "missing_required_parameter",
                    "A function_call_output item needs call_id and output (strings).",
                    param="item.call_id",
                )
            return Item(wire={**base, "call_id": call_id, "output": output})
        if kind == "function_call":
            fields = {key: raw.get(key) for key in ("call_id", "name", "arguments")}
            if not all(isinstance(value, str) for value in fields.values()):
                raise ProtocolError(
                    "missing_required_parameter",
                    "A function_call item needs call_id, name and arguments (strings).",
                    param="item",
                )
            return Item(wire={**base, "status": "completed", **fields})
        raise ProtocolError("invalid_value", f"Invalid item type: {kind!r}.", param="item.type")

    def _item_truncate(self, event: Mapping[str, Any]) -> list[Event]:
        item = self._find(event.get("item_id"))
        content_index = event.get("content_index", 0)
        audio_end_ms = event.get("audio_end_ms")
        if not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise ProtocolError(
                "invalid_value",
                "audio_end_ms must be a non-negative integer.",
                param="audio_end_ms",
            )
        content = item.wire.get("content") or []
        if (
            item.wire.get("role") != "assistant"
            or not isinstance(content_index, int)
            or not 0 <= content_index < len(content)
            or content[content_index].get("type") != "audio"
        ):
            raise ProtocolError(
                "invalid_value",
                "Only the audio content of an assistant message can be truncated.",
                param="content_index",
            )
        available_ms = -(-item.output_samples * 1000 // OUTPUT_RATE)  # rounded up
        if audio_end_ms > available_ms:
            raise ProtocolError(
                "invalid_value",
                f"audio_end_ms ({audio_end_ms}) is longer than the audio of the item "
                f"({available_ms} ms).",
                param="audio_end_ms",
            )
        # The service drops the transcript so no text the user did not hear stays in context.
        content[content_index]["transcript"] = ""
        self.truncations.append(Truncation(item.id, content_index, audio_end_ms))
        return [
            self._event(
                "conversation.item.truncated",
                item_id=item.id,
                content_index=content_index,
                audio_end_ms=audio_end_ms,
            )
        ]

    def _item_delete(self, event: Mapping[str, Any]) -> list[Event]:
        item = self._find(event.get("item_id"))
        self.items.remove(item)
        return [self._event("conversation.item.deleted", item_id=item.id)]

    def _item_retrieve(self, event: Mapping[str, Any]) -> list[Event]:
        item = self._find(event.get("item_id"))
        return [self._event("conversation.item.retrieved", item=copy.deepcopy(item.wire))]

    def _output_audio_clear(self, event: Mapping[str, Any]) -> list[Event]:
        return [self._event("output_audio_buffer.cleared")]

    # ----------------------------------------------------------------- responses
    def _response_create(self, event: Mapping[str, Any]) -> list[Event]:
        if self.response is not None:
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = event.get("response")
        params = dict(params) if isinstance(params, dict) else {}
        if isinstance(event.get("additional_instructions"), str):
            params["additional_instructions"] = event["additional_instructions"]
        return self._start_response(params)

    def _response_cancel(self, event: Mapping[str, Any]) -> list[Event]:
        wanted = event.get("response_id")
        response = self.response
        if response is None or (wanted is not None and wanted != response.id):
            raise ProtocolError(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        return self._cancel(response, "client_cancelled")

    def _start_response(self, params: Mapping[str, Any]) -> list[Event]:
        self.responses_started += 1
        response = ActiveResponse(self._next_id("resp"), params)
        self.response = response
        tools = params.get("tools", self.session.get("tools")) or []
        turn = Turn(
            number=self.responses_started,
            items=tuple(copy.deepcopy(item.wire) for item in self.items),
            user_audio=self._trailing_user_audio(),
            user_text=self._trailing_user_text(),
            function_outputs=self._trailing_function_outputs(),
            session=copy.deepcopy(self.session),
            response=copy.deepcopy(dict(params)),
            tools=tuple(tool for tool in tools if isinstance(tool, dict)),
        )
        try:
            replies = replies_of(self.options.responder()(turn))
        except Exception as exc:  # a test's responder failing: the response fails, visibly
            log.exception("the responder failed on response %s", response.id)
            replies = [Failure("responder_error", f"The responder failed: {exc!r}")]
        response.steps = self._response_steps(response, turn, replies)
        out = [
            self._event(
                "response.created",
                response={
                    "id": response.id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "status_details": None,
                    "output": [],
                    "usage": None,
                },
            )
        ]
        if self.options.rate_limit_events:
            out.append(
                self._event(
                    "rate_limits.updated",
                    rate_limits=[
                        {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
                        {
                            "name": "tokens",
                            "limit": 120000,
                            "remaining": 119000,
                            "reset_seconds": 30,
                        },
                    ],
                )
            )
        return out

    def _trailing_inputs(self) -> list[Item]:
        trailing: list[Item] = []
        for item in reversed(self.items):
            if item.from_response or item.wire.get("role") == "assistant":
                break
            trailing.append(item)
        trailing.reverse()
        return trailing

    def _trailing_user_audio(self) -> Samples | None:
        for item in reversed(self._trailing_inputs()):
            if item.wire.get("role") == "user":
                return item.audio
        return None

    def _trailing_user_text(self) -> str | None:
        for item in reversed(self._trailing_inputs()):
            if item.wire.get("role") == "user":
                texts = [
                    str(part.get("text", ""))
                    for part in item.wire["content"]
                    if part.get("type") in ("input_text", "text")
                ]
                return " ".join(texts) if texts else None
        return None

    def _trailing_function_outputs(self) -> tuple[FunctionOutput, ...]:
        names = {
            item.wire.get("call_id"): item.wire.get("name")
            for item in self.items
            if item.wire.get("type") == "function_call"
        }
        return tuple(
            FunctionOutput(
                call_id=str(item.wire["call_id"]),
                name=names.get(item.wire["call_id"]),
                output=str(item.wire["output"]),
            )
            for item in self._trailing_inputs()
            if item.wire.get("type") == "function_call_output"
        )

    def _modalities(self, response: ActiveResponse) -> list[str]:
        modalities = response.params.get("modalities") or self.session.get("modalities") or []
        return [str(m) for m in modalities]

    def _response_steps(
        self, response: ActiveResponse, turn: Turn, replies: list[Reply]
    ) -> Iterator[Step]:
        speaks = "audio" in self._modalities(response)
        for reply in replies:
            if isinstance(reply, Failure):
                yield Step([self._response_done(response, "failed", reply)])
                return
            response.output_index += 1
            if isinstance(reply, FunctionCall):
                if turn.tool(reply.name) is None:
                    failure = Failure(
                        "tool_not_found",
                        f"The responder called {reply.name!r}, which the session does not offer.",
                    )
                    yield Step([self._response_done(response, "failed", failure)])
                    return
                yield from self._function_call_steps(response, reply)
            elif speaks:
                if isinstance(reply, Speech):
                    yield from self._speech_steps(response, reply.audio, reply.transcript)
                else:
                    spoken = tone(SPOKEN_SECONDS_PER_WORD * len(_WORD.findall(reply.text)))
                    yield from self._speech_steps(
                        response, spoken.astype("<i2").tobytes(), reply.text
                    )
            else:
                text = reply.transcript if isinstance(reply, Speech) else reply.text
                yield from self._text_steps(response, text)
        yield Step([self._response_done(response, "completed")])

    def _open_item(self, response: ActiveResponse, wire: Event) -> list[Event]:
        previous = self._previous_item_id()
        item = Item(wire=wire, from_response=True)
        self.items.append(item)
        response.item = item
        response.output.append(wire)
        return [
            self._event(
                "response.output_item.added",
                response_id=response.id,
                output_index=response.output_index,
                item=copy.deepcopy(wire),
            ),
            self._event(
                "conversation.item.created", previous_item_id=previous, item=copy.deepcopy(wire)
            ),
        ]

    def _message_wire(self) -> Event:
        return {
            "id": self._next_id("item"),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }

    def _part_fields(self, response: ActiveResponse) -> Event:
        assert response.item is not None
        return {
            "response_id": response.id,
            "item_id": response.item.id,
            "output_index": response.output_index,
            "content_index": 0,
        }

    def _speech_steps(
        self, response: ActiveResponse, audio: bytes, transcript: str
    ) -> Iterator[Step]:
        fmt = output_format(
            str(
                response.params.get("output_audio_format")
                or self.session.get("output_audio_format")
                or "pcm16"
            )
        )
        samples = np.frombuffer(audio[: len(audio) - len(audio) % 2], dtype="<i2").astype(np.int16)
        head = self._open_item(response, self._message_wire())
        response.part = _OpenPart("audio")
        assert response.item is not None
        # Held in the conversation from now on, so a truncate may come before the part ends.
        response.item.wire["content"] = [{"type": "audio", "transcript": ""}]
        fields = self._part_fields(response)
        head.append(
            self._event(
                "response.content_part.added", **fields, part={"type": "audio", "transcript": ""}
            )
        )
        yield Step(head)
        words = _WORD.findall(transcript)
        chunk = max(1, OUTPUT_RATE * self.options.audio_chunk_ms // 1000)
        chunks = -(-samples.size // chunk)
        sent_words = 0
        item = response.item
        assert item is not None
        for index in range(chunks):
            events: list[Event] = []
            due = -(-len(words) * (index + 1) // chunks)
            # Each transcript word goes out just before the audio it belongs to.
            events += self._transcript_deltas(response, words[sent_words : max(due, sent_words)])
            sent_words = max(due, sent_words)
            piece = samples[index * chunk : (index + 1) * chunk]
            out = resample(piece, OUTPUT_RATE, fmt.rate)
            events.append(
                self._event("response.audio.delta", **fields, delta=b64encode(fmt.encode(out)))
            )
            item.output_samples += piece.size
            response.audio_ms = item.output_samples * 1000 // OUTPUT_RATE
            yield Step(events, piece.size / OUTPUT_RATE)
        tail = self._transcript_deltas(response, words[sent_words:])
        yield Step(tail + self._close_part(response, "completed"))

    def _transcript_deltas(self, response: ActiveResponse, words: list[str]) -> list[Event]:
        assert response.part is not None
        events = []
        kind = (
            "response.audio_transcript.delta"
            if response.part.kind == "audio"
            else ("response.text.delta")
        )
        for word in words:
            response.part.text_sent += word
            response.words += 1
            events.append(self._event(kind, **self._part_fields(response), delta=word))
        return events

    def _text_steps(self, response: ActiveResponse, text: str) -> Iterator[Step]:
        head = self._open_item(response, self._message_wire())
        response.part = _OpenPart("text")
        head.append(
            self._event(
                "response.content_part.added",
                **self._part_fields(response),
                part={"type": "text", "text": ""},
            )
        )
        yield Step(head)
        for word in _WORD.findall(text):
            yield Step(self._transcript_deltas(response, [word]))
        yield Step(self._close_part(response, "completed"))

    def _close_part(self, response: ActiveResponse, status: str) -> list[Event]:
        """The events that finish the open content part and its item (completed or not)."""
        part, item = response.part, response.item
        assert item is not None
        events: list[Event] = []
        if part is not None:
            fields = self._part_fields(response)
            said = part.text_sent
            if part.kind == "audio":
                wire_part: Event = {"type": "audio", "transcript": said}
                events += [
                    self._event("response.audio.done", **fields),
                    self._event("response.audio_transcript.done", **fields, transcript=said),
                ]
            else:
                wire_part = {"type": "text", "text": said}
                events.append(self._event("response.text.done", **fields, text=said))
            events.append(self._event("response.content_part.done", **fields, part=dict(wire_part)))
            item.wire["content"] = [wire_part]
        item.wire["status"] = status
        events.append(
            self._event(
                "response.output_item.done",
                response_id=response.id,
                output_index=response.output_index,
                item=copy.deepcopy(item.wire),
            )
        )
        response.part = None
        response.item = None
        return events

    def _function_call_steps(self, response: ActiveResponse, call: FunctionCall) -> Iterator[Step]:
        call_id = call.call_id or self._next_id("call")
        arguments = call.arguments_json
        wire: Event = {
            "id": self._next_id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": call_id,
            "arguments": "",
        }
        yield Step(self._open_item(response, wire))
        fields = {
            "response_id": response.id,
            "item_id": wire["id"],
            "output_index": response.output_index,
            "call_id": call_id,
        }
        size = max(1, -(-len(arguments) // 3))
        for start in range(0, len(arguments), size):
            delta = arguments[start : start + size]
            wire["arguments"] += delta
            yield Step(
                [self._event("response.function_call_arguments.delta", **fields, delta=delta)]
            )
        done = self._event(
            "response.function_call_arguments.done", **fields, name=call.name, arguments=arguments
        )
        yield Step([done, *self._close_part(response, "completed")])

    def _usage(self, response: ActiveResponse) -> Event:
        audio_in = self._input_audio_tokens()
        text_in = 20 + sum(len(_WORD.findall(json.dumps(item.wire))) for item in self.items) // 4
        audio_out = response.audio_ms // 50
        text_out = response.words
        return {
            "total_tokens": audio_in + text_in + audio_out + text_out,
            "input_tokens": audio_in + text_in,
            "output_tokens": audio_out + text_out,
            "input_token_details": {
                "cached_tokens": 0,
                "text_tokens": text_in,
                "audio_tokens": audio_in,
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    def _input_audio_tokens(self) -> int:
        audio = self._trailing_user_audio()
        return 0 if audio is None else audio.size * 1000 // OUTPUT_RATE // 100

    def _response_done(
        self,
        response: ActiveResponse,
        status: str,
        failure: Failure | None = None,
        reason: str | None = None,
    ) -> Event:
        details: Event | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": reason}
        elif failure is not None:
            details = {
                "type": "failed",
                "error": {"type": failure.type, "code": failure.code, "message": failure.message},
            }
        done = self._event(
            "response.done",
            response={
                "id": response.id,
                "object": "realtime.response",
                "status": status,
                "status_details": details,
                "output": copy.deepcopy(response.output),
                "usage": self._usage(response),
            },
        )
        if self.response is response:
            self.response = None
        return done

    def _cancel(self, response: ActiveResponse, reason: str) -> list[Event]:
        events = self._close_part(response, "incomplete") if response.item is not None else []
        events.append(self._response_done(response, "cancelled", reason=reason))
        return events

    _handlers: Final[Mapping[str, Callable[[Conversation, Mapping[str, Any]], list[Event]]]] = {
        "session.update": _session_update,
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
        "conversation.item.create": _item_create,
        "conversation.item.truncate": _item_truncate,
        "conversation.item.delete": _item_delete,
        "conversation.item.retrieve": _item_retrieve,
        "response.create": _response_create,
        "response.cancel": _response_cancel,
        "output_audio_buffer.clear": _output_audio_clear,
    }


def _validate_session(session: Mapping[str, Any]) -> None:
    def invalid(param: str, message: str) -> ProtocolError:
        return ProtocolError("invalid_value", message, param=f"session.{param}")

    detection = session.get("turn_detection")
    if detection is not None:
        if not isinstance(detection, dict) or detection.get("type") not in TURN_DETECTION_TYPES:
            kind = detection.get("type") if isinstance(detection, dict) else detection
            raise invalid(
                "turn_detection.type",
                f"Invalid turn detection type {kind!r}; supported: "
                + ", ".join(sorted(TURN_DETECTION_TYPES))
                + ".",
            )
        threshold = detection.get("threshold", 0.5)
        if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise invalid("turn_detection.threshold", "threshold must be between 0.0 and 1.0.")
        for name in ("prefix_padding_ms", "silence_duration_ms", "speech_duration_ms"):
            value = detection.get(name, 0)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise invalid(f"turn_detection.{name}", f"{name} must be a non-negative integer.")
    if session.get("input_audio_format") not in INPUT_FORMATS:
        raise invalid("input_audio_format", "input_audio_format must be one of pcm16, g711_*.")
    if session.get("output_audio_format") not in OUTPUT_FORMATS:
        raise invalid("output_audio_format", "Unsupported output_audio_format.")
    rate = session.get("input_audio_sampling_rate", 24000)
    if rate is not None and rate not in INPUT_SAMPLING_RATES:
        raise invalid(
            "input_audio_sampling_rate", "input_audio_sampling_rate must be 16000 or 24000."
        )
    modalities = session.get("modalities")
    if (
        not isinstance(modalities, list)
        or not modalities
        or not set(modalities) <= {"text", "audio"}
    ):
        raise invalid("modalities", "modalities must be a non-empty list of 'text' and 'audio'.")
    tools = session.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(tool, dict) and (tool.get("type") != "function" or tool.get("name"))
        for tool in tools
    ):
        raise invalid("tools", "Each tool must be an object; a function needs a name.")
