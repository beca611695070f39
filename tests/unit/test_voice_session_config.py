from __future__ import annotations

import json
from typing import Any

import pytest
from azure.ai.voicelive.models import ClientEventSessionUpdate, ServerEvent

from appliance.config import ServiceSettings, TurnDetection
from appliance.state import ButtonMode
from appliance.voice.session_config import build_session
from appliance.voice.tools import device_tools


def wire(service: ServiceSettings, mode: ButtonMode = ButtonMode.TOGGLE, **kw: Any) -> Any:
    """The session.update exactly as the SDK puts it on the wire."""
    event = ClientEventSessionUpdate(session=build_session(service, button_mode=mode, **kw))
    return json.loads(json.dumps(event.as_dict()))["session"]


def test_defaults_toggle_mode() -> None:
    session = wire(ServiceSettings())
    assert session == {
        "modalities": ["text", "audio"],
        "voice": {"type": "azure-standard", "name": "en-US-Ava:DragonHDLatestNeural"},
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_sampling_rate": 24000,
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        },
        "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        "input_audio_transcription": {"model": "azure-speech"},
        "instructions": ServiceSettings().instructions,
        "temperature": 0.8,
    }


def test_push_to_talk_sends_turn_detection_null() -> None:
    session = wire(ServiceSettings(), ButtonMode.PUSH_TO_TALK)
    assert "turn_detection" in session
    assert session["turn_detection"] is None


@pytest.mark.parametrize("kind", list(TurnDetection))
def test_each_vad_kind_carries_the_configured_parameters(kind: TurnDetection) -> None:
    service = ServiceSettings.model_validate(
        {
            "APPLIANCE_TURN_DETECTION": kind.value,
            "APPLIANCE_VAD_THRESHOLD": "0.7",
            "APPLIANCE_VAD_PREFIX_PADDING_MS": "200",
            "APPLIANCE_VAD_SILENCE_MS": "800",
        }
    )
    turn = wire(service)["turn_detection"]
    assert turn["type"] == kind.value
    assert (turn["threshold"], turn["prefix_padding_ms"], turn["silence_duration_ms"]) == (
        0.7,
        200,
        800,
    )


@pytest.mark.parametrize("name", ["alloy", "Shimmer", "verse"])
def test_openai_voices_by_name(name: str) -> None:
    service = ServiceSettings.model_validate({"APPLIANCE_VOICE": name})
    assert wire(service)["voice"] == {"type": "openai", "name": name.lower()}


def test_azure_voice_with_temperature() -> None:
    service = ServiceSettings.model_validate(
        {
            "APPLIANCE_VOICE": "de-DE-Seraphina:DragonHDLatestNeural",
            "APPLIANCE_VOICE_TEMPERATURE": "0.3",
        }
    )
    assert wire(service)["voice"] == {
        "type": "azure-standard",
        "name": "de-DE-Seraphina:DragonHDLatestNeural",
        "temperature": 0.3,
    }


def test_sixteen_khz_input() -> None:
    service = ServiceSettings.model_validate({"APPLIANCE_INPUT_SAMPLE_RATE": "16000"})
    assert wire(service)["input_audio_sampling_rate"] == 16000


def test_switched_off_features_are_left_out() -> None:
    service = ServiceSettings.model_validate(
        {
            "APPLIANCE_NOISE_SUPPRESSION": "false",
            "APPLIANCE_ECHO_CANCELLATION": "false",
            "APPLIANCE_TRANSCRIPTION": "off",
        }
    )
    session = wire(service)
    for key in (
        "input_audio_noise_reduction",
        "input_audio_echo_cancellation",
        "input_audio_transcription",
    ):
        assert key not in session


def test_tools_are_offered_with_tool_choice_auto() -> None:
    session = wire(ServiceSettings(), tools=device_tools().definitions())
    assert [t["name"] for t in session["tools"]] == device_tools().names
    assert session["tool_choice"] == "auto"


def test_a_foundry_agent_brings_its_own_instructions_and_tools() -> None:
    service = ServiceSettings.model_validate(
        {"AZURE_VOICELIVE_AGENT_NAME": "helper", "AZURE_VOICELIVE_AGENT_PROJECT": "proj"}
    )
    session = wire(service, tools=device_tools().definitions())
    for key in ("instructions", "tools", "tool_choice", "temperature"):
        assert key not in session
    assert session["voice"]["name"] == "en-US-Ava:DragonHDLatestNeural"


def test_the_service_echo_of_it_deserializes() -> None:
    # What a session.updated built from our request looks like to the SDK.
    session = wire(ServiceSettings(), ButtonMode.PUSH_TO_TALK, tools=device_tools().definitions())
    event = ServerEvent._deserialize(  # type: ignore[no-untyped-call]
        {"type": "session.updated", "session": {**session, "id": "sess_1"}}, []
    )
    assert event.session.id == "sess_1"
    assert event.session.turn_detection is None
    assert [tool.name for tool in event.session.tools] == device_tools().names
