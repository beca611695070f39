"""The device's one credential for Voice Live, chosen by ``APPLIANCE_AUTH``.

One :class:`VoiceCredential` lives as long as the process: azure-identity caches the token
inside the credential, so a reconnect (or many) costs no new token request until the token
is close to expiry. The SDK asks for a token once per connect; :meth:`VoiceCredential.for_connect`
fetches it first, with a timeout, and classifies a failure:

- misconfiguration (:attr:`ErrorKind.AUTH`): a refused secret or certificate, an unknown
  tenant or client, no managed identity on this machine. Retrying will not help until the
  configuration changes, so the reconnect policy waits the longest step between attempts.
- transient (:attr:`ErrorKind.OFFLINE`): the identity endpoint or Entra ID could not be
  reached, answered 5xx, or did not answer in time.

Modes:

- ``service_principal``: ``AZURE_TENANT_ID`` + ``AZURE_CLIENT_ID`` + ``AZURE_CLIENT_SECRET``
  (or ``AZURE_CLIENT_CERTIFICATE_PATH`` [+ ``AZURE_CLIENT_CERTIFICATE_PASSWORD``]).
- ``managed_identity``: system-assigned, or user-assigned with ``AZURE_CLIENT_ID``. Where the
  token comes from is azure-identity's choice, from the host's own variables: Azure Arc and
  App Service style hosts set ``IDENTITY_ENDPOINT`` (with ``IMDS_ENDPOINT`` or
  ``IDENTITY_HEADER``), Cloud Shell sets ``MSI_ENDPOINT``, Azure VMs need nothing (IMDS).
- ``api_key``: ``AZURE_VOICELIVE_API_KEY`` (legacy).
- ``auto``: the first of service principal, API key, managed identity that is configured;
  the log says which and why.

Secrets and tokens never go into a log record or an exception message from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from appliance.config import AuthMode, AuthSettings
from appliance.errors import ConfigError, ConfigProblem, ServiceError
from appliance.state import ErrorKind

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "https://ai.azure.com/.default"  # the SDK's own default

# azure-identity logs every failed get_token at WARNING. The reconnect loop reports an outage
# once at WARNING and its repeats at DEBUG; this keeps the library from repeating it.
logging.getLogger("azure.identity").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class AuthChoice:
    """The mode in effect (never ``auto``) and, for the log, why it was chosen."""

    mode: AuthMode
    reason: str


def managed_identity_source(environ: Mapping[str, str]) -> str:
    """Where azure-identity will get a managed identity token on this host (for the log)."""
    if environ.get("IDENTITY_ENDPOINT"):
        if environ.get("IDENTITY_HEADER"):
            if environ.get("IDENTITY_SERVER_THUMBPRINT"):
                return "Service Fabric (IDENTITY_ENDPOINT)"
            return "App Service style endpoint (IDENTITY_ENDPOINT, IDENTITY_HEADER)"
        if environ.get("IMDS_ENDPOINT"):
            return "Azure Arc agent (IDENTITY_ENDPOINT, IMDS_ENDPOINT)"
    if environ.get("MSI_ENDPOINT"):
        return "MSI_ENDPOINT"
    return "the Azure instance metadata service (IMDS; Azure VMs only)"


def choose_auth(auth: AuthSettings, environ: Mapping[str, str] | None = None) -> AuthChoice:
    """Resolve ``auto`` to a mode, saying why; explicit modes pass through."""
    environ = os.environ if environ is None else environ
    if auth.mode is not AuthMode.AUTO:
        return AuthChoice(auth.mode, f"APPLIANCE_AUTH={auth.mode.value}")
    has_sp_secret = auth.client_secret is not None or auth.client_certificate_path is not None
    if auth.tenant_id and auth.client_id and has_sp_secret:
        what = "AZURE_CLIENT_SECRET" if auth.client_secret else "AZURE_CLIENT_CERTIFICATE_PATH"
        return AuthChoice(
            AuthMode.SERVICE_PRINCIPAL,
            f"APPLIANCE_AUTH=auto: AZURE_TENANT_ID, AZURE_CLIENT_ID and {what} are set",
        )
    if auth.api_key is not None:
        return AuthChoice(
            AuthMode.API_KEY, "APPLIANCE_AUTH=auto: AZURE_VOICELIVE_API_KEY is set (legacy key)"
        )
    user = " (user-assigned, AZURE_CLIENT_ID)" if auth.client_id else " (system-assigned)"
    return AuthChoice(
        AuthMode.MANAGED_IDENTITY,
        "APPLIANCE_AUTH=auto: no service principal and no API key configured; "
        f"using managed identity{user} from {managed_identity_source(environ)}",
    )


def classify_credential_error(error: BaseException) -> ErrorKind:
    """Misconfiguration (AUTH: waits for a config change) or transient (OFFLINE)."""
    from azure.identity import CredentialUnavailableError

    if isinstance(error, TimeoutError | ServiceRequestError | ServiceResponseError | OSError):
        return ErrorKind.OFFLINE
    if isinstance(error, CredentialUnavailableError):
        # No identity on this host, or none assigned: nothing changes until the setup does.
        return ErrorKind.AUTH
    if isinstance(error, HttpResponseError):  # ClientAuthenticationError is one
        status = error.status_code
        if status is None and error.response is not None:
            status = error.response.status_code
        if status == 429:
            return ErrorKind.RATE_LIMITED
        if status is not None and (status >= 500 or status == 408):
            return ErrorKind.OFFLINE
        if status is None and isinstance(error.__cause__, ServiceRequestError | OSError):
            return ErrorKind.OFFLINE
        return ErrorKind.AUTH
    if isinstance(error, ValueError):  # an unreadable certificate, a malformed setting
        return ErrorKind.AUTH
    return ErrorKind.SERVICE


class _IssuedToken:
    """A token already obtained, handed to the SDK so that it does not ask again."""

    def __init__(self, token: AccessToken) -> None:
        self._token = token

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return self._token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> _IssuedToken:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None


class VoiceCredential:
    """The process's credential for Voice Live. Close it once, at shutdown.

    ``identity_options`` go to the azure-identity credential (for instance ``authority`` or
    ``connection_verify``); the settings cover everything a device needs.
    """

    def __init__(
        self,
        auth: AuthSettings,
        *,
        environ: Mapping[str, str] | None = None,
        **identity_options: Any,
    ) -> None:
        self.choice = choose_auth(auth, environ)
        self.mode = self.choice.mode
        self.scope = auth.token_scope or DEFAULT_SCOPE
        self._secrets = [
            s.get_secret_value()
            for s in (auth.api_key, auth.client_secret, auth.client_certificate_password)
            if s is not None
        ]
        self._key: AzureKeyCredential | None = None
        self._token_credential: AsyncTokenCredential | None = None
        self._closed = False
        if self.mode is AuthMode.API_KEY:
            if auth.api_key is None:
                raise ConfigError(
                    [ConfigProblem("AZURE_VOICELIVE_API_KEY", None, "required for api_key")]
                )
            self._key = AzureKeyCredential(auth.api_key.get_secret_value())
            self.description = "API key"
        elif self.mode is AuthMode.SERVICE_PRINCIPAL:
            self._token_credential, self.description = _service_principal(auth, identity_options)
        else:
            from azure.identity.aio import ManagedIdentityCredential

            self._token_credential = ManagedIdentityCredential(
                client_id=auth.client_id, **identity_options
            )
            kind = "user-assigned" if auth.client_id else "system-assigned"
            self.description = (
                f"managed identity ({kind}) from {managed_identity_source(environ or os.environ)}"
            )

    @property
    def uses_token(self) -> bool:
        return self._token_credential is not None

    def log_choice(self) -> None:
        log.info("Voice Live credential: %s (%s)", self.description, self.choice.reason)

    async def get_token(self, time_limit: float) -> AccessToken:
        """A token for :attr:`scope` (from the credential's cache when still fresh).

        Raises :class:`ServiceError` whose ``kind`` says misconfiguration or transient.
        """
        if self._token_credential is None:
            raise ServiceError("this credential is an API key; it has no token", ErrorKind.AUTH)
        if self._closed:
            raise ServiceError("the credential is closed", ErrorKind.SERVICE)
        try:
            async with asyncio.timeout(time_limit):
                return await self._token_credential.get_token(self.scope)
        except TimeoutError as exc:
            raise ServiceError(
                f"no token from {self.description} within {time_limit:g} s", ErrorKind.OFFLINE
            ) from exc
        except Exception as exc:
            kind = classify_credential_error(exc)
            raise ServiceError(
                f"{self.description} failed to get a token ({kind.value}): {self._summary(exc)}",
                kind,
            ) from exc

    async def for_connect(self, time_limit: float) -> AzureKeyCredential | AsyncTokenCredential:
        """What to hand the SDK's ``connect()``: the key, or a freshly obtained token."""
        if self._key is not None:
            return self._key
        return _IssuedToken(await self.get_token(time_limit))

    def _summary(self, error: BaseException) -> str:
        """The first line of the error's text, without any configured secret in it."""
        text = getattr(error, "message", None) or str(error) or type(error).__name__
        text = str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "********")
        return text[:300]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._token_credential is not None:
            await self._token_credential.close()

    async def __aenter__(self) -> VoiceCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _service_principal(
    auth: AuthSettings, identity_options: dict[str, Any]
) -> tuple[AsyncTokenCredential, str]:
    missing = [
        ConfigProblem(name, None, "required when APPLIANCE_AUTH=service_principal")
        for name, value in (
            ("AZURE_TENANT_ID", auth.tenant_id),
            ("AZURE_CLIENT_ID", auth.client_id),
        )
        if not value
    ]
    if auth.client_secret is None and auth.client_certificate_path is None:
        missing.append(
            ConfigProblem(
                "AZURE_CLIENT_SECRET",
                None,
                "service_principal needs AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH",
            )
        )
    if missing:
        raise ConfigError(missing)
    assert auth.tenant_id is not None
    assert auth.client_id is not None
    if auth.client_secret is not None:
        from azure.identity.aio import ClientSecretCredential

        credential: AsyncTokenCredential = ClientSecretCredential(
            auth.tenant_id,
            auth.client_id,
            auth.client_secret.get_secret_value(),
            **identity_options,
        )
        return credential, f"service principal {auth.client_id} (client secret)"
    from azure.identity.aio import CertificateCredential

    assert auth.client_certificate_path is not None
    password = auth.client_certificate_password
    try:
        credential = CertificateCredential(
            auth.tenant_id,
            auth.client_id,
            str(auth.client_certificate_path),
            password=password.get_secret_value() if password is not None else None,
            **identity_options,
        )
    except (ValueError, OSError) as exc:
        # The certificate does not load: wrong file, wrong password, unsupported format.
        raise ConfigError(
            [
                ConfigProblem(
                    "AZURE_CLIENT_CERTIFICATE_PATH",
                    str(auth.client_certificate_path),
                    f"the certificate cannot be loaded ({type(exc).__name__}); "
                    "expected PEM or PKCS12 with its private key, and the right "
                    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
                )
            ]
        ) from exc
    return credential, f"service principal {auth.client_id} (certificate)"
