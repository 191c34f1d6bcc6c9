"""The in-loop SQLite adapter (service/sqlite_inline.py): statements run in place, yet waiting for
another process's write lock neither fails nor blocks the event loop, workers take turns at it
through a flock that nothing leaves held, and commits are durable."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import create_engine, reader, write_turn_elsewhere
from service.sqlite_inline import (
    COMMIT_STALL_S,
    COMMITS_REMEMBERED,
    INLINE_COMMIT_MAX_S,
    PROBE_EVERY,
    WRITER_TURN_SUFFIX,
    CommitPlacement,
    InlineConnection,
    WriterTurn,
)


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


async def _two_workers(path: Path) -> tuple[AsyncEngine, AsyncEngine]:
    """Two engines on one database, as two workers have, and its table ``t (v INTEGER)``."""
    url = f"sqlite+aiosqlite:///{path}"
    first, second = create_engine(url), create_engine(url)
    async with first.begin() as conn:
        await conn.execute(text("CREATE TABLE t (v INTEGER)"))
    return first, second


def test_workers_take_turns_at_the_write_lock_without_polling(tmp_path: Path) -> None:
    """Two engines stand for two workers: the second waits in the kernel for the first's turn
    (the flock beside the database), not in SQLite's busy handler, and gets it at the commit."""
    path = tmp_path / "turns.sqlite3"

    async def scenario() -> None:
        first, second = await _two_workers(path)
        # Every statement the second engine's connection starts, failed BEGINs included.
        begins: list[str] = []
        async with second.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            raw.sqlite.set_trace_callback(
                lambda sql: begins.append(sql) if sql == "BEGIN IMMEDIATE" else None
            )
            await conn.rollback()
        begins.clear()
        order: list[str] = []
        holding = asyncio.Event()
        let_go = asyncio.Event()

        async def one() -> None:
            async with first.begin() as conn:
                holding.set()
                await conn.execute(text("INSERT INTO t VALUES (1)"))
                await let_go.wait()
                order.append("first commits")

        async def two() -> None:
            await holding.wait()
            async with second.begin() as conn:
                order.append("second begins")
                await conn.execute(text("INSERT INTO t VALUES (2)"))

        tasks = [asyncio.create_task(one()), asyncio.create_task(two())]
        await asyncio.sleep(0.2)
        # The second waits for the turn: SQLite's lock was never tried (no busy retries), and the
        # loop is free (this coroutine runs).
        assert order == []
        assert begins == []
        assert (path.parent / (path.name + WRITER_TURN_SUFFIX)).exists()
        let_go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert order == ["first commits", "second begins"]
        assert begins == ["BEGIN IMMEDIATE"]  # once, when its turn came
        async with first.connect() as conn:
            values = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert values == [1, 2]
        await first.dispose()
        await second.dispose()

    asyncio.run(scenario())


def test_a_wait_given_up_does_not_keep_the_turn(tmp_path: Path) -> None:
    """A begin cancelled (a client gone, a shutdown) or timed out while waiting for the turn:
    its waiting thread still gets the lock later and must let it go, or every worker would stall."""
    path = str(tmp_path / "given-up.sqlite3")

    async def scenario() -> None:
        holder, waiter = WriterTurn(path), WriterTurn(path)
        assert await holder.take(1)
        cancelled = asyncio.create_task(waiter.take(30))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await waiter.take(0.05) is False  # still held: a timeout, not an error
        holder.give_back()
        # The abandoned waits get the lock and let it go: a third party gets it in time.
        third = WriterTurn(path)
        assert await third.take(5)
        third.give_back()
        # The waiter, asked again, takes it afresh and holds it until it gives it back.
        assert await waiter.take(5)
        assert await third.take(0.05) is False
        waiter.give_back()
        assert await third.take(5)
        for turn in (holder, waiter, third):
            turn.close()

    asyncio.run(scenario())


def test_a_turn_got_ahead_of_its_take_is_that_takes_and_is_let_go_if_none_comes(
    tmp_path: Path,
) -> None:
    """While another holds the turn, a connection asks without waiting whether it has come
    (``arrived``) and, once it has, holds it for its next take, which then does not wait; a
    turn got ahead of a take that never comes is let go (``abandon_early``)."""
    path = str(tmp_path / "ahead.sqlite3")

    async def scenario() -> None:
        holder, mine = WriterTurn(path), WriterTurn(path)
        assert await holder.take(1)
        assert mine.taken_elsewhere()
        assert not mine.arrived()
        holder.give_back()
        assert mine.arrived()
        assert mine.arrived()  # still: asked again, it is not taken twice
        assert await holder.take(0.05) is False  # mine now, ahead of its take
        assert await mine.take(0.05)  # in place
        assert await holder.take(0.05) is False
        mine.give_back()
        assert await holder.take(1)
        holder.give_back()
        # Free: not taken elsewhere, and this connection holds it for its next take.
        assert not mine.taken_elsewhere()
        assert await holder.take(0.05) is False
        mine.abandon_early()
        assert await holder.take(1)
        holder.give_back()
        for turn in (holder, mine):
            turn.close()

    asyncio.run(scenario())


