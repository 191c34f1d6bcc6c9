"""Benchmark: derive + assess + offer for 10,000 varied unlock requests on one core.

Target (issue 2): at least 50,000 decisions/s. A machine-speed baseline runs in the same command
(one SHA-256 of each request's account id plus a Python call), so figures from different machines
can be compared as ratios.

    python -m bench.bench_policy [--requests N] [--repeat R]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from policy.engine import decide
from policy.model import (
    AccountFacts,
    ConsentState,
    GeoPoint,
    LastLogin,
    LinkedIdentity,
    Locale,
    LockReason,
    Method,
    Network,
    PhoneOnFile,
    RequestContext,
    RequestHistory,
    TotpState,
    UnlockRequestFacts,
)
from service.policy_source import load_default_policy

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PLACES = [
    GeoPoint("CN", 31.23, 121.47),
    GeoPoint("CN", 39.90, 116.40),
    GeoPoint("DE", 52.52, 13.40),
    GeoPoint("US", 37.77, -122.42),
    GeoPoint("JP", 35.68, 139.69),
]


def _maybe(rng: random.Random, value: object, p: float = 0.8) -> object:
    return value if rng.random() < p else None


def make_inputs(
    n: int, seed: int = 7
) -> list[tuple[UnlockRequestFacts, AccountFacts, RequestHistory]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        last = LastLogin(
            at=NOW - timedelta(hours=rng.randint(0, 2000)),
            device_id=f"d-{rng.randint(0, 5)}",
            geo=rng.choice(PLACES),
        )
        ctx = RequestContext(
            ip="203.0.113.7",
            device_id=_maybe(rng, f"d-{rng.randint(0, 5)}"),  # type: ignore[arg-type]
            user_agent="Mozilla/5.0",
            geo=_maybe(rng, rng.choice(PLACES)),  # type: ignore[arg-type]
            network=rng.choice(list(Network)),
            sim_swap_at=_maybe(rng, NOW - timedelta(days=rng.randint(0, 30)), 0.2),  # type: ignore[arg-type]
            credential_changed_at=_maybe(rng, NOW - timedelta(days=rng.randint(0, 30)), 0.2),  # type: ignore[arg-type]
            account_created_at=_maybe(rng, NOW - timedelta(days=rng.randint(1, 4000))),  # type: ignore[arg-type]
            last_login=_maybe(rng, last),  # type: ignore[arg-type]
            known_device_ids=frozenset({f"d-{rng.randint(0, 5)}", f"d-{rng.randint(0, 5)}"}),
        )
        request = UnlockRequestFacts(
            f"acct-{i}", rng.choice(list(LockReason)), ctx, rng.choice(list(Locale))
        )
        account = AccountFacts(
            totp=rng.choice(list(TotpState)),
            linked_identities=tuple(
                LinkedIdentity(p, rng.random() < 0.7)
                for p in ("gov-eid", "wechat")
                if rng.random() < 0.5
            ),
            recovery_codes_remaining=rng.choice([None, 0, 3, 10]),
            phone=rng.choice([None, PhoneOnFile(True), PhoneOnFile(False)]),
            face_consent=rng.choice(list(ConsentState)),
            throttled_methods=frozenset(m for m in Method if rng.random() < 0.05),
        )
        history = RequestHistory(rng.randint(0, 5), rng.randint(0, 5))
        out.append((request, account, history))
    return out


def _rate(fn: Callable[[], None], count: int, repeat: int) -> float:
    """Median operations per second over ``repeat`` runs."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    policy = load_default_policy()
    inputs = make_inputs(args.requests)

    def run_decisions() -> None:
        for request, account, history in inputs:
            decide(request, account, history, policy, NOW)

    def run_baseline() -> None:
        for request, _, _ in inputs:
            hashlib.sha256(request.account_id.encode()).digest()

    run_decisions()  # warm-up
    decisions = _rate(run_decisions, len(inputs), args.repeat)
    baseline = _rate(run_baseline, len(inputs), args.repeat)
    levels: dict[str, int] = {}
    for request, account, history in inputs:
        level = decide(request, account, history, policy, NOW).assessment.level.value
        levels[level] = levels.get(level, 0) + 1
    print(
        f"requests: {len(inputs)} varied (levels: {dict(sorted(levels.items()))}), "
        f"median of {args.repeat}"
    )
    print(f"{'what':<40} {'ops/s':>12}")
    print(f"{'baseline: sha256(account_id) per request':<40} {baseline:>12,.0f}")
    print(f"{'decide: derive + assess + offer':<40} {decisions:>12,.0f}")
    print(
        f"ratio decide/baseline: {decisions / baseline:.3f}; target >= 50,000 decisions/s: "
        f"{'met' if decisions >= 50_000 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
