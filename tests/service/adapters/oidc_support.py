"""Providers and drivers for the OIDC contract test.

Two real providers on loopback, both spoken to over HTTP:

* ``MockProviderProcess``: the ``oidc-provider-mock`` package (authlib, RS256) run as a subprocess —
  an implementation we did not write, for the honest flows. Its login form takes the ``sub``.
* ``ScriptedProvider``: a small provider on a stdlib ``http.server`` thread that we control, for
  what the mock cannot do: ``auth_time``, forged ID tokens (other audience, other issuer, foreign
  key, ``alg: none``, HS256), PKCE enforcement, dropping connections. Each test gets its own
  tenant (issuer ``http://127.0.0.1:PORT/<tenant>``).

A driver hides which one a test talks to, so the contract test reads the same for ``HttpOidcClient``
and ``FakeOidcClient``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

import httpx
from joserfc.jwk import ECKey

from service.adapters.oidc import (
    AuthorizationRequest,
    FakeOidcClient,
    HttpOidcClient,
    OidcClient,
    Signing,
    pkce_challenge,
    sign_id_token,
)
from service.providers import OidcProvider
from tests.service.conftest import free_port

CLIENT_ID = "fairunlock"
CLIENT_SECRET = "test-client-secret"
# Never contacted: the drivers read the redirect's Location instead of following it.
REDIRECT_URI = "http://127.0.0.1:9/oidc/callback"
PROCESS_START_TIMEOUT = 20.0


def new_es256_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(8), "use": "sig"})


def provider_config(
    name: str, issuer: str, *, client_id: str = CLIENT_ID, require_auth_time: bool = True
) -> OidcProvider:
    return OidcProvider(
        name=name,
        issuer=issuer,
        client_id=client_id,
        client_secret=CLIENT_SECRET,
        redirect_uri=REDIRECT_URI,
        require_auth_time=require_auth_time,
    )


def callback_params(location: str) -> tuple[str, str]:
    """(code, state) from a redirect to the client's redirect URI."""
    if not location.startswith(REDIRECT_URI + "?"):
        raise AssertionError(f"provider redirected elsewhere: {location[:80]!r}")
    query = parse_qs(urlsplit(location).query)
    if "code" not in query:
        raise AssertionError(f"provider refused the login: {sorted(query)}")
    return query["code"][0], query["state"][0]


# --- oidc-provider-mock as a process --------------------------------------------------------------


