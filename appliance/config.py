"""Settings of the device: typed, frozen, documented field by field, built once at start.

Sources, highest priority first: the process environment, the ``--env-file`` given on the
command line, ``/etc/appliance/appliance.env`` (when readable). Each group below reads its
own variables; :func:`load_settings` builds all groups and turns every validation failure
into one :class:`~appliance.errors.ConfigError` that names the variable, shows its value
(masked for secrets) and says what is allowed.

``config/appliance.env.example`` is rendered from these classes (:func:`render_env_example`)
and a test keeps the two equal.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from appliance.errors import ConfigError, ConfigProblem
from appliance.state import ButtonMode

log = logging.getLogger(__name__)

SYSTEM_ENV_FILE = Path("/etc/appliance/appliance.env")
SECRET_MASK = "********"


class TurnDetection(StrEnum):
    SERVER_VAD = "server_vad"
    SEMANTIC_VAD = "azure_semantic_vad"
    SEMANTIC_VAD_EN = "azure_semantic_vad_en"
    SEMANTIC_VAD_MULTILINGUAL = "azure_semantic_vad_multilingual"


class AuthMode(StrEnum):
    AUTO = "auto"
    SERVICE_PRINCIPAL = "service_principal"
    MANAGED_IDENTITY = "managed_identity"
    API_KEY = "api_key"


class PinFactory(StrEnum):
    AUTO = "auto"
    LGPIO = "lgpio"
    RPIGPIO = "rpigpio"
    PIGPIO = "pigpio"
    NATIVE = "native"
    MOCK = "mock"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_PIN_NAME = re.compile(r"^(GPIO|BCM)\d{1,2}$|^(BOARD|J8:)\d{1,2}$|^WPI\d{1,2}$")
_OFF_WORDS = {"", "none", "off", "no", "false", "disabled"}


def _pin(value: Any) -> str:
    """A GPIO as gpiozero names it: ``17`` becomes ``GPIO17``; BOARD11 and J8:11 pass."""
    text = str(value).strip().upper()
    if text.isdigit():
        number = int(text)
        if number > 53:
            raise ValueError("a Broadcom GPIO number is 0-53")
        return f"GPIO{number}"
    if not _PIN_NAME.match(text):
        raise ValueError(
            "expected a GPIO number such as 17, or a pin name such as GPIO17 or BOARD11"
        )
    return text


def _optional_pin(value: Any) -> str | None:
    if value is None or str(value).strip().lower() in _OFF_WORDS:
        return None
    return _pin(value)


def _optional_text(value: Any) -> Any:
    """Empty or 'off' means unset, for variables whose absence is meaningful."""
    if isinstance(value, str) and value.strip().lower() in _OFF_WORDS:
        return None
    return value


def _device(value: Any) -> Any:
    """An audio device: its index, or part of its name; empty means the system default."""
    value = _optional_text(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _rate(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _OFF_WORDS | {"auto"}:
        return None
    return value


def _sample_rate(value: Any) -> Any:
    if str(value).strip() not in ("16000", "24000"):
        raise ValueError("expected 24000 or 16000")
    return int(value)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(value: Any) -> Any:
    value = _optional_text(value)
    if value is None:
        return None
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("https", "wss", "http", "ws") or not parts.hostname:
        raise ValueError(
            "expected the https:// URL of your Azure resource, "
            "e.g. https://NAME.services.ai.azure.com"
        )
    if parts.scheme in ("http", "ws") and not _is_loopback(parts.hostname):
        raise ValueError(
            f"{parts.scheme}:// would send credentials in clear text; use https:// "
            "(plain http is only allowed for a loopback host such as 127.0.0.1)"
        )
    return text.rstrip("/")


Pin = Annotated[str, BeforeValidator(_pin)]
OptionalPin = Annotated[str | None, BeforeValidator(_optional_pin)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]
Device = Annotated[int | str | None, BeforeValidator(_device)]
Endpoint = Annotated[str | None, BeforeValidator(_endpoint)]
DeviceRate = Annotated[Annotated[int, Field(ge=8000, le=192000)] | None, BeforeValidator(_rate)]


def env(*names: str, secret: bool = False) -> dict[str, Any]:
    """Field keywords binding a field to its environment variable (first name) and aliases."""
    alias: str | AliasChoices = names[0] if len(names) == 1 else AliasChoices(*names)
    return {"validation_alias": alias, "json_schema_extra": {"env": list(names), "secret": secret}}


class _Group(BaseSettings):
    """One group of settings; every field names its variable through :func:`env`."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        env_ignore_empty=True,
        env_file_encoding="utf-8",
        case_sensitive=True,
    )
    title: ClassVar[str]


