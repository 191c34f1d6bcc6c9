"""Linked real-name identity (OIDC, matched by `sub` only) and opt-in face (FRM-6/8/10/12,
NIST-63A4-3.1.13.2) through the unlock API, with the adapters' fakes (which pass the same contract
tests as the real adapters in tests/service/adapters)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import pytest

from tests.service.conftest import Api
from tests.service.test_challenges_api import _phone, _sms_code

SUBJECT = "248289761001"


def _bind(api: Api, account_id: str, *, real_name: bool = True) -> None:
    r = api.client.put(
        f"/v1/accounts/{account_id}/linked-identities/gov-eid",
        json={"subject": SUBJECT, "real_name_verified": real_name},
        headers=api.headers(),
    )
    assert r.status_code == 200


def _consent(api: Api, account_id: str) -> dict[str, Any]:
    version = api.client.get("/v1/face-consent/notice", headers=api.headers()).json()["version"]
    r = api.client.put(
        f"/v1/accounts/{account_id}/face-consent",
        json={"notice_version": version, "purpose": "account_unlock", "accepted": True},
        headers=api.headers(),
    )
    assert r.status_code == 200
    consent: dict[str, Any] = r.json()
    return consent


def _start(api: Api, request_id: str, method: str) -> Any:
    return api.client.post(
        f"/v1/unlock-requests/{request_id}/challenges",
        json={"method": method},
        headers=api.headers(),
    )


def _verify(api: Api, request_id: str, challenge_id: str, **proof: Any) -> Any:
    return api.client.post(
        f"/v1/unlock-requests/{request_id}/challenges/{challenge_id}/verify",
        json=proof,
        headers=api.headers(),
    )


# --- linked identity -------------------------------------------------------------------------


def test_linked_identity_round_trip_approves(api: Api) -> None:
    _bind(api, "acct-o")
    decision = api.create_unlock_request("acct-o")
    started = _start(api, decision["id"], "linked_identity")
    assert started.status_code == 201
    url = started.json()["authorization_url"]
    assert "code_challenge_method=S256" in url
    code, state = api.oidc.authorize(url, SUBJECT)
    r = _verify(api, decision["id"], started.json()["id"], code=code, state=state)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    assert r.json()["factors_satisfied"] == ["linked_identity"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("state", "state_mismatch"),
        ("subject", "other_subject"),
        ("nonce", "nonce_mismatch"),
        ("expired", "token_expired"),
        ("signature", "bad_signature"),
        ("issuer", "wrong_issuer"),
    ],
)
def test_linked_identity_refusals_carry_their_reason(
    sqlite_api: Api, tamper: str, reason: str
) -> None:
    api = sqlite_api
    _bind(api, "acct-x")
    decision = api.create_unlock_request("acct-x")
    started = _start(api, decision["id"], "linked_identity").json()
    subject = "someone-else" if tamper == "subject" else SUBJECT
    claims: dict[str, Any] | None = None
    if tamper == "nonce":
        claims = {"nonce": "not-the-challenge-nonce"}
    elif tamper == "expired":
        claims = {
            "exp": int(time.time()) - 3600,
            "iat": int(time.time()) - 7200,
            "auth_time": int(time.time()) - 7200,
        }
    elif tamper == "issuer":
        claims = {"iss": "http://127.0.0.1:9/evil"}
    signing: Literal["foreign_key", "provider"] = (
        "foreign_key" if tamper == "signature" else "provider"
    )
    code, state = api.oidc.authorize(
        started["authorization_url"], subject, claims=claims, signing=signing
    )
    if tamper == "state":
        state = state[::-1]
    r = _verify(api, decision["id"], started["id"], code=code, state=state)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == reason
    assert r.json()["attempts_left"] == 4


def test_an_unreachable_identity_provider_is_not_the_persons_failure(api: Api) -> None:
    """The provider down when the proof comes back: 503 (try again or use another method), and
    no failed attempt counted against the person or their daily limit, as for face."""
    _bind(api, "acct-down")
    decision = api.create_unlock_request("acct-down")
    started = _start(api, decision["id"], "linked_identity").json()
    code, state = api.oidc.authorize(started["authorization_url"], SUBJECT)
    api.oidc.take_down(api.ctx.oidc_providers["gov-eid"].issuer)
    r = _verify(api, decision["id"], started["id"], code=code, state=state)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "delivery_failed"
    assert api.count("verification_attempts") == 0


def test_a_slow_identity_provider_holds_no_database_lock(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting a linked-identity challenge may wait on the provider's discovery; meanwhile other
    writes go on (on SQLite the write lock is the whole service's: found held by a review)."""
    import asyncio

    import msgspec

    from policy.model import Method
    from service import dto
    from service.flows import challenges, unlock
    from tests.service.conftest import PERSONA_REQUEST

    _bind(api, "acct-slow")
    decision = api.create_unlock_request("acct-slow")
    ctx = api.ctx
    original = ctx.oidc.start

    async def scenario() -> dict[str, Any]:
        gate = asyncio.Event()

        async def slow(provider: Any) -> Any:
            await gate.wait()
            return await original(provider)

        monkeypatch.setattr(ctx.oidc, "start", slow)
        starting = asyncio.create_task(
            challenges.start(ctx, "test", decision["id"], Method.LINKED_IDENTITY, None)
        )
        await asyncio.sleep(0.05)  # the start now waits on the provider
        assert not starting.done()
        other = msgspec.convert(PERSONA_REQUEST | {"account_id": "acct-other"}, dto.UnlockRequestIn)
        made = await asyncio.wait_for(unlock.create(ctx, "test", other), timeout=5)
        gate.set()
        started = await starting
        return {"decision": made.decision.id, "challenge": started.id}

    done = api.run(scenario)
    assert done["decision"]
    assert done["challenge"]


