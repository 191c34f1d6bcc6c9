"""The per-worker API-key cache: only keys found in the database are remembered, and only for a
few seconds, so a revocation takes effect within that time (ASVS4-3.3)."""

from __future__ import annotations

import asyncio

from service.auth import KeyCache
from service.persistence.api_keys import Principal, Role, key_digest

ALICE = Principal(key_id="k1", name="alice", role=Role.FRONTEND)


def test_a_found_key_is_remembered_until_it_expires() -> None:
    cache = KeyCache(ttl=5.0)
    digest = key_digest("fu_example")
    assert cache.get(digest, now=100.0) is None
    cache.put(digest, ALICE, now=100.0)
    assert cache.get(digest, now=104.9) == ALICE
    assert cache.get(digest, now=105.1) is None


def test_the_cache_is_bounded() -> None:
    cache = KeyCache(ttl=5.0, size=3)
    for i in range(10):
        cache.put(key_digest(f"fu_{i}"), ALICE, now=0.0)
    remembered = sum(cache.get(key_digest(f"fu_{i}"), now=1.0) is not None for i in range(10))
    assert 1 <= remembered <= 3


def test_concurrent_misses_for_one_key_share_one_lookup_and_unknown_keys_are_not_kept() -> None:
    cache = KeyCache(ttl=5.0)
    digest = key_digest("fu_example")
    calls = 0

    async def find() -> Principal | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return ALICE

    async def scenario() -> list[Principal | None]:
        return list(await asyncio.gather(*(cache.load(digest, find, now=0.0) for _ in range(32))))

    assert asyncio.run(scenario()) == [ALICE] * 32
    assert calls == 1
    assert cache.get(digest, now=1.0) == ALICE

    async def not_found() -> Principal | None:
        return None

    wrong = key_digest("fu_wrong")
    assert asyncio.run(cache.load(wrong, not_found, now=0.0)) is None
    assert cache.get(wrong, now=0.0) is None  # no negative cache
