"""One contract for every face-attestation verifier (issue 5, "Face (opt-in only)"; DESIGN.md
principle 4): the real verifier with a configured PEM key, the real verifier with a JWKS served by
a real HTTP server on loopback, and the fake, each with Ed25519 (EdDSA) and P-256 (ES256) keys,
pass the same tests. The tests sign attestations with their own test keys, as a provider would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey

from service.adapters.face import (
    AttestationRejected,
    FaceConfig,
    FaceOutcome,
    FaceProviderConfig,
    FaceProviderUnavailable,
    FaceVerifier,
    FakeFaceVerifier,
    JoseFaceVerifier,
    VerifyKey,
    build_face_verifier,
    sign_attestation,
)
from service.settings import SettingsError

PROVIDER = "acme-face"
AUDIENCE = "fairunlock-prod"
NONCE = "ch_7f3a9c1e-5b2d-4c11-9a0e-2f6d8b7c3a10"
# The account's reference at the provider (DataKeys.face_subject): 64 hex characters.
SUB = "5d1c" * 16
NOW = datetime(2026, 11, 22, 4, 0, 0, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": PROVIDER,
        "aud": AUDIENCE,
        "iat": int(NOW.timestamp()) - 20,
        "exp": int(NOW.timestamp()) + 100,
        "nonce": NONCE,
        "sub": SUB,
        "result": "match",
        "liveness": "pass",
        "matcher_version": "acme-matcher 4.2.1",
        "jti": "att-0001",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def new_key(alg: str, kid: str = "k1") -> VerifyKey:
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", parameters={"kid": kid})
    return ECKey.generate_key("P-256", parameters={"kid": kid})


def public_jwk(key: VerifyKey) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


class JwksServer:
    """A provider's JWKS endpoint on loopback: stdlib http.server in a thread; counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # joined by server_close()
            block_on_close = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()

    @property
    def uri(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/.well-known/jwks.json"

    def stop(self) -> None:
        if not self._thread.is_alive():
            return  # already stopped by the test itself
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


class Subject:
    """One verifier under test, living in one event loop for the test, and its trusted key."""

    def __init__(self, kind: str, alg: str, key: VerifyKey, make: Callable[[], FaceVerifier]):
        self.kind = kind
        self.alg = alg
        self.key = key  # the provider's private key the verifier trusts
        self._runner = asyncio.Runner()
        # Built inside the loop that will use it: an httpx client belongs to one loop.
        self._verifier = self._runner.run(self._build(make))

    @staticmethod
    async def _build(make: Callable[[], FaceVerifier]) -> FaceVerifier:
        return make()

    def close(self) -> None:
        try:
            self._runner.run(self._verifier.aclose())
        finally:
            self._runner.close()

    def sign(self, body: dict[str, Any]) -> str:
        return sign_attestation(body, self.key)

    def verify(
        self,
        attestation: str,
        *,
        provider: str = PROVIDER,
        nonce: str = NONCE,
        sub: str = SUB,
        now: datetime = NOW,
    ) -> FaceOutcome:
        return self._runner.run(
            self._verifier.verify(
                attestation, provider=provider, expected_nonce=nonce, expected_subject=sub, now=now
            )
        )

    def rejected(self, attestation: str, **kwargs: Any) -> str:
        with pytest.raises(AttestationRejected) as caught:
            self.verify(attestation, **kwargs)
        return caught.value.code


@pytest.fixture(
    params=[
        ("pem", "EdDSA"),
        ("pem", "ES256"),
        ("jwks", "EdDSA"),
        ("jwks", "ES256"),
        ("fake", "EdDSA"),
        ("fake", "ES256"),
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    kind, alg = request.param
    key = new_key(alg)
    server: JwksServer | None = None
    if kind == "fake":
        made = Subject(
            kind, alg, key, lambda: FakeFaceVerifier(provider=PROVIDER, audience=AUDIENCE, key=key)
        )
    elif kind == "pem":
        pem = key.as_pem(private=False).decode()
        config = FaceConfig({PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, public_key_pem=pem)})
        made = Subject(kind, alg, key, lambda: JoseFaceVerifier(config))
    else:
        server = JwksServer()
        # A realistic set: a key of the other type first, ours second.
        other = new_key("ES256" if alg == "EdDSA" else "EdDSA", "k0")
        server.keys = [public_jwk(other), public_jwk(key)]
        config = FaceConfig({PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=server.uri)})
        made = Subject(kind, alg, key, lambda: JoseFaceVerifier(config))
    try:
        yield made
    finally:
        made.close()
        if server is not None:
            server.stop()


# --- the contract ---------------------------------------------------------------------------------


def test_valid_match_is_an_outcome(subject: Subject) -> None:
    outcome = subject.verify(subject.sign(claims()))
    assert outcome == FaceOutcome(
        provider=PROVIDER,
        match=True,
        liveness=True,
        matcher_version="acme-matcher 4.2.1",
        issued_at=NOW - timedelta(seconds=20),
        jti="att-0001",
    )


def test_no_match_and_failed_liveness_are_outcomes_not_errors(subject: Subject) -> None:
    # NIST-63A4-3.1.13.2: a mismatch goes to a human, so it must reach the flow as a fact.
    outcome = subject.verify(subject.sign(claims(result="no_match")))
    assert (outcome.match, outcome.liveness) == (False, True)
    outcome = subject.verify(subject.sign(claims(liveness="fail", jti=None)))
    assert (outcome.match, outcome.liveness, outcome.jti) == (True, False, None)


def test_audience_may_be_a_list_containing_ours(subject: Subject) -> None:
    assert subject.verify(subject.sign(claims(aud=["other", AUDIENCE]))).match is True


def test_tampered_claims_or_signature_is_bad_signature(subject: Subject) -> None:
    token = subject.sign(claims(result="no_match"))
    header, _payload, signature = token.split(".")
    forged_payload = b64(json.dumps(claims(result="match")).encode())
    assert subject.rejected(f"{header}.{forged_payload}.{signature}") == "bad_signature"
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[5] ^= 0x01
    assert subject.rejected(f"{header}.{_payload}.{b64(bytes(raw))}") == "bad_signature"


def test_signed_by_another_key_is_bad_signature(subject: Subject) -> None:
    impostor = new_key(subject.alg, kid="k1")  # same alg, same kid, different key
    assert subject.rejected(sign_attestation(claims(), impostor)) == "bad_signature"
    stranger = new_key(subject.alg, kid="k-unknown")
    assert subject.rejected(sign_attestation(claims(), stranger)) == "bad_signature"


def test_alg_hs256_and_none_are_refused(subject: Subject) -> None:
    payload = b64(json.dumps(claims()).encode())
    # The classic confusion: HMAC keyed with the provider's public key, which anyone can read.
    secret = subject.key.as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert subject.rejected(f"{header}.{payload}.{b64(mac)}") == "alg_not_allowed"
    none = b64(json.dumps({"alg": "none"}).encode())
    assert subject.rejected(f"{none}.{payload}.") == "alg_not_allowed"
    assert subject.rejected(f"{none}.{payload}.c2ln") == "alg_not_allowed"
    for alg in ("RS256", "ES384", "Ed448", "HS512"):
        other = b64(json.dumps({"alg": alg}).encode())
        assert subject.rejected(f"{other}.{payload}.c2ln") == "alg_not_allowed", alg


def test_other_key_type_for_the_alg_is_refused(subject: Subject) -> None:
    # An attestation that names the other allowed alg gets no key of ours to verify with.
    other = "ES256" if subject.alg == "EdDSA" else "EdDSA"
    token = sign_attestation(claims(), new_key(other))
    assert subject.rejected(token) == "bad_signature"


def test_wrong_audience(subject: Subject) -> None:
    assert subject.rejected(subject.sign(claims(aud="someone-else"))) == "wrong_audience"
    assert subject.rejected(subject.sign(claims(aud=["a", "b"]))) == "wrong_audience"


def test_wrong_nonce(subject: Subject) -> None:
    assert subject.rejected(subject.sign(claims(nonce="ch_other"))) == "nonce_mismatch"
    assert subject.rejected(subject.sign(claims()), nonce=NONCE + "x") == "nonce_mismatch"


def test_a_match_against_another_accounts_face_is_wrong_subject(subject: Subject) -> None:
    """A genuine, signed match of whoever stood in front of the camera, for our challenge, proves
    nothing unless it was against the face enrolled for this account."""
    assert subject.rejected(subject.sign(claims(sub="9e0a" * 16))) == "wrong_subject"
    assert subject.rejected(subject.sign(claims()), sub=SUB[:-1] + "0") == "wrong_subject"


def test_expired(subject: Subject) -> None:
    now = int(NOW.timestamp())
    token = subject.sign(claims(iat=now - 200, exp=now - 31))  # beyond the 30 s leeway
    assert subject.rejected(token) == "expired"
    # Inside the leeway it still counts: clocks differ a little.
    assert subject.verify(subject.sign(claims(iat=now - 200, exp=now - 5))).match is True


def test_stale_or_future_iat_is_not_fresh(subject: Subject) -> None:
    now = int(NOW.timestamp())
    assert subject.rejected(subject.sign(claims(iat=now - 400, exp=now + 600))) == "not_fresh"
    assert subject.rejected(subject.sign(claims(iat=now + 120, exp=now + 600))) == "not_fresh"
    assert subject.rejected(subject.sign(claims(nbf=now + 120))) == "not_fresh"


def test_unknown_provider(subject: Subject) -> None:
    token = subject.sign(claims())
    assert subject.rejected(token, provider="someone-else") == "unknown_provider"
    # Signed by our provider's key but claiming another issuer: not what was configured.
    assert subject.rejected(subject.sign(claims(iss="other-face"))) == "unknown_provider"


def test_malformed(subject: Subject) -> None:
    good = subject.sign(claims())
    header, payload, signature = good.split(".")
    for token in [
        "",
        "not-a-jws",
        "a.b",
        f"{good}.extra",
        f"{header}.{payload}.",
        f"{header}.!!!.{signature}",
        f"{header}.{b64(b'not json')}.{signature}",
        f"{header}.{b64(b'[1, 2, 3]')}.{signature}",
        f"{b64(b'{}')}.{payload}.{signature}",
        "x" * 70_000,
    ]:
        assert subject.rejected(token) == "malformed", token[:40]
    for body in [
        claims(result="maybe"),
        claims(liveness=True),
        claims(matcher_version=None),
        claims(nonce=None),
        claims(sub=None),
        claims(sub=""),
        claims(sub=42),
        claims(iat="yesterday"),
        claims(exp=int(NOW.timestamp()) - 30),  # exp before iat
    ]:
        assert subject.rejected(subject.sign(body)) == "malformed", body


def test_unsupported_header_parameters_are_refused(subject: Subject) -> None:
    payload = b64(json.dumps(claims()).encode())
    for extra in ({"b64": False, "crit": ["b64"]}, {"jku": "https://evil.example/jwks"}):
        header = b64(json.dumps({"alg": subject.alg, **extra}).encode())
        assert subject.rejected(f"{header}.{payload}.c2ln") == "malformed", extra


@pytest.mark.parametrize(
    "extra",
    [
        {"image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"},
        {"evidence": {"template": [0.12, -0.5, 0.33]}},
        {"Face_Image": "..."},
        {"selfieUrl": "https://cdn.example/s.jpg"},
        {"scores": {"similarity": 0.93}},
        {"details": [{"probe": "abc"}]},
        {"faceData": "..."},
        {"EMBEDDING": [0.1]},
        {"note": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ"},
        {"blob": "A" * 5000},  # an encoded image under an innocent name
        {"features": [0.01 * i for i in range(128)]},  # a 128-d vector under an innocent name
    ],
    ids=lambda e: next(iter(e)),
)
def test_biometric_payload_is_refused(subject: Subject, extra: dict[str, Any]) -> None:
    # DESIGN.md principle 4: a correctly signed attestation carrying biometric data is refused.
    assert subject.rejected(subject.sign(claims(**extra))) == "biometric_payload"


def test_biometric_payload_is_refused_even_unsigned(subject: Subject) -> None:
    header = b64(json.dumps({"alg": subject.alg}).encode())
    payload = b64(json.dumps(claims(image="...")).encode())
    assert subject.rejected(f"{header}.{payload}.c2ln") == "biometric_payload"


def test_innocent_claim_names_pass(subject: Subject) -> None:
    # The detector must not refuse ordinary claims that merely contain similar letters.
    body = claims(surface="kiosk", interface="sdk", session_id="s-1", device="ios-18")
    assert subject.verify(subject.sign(body)).match is True


# --- the real verifier's key handling -------------------------------------------------------------


def test_jwks_is_cached_and_refetched_once_when_the_provider_rotates(
    jwks_server: JwksServer,
) -> None:
    old, new = new_key("EdDSA", "2026-10"), new_key("ES256", "2026-11")
    jwks_server.keys = [public_jwk(old)]
    config = FaceConfig(
        {PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=jwks_server.uri)}
    )

    async def main() -> None:
        verifier = JoseFaceVerifier(config, jwks_min_refresh_s=0)
        try:
            for _ in range(3):
                await verifier.verify(
                    sign_attestation(claims(), old),
                    provider=PROVIDER,
                    expected_nonce=NONCE,
                    expected_subject=SUB,
                    now=NOW,
                )
            assert jwks_server.fetches == 1  # cached
            jwks_server.keys = [public_jwk(old), public_jwk(new)]
            outcome = await verifier.verify(
                sign_attestation(claims(), new),
                provider=PROVIDER,
                expected_nonce=NONCE,
                expected_subject=SUB,
                now=NOW,
            )
            assert outcome.match is True
            assert jwks_server.fetches == 2  # one refetch for the unknown kid
        finally:
            await verifier.aclose()

    asyncio.run(main())


def test_unknown_kids_cannot_make_us_hammer_the_provider(jwks_server: JwksServer) -> None:
    key = new_key("EdDSA")
    jwks_server.keys = [public_jwk(key)]
    config = FaceConfig(
        {PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=jwks_server.uri)}
    )

    async def main() -> None:
        verifier = JoseFaceVerifier(config, jwks_min_refresh_s=60)
        try:
            for i in range(5):
                stranger = new_key("EdDSA", f"made-up-{i}")
                with pytest.raises(AttestationRejected) as caught:
                    await verifier.verify(
                        sign_attestation(claims(), stranger),
                        provider=PROVIDER,
                        expected_nonce=NONCE,
                        expected_subject=SUB,
                        now=NOW,
                    )
                assert caught.value.code == "bad_signature"
        finally:
            await verifier.aclose()

    asyncio.run(main())
    # The first fetch; a refresh within the minimum interval is not made.
    assert jwks_server.fetches == 1


