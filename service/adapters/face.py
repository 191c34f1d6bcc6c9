"""Face-attestation verifier: FairUnlock never sees a face, only a provider's signed verdict.

A device or certified provider does the 1:1 match and returns a compact JWS whose claims are
``iss``, ``aud``, ``iat``, ``exp``, ``nonce`` (bound to our challenge), ``sub`` (the account's
reference at the provider, under which it enrolled the face it matched), ``result`` (``match`` |
``no_match``), ``liveness`` (``pass`` | ``fail``) and ``matcher_version``; ``jti`` is optional.
We check the signature (EdDSA with Ed25519, or ES256, nothing else), audience, nonce, subject,
expiry and freshness, and refuse anything that looks like biometric data (DESIGN.md principle 4)
before even looking at the signature. A ``no_match`` or failed liveness is not an error: it is an
outcome, and the flow opens human review.

Keys per provider come from ``FAIRUNLOCK_FACE_PROVIDERS``: a PEM public key, or a JWKS URI fetched
with httpx, cached, and refetched once when an attestation names a key id we do not know.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, JWKRegistry, OKPKey
from joserfc.jws import JWSRegistry

from service.settings import SettingsError

logger = logging.getLogger("fairunlock.face")

ALLOWED_ALGS = frozenset({"EdDSA", "ES256"})
# What each allowed algorithm may be verified with; an attestation cannot pick another key type.
_ALG_KEY = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}
# Headers we understand. Anything else (crit, b64=false, jku, jwk, x5u, x5c ...) changes how a
# JWS is processed or where its key comes from, and no provider needs it for this.
_ALLOWED_HEADERS = frozenset({"alg", "kid", "typ"})
_REQUIRED_CLAIMS = (
    "iss",
    "aud",
    "iat",
    "exp",
    "nonce",
    "sub",
    "result",
    "liveness",
    "matcher_version",
)
# An attestation is a few hundred bytes; the API refuses bodies above 64 KiB before this runs.
MAX_ATTESTATION_CHARS = 64 * 1024
_MAX_DEPTH = 8
_MAX_STRING_CHARS = 1024  # a longer claim value has no place in a verdict: likely an encoded image
_MAX_NUMBERS_IN_ARRAY = 32  # a longer list of numbers is a feature vector (an embedding)
_MAX_JWKS_BYTES = 256 * 1024
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}

# Key names that mean biometric data, matched case-insensitively as a substring of the key...
_BIOMETRIC_STEMS = (
    "image",
    "img",
    "template",
    "embedding",
    "vector",
    "score",
    "photo",
    "selfie",
    "probe",
    "portrait",
    "biometric",
)
# ...and "face" as the start of a word, so faceImage/face_data match but "surface" does not.
_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


@dataclass(frozen=True, slots=True)
class FaceOutcome:
    provider: str
    match: bool
    liveness: bool
    matcher_version: str
    issued_at: datetime
    jti: str | None


class AttestationRejected(Exception):
    """The attestation proves nothing. ``code`` is stable; the message never holds claim values."""

    CODES = frozenset(
        {
            "bad_signature",
            "unknown_provider",
            "wrong_audience",
            "nonce_mismatch",
            "wrong_subject",
            "expired",
            "not_fresh",
            "malformed",
            "biometric_payload",
            "alg_not_allowed",
        }
    )

    def __init__(self, code: str, detail: str = "") -> None:
        assert code in self.CODES, code
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class FaceProviderUnavailable(Exception):
    """The provider's keys could not be fetched: our problem or theirs, not the person's."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"face provider {provider!r} keys unavailable: {reason}")
        self.provider = provider
        self.reason = reason


@runtime_checkable
class FaceVerifier(Protocol):
    async def verify(
        self,
        attestation: str,
        *,
        provider: str,
        expected_nonce: str,
        expected_subject: str,
        now: datetime,
    ) -> FaceOutcome: ...

    async def aclose(self) -> None: ...