class MockProviderProcess:
    """``python -m oidc_provider_mock --port P`` (uvicorn, WSGI). Its issuer is the host URL it
    is reached at, so it is always addressed as 127.0.0.1."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self._log_path.open("wb")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "oidc_provider_mock", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + PROCESS_START_TIMEOUT
        with httpx.Client(timeout=1.0) as http:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"oidc-provider-mock exited: {self._log_path.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = http.get(f"{self.issuer}/.well-known/openid-configuration")
                    if answer.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("oidc-provider-mock did not answer discovery in time")
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._process = None


async def log_in_at_mock(http: httpx.AsyncClient, url: str, subject: str) -> tuple[str, str]:
    """The person's browser at oidc-provider-mock: GET the authorization URL (a form asking for
    ``sub``), POST the form back to the same URL, read the redirect to the client."""
    form_page = await http.get(url)
    if form_page.status_code != 200 or 'name="sub"' not in form_page.text:
        raise AssertionError(f"no login form ({form_page.status_code}): {form_page.text[:200]}")
    answer = await http.post(url, data={"sub": subject})
    if answer.status_code not in (302, 303):
        raise AssertionError(f"login not redirected ({answer.status_code}): {answer.text[:200]}")
    return callback_params(answer.headers["location"])


# --- the scripted provider ------------------------------------------------------------------------


@dataclass(slots=True)
class _IssuedCode:
    nonce: str
    code_challenge: str
    redirect_uri: str


@dataclass(slots=True)
class Tenant:
    """One issuer on the scripted provider and how it behaves."""

    subject: str
    auth_time: datetime | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    signing: Signing = "provider"
    # What the discovery document calls the issuer, when it should lie.
    discovery_issuer: str | None = None
    down: bool = False
    token_requests: int = 0
    jwks_requests: int = 0
    codes: dict[str, _IssuedCode] = field(default_factory=dict)
    # Every access and ID token the token endpoint handed out: secrets a test can look for.
    issued_tokens: list[str] = field(default_factory=list)


class ScriptedProvider:
    """A minimal OIDC provider: discovery, authorization (logs ``tenant.subject`` in at once),
    token endpoint (client_secret_basic, single-use codes, PKCE S256), JWKS. One ES256 key, so the
    real client sees RS256 (the mock), ES256 (here); the fake signs Ed25519."""

    def __init__(self) -> None:
        self.key = new_es256_key()
        self.tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add_tenant(self, tenant: Tenant, *, client_id: str = CLIENT_ID) -> OidcProvider:
        name = f"t{secrets.token_hex(4)}"
        with self._lock:
            self.tenants[name] = tenant
        return provider_config(name, f"{self.base}/{name}", client_id=client_id)

    def tenant_of(self, provider: OidcProvider) -> Tenant:
        return self.tenants[provider.issuer.rsplit("/", 1)[1]]

    def mint(self, tenant: Tenant, issuer: str, issued: _IssuedCode) -> str:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": tenant.subject,
            "aud": CLIENT_ID,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(hours=1)).timestamp()),
            "nonce": issued.nonce,
        }
        claims["auth_time"] = int((tenant.auth_time or now).timestamp())
        for name, value in tenant.claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return sign_id_token(
            claims, provider_key=self.key, signing=tenant.signing, client_secret=CLIENT_SECRET
        )


def _handler_for(provider: ScriptedProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line carries codes and states

        def _send_json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str, str, Tenant] | None:
            parts = urlsplit(self.path).path.split("/", 2)
            tenant = provider.tenants.get(parts[1]) if len(parts) == 3 else None
            if tenant is None:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found"})
                return None
            if tenant.down:
                # Drop the connection unanswered, as a dead upstream behind a proxy would.
                self.close_connection = True
                return None
            return parts[1], "/" + parts[2], tenant

        def do_GET(self) -> None:
            route = self._route()
            if route is None:
                return
            name, path, tenant = route
            issuer = f"{provider.base}/{name}"
            if path == "/.well-known/openid-configuration":
                self._send_json(
                    HTTPStatus.OK,
                    {
                        "issuer": tenant.discovery_issuer or issuer,
                        "authorization_endpoint": f"{issuer}/authorize",
                        "token_endpoint": f"{issuer}/token",
                        "jwks_uri": f"{issuer}/jwks",
                        "response_types_supported": ["code"],
                        "id_token_signing_alg_values_supported": ["ES256"],
                        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                        "code_challenge_methods_supported": ["S256"],
                    },
                )
            elif path == "/jwks":
                tenant.jwks_requests += 1
                self._send_json(HTTPStatus.OK, {"keys": [provider.key.as_dict(private=False)]})
            elif path == "/authorize":
                self._authorize(tenant)
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found"})

        def _authorize(self, tenant: Tenant) -> None:
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if (
                query.get("response_type") != "code"
                or query.get("client_id") != CLIENT_ID
                or query.get("redirect_uri") != REDIRECT_URI
                or "openid" not in query.get("scope", "").split()
                or query.get("code_challenge_method") != "S256"
                or not query.get("code_challenge")
                or not query.get("nonce")
                or not query.get("state")
            ):
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(32)
            tenant.codes[code] = _IssuedCode(
                nonce=query["nonce"],
                code_challenge=query["code_challenge"],
                redirect_uri=query["redirect_uri"],
            )
            self.send_response(HTTPStatus.FOUND)
            location = f"{REDIRECT_URI}?{urlencode({'code': code, 'state': query['state']})}"
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            parts = urlsplit(self.path).path.split("/", 2)
            if len(parts) == 3 and parts[2] == "token" and parts[1] in provider.tenants:
                # Counted on arrival, even when the tenant is down: "no call was made" means
                # nothing arrived.
                provider.tenants[parts[1]].token_requests += 1
            route = self._route()
            if route is None:
                return
            name, path, tenant = route
            if path != "/token":
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found"})
                return
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "invalid_client"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = {
                unquote_plus(k): unquote_plus(v)
                for k, _, v in (
                    pair.partition("=") for pair in self.rfile.read(length).decode().split("&")
                )
            }
            issued = tenant.codes.pop(form.get("code", ""), None)  # single use
            if (
                form.get("grant_type") != "authorization_code"
                or issued is None
                or form.get("redirect_uri") != issued.redirect_uri
                or pkce_challenge(form.get("code_verifier", "")) != issued.code_challenge
            ):
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": "invalid_grant"})
                return
            id_token = provider.mint(tenant, f"{provider.base}/{name}", issued)
            access_token = secrets.token_urlsafe(16)
            tenant.issued_tokens += [access_token, id_token]
            self._send_json(
                HTTPStatus.OK,
                {
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "id_token": id_token,
                },
            )

    return Handler


# --- drivers --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the provider does when the person logs in. ``controlled`` asks for a provider the test
    can take down and count calls at (and that enforces PKCE)."""

    subject: str = "person-42"
    auth_time: datetime | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    signing: Signing = "provider"
    controlled: bool = False

    @property
    def plain(self) -> bool:
        return (
            self.auth_time is None
            and not self.claims
            and self.signing == "provider"
            and not self.controlled
        )