def test_jwks_skips_private_foreign_and_encryption_keys(jwks_server: JwksServer) -> None:
    key = new_key("ES256", "sig-1")
    leaked = new_key("EdDSA", "leaked")
    enc = public_jwk(new_key("ES256", "enc-1")) | {"use": "enc"}
    rsa = {"kty": "RSA", "kid": "rsa-1", "n": "sXch", "e": "AQAB"}
    jwks_server.keys = [rsa, dict(leaked.as_dict(private=True)), enc, public_jwk(key)]
    config = FaceConfig(
        {PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=jwks_server.uri)}
    )

    async def verify(token: str) -> FaceOutcome:
        verifier = JoseFaceVerifier(config)
        try:
            return await verifier.verify(
                token, provider=PROVIDER, expected_nonce=NONCE, expected_subject=SUB, now=NOW
            )
        finally:
            await verifier.aclose()

    assert asyncio.run(verify(sign_attestation(claims(), key))).match is True
    for skipped in (leaked, new_key("ES256", "enc-1")):
        with pytest.raises(AttestationRejected) as caught:
            asyncio.run(verify(sign_attestation(claims(), skipped)))
        assert caught.value.code == "bad_signature"


def test_unreachable_or_broken_jwks_is_provider_unavailable(jwks_server: JwksServer) -> None:
    key = new_key("EdDSA")
    config = FaceConfig(
        {PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=jwks_server.uri)}
    )

    async def verify() -> None:
        verifier = JoseFaceVerifier(config)
        try:
            await verifier.verify(
                sign_attestation(claims(), key),
                provider=PROVIDER,
                expected_nonce=NONCE,
                expected_subject=SUB,
                now=NOW,
            )
        finally:
            await verifier.aclose()

    # Not the person's fault, so not an AttestationRejected: the flow answers 503, not 4xx.
    jwks_server.status = 503
    with pytest.raises(FaceProviderUnavailable, match="503"):
        asyncio.run(verify())
    uri = jwks_server.uri
    jwks_server.stop()
    config = FaceConfig({PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=uri)})
    with pytest.raises(FaceProviderUnavailable):
        asyncio.run(verify())