class ServiceSettings(_Group):
    """Azure AI Voice Live: where to connect, and how the assistant talks and listens."""

    title = "Service (Azure AI Voice Live)"

    endpoint: Endpoint = Field(
        None,
        description="Your Azure AI Foundry / AI Services resource endpoint (https://...). "
        "Empty in --simulate starts the built-in emulator.",
        **env(
            "AZURE_VOICELIVE_ENDPOINT",
            "AZURE_VOICE_LIVE_ENDPOINT",
            "AZURE_COGNITIVE_SERVICES_ENDPOINT",
        ),
    )
    model: str = Field(
        "gpt-realtime",
        min_length=1,
        description="Voice Live model (deployment) name.",
        **env("AZURE_VOICELIVE_MODEL", "VOICE_LIVE_MODEL"),
    )
    api_version: str = Field(
        "2026-07-15",
        pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$",
        description="Voice Live API version.",
        **env("AZURE_VOICELIVE_API_VERSION"),
    )
    agent_name: OptionalText = Field(
        None,
        description="Talk to this Azure AI Foundry agent instead of a bare model "
        "(needs AZURE_VOICELIVE_AGENT_PROJECT).",
        **env("AZURE_VOICELIVE_AGENT_NAME"),
    )
    agent_project: OptionalText = Field(
        None,
        description="The Azure AI Foundry project that holds the agent.",
        **env("AZURE_VOICELIVE_AGENT_PROJECT"),
    )
    voice: str = Field(
        "en-US-Ava:DragonHDLatestNeural",
        min_length=1,
        description="An Azure voice (e.g. en-US-Ava:DragonHDLatestNeural) or an OpenAI voice "
        "(alloy, ash, ballad, coral, echo, sage, shimmer, verse).",
        **env("APPLIANCE_VOICE"),
    )
    voice_temperature: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Azure HD voices only: how expressive the voice is (empty: the voice's own).",
        **env("APPLIANCE_VOICE_TEMPERATURE"),
    )
    instructions: str = Field(
        "You are a friendly voice assistant on a small device with a button. "
        "Answer briefly, in plain spoken language, without lists or formatting.",
        description="System instructions for the assistant.",
        **env("APPLIANCE_INSTRUCTIONS"),
    )
    turn_detection: TurnDetection = Field(
        TurnDetection.SERVER_VAD,
        description="How the service decides a turn ended in toggle mode: server_vad, "
        "azure_semantic_vad, azure_semantic_vad_en, azure_semantic_vad_multilingual. "
        "Push-to-talk always uses manual turns.",
        **env("APPLIANCE_TURN_DETECTION"),
    )
    vad_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Speech detection threshold (0-1); higher ignores more background noise.",
        **env("APPLIANCE_VAD_THRESHOLD"),
    )
    vad_prefix_padding_ms: int = Field(
        300,
        ge=0,
        le=5000,
        description="Audio kept from before speech was detected, in ms.",
        **env("APPLIANCE_VAD_PREFIX_PADDING_MS"),
    )
    vad_silence_ms: int = Field(
        500,
        ge=100,
        le=10000,
        description="Silence that ends a turn, in ms.",
        **env("APPLIANCE_VAD_SILENCE_MS"),
    )
    noise_suppression: bool = Field(
        True,
        description="Azure deep noise suppression on the microphone audio.",
        **env("APPLIANCE_NOISE_SUPPRESSION"),
    )
    echo_cancellation: bool = Field(
        True,
        description="Server echo cancellation, so the device does not hear itself.",
        **env("APPLIANCE_ECHO_CANCELLATION"),
    )
    transcription_model: OptionalText = Field(
        "azure-speech",
        description="Transcribe what the user says (shown in --simulate, kept to restore "
        "context after a reconnect); 'off' disables.",
        **env("APPLIANCE_TRANSCRIPTION"),
    )
    temperature: float = Field(
        0.8,
        ge=0.6,
        le=1.2,
        description="Model sampling temperature (0.6-1.2).",
        **env("APPLIANCE_TEMPERATURE"),
    )
    input_sample_rate: Annotated[Literal[16000, 24000], BeforeValidator(_sample_rate)] = Field(
        24000,
        description="Sample rate of the audio sent to the service: 24000 or 16000.",
        **env("APPLIANCE_INPUT_SAMPLE_RATE"),
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Give up a connection attempt after this many seconds.",
        **env("APPLIANCE_CONNECT_TIMEOUT_S"),
    )
    connection_max_s: float = Field(
        3300.0,
        gt=0,
        description="Renew the connection between turns once it is this old (the service "
        "closes connections after 60 minutes).",
        **env("APPLIANCE_CONNECTION_MAX_S"),
    )
    history_turns: int = Field(
        8,
        ge=0,
        le=100,
        description="Turns of conversation re-sent after a reconnect.",
        **env("APPLIANCE_HISTORY_TURNS"),
    )
    tools: bool = Field(
        True,
        description="Let the model call the device tools (time, volume, status, end).",
        **env("APPLIANCE_TOOLS"),
    )


