"""The in-loop SQLite adapter (service/sqlite_inline.py): statements run in place, yet waiting for
another process's write lock neither fails nor blocks the event loop, and commits are durable."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from service.db import create_engine


def test_a_writer_waits_for_another_connections_write_lock_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lock.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"

    async def scenario() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v INTEGER)"))
        # Another process's writer, holding the lock for 300 ms.
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def release_later() -> None:
            await asyncio.sleep(0.3)
            other.execute("COMMIT")

        tick_task = asyncio.create_task(ticker())
        release = asyncio.create_task(release_later())
        started = time.monotonic()
        async with engine.begin() as conn:  # BEGIN IMMEDIATE must wait, then succeed
            waited = time.monotonic() - started
            await conn.execute(text("INSERT INTO t VALUES (2)"))
        tick_task.cancel()
        await release
        assert waited >= 0.25
        assert ticks >= 10  # the loop kept running while the writer waited
        async with engine.connect() as conn:
            values = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert values == [1, 2]
        other.close()
        await engine.dispose()

    asyncio.run(scenario())


def test_a_commit_is_durable_for_a_separate_connection(tmp_path: Path) -> None:
    path = tmp_path / "durable.sqlite3"

    async def scenario() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (7)"))
        await engine.dispose()

    asyncio.run(scenario())
    assert sqlite3.connect(path).execute("SELECT v FROM t").fetchall() == [(7,)]
