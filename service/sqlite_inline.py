"""SQLite for the async engine, executed in the event loop's own thread.

aiosqlite hands every statement to a helper thread and back: measured here, 0.55 ms per indexed
SELECT through SQLAlchemy against 9 µs for the same statement on the sqlite3 module directly, and
the decision route runs about fourteen statements. SQLite is an in-process library whose
statements on an indexed, page-cached file take microseconds, so this adapter runs them in place:
it presents the small part of aiosqlite's interface that SQLAlchemy's aiosqlite dialect calls,
with coroutines that complete without suspending.

What that costs, deliberately: a statement blocks the event loop while it runs. The two calls that
can wait don't block it: COMMIT runs in a thread when the transaction wrote something (its
fsync), and BEGIN IMMEDIATE, when another process holds the write lock, is retried after short
asynchronous sleeps until the busy timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"


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
            await self._owner.begin_immediate(self._cursor)
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


class InlineConnection:
    """An aiosqlite-shaped connection over a ``sqlite3.Connection``."""

    def __init__(self, connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
        self._conn = connection
        self._tx = _ImmediateQueue()
        self._busy_timeout_ms = busy_timeout_ms
        self._changes_at_begin = 0

    async def begin_immediate(self, cursor: sqlite3.Cursor) -> None:
        """Take the write lock. Free (the usual case): at once, in place. Held by another
        process: retry in place after short sleeps that leave the loop free (0.5 ms doubling to
        5 ms — SQLite's own busy handler sleeps in coarser steps, up to 100 ms, in a blocked
        thread), until the busy timeout."""
        self._changes_at_begin = self._conn.total_changes
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        delay = 0.0005
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    cursor.execute(BEGIN_IMMEDIATE)
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    if time.monotonic() >= deadline:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.005)
        finally:
            cursor.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")

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
        if self._conn.total_changes == self._changes_at_begin:
            self._conn.commit()  # nothing written: no fsync to wait for
            return
        # The fsync (and a checkpoint of the WAL) happens here: off the loop, so other requests
        # are parsed and decided meanwhile. The connection stays checked out by this transaction
        # until the commit returns, so nothing else uses it concurrently.
        await asyncio.to_thread(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        self._conn.close()


def inline_creator(path: str, busy_timeout_ms: int) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: opens ``path`` in autocommit mode (the
    engine's begin hook issues BEGIN IMMEDIATE itself)."""

    async def connect() -> InlineConnection:
        connection = sqlite3.connect(
            path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        return InlineConnection(connection, busy_timeout_ms)

    return connect