class AuthSettings(_Group):
    """How the device proves who it is to Azure."""

    title = "Authentication"

    mode: AuthMode = Field(
        AuthMode.AUTO,
        description="auto (service principal, then API key, then managed identity: the first "
        "that is configured), service_principal, managed_identity or api_key.",
        **env("APPLIANCE_AUTH"),
    )
    api_key: SecretStr | None = Field(
        None,
        description="Resource key (legacy; prefer Entra ID).",
        **env(
            "AZURE_VOICELIVE_API_KEY",
            "AZURE_VOICE_LIVE_API_KEY",
            "AZURE_COGNITIVE_SERVICES_KEY",
            secret=True,
        ),
    )
    tenant_id: OptionalText = Field(
        None, description="Entra tenant of the service principal.", **env("AZURE_TENANT_ID")
    )
    client_id: OptionalText = Field(
        None,
        description="Service principal application ID, or the client ID of a user-assigned "
        "managed identity.",
        **env("AZURE_CLIENT_ID"),
    )
    client_secret: SecretStr | None = Field(
        None, description="Service principal secret.", **env("AZURE_CLIENT_SECRET", secret=True)
    )
    client_certificate_path: Path | None = Field(
        None,
        description="Service principal certificate (PEM or PKCS12), instead of a secret.",
        **env("AZURE_CLIENT_CERTIFICATE_PATH"),
    )
    client_certificate_password: SecretStr | None = Field(
        None,
        description="Password of the certificate, if it has one.",
        **env("AZURE_CLIENT_CERTIFICATE_PASSWORD", secret=True),
    )
    token_scope: str = Field(
        "https://ai.azure.com/.default",
        min_length=1,
        description="Token scope for Entra ID authentication.",
        **env("APPLIANCE_TOKEN_SCOPE"),
    )


class AudioSettings(_Group):
    """Microphone and speaker."""

    title = "Audio"

    input_device: Device = Field(
        None,
        description="Microphone: device index or part of its name (see `appliance "
        "devices`); empty: the system default.",
        **env("APPLIANCE_INPUT_DEVICE"),
    )
    output_device: Device = Field(
        None,
        description="Speaker: device index or part of its name; empty: the system default.",
        **env("APPLIANCE_OUTPUT_DEVICE"),
    )
    device_rate: DeviceRate = Field(
        None,
        description="Open the devices at this rate (Hz); auto: 24000 when supported, "
        "else the device default.",
        **env("APPLIANCE_DEVICE_RATE"),
    )
    period_ms: int = Field(
        40,
        ge=5,
        le=100,
        description="The speaker's audio period in ms: longer ones cost less CPU. An "
        "interruption, and an answer after silence, reach the device at once, not at its "
        "next period.",
        **env("APPLIANCE_PERIOD_MS"),
    )
    chunk_ms: int = Field(
        40,
        ge=0,
        le=200,
        description="Capture the microphone in periods of, and send it to the service in "
        "chunks of, about this many ms (at least one period): larger chunks cost less CPU, "
        "smaller ones let the service notice the end of speech a little sooner.",
        **env("APPLIANCE_CHUNK_MS"),
    )
    quiet_chunk_ms: int = Field(
        200,
        ge=0,
        le=1000,
        description="While the microphone hears no one (below -45 dBFS), send its audio in "
        "chunks of this many ms instead: the device wakes up less often. Sound switches back "
        "to chunk_ms at once, until the service ends the turn (at most vad_silence_ms and "
        "1.5 s more); 0: always chunk_ms.",
        **env("APPLIANCE_QUIET_CHUNK_MS"),
    )
    volume: int = Field(
        80, ge=0, le=100, description="Speaker volume in percent.", **env("APPLIANCE_VOLUME")
    )
    mic_gain_db: float = Field(
        0.0,
        ge=-20.0,
        le=30.0,
        description="Microphone gain in dB.",
        **env("APPLIANCE_MIC_GAIN_DB"),
    )
    half_duplex: bool = Field(
        False,
        description="Mute the microphone while the device speaks (for rooms where echo "
        "cancellation is not enough); talking over the answer then needs the button.",
        **env("APPLIANCE_HALF_DUPLEX"),
    )


