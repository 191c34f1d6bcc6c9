"""Anti-enumeration over HTTP against the served process (issue 7; OWASP-FP-1/2, DESIGN.md
principle 7): for accounts that exist and ids no one has, the service answers with the same status
and the same body shape — the same keys at every depth, with values of the same types — when an
unlock request is made, a challenge started and a wrong proof sent; and the time to answer an
unlock request, to start an SMS challenge and to refuse a wrong recovery code differs by no more
than noise, by a Mann-Whitney U test over interleaved requests of each kind
(tests/service/test_enumeration.py does the same in-process).

``FAIRUNLOCK_EVIDENCE_ENUM_ROUNDS`` (default 10 requests per id, 20 ids of each kind) raises the
sample for a longer run; it runs on PostgreSQL too."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.enumeration import assert_same_time, mann_whitney_p, shape
from tests.evidence.conftest import ServedService
from tests.evidence.security_support import (
    SecurityStack,
    enrol_totp,
    ok,
    recovery_codes,
    request_body,
    set_phone,
    start,
    verify_path,
)

IDS = 20
ROUNDS = int(os.environ.get("FAIRUNLOCK_EVIDENCE_ENUM_ROUNDS", "10"))
WARM_UP = 20


def _known_accounts(service: ServedService, prefix: str, count: int) -> list[str]:
    """Accounts enrolled like the phantom profile of an unknown id: a phone and a second method."""
    accounts = [f"{prefix}-{i}" for i in range(count)]
    with service.client() as client:
        for i, account in enumerate(accounts):
            set_phone(client, account, f"+86137{i:08d}")
            enrol_totp(client, account)
    return accounts


def _flat_keys(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            out |= {f"{prefix}{k}"} | _flat_keys(v, f"{prefix}{k}.")
        return out
    if isinstance(value, list):
        return set().union(*(_flat_keys(v, f"{prefix}[].") for v in value)) if value else set()
    return set()


def _same_shape(a: httpx.Response, b: httpx.Response, what: str) -> None:
    assert a.status_code == b.status_code, f"{what}: {a.status_code} vs {b.status_code}"
    assert a.headers["content-type"] == b.headers["content-type"], what
    ja, jb = a.json(), b.json()
    assert shape(ja) == shape(jb), (
        f"{what}: only known {sorted(_flat_keys(ja) - _flat_keys(jb))}, "
        f"only unknown {sorted(_flat_keys(jb) - _flat_keys(ja))}\n{ja}\n{jb}"
    )


def test_known_and_unknown_accounts_get_the_same_status_and_body_shape(
    security_stack: SecurityStack,
) -> None:
    service = security_stack.service
    known = _known_accounts(service, "acct-shape-known", 4)
    # Unknown ids of both phantom profiles (with and without an authenticator).
    unknown = [f"acct-shape-unknown-{i}" for i in range(8)]
    with service.client() as client:
        answers: dict[str, dict[str, httpx.Response]] = {}
        for account in known + unknown:
            created = client.post("/v1/unlock-requests", json=request_body(account))
            decision = ok(created, 201)
            sms = start(client, decision["id"], "sms")
            step: dict[str, httpx.Response] = {"unlock request": created, "sms challenge": sms}
            if sms.status_code == 201:
                wrong = client.post(
                    verify_path(decision["id"], sms.json()["id"]), json={"code": "000000"}
                )
                step["wrong sms code"] = wrong
            read = client.get(f"/v1/unlock-requests/{decision['id']}")
            step["read the request"] = read
            answers[account] = step
    reference = answers[known[0]]
    for account, step in answers.items():
        assert step.keys() == reference.keys(), (account, step.keys())
        for what, response in step.items():
            _same_shape(reference[what], response, f"{what} ({account})")
        assert (
            step["unlock request"].json()["status"] == reference["unlock request"].json()["status"]
        )
    assert reference["sms challenge"].status_code == 201
    assert reference["wrong sms code"].status_code == 422


# --- timing -------------------------------------------------------------------------------------


def test_the_mann_whitney_helper_tells_shifted_samples_apart() -> None:
    same = [float(i % 17) for i in range(300)]
    assert mann_whitney_p(same, list(reversed(same))) > 0.5
    assert mann_whitney_p(same, [v + 3 for v in same]) < 1e-6


def _interleaved(
    known: list[str], unknown: list[str], rounds: int, timed: Callable[[str], float]
) -> tuple[list[float], list[float]]:
    """Times of each kind, interleaved and alternating which kind goes first, so drift in the
    machine's load falls on both kinds alike."""
    known_times: list[float] = []
    unknown_times: list[float] = []
    for r in range(rounds):
        for i in range(len(known)):
            pair = [(known_times, known[i]), (unknown_times, unknown[i])]
            for times, account in pair if (r + i) % 2 == 0 else reversed(pair):
                times.append(timed(account))
    return known_times, unknown_times


