"""The ``session.update`` the device sends, built from its settings with the SDK's models.

- Voice: an OpenAI voice by name (``alloy`` ...), anything else is an Azure voice
  (``en-US-Ava:DragonHDLatestNeural``), with its temperature when one is set.
- Audio: PCM16 both ways; input at 24 kHz or 16 kHz (``input_audio_sampling_rate``).
- Turns: push-to-talk sends ``turn_detection: null`` (the device commits each turn);
  toggle uses the configured VAD with its threshold, padding and silence. The service
  ends an answer itself when the user talks over it (``interrupt_response``), which the
  state machine relies on (``server_interrupts``).
- Deep noise suppression, server echo cancellation and input transcription when enabled.
- Tools and instructions, except for a Foundry agent, which brings its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from azure.ai.voicelive.models import (
    AudioEchoCancellation,
    AudioInputTranscriptionOptions,
    AudioNoiseReduction,
    AzureSemanticVad,
    AzureSemanticVadEn,
    AzureSemanticVadMultilingual,
    AzureStandardVoice,
    FunctionTool,
    OpenAIVoice,
    RequestSession,
    ServerVad,
)
from azure.ai.voicelive.models import (
    TurnDetection as SdkTurnDetection,
)

from appliance.config import ServiceSettings, TurnDetection
from appliance.state import ButtonMode

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)


def voice_config(name: str, temperature: float | None = None) -> OpenAIVoice | AzureStandardVoice:
    if name.strip().lower() in OPENAI_VOICES:
        return OpenAIVoice(name=name.strip().lower())
    return AzureStandardVoice(name=name.strip(), temperature=temperature)


def turn_detection_config(
    service: ServiceSettings, button_mode: ButtonMode
) -> SdkTurnDetection | None:
    """None (manual turns) for push-to-talk; the configured VAD for toggle."""
    if button_mode is ButtonMode.PUSH_TO_TALK:
        return None
    kinds: dict[TurnDetection, type[SdkTurnDetection]] = {
        TurnDetection.SERVER_VAD: ServerVad,
        TurnDetection.SEMANTIC_VAD: AzureSemanticVad,
        TurnDetection.SEMANTIC_VAD_EN: AzureSemanticVadEn,
        TurnDetection.SEMANTIC_VAD_MULTILINGUAL: AzureSemanticVadMultilingual,
    }
    # The mapping form of the SDK's constructors: the same fields for every VAD kind.
    return kinds[service.turn_detection](
        {
            "threshold": service.vad_threshold,
            "prefix_padding_ms": service.vad_prefix_padding_ms,
            "silence_duration_ms": service.vad_silence_ms,
            "create_response": True,
            # The service ends an answer when the user talks over it (state.server_interrupts).
            "interrupt_response": True,
        }
    )


def build_session(
    service: ServiceSettings,
    *,
    button_mode: ButtonMode,
    tools: Sequence[FunctionTool] = (),
) -> RequestSession:
    """The session configuration for one connection (sent before any audio)."""
    agent = service.agent_name is not None
    options: dict[str, object] = {
        "modalities": ["text", "audio"],
        "voice": voice_config(service.voice, service.voice_temperature),
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_sampling_rate": service.input_sample_rate,
        # Always present: RequestSession sends an explicit None as `"turn_detection": null`,
        # which switches the service to manual turns.
        "turn_detection": turn_detection_config(service, button_mode),
    }
    # Everything else only when set: the SDK would send any other explicit None as null too.
    if service.noise_suppression:
        options["input_audio_noise_reduction"] = AudioNoiseReduction(
            type="azure_deep_noise_suppression"
        )
    if service.echo_cancellation:
        options["input_audio_echo_cancellation"] = AudioEchoCancellation()
    if service.transcription_model:
        options["input_audio_transcription"] = AudioInputTranscriptionOptions(
            model=service.transcription_model
        )
    if not agent:
        # A Foundry agent has its own instructions, tools and model parameters.
        options["instructions"] = service.instructions
        options["temperature"] = service.temperature
        if tools:
            options["tools"] = list(tools)
            options["tool_choice"] = "auto"
    return RequestSession(**options)