def test_identity_that_is_not_real_name_verified_is_not_offered(sqlite_api: Api) -> None:
    _bind(sqlite_api, "acct-u", real_name=False)
    decision = sqlite_api.create_unlock_request("acct-u")
    assert "linked_identity" not in [m["method"] for m in decision["offer"]["methods"]]
    assert _start(sqlite_api, decision["id"], "linked_identity").status_code == 409


# --- face ----------------------------------------------------------------------------------------


def _attestation(api: Api, session: dict[str, Any], **overrides: Any) -> str:
    """The provider's signed verdict for a face session: its nonce, and the account's reference
    at the provider as ``sub``."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": api.face.provider,
        "aud": api.face.audience,
        "iat": now,
        "exp": now + 120,
        "nonce": session["nonce"],
        "sub": session["subject"],
        "result": "match",
        "liveness": "pass",
        "matcher_version": "m-2.1",
        **overrides,
    }
    return api.face.sign_attestation(claims)


def _enrol_for_face(api: Api, account_id: str) -> None:
    """A real-name identity, a phone and face consent: at the persona's medium risk, face can
    complete a text-message code (it never counts alone, and is not offered where every other
    method is enough alone)."""
    _bind(api, account_id)
    _phone(api, account_id)
    _consent(api, account_id)


def _face_ready(api: Api, account_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    _enrol_for_face(api, account_id)
    decision = api.create_unlock_request(account_id)
    assert decision["offer"]["methods"][-1]["method"] == "face"
    started = _start(api, decision["id"], "face")
    assert started.status_code == 201, started.text
    return decision, started.json()


def test_nist_63b4_3_2_3_face_counts_once_and_only_beside_a_non_biometric_proof(
    api: Api,
) -> None:
    decision, started = _face_ready(api, "acct-face")
    assert decision["risk"]["level"] == "medium"
    session = started["session"]
    assert session["audience"] == api.face.audience
    r = _verify(api, decision["id"], started["id"], attestation=_attestation(api, session))
    assert r.status_code == 200, r.text
    assert r.json()["factors_satisfied"] == ["face"]
    assert r.json()["status"] == "pending_verification", "face alone approved the request"
    sms = _start(api, decision["id"], "sms")
    assert sms.status_code == 201, sms.text
    r = _verify(api, decision["id"], sms.json()["id"], code=_sms_code(api))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    assert sorted(r.json()["factors_satisfied"]) == ["face", "sms"]


def test_consent_names_the_reference_the_provider_enrols_the_face_under(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    consent = _consent(api, "acct-ref-a")
    reference = consent["provider_subjects"][api.face.provider]
    assert consent["provider_subjects"] != _consent(api, "acct-ref-b")["provider_subjects"]
    methods = api.client.get("/v1/accounts/acct-ref-a/methods", headers=api.headers()).json()
    assert methods["face_consent"]["provider_subjects"] == consent["provider_subjects"]
    _, started = _face_ready(api, "acct-ref-a")
    assert started["session"]["subject"] == reference
    _withdraw(api, "acct-ref-a")
    methods = api.client.get("/v1/accounts/acct-ref-a/methods", headers=api.headers()).json()
    assert "provider_subjects" not in methods["face_consent"]


def test_a_genuine_match_of_another_persons_face_proves_nothing(sqlite_api: Api) -> None:
    """The attacker passes the provider's check with their own face, for the victim's challenge:
    signed, fresh, the right nonce, but matched against the attacker's enrolled face."""
    api = sqlite_api
    attacker = _consent(api, "acct-attacker")["provider_subjects"][api.face.provider]
    decision, started = _face_ready(api, "acct-victim")
    token = _attestation(api, started["session"], sub=attacker)
    r = _verify(api, decision["id"], started["id"], attestation=token)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "wrong_subject"
    now = api.client.get(f"/v1/unlock-requests/{decision['id']}", headers=api.headers()).json()
    assert now["factors_satisfied"] == []
    # Another person's face presented for this account: a person looks, as after a no_match.
    assert now["review"]["required"] is True
    assert "FACE_CHECK_FAILED" in {r["code"] for r in now["review"]["reasons"]}
    # Unsigned (or signed by another key), the same claims prove nothing and open no case.
    other = _attestation(api, started["session"], sub=attacker)
    forged = other.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1][::-1]
    decision2, started2 = _face_ready(api, "acct-victim-2")
    r = _verify(api, decision2["id"], started2["id"], attestation=forged)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "bad_signature"
    now = api.client.get(f"/v1/unlock-requests/{decision2['id']}", headers=api.headers()).json()
    assert now["review"]["required"] is False


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"nonce": "another-challenge"}, "nonce_mismatch"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"iat": int(time.time()) - 3600, "exp": int(time.time()) - 3000}, "expired"),
        ({"image": "iVBORw0KGgoAAAANSUhEUg=="}, "biometric_payload"),
        ({"evidence": {"template": [0.1, 0.2]}}, "biometric_payload"),
    ],
)
def test_face_attestation_refusals(sqlite_api: Api, change: dict[str, Any], reason: str) -> None:
    api = sqlite_api
    decision, started = _face_ready(api, f"acct-f-{reason}")
    token = _attestation(api, started["session"], **change)
    r = _verify(api, decision["id"], started["id"], attestation=token)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == reason


