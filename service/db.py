"""Engine factories. SQLite is the embedded default; PostgreSQL (asyncpg) in production.

SQLite gets one connection per worker (a pool of 1): PERF.md measured p99 ≈ 1 s from write-lock
contention with the default async pool. WAL with synchronous=FULL keeps every acknowledged commit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only

from service.sqlite_inline import BEGIN_IMMEDIATE, InlineConnection, inline_creator

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_BATCHES_IN_FLIGHT = 2
PG_PREPARED_STATEMENTS = 512
# A PostgreSQL connection back from the pool after this long unused is pinged before it is
# handed out (see _ping_if_idle).
PG_IDLE_PING_S = 1.0
_DEADLOCK_SQLSTATE = "40P01"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # aiosqlite's adapter: autocommit isolation (None) lets us issue BEGIN IMMEDIATE ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


# sqlite3 "adapts" every parameter that is not exactly an int, float or str, None and bytes
# included: with no adapter registered for the type it asks its protocol type for __adapt__,
# which raises and formats an AttributeError each time (~1,300 instructions, 8 per decision).
# Found in the registry, an adapter that returns the value as it is binds what sqlite3 would
# have bound anyway. Each is a C function: {}.get(None) is None, bytes(b) is b, and
# memoryview(view) a view of the same buffer.
NATIVE_BINDS: tuple[tuple[type, Any], ...] = (
    (type(None), {}.get),
    (bytes, bytes),
    (memoryview, memoryview),
)


def register_native_binds() -> None:
    """Register NATIVE_BINDS with sqlite3 (process-wide, idempotent; create_engine does)."""
    for kind, same in NATIVE_BINDS:
        sqlite3.register_adapter(kind, same)


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN: a deferred BEGIN that upgrades later deadlocks under load
    # (AUDIT.md §7.3 measured 1.9 M busy retries). Readers are not blocked in WAL mode.
    driver = conn.connection.driver_connection
    if isinstance(driver, InlineConnection):
        # Straight to the driver: SQLAlchemy's execution of the statement (a cursor, an
        # execution context, events no one listens to) cost more than the BEGIN itself.
        await_only(driver.begin_immediate())
    else:
        conn.exec_driver_sql(BEGIN_IMMEDIATE)


def _inline_outside_transaction(conn: AsyncConnection) -> InlineConnection | None:
    """The in-place SQLite driver under ``conn`` while it has connected and not begun (read from
    the pooled connection directly: ``get_raw_connection`` would spawn a greenlet). None
    elsewhere, PostgreSQL included."""
    sync = conn.sync_connection
    if sync is None or sync.invalidated or sync.in_transaction():
        return None
    driver = sync.connection.driver_connection
    return driver if isinstance(driver, InlineConnection) else None


def write_turn_elsewhere(conn: AsyncConnection) -> Callable[[], bool] | None:
    """When ``conn``'s BEGIN would wait now for another worker's write lock (SQLite in place,
    outside a transaction): a poll that answers True once it would not (the lock is then this
    connection's, for that BEGIN). Until the BEGIN, ``reader(conn)`` reads outside any
    transaction. None when it would not wait (the lock, if free, is this connection's now), and
    always on PostgreSQL, whose writers do not wait at BEGIN."""
    driver = _inline_outside_transaction(conn)
    if driver is not None and driver.turn_taken_elsewhere():
        return driver.turn_arrived
    return None


def reader(conn: AsyncConnection) -> sqlite3.Connection | None:
    """The sqlite3 connection under ``conn`` (SQLite in place), to read ahead of its BEGIN
    without the write lock: WAL readers see the last commit and block no one. None elsewhere."""
    driver = _inline_outside_transaction(conn)
    return None if driver is None else driver.sqlite


def batches_in_flight(url: str) -> int:
    """How many proof batches (service.group_commit) a worker runs at once: SQLite has one writer
    and one connection per worker; on PostgreSQL a batch mostly waits on round trips, so two
    overlap (TOTP verify, 1 worker: 176 -> 222 req/s; four made 2 workers slower)."""
    return 1 if is_sqlite(url) else PG_BATCHES_IN_FLIGHT


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat unused in the pool, before it is handed out; one that fails is
    replaced (the pool reconnects on DisconnectionError). SQLAlchemy's pool_pre_ping pings at
    every checkout, and on asyncpg its ping is three round trips (BEGIN, an empty query,
    ROLLBACK) before each batch and each request's transaction. A connection in steady use skips
    it: a database restart while it was in use fails that use, and the error invalidates the
    pool, as it would with pre-ping."""
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is None or time.monotonic() - checked_in_at < PG_IDLE_PING_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:
        raise sa_exc.DisconnectionError("an idle connection failed its ping") from exc


def create_engine(
    url: str, *, pool_size: int = 10, echo: bool = False, inline_sqlite: bool = True
) -> AsyncEngine:
    """An async engine configured for the backend the URL names.

    SQLite statements run in the event loop's thread (``service.sqlite_inline``) unless
    ``inline_sqlite`` is false, which keeps aiosqlite's helper thread for long scans.
    """
    if is_sqlite(url):
        register_native_binds()
        timeout_s = SQLITE_BUSY_TIMEOUT_MS / 1000
        creator: dict[str, Any] = {}
        database = make_url(url).database
        if inline_sqlite and database and database != ":memory:":
            creator["async_creator"] = inline_creator(database, SQLITE_BUSY_TIMEOUT_MS)
        engine = create_async_engine(
            url,
            echo=echo,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            connect_args={"timeout": timeout_s},
            **creator,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    engine = create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # The group commits' statements are built per batch size in nine families: five of up
        # to 64 sizes (decision inputs, linked identities, account locks, a proof batch's
        # challenges and enrolments) and four padded to seven (persistence.padded: a proof
        # batch's attempt locks, locked challenges and requests, failures). With SQLAlchemy's
        # default of 100 prepared statements per connection they evict each other and are
        # prepared again and again.
        connect_args={"prepared_statement_cache_size": PG_PREPARED_STATEMENTS},
    )
    event.listen(engine.sync_engine, "checkin", _note_checkin)
    event.listen(engine.sync_engine, "checkout", _ping_if_idle)
    return engine


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what SQLAlchemy wrapped (``orig``), and its causes and contexts."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        for nxt in (orig, current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def deadlocked(exc: BaseException) -> bool:
    """True when PostgreSQL aborted the transaction to break a deadlock (SQLSTATE 40P01): nothing
    of it committed, and its parts run one transaction at a time cannot deadlock the same way."""
    return any(
        _DEADLOCK_SQLSTATE in (getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None))
        for cause in causes(exc)
    )
