from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import (
    AuthMode,
    TurnDetection,
    load_settings,
    permission_warnings,
    render_env_example,
    variable_names,
)
from appliance.errors import ConfigError
from appliance.state import ButtonMode

ROOT = Path(__file__).resolve().parents[2]
NO_SYSTEM_FILE = Path("/nonexistent/appliance.env")


def load(env_file: Path | None = None):
    return load_settings(env_file, system_env_file=NO_SYSTEM_FILE)


def test_defaults_need_no_configuration() -> None:
    settings = load()
    assert settings.service.endpoint is None
    assert settings.service.model == "gpt-realtime"
    assert settings.service.turn_detection is TurnDetection.SERVER_VAD
    assert settings.auth.mode is AuthMode.AUTO
    assert settings.gpio.button_pin == "GPIO17"
    assert settings.gpio.led_pin == "GPIO18"
    assert settings.audio.period_ms == 40
    assert settings.behaviour.button_mode is ButtonMode.TOGGLE
    assert settings.behaviour.idle_timeout_s == 30
    assert settings.env_files == ()


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(ValueError, match="frozen"):
        settings.audio.volume = 10


def test_environment_wins_over_env_file_which_wins_over_system_file(
    env_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = env_file("APPLIANCE_VOLUME=10", "APPLIANCE_PERIOD_MS=10", "APPLIANCE_HOLD_S=5")
    given = env_file("APPLIANCE_VOLUME=20", "APPLIANCE_PERIOD_MS=40")
    monkeypatch.setenv("APPLIANCE_VOLUME", "30")
    settings = load_settings(given, system_env_file=system)
    assert settings.audio.volume == 30
    assert settings.audio.period_ms == 40
    assert settings.gpio.hold_s == 5
    assert settings.env_files == (system, given)


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("AZURE_VOICELIVE_ENDPOINT", "endpoint"),
        ("AZURE_VOICE_LIVE_ENDPOINT", "endpoint"),
        ("AZURE_COGNITIVE_SERVICES_ENDPOINT", "endpoint"),
    ],
)
def test_endpoint_aliases(variable: str, attribute: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "https://example.services.ai.azure.com/")
    assert load().service.endpoint == "https://example.services.ai.azure.com"


@pytest.mark.parametrize("variable", ["AZURE_VOICELIVE_MODEL", "VOICE_LIVE_MODEL"])
def test_model_aliases(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "gpt-4o-realtime-preview")
    assert load().service.model == "gpt-4o-realtime-preview"