def test_a_connection_reads_ahead_of_its_begin_and_going_back_unused_lets_the_turn_go(
    tmp_path: Path,
) -> None:
    """service.db.write_turn_elsewhere: while another worker's transaction holds the write lock,
    a connection reads without it (the last commit: WAL readers block no one) and learns when
    the lock is its own; returned to the pool without a BEGIN, it lets the lock go."""

    async def scenario() -> None:
        first, second = await _two_workers(tmp_path / "read-ahead.sqlite3")
        async with first.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        holder = await first.connect()
        await holder.begin()
        await holder.execute(text("INSERT INTO t VALUES (2)"))
        conn = await second.connect()
        arrived = write_turn_elsewhere(conn)
        assert arrived is not None
        assert not arrived()
        db = reader(conn)
        assert db is not None
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)  # the last commit
        assert not conn.in_transaction()  # the read began no transaction of the engine's
        await holder.commit()
        assert arrived()
        # The lock is the second's now: the first's next BEGIN waits ...
        waiting = asyncio.create_task(holder.begin().start())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        # ... until the second goes back to the pool without a BEGIN (its ROLLBACK lets go).
        await conn.close()
        await asyncio.wait_for(waiting, 5)
        await holder.execute(text("INSERT INTO t VALUES (3)"))
        await holder.commit()
        await holder.close()
        # The lock free: not elsewhere (and held for this connection's BEGIN, which takes it).
        async with second.connect() as conn:
            assert write_turn_elsewhere(conn) is None
            async with conn.begin():
                assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 3
        await first.dispose()
        await second.dispose()

    asyncio.run(scenario())


def test_a_killed_workers_turn_is_released_by_the_kernel(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to give the turn back: the kernel drops the flock with the
    process's files, and the next writer goes on."""
    path = tmp_path / "killed.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(path) + WRITER_TURN_SUFFIX!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"

        async def scenario() -> None:
            turn = WriterTurn(str(path))
            assert await turn.take(0.1) is False
            holder.send_signal(signal.SIGKILL)
            assert await turn.take(5)
            turn.close()

        asyncio.run(scenario())
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def _inline(placement: CommitPlacement) -> bool:
    # A call, not the attribute: mypy would keep an assert's narrowing across record().
    return placement.inline


def _placements(placement: CommitPlacement, commits: int) -> list[bool]:
    return [placement.next_in_place() for _ in range(commits)]


def test_commits_run_in_place_while_the_disk_is_fast_and_in_a_thread_when_it_is_not() -> None:
    placement = CommitPlacement()
    assert _inline(placement)  # nothing known yet: a fast disk is the usual case
    fast, slow = INLINE_COMMIT_MAX_S / 4, INLINE_COMMIT_MAX_S * 5
    assert slow < COMMIT_STALL_S
    for _ in range(COMMITS_REMEMBERED):
        placement.record(fast)
    for _ in range(COMMITS_REMEMBERED // 2 - 1):  # checkpoints now and then: still in place
        placement.record(slow)
        assert _inline(placement)
    for _ in range(2):  # most of the recent commits slow: the disk is slow
        placement.record(slow)
    assert not _inline(placement)
    # In a thread, only every PROBE_EVERY-th commit runs in place, to time the disk again.
    assert _placements(placement, 2 * PROBE_EVERY).count(True) == 2
    for _ in range(COMMITS_REMEMBERED // 2):  # the probes find it fast again: back in place
        placement.record(fast)
    assert _inline(placement)
    assert all(_placements(placement, PROBE_EVERY))


def test_one_stalled_commit_moves_the_next_ones_to_a_thread_until_a_probe_is_fast() -> None:
    placement = CommitPlacement()
    for _ in range(COMMITS_REMEMBERED):
        placement.record(INLINE_COMMIT_MAX_S / 4)
    placement.record(COMMIT_STALL_S * 2)
    assert not placement.inline
    assert _placements(placement, PROBE_EVERY) == [False] * (PROBE_EVERY - 1) + [True]
    placement.record(INLINE_COMMIT_MAX_S / 4)  # the probe
    assert placement.inline


class _ThreadRecordingConnection(sqlite3.Connection):
    commit_threads: list[int]

    def commit(self) -> None:
        self.commit_threads.append(threading.get_ident())
        super().commit()


def _recording_connection(path: Path) -> tuple[_ThreadRecordingConnection, InlineConnection]:
    raw = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, factory=_ThreadRecordingConnection
    )
    raw.commit_threads = []
    raw.execute("PRAGMA foreign_keys=ON")
    raw.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    raw.execute("CREATE TABLE t (v INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    raw.executemany("INSERT INTO parent VALUES (?)", [(1,), (2,)])
    return raw, InlineConnection(raw, 1000, WriterTurn(str(path)))


async def _write(connection: InlineConnection, value: int) -> None:
    await connection.begin_immediate()
    await connection.execute("INSERT INTO t VALUES (?)", (value,))
    await connection.commit()


def test_a_writing_commit_runs_where_its_placement_says_and_is_durable_either_way(
    tmp_path: Path,
) -> None:
    path = tmp_path / "placed.sqlite3"
    raw, connection = _recording_connection(path)

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        await _write(connection, 1)
        assert raw.commit_threads == [loop_thread]
        connection.commit_placement.record(COMMIT_STALL_S * 2)
        await _write(connection, 2)
        assert len(raw.commit_threads) == 2
        assert raw.commit_threads[1] != loop_thread

    asyncio.run(scenario())
    connection.stop()
    assert sqlite3.connect(path).execute("SELECT v FROM t ORDER BY v").fetchall() == [(1,), (2,)]


@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "in a thread"])
def test_a_failing_commit_raises_gives_the_turn_back_and_times_nothing(
    tmp_path: Path, in_place: bool
) -> None:
    raw, connection = _recording_connection(tmp_path / "failing.sqlite3")
    placement = connection.commit_placement
    if not in_place:
        placement.record(COMMIT_STALL_S * 2)
    timed_before = list(placement._recent)

    async def scenario() -> None:
        # A deferred foreign key fails at COMMIT: the parent 9 does not exist.
        with pytest.raises(sqlite3.IntegrityError):
            await _write(connection, 9)
        assert not connection._turn.held
        assert list(placement._recent) == timed_before
        await connection.rollback()

    asyncio.run(scenario())
    assert len(raw.commit_threads) == 1
    connection.stop()