# --- keys -----------------------------------------------------------------------------------------

VerifyKey = OKPKey | ECKey


class _AttestationRegistry(JWSRegistry):
    """joserfc's registry limited to EdDSA and ES256.

    joserfc warns on every use of "EdDSA" (RFC 9864 prefers the fully specified "Ed25519"); we
    accept the polymorphic name on purpose because providers emit it, and pin the curve to
    Ed25519 through the key (``_ALG_KEY``), which is what RFC 9864 asks for.
    """

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in ALLOWED_ALGS:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


_REGISTRY = _AttestationRegistry()


def _key_kind(key: VerifyKey) -> tuple[str, str]:
    return key.key_type, str(key.curve_name)


def import_public_pem(pem: str) -> VerifyKey:
    """An Ed25519 or P-256 public key from PEM; ValueError for anything else."""
    try:
        native = load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a PEM public key of a supported type") from exc
    if isinstance(native, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(pem)
    if isinstance(native, ec.EllipticCurvePublicKey) and isinstance(native.curve, ec.SECP256R1):
        return ECKey.import_key(pem)
    raise ValueError("only Ed25519 and P-256 public keys are accepted")


def import_jwks(doc: object) -> list[VerifyKey]:
    """The usable signing keys of a JWKS document; others are skipped with a log line."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("a JWKS must be an object with a 'keys' list")
    keys: list[VerifyKey] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        kind = (jwk.get("kty"), jwk.get("crv"))
        if kind not in set(_ALG_KEY.values()):
            logger.info("face JWKS: skipping key %r of type %r", jwk.get("kid"), kind)
            continue
        if "d" in jwk or jwk.get("use", "sig") != "sig":
            # A private key in a public set is a provider mistake; an "enc" key is not ours.
            logger.warning("face JWKS: skipping key %r (private, or not for sig)", jwk.get("kid"))
            continue
        if "alg" in jwk and jwk["alg"] not in ALLOWED_ALGS:
            continue
        public = {k: v for k, v in jwk.items() if k in {"kty", "crv", "x", "y", "kid"}}
        try:
            key = JWKRegistry.import_key(public)
        except (JoseError, ValueError, TypeError):
            logger.warning("face JWKS: skipping unreadable key %r", jwk.get("kid"))
            continue
        assert isinstance(key, OKPKey | ECKey)
        keys.append(key)
    return keys


class _KeySource(Protocol):
    refreshable: bool

    async def keys(self, *, refresh: bool) -> Sequence[VerifyKey]: ...


@dataclass(slots=True)
class _StaticKeys:
    items: Sequence[VerifyKey]
    refreshable: bool = False

    async def keys(self, *, refresh: bool) -> Sequence[VerifyKey]:
        return self.items


class _JwksKeys:
    """A provider's JWKS, cached for ``ttl_s``.

    A refresh is honoured at most every ``min_refresh_s``, so a stream of attestations with
    made-up key ids cannot turn us into a load generator against the provider.
    """

    refreshable = True

    def __init__(
        self,
        provider: str,
        uri: str,
        client: httpx.AsyncClient,
        *,
        ttl_s: float,
        min_refresh_s: float,
    ) -> None:
        self._provider = provider
        self._uri = uri
        self._client = client
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._keys: list[VerifyKey] | None = None
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()

    async def keys(self, *, refresh: bool) -> Sequence[VerifyKey]:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = self._keys is None or age >= self._ttl_s
            if stale or (refresh and age >= self._min_refresh_s):
                try:
                    self._keys = await self._fetch()
                    self._fetched_at = time.monotonic()
                except FaceProviderUnavailable as exc:
                    if self._keys is None:
                        raise
                    # Keys we verified with a moment ago are better than refusing everyone
                    # while the provider's key endpoint hiccups; try again after the minimum
                    # refresh interval rather than on every request.
                    logger.warning(
                        "face provider %s: keeping cached keys (%s)", self._provider, exc
                    )
                    self._fetched_at = time.monotonic() - self._ttl_s + self._min_refresh_s
            assert self._keys is not None
            return self._keys

    async def _fetch(self) -> list[VerifyKey]:
        try:
            async with self._client.stream(
                "GET", self._uri, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise FaceProviderUnavailable(
                        self._provider, f"JWKS answered {response.status_code}"
                    )
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:  # read no further than the cap
                        raise FaceProviderUnavailable(self._provider, "JWKS too large")
        except httpx.HTTPError as exc:
            raise FaceProviderUnavailable(self._provider, type(exc).__name__) from None
        try:
            keys = import_jwks(json.loads(body))
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            raise FaceProviderUnavailable(self._provider, f"bad JWKS: {exc}") from None
        logger.info("face provider %s: fetched %d usable key(s)", self._provider, len(keys))
        return keys


# --- the checks shared by the real verifier and the fake ------------------------------------------


def _b64json(segment: str) -> Any:
    if not segment or not _B64URL.fullmatch(segment):
        raise AttestationRejected("malformed", "segment is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise AttestationRejected("malformed", "segment is not base64url JSON") from None


def _smells_biometric(key: str) -> bool:
    lowered = key.lower()
    if any(stem in lowered for stem in _BIOMETRIC_STEMS):
        return True
    words = _WORD.findall(_CAMEL.sub(r"\1_\2", key).lower())
    return any(word.startswith("face") for word in words)


def find_biometric_data(value: object, path: str = "$", depth: int = 0) -> str | None:
    """The path of the first thing that looks like biometric data, or None.

    Keys named like images, templates, embeddings, scores ... at any depth; long strings and data
    URIs (an encoded image under an innocent name); long lists of numbers (a feature vector).
    """
    if depth > _MAX_DEPTH:
        raise AttestationRejected("malformed", "claims nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if _smells_biometric(str(key)):
                return where
            found = find_biometric_data(item, where, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        numbers = sum(1 for item in value if isinstance(item, int | float))
        if numbers > _MAX_NUMBERS_IN_ARRAY:
            return path
        for index, item in enumerate(value):
            found = find_biometric_data(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, str) and (
        len(value) > _MAX_STRING_CHARS or value[:11].lower() == "data:image/"
    ):
        return path
    return None


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AttestationRejected("malformed", f"{name} must be a NumericDate")
    return float(value)


def _nonempty_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value or len(value) > 256:
        raise AttestationRejected("malformed", f"{name} must be a non-empty string")
    return value


async def check_attestation(
    attestation: str,
    *,
    provider: str,
    keys: _KeySource,
    audience: str,
    issuer: str,
    expected_nonce: str,
    expected_subject: str,
    now: datetime,
    max_age_s: float,
    leeway_s: float,
) -> FaceOutcome:
    """Every check, in an order that never trusts what it has not yet verified."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not expected_nonce or not expected_subject:
        raise ValueError("expected_nonce and expected_subject must not be empty")
    if not isinstance(attestation, str) or len(attestation) > MAX_ATTESTATION_CHARS:
        raise AttestationRejected("malformed", "not a compact JWS of a sensible size")
    parts = attestation.strip().split(".")
    if len(parts) != 3:
        raise AttestationRejected("malformed", "a compact JWS has three parts")
    header = _b64json(parts[0])
    claims = _b64json(parts[1])
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AttestationRejected("malformed", "header and claims must be JSON objects")

    # Principle 4 first: whoever signed it, biometric data is refused and never looked at again.
    for part, where in ((header, "header"), (claims, "claims")):
        found = find_biometric_data(part, where)
        if found is not None:
            raise AttestationRejected("biometric_payload", f"refused at {found}")

    alg = header.get("alg")
    if not isinstance(alg, str):
        raise AttestationRejected("malformed", "the header names no algorithm")
    if alg not in ALLOWED_ALGS:
        raise AttestationRejected("alg_not_allowed", "only EdDSA and ES256 are accepted")
    if not parts[2]:
        raise AttestationRejected("malformed", "the signature is empty")
    if set(header) - _ALLOWED_HEADERS:
        raise AttestationRejected("malformed", "unsupported JWS header parameter")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AttestationRejected("malformed", "kid must be a string")

    await _check_signature(attestation.strip(), alg, kid, keys)
    return _check_claims(
        claims,
        provider=provider,
        audience=audience,
        issuer=issuer,
        expected_nonce=expected_nonce,
        expected_subject=expected_subject,
        now=now,
        max_age_s=max_age_s,
        leeway_s=leeway_s,
    )


def _check_claims(
    claims: Mapping[str, Any],
    *,
    provider: str,
    audience: str,
    issuer: str,
    expected_nonce: str,
    expected_subject: str,
    now: datetime,
    max_age_s: float,
    leeway_s: float,
) -> FaceOutcome:
    """The verified claims against what we expect; runs only after the signature checked out."""
    missing = [name for name in _REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise AttestationRejected("malformed", f"missing claims {missing}")
    iat = _numeric_date(claims, "iat")
    exp = _numeric_date(claims, "exp")
    nonce = _nonempty_str(claims, "nonce")
    sub = _nonempty_str(claims, "sub")
    matcher_version = _nonempty_str(claims, "matcher_version")
    if claims["result"] not in {"match", "no_match"}:
        raise AttestationRejected("malformed", "result must be match or no_match")
    if claims["liveness"] not in {"pass", "fail"}:
        raise AttestationRejected("malformed", "liveness must be pass or fail")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti or len(jti) > 256):
        raise AttestationRejected("malformed", "jti must be a non-empty string")

    if claims["iss"] != issuer:
        raise AttestationRejected("unknown_provider", "iss is not the provider's issuer")
    aud = claims["aud"]
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise AttestationRejected("wrong_audience", "not issued for this service")
    # Constant time: the nonce is the challenge binding, no timing hints about its prefix.
    if not hmac.compare_digest(nonce.encode("utf-8"), expected_nonce.encode("utf-8")):
        raise AttestationRejected("nonce_mismatch", "not issued for this challenge")
    # The provider matched the face enrolled under this reference: another person's match,
    # however genuine, proves nothing about this account.
    if not hmac.compare_digest(sub.encode("utf-8"), expected_subject.encode("utf-8")):
        raise AttestationRejected("wrong_subject", "not a match against this account's face")
    current = now.timestamp()
    if exp <= iat:
        raise AttestationRejected("malformed", "exp must be after iat")
    if current >= exp + leeway_s:
        raise AttestationRejected("expired", "the attestation has expired")
    if iat > current + leeway_s:
        raise AttestationRejected("not_fresh", "issued in the future")
    if current - iat > max_age_s + leeway_s:
        raise AttestationRejected("not_fresh", f"issued more than {max_age_s:.0f} s ago")
    if "nbf" in claims and _numeric_date(claims, "nbf") > current + leeway_s:
        raise AttestationRejected("not_fresh", "not valid yet")

    return FaceOutcome(
        provider=provider,
        match=claims["result"] == "match",
        liveness=claims["liveness"] == "pass",
        matcher_version=matcher_version,
        issued_at=datetime.fromtimestamp(iat, UTC),
        jti=jti,
    )


def _candidates(keys: Sequence[VerifyKey], alg: str, kid: str | None) -> list[VerifyKey]:
    # A key without a kid (a configured PEM) answers any kid; a JWKS key only its own.
    kind = _ALG_KEY[alg]
    return [
        key
        for key in keys
        if _key_kind(key) == kind and (kid is None or key.kid is None or key.kid == kid)
    ]


async def _check_signature(token: str, alg: str, kid: str | None, source: _KeySource) -> None:
    candidates = _candidates(await source.keys(refresh=False), alg, kid)
    if not candidates and source.refreshable:
        # The provider may have rotated its keys since we cached them: look once more.
        candidates = _candidates(await source.keys(refresh=True), alg, kid)
    for key in candidates:
        try:
            jws.deserialize_compact(token, key, registry=_REGISTRY)
        except (JoseError, ValueError):
            continue
        return
    raise AttestationRejected("bad_signature", "no configured key verifies the signature")


def sign_attestation(
    claims: Mapping[str, Any],
    private_key: VerifyKey,
    *,
    alg: str | None = None,
    kid: str | None = None,
) -> str:
    """A compact JWS over ``claims``, as a provider would make it (tests and the fake only)."""
    kind = _key_kind(private_key)
    alg = alg or next(name for name, want in _ALG_KEY.items() if want == kind)
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None or private_key.kid is not None:
        header["kid"] = kid if kid is not None else private_key.kid
    payload = json.dumps(dict(claims), separators=(",", ":"))
    return jws.serialize_compact(header, payload, private_key, registry=_REGISTRY)


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaceProviderConfig:
    name: str
    audience: str
    jwks_uri: str | None = None
    public_key_pem: str | None = None
    # The ``iss`` the provider puts in its attestations; the provider's name unless configured.
    issuer: str | None = None

    @property
    def expected_issuer(self) -> str:
        return self.issuer if self.issuer is not None else self.name


@dataclass(frozen=True, slots=True)
class FaceConfig:
    providers: dict[str, FaceProviderConfig] = field(default_factory=dict)
    max_age_s: int = 300
    leeway_s: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaceConfig:
        var = "FAIRUNLOCK_FACE_PROVIDERS"
        raw = (env.get(var) or "").strip()
        providers: dict[str, FaceProviderConfig] = {}
        if raw:
            try:
                doc = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{var} is not valid JSON ({exc.msg})") from None
            if not isinstance(doc, dict):
                raise SettingsError(f"{var} must be a JSON object of providers")
            for name, entry in doc.items():
                providers[name] = _parse_provider(var, name, entry)
        max_age_s = 300
        if (text := (env.get("FAIRUNLOCK_FACE_MAX_AGE_S") or "").strip()) != "":
            if not text.isdigit() or not 30 <= int(text) <= 3600:
                raise SettingsError(
                    f"FAIRUNLOCK_FACE_MAX_AGE_S must be an integer 30..3600, got {text!r}"
                )
            max_age_s = int(text)
        return cls(providers=providers, max_age_s=max_age_s)


def _parse_provider(var: str, name: str, entry: object) -> FaceProviderConfig:
    if not _PROVIDER_NAME.fullmatch(name):
        raise SettingsError(f"{var}: bad provider name {name!r}")
    where = f"{var}[{name}]"
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} must be an object")
    unknown = set(entry) - {"jwks_uri", "public_key_pem", "audience", "issuer"}
    if unknown:
        raise SettingsError(f"{where} has unknown keys {sorted(unknown)}")
    if ("jwks_uri" in entry) == ("public_key_pem" in entry):
        raise SettingsError(f"{where} needs exactly one of jwks_uri or public_key_pem")
    for key in ("audience", "issuer"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise SettingsError(f"{where}.{key} must be a non-empty string")
    if "audience" not in entry:
        raise SettingsError(f"{where}.audience is required")
    jwks_uri = entry.get("jwks_uri")
    if jwks_uri is not None:
        parts = urlsplit(jwks_uri) if isinstance(jwks_uri, str) else None
        if parts is None or parts.scheme not in {"https", "http"} or not parts.hostname:
            raise SettingsError(f"{where}.jwks_uri must be an https URL")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            # Keys fetched in the clear could be swapped on the way: https, or loopback only.
            raise SettingsError(f"{where}.jwks_uri must use https (plain http only on loopback)")
    pem = entry.get("public_key_pem")
    if pem is not None:
        if not isinstance(pem, str):
            raise SettingsError(f"{where}.public_key_pem must be a PEM string")
        try:
            import_public_pem(pem)
        except ValueError as exc:
            raise SettingsError(f"{where}.public_key_pem: {exc}") from None
    return FaceProviderConfig(
        name=name,
        audience=entry["audience"],
        jwks_uri=jwks_uri,
        public_key_pem=pem,
        issuer=entry.get("issuer"),
    )


# --- the verifiers --------------------------------------------------------------------------------


class JoseFaceVerifier:
    """The real verifier: keys from configuration (PEM) or the provider's JWKS over httpx."""

    def __init__(
        self,
        config: FaceConfig,
        *,
        jwks_ttl_s: float = 600.0,
        jwks_min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._config = config
        # Only JWKS providers need HTTP; a client costs an SSL context, so none without them.
        needs_http = any(p.jwks_uri is not None for p in config.providers.values())
        self._client = (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) if needs_http else None
        )
        self._sources: dict[str, _KeySource] = {}
        for name, provider in config.providers.items():
            if provider.public_key_pem is not None:
                self._sources[name] = _StaticKeys([import_public_pem(provider.public_key_pem)])
            else:
                assert provider.jwks_uri is not None
                assert self._client is not None
                self._sources[name] = _JwksKeys(
                    name,
                    provider.jwks_uri,
                    self._client,
                    ttl_s=jwks_ttl_s,
                    min_refresh_s=jwks_min_refresh_s,
                )

    async def verify(
        self,
        attestation: str,
        *,
        provider: str,
        expected_nonce: str,
        expected_subject: str,
        now: datetime,
    ) -> FaceOutcome:
        config = self._config.providers.get(provider)
        source = self._sources.get(provider)
        if config is None or source is None:
            raise AttestationRejected("unknown_provider", "no such face provider is configured")
        return await check_attestation(
            attestation,
            provider=provider,
            keys=source,
            audience=config.audience,
            issuer=config.expected_issuer,
            expected_nonce=expected_nonce,
            expected_subject=expected_subject,
            now=now,
            max_age_s=self._config.max_age_s,
            leeway_s=self._config.leeway_s,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class FakeFaceVerifier:
    """For unit tests: one provider with an in-process key, the same checks as the real one."""

    def __init__(
        self,
        *,
        provider: str = "test-provider",
        audience: str = "fairunlock-test",
        key: VerifyKey | None = None,
        max_age_s: int = 300,
        leeway_s: int = 30,
    ) -> None:
        self.provider = provider
        self.audience = audience
        self.key: VerifyKey = key or OKPKey.generate_key("Ed25519", auto_kid=True)
        public = JWKRegistry.import_key(self.key.as_dict(private=False))
        assert isinstance(public, OKPKey | ECKey)
        self._public: VerifyKey = public
        self._max_age_s = max_age_s
        self._leeway_s = leeway_s
        self.verified: list[FaceOutcome] = []

    def sign_attestation(self, claims: Mapping[str, Any]) -> str:
        return sign_attestation(claims, self.key)

    async def verify(
        self,
        attestation: str,
        *,
        provider: str,
        expected_nonce: str,
        expected_subject: str,
        now: datetime,
    ) -> FaceOutcome:
        if provider != self.provider:
            raise AttestationRejected("unknown_provider", "no such face provider is configured")
        outcome = await check_attestation(
            attestation,
            provider=provider,
            keys=_StaticKeys([self._public]),
            audience=self.audience,
            issuer=self.provider,
            expected_nonce=expected_nonce,
            expected_subject=expected_subject,
            now=now,
            max_age_s=self._max_age_s,
            leeway_s=self._leeway_s,
        )
        self.verified.append(outcome)
        return outcome

    async def aclose(self) -> None:
        return None


def build_face_verifier(config: FaceConfig) -> FaceVerifier:
    return JoseFaceVerifier(config)
