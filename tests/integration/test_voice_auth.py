"""The credential against a loopback managed-identity endpoint: real azure-identity HTTP."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from appliance.config import AuthSettings
from appliance.errors import ServiceError
from appliance.state import ErrorKind
from appliance.voice.auth import VoiceCredential
from tests.fixtures.identity import StartEntra, StartIdentity, self_signed

SP_SECRET = "sp-secret-0123456789abcdef"


def managed_identity(**values: str) -> AuthSettings:
    return AuthSettings.model_validate({"APPLIANCE_AUTH": "managed_identity", **values})


@pytest.mark.parametrize("style", ["app_service", "arc"])
async def test_managed_identity_gets_a_token_from_the_host_endpoint(
    identity_endpoint: StartIdentity, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    endpoint = await identity_endpoint(style)
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    async with VoiceCredential(managed_identity()) as credential:
        token = await credential.get_token(5.0)
    assert token.token == endpoint.token
    (request,) = endpoint.token_requests
    assert request.resource == "https://ai.azure.com"
    assert request.client_id is None
    if style == "arc":
        # The first request was challenged; the second carried the key from the key file.
        assert [r.authorized for r in endpoint.requests] == [False, True]


async def test_user_assigned_identity_asks_for_its_client_id(
    identity_endpoint: StartIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = await identity_endpoint("app_service")
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    async with VoiceCredential(managed_identity(AZURE_CLIENT_ID="mi-client-7")) as credential:
        await credential.get_token(5.0)
    assert endpoint.token_requests[0].client_id == "mi-client-7"


async def test_the_token_is_cached_across_connects(
    identity_endpoint: StartIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = await identity_endpoint("app_service")
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    async with VoiceCredential(managed_identity()) as credential:
        for _ in range(5):
            assert (await credential.for_connect(5.0)) is not None
    assert len(endpoint.token_requests) == 1


@pytest.mark.parametrize(("status", "kind"), [(400, ErrorKind.AUTH), (500, ErrorKind.OFFLINE)])
async def test_endpoint_errors_are_classified(
    identity_endpoint: StartIdentity,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    kind: ErrorKind,
) -> None:
    endpoint = await identity_endpoint("app_service")
    endpoint.fail_with = status
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    # No retries inside azure-core: the reconnect policy is ours.
    async with VoiceCredential(managed_identity(), retry_total=0) as credential:
        with pytest.raises(ServiceError) as caught:
            await credential.get_token(5.0)
    assert caught.value.kind is kind


async def test_an_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{port}/token")
    monkeypatch.setenv("IDENTITY_HEADER", "x")
    async with VoiceCredential(managed_identity(), retry_total=0) as credential:
        with pytest.raises(ServiceError) as caught:
            await credential.get_token(5.0)
    assert caught.value.kind is ErrorKind.OFFLINE


async def test_an_endpoint_that_does_not_answer_times_out_as_transient(
    identity_endpoint: StartIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = await identity_endpoint("app_service")
    endpoint.hang = asyncio.Event()
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    try:
        async with VoiceCredential(managed_identity(), retry_total=0) as credential:
            with pytest.raises(ServiceError, match="no token") as caught:
                await credential.get_token(0.2)
    finally:
        endpoint.hang.set()
    assert caught.value.kind is ErrorKind.OFFLINE


async def test_tokens_and_secrets_stay_out_of_the_logs(
    identity_endpoint: StartIdentity,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = await identity_endpoint("app_service")
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    async with VoiceCredential(managed_identity()) as credential:
        credential.log_choice()
        await credential.get_token(5.0)
    endpoint.fail_with = 400
    async with VoiceCredential(managed_identity(), retry_total=0) as credential:
        with pytest.raises(ServiceError) as caught:
            await credential.get_token(5.0)
        logging.getLogger("test").warning("failed: %s", caught.value)
    text = caplog.text + str(caught.value)
    assert "managed identity" in text
    assert "failed" in text
    assert endpoint.token not in text
    assert endpoint.header_secret not in text


# ---- service principal against a loopback HTTPS token endpoint -----------------------------


def service_principal(**values: str) -> AuthSettings:
    return AuthSettings.model_validate(
        {
            "APPLIANCE_AUTH": "service_principal",
            "AZURE_TENANT_ID": "tenant-1",
            "AZURE_CLIENT_ID": "client-1",
            **values,
        }
    )


async def test_service_principal_with_a_secret_gets_a_token(entra_endpoint: StartEntra) -> None:
    entra = await entra_endpoint("client-1", SP_SECRET)
    settings = service_principal(AZURE_CLIENT_SECRET=SP_SECRET)
    async with VoiceCredential(
        settings, authority=entra.authority, connection_verify=str(entra.ca_file)
    ) as credential:
        token = await credential.get_token(5.0)
        await credential.get_token(5.0)  # cached
    assert token.token == entra.token
    (request,) = entra.requests
    assert (request.tenant, request.client_id) == ("tenant-1", "client-1")
    assert request.scope == "https://ai.azure.com/.default"
    assert request.grant_type == "client_credentials"
    assert request.used_secret


async def test_service_principal_with_a_certificate_gets_a_token(
    entra_endpoint: StartEntra, tmp_path: Path
) -> None:
    key_and_cert, _, cert_pem = self_signed(tmp_path, "appliance-sp")
    entra = await entra_endpoint("client-1", SP_SECRET, certificate_pem=cert_pem)
    settings = service_principal(AZURE_CLIENT_CERTIFICATE_PATH=str(key_and_cert))
    async with VoiceCredential(
        settings, authority=entra.authority, connection_verify=str(entra.ca_file)
    ) as credential:
        token = await credential.get_token(5.0)
    assert token.token == entra.token
    (request,) = entra.requests
    assert request.used_certificate  # a signed assertion, verified by the endpoint
    assert not request.used_secret


async def test_a_certificate_the_tenant_does_not_know_is_refused(
    entra_endpoint: StartEntra, tmp_path: Path
) -> None:
    _, _, registered = self_signed(tmp_path, "registered")
    presented, _, _ = self_signed(tmp_path, "another")
    entra = await entra_endpoint("client-1", SP_SECRET, certificate_pem=registered)
    settings = service_principal(AZURE_CLIENT_CERTIFICATE_PATH=str(presented))
    async with VoiceCredential(
        settings, authority=entra.authority, connection_verify=str(entra.ca_file)
    ) as credential:
        with pytest.raises(ServiceError) as caught:
            await credential.get_token(5.0)
    assert caught.value.kind is ErrorKind.AUTH
    assert entra.requests[0].used_certificate


async def test_a_wrong_secret_is_misconfiguration(
    entra_endpoint: StartEntra, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    entra = await entra_endpoint("client-1", SP_SECRET)
    wrong = "wrong-secret-0123456789"
    settings = service_principal(AZURE_CLIENT_SECRET=wrong)
    async with VoiceCredential(
        settings, authority=entra.authority, connection_verify=str(entra.ca_file)
    ) as credential:
        with pytest.raises(ServiceError) as caught:
            await credential.get_token(5.0)
    assert caught.value.kind is ErrorKind.AUTH
    assert "AADSTS7000215" in str(caught.value)
    assert wrong not in str(caught.value)
    assert wrong not in caplog.text


async def test_unreachable_entra_is_transient(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = service_principal(AZURE_CLIENT_SECRET=SP_SECRET)
    async with VoiceCredential(
        settings, authority=f"https://127.0.0.1:{port}", retry_total=0
    ) as credential:
        with pytest.raises(ServiceError) as caught:
            await credential.get_token(5.0)
    assert caught.value.kind is ErrorKind.OFFLINE
