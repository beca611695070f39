from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.identity import CredentialUnavailableError
from azure.identity.aio import (
    CertificateCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from appliance.config import AuthMode, AuthSettings
from appliance.errors import ConfigError
from appliance.state import ErrorKind
from appliance.voice.auth import (
    DEFAULT_SCOPE,
    VoiceCredential,
    choose_auth,
    classify_credential_error,
    managed_identity_source,
)

SECRET = "sp-secret-value-0123456789"
KEY = "api-key-value-0123456789abcdef"


def auth(**values: str) -> AuthSettings:
    return AuthSettings.model_validate(values)


def certificate(path: Path, password: bytes | None = None) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


SP = {"AZURE_TENANT_ID": "tenant-1", "AZURE_CLIENT_ID": "client-1"}


@pytest.mark.parametrize(
    ("values", "mode", "why"),
    [
        ({**SP, "AZURE_CLIENT_SECRET": SECRET}, AuthMode.SERVICE_PRINCIPAL, "AZURE_CLIENT_SECRET"),
        (
            {**SP, "AZURE_CLIENT_CERTIFICATE_PATH": "/etc/x.pem"},
            AuthMode.SERVICE_PRINCIPAL,
            "AZURE_CLIENT_CERTIFICATE_PATH",
        ),
        (
            {**SP, "AZURE_CLIENT_SECRET": SECRET, "AZURE_VOICELIVE_API_KEY": KEY},
            AuthMode.SERVICE_PRINCIPAL,
            "AZURE_CLIENT_SECRET",
        ),
        ({"AZURE_VOICELIVE_API_KEY": KEY}, AuthMode.API_KEY, "AZURE_VOICELIVE_API_KEY"),
        # A client id alone is a user-assigned managed identity, not half a service principal.
        ({"AZURE_CLIENT_ID": "mi-client"}, AuthMode.MANAGED_IDENTITY, "user-assigned"),
        ({}, AuthMode.MANAGED_IDENTITY, "system-assigned"),
    ],
)
def test_auto_picks_the_first_configured_mode_and_says_why(
    values: dict[str, str], mode: AuthMode, why: str
) -> None:
    choice = choose_auth(auth(APPLIANCE_AUTH="auto", **values), environ={})
    assert choice.mode is mode
    assert why in choice.reason
    assert SECRET not in choice.reason
    assert KEY not in choice.reason


def test_explicit_mode_wins_over_what_is_configured() -> None:
    choice = choose_auth(
        auth(APPLIANCE_AUTH="managed_identity", AZURE_VOICELIVE_API_KEY=KEY), environ={}
    )
    assert choice.mode is AuthMode.MANAGED_IDENTITY


@pytest.mark.parametrize(
    ("environ", "source"),
    [
        ({"IDENTITY_ENDPOINT": "http://x", "IMDS_ENDPOINT": "http://y"}, "Azure Arc"),
        ({"IDENTITY_ENDPOINT": "http://x", "IDENTITY_HEADER": "h"}, "App Service"),
        ({"MSI_ENDPOINT": "http://x"}, "MSI_ENDPOINT"),
        ({}, "IMDS"),
    ],
)
def test_managed_identity_source_is_named(environ: dict[str, str], source: str) -> None:
    assert source in managed_identity_source(environ)
    choice = choose_auth(auth(), environ=environ)
    assert source in choice.reason


async def test_api_key_mode_hands_the_sdk_the_key() -> None:
    async with VoiceCredential(auth(APPLIANCE_AUTH="api_key", AZURE_VOICELIVE_API_KEY=KEY)) as cred:
        sdk = await cred.for_connect(1.0)
        assert isinstance(sdk, AzureKeyCredential)
        assert sdk.key == KEY
        assert not cred.uses_token
        assert KEY not in cred.description


async def test_service_principal_with_a_secret() -> None:
    settings = auth(APPLIANCE_AUTH="service_principal", AZURE_CLIENT_SECRET=SECRET, **SP)
    async with VoiceCredential(settings) as cred:
        assert isinstance(cred._token_credential, ClientSecretCredential)
        assert cred.scope == DEFAULT_SCOPE
        assert "client-1" in cred.description
        assert SECRET not in cred.description


async def test_service_principal_with_a_certificate(tmp_path: Path) -> None:
    pem = certificate(tmp_path / "sp.pem", password=b"cert-password-1")
    settings = auth(
        APPLIANCE_AUTH="service_principal",
        AZURE_CLIENT_CERTIFICATE_PATH=str(pem),
        AZURE_CLIENT_CERTIFICATE_PASSWORD="cert-password-1",
        **SP,
    )
    async with VoiceCredential(settings) as cred:
        assert isinstance(cred._token_credential, CertificateCredential)
        assert "certificate" in cred.description


async def test_a_certificate_that_does_not_load_is_a_config_error(tmp_path: Path) -> None:
    pem = certificate(tmp_path / "sp.pem", password=b"right-password")
    settings = auth(
        APPLIANCE_AUTH="service_principal",
        AZURE_CLIENT_CERTIFICATE_PATH=str(pem),
        AZURE_CLIENT_CERTIFICATE_PASSWORD="wrong-password",
        **SP,
    )
    with pytest.raises(ConfigError) as caught:
        VoiceCredential(settings)
    assert caught.value.problems[0].variable == "AZURE_CLIENT_CERTIFICATE_PATH"
    assert "wrong-password" not in str(caught.value)


def test_service_principal_without_its_parts_names_the_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        VoiceCredential(auth(APPLIANCE_AUTH="service_principal"))
    assert [p.variable for p in caught.value.problems] == [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
    ]


@pytest.mark.parametrize("client_id", [None, "user-assigned-client"])
async def test_managed_identity(client_id: str | None) -> None:
    values = {"APPLIANCE_AUTH": "managed_identity"}
    if client_id:
        values["AZURE_CLIENT_ID"] = client_id
    async with VoiceCredential(auth(**values), environ={}) as cred:
        assert isinstance(cred._token_credential, ManagedIdentityCredential)
        assert ("user-assigned" if client_id else "system-assigned") in cred.description


async def test_token_scope_is_configurable() -> None:
    settings = auth(
        APPLIANCE_AUTH="managed_identity",
        APPLIANCE_TOKEN_SCOPE="https://cognitiveservices.azure.com/.default",
    )
    async with VoiceCredential(settings, environ={}) as cred:
        assert cred.scope == "https://cognitiveservices.azure.com/.default"


async def test_close_is_idempotent() -> None:
    cred = VoiceCredential(auth(APPLIANCE_AUTH="managed_identity"), environ={})
    await cred.close()
    await cred.close()


def response_error(cls: type[HttpResponseError], status: int) -> HttpResponseError:
    error = cls(message=f"status {status}")
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (CredentialUnavailableError("no managed identity endpoint found"), ErrorKind.AUTH),
        (response_error(ClientAuthenticationError, 401), ErrorKind.AUTH),
        (response_error(ClientAuthenticationError, 400), ErrorKind.AUTH),
        (response_error(ClientAuthenticationError, 500), ErrorKind.OFFLINE),
        (response_error(ClientAuthenticationError, 503), ErrorKind.OFFLINE),
        (response_error(HttpResponseError, 429), ErrorKind.RATE_LIMITED),
        (ClientAuthenticationError("AADSTS7000215: Invalid client secret"), ErrorKind.AUTH),
        (ServiceRequestError("cannot connect"), ErrorKind.OFFLINE),
        (TimeoutError(), ErrorKind.OFFLINE),
        (ConnectionRefusedError(), ErrorKind.OFFLINE),
        (ValueError("bad certificate"), ErrorKind.AUTH),
    ],
)
def test_credential_failures_are_misconfiguration_or_transient(
    error: BaseException, kind: ErrorKind
) -> None:
    assert classify_credential_error(error) is kind