def test_cached_keys_outlive_a_key_endpoint_outage(jwks_server: JwksServer) -> None:
    key = new_key("ES256")
    jwks_server.keys = [public_jwk(key)]
    config = FaceConfig(
        {PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=jwks_server.uri)}
    )

    async def main() -> None:
        # ttl 0: every verify wants fresh keys, so the outage is certainly noticed.
        verifier = JoseFaceVerifier(config, jwks_ttl_s=0, jwks_min_refresh_s=0)
        try:
            token = sign_attestation(claims(), key)
            await verifier.verify(
                token, provider=PROVIDER, expected_nonce=NONCE, expected_subject=SUB, now=NOW
            )
            jwks_server.status = 500
            outcome = await verifier.verify(
                token, provider=PROVIDER, expected_nonce=NONCE, expected_subject=SUB, now=NOW
            )
            assert outcome.match is True
        finally:
            await verifier.aclose()

    asyncio.run(main())
    assert jwks_server.fetches == 2  # the outage was seen, and the cached key still served


def test_an_oversized_jwks_is_refused(jwks_server: JwksServer) -> None:
    key = new_key("EdDSA")
    jwks_server.keys = [public_jwk(key)] + [{"kty": "oct", "k": "A" * 1000}] * 300
    config = FaceConfig(
        {PROVIDER: FaceProviderConfig(PROVIDER, AUDIENCE, jwks_uri=jwks_server.uri)}
    )

    async def main() -> None:
        verifier = JoseFaceVerifier(config)
        try:
            await verifier.verify(
                sign_attestation(claims(), key),
                provider=PROVIDER,
                expected_nonce=NONCE,
                expected_subject=SUB,
                now=NOW,
            )
        finally:
            await verifier.aclose()

    with pytest.raises(FaceProviderUnavailable, match="too large"):
        asyncio.run(main())


