"""Challenges and proofs over HTTP: TOTP (RFC6238-5.2/6, ASVS4-2.8.5), recovery codes
(NIST-63B4-4.2.1), SMS (NIST-63B4-3.1.3, OWASP-FP-4/5), throttling without lockout
(NIST-63B4-3.2.2, OWASP-FP-15), factor accounting and approval with notification (NIST-63B4-4.6)."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from policy.model import Method
from service import dto
from service.domain import ChallengeNotFound, ProofMissing, ProofRejected, Throttled
from service.flows import challenges
from service.group_commit import GroupCommit
from service.methods import totp
from service.methods.totp import TotpParameters, code_at
from service.persistence.challenges import ChallengeRepository
from tests.service.conftest import PERSONA_REQUEST, Api, _api

PARAMS = TotpParameters()
VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "policy" / "rfc6238-totp.json").read_text()
)


def previous_step() -> datetime:
    """A moment in the TOTP step before the current one, not within 3 s of a step change: the
    server must see the same current step when it checks (accepted: {T-1, T}); on a loaded
    machine a request can take a second or two."""
    now = datetime.now(UTC)
    into_step = now.timestamp() % PARAMS.period
    if into_step > PARAMS.period - 3:
        time.sleep(PARAMS.period - into_step + 0.05)
        now = datetime.now(UTC)
    return now - timedelta(seconds=PARAMS.period)


def _enrol_totp(api: Api, account_id: str, at: datetime | None = None) -> str:
    h = api.headers()
    secret: str = api.client.post(f"/v1/accounts/{account_id}/totp", headers=h).json()["secret"]
    code = code_at(secret, at or datetime.now(UTC), PARAMS)
    r = api.client.post(f"/v1/accounts/{account_id}/totp/confirm", json={"code": code}, headers=h)
    assert r.status_code == 200, r.text
    return secret


def _request(api: Api, account_id: str, **context: Any) -> dict[str, Any]:
    body = copy.deepcopy(PERSONA_REQUEST)
    body["account_id"] = account_id
    body["context"].update(context)
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def _start(api: Api, request_id: str, method: str, **extra: Any) -> Any:
    return api.client.post(
        f"/v1/unlock-requests/{request_id}/challenges",
        json={"method": method, **extra},
        headers=api.headers(),
    )


def _verify(api: Api, request_id: str, challenge_id: str, **proof: Any) -> Any:
    return api.client.post(
        f"/v1/unlock-requests/{request_id}/challenges/{challenge_id}/verify",
        json=proof,
        headers=api.headers(),
    )


def _sms_code(api: Api) -> str:
    match = re.search(r"\b(\d{6})\b", api.sms.sent[-1].message)
    assert match, "no code in the text message"
    return match.group(1)


def _phone(api: Api, account_id: str) -> None:
    r = api.client.put(
        f"/v1/accounts/{account_id}/phone", json={"phone": "+8613800005678"}, headers=api.headers()
    )
    assert r.status_code == 200


# --- TOTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS["vectors"] if v["algorithm"] == "SHA1"],
    ids=lambda v: str(v["unix_time"]),
)
def test_rfc6238_vectors_end_to_end_through_enrolment_and_verify(
    sqlite_api: Api, vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = sqlite_api
    secret = base64.b32encode(bytes.fromhex(VECTORS["keys_hex"]["SHA1"])).decode()
    monkeypatch.setattr(totp, "new_secret", lambda: secret)
    moment = datetime.fromtimestamp(vector["unix_time"], UTC)
    # Enrol one step earlier, so the vector's own step is still unused when it is verified.
    api.set_clock(lambda: moment - timedelta(seconds=30))
    account = f"acct-rfc-{vector['unix_time']}"
    assert _enrol_totp(api, account, at=moment - timedelta(seconds=30)) == secret
    api.set_clock(lambda: moment)
    decision = _request(api, account)
    assert "totp" in [m["method"] for m in decision["offer"]["methods"]]
    challenge = _start(api, decision["id"], "totp").json()
    # The project's 6-digit code is the RFC's 8-digit value truncated (RFC 4226 §5.3).
    r = _verify(api, decision["id"], challenge["id"], code=vector["totp"][-6:])
    assert r.status_code == 200, r.text
    assert r.json()["factors_satisfied"] == ["totp"]
    assert r.json()["status"] == "approved"


def test_totp_code_is_accepted_once_and_a_replay_is_refused(sqlite_api: Api) -> None:
    api = sqlite_api
    secret = _enrol_totp(api, "acct-t", at=previous_step())
    decision = _request(api, "acct-t")
    first = _start(api, decision["id"], "totp").json()
    code = code_at(secret, datetime.now(UTC), PARAMS)
    assert _verify(api, decision["id"], first["id"], code=code).status_code == 200
    second_request = _request(api, "acct-t")
    second = _start(api, second_request["id"], "totp").json()
    replay = _verify(api, second_request["id"], second["id"], code=code)
    assert replay.status_code == 422
    assert replay.json()["reason"] == "code_reused"


def test_concurrent_sms_starts_on_one_request_make_one_challenge(api: Api) -> None:
    """Two starts of SMS on one request at the same moment: one challenge, the second a resend
    of it (its attempts shared), never two challenges with attempts of their own each."""
    import asyncio

    _phone(api, "acct-two-starts")
    decision = _request(api, "acct-two-starts")

    async def both() -> list[dto.ChallengeOut]:
        start = challenges.start
        return list(
            await asyncio.gather(
                *(start(api.ctx, "test", decision["id"], Method.SMS, None) for _ in range(2))
            )
        )

    started = api.run(both)
    assert started[0].id == started[1].id
    assert api.count(f"challenges WHERE unlock_request_id = '{decision['id']}'") == 1


def test_a_replayed_totp_code_is_refused_and_its_holder_told(api: Api) -> None:
    """ASVS4-2.8.5: a TOTP code used again is logged and refused, and the holder of the device
    is told (a text to the phone on file, with no code and no reason in it)."""
    from service.outbox import NOTICES

    _phone(api, "acct-told")
    secret = _enrol_totp(api, "acct-told", at=previous_step())
    decision = _request(api, "acct-told")
    first = _start(api, decision["id"], "totp").json()
    code = code_at(secret, datetime.now(UTC), PARAMS)
    assert _verify(api, decision["id"], first["id"], code=code).status_code == 200
    sent_before = len(api.sms.sent)
    again = _request(api, "acct-told")
    second = _start(api, again["id"], "totp").json()
    replay = _verify(api, again["id"], second["id"], code=code)
    assert replay.status_code == 422
    assert replay.json()["reason"] == "code_reused"
    text = NOTICES["notify_code_reused"]["zh-CN"]  # PERSONA_REQUEST's locale
    api.deliver_outbox(until=lambda: any(m.message == text for m in api.sms.sent))
    told = [m for m in api.sms.sent[sent_before:] if m.message == text]
    assert len(told) == 1
    assert told[0].to == "+8613800005678"
    assert code not in told[0].message
    # A wrong code is no reason to tell anyone, and a replay within the hour is told already.
    third = _start(api, again["id"], "totp").json()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert _verify(api, again["id"], third["id"], code=wrong).status_code == 422
    assert _verify(api, again["id"], third["id"], code=code).json()["reason"] == "code_reused"
    assert api.count("outbox_events WHERE kind = 'notify_code_reused'") == 1


def test_a_proof_on_a_challenge_with_no_attempt_left_is_refused_before_it_is_judged(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch reads its challenges under the serialisation of the accounts' attempts: one
    whose attempts are all counted (here by another worker, as open) refuses the proof before
    its code is checked, so the limits bound the guesses evaluated (NIST-63B4-3.2.2)."""
    secret = _enrol_totp(api, "acct-spent-before", at=previous_step())
    decision = _request(api, "acct-spent-before")
    challenge = _start(api, decision["id"], "totp").json()["id"]

    async def spend() -> None:
        async with api.ctx.engine.begin() as conn:
            await conn.execute(
                text("UPDATE challenges SET attempts = :n WHERE id = :id"),
                {"n": api.ctx.policy.limits.challenge_attempts, "id": challenge},
            )

    api.run(spend)
    judged: list[str] = []
    check = challenges.AT_ONCE[Method.TOTP]

    async def spy(*args: Any) -> Any:
        judged.append("totp")
        return await check(*args)

    monkeypatch.setitem(challenges.AT_ONCE, Method.TOTP, spy)
    refused = _verify(
        api, decision["id"], challenge, code=code_at(secret, datetime.now(UTC), PARAMS)
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["challenge_status"] == "failed"
    assert judged == []


def test_a_right_code_whose_attempt_cannot_be_counted_is_refused_and_stays_unused(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accepted proof counts its attempt with the challenge's completion (one statement,
    challenges.reserve_and_complete), after its code was judged and its TOTP step used: when
    the count is refused all the same (the challenge spent after the batch read it; here in
    the batch's own transaction, as only a writer outside the serialisation could), the proof
    is refused as the challenge is closed and its savepoint takes the step back, so the code
    still works on a new challenge."""
    secret = _enrol_totp(api, "acct-spent", at=previous_step())
    decision = _request(api, "acct-spent")
    challenge = _start(api, decision["id"], "totp").json()["id"]
    spend = text("UPDATE challenges SET attempts = :n WHERE id = :id")
    params = {"n": api.ctx.policy.limits.challenge_attempts, "id": challenge}
    read_for = challenges._read_for

    async def read_then_spend(conn: AsyncConnection, batch: Any) -> challenges.ProofReads:
        reads = await read_for(conn, batch)
        await conn.execute(spend, params)
        return reads

    code = code_at(secret, datetime.now(UTC), PARAMS)
    monkeypatch.setattr(challenges, "_read_for", read_then_spend)
    refused = _verify(api, decision["id"], challenge, code=code)
    monkeypatch.setattr(challenges, "_read_for", read_for)
    assert refused.status_code == 409, refused.text
    assert refused.json()["challenge_status"] == "failed"
    fresh = _start(api, decision["id"], "totp").json()["id"]
    accepted = _verify(api, decision["id"], fresh, code=code)
    assert accepted.status_code == 200, accepted.text


def test_wrong_codes_count_down_and_close_the_challenge(sqlite_api: Api) -> None:
    api = sqlite_api
    secret = _enrol_totp(api, "acct-w", at=previous_step())
    decision = _request(api, "acct-w")
    challenge = _start(api, decision["id"], "totp").json()
    right = code_at(secret, datetime.now(UTC), PARAMS)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    lefts = []
    for _ in range(5):
        r = _verify(api, decision["id"], challenge["id"], code=wrong)
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "proof_rejected"
        assert r.json()["appeal_path"].endswith("/appeals")
        lefts.append(r.json()["attempts_left"])
    assert lefts == [4, 3, 2, 1, 0]
    closed = _verify(api, decision["id"], challenge["id"], code=right)
    assert closed.status_code == 409
    assert closed.json()["code"] == "challenge_closed"


def test_failures_pause_the_method_not_the_account(sqlite_api: Api) -> None:
    api = sqlite_api
    _enrol_totp(api, "acct-f", at=previous_step())
    _phone(api, "acct-f")
    decision = _request(api, "acct-f")
    limit = api.ctx.policy.limits.method_failures_per_day
    failures = 0
    while failures < limit:
        challenge = _start(api, decision["id"], "totp").json()
        for _ in range(min(5, limit - failures)):
            assert _verify(api, decision["id"], challenge["id"], code="000000").status_code in (
                422,
                409,
            )
            failures += 1
    throttled = _start(api, decision["id"], "totp")
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    assert throttled.json()["appeal_path"].endswith("/appeals")
    # No lockout: SMS still starts, and a person has been asked to look.
    assert _start(api, decision["id"], "sms").status_code == 201
    now = api.client.get(f"/v1/unlock-requests/{decision['id']}", headers=api.headers()).json()
    assert "REPEATED_FAILURES" in {r["code"] for r in now["review"]["reasons"]}
    # Later requests carry the failures and show the paused method with its reason.
    later = _request(api, "acct-f")
    assert "RECENT_FAILED_VERIFICATIONS" in {r["code"] for r in later["risk"]["reasons"]}
    assert {"method": "totp", "reason": "THROTTLED"}.items() <= next(
        n for n in later["offer"]["not_offered"] if n["method"] == "totp"
    ).items()


def test_failures_from_one_network_pause_proofs_from_it_for_every_account(
    sqlite_api: Api,
) -> None:
    """The per-source throttle (OWASP-FP-15): failures spread over many accounts from one address
    add up; past the hourly limit a proof from there is refused before it is checked."""
    api = sqlite_api
    limits = api.ctx.policy.limits
    per_account = limits.method_failures_per_day - 1  # never the per-account limit
    # An account that never fails, with a challenge started before the failures add up.
    secret = _enrol_totp(api, "acct-src-last", at=previous_step())
    request_id = _request(api, "acct-src-last")["id"]
    challenge = _start(api, request_id, "totp").json()
    failures, n = 0, 0
    while failures < limits.source_failures_per_hour:
        account = f"acct-src-{n}"
        n += 1
        _enrol_totp(api, account, at=previous_step())
        failing = _request(api, account)["id"]  # every request comes from one address
        done = 0
        while done < per_account and failures < limits.source_failures_per_hour:
            started = _start(api, failing, "totp").json()
            for _ in range(min(limits.challenge_attempts, per_account - done)):
                r = _verify(api, failing, started["id"], code="000000")
                assert r.status_code == 422, r.text
                done += 1
                failures += 1
                if failures == limits.source_failures_per_hour:
                    break
    # Even the right code: the throttle is checked first, and this account never failed.
    r = _verify(api, request_id, challenge["id"], code=code_at(secret, datetime.now(UTC), PARAMS))
    assert r.status_code == 429, r.text
    assert "network" in r.json()["detail"]
    assert int(r.headers["retry-after"]) > 0
    assert _start(api, request_id, "totp").status_code == 429  # nothing starts from there either
    # From another address the same account proves itself.
    other = _request(api, "acct-src-last", ip="198.51.100.9")["id"]
    challenge = _start(api, other, "totp").json()
    r = _verify(api, other, challenge["id"], code=code_at(secret, datetime.now(UTC), PARAMS))
    assert r.status_code == 200, r.text


# --- recovery codes -------------------------------------------------------------------------


def test_recovery_code_works_once_and_the_count_goes_down(sqlite_api: Api) -> None:
    api = sqlite_api
    codes = api.client.post("/v1/accounts/acct-r/recovery-codes", headers=api.headers()).json()[
        "codes"
    ]
    decision = _request(api, "acct-r")
    challenge = _start(api, decision["id"], "recovery_code").json()
    r = _verify(api, decision["id"], challenge["id"], code=codes[3].lower())
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    assert (
        api.client.get("/v1/accounts/acct-r/methods", headers=api.headers()).json()[
            "recovery_codes_remaining"
        ]
        == 9
    )
    again = _request(api, "acct-r")
    challenge = _start(api, again["id"], "recovery_code").json()
    reused = _verify(api, again["id"], challenge["id"], code=codes[3])
    assert reused.status_code == 422


@pytest.mark.parametrize("kind", ["ten left", "one left", "right code", "unknown account"])
def test_a_recovery_code_check_always_costs_a_full_sets_argon2_work(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """OWASP-FP-1/2: counted, not timed. A wrong code for an account with one code left, or for
    an unknown one, and the right code (found first), each run exactly CODE_COUNT argon2
    verifications: the time tells neither whether the account exists nor how many codes remain."""
    from service.methods import recovery_codes

    api = sqlite_api
    account = "acct-unknown-rc" if kind == "unknown account" else "acct-rc-count"
    codes: list[str] = []
    if kind != "unknown account":
        codes = api.client.post(
            f"/v1/accounts/{account}/recovery-codes", headers=api.headers()
        ).json()["codes"]
    if kind == "one left":

        async def use_nine() -> None:
            async with api.app.state.engine.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE recovery_codes SET used_at = created_at WHERE id IN "
                        "(SELECT id FROM recovery_codes ORDER BY id LIMIT 9)"
                    )
                )

        api.run(use_nine)
    decision = _request(api, account)
    n = 0
    while "recovery_code" not in [m["method"] for m in decision["offer"]["methods"]]:
        # An unknown id whose phantom profile offers recovery codes (half of them do).
        assert kind == "unknown account", decision["offer"]
        n += 1
        decision = _request(api, f"{account}-{n}")
    challenge = _start(api, decision["id"], "recovery_code").json()
    calls = []
    real = recovery_codes.matches

    def counted(code_hash: str, code: str) -> bool:
        calls.append(code_hash)
        return real(code_hash, code)

    monkeypatch.setattr(recovery_codes, "matches", counted)
    unused = api.count("recovery_codes WHERE used_at IS NULL")
    proof = codes[0] if kind == "right code" else "AAAA-BBBB-CCCC-DDDD"
    if kind == "one left":
        assert unused == 1
    r = _verify(api, decision["id"], challenge["id"], code=proof)
    assert r.status_code == (200 if kind == "right code" else 422), r.text
    assert len(calls) == recovery_codes.CODE_COUNT, (kind, len(calls))


# --- SMS --------------------------------------------------------------------------------------


def test_sms_alone_is_a_factor_but_not_enough_above_low_then_totp_approves(sqlite_api: Api) -> None:
    api = sqlite_api
    secret = _enrol_totp(api, "acct-s", at=previous_step())
    _phone(api, "acct-s")
    decision = _request(api, "acct-s")
    assert decision["risk"]["level"] == "medium"
    sms = _start(api, decision["id"], "sms")
    assert sms.status_code == 201
    assert sms.json()["target"] == "+86 138****5678"
    assert api.sms.sent[-1].to == "+8613800005678"
    r = _verify(api, decision["id"], sms.json()["id"], code=_sms_code(api))
    assert r.status_code == 200
    assert r.json()["factors_satisfied"] == ["sms"]
    assert r.json()["status"] == "pending_verification"
    t = _start(api, decision["id"], "totp").json()
    r = _verify(api, decision["id"], t["id"], code=code_at(secret, datetime.now(UTC), PARAMS))
    assert r.json()["status"] == "approved"
    assert sorted(r.json()["factors_satisfied"]) == ["sms", "totp"]


def test_sms_resend_replaces_the_code_and_keeps_the_failure_count(sqlite_api: Api) -> None:
    api = sqlite_api
    _phone(api, "acct-rs")
    api.client.post("/v1/accounts/acct-rs/recovery-codes", headers=api.headers())
    decision = _request(api, "acct-rs")
    first = _start(api, decision["id"], "sms").json()
    old_code = _sms_code(api)
    wrong = f"{(int(old_code) + 1) % 1_000_000:06d}"
    assert _verify(api, decision["id"], first["id"], code=wrong).json()["attempts_left"] == 4
    second = _start(api, decision["id"], "sms").json()
    assert second["id"] == first["id"]
    assert second["attempts_left"] == 4
    new_code = _sms_code(api)
    if new_code != old_code:
        stale = _verify(api, decision["id"], first["id"], code=old_code)
        assert stale.status_code == 422
        assert stale.json()["attempts_left"] == 3
    assert _verify(api, decision["id"], first["id"], code=new_code).status_code == 200


def test_sms_sends_per_destination_are_limited(sqlite_api: Api) -> None:
    api = sqlite_api
    _phone(api, "acct-p")
    decision = _request(api, "acct-p")
    per_hour = api.ctx.policy.limits.sms_sends_per_hour
    for _ in range(per_hour):
        assert _start(api, decision["id"], "sms").status_code == 201
    limited = _start(api, decision["id"], "sms")
    assert limited.status_code == 429
    assert 0 < int(limited.headers["retry-after"]) <= 3600
    assert len(api.sms.sent) == per_hour


def test_unknown_account_challenges_look_the_same_and_never_succeed(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _request(api, "acct-ghost")
    sms = _start(api, decision["id"], "sms")
    assert sms.status_code == 201
    assert re.fullmatch(r"\+86 13\d\*{4}\d{4}", sms.json()["target"])
    assert api.sms.sent == []  # nothing is ever sent for an unknown account
    for code in ("000000", "123456"):
        r = _verify(api, decision["id"], sms.json()["id"], code=code)
        assert r.status_code == 422
        assert r.json()["code"] == "proof_rejected"


def test_a_method_not_offered_cannot_be_started(sqlite_api: Api) -> None:
    api = sqlite_api
    _phone(api, "acct-n")
    decision = _request(api, "acct-n")
    r = _start(api, decision["id"], "totp")
    assert r.status_code == 409
    assert r.json()["code"] == "method_not_offered"
    face = _start(api, decision["id"], "face")
    assert face.status_code == 409


def test_proof_fields_are_validated(sqlite_api: Api) -> None:
    api = sqlite_api
    codes = api.client.post("/v1/accounts/acct-v/recovery-codes", headers=api.headers()).json()[
        "codes"
    ]
    decision = _request(api, "acct-v")
    challenge = _start(api, decision["id"], "recovery_code").json()
    missing = _verify(api, decision["id"], challenge["id"])
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["field"] == "code"
    image = _verify(api, decision["id"], challenge["id"], code=codes[0], image="iVBORw0KGgo=")
    assert image.status_code == 400
    assert "image" in image.json()["errors"][0]["field"]


# --- approval, outbox and the person's notice ---------------------------------------------------


def test_approval_queues_the_webhook_and_notifies_the_person(sqlite_api: Api) -> None:
    api = sqlite_api
    secret = _enrol_totp(api, "acct-a", at=previous_step())
    _phone(api, "acct-a")
    decision = _request(api, "acct-a")
    t = _start(api, decision["id"], "totp").json()
    assert (
        _verify(
            api, decision["id"], t["id"], code=code_at(secret, datetime.now(UTC), PARAMS)
        ).json()["status"]
        == "approved"
    )
    assert api.count("outbox_events") == 2
    api.deliver_outbox(
        until=lambda: any("unlocked" in m.message or "解封" in m.message for m in api.sms.sent)
    )
    notices = [m for m in api.sms.sent if "unlocked" in m.message or "解封" in m.message]
    assert len(notices) == 1
    assert notices[0].to == "+8613800005678"
    assert not re.search(r"\b\d{6}\b", notices[0].message), "a notice carries no code"


# --- races ---------------------------------------------------------------------------------


def test_the_same_valid_code_from_many_clients_succeeds_exactly_once(api: Api) -> None:
    secret = _enrol_totp(api, "acct-race", at=previous_step())
    decision = _request(api, "acct-race")
    challenge = _start(api, decision["id"], "totp").json()
    code = code_at(secret, datetime.now(UTC), PARAMS)
    ctx = api.ctx

    async def attempt() -> str:
        try:
            await challenges.verify(
                ctx, "race", decision["id"], challenge["id"], dto.VerifyIn(code=code)
            )
        except ProofRejected:
            return "rejected"
        except Exception as exc:  # a closed challenge is the other way to lose
            return type(exc).__name__
        return "accepted"

    async def race() -> list[str]:
        return await asyncio.gather(*(attempt() for _ in range(20)))

    outcomes = api.run(race)
    assert outcomes.count("accepted") == 1, outcomes


# --- brute force ---------------------------------------------------------------------------------


def test_guessing_a_six_digit_sms_code_within_a_day_is_bounded_by_the_limits(
    sqlite_api: Api,
) -> None:
    limits = sqlite_api.ctx.policy.limits
    # Every wrong guess is a recorded failure of the method; at the daily limit the method pauses
    # for 24 h. One more guess can land as the limit is reached, so at most limit + 1 guesses a day,
    # each against a fresh uniformly random code of 10**6 values.
    guesses_per_day = limits.method_failures_per_day + 1
    bound = guesses_per_day / 10**challenges.SMS_CODE_DIGITS
    assert bound <= 1e-4, bound


def test_every_method_is_checked_in_exactly_one_way() -> None:
    """A proof runs at once (one transaction) or in three phases: each method in one table, so the
    three-phase path never meets a method it has no checker for."""
    at_once, phased = set(challenges.AT_ONCE), set(challenges.CHECKERS)
    assert at_once.isdisjoint(phased)
    assert at_once | phased == set(Method)
    assert at_once == {Method.TOTP, Method.SMS}  # the checks that are microseconds of CPU


def _open_totp_challenge(api: Api, account_id: str) -> tuple[str, str, str]:
    """(secret, request id, challenge id) of a new TOTP challenge on a confirmed enrolment."""
    secret = _enrol_totp(api, account_id, at=previous_step())
    decision = _request(api, account_id)
    return secret, decision["id"], _start(api, decision["id"], "totp").json()["id"]


def _prove_together(
    api: Api, proofs: list[tuple[str, str, dto.VerifyIn]]
) -> tuple[list[Any], list[int]]:
    """Submit (request id, challenge id, proof) concurrently through a group commit of proofs
    that records its batch sizes: each outcome (the answer or the error) and the sizes."""
    batches: list[int] = []

    async def recording(conn: Any, batch: Any) -> Any:
        batches.append(len(batch))
        return await challenges.prove_batch(conn, batch)

    ctx = dataclasses.replace(api.ctx, proofs=GroupCommit(api.ctx.engine, recording))

    async def attempt(request_id: str, challenge_id: str, proof: dto.VerifyIn) -> Any:
        try:
            return await challenges.verify(ctx, "batch", request_id, challenge_id, proof)
        except Exception as exc:
            return exc

    async def together() -> list[Any]:
        return await asyncio.gather(*(attempt(*p) for p in proofs))

    outcomes: list[Any] = api.run(together)
    return outcomes, batches


def test_concurrent_proofs_share_a_commit_yet_each_gets_its_own_outcome(api: Api) -> None:
    """Proofs commit in groups (challenges.proof_batches): the accepted one is approved, the
    rejected one's attempt counts, the malformed one counts against no one, and the unknown
    challenge is a 404 — as if each had its own transaction."""
    limit = api.ctx.policy.limits.challenge_attempts
    ready = {
        name: _open_totp_challenge(api, f"acct-batch-{name}")
        for name in ("right", "wrong", "missing")
    }
    other = _request(api, "acct-batch-none")["id"]
    code = code_at(ready["right"][0], datetime.now(UTC), PARAMS)
    wrong = f"{(int(code_at(ready['wrong'][0], datetime.now(UTC), PARAMS)) + 1) % 10**6:06d}"
    (accepted, rejected, missing, unknown), batches = _prove_together(
        api,
        [
            (*ready["right"][1:], dto.VerifyIn(code=code)),
            (*ready["wrong"][1:], dto.VerifyIn(code=wrong)),
            (*ready["missing"][1:], dto.VerifyIn()),
            (other, "00000000-0000-0000-0000-000000000000", dto.VerifyIn(code=code)),
        ],
    )
    assert max(batches) > 1, batches  # they did share a transaction
    assert isinstance(accepted, dto.DecisionOut)
    assert accepted.status == "approved"
    assert isinstance(rejected, ProofRejected)
    assert rejected.extra["attempts_left"] == limit - 1
    assert isinstance(missing, ProofMissing)
    assert isinstance(unknown, ChallengeNotFound)
    # What committed: the rejected attempt counts, the malformed proof did not.
    again = _verify(api, *ready["wrong"][1:], code=wrong)
    assert again.json()["attempts_left"] == limit - 2
    again = _verify(api, *ready["missing"][1:], code=wrong)
    assert again.json()["attempts_left"] == limit - 1
    r = api.client.get(f"/v1/unlock-requests/{ready['right'][1]}", headers=api.headers())
    assert r.json()["status"] == "approved"


def test_two_requests_of_one_account_in_one_batch_accept_a_code_once(api: Api) -> None:
    """A batch reads its proofs' enrolments together (challenges.ProofReads), so the second
    proof of one account sees the step as it was before the first: the conditional step update
    still lets exactly one of them use the code (ASVS4-2.8.5)."""
    secret = _enrol_totp(api, "acct-twice", at=previous_step())
    pairs = []
    for _ in range(2):
        decision = _request(api, "acct-twice")
        pairs.append((decision["id"], _start(api, decision["id"], "totp").json()["id"]))
    code = code_at(secret, datetime.now(UTC), PARAMS)
    outcomes, batches = _prove_together(api, [(*pair, dto.VerifyIn(code)) for pair in pairs])
    assert batches == [2]  # one batch: the case the shared read must get right
    accepted = [o for o in outcomes if isinstance(o, dto.DecisionOut)]
    rejected = [o for o in outcomes if isinstance(o, ProofRejected)]
    assert len(accepted) == 1, outcomes
    assert len(rejected) == 1, outcomes
    assert rejected[0].extra["reason"] == "code_reused"


def test_a_failure_in_a_batch_counts_against_the_proofs_after_it(api: Api) -> None:
    """A batch reads the throttles' failures once for all its proofs (challenges.FailureBook):
    a proof that fails in the batch must count for the proofs judged after it, as a read at
    their turn in the same transaction would (NIST-63B4-3.2.2): here it is the account's last
    allowed failure, so the next proof is throttled even with the right code."""
    secret = _enrol_totp(api, "acct-book", at=previous_step())
    limit = api.ctx.policy.limits.method_failures_per_day
    failing = _request(api, "acct-book")["id"]
    for failures in range(limit - 1):
        if failures % api.ctx.policy.limits.challenge_attempts == 0:
            challenge = _start(api, failing, "totp").json()["id"]
        assert _verify(api, failing, challenge, code="000000").status_code == 422
    pairs = []
    for _ in range(2):
        decision = _request(api, "acct-book")
        pairs.append((decision["id"], _start(api, decision["id"], "totp").json()["id"]))
    code = code_at(secret, datetime.now(UTC), PARAMS)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    outcomes, batches = _prove_together(
        api, [(*pairs[0], dto.VerifyIn(wrong)), (*pairs[1], dto.VerifyIn(code))]
    )
    assert batches == [2]  # one batch: the case the shared read must get right
    rejected, throttled = outcomes
    assert isinstance(rejected, ProofRejected), outcomes
    assert isinstance(throttled, Throttled), outcomes
    assert "today" in str(throttled)


@pytest.fixture
def api_without_integrator(tmp_path: Path, database_url: str) -> Any:
    """No background integrator: an entry in the log got there with the write that made it."""
    yield from _api(tmp_path, database_url, audit_integrator=False)


def _written(api: Api, mentioned: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The entries whose data mention an id: those in the log, and those queued in the inbox."""

    async def read() -> tuple[list[Any], list[Any]]:
        async with api.ctx.engine.connect() as conn:
            leaves = (await conn.execute(text("SELECT leaf FROM audit_log ORDER BY seq"))).all()
            queued = (await conn.execute(text("SELECT payload FROM audit_inbox ORDER BY id"))).all()
        return [bytes(r[0]) for r in leaves], [bytes(r[0]) for r in queued]

    leaves, queued = api.run(read)

    def about(raw: list[bytes]) -> list[dict[str, Any]]:
        entries = [json.loads(r) for r in raw]
        return [e for e in entries if mentioned in json.dumps(e["data"])]

    return about(leaves), about(queued)


def _attempts(entries: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["outcome"] for e in entries if e["kind"] == "verification_attempt"]


def test_a_proofs_audit_entries_commit_with_it(api_without_integrator: Api) -> None:
    """A batch of proofs writes its entries itself (audit_trail.DirectEntries), in the
    transaction that commits the proofs: on SQLite integrated into the log, on PostgreSQL queued
    in the inbox for the integrator (none runs here). A rejected attempt, an accepted one and the
    approval are there before their answers return."""
    api = api_without_integrator
    sqlite = api.ctx.engine.dialect.name == "sqlite"
    secret = _enrol_totp(api, "acct-logged", at=previous_step())
    decision = _request(api, "acct-logged")
    challenge = _start(api, decision["id"], "totp").json()["id"]
    right = code_at(secret, datetime.now(UTC), PARAMS)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert _verify(api, decision["id"], challenge, code=wrong).status_code == 422
    logged, queued = _written(api, challenge)
    assert _attempts(logged if sqlite else queued) == ["failure"]
    r = _verify(api, decision["id"], challenge, code=right)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    logged, queued = _written(api, challenge)
    assert _attempts(logged if sqlite else queued) == ["failure", "success"]
    assert _attempts(queued if sqlite else logged) == []
    logged, queued = _written(api, decision["id"])
    approval = {"unlock_request_id": decision["id"], "status": "approved", "via": "verification"}
    assert approval in [
        e["data"] for e in (logged if sqlite else queued) if e["kind"] == "decision"
    ]


def test_a_proof_that_fails_after_writing_its_entry_leaves_no_entry(
    api_without_integrator: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proof whose savepoint rolls back drops the entries it had added to the batch's, and
    the other proofs of the batch keep theirs. (The batch's planned writes fail first, at the
    outbox: the plan is taken back whole and the proofs are judged one at a time.)"""
    api = api_without_integrator
    ready = {name: _open_totp_challenge(api, f"acct-drop-{name}") for name in ("fails", "rejected")}

    async def broken_outbox(self: Any, events: Any) -> None:
        # After the accepted attempt's entry was added (approve_in writes the outbox first).
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(ChallengeRepository, "enqueue_at", broken_outbox)
    right = code_at(ready["fails"][0], datetime.now(UTC), PARAMS)
    wrong = f"{(int(code_at(ready['rejected'][0], datetime.now(UTC), PARAMS)) + 1) % 10**6:06d}"
    (failed, rejected), batches = _prove_together(
        api,
        [
            (*ready["fails"][1:], dto.VerifyIn(right)),
            (*ready["rejected"][1:], dto.VerifyIn(wrong)),
        ],
    )
    assert batches == [2]
    assert isinstance(failed, RuntimeError)
    assert isinstance(rejected, ProofRejected)
    for name, expected in (("fails", []), ("rejected", ["failure"])):
        logged, queued = _written(api, ready[name][2])
        assert _attempts(logged + queued) == expected, name


def test_the_answer_to_an_accepted_proof_is_the_request_as_a_read_returns_it(api: Api) -> None:
    """The answer is built from the decision the proof loaded, with the row the proof left
    (challenges._answer): it must say exactly what a GET of the request says afterwards."""
    secret = _enrol_totp(api, "acct-answer", at=previous_step())
    decision = _request(api, "acct-answer")
    challenge = _start(api, decision["id"], "totp").json()["id"]
    r = _verify(api, decision["id"], challenge, code=code_at(secret, datetime.now(UTC), PARAMS))
    assert r.status_code == 200, r.text
    read = api.client.get(f"/v1/unlock-requests/{decision['id']}", headers=api.headers())
    assert read.status_code == 200, read.text
    assert r.json() == read.json()
    assert r.json()["account_id"] == "acct-answer"
    assert r.json()["factors_satisfied"] == ["totp"]
