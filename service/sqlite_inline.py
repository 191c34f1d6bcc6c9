"""SQLite for the async engine, executed in the event loop's own thread.

aiosqlite hands every statement to a helper thread and back: measured here, 0.55 ms per indexed
SELECT through SQLAlchemy against 9 µs for the same statement on the sqlite3 module directly, and
the decision route runs about fourteen statements. SQLite is an in-process library whose
statements on an indexed, page-cached file take microseconds, so this adapter runs them in place:
it presents the small part of aiosqlite's interface that SQLAlchemy's aiosqlite dialect calls,
with coroutines that complete without suspending.

What that costs, deliberately: a statement blocks the event loop while it runs. The write lock,
when another worker holds it, is waited for in a thread. A COMMIT that wrote something (its
fsync) runs in place too while this disk's commits are fast, and in a thread once they are not
(``CommitPlacement``).

Workers take turns at the write lock through an advisory ``flock`` on a file beside the database
(``<db>-writer``) before BEGIN IMMEDIATE: a waiting worker sleeps in the kernel and is woken when
the holder lets go. SQLite's own busy handling polls instead: measured with 2 workers, one worker
kept re-taking the lock it had just released while the other slept between polls (p99 80 ms at
32 connections against 24 ms with one worker). A writer that does not take the turn (the sqlite3
shell, a CLI on aiosqlite) is still waited for by retrying BEGIN IMMEDIATE after short sleeps.
The kernel drops a killed worker's flock with its file descriptors.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
WRITER_TURN_SUFFIX = "-writer"
# Where a writing COMMIT runs (see CommitPlacement): in place while the lower median of the last
# COMMITS_REMEMBERED commits timed in place is at most INLINE_COMMIT_MAX_S, and in a thread at
# once after one in place took more than COMMIT_STALL_S; in a thread, every PROBE_EVERY-th
# commit runs in place to time the disk again.
INLINE_COMMIT_MAX_S = 0.002
COMMIT_STALL_S = 0.020
COMMITS_REMEMBERED = 16
PROBE_EVERY = 32


class InlineCursor:
    """An aiosqlite-shaped cursor over a ``sqlite3.Cursor``."""

    __slots__ = ("_cursor", "_owner")

    def __init__(self, cursor: sqlite3.Cursor, owner: InlineConnection) -> None:
        self._cursor = cursor
        self._owner = owner

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if sql == BEGIN_IMMEDIATE:
            await self._owner.begin_immediate()
        elif parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> Sequence[Any]:
        return self._cursor.fetchall()

    async def setinputsizes(self, *sizes: Any) -> None:
        return None

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        self._cursor.close()


class _ImmediateQueue:
    """SQLAlchemy's dialect sets ``isolation_level`` by queueing a function for aiosqlite's
    thread and awaiting a future; here the function runs at once."""

    __slots__ = ()

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting caller, as aiosqlite does
            future.set_exception(exc)


class WriterTurn:
    """One connection's place in the workers' turns at a database's write lock: an exclusive
    ``flock`` on ``<db>-writer``, held from before BEGIN IMMEDIATE until after COMMIT or ROLLBACK.

    Free (the usual case with one worker): taken at once, in place. Held: waited for in a thread
    of the loop's executor, so the loop keeps serving. flock locks belong to an open file, so two
    connections exclude each other in one process as in two.
    """

    __slots__ = ("_abandoned", "_early", "_fd", "held")

    def __init__(self, database_path: str) -> None:
        self._fd = os.open(
            database_path + WRITER_TURN_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self.held = False
        # A wait given up (timeout, cancellation) whose thread may still get the lock.
        self._abandoned: asyncio.Future[None] | None = None
        # The lock, got ahead of the take that adopts it (``taken_elsewhere``, ``arrived``).
        self._early = False

    def taken_elsewhere(self) -> bool:
        """Whether another connection holds the turn now. If not, this one holds it from now,
        for the next ``take``. If so, the caller can do the part of its work that needs no lock,
        asking ``arrived`` now and then, and ``take`` when done or when it has."""
        return not self.arrived()

    def arrived(self) -> bool:
        """Whether the turn is this connection's now, for the next ``take`` (tried without
        waiting: a thread waiting for it would need the GIL to say so, which the work ahead
        holds for up to the interpreter's switch interval, 5 ms)."""
        if self._early:
            return True
        if self.held or self._abandoned is not None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._early = True
        return True

    def abandon_early(self) -> None:
        """The turn got ahead of a take that will not come: let it go."""
        if self._early:
            self._early = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def take(self, timeout_s: float) -> bool:
        """Hold the turn; False when it did not come within ``timeout_s``."""
        if self._early:
            self._early = False
            self.held = True
            return True
        waiting, self._abandoned = self._abandoned, None
        if waiting is None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                loop = asyncio.get_running_loop()
                waiting = loop.run_in_executor(None, fcntl.flock, self._fd, fcntl.LOCK_EX)
            else:
                self.held = True
                return True
        try:
            # shield: the thread cannot be stopped; a wait given up is adopted by the next take
            # or, if none comes first, let go when the thread gets the lock.
            await asyncio.wait_for(asyncio.shield(waiting), timeout_s)
        except BaseException as exc:
            self._abandoned = waiting
            waiting.add_done_callback(self._let_go_if_abandoned)
            if isinstance(exc, TimeoutError):
                return False
            raise
        self.held = True
        return True

    def _let_go_if_abandoned(self, waiting: asyncio.Future[None]) -> None:
        # Runs on the loop, like take: no take can adopt the wait between this check and the unlock.
        if self._abandoned is waiting:
            self._abandoned = None
            if not waiting.cancelled() and waiting.exception() is None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def give_back(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.held = False
        self._early = False
        os.close(self._fd)  # drops the lock with the file


class CommitPlacement:
    """Where a connection's next writing COMMIT runs: in place, or in a thread.

    In a thread, the fsync leaves the loop free, but the hand-off costs more than a fast fsync
    blocks: on the development VM (WAL fsync p50 0.8 ms, p99 9 ms when a checkpoint ran),
    decisions at 32 clients took 12 % less CPU with the commit in place, and over HTTP (bench_ab,
    one worker) served 1.04-1.16x the requests. On a disk whose fsync takes milliseconds a
    commit in place stalls the worker's every request as long, so the placement follows the
    disk, timed by the commits that run in place (a commit in a thread also waits for the GIL
    after its fsync, up to the 5 ms switch interval when the loop is busy, so its time says
    little about the disk): in place while the lower median of the last ``COMMITS_REMEMBERED``
    is at most ``INLINE_COMMIT_MAX_S`` (a checkpoint's slow commit now and then does not move
    it); in a thread once that median is higher, or at once after one commit took more than
    ``COMMIT_STALL_S``. In a thread, every ``PROBE_EVERY``-th commit runs in place, so a disk
    that is fast again brings the commits back.
    """

    __slots__ = ("_recent", "_since_probe", "inline")

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=COMMITS_REMEMBERED)
        self._since_probe = 0
        self.inline = True

    def next_in_place(self) -> bool:
        """Whether the next commit runs in place (then ``record`` its time)."""
        if self.inline:
            return True
        self._since_probe += 1
        if self._since_probe < PROBE_EVERY:
            return False
        self._since_probe = 0
        return True

    def record(self, seconds: float) -> None:
        """The time of a commit that ran in place."""
        if seconds > COMMIT_STALL_S:
            self._recent.clear()  # only commits after the stall can bring the next one back
        self._recent.append(seconds)
        self.inline = statistics.median_low(self._recent) <= INLINE_COMMIT_MAX_S


