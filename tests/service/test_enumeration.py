"""Anti-enumeration (OWASP-FP-1/2): known and unknown accounts get the same status and shape,
and the time to answer differs by no more than noise, over a few hundred interleaved requests."""

from __future__ import annotations

import copy
import statistics
import time

from tests.service.conftest import PERSONA_REQUEST, Api

ROUNDS = 200


def _timed(api: Api, body: dict[str, object]) -> float:
    start = time.perf_counter()
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    elapsed = time.perf_counter() - start
    assert r.status_code == 201
    return elapsed


def test_known_and_unknown_accounts_answer_in_the_same_time(sqlite_api: Api) -> None:
    api = sqlite_api
    h = api.headers()
    api.client.put("/v1/accounts/acct-known/phone", json={"phone": "+8613800005678"}, headers=h)
    api.client.put(
        "/v1/accounts/acct-known/linked-identities/gov-eid",
        json={"subject": "s", "real_name_verified": True},
        headers=h,
    )
    known = copy.deepcopy(PERSONA_REQUEST)
    known["account_id"] = "acct-known"
    # Unknown ids vary, as an attacker's would; the known one repeats (velocity then rises).
    for _ in range(10):  # warm-up: first requests pay for imports and caches
        _timed(api, known)
    known_times, unknown_times = [], []
    for i in range(ROUNDS):
        unknown = copy.deepcopy(PERSONA_REQUEST)
        unknown["account_id"] = f"acct-unknown-{i}"
        known_times.append(_timed(api, known))
        unknown_times.append(_timed(api, unknown))
    median_known = statistics.median(known_times)
    median_unknown = statistics.median(unknown_times)
    # Noise: how much the medians of two halves of the same population differ.
    noise = abs(statistics.median(known_times[::2]) - statistics.median(known_times[1::2]))
    tolerance = max(3 * noise, 0.15 * median_known)
    assert abs(median_known - median_unknown) <= tolerance, (
        f"known {median_known * 1e3:.2f} ms vs unknown {median_unknown * 1e3:.2f} ms "
        f"(tolerance {tolerance * 1e3:.2f} ms)"
    )
