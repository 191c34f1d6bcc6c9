"""Benchmark: inclusion and consistency proofs served from the store of a large log.

    python -m bench.bench_audit_proofs [--entries N] [--database sqlite|postgres] [--proofs K]

Builds a log of N entries (default 1,000,000) the way the integrator leaves it (leaf hashes and
the roots of the subtrees of 256 and 65,536 leaves), then times what ``GET /v1/audit/proofs/*``
runs: audit.proofs' served proof (from the stored subtree roots, then verified against the
checkpoint). The baseline, in the same run and over the same rows, is the same proof from the leaf
hashes alone (as before the roots were stored, and what the code falls back to where they are
missing). Every proof is checked equal to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.merkle import CompactRange, Subtree, consistency_proof, inclusion_proof
from audit.proofs import LeavesOnly, served_consistency_proof, served_inclusion_proof
from audit.store import (
    StoredCheckpoint,
    ThreadLeafSource,
    audit_checkpoints,
    audit_log,
    audit_subtrees,
    create_schema,
)
from bench.bench_http import PG_ADMIN_URL, _postgres_database
from service.db import create_engine

_INSERT_CHUNK = 20_000


async def _build(engine: AsyncEngine, count: int) -> StoredCheckpoint:
    await create_schema(engine)
    compact = CompactRange.empty()
    now = datetime.now(UTC)
    for low in range(0, count, _INSERT_CHUNK):
        rows = []
        subtrees: list[Subtree] = []
        for seq in range(low, min(count, low + _INSERT_CHUNK)):
            digest = hashlib.sha256(b"\x00entry %d" % seq).digest()
            compact.append(digest, subtrees)
            rows.append(
                {
                    "seq": seq,
                    "leaf": b"-",
                    "leaf_hash": digest,
                    "inbox_id": seq,
                    "integrated_at": now,
                }
            )
        async with engine.begin() as conn:
            await conn.execute(insert(audit_log), rows)
            if subtrees:
                await conn.execute(
                    insert(audit_subtrees),
                    [{"height": h, "idx": i, "root": r} for h, i, r in subtrees],
                )
    async with engine.begin() as conn:
        # The checkpoint the served proofs are checked against (its note is not read).
        await conn.execute(
            insert(audit_checkpoints).values(
                size=count, root=compact.root(), note="bench", created_at=now
            )
        )
    return StoredCheckpoint(count, compact.root(), "bench")


async def _timed(work: Awaitable[list[bytes]]) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


async def _measure(
    engine: AsyncEngine, checkpoint: StoredCheckpoint, proofs: int, baseline_proofs: int
) -> dict[str, tuple[list[float], list[float]]]:
    count = checkpoint.size
    leaves_only = LeavesOnly(ThreadLeafSource(engine, asyncio.get_running_loop(), count))

    async def inclusion(n: int) -> list[bytes]:
        return (await served_inclusion_proof(engine, n, checkpoint))[1]

    async def consistency(n: int) -> list[bytes]:
        return await served_consistency_proof(engine, n + 1, checkpoint)

    kinds: dict[str, tuple[Callable[[int], Awaitable[list[bytes]]], Callable[[int], list[bytes]]]]
    kinds = {
        "inclusion": (inclusion, lambda n: inclusion_proof(leaves_only, n, count)),
        "consistency": (consistency, lambda n: consistency_proof(leaves_only, n + 1, count)),
    }
    rng = random.Random(6962)
    results: dict[str, tuple[list[float], list[float]]] = {}
    for name, (served, from_leaves) in kinds.items():
        stored_times, baseline_times = [], []
        for k in range(proofs):
            n = rng.randrange(count)
            seconds, proof = await _timed(served(n))
            stored_times.append(seconds)
            if k < baseline_proofs:
                seconds, expected = await _timed(
                    asyncio.to_thread(functools.partial(from_leaves, n))
                )
                baseline_times.append(seconds)
                assert proof == expected, f"{name} proof for {n} differs from the leaves' proof"
        results[name] = (stored_times, baseline_times)
    return results


async def _run(args: argparse.Namespace, url: str) -> None:
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        checkpoint = await _build(engine, args.entries)
        built = time.perf_counter() - started
        load = os.getloadavg()[0]
        results = await _measure(engine, checkpoint, args.proofs, args.baseline_proofs)
    finally:
        await engine.dispose()
    print(
        f"{args.entries:,} entries on {args.database} (built in {built:.0f} s); "
        f"{os.cpu_count()} CPUs, load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'proof':<12} {'stored roots: median ms':>24} {'max ms':>8} "
        f"{'from leaves: median ms':>24} {'ratio':>8}"
    )
    for name, (stored, baseline) in results.items():
        fast, slow = statistics.median(stored) * 1e3, statistics.median(baseline) * 1e3
        print(f"{name:<12} {fast:24.1f} {max(stored) * 1e3:8.1f} {slow:24.1f} {slow / fast:7.0f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_audit_proofs")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--proofs", type=int, default=20, help="proofs of each kind timed")
    parser.add_argument(
        "--baseline-proofs", type=int, default=3, help="of those, also timed from the leaves"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-proofs-") as tmp:
        if args.database == "postgres":
            # A database of its own, created and dropped outside the measured event loop.
            with _postgres_database(PG_ADMIN_URL) as url:
                asyncio.run(_run(args, url))
        else:
            asyncio.run(_run(args, f"sqlite+aiosqlite:///{tmp}/proofs.sqlite3"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
