"""Human review over HTTP (issue 6): the full life of a case, four-eyes, automatic opening, the
person's view (PIPL-24, GDPR-22(3), NIST-63A4-3.1.6 / 3.1.13 / 3.1.13.1 / 3.1.13.2,
OWASP-FP-13) and bad input that changes nothing."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from audit.store import audit_inbox, audit_log
from service import review_dto as rdto
from service.domain import CaseNotClaimable
from service.flows import review
from service.persistence.api_keys import ApiKeyRepository, Role
from tests.service.conftest import PERSONA_REQUEST, Api
from tests.service.test_challenges_api import _enrol_totp, _start, _verify, previous_step
from tests.service.test_oidc_and_face_api import _attestation, _face_ready

PHONE = "+8613800005678"


def _phone(api: Api, account_id: str) -> None:
    r = api.client.put(
        f"/v1/accounts/{account_id}/phone", json={"phone": PHONE}, headers=api.headers()
    )
    assert r.status_code == 200, r.text


def _enrol(api: Api, account_id: str) -> None:
    # Two methods, so a request up to high risk has a path of its own and review opens only on
    # appeal; the account is one the service knows (else a phantom answers).
    methods = api.client.get(f"/v1/accounts/{account_id}/methods", headers=api.headers()).json()
    if methods["totp"] == "confirmed":
        return
    _phone(api, account_id)
    _enrol_totp(api, account_id, at=previous_step())


def _create(
    api: Api,
    account_id: str,
    *,
    level: str = "medium",
    known: bool = True,
    exact: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    if known:
        _enrol(api, account_id)
    body = copy.deepcopy(PERSONA_REQUEST)
    body["account_id"] = account_id
    body.update(extra)
    if level in ("high", "critical"):
        # From Shanghai an hour ago to Berlin now: impossible travel (a floor at high); over Tor
        # the score reaches critical.
        body["context"]["geo"] = {"country": "DE", "lat": 52.52, "lon": 13.40}
        body["context"]["last_login"]["at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        if level == "critical":
            body["context"]["network"] = "tor"
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    decision: dict[str, Any] = r.json()
    # Repeated requests add velocity and may raise the level: callers that repeat say so.
    assert not exact or decision["risk"]["level"] == level, decision["risk"]
    return decision


def _appeal(api: Api, request_id: str, **body: Any) -> Any:
    return api.client.post(
        f"/v1/unlock-requests/{request_id}/appeals", json=body, headers=api.headers()
    )


def _case_post(api: Api, case_id: str, what: str, role: Role, body: Any = None, **kw: Any) -> Any:
    headers = kw.get("headers") or api.headers(role)
    return api.client.post(f"/v1/review-cases/{case_id}/{what}", json=body, headers=headers)


def _decide(
    api: Api, case_id: str, role: Role, outcome: str, code: str, reason: str = "checked"
) -> Any:
    body = {"outcome": outcome, "reason_code": code, "reason": reason}
    return _case_post(api, case_id, "decision", role, body)


def _request_status(api: Api, request_id: str) -> dict[str, Any]:
    r = api.client.get(f"/v1/unlock-requests/{request_id}", headers=api.headers())
    assert r.status_code == 200
    result: dict[str, Any] = r.json()
    return result


def _audit_events(api: Api) -> list[dict[str, Any]]:
    """Every audit entry in log order: those integrated, then those still in the inbox."""

    async def read() -> list[dict[str, Any]]:
        async with api.app.state.engine.connect() as conn:
            logged = await conn.execute(select(audit_log.c.leaf).order_by(audit_log.c.seq))
            pending = await conn.execute(
                select(audit_inbox.c.payload)
                .where(audit_inbox.c.id.not_in(select(audit_log.c.inbox_id)))
                .order_by(audit_inbox.c.id)
            )
            return [json.loads(r[0]) for r in [*logged, *pending]]

    result: list[dict[str, Any]] = api.run(read)
    return result


def _extra_key(api: Api, role: Role, name: str) -> dict[str, str]:
    async def create() -> str:
        async with api.app.state.engine.begin() as conn:
            return await ApiKeyRepository(conn).create(role, name)

    return {"Authorization": f"Bearer {api.run(create)}"}


# --- the full life --------------------------------------------------------------------------


def test_full_life_appeal_claim_approve_at_high_risk_second_approver_confirms(api: Api) -> None:
    _enrol(api, "acct-life")
    decision = _create(api, "acct-life", level="high")
    request_id = decision["id"]
    assert decision["status"] == "pending_verification"

    opened = _appeal(api, request_id, statement="It is me, I am travelling.")
    assert opened.status_code == 201, opened.text
    case = opened.json()
    assert case["status"] == "in_review"
    assert case["contest_path"] == f"/v1/unlock-requests/{request_id}/appeals"
    # Idempotent: appealing again returns the same case.
    again = _appeal(api, request_id)
    assert again.status_code == 200
    assert again.json()["id"] == case["id"]
    seen = _request_status(api, request_id)
    assert seen["review"]["case_id"] == case["id"]
    assert "APPEALED" in {r["code"] for r in seen["review"]["reasons"]}

    claimed = _case_post(api, case["id"], "claim", Role.AGENT)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["assignee"] == "test-agent"
    approved = _decide(api, case["id"], Role.AGENT, "approve", "IDENTITY_CONFIRMED")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "awaiting_confirmation"
    assert approved.json()["first_reviewer"] == "test-agent"
    # Nothing is unlocked before the second reviewer.
    assert _request_status(api, request_id)["status"] == "pending_verification"
    assert api.count("outbox_events") == 0

    confirmed = _case_post(
        api, case["id"], "confirmation", Role.SUPERVISOR, {"agree": True, "reason": "agree"}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "closed"
    assert confirmed.json()["resolution"] == "approved"
    assert _request_status(api, request_id)["status"] == "approved"

    # The same outbox and notice as an automated approval.
    assert api.count("outbox_events") == 2
    api.deliver_outbox(until=lambda: any(m.to == PHONE for m in api.sms.sent))
    notices = [m for m in api.sms.sent if m.to == PHONE]
    assert len(notices) == 1

    # Audit entries, in order, with actors; the free text only as ciphertext.
    events = [
        e
        for e in _audit_events(api)
        if e["data"].get("unlock_request_id") == request_id
        and e["kind"] in ("decision", "review_opened", "review_action")
    ]
    steps = [
        (e["kind"], e["data"].get("action") or e["data"].get("status"), e["actor"]) for e in events
    ]
    assert steps == [
        ("decision", "pending_verification", "test-frontend"),
        ("review_opened", "opened", "test-frontend"),
        ("review_action", "claimed", "test-agent"),
        ("review_action", "decided", "test-agent"),
        ("review_action", "confirmed", "test-supervisor"),
        ("decision", "approved", "test-supervisor"),
    ]
    decided = events[3]["data"]
    assert decided["reason_code"] == "IDENTITY_CONFIRMED"
    assert "reason_ciphertext" in decided
    assert events[1]["data"]["escalation_reason"] == "applicant_request"
    assert "travelling" not in api.dump()  # the statement rests encrypted

    # The person's view: decided, approved, explained in their locale (zh-CN).
    status = api.client.get(
        f"/v1/unlock-requests/{request_id}/appeals/{case['id']}", headers=api.headers()
    ).json()
    assert status["status"] == "decided"
    assert status["outcome"]["decision"] == "approved"
    assert status["outcome"]["explanation"] == review.REASON_MESSAGES["IDENTITY_CONFIRMED"]["zh-CN"]
    assert "contest" not in status["outcome"]  # nothing to contest in an approval
    listed = api.client.get("/v1/accounts/acct-life/decisions", headers=api.headers()).json()
    mine = next(d for d in listed["decisions"] if d["id"] == request_id)
    assert mine["status"] == "approved"
    assert mine["review"]["case_id"] == case["id"]
    assert "IDENTITY_CONFIRMED" in {r["code"] for r in mine["review"]["reasons"]}


# --- four-eyes ------------------------------------------------------------------------------


def _awaiting_confirmation(api: Api, account: str, approver: dict[str, str]) -> tuple[str, str]:
    _enrol(api, account)
    decision = _create(api, account, level="high")
    case_id = _appeal(api, decision["id"]).json()["id"]
    assert _case_post(api, case_id, "claim", Role.SUPERVISOR, headers=approver).status_code == 200
    body = {"outcome": "approve", "reason_code": "FALSE_POSITIVE", "reason": "known traveller"}
    r = _case_post(api, case_id, "decision", Role.SUPERVISOR, body, headers=approver)
    assert r.json()["status"] == "awaiting_confirmation", r.text
    return decision["id"], case_id


def test_the_first_reviewer_cannot_confirm_their_own_approval(sqlite_api: Api) -> None:
    api = sqlite_api
    request_id, case_id = _awaiting_confirmation(api, "acct-4e", api.headers(Role.SUPERVISOR))
    before = api.count("review_actions")
    own = _case_post(
        api, case_id, "confirmation", Role.SUPERVISOR, {"agree": True, "reason": "mine"}
    )
    assert own.status_code == 403
    assert own.headers["content-type"].startswith("application/problem+json")
    assert own.json()["code"] == "four_eyes_required"
    assert api.count("review_actions") == before
    assert _request_status(api, request_id)["status"] == "pending_verification"
    # A different supervisor can.
    other = _extra_key(api, Role.SUPERVISOR, "second-supervisor")
    ok = _case_post(
        api,
        case_id,
        "confirmation",
        Role.SUPERVISOR,
        {"agree": True, "reason": "agreed"},
        headers=other,
    )
    assert ok.status_code == 200, ok.text
    assert _request_status(api, request_id)["status"] == "approved"


def test_an_agent_cannot_confirm_and_a_rejection_returns_the_case_to_the_queue(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    request_id, case_id = _awaiting_confirmation(api, "acct-4a", api.headers(Role.AGENT))
    agent = _case_post(api, case_id, "confirmation", Role.AGENT, {"agree": True, "reason": "me"})
    assert agent.status_code == 403
    assert agent.json()["code"] == "forbidden"
    rejected = _case_post(
        api, case_id, "confirmation", Role.SUPERVISOR, {"agree": False, "reason": "not enough"}
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "open"
    assert _request_status(api, request_id)["status"] == "pending_verification"
    assert api.count("outbox_events") == 0


def test_two_concurrent_claims_one_wins(api: Api) -> None:
    decision = _create(api, "acct-race-claim")
    case_id = _appeal(api, decision["id"]).json()["id"]
    ctx = api.ctx

    async def attempt(actor: str) -> str:
        try:
            await review.claim(ctx, actor, case_id)
        except CaseNotClaimable:
            return "lost"
        return "won"

    async def race() -> list[str]:
        return list(await asyncio.gather(*(attempt(f"reviewer-{i}") for i in range(8))))

    outcomes = api.run(race)
    assert outcomes.count("won") == 1, outcomes
    detail = api.client.get(f"/v1/review-cases/{case_id}", headers=api.headers(Role.AGENT)).json()
    assert [a["action"] for a in detail["actions"]] == ["opened", "claimed"]


def test_claims_expire_and_only_the_holder_releases(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _create(api, "acct-claim")
    case_id = _appeal(api, decision["id"]).json()["id"]
    assert _case_post(api, case_id, "claim", Role.AGENT).status_code == 200
    taken = _case_post(api, case_id, "claim", Role.SUPERVISOR)
    assert taken.status_code == 409
    assert taken.json()["code"] == "case_not_claimable"
    not_mine = _case_post(api, case_id, "release", Role.SUPERVISOR, {"reason": "take it"})
    assert not_mine.status_code == 409
    later = datetime.now(UTC) + review.CLAIM_TTL + timedelta(minutes=1)
    api.set_clock(lambda: later)
    # The lapsed claim is open again: the agent can no longer decide, the supervisor can claim.
    lapsed = _decide(api, case_id, Role.AGENT, "deny", "FRAUD_INDICATORS")
    assert lapsed.status_code == 409
    assert _case_post(api, case_id, "claim", Role.SUPERVISOR).status_code == 200
    released = _case_post(api, case_id, "release", Role.SUPERVISOR, {"reason": "shift ends"})
    assert released.status_code == 200
    assert released.json()["status"] == "open"


# --- outcomes the person sees ---------------------------------------------------------------


def test_a_denial_is_explained_and_can_be_contested_again(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _create(api, "acct-deny", locale="en")
    case_id = _appeal(api, decision["id"]).json()["id"]
    _case_post(api, case_id, "claim", Role.AGENT)
    denied = _decide(api, case_id, Role.AGENT, "deny", "IDENTITY_NOT_CONFIRMED")
    assert denied.status_code == 200, denied.text
    assert denied.json()["resolution"] == "denied"
    assert _request_status(api, decision["id"])["status"] == "denied"
    status = api.client.get(
        f"/v1/unlock-requests/{decision['id']}/appeals/{case_id}", headers=api.headers()
    ).json()
    assert status["outcome"]["decision"] == "denied"
    assert (
        status["outcome"]["explanation"] == review.REASON_MESSAGES["IDENTITY_NOT_CONFIRMED"]["en"]
    )
    assert f"/v1/unlock-requests/{decision['id']}/appeals" in status["outcome"]["contest"]
    # The person is told on the phone on file where to look, and nothing more (no reason, no code).
    api.deliver_outbox(until=lambda: any("reviewer" in m.message for m in api.sms.sent))
    notices = [m for m in api.sms.sent if "reviewer" in m.message]
    assert len(notices) == 1
    assert notices[0].to == PHONE
    assert "IDENTITY_NOT_CONFIRMED" not in notices[0].message
    # A denied request accepts no proofs, but a new appeal opens a new case.
    assert _start(api, decision["id"], "sms").status_code == 409
    contest = _appeal(api, decision["id"], statement="Please look again.")
    assert contest.status_code == 201
    assert contest.json()["id"] != case_id


def test_approval_at_medium_risk_needs_one_reviewer(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _create(api, "acct-medium")
    case_id = _appeal(api, decision["id"]).json()["id"]
    _case_post(api, case_id, "claim", Role.AGENT)
    r = _decide(api, case_id, Role.AGENT, "approve", "FALSE_POSITIVE")
    assert r.json()["status"] == "closed"
    assert _request_status(api, decision["id"])["status"] == "approved"
    assert api.count("outbox_events") == 2


def test_need_more_info_asks_the_person_and_their_answer_reopens_the_case(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _create(api, "acct-more", locale="en")
    case_id = _appeal(api, decision["id"]).json()["id"]
    _case_post(api, case_id, "claim", Role.AGENT)
    asked = "Please tell us the month you opened the account."
    r = _decide(api, case_id, Role.AGENT, "need_more_info", "EVIDENCE_REQUESTED", asked)
    assert r.json()["status"] == "awaiting_person"
    path = f"/v1/unlock-requests/{decision['id']}/appeals/{case_id}"
    person = api.client.get(path, headers=api.headers()).json()
    assert person["status"] == "need_more_info"
    assert person["asked"] == asked
    api.deliver_outbox(
        until=lambda: any("needs more information" in m.message for m in api.sms.sent)
    )
    asked_notices = [m for m in api.sms.sent if "needs more information" in m.message]
    assert len(asked_notices) == 1
    assert asked not in asked_notices[0].message
    assert "EVIDENCE_REQUESTED" in {
        c["code"] for c in _request_status(api, decision["id"])["review"]["reasons"]
    }
    answer = _appeal(api, decision["id"], statement="March 2016.")
    assert answer.status_code == 200
    assert answer.json()["id"] == case_id
    assert answer.json()["status"] == "in_review"
    detail = api.client.get(f"/v1/review-cases/{case_id}", headers=api.headers(Role.AGENT)).json()
    assert detail["case"]["status"] == "open"
    assert detail["actions"][-1]["action"] == "answered"
    assert detail["actions"][-1]["reason"] == "March 2016."


# --- automatic opening ----------------------------------------------------------------------


def test_critical_risk_opens_a_case_at_once(api: Api) -> None:
    decision = _create(api, "acct-crit", level="critical")
    case_id = decision["review"]["case_id"]
    assert case_id is not None
    assert _request_status(api, decision["id"])["review"]["case_id"] == case_id
    detail = api.client.get(f"/v1/review-cases/{case_id}", headers=api.headers(Role.AGENT))
    assert detail.status_code == 200
    case = detail.json()["case"]
    assert case["origin"] == "risk_level"
    assert case["escalation_reason"] == "exception_policy"
    assert case["risk_level"] == "critical"
    assert case["priority"] == "high"


def test_a_face_failure_opens_a_case(sqlite_api: Api) -> None:
    api = sqlite_api
    decision, started = _face_ready(api, "acct-face-case")
    token = _attestation(api, started["session"], result="no_match")
    assert _verify(api, decision["id"], started["id"], attestation=token).status_code == 422
    case_id = _request_status(api, decision["id"])["review"]["case_id"]
    assert case_id is not None
    case = api.client.get(f"/v1/review-cases/{case_id}", headers=api.headers(Role.AGENT)).json()
    assert case["case"]["origin"] == "face_check_failed"
    assert case["case"]["escalation_reason"] == "automated_failure"
    # NIST-63A4-3.1.13.2: more urgent than the request's level alone (medium -> normal).
    assert case["case"]["priority"] == "high"


def test_repeated_throttling_opens_a_case(sqlite_api: Api) -> None:
    api = sqlite_api
    _enrol_totp(api, "acct-thr", at=previous_step())
    decision = _create(api, "acct-thr")
    limit = api.ctx.policy.limits.method_failures_per_day
    failures = 0
    while failures < limit:
        challenge = _start(api, decision["id"], "totp").json()
        for _ in range(min(5, limit - failures)):
            _verify(api, decision["id"], challenge["id"], code="000000")
            failures += 1
    assert _start(api, decision["id"], "totp").status_code == 429
    case_id = _request_status(api, decision["id"])["review"]["case_id"]
    assert case_id is not None
    cases = api.client.get(
        "/v1/review-cases", params={"origin": "repeated_failures"}, headers=api.headers(Role.AGENT)
    ).json()["cases"]
    assert [c["id"] for c in cases] == [case_id]


# --- the case detail and the reveal ------------------------------------------------------------


def test_case_detail_masks_evidence_and_reveal_is_a_supervisors_audited_action(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    _phone(api, "acct-ev")
    decision = _create(api, "acct-ev")
    case_id = _appeal(api, decision["id"]).json()["id"]
    detail = api.client.get(f"/v1/review-cases/{case_id}", headers=api.headers(Role.AGENT)).json()
    assert detail["evidence"]["phone"] == "+86 138****5678"
    assert detail["evidence"]["ip"] == "203.0.113.0/24"
    assert detail["evidence"]["device_id"] == "d-7***"
    assert PHONE not in json.dumps(detail)
    assert detail["score"]["policy_version"] == decision["policy"]["version"]
    assert detail["score"]["weights"]  # the full breakdown agents see
    assert [e["kind"] for e in detail["timeline"]][:2] == ["request", "decision"]

    body = {"field": "phone", "reason": "calling the person back"}
    assert _case_post(api, case_id, "reveal", Role.AGENT, body).status_code == 403
    assert (
        _case_post(api, case_id, "reveal", Role.SUPERVISOR, {"field": "phone"}).status_code == 400
    )
    revealed = _case_post(api, case_id, "reveal", Role.SUPERVISOR, body)
    assert revealed.status_code == 200, revealed.text
    assert revealed.json() == {"field": "phone", "value": PHONE}
    ip = _case_post(api, case_id, "reveal", Role.SUPERVISOR, {"field": "ip", "reason": "abuse"})
    assert ip.json()["value"] == "203.0.113.7"
    looks = [e for e in _audit_events(api) if e["data"].get("action") == "revealed"]
    assert [(e["actor"], e["data"]["field"]) for e in looks] == [
        ("test-supervisor", "phone"),
        ("test-supervisor", "ip"),
    ]
    assert PHONE not in json.dumps(looks)


# --- the queue ----------------------------------------------------------------------------------


def test_queue_sorts_by_due_time_pages_by_cursor_filters_and_counts_overdue(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    ids = {_create(api, f"acct-q{i}", level="critical")["review"]["case_id"] for i in range(3)}
    medium = _create(api, "acct-qm")
    ids.add(_appeal(api, medium["id"]).json()["id"])
    h = api.headers(Role.AGENT)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/review-cases", params=params, headers=h).json()
        seen.extend(page["cases"])
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    assert {c["id"] for c in seen} == ids
    assert len(seen) == len(ids)
    dues = [c["due_at"] for c in seen]
    assert dues == sorted(dues)
    appeals = api.client.get("/v1/review-cases", params={"origin": "appeal"}, headers=h).json()
    assert [c["id"] for c in appeals["cases"]] == [seen[-1]["id"]]  # normal priority: due last
    assert (
        api.client.get("/v1/review-cases", params={"cursor": "nonsense"}, headers=h).status_code
        == 400
    )

    later = datetime.now(UTC) + timedelta(hours=9)
    api.set_clock(lambda: later)
    overdue = api.client.get("/v1/review-cases", params={"overdue": "true"}, headers=h).json()
    assert len(overdue["cases"]) == 3  # the three critical cases were due within 8 h
    assert all(c["overdue"] for c in overdue["cases"])
    metrics = api.client.get("/metrics").text
    assert "fairunlock_review_cases_overdue 3.0" in metrics


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"outcome": "approve", "reason_code": "IDENTITY_CONFIRMED"}, "reason"),
        ({"outcome": "approve", "reason_code": "IDENTITY_CONFIRMED", "reason": ""}, "reason"),
        ({"outcome": "approve", "reason_code": "BECAUSE", "reason": "checked"}, "reason_code"),
        (
            {"outcome": "approve", "reason_code": "FRAUD_INDICATORS", "reason": "x" * 5},
            "reason_code",
        ),
        ({"outcome": "maybe", "reason_code": "FALSE_POSITIVE", "reason": "checked"}, "outcome"),
        ({"outcome": "deny", "reason_code": "FRAUD_INDICATORS", "reason": "checked", "x": 1}, "x"),
    ],
)
def test_bad_decisions_are_400_and_change_nothing(
    sqlite_api: Api, body: dict[str, Any], field: str
) -> None:
    api = sqlite_api
    decision = _create(api, "acct-bad")
    case_id = _appeal(api, decision["id"]).json()["id"]
    _case_post(api, case_id, "claim", Role.AGENT)
    before = (api.count("review_actions"), len(_audit_events(api)))
    r = _case_post(api, case_id, "decision", Role.AGENT, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "invalid_request"
    assert field in {e["field"] for e in r.json()["errors"]}
    assert (api.count("review_actions"), len(_audit_events(api))) == before
    assert _request_status(api, decision["id"])["status"] == "pending_verification"


def test_a_decision_on_a_case_the_caller_has_not_claimed_is_409_and_changes_nothing(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    decision = _create(api, "acct-nc")
    case_id = _appeal(api, decision["id"]).json()["id"]
    before = (api.count("review_actions"), len(_audit_events(api)))
    unclaimed = _decide(api, case_id, Role.AGENT, "deny", "FRAUD_INDICATORS")
    assert unclaimed.status_code == 409
    assert unclaimed.json()["code"] == "case_not_claimed_by_caller"
    _case_post(api, case_id, "claim", Role.AGENT)
    before = (api.count("review_actions"), len(_audit_events(api)))
    other = _decide(api, case_id, Role.SUPERVISOR, "deny", "FRAUD_INDICATORS")
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    assert (api.count("review_actions"), len(_audit_events(api))) == before
    assert _request_status(api, decision["id"])["status"] == "pending_verification"
    missing = _decide(
        api, "00000000-0000-0000-0000-000000000000", Role.AGENT, "deny", "FRAUD_INDICATORS"
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "review_case_not_found"


def test_appeal_input_is_validated(sqlite_api: Api) -> None:
    api = sqlite_api
    unknown = _appeal(api, "00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404
    decision = _create(api, "acct-ap")
    bad = _appeal(api, decision["id"], statement="x", contact_preference="pigeon")
    assert bad.status_code == 400
    assert api.count("review_cases") == 0
    other = _create(api, "acct-ap2")
    case_id = _appeal(api, other["id"]).json()["id"]
    # A case is only visible under its own request.
    wrong = api.client.get(
        f"/v1/unlock-requests/{decision['id']}/appeals/{case_id}", headers=api.headers()
    )
    assert wrong.status_code == 404


def test_reason_codes_have_both_languages_and_fit_one_outcome() -> None:
    for code in rdto.ReasonCode:
        assert set(review.REASON_MESSAGES[code.value]) == {"en", "zh-CN"}
        assert sum(code in codes for codes in rdto.CODES_FOR.values()) == 1


def test_an_unknown_accounts_case_cannot_be_approved_but_can_be_denied(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _create(api, "acct-nobody", known=False)
    case_id = _appeal(api, decision["id"], statement="let me in").json()["id"]
    _case_post(api, case_id, "claim", Role.AGENT)
    refused = _decide(api, case_id, Role.AGENT, "approve", "IDENTITY_CONFIRMED")
    assert refused.status_code == 409
    assert refused.json()["request_status"] == "unknown_account"
    assert api.count("outbox_events") == 0
    denied = _decide(api, case_id, Role.AGENT, "deny", "IDENTITY_NOT_CONFIRMED")
    assert denied.status_code == 200
    assert _request_status(api, decision["id"])["status"] == "denied"


def test_erasure_shreds_review_text_and_the_case_stays_readable(sqlite_api: Api) -> None:
    api = sqlite_api
    decision = _create(api, "acct-erase")
    case_id = _appeal(api, decision["id"], statement="my old phone was stolen").json()["id"]
    _case_post(api, case_id, "claim", Role.AGENT)
    _case_post(api, case_id, "release", Role.AGENT, {"reason": "needs a supervisor"})
    erased = api.client.delete("/v1/accounts/acct-erase", headers=api.headers(Role.ADMIN))
    assert erased.status_code == 200, erased.text
    detail = api.client.get(f"/v1/review-cases/{case_id}", headers=api.headers(Role.AGENT))
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["statement"] == review.ERASED
    assert [a.get("reason") for a in body["actions"]] == [None, None, review.ERASED]
    assert body["evidence"].get("ip") is None
    assert body["evidence"].get("phone") is None
    # Nothing is left to decide on: the account is gone.
    _case_post(api, case_id, "claim", Role.AGENT)
    r = _decide(api, case_id, Role.AGENT, "deny", "IDENTITY_NOT_CONFIRMED")
    assert r.status_code == 409
    assert r.json()["request_status"] == "erased"
