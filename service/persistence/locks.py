"""Transaction-scoped advisory locks (PostgreSQL): how the flows serialise transactions that read
and then write against the same thing. SQLite needs none of them: BEGIN IMMEDIATE already
serialises every writer, so the repositories take these on PostgreSQL only."""

from __future__ import annotations

import functools
import hashlib

from sqlalchemy import BigInteger, bindparam, func, select

from audit.hot_sql import HotStatement


def advisory_lock_key(scope: str, key: str) -> int:
    """The 64-bit lock key of ``key`` within ``scope`` (e.g. "account" and a subject)."""
    digest = hashlib.sha256(f"{scope}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


ADVISORY_XACT_LOCK = HotStatement(
    "locks.advisory_xact",
    select(func.pg_advisory_xact_lock(bindparam("p_key", type_=BigInteger))),
    only_on="postgresql",
)


@functools.lru_cache(maxsize=128)
def advisory_xact_locks(count: int) -> HotStatement:
    """``count`` locks, exclusive, in one statement (parameters k0..k{count-1}, taken left to
    right: callers sort them, so two transactions taking overlapping sets cannot deadlock on
    them)."""
    keys = [bindparam(f"k{i}", type_=BigInteger) for i in range(count)]
    return HotStatement(
        f"locks.advisory_xact_many[{count}]",
        select(*(func.pg_advisory_xact_lock(k) for k in keys)),
        only_on="postgresql",
    )


@functools.lru_cache(maxsize=128)
def advisory_xact_locks_shared(count: int) -> HotStatement:
    """``count`` locks, shared, in one statement (parameters k0..k{count-1}, taken left to right:
    callers sort them)."""
    keys = [bindparam(f"k{i}", type_=BigInteger) for i in range(count)]
    return HotStatement(
        f"locks.advisory_xact_shared[{count}]",
        select(*(func.pg_advisory_xact_lock_shared(k) for k in keys)),
        only_on="postgresql",
    )