class GpioSettings(_Group):
    """Button and LED wiring."""

    title = "GPIO"

    button_pin: Pin = Field(
        "GPIO17",
        description="Button pin (GPIO number or name such as GPIO17 / BOARD11).",
        **env("APPLIANCE_BUTTON_PIN"),
    )
    button_pull_up: bool = Field(
        True,
        description="true: the button connects the pin to GND (internal pull-up); "
        "false: to 3.3V (pull-down).",
        **env("APPLIANCE_BUTTON_PULL_UP"),
    )
    led_pin: OptionalPin = Field(
        "GPIO18", description="LED pin; 'none' for no LED.", **env("APPLIANCE_LED_PIN")
    )
    led_active_high: bool = Field(
        True,
        description="true: the pin drives the LED's anode; false: its cathode.",
        **env("APPLIANCE_LED_ACTIVE_HIGH"),
    )
    bounce_ms: int = Field(
        30,
        ge=0,
        le=1000,
        description="Ignore button chatter shorter than this (ms).",
        **env("APPLIANCE_BOUNCE_MS"),
    )
    hold_s: float = Field(
        2.0,
        ge=0.3,
        le=30.0,
        description="A press this long (s) ends the conversation.",
        **env("APPLIANCE_HOLD_S"),
    )
    pin_factory: PinFactory = Field(
        PinFactory.AUTO,
        description="gpiozero pin backend: auto, lgpio, rpigpio, pigpio, native, mock.",
        **env("APPLIANCE_PIN_FACTORY"),
    )


class BehaviourSettings(_Group):
    """What the button does and how a conversation ends."""

    title = "Behaviour"

    button_mode: ButtonMode = Field(
        ButtonMode.TOGGLE,
        description="toggle: press to talk, press again to stop; push_to_talk: hold to talk.",
        **env("APPLIANCE_BUTTON_MODE"),
    )
    idle_timeout_s: float = Field(
        30.0,
        ge=5.0,
        le=3600.0,
        description="End the conversation after this many seconds without speech.",
        **env("APPLIANCE_IDLE_TIMEOUT_S"),
    )
    earcons: bool = Field(
        True,
        description="Short sounds when listening starts, ends, or fails.",
        **env("APPLIANCE_EARCONS"),
    )
    led_heartbeat: bool = Field(
        False,
        description="A dim heartbeat on the LED while idle, to show the device is alive.",
        **env("APPLIANCE_LED_HEARTBEAT"),
    )


class LoggingSettings(_Group):
    title = "Logging"

    level: LogLevel = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR.", **env("APPLIANCE_LOG_LEVEL")
    )


GROUPS: dict[str, type[_Group]] = {
    "service": ServiceSettings,
    "auth": AuthSettings,
    "audio": AudioSettings,
    "gpio": GpioSettings,
    "behaviour": BehaviourSettings,
    "logging": LoggingSettings,
}


class Settings(BaseModel):
    """All settings of the device, built once by :func:`load_settings` and passed down."""

    model_config = ConfigDict(frozen=True)

    service: ServiceSettings
    auth: AuthSettings
    audio: AudioSettings
    gpio: GpioSettings
    behaviour: BehaviourSettings
    logging: LoggingSettings
    # The env files that were read, lowest priority first (for reload and `appliance check`).
    env_files: tuple[Path, ...] = ()

    def secrets(self) -> list[str]:
        """Every secret value, so logging can mask them wherever they would appear."""
        values = [self.auth.api_key, self.auth.client_secret, self.auth.client_certificate_password]
        return [value.get_secret_value() for value in values if value is not None]


def _variables(group: type[_Group]) -> Iterable[tuple[str, FieldInfo, list[str], bool]]:
    for name, info in group.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict), f"{group.__name__}.{name} lacks env(...)"
        names = extra["env"]
        assert isinstance(names, list)
        yield name, info, [str(n) for n in names], bool(extra["secret"])