# --- configuration --------------------------------------------------------------------------------


def pem_of(alg: str) -> str:
    return new_key(alg).as_pem(private=False).decode()


def test_config_reads_providers_and_max_age() -> None:
    doc = {
        "acme-face": {"public_key_pem": pem_of("EdDSA"), "audience": AUDIENCE},
        "gov-face": {
            "jwks_uri": "https://face.gov.example/jwks.json",
            "audience": AUDIENCE,
            "issuer": "https://face.gov.example",
        },
    }
    env = {"FAIRUNLOCK_FACE_PROVIDERS": json.dumps(doc), "FAIRUNLOCK_FACE_MAX_AGE_S": "120"}
    config = FaceConfig.from_env(env)
    assert set(config.providers) == {"acme-face", "gov-face"}
    assert config.providers["gov-face"].expected_issuer == "https://face.gov.example"
    assert config.providers["acme-face"].expected_issuer == "acme-face"
    assert config.max_age_s == 120
    assert FaceConfig.from_env({}).providers == {}


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        '["acme"]',
        json.dumps({"Bad Name": {"public_key_pem": "x", "audience": "a"}}),
        json.dumps({"acme": "string"}),
        json.dumps({"acme": {"audience": "a"}}),
        json.dumps({"acme": {"audience": "a", "jwks_uri": "https://x/j", "public_key_pem": "p"}}),
        json.dumps({"acme": {"jwks_uri": "https://x.example/j"}}),
        json.dumps({"acme": {"jwks_uri": "https://x.example/j", "audience": ""}}),
        json.dumps({"acme": {"jwks_uri": "http://x.example/j", "audience": "a"}}),
        json.dumps({"acme": {"jwks_uri": "ftp://x.example/j", "audience": "a"}}),
        json.dumps({"acme": {"jwks_uri": "https://x.example/j", "audience": "a", "extra": 1}}),
        json.dumps({"acme": {"public_key_pem": "not a pem", "audience": "a"}}),
        json.dumps(
            {"acme": {"public_key_pem": pem_of("ES256").replace("A", "B", 3), "audience": "a"}}
        ),
    ],
)
def test_config_refuses_bad_providers_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="FAIRUNLOCK_FACE_PROVIDERS"):
        FaceConfig.from_env({"FAIRUNLOCK_FACE_PROVIDERS": raw})


