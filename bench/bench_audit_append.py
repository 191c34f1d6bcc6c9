"""Audit append throughput from several OS processes, with the integrator running.

For each backend (SQLite file in WAL/FULL, as service/db.py configures it; the local PostgreSQL):

* baseline: the same processes commit one plain INSERT each into a bare table (the database's
  commit ceiling on this machine, measured in the same run);
* audit: the same processes call ``append_event_now`` (one transaction per entry) while
  ``fairunlock audit integrate`` runs in its own process.

Reported: entries/s, the inbox backlog when the writers stop, how long the integrator then needs
to drain it, and the contiguity check. Not a timed test: numbers vary ±30 % on this shared VM.

    .venv/bin/python -m bench.bench_audit_append [--seconds 5] [--processes 4] [--tasks 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, insert

from audit.entry import AuditEvent, EntryKind
from audit.store import AuditStore, GroupAppender, append_event_now
from service.db import create_engine
from service.schema import upgrade

PG_ADMIN = os.environ.get(
    "FAIRUNLOCK_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ORIGIN = "bench.fairunlock/audit"

_baseline_meta = MetaData()
baseline = Table(
    "bench_baseline",
    _baseline_meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("payload", LargeBinary, nullable=False),
)


def _event(writer: int, n: int) -> AuditEvent:
    # A realistic decision entry: pseudonymous subject, a few reason codes, a ciphertext.
    return AuditEvent(
        EntryKind.DECISION,
        f"frontend-{writer}",
        secrets.token_hex(32),
        {
            "decision_id": f"{writer}-{n}",
            "status": "pending_verification",
            "risk": {"level": "medium", "reasons": ["NEW_DEVICE", "UNUSUAL_LOCATION"]},
            "policy": {"version": "2026-11-01", "sha256": "ab" * 32},
            "phone": secrets.token_urlsafe(48),
        },
        datetime.now(UTC),
    )


def _writer(
    url: str, mode: str, writer: int, tasks: int, seconds: float, ready: Any, go: Any, out: Any
) -> None:
    async def main() -> tuple[int, float]:
        engine = create_engine(url, pool_size=tasks)
        appender = GroupAppender(engine)
        count = 0
        payload = b"x" * 300
        async with engine.connect():
            pass  # connect before the clock starts
        # Every process is imported and connected before any starts: a start barrier.
        ready.put(writer)
        await asyncio.to_thread(go.wait)
        stop_at = time.time() + seconds

        async def loop(task: int) -> None:
            nonlocal count
            n = 0
            while time.time() < stop_at:
                if mode == "audit":
                    await append_event_now(engine, _event(writer, task * 10_000_000 + n))
                elif mode == "group":
                    await appender.append(_event(writer, task * 10_000_000 + n))
                else:
                    async with engine.begin() as conn:
                        await conn.execute(insert(baseline).values(payload=payload))
                n += 1
                count += 1

        await asyncio.gather(*(loop(t) for t in range(tasks)))
        ended = time.time()
        await engine.dispose()
        return count, ended

    out.put(asyncio.run(main()))


def _integrator(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        FAIRUNLOCK_DATABASE_URL=url,
        FAIRUNLOCK_DATA_DIR=str(data_dir),
        FAIRUNLOCK_AUDIT_ORIGIN=ORIGIN,
        FAIRUNLOCK_AUDIT_BATCH_SIZE="2000",
        FAIRUNLOCK_AUDIT_INTERVAL_MS="20",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "audit", "integrate"],
        env=env,
        stderr=subprocess.DEVNULL,
    )


async def _backlog(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            store = AuditStore(conn)
            return await store.backlog(), await store.size()
    finally:
        await engine.dispose()


async def _contiguous(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await AuditStore(conn).check_contiguity()
    finally:
        await engine.dispose()


def _run(url: str, mode: str, processes: int, tasks: int, seconds: float) -> tuple[int, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    ready = ctx.Queue()
    go = ctx.Event()
    workers = [
        ctx.Process(target=_writer, args=(url, mode, w, tasks, seconds, ready, go, queue))
        for w in range(processes)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=300)
    start_at = time.time()
    go.set()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    total = sum(count for count, _ in results)
    elapsed = max(ended for _, ended in results) - start_at
    return total, elapsed


def bench_backend(
    name: str, url: str, processes: int, tasks: int, group_tasks: int, seconds: float
) -> list[str]:
    upgrade(url)  # the migrations, as the app and the CLI apply them

    async def prepare() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_baseline_meta.create_all)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    rows = []
    total, elapsed = _run(url, "baseline", processes, tasks, seconds)
    rows.append(
        f"| {name} | baseline: bare INSERT, 1 tx each | {processes}x{tasks} | {total} | "
        f"{total / elapsed:,.0f} | - | - |"
    )

    for mode, label, per_process in (
        ("audit", "append_event_now (1 tx/entry) + integrator", tasks),
        ("group", "GroupAppender (group commit) + integrator", group_tasks),
    ):
        total_before = asyncio.run(_contiguous(url))
        with tempfile.TemporaryDirectory() as data_dir:
            integrator = _integrator(url, Path(data_dir))
            try:
                total, elapsed = _run(url, mode, processes, per_process, seconds)
                backlog_at_stop, _ = asyncio.run(_backlog(url))
                t0 = time.perf_counter()
                backlog = backlog_at_stop
                while backlog:
                    time.sleep(0.01)
                    backlog, _ = asyncio.run(_backlog(url))
                drain = time.perf_counter() - t0
            finally:
                integrator.send_signal(signal.SIGTERM)
                integrator.wait(timeout=60)
            size = asyncio.run(_contiguous(url))
        assert size == total_before + total, f"log has {size} entries, expected more"
        rows.append(
            f"| {name} | {label} | {processes}x{per_process} | {total} | "
            f"{total / elapsed:,.0f} | {backlog_at_stop} | {drain:.2f} s |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=4, help="concurrent appends per process (PG)")
    parser.add_argument(
        "--group-tasks", type=int, default=32, help="requests in flight per process (group)"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    print(
        f"# audit append: {args.processes} processes, {args.seconds:.0f} s, {os.cpu_count()} CPUs\n"
    )
    print("| backend | mode | procs x tasks | entries | entries/s | backlog at stop | drain |")
    print("|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}"
        # SQLite engines hold one connection, so one append in flight per process.
        rows = bench_backend(
            "SQLite (WAL, FULL)", url, args.processes, 1, args.group_tasks, args.seconds
        )
        for row in rows:
            print(row, flush=True)
    if not args.skip_postgres:
        import asyncpg  # type: ignore[import-untyped]

        name = f"fu_bench_{secrets.token_hex(4)}"

        async def admin(sql: str) -> None:
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
        try:
            base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
            rows = bench_backend(
                "PostgreSQL",
                f"{base}/{name}",
                args.processes,
                args.tasks,
                args.group_tasks,
                args.seconds,
            )
            for row in rows:
                print(row, flush=True)
        finally:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