def variable_names() -> list[str]:
    """Every environment variable the appliance reads (primary names and aliases)."""
    return [n for g in GROUPS.values() for _, _, names, _ in _variables(g) for n in names]


def env_files_for(env_file: Path | None, system_env_file: Path = SYSTEM_ENV_FILE) -> list[Path]:
    files: list[Path] = []
    if os.access(system_env_file, os.R_OK):
        files.append(system_env_file)
    if env_file is not None:
        files.append(env_file)
    return files


def load_settings(
    env_file: Path | None = None, *, system_env_file: Path = SYSTEM_ENV_FILE
) -> Settings:
    """Build the settings from the environment and env files; raise ConfigError if unusable."""
    if env_file is not None and not env_file.is_file():
        raise ConfigError([ConfigProblem("--env-file", str(env_file), "no such file")])
    files = env_files_for(env_file, system_env_file)
    sources = _Sources(files, os.environ)

    built: dict[str, _Group] = {}
    problems: list[ConfigProblem] = []
    for key, group in GROUPS.items():
        try:
            built[key] = group(_env_file=tuple(files) or None)
        except PydanticValidationError as exc:
            problems.extend(_problems(group, exc, sources))
    if problems:
        raise ConfigError(problems)
    settings = Settings.model_validate({**built, "env_files": tuple(files)})
    problems = _cross_checks(settings, sources)
    if problems:
        raise ConfigError(problems)
    return settings


class _Sources:
    """Where each variable's value came from, to name the source in error messages."""

    def __init__(self, files: list[Path], environment: Mapping[str, str]) -> None:
        self.values: dict[str, tuple[str, str]] = {}
        for path in files:
            for name, value in dotenv_values(path).items():
                if value is not None:
                    self.values[name] = (value, str(path))
        for name, value in environment.items():
            self.values[name] = (value, "environment")

    def find(self, names: list[str]) -> tuple[str, str | None, str | None]:
        """The name actually set (else the primary name), its value and its source."""
        for name in names:
            if name in self.values and self.values[name][0] != "":
                value, source = self.values[name]
                return name, value, source
        return names[0], None, None

    def secret_values(self) -> list[str]:
        secret_names = {
            n
            for g in GROUPS.values()
            for _, _, names, secret in _variables(g)
            if secret
            for n in names
        }
        return [v for n, (v, _) in self.values.items() if n in secret_names and v]


def _problems(
    group: type[_Group], exc: PydanticValidationError, sources: _Sources
) -> list[ConfigProblem]:
    by_alias = {n: (f, names, secret) for f, _, names, secret in _variables(group) for n in names}
    by_field = {f: (f, names, secret) for f, _, names, secret in _variables(group)}
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = str(error["loc"][0]) if error["loc"] else ""
        _, names, secret = by_alias.get(loc) or by_field.get(loc) or (loc, [loc], False)
        variable, value, source = sources.find(names)
        reason = _reason(error["msg"], error["type"], group, names[0])
        if secret and value is not None:
            value = SECRET_MASK
        problems.append(ConfigProblem(variable, _clip(value), reason, source))
    return problems


def _reason(message: str, error_type: str, group: type[_Group], variable: str) -> str:
    if error_type == "value_error":  # our own validators already say what is allowed
        return message.removeprefix("Value error, ")
    allowed = _allowed(group, variable)
    return f"{message} ({allowed})" if allowed else message


def _allowed(group: type[_Group], variable: str) -> str:
    for _, info, names, _ in _variables(group):
        if names[0] == variable:
            return (info.description or "").rstrip(".")
    return ""


def _clip(value: str | None, limit: int = 80) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + "..."


