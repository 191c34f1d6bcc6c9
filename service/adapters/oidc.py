"""OpenID Connect client for linked real-name identities (the ``linked_identity`` method).

Authorization code flow with PKCE (S256), ``state`` and ``nonce`` (issue 5, DESIGN.md "The unlock
flow" step 2/3). ``start`` builds the authorization URL the challenge returns; ``finish`` takes the
callback's ``code`` and ``state``, exchanges the code at the provider's token endpoint and
validates the ID token. It returns ``sub`` exactly as the provider sent it: comparing it with the
subject bound at enrolment is the caller's job, and is never done by e-mail or name.

Two implementations of ``OidcClient``: ``HttpOidcClient`` (httpx, discovery from the issuer) and
``FakeOidcClient`` (an in-process provider for unit tests of the flows). Both run the same checks
through ``check_state`` and ``verify_id_token``, so they refuse the same tokens with the same codes.

``state``, ``nonce``, ``code``, the verifier and tokens are secrets: they never appear in a log line
or an error message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, get_args
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import httpx
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey

from service.providers import OidcProvider

if TYPE_CHECKING:
    from service.settings import Settings

_log = logging.getLogger(__name__)
T = TypeVar("T")

OidcErrorCode = Literal[
    "state_mismatch",
    "nonce_mismatch",
    "token_expired",
    "wrong_issuer",
    "wrong_audience",
    "bad_signature",
    "auth_too_old",
    "auth_time_missing",
    "token_invalid",
    "exchange_failed",
    "provider_unavailable",
]
OIDC_ERROR_CODES: frozenset[str] = frozenset(get_args(OidcErrorCode))

# Asymmetric algorithms only: "none" and HS* (keyed with the client secret, which the provider and
# every holder of the secret share) can never prove the provider issued the token. "Ed25519" is the
# RFC 9864 name of what older providers call "EdDSA".
ID_TOKEN_ALGORITHMS: frozenset[str] = frozenset({"RS256", "ES256", "EdDSA", "Ed25519"})

DEFAULT_MAX_AUTH_AGE = timedelta(seconds=300)
DEFAULT_CLOCK_SKEW = timedelta(seconds=30)
DEFAULT_METADATA_TTL = timedelta(hours=1)
DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
STATE_BYTES = 32  # 256 bits, above the 128-bit floor for state and nonce
VERIFIER_BYTES = 48  # 64 base64url characters, inside RFC 7636's 43..128
# Codes are opaque but short in practice; a longer one is not worth sending to the provider.
MAX_CODE_LENGTH = 2048
MAX_SUBJECT_LENGTH = 255  # OIDC Core 2: sub is at most 255 ASCII characters


class OidcError(Exception):
    """A refused linked-identity proof. ``code`` is stable and safe to show; the message is for
    logs and never contains state, nonce, code or token."""

    def __init__(self, code: OidcErrorCode, detail: str = "") -> None:
        self.code: OidcErrorCode = code
        super().__init__(f"{code}: {detail}" if detail else code)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """What a challenge stores (state, nonce and verifier hashed or encrypted by the flow)."""

    url: str
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    issuer: str
    subject: str
    auth_time: datetime | None
    claims: Mapping[str, Any]


class OidcClient(Protocol):
    async def start(self, provider: OidcProvider) -> AuthorizationRequest: ...

    async def finish(
        self,
        provider: OidcProvider,
        *,
        code: str,
        state: str,
        expected_state: str,
        nonce: str,
        code_verifier: str,
        now: datetime,
    ) -> VerifiedIdentity: ...

    async def aclose(self) -> None: ...


# --- shared checks: both implementations call exactly these -------------------------------------


def pkce_challenge(code_verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(verifier))) without padding."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_authorization_request(
    provider: OidcProvider, authorization_endpoint: str, *, max_auth_age: timedelta
) -> AuthorizationRequest:
    state = secrets.token_urlsafe(STATE_BYTES)
    nonce = secrets.token_urlsafe(STATE_BYTES)
    code_verifier = secrets.token_urlsafe(VERIFIER_BYTES)
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": provider.redirect_uri,
        "scope": "openid",
        "state": state,
        "nonce": nonce,
        "code_challenge": pkce_challenge(code_verifier),
        "code_challenge_method": "S256",
        # Asks the provider to re-authenticate the person if their session is older (OIDC Core
        # 3.1.2.1); verify_id_token checks auth_time whatever the provider did.
        "max_age": str(int(max_auth_age.total_seconds())),
    }
    separator = "&" if urlsplit(authorization_endpoint).query else "?"
    return AuthorizationRequest(
        url=f"{authorization_endpoint}{separator}{urlencode(params)}",
        state=state,
        nonce=nonce,
        code_verifier=code_verifier,
    )


def check_state(state: str, expected_state: str) -> None:
    """Constant-time state comparison; called before any network call so a forged callback costs
    the provider nothing and learns nothing from timing."""
    if not state or not expected_state:
        raise OidcError("state_mismatch", "empty state")
    if not hmac.compare_digest(state.encode("utf-8"), expected_state.encode("utf-8")):
        raise OidcError("state_mismatch", "callback state differs from the challenge's")


def read_jose_header(id_token: str) -> dict[str, Any]:
    """The unverified protected header, to choose the key; refuses algorithms we never accept."""
    parts = id_token.split(".")
    if len(parts) != 3:
        raise OidcError("token_invalid", "ID token is not a compact JWS")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):
        raise OidcError("token_invalid", "ID token header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise OidcError("token_invalid", "ID token header is not an object")
    alg = header.get("alg")
    if alg not in ID_TOKEN_ALGORITHMS:
        raise OidcError("bad_signature", f"ID token algorithm {str(alg)[:16]!r} is not accepted")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise OidcError("token_invalid", "ID token kid is not a string")
    return header


def key_set_has_kid(keys: KeySet, kid: str | None) -> bool:
    return kid is None or any(key.kid == kid for key in keys)


class _IdTokenRegistry(jws.JWSRegistry):
    # joserfc warns on every "EdDSA" use (RFC 9864 deprecates the name); providers still sign with
    # it and the allow-list is ours, so resolve algorithms without the per-token warning.
    def get_alg(self, name: str) -> Any:
        if name not in ID_TOKEN_ALGORITHMS or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm of {name!r} is not allowed")
        return self.algorithms[name]


_ID_TOKEN_REGISTRY = _IdTokenRegistry(strict_check_header=False)


@dataclass(frozen=True, slots=True)
class IdTokenExpectations:
    issuer: str
    client_id: str
    nonce: str = field(repr=False)
    now: datetime
    max_auth_age: timedelta = DEFAULT_MAX_AUTH_AGE
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW
    require_auth_time: bool = True


def _numeric_date(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims.get(name)
    # bool is an int subclass; a JSON true is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OidcError("token_invalid", f"ID token {name} is missing or not a NumericDate")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise OidcError("token_invalid", f"ID token {name} is out of range") from None


def verify_id_token(id_token: str, keys: KeySet, expect: IdTokenExpectations) -> VerifiedIdentity:
    """Signature (asymmetric, against ``keys``), then the claims of OIDC Core 3.1.3.7, in that
    order, each with its own reason code."""
    if expect.now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    read_jose_header(id_token)
    try:
        token = jwt.decode(id_token, keys, registry=_ID_TOKEN_REGISTRY)
    except (BadSignatureError, UnsupportedAlgorithmError):
        raise OidcError("bad_signature", "ID token signature does not verify") from None
    except JoseError as exc:
        # Unknown kid, key type not matching alg, unparseable parts: not a token the provider's
        # keys vouch for.
        raise OidcError("bad_signature", f"ID token not verifiable ({exc.error})") from None
    except ValueError:
        raise OidcError("token_invalid", "ID token is malformed") from None
    claims = token.claims

    if not isinstance(claims.get("iss"), str) or not hmac.compare_digest(
        claims["iss"].encode(), expect.issuer.encode()
    ):
        raise OidcError("wrong_issuer", "ID token iss is not the provider's issuer")

    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if (
        not isinstance(audiences, list)
        or not all(isinstance(a, str) for a in audiences)
        or expect.client_id not in audiences
    ):
        raise OidcError("wrong_audience", "ID token is not for this client")
    azp = claims.get("azp")
    # OIDC Core 3.1.3.7 (4, 5): with several audiences the token must say it was issued to us.
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != expect.client_id):
        raise OidcError("wrong_audience", "ID token azp is not this client")

    expires = _numeric_date(claims, "exp")
    issued = _numeric_date(claims, "iat")
    if expires <= expect.now - expect.clock_skew:
        raise OidcError("token_expired", "ID token exp has passed")
    if issued > expect.now + expect.clock_skew:
        raise OidcError("token_invalid", "ID token iat is in the future")

    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(
        token_nonce.encode(), expect.nonce.encode()
    ):
        raise OidcError("nonce_mismatch", "ID token nonce is not the challenge's")

    if "auth_time" not in claims and expect.require_auth_time:
        # Asked with max_age, a provider must say when the person logged in (OIDC Core
        # 3.1.2.1); without it a days-old session would pass for a fresh login.
        raise OidcError("auth_time_missing", "ID token has no auth_time although max_age was sent")
    auth_time = _numeric_date(claims, "auth_time") if "auth_time" in claims else None
    if auth_time is not None:
        if auth_time > expect.now + expect.clock_skew:
            raise OidcError("token_invalid", "ID token auth_time is in the future")
        if expect.now - auth_time > expect.max_auth_age + expect.clock_skew:
            raise OidcError("auth_too_old", "the person authenticated too long ago")

    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise OidcError("token_invalid", "ID token sub is missing or malformed")
    return VerifiedIdentity(
        issuer=claims["iss"],
        subject=subject,
        auth_time=auth_time,
        claims=MappingProxyType(dict(claims)),
    )


# --- the real client -----------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(metadata: Mapping[str, Any], name: str) -> str:
    value = metadata.get(name)
    parts = urlsplit(value) if isinstance(value, str) else None
    # Plain http only to loopback (development and tests): elsewhere codes and tokens would
    # travel in clear.
    if (
        parts is None
        or not parts.hostname
        or not (
            parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))
        )
    ):
        raise OidcError("provider_unavailable", f"discovery document has no usable {name}")
    assert isinstance(value, str)
    return value


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # httpx's default trust store, loaded once per process: loading it costs ~0.2 s per client.
    return httpx.create_ssl_context()


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]


@dataclass(slots=True)
class _Cached(Generic[T]):
    value: T
    expires_at: float  # time.monotonic()


class HttpOidcClient:
    """``OidcClient`` over HTTP. Discovery documents and JWKS are cached per issuer / jwks_uri for
    ``metadata_ttl``; a token signed with a kid not in the cached JWKS refetches it once (key
    rotation)."""

    def __init__(
        self,
        *,
        max_auth_age: timedelta = DEFAULT_MAX_AUTH_AGE,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        metadata_ttl: timedelta = DEFAULT_METADATA_TTL,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.max_auth_age = max_auth_age
        self.clock_skew = clock_skew
        self._ttl = metadata_ttl.total_seconds()
        self._own_http = http is None
        # No redirects: a token endpoint that redirects would take the code and secret elsewhere.
        self._http = http or httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, verify=_tls_context()
        )
        self._metadata: dict[str, _Cached[ProviderMetadata]] = {}
        self._keys: dict[str, _Cached[KeySet]] = {}

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def start(self, provider: OidcProvider) -> AuthorizationRequest:
        metadata = await self._discover(provider)
        return new_authorization_request(
            provider, metadata.authorization_endpoint, max_auth_age=self.max_auth_age
        )

    async def finish(
        self,
        provider: OidcProvider,
        *,
        code: str,
        state: str,
        expected_state: str,
        nonce: str,
        code_verifier: str,
        now: datetime,
    ) -> VerifiedIdentity:
        check_state(state, expected_state)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if not code or len(code) > MAX_CODE_LENGTH:
            raise OidcError("exchange_failed", "empty or oversized code")
        metadata = await self._discover(provider)
        id_token = await self._exchange(provider, metadata, code=code, code_verifier=code_verifier)
        try:
            kid = read_jose_header(id_token).get("kid")
            keys = await self._key_set(metadata.jwks_uri, refresh=False)
            if not key_set_has_kid(keys, kid):
                keys = await self._key_set(metadata.jwks_uri, refresh=True)
            return verify_id_token(
                id_token,
                keys,
                IdTokenExpectations(
                    issuer=metadata.issuer,
                    client_id=provider.client_id,
                    nonce=nonce,
                    now=now,
                    max_auth_age=self.max_auth_age,
                    clock_skew=self.clock_skew,
                    require_auth_time=provider.require_auth_time,
                ),
            )
        except OidcError as exc:
            _log.info("oidc id token not accepted provider=%s reason=%s", provider.name, exc.code)
            raise

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            _log.warning("oidc %s unreachable: %s", what, type(exc).__name__)
            raise OidcError("provider_unavailable", f"{what} unreachable") from None
        if response.status_code != 200:
            _log.warning("oidc %s answered %d", what, response.status_code)
            raise OidcError("provider_unavailable", f"{what} answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise OidcError("provider_unavailable", f"{what} is not JSON") from None

    async def _discover(self, provider: OidcProvider) -> ProviderMetadata:
        cached = self._metadata.get(provider.issuer)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached.value
        url = f"{provider.issuer}/.well-known/openid-configuration"
        doc = await self._get_json(url, "discovery document")
        if not isinstance(doc, dict):
            raise OidcError("provider_unavailable", "discovery document is not an object")
        issuer = doc.get("issuer")
        # OIDC Discovery 4.3: the document must name the issuer we asked (providers.py strips a
        # trailing slash from the configured one, some providers keep it); tokens are then checked
        # against the document's exact spelling.
        if not isinstance(issuer, str) or issuer.rstrip("/") != provider.issuer:
            raise OidcError("wrong_issuer", "discovery document names another issuer")
        methods = doc.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        metadata = ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=_endpoint(doc, "authorization_endpoint"),
            token_endpoint=_endpoint(doc, "token_endpoint"),
            jwks_uri=_endpoint(doc, "jwks_uri"),
            token_auth_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list)
            else (),
        )
        self._metadata[provider.issuer] = _Cached(metadata, time.monotonic() + self._ttl)
        return metadata

    async def _key_set(self, jwks_uri: str, *, refresh: bool) -> KeySet:
        cached = self._keys.get(jwks_uri)
        if not refresh and cached is not None and cached.expires_at > time.monotonic():
            return cached.value
        doc = await self._get_json(jwks_uri, "JWKS")
        try:
            keys = KeySet.import_key_set(doc)
        except (JoseError, ValueError, TypeError, KeyError):
            raise OidcError("provider_unavailable", "JWKS has no usable keys") from None
        self._keys[jwks_uri] = _Cached(keys, time.monotonic() + self._ttl)
        return keys

    async def _exchange(
        self, provider: OidcProvider, metadata: ProviderMetadata, *, code: str, code_verifier: str
    ) -> str:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": provider.redirect_uri,
            "code_verifier": code_verifier,
        }
        headers = {"Accept": "application/json"}
        if "client_secret_basic" in metadata.token_auth_methods:
            # RFC 6749 2.3.1: id and secret are form-urlencoded before the Basic encoding.
            pair = f"{quote_plus(provider.client_id)}:{quote_plus(provider.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif "client_secret_post" in metadata.token_auth_methods:
            form |= {"client_id": provider.client_id, "client_secret": provider.client_secret}
        else:
            raise OidcError("exchange_failed", "provider supports no client_secret auth method")
        try:
            # Never retried: a code is single-use, a retry after a lost answer only fails.
            response = await self._http.post(metadata.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            _log.warning("oidc token endpoint unreachable: %s", type(exc).__name__)
            raise OidcError("provider_unavailable", "token endpoint unreachable") from None
        if response.status_code >= 500:
            _log.warning("oidc token endpoint answered %d", response.status_code)
            raise OidcError("provider_unavailable", f"token endpoint {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            # The OAuth error code (e.g. invalid_grant) names no secret; the description might.
            error = body.get("error") if isinstance(body, dict) else None
            _log.info(
                "oidc code exchange refused provider=%s status=%d error=%.40s",
                provider.name,
                response.status_code,
                error if isinstance(error, str) else "",
            )
            raise OidcError("exchange_failed", f"token endpoint answered {response.status_code}")
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("exchange_failed", "token response carries no id_token")
        return id_token


def build_oidc_client(
    settings: Settings, *, max_auth_age: timedelta = DEFAULT_MAX_AUTH_AGE
) -> OidcClient:
    """The real client. ``settings`` has no OIDC timing knobs yet; the providers themselves are
    passed per call (``settings.oidc_providers``)."""
    del settings  # kept in the signature so wiring does not change when knobs are added
    return HttpOidcClient(max_auth_age=max_auth_age)


# --- the fake ------------------------------------------------------------------------------------

Signing = Literal["provider", "foreign_key", "unknown_kid", "none", "hs256_client_secret"]


def sign_id_token(
    claims: Mapping[str, Any],
    *,
    provider_key: OKPKey | ECKey,
    signing: Signing = "provider",
    client_secret: str = "",
) -> str:
    """Sign like an honest provider (``"provider"``: Ed25519 or ES256 by key type) or like the
    attacks the checks refuse: another key under the provider's kid, an unknown kid, ``alg: none``,
    HS256 keyed by the client secret. Used by the fake and by test providers."""
    payload = dict(claims)
    kid = provider_key.kid
    alg = "ES256" if isinstance(provider_key, ECKey) else "Ed25519"
    if signing == "provider":
        return jwt.encode({"alg": alg, "kid": kid}, payload, provider_key, [alg])
    if signing in ("foreign_key", "unknown_kid"):
        other: OKPKey | ECKey = (
            ECKey.generate_key("P-256") if alg == "ES256" else OKPKey.generate_key("Ed25519")
        )
        other_kid = kid if signing == "foreign_key" else "not-" + str(kid)
        return jwt.encode({"alg": alg, "kid": other_kid}, payload, other, [alg])
    if signing == "hs256_client_secret":
        secret = OctKey.import_key(client_secret.encode())
        return jwt.encode({"alg": "HS256", "kid": kid}, payload, secret, ["HS256"])

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    # alg none: an unsigned token with an empty signature part (RFC 7519 6.1).
    header = b64(json.dumps({"alg": "none"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


@dataclass(slots=True)
class _FakeStart:
    provider: OidcProvider
    nonce: str = field(repr=False)
    code_challenge: str


@dataclass(slots=True)
class _FakeGrant:
    start: _FakeStart
    subject: str
    auth_time: datetime | None
    claims: Mapping[str, Any]
    signing: Signing


def _now_utc() -> datetime:
    return datetime.now(UTC)


class FakeOidcClient:
    """``OidcClient`` with the provider in process: its own Ed25519 key, single-use codes bound to
    client, redirect URI and PKCE challenge. ``authorize`` plays the person logging in; ``finish``
    mints the ID token the provider would return and validates it with ``verify_id_token``.

    ``token_requests`` counts simulated token-endpoint calls (a wrong state must not make one);
    ``take_down(issuer)`` makes that provider unreachable."""

    def __init__(
        self,
        *,
        max_auth_age: timedelta = DEFAULT_MAX_AUTH_AGE,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        token_lifetime: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = _now_utc,
    ) -> None:
        self.max_auth_age = max_auth_age
        self.clock_skew = clock_skew
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.key = OKPKey.generate_key(
            "Ed25519", parameters={"kid": secrets.token_hex(8), "use": "sig"}
        )
        self.token_requests = 0
        self._public_keys = KeySet([OKPKey.import_key(self.key.as_dict(private=False))])
        self._started: dict[str, _FakeStart] = {}  # by state
        self._grants: dict[str, _FakeGrant] = {}  # by code
        self._down: set[str] = set()

    def take_down(self, issuer: str) -> None:
        self._down.add(issuer)

    def _reachable(self, provider: OidcProvider) -> None:
        if provider.issuer in self._down:
            raise OidcError("provider_unavailable", "fake provider is down")

    async def aclose(self) -> None:
        self._started.clear()
        self._grants.clear()

    async def start(self, provider: OidcProvider) -> AuthorizationRequest:
        self._reachable(provider)
        request = new_authorization_request(
            provider, f"{provider.issuer}/authorize", max_auth_age=self.max_auth_age
        )
        self._started[request.state] = _FakeStart(
            provider=provider,
            nonce=request.nonce,
            code_challenge=pkce_challenge(request.code_verifier),
        )
        return request

    def authorize(
        self,
        url: str,
        subject: str,
        *,
        auth_time: datetime | None = None,
        claims: Mapping[str, Any] | None = None,
        signing: Signing = "provider",
    ) -> tuple[str, str]:
        """The person logs in at ``url`` as ``subject``: returns the callback's (code, state).
        ``claims`` override the ID token's claims and ``signing`` how it is signed, to play a
        misbehaving provider."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        started = self._started.pop(query.get("state", ""), None)
        # What a provider checks at its authorization endpoint (RFC 6749 4.1.1, RFC 7636 4.3).
        if (
            started is None
            or query.get("response_type") != "code"
            or query.get("client_id") != started.provider.client_id
            or query.get("redirect_uri") != started.provider.redirect_uri
            or "openid" not in query.get("scope", "").split()
            or query.get("code_challenge_method") != "S256"
            or query.get("code_challenge") != started.code_challenge
            or query.get("nonce") != started.nonce
        ):
            raise ValueError("not an authorization request this fake started")
        code = secrets.token_urlsafe(32)
        self._grants[code] = _FakeGrant(
            start=started,
            subject=subject,
            auth_time=auth_time,
            claims=dict(claims or {}),
            signing=signing,
        )
        return code, query["state"]

    async def finish(
        self,
        provider: OidcProvider,
        *,
        code: str,
        state: str,
        expected_state: str,
        nonce: str,
        code_verifier: str,
        now: datetime,
    ) -> VerifiedIdentity:
        check_state(state, expected_state)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.token_requests += 1
        self._reachable(provider)
        grant = self._grants.pop(code, None)  # single use, like a provider
        if (
            grant is None
            or grant.start.provider.issuer != provider.issuer
            or grant.start.provider.client_id != provider.client_id
            or grant.start.provider.redirect_uri != provider.redirect_uri
            or not hmac.compare_digest(pkce_challenge(code_verifier), grant.start.code_challenge)
        ):
            raise OidcError("exchange_failed", "fake provider refused the code")
        issued = self.clock()
        claims: dict[str, Any] = {
            "iss": provider.issuer,
            "sub": grant.subject,
            "aud": provider.client_id,
            "iat": int(issued.timestamp()),
            "exp": int((issued + self.token_lifetime).timestamp()),
            "nonce": grant.start.nonce,
        }
        # A conforming provider's auth_time: the login, now unless the test says otherwise.
        claims["auth_time"] = int((grant.auth_time or issued).timestamp())
        for name, value in grant.claims.items():
            if value is None:  # an override of None removes the claim
                claims.pop(name, None)
            else:
                claims[name] = value
        id_token = sign_id_token(
            claims,
            provider_key=self.key,
            signing=grant.signing,
            client_secret=provider.client_secret,
        )
        return verify_id_token(
            id_token,
            self._public_keys,
            IdTokenExpectations(
                issuer=provider.issuer,
                client_id=provider.client_id,
                nonce=nonce,
                now=now,
                max_auth_age=self.max_auth_age,
                clock_skew=self.clock_skew,
                require_auth_time=provider.require_auth_time,
            ),
        )
