"""Races against the served process (issue 7; ASVS4-2.8.5 "a one-time code is accepted once";
NIST-63A4-3.1.13 four-eyes review): the same valid proof sent by 50 clients at the same instant,
spread over two workers, is accepted exactly once; two reviewers acting on the same case at once —
exactly one wins and the other is told 409. Every loser gets a documented 4xx problem+json, never a
5xx, and the database agrees with the answers.

``FAIRUNLOCK_EVIDENCE_RACE_ROUNDS`` (default 1 for proofs, 3 for reviews) repeats each race;
They run on PostgreSQL too (the ``security_stack`` fixture)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from service.persistence.api_keys import Role
from tests.evidence.conftest import ServedService
from tests.evidence.security_support import (
    SecurityStack,
    add_key,
    at_once,
    current_totp,
    enrol_totp,
    ok,
    query,
    recovery_codes,
    set_phone,
    sms_codes,
    start,
    unlock_request,
    verify_path,
)

CLIENTS = 50
RC_REQUESTS = 5
PROOF_ROUNDS = int(os.environ.get("FAIRUNLOCK_EVIDENCE_RACE_ROUNDS", "1"))
REVIEW_ROUNDS = int(os.environ.get("FAIRUNLOCK_EVIDENCE_RACE_ROUNDS", "3"))
# Each race comes from its own address: the losers' failures count against their source (a
# per-address throttle), and one race must not throttle the next.
# What a loser may be told (DESIGN.md "Challenges"; service/errors.py): the proof was used already
# (422 proof_rejected, reason code_reused), the challenge or request is closed (409), or the
# method is throttled because the losers' failures counted (429 with Retry-After).
LOSING_CODES = {
    422: {"proof_rejected"},
    409: {"challenge_closed", "request_closed"},
    429: {"throttled"},
}


def _post(path: str, body: dict[str, Any]) -> Any:
    def call(client: httpx.Client) -> httpx.Response:
        return client.post(path, json=body)

    return call


def _assert_exactly_one_wins(responses: list[httpx.Response]) -> httpx.Response:
    statuses = Counter(r.status_code for r in responses)
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, f"{len(winners)} accepted: {dict(statuses)}"
    for r in responses:
        if r.status_code == 200:
            continue
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        code = r.json()["code"]
        assert code in LOSING_CODES.get(r.status_code, set()), f"{r.status_code} {code}: {r.text}"
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
    return winners[0]


def _successes(service: ServedService, request_id: str) -> int:
    """Successful verifications recorded in the database for the request."""
    rows = query(
        service,
        "SELECT count(*) FROM verification_attempts "
        "WHERE unlock_request_id = :rid AND outcome = 'success'",
        rid=request_id,
    )
    return int(rows[0][0])


def test_the_same_valid_totp_code_from_50_clients_succeeds_exactly_once(
    security_stack: SecurityStack,
) -> None:
    service = security_stack.service
    for round_ in range(PROOF_ROUNDS):
        account = f"acct-race-totp-{round_}"
        with service.client() as client:
            secret = enrol_totp(client, account)
            decision = unlock_request(client, account, ip="192.0.2.1")
            challenge = ok(start(client, decision["id"], "totp"), 201)
        path = verify_path(decision["id"], challenge["id"])
        code = current_totp(secret)
        responses = at_once(service, CLIENTS, _post(path, {"code": code}))
        winner = _assert_exactly_one_wins(responses)
        assert "totp" in winner.json()["factors_satisfied"]
        assert _successes(service, decision["id"]) == 1
        # The losers' answers are on the record too: every 422 is a recorded failure.
        failures = query(
            service,
            "SELECT count(*) FROM verification_attempts "
            "WHERE unlock_request_id = :rid AND outcome != 'success'",
            rid=decision["id"],
        )
        assert failures[0][0] == sum(r.status_code == 422 for r in responses)


def test_the_same_valid_sms_code_from_50_clients_succeeds_exactly_once(
    security_stack: SecurityStack,
) -> None:
    service, receiver = security_stack.service, security_stack.sms
    for round_ in range(PROOF_ROUNDS):
        account = f"acct-race-sms-{round_}"
        with service.client() as client:
            set_phone(client, account, f"+86138000{round_:05d}")
            decision = unlock_request(client, account, ip="192.0.2.2")
            challenge = ok(start(client, decision["id"], "sms"), 201)
        code = sms_codes(receiver)[-1]
        path = verify_path(decision["id"], challenge["id"])
        winner = _assert_exactly_one_wins(at_once(service, CLIENTS, _post(path, {"code": code})))
        assert "sms" in winner.json()["factors_satisfied"]
        assert _successes(service, decision["id"]) == 1


def test_the_same_recovery_code_from_50_clients_succeeds_exactly_once(
    security_stack: SecurityStack,
) -> None:
    service = security_stack.service
    for round_ in range(PROOF_ROUNDS):
        account = f"acct-race-rc-{round_}"
        with service.client() as client:
            codes = recovery_codes(client, account)
            # Five open requests of the account, ten clients on each challenge: the code must be
            # used once across challenges, not merely once per challenge.
            targets, request_ids = [], []
            for _ in range(RC_REQUESTS):
                decision = unlock_request(client, account, ip="192.0.2.3")
                challenge = ok(start(client, decision["id"], "recovery_code"), 201)
                targets.append(verify_path(decision["id"], challenge["id"]))
                request_ids.append(decision["id"])
        paths = iter([t for t in targets for _ in range(CLIENTS // RC_REQUESTS)])
        lock = threading.Lock()

        def call(
            client: httpx.Client,
            code: str = codes[3],
            paths: Iterator[str] = paths,
            lock: threading.Lock = lock,
        ) -> httpx.Response:
            with lock:
                path = next(paths)
            return client.post(path, json={"code": code})

        _assert_exactly_one_wins(at_once(service, CLIENTS, call))
        # One of the account's codes used (other tests on this server spend codes of their own
        # accounts: counted by the account's pseudonym, read off one of its requests).
        used = query(
            service,
            "SELECT count(*) FROM recovery_codes WHERE used_at IS NOT NULL AND subject = "
            "(SELECT subject FROM unlock_requests WHERE id = :request_id)",
            request_id=request_ids[0],
        )
        assert used == [(1,)], used


# --- review ---------------------------------------------------------------------------------


def _four_eyes_case(service: ServedService, account: str, phone: str) -> str:
    """A review case at high risk (an approval needs a second reviewer), opened by an appeal. The
    account is known (it has a phone): a reviewer may approve only for an account that exists."""
    with service.client() as client:
        set_phone(client, account, phone)
        decision = unlock_request(client, account, network="tor")
        assert decision["risk"]["level"] in ("high", "critical"), decision["risk"]
        case = client.post(
            f"/v1/unlock-requests/{decision['id']}/appeals", json={"statement": "it is me"}
        )
        assert case.status_code in (200, 201), case.text
        case_id: str = case.json()["id"]
        return case_id


def _as(service: ServedService, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def _race(service: ServedService, calls: list[tuple[str, str, dict[str, Any] | None]]) -> list[Any]:
    """One request per (key, path, body), released together."""
    barrier = threading.Barrier(len(calls))

    def one(call: tuple[str, str, dict[str, Any] | None]) -> httpx.Response:
        key, path, body = call
        with _as(service, key) as client:
            client.get("/health/live")
            barrier.wait(timeout=60)
            return client.post(path, json=body) if body is not None else client.post(path)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


def _one_wins_one_409(responses: list[httpx.Response]) -> httpx.Response:
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409], [(r.status_code, r.text) for r in responses]
    loser = next(r for r in responses if r.status_code == 409)
    assert loser.headers["content-type"].startswith("application/problem+json")
    assert loser.json()["code"]
    return next(r for r in responses if r.status_code == 200)


def test_two_reviewers_acting_on_the_same_case_at_once_exactly_one_wins(
    security_stack: SecurityStack,
) -> None:
    service = security_stack.service
    agents = [add_key(service, "agent", f"agent-{i}") for i in range(2)]
    supervisors = [add_key(service, "supervisor", f"supervisor-{i}") for i in range(2)]
    for round_ in range(REVIEW_ROUNDS):
        case_id = _four_eyes_case(service, f"acct-race-review-{round_}", f"+86139000{round_:05d}")
        base = f"/v1/review-cases/{case_id}"

        # Two reviewers claim at once: one holds the case, the other is told it is not claimable.
        claimed = _one_wins_one_409(_race(service, [(k, f"{base}/claim", None) for k in agents]))
        holder = agents[0] if claimed.json()["assignee"] == "agent-0" else agents[1]
        assert claimed.json()["assignee"] in ("agent-0", "agent-1")

        # The holder's approve and deny land at once (a double submit): one decision stands.
        approve = {
            "outcome": "approve",
            "reason_code": "IDENTITY_CONFIRMED",
            "reason": "documents match",
        }
        deny = {"outcome": "deny", "reason_code": "FRAUD_INDICATORS", "reason": "documents forged"}
        decided = _one_wins_one_409(
            _race(
                service, [(holder, f"{base}/decision", approve), (holder, f"{base}/decision", deny)]
            )
        )
        if decided.json()["status"] != "awaiting_confirmation":
            # The denial won and closed the case, so nothing awaits a second reviewer there: the
            # supervisors' race gets a case of its own that an agent approved alone, so every
            # round races the confirmations whichever decision won above.
            assert decided.json()["status"] == "closed"
            case_id = _four_eyes_case(
                service, f"acct-race-confirm-{round_}", f"+86139010{round_:05d}"
            )
            base = f"/v1/review-cases/{case_id}"
            with _as(service, agents[0]) as agent:
                ok(agent.post(f"{base}/claim"))
                approved = ok(agent.post(f"{base}/decision", json=approve))
            assert approved["status"] == "awaiting_confirmation", approved

        # Two supervisors confirm at once: one confirmation, the other 409.
        confirmation = {"agree": True, "reason": "second look agrees"}
        _one_wins_one_409(
            _race(service, [(k, f"{base}/confirmation", confirmation) for k in supervisors])
        )
        with service.client(Role.SUPERVISOR) as supervisor:
            case = ok(supervisor.get(base))
        assert case["case"]["status"] == "closed"
        confirmations = [a for a in case["actions"] if a["action"] == "confirmed"]
        assert len(confirmations) == 1, case["actions"]