class OidcDriver(Protocol):
    @property
    def client(self) -> OidcClient: ...

    def provider(self, scenario: Scenario) -> OidcProvider: ...

    async def log_in(
        self, provider: OidcProvider, request: AuthorizationRequest, scenario: Scenario
    ) -> tuple[str, str]: ...

    def take_down(self, provider: OidcProvider) -> None: ...

    def token_requests(self, provider: OidcProvider) -> int: ...

    def unreachable_provider(self) -> OidcProvider: ...


class RealDriver:
    """``HttpOidcClient`` against oidc-provider-mock (plain scenarios) or the scripted provider."""

    name = "http"

    def __init__(self, mock: MockProviderProcess, scripted: ScriptedProvider) -> None:
        self._mock = mock
        self._scripted = scripted
        self.client: HttpOidcClient = HttpOidcClient()
        # The person's browser: its own client, never the adapter's.
        # Plain http on loopback only, so no trust store to load.
        self.browser = httpx.AsyncClient(timeout=5.0, follow_redirects=False, verify=False)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.browser.aclose()

    def provider(self, scenario: Scenario) -> OidcProvider:
        if scenario.plain:
            # oidc-provider-mock puts no auth_time in its ID tokens, max_age or not: configured
            # as such a provider must be (require_auth_time false).
            return provider_config("mock", self._mock.issuer, require_auth_time=False)
        return self._scripted.add_tenant(
            Tenant(
                subject=scenario.subject,
                auth_time=scenario.auth_time,
                claims=scenario.claims,
                signing=scenario.signing,
            )
        )

    async def log_in(
        self, provider: OidcProvider, request: AuthorizationRequest, scenario: Scenario
    ) -> tuple[str, str]:
        if provider.issuer == self._mock.issuer:
            return await log_in_at_mock(self.browser, request.url, scenario.subject)
        answer = await self.browser.get(request.url)
        if answer.status_code != HTTPStatus.FOUND:
            raise AssertionError(f"scripted provider refused the authorization request: {answer}")
        return callback_params(answer.headers["location"])

    def take_down(self, provider: OidcProvider) -> None:
        self._scripted.tenant_of(provider).down = True

    def token_requests(self, provider: OidcProvider) -> int:
        return self._scripted.tenant_of(provider).token_requests

    def unreachable_provider(self) -> OidcProvider:
        # A port just released by the OS: nothing listens there, connections are refused.
        return provider_config("gone", f"http://127.0.0.1:{free_port()}")


class FakeDriver:
    """``FakeOidcClient``: the provider is the fake itself."""

    name = "fake"

    def __init__(self) -> None:
        self.client: FakeOidcClient = FakeOidcClient()

    async def aclose(self) -> None:
        await self.client.aclose()

    def provider(self, scenario: Scenario) -> OidcProvider:
        return provider_config("fake", f"https://idp-{secrets.token_hex(4)}.example")

    async def log_in(
        self, provider: OidcProvider, request: AuthorizationRequest, scenario: Scenario
    ) -> tuple[str, str]:
        del provider
        return self.client.authorize(
            request.url,
            scenario.subject,
            auth_time=scenario.auth_time,
            claims=scenario.claims,
            signing=scenario.signing,
        )

    def take_down(self, provider: OidcProvider) -> None:
        self.client.take_down(provider.issuer)

    def token_requests(self, provider: OidcProvider) -> int:
        del provider
        return self.client.token_requests

    def unreachable_provider(self) -> OidcProvider:
        provider = provider_config("gone", f"https://gone-{secrets.token_hex(4)}.example")
        self.client.take_down(provider.issuer)
        return provider


@contextlib.contextmanager
def running_providers(log_dir: Path) -> Iterator[tuple[MockProviderProcess, ScriptedProvider]]:
    mock = MockProviderProcess(log_dir / "oidc-provider-mock.log")
    scripted = ScriptedProvider()
    mock.start()
    try:
        scripted.start()
        try:
            yield mock, scripted
        finally:
            scripted.stop()
    finally:
        mock.stop()