def _cross_checks(settings: Settings, sources: _Sources) -> list[ConfigProblem]:
    """Rules across variables, named by the variable the user has to change."""
    problems: list[ConfigProblem] = []
    service, auth = settings.service, settings.auth

    def problem(names: list[str], reason: str, secret: bool = False) -> None:
        variable, value, source = sources.find(names)
        shown = SECRET_MASK if secret and value is not None else _clip(value)
        problems.append(ConfigProblem(variable, shown, reason, source))

    if (service.agent_name is None) != (service.agent_project is None):
        missing = (
            "AZURE_VOICELIVE_AGENT_PROJECT"
            if service.agent_project is None
            else ("AZURE_VOICELIVE_AGENT_NAME")
        )
        problem(
            [missing],
            "agent mode needs both AZURE_VOICELIVE_AGENT_NAME and AZURE_VOICELIVE_AGENT_PROJECT",
        )

    if auth.mode is AuthMode.SERVICE_PRINCIPAL:
        if auth.tenant_id is None:
            problem(["AZURE_TENANT_ID"], "required when APPLIANCE_AUTH=service_principal")
        if auth.client_id is None:
            problem(["AZURE_CLIENT_ID"], "required when APPLIANCE_AUTH=service_principal")
        if auth.client_secret is None and auth.client_certificate_path is None:
            problem(
                ["AZURE_CLIENT_SECRET"],
                "APPLIANCE_AUTH=service_principal needs "
                "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH",
                secret=True,
            )
    if auth.mode is AuthMode.API_KEY and auth.api_key is None:
        problem(["AZURE_VOICELIVE_API_KEY"], "required when APPLIANCE_AUTH=api_key", secret=True)
    cert = auth.client_certificate_path
    if cert is not None and not os.access(cert, os.R_OK):
        problem(["AZURE_CLIENT_CERTIFICATE_PATH"], "the certificate file cannot be read")
    return problems


def permission_warnings(settings: Settings) -> list[str]:
    """Env files holding a secret that other users can read."""
    secret_names = {n for _, _, names, s in _variables(AuthSettings) if s for n in names}
    warnings = []
    for path in settings.env_files:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if not mode & stat.S_IROTH:
            continue
        held = sorted(n for n, v in dotenv_values(path).items() if n in secret_names and v)
        if held:
            warnings.append(
                f"{path} holds {', '.join(held)} and is readable by every user; "
                f"run: chmod 0640 {path}"
            )
    return warnings


def secret_values_in_sources(
    env_file: Path | None = None, *, system_env_file: Path = SYSTEM_ENV_FILE
) -> list[str]:
    """Raw secret values from the environment and env files, even when the config is invalid.

    The CLI registers them with the log filter before anything can print them.
    """
    sources = _Sources(
        [f for f in env_files_for(env_file, system_env_file) if f.is_file()], dict(os.environ)
    )
    return sources.secret_values()


def render_env_example() -> str:
    """The text of config/appliance.env.example: every variable, commented, with its default."""
    out = [
        "# appliance configuration: copy to /etc/appliance/appliance.env (mode 0640,",
        "# owner root:appliance), edit, then `systemctl reload appliance`.",
        "# Process environment variables override this file. Empty values mean the default.",
        "# Generated from appliance/config.py (python -m appliance.config); keep them in sync.",
        "",
    ]
    for group in GROUPS.values():
        out += [f"# ---- {group.title} " + "-" * max(0, 70 - len(group.title)), ""]
        for _, info, names, secret in _variables(group):
            description = info.description or ""
            out += [f"# {line}" for line in _wrap(description)]
            if len(names) > 1:
                out.append(f"# Also read as: {', '.join(names[1:])}.")
            if secret:
                out.append("# Secret: never logged; keep this file mode 0640.")
            out.append(f"#{names[0]}={_default_text(info)}")
            out.append("")
    out += [
        "# ---- journald fields (not settings) " + "-" * 34,
        "# Under systemd every record carries APPLIANCE_STATE, APPLIANCE_EVENT and",
        "# APPLIANCE_SESSION; measured latencies come as APPLIANCE_RESPONSE_LATENCY_MS (end",
        "# of speech to the answer at the speaker), APPLIANCE_DELTA_TO_SPEAKER_MS (an answer's",
        "# first audio from the socket to the speaker), APPLIANCE_BARGE_IN_MS (interruption",
        "# to silence), APPLIANCE_PRESS_TO_AUDIO_MS and APPLIANCE_OUTAGE_MS, e.g.:",
        "#   journalctl -u appliance APPLIANCE_STATE=error",
        "#   journalctl -u appliance -o json | jq -r .APPLIANCE_RESPONSE_LATENCY_MS",
        "",
    ]
    return "\n".join(out)


def _default_text(info: FieldInfo) -> str:
    default = info.default
    if default is None:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, StrEnum):
        return default.value
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    text = str(default)
    return f'"{text}"' if " " in text else text


def _wrap(text: str, width: int = 86) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        lines.append(current)
    return lines


if __name__ == "__main__":
    print(render_env_example(), end="")