def test_config_refuses_rsa_and_other_curves() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    for private in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
    ):
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        raw = json.dumps({"acme": {"public_key_pem": pem.decode(), "audience": "a"}})
        with pytest.raises(SettingsError, match=r"FAIRUNLOCK_FACE_PROVIDERS\[acme\]"):
            FaceConfig.from_env({"FAIRUNLOCK_FACE_PROVIDERS": raw})


def test_config_refuses_bad_max_age() -> None:
    for raw in ("0", "5", "99999", "5m"):
        with pytest.raises(SettingsError, match="FAIRUNLOCK_FACE_MAX_AGE_S"):
            FaceConfig.from_env({"FAIRUNLOCK_FACE_MAX_AGE_S": raw})


def test_build_returns_the_real_verifier() -> None:
    async def main() -> None:
        verifier = build_face_verifier(FaceConfig())
        try:
            assert isinstance(verifier, JoseFaceVerifier)
            with pytest.raises(AttestationRejected) as caught:
                await verifier.verify(
                    "a.b.c", provider="none", expected_nonce=NONCE, expected_subject=SUB, now=NOW
                )
            assert caught.value.code == "unknown_provider"
        finally:
            await verifier.aclose()

    asyncio.run(main())


def test_fake_signs_with_its_own_key() -> None:
    fake = FakeFaceVerifier(provider=PROVIDER, audience=AUDIENCE)
    token = fake.sign_attestation(claims())
    outcome = asyncio.run(
        fake.verify(token, provider=PROVIDER, expected_nonce=NONCE, expected_subject=SUB, now=NOW)
    )
    assert outcome.match is True
    assert fake.verified == [outcome]


def test_naive_now_is_a_programming_error() -> None:
    fake = FakeFaceVerifier(provider=PROVIDER, audience=AUDIENCE)
    token = fake.sign_attestation(claims())
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone"):
        asyncio.run(
            fake.verify(
                token, provider=PROVIDER, expected_nonce=NONCE, expected_subject=SUB, now=naive
            )
        )
