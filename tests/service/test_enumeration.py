"""Anti-enumeration (OWASP-FP-1/2), in-process: known and unknown accounts get the same status
and shape, and the time to answer differs by no more than noise (a Mann-Whitney U test over a
few hundred interleaved requests of each kind, tests/enumeration.py), on SQLite and PostgreSQL.
tests/evidence/test_enumeration_served.py does the same against a served process."""

from __future__ import annotations

import copy
import time

from tests.enumeration import assert_same_time
from tests.service.conftest import PERSONA_REQUEST, Api

IDS = 40
ROUNDS = 5  # requests per id: 200 of each kind


def _timed(api: Api, account_id: str) -> float:
    body = copy.deepcopy(PERSONA_REQUEST)
    body["account_id"] = account_id
    start = time.perf_counter()
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    elapsed = time.perf_counter() - start
    assert r.status_code == 201
    return elapsed


def test_known_and_unknown_accounts_answer_in_the_same_time(api: Api) -> None:
    h = api.headers()
    known = [f"acct-known-{i}" for i in range(IDS)]
    for i, account in enumerate(known):
        phone = {"phone": f"+86138{i:08d}"}
        assert api.client.put(f"/v1/accounts/{account}/phone", json=phone, headers=h).is_success
        assert api.client.put(
            f"/v1/accounts/{account}/linked-identities/gov-eid",
            json={"subject": f"s-{i}", "real_name_verified": True},
            headers=h,
        ).is_success
    # As many ids of each kind, each asked as often: an attacker enumerating asks about ids,
    # and each kind's history (the velocity the service counts) grows alike.
    unknown = [f"acct-unknown-{i}" for i in range(IDS)]
    for i in range(10):  # warm-up: first requests pay for imports and caches
        _timed(api, f"acct-warm-{i}")
    known_times, unknown_times = [], []
    for r in range(ROUNDS):
        for i in range(IDS):
            # Which kind goes first alternates, so a drift within a pair falls on both alike.
            if (r + i) % 2:
                unknown_times.append(_timed(api, unknown[i]))
                known_times.append(_timed(api, known[i]))
            else:
                known_times.append(_timed(api, known[i]))
                unknown_times.append(_timed(api, unknown[i]))
    assert_same_time("unlock request (in-process)", known_times, unknown_times)