def test_a_replayed_attestation_is_refused(sqlite_api: Api) -> None:
    api = sqlite_api
    decision, started = _face_ready(api, "acct-replay")
    token = _attestation(api, started["session"])
    assert _verify(api, decision["id"], started["id"], attestation=token).status_code == 200
    assert _verify(api, decision["id"], started["id"], attestation=token).status_code == 409
    # On a new request's challenge the old nonce does not fit.
    later = api.create_unlock_request("acct-replay")
    second = _start(api, later["id"], "face").json()
    replay = _verify(api, later["id"], second["id"], attestation=token)
    assert replay.status_code == 422
    assert replay.json()["reason"] == "nonce_mismatch"


def test_a_face_mismatch_sends_the_case_to_a_person_and_keeps_other_methods_open(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    decision, started = _face_ready(api, "acct-mismatch")
    token = _attestation(api, started["session"], result="no_match")
    r = _verify(api, decision["id"], started["id"], attestation=token)
    assert r.status_code == 422
    assert r.json()["reason"] == "face_not_confirmed"
    now = api.client.get(f"/v1/unlock-requests/{decision['id']}", headers=api.headers()).json()
    assert now["review"]["required"] is True
    assert "FACE_CHECK_FAILED" in {r["code"] for r in now["review"]["reasons"]}
    # The non-biometric path is not blocked.
    linked = _start(api, decision["id"], "linked_identity")
    assert linked.status_code == 201
    code, state = api.oidc.authorize(linked.json()["authorization_url"], SUBJECT)
    assert (
        _verify(api, decision["id"], linked.json()["id"], code=code, state=state).json()["status"]
        == "approved"
    )


@pytest.mark.parametrize("consent", ["none", "withdrawn", "stale"])
def test_face_cannot_start_without_current_consent(sqlite_api: Api, consent: str) -> None:
    api = sqlite_api
    account = f"acct-c-{consent}"
    _bind(api, account)
    if consent == "withdrawn":
        _consent(api, account)
        api.client.delete(f"/v1/accounts/{account}/face-consent", headers=api.headers())
    if consent == "stale":
        _consent(api, account)
        api.app.state.ctx = dataclasses.replace(
            api.ctx, notice=dataclasses.replace(api.ctx.notice, version="2099-01-01.1")
        )
    decision = api.create_unlock_request(account)
    assert "face" not in [m["method"] for m in decision["offer"]["methods"]]
    r = _start(api, decision["id"], "face")
    assert r.status_code == 409
    assert r.json()["code"] == "method_not_offered"


def _withdraw(api: Api, account: str) -> None:
    r = api.client.delete(f"/v1/accounts/{account}/face-consent", headers=api.headers())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("change", ["withdrawn", "stale"])
def test_consent_withdrawn_after_the_decision_stops_a_face_challenge_from_starting(
    api: Api, change: str
) -> None:
    """FRM-6: consent is live. The decision offered face while consent was current; once it is
    withdrawn (or the notice changes) the offer no longer licenses face, and no session starts."""
    account = f"acct-late-{change}"
    _enrol_for_face(api, account)
    decision = api.create_unlock_request(account)
    assert decision["offer"]["methods"][-1]["method"] == "face"
    if change == "withdrawn":
        _withdraw(api, account)
    else:
        api.app.state.ctx = dataclasses.replace(
            api.ctx, notice=dataclasses.replace(api.ctx.notice, version="2099-01-01.1")
        )
    r = _start(api, decision["id"], "face")
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "face_consent_required"
    # The non-biometric methods of the same offer are untouched.
    assert _start(api, decision["id"], "linked_identity").status_code == 201


def test_consent_withdrawn_during_a_face_challenge_stops_its_result_from_counting(
    api: Api,
) -> None:
    """Withdrawn between the session's start and the proof: the attestation is not used (not
    counted as a factor, nor as a failed attempt) and the person can go on with other methods."""
    decision, started = _face_ready(api, "acct-withdraw-mid")
    _withdraw(api, "acct-withdraw-mid")
    token = _attestation(api, started["session"])
    r = _verify(api, decision["id"], started["id"], attestation=token)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "face_consent_required"
    now = api.client.get(f"/v1/unlock-requests/{decision['id']}", headers=api.headers()).json()
    assert now["factors_satisfied"] == []
    assert api.count("verification_attempts") == 0


def test_an_image_in_the_verify_body_is_refused(sqlite_api: Api) -> None:
    api = sqlite_api
    decision, started = _face_ready(api, "acct-img")
    r = _verify(
        api, decision["id"], started["id"], attestation="x.y.z", image="data:image/png;base64,AAAA"
    )
    assert r.status_code == 400
    big = _verify(api, decision["id"], started["id"], attestation="A" * 200_000)
    assert big.status_code == 413