@pytest.mark.parametrize(
    "variable",
    ["AZURE_VOICELIVE_API_KEY", "AZURE_VOICE_LIVE_API_KEY", "AZURE_COGNITIVE_SERVICES_KEY"],
)
def test_api_key_aliases(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "k3y-value-123")
    key = load().auth.api_key
    assert key is not None
    assert key.get_secret_value() == "k3y-value-123"
    assert "k3y-value-123" not in repr(load().auth)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8765",
        "http://localhost:1",
        "ws://[::1]:9",
        "https://x.azure.com",
        "wss://x.azure.com",
    ],
)
def test_accepted_endpoints(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_VOICELIVE_ENDPOINT", endpoint)
    assert load().service.endpoint == endpoint


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://example.com", "clear text"),
        ("http://10.0.0.2:80", "clear text"),
        ("ftp://example.com", "https://"),
        ("example.com", "https://"),
    ],
)
def test_refused_endpoints(endpoint: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_VOICELIVE_ENDPOINT", endpoint)
    with pytest.raises(ConfigError) as caught:
        load()
    (problem,) = caught.value.problems
    assert problem.variable == "AZURE_VOICELIVE_ENDPOINT"
    assert reason in problem.reason


@pytest.mark.parametrize(
    ("value", "pin"),
    [("17", "GPIO17"), ("gpio27", "GPIO27"), ("BOARD11", "BOARD11"), ("J8:11", "J8:11")],
)
def test_pins(value: str, pin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BUTTON_PIN", value)
    assert load().gpio.button_pin == pin


def test_led_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_LED_PIN", "none")
    assert load().gpio.led_pin is None


def test_audio_devices_by_index_or_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_INPUT_DEVICE", "3")
    monkeypatch.setenv("APPLIANCE_OUTPUT_DEVICE", "USB Audio")
    monkeypatch.setenv("APPLIANCE_DEVICE_RATE", "auto")
    audio = load().audio
    assert audio.input_device == 3
    assert audio.output_device == "USB Audio"
    assert audio.device_rate is None


def test_transcription_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_TRANSCRIPTION", "off")
    assert load().service.transcription_model is None


def test_every_bad_variable_is_named_with_its_value_and_source(env_file) -> None:
    path = env_file(
        "APPLIANCE_BUTTON_PIN=abc",
        "APPLIANCE_VOLUME=150",
        "APPLIANCE_BUTTON_MODE=hold",
        "APPLIANCE_HALF_DUPLEX=maybe",
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    problems = {p.variable: p for p in caught.value.problems}
    assert set(problems) == {
        "APPLIANCE_BUTTON_PIN",
        "APPLIANCE_VOLUME",
        "APPLIANCE_BUTTON_MODE",
        "APPLIANCE_HALF_DUPLEX",
    }
    assert problems["APPLIANCE_BUTTON_PIN"].value == "abc"
    assert problems["APPLIANCE_BUTTON_PIN"].source == str(path)
    assert "GPIO17" in problems["APPLIANCE_BUTTON_PIN"].reason
    assert "100" in problems["APPLIANCE_VOLUME"].reason
    assert "push_to_talk" in problems["APPLIANCE_BUTTON_MODE"].reason
    text = str(caught.value)
    assert "APPLIANCE_BUTTON_PIN='abc'" in text


def test_the_alias_actually_used_is_the_one_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_VOICE_LIVE_ENDPOINT", "http://example.org")
    with pytest.raises(ConfigError) as caught:
        load()
    assert caught.value.problems[0].variable == "AZURE_VOICE_LIVE_ENDPOINT"
    assert caught.value.problems[0].source == "environment"


def test_secrets_are_masked_in_errors(env_file) -> None:
    path = env_file(
        "APPLIANCE_AUTH=service_principal",
        "AZURE_CLIENT_SECRET=hunter2-very-secret",
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    text = str(caught.value)
    assert "AZURE_TENANT_ID" in text
    assert "AZURE_CLIENT_ID" in text
    assert "hunter2-very-secret" not in text


def test_api_key_mode_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_AUTH", "api_key")
    with pytest.raises(ConfigError, match="AZURE_VOICELIVE_API_KEY"):
        load()


def test_agent_mode_needs_name_and_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_VOICELIVE_AGENT_NAME", "helper")
    with pytest.raises(ConfigError, match="AZURE_VOICELIVE_AGENT_PROJECT"):
        load()


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--env-file"):
        load(tmp_path / "absent.env")


def test_secrets_list_for_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cret-value")
    monkeypatch.setenv("AZURE_VOICELIVE_API_KEY", "k3y-value")
    assert set(load().secrets()) == {"s3cret-value", "k3y-value"}


def test_world_readable_env_file_with_a_secret_is_warned_about(env_file) -> None:
    readable = env_file("AZURE_CLIENT_SECRET=abcdefgh", mode=0o644)
    private = env_file("AZURE_CLIENT_SECRET=abcdefgh", mode=0o640)
    harmless = env_file("APPLIANCE_VOLUME=50", mode=0o644)
    (warning,) = permission_warnings(load(readable))
    assert str(readable) in warning
    assert "AZURE_CLIENT_SECRET" in warning
    assert "abcdefgh" not in warning
    assert permission_warnings(load(private)) == []
    assert permission_warnings(load(harmless)) == []


def test_env_example_documents_every_variable_and_is_up_to_date() -> None:
    example = (ROOT / "config" / "appliance.env.example").read_text()
    assert example == render_env_example(), (
        "run: python -m appliance.config > config/appliance.env.example"
    )
    for name in variable_names():
        assert name in example


def test_env_example_loads_as_an_env_file(tmp_path: Path) -> None:
    uncommented = tmp_path / "all.env"
    lines = render_env_example().splitlines()
    uncommented.write_text(
        "\n".join(
            line[1:]
            for line in lines
            if line.startswith("#")
            and "=" in line
            and line[1:2].isupper()
            and " " not in line.split("=")[0]
        )
    )
    settings = load(uncommented)
    assert settings == load().model_copy(update={"env_files": (uncommented,)})