def _timed_commit(connection: sqlite3.Connection, placement: CommitPlacement) -> None:
    started = time.perf_counter()
    connection.commit()
    # Only a commit that succeeded is a measure of the disk (a failure raises past this).
    placement.record(time.perf_counter() - started)


class InlineConnection:
    """An aiosqlite-shaped connection over a ``sqlite3.Connection``."""

    def __init__(
        self, connection: sqlite3.Connection, busy_timeout_ms: int, turn: WriterTurn
    ) -> None:
        self._conn = connection
        self.commit_placement = CommitPlacement()
        self._tx = _ImmediateQueue()
        self._busy_timeout_ms = busy_timeout_ms
        self._changes_at_begin = 0
        self._turn = turn
        self._restore_busy_timeout = f"PRAGMA busy_timeout={busy_timeout_ms}"

    async def begin_immediate(self) -> None:
        """Take the workers' turn (``WriterTurn``), then the write lock. A writer outside the
        turns holding it: retry in place after short sleeps that leave the loop free (0.5 ms
        doubling to 5 ms — SQLite's own busy handler sleeps in coarser steps, up to 100 ms, in a
        blocked thread), until the busy timeout."""
        self._changes_at_begin = self._conn.total_changes
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        # Held already: a BEGIN inside an open transaction, which SQLite refuses below; the
        # transaction it is inside keeps the turn.
        mine = not self._turn.held
        if mine and not await self._turn.take(self._busy_timeout_ms / 1000):
            raise sqlite3.OperationalError("database is locked (waiting for another worker)")
        delay = 0.0005
        db = self._conn
        db.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    db.execute(BEGIN_IMMEDIATE)
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    if time.monotonic() >= deadline:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.005)
        except BaseException:
            if mine:
                self._turn.give_back()
            raise
        finally:
            db.execute(self._restore_busy_timeout)

    def turn_taken_elsewhere(self) -> bool:
        """Outside a transaction: whether another worker holds the write turn
        (``WriterTurn.taken_elsewhere``). The next BEGIN IMMEDIATE adopts a turn got ahead of
        it; a ROLLBACK (the pool's, when the connection goes back unused) lets it go."""
        return not self._conn.in_transaction and self._turn.taken_elsewhere()

    def turn_arrived(self) -> bool:
        """``WriterTurn.arrived``."""
        return self._turn.arrived()

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The connection itself, for statements run in place (service.hot_sql)."""
        return self._conn

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # The dialect tests this before commit and rollback, as it does on aiosqlite.
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor(), self)

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        try:
            if self._conn.total_changes == self._changes_at_begin:
                self._conn.commit()  # nothing written: no fsync to wait for
                return
            # The fsync (and a checkpoint of the WAL) happens here. In a thread, other requests
            # are parsed and decided meanwhile; the connection stays checked out by this
            # transaction until the commit returns, so nothing else uses it concurrently.
            placement = self.commit_placement
            if placement.next_in_place():
                _timed_commit(self._conn, placement)
            else:
                await asyncio.to_thread(self._conn.commit)
        finally:
            self._turn.give_back()

    async def rollback(self) -> None:
        try:
            self._conn.rollback()
        finally:
            self._turn.give_back()
            self._turn.abandon_early()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        try:
            self._conn.close()
        finally:
            self._turn.close()


def inline_creator(path: str, busy_timeout_ms: int) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: opens ``path`` in autocommit mode (the
    engine's begin hook issues BEGIN IMMEDIATE itself)."""

    async def connect() -> InlineConnection:
        connection = sqlite3.connect(
            path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        return InlineConnection(connection, busy_timeout_ms, WriterTurn(path))

    return connect
