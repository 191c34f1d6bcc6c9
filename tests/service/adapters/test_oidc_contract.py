"""The OIDC client contract (issue 5, linked real-name account): every case runs on
``HttpOidcClient`` against real providers on loopback (oidc-provider-mock as a process, and a
scripted provider for forged tokens) and on ``FakeOidcClient``. Each refusal names its reason code.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet, OKPKey

from service.adapters.oidc import (
    OIDC_ERROR_CODES,
    AuthorizationRequest,
    IdTokenExpectations,
    OidcError,
    VerifiedIdentity,
    verify_id_token,
)
from service.providers import OidcProvider
from tests.service.adapters.oidc_support import (
    CLIENT_ID,
    REDIRECT_URI,
    FakeDriver,
    MockProviderProcess,
    OidcDriver,
    RealDriver,
    Scenario,
    ScriptedProvider,
    Tenant,
    new_es256_key,
    running_providers,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def providers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MockProviderProcess, ScriptedProvider]]:
    with running_providers(tmp_path_factory.mktemp("oidc")) as running:
        yield running


@pytest.fixture(params=["http", "fake"])
async def driver(
    request: pytest.FixtureRequest, providers: tuple[MockProviderProcess, ScriptedProvider]
) -> AsyncIterator[OidcDriver]:
    chosen: RealDriver | FakeDriver = (
        RealDriver(*providers) if request.param == "http" else FakeDriver()
    )
    try:
        yield chosen
    finally:
        await chosen.aclose()


@dataclass(frozen=True)
class Login:
    provider: OidcProvider
    request: AuthorizationRequest
    code: str
    state: str

    def secrets(self) -> list[str]:
        return [self.code, self.state, self.request.nonce, self.request.code_verifier]


async def log_in(driver: OidcDriver, scenario: Scenario | None = None) -> Login:
    scenario = scenario or Scenario()
    provider = driver.provider(scenario)
    request = await driver.client.start(provider)
    code, state = await driver.log_in(provider, request, scenario)
    return Login(provider, request, code, state)


async def finish(driver: OidcDriver, login: Login, **overrides: Any) -> VerifiedIdentity:
    args: dict[str, Any] = {
        "code": login.code,
        "state": login.state,
        "expected_state": login.request.state,
        "nonce": login.request.nonce,
        "code_verifier": login.request.code_verifier,
        "now": datetime.now(UTC),
    } | overrides
    return await driver.client.finish(login.provider, **args)


async def refusal(driver: OidcDriver, login: Login, **overrides: Any) -> str:
    with pytest.raises(OidcError) as info:
        await finish(driver, login, **overrides)
    assert info.value.code in OIDC_ERROR_CODES
    # The message goes to logs: it must not carry what an attacker could replay.
    for secret in login.secrets():
        assert secret not in str(info.value)
    return info.value.code


# --- the happy path and the authorization request ------------------------------------------------


async def test_a_completed_login_returns_the_subject_as_the_provider_sent_it(
    driver: OidcDriver,
) -> None:
    login = await log_in(driver, Scenario(subject="Gov-EID:0042"))
    identity = await finish(driver, login)
    assert identity.subject == "Gov-EID:0042"
    assert identity.issuer == login.provider.issuer
    assert identity.claims["aud"] in (CLIENT_ID, [CLIENT_ID])


async def test_a_fresh_auth_time_is_accepted_and_returned(driver: OidcDriver) -> None:
    authenticated = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    login = await log_in(driver, Scenario(auth_time=authenticated))
    identity = await finish(driver, login)
    assert identity.auth_time == authenticated


async def test_the_authorization_url_carries_pkce_s256_state_and_nonce(driver: OidcDriver) -> None:
    provider = driver.provider(Scenario())
    first = await driver.client.start(provider)
    second = await driver.client.start(provider)
    query = {k: v[0] for k, v in parse_qs(urlsplit(first.url).query, strict_parsing=True).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"].split() == ["openid"]
    assert query["state"] == first.state
    assert query["nonce"] == first.nonce
    assert query["code_challenge_method"] == "S256"
    # RFC 7636 4.2, computed here rather than with the adapter's helper.
    digest = hashlib.sha256(first.code_verifier.encode("ascii")).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", first.code_verifier)
    assert "code_verifier" not in query
    # 128 bits of base64url is 22 characters; fresh values per request.
    assert min(len(first.state), len(first.nonce)) >= 22
    assert {first.state, first.nonce, first.code_verifier}.isdisjoint(
        {second.state, second.nonce, second.code_verifier}
    )


# --- refusals, each with its reason code ----------------------------------------------------------


async def test_a_wrong_state_is_refused_before_any_network_call(driver: OidcDriver) -> None:
    login = await log_in(driver, Scenario(controlled=True))
    # A provider that fails every call: any call made would surface as provider_unavailable.
    driver.take_down(login.provider)
    calls_before = driver.token_requests(login.provider)
    assert await refusal(driver, login, state=login.state[:-1] + "x") == "state_mismatch"
    assert await refusal(driver, login, state="") == "state_mismatch"
    assert await refusal(driver, login, state=login.state, expected_state="") == "state_mismatch"
    assert driver.token_requests(login.provider) == calls_before
    # The same callback with its own state does reach the (dead) provider.
    assert await refusal(driver, login) == "provider_unavailable"
    assert driver.token_requests(login.provider) == calls_before + 1


async def test_a_token_for_another_nonce_is_refused(driver: OidcDriver) -> None:
    login = await log_in(driver)
    other_nonce = secrets.token_urlsafe(32)
    assert await refusal(driver, login, nonce=other_nonce) == "nonce_mismatch"


async def test_a_token_without_a_nonce_is_refused(driver: OidcDriver) -> None:
    login = await log_in(driver, Scenario(claims={"nonce": None}))
    assert await refusal(driver, login) == "nonce_mismatch"


async def test_an_expired_token_is_refused(driver: OidcDriver) -> None:
    login = await log_in(driver)
    # Every provider here issues tokens valid for one hour; the clock is an input.
    later = datetime.now(UTC) + timedelta(hours=2)
    assert await refusal(driver, login, now=later) == "token_expired"


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "another-client"},
        {"aud": ["another-client"]},
        # Several audiences: OIDC Core 3.1.3.7 requires azp naming us.
        {"aud": [CLIENT_ID, "another-client"]},
        {"aud": [CLIENT_ID, "another-client"], "azp": "another-client"},
        {"aud": None},
    ],
    ids=["other", "other-in-list", "several-without-azp", "azp-other", "missing"],
)
async def test_a_token_for_another_client_is_refused(
    driver: OidcDriver, claims: Mapping[str, Any]
) -> None:
    login = await log_in(driver, Scenario(claims=claims))
    assert await refusal(driver, login) == "wrong_audience"


async def test_several_audiences_with_azp_naming_this_client_are_accepted(
    driver: OidcDriver,
) -> None:
    claims = {"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID}
    login = await log_in(driver, Scenario(claims=claims))
    assert (await finish(driver, login)).subject == "person-42"


@pytest.mark.parametrize("issuer", ["https://evil.example", None])
async def test_a_token_from_another_issuer_is_refused(
    driver: OidcDriver, issuer: str | None
) -> None:
    login = await log_in(driver, Scenario(claims={"iss": issuer}))
    assert await refusal(driver, login) == "wrong_issuer"


@pytest.mark.parametrize("signing", ["foreign_key", "unknown_kid", "none", "hs256_client_secret"])
async def test_a_token_not_signed_by_the_provider_key_is_refused(
    driver: OidcDriver, signing: Any
) -> None:
    login = await log_in(driver, Scenario(signing=signing))
    assert await refusal(driver, login) == "bad_signature"


async def test_an_old_authentication_is_refused(driver: OidcDriver) -> None:
    # Default max_auth_age is 300 s (plus 30 s skew): ten minutes is too old.
    login = await log_in(driver, Scenario(auth_time=datetime.now(UTC) - timedelta(minutes=10)))
    assert await refusal(driver, login) == "auth_too_old"


async def test_a_token_without_auth_time_is_refused_when_max_age_was_asked(
    driver: OidcDriver,
) -> None:
    # OIDC Core 3.1.2.1: the request carried max_age, so the token must say when the person
    # logged in; without it a days-old session at the provider would pass for a fresh login.
    login = await log_in(driver, Scenario(claims={"auth_time": None}))
    assert await refusal(driver, login) == "auth_time_missing"


async def test_an_authentication_in_the_future_is_refused(driver: OidcDriver) -> None:
    login = await log_in(driver, Scenario(auth_time=datetime.now(UTC) + timedelta(minutes=10)))
    assert await refusal(driver, login) == "token_invalid"


@pytest.mark.parametrize("claims", [{"sub": None}, {"sub": ""}, {"exp": None}, {"iat": "now"}])
async def test_a_token_missing_required_claims_is_refused(
    driver: OidcDriver, claims: Mapping[str, Any]
) -> None:
    login = await log_in(driver, Scenario(claims=claims))
    assert await refusal(driver, login) == "token_invalid"


async def test_a_code_works_once(driver: OidcDriver) -> None:
    login = await log_in(driver)
    await finish(driver, login)
    assert await refusal(driver, login) == "exchange_failed"


async def test_an_unknown_code_is_refused(driver: OidcDriver) -> None:
    login = await log_in(driver)
    assert await refusal(driver, login, code=secrets.token_urlsafe(32)) == "exchange_failed"


async def test_a_code_with_the_wrong_pkce_verifier_is_refused(driver: OidcDriver) -> None:
    # controlled: oidc-provider-mock does not enforce PKCE; the scripted provider does.
    login = await log_in(driver, Scenario(controlled=True))
    other_verifier = secrets.token_urlsafe(48)
    assert await refusal(driver, login, code_verifier=other_verifier) == "exchange_failed"


async def test_an_unreachable_provider_cannot_start(driver: OidcDriver) -> None:
    with pytest.raises(OidcError) as info:
        await driver.client.start(driver.unreachable_provider())
    assert info.value.code == "provider_unavailable"


async def test_a_provider_gone_between_start_and_callback_is_unavailable(
    driver: OidcDriver,
) -> None:
    login = await log_in(driver, Scenario(controlled=True))
    driver.take_down(login.provider)
    assert await refusal(driver, login) == "provider_unavailable"


async def test_no_secret_reaches_the_logs(
    driver: OidcDriver, caplog: pytest.LogCaptureFixture
) -> None:
    refused = await log_in(driver, Scenario(claims={"aud": "another-client"}))
    accepted = await log_in(driver)
    # Only what happens inside finish: the test's own browser logs the authorization URL.
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        await refusal(driver, refused)
        await finish(driver, accepted)
        await refusal(driver, accepted)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in refused.secrets() + accepted.secrets():
        assert secret not in logged


# --- what only the HTTP client has: discovery and the JWKS cache -------------------------------


async def test_a_discovery_document_naming_another_issuer_is_refused(
    providers: tuple[MockProviderProcess, ScriptedProvider],
) -> None:
    mock, scripted = providers
    provider = scripted.add_tenant(Tenant(subject="x", discovery_issuer=mock.issuer))
    real = RealDriver(mock, scripted)
    try:
        with pytest.raises(OidcError) as info:
            await real.client.start(provider)
        assert info.value.code == "wrong_issuer"
    finally:
        await real.aclose()


async def test_the_jwks_is_cached_and_refetched_once_when_the_provider_rotates_its_key(
    providers: tuple[MockProviderProcess, ScriptedProvider],
) -> None:
    mock, scripted = providers
    tenant = Tenant(subject="person-42")
    provider = scripted.add_tenant(tenant)
    real = RealDriver(mock, scripted)
    scenario = Scenario(controlled=True)

    async def complete_login() -> VerifiedIdentity:
        request = await real.client.start(provider)
        code, state = await real.log_in(provider, request, scenario)
        return await real.client.finish(
            provider,
            code=code,
            state=state,
            expected_state=request.state,
            nonce=request.nonce,
            code_verifier=request.code_verifier,
            now=datetime.now(UTC),
        )

    try:
        await complete_login()
        await complete_login()
        assert tenant.jwks_requests == 1
        scripted.key = new_es256_key()
        assert (await complete_login()).subject == "person-42"
        assert tenant.jwks_requests == 2
    finally:
        await real.aclose()


# --- the shared ID token check -------------------------------------------------------------------


def test_a_token_labelled_eddsa_verifies_without_a_warning() -> None:
    # Providers still sign with the pre-RFC 9864 name; joserfc warns on it, which with
    # filterwarnings=error would refuse every such login.
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})
    now = datetime.now(UTC)
    claims = {
        "iss": "https://idp.example",
        "sub": "person-42",
        "aud": CLIENT_ID,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 600,
        "nonce": "n-1",
        "auth_time": int(now.timestamp()),
    }
    with pytest.warns(SecurityWarning):
        token = jwt.encode({"alg": "EdDSA", "kid": "k1"}, claims, key, ["EdDSA"])
    keys = KeySet([OKPKey.import_key(key.as_dict(private=False))])
    expect = IdTokenExpectations(
        issuer="https://idp.example", client_id=CLIENT_ID, nonce="n-1", now=now
    )
    assert verify_id_token(token, keys, expect).subject == "person-42"