def test_known_and_unknown_accounts_answer_in_the_same_time(security_stack: SecurityStack) -> None:
    service = security_stack.service
    known = _known_accounts(service, "acct-time-known", IDS)
    unknown = [f"acct-time-unknown-{i}" for i in range(IDS)]
    with service.client() as client:

        def timed(account: str) -> float:
            body = request_body(account)
            began = time.perf_counter()
            r = client.post("/v1/unlock-requests", json=body)
            elapsed = time.perf_counter() - began
            assert r.status_code == 201, r.text
            return elapsed

        for i in range(WARM_UP):
            timed(known[i % IDS])
            timed(unknown[i % IDS])
        known_times, unknown_times = _interleaved(known, unknown, ROUNDS, timed)
    assert_same_time("unlock request", known_times, unknown_times)


SMS_IDS = 60  # each id starts two SMS challenges: within the per-number hourly limit (3)
SMS_ROUNDS = 2
GATEWAY_DELAY_S = 0.04


def test_an_sms_challenge_takes_as_long_for_an_unknown_account_as_for_a_known_one(
    security_stack: SecurityStack,
) -> None:
    """A known account's SMS challenge calls the gateway; an unknown id's sends nothing. Without
    padding, the missing round trip would tell the two apart (OWASP-FP-1/2)."""
    service = security_stack.service
    known = _known_accounts(service, "acct-smstime-known", SMS_IDS)
    unknown = [f"acct-smstime-unknown-{i}" for i in range(SMS_IDS)]
    # A gateway 40 ms away, not loopback's 1 ms: a padding that missed the gateway's time would
    # show as 40 ms, well above the noise.
    security_stack.sms.delay_s = GATEWAY_DELAY_S
    try:
        known_times, unknown_times = _sms_times(service, known, unknown)
    finally:
        security_stack.sms.delay_s = 0.0
    assert statistics.median(known_times) >= GATEWAY_DELAY_S  # the delay reached the service
    assert_same_time("SMS challenge", known_times, unknown_times)


def _sms_times(
    service: ServedService, known: list[str], unknown: list[str]
) -> tuple[list[float], list[float]]:
    with service.client() as client:

        def timed(account: str) -> float:
            decision = ok(client.post("/v1/unlock-requests", json=request_body(account)), 201)
            began = time.perf_counter()
            r = start(client, decision["id"], "sms")
            elapsed = time.perf_counter() - began
            assert r.status_code == 201, r.text
            return elapsed

        known_times, unknown_times = _interleaved(known, unknown, SMS_ROUNDS, timed)
    # The first of each kind warm the worker (and give it gateway timings to pad with).
    return known_times[5:], unknown_times[5:]


RC_IDS = 24
RC_ROUNDS = 2


def test_a_wrong_recovery_code_takes_as_long_for_an_unknown_account_as_for_a_known_one(
    security_stack: SecurityStack,
) -> None:
    """A wrong recovery code is checked against a known account's ten argon2id hashes; for an
    unknown id the service hashes against ten dummies (service/flows/challenges.py), so the
    refusal costs the same. Without them it would come back at once."""
    service = security_stack.service
    with service.client() as client:
        known = [f"acct-rctime-known-{i}" for i in range(RC_IDS)]
        for i, account in enumerate(known):
            set_phone(client, account, f"+86136{i:08d}")
            recovery_codes(client, account)
        # Unknown ids whose phantom profile offers recovery codes (half of them do).
        unknown: list[str] = []
        candidate = 0
        while len(unknown) < RC_IDS:
            account = f"acct-rctime-unknown-{candidate}"
            candidate += 1
            offer = ok(client.post("/v1/unlock-requests", json=request_body(account)), 201)
            if "recovery_code" in [m["method"] for m in offer["offer"]["methods"]]:
                unknown.append(account)
        sources = iter(range(1_000_000))

        def timed(account: str) -> float:
            # Each attempt from an address of its own: the per-source failure limit (50 an hour)
            # must not throttle the run.
            n = next(sources)
            body = request_body(account, ip=f"198.51.{n // 250}.{n % 250 + 1}")
            decision = ok(client.post("/v1/unlock-requests", json=body), 201)
            challenge = ok(start(client, decision["id"], "recovery_code"), 201)
            path = verify_path(decision["id"], challenge["id"])
            began = time.perf_counter()
            r = client.post(path, json={"code": "AAAA-BBBB-CCCC-DDDD"})
            elapsed = time.perf_counter() - began
            assert r.status_code == 422, r.text
            return elapsed

        timed(known[0])  # warm-up: the worker makes its dummy hashes once
        timed(unknown[0])
        known_times, unknown_times = _interleaved(known, unknown, RC_ROUNDS, timed)
    assert_same_time("wrong recovery code", known_times, unknown_times)
